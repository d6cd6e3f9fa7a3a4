// Unannounce and signed announcements through the Node binding: Link.unannounce removes an
// address from the Grapes at once; Link.pinService keeps only addresses with a valid proof of the
// service key (Link.signAnnouncements publishes them); bad keys are refused.
//   node --test bindings/node/test/trust.test.js
'use strict'

const { test, before, after } = require('node:test')
const assert = require('node:assert/strict')
const g = require('..')

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

async function eventually (f, what, timeout = 20000) {
  const t0 = Date.now()
  let last
  while (Date.now() - t0 < timeout) {
    try {
      const v = await f()
      if (v) return v
    } catch (e) { last = e }
    await sleep(50)
  }
  throw new Error(`${what}: not reached in ${timeout} ms (last error: ${last && last.message})`)
}

let g1, g2, g3
before(() => {
  g1 = new g.Grape({ host: '127.0.0.1' })
  g2 = new g.Grape({ host: '127.0.0.1', bootstrap: [`127.0.0.1:${g1.dhtPort}`] })
  g3 = new g.Grape({ host: '127.0.0.1', bootstrap: [`127.0.0.1:${g1.dhtPort}`] })
})

after(async () => {
  await g3.stop()
  await g2.stop()
  await g1.stop()
})

test('unannounce removes the address at once', async () => {
  const l1 = new g.Link(g1.url)
  await eventually(async () => { await l1.announce('trust:un', 4242); return true }, 'announce')
  await eventually(async () => (await new g.Link({ grape: g2.url, lookupCache: 0 }).lookup('trust:un')).includes('127.0.0.1:4242'), 'visible')
  assert.ok(await l1.unannounce('trust:un', 4242) >= 1)
  const fresh = new g.Link({ grape: g2.url, lookupCache: 0 })
  await assert.rejects(fresh.lookup('trust:un'), (e) => e.name === 'ERR_GRAPE_LOOKUP_EMPTY')
  fresh.close()
  l1.close()
})

test('a pinned Link uses only addresses with a proof of the service key', async () => {
  const key = g.Keypair.generate()
  const worker = new g.Link(g1.url)
  worker.signAnnouncements('trust:signed', [key])
  const hijacker = new g.Link(g2.url)
  await eventually(async () => { await worker.announce('trust:signed', 5001); return true }, 'signed announce')
  await hijacker.announce('trust:signed', 5002)
  const plain = new g.Link({ grape: g3.url, lookupCache: 0 })
  await eventually(async () => (await plain.lookup('trust:signed')).length === 2, 'both announced')
  const pinned = new g.Link({ grape: g3.url, lookupCache: 0 })
  pinned.pinService('trust:signed', [key.publicHex])
  assert.deepEqual(await pinned.lookup('trust:signed'), ['127.0.0.1:5001'])
  pinned.pinService('trust:signed', [g.Keypair.generate().publicHex])
  await assert.rejects(pinned.lookup('trust:signed'), (e) => e.name === 'ERR_GRAPE_LOOKUP_EMPTY')
  assert.throws(() => pinned.pinService('trust:signed', ['zz']), (e) => e.name === 'ERR_INVALID_ARGUMENT')
  for (const l of [worker, hijacker, plain, pinned]) l.close()
})
