//! WebSocket RPC and PUB/SUB interop with grenache-nodejs-ws 1.0.0 + grenache-nodejs-link 1.0.2,
//! both directions, plain and TLS with client certificates (RSA/SHA-256, X.509 v1 and v3, made at
//! run time with the `openssl` CLI), plus faults against Node peers.

mod link_support;
use grenache_test_certs as tls_certs;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use grenache::ErrorKind;
use grenache::pubsub::{PeerPub, PeerSub, PubConfig, SubConfig};
use grenache::rpc::{PeerRpcClient, PeerRpcClientConfig, PeerRpcServer, Reply, Request, RequestOptions};
use grenache::tls::{ClientAuth, ClientTls, PeerCert, ServerTls, certs_from_pem, verify_client};
use grenache::transport::ws::{WsClient, WsClientConfig, WsServer, WsServerConfig};
use grenache_e2e::NodeProcess;
use link_support::{Grapes, wait_lookup};
use serde_json::{Value, json};
use tls_certs::{Pki, TempDir};

const LONG: Duration = Duration::from_secs(30);

fn opts(ms: u64) -> RequestOptions {
    RequestOptions { timeout: Some(Duration::from_millis(ms)), ..Default::default() }
}

/// Our test handler: "hello" → "world"; "fail" → ERR_BOOM; {sleep, v}; else an echo with the
/// client's fingerprint.
fn handler(req: Request, reply: Reply) {
    match &*req.payload {
        Value::String(s) if s == "hello" => reply.ok(json!("world")),
        Value::String(s) if s == "fail" => reply.err("ERR_BOOM"),
        Value::Object(o) if o.contains_key("sleep") => {
            let ms = o.get("sleep").and_then(Value::as_u64).unwrap_or(0);
            let v = o.get("v").cloned().unwrap_or(Value::Null);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                reply.ok(v);
            });
        }
        _ => reply.ok(json!({
            "from": "rust", "key": req.key, "payload": req.payload,
            "fingerprint": req.info.cert.as_ref().map(|c| c.fingerprint.clone()),
        })),
    }
}

async fn rust_ws_server(link: &grenache::link::Link, name: &str, cfg: WsServerConfig) -> (PeerRpcServer, Arc<WsServer>) {
    let addr: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let ws = Arc::new(WsServer::bind(addr, handler, cfg).await.expect("bind"));
    let srv = PeerRpcServer::new(link.clone(), ws.clone());
    srv.start_announcing(name, Duration::from_secs(1)).first_result(LONG).await.expect("announce");
    (srv, ws)
}

async fn started(p: &mut NodeProcess) -> Value {
    loop {
        let v = p.json(LONG).await;
        if v["event"] == "started" {
            return v;
        }
        assert_ne!(v["event"], "error", "node failed: {v}");
    }
}

async fn node_ws_server(grape: &str, name: &str, extra: &[&str]) -> NodeProcess {
    let mut args = vec!["--grape", grape, "--name", name];
    args.extend_from_slice(extra);
    NodeProcess::spawn_listening("ws_server.js", &args, LONG).await.0
}

/// ws_client.js driven over stdin.
struct NodeWsClient {
    p: NodeProcess,
    next: u64,
}

impl NodeWsClient {
    async fn start(grape: &str, extra: &[&str]) -> NodeWsClient {
        let mut args = vec!["--grape", grape];
        args.extend_from_slice(extra);
        let mut p = NodeProcess::spawn("ws_client.js", &args);
        started(&mut p).await;
        NodeWsClient { p, next: 1 }
    }

    async fn call(&mut self, mut cmd: Value) -> (Option<String>, Value) {
        let id = self.next;
        self.next += 1;
        cmd["id"] = json!(id);
        self.p.send_line(&cmd.to_string()).await;
        loop {
            let v = self.p.json(Duration::from_secs(60)).await;
            if v["id"] == json!(id) {
                return (v["err"].as_str().map(str::to_string), v["result"].clone());
            }
        }
    }
}

fn ws_rpc_client(link: grenache::link::Link, cfg: WsClientConfig) -> PeerRpcClient {
    PeerRpcClient::new(link, Arc::new(WsClient::new(cfg)), PeerRpcClientConfig::default())
}

fn fingerprint(pem: &str) -> String {
    PeerCert::from_der(certs_from_pem(pem.as_bytes()).expect("pem")[0].to_vec()).fingerprint
}

/// PEM files for Node (written to a temp dir that is removed on drop).
struct PemFiles {
    _dir: TempDir,
    ca: String,
    server: (String, String),
    client: (String, String),
    client2: (String, String),
}

