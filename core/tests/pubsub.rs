//! PUB/SUB over WebSocket without a Grape (fixed publisher addresses): delivery, restarts,
//! 1,000 subscribers, slow-subscriber policies, TLS. 127.0.0.1 only, OS-picked ports.

use grenache_test_certs as tls_certs;

mod support;
use support::{eventually, raw_frame, read_frame};

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use grenache::pubsub::{PeerPub, PeerSub, PubConfig, SlowSubscriberPolicy, SubConfig};
use grenache::tls::{ClientAuth, ClientTls, ServerTls, verify_client};
use tokio_tungstenite::tungstenite::Message;

const LONG: Duration = Duration::from_secs(30);

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().expect("addr")
}

#[tokio::test]
async fn pubsub_every_subscriber_gets_every_message() {
    let p = PeerPub::bind(any_port(), PubConfig::default()).await.expect("bind");
    let dest = p.local_addr().to_string();
    let mut subs: Vec<_> = (0..3).map(|_| PeerSub::sub_to(vec![dest.clone()], SubConfig::default())).collect();
    p.wait_subscribers(3, LONG).await.expect("3 subscribers");
    for i in 0..100 {
        p.publish(format!("{{\"seq\":{i}}}"));
    }
    p.publish_binary(vec![1u8, 2, 3]);
    for s in &mut subs {
        for i in 0..100 {
            let m = s.recv_timeout(LONG).await.expect("message");
            assert_eq!(m.text(), Some(format!("{{\"seq\":{i}}}").as_str()));
            assert!(!m.binary);
            assert_eq!(&*m.publisher, dest.as_str());
        }
        let m = s.recv_timeout(LONG).await.expect("binary");
        assert!(m.binary);
        assert_eq!(&m.data[..], &[1, 2, 3]);
    }
}

