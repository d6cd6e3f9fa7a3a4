//! The simulator's in-memory network: a datagram queue per address, a one-way latency fixed per
//! pair of addresses, a loss draw per datagram, bounded queues, counters. An [`Endpoint`] is what a
//! simulated node has instead of its UDP socket (`node::Transport::Sim`); [`super::sim`] builds
//! networks of nodes on it. Everything here runs on tokio's clock, paused in the simulator.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The address of node `i`: `10.x.y.z:20001` with `x.y.z` = `i + 1` (distinct for up to 16
/// million nodes).
pub(crate) fn addr_of(i: usize) -> SocketAddrV4 {
    let n = u32::try_from(i + 1).unwrap_or(u32::MAX) & 0x00FF_FFFF;
    SocketAddrV4::new(Ipv4Addr::from(0x0A00_0000 | n), 20001)
}

/// The simulated network's behaviour.
#[derive(Debug, Clone, Copy)]
pub struct NetConfig {
    /// One-way latency bounds in milliseconds; each pair of addresses gets a fixed latency drawn
    /// uniformly between them.
    pub latency_ms: (u32, u32),
    /// Fraction of datagrams lost (0.0-1.0), drawn per datagram.
    pub loss: f64,
    /// Seed of the latencies and losses.
    pub seed: u64,
    /// Most datagrams waiting in one endpoint's queue; more are dropped.
    pub queue: usize,
}

impl Default for NetConfig {
    /// 10-200 ms one way, 1 % loss, seed 1, 4096 datagrams per queue.
    fn default() -> Self {
        NetConfig { latency_ms: (10, 200), loss: 0.01, seed: 1, queue: 4096 }
    }
}

/// Datagram counters of a simulated network.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Datagrams sent.
    pub sent: u64,
    /// Of those, dropped by the loss draw.
    pub lost: u64,
    /// Of those, sent to an address nobody holds (a node that left).
    pub unreachable: u64,
    /// Of those, dropped because the destination's queue was full.
    pub overflow: u64,
}

struct Datagram {
    at: Instant,
    seq: u64,
    from: SocketAddrV4,
    data: Vec<u8>,
}

impl PartialEq for Datagram {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Datagram {}
impl PartialOrd for Datagram {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Datagram {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

/// An endpoint's incoming datagrams, earliest delivery first.
#[derive(Default)]
struct Mailbox {
    queue: Mutex<BinaryHeap<Reverse<Datagram>>>,
    notify: Notify,
}

pub(crate) struct Net {
    config: NetConfig,
    boxes: Mutex<HashMap<SocketAddrV4, Arc<Mailbox>>>,
    seq: AtomicU64,
    sent: AtomicU64,
    lost: AtomicU64,
    unreachable: AtomicU64,
    overflow: AtomicU64,
}

/// SplitMix64: a fast, well-mixed hash of a 64-bit value.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn addr_key(a: SocketAddrV4) -> u64 {
    (u64::from(u32::from(*a.ip())) << 16) | u64::from(a.port())
}

impl Net {
    pub(crate) fn new(config: NetConfig) -> Net {
        Net {
            config,
            boxes: Mutex::new(HashMap::new()),
            seq: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            unreachable: AtomicU64::new(0),
            overflow: AtomicU64::new(0),
        }
    }

    /// The network's behaviour.
    pub(crate) fn config(&self) -> &NetConfig {
        &self.config
    }

    /// An endpoint holding `addr`; `None` when another holds it.
    pub(crate) fn attach(net: &Arc<Net>, addr: SocketAddrV4) -> Option<Endpoint> {
        let mailbox = Arc::new(Mailbox::default());
        let mut boxes = lock(&net.boxes);
        if boxes.contains_key(&addr) {
            return None;
        }
        boxes.insert(addr, mailbox.clone());
        Some(Endpoint { addr, net: net.clone(), mailbox })
    }

    /// Takes `addr` off the network (datagrams to it are lost from now on).
    pub(crate) fn cut(&self, addr: SocketAddrV4) {
        lock(&self.boxes).remove(&addr);
    }

    /// Addresses held.
    pub(crate) fn len(&self) -> usize {
        lock(&self.boxes).len()
    }

    /// Datagram counters since the network was made.
    pub(crate) fn stats(&self) -> NetStats {
        NetStats {
            sent: self.sent.load(Ordering::Relaxed),
            lost: self.lost.load(Ordering::Relaxed),
            unreachable: self.unreachable.load(Ordering::Relaxed),
            overflow: self.overflow.load(Ordering::Relaxed),
        }
    }

