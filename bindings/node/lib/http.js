// grenache-native/http: `{ PeerRPCClient, PeerRPCServer }` of grenache-nodejs-http 1.0.2.
//
// Buffered requests and replies are carried by the native core (client and server). What needs
// Node's own request and response objects stays in Node: `peer.stream()` (a Duplex over an HTTP
// request with the `_gr` header) and a server transport with `disableBuffered` (or with 'stream'
// listeners when it starts listening), whose 'stream' event hands out Node's `req`/`res`.
// Plain (not HTTPS) connections, of the client and of the server, are read and written on this
// thread's event loop, their HTTP parsed in Rust (src/inloop.rs over the core's transport::http_handoff).
// Differences from the reference are in docs/compat.md.
'use strict'

const http = require('http')
const https = require('https')
const zlib = require('zlib')
const assert = require('assert')
const { PassThrough, Duplex, pipeline } = require('stream')

const Base = require('./base')
const native = require('./native')
const { Deadlines, keepAlive, later, listenError } = require('./util')
const { LoopSockets } = require('./loopsockets')

// Connections one client transport keeps to its destination (each carries one request at a
// time); requests past that wait for one to be free.
const MAX_CONNS = 64
// How long dialing a destination may take.
const DIAL_TIMEOUT = 10000
// An idle connection older than this is closed instead of reused: Node's servers close idle
// keep-alive connections after 5 s, ours too (a request sent as the server closes would fail).
const IDLE_REUSE = 4000

const assertSecure = (secure) => {
  assert(Buffer.isBuffer(secure.key), 'conf.secure.key must be a Buffer')
  assert(Buffer.isBuffer(secure.cert), 'conf.secure.cert must be a Buffer')
  assert(Buffer.isBuffer(secure.ca), 'conf.secure.ca must be a Buffer')
}

// A client transport. Plain uncompressed requests go over HTTP/1.1 keep-alive connections read
// and written on this thread's event loop (lib/native.js `loopHttpConn`: the core dials, the
// loop drives the socket), one request at a time per connection, as the reference's client
// does with Node's sockets: no thread hand-off per request or reply. HTTPS and gzip requests go
// through the core's client (the base class).
class TransportRPCClient extends Base.TransportRPCClient {
  constructor (client, conf) {
    super(client, conf)
    // Like the reference, the HTTP transport keeps the peer conf as it is (no inactivity or
    // request timeout defaults).
    this.conf = conf
  }

  init () {
    super.init()
    if (this.conf.secure) assertSecure(this.conf.secure)
    this._idle = [] // free connections, the most recently used last
    this._conns = new Set()
    this._waiting = [] // requests waiting for a free connection
    this._dialing = 0
    this._deadlines = new Deadlines(() => this._reqs.values(), (req) => {
      // The connection would carry the late reply: closed.
      const c = req._c
      if (c) {
        c.req = null
        this._drop(c, true)
      }
      this.handleReply(req.rid, new Error('ERR_TIMEOUT'))
    })
  }

  sendRequest (req) {
    if (this.conf.secure || req.opts.compress) return super.sendRequest(req)
    try {
      req._body = this.format([req.rid, req.key, req.payload === undefined ? null : req.payload])
    } catch (e) {
      return later(() => this.handleReply(req.rid, new Error(`ERR_REQUEST_GENERIC: ${e.message}`)))
    }
    this._deadlines.add(req, req.opts.timeout)
    this.connected()
    this._dispatch(req)
  }

  // A free connection for `req`, a new one, or a place in the queue.
  _dispatch (req) {
    while (this._idle.length) {
      const c = this._idle.pop()
      if (Date.now() - c.idleSince <= IDLE_REUSE) return this._send(c, req)
      this._drop(c, true)
    }
    if (this._conns.size + this._dialing >= MAX_CONNS) return this._waiting.push(req)
    this._dial(req)
  }

