//! Unannounce: a worker's graceful stop removes its address from the Grapes at once
//! (`/unannounce`, `unannounce_peer` between our Grapes), only its own announcer can remove it,
//! and Node reference Grapes in the network ignore the message (they keep the address until it
//! expires) without misbehaving.
//!
//! Needs `npm ci --prefix tests/interop` (scripts/test.sh does it). Everything binds 127.0.0.x.

#![allow(clippy::unwrap_used)]

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use grenache::dht::krpc::{self, Body, Message, Method, Query};
use grenache::grape::Testnet;
use grenache::link::Link;
use grenache::rpc::{PeerRpcServer, Reply, Request};
use grenache::transport::http::{HttpServer, HttpServerConfig};
use grenache_e2e::eventually;
use grenache_e2e::grapes::{NodeGrape, T, call, lookup, rust_grape};
use serde_json::json;

/// One KRPC query from `sock` to `to`; the reply (or error) decoded.
fn krpc_call(sock: &UdpSocket, to: SocketAddr, method: Method) -> Body {
    let q = Message { t: b"zz".to_vec(), body: Body::Query(Query { id: Some(vec![7; 20]), method, read_only: false, want: None }) };
    sock.send_to(&q.encode(), to).unwrap();
    let mut buf = [0u8; 4096];
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    loop {
        let (n, from) = sock.recv_from(&mut buf).expect("a KRPC reply");
        let m = krpc::decode(&buf[..n]).unwrap();
        // Skip the grape's own queries (it pings nodes that query it).
        if from == to && m.t == b"zz" {
            return m.body;
        }
    }
}

fn token(sock: &UdpSocket, to: SocketAddr, name: &str) -> Vec<u8> {
    match krpc_call(sock, to, Method::GetPeers { info_hash: Some(name.as_bytes().to_vec()) }) {
        Body::Response(r) => r.token.unwrap(),
        other => panic!("{other:?}"),
    }
}

