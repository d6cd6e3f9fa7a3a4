# frozen_string_literal: true

module Grenache
  # TLS settings of a server or publisher (`grenache_server_tls`): its certificate chain and
  # key, and how it treats client certificates. Immutable; may be shared by several servers.
  #
  # @example mutual TLS, deciding in the handler or a verify_client hook by fingerprint
  #   tls = Grenache::ServerTls.new(cert_pem: File.read('server.crt'), key_pem: File.read('server.key'),
  #                                 client_ca_pem: File.read('ca.crt'), client_auth: :required)
  class ServerTls
    # `client_auth:` values.
    CLIENT_AUTH = { none: 0, optional: 1, required: 2, any: 3 }.freeze

    # @api private
    attr_reader :ptr

    # @param cert_pem [String] the certificate chain, PEM
    # @param key_pem [String] the private key, PEM
    # @param client_ca_pem [String, nil] the CA that client certificates must chain to
    # @param client_auth [Symbol] `:none` (do not ask), `:optional`, `:required`, or `:any` (ask and
    #   accept any, like Node's `requestCert: true, rejectUnauthorized: false`)
    # @raise [CertificateError, TlsConfigError, InvalidArgumentError]
    def initialize(cert_pem:, key_pem:, client_ca_pem: nil, client_auth: :none)
      auth = CLIENT_AUTH.fetch(client_auth) { raise ArgumentError, "client_auth: #{client_auth.inspect}" }
      raw = Grenache.out_pointer do |o|
        Grenache.check!(Native.grenache_server_tls_new(cert_pem, key_pem, client_ca_pem, auth, o))
      end
      @ptr = FFI::AutoPointer.new(raw, Native.method(:grenache_server_tls_free))
    end

    # Reads the PEM files.
    # @return [ServerTls]
    def self.from_files(cert:, key:, client_ca: nil, client_auth: :none)
      new(cert_pem: File.read(cert), key_pem: File.read(key), client_ca_pem: client_ca && File.read(client_ca),
          client_auth: client_auth)
    end
  end

  # TLS settings of a client or subscriber (`grenache_client_tls`): the CA that server
  # certificates must chain to and an optional client certificate. Server names are not checked
  # (Grenache peers are addressed by IP).
  class ClientTls
    # @api private
    attr_reader :ptr

    # @param ca_pem [String] the CA, PEM
    # @param cert_pem [String, nil] a client certificate (with `key_pem`)
    # @param key_pem [String, nil] its key
    # @raise [CertificateError, TlsConfigError, InvalidArgumentError]
    def initialize(ca_pem:, cert_pem: nil, key_pem: nil)
      raw = Grenache.out_pointer { |o| Grenache.check!(Native.grenache_client_tls_new(ca_pem, cert_pem, key_pem, o)) }
      @ptr = FFI::AutoPointer.new(raw, Native.method(:grenache_client_tls_free))
    end

    # Reads the PEM files.
    # @return [ClientTls]
    def self.from_files(ca:, cert: nil, key: nil)
      new(ca_pem: File.read(ca), cert_pem: cert && File.read(cert), key_pem: key && File.read(key))
    end
  end
end
