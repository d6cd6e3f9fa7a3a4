// grenache-native/link: the `Link` class of grenache-nodejs-link 1.0.2 (module.exports = Link),
// with the Grape HTTP calls made by the native core. Same conf and defaults, callbacks, lookup
// cache (`link.cache.lookup`, keys `lookup:"<key>"`), request coalescing, retries, monitor and
// announce timers; differences are in docs/compat.md.
'use strict'

const native = require('./native')
const { LRU, uuid, retry } = require('./util')

class Link {
  constructor (conf) {
    this.conf = {
      grape: '',
      monitorTimeout: 2000,
      requestTimeout: 2500,
      lruMaxSizeLookup: 2500,
      lruMaxAgeLookup: 10000,
      ...conf
    }
  }

  init () {
    this._inited = true
    this.cache = {}
    this._waiting = new Map() // request hash -> callbacks of the requests sharing one Grape call
    this._reqs = new Map()
    this._announces = new Map()
  }

  // The native Grape API client, made on first use (the URL is checked then).
  _native () {
    if (!this._nl) this._nl = native.linkNew(this.conf.grape, undefined)
    return this._nl
  }

  getRequestHash (type, payload) {
    return `${type}:${JSON.stringify(payload)}`
  }

  request (type, payload, _opts = {}, cb) {
    if (typeof _opts === 'function') return this.request(type, payload, undefined, _opts)
    const opts = _opts || {}
    if (!this._inited) this.init()
    retry(opts.retry || 1, (next) => this._request(type, payload, opts, next), typeof cb === 'function' ? cb : () => {})
  }

  _request (type, payload, _opts, cb) {
    const opts = { timeout: this.conf.requestTimeout, ..._opts }
    const qhash = this.getRequestHash(type, payload)
    const cache = this.cache[type]
    if (cache) {
      const hit = cache.get(qhash)
      if (hit) return cb(null, hit)
    }
    const req = { rid: uuid(), type, payload, opts, qhash, cb, _ts: Date.now() }
    this._reqs.set(req.rid, req)
    const waiting = this._waiting.get(qhash)
    if (waiting) {
      waiting.push(req.rid)
      return
    }
    this._waiting.set(qhash, [req.rid])
    let nl
    try {
      nl = this._native()
    } catch (e) {
      return process.nextTick(() => this._settle(qhash, type, e))
    }
    const timeout = typeof opts.timeout === 'number' && opts.timeout > 0 ? Math.round(opts.timeout) : undefined
    native.linkCall(nl, type, payload, timeout, (err, data) => this._settle(qhash, type, err ? this._grapeError(type, err) : null, data))
  }

  // A failed Grape call as the reference reports it.
  _grapeError (type, err) {
    if (err.code === 'ERR_TIMEOUT') return new Error('ERR_TIMEOUT')
    const e = new Error(`request to ${this.conf.grape}/${type} failed, reason: ${err.detail || err.message}`)
    e.code = err.code
    return e
  }

  // Completes every request waiting on `qhash` with one Grape answer.
  _settle (qhash, type, err, data) {
    const rids = this._waiting.get(qhash)
    if (!rids) return
    this._waiting.delete(qhash)
    // Lookups are cached only when they found something: an empty answer is asked again next
    // time (the reference caches it too; see docs/compat.md).
    const cache = this.cache && this.cache[type]
    if (!err && cache && data && (type !== 'lookup' || (Array.isArray(data) && data.length))) cache.set(qhash, data)
    for (const rid of rids) this.handleReply(rid, err, data)
  }

  handleReply (rid, err, data) {
    const req = this._reqs.get(rid)
    if (!req) return
    this._reqs.delete(rid)
    req.cb(err, data)
  }

  lookup (key, _opts = {}, cb) {
    if (typeof _opts === 'function') return this.lookup(key, {}, _opts)
    const opts = { retry: 3, ..._opts }
    this.request('lookup', key, opts, (err, res) => {
      if (err) return cb(err)
      if (!Array.isArray(res) || !res.length) return cb(new Error('ERR_GRAPE_LOOKUP_EMPTY'))
      cb(null, res)
    })
  }

  announce (key, port, _opts = {}, cb) {
    if (typeof _opts === 'function') return this.announce(key, port, undefined, _opts)
    this.request('announce', [key, port], { retry: 3, ..._opts }, cb || (() => {}))
  }

  startAnnouncing (key, port, opts = {}, cb) {
    if (typeof opts === 'function') return this.startAnnouncing(key, port, undefined, opts)
    if (!this._inited) this.init()
    const id = port + ':' + key
    if (this._announces.has(id)) return false
    const info = { timeout: null, stopped: false }
    const interval = (opts && opts.interval) || 2 * 60 * 1000
    const again = (err) => {
      if (cb) cb(err)
      cb = null
      if (info.stopped) return
      info.timeout = setTimeout(ann, Math.ceil(0.5 * interval + Math.random() * interval))
    }
    const ann = () => this.announce(key, port, opts || {}, again)
    ann()
    this._announces.set(id, info)
  }

  stopAnnouncing (key, port) {
    const id = port + ':' + key
    const info = this._announces && this._announces.get(id)
    if (!info) return false
    this._announces.delete(id)
    info.stopped = true
    clearTimeout(info.timeout)
  }

  put (opts, cb) {
    if (!opts || !cb) throw new Error('ERR_MISSING_ARGS')
    this.request('put', opts, {}, cb)
  }

  get (hash, cb) {
    this.request('get', hash, {}, cb)
  }

  // Fails the requests older than their timeout with ERR_TIMEOUT.
  monitor () {
    const now = Date.now()
    for (const req of Array.from(this._reqs.values())) {
      if (now > req._ts + req.opts.timeout) {
        const rids = this._waiting.get(req.qhash)
        if (rids) this._settle(req.qhash, req.type, new Error('ERR_TIMEOUT'))
        else this.handleReply(req.rid, new Error('ERR_TIMEOUT'))
      }
    }
    return this
  }

  start () {
    if (!this._inited) this.init()
    clearInterval(this._monitorItv)
    this._monitorItv = setInterval(() => this.monitor(), this.conf.monitorTimeout)
    this.cache.lookup = new LRU({ max: this.conf.lruMaxSizeLookup, maxAge: this.conf.lruMaxAgeLookup })
    return this
  }

  stop () {
    clearInterval(this._monitorItv)
    if (!this._inited) return this
    for (const c of Object.values(this.cache)) c.clear()
    for (const info of this._announces.values()) {
      info.stopped = true
      clearTimeout(info.timeout)
    }
    this._announces.clear()
    return this
  }
}

module.exports = Link
