//! WebSocket RPC transport: wire behaviour, pooling, faults, limits and TLS. All on 127.0.0.1 with
//! ports picked by the OS.

use grenache_test_certs as tls_certs;

mod support;
use support::{raw_frame, read_head};

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use grenache::ErrorKind;
use grenache::rpc::{OutgoingRequest, Reply, Request};
use grenache::tls::{ClientAuth, ClientTls, ServerTls, verify_client};
use grenache::transport::ws::{WsClient, WsClientConfig, WsServer, WsServerConfig};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const LONG: Duration = Duration::from_secs(20);

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().expect("addr")
}

/// How many `{"sleep": ...}` requests reached [`test_handler`] (nextest runs each test in a
/// process of its own).
static SLEEPING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// "hello" → "world"; "fail" → ERR_BOOM; {"sleep":ms,"v":x} → x after ms; "cert" → fingerprint;
/// anything else is echoed.
fn test_handler(req: Request, reply: Reply) {
    match &*req.payload {
        Value::String(s) if s == "hello" => reply.ok(json!("world")),
        Value::String(s) if s == "fail" => reply.err("ERR_BOOM"),
        Value::String(s) if s == "cert" => reply.ok(json!(req.info.cert.as_ref().map(|c| c.fingerprint.clone()))),
        Value::Object(o) if o.contains_key("sleep") => {
            SLEEPING.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let ms = o.get("sleep").and_then(Value::as_u64).unwrap_or(0);
            let v = o.get("v").cloned().unwrap_or(Value::Null);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                reply.ok(v);
            });
        }
        other => reply.ok(other.clone()),
    }
}

fn out(payload: Value, timeout: Option<Duration>) -> OutgoingRequest {
    OutgoingRequest {
        rid: uuid::Uuid::new_v4().to_string(),
        key: Arc::from("rpc_ws_test"),
        payload_json: Arc::from(payload.to_string()),
        timeout,
        compress: false,
    }
}

async fn server() -> WsServer {
    WsServer::bind(any_port(), test_handler, WsServerConfig::default()).await.expect("bind")
}

async fn raw_client(
    addr: SocketAddr,
    path: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let (ws, _) = tokio::time::timeout(LONG, tokio_tungstenite::connect_async(format!("ws://{addr}{path}")))
        .await
        .expect("connect in time")
        .expect("connect");
    ws
}

async fn next_text<S>(ws: &mut S) -> String
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        match tokio::time::timeout(LONG, ws.next()).await.expect("reply in time") {
            Some(Ok(Message::Text(t))) => return t.to_string(),
            Some(Ok(_)) => continue,
            other => panic!("socket ended: {other:?}"),
        }
    }
}

#[tokio::test]
async fn ws_request_reply_and_error_reply() {
    let s = server().await;
    let dest = s.local_addr().to_string();
    let c = WsClient::default();
    assert_eq!(c.send(&dest, out(json!("hello"), Some(LONG))).await.expect("reply"), json!("world"));
    let e = c.send(&dest, out(json!("fail"), Some(LONG))).await.expect_err("remote error");
    assert_eq!(e.kind(), ErrorKind::Remote);
    assert_eq!(e.message(), "ERR_BOOM");
    let v = json!({"hello": "world", "n": 1.5, "u": "ü€"});
    assert_eq!(c.send(&dest, out(v.clone(), Some(LONG))).await.expect("echo"), v);
}

/// `request_raw` gives the result's JSON text exactly as the server wrote it; `request` parses it.
#[tokio::test]
async fn ws_raw_results_are_the_wire_text() {
    use grenache::rpc::ClientTransport;
    const TEXT: &str = "{ \"b\" : [1, \"\\u00e9\"], \"a\":null }";
    let h = |req: Request, reply: Reply| match req.payload.as_str() {
        Some("fail") => reply.err("ERR_BOOM"),
        Some("null") => reply.ok(Value::Null),
        _ => reply.ok_raw(serde_json::value::RawValue::from_string(TEXT.into()).expect("json")),
    };
    let s = WsServer::bind(any_port(), h, WsServerConfig::default()).await.expect("bind");
    let dest = s.local_addr().to_string();
    let c = WsClient::default();
    assert_eq!(c.request_raw(&dest, out(json!("x"), Some(LONG))).await.expect("raw").get(), TEXT);
    assert_eq!(c.request(&dest, out(json!("x"), Some(LONG))).await.expect("value"), json!({"b": [1, "é"], "a": null}));
    assert_eq!(c.request_raw(&dest, out(json!("null"), Some(LONG))).await.expect("raw").get(), "null");
    let e = c.request_raw(&dest, out(json!("fail"), Some(LONG))).await.expect_err("remote");
    assert_eq!((e.kind(), e.message()), (ErrorKind::Remote, "ERR_BOOM"));
}

