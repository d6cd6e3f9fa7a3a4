# frozen_string_literal: true

# rpc_server.rb: the rpc_test worker in Ruby: answers "hello" with "world", anything else with
# the error ERR_UNKNOWN_REQUEST.
#   ruby rpc_server.rb GRAPE_URL [MAX_REQUESTS [http|ws]]
# Prints "listening PORT" once announced; after MAX_REQUESTS answers (default: 10 minutes) it shuts
# down gracefully (the last replies reach the wire) and exits.
require_relative 'grenache'

grape = ARGV[0] || 'http://127.0.0.1:30001'
max = (ARGV[1] || '0').to_i
transport = ARGV[2] == 'ws' ? :ws : :http
answered = Queue.new

rt = Grenache::Runtime.new
link = Grenache::Link.new(rt, grape)
server = Grenache::Server.new(link, transport: transport) do |payload, _key, _fingerprint|
  answered << true
  payload == '"hello"' ? [nil, '"world"'] : ['ERR_UNKNOWN_REQUEST', nil]
end
server.announce('rpc_test')
puts "listening #{server.port}"
$stdout.flush

deadline = Time.now + 600
n = 0
while (max.zero? || n < max) && Time.now < deadline
  begin
    answered.pop(true)
    n += 1
  rescue ThreadError
    sleep 0.01
  end
end
puts "answered #{n}"
puts "shutdown: #{server.shutdown(5000) ? 'drained' : 'cut off'}"
server.close
link.close
rt.close
exit(max.positive? && n < max ? 1 : 0)
