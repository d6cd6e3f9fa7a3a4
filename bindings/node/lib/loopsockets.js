// The plain WS sockets a server gets from the core once upgraded (src/inloop.rs), read and
// written on this thread's event loop. The core counts a socket in its limits only until it hands
// it over, so the limits it keeps on the sockets it serves itself are kept here, with the same
// names and defaults (`native.serverLimits`):
// * `max_connections`, `max_connections_per_ip`: a socket over them is closed at once, with
//   1013 (try again later);
// * `ws_idle_timeout_ms`: a socket that sent no request for that long, with none of its
//   requests running, is closed with 1000.
// Pings to silent sockets (`ws_ping_interval_ms`) are not sent: the idle limit closes a dead
// peer's socket. A peer that leaves its replies unread for 30 s is cut off (`conn.expire()`). Sockets waiting for this thread (busy) are bounded in the addon
// (`NativeLoopServer.listen`'s `maxQueued`, given `max_connections` by lib/ws.js).
//
// The HTTP loop server's sockets (`{ http: true }`, lib/http.js) keep the connection limits the
// same way (a socket over them is closed without a reply, as the core's server does); the
// addon keeps the rest of the HTTP limits on each (the largest body, `max_body_in_flight`) and
// the read deadlines (`header_timeout_ms`, `body_timeout_ms`, `body_min_rate`,
// `idle_timeout_ms`), which the sweep here asks it to apply (`conn.expire()`).
'use strict'

const native = require('./native')

const CLOSE_TRY_AGAIN_LATER = 1013

class LoopSockets {
  // `limits`: every limit by name (`native.serverLimits(conf.limits)`); `onMessages(sock,
  // texts)` for each batch of messages a socket read. A socket is `{ conn, ip, inFlight, last }`:
  // the owner counts the requests it answers with `answered(sock)`.
  constructor (limits, onMessages, { http = false } = {}) {
    this._limits = limits
    this._onMessages = onMessages
    this._http = http
    this._socks = new Map() // conn -> sock
    this._perIp = new Map()
    this._sweeper = null
  }

  get size () { return this._socks.size }
  values () { return Array.from(this._socks.values()) }

  // Takes a socket the core handed over; null when a limit refused it (it is closed).
  adopt (socket) {
    const ip = socket.remoteIp
    const n = this._perIp.get(ip) || 0
    if (this._socks.size >= this._limits.max_connections || n >= this._limits.max_connections_per_ip) {
      this._conn(socket, () => {}, () => {}).close(false, CLOSE_TRY_AGAIN_LATER)
      return null
    }
    const sock = { conn: null, ip, inFlight: 0, last: Date.now() }
    sock.conn = this._conn(socket, (texts) => {
      sock.last = Date.now()
      this._onMessages(sock, texts)
    }, () => this._forget(sock))
    this._socks.set(sock.conn, sock)
    this._perIp.set(ip, n + 1)
    if (!this._sweeper) this._arm()
    // The bytes that came with the handshake may hold whole requests.
    sock.conn.pump()
    return sock
  }

  _conn (socket, onMessages, onClose) {
    if (this._http) return native.loopHttpServerConn(socket, this._limits, onMessages, onClose)
    return native.loopConn(socket, false, onMessages, onClose)
  }

  // One request of `sock` was answered.
  answered (sock) {
    if (sock.inFlight > 0) sock.inFlight--
  }

  // Closes `sock` (close frame `code`, or 1001 going away without one).
  end (sock, code) {
    if (code === undefined) sock.conn.close(true)
    else sock.conn.close(false, code)
    this._forget(sock)
  }

  // Closes every socket (1001).
  closeAll () {
    for (const sock of this.values()) this.end(sock)
  }

  _forget (sock) {
    if (!this._socks.delete(sock.conn)) return
    const left = (this._perIp.get(sock.ip) || 1) - 1
    if (left > 0) this._perIp.set(sock.ip, left)
    else this._perIp.delete(sock.ip)
    if (this._socks.size === 0 && this._sweeper) {
      clearTimeout(this._sweeper)
      this._sweeper = null
    }
  }

  // The idle sweep runs while there are sockets; it does not keep the process alive.
  _arm () {
    const l = this._limits
    const every = this._http ? Math.min(l.idle_timeout_ms, l.header_timeout_ms, l.body_timeout_ms) : l.ws_idle_timeout_ms
    this._sweeper = setTimeout(() => this._sweep(), Math.max(every / 4, 50))
    this._sweeper.unref()
  }

  _sweep () {
    this._sweeper = null
    const now = Date.now()
    for (const sock of this.values()) {
      // The addon's own checks: a peer that leaves its replies unread; HTTP's read deadlines.
      if (sock.conn.expire()) this._forget(sock)
      else if (!this._http && sock.inFlight === 0 && now - sock.last >= this._limits.ws_idle_timeout_ms) this.end(sock, 1000)
    }
    if (this._socks.size && !this._sweeper) this._arm()
  }
}

module.exports = { LoopSockets }
