//! The transport proxy against the Node reference: a grenache-nodejs-ws client and a
//! grenache-nodejs-http client call a ZeroMQ worker of ours through the proxy (results, the
//! worker's errors, timeouts and an empty lookup passed through), a Node `PeerSub` receives what
//! a ZeroMQ publisher sends through the proxy's bridge, and a Node WS worker is reached from a
//! ZeroMQ client. Our Grapes (ports from the OS; the Node peers talk to their HTTP API).

mod link_support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use grenache::grape::Testnet;
use grenache::link::{Link, LinkConfig};
use grenache::proxy::{Proxy, ProxyConfig};
use grenache::pubsub::{PeerPub, PubConfig};
use grenache::rpc::{PeerRpcClient, PeerRpcClientConfig, PeerRpcServer, Reply, Request, RequestOptions, TransportKind};
use grenache_e2e::NodeProcess;
use link_support::{NodeClient, wait_lookup};
use serde_json::{Value, json};

const LONG: Duration = Duration::from_secs(30);

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().expect("addr")
}

/// The ZeroMQ worker: "fail" → ERR_BOOM; {"sleep": ms} → answers late; else an echo.
fn handler(req: Request, reply: Reply) {
    match req.payload.value() {
        Value::String(s) if s == "fail" => reply.err("ERR_BOOM"),
        Value::Object(o) if o.contains_key("sleep") => {
            let ms = o.get("sleep").and_then(Value::as_u64).unwrap_or(0);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                reply.ok(json!("late"));
            });
        }
        other => reply.ok(json!({"worker": "zmq", "transport": format!("{:?}", req.info.transport), "payload": other})),
    }
}

async fn zmq_worker(link: &grenache::link::Link, name: &str) -> PeerRpcServer {
    let t = grenache::transport::bind_server(TransportKind::Zmq, any_port(), Arc::new(handler), None, None).await.expect("bind");
    let srv = PeerRpcServer::new(link.clone(), t);
    srv.start_announcing(name, Duration::from_secs(1)).first_result(LONG).await.expect("announce");
    srv
}

async fn proxy(link: &grenache::link::Link, name: &str, target: &str, from: TransportKind, to: TransportKind) -> Proxy {
    let mut cfg = ProxyConfig::new(name, target, from, to);
    cfg.addr = any_port();
    cfg.timeout = Duration::from_millis(1500);
    cfg.announce_interval = Duration::from_secs(1);
    Proxy::start(link.clone(), cfg).await.expect("proxy")
}

/// Two of our Grapes, a Link to the first, and its URL.
async fn grapes() -> (Testnet, Link, String) {
    let net = Testnet::start(2).await.expect("grapes");
    let url = net.api_url(0);
    (net, Link::new(LinkConfig::with_grape(url.clone())).expect("link"), url)
}

