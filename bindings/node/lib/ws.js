// grenache-native/ws: `{ PeerRPCClient, PeerRPCServer, PeerPub, PeerSub, TransportRPCServer,
// TransportRPCClient }` of grenache-nodejs-ws 1.0.0 on the native core: RPC over WebSocket (WSS
// with `secure`, client certificates checked by `secure.verifyClient`), PUB/SUB. Differences from
// the reference are in docs/compat.md.
'use strict'

const assert = require('assert')
const Base = require('./base')
const native = require('./native')
const { Deadlines, keepAlive, listenError } = require('./util')
const { LoopSockets } = require('./loopsockets')

const assertSecure = (secure) => {
  assert(Buffer.isBuffer(secure.key), 'conf.secure.key must be a Buffer')
  assert(Buffer.isBuffer(secure.cert), 'conf.secure.cert must be a Buffer')
  assert(Buffer.isBuffer(secure.ca), 'conf.secure.ca must be a Buffer')
}

// How long dialing a destination (TCP and upgrade) may take.
const DIAL_TIMEOUT = 10000

// A client transport: one socket to `conf.dest`, as in the reference. A plain `ws://` socket is
// read and written on this thread's event loop (lib/native.js `loopConn`): requests go out with
// one write each (one per socket for those sent while replies are being delivered), replies come
// in batches. `wss://` goes through the core's client (the base class).
class TransportRPCClient extends Base.TransportRPCClient {
  init () {
    super.init()
    if (this.conf.secure) assertSecure(this.conf.secure)
    this._conn = null
    this._queue = null
    this._deadlines = new Deadlines(() => this._reqs.values(), (req) => this.handleReply(req.rid, new Error('ERR_TIMEOUT')))
    this._refd = false
  }

  replyError (err) {
    if (err.code === 'ERR_REMOTE') return new Error(err.detail)
    if (err.code === 'ERR_TIMEOUT') return new Error('ERR_TIMEOUT')
    // Connection refused, TLS refused, connection closed: the reference's close error.
    return new Error('ERR_TRANSPORT_CLOSE')
  }

  sendRequest (req) {
    if (this.conf.secure) return super.sendRequest(req)
    if (this._conn) return this._write(req)
    if (this._queue) return this._queue.push(req)
    this._queue = [req]
    this._dial()
  }

  _dial () {
    this.connecting()
    this._setRef(true)
    native.loopDial(this.conf.dest, DIAL_TIMEOUT, (err, socket) => {
      const queue = this._queue || []
      this._queue = null
      if (!err && !this.isActive()) {
        native.loopConn(socket, true, () => {}, () => {}).close(true)
        err = { code: 'ERR_TRANSPORT_CLOSE' }
      }
      if (err) {
        this.disconnected()
        for (const req of queue) this.handleReply(req.rid, this.replyError(err))
        this._setRef(false)
        return
      }
      const conn = native.loopConn(socket, true, (texts) => this._onMessages(texts), () => this._onClose(conn))
      this._conn = conn
      this._conn.setRef(this._refd)
      this.connected()
      for (const req of queue) {
        if (this._reqs.has(req.rid)) this._write(req)
      }
      if (this._conn) this._conn.pump()
    })
  }

  _write (req) {
    let text
    try {
      text = this.format([req.rid, req.key, req.payload])
    } catch (e) {
      return process.nextTick(() => this.handleReply(req.rid, e))
    }
    req._conn = this._conn
    if (!this._conn.send(text)) {
      req._conn = null
      // The socket ended (its close not delivered yet): dial a new one.
      this._conn = null
      this.disconnected()
      return this.sendRequest(req)
    }
    this._setRef(true)
    this._deadlines.add(req, req.opts.timeout)
  }

  _setRef (on) {
    if (this._refd === on) return
    this._refd = on
    if (this._conn) this._conn.setRef(on)
  }

  _onMessages (texts) {
    for (let i = 0; i < texts.length; i++) {
      const data = this.parse(texts[i])
      if (!data) continue
      this.handleReply(data[0], data[1] ? new Error(data[1]) : null, data[2])
    }
  }

  handleReply (rid, err, data) {
    super.handleReply(rid, err, data)
    if (this._refd && this._reqs.size === 0 && !this._queue) this._setRef(false)
  }

  // The socket ended: what waits for a reply on it fails, the next request dials again.
  _onClose (conn) {
    if (this._conn === conn) {
      this._conn = null
      this.disconnected()
    }
    for (const req of Array.from(this._reqs.values())) {
      if (req._conn === conn) this.handleReply(req.rid, new Error('ERR_TRANSPORT_CLOSE'))
    }
  }

  _stop () {
    super._stop()
    this._deadlines.stop()
    if (this._conn) this._conn.close(true)
    this._conn = null
    this._refd = false
  }
}

class PeerRPCClient extends Base.PeerRPCClient {}
PeerRPCClient.kind = 'ws'
PeerRPCClient.TransportRPCClient = TransportRPCClient