    fn latency(&self, a: SocketAddrV4, b: SocketAddrV4) -> Duration {
        let (lo, hi) = (self.config.latency_ms.0.min(self.config.latency_ms.1), self.config.latency_ms.0.max(self.config.latency_ms.1));
        let (x, y) = if addr_key(a) <= addr_key(b) { (a, b) } else { (b, a) };
        let h = mix(self.config.seed ^ mix(addr_key(x) ^ mix(addr_key(y))));
        Duration::from_millis(u64::from(lo) + h % (u64::from(hi - lo) + 1))
    }

    fn send(&self, from: SocketAddrV4, data: &[u8], to: SocketAddrV4) {
        self.sent.fetch_add(1, Ordering::Relaxed);
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        if self.config.loss > 0.0 && (mix(self.config.seed.rotate_left(17) ^ seq) as f64 / u64::MAX as f64) < self.config.loss {
            self.lost.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let Some(mb) = lock(&self.boxes).get(&to).cloned() else {
            self.unreachable.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let at = Instant::now() + self.latency(from, to);
        {
            let mut q = lock(&mb.queue);
            if q.len() >= self.config.queue {
                self.overflow.fetch_add(1, Ordering::Relaxed);
                return;
            }
            q.push(Reverse(Datagram { at, seq, from, data: data.to_vec() }));
        }
        mb.notify.notify_one();
    }
}

/// A node's end of the network (what replaces its UDP socket).
pub(crate) struct Endpoint {
    addr: SocketAddrV4,
    net: Arc<Net>,
    mailbox: Arc<Mailbox>,
}

impl Endpoint {
    pub(crate) fn addr(&self) -> SocketAddrV4 {
        self.addr
    }

    pub(crate) fn send(&self, data: &[u8], to: SocketAddrV4) {
        self.net.send(self.addr, data, to);
    }

    /// The next datagram, when its delivery time has come.
    pub(crate) async fn recv(&self) -> (Vec<u8>, SocketAddrV4) {
        loop {
            let wait = {
                let mut q = lock(&self.mailbox.queue);
                match q.peek() {
                    Some(Reverse(d)) if d.at <= Instant::now() => {
                        let Some(Reverse(d)) = q.pop() else { continue };
                        return (d.data, d.from);
                    }
                    Some(Reverse(d)) => Some(d.at),
                    None => None,
                }
            };
            match wait {
                Some(at) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {}
                        _ = self.mailbox.notify.notified() => {}
                    }
                }
                None => self.mailbox.notify.notified().await,
            }
        }
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        let mut boxes = lock(&self.net.boxes);
        if boxes.get(&self.addr).is_some_and(|m| Arc::ptr_eq(m, &self.mailbox)) {
            boxes.remove(&self.addr);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn datagrams_arrive_after_their_links_latency_and_not_at_a_cut_address() {
        let net = Arc::new(Net::new(NetConfig { latency_ms: (50, 50), loss: 0.0, ..NetConfig::default() }));
        let a = addr_of(0);
        let b = addr_of(1);
        let eb = Net::attach(&net, b).unwrap();
        assert!(Net::attach(&net, b).is_none(), "an address is held once");
        let t0 = Instant::now();
        net.send(a, b"hello", b);
        let (data, from) = eb.recv().await;
        assert_eq!((data.as_slice(), from), (&b"hello"[..], a));
        assert_eq!(t0.elapsed(), Duration::from_millis(50), "the virtual clock moved by the latency");
        net.cut(b);
        net.send(a, b"lost", b);
        assert_eq!(net.stats(), NetStats { sent: 2, lost: 0, unreachable: 1, overflow: 0 });
        let lat = net.latency(a, b);
        let wide = Net::new(NetConfig::default());
        assert_eq!(wide.latency(a, b), wide.latency(b, a), "a link has one latency both ways");
        assert!((10..=200).contains(&(wide.latency(a, b).as_millis() as u64)));
        assert_eq!(lat, Duration::from_millis(50));
    }

    #[tokio::test(start_paused = true)]
    async fn the_loss_rate_is_the_configured_one() {
        let net = Net::new(NetConfig { loss: 0.2, ..NetConfig::default() });
        let a = addr_of(0);
        for _ in 0..10_000 {
            net.send(a, b"x", addr_of(1));
        }
        let s = net.stats();
        assert!((1_700..2_300).contains(&s.lost), "{s:?}");
        assert_eq!(s.lost + s.unreachable, 10_000);
    }
}