async fn node_client(script: &str, grape: &str) -> NodeClient {
    let mut p = NodeProcess::spawn(script, &["--grape", grape]);
    while p.json(LONG).await["event"] != "started" {}
    NodeClient::from_process(p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_ws_and_http_clients_call_a_zmq_worker_through_the_proxy() {
    let (_net, link, url) = grapes().await;
    let _worker = zmq_worker(&link, "px_zmq_worker").await;
    let p_ws = proxy(&link, "px_ws", "px_zmq_worker", TransportKind::Ws, TransportKind::Zmq).await;
    let p_http = proxy(&link, "px_http", "px_zmq_worker", TransportKind::Http, TransportKind::Zmq).await;
    let _lonely = proxy(&link, "px_nobody", "px_no_such_worker", TransportKind::Ws, TransportKind::Zmq).await;
    for n in ["px_zmq_worker", "px_ws", "px_http", "px_nobody"] {
        wait_lookup(&link, n, 1).await;
    }
    for (script, name) in [("ws_client.js", "px_ws"), ("http_client.js", "px_http")] {
        let mut c = node_client(script, &url).await;
        let opts = json!({"timeout": 10_000});
        let (err, result) = c.call(json!({"op": "request", "key": name, "payload": {"a": [1, "é"]}, "opts": opts})).await;
        assert_eq!(err, None, "{script}");
        assert_eq!(result, json!({"worker": "zmq", "transport": "Zmq", "payload": {"a": [1, "é"]}}), "{script}");
        let (err, _) = c.call(json!({"op": "request", "key": name, "payload": "fail", "opts": opts})).await;
        assert_eq!(err.as_deref(), Some("ERR_BOOM"), "{script}: the worker's error passes through");
        let (err, _) = c.call(json!({"op": "request", "key": name, "payload": {"sleep": 4000}, "opts": opts})).await;
        assert_eq!(err.as_deref(), Some("ERR_TIMEOUT"), "{script}: the proxy's timeout");
        let (err, result) = c.call(json!({"op": "map", "key": name, "payload": 5, "opts": opts})).await;
        assert_eq!((err, result[0]["payload"].clone()), (None, json!(5)), "{script}");
    }
    let mut c = node_client("ws_client.js", &url).await;
    let (err, _) = c.call(json!({"op": "request", "key": "px_nobody", "payload": 1, "opts": {"timeout": 10_000}})).await;
    assert_eq!(err.as_deref(), Some("ERR_GRAPE_LOOKUP_EMPTY"));
    assert!(p_ws.stats().forwarded >= 4 && p_http.stats().forwarded >= 4);
    assert!(p_ws.stats().failed >= 2);
    assert!(p_ws.shutdown(Duration::from_secs(5)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zmq_client_calls_a_node_ws_worker_through_the_proxy() {
    let (_net, link, url) = grapes().await;
    let (_node, _port, _) = NodeProcess::spawn_listening("ws_server.js", &["--grape", &url, "--name", "px_node_ws"], LONG).await;
    wait_lookup(&link, "px_node_ws", 1).await;
    let _p = proxy(&link, "px_from_zmq", "px_node_ws", TransportKind::Zmq, TransportKind::Ws).await;
    wait_lookup(&link, "px_from_zmq", 1).await;
    let client = PeerRpcClient::new(link.clone(), grenache::transport::client(TransportKind::Zmq, None), PeerRpcClientConfig::default());
    let r = client.request("px_from_zmq", &json!("hello"), &RequestOptions { timeout: Some(LONG), ..Default::default() }).await;
    assert_eq!(r.expect("through the proxy"), json!("world"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_peer_sub_receives_a_zmq_publisher_through_the_bridge() {
    let (_net, link, url) = grapes().await;
    let publisher = PeerPub::bind(any_port(), PubConfig::default().transport(TransportKind::Zmq)).await.expect("bind");
    publisher.start_announcing(&link, "px_zmq_feed", Duration::from_secs(1)).first_result(LONG).await.expect("announce");
    let mut cfg = ProxyConfig::new("px_feed_rpc", "px_feed_rpc_workers", TransportKind::Ws, TransportKind::Zmq);
    cfg.addr = any_port();
    cfg.announce_interval = Duration::from_secs(1);
    cfg.bridge = Some(("px_zmq_feed".into(), "px_ws_feed".into()));
    let proxy = Proxy::start(link.clone(), cfg).await.expect("proxy");
    wait_lookup(&link, "px_ws_feed", 1).await;
    publisher.wait_subscribers(1, LONG).await.expect("the bridge subscribed");
    let mut sub = NodeProcess::spawn("ws_sub.js", &["--grape", &url, "--name", "px_ws_feed"]);
    while sub.json(LONG).await["event"] != "connected" {}
    // The Node subscriber is connected to the bridge's WS publisher; publish on ZeroMQ until a
    // message arrives (the bridge may see it before the Node socket is registered).
    let mut got = None;
    for i in 0..50 {
        publisher.publish(format!("tick {i}"));
        if let Some(v) = sub.try_json(Duration::from_millis(200)).await
            && v["event"] == "message"
        {
            got = Some(v);
            break;
        }
    }
    let v = got.expect("a Node PeerSub received a ZeroMQ message");
    assert!(v["data"].as_str().is_some_and(|d| d.starts_with("tick ")), "{v}");
    publisher.publish("last one");
    loop {
        let v = sub.json(LONG).await;
        if v["data"] == "last one" {
            break;
        }
    }
    assert!(proxy.stats().bridged >= 2);
}
