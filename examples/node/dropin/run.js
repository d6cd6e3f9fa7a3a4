#!/usr/bin/env node
// Runs the grenache-nodejs-http README's own examples (examples/rpc_server.js and
// examples/rpc_client.js of the npm tarball, read from tests/interop/node_modules) on
// grenache-native without changing their code: this folder's package.json maps the old package
// names to the alias packages, installed with `npm install --install-links` (as a user's
// `file:` or `npm:` dependency would be). The examples sit in reference-examples/examples/, so
// that their `require('./../')` finds reference-examples/index.js = require('grenache-nodejs-http').
// Only the Grape URL's port is changed, to the one of the two Grapes this script starts (the
// examples expect 30001). Passes when the client gets all 1000 replies ('world').
//   node examples/node/dropin/run.js
'use strict'

const fs = require('fs')
const path = require('path')
const net = require('net')
const { spawn, spawnSync } = require('child_process')

const HERE = __dirname
const REF = path.join(HERE, '..', '..', '..', 'tests', 'interop', 'node_modules', 'grenache-nodejs-http', 'examples')
const DIR = path.join(HERE, 'reference-examples')

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

async function main () {
  const npm = spawnSync('npm', ['install', '--install-links', '--no-audit', '--no-fund', '--loglevel=error'], { cwd: HERE, stdio: 'inherit' })
  if (npm.status !== 0) throw new Error('npm install failed')

  // The Grapes: grenache-grape's Grape class, i.e. ours through the alias.
  const { Grape } = require(require.resolve('grenache-grape', { paths: [HERE] }))
  const [api1, api2] = [await freePort(), await freePort()]
  const g1 = new Grape({ dht_port: 0, api_port: api1 })
  await new Promise((resolve, reject) => g1.start((e) => (e ? reject(e) : resolve())))
  const g2 = new Grape({ dht_port: 0, api_port: api2, dht_bootstrap: [`127.0.0.1:${g1.dht_port}`] })
  await new Promise((resolve, reject) => g2.start((e) => (e ? reject(e) : resolve())))

  fs.rmSync(DIR, { recursive: true, force: true })
  fs.mkdirSync(path.join(DIR, 'examples'), { recursive: true })
  fs.writeFileSync(path.join(DIR, 'index.js'), "module.exports = require('grenache-nodejs-http')\n")
  for (const f of ['rpc_server.js', 'rpc_client.js']) {
    const code = fs.readFileSync(path.join(REF, f), 'utf8').replace('http://127.0.0.1:30001', `http://127.0.0.1:${api1}`)
    fs.writeFileSync(path.join(DIR, 'examples', f), code)
  }

  const procs = []
  const run = (f) => {
    const p = spawn(process.execPath, [path.join(DIR, 'examples', f)], { stdio: ['ignore', 'pipe', 'inherit'] })
    procs.push(p)
    return p
  }
  let ok = false
  try {
    run('rpc_server.js')
    await new Promise((resolve) => setTimeout(resolve, 1500)) // its first announce
    const client = run('rpc_client.js')
    ok = await new Promise((resolve) => {
      let out = ''
      let worlds = 0
      const timer = setTimeout(() => resolve(false), 60000)
      client.stdout.on('data', (d) => {
        out += d
        const lines = out.split('\n')
        out = lines.pop()
        for (const l of lines) {
          if (l === 'null world') worlds++
          else if (/^\d+$/.test(l) && worlds === 1000) {
            console.log(`rpc_client.js: 1000 replies 'world' in ${l} ms`)
            clearTimeout(timer)
            return resolve(true)
          }
        }
      })
      client.on('exit', (code) => {
        clearTimeout(timer)
        resolve(false)
        if (code) console.error(`rpc_client.js exited with ${code}`)
      })
    })
  } finally {
    for (const p of procs) p.kill()
    await new Promise((resolve) => g2.stop(resolve))
    await new Promise((resolve) => g1.stop(resolve))
    fs.rmSync(DIR, { recursive: true, force: true })
  }
  if (!ok) throw new Error('the reference examples did not run on grenache-native')
  console.log('examples/node/dropin: the reference README examples ran unchanged on grenache-native')
}

main().catch((e) => {
  console.error(e)
  process.exit(1)
})
