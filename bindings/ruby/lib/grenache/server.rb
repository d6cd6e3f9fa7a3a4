# frozen_string_literal: true

module Grenache
  # What a `verify_client` hook sees of a WebSocket client before its socket is accepted.
  # @!attribute fingerprint [String, nil] SHA-1 fingerprint of its TLS certificate, `"AA:BB:..."`
  # @!attribute remote_addr [String, nil] `"ip:port"`
  # @!attribute path [String, nil] the upgrade request's path (`"/ws"`)
  ClientInfo = Struct.new(:fingerprint, :remote_addr, :path) do
    # @api private
    def self.from_native(info)
      new(Native.grenache_client_info_fingerprint(info)&.dup,
          Native.grenache_client_info_remote_addr(info)&.dup,
          Native.grenache_client_info_path(info)&.dup)
    end
  end

  # The handle to answer one request, exactly once, from any thread, now or later
  # (`grenache_reply`). A second answer raises {AlreadyUsedError} (`ERR_ALREADY_USED`), as in the
  # Python and Node faces. Handlers normally just return a value; take the reply with
  # {Request#defer} to answer later.
  class Reply
    # @api private
    def initialize(ptr)
      @ptr = ptr
      @lock = Mutex.new
    end

    # Answers with `value` (any JSON value).
    # @return [true]
    # @raise [AlreadyUsedError] when already answered
    def reply(value)
      reply_json(Grenache.to_json_text(value))
    end

    # Answers with JSON text.
    # @return [true]
    # @raise [AlreadyUsedError] when already answered
    # @raise [InvalidArgumentError] the text is not JSON (the caller then gets ERR_INVALID_ARGUMENT)
    def reply_json(json)
      take do |p|
        buf, len = Grenache.buffer(json)
        Grenache.check!(Native.grenache_reply_send(p, buf, len))
      end
    end

    # Answers with an error: the caller gets a {RemoteError} with exactly this text.
    # @param message [String] by convention `"ERR_..."`
    # @return [true]
    # @raise [AlreadyUsedError] when already answered
    def error(message)
      take { |p| Grenache.check!(Native.grenache_reply_error(p, message.to_s)) }
    end

    # Drops the reply without answering: the caller gets {NoReplyError} at once.
    # @return [true]
    # @raise [AlreadyUsedError] when already answered
    def drop
      take { |p| Native.grenache_reply_free(p) }
    end

    # @return [Boolean] true when nobody waits for the answer any more (the caller went away or
    #   the server's reply timeout fired); the reply must still be answered or dropped
    def closed?
      @lock.synchronize { @ptr.nil? || Native.grenache_reply_is_closed(@ptr) }
    end

    # @return [Boolean] whether it was answered (or dropped)
    def answered?
      @lock.synchronize { @ptr.nil? }
    end

    private

    def take
      p = @lock.synchronize { @ptr.tap { @ptr = nil } }
      raise AlreadyUsedError.new(RESULT[:already_used], 'the request was already answered') unless p

      yield p
      true
    end
  end

  # A request as a handler sees it: copied out of the library, so it may be kept.
  class Request
    # @return [String] the service key (`"rpc_test"`)
    attr_reader :key
    # @return [String] the payload as JSON text
    attr_reader :payload_json
    # @return [Symbol] `:http` or `:ws`
    attr_reader :transport
    # @return [String, nil] the client's `"ip:port"`
    attr_reader :remote_addr
    # @return [String, nil] the SHA-1 fingerprint of the client's TLS certificate (`"AA:BB:..."`)
    attr_reader :fingerprint
    # @return [Reply] the reply handle
    attr_reader :reply

    # @api private
    def self.from_native(req, reply)
      len = FFI::MemoryPointer.new(:size_t)
      key = Native.grenache_request_key(req, len)
      key = key.null? ? '' : key.read_bytes(len.read(:size_t)).force_encoding(Encoding::UTF_8)
      payload = Native.grenache_request_payload(req, len)
      payload = payload.null? ? 'null' : payload.read_bytes(len.read(:size_t)).force_encoding(Encoding::UTF_8)
      transport = Server::TRANSPORTS.key(Native.grenache_request_transport(req)) || :http
      new(key, payload, transport, Native.grenache_request_remote_addr(req)&.dup,
          Native.grenache_request_fingerprint(req)&.dup, Reply.new(reply))
    end

    # @api private
    def initialize(key, payload_json, transport, remote_addr, fingerprint, reply)
      @key = key
      @payload_json = payload_json
      @transport = transport
      @remote_addr = remote_addr
      @fingerprint = fingerprint
      @reply = reply
      @deferred = false
    end

    # @return [Object] the payload as a Ruby value (parsed from {#payload_json})
    def payload
      @payload ||= Grenache.from_json_text(@payload_json)
    end

    # Takes over the reply: the handler's return value is then ignored and the caller waits
    # until {Reply#reply} / {Reply#error} / {Reply#drop} (or its timeout).
    # @return [Reply]
    def defer
      @deferred = true
      @reply
    end

    # @return [Boolean] whether {#defer} was called
    def deferred?
      @deferred
    end
  end

  # @api private
  # Builds grenache_server_options for a server or publisher and frees them after the block.
  module ServerOptions
    # The server limits by name (`:max_connections_per_ip`...) => their C numbers, read from the
    # library (`grenache_server_limit_name`), so the names are the core's.
    LIMITS = (0..).lazy.map { |i| [Native.grenache_server_limit_name(i), i] }
                  .take_while { |name, _| name }.to_h { |name, i| [name.to_sym, i] }.freeze

    def self.with(port: 0, tls: nil, reply_timeout: nil, verify_client: nil, limits: nil)
      opts = Grenache.out_pointer { |o| Grenache.check!(Native.grenache_server_options_new(o)) }
      begin
        (limits || {}).each do |name, value|
          code = LIMITS.fetch(name.to_sym) { raise ArgumentError, "limits: unknown #{name.inspect} (#{LIMITS.keys.join(', ')})" }
          Grenache.check!(Native.grenache_server_options_set_limit(opts, code, Integer(value)))
        end
        Grenache.check!(Native.grenache_server_options_set_port(opts, port))
        Grenache.check!(Native.grenache_server_options_set_tls(opts, tls.ptr)) if tls
        Grenache.check!(Native.grenache_server_options_set_reply_timeout(opts, Grenache.ms(reply_timeout)))
        if verify_client
          raise ArgumentError, 'verify_client must respond to #call' unless verify_client.respond_to?(:call)

          # The FREE callback unregisters the hook, also when this call fails.
          ud = Registry.add(verify_client)
          Grenache.check!(Native.grenache_server_options_set_verify_client(opts, Callbacks::VERIFY, ud,
                                                                          Callbacks::FREE))
        end
        yield opts
      ensure
        Native.grenache_server_options_free(opts)
      end
    end
  end

  # An RPC server over HTTP (grenache-nodejs-http compatible) or WebSocket (grenache-nodejs-ws
  # compatible), plain or TLS (`grenache_server`).
  #
  # The handler block gets `(payload, request)`: the payload as a Ruby value (parsed JSON) and
  # the {Request} (key, transport, remote address, client-certificate fingerprint, reply). Its
  # return value is the answer (any JSON value). `raise Grenache::ReplyError, 'ERR_X'` answers
  # with that error; any other exception is printed and answered `"ERR_HANDLER_PANIC"`: it never
  # reaches the library, and the server keeps serving.
  #
  # Handlers run on Ruby threads of the server's own (`threads:`), never on the library's, so
  # they may block and may make requests themselves.
  #
  # @example
  #   server = Grenache::Server.new(link, transport: :ws) { |payload, req| payload == 'hello' ? 'world' : raise(Grenache::ReplyError, 'ERR_UNKNOWN') }
  #   server.start_announcing('rpc_test')
  class Server < Handle
    # `transport:` values => their C numbers.
    TRANSPORTS = { http: 0, ws: 1, zmq: 2, utp: 3 }.freeze

    # @param link [Link] announces the server
    # @param transport [Symbol] `:http`, `:ws`, `:zmq` (a ZeroMQ ROUTER socket; no TLS) or `:utp`
    #   (uTP on one UDP socket; no TLS)
    # @param port [Integer] 0: any free port (see {#port})
    # @param tls [ServerTls, nil] HTTPS / `wss://`
    # @param reply_timeout [Numeric, nil] seconds after which an unanswered request is answered
    #   `ERR_TIMEOUT` (nil: none)
    # @param verify_client [#call, nil] WebSocket only: gets a {ClientInfo} before a socket is
    #   accepted and returns true to accept it. It runs on the library's callback thread: keep it
    #   quick, never block; an exception refuses the client.
    # @param limits [Hash{Symbol=>Integer}, nil] limits against hostile load by name (durations in
    #   ms): `max_connections`, `max_connections_per_ip`, `header_timeout_ms`, `body_timeout_ms`,
    #   `body_min_rate`, `idle_timeout_ms`, `max_body_in_flight`, `ws_ping_interval_ms`,
    #   `ws_pong_timeout_ms`, `ws_idle_timeout_ms` (see {ServerOptions::LIMITS})
    # @param threads [Integer] Ruby threads running the handler
    # @param raw [Boolean] the handler gets the payload as JSON text and returns JSON text
    # @yieldparam payload [Object] the request's payload (JSON text with `raw: true`)
    # @yieldparam request [Request]
    # @yieldreturn [Object] the answer
    # @raise [IoError] the port could not be bound
    def initialize(link, transport: :http, port: 0, tls: nil, reply_timeout: nil, verify_client: nil, threads: 4,
                   raw: false, limits: nil, &handler)
      super()
      raise ArgumentError, 'a handler block is needed' unless handler

      code = TRANSPORTS.fetch(transport) { raise ArgumentError, "transport: #{transport.inspect} (:http, :ws, :zmq or :utp)" }
      @transport = transport
      @handler = handler
      @raw = raw
      @released = Future.new
      @dispatcher = Dispatcher.new("#{transport} server", threads) { |req| handle(req) }
      ud = Registry.add(self)
      begin
        @ptr = ServerOptions.with(port: port, tls: tls, reply_timeout: reply_timeout, verify_client: verify_client,
                                  limits: limits) do |o|
          Grenache.out_pointer do |out|
            Grenache.check!(Native.grenache_server_new(link.ptr, code, o, Callbacks::HANDLER, ud, Callbacks::FREE, out))
          end
        end
      rescue StandardError
        @dispatcher.close(0)
        raise
      end
    end

    # @return [Symbol] `:http` or `:ws`
    attr_reader :transport

    # @return [Integer] the port it listens on
    def port
      Native.grenache_server_port(ptr)
    end

    # Announces `name` on {#port} once and waits for the Grape's answer.
    # @param timeout [Numeric] seconds
    # @return [nil]
    def announce(name, timeout: 60)
      announce_async(name).value(timeout)
    end

    # {#announce} without waiting.
    # @return [Future] of nil
    def announce_async(name)
      Grenache.start_operation { |ud| Native.grenache_server_announce(ptr, name, Callbacks::DONE, ud) }
    end

    # Keeps announcing `name` on {#port} every `interval` seconds (jittered ±50 %) until
    # {#stop_announcing} or {#close}.
    # @return [nil]
    def start_announcing(name, interval: 1.0)
      Grenache.check!(Native.grenache_server_start_announcing(ptr, name, Grenache.ms(interval)))
      nil
    end

    # @return [Boolean] false when `name` was not being announced
    def stop_announcing(name)
      rc = Native.grenache_server_stop_announcing(ptr, name)
      return false if rc == RESULT[:invalid_state]

      Grenache.check!(rc)
      true
    end

    # Shuts down gracefully, for restarts without failed requests: stops announcing and listening
    # (grenache clients send requests that cannot connect to another worker), lets the requests
    # already received finish and their replies go out, then closes the connections; after
    # `grace` seconds the rest are closed. Call {#close} afterwards.
    # @param grace [Numeric] seconds
    # @return [Boolean] true when every connection finished within `grace`
    def shutdown(grace: 10)
      shutdown_async(grace: grace).value(grace + WAIT_SLACK)
    end

    # {#shutdown} without waiting.
    # @return [Future] of true (every connection finished in time) or false (some were cut off)
    def shutdown_async(grace: 10)
      Grenache.start_operation { |ud| Native.grenache_server_shutdown(ptr, Grenache.ms(grace), Callbacks::BOOL, ud) }
    end

    # Stops announcing and listening (connects to its port are refused from its first step
    # on), lets running handlers finish (at most 5 s), and drops the
    # requests still queued (their callers get {NoReplyError}).
    # @return [nil]
    def close
      p = @close_lock.synchronize { @ptr.tap { @ptr = nil } }
      return nil unless p

      Native.grenache_server_free(p)
      @dispatcher.close(5).each { |req| req.reply.drop }
      @released.wait(5)
      nil
    end

    # @api private
    # From the library's handler callback: copy the request, queue it for a Ruby thread.
    def accept(req, reply)
      request = Request.from_native(req, reply)
      request.reply.drop unless @dispatcher.push(request)
    end

    # @api private
    # From the library's free_userdata callback.
    def released
      @released.complete(OK, nil, nil)
    end

    private

    def handle(request)
      payload = @raw ? request.payload_json : request.payload
      result = if @handler.lambda? && @handler.arity == 1
                 @handler.call(payload)
               else
                 @handler.call(payload, request)
               end
      return if request.deferred?

      @raw ? request.reply.reply_json(result.to_s) : request.reply.reply(result)
    rescue ReplyError => e
      request.reply.error(e.message) unless request.reply.answered?
    rescue Exception => e # rubocop:disable Lint/RescueException
      Grenache.report_callback_error(e, "handler of #{request.key}")
      begin
        request.reply.error('ERR_HANDLER_PANIC') unless request.reply.answered?
      rescue Exception # rubocop:disable Lint/RescueException
        nil
      end
    end

    def free_handle(_p); end
  end
end
