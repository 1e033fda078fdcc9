/**
 * polybus for Node.js: one event bus, written once in Rust, shared with Rust, C, Go and Python.
 *
 * Handlers run on the JavaScript thread (the main thread of the process that subscribed). A
 * handler acknowledges an event by returning (or by resolving the promise it returns); a
 * synchronous throw or a rejected promise is a nack, and the core retries the event with
 * backoff up to `maxAttempts`, then publishes it to `deadLetter` or drops it. After
 * `bus.close()` every call fails with `code === 'POLYBUS_ERR_CLOSED'`.
 *
 * Every error polybus throws or rejects with has a `code`: the C name of its status, for example
 * `'POLYBUS_ERR_INVALID_TOPIC'`.
 *
 * The calls that wait (`connect`, `publish`, `publishBatch`, `close`) take an `AbortSignal`
 * (`{ signal }`): when it aborts, the call stops waiting and rejects with
 * `code === 'POLYBUS_ERR_CANCELLED'` (`'POLYBUS_ERR_TIMEOUT'` when the deadline of
 * `AbortSignal.timeout(ms)` passed) and the signal's `reason` as `cause`. Whether the call
 * fails and what it leaves behind is the core's rule, the same in every language (see
 * {@link Abortable}).
 *
 * @packageDocumentation
 */

/** The status names an error's `code` can take. */
export type ErrorCode =
  | 'POLYBUS_ERR_INVALID_ARGUMENT'
  | 'POLYBUS_ERR_INVALID_CONFIG'
  | 'POLYBUS_ERR_INVALID_TOPIC'
  | 'POLYBUS_ERR_INVALID_PATTERN'
  | 'POLYBUS_ERR_CLOSED'
  | 'POLYBUS_ERR_UNSUPPORTED'
  | 'POLYBUS_ERR_TIMEOUT'
  | 'POLYBUS_ERR_CONNECTION'
  | 'POLYBUS_ERR_TOO_LARGE'
  | 'POLYBUS_ERR_AUTH'
  | 'POLYBUS_ERR_BACKEND'
  | 'POLYBUS_ERR_PAYLOAD'
  | 'POLYBUS_ERR_HANDLER'
  | 'POLYBUS_ERR_PANIC'
  | 'POLYBUS_ERR_ABI_MISMATCH'
  | 'POLYBUS_ERR_CANCELLED'
  | 'POLYBUS_ERR_INTERNAL'

/**
 * An error thrown or rejected by polybus. Its `message` is the core's text for the error, the
 * same in every language: the kind, then the detail (`invalid topic: topic "a..b": empty
 * token at position 2 ...`).
 */
export interface PolybusError extends Error {
  code: ErrorCode
  /**
   * Set on the error of {@link Bus.publishBatch}: how many events, from the first, were
   * published before the failed one (or, when it was cancelled, confirmed before it gave up).
   */
  published?: number
  /**
   * On an error that a signal's abort caused (`POLYBUS_ERR_CANCELLED`, or `POLYBUS_ERR_TIMEOUT`
   * for the deadline of `AbortSignal.timeout`): the signal's `reason`.
   */
  cause?: unknown
}

/**
 * The options of a call that can wait. When `signal` aborts, the call stops waiting and
 * rejects, the signal's `reason` as the error's `cause`: with `POLYBUS_ERR_TIMEOUT` when the
 * reason is a `TimeoutError` (`AbortSignal.timeout(ms)`: the caller's deadline passed, as the
 * core reports its own deadlines), else with `POLYBUS_ERR_CANCELLED`
 * (`AbortController.abort()`). A signal that has already aborted does the same before the call
 * starts: the core checks a fired cancel at the start of every call, after a closed bus
 * (`POLYBUS_ERR_CLOSED` wins). What is left behind is the core's rule, the same in every
 * language:
 *
 * - `connect`: connecting stops; nothing is left open.
 * - `publish`: the wait stops, but the event may still be published (its place in the order
 *   was fixed when the publish started).
 * - `publishBatch`: no further event is started; the error's `published` counts the events
 *   confirmed before it gave up, and those started after them may still be published.
 * - `close` (bus or subscription): the wait stops, but it is closed anyway, even by a signal
 *   that had already aborted (a closed bus rejects publishes with `POLYBUS_ERR_CLOSED`), and
 *   queued and in-flight events still finish in the background, bounded by `closeTimeoutMs`;
 *   calling `close()` again waits for them.
 */
export interface Abortable {
  /** Aborting it stops the call's wait. */
  signal?: AbortSignal
}

