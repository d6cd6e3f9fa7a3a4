//! Attack harness: each cheap attack of a hostile source against a Grape and the RPC servers, with
//! default settings, while well-behaved clients keep asking; ours beside the Node reference in the
//! same run where it takes part.
//!
//! `cargo run --release -p grenache-bench --bin attack [-- --secs 8] [-- --no-node]`
//!
//! Loopback only: the attacker sends from 127.0.0.2, the well-behaved clients from 127.0.0.1
//! (two sources, as on a network). The server under attack runs in a process of its own (this
//! binary re-run with `--child KIND`, or a Node script), started afresh for every row, so that
//! its resident memory and CPU time are its own. Each row: the attack starts, after 1 s the good
//! clients send a request every 50 ms for `--secs` seconds (each on a new connection, each given
//! 1 s), then the attack stops and the server is left alone 6 s.
//!
//! Columns: the share of good requests answered within 1 s, their median and 99th percentile
//! latency, the server's RSS (before, peak during, 6 s after), its CPU (share of one core during
//! the attack), and what the attacker achieved.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use grenache::dht::bencode::Value as B;
use grenache_bench::{Samples, rss_kib};
use grenache_e2e::{NodeProcess, free_port};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};
use tokio::process::{Child, Command};

const ATTACKER: &str = "127.0.0.2";
const GOOD: &str = "127.0.0.1";
const ANSWER_WITHIN: Duration = Duration::from_secs(1);
const T: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Grape,
    Http,
    Ws,
}

/// A server under attack in another process.
struct Target {
    /// The port attacked and asked (Grape: its HTTP API; RPC: the server).
    port: u16,
    /// The Grape's DHT port.
    dht_port: Option<u16>,
    pid: u32,
    _rust: Option<Child>,
    _node: Vec<NodeProcess>,
}

impl Target {
    fn alive(&self) -> bool {
        std::path::Path::new(&format!("/proc/{}/stat", self.pid)).exists()
            && !std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).is_ok_and(|s| s.contains(") Z "))
    }
}

async fn rust_target(kind: Kind) -> Target {
    let exe = std::env::current_exe().expect("current exe");
    let arg = match kind {
        Kind::Grape => "grape",
        Kind::Http => "http",
        Kind::Ws => "ws",
    };
    let mut child = Command::new(exe)
        .args(["--child", arg])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(T, lines.next_line()).await.expect("child start").expect("read").expect("line");
    let v: Value = serde_json::from_str(&line).expect("child json");
    let pid = child.id().expect("pid");
    Target {
        port: v["port"].as_u64().unwrap_or(0) as u16,
        dht_port: v["dht_port"].as_u64().map(|p| p as u16),
        pid,
        _rust: Some(child),
        _node: Vec::new(),
    }
}

async fn node_target(kind: Kind) -> Option<Target> {
    // Two Grapes (the second bootstraps to the first); the RPC servers announce to the first.
    let dps = [free_port(), free_port()];
    let aps = [free_port(), free_port()];
    let dp = dps.map(|p| p.to_string()).join(",");
    let ap = aps.map(|p| p.to_string()).join(",");
    let mut grapes = NodeProcess::spawn("grape_bench_net.js", &[&dp, &ap]);
    let v = grapes.try_json(T).await?;
    if v["event"] != "started" {
        return None;
    }
    let grape_pid = grapes.pid()?;
    if kind == Kind::Grape {
        announce(aps[1], "svc:good", 4000).await;
        return Some(Target { port: aps[0], dht_port: Some(dps[0]), pid: grape_pid, _rust: None, _node: vec![grapes] });
    }
    let port = free_port();
    let grape_url = format!("http://127.0.0.1:{}", aps[0]);
    let script = if kind == Kind::Http { "http_server.js" } else { "ws_server.js" };
    let mut srv = NodeProcess::spawn(script, &["--grape", &grape_url, "--name", "attack:rpc", "--port", &port.to_string()]);
    let v = srv.try_json(T).await?;
    if v["event"] != "started" {
        return None;
    }
    let pid = srv.pid()?;
    Some(Target { port, dht_port: None, pid, _rust: None, _node: vec![grapes, srv] })
}

