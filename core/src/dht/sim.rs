//! A simulator for the DHT at scale: the node code of this crate, unchanged, driven over an
//! in-memory network on tokio's virtual clock.
//!
//! * **No sockets.** Each node's UDP socket is replaced by an endpoint of a [`SimNet`] (the only
//!   seam: `node::Transport`). Datagrams are handed to the destination's queue with a one-way
//!   latency fixed per pair of addresses (drawn from the seed, uniform between
//!   [`NetConfig::latency_ms`]'s bounds), and a fraction [`NetConfig::loss`] of them is dropped.
//!   A datagram to an address nobody holds (a node that crashed) is dropped, as on the internet.
//!   Each endpoint's queue is bounded ([`NetConfig::queue`]).
//! * **No sleeping.** Everything runs on a current-thread runtime whose clock is paused
//!   (`start_paused`): when every task waits, tokio moves the clock to the next timer at once.
//!   The DHT reads time only through `tokio::time::Instant` and sleeps only through
//!   `tokio::time`, so query timeouts, refresh rounds, token rotation and expiry all run on the
//!   virtual clock. Virtual minutes of a network of thousands of nodes take seconds.
//! * **Internet-like addresses.** Node `i` is `10.x.y.z:20001`, one IPv4 address per node, so the
//!   per-address limits ([`super::limits`], tokens) see what they would see on the internet.
//!
//! [`run`] plays a [`Scenario`] (join, quiet windows that measure the maintenance traffic,
//! announces, lookups before, during and after churn) and returns a [`Report`]; the
//! `dht_sim` benchmark binary prints it. Determinism: the scenario's own choices (ids, latencies,
//! losses, who joins, leaves and looks up what, when) come from the seed; the nodes' internal
//! randomness (token secrets, liveness jitter, the order of hash maps) does not, so two runs with
//! one seed differ a little.
//!
//! Built for the crate's tests and with the cargo feature `sim` (which also turns on tokio's
//! `test-util` for the paused clock); not part of the default API.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::node::{Inner, Transport, lock};
use super::{Dht, DhtConfig, DropGuard};
use crate::error::{Error, ErrorKind, Result};

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

/// Datagram counters of a [`SimNet`].
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

struct Net {
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

/// An in-memory network of simulated DHT nodes (see the module docs). Cheap to clone.
#[derive(Clone)]
pub struct SimNet {
    net: Arc<Net>,
}

impl std::fmt::Debug for SimNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimNet").field("config", &self.net.config).field("stats", &self.stats()).finish()
    }
}

/// A node's end of the [`SimNet`] (what replaces its UDP socket).
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

impl SimNet {
    /// An empty network.
    pub fn new(config: NetConfig) -> SimNet {
        SimNet {
            net: Arc::new(Net {
                config,
                boxes: Mutex::new(HashMap::new()),
                seq: AtomicU64::new(0),
                sent: AtomicU64::new(0),
                lost: AtomicU64::new(0),
                unreachable: AtomicU64::new(0),
                overflow: AtomicU64::new(0),
            }),
        }
    }

    /// The address of node `i`: `10.x.y.z:20001` with `x.y.z` = `i + 1` (distinct for up to 16
    /// million nodes).
    pub fn addr_of(i: usize) -> SocketAddrV4 {
        let n = u32::try_from(i + 1).unwrap_or(u32::MAX) & 0x00FF_FFFF;
        SocketAddrV4::new(Ipv4Addr::from(0x0A00_0000 | n), 20001)
    }

    /// Starts a DHT node on this network at `config.bind` (an IPv4 address no other node holds).
    /// Must run inside a tokio runtime (for the virtual clock: a current-thread runtime with
    /// paused time). Errors: `InvalidArgument` for an IPv6 or port-0 address, or one that is
    /// taken.
    pub fn start(&self, config: DhtConfig) -> Result<Dht> {
        let SocketAddr::V4(addr) = config.bind else {
            return Err(Error::invalid("a simulated node needs an IPv4 address"));
        };
        if addr.port() == 0 {
            return Err(Error::invalid("a simulated node needs a port"));
        }
        let mailbox = Arc::new(Mailbox::default());
        {
            let mut boxes = lock(&self.net.boxes);
            if boxes.contains_key(&addr) {
                return Err(Error::invalid(format!("{addr} is taken in the simulated network")));
            }
            boxes.insert(addr, mailbox.clone());
        }
        let ep = Endpoint { addr, net: self.net.clone(), mailbox };
        let inner = Inner::start(config, Transport::Sim(ep), 16)?;
        let guard = Arc::new(DropGuard(inner.cancel.clone()));
        Ok(Dht { inner, _guard: guard })
    }

