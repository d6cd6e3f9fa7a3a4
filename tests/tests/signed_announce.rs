//! Signed announcements: a hijacker announcing a signed service's name receives no request from
//! clients pinned to the service's keys, while an unpinned Node reference client still reaches
//! the real workers; during a key rotation both keys work; an expired or forged proof is
//! refused.
//!
//! The network mixes Rust Grapes (which store the proofs, BEP44 mutable items) and a stock
//! Node reference Grape (which refuses mutable items: proofs live on our Grapes). The hijacker is
//! the Node reference server (grenache-nodejs-http) announcing the name through the Node Grape.
//!
//! Needs `npm ci --prefix tests/interop` (scripts/test.sh does it). Everything binds 127.0.0.1.

#![allow(clippy::unwrap_used)]

mod link_support;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use grenache::ErrorKind;
use grenache::link::signed::AnnounceSigner;
use grenache::link::{Keypair, Link, LinkConfig};
use grenache::rpc::{PeerRpcClient, PeerRpcClientConfig, PeerRpcServer, Reply, Request, RequestOptions};
use grenache::transport::http::{HttpClient, HttpServer, HttpServerConfig};
use grenache_e2e::eventually;
use grenache_e2e::grapes::{NodeGrape, T, call, lookup, rust_grape};
use link_support::{NodeClient, node_server};
use serde_json::json;

const NAME: &str = "signed:svc";

/// A worker answering `{"from":"real","port":p}`, whose announces carry proofs under `keys`.
async fn worker(grape: &str, keys: Vec<Keypair>, ttl: Duration) -> (PeerRpcServer, u16) {
    let link = Link::with_grape(grape).unwrap();
    let mut signer = AnnounceSigner::new(keys);
    signer.ttl = ttl;
    link.sign_announcements(NAME, Some(signer)).unwrap();
    let port_cell = Arc::new(AtomicU16::new(0));
    let cell = port_cell.clone();
    let handler = Arc::new(move |_req: Request, reply: Reply| reply.ok(json!({"from": "real", "port": cell.load(Ordering::Relaxed)})));
    let t = HttpServer::bind("127.0.0.1:0".parse().unwrap(), handler, HttpServerConfig::default()).await.unwrap();
    let port = t.local_addr().port();
    port_cell.store(port, Ordering::Relaxed);
    let srv = PeerRpcServer::new(link, Arc::new(t));
    srv.start_announcing(NAME, Duration::from_secs(2)).first_result(T).await.unwrap();
    (srv, port)
}

/// A fresh Link (no cached lookups) to `grape`, pinned to `keys`.
fn pinned(grape: &str, keys: &[&Keypair]) -> Link {
    let link = Link::new(LinkConfig::with_grape(grape)).unwrap();
    let hex: Vec<String> = keys.iter().map(|k| k.public_hex()).collect();
    link.pin_service(NAME, &hex.iter().map(String::as_str).collect::<Vec<_>>()).unwrap();
    link
}

