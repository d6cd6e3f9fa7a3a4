// Tests of the plain WS sockets read and written on Node's event loop (src/inloop.rs, used by
// grenache-native/ws for ws:// clients and servers): replies delivered in batches reach the
// request they answer, in any order and under load; nothing is lost or answered twice when a
// client or a server closes with replies pending; errors keep their reference strings; bad frames
// end only the socket that sent them. The Grape-free parts use explicit destinations
// (`peer.transport(dest)`), as the reference's own tests do.
//   node --test bindings/node/test/loop.test.js
'use strict'

const { test } = require('node:test')
const assert = require('node:assert/strict')
const net = require('net')
const path = require('path')

const ws = require('../lib/ws')
const native = require('../lib/native')
const { INTEROP, sleep, noLink, ask } = require('./support')
const refWs = require(path.join(INTEROP, 'grenache-nodejs-ws'))

function server (onRequest) {
  const peer = new ws.PeerRPCServer(noLink, {})
  peer.init()
  const t = peer.transport('server')
  t.listen(0)
  t.on('request', onRequest)
  return { t, dest: `127.0.0.1:${t.port}`, stop: () => { t.stop(); peer.stop() } }
}

function client () {
  const peer = new ws.PeerRPCClient(noLink, {})
  peer.init()
  return peer
}

test('loop sockets: each reply reaches its request, in batches, in any order, under load', async () => {
  // Replies in three ways: at once, after a microtask, after a random delay.
  const s = server((rid, key, payload, h) => {
    if (payload.i % 3 === 0) return h.reply(null, { echo: payload.i, rid })
    if (payload.i % 3 === 1) return Promise.resolve().then(() => h.reply(null, { echo: payload.i, rid }))
    setTimeout(() => h.reply(null, { echo: payload.i, rid }), Math.floor(Math.random() * 20))
  })
  const peer = client()
  const t = peer.transport(s.dest)
  const out = await Promise.all(Array.from({ length: 2000 }, (_, i) => ask(t, { i })))
  out.forEach(({ err, res }, i) => {
    assert.equal(err, null)
    assert.equal(res.echo, i)
  })
  // The rids the server saw are the client's, one per request.
  assert.equal(new Set(out.map((o) => o.res.rid)).size, 2000)
  // Sequential requests on the same socket, and a second answer to one request is not sent.
  const s2 = server((rid, key, payload, h) => {
    h.reply(null, payload)
    h.reply(null, 'second')
  })
  const t2 = peer.transport(s2.dest)
  for (let i = 0; i < 200; i++) assert.deepEqual(await ask(t2, i), { err: null, res: i })
  peer.stop()
  s.stop()
  s2.stop()
})

test('loop sockets: errors keep the reference strings and types', async () => {
  const s = server((rid, key, payload, h) => {
    if (payload === 'fail') return h.reply(new Error('ERR_APP'))
    if (payload === 'never') return
    h.reply(null, payload)
  })
  const peer = client()
  const t = peer.transport(s.dest)
  const failed = await ask(t, 'fail')
  assert.ok(failed.err instanceof Error)
  assert.equal(failed.err.message, 'ERR_APP')
  const t0 = Date.now()
  const late = await ask(t, 'never', { timeout: 200 })
  assert.equal(late.err.message, 'ERR_TIMEOUT')
  assert.ok(Date.now() - t0 < 5000, 'timeouts fire on time, not on the 10 s pool tick')
  // The socket still works after a timeout.
  assert.deepEqual(await ask(t, 'ok'), { err: null, res: 'ok' })
  // Nobody listening: the reference's close error.
  const probe = net.createServer()
  await new Promise((resolve) => probe.listen(0, '127.0.0.1', resolve))
  const deadPort = probe.address().port
  await new Promise((resolve) => probe.close(resolve))
  const refused = await ask(peer.transport(`127.0.0.1:${deadPort}`), 'x')
  assert.equal(refused.err.message, 'ERR_TRANSPORT_CLOSE')
  // A payload that JSON cannot carry fails its own request only.
  const circular = {}
  circular.self = circular
  const bad = await ask(t, circular)
  assert.ok(bad.err instanceof TypeError)
  assert.deepEqual(await ask(t, 'after'), { err: null, res: 'after' })
  peer.stop()
  s.stop()
})

