//! uTP RPC transport and hole punching on loopback: round trips, map/failover through Grapes,
//! large payloads, many in flight, shutdown, punches, and bad input on the shared UDP socket.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use grenache::ErrorKind;
use grenache::grape::Testnet;
use grenache::link::Link;
use grenache::rpc::{
    ClientTransport, OutgoingRequest, PeerRpcClient, PeerRpcClientConfig, PeerRpcServer, Reply, Request, RequestOptions, ServerTransport,
    TransportKind,
};
use grenache::transport::utp::{LEGACY_PUNCH, PunchEvent, UtpClient, UtpClientConfig, UtpNode, UtpServer, UtpServerConfig};
use serde_json::{Value, json};

mod support;

const LONG: Duration = Duration::from_secs(20);

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().expect("addr")
}

/// Requests with "sleep" the handler has received (in every test of this file).
static SLEEPING: AtomicUsize = AtomicUsize::new(0);

/// "hello" → "world"; "fail" → ERR_BOOM; "who" → the caller's address; {"sleep":ms,"v":x} → x
/// after ms; anything else is echoed.
fn handler(req: Request, reply: Reply) {
    match req.payload.value() {
        Value::String(s) if s == "hello" => reply.ok(json!("world")),
        Value::String(s) if s == "fail" => reply.err("ERR_BOOM"),
        Value::String(s) if s == "who" => {
            assert_eq!(req.info.transport, TransportKind::Utp);
            reply.ok(json!(req.info.remote_addr.map(|a| a.to_string())))
        }
        Value::Object(o) if o.contains_key("sleep") => {
            let ms = o.get("sleep").and_then(Value::as_u64).unwrap_or(0);
            let v = o.get("v").cloned().unwrap_or(Value::Null);
            SLEEPING.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                reply.ok(v);
            });
        }
        other => reply.ok(other.clone()),
    }
}

fn out(payload: &Value, timeout: Duration) -> OutgoingRequest {
    OutgoingRequest {
        rid: grenache::rpc::new_rid(),
        key: Arc::from("rpc_utp_test"),
        payload_json: Arc::from(payload.to_string()),
        timeout: Some(timeout),
        compress: false,
    }
}

async fn server() -> UtpServer {
    UtpServer::bind(loopback(), Arc::new(handler), UtpServerConfig::default()).await.expect("bind")
}

