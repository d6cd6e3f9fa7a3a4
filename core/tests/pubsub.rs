//! PUB/SUB over WebSocket without a Grape (fixed publisher addresses): delivery, restarts,
//! 1,000 subscribers, slow-subscriber policies, TLS. 127.0.0.1 only, OS-picked ports.

use grenache_test_certs as tls_certs;

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

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + LONG;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
    let p = PeerPub::bind(
        any_port(),
        PubConfig::default().queue_capacity(8).slow_subscriber_policy(SlowSubscriberPolicy::DropOldest),
    )
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
        PubConfig::default().tls(server).verify_client(verify_client(|c| c.cert.and_then(|c| c.subject_cn()).as_deref() == Some("client1"))),
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
    let p = PeerPub::bind(any_port(), PubConfig::default().max_subscribers(usize::MAX).queue_capacity(usize::MAX).max_message_size(usize::MAX))
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
