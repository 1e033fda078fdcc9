package polybus_test

import (
	"context"
	"errors"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	polybus "github.com/polybus/polybus/bindings/go"
)

// shortDeadline is the deadline of the calls that must give up on it: short, so that the
// tests run quickly, never compared with a measured time.
const shortDeadline = 200 * time.Millisecond

// wantGivenUp checks that err is what a call returns when its context ended: it matches
// ctx.Err() (want) and the status sentinel, and it is an *Error carrying the core's text.
func wantGivenUp(t *testing.T, err error, want error, text string) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("want an error matching %v, got %#v (%v)", want, err, err)
	}
	sentinel := polybus.ErrCancelled
	if want == context.DeadlineExceeded {
		sentinel = polybus.ErrTimeout
	}
	if !errors.Is(err, sentinel) {
		t.Errorf("%v does not match %v", err, sentinel.Code)
	}
	var pe *polybus.Error
	if !errors.As(err, &pe) || !errors.Is(pe.Unwrap(), want) {
		t.Errorf("no *Error unwrapping to %v in %#v", want, err)
	}
	if !strings.Contains(err.Error(), text) {
		t.Errorf("the error %q does not say %q", err, text)
	}
}

// silentListener accepts TCP connections on loopback and never writes to them. Accepted
// connections arrive on the channel and are closed when the test ends.
func silentListener(t *testing.T) (addr string, accepted <-chan net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan net.Conn, 16)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			select {
			case ch <- c:
			default:
				c.Close()
			}
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
		for {
			select {
			case c := <-ch:
				c.Close()
			default:
				return
			}
		}
	})
	return ln.Addr().String(), ch
}

// TestOpenGivesUpAtTheContextDeadline opens a NATS bus on a server that accepts and never
// speaks, with a connect timeout of a minute: the context's deadline ends the wait in the core.
func TestOpenGivesUpAtTheContextDeadline(t *testing.T) {
	addr, _ := silentListener(t)
	ctx, cancel := context.WithTimeout(context.Background(), shortDeadline)
	defer cancel()
	bus, err := polybus.OpenConfig(ctx, polybus.Config{URL: "nats://" + addr, ConnectTimeout: time.Minute})
	if bus != nil {
		bus.Close()
		t.Fatal("opened a bus on a server that never speaks")
	}
	wantGivenUp(t, err, context.DeadlineExceeded, "the caller's deadline passed")

	// OpenJSON takes the same path.
	ctx, cancel = context.WithTimeout(context.Background(), shortDeadline)
	defer cancel()
	_, err = polybus.OpenJSON(ctx, `{"url": "nats://`+addr+`", "connect_timeout_ms": 60000}`)
	wantGivenUp(t, err, context.DeadlineExceeded, "the caller's deadline passed")
}

// TestOpenGivesUpWhenCancelled cancels Open's context once the server has accepted the
// connection, that is, while Open waits in the core; nothing is left open: the client closes
// the connection.
func TestOpenGivesUpWhenCancelled(t *testing.T) {
	addr, accepted := silentListener(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	conns := make(chan net.Conn, 1)
	go func() {
		select {
		case c := <-accepted:
			conns <- c
			cancel()
		case <-ctx.Done():
		}
	}()
	bus, err := polybus.OpenConfig(ctx, polybus.Config{URL: "nats://" + addr, ConnectTimeout: time.Minute})
	if bus != nil {
		bus.Close()
		t.Fatal("opened a bus on a server that never speaks")
	}
	wantGivenUp(t, err, context.Canceled, "cancelled")

	c := await(t, conns, "the connection to be accepted")
	defer c.Close()
	if err := c.SetReadDeadline(time.Now().Add(waitTimeout(t))); err != nil {
		t.Fatal(err)
	}
	// The client sends nothing before the server's INFO, so the first read sees the close.
	if n, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("the abandoned connection was not closed: read %d bytes, %v", n, err)
	}

	// An already cancelled context opens nothing, even on memory://.
	if _, err := polybus.Open(ctx, "memory://"); !errors.Is(err, context.Canceled) || !errors.Is(err, polybus.ErrCancelled) {
		t.Errorf("Open with a cancelled context: %v", err)
	}
}

