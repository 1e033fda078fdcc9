package polybus

/*
#include <stdlib.h>
#include "polybus.h"
*/
import "C"

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"
)

// Config is the bus configuration, the same structure in every language. Its JSON form, which
// the C API takes, uses the names url, prefix, name, connect_timeout_ms, publish_timeout_ms,
// close_timeout_ms and max_payload. Zero fields take the core's defaults.
type Config struct {
	// URL says where to connect: "memory://" is a private in-process bus, "memory://NAME" one
	// shared in the process by name.
	URL string
	// Prefix namespaces every topic on the broker (like due's "due:eventbus"); empty for none.
	Prefix string
	// Name is the service name, sent as each event's Source.
	Name string
	// ConnectTimeout bounds Open (default 5s). A deadline on Open's context shortens it.
	ConnectTimeout time.Duration
	// PublishTimeout bounds how long a publish waits for the backend to accept an event, for
	// example while a subscriber's queue is full (default 30s).
	PublishTimeout time.Duration
	// CloseTimeout bounds how long Close waits for queued and in-flight events (default 30s).
	CloseTimeout time.Duration
	// MaxPayload is the largest payload accepted, in bytes (default 1 MiB).
	MaxPayload int
}

// configJSON is the JSON form of Config.
type configJSON struct {
	URL              string `json:"url"`
	Prefix           string `json:"prefix,omitempty"`
	Name             string `json:"name,omitempty"`
	ConnectTimeoutMS int64  `json:"connect_timeout_ms,omitempty"`
	PublishTimeoutMS int64  `json:"publish_timeout_ms,omitempty"`
	CloseTimeoutMS   int64  `json:"close_timeout_ms,omitempty"`
	MaxPayload       int    `json:"max_payload,omitempty"`
}

// MarshalJSON returns the JSON form of the configuration, as the C API takes it. Durations
// are rounded up to whole milliseconds.
func (c Config) MarshalJSON() ([]byte, error) {
	j := configJSON{URL: c.URL, Prefix: c.Prefix, Name: c.Name, MaxPayload: c.MaxPayload}
	for _, d := range []struct {
		name string
		in   time.Duration
		out  *int64
	}{
		{"ConnectTimeout", c.ConnectTimeout, &j.ConnectTimeoutMS},
		{"PublishTimeout", c.PublishTimeout, &j.PublishTimeoutMS},
		{"CloseTimeout", c.CloseTimeout, &j.CloseTimeoutMS},
	} {
		ms, err := millis(d.name, d.in)
		if err != nil {
			return nil, &Error{Code: StatusInvalidConfig, Message: "invalid config: " + err.Error()}
		}
		*d.out = int64(ms)
	}
	if c.MaxPayload < 0 {
		return nil, newError(StatusInvalidConfig, "MaxPayload is negative (%d)", c.MaxPayload)
	}
	return json.Marshal(j)
}

// millis converts a duration to whole milliseconds, rounding up.
func millis(name string, d time.Duration) (uint64, error) {
	if d < 0 {
		return 0, errors.New(name + " is negative (" + d.String() + ")")
	}
	return uint64((d + time.Millisecond - 1) / time.Millisecond), nil
}

// Bus is an open event bus. It is safe for concurrent use. Make one with Open or OpenConfig
// and release it with Close.
type Bus struct {
	// mu guards c: calls into C hold it for reading, Close frees the handle holding it.
	mu     sync.RWMutex
	c      *C.polybus_t
	closed atomic.Bool
	done   chan struct{} // closed when Close has finished
	final  Stats         // the counters when the handle was freed

	subsMu sync.Mutex
	subs   map[*Subscription]struct{}
}

// Open opens a bus on a URL such as "memory://", with every other setting at its default.
// It is OpenConfig(ctx, Config{URL: url}).
func Open(ctx context.Context, url string) (*Bus, error) {
	return OpenConfig(ctx, Config{URL: url})
}

// OpenConfig opens a bus. It blocks until connected, at most cfg.ConnectTimeout or until the
// deadline of ctx, whichever comes first.
//
// Errors: ErrInvalidConfig, ErrTimeout, ErrConnection, ErrAuth, ErrAbiMismatch when the linked
// library has another C ABI, or the context's error when ctx is already done.
func OpenConfig(ctx context.Context, cfg Config) (*Bus, error) {
	if err := checkABI(); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if deadline, ok := ctx.Deadline(); ok {
		left := time.Until(deadline)
		if left <= 0 {
			return nil, context.DeadlineExceeded
		}
		if cfg.ConnectTimeout == 0 || left < cfg.ConnectTimeout {
			cfg.ConnectTimeout = left
		}
	}
	text, err := json.Marshal(cfg)
	if err != nil {
		var pe *Error
		if errors.As(err, &pe) {
			return nil, pe
		}
		return nil, newError(StatusInvalidConfig, "%v", err)
	}
	ctext := C.CString(string(text))
	defer C.free(unsafe.Pointer(ctext))
	var (
		handle *C.polybus_t
		detail C.polybus_error_t
	)
	if err := errorFrom(C.polybus_open(ctext, &handle, &detail), &detail); err != nil {
		return nil, err
	}
	return &Bus{c: handle, done: make(chan struct{}), subs: make(map[*Subscription]struct{})}, nil
}

