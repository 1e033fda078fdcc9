// AbortSignal: a call that can wait (connect, publish, publishBatch, close) gives up when its
// signal aborts, rejecting with POLYBUS_ERR_CANCELLED, or POLYBUS_ERR_TIMEOUT when the signal's
// deadline passed (AbortSignal.timeout); whether it fails and what it leaves behind is the
// core's rule, also for a signal that aborted before the call.

import assert from 'node:assert/strict'
import { getEventListeners } from 'node:events'
import net from 'node:net'
import { test } from 'node:test'

import { connect } from '../index.js'

const scale = Number(process.env.POLYBUS_TEST_TIMEOUT_SCALE ?? 1)

/** Resolves once `predicate()` holds, checking on every turn of the event loop; rejects after `ms`. */
function eventually(predicate, what, ms = 5000 * scale) {
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

/** Checks that `err` is the library's cancellation error, caused by `signal`. */
function isCancelled(err, signal, message = /^cancelled: /) {
  assert.equal(err.code, 'POLYBUS_ERR_CANCELLED', err.message)
  assert.ok(err instanceof Error)
  assert.equal(err.name, 'Error')
  assert.match(err.message, message)
  assert.equal(err.cause, signal.reason)
  return true
}

/** Checks that `err` is the core's error of a passed deadline, the `TimeoutError` of `signal` its cause. */
function isTimedOut(err, signal, message = /^timed out: .*: the caller's deadline passed/) {
  assert.equal(err.code, 'POLYBUS_ERR_TIMEOUT', err.message)
  assert.ok(err instanceof Error)
  assert.equal(err.name, 'Error')
  assert.match(err.message, message)
  assert.equal(err.cause, signal.reason)
  assert.equal(err.cause.name, 'TimeoutError')
  return true
}

/** A handler that blocks until `release()`; `started` resolves once it has begun. */
function gate() {
  let release
  let begun
  const open = new Promise((resolve) => {
    release = resolve
  })
  const started = new Promise((resolve) => {
    begun = resolve
  })
  const handler = async () => {
    begun()
    await open
  }
  return { handler, started, release: () => release() }
}

/**
 * A bus whose subscriber on `jobs.run` is blocked (queueSize 1, concurrency 1) and whose queue
 * is full, so that the next publish waits. It fills the queue by publishing with a 50 ms
 * deadline until a publish is still waiting then (with room in the queue a publish settles at
 * once, so the deadline only ends a publish that waits).
 */
async function blockedBus() {
  const bus = await connect('memory://')
  const { handler, release } = gate()
  await bus.subscribe('jobs.run', handler, { queueSize: 1, concurrency: 1, batchSize: 1 })
  for (let i = 0; ; i++) {
    const signal = AbortSignal.timeout(50)
    try {
      await bus.publish('jobs.run', `fill ${i}`, { signal })
    } catch (err) {
      // The deadline of AbortSignal.timeout is the caller's deadline: the core's timeout.
      isTimedOut(err, signal, /^timed out: publish: the caller's deadline passed; the event may still be published$/)
      break
    }
    assert.ok(i < 100, 'the queue never filled')
  }
  return { bus, release }
}

test('publish: an abort while it waits for a full queue rejects with CANCELLED', async () => {
  const { bus, release } = await blockedBus()
  const controller = new AbortController()
  const { signal } = controller
  const publishing = bus.publish('jobs.run', 'waits', { signal, key: 'k' })
  assert.equal(getEventListeners(signal, 'abort').length, 1)
  controller.abort()
  await assert.rejects(publishing, (err) => isCancelled(err, signal))
  assert.equal(getEventListeners(signal, 'abort').length, 0, 'the listener is removed once settled')
  release()
  await bus.close()
})

test('publishBatch (and publishMany): an abort stops the batch; published says how far it got', async () => {
  const { bus, release } = await blockedBus()
  const messages = Array.from({ length: 10 }, (_, i) => ({ topic: 'jobs.run', payload: `b${i}` }))
  for (const method of ['publishBatch', 'publishMany']) {
    const controller = new AbortController()
    const publishing = bus[method](messages, { signal: controller.signal })
    controller.abort()
    await assert.rejects(publishing, (err) => {
      isCancelled(err, controller.signal)
      assert.equal(typeof err.published, 'number')
      assert.ok(err.published < messages.length, `published ${err.published}`)
      return true
    })
    assert.equal(getEventListeners(controller.signal, 'abort').length, 0)
  }
  release()
  await bus.close()
})

test('close: an abort while a handler is blocked rejects with CANCELLED; the bus is closed and drains', async () => {
  const bus = await connect('memory://')
  const { handler, started, release } = gate()
  await bus.subscribe('jobs.run', handler)
  await bus.publish('jobs.run', 'x')
  await started
  const controller = new AbortController()
  const closing = bus.close({ signal: controller.signal })
  await eventually(() => bus.closed, 'the bus to be closed')
  controller.abort()
  await assert.rejects(closing, (err) => isCancelled(err, controller.signal, /^cancelled: close/))
  await assert.rejects(bus.publish('jobs.run', 'y'), { code: 'POLYBUS_ERR_CLOSED' })
  release()
  await bus.close()
  await eventually(() => bus.stats().acked === 1, 'the blocked event to be acked')
  assert.deepEqual(bus.stats(), { published: 1, delivered: 1, acked: 1, failed: 0, retried: 0, deadLettered: 0, dropped: 0 })
})

test('subscription.close and unsubscribe: an abort rejects with CANCELLED; the drain goes on', async () => {
  const bus = await connect('memory://')
  for (const method of ['close', 'unsubscribe']) {
    const { handler, started, release } = gate()
    const sub = await bus.subscribe(`jobs.${method}`, handler)
    await bus.publish(`jobs.${method}`, 'x')
    await started
    const controller = new AbortController()
    const closing = sub[method]({ signal: controller.signal })
    await eventually(() => sub.closed, 'the subscription to be closed')
    controller.abort()
    await assert.rejects(closing, (err) => isCancelled(err, controller.signal, /^cancelled: close/))
    release()
    await sub.close()
  }
  await eventually(() => bus.stats().acked === 2, 'the blocked events to be acked')
  await bus.close()
})

test('connect: an abort while the server is silent rejects with CANCELLED and leaves nothing open', async () => {
  const sockets = []
  let accepted
  const connection = new Promise((resolve) => {
    accepted = resolve
  })
  // Accepts and never writes: a NATS client waits for the server's INFO.
  const server = net.createServer((socket) => {
    sockets.push(socket)
    accepted(socket)
  })
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  try {
    const controller = new AbortController()
    const url = `nats://127.0.0.1:${server.address().port}`
    const connecting = connect({ url, connectTimeoutMs: 60_000 }, { signal: controller.signal })
    const socket = await connection
    const closed = new Promise((resolve) => socket.once('close', resolve))
    socket.resume()
    controller.abort()
    await assert.rejects(connecting, (err) => isCancelled(err, controller.signal, /^cancelled: connect$/))
    assert.equal(getEventListeners(controller.signal, 'abort').length, 0)
    await closed // the client let go of its connection
  } finally {
    for (const s of sockets) s.destroy()
    await new Promise((resolve) => server.close(resolve))
  }
})

test('a deadline while a publishBatch or a close waits rejects with TIMEOUT; the close closes anyway', async () => {
  const { bus, release } = await blockedBus()
  const signal = AbortSignal.timeout(50)
  const messages = Array.from({ length: 10 }, (_, i) => ({ topic: 'jobs.run', payload: `b${i}` }))
  await assert.rejects(bus.publishBatch(messages, { signal }), (err) => {
    isTimedOut(err, signal, /^timed out: event \d+ of the batch: publish: the caller's deadline passed/)
    assert.ok(err.published < messages.length, `published ${err.published}`)
    return true
  })
  const closing = AbortSignal.timeout(50)
  await assert.rejects(bus.close({ signal: closing }), (err) => isTimedOut(err, closing, /^timed out: close: the caller's deadline passed; the bus is closed/))
  assert.equal(bus.closed, true)
  release()
  await bus.close()
})

test('an aborted signal fires before the call starts: the core fails it (or not) by its own rule', async () => {
  const signal = AbortSignal.abort(new Error('stop'))
  // Connecting checks the cancel first: a config that would fail is not even read.
  await assert.rejects(connect('nosuch://', { signal }), (err) => isCancelled(err, signal, /^cancelled: connect$/))
  const bus = await connect('memory://')
  const got = []
  const sub = await bus.subscribe('jobs.run', (e) => { got.push(e.payload.toString()) })
  await assert.rejects(bus.publish('jobs.run', 'x', { signal }), (err) => isCancelled(err, signal, /^cancelled: publish$/))
  await assert.rejects(bus.publish('jobs.run', 'x', { signal, key: 'k' }), (err) => isCancelled(err, signal))
  await assert.rejects(bus.publishBatch([{ topic: 'jobs.run', payload: 'x' }], { signal }), (err) => {
    isCancelled(err, signal, /^cancelled: event 0 of the batch: publish$/)
    assert.equal(err.published, 0)
    return true
  })
  assert.equal(bus.stats().published, 0)
  // A close is made anyway and reports the cancel: the subscription (the bus) is closed.
  await assert.rejects(sub.close({ signal }), (err) =>
    isCancelled(err, signal, /^cancelled: close; the subscription is closed and its drain goes on in the background$/))
  assert.equal(sub.closed, true)
  await assert.rejects(bus.close({ signal }), (err) =>
    isCancelled(err, signal, /^cancelled: close; the bus is closed and its drain goes on in the background$/))
  assert.equal(bus.closed, true)
  // On a closed bus the core reports the closed bus first.
  await assert.rejects(bus.publish('jobs.run', 'x', { signal }), { code: 'POLYBUS_ERR_CLOSED' })
  await assert.rejects(bus.publishBatch([{ topic: 'jobs.run', payload: 'x' }], { signal }), { code: 'POLYBUS_ERR_CLOSED' })
  assert.deepEqual(getEventListeners(signal, 'abort'), [])
  assert.deepEqual(got, [])
})

test('a signal whose deadline has passed fails the call with TIMEOUT, the TimeoutError as cause', async () => {
  const signal = AbortSignal.timeout(1)
  // The timer of AbortSignal.timeout does not keep the process alive, and nothing else is open
  // yet: a timer of the test's own does, until the signal fired.
  const alive = setInterval(() => {}, 1000)
  await new Promise((resolve) => signal.addEventListener('abort', resolve, { once: true }))
  clearInterval(alive)
  await assert.rejects(connect('nosuch://', { signal }), (err) => isTimedOut(err, signal, /^timed out: connect: the caller's deadline passed$/))
  const bus = await connect('memory://')
  const sub = await bus.subscribe('jobs.run', () => {})
  await assert.rejects(bus.publish('jobs.run', 'x', { signal }), (err) => isTimedOut(err, signal, /^timed out: publish: the caller's deadline passed$/))
  await assert.rejects(bus.publishBatch([{ topic: 'jobs.run', payload: 'x' }], { signal }), (err) => {
    isTimedOut(err, signal)
    assert.equal(err.published, 0)
    return true
  })
  await assert.rejects(sub.close({ signal }), (err) => isTimedOut(err, signal, /^timed out: close: the caller's deadline passed; the subscription is closed/))
  assert.equal(sub.closed, true)
  await assert.rejects(bus.close({ signal }), (err) => isTimedOut(err, signal))
  assert.equal(bus.closed, true)
  assert.equal(bus.stats().published, 0)
  // Only a TimeoutError is a deadline: another reason is a cancel, whatever its name says.
  const other = AbortSignal.abort(Object.assign(new Error('late'), { name: 'TimeoutError' }))
  await assert.rejects(connect('memory://', { signal: other }), (err) => isCancelled(err, other))
})

test('a signal that does not abort changes nothing; its listener is removed', async () => {
  const controller = new AbortController()
  const { signal } = controller
  const bus = await connect('memory://', { signal })
  const got = []
  const sub = await bus.subscribe('jobs.run', async (e) => {
    await new Promise(setImmediate)
    got.push(e.payload.toString())
  }, { queueSize: 1, batchSize: 1 })
  // Many publishes wait for the queue; all are accepted, in order.
  const publishing = Array.from({ length: 20 }, (_, i) => bus.publish('jobs.run', String(i), { signal }))
  await Promise.all(publishing)
  assert.equal(await bus.publishBatch([{ topic: 'jobs.run', payload: '20' }], { signal }), 1)
  await sub.close({ signal })
  await bus.close({ signal })
  assert.deepEqual(got, Array.from({ length: 21 }, (_, i) => String(i)))
  assert.equal(getEventListeners(signal, 'abort').length, 0)
})

test('a signal that is not an AbortSignal is POLYBUS_ERR_INVALID_ARGUMENT', async () => {
  const bus = await connect('memory://')
  for (const signal of [{}, 'abort', 1]) {
    await assert.rejects(bus.publish('jobs.run', 'x', { signal }), { code: 'POLYBUS_ERR_INVALID_ARGUMENT' })
    await assert.rejects(bus.publishBatch([], { signal }), { code: 'POLYBUS_ERR_INVALID_ARGUMENT' })
    await assert.rejects(connect('memory://', { signal }), { code: 'POLYBUS_ERR_INVALID_ARGUMENT' })
  }
  await bus.close()
})
