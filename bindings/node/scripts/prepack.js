// npm prepack: the tarball must carry the linux-x64 addon under napi-rs's per-platform name.
// `npm run build` (release) or `npm run build:debug` puts it there.
'use strict'
const fs = require('fs')
const path = require('path')
const f = path.join(__dirname, '..', 'grenache.linux-x64-gnu.node')
if (!fs.existsSync(f)) {
  console.error('grenache-native: grenache.linux-x64-gnu.node is missing: run `npm run build` first')
  process.exit(1)
}
