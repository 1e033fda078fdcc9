// Process lifecycle: polybus alone never keeps Node running, and repeated use does not leak.

import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { test } from 'node:test'
import { fileURLToPath } from 'node:url'

const index = fileURLToPath(new URL('../index.js', import.meta.url))

/** Runs `script` (ESM, with `connect` imported) in a child `node`; resolves with its exit. */
function runChild(script, { args = [], timeoutMs = 5000 } = {}) {
  const source = `import { connect } from ${JSON.stringify(index)}\n${script}`
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [...args, '--input-type=module', '-e', source], { stdio: ['ignore', 'pipe', 'pipe'] })
    let output = ''
    child.stdout.on('data', (d) => { output += d })
    child.stderr.on('data', (d) => { output += d })
    const timer = setTimeout(() => {
      child.kill('SIGKILL')
      reject(new Error(`the child did not exit within ${timeoutMs} ms; output:\n${output}`))
    }, timeoutMs)
    child.on('exit', (code, signal) => {
      clearTimeout(timer)
      resolve({ code, signal, output })
    })
  })
}

test('a script that subscribes and closes its bus exits on its own', async () => {
  const { code, output } = await runChild(`
    const bus = await connect('memory://')
    let n = 0
    await bus.subscribe('a.*', async () => { n++ })
    for (let i = 0; i < 100; i++) await bus.publish('a.b', 'x')
    await bus.close()
    console.log('handled', n)
  `)
  assert.equal(code, 0, output)
  assert.match(output, /handled 100/)
})

test('a script that subscribes and never closes exits on its own', async () => {
  const { code, output } = await runChild(`
    const bus = await connect('memory://')
    await bus.subscribe('a.*', () => {}, { concurrency: 4 })
    await bus.subscribe('a.*', () => {}, { group: 'g' })
    await bus.publish('a.b', 'x')
    console.log('done')
  `)
  assert.equal(code, 0, output)
  assert.match(output, /done/)
})

test('a handler that throws does not crash the process', async () => {
  const { code, output } = await runChild(`
    const bus = await connect('memory://')
    await bus.subscribe('a.b', () => { throw new Error('boom') }, { maxAttempts: 2, backoffInitialMs: 1 })
    await bus.subscribe('a.b', async () => { throw new Error('async boom') }, { maxAttempts: 2, backoffInitialMs: 1 })
    await bus.publish('a.b', 'x')
    await bus.close()
    console.log(JSON.stringify(bus.stats()))
  `)
  assert.equal(code, 0, output)
  assert.match(output, /"failed":4,.*"dropped":2/)
})

test('repeated connect, subscribe, publish and close does not leak (--expose-gc)', async () => {
  const { code, output } = await runChild(`
    const round = async () => {
      const bus = await connect('memory://')
      for (let s = 0; s < 4; s++) await bus.subscribe('a.*', (e) => { e.payload; e.headers }, { concurrency: 2 })
      await bus.publishMany(Array.from({ length: 200 }, () => ({ topic: 'a.b', payload: Buffer.alloc(256) })))
      await bus.close()
    }
    const usage = async (rounds) => {
      for (let i = 0; i < rounds; i++) await round()
      for (let i = 0; i < 4; i++) { globalThis.gc(); await new Promise(setImmediate) }
      return process.memoryUsage()
    }
    await usage(100)
    const before = await usage(100)
    const after = await usage(400)
    const grew = (k) => (after[k] - before[k]) / 1024 / 1024
    console.log(JSON.stringify({ heapMiB: grew('heapUsed'), externalMiB: grew('external'), rssMiB: grew('rss') }))
  `, { args: ['--expose-gc'], timeoutMs: 120_000 })
  assert.equal(code, 0, output)
  const growth = JSON.parse(output.trim().split('\n').pop())
  assert.ok(growth.heapMiB < 2, `heap grew by ${growth.heapMiB} MiB`)
  assert.ok(growth.externalMiB < 2, `external memory grew by ${growth.externalMiB} MiB`)
  assert.ok(growth.rssMiB < 32, `RSS grew by ${growth.rssMiB} MiB`)
})
