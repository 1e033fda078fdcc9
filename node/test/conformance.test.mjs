// The conformance scenarios of tests/conformance, run against every backend of features.json
// through the public API, as tests named `<backend>/<scenario id>` (see SCHEMA.md there).

import assert from 'node:assert/strict'
import { randomUUID } from 'node:crypto'
import { readdirSync, readFileSync } from 'node:fs'
import { test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'

import { connect } from '../index.js'

const root = new URL('../../tests/conformance/', import.meta.url)
const features = JSON.parse(readFileSync(new URL('features.json', root), 'utf8'))
const scenarios = readdirSync(new URL('scenarios/', root))
  .filter((f) => f.endsWith('.json'))
  .sort()
  .map((f) => JSON.parse(readFileSync(new URL(`scenarios/${f}`, root), 'utf8')))

const backends = process.env.POLYBUS_TEST_BACKENDS
  ? process.env.POLYBUS_TEST_BACKENDS.split(',').map((b) => b.trim()).filter(Boolean)
  : Object.keys(features)
const timeoutScale = Number(process.env.POLYBUS_TEST_TIMEOUT_SCALE ?? 1)
const runSlow = process.env.POLYBUS_TEST_SLOW === '1'

const camel = (name) => name.replace(/_([a-z])/g, (_, c) => c.toUpperCase())
const camelKeys = (obj) => Object.fromEntries(Object.entries(obj ?? {}).map(([k, v]) => [camel(k), v]))

/**
 * The fields each kind of step may have besides `op` (SCHEMA.md); anything else is an error,
 * the same strict reading as the Rust, Go and Python runners.
 */
const STEP_FIELDS = {
  subscribe: ['name', 'pattern', 'options', 'handler', 'expect_error'],
  publish: ['topic', 'payload', 'json', 'payload_size', 'count', 'keys', 'key', 'headers', 'id', 'type',
    'expect_error'],
  wait: ['name', 'names', 'count', 'succeeded', 'timeout_ms'],
  unsubscribe: ['name', 'expect_error'],
  close: ['concurrent', 'expect_error'],
  expect: ['name', 'count', 'succeeded', 'payloads', 'payloads_unordered', 'attempts', 'topics', 'key', 'id',
    'type', 'headers', 'json', 'key_order', 'no_overlap_per_key', 'max_in_flight', 'min_peak_in_flight',
    'payloads_prefix', 'self_close_ok', 'finished_at_close', 'min_retry_gaps_ms'],
  expect_total: ['names', 'succeeded', 'distinct_payloads'],
  expect_stats: ['published', 'delivered', 'acked', 'failed', 'retried', 'dead_lettered', 'dropped'],
}
const OPTION_FIELDS = ['group', 'concurrency', 'max_attempts', 'dead_letter', 'start', 'backoff_initial_ms',
  'backoff_max_ms', 'queue_size', 'batch_size']
const HANDLER_FIELDS = ['fail_times', 'fail_always', 'fail_with', 'delay_ms', 'unsubscribe_self', 'close_bus']
const SCENARIO_FIELDS = ['id', 'description', 'requires', 'config', 'steps', 'slow']
/** What `key_order` reads as an integer. */
const INTEGER = /^-?[0-9]+$/

/** Fails unless `scenario` reads under SCHEMA.md's strict reading. */
function checkScenario(scenario) {
  const only = (what, obj, allowed) => {
    for (const k of Object.keys(obj ?? {})) assert.ok(allowed.includes(k), `${what} has an unknown field "${k}"`)
  }
  only('scenario', scenario, SCENARIO_FIELDS)
  for (const need of scenario.requires ?? []) {
    const name = need.replace(/^!/, '')
    assert.ok(name !== 'url' && Object.values(features).every((f) => typeof f[name] === 'boolean'),
      `requires names "${need}", not a capability of features.json`)
  }
  scenario.steps.forEach((step, i) => {
    assert.ok(Object.hasOwn(STEP_FIELDS, step.op), `step ${i}: unknown step op "${step.op}"`)
    only(`step ${i} (${step.op})`, step, [...STEP_FIELDS[step.op], 'op'])
    only(`step ${i}: options`, step.options, OPTION_FIELDS)
    only(`step ${i}: handler`, step.handler, HANDLER_FIELDS)
    assert.ok(!(step.handler?.unsubscribe_self === true && step.handler?.close_bus === true),
      `step ${i}: a handler has at most one of unsubscribe_self and close_bus`)
    if ('concurrent' in step) {
      assert.ok(Number.isInteger(step.concurrent) && step.concurrent >= 1,
        `step ${i}: concurrent ${JSON.stringify(step.concurrent)} is not a positive integer`)
    }
    if (step.op === 'wait') {
      assert.ok(('count' in step) !== ('succeeded' in step),
        `step ${i}: a wait step needs exactly one of "count" and "succeeded"`)
      assert.ok(('name' in step) !== ('names' in step), `step ${i}: a wait step needs exactly one of "name" and "names"`)
    }
  })
}

/** Why `scenario` does not run on `backend`, or undefined when it does. */
function skipReason(backend, scenario) {
  for (const need of scenario.requires ?? []) {
    if (need.startsWith('!')) {
      if (features[backend][need.slice(1)] === true) return `backend has "${need.slice(1)}"`
    } else if (features[backend][need] !== true) {
      return `backend lacks "${need}"`
    }
  }
  if (scenario.slow && !runSlow) return 'slow scenario (set POLYBUS_TEST_SLOW=1)'
  return undefined
}

/** Wakes waiters whenever a handler starts or finishes an invocation. */
class Signal {
  #promise
  #resolve
  constructor() {
    this.#reset()
  }
  #reset() {
    this.#promise = new Promise((resolve) => {
      this.#resolve = resolve
    })
  }
  notify() {
    const resolve = this.#resolve
    this.#reset()
    resolve()
  }
  next() {
    return this.#promise
  }
}

