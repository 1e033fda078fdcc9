// A NATS server that dies and comes back, seen from Node: the bus reports `'disconnected'`
// through `connectionState` and `onConnectionStateChange`, then `'connected'` again, and the
// subscriptions made before the kill receive what is published after it (nats:// and
// jetstream://); on JetStream the events accepted before the kill, some still in a blocked
// handler, are not lost (they may be handled twice).
//
// The test starts its own `nats-server` (with JetStream, file storage in a temporary directory)
// on a free loopback port and kills it with SIGKILL, so it never touches the shared brokers of
// tests/harness/brokers.sh. It needs `nats-server` on PATH (`bash tests/harness/setup.sh`
// installs it; POLYBUS_TEST_NATS_SERVER names another binary); a missing binary fails it.
// POLYBUS_TEST_BACKENDS without `nats` leaves it out; POLYBUS_TEST_TIMEOUT_SCALE stretches the
// deadlines.

import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { createConnection, createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, test } from 'node:test'

import { connect } from '../index.js'

const natsServer = process.env.POLYBUS_TEST_NATS_SERVER ?? 'nats-server'
const scale = Number(process.env.POLYBUS_TEST_TIMEOUT_SCALE ?? 1)
/** The deadline of each awaited condition: generous, a loaded 2-core runner reconnects slowly. */
const timeoutMs = 60_000 * scale

const chosen = process.env.POLYBUS_TEST_BACKENDS?.split(',').map((b) => b.trim())
const skip = chosen !== undefined && !chosen.includes('nats') && 'POLYBUS_TEST_BACKENDS leaves out nats'

/** Resolves with the value `check` returns once it is truthy; rejects after `timeoutMs`. */
async function eventually (check, what) {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const value = await check()
    if (value) return value
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
}

/** A loopback port nothing listens on right now. */
async function freePort () {
  const server = createServer()
  await new Promise((resolve, reject) => {
    server.once('error', reject)
    server.listen(0, '127.0.0.1', resolve)
  })
  const { port } = server.address()
  await new Promise((resolve) => server.close(resolve))
  return port
}

/** Whether something accepts TCP connections on the loopback `port`. */
function accepts (port) {
  return new Promise((resolve) => {
    const socket = createConnection({ host: '127.0.0.1', port })
    socket.once('connect', () => { socket.destroy(); resolve(true) })
    socket.once('error', () => { socket.destroy(); resolve(false) })
  })
}

/**
 * A private `nats-server` with JetStream on a fixed port and storage directory: `start()` runs
 * it (and waits until it accepts connections), `kill()` ends it with SIGKILL (and waits until
 * it exited), `start()` again brings it back on the same port with the same storage.
 */
class NatsServer {
  constructor (port, storeDir) {
    this.port = port
    this.storeDir = storeDir
    this.child = null
    this.output = ''
    this.starts = 0
  }

  async start () {
    assert.equal(this.child, null, 'the server is not running')
    this.starts++
    const child = spawn(natsServer, ['-a', '127.0.0.1', '-p', String(this.port), '-js', '-sd', this.storeDir],
      { stdio: ['ignore', 'pipe', 'pipe'] })
    this.child = child
    child.exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })))
    const onData = (d) => { this.output += d }
    child.stdout.on('data', onData)
    child.stderr.on('data', onData)
    const failed = new Promise((resolve, reject) => {
      child.once('error', (e) => reject(new Error(`cannot run ${natsServer}: ${e.message}`)))
      child.exited.then(({ code, signal }) =>
        reject(new Error(`${natsServer} exited (code ${code}, signal ${signal}):\n${this.output}`)))
    })
    failed.catch(() => {}) // only raced below
    await Promise.race([failed, eventually(() => accepts(this.port), `nats-server (start ${this.starts}) on port ${this.port}`)])
  }

  async kill () {
    const child = this.child
    if (child === null) return
    this.child = null
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
    await child.exited
  }
}

const server = new NatsServer(await freePort(), mkdtempSync(join(tmpdir(), 'polybus-node-restart-')))

after(async () => {
  await server.kill()
  rmSync(server.storeDir, { recursive: true, force: true })
})

/** Records the states `bus` reports through its change callback. */
function watchStates (bus) {
  const states = []
  bus.onConnectionStateChange((state) => { states.push(state) })
  return states
}

