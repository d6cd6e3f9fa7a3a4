//! Grapes on hosts that have IPv6 addresses only: 3 `grape` processes with their default DHT
//! settings (dual-stack where the host has IPv6), each in a network namespace of its own on one
//! bridge (in a 4th namespace: nothing is added to the host's own network), with no IPv4 address
//! but loopback. Bootstrapped as a chain over IPv6, they form one network: a service announced
//! through the last Grape is found through the first as `[fd77::3]:port`.
//!
//! Needs root and `ip` (iproute2; scripts/test.sh installs it). Every namespace (and with it every
//! veth and the bridge) and every process is removed by a guard, also when the test fails. Builds
//! the `grape` binary first (debug profile).

use std::fs::File;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use grenache_e2e::grapes::{self, grape_bin};
use tokio::net::TcpStream;

const N: usize = 3;
const DHT_PORT: u16 = 20001;
const API_PORT: u16 = 30001;

/// Runs a command to completion; panics with its stderr when it fails.
fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).stderr(Stdio::piped()).output().unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// The namespaces, the bridge and the Grape processes of one test; all removed on drop.
struct Net {
    tag: String,
    namespaces: Vec<String>,
    children: Vec<Child>,
}

impl Net {
    fn hub(&self) -> String {
        format!("6h{}", self.tag)
    }
    fn ns(&self, i: usize) -> String {
        format!("6n{}-{i}", self.tag)
    }
    /// Grape `i` is fd77::(i+1); the hub is fd77::fe.
    fn ip(i: usize) -> String {
        format!("fd77::{}", i + 1)
    }

    fn build(tag: String) -> Net {
        let mut net = Net { tag, namespaces: Vec::new(), children: Vec::new() };
        let (hub, br) = (net.hub(), format!("b6{}", net.tag));
        sh(&["ip", "netns", "add", &hub]);
        net.namespaces.push(hub.clone());
        sh(&["ip", "-n", &hub, "link", "set", "lo", "up"]);
        sh(&["ip", "-n", &hub, "link", "add", &br, "type", "bridge"]);
        sh(&["ip", "-n", &hub, "addr", "add", "fd77::fe/64", "dev", &br, "nodad"]);
        sh(&["ip", "-n", &hub, "link", "set", &br, "up"]);
        for i in 0..N {
            let ns = net.ns(i);
            sh(&["ip", "netns", "add", &ns]);
            net.namespaces.push(ns.clone());
            let (va, vb) = (format!("x6{}{i}", net.tag), format!("y6{}{i}", net.tag));
            sh(&["ip", "-n", &hub, "link", "add", &va, "type", "veth", "peer", "name", &vb, "netns", &ns]);
            sh(&["ip", "-n", &hub, "link", "set", &va, "master", &br]);
            sh(&["ip", "-n", &hub, "link", "set", &va, "up"]);
            sh(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
            sh(&["ip", "-n", &ns, "addr", "add", &format!("{}/64", Net::ip(i)), "dev", &vb, "nodad"]);
            sh(&["ip", "-n", &ns, "link", "set", &vb, "up"]);
        }
        net
    }

    /// Starts `grape` in namespace `i` with the default DHT settings, its API on `[::]`,
    /// bootstrapped from Grape `i - 1` over IPv6.
    fn start_grape(&mut self, i: usize) {
        let boot = if i == 0 { String::new() } else { format!("[{}]:{DHT_PORT}", Net::ip(i - 1)) };
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns(i)])
            .arg(grape_bin())
            .args(["--dp", &DHT_PORT.to_string(), "--aph", &API_PORT.to_string(), "-b", "::", "--bn", &boot, "--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn grape in its namespace");
        self.children.push(child);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).stderr(Stdio::null()).status();
        }
    }
}

fn api(i: usize) -> SocketAddr {
    format!("[{}]:{API_PORT}", Net::ip(i)).parse().expect("address")
}

async fn scenario() {
    let t0 = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(30);
    for i in 0..N {
        while TcpStream::connect(api(i)).await.is_err() {
            assert!(Instant::now() < deadline, "grape {i} never listened");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    eprintln!("APIs listening after {:?}", t0.elapsed());
    let want = vec![format!("[{}]:7000", Net::ip(N - 1))];
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let acks = grapes::announce(api(N - 1), "v6ns:svc", 7000).await;
        let found = grapes::lookup(api(0), "v6ns:svc").await;
        if found == want {
            eprintln!("announced ({acks} nodes) and found across IPv6-only hosts after {:?}", t0.elapsed());
            break;
        }
        assert!(Instant::now() < deadline, "not found through grape 0: {found:?} (announce: {acks})");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(grapes::lookup(api(1), "v6ns:svc").await, want);
}

#[test]
fn grapes_on_ipv6_only_hosts_form_a_network() {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let tag = format!("{:04x}", (std::process::id() ^ nanos) & 0xffff);
    let mut net = Net::build(tag);
    for i in 0..N {
        net.start_grape(i);
    }
    // The test's own HTTP calls are made from the hub namespace: a thread of its own joins it.
    let hub = File::open(format!("/run/netns/{}", net.hub())).expect("open the hub namespace");
    let res = std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns on this thread only, with a valid namespace fd.
            let rc = unsafe { libc::setns(hub.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(scenario());
        })
        .join()
    });
    drop(net);
    if let Err(p) = res {
        std::panic::resume_unwind(p);
    }
}
