// grenache-native beside the Node reference, same process, same run: RPC requests per second
// over HTTP and WS, sequential and 100 in flight, client and server both native vs both reference.
//   (cd bindings/node && npm run build) && node bindings/node/bench.js
'use strict'
const path = require('path')
const g = require('.')

const INTEROP = path.join(__dirname, '..', '..', 'tests', 'interop', 'node_modules')
const ref = (name) => require(path.join(INTEROP, name))
const RefLink = ref('grenache-nodejs-link')
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
const SECONDS = Number(process.env.BENCH_SECONDS || 3)

function freePort () {
  return new Promise((resolve) => {
    const srv = require('net').createServer()
    srv.listen(0, '127.0.0.1', () => { const { port } = srv.address(); srv.close(() => resolve(port)) })
  })
}

async function rate (ask, inFlight) {
  const end = Date.now() + SECONDS * 1000
  let n = 0
  const worker = async () => { while (Date.now() < end) { await ask(); n++ } }
  const t0 = Date.now()
  await Promise.all(Array.from({ length: inFlight }, worker))
  return n / ((Date.now() - t0) / 1000)
}

async function main () {
  const g1 = new g.Grape()
  const g2 = new g.Grape({ bootstrap: [`127.0.0.1:${g1.dhtPort}`] })
  const rows = []
  for (const [transport, pkg] of [['http', 'grenache-nodejs-http'], ['ws', 'grenache-nodejs-ws']]) {
    // Native pair.
    const l1 = new g.Link(g1.url); const l2 = new g.Link(g2.url)
    const s = new g.Server(l1, () => 'world', { transport })
    await s.announce(`bench:native:${transport}`)
    const c = new g.Client(l2, { transport })
    const dest = `127.0.0.1:${s.port}`
    await c.request(`bench:native:${transport}`, 'hello')
    const nativeAsk = () => c.request('x', 'hello', { dest })
    // Reference pair.
    const rl1 = new RefLink({ grape: g1.url }); rl1.start()
    const rl2 = new RefLink({ grape: g2.url }); rl2.start()
    const rs = new (ref(pkg).PeerRPCServer)(rl1, { timeout: 300000 }); rs.init()
    const svc = rs.transport('server'); svc.listen(await freePort())
    svc.on('request', (rid, key, payload, h) => h.reply(null, 'world'))
    await new Promise((resolve, reject) => rl1.announce(`bench:ref:${transport}`, svc.port, {}, (e) => (e ? reject(e) : resolve())))
    const rc = new (ref(pkg).PeerRPCClient)(rl2, {}); rc.init()
    const refAsk = () => new Promise((resolve, reject) => rc.request(`bench:ref:${transport}`, 'hello', { timeout: 10000 }, (e, d) => (e ? reject(e) : resolve(d))))
    for (let i = 0; i < 20; i++) await refAsk()
    for (const inFlight of [1, 100]) {
      const ours = await rate(nativeAsk, inFlight)
      const theirs = await rate(refAsk, inFlight)
      rows.push({ metric: `${transport.toUpperCase()} RPC, ${inFlight === 1 ? 'sequential' : '100 in flight'}`, ours, theirs })
      console.error(`  ${rows[rows.length - 1].metric}: native ${ours.toFixed(0)}/s, reference ${theirs.toFixed(0)}/s`)
      await sleep(200)
    }
    c.close(); s.close(); rc.stop(); rs.stop(); rl1.stop(); rl2.stop(); l1.close(); l2.close()
  }
  await g2.stop(); await g1.stop()
  console.log('\n### grenache-native vs the Node reference, in one Node process (req/s)\n')
  console.log('| metric | grenache-native | reference | ratio |')
  console.log('|---|---:|---:|---:|')
  for (const r of rows) console.log(`| ${r.metric} | ${r.ours.toFixed(0)} | ${r.theirs.toFixed(0)} | ${(r.ours / r.theirs).toFixed(1)}x |`)
  process.exit(0)
}

main().catch((e) => { console.error(e); process.exit(1) })
