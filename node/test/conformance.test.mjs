// The conformance scenarios of tests/conformance, run against every backend of features.json
// through the public API, as tests named `<backend>/<scenario id>` (see SCHEMA.md there).
//
// The same file is the child process of a `child` step: run with POLYBUS_CONFORMANCE_CHILD set,
// it is a group member that exits without closing (see `childMain`), and registers no test. (A
// script of its own under test/ would itself be run as a test file by `node --test test/`.)

import assert from 'node:assert/strict'
import { execFile, spawn } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import { readdirSync, readFileSync, writeSync } from 'node:fs'
import { test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'

import { connect } from '../index.js'

const repoRoot = fileURLToPath(new URL('../../', import.meta.url))
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
    'deadline_ms', 'expect_error', 'published_at_most'],
  wait: ['name', 'names', 'count', 'succeeded', 'distinct_succeeded', 'timeout_ms'],
  restart_broker: [],
  child: ['name', 'pattern', 'options', 'handler', 'publish', 'exit_after', 'timeout_ms'],
  unsubscribe: ['name', 'expect_error'],
  close: ['concurrent', 'expect_error'],
  expect: ['name', 'count', 'succeeded', 'payloads', 'payloads_unordered', 'attempts', 'topics', 'key', 'id',
    'type', 'headers', 'json', 'key_order', 'no_overlap_per_key', 'max_in_flight', 'min_peak_in_flight',
    'payloads_prefix', 'self_close_ok', 'finished_at_close', 'min_retry_gaps_ms'],
  expect_total: ['names', 'succeeded', 'distinct_payloads', 'succeeded_set'],
  expect_stats: ['published', 'delivered', 'acked', 'failed', 'retried', 'dead_lettered', 'dropped'],
}
const OPTION_FIELDS = ['group', 'concurrency', 'max_attempts', 'dead_letter', 'start', 'backoff_initial_ms',
  'backoff_max_ms', 'queue_size', 'batch_size']
const HANDLER_FIELDS = ['fail_times', 'fail_always', 'fail_with', 'delay_ms', 'unsubscribe_self', 'close_bus']
/** A `child` step's handler only works for a while; its `publish` is one object. */
const CHILD_HANDLER_FIELDS = ['delay_ms']
const CHILD_PUBLISH_FIELDS = ['topic', 'payload', 'count']
const SCENARIO_FIELDS = ['id', 'description', 'requires', 'config', 'steps', 'slow']
/** What `key_order` reads as an integer. */
const INTEGER = /^-?[0-9]+$/

const only = (what, obj, allowed) => {
  for (const k of Object.keys(obj ?? {})) assert.ok(allowed.includes(k), `${what} has an unknown field "${k}"`)
}

/**
 * Fails unless features.json reads as SCHEMA.md says: per backend a `url` (text), a `broker`
 * (the harness's name, text, or null) and capabilities (every other key, each a boolean).
 */
function checkFeatures() {
  for (const [backend, f] of Object.entries(features)) {
    assert.equal(typeof f.url, 'string', `features.json: ${backend}.url is not text`)
    assert.ok(Object.hasOwn(f, 'broker') && (f.broker === null || typeof f.broker === 'string'),
      `features.json: ${backend}.broker is missing, or neither text nor null`)
    for (const [k, v] of Object.entries(f)) {
      if (k !== 'url' && k !== 'broker') {
        assert.equal(typeof v, 'boolean', `features.json: ${backend}.${k} is not a boolean capability`)
      }
    }
  }
}

const isCount = (n) => Number.isInteger(n) && n >= 0

