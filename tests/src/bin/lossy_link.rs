//! A point-to-point IP link between two network namespaces with delay and loss, for the NAT
//! tests on kernels without `sch_netem`: a TUN device in each namespace, and this process
//! copying IP packets between them, each one held `DELAY_MS` and dropped with probability
//! `LOSS_PERCENT`/100. Usage (as root):
//!
//! `lossy_link NS_A DEV_A NS_B DEV_B DELAY_MS LOSS_PERCENT`
//!
//! Prints `ready` once both devices exist (the caller then gives them addresses and brings them
//! up with `ip`), and runs until killed or until stdin closes.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

const TUNSETIFF: libc::c_ulong = 0x400454ca;

fn enter(ns: &str) {
    let f = File::open(format!("/var/run/netns/{ns}")).unwrap_or_else(|e| panic!("netns {ns}: {e}"));
    // SAFETY: a valid namespace fd; this thread moves to that network namespace.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {ns}: {}", std::io::Error::last_os_error());
}

fn tun(name: &str) -> File {
    let f = std::fs::OpenOptions::new().read(true).write(true).open("/dev/net/tun").expect("open /dev/net/tun");
    #[repr(C)]
    struct IfReq {
        name: [u8; 16],
        flags: libc::c_short,
        _pad: [u8; 22],
    }
    let mut req = IfReq { name: [0; 16], flags: (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short, _pad: [0; 22] };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF with a properly laid out ifreq on an open tun fd.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), TUNSETIFF, &mut req) };
    assert_eq!(rc, 0, "TUNSETIFF {name}: {}", std::io::Error::last_os_error());
    f
}

/// Packets waiting for their time, and a wake-up for the writer.
type DelayQueue = Arc<(Mutex<VecDeque<(Instant, Vec<u8>)>>, Condvar)>;

/// Copies packets from `from` to `to`, each held `delay`, dropping `loss` of them.
fn pump(mut from: File, to: File, delay: Duration, loss: f64) {
    let queue: DelayQueue = Arc::default();
    let q = queue.clone();
    std::thread::spawn(move || {
        let mut to = to;
        let (lock, cv) = &*q;
        loop {
            let (due, pkt) = {
                let mut g = lock.lock().unwrap_or_else(|e| e.into_inner());
                while g.is_empty() {
                    g = cv.wait(g).unwrap_or_else(|e| e.into_inner());
                }
                g.pop_front().unwrap_or_else(|| (Instant::now(), Vec::new()))
            };
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let _ = to.write(&pkt);
        }
    });
    let mut buf = vec![0u8; 65536];
    let mut seed: u64 = 0x9e3779b97f4a7c15 ^ (std::process::id() as u64);
    loop {
        let n = match from.read(&mut buf) {
            Ok(n) => n,
            Err(_) => return,
        };
        // xorshift: enough randomness for packet loss.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        if (seed % 10_000) as f64 / 10_000.0 < loss {
            continue;
        }
        let (lock, cv) = &*queue;
        lock.lock().unwrap_or_else(|e| e.into_inner()).push_back((Instant::now() + delay, buf[..n].to_vec()));
        cv.notify_one();
    }
}

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    assert_eq!(a.len(), 6, "usage: lossy_link NS_A DEV_A NS_B DEV_B DELAY_MS LOSS_PERCENT");
    let delay = Duration::from_millis(a[4].parse().expect("delay"));
    let loss: f64 = a[5].parse::<f64>().expect("loss") / 100.0;
    enter(&a[0]);
    let ta = tun(&a[1]);
    enter(&a[2]);
    let tb = tun(&a[3]);
    let (ra, rb) = (ta.try_clone().expect("dup"), tb.try_clone().expect("dup"));
    std::thread::spawn(move || pump(ra, tb, delay, loss));
    std::thread::spawn(move || pump(rb, ta, delay, loss));
    println!("ready");
    let _ = std::io::stdout().flush();
    let mut sink = [0u8; 64];
    // SAFETY: fd 0 is this process's stdin.
    let mut stdin = unsafe { File::from_raw_fd(0) };
    while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
}
