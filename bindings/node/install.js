// npm install hook of grenache-native: checks that the native addon loads on this machine. The
// package carries a prebuilt addon for linux-x64 (glibc), `grenache.linux-x64-gnu.node`; elsewhere
// it says what to do instead of failing later with a bare "cannot find module".
'use strict'

try {
  require('./lib/native')
} catch (e) {
  console.warn(`grenache-native: ${e.message.split('\n')[0]}`)
  console.warn('grenache-native: to build the addon from source: install Rust (https://rustup.rs), clone grenache-rs, run `npm run build` in bindings/node, then point GRENACHE_NATIVE_ADDON at the built grenache.node.')
}
