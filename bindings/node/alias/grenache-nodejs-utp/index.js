// grenache-nodejs-utp on grenache-native: { PeerRPCClient, PeerRPCServer, TransportRPCClient, TransportRPCServer } of grenache-nodejs-utp.
'use strict'
module.exports = require('./resolve')('utp')
