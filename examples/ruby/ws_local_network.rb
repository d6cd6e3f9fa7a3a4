# frozen_string_literal: true

# ws_local_network.rb: a whole Grenache network in one Ruby process, no Node needed: two Grapes
# bootstrapped on each other, a WebSocket worker announced through one, a client looking it up
# through the other (with the reference-style facade Grenache::Ws), then DHT put/get with a
# signed mutable item.
#   ruby ws_local_network.rb
require_relative '../../bindings/ruby/lib/grenache'

g1 = Grenache::Grape.new(host: '127.0.0.1')
g2 = Grenache::Grape.new(host: '127.0.0.1', bootstrap: ["127.0.0.1:#{g1.dht_port}"])
g1.on_event { |e| puts "grape 1: #{e.kind} #{e.detail}" if e.kind == :announce }

# The Grapes meet in the background: until Grape 1 has heard from Grape 2 it has no node to
# announce to (Grenache::NoNodesError). Wait for that before serving.
probe = Grenache::Link.new(g1.url)
100.times do
  probe.announce('probe', 1)
  break
rescue Grenache::NoNodesError
  sleep 0.1
end

worker = Grenache::Ws.new(grape_address: g1.url)
worker.listen('rpc_test') do |payload, req|
  "world (you sent #{payload.inspect} over #{req.transport})"
end

client = Grenache::Ws.new(grape_address: g2.url, timeout: 5)
answer = nil
100.times do
  answer = client.request('rpc_test', 'hello')
  break
rescue Grenache::LookupEmptyError
  sleep 0.1 # the announce is still travelling through the DHT
end
puts "rpc_test -> #{answer}"

key = Grenache::Keypair.generate
client.link.put_mutable(key, 'version 1', seq: 1)
client.link.put_mutable(key, 'version 2', seq: 2, cas: 1)
item = worker.link.get(key.target_hex)
puts "mutable item #{key.target_hex}: #{item['v']} (seq #{item['seq']})"

client.stop
worker.stop
g2.close
g1.close
