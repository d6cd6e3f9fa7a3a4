// grenache-native/utp: `{ PeerRPCClient, PeerRPCServer, TransportRPCClient, TransportRPCServer }`
// of grenache-nodejs-utp 1.0.0 on the native core: RPC over uTP on one UDP socket per process
// (shared by every server and client of the process, so the NAT mapping a punch opens is the one
// the requests use), punches (`peer.punch(name, opts, cb)`, `transport.punch({address, port})`,
// the 'punch' event), requests straight to an endpoint (`peer.request({address, port}, ...)`)
// and, beyond the reference, a broker (`conf.broker`). Differences from the reference are in
// docs/compat.md ("grenache-native/utp").
'use strict'

const Base = require('./base')
const native = require('./native')
const { keepAlive, later, retry, listenError } = require('./util')

// --- The process's socket --------------------------------------------------------------------

let node = null
let nodeUsers = 0
// Transports told about punches: listening servers and live client transports (all of them,
// not only the first one made as in the reference).
const punchListeners = new Set()

// `'1.2.3.4:5'` -> `{ address, family, port }`, the shape of the reference's punch events.
function endpoint (text) {
  const i = text.lastIndexOf(':')
  return { address: text.slice(0, i), family: 'IPv4', port: Number(text.slice(i + 1)) }
}

function target (t) {
  if (typeof t === 'string') return t
  if (!t || typeof t.address !== 'string' || !Number.isInteger(Number(t.port))) throw new TypeError('ERR_PUNCH_TARGET: expected { address, port }')
  return `${t.address}:${Number(t.port)}`
}

// The process's node, bound on first use (on `port` when given, else any free port).
function socket (port) {
  if (!node) {
    node = native.utpNode(port || 0)
    native.utpOnPunch(node, (from) => {
      const other = endpoint(from)
      for (const t of Array.from(punchListeners)) t.emit('punch', other)
    })
  }
  return node
}

function acquire (port) {
  const n = socket(port)
  nodeUsers++
  return n
}

// The last user gone, the socket is let go (it closes once its streams are gone); the next use
// binds a new one (the reference closed the shared socket for good on the first unlisten).
function release () {
  if (--nodeUsers > 0) return
  nodeUsers = 0
  if (node) native.utpNodeClose(node)
  node = null
}

// One punch to `to` ({address, port} or 'ip:port'); with `cb`, punches every 100 ms until the
// other side answers (its punch or acknowledgement), cb(null), or cb(err) with
// err.code 'ERR_PUNCH_TIMEOUT' after `timeout` ms.
function punch (to, timeout, cb) {
  let t
  try {
    t = target(to)
  } catch (e) {
    if (cb) return later(cb, e)
    throw e
  }
  const n = socket()
  if (!cb) return native.utpSendPunch(n, t)
  native.utpPunch(n, t, timeout || 5000, (err) => cb(err || null))
}

// The native Link of a Link (ours has one; for the reference's, one on its Grape URL).
function nativeLink (link) {
  if (link && typeof link._native === 'function') return link._native()
  if (link && link.conf && link.conf.grape) return native.linkNew(link.conf.grape, undefined)
  return undefined
}

// `peer.punch(name, [opts], [cb])` of both peers: looks `name` up, picks one destination and
// punches it from the process's socket. As the reference, cb(null) right after the punch went
// out; with `opts.timeout`, punches until answered and cb(err) on ERR_PUNCH_TIMEOUT.
function peerPunch (peer, key, opts, cb) {
  if (typeof opts === 'function') return peerPunch(peer, key, {}, opts)
  opts = opts || {}
  cb = typeof cb === 'function' ? cb : () => {}
  peer.link.lookup(key, {}, (err, dests) => {
    if (err) return cb(err)
    const dest = peer.dest(dests, key, peer.getDestOpts ? peer.getDestOpts(opts) : opts)
    if (!dest) return cb(new Error('ERR_GRAPE_LOOKUP_EMPTY'))
    if (opts.timeout) return punch(dest, opts.timeout, cb)
    try {
      punch(dest)
    } catch (e) {
      return cb(e)
    }
    cb(null)
  })
}

// --- Transports ------------------------------------------------------------------------------

class TransportRPCClient extends Base.TransportRPCClient {
  init () {
    super.init()
    punchListeners.add(this)
  }

  // Punches `{address, port}` once (the reference); with `cb`, until answered (see above;
  // `conf.punchTimeout`, default 5000 ms).
  punch (to, cb) {
    return punch(to, this.conf.punchTimeout, cb)
  }

  replyError (err) {
    if (err.code === 'ERR_REMOTE') return new Error(err.detail)
    if (err.code === 'ERR_TIMEOUT' || err.code === 'ERR_PUNCH_TIMEOUT') return new Error(err.code)
    if (err.code === 'ERR_GRAPE_LOOKUP_EMPTY') return new Error(err.code)
    return new Error('ERR_TRANSPORT_CLOSE')
  }

