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
// close_timeout_ms and max_payload, and the sections nats, jetstream, redis and kafka. Zero
// fields take the core's defaults.
type Config struct {
	// URL says where to connect: "memory://" is a private in-process bus, "memory://NAME" one
	// shared in the process by name, "nats://host:4222" a NATS server (at most once),
	// "jetstream://host:4222" NATS JetStream (at least once), "redis://host:6379" Redis
	// Streams (at least once), "redis+pubsub://host:6379" Redis Pub/Sub (at most once) and
	// "kafka://host:9092,host:9092" Apache Kafka (at least once). Credentials may travel in a
	// NATS or Redis URL ("nats://user:password@host:4222"); several servers are separated by
	// commas.
	URL string
	// Prefix namespaces every topic on the broker (like due's "due:eventbus"); empty for none.
	Prefix string
	// Name is the service name, sent as each event's Source.
	Name string
	// ConnectTimeout bounds Open (default 5s). Open also gives up when its context ends.
	ConnectTimeout time.Duration
	// PublishTimeout bounds how long a publish waits for the backend to accept an event, for
	// example while a subscriber's queue is full (default 30s).
	PublishTimeout time.Duration
	// CloseTimeout bounds how long Close waits for queued and in-flight events (default 30s).
	CloseTimeout time.Duration
	// MaxPayload is the largest payload accepted, in bytes (default 1 MiB).
	MaxPayload int
	// NATS holds the connection settings of nats:// and jetstream:// URLs (credentials, TLS,
	// client name); nil for the defaults.
	NATS *NATSConfig
	// JetStream holds the stream and consumer settings of jetstream:// URLs; nil for the
	// defaults.
	JetStream *JetStreamConfig
	// Redis holds the connection, TLS and stream settings of redis:// and redis+pubsub:// URLs;
	// nil for the defaults.
	Redis *RedisConfig
	// Kafka holds the client, security, topic and consumer settings of kafka:// URLs; nil for
	// the defaults.
	Kafka *KafkaConfig
}

// NATSConfig is the nats section of Config: how a nats:// or jetstream:// bus connects. Empty
// fields are not set. Its JSON form uses the core's names (user, password, token, nkey_seed,
// creds_file, tls_ca, tls_cert, tls_key, tls_required, connection_name, pending_limit).
type NATSConfig struct {
	// User is the user name, with Password.
	User string `json:"user,omitempty"`
	// Password goes with User.
	Password string `json:"password,omitempty"`
	// Token is an authentication token.
	Token string `json:"token,omitempty"`
	// NKeySeed is an NKey seed ("SU...").
	NKeySeed string `json:"nkey_seed,omitempty"`
	// CredsFile is the path of a .creds file (JWT and NKey seed).
	CredsFile string `json:"creds_file,omitempty"`
	// TLSCA is the path of a PEM file of CA certificates to trust.
	TLSCA string `json:"tls_ca,omitempty"`
	// TLSCert is the path of the PEM client certificate, with TLSKey.
	TLSCert string `json:"tls_cert,omitempty"`
	// TLSKey is the path of the PEM client private key, with TLSCert.
	TLSKey string `json:"tls_key,omitempty"`
	// TLSRequired refuses to connect without TLS.
	TLSRequired bool `json:"tls_required,omitempty"`
	// ConnectionName is the name the server shows for the connection (default: Config.Name).
	ConnectionName string `json:"connection_name,omitempty"`
	// PendingLimit is how many messages one subscription may hold in the client while its
	// handlers are behind (0: the default, 524,288); past it the client drops messages, each
	// counted in Stats.Dropped and logged.
	PendingLimit int `json:"pending_limit,omitempty"`
}

