// Many bare bittorrent-dht 10.0.0 nodes (what Node Grapes run) in ONE process, wired as a chain
// (node i bootstraps from node i-1 only), for the DHT maintenance benchmark.
// Usage: node dht_maint_net.js <n>
// Prints {"event":"started","ports":[..]} once every node is listening and ready, then answers
// JSON commands on stdin, one per line:
//   {"cmd":"count"}  -> {"sent":N,"nodes":[table sizes]}   (datagrams sent by all nodes so far)
//   {"cmd":"probe","services":20}  -> {"found":F}   (service i announced through node i*7 % n,
//                                                     looked up through node (i*7 + n/2) % n)
// Exits when stdin closes.
'use strict'
const readline = require('readline')
const DHT = require('bittorrent-dht')

const n = Number(process.argv[2] || '10')
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n')

let sent = 0
const nodes = []

function countSends (dht) {
  // k-rpc -> k-rpc-socket -> dgram socket: count every datagram this node sends
  const sock = dht._rpc.socket.socket
  const send = sock.send
  sock.send = function () {
    sent++
    return send.apply(this, arguments)
  }
}

function startNode (i, cb) {
  const bootstrap = i === 0 ? [] : [`127.0.0.1:${nodes[i - 1].address().port}`]
  const dht = new DHT({ bootstrap, maxAge: 120000 })
  countSends(dht)
  let done = false
  const finish = () => { if (!done) { done = true; cb() } }
  dht.listen(0, '127.0.0.1', () => {
    nodes[i] = dht
    dht.once('ready', finish)
    setTimeout(finish, 5000)
  })
}

function startAll (i) {
  if (i === n) {
    out({ event: 'started', ports: nodes.map((d) => d.address().port) })
    return
  }
  startNode(i, () => startAll(i + 1))
}
startAll(0)

function hexName (name) { return Buffer.from(name, 'utf8').toString('hex') }

function probe (services, cb) {
  let pending = services
  const names = []
  for (let i = 0; i < services; i++) names.push(`maint:probe:${i}`)
  names.forEach((name, i) => {
    nodes[(i * 7) % n].announce(hexName(name), 9000 + i, () => {
      if (--pending === 0) lookups()
    })
  })
  function lookups () {
    let left = services
    let found = 0
    names.forEach((name, i) => {
      const via = nodes[(i * 7 + Math.floor(n / 2)) % n]
      let hit = false
      const ih = Buffer.from(name, 'utf8')
      const onpeer = (peer, infoHash) => {
        if (Buffer.from(infoHash).equals(ih) && peer.port === 9000 + i) hit = true
      }
      via.on('peer', onpeer)
      via.lookup(hexName(name), () => {
        setImmediate(() => {
          via.removeListener('peer', onpeer)
          if (hit) found++
          if (--left === 0) cb(found)
        })
      })
    })
  }
}

const rl = readline.createInterface({ input: process.stdin })
rl.on('line', (line) => {
  let c
  try { c = JSON.parse(line) } catch (e) { return }
  if (c.cmd === 'count') {
    out({ sent, nodes: nodes.map((d) => d.nodes.count()) })
  } else if (c.cmd === 'probe') {
    probe(c.services || 20, (found) => out({ found }))
  }
})
rl.on('close', () => {
  nodes.forEach((d) => d.destroy())
  process.exit(0)
})
