//! The running node: UDP socket loop, transactions, query handlers, iterative walks,
//! announce/lookup/put/get, and maintenance (token rotation, peer expiry, liveness).
//!
//! Concurrency model: one `Inner` behind an `Arc`, its mutable state in a `std::sync::Mutex`
//! that is never held across an `.await`. A receive task decodes datagrams, answers queries
//! synchronously (see [`State::handle_query`]) and routes replies to waiting transactions
//! (oneshot channels). Public operations run as ordinary futures that send queries and await
//! replies; every one of them races a `CancellationToken` that `shutdown` fires.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::time::Instant;

use rand::Rng;
use tokio::net::UdpSocket;
use tokio::sync::{broadcast, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use super::bencode;
use super::heal::{Counters, Heal};
use super::krpc::{self, Body, KrpcError, Message, Method, NodeInfo, PutArgs, Query, Response, Want};
use super::limits::QueryRate;
use super::routing::{self, Insert, K, RoutingTable};
use super::store::{self, AddPeer, PeerStore, PutOutcome, StoredItem, Tokens, Tombstones, ValueStore};
use super::{DhtConfig, DhtEvent, GetResult, MutableMeta, PutItem};
use crate::error::{Error, ErrorKind, Result};

/// Most transactions in flight at once (over all operations).
pub const MAX_PENDING: usize = 4096;
/// Most nodes put in a `nodes` reply (26 bytes each).
pub const MAX_REPLY_NODES: usize = K;
/// Most peers put in a `values` reply (8 bytes each on the wire).
pub const MAX_REPLY_VALUES: usize = 256;
/// Most peers returned from the own store by a lookup.
pub const MAX_LOCAL_PEERS: usize = 1000;
/// Most nodes queried by one iterative walk.
pub const MAX_WALK_QUERIES: usize = 1000;
/// Most token-holding nodes kept per target (announce/put go to all of them). Bounds the
/// `max_tables` cache to about `max_tables x 100 x 70` bytes in the worst case.
pub const MAX_TABLE_NODES: usize = 5 * K;
/// Lifetime of a cached per-target table of token-holding nodes.
pub const TABLE_TTL: Duration = Duration::from_secs(300);
/// Secret rotation period for tokens.
pub const SECRET_ROTATION: Duration = Duration::from_secs(300);
/// How long an unannounce waits for acknowledgements. Node Grapes never answer `unannounce_peer`,
/// so a graceful stop waits this long at most, not the full query timeout.
pub const UNANNOUNCE_WAIT: Duration = Duration::from_secs(1);
/// Most routing-table liveness pings in flight (bucket-full checks).
const MAX_LIVENESS_PINGS: usize = 16;

/// A node that handed out a token for a target.
#[derive(Debug, Clone)]
pub(crate) struct TokenNode {
    pub(crate) info: NodeInfo,
    pub(crate) token: Vec<u8>,
}

/// Why a single query failed.
#[derive(Debug)]
pub(crate) enum QueryError {
    Timeout,
    Krpc(KrpcError),
    Other(Error),
}

impl QueryError {
    fn into_error(self) -> Error {
        match self {
            QueryError::Timeout => Error::timeout("KRPC query timed out"),
            QueryError::Krpc(e) => krpc_error_to_error(&e),
            QueryError::Other(e) => e,
        }
    }
}

/// Maps a KRPC error to the crate error. The message is `"<code> <text>"`, exactly what
/// bittorrent-dht reports (`e.join(' ')`), so a Grape can reproduce the HTTP status and text.
pub(crate) fn krpc_error_to_error(e: &KrpcError) -> Error {
    let text = format!("{} {}", e.code, String::from_utf8_lossy(&e.message));
    let kind = match e.code {
        301 => ErrorKind::CasMismatch,
        302 => ErrorKind::SeqTooLow,
        _ => ErrorKind::Dht,
    };
    Error::new(kind, text)
}

struct Pending {
    ip: IpAddr,
    tx: oneshot::Sender<std::result::Result<Response, KrpcError>>,
}

/// A per-target table of token-holding nodes: when it was built, the nodes, and how many nodes
/// the routing table held then.
type CachedTable = (Instant, Arc<Vec<TokenNode>>, usize);
type WalkJob = (Option<[u8; 20]>, SocketAddr, u32, std::result::Result<Response, QueryError>);
type LookupResult = std::result::Result<Arc<LookupOutcome>, (ErrorKind, String)>;

#[derive(Debug)]
pub(crate) struct LookupOutcome {
    pub(crate) peers: Vec<SocketAddr>,
    pub(crate) table: Arc<Vec<TokenNode>>,
    /// Peers that were unannounced lately (this node's tombstones and the `gone` lists of the
    /// replies); they are not in `peers`.
    pub(crate) gone: Vec<SocketAddr>,
    /// How the walk went (for the simulator's report).
    pub(crate) trace: WalkTrace,
}

/// What an iterative walk cost: queries sent, and its depth in hops (a node given by the routing
/// table or a bootstrap node is one hop away; a node first learnt from a reply of a node `d`
/// hops away is `d + 1` hops away).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct WalkTrace {
    /// Queries sent.
    pub(crate) queries: u32,
    /// Replies received.
    pub(crate) replies: u32,
    /// Hops to the nearest node that answered with values (peers), if one did.
    pub(crate) value_hops: Option<u32>,
    /// When the first reply with values came, after the walk started.
    pub(crate) first_value: Option<Duration>,
    /// Hops to the node that answered closest to the target.
    pub(crate) closest_hops: u32,
    /// Most hops of any node that answered.
    pub(crate) max_hops: u32,
}

/// Counts of `unannounce_peer` queries handled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct UnannounceCounts {
    /// Removed a record.
    pub(crate) applied: u64,
    /// Valid, but no record of the sender's address and that port was held.
    pub(crate) unknown: u64,
    /// Refused: no or a bad token, a bad port, no info-hash.
    pub(crate) refused: u64,
}

/// The node's mutable state. Query handling is a pure function of it ([`State::handle_query`]).
pub(crate) struct State {
    pub(crate) id: [u8; 20],
    pub(crate) table: RoutingTable,
    pub(crate) peers: PeerStore,
    pub(crate) values: ValueStore,
    pub(crate) tokens: Tokens,
    pub(crate) tombstones: Tombstones,
    pub(crate) unannounces: UnannounceCounts,
    pending: HashMap<u16, Pending>,
    next_tid: u16,
    /// Cached per-target tables: key = (method tag, target).
    tables: lru::LruCache<(u8, Vec<u8>), CachedTable>,
    lookups: HashMap<Vec<u8>, Vec<oneshot::Sender<LookupResult>>>,
    pinging: HashSet<[u8; 20]>,
}

/// What the receive loop should do after handling a query.
pub(crate) struct Handled {
    /// The reply, if any.
    pub(crate) reply: Option<Body>,
    /// An event to emit.
    pub(crate) event: Option<DhtEvent>,
}

impl State {
    pub(crate) fn new(id: [u8; 20], config: &DhtConfig) -> State {
        State {
            id,
            table: RoutingTable::new(id),
            peers: PeerStore::with_limits(config.max_peers, config.peer_max_age, config.limits.peer_store),
            values: ValueStore::new(config.max_values),
            tokens: Tokens::new(),
            tombstones: Tombstones::new(tombstone_ttl(config.peer_max_age)),
            unannounces: UnannounceCounts::default(),
            pending: HashMap::new(),
            next_tid: 0,
            tables: lru::LruCache::new(NonZeroUsize::new(config.max_tables.max(1)).unwrap_or(NonZeroUsize::MIN)),
            lookups: HashMap::new(),
            pinging: HashSet::new(),
        }
    }

    /// Caches a per-target table of token-holding nodes (see [`CachedTable`]).
    fn cache_table(&mut self, key: (u8, Vec<u8>), t: Arc<Vec<TokenNode>>) {
        let routing = self.table.len();
        self.tables.put(key, (Instant::now(), t, routing));
    }

