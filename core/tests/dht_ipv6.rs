//! IPv6 in the DHT (BEP 32), on the loopback addresses `127.0.0.1` and `::1`: IPv6-only nodes,
//! dual-stack nodes (one id, a routing table per family), `want` answered with `nodes`/`nodes6`,
//! and malformed `nodes`/`nodes6`/`values` from a raw UDP peer dropped without harm.
#![allow(clippy::unwrap_used)]

use std::net::{Ipv6Addr, SocketAddr};
use std::time::Duration;

use grenache::dht::krpc::{self, Body, Message, Method, NodeInfo, Query, Response, Want};
use grenache::dht::{Dht, DhtConfig};
use tokio::net::UdpSocket;

const T: Duration = Duration::from_secs(30);

fn cfg(bind: &str, bootstrap: &[SocketAddr]) -> DhtConfig {
    DhtConfig {
        bind: bind.parse().unwrap(),
        bootstrap: bootstrap.iter().map(|a| a.to_string()).collect(),
        query_timeout: Duration::from_millis(1000),
        ..DhtConfig::default()
    }
}

/// A dual-stack config: IPv4 on 127.0.0.1, IPv6 on ::1.
fn dual(bootstrap: &[SocketAddr]) -> DhtConfig {
    DhtConfig { bind6: Some(SocketAddr::from((Ipv6Addr::LOCALHOST, 0))), ..cfg("127.0.0.1:0", bootstrap) }
}

async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + T;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out after {T:?} waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn ipv6_only_nodes_announce_and_find_ipv6_peers() {
    let a = Dht::bind(cfg("[::1]:0", &[])).await.unwrap();
    let b = Dht::bind(cfg("[::1]:0", &[a.local_addr()])).await.unwrap();
    let c = Dht::bind(cfg("[::1]:0", &[b.local_addr()])).await.unwrap();
    for n in [&a, &b, &c] {
        tokio::time::timeout(T, n.ready()).await.unwrap();
        assert!(n.local_addr().is_ipv6() && n.local_addr6().is_none());
    }
    assert!(b.announce(b"svc:v6", 4242).await.unwrap() >= 1);
    let want: SocketAddr = "[::1]:4242".parse().unwrap();
    let found = eventually("c finds the IPv6 peer", || async { c.lookup(b"svc:v6").await.ok().filter(|p| p.contains(&want)) }).await;
    assert_eq!(found, vec![want]);
    assert!(c.nodes().iter().all(|n| n.addr.is_ipv6()));
    // An IPv4 address is of no family this node runs: ignored, nothing sent.
    c.add_node("127.0.0.1:9".parse().unwrap());
}

