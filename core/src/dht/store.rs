//! Node-side state: announce tokens, the peer store, and the BEP44 value store.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use rand::RngCore;
use rand::seq::SliceRandom;
use sha1::{Digest, Sha1};

use super::limits::source_key;
pub use super::limits::{DEFAULT_MAX_KEY_LEN, PeerStoreLimits};

use super::bencode::Value;
use super::krpc::{KrpcError, PutArgs};

/// SHA-1 of `data`.
pub fn sha1(data: &[u8]) -> [u8; 20] {
    Sha1::digest(data).into()
}

/// Announce/put tokens: SHA-1(dotted IPv4 string ‖ secret), with a current and a previous secret
/// (the caller rotates every 5 minutes), as bittorrent-dht does. Tokens depend on the IP only.
#[derive(Debug, Clone)]
pub struct Tokens {
    secrets: [[u8; 20]; 2],
}

impl Default for Tokens {
    fn default() -> Self {
        Self::new()
    }
}

impl Tokens {
    /// Two fresh random secrets.
    pub fn new() -> Tokens {
        let mut rng = rand::thread_rng();
        let mut s = [[0u8; 20]; 2];
        rng.fill_bytes(&mut s[0]);
        rng.fill_bytes(&mut s[1]);
        Tokens { secrets: s }
    }

    fn make(ip: IpAddr, secret: &[u8; 20]) -> [u8; 20] {
        let mut h = Sha1::new();
        h.update(ip.to_string().as_bytes());
        h.update(secret);
        h.finalize().into()
    }

    /// The token to hand out to `ip` now.
    pub fn generate(&self, ip: IpAddr) -> [u8; 20] {
        Self::make(ip, &self.secrets[0])
    }

    /// Accepts a token made with the current or the previous secret.
    pub fn validate(&self, ip: IpAddr, token: &[u8]) -> bool {
        self.secrets.iter().any(|s| Self::make(ip, s).as_slice() == token)
    }

    /// The current secret becomes the previous one; a new current one is drawn.
    pub fn rotate(&mut self) {
        self.secrets[1] = self.secrets[0];
        rand::thread_rng().fill_bytes(&mut self.secrets[0]);
    }
}

/// What a key costs in [`PeerStore::bytes`] besides its bytes: its map entry, its shared
/// allocation's header and its record list.
const KEY_OVERHEAD: usize = 96;
/// What a record costs in [`PeerStore::bytes`]: its place in its key's list and in the expiry
/// queue.
const RECORD_BYTES: usize = 64;

/// Peers announced per info-hash (a set of `ip:port` per key).
///
/// Expiry: a record lives **exactly** `max_age` after its last announce (checked on every read).
/// `max_age == 0` means no time expiry (what a Node CLI grape does). Expired records leave through
/// an expiry queue in announce order, a few with every new record and the rest on
/// [`PeerStore::sweep`]; the work is proportional to what expires, never to the store's size.
///
/// Bounds: `max_peers` records over all keys, [`PeerStoreLimits::max_bytes`] bytes, keys of at
/// most [`PeerStoreLimits::max_key_len`] bytes, and [`PeerStoreLimits::max_per_source`] records per
/// peer IP, so that one source cannot fill the store. When a bound is reached (after dropping
/// expired records) new records are refused; re-announces of known records still refresh them.
///
/// Memory: about 100 bytes per key plus 64 bytes per record; 100 000 services (one peer each)
/// measure ~16 MB (`core/tests/dht_memory.rs`).
#[derive(Debug)]
pub struct PeerStore {
    map: HashMap<Arc<[u8]>, Vec<(SocketAddr, Instant)>>,
    /// Every record once, oldest announce first (a refreshed record is moved back when it comes
    /// to the front).
    queue: VecDeque<(Arc<[u8]>, SocketAddr, Instant)>,
    per_source: HashMap<IpAddr, usize>,
    total: usize,
    bytes: usize,
    max_peers: usize,
    max_age: Duration,
    limits: PeerStoreLimits,
}

