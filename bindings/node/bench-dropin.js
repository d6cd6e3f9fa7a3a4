#!/usr/bin/env node
// The drop-in modules (grenache-native/grape, /link, /http, /ws) beside the reference packages
// they replace, in one run: the same code (the reference's API) driving each implementation.
// Rows: HTTP and WS RPC, sequential and 100 in flight; map over 3 workers (HTTP, WS); PUB/SUB to
// 10 and 100 subscribers; Grape lookup through the Grape class. RPC and PUB/SUB rows run in one
// process (client and server on one event loop) and in two processes (the servers/publisher in a
// child process, which is how services run). Prints a markdown table with ours/reference ratios.
//   (cd bindings/node && npm run build) && node bindings/node/bench-dropin.js
// Environment: BENCH_SECONDS (per RPC measurement, default 2); BENCH_ONLY, a comma list of
// http, ws, pubsub, grape, floor, 1, 2 (transports, PUB/SUB, the Grape row, the TCP floors under
// the WS sequential and map rows, process modes) to run a part of the table.
'use strict'

const path = require('path')
const net = require('net')
const readline = require('readline')
const { spawn } = require('child_process')

const INTEROP = path.join(__dirname, '..', '..', 'tests', 'interop', 'node_modules')
const IMPLS = {
  ours: () => ({ Grape: require('./lib/grape').Grape, Link: require('./lib/link'), http: require('./lib/http'), ws: require('./lib/ws') }),
  reference: () => ({
    Grape: require(path.join(INTEROP, 'grenache-grape')).Grape,
    Link: require(path.join(INTEROP, 'grenache-nodejs-link')),
    http: require(path.join(INTEROP, 'grenache-nodejs-http')),
    ws: require(path.join(INTEROP, 'grenache-nodejs-ws'))
  })
}
const SECONDS = Number(process.env.BENCH_SECONDS || 2)
const ONLY = process.env.BENCH_ONLY ? new Set(process.env.BENCH_ONLY.split(',')) : null
// Whether a part of the table runs: one of `names` is asked for (or everything is).
const wanted = (...names) => !ONLY || names.some((n) => ONLY.has(n))
const wantedKind = (kind) => !ONLY || ONLY.has(kind) || !['http', 'ws'].some((k) => ONLY.has(k))
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
const cb2p = (fn) => new Promise((resolve, reject) => fn((err, res) => (err ? reject(err) : resolve(res))))

function freePort () {
  return new Promise((resolve, reject) => {
    const s = net.createServer()
    s.on('error', reject)
    s.listen(0, () => {
      const { port } = s.address()
      s.close(() => resolve(port))
    })
  })
}

// --- the server side: RPC servers (one per transport, three more for map) and a publisher --------

async function startServers (implName, grapeUrl, tag) {
  const m = IMPLS[implName]()
  const link = new m.Link({ grape: grapeUrl })
  link.start()
  const stops = [() => link.stop()]
  const listen = async (t) => {
    const port = await freePort()
    t.listen(port)
    return port
  }
  for (const kind of ['http', 'ws']) {
    for (const [name, count] of [[`bench:${tag}:${kind}`, 1], [`bench:${tag}:${kind}:map`, 3]]) {
      for (let i = 0; i < count; i++) {
        const peer = new m[kind].PeerRPCServer(link, { timeout: 300000 })
        peer.init()
        const t = peer.transport('server')
        const port = await listen(t)
        t.on('request', (rid, key, payload, handler) => handler.reply(null, 'world'))
        await cb2p((cb) => link.announce(name, port, {}, cb))
        stops.push(() => t.stop())
      }
    }
  }
  const pubPeer = new m.ws.PeerPub(link, {})
  pubPeer.init()
  const pub = pubPeer.transport('server')
  const pubPort = await listen(pub)
  await cb2p((cb) => link.announce(`bench:${tag}:pub`, pubPort, {}, cb))
  stops.push(() => {
    pub.stop()
    if (pub.socket) pub.socket.close() // the reference's publisher has no stop of its own
  })
  return {
    publish: (n) => { for (let i = 0; i < n; i++) pub.pub(`message ${i}`) },
    stop: () => { for (const s of stops.reverse()) s() }
  }
}

