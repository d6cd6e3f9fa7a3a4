// The peer, transport and pool classes shared by grenache-native/http and grenache-native/ws:
// the public surface of grenache-nodejs-base (constructors, conf defaults, init/stop, dest and
// transport selection, the transport pool reached as `peer.tpool`), with requests carried by the
// native core (lib/native.js). Behaviour follows the reference; the differences are listed in
// docs/compat.md.
'use strict'

const EventEmitter = require('events')
const native = require('./native')
const { uuid, sample, shuffle, later, retry, keepAlive, listenError } = require('./util')

// --- Peers -----------------------------------------------------------------------------------

class Peer extends EventEmitter {
  constructor (link, conf = {}) {
    super()
    this.conf = conf
    this.link = link
  }

  init () { this._active = true }
  isActive () { return !!this._active }
  getTransportOpts (opts) { return {} }

  transport (dest, opts = {}) {
    return this.newTransport({ ...this.conf, dest })
  }

  newTransport (conf) {
    const t = new (this.getTransportClass())(this, conf)
    t.init()
    return t
  }

  dest (dests, key, opts = {}) { return sample(dests) }

  stop () {
    this._active = false
    this._stop()
  }

  _stop () {}
}

class PeerRPC extends Peer {}

class PeerRPCServer extends PeerRPC {
  getTransportClass () { return this.constructor.TransportRPCServer }
}

class PeerRPCClient extends PeerRPC {
  constructor (link, conf) {
    super(link, conf)
    this.conf = { maxActiveKeyDests: 5, maxActiveDestTransports: 3, ...this.conf }
  }

  init () {
    super.init()
    this.tpool = new PoolTransport()
    this.tpool.init()
  }

  getTransportClass () { return this.constructor.TransportRPCClient }

  // The native client all transports of this peer send through (connections per destination are
  // pooled there); made on first use.
  _native () {
    if (!this._nativeClient) {
      const secure = this.conf.secure
      const tls = secure ? native.clientTls({ ca: secure.ca, cert: secure.cert, key: secure.key }) : undefined
      this._nativeClient = native.clientNew(this.constructor.kind, tls)
    }
    return this._nativeClient
  }

  dest (dests, key, opts = {}) {
    const active = (dests || []).filter((d) => this.tpool.hasActive(d))
    const max = opts.maxActiveKeyDests || this.conf.maxActiveKeyDests
    return super.dest(active.length >= max ? active : dests, key)
  }

  transport (dest, opts = {}) {
    const active = this.tpool.getActive(dest)
    const max = opts.maxActiveDestTransports || this.conf.maxActiveDestTransports
    if (active.length >= max) return sample(active)
    const t = super.transport(dest, opts)
    this.tpool.add(dest, t)
    return t
  }

  getTransportOpts (opts) { return { maxActiveDestTransports: opts.maxActiveDestTransports } }
  getRequestOpts (opts) { return { timeout: opts.timeout } }
  getDestOpts (opts) { return { maxActiveKeyDests: opts.maxActiveKeyDests } }

  request (key, payload, opts = {}, cb) {
    if (typeof opts === 'function') return this.request(key, payload, undefined, opts)
    if (!this.tpool) return later(cb, new Error('ERR_PEER_NOT_INITIALIZED: call init() first'))
    if (!opts) opts = {}
    this.link.lookup(key, {}, (err, dests) => {
      if (err) return cb(err)
      retry(opts.retry || 1, (done) => {
        const dest = this.dest(dests, key, this.getDestOpts(opts))
        this.transport(dest, this.getTransportOpts(opts)).request(key, payload, this.getRequestOpts(opts), done)
      }, cb)
    })
  }

  map (key, payload, opts = {}, cb) {
    if (typeof opts === 'function') return this.map(key, payload, undefined, opts)
    if (!this.tpool) return later(cb, new Error('ERR_PEER_NOT_INITIALIZED: call init() first'))
    if (!opts) opts = {}
    this.link.lookup(key, {}, (err, dests) => {
      if (err) return cb(err)
      if (!dests.length) return cb(null, [])
      if (opts.limit) dests = shuffle(dests).slice(0, opts.limit)
      const results = new Array(dests.length)
      let left = dests.length
      let failed = false
      dests.forEach((dest, i) => {
        this.transport(dest, this.getTransportOpts(opts)).request(key, payload, this.getRequestOpts(opts), (err, res) => {
          if (failed) return
          if (err) {
            failed = true
            return cb(err)
          }
          results[i] = res
          if (--left === 0) cb(null, results)
        })
      })
    })
  }