/// Result of [`PeerStore::add`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddPeer {
    /// A new record.
    Added,
    /// An existing record was refreshed.
    Refreshed,
    /// The store is full (records, bytes, or this peer's IP has its most records); nothing was
    /// stored.
    Full,
    /// The key is over [`PeerStoreLimits::max_key_len`]; nothing was stored.
    KeyTooLong,
}

impl PeerStore {
    /// An empty store with the default [`PeerStoreLimits`].
    pub fn new(max_peers: usize, max_age: Duration) -> PeerStore {
        PeerStore::with_limits(max_peers, max_age, PeerStoreLimits::default())
    }

    /// An empty store with `limits`.
    pub fn with_limits(max_peers: usize, max_age: Duration, limits: PeerStoreLimits) -> PeerStore {
        PeerStore {
            map: HashMap::new(),
            queue: VecDeque::new(),
            per_source: HashMap::new(),
            total: 0,
            bytes: 0,
            max_peers,
            max_age,
            limits,
        }
    }

    fn alive(&self, seen: Instant, now: Instant) -> bool {
        self.max_age.is_zero() || now.saturating_duration_since(seen) < self.max_age
    }

    /// Stores or refreshes `peer` under `key`.
    pub fn add(&mut self, key: &[u8], peer: SocketAddr, now: Instant) -> AddPeer {
        if key.len() > self.limits.max_key_len {
            return AddPeer::KeyTooLong;
        }
        if let Some(list) = self.map.get_mut(key)
            && let Some(e) = list.iter_mut().find(|e| e.0 == peer)
        {
            e.1 = now;
            return AddPeer::Refreshed;
        }
        // A few expired records leave with every new one.
        self.expire(now, 8);
        let new_key = !self.map.contains_key(key);
        let cost = RECORD_BYTES + if new_key { key.len() + KEY_OVERHEAD } else { 0 };
        let full = |s: &PeerStore| {
            s.total >= s.max_peers
                || s.bytes + cost > s.limits.max_bytes
                || s.per_source.get(&source_key(peer.ip())).is_some_and(|&n| n >= s.limits.max_per_source)
        };
        if full(self) {
            self.expire(now, usize::MAX);
            if full(self) {
                return AddPeer::Full;
            }
        }
        let key: Arc<[u8]> = match self.map.get_key_value(key) {
            Some((k, _)) => k.clone(),
            None => Arc::from(key),
        };
        self.map.entry(key.clone()).or_insert_with(|| Vec::with_capacity(1)).push((peer, now));
        self.queue.push_back((key, peer, now));
        *self.per_source.entry(source_key(peer.ip())).or_insert(0) += 1;
        self.total += 1;
        self.bytes += cost;
        AddPeer::Added
    }

    /// Removes the record `peer` under `key` (an `unannounce_peer`). True when there was one.
    /// Its place in the expiry queue is left behind and skipped when it comes up.
    pub fn remove(&mut self, key: &[u8], peer: SocketAddr) -> bool {
        let Some(list) = self.map.get_mut(key) else { return false };
        let Some(i) = list.iter().position(|e| e.0 == peer) else { return false };
        list.swap_remove(i);
        self.total -= 1;
        self.bytes -= RECORD_BYTES;
        if list.is_empty() {
            self.map.remove(key);
            self.bytes -= key.len() + KEY_OVERHEAD;
        }
        if let Some(c) = self.per_source.get_mut(&source_key(peer.ip())) {
            *c -= 1;
            if *c == 0 {
                self.per_source.remove(&source_key(peer.ip()));
            }
        }
        if self.max_age.is_zero() {
            // Nothing ever leaves the expiry queue without a max age: take the record's place
            // out now, so that announce/unannounce cycles cannot grow it.
            self.queue.retain(|(k, p, _)| !(p == &peer && &**k == key));
        }
        true
    }

    /// Up to `limit` live peers for `key`, in random order.
    pub fn get(&self, key: &[u8], limit: usize, now: Instant) -> Vec<SocketAddr> {
        let mut out: Vec<SocketAddr> = match self.map.get(key) {
            Some(list) => list.iter().filter(|e| self.alive(e.1, now)).map(|e| e.0).collect(),
            None => Vec::new(),
        };
        out.shuffle(&mut rand::thread_rng());
        out.truncate(limit);
        out
    }

