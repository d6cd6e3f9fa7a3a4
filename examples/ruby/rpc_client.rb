# frozen_string_literal: true

# rpc_client.rb: sends "hello" to the service rpc_test and expects "world".
#   ruby rpc_client.rb GRAPE_URL [COUNT [http|ws]]
# Then maps "hello" over every worker and sends "bye" (expects the remote error back).
require_relative 'grenache'

grape = ARGV[0] || 'http://127.0.0.1:30001'
count = (ARGV[1] || '1').to_i
transport = ARGV[2] == 'ws' ? :ws : :http

rt = Grenache::Runtime.new
link = Grenache::Link.new(rt, grape)
client = Grenache::Client.new(link, transport: transport)
failures = 0
count.times do |i|
  result = nil
  300.times do
    result = client.request('rpc_test', '"hello"')
    break
  rescue Grenache::Error => e
    raise unless e.code == Grenache::LOOKUP_EMPTY

    sleep 0.1 # not announced yet
  end
  if result == '"world"'
    puts "rpc_test hello -> #{result}" if i.zero?
  else
    warn "request #{i}: #{result.inspect}"
    failures += 1
  end
end
puts "lookup rpc_test -> #{link.lookup('rpc_test')}"
mapped = client.map('rpc_test', '"hello"')
puts "map rpc_test hello -> #{mapped}"
failures += 1 unless mapped == '["world"]'
begin
  client.request('rpc_test', '"bye"')
  failures += 1
rescue Grenache::Error => e
  puts "rpc_test bye -> #{e.message}"
  failures += 1 unless e.code == Grenache::REMOTE
end
client.close
link.close
rt.close
puts "#{failures} failure(s)"
exit(failures.zero? ? 0 : 1)
