// A grenache-nodejs-ws 1.0.0 PeerRPCClient driven over stdin, for interop tests.
// Usage: node ws_client.js --grape URL [--key F --cert F --ca F]   (wss with a client cert)
// Each stdin line is a JSON command; each answer is one stdout line {"id", "err", "result"}:
//   {"id":1,"op":"request","key":K,"payload":P,"opts":{...}}
//   {"id":2,"op":"map","key":K,"payload":P,"opts":{...}}
// The reference client throws uncaught errors on refused connections; they are reported as
// {"event":"uncaught","message":...} instead of killing the process.
// Prints {"event":"started"} first. Exits when stdin closes.
'use strict'
const fs = require('fs')
const readline = require('readline')
const Link = require('grenache-nodejs-link')
const { PeerRPCClient } = require('grenache-nodejs-ws')

const args = process.argv.slice(2)
const opt = (n, d) => { const i = args.indexOf(n); return i >= 0 ? args[i + 1] : d }
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n')
process.on('uncaughtException', (e) => out({ event: 'uncaught', message: String(e && e.message) }))

const conf = {}
if (opt('--key')) {
  conf.secure = {
    key: fs.readFileSync(opt('--key')),
    cert: fs.readFileSync(opt('--cert')),
    ca: fs.readFileSync(opt('--ca')),
    // The CA chain is checked; the host name is not (test certs may be CN-only v1 certs).
    rejectUnauthorized: true,
    checkServerIdentity: () => undefined
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
  out({ id: cmd.id, err: 'unknown op' })
}).on('close', () => { peer.stop(); link.stop(); process.exit(0) })
out({ event: 'started' })
