# frozen_string_literal: true

module Grenache
  # Every failure of the library: a stable result code (the same numbers in the C, Rust, Python
  # and Node faces), its name (`"ERR_TIMEOUT"`) and a message.
  #
  # The subclasses follow the code groups: {InputError} (1xx, the caller's input),
  # {TransportError} (2xx), {DiscoveryError} (3xx, Grape and DHT), {RpcError} (4xx),
  # {TlsError} (5xx) and {LibraryError} (9xx). Rescue the specific class
  # ({TimeoutError}, {RemoteError}, {LookupEmptyError}...) or any group.
  class Error < StandardError
    # @return [Integer] the C result code (e.g. 202)
    attr_reader :code
    # @return [String] the stable name of the code (e.g. `"ERR_TIMEOUT"`)
    attr_reader :code_name
    # @return [String, nil] the library's detail (for {RemoteError}, the remote handler's text)
    attr_reader :detail

    # @param code [Integer] the C result code
    # @param detail [String, nil] the error detail, if the library gave one
    def initialize(code = self.class::CODE, detail = nil)
      @code = code
      @code_name = Grenache.result_name(code) || "ERR_#{code}"
      @detail = detail
      super(detail && !detail.empty? ? "#{@code_name}: #{detail}" : @code_name)
    end

    # The exception for a result code: an instance of the most specific class.
    # @param code [Integer]
    # @param detail [String, nil]
    # @return [Error]
    def self.for(code, detail = nil)
      (CLASSES[code] || Error).new(code, detail)
    end
  end

  # 1xx: the caller's input.
  class InputError < Error; end
  # 2xx: transport failures.
  class TransportError < Error; end
  # 3xx: Grape and DHT failures.
  class DiscoveryError < Error; end
  # 4xx: RPC failures reported by the other side.
  class RpcError < Error; end
  # 5xx: TLS failures.
  class TlsError < Error; end
  # 9xx: bugs in the library, cancellations.
  class LibraryError < Error; end

  # Table of [class name, superclass, code].
  ERROR_TABLE = [
    [:NullParameterError, InputError, 100],
    [:InvalidArgumentError, InputError, 101],
    [:InvalidUtf8Error, InputError, 102],
    [:AlreadyUsedError, InputError, 103],
    [:BufferTooSmallError, InputError, 104],
    [:InvalidStateError, InputError, 105],
    [:IoError, TransportError, 200],
    [:ConnectError, TransportError, 201],
    [:TimeoutError, TransportError, 202],
    [:ClosedError, TransportError, 203],
    [:PayloadTooLargeError, TransportError, 204],
    [:DecodeError, TransportError, 205],
    [:ProtocolError, TransportError, 206],
    [:PunchTimeoutError, TransportError, 207],
    [:LookupEmptyError, DiscoveryError, 300],
    [:GrapeError, DiscoveryError, 301],
    [:NoNodesError, DiscoveryError, 302],
    [:AllQueriesFailedError, DiscoveryError, 303],
    [:SeqTooLowError, DiscoveryError, 304],
    [:CasMismatchError, DiscoveryError, 305],
    [:DhtError, DiscoveryError, 306],
    [:RemoteError, RpcError, 400],
    [:NoReplyError, RpcError, 401],
    [:HandlerPanickedError, RpcError, 402],
    [:TlsHandshakeError, TlsError, 500],
    [:CertificateError, TlsError, 501],
    [:TlsConfigError, TlsError, 502],
    [:ClientRefusedError, TlsError, 503],
    [:PanicError, LibraryError, 900],
    [:InternalError, LibraryError, 901],
    [:CancelledError, LibraryError, 902]
  ].freeze

  # Result code => exception class.
  CLASSES = {}
  ERROR_TABLE.each do |name, parent, code|
    klass = Class.new(parent)
    klass.const_set(:CODE, code)
    const_set(name, klass)
    CLASSES[code] = klass
  end
  CLASSES.freeze

  # The remote handler answered with an error. {#remote_message} is its text, exactly as sent
  # (by convention an `"ERR_..."` string, e.g. `"ERR_BOOM"`).
  class RemoteError
    # @return [String] the remote handler's error text
    def remote_message
      detail.to_s
    end
  end

  # Raise it from a handler to answer the request with an error: the caller receives a
  # {RemoteError} whose {RemoteError#remote_message} is this message. Other exceptions raised by
  # a handler are answered `"ERR_HANDLER_PANIC"` (and printed to stderr).
  class ReplyError < StandardError; end

  # Success.
  OK = 0
  # The result codes by name (`Grenache::RESULT[:timeout]` is 202).
  RESULT = {
    ok: 0, null_parameter: 100, invalid_argument: 101, invalid_utf8: 102, already_used: 103,
    buffer_too_small: 104, invalid_state: 105, io: 200, connect: 201, timeout: 202, closed: 203,
    payload_too_large: 204, decode: 205, protocol: 206, punch_timeout: 207,
    lookup_empty: 300, grape: 301,
    no_nodes: 302, all_queries_failed: 303, seq_too_low: 304, cas_mismatch: 305, dht: 306,
    remote: 400, no_reply: 401, handler_panicked: 402, tls_handshake: 500, certificate: 501,
    tls_config: 502, client_refused: 503, panic: 900, internal: 901, cancelled: 902
  }.freeze
end
