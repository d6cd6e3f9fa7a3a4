// A grenache-nodejs-ws 1.0.0 PeerSub for interop tests.
// Usage: node ws_sub.js --grape URL --name NAME
// Subscribes (retrying the lookup until a publisher is found) and prints one JSON line per
// event: {"event":"connected"}, {"event":"message","data":"..."}, {"event":"disconnected"}.
// Exits when stdin closes.
'use strict'
const Link = require('grenache-nodejs-link')
const { PeerSub } = require('grenache-nodejs-ws')

const args = process.argv.slice(2)
const opt = (n, d) => { const i = args.indexOf(n); return i >= 0 ? args[i + 1] : d }
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n')

const link = new Link({ grape: opt('--grape') })
link.start()
const peer = new PeerSub(link, {})
peer.init()
let connected = false
peer.on('connected', () => { connected = true; out({ event: 'connected' }) })
peer.on('disconnected', () => { connected = false; out({ event: 'disconnected' }) })
peer.on('message', (msg) => out({ event: 'message', data: msg.toString() }))
peer.on('error', () => {})
const trySub = () => { if (!connected) peer.sub(opt('--name'), { timeout: 5000 }) }
trySub()
const itv = setInterval(() => { if (connected) clearInterval(itv); else trySub() }, 500)
process.stdin.on('end', () => { peer.stop(); link.stop(); process.exit(0) })
process.stdin.resume()
