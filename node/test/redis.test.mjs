// Redis credentials from Node (the conformance scenarios run in conformance.test.mjs on both
// Redis modes).
//
// These tests need the `redis-acl` server of tests/harness/brokers.sh
// (`bash tests/harness/setup.sh`): ACL user polybus / secret, the default user disabled. A
// missing server fails them. POLYBUS_TEST_REDIS_ACL_URL points them elsewhere;
// POLYBUS_TEST_BACKENDS without `redis` leaves them out.

import assert from 'node:assert/strict'
import { randomUUID } from 'node:crypto'
import { test } from 'node:test'

import { connect } from '../index.js'

const aclUrl = process.env.POLYBUS_TEST_REDIS_ACL_URL ?? 'redis://127.0.0.1:6391'
const timeoutMs = 10_000 * Number(process.env.POLYBUS_TEST_TIMEOUT_SCALE ?? 1)

const chosen = process.env.POLYBUS_TEST_BACKENDS?.split(',').map((b) => b.trim())
const skip = chosen !== undefined && !chosen.includes('redis') && 'POLYBUS_TEST_BACKENDS leaves out redis'

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

test('credentials from the redis section carry events', { skip }, async () => {
  const bus = await connect({
    url: aclUrl,
    prefix: `nodeacl${randomUUID().replaceAll('-', '').slice(0, 12)}`,
    redis: { username: 'polybus', password: 'secret' },
  })
  try {
    const seen = []
    await bus.subscribe('acl.ok', (e) => { seen.push(e.payload.toString()) })
    await bus.publish('acl.ok', 'hi')
    await eventually(() => seen.length === 1, 'the event')
    assert.deepEqual(seen, ['hi'])
  } finally {
    await bus.close()
  }
})

for (const [name, redis] of [['a wrong password', { username: 'polybus', password: 'wrong' }], ['no credentials', {}]]) {
  test(`${name} is POLYBUS_ERR_AUTH`, { skip }, async () => {
    await assert.rejects(connect({ url: aclUrl, connectTimeoutMs: 5000, redis }), (err) => {
      assert.equal(err.code, 'POLYBUS_ERR_AUTH')
      assert.ok(err.message.length > 0)
      assert.doesNotMatch(err.message, /wrong/)
      return true
    })
  })
}
