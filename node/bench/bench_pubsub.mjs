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
// an unreported warm-up round; POLYBUS_BENCH_BROKER_EVENTS events (default 200,000) of
// POLYBUS_BENCH_SIZE bytes (default 64).
//
// POLYBUS_BENCH_CASE picks another case on the URLs of POLYBUS_BENCH_URL:
//   latency  publish-to-handler latency at a fixed rate (memory:// included), each publish
//            awaited: POLYBUS_BENCH_LATENCY_RATE events a second (default 5000) for
//            POLYBUS_BENCH_LATENCY_SECONDS (default 4) after a second of warm-up;
//            case `<scheme> latency node` with p50, p99, p99.9 and max in µs.
//   single   `await publish` of one event before the next, one subscriber, on the durable
//            brokers only (jetstream, redis, kafka): POLYBUS_BENCH_SINGLE_EVENTS events
//            (default 3000); case `<scheme> publish one at a time`.
//   fanout   `publishBatch` to 10 subscriptions of one topic, each receiving every event
//            (`<scheme> fan-out to 10`, events = deliveries), and to a group of 4 subscriptions
//            sharing them (`<scheme> group of 4`); POLYBUS_BENCH_BROKER_EVENTS deliveries.
//
// Every throughput line also carries `size` (payload bytes), `cpu_us_per_event` (this
// process's user+system CPU time during the measured run, per event) and `rss_mb` (the peak
// resident set during the measured run).

import { randomUUID } from 'node:crypto'
import { readFileSync, writeFileSync } from 'node:fs'
import { setTimeout as sleep } from 'node:timers/promises'
import { connect } from '../index.js'

const defaultEvents = Number(process.argv[2] ?? process.env.POLYBUS_BENCH_EVENTS ?? 1_000_000)
const events = defaultEvents
const payload = Buffer.alloc(64, 'x')
const chunk = 4096
const size = Number(process.env.POLYBUS_BENCH_SIZE ?? 64)
const brokerPayload = Buffer.alloc(size, 'x')

/**
 * Starts measuring this process's CPU time and peak resident set (the kernel's peak is reset
 * first); the returned function stops and gives the usage fields of a line for `n` events.
 */
function usage() {
  try {
    writeFileSync('/proc/self/clear_refs', '5')
  } catch {}
  const cpu = process.cpuUsage()
  return (n) => {
    const { user, system } = process.cpuUsage(cpu)
    let rss = null
    try {
      const hwm = /^VmHWM:\s+(\d+) kB/m.exec(readFileSync('/proc/self/status', 'utf8'))
      if (hwm) rss = +(Number(hwm[1]) / 1024).toFixed(1)
    } catch {}
    return { cpu_us_per_event: +((user + system) / n).toFixed(2), rss_mb: rss }
  }
}

/**
 * Publishes `published` events with `publishAll` on `config` to `subscriptions` subscriptions of
 * one topic (in `group` if given, else each receiving every event) and times from the first
 * publish until every subscription (or the group as a whole) handled all of them. Returns the
 * deliveries, the seconds and the usage fields.
 */
async function run(publishAll, config = 'memory://', published = defaultEvents, { subscriptions = 1, group } = {}) {
  const bus = await connect(config)
  // One counter per receiver: each subscription, or the group as one.
  const receivers = group ? 1 : subscriptions
  const seen = new Array(receivers).fill(0)
  let complete = 0
  let done
  let deadline
  const finished = new Promise((resolve, reject) => {
    done = resolve
    deadline = setTimeout(() => reject(new Error(`stalled: [${seen}] of ${published} events handled`)), 300_000)
  }).finally(() => clearTimeout(deadline))
  for (let s = 0; s < subscriptions; s++) {
    const r = group ? 0 : s
    await bus.subscribe(
      'bench.events',
      () => {
        if (++seen[r] === published && ++complete === receivers) done()
      },
      group ? { group } : undefined,
    )
  }
  const stop = usage()
  const start = process.hrtime.bigint()
  await publishAll(bus)
  await finished
  const seconds = Number(process.hrtime.bigint() - start) / 1e9
  const deliveries = published * receivers
  const used = stop(deliveries)
  await bus.close()
  return { events: deliveries, seconds, ...used }
}