fn pem_files(pki: &Pki) -> PemFiles {
    let dir = TempDir::new("ws-interop");
    let w = |n: &str, s: &str| dir.write(n, s).to_string_lossy().to_string();
    PemFiles {
        ca: w("ca.crt", &pki.ca.cert_pem),
        server: (w("server.crt", &pki.server.cert_pem), w("server.key", &pki.server.key_pem)),
        client: (w("client1.crt", &pki.client.cert_pem), w("client1.key", &pki.client.key_pem)),
        client2: (w("client2.crt", &pki.client2.cert_pem), w("client2.key", &pki.client2.key_pem)),
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_node_client_calls_rust_server() {
    let g = Grapes::start(false).await;
    let link = g.link();
    let (_srv, ws) = rust_ws_server(&link, "rpc_ws_rust", WsServerConfig::default()).await;
    wait_lookup(&g.link(), "rpc_ws_rust", 1).await;
    let mut node = NodeWsClient::start(&g.urls[0], &[]).await;

    let (err, r) = node.call(json!({"op": "request", "key": "rpc_ws_rust", "payload": "hello", "opts": {"timeout": 10000}})).await;
    assert_eq!((err, r), (None, json!("world")));
    let p = json!({"hello": "world", "n": 1.5, "u": "ü€"});
    let (err, r) = node.call(json!({"op": "request", "key": "rpc_ws_rust", "payload": p, "opts": {"timeout": 10000}})).await;
    assert_eq!(err, None);
    assert_eq!((r["from"].clone(), r["payload"].clone(), r["key"].clone()), (json!("rust"), p, json!("rpc_ws_rust")));
    assert_eq!(r["fingerprint"], Value::Null);
    let (err, r) = node.call(json!({"op": "request", "key": "rpc_ws_rust", "payload": "fail", "opts": {"timeout": 10000}})).await;
    assert_eq!((err.as_deref(), r), (Some("ERR_BOOM"), Value::Null));
    let (err, r) = node.call(json!({"op": "map", "key": "rpc_ws_rust", "payload": "hello", "opts": {"timeout": 10000}})).await;
    assert_eq!((err, r), (None, json!(["world"])));
    // The reference client keeps maxActiveDestTransports (3) sockets per destination.
    assert_eq!(ws.connections(), 3, "Node's pool of 3 sockets");
    // Many in flight from the Node client; our server answers in any order.
    let ids: Vec<u64> = (0..20).collect();
    for i in &ids {
        let cmd = json!({"id": 1000 + i, "op": "request", "key": "rpc_ws_rust", "payload": {"sleep": 200 - i * 10, "v": i}, "opts": {"timeout": 10000}});
        node.p.send_line(&cmd.to_string()).await;
    }
    let mut seen = 0;
    while seen < ids.len() {
        let v = node.p.json(LONG).await;
        if let Some(id) = v["id"].as_u64().filter(|id| *id >= 1000) {
            assert_eq!(v["result"], json!(id - 1000));
            seen += 1;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_rust_client_calls_node_server() {
    let g = Grapes::start(false).await;
    let _node = node_ws_server(&g.urls[0], "rpc_ws_node", &[]).await;
    let link = g.link();
    wait_lookup(&link, "rpc_ws_node", 1).await;
    let c = ws_rpc_client(link, WsClientConfig::default());
    assert_eq!(c.request("rpc_ws_node", "hello", &opts(10_000)).await.expect("reply"), json!("world"));
    let r = c.request("rpc_ws_node", &json!({"a": [1, 2], "u": "ü€"}), &opts(10_000)).await.expect("reply");
    assert_eq!(r["from"], "node");
    assert_eq!(r["payload"], json!({"a": [1, 2], "u": "ü€"}));
    let e = c.request("rpc_ws_node", "fail", &opts(10_000)).await.expect_err("remote error");
    assert_eq!((e.kind(), e.message()), (ErrorKind::Remote, "ERR_BOOM"));
    // Concurrent requests multiplexed over the pooled sockets, replies out of order.
    let futs = (0..30u64).map(|i| {
        let c = c.clone();
        async move { c.request("rpc_ws_node", &json!({"sleep": 300 - i * 10, "v": i}), &opts(10_000)).await }
    });
    for (i, r) in futures_util::future::join_all(futs).await.into_iter().enumerate() {
        assert_eq!(r.expect("reply"), json!(i));
    }
    assert_eq!(c.map("rpc_ws_node", "hello", &opts(10_000)).await.expect("map"), vec![json!("world")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_node_server_killed_with_requests_in_flight_fails_them_at_once() {
    let g = Grapes::start(false).await;
    let mut node = node_ws_server(&g.urls[0], "rpc_ws_kill", &[]).await;
    let link = g.link();
    wait_lookup(&link, "rpc_ws_kill", 1).await;
    let c = ws_rpc_client(link, WsClientConfig::default());
    c.request("rpc_ws_kill", "hello", &opts(10_000)).await.expect("warm");
    let pending: Vec<_> = (0..5)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { c.request("rpc_ws_kill", &json!({"sleep": 60_000}), &opts(25_000)).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t0 = Instant::now();
    node.kill().await;
    for p in pending {
        let e = p.await.expect("join").expect_err("server died");
        assert_eq!(e.kind(), ErrorKind::Closed, "{e}");
    }
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    // And the next request to the dead port fails promptly with a connect error.
    let t0 = Instant::now();
    let e = c.request("rpc_ws_kill", "hello", &opts(25_000)).await.expect_err("refused");
    assert_eq!(e.kind(), ErrorKind::Connect, "{e}");
    assert!(t0.elapsed() < Duration::from_secs(5));
}

async fn tls_both_ways(pki: Pki) {
    let files = pem_files(&pki);
    let fp1 = fingerprint(&pki.client.cert_pem);
    let g = Grapes::start(false).await;
    let link = g.link();

    // Node client → Rust wss server with a required client cert and verify_client.
    let allowed = fp1.clone();
    let server_tls = ServerTls::builder(pki.server.cert_pem.clone(), pki.server.key_pem.clone())
        .client_ca_pem(pki.ca.cert_pem.clone())
        .client_auth(ClientAuth::Required)
        .build()
        .expect("server tls");
    let cfg =
        WsServerConfig::default().tls(server_tls).verify_client(verify_client(move |c| c.cert.is_some_and(|c| c.fingerprint == allowed)));
    let (_srv, _ws) = rust_ws_server(&link, "rpc_wss_rust", cfg).await;
    wait_lookup(&link, "rpc_wss_rust", 1).await;
    let mut node = NodeWsClient::start(&g.urls[0], &["--key", &files.client.1, "--cert", &files.client.0, "--ca", &files.ca]).await;
    let (err, r) = node.call(json!({"op": "request", "key": "rpc_wss_rust", "payload": {"x": 1}, "opts": {"timeout": 10000}})).await;
    assert_eq!(err, None, "{r}");
    assert_eq!(r["fingerprint"], json!(fp1), "our handler sees Node's client cert fingerprint");
    let mut node2 = NodeWsClient::start(&g.urls[0], &["--key", &files.client2.1, "--cert", &files.client2.0, "--ca", &files.ca]).await;
    let (err, _) = node2.call(json!({"op": "request", "key": "rpc_wss_rust", "payload": {"x": 1}, "opts": {"timeout": 3000}})).await;
    assert!(err.is_some(), "the second certificate is refused by verify_client");

    // Rust client → Node wss server whose verifyClient allows client1 only.
    let _node_srv = node_ws_server(
        &g.urls[0],
        "rpc_wss_node",
        &["--key", &files.server.1, "--cert", &files.server.0, "--ca", &files.ca, "--allow", &fp1],
    )
    .await;
    wait_lookup(&link, "rpc_wss_node", 1).await;
    let tls = |c: &tls_certs::CertKey| {
        ClientTls::builder()
            .ca_pem(pki.ca.cert_pem.clone())
            .client_cert_pem(c.cert_pem.clone(), c.key_pem.clone())
            .build()
            .expect("client tls")
    };
    let c = ws_rpc_client(link.clone(), WsClientConfig::default().tls(tls(&pki.client)));
    assert_eq!(c.request("rpc_wss_node", "hello", &opts(10_000)).await.expect("reply"), json!("world"));
    let r = c.request("rpc_wss_node", &json!({"q": 1}), &opts(10_000)).await.expect("reply");
    assert_eq!(r["fingerprint"], json!(fp1), "Node's handler sees our client cert fingerprint");
    let c2 = ws_rpc_client(link.clone(), WsClientConfig::default().tls(tls(&pki.client2)));
    let t0 = Instant::now();
    let e = c2.request("rpc_wss_node", "hello", &opts(10_000)).await.expect_err("401");
    assert_eq!(e.kind(), ErrorKind::ClientRefused, "{e}");
    assert!(t0.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_tls_client_certs_both_ways_v1_certificates() {
    let Some(pki) = tls_certs::openssl_pki(true) else {
        eprintln!("SKIP: openssl not installed");
        return;
    };
    tls_both_ways(pki).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_tls_client_certs_both_ways_v3_certificates() {
    let Some(pki) = tls_certs::openssl_pki(false) else {
        eprintln!("SKIP: openssl not installed");
        return;
    };
    tls_both_ways(pki).await;
}

async fn next_node_message(p: &mut NodeProcess) -> String {
    loop {
        let v = p.json(LONG).await;
        if v["event"] == "message" {
            return v["data"].as_str().expect("text").to_string();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_node_sub_receives_from_rust_pub() {
    let g = Grapes::start(false).await;
    let link = g.link();
    let p = PeerPub::bind("127.0.0.1:0".parse().expect("addr"), PubConfig::default()).await.expect("bind");
    p.start_announcing(&link, "pub_rust", Duration::from_secs(1)).first_result(LONG).await.expect("announce");
    wait_lookup(&g.link(), "pub_rust", 1).await;
    let mut sub = NodeProcess::spawn("ws_sub.js", &["--grape", &g.urls[0], "--name", "pub_rust"]);
    p.wait_subscribers(1, LONG).await.expect("node subscribed");
    for i in 0..20 {
        p.publish(format!("{{\"seq\":{i},\"msg\":\"hello subscribers\"}}"));
    }
    for i in 0..20 {
        assert_eq!(next_node_message(&mut sub).await, format!("{{\"seq\":{i},\"msg\":\"hello subscribers\"}}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_rust_sub_receives_from_node_pub_and_survives_its_restart() {
    let g = Grapes::start(false).await;
    let (mut node_pub, port, _) =
        NodeProcess::spawn_listening("ws_pub.js", &["--grape", g.urls[0].as_str(), "--name", "pub_node"], LONG).await;
    // The restart below reuses this port, so the subscriber finds the publisher where it was.
    let ps = port.to_string();
    let args = ["--grape", g.urls[0].as_str(), "--name", "pub_node", "--port", ps.as_str()];
    let link = g.link();
    wait_lookup(&link, "pub_node", 1).await;
    let peer = PeerSub::new(
        link,
        SubConfig::default()
            .relookup_interval(Duration::from_millis(500))
            .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(500)),
    );
    let mut sub = peer.sub("pub_node");
    sub.wait_publishers(1, LONG).await.expect("connected to the Node publisher");
    for i in 0..10 {
        node_pub.send_line(&json!({"op": "pub", "msg": format!("m{i}")}).to_string()).await;
    }
    for i in 0..10 {
        assert_eq!(sub.recv_timeout(LONG).await.expect("message").text(), Some(format!("m{i}").as_str()));
    }
    // Restart the Node publisher on the same port: we reconnect and keep receiving.
    node_pub.kill().await;
    drop(node_pub);
    let deadline = Instant::now() + LONG;
    while sub.publishers() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut node_pub = NodeProcess::spawn("ws_pub.js", &args);
    started(&mut node_pub).await;
    sub.wait_publishers(1, LONG).await.expect("reconnected");
    // Wait until the new Node publisher counts us, then publish.
    let deadline = Instant::now() + LONG;
    loop {
        node_pub.send_line(&json!({"op": "count"}).to_string()).await;
        let v = node_pub.json(LONG).await;
        if v["subscribers"].as_u64().unwrap_or(0) >= 1 {
            break;
        }
        assert!(Instant::now() < deadline, "node publisher never saw us");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    node_pub.send_line(&json!({"op": "pub", "msg": "after-restart"}).to_string()).await;
    assert_eq!(sub.recv_timeout(LONG).await.expect("message").text(), Some("after-restart"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_rust_sub_connects_to_every_publisher_and_picks_up_new_ones() {
    let g = Grapes::start(false).await;
    let link = g.link();
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let p1 = PeerPub::bind(any, PubConfig::default()).await.expect("bind");
    p1.start_announcing(&link, "pub_many", Duration::from_secs(1)).first_result(LONG).await.expect("announce");
    wait_lookup(&link, "pub_many", 1).await;
    let peer = PeerSub::new(link.clone(), SubConfig::default().relookup_interval(Duration::from_millis(300)));
    let mut sub = peer.sub("pub_many");
    sub.wait_publishers(1, LONG).await.expect("first publisher");
    // A Rust and a Node publisher join later.
    let p2 = PeerPub::bind(any, PubConfig::default()).await.expect("bind");
    p2.start_announcing(&link, "pub_many", Duration::from_secs(1)).first_result(LONG).await.expect("announce");
    let (mut node_pub, _, _) = NodeProcess::spawn_listening("ws_pub.js", &["--grape", &g.urls[0], "--name", "pub_many"], LONG).await;
    sub.wait_publishers(3, LONG).await.expect("all three publishers");
    p1.publish("from-1");
    p2.publish("from-2");
    node_pub.send_line(&json!({"op": "pub", "msg": "from-node"}).to_string()).await;
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(sub.recv_timeout(LONG).await.expect("message").text().expect("text").to_string());
    }
    got.sort();
    assert_eq!(got, vec!["from-1", "from-2", "from-node"]);
}
