package polybus_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	polybus "github.com/polybus/polybus/bindings/go"
)

func redisACLURL() string {
	return brokerURL("POLYBUS_TEST_REDIS_ACL_URL", "redis://127.0.0.1:6391")
}

// The ACL server (user polybus, password secret, default user off): the right credentials in
// the redis section carry events, a wrong password or none at all is ErrAuth.
func TestRedisACL(t *testing.T) {
	url := redisACLURL()
	bus := openBroker(t, polybus.Config{
		URL: url, ConnectTimeout: 5 * time.Second,
		Redis: &polybus.RedisConfig{Username: "polybus", Password: "secret"},
	})
	ctx := context.Background()
	got := make(chan *polybus.Event, 1)
	if _, err := bus.Subscribe(ctx, "acl.ok", func(_ context.Context, e *polybus.Event) error {
		got <- e
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := bus.Publish(ctx, "acl.ok", "hi"); err != nil {
		t.Fatal(err)
	}
	select {
	case e := <-got:
		if string(e.Payload) != "hi" {
			t.Errorf("payload %q", e.Payload)
		}
	case <-time.After(waitTimeout(t)):
		t.Fatal("no event with the right credentials")
	}

	for name, section := range map[string]*polybus.RedisConfig{
		"wrong password": {Username: "polybus", Password: "wrong"},
		"no credentials": nil,
	} {
		t.Run(name, func(t *testing.T) {
			bus, err := polybus.OpenConfig(ctx, polybus.Config{URL: url, ConnectTimeout: 5 * time.Second, Redis: section})
			if bus != nil {
				bus.Close()
			}
			if !errors.Is(err, polybus.ErrAuth) {
				t.Fatalf("want ErrAuth, got %v", err)
			}
			if strings.Contains(err.Error(), "wrong") {
				t.Errorf("the password is shown: %v", err)
			}
		})
	}
}

func TestRedisConfigJSON(t *testing.T) {
	cfg := polybus.Config{URL: "redis://h:6379", Redis: &polybus.RedisConfig{
		Addrs: []string{"a:6379", "b:6379"}, DB: 2, Username: "app", Password: "secret",
		TLSCA: "ca.pem", TLSCert: "c.pem", TLSKey: "k.pem", CommandTimeout: 2 * time.Second,
		MaxRetries: 5, MaxLen: -1, ClaimIdle: time.Minute, Block: 500 * time.Millisecond,
		ScanInterval: 3 * time.Second,
	}}
	b, err := cfg.MarshalJSON()
	want := `{"url":"redis://h:6379","redis":{"addrs":["a:6379","b:6379"],"db":2,"username":"app",` +
		`"password":"secret","tls_ca":"ca.pem","tls_cert":"c.pem","tls_key":"k.pem","command_timeout_ms":2000,` +
		`"max_retries":5,"max_len":0,"claim_idle_ms":60000,"block_ms":500,"scan_interval_ms":3000}}`
	if err != nil || string(b) != want {
		t.Errorf("got  %s, %v\nwant %s", b, err, want)
	}
	if b, _ := (polybus.Config{URL: "redis://h:6379", Redis: &polybus.RedisConfig{}}).MarshalJSON(); string(b) != `{"url":"redis://h:6379","redis":{}}` {
		t.Errorf("an empty section: %s", b)
	}
	bad := polybus.Config{URL: "redis://h:6379", Redis: &polybus.RedisConfig{MaxLen: -2}}
	if _, err := bad.MarshalJSON(); !errors.Is(err, polybus.ErrInvalidConfig) {
		t.Errorf("MaxLen -2: %v", err)
	}
}
