//! The reference's "SSL whitelist" example over secure WebSocket: per-certificate permissions.
//!
//! A `wss://` server requires client certificates from its CA. Its `verify_client` hook admits
//! only whitelisted certificates (others get `HTTP 401` at the upgrade), and its handler allows
//! each fingerprint a set of actions: `client1` may `ping` but not `deleteHarddisk`.
//! Certificates are made at run time (nothing is read from disk).
//!
//! ```text
//! cargo run -p grenache-core --example ws_ssl_whitelist
//! ```
//!
//! With `--grape http://127.0.0.1:30001` the server also announces `rpc_whitelist` and the client
//! finds it through the Grape, like the reference's examples.

#[cfg(not(test))]
use grenache_test_certs as tls_certs;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use grenache::rpc::{OutgoingRequest, Reply, Request};
use grenache::tls::{ClientAuth, ClientTls, PeerCert, ServerTls, certs_from_pem, verify_client};
use grenache::transport::ws::{WsClient, WsClientConfig, WsServer, WsServerConfig};
use serde_json::{Value, json};

/// What the demo saw, for the test.
#[derive(Debug)]
pub struct Outcome {
    /// The reply to `ping` from the whitelisted client.
    pub ping: Result<Value, String>,
    /// The reply to `deleteHarddisk` from the whitelisted client.
    pub delete: Result<Value, String>,
    /// What a client with a valid but unlisted certificate got.
    pub stranger: Result<Value, String>,
}

/// Fingerprint → allowed actions.
type Permissions = HashMap<String, HashSet<&'static str>>;

fn handler(perms: Arc<Permissions>) -> impl grenache::rpc::Handler {
    move |req: Request, reply: Reply| {
        let action = req.payload.get("action").and_then(Value::as_str).unwrap_or("");
        let allowed = req.info.cert.as_ref().and_then(|c| perms.get(&c.fingerprint)).is_some_and(|actions| actions.contains(action));
        match (allowed, action) {
            (false, _) => reply.err("ERR_FORBIDDEN"),
            (true, "ping") => reply.ok(json!("pong")),
            (true, "deleteHarddisk") => reply.ok(json!("deleted (not really)")),
            (true, _) => reply.err("ERR_UNKNOWN_ACTION"),
        }
    }
}

fn fingerprint(cert_pem: &str) -> Result<String, String> {
    let der = certs_from_pem(cert_pem.as_bytes()).map_err(|e| e.to_string())?;
    Ok(PeerCert::from_der(der.first().ok_or("no certificate")?.to_vec()).fingerprint)
}

async fn call(client: &WsClient, dest: &str, action: &str) -> Result<Value, String> {
    let req = OutgoingRequest {
        rid: uuid::Uuid::new_v4().to_string(),
        key: Arc::from("rpc_whitelist"),
        payload_json: Arc::from(json!({ "action": action }).to_string()),
        timeout: Some(Duration::from_secs(10)),
        compress: false,
    };
    client.send(dest, req).await.map_err(|e| e.to_string())
}

/// Runs the demo: server, whitelisted client, stranger. `grape` optionally announces and looks up
/// through a Grape.
pub async fn run(grape: Option<String>, verbose: bool) -> Result<Outcome, String> {
    let pki = crate::tls_certs::RcgenCa::pki("whitelist-ca");
    let fp1 = fingerprint(&pki.client.cert_pem)?;
    let mut perms = Permissions::new();
    perms.insert(fp1.clone(), HashSet::from(["ping"]));
    let perms = Arc::new(perms);
    if verbose {
        println!("client1 fingerprint {fp1} may: ping");
    }

    let server_tls = ServerTls::builder(pki.server.cert_pem.clone(), pki.server.key_pem.clone())
        .client_ca_pem(pki.ca.cert_pem.clone())
        .client_auth(ClientAuth::Required)
        .build()
        .map_err(|e| e.to_string())?;
    let whitelist = perms.clone();
    let hook = verify_client(move |c| c.cert.is_some_and(|cert| whitelist.contains_key(&cert.fingerprint)));
    let addr: SocketAddr = "127.0.0.1:0".parse().map_err(|e| format!("{e}"))?;
    let server = WsServer::bind(addr, handler(perms), WsServerConfig::default().tls(server_tls).verify_client(hook))
        .await
        .map_err(|e| e.to_string())?;

    let mut dest = server.local_addr().to_string();
    let mut _announce = None;
    if let Some(grape) = grape {
        let link = grenache::link::Link::with_grape(grape).map_err(|e| e.to_string())?;
        let h = link.start_announcing("rpc_whitelist", server.port(), Duration::from_secs(1));
        h.first_result(Duration::from_secs(10)).await.map_err(|e| e.to_string())?;
        dest = link.lookup("rpc_whitelist").await.map_err(|e| e.to_string())?.into_iter().next().ok_or("no peer")?;
        _announce = Some(h);
    }
    if verbose {
        println!("server listening on wss://{dest}/ws");
    }

    let client_cfg = |c: &crate::tls_certs::CertKey| -> Result<WsClientConfig, String> {
        let tls = ClientTls::builder()
            .ca_pem(pki.ca.cert_pem.clone())
            .client_cert_pem(c.cert_pem.clone(), c.key_pem.clone())
            .build()
            .map_err(|e| e.to_string())?;
        Ok(WsClientConfig::default().tls(tls))
    };
    let client1 = WsClient::new(client_cfg(&pki.client)?);
    let ping = call(&client1, &dest, "ping").await;
    let delete = call(&client1, &dest, "deleteHarddisk").await;
    let stranger = call(&WsClient::new(client_cfg(&pki.client2)?), &dest, "ping").await;
    if verbose {
        println!("client1 ping           -> {ping:?}");
        println!("client1 deleteHarddisk -> {delete:?}");
        println!("client2 (not listed)   -> {stranger:?}");
    }
    if let Some(h) = _announce {
        h.stop();
    }
    server.close().await;
    Ok(Outcome { ping, delete, stranger })
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let grape = args.iter().position(|a| a == "--grape").and_then(|i| args.get(i + 1).cloned());
    match run(grape, true).await {
        Ok(o) => {
            let ok = o.ping.is_ok() && o.delete.is_err() && o.stranger.is_err();
            println!("{}", if ok { "whitelist enforced" } else { "UNEXPECTED RESULT" });
            if !ok {
                std::process::exit(1);
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
