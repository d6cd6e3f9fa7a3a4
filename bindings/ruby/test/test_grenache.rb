# frozen_string_literal: true

# Unit and in-process tests of the Ruby binding: a network of two Grapes run by the library
# itself (no Node needed), servers and clients over HTTP(S) and WS(S), PUB/SUB, errors.
#   GRENACHE_LIB=target/debug/libgrenache.so ruby bindings/ruby/test/test_grenache.rb
require 'minitest/autorun'
require 'json'
require 'openssl'
require 'tmpdir'
require 'timeout'
require_relative '../lib/grenache'

# Test certificates, made here with Ruby's openssl: a CA, a server and two client certificates.
module TestPki
  module_function

  def key
    OpenSSL::PKey::RSA.new(2048)
  end

  def cert(subject, key, issuer_cert, issuer_key, ca: false)
    c = OpenSSL::X509::Certificate.new
    c.version = 2
    c.serial = rand(1 << 60)
    c.subject = OpenSSL::X509::Name.parse("/CN=#{subject}")
    c.issuer = issuer_cert ? issuer_cert.subject : c.subject
    c.public_key = key.public_key
    c.not_before = Time.now - 60
    c.not_after = Time.now + 3600
    ef = OpenSSL::X509::ExtensionFactory.new
    ef.subject_certificate = c
    ef.issuer_certificate = issuer_cert || c
    if ca
      c.add_extension(ef.create_extension('basicConstraints', 'CA:TRUE', true))
      c.add_extension(ef.create_extension('keyUsage', 'keyCertSign,cRLSign', true))
    else
      c.add_extension(ef.create_extension('basicConstraints', 'CA:FALSE', true))
      c.add_extension(ef.create_extension('keyUsage', 'digitalSignature,keyEncipherment', true))
      c.add_extension(ef.create_extension('extendedKeyUsage', 'serverAuth,clientAuth'))
      c.add_extension(ef.create_extension('subjectAltName', 'IP:127.0.0.1,DNS:localhost'))
    end
    c.sign(issuer_key || key, OpenSSL::Digest.new('SHA256'))
    c
  end

  def fingerprint(cert)
    OpenSSL::Digest::SHA1.hexdigest(cert.to_der).upcase.scan(/../).join(':')
  end

  def build
    ca_key = key
    ca = cert('test ca', ca_key, nil, nil, ca: true)
    pairs = %w[server alice bob].to_h do |name|
      k = key
      [name, { key: k.to_pem, cert: cert(name, k, ca, ca_key) }]
    end
    { ca: ca.to_pem, **pairs.transform_keys(&:to_sym) }
  end
end

