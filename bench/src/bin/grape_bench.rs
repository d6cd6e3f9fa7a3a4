//! Grape benchmark: our Grape beside the Node reference (grenache-grape 1.0.0), same run.
//!
//! `cargo run --release -p grenache-bench --bin grape_bench` (`-- --rates-only`: step 1 only)
//!
//! Measures, for both implementations, with the Grapes in a separate process (this binary
//! re-runs itself with `--child` to host the Rust Grapes; `tests/interop/grape_bench_net.js`
//! hosts the Node ones):
//! 1. `/lookup` requests/s, 50 concurrent keep-alive clients, 5 s, 2-Grape network;
//! 2. `/announce` requests/s, same setup (each client re-announces its own service);
//! 3. announce-to-visible latency across a 50-Grape network (announce at Grape 1, poll `/lookup`
//!    at Grape 49), median of 10;
//! 4. resident memory of the process holding announced services: 100 000 for Rust, 10 000 for
//!    Node (its peer store is capped there).

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use grenache_bench::{Row, Samples, httpload, print_table, rss_kib};
use grenache_e2e::{NodeProcess, free_port};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

const CLIENTS: usize = 50;
const RUN: Duration = Duration::from_secs(5);
const T: Duration = Duration::from_secs(60);

/// A network of Grapes in another process.
struct Net {
    apis: Vec<SocketAddr>,
    /// The Rust child's canned-reply TCP server (see [`floor_server`]).
    floor: Option<SocketAddr>,
    pid: u32,
    _rust: Option<Child>,
    _node: Option<NodeProcess>,
}

async fn rust_net(n: usize) -> Net {
    let exe = std::env::current_exe().expect("current exe");
    let mut child = Command::new(exe)
        .args(["--child", &n.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(T, lines.next_line()).await.expect("child start timeout").expect("read").expect("line");
    let v: Value = serde_json::from_str(&line).expect("child json");
    let apis = v["api_ports"].as_array().expect("ports").iter().map(|p| local(p.as_u64().unwrap_or(0) as u16)).collect();
    let floor = v["floor_port"].as_u64().map(|p| local(p as u16));
    let pid = child.id().expect("pid");
    Net { apis, floor, pid, _rust: Some(child), _node: None }
}

/// Node Grapes need fixed ports; one picked "free" can be taken by another program before the
/// Grape binds it, so a failed start is retried with new ports.
async fn node_net(n: usize) -> Net {
    for attempt in 1..=5 {
        let dps: Vec<String> = (0..n).map(|_| free_port().to_string()).collect();
        let aps: Vec<String> = (0..n).map(|_| free_port().to_string()).collect();
        let mut p = NodeProcess::spawn("grape_bench_net.js", &[&dps.join(","), &aps.join(",")]);
        let started = tokio::spawn(async move {
            let v = p.json(T).await;
            (v, p)
        })
        .await;
        match started {
            Ok((v, p)) if v["event"] == "started" => {
                let apis = aps.iter().map(|a| local(a.parse().unwrap_or(0))).collect();
                let pid = p.pid().expect("pid");
                return Net { apis, floor: None, pid, _rust: None, _node: Some(p) };
            }
            Ok((v, _)) => eprintln!("  node network start failed ({v}), attempt {attempt}"),
            Err(_) => eprintln!("  node network exited during start (port taken?), attempt {attempt}"),
        }
    }
    panic!("could not start the Node network");
}

fn local(p: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], p))
}

