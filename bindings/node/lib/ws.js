// grenache-native/ws: `{ PeerRPCClient, PeerRPCServer, PeerPub, PeerSub, TransportRPCServer,
// TransportRPCClient }` of grenache-nodejs-ws 1.0.0 on the native core: RPC over WebSocket (WSS
// with `secure`, client certificates checked by `secure.verifyClient`), PUB/SUB. Differences from
// the reference are in docs/compat.md.
'use strict'

const assert = require('assert')
const Base = require('./base')
const native = require('./native')
const { keepAlive, listenError } = require('./util')

const assertSecure = (secure) => {
  assert(Buffer.isBuffer(secure.key), 'conf.secure.key must be a Buffer')
  assert(Buffer.isBuffer(secure.cert), 'conf.secure.cert must be a Buffer')
  assert(Buffer.isBuffer(secure.ca), 'conf.secure.ca must be a Buffer')
}

class TransportRPCClient extends Base.TransportRPCClient {
  init () {
    super.init()
    if (this.conf.secure) assertSecure(this.conf.secure)
  }

  replyError (err) {
    if (err.code === 'ERR_REMOTE') return new Error(err.detail)
    if (err.code === 'ERR_TIMEOUT') return new Error('ERR_TIMEOUT')
    // Connection refused, TLS refused, connection closed: the reference's close error.
    return new Error('ERR_TRANSPORT_CLOSE')
  }
}

class PeerRPCClient extends Base.PeerRPCClient {}
PeerRPCClient.kind = 'ws'
PeerRPCClient.TransportRPCClient = TransportRPCClient

// The request handler's fifth argument: the client certificate (`{ fingerprint }`) over WSS,
// else null.
class TransportRPCServer extends Base.TransportRPCServer {
  listen (port) {
    assert(Number.isInteger(port), 'port must be an Integer')
    return super.listen(port)
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
