// The one place where the reference-compatible modules (grape.js, link.js, http.js, ws.js) touch
// the native addon. Everything the addon's calling conventions decide (how a request is answered,
// how an error arrives, how values cross as JSON text) is translated here, so that a change of
// those conventions changes this file only.
//
// The addon's conventions: completions `(code, text)` (code: the error kind's number, undefined
// on success), thrown errors with `.code` the ERR_* name, requests answered through a reply
// object (`send(json)` / `error(message)`, once).
//
// Conventions this file gives its callers:
// * completions are node-style `cb(err, value)`, called once on the JS thread;
// * `err` is a plain Error with `.code` the library's ERR_* name and `.detail` its message;
// * synchronous failures throw such an Error;
// * request handlers get an opaque `token` to answer with `serverReply(server, token, ...)`.
'use strict'

const path = require('path')

function loadAddon () {
  const tried = []
  const candidates = [
    process.env.GRENACHE_NATIVE_ADDON,
    path.join(__dirname, '..', 'grenache.node'),
    path.join(__dirname, '..', `grenache.${process.platform}-${process.arch}-gnu.node`),
    path.join(__dirname, '..', `grenache.${process.platform}-${process.arch}.node`)
  ]
  for (const f of candidates) {
    if (!f) continue
    try {
      return require(f)
    } catch (e) {
      tried.push(`${f}: ${e.message}`)
    }
  }
  const err = new Error(
    `grenache-native: no native addon for ${process.platform}-${process.arch} could be loaded. ` +
    'Prebuilt: linux-x64 (glibc). Elsewhere build it from source with Rust (cargo) installed: ' +
    '`npm run build` in the package directory (or set GRENACHE_NATIVE_ADDON to a built .node file).\n  ' +
    tried.join('\n  '))
  err.code = 'ERR_NATIVE_ADDON'
  throw err
}

const addon = loadAddon()

// The core's error kinds: number -> ERR_* name (and default message).
const kindsByCode = new Map()
for (const k of addon.errorKinds()) kindsByCode.set(k.code, k)

// A plain Error with `.code` the kind's ERR_* name and `.detail` the error's text.
function makeError (name, text) {
  const e = new Error(text && text !== name ? `${name}: ${text}` : name)
  e.code = name
  e.detail = text || ''
  return e
}

// A completion's failure `(code, text)`: code is the kind's number.
function completionError (code, text) {
  const k = kindsByCode.get(code)
  return makeError(k ? k.name : `ERR_${code}`, text || (k && k.message) || '')
}

// A thrown error of the addon: its `code` is the kind's ERR_* name, its message the text.
function toError (raw) {
  if (raw && typeof raw.code === 'string' && raw.code.startsWith('ERR_')) return makeError(raw.code, raw.message)
  return raw instanceof Error ? raw : new Error(String(raw))
}

function sync (fn) {
  try {
    return fn()
  } catch (e) {
    throw toError(e)
  }
}

// A completion `(code, text)` of the addon as `cb(err, decode(text))`.
function done (cb, decode) {
  return (code, text) => {
    if (code !== undefined && code !== null) return cb(completionError(code, text))
    let v
    try {
      v = decode ? decode(text) : text
    } catch (e) {
      return cb(e)
    }
    cb(null, v)
  }
}

const parse = (t) => JSON.parse(t)
// The Grape API's reply: JSON, or undefined for an empty body.
const parseOrUndefined = (t) => (t === '' || t === undefined || t === null ? undefined : JSON.parse(t))

