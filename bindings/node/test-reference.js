#!/usr/bin/env node
// Runs the reference packages' own mocha suites against grenache-native: the suites of
// grenache-nodejs-link 1.0.2 (5 tests), grenache-nodejs-http 1.0.2 (30) and grenache-nodejs-ws
// 1.0.0 (2), as shipped in their npm tarballs (tests/interop/node_modules, installed by
// `npm ci` there), each with the package under test, grenache-nodejs-link and grenache-grape
// replaced by the alias packages of alias/ (grenache-native underneath). The suites' fixed ports
// (20001, 20002, 30001, 40001, 1337) are rewritten to free ones; nothing else is changed.
// Mocha runs without --exit: a handle left open by our side makes the run time out.
//
//   node bindings/node/test-reference.js [link] [http] [ws] [types]
// (types: the drop-in modules' TypeScript declarations compile against test/types.ts.)
// Needs the addon built (grenache.node) and npm (installs mocha into test/reference once).
'use strict'

const fs = require('fs')
const os = require('os')
const path = require('path')
const net = require('net')
const { spawnSync } = require('child_process')

const ROOT = __dirname
const INTEROP = path.join(ROOT, '..', '..', 'tests', 'interop', 'node_modules')
const DEPS = path.join(ROOT, 'test', 'reference')
const SUITES = {
  link: { pkg: 'grenache-nodejs-link', tests: 5 },
  http: { pkg: 'grenache-nodejs-http', tests: 30 },
  ws: { pkg: 'grenache-nodejs-ws', tests: 2 }
}
const ALIASES = ['grenache-grape', 'grenache-nodejs-link', 'grenache-nodejs-http', 'grenache-nodejs-ws']
const PORTS = ['20001', '20002', '30001', '40001', '1337']

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

function ensureDeps () {
  if (fs.existsSync(path.join(DEPS, 'node_modules', 'mocha', 'bin', 'mocha.js'))) return
  const cmd = fs.existsSync(path.join(DEPS, 'package-lock.json')) ? 'ci' : 'install'
  const r = spawnSync('npm', [cmd, '--no-audit', '--no-fund', '--loglevel=error'], { cwd: DEPS, stdio: 'inherit' })
  if (r.status !== 0) throw new Error(`npm ${cmd} in ${DEPS} failed`)
}

// A directory laid out like the reference package with its tests, whose node_modules hold the
// aliases (copies: they resolve grenache-native from here) and grenache-native itself (a link).
async function prepare (name, { pkg }) {
  const src = path.join(INTEROP, pkg)
  if (!fs.existsSync(path.join(src, 'test'))) throw new Error(`${src}/test is missing: run \`npm ci\` in tests/interop`)
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), `grenache-ref-${name}-`))
  const dir = path.join(tmp, pkg)
  fs.cpSync(path.join(src, 'test'), path.join(dir, 'test'), { recursive: true })
  fs.writeFileSync(path.join(dir, 'package.json'), JSON.stringify({ name: `${pkg}-suite`, private: true }))
  fs.writeFileSync(path.join(dir, 'index.js'), `module.exports = require('${pkg}')\n`)
  const nm = path.join(tmp, 'node_modules')
  fs.mkdirSync(nm)
  fs.symlinkSync(ROOT, path.join(nm, 'grenache-native'), 'dir')
  for (const a of ALIASES) fs.cpSync(path.join(ROOT, 'alias', a), path.join(nm, a), { recursive: true })
  fs.symlinkSync(path.join(DEPS, 'node_modules', 'async'), path.join(nm, 'async'), 'dir')
  const map = {}
  for (const p of PORTS) map[p] = String(await freePort())
  const re = new RegExp(`\\b(${PORTS.join('|')})\\b`, 'g')
  for (const f of fs.readdirSync(path.join(dir, 'test'))) {
    if (!f.endsWith('.js')) continue
    const file = path.join(dir, 'test', f)
    fs.writeFileSync(file, fs.readFileSync(file, 'utf8').replace(re, (m) => map[m]))
  }
  return { tmp, dir }
}

async function run (name) {
  const suite = SUITES[name]
  const { tmp, dir } = await prepare(name, suite)
  const out = path.join(tmp, 'result.json')
  try {
    const r = spawnSync(process.execPath, [
      path.join(DEPS, 'node_modules', 'mocha', 'bin', 'mocha.js'),
      '--reporter', 'json', '--reporter-option', `output=${out}`
    ], { cwd: dir, stdio: 'inherit', timeout: 300000, killSignal: 'SIGKILL' })
    const res = fs.existsSync(out) ? JSON.parse(fs.readFileSync(out, 'utf8')) : null
    const passes = res ? res.passes.length : 0
    const failures = res ? res.failures : []
    for (const t of res ? res.passes : []) console.log(`  ok   ${suite.pkg}: ${t.fullTitle}`)
    for (const t of failures) console.log(`  FAIL ${suite.pkg}: ${t.fullTitle}\n       ${(t.err && t.err.message) || ''}`)
    const exited = r.error ? `did not exit (${r.error.code || r.error.message})` : `exit ${r.status}`
    const ok = r.status === 0 && !r.error && passes === suite.tests && failures.length === 0
    console.log(`${ok ? 'PASS' : 'FAIL'} ${suite.pkg}: ${passes}/${suite.tests} passed, ${failures.length} failed, mocha ${exited}`)
    return ok
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true })
  }
}

// The drop-in modules' TypeScript declarations: test/types.ts (code using them the way the
// reference is used) must compile with --strict, resolving 'grenache-native/...' through the
// package's "exports".
function types () {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'grenache-types-'))
  try {
    fs.mkdirSync(path.join(tmp, 'node_modules', '@types'), { recursive: true })
    fs.symlinkSync(ROOT, path.join(tmp, 'node_modules', 'grenache-native'), 'dir')
    fs.symlinkSync(path.join(DEPS, 'node_modules', '@types', 'node'), path.join(tmp, 'node_modules', '@types', 'node'), 'dir')
    fs.copyFileSync(path.join(ROOT, 'test', 'types.ts'), path.join(tmp, 'types.ts'))
    const r = spawnSync(process.execPath, [
      path.join(DEPS, 'node_modules', 'typescript', 'bin', 'tsc'),
      '--noEmit', '--strict', '--module', 'node16', '--moduleResolution', 'node16', '--target', 'es2022',
      '--types', 'node', path.join(tmp, 'types.ts')
    ], { cwd: tmp, stdio: 'inherit', timeout: 120000 })
    const ok = r.status === 0
    console.log(`${ok ? 'PASS' : 'FAIL'} TypeScript: test/types.ts against types/*.d.ts`)
    return ok
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true })
  }
}

async function main () {
  const args = process.argv.slice(2)
  const names = args.length ? args.filter((a) => a !== 'types') : Object.keys(SUITES)
  for (const n of names) if (!SUITES[n]) throw new Error(`unknown suite ${n} (link, http, ws, types)`)
  ensureDeps()
  let ok = true
  if (!args.length || args.includes('types')) ok = types() && ok
  for (const n of names) ok = (await run(n)) && ok
  process.exit(ok ? 0 : 1)
}

main().catch((e) => {
  console.error(e)
  process.exit(1)
})