    /// The `nodes` and `nodes6` of a reply to `from` (BEP 32): the families `want` asks for, by
    /// default the family of the request. This table holds the nodes of the request's family;
    /// `other` those of the other family (`None` on a node of one family, which then answers
    /// only for its own).
    fn nodes_reply(
        &self,
        target: &[u8],
        from: SocketAddr,
        want: Option<Want>,
        other: Option<&[NodeInfo]>,
    ) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
        let v6 = from.is_ipv6();
        let own = || self.table.closest(target, MAX_REPLY_NODES);
        let want = want.unwrap_or(Want { n4: !v6, n6: v6 });
        let (mut nodes, mut nodes6) = (None, None);
        if want.n4 {
            nodes = if v6 { other.map(krpc::encode_nodes) } else { Some(krpc::encode_nodes(&own())) };
        }
        if want.n6 {
            nodes6 = if v6 { Some(krpc::encode_nodes6(&own())) } else { other.map(krpc::encode_nodes6) };
        }
        if nodes.is_none() && nodes6.is_none() {
            // Nothing asked for that this node has: its own family, as without `want`.
            if v6 {
                nodes6 = Some(krpc::encode_nodes6(&own()));
            } else {
                nodes = Some(krpc::encode_nodes(&own()));
            }
        }
        (nodes, nodes6)
    }

    /// Answers one query from `from`, like bittorrent-dht 10 (§4.3), minus its crash bugs.
    pub(crate) fn handle_query(&mut self, q: &Query, from: SocketAddr, now: Instant) -> Handled {
        self.handle_query_with(q, from, now, None)
    }

    /// [`State::handle_query`] on a dual-stack node: `other` holds the nodes of the other
    /// address family closest to the query's target, for a BEP 32 `want` that asks for them.
    pub(crate) fn handle_query_with(&mut self, q: &Query, from: SocketAddr, now: Instant, other: Option<&[NodeInfo]>) -> Handled {
        let id = Some(self.id.to_vec());
        let none = Handled { reply: None, event: None };
        let reply = |r: Response| Handled { reply: Some(Body::Response(r)), event: None };
        let error = |code, msg: &str| Handled { reply: Some(Body::Error(KrpcError::new(code, msg))), event: None };
        match &q.method {
            Method::Ping => reply(Response { id, ..Default::default() }),
            Method::FindNode { target } => match target {
                None => error(203, "`find_node` missing required `a.target` field"),
                Some(t) => {
                    let (nodes, nodes6) = self.nodes_reply(t, from, q.want, other);
                    reply(Response { id, nodes, nodes6, ..Default::default() })
                }
            },
            Method::GetPeers { info_hash } => {
                let Some(ih) = info_hash else {
                    return error(203, "`get_peers` missing required `a.info_hash` field");
                };
                let token = Some(self.tokens.generate(from.ip()).to_vec());
                let peers = self.peers.get(ih, MAX_REPLY_VALUES, now);
                let gone = self.tombstones.get(ih, now);
                let gone = (!gone.is_empty()).then(|| gone.iter().map(|p| krpc::encode_peer(*p)).collect());
                if peers.is_empty() {
                    let (nodes, nodes6) = self.nodes_reply(ih, from, q.want, other);
                    reply(Response { id, token, nodes, nodes6, gone, ..Default::default() })
                } else {
                    let values = peers.iter().map(|p| krpc::encode_peer(*p)).collect();
                    reply(Response { id, token, values: Some(values), gone, ..Default::default() })
                }
            }
            Method::AnnouncePeer { info_hash, port, implied_port, token } => {
                let port = if *implied_port { i64::from(from.port()) } else { port.unwrap_or(0) };
                let Ok(port) = u16::try_from(port) else { return none };
                if port == 0 {
                    return none;
                }
                let (Some(ih), Some(token)) = (info_hash, token) else { return none };
                if !self.tokens.validate(from.ip(), token) {
                    return error(203, "cannot `announce_peer` with bad token");
                }
                let peer = SocketAddr::new(from.ip(), port);
                match self.peers.add(ih, peer, now) {
                    AddPeer::Full => error(202, "peer store full"),
                    AddPeer::KeyTooLong => error(203, "`info_hash` too long"),
                    AddPeer::Added | AddPeer::Refreshed => {
                        // Announced again after an unannounce: it is back.
                        self.tombstones.clear(ih, peer);
                        Handled {
                            reply: Some(Body::Response(Response { id, ..Default::default() })),
                            event: Some(DhtEvent::Announce { info_hash: ih.clone(), peer }),
                        }
                    }
                }
            }
            Method::UnannouncePeer { info_hash, port, implied_port, token } => {
                // The announce's proof, and the announce's rules: the record removed is always
                // `<source IP>:port`, and the token proves the source IP is not forged.
                let port = if *implied_port { i64::from(from.port()) } else { port.unwrap_or(0) };
                let (Ok(port), Some(ih), Some(token)) = (u16::try_from(port), info_hash, token) else {
                    self.unannounces.refused += 1;
                    return none;
                };
                if port == 0 {
                    self.unannounces.refused += 1;
                    return none;
                }
                if !self.tokens.validate(from.ip(), token) {
                    self.unannounces.refused += 1;
                    return error(203, "cannot `unannounce_peer` with bad token");
                }
                let peer = SocketAddr::new(from.ip(), port);
                let reply = Some(Body::Response(Response { id, ip: Some(krpc::encode_peer(peer)), ..Default::default() }));
                if self.peers.remove(ih, peer) {
                    self.unannounces.applied += 1;
                    self.tombstones.add(ih, peer, now);
                    Handled { reply, event: Some(DhtEvent::Unannounce { info_hash: ih.clone(), peer }) }
                } else {
                    self.unannounces.unknown += 1;
                    Handled { reply, event: None }
                }
            }
            Method::Get { target } => {
                let Some(target) = target else { return none };
                let token = Some(self.tokens.generate(from.ip()).to_vec());
                let item = <[u8; 20]>::try_from(target.as_slice()).ok().and_then(|t| self.values.get(&t).cloned());
                match item.and_then(|it| Some((bencode::decode(&it.v_bencoded).ok()?, it))) {
                    Some((v, it)) => {
                        let mut r = Response { id, token, v: Some(v), ..Default::default() };
                        if let Some(m) = &it.mutable {
                            r.k = Some(m.k.to_vec());
                            r.sig = Some(m.sig.to_vec());
                            r.seq = Some(m.seq);
                        }
                        reply(r)
                    }
                    None => {
                        let (nodes, nodes6) = self.nodes_reply(target, from, q.want, other);
                        reply(Response { id, token, nodes, nodes6, ..Default::default() })
                    }
                }
            }
            Method::Put(a) => {
                let (Some(_), Some(token), Some(_)) = (&a.v, &a.token, &q.id) else { return none };
                if !self.tokens.validate(from.ip(), token) {
                    return error(203, "cannot `put` with bad token");
                }
                match self.values.apply_put(a) {
                    PutOutcome::Stored(_) => reply(Response { id, ..Default::default() }),
                    PutOutcome::Error(e) => Handled { reply: Some(Body::Error(e)), event: None },
                    PutOutcome::Drop => none,
                }
            }
            Method::Other(_) => none,
        }
    }
}

/// Shared node internals.
pub(crate) struct Inner {
    pub(crate) id: [u8; 20],
    pub(crate) config: DhtConfig,
    pub(crate) local_addr: SocketAddr,
    socket: Mutex<Option<Arc<Transport>>>,
    pub(crate) state: Mutex<State>,
    pub(crate) events: broadcast::Sender<DhtEvent>,
    pub(crate) ready: watch::Sender<bool>,
    pub(crate) cancel: CancellationToken,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    slots: tokio::sync::Semaphore,
    /// Limits per source: a token bucket per query sender.
    query_rate: Mutex<QueryRate>,
    /// Nodes that queried us and have not answered a query of ours yet (questionable, BEP 5).
    silent: Mutex<lru::LruCache<[u8; 20], ()>>,
    /// The self-healing maintenance's schedule and budget (see `heal`).
    pub(crate) heal: Mutex<Heal>,
    pub(crate) counters: Counters,
    /// The node of the other address family on a dual-stack node (BEP 32): same id, its own
    /// socket and routing table. Its nodes answer `want`, and nodes of its family learnt from
    /// replies are handed to it.
    pub(crate) sibling: std::sync::OnceLock<std::sync::Weak<Inner>>,
    /// Whether this node reports [`DhtEvent::Ready`] (the IPv6 half of a dual-stack node does not:
    /// the node is ready once, when its first half is).
    emit_ready: bool,
    /// This node's address as others reach it, when known: the bound address, or for an
    /// unspecified one the source address the host's routes give (none without a route).
    /// Advertised in the other half's BEP 32 replies.
    advert: Option<SocketAddr>,
    /// Probes (pings) of nodes learnt from the other family's replies, in flight.
    probes: std::sync::atomic::AtomicUsize,
}

/// Most probes of nodes learnt through the other family in flight at once.
const MAX_PROBES: usize = 16;

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DhtNode").field("id", &hex::encode(self.id)).field("local_addr", &self.local_addr).finish()
    }
}

/// Where datagrams go: a UDP socket, or an endpoint of the in-memory network of the simulator.
pub(crate) enum Transport {
    Udp(UdpSocket),
    #[cfg(any(test, feature = "sim"))]
    Sim(super::simnet::Endpoint),
}

impl Transport {
    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match self {
            Transport::Udp(s) => s.local_addr(),
            #[cfg(any(test, feature = "sim"))]
            Transport::Sim(e) => Ok(SocketAddr::V4(e.addr())),
        }
    }

    async fn send_to(&self, bytes: &[u8], to: SocketAddr) -> std::io::Result<()> {
        match self {
            Transport::Udp(s) => s.send_to(bytes, to).await.map(|_| ()),
            #[cfg(any(test, feature = "sim"))]
            Transport::Sim(e) => {
                if let SocketAddr::V4(to) = krpc::canonical(to) {
                    e.send(bytes, to);
                }
                Ok(())
            }
        }
    }
}

/// Capacity of the event channel of a node bound to a UDP socket.
pub(crate) const EVENTS: usize = 1024;

impl Inner {
    /// Starts a node on `transport`; `events` is the capacity of the event channel (a simulated
    /// network of thousands of nodes keeps it small: the channel's slots are allocated up front).
    #[cfg(any(test, feature = "sim"))]
    pub(crate) fn start(config: DhtConfig, socket: Transport, events: usize) -> Result<Arc<Inner>> {
        let (events, _) = broadcast::channel(events.max(1));
        let inner = Inner::new(config, socket, events, true)?;
        inner.run();
        Ok(inner)
    }