/// As the `grape` and `grenache serve` binaries do (`cli/src/trim.rs`): `malloc_trim(0)` every 5 s
/// unless `GRENACHE_MALLOC_TRIM=0`.
fn start_trimming() {
    if std::env::var("GRENACHE_MALLOC_TRIM").is_ok_and(|v| v == "0") {
        return;
    }
    let _ = std::thread::Builder::new().name("malloc-trim".into()).spawn(|| {
        loop {
            std::thread::sleep(Duration::from_secs(5));
            // SAFETY: malloc_trim has no preconditions; it only walks glibc's own arenas.
            unsafe {
                libc::malloc_trim(0);
            }
        }
    });
}

/// The child: one server with default settings; prints its ports, serves until stdin closes.
async fn child(kind: &str) {
    start_trimming();
    use grenache::rpc::{Handler, Reply, Request};
    let echo: Arc<dyn Handler> = Arc::new(|req: Request, reply: Reply| reply.ok(req.payload.into_value()));
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let mut keep: Vec<Box<dyn std::any::Any>> = Vec::new();
    let out = match kind {
        "grape" => {
            let mut c = grenache::grape::GrapeConfig::default();
            c.dht_port(0).api_port(0).host(Some("127.0.0.1".parse().expect("ip")));
            let a = grenache::grape::Grape::start(c.clone()).await.expect("grape");
            c.bootstrap(vec![a.dht_bootstrap_addr()]);
            let b = grenache::grape::Grape::start(c).await.expect("grape");
            tokio::time::sleep(Duration::from_millis(500)).await;
            let _ = b.announce("svc:good", 4000).await;
            let out = serde_json::json!({"port": a.api_addr().port(), "dht_port": a.dht_addr().port()});
            keep.push(Box::new(a));
            keep.push(Box::new(b));
            out
        }
        "http" => {
            let s = grenache::transport::http::HttpServer::bind(any, echo, Default::default()).await.expect("bind");
            let out = serde_json::json!({"port": s.port()});
            keep.push(Box::new(s));
            out
        }
        _ => {
            let s = grenache::transport::ws::WsServer::bind_arc(any, echo, Default::default()).await.expect("bind");
            let out = serde_json::json!({"port": s.port()});
            keep.push(Box::new(s));
            out
        }
    };
    println!("{out}");
    let mut buf = String::new();
    let _ = BufReader::new(tokio::io::stdin()).read_line(&mut buf).await;
    drop(keep);
}

// ------------------------------------------------------------------------------------- clients

async fn connect_from(source: &str, port: u16) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind(format!("{source}:0").parse().expect("addr"))?;
    s.connect(SocketAddr::from(([127, 0, 0, 1], port))).await
}

/// One HTTP request on a new connection from the good source; the status code.
async fn http_once(port: u16, path: &str, body: &str) -> Option<(u16, String)> {
    let mut s = connect_from(GOOD, port).await.ok()?;
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.ok()?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let code = text.get(9..12)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|x| x.1.to_string()).unwrap_or_default();
    Some((code, body))
}

async fn announce(api: u16, name: &str, port: u16) {
    let _ = http_once(api, "/announce", &format!("{{\"data\":[\"{name}\",{port}]}}")).await;
}

#[derive(Clone, Copy)]
enum Good {
    /// `/lookup` of a known name.
    Lookup,
    /// `/lookup` of a name never asked before (no cached table: a DHT walk each time).
    LookupUncached,
    /// `/announce` then `/lookup` of the same new name.
    AnnounceLookup,
    /// An RPC request over HTTP.
    RpcHttp,
    /// An RPC request over WS on a new client.
    RpcWs,
}

static SEQ: AtomicU64 = AtomicU64::new(0);

