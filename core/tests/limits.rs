//! Limits against hostile load, with small numbers: read deadlines (head, body, minimum rate, idle
//! keep-alive), connections per source IP, the server-wide body budget, and WebSocket liveness
//! (pings, idle sockets) on the RPC and PUB/SUB servers. All on loopback (127.0.0.1 and, for a
//! second source, 127.0.0.2), ports picked by the OS.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use grenache::rpc::{Handler, Reply, Request};
use grenache::transport::ReadDeadlines;
use grenache::transport::http::{BodyStream, HttpServer, HttpServerConfig, StreamHandler, StreamRequest};
use grenache::transport::limits::WsLiveness;
use grenache::transport::ws::{WsServer, WsServerConfig};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

mod support;

const LONG: Duration = Duration::from_secs(20);

fn echo() -> Arc<dyn Handler> {
    Arc::new(|req: Request, reply: Reply| reply.ok(req.payload.into_value()))
}

fn small_deadlines() -> ReadDeadlines {
    ReadDeadlines {
        header: Duration::from_millis(600),
        body: Duration::from_millis(1500),
        body_min_rate: 100,
        body_grace: Duration::from_millis(400),
        idle: Duration::from_millis(400),
    }
}

async fn http_server(cfg: HttpServerConfig) -> HttpServer {
    HttpServer::bind("127.0.0.1:0".parse().expect("addr"), echo(), cfg).await.expect("bind")
}

/// A connection from `source` (a loopback address) to `to`.
async fn connect_from(source: &str, to: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().expect("socket");
    s.bind(format!("{source}:0").parse().expect("addr")).expect("bind source");
    s.connect(to).await.expect("connect")
}

/// Reads until the peer closes (or `LONG`): what came, and how long it took.
async fn read_to_close(s: &mut TcpStream) -> (String, Duration) {
    let t = Instant::now();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(LONG, s.read_to_end(&mut out)).await.expect("the server closes in time");
    (String::from_utf8_lossy(&out).into_owned(), t.elapsed())
}

fn post(body_len: usize) -> String {
    format!("POST / HTTP/1.1\r\nHost: x\r\ngrc-compress: none\r\nContent-Length: {body_len}\r\n\r\n")
}