// The server side in a child process, driven over stdin/stdout.
function childServers (implName, grapeUrl, tag) {
  const p = spawn(process.execPath, [__filename, '--serve', implName, grapeUrl, tag], { stdio: ['pipe', 'pipe', 'inherit'] })
  const lines = readline.createInterface({ input: p.stdout })
  const waiters = []
  lines.on('line', (l) => { const w = waiters.shift(); if (w) w(l) })
  const next = () => new Promise((resolve) => waiters.push(resolve))
  return next().then(() => ({
    publish: (n) => p.stdin.write(`pub ${n}\n`),
    stop: () => new Promise((resolve) => { p.on('exit', resolve); p.stdin.end('stop\n') })
  }))
}

async function serveMain (implName, grapeUrl, tag) {
  const s = await startServers(implName, grapeUrl, tag)
  console.log('ready')
  process.stdin.on('end', () => process.exit(0))
  readline.createInterface({ input: process.stdin }).on('line', (l) => {
    const [cmd, n] = l.split(' ')
    if (cmd === 'pub') s.publish(Number(n))
    if (cmd === 'stop') {
      s.stop()
      setTimeout(() => process.exit(0), 200)
    }
  })
}

// --- the client side -------------------------------------------------------------------------

async function rate (ask, inFlight) {
  const end = Date.now() + SECONDS * 1000
  let n = 0
  const worker = async () => { while (Date.now() < end) { await ask(); n++ } }
  const t0 = Date.now()
  await Promise.all(Array.from({ length: inFlight }, worker))
  return n / ((Date.now() - t0) / 1000)
}

async function eventually (check, what, timeout = 20000) {
  const deadline = Date.now() + timeout
  let last
  while (Date.now() < deadline) {
    try {
      if (await check()) return
    } catch (e) {
      last = e
    }
    await sleep(100)
  }
  throw new Error(`${what}: ${last ? last.message : 'timed out'}`)
}

async function clientRows (implName, grapeUrl, servers, tag) {
  const m = IMPLS[implName]()
  const link = new m.Link({ grape: grapeUrl })
  link.start()
  const out = {}
  for (const kind of ['http', 'ws']) {
    if (!wantedKind(kind) || (ONLY && !ONLY.has(kind) && ONLY.has('pubsub'))) continue
    const peer = new m[kind].PeerRPCClient(link, {})
    peer.init()
    const name = `bench:${tag}:${kind}`
    const ask = () => cb2p((cb) => peer.request(name, 'hello', { timeout: 10000 }, cb))
    await eventually(() => ask(), `${implName} ${kind} warm-up`)
    for (let i = 0; i < 50; i++) await ask()
    out[`${kind} seq`] = await rate(ask, 1)
    out[`${kind} 100`] = await rate(ask, 100)
    const mapName = `${name}:map`
    const map = () => cb2p((cb) => peer.map(mapName, 'hello', { timeout: 10000 }, cb))
    await eventually(async () => (await map()).length === 3, `${implName} ${kind} map sees 3 workers`)
    out[`${kind} map`] = await rate(map, 1)
    peer.stop()
  }
  if (wanted('pubsub') || (ONLY && !['http', 'ws', 'pubsub'].some((k) => ONLY.has(k)))) for (const subs of [10, 100]) out[`pubsub ${subs}`] = await pubsub(m, link, implName, servers, subs, tag)
  link.stop()
  return out
}

