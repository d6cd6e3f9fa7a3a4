// Tests of the reference-compatible modules (grenache-native/grape, /link, /http, /ws) against the
// Node reference packages (tests/interop, installed by scripts/test.sh) in both directions:
// a reference client against our server and ours against a reference server over HTTP, HTTPS
// with client certificates, WS and WSS; PeerPub/PeerSub both ways; misuse (request before init,
// a busy port, a handler that throws or never replies, stop twice, a callback that throws) and
// process lifetime (child processes that must exit by themselves once everything is stopped).
// The reference's own mocha suites run from test-reference.js.
//   node --test bindings/node/test/
'use strict'

const { test, before, after } = require('node:test')
const assert = require('node:assert/strict')
const fs = require('fs')
const path = require('path')
const net = require('net')
const { spawn } = require('child_process')

const INTEROP = path.join(__dirname, '..', '..', '..', 'tests', 'interop', 'node_modules')
const ref = {
  Link: require(path.join(INTEROP, 'grenache-nodejs-link')),
  http: require(path.join(INTEROP, 'grenache-nodejs-http')),
  ws: require(path.join(INTEROP, 'grenache-nodejs-ws'))
}
const ours = {
  Grape: require('../lib/grape').Grape,
  Link: require('../lib/link'),
  http: require('../lib/http'),
  ws: require('../lib/ws')
}

const CERTS = path.join(INTEROP, 'grenache-nodejs-http', 'test', 'certs')
const cert = (f) => fs.readFileSync(path.join(CERTS, f))
const CLIENT1 = 'E1:63:C1:46:B3:B6:46:3B:5E:92:98:34:40:A1:AB:FB:0E:92:D0:76'
const serverSecure = () => ({ key: cert('server-key.pem'), cert: cert('server-crt.pem'), ca: cert('ca-crt.pem'), requestCert: true, rejectUnauthorized: false })
const clientSecure = () => ({ key: cert('client1-key.pem'), cert: cert('client1-crt.pem'), ca: cert('ca-crt.pem'), rejectUnauthorized: false })

