// Compiled (not run) by test-reference.js with `tsc --noEmit --strict`: code written the way the
// reference packages are used must type-check against the drop-in modules' declarations, and
// misuse must not (the @ts-expect-error lines fail the compile if they stop being errors).
import { Grape } from 'grenache-native/grape'
import Link = require('grenache-native/link')
import { PeerRPCClient, PeerRPCServer } from 'grenache-native/http'
import * as Ws from 'grenache-native/ws'
import * as Utp from 'grenache-native/utp'
import { PassThrough } from 'stream'

const grape = new Grape({ dht_port: 20001, dht_bootstrap: ['127.0.0.1:20002'], api_port: 30001 })
grape.start((err) => { if (err) throw err })
grape.once('announce', (name: string) => name.length)
grape.lookup('rpc_test', (err, peers) => peers && peers[0].split(':'))
grape.stop()

const link = new Link({ grape: 'http://127.0.0.1:30001' })
link.start().stop()
link.lookup('rpc_test', (err, dests) => dests && dests.length)
link.lookup('rpc_test', {}, (err, dests) => dests)
link.announce('rpc_test', 1337, {}, (err) => err)
link.startAnnouncing('rpc_test', 1337, { interval: 1000 })
link.put({ v: 'hello world' }, (err, hash) => hash && link.get(hash, (e, item) => item && typeof item !== 'string' && item.v))
const cached: string[] | undefined = link.cache.lookup && link.cache.lookup.get('lookup:"rpc_test"')
void cached

const server = new PeerRPCServer(link, { timeout: 300000, disableBuffered: false })
server.init()
const service = server.transport('server').listen(1337)
service.on('request', (rid, key, payload, handler, cert, meta) => {
  if (meta.isStream && meta.infoHeaders) meta.infoHeaders[0].length
  handler.reply(null, { hello: 'world', fp: cert && cert.fingerprint })
  handler.reply(new Error('ERR_NOPE'))
})
service.on('stream', (req, res, meta, handler) => {
  req.pipe(res)
  handler.reply('rid', null, 'ok')
})
const port: number = service.port
void port

const client = new PeerRPCClient(link, { maxActiveKeyDests: 5 })
client.init()
client.request('rpc_test', 'hello', { timeout: 10000, compress: true }, (err, data) => err ? err.message : data)
client.request('rpc_test', 'hello', (err, data) => data)
client.map('rpc_test', 'hello', { timeout: 10000, limit: 2 }, (err, all) => all && all.length)
client.tpool.list('127.0.0.1:1337').length
new PassThrough().pipe(client.stream('rpc_test', { timeout: 10000, headers: { _a: 'upload', _ar: { foo: 'bar' } } }))
// @ts-expect-error map has no 3-argument form
client.map('rpc_test', 'hello', (err: Error | null) => err)
client.stop()

const wsServer = new Ws.PeerRPCServer(link, {
  secure: {
    key: Buffer.from(''),
    cert: Buffer.from(''),
    ca: Buffer.from(''),
    verifyClient: (info, cb) => cb(info.req.socket.getPeerCertificate().fingerprint === 'AA')
  }
})
wsServer.init()
const wsService = wsServer.transport('server').listen(1338)
wsService.on('request', (rid, key, payload, handler, cert) => handler.reply(null, cert ? cert.fingerprint : null))
// @ts-expect-error the DefinitelyTyped listen(service, handler) does not exist
wsServer.listen('svc', () => {})
// Limits against hostile load (an extension): numbers by the core's names.
const limited = new Ws.PeerRPCServer(link, { limits: { max_connections_per_ip: 100, wsIdleTimeoutMs: 60000 } })
limited.init()
// @ts-expect-error limits are numbers
new Ws.PeerRPCServer(link, { limits: { max_connections: 'many' } })
const wsClient = new Ws.PeerRPCClient(link, {})
wsClient.init()
wsClient.request('rpc_test', { a: 1 }, { timeout: 1000 }, (err, data) => data)

const pub = new Ws.PeerPub(link, {})
pub.init()
const pubService = pub.transport('server').listen(1339)
pubService.pub('hello')
const sub = new Ws.PeerSub(link, {})
sub.init()
sub.sub('pub_test', { timeout: 10000 })
sub.on('message', (msg) => typeof msg === 'string' ? msg.length : msg.byteLength)
sub.on('connected', () => {})

// grenache-nodejs-utp's example flows (punch_simple, punch_simple_servers).
const utpServer = new Utp.PeerRPCServer(link, { timeout: 300000 })
utpServer.init()
const utpService = utpServer.transport('server').listen()
utpService.on('request', (rid, key, payload, handler, cert, additional) => handler.reply(null, additional.port))
utpService.on('punch', (other) => utpService.punch(other))
utpServer.punch('fibonacci_consumer')
const utpClient = new Utp.PeerRPCClient(link, { broker: 'grenache_broker', punchTimeout: 3000 })
utpClient.init()
utpClient.transport('client', {}).on('punch', (other) => {
  utpClient.request(other, { length: 10 }, { timeout: 10000 }, (err, data) => data)
})
utpClient.punch('etoro_cris', (err) => { if (err) throw err })
utpClient.punch('etoro_cris', { timeout: 2000 }, (err) => err && err.message)
// @ts-expect-error a punch target is { address, port }
utpService.punch('127.0.0.1')