  _stop () {
    super._stop()
    if (this.tpool) this.tpool.stop()
    if (this._nativeClient) {
      native.clientClose(this._nativeClient)
      this._nativeClient = null
    }
  }
}

class PeerPub extends Peer {
  getTransportClass () { return this.constructor.TransportPub }
}

class PeerSub extends Peer {
  getTransportClass () { return this.constructor.TransportSub }

  sub (key, opts) {
    this.link.lookup(key, { timeout: 5000 }, (err, dests) => {
      if (err) return this.emit('error', err)
      const t = this.transport(this.dest(dests, key))
      ;(this._subs || (this._subs = new Set())).add(t)
      t.sub(key, opts)
    })
  }

  _stop () {
    super._stop()
    for (const t of this._subs || []) t.stop()
    if (this._subs) this._subs.clear()
  }
}

// --- Pools -----------------------------------------------------------------------------------

class Pool {
  init () {
    this._pool = new Map()
    this._monitorItv = setInterval(() => this.monitor(), 10000)
  }

  add (k, obj) {
    let p = this._pool.get(k)
    if (!p) this._pool.set(k, (p = new Map()))
    p.set(obj.id, obj)
  }

  del (k, obj) {
    const p = this._pool.get(k)
    if (!p) return
    p.delete(obj.id)
    if (!p.size) this._pool.delete(k)
  }

  list (k) {
    const p = this._pool.get(k)
    return p ? Array.from(p.values()).filter(Boolean) : []
  }

  monitor () {}

  stop () {
    clearInterval(this._monitorItv)
    this._stop()
    this._pool.clear()
  }

  _stop () {}
}

class PoolTransport extends Pool {
  hasActive (k) {
    const p = this._pool.get(k)
    if (!p) return false
    for (const t of p.values()) if (t.isActive()) return true
    return false
  }

  getActive (k) {
    const p = this._pool.get(k)
    if (!p) return []
    const out = []
    for (const t of p.values()) if (t.isActive()) out.push(t)
    return out
  }

  monitor () {
    super.monitor()
    this._pool.forEach((p, k) => {
      p.forEach((t) => {
        t.monitor()
        if (!t.isActive()) p.delete(t.id)
      })
      if (!p.size) this._pool.delete(k)
    })
  }

  _stop () {
    super._stop()
    this._pool.forEach((p) => {
      p.forEach((t) => t.stop())
      p.clear()
    })
  }
}

// --- Transports ------------------------------------------------------------------------------

class Transport extends EventEmitter {
  constructor (client, conf = {}) {
    super()
    this.client = client
    this.conf = conf
    this.id = uuid()
  }

  init () { this.active() }
  isActive () { return !!this._active }
  active () { this._active = true }
  monitor () {}

  stop () {
    this._active = false
    this._stop()
  }

  _stop () {}
}

class TransportSocket extends Transport {
  isConnecting () { return !!this._connecting }
  isConnected () { return !this.isConnecting() && !!this._connected }
  isListening () { return !!this._listening }
  connecting () { this._connecting = true; this._connected = false }
  connected () { this._connecting = false; this._connected = true }
  disconnected () { this._connecting = false; this._connected = false }
  listening () { this._listening = true }
  unlistening () { this._listening = false }
}

class TransportRPC extends TransportSocket {
  parse (data) {
    try {
      return JSON.parse(data)
    } catch (e) {
      return null
    }
  }

  format (data) { return JSON.stringify(data) }
}

// A client transport: one destination of a PeerRPCClient; its requests go through the peer's
// native client to `conf.dest`.
class TransportRPCClient extends TransportRPC {
  constructor (client, conf) {
    super(client, conf)
    this.conf = { inactivityTimeout: 120000, requestTimeout: 60000, ...this.conf }
  }

  init () {
    super.init()
    this.setLastRequestTime()
    this._reqs = new Map()
  }

  setLastRequestTime () { this._req_last_ts = Date.now() }

  newRequest (key, payload, _opts, cb) {
    return { rid: uuid(), key, payload, opts: { timeout: this.conf.requestTimeout, ..._opts }, cb, _ts: Date.now() }
  }

