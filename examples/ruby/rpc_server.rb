# frozen_string_literal: true

# rpc_server.rb: the rpc_test worker in Ruby: answers "hello" with "world", "raise" by raising a
# Ruby exception (the caller gets ERR_HANDLER_PANIC, the server goes on), anything else with the
# error ERR_UNKNOWN_REQUEST.
#   ruby rpc_server.rb GRAPE_URL [MAX_REQUESTS [http|ws]]
# Prints "listening PORT" once announced; exits after MAX_REQUESTS answers (default: 10 minutes).
require_relative '../../bindings/ruby/lib/grenache'

grape = ARGV[0] || 'http://127.0.0.1:30001'
max = (ARGV[1] || '0').to_i
transport = (ARGV[2] || 'http').to_sym
answered = Queue.new

link = Grenache::Link.new(grape)
server = Grenache::Server.new(link, transport: transport) do |payload, request|
  answered << request.key
  case payload
  when 'hello' then 'world'
  when 'raise' then raise 'a bug in the handler' # answered ERR_HANDLER_PANIC
  else raise Grenache::ReplyError, 'ERR_UNKNOWN_REQUEST'
  end
end
server.announce('rpc_test')
server.start_announcing('rpc_test', interval: 1)
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
# Graceful: stop announcing and listening, let the last replies reach the wire, then close.
puts "shutdown: #{server.shutdown(grace: 5) ? 'drained' : 'cut off'}"
server.close
link.close
exit(max.positive? && n < max ? 1 : 0)
