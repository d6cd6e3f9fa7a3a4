// grenache-nodejs-ws on grenache-native: { PeerRPCClient, PeerRPCServer, PeerPub, PeerSub, TransportRPCServer, TransportRPCClient } of grenache-nodejs-ws.
'use strict'
module.exports = require('./resolve')('ws')
