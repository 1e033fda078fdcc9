package polybus_test

import (
	"context"
	"errors"
	"os"
	"testing"
	"time"

	polybus "github.com/polybus/polybus/bindings/go"
)

// brokerURL is the environment variable's URL or the harness's default. A broker that is not
// running fails the test that needs it (tests/harness/setup.sh starts them).
func brokerURL(env, fallback string) string {
	if v := os.Getenv(env); v != "" {
		return v
	}
	return fallback
}

func natsURL() string { return brokerURL("POLYBUS_TEST_NATS_URL", "nats://127.0.0.1:4222") }

func jetStreamURL() string {
	return brokerURL("POLYBUS_TEST_JETSTREAM_URL", "jetstream://127.0.0.1:4222")
}

func natsAuthURL() string {
	return brokerURL("POLYBUS_TEST_NATS_AUTH_URL", "nats://127.0.0.1:4223")
}

// openBroker opens a bus on a broker with a fresh prefix, failing the test when it cannot.
func openBroker(t *testing.T, cfg polybus.Config) *polybus.Bus {
	t.Helper()
	if cfg.Prefix == "" {
		cfg.Prefix = "t." + uniqueID(t)
	}
	bus, err := polybus.OpenConfig(context.Background(), cfg)
	if err != nil {
		t.Fatalf("open %s: %v (is the broker up? bash tests/harness/setup.sh)", cfg.URL, err)
	}
	t.Cleanup(func() { bus.Close() })
	return bus
}

// nextState reads the next state from a watch channel, failing on a timeout or a closed
// channel.
func nextState(t *testing.T, ch <-chan polybus.ConnectionState) polybus.ConnectionState {
	t.Helper()
	select {
	case s, ok := <-ch:
		if !ok {
			t.Fatal("the watch channel was closed")
		}
		return s
	case <-time.After(waitTimeout(t)):
		t.Fatal("timed out waiting for a connection state")
		return 0
	}
}

// waitClosedChannel waits until ch is closed, draining it.
func waitClosedChannel(t *testing.T, ch <-chan polybus.ConnectionState) {
	t.Helper()
	deadline := time.After(waitTimeout(t))
	for {
		select {
		case _, ok := <-ch:
			if !ok {
				return
			}
		case <-deadline:
			t.Fatal("the watch channel was not closed")
		}
	}
}

func TestConnectionStateString(t *testing.T) {
	for s, want := range map[polybus.ConnectionState]string{
		polybus.StateConnected:      "connected",
		polybus.StateDisconnected:   "disconnected",
		polybus.StateClosed:         "closed",
		polybus.ConnectionState(42): "ConnectionState(42)",
	} {
		if got := s.String(); got != want {
			t.Errorf("%d: got %q, want %q", int32(s), got, want)
		}
	}
}

func TestConnectionStateMemory(t *testing.T) {
	bus := open(t)
	if s := bus.ConnectionState(); s != polybus.StateConnected {
		t.Fatalf("open bus: %v", s)
	}
	if err := bus.Close(); err != nil {
		t.Fatal(err)
	}
	if s := bus.ConnectionState(); s != polybus.StateClosed {
		t.Fatalf("closed bus: %v", s)
	}
	var nilBus *polybus.Bus
	if s := nilBus.ConnectionState(); s != polybus.StateClosed {
		t.Fatalf("nil bus: %v", s)
	}
}

func TestConnectionStateNATS(t *testing.T) {
	for _, url := range []string{natsURL(), jetStreamURL()} {
		t.Run(url, func(t *testing.T) {
			bus := openBroker(t, polybus.Config{URL: url})
			if s := bus.ConnectionState(); s != polybus.StateConnected {
				t.Fatalf("open bus: %v", s)
			}
			states := bus.WatchConnectionState(context.Background())
			if s := nextState(t, states); s != polybus.StateConnected {
				t.Fatalf("first watched state: %v", s)
			}
			if err := bus.Close(); err != nil {
				t.Fatal(err)
			}
			if s := nextState(t, states); s != polybus.StateClosed {
				t.Fatalf("after Close: %v", s)
			}
			waitClosedChannel(t, states)
			if s := bus.ConnectionState(); s != polybus.StateClosed {
				t.Fatalf("closed bus: %v", s)
			}
		})
	}
}

func TestWatchConnectionStateSeesClose(t *testing.T) {
	bus := open(t)
	states := bus.WatchConnectionState(context.Background())
	if s := nextState(t, states); s != polybus.StateConnected {
		t.Fatalf("first state: %v", s)
	}
	closed := make(chan error, 1)
	go func() { closed <- bus.Close() }()
	if s := nextState(t, states); s != polybus.StateClosed {
		t.Fatalf("after Close: %v", s)
	}
	waitClosedChannel(t, states)
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	// Watching a closed bus reports Closed once, then ends.
	late := bus.WatchConnectionState(context.Background())
	if s := nextState(t, late); s != polybus.StateClosed {
		t.Fatalf("closed bus: %v", s)
	}
	waitClosedChannel(t, late)
}

func TestWatchConnectionStateEndsWithContext(t *testing.T) {
	bus := open(t)
	ctx, cancel := context.WithCancel(context.Background())
	states := bus.WatchConnectionState(ctx)
	if s := nextState(t, states); s != polybus.StateConnected {
		t.Fatalf("first state: %v", s)
	}
	cancel()
	waitClosedChannel(t, states)
	if s := bus.ConnectionState(); s != polybus.StateConnected {
		t.Fatalf("the bus is still open: %v", s)
	}
	done, stop := context.WithCancel(context.Background())
	stop()
	if _, ok := <-bus.WatchConnectionState(done); ok {
		t.Fatal("a watch with a done context sent a state")
	}
}

