//! Builders for rustls server and client configurations from PEM, accepting X.509 v1 and v3
//! certificates (see [`super::verify`]).

use std::fmt;
use std::sync::Arc;

use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ServerConfig, SignatureScheme};

use super::verify::{Anchors, ClientAuth, ClientVerifier, ServerVerifier};
use crate::error::{Error, ErrorKind, Result};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_config_err(e: impl fmt::Display) -> Error {
    Error::new(ErrorKind::TlsConfig, e.to_string())
}

/// Parses every `CERTIFICATE` block of a PEM text, in order.
pub fn certs_from_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::new(ErrorKind::Certificate, format!("bad certificate PEM: {e}")))?;
    if certs.is_empty() {
        return Err(Error::new(ErrorKind::Certificate, "no CERTIFICATE block in PEM"));
    }
    for c in &certs {
        x509_parser::parse_x509_certificate(c.as_ref())
            .map_err(|e| Error::new(ErrorKind::Certificate, format!("cannot parse certificate: {e}")))?;
    }
    Ok(certs)
}

/// Parses the first private key (PKCS#8, PKCS#1 RSA or SEC1 EC) of a PEM text.
pub fn key_from_pem(pem: &[u8]) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| Error::new(ErrorKind::Certificate, format!("bad private key PEM: {e}")))
}

fn certified_key(provider: &CryptoProvider, chain_pem: &[u8], key_pem: &[u8]) -> Result<Arc<CertifiedKey>> {
    let chain = certs_from_pem(chain_pem)?;
    let key = key_from_pem(key_pem)?;
    let signer = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| Error::new(ErrorKind::Certificate, format!("unusable private key: {e}")))?;
    // `CertifiedKey::new` does not parse the certificate with webpki, so v1 certificates work.
    Ok(Arc::new(CertifiedKey::new(chain, signer)))
}

fn anchors_from_pem(ca_pem: Option<&[u8]>) -> Result<Anchors> {
    match ca_pem {
        Some(pem) => Anchors::new(certs_from_pem(pem)?.into_iter().map(|c| c.to_vec()).collect()),
        None => Ok(Anchors::default()),
    }
}

/// Always serves the same certificate chain (no SNI-based choice).
#[derive(Debug)]
struct FixedCert(Arc<CertifiedKey>);

impl ResolvesServerCert for FixedCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

impl ResolvesClientCert for FixedCert {
    fn resolve(&self, _hints: &[&[u8]], sigschemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.0.key.choose_scheme(sigschemes).map(|_| self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A TLS server configuration, ready for a listener. Cheap to clone.
#[derive(Clone)]
pub struct ServerTls {
    config: Arc<ServerConfig>,
    client_auth: ClientAuth,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls").field("client_auth", &self.client_auth).finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Starts a builder with the server's certificate chain (leaf first) and private key, in PEM.
    pub fn builder(cert_chain_pem: impl Into<Vec<u8>>, key_pem: impl Into<Vec<u8>>) -> ServerTlsBuilder {
        ServerTlsBuilder {
            cert_chain_pem: cert_chain_pem.into(),
            key_pem: key_pem.into(),
            ca_pem: None,
            client_auth: ClientAuth::None,
            alpn: Vec::new(),
        }
    }

    /// The rustls configuration.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.config.clone()
    }

    /// A `tokio-rustls` acceptor for this configuration.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.config.clone())
    }

    /// How client certificates are treated.
    pub fn client_auth(&self) -> ClientAuth {
        self.client_auth
    }
}

/// Builds a [`ServerTls`]. See [`ServerTls::builder`].
#[derive(Clone)]
pub struct ServerTlsBuilder {
    cert_chain_pem: Vec<u8>,
    key_pem: Vec<u8>,
    ca_pem: Option<Vec<u8>>,
    client_auth: ClientAuth,
    alpn: Vec<Vec<u8>>,
}

impl fmt::Debug for ServerTlsBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTlsBuilder")
            .field("has_ca", &self.ca_pem.is_some())
            .field("client_auth", &self.client_auth)
            .finish_non_exhaustive()
    }
}

impl ServerTlsBuilder {
    /// The CA certificate(s), in PEM, that client certificates must chain to. Setting a CA also
    /// switches [`ClientAuth`] to [`ClientAuth::Required`] unless [`client_auth`](Self::client_auth)
    /// is called afterwards. Default: none.
    pub fn client_ca_pem(mut self, ca_pem: impl Into<Vec<u8>>) -> Self {
        self.ca_pem = Some(ca_pem.into());
        if self.client_auth == ClientAuth::None {
            self.client_auth = ClientAuth::Required;
        }
        self
    }

    /// How client certificates are treated. Default: [`ClientAuth::None`], or
    /// [`ClientAuth::Required`] once a CA is set.
    pub fn client_auth(mut self, mode: ClientAuth) -> Self {
        self.client_auth = mode;
        self
    }

    /// ALPN protocols to offer (e.g. `b"http/1.1"`). Default: none.
    pub fn alpn(mut self, protocols: Vec<Vec<u8>>) -> Self {
        self.alpn = protocols;
        self
    }

