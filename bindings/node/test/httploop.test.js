// Tests of the plain HTTP client connections read and written on Node's event loop
// (src/inloop.rs `NativeLoopConn.http`, used by grenache-native/http for plain uncompressed
// requests): replies in every HTTP/1.1 framing (content-length, chunked in pieces, to the end
// of the socket, after a 100 Continue), keep-alive reuse, the error strings, timeouts, requests
// written at most once (a connection the server closed is not reused), queueing past the connection cap, the reference server, and
// the process lifetime (alive while a reply is awaited, not for an idle connection).
// The servers here are scripted on Node's `net`, so the bytes on the wire are exactly the
// ones under test.
//   node --test bindings/node/test/httploop.test.js
'use strict'

const { test } = require('node:test')
const assert = require('node:assert/strict')
const net = require('net')
const path = require('path')

const http = require('../lib/http')
const { INTEROP, sleep, noLink, ask } = require('./support')
const refHttp = require(path.join(INTEROP, 'grenache-nodejs-http'))

// A raw HTTP server: `answer(req, socket, n)` for each request read (`req`: the parsed body,
// `n`: its number on this server). Counts connections.
async function rawServer (answer) {
  let n = 0
  const s = { connections: 0, sockets: new Set() }
  const srv = net.createServer((sock) => {
    s.connections++
    s.sockets.add(sock)
    sock.on('close', () => s.sockets.delete(sock))
    sock.on('error', () => {})
    let buf = Buffer.alloc(0)
    sock.on('data', (d) => {
      buf = Buffer.concat([buf, d])
      for (;;) {
        const end = buf.indexOf('\r\n\r\n')
        if (end < 0) return
        const head = buf.slice(0, end).toString('latin1')
        const m = /content-length:\s*(\d+)/i.exec(head)
        const len = m ? Number(m[1]) : 0
        if (buf.length < end + 4 + len) return
        const body = JSON.parse(buf.slice(end + 4, end + 4 + len).toString())
        buf = buf.slice(end + 4 + len)
        answer({ head, body }, sock, ++n)
      }
    })
  })
  await new Promise((resolve) => srv.listen(0, '127.0.0.1', resolve))
  s.dest = `127.0.0.1:${srv.address().port}`
  s.stop = () => { for (const x of s.sockets) x.destroy(); srv.close() }
  return s
}

const reply = (rid, err, data) => JSON.stringify([rid, err, data])
const withLength = (body, extra = '') => `HTTP/1.1 200 OK\r\ncontent-length: ${Buffer.byteLength(body)}\r\n${extra}\r\n${body}`

function client () {
  const peer = new http.PeerRPCClient(noLink, {})
  peer.init()
  return peer
}

test('http loop: every reply framing, keep-alive reuse', async () => {
  const s = await rawServer(({ head, body: [rid, key, payload] }, sock) => {
    assert.match(head, /^POST \/ HTTP\/1\.1\r\n/)
    assert.match(head, /grc-compress: none/)
    assert.equal(key, 'k')
    const out = reply(rid, null, { echo: payload.i })
    switch (payload.how) {
      case 'length': return sock.write(withLength(out))
      case 'continue': return sock.write('HTTP/1.1 100 Continue\r\n\r\n' + withLength(out))
      case 'chunked': {
        // One byte per write, the chunk sizes in hex with an extension, a trailer.
        const half = Math.floor(out.length / 2)
        const wire = 'HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n' +
          `${half.toString(16)};x=y\r\n${out.slice(0, half)}\r\n` +
          `${(out.length - half).toString(16).toUpperCase()}\r\n${out.slice(half)}\r\n0\r\nx-trailer: 1\r\n\r\n`
        let i = 0
        const drip = () => { if (i < wire.length) { sock.write(wire[i++]); setImmediate(drip) } }
        return drip()
      }
      case 'eof': return sock.end(`HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n${out}`)
      case 'close': return sock.write(withLength(out, 'connection: close\r\n'))
    }
  })
  const peer = client()
  const t = peer.transport(s.dest)
  for (const how of ['length', 'length', 'continue', 'chunked', 'length']) {
    const r = await ask(t, { i: how.length, how })
    assert.equal(r.err, null, how)
    assert.deepEqual(r.res, { echo: how.length }, how)
  }
  assert.equal(s.connections, 1, 'sequential requests share one keep-alive connection')
  for (const how of ['eof', 'close', 'length']) {
    const r = await ask(t, { i: 7, how })
    assert.equal(r.err, null, how)
    assert.deepEqual(r.res, { echo: 7 }, how)
  }
  assert.equal(s.connections, 3, 'a closed connection is replaced')
  peer.stop()
  s.stop()
})

