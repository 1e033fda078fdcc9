package polybus

/*
#include <stdlib.h>
#include "polybus.h"

#cgo noescape polybus_subscription_stop
#cgo nocallback polybus_subscription_stop
*/
import "C"

import (
	"context"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"
)

// Handler handles one event. Returning nil acknowledges it; an error (or a panic) is a nack:
// the core retries the event with backoff up to the MaxAttempts option, then publishes it to
// the DeadLetter topic or drops it. The event and its fields belong to the handler; they stay
// valid after it returns.
type Handler func(ctx context.Context, e *Event) error

// Start says where a new subscription begins, on backends that keep history.
type Start int32

// The values of the Start option.
const (
	// StartNew receives only events published after subscribing (the default).
	StartNew Start = C.POLYBUS_START_NEW
	// StartEarliest receives every event the backend still holds; a backend without history
	// rejects it with ErrUnsupported.
	StartEarliest Start = C.POLYBUS_START_EARLIEST
)

// SubscribeOption sets one subscription option. The options map one-to-one onto the fields of
// the C options (polybus_subscribe_options_t) and the core's option names; an option that is
// not given keeps the core's default, and a value given is passed as it is, so the core
// rejects out-of-range values (WithConcurrency(0)) with ErrInvalidArgument.
type SubscribeOption func(*subscribeOptions)

// subscribeOptions holds the options in Go form until they are converted for C.
type subscribeOptions struct {
	group          string
	concurrency    int
	maxAttempts    int
	deadLetter     string
	start          Start
	backoffInitial time.Duration
	backoffMax     time.Duration
	queueSize      int
	batchSize      int
}

// defaults are the core's defaults, read once from polybus_subscribe_options_default.
var defaults = sync.OnceValue(func() subscribeOptions {
	var o C.polybus_subscribe_options_t
	C.polybus_subscribe_options_default(&o)
	return subscribeOptions{
		concurrency:    int(o.concurrency),
		maxAttempts:    int(o.max_attempts),
		start:          Start(o.start),
		backoffInitial: time.Duration(o.backoff_initial_ms) * time.Millisecond,
		backoffMax:     time.Duration(o.backoff_max_ms) * time.Millisecond,
		queueSize:      int(o.queue_size),
		batchSize:      int(o.batch_size),
	}
})

// WithGroup makes the subscription a member of a competing-consumer group: each event goes to
// one member of the group. Without it every subscription gets every event (broadcast).
func WithGroup(name string) SubscribeOption {
	return func(o *subscribeOptions) { o.group = name }
}

// WithConcurrency sets how many handlers of the subscription run at once (default 1), on the
// bus's delivery goroutines (whose number grows to the largest concurrency asked for by any
// subscription of the bus, at most 4096). Events with the same key never run at once and keep
// their publish order.
func WithConcurrency(n int) SubscribeOption {
	return func(o *subscribeOptions) { o.concurrency = n }
}

// WithMaxAttempts sets how many times one event is delivered before it is dead-lettered or
// dropped (default 5).
func WithMaxAttempts(n int) SubscribeOption {
	return func(o *subscribeOptions) { o.maxAttempts = n }
}

// WithDeadLetter sets the topic that receives events that failed MaxAttempts times, with the
// reason and attempt count in headers.
func WithDeadLetter(topic string) SubscribeOption {
	return func(o *subscribeOptions) { o.deadLetter = topic }
}

// WithStart sets where the subscription starts (default StartNew).
func WithStart(s Start) SubscribeOption {
	return func(o *subscribeOptions) { o.start = s }
}

// WithBackoffInitial sets the delay before the first retry (default 100ms); it doubles on each
// further attempt, up to the BackoffMax option. Whole milliseconds, rounded up.
func WithBackoffInitial(d time.Duration) SubscribeOption {
	return func(o *subscribeOptions) { o.backoffInitial = d }
}

// WithBackoffMax sets the largest retry delay (default 10s). Whole milliseconds, rounded up.
func WithBackoffMax(d time.Duration) SubscribeOption {
	return func(o *subscribeOptions) { o.backoffMax = d }
}

// WithQueueSize sets how many events are buffered for the subscription before publishers wait
// (default 1024).
func WithQueueSize(n int) SubscribeOption {
	return func(o *subscribeOptions) { o.queueSize = n }
}

// WithBatchSize sets the most events handed across the C boundary at once (default 256).
func WithBatchSize(n int) SubscribeOption {
	return func(o *subscribeOptions) { o.batchSize = n }
}