// JetStreamConfig is the jetstream section of Config: the stream a jetstream:// bus binds (or
// creates when it does not exist) and its consumers' settings. Zero fields take the core's
// defaults. Its JSON form uses the core's names (stream, subjects, retention, storage,
// max_age_ms, max_bytes, replicas, ack_wait_ms, max_ack_pending, max_deliver,
// inactive_threshold_ms, max_pending_publishes).
type JetStreamConfig struct {
	// Stream is the stream name (default "POLYBUS_" and the prefix in upper case, dots as '_').
	Stream string
	// Subjects are the subjects the stream covers when it is created (default "<prefix>.>").
	Subjects []string
	// Retention applies when the stream is created: "limits" (default), "interest" or
	// "workqueue".
	Retention string
	// Storage applies when the stream is created: "file" (default) or "memory".
	Storage string
	// MaxAge is the age of the oldest event kept; 0 keeps events for ever (the default).
	MaxAge time.Duration
	// MaxBytes is the largest stream size in bytes; 0 or -1 is unlimited (the default).
	MaxBytes int64
	// Replicas is the number of stream replicas (default 1).
	Replicas int
	// AckWait is how long the broker waits for an acknowledgement before redelivering
	// (default 30s). While a handler runs or a retry waits, the bus tells the broker it is
	// still working.
	AckWait time.Duration
	// MaxAckPending is how many events a consumer may have delivered but unacknowledged
	// (default 1024).
	MaxAckPending int64
	// MaxDeliver is how many times the broker delivers one event before giving up on it, a
	// safety net for events that crash their consumer beyond the MaxAttempts option (default
	// 20; -1 for no limit).
	MaxDeliver int64
	// InactiveThreshold is how long the consumer of a broadcast subscription survives its
	// subscriber going away without unsubscribing, for example in a crash (default 1h).
	InactiveThreshold time.Duration
	// MaxPendingPublishes is how many publish acknowledgements the bus awaits at once
	// (default 4096).
	MaxPendingPublishes int
}

// configJSON is the JSON form of Config.
type configJSON struct {
	URL              string         `json:"url"`
	Prefix           string         `json:"prefix,omitempty"`
	Name             string         `json:"name,omitempty"`
	ConnectTimeoutMS int64          `json:"connect_timeout_ms,omitempty"`
	PublishTimeoutMS int64          `json:"publish_timeout_ms,omitempty"`
	CloseTimeoutMS   int64          `json:"close_timeout_ms,omitempty"`
	MaxPayload       int            `json:"max_payload,omitempty"`
	NATS             *NATSConfig    `json:"nats,omitempty"`
	JetStream        *jetStreamJSON `json:"jetstream,omitempty"`
	Redis            *redisJSON     `json:"redis,omitempty"`
	Kafka            *kafkaJSON     `json:"kafka,omitempty"`
}

// jetStreamJSON is the JSON form of JetStreamConfig.
type jetStreamJSON struct {
	Stream              string   `json:"stream,omitempty"`
	Subjects            []string `json:"subjects,omitempty"`
	Retention           string   `json:"retention,omitempty"`
	Storage             string   `json:"storage,omitempty"`
	MaxAgeMS            int64    `json:"max_age_ms,omitempty"`
	MaxBytes            int64    `json:"max_bytes,omitempty"`
	Replicas            int      `json:"replicas,omitempty"`
	AckWaitMS           int64    `json:"ack_wait_ms,omitempty"`
	MaxAckPending       int64    `json:"max_ack_pending,omitempty"`
	MaxDeliver          int64    `json:"max_deliver,omitempty"`
	InactiveThresholdMS int64    `json:"inactive_threshold_ms,omitempty"`
	MaxPendingPublishes int      `json:"max_pending_publishes,omitempty"`
}

// msField is a duration to write into a JSON field of whole milliseconds.
type msField struct {
	name string // the Go field, for the error
	in   time.Duration
	out  *int64
}

// toMillis converts each duration to whole milliseconds, rounding up, or returns an
// ErrInvalidConfig error naming the first negative one.
func toMillis(fields ...msField) error {
	for _, f := range fields {
		ms, err := millis(f.name, f.in)
		if err != nil {
			return &Error{Code: StatusInvalidConfig, Message: "invalid config: " + err.Error()}
		}
		*f.out = int64(ms)
	}
	return nil
}

