// Events per second from publish to handler: one publisher and one subscriber in one process,
// 64-byte payloads, the memory backend. Three ways to publish: `await publish` in a loop,
// un-awaited publishes followed by one wait, and `publishMany`. Prints one JSON line per case
// (the format bench/run.sh collects).
//
//   node bench/bench_pubsub.mjs [events per run, default POLYBUS_BENCH_EVENTS or 1000000]

import { connect } from '../index.js'

const events = Number(process.argv[2] ?? process.env.POLYBUS_BENCH_EVENTS ?? 1_000_000)
const payload = Buffer.alloc(64, 'x')
const chunk = 4096

/**
 * Publishes `events` events with `publishAll` and times until the handler saw the last. A
 * subscription does not keep Node running; the deadline timer does, while the run lasts.
 */
async function run(publishAll) {
  const bus = await connect('memory://')
  let seen = 0
  let done
  let deadline
  const finished = new Promise((resolve, reject) => {
    done = resolve
    deadline = setTimeout(() => reject(new Error(`stalled after ${seen} of ${events} events`)), 120_000)
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
  publish_many: async (bus) => {
    const batch = Array.from({ length: chunk }, () => ({ topic: 'bench.events', payload }))
    for (let i = 0; i < events; i += chunk) {
      await bus.publishMany(i + chunk <= events ? batch : batch.slice(0, events - i))
    }
  },
}

for (const [name, publishAll] of Object.entries(modes)) {
  await run(publishAll) // warm-up
  const rate = await run(publishAll)
  const line = { lang: 'node', case: `node ${name}`, events, seconds: +(events / rate).toFixed(4), events_per_sec: rate }
  console.log(JSON.stringify(line))
}
