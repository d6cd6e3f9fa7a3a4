//! Limits per source for the DHT node: how fast one IP address may send queries (a token bucket
//! per address), and the bounds of the peer store ([`PeerStoreLimits`]: key length, bytes, records
//! per address). A refused query is dropped unanswered, counted, and logged at most once a second.

use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::time::Duration;
use tokio::time::Instant;

/// The node's limits against a hostile source ([`super::DhtConfig::limits`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DhtLimits {
    /// The peer store's bounds besides `max_peers`.
    pub peer_store: PeerStoreLimits,
    /// Queries one IP address may send per second, on average (0: no limit).
    pub queries_per_second: f64,
    /// Queries one IP address may send at once after a quiet time (the bucket's size).
    pub query_burst: f64,
    /// Addresses whose buckets are kept (least recently seen ones are forgotten first).
    pub tracked_sources: usize,
}

impl Default for DhtLimits {
    /// 500 queries a second per address with bursts of 1000, 65,536 addresses tracked, and the
    /// default [`PeerStoreLimits`] (keys of at most 256 bytes, 64 MiB, 10,000 records per address).
    fn default() -> Self {
        DhtLimits { peer_store: PeerStoreLimits::default(), queries_per_second: 500.0, query_burst: 1000.0, tracked_sources: 65_536 }
    }
}

/// Limits of a [peer store](super::store::PeerStore) beyond its record count (see
/// [`PeerStore::with_limits`](super::store::PeerStore::with_limits)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerStoreLimits {
    /// Longest key (info-hash) accepted, in bytes. Longer keys are refused (error 203).
    pub max_key_len: usize,
    /// Most bytes the store holds, as counted by
    /// [`PeerStore::bytes`](super::store::PeerStore::bytes) (keys, records and their place in
    /// the expiry queue).
    pub max_bytes: usize,
    /// Most records one peer IP address has in the store (over all keys).
    pub max_per_source: usize,
}

impl Default for PeerStoreLimits {
    fn default() -> Self {
        PeerStoreLimits { max_key_len: DEFAULT_MAX_KEY_LEN, max_bytes: 64 << 20, max_per_source: 10_000 }
    }
}

/// The default longest key: 256 bytes. Grenache keys are service names such as
/// `rest:net:util` (tens of bytes); BitTorrent info-hashes are 20.
pub const DEFAULT_MAX_KEY_LEN: usize = 256;

/// The key under which limits per source count an address: the address itself for IPv4, its
/// /64 prefix for IPv6 (one host commonly holds a whole /64, so counting its addresses one by
/// one would let it multiply its share).
pub(crate) fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

/// A token bucket per source address (per /64 for IPv6, see [`source_key`]).
pub(crate) struct QueryRate {
    rate: f64,
    burst: f64,
    buckets: lru::LruCache<IpAddr, (f64, Instant)>,
    refused: u64,
    logged_at: Option<Instant>,
    refused_at_log: u64,
}

impl QueryRate {
    pub(crate) fn new(limits: &DhtLimits) -> QueryRate {
        QueryRate {
            rate: limits.queries_per_second,
            burst: limits.query_burst.max(1.0),
            buckets: lru::LruCache::new(NonZeroUsize::new(limits.tracked_sources.max(1)).unwrap_or(NonZeroUsize::MIN)),
            refused: 0,
            logged_at: None,
            refused_at_log: 0,
        }
    }

    /// Whether a query from `ip` may be answered now (taking a token when it may).
    pub(crate) fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        if self.rate <= 0.0 {
            return true;
        }
        let ip = source_key(ip);
        let (rate, burst) = (self.rate, self.burst);
        let (tokens, at) = self.buckets.get_or_insert_mut(ip, || (burst, now));
        *tokens = (*tokens + now.saturating_duration_since(*at).as_secs_f64() * rate).min(burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            return true;
        }
        self.refused += 1;
        if self.logged_at.is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(1)) {
            tracing::warn!(source = %ip, refused_since_last_line = self.refused - self.refused_at_log, refused_total = self.refused, "DHT queries over the rate of their source dropped");
            self.logged_at = Some(now);
            self.refused_at_log = self.refused;
        }
        false
    }

    /// Whether `ip` has spent its bucket (refilled to now, nothing taken): its datagrams are then
    /// dropped before they are even decoded, so that a flood costs as little as possible.
    pub(crate) fn exhausted(&mut self, ip: IpAddr, now: Instant) -> bool {
        if self.rate <= 0.0 {
            return false;
        }
        let ip = source_key(ip);
        let rate = self.rate;
        match self.buckets.peek_mut(&ip) {
            Some((tokens, at)) if *tokens < 1.0 => {
                let refilled = *tokens + now.saturating_duration_since(*at).as_secs_f64() * rate;
                if refilled < 1.0 {
                    self.refused += 1;
                    return true;
                }
                false
            }
            _ => false,
        }
    }

    /// How many queries were refused in all.
    pub(crate) fn refused(&self) -> u64 {
        self.refused
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_per_source_refills_at_its_rate() {
        let mut q = QueryRate::new(&DhtLimits { queries_per_second: 10.0, query_burst: 3.0, tracked_sources: 2, ..Default::default() });
        let t0 = Instant::now();
        let a = IpAddr::from([10, 0, 0, 1]);
        let b = IpAddr::from([10, 0, 0, 2]);
        assert!((0..3).all(|_| q.allow(a, t0)), "the burst");
        assert!(!q.allow(a, t0), "then refused");
        assert!(q.allow(b, t0), "another source has its own bucket");
        assert!(q.allow(a, t0 + Duration::from_millis(100)), "one token after 100 ms at 10/s");
        assert!(!q.allow(a, t0 + Duration::from_millis(100)));
        assert_eq!(q.refused(), 2);
        assert!(q.exhausted(a, t0 + Duration::from_millis(100)), "spent, and nothing refilled yet");
        assert!(!q.exhausted(a, t0 + Duration::from_millis(250)), "a token is back");
        assert!(!q.exhausted(b, t0));
        let mut off = QueryRate::new(&DhtLimits { queries_per_second: 0.0, ..Default::default() });
        assert!((0..10_000).all(|_| off.allow(a, t0)));
    }
}
