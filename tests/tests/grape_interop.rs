//! Grape interop: Rust Grapes and Node reference Grapes (grenache-grape 1.0.0) in one DHT, and
//! grenache-nodejs-link 1.0.2 talking to a Rust Grape's HTTP API.
//!
//! Needs `npm ci --prefix tests/interop` (scripts/test.sh does it). Everything binds 127.0.0.1.

use ed25519_dalek::{Signer, SigningKey};
use grenache::grape::Testnet;
use grenache_e2e::grapes::{NodeGrape, T, call, lookup, rust_grape};
use grenache_e2e::{NodeProcess, eventually};
use serde_json::{Value, json};

#[tokio::test]
async fn mixed_network_announce_lookup_put_get_both_ways() {
    // R0 <- N0 <- R1 <- N1: each bootstraps to the previous one.
    let r0 = rust_grape(vec![]).await;
    let mut n0 = NodeGrape::start(&[r0.dht_bootstrap_addr()], &[]).await;
    let r1 = rust_grape(vec![n0.dht.to_string()]).await;
    let mut n1 = NodeGrape::start(&[r1.dht_bootstrap_addr()], &[]).await;

    // Rust announce, Node lookup.
    let (st, body) = call(r1.api_addr(), "/announce", json!(["mix:from-rust", 7001])).await;
    assert_eq!(st, 200);
    assert!(body.parse::<u64>().is_ok_and(|n| n >= 1), "announce via Rust answered {body}");
    for api in [n0.api, n1.api] {
        eventually(T, "Node grape finds the Rust-announced service", || async move {
            (lookup(api, "mix:from-rust").await == ["127.0.0.1:7001"]).then_some(())
        })
        .await;
    }
    // Node announce, Rust lookup.
    let (st, body) = call(n1.api, "/announce", json!(["mix:from-node", 7002])).await;
    assert_eq!(st, 200);
    assert!(body.parse::<u64>().is_ok_and(|n| n >= 1), "announce via Node answered {body}");
    for api in [r0.api_addr(), r1.api_addr()] {
        eventually(T, "Rust grape finds the Node-announced service", || async move {
            (lookup(api, "mix:from-node").await == ["127.0.0.1:7002"]).then_some(())
        })
        .await;
    }

    // Immutable put through Rust, get through Node, and the reverse.
    let (_, h) = call(r0.api_addr(), "/put", json!({"v": "from rust"})).await;
    let hash: String = serde_json::from_str(&h).expect("hash");
    assert_eq!(hash.len(), 40, "{h}");
    for api in [n0.api, n1.api] {
        let hash = hash.clone();
        let v = eventually(T, "Node grape gets the Rust-put value", || {
            let hash = hash.clone();
            async move {
                let (_, b) = call(api, "/get", json!({"hash": hash})).await;
                serde_json::from_str::<Value>(&b).ok().and_then(|v| v["v"].as_str().map(String::from))
            }
        })
        .await;
        assert_eq!(v, "from rust");
    }
    let (_, h) = call(n0.api, "/put", json!({"v": "from node"})).await;
    let hash: String = serde_json::from_str(&h).expect("hash");
    for api in [r0.api_addr(), r1.api_addr()] {
        let hash = hash.clone();
        let v = eventually(T, "Rust grape gets the Node-put value", || {
            let hash = hash.clone();
            async move {
                let (_, b) = call(api, "/get", json!(hash)).await;
                serde_json::from_str::<Value>(&b).ok().and_then(|v| v["v"].as_str().map(String::from))
            }
        })
        .await;
        assert_eq!(v, "from node");
    }

    n0.proc.kill().await;
    n1.proc.kill().await;
    r0.stop().await;
    r1.stop().await;
}

fn signed(sk: &SigningKey, v: &str, seq: i64) -> Value {
    let msg = format!("3:seqi{seq}e1:v{}:{v}", v.len());
    json!({
        "v": v,
        "seq": seq,
        "k": hex::encode(sk.verifying_key().as_bytes()),
        "sig": hex::encode(sk.sign(msg.as_bytes()).to_bytes()),
    })
}