// Messages delivered per second: `subs` subscribers, the publisher sends `count` messages at once.
async function pubsub (m, link, implName, servers, subs, tag) {
  const count = subs === 10 ? 5000 : 1000
  const peers = []
  let received = 0
  let connected = 0
  let last = 0
  for (let i = 0; i < subs; i++) {
    const s = new m.ws.PeerSub(link, {})
    s.init()
    const transports = []
    const make = s.transport.bind(s)
    s.transport = (...a) => { const t = make(...a); transports.push(t); return t }
    s.on('connected', () => connected++)
    s.on('message', () => { received++; last = Date.now() })
    s.sub(`bench:${tag}:pub`, { timeout: 10000 })
    peers.push({ s, transports })
  }
  await eventually(() => connected >= subs, `${implName}: ${subs} subscribers connected`)
  await sleep(200)
  received = 0
  const t0 = Date.now()
  servers.publish(count)
  const want = count * subs
  const deadline = Date.now() + 30000
  while (received < want && Date.now() < deadline) {
    await sleep(20)
    if (received && Date.now() - last > 3000) break // the rest is not coming
  }
  const r = received / (((last || Date.now()) - t0) / 1000)
  if (received < want) console.error(`  (${implName}, ${subs} subscribers: ${received} of ${want} messages delivered)`)
  for (const { s, transports } of peers) {
    s.stop()
    for (const t of transports) t.stop()
  }
  return r
}

async function grapeLookupRow (implName) {
  const { Grape, Link } = IMPLS[implName]()
  const [a1, a2] = [await freePort(), await freePort()]
  const d1 = await freePort()
  const g1 = new Grape({ dht_port: d1, api_port: a1 })
  await cb2p((cb) => g1.start(cb))
  const g2 = new Grape({ dht_port: await freePort(), api_port: a2, dht_bootstrap: [`127.0.0.1:${d1}`] })
  await cb2p((cb) => g2.start(cb))
  const link = new Link({ grape: `http://127.0.0.1:${a1}` })
  link.start()
  await cb2p((cb) => link.announce('bench:grape', 4242, {}, cb))
  link.stop()
  const ask = () => cb2p((cb) => g2.lookup('bench:grape', cb))
  await eventually(async () => (await ask()).length > 0, `${implName} Grape lookup`)
  const r = await rate(ask, 1)
  await cb2p((cb) => g2.stop(cb))
  await cb2p((cb) => g1.stop(cb))
  return r
}

// The floor of the sequential and map rows: the same bytes as a WS request (rid, key, payload),
// echoed over plain TCP sockets of Node's own, no framing, no JSON, no Grenache API; driven by
// the same harness (one promise per round trip). `sockets` echo servers (3 for the map floor:
// one write to each, the round trip ends with the last echo), in one process or in a child.
const echoServers = (n) => `let left = ${n}; const ports = []; for (let i = 0; i < ${n}; i++) require('net').createServer((s) => { s.setNoDelay(true); s.on('data', (d) => s.write(d)) }).listen(0, '127.0.0.1', function () { ports.push(this.address().port); if (--left === 0) console.log(ports.join(' ')) }); process.stdin.on('end', () => process.exit(0)); process.stdin.resume()`
async function floorRow (twoProcesses, sockets = 1) {
  let ports
  let stop
  if (twoProcesses) {
    const p = spawn(process.execPath, ['-e', echoServers(sockets)], { stdio: ['pipe', 'pipe', 'inherit'] })
    ports = (await new Promise((resolve) => readline.createInterface({ input: p.stdout }).once('line', resolve))).split(' ').map(Number)
    stop = () => p.stdin.end()
  } else {
    const srvs = []
    for (let i = 0; i < sockets; i++) {
      const srv = net.createServer((s) => { s.setNoDelay(true); s.on('data', (d) => s.write(d)) })
      await new Promise((resolve) => srv.listen(0, '127.0.0.1', resolve))
      srvs.push(srv)
    }
    ports = srvs.map((x) => x.address().port)
    stop = () => { for (const x of srvs) x.close() }
  }
  const msg = Buffer.from(JSON.stringify(['3d5e8f8e-6a3b-4c7e-9f3a-2b1d0c9e8f7a', 'bench:ours:1:ws', 'hello']))
  let pending = null
  let left = 0
  const conns = []
  for (const port of ports) {
    const c = net.connect(port, '127.0.0.1')
    await new Promise((resolve) => c.once('connect', resolve))
    c.setNoDelay(true)
    c.on('data', () => { if (--left === 0) { const p = pending; pending = null; if (p) p() } })
    conns.push(c)
  }
  const ask = () => new Promise((resolve) => { pending = resolve; left = conns.length; for (const c of conns) c.write(msg) })
  for (let i = 0; i < 100; i++) await ask()
  const r = await rate(ask, 1)
  for (const c of conns) c.destroy()
  stop()
  return r
}