async fn good_once(g: Good, port: u16) -> bool {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    match g {
        Good::Lookup => matches!(http_once(port, "/lookup", r#"{"data":"svc:good"}"#).await, Some((200, b)) if b.starts_with('[')),
        Good::LookupUncached => {
            matches!(http_once(port, "/lookup", &format!("{{\"data\":\"svc:new:{n}\"}}")).await, Some((200, b)) if b.starts_with('['))
        }
        Good::AnnounceLookup => {
            let name = format!("svc:good:{n}");
            let a = http_once(port, "/announce", &format!("{{\"data\":[\"{name}\",5000]}}")).await;
            if !matches!(&a, Some((200, b)) if b.parse::<u64>().is_ok()) {
                return false;
            }
            matches!(http_once(port, "/lookup", &format!("{{\"data\":\"{name}\"}}")).await, Some((200, b)) if b.contains("5000"))
        }
        Good::RpcHttp => {
            let body = format!("[\"rid-{n}\",\"attack:rpc\",\"hello\"]");
            matches!(http_once(port, "/", &body).await, Some((200, b)) if b.contains(&format!("rid-{n}")))
        }
        Good::RpcWs => {
            let client = grenache::transport::ws::WsClient::default();
            let req = grenache::rpc::OutgoingRequest {
                rid: format!("rid-{n}"),
                key: Arc::from("attack:rpc"),
                payload_json: Arc::from("\"hello\""),
                timeout: Some(ANSWER_WITHIN),
                compress: false,
            };
            let ok = client.send(&format!("127.0.0.1:{port}"), req).await.is_ok();
            client.close_all();
            ok
        }
    }
}

/// Good clients for `secs`: a request every 50 ms, each given 1 s. (answered within 1 s, sent,
/// latencies of the answered ones).
async fn good_load(g: Good, port: u16, secs: Duration) -> (usize, usize, Samples) {
    let mut tasks = tokio::task::JoinSet::new();
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    while start.elapsed() < secs {
        tick.tick().await;
        tasks.spawn(async move {
            let t = Instant::now();
            let ok = tokio::time::timeout(ANSWER_WITHIN, good_once(g, port)).await.unwrap_or(false);
            (ok, t.elapsed())
        });
    }
    let (mut ok, mut sent, mut lat) = (0, 0, Samples::default());
    while let Some(r) = tasks.join_next().await {
        sent += 1;
        if let Ok((true, d)) = r {
            ok += 1;
            lat.push(d);
        }
    }
    (ok, sent, lat)
}

// ------------------------------------------------------------------------------------- attacks

#[derive(Clone, Copy, Debug)]
enum Attack {
    /// 10,050 connections to the Grape's API, each sending a head and then a body that never ends.
    GrapeStalledBodies,
    /// The same against an RPC HTTP server.
    RpcStalledBodies,
    /// 10,000 upgraded WebSocket connections that send no request (they answer pings).
    WsIdle,
    /// announce_peer with 60,000-byte info-hashes, as fast as one source can.
    DhtBigKeys,
    /// One source filling the peer store with distinct keys.
    DhtFill,
    /// Pings from 5 new node ids a second that never answer a query.
    DhtSilentNodes,
    /// 20 concurrent 50 MB request bodies to an RPC HTTP server, again and again.
    RpcBigBodies,
}

impl Attack {
    fn name(self) -> &'static str {
        match self {
            Attack::GrapeStalledBodies => "10,050 stalled bodies -> Grape API",
            Attack::RpcStalledBodies => "10,050 stalled bodies -> RPC HTTP",
            Attack::WsIdle => "10,000 idle WS sockets -> RPC WS",
            Attack::DhtBigKeys => "announce_peer, 60 KB info-hashes (1 source)",
            Attack::DhtFill => "announce_peer, distinct keys (1 source)",
            Attack::DhtSilentNodes => "5 new silent node ids/s",
            Attack::RpcBigBodies => "20 x 50 MB bodies -> RPC HTTP",
        }
    }
    fn kind(self) -> Kind {
        match self {
            Attack::GrapeStalledBodies | Attack::DhtBigKeys | Attack::DhtFill | Attack::DhtSilentNodes => Kind::Grape,
            Attack::RpcStalledBodies | Attack::RpcBigBodies => Kind::Http,
            Attack::WsIdle => Kind::Ws,
        }
    }
    fn good(self) -> Good {
        match self {
            Attack::GrapeStalledBodies | Attack::DhtBigKeys => Good::Lookup,
            Attack::DhtFill => Good::AnnounceLookup,
            Attack::DhtSilentNodes => Good::LookupUncached,
            Attack::RpcStalledBodies | Attack::RpcBigBodies => Good::RpcHttp,
            Attack::WsIdle => Good::RpcWs,
        }
    }
}

/// What the attacker did.
#[derive(Default)]
struct Score {
    /// Connections or datagrams sent.
    sent: AtomicU64,
    /// Connections accepted (answered the handshake or held open) or queries answered.
    held: AtomicU64,
}

/// Keeps up to `n` connections from the attacker: each sends `head` (and answers what comes
/// with `reply`, for WS pings), holds until the server closes it, and connects again.
fn hold_connections(port: u16, n: usize, head: &'static [u8], reply: Option<&'static [u8]>, stop: Arc<AtomicBool>, score: Arc<Score>) {
    for i in 0..n {
        let (stop, score) = (stop.clone(), score.clone());
        tokio::spawn(async move {
            // Ramp up over a second.
            tokio::time::sleep(Duration::from_micros((i as u64 * 100) % 1_000_000)).await;
            while !stop.load(Ordering::Relaxed) {
                score.sent.fetch_add(1, Ordering::Relaxed);
                let Ok(mut s) = connect_from(ATTACKER, port).await else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                if s.write_all(head).await.is_err() {
                    continue;
                }
                let mut buf = [0u8; 512];
                let mut counted = false;
                loop {
                    let r = tokio::select! {
                        r = s.read(&mut buf) => r,
                        () = tokio::time::sleep(Duration::from_millis(200)) => {
                            if stop.load(Ordering::Relaxed) { break }
                            if !counted {
                                counted = true;
                                score.held.fetch_add(1, Ordering::Relaxed);
                            }
                            continue;
                        }
                    };
                    match r {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            if let Some(r) = reply {
                                let _ = s.write_all(r).await;
                            }
                        }
                    }
                }
                // A refused or closed connection is tried again after a second (a bound on this
                // harness's own load: the machine is shared with the server under attack).
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }
}

fn bencode_query(q: &str, t: &[u8], args: Vec<(&str, B)>) -> Vec<u8> {
    let mut a = std::collections::BTreeMap::new();
    for (k, v) in args {
        a.insert(k.as_bytes().to_vec(), v);
    }
    let mut top = std::collections::BTreeMap::new();
    top.insert(b"a".to_vec(), B::Dict(a));
    top.insert(b"q".to_vec(), B::Bytes(q.as_bytes().to_vec()));
    top.insert(b"t".to_vec(), B::Bytes(t.to_vec()));
    top.insert(b"y".to_vec(), B::Bytes(b"q".to_vec()));
    B::Dict(top).encode()
}

fn random_id() -> Vec<u8> {
    (0..20).map(|_| (SEQ.fetch_add(7919, Ordering::Relaxed) % 251) as u8 ^ 0x5a).collect()
}

/// announce_peer floods from one UDP source, with keys of `key_len` bytes (distinct each time).
fn announce_flood(dht_port: u16, key_len: usize, stop: Arc<AtomicBool>, score: Arc<Score>) {
    tokio::spawn(async move {
        let Ok(sock) = UdpSocket::bind(format!("{ATTACKER}:0")).await else { return };
        let to = SocketAddr::from(([127, 0, 0, 1], dht_port));
        let id = random_id();
        // A token for this source (tokens depend on the address only).
        let q = bencode_query("get_peers", b"gp", vec![("id", B::Bytes(id.clone())), ("info_hash", B::Bytes(b"x".to_vec()))]);
        let mut token = None;
        let mut buf = vec![0u8; 65_536];
        for _ in 0..5 {
            let _ = sock.send_to(&q, to).await;
            if let Ok(Ok((n, _))) = tokio::time::timeout(Duration::from_secs(1), sock.recv_from(&mut buf)).await
                && let Ok(m) = grenache::dht::krpc::decode(&buf[..n])
                && let grenache::dht::krpc::Body::Response(r) = m.body
            {
                token = r.token;
                break;
            }
        }
        let Some(token) = token else { return };
        let mut i: u64 = 0;
        let sock = Arc::new(sock);
        let reader = {
            let (sock, score, stop) = (sock.clone(), score.clone(), stop.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65_536];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(Ok((n, _))) = tokio::time::timeout(Duration::from_millis(200), sock.recv_from(&mut buf)).await
                        && grenache::dht::krpc::decode(&buf[..n]).is_ok_and(|m| matches!(m.body, grenache::dht::krpc::Body::Response(_)))
                    {
                        score.held.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        };
        while !stop.load(Ordering::Relaxed) {
            i += 1;
            let mut key = format!("k{i}:").into_bytes();
            key.resize(key_len.max(key.len()), b'x');
            let q = bencode_query(
                "announce_peer",
                &i.to_be_bytes()[6..],
                vec![
                    ("id", B::Bytes(id.clone())),
                    ("info_hash", B::Bytes(key)),
                    ("port", B::Int(4000)),
                    ("token", B::Bytes(token.clone())),
                ],
            );
            let _ = sock.send_to(&q, to).await;
            score.sent.fetch_add(1, Ordering::Relaxed);
            // 10,000 datagrams a second (the issue measured 5,500 a second from one source): as
            // fast as this machine can send would leave no CPU to the server it shares.
            if i.is_multiple_of(100) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        reader.abort();
    });
}

/// A new node id every 200 ms pings the Grape's DHT from a socket of its own and never answers.
fn silent_nodes(dht_port: u16, stop: Arc<AtomicBool>, score: Arc<Score>) {
    tokio::spawn(async move {
        let to = SocketAddr::from(([127, 0, 0, 1], dht_port));
        let mut socks = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            if let Ok(sock) = UdpSocket::bind(format!("{ATTACKER}:0")).await {
                let q = bencode_query("ping", b"pp", vec![("id", B::Bytes(random_id()))]);
                let _ = sock.send_to(&q, to).await;
                score.sent.fetch_add(1, Ordering::Relaxed);
                // Kept open (so that no ICMP tells the Grape), never read.
                socks.push(sock);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
}

/// `n` connections each sending `len`-byte bodies at full speed, again and again.
fn big_bodies(port: u16, n: usize, len: usize, stop: Arc<AtomicBool>, score: Arc<Score>) {
    let chunk = Arc::new(vec![b' '; 1 << 20]);
    for _ in 0..n {
        let (stop, score, chunk) = (stop.clone(), score.clone(), chunk.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                score.sent.fetch_add(1, Ordering::Relaxed);
                let Ok(mut s) = connect_from(ATTACKER, port).await else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let head = format!("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {len}\r\n\r\n[\"r\",\"k\",\"");
                if s.write_all(head.as_bytes()).await.is_err() {
                    continue;
                }
                let mut left = len - 12;
                let mut failed = false;
                while left > 0 && !stop.load(Ordering::Relaxed) {
                    let n = left.min(chunk.len());
                    if s.write_all(&chunk[..n]).await.is_err() {
                        failed = true;
                        break;
                    }
                    left -= n;
                }
                if !failed && s.write_all(b"\"]").await.is_ok() {
                    let mut out = [0u8; 12];
                    if s.read_exact(&mut out).await.is_ok() && &out[9..12] == b"200" {
                        score.held.fetch_add(1, Ordering::Relaxed);
                    }
                }
                // Again after a second, like the other connection attacks.
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }
}

const STALLED_GRAPE: &[u8] = b"POST /lookup HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"data\":";
const STALLED_RPC: &[u8] = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n[\"r\",";
const WS_UPGRADE: &[u8] = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
/// An empty masked pong: sent whenever the server sends anything (so pings are answered).
const WS_PONG: &[u8] = &[0x8A, 0x80, 1, 2, 3, 4];

fn start_attack(a: Attack, port: u16, dht_port: u16, stop: Arc<AtomicBool>, score: Arc<Score>) {
    match a {
        Attack::GrapeStalledBodies => hold_connections(port, 10_050, STALLED_GRAPE, None, stop, score),
        Attack::RpcStalledBodies => hold_connections(port, 10_050, STALLED_RPC, None, stop, score),
        Attack::WsIdle => hold_connections(port, 10_000, WS_UPGRADE, Some(WS_PONG), stop, score),
        Attack::DhtBigKeys => announce_flood(dht_port, 60_000, stop, score),
        Attack::DhtFill => announce_flood(dht_port, 24, stop, score),
        Attack::DhtSilentNodes => silent_nodes(dht_port, stop, score),
        Attack::RpcBigBodies => big_bodies(port, 20, 50_000_000, stop, score),
    }
}

const ATTACKS: [Attack; 7] = [
    Attack::GrapeStalledBodies,
    Attack::RpcStalledBodies,
    Attack::WsIdle,
    Attack::DhtBigKeys,
    Attack::DhtFill,
    Attack::DhtSilentNodes,
    Attack::RpcBigBodies,
];

/// The attacker's process: runs attack `name` until stdin closes, then prints its score.
async fn attacker(name: &str, port: u16, dht_port: u16) {
    let Some(a) = ATTACKS.into_iter().find(|a| format!("{a:?}") == name) else { return };
    let stop = Arc::new(AtomicBool::new(false));
    let score = Arc::new(Score::default());
    start_attack(a, port, dht_port, stop.clone(), score.clone());
    let mut buf = String::new();
    let _ = BufReader::new(tokio::io::stdin()).read_line(&mut buf).await;
    stop.store(true, Ordering::Relaxed);
    println!("{}", serde_json::json!({"sent": score.sent.load(Ordering::Relaxed), "held": score.held.load(Ordering::Relaxed)}));
}

/// Starts the attacker's process.
fn spawn_attacker(a: Attack, t: &Target) -> Child {
    let exe = std::env::current_exe().expect("current exe");
    Command::new(exe)
        .args(["--attacker", &format!("{a:?}"), &t.port.to_string(), &t.dht_port.unwrap_or(0).to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn attacker")
}

/// CPU time of a process (user + system), from `/proc/<pid>/stat`.
fn cpu_time(pid: u32) -> Option<Duration> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = s.rsplit_once(") ")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

struct RowOut {
    line: String,
    ok_share: f64,
    peak_mb: f64,
}

async fn run_row(a: Attack, impl_name: &str, t: Target, secs: Duration) -> RowOut {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let base = rss_kib(t.pid).unwrap_or(0);
    let cpu0 = cpu_time(t.pid).unwrap_or_default();
    let wall0 = Instant::now();
    let mut attack = spawn_attacker(a, &t);
    // Sample RSS while the attack runs.
    let peak = Arc::new(AtomicU64::new(base));
    let sampler = {
        let (peak, pid) = (peak.clone(), t.pid);
        tokio::spawn(async move {
            loop {
                if let Some(r) = rss_kib(pid) {
                    peak.fetch_max(r, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (ok, sent, mut lat) = good_load(a.good(), t.port, secs).await;
    let alive = t.alive();
    let cpu = cpu_time(t.pid).unwrap_or_default().saturating_sub(cpu0).as_secs_f64() / wall0.elapsed().as_secs_f64() * 100.0;
    drop(attack.stdin.take());
    let mut score_line = String::new();
    if let Some(out) = attack.stdout.take() {
        let _ = tokio::time::timeout(Duration::from_secs(10), BufReader::new(out).read_line(&mut score_line)).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), attack.wait()).await;
    let score: Value = serde_json::from_str(&score_line).unwrap_or_default();
    // Long enough for one trim of the server's heap (every 5 s).
    tokio::time::sleep(Duration::from_secs(6)).await;
    sampler.abort();
    let after = rss_kib(t.pid).unwrap_or(0);
    let share = if sent == 0 { 0.0 } else { ok as f64 * 100.0 / sent as f64 };
    let mb = |k: u64| k as f64 / 1024.0;
    let peak = peak.load(Ordering::Relaxed);
    let (p50, p99) = if lat.is_empty() {
        ("-".to_string(), "-".to_string())
    } else {
        (format!("{:.1} ms", lat.percentile_us(50.0) as f64 / 1000.0), format!("{:.1} ms", lat.percentile_us(99.0) as f64 / 1000.0))
    };
    let note = if alive { String::new() } else { " **died**".to_string() };
    let line = format!(
        "| {} | {impl_name}{note} | {ok}/{sent} ({share:.0}%) | {p50} | {p99} | {:.0} / {:.0} / {:.0} | {cpu:.0}% | {} sent, {} held/answered |",
        a.name(),
        mb(base),
        mb(peak),
        mb(after),
        score["sent"].as_u64().unwrap_or(0),
        score["held"].as_u64().unwrap_or(0),
    );
    drop(t);
    RowOut { line, ok_share: share, peak_mb: mb(peak) }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--attacker") {
        let arg = |k: usize| args.get(i + k).cloned().unwrap_or_default();
        attacker(&arg(1), arg(2).parse().unwrap_or(0), arg(3).parse().unwrap_or(0)).await;
        return;
    }
    if let Some(i) = args.iter().position(|a| a == "--child") {
        child(args.get(i + 1).map(String::as_str).unwrap_or("http")).await;
        return;
    }
    let secs = args
        .iter()
        .position(|a| a == "--secs")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(8));
    let with_node = !args.iter().any(|a| a == "--no-node");
    let only: Option<String> = args.iter().position(|a| a == "--only").and_then(|i| args.get(i + 1).cloned());
    let attacks = ATTACKS;
    println!("\n### Attacks (attacker 127.0.0.2, good clients 127.0.0.1, {} s each, default settings)\n", secs.as_secs());
    println!("| attack | server | good answered within 1 s | p50 | p99 | RSS MB before / peak / 6 s after | CPU | attacker |");
    println!("|---|---|---:|---:|---:|---:|---:|---|");
    let mut worst_share: f64 = 100.0;
    let mut worst_grape_peak: f64 = 0.0;
    let mut worst_rpc_peak: f64 = 0.0;
    for a in attacks {
        if only.as_deref().is_some_and(|o| !format!("{a:?}").eq_ignore_ascii_case(o)) {
            continue;
        }
        let t = rust_target(a.kind()).await;
        let r = run_row(a, "grenache-rs", t, secs).await;
        println!("{}", r.line);
        worst_share = worst_share.min(r.ok_share);
        if a.kind() == Kind::Grape {
            worst_grape_peak = worst_grape_peak.max(r.peak_mb);
        } else {
            worst_rpc_peak = worst_rpc_peak.max(r.peak_mb);
        }
        if with_node {
            match node_target(a.kind()).await {
                Some(t) => println!("{}", run_row(a, "Node reference", t, secs).await.line),
                None => println!("| {} | Node reference | did not start | | | | | |", a.name()),
            }
        }
    }
    println!(
        "\ngrenache-rs: worst share answered within 1 s {worst_share:.0}% (target >= 95%); peak RSS {worst_grape_peak:.0} MB for a Grape (bound 256 MB), {worst_rpc_peak:.0} MB for an RPC server (bound 768 MB)"
    );
}
