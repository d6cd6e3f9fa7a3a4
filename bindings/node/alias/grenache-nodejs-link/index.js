// grenache-nodejs-link on grenache-native: the Link class of grenache-nodejs-link.
'use strict'
module.exports = require('./resolve')('link')
