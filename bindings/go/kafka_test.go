package polybus_test

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	polybus "github.com/polybus/polybus/bindings/go"
)

func kafkaURL() string { return brokerURL("POLYBUS_TEST_KAFKA_URL", "kafka://127.0.0.1:9092") }

func kafkaSASLURL() string {
	return brokerURL("POLYBUS_TEST_KAFKA_SASL_URL", "kafka://127.0.0.1:9093")
}

// kafkaInterop runs the harness's plain Kafka client (tests/harness/kafka/interop.sh).
func kafkaInterop(t *testing.T, args ...string) string {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	script := filepath.Join(filepath.Dir(file), "..", "..", "tests", "harness", "kafka", "interop.sh")
	out, err := exec.Command("bash", append([]string{script}, args...)...).Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("interop %v: %v\n%s", args, err, stderr)
	}
	return string(out)
}

func TestKafkaSASL(t *testing.T) {
	url := kafkaSASLURL()
	for _, mech := range []string{"PLAIN", "SCRAM-SHA-256"} {
		t.Run(mech, func(t *testing.T) {
			// A wrong password is refused with ErrAuth and the broker's reason.
			bus, err := polybus.OpenConfig(context.Background(), polybus.Config{
				URL: url, ConnectTimeout: 5 * time.Second,
				Kafka: &polybus.KafkaConfig{SASLMechanism: mech, Username: "polybus", Password: "wrong"},
			})
			if bus != nil {
				bus.Close()
			}
			if !errors.Is(err, polybus.ErrAuth) {
				t.Fatalf("want ErrAuth, got %v", err)
			}
			if !strings.Contains(strings.ToLower(err.Error()), "authentication") || strings.Contains(err.Error(), "wrong") {
				t.Errorf("the error should name the failure without the password: %v", err)
			}
			// The right credentials, in the kafka section, carry events.
			bus = openBroker(t, polybus.Config{
				URL: url, ConnectTimeout: 5 * time.Second,
				Kafka: &polybus.KafkaConfig{SASLMechanism: mech, Username: "polybus", Password: "secret"},
			})
			got := make(chan *polybus.Event, 1)
			ctx := context.Background()
			if _, err := bus.Subscribe(ctx, "sasl.ok", func(_ context.Context, e *polybus.Event) error {
				got <- e
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			if err := bus.Publish(ctx, "sasl.ok", mech); err != nil {
				t.Fatal(err)
			}
			select {
			case e := <-got:
				if string(e.Payload) != mech {
					t.Errorf("payload %q", e.Payload)
				}
			case <-time.After(waitTimeout(t)):
				t.Fatal("no event over SASL")
			}
		})
	}
}

func TestKafkaUnreachable(t *testing.T) {
	start := time.Now()
	bus, err := polybus.OpenConfig(context.Background(), polybus.Config{URL: "kafka://127.0.0.1:1", ConnectTimeout: 2 * time.Second})
	if bus != nil {
		bus.Close()
		t.Fatal("opened a bus on a closed port")
	}
	if !errors.Is(err, polybus.ErrConnection) && !errors.Is(err, polybus.ErrTimeout) {
		t.Fatalf("want ErrConnection or ErrTimeout, got %v", err)
	}
	if !strings.Contains(err.Error(), "127.0.0.1:1") {
		t.Errorf("the error should name the server: %v", err)
	}
	if time.Since(start) > 6*time.Second {
		t.Errorf("took %v with a 2s connect timeout", time.Since(start))
	}
}

// A plain Kafka client (kafka-clients) reads a polybus event byte for byte, with its key and
// ce_ headers, and an event it produces reaches a Go handler.
func TestKafkaInterop(t *testing.T) {
	prefix := "t." + uniqueID(t)
	bus := openBroker(t, polybus.Config{URL: kafkaURL(), Name: "go-interop", Prefix: prefix})
	ctx := context.Background()
	payload := []byte{0, 1, 2, 0xfe, 0xff}
	err := bus.PublishMessage(ctx, polybus.Message{
		Topic: "orders.created", Payload: payload, Key: "order-7",
		Headers: map[string]string{"tenant": "acme"}, ID: "go-evt-1",
	})
	if err != nil {
		t.Fatal(err)
	}
	bootstrap := strings.TrimPrefix(kafkaURL(), "kafka://")
	line := strings.SplitN(kafkaInterop(t, "consume", bootstrap, prefix+".orders.created", "1", "20000"), "\n", 2)[0]
	var rec struct {
		Key      string            `json:"key"`
		ValueHex string            `json:"value_hex"`
		Headers  map[string]string `json:"headers"`
	}
	if err := json.Unmarshal([]byte(line), &rec); err != nil {
		t.Fatalf("%v: %s", err, line)
	}
	if rec.ValueHex != hex.EncodeToString(payload) || rec.Key != "order-7" {
		t.Errorf("record %+v", rec)
	}
	if rec.Headers["ce_id"] != "go-evt-1" || rec.Headers["ce_source"] != "go-interop" ||
		rec.Headers["ce_specversion"] != "1.0" || rec.Headers["tenant"] != "acme" {
		t.Errorf("headers %v", rec.Headers)
	}

	got := make(chan *polybus.Event, 1)
	if _, err := bus.Subscribe(ctx, "plain.in", func(_ context.Context, e *polybus.Event) error {
		got <- e
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	kafkaInterop(t, "produce", bootstrap, prefix+".plain.in", "k-1", "00ff10", "ce_id=plain-1", "origin=java")
	select {
	case e := <-got:
		if !bytes.Equal(e.Payload, []byte{0, 0xff, 0x10}) || e.Key != "k-1" || e.ID != "plain-1" || e.Headers["origin"] != "java" {
			t.Errorf("event %+v", e)
		}
	case <-time.After(waitTimeout(t)):
		t.Fatal("the plain client's event never reached the handler")
	}
}

func TestKafkaConfigJSON(t *testing.T) {
	cfg := polybus.Config{URL: "kafka://a:9092,b:9092", Kafka: &polybus.KafkaConfig{
		ClientID: "billing", SecurityProtocol: "sasl_ssl", SASLMechanism: "SCRAM-SHA-512",
		Username: "app", Password: "secret", TLSCA: "ca.pem", Partitions: 6, ReplicationFactor: 3,
		Compression: "lz4", Linger: 5 * time.Millisecond, SessionTimeout: 10 * time.Second,
		CommitInterval: 500 * time.Millisecond, MetadataRefresh: 2 * time.Second,
		Properties: map[string]string{"fetch.wait.max.ms": "50"},
	}}
	b, err := cfg.MarshalJSON()
	want := `{"url":"kafka://a:9092,b:9092","kafka":{"client_id":"billing","security_protocol":"sasl_ssl",` +
		`"sasl_mechanism":"SCRAM-SHA-512","username":"app","password":"secret","tls_ca":"ca.pem",` +
		`"partitions":6,"replication_factor":3,"compression":"lz4","linger_ms":5,"session_timeout_ms":10000,` +
		`"commit_interval_ms":500,"metadata_refresh_ms":2000,"properties":{"fetch.wait.max.ms":"50"}}}`
	if err != nil || string(b) != want {
		t.Errorf("got  %s, %v\nwant %s", b, err, want)
	}
	bad := polybus.Config{URL: "kafka://a:9092", Kafka: &polybus.KafkaConfig{Linger: -time.Second}}
	if _, err := bad.MarshalJSON(); !errors.Is(err, polybus.ErrInvalidConfig) || !strings.Contains(err.Error(), "Kafka.Linger") {
		t.Errorf("a negative duration: %v", err)
	}
	// The core checks what Go cannot: an unknown compression is refused by name.
	_, err = polybus.OpenConfig(context.Background(), polybus.Config{URL: kafkaURL(), Kafka: &polybus.KafkaConfig{Compression: "brotli"}})
	if !errors.Is(err, polybus.ErrInvalidConfig) || !strings.Contains(err.Error(), "kafka.compression") {
		t.Errorf("an unknown compression: %v", err)
	}
}
