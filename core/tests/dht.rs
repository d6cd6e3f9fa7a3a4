//! Integration tests of the KRPC DHT node: several Rust nodes on 127.0.0.1, plus raw UDP probes.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use ed25519_dalek::{Signer, SigningKey};
use grenache::ErrorKind;
use grenache::dht::store::{mutable_target, sha1, sig_data};
use grenache::dht::{Dht, DhtConfig, DhtEvent, PutItem};
use tokio::net::UdpSocket;

fn cfg(bootstrap: &[SocketAddr]) -> DhtConfig {
    DhtConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        bootstrap: bootstrap.iter().map(|a| a.to_string()).collect(),
        query_timeout: Duration::from_millis(1000),
        ..DhtConfig::default()
    }
}

async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out after {timeout:?} waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A small network: node 0 has no bootstrap, the others bootstrap to node 0 (and node 1).
async fn network(n: usize, tweak: impl Fn(&mut DhtConfig)) -> Vec<Dht> {
    let mut c = cfg(&[]);
    tweak(&mut c);
    let first = Dht::bind(c).await.unwrap();
    let mut nodes = vec![first];
    for i in 1..n {
        let mut boot = vec![nodes[0].local_addr()];
        if i > 1 {
            boot.push(nodes[1].local_addr());
        }
        let mut c = cfg(&boot);
        tweak(&mut c);
        nodes.push(Dht::bind(c).await.unwrap());
    }
    for n in &nodes {
        tokio::time::timeout(Duration::from_secs(30), n.ready()).await.expect("ready");
    }
    nodes
}

fn peer(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[tokio::test]
async fn announce_through_one_lookup_through_another() {
    let nodes = network(3, |_| {}).await;
    let n = nodes[1].announce(b"rest:util:net", 1337).await.expect("announce");
    assert!(n >= 1, "at least one node stored the peer");
    let found = nodes[2].lookup(b"rest:util:net").await.unwrap();
    assert_eq!(found, vec![peer("127.0.0.1:1337")]);
    // an unknown name gives nothing
    assert!(nodes[2].lookup(b"unknown-service").await.unwrap().is_empty());
    // a 0-byte and a long (> 20 bytes) name work too
    nodes[2].announce(b"", 1).await.unwrap();
    nodes[2].announce(&[b'x'; 100], 2).await.unwrap();
    assert_eq!(nodes[0].lookup(b"").await.unwrap(), vec![peer("127.0.0.1:1")]);
    assert_eq!(nodes[1].lookup(&[b'x'; 100]).await.unwrap(), vec![peer("127.0.0.1:2")]);
    for n in &nodes {
        n.shutdown().await;
    }
}

#[tokio::test]
async fn announce_event_fires_on_the_storing_node() {
    let nodes = network(2, |_| {}).await;
    let mut ev = nodes[0].events();
    nodes[1].announce(b"svc:ev", 4000).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Ok(DhtEvent::Announce { info_hash, peer }) = ev.recv().await {
                return (info_hash, peer);
            }
        }
    })
    .await
    .expect("announce event");
    assert_eq!(got, (b"svc:ev".to_vec(), peer("127.0.0.1:4000")));
    assert_eq!(nodes[0].local_peers(b"svc:ev", 10), vec![peer("127.0.0.1:4000")]);
}

#[tokio::test]
async fn peers_expire_after_max_age() {
    let nodes = network(3, |c| c.peer_max_age = Duration::from_millis(200)).await;
    nodes[1].announce(b"svc:expiring", 1337).await.unwrap();
    // visible at first (the lookup may run after expiry on a very busy machine, hence polling the
    // store directly on the storing side as well)
    let stored_somewhere = nodes.iter().any(|n| !n.local_peers(b"svc:expiring", 10).is_empty());
    let found = nodes[2].lookup(b"svc:expiring").await.unwrap();
    assert!(stored_somewhere || found == vec![peer("127.0.0.1:1337")]);
    eventually(Duration::from_secs(5), "peer expired everywhere", || {
        let nodes = nodes.clone();
        async move {
            let empty = nodes[2].lookup(b"svc:expiring").await.unwrap().is_empty()
                && nodes.iter().all(|n| n.local_peers(b"svc:expiring", 10).is_empty());
            empty.then_some(())
        }
    })
    .await;
    // and a fresh announce brings it back
    nodes[1].announce(b"svc:expiring", 1338).await.unwrap();
    let found = nodes[0].lookup(b"svc:expiring").await.unwrap();
    assert!(found.contains(&peer("127.0.0.1:1338")) || nodes.iter().any(|n| !n.local_peers(b"svc:expiring", 10).is_empty()));
}

