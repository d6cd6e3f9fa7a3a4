//! Certificate verification that accepts X.509 **v1** certificates.
//!
//! rustls' own verifier (webpki) refuses v1 certificates, and the reference's users have them
//! (grenache-nodejs-http's test certificates are v1, RSA-2048, CN only). So the verifiers here
//! parse certificates with `x509-parser`, check the chain signatures and validity periods
//! themselves, and check the TLS 1.3 handshake signature against the certificate's public key with
//! [`rustls::crypto::verify_tls13_signature_with_raw_key`].
//!
//! Rules:
//! * the end-entity certificate must be inside its validity period (`now`);
//! * it must chain to one of the configured CA certificates, directly or through the intermediates
//!   the peer sent (at most [`MAX_CHAIN_DEPTH`] of them). An intermediate must be a v1 certificate
//!   or carry `basicConstraints CA:TRUE`, and must be inside its validity period;
//! * a certificate that *is* one of the CA certificates is accepted (pinning a self-signed cert);
//! * SHA-1 signatures are refused, as Node 20 / OpenSSL 3 refuses them.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, SubjectPublicKeyInfoDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::oid_registry::{OID_PKCS1_SHA1WITHRSA, OID_SHA1_WITH_RSA};
use x509_parser::prelude::FromDer;
use x509_parser::time::ASN1Time;
use x509_parser::x509::X509Version;

/// The longest chain of intermediates followed from the end-entity certificate to a CA.
pub const MAX_CHAIN_DEPTH: usize = 6;

/// A set of trusted CA certificates (DER), parsed at verification time.
#[derive(Debug, Clone, Default)]
pub(crate) struct Anchors {
    ders: Vec<Vec<u8>>,
    subjects: Vec<DistinguishedName>,
}

impl Anchors {
    /// Checks every certificate parses and keeps it.
    pub(crate) fn new(ders: Vec<Vec<u8>>) -> crate::Result<Anchors> {
        let mut subjects = Vec::with_capacity(ders.len());
        for d in &ders {
            let (_, c) = X509Certificate::from_der(d)
                .map_err(|e| crate::Error::new(crate::ErrorKind::Certificate, format!("cannot parse CA certificate: {e}")))?;
            subjects.push(DistinguishedName::from(c.subject().as_raw().to_vec()));
        }
        Ok(Anchors { ders, subjects })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.ders.is_empty()
    }
}

fn bad_encoding() -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::BadEncoding)
}

fn parse(der: &[u8]) -> Result<X509Certificate<'_>, rustls::Error> {
    X509Certificate::from_der(der).map(|(_, c)| c).map_err(|_| bad_encoding())
}

fn asn1_now(now: UnixTime) -> Result<ASN1Time, rustls::Error> {
    let secs = i64::try_from(now.as_secs()).map_err(|_| rustls::Error::General("clock out of range".into()))?;
    ASN1Time::from_timestamp(secs).map_err(|_| rustls::Error::General("clock out of range".into()))
}

fn check_validity(c: &X509Certificate<'_>, now: &ASN1Time) -> Result<(), rustls::Error> {
    let v = c.validity();
    if *now < v.not_before {
        return Err(rustls::Error::InvalidCertificate(CertificateError::NotValidYet));
    }
    if *now > v.not_after {
        return Err(rustls::Error::InvalidCertificate(CertificateError::Expired));
    }
    Ok(())
}

fn is_weak_signature(c: &X509Certificate<'_>) -> bool {
    let alg = &c.signature_algorithm.algorithm;
    *alg == OID_PKCS1_SHA1WITHRSA || *alg == OID_SHA1_WITH_RSA
}

/// True when `issuer` may sign `child` (names match and the signature verifies).
fn signs(issuer: &X509Certificate<'_>, child: &X509Certificate<'_>) -> bool {
    issuer.subject().as_raw() == child.issuer().as_raw()
        && !is_weak_signature(child)
        && child.verify_signature(Some(issuer.public_key())).is_ok()
}

fn may_sign_certs(c: &X509Certificate<'_>) -> bool {
    match c.version() {
        X509Version::V1 => true,
        _ => matches!(c.basic_constraints(), Ok(Some(bc)) if bc.value.ca),
    }
}

/// Checks that `end_entity` chains to one of `anchors` at `now`.
pub(crate) fn verify_chain(
    anchors: &Anchors,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
) -> Result<(), rustls::Error> {
    let now = asn1_now(now)?;
    let ee = parse(end_entity.as_ref())?;
    check_validity(&ee, &now)?;
    // A pinned certificate: the end entity is itself one of the trusted certificates.
    if anchors.ders.iter().any(|a| a.as_slice() == end_entity.as_ref()) {
        return Ok(());
    }
    let parsed_anchors: Vec<X509Certificate<'_>> = anchors.ders.iter().filter_map(|d| parse(d).ok()).collect();
    let parsed_inter: Vec<X509Certificate<'_>> =
        intermediates.iter().take(MAX_CHAIN_DEPTH).filter_map(|d| parse(d.as_ref()).ok()).collect();

    let mut current = &ee;
    let mut bad_sig = false;
    for _ in 0..=MAX_CHAIN_DEPTH {
        for a in &parsed_anchors {
            if a.subject().as_raw() == current.issuer().as_raw() {
                if signs(a, current) {
                    return Ok(());
                }
                bad_sig = true;
            }
        }
        let next = parsed_inter
            .iter()
            .find(|i| !std::ptr::eq(*i, current) && may_sign_certs(i) && check_validity(i, &now).is_ok() && signs(i, current));
        match next {
            Some(n) => current = n,
            None => break,
        }
    }
    Err(rustls::Error::InvalidCertificate(if bad_sig { CertificateError::BadSignature } else { CertificateError::UnknownIssuer }))
}