/**
 * The bus configuration, the same structure in every language. Names may be camelCase or
 * snake_case (`maxPayload` or `max_payload`); an unknown name is an error.
 */
export interface Config {
  /**
   * Where to connect: `memory://` (private to the bus), `memory://NAME` (shared in the
   * process), `nats://host:4222` (NATS core; `nats://user:password@host:4222` carries
   * credentials), `jetstream://host:4222` (NATS JetStream), `redis://host:6379` (Redis
   * Streams), `redis+pubsub://host:6379` (Redis Pub/Sub) or `kafka://host:9092,host:9092`
   * (Apache Kafka).
   */
  url: string
  /** Namespace for topics on the broker; empty for none. */
  prefix?: string
  /** The service name, sent as each event's `source`. */
  name?: string
  /** How long connecting may take, in milliseconds (default 5000). */
  connectTimeoutMs?: number
  /** How long `publish` may wait for a full subscriber queue, in milliseconds (default 30000). */
  publishTimeoutMs?: number
  /** How long `close` waits for queued and in-flight events, in milliseconds (default 30000). */
  closeTimeoutMs?: number
  /** The largest payload accepted, in bytes (default 1 MiB). */
  maxPayload?: number
  /** Connection settings for `nats://` and `jetstream://`. */
  nats?: NatsConfig
  /** Stream and consumer settings for `jetstream://`. */
  jetstream?: JetStreamConfig
  /** Connection, TLS and stream settings for `redis://` and `redis+pubsub://`. */
  redis?: RedisConfig
  /** Client, security, topic and consumer settings for `kafka://`. */
  kafka?: KafkaConfig
}

/**
 * The `redis` section of {@link Config}, with the names Redis users know. Credentials and the
 * database may also travel in the URL (`redis://user:password@host:6379/2`); a setting here
 * wins. Names may be camelCase or snake_case, as in the rest of the config.
 */
export interface RedisConfig {
  /** Servers as `host:port`, tried in order when connecting (default: the URL's host). */
  addrs?: string[]
  /** The database number (default: the URL's path, else 0). */
  db?: number
  /** ACL user name (default: the URL's, else the `default` user). */
  username?: string
  /** Password (default: the URL's, else none). */
  password?: string
  /** Path of a PEM file of CA certificates to trust (TLS; `rediss://`). */
  tlsCa?: string
  /** Path of the PEM client certificate (with `tlsKey`). */
  tlsCert?: string
  /** Path of the PEM client private key (with `tlsCert`). */
  tlsKey?: string
  /** How long one command may take, in ms (default 5000). */
  commandTimeoutMs?: number
  /** Attempts to re-establish a lost connection before a command fails (default 3). */
  maxRetries?: number
  /** Approximate length each stream is trimmed to on publish; 0 keeps everything (default 100000). */
  maxLen?: number
  /** How long an unacknowledged event stays with a member before another reclaims it, in ms (default 30000). */
  claimIdleMs?: number
  /** How long one blocking read waits, in ms (default 1000). */
  blockMs?: number
  /** How often a wildcard subscription looks for new streams, in ms (default 1000). */
  scanIntervalMs?: number
}

/**
 * The `kafka` section of {@link Config}. Topics are created through the admin API the first
 * time the bus uses them. Names may be camelCase or snake_case, as in the rest of the config.
 */
export interface KafkaConfig {
  /** The client id the brokers see (default: the bus `name`, else `polybus`). */
  clientId?: string
  /** `plaintext`, `ssl`, `sasl_plaintext` or `sasl_ssl` (default: from the settings below). */
  securityProtocol?: 'plaintext' | 'ssl' | 'sasl_plaintext' | 'sasl_ssl'
  /** `PLAIN` (the default with a username), `SCRAM-SHA-256` or `SCRAM-SHA-512`. */
  saslMechanism?: 'PLAIN' | 'SCRAM-SHA-256' | 'SCRAM-SHA-512'
  /** SASL user name (with `password`). */
  username?: string
  /** SASL password (with `username`). */
  password?: string
  /** Path of a PEM file of CA certificates to trust (TLS). */
  tlsCa?: string
  /** Path of the PEM client certificate (with `tlsKey`). */
  tlsCert?: string
  /** Path of the PEM client private key (with `tlsCert`). */
  tlsKey?: string
  /** Partitions of the topics the bus creates (default 1: a topic's events stay in order). */
  partitions?: number
  /** Replicas of the topics the bus creates (default 1). */
  replicationFactor?: number
  /** Producer compression (default `none`). */
  compression?: 'none' | 'gzip' | 'snappy' | 'lz4'
  /** How long the producer waits to fill a batch, in ms (default 0). */
  lingerMs?: number
  /** How long a silent group member keeps its partitions, in ms (default 45000). */
  sessionTimeoutMs?: number
  /** How often the offsets of handled events are committed, in ms (default 1000). */
  commitIntervalMs?: number
  /** How often a wildcard subscription looks for new topics, in ms (default 1000). */
  metadataRefreshMs?: number
  /** Raw librdkafka properties, applied last (for example `{'fetch.wait.max.ms': '50'}`). */
  properties?: Record<string, string>
}