#[tokio::test]
async fn hundred_nodes() {
    let nodes = network(100, |_| {}).await;
    let n = nodes[1].announce(b"B", 2000).await.expect("announce in a 100-node network");
    assert!(n >= 1);
    for i in [2, 3, 50, 99] {
        let found = nodes[i].lookup(b"B").await.unwrap();
        assert_eq!(found, vec![peer("127.0.0.1:2000")], "lookup from node {i}");
    }
    let n = nodes[77].announce(b"rest:util:net", 3000).await.unwrap();
    assert!(n >= 1);
    assert_eq!(nodes[5].lookup(b"rest:util:net").await.unwrap(), vec![peer("127.0.0.1:3000")]);
    for n in &nodes {
        n.shutdown().await;
    }
}

#[tokio::test]
async fn concurrent_identical_lookups_agree() {
    let nodes = network(4, |_| {}).await;
    nodes[1].announce(b"svc:co", 5000).await.unwrap();
    let a = nodes[3].clone();
    let futs: Vec<_> = (0..10)
        .map(|_| {
            let a = a.clone();
            tokio::spawn(async move { a.lookup(b"svc:co").await })
        })
        .collect();
    for f in futs {
        assert_eq!(f.await.unwrap().unwrap(), vec![peer("127.0.0.1:5000")]);
    }
}

#[tokio::test]
async fn lone_node_announce_and_self_host() {
    let lone = Dht::bind(cfg(&[])).await.unwrap();
    lone.ready().await;
    let e = lone.announce(b"lonely", 7000).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NoNodes);
    assert!(lone.lookup(b"lonely").await.unwrap().is_empty());

    let mut c = cfg(&[]);
    c.self_host = Some("127.0.0.1".parse().unwrap());
    let host = Dht::bind(c).await.unwrap();
    host.ready().await;
    let e = host.announce(b"self", 7001).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NoNodes);
    assert_eq!(host.local_peers(b"self", 10), vec![peer("127.0.0.1:7001")]);
    assert_eq!(host.lookup(b"self").await.unwrap(), vec![peer("127.0.0.1:7001")]);
    assert_eq!(host.announce(b"self", 0).await.unwrap_err().kind(), ErrorKind::InvalidArgument);
}

#[tokio::test]
async fn immutable_put_get() {
    let nodes = network(4, |_| {}).await;
    let (target, n) = nodes[1].put(PutItem::Immutable { v_bencoded: b"11:hello world".to_vec() }).await.unwrap();
    assert!(n >= 1);
    assert_eq!(hex::encode(target), "6d33adc2b6b2c14c3036feefb7fedbca1a880527");
    // local copy on the putting node
    let local = nodes[1].get(target, None, true).await.unwrap().unwrap();
    assert!(local.local);
    assert_eq!(local.id, nodes[1].id());
    // from the network on another node
    let got = nodes[3].get(target, None, false).await.unwrap().expect("found");
    assert!(!got.local);
    assert_eq!(got.v_bencoded, b"11:hello world");
    assert!(got.token.is_some());
    assert!(got.mutable.is_none());
    // unknown target
    assert!(nodes[3].get(sha1(b"3:xyz"), None, false).await.unwrap().is_none());
    // too big
    let mut big = b"1001:".to_vec();
    big.extend(vec![b'a'; 1001]);
    assert_eq!(nodes[1].put(PutItem::Immutable { v_bencoded: big }).await.unwrap_err().kind(), ErrorKind::InvalidArgument);
}

fn mutable(key: &SigningKey, v: &[u8], seq: i64, salt: Option<&[u8]>, cas: Option<i64>) -> PutItem {
    let mut vb = format!("{}:", v.len()).into_bytes();
    vb.extend_from_slice(v);
    let sig = key.sign(&sig_data(salt, seq, &vb)).to_bytes();
    PutItem::Mutable { v_bencoded: vb, k: key.verifying_key().to_bytes(), sig, seq, salt: salt.map(<[u8]>::to_vec), cas }
}

