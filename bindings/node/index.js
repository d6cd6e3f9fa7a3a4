// grenache-native: Grenache for Node.js on the Rust core of grenache-rs.
//
// Promises for one-shot calls, JSON payloads, Error objects with `.code` ("ERR_TIMEOUT"...)
// and `.errno` (a stable number). The network runs on the library's own threads; handlers and
// subscription callbacks run on the JS thread. Types: index.d.ts.
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

class GrenacheError extends Error {
  constructor (code, errno, message) {
    super(message && message !== code ? `${code}: ${message}` : code)
    this.name = 'GrenacheError'
    this.code = code
    this.errno = errno
    this.detail = message
  }
}

function toError (e) {
  if (e instanceof GrenacheError) return e
  const text = typeof e === 'string' ? e : e && e.message
  if (typeof text === 'string' && text.startsWith('{"')) {
    try {
      const v = JSON.parse(text)
      if (v.grenache) return new GrenacheError(v.code, v.errno, v.message)
    } catch (_) {}
  }
  return e
}

// Runs a native call that may throw, turning its errors into GrenacheError.
function sync (fn) {
  try {
    return fn()
  } catch (e) {
    throw toError(e)
  }
}

// Starts a native call that completes through `(err, result)`; resolves with `decode(result)`.
function call (start, decode = JSON.parse) {
  return new Promise((resolve, reject) => {
    sync(() => start((err, result) => {
      if (err) return reject(toError(err))
      try {
        resolve(decode(result))
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
    this._g = sync(() => new native.NativeGrape(opts.dhtPort || 0, opts.apiPort || 0, opts.bootstrap || [], opts.host))
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
  put (value) { return call((done) => this._l.put(JSON.stringify(value), done), String) }
  putMutable (keypair, value, { seq, salt, cas } = {}) {
    return call((done) => this._l.putMutable(keypair, JSON.stringify(value), seq, salt, cas, done), String)
  }

  get (hash, { salt } = {}) { return call((done) => this._l.get(hash, salt, done)) }
  close () { this._l.close() }
}

class RequestInfo {
  constructor (fingerprint) { this.fingerprint = fingerprint || null }
}

class Server {
  // `handler(payload, info)` returns the result (or a Promise of it); throwing (or rejecting)
  // answers the client with the error's message.
  constructor (link, handler, { transport = 'http', port = 0, tls, replyTimeout, allowFingerprints, broker } = {}) {
    const onRequest = (id, payloadJson, fingerprint) => {
      let result
      try {
        result = handler(JSON.parse(payloadJson), new RequestInfo(fingerprint))
      } catch (e) {
        return this._answer(id, e)
      }
      if (result && typeof result.then === 'function') {
        result.then((v) => this._answer(id, null, v), (e) => this._answer(id, e || new Error('ERR_REJECTED')))
      } else {
        this._answer(id, null, result)
      }
    }
    this._s = sync(() => new native.NativeServer(link._l, transport, onRequest, port, tls && tls._t, ms(replyTimeout), allowFingerprints, broker))
    this._release = keepAlive()
  }

  _answer (id, err, value) {
    if (err) return this._s.reply(id, String((err && err.message) || err), undefined)
    let json
    try {
      json = value === undefined ? 'null' : JSON.stringify(value)
    } catch (e) {
      return this._s.reply(id, 'ERR_REPLY_NOT_JSON', undefined)
    }
    return this._s.reply(id, undefined, json)
  }

  get port () { return this._s.port }
  announce (name) { return call((done) => this._s.announce(name, done), () => undefined) }
  startAnnouncing (name, interval = 1000) { this._s.startAnnouncing(name, ms(interval)) }
  stopAnnouncing (name) { return this._s.stopAnnouncing(name) }
  // Graceful shutdown for restarts without failed requests: stops announcing and listening,
  // lets the requests already received finish and their replies go out, then closes; after
  // `grace` ms the rest are closed. Resolves true when everything finished in time. Call
  // close() afterwards.
  shutdown (grace = 10000) { return call((done) => this._s.shutdown(ms(grace), done), (r) => r === 'true') }
  // uTP: punches `target` ('ip:port') from the server's socket every 100 ms until it answers;
  // rejects with ERR_PUNCH_TIMEOUT after `timeout` ms.
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
  constructor (link, { port = 0, tls } = {}) {
    this._p = sync(() => new native.NativePublisher(link._l, port, tls && tls._t))
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
  constructor (link, name, onMessage, { tls } = {}) {
    const cb = (publisher, data, binary) => onMessage(binary ? data : data.toString('utf8'), publisher)
    this._s = sync(() => new native.NativeSubscriber(link._l, name, cb, tls && tls._t))
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
  GrenacheError,
  version: () => native.version()
}
