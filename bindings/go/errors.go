package polybus

//go:generate go run ./internal/gen -header ../../include/polybus.h -out status_gen.go

/*
#include "polybus.h"
*/
import "C"

import (
	"bytes"
	"fmt"
	"unsafe"
)

// Status is a status code of the C API (polybus_status_t): 0 is success, negative values are
// errors, positive values are non-error outcomes. The values and names come from
// include/polybus.h (status_gen.go); String returns the C name.
type Status int32

// Error is the error every polybus call returns: the status code of the C API and a message
// naming what was wrong. The message is the core's text, the same in every language: the
// status's short description, then the detail ("invalid topic: \"a..b\": empty token at
// position 2").
//
// Compare with the sentinels through errors.Is, which matches on Code alone:
//
//	if errors.Is(err, polybus.ErrClosed) { ... }
//
// or read the code with errors.As into a *Error.
//
// A call that gave up because its context ended (see the package documentation, "Contexts")
// returns an *Error with Code StatusCancelled (the context was cancelled) or StatusTimeout
// (its deadline passed) and the core's text, which says what was left behind ("cancelled:
// publish; the event may still be published"); its Unwrap returns the context's error, so
// errors.Is(err, context.Canceled) or errors.Is(err, context.DeadlineExceeded) holds as well
// as errors.Is(err, polybus.ErrCancelled) or errors.Is(err, polybus.ErrTimeout).
type Error struct {
	// Code is the status, for example StatusClosed.
	Code Status
	// Message is the core's text, for example "closed: bus is closed"; empty in the sentinels.
	Message string

	// ctxErr is the context's error when the call gave up because its context ended.
	ctxErr error
}

// Error returns the message as the core wrote it, with no prefix of its own (the same text
// C, Python and Node show), or the status's short description ("closed") when there is no
// message, as in the sentinels.
func (e *Error) Error() string {
	if e.Message == "" {
		return C.GoString(C.polybus_status_str(C.int32_t(e.Code)))
	}
	return e.Message
}

// Is reports whether target is an *Error with the same Code, so that
// errors.Is(err, polybus.ErrClosed) holds for every closed error.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Code == e.Code
}

// Unwrap returns the context's error (context.Canceled or context.DeadlineExceeded) when the
// call gave up because its context ended, nil otherwise.
func (e *Error) Unwrap() error {
	return e.ctxErr
}

// newError makes an *Error in the core's format: the status's short description, then the
// detail ("invalid argument: handler is nil").
func newError(code Status, format string, args ...any) *Error {
	desc := C.GoString(C.polybus_status_str(C.int32_t(code)))
	return &Error{Code: code, Message: desc + ": " + fmt.Sprintf(format, args...)}
}

// errorFrom converts the status and detail of a failed C call. It reads the detail in Go, so
// that the caller's polybus_error_t can stay on the stack.
func errorFrom(status C.polybus_status_t, detail *C.polybus_error_t) error {
	if status == C.POLYBUS_OK {
		return nil
	}
	raw := unsafe.Slice((*byte)(unsafe.Pointer(&detail.message[0])), len(detail.message))
	if n := bytes.IndexByte(raw, 0); n >= 0 {
		raw = raw[:n]
	}
	msg := string(raw)
	if msg == "" {
		msg = C.GoString(C.polybus_status_str(C.int32_t(status)))
	}
	return &Error{Code: Status(status), Message: msg}
}

// BatchError is the error of PublishBatch: how many messages were published, in order,
// before the first failure, and that failure. Err is an *Error, so errors.Is(err, ErrClosed),
// errors.Is(err, context.DeadlineExceeded) (when the context ended the batch) and
// errors.As(err, &perr) with a *Error see through it.
type BatchError struct {
	// Published is how many messages, from the first, were accepted by the backend before the
	// failing one (0 when the batch was refused before publishing). When the context ended
	// the batch, it counts those confirmed before it gave up; the messages after them that
	// were already started may still be published, and no further one was started.
	Published int
	// Err is why the message at index Published was not published.
	Err error
}

// Error returns the text of Err (the core's message, naming the failing event's index).
func (e *BatchError) Error() string {
	return e.Err.Error()
}

// Unwrap returns Err.
func (e *BatchError) Unwrap() error {
	return e.Err
}
