// The bounded busy-poll before Node's loop sleeps (src/spin.rs, `GRENACHE_NODE_POLL_US`): with
// it on, a sequential client and server in two processes get every reply right, the client's
// spins find the replies, and a client that sent nothing since its last fruitless spin does not
// spin while it waits for a timer; with it off (the default) nothing spins.
//   node --test bindings/node/test/spin.test.js
'use strict'

const { test } = require('node:test')
const assert = require('node:assert/strict')
const { spawn } = require('child_process')
const readline = require('readline')
const path = require('path')

const LIB = JSON.stringify(path.join(__dirname, '..', 'lib'))
const noLink = '{ lookup () { throw new Error("no lookups") } }'

const SERVER = `
const ws = require(${LIB} + '/ws')
const peer = new ws.PeerRPCServer(${noLink}, {})
peer.init()
const t = peer.transport('server')
t.listen(0)
t.on('request', (rid, key, payload, handler) => handler.reply(null, payload + 1))
console.log(t.port)
process.stdin.on('end', () => process.exit(0)).resume()
`

const CLIENT = (port) => `
const ws = require(${LIB} + '/ws')
const native = require(${LIB} + '/native')
const peer = new ws.PeerRPCClient(${noLink}, {})
peer.init()
const t = peer.transport('127.0.0.1:${port}')
const ask = (n) => new Promise((resolve, reject) => t.request('k', n, { timeout: 10000 }, (e, r) => e ? reject(e) : resolve(r)))
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
;(async () => {
  for (let i = 0; i < 2000; i++) if (await ask(i) !== i + 1) throw new Error('wrong reply to ' + i)
  const [busySpins, busyHits] = native.spinStats()
  // Sparse: one request every 20 ms.
  for (let i = 0; i < 30; i++) { await ask(i); await sleep(20) }
  const [spins] = native.spinStats()
  console.log(JSON.stringify({ busySpins, busyHits, sparseSpins: spins - busySpins }))
  peer.stop()
  process.exit(0)
})().catch((e) => { console.error(e); process.exit(1) })
`

function run (code, env) {
  const p = spawn(process.execPath, ['-e', code], { env: { ...process.env, ...env }, stdio: ['pipe', 'pipe', 'inherit'] })
  const line = new Promise((resolve) => readline.createInterface({ input: p.stdout }).once('line', resolve))
  return { p, line }
}

for (const spinUs of ['200', '0']) {
  test(`spin: GRENACHE_NODE_POLL_US=${spinUs}: a sequential client and server in two processes`, { timeout: 60000 }, async () => {
    const env = { GRENACHE_NODE_POLL_US: spinUs }
    const server = run(SERVER, env)
    try {
      const port = Number(await server.line)
      const client = run(CLIENT(port), env)
      const out = JSON.parse(await client.line)
      const code = await new Promise((resolve) => client.p.on('exit', resolve))
      assert.equal(code, 0)
      if (spinUs === '0') {
        assert.deepEqual(out, { busySpins: 0, busyHits: 0, sparseSpins: 0 })
        return
      }
      assert.ok(out.busySpins > 0, `spins while busy: ${JSON.stringify(out)}`)
      assert.ok(out.busyHits > out.busySpins / 2, `most spins of a sequential client find its reply: ${JSON.stringify(out)}`)
      // Sparse: after a request, a spin that finds its reply, then at most one that finds
      // nothing; none while the loop waits for the next timer with nothing sent since.
      assert.ok(out.sparseSpins <= 2 * 30 + 4, `at most two spins per request sent: ${JSON.stringify(out)}`)
    } finally {
      server.p.stdin.end()
    }
  })
}
