//! The Grape's lookup cache (the reference's `_mem`, a `record-cache`).
//!
//! Every peer any lookup for a name has seen goes in here; a `/lookup` answers with a random
//! sample of what is here for the name. Two generations, *fresh* and *stale*: every
//! `ceil(2/3 × max_age)` the stale one is dropped and the fresh one becomes stale, so a record
//! lives between about 0.67× and 1.33× `max_age` after it was last added. A rotation also happens
//! at once when the fresh generation grows past `max_size` records, which bounds memory to about
//! `2 × max_size` records. `max_age` zero means no time-based expiry.
//!
//! Rotation is computed lazily on each access from the elapsed time, so no timer task is needed.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;

type Generation = HashMap<Vec<u8>, HashSet<SocketAddr>>;

/// A bounded two-generation cache of peers per name.
#[derive(Debug)]
pub struct LookupCache {
    interval: Option<Duration>,
    max_size: usize,
    fresh: Generation,
    fresh_records: usize,
    stale: Generation,
    last_rotation: Instant,
}

impl LookupCache {
    /// A cache whose records live 0.67–1.33 × `max_age` (zero: forever), with at most `max_size`
    /// records per generation.
    pub fn new(max_age: Duration, max_size: usize) -> LookupCache {
        let interval = if max_age.is_zero() {
            None
        } else {
            // ceil(2/3 × maxAge) in milliseconds, at least 1 ms.
            let ms = max_age.as_millis().saturating_mul(2).div_ceil(3).max(1);
            Some(Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX)))
        };
        LookupCache {
            interval,
            max_size: max_size.max(1),
            fresh: HashMap::new(),
            fresh_records: 0,
            stale: HashMap::new(),
            last_rotation: Instant::now(),
        }
    }

    fn rotate_by_time(&mut self, now: Instant) {
        let Some(interval) = self.interval else { return };
        let elapsed = now.saturating_duration_since(self.last_rotation);
        if elapsed < interval {
            return;
        }
        let n = elapsed.as_nanos() / interval.as_nanos().max(1);
        if n >= 2 {
            self.stale.clear();
            self.fresh.clear();
            self.fresh_records = 0;
        } else {
            self.stale = std::mem::take(&mut self.fresh);
            self.fresh_records = 0;
        }
        let advance = interval.saturating_mul(u32::try_from(n).unwrap_or(u32::MAX));
        self.last_rotation = self.last_rotation.checked_add(advance).unwrap_or(now);
    }

    /// Records that `peer` serves `name`.
    pub fn add(&mut self, name: &[u8], peer: SocketAddr) {
        let now = Instant::now();
        self.rotate_by_time(now);
        if let Some(set) = self.stale.get_mut(name) {
            set.remove(&peer);
            if set.is_empty() {
                self.stale.remove(name);
            }
        }
        let set = self.fresh.entry(name.to_vec()).or_default();
        if set.insert(peer) {
            self.fresh_records += 1;
        }
        if self.fresh_records > self.max_size {
            self.stale = std::mem::take(&mut self.fresh);
            self.fresh_records = 0;
            self.last_rotation = now;
        }
    }

    /// Forgets that `peer` serves `name` (it was unannounced).
    pub fn remove(&mut self, name: &[u8], peer: SocketAddr) {
        if let Some(set) = self.fresh.get_mut(name)
            && set.remove(&peer)
        {
            self.fresh_records -= 1;
            if set.is_empty() {
                self.fresh.remove(name);
            }
        }
        if let Some(set) = self.stale.get_mut(name)
            && set.remove(&peer)
            && set.is_empty()
        {
            self.stale.remove(name);
        }
    }

    /// Up to `n` peers known for `name`, in random order, without duplicates.
    pub fn get(&mut self, name: &[u8], n: usize) -> Vec<SocketAddr> {
        self.rotate_by_time(Instant::now());
        let mut all: Vec<SocketAddr> = Vec::new();
        if let Some(s) = self.fresh.get(name) {
            all.extend(s.iter().copied());
        }
        if let Some(s) = self.stale.get(name) {
            all.extend(s.iter().filter(|p| !self.fresh.get(name).is_some_and(|f| f.contains(p))).copied());
        }
        let mut rng = rand::thread_rng();
        all.shuffle(&mut rng);
        all.truncate(n);
        all
    }

    /// Records in both generations (for tests and metrics).
    pub fn len(&self) -> usize {
        self.fresh_records + self.stale.values().map(HashSet::len).sum::<usize>()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(port: u16) -> SocketAddr {
        SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), port)
    }

    #[test]
    fn dedup_sample_and_bound() {
        let mut c = LookupCache::new(Duration::ZERO, 1000);
        for port in 0..300 {
            c.add(b"a", p(port));
            c.add(b"a", p(port));
        }
        let got = c.get(b"a", 100);
        assert_eq!(got.len(), 100);
        let set: HashSet<_> = got.iter().collect();
        assert_eq!(set.len(), 100);
        assert!(c.get(b"b", 100).is_empty());
        for port in 0..5000 {
            c.add(b"x", p(port));
        }
        assert!(c.len() <= 2 * 1001, "{}", c.len());
    }

    #[test]
    fn expires_between_two_thirds_and_four_thirds() {
        let mut c = LookupCache::new(Duration::from_millis(150), 100);
        c.add(b"a", p(1));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(c.get(b"a", 10), vec![p(1)]);
        std::thread::sleep(Duration::from_millis(250));
        assert!(c.get(b"a", 10).is_empty());
    }

    #[test]
    fn remove_forgets_in_both_generations() {
        let mut c = LookupCache::new(Duration::ZERO, 2);
        c.add(b"a", p(1));
        c.add(b"a", p(2));
        c.add(b"a", p(3)); // rotates: 1 and 2 are stale now... fresh has 3
        c.remove(b"a", p(1));
        c.remove(b"a", p(3));
        assert_eq!(c.get(b"a", 10), vec![p(2)]);
        assert_eq!(c.len(), 1);
        c.remove(b"a", p(2));
        assert!(c.is_empty());
    }

    #[test]
    fn re_add_keeps_alive() {
        let mut c = LookupCache::new(Duration::from_millis(300), 100);
        for _ in 0..8 {
            c.add(b"a", p(1));
            std::thread::sleep(Duration::from_millis(60));
        }
        assert_eq!(c.get(b"a", 10), vec![p(1)]);
    }
}
