package polybus_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	polybus "github.com/polybus/polybus/bindings/go"
)

// repoRoot is the repository's root directory (where the harness keeps build/brokers/).
func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// tlsDir is the environment variable's directory (the harness prints it) or the harness's
// default under the repository; it fails the test when the certificates are not there.
func tlsDir(t *testing.T, env string, rel ...string) string {
	t.Helper()
	dir := os.Getenv(env)
	if dir == "" {
		dir = filepath.Join(append([]string{repoRoot()}, rel...)...)
	}
	for _, f := range []string{"ca.crt", "client.crt", "client.key"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Fatalf("the TLS files of the harness are missing (%v): start the brokers with "+
				"bash tests/harness/setup.sh, or set %s", err, env)
		}
	}
	return dir
}

// roundTrip subscribes to "tls.ok", publishes one event and waits for it.
func roundTrip(t *testing.T, bus *polybus.Bus, payload string, timeout time.Duration) {
	t.Helper()
	ctx := context.Background()
	got := make(chan *polybus.Event, 1)
	if _, err := bus.Subscribe(ctx, "tls.ok", func(_ context.Context, e *polybus.Event) error {
		select {
		case got <- e:
		default:
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := bus.Publish(ctx, "tls.ok", payload); err != nil {
		t.Fatal(err)
	}
	select {
	case e := <-got:
		if string(e.Payload) != payload || e.Topic != "tls.ok" {
			t.Errorf("event %+v", e)
		}
	case <-time.After(timeout):
		t.Fatal("no event over TLS")
	}
}

// wantTLSRefused checks that an open without the CA failed with a *polybus.Error, code
// ErrConnection or ErrTimeout, whose text names TLS, SSL or the certificate.
func wantTLSRefused(t *testing.T, bus *polybus.Bus, err error) {
	t.Helper()
	if bus != nil {
		bus.Close()
		t.Fatal("opened a bus without trusting the server's certificate")
	}
	var pe *polybus.Error
	if !errors.As(err, &pe) {
		t.Fatalf("want a *polybus.Error, got %T %v", err, err)
	}
	if !errors.Is(err, polybus.ErrConnection) && !errors.Is(err, polybus.ErrTimeout) {
		t.Fatalf("want ErrConnection or ErrTimeout, got %s: %v", pe.Code, err)
	}
	text := strings.ToLower(pe.Message)
	if !strings.Contains(text, "tls") && !strings.Contains(text, "ssl") && !strings.Contains(text, "certificate") {
		t.Errorf("the error should name TLS, SSL or the certificate: %v", err)
	}
	t.Logf("refused: %s: %v", pe.Code, err)
}

// TLS against the harness's TLS brokers: Redis (rediss://, POLYBUS_TEST_REDIS_TLS_URL and _DIR)
// and Kafka's SSL listener (POLYBUS_TEST_KAFKA_SSL_URL, POLYBUS_TEST_KAFKA_TLS_DIR). One event
// goes over each with the harness's CA, then with the CA and the client certificate; without
// the CA the server's certificate is not trusted and the open fails with a clear error. A
// broker that is not running fails the test.
func TestTLSConnections(t *testing.T) {
	t.Run("redis", func(t *testing.T) {
		url := brokerURL("POLYBUS_TEST_REDIS_TLS_URL", "rediss://127.0.0.1:6392")
		dir := tlsDir(t, "POLYBUS_TEST_REDIS_TLS_DIR", "build", "brokers", "redis-tls", "tls")
		for _, c := range []struct {
			name    string
			section *polybus.RedisConfig
		}{
			{"ca", &polybus.RedisConfig{TLSCA: filepath.Join(dir, "ca.crt")}},
			{"ca+client-cert", &polybus.RedisConfig{TLSCA: filepath.Join(dir, "ca.crt"),
				TLSCert: filepath.Join(dir, "client.crt"), TLSKey: filepath.Join(dir, "client.key")}},
		} {
			t.Run(c.name, func(t *testing.T) {
				bus := openBroker(t, polybus.Config{URL: url, ConnectTimeout: 5 * time.Second, Redis: c.section})
				roundTrip(t, bus, "secret payload", waitTimeout(t))
			})
		}
		t.Run("no-ca", func(t *testing.T) {
			bus, err := polybus.OpenConfig(context.Background(), polybus.Config{URL: url, ConnectTimeout: 3 * time.Second})
			wantTLSRefused(t, bus, err)
		})
	})
	t.Run("kafka", func(t *testing.T) {
		url := brokerURL("POLYBUS_TEST_KAFKA_SSL_URL", "kafka://127.0.0.1:9095")
		dir := tlsDir(t, "POLYBUS_TEST_KAFKA_TLS_DIR", "build", "brokers", "kafka", "tls")
		for _, c := range []struct {
			name    string
			section *polybus.KafkaConfig
		}{
			{"ca", &polybus.KafkaConfig{TLSCA: filepath.Join(dir, "ca.crt")}},
			{"ca+client-cert", &polybus.KafkaConfig{TLSCA: filepath.Join(dir, "ca.crt"),
				TLSCert: filepath.Join(dir, "client.crt"), TLSKey: filepath.Join(dir, "client.key")}},
		} {
			t.Run(c.name, func(t *testing.T) {
				bus := openBroker(t, polybus.Config{URL: url, ConnectTimeout: 20 * time.Second, Kafka: c.section})
				roundTrip(t, bus, "over tls", 2*waitTimeout(t))
			})
		}
		t.Run("no-ca", func(t *testing.T) {
			// A connect timeout long enough for librdkafka's handshake error to come first on
			// a loaded runner (the core's own test found 3 s too short).
			bus, err := polybus.OpenConfig(context.Background(), polybus.Config{
				URL: url, ConnectTimeout: 20 * time.Second,
				Kafka: &polybus.KafkaConfig{SecurityProtocol: "ssl"},
			})
			wantTLSRefused(t, bus, err)
		})
	})
}