// --- Grape ---------------------------------------------------------------------------------
exports.grapeStart = (conf) => sync(() => addon.NativeGrape.startWith(JSON.stringify(conf)))
exports.grapePorts = (g) => ({ dht: g.dhtPort, api: g.apiPort })
exports.grapeOnEvent = (g, fn) => sync(() => g.onEvent((kind, arg) => fn(kind, arg === null ? undefined : arg)))
// A name walked less than the lookup window ago is answered from the cache on this thread (the
// same answer the runtime would give, without two thread hand-offs), in a later turn of the
// event loop as the reference answers (setImmediate); any other lookup goes to the runtime.
exports.grapeLookup = (g, name, cb) => sync(() => {
  const hit = g.lookupInWindow(name)
  if (typeof hit === 'string') setImmediate(cb, null, JSON.parse(hit))
  else g.lookup(name, done(cb, parse))
})
exports.grapeAnnounce = (g, name, port, cb) => sync(() => g.announce(name, port, done(cb, Number)))
exports.grapeStop = (g, cb) => g.stop(done(cb))

// --- Link (the Grape's HTTP API) -----------------------------------------------------------
exports.linkNew = (grapeUrl, requestTimeout) => sync(() => new addon.NativeLink(grapeUrl, requestTimeout, 0))
exports.linkCall = (l, type, data, timeout, cb) => {
  let json
  try {
    json = JSON.stringify(data === undefined ? null : data)
  } catch (e) {
    return process.nextTick(cb, e)
  }
  l.call(type, json, timeout, done(cb, parseOrUndefined))
}
exports.linkClose = (l) => l.close()

// A Link the native servers and clients are built on: they are given explicit destinations by the
// JS side (which looks services up with its own Link), so this one is never asked anything.
let idleLink = null
function sharedLink () {
  if (!idleLink) idleLink = sync(() => new addon.NativeLink('http://127.0.0.1:1', undefined, undefined))
  return idleLink
}

// --- TLS -----------------------------------------------------------------------------------
const pem = (b) => (b === undefined || b === null ? undefined : Buffer.isBuffer(b) ? b.toString('utf8') : Array.isArray(b) ? b.map(pem).join('\n') : String(b))
// `{ cert, key, ca, clientAuth: 'none'|'optional'|'required' }`, PEM as Buffers or strings.
exports.serverTls = (t) => sync(() => new addon.NativeServerTls(pem(t.cert), pem(t.key), pem(t.ca), t.clientAuth || 'none'))
exports.clientTls = (t) => sync(() => new addon.NativeClientTls(pem(t.ca), pem(t.cert), pem(t.key)))

// --- RPC servers -----------------------------------------------------------------------------
// `onRequest(token, rid, key, payload, fingerprint, meta)`: meta is the HTTP metadata
// ({isStream, compress, infoHeaders, action, args}) or null over WS. `verify(info, answer)`:
// info {fingerprint, remoteAddress, path}, answer(bool) once (WS over TLS only).
exports.serverListen = ({ transport, port, tls, verify, limits, onRequest }) => {
  const handler = (reply, ridJson, key, payloadJson, fingerprint, metaJson) => {
    let rid, payload, meta
    try {
      rid = JSON.parse(ridJson)
      payload = JSON.parse(payloadJson)
      meta = metaJson ? JSON.parse(metaJson) : null
    } catch (e) {
      return reply.error('ERR_PARSE')
    }
    onRequest(reply, rid, key, payload, fingerprint || null, meta)
  }
  const verifyFn = verify
    ? (ticket, fingerprint, remote, p) => {
        let answered = false
        const answer = (ok) => {
          if (answered) return
          answered = true
          addon.verifyAnswer(ticket, !!ok)
        }
        try {
          verify({ fingerprint: fingerprint || null, remoteAddress: remote || null, path: p }, answer)
        } catch (e) {
          answer(false)
          throw e
        }
      }
    : undefined
  return sync(() => addon.NativeServer.listenEnvelope(transport, handler, port, tls, verifyFn, sharedLink(), limits || undefined))
}
exports.serverPort = (s) => s.port
// Answers a request: `errMessage` (a string: the client gets an error) or `result` (any JSON
// value). Returns false when it was already answered (or the server is gone).
exports.serverReply = (s, token, errMessage, result) => {
  try {
    if (errMessage) {
      token.error(String(errMessage))
      return true
    }
    let json
    try {
      json = result === undefined ? 'null' : JSON.stringify(result)
    } catch (e) {
      token.error('ERR_REPLY_NOT_JSON')
      return true
    }
    token.send(json === undefined ? 'null' : json)
    return true
  } catch (e) {
    return false
  }
}
exports.serverClose = (s) => s.close()

