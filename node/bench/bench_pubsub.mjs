// Events per second from publish to handler: one publisher and one subscriber in one process,
// 64-byte payloads, the memory backend. Four ways to publish: `await publish` in a loop,
// un-awaited publishes with one wait per chunk of 4096, every publish started before one wait
// (the subscriber's queue fills, so most of them are pending), and `publishBatch`. Prints one
// JSON line per case (the format bench/run.sh collects).
//
//   node bench/bench_pubsub.mjs [events per run, default POLYBUS_BENCH_EVENTS or 1000000]
//
// POLYBUS_BENCH_MODES (comma-separated, for example `unawaited,unawaited_all`) runs only those.
//
// Broker rows: with POLYBUS_BENCH_URL (one URL or several, comma-separated, for example
// `jetstream://127.0.0.1:4222,redis://127.0.0.1:6390,kafka://127.0.0.1:9092`) it measures
// `publishBatch` on each broker instead, as the Rust core's broker case does: chunks of 4096,
// one subscriber, from the first publish to the last event handled, on a fresh prefix, after
// an unreported warm-up round; POLYBUS_BENCH_BROKER_EVENTS events (default 200,000).

import { connect } from '../index.js'

const defaultEvents = Number(process.argv[2] ?? process.env.POLYBUS_BENCH_EVENTS ?? 1_000_000)
const events = defaultEvents
const payload = Buffer.alloc(64, 'x')
const chunk = 4096

/** Publishes `events` events with `publishAll` on `config` and times until the handler saw the last. */
async function run(publishAll, config = 'memory://', events = defaultEvents) {
  const bus = await connect(config)
  let seen = 0
  let done
  let deadline
  const finished = new Promise((resolve, reject) => {
    done = resolve
    deadline = setTimeout(() => reject(new Error(`stalled after ${seen} of ${events} events`)), 300_000)
  }).finally(() => clearTimeout(deadline))
  await bus.subscribe('bench.events', () => {
    if (++seen === events) done()
  })
  const start = process.hrtime.bigint()
  await publishAll(bus)
  await finished
  const seconds = Number(process.hrtime.bigint() - start) / 1e9
  await bus.close()
  return Math.round(events / seconds)
}

const modes = {
  await_each: async (bus) => {
    for (let i = 0; i < events; i++) await bus.publish('bench.events', payload)
  },
  // Un-awaited publishes, one wait per chunk (so the handler side gets the thread meanwhile).
  unawaited: async (bus) => {
    for (let i = 0; i < events; i += chunk) {
      const accepted = []
      for (let j = i; j < Math.min(i + chunk, events); j++) accepted.push(bus.publish('bench.events', payload))
      await Promise.all(accepted)
    }
  },
  // Every publish started, then one wait: most are pending, each with its own promise.
  unawaited_all: async (bus) => {
    const accepted = []
    for (let i = 0; i < events; i++) accepted.push(bus.publish('bench.events', payload))
    await Promise.all(accepted)
  },
  publish_batch: (bus, n = events) => publishBatches(bus, n),
}

/** Publishes `n` events with `publishBatch`, `chunk` at a time. */
async function publishBatches(bus, n) {
  const batch = Array.from({ length: chunk }, () => ({ topic: 'bench.events', payload }))
  for (let i = 0; i < n; i += chunk) {
    await bus.publishBatch(i + chunk <= n ? batch : batch.slice(0, n - i))
  }
}

const print = (name, n, rate) =>
  console.log(JSON.stringify({ lang: 'node', case: `node ${name}`, events: n, seconds: +(n / rate).toFixed(4), events_per_sec: rate }))

const urls = (process.env.POLYBUS_BENCH_URL ?? '').split(',').map((u) => u.trim()).filter(Boolean)
const only = (process.env.POLYBUS_BENCH_MODES ?? '').split(',').map((m) => m.trim()).filter(Boolean)
if (urls.length === 0) {
  for (const [name, publishAll] of Object.entries(modes)) {
    if (only.length > 0 && !only.includes(name)) continue
    await run(publishAll) // warm-up
    print(name, events, await run(publishAll))
  }
} else {
  const n = Number(process.env.POLYBUS_BENCH_BROKER_EVENTS ?? 200_000)
  for (const url of urls) {
    // A fresh prefix per round: nothing left from an earlier run is delivered.
    // Redis streams keep every event (no trimming), so a subscriber that lags loses none.
    const config = () => ({
      url,
      prefix: `bench${process.pid}x${Date.now()}${Math.floor(Math.random() * 1e6)}`,
      ...(url.startsWith('redis') ? { redis: { maxLen: 0 } } : {}),
    })
    const warm = Math.max(1, Math.floor(n / 4))
    await run((bus) => publishBatches(bus, warm), config(), warm)
    const scheme = url.slice(0, url.indexOf('://') + 3)
    print(`${scheme} publish_batch`, n, await run((bus) => publishBatches(bus, n), config(), n))
  }
}