/** The invocations of one recording handler, in the order they started. */
class Recording {
  invocations = []
  inFlight = 0
  peak = 0
  keyOverlap = false
  /** How the unsubscribe_self / close_bus call ended: 'ok' or the error's code; null until made. */
  selfClose = null
  /** Finished invocations each call of the latest close step saw as it returned; null before any. */
  atClose = null
  #activeKeys = new Map()
  #signal

  constructor(signal) {
    this.#signal = signal
  }

  start(event) {
    const inv = {
      event,
      topic: event.topic,
      payload: event.payload.toString('utf8'),
      key: event.key,
      headers: event.headers,
      id: event.id,
      type: event.type,
      attempt: event.attempt,
      finished: false,
      succeeded: false,
      /** When it started (monotonic ms), for min_retry_gaps_ms. */
      started: performance.now(),
    }
    this.invocations.push(inv)
    this.peak = Math.max(this.peak, ++this.inFlight)
    if (inv.key !== null) {
      const active = this.#activeKeys.get(inv.key) ?? 0
      if (active > 0) this.keyOverlap = true
      this.#activeKeys.set(inv.key, active + 1)
    }
    this.#signal.notify()
    return inv
  }

  end(inv, succeeded) {
    inv.finished = true
    inv.succeeded = succeeded
    this.inFlight--
    if (inv.key !== null) this.#activeKeys.set(inv.key, this.#activeKeys.get(inv.key) - 1)
    this.#signal.notify()
  }

  get succeeded() {
    return this.invocations.filter((i) => i.succeeded).length
  }

  get finished() {
    return this.invocations.filter((i) => i.finished).length
  }

  /**
   * A handler that records and behaves as the scenario's `handler` object says; `closer` makes
   * the unsubscribe_self / close_bus call of its first invocation.
   */
  handler(spec = {}, closer) {
    const delay = spec.delay_ms ?? 0
    const makesCall = spec.unsubscribe_self === true || spec.close_bus === true
    return (event) => {
      const inv = this.start(event)
      const first = this.invocations.length === 1
      const fails = spec.fail_always === true || event.attempt <= (spec.fail_times ?? 0)
      const finish = () => {
        this.end(inv, !fails)
        if (!fails) return undefined
        if (spec.fail_with === 'panic') throw new Error(`handler threw on attempt ${event.attempt}`)
        return Promise.reject(new Error(`handler failed on attempt ${event.attempt}`))
      }
      const work = () => (delay > 0 ? sleep(delay).then(finish) : finish())
      if (first && makesCall) {
        // Called here, in the handler's own context, as a user's handler would.
        let call
        try {
          call = closer()
        } catch (err) {
          call = Promise.reject(err)
        }
        return call.then(
          () => { this.selfClose = 'ok' },
          (err) => { this.selfClose = err?.code ?? String(err) },
        ).then(work)
      }
      return work()
    }
  }
}

/** Runs `action` and checks it fails (or not) as `expectError` says. */
async function expectOutcome(expectError, what, action) {
  if (expectError === undefined) return action()
  await assert.rejects(action, (err) => {
    assert.equal(err.code, expectError, `${what}: expected ${expectError}, got ${err.code} (${err.message})`)
    return true
  }, `${what} should fail with ${expectError}`)
}

const TIMEOUT = Symbol('timeout')

