//! Node-level interop between the Rust DHT and the real `bittorrent-dht@10.0.0` (what Node
//! Grapes run), driven through `tests/interop/dht_node.js`.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use ed25519_dalek::{Signer, SigningKey};
use grenache::ErrorKind;
use grenache::dht::store::{mutable_target, sig_data};
use grenache::dht::{Dht, DhtConfig, PutItem};
use grenache_e2e::{NodeProcess, eventually};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(30);

fn cfg(bootstrap: &[SocketAddr]) -> DhtConfig {
    DhtConfig { bind: "127.0.0.1:0".parse().unwrap(), bootstrap: bootstrap.iter().map(|a| a.to_string()).collect(), ..DhtConfig::default() }
}

struct NodeDht {
    proc: NodeProcess,
    addr: SocketAddr,
    next: u64,
}

impl NodeDht {
    async fn start(bootstrap: &[SocketAddr]) -> NodeDht {
        Self::start_with(bootstrap, &[]).await
    }

    async fn start_with(bootstrap: &[SocketAddr], extra: &[&str]) -> NodeDht {
        let boot = bootstrap.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(",");
        let mut args = vec!["--bootstrap", &boot];
        args.extend_from_slice(extra);
        let mut proc = NodeProcess::spawn("dht_node.js", &args);
        let port = loop {
            let v = proc.json(T).await;
            if v["event"] == "listening" {
                break v["port"].as_u64().unwrap() as u16;
            }
        };
        NodeDht { proc, addr: SocketAddr::from(([127, 0, 0, 1], port)), next: 0 }
    }

    async fn wait_event(&mut self, name: &str) -> Value {
        loop {
            let v = self.proc.json(T).await;
            if v["event"] == name {
                return v;
            }
        }
    }

    async fn cmd(&mut self, mut c: Value) -> Value {
        self.next += 1;
        c["id"] = json!(self.next);
        self.proc.send_line(&c.to_string()).await;
        loop {
            let v = self.proc.json(T).await;
            if v["re"] == json!(self.next) {
                return v;
            }
        }
    }

    async fn lookup(&mut self, name: &str) -> Vec<String> {
        let r = self.cmd(json!({"cmd": "lookup", "name": name})).await;
        let mut peers: Vec<String> = r["peers"].as_array().unwrap().iter().map(|p| p.as_str().unwrap().to_string()).collect();
        peers.sort();
        peers
    }
}

/// Rust R1 <- Node N <- Rust R2: each bootstraps from the previous one.
async fn mixed_network() -> (Dht, NodeDht, Dht) {
    let r1 = Dht::bind(cfg(&[])).await.unwrap();
    let mut n = NodeDht::start(&[r1.local_addr()]).await;
    n.wait_event("ready").await;
    let r2 = Dht::bind(cfg(&[n.addr])).await.unwrap();
    tokio::time::timeout(T, r2.ready()).await.unwrap();
    // The Node node learned about R1 from its bootstrap; R1 learns about N from N's queries.
    eventually(T, "R1 knows the Node node", || {
        let r1 = r1.clone();
        async move { (r1.node_count() >= 1).then_some(()) }
    })
    .await;
    assert!(r2.node_count() >= 1, "R2 bootstrapped from the Node node");
    (r1, n, r2)
}

#[tokio::test]
async fn node_and_rust_bootstrap_each_other_and_announce_both_ways() {
    let (r1, mut n, r2) = mixed_network().await;
    let c = n.cmd(json!({"cmd": "nodes"})).await;
    assert!(c["count"].as_u64().unwrap() >= 1, "the Node node has Rust nodes in its table: {c}");

    // Rust announces a raw-name info-hash; Node looks it up.
    let hits = r2.announce(b"rest:util:net", 1337).await.unwrap();
    assert!(hits >= 1);
    assert_eq!(n.lookup("rest:util:net").await, vec!["127.0.0.1:1337"]);

    // Node announces; both Rust nodes find it.
    let r = n.cmd(json!({"cmd": "announce", "name": "svc:from-node", "port": 4242})).await;
    assert_eq!(r["err"], Value::Null, "{r}");
    assert!(r["n"].as_u64().unwrap() >= 1);
    let want = vec!["127.0.0.1:4242".parse::<SocketAddr>().unwrap()];
    assert_eq!(r1.lookup(b"svc:from-node").await.unwrap(), want);
    assert_eq!(r2.lookup(b"svc:from-node").await.unwrap(), want);

    // Short (1 byte) and long (> 20 bytes) names, both ways.
    r1.announce(b"B", 2000).await.unwrap();
    assert_eq!(n.lookup("B").await, vec!["127.0.0.1:2000"]);
    let long = "a-service-name-that-is-much-longer-than-twenty-bytes";
    let r = n.cmd(json!({"cmd": "announce", "name": long, "port": 2001})).await;
    assert_eq!(r["err"], Value::Null, "{r}");
    assert_eq!(r2.lookup(long.as_bytes()).await.unwrap(), vec!["127.0.0.1:2001".parse::<SocketAddr>().unwrap()]);
    r1.shutdown().await;
    r2.shutdown().await;
}