#[tokio::test]
async fn mutable_put_update_reject() {
    let nodes = network(4, |_| {}).await;
    let key = SigningKey::from_bytes(&[7u8; 32]);
    let k = key.verifying_key().to_bytes();
    let (target, n) = nodes[1].put(mutable(&key, b"mutable v1", 1, None, None)).await.unwrap();
    assert!(n >= 1);
    assert_eq!(target, mutable_target(&k, b""));
    let got = nodes[2].get(target, None, false).await.unwrap().expect("v1");
    assert_eq!(got.v_bencoded, b"10:mutable v1");
    assert_eq!(got.mutable.as_ref().unwrap().seq, 1);
    assert_eq!(got.mutable.as_ref().unwrap().k, k);

    let e = nodes[1].put(mutable(&key, b"again", 1, None, None)).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::SeqTooLow);
    assert_eq!(e.message(), "302 sequence number less than current");
    let e = nodes[1].put(mutable(&key, b"v2", 2, None, Some(5))).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::CasMismatch);
    assert_eq!(e.message(), "301 CAS mismatch, re-read and try again");
    nodes[1].put(mutable(&key, b"v2", 2, None, Some(1))).await.unwrap();
    let got = nodes[3].get(target, None, false).await.unwrap().expect("v2");
    assert_eq!(got.v_bencoded, b"2:v2");
    assert_eq!(got.mutable.unwrap().seq, 2);

    // a bad signature is dropped silently by every node
    let PutItem::Mutable { v_bencoded, k, seq, salt, cas, .. } = mutable(&key, b"v3", 3, None, None) else { unreachable!() };
    let e = nodes[1].put(PutItem::Mutable { v_bencoded, k, sig: [1; 64], seq, salt, cas }).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AllQueriesFailed);

    // salted: target sha1(k ‖ salt); reading needs the salt
    let (ts, _) = nodes[1].put(mutable(&key, b"salted", 1, Some(b"mysalt"), None)).await.unwrap();
    assert_eq!(ts, mutable_target(&k, b"mysalt"));
    assert_ne!(ts, target);
    let got = nodes[2].get(ts, Some(b"mysalt"), false).await.unwrap().expect("salted");
    assert_eq!(got.v_bencoded, b"6:salted");
    assert!(nodes[2].get(ts, None, false).await.unwrap().is_none(), "without the salt the check fails");
}

async fn raw_ping(sock: &UdpSocket, to: SocketAddr, t: &[u8]) -> Option<Vec<u8>> {
    let mut q = format!("d1:ad2:id20:{}e1:q4:ping1:t{}:", "r".repeat(20), t.len()).into_bytes();
    q.extend_from_slice(t);
    q.extend_from_slice(b"1:y1:qe");
    sock.send_to(&q, to).await.unwrap();
    next_reply(sock).await
}

/// The next datagram that is not a query: the node pings a node that queried it before it
/// answered anything (to learn whether it is a good node), and those pings are skipped here.
async fn next_reply(sock: &UdpSocket) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 65536];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        match tokio::time::timeout_at(deadline, sock.recv_from(&mut buf)).await {
            // The node learned this socket as a DHT node from the ping and may query it (its
            // routing-table refresh): skip queries, wait for the reply.
            Ok(Ok((n, _))) if matches!(grenache::dht::krpc::decode(&buf[..n]), Ok(m) if matches!(m.body, grenache::dht::krpc::Body::Query(_))) =>
                {}
            Ok(Ok((n, _))) => return Some(buf[..n].to_vec()),
            _ => return None,
        }
    }
}

#[tokio::test]
async fn crash_inputs_are_dropped_and_the_node_keeps_answering() {
    // no maintenance: the probe socket would get refresh queries among the replies it reads
    let node = Dht::bind(DhtConfig { maintenance_rate: 0, ..cfg(&[]) }).await.unwrap();
    let to = node.local_addr();
    let mut ev = node.events();
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let id = "a".repeat(20);
    let crashers: Vec<Vec<u8>> = vec![
        b"d1:t2:aa1:y1:qe".to_vec(),
        format!("d1:ad2:id20:{id}6:targeti1ee1:q9:find_node1:t2:aa1:y1:qe").into_bytes(),
        format!("d1:ad2:id20:{id}9:info_hashi1ee1:q9:get_peers1:t2:aa1:y1:qe").into_bytes(),
        format!("d1:ad2:id20:{id}6:targeti1ee1:q3:get1:t2:aa1:y1:qe").into_bytes(),
        b"garbage".to_vec(),
        b"".to_vec(),
        vec![b'l'; 5000],
        b"d1:rd2:id20:aaaaaaaaaaaaaaaaaaaae1:t1:x1:y1:re".to_vec(),
        b"d1:rd2:id20:aaaaaaaaaaaaaaaaaaaae1:t2:\xff\xff1:y1:re".to_vec(),
        b"d1:eli1ee1:t2:xx1:y1:ee".to_vec(),
        b"d1:y1:ze".to_vec(),
    ];
    for c in &crashers {
        sock.send_to(c, to).await.unwrap();
    }
    // announce with out-of-range ports: no reply at all (like the reference) but no crash
    let token = {
        let q = format!("d1:ad2:id20:{id}9:info_hash3:svce1:q9:get_peers1:t2:gp1:y1:qe");
        sock.send_to(q.as_bytes(), to).await.unwrap();
        let got = next_reply(&sock).await.expect("a reply");
        let m = grenache::dht::krpc::decode(&got).unwrap();
        let grenache::dht::krpc::Body::Response(r) = m.body else { panic!("not a response") };
        r.token.unwrap()
    };
    for port in ["i70000e", "i-5e", "i0e", "3:abc"] {
        let mut q = format!("d1:ad2:id20:{id}9:info_hash3:svc4:port{port}5:token20:").into_bytes();
        q.extend_from_slice(&token);
        q.extend_from_slice(b"e1:q13:announce_peer1:t2:ap1:y1:qe");
        sock.send_to(&q, to).await.unwrap();
    }
    // the node still answers, and its reply to the ping is the next datagram we get (nothing
    // was sent back for any of the inputs above)
    let reply = raw_ping(&sock, to, b"pi").await.expect("ping reply");
    let mut want = b"d1:rd2:id20:".to_vec();
    want.extend_from_slice(&node.id());
    want.extend_from_slice(b"e1:t2:pi1:y1:re");
    assert_eq!(reply, want);
    assert!(node.local_peers(b"svc", 10).is_empty());
    // warnings were emitted for the malformed ones
    let mut warnings = 0;
    while let Ok(e) = ev.try_recv() {
        if matches!(e, DhtEvent::Warning(_)) {
            warnings += 1;
        }
    }
    assert!(warnings >= 8, "got {warnings} warnings");
}