    /// Takes `addr` off the network at once (a crash: datagrams to it are lost from now on).
    /// Stop the node itself with [`Dht::shutdown`].
    pub fn cut(&self, addr: SocketAddrV4) {
        lock(&self.net.boxes).remove(&addr);
    }

    /// Datagram counters since the network was made.
    pub fn stats(&self) -> NetStats {
        NetStats {
            sent: self.net.sent.load(Ordering::Relaxed),
            lost: self.net.lost.load(Ordering::Relaxed),
            unreachable: self.net.unreachable.load(Ordering::Relaxed),
            overflow: self.net.overflow.load(Ordering::Relaxed),
        }
    }

    /// Nodes on the network.
    pub fn len(&self) -> usize {
        lock(&self.net.boxes).len()
    }

    /// True when no node is on the network.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What one lookup cost (see [`lookup_traced`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LookupTrace {
    /// `get_peers` queries sent.
    pub queries: u32,
    /// Replies received.
    pub replies: u32,
    /// Hops to the nearest node that answered with peers (a node of the own routing table is one
    /// hop away, a node learnt from the reply of a node `d` hops away is `d + 1`); `None` when no
    /// node did.
    pub value_hops: Option<u32>,
    /// When the first peers came, after the lookup started (the walk goes on until the closest
    /// nodes have answered).
    pub first_value: Option<Duration>,
    /// Hops to the answering node closest to the target.
    pub closest_hops: u32,
    /// Most hops of any answering node.
    pub max_hops: u32,
}

/// [`Dht::lookup`], with what its walk cost. Two identical lookups in flight on one node are one
/// walk (both get its trace).
pub async fn lookup_traced(dht: &Dht, info_hash: &[u8]) -> Result<(Vec<SocketAddrV4>, LookupTrace)> {
    let o = dht.guarded(dht.inner.lookup(info_hash)).await?;
    let t = o.trace;
    Ok((
        o.peers.clone(),
        LookupTrace { queries: t.queries, replies: t.replies, value_hops: t.value_hops, first_value: t.first_value, closest_hops: t.closest_hops, max_hops: t.max_hops },
    ))
}

/// A simulation run (see [`run`]).
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Nodes in the network (kept constant during churn: each node that leaves is replaced by a
    /// new one).
    pub nodes: usize,
    /// Bootstrap nodes (the first `seeds` nodes; every other node bootstraps from all of them, as
    /// clients of the mainline DHT do from its routers). They do not leave.
    pub seeds: usize,
    /// Nodes started per virtual second while the network forms.
    pub join_per_sec: f64,
    /// After the last node started: the window whose traffic counts as "join" maintenance.
    pub join_window: Duration,
    /// Then: the window whose traffic counts as "steady" maintenance (nobody announces or looks up).
    pub steady_window: Duration,
    /// Services announced, each by one node (which stays up and announces again every 30 s).
    pub services: usize,
    /// Lookups in each of the three phases (before, during and after churn), from random live
    /// nodes of random services, spread evenly over the phase.
    pub lookups: usize,
    /// How long the lookups of the phases before and after churn are spread over.
    pub lookup_window: Duration,
    /// Fraction of the nodes replaced during the churn phase (0.0-1.0).
    pub churn: f64,
    /// How long the churn phase lasts.
    pub churn_period: Duration,
    /// Time left to the network between the churn phase and the last phase of lookups.
    pub recover: Duration,
    /// The network.
    pub net: NetConfig,
    /// Seed of the scenario's choices.
    pub seed: u64,
    /// The nodes' configuration (`bind`, `bootstrap` and `id` are set per node).
    pub node: DhtConfig,
}

impl Scenario {
    /// A scenario for `nodes` nodes: 4 seeds, 100 joins a second, 30 s join and 60 s steady
    /// windows, 20 services, 200 lookups a phase over 20 s, a third of the nodes replaced over
    /// 120 s, 30 s to recover, the default [`NetConfig`], seed 1, and node settings sized for
    /// thousands of nodes in one process (see [`Scenario::node_config`]).
    pub fn new(nodes: usize) -> Scenario {
        Scenario {
            nodes,
            seeds: 4,
            join_per_sec: 100.0,
            join_window: Duration::from_secs(30),
            steady_window: Duration::from_secs(60),
            services: 20,
            lookups: 200,
            lookup_window: Duration::from_secs(20),
            churn: 1.0 / 3.0,
            churn_period: Duration::from_secs(120),
            recover: Duration::from_secs(30),
            net: NetConfig::default(),
            seed: 1,
            node: Scenario::node_config(),
        }
    }

