// Process lifecycle: a live subscription keeps Node running (as a socket does) until it or its
// bus is closed, or it is unref'd; nothing else of polybus does; repeated use does not leak.

import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { test } from 'node:test'
import { fileURLToPath } from 'node:url'

const index = fileURLToPath(new URL('../index.js', import.meta.url))
const NATS = process.env.POLYBUS_TEST_NATS_URL ?? 'nats://127.0.0.1:4222'

/**
 * Runs `script` (ESM, with `connect` imported) in a child `node`; resolves with its exit.
 * With `until`, the child is expected to keep running: once its output matches `until` it is
 * killed (`killed: true` in the result); exiting first resolves as usual. The returned
 * promise has the child as `.child`.
 */
function runChild(script, { args = [], timeoutMs = 20_000, until } = {}) {
  const source = `import { connect } from ${JSON.stringify(index)}\n${script}`
  const child = spawn(process.execPath, [...args, '--input-type=module', '-e', source], { stdio: ['ignore', 'pipe', 'pipe'] })
  const exited = new Promise((resolve, reject) => {
    let output = ''
    let killed = false
    const onData = (d) => {
      output += d
      if (until !== undefined && !killed && until.test(output)) {
        killed = true
        child.kill('SIGKILL')
      }
    }
    child.stdout.on('data', onData)
    child.stderr.on('data', onData)
    const timer = setTimeout(() => {
      child.kill('SIGKILL')
      reject(new Error(`the child did not finish within ${timeoutMs} ms; output:\n${output}`))
    }, timeoutMs)
    child.on('exit', (code, signal) => {
      clearTimeout(timer)
      resolve({ code, signal, output, killed })
    })
  })
  exited.child = child
  return exited
}

test('a script that subscribes and closes its bus exits on its own', async () => {
  const { code, output } = await runChild(`
    const bus = await connect('memory://')
    let n = 0
    await bus.subscribe('a.*', async () => { n++ })
    for (let i = 0; i < 100; i++) await bus.publish('a.b', 'x')
    await bus.close()
    console.log('handled', n)
  `)
  assert.equal(code, 0, output)
  assert.match(output, /handled 100/)
})

test('a consumer-only script stays alive for its subscription until it closes', async () => {
  // The consumer only subscribes; its events come from another process over NATS.
  const topic = `life.p${process.pid}.t${Date.now()}`
  const consumer = runChild(`
    const bus = await connect(${JSON.stringify(NATS)})
    let n = 0
    await bus.subscribe(${JSON.stringify(topic)}, async () => {
      if (++n === 5) {
        await bus.close()
        console.log('handled', n)
      }
    })
    console.log('subscribed')
  `)
  await new Promise((resolve, reject) => {
    let out = ''
    consumer.child.stdout.on('data', (d) => {
      out += d
      if (/subscribed/.test(out)) resolve()
    })
    consumer.then(({ output }) => reject(new Error(`the consumer exited before any event:\n${output}`)), reject)
  })
  // Time to exit, were the subscription not keeping the consumer alive.
  await new Promise((r) => setTimeout(r, 300))
  assert.equal(consumer.child.exitCode, null, 'the consumer is still running')
  const producer = await runChild(`
    const bus = await connect(${JSON.stringify(NATS)})
    for (let i = 0; i < 5; i++) await bus.publish(${JSON.stringify(topic)}, String(i))
    await bus.close()
  `)
  assert.equal(producer.code, 0, producer.output)
  const { code, output } = await consumer
  assert.equal(code, 0, output)
  assert.match(output, /handled 5/)
})

test('a script that publishes to its own subscription and never closes stays alive; unref() lets it exit', async () => {
  // Referenced (the default): every accepted event is handled, and the process keeps running
  // for the subscription, as for a listening socket; the test ends it.
  const kept = await runChild(`
    const bus = await connect('memory://')
    let n = 0
    await bus.subscribe('a.*', () => { if (++n === 10) setTimeout(() => console.log('handled', n), 200) }, { concurrency: 4 })
    for (let i = 0; i < 10; i++) bus.publish('a.b', 'x')
  `, { until: /handled 10/ })
  assert.ok(kept.killed, `the child exited by itself (code ${kept.code}):\n${kept.output}`)
  // unref(): the subscriptions no longer keep the process alive; it exits when the rest of its
  // work is done (events not handled by then are not).
  const { code, output } = await runChild(`
    const bus = await connect('memory://')
    const sub = await bus.subscribe('a.*', () => {}, { concurrency: 4 })
    sub.unref()
    ;(await bus.subscribe('a.*', () => {}, { group: 'g' })).unref().ref().unref()
    await bus.publish('a.b', 'x')
    console.log('done')
  `)
  assert.equal(code, 0, output)
  assert.match(output, /done/)
})

test('closing a subscription, or its bus, lets the process exit', async () => {
  const { code, output } = await runChild(`
    const bus = await connect('memory://')
    const sub = await bus.subscribe('a.*', () => {})
    await bus.subscribe('a.*', () => {})
    await bus.publish('a.b', 'x')
    await sub.close()
    const other = await connect('memory://')
    await other.subscribe('b.*', () => {})
    await other.close()
    await bus.close()
    console.log('done')
  `)
  assert.equal(code, 0, output)
  assert.match(output, /done/)
})

test('a handler that throws does not crash the process', async () => {
  const { code, output } = await runChild(`
    const bus = await connect('memory://')
    await bus.subscribe('a.b', () => { throw new Error('boom') }, { maxAttempts: 2, backoffInitialMs: 1 })
    await bus.subscribe('a.b', async () => { throw new Error('async boom') }, { maxAttempts: 2, backoffInitialMs: 1 })
    await bus.publish('a.b', 'x')
    await bus.close()
    console.log(JSON.stringify(bus.stats()))
  `)
  assert.equal(code, 0, output)
  assert.match(output, /"failed":4,.*"dropped":2/)
})

test('repeated connect, subscribe, publish and close does not leak (--expose-gc)', async () => {
  const { code, output } = await runChild(`
    const round = async () => {
      const bus = await connect('memory://')
      for (let s = 0; s < 4; s++) await bus.subscribe('a.*', (e) => { e.payload; e.headers }, { concurrency: 2 })
      await bus.publishMany(Array.from({ length: 200 }, () => ({ topic: 'a.b', payload: Buffer.alloc(256) })))
      await bus.close()
    }
    const usage = async (rounds) => {
      for (let i = 0; i < rounds; i++) await round()
      for (let i = 0; i < 4; i++) { globalThis.gc(); await new Promise(setImmediate) }
      return process.memoryUsage()
    }
    await usage(100)
    const before = await usage(100)
    const after = await usage(400)
    const grew = (k) => (after[k] - before[k]) / 1024 / 1024
    console.log(JSON.stringify({ heapMiB: grew('heapUsed'), externalMiB: grew('external'), rssMiB: grew('rss') }))
  `, { args: ['--expose-gc'], timeoutMs: 120_000 })
  assert.equal(code, 0, output)
  const growth = JSON.parse(output.trim().split('\n').pop())
  assert.ok(growth.heapMiB < 2, `heap grew by ${growth.heapMiB} MiB`)
  assert.ok(growth.externalMiB < 2, `external memory grew by ${growth.externalMiB} MiB`)
  assert.ok(growth.rssMiB < 32, `RSS grew by ${growth.rssMiB} MiB`)
})