#[tokio::test]
async fn transaction_ids_of_any_length_are_echoed() {
    let node = Dht::bind(cfg(&[])).await.unwrap();
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for t in [&b""[..], b"x", b"hello", &[0u8; 40]] {
        let reply = raw_ping(&sock, node.local_addr(), t).await.expect("reply");
        let m = grenache::dht::krpc::decode(&reply).unwrap();
        assert_eq!(m.t, t);
    }
    // unknown method: no reply; then a ping is answered
    sock.send_to(b"d1:ad2:id20:aaaaaaaaaaaaaaaaaaaae1:q4:vote1:t2:vv1:y1:qe", node.local_addr()).await.unwrap();
    let reply = raw_ping(&sock, node.local_addr(), b"zz").await.unwrap();
    assert_eq!(grenache::dht::krpc::decode(&reply).unwrap().t, b"zz");
}

#[tokio::test]
async fn ready_fires_when_bootstrap_is_unreachable() {
    // a socket that never answers
    let black_hole = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let node = Dht::bind(cfg(&[black_hole.local_addr().unwrap()])).await.unwrap();
    let mut ev = node.events();
    tokio::time::timeout(Duration::from_secs(10), node.ready()).await.expect("ready despite a dead bootstrap node");
    assert!(node.is_ready());
    assert_eq!(node.node_count(), 0);
    // an unresolvable/garbage bootstrap entry does not block either
    let mut c = cfg(&[]);
    c.bootstrap = vec!["not a host".into()];
    let n2 = Dht::bind(c).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), n2.ready()).await.expect("ready");
    drop(ev.try_recv());
}

#[tokio::test]
async fn replies_from_the_wrong_ip_are_ignored() {
    // the bootstrap "node" gets the find_node on 127.0.0.1 but answers from 127.0.0.2
    let fake = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let Ok(liar) = UdpSocket::bind("127.0.0.2:0").await else { return }; // no 127/8 loopback: skip
    // no maintenance: its retries of the bootstrap node would reach `fake` among node2's queries
    let node = Dht::bind(DhtConfig { maintenance_rate: 0, ..cfg(&[fake.local_addr().unwrap()]) }).await.unwrap();
    let mut ev = node.events();
    let mut buf = vec![0u8; 2048];
    let (n, from) = tokio::time::timeout(Duration::from_secs(5), fake.recv_from(&mut buf)).await.unwrap().unwrap();
    let q = grenache::dht::krpc::decode(&buf[..n]).unwrap();
    assert_eq!(q.t.len(), 2, "we send 2-byte transaction ids");
    assert_ne!(q.t, [0, 0]);
    let mut r = b"d1:rd2:id20:bbbbbbbbbbbbbbbbbbbbe1:t2:".to_vec();
    r.extend_from_slice(&q.t);
    r.extend_from_slice(b"1:y1:re");
    liar.send_to(&r, from).await.unwrap();
    let warned = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Ok(DhtEvent::Warning(w)) = ev.recv().await
                && w.contains("out of order")
            {
                return;
            }
        }
    })
    .await;
    assert!(warned.is_ok(), "expected an out-of-order warning");
    node.ready().await;
    assert_eq!(node.node_count(), 0, "the liar was not added");
    // the genuine reply (right IP) is accepted and adds the node
    let node2 = Dht::bind(cfg(&[fake.local_addr().unwrap()])).await.unwrap();
    let (n, from) = tokio::time::timeout(Duration::from_secs(5), fake.recv_from(&mut buf)).await.unwrap().unwrap();
    let q = grenache::dht::krpc::decode(&buf[..n]).unwrap();
    let mut r = b"d1:rd2:id20:bbbbbbbbbbbbbbbbbbbb5:nodes0:e1:t2:".to_vec();
    r.extend_from_slice(&q.t);
    r.extend_from_slice(b"1:y1:re");
    fake.send_to(&r, from).await.unwrap();
    node2.ready().await;
    assert_eq!(node2.node_count(), 1);
}

