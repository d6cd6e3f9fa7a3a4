// grenache-nodejs-link 1.0.2 against a Grape's HTTP API (used by tests/tests/grape_interop.rs).
// Usage: node grape_link_client.js <grape url> <service name> <port>
// Runs announce, lookup (polled until the service shows up, at most 10 s), put, get (bare hash
// and {hash}), a get miss and a lookup miss; prints one JSON line per step:
// {"step":..,"err":<message or null>,"code":<err.code or null>,"res":<result>}, then {"step":"done"}.
'use strict'
const Link = require('grenache-nodejs-link')

const [url, name, portArg] = process.argv.slice(2)
const port = Number(portArg)
const link = new Link({ grape: url, lruMaxAgeLookup: 1 })
link.start()

const out = (step, err, res) => process.stdout.write(JSON.stringify({
  step,
  err: err ? String(err.message) : null,
  code: err && err.code !== undefined ? err.code : null,
  res: res === undefined ? null : res
}) + '\n')
const p = (fn) => new Promise((resolve) => fn((err, res) => resolve([err, res])))
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

async function main () {
  let [err, res] = await p((cb) => link.announce(name, port, {}, cb))
  out('announce', err, res)

  const deadline = Date.now() + 10000
  for (;;) {
    [err, res] = await p((cb) => link.lookup(name, { retry: 1 }, cb))
    if ((!err && Array.isArray(res) && res.length) || Date.now() > deadline) break
    await sleep(100)
  }
  out('lookup', err, res)

  ;[err, res] = await p((cb) => link.put({ v: 'hello from link' }, cb))
  out('put', err, res)
  const hash = res

  ;[err, res] = await p((cb) => link.get(hash, cb))
  out('get', err, res)
  ;[err, res] = await p((cb) => link.get({ hash }, cb))
  out('get_obj', err, res)
  ;[err, res] = await p((cb) => link.get('0000000000000000000000000000000000000000', cb))
  out('get_miss', err, res)
  ;[err, res] = await p((cb) => link.lookup('no-such-service-' + port, { retry: 1 }, cb))
  out('lookup_miss', err, res)

  link.stop()
  out('done', null, null)
}

main().catch((e) => { out('crash', e, null); process.exit(1) })
