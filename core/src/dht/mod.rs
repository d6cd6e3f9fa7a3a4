//! The KRPC DHT node, wire-compatible with `bittorrent-dht` 10.0.0 as run by Node Grapes.
//!
//! CONTRACT (used by `grape`): the public API of [`Dht`] below.
//!
//! Layout: [`bencode`] (codec), [`krpc`] (typed messages and their wire form), [`routing`] (XOR
//! distance incl. k-bucket's unequal-length rule, routing table), [`store`] (tokens, peer store,
//! BEP44 store and signature helpers) and `node` (socket loop, walks, announce/lookup/put/get,
//! maintenance).
//!
//! Semantics worth knowing (see also the method docs):
//! * Info-hashes are any byte string (Grenache uses the raw service name).
//! * [`Dht::lookup`] returns the peers of the own store **and** those found on the network
//!   (without duplicates) and emits [`DhtEvent::Peer`] for each. [`Dht::local_peers`] reads
//!   only the own store.
//! * Peer records expire exactly `peer_max_age` after their last announce (0 = never).
//! * KRPC errors from remote nodes map to [`ErrorKind::SeqTooLow`]
//!   (302), [`ErrorKind::CasMismatch`] (301) and
//!   [`ErrorKind::Dht`] (others); the message is `"<code> <text>"` as
//!   bittorrent-dht reports it, e.g. `"302 sequence number less than current"`. As in the
//!   reference, announce/put only surface 3xx errors, and only when no node succeeded; other
//!   failures give `AllQueriesFailed`.
//!
//! Deliberate departures from bittorrent-dht 10 (none affects what a Node Grape sees as valid):
//! * Malformed datagrams (the §4.5 crash inputs, fields of the wrong type, ports out of range)
//!   are dropped with a [`DhtEvent::Warning`]; the node never panics.
//! * `nodes` replies carry the 20 closest nodes (the reference sends its whole table) and
//!   `values` at most 256 random peers, so datagrams stay small.
//! * Mutable BEP44 items are verified with ed25519 (stock Grape 1.0.0 answers 400 instead);
//!   a salt over 64 bytes gets error 207.
//! * Peer records expire exactly at `peer_max_age` (record-cache: 0.67x-1.33x). The store is
//!   bounded by `max_peers` over all keys; when full, new records get error 202.
//! * BEP43 `ro=1` senders are not added to the routing table.
//! * Distances to targets of unequal length follow k-bucket's rule but compare exactly (k-bucket
//!   folds them into a double); ties are broken by node id.

pub mod bencode;
mod heal;
mod heal_tasks;
pub mod krpc;
pub mod limits;
mod node;
pub mod routing;
#[cfg(any(test, feature = "sim"))]
pub mod sim;
#[cfg(any(test, feature = "sim"))]
mod simnet;
pub mod store;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use crate::error::{Error, ErrorKind, Result};

#[doc(hidden)]
pub use node::{FUZZ_TOKEN_PLACEHOLDER, answer_datagrams};

