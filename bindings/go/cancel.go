package polybus

/*
#include "polybus.h"

#cgo noescape polybus_cancel_new
#cgo nocallback polybus_cancel_new
#cgo nocallback polybus_cancel
#cgo nocallback polybus_cancel_expire
#cgo nocallback polybus_cancel_free
*/
import "C"

import (
	"context"
	"errors"
)

// callCancel carries a context into one blocking C call (polybus_open, polybus_publish,
// polybus_publish_batch, polybus_close, polybus_subscription_close) as a polybus_cancel_t
// that the context alone fires: when the context ends, the handle is fired as a passed
// deadline (polybus_cancel_expire) if ctx.Err() is context.DeadlineExceeded, and cancelled
// (polybus_cancel) otherwise, so the call stops waiting in the core, not only before it
// starts, and fails with the status that matches ctx.Err(): POLYBUS_ERR_TIMEOUT or
// POLYBUS_ERR_CANCELLED. The handle has no deadline of its own: the context's clock is the
// only one (a context's deadline may live on another clock than the core's, and two clocks
// would race at the deadline). What a call given up leaves behind is the core's rule (see
// polybus_cancel_t); the package adds none.
//
// A context that can never end (context.Background) gets no handle: c is nil, the call is
// given NULL, and nothing is allocated.
type callCancel struct {
	c *C.polybus_cancel_t
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
	// No deadline (-1): the context fires the handle. Cannot fail: out is not NULL.
	C.polybus_cancel_new(-1, &cc.c, nil)
	if ctx.Err() != nil {
		// Already done: fired before the call, which then fails without starting (an
		// AfterFunc would race with it).
		fireFor(ctx, cc.c)
		return cc
	}
	h := cc.c
	fired := make(chan struct{})
	cc.fired = fired
	cc.stop = context.AfterFunc(ctx, func() {
		defer close(fired)
		fireFor(ctx, h)
	})
	return cc
}

// fireFor fires h the way ctx ended: as a passed deadline when ctx.Err() is
// context.DeadlineExceeded (the calls fail with POLYBUS_ERR_TIMEOUT, "the caller's deadline
// passed"), as a cancellation otherwise (POLYBUS_ERR_CANCELLED). ctx is done.
func fireFor(ctx context.Context, h *C.polybus_cancel_t) {
	if firedStatus(ctx.Err()) == StatusTimeout {
		C.polybus_cancel_expire(h)
	} else {
		C.polybus_cancel(h)
	}
}

// release releases the handle once the call has returned (and its error has been through
// wrap), after the AfterFunc if it has started: it may still be firing the handle.
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
// *Error whose Unwrap returns ctx.Err(): POLYBUS_ERR_CANCELLED for context.Canceled (or any
// other cause), POLYBUS_ERR_TIMEOUT for context.DeadlineExceeded, as the handle was fired. A
// timeout of the bus's own (publish_timeout_ms, say), with ctx still live or ended otherwise
// than by its deadline, is returned as it is.
func (cc *callCancel) wrap(ctx context.Context, err error) error {
	if cc.c == nil || err == nil {
		return err
	}
	e, ok := err.(*Error)
	if !ok {
		return err
	}
	cause := ctx.Err()
	if cause == nil || e.Code != firedStatus(cause) {
		return err
	}
	e.ctxErr = cause
	return e
}

// firedStatus is the status of a call whose handle was fired because its context ended with
// cause.
func firedStatus(cause error) Status {
	if errors.Is(cause, context.DeadlineExceeded) {
		return StatusTimeout
	}
	return StatusCancelled
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
	if firedStatus(cause) == StatusTimeout {
		e = newError(StatusTimeout, "%s: the caller's deadline passed%s", what, note)
	} else {
		e = newError(StatusCancelled, "%s%s", what, note)
	}
	e.ctxErr = cause
	return e
}