test('after a NATS server is killed and restarted, nats:// and jetstream:// buses report it, resume their subscriptions and lose no JetStream event',
  { skip, timeout: 8 * timeoutMs }, async (t) => {
    await server.start()
    const port = server.port
    const prefix = `noderestart${process.pid}`
    const nats = await connect({ url: `nats://127.0.0.1:${port}`, prefix, name: 'node-restart-nats' })
    // ackWaitMs at its least: events whose acknowledgement the kill lost come back soon.
    const js = await connect({ url: `jetstream://127.0.0.1:${port}`, prefix, name: 'node-restart-js', jetstream: { ackWaitMs: 1000 } })
    const natsStates = watchStates(nats)
    const jsStates = watchStates(js)
    let release = () => {}
    try {
      assert.equal(nats.connectionState, 'connected')
      assert.equal(js.connectionState, 'connected')

      // nats://: a broadcast subscription (at most once).
      const natsSeen = []
      await nats.subscribe('core.*', (e) => { natsSeen.push(e.payload.toString()) })
      await nats.publish('core.before', 'before')
      await eventually(() => natsSeen.includes('before'), 'the nats:// event published before the kill')

      // jetstream://: a broadcast subscription and a group; both handlers block until `release`.
      const gate = new Promise((resolve) => { release = resolve })
      const handled = { broadcast: new Set(), group: new Set() }
      const calls = { broadcast: 0, group: 0 }
      const handler = (which) => async (e) => {
        calls[which]++
        await gate
        handled[which].add(e.payload.toString())
      }
      await js.subscribe('jobs.*', handler('broadcast'))
      await js.subscribe('jobs.*', handler('group'), { group: 'workers' })
      const before = Array.from({ length: 5 }, (_, i) => `before-${i}`)
      for (const payload of before) await js.publish('jobs.run', payload)
      await eventually(() => calls.broadcast > 0 && calls.group > 0, 'the first JetStream event in both blocked handlers')
      assert.equal(handled.broadcast.size + handled.group.size, 0, 'the handlers are blocked')

      await server.kill()
      await eventually(() => nats.connectionState === 'disconnected', "nats:// connectionState 'disconnected'")
      await eventually(() => js.connectionState === 'disconnected', "jetstream:// connectionState 'disconnected'")
      await eventually(() => natsStates.includes('disconnected'), "nats:// callback with 'disconnected'")
      await eventually(() => jsStates.includes('disconnected'), "jetstream:// callback with 'disconnected'")
      // The handlers finish while the server is down: their acknowledgements cannot reach it.
      release()

      await server.start()
      await eventually(() => nats.connectionState === 'connected', "nats:// connectionState 'connected' again")
      await eventually(() => js.connectionState === 'connected', "jetstream:// connectionState 'connected' again")
      await eventually(() => natsStates.at(-1) === 'connected', "nats:// callback with 'connected' again")
      await eventually(() => jsStates.at(-1) === 'connected', "jetstream:// callback with 'connected' again")

      // nats:// is at most once: an event published right after the reconnect may race the
      // resubscription, so publish until the existing subscription gets one.
      let n = 0
      await eventually(async () => {
        if (natsSeen.some((p) => p.startsWith('after-'))) return true
        await nats.publish('core.after', `after-${n++}`)
        await new Promise((resolve) => setTimeout(resolve, 100))
        return natsSeen.some((p) => p.startsWith('after-'))
      }, 'a nats:// event published after the restart')

      // jetstream:// is at least once: one publish after the restart is enough, and every
      // event accepted before the kill is handled (perhaps twice), by both subscriptions.
      await js.publish('jobs.run', 'after')
      const expected = [...before, 'after']
      for (const which of ['broadcast', 'group']) {
        await eventually(() => expected.every((p) => handled[which].has(p)),
          `every JetStream event in the ${which} subscription`)
          .catch((e) => {
            const missing = expected.filter((p) => !handled[which].has(p))
            throw new Error(`${e.message}: missing ${JSON.stringify(missing)} after ${calls[which]} handler calls`)
          })
      }
      t.diagnostic(`nats:// publishes after the restart until one arrived: ${n}; JetStream handler calls for ${expected.length} events: broadcast ${calls.broadcast}, group ${calls.group}`)
      assert.deepEqual([...handled.broadcast].sort(), [...expected].sort())
      assert.deepEqual([...handled.group].sort(), [...expected].sort())
    } finally {
      release() // when the test failed before it did: close() would wait for the handlers
      await nats.close()
      await js.close()
    }
    assert.equal(nats.connectionState, 'closed')
    assert.equal(js.connectionState, 'closed')
    // Every change in order, the last being 'closed': down, up again, closed.
    await eventually(() => natsStates.at(-1) === 'closed' && jsStates.at(-1) === 'closed', "the callbacks with 'closed'")
    t.diagnostic(`states seen: nats:// ${natsStates.join(' ')}; jetstream:// ${jsStates.join(' ')}`)
    for (const states of [natsStates, jsStates]) {
      const down = states.indexOf('disconnected')
      const up = states.lastIndexOf('connected')
      assert.ok(down >= 0 && up > down && states.indexOf('closed') === states.length - 1, JSON.stringify(states))
    }
  })
