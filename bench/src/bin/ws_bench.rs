//! WebSocket RPC and PUB/SUB throughput: ours beside the Node reference (grenache-nodejs-ws 1.0.0),
//! in the same run, against the same two Node Grapes.
//!
//! ```text
//! cargo run --release -p grenache-bench --bin ws_bench
//! ```
//!
//! * RPC: payload `"hello"` → `"world"` through the full client path (cached lookup, destination
//!   and socket choice): a sequential loop, then rounds of 100 concurrent requests (each round
//!   waits for all 100), like the reference's measurements. Ours: `PeerRpcClient` + `WsClient` →
//!   `WsServer`. Reference: Node `PeerRPCClient` → Node `PeerRPCServer` (separate processes).
//! * Process shape: the Node peers are single-threaded processes (server and client apart). Ours
//!   mirror that with two single-threaded tokio runtimes in this process (I/O and timers only: the
//!   harness's child processes are watched by a third, main runtime): the servers (`WsServer`,
//!   `PeerPub`) on one thread, the clients and subscribers on another. Our client side runs in a
//!   spawned task, as application code does (tokio's `block_on` future pays an extra non-blocking
//!   `epoll_wait` each time another task wakes it).
//! * `--ours-only` (`WS_SEQ=n`), `--floor-only`, `--pubsub-only`: one part alone, for profiling
//!   (`--pubsub-only` runs our PUB/SUB to 1, 10 and 100 subscribers).
//! * PUB/SUB: messages `{"seq":i,"msg":"hello subscribers"}` published to 10 and to 100
//!   subscribers; messages/s = messages published ÷ time from the first delivery until every
//!   subscriber has every message. Our publisher keeps its bounded queues (the benchmark publishes
//!   at most 768 messages ahead of the slowest subscriber); Node's publisher buffers without limit.
//! * Busy-polling: our rows use the default `busy_poll` (50 µs) on both ends: a sequential
//!   request polls for its reply, and the server connection for the next request, instead of
//!   sleeping (see `WsClientConfig::busy_poll`). The row "busy_poll off" runs the same loop with
//!   sleeping waits, and the CPU time per sequential request of both is printed under the table.
//! * Floor: a TCP ping-pong of a request-sized message between the same two threads, with no
//!   WebSocket, JSON or lookup, waiting the usual way (sleeping in `epoll_wait`): what a
//!   sequential round trip costs on this machine before any protocol work when each side sleeps
//!   between messages.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use grenache::link::{Link, LinkConfig};
use grenache::pubsub::{PeerPub, PeerSub, PubConfig, SubConfig};
use grenache::rpc::{PeerRpcClient, PeerRpcClientConfig, PeerRpcServer, Reply, Request, RequestOptions};
use grenache::transport::ws::{DEFAULT_BUSY_POLL, WsClient, WsClientConfig, WsServer, WsServerConfig};
use grenache_bench::{Row, Samples, print_table};
use grenache_e2e::{NodeProcess, free_port, free_tcp_port};
use serde_json::{Value, json};

const LONG: Duration = Duration::from_secs(60);

/// A single-threaded tokio runtime on its own thread (I/O and timers; the harness's child
/// processes are watched by the main runtime, not by these).
fn runtime_thread() -> tokio::runtime::Handle {
    let rt = tokio::runtime::Builder::new_current_thread().enable_io().enable_time().build().expect("runtime");
    let handle = rt.handle().clone();
    std::thread::spawn(move || rt.block_on(std::future::pending::<()>()));
    handle
}

struct Grapes {
    _procs: Vec<NodeProcess>,
    url: String,
}

async fn start_grapes() -> Grapes {
    let (d1, d2, a1, a2) = (free_port(), free_port(), free_port(), free_port());
    let mut procs = Vec::new();
    for (dht, api, boot) in [(d1, a1, d2), (d2, a2, d1)] {
        let (dht, api, boot) = (dht.to_string(), api.to_string(), format!("127.0.0.1:{boot}"));
        let mut p = NodeProcess::spawn("grape.js", &["--dht-port", &dht, "--api-port", &api, "--bootstrap", &boot]);
        loop {
            let v = p.json(LONG).await;
            if v["event"] == "started" {
                break;
            }
            assert_ne!(v["event"], "error", "grape failed: {v}");
        }
        procs.push(p);
    }
    Grapes { _procs: procs, url: format!("http://127.0.0.1:{a1}") }
}

