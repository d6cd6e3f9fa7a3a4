# frozen_string_literal: true

require_relative 'lib/grenache/version'

Gem::Specification.new do |s|
  s.name = 'grenache-native'
  s.version = Grenache::VERSION
  s.summary = 'Grenache (DHT microservices: Grapes, RPC over HTTP/WS, PUB/SUB, BEP44) over libgrenache'
  s.description = 'Ruby bindings for grenache-rs through its C ABI (libgrenache) and the ffi gem: ' \
                  'Grapes, Links, RPC servers and clients over HTTP(S) and WebSocket (WSS), ' \
                  'PUB/SUB, DHT put/get. Wire-compatible with the Node.js reference.'
  s.authors = ['grenache-rs contributors']
  s.license = 'MIT'
  s.files = Dir['lib/**/*.rb'] + ['README.md']
  s.require_paths = ['lib']
  s.homepage = 'https://example.invalid/grenache-rs'
  s.required_ruby_version = '>= 2.7'
  # The C library is not in the gem: it is found at require time through GRENACHE_LIB,
  # pkg-config (grenache.pc) or the loader's path (libgrenache.so.1); see lib/grenache/native.rb.
  s.requirements << 'libgrenache.so.1 (the grenache-rs C library: Debian package grenache, or scripts/install-c.sh)'
  s.add_runtime_dependency 'ffi', '~> 1.15'
  s.add_development_dependency 'minitest', '~> 5'
  s.metadata['rubygems_mfa_required'] = 'true'
end
