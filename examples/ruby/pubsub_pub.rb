# frozen_string_literal: true

# pubsub_pub.rb: a publisher. Announces "pubsub_test", waits for a subscriber, then publishes
# COUNT text messages "hello N", each followed by a binary frame (bytes 0x00 0xFF N), and exits.
# A verify_client hook logs each subscriber before accepting it. With SUBSCRIBERS, waits for that
# many subscribers before publishing (default 1).
#   ruby pubsub_pub.rb GRAPE_URL [COUNT [SUBSCRIBERS]]
require_relative '../../bindings/ruby/lib/grenache'

grape = ARGV[0] || 'http://127.0.0.1:30001'
count = (ARGV[1] || '10').to_i
wanted = (ARGV[2] || '1').to_i

link = Grenache::Link.new(grape)
hook = lambda do |info|
  puts "subscriber from #{info.remote_addr} on #{info.path}"
  $stdout.flush
  true
end
pub = Grenache::Publisher.new(link, verify_client: hook)
pub.start_announcing('pubsub_test', interval: 1)
puts "publishing on #{pub.port}"
$stdout.flush

deadline = Time.now + 60
sleep 0.05 while pub.subscribers < wanted && Time.now < deadline
abort "#{pub.subscribers} subscriber(s) within 60 s, expected #{wanted}" if pub.subscribers < wanted

sent = 0
count.times do |i|
  sent += 1 if pub.publish("hello #{i}").positive?
  pub.publish_binary([0x00, 0xFF, i].pack('C*'))
  sleep 0.05
end
puts "published #{sent}"
sleep 0.5 # let the frames reach the wire
pub.close
link.close