#[tokio::test]
async fn http_a_stalled_or_slow_body_gets_408_and_the_connection_closes() {
    let srv = http_server(HttpServerConfig { deadlines: small_deadlines(), ..Default::default() }).await;
    // Stalled: 10 of 100 bytes, then nothing (the minimum rate ends it after the grace).
    let mut c = TcpStream::connect(srv.local_addr()).await.expect("connect");
    c.write_all(format!("{}[\"r\",\"k\"", post(100)).as_bytes()).await.expect("write");
    let (out, took) = read_to_close(&mut c).await;
    assert!(out.starts_with("HTTP/1.1 408"), "{out}");
    assert!(out.contains("ERR_TIMEOUT"), "{out}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    // Slow: a byte every 100 ms is 10 B/s, under the 100 B/s minimum.
    let mut c = TcpStream::connect(srv.local_addr()).await.expect("connect");
    c.write_all(post(1000).as_bytes()).await.expect("write");
    let drip = async {
        for _ in 0..100 {
            if c.write_all(b" ").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(3), drip).await;
    let (out, _) = read_to_close(&mut c).await;
    assert!(out.starts_with("HTTP/1.1 408"), "{out}");
    assert!(srv.refused() >= 2);
    // A body that comes at once is answered as usual.
    let mut c = TcpStream::connect(srv.local_addr()).await.expect("connect");
    let body = r#"["r","k","ok"]"#;
    c.write_all(format!("{}{body}", post(body.len()).replace("\r\n\r\n", "\r\nConnection: close\r\n\r\n")).as_bytes())
        .await
        .expect("write");
    let (out, _) = read_to_close(&mut c).await;
    assert!(out.starts_with("HTTP/1.1 200") && out.ends_with(r#"["r",null,"ok"]"#), "{out}");
}

/// A stream handler that reads the whole body and answers with its length, or with the error
/// reading it gave.
struct ReadAll;

impl StreamHandler for ReadAll {
    fn handle(&self, mut req: StreamRequest) -> grenache::rpc::BoxFuture<'static, grenache::Result<BodyStream>> {
        Box::pin(async move {
            let text = match req.read_all(1 << 20).await {
                Ok(body) => format!("read {}", body.len()),
                Err(e) => format!("failed: {e}"),
            };
            let once: BodyStream = Box::pin(futures_util::stream::once(async move { Ok(bytes::Bytes::from(text)) }));
            Ok(once)
        })
    }
}

#[tokio::test]
async fn http_a_stalled_streamed_body_fails_its_read_in_time() {
    let cfg = HttpServerConfig { deadlines: small_deadlines(), stream_handler: Some(Arc::new(ReadAll)), ..Default::default() };
    let srv = http_server(cfg).await;
    let head = "POST / HTTP/1.1\r\nHost: x\r\n_gr: [\"r\",\"k\"]\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    // Stalled: one chunk, then nothing; the handler's read fails once the minimum rate is missed.
    let mut c = TcpStream::connect(srv.local_addr()).await.expect("connect");
    c.write_all(format!("{head}5\r\nhello\r\n").as_bytes()).await.expect("write");
    let (out, took) = read_to_close(&mut c).await;
    assert!(out.contains("failed: ") && out.contains("deadline"), "{out}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    // A body that comes at once is read whole.
    let mut c = TcpStream::connect(srv.local_addr()).await.expect("connect");
    c.write_all(format!("{head}5\r\nhello\r\n0\r\n\r\n").as_bytes()).await.expect("write");
    let (out, _) = read_to_close(&mut c).await;
    assert!(out.contains("read 5"), "{out}");
}

#[tokio::test]
async fn http_a_late_head_and_an_idle_keep_alive_connection_are_closed() {
    let srv = http_server(HttpServerConfig { deadlines: small_deadlines(), ..Default::default() }).await;
    let mut c = TcpStream::connect(srv.local_addr()).await.expect("connect");
    c.write_all(b"POST / HTTP/1.1\r\nHost: x\r\n").await.expect("write");
    let (out, took) = read_to_close(&mut c).await;
    assert!(!out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    // One request, then silence: closed after the idle deadline.
    let mut c = TcpStream::connect(srv.local_addr()).await.expect("connect");
    let body = r#"["r","k",1]"#;
    c.write_all(format!("{}{body}", post(body.len())).as_bytes()).await.expect("write");
    let (out, took) = read_to_close(&mut c).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(5), "{took:?}");
}

#[tokio::test]
async fn http_connections_per_source_ip_and_the_reserve() {
    let cfg = HttpServerConfig { max_connections: 8, max_connections_per_ip: 2, ..Default::default() };
    let srv = http_server(cfg).await;
    let addr = srv.local_addr();
    let mut held = vec![connect_from("127.0.0.1", addr).await, connect_from("127.0.0.1", addr).await];
    // Let the server admit both before the third arrives.
    let t = Instant::now();
    while srv.connections() < 2 && t.elapsed() < LONG {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut third = connect_from("127.0.0.1", addr).await;
    let (out, _) = read_to_close(&mut third).await;
    assert!(out.is_empty(), "closed without an answer: {out}");
    // Another source is still served.
    let mut other = connect_from("127.0.0.2", addr).await;
    let body = r#"["r","k","other"]"#;
    other.write_all(format!("{}{body}", post(body.len())).as_bytes()).await.expect("write");
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(LONG, other.read(&mut buf)).await.expect("answer in time").expect("read");
    assert!(String::from_utf8_lossy(&buf[..n]).contains(r#"["r",null,"other"]"#));
    assert!(srv.refused() >= 1);
    held.clear();
}

#[tokio::test]
async fn http_the_server_wide_body_budget_refuses_with_503() {
    let cfg = HttpServerConfig { max_body_in_flight: 1000, ..Default::default() };
    let srv = http_server(cfg).await;
    // The first body (600 bytes declared, still coming) holds 600 of the 1000 bytes.
    let mut first = TcpStream::connect(srv.local_addr()).await.expect("connect");
    first.write_all(format!("{}[\"r\",", post(600)).as_bytes()).await.expect("write");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut second = TcpStream::connect(srv.local_addr()).await.expect("connect");
    second.write_all(format!("{}[\"r\",", post(600)).as_bytes()).await.expect("write");
    let mut buf = vec![0u8; 2048];
    let n = tokio::time::timeout(LONG, second.read(&mut buf)).await.expect("answer in time").expect("read");
    let out = String::from_utf8_lossy(&buf[..n]);
    assert!(out.starts_with("HTTP/1.1 503") && out.contains("ERR_BUSY"), "{out}");
    // Once the first is done the budget is back.
    let rest = format!("\"k\",\"{}\"]", "x".repeat(600 - 12));
    first.write_all(rest.as_bytes()).await.expect("write");
    let n = tokio::time::timeout(LONG, first.read(&mut buf)).await.expect("answer").expect("read");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..n]));
    let mut third = TcpStream::connect(srv.local_addr()).await.expect("connect");
    let body = r#"["r","k",3]"#;
    third.write_all(format!("{}{body}", post(body.len())).as_bytes()).await.expect("write");
    let n = tokio::time::timeout(LONG, third.read(&mut buf)).await.expect("answer").expect("read");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
}

/// A raw WebSocket client socket that did the opening handshake.
async fn ws_raw(addr: SocketAddr) -> TcpStream {
    support::handshake(addr).await
}

/// Reads one server frame: (opcode, payload); `None` at the end of the stream.
async fn ws_frame(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    support::read_frame(s).await.map(|f| (f.op, f.payload))
}

/// A masked client frame.
fn ws_client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0x80 | opcode, 0x80 | payload.len() as u8, 0, 0, 0, 0];
    out.extend_from_slice(payload);
    out
}

#[tokio::test]
async fn ws_a_silent_socket_is_pinged_then_closed_and_an_idle_one_closes() {
    let live = WsLiveness { ping_interval: Duration::from_millis(300), pong_timeout: Duration::from_millis(300), idle: Duration::ZERO };
    let cfg = WsServerConfig::default().liveness(live);
    let srv = WsServer::bind_arc("127.0.0.1:0".parse().expect("addr"), echo(), cfg).await.expect("bind");
    // Silent: a ping, then (no answer) a close 1001.
    let mut c = ws_raw(srv.local_addr()).await;
    assert_eq!(ws_frame(&mut c).await.map(|f| f.0), Some(0x9));
    let (op, body) = ws_frame(&mut c).await.expect("close frame");
    assert_eq!((op, u16::from_be_bytes([body[0], body[1]])), (0x8, 1001));
    // Answering pings keeps a socket open.
    let mut c = ws_raw(srv.local_addr()).await;
    for _ in 0..3 {
        assert_eq!(ws_frame(&mut c).await.map(|f| f.0), Some(0x9));
        c.write_all(&ws_client_frame(0xA, b"")).await.expect("pong");
    }
    c.write_all(&ws_client_frame(0x1, br#"["r","k",1]"#)).await.expect("request");
    assert_eq!(ws_frame(&mut c).await, Some((0x1, br#"["r",null,1]"#.to_vec())));
    // Idle: a socket that sends no request is closed with 1000, even though it answers pings.
    let live =
        WsLiveness { ping_interval: Duration::from_millis(100), pong_timeout: Duration::from_secs(5), idle: Duration::from_millis(700) };
    let srv =
        WsServer::bind_arc("127.0.0.1:0".parse().expect("addr"), echo(), WsServerConfig::default().liveness(live)).await.expect("bind");
    let mut c = ws_raw(srv.local_addr()).await;
    let t = Instant::now();
    let code = loop {
        match ws_frame(&mut c).await.expect("a frame") {
            (0x9, _) => c.write_all(&ws_client_frame(0xA, b"")).await.expect("pong"),
            (0x8, body) => break u16::from_be_bytes([body[0], body[1]]),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(code, 1000);
    assert!(t.elapsed() >= Duration::from_millis(600), "{:?}", t.elapsed());
}

#[tokio::test]
async fn ws_connections_per_source_ip() {
    let cfg = WsServerConfig::default().max_connections_per_ip(1);
    let srv = WsServer::bind_arc("127.0.0.1:0".parse().expect("addr"), echo(), cfg).await.expect("bind");
    let _held = ws_raw(srv.local_addr()).await;
    let mut second = connect_from("127.0.0.1", srv.local_addr()).await;
    let (out, _) = read_to_close(&mut second).await;
    assert!(out.is_empty(), "{out}");
    let client = grenache::transport::ws::WsClient::default();
    let _ = client;
    let mut other = connect_from("127.0.0.2", srv.local_addr()).await;
    other.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").await.expect("write");
    let mut buf = [0u8; 12];
    tokio::time::timeout(LONG, other.read_exact(&mut buf)).await.expect("in time").expect("read");
    assert_eq!(&buf, b"HTTP/1.1 101");
    let _ = json!(null);
}

#[tokio::test]
async fn pubsub_a_subscriber_that_does_not_answer_pings_is_dropped() {
    use grenache::pubsub::{PeerPub, PubConfig};
    let live = WsLiveness { ping_interval: Duration::from_millis(300), pong_timeout: Duration::from_millis(300), idle: Duration::ZERO };
    let p = PeerPub::bind("127.0.0.1:0".parse().expect("addr"), PubConfig::default().liveness(live)).await.expect("bind");
    let mut c = ws_raw(p.local_addr()).await;
    p.wait_subscribers(1, LONG).await.expect("subscribed");
    let mut seen_ping = false;
    let t = Instant::now();
    loop {
        match ws_frame(&mut c).await {
            Some((0x9, _)) => seen_ping = true,
            Some(_) => {}
            None => break,
        }
        assert!(t.elapsed() < LONG);
    }
    assert!(seen_ping);
    assert_eq!(p.subscribers(), 0);
}
