// Tests of the drop-in grenache-native/http server's plain sockets, read and written on Node's
// event loop (core transport::http_handoff, src/inloop.rs `NativeLoopConn.httpServer`, lib/http.js): every
// request framing (content-length, chunked in pieces, gzip, 100-continue), pipelined requests
// answered in request order whatever the order of the handlers' replies, past the pipelining
// bound too; bad input answered with a status and an error string, ending only the socket that
// sent it; the core server's limits (a slow head, a slow body, an idle connection, connections
// per IP). The clients are scripted on Node's `net`, so the bytes on the wire are exactly the
// ones under test.
//   node --test bindings/node/test/httpserve.test.js
'use strict'

const { test } = require('node:test')
const assert = require('node:assert/strict')
const net = require('net')
const zlib = require('zlib')

const http = require('../lib/http')
const { sleep, noLink } = require('./support')

function server (onRequest, conf = {}) {
  const peer = new http.PeerRPCServer(noLink, conf)
  peer.init()
  const t = peer.transport('server')
  t.listen(0)
  t.on('request', onRequest)
  return { t, port: t.port, stop: () => { t.stop(); peer.stop() } }
}

// A raw client socket: `send(bytes)`, `next()` resolves the next response ({ status, headers,
// body }), `ended` when the server closed the socket.
function rawClient (port) {
  const sock = net.connect(port, '127.0.0.1')
  sock.setNoDelay(true)
  sock.on('error', () => {})
  let buf = Buffer.alloc(0)
  const responses = []
  const waiting = []
  const c = { sock, received: 0 }
  c.ended = new Promise((resolve) => sock.on('close', resolve))
  sock.on('data', (d) => {
    c.received += d.length
    buf = Buffer.concat([buf, d])
    for (;;) {
      const end = buf.indexOf('\r\n\r\n')
      if (end < 0) return
      const lines = buf.slice(0, end).toString('latin1').split('\r\n')
      const status = Number(lines[0].split(' ')[1])
      const headers = {}
      for (const l of lines.slice(1)) {
        const i = l.indexOf(':')
        headers[l.slice(0, i).toLowerCase()] = l.slice(i + 1).trim()
      }
      const len = Number(headers['content-length'] || 0)
      if (buf.length < end + 4 + len) return
      const r = { status, headers, body: buf.slice(end + 4, end + 4 + len) }
      buf = buf.slice(end + 4 + len)
      if (waiting.length) waiting.shift()(r)
      else responses.push(r)
    }
  })
  c.send = (b) => sock.write(b)
  c.next = () => responses.length ? Promise.resolve(responses.shift()) : new Promise((resolve) => waiting.push(resolve))
  c.close = () => sock.destroy()
  c.connected = new Promise((resolve) => sock.once('connect', resolve))
  return c
}

const post = (body, headers = {}) => {
  const b = Buffer.isBuffer(body) ? body : Buffer.from(body)
  const h = Object.entries({ 'content-length': b.length, ...headers }).map(([k, v]) => `${k}: ${v}\r\n`).join('')
  return Buffer.concat([Buffer.from(`POST / HTTP/1.1\r\nhost: x\r\n${h}\r\n`), b])
}
const envelope = (r) => JSON.parse(r.body.toString())