/// Configuration of a DHT node. Defaults are the Grape's documented ones.
#[derive(Debug, Clone)]
pub struct DhtConfig {
    /// UDP bind address. Default `0.0.0.0:20001`; use port 0 in tests. An IPv6 address makes an
    /// IPv6-only node (BEP 32 `nodes6`, 18-byte peers); see [`DhtConfig::bind6`] for dual-stack.
    pub bind: SocketAddr,
    /// A second, IPv6-only UDP socket for a dual-stack node (BEP 32), when `bind` is IPv4: the
    /// node keeps a routing table per address family under one id, answers `want`, and its
    /// lookups search both families. Port 0 takes the IPv4 socket's port when it is free. Default
    /// `None` (IPv4 only); the Grape sets `[::]` by default (see `GrapeConfig::dht_ipv6`).
    pub bind6: Option<SocketAddr>,
    /// When `bind6` cannot be bound (a host without IPv6), start IPv4-only with a log line
    /// instead of failing. Default `false`.
    pub bind6_optional: bool,
    /// On a dual-stack node, announces go over IPv6 too, so the host's IPv6 address is stored
    /// besides its IPv4 one (for services that listen on IPv6). Default `false`: announces go
    /// over IPv4 only, as on an IPv4 node, since most services listen on IPv4. An IPv6-only node
    /// always announces over IPv6.
    pub announce6: bool,
    /// Bootstrap nodes as `"host:port"`.
    pub bootstrap: Vec<String>,
    /// How long an announced peer is kept (`dht_peer_maxAge`). Default 120 s.
    pub peer_max_age: Duration,
    /// Upper bound on stored peers, over all keys. Default 1 000 000 (the Node reference caps at
    /// 10 000; a record costs ~24 bytes plus ~100 bytes per key). When full, new records are refused.
    pub max_peers: usize,
    /// LRU size of per-target closest-node tables (`dht_maxTables`). Default 5000.
    pub max_tables: usize,
    /// LRU size of the BEP44 value store (`dht_maxValues`). Default 5000.
    pub max_values: usize,
    /// Routing-table liveness period (`dht_nodeLiveness`). Default 5 min.
    pub node_liveness: Duration,
    /// KRPC query timeout. Default 2 s.
    pub query_timeout: Duration,
    /// Queries in flight per iterative lookup. Default 16.
    pub concurrency: usize,
    /// When set, an announce also stores `host:port` in this node's own peer store (the Grape's
    /// `host`), in the store of the half of its address family.
    pub self_host: Option<std::net::IpAddr>,
    /// Limits per source address and the peer store's bounds in bytes (see [`limits::DhtLimits`]).
    pub limits: limits::DhtLimits,
    /// This node's id; `None` picks a random one (what the reference does at every start). A
    /// restarted node keeps its id (see [`DhtState`]) so that the entries other nodes hold for it
    /// stay valid.
    pub id: Option<[u8; 20]>,
    /// Nodes known from an earlier run ([`DhtState::nodes`]). They go into the routing table at
    /// once, so lookups work before any bootstrap node answers, and are pinged at start: those
    /// that do not answer are dropped.
    pub saved_nodes: Vec<krpc::NodeInfo>,
    /// Most maintenance queries per second (bucket refresh walks, retries of nodes that went
    /// silent). Default 10. Queries made for announce/lookup/put/get are not counted. 0 turns the
    /// self-healing maintenance off (the reference's behaviour: no refresh, no retries; saved
    /// nodes are still checked).
    pub maintenance_rate: u32,
    /// Once the routing table is healthy, a bucket is refreshed (a lookup of a random id in it)
    /// when none of its nodes was heard from for this long. Default 15 min (BEP 5).
    pub refresh_interval: Duration,
}

impl Default for DhtConfig {
    /// The Grape's documented defaults: bind `0.0.0.0:20001`, no bootstrap, peer max age 120 s,
    /// 1 000 000 peers, 5000 tables, 5000 values, liveness 5 min, query timeout 2 s,
    /// concurrency 16, no self host.
    fn default() -> Self {
        DhtConfig {
            bind: SocketAddr::from(([0, 0, 0, 0], 20001)),
            bind6: None,
            bind6_optional: false,
            announce6: false,
            bootstrap: Vec::new(),
            peer_max_age: Duration::from_secs(120),
            max_peers: 1_000_000,
            max_tables: 5000,
            max_values: 5000,
            node_liveness: Duration::from_secs(300),
            query_timeout: Duration::from_secs(2),
            concurrency: 16,
            self_host: None,
            limits: limits::DhtLimits::default(),
            id: None,
            saved_nodes: Vec::new(),
            maintenance_rate: 10,
            refresh_interval: Duration::from_secs(15 * 60),
        }
    }
}

