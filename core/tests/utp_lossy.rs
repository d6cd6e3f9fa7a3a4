//! uTP over a lossy link: an in-process UDP relay between a client and a server drops datagrams
//! at random (seeded), delays and reorders a few; every echo, 1 MB ones included, must come back
//! byte for byte, in both write modes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use grenache::rpc::{ClientTransport, OutgoingRequest, Reply, Request};
use grenache::transport::utp::{UtpClient, UtpClientConfig, UtpNode, UtpNodeConfig, UtpServer, UtpServerConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::net::UdpSocket;

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().expect("addr")
}

fn echo(req: Request, reply: Reply) {
    reply.ok(req.payload.value().clone());
}

/// Counters of what the relay did.
#[derive(Default)]
struct RelayStats {
    forwarded: AtomicU64,
    dropped: AtomicU64,
    delayed: AtomicU64,
}

/// A UDP relay: datagrams to `addr` go to the server from another socket, the server's answers
/// go back to whoever sent first. Each datagram is dropped with probability `loss`, and delayed
/// by 1-30 ms (so overtaken by later ones) with probability `reorder`. Aborted on drop.
struct Relay {
    addr: SocketAddr,
    stats: Arc<RelayStats>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Sends datagrams `delay` after they were queued, in order.
fn delayed_sender(delay: Duration) -> tokio::sync::mpsc::UnboundedSender<(tokio::time::Instant, Arc<UdpSocket>, Vec<u8>, SocketAddr)> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Arc<UdpSocket>, Vec<u8>, SocketAddr)>();
    tokio::spawn(async move {
        while let Some((at, out, data, to)) = rx.recv().await {
            tokio::time::sleep_until(at + delay).await;
            let _ = out.send_to(&data, to).await;
        }
    });
    tx
}

/// How the relay mistreats datagrams.
#[derive(Debug, Clone, Copy)]
struct Path {
    /// Probability that a datagram is dropped.
    loss: f64,
    /// Probability that a datagram is delayed by 1-30 ms more than the others.
    reorder: f64,
    /// Datagrams longer than this are dropped (a link with a small MTU whose ICMP errors are
    /// filtered: a "black hole").
    max_datagram: usize,
    /// The client's datagrams numbered `a..b` are dropped (its first datagram is number 1).
    drop_client: (usize, usize),
    /// Every datagram is held this long (at least `UTP_LOSSY_DELAY_MS`).
    delay: Duration,
}