class GrenacheTest < Minitest::Test
  NET = {}

  def self.net
    NET[:net] ||= begin
      g1 = Grenache::Grape.new(host: '127.0.0.1')
      g2 = Grenache::Grape.new(host: '127.0.0.1', bootstrap: ["127.0.0.1:#{g1.dht_port}"])
      Minitest.after_run do
        g2.close
        g1.close
      end
      [g1, g2].each { |g| wait_for_peer(g) }
      { g1: g1, g2: g2 }
    end
  end

  # g1 learns of g2 only when g2's bootstrap query reaches it; until then an announce through g1
  # fails with NoNodesError, whichever test happens to run first.
  def self.wait_for_peer(grape)
    link = Grenache::Link.new(grape.url)
    deadline = Time.now + 10
    begin
      link.announce('test_network_ready', 1, timeout: 5)
    rescue Grenache::NoNodesError
      raise if Time.now > deadline

      sleep 0.05
      retry
    ensure
      link.close
    end
  end

  def self.pki
    NET[:pki] ||= TestPki.build
  end

  def setup
    @net = self.class.net
    @closing = []
  end

  def teardown
    @closing.reverse_each(&:close)
  end

  def keep(obj)
    @closing << obj
    obj
  end

  def link1
    keep(Grenache::Link.new(@net[:g1].url))
  end

  def link2
    keep(Grenache::Link.new(@net[:g2].url, lookup_cache_ttl_ms: 0))
  end

  # Retries while the announce travels through the DHT.
  def eventually(seconds = 20)
    deadline = Time.now + seconds
    begin
      yield
    rescue Grenache::LookupEmptyError
      raise if Time.now > deadline

      sleep 0.05
      retry
    end
  end

  def serve(name, **opts, &handler)
    server = keep(Grenache::Server.new(link1, **opts, &handler))
    server.announce(name)
    server
  end

  def test_version_and_result_codes
    assert_match(/\Agrenache\/\d+\.\d+\.\d+\z/, Grenache.version)
    assert_equal 'ERR_TIMEOUT', Grenache.result_name(202)
    assert_kind_of String, Grenache.result_message(202)
    assert_nil Grenache.result_name(12_345)
    Grenache::ERROR_TABLE.each do |name, parent, code|
      e = Grenache::Error.for(code, 'detail')
      assert_instance_of Grenache.const_get(name), e
      assert_kind_of parent, e
      assert_equal code, e.code
      refute_nil Grenache.result_name(code), name
      assert_equal "detail", e.message
      assert_equal Grenache.result_name(code), e.name
    end
    assert_equal Grenache::RESULT.values.sort, ([0] + Grenache::ERROR_TABLE.map(&:last)).sort
  end

  def test_every_header_function_is_attached
    header = File.read(File.expand_path('../../../include/grenache.h', __dir__))
    names = header.scan(/^[a-z_ ]+\*? ?(grenache_[a-z_0-9]+)\(/).flatten.uniq
    assert_operator names.size, :>=, 80
    missing = names.reject { |n| Grenache::Native.respond_to?(n) }
    assert_empty missing
  end

  def test_keypair
    k = Grenache::Keypair.generate
    assert_match(/\A[0-9a-f]{64}\z/, k.public_hex)
    assert_equal k.public_hex, Grenache::Keypair.from_secret_hex(k.secret_hex).public_hex
    refute_equal k.target_hex, k.target_hex('salt')
    assert_raises(Grenache::InvalidArgumentError) { Grenache::Keypair.from_secret_hex('nothex') }
  end

  def test_bad_arguments
    assert_raises(Grenache::InvalidArgumentError) { Grenache::Link.new('not a url') }
    assert_raises(ArgumentError) { Grenache::Link.new(@net[:g1].url, nope: 1) }
    assert_raises(Grenache::InvalidArgumentError) { Grenache::Link.new(@net[:g1].url, retries: 0) }
    assert_raises(ArgumentError) { Grenache::Server.new(link1, transport: :smtp) { nil } }
    assert_raises(Grenache::InvalidArgumentError) do
      Grenache::Server.new(link1, transport: :http, verify_client: ->(_) { true }) { nil }
    end
    assert_raises(Grenache::CertificateError, Grenache::TlsError) do
      Grenache::ServerTls.new(cert_pem: 'nope', key_pem: 'nope')
    end
  end

  def test_http_request_info_map_and_raw
    serve('t_http') { |payload, req| { 'echo' => payload, 'key' => req.key, 'transport' => req.transport.to_s, 'addr' => req.remote_addr } }
    client = keep(Grenache::Client.new(link2))
    got = eventually { client.request('t_http', [1, 'two', nil], timeout: 5) }
    assert_equal [1, 'two', nil], got['echo']
    assert_equal 't_http', got['key']
    assert_equal 'http', got['transport']
    assert_match(/\A127\.0\.0\.1:\d+\z/, got['addr'])
    assert_equal '{"echo":"x"', client.request_json('t_http', '"x"', timeout: 5)[0, 11]
    assert_equal 1, client.map('t_http', 1, timeout: 5).size
    assert_equal [3], JSON.parse(client.map_json('t_http', '3', timeout: 5)).map { |r| r['echo'] }

    raw = serve('t_raw', raw: true) { |json, _| "[#{json},#{json}]" }
    assert_equal [7, 7], eventually { client.request('t_raw', 7, timeout: 5, dest: "127.0.0.1:#{raw.port}") }
  end

  def test_errors_from_handlers
    serve('t_err', transport: :ws, reply_timeout: 0.2) do |payload, req|
      case payload
      when 'boom' then raise Grenache::ReplyError, 'ERR_BOOM'
      when 'bug' then raise NoMethodError, 'a bug'
      when 'drop' then req.defer.drop
      when 'never' then req.defer
      when 'later'
        r = req.defer
        Thread.new { sleep 0.05; r.reply('done later') }
      else payload
      end
    end
    client = keep(Grenache::Client.new(link2, transport: :ws))
    assert_equal 'x', eventually { client.request('t_err', 'x', timeout: 5) }
    e = assert_raises(Grenache::RemoteError) { client.request('t_err', 'boom', timeout: 5) }
    assert_equal 'ERR_BOOM', e.remote_message
    e = assert_raises(Grenache::RemoteError) { client.request('t_err', 'bug', timeout: 5) }
    assert_equal 'ERR_HANDLER_PANIC', e.remote_message
    assert_equal 'x', client.request('t_err', 'x', timeout: 5), 'the server survives its handler'
    assert_raises(Grenache::Error) { client.request('t_err', 'drop', timeout: 5) }
    assert_raises(Grenache::Error) { client.request('t_err', 'never', timeout: 5) } # reply timeout
    assert_equal 'done later', client.request('t_err', 'later', timeout: 5)
    f = client.request_async('t_err', 'boom', timeout: 5)
    seen = Queue.new
    f.on_done { |v, err| seen << [v, err] }
    assert_raises(Grenache::RemoteError) { f.value(10) }
    assert_instance_of Grenache::RemoteError, seen.pop[1]
  end

  def test_client_timeout_and_lookup_empty
    serve('t_slow') { |s| sleep s; s }
    client = keep(Grenache::Client.new(link2))
    assert_equal 0, eventually { client.request('t_slow', 0, timeout: 5) }
    assert_raises(Grenache::TimeoutError) { client.request('t_slow', 2, timeout: 0.2) }
    assert_raises(Grenache::LookupEmptyError) { client.request('t_nobody', 1, timeout: 2) }
  end

  def test_graceful_shutdown
    %i[http ws].each do |transport|
      client = keep(Grenache::Client.new(link2, transport: transport))
      # A request in flight when the server shuts down is answered before it closes.
      # The handler says when it runs: the shutdown comes while it does.
      started = Queue.new
      server = keep(Grenache::Server.new(link1, transport: transport) { |s| started << s; sleep s; s })
      dest = "127.0.0.1:#{server.port}"
      pending = Thread.new { client.request('any', 0.4, dest: dest, timeout: 10) }
      assert_equal 0.4, Timeout.timeout(20) { started.pop }, transport
      assert server.shutdown(grace: 5), transport
      assert_equal 0.4, pending.value
      assert_raises(Grenache::ConnectError) { client.request('any', 0, dest: dest, timeout: 5) }
      # One that outlives the grace is cut off, and shutdown says so.
      server = keep(Grenache::Server.new(link1, transport: transport) { |s| started << s; sleep s; s })
      cut = Thread.new do
        client.request('any', 3, dest: "127.0.0.1:#{server.port}", timeout: 10)
      rescue Grenache::Error => e
        e
      end
      assert_equal 3, Timeout.timeout(20) { started.pop }, transport
      t0 = Time.now
      refute server.shutdown(grace: 0.2), transport
      assert_operator Time.now - t0, :<, 2
      assert_kind_of Grenache::Error, cut.value
    end
  end

  def test_nested_request_inside_handler
    serve('t_inner') { |x| x * 2 }
    inner = keep(Grenache::Client.new(link1))
    serve('t_outer') { |x| inner.request('t_inner', x, timeout: 5) + 1 }
    client = keep(Grenache::Client.new(link2))
    eventually { client.request('t_inner', 1, timeout: 5) }
    assert_equal 21, eventually { client.request('t_outer', 10, timeout: 5) }
  end

  def test_wss_fingerprint_and_verify_client
    pki = self.class.pki
    alice_fp = TestPki.fingerprint(pki[:alice][:cert])
    seen = Queue.new
    tls = Grenache::ServerTls.new(cert_pem: pki[:server][:cert].to_pem, key_pem: pki[:server][:key],
                                  client_ca_pem: pki[:ca], client_auth: :any)
    hook = lambda do |info|
      seen << info
      info.fingerprint == alice_fp
    end
    serve('t_wss', transport: :ws, tls: tls, verify_client: hook) { |_, req| req.fingerprint }
    alice = keep(Grenache::Client.new(link2, transport: :ws, tls: Grenache::ClientTls.new(
      ca_pem: pki[:ca], cert_pem: pki[:alice][:cert].to_pem, key_pem: pki[:alice][:key]
    )))
    assert_equal alice_fp, eventually { alice.request('t_wss', nil, timeout: 5) }
    info = seen.pop
    assert_equal alice_fp, info.fingerprint
    assert_equal '/ws', info.path
    bob = keep(Grenache::Client.new(link2, transport: :ws, tls: Grenache::ClientTls.new(
      ca_pem: pki[:ca], cert_pem: pki[:bob][:cert].to_pem, key_pem: pki[:bob][:key]
    )))
    assert_raises(Grenache::ClientRefusedError) { bob.request('t_wss', nil, timeout: 5) }
  end

  def test_https_required_client_cert
    pki = self.class.pki
    tls = Grenache::ServerTls.new(cert_pem: pki[:server][:cert].to_pem, key_pem: pki[:server][:key],
                                  client_ca_pem: pki[:ca], client_auth: :required)
    serve('t_https', tls: tls) { |_, req| [req.transport.to_s, req.fingerprint] }
    client = keep(Grenache::Client.new(link2, tls: Grenache::ClientTls.new(
      ca_pem: pki[:ca], cert_pem: pki[:bob][:cert].to_pem, key_pem: pki[:bob][:key]
    )))
    assert_equal ['http', TestPki.fingerprint(pki[:bob][:cert])], eventually { client.request('t_https', 1, timeout: 5) }
    no_cert = keep(Grenache::Client.new(link2, tls: Grenache::ClientTls.new(ca_pem: pki[:ca])))
    assert_raises(Grenache::Error) { no_cert.request('t_https', 1, timeout: 5) }
  end

  def test_pubsub_text_and_binary
    pub = keep(Grenache::Publisher.new(link1))
    pub.start_announcing('t_pub', interval: 0.5)
    sub = keep(Grenache::Subscriber.new(link2, 't_pub'))
    deadline = Time.now + 20
    sleep 0.05 while (pub.subscribers.zero? || sub.publishers.zero?) && Time.now < deadline
    assert_equal 1, pub.subscribers
    assert_equal 1, sub.publishers
    assert_equal 1, pub.publish('héllo')
    assert_equal 1, pub.publish_binary("\x00\xFF\x01".b)
    text = sub.receive(timeout: 10)
    assert_equal 'héllo', text.data
    assert_equal Encoding::UTF_8, text.data.encoding
    refute text.binary?
    assert_match(/:#{pub.port}\z/, text.publisher)
    bin = sub.receive(timeout: 10)
    assert bin.binary?
    assert_equal "\x00\xFF\x01".b, bin.data
    assert_nil sub.receive(timeout: 0.1)
  end

  def test_zmq_and_utp_rpc_and_zmq_pubsub
    %i[zmq utp].each do |transport|
      server = keep(Grenache::Server.new(link1, transport: transport) { |payload, req| [payload, req.transport.to_s] })
      server.start_announcing("t_#{transport}", interval: 0.5)
      client = keep(Grenache::Client.new(link2, transport: transport))
      assert_equal [7, transport.to_s], eventually { client.request("t_#{transport}", 7, timeout: 5) }
    end
    assert_raises(ArgumentError) { Grenache::Client.new(link2, transport: :zmq, broker: 'b') }
    pub = keep(Grenache::Publisher.new(link1, transport: :zmq))
    pub.start_announcing('t_zpub', interval: 0.5)
    sub = keep(Grenache::Subscriber.new(link2, 't_zpub', transport: :zmq))
    deadline = Time.now + 20
    sleep 0.05 while (pub.subscribers.zero? || sub.publishers.zero?) && Time.now < deadline
    assert_equal 1, pub.publish('héllo')
    assert_equal 1, pub.publish_binary("\x00\xFF\x01".b)
    text = sub.receive(timeout: 10)
    assert_equal 'héllo', text.data
    refute text.binary?
    bin = sub.receive(timeout: 10)
    assert bin.binary?
    assert_equal "\x00\xFF\x01".b, bin.data
    assert_raises(ArgumentError) { Grenache::Publisher.new(link1, transport: :http) }
  end

  def test_server_limits_by_name
    assert_equal 10, Grenache::ServerOptions::LIMITS.size
    assert_equal 1, Grenache::ServerOptions::LIMITS[:max_connections_per_ip]
    # One connection per source address: a second keep-alive client from 127.0.0.1 is refused
    # while the first holds its connection.
    server = keep(Grenache::Server.new(link1, limits: { max_connections_per_ip: 1, idle_timeout_ms: 60_000 }) { |p, _| p })
    server.start_announcing('t_limits', interval: 0.5)
    first = keep(Grenache::Client.new(link2))
    assert_equal 1, eventually { first.request('t_limits', 1, timeout: 5) }
    second = keep(Grenache::Client.new(link2))
    assert_raises(Grenache::Error) { second.request('t_limits', 2, timeout: 2) }
    assert_raises(ArgumentError) { Grenache::Server.new(link1, limits: { nope: 1 }) { |p, _| p } }
    assert_raises(Grenache::InvalidArgumentError) { Grenache::Server.new(link1, limits: { max_connections: 0 }) { |p, _| p } }
  end

  def test_grape_events_and_options
    events = Queue.new
    g = keep(Grenache::Grape.new(host: '127.0.0.1', peer_max_age_ms: 60_000, bootstrap: "127.0.0.1:#{@net[:g1].dht_port}"))
    g.on_event { |e| events << e }
    assert_equal :listening, events.pop.kind
    link = keep(Grenache::Link.new(g.url))
    link.announce('t_event', 1234)
    kinds = []
    deadline = Time.now + 10
    until kinds.include?(:announce) || Time.now > deadline
      begin
        kinds << events.pop(true).kind
      rescue ThreadError
        sleep 0.02
      end
    end
    assert_includes kinds, :announce
    assert_raises(ArgumentError) { Grenache::Grape.new(bogus: 1) }
  end

  def test_dht_state_saved_on_close
    Dir.mktmpdir do |dir|
      file = File.join(dir, 'dht.json')
      g = Grenache::Grape.new(host: '127.0.0.1', bootstrap: "127.0.0.1:#{@net[:g1].dht_port}", dht_state: file)
      sleep 1 # the bootstrap walk on loopback takes milliseconds
      g.close
      saved = JSON.parse(File.read(file))
      assert_equal 1, saved['version']
      assert_equal 40, saved['id'].size
      assert(saved['nodes'].any? { |n| n['addr'] == "127.0.0.1:#{@net[:g1].dht_port}" }, saved.inspect)
    end
  end

  def test_facade_and_close
    Grenache.configure { |c| c.grape_address = @net[:g1].url }
    worker = Grenache::Http.new
    worker.listen('t_facade') { |p| "hello #{p}" }
    client = Grenache::Http.new(grape_address: @net[:g2].url, timeout: 5)
    assert_equal 'hello world', eventually { client.request('t_facade', 'world') }
    refute_empty client.lookup('t_facade')
    client.stop
    worker.stop
    assert_raises(Grenache::ClosedError) { client.link.lookup('t_facade') }
    client.stop # idempotent parts
  end

  def test_no_registry_leak
    before = Grenache::Registry.size
    3.times do |i|
      l = Grenache::Link.new(@net[:g1].url)
      s = Grenache::Server.new(l, transport: i.even? ? :ws : :http, verify_client: i.even? ? ->(_) { true } : nil) { 1 }
      c = Grenache::Client.new(l, transport: s.transport)
      assert_equal 1, c.request('x', nil, dest: "127.0.0.1:#{s.port}", timeout: 5)
      f = c.request_async('x', nil, dest: '127.0.0.1:1', timeout: 5)
      sub = Grenache::Subscriber.new(l, 'nobody_publishes') { nil }
      sub.close
      c.close
      assert_raises(Grenache::Error) { f.value(5) }
      s.close
      l.close
    end
    deadline = Time.now + 5
    sleep 0.02 while Grenache::Registry.size > before && Time.now < deadline
    assert_equal before, Grenache::Registry.size
  end
end