    /// A node on `transport` that reports to `events` (shared by both halves of a dual-stack
    /// node; only a node with `emit_ready` reports [`DhtEvent::Ready`]), not running yet: see
    /// [`Inner::run`].
    pub(crate) fn new(config: DhtConfig, socket: Transport, events: broadcast::Sender<DhtEvent>, emit_ready: bool) -> Result<Arc<Inner>> {
        let local_addr = socket.local_addr()?;
        let id = config.id.unwrap_or_else(|| {
            let mut id = [0u8; 20];
            rand::thread_rng().fill(&mut id);
            id
        });
        let (ready, _) = watch::channel(false);
        let config_limits = config.limits;
        let mut state = State::new(id, &config);
        // Saved nodes are usable at once; `heal` pings them and drops those that do not answer.
        let now = Instant::now();
        for n in config.saved_nodes.iter().filter(|n| n.addr.is_ipv6() == local_addr.is_ipv6()).take(super::DhtState::MAX_NODES) {
            state.table.insert(*n, now);
        }
        let inner = Arc::new(Inner {
            id,
            state: Mutex::new(state),
            heal: Mutex::new(Heal::new(config.maintenance_rate)),
            counters: Counters::default(),
            config,
            local_addr,
            socket: Mutex::new(Some(Arc::new(socket))),
            events,
            ready,
            cancel: CancellationToken::new(),
            tasks: Mutex::new(Vec::new()),
            slots: tokio::sync::Semaphore::new(MAX_PENDING),
            query_rate: Mutex::new(QueryRate::new(&config_limits)),
            silent: Mutex::new(lru::LruCache::new(NonZeroUsize::new(4096).unwrap_or(NonZeroUsize::MIN))),
            sibling: std::sync::OnceLock::new(),
            advert: advertised(local_addr),
            emit_ready,
            probes: std::sync::atomic::AtomicUsize::new(0),
        });
        Ok(inner)
    }

    /// Starts the node's tasks: receiving, maintenance, healing and the bootstrap walk.
    pub(crate) fn run(self: &Arc<Self>) {
        let inner = self;
        let _ = inner.events.send(DhtEvent::Listening(inner.local_addr));
        let recv = tokio::spawn(Inner::recv_loop(inner.clone()));
        let maint = tokio::spawn(Inner::maintenance(inner.clone()));
        let heal = tokio::spawn(Inner::heal_loop(inner.clone()));
        let boot = {
            let inner = inner.clone();
            tokio::spawn(async move {
                let cancel = inner.cancel.clone();
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    _ = inner.bootstrap() => {}
                }
                inner.set_ready();
            })
        };
        lock(&inner.tasks).extend([recv, maint, heal, boot]);
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    fn emit(&self, e: DhtEvent) {
        let _ = self.events.send(e);
    }

    /// True for the node of the IPv6 family.
    pub(crate) fn is_v6(&self) -> bool {
        self.local_addr.is_ipv6()
    }

    /// The other family's node of a dual-stack node, while it runs.
    pub(crate) fn sibling(&self) -> Option<Arc<Inner>> {
        self.sibling.get().and_then(std::sync::Weak::upgrade)
    }

    /// The `want` this node sends on `find_node`/`get_peers`/`get`: both families on a
    /// dual-stack node (nodes of the other family go to its other half), none otherwise.
    fn want(&self) -> Option<Want> {
        self.sibling.get().is_some().then_some(Want { n4: true, n6: true })
    }