async fn wait_lookup(link: &Link, name: &str, n: usize) {
    let deadline = Instant::now() + LONG;
    loop {
        link.invalidate(name);
        if let Ok(v) = link.lookup(name).await
            && v.len() >= n
        {
            return;
        }
        assert!(Instant::now() < deadline, "{name} never announced");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn node_started(p: &mut NodeProcess) {
    loop {
        let v = p.json(LONG).await;
        if v["event"] == "started" {
            return;
        }
        assert_ne!(v["event"], "error", "node failed: {v}");
    }
}

/// CPU time of this process (every thread) so far.
fn process_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

struct RpcFigures {
    seq_rps: f64,
    /// CPU time (client and server sides together) per sequential request, µs (ours only).
    seq_cpu_us: f64,
    seq_p50: f64,
    seq_p99: f64,
    conc_rps: f64,
    conc_p50: f64,
    conc_p99: f64,
}

/// Our RPC rows, with both ends' busy-polling budget set to `busy` (the default is
/// `DEFAULT_BUSY_POLL`; zero turns it off). `rounds` of 100 in flight may be 0.
async fn ours_rpc(server_rt: &tokio::runtime::Handle, link: &Link, seq: usize, rounds: usize, busy: Duration) -> RpcFigures {
    let name = format!("bench_ws_rust_{}", busy.as_micros());
    let addr: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let handler = |req: Request, reply: Reply| {
        if req.payload == json!("hello") { reply.ok(json!("world")) } else { reply.err("ERR_BAD") }
    };
    let ws = server_rt
        .spawn(async move { WsServer::bind(addr, handler, WsServerConfig::default().busy_poll(busy)).await })
        .await
        .expect("join")
        .expect("bind");
    let srv = PeerRpcServer::new(link.clone(), Arc::new(ws));
    srv.start_announcing(&name, Duration::from_secs(1)).first_result(LONG).await.expect("announce");
    wait_lookup(link, &name, 1).await;
    let client = PeerRpcClient::new(
        link.clone(),
        Arc::new(WsClient::new(WsClientConfig::default().busy_poll(busy))),
        PeerRpcClientConfig::default(),
    );
    let opts = RequestOptions { timeout: Some(Duration::from_secs(10)), ..Default::default() };
    let call = || async {
        let r = client.request(&name, "hello", &opts).await.expect("reply");
        assert_eq!(r, json!("world"));
    };
    for _ in 0..300 {
        call().await;
    }
    let mut seq_lat = Samples::with_capacity(seq);
    let (t0, cpu0) = (Instant::now(), process_cpu());
    for _ in 0..seq {
        let a = Instant::now();
        call().await;
        seq_lat.push(a.elapsed());
    }
    let seq_secs = t0.elapsed().as_secs_f64();
    let seq_cpu = process_cpu().saturating_sub(cpu0);
    let mut conc_lat = Samples::with_capacity(rounds * 100);
    let t0 = Instant::now();
    for _ in 0..rounds {
        let futs = (0..100).map(|_| async {
            let a = Instant::now();
            call().await;
            a.elapsed()
        });
        for d in futures_util::future::join_all(futs).await {
            conc_lat.push(d);
        }
    }
    let conc_secs = t0.elapsed().as_secs_f64();
    srv.stop();
    RpcFigures {
        seq_rps: seq as f64 / seq_secs,
        seq_cpu_us: seq_cpu.as_secs_f64() * 1e6 / seq as f64,
        seq_p50: seq_lat.percentile_us(50.0) as f64,
        seq_p99: seq_lat.percentile_us(99.0) as f64,
        conc_rps: (rounds * 100) as f64 / conc_secs.max(1e-9),
        conc_p50: conc_lat.percentile_us(50.0) as f64,
        conc_p99: conc_lat.percentile_us(99.0) as f64,
    }
}

async fn node_rpc(grape: &str, seq: usize, rounds: usize) -> RpcFigures {
    let port = free_tcp_port().to_string();
    let mut server = NodeProcess::spawn("ws_server.js", &["--grape", grape, "--name", "bench_ws_node", "--port", &port]);
    node_started(&mut server).await;
    let link = Link::new(LinkConfig::with_grape(grape)).expect("link");
    wait_lookup(&link, "bench_ws_node", 1).await;
    let (seq, rounds) = (seq.to_string(), rounds.to_string());
    let mut client = NodeProcess::spawn(
        "ws_bench_client.js",
        &["--grape", grape, "--key", "bench_ws_node", "--warmup", "300", "--seq", &seq, "--rounds", &rounds, "--conc", "100"],
    );
    let v = client.json(Duration::from_secs(120)).await;
    assert!(v.get("error").is_none(), "node bench client failed: {v}");
    let f = |k: &str| v[k].as_f64().unwrap_or(0.0);
    RpcFigures {
        seq_rps: f("seq_rps"),
        seq_cpu_us: 0.0,
        seq_p50: f("seq_p50_us"),
        seq_p99: f("seq_p99_us"),
        conc_rps: f("conc_rps"),
        conc_p50: f("conc_p50_us"),
        conc_p99: f("conc_p99_us"),
    }
}

/// Our publisher to `n` subscribers (found through the Link); returns messages/s.
async fn ours_pubsub(server_rt: &tokio::runtime::Handle, link: &Link, n: usize, count: usize) -> f64 {
    let name = format!("bench_pub_rust_{n}");
    let addr: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let p = server_rt.spawn(async move { PeerPub::bind(addr, PubConfig::default()).await }).await.expect("join").expect("bind");
    p.start_announcing(link, &name, Duration::from_secs(1)).first_result(LONG).await.expect("announce");
    wait_lookup(link, &name, 1).await;
    let peer = PeerSub::new(link.clone(), SubConfig::default());
    let first = Arc::new(std::sync::Mutex::new(None::<Instant>));
    let counters: Vec<Arc<AtomicU64>> = (0..n).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<Instant>(n);
    for c in &counters {
        let mut sub = peer.sub(&name);
        let (c, first, done_tx) = (c.clone(), first.clone(), done_tx.clone());
        tokio::spawn(async move {
            while let Some(_m) = sub.recv().await {
                let got = c.fetch_add(1, Ordering::Relaxed) + 1;
                if got == 1 {
                    let mut f = first.lock().unwrap_or_else(|e| e.into_inner());
                    if f.is_none() {
                        *f = Some(Instant::now());
                    }
                }
                if got == count as u64 {
                    let _ = done_tx.send(Instant::now()).await;
                    break;
                }
            }
        });
    }
    p.wait_subscribers(n, LONG).await.expect("subscribers");
    const WINDOW: u64 = 768;
    let mut sent = 0u64;
    while sent < count as u64 {
        let slowest = counters.iter().map(|c| c.load(Ordering::Relaxed)).min().unwrap_or(0);
        if sent - slowest >= WINDOW / 2 {
            // Let the slowest subscriber catch up (the queues hold 1024 messages).
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        }
        let burst = (WINDOW - (sent - slowest)).min(count as u64 - sent);
        for i in 0..burst {
            p.publish(format!("{{\"seq\":{},\"msg\":\"hello subscribers\"}}", sent + i));
        }
        sent += burst;
    }
    let mut last = Instant::now();
    for _ in 0..n {
        last = tokio::time::timeout(LONG, done_rx.recv()).await.expect("all delivered").expect("done");
    }
    let t0 = first.lock().unwrap_or_else(|e| e.into_inner()).unwrap_or(last);
    assert_eq!(p.stats().kicked, 0, "no subscriber was dropped");
    p.close();
    count as f64 / last.duration_since(t0).as_secs_f64().max(1e-9)
}

async fn node_pubsub(grape: &str, n: usize, count: usize) -> f64 {
    let name = format!("bench_pub_node_{n}");
    let port = free_tcp_port().to_string();
    let mut publisher = NodeProcess::spawn("ws_bench_pub.js", &["--grape", grape, "--name", &name, "--port", &port]);
    node_started(&mut publisher).await;
    let link = Link::new(LinkConfig::with_grape(grape)).expect("link");
    wait_lookup(&link, &name, 1).await;
    let (ns, cs) = (n.to_string(), count.to_string());
    let mut subs = NodeProcess::spawn("ws_bench_subs.js", &["--grape", grape, "--name", &name, "--n", &ns, "--count", &cs]);
    loop {
        let v = subs.json(LONG).await;
        if v["event"] == "ready" {
            break;
        }
    }
    publisher.send_line(&json!({"op": "go", "count": count}).to_string()).await;
    loop {
        let v: Value = subs.json(Duration::from_secs(120)).await;
        if v["event"] == "done" {
            return count as f64 / v["secs"].as_f64().unwrap_or(f64::INFINITY).max(1e-9);
        }
    }
}

/// The machine's floor for a sequential round trip with this process shape: a TCP ping-pong of
/// a request-sized message (no WebSocket, no JSON, no lookup), server on the server thread,
/// client on this one. Returns (round trips/s, p50 µs).
async fn floor_ping_pong(server_rt: &tokio::runtime::Handle, n: usize) -> (f64, f64) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = server_rt.spawn(async { tokio::net::TcpListener::bind("127.0.0.1:0").await }).await.expect("join").expect("bind");
    let addr = listener.local_addr().expect("addr");
    server_rt.spawn(async move {
        let Ok((mut s, _)) = listener.accept().await else { return };
        let _ = s.set_nodelay(true);
        let mut buf = [0u8; 256];
        while let Ok(k) = s.read(&mut buf).await {
            if k == 0 || s.write_all(&buf[..k]).await.is_err() {
                break;
            }
        }
    });
    let mut c = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let _ = c.set_nodelay(true);
    // About the size of a request frame: ["<uuid>","bench_ws_rust","hello"] plus the header.
    let msg = [b'x'; 64];
    let mut buf = [0u8; 256];
    let mut lat = Samples::with_capacity(n);
    let t0 = Instant::now();
    for _ in 0..n {
        let a = Instant::now();
        c.write_all(&msg).await.expect("write");
        let mut got = 0;
        while got < msg.len() {
            got += c.read(&mut buf).await.expect("read");
        }
        lat.push(a.elapsed());
    }
    (n as f64 / t0.elapsed().as_secs_f64(), lat.percentile_us(50.0) as f64)
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let server_rt = runtime_thread();
    let client_rt = runtime_thread();
    // Runs `f(server runtime, link)` on the client runtime.
    let on_client = |url: String, f: fn(tokio::runtime::Handle, Link) -> futures_util::future::BoxFuture<'static, Value>| {
        let server_rt = server_rt.clone();
        client_rt.spawn(async move {
            let link = Link::new(LinkConfig::with_grape(url)).expect("link");
            f(server_rt, link).await
        })
    };
    rt.block_on(async {
        let g = start_grapes().await;
        let client = |f| {
            let h = on_client(g.url.clone(), f);
            async move { h.await.expect("client runtime") }
        };
        if std::env::args().any(|a| a == "--floor-only") {
            let v = client(|s, _| Box::pin(async move { json!(floor_ping_pong(&s, 200_000).await) })).await;
            println!("floor: {:.0} round trips/s (p50 {} µs)", v[0].as_f64().unwrap_or(0.0), v[1]);
            return;
        }
        if std::env::args().any(|a| a == "--pubsub-only") {
            // Ours alone: one subscriber's receive rate, then 10 and 100 subscribers.
            let v = client(|s, link| {
                Box::pin(async move {
                    let one = ours_pubsub(&s, &link, 1, 200_000).await;
                    let ten = ours_pubsub(&s, &link, 10, 50_000).await;
                    let hundred = ours_pubsub(&s, &link, 100, 10_000).await;
                    json!([one, ten, hundred])
                })
            })
            .await;
            let f = |i: usize| v[i].as_f64().unwrap_or(0.0);
            println!("ours: PUB/SUB to 1 subscriber {:.0} msg/s, to 10 {:.0} msg/s, to 100 {:.0} msg/s", f(0), f(1), f(2));
            return;
        }
        if std::env::args().any(|a| a == "--ours-only") {
            // For profiling: only our RPC rows, longer.
            let v = client(|s, link| {
                Box::pin(async move {
                    let n: usize = std::env::var("WS_SEQ").ok().and_then(|v| v.parse().ok()).unwrap_or(200_000);
                    let busy =
                        std::env::var("WS_BUSY_US").ok().and_then(|v| v.parse().ok()).map_or(DEFAULT_BUSY_POLL, Duration::from_micros);
                    let o = ours_rpc(&s, &link, n, n / 200, busy).await;
                    json!([o.seq_rps, o.seq_p50, o.conc_rps, o.seq_cpu_us])
                })
            })
            .await;
            let f = |i: usize| v[i].as_f64().unwrap_or(0.0);
            println!("ours: sequential {:.0} req/s (p50 {} µs, {:.1} µs CPU each), 100 in flight {:.0} req/s", f(0), v[1], f(3), f(2));
            return;
        }
        eprintln!("RPC: ours...");
        let v = client(|s, link| {
            Box::pin(async move {
                let o = ours_rpc(&s, &link, 20_000, 300, DEFAULT_BUSY_POLL).await;
                let off = ours_rpc(&s, &link, 20_000, 0, Duration::ZERO).await;
                json!([
                    o.seq_rps,
                    o.seq_p50,
                    o.seq_p99,
                    o.conc_rps,
                    o.conc_p50,
                    o.conc_p99,
                    o.seq_cpu_us,
                    off.seq_rps,
                    off.seq_p50,
                    off.seq_cpu_us
                ])
            })
        })
        .await;
        let f = |i: usize| v[i].as_f64().unwrap_or(0.0);
        let ours =
            RpcFigures { seq_rps: f(0), seq_p50: f(1), seq_p99: f(2), conc_rps: f(3), conc_p50: f(4), conc_p99: f(5), seq_cpu_us: f(6) };
        let (off_rps, off_p50, off_cpu) = (f(7), f(8), f(9));
        eprintln!("RPC: Node reference...");
        let node = node_rpc(&g.url, 5_000, 100).await;
        eprintln!("PUB/SUB 10 subscribers: ours...");
        let ours10 =
            client(|s, link| Box::pin(async move { json!(ours_pubsub(&s, &link, 10, 50_000).await) })).await.as_f64().unwrap_or(0.0);
        eprintln!("PUB/SUB 10 subscribers: Node reference...");
        let node10 = node_pubsub(&g.url, 10, 20_000).await;
        eprintln!("PUB/SUB 100 subscribers: ours...");
        let ours100 =
            client(|s, link| Box::pin(async move { json!(ours_pubsub(&s, &link, 100, 10_000).await) })).await.as_f64().unwrap_or(0.0);
        eprintln!("PUB/SUB 100 subscribers: Node reference...");
        let node100 = node_pubsub(&g.url, 100, 3_000).await;
        eprintln!("floor: TCP ping-pong...");
        let v = client(|s, _| Box::pin(async move { json!(floor_ping_pong(&s, 20_000).await) })).await;
        let (floor_rps, floor_p50) = (v[0].as_f64().unwrap_or(0.0), v[1].as_f64().unwrap_or(0.0));

        let row = |metric: &str, ours: f64, reference: f64, unit: &str, higher: bool| Row {
            metric: metric.to_string(),
            ours,
            reference,
            unit: unit.to_string(),
            higher_is_better: higher,
        };
        print_table(
            "WebSocket RPC and PUB/SUB (grenache-rs vs grenache-nodejs-ws 1.0.0)",
            &[
                row("RPC sequential", ours.seq_rps, node.seq_rps, "req/s", true),
                row("RPC 100 in flight (rounds of 100)", ours.conc_rps, node.conc_rps, "req/s", true),
                row("RPC sequential, busy_poll off (sleeping waits)", off_rps, node.seq_rps, "req/s", true),
                row("RPC sequential p50 latency", ours.seq_p50, node.seq_p50, "µs", false),
                row("RPC sequential p50 latency, busy_poll off", off_p50, node.seq_p50, "µs", false),
                row("RPC sequential p99 latency", ours.seq_p99, node.seq_p99, "µs", false),
                row("RPC 100 in flight p50 latency", ours.conc_p50, node.conc_p50, "µs", false),
                row("RPC 100 in flight p99 latency", ours.conc_p99, node.conc_p99, "µs", false),
                row("PUB/SUB to 10 subscribers", ours10, node10, "msg/s", true),
                row("PUB/SUB to 100 subscribers", ours100, node100, "msg/s", true),
                row("floor: TCP ping-pong with sleeping waits, same bytes and threads, no WS", floor_rps, node.seq_rps, "req/s", true),
                row("floor: TCP ping-pong p50 latency", floor_p50, node.seq_p50, "µs", false),
            ],
        );
        println!(
            "ours, CPU time per sequential request (client and server together): {:.1} µs with busy_poll (default), {:.1} µs without",
            ours.seq_cpu_us, off_cpu
        );
    });
}
