'use strict'
// The public surface of polybus for Node.js. The native module (native.js) does the work;
// this file converts arguments, runs handlers over the batches the core hands out and maps
// each handler's result to an acknowledgement. Retries, backoff, ordering and dead-lettering
// all happen in the core.

const { AsyncLocalStorage } = require('node:async_hooks')
const { inspect } = require('node:util')
const native = require('./native.js')

const RESOLVED = Promise.resolve()
const noop = () => {}

/** The detail of an error raised here (its message without the core's `kind: ` prefix). */
const DETAIL = Symbol('polybus.detail')

/**
 * An `Error` whose `code` is the C name of a polybus status and whose message is the core's
 * text for it (`kind: detail`, as in every language).
 */
function polybusError(code, detail, cause) {
  const err = new Error(native.errorMessage(code, detail), cause === undefined ? undefined : { cause })
  err.code = code
  Object.defineProperty(err, DETAIL, { value: detail })
  return err
}

/**
 * Native argument conversions fail with Node-API codes (`StringExpected`); report them as the
 * invalid arguments they are.
 */
function argumentError(err) {
  if (typeof err?.code === 'string' && err.code.startsWith('POLYBUS_')) return err
  return polybusError('POLYBUS_ERR_INVALID_ARGUMENT', String(err?.message), err)
}

/**
 * The subscription (and its bus) whose handler is running, across the handler's awaits: a
 * close from inside one's own handler stops without waiting for itself.
 */
const running = new AsyncLocalStorage()

/** Whether `value` is an `AbortSignal` (or a look-alike with the same surface). */
function isAbortSignal(value) {
  return value !== null && typeof value === 'object' && typeof value.aborted === 'boolean' &&
    typeof value.addEventListener === 'function' && typeof value.removeEventListener === 'function'
}

/**
 * The `signal` of an options object: `undefined` for none. Throws for a value that is not an
 * `AbortSignal`. Whether the signal has aborted is not looked at here: the core decides (see
 * `withSignal`).
 */
function signalOf(options) {
  const signal = options?.signal
  if (signal === undefined || signal === null) return undefined
  if (!isAbortSignal(signal)) {
    throw polybusError('POLYBUS_ERR_INVALID_ARGUMENT', `signal must be an AbortSignal, got ${inspect(signal)}`)
  }
  return signal
}

/** Whether an abort `reason` is a passed deadline: what `AbortSignal.timeout(ms)` aborts with. */
function isDeadline(reason) {
  return reason instanceof DOMException && reason.name === 'TimeoutError'
}

/**
 * Calls `start(cancel)` with a native cancel handle that `signal`'s abort fires (none without a
 * signal), and returns what it returns; the listener is removed once the call settles. The
 * handle fires as a passed deadline (`expire`: the call fails with `POLYBUS_ERR_TIMEOUT`) when
 * the signal's reason is a `TimeoutError`, else as a cancel (`POLYBUS_ERR_CANCELLED`). A signal
 * that has already aborted fires the handle before the call starts. Whether and how the call
 * gives up is the core's (`*_until`, which checks a fired handle at the start of every call);
 * this only carries the abort across, and gives the error it caused the signal's reason as
 * `cause`.
 */
function withSignal(signal, start) {
  if (signal === undefined) return start(undefined)
  const cancel = new native.Cancel()
  // The code of the error the handle's firing makes, once fired.
  let firedCode
  const abort = () => {
    if (isDeadline(signal.reason)) {
      firedCode = 'POLYBUS_ERR_TIMEOUT'
      cancel.expire()
    } else {
      firedCode = 'POLYBUS_ERR_CANCELLED'
      cancel.cancel()
    }
  }
  let settled = noop
  if (signal.aborted) {
    abort()
  } else {
    signal.addEventListener('abort', abort, { once: true })
    settled = () => signal.removeEventListener('abort', abort)
  }
  const failed = (err) => {
    settled()
    if (firedCode !== undefined && err?.code === firedCode) {
      Object.defineProperty(err, 'cause', { value: signal.reason, writable: true, configurable: true })
    }
    return err
  }
  let pending
  try {
    pending = start(cancel)
  } catch (err) {
    throw failed(err)
  }
  if (pending === null) {
    settled()
    return null
  }
  return pending.then(
    (value) => {
      settled()
      return value
    },
    (err) => {
      throw failed(err)
    },
  )
}

