#!/usr/bin/env node
// The package as npm users get it: `npm pack` here, `npm install ./grenache-native-*.tgz` into an
// empty directory, then `require('grenache-native')` and every subpath (/grape, /link, /http,
// /ws) work there, an RPC round trip included (two Grapes, a server and a client of
// grenache-native/http). Needs grenache.linux-x64-gnu.node (npm run build, or the debug build
// copied there). Temp directories are removed whatever happens.
//   node bindings/node/test-pack.js
'use strict'

const fs = require('fs')
const os = require('os')
const path = require('path')
const { spawnSync } = require('child_process')

const ROOT = __dirname

function sh (cmd, args, cwd) {
  const r = spawnSync(cmd, args, { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'], timeout: 300000 })
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} (in ${cwd}) failed: ${r.status} ${r.error || ''}`)
  return r.stdout
}

const USE = `
'use strict'
const assert = require('assert')
const native = require('grenache-native')
assert.equal(typeof native.version(), 'string')
const { Grape } = require('grenache-native/grape')
const Link = require('grenache-native/link')
const { PeerRPCServer, PeerRPCClient } = require('grenache-native/http')
const ws = require('grenache-native/ws')
for (const k of ['PeerRPCClient', 'PeerRPCServer', 'PeerPub', 'PeerSub', 'TransportRPCServer', 'TransportRPCClient']) assert.equal(typeof ws[k], 'function', k)
const net = require('net')
const free = () => new Promise((resolve) => { const s = net.createServer().listen(0, () => { const p = s.address().port; s.close(() => resolve(p)) }) })
;(async () => {
  const g1 = new Grape({ dht_port: 0, api_port: await free() })
  await new Promise((resolve, reject) => g1.start((e) => e ? reject(e) : resolve()))
  const g2 = new Grape({ dht_port: 0, api_port: await free(), dht_bootstrap: ['127.0.0.1:' + g1.dht_port] })
  await new Promise((resolve, reject) => g2.start((e) => e ? reject(e) : resolve()))
  const link = new Link({ grape: 'http://127.0.0.1:' + g1.conf.api_port }).start()
  const srv = new PeerRPCServer(link, {}); srv.init()
  const t = srv.transport('server').listen(0)
  t.on('request', (rid, key, payload, h) => h.reply(null, payload + ' world'))
  await new Promise((resolve, reject) => link.announce('pack:test', t.port, {}, (e) => e ? reject(e) : resolve()))
  const c = new PeerRPCClient(link, {}); c.init()
  const res = await new Promise((resolve, reject) => c.request('pack:test', 'hello', { timeout: 10000 }, (e, r) => e ? reject(e) : resolve(r)))
  assert.equal(res, 'hello world')
  c.stop(); t.stop(); link.stop()
  await new Promise((resolve) => g2.stop(resolve))
  await new Promise((resolve) => g1.stop(resolve))
  console.log('installed grenache-native: every subpath loads, RPC round trip ok')
})().catch((e) => { console.error(e); process.exit(1) })
`

function main () {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'grenache-pack-'))
  try {
    const packed = JSON.parse(sh('npm', ['pack', '--json', '--pack-destination', tmp], ROOT))[0]
    const names = packed.files.map((f) => f.path)
    for (const must of ['grenache.linux-x64-gnu.node', 'lib/http.js', 'lib/utp.js', 'types/ws.d.ts', 'types/utp.d.ts', 'alias/grenache-nodejs-http/index.js', 'alias/grenache-nodejs-utp/index.js']) {
      if (!names.includes(must)) throw new Error(`the tarball lacks ${must}`)
    }
    console.log(`npm pack: ${packed.filename}, ${packed.files.length} files, ${(packed.size / 1e6).toFixed(1)} MB`)
    const app = path.join(tmp, 'app')
    fs.mkdirSync(app)
    fs.writeFileSync(path.join(app, 'package.json'), JSON.stringify({ name: 'app', private: true }))
    sh('npm', ['install', '--no-audit', '--no-fund', '--loglevel=error', path.join(tmp, packed.filename)], app)
    fs.writeFileSync(path.join(app, 'use.js'), USE)
    const r = spawnSync(process.execPath, ['use.js'], { cwd: app, stdio: 'inherit', timeout: 60000, killSignal: 'SIGKILL' })
    if (r.status !== 0) throw new Error(`using the installed package failed (${r.status}${r.error ? ', ' + r.error.message : ''})`)
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true })
  }
}

try {
  main()
} catch (e) {
  console.error(e.message)
  process.exit(1)
}
