# frozen_string_literal: true

module Grenache
  # An ed25519 key pair that signs mutable DHT items ({Link#put_mutable}). Immutable.
  class Keypair
    # @api private
    attr_reader :ptr

    # @api private
    def initialize(ptr)
      @ptr = FFI::AutoPointer.new(ptr, Native.method(:grenache_keypair_free))
    end

    # @return [Keypair] a new random key pair
    def self.generate
      new(Grenache.out_pointer { |o| Grenache.check!(Native.grenache_keypair_generate(o)) })
    end

    # @param secret_hex [String] the 32-byte secret seed as 64 hex characters
    # @return [Keypair]
    # @raise [InvalidArgumentError] when it is not 64 hex characters
    def self.from_secret_hex(secret_hex)
      new(Grenache.out_pointer { |o| Grenache.check!(Native.grenache_keypair_from_secret_hex(secret_hex, o)) })
    end

    # @return [String] the public key, 64 hex characters
    def public_hex
      hex { |buf, n| Native.grenache_keypair_public_hex(@ptr, buf, 65, n) }
    end

    # @return [String] the secret seed, 64 hex characters
    def secret_hex
      hex { |buf, n| Native.grenache_keypair_secret_hex(@ptr, buf, 65, n) }
    end

    # The hash under which this key's mutable items (with `salt`) are stored: pass it to
    # {Link#get}.
    # @param salt [String, nil]
    # @return [String] 40 hex characters
    def target_hex(salt = nil)
      hex { |buf, n| Native.grenache_keypair_target_hex(@ptr, salt, buf, 65, n) }
    end

    # @return [String]
    def inspect
      "#<Grenache::Keypair #{public_hex}>"
    end

    private

    def hex
      buf = FFI::MemoryPointer.new(:char, 65)
      n = FFI::MemoryPointer.new(:size_t)
      Grenache.check!(yield(buf, n))
      buf.read_bytes(n.read(:size_t))
    end
  end

  # A Link: the client of one Grape's HTTP API (`grenache_link`): lookups (with a cache),
  # announces, and DHT put/get of immutable and signed mutable items. Thread-safe.
  #
  # Blocking methods wait with the GVL released; each has an `_async` twin returning a {Future}.
  #
  # @example
  #   link = Grenache::Link.new('http://127.0.0.1:30001')
  #   link.announce('rpc_test', 1337)
  #   link.lookup('rpc_test')          #=> ["127.0.0.1:1337"]
  #   hash = link.put('hello')
  #   link.get(hash)['v']              #=> "hello"
  #   link.close
  class Link < Handle
    # Link options ({#initialize} keywords) => their C numbers.
    OPTIONS = { request_timeout_ms: 0, lookup_cache_size: 1, lookup_cache_ttl_ms: 2, retries: 3 }.freeze

    # @return [String] the Grape API URL
    attr_reader :grape

    # @param grape [String] the Grape's HTTP API URL, `"http://127.0.0.1:30001"` (also accepted
    #   as the keyword `grape:` or `grape_address:`)
    # @param runtime [Runtime] the worker threads (default: {Runtime.default})
    # @param request_timeout_ms [Integer] timeout of each Grape API call (default 2500)
    # @param lookup_cache_size [Integer] entries of the lookup cache (default 2500)
    # @param lookup_cache_ttl_ms [Integer] how long lookups are cached (default 10000; 0: no cache)
    # @param retries [Integer] attempts of a lookup or announce on transport errors (default 3)
    # @raise [InvalidArgumentError] not an `http://host:port` URL, or a bad option
    def initialize(grape = nil, runtime: Grenache.runtime, grape_address: nil, **options)
      super()
      @grape = grape || options.delete(:grape) || grape_address or raise ArgumentError, 'a Grape URL is needed'
      unknown = options.keys - OPTIONS.keys
      raise ArgumentError, "unknown Link options: #{unknown.join(', ')}" unless unknown.empty?

      @ptr = if options.empty?
               Grenache.out_pointer { |o| Grenache.check!(Native.grenache_link_new(runtime.ptr, @grape, o)) }
             else
               with_options(options) do |opts|
                 Grenache.out_pointer { |o| Grenache.check!(Native.grenache_link_new_opts(runtime.ptr, @grape, opts, o)) }
               end
             end
    end

    # The peers announcing `name`.
    # @param name [String]
    # @param timeout [Numeric, nil] seconds to wait at most (nil: the Link's own timeouts)
    # @return [Array<String>] `"host:port"` strings
    # @raise [LookupEmptyError] when nobody announces it
    def lookup(name, timeout: nil)
      lookup_async(name).value(wait_time(timeout))
    end

    # {#lookup} without waiting.
    # @return [Future] of the `Array<String>`
    def lookup_async(name)
      Grenache.start_operation(Grenache.method(:from_json_text)) do |ud|
        Native.grenache_link_lookup(ptr, name, Callbacks::JSON, ud)
      end
    end

    # Announces once that `name` is served on `port` of this host.
    # @param name [String]
    # @param port [Integer]
    # @param timeout [Numeric, nil] seconds to wait at most
    # @return [nil]
    def announce(name, port, timeout: nil)
      announce_async(name, port).value(wait_time(timeout))
    end

    # {#announce} without waiting.
    # @return [Future] of nil
    def announce_async(name, port)
      Grenache.start_operation { |ud| Native.grenache_link_announce(ptr, name, port, Callbacks::DONE, ud) }
    end

    # Keeps announcing `name` on `port`: now, then every `interval` seconds (jittered ±50 %)
    # until {#stop_announcing} or {#close}.
    # @param interval [Numeric] seconds (keep it well under the Grape's 2-minute peer age)
    # @return [nil]
    def start_announcing(name, port, interval: 1.0)
      Grenache.check!(Native.grenache_link_start_announcing(ptr, name, port, Grenache.ms(interval)))
      nil
    end

    # Removes the announce of `name` on `port` from the Grapes at once (grenache-rs Grapes; a
    # Node reference Grape raises GrapeError ERR_REQ_NOTFOUND). Stop announcing it first.
    # @return [Integer] how many DHT nodes removed it
    def unannounce(name, port, timeout: nil)
      Grenache.start_operation(Grenache.method(:from_json_text)) do |ud|
        Native.grenache_link_unannounce(ptr, name, port, Callbacks::JSON, ud)
      end.value(wait_time(timeout))
    end

    # Pins the service `name` to its ed25519 public keys (hex strings; two during a key
    # rotation; [] unpins): lookups use only addresses with a valid signed proof under one of
    # them (docs/signed-announce.md).
    # @return [nil]
    def pin_service(name, keys)
      Grenache.check!(Native.grenache_link_pin_service(ptr, name, keys.join(',')))
      nil
    end

    # Makes every announce of `name` through this Link publish a signed proof of the address
    # under each of `keypairs` ([Keypair]), valid `ttl` seconds. [] stops signing.
    # @return [nil]
    def sign_announcements(name, keypairs, ttl: 600)
      arr = FFI::MemoryPointer.new(:pointer, [keypairs.size, 1].max)
      arr.write_array_of_pointer(keypairs.map(&:ptr))
      Grenache.check!(Native.grenache_link_sign_announcements(ptr, name, arr, keypairs.size, Grenache.ms(ttl)))
      nil
    end

    # Stops the keep-announcing loop of `(name, port)`.
    # @return [Boolean] false when none was running
    def stop_announcing(name, port)
      rc = Native.grenache_link_stop_announcing(ptr, name, port)
      return false if rc == RESULT[:invalid_state]

      Grenache.check!(rc)
      true
    end

    # Stores `value` in the DHT as an immutable item (BEP44).
    # @param value [Object] any JSON value (the Grape hands `v` back as stored; store strings for
    #   the reference's behaviour, `JSON.generate` structured data first)
    # @param timeout [Numeric, nil] seconds to wait at most
    # @return [String] the item's hash (40 hex characters)
    def put(value, timeout: nil)
      put_async(value).value(wait_time(timeout))
    end

    # {#put} without waiting.
    # @return [Future] of the hash
    def put_async(value)
      buf, len = Grenache.buffer(Grenache.to_json_text(value))
      Grenache.start_operation(Grenache.method(:from_json_text)) do |ud|
        Native.grenache_link_put(ptr, buf, len, Callbacks::JSON, ud)
      end
    end

    # Signs `value` with `keypair` and stores it as a mutable item.
    # @param keypair [Keypair]
    # @param value [Object] any JSON value
    # @param seq [Integer] the sequence number (must be above the stored one)
    # @param salt [String, nil]
    # @param cas [Integer, nil] compare-and-swap: store only if the stored seq is this one
    # @return [String] the item's hash ({Keypair#target_hex})
    # @raise [SeqTooLowError] `seq` not above the stored one
    # @raise [CasMismatchError] the stored seq is not `cas`
    def put_mutable(keypair, value, seq:, salt: nil, cas: nil, timeout: nil)
      put_mutable_async(keypair, value, seq: seq, salt: salt, cas: cas).value(wait_time(timeout))
    end

    # {#put_mutable} without waiting.
    # @return [Future] of the hash
    def put_mutable_async(keypair, value, seq:, salt: nil, cas: nil)
      buf, len = Grenache.buffer(Grenache.to_json_text(value))
      Grenache.start_operation(Grenache.method(:from_json_text)) do |ud|
        if cas.nil?
          Native.grenache_link_put_mutable(ptr, keypair.ptr, buf, len, seq, salt, Callbacks::JSON, ud)
        else
          Native.grenache_link_put_mutable_cas(ptr, keypair.ptr, buf, len, seq, salt, cas, Callbacks::JSON, ud)
        end
      end
    end

    # Reads a DHT item.
    # @param hash [String] the item's hex hash
    # @param salt [String, nil] the salt of a salted mutable item
    # @return [Hash, nil] the item (`"v"`, and for mutable items `"k"`, `"seq"`, `"sig"`...), nil
    #   when there is none
    def get(hash, salt: nil, timeout: nil)
      get_async(hash, salt: salt).value(wait_time(timeout))
    end

    # {#get} without waiting.
    # @return [Future] of the item
    def get_async(hash, salt: nil)
      Grenache.start_operation(Grenache.method(:from_json_text)) do |ud|
        Native.grenache_link_get(ptr, hash, salt, Callbacks::JSON, ud)
      end
    end

    private

    def wait_time(timeout)
      timeout || 60.0
    end

    def with_options(options)
      opts = Grenache.out_pointer { |o| Grenache.check!(Native.grenache_link_options_new(o)) }
      begin
        options.each { |k, v| Grenache.check!(Native.grenache_link_options_set(opts, OPTIONS.fetch(k), v), k.to_s) }
        yield opts
      ensure
        Native.grenache_link_options_free(opts)
      end
    end

    def free_handle(p)
      Native.grenache_link_free(p)
    end
  end
end