// toC converts the options; the strings it returns in C memory are freed by free.
func (o *subscribeOptions) toC() (c C.polybus_subscribe_options_t, free func(), err error) {
	u32 := func(name string, n int) C.uint32_t {
		if n < 0 || n > math.MaxUint32 {
			err = newError(StatusInvalidArgument, "%s must be 0..%d, got %d", name, uint32(math.MaxUint32), n)
		}
		return C.uint32_t(n)
	}
	ms := func(name string, d time.Duration) C.uint64_t {
		v, e := millis(name, d)
		if e != nil {
			err = newError(StatusInvalidArgument, "%v", e)
		}
		return C.uint64_t(v)
	}
	c = C.polybus_subscribe_options_t{
		concurrency:        u32("concurrency", o.concurrency),
		max_attempts:       u32("max_attempts", o.maxAttempts),
		start:              C.int32_t(o.start),
		backoff_initial_ms: ms("backoff_initial", o.backoffInitial),
		backoff_max_ms:     ms("backoff_max", o.backoffMax),
		queue_size:         u32("queue_size", o.queueSize),
		batch_size:         u32("batch_size", o.batchSize),
	}
	if err != nil {
		return c, func() {}, err
	}
	if o.group != "" {
		c.group = C.CString(o.group)
	}
	if o.deadLetter != "" {
		c.dead_letter = C.CString(o.deadLetter)
	}
	return c, func() {
		C.free(unsafe.Pointer(c.group))
		C.free(unsafe.Pointer(c.dead_letter))
	}, nil
}

// Subscription is a running subscription made by Subscribe. Close (or Unsubscribe, or
// Shutdown) ends it.
type Subscription struct {
	bus     *Bus
	token   uint64 // carried by the subscription's batches; the key of bus.subs
	handler Handler
	ctx     context.Context // the handlers' context
	cancel  context.CancelFunc

	// mu guards c: stop reads it, release frees it.
	mu         sync.RWMutex
	c          *C.polybus_subscription_t
	subscribed atomic.Bool   // Subscribe has set c and returned the subscription
	stopping   atomic.Bool   // Close or stop has begun
	once       sync.Once     // runs finish
	done       chan struct{} // closed once the subscription is closed and released
	closeErr   error         // the close's result, set before done is closed
}

// Subscribe subscribes handler to pattern: a dot-separated topic in which '*' matches one token
// and a final '>' matches the rest ("orders.*", "orders.>").
//
// The core sends the subscription's events in batches to the bus's delivery queue, which a
// small fixed pool of goroutines of the bus drains for every subscription: no goroutine or
// thread is kept per subscription. The handler runs on those goroutines, at most the
// Concurrency option at once. Its context derives from ctx and is cancelled once the
// subscription has closed; cancelling ctx closes the subscription (it drains, as Close does),
// so pass a context that lives as long as the subscription should, such as
// context.Background().
//
// Errors: ErrInvalidPattern, ErrInvalidArgument for a nil handler or a bad option,
// ErrInvalidTopic for a bad DeadLetter topic, ErrUnsupported when the backend cannot honour an
// option, ErrClosed after Close, or the context's error when ctx is already done.
func (b *Bus) Subscribe(ctx context.Context, pattern string, handler Handler, opts ...SubscribeOption) (*Subscription, error) {
	if handler == nil {
		return nil, newError(StatusInvalidArgument, "handler is nil")
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	o := defaults()
	for _, opt := range opts {
		opt(&o)
	}
	copts, free, err := o.toC()
	defer free()
	if err != nil {
		return nil, err
	}
	cpattern := C.CString(pattern)
	defer C.free(unsafe.Pointer(cpattern))

	c, err := b.acquireOpen()
	if err != nil {
		return nil, err
	}
	defer b.mu.RUnlock()
	s := &Subscription{bus: b, token: b.nextToken.Add(1), handler: handler, done: make(chan struct{})}
	s.ctx, s.cancel = context.WithCancel(ctx)
	// Registered before subscribing, so that the first batch finds it.
	b.subs.Store(s.token, s)
	var (
		handle *C.polybus_subscription_t
		detail C.polybus_error_t
	)
	st := C.polybus_subscribe_queue(c, cpattern, &copts, b.queue, C.uint64_t(s.token), &handle, &detail)
	if err := errorFrom(st, &detail); err != nil {
		b.subs.Delete(s.token)
		s.cancel()
		return nil, err
	}
	s.c = handle
	s.subscribed.Store(true)
	b.pool.grow(b, o.concurrency)
	// Cancelling ctx closes the subscription; finish cancels s.ctx itself, which ends the watch.
	context.AfterFunc(s.ctx, func() { s.Close() })
	return s, nil
}

// handle runs the handler on the events of one batch, in order, stopping at the first error
// or panic, and reports to the core how far it got: the core acknowledges the events before
// the failure, retries or dead-letters the failed one and delivers the rest again.
func (s *Subscription) handle(batch *C.polybus_event_batch_t, cp *copier) {
	events := cp.batch(unsafe.Slice(batch.events, batch.len))
	handled := len(events)
	var reason *C.char
	for i := range events {
		if err := s.call(&events[i]); err != nil {
			handled = i
			reason = C.CString(err.Error())
			break
		}
	}
	// Cannot fail: the batch is not NULL.
	C.polybus_batch_complete(batch.batch, C.size_t(handled), reason, nil)
	C.free(unsafe.Pointer(reason))
}

// call runs the handler, turning a panic into an error.
func (s *Subscription) call(e *Event) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic: %v", r)
		}
	}()
	return s.handler(s.ctx, e)
}