test('loop sockets: closing with replies pending loses nothing and answers nothing twice', async () => {
  // Client stop: every pending request gets ERR_TIMEOUT (the reference's stop), once.
  const held = []
  const s = server((rid, key, payload, h) => held.push(h))
  const peer = client()
  const t = peer.transport(s.dest)
  const pending = Array.from({ length: 50 }, (_, i) => ask(t, i))
  while (held.length < 50) await sleep(10)
  peer.stop()
  for (const r of await Promise.all(pending)) assert.equal(r.err.message, 'ERR_TIMEOUT')
  // Answers after the client left go nowhere and break nothing.
  for (const h of held) h.reply(null, 'late')
  // Server stop: requests in flight on its sockets fail at once with ERR_TRANSPORT_CLOSE.
  held.length = 0
  const peer2 = client()
  const t2 = peer2.transport(s.dest)
  const pending2 = Array.from({ length: 50 }, (_, i) => ask(t2, i))
  while (held.length < 50) await sleep(10)
  const t0 = Date.now()
  s.stop()
  for (const r of await Promise.all(pending2)) assert.equal(r.err.message, 'ERR_TRANSPORT_CLOSE')
  assert.ok(Date.now() - t0 < 5000)
  peer2.stop()
})

test('loop sockets: bad frames end only their socket; the reference client interoperates', async () => {
  const errors = []
  const s = server((rid, key, payload, h) => h.reply(null, payload))
  s.t.on('request-error', () => errors.push('request-error'))
  // A raw client: upgrade, then a masked text frame that is not JSON, then a frame without a
  // mask (a protocol violation: the server answers close 1002 and ends this socket).
  const raw = net.connect(s.t.port, '127.0.0.1')
  await new Promise((resolve) => raw.once('connect', resolve))
  raw.write('GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n' +
    'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n')
  const frame = (text, masked) => {
    const body = Buffer.from(text)
    if (!masked) return Buffer.concat([Buffer.from([0x81, body.length]), body])
    const key = Buffer.from([1, 2, 3, 4])
    return Buffer.concat([Buffer.from([0x81, 0x80 | body.length]), key, Buffer.from(body.map((b, i) => b ^ key[i & 3]))])
  }
  let got = Buffer.alloc(0)
  raw.on('data', (d) => { got = Buffer.concat([got, d]) })
  const closed = new Promise((resolve) => raw.once('close', resolve))
  raw.write(frame('not json', true))
  await sleep(100)
  raw.write(frame('["r","k","x"]', false))
  await closed
  assert.match(got.toString('latin1'), /^HTTP\/1.1 101/)
  // The close frame (0x88) with code 1002.
  const i = got.indexOf(0x88)
  assert.ok(i > 0, 'a close frame came back')
  assert.equal(got.readUInt16BE(i + 2), 1002)
  assert.deepEqual(errors, ['request-error'])
  // The server still serves others, a reference client included.
  const refPeer = new refWs.PeerRPCClient(noLink, {})
  refPeer.init()
  const rt = refPeer.transport(s.dest)
  const r = await new Promise((resolve) => rt.request('k', { a: 1 }, { timeout: 5000 }, (err, res) => resolve({ err, res })))
  assert.deepEqual(r, { err: null, res: { a: 1 } })
  rt.stop()
  refPeer.stop()
  s.stop()
})

test('loop sockets: native conn API refuses a socket taken twice', async () => {
  const sockets = []
  const srv = native.loopListen(0, (sock) => sockets.push(sock))
  const dialed = await new Promise((resolve, reject) => native.loopDial(`127.0.0.1:${native.loopServerPort(srv)}`, 5000, (e, s) => (e ? reject(e) : resolve(s))))
  const c = native.loopConn(dialed, true, () => {}, () => {})
  assert.throws(() => native.loopConn(dialed, true, () => {}, () => {}), /already taken/)
  c.close()
  assert.equal(c.open, false)
  assert.equal(c.send('x'), false)
  while (!sockets.length) await sleep(10)
  native.loopConn(sockets[0], false, () => {}, () => {}).close()
  native.loopServerClose(srv)
})

