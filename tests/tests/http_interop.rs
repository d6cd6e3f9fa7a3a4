//! HTTP transport interop with grenache-nodejs-http 1.0.2 + grenache-nodejs-link 1.0.2, both
//! directions: plain, gzip, streaming (`_gr`, raw bodies and envelopes), error replies, timeouts,
//! and `map` over a mix of Rust and Node workers.

#![allow(clippy::unwrap_used)]

mod link_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use grenache::ErrorKind;
use grenache::rpc::{PeerRpcClient, PeerRpcClientConfig, RequestOptions};
use grenache::transport::http::{BodyStream, HttpClient, HttpServerConfig};
use link_support::{Grapes, NodeClient, node_server, rust_server, wait_lookup};
use serde_json::{Value, json};

fn body(text: &str) -> BodyStream {
    let b = bytes::Bytes::from(text.to_string());
    Box::pin(futures_util::stream::once(async move { Ok(b) }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_node_client_calls_rust_server() {
    let g = Grapes::start(false).await;
    let link = g.link();
    let _srv = rust_server(&link, "rpc_rust", HttpServerConfig::default(), 0, false).await;
    let _raw = rust_server(&link, "rpc_rust_raw", HttpServerConfig::default(), 0, true).await;
    let mut node = NodeClient::start(&g.urls[0], &[]).await;

    // Object payload.
    let (err, r) = node.call(json!({"op": "request", "key": "rpc_rust", "payload": {"hello": "world"}, "opts": {"timeout": 10000}})).await;
    assert_eq!(err, None);
    assert_eq!(r["from"], "rust");
    assert_eq!(r["payload"], json!({"hello": "world"}));
    assert_eq!(r["key"], "rpc_rust");
    assert!(r["rid"].is_string());
    assert_eq!(r["meta"]["isStream"], false);
    assert_eq!(r["meta"]["compress"], false);
    // String payload, gzip both ways.
    let (err, r) =
        node.call(json!({"op": "request", "key": "rpc_rust", "payload": "hello", "opts": {"timeout": 10000, "compress": true}})).await;
    assert_eq!(err, None);
    assert_eq!((r["payload"].clone(), r["meta"]["compress"].clone()), (json!("hello"), json!(true)));
    // UTF-8 and numbers survive.
    let p = json!({"hello": "world", "n": 1.5, "u": "ü€"});
    let (_, r) = node.call(json!({"op": "request", "key": "rpc_rust", "payload": p, "opts": {"timeout": 10000}})).await;
    assert_eq!(r["payload"], p);
    // Error reply.
    let (err, r) = node.call(json!({"op": "request", "key": "rpc_rust", "payload": "fail", "opts": {"timeout": 10000}})).await;
    assert_eq!((err.as_deref(), r), (Some("ERR_BOOM"), Value::Null));
    // map.
    let (err, r) = node.call(json!({"op": "map", "key": "rpc_rust", "payload": "world", "opts": {"timeout": 10000}})).await;
    assert_eq!(err, None);
    assert_eq!(r.as_array().map(|a| a.len()), Some(1));
    assert_eq!(r[0]["payload"], "world");
    // Streaming client with an envelope body: rid and key come from _gr, meta from _a/_ar.
    let (err, r) = node
        .call(json!({"op": "stream", "key": "rpc_rust", "body": "[\"UUID\", \"ignored\", \"hello\"]",
            "opts": {"timeout": 10000, "headers": {"_a": "uploadPublic", "_ar": {"foo": "bar"}}}}))
        .await;
    assert_eq!(err, None);
    let reply: Value = serde_json::from_str(r.as_str().unwrap()).unwrap();
    assert_eq!(reply[1], Value::Null);
    assert!(reply[0].is_string() && reply[0] != "UUID");
    let res = &reply[2];
    assert_eq!(res["rid"], reply[0]);
    assert_eq!((res["key"].clone(), res["payload"].clone()), (json!("rpc_rust"), json!("hello")));
    assert_eq!(res["meta"]["isStream"], true);
    assert_eq!(res["meta"]["action"], "uploadPublic");
    assert_eq!(res["meta"]["args"], json!({"foo": "bar"}));
    assert_eq!(res["meta"]["infoHeaders"][1], "rpc_rust");
    // Streaming client with a raw body to a raw-body handler.
    let (err, r) = node
        .call(json!({"op": "stream", "key": "rpc_rust_raw", "body": "megalargefile",
            "opts": {"timeout": 10000, "headers": {"_a": "uploadPublic", "_ar": {"foo": "bar"}, "content-type": "application/pdf"}}}))
        .await;
    assert_eq!(err, None);
    let text = r.as_str().unwrap();
    assert!(text.starts_with("rust-stream:"), "{text}");
    assert!(text.ends_with(":rpc_rust_raw:uploadPublic:{\"foo\":\"bar\"}:application/pdf:megalargefile"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_rust_client_calls_node_server() {
    let g = Grapes::start(false).await;
    let (_n1, port1) = node_server(&g.urls[0], "rpc_node", &[]).await;
    let (_n2, port2) = node_server(&g.urls[0], "rpc_node_stream", &["--streaming"]).await;
    let http = HttpClient::default();
    let client = PeerRpcClient::new(g.link(), Arc::new(http.clone()), PeerRpcClientConfig::default());
    let opts = RequestOptions { timeout: Some(Duration::from_secs(10)), ..Default::default() };

    let r = client.request("rpc_node", &json!({"hello": "world"}), &opts).await.unwrap();
    assert_eq!(r["from"], "node");
    assert_eq!(r["port"], port1);
    assert_eq!(r["payload"], json!({"hello": "world"}));
    assert_eq!(r["key"], "rpc_node");
    assert_eq!(r["meta"]["isStream"], false);
    assert_eq!(r["meta"]["compress"], false);
    assert_eq!(r["rid"].as_str().map(str::len), Some(36));

    let gz = RequestOptions { compress: true, ..opts.clone() };
    let r = client.request("rpc_node", "hello", &gz).await.unwrap();
    assert_eq!((r["payload"].clone(), r["meta"]["compress"].clone()), (json!("hello"), json!(true)));

    let e = client.request("rpc_node", "fail", &opts).await.unwrap_err();
    assert_eq!((e.kind(), e.message()), (ErrorKind::Remote, "ERR_BOOM"));

    // Exact timeouts.
    let short = RequestOptions { timeout: Some(Duration::from_millis(500)), ..Default::default() };
    let t0 = Instant::now();
    let e = client.request("rpc_node", &json!({"sleep": 3000}), &short).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout);
    assert!(t0.elapsed() >= Duration::from_millis(450) && t0.elapsed() < Duration::from_millis(3000), "{:?}", t0.elapsed());

    // A large payload (~1.8 MB, like the reference's hex-encoded PDF) goes through.
    let big = "ab".repeat(900_000);
    let r = client.request("rpc_node", &json!({"pdf": big}), &opts).await.unwrap();
    assert_eq!(r["payload"]["pdf"].as_str().map(str::len), Some(1_800_000));

    // map.
    let r = client.map("rpc_node", "world", &opts).await.unwrap();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0]["payload"], "world");

    // Streaming mode with an envelope body to Node's buffered server.
    let dest = format!("127.0.0.1:{port1}");
    let resp = http
        .request_stream(
            &dest,
            "rpc_node",
            &[("_a", "uploadPublic"), ("_ar", "{\"foo\":\"bar\"}")],
            body("[\"UUID\",\"ignored\",\"hello\"]"),
            Some(Duration::from_secs(10)),
        )
        .await
        .unwrap();
    assert_eq!(resp.status, 200);
    let reply: Value = serde_json::from_slice(&resp.body).unwrap();
    assert!(reply[0].is_string() && reply[0] != "UUID");
    assert_eq!(reply[2]["key"], "rpc_node");
    assert_eq!(reply[2]["payload"], "hello");
    assert_eq!(reply[2]["meta"]["isStream"], true);
    assert_eq!(reply[2]["meta"]["action"], "uploadPublic");
    assert_eq!(reply[2]["meta"]["args"], json!({"foo": "bar"}));

    // Raw body to Node's streaming server.
    let dest2 = format!("127.0.0.1:{port2}");
    let resp = http
        .request_stream_with_rid(
            &dest2,
            "rid-123",
            "rpc_node_stream",
            &[("_a", "uploadPublic"), ("_ar", "{\"foo\":\"bar\"}"), ("content-type", "application/pdf")],
            body("megalargefile"),
            Some(Duration::from_secs(10)),
        )
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&resp.body),
        "node-stream:rid-123:rpc_node_stream:uploadPublic:{\"foo\":\"bar\"}:application/pdf:megalargefile"
    );
    // The same with the answer read as a stream.
    let (status, mut stream) =
        http.request_stream_body(&dest2, "rid-456", "rpc_node_stream", &[], body("chunked"), Some(Duration::from_secs(10))).await.unwrap();
    assert_eq!(status, 200);
    let mut got = Vec::new();
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(10), futures_util::StreamExt::next(&mut stream)).await.unwrap() {
        got.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(String::from_utf8_lossy(&got), "node-stream:rid-456:rpc_node_stream:null:{}::chunked");
    // A buffered request to Node's streaming server is answered through its reply handler.
    let r = client.request("rpc_node_stream", "hi", &opts).await.unwrap();
    assert_eq!(r, json!({"from": "node-stream", "payload": "hi"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_map_over_rust_and_node_workers() {
    let g = Grapes::start(false).await;
    let link = g.link();
    let _r1 = rust_server(&link, "rpc_mix", HttpServerConfig::default(), 0, false).await;
    let _r2 = rust_server(&link, "rpc_mix", HttpServerConfig::default(), 0, false).await;
    let (_n1, _) = node_server(&g.urls[0], "rpc_mix", &[]).await;
    wait_lookup(&link, "rpc_mix", 3).await;

    let client = PeerRpcClient::new(link.clone(), Arc::new(HttpClient::default()), PeerRpcClientConfig::default());
    let opts = RequestOptions { timeout: Some(Duration::from_secs(10)), ..Default::default() };
    let r = client.map("rpc_mix", "world", &opts).await.unwrap();
    let mut from: Vec<String> = r.iter().map(|v| v["from"].as_str().unwrap_or("").to_string()).collect();
    from.sort();
    assert_eq!(from, vec!["node", "rust", "rust"]);
    // limit picks a subset.
    let r = client.map("rpc_mix", "world", &RequestOptions { limit: 2, ..opts.clone() }).await.unwrap();
    assert_eq!(r.len(), 2);

    let mut node = NodeClient::start(&g.urls[0], &[]).await;
    let (err, r) = node.call(json!({"op": "map", "key": "rpc_mix", "payload": "world", "opts": {"timeout": 10000}})).await;
    assert_eq!(err, None);
    let mut from: Vec<String> = r.as_array().unwrap().iter().map(|v| v["from"].as_str().unwrap_or("").to_string()).collect();
    from.sort();
    assert_eq!(from, vec!["node", "rust", "rust"]);
}
