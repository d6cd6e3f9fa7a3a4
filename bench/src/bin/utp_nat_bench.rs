//! uTP RPC through a NAT and a slow, lossy link, beside our HTTP and WS transports through the
//! same NAT and link, in the same run. Needs root (network namespaces, iptables, TUN).
//!
//! ```text
//! cargo run --release -p grenache-bench --bin utp_nat_bench
//! ```
//!
//! The namespaces are those of `tests/tests/utp_nat.rs` scenario (4): a public namespace
//! (10.0.1.1), a router doing iptables `MASQUERADE` that drops unsolicited inbound packets (a
//! port-restricted NAT), and a host behind it (192.168.1.2). The link between the public side and
//! the router holds every packet 50 ms in each direction and drops 5 % of them. This kernel has no
//! `sch_netem` (`modprobe sch_netem` fails), so the link is a TUN device at each end with a
//! process copying packets between them with the delay and the loss (`grenache_e2e::lossy`, run
//! as a second process of this binary).
//!
//! * uTP: the worker is behind the NAT (the point of the transport): it punches the public
//!   client's socket, and the client sends its requests to the endpoint the punch came from (the
//!   worker's NAT mapping), as in grenache-nodejs-utp's `punch_simple_servers` flow. Measured with
//!   each message written alone (the default, for legacy peers) and with shared packets.
//! * HTTP and WS: a TCP server behind a NAT cannot be reached, so the server is public and the
//!   client is behind the NAT: the same NAT and the same link, the connection opened the other way.
//!
//! For each: sequential `"hello"` requests, rounds of 100 at once, and 1 MB string payloads echoed
//! back (MB/s counts the payload one way). A request that fails is tried again (at most three
//! times) and counted; a 1 MB echo that comes back different from what was sent is counted too
//! (the run goes on). The server and the client run on runtimes of their own,
//! each on a thread inside its namespace. Every namespace and process is removed at the end, also
//! on a failure (Drop) or Ctrl-C (the lossy-link process exits when our pipe to it closes).
//! A libutp row is not here: the libutp echo (`tests/interop/utp_bench.js`) is one Node process
//! holding both ends, which cannot straddle two namespaces.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use grenache::rpc::{ClientTransport, OutgoingRequest, Reply, Request, ServerTransport};
use grenache::transport::http::{HttpClient, HttpServer, HttpServerConfig};
use grenache::transport::utp::{PunchEvent, UtpClient, UtpClientConfig, UtpNode, UtpServer, UtpServerConfig};
use grenache::transport::ws::{WsClient, WsServer, WsServerConfig};
use serde_json::json;

const SEQ: usize = 40;
const ROUNDS: usize = 3;
const MEGABYTES: usize = 2;
const DELAY_MS: u64 = 50;
const LOSS_PERCENT: u64 = 5;

