//! ZeroMQ interop with the real libzmq (4.3, through pyzmq from PyPI): a libzmq DEALER and REQ
//! against our ROUTER server, a libzmq ROUTER serving our DEALER client, a libzmq PUB (XPUB)
//! feeding our SUB, and a libzmq SUB reading our PUB, all speaking our frames.

use std::net::SocketAddr;
use std::time::Duration;

use grenache::ErrorKind;
use grenache::pubsub::{PeerPub, PeerSub, PubConfig, SubConfig};
use grenache::rpc::{OutgoingRequest, Reply, Request, TransportKind};
use grenache::transport::zmq::{ZmqClient, ZmqServer, ZmqServerConfig};
use grenache_e2e::NodeProcess;
use serde_json::{Value, json};

const LONG: Duration = Duration::from_secs(30);

fn handler(req: Request, reply: Reply) {
    match req.payload.value() {
        Value::String(s) if s == "fail" => reply.err("ERR_BOOM"),
        other => reply.ok(json!({"from": "rust", "key": req.key, "payload": other})),
    }
}

async fn started(p: &mut NodeProcess) -> Value {
    loop {
        let v = p.json(LONG).await;
        if v["event"] == "started" {
            return v;
        }
    }
}

async fn call(p: &mut NodeProcess, frames: &[&str]) -> Vec<String> {
    p.send_line(&json!({ "frames": frames }).to_string()).await;
    let v = p.json(LONG).await;
    serde_json::from_value(v["frames"].clone()).unwrap_or_else(|_| panic!("no reply frames: {v}"))
}

#[tokio::test]
async fn libzmq_dealer_and_req_call_our_router() {
    let addr: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let srv = ZmqServer::bind(addr, handler, ZmqServerConfig::default()).await.expect("bind");
    let port = srv.port().to_string();
    let mut dealer = NodeProcess::spawn_python("zmq_peer.py", &["dealer", &port]);
    started(&mut dealer).await;
    let r = call(&mut dealer, &["rid-1", "svc", r#"{"a":1}"#]).await;
    assert_eq!(r[..2], ["rid-1", ""]);
    assert_eq!(serde_json::from_str::<Value>(&r[2]).expect("json"), json!({"from": "rust", "key": "svc", "payload": {"a": 1}}));
    assert_eq!(call(&mut dealer, &["rid-2", "svc", r#""fail""#]).await, ["rid-2", "ERR_BOOM", "null"]);
    // Bad requests from libzmq: an error reply, and the connection keeps serving.
    let r = call(&mut dealer, &["rid-3", "svc"]).await;
    assert!(r[0] == "rid-3" && r[1].starts_with("ERR_BAD_FRAMES"), "{r:?}");
    let r = call(&mut dealer, &["rid-4", "svc", "not json"]).await;
    assert!(r[0] == "rid-4" && r[1].starts_with("ERR_DECODE"), "{r:?}");
    let r = call(&mut dealer, &["rid-5", "svc", "1", "extra"]).await;
    assert!(r[0] == "rid-5" && r[1].starts_with("ERR_BAD_FRAMES"), "{r:?}");
    assert_eq!(call(&mut dealer, &["rid-6", "svc", "2"]).await[1], "");
    // REQ adds an empty delimiter: it is echoed, so REQ gets its reply.
    let mut req = NodeProcess::spawn_python("zmq_peer.py", &["req", &port]);
    started(&mut req).await;
    let r = call(&mut req, &["rid-7", "svc", "3"]).await;
    assert_eq!(r[..2], ["rid-7", ""]);
}

#[tokio::test]
async fn our_dealer_calls_a_libzmq_router() {
    let mut router = NodeProcess::spawn_python("zmq_peer.py", &["router"]);
    let port = started(&mut router).await["port"].as_u64().expect("port");
    let dest = format!("127.0.0.1:{port}");
    let c = ZmqClient::default();
    let out = |payload: Value| OutgoingRequest {
        rid: grenache::rpc::new_rid(),
        key: "svc".into(),
        payload_json: payload.to_string().into(),
        timeout: Some(LONG),
        compress: false,
    };
    assert_eq!(c.send(&dest, out(json!([1, "x"]))).await.expect("reply"), json!({"from": "libzmq", "key": "svc", "payload": [1, "x"]}));
    let e = c.send(&dest, out(json!("fail"))).await.expect_err("remote error");
    assert_eq!((e.kind(), e.message()), (ErrorKind::Remote, "ERR_BOOM"));
    let many = futures_util::future::join_all((0..200).map(|i| c.send(&dest, out(json!(i))))).await;
    for (i, r) in many.into_iter().enumerate() {
        assert_eq!(r.expect("reply")["payload"], json!(i));
    }
}

#[tokio::test]
async fn libzmq_pub_feeds_our_sub_and_our_pub_feeds_a_libzmq_sub() {
    // libzmq XPUB → our SUB.
    let mut publisher = NodeProcess::spawn_python("zmq_peer.py", &["pub"]);
    let port = started(&mut publisher).await["port"].as_u64().expect("port");
    let mut sub = PeerSub::sub_to(vec![format!("127.0.0.1:{port}")], SubConfig::default().transport(TransportKind::Zmq));
    let v = publisher.json(LONG).await;
    assert_eq!((v["event"].as_str(), v["prefix"].as_str()), (Some("subscribed"), Some("")), "{v}");
    publisher.send_line("hello from libzmq").await;
    let m = sub.recv_timeout(LONG).await.expect("message");
    assert_eq!((m.text(), m.binary), (Some("hello from libzmq"), false));
    // Our PUB → libzmq SUB.
    let addr: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let p = PeerPub::bind(addr, PubConfig::default().transport(TransportKind::Zmq)).await.expect("bind");
    let port = p.port().to_string();
    let mut lib_sub = NodeProcess::spawn_python("zmq_peer.py", &["sub", &port]);
    started(&mut lib_sub).await;
    p.wait_subscribers(1, LONG).await.expect("libzmq subscribed");
    for i in 0..3 {
        assert_eq!(p.publish(format!("msg {i}")), 1);
    }
    for i in 0..3 {
        let v = lib_sub.json(LONG).await;
        assert_eq!(v["frames"], json!([format!("msg {i}")]));
    }
}
