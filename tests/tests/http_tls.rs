//! HTTPS with client certificates: the client certificate's fingerprint reaches the handler.
//! Interop both ways with grenache-nodejs-http 1.0.2 using the reference's own test certificates
//! (X.509 v1, read from its npm package at test time), and Rust↔Rust with certificates made at
//! test time by rcgen.

#![allow(clippy::unwrap_used)]

mod link_support;

use std::sync::Arc;
use std::time::Duration;

use grenache::ErrorKind;
use grenache::link::Link;
use grenache::rpc::{ClientTransport, PeerRpcClient, PeerRpcClientConfig, RequestOptions};
use grenache::tls::{ClientAuth, ClientTls, PeerCert, ServerTls, certs_from_pem};
use grenache::transport::http::{BodyStream, HttpClient, HttpClientConfig, HttpServer, HttpServerConfig};
use link_support::{Grapes, NodeClient, node_server, rust_server};
use serde_json::{Value, json};

/// The fingerprint of the reference's `client1-crt.pem` (its test suite asserts it).
const CLIENT1_FP: &str = "E1:63:C1:46:B3:B6:46:3B:5E:92:98:34:40:A1:AB:FB:0E:92:D0:76";

fn cert_path(name: &str) -> String {
    grenache_e2e::interop_dir().join("node_modules/grenache-nodejs-http/test/certs").join(name).to_string_lossy().into_owned()
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(cert_path(name)).expect("reference test certificate")
}

fn reference_server_tls() -> Arc<rustls::ServerConfig> {
    ServerTls::builder(read("server-crt.pem"), read("server-key.pem"))
        .client_ca_pem(read("ca-crt.pem"))
        .client_auth(ClientAuth::Required)
        .build()
        .unwrap()
        .config()
}

fn reference_client_tls() -> Arc<rustls::ClientConfig> {
    ClientTls::builder()
        .ca_pem(read("ca-crt.pem"))
        .client_cert_pem(read("client1-crt.pem"), read("client1-key.pem"))
        .build()
        .unwrap()
        .config()
}

