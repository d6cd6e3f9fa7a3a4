//! ZeroMQ RPC and PUB/SUB beside our WS and HTTP transports and beside a bare libzmq
//! DEALER/ROUTER echo (pyzmq), and the transport proxy's added latency, in one run.
//!
//! ```text
//! cargo run --release -p grenache-bench --bin zmq_bench
//! ```
//!
//! * RPC: payload `"hello"` → `"world"` through the full client path (`PeerRpcClient`: cached
//!   lookup, destination choice) against a server of each transport, with the default settings:
//!   a sequential loop (`ZMQ_SEQ`, default 5000), then rounds of 100 concurrent requests
//!   (`ZMQ_ROUNDS`, default 100; each round waits for all 100). The servers run on one
//!   single-threaded tokio runtime, the clients on another (two "processes" of one thread each).
//!   In-process Grapes.
//! * Floor: bare libzmq, the same frames, no JSON and no lookup, DEALER against a ROUTER echo in
//!   two processes: in C (`bench/c/zmq_floor.c`, compiled here with `cc -O2 ... -lzmq` when the
//!   system has libzmq's headers: Debian `libzmq3-dev`; the row is skipped otherwise), and through
//!   pyzmq (libzmq 4.3.5 wheels; the Python loop is part of that figure).
//! * PUB/SUB fan-out: `ZMQ_MSGS` (default 20,000) messages of ~40 bytes from one publisher to
//!   10 subscribers, ZeroMQ beside WS; messages/s = messages published ÷ time until every
//!   subscriber has every one. The publisher keeps its bounded queues: the benchmark publishes in
//!   batches of 256 and waits for the slowest subscriber to have a batch before the next.
//! * Proxy: a WS client → `Proxy` (WS → ZeroMQ, on a third runtime thread) → the ZeroMQ worker,
//!   sequential, beside the direct ZeroMQ and WS calls; the added latency is the proxy's p50 and
//!   p99 minus the direct ZeroMQ call's.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use grenache::grape::Testnet;
use grenache::link::{Link, LinkConfig};
use grenache::proxy::{Proxy, ProxyConfig};
use grenache::pubsub::{PeerPub, PeerSub, PubConfig, SubConfig};
use grenache::rpc::{PeerRpcClient, PeerRpcClientConfig, PeerRpcServer, Reply, Request, RequestOptions, TransportKind};
use grenache_bench::Samples;
use grenache_e2e::NodeProcess;
use serde_json::json;

const LONG: Duration = Duration::from_secs(60);

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A single-threaded tokio runtime on its own thread.
fn runtime_thread() -> tokio::runtime::Handle {
    let rt = tokio::runtime::Builder::new_current_thread().enable_io().enable_time().build().expect("runtime");
    let handle = rt.handle().clone();
    std::thread::spawn(move || rt.block_on(std::future::pending::<()>()));
    handle
}