const modes = {
  await_each: (bus) => publishEach(bus, events, payload),
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
  publish_batch: (bus) => publishBatches(bus, events, payload),
}

/** Publishes `n` events with `publishBatch`, `chunk` at a time. */
async function publishBatches(bus, n, body) {
  const batch = Array.from({ length: chunk }, () => ({ topic: 'bench.events', payload: body }))
  for (let i = 0; i < n; i += chunk) {
    await bus.publishBatch(i + chunk <= n ? batch : batch.slice(0, n - i))
  }
}

/** Publishes `n` events one at a time, each `await`ed (a broker's confirmation included). */
async function publishEach(bus, n, body) {
  for (let i = 0; i < n; i++) await bus.publish('bench.events', body)
}

/** Prints a throughput line: `r` is what `run` returned. */
const print = (name, r, bytes = size) =>
  console.log(
    JSON.stringify({
      lang: 'node',
      case: name,
      events: r.events,
      seconds: +r.seconds.toFixed(4),
      events_per_sec: Math.round(r.events / r.seconds),
      size: bytes,
      cpu_us_per_event: r.cpu_us_per_event,
      rss_mb: r.rss_mb,
    }),
  )

/** `nats://` of `nats://127.0.0.1:4222`. */
const schemeOf = (url) => url.slice(0, url.indexOf('://') + 3)

// A fresh prefix per round: nothing left from an earlier run is delivered.
// Redis streams keep every event (no trimming), so a subscriber that lags loses none.
const freshConfig = (url) => ({
  url,
  prefix: `bench${process.pid}x${Date.now()}${Math.floor(Math.random() * 1e6)}`,
  ...(url.startsWith('redis') ? { redis: { maxLen: 0 } } : {}),
})

/**
 * Runs `publishAll(bus, n)` on a fresh prefix of `url`: an unreported warm-up round of a quarter
 * of `n`, then the measured round, printed as `name`.
 */
async function brokerCase(name, url, n, publishAll, options) {
  const warm = Math.max(1, Math.floor(n / 4))
  await run((bus) => publishAll(bus, warm), freshConfig(url), warm, options)
  print(name, await run((bus) => publishAll(bus, n), freshConfig(url), n, options))
}

/**
 * Publish-to-handler latency at a fixed rate, as the Rust core's `Latency` (core/benches/pubsub.rs):
 * `rate` events a second for one warm-up second (unreported) and `seconds` more, event i sent at
 * start + i * gap (at once when behind) with `send`, which resolves once it was accepted; the
 * first 8 bytes of the 64-byte payload carry the send time, `arrived` takes it back.
 */
class Latency {
  constructor(rate, seconds) {
    this.rate = rate
    this.warm = rate
    this.expect = rate * (seconds + 1)
    this.samples = new Float64Array(rate * seconds)
    this.seen = 0
    this.finished = new Promise((resolve) => (this.done = resolve))
  }

  payload() {
    const p = Buffer.alloc(64, 7)
    p.writeBigUInt64LE(process.hrtime.bigint())
    return p
  }

  /** Records one arrival (arrival order is publish order: one subscriber, awaited publishes). */
  arrived(payload) {
    const ns = Number(process.hrtime.bigint() - payload.readBigUInt64LE(0))
    if (this.seen >= this.warm && this.seen < this.expect) this.samples[this.seen - this.warm] = ns
    if (++this.seen === this.expect) this.done()
  }