// blockedSubscriber is a subscription with room for one queued event whose handler blocks
// until released.
type blockedSubscriber struct {
	started chan string   // receives each payload as its handler starts
	release chan struct{} // closed to let the handlers return
	once    sync.Once     // closes release
	hctx    chan context.Context
	sub     *polybus.Subscription
}

// releaseHandlers lets the handlers return, now and from then on.
func (b *blockedSubscriber) releaseHandlers() {
	b.once.Do(func() { close(b.release) })
}

func subscribeBlocked(t *testing.T, bus *polybus.Bus, pattern string) *blockedSubscriber {
	t.Helper()
	b := &blockedSubscriber{
		started: make(chan string, 1000),
		release: make(chan struct{}),
		hctx:    make(chan context.Context, 1000),
	}
	var err error
	b.sub, err = bus.Subscribe(context.Background(), pattern, func(ctx context.Context, e *polybus.Event) error {
		b.hctx <- ctx
		b.started <- string(e.Payload)
		<-b.release
		return nil
	}, polybus.WithQueueSize(1), polybus.WithConcurrency(1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.releaseHandlers)
	return b
}

// openNoTimeouts opens a memory:// bus whose own publish and close timeouts are long enough
// never to be what ends a wait in these tests: only the contexts do.
func openNoTimeouts(t *testing.T) *polybus.Bus {
	t.Helper()
	bus, err := polybus.OpenConfig(context.Background(), polybus.Config{
		URL: "memory://", PublishTimeout: time.Hour, CloseTimeout: time.Hour,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bus.Close() })
	return bus
}

// fill publishes to topic, each publish with a short deadline, until one fails because the
// subscriber's queue is full and its handler blocked; it returns how many were published and
// that failure.
func fill(t *testing.T, bus *polybus.Bus, topic string) (int, error) {
	t.Helper()
	for i := range 1000 {
		ctx, cancel := context.WithTimeout(context.Background(), shortDeadline)
		err := bus.Publish(ctx, topic, strconv.Itoa(i))
		cancel()
		if err != nil {
			return i, err
		}
	}
	t.Fatal("1000 publishes to a blocked subscriber with a queue of 1 did not wait")
	return 0, nil
}

// TestPublishGivesUpWhenTheContextEnds publishes to a subscriber whose queue is full: the
// publish waits in the core until its context's deadline, or its cancellation, ends the wait.
func TestPublishGivesUpWhenTheContextEnds(t *testing.T) {
	bus := openNoTimeouts(t)
	blocked := subscribeBlocked(t, bus, "jobs.slow")
	published, err := fill(t, bus, "jobs.slow")
	wantGivenUp(t, err, context.DeadlineExceeded, "may still be published")
	await(t, blocked.started, "the first handler to start")

	// Cancelled from another goroutine, while waiting (or, if the cancel comes first, before
	// publishing at all).
	ctx, cancel := context.WithCancel(context.Background())
	go cancel()
	wantGivenUp(t, bus.Publish(ctx, "jobs.slow", "cancelled"), context.Canceled, "cancelled: publish")
	ctx, cancel = context.WithCancel(context.Background())
	go cancel()
	err = bus.PublishMessage(ctx, polybus.Message{Topic: "jobs.slow", Key: "k"})
	if _, ok := err.(*polybus.Error); !ok {
		t.Errorf("PublishMessage returned %#v, want an *Error", err)
	}
	wantGivenUp(t, err, context.Canceled, "cancelled: ")

	blocked.releaseHandlers()
	if err := bus.Close(); err != nil {
		t.Fatal(err)
	}
	st, err := bus.Stats()
	if err != nil || st.Acked < uint64(published) || st.Acked != st.Delivered || st.Dropped != 0 {
		t.Errorf("stats %+v, %v: want every one of the %d published events acked", st, err, published)
	}
}

// TestPublishBatchGivesUpWhenTheContextEnds publishes a batch to a subscriber whose queue is
// full: the batch stops at the context's deadline (or cancellation) and says how many were
// published.
func TestPublishBatchGivesUpWhenTheContextEnds(t *testing.T) {
	bus := openNoTimeouts(t)
	blocked := subscribeBlocked(t, bus, "jobs.slow")
	if _, err := fill(t, bus, "jobs.slow"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("filling the queue: %v", err)
	}
	batch := make([]polybus.Message, 5)
	for i := range batch {
		batch[i] = polybus.Message{Topic: "jobs.slow", Payload: "batch " + strconv.Itoa(i)}
	}

	ctx, cancel := context.WithTimeout(context.Background(), shortDeadline)
	defer cancel()
	err := bus.PublishBatch(ctx, batch)
	var be *polybus.BatchError
	if !errors.As(err, &be) || be.Published >= len(batch) {
		t.Fatalf("want a *BatchError with Published < %d, got %#v", len(batch), err)
	}
	wantGivenUp(t, err, context.DeadlineExceeded, "the caller's deadline passed")

	ctx, cancel = context.WithCancel(context.Background())
	go cancel()
	err = bus.PublishBatch(ctx, batch)
	if !errors.As(err, &be) || be.Published >= len(batch) {
		t.Fatalf("want a *BatchError with Published < %d, got %#v", len(batch), err)
	}
	wantGivenUp(t, err, context.Canceled, "of the batch: publish")
	blocked.releaseHandlers()
}

// shutdownCase is one way a Shutdown's context ends: its deadline passes, or it is cancelled
// (from another goroutine, so before or during the wait).
type shutdownCase struct {
	name    string
	ctx     func() (context.Context, context.CancelFunc)
	want    error
	message string
}

// shutdownCases are both ways for the Shutdown of a "bus" or a "subscription".
func shutdownCases(what string) []shutdownCase {
	return []shutdownCase{
		{"deadline", func() (context.Context, context.CancelFunc) {
			return context.WithTimeout(context.Background(), shortDeadline)
		}, context.DeadlineExceeded, "the caller's deadline passed; the " + what + " is closed and its drain goes on"},
		{"cancel", func() (context.Context, context.CancelFunc) {
			ctx, cancel := context.WithCancel(context.Background())
			go cancel()
			return ctx, cancel
		}, context.Canceled, "cancelled: close; the " + what + " is closed and its drain goes on"},
		{"deadline-on-its-own-clock", func() (context.Context, context.CancelFunc) {
			ctx := newClockContext()
			go ctx.pass()
			return ctx, ctx.pass
		}, context.DeadlineExceeded, "the caller's deadline passed; the " + what + " is closed and its drain goes on"},
	}
}

// clockContext is a context whose deadline lives on a clock of its own, as the contexts of a
// fake clock do: Deadline reports a time an hour away on the real clock, and the deadline
// passes when pass is called, not when the real clock gets there; Err is then
// context.DeadlineExceeded.
type clockContext struct {
	context.Context // Background's Value
	deadline        time.Time
	done            chan struct{}
	once            sync.Once
}

func newClockContext() *clockContext {
	return &clockContext{Context: context.Background(), deadline: time.Now().Add(time.Hour), done: make(chan struct{})}
}

func (c *clockContext) Deadline() (time.Time, bool) { return c.deadline, true }
func (c *clockContext) Done() <-chan struct{}       { return c.done }

func (c *clockContext) Err() error {
	select {
	case <-c.done:
		return context.DeadlineExceeded
	default:
		return nil
	}
}

// pass makes the deadline pass (idempotent).
func (c *clockContext) pass() { c.once.Do(func() { close(c.done) }) }

// TestADeadlineOnItsOwnClockIsATimeout checks that the context alone decides how a call it
// ends fails: a context whose deadline passes on a clock of its own (an hour before the
// deadline it reports, by the real clock) ends the call with StatusTimeout matching
// context.DeadlineExceeded, as a real deadline does, never with StatusCancelled.
func TestADeadlineOnItsOwnClockIsATimeout(t *testing.T) {
	// Open waits in the core for a server that accepts and never speaks; the deadline passes
	// once the server has accepted the connection, that is, during the wait.
	addr, accepted := silentListener(t)
	ctx := newClockContext()
	conns := make(chan net.Conn, 1)
	go func() {
		select {
		case c := <-accepted:
			conns <- c
			ctx.pass()
		case <-ctx.Done():
		}
	}()
	bus, err := polybus.OpenConfig(ctx, polybus.Config{URL: "nats://" + addr, ConnectTimeout: time.Minute})
	if bus != nil {
		bus.Close()
		t.Fatal("opened a bus on a server that never speaks")
	}
	wantGivenUp(t, err, context.DeadlineExceeded, "the caller's deadline passed")
	await(t, conns, "the connection to be accepted").Close()

	// A publish after the deadline passed publishes nothing.
	bus = openNoTimeouts(t)
	blocked := subscribeBlocked(t, bus, "jobs.slow")
	ctx = newClockContext()
	ctx.pass()
	wantGivenUp(t, bus.Publish(ctx, "jobs.slow", "late"), context.DeadlineExceeded, "the caller's deadline passed")
	// A publish waiting for a full queue (or, if the deadline passes first, before it starts).
	if _, err := fill(t, bus, "jobs.slow"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("filling the queue: %v", err)
	}
	ctx = newClockContext()
	go ctx.pass()
	wantGivenUp(t, bus.Publish(ctx, "jobs.slow", "waiting"), context.DeadlineExceeded, "the caller's deadline passed")
	blocked.releaseHandlers()
}

// TestBusShutdownGivesUpWhenTheContextEnds shuts the bus down while a handler is blocked:
// Shutdown returns when its context ends, the bus is closed all the same, and the drain goes
// on: once the handler returns, Close returns and the event was acknowledged.
func TestBusShutdownGivesUpWhenTheContextEnds(t *testing.T) {
	for _, tc := range shutdownCases("bus") {
		t.Run(tc.name, func(t *testing.T) {
			bus := openNoTimeouts(t)
			blocked := subscribeBlocked(t, bus, "jobs.slow")
			if err := bus.Publish(context.Background(), "jobs.slow", "x"); err != nil {
				t.Fatal(err)
			}
			await(t, blocked.started, "the handler to start")

			ctx, cancel := tc.ctx()
			defer cancel()
			wantGivenUp(t, bus.Shutdown(ctx), tc.want, tc.message)
			wantCode(t, bus.Publish(context.Background(), "jobs.slow", "late"), polybus.ErrClosed)
			_, err := bus.Subscribe(context.Background(), "jobs.other", func(context.Context, *polybus.Event) error { return nil })
			wantCode(t, err, polybus.ErrClosed)

			// A second Shutdown waits for the first's drain, in Go, until its own context ends.
			ctx, cancel = tc.ctx()
			defer cancel()
			wantGivenUp(t, bus.Shutdown(ctx), tc.want, "the bus is closed and its drain goes on")

			blocked.releaseHandlers()
			if err := bus.Close(); err != nil {
				t.Fatalf("Close after the drain: %v", err)
			}
			st, err := bus.Stats()
			if err != nil || st.Delivered != 1 || st.Acked != 1 || st.Dropped != 0 {
				t.Errorf("stats %+v, %v: want the one event delivered and acked", st, err)
			}
			hctx := await(t, blocked.hctx, "the handler's context")
			await(t, hctx.Done(), "the handler's context to be cancelled")
		})
	}
}

// TestSubscriptionShutdownGivesUpWhenTheContextEnds unsubscribes while a handler is blocked:
// Shutdown returns when its context ends, the subscription receives nothing new, and once the
// handler returns, Close returns and the event was acknowledged.
func TestSubscriptionShutdownGivesUpWhenTheContextEnds(t *testing.T) {
	for _, tc := range shutdownCases("subscription") {
		t.Run(tc.name, func(t *testing.T) {
			bus := openNoTimeouts(t)
			blocked := subscribeBlocked(t, bus, "jobs.slow")
			if err := bus.Publish(context.Background(), "jobs.slow", "x"); err != nil {
				t.Fatal(err)
			}
			await(t, blocked.started, "the handler to start")

			ctx, cancel := tc.ctx()
			defer cancel()
			wantGivenUp(t, blocked.sub.Shutdown(ctx), tc.want, tc.message)
			// Unsubscribed: this event has no receiver (it would otherwise wait in the queue).
			if err := bus.Publish(context.Background(), "jobs.slow", "late"); err != nil {
				t.Fatal(err)
			}

			// A second Shutdown waits for the first's drain, in Go, until its own context ends.
			ctx, cancel = tc.ctx()
			defer cancel()
			wantGivenUp(t, blocked.sub.Shutdown(ctx), tc.want, "the subscription is closed and its drain goes on")

			blocked.releaseHandlers()
			if err := blocked.sub.Close(); err != nil {
				t.Fatalf("Close after the drain: %v", err)
			}
			hctx := await(t, blocked.hctx, "the handler's context")
			if hctx.Err() == nil {
				t.Error("the handlers' context is live after Close returned")
			}
			if err := bus.Close(); err != nil {
				t.Fatal(err)
			}
			st, err := bus.Stats()
			if err != nil || st.Delivered != 1 || st.Acked != 1 || st.Dropped != 0 {
				t.Errorf("stats %+v, %v: want the one event delivered and acked", st, err)
			}
		})
	}
}

// TestShutdownWithALiveContextWaits checks that Shutdown with a context that does not end
// drains as Close does, and that Close after it returns nil.
func TestShutdownWithALiveContextWaits(t *testing.T) {
	bus := openNoTimeouts(t)
	blocked := subscribeBlocked(t, bus, "jobs.slow")
	if err := bus.Publish(context.Background(), "jobs.slow", "x"); err != nil {
		t.Fatal(err)
	}
	await(t, blocked.started, "the handler to start")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- bus.Shutdown(ctx) }()
	// Close the subscription's way out: Shutdown can only return once the handler has.
	blocked.releaseHandlers()
	if err := await(t, done, "Shutdown"); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if err := bus.Close(); err != nil {
		t.Fatal(err)
	}
	if st, err := bus.Stats(); err != nil || st.Acked != 1 {
		t.Errorf("stats %+v, %v", st, err)
	}
}

