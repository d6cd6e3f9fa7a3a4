// Tests of grenache-native: real Grapes, servers and clients on loopback (free ports), and the
// Node.js reference packages (grenache-nodejs-link/-http/-ws from tests/interop, installed by
// scripts/test.sh) on the other side, in the same process.
//   node --test bindings/node/test/
'use strict'

const { test, before, after } = require('node:test')
const assert = require('node:assert/strict')
const path = require('path')
const g = require('..')

const INTEROP = path.join(__dirname, '..', '..', '..', 'tests', 'interop', 'node_modules')
const ref = (name) => require(path.join(INTEROP, name))

// A port that was free a moment ago (the reference servers cannot listen on 0 and report it).
function freePort () {
  return new Promise((resolve, reject) => {
    const srv = require('net').createServer()
    srv.on('error', reject)
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address()
      srv.close(() => resolve(port))
    })
  })
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

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

// The marks of the requests whose handler has started: what a test waits for before it shuts a
// server down under a running request.
const started = new Set()
let marks = 0

function handler (payload, info) {
  if (payload === 'hello') return 'world'
  if (payload === 'nope') throw new g.ReplyError('ERR_NOPE')
  if (payload && payload.mark) started.add(payload.mark)
  if (payload && payload.sleep) return sleep(payload.sleep).then(() => payload.v)
  return { echo: payload, fingerprint: info.fingerprint }
}

let g1, g2, l1, l2
const cleanup = []

before(async () => {
  g1 = new g.Grape({ host: '127.0.0.1' })
  g2 = new g.Grape({ host: '127.0.0.1', bootstrap: [`127.0.0.1:${g1.dhtPort}`] })
  l1 = new g.Link(g1.url)
  l2 = new g.Link({ grape: g2.url })
  // g1 learns of g2 when g2's bootstrap query reaches it; until then an announce through g1
  // fails with ERR_GRAPE_NO_NODES, whichever test runs first.
  for (const l of [l1, l2]) {
    await eventually(async () => { await l.announce('test-network-ready', 1); return true }, 'a Grape with a peer')
  }
})

after(async () => {
  for (const f of cleanup.reverse()) await f()
  l1.close()
  l2.close()
  await g2.stop()
  await g1.stop()
})

test('dhtState: the routing table is saved when the Grape stops', async () => {
  const fs = require('fs')
  const dir = fs.mkdtempSync(path.join(require('os').tmpdir(), 'grenache-node-state-'))
  try {
    const file = path.join(dir, 'dht.json')
    const gs = new g.Grape({ host: '127.0.0.1', bootstrap: [`127.0.0.1:${g1.dhtPort}`], dhtState: file })
    await sleep(1000) // the bootstrap walk on loopback takes milliseconds
    await gs.stop()
    const saved = JSON.parse(fs.readFileSync(file, 'utf8'))
    assert.equal(saved.version, 1)
    assert.equal(saved.id.length, 40)
    assert.ok(saved.nodes.some((n) => n.addr === `127.0.0.1:${g1.dhtPort}`), JSON.stringify(saved))
  } finally {
    fs.rmSync(dir, { recursive: true, force: true })
  }
})

for (const transport of ['http', 'ws', 'zmq', 'utp']) {
  test(`request, errors and timeouts over ${transport}`, async () => {
    const s = new g.Server(l1, handler, { transport })
    cleanup.push(() => s.close())
    s.startAnnouncing(`node:${transport}`, 500)
    const c = new g.Client(l2, { transport })
    cleanup.push(() => c.close())
    assert.equal(await eventually(() => c.request(`node:${transport}`, 'hello'), 'server visible'), 'world')
    const payload = { a: [1, 2.5, null, true], s: 'héllo ✓' }
    assert.deepEqual(await c.request(`node:${transport}`, payload), { echo: payload, fingerprint: null })
    await assert.rejects(c.request(`node:${transport}`, 'nope'), (e) => e instanceof g.RemoteError && e instanceof g.RpcError && e.name === 'ERR_REMOTE' && e.code === 400 && e.message === 'ERR_NOPE')
    const t0 = Date.now()
    await assert.rejects(c.request(`node:${transport}`, { sleep: 3000, v: 1 }, { timeout: 300 }), (e) => e.name === 'ERR_TIMEOUT')
    assert.ok(Date.now() - t0 < 2500, 'the timeout fired on time')
    const many = await Promise.all(Array.from({ length: 200 }, (_, i) => c.request(`node:${transport}`, { i })))
    assert.deepEqual(many.map((m) => m.echo.i), Array.from({ length: 200 }, (_, i) => i))
  })
}