#[tokio::test]
async fn shutdown_frees_the_port_and_cancels_pending_ops() {
    let black_hole = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut c = cfg(&[black_hole.local_addr().unwrap()]);
    c.query_timeout = Duration::from_secs(30);
    let node = Dht::bind(c).await.unwrap();
    let addr = node.local_addr();
    let n2 = node.clone();
    let pending = tokio::spawn(async move { n2.lookup(b"never").await });
    let n3 = node.clone();
    let pending_put = tokio::spawn(async move { n3.put(PutItem::Immutable { v_bencoded: b"1:x".to_vec() }).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    tokio::time::timeout(Duration::from_secs(5), node.shutdown()).await.expect("shutdown is quick");
    let r = tokio::time::timeout(Duration::from_secs(5), pending).await.unwrap().unwrap();
    assert_eq!(r.unwrap_err().kind(), ErrorKind::Cancelled);
    let r = tokio::time::timeout(Duration::from_secs(5), pending_put).await.unwrap().unwrap();
    assert_eq!(r.unwrap_err().kind(), ErrorKind::Cancelled);
    assert_eq!(node.lookup(b"x").await.unwrap_err().kind(), ErrorKind::Cancelled);
    // the port can be bound again, by a plain socket and by a new node
    let again = std::net::UdpSocket::bind(addr).expect("port is free after shutdown");
    drop(again);
    let mut c = cfg(&[]);
    c.bind = addr;
    let node = Dht::bind(c).await.expect("rebind the same port");
    node.shutdown().await;
}

#[tokio::test]
async fn dropping_every_handle_frees_the_port() {
    let node = Dht::bind(cfg(&[])).await.unwrap();
    let addr = node.local_addr();
    drop(node);
    eventually(Duration::from_secs(5), "port free after drop", || async move { std::net::UdpSocket::bind(addr).ok().map(|_| ()) }).await;
}

#[tokio::test]
async fn announce_recovers_after_the_cached_nodes_die() {
    let a = Dht::bind(cfg(&[])).await.unwrap();
    let b = Dht::bind(cfg(&[a.local_addr()])).await.unwrap();
    b.ready().await;
    assert_eq!(b.announce(b"svc:phoenix", 1000).await.unwrap(), 1);
    a.shutdown().await;
    // a new node joins through b; b's cached table still only holds the dead a
    let d = Dht::bind(cfg(&[b.local_addr()])).await.unwrap();
    d.ready().await;
    let e = b.announce(b"svc:phoenix", 1000).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AllQueriesFailed);
    // the failed table was dropped: the next announce walks again and reaches d
    assert_eq!(b.announce(b"svc:phoenix", 1000).await.unwrap(), 1);
    assert_eq!(d.local_peers(b"svc:phoenix", 10), vec![peer("127.0.0.1:1000")]);
}

#[tokio::test]
async fn identical_concurrent_lookups_are_merged() {
    // The only node known is a fake that never answers: every walk asks it once and waits for
    // the timeout. Ten concurrent lookups of one name must cost a single get_peers.
    let fake = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let node = Dht::bind(cfg(&[fake.local_addr().unwrap()])).await.unwrap();
    node.ready().await;
    let lookups: Vec<_> = (0..10)
        .map(|_| {
            let n = node.clone();
            tokio::spawn(async move { n.lookup(b"svc:merged").await })
        })
        .collect();
    let other = node.clone();
    let different = tokio::spawn(async move { other.lookup(b"svc:other").await.map(|v| v.len()) });
    let mut get_peers = std::collections::HashMap::<Vec<u8>, usize>::new();
    let mut buf = vec![0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_millis(1500);
    while let Ok(Ok((n, _))) = tokio::time::timeout_at(deadline, fake.recv_from(&mut buf)).await {
        if let Ok(m) = grenache::dht::krpc::decode(&buf[..n])
            && let grenache::dht::krpc::Body::Query(q) = m.body
            && let grenache::dht::krpc::Method::GetPeers { info_hash: Some(ih) } = q.method
        {
            *get_peers.entry(ih).or_default() += 1;
        }
    }
    for l in lookups {
        assert!(l.await.unwrap().unwrap().is_empty());
    }
    assert_eq!(different.await.unwrap().unwrap(), 0);
    assert_eq!(get_peers.get(&b"svc:merged"[..]), Some(&1), "{get_peers:?}");
    assert_eq!(get_peers.get(&b"svc:other"[..]), Some(&1), "{get_peers:?}");
}

#[tokio::test]
async fn dead_nodes_are_dropped_and_an_empty_table_bootstraps_again() {
    let d = Dht::bind(cfg(&[])).await.unwrap();
    let d_addr = d.local_addr();
    let mut c = cfg(&[d_addr]);
    c.node_liveness = Duration::from_millis(300);
    c.query_timeout = Duration::from_millis(300);
    let c = Dht::bind(c).await.unwrap();
    c.ready().await;
    assert_eq!(c.node_count(), 1);
    // d dies: the liveness check pings it and drops it
    d.shutdown().await;
    eventually(Duration::from_secs(20), "dead node dropped", || {
        let c = c.clone();
        async move { (c.node_count() == 0).then_some(()) }
    })
    .await;
    // a node comes back on the bootstrap address: the empty table bootstraps again and finds it
    let mut again = cfg(&[]);
    again.bind = d_addr;
    let d2 = Dht::bind(again).await.unwrap();
    eventually(Duration::from_secs(20), "re-bootstrapped", || {
        let c = c.clone();
        async move { (c.node_count() == 1).then_some(()) }
    })
    .await;
    assert_eq!(d2.node_count(), 1, "d2 learned about c from its queries");
}

/// The Grape spawns these futures on a multi-threaded runtime: they must be `Send`, and the
/// handle `Send + Sync`.
#[allow(dead_code, clippy::let_underscore_future)]
fn futures_are_send(d: Dht) {
    fn send<T: Send>(_: T) {}
    fn send_sync<T: Send + Sync>(_: &T) {}
    send_sync(&d);
    send(d.announce(b"x", 1));
    send(d.lookup(b"x"));
    send(d.put(PutItem::Immutable { v_bencoded: b"1:x".to_vec() }));
    send(d.get([0; 20], None, true));
    send(d.ready());
    send(d.shutdown());
    send(Dht::bind(cfg(&[])));
}

#[tokio::test]
async fn a_full_bucket_stays_at_k_nodes() {
    // no maintenance: refresh walks would query (and drop) the silent probe sockets
    let node = Dht::bind(DhtConfig { maintenance_rate: 0, ..cfg(&[]) }).await.unwrap();
    let own = node.id();
    let mut socks = Vec::new();
    // 30 senders whose ids all differ from ours in the first bit: they share bucket 0.
    for i in 0..30u8 {
        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut id = own;
        id[0] ^= 0x80;
        id[19] = i;
        let mut q = b"d1:ad2:id20:".to_vec();
        q.extend_from_slice(&id);
        q.extend_from_slice(b"e1:q4:ping1:t2:pp1:y1:qe");
        s.send_to(&q, node.local_addr()).await.unwrap();
        let mut buf = [0u8; 512];
        tokio::time::timeout(Duration::from_secs(5), s.recv_from(&mut buf)).await.unwrap().unwrap();
        socks.push(s);
    }
    assert_eq!(node.node_count(), 20, "K = 20 per bucket");
    // a sender with BEP43 ro=1 is never added
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut q = b"d1:ad2:id20:".to_vec();
    let mut id = own;
    id[0] ^= 0x40;
    q.extend_from_slice(&id);
    q.extend_from_slice(b"e1:q4:ping2:roi1e1:t2:pp1:y1:qe");
    s.send_to(&q, node.local_addr()).await.unwrap();
    let mut buf = [0u8; 512];
    tokio::time::timeout(Duration::from_secs(5), s.recv_from(&mut buf)).await.unwrap().unwrap();
    assert_eq!(node.node_count(), 20);
}

#[tokio::test]
async fn a_dead_node_in_a_full_bucket_is_replaced() {
    let mut c = cfg(&[]);
    // no maintenance: refresh walks would drop the silent nodes before the bucket-full check
    c.maintenance_rate = 0;
    c.node_liveness = Duration::from_millis(200);
    c.query_timeout = Duration::from_millis(300);
    let node = Dht::bind(c).await.unwrap();
    let own = node.id();
    let ping_from = |i: u8| {
        let mut id = own;
        id[0] ^= 0x80;
        id[19] = i;
        let mut q = b"d1:ad2:id20:".to_vec();
        q.extend_from_slice(&id);
        q.extend_from_slice(b"e1:q4:ping1:t2:pp1:y1:qe");
        q
    };
    // 20 silent nodes fill bucket 0 (each sends one ping, then never answers anything)
    let mut socks = Vec::new();
    for i in 0..20u8 {
        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        s.send_to(&ping_from(i), node.local_addr()).await.unwrap();
        let mut buf = [0u8; 512];
        tokio::time::timeout(Duration::from_secs(5), s.recv_from(&mut buf)).await.unwrap().unwrap();
        socks.push(s);
    }
    assert_eq!(node.node_count(), 20);
    tokio::time::sleep(Duration::from_millis(300)).await; // they are now stale
    let mut ev = node.events();
    let newcomer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    newcomer.send_to(&ping_from(99), node.local_addr()).await.unwrap();
    // the silent nodes get pinged (they do not answer), then the newcomer takes a place
    let newcomer_addr = newcomer.local_addr().unwrap();
    let added = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Ok(DhtEvent::Node(a)) = ev.recv().await
                && a == newcomer_addr
            {
                return;
            }
        }
    })
    .await;
    assert!(added.is_ok(), "newcomer replaced a dead node");
    assert!(node.node_count() <= 20);
    let mut pinged = 0;
    for s in &socks {
        let mut buf = [0u8; 512];
        if let Ok(Ok((n, _))) = tokio::time::timeout(Duration::from_millis(50), s.recv_from(&mut buf)).await
            && grenache::dht::krpc::decode(&buf[..n]).is_ok_and(|m| {
                matches!(
                    m.body,
                    grenache::dht::krpc::Body::Query(grenache::dht::krpc::Query { method: grenache::dht::krpc::Method::Ping, .. })
                )
            })
        {
            pinged += 1;
        }
    }
    // The bucket-full check pings the least recently seen node; the periodic liveness check
    // (node_liveness 200 ms here) may have pinged the others meanwhile, which is fine too.
    assert!(pinged >= 1, "silent nodes were pinged before being replaced");
}

