package polybus_test

import (
	"context"
	"errors"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	polybus "github.com/polybus/polybus/bindings/go"
)

// await returns the value ch delivers, failing the test after waitTimeout (a generous
// deadline, not a timing assertion).
func await[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-timeAfter(t):
		t.Fatalf("timed out waiting for %s", what)
		var zero T
		return zero
	}
}

// timeAfter fires after waitTimeout.
func timeAfter(t *testing.T) <-chan time.Time {
	return time.After(waitTimeout(t))
}

// stopRecorder is a handler that records the payloads it handled, and runs onStop (once, with the
// handler's context) on the payload "stop".
type stopRecorder struct {
	mu     sync.Mutex
	seen   []string
	ctx    context.Context
	onStop func() error
	result chan error // onStop's result
}

func newStopRecorder() *stopRecorder {
	return &stopRecorder{result: make(chan error, 1)}
}

func (r *stopRecorder) handle(ctx context.Context, e *polybus.Event) error {
	r.mu.Lock()
	r.seen = append(r.seen, string(e.Payload))
	r.ctx = ctx
	r.mu.Unlock()
	if string(e.Payload) == "stop" {
		r.result <- r.onStop()
	}
	return nil
}

func (r *stopRecorder) handled() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.seen)
}

func publishAll(t *testing.T, bus *polybus.Bus, topic string, payloads ...string) {
	t.Helper()
	batch := make([]polybus.Message, len(payloads))
	for i, p := range payloads {
		batch[i] = polybus.Message{Topic: topic, Payload: p}
	}
	if err := bus.PublishBatch(context.Background(), batch); err != nil {
		t.Fatal(err)
	}
}

// TestCloseFromOwnHandler closes (or unsubscribes) a subscription from inside its own handler,
// at concurrency 1 and 4: the call returns at once with nil (it used to deadlock), the events
// already queued are still handled, events published afterwards are not, and the handlers'
// context is cancelled once the subscription has drained.
func TestCloseFromOwnHandler(t *testing.T) {
	for _, tc := range []struct {
		name        string
		concurrency int
		close       func(*polybus.Subscription) error
	}{
		{"Close", 1, (*polybus.Subscription).Close},
		{"Unsubscribe", 1, (*polybus.Subscription).Unsubscribe},
		{"Close/concurrency4", 4, (*polybus.Subscription).Close},
		{"Unsubscribe/concurrency4", 4, (*polybus.Subscription).Unsubscribe},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bus := open(t)
			ctx := context.Background()
			rec := newStopRecorder()
			var sub *polybus.Subscription
			// The handler closes once every event is published (and sub is set), so that all
			// four are queued or in flight when it stops.
			published := make(chan struct{})
			rec.onStop = func() error {
				<-published
				// A second call from the handler returns at once too.
				return errors.Join(tc.close(sub), tc.close(sub))
			}
			sub, err := bus.Subscribe(ctx, "jobs.run", rec.handle, polybus.WithConcurrency(tc.concurrency))
			if err != nil {
				t.Fatal(err)
			}
			// A witness that receives every event, to know when "late" has been published.
			witness := collect(t, bus, "jobs.run")

			publishAll(t, bus, "jobs.run", "1", "stop", "2", "3")
			close(published)
			if err := await(t, rec.result, "Close from the handler"); err != nil {
				t.Fatalf("Close from the handler: %v", err)
			}
			if err := bus.Publish(ctx, "jobs.run", "late"); err != nil {
				t.Fatal(err)
			}
			for range 5 {
				next(t, witness)
			}
			// Waits for the drain; the first Close returned nil, so this one does too.
			if err := sub.Close(); err != nil {
				t.Fatalf("Close after the handler's: %v", err)
			}
			got := rec.handled()
			slices.Sort(got)
			if want := []string{"1", "2", "3", "stop"}; !slices.Equal(got, want) {
				t.Errorf("handled %q, want %q (queued events drained, the late one not delivered)", got, want)
			}
			rec.mu.Lock()
			hctx := rec.ctx
			rec.mu.Unlock()
			await(t, hctx.Done(), "the handlers' context to be cancelled")
		})
	}
}

