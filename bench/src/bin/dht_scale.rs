//! A mixed network of real Grape processes under churn: ours (the `grape` binary) beside Node
//! reference Grapes (grenache-grape 1.0.0, `node tests/interop/grape.js`), with workers announcing
//! services and clients looking them up and calling them while Grapes and workers are killed and
//! restarted at random.
//!
//! ```sh
//! cargo build --release -p grenache-cli --bin grape -p grenache-bench --bin dht_scale
//! target/release/dht_scale [--duration 600 ...]
//! ```
//!
//! Options (defaults in brackets): `--grapes N` [100] Grape processes in all, `--node-grapes N` [20]
//! of them Node reference Grapes, `--services N` [1000] service names, `--workers N` [200] workers
//! (in this process: an HTTP RPC server each, announcing its services through one Grape, its home,
//! service `s` served by worker `s mod workers`), `--duration S` [600] seconds of churn,
//! `--churn F` [0.333] fraction of the Grapes and of the workers killed and restarted during it,
//! `--rate R` [10] client lookups per second, `--announce-interval S` [60] (the announce loop
//! of `PeerRpcServer`, jittered ±50 %), `--seed S` [1], `--no-netns`.
//!
//! Wiring: Grapes 0-2 are ours and are the seeds (never killed); every other Grape bootstraps from
//! the seeds and from its predecessor (a Node Grape only from a predecessor of ours: it never
//! retries its bootstrap). Two Grapes of each kind are probes: never killed, used by nobody but
//! the UDP count below. A killed Grape gets SIGKILL and is restarted 2-10 s later on the same
//! ports, with the same bootstrap list. A worker is stopped in one of three ways in turn: graceful
//! with unannounce (`PeerRpcServer::shutdown`) or graceful without (announces stopped, requests
//! drained), both as a rolling restart (its replacement, on a new port, is up and announced
//! first), or abrupt (closed at once, a crash; the replacement comes 1-5 s later).
//!
//! Measured, ours beside Node's wherever a Grape is involved:
//! * lookup success: a client looks a random service with a running worker up through a random
//!   running Grape and calls the addresses it got until one answers;
//! * announce-to-visible latency: from a worker's first announce until a lookup through another
//!   Grape returns it (polled every 250 ms);
//! * staleness after a worker stops: time from the start of its stop until lookups through a
//!   Grape of each kind no longer return it (polled every 0.5 s for 10 s, then every 2 s, up to
//!   200 s: after the churn the network runs on until the last of these ends), per way of
//!   stopping;
//! * VmRSS of every Grape process after setup and at the end;
//! * UDP datagrams per lookup: the harness moves itself (and so every Grape) into a network
//!   namespace of its own (needs root; `--no-netns` or no root: not measured) where nftables
//!   counts the datagrams each Grape's DHT port sends and receives; a probe Grape answers one
//!   lookup at a time, and the datagrams of its port during the lookup less its idle rate
//!   measured just before are that lookup's.
//!
//! Bounded: a watchdog ends the run at `duration + 600 s` whatever happens. Every child process
//! is killed at the end, on a panic, on Ctrl-C/SIGTERM and by the watchdog, and dies with this
//! process anyway (`PR_SET_PDEATHSIG`); the network namespace goes with the last of them.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use grenache::link::Link;
use grenache::rpc::{ClientTransport, OutgoingRequest, PeerRpcServer, Reply, Request, ServerTransport};
use grenache::transport::http::{HttpClient, HttpServer, HttpServerConfig};
use grenache_e2e::grapes::{local, post};
use grenache_e2e::{free_port, interop_dir, require_node_peers, workspace_dir};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};

// ---------------------------------------------------------------------------------------------
// Options

#[derive(Debug, Clone)]
struct Opts {
    grapes: usize,
    node_grapes: usize,
    services: usize,
    workers: usize,
    duration: Duration,
    churn: f64,
    rate: f64,
    announce_interval: Duration,
    seed: u64,
    netns: bool,
}

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

fn parse<T: std::str::FromStr>(name: &str, default: T) -> T {
    match arg(name) {
        None => default,
        Some(v) => v.parse().unwrap_or_else(|_| {
            eprintln!("dht_scale: bad value for {name}: {v}");
            std::process::exit(2)
        }),
    }
}

impl Opts {
    fn from_args() -> Opts {
        let o = Opts {
            grapes: parse("--grapes", 100),
            node_grapes: parse("--node-grapes", 20),
            services: parse("--services", 1000),
            workers: parse("--workers", 200),
            duration: Duration::from_secs(parse("--duration", 600)),
            churn: parse("--churn", 0.333),
            rate: parse("--rate", 10.0),
            announce_interval: Duration::from_secs(parse("--announce-interval", 60)),
            seed: parse("--seed", 1),
            netns: !std::env::args().any(|a| a == "--no-netns"),
        };
        let ours = o.grapes.saturating_sub(o.node_grapes);
        if ours < SEEDS + 2 || (o.node_grapes > 0 && o.node_grapes < 2) || o.grapes > 5000 || o.workers == 0 || o.services < o.workers {
            eprintln!(
                "dht_scale: need {} to 5000 Grapes of ours, 0 or at least 2 Node Grapes, and at least one service per worker",
                SEEDS + 2
            );
            std::process::exit(2)
        }
        if !(0.0..=1.0).contains(&o.churn) || o.rate <= 0.0 || o.rate > 1000.0 {
            eprintln!("dht_scale: --churn must be within 0..1 and --rate within 0..1000");
            std::process::exit(2)
        }
        o
    }
}

/// Grapes 0..SEEDS are ours, never killed, and every Grape bootstraps from them.
const SEEDS: usize = 3;
/// Probe Grapes of each kind (never killed, used only to count datagrams per lookup).
const PROBES: usize = 2;
/// The wait for one HTTP call to a Grape.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a stopped worker's staleness is followed at most.
const STALE_CAP: Duration = Duration::from_secs(200);
/// How long a new worker's visibility is followed at most.
const VISIBLE_CAP: Duration = Duration::from_secs(60);
/// What the watchdog adds to `--duration`: setup, settling and teardown.
const SETUP_AND_TEARDOWN: Duration = Duration::from_secs(600);

// ---------------------------------------------------------------------------------------------
// Child processes: every pid is registered here and killed on every way out.