/// A ping from a node id, sent from `sock` (which never answers anything).
async fn silent_ping(sock: &UdpSocket, to: SocketAddr, id: &[u8; 20]) {
    let mut q = b"d1:ad2:id20:".to_vec();
    q.extend_from_slice(id);
    q.extend_from_slice(b"e1:q4:ping1:t2:zz1:y1:qe");
    sock.send_to(&q, to).await.unwrap();
}

#[tokio::test]
async fn lookups_do_not_query_nodes_that_never_answered() {
    // No maintenance: its refresh walks are not what this test looks at.
    let nodes = network(3, |c| c.maintenance_rate = 0).await;
    nodes[1].announce(b"svc:questionable", 1337).await.expect("announce");
    // Nodes that ping node 2 but never answer a query (BEP 5's questionable nodes).
    let silent: Vec<UdpSocket> =
        futures_util::future::join_all((0..6).map(|_| UdpSocket::bind("127.0.0.1:0"))).await.into_iter().map(Result::unwrap).collect();
    for (i, s) in silent.iter().enumerate() {
        // Ids close to every target's first byte: they would be among the closest.
        let mut id = [i as u8; 20];
        id[0] = 0;
        silent_ping(s, nodes[2].local_addr(), &id).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(nodes[2].lookup(b"svc:questionable").await.unwrap(), vec![peer("127.0.0.1:1337")]);
    // The silent nodes got at most the ping that checks whether they answer: no lookup query.
    for s in &silent {
        let mut buf = vec![0u8; 2048];
        while let Ok(Ok((n, _))) = tokio::time::timeout(Duration::from_millis(100), s.recv_from(&mut buf)).await {
            let m = grenache::dht::krpc::decode(&buf[..n]).unwrap();
            // The answer to its own ping aside.
            let grenache::dht::krpc::Body::Query(q) = m.body else { continue };
            assert!(matches!(q.method, grenache::dht::krpc::Method::Ping), "{:?}", q.method);
        }
    }
    for n in &nodes {
        n.shutdown().await;
    }
}

#[tokio::test]
async fn queries_over_a_source_rate_are_dropped_and_long_keys_refused() {
    let node = Dht::bind(DhtConfig {
        limits: grenache::dht::limits::DhtLimits { queries_per_second: 1.0, query_burst: 3.0, ..Default::default() },
        ..cfg(&[])
    })
    .await
    .unwrap();
    let to = node.local_addr();
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    // ro=1: the node does not add (and ping) the sender.
    let mut answered = 0;
    for i in 0..6u8 {
        let q = format!("d1:ad2:id20:{}e1:q4:ping2:roi1e1:t2:p{}1:y1:qe", "r".repeat(20), i);
        sock.send_to(q.as_bytes(), to).await.unwrap();
    }
    let mut buf = vec![0u8; 2048];
    while let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(300), sock.recv_from(&mut buf)).await {
        answered += 1;
    }
    assert_eq!(answered, 3, "the burst is answered, the rest dropped");
    assert_eq!(node.refused_queries(), 3);
    // A service name over the longest key is refused before any query.
    let e = node.lookup(&[b'x'; 257]).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert!(node.lookup(&[b'x'; 256]).await.is_ok());
    node.shutdown().await;
}

