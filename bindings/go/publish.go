package polybus

/*
#include <stdio.h>
#include <stdlib.h>
#include "polybus.h"

// Go memory passed to C may not hold Go pointers, so Go passes the fields of a message as
// arguments (pbgo_publish) or as offsets into one byte arena (pbgo_publish_batch), and these
// helpers build the polybus_message_t views on the C side.

static polybus_status_t pbgo_publish(const polybus_t *bus, const char *topic, size_t topic_len,
                                     const uint8_t *payload, size_t payload_len, uint32_t flags,
                                     const polybus_cancel_t *cancel, polybus_error_t *err) {
	polybus_message_t m = {0};
	m.topic.ptr = topic ? topic : "";
	m.topic.len = topic_len;
	m.payload.ptr = payload;
	m.payload.len = payload_len;
	m.flags = flags;
	return polybus_publish(bus, &m, cancel, err);
}

// A string in the arena; has == 0 means absent.
typedef struct {
	size_t off;
	size_t len;
	uint8_t has;
} pbgo_str_t;

typedef struct {
	pbgo_str_t topic;
	pbgo_str_t payload;
	pbgo_str_t key;
	pbgo_str_t id;
	pbgo_str_t type;
	size_t headers_off; // index of the first header in the header array
	size_t headers_len;
	int64_t time_unix_ns; // 0 for now
	uint32_t flags;       // POLYBUS_MESSAGE_* flags
} pbgo_message_t;

typedef struct {
	pbgo_str_t name;
	pbgo_str_t value;
} pbgo_header_t;

static polybus_str_t pbgo_view(const char *arena, pbgo_str_t s) {
	polybus_str_t v = {NULL, 0};
	if (s.has) {
		v.ptr = arena + s.off;
		v.len = s.len;
	}
	return v;
}

static polybus_status_t pbgo_publish_batch(const polybus_t *bus, const char *arena,
                                           const pbgo_message_t *msgs, size_t len,
                                           const pbgo_header_t *hdrs, size_t hdrs_len,
                                           const polybus_cancel_t *cancel, int single,
                                           size_t *published, polybus_error_t *err) {
	static const char empty[1] = "";
	if (arena == NULL) {
		arena = empty;
	}
	polybus_message_t *ms = calloc(len ? len : 1, sizeof *ms);
	polybus_header_t *hs = calloc(hdrs_len ? hdrs_len : 1, sizeof *hs);
	if (ms == NULL || hs == NULL) {
		free(ms);
		free(hs);
		if (err) {
			err->code = POLYBUS_ERR_INTERNAL;
			snprintf(err->message, sizeof err->message, "internal error: out of memory");
		}
		return POLYBUS_ERR_INTERNAL;
	}
	for (size_t i = 0; i < hdrs_len; i++) {
		hs[i].name = pbgo_view(arena, hdrs[i].name);
		hs[i].value = pbgo_view(arena, hdrs[i].value);
	}
	for (size_t i = 0; i < len; i++) {
		ms[i].topic = pbgo_view(arena, msgs[i].topic);
		polybus_str_t p = pbgo_view(arena, msgs[i].payload);
		ms[i].payload.ptr = (const uint8_t *)p.ptr;
		ms[i].payload.len = p.len;
		ms[i].key = pbgo_view(arena, msgs[i].key);
		ms[i].id = pbgo_view(arena, msgs[i].id);
		ms[i].type = pbgo_view(arena, msgs[i].type);
		ms[i].headers = msgs[i].headers_len ? hs + msgs[i].headers_off : NULL;
		ms[i].headers_len = msgs[i].headers_len;
		ms[i].time_unix_ns = msgs[i].time_unix_ns;
		ms[i].flags = msgs[i].flags;
	}
	// One message of PublishMessage: the core's single publish (its errors and what a cancel
	// leaves behind are a publish's, not a batch's).
	polybus_status_t st;
	if (single && len == 1) {
		st = polybus_publish(bus, ms, cancel, err);
		if (published) {
			*published = st == POLYBUS_OK ? 1 : 0;
		}
	} else {
		st = polybus_publish_batch(bus, ms, len, cancel, published, err);
	}
	free(ms);
	free(hs);
	return st;
}

#cgo noescape pbgo_publish
#cgo nocallback pbgo_publish
#cgo noescape pbgo_publish_batch
#cgo nocallback pbgo_publish_batch
*/
import "C"

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"
	"unsafe"
)