    /// Drops every expired record (work in proportion to what expired), and gives back the
    /// memory of the tables when they are mostly empty.
    pub fn sweep(&mut self, now: Instant) {
        self.expire(now, usize::MAX);
        if self.map.capacity() > 4 * self.map.len() + 64 {
            self.map.shrink_to_fit();
        }
        if self.queue.capacity() > 4 * self.queue.len() + 64 {
            self.queue.shrink_to_fit();
        }
        if self.per_source.capacity() > 4 * self.per_source.len() + 64 {
            self.per_source.shrink_to_fit();
        }
    }

    /// Takes at most `budget` records off the front of the expiry queue: each one expired is
    /// removed; one refreshed since it was queued goes to the back with its new time.
    fn expire(&mut self, now: Instant, budget: usize) {
        if self.max_age.is_zero() {
            return;
        }
        let mut n = 0;
        while n < budget {
            let Some((_, _, at)) = self.queue.front() else { break };
            if now.saturating_duration_since(*at) < self.max_age {
                break;
            }
            n += 1;
            let Some((key, peer, at)) = self.queue.pop_front() else { break };
            let Some(list) = self.map.get_mut(&key) else { continue };
            let Some(i) = list.iter().position(|e| e.0 == peer) else { continue };
            let seen = list[i].1;
            if seen != at && now.saturating_duration_since(seen) < self.max_age {
                // Refreshed: its turn comes again later.
                self.queue.push_back((key, peer, seen));
                continue;
            }
            list.swap_remove(i);
            self.total -= 1;
            self.bytes -= RECORD_BYTES;
            if list.is_empty() {
                self.map.remove(&key);
                self.bytes -= key.len() + KEY_OVERHEAD;
            }
            if let Some(c) = self.per_source.get_mut(&source_key(peer.ip())) {
                *c -= 1;
                if *c == 0 {
                    self.per_source.remove(&source_key(peer.ip()));
                }
            }
        }
    }

    /// Number of records (including expired ones not yet swept).
    pub fn len(&self) -> usize {
        self.total
    }

    /// True when no record is held.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Number of keys.
    pub fn keys(&self) -> usize {
        self.map.len()
    }

    /// The bytes the store counts against [`PeerStoreLimits::max_bytes`]: each key's bytes plus
    /// 96, and 64 per record.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// Records removed by `unannounce_peer` lately, per info-hash: a lookup drops them from what
/// other nodes (Node Grapes, which ignore the unannounce) still return, and `get_peers` replies
/// tell other lookups about them (`r.gone`). Bounded: [`Tombstones::MAX_KEYS`] keys (least
/// recently used dropped first), [`Tombstones::MAX_PER_KEY`] peers each, and each lives `ttl`.
/// Only an unannounce that removed a record leaves one, so a flood of unannounces for records
/// that do not exist costs nothing here.
#[derive(Debug)]
pub struct Tombstones {
    map: lru::LruCache<Vec<u8>, Vec<(SocketAddr, Instant)>>,
    ttl: Duration,
}

impl Tombstones {
    /// Most info-hashes with tombstones.
    pub const MAX_KEYS: usize = 4096;
    /// Most tombstones per info-hash (the oldest one makes room).
    pub const MAX_PER_KEY: usize = 64;

    /// An empty set whose entries live `ttl`.
    pub fn new(ttl: Duration) -> Tombstones {
        Tombstones { map: lru::LruCache::new(NonZeroUsize::new(Self::MAX_KEYS).unwrap_or(NonZeroUsize::MIN)), ttl }
    }

    /// Remembers that `peer` left `key` at `now`.
    pub fn add(&mut self, key: &[u8], peer: SocketAddr, now: Instant) {
        let ttl = self.ttl;
        let list = self.map.get_or_insert_mut(key.to_vec(), Vec::new);
        list.retain(|(p, at)| *p != peer && now.saturating_duration_since(*at) < ttl);
        if list.len() >= Self::MAX_PER_KEY {
            list.remove(0);
        }
        list.push((peer, now));
    }