/// An event from the DHT node (the Grape re-emits these).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum DhtEvent {
    /// The UDP socket is bound. Sent from inside [`Dht::bind`], i.e. before anyone can
    /// subscribe; use [`Dht::local_addr`] instead.
    Listening(SocketAddr),
    /// The bootstrap walk finished, both walks on a dual-stack node (fires even if every
    /// bootstrap node was unreachable, after the query timeout; at once with no bootstrap nodes,
    /// possibly before a subscriber exists: prefer [`Dht::ready`] / [`Dht::is_ready`]). Fires
    /// once.
    Ready,
    /// A new node was added to the routing table (from a query or reply carrying a 20-byte id,
    /// not sent with BEP43 `ro=1`).
    Node(SocketAddr),
    /// A malformed or unexpected datagram was dropped (bad bencode, wrong shape, unknown or
    /// short transaction id, reply from the wrong IP), or a UDP error. The text is for logs.
    Warning(String),
    /// A peer was stored (or refreshed) in this node's peer store for `info_hash`: a remote
    /// `announce_peer` was accepted, or this node announced with `self_host` set.
    Announce {
        /// The raw info-hash bytes (a Grenache service name's UTF-8 bytes).
        info_hash: Vec<u8>,
        /// The stored peer.
        peer: SocketAddr,
    },
    /// A peer was removed from this node's peer store by its announcer (`unannounce_peer`), or
    /// this node unannounced it ([`Dht::unannounce`]).
    Unannounce {
        /// The raw info-hash bytes.
        info_hash: Vec<u8>,
        /// The removed peer.
        peer: SocketAddr,
    },
    /// A lookup found a peer (from the own store or a remote `values` reply). Each peer is
    /// reported at most once per lookup, when the lookup ends (without the peers it learnt were
    /// unannounced); merged identical lookups report it once in total.
    Peer {
        /// The raw info-hash bytes.
        info_hash: Vec<u8>,
        /// The peer found.
        peer: SocketAddr,
    },
}

/// Traffic counters of a [`Dht`] (see [`Dht::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DhtStats {
    /// KRPC queries sent, for any reason.
    pub queries_sent: u64,
    /// Of those, queries sent by the routing-table maintenance (refresh walks, retries of silent
    /// and bootstrap nodes, checks of saved nodes, liveness pings).
    pub maintenance_queries: u64,
    /// Replies (and KRPC errors) sent to queries from other nodes.
    pub replies_sent: u64,
    /// Nodes ever added to the routing table.
    pub nodes_added: u64,
    /// `unannounce_peer` queries that removed a record.
    pub unannounces_applied: u64,
    /// `unannounce_peer` queries with a valid token for which no record of the sender's address
    /// was held (acknowledged, nothing removed).
    pub unannounces_unknown: u64,
    /// `unannounce_peer` queries refused: no or a bad token (a source that did not get its token
    /// from us at that address), a bad port, no info-hash.
    pub unannounces_refused: u64,
    /// Tombstones held (records unannounced lately, see [`Dht::unannounce`]).
    pub tombstones: u64,
}

/// What [`Dht::unannounce`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Unannounced {
    /// Nodes that acknowledged the `unannounce_peer` (ours; Node Grapes never answer it).
    pub acks: usize,
    /// The records removed, as the answering nodes saw this node's address (plus `self_host`'s).
    pub removed: Vec<SocketAddr>,
}

/// What a node saves to rejoin quickly after a restart: its id and the good nodes of its routing
/// table. [`DhtState::to_json`]/[`DhtState::from_json`] give the file format the Grape's
/// `dht_state` option uses:
/// `{"version":1,"id":"<40 hex>","nodes":[{"id":"<40 hex>","addr":"ip:port"},...]}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhtState {
    /// The node's id.
    pub id: [u8; 20],
    /// Good nodes, most recently seen first.
    pub nodes: Vec<krpc::NodeInfo>,
}

impl DhtState {
    /// Most nodes saved (and loaded).
    pub const MAX_NODES: usize = 200;
    /// Largest state file read, in bytes.
    pub const MAX_BYTES: usize = 256 * 1024;

    /// The JSON form.
    pub fn to_json(&self) -> String {
        let nodes: Vec<serde_json::Value> = self
            .nodes
            .iter()
            .take(Self::MAX_NODES)
            .map(|n| serde_json::json!({"id": hex::encode(n.id), "addr": n.addr.to_string()}))
            .collect();
        serde_json::json!({"version": 1, "id": hex::encode(self.id), "nodes": nodes}).to_string()
    }

