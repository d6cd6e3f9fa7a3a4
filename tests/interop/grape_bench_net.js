// Many Node reference Grapes (grenache-grape 1.0.0) in ONE process, for the Grape benchmark.
// Usage: node grape_bench_net.js <dht ports, comma-separated> <api ports, comma-separated>
// Grape 0 has no bootstrap, Grape 1 bootstraps to 0, later ones to 0 and 1; all use
// host 127.0.0.1. Prints {"event":"started","api_ports":[..],"dht_ports":[..]} once every Grape
// is started and ready (or after 15 s), then exits when stdin closes.
'use strict'
const { Grape } = require('grenache-grape')

const dhtPorts = process.argv[2].split(',').map(Number)
const apiPorts = process.argv[3].split(',').map(Number)
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n')

const grapes = dhtPorts.map((dp, i) => new Grape({
  host: '127.0.0.1',
  dht_port: dp,
  api_port: apiPorts[i],
  dht_bootstrap: dhtPorts.slice(0, Math.min(i, 2)).map((p) => `127.0.0.1:${p}`)
}))

let started = 0
let ready = 0
let done = false
function check () {
  if (done || started < grapes.length || ready < grapes.length) return
  done = true
  out({ event: 'started', api_ports: apiPorts, dht_ports: dhtPorts })
}
setTimeout(() => { ready = grapes.length; check() }, 15000)

grapes.forEach((g) => {
  g.once('ready', () => { ready++; check() })
  g.start((err) => {
    if (err) {
      out({ event: 'error', message: String(err.message) })
      process.exit(1)
    }
    started++
    check()
  })
})
process.stdin.on('end', () => process.exit(0))
process.stdin.resume()