/** Fails unless `scenario` reads under SCHEMA.md's strict reading. */
function checkScenario(scenario) {
  only('scenario', scenario, SCENARIO_FIELDS)
  for (const need of scenario.requires ?? []) {
    const name = need.replace(/^!/, '')
    assert.ok(name !== 'url' && name !== 'broker' && Object.values(features).every((f) => typeof f[name] === 'boolean'),
      `requires names "${need}", not a capability of features.json`)
  }
  scenario.steps.forEach((step, i) => {
    assert.ok(Object.hasOwn(STEP_FIELDS, step.op), `step ${i}: unknown step op "${step.op}"`)
    only(`step ${i} (${step.op})`, step, [...STEP_FIELDS[step.op], 'op'])
    only(`step ${i}: options`, step.options, OPTION_FIELDS)
    only(`step ${i}: handler`, step.handler, step.op === 'child' ? CHILD_HANDLER_FIELDS : HANDLER_FIELDS)
    assert.ok(!(step.handler?.unsubscribe_self === true && step.handler?.close_bus === true),
      `step ${i}: a handler has at most one of unsubscribe_self and close_bus`)
    if ('concurrent' in step) {
      assert.ok(Number.isInteger(step.concurrent) && step.concurrent >= 1,
        `step ${i}: concurrent ${JSON.stringify(step.concurrent)} is not a positive integer`)
    }
    if (step.op === 'wait') {
      assert.equal(['count', 'succeeded', 'distinct_succeeded'].filter((k) => k in step).length, 1,
        `step ${i}: a wait step needs exactly one of "count", "succeeded" and "distinct_succeeded"`)
      assert.ok(('name' in step) !== ('names' in step), `step ${i}: a wait step needs exactly one of "name" and "names"`)
    }
    if ('published_at_most' in step) {
      assert.ok('expect_error' in step, `step ${i}: "published_at_most" only goes with "expect_error"`)
      assert.ok(isCount(step.published_at_most),
        `step ${i}: published_at_most ${JSON.stringify(step.published_at_most)} is not a count`)
    }
    if ('deadline_ms' in step) {
      assert.ok(isCount(step.deadline_ms), `step ${i}: deadline_ms ${JSON.stringify(step.deadline_ms)} is not a count`)
    }
    if (step.op === 'child') {
      for (const k of ['name', 'pattern', 'publish', 'exit_after']) {
        assert.ok(k in step, `step ${i} (child): "${k}" is missing`)
      }
      assert.equal(typeof step.publish, 'object', `step ${i} (child): publish is not an object`)
      only(`step ${i}: publish`, step.publish, CHILD_PUBLISH_FIELDS)
      assert.ok(typeof step.publish.topic === 'string' && typeof step.publish.payload === 'string',
        `step ${i} (child): publish needs a topic and a payload`)
      assert.ok(step.publish.count === undefined || isCount(step.publish.count),
        `step ${i} (child): publish.count is not a count`)
      assert.ok(isCount(step.exit_after), `step ${i} (child): exit_after is not a count`)
    }
    if (step.op === 'expect_total' && 'succeeded_set' in step) {
      assert.ok(Array.isArray(step.succeeded_set) && step.succeeded_set.every((p) => typeof p === 'string'),
        `step ${i}: succeeded_set is not a list of payloads`)
    }
  })
}

