'use strict'
// The public surface of polybus for Node.js. The native module (native.js) does the work;
// this file converts arguments, runs handlers over the batches the core hands out and maps
// each handler's result to an acknowledgement. Retries, backoff, ordering and dead-lettering
// all happen in the core.

const { inspect } = require('node:util')
const native = require('./native.js')

const RESOLVED = Promise.resolve()
const noop = () => {}

/** An `Error` whose `code` is the C name of a polybus status. */
function polybusError(code, message, cause) {
  const err = new Error(message, cause === undefined ? undefined : { cause })
  err.code = code
  return err
}

/**
 * Native argument conversions fail with Node-API codes (`StringExpected`); report them as the
 * invalid arguments they are.
 */
function argumentError(err) {
  if (typeof err?.code === 'string' && err.code.startsWith('POLYBUS_')) return err
  return polybusError('POLYBUS_ERR_INVALID_ARGUMENT', `invalid argument: ${err?.message}`, err)
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
    throw polybusError('POLYBUS_ERR_PAYLOAD', `cannot encode the payload as JSON: ${err.message}`, err)
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
 * Runs `handler` over one batch (one lane) in order, awaiting each returned promise, and stops
 * at the first failure: that event is nacked with the reason, the rest are skipped.
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

/** How many events `publishMany` hands to the native module in one call. */
const PUBLISH_CHUNK = 1024

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

/** Whether `options` (publish options, or a message of `publishMany`) sets any option. */
function hasOptions(options) {
  return options.key !== undefined || options.headers !== undefined || options.id !== undefined ||
    options.type !== undefined || options.time !== undefined
}

/** A connection to an event bus; see index.d.ts. */
class Bus {
  #native
  /**
   * The last publish the backend has not accepted yet. Later publishes wait behind it here
   * rather than in the core: waiting in the core costs one cross-thread promise per publish,
   * here one per wait.
   */
  #tail = null

  constructor(nativeBus) {
    this.#native = nativeBus
  }

  publish(topic, payload, options) {
    try {
      const data = encodePayload(payload)
      const json = data !== payload && typeof data === 'string'
      if (this.#tail !== null) {
        const send = () => this.#send(topic, data, json, options)
        return this.#follow(this.#tail.then(send, send))
      }
      const pending = this.#send(topic, data, json, options)
      return pending === null ? RESOLVED : this.#follow(pending)
    } catch (err) {
      return Promise.reject(argumentError(err))
    }
  }

  /** One native publish: the lean call for bytes or text without options, else the full one. */
  #send(topic, data, json, options) {
    try {
      if (!json && (options === undefined || options === null || !hasOptions(options))) {
        return this.#native.publish(topic, data)
      }
      return this.#native.publishWith(topic, data, json, options?.key, options?.headers, options?.id,
        options?.type, timeMs(options?.time))
    } catch (err) {
      throw argumentError(err)
    }
  }

  /** Keeps later publishes behind `pending` until the backend accepted it. */
  #follow(pending) {
    this.#tail = pending
    const clear = () => {
      if (this.#tail === pending) this.#tail = null
    }
    pending.then(clear, clear)
    return pending
  }

  async publishMany(messages) {
    const chunk = { topics: [], payloads: [], json: null, metas: null, first: 0 }
    let topic
    // Converts up to PUBLISH_CHUNK messages, then publishes them with one native call (more
    // only when the backend makes one wait). A message that cannot be converted fails the
    // batch once the messages before it are published.
    for (const m of messages) {
      const i = chunk.topics.length
      try {
        if (m === null || typeof m !== 'object' || typeof m.topic !== 'string') {
          throw polybusError('POLYBUS_ERR_INVALID_ARGUMENT', `expected {topic: string, payload}, got ${inspect(m)}`)
        }
        const data = encodePayload(m.payload)
        if (data !== m.payload && typeof data === 'string') (chunk.json ??= new Uint8Array(PUBLISH_CHUNK))[i] = 1
        if (hasOptions(m)) {
          const { key, headers, id, type } = m
          ;(chunk.metas ??= [])[i] = { key, headers, id, type, time: timeMs(m.time) }
        }
        // A topic repeated from the message before is passed as undefined: converted once.
        chunk.topics.push(m.topic === topic ? undefined : (topic = m.topic))
        chunk.payloads.push(data)
      } catch (err) {
        await this.#publishChunk(chunk)
        err.message = `event ${chunk.first + i} of the batch: ${err.message}`
        throw err
      }
      if (chunk.topics.length === PUBLISH_CHUNK) {
        await this.#publishChunk(chunk)
        chunk.first += PUBLISH_CHUNK
        chunk.topics.length = 0
        chunk.payloads.length = 0
        chunk.json = null
        chunk.metas = null
        topic = undefined
      }
    }
    await this.#publishChunk(chunk)
  }

  /** Publishes one chunk of `publishMany`, behind the publishes made before. */
  async #publishChunk({ topics, payloads, json, metas, first }) {
    if (topics.length === 0) return
    while (this.#tail !== null) await this.#tail.then(noop, noop)
    let next = this.#native.publishMany(topics, payloads, json, metas, first, 0)
    while (next !== null) next = this.#native.publishMany(topics, payloads, json, metas, first, await next)
  }

  async subscribe(pattern, handler, options = {}) {
    if (typeof handler !== 'function') {
      throw polybusError('POLYBUS_ERR_INVALID_ARGUMENT', `handler must be a function, got ${inspect(handler)}`)
    }
    const json = coreJson(options, 'subscribe options', 'POLYBUS_ERR_INVALID_ARGUMENT')
    const onBatch = (batch) => {
      handleBatch(batch, handler)
    }
    let subscribed
    try {
      subscribed = this.#native.subscribe(pattern, json, onBatch)
    } catch (err) {
      throw argumentError(err)
    }
    return subscribed
  }

  close() {
    return this.#native.close()
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

async function connect(config) {
  const text =
    typeof config === 'string' ? config : coreJson(config, 'config', 'POLYBUS_ERR_INVALID_CONFIG')
  return new Bus(await native.connect(text))
}

module.exports = { connect, Bus, Event, Subscription: native.Subscription }