    /// Pings nodes of this node's family learnt from the other half's replies (BEP 32 `want`),
    /// unless they are known already; a node that answers joins the routing table. At most
    /// [`MAX_PROBES`] in flight: the rest is left for later replies.
    pub(crate) fn probe(self: &Arc<Self>, nodes: Vec<NodeInfo>) {
        use std::sync::atomic::Ordering;
        for n in nodes {
            if n.id == self.id || n.addr.is_ipv6() != self.is_v6() || self.cancel.is_cancelled() {
                continue;
            }
            if self.state().table.addr_of(&n.id).is_some() {
                continue;
            }
            if self.probes.fetch_add(1, Ordering::AcqRel) >= MAX_PROBES {
                self.probes.fetch_sub(1, Ordering::AcqRel);
                return;
            }
            let inner = self.clone();
            tokio::spawn(async move {
                let cancel = inner.cancel.clone();
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    _ = inner.maint_query(n.addr, Method::Ping) => {}
                }
                inner.probes.fetch_sub(1, Ordering::AcqRel);
            });
        }
    }

    fn set_ready(&self) {
        if !*self.ready.borrow() {
            self.ready.send_replace(true);
            if self.emit_ready && !self.cancel.is_cancelled() {
                self.emit(DhtEvent::Ready);
            }
        }
    }

    fn socket(&self) -> Result<Arc<Transport>> {
        lock(&self.socket).clone().ok_or_else(|| Error::new(ErrorKind::Cancelled, "DHT node is shut down"))
    }

    async fn send(&self, to: SocketAddr, bytes: &[u8]) -> Result<()> {
        if bytes.len() > 65_507 {
            return Err(Error::new(ErrorKind::PayloadTooLarge, "KRPC datagram too large"));
        }
        if to.is_ipv6() != self.is_v6() {
            return Err(Error::invalid(format!("{to} is not of this DHT socket's address family ({})", self.local_addr)));
        }
        let sock = self.socket()?;
        sock.send_to(bytes, to).await?;
        Ok(())
    }

    pub(crate) async fn shutdown(&self) {
        self.cancel.cancel();
        self.slots.close();
        let sock = lock(&self.socket).take();
        let tasks: Vec<_> = std::mem::take(&mut *lock(&self.tasks));
        for t in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
        }
        {
            let mut st = self.state();
            st.pending.clear();
            st.lookups.clear();
        }
        drop(sock);
        self.ready.send_replace(true);
    }

    // ---------------------------------------------------------------- receive side

    async fn recv_loop(self: Arc<Inner>) {
        let Ok(sock) = self.socket() else { return };
        // One arm without the simulator.
        #[allow(clippy::infallible_destructuring_match)]
        let sock = match &*sock {
            Transport::Udp(s) => s,
            #[cfg(any(test, feature = "sim"))]
            Transport::Sim(e) => {
                // Datagrams arrive as owned buffers: no 64 KiB receive buffer per node.
                loop {
                    let (data, from) = tokio::select! {
                        _ = self.cancel.cancelled() => return,
                        d = e.recv() => d,
                    };
                    self.on_datagram(&data, SocketAddr::V4(from)).await;
                }
            }
        };
        let mut buf = vec![0u8; 65_536];
        loop {
            let r = tokio::select! {
                _ = self.cancel.cancelled() => return,
                r = sock.recv_from(&mut buf) => r,
            };
            match r {
                Ok((n, from)) => {
                    let from = krpc::canonical(from);
                    if from.is_ipv6() != self.is_v6() {
                        continue;
                    }
                    self.on_datagram(&buf[..n], from).await;
                }
                Err(e) => {
                    // ICMP port unreachable etc. surface here on some platforms; keep serving.
                    self.emit(DhtEvent::Warning(format!("UDP receive error: {e}")));
                    // do not spin if the error repeats
                    tokio::select! {
                        _ = self.cancel.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(10)) => {}
                    }
                }
            }
        }
    }

    async fn on_datagram(self: &Arc<Self>, data: &[u8], from: SocketAddr) {
        // A source that spent its query rate is flooding: drop before decoding.
        if self.sources().exhausted(from.ip(), Instant::now()) {
            return;
        }
        let msg = match krpc::decode(data) {
            Ok(m) => m,
            Err(e) => {
                self.emit(DhtEvent::Warning(format!("dropped datagram from {from}: {e}")));
                return;
            }
        };
        let now = Instant::now();
        match msg.body {
            Body::Query(q) => {
                // Limits per source: a query over its address's rate is dropped unanswered.
                if !self.sources().allow(from.ip(), now) {
                    return;
                }
                if !q.read_only
                    && let Some(id) = q.id.as_deref().and_then(|i| <[u8; 20]>::try_from(i).ok())
                {
                    self.add_queried_node(NodeInfo { id, addr: from });
                }
                let other = self.other_family_nodes(&q, from);
                let handled = self.state().handle_query_with(&q, from, now, other.as_deref());
                if let Some(e) = handled.event {
                    self.emit(e);
                }
                if let Some(body) = handled.reply {
                    self.counters.replies.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let bytes = Message { t: msg.t, body }.encode();
                    if let Err(e) = self.send(from, &bytes).await {
                        self.emit(DhtEvent::Warning(format!("cannot reply to {from}: {e}")));
                    }
                }
            }
            Body::Response(_) | Body::Error(_) => {
                if msg.t.len() < 2 {
                    self.emit(DhtEvent::Warning(format!("reply from {from} with a short transaction id")));
                    return;
                }
                let tid = u16::from_be_bytes([msg.t[0], msg.t[1]]);
                let pending = {
                    let mut st = self.state();
                    match st.pending.get(&tid) {
                        Some(p) if p.ip == from.ip() => st.pending.remove(&tid),
                        Some(_) => {
                            drop(st);
                            self.emit(DhtEvent::Warning(format!("out of order response from {from}")));
                            return;
                        }
                        None => None,
                    }
                };
                let Some(p) = pending else {
                    self.emit(DhtEvent::Warning(format!("unexpected transaction id {tid} from {from}")));
                    return;
                };
                let result = match msg.body {
                    Body::Response(r) => {
                        if let Some(id) = r.id.as_deref().and_then(|i| <[u8; 20]>::try_from(i).ok()) {
                            self.add_node(NodeInfo { id, addr: from });
                            // It answered: a good node from now on (BEP 5).
                            lock(&self.silent).pop(&id);
                        }
                        Ok(r)
                    }
                    Body::Error(e) => Err(e),
                    Body::Query(_) => return,
                };
                let _ = p.tx.send(result);
            }
        }
    }

    /// For a query whose `want` asks for the other address family (BEP 32): the other half's
    /// nodes closest to its target. Read before this node's state is locked (never both at once).
    fn other_family_nodes(&self, q: &Query, from: SocketAddr) -> Option<Vec<NodeInfo>> {
        let want = q.want?;
        if !(if from.is_ipv6() { want.n4 } else { want.n6 }) {
            return None;
        }
        let target = match &q.method {
            Method::FindNode { target: Some(t) } | Method::Get { target: Some(t) } => t,
            Method::GetPeers { info_hash: Some(t) } => t,
            _ => return None,
        };
        let sibling = self.sibling()?;
        let mut nodes = sibling.state().table.closest(target, MAX_REPLY_NODES);
        // The other half itself, where its address is known: how the dual-stack nodes of a
        // network bootstrapped over one family find each other's other family.
        if let Some(addr) = sibling.advert {
            nodes.truncate(MAX_REPLY_NODES - 1);
            nodes.push(NodeInfo { id: sibling.id, addr });
        }
        Some(nodes)
    }

    /// Adds a node that sent us a query. Until it answers one of ours it is questionable (BEP 5):
    /// lookups do not start from it, and it is pinged once (at most [`MAX_LIVENESS_PINGS`] at a
    /// time) so that a live one becomes good at once; one that never answers is dropped.
    fn add_queried_node(self: &Arc<Self>, info: NodeInfo) {
        if !self.add_node(info) {
            return;
        }
        lock(&self.silent).put(info.id, ());
        let mut st = self.state();
        if st.pinging.len() >= MAX_LIVENESS_PINGS || !st.pinging.insert(info.id) {
            return;
        }
        drop(st);
        let inner = self.clone();
        tokio::spawn(async move {
            let alive = inner.query(info.addr, Method::Ping).await.is_ok();
            let mut st = inner.state();
            st.pinging.remove(&info.id);
            if !alive {
                st.table.remove(&info.id);
            }
        });
    }

    /// The token buckets of the query senders.
    fn sources(&self) -> MutexGuard<'_, QueryRate> {
        lock(&self.query_rate)
    }

    /// How many queries were dropped for their source's rate.
    pub(crate) fn refused_queries(&self) -> u64 {
        self.sources().refused()
    }

    /// Adds a node to the routing table; when its bucket is full, pings the least recently seen
    /// node (if not heard from for 10 s, or `node_liveness` if shorter) and replaces it if it is
    /// dead.
    /// True when it was added now.
    pub(crate) fn add_node(self: &Arc<Self>, info: NodeInfo) -> bool {
        let now = Instant::now();
        let mut st = self.state();
        match st.table.insert(info, now) {
            Insert::Added => {
                drop(st);
                self.emit(DhtEvent::Node(info.addr));
                true
            }
            Insert::Full(oldest) => {
                let stale =
                    st.table.stale(Duration::from_secs(10).min(self.config.node_liveness), now).into_iter().any(|n| n.id == oldest.id);
                if !stale || st.pinging.len() >= MAX_LIVENESS_PINGS || !st.pinging.insert(oldest.id) {
                    return false;
                }
                drop(st);
                let inner = self.clone();
                tokio::spawn(async move {
                    let alive = inner.maint_query(oldest.addr, Method::Ping).await.is_ok();
                    let mut st = inner.state();
                    st.pinging.remove(&oldest.id);
                    if !alive {
                        st.table.remove(&oldest.id);
                        if st.table.insert(info, Instant::now()) == Insert::Added {
                            drop(st);
                            inner.emit(DhtEvent::Node(info.addr));
                        }
                    }
                });
                false
            }
            Insert::Refreshed | Insert::Ignored => false,
        }
    }

    /// Refuses a key (service name) over the peer store's longest key: no node would store it.
    fn check_key_len(&self, key: &[u8]) -> Result<()> {
        let max = self.config.limits.peer_store.max_key_len;
        if key.len() > max {
            return Err(Error::invalid(format!("a service name of {} bytes is over the limit of {max}", key.len())));
        }
        Ok(())
    }

    // ---------------------------------------------------------------- client side

    /// Sends one query and waits for its reply (or error, or timeout).
    pub(crate) async fn query(self: &Arc<Self>, to: SocketAddr, method: Method) -> std::result::Result<Response, QueryError> {
        // at most MAX_PENDING transactions: further queries wait for a slot (like k-rpc's queue)
        let _slot = self.slots.acquire().await.map_err(|_| QueryError::Other(Error::new(ErrorKind::Cancelled, "DHT node is shut down")))?;
        let (tid, rx) = {
            let mut st = self.state();
            if st.pending.len() >= MAX_PENDING {
                return Err(QueryError::Other(Error::new(ErrorKind::Io, "too many KRPC queries in flight")));
            }
            let mut tid = st.next_tid;
            loop {
                tid = if tid == u16::MAX { 1 } else { tid + 1 };
                if !st.pending.contains_key(&tid) {
                    break;
                }
            }
            st.next_tid = tid;
            let (tx, rx) = oneshot::channel();
            st.pending.insert(tid, Pending { ip: to.ip(), tx });
            (tid, rx)
        };
        struct Guard<'a>(&'a Inner, u16);
        impl Drop for Guard<'_> {
            fn drop(&mut self) {
                lock(&self.0.state).pending.remove(&self.1);
            }
        }
        let _guard = Guard(self, tid);
        self.counters.queries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let want = match method {
            Method::FindNode { .. } | Method::GetPeers { .. } | Method::Get { .. } => self.want(),
            _ => None,
        };
        let query = Query { id: Some(self.id.to_vec()), method, read_only: false, want };
        let msg = Message { t: tid.to_be_bytes().to_vec(), body: Body::Query(query) };
        self.send(to, &msg.encode()).await.map_err(QueryError::Other)?;
        match tokio::time::timeout(self.config.query_timeout, rx).await {
            Ok(Ok(Ok(r))) => Ok(r),
            Ok(Ok(Err(e))) => Err(QueryError::Krpc(e)),
            Ok(Err(_)) => Err(QueryError::Other(Error::new(ErrorKind::Cancelled, "DHT node is shut down"))),
            Err(_) => Err(QueryError::Timeout),
        }
    }

    pub(crate) async fn bootstrap_addrs(&self) -> Vec<SocketAddr> {
        let mut out = Vec::new();
        for b in &self.config.bootstrap {
            match tokio::net::lookup_host(b.as_str()).await {
                Ok(addrs) => out.extend(addrs.map(krpc::canonical).filter(|a| a.is_ipv6() == self.is_v6())),
                Err(e) => self.emit(DhtEvent::Warning(format!("cannot resolve bootstrap node {b}: {e}"))),
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// The bootstrap walk: `find_node(own id)` from the bootstrap nodes and the table.
    pub(crate) async fn bootstrap(self: &Arc<Self>) {
        let id = self.id.to_vec();
        self.walk(id.clone(), Method::FindNode { target: Some(id) }, true, |_, _| true).await;
    }

    /// An iterative walk towards `target` (k-rpc's `closest`): keeps the K closest known nodes,
    /// queries each once with up to `concurrency` in flight, and stops when the K closest
    /// (excluding failed ones) have all answered or failed. `visit` sees every response; it
    /// returns false to stop early. Returns the token-holding responders, closest first.
    pub(crate) async fn walk<F>(self: &Arc<Self>, target: Vec<u8>, method: Method, force_bootstrap: bool, visit: F) -> Vec<TokenNode>
    where
        F: FnMut(&Response, SocketAddr) -> bool,
    {
        self.walk_traced(target, method, force_bootstrap, visit, &mut WalkTrace::default()).await
    }

    /// [`Inner::walk`], counting queries and hops into `trace`.
    pub(crate) async fn walk_traced<F>(
        self: &Arc<Self>,
        target: Vec<u8>,
        method: Method,
        force_bootstrap: bool,
        mut visit: F,
        trace: &mut WalkTrace,
    ) -> Vec<TokenNode>
    where
        F: FnMut(&Response, SocketAddr) -> bool,
    {
        #[derive(PartialEq)]
        enum St {
            New,
            Asked,
            Done,
            Failed,
        }
        // (distance, id) -> (address, state, hops)
        type Cands = BTreeMap<(Vec<u8>, [u8; 20]), (SocketAddr, St, u32)>;
        let mut cands: Cands = BTreeMap::new();
        let mut closest: Option<Vec<u8>> = None;
        let started = Instant::now();
        let mut asked_addrs: HashSet<SocketAddr> = HashSet::new();
        let mut tokens: Vec<TokenNode> = Vec::new();
        // Questionable nodes (never answered us) are not where a lookup starts, unless no good
        // node is known at all (a node that only others bootstrapped from).
        let seeds: Vec<NodeInfo> = {
            let all = self.state().table.closest(&target, 4 * K);
            let silent = lock(&self.silent);
            let good: Vec<NodeInfo> = all.iter().filter(|n| !silent.contains(&n.id)).take(K).copied().collect();
            if good.is_empty() { all.into_iter().take(K).collect() } else { good }
        };
        let mut set: JoinSet<WalkJob> = JoinSet::new();
        let concurrency = self.config.concurrency.max(1);
        let mut queries = 0usize;
        let bootstrap_needed = force_bootstrap || seeds.len() < self.config.bootstrap.len();
        for n in seeds {
            cands.insert((routing::distance(&target, &n.id), n.id), (n.addr, St::New, 1));
        }
        if bootstrap_needed {
            for addr in self.bootstrap_addrs().await {
                if asked_addrs.insert(addr) {
                    let inner = self.clone();
                    let m = method.clone();
                    queries += 1;
                    set.spawn(async move { (None, addr, 1, inner.query(addr, m).await) });
                }
            }
        }
        let mut stop = false;
        loop {
            // launch
            while !stop && set.len() < concurrency && queries < MAX_WALK_QUERIES {
                let next = cands
                    .iter_mut()
                    .filter(|(_, (_, s, _))| *s != St::Failed)
                    .take(K)
                    .find(|(_, (a, s, _))| *s == St::New && !asked_addrs.contains(a));
                let Some((key, (addr, s, depth))) = next else {
                    // mark unreachable duplicates so they do not block
                    break;
                };
                *s = St::Asked;
                let (id, addr, depth) = (key.1, *addr, *depth);
                asked_addrs.insert(addr);
                let inner = self.clone();
                let m = method.clone();
                queries += 1;
                set.spawn(async move { (Some(id), addr, depth, inner.query(addr, m).await) });
            }
            // candidates whose address was already asked under another id count as done
            for (_, (a, s, _)) in cands.iter_mut() {
                if *s == St::New && asked_addrs.contains(a) {
                    *s = St::Done;
                }
            }
            let Some(joined) = set.join_next().await else { break };
            let Ok((id, addr, depth, res)) = joined else { continue };
            match res {
                Ok(r) => {
                    trace.replies += 1;
                    trace.max_hops = trace.max_hops.max(depth);
                    if r.values.as_ref().is_some_and(|v| !v.is_empty()) {
                        trace.value_hops = Some(trace.value_hops.map_or(depth, |h| h.min(depth)));
                        trace.first_value.get_or_insert_with(|| started.elapsed());
                    }
                    let rid = r.id.as_deref().and_then(|i| <[u8; 20]>::try_from(i).ok());
                    if let Some(id) = id
                        && let Some(c) = cands.get_mut(&(routing::distance(&target, &id), id))
                    {
                        c.1 = St::Done;
                    }
                    if let Some(rid) = rid
                        && rid != self.id
                    {
                        let key = (routing::distance(&target, &rid), rid);
                        if closest.as_ref().is_none_or(|c| key.0 < *c) {
                            closest = Some(key.0.clone());
                            trace.closest_hops = depth;
                        }
                        cands.entry(key).or_insert((addr, St::Done, depth)).1 = St::Done;
                        if let Some(tok) = &r.token {
                            tokens.push(TokenNode { info: NodeInfo { id: rid, addr }, token: tok.clone() });
                        }
                    }
                    let (own, other) = if self.is_v6() { (&r.nodes6, &r.nodes) } else { (&r.nodes, &r.nodes6) };
                    if let Some(other) = other
                        && let Some(sibling) = self.sibling()
                    {
                        sibling.probe(if self.is_v6() { krpc::decode_nodes(other) } else { krpc::decode_nodes6(other) });
                    }
                    if let Some(nodes) = own {
                        let nodes = if self.is_v6() { krpc::decode_nodes6(nodes) } else { krpc::decode_nodes(nodes) };
                        for n in nodes {
                            if n.id == self.id {
                                continue;
                            }
                            cands.entry((routing::distance(&target, &n.id), n.id)).or_insert((n.addr, St::New, depth + 1));
                        }
                    }
                    if !visit(&r, addr) {
                        stop = true;
                    }
                    // bound memory: keep only the closest candidates
                    while cands.len() > 4 * MAX_WALK_QUERIES {
                        cands.pop_last();
                    }
                }
                Err(e) => {
                    if let Some(id) = id {
                        if let Some(c) = cands.get_mut(&(routing::distance(&target, &id), id)) {
                            c.1 = St::Failed;
                        }
                        if matches!(e, QueryError::Timeout) {
                            self.state().table.remove(&id);
                        }
                    }
                }
            }
            // Kademlia's end: once the K closest candidates still standing have all answered, the
            // rest (further away, slow or silent) is not waited for.
            if !stop && !set.is_empty() {
                let mut top = cands.values().filter(|(_, s, _)| *s != St::Failed).take(K).peekable();
                if top.peek().is_some() && top.all(|(_, s, _)| *s == St::Done) {
                    stop = true;
                }
            }
            if stop {
                set.abort_all();
            }
        }
        trace.queries = u32::try_from(queries).unwrap_or(u32::MAX);
        tokens.sort_by(|a, b| routing::cmp_distance(&target, &a.info.id, &b.info.id));
        tokens.dedup_by(|a, b| a.info.id == b.info.id);
        tokens.truncate(MAX_TABLE_NODES);
        tokens
    }

    fn cached_table(&self, tag: u8, target: &[u8]) -> Option<Arc<Vec<TokenNode>>> {
        let mut st = self.state();
        let key = (tag, target.to_vec());
        let routing = st.table.len();
        match st.tables.get(&key) {
            // An empty table (looked up while alone) is not worth keeping: walk again. Nor is one
            // built while the routing table was a lot smaller than now (a Grape that was still
            // joining, or a network that healed since): its nodes may not be the closest ones.
            Some((at, t, then)) if at.elapsed() < TABLE_TTL && !t.is_empty() && routing <= then + then / 4 + 1 => Some(t.clone()),
            Some(_) => {
                st.tables.pop(&key);
                None
            }
            None => None,
        }
    }

    /// A `get_peers` lookup, coalesced with identical lookups in flight.
    pub(crate) async fn lookup(self: &Arc<Self>, info_hash: &[u8]) -> Result<Arc<LookupOutcome>> {
        self.check_key_len(info_hash)?;
        let (rx, start) = {
            let mut st = self.state();
            let (tx, rx) = oneshot::channel();
            let start = match st.lookups.get_mut(info_hash) {
                Some(waiters) => {
                    waiters.push(tx);
                    false
                }
                None => {
                    st.lookups.insert(info_hash.to_vec(), vec![tx]);
                    true
                }
            };
            (rx, start)
        };
        if start {
            let inner = self.clone();
            let key = info_hash.to_vec();
            tokio::spawn(async move {
                struct Done(Arc<Inner>, Vec<u8>, Option<LookupResult>);
                impl Drop for Done {
                    fn drop(&mut self) {
                        let waiters = lock(&self.0.state).lookups.remove(&self.1).unwrap_or_default();
                        let result = self.2.take().unwrap_or_else(|| Err((ErrorKind::Cancelled, "DHT node is shut down".into())));
                        for w in waiters {
                            let _ = w.send(result.clone());
                        }
                    }
                }
                let mut done = Done(inner.clone(), key.clone(), None);
                let cancel = inner.cancel.clone();
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    out = inner.run_lookup(key) => { done.2 = Some(Ok(Arc::new(out))); }
                }
            });
        }
        match rx.await {
            Ok(Ok(o)) => Ok(o),
            Ok(Err((kind, msg))) => Err(Error::new(kind, msg)),
            Err(_) => Err(Error::new(ErrorKind::Cancelled, "DHT node is shut down")),
        }
    }

    async fn run_lookup(self: &Arc<Self>, info_hash: Vec<u8>) -> LookupOutcome {
        let mut seen: HashSet<SocketAddr> = HashSet::new();
        let mut peers = Vec::new();
        let mut gone: HashSet<SocketAddr> = HashSet::new();
        let local = self.state().peers.get(&info_hash, MAX_LOCAL_PEERS, Instant::now());
        for p in local {
            if seen.insert(p) {
                peers.push(p);
            }
        }
        let mut trace = WalkTrace::default();
        let table = self
            .walk_traced(
                info_hash.clone(),
                Method::GetPeers { info_hash: Some(info_hash.clone()) },
                false,
                |r, _| {
                    for v in r.values.iter().flatten() {
                        if let Some(p) = krpc::decode_peer(v)
                            && seen.insert(p)
                        {
                            peers.push(p);
                        }
                    }
                    // At most a tombstone list's worth from each reply.
                    for g in r.gone.iter().flatten().take(store::Tombstones::MAX_PER_KEY) {
                        if let Some(p) = krpc::decode_peer(g) {
                            gone.insert(p);
                        }
                    }
                    true
                },
                &mut trace,
            )
            .await;
        // Drop what was unannounced: the own tombstones, and those other nodes reported, unless
        // the own store holds the peer (it announced again since).
        let now = Instant::now();
        {
            let st = self.state();
            gone.extend(st.tombstones.get(&info_hash, now));
            let fresh: HashSet<SocketAddr> = st.peers.get(&info_hash, MAX_LOCAL_PEERS, now).into_iter().collect();
            gone.retain(|p| !fresh.contains(p));
        }
        peers.retain(|p| !gone.contains(p));
        for p in &peers {
            self.emit(DhtEvent::Peer { info_hash: info_hash.clone(), peer: *p });
        }
        let table = Arc::new(table);
        self.state().cache_table((0, info_hash), table.clone());
        LookupOutcome { peers, table, gone: gone.into_iter().collect(), trace }
    }

    /// Sends `make(node)` to every node, in parallel; counts successes (bittorrent-dht `queryAll`).
    async fn query_all<F>(self: &Arc<Self>, nodes: &[TokenNode], make: F) -> Result<usize>
    where
        F: Fn(&TokenNode) -> Method,
    {
        if nodes.is_empty() {
            return Err(Error::new(ErrorKind::NoNodes, "No nodes to query"));
        }
        let mut set = JoinSet::new();
        for n in nodes {
            let inner = self.clone();
            let m = make(n);
            let addr = n.info.addr;
            set.spawn(async move { inner.query(addr, m).await });
        }
        let mut hits = 0;
        let mut last_3xx: Option<KrpcError> = None;
        while let Some(r) = set.join_next().await {
            match r {
                Ok(Ok(_)) => hits += 1,
                Ok(Err(QueryError::Krpc(e))) if (300..400).contains(&e.code) => last_3xx = Some(e),
                _ => {}
            }
        }
        if hits > 0 {
            Ok(hits)
        } else if let Some(e) = last_3xx {
            Err(QueryError::Krpc(e).into_error())
        } else {
            Err(Error::new(ErrorKind::AllQueriesFailed, "All queries failed"))
        }
    }

    pub(crate) async fn announce(self: &Arc<Self>, info_hash: &[u8], port: u16) -> Result<usize> {
        self.check_key_len(info_hash)?;
        if port == 0 {
            return Err(Error::invalid("announce port must be 1..=65535"));
        }
        let table = match self.cached_table(0, info_hash) {
            Some(t) => t,
            None => self.lookup(info_hash).await?.table.clone(),
        };
        if let Some(host) = self.config.self_host.filter(|h| h.is_ipv6() == self.is_v6()) {
            let peer = SocketAddr::new(host, port);
            let added = self.state().peers.add(info_hash, peer, Instant::now());
            if matches!(added, AddPeer::Added | AddPeer::Refreshed) {
                self.emit(DhtEvent::Announce { info_hash: info_hash.to_vec(), peer });
            }
        }
        let r = self
            .query_all(&table, |n| Method::AnnouncePeer {
                info_hash: Some(info_hash.to_vec()),
                port: Some(i64::from(port)),
                implied_port: false,
                token: Some(n.token.clone()),
            })
            .await;
        self.forget_failed_table(0, info_hash, &r);
        r
    }

    /// Sends `unannounce_peer` to every token-holding node found for `info_hash` (the nodes an
    /// announce reaches) and waits at most [`UNANNOUNCE_WAIT`] for their answers. Removes the
    /// record from the own store too (`self_host`), and leaves tombstones for the addresses the
    /// answering nodes saw, so this node's own lookups stop returning it as well.
    pub(crate) async fn unannounce(self: &Arc<Self>, info_hash: &[u8], port: u16) -> Result<super::Unannounced> {
        self.check_key_len(info_hash)?;
        if port == 0 {
            return Err(Error::invalid("unannounce port must be 1..=65535"));
        }
        let table = match self.cached_table(0, info_hash) {
            Some(t) => t,
            None => self.lookup(info_hash).await?.table.clone(),
        };
        let mut removed: Vec<SocketAddr> = Vec::new();
        if let Some(host) = self.config.self_host.filter(|h| h.is_ipv6() == self.is_v6()) {
            removed.push(SocketAddr::new(host, port));
        }
        if table.is_empty() && removed.is_empty() {
            return Err(Error::new(ErrorKind::NoNodes, "No nodes to query"));
        }
        let wait = self.config.query_timeout.min(UNANNOUNCE_WAIT);
        let mut set = JoinSet::new();
        for n in table.iter() {
            let inner = self.clone();
            let m = Method::UnannouncePeer {
                info_hash: Some(info_hash.to_vec()),
                port: Some(i64::from(port)),
                implied_port: false,
                token: Some(n.token.clone()),
            };
            let addr = n.info.addr;
            set.spawn(async move { tokio::time::timeout(wait, inner.query(addr, m)).await });
        }
        let mut acks = 0;
        while let Some(r) = set.join_next().await {
            if let Ok(Ok(Ok(r))) = r {
                acks += 1;
                if let Some(p) = r.ip.as_deref().and_then(krpc::decode_peer)
                    && p.port() == port
                    && !removed.contains(&p)
                {
                    removed.push(p);
                }
            }
        }
        let now = Instant::now();
        let mut events = Vec::new();
        {
            let mut st = self.state();
            for p in &removed {
                st.peers.remove(info_hash, *p);
                st.tombstones.add(info_hash, *p, now);
                events.push(DhtEvent::Unannounce { info_hash: info_hash.to_vec(), peer: *p });
            }
        }
        for e in events {
            self.emit(e);
        }
        Ok(super::Unannounced { acks, removed })
    }

    /// Drops a cached table when nobody in it answered, so the next call walks again.
    fn forget_failed_table<T>(&self, tag: u8, target: &[u8], r: &Result<T>) {
        if let Err(e) = r
            && matches!(e.kind(), ErrorKind::AllQueriesFailed | ErrorKind::NoNodes)
        {
            self.state().tables.pop(&(tag, target.to_vec()));
        }
    }

    pub(crate) async fn put(self: &Arc<Self>, item: PutItem) -> Result<([u8; 20], usize)> {
        let (target, args, local) = match item {
            PutItem::Immutable { v_bencoded } => {
                let v = bencode::decode(&v_bencoded).map_err(|e| Error::invalid(format!("v is not bencode: {e}")))?;
                if store::v_too_big(&v, &v_bencoded) {
                    return Err(Error::invalid("v must be less than 1000 bytes in put()"));
                }
                let target = store::sha1(&v_bencoded);
                let args = PutArgs { v: Some(v), ..Default::default() };
                (target, args, Some(StoredItem { v_bencoded, mutable: None }))
            }
            PutItem::Mutable { v_bencoded, k, sig, seq, salt, cas } => {
                let v = bencode::decode(&v_bencoded).map_err(|e| Error::invalid(format!("v is not bencode: {e}")))?;
                if store::v_too_big(&v, &v_bencoded) {
                    return Err(Error::invalid("v must be less than 1000 bytes in put()"));
                }
                let salt = salt.filter(|s| !s.is_empty());
                if salt.as_ref().is_some_and(|s| s.len() > 64) {
                    return Err(Error::invalid("opts.salt is > 64 bytes long"));
                }
                let target = store::mutable_target(&k, salt.as_deref().unwrap_or_default());
                let args = PutArgs { v: Some(v), k: Some(k.to_vec()), sig: Some(sig.to_vec()), seq: Some(seq), salt, cas, token: None };
                (target, args, None)
            }
        };
        if let Some(item) = local {
            self.state().values.insert(target, item);
        }
        let table = match self.cached_table(1, &target) {
            Some(t) => t,
            None => {
                let t = Arc::new(self.walk(target.to_vec(), Method::Get { target: Some(target.to_vec()) }, false, |_, _| true).await);
                self.state().cache_table((1, target.to_vec()), t.clone());
                t
            }
        };
        let r = self
            .query_all(&table, |n| {
                let mut a = args.clone();
                a.token = Some(n.token.clone());
                Method::Put(a)
            })
            .await;
        self.forget_failed_table(1, &target, &r);
        Ok((target, r?))
    }

    pub(crate) async fn get(self: &Arc<Self>, target: [u8; 20], salt: Option<&[u8]>, use_local: bool) -> Result<Option<GetResult>> {
        if use_local && let Some(it) = self.state().values.get(&target).cloned() {
            return Ok(Some(GetResult {
                id: self.id,
                token: None,
                v_bencoded: it.v_bencoded,
                mutable: it.mutable.map(|m| MutableMeta { k: m.k, sig: m.sig, seq: m.seq }),
                local: true,
            }));
        }
        let salt = salt.filter(|s| !s.is_empty());
        let mut best: Option<GetResult> = None;
        let table = self
            .walk(target.to_vec(), Method::Get { target: Some(target.to_vec()) }, false, |r, _| {
                let (Some(v), Some(id)) = (&r.v, r.id.as_deref().and_then(|i| <[u8; 20]>::try_from(i).ok())) else {
                    return true;
                };
                let v_bencoded = v.encode();
                match (&r.k, &r.sig) {
                    (None, None) => {
                        if store::sha1(&v_bencoded) == target {
                            best = Some(GetResult { id, token: r.token.clone(), v_bencoded, mutable: None, local: false });
                            return false;
                        }
                        true
                    }
                    (Some(k), Some(sig)) => {
                        let (Ok(k), Ok(sig)) = (<[u8; 32]>::try_from(k.as_slice()), <[u8; 64]>::try_from(sig.as_slice())) else {
                            return true;
                        };
                        let seq = r.seq.unwrap_or(0);
                        if store::mutable_target(&k, salt.unwrap_or_default()) != target
                            || !store::verify_sig(&k, &sig, &store::sig_data(salt, seq, &v_bencoded))
                        {
                            return true;
                        }
                        if best.as_ref().and_then(|b| b.mutable.as_ref()).is_none_or(|m| seq > m.seq) {
                            best = Some(GetResult {
                                id,
                                token: r.token.clone(),
                                v_bencoded,
                                mutable: Some(MutableMeta { k, sig, seq }),
                                local: false,
                            });
                        }
                        true
                    }
                    _ => true,
                }
            })
            .await;
        self.state().cache_table((1, target.to_vec()), Arc::new(table));
        Ok(best)
    }

    // ---------------------------------------------------------------- maintenance

    async fn maintenance(self: Arc<Inner>) {
        let start = Instant::now();
        let mut last_rotation = start;
        let mut last_sweep = start;
        let mut next_liveness = start + random_liveness_delay(self.config.node_liveness);
        let sweep_every = self.config.peer_max_age.clamp(Duration::from_secs(1), Duration::from_secs(60));
        let running = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = Instant::now();
            if now.duration_since(last_rotation) >= SECRET_ROTATION {
                last_rotation = now;
                self.state().tokens.rotate();
            }
            if now.duration_since(last_sweep) >= sweep_every {
                last_sweep = now;
                self.state().peers.sweep(now);
            }
            if now >= next_liveness && !running.load(std::sync::atomic::Ordering::Acquire) {
                next_liveness = now + random_liveness_delay(self.config.node_liveness);
                running.store(true, std::sync::atomic::Ordering::Release);
                let inner = self.clone();
                let cancel = self.cancel.clone();
                let running = running.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = cancel.cancelled() => {}
                        _ = inner.check_liveness() => {}
                    }
                    running.store(false, std::sync::atomic::Ordering::Release);
                });
            }
        }
    }

    /// If the table has not changed for `node_liveness`, pings every node and drops dead ones;
    /// re-bootstraps when the table ends up empty.
    pub(crate) async fn check_liveness(self: &Arc<Self>) {
        let (idle, nodes) = {
            let st = self.state();
            (st.table.last_change.elapsed() >= self.config.node_liveness, st.table.all())
        };
        if idle {
            let mut set = JoinSet::new();
            for n in nodes {
                while set.len() >= 16 {
                    set.join_next().await;
                }
                let inner = self.clone();
                set.spawn(async move {
                    if inner.maint_query(n.addr, Method::Ping).await.is_err() {
                        inner.state().table.remove(&n.id);
                    }
                });
            }
            while set.join_next().await.is_some() {}
            self.state().table.last_change = Instant::now();
        }
        if self.state().table.is_empty() && !self.config.bootstrap.is_empty() {
            self.bootstrap().await;
        }
    }
}

