//! The behaviours of grenache-nodejs-http's own test suite, Rust client against Rust server
//! (peer-rpc-server, -buffered, -streaming, rpc-server-readstream-size), plus the fault cases:
//! a worker killed mid-load, a handler that never replies or panics, a payload over the limit,
//! malformed requests, retry rules, destination choice.

#![allow(clippy::unwrap_used)]

mod link_support;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use grenache::ErrorKind;
use grenache::link::Link;
use grenache::rpc::{Handler, PeerRpcClient, PeerRpcClientConfig, PeerRpcServer, Reply, Request, RequestOptions};
use grenache::transport::http::{BodyStream, HttpClient, HttpServer, HttpServerConfig};
use link_support::{Grapes, node_server, rust_server, wait_lookup};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn opts() -> RequestOptions {
    RequestOptions { timeout: Some(Duration::from_secs(20)), ..Default::default() }
}

fn client(link: &Link) -> PeerRpcClient {
    PeerRpcClient::new(link.clone(), Arc::new(HttpClient::default()), PeerRpcClientConfig::default())
}

/// A Link to nowhere, for tests that use explicit destinations.
fn no_grape() -> Link {
    Link::with_grape(format!("http://127.0.0.1:{}", grenache_e2e::free_tcp_port())).unwrap()
}

async fn bare_server(handler: impl Handler, cfg: HttpServerConfig) -> (HttpServer, String) {
    let s = HttpServer::bind("127.0.0.1:0".parse().unwrap(), Arc::new(handler), cfg).await.unwrap();
    let dest = format!("127.0.0.1:{}", s.port());
    (s, dest)
}