async fn wait_lookup(link: &Link, name: &str) {
    let deadline = Instant::now() + LONG;
    loop {
        link.invalidate(name);
        if link.lookup(name).await.map(|v| !v.is_empty()).unwrap_or(false) {
            return;
        }
        assert!(Instant::now() < deadline, "{name} never announced");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Figures {
    seq_rps: f64,
    seq_p50: f64,
    seq_p99: f64,
    conc_rps: f64,
}

fn hello(req: Request, reply: Reply) {
    if req.payload == json!("hello") { reply.ok(json!("world")) } else { reply.err("ERR_BAD") }
}

/// A server of `kind` on `server_rt` announcing `name`.
async fn serve(server_rt: &tokio::runtime::Handle, link: &Link, kind: TransportKind, name: &str) -> PeerRpcServer {
    let addr: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let t = server_rt
        .spawn(async move { grenache::transport::bind_server(kind, addr, Arc::new(hello), None, None).await })
        .await
        .expect("join")
        .expect("bind");
    let srv = PeerRpcServer::new(link.clone(), t);
    srv.start_announcing(name, Duration::from_secs(1)).first_result(LONG).await.expect("announce");
    wait_lookup(link, name).await;
    srv
}

/// Sequential then 100-in-flight rounds against `name` through a `kind` client, run on
/// `client_rt`.
async fn measure(client_rt: &tokio::runtime::Handle, link: &Link, kind: TransportKind, name: &str, seq: usize, rounds: usize) -> Figures {
    let (link, name) = (link.clone(), name.to_string());
    client_rt
        .spawn(async move {
            let client = PeerRpcClient::new(link, grenache::transport::client(kind, None), PeerRpcClientConfig::default());
            let opts = RequestOptions { timeout: Some(Duration::from_secs(10)), ..Default::default() };
            let call = || async {
                let r = client.request(&name, "hello", &opts).await.expect("reply");
                assert_eq!(r, json!("world"));
            };
            for _ in 0..300 {
                call().await;
            }
            let mut lat = Samples::with_capacity(seq);
            let t0 = Instant::now();
            for _ in 0..seq {
                let a = Instant::now();
                call().await;
                lat.push(a.elapsed());
            }
            let seq_secs = t0.elapsed().as_secs_f64();
            let t0 = Instant::now();
            for _ in 0..rounds {
                futures_util::future::join_all((0..100).map(|_| call())).await;
            }
            let conc_secs = t0.elapsed().as_secs_f64();
            Figures {
                seq_rps: seq as f64 / seq_secs,
                seq_p50: lat.percentile_us(50.0) as f64,
                seq_p99: lat.percentile_us(99.0) as f64,
                conc_rps: (rounds * 100) as f64 / conc_secs.max(1e-9),
            }
        })
        .await
        .expect("client task")
}

/// The C floor, when `cc` and libzmq's headers are there.
async fn c_floor(seq: usize, rounds: usize) -> Option<Figures> {
    use tokio::io::AsyncBufReadExt;
    if !std::path::Path::new("/usr/include/zmq.h").exists() {
        println!("(no /usr/include/zmq.h: the C libzmq floor is skipped; apt-get install libzmq3-dev)");
        return None;
    }
    let src = grenache_e2e::workspace_dir().join("bench").join("c").join("zmq_floor.c");
    let exe = std::env::temp_dir().join(format!("zmq_floor_{}", std::process::id()));
    let built = std::process::Command::new("cc").arg("-O2").arg(&src).arg("-lzmq").arg("-o").arg(&exe).status().ok()?;
    if !built.success() {
        println!("(zmq_floor.c did not build: the C libzmq floor is skipped)");
        return None;
    }
    let mut echo = tokio::process::Command::new(&exe).arg("echo").stdout(std::process::Stdio::piped()).kill_on_drop(true).spawn().ok()?;
    let mut lines = tokio::io::BufReader::new(echo.stdout.take()?).lines();
    let first: serde_json::Value = serde_json::from_str(&lines.next_line().await.ok()??).ok()?;
    let port = first["port"].as_u64()?.to_string();
    let out = tokio::process::Command::new(&exe).args(["client", &port, &seq.to_string(), &rounds.to_string()]).output().await.ok()?;
    let _ = echo.kill().await;
    let _ = std::fs::remove_file(&exe);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let f = |k: &str| v[k].as_f64().unwrap_or(0.0);
    Some(Figures { seq_rps: f("seq_rps"), seq_p50: f("seq_p50_us"), seq_p99: f("seq_p99_us"), conc_rps: f("conc_rps") })
}

async fn floor(seq: usize, rounds: usize) -> Figures {
    let mut echo = NodeProcess::spawn_python("zmq_peer.py", &["echo"]);
    let port = loop {
        let v = echo.json(LONG).await;
        if v["event"] == "started" {
            break v["port"].as_u64().expect("port").to_string();
        }
    };
    let mut client = NodeProcess::spawn_python("zmq_peer.py", &["bench", &port, &seq.to_string(), &rounds.to_string()]);
    let v = client.json(Duration::from_secs(300)).await;
    let f = |k: &str| v[k].as_f64().unwrap_or(0.0);
    Figures { seq_rps: f("seq_rps"), seq_p50: f("seq_p50_us"), seq_p99: f("seq_p99_us"), conc_rps: f("conc_rps") }
}

/// Messages/s from one publisher to `subs` subscribers over `kind`.
async fn fan_out(
    server_rt: &tokio::runtime::Handle,
    client_rt: &tokio::runtime::Handle,
    kind: TransportKind,
    subs: usize,
    msgs: usize,
) -> f64 {
    let addr: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let publisher =
        server_rt.spawn(async move { PeerPub::bind(addr, PubConfig::default().transport(kind)).await }).await.expect("join").expect("bind");
    let dest = publisher.local_addr().to_string();
    let counts: Arc<Vec<AtomicU64>> = Arc::new((0..subs).map(|_| AtomicU64::new(0)).collect());
    let mut tasks = Vec::new();
    for i in 0..subs {
        let (dest, counts) = (dest.clone(), counts.clone());
        tasks.push(client_rt.spawn(async move {
            let mut s = PeerSub::sub_to(vec![dest], SubConfig::default().transport(kind));
            while s.recv().await.is_some() {
                counts[i].fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    publisher.wait_subscribers(subs, LONG).await.expect("subscribers");
    let slowest = || counts.iter().map(|c| c.load(Ordering::Relaxed)).min().unwrap_or(0);
    let msg = r#"{"seq":0,"msg":"hello subscribers"}"#;
    let t0 = Instant::now();
    let mut sent = 0u64;
    while (sent as usize) < msgs {
        for _ in 0..256 {
            publisher.publish(msg);
            sent += 1;
        }
        let deadline = Instant::now() + LONG;
        while slowest() + 256 < sent {
            assert!(Instant::now() < deadline, "subscribers stalled");
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_micros(50)).await;
        }
    }
    while slowest() < sent {
        tokio::time::sleep(Duration::from_micros(50)).await;
    }
    let secs = t0.elapsed().as_secs_f64();
    assert_eq!(publisher.stats().kicked, 0, "no subscriber may be dropped");
    publisher.close();
    for t in tasks {
        t.abort();
    }
    sent as f64 / secs
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let seq = env_usize("ZMQ_SEQ", 5000);
    let rounds = env_usize("ZMQ_ROUNDS", 100);
    let msgs = env_usize("ZMQ_MSGS", 20_000);
    let net = Testnet::start(2).await.expect("grapes");
    let link = Link::new(LinkConfig::with_grape(net.api_url(0))).expect("link");
    let (server_rt, client_rt, proxy_rt) = (runtime_thread(), runtime_thread(), runtime_thread());

    let mut rows = Vec::new();
    let mut servers = Vec::new();
    for (kind, label) in [(TransportKind::Zmq, "ZeroMQ"), (TransportKind::Ws, "WS"), (TransportKind::Http, "HTTP")] {
        let name = format!("bench_{label}");
        servers.push(serve(&server_rt, &link, kind, &name).await);
        rows.push((label.to_string(), measure(&client_rt, &link, kind, &name, seq, rounds).await));
    }
    if let Some(f) = c_floor(seq, rounds).await {
        rows.push(("floor: bare libzmq in C (DEALER → ROUTER echo)".to_string(), f));
    }
    rows.push(("floor: bare libzmq through pyzmq (DEALER → ROUTER echo)".to_string(), floor(seq, rounds).await));

    println!("\n### RPC, payload \"hello\" (seq = {seq} sequential, 100 in flight × {rounds} rounds)\n");
    println!("| transport | sequential req/s | p50 µs | p99 µs | 100 in flight req/s |");
    println!("|---|---:|---:|---:|---:|");
    for (label, f) in &rows {
        println!("| {label} | {:.0} | {:.0} | {:.0} | {:.0} |", f.seq_rps, f.seq_p50, f.seq_p99, f.conc_rps);
    }

    println!("\n### PUB/SUB fan-out, {msgs} messages to 10 subscribers\n");
    println!("| transport | messages/s |");
    println!("|---|---:|");
    for (kind, label) in [(TransportKind::Zmq, "ZeroMQ"), (TransportKind::Ws, "WS")] {
        println!("| {label} | {:.0} |", fan_out(&server_rt, &client_rt, kind, 10, msgs).await);
    }

    // The proxy: WS in front of the ZeroMQ worker above.
    let l2 = link.clone();
    let proxy = proxy_rt
        .spawn(async move {
            let mut cfg = ProxyConfig::new("bench_proxy", "bench_ZeroMQ", TransportKind::Ws, TransportKind::Zmq);
            cfg.addr = "127.0.0.1:0".parse().expect("addr");
            cfg.announce_interval = Duration::from_secs(1);
            Proxy::start(l2, cfg).await
        })
        .await
        .expect("join")
        .expect("proxy");
    wait_lookup(&link, "bench_proxy").await;
    let direct = measure(&client_rt, &link, TransportKind::Zmq, "bench_ZeroMQ", seq, 0).await;
    let direct_ws = measure(&client_rt, &link, TransportKind::Ws, "bench_WS", seq, 0).await;
    let via = measure(&client_rt, &link, TransportKind::Ws, "bench_proxy", seq, 0).await;
    println!("\n### Proxy (WS client → proxy → ZeroMQ worker), {seq} sequential requests\n");
    println!("| path | p50 µs | p99 µs |");
    println!("|---|---:|---:|");
    println!("| direct ZeroMQ call | {:.0} | {:.0} |", direct.seq_p50, direct.seq_p99);
    println!("| direct WS call | {:.0} | {:.0} |", direct_ws.seq_p50, direct_ws.seq_p99);
    println!("| WS → proxy → ZeroMQ | {:.0} | {:.0} |", via.seq_p50, via.seq_p99);
    println!("| added by the proxy (over direct ZeroMQ) | {:.0} | {:.0} |", via.seq_p50 - direct.seq_p50, via.seq_p99 - direct.seq_p99);
    drop(proxy);
    drop(servers);
    net.stop().await;
}