#[tokio::test]
async fn dual_stack_nodes_learn_ipv6_nodes_over_ipv4_and_merge_lookups() {
    // Bootstrap lists name IPv4 addresses only: the IPv6 tables fill from `nodes6` in the replies
    // to the IPv4 halves' queries (`want: ["n4","n6"]`).
    let a = Dht::bind(dual(&[])).await.unwrap();
    let b = Dht::bind(dual(&[a.local_addr()])).await.unwrap();
    let c = Dht::bind(dual(&[b.local_addr()])).await.unwrap();
    let six = |d: &Dht| d.nodes().iter().filter(|n| n.addr.is_ipv6()).count();
    for n in [&a, &b, &c] {
        tokio::time::timeout(T, n.ready()).await.unwrap();
        assert_eq!(n.local_addr6().unwrap().ip(), Ipv6Addr::LOCALHOST);
    }
    eventually("IPv6 tables filled", || async { (six(&a) >= 1 && six(&b) >= 1 && six(&c) >= 1).then_some(()) }).await;
    // One id, one entry per family in the others' tables.
    let ids: Vec<[u8; 20]> = c.nodes().iter().filter(|n| n.addr == b.local_addr6().unwrap()).map(|n| n.id).collect();
    assert_eq!(ids, vec![b.id()]);

    // An announce over IPv6 (announce6) next to one over IPv4: a lookup finds both.
    let v6 = Dht::bind(DhtConfig { announce6: true, ..dual(&[a.local_addr()]) }).await.unwrap();
    tokio::time::timeout(T, v6.ready()).await.unwrap();
    eventually("the announcer's IPv6 half joined", || async { (six(&v6) >= 1).then_some(()) }).await;
    let acks = eventually("announce over both families", || async { v6.announce(b"svc:both", 7000).await.ok() }).await;
    assert!(acks >= 2, "{acks}");
    let both: Vec<SocketAddr> = vec!["127.0.0.1:7000".parse().unwrap(), "[::1]:7000".parse().unwrap()];
    let found = eventually("c finds both addresses", || async {
        let mut p = c.lookup(b"svc:both").await.ok()?;
        p.sort();
        (p == both).then_some(p)
    })
    .await;
    assert_eq!(found, both);
    // Without announce6 only the IPv4 address is stored.
    b.announce(b"svc:four", 7001).await.unwrap();
    let found = eventually("the IPv4 announce", || async { c.lookup(b"svc:four").await.ok().filter(|p| !p.is_empty()) }).await;
    assert_eq!(found, vec!["127.0.0.1:7001".parse::<SocketAddr>().unwrap()]);
    // The saved state keeps the nodes of both families.
    let st = c.state_snapshot();
    assert!(st.nodes.iter().any(|n| n.addr.is_ipv6()) && st.nodes.iter().any(|n| n.addr.is_ipv4()));
}

/// Sends `q` from `sock` to `to` and returns the decoded response.
async fn ask(sock: &UdpSocket, to: SocketAddr, method: Method, want: Option<Want>) -> Response {
    let m = Message { t: b"w1".to_vec(), body: Body::Query(Query { id: Some(vec![0x42; 20]), method, read_only: true, want }) };
    sock.send_to(&m.encode(), to).await.unwrap();
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, _) = tokio::time::timeout(T, sock.recv_from(&mut buf)).await.expect("a reply").unwrap();
        let m = krpc::decode(&buf[..n]).unwrap();
        if m.t == b"w1" {
            let Body::Response(r) = m.body else { panic!("not a response: {m:?}") };
            return r;
        }
    }
}

