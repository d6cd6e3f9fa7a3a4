// What the loop transport tests share (test/loop.test.js, test/httploop.test.js); no tests here.
'use strict'

const path = require('path')

// The Node reference packages (tests/interop).
const INTEROP = path.join(__dirname, '..', '..', '..', 'tests', 'interop', 'node_modules')

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

// A Link that is never asked anything (the transports get explicit destinations).
const noLink = { lookup () { throw new Error('no lookups here') } }

// One request on transport `t`; resolves { err, res } (never rejects) and throws if the callback
// is called twice.
function ask (t, payload, opts = { timeout: 10000 }) {
  return new Promise((resolve) => {
    let calls = 0
    t.request('k', payload, opts, (err, res) => {
      calls++
      if (calls > 1) throw new Error(`callback called ${calls} times`)
      resolve({ err, res })
    })
  })
}

module.exports = { INTEROP, sleep, noLink, ask }
