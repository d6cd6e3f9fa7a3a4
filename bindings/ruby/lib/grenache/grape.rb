# frozen_string_literal: true

module Grenache
  # One event of a {Grape}.
  # @!attribute kind [Symbol] `:listening`, `:ready`, `:announce` (detail: the name), `:peer`
  #   (detail: `"ip:port"`), `:node`, `:warning` (detail: what), `:lagged` (see dropped), `:other`
  # @!attribute detail [String, nil]
  # @!attribute dropped [Integer] for `:lagged`, how many events were dropped
  GrapeEvent = Struct.new(:kind, :detail, :dropped)

  # A Grape (`grenache_grape`): a DHT node (UDP) plus the HTTP API that Links talk to,
  # wire-compatible with grenache-grape. Start several with each other's {#dht_port} in
  # `bootstrap:` to make a network.
  #
  # @example two Grapes
  #   g1 = Grenache::Grape.new(host: '127.0.0.1')
  #   g2 = Grenache::Grape.new(host: '127.0.0.1', bootstrap: ["127.0.0.1:#{g1.dht_port}"])
  #   link = Grenache::Link.new(g2.url)
  class Grape < Handle
    # Event kinds by their C numbers.
    EVENTS = { 0 => :listening, 1 => :ready, 2 => :announce, 3 => :peer, 4 => :node, 5 => :warning, 6 => :lagged,
               7 => :other }.freeze
    # Numeric options ({#initialize} keywords) => their C numbers.
    # The numeric options by name => their C numbers, read from the library
    # (`grenache_grape_option_name`), so the names are the core's (`GRAPE_OPTION_NAMES`).
    OPTIONS = (0..).lazy.map { |i| [Native.grenache_grape_option_name(i), i] }
                   .take_while { |name, _| name }.to_h { |name, i| [name.to_sym, i] }.freeze

    # Starts the Grape (blocks until both ports are bound, at most 10 s).
    # @param runtime [Runtime]
    # @param bootstrap [Array<String>, String, nil] `"host:port"` DHT addresses of other Grapes
    # @param host [String, nil] the IP address the HTTP API binds to (nil: every IPv4 address)
    # @param dht_state [String, nil] a file that keeps the DHT node's id and routing table across
    #   restarts (read at start, so a restarted Grape rejoins without `bootstrap:`; written at
    #   stop and every minute)
    # @param options [Hash] any of {OPTIONS} (ports: 0 is any free port; `_ms` in milliseconds)
    # @raise [IoError] a port is busy
    def initialize(runtime: Grenache.runtime, bootstrap: nil, host: nil, dht_state: nil, **options)
      super()
      unknown = options.keys - OPTIONS.keys
      raise ArgumentError, "unknown Grape options: #{unknown.join(', ')}" unless unknown.empty?

      @listeners = []
      opts = Grenache.out_pointer { |o| Grenache.check!(Native.grenache_grape_options_new(o)) }
      begin
        options.each { |k, v| Grenache.check!(Native.grenache_grape_options_set(opts, OPTIONS.fetch(k), v), k.to_s) }
        Grenache.check!(Native.grenache_grape_options_set_host(opts, host), 'host') if host
        Grenache.check!(Native.grenache_grape_options_set_dht_state(opts, dht_state.to_s), 'dht_state') if dht_state
        bootstrap = bootstrap.join(',') if bootstrap.is_a?(Array)
        Grenache.check!(Native.grenache_grape_options_set_bootstrap(opts, bootstrap)) if bootstrap
        @ptr = Grenache.out_pointer { |o| Grenache.check!(Native.grenache_grape_start_opts(runtime.ptr, opts, o)) }
      ensure
        Native.grenache_grape_options_free(opts)
      end
    end

    # @return [Integer] the DHT (UDP) port, for other Grapes' `bootstrap:`
    def dht_port
      Native.grenache_grape_dht_port(ptr)
    end

    # @return [Integer] the HTTP API (TCP) port
    def api_port
      Native.grenache_grape_api_port(ptr)
    end

    # @return [String] the URL Links connect to, `"http://127.0.0.1:<api_port>"`
    def url
      "http://127.0.0.1:#{api_port}"
    end

    # Calls the block with each {GrapeEvent}, in order, on a Ruby thread of its own: first
    # `:listening`, then `:ready`, then events as they happen, until {#close}.
    # @yieldparam event [GrapeEvent]
    # @return [self]
    def on_event(&block)
      raise ArgumentError, 'a block is needed' unless block

      listener = EventListener.new(block)
      ud = Registry.add(listener)
      Grenache.check!(Native.grenache_grape_on_event(ptr, Callbacks::GRAPE_EVENT, ud, Callbacks::FREE))
      @listeners << listener
      self
    end

    # Stops the Grape and frees its ports (blocks, at most 10 s).
    # @return [nil]
    def close
      super
      @listeners.each(&:close)
      nil
    end

    private

    def free_handle(p)
      Native.grenache_grape_free(p)
    end

    # @api private
    class EventListener
      def initialize(block)
        @dispatcher = Dispatcher.new('grape events') { |e| block.call(e) }
      end

      def deliver(event)
        @dispatcher.push(event)
      end

      def released
        @dispatcher.close(0)
      end

      def close
        @dispatcher.close(5)
      end
    end
  end
end
