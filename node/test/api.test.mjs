// The public API on the memory backend: round trips, handler results as acks, errors and codes.

import assert from 'node:assert/strict'
import { test } from 'node:test'

import { connect } from '../index.js'

/** Resolves once `predicate()` holds, checking after each handler call; rejects after `ms`. */
function eventually(predicate, what, ms = 5000) {
  return new Promise((resolve, reject) => {
    const deadline = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), ms)
    const check = () => {
      if (!predicate()) return setImmediate(check)
      clearTimeout(deadline)
      resolve()
    }
    check()
  })
}

const rejectsWith = (promise, code) => assert.rejects(promise, (err) => {
  assert.equal(err.code, code, err.message)
  return true
})

test('round trip: payload, metadata and json()', async () => {
  const bus = await connect({ url: 'memory://', name: 'billing', prefix: 'app' })
  const seen = []
  await bus.subscribe('orders.>', (e) => {
    seen.push(e)
  })
  await bus.publish('orders.created', Buffer.from([0, 1, 2]), { key: 'k1', headers: { tenant: 'acme' }, id: 'e-1', type: 'order.created' })
  await bus.publish('orders.text', 'héllo')
  await bus.publish('orders.json', { order: 42, items: ['a'] })
  await bus.publish('orders.view', new Uint16Array([1]))
  await bus.close()
  assert.equal(seen.length, 4)
  const [bin, text, json, view] = seen
  assert.deepEqual(bin.payload, Buffer.from([0, 1, 2]))
  assert.equal(bin.topic, 'orders.created')
  assert.equal(bin.key, 'k1')
  assert.deepEqual(bin.headers, { tenant: 'acme' })
  assert.equal(bin.id, 'e-1')
  assert.equal(bin.type, 'order.created')
  assert.equal(bin.source, 'billing')
  assert.equal(bin.attempt, 1)
  assert.ok(bin.time instanceof Date && Math.abs(bin.time - Date.now()) < 60_000)
  assert.equal(text.payload.toString(), 'héllo')
  assert.equal(text.key, null)
  assert.equal(text.type, 'orders.text')
  assert.match(text.id, /^[0-9a-f-]{36}$/)
  assert.deepEqual(json.json(), { order: 42, items: ['a'] })
  assert.equal(json.headers['content-type'], 'application/json')
  assert.equal(view.payload.length, 2)
  assert.throws(() => text.json(), { code: 'POLYBUS_ERR_PAYLOAD' })
  assert.deepEqual(bin.toJSON().headers, { tenant: 'acme' })
})

test('publishMany publishes in order and names the failing event', async () => {
  const bus = await connect('memory://')
  const got = []
  await bus.subscribe('jobs.*', (e) => {
    got.push(e.payload.toString())
  }, { queueSize: 2 })
  const messages = Array.from({ length: 50 }, (_, i) => ({ topic: 'jobs.run', payload: String(i) }))
  await bus.publishMany(messages)
  await assert.rejects(bus.publishMany([{ topic: 'jobs.run', payload: 'x' }, { topic: 'jobs..bad', payload: 'y' }]),
    (err) => err.code === 'POLYBUS_ERR_INVALID_TOPIC' && /event 1 of the batch/.test(err.message))
  await bus.close()
  assert.deepEqual(got, [...messages.map((m) => m.payload), 'x'])
})

test('un-awaited publishes keep their order under backpressure', async () => {
  const bus = await connect('memory://')
  const got = []
  await bus.subscribe('jobs.run', async (e) => {
    await new Promise(setImmediate)
    got.push(Number(e.payload.toString()))
  }, { queueSize: 1, batchSize: 1 })
  await Promise.all(Array.from({ length: 100 }, (_, i) => bus.publish('jobs.run', String(i))))
  await bus.close()
  assert.deepEqual(got, Array.from({ length: 100 }, (_, i) => i))
})

test('promise handlers are awaited in order; concurrency runs lanes at once', async () => {
  const bus = await connect('memory://')
  let inFlight = 0
  let peak = 0
  const order = []
  await bus.subscribe('jobs.run', async (e) => {
    peak = Math.max(peak, ++inFlight)
    await new Promise((r) => setTimeout(r, 5))
    order.push(e.payload.toString())
    inFlight--
  }, { concurrency: 3 })
  for (let i = 0; i < 9; i++) await bus.publish('jobs.run', `${i}`, { key: `k${i % 3}` })
  await bus.close()
  assert.equal(order.length, 9)
  assert.ok(peak >= 2 && peak <= 3, `peak ${peak}`)
  for (const k of [0, 1, 2]) {
    const mine = order.filter((p) => Number(p) % 3 === k)
    assert.deepEqual(mine, [...mine].sort((a, b) => a - b))
  }
})

test('a rejection and a synchronous throw are nacks, retried by the core', async () => {
  const bus = await connect('memory://')
  const attempts = { reject: [], throw: [] }
  const retry = { maxAttempts: 3, backoffInitialMs: 1, backoffMaxMs: 2 }
  await bus.subscribe('a.reject', async (e) => {
    attempts.reject.push(e.attempt)
    if (e.attempt < 3) throw new Error('not yet')
  }, retry)
  await bus.subscribe('a.throw', (e) => {
    attempts.throw.push(e.attempt)
    if (e.attempt < 2) throw new Error('boom')
  }, retry)
  await bus.publish('a.reject', 'x')
  await bus.publish('a.throw', 'y')
  await eventually(() => attempts.reject.length === 3 && attempts.throw.length === 2, 'the retries')
  await bus.close()
  assert.deepEqual(attempts, { reject: [1, 2, 3], throw: [1, 2] })
  assert.deepEqual(bus.stats(), { published: 2, delivered: 5, acked: 2, failed: 3, retried: 3, deadLettered: 0, dropped: 0 })
})

