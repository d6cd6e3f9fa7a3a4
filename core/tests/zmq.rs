//! ZeroMQ RPC transport: our DEALER client against our ROUTER server, the RPC peers over it
//! (request, map, retries, failover, timeouts, graceful shutdown) with in-process Grapes, and bad
//! input from a raw ZMTP peer written here byte by byte. Interop with libzmq is in
//! `tests/tests/zmq_interop.rs`. All on 127.0.0.1 with ports picked by the OS.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use grenache::ErrorKind;
use grenache::grape::Testnet;
use grenache::link::{Link, LinkConfig};
use grenache::rpc::{OutgoingRequest, PeerRpcClient, PeerRpcClientConfig, PeerRpcServer, Reply, Request, RequestOptions, TransportKind};
use grenache::transport::zmq::{ZmqClient, ZmqClientConfig, ZmqServer, ZmqServerConfig};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LONG: Duration = Duration::from_secs(20);

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().expect("addr")
}

/// How many `{"sleep": ...}` requests reached [`test_handler`] (nextest runs each test in a
/// process of its own).
static SLEEPING: AtomicUsize = AtomicUsize::new(0);

/// Waits until more than `before` `{"sleep": ...}` requests reached the handler: what follows (a
/// close, a drain) meets the request running.
async fn wait_sleeping(before: usize) {
    support::eventually("the slow request in its handler", || SLEEPING.load(Ordering::SeqCst) > before).await;
}