// Message is an event to publish with PublishMessage or PublishBatch.
type Message struct {
	// Topic is the topic, for example "orders.created" (required).
	Topic string
	// Payload is the body: a []byte or string is sent as it is, nil as an empty payload, and any
	// other value is encoded as JSON (and marked as such: the core sets the content-type
	// header to application/json unless Headers has one).
	Payload any
	// Key is the ordering and partition key; "" for none. Events with one key are handled in
	// publish order, never at once.
	Key string
	// Headers are sent with the event.
	Headers map[string]string
	// ID is the event id; "" for a new UUIDv7.
	ID string
	// Type is the event type; "" for the topic.
	Type string
	// Time is the event time; the zero Time for the moment it is published.
	Time time.Time
}

// payloadBytes returns the bytes of a payload and its POLYBUS_MESSAGE_* flags: []byte and
// string as they are (C only reads them), nil as empty, anything else JSON-encoded and flagged
// POLYBUS_MESSAGE_JSON, so that the core marks it the way every language does.
func payloadBytes(payload any) ([]byte, C.uint32_t, error) {
	switch p := payload.(type) {
	case nil:
		return nil, 0, nil
	case []byte:
		return p, 0, nil
	case string:
		return unsafe.Slice(unsafe.StringData(p), len(p)), 0, nil
	default:
		b, err := json.Marshal(p)
		if err != nil {
			return nil, 0, err
		}
		return b, C.POLYBUS_MESSAGE_JSON, nil
	}
}

// payloadError is the error for a payload JSON cannot encode, in the core's words ("payload
// error: ..."); where names the event in a batch, "" for a single publish.
func payloadError(where string, err error) *Error {
	return newError(StatusPayload, "%scannot encode the payload as JSON: %v", where, err)
}

// Publish publishes payload on topic and returns once the backend has accepted the event (the
// memory backend: queued to every matching subscription). payload is a []byte or string sent
// as it is, nil for an empty payload, or any other value encoded as JSON (as due's Publish
// does) and sent with the content-type header application/json, as every language does; use
// PublishMessage to set a key, headers, an id or a type.
//
// Publish waits only while the backend has not accepted the event, for example while a
// subscriber's queue is full, at most Config.PublishTimeout, and it stops waiting when ctx ends
// (cancelled, or its deadline passed): then the event may still be published, as the error
// says, since its place in the order was already fixed. A ctx already done publishes nothing.
// A handler that publishes to a topic its own subscription receives can wait on itself that
// way. With a context that never ends (context.Background), nothing is spent on it.
//
// Errors: ErrInvalidTopic, ErrTooLarge, ErrPayload (a value JSON cannot encode), ErrClosed,
// ErrTimeout, backend errors. When ctx ends first, an *Error with StatusCancelled or
// StatusTimeout that matches ctx.Err() with errors.Is (see Error).
func (b *Bus) Publish(ctx context.Context, topic string, payload any) error {
	p, flags, err := payloadBytes(payload)
	if err != nil {
		return payloadError("", err)
	}
	c, err := b.acquireOpen()
	if err != nil {
		return err
	}
	defer b.mu.RUnlock()
	var detail C.polybus_error_t
	// A context that never ends costs nothing here: no handle, NULL is passed.
	cc := newCallCancel(ctx)
	st := C.pbgo_publish(c,
		(*C.char)(unsafe.Pointer(unsafe.StringData(topic))), C.size_t(len(topic)),
		(*C.uint8_t)(unsafe.SliceData(p)), C.size_t(len(p)), flags, cc.c, &detail)
	err = cc.wrap(ctx, errorFrom(st, &detail))
	cc.release()
	return err
}

// PublishMessage publishes one message with its key, headers, id and type; see Publish, also
// for what ctx does. Errors are Publish's (an *Error, not a BatchError), plus
// ErrInvalidArgument for a bad header name or value.
func (b *Bus) PublishMessage(ctx context.Context, m Message) error {
	if err := b.publishMessages(ctx, []Message{m}, "", true); err != nil {
		return err.Err
	}
	return nil
}

// PublishBatch publishes messages in order and returns once all are accepted: the pipelined
// path of the core, one call for the whole slice, with as many publishes in flight as the
// backend allows (the same publish-many as every language's).
//
// It stops at the first failure. The error is then a *BatchError: its Published field says
// how many messages, from the first, were published before the failing one, and its text (the
// core's) names the failing index ("invalid topic: event 1 of the batch: ..."). errors.Is and
// errors.As see the *Error inside it. Errors are PublishMessage's.
//
// When ctx ends (cancelled, or its deadline passed), PublishBatch starts no further message
// and stops waiting: the *BatchError's Published counts the messages confirmed before it gave
// up, its *Error (StatusCancelled or StatusTimeout) matches ctx.Err() with errors.Is, and the
// messages after Published that were already started may still be published.
func (b *Bus) PublishBatch(ctx context.Context, messages []Message) error {
	if err := b.publishMessages(ctx, messages, "event %d of the batch: ", false); err != nil {
		return err
	}
	return nil
}

