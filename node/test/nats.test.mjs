// The NATS backends from Node: connection state and its change notification, credentials,
// unreachable servers and the `nats` / `jetstream` config sections.
//
// These tests need the brokers of tests/harness/brokers.sh (`bash tests/harness/setup.sh`); a
// missing broker fails them. POLYBUS_TEST_NATS_URL, POLYBUS_TEST_JETSTREAM_URL and
// POLYBUS_TEST_NATS_AUTH_URL point them elsewhere; POLYBUS_TEST_BACKENDS without `nats` leaves
// them out.

import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import { test } from 'node:test'
import { fileURLToPath } from 'node:url'

import { connect } from '../index.js'

const natsUrl = process.env.POLYBUS_TEST_NATS_URL ?? 'nats://127.0.0.1:4222'
const jetstreamUrl = process.env.POLYBUS_TEST_JETSTREAM_URL ?? 'jetstream://127.0.0.1:4222'
const authUrl = process.env.POLYBUS_TEST_NATS_AUTH_URL ?? 'nats://127.0.0.1:4223'
const timeoutMs = 10_000 * Number(process.env.POLYBUS_TEST_TIMEOUT_SCALE ?? 1)

const chosen = process.env.POLYBUS_TEST_BACKENDS?.split(',').map((b) => b.trim())
const skip = chosen !== undefined && !chosen.includes('nats') && 'POLYBUS_TEST_BACKENDS leaves out nats'

const unique = (prefix) => `${prefix}${randomUUID().replaceAll('-', '').slice(0, 12)}`

/** Resolves with the value `check` returns once it is truthy; rejects after `timeoutMs`. */
async function eventually(check, what) {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const value = check()
    if (value) return value
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 10))
  }
}

for (const url of ['memory://', natsUrl, jetstreamUrl]) {
  test(`connectionState and its changes on ${url}`, { skip: url !== 'memory://' && skip }, async () => {
    const bus = await connect(url)
    assert.equal(bus.connectionState, 'connected')
    const states = []
    assert.equal(bus.onConnectionStateChange((state) => { states.push(state) }), undefined)
    await bus.close()
    assert.equal(bus.connectionState, 'closed')
    await eventually(() => states.includes('closed'), "'closed'")
    assert.deepEqual(states, ['closed'])
  })
}

test('onConnectionStateChange checks its argument and the bus', async () => {
  const bus = await connect('memory://')
  assert.throws(() => bus.onConnectionStateChange('nope'), { code: 'POLYBUS_ERR_INVALID_ARGUMENT' })
  // A failing callback is a warning, and the other callbacks still run.
  const warnings = []
  const onWarning = (w) => warnings.push(w)
  process.on('warning', onWarning)
  try {
    bus.onConnectionStateChange(() => { throw new Error('callback failure') })
    bus.onConnectionStateChange(async () => { throw new Error('async callback failure') })
    const states = []
    bus.onConnectionStateChange((state) => { states.push(state) })
    await bus.close()
    await eventually(() => states.includes('closed') && warnings.length === 2, 'the warnings')
    assert.ok(warnings.every((w) => w.code === 'POLYBUS_CALLBACK_FAILED'), String(warnings))
    assert.match(warnings.map(String).join('\n'), /callback failure/)
  } finally {
    process.off('warning', onWarning)
  }
  assert.throws(() => bus.onConnectionStateChange(() => {}), { code: 'POLYBUS_ERR_CLOSED' })
})

test('a connection state callback does not keep the process alive', { skip }, async () => {
  const index = fileURLToPath(new URL('../index.js', import.meta.url))
  const source = `import { connect } from ${JSON.stringify(index)}
    const bus = await connect(${JSON.stringify(natsUrl)})
    bus.onConnectionStateChange((s) => console.log('state', s))
    console.log('registered', bus.connectionState)`
  const { code, output } = await new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--input-type=module', '-e', source], { stdio: ['ignore', 'pipe', 'pipe'] })
    let output = ''
    child.stdout.on('data', (d) => { output += d })
    child.stderr.on('data', (d) => { output += d })
    const timer = setTimeout(() => {
      child.kill('SIGKILL')
      reject(new Error(`the child did not exit within ${timeoutMs} ms; output:\n${output}`))
    }, timeoutMs)
    child.on('exit', (code) => {
      clearTimeout(timer)
      resolve({ code, output })
    })
  })
  assert.equal(code, 0, output)
  assert.match(output, /registered connected/)
})