function freePort () {
  return new Promise((resolve, reject) => {
    const srv = net.createServer()
    srv.on('error', reject)
    srv.listen(0, () => {
      const { port } = srv.address()
      srv.close(() => resolve(port))
    })
  })
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
const cb2p = (fn) => new Promise((resolve, reject) => fn((err, res) => (err ? reject(err) : resolve(res))))

async function eventually (check, what, timeout = 20000) {
  const deadline = Date.now() + timeout
  let last
  while (Date.now() < deadline) {
    try {
      const v = await check()
      if (v) return v
    } catch (e) {
      last = e
    }
    await sleep(50)
  }
  throw new Error(`${what}: not reached in ${timeout} ms (last error: ${last && last.message})`)
}

let grapes = []
let grapeUrl
const links = []
const stops = []

before(async () => {
  const [a1, a2] = [await freePort(), await freePort()]
  const g1 = new ours.Grape({ dht_port: 0, api_port: a1, host: '127.0.0.1' })
  await cb2p((cb) => g1.start(cb))
  const g2 = new ours.Grape({ dht_port: 0, api_port: a2, host: '127.0.0.1', dht_bootstrap: [`127.0.0.1:${g1.dht_port}`] })
  const ready = new Promise((resolve) => g2.once('ready', resolve))
  await cb2p((cb) => g2.start(cb))
  await ready
  grapes = [g1, g2]
  grapeUrl = [`http://127.0.0.1:${a1}`, `http://127.0.0.1:${a2}`]
})

after(async () => {
  for (const s of stops.reverse()) {
    try { s() } catch (_) {}
  }
  for (const l of links) l.stop()
  for (const g of grapes) await cb2p((cb) => g.stop(cb))
})

// A started Link of `impl` ('ours' or 'ref') on Grape `i`.
function link (impl, i = 0) {
  const L = impl === 'ours' ? ours.Link : ref.Link
  const l = new L({ grape: grapeUrl[i] })
  l.start()
  links.push(l)
  return l
}

// Stops a server transport. The reference's WSS transport leaves its https server listening and
// its PeerPub transport has no stop at all (both keep the process alive): close those here.
function stopService (service) {
  const socket = service.socket
  service.stop()
  if (socket && socket.options && socket.options.server) socket.options.server.close()
  if (socket && typeof socket.close === 'function') socket.close()
}

let serial = 0
// A server of `impl` on `kind` ('http'|'ws'), announced under a fresh name; returns { name, service, peer }.
async function serve (impl, kind, { secure, verifyClient, onRequest } = {}) {
  const mod = (impl === 'ours' ? ours : ref)[kind]
  const l = link(impl, 0)
  const conf = {}
  if (secure) conf.secure = { ...serverSecure(), ...(verifyClient ? { verifyClient } : {}) }
  const peer = new mod.PeerRPCServer(l, conf)
  peer.init()
  const service = peer.transport('server')
  service.listen(await freePort())
  stops.push(() => stopService(service))
  service.on('request', onRequest || ((rid, key, payload, handler, certInfo) => {
    if (payload === 'fail') return handler.reply(new Error('ERR_APP_FAILED'))
    handler.reply(null, { echo: payload, rid: typeof rid, key, fingerprint: certInfo ? certInfo.fingerprint : null })
  }))
  const name = `dropin:${impl}:${kind}:${++serial}`
  await cb2p((cb) => l.announce(name, service.port, {}, cb))
  return { name, service, peer }
}

function client (impl, kind, { secure } = {}) {
  const mod = (impl === 'ours' ? ours : ref)[kind]
  const peer = new mod.PeerRPCClient(link(impl, 1), secure ? { secure: clientSecure() } : {})
  peer.init()
  stops.push(() => peer.stop())
  return peer
}

const request = (peer, name, payload, opts = { timeout: 10000 }) => cb2p((cb) => peer.request(name, payload, opts, cb))

// Mixed directions: every pair (client impl, server impl) except ref/ref, over each transport.
for (const kind of ['http', 'ws']) {
  for (const secure of [false, true]) {
    for (const [c, s] of [['ref', 'ours'], ['ours', 'ref'], ['ours', 'ours']]) {
      const label = `${kind}${secure ? ' over TLS with client certificates' : ''}: ${c} client -> ${s} server`
      test(label, async () => {
        const seen = []
        const verifyClient = (info, cb) => {
          const fp = info.req.socket.getPeerCertificate().fingerprint
          seen.push(fp)
          cb(fp === CLIENT1)
        }
        const { name } = await serve(s, kind, { secure, verifyClient: kind === 'ws' && secure ? verifyClient : undefined })
        const peer = client(c, kind, { secure })
        const res = await eventually(() => request(peer, name, { hello: 'world' }), `request to ${name}`)
        assert.deepEqual(res.echo, { hello: 'world' })
        assert.equal(res.rid, 'string')
        assert.equal(res.key, name)
        assert.equal(res.fingerprint, secure ? CLIENT1 : null)
        if (kind === 'ws' && secure) assert.ok(seen.includes(CLIENT1), 'verifyClient saw the client certificate')
        // An application error reaches the client as Error(message).
        await assert.rejects(request(peer, name, 'fail'), (e) => e.message === 'ERR_APP_FAILED')
        // map over the one worker.
        const all = await cb2p((cb) => peer.map(name, 'm', { timeout: 10000 }, cb))
        assert.deepEqual(all.map((r) => r.echo), ['m'])
      })
    }
  }
}

test('wss: verifyClient refusing a client certificate fails its requests, the server stays up', async () => {
  const { name } = await serve('ours', 'ws', { secure: true, verifyClient: (info, cb) => cb(false) })
  const peer = client('ours', 'ws', { secure: true })
  await assert.rejects(request(peer, name, 'x', { timeout: 5000 }), (e) => e.message === 'ERR_TRANSPORT_CLOSE')
})

test('http: compress round trip between ours and the reference', async () => {
  for (const [c, s] of [['ref', 'ours'], ['ours', 'ref']]) {
    const { name } = await serve(s, 'http')
    const peer = client(c, 'http')
    const res = await eventually(() => request(peer, name, 'zip', { timeout: 10000, compress: true }), 'compressed request')
    assert.equal(res.echo, 'zip')
  }
})

for (const [p, s] of [['ref', 'ours'], ['ours', 'ref'], ['ours', 'ours']]) {
  test(`pub/sub: ${p} PeerPub -> ${s} PeerSub`, async () => {
    const pl = link(p, 0)
    const pub = new (p === 'ours' ? ours : ref).ws.PeerPub(pl, {})
    pub.init()
    const service = pub.transport('server')
    service.listen(await freePort())
    stops.push(() => stopService(service))
    const name = `dropin:pub:${p}:${++serial}`
    await cb2p((cb) => pl.announce(name, service.port, {}, cb))
    const sub = new (s === 'ours' ? ours : ref).ws.PeerSub(link(s, 1), {})
    sub.init()
    const got = []
    let connected = false
    sub.on('connected', () => { connected = true })
    sub.on('message', (m) => got.push(String(m)))
    // The reference's PeerSub.stop() leaves its transports (and their timers) running: keep
    // them to stop them here.
    const transports = []
    const make = sub.transport.bind(sub)
    sub.transport = (...args) => {
      const t = make(...args)
      transports.push(t)
      return t
    }
    stops.push(() => {
      sub.stop()
      for (const t of transports) t.stop()
    })
    sub.sub(name, { timeout: 10000 })
    await eventually(() => connected, 'subscriber connected')
    await eventually(() => {
      service.pub(JSON.stringify({ n: 1 }))
      return got.length > 0
    }, 'message received')
    assert.deepEqual(JSON.parse(got[0]), { n: 1 })
  })
}

test('grape: lookup and announce through the Grape class, events', async () => {
  const [g1] = grapes
  const announced = new Promise((resolve) => g1.once('announce', resolve))
  const n = await cb2p((cb) => g1.announce('dropin:grape', 4242, cb))
  assert.ok(n >= 0)
  assert.equal(await announced, 'dropin:grape')
  const peers = await eventually(() => cb2p((cb) => grapes[1].lookup('dropin:grape', cb)).then((p) => p.length && p), 'lookup')
  assert.ok(peers.some((p) => p.endsWith(':4242')))
  await assert.rejects(cb2p((cb) => g1.announce('x', 'notaport', cb)), /ERR_GRAPE_SERVICE_PORT/)
})

test('grape: a lookup inside the lookup window answers from the cache, later, like a walk', async () => {
  const g = grapes[1]
  await cb2p((cb) => grapes[0].announce('dropin:window', 4343, cb))
  const walked = await eventually(() => cb2p((cb) => g.lookup('dropin:window', cb)).then((p) => p.length && p), 'lookup')
  assert.ok(walked.length === 1 && walked[0].endsWith(':4343'), walked)
  // The walk that just found it opened the window (100 ms by default): the next lookup is
  // answered on the JS thread, from the same cache a walk would answer from.
  assert.equal(typeof g._g.lookupInWindow('dropin:window'), 'string')
  const order = []
  const peers = await new Promise((resolve, reject) => {
    g.lookup('dropin:window', (err, p) => {
      order.push('cb')
      return err ? reject(err) : resolve(p)
    })
    order.push('returned')
    process.nextTick(() => order.push('tick'))
  })
  assert.deepEqual(peers, walked)
  assert.deepEqual(order, ['returned', 'tick', 'cb'], 'the callback comes in a later turn of the event loop')
  assert.equal(g._g.lookupInWindow('dropin:nobody'), null, 'a name never walked is not answered from the window')
  assert.deepEqual(await cb2p((cb) => g.lookup('dropin:nobody', cb)), [])
})

test('link: put/get, empty lookup, missing args', async () => {
  const l = link('ours', 0)
  const hash = await cb2p((cb) => l.put({ v: 'hello world' }, cb))
  assert.equal(hash, '6d33adc2b6b2c14c3036feefb7fedbca1a880527')
  const item = await eventually(() => cb2p((cb) => l.get(hash, cb)), 'get')
  assert.equal(item.v, 'hello world')
  await assert.rejects(cb2p((cb) => l.lookup('dropin:nobody', cb)), /ERR_GRAPE_LOOKUP_EMPTY/)
  assert.throws(() => l.put({ v: 1 }), /ERR_MISSING_ARGS/)
  assert.equal(l.stopAnnouncing('x', 1), false)
})

test('misuse: request before init() is a clear error, not a crash', async () => {
  for (const kind of ['http', 'ws']) {
    const peer = new ours[kind].PeerRPCClient(link('ours', 1), {})
    await assert.rejects(request(peer, 'x', 'y'), /ERR_PEER_NOT_INITIALIZED/)
  }
})

test('misuse: listen on a busy port throws a clear error', async () => {
  const blocker = net.createServer()
  await new Promise((resolve) => blocker.listen(0, resolve))
  const port = blocker.address().port
  try {
    for (const kind of ['http', 'ws']) {
      const peer = new ours[kind].PeerRPCServer(link('ours', 0), {})
      peer.init()
      assert.throws(() => peer.transport('server').listen(port), (e) => e.code === 'EADDRINUSE' && e.message === `listen EADDRINUSE: address already in use :::${port}`)
    }
  } finally {
    blocker.close()
  }
})

test('misuse: a handler that throws answers the client with its message; stop() twice is harmless', async () => {
  for (const kind of ['http', 'ws']) {
    const warnings = []
    const { name, service } = await serve('ours', kind, { onRequest: () => { throw new Error('ERR_HANDLER_THREW') } })
    service.on('error', (e) => warnings.push(e.message))
    const peer = client('ref', kind)
    await assert.rejects(eventually(() => request(peer, name, 'x').catch((e) => { if (e.message === 'ERR_HANDLER_THREW') throw e }), 'reply', 8000),
      (e) => /ERR_HANDLER_THREW/.test(e.message))
    assert.deepEqual(warnings.slice(0, 1), ['ERR_HANDLER_THREW'])
    service.stop()
    service.stop()
    peer.stop()
    peer.stop()
  }
})

test('misuse: a handler that never replies: the client times out', async () => {
  for (const kind of ['http', 'ws']) {
    const { name } = await serve('ours', kind, { onRequest: () => {} })
    const peer = client('ours', kind)
    const t0 = Date.now()
    const err = await eventually(() => request(peer, name, 'x', { timeout: 500 }).then(() => false, (e) => e.message === 'ERR_TIMEOUT' && e), 'ERR_TIMEOUT', 8000)
    assert.equal(err.message, 'ERR_TIMEOUT')
    assert.ok(Date.now() - t0 < 8000)
  }
})

// Runs `code` in a child process (with `ours`/`ref` loaded and Grape URLs in GRAPES); resolves
// with { code, signal, out, ms }. The child is killed after `limit` ms (signal SIGKILL then).
function child (code, limit = 15000) {
  const prelude = `
    const path = require('path')
    const ours = { Link: require(${JSON.stringify(path.join(__dirname, '..', 'lib', 'link'))}), http: require(${JSON.stringify(path.join(__dirname, '..', 'lib', 'http'))}), ws: require(${JSON.stringify(path.join(__dirname, '..', 'lib', 'ws'))}) }
    const GRAPES = ${JSON.stringify(grapeUrl)}
  `
  return new Promise((resolve) => {
    const t0 = Date.now()
    const p = spawn(process.execPath, ['-e', prelude + code], { stdio: ['ignore', 'pipe', 'pipe'] })
    let out = ''
    p.stdout.on('data', (d) => { out += d })
    p.stderr.on('data', (d) => { out += d })
    const timer = setTimeout(() => p.kill('SIGKILL'), limit)
    p.on('exit', (code, signal) => {
      clearTimeout(timer)
      resolve({ code, signal, out, ms: Date.now() - t0 })
    })
  })
}

test('lifetime: a started peer keeps the process alive; once stopped the process exits', async () => {
  for (const kind of ['http', 'ws']) {
    const alive = await child(`
      const l = new ours.Link({ grape: GRAPES[0] }).start()
      const s = new ours.${kind}.PeerRPCServer(l, {}); s.init()
      const t = s.transport('server').listen(0)
      const c = new ours.${kind}.PeerRPCClient(l, {}); c.init()
      t.on('request', (rid, key, payload, h) => h.reply(null, payload))
      c.transport('127.0.0.1:' + t.port).request('k', 'v', { timeout: 5000 }, (err, res) => {
        console.log('reply', err && err.message, res)
        setTimeout(() => { c.stop(); t.stop(); l.stop(); console.log('stopped') }, ${kind === 'http' ? 100 : 100})
      })
    `)
    assert.equal(alive.signal, null, `${kind}: the process did not exit after stop(): ${alive.out}`)
    assert.equal(alive.code, 0, alive.out)
    assert.match(alive.out, /reply null v/)
    const held = await child(`
      const l = new ours.Link({ grape: GRAPES[0] })
      const s = new ours.${kind}.PeerRPCServer(l, {}); s.init()
      s.transport('server').listen(0)
      console.log('listening')
    `, 1500)
    assert.equal(held.signal, 'SIGKILL', `${kind}: a listening server must keep the process alive: ${held.out}`)
  }
})

test('misuse: a callback that throws reaches uncaughtException; the peer keeps working and the process exits after stop()', async () => {
  const r = await child(`
    let caught = 0
    process.on('uncaughtException', (e) => { caught++; console.log('uncaught', e.message) })
    const l = new ours.Link({ grape: GRAPES[0] }).start()
    const s = new ours.ws.PeerRPCServer(l, {}); s.init()
    const t = s.transport('server').listen(0)
    t.on('request', (rid, key, payload, h) => h.reply(null, payload))
    const c = new ours.ws.PeerRPCClient(l, {}); c.init()
    const tr = c.transport('127.0.0.1:' + t.port)
    tr.request('k', 1, { timeout: 5000 }, () => { throw new Error('boom') })
    setTimeout(() => tr.request('k', 2, { timeout: 5000 }, (err, res) => {
      console.log('second', err && err.message, res, 'caught', caught)
      c.stop(); t.stop(); l.stop()
    }), 300)
  `)
  assert.equal(r.signal, null, r.out)
  assert.equal(r.code, 0, r.out)
  assert.match(r.out, /uncaught boom/)
  assert.match(r.out, /second null 2 caught 1/)
})