    /// The Grape's defaults, except for the caches a node allocates up front, which are made
    /// small: 256 target tables, 64 values, 1024 tracked sources (a simulated node sees far
    /// fewer targets and sources than these; the defaults would cost ~1.5 MB a node).
    pub fn node_config() -> DhtConfig {
        let mut c = DhtConfig { max_tables: 256, max_values: 64, ..DhtConfig::default() };
        c.limits.tracked_sources = 1024;
        c
    }
}

/// The lookups of one phase.
#[derive(Debug, Clone, Default)]
pub struct PhaseReport {
    /// Lookups made.
    pub lookups: usize,
    /// Of those, lookups whose result held the service's announced address.
    pub found: usize,
    /// Hops of each successful lookup ([`LookupTrace::value_hops`]; 0 when the asking node held
    /// the record itself).
    pub hops: Vec<u32>,
    /// Queries sent by each lookup.
    pub queries: Vec<u32>,
    /// Replies received by each lookup.
    pub replies: Vec<u32>,
    /// Virtual time each successful lookup took, in milliseconds (the whole walk: a lookup ends
    /// when the closest nodes have answered, not at the first peer found).
    pub latency_ms: Vec<u32>,
    /// Virtual time to the first peers of each successful lookup, in milliseconds (0 when the
    /// asking node held the record itself).
    pub first_ms: Vec<u32>,
}

impl PhaseReport {
    /// `found / lookups` (1.0 when no lookup was made).
    pub fn success_rate(&self) -> f64 {
        if self.lookups == 0 { 1.0 } else { self.found as f64 / self.lookups as f64 }
    }
}

/// The `q` quantile (0.0-1.0, nearest rank) of `v`; 0 when empty.
pub fn quantile(v: &[u32], q: f64) -> u32 {
    if v.is_empty() {
        return 0;
    }
    let mut s = v.to_vec();
    s.sort_unstable();
    let i = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1;
    s[i]
}

/// The mean of `v`; 0 when empty.
pub fn mean(v: &[u32]) -> f64 {
    if v.is_empty() { 0.0 } else { v.iter().map(|&x| f64::from(x)).sum::<f64>() / v.len() as f64 }
}

/// What [`run`] measured.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Nodes.
    pub nodes: usize,
    /// Nodes that left (and were replaced) during the churn phase.
    pub replaced: usize,
    /// Datagrams sent per node per second in the join window (every node's queries and replies).
    pub join_msgs_per_node_sec: f64,
    /// The same in the steady window.
    pub steady_msgs_per_node_sec: f64,
    /// Maintenance queries per node per second in the steady window (the part of the above that
    /// the self-healing maintenance sent; the rest is replies to other nodes' queries).
    pub steady_maint_queries_per_node_sec: f64,
    /// Mean routing-table size at the end of the steady window.
    pub mean_table: f64,
    /// Announces that reached at least one node, of [`Scenario::services`].
    pub announced: usize,
    /// Lookups before churn.
    pub before: PhaseReport,
    /// Lookups during churn.
    pub during: PhaseReport,
    /// Lookups after churn (and [`Scenario::recover`]).
    pub after: PhaseReport,
    /// Network counters at the end.
    pub net: NetStats,
    /// Virtual time the run took.
    pub virtual_time: Duration,
}