#[tokio::test]
async fn want_is_answered_with_nodes_and_nodes6() {
    // A dual-stack node that knows one IPv4 node and one IPv6 node.
    let node = Dht::bind(dual(&[])).await.unwrap();
    let n4 = Dht::bind(cfg("127.0.0.1:0", &[])).await.unwrap();
    let n6 = Dht::bind(cfg("[::1]:0", &[])).await.unwrap();
    node.add_node(n4.local_addr());
    node.add_node(n6.local_addr());
    eventually("both nodes known", || async { (node.node_count() == 2).then_some(()) }).await;
    let v4 = node.local_addr();
    let v6 = node.local_addr6().unwrap();
    let sock4 = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let sock6 = UdpSocket::bind("[::1]:0").await.unwrap();
    let find = || Method::FindNode { target: Some(vec![7; 20]) };
    let info4 = vec![NodeInfo { id: n4.id(), addr: n4.local_addr() }];
    let info6 = vec![NodeInfo { id: n6.id(), addr: n6.local_addr() }];
    // Asked over the other family, a dual-stack node also names its own address of the family
    // asked for, so that nodes bootstrapped over one family find the other.
    let mut info6_self = info6.clone();
    info6_self.push(NodeInfo { id: node.id(), addr: v6 });
    let mut info4_self = info4.clone();
    info4_self.push(NodeInfo { id: node.id(), addr: v4 });

    // No `want`: the family of the request, exactly as a Node Grape expects.
    let r = ask(&sock4, v4, find(), None).await;
    assert_eq!((r.nodes.as_deref().map(krpc::decode_nodes), r.nodes6), (Some(info4.clone()), None));
    let r = ask(&sock6, v6, find(), None).await;
    assert_eq!((r.nodes, r.nodes6.as_deref().map(krpc::decode_nodes6)), (None, Some(info6.clone())));
    // want n6 over IPv4; n4 + n6 over either.
    let r = ask(&sock4, v4, find(), Some(Want { n4: false, n6: true })).await;
    assert_eq!((r.nodes, r.nodes6.as_deref().map(krpc::decode_nodes6)), (None, Some(info6_self.clone())));
    let r = ask(&sock4, v4, find(), Some(Want { n4: true, n6: true })).await;
    assert_eq!(r.nodes.as_deref().map(krpc::decode_nodes), Some(info4.clone()));
    assert_eq!(r.nodes6.as_deref().map(krpc::decode_nodes6), Some(info6_self.clone()));
    let r = ask(&sock6, v6, find(), Some(Want { n4: true, n6: true })).await;
    assert_eq!(r.nodes.as_deref().map(krpc::decode_nodes), Some(info4_self.clone()));
    assert_eq!(r.nodes6.as_deref().map(krpc::decode_nodes6), Some(info6.clone()));
    // get_peers with nothing stored answers with nodes too.
    let r = ask(&sock4, v4, Method::GetPeers { info_hash: Some(b"svc:none".to_vec()) }, Some(Want { n4: true, n6: true })).await;
    assert!(r.token.is_some());
    assert_eq!(r.nodes6.as_deref().map(krpc::decode_nodes6), Some(info6_self.clone()));
    // A node of one family answers what it has: want n6 from an IPv4-only node gets `nodes`.
    let r = ask(&sock4, n4.local_addr(), find(), Some(Want { n4: false, n6: true })).await;
    assert!(r.nodes.is_some() && r.nodes6.is_none());
}

#[tokio::test]
async fn malformed_nodes_nodes6_and_values_are_dropped() {
    // A raw "node" that answers every query with IPv6 entries in `nodes`, torn `nodes6`, and
    // values of wrong lengths. The dual-stack node must keep only the raw node itself.
    let raw = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let raw_addr = raw.local_addr().unwrap();
    let raw_id = [0x33u8; 20];
    let junk6 = krpc::encode_nodes6(&[NodeInfo { id: [0x44; 20], addr: "[::1]:1".parse().unwrap() }]);
    let two6 = junk6.repeat(2);
    let server = tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        let mut answered = 0;
        while let Ok(Ok((n, from))) = tokio::time::timeout(Duration::from_secs(3), raw.recv_from(&mut buf)).await {
            let Ok(m) = krpc::decode(&buf[..n]) else { continue };
            let Body::Query(_) = m.body else { continue };
            let r = Response {
                id: Some(raw_id.to_vec()),
                // IPv6 entries where IPv4 ones belong (76 bytes: not whole 26-byte entries).
                nodes: Some(two6.clone()),
                nodes6: Some(junk6[..junk6.len() - 1].to_vec()),
                values: Some(vec![vec![1; 5], vec![1; 17], vec![0; 6], vec![127, 0, 0, 1, 0x1f, 0x40]]),
                token: Some(b"tok".to_vec()),
                ..Default::default()
            };
            let _ = raw.send_to(&Message { t: m.t, body: Body::Response(r) }.encode(), from).await;
            answered += 1;
        }
        answered
    });
    let node = Dht::bind(dual(&[raw_addr])).await.unwrap();
    tokio::time::timeout(T, node.ready()).await.unwrap();
    let peers = node.lookup(b"svc:junk").await.unwrap();
    assert_eq!(peers, vec!["127.0.0.1:8000".parse::<SocketAddr>().unwrap()], "only the valid 6-byte value");
    let nodes = node.nodes();
    assert_eq!(nodes, vec![NodeInfo { id: raw_id, addr: raw_addr }], "no node from the malformed lists");
    // Still serving.
    let sock = UdpSocket::bind("[::1]:0").await.unwrap();
    let r = ask(&sock, node.local_addr6().unwrap(), Method::Ping, None).await;
    assert_eq!(r.id, Some(node.id().to_vec()));
    node.shutdown().await;
    assert!(server.await.unwrap() >= 1);
}