/** Whether a step of `scenario` restarts the broker: such a scenario runs alone. */
const restartsBroker = (scenario) => scenario.steps.some((step) => step.op === 'restart_broker')

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

  /** Records an invocation known only by its outcome (a child process's line), finished. */
  recordFinished(payload, succeeded) {
    this.invocations.push({ payload, finished: true, succeeded, key: null, attempt: undefined, started: undefined })
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

/**
 * Runs `command` (argv) from the repository root with the test's environment; fails, showing
 * its output, unless it exits with status 0.
 */
function runCommand(command, timeoutMs) {
  return new Promise((resolve, reject) => {
    execFile(command[0], command.slice(1), { cwd: repoRoot, env: process.env, timeout: timeoutMs, maxBuffer: 16 << 20 },
      (err, stdout, stderr) => {
        if (err === null) return resolve()
        const how = err.killed ? `was killed after ${timeoutMs} ms` : `failed (${err.code ?? err.signal})`
        reject(new Error(`${command.join(' ')} ${how}\n--- stdout\n${stdout}--- stderr\n${stderr}`))
      })
  })
}

/**
 * Runs the group member of a `child` step in a child process (this file, see `childMain`) and
 * resolves with the lines it wrote, once it exited with status 0 within `timeoutMs`; fails
 * otherwise, showing its standard error.
 */
function runChild(spec, timeoutMs) {
  const env = { ...process.env, POLYBUS_CONFORMANCE_CHILD: JSON.stringify(spec) }
  // Set by `node --test` for its own files: the child is not a test file.
  delete env.NODE_TEST_CONTEXT
  const child = spawn(process.execPath, [fileURLToPath(import.meta.url)], { env, stdio: ['ignore', 'pipe', 'pipe'] })
  let stdout = ''
  let stderr = ''
  child.stdout.setEncoding('utf8').on('data', (chunk) => { stdout += chunk })
  child.stderr.setEncoding('utf8').on('data', (chunk) => { stderr += chunk })
  return new Promise((resolve, reject) => {
    let timedOut = false
    const timer = setTimeout(() => {
      timedOut = true
      child.kill('SIGKILL')
    }, timeoutMs)
    child.once('error', (err) => {
      clearTimeout(timer)
      reject(err)
    })
    // 'close': the process exited and its output has been read to the end.
    child.once('close', (status, signal) => {
      clearTimeout(timer)
      if (status === 0 && !timedOut) return resolve(stdout)
      const how = timedOut
        ? `did not exit within ${timeoutMs} ms`
        : `exited with ${status === null ? `signal ${signal}` : `status ${status}`}`
      reject(new Error(`the child process ${how}\n--- its stderr\n${stderr}--- its stdout\n${stdout}`))
    })
  })
}

/** The recording of a `child` step: the child's lines, finished invocations in the order written. */
function childRecording(signal, output) {
  const rec = new Recording(signal)
  assert.ok(output === '' || output.endsWith('\n'), `the child's last line is cut short: ${JSON.stringify(output)}`)
  for (const line of output.split('\n').slice(0, -1)) {
    let inv
    try {
      inv = JSON.parse(line)
    } catch {
      inv = undefined
    }
    const ok = inv !== null && typeof inv === 'object' && !Array.isArray(inv) &&
      Object.keys(inv).sort().join() === 'payload,succeeded' &&
      typeof inv.payload === 'string' && typeof inv.succeeded === 'boolean'
    assert.ok(ok, `the child wrote ${JSON.stringify(line)}, not {"payload": "<text>", "succeeded": <boolean>}`)
    rec.recordFinished(inv.payload, inv.succeeded)
  }
  return rec
}

/**
 * Scenarios share the brokers; one that restarts its broker runs alone (SCHEMA.md). `node
 * --test` runs a file's tests one at a time already; this keeps it so whatever runs them.
 */
const gate = {
  running: 0,
  exclusive: false,
  /** Scenarios waiting to run, in order: `[exclusive, start]`. */
  queue: [],
  async enter(exclusive) {
    if (this.queue.length > 0 || !this.admits(exclusive)) {
      await new Promise((start) => this.queue.push([exclusive, start]))
    } else {
      this.admit(exclusive)
    }
  },
  admits(exclusive) {
    return !this.exclusive && (!exclusive || this.running === 0)
  },
  admit(exclusive) {
    this.running++
    this.exclusive = exclusive
  },
  leave() {
    this.running--
    this.exclusive = false
    while (this.queue.length > 0 && this.admits(this.queue[0][0])) {
      const [exclusive, start] = this.queue.shift()
      this.admit(exclusive)
      start()
    }
  },
}

async function runScenario(backend, scenario) {
  const url = process.env[`POLYBUS_TEST_${backend.toUpperCase()}_URL`] ?? features[backend].url
  const config = { url, prefix: `t.${randomUUID()}`, ...scenario.config }
  const bus = await connect(config)
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
          // One deadline for every call of the step, from its start.
          const deadline = step.deadline_ms === undefined ? undefined : AbortSignal.timeout(step.deadline_ms)
          let published = 0
          await expectOutcome(step.expect_error, `publish to ${JSON.stringify(step.topic)}`, async () => {
            for (let i = 0; i < (step.count ?? 1); i++) {
              let payload
              if (step.json !== undefined) payload = step.json
              else if (step.payload_size !== undefined) payload = Buffer.alloc(step.payload_size, 'x')
              else payload = step.payload.replaceAll('{i}', String(i))
              const key = step.keys ? step.keys[i % step.keys.length] : step.key
              await bus.publish(step.topic, payload,
                { key, headers: step.headers, id: step.id, type: step.type, signal: deadline })
              published++
            }
          })
          if (step.published_at_most !== undefined) {
            assert.ok(published <= step.published_at_most,
              `publish to ${JSON.stringify(step.topic)}: ${published} calls succeeded before the failure, ` +
              `expected at most ${step.published_at_most}`)
          }
          break
        }
        case 'wait': {
          const recs = (step.names ?? [step.name]).map(recording)
          const total = (f) => recs.reduce((n, r) => n + f(r), 0)
          const distinct = () => new Set(recs.flatMap((r) => r.invocations.filter((i) => i.succeeded).map((i) => i.payload))).size
          const [what, want, count] = step.distinct_succeeded !== undefined
            ? ['distinct successful payloads', step.distinct_succeeded, distinct]
            : step.succeeded !== undefined
              ? ['successful invocations', step.succeeded, () => total((r) => r.succeeded)]
              : ['finished invocations', step.count, () => total((r) => r.finished)]
          await waitUntil(
            signal,
            () => count() >= want,
            `${want} ${what} of ${step.names ?? step.name}`,
            () => `${total((r) => r.invocations.length)} started, ${total((r) => r.finished)} finished, ` +
              `${total((r) => r.succeeded)} succeeded (${distinct()} distinct payloads)`,
            step.timeout_ms,
          )
          break
        }
        case 'restart_broker': {
          const broker = features[backend].broker
          assert.ok(broker !== null, `backend ${backend} has no broker to restart`)
          await runCommand(['bash', 'tests/harness/brokers.sh', 'restart', broker], 300_000 * timeoutScale)
          break
        }
        case 'child': {
          const spec = {
            config,
            pattern: step.pattern,
            options: step.options ?? {},
            handler: step.handler ?? {},
            publish: step.publish,
            exit_after: step.exit_after,
          }
          const output = await runChild(spec, (step.timeout_ms ?? 10_000) * timeoutScale)
          recordings.set(step.name, childRecording(signal, output))
          signal.notify()
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
          if (step.succeeded_set !== undefined) {
            const got = [...new Set(invs.map((i) => i.payload))].sort()
            const want = [...new Set(step.succeeded_set)].sort()
            const missing = want.filter((p) => !got.includes(p))
            const extra = got.filter((p) => !want.includes(p))
            assert.ok(missing.length === 0 && extra.length === 0,
              `expect_total.succeeded_set: missing ${JSON.stringify(missing)}, not in the set ${JSON.stringify(extra)}`)
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

/** Writes `text` to file descriptor `fd` now, whole (not through a stream that may still be writing at exit). */
function writeAll(fd, text) {
  const bytes = Buffer.from(text)
  for (let off = 0; off < bytes.length;) off += writeSync(fd, bytes, off)
}

/**
 * The child process of a `child` step (SCHEMA.md, "Child processes"): a group member that
 * subscribes, publishes, waits for `exit_after` finished invocations, then lets its script end
 * without closing anything (a live subscription keeps a Node process running, so it is
 * unref'd first). Each finished invocation is one line on stdout, written synchronously: the
 * parent reads a pipe, and a line still queued in a stream when the process ends is lost.
 */
async function childMain(spec) {
  const { config, pattern, options, handler, publish, exit_after: exitAfter } = spec
  const delay = handler?.delay_ms ?? 0
  let finished = 0
  let reached
  const enough = new Promise((resolve) => {
    reached = resolve
  })
  if (exitAfter <= 0) reached()
  const bus = await connect(config)
  const sub = await bus.subscribe(pattern, async (event) => {
    if (delay > 0) await sleep(delay)
    writeAll(1, `${JSON.stringify({ payload: event.payload.toString('utf8'), succeeded: true })}\n`)
    if (++finished >= exitAfter) reached()
  }, camelKeys(options))
  for (let i = 0; i < (publish.count ?? 1); i++) {
    await bus.publish(publish.topic, publish.payload.replaceAll('{i}', String(i)))
  }
  // The wait of 10 s, scaled as every wait of the runner is.
  const waitMs = 10_000 * timeoutScale
  let timer
  const late = new Promise((resolve) => {
    timer = setTimeout(resolve, waitMs, TIMEOUT)
  })
  if ((await Promise.race([enough, late])) === TIMEOUT) {
    writeAll(2, `conformance child: ${finished} of ${exitAfter} invocations finished within ${waitMs} ms\n`)
    process.exit(1)
  }
  clearTimeout(timer)
  // Leaves without closing the bus or the subscription.
  sub.unref()
}

const childSpec = process.env.POLYBUS_CONFORMANCE_CHILD
if (childSpec !== undefined) {
  await childMain(JSON.parse(childSpec))
} else {
  let featuresProblem
  try {
    checkFeatures()
  } catch (err) {
    featuresProblem = err
  }
  for (const backend of backends) {
    for (const scenario of scenarios) {
      const known = Object.hasOwn(features, backend)
      // A scenario that does not read strictly fails; it is never skipped.
      let problem = featuresProblem
      try {
        checkScenario(scenario)
      } catch (err) {
        problem ??= err
      }
      const skip = known && problem === undefined && skipReason(backend, scenario)
      test(`${backend}/${scenario.id}`, { skip }, async () => {
        assert.ok(known, `POLYBUS_TEST_BACKENDS names "${backend}", which features.json does not list`)
        if (problem !== undefined) throw problem
        const exclusive = restartsBroker(scenario)
        await gate.enter(exclusive)
        try {
          await runScenario(backend, scenario)
        } finally {
          gate.leave()
        }
      })
    }
  }
}
