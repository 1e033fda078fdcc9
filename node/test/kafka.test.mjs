// The Kafka backend from Node: SASL credentials, errors, and a plain Kafka client reading and
// writing polybus events (the conformance scenarios run in conformance.test.mjs).
//
// These tests need the Kafka broker of tests/harness/kafka-broker.sh
// (`bash tests/harness/setup.sh`); a missing broker fails them. POLYBUS_TEST_KAFKA_URL and
// POLYBUS_TEST_KAFKA_SASL_URL point them elsewhere; POLYBUS_TEST_BACKENDS without `kafka`
// leaves them out.

import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import { test } from 'node:test'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'

import { connect } from '../index.js'

const kafkaUrl = process.env.POLYBUS_TEST_KAFKA_URL ?? 'kafka://127.0.0.1:9092'
const saslUrl = process.env.POLYBUS_TEST_KAFKA_SASL_URL ?? 'kafka://127.0.0.1:9093'
const timeoutMs = 10_000 * Number(process.env.POLYBUS_TEST_TIMEOUT_SCALE ?? 1)
const interopScript = fileURLToPath(new URL('../../tests/harness/kafka/interop.sh', import.meta.url))

const chosen = process.env.POLYBUS_TEST_BACKENDS?.split(',').map((b) => b.trim())
const skip = chosen !== undefined && !chosen.includes('kafka') && 'POLYBUS_TEST_BACKENDS leaves out kafka'

const unique = (prefix) => `${prefix}${randomUUID().replaceAll('-', '').slice(0, 12)}`

/** Runs the harness's plain Kafka client (kafka-clients); resolves with its stdout. */
async function interop (...args) {
  const { stdout } = await promisify(execFile)('bash', [interopScript, ...args])
  return stdout
}

/** Resolves with the value `check` returns once it is truthy; rejects after `timeoutMs`. */
async function eventually (check, what) {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const value = check()
    if (value) return value
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 10))
  }
}

for (const saslMechanism of ['PLAIN', 'SCRAM-SHA-256']) {
  test(`SASL ${saslMechanism}: a wrong password is POLYBUS_ERR_AUTH, the right one works`, { skip }, async () => {
    await assert.rejects(
      connect({ url: saslUrl, connectTimeoutMs: 5000, kafka: { saslMechanism, username: 'polybus', password: 'wrong' } }),
      (err) => {
        assert.equal(err.code, 'POLYBUS_ERR_AUTH')
        assert.match(err.message, /authentication/i)
        assert.doesNotMatch(err.message, /wrong/)
        return true
      },
    )
    const bus = await connect({
      url: saslUrl,
      prefix: unique('nodesasl'),
      kafka: { sasl_mechanism: saslMechanism, username: 'polybus', password: 'secret' },
    })
    try {
      const seen = []
      await bus.subscribe('sasl.ok', (e) => { seen.push(e.payload.toString()) })
      await bus.publish('sasl.ok', saslMechanism)
      await eventually(() => seen.length === 1, 'the event')
      assert.deepEqual(seen, [saslMechanism])
    } finally {
      await bus.close()
    }
  })
}

test('an unreachable Kafka broker fails within the connect timeout', async () => {
  const started = Date.now()
  await assert.rejects(connect({ url: 'kafka://127.0.0.1:1', connectTimeoutMs: 2000 }), (err) => {
    assert.ok(['POLYBUS_ERR_CONNECTION', 'POLYBUS_ERR_TIMEOUT'].includes(err.code), err.code)
    assert.match(err.message, /127\.0\.0\.1:1/)
    return true
  })
  assert.ok(Date.now() - started < 4000, `took ${Date.now() - started} ms`)
})

test('bad kafka settings are POLYBUS_ERR_INVALID_CONFIG', async () => {
  await assert.rejects(connect({ url: kafkaUrl, kafka: { compression: 'brotli' } }), {
    code: 'POLYBUS_ERR_INVALID_CONFIG',
    message: /kafka\.compression/,
  })
})

test('a plain Kafka client reads and writes polybus events', { skip }, async () => {
  const prefix = unique('nodeinterop')
  const bootstrap = kafkaUrl.split('://')[1]
  const bus = await connect({ url: kafkaUrl, prefix, name: 'node-interop' })
  try {
    const payload = Buffer.from([0, 1, 2, 0xfe, 0xff])
    await bus.publish('orders.created', payload, { key: 'order-7', headers: { tenant: 'acme' }, id: 'node-1' })
    const line = (await interop('consume', bootstrap, `${prefix}.orders.created`, '1', '20000')).split('\n')[0]
    const record = JSON.parse(line)
    assert.equal(record.value_hex, payload.toString('hex'))
    assert.equal(record.key, 'order-7')
    assert.equal(record.headers.ce_id, 'node-1')
    assert.equal(record.headers.ce_source, 'node-interop')
    assert.equal(record.headers.ce_specversion, '1.0')
    assert.equal(record.headers.tenant, 'acme')

    const seen = []
    await bus.subscribe('plain.in', (e) => { seen.push(e) })
    await interop('produce', bootstrap, `${prefix}.plain.in`, 'k-1', '00ff10', 'ce_id=plain-1', 'origin=java')
    await eventually(() => seen.length === 1, 'the plain event')
    const e = seen[0]
    assert.deepEqual([...e.payload], [0, 0xff, 0x10])
    assert.equal(e.key, 'k-1')
    assert.equal(e.id, 'plain-1')
    assert.equal(e.headers.origin, 'java')
  } finally {
    await bus.close()
  }
})