// TestCloseAnotherSubscriptionFromHandler closes a subscription of the same bus from a handler
// of another one: that waits for the drain (the pool's other goroutines handle it) and
// returns.
func TestCloseAnotherSubscriptionFromHandler(t *testing.T) {
	bus := open(t)
	ctx := context.Background()
	other := newStopRecorder()
	sub, err := bus.Subscribe(ctx, "jobs.other", other.handle)
	if err != nil {
		t.Fatal(err)
	}
	rec := newStopRecorder()
	rec.onStop = sub.Close
	if _, err := bus.Subscribe(ctx, "jobs.run", rec.handle); err != nil {
		t.Fatal(err)
	}
	publishAll(t, bus, "jobs.other", "a", "b", "c")
	publishAll(t, bus, "jobs.run", "stop")
	if err := await(t, rec.result, "Close of another subscription"); err != nil {
		t.Fatal(err)
	}
	// Close waited for the drain: every event queued before it was handled.
	if got := other.handled(); !slices.Equal(got, []string{"a", "b", "c"}) {
		t.Errorf("the other subscription handled %q", got)
	}
}

// TestBusCloseFromHandler closes the bus from inside a handler: Close returns nil at once,
// publishes and subscribes fail with ErrClosed from then on, the bus closes in the background
// (draining what was queued), and a Close from outside waits for it.
func TestBusCloseFromHandler(t *testing.T) {
	bus := open(t)
	ctx := context.Background()
	rec := newStopRecorder()
	published := make(chan struct{})
	rec.onStop = func() error {
		<-published
		return errors.Join(bus.Close(), bus.Close())
	}
	if _, err := bus.Subscribe(ctx, "jobs.run", rec.handle); err != nil {
		t.Fatal(err)
	}
	publishAll(t, bus, "jobs.run", "1", "stop", "2", "3")
	close(published)
	if err := await(t, rec.result, "Bus.Close from the handler"); err != nil {
		t.Fatalf("Bus.Close from the handler: %v", err)
	}
	// Closed as soon as the handler's Close returned, while the drain goes on.
	wantCode(t, bus.Publish(ctx, "jobs.run", "early"), polybus.ErrClosed)
	_, err := bus.Subscribe(ctx, "jobs.other", rec.handle)
	wantCode(t, err, polybus.ErrClosed)
	closed := make(chan error, 1)
	go func() { closed <- bus.Close() }()
	if err := await(t, closed, "Bus.Close after the handler's"); err != nil {
		t.Fatal(err)
	}
	if got := rec.handled(); !slices.Equal(got, []string{"1", "stop", "2", "3"}) {
		t.Errorf("handled %q, want every event queued before the close", got)
	}
	wantCode(t, bus.Publish(ctx, "jobs.run", "late"), polybus.ErrClosed)
	if st, err := bus.Stats(); err != nil || st.Acked != 4 {
		t.Errorf("stats %+v, %v", st, err)
	}
}

// osThreads returns the process's OS thread count from /proc/self/status, skipping the test
// where there is no /proc.
func osThreads(t *testing.T) int {
	t.Helper()
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Skipf("no /proc/self/status: %v", err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "Threads:"); ok {
			n, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Skip("no Threads line in /proc/self/status")
	return 0
}

// TestSubscriptionsShareThePool subscribes 1,000 handlers on one bus and checks that they are
// served by the bus's few goroutines, not a thread each (they used to cost 1,006 OS threads),
// and that every one of them is delivered to. A count, not a timing: cmd/polybus-scale
// measures the rest.
func TestSubscriptionsShareThePool(t *testing.T) {
	bus := open(t)
	ctx := context.Background()
	before := osThreads(t)
	const n = 1000
	var wg sync.WaitGroup
	wg.Add(n)
	for i := range n {
		var once sync.Once
		_, err := bus.Subscribe(ctx, "many.t"+strconv.Itoa(i), func(context.Context, *polybus.Event) error {
			once.Do(wg.Done)
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	batch := make([]polybus.Message, n)
	for i := range batch {
		batch[i] = polybus.Message{Topic: "many.t" + strconv.Itoa(i)}
	}
	if err := bus.PublishBatch(ctx, batch); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	await(t, done, "every subscription to handle its event")
	if grew := osThreads(t) - before; grew > 32 {
		t.Errorf("%d subscriptions added %d OS threads", n, grew)
	}
	if err := bus.Close(); err != nil {
		t.Fatal(err)
	}
}