/**
 * The `nats` section of {@link Config}: credentials, TLS and the client name. Names may be
 * camelCase or snake_case, as in the rest of the config.
 */
export interface NatsConfig {
  /** User name (with `password`). */
  user?: string | null
  /** Password (with `user`). */
  password?: string | null
  /** Authentication token. */
  token?: string | null
  /** NKey seed (`SU...`). */
  nkeySeed?: string | null
  /** Path of a `.creds` file (JWT and NKey seed). */
  credsFile?: string | null
  /** Path of a PEM file of CA certificates to trust. */
  tlsCa?: string | null
  /** Path of the PEM client certificate (with `tlsKey`). */
  tlsCert?: string | null
  /** Path of the PEM client private key (with `tlsCert`). */
  tlsKey?: string | null
  /** Refuse to connect without TLS (default false). */
  tlsRequired?: boolean
  /** The connection name the server shows (default: the bus `name`). */
  connectionName?: string | null
}

/**
 * The `jetstream` section of {@link Config}. The stream is bound when it exists and created
 * otherwise; the creation settings apply only then.
 */
export interface JetStreamConfig {
  /** The stream name (default `POLYBUS_<PREFIX>`, dots as `_`). */
  stream?: string | null
  /** The subjects of a created stream (default `<prefix>.>`). */
  subjects?: string[]
  /** Retention of a created stream (default `'limits'`). */
  retention?: 'limits' | 'interest' | 'workqueue'
  /** Storage of a created stream (default `'file'`). */
  storage?: 'file' | 'memory'
  /** Oldest event kept, in milliseconds; 0 keeps them for ever (default). */
  maxAgeMs?: number
  /** Largest stream size in bytes; -1 is unlimited (default). */
  maxBytes?: number
  /** Stream replicas (default 1). */
  replicas?: number
  /** How long the broker waits for an ack before redelivering, in ms (default 30000, at least 1000). */
  ackWaitMs?: number
  /** Events delivered but not acknowledged, per consumer (default 1024). */
  maxAckPending?: number
  /** Broker deliveries of one event before the broker gives up on it (default 20; -1 for no limit). */
  maxDeliver?: number
  /** How long the consumer of a crashed broadcast subscriber survives, in ms (default 3600000). */
  inactiveThresholdMs?: number
  /** Publish acknowledgements awaited at once per bus (default 4096). */
  maxPendingPublishes?: number
}

/**
 * The state of a bus's connection to its broker: `'disconnected'` while the client reconnects
 * (automatically; subscriptions survive it), `'closed'` after `close`, for good. `memory://`
 * is connected until closed.
 */
export type ConnectionState = 'connected' | 'disconnected' | 'closed'

/** A payload: bytes, text, or any other value, which is published as JSON text. */
export type Payload = Uint8Array | ArrayBufferView | ArrayBuffer | string | unknown

/** Metadata of a published event. */
export interface PublishOptions {
  /** The ordering key: events with the same key are handled in publish order, never concurrently. */
  key?: string
  /** Headers: visible ASCII names (no `:`), values without CR, LF or NUL. */
  headers?: Record<string, string>
  /** The event id (default: a new UUIDv7). */
  id?: string
  /** The event type (default: the topic). */
  type?: string
  /**
   * The event time (default: now): a `Date` or a number of milliseconds since the Unix epoch
   * (as `Date.now()`). Handlers read it back as the same `Date`, to the millisecond.
   */
  time?: Date | number
}

/** One event of {@link Bus.publishBatch}. */
export interface OutgoingMessage extends PublishOptions {
  topic: string
  payload: Payload
}