fn opts() -> RequestOptions {
    RequestOptions { timeout: Some(Duration::from_secs(20)), ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_tls_node_client_to_rust_server_reference_certs() {
    let g = Grapes::start(false).await;
    let link = g.link();
    let cfg = HttpServerConfig { tls: Some(reference_server_tls()), ..Default::default() };
    let _srv = rust_server(&link, "rpc_tls_rust", cfg, 0, false).await;
    let (k, c, ca) = (cert_path("client1-key.pem"), cert_path("client1-crt.pem"), cert_path("ca-crt.pem"));
    let mut node = NodeClient::start(&g.urls[0], &["--key", &k, "--cert", &c, "--ca", &ca]).await;
    // peer-rpc-server-secure.js: request and map, the handler sees client1's fingerprint.
    let (err, r) =
        node.call(json!({"op": "request", "key": "rpc_tls_rust", "payload": {"hello": "world"}, "opts": {"timeout": 10000}})).await;
    assert_eq!(err, None);
    assert_eq!(r["payload"], json!({"hello": "world"}));
    assert_eq!(r["fingerprint"], CLIENT1_FP);
    let (err, r) = node.call(json!({"op": "map", "key": "rpc_tls_rust", "payload": "hello", "opts": {"timeout": 10000}})).await;
    assert_eq!(err, None);
    assert_eq!(r[0]["fingerprint"], CLIENT1_FP);
    // peer-rpc-server-secure-buffered.js: compress and streaming over TLS.
    let (err, r) =
        node.call(json!({"op": "request", "key": "rpc_tls_rust", "payload": "hello", "opts": {"timeout": 10000, "compress": true}})).await;
    assert_eq!(err, None);
    assert_eq!((r["payload"].clone(), r["meta"]["compress"].clone()), (json!("hello"), json!(true)));
    let (err, r) = node
        .call(json!({"op": "stream", "key": "rpc_tls_rust", "body": "[\"UUID\",\"ignored\",\"hello\"]",
            "opts": {"timeout": 10000, "headers": {"_a": "uploadPublic", "_ar": {"foo": "bar"}}}}))
        .await;
    assert_eq!(err, None);
    let reply: Value = serde_json::from_str(r.as_str().unwrap()).unwrap();
    assert_eq!(reply[2]["meta"]["isStream"], true);
    assert_eq!(reply[2]["meta"]["action"], "uploadPublic");
    assert_eq!(reply[2]["fingerprint"], CLIENT1_FP);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_tls_rust_client_to_node_server_reference_certs() {
    let g = Grapes::start(false).await;
    let (k, c, ca) = (cert_path("server-key.pem"), cert_path("server-crt.pem"), cert_path("ca-crt.pem"));
    let (_n, port) = node_server(&g.urls[0], "rpc_tls_node", &["--key", &k, "--cert", &c, "--ca", &ca]).await;
    let http = HttpClient::new(HttpClientConfig { tls: Some(reference_client_tls()), ..Default::default() });
    let client = PeerRpcClient::new(g.link(), Arc::new(http.clone()), PeerRpcClientConfig::default());
    let r = client.request("rpc_tls_node", &json!({"hello": "world"}), &opts()).await.unwrap();
    assert_eq!(r["from"], "node");
    assert_eq!(r["payload"], json!({"hello": "world"}));
    assert_eq!(r["fingerprint"], CLIENT1_FP);
    let r = client.map("rpc_tls_node", "hello", &opts()).await.unwrap();
    assert_eq!(r[0]["fingerprint"], CLIENT1_FP);
    let r = client.request("rpc_tls_node", "hello", &RequestOptions { compress: true, ..opts() }).await.unwrap();
    assert_eq!(r["meta"]["compress"], true);
    // Connections are pooled: 20 sequential requests reuse the TLS connection(s) already open
    // (the reference makes a new TLS connection per request, which would be 23 here). The pool
    // can open another one when a request starts while the previous connection is still being
    // handed back (seen with 3 on a loaded 2-core machine), hence a bound well below 23.
    for _ in 0..20 {
        client.request("rpc_tls_node", "x", &opts()).await.unwrap();
    }
    let live = http.active_connections(&format!("127.0.0.1:{port}"));
    assert!((1..=4).contains(&live), "{live} connections for 23 requests");
    // Streaming mode over TLS to Node's buffered server.
    let b: BodyStream = Box::pin(futures_util::stream::once(async { Ok(bytes::Bytes::from_static(b"[\"UUID\",\"ignored\",\"hello\"]")) }));
    let resp = http
        .request_stream(&format!("127.0.0.1:{port}"), "rpc_tls_node", &[("_a", "uploadPublic")], b, Some(Duration::from_secs(10)))
        .await
        .unwrap();
    let reply: Value = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(reply[2]["meta"]["isStream"], true);
    assert_eq!(reply[2]["fingerprint"], CLIENT1_FP);
}

struct Pki {
    ca_pem: String,
    server: (String, String),
    client: (String, String),
}

fn rcgen_pki() -> Pki {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "test-ca");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::DigitalSignature];
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let leaf = |cn: &str| {
        let mut p = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        let k = rcgen::KeyPair::generate().unwrap();
        let c = p.signed_by(&k, &issuer).unwrap();
        (c.pem(), k.serialize_pem())
    };
    Pki { ca_pem: ca_cert.pem(), server: leaf("server"), client: leaf("client1") }
}

#[tokio::test]
async fn http_tls_rust_to_rust_required_client_cert() {
    let pki = rcgen_pki();
    let server_tls = ServerTls::builder(pki.server.0.clone(), pki.server.1.clone())
        .client_ca_pem(pki.ca_pem.clone())
        .client_auth(ClientAuth::Required)
        .build()
        .unwrap();
    let http = HttpServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        Arc::new(link_support::echo_handler(0)),
        HttpServerConfig { tls: Some(server_tls.config()), ..Default::default() },
    )
    .await
    .unwrap();
    let dest = format!("127.0.0.1:{}", http.port());
    let no_grape = Link::with_grape(format!("http://127.0.0.1:{}", grenache_e2e::free_tcp_port())).unwrap();
    let client_tls =
        ClientTls::builder().ca_pem(pki.ca_pem.clone()).client_cert_pem(pki.client.0.clone(), pki.client.1.clone()).build().unwrap();
    let https = HttpClient::new(HttpClientConfig { tls: Some(client_tls.config()), ..Default::default() });
    let c = PeerRpcClient::new(no_grape.clone(), Arc::new(https), PeerRpcClientConfig::default());
    let o = RequestOptions { dest: Some(dest.clone()), ..opts() };
    let want = PeerCert::from_der(certs_from_pem(pki.client.0.as_bytes()).unwrap()[0].to_vec()).fingerprint;
    let r = c.request("k", "hello", &o).await.unwrap();
    assert_eq!(r["fingerprint"], want);
    let r = c.request("k", "hello", &RequestOptions { compress: true, ..o.clone() }).await.unwrap();
    assert_eq!((r["payload"].clone(), r["fingerprint"].clone()), (json!("hello"), json!(want)));

    // A client without a certificate is refused at the handshake.
    let anon = ClientTls::builder().ca_pem(pki.ca_pem.clone()).build().unwrap();
    let c2 = PeerRpcClient::new(
        no_grape.clone(),
        Arc::new(HttpClient::new(HttpClientConfig { tls: Some(anon.config()), ..Default::default() })),
        PeerRpcClientConfig::default(),
    );
    let e = c2.request("k", "hello", &o).await.unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::TlsHandshake | ErrorKind::Closed | ErrorKind::Connect), "{e}");
    // A plain-HTTP client gets no answer it can parse.
    let c3 = PeerRpcClient::new(no_grape, Arc::new(HttpClient::default()), PeerRpcClientConfig::default());
    assert!(c3.request("k", "hello", &RequestOptions { timeout: Some(Duration::from_secs(5)), ..o }).await.is_err());
}
