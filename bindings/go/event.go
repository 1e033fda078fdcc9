package polybus

/*
#include "polybus.h"
*/
import "C"

import (
	"encoding/json"
	"strings"
	"time"
	"unsafe"
)

// Event is a delivered event: a snapshot copied out of the core before the handler runs, so it
// holds no C memory and may be kept after the handler returns.
type Event struct {
	// Topic is the topic the event was published on (without the bus's prefix).
	Topic string
	// Payload is the body, untouched.
	Payload []byte
	// Key is the ordering key, or "" when there is none; LookupKey tells "none" from an empty
	// key.
	Key string
	// Headers are the event's headers; nil when there are none.
	Headers map[string]string
	// ID is the event id (a UUIDv7 unless the publisher set one).
	ID string
	// Type is the event type (the topic unless the publisher set one).
	Type string
	// Source is the publishing service's name (Config.Name), or "" when unknown; LookupSource
	// tells "unknown" from an empty name.
	Source string
	// Time is when the event was published.
	Time time.Time
	// Attempt is the delivery attempt: 1 on first delivery.
	Attempt int

	// hasKey and hasSource record that the event carried a key or a source, even empty.
	hasKey, hasSource bool
}

// LookupKey returns the event's ordering key and whether it has one, telling an absent key
// (false) from an empty one ("", true), as os.LookupEnv does for variables. A non-empty Key
// always counts as present, so an Event built by hand reports its Key.
func (e *Event) LookupKey() (string, bool) {
	return e.Key, e.hasKey || e.Key != ""
}

// LookupSource returns the publishing service's name and whether the event carried one,
// telling an unknown source (false) from an empty name ("", true). A non-empty Source always
// counts as present.
func (e *Event) LookupSource() (string, bool) {
	return e.Source, e.hasSource || e.Source != ""
}

// Scan decodes the JSON payload into v, as json.Unmarshal does (due's evt.Payload.Scan). A
// payload that does not decode gives an *Error with StatusPayload.
func (e *Event) Scan(v any) error {
	if err := json.Unmarshal(e.Payload, v); err != nil {
		return &Error{Code: StatusPayload, Message: "payload error: " + err.Error()}
	}
	return nil
}

// copier copies C event views into Go values. It keeps the last topic, type and source it
// made, which most events repeat, to share those strings instead of allocating them again. One
// copier serves one goroutine.
type copier struct {
	topic, typ, source string
}

// batch copies the events of a batch, allocating their Event structs together.
func (cp *copier) batch(events []C.polybus_event_t) []Event {
	out := make([]Event, len(events))
	for i := range events {
		cp.event(&events[i], &out[i])
	}
	return out
}

// event copies one C event view into e.
func (cp *copier) event(c *C.polybus_event_t, e *Event) {
	// The payload and the id share one allocation; the payload's capacity ends at its length,
	// so appending to it never reaches the id.
	payload, id := view(C.polybus_str_t{ptr: (*C.char)(unsafe.Pointer(c.payload.ptr)), len: c.payload.len}), view(c.id)
	buf := make([]byte, len(payload)+len(id))
	copy(buf, payload)
	copy(buf[len(payload):], id)
	e.Payload = buf[:len(payload):len(payload)]
	if len(id) > 0 {
		e.ID = unsafe.String(&buf[len(payload)], len(id))
	}
	e.Topic = reuse(&cp.topic, view(c.topic))
	e.Type = reuse(&cp.typ, view(c._type))
	// The C event marks an absent key or source by a NULL pointer, an empty one by length 0.
	e.hasSource = c.source.ptr != nil
	e.Source = reuse(&cp.source, view(c.source))
	if c.key.ptr != nil {
		e.hasKey = true
		e.Key = strings.Clone(view(c.key))
	}
	e.Time = time.Unix(0, int64(c.time_unix_ns))
	e.Attempt = int(c.attempt)
	if c.headers_len > 0 {
		headers := unsafe.Slice(c.headers, c.headers_len)
		e.Headers = make(map[string]string, len(headers))
		for i := range headers {
			e.Headers[strings.Clone(view(headers[i].name))] = strings.Clone(view(headers[i].value))
		}
	}
}

// reuse returns the cached string when it equals v, else caches and returns a copy of v.
func reuse(cached *string, v string) string {
	if *cached != v {
		*cached = strings.Clone(v)
	}
	return *cached
}

// view returns the bytes of a C string view as a string without copying; it is valid only
// while the view is.
func view(s C.polybus_str_t) string {
	if s.len == 0 {
		return ""
	}
	return unsafe.String((*byte)(unsafe.Pointer(s.ptr)), int(s.len))
}