/** How a subscription receives and acknowledges events. */
export interface SubscribeOptions {
  /** Competing consumers: each event goes to one member of the group. Omit to broadcast. */
  group?: string
  /** Handlers in flight at once (default 1); one key still runs in order, one at a time. */
  concurrency?: number
  /** Deliveries of one event before it is dead-lettered or dropped (default 5). */
  maxAttempts?: number
  /** Topic that receives events that failed `maxAttempts` times. */
  deadLetter?: string
  /** Where to start on backends that keep history (default `'new'`). */
  start?: 'new' | 'earliest'
  /** First retry delay in milliseconds, doubled on each further attempt (default 100). */
  backoffInitialMs?: number
  /** Largest retry delay in milliseconds (default 10000). */
  backoffMaxMs?: number
  /** Events buffered for this subscription before publishers wait (default 1024). */
  queueSize?: number
  /** Most events handed to JavaScript at once (default 256). */
  batchSize?: number
}

/** A delivered event. It stays readable after its handler returned. */
export declare class Event {
  private constructor()
  /** The topic it was published on (without the bus prefix). */
  readonly topic: string
  /** The payload, untouched. */
  readonly payload: Buffer
  /** The ordering key, or `null`. */
  readonly key: string | null
  /** The headers. */
  readonly headers: Record<string, string>
  /** The event id. */
  readonly id: string
  /** The event type (the topic unless the publisher set one). */
  readonly type: string
  /** The publishing service's name (its bus `name`), or `null`. */
  readonly source: string | null
  /** When it was published, or the time its publisher set. */
  readonly time: Date
  /** The delivery attempt: 1 on first delivery, 2 on the first retry, and so on. */
  readonly attempt: number
  /**
   * Decodes the payload as JSON.
   * @throws {PolybusError} `POLYBUS_ERR_PAYLOAD` when the payload is not valid JSON.
   */
  json<T = unknown>(): T
  /** The fields as a plain object, the payload as text. */
  toJSON(): Record<string, unknown>
}

/**
 * Handles one event. Returning (or resolving) acknowledges it; throwing (or rejecting) is a
 * nack. Runs on the JavaScript thread; events of one lane are handled one after another. It
 * may close its own subscription or bus: that stops without waiting for itself.
 */
export type Handler = (event: Event) => unknown

/** The counters of a bus, cumulative since it was opened. */
export interface Stats {
  /** Events accepted by `publish`. */
  published: number
  /** Handler invocations (every attempt counts). */
  delivered: number
  /** Events acknowledged after their handler succeeded. */
  acked: number
  /** Handler failures (throws, rejections). */
  failed: number
  /** Retries scheduled after a failure. */
  retried: number
  /** Events published to a dead-letter topic after `maxAttempts`. */
  deadLettered: number
  /** Events given up on. */
  dropped: number
}

/**
 * A running subscription. Like a listening socket, it keeps the process alive until it is
 * closed (or its bus is), so a consumer-only service keeps running and accepted events are
 * handled; {@link Subscription.unref} opts out.
 */
export declare class Subscription {
  private constructor()
  /** The pattern subscribed to. */
  readonly pattern: string
  /** Whether the subscription has been closed. */
  readonly closed: boolean
  /**
   * Stops receiving and resolves once queued and in-flight events are handled; then it no
   * longer keeps the process alive. Idempotent. Called from inside one of the subscription's
   * own handlers it stops and resolves at once (waiting would wait for that handler); the
   * drain finishes in the background.
   * @throws {PolybusError} `POLYBUS_ERR_TIMEOUT` when they were not handled within the bus's
   * `closeTimeoutMs` (the rest is dropped) or `options.signal`'s deadline passed first,
   * `POLYBUS_ERR_CANCELLED` when `options.signal` aborted first (the subscription is stopped
   * anyway, also by a signal that aborted before the call; the drain goes on in the background).
   */
  close(options?: Abortable): Promise<void>
  /** The same as {@link Subscription.close}: the one meaning of unsubscribe in every language. */
  unsubscribe(options?: Abortable): Promise<void>
  /**
   * Lets the process exit while the subscription is live, as `unref()` of a Node socket or
   * timer does: its events are then handled only while something else keeps the process
   * running. Returns the subscription.
   */
  unref(): this
  /** Makes the subscription keep the process alive again (the default). Returns it. */
  ref(): this
}