#[tokio::test]
async fn mutable_put_get_between_rust_and_node_with_verify() {
    let r = rust_grape(vec![]).await;
    let mut n = NodeGrape::start(&[r.dht_bootstrap_addr()], &["--verify"]).await;
    // Let the Node grape's bootstrap reach the Rust grape's routing table.
    eventually(T, "the Rust grape knows the Node grape", || async { (r.dht().node_count() >= 1).then_some(()) }).await;

    // Rust puts, Node (which stored it after verifying) serves it.
    let sk = SigningKey::from_bytes(&[3u8; 32]);
    let (st, h) = call(r.api_addr(), "/put", signed(&sk, "rust mutable", 1)).await;
    assert_eq!(st, 200, "{h}");
    let target: String = serde_json::from_str(&h).expect("target");
    let got: Value = serde_json::from_str(&call(n.api, "/get", json!(target)).await.1).expect("json");
    assert_eq!((got["v"].as_str(), got["seq"].as_i64()), (Some("rust mutable"), Some(1)), "{got}");

    // Node puts, the Rust grape verifies and stores it.
    let sk2 = SigningKey::from_bytes(&[4u8; 32]);
    let (st, h) = call(n.api, "/put", signed(&sk2, "node mutable", 5)).await;
    assert_eq!(st, 200, "{h}");
    let target2: String = serde_json::from_str(&h).expect("target");
    let got: Value = serde_json::from_str(&call(r.api_addr(), "/get", json!(target2)).await.1).expect("json");
    assert_eq!((got["v"].as_str(), got["seq"].as_i64()), (Some("node mutable"), Some(5)), "{got}");
    assert_eq!(got["k"].as_str(), Some(hex::encode(sk2.verifying_key().as_bytes()).as_str()));

    // A lower seq through the Node grape is refused by the Rust grape: HTTP 302.
    let (st, body) = call(n.api, "/put", signed(&sk2, "older", 4)).await;
    assert_eq!((st, body.as_str()), (302, "\"302 sequence number less than current\""));
    // And the reverse: the Node grape refuses a lower seq put through Rust.
    let (st, body) = call(r.api_addr(), "/put", signed(&sk, "older", 0)).await;
    assert_eq!((st, body.as_str()), (302, "\"302 sequence number less than current\""));

    n.proc.kill().await;
    r.stop().await;
}

#[tokio::test]
async fn nodejs_link_talks_to_a_rust_grape() {
    let net = Testnet::start(2).await.expect("testnet");
    let url = net.api_url(0);
    let mut link = NodeProcess::spawn("grape_link_client.js", &[&url, "link:svc", "5555"]);
    let mut steps = serde_json::Map::new();
    loop {
        let line = link.json(T).await;
        let step = line["step"].as_str().unwrap_or("?").to_string();
        if step == "done" || step == "crash" {
            assert_eq!(step, "done", "{line}");
            break;
        }
        steps.insert(step, line);
    }
    let step = |s: &str| steps.get(s).cloned().unwrap_or_else(|| panic!("no step {s}: {steps:?}"));
    assert_eq!(step("announce")["err"], Value::Null, "{:?}", step("announce"));
    assert!(step("announce")["res"].as_u64().is_some_and(|n| n >= 1), "{:?}", step("announce"));
    assert_eq!(step("lookup")["res"], json!(["127.0.0.1:5555"]), "{:?}", step("lookup"));
    // sha1("15:hello from link")
    assert_eq!(step("put")["res"], json!("91f19fce4cfbfd6aeb29862ae97b9224e86b7e58"), "{:?}", step("put"));
    let hash = step("put")["res"].as_str().expect("put hash").to_string();
    assert_eq!(hash.len(), 40);
    for s in ["get", "get_obj"] {
        assert_eq!(step(s)["res"]["v"], "hello from link", "{:?}", step(s));
        assert_eq!(step(s)["res"]["token"], Value::Null);
    }
    // A miss is an empty body, which Link passes on as "".
    assert_eq!((step("get_miss")["err"].clone(), step("get_miss")["res"].clone()), (Value::Null, json!("")));
    assert_eq!(step("lookup_miss")["err"], "ERR_GRAPE_LOOKUP_EMPTY");
    net.stop().await;
}