    /// Parses the PEM and builds the configuration (TLS 1.3 only).
    ///
    /// Fails with [`ErrorKind::Certificate`] on unparsable certificates or keys, and with
    /// [`ErrorKind::TlsConfig`] when [`ClientAuth::Optional`] or [`ClientAuth::Required`] is
    /// asked without a CA.
    pub fn build(self) -> Result<ServerTls> {
        let provider = provider();
        let key = certified_key(&provider, &self.cert_chain_pem, &self.key_pem)?;
        let anchors = anchors_from_pem(self.ca_pem.as_deref())?;
        if matches!(self.client_auth, ClientAuth::Optional | ClientAuth::Required) && anchors.is_empty() {
            return Err(tls_config_err("client certificates must be verified but no CA was given"));
        }
        let verifier = ClientVerifier::new(anchors, self.client_auth, &provider);
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_config_err)?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(FixedCert(key)));
        config.alpn_protocols = self.alpn;
        Ok(ServerTls { config: Arc::new(config), client_auth: self.client_auth })
    }
}

/// A TLS client configuration, ready to dial servers. Cheap to clone.
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<ClientConfig>,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls").finish_non_exhaustive()
    }
}

impl ClientTls {
    /// Starts a builder. Set a CA with [`ClientTlsBuilder::ca_pem`] or accept any server with
    /// [`ClientTlsBuilder::danger_accept_any_server_cert`].
    pub fn builder() -> ClientTlsBuilder {
        ClientTlsBuilder::default()
    }

    /// The rustls configuration.
    pub fn config(&self) -> Arc<ClientConfig> {
        self.config.clone()
    }

    /// A `tokio-rustls` connector for this configuration.
    pub fn connector(&self) -> tokio_rustls::TlsConnector {
        tokio_rustls::TlsConnector::from(self.config.clone())
    }
}

/// Builds a [`ClientTls`]. See [`ClientTls::builder`].
#[derive(Clone, Default)]
pub struct ClientTlsBuilder {
    ca_pem: Option<Vec<u8>>,
    cert: Option<(Vec<u8>, Vec<u8>)>,
    accept_any: bool,
    check_name: bool,
    alpn: Vec<Vec<u8>>,
}

impl fmt::Debug for ClientTlsBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTlsBuilder")
            .field("has_ca", &self.ca_pem.is_some())
            .field("has_client_cert", &self.cert.is_some())
            .field("accept_any", &self.accept_any)
            .field("check_name", &self.check_name)
            .finish_non_exhaustive()
    }
}

impl ClientTlsBuilder {
    /// The CA certificate(s), in PEM, that the server's certificate must chain to. Default: none.
    pub fn ca_pem(mut self, ca_pem: impl Into<Vec<u8>>) -> Self {
        self.ca_pem = Some(ca_pem.into());
        self
    }

    /// The client certificate chain (leaf first) and private key, in PEM, sent when the server
    /// asks. Default: none.
    pub fn client_cert_pem(mut self, cert_chain_pem: impl Into<Vec<u8>>, key_pem: impl Into<Vec<u8>>) -> Self {
        self.cert = Some((cert_chain_pem.into(), key_pem.into()));
        self
    }

    /// Also require the server certificate to name the host dialled (a SAN DNS or IP entry, or the
    /// CN when there is no SAN). Default: `false`, because Grenache dials `ip:port` destinations
    /// from the DHT and service certificates rarely name IPs; the CA check still applies.
    pub fn check_server_name(mut self, check: bool) -> Self {
        self.check_name = check;
        self
    }

    /// Accepts any server certificate (Node's `rejectUnauthorized: false`). The connection is
    /// encrypted but the server is not authenticated. Default: off.
    pub fn danger_accept_any_server_cert(mut self) -> Self {
        self.accept_any = true;
        self
    }

    /// ALPN protocols to offer. Default: none.
    pub fn alpn(mut self, protocols: Vec<Vec<u8>>) -> Self {
        self.alpn = protocols;
        self
    }

    /// Parses the PEM and builds the configuration (TLS 1.3 only).
    ///
    /// Fails with [`ErrorKind::TlsConfig`] when neither a CA nor
    /// [`danger_accept_any_server_cert`](Self::danger_accept_any_server_cert) was given, and with
    /// [`ErrorKind::Certificate`] on unparsable PEM.
    pub fn build(self) -> Result<ClientTls> {
        let provider = provider();
        let anchors = anchors_from_pem(self.ca_pem.as_deref())?;
        if anchors.is_empty() && !self.accept_any {
            return Err(tls_config_err("no CA to verify the server with (set ca_pem or danger_accept_any_server_cert)"));
        }
        let verifier = Arc::new(ServerVerifier {
            anchors,
            accept_any: self.accept_any,
            check_name: self.check_name,
            algs: provider.signature_verification_algorithms,
        });
        let key = match &self.cert {
            Some((chain, key)) => Some(certified_key(&provider, chain, key)?),
            None => None,
        };
        let builder = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_config_err)?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut config = match key {
            Some(k) => builder.with_client_cert_resolver(Arc::new(FixedCert(k))),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = self.alpn;
        Ok(ClientTls { config: Arc::new(config) })
    }
}

/// The TLS server name to present when dialling `host` (an IP address or a DNS name; IPv6 may be
/// in brackets).
pub fn server_name(host: &str) -> Result<ServerName<'static>> {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(h.to_string()).map_err(|e| Error::invalid(format!("bad TLS server name {host:?}: {e}")))
}
