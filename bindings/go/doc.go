// Package polybus is the Go front end of polybus, one event bus for Rust, C, Go, Python and
// Node. Every rule (topics and patterns, acknowledgement, retries with backoff, dead-lettering,
// per-key ordering, backpressure, draining on close) lives in the Rust core, reached through
// the C library libpolybus; this package converts types, runs handlers and maps errors.
//
// # Open
//
// Open a bus on a URL, with a Config for the prefix, the service name, timeouts and the
// payload limit, or with the JSON configuration text every language takes (one object, the
// same for a Go service, a Python worker and a Node gateway):
//
//	bus, err := polybus.Open(ctx, "memory://")
//	bus, err := polybus.OpenConfig(ctx, polybus.Config{URL: "memory://", Prefix: "app", Name: "billing"})
//	bus, err := polybus.OpenJSON(ctx, `{"url": "memory://", "prefix": "app", "name": "billing"}`)
//
// The URL picks the backend:
//
//   - "memory://" is a bus private to the Bus value, "memory://NAME" one shared in the process
//     by name: nothing is lost in the process, and publishers wait when a queue is full.
//   - "nats://host:4222" is NATS core, at most once: groups are queue groups and patterns are
//     native subject wildcards.
//   - "jetstream://host:4222" is NATS JetStream, at least once: events are acknowledged to the
//     broker only after their handler succeeded, a publish waits for the broker's
//     acknowledgement, and a group is one durable consumer. The stream "POLYBUS_<PREFIX>" over
//     "<prefix>.>" is created when it does not exist (without a Prefix, "polybus" is used).
//   - "redis://host:6379" is Redis Streams, at least once (consumer groups, XACK after the
//     handler); "redis+cluster://host:7000,host:7001" the same on a Redis Cluster;
//     "redis+pubsub://host:6379" Redis Pub/Sub, at most once. Config.Redis carries the servers,
//     database, ACL credentials, TLS files and stream settings.
//   - "kafka://host:9092,host:9092" is Apache Kafka, at least once: an idempotent producer, a
//     group is a Kafka consumer group, and offsets are committed only up to the lowest event
//     still in flight. Config.Kafka carries SASL, TLS, topic settings and raw librdkafka
//     properties.
//
// Config.NATS carries the credentials (user and password, token, NKey seed, creds file), the
// TLS files and the client name; Config.JetStream the stream and consumer settings:
//
//	bus, err := polybus.OpenConfig(ctx, polybus.Config{
//		URL:       "jetstream://127.0.0.1:4222",
//		Prefix:    "app",
//		NATS:      &polybus.NATSConfig{User: "app", Password: "secret"},
//		JetStream: &polybus.JetStreamConfig{MaxAge: 24 * time.Hour},
//	})
//
// Open blocks until connected, at most Config.ConnectTimeout, or until ctx ends: a server that
// refuses the credentials gives ErrAuth, one that cannot be reached ErrConnection or
// ErrTimeout.
//
// A Bus is safe for concurrent use. Users of due's eventbus can set a default bus once and use
// the package-level functions:
//
//	polybus.SetDefault(bus)
//	polybus.Publish(ctx, "orders.created", order)
//
// # Publish
//
// Publish sends a payload to a topic ("orders.created": dot-separated tokens of ASCII letters,
// digits, '_' and '-'). A []byte or string payload is sent as it is; any other value is
// encoded as JSON and marked as JSON, so that the core sends it with the header
// "content-type: application/json" (unless the message has a content-type header), as every
// language does; a value JSON cannot encode is an error with StatusPayload. Publish returns
// once the backend has accepted the event; under backpressure (a subscriber's queue is full)
// it waits, at most Config.PublishTimeout or until ctx ends. PublishMessage sets a key,
// headers, an id and a type; PublishBatch publishes many messages with one call into the
// core's pipelined publish (as many in flight as the backend allows), and on failure returns a
// *BatchError whose Published field counts the messages published before the failing one.
//
// # Subscribe
//
// Subscribe runs a handler for every event whose topic matches a pattern, where '*' matches one
// token and a final '>' the rest ("orders.*", "orders.>"):
//
//	sub, err := bus.Subscribe(ctx, "orders.*", func(ctx context.Context, e *polybus.Event) error {
//		var o Order
//		if err := e.Scan(&o); err != nil {
//			return err
//		}
//		return bill(ctx, o)
//	}, polybus.WithGroup("billing"), polybus.WithConcurrency(8), polybus.WithDeadLetter("orders.dead"))
//
// Options are functional options, one per field of the C options and named after them:
// WithGroup, WithConcurrency, WithMaxAttempts, WithDeadLetter, WithStart, WithBackoffInitial,
// WithBackoffMax, WithQueueSize and WithBatchSize. An option not given keeps the core's default;
// a value given is passed as it is and checked by the core. Without a group every subscription
// gets every event; subscriptions sharing a group share its events.
//
// # Handlers: goroutines and acknowledgement
//
// Every subscription of a bus feeds one delivery queue in the core, which a small fixed pool of
// goroutines of the bus drains: each waits in the core until a batch of events arrives (no
// polling, and no C code ever calls into Go), finds the batch's subscription and runs its
// handler on the events in order, each copied into an Event first, so an Event may be kept
// after the handler returns. The pool has as many goroutines as the largest WithConcurrency of
// the bus's subscriptions (at least 2, at most 4096), so 10,000 subscriptions of concurrency 1
// cost a handful of OS threads and no CPU while idle. A subscription's handler runs at most
// its concurrency at once, and events with the same key never run at once and keep their
// publish order.
//
// The handler's result is the acknowledgement: nil acks the event; an error, or a panic (which
// is recovered, never crashing the service), is a nack, and the events after it in its batch
// are not run (the core delivers them again). The package only reports how many events of a
// batch succeeded and the first error's text; the core decides the rest. A nacked event is delivered again with
// exponential backoff and Attempt counting up, up to the MaxAttempts option, then published to
// the DeadLetter topic (with the reason and attempt count in headers) or dropped and counted in
// Stats. All of this is done by the core; the package never retries by itself. The handler's
// context derives from the context given to Subscribe and is cancelled once the subscription
// has closed.
//
// # Connection state
//
// Once open, a bus on a broker reconnects by itself when the connection drops, and its
// subscriptions survive the reconnection. ConnectionState reports StateConnected,
// StateDisconnected or, after Close, StateClosed (a memory:// bus is connected until closed).
// WatchConnectionState returns a channel that receives the current state and then every
// change, until the bus is closed or the context is done:
//
//	for s := range bus.WatchConnectionState(ctx) {
//		log.Printf("polybus: %s", s)
//	}
//
// The channel is served by a goroutine of its own, which ends with it; a reader that falls
// behind sees the latest state. Changes come from one goroutine per bus, started by the first
// watch, which waits in the core until the state changes (no polling) and ends when the bus is
// closed.
//
// # Close
//
// Subscription.Close (or Unsubscribe, the same call) stops a subscription: it receives nothing
// new, its queued and in-flight events are still handled, then it returns. Cancelling the
// context given to Subscribe does the same. Bus.Close stops new publishes and subscribes,
// drains every subscription while the handlers keep running (at most Config.CloseTimeout),
// waits for the bus's goroutines and releases the bus. Both are idempotent. After Close every
// call returns an error matching ErrClosed, except Stats, which returns the final counters.
//
// Bus.Shutdown(ctx) and Subscription.Shutdown(ctx) are Close with a context, as
// net/http.Server.Shutdown is: they stop waiting when ctx ends, and the bus or subscription
// is closed either way, its drain going on in the background (still bounded by
// Config.CloseTimeout); a later Close waits for it. Close is Shutdown(context.Background()):
//
//	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
//	defer cancel()
//	if err := bus.Shutdown(ctx); errors.Is(err, context.DeadlineExceeded) {
//		log.Print("polybus: handlers still running; the bus is closed, the drain goes on")
//	}
//
// Either may be called from a handler: Subscription.Close from the subscription's own handler,
// and Bus.Close from any handler of the bus, do not wait (they would wait for the caller): the
// subscription or bus stops at once, the drain finishes in the background, and the call
// returns nil. A Close from elsewhere still waits for that drain.
//
// A process that exits without Close abandons the events queued in memory and in flight: on
// the at-least-once backends (jetstream://, redis://, kafka://) the broker delivers the
// unacknowledged ones again, on the others they are lost. Close the bus before main returns.
//
// # Contexts
//
// The context given to a call that blocks bounds its wait in the core, not only its start: it
// is handed across the C boundary as a cancel handle that the context alone fires when it
// ends, as a passed deadline when ctx.Err() is context.DeadlineExceeded and as a
// cancellation otherwise. The context's own clock decides when its deadline has passed (also
// the clock of a context type of your own, such as a fake clock's). The core decides what a
// call given up leaves behind, the same in every language:
//
//   - Open, OpenConfig, OpenJSON: the wait for the connection stops and nothing is left open.
//   - Publish, PublishMessage: the wait for the backend (a full queue, a broker's
//     acknowledgement) stops, but the event may still be published: its place in the order was
//     fixed when the call started. A context already done publishes nothing.
//   - PublishBatch: no further message is started; the *BatchError's Published counts the
//     messages confirmed before it gave up, and those after them that were already started
//     may still be published.
//   - Bus.Shutdown, Subscription.Shutdown: the wait for the drain stops; the bus or
//     subscription is closed either way and the drain goes on in the background.
//   - Subscribe: the context is the subscription's lifetime (see Subscribe), not a bound on
//     the call, which does not wait.
//
// The error is then an *Error whose Code is StatusCancelled (the context was cancelled) or
// StatusTimeout (its deadline passed: ctx.Err() is context.DeadlineExceeded), whose text is
// the core's and says what was left behind ("cancelled: publish; the event may still be
// published", "publish: the caller's deadline passed; ..."), and whose Unwrap returns the
// context's error, so both of these hold:
//
//	errors.Is(err, context.DeadlineExceeded) // or context.Canceled: ctx.Err()
//	errors.Is(err, polybus.ErrTimeout)       // or polybus.ErrCancelled
//
// Config.ConnectTimeout, PublishTimeout and CloseTimeout still apply; the earlier of them and
// the context's deadline ends the wait. A timeout of the bus's own, with the context still
// live, is ErrTimeout and does not match context.DeadlineExceeded. A context that can never
// end, such as context.Background(), costs nothing: no handle is made.
//
// # Errors
//
// Every error of the bus is an *Error with a Status (the C status code, whose String is the C
// name) and a message, the core's text, which reads the same in every language ("invalid
// topic: ..."); PublishBatch wraps it in a *BatchError with the count published.
// errors.Is(err, polybus.ErrClosed) matches on the code; there is one sentinel per status,
// generated from include/polybus.h. An *Error of a call its context ended also matches the
// context's error (see Contexts).
//
// # Events
//
// Event.Key and Event.Source are "" when the event has no key or its publisher no name;
// LookupKey and LookupSource tell that apart from an empty value.
//
// # Building
//
// The package links the static library target/release/libpolybus.a of the repository
// (cargo build --release -p polybus-ffi); with the build tag dynamic it links libpolybus.so
// instead. bindings/go/test.sh builds it and runs the tests. Go's build cache does not see a
// rebuilt library or header (they live outside the package); after rebuilding them, source
// bindings/go/cgo-env.sh (which puts their fingerprint in CGO_CFLAGS) or run go clean -cache.
package polybus
