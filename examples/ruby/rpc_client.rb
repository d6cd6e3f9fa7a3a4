# frozen_string_literal: true

# rpc_client.rb: sends "hello" to the service rpc_test and expects "world", COUNT times, then
# once to every worker with map, then "bye", which a worker answers with an error.
#   ruby rpc_client.rb GRAPE_URL [COUNT [http|ws]]
require_relative '../../bindings/ruby/lib/grenache'

grape = ARGV[0] || 'http://127.0.0.1:30001'
count = (ARGV[1] || '1').to_i
transport = (ARGV[2] || 'http').to_sym

link = Grenache::Link.new(grape)
client = Grenache::Client.new(link, transport: transport)
failures = 0
count.times do |i|
  result = nil
  300.times do
    result = client.request('rpc_test', 'hello', timeout: 10)
    break
  rescue Grenache::LookupEmptyError
    sleep 0.1 # not announced yet
  end
  if result == 'world'
    puts "rpc_test hello -> #{result.inspect}" if i.zero?
  else
    warn "request #{i}: #{result.inspect}"
    failures += 1
  end
end
all = client.map('rpc_test', 'hello', timeout: 10)
puts "map -> #{all.inspect}"
failures += 1 unless all.is_a?(Array) && !all.empty? && all.all?('world')
begin
  client.request('rpc_test', 'bye', timeout: 10)
  failures += 1
rescue Grenache::RemoteError => e
  puts "rpc_test bye -> #{e.class}: #{e.remote_message}"
end
client.close
link.close
puts "#{failures} failure(s)"
exit(failures.zero? ? 0 : 1)
