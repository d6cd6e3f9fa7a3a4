//! The KRPC DHT node, wire-compatible with `bittorrent-dht` 10.0.0 as run by Node Grapes.
//!
//! CONTRACT (used by `grape`): the public API of [`Dht`] below. Bodies are filled in by the DHT work.

use std::net::{SocketAddr, SocketAddrV4};
use std::time::Duration;

use crate::error::Result;

/// Configuration of a DHT node. Defaults are the Grape's documented ones.
#[derive(Debug, Clone)]
pub struct DhtConfig {
    /// UDP bind address. Default `0.0.0.0:20001`; use port 0 in tests.
    pub bind: SocketAddr,
    /// Bootstrap nodes as `"host:port"`.
    pub bootstrap: Vec<String>,
    /// How long an announced peer is kept (`dht_peer_maxAge`). Default 120 s.
    pub peer_max_age: Duration,
    /// Upper bound on stored peers, over all keys. Default 10 000... (the DHT work may raise it).
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
    /// When set, an announce also stores `host:port` in this node's own peer store (the Grape's `host`).
    pub self_host: Option<std::net::Ipv4Addr>,
}

/// An event from the DHT node (the Grape re-emits these).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum DhtEvent {
    /// The UDP socket is bound.
    Listening(SocketAddr),
    /// The bootstrap walk finished (fires even if every bootstrap node was unreachable).
    Ready,
    /// A node was added to the routing table.
    Node(SocketAddr),
    /// A malformed or unexpected datagram was dropped.
    Warning(String),
    /// A peer was stored in this node's peer store for `info_hash`.
    Announce {
        /// The raw info-hash bytes (a Grenache service name's UTF-8 bytes).
        info_hash: Vec<u8>,
        /// The stored peer.
        peer: SocketAddrV4,
    },
    /// A lookup found a peer.
    Peer {
        /// The raw info-hash bytes.
        info_hash: Vec<u8>,
        /// The peer found.
        peer: SocketAddrV4,
    },
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
#[derive(Debug, Clone)]
pub struct Dht {
    _private: (),
}

impl Dht {
    /// Binds the UDP socket and starts the node (and its bootstrap walk).
    pub async fn bind(_config: DhtConfig) -> Result<Dht> {
        todo!("dht")
    }
    /// The bound UDP address.
    pub fn local_addr(&self) -> SocketAddr {
        todo!("dht")
    }
    /// This node's 20-byte id.
    pub fn id(&self) -> [u8; 20] {
        todo!("dht")
    }
    /// Subscribes to events.
    pub fn events(&self) -> tokio::sync::broadcast::Receiver<DhtEvent> {
        todo!("dht")
    }
    /// Resolves once the bootstrap walk has finished.
    pub async fn ready(&self) {
        todo!("dht")
    }
    /// Announces `port` for `info_hash` to every token-holding node found by a lookup.
    /// Returns how many nodes acknowledged. Errors: NoNodes, AllQueriesFailed, or a KRPC 3xx.
    pub async fn announce(&self, _info_hash: &[u8], _port: u16) -> Result<usize> {
        todo!("dht")
    }
    /// Iterative `get_peers`: the peers found (own store + network), without duplicates.
    pub async fn lookup(&self, _info_hash: &[u8]) -> Result<Vec<SocketAddrV4>> {
        todo!("dht")
    }
    /// BEP44 put. Returns the 20-byte target and how many nodes stored it.
    pub async fn put(&self, _item: PutItem) -> Result<([u8; 20], usize)> {
        todo!("dht")
    }
    /// BEP44 get. `salt` is needed to verify salted mutable items; `use_local` consults the own store.
    pub async fn get(&self, _target: [u8; 20], _salt: Option<&[u8]>, _use_local: bool) -> Result<Option<GetResult>> {
        todo!("dht")
    }
    /// Adds a node to contact (like bittorrent-dht's `addNode`).
    pub fn add_node(&self, _addr: SocketAddr) {
        todo!("dht")
    }
    /// Stops the node and frees the UDP port. Pending operations fail with `Cancelled`.
    pub async fn shutdown(&self) {
        todo!("dht")
    }
}
