//! The tasks that carry out [`super::heal`]'s schedule on a node: the maintenance loop, its
//! refresh rounds (`find_node` walks), the retries of silent nodes and the checks of saved ones.
//! The schedule, its budget and the record of silent nodes are in `heal.rs`, apart from the node,
//! so that they can be tested without one.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::time::Instant;

use tokio::task::JoinSet;

use super::heal::{ALPHA, FAST_MAX, FAST_MIN, GOOD_FOR, QUIET_ROUNDS, TICK, WALK_MAX_QUERIES};
use super::krpc::{self, Method};
use super::node::{Inner, QueryError, lock};
use super::routing::{self, K};
use super::{DhtState, DhtStats};

impl Inner {
    /// A query sent by the maintenance (counted apart).
    pub(crate) async fn maint_query(self: &Arc<Self>, to: SocketAddr, method: Method) -> std::result::Result<krpc::Response, QueryError> {
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
        let mut entries: Vec<_> =
            self.state().table.entries().into_iter().filter(|e| now.saturating_duration_since(e.last_seen) < GOOD_FOR).collect();
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
            let present: HashSet<SocketAddr> = self.state().table.all().iter().map(|n| n.addr).collect();
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
                let present: HashSet<SocketAddr> =
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
    async fn refresh_walk(self: &Arc<Self>, target: [u8; 20], asked: &mut HashSet<SocketAddr>) {
        let mut cands: BTreeMap<(Vec<u8>, [u8; 20]), (SocketAddr, bool)> = BTreeMap::new();
        for n in self.state().table.closest(&target, K) {
            cands.insert((routing::distance(&target, &n.id), n.id), (n.addr, false));
        }
        let mut sent = 0usize;
        while sent < WALK_MAX_QUERIES {
            let batch: Vec<([u8; 20], SocketAddr)> = cands
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
