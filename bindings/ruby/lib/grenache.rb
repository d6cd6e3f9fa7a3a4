# frozen_string_literal: true

# Grenache for Ruby over libgrenache's C ABI (include/grenache.h) through the ffi gem: Grapes,
# Links (lookup, announce, DHT put/get with signed mutable items), RPC servers and clients over
# HTTP(S) and WebSocket (WSS), PUB/SUB. Wire-compatible with the Node.js reference.
#
# The library is loaded from `ENV['GRENACHE_LIB']` (a path to libgrenache.so) or the library
# search path. See bindings/ruby/README.md.
module Grenache
end

require_relative 'grenache/version'
require_relative 'grenache/native'
require_relative 'grenache/errors'
require_relative 'grenache/core'
require_relative 'grenache/tls'
require_relative 'grenache/link'
require_relative 'grenache/server'
require_relative 'grenache/client'
require_relative 'grenache/pubsub'
require_relative 'grenache/grape'
require_relative 'grenache/facade'