test('uTP punches between our servers and with a libutp peer', async () => {
  const a = new g.Server(l1, handler, { transport: 'utp' })
  const b = new g.Server(l1, handler, { transport: 'utp' })
  cleanup.push(() => a.close(), () => b.close())
  const seen = []
  b.onPunch((from) => seen.push(from))
  await a.punch(`127.0.0.1:${b.port}`, 10000)
  await eventually(() => seen.includes(`127.0.0.1:${a.port}`), 'the punch event')
  const silent = require('dgram').createSocket('udp4')
  await new Promise((resolve) => silent.bind(0, '127.0.0.1', resolve))
  await assert.rejects(a.punch(`127.0.0.1:${silent.address().port}`, 300), (e) => e instanceof g.PunchTimeoutError && e.name === 'ERR_PUNCH_TIMEOUT' && e.code === 207)
  silent.close()
  // npm utp-native (libutp): its punch reaches us, ours reaches it as the whole C3 BF.
  const sock = ref('utp-native')()
  await new Promise((resolve) => sock.listen(0, resolve))
  const punch = Buffer.from([0xc3, 0xbf])
  const got = new Promise((resolve) => sock.on('message', (buf, rinfo) => { if (buf.equals(punch)) resolve(rinfo.port) }))
  sock.send(punch, 0, punch.length, b.port, '127.0.0.1')
  await eventually(() => seen.includes(`127.0.0.1:${sock.address().port}`), 'the libutp punch')
  const ours = a.punch(`127.0.0.1:${sock.address().port}`, 300)
  assert.equal(await got, a.port)
  await assert.rejects(ours, (e) => e.name === 'ERR_PUNCH_TIMEOUT', 'a legacy peer does not answer by itself')
  sock.close()
  assert.throws(() => new g.Client(l1, { transport: 'ws', broker: 'b' }), (e) => e.name === 'ERR_INVALID_ARGUMENT')
})

test('typed errors for bad input', async () => {
  assert.throws(() => new g.Client(l1, { transport: 'pigeon' }), (e) => e.name === 'ERR_INVALID_ARGUMENT')
  await assert.rejects(l2.lookup('nobody:here'), (e) => e instanceof g.LookupEmptyError && e.name === 'ERR_GRAPE_LOOKUP_EMPTY' && e.code === 300)
  const c = new g.Client(l1)
  await assert.rejects(c.request('x', 'hello', { dest: '127.0.0.1:1' }), (e) => e.name === 'ERR_CONNECT')
  c.close()
  assert.throws(() => g.Keypair.fromSecretHex('zz'), (e) => e.name === 'ERR_INVALID_ARGUMENT')
  assert.throws(() => new g.ServerTls({ cert: 'nope', key: 'nope' }), (e) => e instanceof g.GrenacheError)
})

test('one error class per core kind, under its family, in index.d.ts too', () => {
  const fs = require('fs')
  const dts = fs.readFileSync(path.join(__dirname, '..', 'index.d.ts'), 'utf8')
  const kinds = require('..')._kinds()
  assert.ok(kinds.length >= 30)
  for (const k of kinds) {
    const cls = g[k.className]
    assert.ok(cls, `no class for ${k.name}`)
    assert.ok(cls.prototype instanceof g[k.family], `${k.className} is not a ${k.family}`)
    assert.ok(dts.includes(`export class ${k.className} extends ${k.family} {}`), `index.d.ts lacks ${k.className}`)
  }
})

test('Grape options and server limits by name, as in every face', async () => {
  // A key limit of 8 bytes: a longer service name is refused by the Grape's API.
  const small = new g.Grape({ host: '127.0.0.1', options: { maxKeyLen: 8, peer_max_age_ms: 60000 } })
  const link = new g.Link(small.url)
  await assert.rejects(link.announce('a-name-longer-than-8', 1234), (e) => /ERR_GRAPE_KEY_TOO_LONG/.test(e.message))
  link.close()
  await small.stop()
  assert.throws(() => new g.Grape({ options: { nope: 1 } }), (e) => e.name === 'ERR_INVALID_ARGUMENT')
  assert.throws(() => new g.Grape({ options: { maxKeyLen: -1 } }), (e) => e.name === 'ERR_INVALID_ARGUMENT')
  // One connection per source address: a second keep-alive client from 127.0.0.1 is refused
  // while the first holds its connection.
  const s = new g.Server(l1, handler, { limits: { maxConnectionsPerIp: 1, idleTimeoutMs: 60000 } })
  cleanup.push(() => s.close())
  s.startAnnouncing('node:limits', 500)
  const first = new g.Client(l2)
  const second = new g.Client(l2)
  cleanup.push(() => { first.close(); second.close() })
  await eventually(async () => (await first.request('node:limits', 'hello')) === 'world', 'limited server visible')
  await assert.rejects(second.request('node:limits', 'hello', { timeout: 2000 }), (e) => e instanceof g.GrenacheError)
  assert.throws(() => new g.Server(l1, handler, { limits: { maxConnections: 0 } }), (e) => e.name === 'ERR_INVALID_ARGUMENT')
  assert.throws(() => new g.Server(l1, handler, { transport: 'ws', limits: { nope: 1 } }), (e) => e.name === 'ERR_INVALID_ARGUMENT')
})

