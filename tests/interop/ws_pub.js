// A grenache-nodejs-ws 1.0.0 PeerPub driven over stdin, for interop tests.
// Usage: node ws_pub.js --grape URL --name NAME --port P
// Commands (one JSON per stdin line): {"op":"pub","msg":"text"} publishes a text frame;
// {"op":"count"} answers {"subscribers":N}.
// Prints {"event":"started","port":P} once announced. Exits when stdin closes.
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
  if (!started && !err) { started = true; out({ event: 'started', port: service.port }) }
})
announce()
setInterval(announce, 1000)

readline.createInterface({ input: process.stdin }).on('line', (line) => {
  let cmd
  try { cmd = JSON.parse(line) } catch (e) { return }
  if (cmd.op === 'pub') service.pub(cmd.msg)
  if (cmd.op === 'count') out({ subscribers: service._sockets.size })
}).on('close', () => { peer.stop(); link.stop(); process.exit(0) })
