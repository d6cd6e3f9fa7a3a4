//! IPv6 Grapes (BEP 32): Rust Grapes on `::1` only, serving Links and RPC over IPv6; and a mixed
//! network of dual-stack Rust Grapes and IPv4-only Node reference Grapes (grenache-grape 1.0.0),
//! where IPv4 services are found through every Grape as before and IPv6 ones through ours.
//!
//! Needs `npm ci --prefix tests/interop` (scripts/test.sh does it). Everything binds `127.0.0.1`
//! or `::1`.
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use grenache::ErrorKind;
use grenache::grape::{DhtIpv6, Grape, GrapeConfig};
use grenache::link::signed::AnnounceSigner;
use grenache::link::{Keypair, Link, LinkConfig};
use grenache::rpc::{ClientTransport, PeerRpcClient, PeerRpcClientConfig, PeerRpcServer, Reply, Request, RequestOptions};
use grenache::transport::http::{HttpClient, HttpServer, HttpServerConfig};
use grenache::transport::ws::{WsClient, WsServer, WsServerConfig};
use grenache_e2e::eventually;
use grenache_e2e::grapes::{NodeGrape, T, announce, lookup, rust_grape_with};
use serde_json::json;

/// A Rust Grape with its DHT and HTTP API on `::1` only.
fn v6_config(bootstrap: Vec<String>) -> GrapeConfig {
    let mut c = GrapeConfig::default();
    let ip = IpAddr::V6(Ipv6Addr::LOCALHOST);
    c.dht_bind(ip).host(Some(ip)).dht_port(0).api_port(0).bootstrap(bootstrap);
    c
}

/// A dual-stack Rust Grape: DHT on `127.0.0.1` and `::1`, HTTP API on `127.0.0.1`.
fn dual_config(bootstrap: Vec<String>, announce6: bool) -> GrapeConfig {
    let mut c = GrapeConfig::default();
    let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
    c.dht_bind(ip)
        .dht_ipv6(DhtIpv6::Bind(Ipv6Addr::LOCALHOST))
        .announce_ipv6(announce6)
        .host(Some(ip))
        .dht_port(0)
        .api_port(0)
        .bootstrap(bootstrap);
    c
}

async fn found(api: SocketAddr, name: &str, want: &[String]) {
    let mut want = want.to_vec();
    want.sort();
    let what = format!("{want:?} for {name} through {api}");
    eventually(T, &what, || {
        let want = want.clone();
        async move { (lookup(api, name).await == want).then_some(()) }
    })
    .await;
}

#[tokio::test]
async fn ipv6_only_grapes_serve_links_and_rpc() {
    // A chain on ::1: each Grape bootstraps from the previous one.
    let g0 = rust_grape_with(v6_config(vec![])).await;
    let g1 = rust_grape_with(v6_config(vec![g0.dht_bootstrap_addr()])).await;
    let g2 = rust_grape_with(v6_config(vec![g1.dht_bootstrap_addr()])).await;
    assert!(g0.dht_bootstrap_addr().starts_with("[::1]:"), "{}", g0.dht_bootstrap_addr());
    assert!(g2.api_url().starts_with("http://[::1]:"), "{}", g2.api_url());

    // Through the HTTP API: announce via one, lookup via another gives "[::1]:port".
    assert!(announce(g1.api_addr(), "v6:raw", 4100).await.parse::<u64>().is_ok_and(|n| n >= 1));
    found(g2.api_addr(), "v6:raw", &["[::1]:4100".to_string()]).await;
    assert_eq!(g2.lookup("v6:raw").await.unwrap(), vec!["[::1]:4100".parse::<SocketAddr>().unwrap()]);

    // Workers on [::1] announced through a Link to g0 (over IPv6), a client on g2.
    let handler = |req: Request, reply: Reply| reply.ok(json!({ "echo": req.payload }));
    let any6 = SocketAddr::from((Ipv6Addr::LOCALHOST, 0));
    let http = Arc::new(HttpServer::bind(any6, Arc::new(handler), HttpServerConfig::default()).await.unwrap());
    let ws = Arc::new(WsServer::bind(any6, handler, WsServerConfig::default()).await.unwrap());
    let server_link = Link::with_grape(g0.api_url()).unwrap();
    let client_link = Link::with_grape(g2.api_url()).unwrap();
    let http_worker = PeerRpcServer::new(server_link.clone(), http.clone());
    let ws_worker = PeerRpcServer::new(server_link.clone(), ws.clone());
    http_worker.start_announcing("v6:http", Duration::from_secs(1)).first_result(T).await.unwrap();
    ws_worker.start_announcing("v6:ws", Duration::from_secs(1)).first_result(T).await.unwrap();
    let opts = RequestOptions { timeout: Some(Duration::from_secs(20)), ..Default::default() };
    for (name, transport, port) in [
        ("v6:http", Arc::new(HttpClient::default()) as Arc<dyn ClientTransport>, http_worker_port(&http)),
        ("v6:ws", Arc::new(WsClient::default()) as Arc<dyn ClientTransport>, ws.local_addr().port()),
    ] {
        found(g2.api_addr(), name, &[format!("[::1]:{port}")]).await;
        let client = PeerRpcClient::new(client_link.clone(), transport, PeerRpcClientConfig::default());
        let reply = client.request(name, &json!("over IPv6"), &opts).await.unwrap();
        assert_eq!(reply, json!({ "echo": "over IPv6" }), "{name}");
    }
    http_worker.shutdown(Duration::from_secs(1)).await;
    ws_worker.shutdown(Duration::from_secs(1)).await;
    for g in [g0, g1, g2] {
        g.stop().await;
    }
}

