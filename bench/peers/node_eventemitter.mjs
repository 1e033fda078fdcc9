// Peer for the Node benchmark: Node's own EventEmitter, in process, 64-byte Buffers.
import { EventEmitter } from 'node:events'

const n = Number(process.env.POLYBUS_BENCH_EVENTS ?? 2_000_000)
const bus = new EventEmitter()
let seen = 0
bus.on('bench.events', () => { seen++ })
const payload = Buffer.alloc(64, 7)
const start = process.hrtime.bigint()
for (let i = 0; i < n; i++) bus.emit('bench.events', payload)
const secs = Number(process.hrtime.bigint() - start) / 1e9
if (seen !== n) throw new Error(`saw ${seen} of ${n}`)
console.log(JSON.stringify({ lang: 'node', case: 'node EventEmitter (peer, synchronous)', events: n, seconds: +secs.toFixed(4), events_per_sec: Math.round(n / secs) }))