fn pdf() -> Vec<u8> {
    std::fs::read(grenache_e2e::interop_dir().join("node_modules/grenache-nodejs-http/test/example-amazon-dynamo-sosp2007.pdf"))
        .expect("the reference's test PDF")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_request_and_map_through_grape() {
    // peer-rpc-server.js: request with an object payload, map with a string payload.
    let g = Grapes::start(false).await;
    let link = g.link();
    let handler = |req: Request, reply: Reply| {
        assert!(req.rid.is_string());
        match &*req.payload {
            Value::Object(_) => reply.ok(json!({"hello": "helloworld", "key": req.key})),
            _ => reply.ok(json!("world")),
        }
    };
    let http = HttpServer::bind("127.0.0.1:0".parse().unwrap(), Arc::new(handler), HttpServerConfig::default()).await.unwrap();
    let srv = PeerRpcServer::new(link.clone(), Arc::new(http));
    srv.start_announcing("rpc_test", Duration::from_secs(1)).first_result(Duration::from_secs(20)).await.unwrap();
    let c = client(&link);
    let r = c.request("rpc_test", &json!({"hello": "world"}), &opts()).await.unwrap();
    assert_eq!(r, json!({"hello": "helloworld", "key": "rpc_test"}));
    assert_eq!(c.map("rpc_test", "hello", &opts()).await.unwrap(), vec![json!("world")]);
    assert!(srv.stop_announcing("rpc_test"));
    assert!(!srv.stop_announcing("rpc_test"));
}

#[tokio::test]
async fn http_buffered_meta_compress_stream_and_large_payload() {
    // peer-rpc-server-buffered.js (7 cases), with explicit destinations.
    let (_s, dest) = bare_server(link_support::echo_handler(0), HttpServerConfig::default()).await;
    let http = HttpClient::default();
    let c = PeerRpcClient::new(no_grape(), Arc::new(http.clone()), PeerRpcClientConfig::default());
    let o = RequestOptions { dest: Some(dest.clone()), ..opts() };
    let r = c.request("rpc_buf", &json!({"hello": "world"}), &o).await.unwrap();
    assert_eq!((r["payload"].clone(), r["meta"]["isStream"].clone()), (json!({"hello": "world"}), json!(false)));
    let r = c.request("rpc_buf", "hello", &o).await.unwrap();
    assert_eq!((r["payload"].clone(), r["meta"]["isStream"].clone()), (json!("hello"), json!(false)));
    let r = c.request("rpc_buf", "hello", &RequestOptions { compress: true, ..o.clone() }).await.unwrap();
    assert_eq!((r["payload"].clone(), r["meta"]["compress"].clone()), (json!("hello"), json!(true)));
    // Streaming client writing the JSON envelope: isStream, rid/key from _gr.
    for payload in [json!("hello"), json!({"hello": "world"})] {
        let text = json!(["UUID", "ignored", payload]).to_string();
        let b: BodyStream = Box::pin(futures_util::stream::once(async move { Ok(bytes::Bytes::from(text)) }));
        let resp = http
            .request_stream_with_rid(
                &dest,
                "stream-rid",
                "rpc_buf",
                &[("_a", "uploadPublic"), ("_ar", "{\"foo\":\"bar\"}")],
                b,
                Some(Duration::from_secs(10)),
            )
            .await
            .unwrap();
        let reply: Value = serde_json::from_slice(&resp.body).unwrap();
        assert_eq!(reply[0], "stream-rid");
        assert_eq!(reply[1], Value::Null);
        assert_eq!(reply[2]["payload"], payload);
        assert_eq!(reply[2]["key"], "rpc_buf");
        assert_eq!(reply[2]["meta"]["isStream"], true);
        assert_eq!(reply[2]["meta"]["action"], "uploadPublic");
        assert_eq!(reply[2]["meta"]["args"], json!({"foo": "bar"}));
    }
    // The 900 KB PDF hex-encoded in the payload (~1.8 MB body), buffered.
    let hex = hex::encode(pdf());
    let r = c.request("rpc_buf", &json!({"pdf": hex}), &o).await.unwrap();
    assert!(r["payload"]["pdf"].as_str().unwrap().starts_with("255"));
    assert_eq!(r["payload"]["pdf"].as_str().unwrap().len(), hex.len());
}

#[tokio::test]
async fn http_streaming_raw_upload_size_and_content_type() {
    // peer-rpc-server-streaming.js / rpc-server-readstream-size.js: a raw upload with a
    // content-type header reaches a raw-body handler intact.
    let cfg = HttpServerConfig { stream_handler: Some(Arc::new(link_support::RawEcho)), ..Default::default() };
    let (_s, dest) = bare_server(link_support::echo_handler(0), cfg).await;
    let http = HttpClient::default();
    let resp = http
        .request_stream_with_rid(
            &dest,
            "r1",
            "rpc_stream",
            &[("content-type", "application/pdf")],
            Box::pin(futures_util::stream::iter(vec![Ok(bytes::Bytes::from_static(b"megalarge")), Ok(bytes::Bytes::from_static(b"file"))])),
            Some(Duration::from_secs(10)),
        )
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&resp.body), "rust-stream:r1:rpc_stream::{}:application/pdf:megalargefile");
    // The same with the answer streamed back.
    let (status, mut stream) = http
        .request_stream_body(
            &dest,
            "r2",
            "rpc_stream",
            &[("_a", "up")],
            Box::pin(futures_util::stream::once(async { Ok(bytes::Bytes::from_static(b"megalargefile")) })),
            Some(Duration::from_secs(10)),
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
    let mut got = Vec::new();
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(10), futures_util::StreamExt::next(&mut stream)).await.unwrap() {
        got.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(String::from_utf8_lossy(&got), "rust-stream:r2:rpc_stream:up:{}::megalargefile");
    // The whole PDF, in 64 KiB chunks: the handler sees every byte.
    let data = pdf();
    let chunks: Vec<std::io::Result<bytes::Bytes>> = data.chunks(65536).map(|c| Ok(bytes::Bytes::copy_from_slice(c))).collect();
    let resp = http
        .request_stream(
            &dest,
            "rpc_stream",
            &[("content-type", "application/pdf")],
            Box::pin(futures_util::stream::iter(chunks)),
            Some(Duration::from_secs(20)),
        )
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&resp.body);
    let body_part = text.splitn(7, ':').nth(6).unwrap();
    assert_eq!(body_part.len(), String::from_utf8_lossy(&data).len());
}

