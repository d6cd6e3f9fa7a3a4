// A grenache-nodejs-http 1.0.2 PeerRPCServer for interop tests.
// Usage: node http_server.js --grape URL --name NAME --port P [--streaming] [--bench]
//                            [--key F --cert F --ca F]   (HTTPS, client certs requested)
// Buffered handler ('request'): payload "fail" -> Error('ERR_BOOM'); {sleep: ms} -> answers after ms;
// otherwise {from:'node', port, key, payload, meta:{isStream,compress,infoHeaders,action,args}, fingerprint}.
// --streaming (disableBuffered): every request goes to the 'stream' event; a request with _gr is
// answered with the raw text `node-stream:<rid>:<key>:<action>:<args JSON>:<content-type>:<body>`,
// one without _gr is parsed as an envelope and answered {from:'node-stream', payload}.
// Prints {"event":"started","port":P} once announced. Exits when stdin closes.
'use strict'
const fs = require('fs')
const Link = require('grenache-nodejs-link')
const { PeerRPCServer } = require('grenache-nodejs-http')

const args = process.argv.slice(2)
const opt = (n, d) => { const i = args.indexOf(n); return i >= 0 ? args[i + 1] : d }
const port = Number(opt('--port'))
const name = opt('--name')
const streaming = args.includes('--streaming')
const bench = args.includes('--bench') // answer every request 'world' (benchmarks)
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n')

const conf = { timeout: 300000, disableBuffered: streaming }
if (opt('--key')) {
  conf.secure = {
    key: fs.readFileSync(opt('--key')),
    cert: fs.readFileSync(opt('--cert')),
    ca: fs.readFileSync(opt('--ca')),
    requestCert: true,
    rejectUnauthorized: false
  }
}

const link = new Link({ grape: opt('--grape') })
link.start()
const peer = new PeerRPCServer(link, conf)
peer.init()
const service = peer.transport('server')
service.listen(port)

service.on('request', (rid, key, payload, handler, cert, meta) => {
  if (bench) return handler.reply(null, 'world')
  if (payload === 'fail') return handler.reply(new Error('ERR_BOOM'))
  const result = {
    from: 'node',
    port,
    rid,
    key,
    payload,
    meta: { isStream: meta.isStream, compress: meta.compress, infoHeaders: meta.infoHeaders || null, action: meta.action, args: meta.args },
    fingerprint: cert && cert.fingerprint ? cert.fingerprint : null
  }
  if (payload && payload.sleep) return setTimeout(() => handler.reply(null, result), payload.sleep)
  handler.reply(null, result)
})

service.on('stream', (req, res, meta, handler) => {
  if (!streaming) return
  const chunks = []
  req.on('data', (d) => chunks.push(d))
  req.on('end', () => {
    const body = Buffer.concat(chunks)
    if (meta.infoHeaders) {
      const [rid, key] = meta.infoHeaders
      res.write(`node-stream:${rid}:${key}:${meta.action}:${JSON.stringify(meta.args)}:${req.headers['content-type'] || ''}:${body.toString()}`)
      res.end()
      return
    }
    const [rid, , payload] = JSON.parse(body.toString())
    handler.reply(rid, null, { from: 'node-stream', payload })
  })
})

let started = false
link.startAnnouncing(name, service.port, { interval: 1000 }, (err) => {
  if (err) { out({ event: 'error', message: err.message }); process.exit(1) }
  if (!started) { started = true; out({ event: 'started', port }) }
})

process.stdin.on('end', () => { peer.stop(); link.stop(); process.exit(0) })
process.stdin.resume()
