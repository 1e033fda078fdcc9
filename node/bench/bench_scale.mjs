// Subscription scale: what 10, 1,000 and 10,000 subscriptions of one bus cost a Node process.
//
// For each count, in a fresh child process (so that counts do not share threads or memory):
// connects to `memory://` (or --url), subscribes that many handlers of concurrency 1, each on a
// topic of its own, one after the other (each awaited), publishes one event to each (one
// publishBatch) and waits until every handler ran, lets the process settle, then measures the
// CPU the idle process uses over --idle seconds (user + system time of every thread, from
// process.cpuUsage), the OS threads (`Threads:` of /proc/self/status) and the resident memory,
// and the time to close the bus. Prints one JSON line per count.
//
//   node bench/bench_scale.mjs                          # 10, 1000, 10000 on memory://
//   node bench/bench_scale.mjs --counts 1000 --url nats://127.0.0.1:4222
//
// The fields are those of the Go command (bindings/go/cmd/polybus-scale) and of Python's
// bench/bench_scale.py, which name two of them differently: both names are printed
// (`threads` = `threads_total`, `idle_cpu` = `idle_cpu_core`). As in Python, the baseline
// (`threads_open`, `rss_open_mb`, what `threads_added` and `rss_added_mb` are counted from) is
// taken once the bus is open and a first subscription was made and closed: the runtime's
// threads and the first-use setup are not the subscriptions'.
//
// The target: 10,000 subscriptions add at most 16 OS threads and under 1% of a core idle,
// subscribe in under 1 s and close in under 1 s. Linux only (/proc); it measures and reports,
// it asserts nothing.

import { execFileSync } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { setTimeout as sleep } from 'node:timers/promises'

import { connect } from '../index.js'

/** A field of /proc/self/status, in its unit (kB for memory). */
function status(field) {
  const line = readFileSync('/proc/self/status', 'utf8').split('\n').find((l) => l.startsWith(`${field}:`))
  if (line === undefined) throw new Error(`no ${field} in /proc/self/status`)
  return Number.parseInt(line.split(/\s+/)[1], 10)
}

/** CPU seconds (user + system) the process used so far, every thread counted. */
function cpuSeconds() {
  const { user, system } = process.cpuUsage()
  return (user + system) / 1e6
}

const seconds = (start) => Number(process.hrtime.bigint() - start) / 1e9
const round = (x, digits) => Math.round(x * 10 ** digits) / 10 ** digits
const mb = (kb) => round(kb / 1024, 1)

async function measure(url, count, idle, settle) {
  const bus = await connect({ url, prefix: `scale${process.pid}` })
  const handler = () => {}
  // The runtime, the settling of promises and the first delivery are not the subscriptions'.
  await (await bus.subscribe('scale.warmup', handler)).close()
  const threadsOpen = status('Threads')
  const rssOpen = status('VmRSS')

  let start = process.hrtime.bigint()
  const subs = []
  let handled = 0
  let all
  const delivered = new Promise((resolve) => {
    all = resolve
  })
  const counting = () => {
    if (++handled === count) all()
  }
  for (let i = 0; i < count; i++) subs.push(await bus.subscribe(`scale.t${i}`, counting, { concurrency: 1 }))
  const subscribeS = seconds(start)

  start = process.hrtime.bigint()
  await bus.publishBatch(Array.from({ length: count }, (_, i) => ({ topic: `scale.t${i}`, payload: 'x' })))
  const publishS = seconds(start)
  await delivered
  const deliverS = seconds(start)

  // Idle: nothing published, every subscription waiting. The lanes that just ran settle first.
  await sleep(settle * 1000)
  const cpu = cpuSeconds()
  start = process.hrtime.bigint()
  await sleep(idle * 1000)
  const idleS = seconds(start)
  const idleCore = (cpuSeconds() - cpu) / idleS
  const threads = status('Threads')
  const rss = status('VmRSS')

  start = process.hrtime.bigint()
  await bus.close()
  const closeS = seconds(start)
  if (!subs.every((s) => s.closed)) throw new Error('a subscription is still open after bus.close()')
  return {
    lang: 'node',
    case: 'subscriptions',
    url,
    subscriptions: count,
    threads_open: threadsOpen,
    threads,
    threads_added: threads - threadsOpen,
    threads_total: threads,
    rss_open_mb: mb(rssOpen),
    rss_mb: mb(rss),
    rss_added_mb: mb(rss - rssOpen),
    idle_cpu: round(idleCore, 4),
    idle_cpu_core: round(idleCore, 4),
    idle_seconds: round(idleS, 3),
    subscribe_s: round(subscribeS, 3),
    publish_s: round(publishS, 3),
    deliver_s: round(deliverS, 3),
    close_s: round(closeS, 3),
  }
}

const { values } = parseArgs({
  options: {
    url: { type: 'string', default: 'memory://' },
    counts: { type: 'string', default: '10,1000,10000' },
    idle: { type: 'string', default: '2' },
    settle: { type: 'string', default: '1' },
    child: { type: 'string' },
  },
})

if (values.child !== undefined) {
  const r = await measure(values.url, Number(values.child), Number(values.idle), Number(values.settle))
  console.log(JSON.stringify(r))
} else {
  for (const count of values.counts.split(',').map((c) => Number(c.trim()))) {
    if (!Number.isInteger(count) || count <= 0) throw new Error(`--counts: ${count} is not a positive count`)
    execFileSync(process.execPath, [fileURLToPath(import.meta.url), '--url', values.url, '--idle', values.idle,
      '--settle', values.settle, '--child', String(count)], { stdio: 'inherit' })
  }
}