/// Rust Grapes only: `/unannounce` through the announcing Grape removes the address from every
/// Grape's lookups at once, while the records of other addresses stay; another address cannot
/// remove a record (with its own token it names its own address, with a foreign token it is
/// refused), and both are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unannounce_removes_at_once_and_only_for_the_announcer() {
    let net = Testnet::start(4).await.unwrap();
    let api = |i: usize| net.grape(i).api_addr();
    for (name, port) in [("un:svc", 4101), ("un:svc", 4102), ("un:other", 4103)] {
        let (st, body) = call(api(0), "/announce", json!([name, port])).await;
        assert_eq!(st, 200, "{body}");
    }
    for i in 1..4 {
        eventually(T, "every grape finds both workers", || async move {
            (lookup(api(i), "un:svc").await == ["127.0.0.1:4101", "127.0.0.1:4102"]).then_some(())
        })
        .await;
    }

    // Another address (127.0.0.2) tries to remove 127.0.0.1:4103 from grape 1.
    let dht1 = net.grape(1).dht_addr();
    let dht1 = SocketAddr::from(([127, 0, 0, 1], dht1.port()));
    let rogue = UdpSocket::bind("127.0.0.2:0").unwrap();
    let own = token(&rogue, dht1, "un:other");
    let unann = |token: Vec<u8>| Method::UnannouncePeer {
        info_hash: Some(b"un:other".to_vec()),
        port: Some(4103),
        implied_port: false,
        token: Some(token),
    };
    match krpc_call(&rogue, dht1, unann(own)) {
        // Acknowledged as its own (non-existent) record 127.0.0.2:4103.
        Body::Response(r) => assert_eq!(r.ip.as_deref().and_then(krpc::decode_peer), Some("127.0.0.2:4103".parse().unwrap())),
        other => panic!("{other:?}"),
    }
    // A token handed to 127.0.0.1 does not work from 127.0.0.2.
    let honest = UdpSocket::bind("127.0.0.1:0").unwrap();
    let foreign = token(&honest, dht1, "un:other");
    match krpc_call(&rogue, dht1, unann(foreign)) {
        Body::Error(e) => assert_eq!((e.code, e.message.as_slice()), (203, &b"cannot `unannounce_peer` with bad token"[..])),
        other => panic!("{other:?}"),
    }
    let st = net.grape(1).dht().stats();
    assert!(st.unannounces_unknown >= 1 && st.unannounces_refused >= 1, "{st:?}");
    assert_eq!(net.grape(1).dht().local_peers(b"un:other", 10), vec!["127.0.0.1:4103".parse::<SocketAddr>().unwrap()]);
    assert_eq!(lookup(api(2), "un:other").await, ["127.0.0.1:4103"]);

    // The announcer's Grape removes 4101: gone from every Grape's lookups at once.
    let (st, body) = call(api(0), "/unannounce", json!(["un:svc", 4101])).await;
    assert_eq!(st, 200, "{body}");
    assert!(body.parse::<u64>().is_ok_and(|n| n >= 1), "unannounce answered {body}");
    for i in 0..4 {
        assert_eq!(lookup(api(i), "un:svc").await, ["127.0.0.1:4102"], "grape {i}");
    }
    let applied: u64 = net.grapes().iter().map(|g| g.dht().stats().unannounces_applied).sum();
    assert!(applied >= 1);
    // Announcing again brings it back.
    let (st, body) = call(api(0), "/announce", json!(["un:svc", 4101])).await;
    assert_eq!(st, 200, "{body}");
    for i in 1..4 {
        eventually(T, "the worker is back after a new announce", || async move {
            (lookup(api(i), "un:svc").await == ["127.0.0.1:4101", "127.0.0.1:4102"]).then_some(())
        })
        .await;
    }
    // A flood of unannounces over HTTP: one DHT round per window (1 s), not one per request.
    let st0 = net.grape(0).dht().stats();
    for _ in 0..100 {
        let (st, _) = call(api(0), "/unannounce", json!(["un:flood", 4199])).await;
        assert_eq!(st, 200);
    }
    let st1 = net.grape(0).dht().stats();
    let sent = (st1.queries_sent - st1.maintenance_queries) - (st0.queries_sent - st0.maintenance_queries);
    assert!(sent < 100, "100 unannounces cost {sent} KRPC queries");
    // A flood of unannounce_peer datagrams from one address: over its query rate they are
    // dropped unanswered and counted; nothing is stored for them.
    let refused0 = net.grape(1).dht().refused_queries();
    let tomb0 = net.grape(1).dht().stats().tombstones;
    let own = token(&rogue, dht1, "un:other");
    let q =
        Message { t: b"ff".to_vec(), body: Body::Query(Query { id: Some(vec![7; 20]), method: unann(own), read_only: false, want: None }) }
            .encode();
    // In batches, so that the receive buffer does not drop most of them before the node reads.
    for _ in 0..100 {
        for _ in 0..100 {
            let _ = rogue.send_to(&q, dht1);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    eventually(T, "the flood is refused and counted", || async { (net.grape(1).dht().refused_queries() > refused0).then_some(()) }).await;
    assert_eq!(net.grape(1).dht().stats().tombstones, tomb0);
    assert_eq!(lookup(api(2), "un:other").await, ["127.0.0.1:4103"]);
    // Bad input.
    assert_eq!(call(api(0), "/unannounce", json!("un:svc")).await, (200, "\"ERR_GRAPE_UNANNOUNCE\"".to_string()));
    assert_eq!(call(api(0), "/unannounce", json!(["un:svc", 70000])).await, (200, "\"ERR_GRAPE_SERVICE_PORT\"".to_string()));
    net.stop().await;
}

/// A worker that answers with its port.
async fn worker(link: &Link, name: &str) -> (PeerRpcServer, u16) {
    let handler = Arc::new(|_req: Request, reply: Reply| reply.ok(json!("hi")));
    let t = HttpServer::bind("127.0.0.1:0".parse().unwrap(), handler, HttpServerConfig::default()).await.unwrap();
    let srv = PeerRpcServer::new(link.clone(), Arc::new(t));
    srv.start_announcing(name, Duration::from_secs(2)).first_result(T).await.unwrap();
    let port = srv.port();
    (srv, port)
}

/// A mixed network (Rust R0, Node N0, Rust R1): after a worker's graceful stop
/// (`PeerRpcServer::shutdown`), lookups through the Rust Grapes no longer return it, while the
/// Node Grape, which ignores `unannounce_peer`, still does until the announce expires, and keeps
/// working. A worker whose Grape is a Node Grape still shuts down cleanly (its `/unannounce`
/// answers `ERR_REQ_NOTFOUND`).
#[tokio::test]
async fn graceful_stop_unannounces_and_node_grapes_ignore_it() {
    let r0 = rust_grape(vec![]).await;
    let n0 = NodeGrape::start(&[r0.dht_bootstrap_addr()], &[]).await;
    let r1 = rust_grape(vec![r0.dht_bootstrap_addr(), n0.bootstrap()]).await;
    let name = "un:worker";
    let link = Link::with_grape(r0.api_url()).unwrap();
    let (srv, port) = worker(&link, name).await;
    let (_other, other_port) = worker(&link, name).await;
    let me = format!("127.0.0.1:{port}");
    let other = format!("127.0.0.1:{other_port}");
    for api in [r0.api_addr(), r1.api_addr(), n0.api] {
        let (me, other) = (me.clone(), other.clone());
        eventually(T, "every grape finds both workers", || {
            let (me, other) = (me.clone(), other.clone());
            async move {
                let got = lookup(api, name).await;
                (got.contains(&me) && got.contains(&other)).then_some(())
            }
        })
        .await;
    }

    assert!(srv.shutdown(Duration::from_secs(2)).await, "drained");
    // At once (no waiting): the Rust Grapes dropped it, the other worker stays.
    for api in [r0.api_addr(), r1.api_addr()] {
        assert_eq!(lookup(api, name).await, std::slice::from_ref(&other), "through the Rust grape {api}");
    }
    // The Node Grape never heard of unannounce_peer: it still returns the worker (until
    // dht_peer_maxAge, 120 s), and it still serves.
    let via_node = lookup(n0.api, name).await;
    assert!(via_node.contains(&me) && via_node.contains(&other), "{via_node:?}");
    let (st, body) = call(n0.api, "/announce", json!(["un:after", 4999])).await;
    assert_eq!(st, 200, "the Node grape still answers: {body}");
    eventually(T, "the Node grape's announce reaches the Rust grapes", || async {
        (lookup(r1.api_addr(), "un:after").await == ["127.0.0.1:4999"]).then_some(())
    })
    .await;
    // r1's own lookups drop what the Node Grape returns.
    assert!(r1.dht().stats().unannounces_applied >= 1, "{:?}", r1.dht().stats());
    assert_eq!(lookup(r1.api_addr(), name).await, std::slice::from_ref(&other));

    // A worker announcing through the Node Grape shuts down cleanly: no /unannounce there.
    let nlink = Link::with_grape(n0.url()).unwrap();
    let e = nlink.unannounce(name, 1).await.unwrap_err();
    assert_eq!(e.message(), "ERR_REQ_NOTFOUND");
    let (nsrv, _) = worker(&nlink, "un:node-side").await;
    let t0 = std::time::Instant::now();
    assert!(nsrv.shutdown(Duration::from_secs(2)).await);
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    r0.stop().await;
    r1.stop().await;
    drop(n0);
}