/// "hello" → "world"; "fail" → ERR_BOOM; {"sleep":ms,"v":x} → x after ms; "transport" → the
/// transport seen; anything else is echoed.
fn test_handler(req: Request, reply: Reply) {
    match req.payload.value() {
        Value::String(s) if s == "hello" => reply.ok(json!("world")),
        Value::String(s) if s == "fail" => reply.err("ERR_BOOM"),
        Value::String(s) if s == "transport" => reply.ok(json!(format!("{:?}", req.info.transport))),
        Value::Object(o) if o.contains_key("sleep") => {
            SLEEPING.fetch_add(1, Ordering::SeqCst);
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
        rid: grenache::rpc::new_rid(),
        key: Arc::from("rpc_zmq_test"),
        payload_json: Arc::from(payload.to_string()),
        timeout,
        compress: false,
    }
}

async fn server() -> ZmqServer {
    ZmqServer::bind(any_port(), test_handler, ZmqServerConfig::default()).await.expect("bind")
}

#[tokio::test]
async fn request_reply_errors_and_many_in_flight() {
    let srv = server().await;
    let dest = srv.local_addr().to_string();
    let c = ZmqClient::default();
    assert_eq!(c.send(&dest, out(json!("hello"), Some(LONG))).await.expect("hello"), json!("world"));
    assert_eq!(c.send(&dest, out(json!("transport"), Some(LONG))).await.expect("kind"), json!("Zmq"));
    let e = c.send(&dest, out(json!("fail"), Some(LONG))).await.expect_err("remote");
    assert_eq!((e.kind(), e.message()), (ErrorKind::Remote, "ERR_BOOM"));
    // 500 at once on one connection, answered out of order, each to its own caller.
    let futs = (0..500u64).map(|i| {
        let c = c.clone();
        let dest = dest.clone();
        async move { c.send(&dest, out(json!({"sleep": (i * 7) % 50, "v": i}), Some(LONG))).await }
    });
    let got = futures_util::future::join_all(futs).await;
    for (i, r) in got.into_iter().enumerate() {
        assert_eq!(r.expect("reply"), json!(i));
    }
    assert_eq!(srv.connections(), 1);
    // The raw form passes the JSON text through.
    let raw = c.send_as(&dest, out(json!({"a": [1, 2]}), Some(LONG)), grenache::rpc::envelope::ResultForm::Raw).await;
    assert_eq!(raw.expect("raw").into_raw().get(), r#"{"a":[1,2]}"#);
}

#[tokio::test]
async fn timeouts_refused_connects_and_a_server_that_goes_away() {
    let srv = server().await;
    let dest = srv.local_addr().to_string();
    let c = ZmqClient::new(ZmqClientConfig::default().connect_timeout(Duration::from_secs(5)));
    let e = c.send(&dest, out(json!({"sleep": 2000}), Some(Duration::from_millis(100)))).await.expect_err("timeout");
    assert_eq!(e.kind(), ErrorKind::Timeout);
    // The late reply is dropped; the connection keeps working.
    assert_eq!(c.send(&dest, out(json!("hello"), Some(LONG))).await.expect("after"), json!("world"));
    // A server closed with a request in flight: the request fails at once with Closed.
    let before = SLEEPING.load(Ordering::SeqCst);
    let slow = tokio::spawn({
        let (c, dest) = (c.clone(), dest.clone());
        async move { c.send(&dest, out(json!({"sleep": 10_000}), Some(LONG))).await }
    });
    wait_sleeping(before).await;
    srv.close();
    let e = tokio::time::timeout(Duration::from_secs(5), slow).await.expect("fails fast").expect("task").expect_err("closed");
    assert_eq!(e.kind(), ErrorKind::Closed, "{e}");
    // Nothing listens any more: a connect error (what PeerRpcClient fails over on).
    let e = c.send(&dest, out(json!("hello"), Some(LONG))).await.expect_err("refused");
    assert_eq!(e.kind(), ErrorKind::Connect, "{e}");
}

async fn testnet_link() -> (Testnet, Link) {
    let net = Testnet::start(2).await.expect("grapes");
    let link = Link::new(LinkConfig::with_grape(net.api_url(0))).expect("link");
    (net, link)
}

async fn peer_server(link: &Link, name: &str) -> (PeerRpcServer, SocketAddr) {
    let t = grenache::transport::bind_server(TransportKind::Zmq, any_port(), Arc::new(test_handler), None, None).await.expect("bind");
    let addr = t.local_addr();
    let srv = PeerRpcServer::new(link.clone(), t);
    srv.start_announcing(name, Duration::from_secs(1)).first_result(LONG).await.expect("announce");
    (srv, addr)
}

async fn wait_lookup(link: &Link, name: &str, n: usize) {
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        link.invalidate(name);
        if link.lookup(name).await.map(|v| v.len() >= n).unwrap_or(false) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{n} workers for {name} not found in time");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn peers_request_map_failover_and_graceful_shutdown() {
    let (_net, link) = testnet_link().await;
    let (s1, a1) = peer_server(&link, "zmq_svc").await;
    let (s2, a2) = peer_server(&link, "zmq_svc").await;
    wait_lookup(&link, "zmq_svc", 2).await;
    let client = PeerRpcClient::new(link.clone(), grenache::transport::client(TransportKind::Zmq, None), PeerRpcClientConfig::default());
    let o = RequestOptions { timeout: Some(LONG), ..Default::default() };
    assert_eq!(client.request("zmq_svc", &json!("hello"), &o).await.expect("request"), json!("world"));
    let mut all = client.map("zmq_svc", &json!({"m": 1}), &o).await.expect("map");
    all.sort_by_key(|v| v.to_string());
    assert_eq!(all, vec![json!({"m": 1}), json!({"m": 1})]);
    // One worker stops for good: requests go to the other, none fails.
    s1.stop();
    for _ in 0..20 {
        assert_eq!(client.request("zmq_svc", &json!("hello"), &o).await.expect("failover"), json!("world"));
    }
    // A graceful shutdown lets a running request finish and its reply go out.
    let before = SLEEPING.load(Ordering::SeqCst);
    let slow = tokio::spawn({
        let client = client.clone();
        let o = RequestOptions { dest: Some(a2.to_string()), ..o.clone() };
        async move { client.request("zmq_svc", &json!({"sleep": 500, "v": "done"}), &o).await }
    });
    wait_sleeping(before).await;
    assert!(s2.shutdown(Duration::from_secs(10)).await, "drained in time");
    assert_eq!(slow.await.expect("task").expect("finished"), json!("done"));
    let e = client.request("zmq_svc", &json!("hello"), &RequestOptions { dest: Some(a2.to_string()), ..o.clone() }).await;
    assert_eq!(e.expect_err("gone").kind(), ErrorKind::Connect);
    let _ = a1;
}

#[tokio::test]
async fn a_draining_server_answers_new_requests_as_not_run() {
    let srv = server().await;
    let dest = srv.local_addr().to_string();
    let c = ZmqClient::default();
    let before = SLEEPING.load(Ordering::SeqCst);
    let slow = tokio::spawn({
        let (c, dest) = (c.clone(), dest.clone());
        async move { c.send(&dest, out(json!({"sleep": 600, "v": 1}), Some(LONG))).await }
    });
    wait_sleeping(before).await;
    let drain = tokio::spawn(srv.drain(Duration::from_secs(10)));
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Read while the slow one runs: not run, a Connect error the RPC client fails over on.
    let e = c.send(&dest, out(json!("hello"), Some(LONG))).await.expect_err("draining");
    assert_eq!((e.kind(), e.message()), (ErrorKind::Connect, "ERR_TRANSPORT_DRAINING"));
    assert_eq!(slow.await.expect("task").expect("slow one finished"), json!(1));
    assert!(drain.await.expect("drain task"));
}

// --- A raw ZMTP peer, written here from the specification, for bad input. ---

fn frame(out: &mut Vec<u8>, flags: u8, body: &[u8]) {
    if body.len() > 255 {
        out.push(flags | 2);
        out.extend_from_slice(&(body.len() as u64).to_be_bytes());
    } else {
        out.push(flags);
        out.push(body.len() as u8);
    }
    out.extend_from_slice(body);
}

fn message(frames: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, f) in frames.iter().enumerate() {
        frame(&mut out, u8::from(i + 1 < frames.len()), f);
    }
    out
}

/// Connects as a DEALER: greeting, READY; returns the socket after the server's READY.
async fn raw_dealer(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut g = [0u8; 64];
    g[0] = 0xff;
    g[9] = 0x7f;
    g[10] = 3;
    g[11] = 0;
    g[12..16].copy_from_slice(b"NULL");
    s.write_all(&g).await.expect("greeting");
    let mut peer = [0u8; 64];
    s.read_exact(&mut peer).await.expect("server greeting");
    assert_eq!((peer[0], peer[9], peer[10]), (0xff, 0x7f, 3));
    let mut ready = vec![5u8];
    ready.extend_from_slice(b"READY");
    ready.push(11);
    ready.extend_from_slice(b"Socket-Type");
    ready.extend_from_slice(&6u32.to_be_bytes());
    ready.extend_from_slice(b"DEALER");
    let mut cmd = Vec::new();
    frame(&mut cmd, 4, &ready);
    s.write_all(&cmd).await.expect("ready");
    // The server's READY: a short command.
    let mut h = [0u8; 2];
    s.read_exact(&mut h).await.expect("ready header");
    assert_eq!(h[0], 4);
    let mut body = vec![0u8; h[1] as usize];
    s.read_exact(&mut body).await.expect("ready body");
    assert!(body.windows(6).any(|w| w == b"ROUTER"));
    s
}

/// Reads one multipart message (short and long frames).
async fn read_message(s: &mut TcpStream) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    loop {
        let flags = tokio::time::timeout(LONG, s.read_u8()).await.expect("in time").expect("flags");
        let len = if flags & 2 != 0 { s.read_u64().await.expect("len") as usize } else { s.read_u8().await.expect("len") as usize };
        let mut b = vec![0u8; len];
        s.read_exact(&mut b).await.expect("body");
        if flags & 4 != 0 {
            continue;
        }
        frames.push(b);
        if flags & 1 == 0 {
            return frames;
        }
    }
}