test('a reply answers once; a second answer is ERR_ALREADY_USED', async () => {
  let second
  const s = new g.Server(l1, (payload, info) => {
    const r = info.defer()
    r.send('first')
    try {
      r.error('ERR_TOO_LATE')
    } catch (e) {
      second = e
    }
  })
  const c = new g.Client(l2)
  try {
    assert.equal(await c.request('x', 1, { dest: `127.0.0.1:${s.port}` }), 'first')
    assert.ok(second instanceof g.AlreadyUsedError && second instanceof g.InputError)
    assert.equal(second.code, 103)
    assert.equal(second.name, 'ERR_ALREADY_USED')
  } finally {
    c.close()
    s.close()
  }
})

test('WSS with client certificates: fingerprint to the handler, allowFingerprints', async () => {
  const fs = require('fs')
  const os = require('os')
  const { execFileSync } = require('child_process')
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'grenache-native-'))
  const ssl = (...args) => execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' })
  ssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'ca.key', '-out', 'ca.crt', '-days', '2', '-subj', '/CN=node-test-ca')
  for (const n of ['server', 'client']) {
    ssl('req', '-newkey', 'rsa:2048', '-nodes', '-keyout', `${n}.key`, '-out', `${n}.csr`, '-subj', `/CN=${n}`)
    ssl('x509', '-req', '-in', `${n}.csr`, '-CA', 'ca.crt', '-CAkey', 'ca.key', '-CAcreateserial', '-out', `${n}.crt`, '-days', '2')
  }
  const fingerprint = ssl('x509', '-noout', '-fingerprint', '-sha1', '-in', 'client.crt').toString().trim().split('=')[1]
  const pem = Object.fromEntries(['ca.crt', 'server.crt', 'server.key', 'client.crt', 'client.key'].map((f) => [f, fs.readFileSync(path.join(dir, f), 'utf8')]))
  fs.rmSync(dir, { recursive: true, force: true })
  const read = (f) => pem[f]
  const serverTls = new g.ServerTls({ cert: read('server.crt'), key: read('server.key'), ca: read('ca.crt'), clientAuth: 'required' })
  const clientTls = new g.ClientTls({ ca: read('ca.crt'), cert: read('client.crt'), key: read('client.key') })
  const allowed = new g.Server(l1, handler, { transport: 'ws', tls: serverTls, allowFingerprints: [fingerprint] })
  const refused = new g.Server(l1, handler, { transport: 'ws', tls: serverTls, allowFingerprints: ['00:11'] })
  cleanup.push(() => { allowed.close(); refused.close() })
  const c = new g.Client(l1, { transport: 'ws', tls: clientTls })
  cleanup.push(() => c.close())
  assert.deepEqual(await c.request('x', { a: 1 }, { dest: `127.0.0.1:${allowed.port}` }), { echo: { a: 1 }, fingerprint })
  await assert.rejects(c.request('x', 'hello', { dest: `127.0.0.1:${refused.port}`, timeout: 5000 }), (e) => e instanceof g.GrenacheError)
  const noCert = new g.Client(l1, { transport: 'ws', tls: new g.ClientTls({ ca: read('ca.crt') }) })
  cleanup.push(() => noCert.close())
  await assert.rejects(noCert.request('x', 'hello', { dest: `127.0.0.1:${allowed.port}`, timeout: 5000 }), (e) => e instanceof g.GrenacheError)
})

test('server reply timeout and map over workers', async () => {
  // The pending promises stay reachable: a reply collected unanswered is answered
  // ERR_NO_REPLY at once, which would race the reply timeout tested here.
  const hung = []
  const slow = new g.Server(l1, () => new Promise((resolve) => hung.push(resolve)), { replyTimeout: 200 })
  cleanup.push(() => { slow.close(); hung.length = 0 })
  const c = new g.Client(l1)
  cleanup.push(() => c.close())
  await assert.rejects(c.request('x', 'hang', { dest: `127.0.0.1:${slow.port}`, timeout: 10000 }), (e) => e.name === 'ERR_REMOTE' && e.message === 'ERR_TIMEOUT')
  const workers = [0, 1, 2].map((i) => new g.Server(l1, (p) => ({ worker: i, p })))
  for (const w of workers) {
    cleanup.push(() => w.close())
    await w.announce('node:map')
  }
  const res = await eventually(async () => {
    const r = await c.map('node:map', 'x')
    return r.length === 3 && r
  }, 'three workers')
  assert.deepEqual(res.map((r) => r.worker).sort(), [0, 1, 2])
})