test('http loop: error strings, timeouts, refused and bad replies', async () => {
  const s = await rawServer(({ body: [rid, , payload] }, sock) => {
    switch (payload) {
      case 'remote': return sock.write(withLength(reply(rid, 'ERR_BOOM', null)))
      case 'status': return sock.write(withLength(reply(null, 'ERR_HEADER_PARSE_GR', null)).replace('200 OK', '500 Oops'))
      case 'notjson': return sock.write(withLength('not json'))
      case 'otherrid': return sock.write(withLength(reply('other', null, 1)))
      case 'garbage': return sock.write('NOT HTTP AT ALL\r\n\r\n')
      case 'silent': return
      case 'ok': return sock.write(withLength(reply(rid, null, 'fine')))
    }
  })
  const peer = client()
  const t = peer.transport(s.dest)
  assert.equal((await ask(t, 'remote')).err.message, 'ERR_BOOM')
  assert.equal((await ask(t, 'status')).err.message, 'ERR_REQUEST_GENERIC: HTTP 500: ERR_HEADER_PARSE_GR')
  assert.match((await ask(t, 'notjson')).err.message, /^ERR_REQUEST_GENERIC: the reply is not a JSON array/)
  assert.match((await ask(t, 'otherrid')).err.message, /^ERR_REQUEST_GENERIC: reply rid "other" does not match/)
  assert.match((await ask(t, 'garbage')).err.message, /^ERR_REQUEST_GENERIC: bad HTTP reply/)
  const before = s.connections
  const t0 = Date.now()
  const slow = await ask(t, 'silent', { timeout: 300 })
  assert.equal(slow.err.message, 'ERR_TIMEOUT')
  assert.ok(Date.now() - t0 >= 290 && Date.now() - t0 < 5000, `timed out after ${Date.now() - t0} ms`)
  // The timed-out connection is closed: the next request gets a new one, and its reply.
  assert.deepEqual(await ask(t, 'ok'), { err: null, res: 'fine' })
  assert.equal(s.connections, before + 2) // one for the silent request (the bad reply ended the last), one after
  s.stop()
  await sleep(50)
  const refused = await ask(t, 'ok')
  assert.match(refused.err.message, /^ERR_REQUEST_GENERIC: connect to 127\.0\.0\.1:\d+: /)
  peer.stop()
})

