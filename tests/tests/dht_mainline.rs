//! BEP5/BEP44 compliance: the `mainline` crate (pubky/mainline 8), as a plain client, announces,
//! looks up, puts and gets through a network of Rust Grenache DHT nodes on 127.0.0.1.
#![allow(clippy::unwrap_used)]

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use futures_util::StreamExt;
use grenache::dht::store::sig_data;
use grenache::dht::{Dht, DhtConfig, PutItem};
use grenache_e2e::free_udp_port;
use mainline::{Id, MutableItem, SigningKey};

const T: Duration = Duration::from_secs(60);

async fn rust_network(n: usize) -> Vec<Dht> {
    let mut nodes: Vec<Dht> = Vec::new();
    for i in 0..n {
        let boot: Vec<String> = nodes.iter().take(2).map(|d| d.local_addr().to_string()).collect();
        let cfg = DhtConfig { bind: "127.0.0.1:0".parse().unwrap(), bootstrap: boot, ..DhtConfig::default() };
        let d = Dht::bind(cfg).await.unwrap();
        if i > 0 {
            tokio::time::timeout(T, d.ready()).await.unwrap();
        }
        nodes.push(d);
    }
    nodes
}

/// A mainline node in client mode (the default "adaptive" mode: it sends `ro=1` and answers
/// nothing), bootstrapped from our nodes. The port is one the OS just handed out.
fn mainline_client(boot: &[SocketAddr]) -> mainline::async_dht::AsyncDht {
    let boot: Vec<String> = boot.iter().map(ToString::to_string).collect();
    mainline::Dht::builder()
        .bootstrap(&boot)
        .bind_address(Ipv4Addr::LOCALHOST)
        .port(free_udp_port())
        .request_timeout(Duration::from_millis(1000))
        .build()
        .unwrap()
        .as_async()
}

#[tokio::test]
async fn mainline_client_announces_and_looks_up_through_rust_nodes() {
    let nodes = rust_network(6).await;
    let ml = mainline_client(&[nodes[0].local_addr(), nodes[1].local_addr()]);
    assert!(tokio::time::timeout(T, ml.bootstrapped()).await.unwrap(), "mainline bootstrapped from Rust nodes");

    // mainline announces; a Rust node finds it (the stored IP is mainline's source IP).
    let ih = Id::random();
    tokio::time::timeout(T, ml.announce_peer(ih, Some(4444))).await.unwrap().expect("mainline announce_peer");
    let found = nodes[4].lookup(ih.as_bytes()).await.unwrap();
    assert_eq!(found, vec!["127.0.0.1:4444".parse::<SocketAddr>().unwrap()]);

    // a Rust node announces; mainline's get_peers finds it.
    let ih2 = Id::random();
    nodes[3].announce(ih2.as_bytes(), 5555).await.unwrap();
    let mut stream = ml.get_peers(ih2);
    let mut peers = Vec::new();
    while let Ok(Some(batch)) = tokio::time::timeout(T, stream.next()).await {
        peers.extend(batch);
    }
    peers.sort();
    peers.dedup();
    assert_eq!(peers, vec!["127.0.0.1:5555".parse::<std::net::SocketAddrV4>().unwrap()]);
}

#[tokio::test]
async fn mainline_client_puts_and_gets_immutable_and_mutable() {
    let nodes = rust_network(6).await;
    let ml = mainline_client(&[nodes[0].local_addr(), nodes[2].local_addr()]);
    assert!(tokio::time::timeout(T, ml.bootstrapped()).await.unwrap());

    // immutable: mainline puts, Rust gets; Rust puts, mainline gets
    let target = tokio::time::timeout(T, ml.put_immutable(b"hello from mainline")).await.unwrap().expect("put_immutable");
    let got = nodes[5].get(*target.as_bytes(), None, false).await.unwrap().expect("Rust reads mainline's value");
    assert_eq!(got.v_bencoded, b"19:hello from mainline");
    let (t2, _) = nodes[4].put(PutItem::Immutable { v_bencoded: b"15:hello from rust".to_vec() }).await.unwrap();
    let v = tokio::time::timeout(T, ml.get_immutable(Id::from_bytes(t2).unwrap())).await.unwrap();
    assert_eq!(v.as_deref(), Some(&b"hello from rust"[..]));

    // mutable (salted): mainline puts, Rust verifies and reads it
    let signer = SigningKey::from_bytes(&[3u8; 32]);
    let k = signer.verifying_key().to_bytes();
    let item = MutableItem::new(signer.clone(), b"ml v1", 1, Some(b"salt"));
    let out = tokio::time::timeout(T, ml.put_mutable(item, None)).await.unwrap().expect("put_mutable");
    let got = nodes[1].get(*out.target.as_bytes(), Some(b"salt"), false).await.unwrap().expect("Rust reads mutable");
    assert_eq!(got.v_bencoded, b"5:ml v1");
    assert_eq!(got.mutable.as_ref().unwrap().seq, 1);
    assert_eq!(got.mutable.as_ref().unwrap().k, k);

    // Rust updates it (seq 2); mainline reads the most recent
    let v = b"7:rust v2".to_vec();
    let rust_key = ed25519_dalek::SigningKey::from_bytes(&[3u8; 32]);
    use ed25519_dalek::Signer;
    let sig = rust_key.sign(&sig_data(Some(b"salt"), 2, &v)).to_bytes();
    nodes[2].put(PutItem::Mutable { v_bencoded: v, k, sig, seq: 2, salt: Some(b"salt".to_vec()), cas: Some(1) }).await.unwrap();
    let item = tokio::time::timeout(T, ml.get_mutable_most_recent(&k, Some(b"salt"))).await.unwrap().expect("mainline reads");
    assert_eq!(item.seq(), 2);
    assert_eq!(item.value(), b"rust v2");

    // a stale put from mainline is refused by the Rust nodes (KRPC 302)
    let stale = MutableItem::new(signer, b"stale", 1, Some(b"salt"));
    let e = tokio::time::timeout(T, ml.put_mutable(stale, None)).await.unwrap();
    assert!(e.is_err(), "stale put must fail: {e:?}");
}