    /// Parses the JSON form. Errors: `InvalidArgument` naming what is wrong (not JSON, another
    /// version, a bad id or address, too large). Nodes past [`DhtState::MAX_NODES`] are ignored.
    pub fn from_json(text: &str) -> Result<DhtState> {
        if text.len() > Self::MAX_BYTES {
            return Err(Error::invalid(format!("DHT state is larger than {} bytes", Self::MAX_BYTES)));
        }
        let v: serde_json::Value = serde_json::from_str(text).map_err(|e| Error::invalid(format!("DHT state is not JSON: {e}")))?;
        if v.get("version").and_then(serde_json::Value::as_u64) != Some(1) {
            return Err(Error::invalid("DHT state: unknown version (expected 1)"));
        }
        let id20 = |v: Option<&serde_json::Value>, what: &str| -> Result<[u8; 20]> {
            v.and_then(serde_json::Value::as_str)
                .and_then(|s| hex::decode(s).ok())
                .and_then(|b| <[u8; 20]>::try_from(b.as_slice()).ok())
                .ok_or_else(|| Error::invalid(format!("DHT state: {what} is not 40 hex characters")))
        };
        let id = id20(v.get("id"), "id")?;
        let mut nodes = Vec::new();
        let list = v.get("nodes").and_then(serde_json::Value::as_array).ok_or_else(|| Error::invalid("DHT state: no nodes list"))?;
        for n in list.iter().take(Self::MAX_NODES) {
            let nid = id20(n.get("id"), "a node id")?;
            let addr: SocketAddr = n
                .get("addr")
                .and_then(serde_json::Value::as_str)
                .and_then(|a| a.parse().ok())
                .ok_or_else(|| Error::invalid("DHT state: a node address is not ip:port or [ipv6]:port"))?;
            nodes.push(krpc::NodeInfo { id: nid, addr });
        }
        Ok(DhtState { id, nodes })
    }
}

/// A BEP44 item to put.
#[derive(Debug, Clone)]
pub enum PutItem {
    /// An immutable value: the bencoded `v` (target = SHA-1 of these bytes).
    Immutable {
        /// `bencode(v)`.
        v_bencoded: Vec<u8>,
    },
    /// A signed mutable value.
    Mutable {
        /// `bencode(v)`.
        v_bencoded: Vec<u8>,
        /// ed25519 public key.
        k: [u8; 32],
        /// ed25519 signature over `4:salt<n>:<salt>3:seqi<seq>e1:v<bencoded v>` (salt part only when non-empty).
        sig: [u8; 64],
        /// Sequence number.
        seq: i64,
        /// Optional salt (at most 64 bytes).
        salt: Option<Vec<u8>>,
        /// Optional compare-and-swap on the stored seq.
        cas: Option<i64>,
    },
}

/// A BEP44 item read back.
#[derive(Debug, Clone, PartialEq)]
pub struct GetResult {
    /// Id of the node that answered (own id when served from the local store).
    pub id: [u8; 20],
    /// The token that node handed out, if any.
    pub token: Option<Vec<u8>>,
    /// `bencode(v)`.
    pub v_bencoded: Vec<u8>,
    /// For mutable items: key, signature, seq.
    pub mutable: Option<MutableMeta>,
    /// True when the item came from this node's own store.
    pub local: bool,
}

/// Mutable-item fields of a [`GetResult`].
#[derive(Debug, Clone, PartialEq)]
pub struct MutableMeta {
    /// Public key.
    pub k: [u8; 32],
    /// Signature.
    pub sig: [u8; 64],
    /// Sequence number.
    pub seq: i64,
}

/// A running DHT node. Cheap to clone; every clone drives the same node.
///
/// A dual-stack node ([`DhtConfig::bind6`]) is two halves with one id, one per address family,
/// each with its socket, routing table and peer store (BEP 32); the methods below drive both.
///
/// The node stops when [`Dht::shutdown`] is called or when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct Dht {
    inner: Arc<node::Inner>,
    inner6: Option<Arc<node::Inner>>,
    _guard: Arc<DropGuard>,
}

/// Cancels the node when the last [`Dht`] handle goes away.
#[derive(Debug)]
struct DropGuard(Vec<tokio_util::sync::CancellationToken>);

impl Drop for DropGuard {
    fn drop(&mut self) {
        for t in &self.0 {
            t.cancel();
        }
    }
}

/// Merges two lists of peers, without duplicates, in order.
fn merge(mut a: Vec<SocketAddr>, b: Vec<SocketAddr>) -> Vec<SocketAddr> {
    for p in b {
        if !a.contains(&p) {
            a.push(p);
        }
    }
    a
}