test('loop sockets under the Promise API: ws Server and dest requests keep the Reply semantics', async () => {
  const g = require('..')
  const link = new g.Link('http://127.0.0.1:1')
  const s = new g.Server(link, (p, info) => {
    if (p === 'abandon') return info.defer().abandon()
    if (p === 'hang') return new Promise(() => {})
    if (p === 'twice') {
      const r = info.defer()
      r.send('first')
      assert.throws(() => r.send('second'), (e) => e instanceof g.AlreadyUsedError)
      return
    }
    if (p === 'fail') throw new g.ReplyError('ERR_APP')
    if (p && p.later) return new Promise((resolve) => setTimeout(() => resolve(p.later), Math.random() * 10))
    return p
  }, { transport: 'ws', replyTimeout: 300 })
  const c = new g.Client(link, { transport: 'ws' })
  const dest = `127.0.0.1:${s.port}`
  try {
    const many = await Promise.all(Array.from({ length: 1000 }, (_, i) => c.request('k', i % 2 ? { later: i } : i, { dest })))
    many.forEach((v, i) => assert.equal(v, i))
    assert.equal(await c.request('k', 'twice', { dest }), 'first')
    await assert.rejects(c.request('k', 'abandon', { dest }), (e) => e instanceof g.RemoteError && e.message === 'ERR_NO_REPLY')
    await assert.rejects(c.request('k', 'fail', { dest }), (e) => e instanceof g.RemoteError && e.message === 'ERR_APP')
    await assert.rejects(c.request('k', 'hang', { dest }), (e) => e instanceof g.RemoteError && e.message === 'ERR_TIMEOUT')
    await assert.rejects(c.request('k', 'hang', { dest, timeout: 100 }), (e) => e instanceof g.TimeoutError)
    await assert.rejects(c.request('k', 1n, { dest }), (e) => e instanceof g.InvalidArgumentError)
    // Closing the client with requests in flight cancels each of them once.
    const slow = Array.from({ length: 20 }, () => c.request('k', { later: 1 }, { dest, timeout: 10000 }).then(() => 'answered', (e) => e.name))
    c.close()
    for (const r of await Promise.all(slow)) assert.equal(r, 'ERR_CANCELLED')
  } finally {
    c.close()
    s.close()
    link.close()
  }
})

// A raw WebSocket client: upgrades, then resolves { sock, closed } where `closed` resolves with
// the close code the server sent (0 for none) when the socket ends.
async function rawWs (port) {
  const sock = net.connect(port, '127.0.0.1')
  await new Promise((resolve, reject) => { sock.once('connect', resolve); sock.once('error', reject) })
  let got = Buffer.alloc(0)
  sock.on('data', (d) => { got = Buffer.concat([got, d]) })
  sock.on('error', () => {})
  const closed = new Promise((resolve) => sock.once('close', () => {
    const head = got.indexOf('\r\n\r\n')
    const i = head < 0 ? -1 : got.indexOf(0x88, head + 4)
    resolve(i >= 0 && got.length >= i + 4 ? got.readUInt16BE(i + 2) : 0)
  }))
  sock.write('GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n' +
    'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n')
  return { sock, closed }
}