/** A connection to an event bus, made by {@link connect}. */
export declare class Bus {
  private constructor()
  /** Whether `close` has been called. */
  readonly closed: boolean
  /** The state of the connection to the broker; readable after `close` (`'closed'`). */
  readonly connectionState: ConnectionState
  /**
   * Calls `callback` on the JavaScript thread with each new connection state, in order (a
   * change and its reversal may be seen as none); the last call is with `'closed'`. It never
   * keeps the process alive. A callback that throws or rejects emits a process warning
   * (`POLYBUS_CALLBACK_FAILED`).
   * @throws {PolybusError} `POLYBUS_ERR_CLOSED` after `close`, `POLYBUS_ERR_INVALID_ARGUMENT`
   * when `callback` is not a function.
   */
  onConnectionStateChange(callback: (state: ConnectionState) => void | Promise<void>): void
  /**
   * Publishes one event; resolves once the backend accepted it (memory: queued to every
   * matching subscription, waiting while a queue is full; a broker: once it confirmed).
   * Publishes made without awaiting go straight to the core, which keeps them in call order
   * and pipelines them. A payload that is not bytes or text is sent as `JSON.stringify` text,
   * with the core's JSON rule (`content-type: application/json` unless a `content-type`
   * header is set).
   * @throws {PolybusError} `POLYBUS_ERR_CLOSED` after `close`, `POLYBUS_ERR_INVALID_TOPIC`,
   * `POLYBUS_ERR_TOO_LARGE` (over `maxPayload`), `POLYBUS_ERR_PAYLOAD` (a value JSON cannot
   * encode: a function, a BigInt), `POLYBUS_ERR_INVALID_ARGUMENT` (a bad header, key,
   * argument type, or a time before 1970 or not a valid date), `POLYBUS_ERR_TIMEOUT` (not
   * accepted within `publishTimeoutMs`, or `options.signal`'s deadline passed first),
   * `POLYBUS_ERR_CANCELLED` (`options.signal` aborted first). An event whose wait was given up
   * may still be published.
   */
  publish(topic: string, payload: Payload, options?: PublishOptions & Abortable): Promise<void>
  /**
   * Publishes many events in order with one call into the core's pipelined publish (as many
   * in flight as the backend allows, confirmations awaited together) and resolves with how
   * many were published: all of them.
   * @throws {PolybusError} As {@link Bus.publish}, for the first event that failed: the
   * message names its index, and `published` says how many events before it were published
   * (an event that cannot be converted fails the batch once the ones before it are published);
   * `POLYBUS_ERR_CANCELLED` (or `POLYBUS_ERR_TIMEOUT`, a deadline) when `options.signal`
   * aborted first, with `published` counting the events confirmed before it gave up.
   */
  publishBatch(messages: Iterable<OutgoingMessage>, options?: Abortable): Promise<number>
  /** The same as {@link Bus.publishBatch} (its former name). */
  publishMany(messages: Iterable<OutgoingMessage>, options?: Abortable): Promise<number>
  /**
   * Subscribes `handler` to `pattern` (`*` matches one token, `>` the rest).
   * @throws {PolybusError} `POLYBUS_ERR_CLOSED`, `POLYBUS_ERR_INVALID_PATTERN`,
   * `POLYBUS_ERR_INVALID_ARGUMENT` (a bad or unknown option, a handler that is not a function),
   * `POLYBUS_ERR_INVALID_TOPIC` (a bad `deadLetter`), `POLYBUS_ERR_UNSUPPORTED` (an option the
   * backend cannot honour, such as `start: 'earliest'` on memory).
   */
  subscribe(pattern: string, handler: Handler, options?: SubscribeOptions): Promise<Subscription>
  /**
   * Closes the bus: new publishes and subscribes fail with `POLYBUS_ERR_CLOSED`, every
   * subscription stops receiving, queued and in-flight events are still handled, then the
   * connection is released and its subscriptions no longer keep the process alive.
   * Idempotent. Called from inside a handler of this bus it resolves at once (waiting would
   * wait for that handler): the bus is closed, and the drain finishes in the background.
   * @throws {PolybusError} `POLYBUS_ERR_TIMEOUT` when handlers did not finish within
   * `closeTimeoutMs` (the rest is dropped) or `options.signal`'s deadline passed first,
   * `POLYBUS_ERR_CANCELLED` when `options.signal` aborted first (the bus is closed anyway, also
   * by a signal that aborted before the call; the drain goes on in the background).
   */
  close(options?: Abortable): Promise<void>
  /** The bus's counters. */
  stats(): Stats
}

/**
 * Connects to a bus: a URL such as `'memory://'`, or a {@link Config}.
 * @throws {PolybusError} `POLYBUS_ERR_INVALID_CONFIG` (a bad URL, an unknown setting),
 * `POLYBUS_ERR_TIMEOUT` and `POLYBUS_ERR_CONNECTION` (the backend cannot be reached),
 * `POLYBUS_ERR_AUTH` (the broker rejected the credentials), `POLYBUS_ERR_CANCELLED`
 * (`options.signal` aborted first; nothing is left open; `POLYBUS_ERR_TIMEOUT` for its
 * deadline).
 */
export declare function connect(config: string | Config, options?: Abortable): Promise<Bus>
