// Small helpers of the reference-compatible modules.
'use strict'

const crypto = require('crypto')

const uuid = () => crypto.randomUUID()

// A uniformly random element (undefined for an empty list).
const sample = (list) => (list && list.length ? list[Math.floor(Math.random() * list.length)] : undefined)

// A shuffled copy (Fisher-Yates).
function shuffle (list) {
  const a = Array.from(list || [])
  for (let i = a.length - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1))
    const t = a[i]
    a[i] = a[j]
    a[j] = t
  }
  return a
}

// A bounded LRU cache whose entries expire `maxAge` ms after they were set (checked when read),
// with the `get`/`set`/`remove`/`clear`/`length` the reference's `lru` package offers.
class LRU {
  constructor ({ max = 2500, maxAge = 0 } = {}) {
    this.max = max
    this.maxAge = maxAge
    this._m = new Map()
  }

  get length () { return this._m.size }

  get (key) {
    const e = this._m.get(key)
    if (!e) return undefined
    if (this.maxAge && Date.now() - e.t > this.maxAge) {
      this._m.delete(key)
      return undefined
    }
    this._m.delete(key)
    this._m.set(key, e)
    return e.v
  }

  peek (key) {
    const e = this._m.get(key)
    return e && (!this.maxAge || Date.now() - e.t <= this.maxAge) ? e.v : undefined
  }

  set (key, value) {
    this._m.delete(key)
    this._m.set(key, { v: value, t: Date.now() })
    while (this.max > 0 && this._m.size > this.max) this._m.delete(this._m.keys().next().value)
    return value
  }

  remove (key) {
    const e = this._m.get(key)
    this._m.delete(key)
    return e && e.v
  }

  keys () { return Array.from(this._m.keys()) }
  clear () { this._m.clear() }
}

// Keeps the process alive (like a listening socket or a pending timer in the reference) until the
// returned function is called; calling it again does nothing.
function keepAlive () {
  let timer = setInterval(() => {}, 1 << 30)
  return () => {
    if (timer) clearInterval(timer)
    timer = null
  }
}

// Calls `cb(...args)` in a later iteration of the event loop, so that a callback that throws does so outside our code
// (like an exception thrown from a reference callback: an uncaught exception, not a corrupted
// state of ours).
const later = (cb, ...args) => process.nextTick(() => cb(...args))

// `task(done)` up to `times` attempts, until one succeeds (async.retry without interval).
function retry (times, task, cb) {
  let left = Math.max(1, times | 0)
  const attempt = () => {
    left--
    task((err, res) => {
      if (err && left > 0) return attempt()
      cb(err, res)
    })
  }
  attempt()
}

// A failed bind as Node reports one (`listen EADDRINUSE: address already in use :::1337`, with
// code/syscall/port), other errors as they are.
function listenError (e, port) {
  if (!/in use/i.test(e.message)) return e
  const err = new Error(`listen EADDRINUSE: address already in use :::${port}`)
  Object.assign(err, { code: 'EADDRINUSE', errno: -98, syscall: 'listen', address: '::', port })
  return err
}

// The deadlines of a transport's requests on one timer, armed at the earliest: requests sent in
// order with the same timeout never move it. `requests()` lists the requests in flight;
// `onLate(req)` answers one whose deadline passed.
class Deadlines {
  constructor (requests, onLate) {
    this._requests = requests
    this._onLate = onLate
    this._timer = null
    this._at = 0
  }

  // Sets `req._deadline` from its start (`req._ts`) when `timeout` is a number of ms.
  add (req, timeout) {
    if (typeof timeout !== 'number' || timeout < 0) return
    req._deadline = req._ts + timeout
    if (!this._timer || req._deadline < this._at) this._arm(req._deadline)
  }

  _arm (at) {
    if (this._timer) clearTimeout(this._timer)
    this._at = at
    this._timer = setTimeout(() => this._sweep(), Math.max(0, at - Date.now()))
    this._timer.unref()
  }

  _sweep () {
    this._timer = null
    const now = Date.now()
    let next = Infinity
    for (const req of Array.from(this._requests())) {
      if (req._deadline === undefined) continue
      if (req._deadline <= now) this._onLate(req)
      else if (req._deadline < next) next = req._deadline
    }
    if (next !== Infinity && !this._timer) this._arm(next)
  }

  stop () {
    if (this._timer) clearTimeout(this._timer)
    this._timer = null
  }
}

module.exports = { Deadlines, uuid, sample, shuffle, LRU, keepAlive, later, retry, listenError }
