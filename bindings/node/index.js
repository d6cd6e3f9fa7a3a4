// grenache-native: Grenache for Node.js on the Rust core of grenache-rs.
//
// Promises for one-shot calls, JSON payloads, one error class per error kind of the core (under
// six family classes, as in the Ruby and Python faces) with `.code` (the stable number), `.name`
// ("ERR_TIMEOUT"...) and `.message` (the same text in every face). The network runs on the
// library's own threads; handlers and subscription callbacks run on the JS thread. Types:
// index.d.ts.
'use strict'

const path = require('path')

// A duration in ms as the core's messages print one (Rust's `Duration` debug form: `250ms`,
// `1.5s`, `30s`), so that a timeout reads the same in every face.
const durationText = (ms) => ms < 1000 ? `${ms}ms` : `${ms / 1000}s`

function load () {
  const tried = []
  for (const f of [process.env.GRENACHE_NATIVE_ADDON, path.join(__dirname, 'grenache.node'), path.join(__dirname, 'grenache.linux-x64-gnu.node')]) {
    if (!f) continue
    try {
      return require(f)
    } catch (e) {
      tried.push(`${f}: ${e.message}`)
    }
  }
  throw new Error(`grenache-native: cannot load the native addon (run \`npm run build\`):\n  ${tried.join('\n  ')}`)
}

const native = load()
const { LoopSockets } = require('./lib/loopsockets')
const { Deadlines } = require('./lib/util')

// An error of the library. `name` is set on each instance (not on the prototype) so that it is
// the ERR_* string while `instanceof` still tells the class.
class GrenacheError extends Error {
  constructor (code, name, message) {
    super(message)
    Object.defineProperty(this, 'name', { value: name, enumerable: false, writable: true, configurable: true })
    this.code = code
  }
}

const families = {}
for (const family of ['InputError', 'TransportError', 'DiscoveryError', 'RpcError', 'TlsError', 'LibraryError']) {
  families[family] = { [family]: class extends GrenacheError {} }[family]
}

// One class per error kind, from the core's table.
const errors = {}
const byCode = new Map()
const byName = new Map()
for (const k of native.errorKinds()) {
  const cls = { [k.className]: class extends families[k.family] {} }[k.className]
  errors[k.className] = cls
  byCode.set(k.code, { cls, kind: k })
  byName.set(k.name, { cls, kind: k })
}

function makeError (code, message) {
  const entry = byCode.get(code)
  if (!entry) return new GrenacheError(code, `ERR_${code}`, message)
  return new entry.cls(code, entry.kind.name, message || entry.kind.message)
}

// A native call that threw: its `code` is the kind's ERR_* name.
function toError (e) {
  if (e instanceof GrenacheError) return e
  const entry = e && typeof e.code === 'string' && byName.get(e.code)
  return entry ? makeError(entry.kind.code, e.message) : e
}

function invalid (message) {
  return makeError(byName.get('ERR_INVALID_ARGUMENT').kind.code, message)
}

// Runs a native call that may throw, turning its errors into GrenacheError.
function sync (fn) {
  try {
    return fn()
  } catch (e) {
    throw toError(e)
  }
}

// Starts a native call that completes through `(code, text)`; resolves with `decode(text)`.
function call (start, decode = JSON.parse) {
  return new Promise((resolve, reject) => {
    sync(() => start((code, text) => {
      if (code !== undefined && code !== null) return reject(makeError(code, text))
      try {
        resolve(decode(text))
      } catch (e) {
        reject(e)
      }
    }))
  })
}

// Keeps the process alive while a server or subscription is open (their native callbacks do
// not), like a listening net.Server does; released by close().
function keepAlive () {
  const timer = setInterval(() => {}, 1 << 30)
  return () => clearInterval(timer)
}

const ms = (s) => (s === undefined || s === null ? undefined : Math.max(0, Math.round(s)))

// --- Plain WS on this thread's event loop ------------------------------------------------------
// A `ws` Server without TLS, and a `ws` Client's requests to an explicit `dest`, read and write
// their sockets on Node's loop (src/inloop.rs): no thread hand-off per request or reply. The
// core still dials, accepts and upgrades the sockets; everything else (TLS, lookups, retries,
// map) goes through the core's threads as before. Same results, errors and Reply semantics.

