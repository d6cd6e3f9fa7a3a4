# frozen_string_literal: true

module Grenache
  # Settings of the reference-style facade ({Http}, {Ws}).
  class Configuration
    # @return [String] the Grape API URL (default: `ENV['GRENACHE_GRAPE']` or
    #   `"http://127.0.0.1:30001"`)
    attr_accessor :grape_address
    # @return [Numeric, nil] default request timeout in seconds (nil: 30)
    attr_accessor :timeout
    # @return [Numeric] re-announce interval of {Peer#listen}, seconds
    attr_accessor :announce_interval

    def initialize
      @grape_address = ENV.fetch('GRENACHE_GRAPE', 'http://127.0.0.1:30001')
      @timeout = nil
      @announce_interval = 1.0
    end
  end

  # @return [Configuration] the facade's settings
  def self.config
    @config ||= Configuration.new
  end

  # Changes the facade's settings.
  # @yieldparam config [Configuration]
  def self.configure
    yield config
  end

  # The reference-style face (close to grenache-ruby-http / grenache-ruby-ws): one object with a
  # Link, a lazily created client and the servers it listens with. Use {Http} or {Ws}.
  #
  # @example
  #   Grenache.configure { |c| c.grape_address = 'http://127.0.0.1:30001' }
  #   g = Grenache::Http.new
  #   g.listen('rpc_test', 5001) { |payload| "hello #{payload}" }
  #   g.request('rpc_test', 'world')   #=> "hello world"
  #   g.stop
  class Peer
    # @return [Link]
    attr_reader :link

    # @param grape_address [String] the Grape API URL (default: {Configuration#grape_address})
    # @param tls [ClientTls, nil] for requests
    # @param server_tls [ServerTls, nil] for {#listen}
    # @param timeout [Numeric, nil] default request timeout, seconds
    def initialize(grape_address: Grenache.config.grape_address, tls: nil, server_tls: nil,
                   timeout: Grenache.config.timeout)
      @link = Link.new(grape_address)
      @tls = tls
      @server_tls = server_tls
      @timeout = timeout
      @lock = Mutex.new
      @servers = []
    end

    # Same as {Grenache.configure}.
    def self.configure(&block)
      Grenache.configure(&block)
    end

    # @return [Symbol] the transport of this face
    def transport
      self.class::TRANSPORT
    end

    # Serves `key` on `port` (0: any free port): starts a {Server}, announces it once (waiting
    # for the Grape) and keeps announcing it.
    # @yieldparam payload [Object]
    # @yieldparam request [Request]
    # @yieldreturn [Object] the answer
    # @return [Server]
    def listen(key, port = 0, **server_opts, &handler)
      server = Server.new(@link, transport: transport, port: port, tls: @server_tls, **server_opts, &handler)
      @lock.synchronize { @servers << server }
      server.announce(key)
      server.start_announcing(key, interval: Grenache.config.announce_interval)
      server
    end

    # Sends `payload` to one worker of `key`.
    # @return [Object] the answer
    # @raise [Error] see {Client#request}
    def request(key, payload, timeout: @timeout, **opts)
      client.request(key, payload, timeout: timeout, **opts)
    end

    # Sends `payload` to every worker of `key`.
    # @return [Array] the answers
    def map(key, payload, timeout: @timeout, **opts)
      client.map(key, payload, timeout: timeout, **opts)
    end

    # @return [Array<String>] the `"host:port"` of the workers of `key`
    def lookup(key)
      @link.lookup(key)
    end

    # Announces `key` on `port` once.
    # @return [nil]
    def announce(key, port)
      @link.announce(key, port)
    end

    # Stores a value in the DHT. @return [String] its hash
    def put(value)
      @link.put(value)
    end

    # Reads a DHT item. @return [Hash, nil]
    def get(hash)
      @link.get(hash)
    end

    # The client used by {#request}.
    # @return [Client]
    def client
      @lock.synchronize { @client ||= Client.new(@link, transport: transport, tls: @tls) }
    end

    # Closes the servers, the client and the Link.
    # @return [nil]
    def stop
      servers, client = @lock.synchronize do
        [@servers.dup, @client].tap do
          @servers.clear
          @client = nil
        end
      end
      servers.each(&:close)
      client&.close
      @link.close
      nil
    end
    alias close stop
  end

  # Same as {Peer}: the reference's name for the shared base.
  Base = Peer

  # The HTTP face (grenache-nodejs-http peers).
  class Http < Peer
    TRANSPORT = :http
  end

  # The WebSocket face (grenache-nodejs-ws peers), with PUB/SUB.
  class Ws < Peer
    TRANSPORT = :ws

    # Starts a {Publisher} announcing `key`.
    # @return [Publisher]
    def publisher(key, port = 0, **opts)
      pub = Publisher.new(@link, port: port, tls: @server_tls, **opts)
      pub.start_announcing(key, interval: Grenache.config.announce_interval)
      @lock.synchronize { @servers << pub }
      pub
    end

    # Subscribes to the publishers of `key`.
    # @yieldparam message [Message]
    # @return [Subscriber]
    def subscribe(key, &block)
      sub = Subscriber.new(@link, key, tls: @tls, &block)
      @lock.synchronize { @servers << sub }
      sub
    end
  end
end
