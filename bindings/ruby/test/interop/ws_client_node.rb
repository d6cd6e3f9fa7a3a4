# frozen_string_literal: true

# Run by ffi/tests/ruby_examples.rs against the Node reference grenache-nodejs-ws server
# (tests/interop/ws_server.js) announced as NAME: answers, a remote error, a timeout, map.
#   ruby ws_client_node.rb GRAPE_URL NAME
require_relative '../../lib/grenache'

grape, name = ARGV
link = Grenache::Link.new(grape)
client = Grenache::Client.new(link, transport: :ws)
check = lambda do |what, ok|
  puts "#{ok ? 'ok' : 'FAIL'} #{what}"
  $stdout.flush
  exit 1 unless ok
end

answer = nil
200.times do
  answer = client.request(name, 'hello', timeout: 10)
  break
rescue Grenache::LookupEmptyError
  sleep 0.1
end
check.call("hello -> #{answer.inspect}", answer == 'world')

echo = client.request(name, { 'a' => [1, 2.5, nil, true] }, timeout: 10)
check.call("echo -> #{echo.inspect}", echo['from'] == 'node' && echo['payload'] == { 'a' => [1, 2.5, nil, true] })

begin
  client.request(name, 'fail', timeout: 10)
  check.call('fail raised', false)
rescue Grenache::RemoteError => e
  check.call("fail -> #{e.class} #{e.remote_message}", e.remote_message == 'ERR_BOOM' && e.code == 400 &&
                                                          e.is_a?(Grenache::RpcError))
end

begin
  client.request(name, { 'sleep' => 3000, 'v' => 1 }, timeout: 0.3)
  check.call('sleep raised', false)
rescue Grenache::TimeoutError => e
  check.call("sleep -> #{e.class} #{e.code_name}", e.code == 202 && e.is_a?(Grenache::TransportError))
end

future = client.request_async(name, { 'sleep' => 50, 'v' => 'late' }, timeout: 10)
check.call('async -> late', future.value(15) == 'late')

all = client.map(name, 'hello', timeout: 10)
check.call("map -> #{all.inspect}", all == ['world'])

begin
  client.request('nobody_serves_this', 'hello', timeout: 5)
  check.call('lookup empty raised', false)
rescue Grenache::LookupEmptyError => e
  check.call("nobody -> #{e.class}", e.is_a?(Grenache::DiscoveryError))
end

client.close
begin
  client.request(name, 'hello')
  check.call('closed client raised', false)
rescue Grenache::ClosedError
  check.call('closed client -> ClosedError', true)
end
link.close
puts 'done'