async function main () {
  const { Grape } = IMPLS.ours()
  const [a1, a2] = [await freePort(), await freePort()]
  const g1 = new Grape({ dht_port: 0, api_port: a1 })
  await cb2p((cb) => g1.start(cb))
  const g2 = new Grape({ dht_port: 0, api_port: a2, dht_bootstrap: [`127.0.0.1:${g1.dht_port}`] })
  await cb2p((cb) => g2.start(cb))
  const url1 = `http://127.0.0.1:${a1}`
  const url2 = `http://127.0.0.1:${a2}`
  const results = { ours: {}, reference: {} }
  for (const mode of ['one process', 'two processes']) {
    if (ONLY && (ONLY.has('1') || ONLY.has('2')) && !ONLY.has(mode === 'one process' ? '1' : '2')) continue
    for (const impl of ['reference', 'ours']) {
      console.error(`${impl}, ${mode}...`)
      const tag = `${impl}:${mode === 'one process' ? 1 : 2}`
      const servers = mode === 'one process' ? await startServers(impl, url1, tag) : await childServers(impl, url1, tag)
      const rows = await clientRows(impl, url2, servers, tag)
      await servers.stop()
      for (const [k, v] of Object.entries(rows)) results[impl][`${k}|${mode}`] = v
      await sleep(300)
    }
  }
  if (wanted('grape')) for (const impl of ['reference', 'ours']) results[impl]['grape|one process'] = await grapeLookupRow(impl)
  const floors = {}
  if (wanted('ws', 'floor')) {
    for (const mode of ['one process', 'two processes']) {
      if (ONLY && (ONLY.has('1') || ONLY.has('2')) && !ONLY.has(mode === 'one process' ? '1' : '2')) continue
      floors[mode] = await floorRow(mode === 'two processes')
      floors[`${mode}|map`] = await floorRow(mode === 'two processes', 3)
    }
  }
  await cb2p((cb) => g2.stop(cb))
  await cb2p((cb) => g1.stop(cb))

  const labels = {
    'http seq': 'HTTP RPC, sequential (req/s)',
    'http 100': 'HTTP RPC, 100 in flight (req/s)',
    'http map': 'HTTP map over 3 workers (maps/s)',
    'ws seq': 'WS RPC, sequential (req/s)',
    'ws 100': 'WS RPC, 100 in flight (req/s)',
    'ws map': 'WS map over 3 workers (maps/s)',
    'pubsub 10': 'PUB/SUB to 10 subscribers (deliveries/s)',
    'pubsub 100': 'PUB/SUB to 100 subscribers (deliveries/s)',
    grape: 'Grape lookup through the Grape class (lookups/s)'
  }
  console.log('\n| row | processes | grenache-native | reference | ratio |')
  console.log('|---|---|---:|---:|---:|')
  for (const key of Object.keys(results.ours)) {
    const [row, mode] = key.split('|')
    const o = results.ours[key]
    const r = results.reference[key]
    console.log(`| ${labels[row]} | ${mode === 'one process' ? 1 : 2} | ${o.toFixed(0)} | ${r.toFixed(0)} | ${(o / r).toFixed(2)}x |`)
  }
  for (const [key, f] of Object.entries(floors)) {
    const [mode, map] = key.split('|')
    const row = map ? 'ws map' : 'ws seq'
    const o = results.ours[`${row}|${mode}`]
    const r = results.reference[`${row}|${mode}`]
    const share = (v) => (v === undefined ? '-' : `${(v / f).toFixed(2)}x`)
    const what = map ? 'to 3 sockets at once, sequential (rounds/s)' : 'sequential (round trips/s)'
    console.log(`| floor: TCP echo of the same bytes on Node's sockets, ${what} | ${mode === 'one process' ? 1 : 2} | ${f.toFixed(0)} | | ${map ? 'WS map' : 'WS seq'}: ours ${share(o)}, reference ${share(r)} of it |`)
  }
  process.exit(0)
}

if (process.argv[2] === '--serve') serveMain(process.argv[3], process.argv[4], process.argv[5])
else main().catch((e) => { console.error(e); process.exit(1) })
