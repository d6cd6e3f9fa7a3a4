// grenache-grape on grenache-native: { Grape } of grenache-grape.
'use strict'
module.exports = require('./resolve')('grape')