/// A keep-alive HTTP/1.1 client connection, written on raw TCP so that the load generator costs
/// as little CPU as possible (it shares the machine with the servers it measures). It handles
/// what both Grapes send: a status line, headers with `Content-Length`, a body.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Option<Conn> {
        let stream = TcpStream::connect(addr).await.ok()?;
        let _ = stream.set_nodelay(true);
        Some(Conn { stream, buf: Vec::with_capacity(4096) })
    }

    async fn post(&mut self, path: &str, body: String) -> Option<(u16, Bytes)> {
        use tokio::io::AsyncWriteExt;
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        tokio::time::timeout(T, self.stream.write_all(req.as_bytes())).await.ok()?.ok()?;
        self.buf.clear();
        let deadline = tokio::time::Instant::now() + T;
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = std::str::from_utf8(&self.buf[..end]).ok()?;
                let status: u16 = head.split(' ').nth(1)?.parse().ok()?;
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length").then(|| v.trim().parse().ok())?
                    })
                    .unwrap_or(0);
                let start = end + 4;
                while self.buf.len() < start + len {
                    self.read_more(deadline).await?;
                }
                return Some((status, Bytes::copy_from_slice(&self.buf[start..start + len])));
            }
            self.read_more(deadline).await?;
        }
    }

    async fn read_more(&mut self, deadline: tokio::time::Instant) -> Option<()> {
        use tokio::io::AsyncReadExt;
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await.ok()?.ok()?;
        if n == 0 {
            return None;
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Some(())
    }
}

async fn post_once(addr: SocketAddr, path: &str, data: Value) -> Option<(u16, Bytes)> {
    Conn::open(addr).await?.post(path, json!({"rid": "b", "data": data}).to_string()).await
}

/// `CLIENTS` keep-alive connections for `run` through the lean generator (`httpload`), client
/// `c` sending `body(c)` to `path`; a reply counts when `ok(status, body)`.
async fn load(
    run: Duration,
    addr: SocketAddr,
    path: &'static str,
    body: impl Fn(usize) -> String,
    ok: fn(u16, &[u8]) -> bool,
) -> (f64, u64, Samples) {
    let requests = (0..CLIENTS).map(|c| httpload::post(path, &body(c))).collect();
    let r = tokio::task::spawn_blocking(move || httpload::run(addr, requests, run, ok)).await.unwrap_or_default();
    (r.rate(), r.bad, r.samples)
}

fn lookup_ok(st: u16, b: &[u8]) -> bool {
    st == 200 && b.starts_with(b"[\"")
}

fn announce_ok(st: u16, b: &[u8]) -> bool {
    st == 200 && b.first().is_some_and(u8::is_ascii_digit)
}

