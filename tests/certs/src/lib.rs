//! Test certificates, made at run time (no private key is ever committed).
//!
//! * [`RcgenCa`]: ECDSA P-256, X.509 v3, in-process (rcgen), with any validity period;
//! * [`openssl_pki`]: RSA-2048 / SHA-256, X.509 **v1** (CN only, like the reference's test
//!   certificates) or v3, made with the `openssl` command line tool when it is installed.
//!
//! A dev-dependency of the core, the C ABI and the end-to-end tests (and the `ws_ssl_whitelist`
//! example), used under the name `tls_certs`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

/// A certificate (chain) and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct CertKey {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key, PEM (PKCS#8).
    pub key_pem: String,
}

/// A CA plus a server and two client certificates it signed.
#[derive(Debug, Clone)]
pub struct Pki {
    /// The CA certificate and key.
    pub ca: CertKey,
    /// A server certificate (CN `server`; the v3 kinds have SAN `127.0.0.1`, `localhost`).
    pub server: CertKey,
    /// A client certificate, CN `client1`.
    pub client: CertKey,
    /// A second client certificate, CN `client2`.
    pub client2: CertKey,
}

/// An in-process CA (rcgen, ECDSA P-256, v3).
pub struct RcgenCa {
    params: rcgen::CertificateParams,
    key: rcgen::KeyPair,
    /// The CA certificate, PEM.
    pub cert_pem: String,
}

impl std::fmt::Debug for RcgenCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RcgenCa").field("cert_pem", &self.cert_pem).finish_non_exhaustive()
    }
}

impl RcgenCa {
    /// A new self-signed CA named `cn`, valid from 2000 to 2100.
    pub fn new(cn: &str) -> RcgenCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::DigitalSignature];
        params.not_before = rcgen::date_time_ymd(2000, 1, 1);
        params.not_after = rcgen::date_time_ymd(2100, 1, 1);
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("self-signed");
        RcgenCa { cert_pem: cert.pem(), params, key }
    }

    /// The CA as a [`CertKey`].
    pub fn cert_key(&self) -> CertKey {
        CertKey { cert_pem: self.cert_pem.clone(), key_pem: self.key.serialize_pem() }
    }

    /// A leaf certificate named `cn` (SAN `127.0.0.1` and `localhost`) valid for the given years.
    pub fn leaf_valid(&self, cn: &str, from_year: i32, to_year: i32) -> CertKey {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).expect("params");
        params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        params.not_before = rcgen::date_time_ymd(from_year, 1, 1);
        params.not_after = rcgen::date_time_ymd(to_year, 1, 1);
        let key = rcgen::KeyPair::generate().expect("key");
        let issuer = rcgen::Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).expect("signed");
        CertKey { cert_pem: cert.pem(), key_pem: key.serialize_pem() }
    }

    /// A leaf certificate named `cn`, valid from 2000 to 2100.
    pub fn leaf(&self, cn: &str) -> CertKey {
        self.leaf_valid(cn, 2000, 2100)
    }

    /// A CA, a server and two clients, all v3 ECDSA.
    pub fn pki(cn: &str) -> Pki {
        let ca = RcgenCa::new(cn);
        Pki { server: ca.leaf("server"), client: ca.leaf("client1"), client2: ca.leaf("client2"), ca: ca.cert_key() }
    }
}

/// True when the `openssl` command line tool runs.
pub fn openssl_available() -> bool {
    Command::new("openssl").arg("version").output().map(|o| o.status.success()).unwrap_or(false)
}

/// A temporary directory, removed when dropped.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// A new, empty, uniquely named directory under the system temp dir.
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let p = std::env::temp_dir().join(format!("grenache-{tag}-{}-{}-{nanos}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }

    /// The path of `name` inside the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Writes `contents` to `name` and returns its path.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, contents).expect("write temp file");
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().expect("run openssl");
    assert!(out.status.success(), "openssl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

fn read(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).expect("read openssl output")
}

/// RSA-2048 / SHA-256 certificates made with the `openssl` CLI: X.509 v1 with CN only when `v1`,
/// else v3 (CA with `basicConstraints CA:TRUE`, leaves with SAN `127.0.0.1`, `localhost`).
/// `None` when `openssl` is not installed.
pub fn openssl_pki(v1: bool) -> Option<Pki> {
    if !openssl_available() {
        return None;
    }
    let tmp = TempDir::new("pki");
    let d = tmp.0.as_path();
    std::fs::write(d.join("ca.ext"), "basicConstraints=critical,CA:TRUE\nkeyUsage=keyCertSign,digitalSignature\n").ok()?;
    std::fs::write(d.join("leaf.ext"), "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n").ok()?;
    run(d, &["genrsa", "-out", "ca.key", "2048"]);
    run(d, &["req", "-new", "-key", "ca.key", "-subj", "/CN=grenache-test-ca", "-out", "ca.csr"]);
    let mut ca_args = vec!["x509", "-req", "-in", "ca.csr", "-signkey", "ca.key", "-days", "3650", "-sha256", "-out", "ca.crt"];
    if !v1 {
        ca_args.extend(["-extfile", "ca.ext"]);
    }
    run(d, &ca_args);
    let leaf = |cn: &str, serial: &str| -> CertKey {
        let (key, csr, crt) = (format!("{cn}.key"), format!("{cn}.csr"), format!("{cn}.crt"));
        run(d, &["genrsa", "-out", &key, "2048"]);
        run(d, &["req", "-new", "-key", &key, "-subj", &format!("/CN={cn}"), "-out", &csr]);
        let mut args = vec![
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-set_serial",
            serial,
            "-days",
            "3650",
            "-sha256",
            "-out",
            &crt,
        ];
        if !v1 {
            args.extend(["-extfile", "leaf.ext"]);
        }
        run(d, &args);
        CertKey { cert_pem: read(d, &crt), key_pem: read(d, &key) }
    };
    let server = leaf("server", "1001");
    let client = leaf("client1", "1002");
    let client2 = leaf("client2", "1003");
    Some(Pki { ca: CertKey { cert_pem: read(d, "ca.crt"), key_pem: read(d, "ca.key") }, server, client, client2 })
}

/// `openssl x509 -fingerprint -sha1` of a PEM certificate (`AA:BB:...`), if `openssl` runs.
pub fn openssl_fingerprint(cert_pem: &str) -> Option<String> {
    let tmp = TempDir::new("fp");
    let p = tmp.write("c.pem", cert_pem);
    let out = Command::new("openssl").args(["x509", "-noout", "-fingerprint", "-sha1", "-in"]).arg(&p).output().ok()?;
    let s = String::from_utf8(out.stdout).ok()?;
    Some(s.trim().split_once('=')?.1.to_string())
}

/// The X.509 version line of `openssl x509 -text` (e.g. `Version: 1 (0x0)`), if `openssl` runs.
pub fn openssl_version_line(cert_pem: &str) -> Option<String> {
    let tmp = TempDir::new("ver");
    let p = tmp.write("c.pem", cert_pem);
    let out = Command::new("openssl").args(["x509", "-noout", "-text", "-in"]).arg(&p).output().ok()?;
    let s = String::from_utf8(out.stdout).ok()?;
    s.lines().find(|l| l.trim_start().starts_with("Version:")).map(|l| l.trim().to_string())
}