/// A reply whose rid is readable but whose body is not JSON fails its request at once with a
/// decode error (it used to be dropped, leaving the request to time out).
#[tokio::test]
async fn ws_malformed_reply_fails_its_request_at_once() {
    let l = tokio::net::TcpListener::bind(any_port()).await.expect("bind");
    let dest = l.local_addr().expect("addr").to_string();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut ws = tokio_tungstenite::accept_async(tcp).await.expect("upgrade");
                while let Some(Ok(Message::Text(text))) = ws.next().await {
                    let req: Value = serde_json::from_str(&text).expect("request");
                    let rid = req[0].as_str().expect("rid").to_string();
                    let reply = if req[2] == json!("bad") { format!(r#"["{rid}",null,{{oops"#) } else { format!(r#"["{rid}",null,"ok"]"#) };
                    ws.send(Message::text(reply)).await.expect("send");
                }
            });
        }
    });
    let c = WsClient::default();
    let t0 = Instant::now();
    let e = c.send(&dest, out(json!("bad"), Some(LONG))).await.expect_err("decode error");
    assert_eq!(e.kind(), ErrorKind::Decode);
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert_eq!(c.send(&dest, out(json!("good"), Some(LONG))).await.expect("reply"), json!("ok"));
}

#[tokio::test]
async fn ws_server_wire_any_path_binary_text_and_malformed() {
    let s = server().await;
    let mut a = raw_client(s.local_addr(), "/any/path?x=1").await;
    let mut b = raw_client(s.local_addr(), "/ws").await;
    a.send(Message::text(r#"["rid-text","k","hello"]"#)).await.expect("send");
    assert_eq!(next_text(&mut a).await, r#"["rid-text",null,"world"]"#);
    a.send(Message::binary(br#"[12345,"k",{"a":1}]"#.to_vec())).await.expect("send");
    assert_eq!(next_text(&mut a).await, r#"[12345,null,{"a":1}]"#);
    a.send(Message::text(r#"{"0":"objrid","1":"k","2":"p"}"#)).await.expect("send");
    assert_eq!(next_text(&mut a).await, r#"["objrid",null,"p"]"#);
    // Malformed frames are dropped; neither this socket nor another one is closed.
    a.send(Message::text("not json")).await.expect("send");
    a.send(Message::text("null")).await.expect("send");
    a.send(Message::binary(vec![0xff, 0xfe, 0x00])).await.expect("send");
    a.send(Message::text(r#"["after",null,"hello"]"#)).await.expect("send");
    assert_eq!(next_text(&mut a).await, r#"["after",null,"world"]"#);
    b.send(Message::text(r#"["b","k","hello"]"#)).await.expect("send");
    assert_eq!(next_text(&mut b).await, r#"["b",null,"world"]"#);
}

#[tokio::test]
async fn ws_many_in_flight_per_socket_replies_in_any_order() {
    let s = server().await;
    let dest = s.local_addr().to_string();
    let c = WsClient::new(WsClientConfig::default().max_active_dest_transports(1));
    let t0 = Instant::now();
    let futs = (0..50u64).map(|i| {
        let c = c.clone();
        let dest = dest.clone();
        async move { c.send(&dest, out(json!({"sleep": 500 - i * 10, "v": i}), Some(LONG))).await }
    });
    let results = futures_util::future::join_all(futs).await;
    for (i, r) in results.into_iter().enumerate() {
        assert_eq!(r.expect("reply"), json!(i));
    }
    assert!(t0.elapsed() < Duration::from_secs(5), "requests ran concurrently: {:?}", t0.elapsed());
    assert_eq!(c.open_sockets(&dest), 1);
}

#[tokio::test]
async fn ws_pool_of_3_and_2_transports_per_dest() {
    let s = server().await;
    let dest = s.local_addr().to_string();
    for (max, want) in [(None, 3), (Some(2), 2)] {
        let mut cfg = WsClientConfig::default();
        if let Some(m) = max {
            cfg = cfg.max_active_dest_transports(m);
        }
        let c = WsClient::new(cfg);
        // Sequential requests keep to one socket: an open socket with nothing in flight is
        // reused before another one is opened.
        for _ in 0..4 {
            c.send(&dest, out(json!("hello"), Some(LONG))).await.expect("reply");
        }
        assert_eq!((c.pool_size(&dest), c.open_sockets(&dest)), (1, 1));
        // Requests in flight together open more, up to the maximum.
        let futs = (0..3 * want as u64).map(|i| c.send(&dest, out(json!({"sleep": 100, "v": i}), Some(LONG))));
        for (i, r) in futures_util::future::join_all(futs).await.into_iter().enumerate() {
            assert_eq!(r.expect("reply"), json!(i));
        }
        assert_eq!(c.pool_size(&dest), want);
        assert_eq!(c.open_sockets(&dest), want);
        // Sockets on the server side too.
        let srv = &s;
        let deadline = Instant::now() + LONG;
        while srv.connections() < want && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(srv.connections(), want);
        // Once they are idle again, a sequential caller uses one of them, and opens no more.
        for _ in 0..10 {
            c.send(&dest, out(json!("hello"), Some(LONG))).await.expect("reply");
        }
        assert_eq!((c.pool_size(&dest), c.open_sockets(&dest)), (want, want));
        c.close_all();
        while srv.connections() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test]
async fn ws_connection_refused_fails_promptly_with_clear_error() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let c = WsClient::default();
    let t0 = Instant::now();
    let e = c.send(&format!("127.0.0.1:{port}"), out(json!("hello"), Some(LONG))).await.expect_err("refused");
    assert_eq!(e.kind(), ErrorKind::Connect, "{e}");
    assert!(e.to_string().contains("refused"), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    // Concurrent requests waiting for the same failed connect all fail too.
    let dest = format!("127.0.0.1:{port}");
    let futs = (0..10).map(|_| c.send(&dest, out(json!("x"), Some(LONG))));
    for r in futures_util::future::join_all(futs).await {
        assert_eq!(r.expect_err("refused").kind(), ErrorKind::Connect);
    }
}

#[tokio::test]
async fn ws_server_closed_with_requests_in_flight_fails_them_at_once() {
    let s = server().await;
    let dest = s.local_addr().to_string();
    let c = WsClient::default();
    c.send(&dest, out(json!("hello"), Some(LONG))).await.expect("warm");
    let before = SLEEPING.load(std::sync::atomic::Ordering::SeqCst);
    let pending: Vec<_> = (0..5)
        .map(|_| {
            let c = c.clone();
            let dest = dest.clone();
            tokio::spawn(async move { c.send(&dest, out(json!({"sleep": 30_000}), Some(LONG))).await })
        })
        .collect();
    // Every request is running in the handler when the server closes.
    support::eventually("the requests in the handler", || SLEEPING.load(std::sync::atomic::Ordering::SeqCst) >= before + 5).await;
    let t0 = Instant::now();
    s.close().await;
    for p in pending {
        let e = p.await.expect("join").expect_err("closed");
        assert_eq!(e.kind(), ErrorKind::Closed, "{e}");
    }
    assert!(t0.elapsed() < Duration::from_secs(3), "failed at once, not at the timeout: {:?}", t0.elapsed());
}

#[tokio::test]
async fn ws_timeouts_fire_on_time() {
    let s = server().await;
    let dest = s.local_addr().to_string();
    let c = WsClient::default();
    c.send(&dest, out(json!("hello"), Some(LONG))).await.expect("warm");
    let t0 = Instant::now();
    let e = c.send(&dest, out(json!({"sleep": 10_000}), Some(Duration::from_millis(300)))).await.expect_err("timeout");
    let took = t0.elapsed();
    assert_eq!(e.kind(), ErrorKind::Timeout);
    assert!(took >= Duration::from_millis(290) && took < Duration::from_millis(2500), "{took:?}");
    // A default timeout applies to requests without one.
    let c = WsClient::new(WsClientConfig::default().default_request_timeout(Some(Duration::from_millis(200))));
    let e = c.send(&dest, out(json!({"sleep": 10_000}), None)).await.expect_err("timeout");
    assert_eq!(e.kind(), ErrorKind::Timeout);
}

#[tokio::test]
async fn ws_idle_sockets_close_and_leave_the_pool() {
    let s = server().await;
    let dest = s.local_addr().to_string();
    let c = WsClient::new(WsClientConfig::default().idle_timeout(Some(Duration::from_millis(200))));
    c.send(&dest, out(json!("hello"), Some(LONG))).await.expect("reply");
    assert_eq!(c.pool_size(&dest), 1);
    let deadline = Instant::now() + LONG;
    while c.pool_size(&dest) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(c.pool_size(&dest), 0, "idle transport dropped");
    while s.connections() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(s.connections(), 0, "server saw the close");
    // The next request reconnects.
    assert_eq!(c.send(&dest, out(json!("hello"), Some(LONG))).await.expect("reply"), json!("world"));
}

#[tokio::test]
async fn ws_max_message_size_closes_only_the_offending_socket() {
    let s = WsServer::bind(any_port(), test_handler, WsServerConfig::default().max_message_size(4096)).await.expect("bind");
    let dest = s.local_addr().to_string();
    let good = WsClient::default();
    let bad = WsClient::default();
    good.send(&dest, out(json!("hello"), Some(LONG))).await.expect("warm");
    let e = bad.send(&dest, out(json!("x".repeat(10_000)), Some(LONG))).await.expect_err("too big");
    assert_eq!(e.kind(), ErrorKind::Closed, "{e}");
    assert_eq!(good.send(&dest, out(json!("hello"), Some(LONG))).await.expect("still fine"), json!("world"));
    // The client bounds replies too.
    let small = WsClient::new(WsClientConfig::default().max_message_size(2048));
    let e = small.send(&dest, out(json!("y".repeat(3000)), Some(LONG))).await;
    assert!(e.is_err(), "a reply above the client's limit is refused");
}

#[tokio::test]
async fn ws_pending_map_is_bounded() {
    let s = server().await;
    let dest = s.local_addr().to_string();
    let c = WsClient::new(WsClientConfig::default().max_active_dest_transports(1).max_pending_per_connection(2));
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let c = c.clone();
            let dest = dest.clone();
            tokio::spawn(async move { c.send(&dest, out(json!({"sleep": 500}), Some(LONG))).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let e = c.send(&dest, out(json!("hello"), Some(LONG))).await.expect_err("bounded");
    assert_eq!(e.kind(), ErrorKind::InvalidState);
    for h in slow {
        h.await.expect("join").expect("slow ok");
    }
    assert_eq!(c.send(&dest, out(json!("hello"), Some(LONG))).await.expect("room again"), json!("world"));
}

#[tokio::test]
async fn ws_server_limits_in_flight_per_socket() {
    let running = Arc::new(AtomicUsize::new(0));
    let max_seen = Arc::new(AtomicUsize::new(0));
    let (r2, m2) = (running.clone(), max_seen.clone());
    let handler = move |_req: Request, reply: Reply| {
        let now = r2.fetch_add(1, Ordering::SeqCst) + 1;
        m2.fetch_max(now, Ordering::SeqCst);
        let r3 = r2.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            r3.fetch_sub(1, Ordering::SeqCst);
            reply.ok(json!(1));
        });
    };
    let s = WsServer::bind(any_port(), handler, WsServerConfig::default().max_in_flight_per_connection(4)).await.expect("bind");
    let dest = s.local_addr().to_string();
    let c = WsClient::new(WsClientConfig::default().max_active_dest_transports(1));
    let futs = (0..40).map(|_| c.send(&dest, out(json!(0), Some(LONG))));
    for r in futures_util::future::join_all(futs).await {
        r.expect("reply");
    }
    assert!(max_seen.load(Ordering::SeqCst) <= 4, "{}", max_seen.load(Ordering::SeqCst));
}

async fn tls_round_trip(pki: &tls_certs::Pki) {
    let allowed =
        grenache::tls::PeerCert::from_der(grenache::tls::certs_from_pem(pki.client.cert_pem.as_bytes()).expect("pem")[0].to_vec())
            .fingerprint;
    let allowed2 = allowed.clone();
    let server_tls = ServerTls::builder(pki.server.cert_pem.clone(), pki.server.key_pem.clone())
        .client_ca_pem(pki.ca.cert_pem.clone())
        .client_auth(ClientAuth::Required)
        .build()
        .expect("server tls");
    let cfg = WsServerConfig::default()
        .tls(server_tls)
        .verify_client(verify_client(move |c| c.cert.is_some_and(|c| c.fingerprint == allowed2) && c.path == "/ws"));
    let s = WsServer::bind(any_port(), test_handler, cfg).await.expect("bind");
    let dest = s.local_addr().to_string();

    let good = ClientTls::builder()
        .ca_pem(pki.ca.cert_pem.clone())
        .client_cert_pem(pki.client.cert_pem.clone(), pki.client.key_pem.clone())
        .build()
        .expect("client tls");
    let c = WsClient::new(WsClientConfig::default().tls(good));
    assert_eq!(c.send(&dest, out(json!("hello"), Some(LONG))).await.expect("reply"), json!("world"));
    assert_eq!(c.send(&dest, out(json!("cert"), Some(LONG))).await.expect("reply"), json!(allowed));

    // Another valid certificate of the same CA: TLS is fine, the hook refuses (HTTP 401).
    let other = ClientTls::builder()
        .ca_pem(pki.ca.cert_pem.clone())
        .client_cert_pem(pki.client2.cert_pem.clone(), pki.client2.key_pem.clone())
        .build()
        .expect("client tls");
    let c2 = WsClient::new(WsClientConfig::default().tls(other));
    let t0 = Instant::now();
    let e = c2.send(&dest, out(json!("hello"), Some(LONG))).await.expect_err("refused");
    assert_eq!(e.kind(), ErrorKind::ClientRefused, "{e}");
    assert!(t0.elapsed() < Duration::from_secs(3));

    // No client certificate at all: the TLS handshake fails.
    let none = ClientTls::builder().ca_pem(pki.ca.cert_pem.clone()).build().expect("client tls");
    let c3 = WsClient::new(WsClientConfig::default().tls(none));
    let e = c3.send(&dest, out(json!("hello"), Some(LONG))).await.expect_err("no cert");
    assert!(matches!(e.kind(), ErrorKind::TlsHandshake | ErrorKind::Connect), "{e}");
}

#[tokio::test]
async fn ws_tls_client_cert_verify_client_v3() {
    tls_round_trip(&tls_certs::RcgenCa::pki("ws-ca")).await;
}

#[tokio::test]
async fn ws_tls_client_cert_verify_client_v1() {
    let Some(pki) = tls_certs::openssl_pki(true) else {
        eprintln!("SKIP: openssl not installed");
        return;
    };
    tls_round_trip(&pki).await;
}

#[tokio::test]
async fn ws_extreme_settings_do_not_panic() {
    let cfg = WsServerConfig::default()
        .max_connections(usize::MAX)
        .max_in_flight_per_connection(usize::MAX)
        .max_message_size(usize::MAX)
        .handshake_timeout(Duration::MAX)
        .reply_timeout(Some(Duration::MAX));
    let s = WsServer::bind(any_port(), test_handler, cfg).await.expect("bind");
    let c = WsClient::new(
        WsClientConfig::default()
            .connect_timeout(Duration::MAX)
            .idle_timeout(Some(Duration::MAX))
            .default_request_timeout(Some(Duration::MAX))
            .max_pending_per_connection(usize::MAX)
            .max_message_size(usize::MAX)
            .max_dests(usize::MAX)
            .max_active_dest_transports(usize::MAX),
    );
    let dest = s.local_addr().to_string();
    assert_eq!(c.send(&dest, out(json!("hello"), Some(Duration::MAX))).await.expect("reply"), json!("world"));
    assert_eq!(c.send(&dest, out(json!("hello"), None)).await.expect("reply"), json!("world"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(c.open_sockets(&dest), 1, "not closed as idle (and reused for the second request)");
    // Tiny values are clamped instead of breaking.
    let c = WsClient::new(WsClientConfig::default().max_active_dest_transports(0).max_pending_per_connection(0).max_dests(0));
    assert_eq!(c.send(&dest, out(json!("hello"), Some(LONG))).await.expect("reply"), json!("world"));
    // A zero timeout races the reply (timers tick every millisecond); either outcome is fine.
    match c.send(&dest, out(json!("hello"), Some(Duration::ZERO))).await {
        Ok(v) => assert_eq!(v, json!("world")),
        Err(e) => assert_eq!(e.kind(), ErrorKind::Timeout),
    }
}

// ---------------------------------------------------------------------------------------------
// Frame level: the RPC sockets' own RFC 6455 framing, against hand-written bytes.
// ---------------------------------------------------------------------------------------------

use tokio::io::AsyncWriteExt;

/// Reads one whole frame, unmasked: (fin, opcode, payload); `None` at the end of the stream.
async fn read_raw_frame(s: &mut tokio::net::TcpStream) -> Option<(bool, u8, Vec<u8>)> {
    support::read_frame(s).await.map(|f| (f.fin, f.op, f.payload))
}

/// A raw client socket that did the opening handshake with `addr`.
async fn raw_socket(addr: SocketAddr) -> tokio::net::TcpStream {
    support::handshake(addr).await
}

const K: Option<[u8; 4]> = Some([0x37, 0xfa, 0x21, 0x3d]);

#[tokio::test]
async fn ws_server_frames_pings_fragments_and_the_close_handshake() {
    let s = server().await;
    let mut c = raw_socket(s.local_addr()).await;
    // A ping is answered with a pong carrying its bytes.
    c.write_all(&raw_frame(true, 0x9, b"are you there", K)).await.expect("write");
    assert_eq!(read_raw_frame(&mut c).await, Some((true, 0xA, b"are you there".to_vec())));
    // A request in three fragments, with a ping and a pong between them, is one request.
    let req = br#"["frag-1","k","hello"]"#;
    let mut bytes = raw_frame(false, 0x1, &req[..5], K);
    bytes.extend(raw_frame(true, 0x9, b"p", K));
    bytes.extend(raw_frame(false, 0x0, &req[5..12], K));
    bytes.extend(raw_frame(true, 0xA, b"", K));
    bytes.extend(raw_frame(true, 0x0, &req[12..], K));
    // Two whole requests in the same write are answered in one go.
    bytes.extend(raw_frame(true, 0x1, br#"["two-a","k","hello"]"#, K));
    bytes.extend(raw_frame(true, 0x2, br#"["two-b","k",7]"#, K));
    c.write_all(&bytes).await.expect("write");
    assert_eq!(read_raw_frame(&mut c).await, Some((true, 0xA, b"p".to_vec())));
    assert_eq!(read_raw_frame(&mut c).await, Some((true, 0x1, br#"["frag-1",null,"world"]"#.to_vec())));
    assert_eq!(read_raw_frame(&mut c).await, Some((true, 0x1, br#"["two-a",null,"world"]"#.to_vec())));
    assert_eq!(read_raw_frame(&mut c).await, Some((true, 0x1, br#"["two-b",null,7]"#.to_vec())));
    // A 64 KiB+ request (8-byte length form) round-trips.
    let big = "x".repeat(70_000);
    let req = serde_json::to_vec(&json!(["big", "k", big])).expect("json");
    c.write_all(&raw_frame(true, 0x1, &req, K)).await.expect("write");
    let (_, op, body) = read_raw_frame(&mut c).await.expect("big reply");
    assert_eq!(op, 0x1);
    assert_eq!(serde_json::from_slice::<Value>(&body).expect("json"), json!(["big", null, big]));
    // A close is echoed with its code, then the server ends the stream.
    c.write_all(&raw_frame(true, 0x8, &1000u16.to_be_bytes(), K)).await.expect("write");
    let (_, op, body) = read_raw_frame(&mut c).await.expect("close echo");
    assert_eq!((op, &body[..2]), (0x8, &1000u16.to_be_bytes()[..]));
    assert_eq!(read_raw_frame(&mut c).await, None);
}

#[tokio::test]
async fn ws_server_protocol_violations_close_only_that_socket() {
    let s = server().await;
    let dest = s.local_addr().to_string();
    let good = WsClient::default();
    assert_eq!(good.send(&dest, out(json!("hello"), Some(LONG))).await.expect("reply"), json!("world"));
    let violations: Vec<Vec<u8>> = vec![
        raw_frame(true, 0x1, br#"["u","k","hello"]"#, None), // a client frame without a mask
        vec![0xC1, 0x80, 0, 0, 0, 0],                        // RSV1 without an extension
        raw_frame(true, 0x3, b"", K),                        // a reserved opcode
        raw_frame(true, 0x0, b"x", K),                       // a continuation of nothing
        raw_frame(false, 0x9, b"x", K),                      // a fragmented ping
    ];
    for (i, v) in violations.into_iter().enumerate() {
        let mut c = raw_socket(s.local_addr()).await;
        c.write_all(&v).await.expect("write");
        let (_, op, body) = read_raw_frame(&mut c).await.unwrap_or_else(|| panic!("case {i}: a close frame"));
        assert_eq!(op, 0x8, "case {i}");
        assert_eq!(&body[..2], &1002u16.to_be_bytes(), "case {i}");
        assert_eq!(read_raw_frame(&mut c).await, None, "case {i}: then the end");
        // The other client's socket is untouched.
        assert_eq!(good.send(&dest, out(json!("hello"), Some(LONG))).await.expect("reply"), json!("world"), "case {i}");
    }
    // An upgrade request that is not one gets an HTTP error, not a hang.
    let mut c = tokio::net::TcpStream::connect(s.local_addr()).await.expect("connect");
    c.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
    assert!(read_head(&mut c).await.starts_with("HTTP/1.1 400"));
    assert_eq!(good.open_sockets(&dest), good.pool_size(&dest), "none of the good client's sockets closed");
}

#[tokio::test]
async fn ws_server_refuses_reserved_close_codes_and_invalid_utf8() {
    let s = server().await;
    // (what the client sends, the close code the server must answer with)
    let cases: Vec<(Vec<u8>, u16)> = vec![
        (raw_frame(true, 0x8, &999u16.to_be_bytes(), K), 1002),     // not a code: never echoed
        (raw_frame(true, 0x8, &1005u16.to_be_bytes(), K), 1002),    // reserved, never on the wire
        (raw_frame(true, 0x8, &5000u16.to_be_bytes(), K), 1002),    // out of range
        (raw_frame(true, 0x8, &[0x0F, 0xA0, 0xFF, 0xFE], K), 1007), // 4000 with a reason that is not UTF-8
        (raw_frame(true, 0x1, b"[\"r\",\"k\",\"\xFF\"]", K), 1007), // a text message that is not UTF-8
        // ... also when its fragments only break UTF-8 together
        ([raw_frame(false, 0x1, b"[\"r\",\"k\",\"\xC3", K), raw_frame(true, 0x0, b"(\"]", K)].concat(), 1007),
        (raw_frame(true, 0x8, &4000u16.to_be_bytes(), K), 4000), // an application code is echoed
    ];
    for (i, (bytes, want)) in cases.into_iter().enumerate() {
        let mut c = raw_socket(s.local_addr()).await;
        c.write_all(&bytes).await.expect("write");
        let (_, op, body) = read_raw_frame(&mut c).await.unwrap_or_else(|| panic!("case {i}: a close frame"));
        assert_eq!((op, u16::from_be_bytes([body[0], body[1]])), (0x8, want), "case {i}");
        assert_eq!(read_raw_frame(&mut c).await, None, "case {i}: then the end");
    }
    // A binary message is not text: any bytes are fine (it is dropped as a malformed request).
    let mut c = raw_socket(s.local_addr()).await;
    c.write_all(&raw_frame(true, 0x2, b"\xFF\xFE", K)).await.expect("write");
    c.write_all(&raw_frame(true, 0x1, br#"["ok","k","hello"]"#, K)).await.expect("write");
    assert_eq!(read_raw_frame(&mut c).await, Some((true, 0x1, br#"["ok",null,"world"]"#.to_vec())));
}

/// A hand-written server for the client side: accepts one socket, answers the handshake, then
/// runs `script` on it.
async fn raw_server<F, Fut>(script: F) -> SocketAddr
where
    F: FnOnce(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let l = tokio::net::TcpListener::bind(any_port()).await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.expect("accept");
        let head = read_head(&mut s).await;
        let key = head
            .lines()
            .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: ").or_else(|| l.strip_prefix("sec-websocket-key: ")))
            .expect("key")
            .trim()
            .to_string();
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
        let resp = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
        );
        s.write_all(resp.as_bytes()).await.expect("write");
        script(s).await;
    });
    addr
}

/// Reads one masked client frame and returns the request id of the request in it.
async fn read_request_rid(s: &mut tokio::net::TcpStream) -> Value {
    let (_, op, body) = read_raw_frame(s).await.expect("request");
    assert_eq!(op, 0x1);
    serde_json::from_slice::<Value>(&body).expect("json")[0].clone()
}

#[tokio::test]
async fn ws_client_answers_pings_and_reads_fragmented_replies() {
    let addr = raw_server(|mut s| async move {
        let rid = read_request_rid(&mut s).await;
        s.write_all(&raw_frame(true, 0x9, b"ping!", None)).await.expect("write");
        assert_eq!(read_raw_frame(&mut s).await, Some((true, 0xA, b"ping!".to_vec())), "the client's pong");
        let reply = serde_json::to_vec(&json!([rid, null, {"ok": true}])).expect("json");
        let mut bytes = raw_frame(false, 0x1, &reply[..3], None);
        bytes.extend(raw_frame(true, 0x0, &reply[3..], None));
        s.write_all(&bytes).await.expect("write");
        // Keep the socket open until the client goes.
        let _ = read_raw_frame(&mut s).await;
    })
    .await;
    let c = WsClient::default();
    assert_eq!(c.send(&addr.to_string(), out(json!("x"), Some(LONG))).await.expect("reply"), json!({"ok": true}));
}

#[tokio::test]
async fn ws_client_fails_in_flight_requests_at_once_on_a_protocol_violation() {
    let addr = raw_server(|mut s| async move {
        let _ = read_request_rid(&mut s).await;
        // A masked frame from a server is a violation: the client closes with 1002.
        s.write_all(&raw_frame(true, 0x1, b"[]", Some([1, 2, 3, 4]))).await.expect("write");
        let (_, op, body) = read_raw_frame(&mut s).await.expect("close");
        assert_eq!((op, &body[..2]), (0x8, &1002u16.to_be_bytes()[..]));
    })
    .await;
    let c = WsClient::default();
    let t = Instant::now();
    let e = c.send(&addr.to_string(), out(json!("x"), Some(LONG))).await.expect_err("fails");
    assert_eq!(e.kind(), ErrorKind::Closed, "{e}");
    assert!(t.elapsed() < Duration::from_secs(5), "at once, not at the timeout");
}

#[tokio::test]
async fn ws_client_reports_a_bad_accept_key_and_http_statuses() {
    // A 101 with the wrong Sec-WebSocket-Accept is not a WebSocket.
    let l = tokio::net::TcpListener::bind(any_port()).await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        for resp in [
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: bm9wZQ==\r\n\r\n",
            "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n",
            "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n",
        ] {
            let (mut s, _) = l.accept().await.expect("accept");
            let _ = read_head(&mut s).await;
            s.write_all(resp.as_bytes()).await.expect("write");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let dest = addr.to_string();
    let e = WsClient::default().send(&dest, out(json!("x"), Some(LONG))).await.expect_err("bad accept");
    assert_eq!(e.kind(), ErrorKind::Connect, "{e}");
    assert!(e.message().contains("Sec-WebSocket-Accept"), "{e}");
    let e = WsClient::default().send(&dest, out(json!("x"), Some(LONG))).await.expect_err("403");
    assert_eq!(e.kind(), ErrorKind::Connect, "{e}");
    assert!(e.message().contains("403"), "{e}");
    let e = WsClient::default().send(&dest, out(json!("x"), Some(LONG))).await.expect_err("401");
    assert_eq!(e.kind(), ErrorKind::ClientRefused, "{e}");
}

#[tokio::test]
async fn ws_timeouts_cover_a_write_stuck_on_a_server_that_does_not_read_and_mixed_deadlines() {
    // The server takes the socket and never reads it: a 8 MiB request fills the socket buffers
    // and its write blocks; the request still fails at its deadline.
    let addr = raw_server(|s| async move {
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(s);
    })
    .await;
    let c = WsClient::default();
    let dest = addr.to_string();
    let big = json!("x".repeat(8 << 20));
    let t0 = Instant::now();
    let e = c.send(&dest, out(big, Some(Duration::from_millis(400)))).await.expect_err("timeout");
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(390) && took < Duration::from_millis(3000), "{took:?}");

    // Deadlines in any order on one socket: a long one first, then shorter ones, each on time.
    let s = server().await;
    let dest = s.local_addr().to_string();
    let c = WsClient::new(WsClientConfig::default().max_active_dest_transports(1));
    c.send(&dest, out(json!("hello"), Some(LONG))).await.expect("warm");
    let long = c.send(&dest, out(json!({"sleep": 1500, "v": "late"}), Some(LONG)));
    let t0 = Instant::now();
    let short = async {
        let a = c.send(&dest, out(json!({"sleep": 10_000}), Some(Duration::from_millis(600))));
        let b = c.send(&dest, out(json!({"sleep": 10_000}), Some(Duration::from_millis(200))));
        let (a, b) = tokio::join!(a, b);
        (a.expect_err("a times out").kind(), b.expect_err("b times out").kind(), t0.elapsed())
    };
    let (long, (a, b, took)) = tokio::join!(long, short);
    assert_eq!((a, b), (ErrorKind::Timeout, ErrorKind::Timeout));
    assert!(took >= Duration::from_millis(590) && took < Duration::from_millis(1400), "{took:?}");
    assert_eq!(long.expect("the long one is answered"), json!("late"));
}

/// Busy-polling (on by default) changes when a wait sleeps, never what it returns: with the
/// server and the client each on a current-thread runtime of its own (both ends spin), with a
/// budget of zero (off) and with the largest budget, fast and slow replies arrive, a request
/// with no reply in time fails at its deadline, and a server that closes is noticed promptly.
#[test]
fn ws_busy_poll_keeps_replies_timeouts_and_close() {
    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
    }
    for budget in [grenache::transport::ws::DEFAULT_BUSY_POLL, Duration::ZERO, Duration::from_secs(3600)] {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = std::thread::spawn(move || {
            runtime().block_on(async move {
                let s = WsServer::bind(any_port(), test_handler, WsServerConfig::default().busy_poll(budget)).await.expect("bind");
                addr_tx.send(s.local_addr()).expect("send addr");
                let _ = stop_rx.await;
                s.close().await;
                // Give the connection tasks a moment to send their close frames.
                tokio::time::sleep(Duration::from_millis(50)).await;
            })
        });
        let dest = addr_rx.recv_timeout(LONG).expect("server address").to_string();
        runtime().block_on(async move {
            let c = WsClient::new(WsClientConfig::default().busy_poll(budget));
            // Budgets past MAX_BUSY_POLL are clamped to it.
            let shown = format!("{:?}", c.config());
            assert!(shown.contains(&format!("busy_poll: {:?}", budget.min(grenache::transport::ws::MAX_BUSY_POLL))), "{shown}");
            for i in 0..300u64 {
                assert_eq!(c.send(&dest, out(json!({"echo": i}), Some(LONG))).await.expect("reply"), json!({"echo": i}));
            }
            // Slow and fast replies alternate: the socket goes cold and hot again.
            for i in 0..6u64 {
                let ms = if i % 2 == 0 { 20 } else { 0 };
                let t = Instant::now();
                assert_eq!(c.send(&dest, out(json!({"sleep": ms, "v": i}), Some(LONG))).await.expect("reply"), json!(i));
                assert!(t.elapsed() < Duration::from_millis(ms + 2000), "{:?}", t.elapsed());
            }
            // No reply in time: fails at its deadline, spinning or not.
            let t = Instant::now();
            let e = c.send(&dest, out(json!({"sleep": 2000, "v": 0}), Some(Duration::from_millis(100)))).await.expect_err("timeout");
            assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
            assert!(t.elapsed() >= Duration::from_millis(100) && t.elapsed() < Duration::from_millis(1500), "{:?}", t.elapsed());
            // A request in flight when the server closes fails at once, not at its timeout.
            let pending = c.send(&dest, out(json!({"sleep": 5000, "v": 0}), Some(LONG)));
            let t = Instant::now();
            let closer = async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                stop_tx.send(()).expect("stop");
            };
            let (r, ()) = tokio::join!(pending, closer);
            let e = r.expect_err("closed");
            assert_eq!(e.kind(), ErrorKind::Closed, "{e}");
            assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
        });
        server.join().expect("server thread");
    }
}

/// `pick_cached` makes `request`'s choice from the Link's cache without waiting: nothing before
/// the key was looked up, a random worker of the cached list after, only workers with live
/// connections (as the caller counts them) once `max_active_key_dests` have one, and never a
/// worker that failed to connect while it is avoided.
#[tokio::test]
async fn pick_cached_chooses_as_request_does_from_the_cache() {
    use grenache::grape::Testnet;
    use grenache::link::Link;
    use grenache::rpc::{PeerRpcClient, PeerRpcClientConfig, RequestOptions};
    use std::collections::HashSet;

    let net = Testnet::start(2).await.expect("testnet");
    let live = [server().await, server().await];
    let announcer = Link::with_grape(net.api_url(0)).expect("link");
    for s in &live {
        announcer.announce("pick_cached", s.local_addr().port()).await.expect("announce");
    }
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr");
    announcer.announce("pick_cached", dead.port()).await.expect("announce");
    let link = Link::with_grape(net.api_url(1)).expect("link");
    let deadline = Instant::now() + LONG;
    while link.lookup("pick_cached").await.map(|l| l.len()).unwrap_or(0) < 3 {
        assert!(Instant::now() < deadline, "announces not visible");
        link.invalidate("pick_cached");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    link.invalidate("pick_cached");
    let transport: Arc<dyn grenache::rpc::ClientTransport> = Arc::new(WsClient::new(WsClientConfig::default()));
    let client = PeerRpcClient::new(link, transport, PeerRpcClientConfig { max_active_key_dests: 1, ..Default::default() });
    let opts = RequestOptions::default();
    assert_eq!(client.pick_cached("pick_cached", &opts, &|_| 0), None, "not looked up yet");
    client.pick_dest("pick_cached", &opts).await.expect("lookup");
    let all: HashSet<String> = live.iter().map(|s| s.local_addr().to_string()).chain([dead.to_string()]).collect();
    let picked: HashSet<String> = (0..200).filter_map(|_| client.pick_cached("pick_cached", &opts, &|_| 0)).collect();
    assert_eq!(picked, all, "a random worker of the cached list");
    let first = live[0].local_addr().to_string();
    assert!((0..50).all(|_| client.pick_cached("pick_cached", &opts, &|d| usize::from(d == first)).as_deref() == Some(first.as_str())));
    // The dead worker fails to connect once: it is avoided (and the key looked up afresh).
    let transport: Arc<dyn grenache::rpc::ClientTransport> = Arc::new(WsClient::new(WsClientConfig::default()));
    let client = PeerRpcClient::new(client.link().clone(), transport, PeerRpcClientConfig::default());
    let ropts = RequestOptions { timeout: Some(LONG), ..Default::default() };
    while !client.is_avoided(&dead.to_string()) {
        assert!(Instant::now() < deadline + LONG, "the dead worker was never tried");
        client.request("pick_cached", "hello", &ropts).await.expect("fails over");
    }
    client.pick_dest("pick_cached", &opts).await.expect("lookup");
    assert!((0..100).all(|_| client.pick_cached("pick_cached", &opts, &|_| 0).is_some_and(|d| d != dead.to_string())));
    for s in live {
        s.close().await;
    }
    net.stop().await;
}
