// Tests of grenache-native/utp, the drop-in of grenache-nodejs-utp: the reference's example
// flows written against the drop-in (punch_simple: a client punches a public server, which punches
// back, then requests it; punch_simple_servers: a worker keeps punching a public consumer, which
// punches back and requests the worker over the mapping the punches opened), each side in its own
// process as in the examples (the drop-in has one UDP socket per process); the legacy peer on npm
// utp-native 2.5.3 (libutp) calling the drop-in's server and called by its client, punches both
// ways; a broker (the `grenache broker` command) introducing a client to a worker; misuse.
//   node --test bindings/node/test/utp.test.js
'use strict'

const { test, before, after } = require('node:test')
const assert = require('node:assert/strict')
const fs = require('fs')
const path = require('path')
const readline = require('readline')
const { spawn } = require('child_process')

const ROOT = path.join(__dirname, '..', '..', '..')
const INTEROP = path.join(ROOT, 'tests', 'interop')
const UTP = path.join(__dirname, '..', 'lib', 'utp.js')
const LINK = path.join(__dirname, '..', 'lib', 'link.js')
const { Grape } = require('../lib/grape')
const Link = require('../lib/link')
const { PeerRPCClient, PeerRPCServer } = require('../lib/utp')

const cb2p = (fn) => new Promise((resolve, reject) => fn((err, res) => (err ? reject(err) : resolve(res))))
function freePort () {
  return new Promise((resolve, reject) => {
    const srv = require('net').createServer()
    srv.on('error', reject)
    srv.listen(0, () => {
      const { port } = srv.address()
      srv.close(() => resolve(port))
    })
  })
}
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
// `p`, or a rejection after `ms`.
function within (p, ms, what) {
  let timer
  const t = new Promise((resolve, reject) => { timer = setTimeout(() => reject(new Error(`${what}: nothing within ${ms} ms`)), ms) })
  return Promise.race([p, t]).finally(() => clearTimeout(timer))
}

let grapes = []
let grapeUrl
const cleanups = []

before(async () => {
  const g1 = new Grape({ dht_port: 0, api_port: await freePort(), host: '127.0.0.1' })
  await cb2p((cb) => g1.start(cb))
  const g2 = new Grape({ dht_port: 0, api_port: await freePort(), host: '127.0.0.1', dht_bootstrap: [`127.0.0.1:${g1.dht_port}`] })
  const ready = new Promise((resolve) => g2.once('ready', resolve))
  await cb2p((cb) => g2.start(cb))
  await ready
  grapes = [g1, g2]
  grapeUrl = grapes.map((g) => `http://127.0.0.1:${g.api_port}`)
})

after(async () => {
  for (const c of cleanups.reverse()) {
    try { await c() } catch (_) {}
  }
  for (const g of grapes) await cb2p((cb) => g.stop(cb))
})

function link (i = 0) {
  const l = new Link({ grape: grapeUrl[i] })
  l.start()
  cleanups.push(() => l.stop())
  return l
}

// A child process running `code` (with UTP, LINK and GRAPE defined); its stdout lines, as JSON,
// arrive through `next(pred)`. Killed at the end if still running.
function child (code, { cwd } = {}) {
  const prelude = `const UTP = ${JSON.stringify(UTP)}; const LINK = ${JSON.stringify(LINK)}; const GRAPE = ${JSON.stringify(grapeUrl[0])};\n` +
    'const out = (o) => process.stdout.write(JSON.stringify(o) + "\\n");\n'
  return spawnLines(process.execPath, ['-e', prelude + code], { cwd })
}