static CHILDREN: Mutex<BTreeSet<i32>> = Mutex::new(BTreeSet::new());

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn kill_all_children() {
    let pids: Vec<i32> = lock(&CHILDREN).iter().copied().collect();
    for pid in pids {
        // SAFETY: kill(2) with a pid this process spawned; no memory is involved.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
}

/// Spawns `cmd` with its own death tied to this process's (PR_SET_PDEATHSIG) and registers it.
fn spawn(mut cmd: Command) -> std::io::Result<(Child, i32)> {
    cmd.kill_on_drop(true);
    // SAFETY: the closure runs in the child between fork and exec and only calls prctl(2) and
    // getppid(2), both async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            // The parent died before prctl: do not outlive it.
            if libc::getppid() == 1 {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    let pid = child.id().map(|p| p as i32).unwrap_or(0);
    lock(&CHILDREN).insert(pid);
    Ok((child, pid))
}

async fn kill_child(mut child: Child, pid: i32) {
    let _ = child.start_kill();
    let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
    lock(&CHILDREN).remove(&pid);
}

// ---------------------------------------------------------------------------------------------
// The network namespace and its datagram counters.

/// What [`isolate`] achieved.
#[derive(Debug, Clone, Copy, Default)]
struct Isolation {
    /// In a network namespace of its own: Grape ports are fixed (DHT `20000 + i`, API
    /// `30000 + i`), below the namespace's ephemeral range (moved to 40000-60999), so no client
    /// socket or worker ever takes a port a Grape restarts on.
    netns: bool,
    /// nftables counts the datagrams of each Grape port.
    counting: bool,
}

/// First fixed DHT and API ports in the namespace, and the first spare API port.
const DHT_BASE: u16 = 20000;
const API_BASE: u16 = 30000;
const SPARE_API_BASE: u16 = 36000;

/// Moves this process into a new network namespace with loopback up and an nftables table that
/// will count datagrams per Grape port. Must run before any thread exists (a namespace is per
/// thread, and threads started later inherit it). Nothing when it cannot (not root, no nft).
fn isolate() -> Isolation {
    // SAFETY: unshare(2) on the only thread of the process.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        eprintln!("dht_scale: cannot make a network namespace ({}); UDP datagrams are not counted", std::io::Error::last_os_error());
        return Isolation::default();
    }
    let ok = |prog: &str, args: &[&str]| std::process::Command::new(prog).args(args).status().is_ok_and(|s| s.success());
    if !ok("ip", &["link", "set", "lo", "up"]) {
        eprintln!("dht_scale: cannot bring loopback up in the new network namespace");
        std::process::exit(1)
    }
    if std::fs::write("/proc/sys/net/ipv4/ip_local_port_range", "40000 60999").is_err() {
        eprintln!("dht_scale: cannot move the namespace's ephemeral port range");
        std::process::exit(1)
    }
    if !(ok("nft", &["add", "table", "inet", "dht_scale"])
        && ok("nft", &["add", "chain", "inet", "dht_scale", "out", "{ type filter hook output priority 0; }"]))
    {
        eprintln!("dht_scale: nft is missing or failed; UDP datagrams are not counted");
        return Isolation { netns: true, counting: false };
    }
    Isolation { netns: true, counting: true }
}

fn nft_count_ports(ports: &[u16]) {
    let mut script = String::new();
    for p in ports {
        script.push_str(&format!("add rule inet dht_scale out udp sport {p} counter\nadd rule inet dht_scale out udp dport {p} counter\n"));
    }
    let ok = std::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().map(|mut i| i.write_all(script.as_bytes())).transpose()?;
            c.wait()
        })
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("dht_scale: cannot add the nftables counters");
    }
}

/// Datagrams sent from and received on each counted port, as (sent, received).
async fn nft_counters() -> HashMap<u16, (u64, u64)> {
    let out = Command::new("nft").args(["-j", "list", "chain", "inet", "dht_scale", "out"]).output().await;
    let mut m: HashMap<u16, (u64, u64)> = HashMap::new();
    let Ok(out) = out else { return m };
    let Ok(v) = serde_json::from_slice::<Value>(&out.stdout) else {
        return m;
    };
    for item in v["nftables"].as_array().into_iter().flatten() {
        let Some(expr) = item["rule"]["expr"].as_array() else {
            continue;
        };
        let (mut field, mut port, mut packets) = (None, None, None);
        for e in expr {
            if let Some(f) = e["match"]["left"]["payload"]["field"].as_str() {
                field = Some(f.to_string());
                port = e["match"]["right"].as_u64().map(|p| p as u16);
            }
            if let Some(p) = e["counter"]["packets"].as_u64() {
                packets = Some(p);
            }
        }
        if let (Some(f), Some(port), Some(n)) = (field, port, packets) {
            let e = m.entry(port).or_default();
            if f == "sport" { e.0 = n } else { e.1 = n }
        }
    }
    m
}

/// `(OutDatagrams, RcvbufErrors)` of the namespace's UDP.
fn udp_snmp() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("Udp:")).collect();
    if lines.len() < 2 {
        return (0, 0);
    }
    let (h, v): (Vec<&str>, Vec<&str>) = (lines[0].split_whitespace().collect(), lines[1].split_whitespace().collect());
    let get = |name: &str| h.iter().position(|x| *x == name).and_then(|i| v.get(i)?.parse().ok()).unwrap_or(0);
    (get("OutDatagrams"), get("RcvbufErrors"))
}

// ---------------------------------------------------------------------------------------------
// A small seeded generator (the schedule depends on `--seed` only).

#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn between(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }
}

// ---------------------------------------------------------------------------------------------
// Grapes

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Ours,
    Node,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Ours => "ours",
            Kind::Node => "node ref",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Seed,
    Probe,
    Plain,
}

#[derive(Debug)]
struct Running {
    child: Child,
    pid: i32,
    /// A Node Grape exits when its stdin closes.
    _stdin: Option<ChildStdin>,
}

#[derive(Debug)]
struct GrapeSlot {
    idx: usize,
    kind: Kind,
    role: Role,
    dht_port: u16,
    api_port: AtomicU16,
    bootstrap: Vec<String>,
    up: AtomicBool,
    run: Mutex<Option<Running>>,
    restarts: AtomicU32,
    rss_start: AtomicU64,
}

