// grenache-native/http: `{ PeerRPCClient, PeerRPCServer }` of grenache-nodejs-http 1.0.2.
//
// Buffered requests and replies are carried by the native core (client and server). What needs
// Node's own request and response objects stays in Node: `peer.stream()` (a Duplex over an HTTP
// request with the `_gr` header) and a server transport with `disableBuffered` (or with 'stream'
// listeners when it starts listening), whose 'stream' event hands out Node's `req`/`res`.
// Differences from the reference are in docs/compat.md.
'use strict'

const http = require('http')
const https = require('https')
const zlib = require('zlib')
const assert = require('assert')
const { PassThrough, Duplex, pipeline } = require('stream')

const Base = require('./base')
const native = require('./native')
const { keepAlive } = require('./util')

const assertSecure = (secure) => {
  assert(Buffer.isBuffer(secure.key), 'conf.secure.key must be a Buffer')
  assert(Buffer.isBuffer(secure.cert), 'conf.secure.cert must be a Buffer')
  assert(Buffer.isBuffer(secure.ca), 'conf.secure.ca must be a Buffer')
}

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
    return super.listen(port)
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
