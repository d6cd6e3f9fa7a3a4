//! Self-healing routing table: refresh rounds, retries of nodes that went silent, checks of
//! nodes saved by an earlier run, and the budget that bounds all of it.
//!
//! Why: the reference never refreshes its table (only a liveness ping when it has been idle for
//! `dht_nodeLiveness`), so a network wired as a chain (each Grape bootstrapped from the previous
//! one) keeps sparse tables and lookups miss services. Here:
//!
//! * **Rounds.** After the bootstrap walk, a round looks up our own id and a random id in every
//!   bucket that is not full, down to one past the deepest non-empty bucket (`find_node` walks;
//!   a node is queried at most once per round). While rounds still find new nodes they repeat
//!   every second; each round that finds nothing doubles the wait (up to 30 s), and after three
//!   such rounds the table counts as healthy. From then on BEP 5's schedule applies: a bucket
//!   none of whose nodes was heard from for `refresh_interval` (15 min) gets a random-id lookup.
//!   The fast schedule comes back when a silent node answers again after a missed retry (a
//!   partition healed; one lost datagram does not count), when
//!   the table shrinks below half its peak, or when it empties.
//! * **Silent nodes.** A node removed from the table for not answering is kept (at most
//!   [`DORMANT_MAX`], for at most [`DORMANT_FORGET`]) and pinged again after 2, 4, 8 then every
//!   [`DORMANT_RETRY_CAP`] (every minute after [`DORMANT_SLOW_AFTER`]), at most one such ping per
//!   second. When it answers it is back in the table (and we are back in its table, since it
//!   learns from incoming queries), which is what joins the two halves of a split network; if it
//!   had missed a retry (a partition, not a lost datagram), the fast schedule comes back too.
//!   Bootstrap nodes that did not answer the bootstrap walk (a network started all at once,
//!   each Grape bootstrapped from one that was not up yet) are retried the same way, and never
//!   forgotten while they are not in the table.
//! * **Saved nodes** ([`super::DhtConfig::saved_nodes`]) are in the table from the start and
//!   pinged at once; those that do not answer, or answer with another id, are dropped.
//! * **Budget.** Refresh walks and silent-node retries take tokens from a bucket refilled at
//!   `maintenance_rate` per second (burst of the same size), so a large network is not flooded.
//!   Nodes are learned from every exchange in both directions (queries we get and replies to
//!   ours), which costs no message at all.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddrV4;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

use tokio::task::JoinSet;

use super::krpc::{self, Method};
use super::node::{Inner, QueryError, lock};
use super::routing::{self, K};
use super::{DhtState, DhtStats};

/// Most silent nodes remembered for retries.
pub(crate) const DORMANT_MAX: usize = 64;
/// Longest wait between two retries of a silent node during its first [`DORMANT_SLOW_AFTER`].
pub(crate) const DORMANT_RETRY_CAP: Duration = Duration::from_secs(15);
/// After this long silent, a node is retried once a minute.
pub(crate) const DORMANT_SLOW_AFTER: Duration = Duration::from_secs(10 * 60);
/// After this long silent, a node is forgotten.
pub(crate) const DORMANT_FORGET: Duration = Duration::from_secs(60 * 60);
/// Shortest wait between two fast rounds.
const FAST_MIN: Duration = Duration::from_secs(1);
/// Longest wait between two fast rounds.
const FAST_MAX: Duration = Duration::from_secs(30);
/// Rounds that find no new node before the table counts as healthy.
const QUIET_ROUNDS: u32 = 3;
/// Queries in flight per refresh walk.
const ALPHA: usize = 3;
/// Most queries of one refresh walk.
const WALK_MAX_QUERIES: usize = 3 * K;
/// Nodes heard from within this long count as good when saving the state (BEP 5).
const GOOD_FOR: Duration = Duration::from_secs(15 * 60);
/// How often the maintenance loop looks at its schedule.
const TICK: Duration = Duration::from_millis(250);

/// Traffic counters.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) queries: AtomicU64,
    pub(crate) maintenance: AtomicU64,
    pub(crate) replies: AtomicU64,
}