#[tokio::test]
async fn http_handler_faults_become_error_replies() {
    let cfg = HttpServerConfig { reply_timeout: Some(Duration::from_millis(300)), ..Default::default() };
    let (_s, dest) = bare_server(link_support::echo_handler(0), cfg).await;
    let c = client(&no_grape());
    let o = RequestOptions { dest: Some(dest.clone()), ..opts() };
    let e = c.request("k", "never", &o).await.unwrap_err();
    assert_eq!((e.kind(), e.message()), (ErrorKind::Remote, "ERR_TIMEOUT"));
    let e = c.request("k", "panic", &o).await.unwrap_err();
    assert_eq!((e.kind(), e.message()), (ErrorKind::Remote, "ERR_HANDLER_PANIC"));
    let dropper = |_req: Request, _reply: Reply| {};
    let (_s2, dest2) = bare_server(dropper, HttpServerConfig::default()).await;
    let e = c.request("k", "x", &RequestOptions { dest: Some(dest2), ..opts() }).await.unwrap_err();
    assert_eq!((e.kind(), e.message()), (ErrorKind::Remote, "ERR_NO_REPLY"));
    // Without a server reply timeout the client's own timeout is exact.
    let (_s3, dest3) = bare_server(link_support::echo_handler(0), HttpServerConfig::default()).await;
    let t0 = Instant::now();
    let e = c
        .request("k", "never", &RequestOptions { dest: Some(dest3), timeout: Some(Duration::from_millis(400)), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout);
    assert!(t0.elapsed() >= Duration::from_millis(380) && t0.elapsed() < Duration::from_millis(3000), "{:?}", t0.elapsed());
}

#[tokio::test]
async fn http_payload_over_limit_and_malformed_requests() {
    let cfg = HttpServerConfig { max_body: 10_000, ..Default::default() };
    let (_s, dest) = bare_server(link_support::echo_handler(0), cfg).await;
    let c = client(&no_grape());
    let o = RequestOptions { dest: Some(dest.clone()), ..opts() };
    assert!(c.request("k", &"x".repeat(5_000), &o).await.is_ok());
    let e = c.request("k", &"x".repeat(50_000), &o).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PayloadTooLarge, "{e}");
    assert!(e.message().contains("ERR_PAYLOAD_SIZE"), "{e}");
    // A gzip bomb is stopped at the limit too.
    let e = c.request("k", &"x".repeat(500_000), &RequestOptions { compress: true, ..o.clone() }).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PayloadTooLarge, "{e}");

    async fn raw(dest: &str, req: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(dest).await.unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await.expect("server answers");
        String::from_utf8_lossy(&out).into_owned()
    }
    // Invalid JSON: an error reply instead of silence.
    let r = raw(&dest, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 7\r\nConnection: close\r\n\r\nnotjson").await;
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    assert!(r.contains("[null,\"ERR_DECODE"), "{r}");
    // A non-array JSON body is handled with null fields, like the reference.
    let r = raw(&dest, "PUT /some/path HTTP/1.1\r\nHost: x\r\nContent-Length: 7\r\nConnection: close\r\n\r\n{\"a\":1}").await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(r.contains("[null,null,{"), "{r}");
    // A bad _gr header: the reference's exact 500 answer.
    let r = raw(&dest, "POST / HTTP/1.1\r\nHost: x\r\n_gr: notjson\r\nContent-Length: 2\r\nConnection: close\r\n\r\n[]").await;
    assert!(r.starts_with("HTTP/1.1 500"), "{r}");
    assert!(r.ends_with("[null, \"ERR_HEADER_PARSE_GR\", null]"), "{r}");
    // _gr overrides the body's rid and key.
    let body = r#"["r1","k","hello"]"#;
    let r = raw(
        &dest,
        &format!(
            "POST / HTTP/1.1\r\nHost: x\r\n_gr: [\"hdr-rid\",\"hdr-key\"]\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
    .await;
    assert!(r.contains("[\"hdr-rid\",null,{"), "{r}");
    assert!(r.contains("\"key\":\"hdr-key\""), "{r}");
    // grc-compress: gzip with a plain body is still handled (the reference keeps the raw body).
    let body = r#"["r2","k","plain"]"#;
    let r = raw(
        &dest,
        &format!("POST / HTTP/1.1\r\nHost: x\r\ngrc-compress: gzip\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()),
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    // (0x8b is not UTF-8, so the lossy text shows it as U+FFFD.)
    assert!(r.contains("\r\n\r\n\x1f\u{fffd}"), "reply is gzipped: {r:?}");
}

#[tokio::test]
async fn http_retry_skips_remote_errors_unless_asked_and_explicit_dest() {
    let count = Arc::new(AtomicUsize::new(0));
    let c2 = count.clone();
    let h = move |_req: Request, reply: Reply| {
        c2.fetch_add(1, Ordering::SeqCst);
        reply.err("ERR_BOOM");
    };
    let (_s, dest) = bare_server(h, HttpServerConfig::default()).await;
    let c = client(&no_grape());
    let o = RequestOptions { dest: Some(dest.clone()), retry: 3, ..opts() };
    assert_eq!(c.request("k", "x", &o).await.unwrap_err().kind(), ErrorKind::Remote);
    assert_eq!(count.load(Ordering::SeqCst), 1);
    let o = RequestOptions { retry_remote: true, ..o };
    assert_eq!(c.request("k", "x", &o).await.unwrap_err().message(), "ERR_BOOM");
    assert_eq!(count.load(Ordering::SeqCst), 4);
    // A dead explicit destination fails fast with a connect error.
    let dead = format!("127.0.0.1:{}", grenache_e2e::free_tcp_port());
    let t0 = Instant::now();
    let e = c.request("k", "x", &RequestOptions { dest: Some(dead), ..opts() }).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Connect, "{e}");
    assert!(t0.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_destination_choice_random_and_max_active_key_dests() {
    let g = Grapes::start(false).await;
    let link = g.link();
    let mut servers = Vec::new();
    for _ in 0..3 {
        servers.push(rust_server(&link, "rpc_dests", HttpServerConfig::default(), 0, false).await);
    }
    wait_lookup(&link, "rpc_dests", 3).await;
    // Random choice reaches every worker.
    let c = client(&link);
    let mut ports = HashSet::new();
    for _ in 0..60 {
        ports.insert(c.request("rpc_dests", "x", &opts()).await.unwrap()["port"].as_u64().unwrap());
    }
    assert_eq!(ports.len(), 3);
    // maxActiveKeyDests = 1: once one worker has a live connection, all requests go there.
    let c1 = PeerRpcClient::new(
        link.clone(),
        Arc::new(HttpClient::default()),
        PeerRpcClientConfig { max_active_key_dests: 1, ..Default::default() },
    );
    let mut ports = HashSet::new();
    for _ in 0..30 {
        ports.insert(c1.request("rpc_dests", "x", &opts()).await.unwrap()["port"].as_u64().unwrap());
    }
    assert_eq!(ports.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_worker_killed_mid_load_retry_lands_elsewhere() {
    let g = Grapes::start(false).await;
    let link = g.link();
    let (mut n1, port1) = node_server(&g.urls[0], "rpc_kill", &[]).await;
    let (_n2, port2) = node_server(&g.urls[0], "rpc_kill", &[]).await;
    wait_lookup(&link, "rpc_kill", 2).await;
    let c = client(&link);
    let o = RequestOptions { timeout: Some(Duration::from_secs(3)), retry: 3, ..Default::default() };
    // Load: 8 tasks × 40 requests each, some slow enough to be in flight at the kill.
    let mut tasks = Vec::new();
    for i in 0..8 {
        let c = c.clone();
        let o = o.clone();
        tasks.push(tokio::spawn(async move {
            let mut ok = 0;
            for j in 0..60 {
                let payload = if (i + j) % 5 == 0 { json!({"sleep": 50}) } else { json!("x") };
                if c.request("rpc_kill", &payload, &o).await.is_ok() {
                    ok += 1;
                }
            }
            ok
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t_kill = Instant::now();
    n1.kill().await;
    let mut ok = 0;
    for t in tasks {
        ok += t.await.unwrap();
    }
    assert_eq!(ok, 480, "every request succeeds, retried on the live worker");
    assert!(t_kill.elapsed() < Duration::from_secs(30));
    // Requests to the dead worker fail within their timeout; a retry lands on the live one.
    let dead = format!("127.0.0.1:{port1}");
    let t0 = Instant::now();
    let e = c
        .request("rpc_kill", "x", &RequestOptions { dest: Some(dead), timeout: Some(Duration::from_secs(2)), ..Default::default() })
        .await
        .unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::Connect | ErrorKind::Closed | ErrorKind::Timeout), "{e}");
    assert!(t0.elapsed() < Duration::from_millis(3000));
    for _ in 0..10 {
        let r = c.request("rpc_kill", "x", &o).await.unwrap();
        assert_eq!(r["port"], port2);
    }
}

/// The Grapes keep returning a worker that died until its announce expires, and the reference's
/// clients keep sending it requests all that time (user asks, "dead peers linger"). Ours: after
/// one failed connect the client avoids that worker while the key has others, tries it again
/// once the backoff ends, and trusts it again as soon as it answers; and a request whose connect
/// failed goes to another worker without using up an attempt. With both off, about a third of
/// the requests fail (the control).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_client_avoids_a_dead_worker_until_it_answers_again() {
    let g = Grapes::start(false).await;
    let link = g.link();
    let dead_port = grenache_e2e::free_tcp_port();
    let doomed = rust_server(&link, "rpc_dead", HttpServerConfig::default(), dead_port, false).await;
    let _a = rust_server(&link, "rpc_dead", HttpServerConfig::default(), 0, false).await;
    let _b = rust_server(&link, "rpc_dead", HttpServerConfig::default(), 0, false).await;
    wait_lookup(&link, "rpc_dead", 3).await;
    let dead = format!("127.0.0.1:{dead_port}");
    // The worker dies without a word: its listener closes, its announce stays in the DHT.
    doomed.stop();
    drop(doomed);
    grenache_e2e::eventually(Duration::from_secs(10), "the port refuses", || async {
        tokio::net::TcpStream::connect(&dead).await.is_err().then_some(())
    })
    .await;
    assert!(wait_lookup(&link, "rpc_dead", 3).await.contains(&dead), "the Grapes still return the dead worker");
    let cfg = |backoff: Duration, failover: bool| PeerRpcClientConfig {
        dead_worker_backoff: backoff,
        dead_worker_max_backoff: backoff * 4,
        connect_failover: failover,
        ..Default::default()
    };
    let client_with = |cfg: PeerRpcClientConfig| PeerRpcClient::new(link.clone(), Arc::new(HttpClient::default()), cfg);
    let with = |backoff: Duration| client_with(cfg(backoff, false));
    let failures = |c: PeerRpcClient, n: usize| async move {
        let mut failed = 0;
        for _ in 0..n {
            if let Err(e) = c.request("rpc_dead", "x", &opts()).await {
                assert_eq!(e.kind(), ErrorKind::Connect, "{e}");
                failed += 1;
            }
        }
        failed
    };
    let off = failures(with(Duration::ZERO), 60).await;
    assert!(off >= 5, "without the backoff the dead worker keeps being picked: {off} of 60 failed");
    // A failed connect sends nothing, so the request goes to another worker at once (by default),
    // with the backoff or without it: no request fails.
    assert_eq!(failures(client_with(cfg(Duration::ZERO, true)), 60).await, 0);
    let default = client_with(PeerRpcClientConfig::default());
    assert_eq!(failures(default.clone(), 60).await, 0);
    // With an explicit destination there is no other worker: the connect error is returned.
    let o = RequestOptions { dest: Some(dead.clone()), ..opts() };
    assert_eq!(default.request("rpc_dead", "x", &o).await.unwrap_err().kind(), ErrorKind::Connect);
    let c = with(Duration::from_secs(3600));
    let on = failures(c.clone(), 60).await;
    assert!(on <= 1, "after one failure the dead worker is avoided: {on} of 60 failed");
    assert_eq!(on == 1, c.is_avoided(&dead));
    // A short backoff: the worker is tried again when it ends; once it is back, it answers and is
    // trusted again.
    let c = with(Duration::from_millis(200));
    grenache_e2e::eventually(Duration::from_secs(20), "a failure on the dead worker", || {
        let c = c.clone();
        async move { c.request("rpc_dead", "x", &opts()).await.is_err().then_some(()) }
    })
    .await;
    assert!(c.is_avoided(&dead));
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(!c.is_avoided(&dead), "the backoff ended");
    let _back = rust_server(&link, "rpc_dead", HttpServerConfig::default(), dead_port, false).await;
    let ports: HashSet<u64> = {
        let mut ports = HashSet::new();
        for _ in 0..300 {
            let r = c.request("rpc_dead", "x", &opts()).await.expect("every worker answers now");
            ports.insert(r["port"].as_u64().unwrap());
            if ports.contains(&u64::from(dead_port)) {
                break;
            }
        }
        ports
    };
    assert!(ports.contains(&u64::from(dead_port)), "the revived worker gets requests again: {ports:?}");
    assert!(!c.is_avoided(&dead));
}
