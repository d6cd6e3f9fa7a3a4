'use strict'
// A legacy grenache-nodejs-utp peer on npm utp-native 2.5.3 (libutp), for the interop tests and
// the benchmark. It speaks the legacy wire as grenache-nodejs-utp 1.0.0 does:
// * one UDP socket for uTP in and out and for punches;
// * a request is the JSON text [rid, key, payload], written in one write; every received data
//   chunk is parsed as one whole message (no framing), replies are [rid, err, res];
// * the punch is the datagram C3 BF (the UTF-8 of U+00FF), compared whole.
//
// Server: "hello" -> "world", "fail" -> error ERR_BOOM, "who" -> {key, remote: {address, port}}
// (the remote end of the uTP connection), anything else is echoed.
// Events printed (one JSON object per line): {ready, port}, {event:'punch', from},
// {event:'msg', bytes} (a non-uTP datagram that is not a punch), {event:'request-error'}.
// Commands read from stdin, one JSON object per line:
//   {id, cmd:'request', host, port, key, payload}  -> {id, reply:[rid, err, res]} or {id, error}
//   {id, cmd:'punch', host, port}                   -> {id, sent:true}
//   {id, cmd:'punch_back', on:true|false}           -> answer every punch with a punch
//   {id, cmd:'raw', host, port, chunks:[text...], expect:N, wait_ms}
//        -> writes each chunk as a write of its own on a new connection (10 ms apart), then
//           {id, replies:[...]} once N replies came, or after wait_ms (default 10 s)
// Exits when stdin closes.
const utp = require('utp-native')
const crypto = require('crypto')
const readline = require('readline')

const PUNCH = Buffer.from('ÿ', 'utf8') // C3 BF
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n')
let punchBack = false

const sock = utp()
sock.on('error', (e) => out({ event: 'error', message: e.message }))

sock.on('connection', (conn) => {
  const remote = { address: conn.remoteAddress, port: conn.remotePort }
  conn.on('error', () => {})
  conn.on('data', (chunk) => {
    let req
    try {
      req = JSON.parse(chunk.toString('utf8'))
    } catch (e) {
      out({ event: 'request-error', bytes: chunk.length })
      return
    }
    const [rid, key, payload] = req
    let reply
    if (payload === 'hello') reply = [rid, null, 'world']
    else if (payload === 'fail') reply = [rid, 'ERR_BOOM', null]
    else if (payload === 'who') reply = [rid, null, { key, remote }]
    else reply = [rid, null, payload]
    conn.write(JSON.stringify(reply))
  })
})

sock.on('message', (buf, rinfo) => {
  if (buf.equals(PUNCH)) {
    out({ event: 'punch', from: { address: rinfo.address, port: rinfo.port } })
    if (punchBack) sock.send(PUNCH, 0, PUNCH.length, rinfo.port, rinfo.address)
  } else {
    out({ event: 'msg', bytes: buf.toString('hex') })
  }
})

// One connection per destination, made on the first request (as the legacy client transport).
const conns = new Map()
function connection (host, port) {
  const dest = host + ':' + port
  let c = conns.get(dest)
  if (c) return c
  const stream = sock.connect(Number(port), host)
  c = { stream, waiting: new Map() }
  stream.on('data', (chunk) => {
    let reply
    try {
      reply = JSON.parse(chunk.toString('utf8'))
    } catch (e) {
      out({ event: 'reply-error', bytes: chunk.length })
      return
    }
    const w = c.waiting.get(reply[0])
    if (w) {
      c.waiting.delete(reply[0])
      w(reply)
    }
  })
  const fail = (why) => {
    conns.delete(dest)
    for (const [, w] of c.waiting) w(null, why)
    c.waiting.clear()
  }
  stream.on('error', (e) => fail(e.message))
  stream.on('close', () => fail('closed'))
  conns.set(dest, c)
  return c
}

function command (m) {
  if (m.cmd === 'request') {
    const c = connection(m.host, m.port)
    const rid = crypto.randomUUID()
    c.waiting.set(rid, (reply, error) => out(error ? { id: m.id, error } : { id: m.id, reply }))
    c.stream.write(JSON.stringify([rid, m.key, m.payload]))
  } else if (m.cmd === 'punch') {
    sock.send(PUNCH, 0, PUNCH.length, Number(m.port), m.host, () => out({ id: m.id, sent: true }))
  } else if (m.cmd === 'raw') {
    const stream = sock.connect(Number(m.port), m.host)
    const replies = []
    let done = false
    const finish = () => {
      if (done) return
      done = true
      out({ id: m.id, replies })
      stream.destroy()
    }
    stream.on('error', () => {})
    stream.on('data', (chunk) => {
      for (const part of chunk.toString('utf8').split(/(?<=\])(?=\[)/)) replies.push(JSON.parse(part))
      if (replies.length >= m.expect) finish()
    })
    setTimeout(finish, m.wait_ms || 10000)
    m.chunks.forEach((c, i) => setTimeout(() => stream.write(c), 10 * i))
  } else if (m.cmd === 'punch_back') {
    punchBack = !!m.on
    out({ id: m.id, ok: true })
  }
}

sock.listen(0, () => {
  out({ ready: true, port: sock.address().port })
  const rl = readline.createInterface({ input: process.stdin })
  rl.on('line', (l) => {
    if (l.trim()) command(JSON.parse(l))
  })
  rl.on('close', () => process.exit(0))
})