test('a failed event is dead-lettered with its reason; nothing crashes', async () => {
  const bus = await connect('memory://')
  const dead = []
  await bus.subscribe('orders.dead', (e) => {
    dead.push(e)
  })
  await bus.subscribe('orders.created', () => {
    throw new TypeError('bad order')
  }, { maxAttempts: 1, deadLetter: 'orders.dead' })
  await bus.subscribe('orders.created', () => Promise.reject('plain string'), { maxAttempts: 1, deadLetter: 'orders.dead' })
  await bus.publish('orders.created', 'p')
  await eventually(() => dead.length === 2, 'two dead letters')
  await bus.close()
  const reasons = dead.map((e) => e.headers['polybus-dead-letter-reason']).sort()
  assert.deepEqual(reasons, ['TypeError: bad order', 'plain string'])
})

test('bad input fails with the right codes', async () => {
  await rejectsWith(connect('nope://x'), 'POLYBUS_ERR_INVALID_CONFIG')
  await rejectsWith(connect({ url: 'memory://', colour: 'blue' }), 'POLYBUS_ERR_INVALID_CONFIG')
  await rejectsWith(connect(42), 'POLYBUS_ERR_INVALID_CONFIG')
  const bus = await connect({ url: 'memory://', max_payload: 8 })
  await rejectsWith(bus.publish('a..b', 'x'), 'POLYBUS_ERR_INVALID_TOPIC')
  await rejectsWith(bus.publish('a.b', 'too long for eight'), 'POLYBUS_ERR_TOO_LARGE')
  await rejectsWith(bus.publish('a.b', () => {}), 'POLYBUS_ERR_PAYLOAD')
  await rejectsWith(bus.publish('a.b', 10n), 'POLYBUS_ERR_PAYLOAD')
  await rejectsWith(bus.publish('a.b', undefined), 'POLYBUS_ERR_PAYLOAD')
  await rejectsWith(bus.publish(42, 'x'), 'POLYBUS_ERR_INVALID_ARGUMENT')
  await rejectsWith(bus.publish('a.b', 'x', { key: 7 }), 'POLYBUS_ERR_INVALID_ARGUMENT')
  await rejectsWith(bus.publish('a.b', 'x', { headers: { 'bad name': 'v' } }), 'POLYBUS_ERR_INVALID_ARGUMENT')
  await rejectsWith(bus.publishMany([null]), 'POLYBUS_ERR_INVALID_ARGUMENT')
  await rejectsWith(bus.subscribe('a.>.b', () => {}), 'POLYBUS_ERR_INVALID_PATTERN')
  await rejectsWith(bus.subscribe(7, () => {}), 'POLYBUS_ERR_INVALID_ARGUMENT')
  await rejectsWith(bus.subscribe('a.b', 'not a function'), 'POLYBUS_ERR_INVALID_ARGUMENT')
  await rejectsWith(bus.subscribe('a.b', () => {}, { concurency: 2 }), 'POLYBUS_ERR_INVALID_ARGUMENT')
  await rejectsWith(bus.subscribe('a.b', () => {}, { concurrency: -1 }), 'POLYBUS_ERR_INVALID_ARGUMENT')
  await rejectsWith(bus.subscribe('a.b', () => {}, { start: 'earliest' }), 'POLYBUS_ERR_UNSUPPORTED')
  await rejectsWith(bus.subscribe('a.b', () => {}, { deadLetter: 'a..b' }), 'POLYBUS_ERR_INVALID_TOPIC')
  await bus.close()
  assert.equal(bus.stats().published, 0)
})

test('closed handles fail with POLYBUS_ERR_CLOSED; close is idempotent', async () => {
  const bus = await connect('memory://')
  const sub = await bus.subscribe('a.b', () => {})
  assert.equal(sub.pattern, 'a.b')
  await sub.close()
  await sub.close()
  assert.equal(sub.closed, true)
  const other = await bus.subscribe('a.b', () => {})
  other.unsubscribe()
  assert.equal(other.closed, true)
  await bus.close()
  await bus.close()
  assert.equal(bus.closed, true)
  await rejectsWith(bus.publish('a.b', 'x'), 'POLYBUS_ERR_CLOSED')
  await rejectsWith(bus.publishMany([{ topic: 'a.b', payload: 'x' }]), 'POLYBUS_ERR_CLOSED')
  await rejectsWith(bus.subscribe('a.b', () => {}), 'POLYBUS_ERR_CLOSED')
})

test('close drains queued events through slow handlers', async () => {
  const bus = await connect('memory://')
  let handled = 0
  await bus.subscribe('a.b', async () => {
    await new Promise((r) => setTimeout(r, 1))
    handled++
  })
  for (let i = 0; i < 30; i++) await bus.publish('a.b', 'x')
  await bus.close()
  assert.equal(handled, 30)
})
