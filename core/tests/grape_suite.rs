//! The Grape test suite: the reference's mocha suite (grape-protocol.md §7) as Rust tests, every
//! §2 reply shape and error string, and robustness against malformed HTTP.
//!
//! Every Grape binds 127.0.0.1 with port 0; waits poll with generous timeouts.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ed25519_dalek::{Signer, SigningKey};
use grenache::grape::{Grape, GrapeConfig, GrapeEvent, Testnet};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const T: Duration = Duration::from_secs(30);

/// A reply as seen on the wire.
#[derive(Debug)]
struct Resp {
    status: u16,
    content_length: Option<usize>,
    body: String,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

/// One keep-alive HTTP/1.1 connection to a Grape.
struct Http {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Http {
    async fn connect(addr: SocketAddr) -> Http {
        let stream = tokio::time::timeout(T, TcpStream::connect(addr)).await.expect("connect timeout").expect("connect");
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("handshake");
        tokio::spawn(conn);
        Http { sender }
    }

    async fn post(&mut self, path: &str, body: impl Into<Bytes>) -> Resp {
        let req = http::Request::post(path)
            .header("host", "127.0.0.1")
            .header("content-type", "application/json")
            .body(Full::new(body.into()))
            .expect("request");
        let fut = async {
            self.sender.ready().await.expect("connection ready");
            let res = self.sender.send_request(req).await.expect("send");
            let status = res.status().as_u16();
            let content_length = res.headers().get("content-length").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
            let body = res.into_body().collect().await.expect("body").to_bytes();
            Resp { status, content_length, body: String::from_utf8_lossy(&body).into_owned() }
        };
        tokio::time::timeout(T, fut).await.expect("request timed out")
    }
}

async fn post(addr: SocketAddr, path: &str, body: impl Into<Bytes>) -> Resp {
    Http::connect(addr).await.post(path, body).await
}

async fn call(addr: SocketAddr, path: &str, data: Value) -> Resp {
    post(addr, path, json!({"rid": "test", "data": data}).to_string()).await
}

async fn announce(g: &Grape, name: &str, port: u16) -> Value {
    call(g.api_addr(), "/announce", json!([name, port])).await.json()
}

async fn lookup(g: &Grape, name: &str) -> Vec<String> {
    let r = call(g.api_addr(), "/lookup", json!(name)).await;
    assert_eq!(r.status, 200, "{r:?}");
    match r.json() {
        Value::Array(a) => a.into_iter().map(|v| v.as_str().expect("string peer").to_string()).collect(),
        other => panic!("lookup answered {other}"),
    }
}

async fn eventually<F, Fut>(timeout: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if f().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn net(n: usize, peer_max_age: Duration) -> Testnet {
    Testnet::start_with(n, |c| {
        c.peer_max_age(peer_max_age);
    })
    .await
    .expect("testnet")
}

fn local_config() -> GrapeConfig {
    let mut c = GrapeConfig::default();
    c.dht_bind("127.0.0.1".parse().expect("ip")).host(Some("127.0.0.1".parse().expect("ip"))).dht_port(0).api_port(0);
    c
}

// ---------------------------------------------------------------- lifecycle (test/Grape.js)

#[tokio::test]
async fn start_without_api_port_fails() {
    let mut c = GrapeConfig::default();
    c.dht_bind("127.0.0.1".parse().expect("ip")).dht_port(0);
    let e = Grape::start(c).await.expect_err("must refuse");
    assert_eq!(e.kind(), grenache::ErrorKind::InvalidArgument);
    assert!(e.message().contains("ERR_NO_PORT"), "{e}");
}

#[tokio::test]
async fn stop_frees_both_ports() {
    let g = Grape::start(local_config()).await.expect("start");
    let (dht, api) = (g.dht_addr(), g.api_addr());
    assert_ne!(dht.port(), 0);
    assert_ne!(api.port(), 0);
    // Keep a connection open to check stop does not wait for it.
    let mut c = Http::connect(api).await;
    assert_eq!(c.post("/lookup", r#"{"data":""}"#).await.body, "\"ERR_GRAPE_LOOKUP\"");
    tokio::time::timeout(T, g.stop()).await.expect("stop timed out");
    std::net::UdpSocket::bind(dht).expect("UDP port freed");
    std::net::TcpListener::bind(api).expect("TCP port freed");
}

#[tokio::test]
async fn busy_api_port_is_an_error() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let mut c = local_config();
    c.api_port(busy.local_addr().expect("addr").port());
    let e = Grape::start(c).await.expect_err("busy port");
    assert_eq!(e.kind(), grenache::ErrorKind::Io, "{e}");
}

#[tokio::test]
async fn busy_dht_port_is_an_error_and_frees_the_api_port() {
    let busy = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let mut c = local_config();
    c.dht_port(busy.local_addr().expect("addr").port());
    let e = Grape::start(c).await.expect_err("busy port");
    assert_eq!(e.kind(), grenache::ErrorKind::Io, "{e}");
}

#[tokio::test]
async fn two_grapes_get_ready_and_emit_events() {
    let a = Grape::start(local_config()).await.expect("a");
    let mut c = local_config();
    c.bootstrap(vec![a.dht_bootstrap_addr()]);
    let b = Grape::start(c).await.expect("b");
    let mut ev_b = b.events();
    let mut ev_a = a.events();
    tokio::time::timeout(T, b.ready()).await.expect("ready");
    let n = announce(&a, "evt:svc", 4000).await;
    assert!(n.as_u64().is_some_and(|n| n >= 1), "announce answered {n}");
    let got = tokio::time::timeout(T, async {
        loop {
            match ev_b.recv().await {
                Ok(GrapeEvent::Announce(name)) if name == "evt:svc" => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    })
    .await
    .expect("announce event on b");
    assert!(got);
    assert_eq!(lookup(&b, "evt:svc").await, vec!["127.0.0.1:4000".to_string()]);
    // a's lookup found the peer: a Peer event.
    assert_eq!(lookup(&a, "evt:svc").await, vec!["127.0.0.1:4000".to_string()]);
    let peer = tokio::time::timeout(T, async {
        loop {
            match ev_a.recv().await {
                Ok(GrapeEvent::Peer(p)) => return p,
                Ok(_) => {}
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await
    .expect("peer event on a");
    assert_eq!(peer, "127.0.0.1:4000");
    a.stop().await;
    b.stop().await;
}

// ---------------------------------------------------------------- test/announce.js

#[tokio::test]
async fn should_find_services() {
    let net = net(2, Duration::from_millis(200)).await;
    let (g1, g2) = (net.grape(0), net.grape(1));
    let mut ev = g2.events();
    let n = announce(g1, "rest:util:net", 1337).await;
    assert!(n.as_u64().is_some_and(|n| n >= 1), "announce answered {n}");
    tokio::time::timeout(T, async { while !matches!(ev.recv().await, Ok(GrapeEvent::Announce(ref s)) if s == "rest:util:net") {} })
        .await
        .expect("announce event on grape 2");
    assert_eq!(lookup(g2, "rest:util:net").await, vec!["127.0.0.1:1337"]);
    net.stop().await;
}

#[tokio::test]
async fn should_remove_outdated_services() {
    let net = net(2, Duration::from_millis(200)).await;
    let (g1, g2) = (net.grape(0), net.grape(1));
    announce(g1, "rest:util:net", 1337).await;
    assert_eq!(lookup(g2, "rest:util:net").await, vec!["127.0.0.1:1337"]);
    let announced = Instant::now();
    eventually(Duration::from_secs(5), "the service to expire on both grapes", || async {
        lookup(g1, "rest:util:net").await.is_empty() && lookup(g2, "rest:util:net").await.is_empty()
    })
    .await;
    // Store 200 ms, cache ≤ 1.33 × 100 ms after the last sighting: well under 3 s even when loaded.
    assert!(announced.elapsed() < Duration::from_secs(3), "took {:?}", announced.elapsed());
    net.stop().await;
}

#[tokio::test]
async fn should_not_cache_dead_peers_when_doing_lookups() {
    let net = net(2, Duration::from_millis(1500)).await;
    let (g1, g2) = (net.grape(0), net.grape(1));
    announce(g1, "dead:svc", 1337).await;
    let mut rounds = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let a = lookup(g1, "dead:svc").await;
        let b = lookup(g2, "dead:svc").await;
        if a.is_empty() && b.is_empty() {
            break;
        }
        rounds += 1;
        assert!(Instant::now() < deadline, "lookups keep the dead peer alive ({rounds} rounds)");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(rounds > 10, "the peer expired too early ({rounds} rounds)");
    net.stop().await;
}

#[tokio::test]
async fn should_not_cache_dead_peers_when_another_one_is_announcing() {
    let net = net(2, Duration::from_millis(1500)).await;
    let (g1, g2) = (net.grape(0).clone(), net.grape(1).clone());
    let stop = tokio_util::sync::CancellationToken::new();
    let mut keepers = Vec::new();
    for (g, port) in [(g1.clone(), 2000u16), (g2.clone(), 2001u16)] {
        let stop = stop.clone();
        keepers.push(tokio::spawn(async move {
            while !stop.is_cancelled() {
                announce(&g, "test", port).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    announce(&g1, "test", 1337).await;
    let mut rounds = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let a = lookup(&g1, "test").await;
        let b = lookup(&g2, "test").await;
        let live = |l: &Vec<String>| l.contains(&"127.0.0.1:2000".to_string()) && l.contains(&"127.0.0.1:2001".to_string());
        let dead = |l: &Vec<String>| l.contains(&"127.0.0.1:1337".to_string());
        if rounds > 2 {
            assert!(live(&a) && live(&b), "the announcing services vanished: {a:?} {b:?}");
        }
        if !dead(&a) && !dead(&b) {
            break;
        }
        rounds += 1;
        assert!(Instant::now() < deadline, "the dead peer stays ({rounds} rounds): {a:?} {b:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(rounds > 5, "the dead peer expired too early ({rounds} rounds)");
    stop.cancel();
    for k in keepers {
        let _ = tokio::time::timeout(T, k).await;
    }
    net.stop().await;
}

#[tokio::test]
async fn should_announce_a_simple_service_to_lots_of_grapes() {
    let net = net(100, Duration::from_secs(120)).await;
    let r = call(net.grape(1).api_addr(), "/announce", json!(["B", 2000])).await;
    assert_eq!(r.status, 200);
    assert!(r.json().as_u64().is_some_and(|n| n >= 1), "announce answered {}", r.body);
    assert_eq!(lookup(net.grape(2), "B").await, vec!["127.0.0.1:2000"]);
    assert_eq!(lookup(net.grape(3), "B").await, vec!["127.0.0.1:2000"]);
    // And from the far end of the network.
    assert_eq!(lookup(net.grape(99), "B").await, vec!["127.0.0.1:2000"]);
    net.stop().await;
}

/// Service A is announced every 20 ms; B once, then again from tick 6. B must vanish while A
/// stays, and both must be visible at the end.
async fn services_die_and_come_back(n: usize) {
    let net = net(n, Duration::from_millis(1000)).await;
    let grapes: Vec<Grape> = net.grapes().to_vec();
    let stop = tokio_util::sync::CancellationToken::new();
    let b_on = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let announcer = {
        let (g, stop, b_on) = (grapes[0].clone(), stop.clone(), b_on.clone());
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                announce(&g, "A", 3000).await;
                if b_on.load(std::sync::atomic::Ordering::SeqCst) {
                    announce(&g, "B", 3001).await;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    announce(&grapes[0], "B", 3001).await;
    let last = grapes[n - 1].clone();
    eventually(T, "A and B visible", || async {
        lookup(&last, "A").await == ["127.0.0.1:3000"] && lookup(&last, "B").await == ["127.0.0.1:3001"]
    })
    .await;
    eventually(T, "B gone while A stays", || async {
        let a = lookup(&last, "A").await;
        assert_eq!(a, ["127.0.0.1:3000"], "A must stay");
        lookup(&last, "B").await.is_empty()
    })
    .await;
    b_on.store(true, std::sync::atomic::Ordering::SeqCst);
    eventually(T, "B back", || async { lookup(&last, "A").await == ["127.0.0.1:3000"] && lookup(&last, "B").await == ["127.0.0.1:3001"] })
        .await;
    stop.cancel();
    let _ = tokio::time::timeout(T, announcer).await;
    net.stop().await;
}

#[tokio::test]
async fn should_work_when_services_die_and_come_back() {
    services_die_and_come_back(4).await;
}

#[tokio::test]
async fn should_work_when_services_die_and_come_back_lots_of_grapes() {
    services_die_and_come_back(40).await;
}

// ---------------------------------------------------------------- test/dos.js

/// Streams up to 60 MB of chunked data; the Grape must answer 413 (or cut the connection) long
/// before reading it all, and keep serving.
#[tokio::test]
async fn rejects_too_large_payloads() {
    let g = Grape::start(local_config()).await.expect("start");
    let mut s = TcpStream::connect(g.api_addr()).await.expect("connect");
    s.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n").await.expect("head");
    let chunk = {
        let mut c = format!("{:x}\r\n", 64 * 1024).into_bytes();
        c.extend(std::iter::repeat_n(b'a', 64 * 1024));
        c.extend_from_slice(b"\r\n");
        c
    };
    let mut sent = 0usize;
    let write_all = async {
        while sent < 60 * 1024 * 1024 {
            if s.write_all(&chunk).await.is_err() {
                return;
            }
            sent += 64 * 1024;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(20), write_all).await;
    assert!(sent < 60 * 1024 * 1024, "the grape read the whole 60 MB body");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let out = String::from_utf8_lossy(&out);
    assert!(out.is_empty() || out.starts_with("HTTP/1.1 413"), "{out}");
    // Still serving.
    assert_eq!(call(g.api_addr(), "/lookup", json!("")).await.body, "\"ERR_GRAPE_LOOKUP\"");
    g.stop().await;
}

#[tokio::test]
async fn rejects_a_body_one_byte_over_the_limit() {
    let mut c = local_config();
    c.check_max_payload_size(100);
    let g = Grape::start(c).await.expect("start");
    let at_limit = format!(r#"{{"data":"{}"}}"#, "x".repeat(100 - 11));
    assert_eq!(at_limit.len(), 100);
    assert_eq!(post(g.api_addr(), "/foo", at_limit.clone()).await.body, "\"ERR_REQ_NOTFOUND\"");
    let over = format!(r#"{{"data":"{}"}}"#, "x".repeat(101 - 11));
    let r = post(g.api_addr(), "/foo", over).await;
    assert_eq!((r.status, r.body.as_str()), (413, "ERR_GRAPE_PAYLOAD_SIZE"));
    g.stop().await;
}

#[tokio::test]
async fn does_not_crash_on_invalid_payloads() {
    let g = Grape::start(local_config()).await.expect("start");
    let r = post(g.api_addr(), "/", "garbage").await;
    assert_eq!((r.status, r.body.as_str(), r.content_length), (500, "ERR_GRAPE_PAYLOAD_INVALID", Some(25)));
    g.stop().await;
}

// ---------------------------------------------------------------- test/put-get.js

#[tokio::test]
async fn put_get_round_trip() {
    let net = net(2, Duration::from_secs(120)).await;
    let (g1, g2) = (net.grape(0).api_addr(), net.grape(1).api_addr());
    let r = call(g1, "/put", json!({"v": "hello world"})).await;
    assert_eq!((r.status, r.body.as_str()), (200, "\"6d33adc2b6b2c14c3036feefb7fedbca1a880527\""));
    let hash = r.json();
    for g in [g1, g2] {
        let bare = call(g, "/get", hash.clone()).await.json();
        assert_eq!(bare["v"], "hello world");
        let obj = call(g, "/get", json!({"hash": hash})).await.json();
        assert_eq!(obj["v"], "hello world");
        assert_eq!(obj["id"].as_str().map(str::len), Some(40));
    }
    // The putting grape keeps the value: its reply comes from its own store, in that key order.
    let local = call(g1, "/get", hash.clone()).await.body;
    let re = regex_lite_keys(&local);
    assert_eq!(re, ["id", "token", "v"], "{local}");
    assert!(local.contains(r#""token":null"#), "{local}");
    // Non-string values come back as their JS toString().
    let h42 = call(g1, "/put", json!({"v": 42})).await.json();
    assert_eq!(h42, "3ce69356df4222111c27b41cccf2164e6cced799");
    assert_eq!(call(g2, "/get", h42).await.json()["v"], "42");
    // A miss: 200, empty body, Content-Length 0.
    let miss = call(g2, "/get", json!("2aae6c35c94fcfb415dbe95f408b9ce91ee846ed")).await;
    assert_eq!((miss.status, miss.body.as_str(), miss.content_length), (200, "", Some(0)));
    let zz = call(g2, "/get", json!("zz")).await;
    assert_eq!((zz.status, zz.body.as_str()), (200, ""));
    net.stop().await;
}

/// The top-level keys of a JSON object, in order of appearance.
fn regex_lite_keys(json: &str) -> Vec<String> {
    let v: serde_json::Map<String, Value> = serde_json::from_str(json).expect("object");
    let mut keys: Vec<(usize, String)> = v.keys().map(|k| (json.find(&format!("\"{k}\":")).expect("key"), k.clone())).collect();
    keys.sort();
    keys.into_iter().map(|(_, k)| k).collect()
}

fn signed(sk: &SigningKey, v: &str, seq: i64, salt: Option<&str>) -> Value {
    let mut msg = Vec::new();
    if let Some(s) = salt {
        msg.extend_from_slice(format!("4:salt{}:{}", s.len(), s).as_bytes());
    }
    msg.extend_from_slice(format!("3:seqi{seq}e1:v{}:{v}", v.len()).as_bytes());
    let sig = sk.sign(&msg);
    let mut d = json!({
        "v": v,
        "seq": seq,
        "k": hex::encode(sk.verifying_key().as_bytes()),
        "sig": hex::encode(sig.to_bytes()),
    });
    if let Some(s) = salt {
        d["salt"] = json!(s);
    }
    d
}

#[tokio::test]
async fn mutable_put_update_and_rejections() {
    let net = net(2, Duration::from_secs(120)).await;
    let (g1, g2) = (net.grape(0).api_addr(), net.grape(1).api_addr());
    let sk = SigningKey::from_bytes(&[7u8; 32]);
    let k = sk.verifying_key().to_bytes();
    let target = {
        use sha1::Digest;
        hex::encode(sha1::Sha1::digest(k))
    };
    let r = call(g1, "/put", signed(&sk, "mutable v1", 1, None)).await;
    assert_eq!((r.status, r.json()), (200, json!(target)), "{r:?}");
    let got = call(g2, "/get", json!(target)).await.json();
    assert_eq!((got["v"].clone(), got["seq"].clone()), (json!("mutable v1"), json!(1)), "{got}");
    assert_eq!(got["k"], json!(hex::encode(k)));
    // Higher seq: accepted, visible.
    let r = call(g1, "/put", signed(&sk, "mutable v2", 2, None)).await;
    assert_eq!((r.status, r.json()), (200, json!(target)), "{r:?}");
    eventually(T, "v2 visible", || async {
        let r = call(g2, "/get", json!({"hash": target})).await;
        r.body.contains("mutable v2")
    })
    .await;
    // Same or lower seq: 302.
    let r = call(g1, "/put", signed(&sk, "mutable old", 1, None)).await;
    assert_eq!((r.status, r.body.as_str()), (302, "\"302 sequence number less than current\""));
    // Wrong cas: 301.
    let mut d = signed(&sk, "mutable v3", 3, None);
    d["cas"] = json!(5);
    let r = call(g1, "/put", d).await;
    assert_eq!((r.status, r.body.as_str()), (301, "\"301 CAS mismatch, re-read and try again\""));
    // Right cas: accepted.
    let mut d = signed(&sk, "mutable v3", 3, None);
    d["cas"] = json!(2);
    assert_eq!(call(g1, "/put", d).await.json(), json!(target));
    // Salted: target = sha1(k ‖ salt); reading from the network needs the salt.
    let salted_target = {
        use sha1::Digest;
        let mut h = sha1::Sha1::new();
        h.update(k);
        h.update(b"mysalt");
        hex::encode(h.finalize())
    };
    let r = call(g1, "/put", signed(&sk, "salted", 1, Some("mysalt"))).await;
    assert_eq!(r.json(), json!(salted_target), "{r:?}");
    let got = call(g1, "/get", json!({"hash": salted_target, "salt": "mysalt"})).await;
    let v = got.json();
    assert_eq!((v["v"].clone(), v["salt"].clone()), (json!("salted"), json!("mysalt")), "{got:?}");
    net.stop().await;
}

// ---------------------------------------------------------------- §2: every reply shape

#[tokio::test]
async fn every_error_string_and_shape() {
    let g = Grape::start(local_config()).await.expect("start");
    let a = g.api_addr();
    let cases: Vec<(&str, &str, u16, &str)> = vec![
        ("/foo", r#"{"data":"bar"}"#, 200, "\"ERR_REQ_NOTFOUND\""),
        ("/lookup?x=1", r#"{"data":"bar"}"#, 200, "\"ERR_REQ_NOTFOUND\""),
        ("/LOOKUP", r#"{"data":"bar"}"#, 200, "\"ERR_REQ_NOTFOUND\""),
        ("/lookup", "notjson", 500, "ERR_GRAPE_PAYLOAD_INVALID"),
        ("/lookup", "", 500, "ERR_GRAPE_PAYLOAD_INVALID"),
        ("/lookup", "{}", 200, "\"ERR_GRAPE_LOOKUP\""),
        ("/lookup", r#"{"data":123}"#, 200, "\"ERR_GRAPE_LOOKUP\""),
        ("/lookup", r#"{"data":""}"#, 200, "\"ERR_GRAPE_LOOKUP\""),
        ("/Lookup", r#"{"data":"unknown-service"}"#, 200, "[]"),
        ("/announce", r#"{"data":"x"}"#, 200, "\"ERR_GRAPE_ANNOUNCE\""),
        ("/announce", r#"{"data":["x","1337"]}"#, 200, "\"ERR_GRAPE_SERVICE_PORT\""),
        ("/announce", r#"{"data":["x",13.5]}"#, 200, "\"ERR_GRAPE_SERVICE_PORT\""),
        ("/announce", r#"{"data":["x",70000]}"#, 200, "\"ERR_GRAPE_SERVICE_PORT\""),
        ("/announce", r#"{"data":["x",-5]}"#, 200, "\"ERR_GRAPE_SERVICE_PORT\""),
        ("/announce", r#"{"data":[123,1337]}"#, 200, "\"ERR_GRAPE_ANNOUNCE\""),
        ("/put", r#"{"data":{}}"#, 200, "\"opts.v not given\""),
        ("/put", r#"{"data":null}"#, 200, "\"opts.v not given\""),
        ("/put", r#"{"rid":"x"}"#, 200, "\"opts.v not given\""),
        ("/put", r#"{"data":{"v":"a","k":"abcd"}}"#, 200, "\"opts.k ed25519 public key must be 32 bytes\""),
        ("/get", r#"{"data":{"foo":1}}"#, 200, "\"ERR_GRAPE_GENERIC\""),
        ("/get", r#"{"data":{"hash":123}}"#, 200, "\"ERR_GRAPE_GENERIC\""),
        ("/get", r#"{"data":5}"#, 200, "\"ERR_GRAPE_GENERIC\""),
        ("/get", r#"{}"#, 200, "\"ERR_GRAPE_GENERIC\""),
        ("/get", r#"{"data":"zz"}"#, 200, ""),
        ("/lookup", "null", 500, "ERR_GRAPE_PAYLOAD_INVALID"),
    ];
    // All over one keep-alive connection.
    let mut c = Http::connect(a).await;
    for (path, body, status, want) in cases {
        let r = c.post(path, body.to_string()).await;
        assert_eq!((r.status, r.body.as_str()), (status, want), "{path} {body}");
        assert_eq!(r.content_length, Some(want.len()), "Content-Length on {path} {body}");
    }
    let long = format!(r#"{{"data":{{"v":"{}"}}}}"#, "x".repeat(1000));
    let r = c.post("/put", long).await;
    // 1000 chars + envelope is over 8192? No: 1011 bytes. The length check answers.
    assert_eq!(r.body, "\"v must be less than 1000 bytes in put()\"");
    g.stop().await;
}

#[tokio::test]
async fn lone_grape_answers_announce_and_put_without_hanging() {
    let g = Grape::start(local_config()).await.expect("start");
    tokio::time::timeout(T, g.ready()).await.expect("ready");
    let r = call(g.api_addr(), "/announce", json!(["lonely", 7000])).await;
    assert_eq!(r.status, 200);
    assert!(r.body == "\"No nodes to query\"" || r.json().is_u64(), "{r:?}");
    // Zero port means "the DHT port".
    let r = call(g.api_addr(), "/lookup", json!("lonely")).await;
    assert!(r.json().is_array(), "{r:?}");
    g.stop().await;
}

// ---------------------------------------------------------------- robustness

#[tokio::test]
async fn malformed_bodies_get_a_clear_error_and_the_grape_keeps_serving() {
    let g = Grape::start(local_config()).await.expect("start");
    let a = g.api_addr();
    let deep_array = "[".repeat(8000);
    let deep_obj = format!(r#"{{"data":{}"x"{}}}"#, "[".repeat(4000), "]".repeat(4000));
    let bodies: Vec<(&str, Vec<u8>)> = vec![
        ("/lookup", b"null".to_vec()),
        ("/lookup", b"[]".to_vec()),
        ("/lookup", b"42".to_vec()),
        ("/lookup", b"\"str\"".to_vec()),
        ("/lookup", b"true".to_vec()),
        ("/put", b"[]".to_vec()),
        ("/get", b"null".to_vec()),
        ("/announce", b"null".to_vec()),
        ("/lookup", deep_array.into_bytes()),
        ("/put", deep_obj.into_bytes()),
        ("/lookup", b"{\"data\":\"\xff\xfe\"}".to_vec()),
        ("/put", b"{\"data\":{\"v\":\"\xc3\x28\"}}".to_vec()),
        ("/lookup", b"{\"data\":".to_vec()),
        ("/put", br#"{"data":{"v":{"a":[1,2,{"b":null}]},"k":[1,2,3]}}"#.to_vec()),
        ("/put", br#"{"data":{"v":"a","k":{"type":"Buffer","data":[1]},"sig":5,"seq":1}}"#.to_vec()),
        ("/get", br#"{"data":{"hash":"00","salt":[1,2],"cache":"x"}}"#.to_vec()),
        ("/announce", br#"{"data":["x",1e300]}"#.to_vec()),
        ("/announce", br#"{"data":["x",18446744073709551616]}"#.to_vec()),
    ];
    for (path, body) in bodies {
        let shown = String::from_utf8_lossy(&body).chars().take(60).collect::<String>();
        let r = post(a, path, body).await;
        assert!(matches!(r.status, 200 | 413 | 500), "{path} {shown}: {r:?}");
        assert!(r.status != 200 || r.body.is_empty() || serde_json::from_str::<Value>(&r.body).is_ok(), "{r:?}");
    }
    // Invalid UTF-8 inside a string is replaced, as Node's Buffer.toString does.
    let r = post(a, "/lookup", b"{\"data\":\"svc\xff\"}".to_vec()).await;
    assert_eq!(r.body, "[]");
    // A body shorter than its Content-Length, then the client hangs up.
    {
        let mut s = TcpStream::connect(a).await.expect("connect");
        s.write_all(b"POST /lookup HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"data\":").await.expect("w");
        drop(s);
    }
    // Garbage that is not HTTP at all.
    {
        let mut s = TcpStream::connect(a).await.expect("connect");
        s.write_all(b"\x00\x01\x02 not http\r\n\r\n").await.expect("w");
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    }
    // A GET with no body: empty body, invalid JSON.
    {
        let mut s = TcpStream::connect(a).await.expect("connect");
        s.write_all(b"GET /lookup HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.expect("w");
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
        let out = String::from_utf8_lossy(&out);
        assert!(out.starts_with("HTTP/1.1 500"), "{out}");
        assert!(out.ends_with("ERR_GRAPE_PAYLOAD_INVALID"), "{out}");
    }
    // Huge chunked body on a keep-alive connection, then the Grape still answers others.
    {
        let mut s = TcpStream::connect(a).await.expect("connect");
        let mut req = b"POST /lookup HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for _ in 0..64 {
            req.extend_from_slice(b"400\r\n");
            req.extend(std::iter::repeat_n(b' ', 0x400));
            req.extend_from_slice(b"\r\n");
        }
        let _ = s.write_all(&req).await;
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
        assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 413"));
    }
    assert_eq!(Http::connect(a).await.post("/lookup", r#"{"data":"still-here"}"#).await.body, "[]");
    g.stop().await;
}

#[tokio::test]
async fn many_keep_alive_clients_at_once() {
    let g = Grape::start(local_config()).await.expect("start");
    let a = g.api_addr();
    let mut tasks = Vec::new();
    for i in 0..64 {
        tasks.push(tokio::spawn(async move {
            let mut c = Http::connect(a).await;
            for _ in 0..20 {
                let r = c.post("/lookup", format!(r#"{{"data":"svc-{}"}}"#, i % 4)).await;
                assert_eq!(r.body, "[]");
            }
        }));
    }
    for t in tasks {
        tokio::time::timeout(T, t).await.expect("client timed out").expect("client panicked");
    }
    g.stop().await;
}

// ---------------------------------------------------------------- throughput choices

#[tokio::test]
async fn re_announce_window_skips_the_dht_and_can_be_disabled() {
    // Window 10 s: the second announce is answered from memory, so the remote store does not
    // see it (its announce event fires once).
    for (window, expected_events) in [(Duration::from_secs(10), 1usize), (Duration::ZERO, 3)] {
        let net = Testnet::start_with(2, |c| {
            c.announce_window(window);
        })
        .await
        .expect("testnet");
        let mut ev = net.grape(1).events();
        for _ in 0..3 {
            let n = announce(net.grape(0), "window:svc", 1234).await;
            assert!(n.as_u64().is_some_and(|n| n >= 1), "{n}");
        }
        let mut seen = 0;
        let _ = tokio::time::timeout(Duration::from_millis(500), async {
            loop {
                match ev.recv().await {
                    Ok(GrapeEvent::Announce(name)) if name == "window:svc" => seen += 1,
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        })
        .await;
        assert_eq!(seen, expected_events, "window {window:?}");
        net.stop().await;
    }
}

/// Two Grapes whose lookups walk the DHT at most once per `window` for a name.
async fn two_grapes_with_window(window: Duration) -> Testnet {
    Testnet::start_with(2, |c| {
        c.lookup_window(window);
    })
    .await
    .expect("testnet")
}

/// The lookup walk window: within it a hot name is answered from the lookup cache (a service
/// announced meanwhile is not seen yet); after it the next lookup walks and sees it. With the
/// window off, every lookup walks, like the reference.
#[tokio::test]
async fn lookup_window_serves_hot_names_from_the_cache_until_it_ends() {
    let window = Duration::from_secs(3);
    let net = two_grapes_with_window(window).await;
    let (g1, g2) = (net.grape(0), net.grape(1));
    announce(g1, "hot:name", 1001).await;
    eventually(T, "the first service to be visible on grape 2", || async { lookup(g2, "hot:name").await == vec!["127.0.0.1:1001"] }).await;
    let walked = Instant::now();
    announce(g1, "hot:name", 1002).await;
    let seen = lookup(g2, "hot:name").await;
    if walked.elapsed() < window {
        assert_eq!(seen, vec!["127.0.0.1:1001"], "inside the window the lookup must come from the cache");
    }
    eventually(T, "both services to be visible once the window ends", || async {
        let mut s = lookup(g2, "hot:name").await;
        s.sort();
        s == vec!["127.0.0.1:1001", "127.0.0.1:1002"]
    })
    .await;
    assert!(walked.elapsed() + Duration::from_millis(100) >= window, "the second service showed up before the window ended");
    net.stop().await;

    let net = two_grapes_with_window(Duration::ZERO).await;
    let (g1, g2) = (net.grape(0), net.grape(1));
    announce(g1, "hot:name", 1001).await;
    eventually(T, "the first service to be visible", || async { lookup(g2, "hot:name").await == vec!["127.0.0.1:1001"] }).await;
    announce(g1, "hot:name", 1002).await;
    let mut s = lookup(g2, "hot:name").await;
    s.sort();
    assert_eq!(s, vec!["127.0.0.1:1001", "127.0.0.1:1002"], "without a window every lookup walks");
    net.stop().await;
}

/// `Grape::lookup_in_window` is what a lookup answers without a walk: nothing before the first
/// walk, the cached peers inside the window (the same as `lookup` then), nothing once the window
/// ended, and nothing with the window off.
#[tokio::test]
async fn lookup_in_window_is_the_answer_of_a_lookup_that_needs_no_walk() {
    let strings = |peers: Vec<SocketAddr>| peers.iter().map(ToString::to_string).collect::<Vec<_>>();
    let window = Duration::from_secs(2);
    let net = two_grapes_with_window(window).await;
    let (g1, g2) = (net.grape(0), net.grape(1));
    assert_eq!(g2.lookup_in_window("in:window"), None, "no walk yet");
    announce(g1, "in:window", 1001).await;
    eventually(T, "the service to be visible on grape 2", || async {
        g2.lookup("in:window").await.is_ok_and(|p| strings(p) == vec!["127.0.0.1:1001"])
    })
    .await;
    let walked = Instant::now();
    announce(g1, "in:window", 1002).await;
    let hit = g2.lookup_in_window("in:window").map(strings);
    let looked = strings(g2.lookup("in:window").await.expect("lookup"));
    if walked.elapsed() < window {
        assert_eq!(hit, Some(vec!["127.0.0.1:1001".to_string()]), "inside the window: the cached peers");
        assert_eq!(looked, vec!["127.0.0.1:1001"], "and lookup answers the same");
    }
    tokio::time::sleep_until((walked + window).into()).await;
    assert_eq!(g2.lookup_in_window("in:window"), None, "the window ended: a lookup walks again");
    let mut s = strings(g2.lookup("in:window").await.expect("lookup"));
    s.sort();
    assert_eq!(s, vec!["127.0.0.1:1001", "127.0.0.1:1002"]);
    net.stop().await;

    let net = two_grapes_with_window(Duration::ZERO).await;
    let (g1, g2) = (net.grape(0), net.grape(1));
    announce(g1, "in:window", 1001).await;
    eventually(T, "the service to be visible", || async { g2.lookup("in:window").await.is_ok_and(|p| !p.is_empty()) }).await;
    assert_eq!(g2.lookup_in_window("in:window"), None, "without a window every lookup walks");
    net.stop().await;
}