  _dial (req) {
    this._dialing++
    native.tcpDial(this.conf.dest, DIAL_TIMEOUT, (err, socket) => {
      this._dialing--
      if (!err && !this.isActive()) {
        native.loopHttpConn(socket, () => {}, () => {}).close()
        err = new Error('the transport was stopped')
      }
      if (err) {
        const e = new Error(`ERR_REQUEST_GENERIC: ${err.detail || err.message}`)
        if (this._reqs.has(req.rid)) this.handleReply(req.rid, e)
        // Nothing left to carry the queued requests: they fail the same way.
        if (!this._conns.size && !this._dialing) {
          for (const w of this._waiting.splice(0)) if (this._reqs.has(w.rid)) this.handleReply(w.rid, e)
        }
        return
      }
      const c = { conn: null, req: null, idleSince: 0 }
      c.conn = native.loopHttpConn(socket, (texts) => this._onReplies(c, texts), (why) => this._onEnd(c, why))
      this._conns.add(c)
      if (this._reqs.has(req.rid)) this._send(c, req)
      else this._free(c)
    })
  }

  _send (c, req) {
    c.req = req
    req._c = c
    if (!c.conn.sendHttp(this.conf.dest, req._body)) {
      // The socket ended (its end not delivered yet): another connection.
      c.req = null
      req._c = null
      this._drop(c, false)
      return this._dispatch(req)
    }
  }

  // `c` carries nothing now: the next queued request, or the idle list.
  _free (c) {
    c.req = null
    while (this._waiting.length) {
      const next = this._waiting.shift()
      if (this._reqs.has(next.rid)) return this._send(c, next)
    }
    c.idleSince = Date.now()
    this._idle.push(c)
  }

  _drop (c, close) {
    this._conns.delete(c)
    const i = this._idle.indexOf(c)
    if (i >= 0) this._idle.splice(i, 1)
    if (close) c.conn.close()
  }

  // `[status, body, ...]`: the reply to the request on `c` (one at a time).
  _onReplies (c, texts) {
    for (let i = 0; i + 1 < texts.length; i += 2) {
      const req = c.req
      if (!req) continue
      req._c = null
      const status = Number(texts[i])
      const body = texts[i + 1]
      let err = null
      let res
      if (status < 200 || status > 299) {
        err = new Error(`ERR_REQUEST_GENERIC: HTTP ${status}: ${envelopeError(body)}`)
      } else {
        const data = this.parse(body)
        if (!Array.isArray(data)) err = new Error(`ERR_REQUEST_GENERIC: the reply is not a JSON array: ${body.slice(0, 200)}`)
        else if (data[0] !== req.rid) err = new Error(`ERR_REQUEST_GENERIC: reply rid ${JSON.stringify(data[0])} does not match request rid ${JSON.stringify(req.rid)}`)
        else if (data[1]) err = new Error(data[1])
        else res = data[2] === undefined ? null : data[2]
      }
      // Freed before the callback runs: a request it sends at once reuses the connection.
      if (c.conn.open) this._free(c)
      else c.req = null
      this.handleReply(req.rid, err, res)
    }
  }

  // The connection ended: a request on it fails. It is not sent again: the server may have
  // read it (at most once, as on the core's client). A reused connection the server closed
  // before the request left is found by `sendHttp`, and the request goes on another.
  _onEnd (c, why) {
    this._drop(c, false)
    const req = c.req
    c.req = null
    if (req && this._reqs.has(req.rid)) {
      req._c = null
      this.handleReply(req.rid, new Error(`ERR_REQUEST_GENERIC: ${why}`))
    }
    while (this._waiting.length && this._conns.size + this._dialing < MAX_CONNS) {
      const next = this._waiting.shift()
      if (this._reqs.has(next.rid)) this._dial(next)
    }
  }

  _stop () {
    super._stop()
    this._deadlines.stop()
    for (const c of Array.from(this._conns)) this._drop(c, true)
    this._waiting = []
  }