async fn lookup_rate(api: SocketAddr, run: Duration) -> (f64, u64, Samples) {
    load(run, api, "/lookup", |_| r#"{"rid":"x","data":"bench:lookup"}"#.to_string(), lookup_ok).await
}

async fn announce_rate(api: SocketAddr, run: Duration) -> (f64, u64, Samples) {
    load(run, api, "/announce", |c| format!(r#"{{"rid":"x","data":["bench:announce:{c}",{}]}}"#, 10000 + c), announce_ok).await
}

/// CPU time (user + system) a process has used so far, in ms (Linux `/proc/<pid>/stat`).
fn cpu_ms(pid: u32) -> f64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    // Fields after the `(comm)`: state is field 3, utime 14, stime 15.
    let Some(rest) = s.rsplit_once(')').map(|(_, r)| r) else { return 0.0 };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // rest starts at field 3, so utime (14) is index 11, stime (15) index 12; 100 ticks/s.
    (ticks(11) + ticks(12)) * 10.0
}

/// Totals of interleaved rounds.
#[derive(Default)]
struct Agg {
    reqs: f64,
    secs: f64,
    bad: u64,
    cpu_ms: f64,
    client_cpu_ms: f64,
    samples: Samples,
}

impl Agg {
    fn rate(&self) -> f64 {
        self.reqs / self.secs.max(1e-9)
    }
    /// Load-generator CPU microseconds per successful request.
    fn client_cpu_us(&self) -> f64 {
        self.client_cpu_ms * 1000.0 / self.reqs.max(1.0)
    }
    /// Server CPU microseconds per successful request.
    fn cpu_us(&self) -> f64 {
        self.cpu_ms * 1000.0 / self.reqs.max(1.0)
    }
}

/// Runs `ROUNDS` × 1 s of `f` on each network, alternating, so both see the same background load.
async fn interleaved<F, Fut>(rust: &Net, node: &Net, f: F) -> (Agg, Agg)
where
    F: Fn(SocketAddr, Duration) -> Fut,
    Fut: std::future::Future<Output = (f64, u64, Samples)>,
{
    const ROUNDS: usize = 5;
    let round = RUN / ROUNDS as u32;
    let (mut r, mut n) = (Agg::default(), Agg::default());
    for _ in 0..ROUNDS {
        for (net, agg) in [(rust, &mut r), (node, &mut n)] {
            let c0 = cpu_ms(net.pid);
            let me0 = cpu_ms(std::process::id());
            let t0 = Instant::now();
            let (rate, bad, samples) = f(net.apis[0], round).await;
            let secs = t0.elapsed().as_secs_f64();
            agg.cpu_ms += cpu_ms(net.pid) - c0;
            agg.client_cpu_ms += cpu_ms(std::process::id()) - me0;
            agg.reqs += rate * secs;
            agg.secs += secs;
            agg.bad += bad;
            agg.samples.extend(samples);
        }
    }
    (r, n)
}

/// Announce at Grape 1, poll Grape n-1 until the service is visible; median of `rounds` (ms).
async fn visible_latency(net: &Net, tag: &str, rounds: usize) -> f64 {
    let (from, to) = (net.apis[1], net.apis[net.apis.len() - 1]);
    let mut ms = Vec::new();
    let mut poll = Conn::open(to).await.expect("connect");
    for r in 0..rounds {
        let name = format!("bench:visible:{tag}:{r}");
        let t0 = Instant::now();
        let announced = post_once(from, "/announce", json!([name, 5000 + r])).await;
        assert!(announced.as_ref().is_some_and(|(s, b)| announce_ok(*s, b)), "announce failed: {announced:?}");
        loop {
            let body = json!({"rid": "x", "data": name}).to_string();
            let hit = match poll.post("/lookup", body).await {
                Some((200, b)) => b.len() > 2,
                Some(_) => false,
                None => {
                    poll = Conn::open(to).await.expect("reconnect");
                    false
                }
            };
            if hit {
                break;
            }
            assert!(t0.elapsed() < T, "{tag}: service never became visible");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        ms.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    ms.sort_by(f64::total_cmp);
    ms[ms.len() / 2]
}

/// Announces `count` distinct services through Grape 0 with 50 clients; returns the RSS (KiB).
async fn memory_with(net: &Net, count: usize) -> (u64, f64) {
    let t0 = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let (next, failed, addr) = (next.clone(), failed.clone(), net.apis[0]);
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(addr).await;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count as u64 {
                    break;
                }
                let body = format!(r#"{{"rid":"x","data":["bench:mem:service:{i:06}",{}]}}"#, 1024 + (i % 60000));
                let done = match conn.as_mut() {
                    Some(c) => c.post("/announce", body).await,
                    None => None,
                };
                if !done.is_some_and(|(s, b)| announce_ok(s, &b)) {
                    failed.fetch_add(1, Ordering::Relaxed);
                    if conn.is_none() {
                        conn = Conn::open(addr).await;
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(120), t).await;
    }
    let secs = t0.elapsed().as_secs_f64();
    let f = failed.load(Ordering::Relaxed);
    if f > 0 {
        eprintln!("  {f} of {count} announces failed");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    (rss_kib(net.pid).unwrap_or(0), count as f64 / secs)
}

fn child(n: usize) {
    // Like the `grape` CLI: a multi-thread runtime (GRAPE_BENCH_THREADS sets its worker count).
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if let Some(t) = std::env::var("GRAPE_BENCH_THREADS").ok().and_then(|t| t.parse().ok()) {
        b.worker_threads(t);
    }
    let rt = b.enable_all().build().expect("runtime");
    rt.block_on(async move {
        let net = grenache::grape::Testnet::start_with(n, |c| {
            c.max_peers(1_000_000);
        })
        .await
        .expect("testnet");
        let ports: Vec<u16> = net.grapes().iter().map(|g| g.api_addr().port()).collect();
        let floor = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind floor");
        let floor_port = floor.local_addr().expect("floor addr").port();
        tokio::spawn(floor_server(floor));
        println!("{}", json!({"event": "started", "api_ports": ports, "floor_port": floor_port}));
        // Run until stdin closes.
        let mut stdin = BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(_)) = stdin.next_line().await {}
        net.stop().await;
    });
}

/// The machine's floor for an HTTP request/reply over loopback TCP: a server that does no HTTP
/// work at all. For each request it finds the end of the head and the `Content-Length`, skips
/// the body and writes a canned `/lookup` reply, one `write` per reply. What it costs per
/// request is mostly the kernel's TCP path, which every server on this machine pays; a real
/// server cannot be cheaper.
async fn floor_server(listener: tokio::net::TcpListener) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const REPLY: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 18\r\n\r\n[\"127.0.0.1:4242\"]";
    while let Ok((mut s, _)) = listener.accept().await {
        let _ = s.set_nodelay(true);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 16 * 1024];
            let mut have = 0;
            loop {
                let Ok(n) = s.read(&mut buf[have..]).await else { return };
                if n == 0 {
                    return;
                }
                have += n;
                let mut replies = 0;
                while let Some(end) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") {
                    let len = httpload::content_length(&buf[..end]).unwrap_or(0);
                    let total = end + 4 + len;
                    if have < total {
                        break;
                    }
                    buf.copy_within(total..have, 0);
                    have -= total;
                    replies += 1;
                }
                if have == buf.len() {
                    return;
                }
                if replies > 0 && s.write_all(&REPLY.repeat(replies)).await.is_err() {
                    return;
                }
            }
        });
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--child") {
        let n = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(2);
        return child(n);
    }
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(bench());
}

async fn bench() {
    grenache_e2e::require_node_peers();
    let started = Instant::now();
    let mut rows = Vec::new();

    eprintln!("[1/4] /lookup and /announce rates, 2-Grape networks");
    let (rn, nn) = (rust_net(2).await, node_net(2).await);
    for net in [&rn, &nn] {
        let r = post_once(net.apis[0], "/announce", json!(["bench:lookup", 4242])).await;
        assert!(r.as_ref().is_some_and(|(s, b)| announce_ok(*s, b)), "announce failed: {r:?}");
    }
    let (mut rl, mut nl) = interleaved(&rn, &nn, lookup_rate).await;
    eprintln!(
        "  lookup: rust {:.0}/s ({} bad, p50 {} us, {:.1} us server CPU/req, {:.1} us client CPU/req), node {:.0}/s ({} bad, p50 {} us, {:.1} us server CPU/req, {:.1} us client CPU/req)",
        rl.rate(),
        rl.bad,
        rl.samples.percentile_us(50.0),
        rl.cpu_us(),
        rl.client_cpu_us(),
        nl.rate(),
        nl.bad,
        nl.samples.percentile_us(50.0),
        nl.cpu_us(),
        nl.client_cpu_us()
    );
    rows.push(Row {
        metric: "/lookup, 50 keep-alive clients".into(),
        ours: rl.rate(),
        reference: nl.rate(),
        unit: "req/s".into(),
        higher_is_better: true,
    });
    rows.push(Row {
        metric: "/lookup p99 latency under that load".into(),
        ours: rl.samples.percentile_us(99.0) as f64 / 1000.0,
        reference: nl.samples.percentile_us(99.0) as f64 / 1000.0,
        unit: "ms".into(),
        higher_is_better: false,
    });
    rows.push(Row {
        metric: "/lookup server CPU per request".into(),
        ours: rl.cpu_us(),
        reference: nl.cpu_us(),
        unit: "us".into(),
        higher_is_better: false,
    });
    if let Some(floor) = rn.floor {
        // The same load on a server that does no HTTP work (the machine's floor), beside Node.
        let mut f = Agg::default();
        for _ in 0..5 {
            let (c0, t0) = (cpu_ms(rn.pid), Instant::now());
            let (rate, bad, _) = lookup_rate(floor, RUN / 5).await;
            let secs = t0.elapsed().as_secs_f64();
            f.cpu_ms += cpu_ms(rn.pid) - c0;
            f.reqs += rate * secs;
            f.secs += secs;
            f.bad += bad;
        }
        eprintln!("  floor (canned replies, no HTTP work): {:.0}/s ({} bad, {:.1} us server CPU/req)", f.rate(), f.bad, f.cpu_us());
        rows.push(Row {
            metric: "floor: canned reply over TCP, same load (no Grape)".into(),
            ours: f.rate(),
            reference: nl.rate(),
            unit: "req/s".into(),
            higher_is_better: true,
        });
        rows.push(Row {
            metric: "floor: server CPU per request".into(),
            ours: f.cpu_us(),
            reference: nl.cpu_us(),
            unit: "us".into(),
            higher_is_better: false,
        });
    }
    let (ra, na) = interleaved(&rn, &nn, announce_rate).await;
    eprintln!(
        "  announce: rust {:.0}/s ({} bad, {:.1} us server CPU/req), node {:.0}/s ({} bad, {:.1} us server CPU/req)",
        ra.rate(),
        ra.bad,
        ra.cpu_us(),
        na.rate(),
        na.bad,
        na.cpu_us()
    );
    rows.push(Row {
        metric: "/announce, 50 clients re-announcing (Rust: 1 DHT round/s/service)".into(),
        ours: ra.rate(),
        reference: na.rate(),
        unit: "req/s".into(),
        higher_is_better: true,
    });
    rows.push(Row {
        metric: "/announce server CPU per request".into(),
        ours: ra.cpu_us(),
        reference: na.cpu_us(),
        unit: "us".into(),
        higher_is_better: false,
    });
    drop((rn, nn));

    if std::env::args().any(|a| a == "--rates-only") {
        print_table("Grape: grenache-rs vs grenache-grape 1.0.0 (Node), same machine, same run", &rows);
        return;
    }
    eprintln!("[2/4] announce-to-visible latency, 50-Grape networks");
    let rn = rust_net(50).await;
    let rlat = visible_latency(&rn, "rust", 10).await;
    drop(rn);
    let nn = node_net(50).await;
    let nlat = visible_latency(&nn, "node", 10).await;
    drop(nn);
    eprintln!("  rust {rlat:.1} ms, node {nlat:.1} ms");
    rows.push(Row {
        metric: "announce→visible, 50 Grapes (median of 10)".into(),
        ours: rlat,
        reference: nlat,
        unit: "ms".into(),
        higher_is_better: false,
    });

    eprintln!("[3/4] memory: Rust with 100 000 services, Node with 10 000 (its cap)");
    let rn = rust_net(2).await;
    let rbase = rss_kib(rn.pid).unwrap_or(0);
    let (rrss, rrate) = memory_with(&rn, 100_000).await;
    // Check the services are really held.
    let seen = post_once(rn.apis[1], "/lookup", json!("bench:mem:service:099999")).await;
    eprintln!("  rust: {rbase} KiB idle, {rrss} KiB with 100k ({rrate:.0} new announces/s); last one visible: {:?}", seen.map(|(_, b)| b));
    drop(rn);
    let nn = node_net(2).await;
    let nbase = rss_kib(nn.pid).unwrap_or(0);
    let (nrss, nrate) = memory_with(&nn, 10_000).await;
    eprintln!("  node: {nbase} KiB idle, {nrss} KiB with 10k ({nrate:.0} new announces/s)");
    drop(nn);
    rows.push(Row {
        metric: "RSS of the process (2 Grapes): Rust 100k services, Node 10k (cap)".into(),
        ours: rrss as f64 / 1024.0,
        reference: nrss as f64 / 1024.0,
        unit: "MiB".into(),
        higher_is_better: false,
    });
    rows.push(Row {
        metric: "announces of new names through one Grape".into(),
        ours: rrate,
        reference: nrate,
        unit: "req/s".into(),
        higher_is_better: true,
    });

    eprintln!("[4/4] done in {:.0} s", started.elapsed().as_secs_f64());
    print_table("Grape: grenache-rs vs grenache-grape 1.0.0 (Node), same machine, same run", &rows);
    println!();
    println!(
        "targets: lookup >= 5x: {}; announce >= 10x: {}; 100k services < 64 MiB: {}",
        if rl.rate() >= 5.0 * nl.rate() { "met" } else { "MISSED" },
        if ra.rate() >= 10.0 * na.rate() { "met" } else { "MISSED" },
        if rrss < 64 * 1024 { "met" } else { "MISSED" }
    );
}