test('loop sockets: the server keeps the core limits on the sockets it was handed', async () => {
  const release = []
  const peer = new ws.PeerRPCServer(noLink, { limits: { max_connections_per_ip: 2, ws_idle_timeout_ms: 400 } })
  peer.init()
  const t = peer.transport('server')
  t.listen(0)
  t.on('request', (rid, key, payload, h) => {
    if (payload === 'hold') release.push(() => h.reply(null, 'late'))
    else h.reply(null, payload)
  })
  const dest = `127.0.0.1:${t.port}`
  try {
    // Two sockets from one IP: a client whose request is held, and a silent raw one.
    const c = client()
    const busy = c.transport(dest)
    const held = ask(busy, 'hold')
    await sleep(200)
    const idle = await rawWs(t.port)
    await sleep(100)
    // A third from the same IP is over max_connections_per_ip: closed at once, 1013.
    const third = await rawWs(t.port)
    assert.equal(await Promise.race([third.closed, sleep(2000).then(() => 'open')]), 1013)
    // The silent one is closed by the idle limit (1000); the one whose request runs is not.
    assert.equal(await Promise.race([idle.closed, sleep(3000).then(() => 'open')]), 1000)
    await sleep(600)
    release.forEach((f) => f())
    assert.deepEqual(await held, { err: null, res: 'late' })
    // Its slot and the idle one's are free again: a new client is served.
    const fresh = client()
    assert.deepEqual(await ask(fresh.transport(dest), 'x'), { err: null, res: 'x' })
    fresh.stop()
    c.stop()
  } finally {
    release.forEach((f) => f())
    t.stop()
    peer.stop()
  }
})

test('loop sockets: limits the core does not know are refused before the server listens', () => {
  const peer = new ws.PeerRPCServer(noLink, { limits: { max_sockets: 3 } })
  peer.init()
  const t = peer.transport('server')
  assert.throws(() => t.listen(0), (e) => e.code === 'ERR_INVALID_ARGUMENT' || /unknown server limit/.test(e.message))
  peer.stop()
})

test('loop sockets: sockets waiting for a busy JS thread are bounded by max_connections', async () => {
  const { spawn } = require('child_process')
  const peer = new ws.PeerRPCServer(noLink, { limits: { max_connections: 5 } })
  peer.init()
  const t = peer.transport('server')
  t.listen(0)
  t.on('request', (rid, key, payload, h) => h.reply(null, payload))
  // A child opens 20 sockets while this thread is blocked: the core upgrades every one, but
  // only 5 may wait for this thread; the others are closed at once, without a close frame (a
  // socket refused by JS after adoption gets 1013). Each socket's end: its close code, 0 for
  // none, 'open' if still open after the wait.
  const child = `
    const net = require('net')
    const ends = []
    process.stdin.once('data', () => {
      for (let i = 0; i < 20; i++) {
        const s = net.connect(${t.port}, '127.0.0.1')
        let got = Buffer.alloc(0)
        let end = 'open'
        s.on('data', (d) => { got = Buffer.concat([got, d]) })
        s.on('error', () => {})
        s.on('close', () => {
          const head = got.indexOf('\\r\\n\\r\\n')
          const j = head < 0 ? -1 : got.indexOf(0x88, head + 4)
          end = j >= 0 && got.length >= j + 4 ? got.readUInt16BE(j + 2) : 0
        })
        s.write('GET /ws HTTP/1.1\\r\\nHost: x\\r\\nUpgrade: websocket\\r\\nConnection: Upgrade\\r\\n' +
          'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\\r\\nSec-WebSocket-Version: 13\\r\\n\\r\\n')
        ends.push(() => end)
      }
      setTimeout(() => { console.log(JSON.stringify(ends.map((f) => f()))); process.exit(0) }, 4000)
    })
    console.log('ready')`
  const p = spawn(process.execPath, ['-e', child], { stdio: ['pipe', 'pipe', 'inherit'] })
  try {
    let out = ''
    p.stdout.on('data', (d) => { out += d })
    while (!out.includes('ready')) await sleep(10)
    p.stdin.write('go\n')
    // Blocks this thread for 1.5 s while the child connects.
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 1500)
    await new Promise((resolve) => p.once('exit', resolve))
    const ends = JSON.parse(out.slice(out.indexOf('\n') + 1))
    assert.equal(ends.filter((e) => e === 'open').length, 5, `ends: ${ends}`)
    assert.equal(ends.filter((e) => e === 0).length, 15, `ends: ${ends}`)
  } finally {
    p.kill()
    t.stop()
    peer.stop()
  }
})
