# frozen_string_literal: true

# Run by ffi/tests/ruby_examples.rs against two Node Grapes (with an ed25519 verifier):
# announce/lookup across Grapes, immutable put/get, mutable put/get with salt, seq and cas.
#   ruby link_dht.rb GRAPE_URL_1 GRAPE_URL_2
require_relative '../../lib/grenache'

url1, url2 = ARGV
a = Grenache::Link.new(url1)
b = Grenache::Link.new(url2, request_timeout_ms: 5000, lookup_cache_ttl_ms: 0)
check = lambda do |what, ok|
  puts "#{ok ? 'ok' : 'FAIL'} #{what}"
  $stdout.flush
  exit 1 unless ok
end
def eventually
  deadline = Time.now + 30
  begin
    yield
  rescue Grenache::Error
    raise if Time.now > deadline

    sleep 0.2
    retry
  end
end

begin
  b.lookup('ruby_dht_test')
  check.call('lookup before announce raised', false)
rescue Grenache::LookupEmptyError
  check.call('lookup before announce -> LookupEmptyError', true)
end

a.start_announcing('ruby_dht_test', 4242, interval: 0.5)
peers = eventually { b.lookup('ruby_dht_test') }
check.call("lookup -> #{peers.inspect}", peers.any? { |p| p.end_with?(':4242') })
check.call('stop_announcing -> true', a.stop_announcing('ruby_dht_test', 4242) == true)
check.call('stop_announcing again -> false', a.stop_announcing('ruby_dht_test', 4242) == false)
a.announce('ruby_dht_once', 4343)
check.call('announce once', eventually { b.lookup('ruby_dht_once') }.any? { |p| p.end_with?(':4343') })

hash = a.put('hello from ruby')
check.call("put -> #{hash}", hash.match?(/\A[0-9a-f]{40}\z/))
item = eventually { b.get(hash) || raise(Grenache::Error, 306) }
check.call("get -> #{item['v'].inspect}", item['v'] == 'hello from ruby')

key = Grenache::Keypair.generate
same = Grenache::Keypair.from_secret_hex(key.secret_hex)
check.call('keypair round trip', same.public_hex == key.public_hex && key.public_hex.size == 64)
h1 = a.put_mutable(key, 'v1', seq: 1, salt: 'ruby')
check.call('mutable hash is the target', h1 == key.target_hex('ruby'))
a.put_mutable(key, 'v2', seq: 2, salt: 'ruby', cas: 1)
m = eventually do
  got = b.get(key.target_hex('ruby'), salt: 'ruby')
  got && got['seq'] == 2 ? got : raise(Grenache::Error, 306)
end
check.call("mutable get -> #{m['v']} seq #{m['seq']}", m['v'] == 'v2' && m['k'] == key.public_hex)
begin
  a.put_mutable(key, 'v0', seq: 1, salt: 'ruby')
  check.call('seq too low raised', false)
rescue Grenache::SeqTooLowError, Grenache::CasMismatchError, Grenache::DhtError => e
  check.call("stale seq -> #{e.class}", true)
end
begin
  a.put_mutable(key, 'v3', seq: 3, salt: 'ruby', cas: 1)
  check.call('cas mismatch raised', false)
rescue Grenache::CasMismatchError => e
  check.call("wrong cas -> #{e.class}", e.code == 305)
end
begin
  Grenache::Keypair.from_secret_hex('zz')
  check.call('bad secret raised', false)
rescue Grenache::InvalidArgumentError
  check.call('bad secret -> InvalidArgumentError', true)
end
a.close
b.close
puts 'done'
