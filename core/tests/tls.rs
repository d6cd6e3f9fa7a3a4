//! TLS builders: v1 and v3 chains accepted, wrong CA and expired certificates refused,
//! fingerprints equal to `openssl x509 -fingerprint -sha1`. Handshakes run over in-memory pipes.

use grenache_test_certs as tls_certs;

use std::time::Duration;

use grenache::ErrorKind;
use grenache::tls::{ClientAuth, ClientTls, PeerCert, ServerTls, client_cert, server_cert, server_name};
use tls_certs::{CertKey, Pki, RcgenCa, openssl_fingerprint, openssl_pki, openssl_version_line};

type Side = Result<Option<PeerCert>, String>;

/// Runs one handshake; returns (what the server saw, what the client saw).
async fn handshake(server: &ServerTls, client: &ClientTls, name: &str) -> (Side, Side) {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let acc = server.acceptor();
    let conn = client.connector();
    let sname = server_name(name).expect("server name");
    // Both streams are kept until both sides finish: TLS 1.3 servers write session tickets after
    // the client is done, which fails with "broken pipe" if the client end is already gone.
    let fut = async {
        tokio::join!(
            async {
                match acc.accept(a).await {
                    Ok(s) => Ok((client_cert(&s), s)),
                    Err(e) => Err(e.to_string()),
                }
            },
            async {
                match conn.connect(sname, b).await {
                    Ok(s) => Ok((server_cert(&s), s)),
                    Err(e) => Err(e.to_string()),
                }
            }
        )
    };
    let (s, c) = tokio::time::timeout(Duration::from_secs(20), fut).await.expect("handshake hung");
    (s.map(|(cert, _stream)| cert), c.map(|(cert, _stream)| cert))
}

fn server_tls(pki: &Pki, mode: ClientAuth) -> ServerTls {
    ServerTls::builder(pki.server.cert_pem.clone(), pki.server.key_pem.clone())
        .client_ca_pem(pki.ca.cert_pem.clone())
        .client_auth(mode)
        .build()
        .expect("server config")
}

fn client_tls(ca: &CertKey, cert: Option<&CertKey>) -> ClientTls {
    let mut b = ClientTls::builder().ca_pem(ca.cert_pem.clone());
    if let Some(c) = cert {
        b = b.client_cert_pem(c.cert_pem.clone(), c.key_pem.clone());
    }
    b.build().expect("client config")
}

fn der_of(pem: &str) -> Vec<u8> {
    grenache::tls::certs_from_pem(pem.as_bytes()).expect("pem")[0].to_vec()
}

async fn mutual_ok(pki: &Pki) {
    let server = server_tls(pki, ClientAuth::Required);
    let client = client_tls(&pki.ca, Some(&pki.client));
    let (s, c) = handshake(&server, &client, "127.0.0.1").await;
    let seen_by_server = s.expect("server handshake").expect("client cert");
    let seen_by_client = c.expect("client handshake").expect("server cert");
    assert_eq!(seen_by_server.der, der_of(&pki.client.cert_pem));
    assert_eq!(seen_by_server.subject_cn().as_deref(), Some("client1"));
    assert_eq!(seen_by_client.der, der_of(&pki.server.cert_pem));
}

#[tokio::test]
async fn tls_v3_ecdsa_chain_is_accepted_both_ways() {
    mutual_ok(&RcgenCa::pki("ca-v3")).await;
}

#[tokio::test]
async fn tls_v1_rsa_chain_is_accepted_both_ways() {
    let Some(pki) = openssl_pki(true) else {
        eprintln!("SKIP: openssl not installed");
        return;
    };
    assert_eq!(openssl_version_line(&pki.client.cert_pem).as_deref(), Some("Version: 1 (0x0)"));
    assert_eq!(openssl_version_line(&pki.ca.cert_pem).as_deref(), Some("Version: 1 (0x0)"));
    mutual_ok(&pki).await;
}