#[tokio::test]
async fn pubsub_subscriber_resumes_after_publisher_restart() {
    let p = PeerPub::bind(any_port(), PubConfig::default()).await.expect("bind");
    let addr = p.local_addr();
    let mut sub = PeerSub::sub_to(
        vec![addr.to_string()],
        SubConfig::default().reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200)),
    );
    sub.wait_publishers(1, LONG).await.expect("connected");
    p.publish("before");
    assert_eq!(sub.recv_timeout(LONG).await.expect("msg").text(), Some("before"));
    // Kill the publisher mid-stream, bring it back on the same port.
    p.close();
    drop(p);
    eventually("disconnect seen", || sub.publishers() == 0).await;
    let p2 = PeerPub::bind(addr, PubConfig::default()).await.expect("rebind");
    p2.wait_subscribers(1, LONG).await.expect("subscriber came back");
    p2.publish("after");
    assert_eq!(sub.recv_timeout(LONG).await.expect("msg").text(), Some("after"));
    assert!(sub.connects() >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_1000_concurrent_subscribers_on_one_publisher() {
    let p = PeerPub::bind(any_port(), PubConfig::default()).await.expect("bind");
    let dest = p.local_addr().to_string();
    let mut subs: Vec<_> = (0..1000).map(|_| PeerSub::sub_to(vec![dest.clone()], SubConfig::default())).collect();
    p.wait_subscribers(1000, Duration::from_secs(60)).await.expect("1000 subscribers");
    for i in 0..10 {
        assert_eq!(p.publish(format!("m{i}")), 1000);
    }
    for s in &mut subs {
        for i in 0..10 {
            assert_eq!(s.recv_timeout(LONG).await.expect("message").text(), Some(format!("m{i}").as_str()));
        }
    }
    assert_eq!(p.stats().kicked, 0);
    drop(subs);
    eventually("all gone", || p.subscribers() == 0).await;
}

/// A raw subscriber that connects and then never reads.
async fn stalled_subscriber(addr: SocketAddr) -> impl Drop {
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws")).await.expect("connect");
    struct Hold<T>(#[allow(dead_code)] T);
    impl<T> Drop for Hold<T> {
        fn drop(&mut self) {}
    }
    Hold(ws)
}

#[tokio::test]
async fn pubsub_slow_subscriber_is_disconnected_and_others_unaffected() {
    let p = PeerPub::bind(any_port(), PubConfig::default().queue_capacity(16)).await.expect("bind");
    let addr = p.local_addr();
    let _stalled = stalled_subscriber(addr).await;
    let mut fast = PeerSub::sub_to(vec![addr.to_string()], SubConfig::default().buffer(100_000));
    p.wait_subscribers(2, LONG).await.expect("2 subscribers");
    let big = "x".repeat(64 * 1024);
    // Publish up to ~128 MiB, one message at a time, each read by the fast subscriber before the
    // next: the stalled socket's TCP buffers fill, then its 16-message queue, and it is kicked.
    for i in 0..2000 {
        p.publish(big.clone());
        let m = fast.recv_timeout(LONG).await.expect("fast subscriber keeps receiving");
        assert_eq!(m.data.len(), big.len());
        if p.stats().kicked >= 1 && i >= 200 {
            break;
        }
    }
    assert_eq!(p.stats().kicked, 1, "exactly the stalled subscriber was kicked");
    assert_eq!(fast.connects(), 1, "the fast subscriber never reconnected");
    eventually("one subscriber left", || p.subscribers() == 1).await;
}

#[tokio::test]
async fn pubsub_drop_oldest_policy_keeps_slow_subscriber_connected() {
    let p = PeerPub::bind(any_port(), PubConfig::default().queue_capacity(8).slow_subscriber_policy(SlowSubscriberPolicy::DropOldest))
        .await
        .expect("bind");
    let addr = p.local_addr();
    let _stalled = stalled_subscriber(addr).await;
    p.wait_subscribers(1, LONG).await.expect("subscriber");
    let big = "y".repeat(64 * 1024);
    let deadline = Instant::now() + LONG;
    while p.stats().dropped == 0 {
        assert!(Instant::now() < deadline, "nothing dropped");
        for _ in 0..50 {
            p.publish(big.clone());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(p.subscribers(), 1, "still connected");
    assert_eq!(p.stats().kicked, 0);
}

#[tokio::test]
async fn pubsub_closing_a_subscription_closes_its_socket() {
    let p = PeerPub::bind(any_port(), PubConfig::default()).await.expect("bind");
    let s = PeerSub::sub_to(vec![p.local_addr().to_string()], SubConfig::default());
    p.wait_subscribers(1, LONG).await.expect("sub");
    s.close();
    eventually("socket closed", || p.subscribers() == 0).await;
    let mut s = s;
    assert!(s.next().await.is_none());
}

#[tokio::test]
async fn pubsub_over_tls_with_client_certificate() {
    let pki = tls_certs::RcgenCa::pki("pubsub-ca");
    let server = ServerTls::builder(pki.server.cert_pem.clone(), pki.server.key_pem.clone())
        .client_ca_pem(pki.ca.cert_pem.clone())
        .client_auth(ClientAuth::Required)
        .build()
        .expect("tls");
    let p = PeerPub::bind(
        any_port(),
        PubConfig::default()
            .tls(server)
            .verify_client(verify_client(|c| c.cert.and_then(|c| c.subject_cn()).as_deref() == Some("client1"))),
    )
    .await
    .expect("bind");
    let client = |ck: &tls_certs::CertKey| {
        ClientTls::builder().ca_pem(pki.ca.cert_pem.clone()).client_cert_pem(ck.cert_pem.clone(), ck.key_pem.clone()).build().expect("tls")
    };
    let mut good = PeerSub::sub_to(vec![p.local_addr().to_string()], SubConfig::default().tls(client(&pki.client)));
    let refused = PeerSub::sub_to(vec![p.local_addr().to_string()], SubConfig::default().tls(client(&pki.client2)));
    p.wait_subscribers(1, LONG).await.expect("good subscriber");
    p.publish("secret");
    assert_eq!(good.recv_timeout(LONG).await.expect("msg").text(), Some("secret"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(refused.publishers(), 0);
    assert_eq!(p.subscribers(), 1);
}

#[tokio::test]
async fn pubsub_subscribers_send_nothing_and_raw_clients_get_text_frames() {
    let p = PeerPub::bind(any_port(), PubConfig::default()).await.expect("bind");
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/any/path", p.local_addr())).await.expect("connect");
    p.wait_subscribers(1, LONG).await.expect("sub");
    p.publish("world");
    let m = tokio::time::timeout(LONG, ws.next()).await.expect("in time").expect("frame").expect("ok");
    assert_eq!(m, Message::text("world"));
}

#[tokio::test]
async fn pubsub_extreme_settings_do_not_panic() {
    let p =
        PeerPub::bind(any_port(), PubConfig::default().max_subscribers(usize::MAX).queue_capacity(usize::MAX).max_message_size(usize::MAX))
            .await
            .expect("bind");
    let mut s = PeerSub::sub_to(
        vec![p.local_addr().to_string(), "127.0.0.1:1".to_string()],
        SubConfig::default()
            .reconnect_backoff(Duration::from_millis(1), Duration::MAX)
            .relookup_interval(Duration::MAX)
            .lookup_timeout(Duration::MAX)
            .connect_timeout(Duration::MAX)
            .buffer(0)
            .max_message_size(usize::MAX)
            .max_publishers(usize::MAX),
    );
    p.wait_subscribers(1, LONG).await.expect("sub");
    p.publish("x");
    assert_eq!(s.recv_timeout(LONG).await.expect("msg").text(), Some("x"));
    // The unreachable publisher keeps being retried with growing back-off, without overflow.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(s.publishers(), 1);
}

// ---------------------------------------------------------------------------------------------
// The framing, byte by byte: hand-made frames from a raw subscriber and a raw publisher.
// ---------------------------------------------------------------------------------------------

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const KEY: [u8; 4] = [0x12, 0x34, 0x56, 0x78];

/// Reads frames until a close frame: its status code (`Some(None)` for a close with none);
/// `None` when the stream ends first.
async fn read_close(s: &mut TcpStream) -> Option<Option<u16>> {
    while let Some(f) = read_frame(s).await {
        if f.op == 0x8 {
            return Some((f.payload.len() >= 2).then(|| u16::from_be_bytes([f.payload[0], f.payload[1]])));
        }
    }
    None
}

/// True when the peer closes the TCP stream (after whatever it still sends) in time.
async fn reaches_eof(s: &mut TcpStream) -> bool {
    let mut sink = Vec::new();
    matches!(tokio::time::timeout(LONG, s.read_to_end(&mut sink)).await, Ok(Ok(_)))
}

/// A subscriber speaking WebSocket by hand: the upgrade, then raw frames.
async fn raw_subscriber(addr: SocketAddr) -> TcpStream {
    support::handshake(addr).await
}

#[tokio::test]
async fn pubsub_subscriber_violations_close_that_socket_with_the_reason_and_others_keep_receiving() {
    let p = PeerPub::bind(any_port(), PubConfig::default().max_message_size(1024)).await.expect("bind");
    let addr = p.local_addr();
    let mut good = PeerSub::sub_to(vec![addr.to_string()], SubConfig::default());
    p.wait_subscribers(1, LONG).await.expect("good subscriber");
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("an unmasked frame", raw_frame(true, 0x1, b"hi", None), 1002),
        ("a message over max_message_size", raw_frame(true, 0x2, &[7u8; 2000], Some(KEY)), 1009),
        (
            "fragments over max_message_size",
            [raw_frame(false, 0x2, &[7u8; 800], Some(KEY)), raw_frame(true, 0x0, &[7u8; 800], Some(KEY))].concat(),
            1009,
        ),
        (
            "a new message inside a fragmented one",
            [raw_frame(false, 0x1, b"a", Some(KEY)), raw_frame(true, 0x1, b"b", Some(KEY))].concat(),
            1002,
        ),
        ("a continuation with nothing to continue", raw_frame(true, 0x0, b"x", Some(KEY)), 1002),
        ("reserved bits", vec![0xC1, 0x80, 0, 0, 0, 0], 1002),
        ("a fragmented ping", raw_frame(false, 0x9, b"p", Some(KEY)), 1002),
        ("text that is not UTF-8", raw_frame(true, 0x1, b"\xFF\xFE", Some(KEY)), 1007),
    ];
    for (i, (what, bytes, code)) in cases.into_iter().enumerate() {
        let mut raw = raw_subscriber(addr).await;
        p.wait_subscribers(2, LONG).await.expect("raw subscriber counted");
        raw.write_all(&bytes).await.expect("write");
        assert_eq!(read_close(&mut raw).await, Some(Some(code)), "{what}");
        assert!(reaches_eof(&mut raw).await, "{what}: the publisher closes the socket");
        eventually(what, || p.subscribers() == 1).await;
        // The publisher keeps serving the others.
        assert_eq!(p.publish(format!("after {i}")), 1);
        assert_eq!(good.recv_timeout(LONG).await.expect("message").text(), Some(format!("after {i}").as_str()), "{what}");
    }
    assert_eq!(good.connects(), 1);
    assert_eq!(p.stats().kicked, 0);
}

#[tokio::test]
async fn pubsub_publisher_answers_pings_ignores_messages_and_echoes_a_close() {
    let p = PeerPub::bind(any_port(), PubConfig::default()).await.expect("bind");
    let mut raw = raw_subscriber(p.local_addr()).await;
    p.wait_subscribers(1, LONG).await.expect("subscribed");
    // A fragmented message (ignored: subscribers send nothing that matters) around a ping.
    let mut bytes = raw_frame(false, 0x1, b"ignored ", Some(KEY));
    bytes.extend(raw_frame(true, 0x9, b"are you there", Some(KEY)));
    bytes.extend(raw_frame(true, 0x0, b"message", Some(KEY)));
    raw.write_all(&bytes).await.expect("write");
    let pong = read_frame(&mut raw).await.expect("pong");
    assert_eq!((pong.fin, pong.op, pong.masked), (true, 0xA, false));
    assert_eq!(pong.payload, b"are you there");
    // Messages go out as unmasked text frames (binary for `publish_binary`), large ones too.
    let big = "z".repeat(70_000);
    assert_eq!(p.publish("world"), 1);
    assert_eq!(p.publish(big.clone()), 1);
    assert_eq!(p.publish_binary(vec![0u8, 159]), 1);
    for (op, want) in [(0x1, b"world".to_vec()), (0x1, big.into_bytes()), (0x2, vec![0, 159])] {
        let f = read_frame(&mut raw).await.expect("message");
        assert_eq!((f.fin, f.op, f.masked), (true, op, false));
        assert_eq!(f.payload, want);
    }
    // A close is answered with the same code, then the socket ends.
    raw.write_all(&raw_frame(true, 0x8, &[0x03, 0xE8], Some(KEY))).await.expect("write");
    assert_eq!(read_close(&mut raw).await, Some(Some(1000)));
    assert!(reaches_eof(&mut raw).await);
    eventually("subscriber gone", || p.subscribers() == 0).await;
}

#[tokio::test]
async fn pubsub_closing_a_publisher_sends_going_away() {
    let p = PeerPub::bind(any_port(), PubConfig::default()).await.expect("bind");
    let mut raw = raw_subscriber(p.local_addr()).await;
    p.wait_subscribers(1, LONG).await.expect("subscribed");
    p.close();
    assert_eq!(read_close(&mut raw).await, Some(Some(1001)));
    assert!(reaches_eof(&mut raw).await);
}

/// A publisher speaking WebSocket by hand: accepts one subscriber and answers its upgrade.
async fn accept_raw_subscriber(l: &TcpListener) -> TcpStream {
    let (mut s, _) = tokio::time::timeout(LONG, l.accept()).await.expect("subscriber in time").expect("accept");
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tokio::time::timeout(LONG, s.read_exact(&mut b)).await.expect("head in time").expect("head");
        head.push(b[0]);
    }
    let head = String::from_utf8(head).expect("utf-8 head");
    assert!(head.starts_with("GET /ws HTTP/1.1\r\n"), "{head}");
    let key = head
        .lines()
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("sec-websocket-key")).map(|(_, v)| v.trim().to_string()))
        .expect("a key");
    // tungstenite's accept key: an implementation independent of ours.
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    s.write_all(
        format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n")
            .as_bytes(),
    )
    .await
    .expect("write");
    s
}

#[tokio::test]
async fn pubsub_subscriber_reassembles_answers_pings_and_closes_on_publisher_violations() {
    let l = TcpListener::bind(any_port()).await.expect("bind");
    let mut sub = PeerSub::sub_to(
        vec![l.local_addr().expect("addr").to_string()],
        SubConfig::default().max_message_size(1024).reconnect_backoff(Duration::from_millis(10), Duration::from_millis(50)),
    );
    // A fragmented text message with a ping between its fragments; a binary one.
    let mut c = accept_raw_subscriber(&l).await;
    let mut bytes = raw_frame(false, 0x1, b"hel", None);
    bytes.extend(raw_frame(true, 0x9, b"ping!", None));
    bytes.extend(raw_frame(true, 0x0, b"lo", None));
    bytes.extend(raw_frame(true, 0x2, &[1, 2, 3], None));
    c.write_all(&bytes).await.expect("write");
    let pong = read_frame(&mut c).await.expect("pong");
    assert_eq!((pong.fin, pong.op, pong.masked), (true, 0xA, true), "{pong:?}");
    assert_eq!(pong.payload, b"ping!");
    let m = sub.recv_timeout(LONG).await.expect("reassembled");
    assert_eq!((m.text(), m.binary), (Some("hello"), false));
    let m = sub.recv_timeout(LONG).await.expect("binary");
    assert_eq!((&m.data[..], m.binary), (&[1u8, 2, 3][..], true));

    // Each violation closes the socket with the reason (a masked close frame), then the
    // subscriber reconnects.
    for (what, bad, code) in [
        ("a masked server frame", raw_frame(true, 0x1, b"x", Some(KEY)), 1002u16),
        ("a message over max_message_size", raw_frame(true, 0x1, &[b'a'; 2000], None), 1009),
        ("text that is not UTF-8", raw_frame(true, 0x1, b"\xC3", None), 1007),
        ("a close code a peer may not send", raw_frame(true, 0x8, &1005u16.to_be_bytes(), None), 1002),
    ] {
        c.write_all(&bad).await.expect("write");
        let f = read_frame(&mut c).await.expect("close frame");
        assert_eq!((f.op, f.masked), (0x8, true), "{what}: {f:?}");
        assert_eq!(u16::from_be_bytes([f.payload[0], f.payload[1]]), code, "{what}");
        assert!(reaches_eof(&mut c).await, "{what}");
        c = accept_raw_subscriber(&l).await;
    }
    c.write_all(&raw_frame(true, 0x1, b"after", None)).await.expect("write");
    assert_eq!(sub.recv_timeout(LONG).await.expect("after reconnecting").text(), Some("after"));
    assert_eq!(sub.connects(), 5);

    // A publisher's close is answered with its code; closing the subscription sends 1000.
    c.write_all(&raw_frame(true, 0x8, &1001u16.to_be_bytes(), None)).await.expect("write");
    assert_eq!(read_close(&mut c).await, Some(Some(1001)));
    let mut c = accept_raw_subscriber(&l).await;
    sub.wait_publishers(1, LONG).await.expect("reconnected");
    sub.close();
    let f = read_frame(&mut c).await.expect("close frame");
    assert_eq!((f.op, f.masked, &f.payload[..2]), (0x8, true, &1000u16.to_be_bytes()[..]));
    assert!(reaches_eof(&mut c).await);
}
