package polybus_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	polybus "github.com/polybus/polybus/bindings/go"
)

// TestJSONPayloadContentType checks the one JSON rule: a value encoded as JSON is sent with
// content-type application/json (set by the core), bytes and strings are not, and a
// content-type header given by the caller wins.
func TestJSONPayloadContentType(t *testing.T) {
	bus := open(t)
	ctx := context.Background()
	events := collect(t, bus, "orders.*")
	type order struct {
		ID int `json:"id"`
	}
	if err := bus.Publish(ctx, "orders.json", order{ID: 7}); err != nil {
		t.Fatal(err)
	}
	if err := bus.Publish(ctx, "orders.bytes", []byte(`{"id":7}`)); err != nil {
		t.Fatal(err)
	}
	if err := bus.PublishMessage(ctx, polybus.Message{Topic: "orders.msg", Payload: map[string]int{"id": 7}}); err != nil {
		t.Fatal(err)
	}
	err := bus.PublishBatch(ctx, []polybus.Message{
		{Topic: "orders.batch", Payload: []int{1, 2}},
		{Topic: "orders.string", Payload: "text"},
		{Topic: "orders.own", Payload: order{ID: 8}, Headers: map[string]string{"content-type": "application/vnd.order+json"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"orders.json":   "application/json",
		"orders.bytes":  "",
		"orders.msg":    "application/json",
		"orders.batch":  "application/json",
		"orders.string": "",
		"orders.own":    "application/vnd.order+json",
	}
	for range want {
		e := next(t, events)
		if got := e.Headers["content-type"]; got != want[e.Topic] {
			t.Errorf("%s: content-type %q, want %q (payload %s)", e.Topic, got, want[e.Topic], e.Payload)
		}
	}
}

// TestPublishBatchReportsPublished checks that a failed PublishBatch says how many messages
// were published before the failure, and that the core's *Error is still reachable.
func TestPublishBatchReportsPublished(t *testing.T) {
	bus := open(t)
	ctx := context.Background()
	events := collect(t, bus, "jobs.*")
	bad := []polybus.Message{{Topic: "jobs.a", Payload: "0"}, {Topic: "jobs.a", Payload: "1"}, {Topic: "jobs..bad"}, {Topic: "jobs.a", Payload: "3"}}
	err := bus.PublishBatch(ctx, bad)
	var be *polybus.BatchError
	if !errors.As(err, &be) || be.Published != 2 {
		t.Fatalf("want a *BatchError with Published 2, got %#v", err)
	}
	wantCode(t, err, polybus.ErrInvalidTopic)
	var pe *polybus.Error
	if !errors.As(err, &pe) || pe.Code != polybus.StatusInvalidTopic || err.Error() != pe.Error() {
		t.Errorf("the *Error inside: %#v", pe)
	}
	for _, want := range []string{"0", "1"} {
		if e := next(t, events); string(e.Payload) != want {
			t.Errorf("got %q, want %q", e.Payload, want)
		}
	}

	// A payload JSON cannot encode refuses the batch before anything is published.
	err = bus.PublishBatch(ctx, []polybus.Message{{Topic: "jobs.a"}, {Topic: "jobs.a", Payload: make(chan int)}})
	if !errors.As(err, &be) || be.Published != 0 || !errors.Is(err, polybus.ErrPayload) ||
		!strings.HasPrefix(err.Error(), "payload error: event 1 of the batch: ") {
		t.Errorf("unencodable payload: %v", err)
	}

	// A closed bus and a done context are BatchErrors too; PublishMessage returns the *Error.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := bus.PublishBatch(cctx, bad); !errors.As(err, &be) || !errors.Is(err, context.Canceled) {
		t.Errorf("done context: %v", err)
	}
	err = bus.PublishMessage(ctx, polybus.Message{Topic: "jobs..bad"})
	if _, ok := err.(*polybus.Error); !ok || !strings.HasPrefix(err.Error(), "invalid topic: ") {
		t.Errorf("PublishMessage returned %#v", err)
	}
}

// TestAbsentKeyAndSource tells an absent key and source from present ones.
func TestAbsentKeyAndSource(t *testing.T) {
	ctx := context.Background()
	named := open(t) // Name "tests"
	anon, err := polybus.Open(ctx, "memory://")
	if err != nil {
		t.Fatal(err)
	}
	defer anon.Close()
	for _, bus := range []*polybus.Bus{named, anon} {
		events := collect(t, bus, "k.*")
		if err := bus.PublishMessage(ctx, polybus.Message{Topic: "k.with", Key: "k1"}); err != nil {
			t.Fatal(err)
		}
		if err := bus.Publish(ctx, "k.without", "x"); err != nil {
			t.Fatal(err)
		}
		with, without := next(t, events), next(t, events)
		if k, ok := with.LookupKey(); k != "k1" || !ok {
			t.Errorf("LookupKey of a keyed event: %q, %v", k, ok)
		}
		if k, ok := without.LookupKey(); k != "" || ok {
			t.Errorf("LookupKey of an event without key: %q, %v", k, ok)
		}
		src, ok := without.LookupSource()
		if bus == named && (src != "tests" || !ok) || bus == anon && (src != "" || ok) {
			t.Errorf("LookupSource: %q, %v", src, ok)
		}
	}
	// Events built by hand report what their fields say.
	e := polybus.Event{Key: "k", Source: "s"}
	if _, ok := e.LookupKey(); !ok {
		t.Error("a hand-made event with a Key reports none")
	}
	if _, ok := e.LookupSource(); !ok {
		t.Error("a hand-made event with a Source reports none")
	}
}

// TestOpenJSON opens buses from the JSON configuration text every language takes.
func TestOpenJSON(t *testing.T) {
	ctx := context.Background()
	bus, err := polybus.OpenJSON(ctx, `{"url": "memory://", "name": "from-json", "prefix": "app", "close_timeout_ms": 5000}`)
	if err != nil {
		t.Fatal(err)
	}
	defer bus.Close()
	events := collect(t, bus, "orders.*")
	if err := bus.Publish(ctx, "orders.created", "x"); err != nil {
		t.Fatal(err)
	}
	if e := next(t, events); e.Source != "from-json" || e.Topic != "orders.created" {
		t.Errorf("event %+v", e)
	}

	// A context with a deadline (which guards the wait for the connection) opens all of them.
	dctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for _, text := range []string{`{"url": "memory://", "connect_timeout_ms": 600000}`, `{"url": "memory://"}`, "memory://"} {
		b, err := polybus.OpenJSON(dctx, text)
		if err != nil {
			t.Fatalf("%s: %v", text, err)
		}
		b.Close()
	}

	_, err = polybus.OpenJSON(ctx, `{"url": "memory://", "no_such_setting": 1}`)
	wantCode(t, err, polybus.ErrInvalidConfig)
	_, err = polybus.OpenJSON(ctx, `{"url": `)
	wantCode(t, err, polybus.ErrInvalidConfig)
	if err != nil && strings.HasPrefix(err.Error(), "polybus: ") {
		t.Errorf("the error is not the core's text: %v", err)
	}
}

// PublishMessage is one publish, not a batch of one: its errors read as a publish's.
func TestPublishMessageErrorsAreAPublishs(t *testing.T) {
	bus, err := polybus.Open(context.Background(), "memory://")
	if err != nil {
		t.Fatal(err)
	}
	defer bus.Close()
	err = bus.PublishMessage(context.Background(), polybus.Message{Topic: "a..b", Payload: []byte("x")})
	if !errors.Is(err, polybus.ErrInvalidTopic) {
		t.Fatalf("got %v, want ErrInvalidTopic", err)
	}
	var be *polybus.BatchError
	if errors.As(err, &be) || strings.Contains(err.Error(), "of the batch") {
		t.Fatalf("PublishMessage reported a batch: %v", err)
	}
}