// --- RPC clients -----------------------------------------------------------------------------
exports.clientNew = (transport, tls) => sync(() => new addon.NativeClient(sharedLink(), transport, tls, undefined))
// `opts`: { timeout (ms), compress }. cb(err, value): err.code 'ERR_REMOTE' carries the remote
// handler's message in `.detail`.
exports.clientRequest = (c, dest, key, payload, opts, cb) => {
  let json
  try {
    json = JSON.stringify(payload === undefined ? null : payload)
  } catch (e) {
    return process.nextTick(cb, e)
  }
  if (json === undefined) json = 'null'
  const timeout = opts.timeout === undefined || opts.timeout === null ? undefined : Math.max(1, Math.round(opts.timeout))
  c.request(key, json, timeout, 0, !!opts.compress, dest, done(cb, parse))
}
exports.clientClose = (c) => c.close()

// --- Plain WS sockets driven by this thread's event loop ------------------------------------
// The core dials or accepts and upgrades the socket, then hands it to the JS thread, which reads
// and writes it itself (src/inloop.rs): no thread hand-off per request or reply.
// `onMessages(texts)`: every message one readiness event brought, in order; `onClose(reason)`:
// once, when the peer or the network ended it (not after `close()`).
// Calls the addon's dial `fn(dest, timeout, done)`: cb(err, socket).
function dialWith (fn, dest, timeout, cb) {
  try {
    fn(String(dest), timeout, (code, text, socket) => {
      if (code !== undefined && code !== null) return cb(completionError(code, text))
      cb(null, socket)
    })
  } catch (e) {
    process.nextTick(cb, toError(e))
  }
}
exports.loopDial = (dest, timeout, cb) => dialWith(addon.wsDial, dest, timeout, cb)
// A plain TCP socket to `dest` ('host:port') for `loopHttpConn`: cb(err, socket).
exports.tcpDial = (dest, timeout, cb) => dialWith(addon.tcpDial, dest, timeout, cb)
// An HTTP/1.1 client connection on this thread's loop: `sendHttp(host, body)` posts one request
// (one at a time), `onMessages([status, body, ...])` gets the replies (as strings),
// `onClose(reason)` once when it ends; it keeps the process alive while a reply is awaited.
exports.loopHttpConn = (socket, onMessages, onClose) => addon.NativeLoopConn.http(socket, onMessages, onClose)
exports.loopConn = (socket, client, onMessages, onClose) => new addon.NativeLoopConn(socket, client, onMessages, onClose)
// A conn: `pump()` (call once it is stored: delivers messages that came with the handshake),
// `send(text)` (false once closed), `setRef(bool)`, `open`, `close(goingAway)`.
// `maxQueued`: most sockets handed over and not yet taken by this thread (closed past it).
exports.loopListen = (port, onSocket, maxQueued) => sync(() => addon.NativeLoopServer.listen(port, onSocket, maxQueued))
// A TCP listener whose accepted sockets go to `onSocket(socket)`, for `loopHttpServerConn`.
exports.loopListenTcp = (port, onSocket, maxQueued) => sync(() => addon.NativeLoopServer.listenTcp(port, onSocket, maxQueued))
// An HTTP/1.1 server connection on this thread's loop: `onMessages([seq, flags, body, _gr, _a,
// _ar, ...])` gets whole requests, `replyHttp(seq, status, body)` answers one (true: call
// `pump()` soon), `expire()` applies the read deadlines of `limits` (`serverLimits`).
exports.loopHttpServerConn = (socket, limits, onMessages, onClose) => addon.NativeLoopConn.httpServer(socket, limits, onMessages, onClose)
// The server limits `limits` sets over the core's defaults, every one by its snake_case name.
exports.serverLimits = (limits) => sync(() => addon.serverLimits(limits || undefined))
// `[spins, hits]` of this thread's busy-poll before the loop sleeps (`GRENACHE_NODE_POLL_US`,
// src/spin.rs): zeros when it is off.
exports.spinStats = () => addon.spinStats()
exports.loopServerPort = (s) => s.port
exports.loopServerClose = (s) => sync(() => s.close())