// publishMessages publishes messages through the core's publish_batch, or its publish when
// single (PublishMessage); where, with the index of a payload JSON cannot encode, starts that
// error's detail.
func (b *Bus) publishMessages(ctx context.Context, messages []Message, where string, single bool) *BatchError {
	if len(messages) == 0 {
		return nil
	}
	buf := batchPool.Get().(*batchBuffer)
	defer buf.release()
	if err := buf.fill(messages, where); err != nil {
		return &BatchError{Err: err}
	}
	c, err := b.acquireOpen()
	if err != nil {
		return &BatchError{Err: err}
	}
	defer b.mu.RUnlock()
	var (
		detail    C.polybus_error_t
		hdrs      *C.pbgo_header_t
		published C.size_t
	)
	if len(buf.hdrs) > 0 {
		hdrs = &buf.hdrs[0]
	}
	one := C.int(0)
	if single {
		one = 1
	}
	cc := newCallCancel(ctx)
	st := C.pbgo_publish_batch(c, (*C.char)(unsafe.Pointer(unsafe.SliceData(buf.arena))),
		&buf.msgs[0], C.size_t(len(buf.msgs)), hdrs, C.size_t(len(buf.hdrs)), cc.c, one, &published, &detail)
	err = cc.wrap(ctx, errorFrom(st, &detail))
	cc.release()
	if err != nil {
		return &BatchError{Published: int(published), Err: err}
	}
	return nil
}

// batchBuffer holds a batch in the form pbgo_publish_batch takes: every string and payload
// copied into one arena, and offsets into it (no Go pointers, so nothing to pin).
type batchBuffer struct {
	arena []byte
	msgs  []C.pbgo_message_t
	hdrs  []C.pbgo_header_t
}

var batchPool = sync.Pool{New: func() any { return new(batchBuffer) }}

// maxPooledArena keeps one huge batch from pinning its memory in the pool.
const maxPooledArena = 1 << 20

func (buf *batchBuffer) release() {
	if cap(buf.arena) > maxPooledArena {
		return
	}
	buf.arena, buf.msgs, buf.hdrs = buf.arena[:0], buf.msgs[:0], buf.hdrs[:0]
	batchPool.Put(buf)
}

func (buf *batchBuffer) str(s string, present bool) C.pbgo_str_t {
	if !present {
		return C.pbgo_str_t{}
	}
	off := len(buf.arena)
	buf.arena = append(buf.arena, s...)
	return C.pbgo_str_t{off: C.size_t(off), len: C.size_t(len(s)), has: 1}
}

// arenaSize is the room messages take in the arena (a JSON payload's not counted: its
// encoding is not known yet).
func arenaSize(messages []Message) int {
	n := 0
	for i := range messages {
		m := &messages[i]
		n += len(m.Topic) + len(m.Key) + len(m.ID) + len(m.Type)
		switch p := m.Payload.(type) {
		case []byte:
			n += len(p)
		case string:
			n += len(p)
		}
		for name, value := range m.Headers {
			n += len(name) + len(value)
		}
	}
	return n
}

// fill copies messages into the buffer. A payload JSON cannot encode is an error whose detail
// starts with where, formatted with the message's index when where has a verb.
func (buf *batchBuffer) fill(messages []Message, where string) error {
	// The arena takes its size at once: grown by append, a batch of large payloads was copied
	// again at every doubling, each time into fresh memory the kernel had to fault in.
	buf.arena = slices.Grow(buf.arena, arenaSize(messages))
	for i := range messages {
		m := &messages[i]
		payload, flags, err := payloadBytes(m.Payload)
		if err != nil {
			if strings.Contains(where, "%") {
				where = fmt.Sprintf(where, i)
			}
			return payloadError(where, err)
		}
		cm := C.pbgo_message_t{
			topic:       buf.str(m.Topic, true),
			payload:     buf.str(unsafe.String(unsafe.SliceData(payload), len(payload)), true),
			key:         buf.str(m.Key, m.Key != ""),
			id:          buf.str(m.ID, m.ID != ""),
			_type:       buf.str(m.Type, m.Type != ""),
			headers_off: C.size_t(len(buf.hdrs)),
			headers_len: C.size_t(len(m.Headers)),
			flags:       flags,
		}
		if !m.Time.IsZero() {
			cm.time_unix_ns = C.int64_t(m.Time.UnixNano())
		}
		for name, value := range m.Headers {
			buf.hdrs = append(buf.hdrs, C.pbgo_header_t{name: buf.str(name, true), value: buf.str(value, true)})
		}
		buf.msgs = append(buf.msgs, cm)
	}
	return nil
}