test('http loop server: every framing, gzip, 100-continue; pipelined replies in request order', async () => {
  const delays = { a: 60, b: 0, c: 20 }
  const seen = []
  const s = server((rid, key, payload, handler, cert, meta) => {
    seen.push({ rid, meta })
    setTimeout(() => handler.reply(null, { echo: payload }), delays[payload] ?? 0)
  })
  try {
    const c = rawClient(s.port)
    // Three requests in one write: a content-length body, a chunked one, a gzipped one.
    const chunked = Buffer.from('POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n5\r\n["r2"\r\n9;ext=1\r\n,"k","b"]\r\n0\r\n\r\n')
    const gz = zlib.gzipSync(JSON.stringify(['r3', 'k', 'c']))
    c.send(Buffer.concat([post(JSON.stringify(['r1', 'k', 'a'])), chunked, post(gz, { 'grc-compress': 'gzip' })]))
    const r1 = await c.next()
    const r2 = await c.next()
    const r3 = await c.next()
    assert.deepEqual([r1.status, r2.status, r3.status], [200, 200, 200])
    // A date header, as Node's http servers (the reference's) send.
    assert.ok(Math.abs(Date.parse(r1.headers.date) - Date.now()) < 5000, `date: ${r1.headers.date}`)
    assert.deepEqual(envelope(r1), ['r1', null, { echo: 'a' }])
    assert.deepEqual(envelope(r2), ['r2', null, { echo: 'b' }])
    assert.deepEqual(JSON.parse(zlib.gunzipSync(r3.body)), ['r3', null, { echo: 'c' }], 'a gzip request is answered gzipped')
    assert.deepEqual(seen.map((x) => x.rid), ['r1', 'r2', 'r3'])
    assert.equal(seen[1].meta.isStream, true, 'a chunked body is a stream in the meta, as in the reference')
    assert.equal(seen[2].meta.compress, true)
    assert.equal(seen[0].meta.compress, false)

    // A chunked body in pieces, the chunk size line cut in two.
    c.send('POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n1')
    await sleep(30)
    c.send('2\r\n["r4","k",')
    await sleep(30)
    c.send('"piece"]\r\n0\r\n')
    await sleep(30)
    c.send('\r\n')
    assert.deepEqual(envelope(await c.next()), ['r4', null, { echo: 'piece' }])

    // 100-continue: the interim reply comes before the body is sent.
    const body = JSON.stringify(['r5', 'k', 'cont'])
    c.send(`POST / HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: ${body.length}\r\n\r\n`)
    assert.equal((await c.next()).status, 100)
    c.send(body)
    assert.deepEqual(envelope(await c.next()), ['r5', null, { echo: 'cont' }])

    // `_gr` names rid and key; `_a` and `_ar` reach the meta.
    c.send(post(JSON.stringify([null, null, 'gr']), { _gr: '["r6","k6"]', _a: 'act', _ar: '{"x":1}' }))
    assert.deepEqual(envelope(await c.next()), ['r6', null, { echo: 'gr' }])
    const m = seen[seen.length - 1].meta
    assert.deepEqual([m.infoHeaders, m.action, m.args], [['r6', 'k6'], 'act', { x: 1 }])

    // Connection: close is answered with it, then the server closes.
    c.send(post(JSON.stringify(['r7', 'k', 'last']), { connection: 'close' }))
    const last = await c.next()
    assert.equal(last.headers.connection, 'close')
    assert.deepEqual(envelope(last), ['r7', null, { echo: 'last' }])
    await c.ended
  } finally {
    s.stop()
  }
})

test('http loop server: a client pipelining past the bound is answered in full, in order', async () => {
  const s = server((rid, key, payload, handler) => setImmediate(() => handler.reply(null, payload)))
  try {
    const c = rawClient(s.port)
    const n = 300
    const reqs = []
    for (let i = 0; i < n; i++) reqs.push(post(JSON.stringify([`r${i}`, 'k', i])))
    c.send(Buffer.concat(reqs))
    for (let i = 0; i < n; i++) assert.deepEqual(envelope(await c.next()), [`r${i}`, null, i])
    c.close()
  } finally {
    s.stop()
  }
})

test('http loop server: bad input gets a status and an error; only its socket ends', async () => {
  let requestErrors = 0
  const s = server((rid, key, payload, handler) => {
    if (payload === 'throw') throw new Error('the handler threw')
    handler.reply(null, payload)
  })
  s.t.on('request-error', () => requestErrors++)
  s.t.on('error', () => {})
  try {
    const good = rawClient(s.port)
    await good.connected

    // Not JSON: 400 ERR_DECODE and 'request-error'; the connection serves the next request.
    const c = rawClient(s.port)
    c.send(post('not json'))
    const r = await c.next()
    assert.equal(r.status, 400)
    assert.match(envelope(r)[1], /^ERR_DECODE/)
    assert.equal(requestErrors, 1)
    c.send(post(JSON.stringify(['ok', 'k', 1])))
    assert.deepEqual(envelope(await c.next()), ['ok', null, 1])

    // A bad `_gr` header: the reference's exact answer.
    c.send(post(JSON.stringify(['g', 'k', 1]), { _gr: '{nope' }))
    const g = await c.next()
    assert.equal(g.status, 500)
    assert.equal(g.body.toString(), '[null, "ERR_HEADER_PARSE_GR", null]')

    // A handler that throws: the client gets its message.
    c.send(post(JSON.stringify(['t', 'k', 'throw'])))
    assert.deepEqual(envelope(await c.next()), ['t', 'the handler threw', null])

    // Not HTTP: 400, then the socket closes.
    const bad = rawClient(s.port)
    bad.send('GARBAGE\0\r\n\r\n')
    const b = await bad.next()
    assert.equal(b.status, 400)
    assert.equal(b.headers.connection, 'close')
    await bad.ended

    // A body over the limit, declared: 413 at once, before any of it is read.
    const big = rawClient(s.port)
    big.send('POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 100000000\r\n\r\n')
    const t = await big.next()
    assert.equal(t.status, 413)
    assert.deepEqual(envelope(t), [null, 'ERR_PAYLOAD_SIZE', null])
    await big.ended

    // Both content-length and chunked (request smuggling): refused.
    const both = rawClient(s.port)
    both.send('POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n')
    assert.equal((await both.next()).status, 400)
    await both.ended

    // A head over 64 KiB: 431.
    const huge = rawClient(s.port)
    huge.send(`POST / HTTP/1.1\r\nx-big: ${'a'.repeat(70000)}\r\n`)
    assert.equal((await huge.next()).status, 431)
    await huge.ended

    // The first socket was never disturbed.
    good.send(post(JSON.stringify(['still', 'k', 2])))
    assert.deepEqual(envelope(await good.next()), ['still', null, 2])
    good.close()
    c.close()
  } finally {
    s.stop()
  }
})

