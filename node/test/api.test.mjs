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

test('un-awaited publishes that wait settle in order, each with its own error', async () => {
  const bus = await connect({ url: 'memory://', publishTimeoutMs: 100 })
  let release
  const gate = new Promise((resolve) => {
    release = resolve
  })
  await bus.subscribe('jobs.run', () => gate, { queueSize: 1, batchSize: 1 })
  const settled = []
  const outcomes = await Promise.all(Array.from({ length: 50 }, (_, i) =>
    bus.publish('jobs.run', String(i)).then(
      () => {
        settled.push(i)
        return null
      },
      (err) => {
        settled.push(i)
        return err
      },
    )))
  assert.deepEqual(settled, Array.from({ length: 50 }, (_, i) => i))
  const errors = outcomes.filter((e) => e !== null)
  assert.ok(errors.length > 0 && errors.length < 50, `${errors.length} timed out`)
  for (const err of errors) assert.equal(err.code, 'POLYBUS_ERR_TIMEOUT', err.message)
  assert.equal(new Set(errors).size, errors.length, 'each promise has its own error')
  release()
  await bus.close()
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
  await other.unsubscribe()
  assert.equal(other.closed, true)
  await bus.close()
  await bus.close()
  assert.equal(bus.closed, true)
  await rejectsWith(bus.publish('a.b', 'x'), 'POLYBUS_ERR_CLOSED')
  await rejectsWith(bus.publishMany([{ topic: 'a.b', payload: 'x' }]), 'POLYBUS_ERR_CLOSED')
  await rejectsWith(bus.publishBatch([{ topic: 'a.b', payload: 'x' }]), 'POLYBUS_ERR_CLOSED')
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

test('a publisher-set time round-trips to the millisecond, as a Date or a number', async () => {
  const bus = await connect('memory://')
  const seen = []
  await bus.subscribe('t.*', (e) => {
    seen.push(e)
  })
  const date = new Date('2024-02-29T23:59:58.123Z')
  await bus.publish('t.date', 'x', { time: date })
  await bus.publish('t.ms', Buffer.from('x'), { time: 1_700_000_000_999, key: 'k' })
  await bus.publish('t.json', { a: 1 }, { time: 0 })
  await bus.publishMany([
    { topic: 't.many', payload: 'a', time: date },
    { topic: 't.many', payload: 'b' },
    { topic: 't.many', payload: { b: 2 }, time: new Date(1) },
  ])
  await bus.close()
  assert.deepEqual(seen.map((e) => e.time.getTime()).slice(0, 3), [date.getTime(), 1_700_000_000_999, 0])
  assert.ok(seen.every((e) => e.time instanceof Date))
  assert.equal(seen[1].key, 'k')
  assert.deepEqual(seen[2].json(), { a: 1 })
  assert.equal(seen[2].headers['content-type'], 'application/json')
  assert.deepEqual(seen.slice(3).map((e) => e.payload.toString()), ['a', 'b', '{"b":2}'])
  assert.equal(seen[3].time.getTime(), date.getTime())
  assert.ok(Math.abs(seen[4].time - Date.now()) < 60_000)
  assert.equal(seen[5].time.getTime(), 1)
  assert.equal(seen[5].headers['content-type'], 'application/json')
})

test('a time before 1970, invalid or of the wrong type is POLYBUS_ERR_INVALID_ARGUMENT', async () => {
  const bus = await connect('memory://')
  for (const time of [-1, new Date(-1), new Date('not a date'), NaN, Infinity, '2024-01-01', 1n, {}]) {
    await assert.rejects(bus.publish('a.b', 'x', { time }), (err) => {
      assert.equal(err.code, 'POLYBUS_ERR_INVALID_ARGUMENT', err.message)
      assert.match(err.message, /time/)
      return true
    })
  }
  await assert.rejects(bus.publishMany([{ topic: 'a.b', payload: 'x' }, { topic: 'a.b', payload: 'y', time: -5 }]),
    (err) => err.code === 'POLYBUS_ERR_INVALID_ARGUMENT' && /event 1 of the batch: time -5 ms is before 1970/.test(err.message))
  await assert.rejects(bus.publishMany([{ topic: 'a.b', payload: 'x', time: 'soon' }]),
    (err) => err.code === 'POLYBUS_ERR_INVALID_ARGUMENT' && /event 0 of the batch: time must be/.test(err.message))
  await bus.close()
  assert.equal(bus.stats().published, 1)
})

test('publishMany crosses the backend\'s waits and repeats topics', async () => {
  const bus = await connect('memory://')
  const got = []
  await bus.subscribe('jobs.>', (e) => {
    got.push(`${e.topic}:${e.payload}:${e.key}`)
  }, { queueSize: 16 })
  const messages = Array.from({ length: 2500 }, (_, i) => ({
    topic: i % 1000 < 500 ? 'jobs.a' : 'jobs.b',
    payload: String(i),
    ...(i % 7 === 0 ? { key: `k${i % 3}` } : {}),
  }))
  await bus.publishMany(messages)
  await assert.rejects(bus.publishMany([...messages.slice(0, 1500), { topic: 'jobs..bad', payload: 'x' }]),
    (err) => err.code === 'POLYBUS_ERR_INVALID_TOPIC' && /event 1500 of the batch/.test(err.message))
  await bus.close()
  const expected = messages.map((m) => `${m.topic}:${m.payload}:${m.key ?? null}`)
  assert.deepEqual(got, [...expected, ...expected.slice(0, 1500)])
})

test('publishBatch resolves with the count; a failure says how many were published', async () => {
  const bus = await connect('memory://')
  const got = []
  await bus.subscribe('jobs.*', (e) => {
    got.push(e.payload.toString())
  }, { queueSize: 4 })
  assert.equal(await bus.publishBatch(Array.from({ length: 20 }, (_, i) => ({ topic: 'jobs.run', payload: String(i) }))), 20)
  assert.equal(await bus.publishBatch([]), 0)
  // A failure the core reports (a bad topic) and one found converting (a bad payload).
  await assert.rejects(bus.publishBatch([{ topic: 'jobs.run', payload: 'a' }, { topic: 'jobs.run', payload: 'b' }, { topic: 'jobs..x', payload: 'c' }]), (err) => {
    assert.equal(err.code, 'POLYBUS_ERR_INVALID_TOPIC')
    assert.equal(err.published, 2)
    assert.match(err.message, /^invalid topic: event 2 of the batch: /)
    return true
  })
  await assert.rejects(bus.publishBatch([{ topic: 'jobs.run', payload: 'd' }, { topic: 'jobs.run', payload: 10n }]), (err) => {
    assert.equal(err.code, 'POLYBUS_ERR_PAYLOAD')
    assert.equal(err.published, 1)
    assert.match(err.message, /^payload error: event 1 of the batch: /)
    return true
  })
  await assert.rejects(bus.publishMany([{ topic: 'jobs.run', payload: 'e' }, null]), (err) => err.published === 1)
  await bus.close()
  assert.deepEqual(got, [...Array.from({ length: 20 }, (_, i) => String(i)), 'a', 'b', 'd', 'e'])
})

test('JSON payloads follow the core\'s rule: content-type unless the publisher set one', async () => {
  const bus = await connect('memory://')
  const seen = []
  await bus.subscribe('j.*', (e) => {
    seen.push(e.headers['content-type'] ?? null)
  })
  await bus.publish('j.a', { a: 1 })
  await bus.publish('j.b', { a: 1 }, { headers: { 'content-type': 'application/vnd.x+json' } })
  await bus.publish('j.c', 'text')
  await bus.publishBatch([{ topic: 'j.d', payload: [1] }, { topic: 'j.e', payload: 2, headers: { 'content-type': 'text/plain' } }, { topic: 'j.f', payload: Buffer.from('x') }])
  await bus.close()
  assert.deepEqual(seen, ['application/json', 'application/vnd.x+json', null, 'application/json', 'text/plain', null])
})

test('error messages are the core\'s text, with the code', async () => {
  const bus = await connect('memory://')
  await assert.rejects(bus.publish('a..b', 'x'), (err) => {
    assert.equal(err.code, 'POLYBUS_ERR_INVALID_TOPIC')
    assert.match(err.message, /^invalid topic: topic "a\.\.b": empty token/)
    return true
  })
  await assert.rejects(bus.subscribe('a.b', 7), { code: 'POLYBUS_ERR_INVALID_ARGUMENT', message: /^invalid argument: handler must be a function/ })
  await assert.rejects(bus.publish('a.b', 'x', { time: -1 }), { code: 'POLYBUS_ERR_INVALID_ARGUMENT', message: /^invalid argument: time -1 ms is before 1970/ })
  await assert.rejects(bus.publish('a.b', () => {}), { code: 'POLYBUS_ERR_PAYLOAD', message: /^payload error: / })
  await assert.rejects(connect('nope://x'), { code: 'POLYBUS_ERR_INVALID_CONFIG', message: /^invalid config: / })
  await bus.close()
  await assert.rejects(bus.publish('a.b', 'x'), { code: 'POLYBUS_ERR_CLOSED', message: /^closed: bus is closed$/ })
})

test('unsubscribe is close: it resolves once queued events are handled', async () => {
  const bus = await connect('memory://')
  let handled = 0
  const sub = await bus.subscribe('a.b', async () => {
    await new Promise((r) => setTimeout(r, 2))
    handled++
  })
  for (let i = 0; i < 10; i++) bus.publish('a.b', 'x')
  await bus.publish('a.b', 'x')
  await sub.unsubscribe()
  assert.equal(handled, 11)
  assert.equal(sub.closed, true)
  await bus.publish('a.b', 'late')
  await bus.close()
  assert.equal(handled, 11)
})

/** `promise`, or a rejection after a deadline far beyond any close timeout met by accident. */
function promptly(promise, what, ms = 20_000) {
  let timer
  const late = new Promise((_, reject) => { timer = setTimeout(() => reject(new Error(`${what} did not return`)), ms) })
  return Promise.race([promise, late]).finally(() => clearTimeout(timer))
}

for (const when of ['synchronously', 'after an await']) {
  test(`close and unsubscribe from inside their own handler return without waiting (${when})`, async () => {
    // A close that waited for itself would wait out closeTimeoutMs (an hour).
    const bus = await connect({ url: 'memory://', closeTimeoutMs: 3_600_000 })
    for (const method of ['close', 'unsubscribe']) {
      let calls = 0
      let returned
      const sub = await bus.subscribe(`s.${method}`, async () => {
        calls++
        if (when !== 'synchronously') await new Promise(setImmediate)
        if (calls === 1) returned = promptly(sub[method](), `${method} from a handler`)
      })
      await bus.publish(`s.${method}`, 'first')
      await eventually(() => returned !== undefined, 'the handler')
      await returned
      assert.equal(sub.closed, true)
      await bus.publish(`s.${method}`, 'later')
      await promptly(sub.close(), 'close after the drain')
      assert.equal(calls, 1, `${method}: later events are not delivered`)
    }
    // bus.close() from inside a handler of that bus.
    let calls = 0
    let returned
    await bus.subscribe('s.bus', async () => {
      calls++
      if (when !== 'synchronously') await new Promise(setImmediate)
      returned = promptly(bus.close(), 'bus.close from a handler')
    })
    await bus.publish('s.bus', 'first')
    await eventually(() => returned !== undefined, 'the handler')
    await returned
    assert.equal(bus.closed, true)
    await rejectsWith(bus.publish('s.bus', 'later'), 'POLYBUS_ERR_CLOSED')
    await promptly(bus.close(), 'bus.close after the drain')
    assert.equal(calls, 1)
  })
}
