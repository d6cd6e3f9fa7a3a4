// grenache-nodejs-http on grenache-native: { PeerRPCClient, PeerRPCServer } of grenache-nodejs-http.
'use strict'
module.exports = require('./resolve')('http')
