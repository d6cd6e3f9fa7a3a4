# frozen_string_literal: true

module Grenache
  # An RPC client over HTTP (grenache-nodejs-http compatible) or WebSocket (grenache-nodejs-ws
  # compatible; pooled, multiplexed sockets), plain or TLS (`grenache_client`). It finds the
  # workers of a service through a {Link}. Thread-safe.
  #
  # Payloads and results are Ruby values that travel as JSON; the `_json` methods take and give
  # JSON text instead. Blocking methods wait with the GVL released; the `_async` ones return a
  # {Future}.
  #
  # @example
  #   client = Grenache::Client.new(link, transport: :ws)
  #   client.request('rpc_test', 'hello', timeout: 10)   #=> "world"
  #   client.map('rpc_test', 'hello')                    #=> ["world", "world"]
  class Client < Handle
    # The library's default request timeout, in seconds.
    DEFAULT_TIMEOUT = 30.0

    # @param link [Link] finds the workers
    # @param transport [Symbol] `:http`, `:ws`, `:zmq` (ZeroMQ DEALER; no TLS) or `:utp` (uTP; no TLS)
    # @param tls [ClientTls, nil] HTTPS / `wss://`
    # @param broker [String, nil] `:utp` only: the name of a broker to find (and punch) workers
    #   behind NATs through
    # @param punch_timeout [Numeric, nil] `:utp` with a broker: seconds to punch (nil: 5)
    def initialize(link, transport: :http, tls: nil, broker: nil, punch_timeout: nil)
      super()
      @transport = transport
      raise ArgumentError, "tls: ZeroMQ and uTP have no TLS (#{transport.inspect})" if tls && %i[zmq utp].include?(transport)
      raise ArgumentError, 'broker: only with transport: :utp' if broker && transport != :utp

      @ptr = Grenache.out_pointer do |o|
        Grenache.check!(case transport
                        when :http then Native.grenache_client_new_http(link.ptr, tls&.ptr, o)
                        when :ws then Native.grenache_client_new_ws(link.ptr, tls&.ptr, o)
                        when :zmq then Native.grenache_client_new_zmq(link.ptr, o)
                        when :utp then Native.grenache_client_new_utp(link.ptr, broker, ((punch_timeout || 0) * 1000).round, o)
                        else raise ArgumentError, "transport: #{transport.inspect} (:http, :ws, :zmq or :utp)"
                        end)
      end
    end

    # @return [Symbol] `:http`, `:ws`, `:zmq` or `:utp`
    attr_reader :transport

    # Sends `payload` to one worker of `key` and returns its answer.
    # @param key [String] the service name
    # @param payload [Object] any JSON value
    # @param timeout [Numeric, nil] seconds per attempt (nil: 30)
    # @param attempts [Integer] total attempts, the reference's `retry` (0 and 1: one; each retry
    #   picks another worker when there is one)
    # @param retry_remote [Boolean] also retry when the handler answered an error
    # @param compress [Boolean] HTTP: gzip request and reply
    # @param dest [String, nil] send to this `"ip:port"` without a lookup
    # @return [Object] the answer
    # @raise [RemoteError] the handler answered an error ({RemoteError#remote_message})
    # @raise [TimeoutError, LookupEmptyError, ConnectError, CancelledError, ...]
    def request(key, payload, **opts)
      Grenache.from_json_text(request_json(key, Grenache.to_json_text(payload), **opts))
    end

    # {#request} with JSON text in and out.
    # @return [String] the answer's JSON text
    def request_json(key, json, timeout: nil, attempts: 0, **opts)
      request_json_async(key, json, timeout: timeout, attempts: attempts, **opts).value(wait_time(timeout, attempts))
    end

    # {#request} without waiting.
    # @return [Future] of the answer
    def request_async(key, payload, **opts)
      start(:grenache_client_request_opts, key, Grenache.to_json_text(payload), Grenache.method(:from_json_text),
            **opts)
    end

    # {#request_json} without waiting.
    # @return [Future] of the answer's JSON text
    def request_json_async(key, json, **opts)
      start(:grenache_client_request_opts, key, json, nil, **opts)
    end

    # Sends `payload` to every worker of `key` (or `limit` random ones) at once.
    # @param timeout [Numeric, nil] seconds (nil: 30)
    # @param compress [Boolean]
    # @param limit [Integer] ask at most this many workers (0: all)
    # @return [Array] their answers
    # @raise [Error] the first error
    def map(key, payload, timeout: nil, compress: false, limit: 0)
      map_async(key, payload, timeout: timeout, compress: compress, limit: limit).value(wait_time(timeout, 1))
    end

    # {#map} with JSON text in and out.
    # @return [String] a JSON array
    def map_json(key, json, timeout: nil, compress: false, limit: 0)
      start(:grenache_client_map_opts, key, json, nil, timeout: timeout, compress: compress, limit: limit)
        .value(wait_time(timeout, 1))
    end

    # {#map} without waiting.
    # @return [Future] of the Array
    def map_async(key, payload, timeout: nil, compress: false, limit: 0)
      start(:grenache_client_map_opts, key, Grenache.to_json_text(payload), Grenache.method(:from_json_text),
            timeout: timeout, compress: compress, limit: limit)
    end

    private

    def start(fn, key, json, convert, timeout: nil, attempts: 0, retry_remote: false, compress: false, limit: 0,
              dest: nil)
      o = Native::RequestOptions.new
      o[:timeout_ms] = Grenache.ms(timeout)
      o[:retry] = attempts
      o[:retry_remote] = retry_remote
      o[:compress] = compress
      o[:limit] = limit
      dest_buf = dest && FFI::MemoryPointer.from_string(dest)
      o[:dest] = dest_buf || FFI::Pointer::NULL
      buf, len = Grenache.buffer(json)
      Grenache.start_operation(convert) do |ud|
        Native.send(fn, ptr, key, buf, len, o.pointer, Callbacks::JSON, ud)
      end
    end

    def wait_time(timeout, attempts)
      ((timeout || DEFAULT_TIMEOUT) * [attempts, 1].max) + WAIT_SLACK
    end

    def free_handle(p)
      Native.grenache_client_free(p)
    end
  end
end
