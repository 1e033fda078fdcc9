// The Node demo: a subscriber and a publisher on one bus (POLYBUS_URL, default memory://).
import { createRequire } from 'node:module'

const { connect } = createRequire(import.meta.url)('../../node/index.js')

const bus = await connect(process.env.POLYBUS_URL ?? 'memory://')
let seen = 0
let allSeen
const done = new Promise((resolve) => { allSeen = resolve })
await bus.subscribe('message', (evt) => {
  const payload = evt.json()
  const now = new Date().toISOString().slice(11, 23)
  console.log(`INFO[${now}000] node   evt id: ${evt.id}, topic: ${evt.topic}, payload message: ${payload.message}`)
  if (++seen === 3) allSeen()
})
for (let i = 0; i < 3; i++) await bus.publish('message', { message: 'hello world' })
const timer = setTimeout(() => { console.error('the demo events did not arrive'); process.exit(1) }, 10_000)
await done
clearTimeout(timer)
await bus.close()