  addRequest (req) { this._reqs.set(req.rid, req) }
  delRequest (req) { this._reqs.delete(req.rid) }
  getRequest (rid) { return this._reqs.get(rid) }

  request (key, payload, opts, cb) {
    this.setLastRequestTime()
    this._request(key, payload, opts || {}, cb)
  }

  _request (key, payload, opts, cb) {
    const req = this.newRequest(key, payload, opts, cb)
    this.addRequest(req)
    this.sendRequest(req)
  }

  sendRequest (req) {
    let client
    try {
      client = this.client._native()
    } catch (e) {
      return later(() => this.handleReply(req.rid, e))
    }
    this.connected()
    native.clientRequest(client, this.conf.dest, req.key, req.payload, req.opts, (err, data) => {
      this.handleReply(req.rid, err ? this.replyError(err) : null, data)
    })
  }

  // A native error as the reference's transport reports it.
  replyError (err) {
    if (err.code === 'ERR_REMOTE') return new Error(err.detail)
    if (err.code === 'ERR_TIMEOUT' || err.code === 'ERR_TRANSPORT_CLOSE') return new Error(err.code)
    return err
  }

  handleReply (rid, err, data) {
    const req = this._reqs.get(rid)
    if (!req) return
    this._reqs.delete(rid)
    if (typeof req.cb === 'function') req.cb(err, data)
  }

  monitor () {
    super.monitor()
    const now = Date.now()
    this._reqs.forEach((req) => {
      if (req.opts.timeout !== undefined && now > req._ts + req.opts.timeout) this.handleReply(req.rid, new Error('ERR_TIMEOUT'))
    })
    if (!this._reqs.size && now - this._req_last_ts > this.conf.inactivityTimeout) this.stop()
  }

  _stop () {
    super._stop()
    this._reqs.forEach((req) => this.handleReply(req.rid, new Error('ERR_TIMEOUT')))
    this._reqs.clear()
    this.disconnected()
  }
}

// A server transport on the native server: `listen(port)` binds, requests arrive as 'request'
// events, `handler.reply(err, data)` answers `[rid, err ? err.message : null, data]`.
class TransportRPCServer extends TransportRPC {
  // Options of the native server (TLS, verifyClient) from `this.conf`.
  nativeOptions () { return {} }

  listen (port) {
    if (this._native) throw new Error('ERR_ALREADY_LISTENING')
    const kind = this.client.constructor.kind
    try {
      this._native = native.serverListen({
        transport: kind,
        port,
        // Limits against hostile load by the core's names (`{ max_connections_per_ip: 100 }`).
        limits: this.conf.limits,
        ...this.nativeOptions(),
        onRequest: (token, rid, key, payload, fingerprint, meta) => this._onNativeRequest(token, rid, key, payload, fingerprint, meta)
      })
    } catch (e) {
      throw listenError(e, port)
    }
    this._release = keepAlive()
    this.listening()
    this.port = native.serverPort(this._native)
    return this
  }

  _onNativeRequest (token, rid, key, payload, fingerprint, meta) {
    const s = this._native
    const handler = {
      reply: (err, res) => {
        if (!s) return
        native.serverReply(s, token, err ? err.message : null, res)
      }
    }
    try {
      this.emitRequest(rid, key, payload, handler, fingerprint, meta)
    } catch (e) {
      // The reference lets the exception kill the process. Here the client gets the error's
      // message and the exception goes to the transport's 'error' listeners (or a warning).
      native.serverReply(s, token, (e && e.message) || String(e) || 'ERR_HANDLER', undefined)
      if (this.listenerCount('error')) this.emit('error', e)
      else process.emitWarning(`grenache-native: a 'request' listener threw: ${e && e.stack ? e.stack : e}`)
    }
  }

  emitRequest (rid, key, payload, handler, fingerprint, meta) {
    this.emit('request', rid, key, payload, handler, fingerprint ? { fingerprint } : null)
  }

  unlisten () {
    if (this._native) {
      native.serverClose(this._native)
      this._native = null
    }
    if (this._release) this._release()
    this._release = null
    this.unlistening()
  }

  _stop () {
    super._stop()
    this.unlisten()
  }
}

module.exports = {
  Peer,
  PeerRPC,
  PeerRPCServer,
  PeerRPCClient,
  PeerPub,
  PeerSub,
  Pool,
  PoolTransport,
  Transport,
  TransportSocket,
  TransportRPC,
  TransportRPCClient,
  TransportRPCServer
}