const crypto = require('crypto')
const kindCode = (name) => byName.get(name).kind.code
const DIAL_TIMEOUT_MS = 10000
// The close code of a server that drained before closing (every request it read was answered).
const CLOSE_DRAINED = 4001

// One socket to one destination, multiplexing the requests of a Client.
class LoopDest {
  constructor (client, dest) {
    this.client = client
    this.dest = dest
    this.conn = null
    this.queue = null
    this.pending = new Map()
    this.deadlines = new Deadlines(() => this.pending.values(), (req) => this.settle(req.rid, makeError(kindCode('ERR_TIMEOUT'), `no reply within ${durationText(req.timeout)}`)))
    this.refd = false
  }

  request (text, rid, timeout, resolve, reject) {
    const req = { rid, text, resolve, reject, timeout, _ts: Date.now() }
    this.pending.set(rid, req)
    this.setRef(true)
    this.deadlines.add(req, timeout)
    if (this.conn) return this.write(req)
    this.enqueue(req)
  }

  // Waits for the socket being dialed, or dials one.
  enqueue (req) {
    if (this.queue) return this.queue.push(req)
    this.queue = [req]
    native.wsDial(this.dest, DIAL_TIMEOUT_MS, (code, text, socket) => {
      const queue = this.queue || []
      this.queue = null
      if (code !== undefined && code !== null) {
        for (const r of queue) this.settle(r.rid, makeError(code, text))
        return
      }
      if (this.client._closed) {
        new native.NativeLoopConn(socket, true, () => {}, () => {}).close(true)
        return
      }
      const conn = new native.NativeLoopConn(socket, true, (texts) => this.onMessages(texts), (why) => this.onClose(conn, why))
      this.conn = conn
      this.conn.setRef(this.refd)
      for (const r of queue) if (this.pending.has(r.rid)) this.write(r)
      if (this.conn) this.conn.pump()
    })
  }

  // A socket that ended (its close not delivered yet) is replaced by a new one.
  write (req) {
    req.conn = this.conn
    if (this.conn.send(req.text)) return
    req.conn = null
    this.conn = null
    this.enqueue(req)
  }

  setRef (on) {
    if (this.refd === on) return
    this.refd = on
    if (this.conn) this.conn.setRef(on)
  }

  settle (rid, err, value) {
    const req = this.pending.get(rid)
    if (!req) return
    this.pending.delete(rid)
    if (!this.pending.size) this.setRef(false)
    if (err) req.reject(err)
    else req.resolve(value)
  }

  onMessages (texts) {
    for (let i = 0; i < texts.length; i++) {
      let m
      try {
        m = JSON.parse(texts[i])
      } catch (e) {
        continue
      }
      if (!Array.isArray(m)) continue
      if (m[1] !== null && m[1] !== undefined) this.settle(m[0], makeError(kindCode('ERR_REMOTE'), String(m[1])))
      else this.settle(m[0], null, m[2] === undefined ? null : m[2])
    }
  }

  // The socket ended. A server that drained before closing (close code 4001, as the core's
  // servers send) answered every request it read: the requests still waiting were never read,
  // so they go again on a new socket, as the core's client does. Otherwise they fail.
  onClose (conn, why) {
    const drained = conn.peerCloseCode === CLOSE_DRAINED
    if (this.conn === conn) this.conn = null
    for (const req of Array.from(this.pending.values())) {
      if (req.conn !== conn) continue
      req.conn = null
      if (drained) this.enqueue(req)
      else this.settle(req.rid, makeError(kindCode('ERR_TRANSPORT_CLOSE'), `${this.dest}: ${why}`))
    }
  }

  close () {
    this.deadlines.stop()
    if (this.conn) this.conn.close(true)
    this.conn = null
    for (const rid of Array.from(this.pending.keys())) this.settle(rid, makeError(kindCode('ERR_CANCELLED'), 'the client was closed'))
  }
}