/** `connectTimeoutMs` -> `connect_timeout_ms`; snake_case names stay as they are. */
const snakeCase = (name) => name.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`)

/** Whether `value` is a plain object (not an array, a Date, a Buffer, ...). */
function isPlainObject(value) {
  if (value === null || typeof value !== 'object') return false
  const proto = Object.getPrototypeOf(value)
  return proto === Object.prototype || proto === null
}

/**
 * `value` with the keys of it and of the plain objects nested in it (the config sections
 * `nats` and `jetstream`) in snake_case, and `undefined` entries left out.
 */
function snakeKeys(value) {
  if (!isPlainObject(value)) return value
  const out = {}
  for (const [name, v] of Object.entries(value)) {
    if (v !== undefined) out[snakeCase(name)] = snakeKeys(v)
  }
  return out
}

/** The core's JSON form of an options object whose keys may be camelCase or snake_case. */
function coreJson(value, what, code) {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw polybusError(code, `${what} must be an object, got ${inspect(value)}`)
  }
  return JSON.stringify(snakeKeys(value))
}

/** The connection states, as `connectionState` and the change callbacks give them. */
const CONNECTION_STATES = new Set(['connected', 'disconnected', 'closed'])

/** Bytes and text pass as they are; any other value is encoded as JSON text. */
function encodePayload(payload) {
  if (typeof payload === 'string' || payload instanceof Uint8Array) return payload
  if (ArrayBuffer.isView(payload)) {
    return new Uint8Array(payload.buffer, payload.byteOffset, payload.byteLength)
  }
  if (payload instanceof ArrayBuffer) return new Uint8Array(payload)
  let text
  try {
    text = JSON.stringify(payload)
  } catch (err) {
    throw polybusError('POLYBUS_ERR_PAYLOAD', `cannot encode the payload as JSON: ${err?.message}`, err)
  }
  if (text === undefined) {
    throw polybusError(
      'POLYBUS_ERR_PAYLOAD',
      `a ${typeof payload} cannot be a payload (use a Buffer, a string or a JSON-able value)`,
    )
  }
  return text
}

/** The nack reason for what a handler threw or rejected with. */
function reasonOf(err) {
  try {
    return err instanceof Error ? `${err.name}: ${err.message}` : String(err)
  } catch {
    return 'the handler failed'
  }
}

/** A delivered event. Fields are read from the native batch on first use. */
class Event {
  #batch
  #index
  #payload
  #headers

  constructor(batch, index) {
    this.#batch = batch
    this.#index = index
  }

  get topic() { return this.#batch.topic(this.#index) }
  get payload() { return (this.#payload ??= this.#batch.payload(this.#index)) }
  get key() { return this.#batch.key(this.#index) }
  get headers() { return (this.#headers ??= this.#batch.headers(this.#index)) }
  get id() { return this.#batch.id(this.#index) }
  get type() { return this.#batch.type(this.#index) }
  get source() { return this.#batch.source(this.#index) }
  get time() { return new Date(this.#batch.time(this.#index)) }
  get attempt() { return this.#batch.attempt(this.#index) }

  json() {
    try {
      return JSON.parse(this.payload)
    } catch (err) {
      throw polybusError(
        'POLYBUS_ERR_PAYLOAD',
        `payload of event ${this.id} on ${JSON.stringify(this.topic)} is not valid JSON: ${err.message}`,
        err,
      )
    }
  }

  toJSON() {
    const { topic, key, headers, id, type, source, time, attempt } = this
    return { topic, payload: this.payload.toString(), key, headers, id, type, source, time, attempt }
  }

  [inspect.custom](depth, options) {
    return `Event ${inspect({ ...this.toJSON(), payload: this.payload }, options)}`
  }
}

/**
 * Runs `handler` over one batch (one lane) in order, awaiting each returned promise, until one
 * fails; reports how many succeeded and why the next failed. The core decides the rest.
 */
async function handleBatch(batch, handler) {
  const n = batch.length
  let i = 0
  try {
    for (; i < n; i++) {
      const result = handler(new Event(batch, i))
      if (typeof result?.then === 'function') await result
    }
  } catch (err) {
    batch.complete(i, reasonOf(err))
    return
  }
  batch.complete(n)
}

/** Milliseconds since the Unix epoch of a publish option `time`: a `Date` or a number of ms. */
function timeMs(time) {
  if (time === undefined || time === null) return undefined
  if (time instanceof Date) return time.getTime()
  if (typeof time === 'number') return time
  throw polybusError(
    'POLYBUS_ERR_INVALID_ARGUMENT',
    `time must be a Date or a number of milliseconds since the epoch, got ${inspect(time)}`,
  )
}

/** Whether `options` (publish options, or a message of `publishBatch`) sets any option. */
function hasOptions(options) {
  return options.key !== undefined || options.headers !== undefined || options.id !== undefined ||
    options.type !== undefined || options.time !== undefined
}

/** A running subscription; see index.d.ts. */
class Subscription {
  #native
  #scope

  constructor(nativeSubscription, scope) {
    this.#native = nativeSubscription
    this.#scope = scope
  }

  get pattern() { return this.#native.pattern }
  get closed() { return this.#native.closed }

  close(options) {
    let signal
    try {
      signal = signalOf(options)
    } catch (err) {
      return Promise.reject(err)
    }
    const store = running.getStore()
    if (store !== undefined && store === this.#scope) {
      // From inside one of its own handlers: waiting would wait for that handler.
      this.#native.stop()
      return RESOLVED
    }
    return withSignal(signal, (cancel) => this.#native.close(cancel))
  }

  unsubscribe(options) {
    return this.close(options)
  }

  ref() {
    this.#native.ref()
    return this
  }

  unref() {
    this.#native.unref()
    return this
  }
}

/** A connection to an event bus; see index.d.ts. */
class Bus {
  #native

  constructor(nativeBus) {
    this.#native = nativeBus
  }

  publish(topic, payload, options) {
    try {
      const signal = options === undefined || options === null ? undefined : signalOf(options)
      const data = encodePayload(payload)
      const json = data !== payload && typeof data === 'string'
      let pending
      if (!json && signal === undefined && (options === undefined || options === null || !hasOptions(options))) {
        pending = this.#native.publish(topic, data)
      } else {
        const time = timeMs(options?.time)
        pending = withSignal(signal, (cancel) => this.#native.publishWith(topic, data, json, options?.key,
          options?.headers, options?.id, options?.type, time, cancel))
      }
      return pending === null ? RESOLVED : pending
    } catch (err) {
      return Promise.reject(argumentError(err))
    }
  }

  async publishBatch(messages, options) {
    const signal = signalOf(options)
    const topics = []
    const payloads = []
    let json = null
    let metas = null
    let topic
    let failure
    // Converts the messages, then publishes them with one native call (the core's pipelined
    // publish). A message that cannot be converted fails the batch once the ones before it
    // are published.
    for (const m of messages) {
      const i = topics.length
      try {
        if (m === null || typeof m !== 'object' || typeof m.topic !== 'string') {
          throw polybusError('POLYBUS_ERR_INVALID_ARGUMENT', `expected {topic: string, payload}, got ${inspect(m)}`)
        }
        const data = encodePayload(m.payload)
        const meta = hasOptions(m)
          ? { key: m.key, headers: m.headers, id: m.id, type: m.type, time: timeMs(m.time) }
          : undefined
        if (data !== m.payload && typeof data === 'string') (json ??= [])[i] = 1
        if (meta !== undefined) (metas ??= [])[i] = meta
        // A topic repeated from the message before is passed as undefined: converted once.
        topics.push(m.topic === topic ? undefined : (topic = m.topic))
        payloads.push(data)
      } catch (err) {
        const e = argumentError(err)
        failure = polybusError(e.code, `event ${i} of the batch: ${e[DETAIL] ?? e.message}`, e.cause)
        failure.published = i
        break
      }
    }
    let published
    try {
      published = await withSignal(signal, (cancel) =>
        this.#native.publishBatch(topics, payloads, json && Uint8Array.from(json), metas, cancel))
    } catch (err) {
      throw argumentError(err)
    }
    if (failure !== undefined) throw failure
    return published
  }

  publishMany(messages, options) {
    return this.publishBatch(messages, options)
  }

  async subscribe(pattern, handler, options = {}) {
    if (typeof handler !== 'function') {
      throw polybusError('POLYBUS_ERR_INVALID_ARGUMENT', `handler must be a function, got ${inspect(handler)}`)
    }
    const json = coreJson(options, 'subscribe options', 'POLYBUS_ERR_INVALID_ARGUMENT')
    // What a close from inside this subscription's handlers sees (see Subscription.close).
    const scope = { bus: this }
    const onBatch = (batch) => {
      running.run(scope, handleBatch, batch, handler)
    }
    let subscribed
    try {
      subscribed = await this.#native.subscribe(pattern, json, onBatch)
    } catch (err) {
      throw argumentError(err)
    }
    return new Subscription(subscribed, scope)
  }

  close(options) {
    let signal
    try {
      signal = signalOf(options)
    } catch (err) {
      return Promise.reject(err)
    }
    if (running.getStore()?.bus === this) {
      // From inside a handler of this bus: waiting would wait for that handler.
      this.#native.closeNow()
      return RESOLVED
    }
    return withSignal(signal, (cancel) => this.#native.close(cancel))
  }

  stats() {
    return this.#native.stats()
  }

  get closed() {
    return this.#native.closed
  }

  get connectionState() {
    return this.#native.connectionState
  }

  onConnectionStateChange(callback) {
    if (typeof callback !== 'function') {
      throw polybusError('POLYBUS_ERR_INVALID_ARGUMENT', `callback must be a function, got ${inspect(callback)}`)
    }
    this.#native.onConnectionStateChange((state) => {
      if (!CONNECTION_STATES.has(state)) return
      try {
        const result = callback(state)
        if (typeof result?.then === 'function') result.then(noop, reportCallbackError)
      } catch (err) {
        reportCallbackError(err)
      }
    })
  }
}

/** A connection state callback failed: a warning, not a crash (the bus is fine). */
function reportCallbackError(err) {
  process.emitWarning(`polybus: connection state callback failed: ${reasonOf(err)}`, {
    code: 'POLYBUS_CALLBACK_FAILED',
    detail: err instanceof Error ? err.stack : undefined,
  })
}

async function connect(config, options) {
  const signal = signalOf(options)
  const text =
    typeof config === 'string' ? config : coreJson(config, 'config', 'POLYBUS_ERR_INVALID_CONFIG')
  return new Bus(await withSignal(signal, (cancel) => native.connect(text, cancel)))
}

module.exports = { connect, Bus, Event, Subscription }
