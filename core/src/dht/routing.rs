//! XOR distance (with k-bucket's rule for ids of unequal length) and the routing table.

use std::cmp::Ordering;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::time::Instant;

use super::krpc::NodeInfo;

/// Bucket size.
pub const K: usize = 20;

/// k-bucket's distance between two ids, as a big-endian byte string of length `max(a, b)`:
/// the common prefix is XORed byte by byte, and every extra byte of the longer id counts as 255.
///
/// k-bucket folds the same sequence into a JavaScript double (`d = d*256 + byte`), so it only
/// distinguishes about the first 6-7 bytes; we compare exactly. Comparing two distances to the
/// same target is comparing these byte strings (they have equal length).
pub fn distance(a: &[u8], b: &[u8]) -> Vec<u8> {
    let (short, long) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    let mut d: Vec<u8> = short.iter().zip(long).map(|(x, y)| x ^ y).collect();
    d.resize(long.len(), 255);
    d
}

/// Orders `a` and `b` by distance to `target` (ties, which happen with short targets, are broken
/// by id so that every node sorts the same way).
pub fn cmp_distance(target: &[u8], a: &[u8], b: &[u8]) -> Ordering {
    distance(target, a).cmp(&distance(target, b)).then_with(|| a.cmp(b))
}

/// The routing table's view of a node.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Id and address.
    pub info: NodeInfo,
    /// Last time we heard from it.
    pub last_seen: Instant,
}

/// Most recently removed nodes kept for the self-healing maintenance to retry (see
/// [`RoutingTable::take_removed`]).
pub const MAX_REMOVED: usize = 64;

/// A Kademlia routing table: 160 buckets by length of the prefix shared with our id, K each.
#[derive(Debug)]
pub struct RoutingTable {
    own: [u8; 20],
    buckets: Vec<Vec<Entry>>,
    /// When each bucket last gained a node or heard from one of its nodes (BEP 5 "touched").
    touched: Vec<Instant>,
    /// Nodes removed lately, newest last, at most [`MAX_REMOVED`].
    removed: VecDeque<NodeInfo>,
    /// How many nodes were ever added (a new node, not a refresh).
    added_total: u64,
    /// When the table last gained or lost a node.
    pub last_change: Instant,
}

/// What [`RoutingTable::insert`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Insert {
    /// A new node was added.
    Added,
    /// The node was known; its `last_seen` (and address) were refreshed.
    Refreshed,
    /// The bucket is full; the caller may ping this least-recently-seen node and, if it is dead,
    /// remove it and insert again.
    Full(NodeInfo),
    /// Our own id, or an unusable address: ignored.
    Ignored,
}

impl RoutingTable {
    /// An empty table for `own` id.
    pub fn new(own: [u8; 20]) -> RoutingTable {
        let now = Instant::now();
        RoutingTable {
            own,
            buckets: vec![Vec::new(); 161],
            touched: vec![now; 161],
            removed: VecDeque::new(),
            added_total: 0,
            last_change: now,
        }
    }

    /// The bucket a node id falls in: the length of the prefix it shares with our id (0..=160).
    pub fn bucket_index(&self, id: &[u8; 20]) -> usize {
        let mut n = 0;
        for (a, b) in self.own.iter().zip(id) {
            let x = a ^ b;
            if x == 0 {
                n += 8;
            } else {
                n += x.leading_zeros() as usize;
                break;
            }
        }
        n.min(160)
    }

    /// Adds or refreshes a node seen just now.
    pub fn insert(&mut self, info: NodeInfo, now: Instant) -> Insert {
        if info.id == self.own || info.addr.port() == 0 {
            return Insert::Ignored;
        }
        let i = self.bucket_index(&info.id);
        let bucket = &mut self.buckets[i];
        if let Some(e) = bucket.iter_mut().find(|e| e.info.id == info.id) {
            e.last_seen = now;
            e.info.addr = info.addr;
            self.touched[i] = now;
            return Insert::Refreshed;
        }
        if bucket.len() < K {
            bucket.push(Entry { info, last_seen: now });
            self.touched[i] = now;
            self.last_change = now;
            self.added_total += 1;
            return Insert::Added;
        }
        let oldest = bucket.iter().min_by_key(|e| e.last_seen).map(|e| e.info);
        match oldest {
            Some(o) => Insert::Full(o),
            None => Insert::Ignored,
        }
    }