async fn relay(server: SocketAddr, seed: u64, path: Path) -> Relay {
    let Path { loss, reorder, max_datagram, drop_client, delay } = path;
    let env_delay = std::env::var("UTP_LOSSY_DELAY_MS").ok().and_then(|s| s.parse().ok()).unwrap_or(0);
    let delay = delay.max(Duration::from_millis(env_delay));
    let (up, down) = (delayed_sender(delay), delayed_sender(delay));
    let front = Arc::new(UdpSocket::bind(loopback()).await.expect("front"));
    let back = Arc::new(UdpSocket::bind(loopback()).await.expect("back"));
    let addr = front.local_addr().expect("addr");
    let stats = Arc::new(RelayStats::default());
    let st = stats.clone();
    let task = tokio::spawn(async move {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut client: Option<SocketAddr> = None;
        let mut from_client = 0usize;
        let (mut a, mut b) = (vec![0u8; 65536], vec![0u8; 65536]);
        loop {
            let (data, out, to, q) = tokio::select! {
                r = front.recv_from(&mut a) => {
                    let Ok((n, from)) = r else { continue };
                    client = Some(from);
                    from_client += 1;
                    if (drop_client.0..drop_client.1).contains(&from_client) {
                        st.dropped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    (a[..n].to_vec(), back.clone(), server, &up)
                }
                r = back.recv_from(&mut b) => {
                    let Ok((n, _)) = r else { continue };
                    let Some(c) = client else { continue };
                    (b[..n].to_vec(), front.clone(), c, &down)
                }
            };
            if rng.gen_bool(loss) || data.len() > max_datagram {
                st.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            st.forwarded.fetch_add(1, Ordering::Relaxed);
            if rng.gen_bool(reorder) {
                st.delayed.fetch_add(1, Ordering::Relaxed);
                let wait = delay + Duration::from_millis(rng.gen_range(1..30));
                tokio::spawn(async move {
                    tokio::time::sleep(wait).await;
                    let _ = out.send_to(&data, to).await;
                });
            } else if delay.is_zero() {
                let _ = out.send_to(&data, to).await;
            } else {
                let _ = q.send((tokio::time::Instant::now(), out, data, to));
            }
        }
    });
    Relay { addr, stats, task }
}

fn req(payload: String, timeout: Duration) -> OutgoingRequest {
    OutgoingRequest {
        rid: grenache::rpc::new_rid(),
        key: Arc::from("rpc_utp_lossy"),
        payload_json: Arc::from(payload),
        timeout: Some(timeout),
        compress: false,
    }
}

/// A JSON string of `len` characters whose every 1 KB block is distinct (a lost or repeated
/// packet cannot go unnoticed by comparing).
fn payload(len: usize, salt: u64) -> String {
    let mut s = String::with_capacity(len + 2);
    s.push('"');
    let mut i = 0usize;
    while s.len() < len + 1 {
        let block = format!("<{salt}:{i:08}>");
        s.push_str(&block);
        for k in 0..(1000 - block.len()) {
            s.push(char::from(b'a' + ((i + k) % 26) as u8));
        }
        i += 1;
    }
    s.truncate(len + 1);
    s.push('"');
    s
}

/// What one run saw: replies equal to their request, replies that differ, typed failures.
#[derive(Debug, Default)]
struct Outcome {
    exact: usize,
    altered: Vec<String>,
    failed: Vec<String>,
}

async fn run(seed: u64, alone: bool, path: Path, node: UtpNodeConfig) -> Outcome {
    // RUST_LOG=librqbit_utp=trace shows the engine's side.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
    let server = UtpServer::serve(
        UtpNode::bind_with(loopback(), node.clone()).await.expect("server node"),
        Arc::new(echo),
        UtpServerConfig { one_message_per_write: alone, ..Default::default() },
    )
    .expect("server");
    let relay = relay(server.local_addr(), seed, path).await;
    let client_node = UtpNode::bind_with(loopback(), node).await.expect("client node");
    let client = UtpClient::with_node(
        client_node,
        UtpClientConfig { one_message_per_write: alone, connect_timeout: Duration::from_secs(20), ..Default::default() },
    );
    let dest = relay.addr.to_string();
    let timeout = Duration::from_secs(60);
    let mut o = Outcome::default();
    let mut check = |sent: &str, got: grenache::Result<Box<serde_json::value::RawValue>>| match got {
        Ok(r) if r.get() == sent => o.exact += 1,
        Ok(r) => o.altered.push(format!("sent {} bytes, got {} bytes", sent.len(), r.get().len())),
        Err(e) => o.failed.push(format!("{:?}: {e}", e.kind())),
    };
    // Many mid-sized ones in flight at once (they share packets in the shared mode).
    let mids: Vec<String> = (0..100).map(|i| payload(500 + (i * 997) % 20_000, seed * 1000 + i as u64)).collect();
    let started = std::time::Instant::now();
    let futs = mids.iter().map(|p| client.request_raw(&dest, req(p.clone(), timeout)));
    for (p, r) in mids.iter().zip(futures_util::future::join_all(futs).await) {
        check(p, r);
    }
    let mut took = vec![started.elapsed().as_millis()];
    // 1 MB echoes, one after another.
    for k in 0..3 {
        let p = payload(1 << 20, seed * 1000 + 500 + k);
        let started = std::time::Instant::now();
        let r = client.request_raw(&dest, req(p.clone(), timeout)).await;
        took.push(started.elapsed().as_millis());
        check(&p, r);
    }
    eprintln!("seed {seed} alone {alone}: ms for the 100 requests, then each 1 MB echo: {took:?}");
    eprintln!(
        "seed {seed} alone {alone} {path:?}: exact {} altered {:?} failed {:?} (relay: forwarded {} dropped {} delayed {})",
        o.exact,
        o.altered,
        o.failed,
        relay.stats.forwarded.load(Ordering::Relaxed),
        relay.stats.dropped.load(Ordering::Relaxed),
        relay.stats.delayed.load(Ordering::Relaxed),
    );
    client.close();
    drop(server);
    o
}

fn seeds() -> Vec<u64> {
    match std::env::var("UTP_LOSSY_SEEDS") {
        Ok(s) => {
            let (a, b) = s.split_once("..").expect("UTP_LOSSY_SEEDS=a..b");
            (a.parse().expect("a")..b.parse().expect("b")).collect()
        }
        Err(_) => (1..3).collect(),
    }
}

const LOSSY: Path = Path { loss: 0.05, reorder: 0.02, max_datagram: usize::MAX, drop_client: (0, 0), delay: Duration::ZERO };

async fn every_echo_is_exact(alone: bool, path: Path, node: UtpNodeConfig) {
    let mut bad = Vec::new();
    for seed in seeds() {
        let o = run(seed, alone, path, node.clone()).await;
        // Every request completes, its reply byte for byte what was sent (the 1 KB blocks are
        // distinct, so a lost, repeated or reordered packet shows). The node's send window keeps
        // the engine's loss recovery from giving the stream up (see `UtpNodeConfig::send_window`).
        if o.exact != 103 || !o.altered.is_empty() || !o.failed.is_empty() {
            bad.push(format!("seed {seed}: exact {}; altered {:?}; failed {:?}", o.exact, o.altered, o.failed));
        }
    }
    assert!(bad.is_empty(), "{bad:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_packets_over_a_lossy_link_are_exact() {
    every_echo_is_exact(false, LOSSY, UtpNodeConfig::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_message_per_write_over_a_lossy_link_is_exact() {
    every_echo_is_exact(true, LOSSY, UtpNodeConfig::default()).await;
}

/// A path dropping every datagram over 1200 bytes: the engine's MTU probes above that are never
/// answered. Every echo comes back exact or fails with a typed error; with the path's MTU
/// configured, every echo comes back exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_hole_for_large_datagrams_never_alters_a_reply() {
    let path = Path { loss: 0.0, reorder: 0.0, max_datagram: 1200, drop_client: (0, 0), delay: Duration::ZERO };
    // The side whose probe never got through gives the stream up and sends a FIN the other side
    // cannot take (it comes after the missing probe), so the other side ends it only at its
    // inactivity timeout: 10 s here, so that the test stays short.
    let short = UtpNodeConfig { inactivity_timeout: Duration::from_secs(10), ..Default::default() };
    for alone in [false, true] {
        let o = run(1, alone, path, short.clone()).await;
        assert!(o.altered.is_empty(), "alone {alone}: altered {:?}, failed {:?}", o.altered, o.failed);
        assert!(!o.failed.is_empty(), "the probes cannot get through");
        for f in &o.failed {
            assert!(f.starts_with("Closed:"), "{f}");
        }
    }
    // 1200 bytes of UDP payload: an IP packet of 1228.
    let node = UtpNodeConfig { link_mtu: 1228, ..Default::default() };
    for alone in [false, true] {
        let o = run(1, alone, path, node.clone()).await;
        assert!(o.altered.is_empty() && o.failed.is_empty(), "alone {alone}: {o:?}");
    }
}

/// The engine sends a connection's SYN once; the node sends another when no answer came.
#[tokio::test]
async fn a_lost_syn_is_sent_again() {
    let server = UtpServer::bind(loopback(), Arc::new(echo), UtpServerConfig::default()).await.expect("server");
    let path = Path { loss: 0.0, reorder: 0.0, max_datagram: usize::MAX, drop_client: (1, 3), delay: Duration::ZERO };
    let relay = relay(server.local_addr(), 1, path).await;
    // The default connect timeout (5 s) leaves room for the SYNs at 0, 1 and 3 s.
    let client = UtpClient::new(UtpClientConfig::default());
    let got = client.request_raw(&relay.addr.to_string(), req("\"hello\"".into(), Duration::from_secs(20))).await;
    assert_eq!(got.expect("connected on the third SYN").get(), "\"hello\"");
    assert_eq!(relay.stats.dropped.load(Ordering::Relaxed), 2);
}

/// A server's stream waits for the client's first packet while it sends its SYN-ACK again every
/// 200 ms; the engine gives it up after `max_retransmissions` of those. When the client's first
/// data packet is lost, the client sends it again only when its retransmission timeout expires
/// (about 300 ms at a 100 ms round trip, doubling each time): at the engine's default of 5
/// (1 s) the server's stream was gone by then and the request failed with "the uTP stream
/// died". Here the first data packet is lost four times in a row (its copies at about 0.3, 0.9
/// and 2.1 s too) and the one at about 4.5 s still finds the stream.
#[tokio::test]
async fn a_server_stream_waits_for_a_first_packet_lost_four_times() {
    let server = UtpServer::bind(loopback(), Arc::new(echo), UtpServerConfig::default()).await.expect("server");
    // Datagram 1 is the SYN; 2 to 5 are the first data packet and its first three copies.
    let path = Path { loss: 0.0, reorder: 0.0, max_datagram: usize::MAX, drop_client: (2, 6), delay: Duration::from_millis(50) };
    let relay = relay(server.local_addr(), 1, path).await;
    let client = UtpClient::new(UtpClientConfig::default());
    let sent = payload(20_000, 7);
    let got = client.request_raw(&relay.addr.to_string(), req(sent.clone(), Duration::from_secs(30))).await;
    assert_eq!(got.expect("the request survives its first packet being lost four times").get(), sent);
    assert_eq!(relay.stats.dropped.load(Ordering::Relaxed), 4);
}

/// The engine keeps four connects to one destination waiting at most and refuses a fifth; the
/// node drops its oldest SYN then, and the fifth SYN (at 7 s) connects.
#[tokio::test]
async fn a_connect_outlasts_four_lost_syns() {
    let server = UtpServer::bind(loopback(), Arc::new(echo), UtpServerConfig::default()).await.expect("server");
    let path = Path { loss: 0.0, reorder: 0.0, max_datagram: usize::MAX, drop_client: (1, 5), delay: Duration::ZERO };
    let relay = relay(server.local_addr(), 1, path).await;
    let client = UtpClient::new(UtpClientConfig { connect_timeout: Duration::from_secs(30), ..Default::default() });
    let got = client.request_raw(&relay.addr.to_string(), req("\"hello\"".into(), Duration::from_secs(40))).await;
    assert_eq!(got.expect("connected on the fifth SYN").get(), "\"hello\"");
    assert_eq!(relay.stats.dropped.load(Ordering::Relaxed), 4);
}

/// The engine ends a stream `inactivity_timeout` after data last arrived unless its own data was
/// acknowledged since: a request written less than a round trip before that deadline would die
/// with the stream. A client gives a stream idle for nearly that long up and opens another.
#[tokio::test]
async fn a_request_after_a_long_idle_goes_on_a_fresh_stream() {
    let node = UtpNodeConfig { inactivity_timeout: Duration::from_secs(2), ..Default::default() };
    // An echo after 200 ms: the request is acknowledged before the reply comes (a reply right
    // away carries the acknowledgement, which turns the engine's timer off).
    let slow_echo = |req: Request, reply: Reply| {
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            reply.ok(req.payload.value().clone());
        });
    };
    let server = UtpServer::serve(
        UtpNode::bind_with(loopback(), node.clone()).await.expect("server node"),
        Arc::new(slow_echo),
        UtpServerConfig::default(),
    )
    .expect("server");
    // A 600 ms round trip.
    let path = Path { loss: 0.0, reorder: 0.0, max_datagram: usize::MAX, drop_client: (0, 0), delay: Duration::from_millis(300) };
    let relay = relay(server.local_addr(), 1, path).await;
    let client = UtpClient::with_node(UtpNode::bind_with(loopback(), node).await.expect("client node"), UtpClientConfig::default());
    let dest = relay.addr.to_string();
    let got = client.request_raw(&dest, req("\"one\"".into(), Duration::from_secs(20))).await;
    assert_eq!(got.expect("first").get(), "\"one\"");
    // Written 1.8 s after the reply came: its acknowledgement would come back after the 2 s.
    tokio::time::sleep(Duration::from_millis(1800)).await;
    let got = client.request_raw(&dest, req("\"two\"".into(), Duration::from_secs(20))).await;
    assert_eq!(got.expect("after the idle time").get(), "\"two\"");
}

#[tokio::test]
async fn a_link_mtu_out_of_range_is_refused() {
    for link_mtu in [0, 48, 65_536] {
        let e = UtpNode::bind_with(loopback(), UtpNodeConfig { link_mtu, ..Default::default() }).await.expect_err("refused");
        assert_eq!(e.kind(), grenache::ErrorKind::InvalidArgument, "{link_mtu}: {e}");
    }
    UtpNode::bind_with(loopback(), UtpNodeConfig { link_mtu: 49, ..Default::default() }).await.expect("the smallest");
}

#[tokio::test]
async fn a_send_window_or_inactivity_timeout_out_of_range_is_refused() {
    for send_window in [0, 4095, (64 << 20) + 1] {
        let e = UtpNode::bind_with(loopback(), UtpNodeConfig { send_window, ..Default::default() }).await.expect_err("refused");
        assert_eq!(e.kind(), grenache::ErrorKind::InvalidArgument, "{send_window}: {e}");
    }
    let e = UtpNode::bind_with(loopback(), UtpNodeConfig { inactivity_timeout: Duration::from_millis(999), ..Default::default() })
        .await
        .expect_err("refused");
    assert_eq!(e.kind(), grenache::ErrorKind::InvalidArgument, "{e}");
    for send_window in [4096, 64 << 20] {
        UtpNode::bind_with(loopback(), UtpNodeConfig { send_window, ..Default::default() }).await.expect("in range");
    }
}