// The answer-once reply of a request served on the loop, with the API of `Reply`.
class LoopReply {
  constructor (server, sock, rid) {
    this._s = server
    this._sock = sock
    this._conn = sock.conn
    this._rid = rid
    this._done = false
    this._timer = null
    this._timedOut = false
    this._state = { done: false }
  }

  _answer (err, resultJson) {
    if (this._done) {
      // After the server's reply timeout answered, a late answer goes nowhere (as natively).
      if (this._timedOut) return
      throw makeError(kindCode('ERR_ALREADY_USED'), 'the request was already answered')
    }
    this._done = true
    this._state.done = true
    if (this._timer) clearTimeout(this._timer)
    this._conn.send(err !== null ? JSON.stringify([this._rid, err, null]) : `[${JSON.stringify(this._rid)},null,${resultJson}]`)
    this._s._answered(this._sock)
  }

  send (value) {
    const json = value === undefined ? 'null' : JSON.stringify(value)
    this._answer(null, json === undefined ? 'null' : json)
  }

  sendJson (text) {
    const t = String(text)
    try {
      JSON.parse(t)
    } catch (e) {
      this._answer(byName.get('ERR_INVALID_ARGUMENT').kind.name)
      throw invalid(`invalid JSON: ${e.message}`)
    }
    this._answer(null, t)
  }

  error (message) { this._answer(String(message)) }
  abandon () { this._answer('ERR_NO_REPLY') }
  get answered () { return this._done }
  get closed () { return this._done || !this._conn.open }
}

// A reply collected unanswered answers ERR_NO_REPLY, as a native Reply does.
const unanswered = new FinalizationRegistry((r) => {
  if (!r.state.done && r.conn.open) {
    r.conn.send(JSON.stringify([r.rid, 'ERR_NO_REPLY', null]))
  }
})

class LoopWsServer {
  constructor (link, onRequest, port) {
    this._link = link
    this._onRequest = onRequest
    // The core's default limits, kept on the sockets it hands over (lib/loopsockets.js).
    this._socks = new LoopSockets(native.serverLimits(undefined), (sock, texts) => this._onMessages(sock, texts))
    this._announced = new Set()
    this._draining = null
    this._srv = sync(() => native.NativeLoopServer.listen(port, (socket) => this._adopt(socket)))
    this.port = this._srv.port
  }

  _adopt (socket) {
    if (!this._srv) return new native.NativeLoopConn(socket, false, () => {}, () => {}).close(true)
    this._socks.adopt(socket)
  }

  _onMessages (sock, texts) {
    for (let i = 0; i < texts.length; i++) {
      let m
      try {
        m = JSON.parse(texts[i])
      } catch (e) {
        continue
      }
      if (!Array.isArray(m)) continue
      sock.inFlight++
      const reply = new LoopReply(this, sock, m[0] === undefined ? null : m[0])
      this._onRequest(reply, m[2] === undefined ? null : m[2])
    }
  }

  _answered (sock) {
    this._socks.answered(sock)
    if (this._draining && sock.inFlight === 0) {
      this._socks.end(sock, CLOSE_DRAINED)
      this._draining.check()
    }
  }

  // The native server's conventions: completions `done(code, text)`.
  announce (name, done) { this._link._l.announce(name, this.port, done) }
  startAnnouncing (name, interval) {
    sync(() => this._link._l.startAnnouncing(name, this.port, interval))
    this._announced.add(name)
  }

  stopAnnouncing (name) {
    this._announced.delete(name)
    return this._link._l.stopAnnouncing(name, this.port)
  }

  // Punching is for uTP servers.
  punch (target, timeout, done) { done(kindCode('ERR_INVALID_ARGUMENT'), 'punch: only a uTP server punches') }
  onPunch () { throw invalid('onPunch: only a uTP server punches') }

  _stopListening () {
    for (const name of Array.from(this._announced)) this.stopAnnouncing(name)
    if (this._srv) {
      const srv = this._srv
      this._srv = null
      sync(() => srv.close())
    }
  }

