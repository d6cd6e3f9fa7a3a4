// grenache-native/grape: `{ Grape }` of grenache-grape 1.0.0 on the native Grape (DHT node + HTTP
// API). Same conf names and defaults, start(cb)/stop(cb), announce/lookup/put/get and the events
// ready, listening, announce (name), peer ("ip:port"), node, warning. Differences are in
// docs/compat.md.
'use strict'

const EventEmitter = require('events')
const native = require('./native')
const { keepAlive, later } = require('./util')

const noop = () => {}

class Grape extends EventEmitter {
  constructor (conf) {
    super()
    this.conf = {
      host: null,
      dht_maxTables: 5000,
      dht_maxValues: 5000,
      dht_port: 20001,
      dht_bootstrap: [],
      dht_concurrency: 24,
      dht_nodeLiveness: 5 * 60 * 1000,
      api_port: null,
      dht_peer_maxAge: 120000,
      check_maxPayloadSize: 8192,
      ...conf
    }
    this._interface = {}
    this._active = false
  }

  start (cb) {
    cb = cb || noop
    if (this._active) return cb()
    if (!this.conf.api_port) return later(cb, new Error('ERR_NO_PORT'))
    let g
    try {
      g = native.grapeStart({
        ...this.conf,
        host: this.conf.host || undefined,
        dht_bootstrap: (this.conf.dht_bootstrap || []).map(String)
      })
    } catch (e) {
      return later(cb, e)
    }
    this._g = g
    this._active = true
    this._release = keepAlive()
    const ports = native.grapePorts(g)
    this.dht_port = ports.dht
    this.api_port = ports.api
    native.grapeOnEvent(g, (kind, arg) => {
      if (this._g !== g) return
      if (kind === 'announce' || kind === 'peer') this.emit(kind, arg)
      else if (kind === 'ready' || kind === 'listening' || kind === 'node' || kind === 'warning') this.emit(kind)
    })
    later(cb)
  }

  stop (cb) {
    cb = cb || noop
    const g = this._g
    this._g = null
    this._active = false
    if (this._api) {
      native.linkClose(this._api)
      this._api = null
    }
    if (this._release) this._release()
    this._release = null
    if (!g) return later(cb)
    native.grapeStop(g, (err) => cb(err || undefined))
  }

  _core (cb) {
    if (!this._g) {
      later(cb, new Error('ERR_GRAPE_NOT_STARTED'))
      return null
    }
    return this._g
  }

  announce (val, port, cb) {
    cb = cb || noop
    if (!Number.isInteger(port)) return later(cb, new Error('ERR_GRAPE_SERVICE_PORT'))
    const g = this._core(cb)
    if (g) native.grapeAnnounce(g, String(val), port, (err, n) => (err ? cb(err) : cb(null, n)))
  }

  lookup (val, cb) {
    cb = cb || noop
    const g = this._core(cb)
    if (g) native.grapeLookup(g, String(val), cb)
  }

  // put/get go through this Grape's own HTTP API.
  _apiCall (type, data, cb) {
    cb = cb || noop
    if (!this._core(cb)) return
    try {
      if (!this._api) this._api = native.linkNew(`http://127.0.0.1:${this.api_port}`, undefined)
    } catch (e) {
      return later(cb, e)
    }
    native.linkCall(this._api, type, data, undefined, (err, res) => {
      if (err) return cb(err)
      if (typeof res === 'string' && /^ERR_/.test(res)) return cb(new Error(res))
      cb(null, res)
    })
  }

  put (opts, cb) { this._apiCall('put', opts, cb) }
  get (opts, cb) { this._apiCall('get', Buffer.isBuffer(opts) ? opts.toString('hex') : opts, cb) }
}

module.exports = { Grape }