/// Checks the TLS 1.3 handshake signature with the public key of `cert` (any X.509 version).
fn verify_tls13(
    algs: &WebPkiSupportedAlgorithms,
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    let c = parse(cert.as_ref())?;
    let spki = SubjectPublicKeyInfoDer::from(c.public_key().raw);
    rustls::crypto::verify_tls13_signature_with_raw_key(message, &spki, dss, algs)
}

fn tls12_refused() -> Result<HandshakeSignatureValid, rustls::Error> {
    // The configs built in this module are TLS 1.3 only, so this is never reached.
    Err(rustls::Error::PeerIncompatible(rustls::PeerIncompatible::Tls12NotOffered))
}

/// True when `cert` names `name`: a SAN entry (DNS with a leading `*.` wildcard, or IP), or the
/// subject CN when the certificate has no SAN extension.
pub(crate) fn cert_matches_name(cert: &[u8], name: &ServerName<'_>) -> bool {
    let Ok(c) = parse(cert) else { return false };
    let san = c.subject_alternative_name().ok().flatten();
    match name {
        ServerName::IpAddress(ip) => {
            let want: std::net::IpAddr = (*ip).into();
            let want_bytes = match want {
                std::net::IpAddr::V4(v4) => v4.octets().to_vec(),
                std::net::IpAddr::V6(v6) => v6.octets().to_vec(),
            };
            if let Some(san) = &san {
                return san.value.general_names.iter().any(|g| matches!(g, GeneralName::IPAddress(b) if *b == want_bytes.as_slice()));
            }
            c.subject().iter_common_name().any(|cn| cn.as_str().is_ok_and(|s| s == want.to_string()))
        }
        ServerName::DnsName(d) => {
            let want = d.as_ref().to_ascii_lowercase();
            let matches = |pat: &str| {
                let pat = pat.to_ascii_lowercase();
                match pat.strip_prefix("*.") {
                    Some(rest) => want.split_once('.').is_some_and(|(_, tail)| tail == rest),
                    None => pat == want,
                }
            };
            if let Some(san) = &san {
                return san.value.general_names.iter().any(|g| matches!(g, GeneralName::DNSName(n) if matches(n)));
            }
            c.subject().iter_common_name().any(|cn| cn.as_str().is_ok_and(matches))
        }
        _ => false,
    }
}

/// How a server treats client certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ClientAuth {
    /// Do not ask for a client certificate.
    #[default]
    None,
    /// Ask for one; a client may send none, but a certificate it sends must chain to the CA.
    Optional,
    /// Ask for one; the client must send a certificate that chains to the CA (the handshake fails
    /// otherwise).
    Required,
    /// Ask for one and accept any certificate, or none, without checking who issued it: Node's
    /// `requestCert: true, rejectUnauthorized: false`. The handshake signature is still checked,
    /// so a client that sends a certificate holds its private key. Leave the decision to a
    /// `verify_client` hook.
    AnyCertificate,
}

impl std::str::FromStr for ClientAuth {
    type Err = crate::Error;

    /// The names faces use: `"none"`, `"optional"`, `"required"` or `"any"`; anything else is an
    /// [`ErrorKind::InvalidArgument`](crate::ErrorKind::InvalidArgument) error.
    fn from_str(s: &str) -> crate::Result<ClientAuth> {
        match s {
            "none" => Ok(ClientAuth::None),
            "optional" => Ok(ClientAuth::Optional),
            "required" => Ok(ClientAuth::Required),
            "any" => Ok(ClientAuth::AnyCertificate),
            other => Err(crate::Error::invalid(format!("client_auth must be none, optional, required or any, not {other:?}"))),
        }
    }
}

/// The server side: verifies client certificates per [`ClientAuth`].
#[derive(Debug)]
pub(crate) struct ClientVerifier {
    pub(crate) anchors: Anchors,
    pub(crate) mode: ClientAuth,
    pub(crate) algs: WebPkiSupportedAlgorithms,
}

impl ClientVerifier {
    pub(crate) fn new(anchors: Anchors, mode: ClientAuth, provider: &CryptoProvider) -> Arc<ClientVerifier> {
        Arc::new(ClientVerifier { anchors, mode, algs: provider.signature_verification_algorithms })
    }
}

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.mode != ClientAuth::None
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mode == ClientAuth::Required
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        match self.mode {
            ClientAuth::AnyCertificate | ClientAuth::None => &[],
            _ => &self.anchors.subjects,
        }
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        match self.mode {
            ClientAuth::AnyCertificate => {
                parse(end_entity.as_ref())?;
            }
            _ => verify_chain(&self.anchors, end_entity, intermediates, now)?,
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls12_refused()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13(&self.algs, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// The client side: verifies the server's certificate chain against the CA.
#[derive(Debug)]
pub(crate) struct ServerVerifier {
    pub(crate) anchors: Anchors,
    /// Accept any server certificate (Node's `rejectUnauthorized: false`).
    pub(crate) accept_any: bool,
    /// Also check that the certificate names the host dialled.
    pub(crate) check_name: bool,
    pub(crate) algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.accept_any {
            parse(end_entity.as_ref())?;
            return Ok(ServerCertVerified::assertion());
        }
        verify_chain(&self.anchors, end_entity, intermediates, now)?;
        if self.check_name && !cert_matches_name(end_entity.as_ref(), server_name) {
            return Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForName));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls12_refused()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13(&self.algs, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}
