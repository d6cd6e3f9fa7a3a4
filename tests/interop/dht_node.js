// A bare bittorrent-dht 10.0.0 node (what Node Grapes run), driven over stdin, for DHT interop tests.
// Usage: node dht_node.js [--bootstrap host:port,...] [--max-age ms] [--no-verify]
//   --no-verify: no ed25519 verifier, like a stock grenache-grape 1.0.0 (mutable puts get KRPC 400)
// Prints {"event":"listening","port":N,"id":"<hex>"} once bound on 127.0.0.1, then one JSON line per
// event ("ready", "announce" with name/host/port, "node") and one {"re":<id>,...} line per command.
// Commands are JSON lines on stdin:
//   {"id":1,"cmd":"announce","name":"<utf8 name>","port":N}      -> {"re":1,"err":null|msg,"n":hits}
//   {"id":2,"cmd":"lookup","name":"<utf8 name>"}                 -> {"re":2,"err":..,"peers":["ip:port",..]}
//   {"id":3,"cmd":"put","v":"<utf8>"}                            -> {"re":3,"err":..,"hash":"<hex>","n":N}
//   {"id":4,"cmd":"put_mutable","v":"<utf8>","seq":1,"salt":"<utf8>"?,"seed":"<32-byte hex>"}
//                                                                -> {"re":4,"err":..,"code":..,"hash":"<hex>"}
//   {"id":5,"cmd":"get","hash":"<hex>","salt":"<utf8>"?}         -> {"re":5,"err":..,"v":"<utf8>"|null,"seq":..}
//   {"id":6,"cmd":"add_node","host":"127.0.0.1","port":N}       -> {"re":6}
//   {"id":7,"cmd":"nodes"}                                       -> {"re":7,"count":N}
// Exits when stdin closes.
'use strict'
const crypto = require('crypto')
const readline = require('readline')
const DHT = require('bittorrent-dht')

const args = process.argv.slice(2)
function opt (name, def) {
  const i = args.indexOf(name)
  return i >= 0 ? args[i + 1] : def
}

const out = (o) => process.stdout.write(JSON.stringify(o) + '\n')
const SPKI = Buffer.from('302a300506032b6570032100', 'hex')
const PKCS8 = Buffer.from('302e020100300506032b657004220420', 'hex')

function verify (sig, msg, pk) {
  try {
    const key = crypto.createPublicKey({ key: Buffer.concat([SPKI, Buffer.from(pk)]), format: 'der', type: 'spki' })
    return crypto.verify(null, Buffer.from(msg), key, Buffer.from(sig))
  } catch (e) {
    return false
  }
}

const dht = new DHT({
  bootstrap: (opt('--bootstrap', '') || '').split(',').filter(Boolean),
  maxAge: Number(opt('--max-age', '120000')),
  verify: args.includes('--no-verify') ? undefined : verify
})
dht.on('ready', () => out({ event: 'ready' }))
dht.on('announce', (peer, ih) => out({ event: 'announce', name: Buffer.from(ih).toString('utf8'), host: peer.host, port: peer.port }))
dht.on('node', () => out({ event: 'node' }))
dht.on('warning', (w) => out({ event: 'warning', message: String(w && w.message) }))
dht.on('error', (e) => out({ event: 'error', message: String(e && e.message) }))

dht.listen(0, '127.0.0.1', () => {
  out({ event: 'listening', port: dht.address().port, id: dht.nodeId.toString('hex') })
})

function hexName (name) { return Buffer.from(name, 'utf8').toString('hex') }

function handle (c) {
  const re = c.id
  switch (c.cmd) {
    case 'announce':
      return dht.announce(hexName(c.name), c.port, (err, n) => out({ re, err: err ? err.message : null, code: err && err.code, n }))
    case 'lookup': {
      const peers = new Set()
      const ih = Buffer.from(c.name, 'utf8')
      const onpeer = (peer, infoHash) => {
        if (Buffer.from(infoHash).equals(ih)) peers.add(peer.host + ':' + peer.port)
      }
      dht.on('peer', onpeer)
      return dht.lookup(hexName(c.name), (err) => {
        setImmediate(() => {
          dht.removeListener('peer', onpeer)
          out({ re, err: err ? err.message : null, peers: [...peers] })
        })
      })
    }
    case 'put':
      return dht.put({ v: Buffer.from(c.v, 'utf8') }, (err, hash, n) => out({ re, err: err ? err.message : null, hash: hash && Buffer.from(hash).toString('hex'), n }))
    case 'put_mutable': {
      const priv = crypto.createPrivateKey({ key: Buffer.concat([PKCS8, Buffer.from(c.seed, 'hex')]), format: 'der', type: 'pkcs8' })
      const pub = crypto.createPublicKey(priv).export({ format: 'der', type: 'spki' }).slice(-32)
      const o = { k: pub, seq: c.seq, v: Buffer.from(c.v, 'utf8'), sign: (buf) => crypto.sign(null, buf, priv) }
      if (c.salt) o.salt = Buffer.from(c.salt, 'utf8')
      if (typeof c.cas === 'number') o.cas = c.cas
      return dht.put(o, (err, hash, n) => out({ re, err: err ? err.message : null, code: err && err.code, hash: hash && Buffer.from(hash).toString('hex'), n }))
    }
    case 'get': {
      const o = { cache: false }
      if (c.salt) o.salt = Buffer.from(c.salt, 'utf8')
      return dht.get(c.hash, o, (err, res) => out({
        re,
        err: err ? err.message : null,
        v: res ? Buffer.from(res.v).toString('utf8') : null,
        seq: res && typeof res.seq === 'number' ? res.seq : null,
        k: res && res.k ? Buffer.from(res.k).toString('hex') : null
      }))
    }
    case 'add_node':
      dht.addNode({ host: c.host, port: c.port })
      return out({ re })
    case 'nodes':
      return out({ re, count: dht.toJSON().nodes.length })
    default:
      return out({ re, err: 'unknown command' })
  }
}

const rl = readline.createInterface({ input: process.stdin })
rl.on('line', (line) => {
  let c
  try { c = JSON.parse(line) } catch (e) { return out({ event: 'bad-command', line }) }
  try { handle(c) } catch (e) { out({ re: c.id, err: String(e && e.message) }) }
})
rl.on('close', () => { dht.destroy(() => process.exit(0)) })