#[derive(Debug)]
struct Dormant {
    since: Instant,
    next: Instant,
    tries: u32,
    /// A bootstrap node: retried (once a minute after a while) until it is in the table, never
    /// forgotten.
    bootstrap: bool,
}

/// The maintenance schedule and its budget.
#[derive(Debug)]
pub(crate) struct Heal {
    dormant: HashMap<SocketAddrV4, Dormant>,
    tokens: f64,
    rate: f64,
    last_fill: Instant,
    fast: bool,
    interval: Duration,
    quiet: u32,
    next_round: Instant,
    peak: usize,
    last_dormant_ping: Instant,
    round_running: Arc<AtomicBool>,
}

impl Heal {
    pub(crate) fn new(rate: u32) -> Heal {
        let now = Instant::now();
        let rate = f64::from(rate.max(1));
        Heal {
            dormant: HashMap::new(),
            tokens: rate,
            rate,
            last_fill: now,
            fast: true,
            interval: FAST_MIN,
            quiet: 0,
            next_round: now,
            peak: 0,
            last_dormant_ping: now,
            round_running: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Takes one token of the maintenance budget if there is one.
    fn try_take(&mut self, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.last_fill).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.rate);
        self.last_fill = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Back to the fast schedule, with a round right away.
    fn wake(&mut self, now: Instant) {
        self.fast = true;
        self.quiet = 0;
        self.interval = FAST_MIN;
        self.next_round = self.next_round.min(now);
    }

    fn remember(&mut self, addr: SocketAddrV4, bootstrap: bool, now: Instant) {
        if self.dormant.contains_key(&addr) {
            return;
        }
        if self.dormant.len() >= DORMANT_MAX
            && let Some(oldest) =
                self.dormant.iter().filter(|(_, d)| !d.bootstrap).min_by_key(|(_, d)| d.since).map(|(a, _)| *a)
        {
            self.dormant.remove(&oldest);
        }
        let next = if bootstrap { now } else { now + Duration::from_secs(2) };
        self.dormant.insert(addr, Dormant { since: now, next, tries: 0, bootstrap });
    }

    fn retried(&mut self, addr: SocketAddrV4, now: Instant) {
        let Some(d) = self.dormant.get_mut(&addr) else { return };
        let silent = now.saturating_duration_since(d.since);
        if silent >= DORMANT_FORGET && !d.bootstrap {
            self.dormant.remove(&addr);
            return;
        }
        d.tries = d.tries.saturating_add(1);
        let wait = if silent >= DORMANT_SLOW_AFTER {
            Duration::from_secs(60)
        } else {
            Duration::from_secs(2u64 << d.tries.min(4)).min(DORMANT_RETRY_CAP)
        };
        d.next = now + wait;
    }
}

impl Inner {
    /// A query sent by the maintenance (counted apart).
    pub(crate) async fn maint_query(
        self: &Arc<Self>,
        to: SocketAddrV4,
        method: Method,
    ) -> std::result::Result<krpc::Response, QueryError> {
        self.counters.maintenance.fetch_add(1, Ordering::Relaxed);
        self.query(to, method).await
    }

    pub(crate) fn stats(&self) -> DhtStats {
        DhtStats {
            queries_sent: self.counters.queries.load(Ordering::Relaxed),
            maintenance_queries: self.counters.maintenance.load(Ordering::Relaxed),
            replies_sent: self.counters.replies.load(Ordering::Relaxed),
            ..self.state_stats()
        }
    }

    /// The counters kept in the node's state (one lock).
    fn state_stats(&self) -> DhtStats {
        let st = self.state();
        DhtStats {
            nodes_added: st.table.added_total(),
            unannounces_applied: st.unannounces.applied,
            unannounces_unknown: st.unannounces.unknown,
            unannounces_refused: st.unannounces.refused,
            tombstones: st.tombstones.len() as u64,
            ..DhtStats::default()
        }
    }

