// grenache-native: Grenache for Node.js on the Rust core of grenache-rs.
//
// Promises for one-shot calls, JSON payloads, one error class per error kind of the core (under
// six family classes, as in the Ruby and Python faces) with `.code` (the stable number), `.name`
// ("ERR_TIMEOUT"...) and `.message` (the same text in every face). The network runs on the
// library's own threads; handlers and subscription callbacks run on the JS thread. Types:
// index.d.ts.
'use strict'

const path = require('path')

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

class Grape {
  // Starts a Grape: `{ dhtPort, apiPort, bootstrap: ['127.0.0.1:20001'], host }` (ports 0: any free).
  constructor (opts = {}) {
    this._g = sync(() => new native.NativeGrape(opts.dhtPort || 0, opts.apiPort || 0, opts.bootstrap || [], opts.host, opts.dhtState))
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
  constructor (link, handler, { transport = 'http', port = 0, tls, replyTimeout, allowFingerprints, broker } = {}) {
    const onRequest = (nativeReply, payloadJson, fingerprint) => {
      const reply = new Reply(nativeReply)
      const info = new RequestInfo(fingerprint, reply)
      let result
      try {
        result = handler(JSON.parse(payloadJson), info)
      } catch (e) {
        return answerError(reply, e)
      }
      if (result && typeof result.then === 'function') {
        result.then((v) => answer(reply, info, v), (e) => answerError(reply, e))
      } else {
        answer(reply, info, result)
      }
    }
    this._s = sync(() => new native.NativeServer(link._l, transport, onRequest, port, tls && tls._t, ms(replyTimeout), allowFingerprints, broker))
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
  }

  // opts: { timeout (ms), retry, compress, dest: 'host:port' }
  request (name, payload, opts = {}) {
    return call((done) => this._c.request(name, JSON.stringify(payload), ms(opts.timeout), opts.retry, opts.compress, opts.dest, done))
  }

  // opts: { timeout (ms), compress, limit }
  map (name, payload, opts = {}) {
    return call((done) => this._c.map(name, JSON.stringify(payload), ms(opts.timeout), opts.compress, opts.limit, done))
  }

  close () { this._c.close() }
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