    /// Forgets `peer`'s tombstone under `key` (it announced again).
    pub fn clear(&mut self, key: &[u8], peer: SocketAddr) {
        if let Some(list) = self.map.peek_mut(key) {
            list.retain(|(p, _)| *p != peer);
            if list.is_empty() {
                self.map.pop(key);
            }
        }
    }

    /// The live tombstones of `key`.
    pub fn get(&self, key: &[u8], now: Instant) -> Vec<SocketAddr> {
        match self.map.peek(key) {
            Some(list) => list.iter().filter(|(_, at)| now.saturating_duration_since(*at) < self.ttl).map(|(p, _)| *p).collect(),
            None => Vec::new(),
        }
    }

    /// Whether `peer` has a live tombstone under `key`.
    pub fn contains(&self, key: &[u8], peer: SocketAddr, now: Instant) -> bool {
        self.map.peek(key).is_some_and(|l| l.iter().any(|(p, at)| *p == peer && now.saturating_duration_since(*at) < self.ttl))
    }

    /// Number of tombstones held (live or not yet dropped).
    pub fn len(&self) -> usize {
        self.map.iter().map(|(_, l)| l.len()).sum()
    }

    /// True when none is held.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// A stored BEP44 item.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredItem {
    /// `bencode(v)`.
    pub v_bencoded: Vec<u8>,
    /// Mutable fields.
    pub mutable: Option<StoredMutable>,
}

/// Mutable fields of a [`StoredItem`].
#[derive(Debug, Clone, PartialEq)]
pub struct StoredMutable {
    /// Public key.
    pub k: [u8; 32],
    /// Signature.
    pub sig: [u8; 64],
    /// Sequence number.
    pub seq: i64,
    /// Salt (possibly empty).
    pub salt: Vec<u8>,
}

/// BEP44 signed bytes: `4:salt<n>:<salt>3:seqi<seq>e1:v<bencoded v>` (the salt part only when a
/// salt is given; bittorrent-dht includes it whenever the `salt` key is present, even if empty).
pub fn sig_data(salt: Option<&[u8]>, seq: i64, v_bencoded: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v_bencoded.len() + 32);
    if let Some(s) = salt {
        out.extend_from_slice(b"4:salt");
        out.extend_from_slice(s.len().to_string().as_bytes());
        out.push(b':');
        out.extend_from_slice(s);
    }
    out.extend_from_slice(b"3:seqi");
    out.extend_from_slice(seq.to_string().as_bytes());
    out.extend_from_slice(b"e1:v");
    out.extend_from_slice(v_bencoded);
    out
}

/// Verifies an ed25519 signature; false on malformed keys.
pub fn verify_sig(k: &[u8; 32], sig: &[u8; 64], data: &[u8]) -> bool {
    match VerifyingKey::from_bytes(k) {
        Ok(key) => key.verify(data, &Signature::from_bytes(sig)).is_ok(),
        Err(_) => false,
    }
}

/// target = SHA-1(k ‖ salt).
pub fn mutable_target(k: &[u8; 32], salt: &[u8]) -> [u8; 20] {
    let mut h = Sha1::new();
    h.update(k);
    h.update(salt);
    h.finalize().into()
}

/// Largest accepted `v`, in bytes (of the string for a byte string, of the encoding otherwise).
pub const MAX_V_BYTES: usize = 1000;

/// The BEP44 size rule: a byte string may hold up to [`MAX_V_BYTES`] bytes (what bittorrent-dht
/// checks); any other value's encoding may be up to [`MAX_V_BYTES`] bytes.
pub fn v_too_big(v: &Value, v_bencoded: &[u8]) -> bool {
    match v {
        Value::Bytes(b) => b.len() > MAX_V_BYTES,
        _ => v_bencoded.len() > MAX_V_BYTES,
    }
}