test('wrong credentials are POLYBUS_ERR_AUTH, within the connect timeout', { skip }, async () => {
  const started = Date.now()
  await assert.rejects(
    connect({ url: authUrl, connectTimeoutMs: 5000, nats: { user: 'polybus', password: 'wrong' } }),
    (err) => {
      assert.equal(err.code, 'POLYBUS_ERR_AUTH')
      assert.ok(err.message.length > 0)
      return true
    },
  )
  assert.ok(Date.now() - started < 6000, `took ${Date.now() - started} ms`)
})

test('credentials from the nats section, camelCase or snake_case', { skip }, async () => {
  for (const nats of [
    { user: 'polybus', password: 'secret', connectionName: 'node-auth-test' },
    { user: 'polybus', password: 'secret', connection_name: 'node-auth-test' },
  ]) {
    const bus = await connect({ url: authUrl, nats })
    try {
      assert.equal(bus.connectionState, 'connected')
      const seen = []
      await bus.subscribe('auth.checked', (e) => { seen.push(e.payload.toString()) })
      await bus.publish('auth.checked', 'ok')
      await eventually(() => seen.length === 1, 'the event')
      assert.deepEqual(seen, ['ok'])
    } finally {
      await bus.close()
    }
  }
})

test('an unreachable server is POLYBUS_ERR_CONNECTION or POLYBUS_ERR_TIMEOUT', async () => {
  const started = Date.now()
  await assert.rejects(connect({ url: 'nats://127.0.0.1:1', connectTimeoutMs: 2000 }), (err) => {
    assert.ok(['POLYBUS_ERR_CONNECTION', 'POLYBUS_ERR_TIMEOUT'].includes(err.code), `${err.code}: ${err.message}`)
    assert.ok(err.message.length > 0)
    return true
  })
  assert.ok(Date.now() - started < 3000, `took ${Date.now() - started} ms`)
})

test('the config sections are checked by the core', async () => {
  await assert.rejects(connect({ url: natsUrl, nats: { colour: 'blue' } }), (err) => {
    assert.equal(err.code, 'POLYBUS_ERR_INVALID_CONFIG')
    assert.match(err.message, /colour/)
    return true
  })
  await assert.rejects(connect({ url: jetstreamUrl, jetstream: { storage: 'tape' } }), {
    code: 'POLYBUS_ERR_INVALID_CONFIG',
    message: /storage/,
  })
  await assert.rejects(connect({ url: jetstreamUrl, jetstream: { ackWaitMs: 10 } }), {
    code: 'POLYBUS_ERR_INVALID_CONFIG',
    message: /ack_wait_ms/,
  })
})

test('the jetstream section reaches the broker', { skip }, async () => {
  const prefix = unique('nodejs')
  const stream = `${prefix.toUpperCase()}_STREAM`
  const config = {
    url: jetstreamUrl,
    prefix,
    jetstream: { stream, storage: 'memory', maxAgeMs: 60_000, ackWaitMs: 5000 },
  }
  const bus = await connect(config)
  try {
    const seen = []
    await bus.subscribe('orders.*', (e) => { seen.push(e.payload.toString()) }, { group: 'billing' })
    await bus.publish('orders.created', 'kept')
    await eventually(() => seen.length === 1, 'the event')
  } finally {
    await bus.close()
  }
  // A second bus naming the same stream binds it: its events land where the first one's did.
  const again = await connect({ ...config, jetstream: { stream } })
  try {
    const seen = []
    await again.subscribe('orders.*', (e) => { seen.push(e.payload.toString()) }, { start: 'earliest' })
    await eventually(() => seen.length >= 1, 'the stored event')
    assert.deepEqual(seen, ['kept'])
  } finally {
    await again.close()
  }
})
