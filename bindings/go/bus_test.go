package polybus_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	polybus "github.com/polybus/polybus/bindings/go"
)

// waitTimeout is the deadline of every wait, scaled by POLYBUS_TEST_TIMEOUT_SCALE.
func waitTimeout(t *testing.T) time.Duration {
	return time.Duration(float64(10*time.Second) * timeoutScale(t))
}

func open(t *testing.T) *polybus.Bus {
	t.Helper()
	bus, err := polybus.OpenConfig(context.Background(), polybus.Config{URL: "memory://", Name: "tests"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bus.Close() })
	return bus
}

// collect subscribes a handler that sends every event to the returned channel.
func collect(t *testing.T, bus *polybus.Bus, pattern string, opts ...polybus.SubscribeOption) <-chan *polybus.Event {
	t.Helper()
	ch := make(chan *polybus.Event, 100)
	_, err := bus.Subscribe(context.Background(), pattern, func(_ context.Context, e *polybus.Event) error {
		ch <- e
		return nil
	}, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return ch
}

func next(t *testing.T, ch <-chan *polybus.Event) *polybus.Event {
	t.Helper()
	select {
	case e := <-ch:
		return e
	case <-time.After(waitTimeout(t)):
		t.Fatal("timed out waiting for an event")
		return nil
	}
}

func wantCode(t *testing.T, err error, sentinel *polybus.Error) {
	t.Helper()
	if !errors.Is(err, sentinel) {
		t.Fatalf("want %s, got %v", sentinel.Code, err)
	}
}

func TestRoundTrip(t *testing.T) {
	bus := open(t)
	events := collect(t, bus, "orders.*")
	ctx := context.Background()
	for _, payload := range []any{[]byte("bytes"), "text", nil} {
		if err := bus.Publish(ctx, "orders.created", payload); err != nil {
			t.Fatal(err)
		}
	}
	for _, want := range []string{"bytes", "text", ""} {
		e := next(t, events)
		if string(e.Payload) != want || e.Topic != "orders.created" || e.Type != "orders.created" ||
			e.Attempt != 1 || e.Source != "tests" || e.ID == "" || e.Key != "" || e.Headers != nil {
			t.Errorf("unexpected event %+v (want payload %q)", e, want)
		}
		if d := time.Since(e.Time); d < 0 || d > time.Minute {
			t.Errorf("event time %v is not about now", e.Time)
		}
	}
}

func TestScan(t *testing.T) {
	type order struct {
		ID    int      `json:"id"`
		Items []string `json:"items"`
	}
	bus := open(t)
	events := collect(t, bus, "orders.created")
	ctx := context.Background()
	if err := bus.Publish(ctx, "orders.created", order{ID: 7, Items: []string{"a"}}); err != nil {
		t.Fatal(err)
	}
	if err := bus.Publish(ctx, "orders.created", "not json"); err != nil {
		t.Fatal(err)
	}
	var got order
	if err := next(t, events).Scan(&got); err != nil || got.ID != 7 || len(got.Items) != 1 {
		t.Errorf("Scan: %+v, %v", got, err)
	}
	wantCode(t, next(t, events).Scan(&got), polybus.ErrPayload)
}

func TestPublishUnencodablePayload(t *testing.T) {
	bus := open(t)
	err := bus.Publish(context.Background(), "orders.created", make(chan int))
	wantCode(t, err, polybus.ErrPayload)
	err = bus.PublishMessage(context.Background(), polybus.Message{Topic: "orders.created", Payload: func() {}})
	wantCode(t, err, polybus.ErrPayload)
}

func TestPublishMessage(t *testing.T) {
	bus := open(t)
	events := collect(t, bus, "orders.>")
	when := time.Date(2024, 5, 6, 7, 8, 9, 123456789, time.UTC)
	msg := polybus.Message{
		Topic: "orders.created.eu", Payload: map[string]int{"n": 1}, Key: "order-1",
		Headers: map[string]string{"tenant": "acme", "trace": "abc"}, ID: "evt-1", Type: "order.created",
		Time: when,
	}
	if err := bus.PublishMessage(context.Background(), msg); err != nil {
		t.Fatal(err)
	}
	e := next(t, events)
	if e.Topic != msg.Topic || string(e.Payload) != `{"n":1}` || e.Key != "order-1" || e.ID != "evt-1" ||
		e.Type != "order.created" || e.Headers["tenant"] != "acme" || e.Headers["trace"] != "abc" {
		t.Errorf("unexpected event %+v", e)
	}
	if !e.Time.Equal(when) {
		t.Errorf("event time %v, want %v", e.Time, when)
	}
	err := bus.PublishMessage(context.Background(), polybus.Message{Topic: "orders.x", Headers: map[string]string{"bad name": "v"}})
	wantCode(t, err, polybus.ErrInvalidArgument)
}

func TestPublishBatch(t *testing.T) {
	bus := open(t)
	events := collect(t, bus, "jobs.*")
	var batch []polybus.Message
	for i := range 50 {
		batch = append(batch, polybus.Message{Topic: "jobs.run", Payload: fmt.Sprint(i), Key: fmt.Sprint("k", i%3)})
	}
	if err := bus.PublishBatch(context.Background(), batch); err != nil {
		t.Fatal(err)
	}
	for i := range 50 {
		if e := next(t, events); string(e.Payload) != fmt.Sprint(i) {
			t.Fatalf("event %d has payload %q", i, e.Payload)
		}
	}
	bad := []polybus.Message{{Topic: "jobs.run", Payload: "ok"}, {Topic: "jobs..bad"}}
	err := bus.PublishBatch(context.Background(), bad)
	wantCode(t, err, polybus.ErrInvalidTopic)
	if !strings.Contains(err.Error(), "event 1 of the batch") {
		t.Errorf("the error does not name the failing index: %v", err)
	}
	if e := next(t, events); string(e.Payload) != "ok" {
		t.Errorf("the message before the failing one was not published: %+v", e)
	}
}

func TestPanickingHandlerIsRetried(t *testing.T) {
	bus := open(t)
	var calls atomic.Int32
	done := make(chan *polybus.Event, 1)
	_, err := bus.Subscribe(context.Background(), "orders.created", func(_ context.Context, e *polybus.Event) error {
		if calls.Add(1) == 1 {
			panic("boom")
		}
		done <- e
		return nil
	}, polybus.WithBackoffInitial(time.Millisecond), polybus.WithBackoffMax(time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	if err := bus.Publish(context.Background(), "orders.created", "x"); err != nil {
		t.Fatal(err)
	}
	if e := next(t, done); e.Attempt != 2 {
		t.Errorf("the retry has attempt %d, want 2", e.Attempt)
	}
	if err := bus.Close(); err != nil {
		t.Fatal(err)
	}
	st, err := bus.Stats()
	if err != nil || st.Failed != 1 || st.Retried != 1 || st.Acked != 1 {
		t.Errorf("stats %+v, %v", st, err)
	}
}

func TestHandlerErrorStopsTheBatch(t *testing.T) {
	bus := open(t)
	var seen []string
	_, err := bus.Subscribe(context.Background(), "orders.created", func(_ context.Context, e *polybus.Event) error {
		seen = append(seen, fmt.Sprintf("%s/%d", e.Payload, e.Attempt))
		if string(e.Payload) == "1" && e.Attempt == 1 {
			return errors.New("not yet")
		}
		return nil
	}, polybus.WithBackoffInitial(time.Millisecond), polybus.WithBackoffMax(time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	batch := []polybus.Message{{Topic: "orders.created", Payload: "0"}, {Topic: "orders.created", Payload: "1"}, {Topic: "orders.created", Payload: "2"}}
	if err := bus.PublishBatch(context.Background(), batch); err != nil {
		t.Fatal(err)
	}
	if err := bus.Close(); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(seen, " "); got != "0/1 1/1 1/2 2/1" {
		t.Errorf("invocations %q, want %q", got, "0/1 1/1 1/2 2/1")
	}
}

func TestErrors(t *testing.T) {
	bus := open(t)
	ctx := context.Background()
	nop := func(context.Context, *polybus.Event) error { return nil }
	wantCode(t, bus.Publish(ctx, "orders..created", "x"), polybus.ErrInvalidTopic)
	_, err := bus.Subscribe(ctx, "orders.>.eu", nop)
	wantCode(t, err, polybus.ErrInvalidPattern)
	_, err = bus.Subscribe(ctx, "orders.*", nil)
	wantCode(t, err, polybus.ErrInvalidArgument)
	_, err = bus.Subscribe(ctx, "orders.*", nop, polybus.WithConcurrency(-1))
	wantCode(t, err, polybus.ErrInvalidArgument)
	_, err = bus.Subscribe(ctx, "orders.*", nop, polybus.WithStart(polybus.StartEarliest))
	wantCode(t, err, polybus.ErrUnsupported)
	_, err = polybus.Open(ctx, "nowhere://")
	wantCode(t, err, polybus.ErrInvalidConfig)
	_, err = polybus.OpenConfig(ctx, polybus.Config{URL: "memory://", CloseTimeout: -time.Second})
	wantCode(t, err, polybus.ErrInvalidConfig)

	var pe *polybus.Error
	if !errors.As(bus.Publish(ctx, "", "x"), &pe) || pe.Code != polybus.StatusInvalidTopic ||
		pe.Code.String() != "POLYBUS_ERR_INVALID_TOPIC" || !strings.HasPrefix(pe.Error(), "invalid topic: ") {
		t.Errorf("unexpected error %#v", pe)
	}
	if errors.Is(pe, polybus.ErrClosed) {
		t.Error("an invalid-topic error matches ErrClosed")
	}
	if s := polybus.Status(42).String(); s != "POLYBUS_UNKNOWN_STATUS" {
		t.Errorf("Status(42) is %q", s)
	}
	if polybus.ErrClosed.Error() != "closed" {
		t.Errorf("ErrClosed.Error() is %q", polybus.ErrClosed.Error())
	}
}

func TestNilAndUnopenedBus(t *testing.T) {
	ctx := context.Background()
	nop := func(context.Context, *polybus.Event) error { return nil }
	for name, bus := range map[string]*polybus.Bus{"nil": nil, "zero": new(polybus.Bus)} {
		wantCode(t, bus.Publish(ctx, "a", "b"), polybus.ErrInvalidArgument)
		wantCode(t, bus.PublishMessage(ctx, polybus.Message{Topic: "a"}), polybus.ErrInvalidArgument)
		_, err := bus.Subscribe(ctx, "a", nop)
		wantCode(t, err, polybus.ErrInvalidArgument)
		_, err = bus.Stats()
		wantCode(t, err, polybus.ErrInvalidArgument)
		wantCode(t, bus.Close(), polybus.ErrInvalidArgument)
		t.Logf("%s bus: %v", name, bus.Close())
	}
	var sub *polybus.Subscription
	wantCode(t, sub.Close(), polybus.ErrInvalidArgument)
}

func TestCallsAfterClose(t *testing.T) {
	bus := open(t)
	ctx := context.Background()
	sub, err := bus.Subscribe(ctx, "a.b", func(context.Context, *polybus.Event) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	if err := bus.Close(); err != nil {
		t.Fatal(err)
	}
	wantCode(t, bus.Publish(ctx, "a.b", "x"), polybus.ErrClosed)
	wantCode(t, bus.PublishBatch(ctx, []polybus.Message{{Topic: "a.b"}}), polybus.ErrClosed)
	_, err = bus.Subscribe(ctx, "a.b", func(context.Context, *polybus.Event) error { return nil })
	wantCode(t, err, polybus.ErrClosed)
	if err := sub.Close(); err != nil {
		t.Errorf("closing a subscription of a closed bus: %v", err)
	}
	if _, err := bus.Stats(); err != nil {
		t.Errorf("Stats after Close: %v", err)
	}
}

func TestCloseIsIdempotent(t *testing.T) {
	bus := open(t)
	sub, err := bus.Subscribe(context.Background(), "a.b", func(context.Context, *polybus.Event) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := sub.Unsubscribe(); err != nil {
			t.Fatal(err)
		}
	}
	errs := make(chan error, 3)
	for range 3 {
		go func() { errs <- bus.Close() }()
	}
	for range 3 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if err := bus.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestCloseDrains(t *testing.T) {
	bus := open(t)
	var handled atomic.Int32
	_, err := bus.Subscribe(context.Background(), "a.b", func(context.Context, *polybus.Event) error {
		time.Sleep(time.Millisecond) // the workload
		handled.Add(1)
		return nil
	}, polybus.WithConcurrency(3))
	if err != nil {
		t.Fatal(err)
	}
	for i := range 30 {
		if err := bus.Publish(context.Background(), "a.b", fmt.Sprint(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := bus.Close(); err != nil {
		t.Fatal(err)
	}
	if n := handled.Load(); n != 30 {
		t.Errorf("%d of 30 events handled before Close returned", n)
	}
}

func TestDefaultBus(t *testing.T) {
	ctx := context.Background()
	polybus.SetDefault(nil)
	wantCode(t, polybus.Publish(ctx, "a.b", "x"), polybus.ErrInvalidArgument)
	bus := open(t)
	polybus.SetDefault(bus)
	t.Cleanup(func() { polybus.SetDefault(nil) })
	if polybus.Default() != bus {
		t.Fatal("Default does not return the bus SetDefault set")
	}
	got := make(chan *polybus.Event, 1)
	_, err := polybus.Subscribe(ctx, "a.b", func(_ context.Context, e *polybus.Event) error {
		got <- e
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := polybus.Publish(ctx, "a.b", []byte("hello")); err != nil {
		t.Fatal(err)
	}
	if e := next(t, got); string(e.Payload) != "hello" {
		t.Errorf("payload %q", e.Payload)
	}
}

func TestContextCancellation(t *testing.T) {
	bus := open(t)
	ctx, cancel := context.WithCancel(context.Background())

	canceled, cancelNow := context.WithCancel(context.Background())
	cancelNow()
	if err := bus.Publish(canceled, "a.b", "x"); !errors.Is(err, context.Canceled) {
		t.Errorf("Publish with a canceled context: %v", err)
	}
	if _, err := polybus.Open(canceled, "memory://"); !errors.Is(err, context.Canceled) {
		t.Errorf("Open with a canceled context: %v", err)
	}

	handlerCtx := make(chan context.Context, 1)
	sub, err := bus.Subscribe(ctx, "a.b", func(hctx context.Context, _ *polybus.Event) error {
		handlerCtx <- hctx
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := bus.Publish(context.Background(), "a.b", "x"); err != nil {
		t.Fatal(err)
	}
	var hctx context.Context
	select {
	case hctx = <-handlerCtx:
	case <-time.After(waitTimeout(t)):
		t.Fatal("the handler did not run")
	}
	if hctx.Err() != nil {
		t.Fatal("the handler's context is done while the subscription runs")
	}
	cancel()
	select {
	case <-hctx.Done():
	case <-time.After(waitTimeout(t)):
		t.Fatal("cancelling Subscribe's context did not end the subscription")
	}
	if err := sub.Close(); err != nil {
		t.Errorf("Close after cancellation: %v", err)
	}
	// The subscription is gone: this event has no receiver left.
	if err := bus.Publish(context.Background(), "a.b", "y"); err != nil {
		t.Fatal(err)
	}
	if err := bus.Close(); err != nil {
		t.Fatal(err)
	}
	if st, _ := bus.Stats(); st.Delivered != 1 {
		t.Errorf("delivered %d events, want 1", st.Delivered)
	}
}

func TestConfigJSON(t *testing.T) {
	cfg := polybus.Config{
		URL: "memory://", Prefix: "app", Name: "billing", ConnectTimeout: 1500 * time.Microsecond,
		PublishTimeout: time.Second, CloseTimeout: 2 * time.Second, MaxPayload: 64,
	}
	b, err := cfg.MarshalJSON()
	want := `{"url":"memory://","prefix":"app","name":"billing","connect_timeout_ms":2,"publish_timeout_ms":1000,"close_timeout_ms":2000,"max_payload":64}`
	if err != nil || string(b) != want {
		t.Errorf("got %s, %v\nwant %s", b, err, want)
	}
	if b, _ := (polybus.Config{URL: "memory://"}).MarshalJSON(); string(b) != `{"url":"memory://"}` {
		t.Errorf("zero fields are not omitted: %s", b)
	}
}

func TestVersion(t *testing.T) {
	if polybus.Version() == "" {
		t.Error("empty version")
	}
}