  replyError (err) {
    if (err.code === 'ERR_REMOTE') return new Error(err.detail)
    if (err.code === 'ERR_TIMEOUT') return new Error('ERR_TIMEOUT')
    if (err.code === 'ERR_DECODE' && /gzip|deflate|compress/i.test(err.detail || '')) return new Error('ERR_REPLY_ENCODING_COMPRESSION')
    return new Error(`ERR_REQUEST_GENERIC: ${err.detail || err.message}`)
  }

  async requestStream (key, opts) {
    return this._requestStream(key, opts)
  }

  async _requestStream (key, opts) {
    return this.sendRequestStream(this.newRequest(key, null, opts))
  }

  // POST / with `_gr: [rid, key]` and a chunked body; the response body is the readable side.
  async sendRequestStream (req) {
    const extra = {}
    const h = req.opts.headers || {}
    for (const k of Object.keys(h)) extra[k] = typeof h[k] === 'string' ? h[k] : JSON.stringify(h[k])
    const secure = this.conf.secure
    const [host, port] = splitDest(this.conf.dest)
    const options = {
      hostname: host,
      port,
      path: '/',
      method: 'POST',
      headers: { _gr: this.format([req.rid, req.key]), connection: 'close', 'transfer-encoding': 'chunked', ...extra },
      timeout: req.opts.timeout
    }
    if (secure) Object.assign(options, secure, { agent: false })
    const reqStream = new PassThrough()
    const resStream = new PassThrough()
    const httpReq = (secure ? https : http).request(options, (res) => pipeline(res, resStream, () => {}))
    httpReq.on('error', (err) => {
      reqStream.destroy(err)
      resStream.destroy(err)
    })
    pipeline(reqStream, httpReq, () => {})
    return Duplex.from({ writable: reqStream, readable: resStream })
  }
}

// What a non-2xx reply says: the error of an envelope `[rid, error, data]`, else its text.
function envelopeError (body) {
  try {
    const d = JSON.parse(body)
    if (Array.isArray(d) && typeof d[1] === 'string') return d[1]
  } catch (e) {}
  return body.slice(0, 1000)
}

function splitDest (dest) {
  const i = String(dest).lastIndexOf(':')
  return [dest.slice(0, i).replace(/^\[|\]$/g, ''), Number(dest.slice(i + 1))]
}

class PeerRPCClient extends Base.PeerRPCClient {
  getRequestOpts (opts) {
    const res = { timeout: opts.timeout, compress: opts.compress }
    if (opts.headers) res.headers = opts.headers
    return res
  }

  // A Duplex at once: what is written to it is the request body, what it reads is the reply body.
  stream (key, opts = {}) {
    const incoming = new PassThrough()
    const outgoing = new PassThrough()
    const dup = Duplex.from({ writable: incoming, readable: outgoing })
    this.link.lookup(key, {}, async (err, dests) => {
      if (err) return dup.destroy(err)
      try {
        const dest = this.dest(dests, key, this.getDestOpts(opts))
        const t = this.transport(dest, this.getTransportOpts(opts))
        const req = await t.requestStream(key, this.getRequestOpts(opts))
        pipeline(incoming, req, outgoing, (e) => { if (e) dup.destroy(e) })
      } catch (e) {
        dup.destroy(e)
      }
    })
    return dup
  }
}
PeerRPCClient.kind = 'http'
PeerRPCClient.TransportRPCClient = TransportRPCClient

class TransportRPCServer extends Base.TransportRPCServer {
  constructor (client, conf) {
    super(client, conf)
    this.conf = conf
    this.init()
    this.disableBuffered = this.conf.disableBuffered || false
  }

  nativeOptions () {
    const secure = this.conf.secure
    if (!secure) return {}
    assertSecure(secure)
    const clientAuth = secure.requestCert ? (secure.rejectUnauthorized === false ? 'optional' : 'required') : 'none'
    return { tls: native.serverTls({ cert: secure.cert, key: secure.key, ca: secure.ca, clientAuth }) }
  }

  listen (port) {
    // Node's req/res objects are needed: serve from Node.
    if (this.disableBuffered || this.listenerCount('stream') > 0) return this._listenNode(port)
    if (this.conf.secure) return super.listen(port)
    return this._listenLoop(port)
  }

