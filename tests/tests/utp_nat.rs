//! uTP through real NATs: network namespaces built here (`ip netns`, veth pairs, one router
//! namespace per NAT doing iptables `MASQUERADE`), with our CLI binaries (`grape`,
//! `grenache broker`, `grenache serve`, `grenache request`) and a small driven node
//! (`utp_nat_peer`) running inside them with `ip netns exec`. Needs root (CI runs as root).
//!
//! ```text
//!   public ns P: 2 Grapes, the broker (10.0.1.1), and the client of scenario 1
//!        | 10.0.1.0/24                         | 10.0.2.0/24
//!   router R1 (MASQUERADE)               router R2 (MASQUERADE [--random-fully])
//!        | 192.168.1.0/24                      | 192.168.2.0/24
//!   worker W (192.168.1.2)               client C (192.168.2.2)
//! ```
//!
//! Scenario (5) puts `grenache proxy --from http --to utp --broker` in P and calls it with the
//! Node reference's grenache-nodejs-http client (tests/interop), also in P.
//!
//! The public services bind 10.0.1.1 (the public namespace has an address per link). Each
//! router drops unsolicited inbound packets (conntrack state NEW from its WAN side), as home
//! routers do: that makes each NAT port-restricted, and keeps a dropped packet from leaving a
//! conntrack entry that would steal the port the inside host's own mapping should get.
//! Every namespace and process is removed when the test ends, also when it fails.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use grenache_e2e::grapes::cli_bin;
use grenache_e2e::{interop_dir, require_node_peers};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin};
use tokio::sync::mpsc;

const LONG: Duration = Duration::from_secs(60);

/// A process in a namespace: JSON lines out, lines in; killed when dropped.
struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::UnboundedReceiver<String>,
    name: String,
}

impl Proc {
    async fn json(&mut self, timeout: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(l)) => {
                    if let Ok(v) = serde_json::from_str::<Value>(&l) {
                        return v;
                    }
                }
                Ok(None) => panic!("{}: exited", self.name),
                Err(_) => panic!("{}: no output within {timeout:?}", self.name),
            }
        }
    }

    async fn ask(&mut self, cmd: Value) -> Value {
        let stdin = self.stdin.as_mut().expect("stdin");
        stdin.write_all(format!("{cmd}\n").as_bytes()).await.expect("write");
        stdin.flush().await.expect("flush");
        self.json(LONG).await
    }
}

/// The NATs of a lab.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Nat {
    /// MASQUERADE: keeps the inside port when it can, filters by remote address and port.
    PortRestricted,
    /// MASQUERADE --random-fully: a new random port for every destination (symmetric).
    Symmetric,
}

