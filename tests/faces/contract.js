// The face contract, Node side: the same cases as contract.py, contract.rb and the C ABI's in
// ffi/tests/face_contract.rs, printed as one JSON line each; the test compares the faces' lines.
//   node contract.js REFUSED_PORT
'use strict'
const g = require('../../bindings/node')

const refusedPort = process.argv[2]
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
const kept = []
let second = null

function handler (payload, info) {
  if (payload === 'twice') {
    const reply = info.defer()
    reply.send('first')
    try {
      reply.send('second')
    } catch (e) {
      second = e.name
    }
    return
  }
  if (payload === 'never') return kept.push(info.defer())
  if (payload === 'raise') throw new Error('a bug in the handler')
  return 'world'
}

async function outcome (kase, call) {
  try {
    return { case: kase, result: await call() }
  } catch (e) {
    if (!(e instanceof g.GrenacheError)) throw e
    return { case: kase, code: e.code, name: e.name, message: e.message }
  }
}

const sorted = (o) => Object.fromEntries(Object.entries(o).sort(([a], [b]) => (a < b ? -1 : 1)))

async function main () {
  const link = new g.Link('http://127.0.0.1:1')
  for (const transport of ['http', 'ws']) {
    const server = new g.Server(link, handler, { transport, replyTimeout: 1000 })
    const client = new g.Client(link, { transport })
    const dest = `127.0.0.1:${server.port}`
    const ask = (payload, timeout = 5000) => client.request('contract', payload, { dest, timeout })
    const rows = [await outcome('answers', () => ask('hello'))]
    const row = await outcome('twice', () => ask('twice'))
    for (let i = 0; i < 500 && second === null; i++) await sleep(10)
    row.second = second
    second = null
    rows.push(row)
    rows.push(await outcome('never', () => ask('never')))
    rows.push(await outcome('raises', () => ask('raise')))
    rows.push(await outcome('timeout', () => ask('never', 250)))
    rows.push(await outcome('refused', () => client.request('contract', 'hello', { dest: `127.0.0.1:${refusedPort}`, timeout: 5000 })))
    // A salt over 64 bytes, refused before the Grape is asked.
    rows.push(await outcome('bad_argument', () => link.putMutable(g.Keypair.generate(), 'v', { seq: 1, salt: 's'.repeat(65) })))
    console.log(JSON.stringify({ server_port: server.port }))
    for (const r of rows) console.log(JSON.stringify(sorted({ ...r, transport })))
    client.close()
    server.close()
  }
  link.close()
  process.exit(0)
}

main().catch((e) => { console.error(e); process.exit(1) })
