package polybus

/*
#include <stdlib.h>
#include "polybus.h"

#cgo noescape polybus_subscription_next_batch
#cgo nocallback polybus_subscription_next_batch
#cgo noescape polybus_batch_ack
#cgo nocallback polybus_batch_ack
*/
import "C"

import (
	"context"
	"fmt"
	"math"
	"sync"
	"time"
	"unsafe"
)

// pullTimeoutMS bounds each wait for a batch, so a pulling goroutine never sits in C for long.
const pullTimeoutMS = 100

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

// WithConcurrency sets how many handlers of the subscription run at once (default 1), each on
// its own goroutine. Events with the same key never run at once and keep their publish order.
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

// Subscription is a running subscription made by Subscribe. Close (or Unsubscribe) ends it.
type Subscription struct {
	bus     *Bus
	c       *C.polybus_subscription_t
	handler Handler
	ctx     context.Context // the handlers' context
	cancel  context.CancelFunc

	workers   sync.WaitGroup
	pullErr   error // why pulling stopped, when not because the subscription closed
	closeOnce sync.Once
	closeErr  error
}

// Subscribe subscribes handler to pattern: a dot-separated topic in which '*' matches one token
// and a final '>' matches the rest ("orders.*", "orders.>").
//
// Events are pulled from the core in batches by one goroutine per subscription and handed to
// handler on goroutines of this package: one, or up to the Concurrency option. The handler's
// context derives from ctx and is cancelled once the subscription has closed; cancelling ctx
// closes the subscription (it drains, as Close does), so pass a context that lives as long as
// the subscription should, such as context.Background().
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

	c, err := b.acquire()
	if err != nil {
		return nil, err
	}
	defer b.mu.RUnlock()
	var (
		handle *C.polybus_subscription_t
		detail C.polybus_error_t
	)
	if err := errorFrom(C.polybus_subscribe_pull(c, cpattern, &copts, &handle, &detail), &detail); err != nil {
		return nil, err
	}
	s := &Subscription{bus: b, c: handle, handler: handler}
	s.ctx, s.cancel = context.WithCancel(ctx)
	b.subsMu.Lock()
	b.subs[s] = struct{}{}
	b.subsMu.Unlock()
	s.start(o.concurrency)
	// Cancelling ctx closes the subscription; Close cancels s.ctx itself, which ends the watch.
	context.AfterFunc(s.ctx, func() { s.Close() })
	return s, nil
}

// start runs the pulling goroutine and, for a concurrency above 1, that many handler
// goroutines fed by it.
func (s *Subscription) start(concurrency int) {
	s.workers.Add(1)
	if concurrency <= 1 {
		go func() {
			defer s.workers.Done()
			var cp copier
			s.pull(func(batch C.polybus_event_batch_t) { s.handle(batch, &cp) })
		}()
		return
	}
	work := make(chan C.polybus_event_batch_t)
	s.workers.Add(concurrency)
	for range concurrency {
		go func() {
			defer s.workers.Done()
			var cp copier
			for batch := range work {
				s.handle(batch, &cp)
			}
		}()
	}
	go func() {
		defer s.workers.Done()
		defer close(work)
		s.pull(func(batch C.polybus_event_batch_t) { work <- batch })
	}()
}

// pull hands every batch to deliver until the subscription is closed and drained.
func (s *Subscription) pull(deliver func(C.polybus_event_batch_t)) {
	var detail C.polybus_error_t
	for {
		var batch C.polybus_event_batch_t
		switch st := C.polybus_subscription_next_batch(s.c, pullTimeoutMS, &batch, &detail); st {
		case C.POLYBUS_OK:
			deliver(batch)
		case C.POLYBUS_NO_EVENTS:
		case C.POLYBUS_ERR_CLOSED:
			return
		default:
			s.pullErr = errorFrom(st, &detail)
			return
		}
	}
}

// handle runs the handler on the events of one batch, in order, stopping at the first failure
// (a nack; the events after it are skipped, so the core delivers them again), then acknowledges
// the batch.
func (s *Subscription) handle(batch C.polybus_event_batch_t, cp *copier) {
	events := cp.batch(unsafe.Slice(batch.events, batch.len))
	var results []C.polybus_result_t // nil acknowledges every event
	for i := range events {
		err := s.call(&events[i])
		if err == nil {
			continue
		}
		results = make([]C.polybus_result_t, len(events))
		for j := range results {
			switch {
			case j < i:
				results[j].code = C.POLYBUS_RESULT_ACK
			case j == i:
				results[j].code = C.POLYBUS_RESULT_NACK
				results[j].reason = C.CString(err.Error())
				defer C.free(unsafe.Pointer(results[j].reason))
			default:
				results[j].code = C.POLYBUS_RESULT_SKIPPED
			}
		}
		break
	}
	var resultsPtr *C.polybus_result_t
	if results != nil {
		resultsPtr = &results[0]
	}
	// The only failure is an unknown result code, which this loop never writes.
	C.polybus_batch_ack(batch.batch, resultsPtr, C.size_t(len(results)), nil)
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
// (for at most the bus's CloseTimeout), then the subscription's goroutines are waited for and
// the handlers' context is cancelled. Close is idempotent; later calls wait for the first and
// return its result. It must not be called from the subscription's own handler, which it would
// wait for.
func (s *Subscription) Close() error {
	if s == nil {
		return newError(StatusInvalidArgument, "the *polybus.Subscription is nil")
	}
	s.closeOnce.Do(func() {
		var detail C.polybus_error_t
		// Blocks until drained while the goroutines keep pulling and handling.
		s.closeErr = errorFrom(C.polybus_subscription_close(s.c, &detail), &detail)
		s.workers.Wait()
		if s.closeErr == nil {
			s.closeErr = s.pullErr
		}
		s.cancel()
		C.polybus_subscription_free(s.c)
		s.c = nil
		s.bus.subsMu.Lock()
		delete(s.bus.subs, s)
		s.bus.subsMu.Unlock()
	})
	return s.closeErr
}

// Unsubscribe is Close, under the name due's users know.
func (s *Subscription) Unsubscribe() error {
	return s.Close()
}