fn text(frames: &[Vec<u8>]) -> Vec<String> {
    frames.iter().map(|f| String::from_utf8_lossy(f).into_owned()).collect()
}

#[tokio::test]
async fn malformed_frames_get_an_error_reply_and_the_connection_keeps_serving() {
    let srv = ZmqServer::bind(any_port(), test_handler, ZmqServerConfig::default().max_message_size(64 * 1024)).await.expect("bind");
    let mut s = raw_dealer(srv.local_addr()).await;
    // Missing frames.
    s.write_all(&message(&[b"r1", b"key"])).await.expect("send");
    let r = text(&read_message(&mut s).await);
    assert_eq!(r[0], "r1");
    assert!(r[1].starts_with("ERR_BAD_FRAMES"), "{r:?}");
    assert_eq!(r[2], "null");
    // Extra frames (many: past what is kept, they are skipped).
    let many: Vec<&[u8]> = std::iter::repeat_n(b"x".as_slice(), 1000).collect();
    let mut m = vec![b"r2".as_slice(), b"key", b"1"];
    m.extend(many);
    s.write_all(&message(&m)).await.expect("send");
    let r = text(&read_message(&mut s).await);
    assert!(r[0] == "r2" && r[1].starts_with("ERR_BAD_FRAMES"), "{r:?}");
    // A payload that is not JSON; a key that is not UTF-8.
    s.write_all(&message(&[b"r3", b"key", b"{nope"])).await.expect("send");
    let r = text(&read_message(&mut s).await);
    assert!(r[0] == "r3" && r[1].starts_with("ERR_DECODE"), "{r:?}");
    s.write_all(&message(&[b"r4", b"\xff\xfe", b"1"])).await.expect("send");
    let r = text(&read_message(&mut s).await);
    assert!(r[0] == "r4" && r[1].starts_with("ERR_DECODE"), "{r:?}");
    // Still serving on the same connection.
    s.write_all(&message(&[b"r5", b"key", b"\"hello\""])).await.expect("send");
    assert_eq!(text(&read_message(&mut s).await), vec!["r5", "", "\"world\""]);
    // A PING gets its PONG.
    let mut ping = Vec::new();
    frame(&mut ping, 4, b"\x04PING\x00\x00abc");
    s.write_all(&ping).await.expect("ping");
    let flags = s.read_u8().await.expect("pong flags");
    let len = s.read_u8().await.expect("pong len");
    let mut b = vec![0u8; len as usize];
    s.read_exact(&mut b).await.expect("pong");
    assert_eq!((flags, &b[..]), (4, b"\x04PONGabc".as_slice()));
    // Oversized: a frame header announcing an exabyte closes this connection, nothing else
    // (after the closing notice: a reply with an empty rid saying nothing unanswered ran).
    let mut big = Vec::new();
    big.push(2);
    big.extend_from_slice(&(1u64 << 60).to_be_bytes());
    s.write_all(&big).await.expect("send");
    assert_eq!(text(&read_message(&mut s).await), vec!["", "ERR_TRANSPORT_DRAINING", "null"]);
    let mut rest = Vec::new();
    let n = tokio::time::timeout(LONG, s.read_to_end(&mut rest)).await.expect("closed in time");
    assert!(n.is_ok() && rest.is_empty(), "closed after the notice");
    // A peer that vanishes in the middle of a message, and one that sends garbage.
    let mut half = raw_dealer(srv.local_addr()).await;
    half.write_all(&message(&[b"r6", b"key", b"\"hello\""])[..6]).await.expect("half");
    drop(half);
    let mut junk = TcpStream::connect(srv.local_addr()).await.expect("connect");
    junk.write_all(b"GET / HTTP/1.1\r\n\r\n").await.expect("junk");
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(LONG, junk.read_to_end(&mut rest)).await.expect("junk connection closed");
    // The server serves new clients.
    let c = ZmqClient::default();
    assert_eq!(c.send(&srv.local_addr().to_string(), out(json!("hello"), Some(LONG))).await.expect("served"), json!("world"));
}