/// Signed announcements prove IPv6 addresses: a worker on `[::1]` announcing through an IPv6
/// Grape signs its address (the default IPs include `::1` when the Grape is there), and a client
/// pinned to its key uses it; an unsigned announce of the same name is never used.
#[tokio::test]
async fn a_signed_ipv6_worker_is_proven_and_a_hijacker_is_not() {
    let g0 = rust_grape_with(v6_config(vec![])).await;
    let g1 = rust_grape_with(v6_config(vec![g0.dht_bootstrap_addr()])).await;
    let name = "v6:signed";
    let key = Keypair::generate();
    let server_link = Link::with_grape(g0.api_url()).unwrap();
    server_link.sign_announcements(name, Some(AnnounceSigner::new(vec![key.clone()]))).unwrap();
    let handler = |_req: Request, reply: Reply| reply.ok(json!("real"));
    let ws = Arc::new(WsServer::bind(SocketAddr::from((Ipv6Addr::LOCALHOST, 0)), handler, WsServerConfig::default()).await.unwrap());
    let real = format!("[::1]:{}", ws.local_addr().port());
    let worker = PeerRpcServer::new(server_link, ws.clone());
    worker.start_announcing(name, Duration::from_secs(1)).first_result(T).await.unwrap();
    // The hijacker: the same name announced, without a proof, on another port of ::1.
    let hijacker = announce(g1.api_addr(), name, 4999).await;
    assert!(hijacker.parse::<u64>().is_ok_and(|n| n >= 1), "{hijacker}");
    let mut both = vec![real.clone(), "[::1]:4999".to_string()];
    both.sort();
    found(g1.api_addr(), name, &both).await;

    let pinned = Link::new(LinkConfig::with_grape(g1.api_url())).unwrap();
    pinned.pin_service(name, &[key.public_hex().as_str()]).unwrap();
    let list = eventually(T, "the proven IPv6 address", || {
        let pinned = pinned.clone();
        async move { pinned.lookup(name).await.ok().filter(|l| l.len() == 1).map(|l| l.to_vec()) }
    })
    .await;
    assert_eq!(list, vec![real]);
    let client = PeerRpcClient::new(pinned.clone(), Arc::new(WsClient::default()), PeerRpcClientConfig::default());
    let opts = RequestOptions { timeout: Some(Duration::from_secs(20)), ..Default::default() };
    assert_eq!(client.request(name, &json!("hi"), &opts).await.unwrap(), json!("real"));
    // Pinned to another key, nothing is proven.
    let wrong = Link::new(LinkConfig::with_grape(g1.api_url())).unwrap();
    wrong.pin_service(name, &[Keypair::generate().public_hex().as_str()]).unwrap();
    assert_eq!(wrong.lookup(name).await.unwrap_err().kind(), ErrorKind::LookupEmpty);
    worker.shutdown(Duration::from_secs(1)).await;
    for g in [g0, g1] {
        g.stop().await;
    }
}

fn http_worker_port(s: &HttpServer) -> u16 {
    s.local_addr().port()
}

#[tokio::test]
async fn dual_stack_grapes_join_node_grapes() {
    // N0 <- R0 <- N1 <- R1 <- R2, bootstrapped over IPv4 only; R2 announces over IPv6 too.
    let mut n0 = NodeGrape::start(&[], &[]).await;
    let r0 = rust_grape_with(dual_config(vec![n0.bootstrap()], false)).await;
    let mut n1 = NodeGrape::start(&[r0.dht_bootstrap_addr()], &[]).await;
    let r1 = rust_grape_with(dual_config(vec![n1.bootstrap()], false)).await;
    let r2 = rust_grape_with(dual_config(vec![r1.dht_bootstrap_addr()], true)).await;
    let rust: [&Grape; 3] = [&r0, &r1, &r2];
    for r in rust {
        assert_eq!(r.dht_addr6().map(|a| a.ip()), Some(IpAddr::V6(Ipv6Addr::LOCALHOST)));
    }
    let all = [n0.api, n1.api, r0.api_addr(), r1.api_addr(), r2.api_addr()];

    // IPv4 services announced through a Node and a Rust Grape: found through every Grape.
    assert!(announce(n0.api, "ds:v4", 4201).await.parse::<u64>().is_ok_and(|n| n >= 1));
    assert!(announce(r1.api_addr(), "ds:v4", 4202).await.parse::<u64>().is_ok_and(|n| n >= 1));
    let v4 = ["127.0.0.1:4201".to_string(), "127.0.0.1:4202".to_string()];
    for api in all {
        found(api, "ds:v4", &v4).await;
    }

    // A service announced over both families through R2: our Grapes find both addresses once
    // their IPv6 tables are filled (learnt through BEP 32 replies over IPv4); Node Grapes find
    // the IPv4 one, as before.
    eventually(T, "the IPv6 tables filled", || async {
        rust.iter().all(|r| r.dht().nodes().iter().any(|n| n.addr.is_ipv6())).then_some(())
    })
    .await;
    eventually(T, "announce through R2 over both families", || async { r2.announce("ds:v6", 4203).await.ok().filter(|n| *n >= 2) }).await;
    let both = ["127.0.0.1:4203".to_string(), "[::1]:4203".to_string()];
    for api in [r0.api_addr(), r1.api_addr(), r2.api_addr()] {
        found(api, "ds:v6", &both).await;
    }
    for api in [n0.api, n1.api] {
        found(api, "ds:v6", &["127.0.0.1:4203".to_string()]).await;
    }
    for r in rust {
        r.stop().await;
    }
    n0.proc.kill().await;
    n1.proc.kill().await;
}