func TestNATSRoundTrip(t *testing.T) {
	for _, url := range []string{natsURL(), jetStreamURL()} {
		t.Run(url, func(t *testing.T) {
			cfg := polybus.Config{URL: url, Name: "go-int"}
			if url == jetStreamURL() {
				cfg.JetStream = &polybus.JetStreamConfig{Storage: "memory", MaxAge: time.Hour}
			}
			bus := openBroker(t, cfg)
			events := collect(t, bus, "orders.*")
			if err := bus.Publish(context.Background(), "orders.created", "over the wire"); err != nil {
				t.Fatal(err)
			}
			e := next(t, events)
			if e.Topic != "orders.created" || string(e.Payload) != "over the wire" || e.Source != "go-int" {
				t.Errorf("unexpected event %+v", e)
			}
		})
	}
}

func TestNATSCredentials(t *testing.T) {
	url := natsAuthURL()
	// The right credentials, in the nats section, connect.
	openBroker(t, polybus.Config{
		URL: url, ConnectTimeout: 5 * time.Second,
		NATS: &polybus.NATSConfig{User: "polybus", Password: "secret", ConnectionName: "go-tests"},
	})
	// A wrong password is refused before the connect timeout: ErrAuth, not ErrTimeout.
	bus, err := polybus.OpenConfig(context.Background(), polybus.Config{
		URL: url, ConnectTimeout: 5 * time.Second,
		NATS: &polybus.NATSConfig{User: "polybus", Password: "wrong"},
	})
	if bus != nil {
		bus.Close()
	}
	if !errors.Is(err, polybus.ErrAuth) {
		t.Fatalf("want ErrAuth, got %v", err)
	}
	var pe *polybus.Error
	if !errors.As(err, &pe) || pe.Message == "" {
		t.Errorf("no detail in %#v", err)
	}
}

func TestUnreachableBroker(t *testing.T) {
	for _, url := range []string{"nats://127.0.0.1:1", "jetstream://127.0.0.1:1"} {
		t.Run(url, func(t *testing.T) {
			bus, err := polybus.OpenConfig(context.Background(), polybus.Config{URL: url, ConnectTimeout: 2 * time.Second})
			if bus != nil {
				bus.Close()
				t.Fatal("opened a bus on a closed port")
			}
			if !errors.Is(err, polybus.ErrConnection) && !errors.Is(err, polybus.ErrTimeout) {
				t.Fatalf("want ErrConnection or ErrTimeout, got %v", err)
			}
		})
	}
}

func TestConfigJSONBackendSections(t *testing.T) {
	cfg := polybus.Config{
		URL: "jetstream://127.0.0.1:4222",
		NATS: &polybus.NATSConfig{
			User: "app", Password: "secret", Token: "tok", NKeySeed: "SU", CredsFile: "a.creds",
			TLSCA: "ca.pem", TLSCert: "cert.pem", TLSKey: "key.pem", TLSRequired: true,
			ConnectionName: "billing",
		},
		JetStream: &polybus.JetStreamConfig{
			Stream: "ORDERS", Subjects: []string{"app.orders.*"}, Retention: "interest", Storage: "memory",
			MaxAge: time.Hour, MaxBytes: -1, Replicas: 3, AckWait: 1500*time.Millisecond + time.Microsecond,
			MaxAckPending: 10, MaxDeliver: -1, InactiveThreshold: time.Minute,
			MaxPendingPublishes: 100,
		},
	}
	b, err := cfg.MarshalJSON()
	want := `{"url":"jetstream://127.0.0.1:4222",` +
		`"nats":{"user":"app","password":"secret","token":"tok","nkey_seed":"SU","creds_file":"a.creds",` +
		`"tls_ca":"ca.pem","tls_cert":"cert.pem","tls_key":"key.pem","tls_required":true,"connection_name":"billing"},` +
		`"jetstream":{"stream":"ORDERS","subjects":["app.orders.*"],"retention":"interest","storage":"memory",` +
		`"max_age_ms":3600000,"max_bytes":-1,"replicas":3,"ack_wait_ms":1501,"max_ack_pending":10,"max_deliver":-1,` +
		`"inactive_threshold_ms":60000,"max_pending_publishes":100}}`
	if err != nil || string(b) != want {
		t.Errorf("got  %s, %v\nwant %s", b, err, want)
	}
	empty := polybus.Config{URL: "nats://h:4222", NATS: &polybus.NATSConfig{}, JetStream: &polybus.JetStreamConfig{}}
	if b, _ := empty.MarshalJSON(); string(b) != `{"url":"nats://h:4222","nats":{},"jetstream":{}}` {
		t.Errorf("zero fields are not omitted: %s", b)
	}
	bad := polybus.Config{URL: "memory://", JetStream: &polybus.JetStreamConfig{AckWait: -time.Second}}
	_, err = polybus.OpenConfig(context.Background(), bad)
	wantCode(t, err, polybus.ErrInvalidConfig)

	// The core accepts every field name (it rejects unknown ones).
	cfg.URL = "memory://"
	cfg.NATS.TLSRequired = false
	bus, err := polybus.OpenConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	bus.Close()
}