  // --- Loop-served mode: plain HTTP/1.1 sockets read and written on this thread's loop --------
  // The core accepts (Nagle off) and hands each socket over; the addon cuts requests from its
  // bytes (content-length or chunked bodies, gzip with `grc-compress`, pipelining) and writes
  // the replies in request order; the core's server limits are kept (lib/loopsockets.js).

  _listenLoop (port) {
    if (this._native || this._loop) throw new Error('ERR_ALREADY_LISTENING')
    const limits = native.serverLimits(this.conf.limits)
    try {
      this._loop = native.loopListenTcp(port, (socket) => this._adopt(socket), limits.max_connections)
    } catch (e) {
      throw listenError(e, port)
    }
    this._socks = new LoopSockets(limits, (sock, texts) => this._onLoopRequests(sock, texts), { http: true })
    this._release = keepAlive()
    this.listening()
    this.port = native.loopServerPort(this._loop)
    return this
  }

  _adopt (socket) {
    if (!this._loop) return native.loopHttpServerConn(socket, {}, () => {}, () => {}).close()
    this._socks.adopt(socket)
  }

  // `[seq, flags, body, _gr, _a, _ar, ...]`: whole requests of `sock`.
  _onLoopRequests (sock, t) {
    for (let i = 0; i + 5 < t.length; i += 6) {
      const seq = Number(t[i])
      const flags = t[i + 1]
      sock.inFlight++
      const meta = { cert: undefined, isStream: flags.includes('s'), compress: flags.includes('c') }
      if (flags.includes('g')) {
        try {
          meta.infoHeaders = JSON.parse(t[i + 3])
        } catch (e) {
          // The reference's exact answer.
          this._loopReply(sock, seq, 500, '[null, "ERR_HEADER_PARSE_GR", null]')
          continue
        }
      }
      meta.action = flags.includes('a') ? t[i + 4] : null
      try {
        meta.args = JSON.parse(t[i + 5])
      } catch (e) {
        meta.args = {}
      }
      const data = this.parse(t[i + 2])
      if (!Array.isArray(data)) {
        // The reference never answers (its client waits for its timeout); the core's server
        // answers 400, and so does this one (docs/compat.md).
        this.emit('request-error')
        this._loopReply(sock, seq, 400, this.format([null, 'ERR_DECODE: the body is not a JSON array', null]))
        continue
      }
      this._onLoopRequest(sock, seq, data, meta)
    }
  }

  _onLoopRequest (sock, seq, data, meta) {
    const { rid, key } = this.getRidKey(meta.infoHeaders, data)
    let replied = false
    const send = (err, res) => {
      if (replied) return
      replied = true
      let text
      try {
        text = this.format([rid, err, res === undefined ? null : res])
      } catch (e) {
        text = this.format([rid, 'ERR_REPLY_NOT_JSON', null])
      }
      this._loopReply(sock, seq, 200, text)
    }
    const handler = { reply: (err, res) => send(err ? err.message : null, res) }
    try {
      this.emitRequest(rid, key, data[2], handler, null, meta)
    } catch (e) {
      // As on the native path (docs/compat.md): the client gets the exception's message.
      send((e && e.message) || String(e) || 'ERR_HANDLER', undefined)
      if (this.listenerCount('error')) this.emit('error', e)
      else process.emitWarning(`grenache-native: a 'request' listener threw: ${e && e.stack ? e.stack : e}`)
    }
  }

  _loopReply (sock, seq, status, text) {
    this._socks.answered(sock)
    // True: requests the client sent at once wait in the input, past the pipelining bound.
    if (sock.conn.replyHttp(seq, status, text)) setImmediate(() => sock.conn.pump())
  }

  emitRequest (rid, key, payload, handler, fingerprint, meta) {
    const cert = fingerprint ? { fingerprint } : undefined
    const m = meta || {}
    this.emit('request', rid, key, payload, handler, cert, {
      cert,
      isStream: !!m.isStream,
      compress: !!m.compress,
      infoHeaders: m.infoHeaders === null ? undefined : m.infoHeaders,
      action: m.action === undefined ? null : m.action,
      args: m.args || {}
    })
  }

