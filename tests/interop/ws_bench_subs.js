// Benchmark subscribers for the Node reference (grenache-nodejs-ws 1.0.0 PeerSub), used by
// bench/src/bin/ws_bench.rs. Usage: node ws_bench_subs.js --grape URL --name NAME --n SUBS --count M
// Starts SUBS PeerSub peers on NAME, prints {"event":"ready"} once all are connected, then
// {"event":"done","secs":S} when every subscriber received M messages (timed from the first
// message any of them received). Exits when stdin closes.
'use strict'
const Link = require('grenache-nodejs-link')
const { PeerSub } = require('grenache-nodejs-ws')

const args = process.argv.slice(2)
const opt = (n, d) => { const i = args.indexOf(n); return i >= 0 ? args[i + 1] : d }
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n')
const n = Number(opt('--n'))
const count = Number(opt('--count'))

const link = new Link({ grape: opt('--grape') })
link.start()
let connected = 0
let finished = 0
let t0 = null
for (let i = 0; i < n; i++) {
  const peer = new PeerSub(link, {})
  peer.init()
  let got = 0
  peer.on('connected', () => { if (++connected === n) out({ event: 'ready' }) })
  peer.on('message', () => {
    if (t0 === null) t0 = process.hrtime.bigint()
    if (++got === count && ++finished === n) {
      out({ event: 'done', secs: Number(process.hrtime.bigint() - t0) / 1e9 })
    }
  })
  peer.on('error', (e) => out({ event: 'error', message: String(e && e.message) }))
  peer.sub(opt('--name'), { timeout: 10000 })
}
process.stdin.on('end', () => process.exit(0))
process.stdin.resume()