#[tokio::test]
async fn request_reply_errors_and_the_callers_address() {
    let s = server().await;
    let dest = s.local_addr().to_string();
    let node = UtpNode::bind(loopback()).await.expect("node");
    let c = UtpClient::with_node(node.clone(), UtpClientConfig::default());
    assert_eq!(c.request(&dest, out(&json!("hello"), LONG)).await.expect("reply"), json!("world"));
    let e = c.request(&dest, out(&json!("fail"), LONG)).await.expect_err("remote error");
    assert_eq!((e.kind(), e.message()), (ErrorKind::Remote, "ERR_BOOM"));
    // The handler sees the client's node address (the one its NAT would map).
    assert_eq!(c.request(&dest, out(&json!("who"), LONG)).await.expect("who"), json!(node.local_addr().to_string()));
    // The raw form is the text as sent.
    let raw = c.request_raw(&dest, out(&json!({"a": [1, "é"]}), LONG)).await.expect("raw");
    assert_eq!(raw.get(), r#"{"a":[1,"é"]}"#);
    assert_eq!(c.active_connections(&dest), 1);
}

#[tokio::test]
async fn large_payloads_and_many_in_flight() {
    let s = server().await;
    let dest = s.local_addr().to_string();
    let c = UtpClient::new(UtpClientConfig::default());
    let big: String = (0..(1 << 20)).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
    let got = c.request(&dest, out(&json!(big), LONG)).await.expect("1 MB");
    assert_eq!(got.as_str().map(str::len), Some(big.len()));
    assert_eq!(got, json!(big));
    // 100 at once, answered out of order, each with its own result.
    let futs = (0..100u64).map(|i| c.request(&dest, out(&json!({"sleep": (100 - i) % 7, "v": i}), LONG)));
    let results = futures_util::future::join_all(futs).await;
    for (i, r) in results.into_iter().enumerate() {
        assert_eq!(r.expect("reply"), json!(i));
    }
}

#[tokio::test]
async fn timeouts_and_a_dead_destination() {
    let s = server().await;
    let c = UtpClient::new(UtpClientConfig { connect_timeout: Duration::from_millis(800), ..Default::default() });
    let t0 = Instant::now();
    let e = c.request(&s.local_addr().to_string(), out(&json!({"sleep": 5000}), Duration::from_millis(300))).await;
    assert_eq!(e.expect_err("timeout").kind(), ErrorKind::Timeout);
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    // Nothing listens there: the connect fails (so a client tries another worker).
    let dead = UtpNode::bind(loopback()).await.expect("node").local_addr();
    let e = c.request(&dead.to_string(), out(&json!("hello"), LONG)).await.expect_err("no server");
    assert_eq!(e.kind(), ErrorKind::Connect, "{e}");
}

#[tokio::test]
async fn graceful_shutdown_answers_what_it_read() {
    let s = server().await;
    let dest = s.local_addr().to_string();
    let c = UtpClient::new(UtpClientConfig::default());
    assert_eq!(c.request(&dest, out(&json!("hello"), LONG)).await.expect("warm"), json!("world"));
    let before = SLEEPING.load(Ordering::SeqCst);
    let slow = c.request(&dest, out(&json!({"sleep": 300, "v": "late"}), LONG));
    let slow = tokio::spawn(slow);
    support::eventually("the slow request in the handler", || SLEEPING.load(Ordering::SeqCst) > before).await;
    assert!(s.drain(Duration::from_secs(5)).await, "finished within the grace");
    assert_eq!(slow.await.expect("join").expect("answered before closing"), json!("late"));
}

#[tokio::test]
async fn peers_through_grapes_request_map_and_failover() {
    let net = Testnet::start(2).await.expect("testnet");
    let mut workers = Vec::new();
    for i in 0..2 {
        let s = server().await;
        let peer = PeerRpcServer::new(Link::with_grape(net.api_url(i)).expect("link"), Arc::new(s));
        peer.announce("rpc_utp").await.expect("announce");
        workers.push(peer);
    }
    // A worker the Grapes still return but that is gone.
    let gone = UtpNode::bind(loopback()).await.expect("node");
    Link::with_grape(net.api_url(0)).expect("link").announce("rpc_utp", gone.local_addr().port()).await.expect("announce");
    drop(gone);
    let link = Link::with_grape(net.api_url(1)).expect("link");
    let deadline = Instant::now() + LONG;
    while link.lookup("rpc_utp").await.map(|l| l.len()).unwrap_or(0) < 3 {
        assert!(Instant::now() < deadline, "announces not visible");
        link.invalidate("rpc_utp");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let transport = Arc::new(UtpClient::new(UtpClientConfig { connect_timeout: Duration::from_millis(500), ..Default::default() }));
    let client = PeerRpcClient::new(link, transport, PeerRpcClientConfig::default());
    let opts = RequestOptions { timeout: Some(LONG), ..Default::default() };
    for _ in 0..6 {
        assert_eq!(client.request("rpc_utp", "hello", &opts).await.expect("failover"), json!("world"));
    }
    let settled = client.map_settled("rpc_utp", "hello", &opts).await.expect("map");
    assert_eq!(settled.iter().filter(|(_, r)| r.as_ref().ok() == Some(&json!("world"))).count(), 2);
    for w in &workers {
        w.stop();
    }
    net.stop().await;
}

#[tokio::test]
async fn punching_both_ways_and_the_timeout() {
    let a = UtpNode::bind(loopback()).await.expect("a");
    let b = UtpNode::bind(loopback()).await.expect("b");
    let mut events = b.subscribe();
    let (ra, rb) = tokio::join!(a.punch(b.local_addr(), LONG), b.punch(a.local_addr(), LONG));
    ra.expect("a reached b");
    rb.expect("b reached a");
    let ev = tokio::time::timeout(LONG, events.recv()).await.expect("event in time").expect("event");
    assert_eq!(ev, PunchEvent::Punched { from: a.local_addr() });
    // One side alone is enough when the other is reachable: the acknowledgement answers.
    a.punch(b.local_addr(), LONG).await.expect("acknowledged");
    // Nobody there: the typed error, on time.
    let silent = tokio::net::UdpSocket::bind(loopback()).await.expect("udp");
    let t0 = Instant::now();
    let e = a.punch(silent.local_addr().expect("addr"), Duration::from_millis(700)).await.expect_err("no answer");
    assert_eq!(e.kind(), ErrorKind::PunchTimeout);
    assert!(t0.elapsed() >= Duration::from_millis(650) && t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    // The silent socket got the legacy punch bytes, whole.
    let mut buf = [0u8; 64];
    let (n, from) = silent.recv_from(&mut buf).await.expect("punch");
    assert_eq!((&buf[..n], from), (&LEGACY_PUNCH[..], a.local_addr()));
}

/// The single punch of a node bound a moment ago goes out: the reference punches once, so a
/// first datagram dropped before the reactor saw the socket writable is a lost introduction. On
/// this single-threaded runtime the reactor does not run between the bind and the send.
#[tokio::test]
async fn the_first_punch_of_a_new_node_goes_out() {
    let b = UtpNode::bind(loopback()).await.expect("b");
    let mut events = b.subscribe();
    let a = UtpNode::bind(loopback()).await.expect("a");
    a.send_punch(b.local_addr()).expect("sent");
    let ev = tokio::time::timeout(LONG, events.recv()).await.expect("the punch arrived in time").expect("event");
    assert_eq!(ev, PunchEvent::Punched { from: a.local_addr() });
}

#[tokio::test]
async fn garbage_truncated_headers_and_a_punch_flood_leave_the_node_serving() {
    let s = server().await;
    let dest = s.local_addr();
    let stranger = tokio::net::UdpSocket::bind(loopback()).await.expect("udp");
    // Garbage, truncated uTP headers (a valid first byte, then too short), a wrong version,
    // unknown control tags, and a broker request from a broker nobody trusts.
    let mut junk: Vec<Vec<u8>> = vec![vec![], vec![0xff; 3], vec![0x41; 19], vec![0x01; 1400], b"\xc3\xbfZ".to_vec()];
    junk.push(b"\xc3\xbfP{\"address\":\"127.0.0.1\",\"port\":9}".to_vec());
    for t in 0..5u8 {
        junk.push(vec![(t << 4) | 1; 10]);
    }
    for _ in 0..50 {
        for j in &junk {
            let _ = stranger.send_to(j, dest).await;
        }
    }
    // A flood of punches: acknowledged up to the per-second budget only.
    for _ in 0..5000 {
        let _ = stranger.send_to(&LEGACY_PUNCH, dest).await;
    }
    let c = UtpClient::new(UtpClientConfig::default());
    assert_eq!(c.request(&dest.to_string(), out(&json!("hello"), LONG)).await.expect("still serving"), json!("world"));
    let stats = s.node().stats();
    assert!(stats.dropped >= 50 * 6, "{stats:?}");
    assert!(stats.punches_received > 0 && stats.acks_suppressed > 0, "{stats:?}");
    // Acknowledgements the stranger got back stay within the budget (500/s by default).
    let mut acks = 0;
    let mut buf = [0u8; 16];
    while let Ok(Ok((n, _))) = tokio::time::timeout(Duration::from_millis(200), stranger.recv_from(&mut buf)).await {
        if buf[..n] == [0xc3, 0xbf, b'A'] {
            acks += 1;
        }
    }
    assert!(acks > 0 && acks <= 1500, "{acks}");
}

#[tokio::test]
async fn a_broker_introduces_a_client_to_the_workers_of_one_service() {
    use grenache::transport::utp::broker::{Broker, BrokerClient, BrokerClientConfig, BrokerConfig};
    let net = Testnet::start(2).await.expect("testnet");
    let config = BrokerConfig { name: "test_broker".into(), ..Default::default() };
    let broker = Broker::start(Link::with_grape(net.api_url(0)).expect("link"), loopback(), config).await.expect("broker");
    let bc = |node: Arc<UtpNode>| {
        let link = Link::with_grape(net.api_url(1)).expect("link");
        BrokerClient::new(link, node, BrokerClientConfig { name: "test_broker".into(), ..Default::default() })
    };
    // Wait until the broker is visible through the second Grape.
    let link = Link::with_grape(net.api_url(1)).expect("link");
    let deadline = Instant::now() + LONG;
    while link.lookup("test_broker").await.is_err() {
        assert!(Instant::now() < deadline, "broker not visible");
        link.invalidate("test_broker");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A worker of the service and one of another service register (not announced in the DHT).
    let worker = server().await;
    let mut worker_events = worker.node().subscribe();
    let you = bc(worker.node().clone()).register("svc_a").await.expect("register");
    assert_eq!(you, worker.local_addr());
    let _reg = bc(worker.node().clone()).keep_registered("svc_a", Duration::from_millis(300)).await.expect("keep");
    let other = server().await;
    bc(other.node().clone()).register("svc_b").await.expect("register");
    assert_eq!(broker.entries(), 2);
    // The client's node asks: only the worker of svc_a comes back, and it is told to punch.
    let cnode = UtpNode::bind(loopback()).await.expect("node");
    let client_bc = bc(cnode.clone());
    assert_eq!(client_bc.lookup("svc_a").await.expect("lookup"), vec![worker.local_addr()]);
    let ev = tokio::time::timeout(LONG, async {
        loop {
            if let Ok(PunchEvent::Requested { target, .. }) = worker_events.recv().await {
                return target;
            }
        }
    })
    .await
    .expect("punch request in time");
    assert_eq!(ev, cnode.local_addr());
    // Through a PeerRpcClient: broker lookup, punches both ways, then the request over uTP.
    let transport = Arc::new(UtpClient::with_node(cnode.clone(), UtpClientConfig::default()));
    let client = PeerRpcClient::new(link.clone(), transport, PeerRpcClientConfig::default()).with_resolver(Arc::new(client_bc.clone()));
    let opts = RequestOptions { timeout: Some(LONG), ..Default::default() };
    assert_eq!(client.request("svc_a", "who", &opts).await.expect("request"), json!(cnode.local_addr().to_string()));
    // A service the broker does not know: the Grapes' lookup (nobody announces it here).
    let e = client.request("svc_none", "hello", &opts).await.expect_err("unknown");
    assert_eq!(e.kind(), ErrorKind::LookupEmpty);
    // The legacy request shape gets the legacy registry shape, for that service only.
    let c = UtpClient::with_node(cnode.clone(), UtpClientConfig::default());
    let legacy =
        c.request(&broker.local_addr().to_string(), out(&json!({"service": "svc_a", "server": false}), LONG)).await.expect("legacy");
    let entries = legacy["svc_a"].as_object().expect("registry");
    assert!(entries.values().any(|e| e["server"] == true && e["port"] == worker.local_addr().port()), "{legacy}");
    assert!(entries.values().all(|e| e["service"] == "svc_a"), "{legacy}");
    // Bad requests get a clear error.
    let e = c.request(&broker.local_addr().to_string(), out(&json!({"op": "nope", "service": "x"}), LONG)).await.expect_err("bad");
    assert_eq!(e.message(), "ERR_BROKER_BAD_REQUEST");
    broker.stop();
    net.stop().await;
}

#[tokio::test]
async fn an_oversized_request_closes_only_its_stream() {
    let config = UtpServerConfig { max_message_size: 1000, ..Default::default() };
    let s = UtpServer::bind(loopback(), Arc::new(handler), config).await.expect("bind");
    let dest = s.local_addr().to_string();
    let c = UtpClient::new(UtpClientConfig::default());
    let e = c.request(&dest, out(&json!("x".repeat(5000)), LONG)).await.expect_err("too large");
    assert_eq!(e.kind(), ErrorKind::Closed, "{e}");
    // The node keeps serving: a new stream, and other clients.
    assert_eq!(c.request(&dest, out(&json!("hello"), LONG)).await.expect("next"), json!("world"));
    let other = UtpClient::new(UtpClientConfig::default());
    assert_eq!(other.request(&dest, out(&json!("hello"), LONG)).await.expect("other"), json!("world"));
    // A reply larger than the client's limit fails that request with a clear error.
    let small = UtpClient::new(UtpClientConfig { max_message_size: 100, ..Default::default() });
    let e = small.request(&dest, out(&json!("y".repeat(500)), LONG)).await.expect_err("reply too large");
    assert_eq!(e.kind(), ErrorKind::PayloadTooLarge, "{e}");
}

/// `UtpNodeConfig::inactivity_timeout` bounds how long a server's stream waits for its handler:
/// a handler slower than it loses the stream (the request fails with `Closed`), one within it
/// answers.
#[tokio::test]
async fn a_handler_slower_than_the_inactivity_timeout_loses_its_stream() {
    use grenache::transport::utp::UtpNodeConfig;
    for (secs, answered) in [(1, false), (5, true)] {
        let config = UtpNodeConfig { inactivity_timeout: Duration::from_secs(secs), ..Default::default() };
        let node = UtpNode::bind_with(loopback(), config).await.expect("server node");
        let s = UtpServer::serve(node, Arc::new(handler), UtpServerConfig::default()).expect("serve");
        let c = UtpClient::new(UtpClientConfig::default());
        let got = c.request(&s.local_addr().to_string(), out(&json!({"sleep": 2500, "v": "late"}), LONG)).await;
        match got {
            Ok(v) => assert!(answered && v == json!("late"), "{secs} s: {v}"),
            Err(e) => assert!(!answered && e.kind() == ErrorKind::Closed, "{secs} s: {e:?}"),
        }
    }
}

/// A quiet stream is closed after `UtpServerConfig::idle_timeout`, so clients that went away
/// without closing do not hold the node's stream slots for good; a request that runs longer than
/// the idle time keeps its stream.
#[tokio::test]
async fn quiet_streams_are_closed_and_free_their_slots() {
    use grenache::transport::utp::UtpNodeConfig;
    for (idle, freed) in [(None, false), (Some(Duration::from_millis(400)), true)] {
        let node = UtpNode::bind_with(loopback(), UtpNodeConfig { max_streams: 2, ..Default::default() }).await.expect("node");
        let config = UtpServerConfig { idle_timeout: idle, ..Default::default() };
        let s = UtpServer::serve(node, Arc::new(handler), config).expect("serve");
        let dest = s.local_addr().to_string();
        // Two clients each leave a stream open and quiet: the node's two slots.
        let quiet = [UtpClient::new(UtpClientConfig::default()), UtpClient::new(UtpClientConfig::default())];
        for c in &quiet {
            assert_eq!(c.request(&dest, out(&json!("hello"), LONG)).await.expect("first"), json!("world"));
        }
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let third = UtpClient::new(UtpClientConfig { connect_timeout: Duration::from_secs(2), ..Default::default() });
        let got = third.request(&dest, out(&json!("hello"), LONG)).await;
        if freed {
            assert_eq!(got.expect("a slot was freed"), json!("world"));
            // A request slower than the idle time keeps its stream, and is answered.
            let slow = third.request(&dest, out(&json!({"sleep": 1500, "v": "late"}), LONG)).await;
            assert_eq!(slow.expect("slow request"), json!("late"));
        } else {
            assert!(got.is_err(), "with no idle timeout both slots stay taken: {got:?}");
        }
        drop(quiet);
    }
}