// acquire returns the C handle with b.mu held for reading, or the error for a nil, unopened or
// closed bus. Call b.mu.RUnlock when the C call has returned.
func (b *Bus) acquire() (*C.polybus_t, error) {
	if b == nil {
		return nil, newError(StatusInvalidArgument, "the *polybus.Bus is nil (use polybus.Open)")
	}
	b.mu.RLock()
	if b.c == nil {
		b.mu.RUnlock()
		if b.closed.Load() {
			return nil, newError(StatusClosed, "bus is closed")
		}
		return nil, newError(StatusInvalidArgument, "the bus was not opened (use polybus.Open)")
	}
	return b.c, nil
}

// Close closes the bus: publishes and subscribes fail with ErrClosed from now on, every
// subscription stops receiving, and queued and in-flight events are still handled (their
// handlers keep running on their goroutines) for at most Config.CloseTimeout. Then the
// subscriptions' goroutines are stopped and waited for and the bus is released.
//
// Close is idempotent: later calls wait for the first to finish and return nil. It must not be
// called from a handler of this bus, which it would wait for. It returns ErrTimeout when
// handlers did not finish in time (the rest was abandoned and counted as dropped).
func (b *Bus) Close() error {
	c, err := b.acquire()
	if err != nil {
		if errors.Is(err, ErrClosed) {
			<-b.done
			return nil
		}
		return err
	}
	b.mu.RUnlock()
	if !b.closed.CompareAndSwap(false, true) {
		<-b.done
		return nil
	}
	defer close(b.done)

	// Drains every subscription while their goroutines keep pulling and handling.
	var detail C.polybus_error_t
	closeErr := errorFrom(C.polybus_close(c, &detail), &detail)

	// Taking the lock waits for Subscribe calls in flight, so none is missed below.
	b.mu.Lock()
	b.subsMu.Lock()
	subs := make([]*Subscription, 0, len(b.subs))
	for s := range b.subs {
		subs = append(subs, s)
	}
	b.subsMu.Unlock()
	b.mu.Unlock()
	for _, s := range subs {
		if err := s.Close(); err != nil && closeErr == nil {
			closeErr = err
		}
	}

	b.mu.Lock()
	b.final = readStats(c)
	C.polybus_free(c)
	b.c = nil
	b.mu.Unlock()
	return closeErr
}

// Stats holds a bus's counters, cumulative since it was opened.
type Stats struct {
	// Published counts events accepted by publish.
	Published uint64
	// Delivered counts handler invocations (every attempt counts).
	Delivered uint64
	// Acked counts events acknowledged after their handler succeeded.
	Acked uint64
	// Failed counts handler failures (errors and panics).
	Failed uint64
	// Retried counts retries scheduled after a failure.
	Retried uint64
	// DeadLettered counts events published to a dead-letter topic.
	DeadLettered uint64
	// Dropped counts events given up on: attempts exhausted without a dead-letter topic, a
	// failed dead-letter publish, or events abandoned when Close timed out.
	Dropped uint64
}

// Stats returns the bus's counters. After Close it returns their final values.
func (b *Bus) Stats() (Stats, error) {
	c, err := b.acquire()
	if err != nil {
		if b != nil && b.closed.Load() {
			<-b.done
			return b.final, nil
		}
		return Stats{}, err
	}
	defer b.mu.RUnlock()
	return readStats(c), nil
}

func readStats(c *C.polybus_t) Stats {
	var s C.polybus_stats_t
	// polybus_stats cannot fail on a live handle with a non-NULL out.
	C.polybus_stats(c, &s, nil)
	return Stats{
		Published:    uint64(s.published),
		Delivered:    uint64(s.delivered),
		Acked:        uint64(s.acked),
		Failed:       uint64(s.failed),
		Retried:      uint64(s.retried),
		DeadLettered: uint64(s.dead_lettered),
		Dropped:      uint64(s.dropped),
	}
}

var defaultBus atomic.Pointer[Bus]

// SetDefault makes bus the default bus, used by the package-level Publish and Subscribe (as
// due's eventbus.SetEventbus does). SetDefault(nil) removes it.
func SetDefault(bus *Bus) {
	defaultBus.Store(bus)
}

// Default returns the bus set by SetDefault, or nil.
func Default() *Bus {
	return defaultBus.Load()
}

func defaultOrError() (*Bus, error) {
	if b := defaultBus.Load(); b != nil {
		return b, nil
	}
	return nil, newError(StatusInvalidArgument, "no default bus (call polybus.SetDefault first)")
}

// Publish publishes on the default bus; see [Bus.Publish] and [SetDefault].
func Publish(ctx context.Context, topic string, payload any) error {
	b, err := defaultOrError()
	if err != nil {
		return err
	}
	return b.Publish(ctx, topic, payload)
}

// Subscribe subscribes on the default bus; see [Bus.Subscribe] and [SetDefault].
func Subscribe(ctx context.Context, pattern string, handler Handler, opts ...SubscribeOption) (*Subscription, error) {
	b, err := defaultOrError()
	if err != nil {
		return nil, err
	}
	return b.Subscribe(ctx, pattern, handler, opts...)
}
