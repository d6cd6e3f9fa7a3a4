// Starts one Node reference Grape (grenache-grape 1.0.0) for interop tests.
// Usage: node grape.js --dht-port N --api-port N [--bootstrap host:port,...] [--peer-max-age ms]
//                      [--host 127.0.0.1] [--verify]   (--verify: give the Grape an ed25519 verifier)
// Prints {"event":"started","dht_port":..,"api_port":..} once listening, then one JSON line per
// Grape event (ready, announce, node). Exits when stdin closes.
'use strict'
const { Grape } = require('grenache-grape')

const args = process.argv.slice(2)
function opt (name, def) {
  const i = args.indexOf(name)
  return i >= 0 ? args[i + 1] : def
}
const conf = {
  dht_port: Number(opt('--dht-port')),
  api_port: Number(opt('--api-port')),
  dht_bootstrap: (opt('--bootstrap', '') || '').split(',').filter(Boolean)
}
if (opt('--peer-max-age')) conf.dht_peer_maxAge = Number(opt('--peer-max-age'))
if (opt('--host')) conf.host = opt('--host')
if (args.includes('--verify')) {
  const crypto = require('crypto')
  conf.verify = (sig, msg, pk) => {
    const key = crypto.createPublicKey({
      key: Buffer.concat([Buffer.from('302a300506032b6570032100', 'hex'), Buffer.from(pk)]),
      format: 'der',
      type: 'spki'
    })
    return crypto.verify(null, Buffer.from(msg), key, Buffer.from(sig))
  }
}

const out = (o) => process.stdout.write(JSON.stringify(o) + '\n')
const grape = new Grape(conf)
grape.on('ready', () => out({ event: 'ready' }))
grape.on('announce', (name) => out({ event: 'announce', name }))
grape.start((err) => {
  if (err) {
    out({ event: 'error', message: String(err && err.message) })
    process.exit(1)
  }
  out({ event: 'started', dht_port: conf.dht_port, api_port: conf.api_port })
})
process.stdin.on('end', () => grape.stop(() => process.exit(0)))
process.stdin.resume()
