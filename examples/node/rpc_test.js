// The reference README's `rpc_test` with grenache-native: two Grapes, a worker that answers
// "world" to "hello", a client that finds it through the other Grape (and asks every worker
// with map), then a PUB/SUB round. Everything on free ports in this process.
//   node examples/node/rpc_test.js     (after `npm run build` in bindings/node)
'use strict'
const grenache = require('../../bindings/node')

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

async function main () {
  const g1 = new grenache.Grape()
  const g2 = new grenache.Grape({ bootstrap: [`127.0.0.1:${g1.dhtPort}`] })
  console.log(`grapes: api ${g1.apiPort} and ${g2.apiPort}`)
  const workerLink = new grenache.Link(g1.url)
  const clientLink = new grenache.Link(g2.url)

  const server = new grenache.Server(workerLink, (payload) => {
    if (payload !== 'hello') throw new grenache.ReplyError('ERR_UNKNOWN_REQUEST')
    return 'world'
  }, { transport: 'ws' })
  server.startAnnouncing('rpc_test', 1000)
  const client = new grenache.Client(clientLink, { transport: 'ws' })
  let reply
  for (let i = 0; i < 100 && reply === undefined; i++) {
    try {
      reply = await client.request('rpc_test', 'hello', { timeout: 10000 })
    } catch (e) {
      if (!(e instanceof grenache.LookupEmptyError)) throw e
      await sleep(100) // not announced yet
    }
  }
  console.log('rpc_test hello ->', reply)
  if (reply !== 'world') throw new Error('no reply')
  console.log('map ->', await client.map('rpc_test', 'hello'))
  try {
    await client.request('rpc_test', 'bye')
  } catch (e) {
    console.log('rpc_test bye -> error', e.message)
  }

  const pub = new grenache.Publisher(workerLink)
  pub.startAnnouncing('ticker', 1000)
  let message
  const sub = new grenache.Subscriber(clientLink, 'ticker', (m) => { message = message || m })
  for (let i = 0; i < 200 && !message; i++) {
    pub.publish({ tick: i })
    await sleep(50)
  }
  console.log('subscriber got', message)
  if (!message) throw new Error('no message')

  sub.close(); pub.close(); client.close(); server.close()
  workerLink.close(); clientLink.close()
  await g2.stop(); await g1.stop()
  console.log('rpc_test.js: ok')
}

main().catch((e) => { console.error(e); process.exit(1) })