    pub(crate) fn state_snapshot(&self) -> DhtState {
        let now = Instant::now();
        let mut entries: Vec<_> = self
            .state()
            .table
            .entries()
            .into_iter()
            .filter(|e| now.saturating_duration_since(e.last_seen) < GOOD_FOR)
            .collect();
        entries.sort_by_key(|e| std::cmp::Reverse(e.last_seen));
        entries.truncate(DhtState::MAX_NODES);
        DhtState { id: self.id, nodes: entries.into_iter().map(|e| e.info).collect() }
    }

    /// Waits for a token of the maintenance budget.
    async fn budget(&self) {
        loop {
            if lock(&self.heal).try_take(Instant::now()) {
                return;
            }
            let rate = lock(&self.heal).rate;
            tokio::time::sleep(Duration::from_secs_f64(1.0 / rate)).await;
        }
    }

    /// Pings the saved nodes (all at once: they are at most [`DhtState::MAX_NODES`]); drops
    /// those that do not answer or answer with another id.
    async fn check_saved(self: &Arc<Self>) {
        let mut set = JoinSet::new();
        for n in self.config.saved_nodes.iter().take(DhtState::MAX_NODES).copied() {
            let inner = self.clone();
            set.spawn(async move {
                let r = inner.maint_query(n.addr, Method::Ping).await;
                let same = matches!(&r, Ok(resp) if resp.id.as_deref() == Some(&n.id[..]));
                if !same {
                    inner.state().table.remove(&n.id);
                }
            });
        }
        while set.join_next().await.is_some() {}
    }

    /// The maintenance loop (runs until the node is cancelled).
    pub(crate) async fn heal_loop(self: Arc<Inner>) {
        let cancel = self.cancel.clone();
        tokio::select! {
            _ = cancel.cancelled() => {}
            _ = self.clone().heal_run() => {}
        }
    }

