//! A small network of namespaces for the tests that need several hosts: one hub namespace holding
//! a bridge, and one namespace per host on a veth pair into it, each with one address (IPv4 or
//! IPv6). Nothing is added to the host's own network. Needs root and `ip` (iproute2).
//!
//! Every process started in it and every namespace (with it every veth, the bridge and any
//! iptables rule inside) is removed when the [`Bridge`] is dropped, also when a test fails.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};

/// Runs a command to completion; panics with its stderr when it fails.
pub fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).stderr(Stdio::piped()).output().unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// The namespaces, the bridge and the processes of one test.
#[derive(Debug)]
pub struct Bridge {
    /// One letter that keeps the names of one test's devices apart from another's.
    kind: char,
    /// Four hex digits that keep the names of parallel runs apart.
    tag: String,
    namespaces: Vec<String>,
    children: Vec<Child>,
}

impl Bridge {
    /// Builds the hub (its bridge at `hub_addr`, e.g. `"10.77.0.254/24"`) and one host
    /// namespace per address of `hosts` (e.g. `"10.77.0.1/24"`, `"fd77::1/64"`). IPv6
    /// addresses skip duplicate address detection, so they are usable at once.
    pub fn build(kind: char, hub_addr: &str, hosts: &[String]) -> Bridge {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let tag = format!("{:04x}", (std::process::id() ^ nanos) & 0xffff);
        let mut net = Bridge { kind, tag, namespaces: Vec::new(), children: Vec::new() };
        let (hub, br) = (net.hub(), net.dev('b', None));
        sh(&["ip", "netns", "add", &hub]);
        net.namespaces.push(hub.clone());
        sh(&["ip", "-n", &hub, "link", "set", "lo", "up"]);
        sh(&["ip", "-n", &hub, "link", "add", &br, "type", "bridge"]);
        add_addr(&hub, &br, hub_addr);
        sh(&["ip", "-n", &hub, "link", "set", &br, "up"]);
        for (i, addr) in hosts.iter().enumerate() {
            let ns = net.ns(i);
            sh(&["ip", "netns", "add", &ns]);
            net.namespaces.push(ns.clone());
            let (va, vb) = (net.dev('a', Some(i)), net.dev('v', Some(i)));
            sh(&["ip", "-n", &hub, "link", "add", &va, "type", "veth", "peer", "name", &vb, "netns", &ns]);
            sh(&["ip", "-n", &hub, "link", "set", &va, "master", &br]);
            sh(&["ip", "-n", &hub, "link", "set", &va, "up"]);
            sh(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
            add_addr(&ns, &vb, addr);
            sh(&["ip", "-n", &ns, "link", "set", &vb, "up"]);
        }
        net
    }

    /// The hub namespace's name.
    pub fn hub(&self) -> String {
        format!("{}h{}", self.kind, self.tag)
    }

    /// Host `i`'s namespace name.
    pub fn ns(&self, i: usize) -> String {
        format!("{}n{}-{i}", self.kind, self.tag)
    }

    fn dev(&self, what: char, i: Option<usize>) -> String {
        match i {
            Some(i) => format!("{}{what}{}{i}", self.kind, self.tag),
            None => format!("{}{what}{}", self.kind, self.tag),
        }
    }

    /// Starts `program args` in host `i`'s namespace (stdin and stdout closed, stderr
    /// inherited); it is killed when the bridge is dropped.
    pub fn spawn(&mut self, i: usize, program: &std::path::Path, args: &[&str]) {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns(i)])
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {} in its namespace: {e}", program.display()));
        self.children.push(child);
    }

    /// Runs `scenario` on a thread of its own that joined the hub namespace (the test's own
    /// connections start from there), with a current-thread runtime for it, then removes
    /// everything; a panic of the scenario is raised again after that.
    pub fn run_in_hub(self, scenario: impl FnOnce(&Bridge, &tokio::runtime::Runtime) + Send) {
        let hub = File::open(format!("/run/netns/{}", self.hub())).expect("open the hub namespace");
        let net = &self;
        let res = std::thread::scope(|s| {
            s.spawn(move || {
                // SAFETY: setns on this thread only, with a valid namespace fd.
                let rc = unsafe { libc::setns(hub.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
                scenario(net, &rt);
            })
            .join()
        });
        drop(self);
        if let Err(p) = res {
            std::panic::resume_unwind(p);
        }
    }
}

fn add_addr(ns: &str, dev: &str, addr: &str) {
    if addr.contains(':') {
        sh(&["ip", "-n", ns, "addr", "add", addr, "dev", dev, "nodad"]);
    } else {
        sh(&["ip", "-n", ns, "addr", "add", addr, "dev", dev]);
    }
}

impl Drop for Bridge {
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
