# frozen_string_literal: true

# grenache.rb: Ruby bindings for libgrenache through the ffi gem (Debian: ruby-ffi).
#
# Loads libgrenache.so from GRENACHE_LIB (a path) or the usual library search path. Wrapped:
# runtime, link (lookup), RPC servers and clients over HTTP and WebSocket (request, map, the
# client certificate's fingerprint, graceful shutdown). Everything follows include/grenache.h.
require 'ffi'

module Grenache
  extend FFI::Library
  ffi_lib ENV.fetch('GRENACHE_LIB', 'grenache')

  OK = 0
  LOOKUP_EMPTY = 300
  REMOTE = 400

  # Callbacks run on library threads; ffi hands them to Ruby safely.
  callback :json_cb, %i[pointer uint32 pointer pointer size_t], :void
  callback :done_cb, %i[pointer uint32 pointer], :void
  callback :handler_cb, %i[pointer pointer pointer], :void
  callback :free_cb, [:pointer], :void

  attach_function :grenache_version, [], :string
  attach_function :grenache_result_name, [:uint32], :string
  attach_function :grenache_error_message, [:pointer], :string
  # Calls that may wait for library threads release the GVL (blocking: true), so that those
  # threads can run their Ruby callbacks meanwhile.
  attach_function :grenache_runtime_new, %i[size_t pointer], :uint32, blocking: true
  attach_function :grenache_runtime_free, [:pointer], :void, blocking: true
  attach_function :grenache_link_new, %i[pointer string pointer], :uint32
  attach_function :grenache_link_lookup, %i[pointer string json_cb pointer], :uint32
  attach_function :grenache_link_free, [:pointer], :void, blocking: true
  attach_function :grenache_server_new_http, %i[pointer uint16 pointer handler_cb pointer free_cb pointer], :uint32,
                  blocking: true
  attach_function :grenache_server_new_ws, %i[pointer uint16 pointer handler_cb pointer free_cb pointer], :uint32,
                  blocking: true
  attach_function :grenache_server_shutdown, %i[pointer uint64 done_cb pointer], :uint32
  attach_function :grenache_server_port, [:pointer], :uint16
  attach_function :grenache_server_announce, %i[pointer string done_cb pointer], :uint32
  attach_function :grenache_server_start_announcing, %i[pointer string uint64], :uint32
  attach_function :grenache_server_free, [:pointer], :void, blocking: true
  attach_function :grenache_request_payload, %i[pointer pointer], :pointer
  attach_function :grenache_request_key, %i[pointer pointer], :string
  attach_function :grenache_request_fingerprint, [:pointer], :string
  attach_function :grenache_reply_send, %i[pointer pointer size_t], :uint32
  attach_function :grenache_reply_error, %i[pointer string], :uint32
  attach_function :grenache_client_new_http, %i[pointer pointer pointer], :uint32
  attach_function :grenache_client_new_ws, %i[pointer pointer pointer], :uint32
  attach_function :grenache_client_request, %i[pointer string pointer size_t uint64 json_cb pointer], :uint32
  attach_function :grenache_client_map, %i[pointer string pointer size_t uint64 json_cb pointer], :uint32
  attach_function :grenache_client_free, [:pointer], :void, blocking: true

  # A result code that is not OK, with its name ("ERR_TIMEOUT") and message.
  class Error < StandardError
    attr_reader :code

    def initialize(code, message = nil)
      @code = code
      super("#{Grenache.grenache_result_name(code)}#{message ? ": #{message}" : ''}")
    end
  end

  def self.check(code, what)
    raise Error.new(code, what) unless code == OK
  end

  def self.out_pointer
    p = FFI::MemoryPointer.new(:pointer)
    yield p
    p.read_pointer
  end

  # Starts an operation whose json_cb fires once (on a library thread) and waits for it; returns
  # the result's JSON text or raises Error. The callback stays referenced until it has fired.
  def self.await_json(what)
    q = Queue.new
    cb = proc do |_ud, code, err, json, len|
      q << [code, err.null? ? nil : grenache_error_message(err), json.null? ? nil : json.read_string(len)]
    end
    check(yield(cb), what)
    code, msg, json = q.pop
    raise Error.new(code, msg) unless code == OK

    json.force_encoding('UTF-8')
  end

  # Like await_json for a done_cb; returns the result code (OK) or raises Error.
  def self.await_done(what, allow: [])
    q = Queue.new
    cb = proc { |_ud, code, err| q << [code, err.null? ? nil : grenache_error_message(err)] }
    check(yield(cb), what)
    code, msg = q.pop
    raise Error.new(code, msg) unless code == OK || allow.include?(code)

    code
  end

  TIMEOUT = 202

  # The worker threads (grenache_runtime).
  class Runtime
    attr_reader :ptr

    def initialize(threads = 2)
      @ptr = Grenache.out_pointer { |o| Grenache.check(Grenache.grenache_runtime_new(threads, o), 'runtime') }
    end

    def close
      Grenache.grenache_runtime_free(@ptr) if @ptr
      @ptr = nil
    end
  end

  # A Link to a Grape (grenache_link).
  class Link
    attr_reader :ptr

    def initialize(runtime, grape)
      @ptr = Grenache.out_pointer { |o| Grenache.check(Grenache.grenache_link_new(runtime.ptr, grape, o), 'link') }
    end

    # The "host:port" of every worker of name, as JSON text (raises Error LOOKUP_EMPTY when none).
    def lookup(name)
      Grenache.await_json('lookup') { |cb| Grenache.grenache_link_lookup(@ptr, name, cb, nil) }
    end

    def close
      Grenache.grenache_link_free(@ptr) if @ptr
      @ptr = nil
    end
  end

  # An RPC server over :http or :ws. The block gets (payload_json, key, fingerprint) (the client
  # certificate's SHA-1 fingerprint over TLS, else nil) and returns [error_or_nil, result_json]; a
  # block that raises answers the error's message.
  class Server
    def initialize(link, port = 0, transport: :http, &handler)
      @handler = handler
      # Keep the callbacks referenced for as long as the library may call them.
      @on_request = proc do |_ud, req, reply|
        len = FFI::MemoryPointer.new(:size_t)
        payload = Grenache.grenache_request_payload(req, len).read_string(len.read(:size_t)).force_encoding('UTF-8')
        key = Grenache.grenache_request_key(req, nil)
        fingerprint = Grenache.grenache_request_fingerprint(req)
        err, result = begin
          @handler.call(payload, key, fingerprint)
        rescue StandardError => e
          [e.message, nil]
        end
        if err
          Grenache.grenache_reply_error(reply, err)
        else
          buf = FFI::MemoryPointer.from_string(result)
          Grenache.grenache_reply_send(reply, buf, result.bytesize)
        end
      end
      @freed = Queue.new
      @on_free = proc { |_ud| @freed << true }
      new = transport == :ws ? :grenache_server_new_ws : :grenache_server_new_http
      @ptr = Grenache.out_pointer do |o|
        Grenache.check(Grenache.send(new, link.ptr, port, nil, @on_request, nil, @on_free, o), 'server')
      end
    end

    def port
      Grenache.grenache_server_port(@ptr)
    end

    # Announces once (waiting for the answer), then every interval_ms.
    def announce(name, interval_ms = 1000)
      q = Queue.new
      cb = proc { |_ud, code, err| q << [code, err.null? ? nil : Grenache.grenache_error_message(err)] }
      Grenache.check(Grenache.grenache_server_announce(@ptr, name, cb, nil), 'announce')
      code, msg = q.pop
      raise Error.new(code, msg) unless code == OK

      Grenache.check(Grenache.grenache_server_start_announcing(@ptr, name, interval_ms), 'announce')
    end

    # Shuts down gracefully: stops announcing and listening, lets the requests already received
    # finish and their replies go out, then closes (the rest after grace_ms). True when everything
    # finished in time. Call close afterwards.
    def shutdown(grace_ms = 10_000)
      code = Grenache.await_done('shutdown', allow: [TIMEOUT]) { |cb| Grenache.grenache_server_shutdown(@ptr, grace_ms, cb, nil) }
      code == OK
    end

    def close
      return unless @ptr

      Grenache.grenache_server_free(@ptr)
      @ptr = nil
      @freed.pop
    end
  end

  # An RPC client over :http or :ws.
  class Client
    def initialize(link, transport: :http)
      new = transport == :ws ? :grenache_client_new_ws : :grenache_client_new_http
      @ptr = Grenache.out_pointer { |o| Grenache.check(Grenache.send(new, link.ptr, nil, o), 'client') }
    end

    # Sends payload_json to one worker of key; returns the result's JSON text or raises Error.
    def request(key, payload_json, timeout_ms = 10_000)
      buf = FFI::MemoryPointer.from_string(payload_json)
      Grenache.await_json('request') do |cb|
        Grenache.grenache_client_request(@ptr, key, buf, payload_json.bytesize, timeout_ms, cb, nil)
      end
    end

    # Sends payload_json to every worker of key; returns their results as a JSON array's text.
    def map(key, payload_json, timeout_ms = 10_000)
      buf = FFI::MemoryPointer.from_string(payload_json)
      Grenache.await_json('map') do |cb|
        Grenache.grenache_client_map(@ptr, key, buf, payload_json.bytesize, timeout_ms, cb, nil)
      end
    end

    def close
      Grenache.grenache_client_free(@ptr) if @ptr
      @ptr = nil
    end
  end
end