  // --- Node-served mode: the reference's request handling on a Node http(s) server -------------

  getSocket (secure) {
    if (!secure) return http.createServer()
    assertSecure(secure)
    return https.createServer(secure)
  }

  _listenNode (port) {
    const secure = this.conf.secure
    const socket = this.getSocket(secure)
    if (this.conf.timeout) socket.setTimeout(this.conf.timeout)
    socket.on('request', (req, rep) => this._onNodeRequest(req, rep, secure))
    socket.on('error', (err) => {
      if (this.listenerCount('error')) this.emit('error', err)
      else process.emitWarning(`grenache-native/http: server on port ${port}: ${err.message}`)
      this.unlisten()
    })
    socket.listen(port)
    this.socket = socket
    this.port = port
    this._release = keepAlive()
    this.listening()
    return this
  }

  _onNodeRequest (req, rep, secure) {
    const enc = req.headers['grc-compress'] || ''
    const cert = secure ? req.socket.getPeerCertificate() : undefined
    const meta = { cert, isStream: req.headers['transfer-encoding'] === 'chunked', compress: enc.includes('gzip') }
    if (req.headers._gr) {
      try {
        meta.infoHeaders = JSON.parse(req.headers._gr)
      } catch (e) {
        rep.statusCode = 500
        rep.end('[null, "ERR_HEADER_PARSE_GR", null]')
        return
      }
    }
    meta.action = req.headers._a || null
    try {
      meta.args = JSON.parse(req.headers._ar)
    } catch (e) {
      meta.args = {}
    }
    this.emit('stream', req, rep, meta, { reply: this.sendReply.bind(this, rep) })
    if (this.disableBuffered) return
    this.handleBufferedRequest(req, rep, meta)
  }

  handleBufferedRequest (req, rep, meta) {
    const handler = { reply: (rid, err, res) => this.sendReply(rep, rid, err, res, meta) }
    const chunks = []
    req.on('data', (c) => chunks.push(c)).on('end', () => {
      const body = Buffer.concat(chunks)
      const go = (b) => this.handleRequest(handler, this.parse(b), meta)
      if (!meta.compress) return go(body)
      // A body that does not gunzip is kept as it is.
      zlib.gunzip(body, (err, out) => go(err ? body : out))
    })
  }

  getRidKey (infoHeaders, data) {
    return {
      rid: infoHeaders && infoHeaders[0] ? infoHeaders[0] : data[0],
      key: infoHeaders && infoHeaders[1] ? infoHeaders[1] : data[1]
    }
  }

  handleRequest (handler, data, meta = {}) {
    if (!data) return this.emit('request-error')
    const { rid, key } = this.getRidKey(meta.infoHeaders, data)
    this.emit('request', rid, key, data[2], { reply: (err, res) => handler.reply(rid, err, res) }, meta.cert, meta)
  }

  sendReply (rep, rid, err, res, meta) {
    const out = this.format([rid, err ? err.message : null, res])
    const send = (b) => {
      rep.write(b)
      rep.end()
    }
    if (meta && meta.compress) zlib.gzip(out, (e, z) => send(e ? out : z))
    else send(out)
  }

  unlisten () {
    if (this._loop) {
      native.loopServerClose(this._loop)
      this._loop = null
      this._socks.closeAll()
    }
    if (this.socket) {
      try {
        this.socket.close()
      } catch (e) {}
      this.socket = null
    }
    super.unlisten()
  }
}

class PeerRPCServer extends Base.PeerRPCServer {}
PeerRPCServer.kind = 'http'
PeerRPCServer.TransportRPCServer = TransportRPCServer

module.exports = { PeerRPCClient, PeerRPCServer }
Object.defineProperty(module.exports, 'TransportRPCClient', { value: TransportRPCClient, enumerable: false })
Object.defineProperty(module.exports, 'TransportRPCServer', { value: TransportRPCServer, enumerable: false })