// TestWatchersShareTheStateWait starts two watches of one bus, ends one with its context and
// checks the other still sees the bus close.
func TestWatchersShareTheStateWait(t *testing.T) {
	bus := open(t)
	ctx, cancel := context.WithCancel(context.Background())
	first := bus.WatchConnectionState(ctx)
	second := bus.WatchConnectionState(context.Background())
	for _, ch := range []<-chan polybus.ConnectionState{first, second} {
		if s := nextState(t, ch); s != polybus.StateConnected {
			t.Fatalf("first state: %v", s)
		}
	}
	cancel()
	waitClosedChannel(t, first)
	// A watch started after another ended uses the same wait.
	third := bus.WatchConnectionState(context.Background())
	if s := nextState(t, third); s != polybus.StateConnected {
		t.Fatalf("first state of a later watch: %v", s)
	}
	if err := bus.Close(); err != nil {
		t.Fatal(err)
	}
	for _, ch := range []<-chan polybus.ConnectionState{second, third} {
		if s := nextState(t, ch); s != polybus.StateClosed {
			t.Fatalf("after Close: %v", s)
		}
		waitClosedChannel(t, ch)
	}
}

// TestABackgroundContextCostsNothing checks that a context that can never end makes no cancel
// handle: a Publish under context.Background() allocates nothing.
func TestABackgroundContextCostsNothing(t *testing.T) {
	bus := openNoTimeouts(t)
	ctx := context.Background()
	allocs := testing.AllocsPerRun(1000, func() {
		if err := bus.Publish(ctx, "nobody.listens", "x"); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("a Publish under context.Background() made %v allocations, want 0", allocs)
	}
}
