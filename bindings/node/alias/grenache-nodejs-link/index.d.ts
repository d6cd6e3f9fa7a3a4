import Link = require('grenache-native/link')
export = Link