impl Dht {
    /// Binds the UDP socket(s) and starts the node (and its bootstrap walk).
    ///
    /// Emits [`DhtEvent::Listening`] (before any subscriber can exist, so in practice only
    /// [`Dht::local_addr`] is useful), then [`DhtEvent::Ready`] once the bootstrap walk ends.
    /// Errors: `Io` when a socket cannot be bound (`bind6` only when not `bind6_optional`),
    /// `InvalidArgument` for a `bind6` that is not IPv6 or beside an IPv6 `bind`.
    pub async fn bind(config: DhtConfig) -> Result<Dht> {
        if let Some(b6) = config.bind6
            && (!b6.is_ipv6() || config.bind.is_ipv6())
        {
            return Err(Error::invalid(format!("bind6 {b6} must be an IPv6 address beside an IPv4 bind (bind is {})", config.bind)));
        }
        let sock = node::bind_udp(config.bind)?;
        let port = sock.local_addr()?.port();
        let mut sock6 = None;
        if let Some(b6) = config.bind6 {
            let mut tries = vec![b6];
            if b6.port() == 0 {
                tries.insert(0, SocketAddr::new(b6.ip(), port));
            }
            let mut last = None;
            for addr in tries {
                match node::bind_udp(addr) {
                    Ok(s) => {
                        sock6 = Some(s);
                        break;
                    }
                    Err(e) => last = Some((addr, e)),
                }
            }
            if let (None, Some((addr, e))) = (&sock6, last) {
                if !config.bind6_optional {
                    return Err(Error::new(ErrorKind::Io, format!("cannot bind the IPv6 DHT socket {addr}: {e}")));
                }
                tracing::info!(addr = %addr, error = %e, "no IPv6 on this host: the DHT runs on IPv4 only");
            }
        }
        let (events, _) = tokio::sync::broadcast::channel(node::EVENTS);
        let dual = sock6.is_some();
        let inner = node::Inner::new(config.clone(), node::Transport::Udp(sock), events.clone(), !dual)?;
        let mut inner6 = None;
        if let Some(s6) = sock6 {
            let cfg = DhtConfig { bind: s6.local_addr()?, id: Some(inner.id), ..config.clone() };
            let half = node::Inner::new(cfg, node::Transport::Udp(s6), events.clone(), false)?;
            let _ = half.sibling.set(Arc::downgrade(&inner));
            let _ = inner.sibling.set(Arc::downgrade(&half));
            inner6 = Some(half);
        }
        inner.run();
        if let Some(half) = &inner6 {
            half.run();
            // Ready once, when both bootstrap walks have ended (what `is_ready` says).
            let (mut r4, mut r6) = (inner.ready.subscribe(), half.ready.subscribe());
            let (cancel, events) = (inner.cancel.clone(), events.clone());
            tokio::spawn(async move {
                let both = async {
                    let _ = r4.wait_for(|r| *r).await;
                    let _ = r6.wait_for(|r| *r).await;
                };
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    _ = both => {
                        if !cancel.is_cancelled() {
                            let _ = events.send(DhtEvent::Ready);
                        }
                    }
                }
            });
        }
        let mut tokens = vec![inner.cancel.clone()];
        tokens.extend(inner6.iter().map(|i| i.cancel.clone()));
        Ok(Dht { inner, inner6, _guard: Arc::new(DropGuard(tokens)) })
    }

    /// Both halves (the IPv6 one second, when there is one).
    fn halves(&self) -> impl Iterator<Item = &Arc<node::Inner>> {
        std::iter::once(&self.inner).chain(self.inner6.as_ref())
    }

    /// The half of `addr`'s family, if this node has one.
    fn half_for(&self, addr: SocketAddr) -> Option<&Arc<node::Inner>> {
        self.halves().find(|h| h.is_v6() == addr.is_ipv6())
    }

    /// The bound UDP address (the IPv4 one on a dual-stack node).
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }
    /// The bound IPv6 UDP address of a dual-stack node; `None` on a node of one family.
    pub fn local_addr6(&self) -> Option<SocketAddr> {
        self.inner6.as_ref().map(|i| i.local_addr)
    }
    /// How many queries were dropped unanswered because their source address was over its rate
    /// ([`limits::DhtLimits::queries_per_second`]).
    pub fn refused_queries(&self) -> u64 {
        self.halves().map(|h| h.refused_queries()).sum()
    }
    /// This node's 20-byte id.
    pub fn id(&self) -> [u8; 20] {
        self.inner.id
    }
    /// Subscribes to events (a broadcast channel of 1024; slow receivers see `Lagged`).
    pub fn events(&self) -> tokio::sync::broadcast::Receiver<DhtEvent> {
        self.inner.events.subscribe()
    }
    /// Resolves once the bootstrap walk has finished (at once if it already has, or after shutdown).
    pub async fn ready(&self) {
        for h in self.halves() {
            let mut rx = h.ready.subscribe();
            let _ = rx.wait_for(|r| *r).await;
        }
    }
    /// True once the bootstrap walk has finished.
    pub fn is_ready(&self) -> bool {
        self.halves().all(|h| *h.ready.borrow())
    }

    async fn guarded<T>(&self, fut: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        if self.inner.cancel.is_cancelled() {
            return Err(Error::new(ErrorKind::Cancelled, "DHT node is shut down"));
        }
        tokio::select! {
            _ = self.inner.cancel.cancelled() => Err(Error::new(ErrorKind::Cancelled, "DHT node is shut down")),
            r = fut => r,
        }
    }

    /// The halves an announce goes through: the first, and the IPv6 one with `announce6`.
    fn announcers(&self) -> Vec<&Arc<node::Inner>> {
        let mut out = vec![&self.inner];
        if self.inner.config.announce6
            && let Some(h) = &self.inner6
        {
            out.push(h);
        }
        out
    }

    /// Announces `port` for `info_hash` to every token-holding node found by a lookup.
    /// Returns how many nodes acknowledged. Errors: NoNodes, AllQueriesFailed, or a KRPC 3xx.
    ///
    /// Like bittorrent-dht, the lookup's table of token-holding nodes is cached per info-hash for
    /// 5 minutes (LRU of `max_tables`), so repeated announces do not walk again. With
    /// `self_host` set, the peer `self_host:port` is also stored locally (and
    /// [`DhtEvent::Announce`] fires) even when the network part fails. Port 0 is
    /// `InvalidArgument` (the Grape replaces 0 by its DHT port before calling this).
    ///
    /// On a dual-stack node the announce goes over IPv4, and over IPv6 too with
    /// [`DhtConfig::announce6`]; it succeeds when one family does (the counts add up). When the
    /// IPv4 half knows no node at all (`NoNodes`: a host with IPv6 only), it goes over IPv6.
    pub async fn announce(&self, info_hash: &[u8], port: u16) -> Result<usize> {
        let all = self.announcers().into_iter().map(|h| h.announce(info_hash, port));
        let mut results = self.guarded(async { Ok(futures_util::future::join_all(all).await) }).await?;
        // IPv4 reaches nobody at all (a host with IPv6 only): announce over IPv6 instead.
        if let ([Err(e)], Some(h6)) = (results.as_slice(), &self.inner6)
            && e.kind() == ErrorKind::NoNodes
        {
            results = vec![self.guarded(h6.announce(info_hash, port)).await];
        }
        let mut out: Option<Result<usize>> = None;
        for r in results {
            out = Some(match (out, r) {
                (None, r) => r,
                (Some(Ok(a)), Ok(b)) => Ok(a + b),
                (Some(Ok(a)), Err(_)) | (Some(Err(_)), Ok(a)) => Ok(a),
                (Some(Err(e)), Err(_)) => Err(e),
            });
        }
        out.unwrap_or_else(|| Err(Error::new(ErrorKind::NoNodes, "No nodes to query")))
    }
    /// Removes `port` under `info_hash` from the nodes that hold it, at once: sends our
    /// `unannounce_peer` to every token-holding node of a lookup (those an announce reaches),
    /// with the token each handed out. A node removes only the record of the query's source IP
    /// and that port, so only the address that announced a record can remove it (the same proof
    /// as the announce). Node Grapes do not know the message and keep the record until it
    /// expires; our nodes also report it in `get_peers` replies (`r.gone`) so that lookups drop
    /// it even where a Node Grape still returns it.
    ///
    /// Waits at most 1 s for acknowledgements. Errors: NoNodes (nobody to tell), InvalidArgument
    /// (port 0, name too long). On a dual-stack node it goes where [`Dht::announce`] goes.
    pub async fn unannounce(&self, info_hash: &[u8], port: u16) -> Result<Unannounced> {
        let all = self.announcers().into_iter().map(|h| h.unannounce(info_hash, port));
        let results = self.guarded(async { Ok(futures_util::future::join_all(all).await) }).await?;
        let mut out: Option<Result<Unannounced>> = None;
        for r in results {
            out = Some(match (out, r) {
                (None, r) => r,
                (Some(Ok(mut a)), Ok(b)) => {
                    a.acks += b.acks;
                    a.removed = merge(a.removed, b.removed);
                    Ok(a)
                }
                (Some(Ok(a)), Err(_)) | (Some(Err(_)), Ok(a)) => Ok(a),
                (Some(Err(e)), Err(_)) => Err(e),
            });
        }
        out.unwrap_or_else(|| Err(Error::new(ErrorKind::NoNodes, "No nodes to query")))
    }
    /// Peers of `info_hash` unannounced lately (this node's tombstones).
    pub fn tombstones(&self, info_hash: &[u8]) -> Vec<SocketAddr> {
        self.halves().fold(Vec::new(), |acc, h| merge(acc, h.state().tombstones.get(info_hash, Instant::now())))
    }
    /// Iterative `get_peers`: the peers found (own store + network), without duplicates, minus
    /// those unannounced lately (see [`Dht::unannounce`]).
    ///
    /// Never fails for lack of nodes (an isolated node returns its own store). Identical
    /// lookups in flight are merged. Fires [`DhtEvent::Peer`] for each peer found. A dual-stack
    /// node searches both families at once and merges what they find.
    pub async fn lookup(&self, info_hash: &[u8]) -> Result<Vec<SocketAddr>> {
        Ok(self.lookup_with_gone(info_hash).await?.0)
    }
    /// Like [`Dht::lookup`], and also the peers the lookup learnt were unannounced (so that a
    /// cache of earlier results can drop them).
    pub async fn lookup_with_gone(&self, info_hash: &[u8]) -> Result<(Vec<SocketAddr>, Vec<SocketAddr>)> {
        self.guarded(async {
            let all = futures_util::future::join_all(self.halves().map(|h| h.lookup(info_hash))).await;
            let (mut peers, mut gone) = (Vec::new(), Vec::new());
            let mut first_err = None;
            let mut ok = false;
            for r in all {
                match r {
                    Ok(o) => {
                        ok = true;
                        peers = merge(peers, o.peers.clone());
                        gone = merge(gone, o.gone.clone());
                    }
                    Err(e) => {
                        first_err.get_or_insert(e);
                    }
                }
            }
            match first_err {
                Some(e) if !ok => Err(e),
                _ => Ok((peers, gone)),
            }
        })
        .await
    }
    /// The live peers of this node's own peer store for `info_hash` (no network), at most
    /// `limit`, in random order.
    pub fn local_peers(&self, info_hash: &[u8], limit: usize) -> Vec<SocketAddr> {
        let mut out = self.halves().fold(Vec::new(), |acc, h| merge(acc, h.state().peers.get(info_hash, limit, Instant::now())));
        out.truncate(limit);
        out
    }
    /// BEP44 put. Returns the 20-byte target and how many nodes stored it.
    ///
    /// Immutable values are also kept in the own store (even if the network put fails, as
    /// bittorrent-dht does); mutable ones are not. Errors: InvalidArgument (v not bencode,
    /// too large, salt > 64 bytes), NoNodes, AllQueriesFailed, SeqTooLow (302), CasMismatch (301).
    /// A dual-stack node puts over IPv4 first, then over IPv6 unless IPv4 refused the item for
    /// its sequence number (CasMismatch, SeqTooLow), so that the two families never hold
    /// different versions; it succeeds when one family stores it and neither refused it.
    pub async fn put(&self, item: PutItem) -> Result<([u8; 20], usize)> {
        let refused =
            |r: &Result<([u8; 20], usize)>| matches!(r, Err(e) if matches!(e.kind(), ErrorKind::CasMismatch | ErrorKind::SeqTooLow));
        let a = self.guarded(self.inner.put(item.clone())).await;
        let Some(h6) = &self.inner6 else { return a };
        if refused(&a) {
            return a;
        }
        let b = self.guarded(h6.put(item)).await;
        if refused(&b) {
            return b;
        }
        match (a, b) {
            (Ok((t, x)), Ok((_, y))) => Ok((t, x + y)),
            (Ok(r), Err(_)) | (Err(_), Ok(r)) => Ok(r),
            (Err(e), Err(_)) => Err(e),
        }
    }
    /// BEP44 get. `salt` is needed to verify salted mutable items; `use_local` consults the own store.
    ///
    /// Network replies are verified: immutable values must hash to `target` (the first match
    /// ends the walk); mutable ones need a valid signature and `SHA-1(k ‖ salt) == target`, and
    /// the highest `seq` wins. `Ok(None)` when nothing was found. A dual-stack node asks the
    /// IPv6 half when the IPv4 one found nothing.
    pub async fn get(&self, target: [u8; 20], salt: Option<&[u8]>, use_local: bool) -> Result<Option<GetResult>> {
        let r = self.guarded(self.inner.get(target, salt, use_local)).await;
        match (&r, &self.inner6) {
            (Ok(None), Some(h6)) => self.guarded(h6.get(target, salt, use_local)).await,
            _ => r,
        }
    }
    /// Adds a node to contact (like bittorrent-dht's `addNode`): it is pinged, and added to the
    /// routing table when it answers. An address of a family this node does not run is ignored.
    pub fn add_node(&self, addr: SocketAddr) {
        let addr = krpc::canonical(addr);
        let Some(inner) = self.half_for(addr).cloned() else { return };
        let cancel = inner.cancel.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = inner.query(addr, krpc::Method::Ping) => {}
            }
        });
    }
    /// Number of nodes in the routing table(s).
    pub fn node_count(&self) -> usize {
        self.halves().map(|h| h.state().table.len()).sum()
    }
    /// The routing tables' nodes (IPv4 first on a dual-stack node).
    pub fn nodes(&self) -> Vec<krpc::NodeInfo> {
        self.halves().flat_map(|h| h.state().table.all()).collect()
    }
    /// What a restart needs to rejoin without bootstrap nodes: this node's id and the good nodes
    /// of its routing table(s) (heard from within the last 15 minutes, most recently seen first,
    /// at most [`DhtState::MAX_NODES`]; a dual-stack node keeps up to half of them per family
    /// when both have that many).
    pub fn state_snapshot(&self) -> DhtState {
        let mut state = self.inner.state_snapshot();
        if let Some(h6) = &self.inner6 {
            let six = h6.state_snapshot().nodes;
            let keep4 = state.nodes.len().min(DhtState::MAX_NODES.saturating_sub(six.len().min(DhtState::MAX_NODES / 2)));
            state.nodes.truncate(keep4);
            let room = DhtState::MAX_NODES - state.nodes.len();
            state.nodes.extend(six.into_iter().take(room));
        }
        state
    }
    /// Traffic counters since the node started (both halves added up).
    pub fn stats(&self) -> DhtStats {
        self.halves().map(|h| h.stats()).fold(DhtStats::default(), |a, b| DhtStats {
            queries_sent: a.queries_sent + b.queries_sent,
            maintenance_queries: a.maintenance_queries + b.maintenance_queries,
            replies_sent: a.replies_sent + b.replies_sent,
            nodes_added: a.nodes_added + b.nodes_added,
            unannounces_applied: a.unannounces_applied + b.unannounces_applied,
            unannounces_unknown: a.unannounces_unknown + b.unannounces_unknown,
            unannounces_refused: a.unannounces_refused + b.unannounces_refused,
            tombstones: a.tombstones + b.tombstones,
        })
    }
    /// Stops the node and frees the UDP port(s). Pending operations fail with `Cancelled`.
    pub async fn shutdown(&self) {
        // The first half's token first: nothing reports Ready from here on.
        self.inner.cancel.cancel();
        if let Some(h6) = &self.inner6 {
            h6.shutdown().await;
        }
        self.inner.shutdown().await;
    }
}