function spawnLines (cmd, args, opts = {}) {
  const p = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'inherit'], ...opts })
  const lines = []
  const waiters = []
  readline.createInterface({ input: p.stdout }).on('line', (l) => {
    let v
    try { v = JSON.parse(l) } catch (_) { v = { text: l } }
    lines.push(v)
    for (const w of waiters.slice()) w()
  })
  const exited = new Promise((resolve) => p.on('exit', (code, signal) => resolve({ code, signal })))
  cleanups.push(() => { if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL') })
  return {
    proc: p,
    exited,
    send: (o) => p.stdin.write(JSON.stringify(o) + '\n'),
    next (pred, what, timeout = 20000) {
      return new Promise((resolve, reject) => {
        const check = () => {
          const v = lines.find(pred)
          if (!v) return false
          clearTimeout(timer)
          waiters.splice(waiters.indexOf(check), 1)
          resolve(v)
          return true
        }
        const timer = setTimeout(() => {
          waiters.splice(waiters.indexOf(check), 1)
          reject(new Error(`${what}: nothing within ${timeout} ms (lines: ${JSON.stringify(lines).slice(0, 500)})`))
        }, timeout)
        waiters.push(check)
        check()
      })
    }
  }
}

let serial = 0
const fresh = (base) => `${base}_${process.pid}_${++serial}`

test('punch_simple: the client punches a public server, is punched back, then requests it', async () => {
  const name = fresh('etoro_cris')
  // examples/punch_simple/rpc_server.js, on the drop-in, in its own process.
  const server = child(`
    const { PeerRPCServer } = require(UTP)
    const Link = require(LINK)
    const link = new Link({ grape: GRAPE })
    link.start()
    const peer = new PeerRPCServer(link, { timeout: 300000 })
    peer.init()
    const service = peer.transport('server')
    service.listen()
    out({ port: service.port })
    const itv = setInterval(() => link.announce(${JSON.stringify(name)}, service.port, {}), 300)
    service.on('request', (rid, key, payload, handler, cert, additional) => {
      out({ request: { key, payload, cert, additional } })
      handler.reply(null, { said: 'strategy is everything', additional })
    })
    service.on('punch', (other) => {
      out({ punch: other })
      service.punch(other)
    })
    process.stdin.on('end', () => { clearInterval(itv); service.stop(); link.stop() })
    process.stdin.resume()
  `)
  const { port: serverPort } = await server.next((l) => l.port, 'server listening')

  // examples/punch_simple/rpc_client.js, on the drop-in.
  const peer = new PeerRPCClient(link(1), {})
  peer.init()
  cleanups.push(() => peer.stop())
  const client = peer.transport('client', {})
  const reply = new Promise((resolve, reject) => {
    client.once('punch', (other) => {
      assert.deepEqual(other, { address: '127.0.0.1', family: 'IPv4', port: serverPort })
      peer.request(name, 'hello', { timeout: 10000 }, (err, data) => (err ? reject(err) : resolve(data)))
    })
  })
  // The announce may not be visible yet: punch until it is (the example punches once).
  let punched = false
  for (let i = 0; i < 100 && !punched; i++) {
    punched = await new Promise((resolve) => peer.punch(name, (err) => resolve(!err)))
    if (!punched) await sleep(200)
  }
  assert.ok(punched, 'peer.punch found the server')
  const data = await within(reply, 30000, 'the reply after the punch back')
  const { punch: from } = await server.next((l) => l.punch, 'the server saw the punch')
  const { request } = await server.next((l) => l.request, 'the server saw the request')
  assert.equal(data.said, 'strategy is everything')
  assert.equal(request.key, name)
  assert.equal(request.payload, 'hello')
  assert.equal(request.cert, null)
  // The handler's sixth argument: the caller as the server's socket saw it, which is the socket
  // the punch came from (one socket per process).
  assert.deepEqual(request.additional, { address: '127.0.0.1', family: 'IPv4', port: from.port })
  assert.deepEqual(data.additional, request.additional)
  peer.stop()
  server.proc.stdin.end()
  assert.deepEqual(await within(server.exited, 20000, 'the server process exit'), { code: 0, signal: null }, 'the server process exits once stopped')
})

test('punch_simple_servers: a public consumer requests the worker that keeps punching it', async () => {
  const consumerName = fresh('fibonacci_consumer')
  // examples/punch_simple_servers/rpc_server_behind_nat.js, on the drop-in, in its own process.
  const worker = child(`
    const { PeerRPCServer } = require(UTP)
    const Link = require(LINK)
    const link = new Link({ grape: GRAPE })
    link.start()
    const peer = new PeerRPCServer(link, { timeout: 300000 })
    peer.init()
    const service = peer.transport('server')
    service.listen()
    out({ port: service.port })
    const itv = setInterval(() => {
      link.announce('fibonacci_worker', service.port, {})
      peer.punch(${JSON.stringify(consumerName)})
    }, 300)
    const fibonacci = (length) => {
      const f = (n) => (n <= 1 ? 1 : f(n - 1) + f(n - 2))
      const res = []
      for (let i = 0; i < length; i++) res.push(f(i))
      return res
    }
    service.on('request', (rid, key, payload, handler, cert, additional) => {
      out({ request: { key, payload } })
      handler.reply(null, fibonacci(payload.length))
    })
    service.on('punch', (other) => out({ punch: other }))
    process.stdin.on('end', () => { clearInterval(itv); service.stop(); link.stop() })
    process.stdin.resume()
  `)
  const { port: workerPort } = await worker.next((l) => l.port, 'worker listening')

  // examples/punch_simple_servers/rpc_server_public.js, on the drop-in: a server (which only
  // consumes) and a client on a second Link, one socket.
  const l1 = link(0)
  const peerSrv = new PeerRPCServer(l1, { timeout: 300000 })
  peerSrv.init()
  const service = peerSrv.transport('server')
  service.listen()
  cleanups.push(() => service.stop())
  const peer = new PeerRPCClient(link(1), {})
  peer.init()
  cleanups.push(() => peer.stop())
  const announce = setInterval(() => l1.announce(consumerName, service.port, {}), 300)
  cleanups.push(() => clearInterval(announce))
  const result = await within(new Promise((resolve, reject) => {
    const onPunch = (other) => {
      assert.deepEqual(other, { address: '127.0.0.1', family: 'IPv4', port: workerPort })
      service.removeListener('punch', onPunch)
      service.punch(other)
      peer.request(other, { length: 10 }, { timeout: 10000 }, (err, data) => (err ? reject(err) : resolve(data)))
    }
    service.on('punch', onPunch)
  }), 30000, 'the worker\'s reply')
  assert.deepEqual(result, [1, 1, 2, 3, 5, 8, 13, 21, 34, 55])
  // The key of a request to an endpoint is 'address:port' (as the reference sends it).
  const { request } = await worker.next((l) => l.request, 'the worker saw the request')
  assert.equal(request.key, `127.0.0.1:${workerPort}`)
  // Our punch back reached the worker.
  await worker.next((l) => l.punch && l.punch.port === service.port, 'the worker heard the punch back')
  clearInterval(announce)
  worker.proc.stdin.end()
  assert.deepEqual(await within(worker.exited, 20000, 'the worker process exit'), { code: 0, signal: null })
  service.stop()
  peer.stop()
})

test('the legacy peer (utp-native, libutp) calls the drop-in and is called by it; punches both ways', async (t) => {
  if (!fs.existsSync(path.join(INTEROP, 'node_modules', 'utp-native'))) {
    return t.skip('tests/interop has no node_modules (npm ci there)')
  }
  const legacy = spawnLines(process.execPath, [path.join(INTEROP, 'utp_peer.js')])
  const { port: legacyPort } = await legacy.next((l) => l.ready, 'legacy peer ready')

  // Ours -> legacy: a request straight to its endpoint; the key is 'address:port'.
  const peer = new PeerRPCClient(link(1), {})
  peer.init()
  cleanups.push(() => peer.stop())
  const who = await cb2p((cb) => peer.request({ address: '127.0.0.1', port: legacyPort }, 'who', { timeout: 10000 }, cb))
  assert.equal(who.key, `127.0.0.1:${legacyPort}`)
  const err = await cb2p((cb) => peer.request({ address: '127.0.0.1', port: legacyPort }, 'fail', { timeout: 10000 }, cb)).catch((e) => e)
  assert.equal(err.message, 'ERR_BOOM')

  // Punches both ways: ours reaches the legacy peer as the bare C3 BF; its punch back is our
  // transport's 'punch' event.
  legacy.send({ id: 1, cmd: 'punch_back', on: true })
  await legacy.next((l) => l.id === 1, 'the legacy peer punches back')
  const tr = peer.transport('client', {})
  const back = within(new Promise((resolve) => tr.once('punch', resolve)), 20000, 'the punch back')
  tr.punch({ address: '127.0.0.1', port: legacyPort })
  const seen = await legacy.next((l) => l.event === 'punch', 'the legacy peer saw our punch')
  assert.equal(seen.from.port, who.remote.port, 'the punch and the request left from one socket')
  assert.deepEqual(await back, { address: '127.0.0.1', family: 'IPv4', port: legacyPort })

  // Legacy -> ours: its request reaches our server's handler with the sixth argument.
  const peerSrv = new PeerRPCServer(link(0), {})
  peerSrv.init()
  const service = peerSrv.transport('server')
  service.listen()
  cleanups.push(() => service.stop())
  assert.equal(service.port, seen.from.port, 'the server listens on the process socket')
  service.on('request', (rid, key, payload, handler, cert, additional) => handler.reply(null, { payload, key, additional }))
  legacy.send({ id: 2, cmd: 'request', host: '127.0.0.1', port: service.port, key: 'legacy_key', payload: 'hi' })
  const { reply } = await legacy.next((l) => l.id === 2, 'the legacy peer got its reply')
  assert.equal(reply[1], null)
  assert.deepEqual(reply[2], { payload: 'hi', key: 'legacy_key', additional: { address: '127.0.0.1', family: 'IPv4', port: legacyPort } })

  legacy.proc.stdin.end()
  await within(legacy.exited, 20000, 'the legacy peer exit')
  service.stop()
  peer.stop()
})

test('with a broker: the client is introduced to the worker registered with it', async (t) => {
  const bin = path.join(ROOT, 'target', 'debug', 'grenache')
  if (!fs.existsSync(bin)) return t.skip('target/debug/grenache is not built')
  const brokerName = fresh('broker')
  const name = fresh('brokered')
  const broker = spawnLines(bin, ['--grape', grapeUrl[0], 'broker', '--name', brokerName, '--bind', '127.0.0.1'])
  cleanups.push(() => broker.proc.kill('SIGKILL'))
  const worker = child(`
    const { PeerRPCServer } = require(UTP)
    const Link = require(LINK)
    const link = new Link({ grape: GRAPE })
    link.start()
    const peer = new PeerRPCServer(link, { broker: ${JSON.stringify(brokerName)} })
    peer.init()
    const service = peer.transport('server')
    service.listen()
    service.register(${JSON.stringify(name)})
    service.on('request', (rid, key, payload, handler) => handler.reply(null, { key, payload }))
    out({ port: service.port })
    process.stdin.on('end', () => { service.stop(); link.stop() })
    process.stdin.resume()
  `)
  await worker.next((l) => l.port, 'worker listening')
  const peer = new PeerRPCClient(link(1), { broker: brokerName, punchTimeout: 3000 })
  peer.init()
  cleanups.push(() => peer.stop())
  let data, last
  for (let i = 0; i < 60 && !data; i++) {
    data = await cb2p((cb) => peer.request(name, 'via broker', { timeout: 5000 }, cb)).catch((e) => { last = e })
    if (!data) await sleep(250)
  }
  assert.ok(data, `a reply through the broker (last error: ${last && last.message})`)
  assert.deepEqual(data, { key: name, payload: 'via broker' })
  worker.proc.stdin.end()
  await within(worker.exited, 20000, 'the worker process exit')
  peer.stop()
})

test('misuse: a bad punch target, register without a broker, a port the socket is not on', async () => {
  const peer = new PeerRPCServer(link(0), { punchTimeout: 500 })
  peer.init()
  const service = peer.transport('server')
  assert.throws(() => service.punch({ port: 1 }), /ERR_PUNCH_TARGET/)
  assert.throws(() => service.register('x'), /ERR_NOT_LISTENING/)
  service.listen()
  cleanups.push(() => service.stop())
  assert.throws(() => service.register('x'), /ERR_NO_BROKER/)
  assert.throws(() => service.listen(), /ERR_ALREADY_LISTENING/)
  const other = peer.transport('server')
  assert.throws(() => other.listen(service.port === 1 ? 2 : 1), /ERR_PORT_MISMATCH/)
  const err = await new Promise((resolve) => service.punch({ address: '127.0.0.1', port: 9 }, resolve))
  // Nobody answers on the discard port: the waited punch gives up with a typed error.
  assert.equal(err && err.code, 'ERR_PUNCH_TIMEOUT')
  const c = new PeerRPCClient(link(1), {})
  const early = await cb2p((cb) => c.request({ address: '127.0.0.1', port: 1 }, 'x', {}, cb)).catch((e) => e)
  assert.match(early.message, /ERR_PEER_NOT_INITIALIZED/)
  service.stop()
})
