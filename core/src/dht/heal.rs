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

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::Duration;
use tokio::time::Instant;

use super::routing::K;

/// Most silent nodes remembered for retries.
pub(crate) const DORMANT_MAX: usize = 64;
/// Longest wait between two retries of a silent node during its first [`DORMANT_SLOW_AFTER`].
pub(crate) const DORMANT_RETRY_CAP: Duration = Duration::from_secs(15);
/// After this long silent, a node is retried once a minute.
pub(crate) const DORMANT_SLOW_AFTER: Duration = Duration::from_secs(10 * 60);
/// After this long silent, a node is forgotten.
pub(crate) const DORMANT_FORGET: Duration = Duration::from_secs(60 * 60);
/// Shortest wait between two fast rounds.
pub(super) const FAST_MIN: Duration = Duration::from_secs(1);
/// Longest wait between two fast rounds.
pub(super) const FAST_MAX: Duration = Duration::from_secs(30);
/// Rounds that find no new node before the table counts as healthy.
pub(super) const QUIET_ROUNDS: u32 = 3;
/// Queries in flight per refresh walk.
pub(super) const ALPHA: usize = 3;
/// Most queries of one refresh walk.
pub(super) const WALK_MAX_QUERIES: usize = 3 * K;
/// Nodes heard from within this long count as good when saving the state (BEP 5).
pub(super) const GOOD_FOR: Duration = Duration::from_secs(15 * 60);
/// How often the maintenance loop looks at its schedule.
pub(super) const TICK: Duration = Duration::from_millis(250);

/// Traffic counters.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) queries: AtomicU64,
    pub(crate) maintenance: AtomicU64,
    pub(crate) replies: AtomicU64,
}

#[derive(Debug)]
pub(super) struct Dormant {
    pub(super) since: Instant,
    pub(super) next: Instant,
    pub(super) tries: u32,
    /// A bootstrap node: retried (once a minute after a while) until it is in the table, never
    /// forgotten.
    pub(super) bootstrap: bool,
}

/// The maintenance schedule and its budget.
#[derive(Debug)]
pub(crate) struct Heal {
    pub(super) dormant: HashMap<SocketAddr, Dormant>,
    pub(super) tokens: f64,
    pub(super) rate: f64,
    pub(super) last_fill: Instant,
    pub(super) fast: bool,
    pub(super) interval: Duration,
    pub(super) quiet: u32,
    pub(super) next_round: Instant,
    pub(super) peak: usize,
    pub(super) last_dormant_ping: Instant,
    pub(super) round_running: Arc<AtomicBool>,
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
    pub(super) fn try_take(&mut self, now: Instant) -> bool {
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
    pub(super) fn wake(&mut self, now: Instant) {
        self.fast = true;
        self.quiet = 0;
        self.interval = FAST_MIN;
        self.next_round = self.next_round.min(now);
    }

    pub(super) fn remember(&mut self, addr: SocketAddr, bootstrap: bool, now: Instant) {
        if self.dormant.contains_key(&addr) {
            return;
        }
        if self.dormant.len() >= DORMANT_MAX
            && let Some(oldest) = self.dormant.iter().filter(|(_, d)| !d.bootstrap).min_by_key(|(_, d)| d.since).map(|(a, _)| *a)
        {
            self.dormant.remove(&oldest);
        }
        let next = if bootstrap { now } else { now + Duration::from_secs(2) };
        self.dormant.insert(addr, Dormant { since: now, next, tries: 0, bootstrap });
    }

    pub(super) fn retried(&mut self, addr: SocketAddr, now: Instant) {
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn addr(p: u16) -> SocketAddr {
        SocketAddr::new([127, 0, 0, 1].into(), p)
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
