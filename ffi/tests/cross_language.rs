//! Cross-language runs over a local network of Node reference Grapes: the C rpc_test server
//! answers the Node reference client (grenache-nodejs-http) and our Rust client; the C client
//! calls a Node reference server.

mod support;

use std::sync::Arc;
use std::time::Duration;

use grenache_core::ErrorKind;
use grenache_core::link::Link;
use grenache_core::rpc::{PeerRpcClient, PeerRpcClientConfig, RequestOptions};
use grenache_core::transport::http::{HttpClient, HttpClientConfig};
use grenache_core::transport::ws::{WsClient, WsClientConfig};
use serde_json::json;
use support::{Flavor, GrapeNet, check, spawn};

#[test]
fn c_server_answers_node_http_client() {
    c_server_answers_node_client("http", "http_client.js");
}

#[test]
fn c_ws_server_answers_node_ws_client() {
    c_server_answers_node_client("ws", "ws_client.js");
}

fn c_server_answers_node_client(transport: &str, script: &'static str) {
    let net = GrapeNet::start(false);
    let server = spawn("rpc_server", Flavor::Plain, &[&net.urls[0], "2", transport], &[]);
    let url = net.urls[1].clone();
    net.rt.block_on(async move {
        let mut node = grenache_e2e::NodeProcess::spawn(script, &["--grape", &url]);
        assert_eq!(node.json(Duration::from_secs(20)).await["event"], "started");
        // The worker may not be announced yet: retry until the lookup finds it.
        let mut id = 0;
        let answer = loop {
            id += 1;
            let cmd = json!({"id": id, "op": "request", "key": "rpc_test", "payload": "hello", "opts": {"timeout": 10000}});
            node.send_line(&cmd.to_string()).await;
            let a = loop {
                let a = node.json(Duration::from_secs(30)).await;
                if a.get("id").is_some() {
                    break a;
                }
            };
            if a["err"].is_null() || id > 100 {
                break a;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert_eq!(answer["result"], json!("world"), "{answer}");
        node.send_line(&json!({"id": 0, "op": "request", "key": "rpc_test", "payload": "bye", "opts": {"timeout": 10000}}).to_string())
            .await;
        let a = node.json(Duration::from_secs(30)).await;
        assert_eq!(a["err"], json!("ERR_UNKNOWN_REQUEST"), "{a}");
    });
    let (ok, out, err) = server.wait(Duration::from_secs(30));
    check("rpc_server", Flavor::Plain, ok, &out, &err);
}

#[test]
fn c_server_answers_rust_client() {
    c_server_answers_rust_client_on("http");
}

#[test]
fn c_ws_server_answers_rust_ws_client() {
    c_server_answers_rust_client_on("ws");
}

fn c_server_answers_rust_client_on(transport: &str) {
    let net = GrapeNet::start(false);
    let server = spawn("rpc_server", Flavor::Plain, &[&net.urls[0], "2", transport], &[]);
    let url = net.urls[1].clone();
    let ws = transport == "ws";
    net.rt.block_on(async move {
        let link = Link::with_grape(url).expect("link");
        let t: Arc<dyn grenache_core::rpc::ClientTransport> =
            if ws { Arc::new(WsClient::new(WsClientConfig::default())) } else { Arc::new(HttpClient::new(HttpClientConfig::default())) };
        let client = PeerRpcClient::new(link, t, PeerRpcClientConfig::default());
        let opts = RequestOptions { timeout: Some(Duration::from_secs(10)), ..Default::default() };
        let mut tries = 0;
        let v = loop {
            tries += 1;
            match client.request("rpc_test", &json!("hello"), &opts).await {
                Err(e) if e.kind() == ErrorKind::LookupEmpty && tries < 150 => {
                    client.link().invalidate("rpc_test");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                r => break r.expect("rpc_test answered"),
            }
        };
        assert_eq!(v, json!("world"));
        let e = client.request("rpc_test", &json!("bye"), &opts).await.expect_err("remote error");
        assert_eq!(e.kind(), ErrorKind::Remote);
        assert_eq!(e.message(), "ERR_UNKNOWN_REQUEST");
        client.stop();
    });
    let (ok, out, err) = server.wait(Duration::from_secs(30));
    check("rpc_server", Flavor::Plain, ok, &out, &err);
}

#[test]
fn c_publisher_reaches_node_subscriber() {
    let net = GrapeNet::start(false);
    let publisher = spawn("pubsub_pub", Flavor::Plain, &[&net.urls[0], "5"], &[]);
    let url = net.urls[1].clone();
    net.rt.block_on(async move {
        let mut node = grenache_e2e::NodeProcess::spawn("ws_sub.js", &["--grape", &url, "--name", "pubsub_test"]);
        let mut got = 0;
        while got < 3 {
            let e = node.json(Duration::from_secs(60)).await;
            if e["event"] == "message" {
                // Text frames "hello N"; pubsub_pub.c follows each with a binary frame 00 FF N,
                // which the Node script prints as text.
                let d = e["data"].as_str().unwrap_or_default();
                if d.starts_with("hello ") {
                    got += 1;
                } else {
                    assert!(d.starts_with('\u{0}'), "{e}");
                }
            }
        }
        node.kill().await;
    });
    let (ok, out, err) = publisher.wait(Duration::from_secs(60));
    check("pubsub_pub", Flavor::Plain, ok, &out, &err);
}
