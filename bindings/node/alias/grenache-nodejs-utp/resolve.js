// Loads a subpath of grenache-native: the installed package, or (inside the grenache-native
// source tree, where this alias is linked with `file:`) the package two levels up.
'use strict'
module.exports = (sub) => {
  try {
    return require(`grenache-native/${sub}`)
  } catch (e) {
    if (e.code !== 'MODULE_NOT_FOUND' || !String(e.message).includes(`'grenache-native/${sub}'`)) throw e
    return require(`../../lib/${sub}`)
  }
}
