//! uTP interop with libutp (npm `utp-native` 2.5.3) speaking the legacy grenache-nodejs-utp wire
//! (`tests/interop/utp_peer.js`): the Node peer calls our server, ours calls it, punches go both
//! ways. All on 127.0.0.1.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use grenache::ErrorKind;
use grenache::rpc::{ClientTransport, OutgoingRequest, Reply, Request};
use grenache::transport::utp::{PunchEvent, UtpClient, UtpClientConfig, UtpNode, UtpServer, UtpServerConfig};
use grenache_e2e::NodeProcess;
use serde_json::{Value, json};

const LONG: Duration = Duration::from_secs(30);

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().expect("addr")
}

fn handler(req: Request, reply: Reply) {
    match req.payload.value() {
        Value::String(s) if s == "hello" => reply.ok(json!("world")),
        Value::String(s) if s == "fail" => reply.err("ERR_BOOM"),
        _ => reply.ok(json!({"from": "rust", "key": req.key, "payload": req.payload,
            "remote": req.info.remote_addr.map(|a| a.to_string())})),
    }
}

fn out(payload: Value) -> OutgoingRequest {
    OutgoingRequest {
        rid: grenache::rpc::new_rid(),
        key: Arc::from("rpc_utp"),
        payload_json: Arc::from(payload.to_string()),
        timeout: Some(LONG),
        compress: false,
    }
}

async fn peer() -> (NodeProcess, u16) {
    let mut p = NodeProcess::spawn("utp_peer.js", &[]);
    let ready = p.json(LONG).await;
    assert_eq!(ready["ready"], true, "{ready}");
    let port = ready["port"].as_u64().expect("port") as u16;
    (p, port)
}

/// The next line with `"id": id` (events in between are skipped).
async fn answer(p: &mut NodeProcess, id: u64) -> Value {
    loop {
        let v = p.json(LONG).await;
        if v["id"] == id {
            return v;
        }
    }
}

/// The next event line of `kind`.
async fn event(p: &mut NodeProcess, kind: &str) -> Value {
    loop {
        let v = p.json(LONG).await;
        if v["event"] == kind {
            return v;
        }
    }
}

#[tokio::test]
async fn our_client_calls_the_libutp_server() {
    let (_p, port) = peer().await;
    let node = UtpNode::bind(loopback()).await.expect("node");
    let c = UtpClient::with_node(node.clone(), UtpClientConfig::default());
    let dest = format!("127.0.0.1:{port}");
    assert_eq!(c.request(&dest, out(json!("hello"))).await.expect("reply"), json!("world"));
    let e = c.request(&dest, out(json!("fail"))).await.expect_err("remote error");
    assert_eq!((e.kind(), e.message()), (ErrorKind::Remote, "ERR_BOOM"));
    // The legacy server sees our node's port as the remote end.
    let who = c.request(&dest, out(json!("who"))).await.expect("who");
    assert_eq!(who["key"], "rpc_utp");
    assert_eq!(who["remote"]["port"], node.local_addr().port());
    // A message that fits one packet is one chunk for libutp (our engine starts with 528-byte
    // segments, see docs/compat.md): an echo of 400 bytes, and 20 requests in flight at once,
    // each written alone (a legacy server parses every chunk as one message).
    let half = "x".repeat(400);
    assert_eq!(c.request(&dest, out(json!(half))).await.expect("400 bytes"), json!(half));
    let futs = (0..20).map(|i| c.request(&dest, out(json!({"n": i}))));
    for (i, r) in futures_util::future::join_all(futs).await.into_iter().enumerate() {
        assert_eq!(r.expect("reply"), json!({"n": i}));
    }
}