// --- PUB/SUB -------------------------------------------------------------------------------
exports.pubBind = (port) => sync(() => new addon.NativeQueuedPub(port))
exports.pubPort = (p) => p.port
exports.pubSubscribers = (p) => p.subscribers
exports.pubPublish = (p, msg) => (Buffer.isBuffer(msg) ? p.publishBinary(msg) : p.publish(String(msg)))
exports.pubClose = (p) => p.close()
// `onMessage(data)`: a string for text frames, a Buffer for binary ones; `onState(connected)`.
// Messages that arrived together come in one call (a string per text frame, a Buffer per binary
// one) and are handed out one by one, in order; a listener that throws does not cost the rest of
// the batch (the exception is rethrown as uncaught on the next tick).
exports.subTo = (dest, onMessage, onState) => sync(() => new addon.NativeSubTo(
  dest,
  (batch) => {
    for (let i = 0; i < batch.length; i++) {
      try {
        onMessage(batch[i])
      } catch (e) {
        process.nextTick(() => { throw e })
      }
    }
  },
  onState))
exports.subClose = (s) => s.close()

// --- uTP (grenache-native/utp) ---------------------------------------------------------------
// A node is the one UDP socket of the process: its servers' and clients' streams and the punches.
exports.utpNode = (port) => sync(() => new addon.NativeUtpNode(port))
exports.utpNodePort = (n) => n.port
// One punch datagram to `target` ('ip:port').
exports.utpSendPunch = (n, target) => sync(() => n.sendPunch(String(target)))
// Punches until the target answers: cb(err) with err.code 'ERR_PUNCH_TIMEOUT' after `timeout` ms.
exports.utpPunch = (n, target, timeout, cb) => n.punch(String(target), Math.max(1, Math.round(timeout)), done(cb, () => undefined))
// `onPunch(from)` ('ip:port') for every punch reaching the node, until utpNodeClose.
exports.utpOnPunch = (n, onPunch) => n.onPunch(onPunch)
exports.utpNodeClose = (n) => n.close()
// A uTP server on node `n`: `onRequest(token, rid, key, payload, null, remote)`, remote
// `{address, family, port}` (the caller as the node saw it). With `broker`, serverRegister.
exports.serverListenUtp = ({ node, link, broker, onRequest }) => {
  const handler = (reply, ridJson, key, payloadJson, _fingerprint, remoteJson) => {
    let rid, payload, remote
    try {
      rid = JSON.parse(ridJson)
      payload = JSON.parse(payloadJson)
      remote = remoteJson ? JSON.parse(remoteJson) : null
    } catch (e) {
      return reply.error('ERR_PARSE')
    }
    onRequest(reply, rid, key, payload, null, remote)
  }
  return sync(() => addon.NativeServer.listenUtp(handler, node, link || sharedLink(), broker || undefined))
}
exports.serverRegister = (s, name) => s.register(String(name))
// A uTP client on node `n`; with `broker`, requests without a destination go through it.
exports.clientOnUtpNode = (n, link, broker, punchTimeout) => sync(() => addon.NativeClient.onUtpNode(n, link || sharedLink(), broker || undefined, punchTimeout === undefined ? undefined : Math.max(1, Math.round(punchTimeout))))