/// Node 0 <- 1 <- 2 <- ... each bootstrapped from its predecessor only: the refresh rounds fill
/// every table, so node 0 (which only ever heard of node 1 at join time) learns them all.
#[tokio::test]
async fn chain_wired_tables_fill_up_by_refresh() {
    // started at once (nobody waits for its bootstrap node to join first), like a compose file
    let mut nodes: Vec<Dht> = Vec::new();
    for i in 0..8 {
        let boot: Vec<SocketAddr> = if i == 0 { vec![] } else { vec![nodes[i - 1].local_addr()] };
        nodes.push(Dht::bind(cfg(&boot)).await.unwrap());
    }
    let t0 = std::time::Instant::now();
    eventually(Duration::from_secs(30), "every table holds the 7 other nodes", || {
        let full = nodes.iter().all(|d| d.node_count() == 7);
        if t0.elapsed().as_millis() % 1000 < 20 {
            eprintln!("{:?}", nodes.iter().map(|d| d.node_count()).collect::<Vec<_>>());
        }
        async move { full.then_some(()) }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let s = nodes[7].stats();
    assert!(s.maintenance_queries > 0 && s.queries_sent >= s.maintenance_queries && s.replies_sent > 0, "{s:?}");
    for d in &nodes {
        d.shutdown().await;
    }
}

/// A node that goes silent is dropped from the table after a failed query, retried, and taken
/// back when it answers again (same id, same port); it learns the retrying node too.
#[tokio::test]
async fn a_node_that_went_silent_is_retried_and_taken_back() {
    let a = Dht::bind(cfg(&[])).await.unwrap();
    let b = Dht::bind(cfg(&[a.local_addr()])).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), b.ready()).await.unwrap();
    eventually(Duration::from_secs(10), "a knows b", || {
        let ok = a.node_count() == 1;
        async move { ok.then_some(()) }
    })
    .await;
    let (b_id, b_addr) = (b.id(), b.local_addr());
    let b_state = b.state_snapshot();
    assert_eq!(b_state.id, b_id);
    b.shutdown().await;
    // a lookup times out on b: b leaves a's table
    let _ = a.lookup(b"anything").await;
    assert_eq!(a.node_count(), 0);
    // b comes back on the same port with the same id and no bootstrap list
    let mut c = cfg(&[]);
    c.bind = b_addr;
    c.id = Some(b_id);
    let b = Dht::bind(c).await.unwrap();
    eventually(Duration::from_secs(30), "a takes b back and b learns a", || {
        let ok = a.nodes().iter().any(|n| n.id == b_id) && b.nodes().iter().any(|n| n.id == a.id());
        async move { ok.then_some(()) }
    })
    .await;
    a.shutdown().await;
    b.shutdown().await;
}

#[test]
fn dht_state_json_round_trip_and_errors() {
    use grenache::dht::DhtState;
    use grenache::dht::krpc::NodeInfo;
    let s = DhtState {
        id: [7; 20],
        nodes: vec![
            NodeInfo { id: [1; 20], addr: "127.0.0.1:20001".parse().unwrap() },
            NodeInfo { id: [2; 20], addr: "[::1]:20001".parse().unwrap() },
        ],
    };
    assert_eq!(DhtState::from_json(&s.to_json()).unwrap(), s);
    for bad in [
        "",
        "[]",
        r#"{"version":2,"id":"0707070707070707070707070707070707070707","nodes":[]}"#,
        r#"{"version":1,"id":"07","nodes":[]}"#,
        r#"{"version":1,"id":"0707070707070707070707070707070707070707"}"#,
        r#"{"version":1,"id":"0707070707070707070707070707070707070707","nodes":[{"id":"0101010101010101010101010101010101010101","addr":"localhost:5"}]}"#,
    ] {
        assert_eq!(DhtState::from_json(bad).unwrap_err().kind(), ErrorKind::InvalidArgument, "{bad}");
    }
}