test('http loop: a request is written at most once; a connection the server closed is not reused', async () => {
  // The server closes each connection right after its first reply. The client finds the FIN
  // before it writes the next request (here while the loop was kept busy, so no poll saw it)
  // and takes a new connection: every request reaches the server once and is answered.
  const seen = []
  const s = await rawServer(({ body: [rid, , payload] }, sock) => {
    seen.push(payload)
    sock.end(withLength(reply(rid, null, payload)))
  })
  const peer = client()
  const t = peer.transport(s.dest)
  assert.deepEqual(await ask(t, 'a'), { err: null, res: 'a' })
  await sleep(20)
  const r = await new Promise((resolve) => {
    t.request('k', 'b', { timeout: 10000 }, (err, res) => {
      // Busy, not sleeping: the server's FIN arrives while no poll runs.
      const until = Date.now() + 100
      while (Date.now() < until);
      t.request('k', 'c', { timeout: 10000 }, (err2, res2) => resolve({ err, res, err2, res2 }))
    })
  })
  assert.deepEqual(r, { err: null, res: 'b', err2: null, res2: 'c' })
  assert.deepEqual(seen, ['a', 'b', 'c'])
  assert.equal(s.connections, 3)
  // The server reads a request on a reused connection and drops it without answering: the
  // request fails and is not sent again (the handler may have run).
  let n2 = 0
  const s2 = await rawServer(({ body: [rid] }, sock) => {
    n2++
    if (n2 === 2) return sock.destroy()
    sock.write(withLength(reply(rid, null, n2)))
  })
  const t2 = peer.transport(s2.dest)
  assert.deepEqual(await ask(t2, 'x'), { err: null, res: 1 })
  const r2 = await ask(t2, 'y')
  assert.match(r2.err.message, /^ERR_REQUEST_GENERIC: /)
  await sleep(100)
  assert.equal(n2, 2, 'not sent again')
  assert.equal(s2.connections, 1)
  peer.stop()
  s.stop()
  s2.stop()
})

test('http loop: many requests in flight queue past the connection cap; our and the reference server', async () => {
  const s = await rawServer(({ body: [rid, , p] }, sock) => setTimeout(() => sock.write(withLength(reply(rid, null, p))), 5))
  const peer = client()
  const t = peer.transport(s.dest)
  const out = await Promise.all(Array.from({ length: 300 }, (_, i) => ask(t, i)))
  out.forEach((r, i) => assert.deepEqual(r, { err: null, res: i }))
  assert.ok(s.connections <= 64, `${s.connections} connections`)
  s.stop()

  for (const mod of [http, refHttp]) {
    const sp = new mod.PeerRPCServer(noLink, { timeout: 300000 })
    sp.init()
    const st = sp.transport('server')
    st.listen(await new Promise((resolve) => { const x = net.createServer().listen(0, () => { const p = x.address().port; x.close(() => resolve(p)) }) }))
    st.on('request', (rid, key, payload, h) => (payload === 'fail' ? h.reply(new Error('ERR_NOPE')) : h.reply(null, { got: payload })))
    const tt = peer.transport(`127.0.0.1:${st.port || st.socket.address().port}`)
    const got = await Promise.all(Array.from({ length: 100 }, (_, i) => ask(tt, i)))
    got.forEach((r, i) => assert.deepEqual(r, { err: null, res: { got: i } }))
    assert.equal((await ask(tt, 'fail')).err.message, 'ERR_NOPE')
    st.stop()
    sp.stop()
  }
  peer.stop()
})

test('http loop: a connection keeps the process alive while a reply is awaited, not when idle', async () => {
  const { spawn } = require('child_process')
  // The reply comes 500 ms late: the child must wait for it, then exit with its connection idle.
  const s = await rawServer(({ body: [rid] }, sock) => setTimeout(() => sock.write(withLength(reply(rid, null, 'late'))), 500))
  const script = `
    const http = require(${JSON.stringify(path.join(__dirname, '..', 'lib', 'http'))})
    const peer = new http.PeerRPCClient({}, {})
    peer.init()
    clearInterval(peer.tpool._monitorItv) // the pool's monitor timer would keep the process alive
    peer.transport(${JSON.stringify(s.dest)}).request('k', 1, { timeout: 10000 }, (err, res) => console.log(err ? err.message : res))
  `
  const t0 = Date.now()
  const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'inherit'] })
  let out = ''
  child.stdout.on('data', (d) => { out += d })
  const code = await new Promise((resolve) => {
    const kill = setTimeout(() => child.kill(), 15000)
    child.on('exit', (c) => { clearTimeout(kill); resolve(c) })
  })
  assert.equal(code, 0)
  assert.equal(out.trim(), 'late')
  assert.ok(Date.now() - t0 < 5000, `the child lived ${Date.now() - t0} ms (an idle connection kept it alive?)`)
  assert.equal(s.sockets.size <= 1, true)
  s.stop()
})