/// Namespaces, links and processes of one test; all removed on drop.
struct Lab {
    id: String,
    namespaces: Vec<String>,
    procs: Vec<Proc>,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn run(cmd: &mut Command) {
    let out = cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

impl Lab {
    fn new() -> Lab {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        // Short: veth names are at most 15 bytes.
        let id = format!("u{:x}{n}", std::process::id() % 0xfffff);
        Lab { id, namespaces: Vec::new(), procs: Vec::new() }
    }

    fn ip(&self, args: &[&str]) {
        run(Command::new("ip").args(args));
    }

    fn exec(&self, ns: &str, args: &[&str]) {
        run(Command::new("ip").args(["netns", "exec", ns]).args(args));
    }

    fn ns(&mut self, role: &str) -> String {
        let name = format!("gr-{}-{role}", self.id);
        self.ip(&["netns", "add", &name]);
        self.namespaces.push(name.clone());
        self.exec(&name, &["ip", "link", "set", "lo", "up"]);
        name
    }

    /// A veth pair `a` (in `ns_a`, address `addr_a`) to `b` (in `ns_b`, `addr_b`).
    fn link(&self, a: &str, ns_a: &str, addr_a: &str, b: &str, ns_b: &str, addr_b: &str) {
        self.ip(&["link", "add", a, "type", "veth", "peer", "name", b]);
        for (dev, ns, addr) in [(a, ns_a, addr_a), (b, ns_b, addr_b)] {
            self.ip(&["link", "set", dev, "netns", ns]);
            self.exec(ns, &["ip", "addr", "add", addr, "dev", dev]);
            self.exec(ns, &["ip", "link", "set", dev, "up"]);
        }
    }

    /// Like [`Lab::link`], through `lossy_link` (delay and loss in both directions).
    #[allow(clippy::too_many_arguments)]
    fn lossy_link(&mut self, a: &str, ns_a: &str, addr_a: &str, b: &str, ns_b: &str, addr_b: &str, delay_ms: u64, loss_percent: u64) {
        let bin = PathBuf::from(env!("CARGO_BIN_EXE_lossy_link"));
        let mut child = tokio::process::Command::new(&bin)
            .args([ns_a, a, ns_b, b, &delay_ms.to_string(), &loss_percent.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn lossy_link");
        let mut out = std::io::BufReader::new(std::fs::File::from(child.stdout.take().expect("stdout").into_owned_fd().expect("fd")));
        let mut line = String::new();
        std::io::BufRead::read_line(&mut out, &mut line).expect("lossy_link output");
        assert_eq!(line.trim(), "ready", "lossy_link did not start");
        let stdin = child.stdin.take();
        let (_tx, lines) = mpsc::unbounded_channel();
        self.procs.push(Proc { child, stdin, lines, name: "lossy_link".into() });
        for (dev, ns, addr) in [(a, ns_a, addr_a), (b, ns_b, addr_b)] {
            self.exec(ns, &["ip", "addr", "add", addr, "dev", dev]);
            self.exec(ns, &["ip", "link", "set", dev, "up"]);
        }
    }

    /// The public namespace plus one router and one host per NAT: host `i` (1-based) is
    /// 192.168.i.2 behind router `i`, whose WAN address is 10.0.i.2; the public side is 10.0.i.1.
    fn build(nats: &[Nat]) -> (Lab, String, Vec<String>) {
        Lab::build_lossy(nats, None)
    }

    /// [`Lab::build`] where the first NAT's WAN link holds every packet `delay_ms` and drops
    /// `loss_percent` of them (in both directions): a TUN device at each end and the
    /// `lossy_link` process between them (this kernel has no `sch_netem`).
    fn build_lossy(nats: &[Nat], lossy: Option<(u64, u64)>) -> (Lab, String, Vec<String>) {
        let mut lab = Lab::new();
        let public = lab.ns("P");
        lab.exec(&public, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        let mut hosts = Vec::new();
        for (i, nat) in nats.iter().enumerate() {
            let i = i + 1;
            let (router, host) = (lab.ns(&format!("R{i}")), lab.ns(&format!("H{i}")));
            let (p, r, l, h) = (format!("{}p{i}", lab.id), format!("{}r{i}", lab.id), format!("{}l{i}", lab.id), format!("{}h{i}", lab.id));
            match lossy {
                Some((delay, loss)) if i == 1 => lab.lossy_link(&p, &public, "10.0.1.1/24", &r, &router, "10.0.1.2/24", delay, loss),
                _ => lab.link(&p, &public, &format!("10.0.{i}.1/24"), &r, &router, &format!("10.0.{i}.2/24")),
            }
            lab.link(&l, &router, &format!("192.168.{i}.1/24"), &h, &host, &format!("192.168.{i}.2/24"));
            lab.exec(&router, &["ip", "route", "add", "default", "via", &format!("10.0.{i}.1")]);
            lab.exec(&host, &["ip", "route", "add", "default", "via", &format!("192.168.{i}.1")]);
            lab.exec(&router, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
            let mut masq = vec!["iptables", "-t", "nat", "-A", "POSTROUTING", "-o", &r, "-j", "MASQUERADE"];
            if *nat == Nat::Symmetric {
                masq.push("--random-fully");
            }
            lab.exec(&router, &masq);
            for chain in ["INPUT", "FORWARD"] {
                lab.exec(&router, &["iptables", "-A", chain, "-i", &r, "-m", "conntrack", "--ctstate", "NEW", "-j", "DROP"]);
            }
            hosts.push(host);
        }
        (lab, public, hosts)
    }

    /// Starts `program args` in `ns`.
    fn spawn(&mut self, ns: &str, program: &PathBuf, args: &[&str]) -> usize {
        let mut child = tokio::process::Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {program:?}: {e}"));
        let stdout = child.stdout.take().expect("stdout");
        let stdin = child.stdin.take();
        let (tx, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut r = BufReader::new(stdout).lines();
            while let Ok(Some(l)) = r.next_line().await {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let name = format!("{} in {ns}", program.file_name().map(|f| f.to_string_lossy().to_string()).unwrap_or_default());
        self.procs.push(Proc { child, stdin, lines, name });
        self.procs.len() - 1
    }

    /// Runs `grenache args` in `ns` to its end: (exit code, stdout, stderr, time taken).
    async fn grenache(&self, ns: &str, args: &[&str]) -> (i32, String, String, Duration) {
        let t0 = Instant::now();
        let out = tokio::time::timeout(
            LONG,
            tokio::process::Command::new("ip")
                .args(["netns", "exec", ns])
                .arg(cli_bin("grenache"))
                .args(args)
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("grenache finished in time")
        .expect("run grenache");
        let text = |b: &[u8]| String::from_utf8_lossy(b).trim().to_string();
        (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr), t0.elapsed())
    }

    /// Two Grapes and a broker named `broker` in the public namespace; the Grape API URLs.
    async fn services(&mut self, public: &str, broker: &str) -> (String, String) {
        let grape = cli_bin("grape");
        self.spawn(public, &grape, &["--dp", "20001", "--aph", "30001", "-b", "10.0.1.1", "--bn", "10.0.1.1:20002"]);
        self.spawn(public, &grape, &["--dp", "20002", "--aph", "30002", "-b", "10.0.1.1", "--bn", "10.0.1.1:20001"]);
        let (g1, g2) = ("http://10.0.1.1:30001".to_string(), "http://10.0.1.1:30002".to_string());
        // The Grapes answer once up (an empty lookup exits 5).
        let deadline = Instant::now() + LONG;
        for g in [&g1, &g2] {
            while self.grenache(public, &["--grape", g, "lookup", "nobody"]).await.0 != 5 {
                assert!(Instant::now() < deadline, "grape {g} did not start");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        // Bound to one address: the public namespace has one per link, and a reply from a
        // socket bound to 0.0.0.0 would leave from the address of the link it goes out on,
        // which the client's NAT does not expect.
        let b = self.spawn(public, &cli_bin("grenache"), &["--grape", &g1, "broker", "--name", broker, "--bind", "10.0.1.1"]);
        assert_eq!(self.procs[b].json(LONG).await["event"], "started");
        (g1, g2)
    }

    /// A worker behind the NAT of `ns` serving `name` over uTP, registered with the broker.
    async fn worker(&mut self, ns: &str, grape: &str, name: &str, broker: &str) {
        let args =
            ["--grape", grape, "serve", name, "--transport", "utp", "--broker", broker, "--with-remote", "--register-interval", "1000"];
        let w = self.spawn(ns, &cli_bin("grenache"), &args);
        assert_eq!(self.procs[w].json(LONG).await["event"], "started");
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for p in &mut self.procs {
            let _ = p.child.start_kill();
        }
        self.procs.clear();
        for ns in self.namespaces.drain(..) {
            // Deleting a namespace removes its veth ends (and so the pairs).
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
    }
}

fn ip_of(endpoint: &str) -> &str {
    endpoint.rsplit_once(':').map(|(ip, _)| ip).unwrap_or(endpoint)
}

/// (1) The worker is behind a NAT; the client, the Grapes and the broker are public.
#[tokio::test]
async fn a_worker_behind_a_nat_serves_a_public_client() {
    let (mut lab, public, hosts) = Lab::build(&[Nat::PortRestricted]);
    let (g1, g2) = lab.services(&public, "nat_broker").await;
    lab.worker(&hosts[0], &g2, "nat_svc", "nat_broker").await;
    let (code, out, err, _) =
        lab.grenache(&public, &["--grape", &g1, "request", "nat_svc", "\"hi\"", "--transport", "utp", "--broker", "nat_broker"]).await;
    assert_eq!(code, 0, "{err}");
    let reply: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(reply["payload"], "hi");
    // The worker saw the public client as it is.
    assert_eq!(ip_of(reply["remote"].as_str().expect("remote")), "10.0.1.1");
    // Without the broker the Grapes give the address the worker's Grape announced it at (the
    // Grape's own host, with the worker's inside port): nothing answers there.
    let (code, _, err, _) =
        lab.grenache(&public, &["--grape", &g1, "request", "nat_svc", "\"hi\"", "--transport", "utp", "--timeout", "3000"]).await;
    assert_ne!(code, 0, "reached a NAT'd worker through the Grape's view of it: {err}");
}

/// (2) Worker and client behind two different port-restricted NATs: the broker introduces them
/// and both punch at once. A punch from one side alone (the reference's flow) is dropped by the
/// other side's NAT.
#[tokio::test]
async fn two_port_restricted_nats_connect_by_simultaneous_punching() {
    let (mut lab, public, hosts) = Lab::build(&[Nat::PortRestricted, Nat::PortRestricted]);
    let (g1, g2) = lab.services(&public, "nat_broker").await;
    lab.worker(&hosts[0], &g2, "nat_svc", "nat_broker").await;
    let c = lab.spawn(&hosts[1], &PathBuf::from(env!("CARGO_BIN_EXE_utp_nat_peer")), &[&g1]);
    assert_eq!(lab.procs[c].json(LONG).await["ready"], true);
    // The client asks the broker without punching: the worker is told to punch the client (and
    // does, for 5 s), which is all the reference's broker example does.
    let found = lab.procs[c].ask(json!({"cmd": "lookup", "broker": "nat_broker", "name": "nat_svc"})).await;
    let servers = found["servers"].as_array().expect("servers").clone();
    assert_eq!(servers.len(), 1, "{found}");
    let worker_ext = servers[0].as_str().expect("endpoint").to_string();
    assert_eq!(ip_of(&worker_ext), "10.0.1.2", "the broker saw the worker's NAT");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let seen = lab.procs[c].ask(json!({"cmd": "punched_by"})).await;
    assert_eq!(seen["from"], json!([]), "a one-sided punch got through the client's NAT: {seen}");
    // Both sides at once: the request goes through, and the worker sees the client as its NAT
    // maps it.
    let r = lab.procs[c]
        .ask(json!({"cmd": "request", "broker": "nat_broker", "name": "nat_svc", "payload": {"n": 1}, "timeout_ms": 20000}))
        .await;
    assert_eq!(r["reply"]["payload"], json!({"n": 1}), "{r}");
    assert_eq!(ip_of(r["reply"]["remote"].as_str().expect("remote")), "10.0.2.2");
    // What got in now came from the worker (its punches, or its acknowledgements of ours).
    let seen = lab.procs[c].ask(json!({"cmd": "punched_by"})).await;
    assert!(seen["from"].as_array().expect("list").iter().all(|f| f == &json!(worker_ext)), "{seen}");
    // The CLI does the same in one command.
    let (code, out, err, _) =
        lab.grenache(&hosts[1], &["--grape", &g1, "request", "nat_svc", "[1,2]", "--transport", "utp", "--broker", "nat_broker"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(serde_json::from_str::<Value>(&out).expect("json")["payload"], json!([1, 2]));
}

/// (4) The worker's NAT link holds every packet 50 ms each way and loses 5 % of them: a request
/// with a 1 MB payload, echoed back, still completes intact (about 30 s: 2 MB at the rate a
/// congestion-controlled stream gets through 5 % loss at a 100 ms round trip).
#[tokio::test]
async fn one_megabyte_payloads_cross_a_lossy_slow_link_intact() {
    let (mut lab, public, hosts) = Lab::build_lossy(&[Nat::PortRestricted], Some((50, 5)));
    let (g1, g2) = lab.services(&public, "nat_broker").await;
    lab.worker(&hosts[0], &g2, "nat_svc", "nat_broker").await;
    let c = lab.spawn(&public, &PathBuf::from(env!("CARGO_BIN_EXE_utp_nat_peer")), &[&g1]);
    assert_eq!(lab.procs[c].json(LONG).await["ready"], true);
    for n in 0..1u64 {
        // 1 MB of text that differs per request and per position.
        let big: String = (0..(1u64 << 20)).map(|i| char::from(b'a' + ((i * 7 + n) % 26) as u8)).collect();
        let r = lab.procs[c]
            .ask(json!({"cmd": "request", "broker": "nat_broker", "name": "nat_svc", "payload": {"n": n, "data": big}, "timeout_ms": 120000}))
            .await;
        assert_eq!(r["reply"]["payload"]["n"], n, "{}", r["error"]);
        assert!(r["reply"]["payload"]["data"] == big, "request {n}: the payload came back altered");
        eprintln!("1 MB echo {n} over 50 ms + 5 % loss: {} ms", r["elapsed_ms"]);
    }
}

/// (3) The client's NAT maps every destination to a new port (symmetric): the endpoint the
/// broker saw is not the one the punches come from, so nothing gets through; the typed error
/// arrives in bounded time.
#[tokio::test]
async fn a_symmetric_nat_gives_the_punch_timeout_in_bounded_time() {
    let (mut lab, public, hosts) = Lab::build(&[Nat::PortRestricted, Nat::Symmetric]);
    let (g1, g2) = lab.services(&public, "nat_broker").await;
    lab.worker(&hosts[0], &g2, "nat_svc", "nat_broker").await;
    let args = ["--grape", &g1, "request", "nat_svc", "1", "--transport", "utp", "--broker", "nat_broker", "--punch-timeout", "2000"];
    let (code, out, err, took) = lab.grenache(&hosts[1], &args).await;
    assert_eq!(code, 9, "out {out}, err {err}");
    assert!(err.starts_with("ERR_PUNCH_TIMEOUT"), "{err}");
    assert!(took < Duration::from_secs(20), "{took:?}");
}

/// (5) The proxy to uTP: a grenache-nodejs-http client of the Node reference, public, calls
/// `grenache proxy NAME TARGET --from http --to utp --broker` (public), which finds the uTP worker
/// behind the NAT through the broker, punches it and forwards; the reply comes back over HTTP.
#[tokio::test]
async fn a_reference_http_client_reaches_a_natd_utp_worker_through_the_proxy() {
    require_node_peers();
    let (mut lab, public, hosts) = Lab::build(&[Nat::PortRestricted]);
    let (g1, g2) = lab.services(&public, "nat_broker").await;
    lab.worker(&hosts[0], &g2, "nat_svc", "nat_broker").await;
    // Bound to the public address, for the reason given in `services`.
    let args = [
        "--grape",
        &g1,
        "proxy",
        "nat_http",
        "nat_svc",
        "--from",
        "http",
        "--to",
        "utp",
        "--broker",
        "nat_broker",
        "--bind",
        "10.0.1.1",
        "--timeout",
        "20000",
        "--interval",
        "1000",
    ];
    let p = lab.spawn(&public, &cli_bin("grenache"), &args);
    assert_eq!(lab.procs[p].json(LONG).await["event"], "started");
    // The reference client, retrying while the proxy's announce is not visible yet; three
    // requests in a row (the second and third reuse the punched path and the pools).
    let nm = interop_dir().join("node_modules");
    let script = format!(
        r#"
        const Link = require({link:?})
        const {{ PeerRPCClient }} = require({http:?})
        const link = new Link({{ grape: {g1:?} }})
        link.start()
        const peer = new PeerRPCClient(link, {{}})
        peer.init()
        const out = []
        const done = (o) => {{ console.log(JSON.stringify(o)); peer.stop(); link.stop() }}
        const go = (n, tries) => peer.request('nat_http', {{ n }}, {{ timeout: 20000 }}, (err, data) => {{
          if (err && /LOOKUP_EMPTY/.test(err.message) && tries < 100) return setTimeout(() => go(n, tries + 1), 200)
          if (err) return done({{ error: err.message, out }})
          out.push(data)
          if (n < 3) return go(n + 1, 0)
          done({{ out }})
        }})
        go(1, 0)
        "#,
        link = nm.join("grenache-nodejs-link").to_string_lossy(),
        http = nm.join("grenache-nodejs-http").to_string_lossy(),
    );
    let c = lab.spawn(&public, &PathBuf::from("node"), &["-e", &script]);
    let r = lab.procs[c].json(LONG).await;
    let out = r["out"].as_array().unwrap_or_else(|| panic!("{r}"));
    assert_eq!(out.len(), 3, "{r}");
    for (i, reply) in out.iter().enumerate() {
        assert_eq!(reply["payload"], json!({"n": i + 1}), "{r}");
        // The worker saw the proxy, public, as it is.
        assert_eq!(ip_of(reply["remote"].as_str().expect("remote")), "10.0.1.1", "{r}");
    }
}