// toJSON returns the JSON form of the section, nil for nil.
func (j *JetStreamConfig) toJSON() (*jetStreamJSON, error) {
	if j == nil {
		return nil, nil
	}
	out := &jetStreamJSON{
		Stream:              j.Stream,
		Subjects:            j.Subjects,
		Retention:           j.Retention,
		Storage:             j.Storage,
		MaxBytes:            j.MaxBytes,
		Replicas:            j.Replicas,
		MaxAckPending:       j.MaxAckPending,
		MaxDeliver:          j.MaxDeliver,
		MaxPendingPublishes: j.MaxPendingPublishes,
	}
	err := toMillis(
		msField{"JetStream.MaxAge", j.MaxAge, &out.MaxAgeMS},
		msField{"JetStream.AckWait", j.AckWait, &out.AckWaitMS},
		msField{"JetStream.InactiveThreshold", j.InactiveThreshold, &out.InactiveThresholdMS},
	)
	if err != nil {
		return nil, err
	}
	return out, nil
}

// MarshalJSON returns the JSON form of the section, with the core's names. Durations are
// rounded up to whole milliseconds.
func (j JetStreamConfig) MarshalJSON() ([]byte, error) {
	out, err := j.toJSON()
	if err != nil {
		return nil, err
	}
	return json.Marshal(out)
}