fn run(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// The namespaces and the lossy-link process; removed on drop.
struct Lab {
    namespaces: Vec<String>,
    link: Option<Child>,
}

impl Lab {
    fn ns(&mut self, name: String) -> String {
        run(&["ip", "netns", "add", &name]);
        self.namespaces.push(name.clone());
        run(&["ip", "netns", "exec", &name, "ip", "link", "set", "lo", "up"]);
        name
    }

    fn exec(ns: &str, args: &[&str]) {
        let mut a = vec!["ip", "netns", "exec", ns];
        a.extend_from_slice(args);
        run(&a);
    }

    /// Public namespace P, router R (NAT), host H behind it; P-R through the lossy link.
    fn build() -> (Lab, String, String) {
        let id = format!("b{:x}", std::process::id() % 0xfffff);
        let mut lab = Lab { namespaces: Vec::new(), link: None };
        let (p, r, h) = (lab.ns(format!("gr-{id}-P")), lab.ns(format!("gr-{id}-R")), lab.ns(format!("gr-{id}-H")));
        let (dp, dr, dl, dh) = (format!("{id}p"), format!("{id}r"), format!("{id}l"), format!("{id}h"));
        let me = std::env::current_exe().expect("current exe");
        let mut child = Command::new(me)
            .args(["lossy-link", &p, &dp, &r, &dr, &DELAY_MS.to_string(), &LOSS_PERCENT.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the lossy link");
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().expect("stdout")), &mut line).expect("read");
        lab.link = Some(child);
        assert_eq!(line.trim(), "ready", "the lossy link did not start");
        for (dev, ns, addr) in [(&dp, &p, "10.0.1.1/24"), (&dr, &r, "10.0.1.2/24")] {
            Lab::exec(ns, &["ip", "addr", "add", addr, "dev", dev]);
            Lab::exec(ns, &["ip", "link", "set", dev, "up"]);
        }
        run(&["ip", "link", "add", &dl, "type", "veth", "peer", "name", &dh]);
        for (dev, ns, addr) in [(&dl, &r, "192.168.1.1/24"), (&dh, &h, "192.168.1.2/24")] {
            run(&["ip", "link", "set", dev, "netns", ns]);
            Lab::exec(ns, &["ip", "addr", "add", addr, "dev", dev]);
            Lab::exec(ns, &["ip", "link", "set", dev, "up"]);
        }
        Lab::exec(&h, &["ip", "route", "add", "default", "via", "192.168.1.1"]);
        Lab::exec(&r, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        Lab::exec(&r, &["iptables", "-t", "nat", "-A", "POSTROUTING", "-o", &dr, "-j", "MASQUERADE"]);
        for chain in ["INPUT", "FORWARD"] {
            Lab::exec(&r, &["iptables", "-A", chain, "-i", &dr, "-m", "conntrack", "--ctstate", "NEW", "-j", "DROP"]);
        }
        (lab, p, h)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut c) = self.link.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in self.namespaces.drain(..) {
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
    }
}

/// A single-threaded runtime on a thread inside namespace `ns`.
fn runtime_in(ns: &str) -> tokio::runtime::Handle {
    let (tx, rx) = std::sync::mpsc::channel();
    let ns = ns.to_string();
    std::thread::spawn(move || {
        grenache_e2e::lossy::enter(&ns);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        tx.send(rt.handle().clone()).expect("send");
        rt.block_on(std::future::pending::<()>());
    });
    rx.recv().expect("runtime")
}

fn echo(req: Request, reply: Reply) {
    reply.ok_raw(req.payload.into_raw());
}

fn out(payload: &Arc<str>) -> OutgoingRequest {
    OutgoingRequest {
        rid: grenache::rpc::new_rid(),
        key: Arc::from("bench"),
        payload_json: payload.clone(),
        timeout: Some(Duration::from_secs(600)),
        compress: false,
    }
}

/// One row: (sequential req/s, 100-in-flight req/s, MB/s of 1 MB echoes, failed attempts, 1 MB
/// echoes that came back altered).
type Row = (f64, f64, f64, usize, usize);

/// One request, tried again (at most 3 times) when it fails; the failures are counted.
async fn request(
    client: &Arc<dyn ClientTransport>,
    dest: &str,
    payload: &Arc<str>,
    failures: &std::sync::atomic::AtomicUsize,
) -> serde_json::Value {
    let mut last = None;
    for _ in 0..3 {
        match client.request(dest, out(payload)).await {
            Ok(v) => return v,
            Err(e) => {
                failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                eprintln!("  a request failed (tried again): {e}");
                last = Some(e);
            }
        }
    }
    panic!("three attempts failed: {last:?}");
}

/// Measures one transport (see [`Row`]).
async fn measure(client: Arc<dyn ClientTransport>, dest: String) -> Row {
    let failures = std::sync::atomic::AtomicUsize::new(0);
    let hello: Arc<str> = Arc::from("\"hello\"");
    for _ in 0..5 {
        request(&client, &dest, &hello, &failures).await;
    }
    let t0 = Instant::now();
    for _ in 0..SEQ {
        request(&client, &dest, &hello, &failures).await;
    }
    let seq = SEQ as f64 / t0.elapsed().as_secs_f64();
    eprintln!("  sequential: {seq:.1} req/s");
    let t0 = Instant::now();
    for _ in 0..ROUNDS {
        let futs = (0..100).map(|_| request(&client, &dest, &hello, &failures));
        futures_util::future::join_all(futs).await;
    }
    let conc = (ROUNDS * 100) as f64 / t0.elapsed().as_secs_f64();
    eprintln!("  100 in flight: {conc:.1} req/s");
    let big: Arc<str> = Arc::from(json!("x".repeat(1 << 20)).to_string());
    let t0 = Instant::now();
    let mut altered = 0;
    for _ in 0..MEGABYTES {
        let v = request(&client, &dest, &big, &failures).await;
        if v.as_str() != Some(&big[1..big.len() - 1]) {
            altered += 1;
            eprintln!("  ALTERED: a 1 MB echo came back with {:?} characters", v.as_str().map(str::len));
        }
    }
    let mbps = MEGABYTES as f64 / t0.elapsed().as_secs_f64();
    eprintln!("  1 MB echoes: {mbps:.3} MB/s");
    (seq, conc, mbps, failures.into_inner(), altered)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("lossy-link") {
        return grenache_e2e::lossy::run(&args[1..]);
    }
    let (lab, public, host) = Lab::build();
    let pub_rt = runtime_in(&public);
    let host_rt = runtime_in(&host);
    let measure_on = |rt: &tokio::runtime::Handle, client: Arc<dyn ClientTransport>, dest: String| {
        let (tx, rx) = std::sync::mpsc::channel();
        eprintln!("{dest}:");
        rt.spawn(async move {
            let _ = tx.send(measure(client, dest).await);
        });
        rx.recv().expect("measured")
    };
    let mut rows: Vec<(String, Row)> = Vec::new();
    let public_any: SocketAddr = "10.0.1.1:0".parse().expect("addr");
    let any: SocketAddr = "0.0.0.0:0".parse().expect("addr");

    // HTTP and WS: server public, client behind the NAT.
    let block = |rt: &tokio::runtime::Handle, f: std::pin::Pin<Box<dyn std::future::Future<Output = Arc<dyn ServerTransport>> + Send>>| {
        let (tx, rx) = std::sync::mpsc::channel();
        rt.spawn(async move {
            let _ = tx.send(f.await);
        });
        rx.recv().expect("bound")
    };
    let http = block(
        &pub_rt,
        Box::pin(async move {
            Arc::new(HttpServer::bind(public_any, Arc::new(echo), HttpServerConfig::default()).await.expect("http"))
                as Arc<dyn ServerTransport>
        }),
    );
    let c: Arc<dyn ClientTransport> = Arc::new(HttpClient::default());
    rows.push(("ours, HTTP (client behind the NAT)".into(), measure_on(&host_rt, c, http.local_addr().to_string())));
    http.close();
    let ws = block(
        &pub_rt,
        Box::pin(async move {
            Arc::new(WsServer::bind(public_any, echo, WsServerConfig::default()).await.expect("ws")) as Arc<dyn ServerTransport>
        }),
    );
    let (tx, rx) = std::sync::mpsc::channel();
    host_rt.spawn(async move {
        let _ = tx.send(Arc::new(WsClient::default()) as Arc<dyn ClientTransport>);
    });
    let c = rx.recv().expect("ws client");
    rows.push(("ours, WS (client behind the NAT)".into(), measure_on(&host_rt, c, ws.local_addr().to_string())));
    ws.close();

    // uTP: worker behind the NAT punches the public client, which requests the punch's source.
    for alone in [true, false] {
        let (tx, rx) = std::sync::mpsc::channel();
        host_rt.spawn(async move {
            let config = UtpServerConfig { one_message_per_write: alone, ..Default::default() };
            let _ = tx.send(UtpServer::bind(any, Arc::new(echo), config).await.expect("utp server"));
        });
        let server = rx.recv().expect("utp server");
        let (tx, rx) = std::sync::mpsc::channel();
        pub_rt.spawn(async move {
            let _ = tx.send(UtpNode::bind(public_any).await.expect("utp node"));
        });
        let node = rx.recv().expect("node");
        let mut events = node.subscribe();
        let (worker_node, client_addr) = (server.node().clone(), node.local_addr());
        let (tx, rx) = std::sync::mpsc::channel();
        host_rt.spawn(async move {
            let _ = tx.send(worker_node.punch(client_addr, Duration::from_secs(30)).await);
        });
        rx.recv().expect("punch").expect("the worker's punch was answered");
        let dest = loop {
            match events.try_recv() {
                Ok(PunchEvent::Punched { from }) => break from,
                Ok(_) => {}
                Err(e) => panic!("no punch seen by the client: {e}"),
            }
        };
        assert_eq!(dest.ip().to_string(), "10.0.1.2", "the punch came through the NAT");
        // Connecting may take a few SYN retransmissions through the loss.
        let config = UtpClientConfig { one_message_per_write: alone, connect_timeout: Duration::from_secs(20), ..Default::default() };
        let (tx, rx) = std::sync::mpsc::channel();
        pub_rt.spawn(async move {
            let _ = tx.send(Arc::new(UtpClient::with_node(node, config)) as Arc<dyn ClientTransport>);
        });
        let c = rx.recv().expect("utp client");
        let name = if alone {
            "ours, uTP, worker behind the NAT (one message per write)"
        } else {
            "ours, uTP, worker behind the NAT (shared packets)"
        };
        rows.push((name.into(), measure_on(&pub_rt, c, dest.to_string())));
        server.close();
    }

    println!(
        "| NAT + {DELAY_MS} ms each way + {LOSS_PERCENT} % loss | sequential req/s | 100 in flight req/s | MB/s, 1 MB echoes | failed attempts (tried again) | 1 MB echoes altered |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, (seq, conc, mbps, failed, altered)) in rows {
        println!("| {name} | {seq:.1} | {conc:.1} | {mbps:.3} | {failed} | {altered} of {MEGABYTES} |");
    }
    drop(lab);
}