  shutdown (grace, done) {
    this._stopListening()
    new Promise((resolve) => {
      const finish = (ok) => {
        if (!this._draining) return
        clearTimeout(this._draining.timer)
        this._draining = null
        this._socks.closeAll()
        resolve(ok)
      }
      this._draining = {
        timer: setTimeout(() => finish(false), grace),
        check: () => { if (!this._socks.size) finish(true) }
      }
      for (const sock of this._socks.values()) {
        if (sock.inFlight === 0) this._socks.end(sock, CLOSE_DRAINED)
      }
      this._draining.check()
    }).then((ok) => done(undefined, String(ok)))
  }

  close () {
    this._stopListening()
    if (this._draining) {
      clearTimeout(this._draining.timer)
      this._draining = null
    }
    this._socks.closeAll()
  }
}

class Grape {
  // Starts a Grape: `{ dhtPort, apiPort, bootstrap: ['127.0.0.1:20001'], host, dhtState, options }`
  // (ports 0: any free). `options` are the numeric Grape options by name, the same in every face
  // (`{ maxKeyLen: 64, peerMaxAgeMs: 60000 }`; see index.d.ts).
  constructor (opts = {}) {
    this._g = sync(() => new native.NativeGrape(opts.dhtPort || 0, opts.apiPort || 0, opts.bootstrap || [], opts.host, opts.dhtState, opts.options))
  }

  get dhtPort () { return this._g.dhtPort }
  get apiPort () { return this._g.apiPort }
  get url () { return `http://127.0.0.1:${this.apiPort}` }

  // Stops the Grape and frees both ports.
  stop () { return call((done) => this._g.stop(done), () => undefined) }
}

const Keypair = {
  generate: () => native.NativeKeypair.generate(),
  fromSecretHex: (hex) => sync(() => native.NativeKeypair.fromSecretHex(hex))
}

class ServerTls {
  // PEM texts; clientAuth: 'none' | 'optional' | 'required'.
  constructor ({ cert, key, ca, clientAuth = 'none' }) {
    this._t = sync(() => new native.NativeServerTls(String(cert), String(key), ca === undefined ? undefined : String(ca), clientAuth))
  }
}

class ClientTls {
  constructor ({ ca, cert, key }) {
    this._t = sync(() => new native.NativeClientTls(String(ca), cert === undefined ? undefined : String(cert), key === undefined ? undefined : String(key)))
  }
}

class Link {
  // `grape`: the Grape's HTTP API URL. `requestTimeout`, `lookupCache` in ms.
  constructor (opts = {}) {
    const o = typeof opts === 'string' ? { grape: opts } : opts
    this._l = sync(() => new native.NativeLink(o.grape || 'http://127.0.0.1:30001', ms(o.requestTimeout), ms(o.lookupCache)))
  }

  lookup (name) { return call((done) => this._l.lookup(name, done)) }
  announce (name, port) { return call((done) => this._l.announce(name, port, done), () => undefined) }
  startAnnouncing (name, port, interval = 1000) { sync(() => this._l.startAnnouncing(name, port, ms(interval))) }
  stopAnnouncing (name, port) { return this._l.stopAnnouncing(name, port) }
  // Removes the announce at once (grenache-rs Grapes); resolves with how many DHT nodes removed it.
  unannounce (name, port) { return call((done) => this._l.unannounce(name, port, done), Number) }
  // Pins `name` to the service's ed25519 public keys (hex): only addresses with a valid signed proof are used.
  pinService (name, keys) { sync(() => this._l.pinService(name, keys)) }
  // Makes announces of `name` publish signed proofs under these key pairs, valid `ttl` ms.
  signAnnouncements (name, keys, { ttl = 600000 } = {}) {
    sync(() => this._l.signAnnouncements(name, keys.map((k) => k.secretHex), ms(ttl)))
  }
  put (value) { return call((done) => this._l.put(JSON.stringify(value), done), String) }
  putMutable (keypair, value, { seq, salt, cas } = {}) {
    return call((done) => this._l.putMutable(keypair, JSON.stringify(value), seq, salt, cas, done), String)
  }

  get (hash, { salt } = {}) { return call((done) => this._l.get(hash, salt, done)) }
  close () { this._l.close() }
}

// Throw it from a handler (or reject with it) to answer the client with an error: the caller
// gets a RemoteError whose message is exactly this message. Any other exception is printed and
// answered 'ERR_HANDLER_PANIC'.
class ReplyError extends Error {}
ReplyError.prototype.name = 'ReplyError'

