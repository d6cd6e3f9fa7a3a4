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
    # @return [String] the stable name of the code (e.g. `"ERR_TIMEOUT"`), also {#name}
    attr_reader :code_name
    # @return [String, nil] the library's detail (for {RemoteError}, the remote handler's text)
    attr_reader :detail

    # @param code [Integer] the C result code
    # @param detail [String, nil] the error detail, if the library gave one
    def initialize(code = self.class::CODE, detail = nil)
      @code = code
      @code_name = Grenache.result_name(code) || "ERR_#{code}"
      @detail = detail
      # The same text as the `message` of the C, Python and Node errors.
      super(detail && !detail.empty? ? detail : (Grenache.result_message(code) || @code_name))
    end

    # @return [String] the stable name of the code (`"ERR_TIMEOUT"`), as `.name` in every face
    def name
      @code_name
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

  # The family classes by the hundreds digit of a code.
  FAMILIES = { 1 => InputError, 2 => TransportError, 3 => DiscoveryError, 4 => RpcError, 5 => TlsError,
               9 => LibraryError }.freeze

  # Table of [class name, superclass, code], one row per error kind of the library, read from
  # the library itself (`grenache_result_class_name`): a kind added to the core is a class here
  # without a change to this file.
  ERROR_TABLE = (100..999).filter_map do |code|
    name = Native.grenache_result_class_name(code)
    [name.to_sym, FAMILIES.fetch(code / 100, LibraryError), code] if name
  end.freeze

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
  # The result codes by name (`Grenache::RESULT[:timeout]` is 202): the class names in snake case.
  RESULT = ERROR_TABLE.to_h do |name, _, code|
    [name.to_s.delete_suffix('Error').gsub(/([a-z\d])([A-Z])/, '\\1_\\2').downcase.to_sym, code]
  end.merge(ok: OK).freeze
end