#[tokio::test]
async fn a_client_that_vanishes_mid_reply_leaves_the_server_serving() {
    // Big replies to a client that closes before reading them.
    let srv = ZmqServer::bind(
        any_port(),
        |req: Request, reply: Reply| {
            if req.payload == json!("big") { reply.ok(json!("x".repeat(4 << 20))) } else { reply.ok(req.payload.into_value()) }
        },
        ZmqServerConfig::default(),
    )
    .await
    .expect("bind");
    for _ in 0..3 {
        let mut s = raw_dealer(srv.local_addr()).await;
        for i in 0..4 {
            let rid = format!("r{i}");
            s.write_all(&message(&[rid.as_bytes(), b"k", b"\"big\""])).await.expect("send");
        }
        let mut first = [0u8; 16];
        s.read_exact(&mut first).await.expect("reply started");
        drop(s);
    }
    let c = ZmqClient::default();
    assert_eq!(c.send(&srv.local_addr().to_string(), out(json!(7), Some(LONG))).await.expect("served"), json!(7));
    let deadline = tokio::time::Instant::now() + LONG;
    while srv.connections() > 1 {
        assert!(tokio::time::Instant::now() < deadline, "connections of vanished clients linger: {}", srv.connections());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_wrong_socket_type_or_a_reply_too_large_is_refused() {
    // A PUB peer is refused with an ERROR command during the handshake.
    let srv = server().await;
    let mut s = TcpStream::connect(srv.local_addr()).await.expect("connect");
    let mut g = [0u8; 64];
    g[0] = 0xff;
    g[9] = 0x7f;
    g[10] = 3;
    g[12..16].copy_from_slice(b"NULL");
    s.write_all(&g).await.expect("greeting");
    let mut ready = vec![5u8];
    ready.extend_from_slice(b"READY\x0bSocket-Type\x00\x00\x00\x03PUB");
    let mut cmd = Vec::new();
    frame(&mut cmd, 4, &ready);
    s.write_all(&cmd).await.expect("ready");
    let mut all = Vec::new();
    let _ = tokio::time::timeout(LONG, s.read_to_end(&mut all)).await.expect("closed");
    assert!(all.windows(5).any(|w| w == b"ERROR"), "an ERROR command before the close");
    // A client with a small message limit fails a large reply instead of buffering it.
    let c = ZmqClient::new(ZmqClientConfig::default().max_message_size(4096));
    let e = c.send(&srv.local_addr().to_string(), out(json!("y".repeat(10_000)), Some(LONG))).await.expect_err("too large");
    assert_eq!(e.kind(), ErrorKind::Closed, "{e}");
    assert!(e.message().contains("over the limit"), "{e}");
}

#[tokio::test]
async fn a_client_that_never_reads_replies_is_held_back_and_others_are_served() {
    // Replies of 64 KiB to a client that sends and never reads: past the high-water mark the
    // server stops reading it (its writes stall in TCP), instead of queueing replies without end.
    let srv = ZmqServer::bind(any_port(), test_handler, ZmqServerConfig::default().send_hwm(8).max_in_flight_per_connection(8))
        .await
        .expect("bind");
    let mut s = raw_dealer(srv.local_addr()).await;
    let payload = serde_json::to_vec(&json!("p".repeat(64 * 1024))).expect("json");
    let (written_tx, written) = tokio::sync::watch::channel(0usize);
    let flood = tokio::spawn(async move {
        for i in 0..20_000usize {
            let rid = format!("f{i}");
            if s.write_all(&message(&[rid.as_bytes(), b"k", &payload])).await.is_err() {
                return;
            }
            written_tx.send_replace(i + 1);
        }
    });
    // The flood stalls well before its 1.3 GB of requests are written.
    let mut last = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = *written.borrow();
        if now == last {
            break;
        }
        assert!(now < 20_000, "the server read everything a non-reading client sent");
        last = now;
    }
    assert!(!flood.is_finished());
    // Another client is served meanwhile.
    let c = ZmqClient::default();
    assert_eq!(c.send(&srv.local_addr().to_string(), out(json!("hello"), Some(LONG))).await.expect("served"), json!("world"));
    flood.abort();
}

// --- PUB/SUB ---

mod pubsub {
    use super::*;
    use grenache::pubsub::{PeerPub, PeerSub, PubConfig, SlowSubscriberPolicy, SubConfig};

    fn pub_config() -> PubConfig {
        PubConfig::default().transport(TransportKind::Zmq)
    }

    fn sub_config() -> SubConfig {
        SubConfig::default()
            .transport(TransportKind::Zmq)
            .relookup_interval(Duration::from_millis(200))
            .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(200))
    }

    #[tokio::test]
    async fn fan_out_and_subscribers_follow_publishers_through_the_dht() {
        let (_net, link) = testnet_link().await;
        let p1 = PeerPub::bind(any_port(), pub_config()).await.expect("bind");
        p1.start_announcing(&link, "zmq_feed", Duration::from_secs(1)).first_result(LONG).await.expect("announce");
        wait_lookup(&link, "zmq_feed", 1).await;
        let subs: Vec<_> = (0..3).map(|_| PeerSub::new(link.clone(), sub_config()).sub("zmq_feed")).collect();
        p1.wait_subscribers(3, LONG).await.expect("3 subscribers");
        assert_eq!(p1.publish("one"), 3);
        p1.publish_binary(vec![0xffu8, 0, 1]);
        for mut s in subs {
            let m = s.recv_timeout(LONG).await.expect("one");
            assert_eq!((m.text(), m.binary, &*m.publisher), (Some("one"), false, p1.local_addr().to_string().as_str()));
            let m = s.recv_timeout(LONG).await.expect("binary");
            assert_eq!((&m.data[..], m.binary), (&[0xffu8, 0, 1][..], true));
        }
        // A second publisher appears: the subscription picks it up; the first goes away and comes
        // back on the same port: the subscription reconnects and resubscribes.
        let mut sub = PeerSub::new(link.clone(), sub_config()).sub("zmq_feed");
        p1.wait_subscribers(1, LONG).await.expect("sub on p1");
        let p2 = PeerPub::bind(any_port(), pub_config()).await.expect("bind 2");
        p2.start_announcing(&link, "zmq_feed", Duration::from_secs(1)).first_result(LONG).await.expect("announce 2");
        sub.wait_publishers(2, LONG).await.expect("both publishers");
        p2.wait_subscribers(1, LONG).await.expect("sub on p2");
        p2.publish("from p2");
        assert_eq!(sub.recv_timeout(LONG).await.expect("p2").text(), Some("from p2"));
        let addr1 = p1.local_addr();
        drop(p1);
        // The old listener closes in its task: retry the bind for a moment.
        let mut tries = 0;
        let p1 = loop {
            match PeerPub::bind(addr1, pub_config()).await {
                Ok(p) => break p,
                Err(e) if tries < 100 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("rebind: {e}"),
            }
        };
        p1.wait_subscribers(1, LONG).await.expect("resubscribed");
        p1.publish("back");
        assert_eq!(sub.recv_timeout(LONG).await.expect("back").text(), Some("back"));
        assert!(sub.connects() >= 3, "{}", sub.connects());
    }

    #[tokio::test]
    async fn a_slow_subscriber_is_dropped_and_the_others_keep_up() {
        let p = PeerPub::bind(any_port(), pub_config().queue_capacity(16).slow_subscriber_policy(SlowSubscriberPolicy::Disconnect))
            .await
            .expect("bind");
        let addr = p.local_addr();
        // A raw SUB that subscribes and never reads.
        let mut slow = TcpStream::connect(addr).await.expect("connect");
        let mut g = [0u8; 64];
        g[0] = 0xff;
        g[9] = 0x7f;
        g[10] = 3;
        g[12..16].copy_from_slice(b"NULL");
        slow.write_all(&g).await.expect("greeting");
        let mut ready = vec![5u8];
        ready.extend_from_slice(b"READY\x0bSocket-Type\x00\x00\x00\x03SUB");
        let mut cmd = Vec::new();
        frame(&mut cmd, 4, &ready);
        cmd.extend_from_slice(&message(&[b"\x01"]));
        slow.write_all(&cmd).await.expect("ready + subscribe");
        let mut fast = PeerSub::sub_to(vec![addr.to_string()], sub_config());
        p.wait_subscribers(2, LONG).await.expect("two subscribers");
        let big = "z".repeat(64 * 1024);
        let mut got = 0;
        // Paced by the fast subscriber, which is never behind by more than one message.
        for _ in 0..5000 {
            p.publish(big.clone());
            fast.recv_timeout(LONG).await.expect("fast receives each message");
            got += 1;
            if p.stats().kicked > 0 {
                break;
            }
        }
        assert_eq!(p.stats().kicked, 1, "the slow subscriber was disconnected");
        p.wait_subscribers(1, LONG).await.expect("the fast one stays");
        assert_eq!(p.subscribers(), 1);
        p.publish("last");
        loop {
            let m = fast.recv_timeout(LONG).await.expect("fast keeps receiving");
            got += 1;
            if m.text() == Some("last") {
                break;
            }
        }
        assert!(got > 1);
        drop(slow);
    }
}