#[tokio::test]
async fn the_libutp_client_calls_our_server() {
    let s = UtpServer::bind(loopback(), Arc::new(handler), UtpServerConfig::default()).await.expect("bind");
    let (mut p, node_port) = peer().await;
    let port = s.local_addr().port();
    let ask = |id: u64, payload: Value| {
        json!({"id": id, "cmd": "request", "host": "127.0.0.1", "port": port, "key": "rpc_utp", "payload": payload}).to_string()
    };
    p.send_line(&ask(1, json!("hello"))).await;
    assert_eq!(answer(&mut p, 1).await["reply"][2], "world");
    p.send_line(&ask(2, json!("fail"))).await;
    assert_eq!(answer(&mut p, 2).await["reply"][1], "ERR_BOOM");
    p.send_line(&ask(3, json!({"a": 1}))).await;
    let r = answer(&mut p, 3).await;
    assert_eq!(r["reply"][2]["key"], "rpc_utp");
    assert_eq!(r["reply"][2]["remote"], format!("127.0.0.1:{node_port}"));
    // Many at once: the requests may arrive coalesced (our splitter reads them), and each reply
    // must reach the legacy client as a chunk of its own to parse.
    for id in 10..40u64 {
        p.send_line(&ask(id, json!({"n": id}))).await;
    }
    let mut seen = std::collections::HashSet::new();
    while seen.len() < 30 {
        let v = p.json(LONG).await;
        assert_ne!(v["event"], "reply-error", "a reply was not one chunk: {v}");
        if let Some(id) = v["id"].as_u64() {
            assert_eq!(v["reply"][2]["payload"]["n"], id, "{v}");
            seen.insert(id);
        }
    }
}

#[tokio::test]
async fn punches_go_both_ways() {
    let (mut p, port) = peer().await;
    let node = UtpNode::bind(loopback()).await.expect("node");
    let target: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let mut events = node.subscribe();
    // The legacy peer punches us: we see its endpoint; it gets our acknowledgement as a plain
    // datagram, which a legacy peer ignores.
    p.send_line(&json!({"id": 1, "cmd": "punch", "host": "127.0.0.1", "port": node.local_addr().port()}).to_string()).await;
    let ev = tokio::time::timeout(LONG, events.recv()).await.expect("in time").expect("event");
    assert_eq!(ev, PunchEvent::Punched { from: target });
    assert_eq!(event(&mut p, "msg").await["bytes"], "c3bf41");
    // We punch it: it sees the whole legacy punch from our port.
    node.send_punch(target).expect("sent");
    assert_eq!(event(&mut p, "punch").await["from"]["port"], node.local_addr().port());
    // A legacy peer that punches back (the reference's examples do): our retrying punch ends
    // when its punch arrives.
    p.send_line(&json!({"id": 2, "cmd": "punch_back", "on": true}).to_string()).await;
    answer(&mut p, 2).await;
    node.punch(target, LONG).await.expect("punched back");
    // One that does not: the typed error.
    p.send_line(&json!({"id": 3, "cmd": "punch_back", "on": false}).to_string()).await;
    answer(&mut p, 3).await;
    let e = node.punch(target, Duration::from_millis(600)).await.expect_err("no answer");
    assert_eq!(e.kind(), ErrorKind::PunchTimeout);
}

#[tokio::test]
async fn split_and_coalesced_requests_from_libutp_are_read_whole() {
    let s = UtpServer::bind(loopback(), Arc::new(handler), UtpServerConfig::default()).await.expect("bind");
    let (mut p, _) = peer().await;
    let port = s.local_addr().port();
    let mut id = 0;
    let mut raw = async |chunks: Value, expect: usize| {
        id += 1;
        let wait_ms = if expect == 0 { 1500 } else { 20_000 };
        let cmd =
            json!({"id": id, "cmd": "raw", "host": "127.0.0.1", "port": port, "chunks": chunks, "expect": expect, "wait_ms": wait_ms});
        p.send_line(&cmd.to_string()).await;
        answer(&mut p, id).await["replies"].as_array().expect("replies").clone()
    };
    // One request split inside a string over three writes.
    let r = raw(json!([r#"["r1","k""#, r#","hel"#, r#"lo"]"#]), 1).await;
    assert_eq!(r, vec![json!(["r1", null, "world"])]);
    // Three requests in three writes, and two in one write.
    let r = raw(json!([r#"["a","k","hello"]"#, r#"["b","k","fail"]"#, r#"["c","k",{"n":1}]"#]), 3).await;
    assert_eq!(r.len(), 3, "{r:?}");
    let r = raw(json!([r#"["d","k","fail"] ["e","k",{"a":1}]"#]), 2).await;
    assert!(r.contains(&json!(["d", "ERR_BOOM", null])), "{r:?}");
    assert!(r.iter().any(|x| x[0] == "e" && x[2]["payload"] == json!({"a": 1})), "{r:?}");
    // Bytes that cannot start a message close that stream; the server keeps serving.
    assert_eq!(raw(json!(["42 nonsense"]), 0).await, Vec::<Value>::new());
    let c = UtpClient::new(UtpClientConfig::default());
    assert_eq!(c.request(&s.local_addr().to_string(), out(json!("hello"))).await.expect("still serving"), json!("world"));
}