impl Report {
    /// A few lines for a log.
    pub fn summary(&self) -> String {
        let phase = |name: &str, p: &PhaseReport| {
            format!(
                "{name}: {}/{} found ({:.2} %), hops p50/p90/p99 {}/{}/{} (mean {:.2}), queries per lookup mean {:.1} p50 {} p99 {}, replies mean {:.1}, time p50/p99 {}/{} ms, first peers p50/p99 {}/{} ms\n",
                p.found,
                p.lookups,
                100.0 * p.success_rate(),
                quantile(&p.hops, 0.5),
                quantile(&p.hops, 0.9),
                quantile(&p.hops, 0.99),
                mean(&p.hops),
                mean(&p.queries),
                quantile(&p.queries, 0.5),
                quantile(&p.queries, 0.99),
                mean(&p.replies),
                quantile(&p.latency_ms, 0.5),
                quantile(&p.latency_ms, 0.99),
                quantile(&p.first_ms, 0.5),
                quantile(&p.first_ms, 0.99),
            )
        };
        format!(
            "nodes {} (replaced {}), announced {}, mean table {:.1}\nmaintenance: join {:.2} msgs/node/s, steady {:.2} msgs/node/s ({:.2} maintenance queries/node/s)\n{}{}{}net: {:?}, virtual time {:.0} s\n",
            self.nodes,
            self.replaced,
            self.announced,
            self.mean_table,
            self.join_msgs_per_node_sec,
            self.steady_msgs_per_node_sec,
            self.steady_maint_queries_per_node_sec,
            phase("before churn", &self.before),
            phase("during churn", &self.during),
            phase("after churn", &self.after),
            self.net,
            self.virtual_time.as_secs_f64(),
        )
    }
}

struct Live {
    dht: Dht,
    addr: SocketAddrV4,
    pinned: bool,
}

fn sum_sent(nodes: &[Live]) -> (u64, u64) {
    nodes.iter().fold((0, 0), |(s, m), l| {
        let st = l.dht.stats();
        (s + st.queries_sent + st.replies_sent, m + st.maintenance_queries)
    })
}