/// The address others reach a node bound to `local` at: `local` itself, or when it is
/// unspecified the source address the host's routes pick towards a global address (a UDP
/// `connect` sends nothing); `None` when there is no such route.
fn advertised(local: SocketAddr) -> Option<SocketAddr> {
    if !local.ip().is_unspecified() {
        return Some(local);
    }
    let (any, probe): (SocketAddr, SocketAddr) = if local.is_ipv6() {
        (
            SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0)),
            SocketAddr::from((std::net::Ipv6Addr::new(0x2001, 0x4860, 0, 0, 0, 0, 0, 0x8888), 53)),
        )
    } else {
        (SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)), SocketAddr::from((Ipv4Addr::new(192, 0, 2, 1), 53)))
    };
    let s = std::net::UdpSocket::bind(any).ok()?;
    s.connect(probe).ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_unspecified()).then_some(SocketAddr::new(ip, local.port()))
}

/// A UDP socket bound to `addr`; an IPv6 address gets an IPv6-only socket (`IPV6_V6ONLY`), so
/// that IPv4 traffic goes to the IPv4 socket of a dual-stack node, or nowhere.
pub(crate) fn bind_udp(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

/// Delay until the next liveness check: 30-90 s like bittorrent-dht, but never more than
/// 0.5-1.5x `node_liveness` (so short liveness settings, e.g. in tests, are honoured), and
/// at least 100 ms.
fn random_liveness_delay(node_liveness: Duration) -> Duration {
    let mut rng = rand::thread_rng();
    let classic = Duration::from_millis(rng.gen_range(30_000..90_000));
    let scaled = node_liveness.mul_f64(rng.gen_range(0.5..1.5));
    classic.min(scaled).max(Duration::from_millis(100))
}

/// How long tombstones live: twice the peer max age (a Node Grape keeps a record up to 1.33x
/// it), between 1 s and 10 min; 10 min when records never expire.
fn tombstone_ttl(peer_max_age: Duration) -> Duration {
    if peer_max_age.is_zero() {
        return Duration::from_secs(600);
    }
    peer_max_age.saturating_mul(2).clamp(Duration::from_secs(1), Duration::from_secs(600))
}

/// Locks a mutex, recovering from poisoning (a panic elsewhere must not stop the node).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Clone for LookupOutcome {
    fn clone(&self) -> Self {
        LookupOutcome { peers: self.peers.clone(), table: self.table.clone(), gone: self.gone.clone(), trace: self.trace }
    }
}