test('graceful shutdown answers what it received, then refuses; the grace cuts off the rest', async () => {
  for (const transport of ['http', 'ws', 'zmq']) {
    const c = new g.Client(l1, { transport })
    cleanup.push(() => c.close())
    const s = new g.Server(l1, handler, { transport })
    const dest = `127.0.0.1:${s.port}`
    const mark = `m${++marks}`
    const pending = c.request('x', { sleep: 400, v: 7, mark }, { dest, timeout: 10000 })
    await eventually(() => started.has(mark), `the handler of ${mark} runs`)
    assert.equal(await s.shutdown(5000), true, transport)
    assert.equal(await pending, 7, transport)
    await assert.rejects(c.request('x', 'hello', { dest }), (e) => e.name === 'ERR_CONNECT', transport)
    s.close()
    const s2 = new g.Server(l1, handler, { transport })
    const mark2 = `m${++marks}`
    const cut = c.request('x', { sleep: 3000, mark: mark2 }, { dest: `127.0.0.1:${s2.port}`, timeout: 10000 }).then(() => 'answered', (e) => e)
    await eventually(() => started.has(mark2), `the handler of ${mark2} runs`)
    const t0 = Date.now()
    assert.equal(await s2.shutdown(200), false, transport)
    assert.ok(Date.now() - t0 < 2000, transport)
    assert.ok((await cut) instanceof g.GrenacheError, transport)
    s2.close()
  }
})

test('client close cancels requests in flight', async () => {
  const s = new g.Server(l1, handler)
  cleanup.push(() => s.close())
  const c = new g.Client(l1)
  const pending = c.request('x', { sleep: 3000 }, { dest: `127.0.0.1:${s.port}`, timeout: 10000 })
  await sleep(200)
  const t0 = Date.now()
  c.close()
  await assert.rejects(pending, (e) => e.name === 'ERR_CANCELLED')
  assert.ok(Date.now() - t0 < 1500)
})

test('put and get, immutable and mutable', async () => {
  const h = await l1.put('hello dht')
  assert.equal(h.length, 40)
  assert.equal((await eventually(() => l2.get(h), 'item')).v, 'hello dht')
  assert.equal(await l1.get('00'.repeat(20)), null)
  const key = g.Keypair.generate()
  assert.equal(g.Keypair.fromSecretHex(key.secretHex).publicHex, key.publicHex)
  const target = await l1.putMutable(key, 'v1', { seq: 1 })
  assert.equal((await l1.get(target)).v, 'v1')
  await l1.putMutable(key, 'v2', { seq: 2, cas: 1 })
  await assert.rejects(l1.putMutable(key, 'old', { seq: 1 }), (e) => e.name === 'ERR_SEQ_TOO_LOW')
  await assert.rejects(l1.putMutable(key, 'v3', { seq: 3, cas: 1 }), (e) => e.name === 'ERR_CAS_MISMATCH')
})

for (const transport of ['ws', 'zmq']) {
  test(`pub/sub between grenache-native peers over ${transport}`, async () => {
    const pub = new g.Publisher(l1, { transport })
    cleanup.push(() => pub.close())
    pub.startAnnouncing(`node:chan:${transport}`, 500)
    const got = []
    const sub = new g.Subscriber(l2, `node:chan:${transport}`, (m, from) => got.push([m, from]), { transport })
    cleanup.push(() => sub.close())
    await eventually(() => pub.subscribers === 1, 'subscriber connected')
    assert.equal(pub.publish({ n: 1 }), 1)
    pub.publish('text')
    await eventually(() => got.length === 2, 'two messages')
    assert.deepEqual(got, [['{"n":1}', `127.0.0.1:${pub.port}`], ['text', `127.0.0.1:${pub.port}`]])
  })
}