    async fn heal_run(self: Arc<Inner>) {
        if !self.config.saved_nodes.is_empty() {
            let inner = self.clone();
            let cancel = self.cancel.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    _ = inner.check_saved() => {}
                }
            });
        }
        if self.config.maintenance_rate == 0 {
            return;
        }
        self.ready_wait().await;
        // Bootstrap nodes that were not up yet (a whole network started at once, each Grape
        // bootstrapped from the previous one) are retried until they answer.
        let boot = self.bootstrap_addrs().await;
        {
            let now = Instant::now();
            let present: HashSet<SocketAddrV4> = self.state().table.all().iter().map(|n| n.addr).collect();
            let mut h = lock(&self.heal);
            for a in boot.into_iter().filter(|a| !present.contains(a)) {
                h.remember(a, true, now);
            }
            h.next_round = now;
        }
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = Instant::now();
            // silent nodes that are back in the table (they queried us) need no retry
            let any_dormant = !lock(&self.heal).dormant.is_empty();
            let (removed, len, present) = {
                let mut st = self.state();
                let removed = st.table.take_removed();
                let present: HashSet<SocketAddrV4> =
                    if any_dormant || !removed.is_empty() { st.table.all().iter().map(|n| n.addr).collect() } else { HashSet::new() };
                (removed, st.table.len(), present)
            };
            let (retry, round) = {
                let mut h = lock(&self.heal);
                if !present.is_empty() {
                    h.dormant.retain(|a, _| !present.contains(a));
                }
                for n in removed {
                    if !present.contains(&n.addr) {
                        h.remember(n.addr, false, now);
                    }
                }
                // the table emptied or lost more than half its nodes: back to the fast schedule
                if len * 2 < h.peak {
                    h.peak = len;
                    h.wake(now);
                }
                h.peak = h.peak.max(len);
                // one retry of a silent node per second at most
                let mut retry = None;
                if now.saturating_duration_since(h.last_dormant_ping) >= Duration::from_secs(1)
                    && let Some(addr) = h.dormant.iter().filter(|(_, d)| d.next <= now).min_by_key(|(_, d)| d.next).map(|(a, _)| *a)
                    && h.try_take(now)
                {
                    h.last_dormant_ping = now;
                    h.retried(addr, now);
                    retry = Some(addr);
                }
                let round = if now >= h.next_round && !h.round_running.swap(true, Ordering::AcqRel) {
                    Some((h.fast, h.round_running.clone()))
                } else {
                    None
                };
                (retry, round)
            };
            if let Some(addr) = retry {
                let inner = self.clone();
                tokio::spawn(async move {
                    let cancel = inner.cancel.clone();
                    tokio::select! {
                        _ = cancel.cancelled() => {}
                        r = inner.maint_query(addr, Method::Ping) => {
                            if r.is_ok() {
                                let now = Instant::now();
                                let mut h = lock(&inner.heal);
                                // A node that answers its first retry lost a datagram or two
                                // (on a lossy link, every walk loses a node that way): no
                                // reason to refresh everything. One that missed a retry was
                                // cut off (a partition, a restart): back to the fast schedule.
                                if h.dormant.remove(&addr).is_some_and(|d| d.bootstrap || d.tries >= 2) {
                                    h.wake(now);
                                }
                            }
                        }
                    }
                });
            }
            if let Some((fast, running)) = round {
                let inner = self.clone();
                tokio::spawn(async move {
                    let cancel = inner.cancel.clone();
                    tokio::select! {
                        _ = cancel.cancelled() => {}
                        _ = inner.round(fast) => {}
                    }
                    running.store(false, Ordering::Release);
                });
            }
        }
    }

    async fn ready_wait(&self) {
        let mut rx = self.ready.subscribe();
        let _ = rx.wait_for(|r| *r).await;
    }

    /// One refresh round (see the module docs); reschedules the next one.
    async fn round(self: &Arc<Self>, fast: bool) {
        let now = Instant::now();
        let (targets, before, empty) = {
            let st = self.state();
            let t = &st.table;
            let last = (t.depth() + 1).min(159);
            let mut targets: Vec<(Option<usize>, [u8; 20])> = Vec::new();
            if fast {
                targets.push((None, self.id));
                for i in 0..=last {
                    if t.bucket_len(i) < K {
                        targets.push((Some(i), t.random_id_in_bucket(i)));
                    }
                }
            } else {
                for i in 0..=last {
                    let stale = t.bucket_touched(i).is_none_or(|at| now.saturating_duration_since(at) >= self.config.refresh_interval);
                    if stale {
                        targets.push((Some(i), t.random_id_in_bucket(i)));
                    }
                }
            }
            (targets, t.len(), t.is_empty())
        };
        if empty && !self.config.bootstrap.is_empty() {
            self.bootstrap().await;
        }
        let mut asked = HashSet::new();
        for (bucket, target) in targets {
            self.refresh_walk(target, &mut asked).await;
            if let Some(i) = bucket {
                self.state().table.touch_bucket(i, Instant::now());
            }
        }
        let after = self.state().table.len();
        let now = Instant::now();
        let mut h = lock(&self.heal);
        // The round found nodes when the table grew past its size before the round and its peak:
        // nodes dropped for a lost datagram and found again (on a lossy link, most rounds find
        // some) are not news.
        let learned = after > before.max(h.peak);
        h.peak = h.peak.max(after);
        if h.fast {
            if learned {
                h.quiet = 0;
                h.interval = FAST_MIN;
            } else {
                h.quiet += 1;
                h.interval = (h.interval * 2).min(FAST_MAX);
            }
            if h.quiet >= QUIET_ROUNDS {
                h.fast = false;
            }
            h.next_round = now + h.interval;
        } else {
            // look at the buckets' ages again a few times per refresh interval
            h.next_round = now + (self.config.refresh_interval / 30).clamp(Duration::from_secs(1), Duration::from_secs(60));
        }
    }

    /// A `find_node` walk towards `target` on the maintenance budget; nodes in `asked` (already
    /// queried in this round) are not queried again. Answers add their senders to the table
    /// (in `query`), timeouts remove them.
    async fn refresh_walk(self: &Arc<Self>, target: [u8; 20], asked: &mut HashSet<SocketAddrV4>) {
        let mut cands: BTreeMap<(Vec<u8>, [u8; 20]), (SocketAddrV4, bool)> = BTreeMap::new();
        for n in self.state().table.closest(&target, K) {
            cands.insert((routing::distance(&target, &n.id), n.id), (n.addr, false));
        }
        let mut sent = 0usize;
        while sent < WALK_MAX_QUERIES {
            let batch: Vec<([u8; 20], SocketAddrV4)> = cands
                .iter_mut()
                .take(K)
                .filter(|(_, (a, done))| !*done && !asked.contains(a))
                .take(ALPHA)
                .map(|(k, (a, done))| {
                    *done = true;
                    (k.1, *a)
                })
                .collect();
            if batch.is_empty() {
                break;
            }
            let mut set = JoinSet::new();
            for (id, addr) in batch {
                self.budget().await;
                asked.insert(addr);
                sent += 1;
                let inner = self.clone();
                let m = Method::FindNode { target: Some(target.to_vec()) };
                set.spawn(async move { (id, inner.maint_query(addr, m).await) });
            }
            while let Some(joined) = set.join_next().await {
                let Ok((id, res)) = joined else { continue };
                match res {
                    Ok(r) => {
                        for n in r.nodes.as_deref().map(krpc::decode_nodes).unwrap_or_default() {
                            if n.id != self.id {
                                cands.entry((routing::distance(&target, &n.id), n.id)).or_insert((n.addr, false));
                            }
                        }
                    }
                    Err(QueryError::Timeout) => {
                        self.state().table.remove(&id);
                    }
                    Err(_) => {}
                }
            }
            while cands.len() > 8 * K {
                cands.pop_last();
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn addr(p: u16) -> SocketAddrV4 {
        SocketAddrV4::new([127, 0, 0, 1].into(), p)
    }

    #[test]
    fn silent_nodes_back_off_then_are_forgotten_but_bootstrap_nodes_are_not() {
        let mut h = Heal::new(10);
        let t0 = Instant::now();
        h.remember(addr(1), false, t0);
        h.remember(addr(2), true, t0);
        assert_eq!(h.dormant[&addr(1)].next, t0 + Duration::from_secs(2));
        assert_eq!(h.dormant[&addr(2)].next, t0, "a bootstrap node is tried at once");
        let waits: Vec<u64> = (0..6)
            .map(|_| {
                h.retried(addr(1), t0);
                (h.dormant[&addr(1)].next - t0).as_secs()
            })
            .collect();
        assert_eq!(waits, vec![4, 8, 15, 15, 15, 15]);
        let late = t0 + DORMANT_SLOW_AFTER;
        h.retried(addr(1), late);
        assert_eq!(h.dormant[&addr(1)].next, late + Duration::from_secs(60));
        let gone = t0 + DORMANT_FORGET;
        h.retried(addr(1), gone);
        h.retried(addr(2), gone);
        assert!(!h.dormant.contains_key(&addr(1)));
        assert!(h.dormant.contains_key(&addr(2)));
    }

    #[test]
    fn at_most_dormant_max_remembered_bootstrap_nodes_kept() {
        let mut h = Heal::new(10);
        let t0 = Instant::now();
        h.remember(addr(1), true, t0);
        for p in 2..(DORMANT_MAX as u16 + 10) {
            h.remember(addr(p), false, t0 + Duration::from_millis(u64::from(p)));
        }
        assert_eq!(h.dormant.len(), DORMANT_MAX);
        assert!(h.dormant.contains_key(&addr(1)));
    }

    #[test]
    fn the_budget_refills_at_its_rate() {
        let mut h = Heal::new(5);
        let t0 = h.last_fill;
        let burst = (0..10).filter(|_| h.try_take(t0)).count();
        assert_eq!(burst, 5);
        assert!(!h.try_take(t0));
        assert!(h.try_take(t0 + Duration::from_millis(200)));
        assert!(!h.try_take(t0 + Duration::from_millis(200)));
    }
}
