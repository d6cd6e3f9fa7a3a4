// Benchmark client: grenache-nodejs-http 1.0.2 PeerRPCClient through the full peer.request path
// (cached lookup, random dest), payload 'hello'.
// Usage: node http_bench.js --grape URL --key NAME --seq N --rounds R [--conc 100] [--key-file F --cert F --ca F]
// Prints one JSON line: {seq_rps, seq_p50_us, seq_p99_us, conc_rps, conc_p50_us, conc_p99_us}.
'use strict'
const fs = require('fs')
const Link = require('grenache-nodejs-link')
const { PeerRPCClient } = require('grenache-nodejs-http')

const args = process.argv.slice(2)
const opt = (n, d) => { const i = args.indexOf(n); return i >= 0 ? args[i + 1] : d }
const conf = {}
if (opt('--key-file')) {
  conf.secure = {
    key: fs.readFileSync(opt('--key-file')),
    cert: fs.readFileSync(opt('--cert')),
    ca: fs.readFileSync(opt('--ca')),
    rejectUnauthorized: false
  }
}
const link = new Link({ grape: opt('--grape') })
link.start()
const peer = new PeerRPCClient(link, conf)
peer.init()
const key = opt('--key')
const seq = Number(opt('--seq', '1000'))
const rounds = Number(opt('--rounds', '20'))
const conc = Number(opt('--conc', '100'))
const warm = Number(opt('--warmup', '300'))

const one = () => new Promise((resolve, reject) => {
  const t0 = process.hrtime.bigint()
  peer.request(key, 'hello', { timeout: 30000 }, (err, res) => {
    if (err) return reject(err)
    resolve(Number(process.hrtime.bigint() - t0) / 1000)
  })
})
const pct = (a, p) => { const s = a.slice().sort((x, y) => x - y); return s[Math.min(s.length - 1, Math.round(p / 100 * (s.length - 1)))] }

async function main () {
  for (let i = 0; i < warm; i++) await one()
  const sl = []
  let t0 = process.hrtime.bigint()
  for (let i = 0; i < seq; i++) sl.push(await one())
  const seqS = Number(process.hrtime.bigint() - t0) / 1e9
  const cl = []
  t0 = process.hrtime.bigint()
  for (let r = 0; r < rounds; r++) {
    const ps = []
    for (let i = 0; i < conc; i++) ps.push(one())
    cl.push(...(await Promise.all(ps)))
  }
  const concS = Number(process.hrtime.bigint() - t0) / 1e9
  process.stdout.write(JSON.stringify({
    seq_rps: seq / seqS, seq_p50_us: pct(sl, 50), seq_p99_us: pct(sl, 99),
    conc_rps: (rounds * conc) / concS, conc_p50_us: pct(cl, 50), conc_p99_us: pct(cl, 99)
  }) + '\n')
  peer.stop(); link.stop(); process.exit(0)
}
main().catch((e) => { process.stdout.write(JSON.stringify({ error: e.message }) + '\n'); process.exit(1) })
