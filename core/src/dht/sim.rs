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

use std::net::{SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::node::{Inner, Transport};
use super::simnet::{self, Net};
pub use super::simnet::{NetConfig, NetStats};
use super::{Dht, DhtConfig, DropGuard};
use crate::error::{Error, ErrorKind, Result};

/// An in-memory network of simulated DHT nodes (see the module docs). Cheap to clone.
#[derive(Clone)]
pub struct SimNet {
    net: Arc<Net>,
}

impl std::fmt::Debug for SimNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimNet").field("config", self.net.config()).field("stats", &self.stats()).finish()
    }
}

impl SimNet {
    /// An empty network.
    pub fn new(config: NetConfig) -> SimNet {
        SimNet { net: Arc::new(Net::new(config)) }
    }

    /// The address of node `i`: `10.x.y.z:20001` with `x.y.z` = `i + 1` (distinct for up to 16
    /// million nodes).
    pub fn addr_of(i: usize) -> SocketAddrV4 {
        simnet::addr_of(i)
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
        let ep = Net::attach(&self.net, addr).ok_or_else(|| Error::invalid(format!("{addr} is taken in the simulated network")))?;
        let inner = Inner::start(config, Transport::Sim(ep), 16)?;
        let guard = Arc::new(DropGuard(vec![inner.cancel.clone()]));
        Ok(Dht { inner, inner6: None, _guard: guard })
    }

    /// Takes `addr` off the network at once (a crash: datagrams to it are lost from now on).
    /// Stop the node itself with [`Dht::shutdown`].
    pub fn cut(&self, addr: SocketAddrV4) {
        self.net.cut(addr);
    }

    /// Datagram counters since the network was made.
    pub fn stats(&self) -> NetStats {
        self.net.stats()
    }

    /// Nodes on the network.
    pub fn len(&self) -> usize {
        self.net.len()
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
        o.peers
            .iter()
            .filter_map(|p| match p {
                SocketAddr::V4(p) => Some(*p),
                SocketAddr::V6(_) => None,
            })
            .collect(),
        LookupTrace {
            queries: t.queries,
            replies: t.replies,
            value_hops: t.value_hops,
            first_value: t.first_value,
            closest_hops: t.closest_hops,
            max_hops: t.max_hops,
        },
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
    for (window, replace, pause) in
        [(s.lookup_window, 0, Duration::ZERO), (s.churn_period, replace, Duration::ZERO), (s.lookup_window, 0, s.recover)]
    {
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
