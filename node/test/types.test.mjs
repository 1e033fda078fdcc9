// The type declarations match what the modules export at run time, both ways: native.d.ts
// against the native module, and the hand-written index.d.ts against index.js. (test.sh also
// regenerates native.js and native.d.ts and fails when the committed ones differ.)

import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { test } from 'node:test'

const require = createRequire(import.meta.url)
const read = (file) => readFileSync(new URL(`../${file}`, import.meta.url), 'utf8')

/** The exported names a declaration file declares: classes with their members, and the rest. */
function declarations(dts) {
  const classes = new Map()
  const others = new Set()
  for (const m of dts.matchAll(/^export declare (class|function|const) (\w+)/gm)) {
    if (m[1] !== 'class') {
      others.add(m[2])
      continue
    }
    const body = dts.slice(m.index, dts.indexOf('\n}', m.index))
    const members = [...body.matchAll(/^ {2}(?:readonly |get |set )?(\w+)[(<:?]/gm)].map((x) => x[1])
    classes.set(m[2], new Set(members.filter((name) => name !== 'constructor')))
  }
  return { classes, others }
}

/** The public members of a class at run time (private `#fields` are invisible, as they should be). */
const members = (cls) =>
  new Set(Object.getOwnPropertyNames(cls.prototype).filter((n) => n !== 'constructor'))

function assertMatches(dtsFile, exportsObject) {
  const { classes, others } = declarations(read(dtsFile))
  const declared = new Set([...classes.keys(), ...others])
  assert.deepEqual(new Set(Object.keys(exportsObject)), declared, `${dtsFile}: exports`)
  for (const [name, declaredMembers] of classes) {
    assert.deepEqual(members(exportsObject[name]), declaredMembers, `${dtsFile}: members of ${name}`)
  }
}

test('native.d.ts declares exactly what the native module exports', () => {
  assertMatches('native.d.ts', require('../native.js'))
})

test('index.d.ts declares exactly what index.js exports', () => {
  assertMatches('index.d.ts', require('../index.js'))
})