/** Waits until `done()` holds, failing after the step's deadline with what it saw. */
async function waitUntil(signal, done, what, seen, timeoutMs = 10_000) {
  let timer
  const expired = new Promise((resolve) => {
    timer = setTimeout(resolve, timeoutMs * timeoutScale, TIMEOUT)
  })
  try {
    while (!done()) {
      if ((await Promise.race([signal.next(), expired])) === TIMEOUT) {
        assert.fail(`timed out after ${timeoutMs * timeoutScale} ms waiting for ${what}; saw ${seen()}`)
      }
    }
  } finally {
    clearTimeout(timer)
  }
}

function checkRecording(name, rec, step) {
  const { op, name: _, ...checks } = step
  const invs = rec.invocations
  const ok = invs.filter((i) => i.succeeded)
  for (const [check, want] of Object.entries(checks)) {
    const label = `${name}.${check}`
    switch (check) {
      case 'count': assert.equal(invs.length, want, label); break
      case 'succeeded': assert.equal(ok.length, want, label); break
      case 'payloads': assert.deepEqual(invs.map((i) => i.payload), want, label); break
      case 'payloads_unordered':
        assert.deepEqual(invs.map((i) => i.payload).sort(), [...want].sort(), label)
        break
      case 'payloads_prefix': {
        const got = invs.map((i) => i.payload)
        assert.deepEqual(got, want.slice(0, got.length),
          `${label}: ${JSON.stringify(got)} is not a prefix of ${JSON.stringify(want)}`)
        break
      }
      case 'attempts': assert.deepEqual(invs.map((i) => i.attempt), want, label); break
      case 'topics': assert.deepEqual(invs.map((i) => i.topic), want, label); break
      case 'key':
      case 'id':
      case 'type':
        for (const i of invs) assert.equal(i[check], want, label)
        break
      case 'headers':
        for (const i of invs) {
          for (const [h, v] of Object.entries(want)) {
            if (v === '*') assert.ok(i.headers[h], `${label}: header ${h} is empty or missing`)
            else assert.equal(i.headers[h], v, `${label}: header ${h}`)
          }
        }
        break
      case 'json':
        for (const i of invs) assert.deepEqual(i.event.json(), want, label)
        break
      case 'key_order':
        if (want) {
          // Unkeyed invocations are not checked (SCHEMA.md).
          const last = new Map()
          for (const i of ok) {
            if (i.key === null) continue
            assert.ok(INTEGER.test(i.payload), `${label}: payload ${JSON.stringify(i.payload)} is not an integer`)
            const n = Number.parseInt(i.payload, 10)
            if (last.has(i.key)) assert.ok(n > last.get(i.key), `${label}: key ${i.key}: ${n} after ${last.get(i.key)}`)
            last.set(i.key, n)
          }
        }
        break
      case 'no_overlap_per_key': if (want) assert.equal(rec.keyOverlap, false, label); break
      case 'max_in_flight': assert.ok(rec.peak <= want, `${label}: peak ${rec.peak} > ${want}`); break
      case 'min_peak_in_flight': assert.ok(rec.peak >= want, `${label}: peak ${rec.peak} < ${want}`); break
      case 'self_close_ok':
        assert.notEqual(rec.selfClose, null, `${label}: the handler never made its close call`)
        assert.equal(rec.selfClose === 'ok', want, `${label}: the call ended ${rec.selfClose}`)
        break
      case 'finished_at_close':
        assert.notEqual(rec.atClose, null, `${label}: no close step ran`)
        assert.ok(rec.atClose.every((n) => n === want),
          `${label}: the close calls returned when ${JSON.stringify(rec.atClose)} invocations had finished`)
        break
      case 'min_retry_gaps_ms': checkRetryGaps(label, invs, want); break
      default: assert.fail(`unknown expect check "${check}"`)
    }
  }
}

/**
 * For every event (by payload), the k-th gap between the starts of its consecutive invocations
 * is at least `want[k]` ms (the last entry for gaps past the list).
 */
function checkRetryGaps(label, invs, want) {
  assert.ok(Array.isArray(want) && want.length > 0 && want.every((n) => Number.isInteger(n) && n >= 0),
    `${label}: ${JSON.stringify(want)} is not a non-empty list of non-negative integers`)
  const byPayload = new Map()
  for (const i of invs) {
    if (!byPayload.has(i.payload)) byPayload.set(i.payload, [])
    byPayload.get(i.payload).push(i)
  }
  let gaps = 0
  for (const [payload, calls] of byPayload) {
    const ms = calls.slice(1).map((c, k) => c.started - calls[k].started)
    ms.forEach((gap, k) => {
      gaps++
      const floor = want[Math.min(k, want.length - 1)]
      assert.ok(gap >= floor,
        `${label}: payload ${JSON.stringify(payload)}: attempt ${calls[k + 1].attempt} started ${gap.toFixed(1)} ms ` +
        `after attempt ${calls[k].attempt}, expected at least ${floor} ms ` +
        `(gaps ${JSON.stringify(ms.map((g) => Math.round(g * 10) / 10))} ms)`)
    })
  }
  assert.ok(gaps > 0, `${label}: no event had a second invocation`)
}