// MarshalJSON returns the JSON form of the configuration, as the C API takes it. Durations
// are rounded up to whole milliseconds.
func (c Config) MarshalJSON() ([]byte, error) {
	j := configJSON{URL: c.URL, Prefix: c.Prefix, Name: c.Name, MaxPayload: c.MaxPayload, NATS: c.NATS}
	js, err := c.JetStream.toJSON()
	if err != nil {
		return nil, err
	}
	j.JetStream = js
	if j.Redis, err = c.Redis.toJSON(); err != nil {
		return nil, err
	}
	if j.Kafka, err = c.Kafka.toJSON(); err != nil {
		return nil, err
	}
	err = toMillis(
		msField{"ConnectTimeout", c.ConnectTimeout, &j.ConnectTimeoutMS},
		msField{"PublishTimeout", c.PublishTimeout, &j.PublishTimeoutMS},
		msField{"CloseTimeout", c.CloseTimeout, &j.CloseTimeoutMS},
	)
	if err != nil {
		return nil, err
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

// Bus is an open event bus. It is safe for concurrent use. Make one with Open, OpenConfig or
// OpenJSON and release it with Close (or Shutdown).
type Bus struct {
	// mu guards c and queue: calls into C hold it for reading, Close frees the handles holding
	// it.
	mu     sync.RWMutex
	c      *C.polybus_t
	closed atomic.Bool
	done   chan struct{} // closed when the bus has been closed and released
	final  Stats         // the counters when the handle was freed
	// closeErr is the result of closing the bus, set before done is closed.
	closeErr error

	// queue is the delivery queue every subscription of the bus feeds, drained by pool.
	queue *C.polybus_queue_t
	pool  pool
	// subs maps a subscription's token to its *Subscription, for the pool to find handlers
	// (C is never given a Go pointer) and for Close to close what is left.
	subs      sync.Map
	nextToken atomic.Uint64
	// background counts the goroutines finishing subscriptions closed from their own handler.
	background sync.WaitGroup
	// watch follows the connection state for WatchConnectionState.
	watch stateWatch
}

// Open opens a bus on a URL such as "memory://", with every other setting at its default.
// It is OpenConfig(ctx, Config{URL: url}).
func Open(ctx context.Context, url string) (*Bus, error) {
	return OpenConfig(ctx, Config{URL: url})
}

// OpenConfig opens a bus. It blocks until connected, at most cfg.ConnectTimeout, and gives up
// when ctx ends (cancelled, or its deadline passed), leaving nothing open.
//
// Errors: ErrInvalidConfig, ErrTimeout, ErrConnection, ErrAuth, ErrAbiMismatch when the linked
// library has another C ABI. When ctx ends first, an *Error with StatusCancelled or
// StatusTimeout that matches ctx.Err() with errors.Is (see Error).
func OpenConfig(ctx context.Context, cfg Config) (*Bus, error) {
	text, err := json.Marshal(cfg)
	if err != nil {
		var pe *Error
		if errors.As(err, &pe) {
			return nil, pe
		}
		return nil, newError(StatusInvalidConfig, "%v", err)
	}
	return open(ctx, string(text))
}

// OpenJSON opens a bus from the JSON configuration text every language takes, for example
// read from a file shared by a Go service, a Python worker and a Node gateway:
//
//	{"url": "jetstream://127.0.0.1:4222", "prefix": "app", "jetstream": {"max_age_ms": 86400000}}
//
// The text goes to the core as it is, so it may use any field the core knows, also those
// Config has no field for; the core rejects unknown ones with ErrInvalidConfig. A URL alone
// (OpenJSON(ctx, "memory://")) is accepted too. ctx is honoured as in OpenConfig.
//
// Errors: OpenConfig's.
func OpenJSON(ctx context.Context, text string) (*Bus, error) {
	return open(ctx, text)
}

// open opens a bus on a URL or JSON configuration text, under ctx, and makes its delivery
// queue: what OpenConfig and OpenJSON share.
func open(ctx context.Context, config string) (*Bus, error) {
	if err := checkABI(); err != nil {
		return nil, err
	}
	ctext := C.CString(config)
	defer C.free(unsafe.Pointer(ctext))
	var (
		queue  *C.polybus_queue_t
		handle *C.polybus_t
		detail C.polybus_error_t
	)
	if err := errorFrom(C.polybus_queue_new(&queue, &detail), &detail); err != nil {
		return nil, err
	}
	cc := newCallCancel(ctx)
	err := cc.wrap(ctx, errorFrom(C.polybus_open(ctext, cc.c, &handle, &detail), &detail))
	cc.release()
	if err != nil {
		C.polybus_queue_free(queue)
		return nil, err
	}
	return &Bus{c: handle, queue: queue, done: make(chan struct{})}, nil
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

// acquireOpen is acquire for the calls a closed bus refuses (publishing, subscribing): they
// fail with ErrClosed, as the core's do, from the moment Close or Shutdown has begun, also
// while the core's close has not started yet (Close called from a handler hands it to a
// goroutine) or has just been spawned by a close given up at once.
func (b *Bus) acquireOpen() (*C.polybus_t, error) {
	c, err := b.acquire()
	if err == nil && b.closed.Load() {
		b.mu.RUnlock()
		return nil, newError(StatusClosed, "bus is closed")
	}
	return c, err
}

// Close closes the bus: publishes and subscribes fail with ErrClosed from now on, every
// subscription stops receiving, and queued and in-flight events are still handled (the bus's
// goroutines keep running handlers) for at most Config.CloseTimeout. Then those goroutines
// end and the bus is released. Close is Shutdown(context.Background()), and implements
// io.Closer.
//
// Close is idempotent: later calls wait for the first to finish and return nil. It returns
// ErrTimeout when handlers did not finish in time (the rest was abandoned and counted as
// dropped).
//
// Called from a handler of this bus, Close does not wait (it would wait for that handler):
// it closes the bus in the background, where the drain goes on as above, and returns nil at
// once.
func (b *Bus) Close() error {
	return b.Shutdown(context.Background())
}

// Shutdown closes the bus as Close does, but stops waiting when ctx ends, as
// net/http.Server.Shutdown does: the bus is closed either way (publishes and subscribes fail
// with ErrClosed as soon as Shutdown has begun), and when ctx ends first the drain and the
// release of the bus go on in the background, still bounded by Config.CloseTimeout, and
// Shutdown returns an *Error with StatusCancelled or StatusTimeout that matches ctx.Err()
// with errors.Is (see Error). A later Close (or Shutdown) waits for that background work.
//
// Called while another Close or Shutdown is in progress, Shutdown waits for it, or until ctx
// ends, and returns nil (or the context's error). Called from a handler of this bus, it
// returns nil at once, as Close does.
func (b *Bus) Shutdown(ctx context.Context) error {
	c, err := b.acquire()
	if err != nil {
		if errors.Is(err, ErrClosed) {
			return b.awaitClosed(ctx)
		}
		return err
	}
	b.mu.RUnlock()
	if !b.closed.CompareAndSwap(false, true) {
		return b.awaitClosed(ctx)
	}
	if b.inHandler() {
		go b.close(context.Background(), c)
		return nil
	}
	return b.close(ctx, c)
}

// awaitClosed waits, until ctx ends, for the close another call started, and returns nil;
// at once from a handler of the bus (which the close may be waiting for).
func (b *Bus) awaitClosed(ctx context.Context) error {
	if b.inHandler() {
		return nil
	}
	select {
	case <-b.done:
		return nil
	default:
	}
	select {
	case <-b.done:
		return nil
	case <-ctx.Done():
		return contextError(ctx, "close", busDrainGoesOn)
	}
}

// inHandler reports whether the caller is one of the bus's delivery goroutines, that is, a
// handler of the bus.
func (b *Bus) inHandler() bool {
	_, ok := b.pool.running(currentGoroutineID())
	return ok
}

// close does Shutdown's work, once, never on a delivery goroutine of the bus: it closes the
// bus in the core, waiting for the drain until ctx ends, then releases it (release), and
// returns when that is done or ctx has ended, whichever comes first.
func (b *Bus) close(ctx context.Context, c *C.polybus_t) error {
	// Drains every subscription while the pool keeps handling; given up, the bus is closed
	// all the same and the core goes on draining.
	cc := newCallCancel(ctx)
	var detail C.polybus_error_t
	closeErr := cc.wrap(ctx, errorFrom(C.polybus_close(c, cc.c, &detail), &detail))
	cc.release()
	go b.release(c, closeErr)
	if givenUp(closeErr) {
		return closeErr
	}
	select {
	case <-b.done:
		return b.closeErr
	case <-ctx.Done():
		// Handlers still running after an abandoned drain, say.
		return contextError(ctx, "close", busDrainGoesOn)
	}
}

// release does the Go side of closing the bus once polybus_close has returned: ends the
// delivery queue, waits for the subscriptions, the pool's goroutines and those finishing
// subscriptions, frees the handles, then sets closeErr and closes done.
func (b *Bus) release(c *C.polybus_t, closeErr error) {
	if givenUp(closeErr) {
		// The caller stopped waiting; the close itself went well as far as anyone knows.
		closeErr = nil
	}
	// The pool's goroutines end once every subscription feeding the queue has ended.
	C.polybus_queue_close(b.queue)

	// closeSubs closes the subscriptions found; first only those whose Subscribe has
	// returned (one in flight may still fail, or not have its handle yet).
	closeSubs := func(all bool) {
		var subs []*Subscription
		b.subs.Range(func(_, v any) bool {
			if s := v.(*Subscription); all || s.subscribed.Load() {
				subs = append(subs, s)
			}
			return true
		})
		for _, s := range subs {
			if err := s.closeAndWait(); err != nil && closeErr == nil {
				closeErr = err
			}
		}
	}
	// Waits for the drain first (the core may still be draining when Shutdown gave up), so
	// that the lock below waits neither on handlers (publishing, say) nor for long on the
	// connection-state wait (woken by StateClosed, which the core sets once drained).
	closeSubs(false)
	// Taking the lock waits for Subscribe calls in flight, so none is missed below.
	b.mu.Lock()
	//lint:ignore SA2001 an empty critical section: only the wait matters
	b.mu.Unlock()
	closeSubs(true)
	b.pool.wg.Wait()
	// After the pool: no handler is left to start one of these.
	b.background.Wait()

	b.mu.Lock()
	b.final = readStats(c)
	C.polybus_free(c)
	b.c = nil
	C.polybus_queue_free(b.queue)
	b.queue = nil
	b.mu.Unlock()
	b.closeErr = closeErr
	close(b.done)
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