    /// Removes a node by id; true if it was there.
    pub fn remove(&mut self, id: &[u8; 20]) -> bool {
        let i = self.bucket_index(id);
        let bucket = &mut self.buckets[i];
        let Some(pos) = bucket.iter().position(|e| &e.info.id == id) else { return false };
        let gone = bucket.remove(pos);
        self.last_change = Instant::now();
        if self.removed.len() >= MAX_REMOVED {
            self.removed.pop_front();
        }
        self.removed.push_back(gone.info);
        true
    }

    /// Takes the nodes removed since the last call (at most [`MAX_REMOVED`], oldest first), so
    /// that maintenance can retry them later (a node cut off by a network partition comes back).
    pub fn take_removed(&mut self) -> Vec<NodeInfo> {
        self.removed.drain(..).collect()
    }

    /// How many nodes were ever added to the table (refreshes of known nodes do not count).
    pub fn added_total(&self) -> u64 {
        self.added_total
    }

    /// Index of the deepest non-empty bucket (0 when the table is empty).
    pub fn depth(&self) -> usize {
        self.buckets.iter().rposition(|b| !b.is_empty()).unwrap_or(0)
    }

    /// Nodes in bucket `i`.
    pub fn bucket_len(&self, i: usize) -> usize {
        self.buckets.get(i).map_or(0, Vec::len)
    }

    /// When bucket `i` last gained a node or heard from one.
    pub fn bucket_touched(&self, i: usize) -> Option<Instant> {
        self.touched.get(i).copied()
    }

    /// Marks bucket `i` as touched now (a refresh lookup went through it).
    pub fn touch_bucket(&mut self, i: usize, now: Instant) {
        if let Some(t) = self.touched.get_mut(i) {
            *t = now;
        }
    }

    /// A random id that falls in bucket `i` (`i < 160`): our id's first `i` bits, the next bit
    /// flipped, the rest random.
    pub fn random_id_in_bucket(&self, i: usize) -> [u8; 20] {
        let mut id: [u8; 20] = rand::random();
        let i = i.min(159);
        let (byte, bit) = (i / 8, i % 8);
        id[..byte].copy_from_slice(&self.own[..byte]);
        // keep our first `bit` bits of this byte, flip the next one, keep the random rest
        let keep = if bit == 0 { 0u8 } else { 0xffu8 << (8 - bit) };
        let flip = 0x80u8 >> bit;
        let rest = !keep & !flip;
        id[byte] = (self.own[byte] & keep) | (!self.own[byte] & flip) | (id[byte] & rest);
        id
    }

    /// Whether the node is in the table.
    pub fn contains(&self, id: &[u8; 20]) -> bool {
        self.buckets[self.bucket_index(id)].iter().any(|e| &e.info.id == id)
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.buckets.iter().map(Vec::len).sum()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.buckets.iter().all(Vec::is_empty)
    }

    /// Every node with when it was last heard from.
    pub fn entries(&self) -> Vec<Entry> {
        self.buckets.iter().flatten().cloned().collect()
    }

    /// Every node.
    pub fn all(&self) -> Vec<NodeInfo> {
        self.buckets.iter().flatten().map(|e| e.info).collect()
    }

    /// Nodes not heard from for at least `age`.
    pub fn stale(&self, age: Duration, now: Instant) -> Vec<NodeInfo> {
        self.buckets.iter().flatten().filter(|e| now.saturating_duration_since(e.last_seen) >= age).map(|e| e.info).collect()
    }