#[tokio::test]
async fn tls_v3_rsa_chain_is_accepted_both_ways() {
    let Some(pki) = openssl_pki(false) else {
        eprintln!("SKIP: openssl not installed");
        return;
    };
    assert_eq!(openssl_version_line(&pki.client.cert_pem).as_deref(), Some("Version: 3 (0x2)"));
    mutual_ok(&pki).await;
}

#[tokio::test]
async fn tls_client_cert_from_wrong_ca_is_refused() {
    let pki = RcgenCa::pki("ca-right");
    let other = RcgenCa::new("ca-wrong");
    let server = server_tls(&pki, ClientAuth::Required);
    let client = client_tls(&pki.ca, Some(&other.leaf("intruder")));
    let (s, _c) = handshake(&server, &client, "127.0.0.1").await;
    let err = s.expect_err("server must refuse a client cert from another CA");
    assert!(err.contains("UnknownIssuer") || err.contains("issuer"), "{err}");
}

#[tokio::test]
async fn tls_v1_client_cert_from_wrong_ca_is_refused() {
    let (Some(pki), Some(other)) = (openssl_pki(true), openssl_pki(true)) else {
        eprintln!("SKIP: openssl not installed");
        return;
    };
    // Same CA name, different key: the signature check must catch it.
    let server = server_tls(&pki, ClientAuth::Required);
    let client = client_tls(&pki.ca, Some(&other.client));
    let (s, _c) = handshake(&server, &client, "127.0.0.1").await;
    let err = s.expect_err("server must refuse");
    assert!(err.contains("BadSignature") || err.contains("signature"), "{err}");
}

#[tokio::test]
async fn tls_server_cert_from_wrong_ca_is_refused() {
    let pki = RcgenCa::pki("ca-right");
    let other = RcgenCa::new("ca-wrong");
    let server = server_tls(&pki, ClientAuth::None);
    let client = client_tls(&other.cert_key(), None);
    let (_s, c) = handshake(&server, &client, "127.0.0.1").await;
    let err = c.expect_err("client must refuse a server cert from another CA");
    assert!(err.contains("UnknownIssuer"), "{err}");
}

#[tokio::test]
async fn tls_expired_certificates_are_refused() {
    let ca = RcgenCa::new("ca-exp");
    let pki = Pki { ca: ca.cert_key(), server: ca.leaf("server"), client: ca.leaf_valid("old", 2001, 2002), client2: ca.leaf("c2") };
    let server = server_tls(&pki, ClientAuth::Required);
    let client = client_tls(&pki.ca, Some(&pki.client));
    let (s, _) = handshake(&server, &client, "127.0.0.1").await;
    assert!(s.expect_err("expired client cert").contains("Expired"));

    let pki2 = Pki { server: ca.leaf_valid("server-old", 2001, 2002), ..pki.clone() };
    let server = server_tls(&pki2, ClientAuth::None);
    let client = client_tls(&pki2.ca, None);
    let (_, c) = handshake(&server, &client, "127.0.0.1").await;
    assert!(c.expect_err("expired server cert").contains("Expired"));

    let pki3 = Pki { client: ca.leaf_valid("future", 2090, 2100), ..pki };
    let server = server_tls(&pki3, ClientAuth::Required);
    let client = client_tls(&pki3.ca, Some(&pki3.client));
    let (s, _) = handshake(&server, &client, "127.0.0.1").await;
    assert!(s.expect_err("not yet valid").contains("NotValidYet"));
}

