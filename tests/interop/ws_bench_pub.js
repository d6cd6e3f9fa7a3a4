// Benchmark publisher for the Node reference (grenache-nodejs-ws 1.0.0 PeerPub), used by
// bench/src/bin/ws_bench.rs. Usage: node ws_bench_pub.js --grape URL --name NAME --port P
// Prints {"event":"started"} once announced. On the stdin line {"op":"go","count":M} it publishes
// M messages {"seq":i,"msg":"hello subscribers"}, yielding to the event loop every 500.
'use strict'
const readline = require('readline')
const Link = require('grenache-nodejs-link')
const { PeerPub } = require('grenache-nodejs-ws')

const args = process.argv.slice(2)
const opt = (n, d) => { const i = args.indexOf(n); return i >= 0 ? args[i + 1] : d }
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n')

const link = new Link({ grape: opt('--grape') })
link.start()
const peer = new PeerPub(link, {})
peer.init()
const service = peer.transport('server')
service.listen(Number(opt('--port')))
let started = false
const announce = () => link.announce(opt('--name'), service.port, {}, (err) => {
  if (!started && !err) { started = true; out({ event: 'started' }) }
})
announce()
setInterval(announce, 1000)

readline.createInterface({ input: process.stdin }).on('line', (line) => {
  let cmd
  try { cmd = JSON.parse(line) } catch (e) { return }
  if (cmd.op !== 'go') return
  let i = 0
  const burst = () => {
    const end = Math.min(cmd.count, i + 500)
    for (; i < end; i++) service.pub(JSON.stringify({ seq: i, msg: 'hello subscribers' }))
    if (i < cmd.count) setImmediate(burst)
  }
  burst()
}).on('close', () => { peer.stop(); link.stop(); process.exit(0) })
