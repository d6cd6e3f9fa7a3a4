'use strict'
// The libutp side of bench/src/bin/utp_bench.rs: a libutp (npm utp-native 2.5.3) client and echo
// server in this process, over loopback, with the grenache-nodejs-utp message shapes: requests
// [rid, key, payload] answered [rid, null, payload]. Both sides split the stream into JSON texts
// (with 100 in flight libutp splits and coalesces messages; the legacy transport would drop
// those, an echo that did could not be measured). Prints one JSON line: {seq_rps, conc_rps, mbps}.
//   node utp_bench.js [sequential=2000] [rounds=30] [megabytes=5]
const utp = require('utp-native')
const crypto = require('crypto')

const [SEQ, ROUNDS, MB] = [2000, 30, 5].map((d, i) => Number(process.argv[2 + i]) || d)
// A splitter per stream: feed chunks, get whole top-level JSON texts.
function splitter () {
  let buf = ''
  return (chunk) => {
    buf += chunk.toString('utf8')
    const out = []
    let depth = 0; let inStr = false; let esc = false; let start = 0
    for (let i = 0; i < buf.length; i++) {
      const c = buf[i]
      if (inStr) {
        if (esc) esc = false
        else if (c === '\\') esc = true
        else if (c === '"') inStr = false
      } else if (c === '"') inStr = true
      else if (c === '[' || c === '{') { if (depth++ === 0) start = i }
      else if (c === ']' || c === '}') { if (--depth === 0) { out.push(buf.slice(start, i + 1)); start = i + 1 } }
    }
    buf = depth === 0 ? '' : buf.slice(start)
    return out
  }
}

const server = utp()
server.on('connection', (c) => {
  c.on('error', () => {})
  const split = splitter()
  c.on('data', (chunk) => {
    for (const part of split(chunk)) {
      const [rid, , payload] = JSON.parse(part)
      c.write(JSON.stringify([rid, null, payload]))
    }
  })
})
const raw = utp()
raw.on('connection', (c) => {
  c.on('error', () => {})
  c.pipe(c)
})

function listen (s) { return new Promise((resolve) => s.listen(0, () => resolve(s.address().port))) }

async function main () {
  const port = await listen(server)
  const rawPort = await listen(raw)
  const client = utp()
  const conn = client.connect(port, '127.0.0.1')
  const waiting = new Map()
  const split = splitter()
  conn.on('data', (chunk) => {
    for (const part of split(chunk)) {
      const reply = JSON.parse(part)
      const w = waiting.get(reply[0])
      waiting.delete(reply[0])
      if (w) w(reply[2])
    }
  })
  const request = (payload) => new Promise((resolve) => {
    const rid = crypto.randomUUID()
    waiting.set(rid, resolve)
    conn.write(JSON.stringify([rid, 'bench', payload]))
  })
  for (let i = 0; i < 200; i++) await request('hello')
  let t0 = process.hrtime.bigint()
  for (let i = 0; i < SEQ; i++) await request('hello')
  const seq = SEQ / (Number(process.hrtime.bigint() - t0) / 1e9)
  t0 = process.hrtime.bigint()
  for (let r = 0; r < ROUNDS; r++) await Promise.all(Array.from({ length: 100 }, () => request('hello')))
  const conc = (ROUNDS * 100) / (Number(process.hrtime.bigint() - t0) / 1e9)
  // 1 MB echoed MB times over a raw stream.
  const rc = client.connect(rawPort, '127.0.0.1')
  const mb = Buffer.alloc(1 << 20, 'x')
  t0 = process.hrtime.bigint()
  for (let i = 0; i < MB; i++) {
    await new Promise((resolve) => {
      let got = 0
      const onData = (d) => {
        got += d.length
        if (got >= mb.length) {
          rc.removeListener('data', onData)
          resolve()
        }
      }
      rc.on('data', onData)
      rc.write(mb)
    })
  }
  const mbps = MB / (Number(process.hrtime.bigint() - t0) / 1e9)
  process.stdout.write(JSON.stringify({ seq_rps: seq, conc_rps: conc, mbps }) + '\n')
  process.exit(0)
}

main()