// The handle to answer one request, exactly once, now or later. A second answer throws
// AlreadyUsedError; a reply collected unanswered answers 'ERR_NO_REPLY'.
class Reply {
  constructor (native) { this._r = native }
  send (value) { sync(() => this._r.send(value === undefined ? 'null' : JSON.stringify(value))) }
  sendJson (text) { sync(() => this._r.send(String(text))) }
  error (message) { sync(() => this._r.error(String(message))) }
  abandon () { sync(() => this._r.abandon()) }
  get answered () { return this._r.answered }
  get closed () { return this._r.closed }
}

class RequestInfo {
  constructor (fingerprint, reply) {
    this.fingerprint = fingerprint || null
    this._reply = reply
    this._deferred = false
  }

  // Takes over the reply: what the handler returns is then ignored.
  defer () {
    if (!this._reply) throw invalid('this request has no reply to defer')
    this._deferred = true
    return this._reply
  }

  get deferred () { return this._deferred }
}

function answerError (reply, e) {
  let message
  if (e instanceof ReplyError) {
    message = e.message || 'ERR_REPLY'
  } else {
    console.error('grenache: exception in a request handler:', e)
    message = 'ERR_HANDLER_PANIC'
  }
  if (!reply.answered) reply.error(message)
}

function answer (reply, info, value) {
  if (info.deferred) return
  try {
    reply.send(value)
  } catch (e) {
    answerError(reply, e)
  }
}

class Server {
  // `handler(payload, info)` returns the result (or a Promise of it); throwing (or rejecting
  // with) a ReplyError answers the client with its message; `info.defer()` takes the Reply.
  // `limits`: limits against hostile load by name (`{ maxConnectionsPerIp: 100 }`; see
  // index.d.ts). A plain `ws` server with limits runs on the core's threads, which apply them.
  constructor (link, handler, { transport = 'http', port = 0, tls, replyTimeout, allowFingerprints, broker, limits } = {}) {
    const serve = (reply, payload, fingerprint) => {
      const info = new RequestInfo(fingerprint, reply)
      let result
      try {
        result = handler(payload, info)
      } catch (e) {
        return answerError(reply, e)
      }
      if (result && typeof result.then === 'function') {
        result.then((v) => answer(reply, info, v), (e) => answerError(reply, e))
      } else {
        answer(reply, info, result)
      }
    }
    if (transport === 'ws' && !tls && !allowFingerprints && !limits) {
      const timeout = ms(replyTimeout)
      const onLoopRequest = (reply, payload) => {
        if (timeout !== undefined) {
          reply._timer = setTimeout(() => {
            if (reply.answered) return
            reply.error('ERR_TIMEOUT')
            reply._timedOut = true
          }, timeout)
        }
        unanswered.register(reply, { state: reply._state, conn: reply._conn, rid: reply._rid })
        serve(reply, payload, null)
      }
      this._s = new LoopWsServer(link, onLoopRequest, port || 0)
    } else {
      const onRequest = (nativeReply, payloadJson, fingerprint) => serve(new Reply(nativeReply), JSON.parse(payloadJson), fingerprint)
      this._s = sync(() => new native.NativeServer(link._l, transport, onRequest, port, tls && tls._t, ms(replyTimeout), allowFingerprints, broker, limits))
    }
    this._release = keepAlive()
  }

  get port () { return this._s.port }
  announce (name) { return call((done) => this._s.announce(name, done), () => undefined) }
  startAnnouncing (name, interval = 1000) { this._s.startAnnouncing(name, ms(interval)) }
  stopAnnouncing (name) { return this._s.stopAnnouncing(name) }
  // Graceful shutdown for restarts without failed requests: stops announcing and listening,
  // lets the requests already received finish and their replies go out, then closes; after
  // `grace` ms the rest are closed. Resolves true when everything finished in time. Call
  // close() afterwards.
  shutdown (grace = 10000) { return call((done) => this._s.shutdown(ms(grace), done)) }
  // uTP: punches `target` ('ip:port') from the server's socket every 100 ms until it answers;
  // rejects with a PunchTimeoutError (ERR_PUNCH_TIMEOUT) after `timeout` ms.
  punch (target, timeout = 5000) { return call((done) => this._s.punch(String(target), ms(timeout), done), () => undefined) }
  // uTP: `cb(from)` for every punch reaching the server's socket (the grenache-nodejs-utp
  // 'punch' event, on every server rather than on the first transport made).
  onPunch (cb) { sync(() => this._s.onPunch((from) => cb(from))) }
  close () {
    this._s.close()
    this._release()
  }
}

