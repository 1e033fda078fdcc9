// TLS from Node: the `tlsCa`, `tlsCert` and `tlsKey` settings of the `redis` and `kafka`
// sections carry events to a TLS broker (server authentication with the CA, then mutual TLS with
// a client certificate), and a broker whose certificate is not trusted is a clear polybus error.
//
// These tests need the TLS brokers of tests/harness/brokers.sh (`bash tests/harness/setup.sh`):
// `redis-tls` (rediss://127.0.0.1:6392) and the SSL listener of the Kafka broker
// (kafka://127.0.0.1:9095), with their certificates under build/brokers/; a missing broker or
// certificate fails them. POLYBUS_TEST_REDIS_TLS_URL, POLYBUS_TEST_REDIS_TLS_DIR,
// POLYBUS_TEST_KAFKA_SSL_URL and POLYBUS_TEST_KAFKA_TLS_DIR point them elsewhere (as for the
// Rust tests); POLYBUS_TEST_BACKENDS without `redis` or `kafka` leaves those out.

import assert from 'node:assert/strict'
import { randomUUID } from 'node:crypto'
import { test } from 'node:test'
import { fileURLToPath } from 'node:url'

import { connect } from '../index.js'

const root = fileURLToPath(new URL('../../', import.meta.url))
const timeoutMs = 30_000 * Number(process.env.POLYBUS_TEST_TIMEOUT_SCALE ?? 1)

const chosen = process.env.POLYBUS_TEST_BACKENDS?.split(',').map((b) => b.trim())
const skipUnless = (backend) =>
  chosen !== undefined && !chosen.includes(backend) && `POLYBUS_TEST_BACKENDS leaves out ${backend}`

const unique = (prefix) => `${prefix}${randomUUID().replaceAll('-', '').slice(0, 12)}`

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

const brokers = [
  {
    backend: 'redis',
    url: process.env.POLYBUS_TEST_REDIS_TLS_URL ?? 'rediss://127.0.0.1:6392',
    dir: process.env.POLYBUS_TEST_REDIS_TLS_DIR ?? `${root}build/brokers/redis-tls/tls`,
    // Without a CA the client still speaks TLS (the rediss:// scheme) and distrusts the server.
    untrusted: {},
  },
  {
    backend: 'kafka',
    url: process.env.POLYBUS_TEST_KAFKA_SSL_URL ?? 'kafka://127.0.0.1:9095',
    dir: process.env.POLYBUS_TEST_KAFKA_TLS_DIR ?? `${root}build/brokers/kafka/tls`,
    // Without a CA nothing says the listener speaks TLS: ask for it.
    untrusted: { securityProtocol: 'ssl' },
  },
]

for (const { backend, url, dir, untrusted } of brokers) {
  const skip = skipUnless(backend)

  for (const clientCert of [false, true]) {
    const how = clientCert ? 'the CA and a client certificate' : 'the CA'
    test(`${backend} TLS with ${how} carries an event (${url})`, { skip, timeout: 4 * timeoutMs }, async () => {
      const tls = { tlsCa: `${dir}/ca.crt` }
      if (clientCert) Object.assign(tls, { tlsCert: `${dir}/client.crt`, tlsKey: `${dir}/client.key` })
      const bus = await connect({ url, prefix: unique(`nodetls${backend}`), [backend]: tls })
      try {
        assert.equal(bus.connectionState, 'connected')
        const seen = []
        await bus.subscribe('tls.ok', (e) => { seen.push(e.payload.toString()) })
        await bus.publish('tls.ok', `over ${backend} tls`)
        await eventually(() => seen.length >= 1, 'the event')
        assert.deepEqual(seen, [`over ${backend} tls`])
      } finally {
        await bus.close()
      }
    })
  }

  test(`${backend} TLS without the CA fails with a clear connection error (${url})`, { skip, timeout: 4 * timeoutMs }, async () => {
    // A connect timeout generous enough for the TLS handshake's own error to come first on a
    // loaded machine; POLYBUS_ERR_TIMEOUT is accepted too, but must still name TLS.
    await assert.rejects(connect({ url, connectTimeoutMs: 20_000, [backend]: untrusted }), (err) => {
      assert.ok(['POLYBUS_ERR_CONNECTION', 'POLYBUS_ERR_TIMEOUT'].includes(err.code), `${err.code}: ${err.message}`)
      // The reason, not just the address: librdkafka names a broker `ssl://host:port/...`.
      const reason = err.message.replace(/\b[a-z_+]+:\/\/\S*/gi, '')
      assert.match(reason, /\b(tls|ssl)\b|certificate/i, err.message)
      return true
    })
  })
}