/// The BEP44 value store: an LRU bounded by `max_values`, no time expiry (like bittorrent-dht).
#[derive(Debug)]
pub struct ValueStore {
    lru: lru::LruCache<[u8; 20], StoredItem>,
}

/// What to do with a `put` query.
#[derive(Debug, Clone, PartialEq)]
pub enum PutOutcome {
    /// Stored: reply `{id}`.
    Stored([u8; 20]),
    /// Answer with this KRPC error.
    Error(KrpcError),
    /// Drop silently (like the reference: missing fields, bad signature).
    Drop,
}

impl ValueStore {
    /// An empty store holding at most `max_values` items (at least 1).
    pub fn new(max_values: usize) -> ValueStore {
        ValueStore { lru: lru::LruCache::new(NonZeroUsize::new(max_values.max(1)).unwrap_or(NonZeroUsize::MIN)) }
    }

    /// Looks up an item (marks it recently used).
    pub fn get(&mut self, target: &[u8; 20]) -> Option<&StoredItem> {
        self.lru.get(target)
    }

    /// Stores an item unconditionally (local puts).
    pub fn insert(&mut self, target: [u8; 20], item: StoredItem) {
        self.lru.put(target, item);
    }

    /// Number of items.
    pub fn len(&self) -> usize {
        self.lru.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.lru.is_empty()
    }