/// The placeholder that [`answer_datagrams`] replaces with a valid token for 127.0.0.1.
pub const FUZZ_TOKEN_PLACEHOLDER: &[u8; 20] = b"TOKENTOKENTOKENTOKEN";

/// Feeds datagrams (all from `127.0.0.1:6881`) to one fresh node state, without a socket, and
/// returns the reply to each (for fuzzing). Every occurrence of [`FUZZ_TOKEN_PLACEHOLDER`] is
/// first replaced by a valid token, so announce and put paths are reachable.
pub fn answer_datagrams(datagrams: &[&[u8]]) -> Vec<Option<Vec<u8>>> {
    let cfg = DhtConfig { max_peers: 64, max_values: 16, ..DhtConfig::default() };
    let mut st = State::new([0x55; 20], &cfg);
    let from = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 6881);
    let token = st.tokens.generate(from.ip());
    let now = Instant::now();
    datagrams
        .iter()
        .map(|d| {
            let mut d = d.to_vec();
            let mut i = 0;
            while i + 20 <= d.len() {
                if &d[i..i + 20] == FUZZ_TOKEN_PLACEHOLDER {
                    d[i..i + 20].copy_from_slice(&token);
                    i += 20;
                } else {
                    i += 1;
                }
            }
            let msg = krpc::decode(&d).ok()?;
            let Body::Query(q) = msg.body else { return None };
            if let Some(id) = q.id.as_deref().and_then(|i| <[u8; 20]>::try_from(i).ok()) {
                st.table.insert(NodeInfo { id, addr: from }, now);
            }
            let reply = st.handle_query(&q, from, now).reply?;
            let bytes = Message { t: msg.t, body: reply }.encode();
            assert!(bytes.len() <= 65_507, "reply too large");
            Some(bytes)
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::dht::bencode::Value;

    fn state() -> State {
        let cfg = DhtConfig { peer_max_age: Duration::from_secs(60), ..DhtConfig::default() };
        State::new([9; 20], &cfg)
    }

    fn from() -> SocketAddr {
        "127.0.0.1:5555".parse().unwrap()
    }

    fn query(method: Method) -> Query {
        Query { id: Some(vec![1; 20]), method, read_only: false, want: None }
    }

    #[test]
    fn ping_and_unknown() {
        let mut s = state();
        let h = s.handle_query(&query(Method::Ping), from(), Instant::now());
        assert_eq!(h.reply, Some(Body::Response(Response { id: Some(vec![9; 20]), ..Default::default() })));
        assert!(s.handle_query(&query(Method::Other(b"vote".to_vec())), from(), Instant::now()).reply.is_none());
    }

    #[test]
    fn find_node_and_get_peers_errors() {
        let mut s = state();
        let h = s.handle_query(&query(Method::FindNode { target: None }), from(), Instant::now());
        assert_eq!(h.reply, Some(Body::Error(KrpcError::new(203, "`find_node` missing required `a.target` field"))));
        let h = s.handle_query(&query(Method::GetPeers { info_hash: None }), from(), Instant::now());
        assert_eq!(h.reply, Some(Body::Error(KrpcError::new(203, "`get_peers` missing required `a.info_hash` field"))));
        let h = s.handle_query(&query(Method::FindNode { target: Some(vec![1; 20]) }), from(), Instant::now());
        assert_eq!(h.reply, Some(Body::Response(Response { id: Some(vec![9; 20]), nodes: Some(vec![]), ..Default::default() })));
        assert!(s.handle_query(&query(Method::Get { target: None }), from(), Instant::now()).reply.is_none());
    }

    #[test]
    fn announce_flow_with_tokens_and_ports() {
        let mut s = state();
        let now = Instant::now();
        let ih = b"rest:util:net".to_vec();
        let h = s.handle_query(&query(Method::GetPeers { info_hash: Some(ih.clone()) }), from(), now);
        let Some(Body::Response(r)) = h.reply else { panic!() };
        let token = r.token.unwrap();
        assert_eq!(token.len(), 20);
        assert!(r.values.is_none() && r.nodes.is_some());
        let ann = |port: Option<i64>, implied: bool, token: Option<Vec<u8>>| {
            query(Method::AnnouncePeer { info_hash: Some(ih.clone()), port, implied_port: implied, token })
        };
        // no token, bad ports: no reply
        assert!(s.handle_query(&ann(Some(1337), false, None), from(), now).reply.is_none());
        for p in [70000, -5, 0] {
            assert!(s.handle_query(&ann(Some(p), false, Some(token.clone())), from(), now).reply.is_none());
        }
        assert!(s.handle_query(&ann(None, false, Some(token.clone())), from(), now).reply.is_none());
        // bad token: 203
        let h = s.handle_query(&ann(Some(1337), false, Some(b"tok1".to_vec())), from(), now);
        assert_eq!(h.reply, Some(Body::Error(KrpcError::new(203, "cannot `announce_peer` with bad token"))));
        // token from another IP: 203
        let other: SocketAddr = "127.0.0.2:5555".parse().unwrap();
        assert!(matches!(s.handle_query(&ann(Some(1337), false, Some(token.clone())), other, now).reply, Some(Body::Error(_))));
        // ok
        let h = s.handle_query(&ann(Some(1337), false, Some(token.clone())), from(), now);
        assert!(matches!(h.reply, Some(Body::Response(_))));
        assert_eq!(h.event, Some(DhtEvent::Announce { info_hash: ih.clone(), peer: "127.0.0.1:1337".parse().unwrap() }));
        // implied_port uses the source port
        let h = s.handle_query(&ann(Some(1), true, Some(token.clone())), from(), now);
        assert!(matches!(h.reply, Some(Body::Response(_))));
        let h = s.handle_query(&query(Method::GetPeers { info_hash: Some(ih.clone()) }), from(), now);
        let Some(Body::Response(r)) = h.reply else { panic!() };
        let mut got: Vec<_> = r.values.unwrap().iter().filter_map(|v| krpc::decode_peer(v)).collect();
        got.sort();
        assert_eq!(got, vec!["127.0.0.1:1337".parse().unwrap(), "127.0.0.1:5555".parse().unwrap()]);
        assert!(r.nodes.is_none());
    }

    #[test]
    fn unannounce_removes_only_the_senders_record_with_its_token() {
        let mut s = state();
        let now = Instant::now();
        let ih = b"svc:unann".to_vec();
        let a: SocketAddr = "127.0.0.1:5555".parse().unwrap();
        let b: SocketAddr = "127.0.0.2:5555".parse().unwrap();
        let token_of = |s: &mut State, from: SocketAddr| {
            let h = s.handle_query(&query(Method::GetPeers { info_hash: Some(ih.clone()) }), from, now);
            let Some(Body::Response(r)) = h.reply else { panic!() };
            r.token.unwrap()
        };
        let (ta, tb) = (token_of(&mut s, a), token_of(&mut s, b));
        let ann = |port, token: &Vec<u8>| {
            query(Method::AnnouncePeer { info_hash: Some(ih.clone()), port: Some(port), implied_port: false, token: Some(token.clone()) })
        };
        let unann = |port, token: Option<&Vec<u8>>| {
            query(Method::UnannouncePeer { info_hash: Some(ih.clone()), port: Some(port), implied_port: false, token: token.cloned() })
        };
        assert!(matches!(s.handle_query(&ann(1337, &ta), a, now).reply, Some(Body::Response(_))));
        assert!(matches!(s.handle_query(&ann(1338, &tb), b, now).reply, Some(Body::Response(_))));
        // Another address cannot remove 127.0.0.1:1337: with its own token it only names
        // 127.0.0.2:1337, which does not exist; with A's token it is refused.
        let h = s.handle_query(&unann(1337, Some(&tb)), b, now);
        let Some(Body::Response(r)) = h.reply else { panic!("{:?}", h.reply) };
        assert_eq!(r.ip, Some(krpc::encode_peer("127.0.0.2:1337".parse().unwrap()).to_vec()));
        assert!(h.event.is_none());
        let h = s.handle_query(&unann(1337, Some(&ta)), b, now);
        assert_eq!(h.reply, Some(Body::Error(KrpcError::new(203, "cannot `unannounce_peer` with bad token"))));
        assert!(s.handle_query(&unann(1337, None), b, now).reply.is_none(), "no token: dropped");
        assert!(s.handle_query(&unann(70000, Some(&tb)), b, now).reply.is_none(), "bad port: dropped");
        assert_eq!(s.peers.get(&ih, 10, now).len(), 2, "nothing removed");
        assert_eq!(s.unannounces, UnannounceCounts { applied: 0, unknown: 1, refused: 3 });
        assert!(s.tombstones.is_empty(), "refused and unknown unannounces leave nothing behind");
        // The announcer removes its own record.
        let h = s.handle_query(&unann(1337, Some(&ta)), a, now);
        assert!(matches!(h.reply, Some(Body::Response(_))));
        assert_eq!(h.event, Some(DhtEvent::Unannounce { info_hash: ih.clone(), peer: "127.0.0.1:1337".parse().unwrap() }));
        assert_eq!(s.peers.get(&ih, 10, now), vec!["127.0.0.2:1338".parse().unwrap()]);
        assert_eq!(s.unannounces.applied, 1);
        // get_peers now tells about it (`gone`) besides the remaining values.
        let h = s.handle_query(&query(Method::GetPeers { info_hash: Some(ih.clone()) }), b, now);
        let Some(Body::Response(r)) = h.reply else { panic!() };
        assert_eq!(r.gone, Some(vec![krpc::encode_peer("127.0.0.1:1337".parse().unwrap()).to_vec()]));
        assert_eq!(r.values.map(|v| v.len()), Some(1));
        // Announcing again brings it back and clears the tombstone.
        assert!(matches!(s.handle_query(&ann(1337, &ta), a, now).reply, Some(Body::Response(_))));
        assert!(s.tombstones.is_empty());
        let h = s.handle_query(&query(Method::GetPeers { info_hash: Some(ih.clone()) }), b, now);
        let Some(Body::Response(r)) = h.reply else { panic!() };
        assert!(r.gone.is_none());
        assert_eq!(r.values.map(|v| v.len()), Some(2));
    }

    #[test]
    fn a_flood_of_unannounces_is_bounded() {
        let mut s = state();
        let now = Instant::now();
        let a: SocketAddr = "127.0.0.1:5555".parse().unwrap();
        let token = s.tokens.generate(a.ip()).to_vec();
        for i in 0..20_000u32 {
            let ih = format!("svc:{i}").into_bytes();
            let ann = query(Method::AnnouncePeer {
                info_hash: Some(ih.clone()),
                port: Some(1000),
                implied_port: false,
                token: Some(token.clone()),
            });
            if i % 2 == 0 {
                s.handle_query(&ann, a, now);
            }
            let un =
                query(Method::UnannouncePeer { info_hash: Some(ih), port: Some(1000), implied_port: false, token: Some(token.clone()) });
            s.handle_query(&un, a, now);
        }
        assert_eq!(s.unannounces.applied, 10_000);
        assert_eq!(s.unannounces.unknown, 10_000);
        assert!(s.peers.is_empty());
        assert!(s.tombstones.len() <= Tombstones::MAX_KEYS, "{}", s.tombstones.len());
        // One name unannounced from many ports: at most MAX_PER_KEY tombstones for it.
        for port in 1..=1000u16 {
            let ih = b"hot".to_vec();
            s.handle_query(
                &query(Method::AnnouncePeer {
                    info_hash: Some(ih.clone()),
                    port: Some(i64::from(port)),
                    implied_port: false,
                    token: Some(token.clone()),
                }),
                a,
                now,
            );
            s.handle_query(
                &query(Method::UnannouncePeer {
                    info_hash: Some(ih),
                    port: Some(i64::from(port)),
                    implied_port: false,
                    token: Some(token.clone()),
                }),
                a,
                now,
            );
        }
        assert_eq!(s.tombstones.get(b"hot", now).len(), Tombstones::MAX_PER_KEY);
    }

    #[test]
    fn answer_datagrams_reaches_the_announce_path() {
        let flow: Vec<&[u8]> = vec![
            b"d1:ad2:id20:abcdefghij012345678912:implied_porti0e9:info_hash3:svc4:porti7000e5:token20:TOKENTOKENTOKENTOKENe1:q13:announce_peer1:t2:ab1:y1:qe",
            b"d1:ad2:id20:abcdefghij01234567899:info_hash3:svce1:q9:get_peers1:t2:ac1:y1:qe",
            b"d1:t2:aa1:y1:qe",
        ];
        let r = answer_datagrams(&flow);
        assert_eq!(r[0].as_deref(), Some(&b"d1:rd2:id20:UUUUUUUUUUUUUUUUUUUUe1:t2:ab1:y1:re"[..]));
        let Body::Response(gp) = krpc::decode(r[1].as_ref().unwrap()).unwrap().body else { panic!() };
        assert_eq!(gp.values, Some(vec![vec![127, 0, 0, 1, 0x1b, 0x58]]));
        assert_eq!(r[2], None);
    }

    #[test]
    fn put_get_flow() {
        let mut s = state();
        let now = Instant::now();
        let target = store::sha1(b"11:hello world");
        let h = s.handle_query(&query(Method::Get { target: Some(target.to_vec()) }), from(), now);
        let Some(Body::Response(r)) = h.reply else { panic!() };
        let token = r.token.unwrap();
        assert!(r.v.is_none());
        let put = |token: Option<Vec<u8>>| {
            query(Method::Put(PutArgs { token, v: Some(Value::Bytes(b"hello world".to_vec())), ..Default::default() }))
        };
        assert!(s.handle_query(&put(None), from(), now).reply.is_none());
        assert_eq!(
            s.handle_query(&put(Some(b"bad".to_vec())), from(), now).reply,
            Some(Body::Error(KrpcError::new(203, "cannot `put` with bad token")))
        );
        assert!(matches!(s.handle_query(&put(Some(token.clone())), from(), now).reply, Some(Body::Response(_))));
        let h = s.handle_query(&query(Method::Get { target: Some(target.to_vec()) }), from(), now);
        let Some(Body::Response(r)) = h.reply else { panic!() };
        assert_eq!(r.v, Some(Value::Bytes(b"hello world".to_vec())));
        assert!(r.nodes.is_none());
        assert_eq!(r.token, Some(token));
    }
}