// The request handler's fifth argument: the client certificate (`{ fingerprint }`) over WSS,
// else null. A plain `ws://` server hands each socket, once upgraded, to this thread's event
// loop: requests are read and answered here, the replies given while a batch of requests is
// handled go out in one write. `wss://` is served by the core (the base class).
class TransportRPCServer extends Base.TransportRPCServer {
  listen (port) {
    assert(Number.isInteger(port), 'port must be an Integer')
    if (this.conf.secure) return super.listen(port)
    if (this._native || this._loop) throw new Error('ERR_ALREADY_LISTENING')
    // The core's limits on the sockets it serves, kept here for the sockets it hands over.
    const limits = native.serverLimits(this.conf.limits)
    try {
      this._loop = native.loopListen(port, (socket) => this._adopt(socket), limits.max_connections)
    } catch (e) {
      throw listenError(e, port)
    }
    this._socks = new LoopSockets(limits, (sock, texts) => this._onMessages(sock, texts))
    this._release = keepAlive()
    this.listening()
    this.port = native.loopServerPort(this._loop)
    return this
  }

  _adopt (socket) {
    if (!this._loop) return native.loopConn(socket, false, () => {}, () => {}).close(true)
    this._socks.adopt(socket)
  }

  _onMessages (sock, texts) {
    for (let i = 0; i < texts.length; i++) {
      const data = this.parse(texts[i])
      if (!data) {
        this.emit('request-error')
        continue
      }
      sock.inFlight++
      this._onLoopRequest(sock, data[0], data[1], data[2])
    }
  }

  _onLoopRequest (sock, rid, key, payload) {
    let replied = false
    const send = (err, res) => {
      if (replied) return
      replied = true
      this._socks.answered(sock)
      let text
      try {
        text = this.format([rid, err, res === undefined ? null : res])
      } catch (e) {
        text = this.format([rid, 'ERR_REPLY_NOT_JSON', null])
      }
      sock.conn.send(text)
    }
    const handler = { reply: (err, res) => send(err ? err.message : null, res) }
    try {
      this.emitRequest(rid, key, payload, handler, null, null)
    } catch (e) {
      // As on the native path (docs/compat.md): the client gets the exception's message.
      send((e && e.message) || String(e) || 'ERR_HANDLER', undefined)
      if (this.listenerCount('error')) this.emit('error', e)
      else process.emitWarning(`grenache-native: a 'request' listener threw: ${e && e.stack ? e.stack : e}`)
    }
  }

  unlisten () {
    if (this._loop) {
      native.loopServerClose(this._loop)
      this._loop = null
      this._socks.closeAll()
    }
    super.unlisten()
  }

  nativeOptions () {
    const secure = this.conf.secure
    if (!secure) return {}
    assertSecure(secure)
    assert.strictEqual(typeof secure.verifyClient, 'function', 'conf.secure.verify must be a function')
    const verifyClient = secure.verifyClient
    return {
      tls: native.serverTls({ cert: secure.cert, key: secure.key, ca: secure.ca, clientAuth: 'required' }),
      verify: (info, answer) => {
        const cert = info.fingerprint ? { fingerprint: info.fingerprint } : {}
        const socket = { getPeerCertificate: () => cert, remoteAddress: info.remoteAddress ? info.remoteAddress.replace(/:\d+$/, '') : undefined }
        const req = { url: info.path, headers: {}, socket, connection: socket, client: socket }
        const wsInfo = { origin: undefined, secure: true, req }
        // ws calls a one-argument verifyClient synchronously and uses its result.
        if (verifyClient.length < 2) return answer(verifyClient(wsInfo))
        verifyClient(wsInfo, (ok) => answer(ok))
      }
    }
  }
}

class PeerRPCServer extends Base.PeerRPCServer {}
PeerRPCServer.kind = 'ws'
PeerRPCServer.TransportRPCServer = TransportRPCServer

// --- PUB/SUB ---------------------------------------------------------------------------------

class TransportPub extends Base.TransportSocket {
  listen (port) {
    assert(Number.isInteger(port), 'port must be an Integer')
    if (this._pub) throw new Error('ERR_ALREADY_LISTENING')
    try {
      this._pub = native.pubBind(port)
    } catch (e) {
      throw listenError(e, port)
    }
    this._release = keepAlive()
    this.listening()
    this.port = native.pubPort(this._pub)
    return this
  }

  // Sends `msg` as it is to every connected subscriber (a Buffer as a binary frame).
  pub (msg) {
    if (this._pub) native.pubPublish(this._pub, msg)
  }

  unlisten () {
    if (this._pub) native.pubClose(this._pub)
    this._pub = null
    if (this._release) this._release()
    this._release = null
    this.unlistening()
  }

  _stop () {
    super._stop()
    this.unlisten()
  }
}

class TransportSub extends Base.TransportSocket {
  init () {
    super.init()
    for (const k of ['connected', 'disconnected', 'message']) this.on(k, (data) => this.client.emit(k, data))
  }

  // Connects to the publisher at `conf.dest`: 'connected', 'message' (string, or Buffer for
  // binary frames) and 'disconnected' events, forwarded to the PeerSub.
  sub () {
    this.unsub()
    this.connecting()
    this._release = keepAlive()
    this._sub = native.subTo(this.conf.dest, (data) => this.emit('message', data), (up) => {
      if (up) {
        this.connected()
        this.emit('connected')
      } else {
        this.disconnected()
        this.emit('disconnected')
      }
    })
  }

  unsub () {
    if (this._sub) native.subClose(this._sub)
    this._sub = null
    if (this._release) this._release()
    this._release = null
    this.disconnected()
  }

  _stop () {
    super._stop()
    this.unsub()
  }
}

class PeerPub extends Base.PeerPub {}
PeerPub.TransportPub = TransportPub

class PeerSub extends Base.PeerSub {}
PeerSub.TransportSub = TransportSub

module.exports = { PeerRPCClient, PeerRPCServer, PeerSub, PeerPub, TransportRPCServer, TransportRPCClient }