  _stop () {
    punchListeners.delete(this)
    super._stop()
  }
}

// `listen()` takes no port (the process's socket has one, `this.port` after listening), or the
// port the process's socket is to be bound on if it is not bound yet. The 'request' event has the
// reference's sixth argument: `{ address, family, port }` of the caller as this socket saw it
// (behind a NAT, its mapping).
class TransportRPCServer extends Base.TransportRPCServer {
  listen (port) {
    if (this._native) throw new Error('ERR_ALREADY_LISTENING')
    const n = acquire(port)
    if (port && native.utpNodePort(n) !== port) {
      release()
      throw new Error(`ERR_PORT_MISMATCH: this process's uTP socket is bound on port ${native.utpNodePort(n)}`)
    }
    try {
      this._native = native.serverListenUtp({
        node: n,
        link: this.conf.broker ? nativeLink(this.client.link) : undefined,
        broker: this.conf.broker,
        onRequest: (token, rid, key, payload, fingerprint, meta) => this._onNativeRequest(token, rid, key, payload, fingerprint, meta)
      })
    } catch (e) {
      release()
      throw listenError(e, port)
    }
    this._release = keepAlive()
    this.listening()
    this.port = native.utpNodePort(n)
    punchListeners.add(this)
    return this
  }

  emitRequest (rid, key, payload, handler, _fingerprint, remote) {
    this.emit('request', rid, key, payload, handler, null, remote)
  }

  // Punches `{address, port}` once (the reference); with `cb`, until answered.
  punch (to, cb) {
    return punch(to, this.conf.punchTimeout, cb)
  }

  // With `conf.broker`: registers `name` with that broker from the process's socket now and
  // every 5 s until unlisten, so clients behind other NATs are introduced (both sides punch).
  register (name) {
    if (!this._native) throw new Error('ERR_NOT_LISTENING: listen() first')
    if (!this.conf.broker) throw new Error('ERR_NO_BROKER: conf.broker is not set')
    native.serverRegister(this._native, name)
    return this
  }

  unlisten () {
    const was = !!this._native
    punchListeners.delete(this)
    super.unlisten()
    if (was) release()
  }
}

// --- Peers -----------------------------------------------------------------------------------

// conf: the reference's, plus `broker` (a broker's name: requests by name find workers through
// it and punch them from both sides first) and `punchTimeout` (ms, default 5000).
class PeerRPCClient extends Base.PeerRPCClient {
  _native () {
    if (!this._nativeClient) {
      const n = acquire()
      try {
        this._nativeClient = native.clientOnUtpNode(n, this.conf.broker ? nativeLink(this.link) : undefined, this.conf.broker, this.conf.punchTimeout)
      } catch (e) {
        release()
        throw e
      }
      this._holdsNode = true
    }
    return this._nativeClient
  }

  // `key` a service name (looked up; with `conf.broker`, found through the broker), or an
  // endpoint `{address, port}` (no lookup; the key sent is 'address:port', as the reference).
  request (key, payload, opts = {}, cb) {
    if (typeof opts === 'function') return this.request(key, payload, undefined, opts)
    if (!opts) opts = {}
    if (key && typeof key === 'object') {
      if (!this.tpool) return later(cb, new Error('ERR_PEER_NOT_INITIALIZED: call init() first'))
      let dest
      try {
        dest = target(key)
      } catch (e) {
        return later(cb, e)
      }
      return this.transport(dest, this.getTransportOpts(opts)).request(dest, payload, this.getRequestOpts(opts), cb)
    }
    if (this.conf.broker && typeof key === 'string') {
      if (!this.tpool) return later(cb, new Error('ERR_PEER_NOT_INITIALIZED: call init() first'))
      // No destination: the native client asks the broker and punches.
      return retry(opts.retry || 1, (done) => {
        this.transport(undefined, this.getTransportOpts(opts)).request(key, payload, this.getRequestOpts(opts), done)
      }, cb)
    }
    return super.request(key, payload, opts, cb)
  }

  punch (key, opts, cb) { return peerPunch(this, key, opts, cb) }

  _stop () {
    super._stop()
    if (this._holdsNode) release()
    this._holdsNode = false
  }
}
PeerRPCClient.kind = 'utp'
PeerRPCClient.TransportRPCClient = TransportRPCClient

// conf: the reference's, plus `broker` (see TransportRPCServer.register) and `punchTimeout`.
class PeerRPCServer extends Base.PeerRPCServer {
  punch (key, opts, cb) { return peerPunch(this, key, opts, cb) }
}
PeerRPCServer.kind = 'utp'
PeerRPCServer.TransportRPCServer = TransportRPCServer

module.exports = { PeerRPCClient, PeerRPCServer, TransportRPCClient, TransportRPCServer }