/// Sends `n` requests through `link`; counts the answers by `from:port`.
async fn spray(link: &Link, n: usize) -> HashMap<String, usize> {
    let c = PeerRpcClient::new(link.clone(), Arc::new(HttpClient::default()), PeerRpcClientConfig::default());
    let opts = RequestOptions { timeout: Some(Duration::from_secs(10)), ..Default::default() };
    let mut seen = HashMap::new();
    for _ in 0..n {
        let r = c.request(NAME, &json!("hello"), &opts).await.unwrap();
        *seen.entry(format!("{}:{}", r["from"].as_str().unwrap_or("?"), r["port"])).or_insert(0) += 1;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_clients_never_reach_a_hijacker_and_key_rotation_works() {
    let r0 = rust_grape(vec![]).await;
    let n0 = NodeGrape::start(&[r0.dht_bootstrap_addr()], &[]).await;
    let r1 = rust_grape(vec![r0.dht_bootstrap_addr(), n0.bootstrap()]).await;
    let r2 = rust_grape(vec![r0.dht_bootstrap_addr(), n0.bootstrap()]).await;
    let (old, new, other) = (Keypair::generate(), Keypair::generate(), Keypair::generate());

    // Key rotation: worker A still signs with the old key only, B with the new one only.
    let (_a, port_a) = worker(&r0.api_url(), vec![old.clone()], Duration::from_secs(600)).await;
    let (_b, port_b) = worker(&r1.api_url(), vec![new.clone()], Duration::from_secs(600)).await;
    // The hijacker: a Node reference server announcing the same name.
    let (mut hijacker, port_h) = node_server(&n0.url(), NAME, &[]).await;
    let all = {
        let mut v = vec![format!("127.0.0.1:{port_a}"), format!("127.0.0.1:{port_b}"), format!("127.0.0.1:{port_h}")];
        v.sort();
        v
    };
    for api in [r2.api_addr(), n0.api] {
        let all = all.clone();
        eventually(T, "every grape returns the two workers and the hijacker", || {
            let all = all.clone();
            async move { (lookup(api, NAME).await == all).then_some(()) }
        })
        .await;
    }

    // The hijacker cannot publish a proof under the service key: nodes drop a bad signature.
    let forged = json!({"v": "x", "k": old.public_hex(), "sig": "00".repeat(64), "seq": 1, "salt": "ga1:forged"});
    let (_, body) = call(r2.api_addr(), "/put", forged).await;
    assert_eq!(body, "\"All queries failed\"");

    // Pinned to both keys (a rotation): both workers, never the hijacker.
    let seen = spray(&pinned(&r2.api_url(), &[&old, &new]), 40).await;
    assert_eq!(seen.keys().filter(|k| k.starts_with("node")).count(), 0, "the hijacker got requests: {seen:?}");
    assert!(seen.contains_key(&format!("real:{port_a}")) && seen.contains_key(&format!("real:{port_b}")), "{seen:?}");
    // Through a stock Node Grape a pinned client finds no proof at all (it cannot read mutable
    // items): it fails closed rather than use an unproven address.
    let e = pinned(&n0.url(), &[&old, &new]).lookup(NAME).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::LookupEmpty, "{e}");
    // Pinned to the new key only: worker B only.
    let seen = spray(&pinned(&r2.api_url(), &[&new]), 20).await;
    assert_eq!(seen.keys().collect::<Vec<_>>(), [&format!("real:{port_b}")], "{seen:?}");
    // Pinned to a key nobody signs with: no address at all.
    let e = pinned(&r2.api_url(), &[&other]).lookup(NAME).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::LookupEmpty, "{e}");

    // An unpinned Node reference client still reaches the real workers (and the hijacker).
    let mut nc = NodeClient::start(&n0.url(), &[]).await;
    let mut froms = HashMap::new();
    for _ in 0..30 {
        let (err, res) = nc.call(json!({"op": "request", "key": NAME, "payload": "hi", "opts": {"timeout": 10000}})).await;
        assert_eq!(err, None);
        *froms.entry(res["from"].as_str().unwrap_or("?").to_string()).or_insert(0) += 1;
    }
    assert!(froms.get("real").is_some_and(|n| *n > 0), "{froms:?}");

    hijacker.kill().await;
    r0.stop().await;
    r1.stop().await;
    r2.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_proof_is_refused() {
    let r0 = rust_grape(vec![]).await;
    let r1 = rust_grape(vec![r0.dht_bootstrap_addr()]).await;
    let r2 = rust_grape(vec![r0.dht_bootstrap_addr()]).await;
    let key = Keypair::generate();
    // A proof valid 3 s, published once (the announce loop's interval is 2 s, but a proof is
    // published again only after half its TTL: stop the loop right after the first announce).
    let (srv, port) = worker(&r0.api_url(), vec![key.clone()], Duration::from_secs(3)).await;
    srv.stop_announcing(NAME);
    // Keep the address itself announced, without proofs.
    let plain = Link::with_grape(r1.api_url()).unwrap();
    let h = plain.start_announcing(NAME, port, Duration::from_millis(500));
    h.first_result(T).await.unwrap();
    let me = format!("127.0.0.1:{port}");
    assert_eq!(pinned(&r2.api_url(), &[&key]).lookup(NAME).await.unwrap(), std::slice::from_ref(&me));
    let e = eventually(T, "the proof expires", || async { pinned(&r2.api_url(), &[&key]).lookup(NAME).await.err() }).await;
    assert_eq!(e.kind(), ErrorKind::LookupEmpty, "{e}");
    // The address is still announced: only the proof is gone.
    assert_eq!(lookup(r2.api_addr(), NAME).await, [me]);
    h.stop();
    r0.stop().await;
    r1.stop().await;
    r2.stop().await;
}