/// Runs `s` on a fresh [`SimNet`] (see the module docs) and reports. Must run on a runtime with
/// a paused clock (a current-thread runtime built with `start_paused(true)`, or
/// `#[tokio::test(start_paused = true)]`), else it takes the scenario's time for real.
///
/// Phases: the first [`Scenario::seeds`] nodes start, then the others at
/// [`Scenario::join_per_sec`], each bootstrapping from the seeds; the join and steady windows
/// measure the maintenance traffic; [`Scenario::services`] nodes announce a service each; then
/// three phases of lookups: before churn, during churn (over [`Scenario::churn_period`] a
/// fraction [`Scenario::churn`] of the nodes crash, one at a time at an even pace, each
/// replaced by a new node with a new id and address), and after [`Scenario::recover`].
pub async fn run(s: &Scenario) -> Report {
    let t0 = Instant::now();
    let net = SimNet::new(s.net);
    let mut rng = StdRng::seed_from_u64(s.seed);
    let seeds = s.seeds.clamp(1, s.nodes.max(1));
    let seed_addrs: Vec<String> = (0..seeds).map(|i| SimNet::addr_of(i).to_string()).collect();
    let mut next_index = 0usize;
    let mut start = |rng: &mut StdRng, pinned: bool| -> Option<Live> {
        let i = next_index;
        next_index += 1;
        let addr = SimNet::addr_of(i);
        let mut id = [0u8; 20];
        rng.fill(&mut id);
        let bootstrap = seed_addrs.iter().filter(|a| **a != addr.to_string()).cloned().collect();
        let cfg = DhtConfig { bind: SocketAddr::V4(addr), bootstrap, id: Some(id), ..s.node.clone() };
        net.start(cfg).ok().map(|dht| Live { dht, addr, pinned })
    };
    let mut live: Vec<Live> = Vec::with_capacity(s.nodes);
    let pace = Duration::from_secs_f64(1.0 / s.join_per_sec.max(0.001));
    let mut at = Instant::now();
    for i in 0..s.nodes {
        if let Some(l) = start(&mut rng, i < seeds) {
            live.push(l);
        }
        if i + 1 >= seeds {
            at += pace;
            tokio::time::sleep_until(at).await;
        }
    }
    let mut report = Report { nodes: s.nodes, ..Report::default() };
    // Maintenance windows: nobody announces or looks up.
    let (s0, _) = sum_sent(&live);
    tokio::time::sleep(s.join_window).await;
    let (s1, m1) = sum_sent(&live);
    tokio::time::sleep(s.steady_window).await;
    let (s2, m2) = sum_sent(&live);
    let n = live.len().max(1) as f64;
    let per = |d: u64, w: Duration| if w.is_zero() { 0.0 } else { d as f64 / n / w.as_secs_f64() };
    report.join_msgs_per_node_sec = per(s1 - s0, s.join_window);
    report.steady_msgs_per_node_sec = per(s2 - s1, s.steady_window);
    report.steady_maint_queries_per_node_sec = per(m2 - m1, s.steady_window);
    report.mean_table = live.iter().map(|l| l.dht.node_count() as f64).sum::<f64>() / n;

    // Services: announced by non-seed nodes that stay up, again every 30 s.
    let mut services: Vec<(Vec<u8>, SocketAddrV4)> = Vec::new();
    let mut announcers = JoinSet::new();
    let mut first = JoinSet::new();
    let candidates: Vec<usize> = (seeds..live.len()).collect();
    for k in 0..s.services.min(candidates.len()) {
        let idx = loop {
            let c = candidates[rng.gen_range(0..candidates.len())];
            if !live[c].pinned {
                break c;
            }
        };
        live[idx].pinned = true;
        let name = format!("sim:service:{k}").into_bytes();
        let port = 1024 + u16::try_from(k % 60_000).unwrap_or(0);
        services.push((name.clone(), SocketAddrV4::new(*live[idx].addr.ip(), port)));
        let dht = live[idx].dht.clone();
        first.spawn(async move {
            let ok = dht.announce(&name, port).await.is_ok();
            (ok, dht, name, port)
        });
    }
    while let Some(r) = first.join_next().await {
        let Ok((ok, dht, name, port)) = r else { continue };
        report.announced += usize::from(ok);
        announcers.spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(30)).await;
                let _ = dht.announce(&name, port).await;
            }
        });
    }

    type LookupSet = JoinSet<Option<(bool, LookupTrace, u32)>>;
    // One lookup of a random service from a random live node, now.
    let look = |live: &[Live], rng: &mut StdRng, set: &mut LookupSet| {
        if services.is_empty() || live.is_empty() {
            return;
        }
        let (name, want) = services[rng.gen_range(0..services.len())].clone();
        let from = live[rng.gen_range(0..live.len())].dht.clone();
        set.spawn(async move {
            let t0 = Instant::now();
            let ms = || u32::try_from(t0.elapsed().as_millis()).unwrap_or(u32::MAX);
            match lookup_traced(&from, &name).await {
                Ok((peers, t)) => Some((peers.contains(&want), t, ms())),
                // the asking node left meanwhile: not a lookup
                Err(e) if e.kind() == ErrorKind::Cancelled => None,
                Err(_) => Some((false, LookupTrace::default(), ms())),
            }
        });
    };
    async fn collect(mut set: LookupSet) -> PhaseReport {
        let mut p = PhaseReport::default();
        while let Some(r) = set.join_next().await {
            let Ok(Some((found, t, ms))) = r else { continue };
            p.lookups += 1;
            p.queries.push(t.queries);
            p.replies.push(t.replies);
            if found {
                p.found += 1;
                p.hops.push(t.value_hops.unwrap_or(0));
                p.latency_ms.push(ms);
                p.first_ms.push(t.first_value.map_or(0, |d| u32::try_from(d.as_millis()).unwrap_or(u32::MAX)));
            }
        }
        p
    }
    // Three phases: before churn, during churn, after churn and a pause. In each, `lookups`
    // lookups at an even pace over the phase's window, each from a node that is up at the time;
    // during churn, nodes crash and are replaced at an even pace too.
    let replace = ((s.nodes as f64) * s.churn.clamp(0.0, 1.0)).round() as usize;
    let mut stopping = JoinSet::new();
    let mut phases = Vec::new();
    for (window, replace, pause) in [(s.lookup_window, 0, Duration::ZERO), (s.churn_period, replace, Duration::ZERO), (s.lookup_window, 0, s.recover)] {
        tokio::time::sleep(pause).await;
        let mut events: Vec<(Duration, bool)> =
            (0..s.lookups).map(|j| (window.mul_f64(j as f64 / s.lookups.max(1) as f64), true)).collect();
        events.extend((0..replace).map(|j| (window.mul_f64(j as f64 / replace as f64), false)));
        events.sort_by_key(|e| e.0);
        let t0 = Instant::now();
        let mut set = LookupSet::new();
        for (at, is_lookup) in events {
            tokio::time::sleep_until(t0 + at).await;
            if is_lookup {
                look(&live, &mut rng, &mut set);
                continue;
            }
            let movable: Vec<usize> = (0..live.len()).filter(|&i| !live[i].pinned).collect();
            if movable.is_empty() {
                continue;
            }
            let gone = live.swap_remove(movable[rng.gen_range(0..movable.len())]);
            net.cut(gone.addr);
            stopping.spawn(async move { gone.dht.shutdown().await });
            if let Some(l) = start(&mut rng, false) {
                live.push(l);
            }
            report.replaced += 1;
        }
        tokio::time::sleep_until(t0 + window).await;
        phases.push(collect(set).await);
    }
    while stopping.join_next().await.is_some() {}
    let mut phases = phases.into_iter();
    report.before = phases.next().unwrap_or_default();
    report.during = phases.next().unwrap_or_default();
    report.after = phases.next().unwrap_or_default();

    announcers.abort_all();
    for l in &live {
        l.dht.inner.cancel.cancel();
    }
    report.net = net.stats();
    report.virtual_time = t0.elapsed();
    report
}

