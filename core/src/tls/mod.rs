//! TLS for the HTTP and WebSocket transports (rustls), client-certificate fingerprints and
//! verification hooks.

use sha1::{Digest, Sha1};

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