class Client {
  // uTP with `broker`: workers are found through that broker (their external endpoints behind
  // NATs) and punched (both sides at once, at most `punchTimeout` ms) before the requests.
  constructor (link, { transport = 'http', tls, timeout, broker, punchTimeout } = {}) {
    this._c = sync(() => new native.NativeClient(link._l, transport, tls && tls._t, ms(timeout), broker, ms(punchTimeout)))
    // Requests to an explicit `dest` over plain WS go through this thread's loop.
    this._loop = transport === 'ws' && !tls ? new Map() : null
    this._timeout = ms(timeout) || 30000
    this._closed = false
  }

  // opts: { timeout (ms), retry, compress, dest: 'host:port' }
  request (name, payload, opts = {}) {
    if (this._loop && opts.dest && !(opts.retry > 1) && !this._closed) return this._loopRequest(String(opts.dest), name, payload, opts)
    return call((done) => this._c.request(name, JSON.stringify(payload), ms(opts.timeout), opts.retry, opts.compress, opts.dest, done))
  }

  _loopRequest (dest, name, payload, opts) {
    return new Promise((resolve, reject) => {
      const rid = crypto.randomUUID()
      let text
      try {
        text = JSON.stringify([rid, String(name), payload === undefined ? null : payload])
      } catch (e) {
        return reject(invalid(`invalid JSON: ${e.message}`))
      }
      let d = this._loop.get(dest)
      if (!d) this._loop.set(dest, (d = new LoopDest(this, dest)))
      const t = ms(opts.timeout)
      d.request(text, rid, t === undefined ? this._timeout : t, resolve, reject)
    })
  }

  // opts: { timeout (ms), compress, limit }
  map (name, payload, opts = {}) {
    return call((done) => this._c.map(name, JSON.stringify(payload), ms(opts.timeout), opts.compress, opts.limit, done))
  }

  close () {
    this._closed = true
    if (this._loop) {
      for (const d of this._loop.values()) d.close()
      this._loop.clear()
    }
    this._c.close()
  }
}

class Publisher {
  constructor (link, { port = 0, tls, transport = 'ws' } = {}) {
    this._p = sync(() => new native.NativePublisher(link._l, port, tls && tls._t, transport))
  }

  get port () { return this._p.port }
  get subscribers () { return this._p.subscribers }
  startAnnouncing (name, interval = 1000) { this._p.startAnnouncing(name, ms(interval)) }
  // A string goes as it is, anything else as JSON. Returns how many subscribers it was queued for.
  publish (message) { return this._p.publish(typeof message === 'string' ? message : JSON.stringify(message)) }
  close () { this._p.close() }
}

class Subscriber {
  // `onMessage(message, publisher)`: `message` is a string (a Buffer for binary frames).
  constructor (link, name, onMessage, { tls, transport = 'ws' } = {}) {
    const cb = (publisher, data, binary) => onMessage(binary ? data : data.toString('utf8'), publisher)
    this._s = sync(() => new native.NativeSubscriber(link._l, name, cb, tls && tls._t, transport))
    this._release = keepAlive()
  }

  get publishers () { return this._s.publishers }
  close () {
    this._s.close()
    this._release()
  }
}

module.exports = {
  Grape,
  Link,
  Keypair,
  Server,
  Client,
  Publisher,
  Subscriber,
  ServerTls,
  ClientTls,
  RequestInfo,
  Reply,
  ReplyError,
  GrenacheError,
  ...families,
  ...errors,
  version: () => native.version(),
  // The core's error table (for tests and tools).
  _kinds: () => native.errorKinds()
}