impl GrapeSlot {
    fn api(&self) -> SocketAddr {
        local(self.api_port.load(Ordering::Relaxed))
    }
    fn pid(&self) -> Option<i32> {
        lock(&self.run).as_ref().map(|r| r.pid)
    }
}

/// The `grape` binary beside this one (same profile); built when missing. Build both at once
/// (`cargo build --release -p grenache-cli --bin grape -p grenache-bench --bin dht_scale`): cargo
/// rebuilds the core when the two are built one after the other (the LTO mode of a graph with
/// and without the FFI library differs).
fn grape_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    let bin = dir.join("grape");
    if bin.exists() {
        eprintln!("grape binary: {}", bin.display());
        return bin;
    }
    let release = dir.file_name().is_some_and(|n| n == "release");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut args = vec!["build", "-q", "-p", "grenache-cli", "--bin", "grape"];
    if release {
        args.push("--release");
    }
    eprintln!("building the grape binary: cargo {}", args.join(" "));
    let built = std::process::Command::new(&cargo).args(&args).current_dir(workspace_dir()).status().is_ok_and(|s| s.success());
    if !built || !bin.exists() {
        eprintln!("dht_scale: cannot build the grape binary");
        std::process::exit(1)
    }
    bin
}

async fn spawn_ours(bin: &PathBuf, dht: u16, api: u16, bootstrap: &[String]) -> Option<Running> {
    let mut cmd = Command::new(bin);
    cmd.args(["--dp", &dht.to_string(), "--aph", &api.to_string(), "--bn", &bootstrap.join(",")])
        .args(["-b", "127.0.0.1", "--dht-bind", "127.0.0.1", "--log-level", "error"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let (mut child, pid) = spawn(cmd).ok()?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(Some(st)) = child.try_wait() {
            eprintln!("grape on ports {dht}/{api} exited: {st}");
            lock(&CHILDREN).remove(&pid);
            return None;
        }
        if tokio::net::TcpStream::connect(local(api)).await.is_ok() {
            return Some(Running { child, pid, _stdin: None });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    kill_child(child, pid).await;
    None
}

async fn spawn_node(dht: u16, api: u16, bootstrap: &[String]) -> Option<Running> {
    let dir = interop_dir();
    let mut cmd = Command::new("node");
    cmd.env("NODE_PATH", dir.join("node_modules"))
        .arg(dir.join("grape.js"))
        .args(["--dht-port", &dht.to_string(), "--api-port", &api.to_string(), "--bootstrap", &bootstrap.join(",")])
        .current_dir(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let (mut child, pid) = spawn(cmd).ok()?;
    let stdin = child.stdin.take();
    let stdout = child.stdout.take()?;
    let mut lines = BufReader::new(stdout).lines();
    let started = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(l)) = lines.next_line().await {
            if let Ok(v) = serde_json::from_str::<Value>(&l) {
                if v["event"] == "started" {
                    return true;
                }
                if v["event"] == "error" {
                    return false;
                }
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    if !started {
        kill_child(child, pid).await;
        return None;
    }
    // It prints a line per announce stored: read them all, or it blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Some(Running { child, pid, _stdin: stdin })
}

/// The next spare API port in a namespace of our own (0: not in one, ask the OS).
static SPARE: AtomicU16 = AtomicU16::new(0);

/// Starts the Grape of `slot` (on its DHT port; on a new API port when its own cannot be bound).
async fn start_grape(slot: &GrapeSlot, bin: &PathBuf) -> bool {
    for attempt in 0..5 {
        if attempt >= 2 {
            let spare = if SPARE.load(Ordering::Relaxed) > 0 { SPARE.fetch_add(1, Ordering::Relaxed) } else { free_port() };
            slot.api_port.store(spare, Ordering::Relaxed);
        }
        let api = slot.api_port.load(Ordering::Relaxed);
        let run = match slot.kind {
            Kind::Ours => spawn_ours(bin, slot.dht_port, api, &slot.bootstrap).await,
            Kind::Node => spawn_node(slot.dht_port, api, &slot.bootstrap).await,
        };
        if let Some(r) = run {
            *lock(&slot.run) = Some(r);
            slot.up.store(true, Ordering::Release);
            return true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!("grape {} ({}) did not start in 5 attempts", slot.idx, slot.kind.name());
    false
}

async fn kill_grape(slot: &GrapeSlot) {
    slot.up.store(false, Ordering::Release);
    let run = lock(&slot.run).take();
    if let Some(r) = run {
        kill_child(r.child, r.pid).await;
    }
}

fn rss_kib(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
}

// ---------------------------------------------------------------------------------------------
// Workers

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopMode {
    Unannounce,
    Graceful,
    Abrupt,
}

impl StopMode {
    fn name(self) -> &'static str {
        match self {
            StopMode::Unannounce => "graceful, unannounce",
            StopMode::Graceful => "graceful, no unannounce",
            StopMode::Abrupt => "abrupt",
        }
    }
}

#[derive(Debug)]
struct WorkerInst {
    names: Vec<String>,
    home: usize,
    srv: PeerRpcServer,
    http: Arc<HttpServer>,
    addr: String,
    announced: AtomicBool,
}

// ---------------------------------------------------------------------------------------------
// Measurements

#[derive(Debug, Default)]
struct LookupStats {
    attempts: u64,
    grape_down: u64,
    errors: u64,
    found_live: u64,
    call_ok: u64,
    addrs: u64,
    stale_addrs: u64,
    latency: Vec<f64>,
}

#[derive(Debug, Default)]
struct Metrics {
    lookups: [LookupStats; 2],
    /// Announce-to-visible seconds by the kind looked up through; misses (not within the cap).
    visible: [Vec<f64>; 2],
    invisible: [u64; 2],
    announce_failed: u64,
    /// (mode, home kind, via kind, seconds or None when still returned at the end or the cap).
    stale: Vec<(StopMode, Kind, Kind, Option<f64>)>,
    /// Datagrams (sent + received, sent) of one lookup through a probe Grape of each kind.
    udp: [Vec<(f64, f64)>; 2],
    grape_kills: [u64; 2],
    grape_restart_failed: u64,
    worker_stops: u64,
}

fn k(kind: Kind) -> usize {
    match kind {
        Kind::Ours => 0,
        Kind::Node => 1,
    }
}

#[derive(Debug)]
struct Ctx {
    opts: Opts,
    grapes: Vec<GrapeSlot>,
    workers: Vec<Mutex<Option<Arc<WorkerInst>>>>,
    rng: Mutex<Rng>,
    metrics: Mutex<Metrics>,
    client: HttpClient,
    /// The churn is over: load, churn and visibility probes end.
    stop: AtomicBool,
    /// Staleness probes still running, awaited (up to [`STALE_CAP`]) before the report.
    stale_probes: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    bin: PathBuf,
    counting: bool,
}

impl Ctx {
    fn rand_below(&self, n: usize) -> usize {
        lock(&self.rng).below(n)
    }
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
    /// A random running Grape that is not a probe, of `kind` if given, other than `not`.
    fn pick_grape(&self, kind: Option<Kind>, not: Option<usize>) -> Option<&GrapeSlot> {
        let c: Vec<&GrapeSlot> = self
            .grapes
            .iter()
            .filter(|g| g.role != Role::Probe && g.up.load(Ordering::Acquire))
            .filter(|g| kind.is_none_or(|k| g.kind == k) && Some(g.idx) != not)
            .collect();
        (!c.is_empty()).then(|| c[self.rand_below(c.len())])
    }
    fn name(s: usize) -> String {
        format!("scale:svc:{s}")
    }
    /// A random service whose worker runs and announced, with that worker.
    fn pick_service(&self) -> Option<(String, Arc<WorkerInst>)> {
        for _ in 0..50 {
            let s = self.rand_below(self.opts.services);
            let w = lock(&self.workers[s % self.opts.workers]).clone();
            if let Some(w) = w.filter(|w| w.announced.load(Ordering::Acquire)) {
                return Some((Ctx::name(s), w));
            }
        }
        None
    }
}

/// `/lookup` of `name` through `api`: the addresses, or None when the call failed.
async fn lookup(api: SocketAddr, name: &str) -> Option<Vec<String>> {
    let body = json!({"rid": "scale", "data": name}).to_string();
    let (status, text) = tokio::time::timeout(CALL_TIMEOUT, post(api, "/lookup", &body)).await.ok()?;
    if status != 200 {
        return None;
    }
    serde_json::from_str::<Vec<String>>(&text).ok()
}

fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s[(((s.len() - 1) as f64) * p).round() as usize]
}

// ---------------------------------------------------------------------------------------------
// Worker life

async fn start_worker(ctx: Arc<Ctx>, wid: usize, home: usize) {
    let names: Vec<String> = (wid..ctx.opts.services).step_by(ctx.opts.workers).map(Ctx::name).collect();
    let link = match Link::with_grape(format!("http://{}", ctx.grapes[home].api())) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("worker {wid}: {e}");
            return;
        }
    };
    let handler = Arc::new(|req: Request, reply: Reply| reply.ok(json!(req.key)));
    let http = match HttpServer::bind("127.0.0.1:0".parse().expect("addr"), handler, HttpServerConfig::default()).await {
        Ok(h) => Arc::new(h),
        Err(e) => {
            eprintln!("worker {wid}: cannot listen: {e}");
            return;
        }
    };
    let addr = format!("127.0.0.1:{}", http.local_addr().port());
    let srv = PeerRpcServer::new(link, http.clone() as Arc<dyn ServerTransport>);
    let t0 = Instant::now();
    let handles: Vec<_> = names.iter().map(|n| srv.start_announcing(n, ctx.opts.announce_interval)).collect();
    let inst = Arc::new(WorkerInst { names, home, srv, http, addr, announced: AtomicBool::new(false) });
    *lock(&ctx.workers[wid]) = Some(inst.clone());
    // Clients use it once its first announces finished.
    let i2 = inst.clone();
    let c2 = ctx.clone();
    tokio::spawn(async move {
        let res = futures_util::future::join_all(handles.iter().map(|h| h.first_result(Duration::from_secs(30)))).await;
        if res.iter().any(|r| r.is_err()) {
            lock(&c2.metrics).announce_failed += 1;
        }
        i2.announced.store(true, Ordering::Release);
    });
    // Announce-to-visible: lookups of its first name through another Grape, every 250 ms.
    tokio::spawn(async move {
        let name = inst.names[0].clone();
        let mut via: Option<(usize, Kind)> = None;
        while !ctx.stopping() && t0.elapsed() < VISIBLE_CAP {
            let (gi, kind) = match via.filter(|(g, _)| ctx.grapes[*g].up.load(Ordering::Acquire)) {
                Some(v) => v,
                None => match ctx.pick_grape(None, Some(inst.home)) {
                    Some(g) => (g.idx, g.kind),
                    None => break,
                },
            };
            via = Some((gi, kind));
            if lookup(ctx.grapes[gi].api(), &name).await.is_some_and(|v| v.contains(&inst.addr)) {
                lock(&ctx.metrics).visible[k(kind)].push(t0.elapsed().as_secs_f64());
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        if !ctx.stopping()
            && let Some((_, kind)) = via
        {
            lock(&ctx.metrics).invisible[k(kind)] += 1;
        }
    });
}

async fn stop_worker(ctx: &Arc<Ctx>, inst: Arc<WorkerInst>, mode: StopMode) {
    let home_kind = ctx.grapes[inst.home].kind;
    let t0 = Instant::now();
    // How long lookups through a Grape of each kind still return it: polled from the moment the
    // stop begins, every 0.5 s for 10 s, then every 2 s, up to STALE_CAP (after the churn too).
    for via_kind in [Kind::Ours, Kind::Node] {
        if !ctx.grapes.iter().any(|g| g.kind == via_kind) {
            continue;
        }
        let (c, inst) = (ctx.clone(), inst.clone());
        let h = tokio::spawn(async move {
            let name = inst.names[0].clone();
            let mut via: Option<usize> = None;
            let mut gone = None;
            while t0.elapsed() < STALE_CAP {
                let gi = match via.filter(|g| c.grapes[*g].up.load(Ordering::Acquire)) {
                    Some(g) => Some(g),
                    None => c.pick_grape(Some(via_kind), None).map(|g| g.idx),
                };
                via = gi;
                if let Some(gi) = gi {
                    match lookup(c.grapes[gi].api(), &name).await {
                        // An empty answer proves nothing (a Grape that just restarted knows no
                        // node yet): gone is when the live replacement is there and it is not.
                        Some(v) if !v.is_empty() && !v.contains(&inst.addr) => {
                            gone = Some(t0.elapsed().as_secs_f64());
                            break;
                        }
                        Some(_) => {}
                        None => via = None,
                    }
                }
                let every = if t0.elapsed() < Duration::from_secs(10) { 500 } else { 2000 };
                tokio::time::sleep(Duration::from_millis(every)).await;
            }
            lock(&c.metrics).stale.push((mode, home_kind, via_kind, gone));
        });
        lock(&ctx.stale_probes).push(h);
    }
    match mode {
        StopMode::Unannounce => {
            inst.srv.shutdown(Duration::from_secs(2)).await;
        }
        StopMode::Graceful => {
            for n in &inst.names {
                inst.srv.stop_announcing(n);
            }
            inst.http.drain(Duration::from_secs(2)).await;
        }
        StopMode::Abrupt => inst.srv.stop(),
    }
    lock(&ctx.metrics).worker_stops += 1;
}

// ---------------------------------------------------------------------------------------------
// Load, churn, probes

async fn one_lookup(ctx: Arc<Ctx>) {
    let Some((name, w)) = ctx.pick_service() else {
        return;
    };
    let Some(g) = ctx.pick_grape(None, None) else {
        return;
    };
    let kind = k(g.kind);
    let t = Instant::now();
    let res = lookup(g.api(), &name).await;
    let took = t.elapsed().as_secs_f64();
    let Some(mut addrs) = res else {
        let mut m = lock(&ctx.metrics);
        m.lookups[kind].attempts += 1;
        if g.up.load(Ordering::Acquire) {
            m.lookups[kind].errors += 1
        } else {
            m.lookups[kind].grape_down += 1
        }
        return;
    };
    let live = w.addr.clone();
    let found = addrs.contains(&live);
    let stale = addrs.iter().filter(|a| **a != live).count() as u64;
    // The client calls the addresses in a random order until one answers.
    for i in (1..addrs.len()).rev() {
        addrs.swap(i, ctx.rand_below(i + 1));
    }
    let mut ok = false;
    for a in &addrs {
        let req = OutgoingRequest {
            rid: "scale".into(),
            key: name.as_str().into(),
            payload_json: "\"ping\"".into(),
            timeout: Some(Duration::from_secs(3)),
            compress: false,
        };
        if matches!(ctx.client.request(a, req).await, Ok(v) if v == json!(name)) {
            ok = true;
            break;
        }
    }
    let mut m = lock(&ctx.metrics);
    let s = &mut m.lookups[kind];
    s.attempts += 1;
    s.found_live += u64::from(found);
    s.call_ok += u64::from(ok);
    s.addrs += addrs.len() as u64;
    s.stale_addrs += stale;
    s.latency.push(took);
}

async fn client_load(ctx: Arc<Ctx>, until: Instant) {
    let gap = Duration::from_secs_f64(1.0 / ctx.opts.rate);
    let limit = Arc::new(tokio::sync::Semaphore::new(64));
    let mut tick = tokio::time::interval(gap);
    while Instant::now() < until && !ctx.stopping() {
        tick.tick().await;
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            continue;
        };
        let c = ctx.clone();
        tokio::spawn(async move {
            one_lookup(c).await;
            drop(permit);
        });
    }
}

/// When the churn stops members of a population of `of`: the churn share of them, at random
/// times (seconds after the start) between 5 % and 90 % of the run, in order.
fn churn_times(ctx: &Ctx, of: usize) -> Vec<f64> {
    let d = ctx.opts.duration.as_secs_f64();
    let n = (ctx.opts.churn * of as f64).round() as usize;
    let mut times: Vec<f64> = (0..n).map(|_| lock(&ctx.rng).between(0.05 * d, 0.9 * d)).collect();
    times.sort_by(|a, b| a.total_cmp(b));
    times
}

async fn grape_churn(ctx: Arc<Ctx>, start: Instant) {
    let times = churn_times(&ctx, ctx.opts.grapes);
    let mut tasks = Vec::new();
    for t in times {
        tokio::time::sleep_until((start + Duration::from_secs_f64(t)).into()).await;
        if ctx.stopping() {
            break;
        }
        let c: Vec<usize> = ctx.grapes.iter().filter(|g| g.role == Role::Plain && g.up.load(Ordering::Acquire)).map(|g| g.idx).collect();
        if c.is_empty() {
            continue;
        }
        let gi = c[ctx.rand_below(c.len())];
        let down = lock(&ctx.rng).between(2.0, 10.0);
        let ctx = ctx.clone();
        tasks.push(tokio::spawn(async move {
            let g = &ctx.grapes[gi];
            kill_grape(g).await;
            lock(&ctx.metrics).grape_kills[k(g.kind)] += 1;
            tokio::time::sleep(Duration::from_secs_f64(down)).await;
            g.restarts.fetch_add(1, Ordering::Relaxed);
            if !start_grape(g, &ctx.bin).await {
                lock(&ctx.metrics).grape_restart_failed += 1;
            }
        }));
    }
    futures_util::future::join_all(tasks).await;
}

async fn worker_churn(ctx: Arc<Ctx>, start: Instant) {
    let times = churn_times(&ctx, ctx.opts.workers);
    let modes = [StopMode::Unannounce, StopMode::Graceful, StopMode::Abrupt];
    let mut tasks = Vec::new();
    for (i, t) in times.into_iter().enumerate() {
        tokio::time::sleep_until((start + Duration::from_secs_f64(t)).into()).await;
        if ctx.stopping() {
            break;
        }
        let wid = ctx.rand_below(ctx.opts.workers);
        let Some(inst) = lock(&ctx.workers[wid]).take() else {
            continue;
        };
        let down = lock(&ctx.rng).between(1.0, 5.0);
        let mode = modes[i % modes.len()];
        let ctx = ctx.clone();
        tasks.push(tokio::spawn(async move {
            let home = inst.home;
            if mode == StopMode::Abrupt {
                // A crash, restarted by its supervisor after a while.
                stop_worker(&ctx, inst, mode).await;
                tokio::time::sleep(Duration::from_secs_f64(down)).await;
                start_worker(ctx.clone(), wid, home).await;
            } else {
                // A rolling restart: the new worker is up and announced before the old one stops.
                start_worker(ctx.clone(), wid, home).await;
                let t = Instant::now();
                while t.elapsed() < Duration::from_secs(30)
                    && !lock(&ctx.workers[wid]).as_ref().is_some_and(|w| w.announced.load(Ordering::Acquire))
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                stop_worker(&ctx, inst, mode).await;
            }
        }));
    }
    futures_util::future::join_all(tasks).await;
}

/// Datagrams per lookup through the probe Grapes, one lookup at a time.
async fn udp_probe(ctx: Arc<Ctx>, until: Instant) {
    let probes: Vec<usize> = ctx.grapes.iter().filter(|g| g.role == Role::Probe).map(|g| g.idx).collect();
    let mut i = 0;
    while Instant::now() + Duration::from_secs(5) < until && !ctx.stopping() && !probes.is_empty() {
        let g = &ctx.grapes[probes[i % probes.len()]];
        i += 1;
        let port = g.dht_port;
        let read = || async move {
            let c = nft_counters().await.get(&port).copied().unwrap_or_default();
            (Instant::now(), c.0 as f64, (c.0 + c.1) as f64)
        };
        let (ta, sa, ba) = read().await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let (tb, sb, bb) = read().await;
        let Some((name, _)) = ctx.pick_service() else {
            continue;
        };
        if lookup(g.api(), &name).await.is_none() {
            continue;
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let (td, sd, bd) = read().await;
        let idle = (tb - ta).as_secs_f64();
        let span = (td - tb).as_secs_f64();
        let both = (bd - bb) - (bb - ba) / idle * span;
        let sent = (sd - sb) - (sb - sa) / idle * span;
        lock(&ctx.metrics).udp[k(g.kind)].push((both, sent));
    }
}

// ---------------------------------------------------------------------------------------------
// Setup, run, report

fn wiring(opts: &Opts) -> Vec<(Kind, Role)> {
    let n = opts.grapes;
    let mut kinds = vec![Kind::Ours; n];
    for j in 0..opts.node_grapes {
        kinds[SEEDS + j * (n - SEEDS) / opts.node_grapes] = Kind::Node;
    }
    let mut roles = vec![Role::Plain; n];
    for r in roles.iter_mut().take(SEEDS) {
        *r = Role::Seed;
    }
    for kind in [Kind::Ours, Kind::Node] {
        for i in (SEEDS..n).filter(|&i| kinds[i] == kind).take(PROBES) {
            roles[i] = Role::Probe;
        }
    }
    kinds.into_iter().zip(roles).collect()
}

async fn run(opts: Opts, iso: Isolation) {
    let counting = iso.counting;
    require_node_peers();
    let bin = grape_bin();
    let began = Instant::now();
    let (dht_ports, api_ports): (Vec<u16>, Vec<u16>) = if iso.netns {
        SPARE.store(SPARE_API_BASE, Ordering::Relaxed);
        (0..opts.grapes as u16).map(|i| (DHT_BASE + i, API_BASE + i)).unzip()
    } else {
        // Ports the OS called free, none twice.
        let mut seen = BTreeSet::new();
        let mut next = || loop {
            let p = free_port();
            if seen.insert(p) {
                return p;
            }
        };
        (0..opts.grapes).map(|_| (next(), next())).unzip()
    };
    let wired = wiring(&opts);
    let grapes: Vec<GrapeSlot> = wired
        .iter()
        .enumerate()
        .map(|(i, &(kind, role))| {
            let boot = bootstrap_of(&wired, i);
            GrapeSlot {
                idx: i,
                kind,
                role,
                dht_port: dht_ports[i],
                api_port: AtomicU16::new(api_ports[i]),
                bootstrap: boot.into_iter().map(|b| local(dht_ports[b]).to_string()).collect(),
                up: AtomicBool::new(false),
                run: Mutex::new(None),
                restarts: AtomicU32::new(0),
                rss_start: AtomicU64::new(0),
            }
        })
        .collect();
    if counting {
        nft_count_ports(&dht_ports);
    }
    let ctx = Arc::new(Ctx {
        workers: (0..opts.workers).map(|_| Mutex::new(None)).collect(),
        rng: Mutex::new(Rng(opts.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)),
        metrics: Mutex::new(Metrics::default()),
        client: HttpClient::default(),
        stop: AtomicBool::new(false),
        stale_probes: Mutex::new(Vec::new()),
        bin,
        counting,
        grapes,
        opts,
    });

    // 1. Grapes, one after the other (a Node Grape's bootstrap nodes must be up already).
    for g in &ctx.grapes {
        if !start_grape(g, &ctx.bin).await {
            eprintln!("dht_scale: setup failed");
            return;
        }
    }
    eprintln!("{} grapes up in {:.1}s; settling 10 s", ctx.grapes.len(), began.elapsed().as_secs_f64());
    tokio::time::sleep(Duration::from_secs(10)).await;

    // 2. Workers, over 30 s, each on a random Grape that is not a probe.
    let ramp = Duration::from_secs(30);
    for wid in 0..ctx.opts.workers {
        let home = ctx.pick_grape(None, None).map(|g| g.idx).unwrap_or(0);
        start_worker(ctx.clone(), wid, home).await;
        tokio::time::sleep(ramp / ctx.opts.workers as u32).await;
    }
    let ann_deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < ann_deadline {
        let pending = ctx.workers.iter().filter(|w| lock(w).as_ref().is_some_and(|w| !w.announced.load(Ordering::Acquire))).count();
        if pending == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for g in &ctx.grapes {
        if let Some(r) = g.pid().and_then(rss_kib) {
            g.rss_start.store(r, Ordering::Relaxed);
        }
    }
    let setup = began.elapsed();
    eprintln!(
        "{} workers announced {} services; setup took {:.1}s; churn for {}s",
        ctx.opts.workers,
        ctx.opts.services,
        setup.as_secs_f64(),
        ctx.opts.duration.as_secs()
    );

    // 3. Churn, load and probes for the duration.
    let start = Instant::now();
    let until = start + ctx.opts.duration;
    let snmp0 = udp_snmp();
    let progress = {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(60)).await;
                let m = lock(&ctx.metrics);
                let up = ctx.grapes.iter().filter(|g| g.up.load(Ordering::Relaxed)).count();
                eprintln!(
                    "t={:>4}s grapes up {up}/{} lookups {} / {} kills {:?} worker stops {}",
                    start.elapsed().as_secs(),
                    ctx.grapes.len(),
                    m.lookups[0].attempts,
                    m.lookups[1].attempts,
                    m.grape_kills,
                    m.worker_stops
                );
            }
        })
    };
    let mut jobs = vec![
        tokio::spawn(client_load(ctx.clone(), until)),
        tokio::spawn(grape_churn(ctx.clone(), start)),
        tokio::spawn(worker_churn(ctx.clone(), start)),
    ];
    if counting {
        jobs.push(tokio::spawn(udp_probe(ctx.clone(), until)));
    }
    tokio::time::sleep_until(until.into()).await;
    let snmp1 = udp_snmp();
    let churn_secs = start.elapsed().as_secs_f64();
    ctx.stop.store(true, Ordering::Relaxed);
    progress.abort();
    let _ = tokio::time::timeout(Duration::from_secs(30), futures_util::future::join_all(jobs)).await;
    let probes: Vec<_> = lock(&ctx.stale_probes).drain(..).collect();
    let unfinished = probes.iter().filter(|h| !h.is_finished()).count();
    if unfinished > 0 {
        eprintln!("waiting up to {}s for {unfinished} staleness probes", STALE_CAP.as_secs());
    }
    let _ = tokio::time::timeout(STALE_CAP + Duration::from_secs(15), futures_util::future::join_all(probes)).await;
    let rss_end: Vec<Option<u64>> = ctx.grapes.iter().map(|g| g.pid().and_then(rss_kib)).collect();

    // 4. Teardown: workers, then every Grape.
    for w in &ctx.workers {
        if let Some(w) = lock(w).take() {
            w.srv.stop();
        }
    }
    futures_util::future::join_all(ctx.grapes.iter().map(kill_grape)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    report(&ctx, &rss_end, setup, churn_secs, (snmp0, snmp1), began.elapsed());
}

/// Whom Grape `i` bootstraps from: the seeds before it, and its predecessor unless that is a
/// seed, or a Node Grape and `i` is one too (a Node Grape never retries its bootstrap, so it
/// must name Grapes that are up: the seeds and ours, which retry theirs).
fn bootstrap_of(wired: &[(Kind, Role)], i: usize) -> Vec<usize> {
    let mut boot: Vec<usize> = (0..SEEDS.min(i)).collect();
    if i > SEEDS && (wired[i].0 == Kind::Ours || wired[i - 1].0 == Kind::Ours) {
        boot.push(i - 1);
    }
    boot
}

fn report(ctx: &Ctx, rss_end: &[Option<u64>], setup: Duration, churn_secs: f64, snmp: ((u64, u64), (u64, u64)), total: Duration) {
    let o = &ctx.opts;
    let m = lock(&ctx.metrics);
    let kinds = [Kind::Ours, Kind::Node];
    let present: Vec<Kind> = kinds.into_iter().filter(|kd| ctx.grapes.iter().any(|g| g.kind == *kd)).collect();
    println!();
    println!(
        "dht_scale: {} Grapes ({} ours, {} Node reference), {} services on {} workers, {}s of churn (a fraction {} of the Grapes and of the workers killed and restarted), {} lookups/s, seed {}",
        o.grapes,
        o.grapes - o.node_grapes,
        o.node_grapes,
        o.services,
        o.workers,
        o.duration.as_secs(),
        o.churn,
        o.rate,
        o.seed
    );
    println!(
        "setup {:.0}s, churn {:.0}s, total {:.0}s; Grapes killed: {} ours, {} Node ({} restarts failed); workers stopped: {}; first announces failed: {}",
        setup.as_secs_f64(),
        churn_secs,
        total.as_secs_f64(),
        m.grape_kills[0],
        m.grape_kills[1],
        m.grape_restart_failed,
        m.worker_stops,
        m.announce_failed
    );
    println!();
    println!(
        "| lookups through | lookups | live worker found | request answered | stale addresses returned | lookup p50 / p99 ms | failed (Grape up) | Grape died meanwhile |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for kd in &present {
        let s = &m.lookups[k(*kd)];
        let ok_base = (s.attempts - s.grape_down).max(1) as f64;
        println!(
            "| {} | {} | {:.2} % | {:.2} % | {:.1} % | {:.0} / {:.0} | {} | {} |",
            kd.name(),
            s.attempts,
            100.0 * s.found_live as f64 / ok_base,
            100.0 * s.call_ok as f64 / ok_base,
            100.0 * s.stale_addrs as f64 / s.addrs.max(1) as f64,
            1000.0 * percentile(&s.latency, 0.5),
            1000.0 * percentile(&s.latency, 0.99),
            s.errors,
            s.grape_down
        );
    }
    println!();
    println!(
        "| announce-to-visible, looked up through | workers | p50 s | p99 s | max s | not visible within {}s |",
        VISIBLE_CAP.as_secs()
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for kd in &present {
        let v = &m.visible[k(*kd)];
        println!(
            "| {} | {} | {:.2} | {:.2} | {:.2} | {} |",
            kd.name(),
            v.len(),
            percentile(v, 0.5),
            percentile(v, 0.99),
            percentile(v, 1.0),
            m.invisible[k(*kd)]
        );
    }
    println!();
    println!(
        "| worker stopped | its Grape | looked up through | stops | gone p50 s | gone p90 s | gone max s | still returned after {}s |",
        STALE_CAP.as_secs()
    );
    println!("|---|---|---|---:|---:|---:|---:|---:|");
    for mode in [StopMode::Unannounce, StopMode::Graceful, StopMode::Abrupt] {
        for home in &present {
            for via in &present {
                let rows: Vec<Option<f64>> =
                    m.stale.iter().filter(|(md, h, v, _)| *md == mode && h == home && v == via).map(|r| r.3).collect();
                if rows.is_empty() {
                    continue;
                }
                let gone: Vec<f64> = rows.iter().flatten().copied().collect();
                println!(
                    "| {} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {} |",
                    mode.name(),
                    home.name(),
                    via.name(),
                    rows.len(),
                    percentile(&gone, 0.5),
                    percentile(&gone, 0.9),
                    percentile(&gone, 1.0),
                    rows.len() - gone.len()
                );
            }
        }
    }
    println!();
    println!(
        "| Grape RSS (MiB) | Grapes | start min / median / max | end, never restarted: min / median / max | end, restarted: min / median / max |"
    );
    println!("|---|---:|---:|---:|---:|");
    let mib = |v: &[f64]| {
        if v.is_empty() {
            "-".to_string()
        } else {
            format!("{:.1} / {:.1} / {:.1}", percentile(v, 0.0), percentile(v, 0.5), percentile(v, 1.0))
        }
    };
    for kd in &present {
        let gs: Vec<&GrapeSlot> = ctx.grapes.iter().filter(|g| g.kind == *kd).collect();
        let start: Vec<f64> = gs.iter().map(|g| g.rss_start.load(Ordering::Relaxed) as f64 / 1024.0).filter(|r| *r > 0.0).collect();
        let end = |restarted: bool| -> Vec<f64> {
            gs.iter()
                .filter(|g| (g.restarts.load(Ordering::Relaxed) > 0) == restarted)
                .filter_map(|g| rss_end[g.idx].map(|r| r as f64 / 1024.0))
                .collect()
        };
        println!("| {} | {} | {} | {} | {} |", kd.name(), gs.len(), mib(&start), mib(&end(false)), mib(&end(true)));
    }
    println!();
    if ctx.counting {
        println!(
            "| UDP datagrams per lookup (probe Grapes, idle rate subtracted) | lookups | sent + received mean | median | sent (queries) mean |"
        );
        println!("|---|---:|---:|---:|---:|");
        for kd in &present {
            let v = &m.udp[k(*kd)];
            let both: Vec<f64> = v.iter().map(|x| x.0).collect();
            let sent: Vec<f64> = v.iter().map(|x| x.1).collect();
            let mean = |x: &[f64]| x.iter().sum::<f64>() / x.len().max(1) as f64;
            println!("| {} | {} | {:.1} | {:.1} | {:.1} |", kd.name(), v.len(), mean(&both), percentile(&both, 0.5), mean(&sent));
        }
        let ((out0, drop0), (out1, drop1)) = snmp;
        println!();
        println!(
            "whole network during the churn: {:.0} UDP datagrams/s, {} dropped for a full receive buffer",
            (out1 - out0) as f64 / churn_secs.max(1.0),
            drop1 - drop0
        );
    } else {
        println!("UDP datagrams per lookup: not measured (needs a network namespace: root and nft)");
    }
    println!();
    println!("RSS of each Grape (KiB) at start and end (* restarted meanwhile):");
    let mut line = String::new();
    for g in &ctx.grapes {
        let tag = match g.kind {
            Kind::Ours => "o",
            Kind::Node => "n",
        };
        let star = if g.restarts.load(Ordering::Relaxed) > 0 { "*" } else { "" };
        let end = rss_end[g.idx].map(|r| r.to_string()).unwrap_or_else(|| "-".into());
        line.push_str(&format!("{}{}{}:{}/{}  ", g.idx, tag, star, g.rss_start.load(Ordering::Relaxed), end));
        if g.idx % 6 == 5 {
            println!("{}", line.trim_end());
            line.clear();
        }
    }
    if !line.is_empty() {
        println!("{}", line.trim_end());
    }
}

/// Two hundred listening workers and their connections need more descriptors than the usual soft
/// limit of 1024: raise it to the hard limit.
fn raise_fd_limit() {
    let mut l = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 && l.rlim_cur < l.rlim_max {
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}

fn main() {
    let opts = Opts::from_args();
    let iso = if opts.netns { isolate() } else { Isolation::default() };
    raise_fd_limit();
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        prev(info);
        kill_all_children();
        std::process::exit(101);
    }));
    let bound = opts.duration + SETUP_AND_TEARDOWN;
    std::thread::spawn(move || {
        std::thread::sleep(bound);
        eprintln!("dht_scale: still running after {bound:?}: stopping");
        kill_all_children();
        std::process::exit(3);
    });
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dht_scale: cannot start the runtime: {e}");
            std::process::exit(1)
        }
    };
    rt.block_on(async move {
        tokio::spawn(async {
            use tokio::signal::unix::{SignalKind, signal};
            let Ok(mut term) = signal(SignalKind::terminate()) else {
                return;
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            eprintln!("dht_scale: interrupted: stopping every Grape");
            kill_all_children();
            std::process::exit(130);
        });
        run(opts, iso).await;
    });
    kill_all_children();
    rt.shutdown_timeout(Duration::from_secs(2));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(grapes: usize, node_grapes: usize) -> Opts {
        Opts {
            grapes,
            node_grapes,
            services: 1000,
            workers: 200,
            duration: Duration::from_secs(600),
            churn: 0.333,
            rate: 10.0,
            announce_interval: Duration::from_secs(60),
            seed: 1,
            netns: false,
        }
    }

    #[test]
    fn wiring_mixes_kinds_and_keeps_node_grapes_on_ours() {
        for (n, nodes) in [(100, 20), (12, 4), (25, 20), (5, 0)] {
            let w = wiring(&opts(n, nodes));
            assert_eq!(w.len(), n);
            assert_eq!(w.iter().filter(|(k, _)| *k == Kind::Node).count(), nodes, "{n}/{nodes}");
            assert!(w[..SEEDS].iter().all(|&(k, r)| k == Kind::Ours && r == Role::Seed));
            for kind in [Kind::Ours, Kind::Node] {
                let probes = w.iter().filter(|&&(k, r)| k == kind && r == Role::Probe).count();
                let expect = if kind == Kind::Node && nodes == 0 { 0 } else { PROBES };
                assert_eq!(probes, expect, "{n}/{nodes} {kind:?}");
            }
            for i in 0..n {
                let b = bootstrap_of(&w, i);
                assert!((0..SEEDS.min(i)).all(|j| b.contains(&j)), "every seed before it");
                assert!(b.iter().all(|&j| j < i), "bootstraps only from Grapes started before it");
                if w[i].0 == Kind::Node {
                    assert!(b.iter().all(|&j| w[j].0 == Kind::Ours), "a Node Grape bootstraps from ours only");
                }
            }
        }
    }

    #[test]
    fn percentiles() {
        let v = [5.0, 1.0, 3.0, 2.0, 4.0];
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&v, 0.5), 3.0);
        assert_eq!(percentile(&v, 1.0), 5.0);
        assert!(percentile(&[], 0.5).is_nan());
    }
}
