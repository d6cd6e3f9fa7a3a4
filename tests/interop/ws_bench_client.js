// Benchmark client for the Node reference (grenache-nodejs-ws 1.0.0 PeerRPCClient), used by
// bench/src/bin/ws_bench.rs. Usage:
//   node ws_bench_client.js --grape URL --key K --warmup N --seq N --rounds R --conc C
// Runs N sequential requests, then R rounds of C concurrent requests (each round waits for all),
// payload 'hello' -> 'world', through the full peer.request path (cached lookup).
// Prints one JSON line {seq_rps, seq_lat_us:[...sorted?], conc_rps, ...} and exits.
'use strict'
const Link = require('grenache-nodejs-link')
const { PeerRPCClient } = require('grenache-nodejs-ws')

const args = process.argv.slice(2)
const opt = (n, d) => { const i = args.indexOf(n); return i >= 0 ? args[i + 1] : d }
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n')
const key = opt('--key')
const warmup = Number(opt('--warmup', 300))
const seq = Number(opt('--seq', 5000))
const rounds = Number(opt('--rounds', 100))
const conc = Number(opt('--conc', 100))

const link = new Link({ grape: opt('--grape') })
link.start()
const peer = new PeerRPCClient(link, {})
peer.init()

const now = () => process.hrtime.bigint()
const req = () => new Promise((resolve, reject) => {
  peer.request(key, 'hello', { timeout: 10000 }, (err, res) => {
    if (err) return reject(err)
    if (res !== 'world') return reject(new Error('bad reply ' + res))
    resolve()
  })
})
const pct = (a, p) => { if (!a.length) return 0; const s = a.slice().sort((x, y) => x - y); return s[Math.min(s.length - 1, Math.round(p / 100 * (s.length - 1)))] }

;(async () => {
  for (let i = 0; i < warmup; i++) await req()
  const seqLat = []
  let t0 = now()
  for (let i = 0; i < seq; i++) {
    const a = now()
    await req()
    seqLat.push(Number(now() - a) / 1000)
  }
  const seqSecs = Number(now() - t0) / 1e9
  const concLat = []
  t0 = now()
  for (let r = 0; r < rounds; r++) {
    const ps = []
    for (let i = 0; i < conc; i++) {
      const a = now()
      ps.push(req().then(() => concLat.push(Number(now() - a) / 1000)))
    }
    await Promise.all(ps)
  }
  const concSecs = Number(now() - t0) / 1e9
  out({
    seq_rps: seq / seqSecs,
    seq_p50_us: pct(seqLat, 50),
    seq_p99_us: pct(seqLat, 99),
    conc_rps: (rounds * conc) / concSecs,
    conc_p50_us: pct(concLat, 50),
    conc_p99_us: pct(concLat, 99)
  })
  peer.stop()
  link.stop()
  process.exit(0)
})().catch((e) => { out({ error: String(e && e.message) }); process.exit(1) })