async function runScenario(backend, scenario) {
  const url = process.env[`POLYBUS_TEST_${backend.toUpperCase()}_URL`] ?? features[backend].url
  const bus = await connect({ url, prefix: `t.${randomUUID()}`, ...scenario.config })
  const signal = new Signal()
  const recordings = new Map()
  const subscriptions = new Map()
  const recording = (name) => {
    assert.ok(recordings.has(name), `no handler named "${name}"`)
    return recordings.get(name)
  }
  try {
    for (const step of scenario.steps) {
      const { op } = step
      switch (op) {
        case 'subscribe': {
          const rec = new Recording(signal)
          const closer = step.handler?.close_bus === true
            ? () => bus.close()
            : () => subscriptions.get(step.name).close()
          await expectOutcome(step.expect_error, `subscribe ${step.name}`, async () => {
            const sub = await bus.subscribe(step.pattern, rec.handler(step.handler, closer), camelKeys(step.options))
            recordings.set(step.name, rec)
            subscriptions.set(step.name, sub)
          })
          break
        }
        case 'publish': {
          await expectOutcome(step.expect_error, `publish to ${JSON.stringify(step.topic)}`, async () => {
            for (let i = 0; i < (step.count ?? 1); i++) {
              let payload
              if (step.json !== undefined) payload = step.json
              else if (step.payload_size !== undefined) payload = Buffer.alloc(step.payload_size, 'x')
              else payload = step.payload.replaceAll('{i}', String(i))
              const key = step.keys ? step.keys[i % step.keys.length] : step.key
              await bus.publish(step.topic, payload, { key, headers: step.headers, id: step.id, type: step.type })
            }
          })
          break
        }
        case 'wait': {
          const recs = (step.names ?? [step.name]).map(recording)
          const total = (f) => recs.reduce((n, r) => n + f(r), 0)
          const [what, count] = step.succeeded !== undefined
            ? ['successful invocations', (r) => r.succeeded]
            : ['finished invocations', (r) => r.finished]
          const want = step.succeeded ?? step.count
          await waitUntil(
            signal,
            () => total(count) >= want,
            `${want} ${what} of ${step.names ?? step.name}`,
            () => `${total((r) => r.invocations.length)} started, ${total((r) => r.finished)} finished, ` +
              `${total((r) => r.succeeded)} succeeded`,
            step.timeout_ms,
          )
          break
        }
        case 'unsubscribe':
          await expectOutcome(step.expect_error, `unsubscribe ${step.name}`, () => subscriptions.get(step.name).close())
          break
        case 'close': {
          // `concurrent` calls at once; each notes what had finished as it returned.
          for (const rec of recordings.values()) rec.atClose = []
          const calls = Array.from({ length: step.concurrent ?? 1 }, () => bus.close().finally(() => {
            for (const rec of recordings.values()) rec.atClose.push(rec.finished)
          }))
          const results = await Promise.allSettled(calls)
          for (const [i, r] of results.entries()) {
            await expectOutcome(step.expect_error, `close call ${i}`,
              () => (r.status === 'fulfilled' ? Promise.resolve() : Promise.reject(r.reason)))
          }
          break
        }
        case 'expect':
          checkRecording(step.name, recording(step.name), step)
          break
        case 'expect_total': {
          const invs = step.names.flatMap((n) => recording(n).invocations).filter((i) => i.succeeded)
          if (step.succeeded !== undefined) assert.equal(invs.length, step.succeeded, 'expect_total.succeeded')
          if (step.distinct_payloads) {
            assert.equal(new Set(invs.map((i) => i.payload)).size, invs.length, 'a payload succeeded twice')
          }
          break
        }
        case 'expect_stats': {
          const { op: _, ...want } = step
          const stats = bus.stats()
          for (const [counter, value] of Object.entries(want)) {
            assert.equal(stats[camel(counter)], value, `stats.${counter}`)
          }
          break
        }
        default:
          assert.fail(`unknown op "${op}"`)
      }
    }
  } finally {
    await bus.close().catch(() => {})
  }
}

for (const backend of backends) {
  for (const scenario of scenarios) {
    const known = Object.hasOwn(features, backend)
    // A scenario that does not read strictly fails; it is never skipped.
    let problem
    try {
      checkScenario(scenario)
    } catch (err) {
      problem = err
    }
    const skip = known && problem === undefined && skipReason(backend, scenario)
    test(`${backend}/${scenario.id}`, { skip }, () => {
      assert.ok(known, `POLYBUS_TEST_BACKENDS names "${backend}", which features.json does not list`)
      if (problem !== undefined) throw problem
      return runScenario(backend, scenario)
    })
  }
}