#[tokio::test]
async fn tls_fingerprint_matches_openssl() {
    let pki = RcgenCa::pki("ca-fp");
    let server = server_tls(&pki, ClientAuth::Required);
    let client = client_tls(&pki.ca, Some(&pki.client));
    let (s, _) = handshake(&server, &client, "127.0.0.1").await;
    let cert = s.expect("ok").expect("cert");
    assert_eq!(cert.fingerprint.len(), 59);
    assert!(cert.fingerprint.chars().all(|c| c == ':' || c.is_ascii_digit() || c.is_ascii_uppercase()));
    if let Some(fp) = openssl_fingerprint(&pki.client.cert_pem) {
        assert_eq!(cert.fingerprint, fp);
    } else {
        eprintln!("SKIP openssl comparison: openssl not installed");
    }
    if let Some(v1) = openssl_pki(true) {
        let pc = PeerCert::from_der(der_of(&v1.client.cert_pem));
        assert_eq!(Some(pc.fingerprint), openssl_fingerprint(&v1.client.cert_pem));
    }
}

#[tokio::test]
async fn tls_optional_and_any_certificate_modes() {
    let pki = RcgenCa::pki("ca-opt");
    // Optional: no certificate is fine, a good one is seen.
    let server = server_tls(&pki, ClientAuth::Optional);
    let (s, _) = handshake(&server, &client_tls(&pki.ca, None), "127.0.0.1").await;
    assert_eq!(s.expect("no cert is fine"), None);
    let (s, _) = handshake(&server, &client_tls(&pki.ca, Some(&pki.client)), "127.0.0.1").await;
    assert!(s.expect("good cert").is_some());
    // Required: no certificate fails.
    let server = server_tls(&pki, ClientAuth::Required);
    let (s, _) = handshake(&server, &client_tls(&pki.ca, None), "127.0.0.1").await;
    assert!(s.is_err());
    // AnyCertificate: a stranger's certificate is handed over for the hook to judge.
    let server = server_tls(&pki, ClientAuth::AnyCertificate);
    let stranger = RcgenCa::new("other").leaf("stranger");
    let (s, _) = handshake(&server, &client_tls(&pki.ca, Some(&stranger)), "127.0.0.1").await;
    assert_eq!(s.expect("accepted").and_then(|c| c.subject_cn()).as_deref(), Some("stranger"));
}

#[tokio::test]
async fn tls_server_name_check_is_optional() {
    let pki = RcgenCa::pki("ca-name");
    let server = server_tls(&pki, ClientAuth::None);
    let strict = ClientTls::builder().ca_pem(pki.ca.cert_pem.clone()).check_server_name(true).build().expect("cfg");
    let (_, c) = handshake(&server, &strict, "127.0.0.1").await;
    assert!(c.is_ok(), "SAN IP matches");
    let (_, c) = handshake(&server, &strict, "example.org").await;
    assert!(c.expect_err("wrong name").contains("NotValidForName"));
    let lax = client_tls(&pki.ca, None);
    let (_, c) = handshake(&server, &lax, "example.org").await;
    assert!(c.is_ok(), "name not checked by default");
    let any = ClientTls::builder().danger_accept_any_server_cert().build().expect("cfg");
    let other = RcgenCa::pki("another");
    let (_, c) = handshake(&server_tls(&other, ClientAuth::None), &any, "127.0.0.1").await;
    assert!(c.is_ok());
}

#[test]
fn tls_config_errors_are_typed() {
    let pki = RcgenCa::pki("ca-err");
    let e = ServerTls::builder(pki.server.cert_pem.clone(), pki.server.key_pem.clone())
        .client_auth(ClientAuth::Required)
        .build()
        .expect_err("no CA");
    assert_eq!(e.kind(), ErrorKind::TlsConfig);
    let e = ServerTls::builder("garbage", pki.server.key_pem.clone()).build().expect_err("bad cert");
    assert_eq!(e.kind(), ErrorKind::Certificate);
    let e = ServerTls::builder(pki.server.cert_pem.clone(), "garbage").build().expect_err("bad key");
    assert_eq!(e.kind(), ErrorKind::Certificate);
    let e = ClientTls::builder().build().expect_err("no CA");
    assert_eq!(e.kind(), ErrorKind::TlsConfig);
}