/// Runs `s` on a new current-thread runtime with a paused clock (see [`run`]).
pub fn run_blocking(s: &Scenario) -> std::io::Result<Report> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build()?;
    Ok(rt.block_on(run(s)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn datagrams_arrive_after_their_links_latency_and_not_at_a_cut_address() {
        let net = SimNet::new(NetConfig { latency_ms: (50, 50), loss: 0.0, ..NetConfig::default() });
        let a = SimNet::addr_of(0);
        let b = SimNet::addr_of(1);
        let mb = Arc::new(Mailbox::default());
        lock(&net.net.boxes).insert(b, mb.clone());
        let eb = Endpoint { addr: b, net: net.net.clone(), mailbox: mb };
        let t0 = Instant::now();
        net.net.send(a, b"hello", b);
        let (data, from) = eb.recv().await;
        assert_eq!((data.as_slice(), from), (&b"hello"[..], a));
        assert_eq!(t0.elapsed(), Duration::from_millis(50), "the virtual clock moved by the latency");
        net.cut(b);
        net.net.send(a, b"lost", b);
        assert_eq!(net.stats(), NetStats { sent: 2, lost: 0, unreachable: 1, overflow: 0 });
        let lat = net.net.latency(a, b);
        let wide = SimNet::new(NetConfig::default());
        assert_eq!(wide.net.latency(a, b), wide.net.latency(b, a), "a link has one latency both ways");
        assert!((10..=200).contains(&(wide.net.latency(a, b).as_millis() as u64)));
        assert_eq!(lat, Duration::from_millis(50));
    }

    #[tokio::test(start_paused = true)]
    async fn the_loss_rate_is_the_configured_one() {
        let net = SimNet::new(NetConfig { loss: 0.2, ..NetConfig::default() });
        let a = SimNet::addr_of(0);
        for _ in 0..10_000 {
            net.net.send(a, b"x", SimNet::addr_of(1));
        }
        let s = net.stats();
        assert!((1_700..2_300).contains(&s.lost), "{s:?}");
        assert_eq!(s.lost + s.unreachable, 10_000);
    }

    /// A hundred and fifty nodes on the virtual clock: the network forms from 4 seeds, services
    /// announced by 20 nodes are found by lookups from random nodes before, during and after a
    /// third of the network is replaced, in a few hops and a bounded number of messages.
    #[tokio::test(start_paused = true)]
    async fn a_hundred_and_fifty_nodes_with_churn() {
        let mut s = Scenario::new(150);
        s.lookups = 60;
        s.join_window = Duration::from_secs(10);
        s.steady_window = Duration::from_secs(10);
        s.lookup_window = Duration::from_secs(10);
        s.churn_period = Duration::from_secs(30);
        s.recover = Duration::from_secs(10);
        s.seed = 7;
        let r = run(&s).await;
        let log2n = (s.nodes as f64).log2();
        eprintln!("{}", r.summary());
        assert_eq!(r.replaced, 50);
        assert_eq!(r.announced, 20);
        assert!(r.mean_table >= 40.0, "tables filled: {}", r.mean_table);
        for (name, p) in [("before", &r.before), ("during", &r.during), ("after", &r.after)] {
            // during churn, lookups from nodes that left meanwhile do not count
            assert!(p.lookups >= 55, "{name}: {} lookups", p.lookups);
            let min = if name == "during" { 0.95 } else { 0.99 };
            assert!(p.success_rate() >= min, "{name}: success {}", p.success_rate());
            let p99 = quantile(&p.hops, 0.99);
            assert!(f64::from(p99) <= log2n, "{name}: hops p99 {p99} over log2(n) = {log2n:.1}");
            let q = quantile(&p.queries, 0.99);
            assert!(q <= 200, "{name}: queries p99 {q}");
        }
        assert!(r.steady_maint_queries_per_node_sec <= 10.0, "maintenance within its budget: {}", r.steady_maint_queries_per_node_sec);
        assert!(r.virtual_time >= Duration::from_secs(80), "{:?}", r.virtual_time);
    }
}
