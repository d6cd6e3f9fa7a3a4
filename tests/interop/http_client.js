// A grenache-nodejs-http 1.0.2 PeerRPCClient driven over stdin, for interop tests.
// Usage: node http_client.js --grape URL [--key F --cert F --ca F]   (HTTPS with a client cert)
// Each stdin line is a JSON command; each answer is one stdout line {"id", "err", "result"}:
//   {"id":1,"op":"request","key":K,"payload":P,"opts":{...}}
//   {"id":2,"op":"map","key":K,"payload":P,"opts":{...}}
//   {"id":3,"op":"stream","key":K,"body":"raw text","opts":{"headers":{...},"timeout":ms}}  (result: the raw reply text)
// Prints {"event":"started"} first. Exits when stdin closes.
'use strict'
const fs = require('fs')
const readline = require('readline')
const Link = require('grenache-nodejs-link')
const { PeerRPCClient } = require('grenache-nodejs-http')

const args = process.argv.slice(2)
const opt = (n, d) => { const i = args.indexOf(n); return i >= 0 ? args[i + 1] : d }
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n')

const conf = {}
if (opt('--key')) {
  conf.secure = {
    key: fs.readFileSync(opt('--key')),
    cert: fs.readFileSync(opt('--cert')),
    ca: fs.readFileSync(opt('--ca')),
    rejectUnauthorized: false
  }
}
const link = new Link({ grape: opt('--grape') })
link.start()
const peer = new PeerRPCClient(link, conf)
peer.init()

const answer = (id) => (err, result) => out({ id, err: err ? err.message : null, result: result === undefined ? null : result })

readline.createInterface({ input: process.stdin }).on('line', (line) => {
  let cmd
  try { cmd = JSON.parse(line) } catch (e) { return out({ id: null, err: 'bad command' }) }
  const opts = cmd.opts || {}
  if (cmd.op === 'request') return peer.request(cmd.key, cmd.payload, opts, answer(cmd.id))
  if (cmd.op === 'map') return peer.map(cmd.key, cmd.payload, opts, answer(cmd.id))
  if (cmd.op === 'stream') {
    const s = peer.stream(cmd.key, opts)
    const chunks = []
    let done = false
    const finish = (err) => { if (done) return; done = true; answer(cmd.id)(err, err ? null : Buffer.concat(chunks).toString()) }
    s.on('data', (d) => chunks.push(d))
    s.on('end', () => finish(null))
    s.on('error', (e) => finish(e))
    s.write(cmd.body)
    s.end()
    return
  }
  out({ id: cmd.id, err: 'unknown op' })
}).on('close', () => { peer.stop(); link.stop(); process.exit(0) })
out({ event: 'started' })
