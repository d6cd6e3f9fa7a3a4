// A grenache-nodejs-ws 1.0.0 PeerRPCServer for interop tests and benchmarks.
// Usage: node ws_server.js --grape URL --name NAME --port P
//                          [--key F --cert F --ca F [--allow FINGERPRINT]]   (wss; verifyClient)
// Handler: "hello" -> "world"; "fail" -> Error('ERR_BOOM'); {sleep: ms, v} -> v after ms;
// otherwise {from:'node', key, payload, fingerprint} (fingerprint of the client cert, or null).
// With --allow, verifyClient accepts only that SHA-1 fingerprint (others get HTTP 401);
// without it, every client with a certificate is accepted.
// Prints {"event":"started","port":P} once announced. Exits when stdin closes.
'use strict'
const fs = require('fs')
const Link = require('grenache-nodejs-link')
const { PeerRPCServer } = require('grenache-nodejs-ws')

const args = process.argv.slice(2)
const opt = (n, d) => { const i = args.indexOf(n); return i >= 0 ? args[i + 1] : d }
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n')
const port = Number(opt('--port'))
const name = opt('--name')

const conf = {}
if (opt('--key')) {
  const allow = opt('--allow')
  conf.secure = {
    key: fs.readFileSync(opt('--key')),
    cert: fs.readFileSync(opt('--cert')),
    ca: fs.readFileSync(opt('--ca')),
    rejectUnauthorized: false,
    verifyClient: (info, cb) => {
      const cert = info.req.socket.getPeerCertificate()
      const fp = cert && cert.fingerprint
      out({ event: 'verify', fingerprint: fp || null })
      if (!fp || (allow && fp !== allow)) return cb(false, 401, 'Forbidden')
      cb(true)
    }
  }
}

const link = new Link({ grape: opt('--grape') })
link.start()
const peer = new PeerRPCServer(link, conf)
peer.init()
const service = peer.transport('server')
service.listen(port)

service.on('request', (rid, key, payload, handler, cert) => {
  if (payload === 'hello') return handler.reply(null, 'world')
  if (payload === 'fail') return handler.reply(new Error('ERR_BOOM'))
  if (payload && typeof payload === 'object' && payload.sleep !== undefined) {
    return setTimeout(() => handler.reply(null, payload.v === undefined ? null : payload.v), payload.sleep)
  }
  handler.reply(null, { from: 'node', key, payload, fingerprint: cert ? cert.fingerprint : null })
})

let started = false
const announce = () => link.announce(name, service.port, {}, (err) => {
  if (!started && !err) { started = true; out({ event: 'started', port: service.port }) }
})
announce()
setInterval(announce, 1000)
process.stdin.on('end', () => { peer.stop(); link.stop(); process.exit(0) })
process.stdin.resume()
