# frozen_string_literal: true

# The face contract, Ruby side: the same cases as contract.py, contract.js and the C ABI's in
# ffi/tests/face_contract.rs, printed as one JSON line each; the test compares the faces' lines.
#
#   GRENACHE_LIB=target/debug/libgrenache.so ruby contract.rb REFUSED_PORT

require 'json'
require_relative '../../bindings/ruby/lib/grenache'

refused_port = ARGV.fetch(0)
second = Queue.new
kept = []

handler = proc do |payload, req|
  case payload
  when 'twice'
    reply = req.defer
    reply.reply('first')
    begin
      reply.reply('second')
    rescue Grenache::Error => e
      second << e.name
    end
    nil
  when 'never'
    kept << req.defer
    nil
  when 'raise' then raise 'a bug in the handler'
  else 'world'
  end
end

def outcome(kase)
  { case: kase, result: yield }
rescue Grenache::Error => e
  { case: kase, code: e.code, name: e.name, message: e.message }
end

link = Grenache::Link.new('http://127.0.0.1:1')
%i[http ws].each do |transport|
  server = Grenache::Server.new(link, transport: transport, reply_timeout: 1.0, &handler)
  client = Grenache::Client.new(link, transport: transport)
  dest = "127.0.0.1:#{server.port}"
  ask = ->(payload, timeout = 5.0) { client.request('contract', payload, dest: dest, timeout: timeout) }
  rows = [outcome('answers') { ask.call('hello') }]
  row = outcome('twice') { ask.call('twice') }
  row[:second] = (second.pop(timeout: 5) rescue nil) # rubocop:disable Style/RescueModifier
  rows << row
  rows << outcome('never') { ask.call('never') }
  rows << outcome('raises') { ask.call('raise') }
  rows << outcome('timeout') { ask.call('never', 0.25) }
  rows << outcome('refused') { client.request('contract', 'hello', dest: "127.0.0.1:#{refused_port}", timeout: 5.0) }
  # A salt over 64 bytes, refused before the Grape is asked.
  rows << outcome('bad_argument') { link.put_mutable(Grenache::Keypair.generate, 'v', seq: 1, salt: 's' * 65) }
  puts JSON.generate({ server_port: server.port })
  rows.each { |r| puts JSON.generate(r.merge(transport: transport.to_s).sort.to_h) }
  $stdout.flush
  client.close
  server.close
end
link.close