    /// Applies a remote `put` whose token was already checked, in bittorrent-dht's order:
    /// size (205) → mutable? → signature (silent drop) → cas (301) → seq (302) → store.
    pub fn apply_put(&mut self, a: &PutArgs) -> PutOutcome {
        let Some(v) = &a.v else { return PutOutcome::Drop };
        let v_bencoded = v.encode();
        if v_too_big(v, &v_bencoded) {
            return PutOutcome::Error(KrpcError::new(205, "data payload too large"));
        }
        if a.k.is_none() && a.sig.is_none() {
            let target = sha1(&v_bencoded);
            self.lru.put(target, StoredItem { v_bencoded, mutable: None });
            return PutOutcome::Stored(target);
        }
        let (Some(k), Some(sig)) = (&a.k, &a.sig) else { return PutOutcome::Drop };
        let (Ok(k), Ok(sig)) = (<[u8; 32]>::try_from(k.as_slice()), <[u8; 64]>::try_from(sig.as_slice())) else {
            return PutOutcome::Drop;
        };
        if a.salt.as_ref().is_some_and(|s| s.len() > 64) {
            return PutOutcome::Error(KrpcError::new(207, "salt too big"));
        }
        let seq = a.seq.unwrap_or(0);
        if !verify_sig(&k, &sig, &sig_data(a.salt.as_deref(), seq, &v_bencoded)) {
            return PutOutcome::Drop;
        }
        let salt = a.salt.clone().unwrap_or_default();
        let target = mutable_target(&k, &salt);
        if let Some(prev) = self.lru.peek(&target).and_then(|p| p.mutable.as_ref()) {
            if a.cas.is_some_and(|cas| cas != prev.seq) {
                return PutOutcome::Error(KrpcError::new(301, "CAS mismatch, re-read and try again"));
            }
            if seq <= prev.seq {
                return PutOutcome::Error(KrpcError::new(302, "sequence number less than current"));
            }
        }
        self.lru.put(target, StoredItem { v_bencoded, mutable: Some(StoredMutable { k, sig, seq, salt }) });
        PutOutcome::Stored(target)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn token_accept_reject_rotation() {
        let mut t = Tokens::new();
        let a = t.generate(ip("10.0.0.1"));
        assert_eq!(a.len(), 20);
        assert!(t.validate(ip("10.0.0.1"), &a));
        assert!(!t.validate(ip("10.0.0.2"), &a), "tokens are bound to the IP");
        assert!(!t.validate(ip("10.0.0.1"), b"tok1"));
        // token = sha1("10.0.0.1" ‖ secret)
        let mut h = Sha1::new();
        h.update(b"10.0.0.1");
        h.update(t.secrets[0]);
        assert_eq!(<[u8; 20]>::from(h.finalize()), a);
        t.rotate();
        assert!(t.validate(ip("10.0.0.1"), &a), "previous secret still accepted");
        assert_ne!(t.generate(ip("10.0.0.1")), a);
        t.rotate();
        assert!(!t.validate(ip("10.0.0.1"), &a), "two rotations later the token is dead");
    }

    #[test]
    fn peer_store_expiry() {
        let mut s = PeerStore::new(100, Duration::from_millis(200));
        let t0 = Instant::now();
        let p = SocketAddr::new(ip("127.0.0.1"), 1337);
        assert_eq!(s.add(b"svc", p, t0), AddPeer::Added);
        assert_eq!(s.add(b"svc", p, t0), AddPeer::Refreshed);
        assert_eq!(s.get(b"svc", 100, t0 + Duration::from_millis(199)), vec![p]);
        assert!(s.get(b"svc", 100, t0 + Duration::from_millis(200)).is_empty());
        // refresh extends the life
        s.add(b"svc", p, t0 + Duration::from_millis(150));
        assert_eq!(s.get(b"svc", 100, t0 + Duration::from_millis(300)), vec![p]);
        s.sweep(t0 + Duration::from_millis(400));
        assert!(s.is_empty());
        assert_eq!(s.keys(), 0);
        // max_age 0: never expires
        let mut s = PeerStore::new(100, Duration::ZERO);
        s.add(b"x", p, t0);
        assert_eq!(s.get(b"x", 10, t0 + Duration::from_secs(1_000_000)), vec![p]);
    }

    #[test]
    fn peer_store_is_bounded() {
        let mut s = PeerStore::new(3, Duration::from_secs(10));
        let t0 = Instant::now();
        for port in 1..=3 {
            assert_eq!(s.add(b"a", SocketAddr::new(ip("1.2.3.4"), port), t0), AddPeer::Added);
        }
        assert_eq!(s.add(b"b", SocketAddr::new(ip("1.2.3.4"), 9), t0), AddPeer::Full);
        assert_eq!(s.add(b"a", SocketAddr::new(ip("1.2.3.4"), 2), t0), AddPeer::Refreshed);
        assert_eq!(s.len(), 3);
        // once they expire, room is made
        assert_eq!(s.add(b"b", SocketAddr::new(ip("1.2.3.4"), 9), t0 + Duration::from_secs(11)), AddPeer::Added);
        assert_eq!(s.len(), 1);
        assert!(s.get(b"a", 10, t0).is_empty(), "expired records were swept");
        let mut s = PeerStore::new(10, Duration::ZERO);
        for port in 1..=5 {
            s.add(b"a", SocketAddr::new(ip("1.2.3.4"), port), t0);
        }
        assert_eq!(s.get(b"a", 2, t0).len(), 2, "limit is honoured");
    }

    #[test]
    fn peer_store_bounds_keys_bytes_and_sources() {
        let t0 = Instant::now();
        let limits = PeerStoreLimits { max_key_len: 8, max_bytes: 1000, max_per_source: 3 };
        let mut s = PeerStore::with_limits(1000, Duration::from_secs(10), limits);
        let a = |port| SocketAddr::new(ip("1.2.3.4"), port);
        let b = |port| SocketAddr::new(ip("5.6.7.8"), port);
        assert_eq!(s.add(b"123456789", a(1), t0), AddPeer::KeyTooLong);
        assert_eq!(s.add(b"12345678", a(1), t0), AddPeer::Added);
        // Three records per source address.
        assert_eq!(s.add(b"k2", a(2), t0), AddPeer::Added);
        assert_eq!(s.add(b"k3", a(3), t0), AddPeer::Added);
        assert_eq!(s.add(b"k4", a(4), t0), AddPeer::Full);
        assert_eq!(s.add(b"k2", a(2), t0), AddPeer::Refreshed, "refreshes still work");
        // Bytes: 3 keys and 3 records so far.
        assert_eq!(s.bytes(), (8 + 2 + 2) + 3 * KEY_OVERHEAD + 3 * RECORD_BYTES);
        let mut added = 0;
        for port in 0..100 {
            let addr = SocketAddr::new(IpAddr::from(std::net::Ipv4Addr::from(0x0A00_0000 + port)), 1);
            match s.add(b"shared", addr, t0) {
                AddPeer::Added => added += 1,
                other => {
                    assert_eq!(other, AddPeer::Full);
                    break;
                }
            }
        }
        assert!(s.bytes() <= 1000, "{}", s.bytes());
        assert!(added > 0 && added < 100, "{added}");
        assert_eq!(s.add(b"k5", b(1), t0), AddPeer::Full, "over the byte budget");
        // Everything expires; the budget and the per-source counts are given back.
        s.sweep(t0 + Duration::from_secs(11));
        assert!(s.is_empty());
        assert_eq!(s.add(b"k5", b(1), t0 + Duration::from_secs(11)), AddPeer::Added);
        assert_eq!(s.len(), 1);
        assert_eq!(s.bytes(), 2 + KEY_OVERHEAD + RECORD_BYTES);
        assert_eq!(s.add(b"k6", a(6), t0 + Duration::from_secs(11)), AddPeer::Added);
    }

    #[test]
    fn expiry_queue_moves_refreshed_records_back_and_does_bounded_work() {
        let t0 = Instant::now();
        let age = Duration::from_secs(10);
        let mut s = PeerStore::new(1000, age);
        let p = |port| SocketAddr::new(ip("1.2.3.4"), port);
        for port in 1..=100 {
            s.add(b"svc", p(port), t0);
        }
        // Port 1 is refreshed at t0+5: it outlives the others.
        s.add(b"svc", p(1), t0 + Duration::from_secs(5));
        s.sweep(t0 + Duration::from_secs(11));
        assert_eq!(s.len(), 1);
        assert_eq!(s.get(b"svc", 10, t0 + Duration::from_secs(11)), vec![p(1)]);
        s.sweep(t0 + Duration::from_secs(16));
        assert!(s.is_empty());
        assert_eq!((s.keys(), s.bytes()), (0, 0));
        // A new record takes at most a few expired ones off the queue, not all of them.
        for port in 1..=100 {
            s.add(b"svc", p(port), t0);
        }
        s.add(b"other", p(1), t0 + Duration::from_secs(20));
        assert!(s.len() > 80, "{}", s.len());
    }

    fn signed(key: &SigningKey, v: &[u8], seq: i64, salt: Option<&[u8]>, cas: Option<i64>) -> PutArgs {
        let v = Value::Bytes(v.to_vec());
        let sig = key.sign(&sig_data(salt, seq, &v.encode()));
        PutArgs {
            token: Some(b"x".to_vec()),
            v: Some(v),
            k: Some(key.verifying_key().to_bytes().to_vec()),
            sig: Some(sig.to_bytes().to_vec()),
            seq: Some(seq),
            salt: salt.map(<[u8]>::to_vec),
            cas,
        }
    }

    #[test]
    fn bep44_immutable_and_size() {
        let mut s = ValueStore::new(10);
        let a = PutArgs { v: Some(Value::Bytes(b"hello world".to_vec())), ..Default::default() };
        let target = match s.apply_put(&a) {
            PutOutcome::Stored(t) => t,
            o => panic!("{o:?}"),
        };
        assert_eq!(hex::encode(target), "6d33adc2b6b2c14c3036feefb7fedbca1a880527");
        assert_eq!(s.get(&target).unwrap().v_bencoded, b"11:hello world");
        let ok = PutArgs { v: Some(Value::Bytes(vec![b'a'; 1000])), ..Default::default() };
        assert!(matches!(s.apply_put(&ok), PutOutcome::Stored(_)));
        let big = PutArgs { v: Some(Value::Bytes(vec![b'a'; 1001])), ..Default::default() };
        assert_eq!(s.apply_put(&big), PutOutcome::Error(KrpcError::new(205, "data payload too large")));
        assert_eq!(s.apply_put(&PutArgs::default()), PutOutcome::Drop);
    }

    #[test]
    fn bep44_signature_seq_cas_salt() {
        let key = SigningKey::from_bytes(&[42u8; 32]);
        let k = key.verifying_key().to_bytes();
        let mut s = ValueStore::new(10);
        let t1 = match s.apply_put(&signed(&key, b"v1", 1, None, None)) {
            PutOutcome::Stored(t) => t,
            o => panic!("{o:?}"),
        };
        assert_eq!(t1, sha1(&k));
        // bad signature: silently dropped, nothing changes
        let mut bad = signed(&key, b"v2", 2, None, None);
        bad.v = Some(Value::Bytes(b"tampered".to_vec()));
        assert_eq!(s.apply_put(&bad), PutOutcome::Drop);
        assert_eq!(s.get(&t1).unwrap().v_bencoded, b"2:v1");
        // seq not above current: 302
        assert_eq!(
            s.apply_put(&signed(&key, b"v1b", 1, None, None)),
            PutOutcome::Error(KrpcError::new(302, "sequence number less than current"))
        );
        // cas mismatch: 301
        assert_eq!(
            s.apply_put(&signed(&key, b"v2", 2, None, Some(5))),
            PutOutcome::Error(KrpcError::new(301, "CAS mismatch, re-read and try again"))
        );
        // cas match: stored
        assert_eq!(s.apply_put(&signed(&key, b"v2", 2, None, Some(1))), PutOutcome::Stored(t1));
        assert_eq!(s.get(&t1).unwrap().mutable.as_ref().unwrap().seq, 2);
        // salt: a different target, sha1(k ‖ salt); the signature covers the salt
        let ts = match s.apply_put(&signed(&key, b"salted", 1, Some(b"mysalt"), None)) {
            PutOutcome::Stored(t) => t,
            o => panic!("{o:?}"),
        };
        let mut ks = k.to_vec();
        ks.extend_from_slice(b"mysalt");
        assert_eq!(ts, sha1(&ks));
        let mut wrong_salt = signed(&key, b"salted2", 2, Some(b"mysalt"), None);
        wrong_salt.salt = Some(b"other".to_vec());
        assert_eq!(s.apply_put(&wrong_salt), PutOutcome::Drop);
        let too_long = signed(&key, b"x", 1, Some(&[1u8; 65]), None);
        assert!(matches!(s.apply_put(&too_long), PutOutcome::Error(KrpcError { code: 207, .. })));
        // k without sig: dropped
        let mut nosig = signed(&key, b"v9", 9, None, None);
        nosig.sig = None;
        assert_eq!(s.apply_put(&nosig), PutOutcome::Drop);
    }

    #[test]
    fn sig_data_layout() {
        assert_eq!(sig_data(Some(b"foobar"), 1, b"12:Hello World!"), b"4:salt6:foobar3:seqi1e1:v12:Hello World!");
        assert_eq!(sig_data(None, 1, b"12:Hello World!"), b"3:seqi1e1:v12:Hello World!");
    }

    #[test]
    fn bep44_test_vector() {
        // BEP44 test vector 1 (mutable, no salt): the published signature verifies, and the
        // target is sha1(k).
        let k: [u8; 32] = hex::decode("77ff84905a91936367c01360803104f92432fcd904a43511876df5cdf3e7e548").unwrap().try_into().unwrap();
        let sig: [u8; 64] = hex::decode(
            "305ac8aeb6c9c151fa120f120ea2cfb923564e11552d06a5d856091e5e853cff1260d3f39e4999684aa92eb73ffd136e6f4f3ecbfda0ce53a1608ecd7ae21f01",
        )
        .unwrap()
        .try_into()
        .unwrap();
        assert!(verify_sig(&k, &sig, &sig_data(None, 1, b"12:Hello World!")));
        assert!(!verify_sig(&k, &sig, &sig_data(None, 2, b"12:Hello World!")));
        assert_eq!(hex::encode(mutable_target(&k, b"")), "4a533d47ec9c7d95b1ad75f576cffc641853b750");
    }
}