test('interop: reference clients call grenache-native servers', async () => {
  const RefLink = ref('grenache-nodejs-link')
  for (const [transport, pkg] of [['http', 'grenache-nodejs-http'], ['ws', 'grenache-nodejs-ws']]) {
    const s = new g.Server(l1, handler, { transport })
    cleanup.push(() => s.close())
    s.startAnnouncing(`native-for-ref:${transport}`, 500)
    const link = new RefLink({ grape: g2.url })
    link.start()
    const peer = new (ref(pkg).PeerRPCClient)(link, {})
    peer.init()
    cleanup.push(() => { peer.stop(); link.stop() })
    const ask = (payload) => new Promise((resolve, reject) => {
      peer.request(`native-for-ref:${transport}`, payload, { timeout: 5000 }, (err, data) => (err ? reject(err) : resolve(data)))
    })
    assert.equal(await eventually(() => ask('hello'), `reference ${transport} client reaches us`), 'world')
    assert.deepEqual(await ask({ x: ['y'] }), { echo: { x: ['y'] }, fingerprint: null })
    await assert.rejects(ask('nope'), (e) => /ERR_NOPE/.test(e.message))
  }
})

test('interop: grenache-native clients call reference servers', async () => {
  const RefLink = ref('grenache-nodejs-link')
  for (const [transport, pkg] of [['http', 'grenache-nodejs-http'], ['ws', 'grenache-nodejs-ws']]) {
    const link = new RefLink({ grape: g1.url })
    link.start()
    const peer = new (ref(pkg).PeerRPCServer)(link, { timeout: 300000 })
    peer.init()
    const service = peer.transport('server')
    service.listen(await freePort())
    service.on('request', (rid, key, payload, h) => {
      if (payload === 'fail') return h.reply(new Error('ERR_BOOM'))
      h.reply(null, { from: 'reference', payload })
    })
    const itv = setInterval(() => link.announce(`ref:${transport}`, service.port, {}), 500)
    cleanup.push(() => { clearInterval(itv); service.stop(); peer.stop(); link.stop() })
    const c = new g.Client(l2, { transport })
    cleanup.push(() => c.close())
    const r = await eventually(() => c.request(`ref:${transport}`, { q: 1 }), `reference ${transport} server`)
    assert.deepEqual(r, { from: 'reference', payload: { q: 1 } })
    await assert.rejects(c.request(`ref:${transport}`, 'fail'), (e) => e.name === 'ERR_REMOTE' && e.message === 'ERR_BOOM')
  }
})

test('interop: pub/sub with the reference PeerPub and PeerSub', async () => {
  const RefLink = ref('grenache-nodejs-link')
  const { PeerPub, PeerSub } = ref('grenache-nodejs-ws')
  // Reference subscriber <- our publisher.
  const pub = new g.Publisher(l1)
  cleanup.push(() => pub.close())
  pub.startAnnouncing('native:pub', 500)
  const link = new RefLink({ grape: g2.url })
  link.start()
  const sub = new PeerSub(link, {})
  sub.init()
  // The reference's PeerSub.stop() does not stop the transports sub() made (each keeps a 5 s
  // interval, so the process would never exit): keep them to stop them at the end.
  const transports = []
  const newTransport = sub.newTransport.bind(sub)
  sub.newTransport = (conf) => { const t = newTransport(conf); transports.push(t); return t }
  const got = []
  let connected = false
  sub.on('connected', () => { connected = true })
  sub.on('message', (m) => got.push(m.toString()))
  sub.on('error', () => {})
  cleanup.push(() => { for (const t of transports) t.stop(); sub.stop(); link.stop() })
  // One sub() once the channel is visible: each call makes a transport with its own timer, and
  // the reference's stop() clears only the last one (the process would never exit).
  await eventually(() => l2.lookup('native:pub'), 'channel visible')
  sub.sub('native:pub', { timeout: 5000 })
  await eventually(() => connected, 'reference subscriber connected')
  await eventually(() => { pub.publish('to the reference'); return got.includes('to the reference') }, 'message at the reference subscriber')
  // Our subscriber <- reference publisher.
  const link2 = new RefLink({ grape: g1.url })
  link2.start()
  const refPub = new PeerPub(link2, {})
  refPub.init()
  const service = refPub.transport('server')
  service.listen(await freePort())
  const itv = setInterval(() => link2.announce('ref:pub', service.port, {}), 500)
  // The reference's stop() leaves the HTTP server under its ws server listening (ws closes
  // an internal server only when asked that way): close it, or the process never exits.
  const wss = service.socket
  cleanup.push(() => { clearInterval(itv); service.stop(); refPub.stop(); link2.stop(); if (wss && wss._server) wss._server.close() })
  const mine = []
  const s2 = new g.Subscriber(l2, 'ref:pub', (m) => mine.push(m))
  cleanup.push(() => s2.close())
  await eventually(() => { service.pub('from the reference'); return mine.includes('from the reference') }, 'message from the reference publisher')
})
