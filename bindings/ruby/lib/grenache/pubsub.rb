# frozen_string_literal: true

module Grenache
  # PUB/SUB `transport:` values => their C numbers (`GRENACHE_TRANSPORT_WS`, `_ZMQ`).
  PUBSUB_TRANSPORTS = { ws: 1, zmq: 2 }.freeze

  # One PUB/SUB message.
  # @!attribute data [String] the bytes (UTF-8 for text frames, binary encoding for binary ones)
  # @!attribute publisher [String] the publisher's `"host:port"`
  # @!attribute binary [Boolean] whether it came as a binary frame
  Message = Struct.new(:data, :publisher, :binary) do
    # @return [Boolean]
    def binary?
      binary
    end

    # @return [String] the data
    def to_s
      data
    end
  end

  # A publisher (the reference's `PeerPub`, `grenache_publisher`): a WebSocket server sending
  # each published message to every connected subscriber. Thread-safe.
  #
  # @example
  #   pub = Grenache::Publisher.new(link)
  #   pub.start_announcing('prices')
  #   pub.publish('{"btc": 1}')   #=> number of subscribers it was queued for
  class Publisher < Handle
    # @param link [Link] announces it
    # @param port [Integer] 0: any free port
    # @param tls [ServerTls, nil] `wss://`
    # @param verify_client [#call, nil] gets a {ClientInfo} per subscriber before its socket is
    #   accepted; returns true to accept (runs on the library's callback thread: never block)
    # @param transport [Symbol] `:ws` or `:zmq` (a ZeroMQ PUB socket: no TLS, no verify_client)
    # @raise [IoError] the port could not be bound
    def initialize(link, port: 0, tls: nil, verify_client: nil, transport: :ws)
      super()
      code = PUBSUB_TRANSPORTS.fetch(transport) { raise ArgumentError, "transport: #{transport.inspect} (:ws or :zmq)" }
      @ptr = ServerOptions.with(port: port, tls: tls, verify_client: verify_client) do |o|
        Grenache.out_pointer { |out| Grenache.check!(Native.grenache_publisher_new_transport(link.ptr, code, o, out)) }
      end
    end

    # @return [Integer] the port it listens on
    def port
      Native.grenache_publisher_port(ptr)
    end

    # Keeps announcing `name` on {#port} every `interval` seconds until {#close}.
    # @return [nil]
    def start_announcing(name, interval: 1.0)
      Grenache.check!(Native.grenache_publisher_start_announcing(ptr, name, Grenache.ms(interval)))
      nil
    end

    # Publishes a UTF-8 text frame.
    # @param text [String]
    # @return [Integer] how many subscribers it was queued for
    def publish(text)
      text = text.to_s.encode(Encoding::UTF_8)
      buf, len = Grenache.buffer(text)
      count = FFI::MemoryPointer.new(:size_t)
      Grenache.check!(Native.grenache_publisher_publish(ptr, buf, len, count))
      count.read(:size_t)
    end

    # Publishes any bytes as one binary frame.
    # @param bytes [String]
    # @return [Integer] how many subscribers it was queued for
    def publish_binary(bytes)
      bytes = bytes.to_s.b
      buf = FFI::MemoryPointer.new(:uint8, [bytes.bytesize, 1].max)
      buf.put_bytes(0, bytes)
      count = FFI::MemoryPointer.new(:size_t)
      Grenache.check!(Native.grenache_publisher_publish_binary(ptr, buf, bytes.bytesize, count))
      count.read(:size_t)
    end

    # @return [Integer] how many subscribers are connected
    def subscribers
      Native.grenache_publisher_subscribers(ptr)
    end

    private

    def free_handle(p)
      Native.grenache_publisher_free(p)
    end
  end

  # A subscription to every publisher announcing a name (the reference's `PeerSub`,
  # `grenache_subscriber`); lost publishers are reconnected and new ones found by lookups every
  # few seconds.
  #
  # With a block, each {Message} goes to it, in order, on a Ruby thread of the subscriber's own
  # (it may block; exceptions are printed and the subscription goes on). Without a block,
  # messages queue up for {#receive}.
  #
  # @example
  #   sub = Grenache::Subscriber.new(link, 'prices') { |msg| puts msg.data }
  class Subscriber < Handle
    # @param link [Link] finds the publishers
    # @param name [String] the publishers' service name
    # @param tls [ClientTls, nil] `wss://`
    # @param transport [Symbol] `:ws` or `:zmq` (ZeroMQ SUB sockets: no TLS; a message that is not
    #   UTF-8 is {Message#binary?})
    # @yieldparam message [Message]
    def initialize(link, name, tls: nil, transport: :ws, &block)
      super()
      code = PUBSUB_TRANSPORTS.fetch(transport) { raise ArgumentError, "transport: #{transport.inspect} (:ws or :zmq)" }
      @name = name
      @released = Future.new
      @inbox = block ? nil : Queue.new
      @dispatcher = Dispatcher.new("subscriber #{name}") { |m| block ? block.call(m) : @inbox << m }
      ud = Registry.add(self)
      begin
        @ptr = Grenache.out_pointer do |o|
          Grenache.check!(Native.grenache_subscriber_new_transport(link.ptr, name, code, tls&.ptr, Callbacks::MESSAGE,
                                                                   ud, Callbacks::FREE, o))
        end
      rescue StandardError
        @dispatcher.close(0)
        raise
      end
    end

    # @return [String] the service name
    attr_reader :name

    # @return [Integer] how many publishers it is connected to
    def publishers
      Native.grenache_subscriber_publishers(ptr)
    end

    # The next message (only without a block).
    # @param timeout [Numeric, nil] seconds (nil: no limit)
    # @return [Message, nil] nil on timeout
    def receive(timeout: nil)
      raise ArgumentError, 'this subscriber has a block' unless @inbox

      deadline = timeout && (Process.clock_gettime(Process::CLOCK_MONOTONIC) + timeout)
      loop do
        return @inbox.pop(true)
      rescue ThreadError
        return nil if deadline && Process.clock_gettime(Process::CLOCK_MONOTONIC) >= deadline

        sleep 0.01
      end
    end

    # Stops the subscription; after it returns no message is delivered any more.
    # @return [nil]
    def close
      p = @close_lock.synchronize { @ptr.tap { @ptr = nil } }
      return nil unless p

      Native.grenache_subscriber_free(p)
      @released.wait(5)
      @dispatcher.close(5)
      nil
    end

    # @api private
    def deliver(message)
      @dispatcher.push(message)
    end

    # @api private
    def released
      @released.complete(OK, nil, nil)
    end
  end
end