#[tokio::test]
async fn immutable_put_get_both_ways() {
    let (r1, mut n, r2) = mixed_network().await;
    // Rust puts, Node gets (from the network: cache false)
    let (target, hits) = r2.put(PutItem::Immutable { v_bencoded: b"10:hello rust".to_vec() }).await.unwrap();
    assert!(hits >= 1);
    let r = n.cmd(json!({"cmd": "get", "hash": hex::encode(target)})).await;
    assert_eq!(r["v"], "hello rust", "{r}");

    // Node puts, Rust gets
    let r = n.cmd(json!({"cmd": "put", "v": "hello node"})).await;
    assert_eq!(r["err"], Value::Null, "{r}");
    let hash = r["hash"].as_str().unwrap().to_string();
    assert_eq!(hash, hex::encode(grenache::dht::store::sha1(b"10:hello node")));
    let target: [u8; 20] = hex::decode(&hash).unwrap().try_into().unwrap();
    for r in [&r1, &r2] {
        let got = r.get(target, None, false).await.unwrap().expect("value put by the Node node");
        assert_eq!(got.v_bencoded, b"10:hello node");
    }
}

#[tokio::test]
async fn mutable_put_get_both_ways() {
    let (r1, mut n, r2) = mixed_network().await;
    let seed = [7u8; 32];
    let key = SigningKey::from_bytes(&seed);
    let k = key.verifying_key().to_bytes();

    // Rust puts (salted), Node gets with the salt
    let v = b"6:from r".to_vec();
    let sig = key.sign(&sig_data(Some(b"s1"), 1, &v)).to_bytes();
    let (target, _) = r1.put(PutItem::Mutable { v_bencoded: v, k, sig, seq: 1, salt: Some(b"s1".to_vec()), cas: None }).await.unwrap();
    assert_eq!(target, mutable_target(&k, b"s1"));
    let r = n.cmd(json!({"cmd": "get", "hash": hex::encode(target), "salt": "s1"})).await;
    assert_eq!(r["v"], "from r", "{r}");
    assert_eq!(r["seq"], 1);

    // Node puts (same key, no salt), Rust gets.
    let r = n.cmd(json!({"cmd": "put_mutable", "v": "from node", "seq": 5, "seed": hex::encode(seed)})).await;
    assert_eq!(r["err"], Value::Null, "{r}");
    assert_eq!(r["hash"], hex::encode(mutable_target(&k, b"")));
    let got = r2.get(mutable_target(&k, b""), None, false).await.unwrap().expect("node's mutable item");
    assert_eq!(got.v_bencoded, b"9:from node");
    assert_eq!(got.mutable.unwrap().seq, 5);

    // Rust updates to seq 6 (stored by the Node node too); Node reads the update.
    let v = b"2:v6".to_vec();
    let sig = key.sign(&sig_data(None, 6, &v)).to_bytes();
    r2.put(PutItem::Mutable { v_bencoded: v, k, sig, seq: 6, salt: None, cas: None }).await.unwrap();
    let r = n.cmd(json!({"cmd": "get", "hash": hex::encode(mutable_target(&k, b""))})).await;
    assert_eq!(r["v"], "v6", "{r}");
    assert_eq!(r["seq"], 6);

    // A stale put from Node is refused by the Rust nodes with KRPC 302 ...
    let r = n.cmd(json!({"cmd": "put_mutable", "v": "old", "seq": 4, "seed": hex::encode(seed)})).await;
    assert_eq!(r["code"], 302, "{r}");
    assert_eq!(r["err"], "302 sequence number less than current");
    // ... and a stale put from Rust by the Node node (and R1).
    let v = b"5:stale".to_vec();
    let sig = key.sign(&sig_data(None, 3, &v)).to_bytes();
    let e = r2.put(PutItem::Mutable { v_bencoded: v, k, sig, seq: 3, salt: None, cas: None }).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::SeqTooLow, "{e}");
    assert_eq!(e.message(), "302 sequence number less than current");
}

#[tokio::test]
async fn mutable_put_to_a_stock_node_without_verifier_fails_cleanly() {
    // A stock grenache-grape 1.0.0 has no verifier: it answers mutable puts with KRPC 400,
    // which is not a 3xx, so the put reports "All queries failed" (spec §4.7 item 7).
    let r = Dht::bind(cfg(&[])).await.unwrap();
    let mut n = NodeDht::start_with(&[r.local_addr()], &["--no-verify"]).await;
    n.wait_event("ready").await;
    eventually(T, "R knows the Node node", || {
        let r = r.clone();
        async move { (r.node_count() >= 1).then_some(()) }
    })
    .await;
    let key = SigningKey::from_bytes(&[9u8; 32]);
    let v = b"1:x".to_vec();
    let sig = key.sign(&sig_data(None, 1, &v)).to_bytes();
    let k = key.verifying_key().to_bytes();
    let e = r.put(PutItem::Mutable { v_bencoded: v, k, sig, seq: 1, salt: None, cas: None }).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AllQueriesFailed, "{e}");
    // immutable puts still work
    let (_, hits) = r.put(PutItem::Immutable { v_bencoded: b"1:y".to_vec() }).await.unwrap();
    assert_eq!(hits, 1);
}