#[tokio::test]
async fn an_ipv6_socket_that_cannot_be_bound_is_skipped_when_optional() {
    // 2001:db8::/32 is documentation: no host has it, as a host without IPv6 has no `::`.
    let absent = Some("[2001:db8::1]:0".parse().unwrap());
    let node = Dht::bind(DhtConfig { bind6: absent, bind6_optional: true, ..cfg("127.0.0.1:0", &[]) }).await.unwrap();
    assert!(node.local_addr().is_ipv4() && node.local_addr6().is_none());
    let e = Dht::bind(DhtConfig { bind6: absent, ..cfg("127.0.0.1:0", &[]) }).await.unwrap_err();
    assert_eq!(e.kind(), grenache::ErrorKind::Io, "{e}");
    assert!(e.message().contains("IPv6"), "{e}");
    // bind6 must be IPv6, beside an IPv4 bind.
    for (bind, bind6) in [("127.0.0.1:0", "127.0.0.1:0"), ("[::1]:0", "[::1]:0")] {
        let e = Dht::bind(DhtConfig { bind6: Some(bind6.parse().unwrap()), ..cfg(bind, &[]) }).await.unwrap_err();
        assert_eq!(e.kind(), grenache::ErrorKind::InvalidArgument, "{e}");
    }
}

#[tokio::test]
async fn grape_ipv6_options() {
    use grenache::grape::{Grape, GrapeConfig};
    let mut c = GrapeConfig::default();
    c.dht_bind("127.0.0.1".parse().unwrap()).dht_port(0).api_port(0);
    // A specific IPv4 address: IPv4 only unless told (`dht_ipv6` 1 is auto).
    c.set("dht_ipv6", 1).unwrap();
    let g = Grape::start(c.clone()).await.unwrap();
    assert_eq!(g.dht_addr6(), None);
    g.stop().await;
    // 2: dual-stack on [::], on the IPv4 port when it is free.
    c.set("dhtIpv6", 2).unwrap().set("announce_ipv6", 1).unwrap();
    let g = Grape::start(c.clone()).await.unwrap();
    let six = g.dht_addr6().unwrap();
    assert!(six.ip().is_unspecified() && six.is_ipv6());
    assert_eq!(six.port(), g.dht_addr().port());
    g.stop().await;
    assert_eq!(c.set("dht_ipv6", 3).unwrap_err().kind(), grenache::ErrorKind::InvalidArgument);
}

#[tokio::test]
async fn a_dual_stack_node_reports_ready_once_when_both_walks_ended() {
    // One walk waits for a bootstrap node that never answers; the other has nothing to do. Both
    // orders: the event must come when the slower one ends, never before.
    let dead4 = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let dead6 = std::net::UdpSocket::bind("[::1]:0").unwrap();
    for dead in [dead4.local_addr().unwrap(), dead6.local_addr().unwrap()] {
        let c = DhtConfig { query_timeout: Duration::from_millis(300), ..dual(&[dead]) };
        for _ in 0..3 {
            let node = Dht::bind(c.clone()).await.unwrap();
            // Subscribed late, as a face's listener is: the faster walk has ended by then.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let mut ev = node.events();
            // A subscriber that finds the node not ready is told when it is.
            let was_ready = node.is_ready();
            let mut readies = 0;
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                loop {
                    if let Ok(grenache::dht::DhtEvent::Ready) = ev.recv().await {
                        readies += 1;
                    }
                }
            })
            .await;
            assert!(node.is_ready());
            assert_eq!(readies, usize::from(!was_ready), "Ready reported once, after is_ready was false ({dead})");
            node.shutdown().await;
        }
    }
}