test('http loop server: the core limits: a slow head, a slow body, idle connections, per IP', async () => {
  const limits = { header_timeout_ms: 300, body_timeout_ms: 500, body_min_rate: 0, idle_timeout_ms: 400, max_connections_per_ip: 4 }
  const s = server((rid, key, payload, handler) => handler.reply(null, payload), { limits })
  try {
    // A head sent a byte at a time: closed without a word after header_timeout_ms.
    const slow = rawClient(s.port)
    await slow.connected
    const t0 = Date.now()
    slow.send('POST / HTTP/1.1\r\n')
    const drip = setInterval(() => slow.send('x'), 50)
    await slow.ended
    clearInterval(drip)
    const took = Date.now() - t0
    assert.ok(took >= 250 && took < 2000, `a slow head closed after ${took} ms`)
    assert.equal(slow.received, 0)

    // A body that stops: 408 ERR_TIMEOUT after body_timeout_ms, then the socket closes.
    const stalled = rawClient(s.port)
    stalled.send('POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n["r",')
    const r = await stalled.next()
    assert.equal(r.status, 408)
    assert.deepEqual(envelope(r), [null, 'ERR_TIMEOUT', null])
    await stalled.ended

    // An idle keep-alive connection closes after idle_timeout_ms; one in use does not.
    const idle = rawClient(s.port)
    idle.send(post(JSON.stringify(['i', 'k', 1])))
    await idle.next()
    const busy = rawClient(s.port)
    const tick = setInterval(() => busy.send(post(JSON.stringify(['b', 'k', 1]))), 100)
    const i0 = Date.now()
    await idle.ended
    const idleFor = Date.now() - i0
    assert.ok(idleFor >= 300 && idleFor < 2000, `idle closed after ${idleFor} ms`)
    await sleep(300)
    clearInterval(tick)
    assert.equal(busy.sock.destroyed, false, 'a connection in use stays open')
    busy.close()
    await busy.ended

    // Connections per IP: the fifth is closed at once.
    const held = []
    for (let i = 0; i < 4; i++) {
      const h = rawClient(s.port)
      h.send(post(JSON.stringify([`h${i}`, 'k', i])))
      await h.next()
      held.push(h)
    }
    const fifth = rawClient(s.port)
    fifth.send(post(JSON.stringify(['f', 'k', 5])))
    await fifth.ended
    assert.equal(fifth.received, 0)
    for (const h of held) h.close()
    await Promise.all(held.map((h) => h.ended))
    await sleep(50)
    const again = rawClient(s.port)
    again.send(post(JSON.stringify(['a', 'k', 6])))
    assert.deepEqual(envelope(await again.next()), ['a', null, 6], 'served again once the others left')
    again.close()
  } finally {
    s.stop()
  }
})

test('http loop server: stop() with requests pending closes their sockets and lets the process go', async () => {
  const s = server(() => {}) // never replies
  const c = rawClient(s.port)
  c.send(post(JSON.stringify(['p', 'k', 1])))
  await sleep(100)
  s.stop()
  await c.ended
  assert.equal(c.received, 0)
})
