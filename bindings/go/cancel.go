package polybus

/*
#include "polybus.h"

#cgo noescape polybus_cancel_new
#cgo nocallback polybus_cancel_new
#cgo nocallback polybus_cancel
#cgo nocallback polybus_cancel_free
*/
import "C"

import (
	"context"
	"time"
)

// callCancel carries a context into one blocking C call (polybus_open, polybus_publish,
// polybus_publish_batch, polybus_close, polybus_subscription_close) as a polybus_cancel_t:
// the handle's deadline is the context's, and cancelling the context fires the handle, so
// the call stops waiting in the core, not only before it starts. What a call given up leaves
// behind is the core's rule (see polybus_cancel_t); the package adds none.
//
// A context that can never end (context.Background) gets no handle: c is nil, the call is
// given NULL, and nothing is allocated.
type callCancel struct {
	c *C.polybus_cancel_t
	// deadline is the context's deadline, which the handle also has; zero for none.
	deadline time.Time
	// stop unregisters the AfterFunc that fires the handle; nil when there is none (the
	// handle was fired at once).
	stop func() bool
	// fired is closed when the AfterFunc has finished.
	fired chan struct{}
}

// newCallCancel returns the cancel handle of one call made under ctx; call release once the
// call has returned.
func newCallCancel(ctx context.Context) callCancel {
	if ctx.Done() == nil {
		return callCancel{}
	}
	var cc callCancel
	timeout := C.int64_t(-1)
	if d, ok := ctx.Deadline(); ok {
		cc.deadline = d
		// Rounded up, so that the handle's deadline is never before the context's.
		ms := (time.Until(d) + time.Millisecond - 1) / time.Millisecond
		timeout = C.int64_t(max(ms, 0))
	}
	// Cannot fail: out is not NULL.
	C.polybus_cancel_new(timeout, &cc.c, nil)
	h := cc.c
	deadline := cc.deadline
	fire := func() {
		// A passed deadline fires the handle by itself, at the same moment: leaving it to the
		// handle makes the call fail the one way the core reports a caller's deadline
		// (POLYBUS_ERR_TIMEOUT, "the caller's deadline passed"), never CANCELLED or TIMEOUT
		// depending on which of the two fired first.
		if deadline.IsZero() || ctx.Err() != context.DeadlineExceeded || time.Now().Before(deadline) {
			C.polybus_cancel(h)
		}
	}
	if ctx.Err() != nil {
		// Already done: fired before the call, which then fails without starting (an
		// AfterFunc would race with it).
		fire()
		return cc
	}
	fired := make(chan struct{})
	cc.fired = fired
	cc.stop = context.AfterFunc(ctx, func() {
		defer close(fired)
		fire()
	})
	return cc
}

// release releases the handle once the call has returned (and its error has been through
// wrap), after the AfterFunc if it has started: it may still be calling polybus_cancel.
func (cc *callCancel) release() {
	if cc.c == nil {
		return
	}
	if cc.stop != nil && !cc.stop() {
		<-cc.fired
	}
	C.polybus_cancel_free(cc.c)
	cc.c = nil
}

// wrap returns the error of the call, which, when the call gave up because ctx ended, is an
// *Error whose Unwrap returns ctx.Err(): POLYBUS_ERR_CANCELLED, or POLYBUS_ERR_TIMEOUT once
// ctx is done or its deadline has passed (the handle's deadline is the context's). A timeout
// of the bus's own (publish_timeout_ms, say) while ctx is still live is returned as it is.
func (cc *callCancel) wrap(ctx context.Context, err error) error {
	if cc.c == nil || err == nil {
		return err
	}
	e, ok := err.(*Error)
	if !ok {
		return err
	}
	cause := ctx.Err()
	switch e.Code {
	case StatusCancelled:
	case StatusTimeout:
		if cause == nil && (cc.deadline.IsZero() || time.Now().Before(cc.deadline)) {
			return err
		}
	default:
		return err
	}
	if cause == nil {
		// The deadline has passed; the context says so a moment later, if not yet.
		cause = context.DeadlineExceeded
	}
	e.ctxErr = cause
	return e
}

// givenUp reports whether err says a call gave up because its context ended.
func givenUp(err error) bool {
	e, ok := err.(*Error)
	return ok && e.ctxErr != nil
}

// What a close given up leaves behind, in the core's words.
const (
	busDrainGoesOn = "; the bus is closed and its drain goes on in the background"
	subDrainGoesOn = "; the subscription is closed and its drain goes on in the background"
)

// contextError is the error of a wait in Go (not in the core) that ctx ended, in the form the
// core gives a call it gave up: StatusCancelled ("cancelled: close; ...") or, for a passed
// deadline, StatusTimeout ("timeout: close: the caller's deadline passed; ..."), with
// ctx.Err() inside.
func contextError(ctx context.Context, what, note string) error {
	var e *Error
	cause := ctx.Err()
	if cause == context.DeadlineExceeded {
		e = newError(StatusTimeout, "%s: the caller's deadline passed%s", what, note)
	} else {
		e = newError(StatusCancelled, "%s%s", what, note)
	}
	e.ctxErr = cause
	return e
}
