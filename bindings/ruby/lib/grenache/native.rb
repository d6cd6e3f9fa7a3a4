# frozen_string_literal: true

require 'English'
require 'ffi'

module Grenache
  # libgrenache could not be loaded (see {Native}); raised when the gem is required.
  class LibraryNotFound < ::LoadError; end
end

module Grenache
  # The raw C ABI of libgrenache (include/grenache.h), one attached function per C function.
  #
  # Everything here follows the header exactly (same names, same arguments); the classes of
  # {Grenache} are the idiomatic face over it. Functions that may wait for the library's worker
  # threads (binding a port, freeing a handle) are attached with `blocking: true`: they release
  # the GVL, so that those threads can run Ruby callbacks meanwhile.
  #
  # Where libgrenache is loaded from, first match wins (see {Native.library_candidates}):
  # 1. `ENV['GRENACHE_LIB']`, a path to the library (nothing else is tried then);
  # 2. the libdir of an installed libgrenache as pkg-config reports it
  #    (`pkg-config --variable=libdir grenache`, honouring `PKG_CONFIG_PATH`);
  # 3. the dynamic loader's search path: `libgrenache.so.1` (the installed run-time name), then
  #    `libgrenache.so`.
  # When none loads, requiring the gem raises {Grenache::LibraryNotFound} (a ::LoadError) that
  # names what was tried and how to fix it.
  module Native
    extend FFI::Library

    # The SONAME major this binding is written for: the ABI of include/grenache.h.
    ABI_MAJOR = 1

    # The paths or names to try, in order.
    # @return [Array<String>]
    def self.library_candidates(env = ENV)
      explicit = env['GRENACHE_LIB']
      return [explicit] if explicit && !explicit.empty?

      found = []
      libdir = pkg_config_libdir
      if libdir
        found << File.join(libdir, "libgrenache.so.#{ABI_MAJOR}")
        found << File.join(libdir, 'libgrenache.so')
      end
      found + ["libgrenache.so.#{ABI_MAJOR}", 'libgrenache.so']
    end

    # `pkg-config --variable=libdir grenache`, or nil without pkg-config or the .pc file.
    def self.pkg_config_libdir
      out = IO.popen(%w[pkg-config --variable=libdir grenache], err: File::NULL, &:read)
      dir = out.to_s.strip
      $CHILD_STATUS.success? && !dir.empty? ? dir : nil
    rescue SystemCallError
      nil
    end

    # Loads the first candidate that opens (ffi_lib with several names would need them all).
    def self.load_library(candidates)
      errors = []
      candidates.each do |lib|
        ffi_lib lib
        return lib
      rescue LoadError => e
        errors << e.message.lines.first.to_s.strip
      end
      raise Grenache::LibraryNotFound,
            "grenache-native: libgrenache (the grenache-rs C library) could not be loaded; tried " \
            "#{candidates.join(', ')}.\n" \
            'Install it (the Debian package grenache, or scripts/install-c.sh of grenache-rs: see its ' \
            'README, section Install), make it visible to pkg-config ' \
            '(PKG_CONFIG_PATH=<prefix>/lib/pkgconfig), or point GRENACHE_LIB at the file ' \
            "(GRENACHE_LIB=/path/to/libgrenache.so.#{ABI_MAJOR}).\n" \
            "Loader: #{errors.join(' | ')}"
    end

    # The library that was loaded (a path or a loader name).
    LIBRARY = load_library(library_candidates)

    # grenache_request_options: zero-initialised per-call options of request/map.
    class RequestOptions < FFI::Struct
      layout :timeout_ms, :uint64,
             :retry, :uint32,
             :retry_remote, :bool,
             :compress, :bool,
             :limit, :size_t,
             :dest, :pointer
    end

    callback :json_cb, %i[pointer uint32 pointer pointer size_t], :void
    callback :done_cb, %i[pointer uint32 pointer], :void
    callback :bool_cb, %i[pointer uint32 pointer bool], :void
    callback :free_cb, [:pointer], :void
    callback :handler_cb, %i[pointer pointer pointer], :void
    callback :verify_client_cb, %i[pointer pointer], :bool
    callback :message_cb, %i[pointer string pointer size_t], :void
    callback :message_ex_cb, %i[pointer string pointer size_t bool], :void
    callback :grape_event_cb, %i[pointer uint32 string uint64], :void
    callback :punch_cb, %i[pointer string], :void

    B = { blocking: true }.freeze

    # Results, errors, version.
    attach_function :grenache_result_name, [:uint32], :string
    attach_function :grenache_result_class_name, [:uint32], :string
    attach_function :grenache_result_message, %i[uint32 pointer size_t pointer], :uint32
    attach_function :grenache_error_code, [:pointer], :uint32
    attach_function :grenache_error_message, [:pointer], :string
    attach_function :grenache_version, [], :string

    # Runtime.
    attach_function :grenache_runtime_new, %i[size_t pointer], :uint32, B
    attach_function :grenache_runtime_free, [:pointer], :void, B

    # Grape.
    attach_function :grenache_grape_start, %i[pointer uint16 uint16 string pointer], :uint32, B
    attach_function :grenache_grape_start_opts, %i[pointer pointer pointer], :uint32, B
    attach_function :grenache_grape_dht_port, [:pointer], :uint16
    attach_function :grenache_grape_api_port, [:pointer], :uint16
    attach_function :grenache_grape_free, [:pointer], :void, B
    attach_function :grenache_grape_on_event, %i[pointer grape_event_cb pointer free_cb], :uint32
    attach_function :grenache_grape_options_new, [:pointer], :uint32
    attach_function :grenache_grape_options_free, [:pointer], :void
    attach_function :grenache_grape_options_set, %i[pointer uint32 uint64], :uint32
    attach_function :grenache_grape_options_set_host, %i[pointer string], :uint32
    attach_function :grenache_grape_options_set_dht_state, %i[pointer string], :uint32
    attach_function :grenache_grape_options_set_bootstrap, %i[pointer string], :uint32

    # Link.
    attach_function :grenache_link_new, %i[pointer string pointer], :uint32
    attach_function :grenache_link_new_opts, %i[pointer string pointer pointer], :uint32
    attach_function :grenache_link_options_new, [:pointer], :uint32
    attach_function :grenache_link_options_free, [:pointer], :void
    attach_function :grenache_link_options_set, %i[pointer uint32 uint64], :uint32
    attach_function :grenache_link_free, [:pointer], :void, B
    attach_function :grenache_link_lookup, %i[pointer string json_cb pointer], :uint32
    attach_function :grenache_link_announce, %i[pointer string uint16 done_cb pointer], :uint32
    attach_function :grenache_link_start_announcing, %i[pointer string uint16 uint64], :uint32
    attach_function :grenache_link_stop_announcing, %i[pointer string uint16], :uint32
    attach_function :grenache_link_put, %i[pointer pointer size_t json_cb pointer], :uint32
    attach_function :grenache_link_put_mutable, %i[pointer pointer pointer size_t int64 string json_cb pointer],
                    :uint32
    attach_function :grenache_link_put_mutable_cas,
                    %i[pointer pointer pointer size_t int64 string int64 json_cb pointer], :uint32
    attach_function :grenache_link_get, %i[pointer string string json_cb pointer], :uint32
    attach_function :grenache_link_unannounce, %i[pointer string uint16 json_cb pointer], :uint32
    attach_function :grenache_link_pin_service, %i[pointer string string], :uint32
    attach_function :grenache_link_sign_announcements, %i[pointer string pointer size_t uint64], :uint32

    # Key pairs.
    attach_function :grenache_keypair_generate, [:pointer], :uint32
    attach_function :grenache_keypair_from_secret_hex, %i[string pointer], :uint32
    attach_function :grenache_keypair_public_hex, %i[pointer pointer size_t pointer], :uint32
    attach_function :grenache_keypair_secret_hex, %i[pointer pointer size_t pointer], :uint32
    attach_function :grenache_keypair_target_hex, %i[pointer string pointer size_t pointer], :uint32
    attach_function :grenache_keypair_free, [:pointer], :void

    # TLS settings.
    attach_function :grenache_server_tls_new, %i[string string string uint32 pointer], :uint32
    attach_function :grenache_server_tls_free, [:pointer], :void
    attach_function :grenache_client_tls_new, %i[string string string pointer], :uint32
    attach_function :grenache_client_tls_free, [:pointer], :void

    # Servers.
    attach_function :grenache_server_new_http, %i[pointer uint16 pointer handler_cb pointer free_cb pointer], :uint32, B
    attach_function :grenache_server_new_ws, %i[pointer uint16 pointer handler_cb pointer free_cb pointer], :uint32, B
    attach_function :grenache_server_new, %i[pointer uint32 pointer handler_cb pointer free_cb pointer], :uint32, B
    attach_function :grenache_server_port, [:pointer], :uint16
    attach_function :grenache_server_announce, %i[pointer string done_cb pointer], :uint32
    attach_function :grenache_server_start_announcing, %i[pointer string uint64], :uint32
    attach_function :grenache_server_stop_announcing, %i[pointer string], :uint32
    attach_function :grenache_server_shutdown, %i[pointer uint64 bool_cb pointer], :uint32
    attach_function :grenache_server_new_utp, %i[pointer uint16 string handler_cb pointer free_cb pointer], :uint32, B
    attach_function :grenache_server_options_set_limit, %i[pointer uint32 uint64], :uint32
    attach_function :grenache_server_limit_name, [:uint32], :string
    attach_function :grenache_server_options_set_broker, %i[pointer string], :uint32
    attach_function :grenache_server_punch, %i[pointer string uint64 done_cb pointer], :uint32
    attach_function :grenache_server_on_punch, %i[pointer punch_cb pointer], :uint32
    attach_function :grenache_server_free, [:pointer], :void, B
    attach_function :grenache_server_options_new, [:pointer], :uint32
    attach_function :grenache_server_options_free, [:pointer], :void
    attach_function :grenache_server_options_set_port, %i[pointer uint16], :uint32
    attach_function :grenache_server_options_set_tls, %i[pointer pointer], :uint32
    attach_function :grenache_server_options_set_reply_timeout, %i[pointer uint64], :uint32
    attach_function :grenache_server_options_set_verify_client, %i[pointer verify_client_cb pointer free_cb], :uint32
    attach_function :grenache_client_info_fingerprint, [:pointer], :string
    attach_function :grenache_client_info_remote_addr, [:pointer], :string
    attach_function :grenache_client_info_path, [:pointer], :string

    # Requests and replies (inside handlers).
    attach_function :grenache_request_key, %i[pointer pointer], :pointer
    attach_function :grenache_request_payload, %i[pointer pointer], :pointer
    attach_function :grenache_request_fingerprint, [:pointer], :string
    attach_function :grenache_request_remote_addr, [:pointer], :string
    attach_function :grenache_request_transport, [:pointer], :uint32
    attach_function :grenache_reply_send, %i[pointer pointer size_t], :uint32
    attach_function :grenache_reply_error, %i[pointer string], :uint32
    attach_function :grenache_reply_free, [:pointer], :void
    attach_function :grenache_reply_is_closed, [:pointer], :bool

    # Clients.
    attach_function :grenache_client_new_http, %i[pointer pointer pointer], :uint32
    attach_function :grenache_client_new_ws, %i[pointer pointer pointer], :uint32
    attach_function :grenache_client_new_utp, %i[pointer string uint64 pointer], :uint32, B
    attach_function :grenache_client_new_zmq, %i[pointer pointer], :uint32
    attach_function :grenache_client_request, %i[pointer string pointer size_t uint64 json_cb pointer], :uint32
    attach_function :grenache_client_map, %i[pointer string pointer size_t uint64 json_cb pointer], :uint32
    attach_function :grenache_client_request_opts, %i[pointer string pointer size_t pointer json_cb pointer], :uint32
    attach_function :grenache_client_map_opts, %i[pointer string pointer size_t pointer json_cb pointer], :uint32
    attach_function :grenache_client_free, [:pointer], :void, B

    # PUB/SUB.
    attach_function :grenache_publisher_new, %i[pointer uint16 pointer pointer], :uint32, B
    attach_function :grenache_publisher_new_opts, %i[pointer pointer pointer], :uint32, B
    attach_function :grenache_publisher_new_transport, %i[pointer uint32 pointer pointer], :uint32, B
    attach_function :grenache_publisher_port, [:pointer], :uint16
    attach_function :grenache_publisher_start_announcing, %i[pointer string uint64], :uint32
    attach_function :grenache_publisher_publish, %i[pointer pointer size_t pointer], :uint32
    attach_function :grenache_publisher_publish_binary, %i[pointer pointer size_t pointer], :uint32
    attach_function :grenache_publisher_subscribers, [:pointer], :size_t
    attach_function :grenache_publisher_free, [:pointer], :void, B
    attach_function :grenache_subscriber_new, %i[pointer string pointer message_cb pointer free_cb pointer], :uint32
    attach_function :grenache_subscriber_new_ex, %i[pointer string pointer message_ex_cb pointer free_cb pointer],
                    :uint32
    attach_function :grenache_subscriber_new_transport,
                    %i[pointer string uint32 pointer message_ex_cb pointer free_cb pointer], :uint32
    attach_function :grenache_subscriber_publishers, [:pointer], :size_t
    attach_function :grenache_subscriber_free, [:pointer], :void, B
  end
end