  /** Sends every event on schedule, waits (30 s at most) for all, prints the percentiles. */
  async run(name, send) {
    const gap = 1e9 / this.rate
    const start = process.hrtime.bigint()
    for (let i = 0; i < this.expect; i++) {
      const wait = i * gap - Number(process.hrtime.bigint() - start)
      if (wait > 0) await sleep(Math.ceil(wait / 1e6))
      await send(this.payload())
    }
    const timeout = new AbortController()
    const late = sleep(30_000, true, { signal: timeout.signal }).catch(() => false)
    const timedOut = await Promise.race([this.finished.then(() => false), late])
    timeout.abort()
    if (timedOut) {
      console.error(`${name}: only ${this.seen} of ${this.expect} events arrived`)
      return
    }
    const v = this.samples.sort()
    const at = (q) => +(v[Math.min(Math.floor(v.length * q), v.length - 1)] / 1000).toFixed(1)
    console.log(
      JSON.stringify({
        lang: 'node',
        case: name,
        events: v.length,
        rate: this.rate,
        p50_us: at(0.5),
        p99_us: at(0.99),
        p999_us: at(0.999),
        max_us: +(v[v.length - 1] / 1000).toFixed(1),
      }),
    )
  }
}

// Latency: polybus `await publish` (a broker's confirmation included) at a fixed rate, one
// subscriber in this process.
async function latencyCase(url, rate, seconds) {
  const lat = new Latency(rate, seconds)
  const bus = await connect(freshConfig(url))
  await bus.subscribe('bench.latency', (e) => lat.arrived(e.payload))
  await lat.run(`${schemeOf(url)} latency node`, (p) => bus.publish('bench.latency', p))
  await bus.close()
}

const urls = (process.env.POLYBUS_BENCH_URL ?? '').split(',').map((u) => u.trim()).filter(Boolean)
const only = (process.env.POLYBUS_BENCH_MODES ?? '').split(',').map((m) => m.trim()).filter(Boolean)
const brokerEvents = Number(process.env.POLYBUS_BENCH_BROKER_EVENTS ?? 200_000)
const benchCase = process.env.POLYBUS_BENCH_CASE ?? ''
if (benchCase === 'latency') {
  const rate = Number(process.env.POLYBUS_BENCH_LATENCY_RATE ?? 5000)
  const seconds = Number(process.env.POLYBUS_BENCH_LATENCY_SECONDS ?? 4)
  for (const url of urls) await latencyCase(url, rate, seconds)
} else if (benchCase === 'single') {
  // One at a time: each `await publish` waits for the broker's confirmation before the next,
  // one subscriber; events/s from the first publish to the last event handled.
  const n = Number(process.env.POLYBUS_BENCH_SINGLE_EVENTS ?? 3000)
  for (const url of urls.filter((u) => /^(jetstream|redis|kafka):\/\//.test(u))) {
    await brokerCase(`${schemeOf(url)} publish one at a time`, url, n, (bus, k) => publishEach(bus, k, brokerPayload))
  }
} else if (benchCase === 'fanout') {
  for (const url of urls) {
    const publishAll = (bus, k) => publishBatches(bus, k, brokerPayload)
    // Fan-out: 10 subscriptions of one topic, each handling every event; deliveries per second
    // from the first publish until all 10 handled the last.
    const fans = 10
    await brokerCase(`${schemeOf(url)} fan-out to 10`, url, Math.max(1, Math.floor(brokerEvents / fans)), publishAll, {
      subscriptions: fans,
    })
    // Group: 4 subscriptions in one group sharing the events; until the deliveries sum to all.
    // A new group per run: a Kafka group left behind by an earlier run cannot delay this one.
    await brokerCase(`${schemeOf(url)} group of 4`, url, brokerEvents, publishAll, {
      subscriptions: 4,
      group: `bench${randomUUID().replaceAll('-', '')}`,
    })
  }
} else if (urls.length === 0) {
  // In process (memory://), 64-byte payloads: the four ways to publish.
  for (const [name, publishAll] of Object.entries(modes)) {
    if (only.length > 0 && !only.includes(name)) continue
    await run(publishAll) // warm-up
    print(`node ${name}`, await run(publishAll), payload.length)
  }
} else {
  // Broker rows: `publishBatch` in chunks of 4096, one subscriber.
  for (const url of urls) {
    await brokerCase(`node ${schemeOf(url)} publish_batch`, url, brokerEvents, (bus, k) =>
      publishBatches(bus, k, brokerPayload),
    )
  }
}
