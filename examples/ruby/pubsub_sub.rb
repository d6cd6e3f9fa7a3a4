# frozen_string_literal: true

# pubsub_sub.rb: a subscriber. Subscribes to "pubsub_test" and exits 0 once COUNT text messages
# "hello N" and at least one binary frame (starting 0x00 0xFF) arrived (1 after 60 s).
#   ruby pubsub_sub.rb GRAPE_URL [COUNT]
require_relative '../../bindings/ruby/lib/grenache'

grape = ARGV[0] || 'http://127.0.0.1:30001'
count = (ARGV[1] || '10').to_i

link = Grenache::Link.new(grape)
texts = 0
binaries = 0
lock = Mutex.new
sub = Grenache::Subscriber.new(link, 'pubsub_test') do |msg|
  lock.synchronize do
    if msg.binary?
      binaries += 1 if msg.data.start_with?("\x00\xFF".b)
    elsif msg.data.start_with?('hello ')
      puts "first message from #{msg.publisher}: #{msg.data}" if texts.zero?
      texts += 1
    end
  end
end

deadline = Time.now + 60
sleep 0.02 until lock.synchronize { texts >= count && binaries >= 1 } || Time.now > deadline
sub.close
link.close
puts "received #{texts}"
puts "binary frames #{binaries}"
$stdout.flush
exit(texts >= count && binaries >= 1 ? 0 : 1)
