//! TLS settings for servers and clients.

use std::ffi::c_char;

use grenache_core::embed::{ClientTls, ServerTls};
use grenache_core::tls::ClientAuth;

use crate::error::grenache_result;
use crate::panic::ffi_panic_boundary;
use crate::ptr::{try_box, try_str, write_handle};

/// How a TLS server treats client certificates (the `client_auth` argument of
/// `grenache_server_tls_new`).
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum grenache_client_auth {
    /// Do not ask for a client certificate.
    None = 0,
    /// Ask for one; a certificate the client sends must chain to the CA.
    Optional = 1,
    /// The client must send a certificate that chains to the CA.
    Required = 2,
    /// Ask for one and accept any (or none) without checking its issuer, like Node's
    /// `requestCert: true, rejectUnauthorized: false`; decide in the handler with
    /// `grenache_request_fingerprint`.
    Any = 3,
}

/// TLS settings of a server: its certificate and key, and how it treats client certificates.
/// Immutable once built; may be shared by several servers. Free with `grenache_server_tls_free`.
#[derive(Debug)]
pub struct grenache_server_tls {
    pub(crate) inner: ServerTls,
}

/// TLS settings of a client: the CA that server certificates must chain to and an optional
/// client certificate. Immutable once built. Free with `grenache_client_tls_free`.
#[derive(Debug)]
pub struct grenache_client_tls {
    pub(crate) inner: ClientTls,
}

fn opt_str<'a>(p: *const c_char) -> Result<Option<&'a str>, grenache_result> {
    // SAFETY: the caller passes NULL or memory valid for the given length (or up to its NUL) for this call, as the header requires; NULL is checked.
    if p.is_null() { Ok(None) } else { unsafe { crate::ptr::str_from_c(p) }.map(Some) }
}

/// Builds server TLS settings from PEM text: `cert_pem` (the chain), `key_pem`, `client_ca_pem`
/// (NULL: none) and `client_auth` (one of `GRENACHE_CLIENT_AUTH_*`). Writes `*out` (owned by the
/// caller) on success. Errors: `NULL_PARAMETER`, `INVALID_UTF8`, `INVALID_ARGUMENT` (unknown
/// `client_auth`), `CERTIFICATE` (unparsable PEM), `TLS_CONFIG`.
#[unsafe(no_mangle)]
pub extern "C" fn grenache_server_tls_new(
    cert_pem: *const c_char,
    key_pem: *const c_char,
    client_ca_pem: *const c_char,
    client_auth: u32,
    out: *mut *mut grenache_server_tls,
) -> grenache_result {
    ffi_panic_boundary! {
        let cert = try_str!(cert_pem);
        let key = try_str!(key_pem);
        let ca = match opt_str(client_ca_pem) { Ok(c) => c, Err(e) => return e };
        if out.is_null() {
            return grenache_result::NullParameter;
        }
        let mode = match client_auth {
            0 => ClientAuth::None,
            1 => ClientAuth::Optional,
            2 => ClientAuth::Required,
            3 => ClientAuth::AnyCertificate,
            _ => return grenache_result::InvalidArgument,
        };
        let mut b = ServerTls::builder(cert.as_bytes().to_vec(), key.as_bytes().to_vec());
        if let Some(ca) = ca {
            b = b.client_ca_pem(ca.as_bytes().to_vec());
        }
        // SAFETY: the out-pointer is the caller's, checked non-NULL by the write helper or before; the header says it must point to writable memory.
        unsafe { write_handle(out, b.client_auth(mode).build(), |inner| grenache_server_tls { inner }) }
    }
}

/// Frees server TLS settings (servers built with them keep their own copy). NULL is ignored.
#[unsafe(no_mangle)]
pub extern "C" fn grenache_server_tls_free(tls: *mut grenache_server_tls) {
    ffi_panic_boundary! {
        drop(try_box!(tls));
    }
}

/// Builds client TLS settings from PEM text: `ca_pem` (the CA that server certificates must chain
/// to), and optionally a client certificate `cert_pem` + `key_pem` (both NULL for none). Server
/// names are not checked (Grenache peers are addressed by IP). Writes `*out` (owned by the
/// caller) on success. Errors: `NULL_PARAMETER`, `INVALID_UTF8`, `INVALID_ARGUMENT` (only one of
/// cert/key), `CERTIFICATE`, `TLS_CONFIG`.
#[unsafe(no_mangle)]
pub extern "C" fn grenache_client_tls_new(
    ca_pem: *const c_char,
    cert_pem: *const c_char,
    key_pem: *const c_char,
    out: *mut *mut grenache_client_tls,
) -> grenache_result {
    ffi_panic_boundary! {
        let ca = try_str!(ca_pem);
        let cert = match opt_str(cert_pem) { Ok(c) => c, Err(e) => return e };
        let key = match opt_str(key_pem) { Ok(c) => c, Err(e) => return e };
        if out.is_null() {
            return grenache_result::NullParameter;
        }
        let mut b = ClientTls::builder().ca_pem(ca.as_bytes().to_vec()).check_server_name(false);
        match (cert, key) {
            (Some(c), Some(k)) => b = b.client_cert_pem(c.as_bytes().to_vec(), k.as_bytes().to_vec()),
            (None, None) => {}
            _ => return grenache_result::InvalidArgument,
        }
        // SAFETY: the out-pointer is the caller's, checked non-NULL by the write helper or before; the header says it must point to writable memory.
        unsafe { write_handle(out, b.build(), |inner| grenache_client_tls { inner }) }
    }
}

/// Frees client TLS settings (clients built with them keep their own copy). NULL is ignored.
#[unsafe(no_mangle)]
pub extern "C" fn grenache_client_tls_free(tls: *mut grenache_client_tls) {
    ffi_panic_boundary! {
        drop(try_box!(tls));
    }
}