    /// The `n` nodes closest to `target` (any length), closest first.
    pub fn closest(&self, target: &[u8], n: usize) -> Vec<NodeInfo> {
        let mut all: Vec<(Vec<u8>, NodeInfo)> = self.buckets.iter().flatten().map(|e| (distance(target, &e.info.id), e.info)).collect();
        all.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.id.cmp(&b.1.id)));
        all.truncate(n);
        all.into_iter().map(|(_, i)| i).collect()
    }

    /// Address of a node, by id.
    pub fn addr_of(&self, id: &[u8; 20]) -> Option<SocketAddr> {
        self.buckets[self.bucket_index(id)].iter().find(|e| &e.info.id == id).map(|e| e.info.addr)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn distance_equal_lengths_is_xor() {
        assert_eq!(distance(&[0b1010, 0xff], &[0b0110, 0x0f]), vec![0b1100, 0xf0]);
        assert_eq!(distance(b"abc", b"abc"), vec![0, 0, 0]);
    }

    #[test]
    fn distance_unequal_lengths_pads_with_255() {
        // k-bucket: xor the common prefix, then 255 for every extra byte of the longer id.
        assert_eq!(distance(&[0x01], &[0x01, 0x02, 0x03]), vec![0x00, 0xff, 0xff]);
        assert_eq!(distance(&[0x01, 0x02, 0x03], &[0x03]), vec![0x02, 0xff, 0xff]);
        assert_eq!(distance(&[], &[7, 8]), vec![0xff, 0xff]);
        // JS value of the same: ((0x00*256)+255)*256+255 = 65535
        let d = distance(&[0x01], &[0x01, 0x02, 0x03]);
        let js = d.iter().fold(0f64, |acc, &b| acc * 256.0 + f64::from(b));
        assert_eq!(js, 65535.0);
    }

    #[test]
    fn closest_orders_by_distance_to_a_short_target() {
        let mut t = RoutingTable::new([0; 20]);
        let now = Instant::now();
        for b in [0x10u8, 0x41, 0x43, 0x80] {
            let mut id = [b; 20];
            id[19] = 1;
            t.insert(NodeInfo { id, addr: SocketAddr::new([127, 0, 0, 1].into(), 1000 + u16::from(b)) }, now);
        }
        // target "B" = 0x42: 0x43 (xor 1) then 0x41 (xor 3), then 0x10 (0x52), then 0x80 (0xc2).
        let c: Vec<u8> = t.closest(b"B", 10).iter().map(|n| n.id[0]).collect();
        assert_eq!(c, vec![0x43, 0x41, 0x10, 0x80]);
        assert_eq!(t.closest(b"B", 2).len(), 2);
    }

    #[test]
    fn buckets_fill_up_and_report_the_oldest() {
        let own = [0u8; 20];
        let mut t = RoutingTable::new(own);
        let now = Instant::now();
        // all in bucket 0 (first bit set)
        for i in 0..K as u8 {
            let mut id = [0x80; 20];
            id[19] = i;
            assert_eq!(t.insert(NodeInfo { id, addr: SocketAddr::new([127, 0, 0, 1].into(), 2000 + u16::from(i)) }, now), Insert::Added);
        }
        let mut id = [0x80; 20];
        id[19] = 200;
        let r = t.insert(NodeInfo { id, addr: SocketAddr::new([127, 0, 0, 1].into(), 3000) }, now);
        assert!(matches!(r, Insert::Full(_)));
        assert_eq!(t.len(), K);
        assert_eq!(t.insert(NodeInfo { id: own, addr: SocketAddr::new([127, 0, 0, 1].into(), 1) }, now), Insert::Ignored);
        let first = t.all()[0];
        assert!(t.remove(&first.id));
        assert!(!t.contains(&first.id));
        assert_eq!(t.take_removed(), vec![first]);
        assert!(t.take_removed().is_empty());
        assert_eq!(t.added_total(), K as u64);
    }

    #[test]
    fn random_ids_fall_in_their_bucket() {
        let own: [u8; 20] = rand::random();
        let t = RoutingTable::new(own);
        for i in 0..160 {
            for _ in 0..8 {
                assert_eq!(t.bucket_index(&t.random_id_in_bucket(i)), i, "bucket {i}");
            }
        }
    }
}