// Close unsubscribes: no new events are delivered, queued and in-flight ones are still handled
// (for at most the bus's CloseTimeout, while the bus's goroutines keep running handlers), then
// the handlers' context is cancelled. It returns ErrTimeout when they did not finish in time.
// Close is idempotent; later calls wait for the first and return its result. Close is
// Shutdown(context.Background()).
//
// Called from the subscription's own handler, Close does not wait (it would wait for itself):
// it stops the subscription and returns nil at once; the events already queued or in flight
// are still handled in the background. On a broker the stop takes effect when the broker has
// processed it, so an event published just after Close returned may still arrive; a Close
// from outside the handler waits for that drain, and nothing arrives after it. This is what
// C, Python and Node do too.
func (s *Subscription) Close() error {
	return s.Shutdown(context.Background())
}

// Shutdown unsubscribes as Close does, but stops waiting when ctx ends: the subscription is
// stopped either way, and when ctx ends first its drain goes on in the
// background (still bounded by the bus's CloseTimeout), the handlers' context is cancelled
// once it is over, and Shutdown returns an *Error with StatusCancelled or StatusTimeout that
// matches ctx.Err() with errors.Is (see Error). A later Close waits for that drain and
// returns its result.
//
// Called from the subscription's own handler, Shutdown returns nil at once, as Close does.
func (s *Subscription) Shutdown(ctx context.Context) error {
	if s == nil {
		return newError(StatusInvalidArgument, "the *polybus.Subscription is nil")
	}
	if sub, _ := s.bus.pool.running(currentGoroutineID()); sub == s {
		s.stop()
		return nil
	}
	var (
		first bool
		err   error
	)
	s.once.Do(func() {
		first = true
		err = s.finish(ctx)
	})
	if first {
		return err
	}
	select {
	case <-s.done:
		return s.closeErr
	default:
	}
	select {
	case <-s.done:
		return s.closeErr
	case <-ctx.Done():
		return contextError(ctx, "close", subDrainGoesOn)
	}
}

// Unsubscribe is Close, under the name due's users know: it drains, as Close does, and
// likewise returns at once when called from the subscription's own handler.
func (s *Subscription) Unsubscribe() error {
	return s.Close()
}

// stop stops the subscription without waiting (called from its own handler), and leaves the
// rest of Close to a goroutine that waits for the drain.
func (s *Subscription) stop() {
	if s.stopping.Swap(true) {
		return
	}
	s.mu.RLock()
	if s.c != nil {
		// Cannot fail: the handle is not NULL.
		C.polybus_subscription_stop(s.c, nil)
	}
	s.mu.RUnlock()
	s.bus.background.Add(1)
	go func() {
		defer s.bus.background.Done()
		s.closeAndWait()
	}()
}

// closeAndWait closes the subscription if no one has begun to, waits until it is closed and
// released, and returns the close's result.
func (s *Subscription) closeAndWait() error {
	s.once.Do(func() { s.finish(context.Background()) })
	<-s.done
	return s.closeErr
}

// finish closes the subscription, waiting until its batches are done or ctx ends, then
// releases it; when ctx ends first, a goroutine waits for the drain and releases it. It runs
// once (under s.once), never on a delivery goroutine.
func (s *Subscription) finish(ctx context.Context) error {
	s.stopping.Store(true)
	cc := newCallCancel(ctx)
	var detail C.polybus_error_t
	// Only release frees s.c, so it can be read without the lock here. Blocks until drained
	// while the pool keeps handling the subscription's batches.
	err := cc.wrap(ctx, errorFrom(C.polybus_subscription_close(s.c, cc.c, &detail), &detail))
	cc.release()
	if givenUp(err) {
		// Closed all the same; closing again (idempotent) waits for the drain the core goes
		// on with. Bus.Close waits for done, so the bus outlives this goroutine.
		go func() {
			var detail C.polybus_error_t
			s.release(errorFrom(C.polybus_subscription_close(s.c, nil, &detail), &detail))
		}()
		return err
	}
	s.release(err)
	return err
}

// release cancels the handlers' context, frees the subscription, forgets it and closes done.
func (s *Subscription) release(closeErr error) {
	s.closeErr = closeErr
	s.cancel()
	s.mu.Lock()
	C.polybus_subscription_free(s.c)
	s.c = nil
	s.mu.Unlock()
	// Forgotten last, so that Bus.Close, which closes the subscriptions it finds, waits for
	// this one.
	s.bus.subs.Delete(s.token)
	close(s.done)
}
