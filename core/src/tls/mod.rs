//! TLS for the HTTP and WebSocket transports (rustls), client-certificate fingerprints and
//! verification hooks.
//!
//! * [`ServerTls::builder`] / [`ClientTls::builder`] build rustls configurations from PEM. They
//!   accept X.509 **v1** certificates (what the reference's users have; rustls' own verifier
//!   refuses them) as well as v3 ones, and speak TLS 1.3 only. See [`verify`] for the rules.
//! * [`PeerCert`] is the peer certificate as handlers see it, with Node's SHA-1 `fingerprint`.
//! * [`VerifyClient`] is the server hook that sees a client's certificate before its connection
//!   (or WebSocket upgrade) is accepted; [`client_cert`] / [`server_cert`] read the peer
//!   certificate of a `tokio-rustls` stream.
//!
//! ```no_run
//! # fn main() -> grenache::Result<()> {
//! use grenache::tls::{ClientAuth, ClientTls, ServerTls};
//! let (cert, key, ca) = (std::fs::read("server.crt")?, std::fs::read("server.key")?, std::fs::read("ca.crt")?);
//! let server = ServerTls::builder(cert, key).client_ca_pem(ca.clone()).client_auth(ClientAuth::Required).build()?;
//! let (ccert, ckey) = (std::fs::read("client.crt")?, std::fs::read("client.key")?);
//! let client = ClientTls::builder().ca_pem(ca).client_cert_pem(ccert, ckey).build()?;
//! # let _ = (server, client); Ok(()) }
//! ```

use std::net::SocketAddr;
use std::sync::Arc;

use sha1::{Digest, Sha1};
use sha2::Sha256;

mod config;
pub mod verify;

pub use config::{ClientTls, ClientTlsBuilder, ServerTls, ServerTlsBuilder, certs_from_pem, key_from_pem, server_name};
pub use verify::ClientAuth;

/// A peer's X.509 certificate as handed to request handlers and `verify_client` hooks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCert {
    /// The certificate in DER form.
    pub der: Vec<u8>,
    /// SHA-1 of the DER as upper-case hex pairs joined by `:` (`E1:63:C1:...`), exactly as Node's
    /// `getPeerCertificate().fingerprint` prints it.
    pub fingerprint: String,
}

impl PeerCert {
    /// Wraps a DER certificate and computes its fingerprint.
    pub fn from_der(der: Vec<u8>) -> PeerCert {
        let fingerprint = fingerprint_sha1(&der);
        PeerCert { der, fingerprint }
    }

    /// SHA-256 of the DER as `AA:BB:...` (Node's `fingerprint256`).
    pub fn fingerprint256(&self) -> String {
        colon_hex(&Sha256::digest(&self.der))
    }

    /// The subject's common name (`CN`), if the certificate parses and has one.
    pub fn subject_cn(&self) -> Option<String> {
        let (_, c) = x509_parser::parse_x509_certificate(&self.der).ok()?;
        let cn = c.subject().iter_common_name().next()?.as_str().ok()?.to_string();
        Some(cn)
    }

    /// The issuer's common name (`CN`), if the certificate parses and has one.
    pub fn issuer_cn(&self) -> Option<String> {
        let (_, c) = x509_parser::parse_x509_certificate(&self.der).ok()?;
        let cn = c.issuer().iter_common_name().next()?.as_str().ok()?.to_string();
        Some(cn)
    }
}

/// What a [`VerifyClient`] hook sees about a client before its connection is accepted.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct ClientInfo<'a> {
    /// The client's certificate, if it sent one (always `Some` with [`ClientAuth::Required`]).
    pub cert: Option<&'a PeerCert>,
    /// The client's socket address.
    pub remote_addr: Option<SocketAddr>,
    /// The request path (the WebSocket upgrade's `GET` path; `/` for HTTP).
    pub path: &'a str,
}

impl<'a> ClientInfo<'a> {
    /// A new description of a client.
    pub fn new(cert: Option<&'a PeerCert>, remote_addr: Option<SocketAddr>, path: &'a str) -> ClientInfo<'a> {
        ClientInfo { cert, remote_addr, path }
    }
}

/// A server hook that accepts (`true`) or refuses (`false`) a client, seeing its certificate
/// before the connection is accepted: the reference's `verifyClient`. A refused WebSocket upgrade
/// is answered `HTTP 401` and closed. The hook runs on a runtime thread and must not block.
pub type VerifyClient = Arc<dyn Fn(&ClientInfo<'_>) -> bool + Send + Sync + 'static>;

/// Wraps a closure as a [`VerifyClient`] hook.
///
/// ```
/// let allowed = "E1:63:C1:46:B3:B6:46:3B:5E:92:98:34:40:A1:AB:FB:0E:92:D0:76";
/// let hook = grenache::tls::verify_client(move |c| c.cert.is_some_and(|c| c.fingerprint == allowed));
/// # let _ = hook;
/// ```
pub fn verify_client<F>(f: F) -> VerifyClient
where
    F: Fn(&ClientInfo<'_>) -> bool + Send + Sync + 'static,
{
    Arc::new(f)
}

/// A [`VerifyClient`] hook that accepts only clients whose certificate has one of these SHA-1
/// fingerprints (`"AA:BB:..."`, compared without regard to case): the reference's
/// `verifyClient` whitelist. A client without a certificate is refused.
///
/// ```
/// let hook = grenache::tls::allow_fingerprints(["E1:63:C1:46:B3:B6:46:3B:5E:92:98:34:40:A1:AB:FB:0E:92:D0:76"]);
/// # let _ = hook;
/// ```
pub fn allow_fingerprints<I, S>(fingerprints: I) -> VerifyClient
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let allowed: std::collections::HashSet<String> = fingerprints.into_iter().map(|f| f.as_ref().to_ascii_uppercase()).collect();
    // Fingerprints are made upper case (`fingerprint_sha1`).
    verify_client(move |c| c.cert.is_some_and(|cert| allowed.contains(&cert.fingerprint)))
}

/// The client certificate of a server-side `tokio-rustls` stream (the leaf), if the client sent one.
pub fn client_cert<IO>(stream: &tokio_rustls::server::TlsStream<IO>) -> Option<PeerCert> {
    stream.get_ref().1.peer_certificates()?.first().map(|c| PeerCert::from_der(c.to_vec()))
}

/// The server certificate (the leaf) of a client-side `tokio-rustls` stream.
pub fn server_cert<IO>(stream: &tokio_rustls::client::TlsStream<IO>) -> Option<PeerCert> {
    stream.get_ref().1.peer_certificates()?.first().map(|c| PeerCert::from_der(c.to_vec()))
}

/// SHA-1 of `der` as `AA:BB:...` (upper case), Node's `fingerprint` format.
pub fn fingerprint_sha1(der: &[u8]) -> String {
    colon_hex(&Sha1::digest(der))
}

pub(crate) fn colon_hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 3);
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 {
            s.push(':');
        }
        s.push_str(&format!("{b:02X}"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_fingerprints_accepts_only_listed_certificates() {
        let cert = PeerCert::from_der(b"not really DER, only hashed".to_vec());
        let hook = allow_fingerprints([cert.fingerprint.to_ascii_lowercase()]);
        assert!(hook(&ClientInfo::new(Some(&cert), None, "/ws")));
        let other = PeerCert::from_der(b"another".to_vec());
        assert!(!hook(&ClientInfo::new(Some(&other), None, "/ws")));
        assert!(!hook(&ClientInfo::new(None, None, "/ws")));
    }
}
