//! The Grape: a DHT node plus the HTTP API (`/announce`, `/lookup`, `/put`, `/get`).
//!
//! A Grape is two servers in one: a UDP KRPC DHT node ([`crate::dht::Dht`]) and an HTTP/1.1 JSON
//! API that services and clients call (grenache-nodejs-link, grenache-cli, our `link`). It is
//! wire-compatible with grenache-grape 1.0.0; see `grape-protocol.md` and `docs/compat.md`.
//!
//! ```no_run
//! # async fn demo() -> grenache::Result<()> {
//! use grenache::grape::{Grape, GrapeConfig};
//! let mut config = GrapeConfig::default();
//! config.dht_port(0).api_port(0).bootstrap(vec!["127.0.0.1:20001".into()]);
//! let grape = Grape::start(config).await?;
//! println!("API on http://{}", grape.api_addr());
//! grape.stop().await;
//! # Ok(()) }
//! ```
//!
//! For tests, [`Testnet`] starts a few local Grapes that know each other.

pub mod api;
pub mod cache;
mod http;
mod testnet;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::dht::{Dht, DhtConfig, DhtEvent, DhtState, PutItem};
use crate::error::{Error, ErrorKind, Result};
use api::{ApiReply, ApiRequest};
use cache::LookupCache;

pub use testnet::Testnet;

/// At most this many peers in a `/lookup` reply.
pub const LOOKUP_MAX_PEERS: usize = 100;
/// Records per generation in the lookup cache (the reference's fixed 5000).
pub const LOOKUP_CACHE_SIZE: usize = 5000;
/// Capacity of the event channel; a slow subscriber loses the oldest events (`Lagged`).
pub const EVENT_CAPACITY: usize = 1024;
/// Size of the per-(name, port) re-announce memory (see [`GrapeConfig::announce_window`]).
const RECENT_ANNOUNCES: std::num::NonZeroUsize = match std::num::NonZeroUsize::new(10_000) {
    Some(n) => n,
    None => std::num::NonZeroUsize::MIN,
};
/// Last successful announce (time, node count) per (name, port).
type RecentAnnounces = lru::LruCache<(Vec<u8>, u16), (std::time::Instant, usize)>;
/// Upper bound on any single DHT operation started by an HTTP request.
const DHT_OP_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether a Grape's DHT also runs over IPv6 (BEP 32), beside IPv4. See [`GrapeConfig::dht_ipv6`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum DhtIpv6 {
    /// Dual-stack where the host has IPv6: when the DHT binds every IPv4 address (`0.0.0.0`, the
    /// default), a second, IPv6-only socket binds `[::]` on the same port; a host without IPv6
    /// runs IPv4 only (with a log line). With any other IPv4 bind address: IPv4 only.
    #[default]
    Auto,
    /// IPv4 only.
    Off,
    /// Dual-stack, the IPv6 socket bound to this address (same port as IPv4 when free); the
    /// Grape does not start when it cannot be bound.
    Bind(Ipv6Addr),
}

/// Configuration of a [`Grape`]. Defaults are the reference's documented ones (`grape-protocol.md`
/// §6.1), **not** the 1.0.0 CLI's accidental ones (no expiry, no size limit).
///
/// Setters return `&mut Self` so they chain:
/// ```
/// let mut c = grenache::grape::GrapeConfig::default();
/// c.dht_port(0).api_port(0).peer_max_age(std::time::Duration::from_millis(200));
/// ```
#[derive(Debug, Clone)]
pub struct GrapeConfig {
    host: Option<IpAddr>,
    dht_bind: IpAddr,
    dht_ipv6: DhtIpv6,
    announce_ipv6: bool,
    dht_port: u16,
    api_port: Option<u16>,
    bootstrap: Vec<String>,
    peer_max_age: Duration,
    max_tables: usize,
    max_values: usize,
    max_peers: usize,
    node_liveness: Duration,
    check_max_payload_size: usize,
    max_connections: usize,
    max_connections_per_ip: usize,
    deadlines: crate::transport::ReadDeadlines,
    dht_limits: crate::dht::limits::DhtLimits,
    announce_window: Option<Duration>,
    lookup_window: Option<Duration>,
    dht_state: Option<std::path::PathBuf>,
}

impl Default for GrapeConfig {
    fn default() -> GrapeConfig {
        GrapeConfig {
            host: None,
            dht_bind: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            dht_ipv6: DhtIpv6::Auto,
            announce_ipv6: false,
            dht_port: 20001,
            api_port: None,
            bootstrap: Vec::new(),
            peer_max_age: Duration::from_secs(120),
            max_tables: 5000,
            max_values: 5000,
            max_peers: 1_000_000,
            node_liveness: Duration::from_secs(300),
            check_max_payload_size: 8192,
            max_connections: 10_000,
            max_connections_per_ip: crate::transport::ConnLimits::default().max_per_ip,
            // Bodies are at most `check_max_payload_size` (8 KiB): 10 s is plenty.
            deadlines: crate::transport::ReadDeadlines { body: Duration::from_secs(10), ..Default::default() },
            dht_limits: crate::dht::limits::DhtLimits::default(),
            announce_window: None,
            lookup_window: None,
            dht_state: None,
        }
    }
}

/// The numeric settings of [`GrapeConfig`] by name, in the order the C ABI numbers them
/// (`grenache_grape_option`). Every face sets them through [`GrapeConfig::set`], so names, units
/// and checks are the same everywhere. Durations are in milliseconds, sizes in bytes.
pub const GRAPE_OPTION_NAMES: [&str; 22] = [
    "dht_port",
    "api_port",
    "peer_max_age_ms",
    "node_liveness_ms",
    "max_tables",
    "max_values",
    "max_peers",
    "max_payload_size",
    "max_connections",
    "announce_window_ms",
    "lookup_window_ms",
    "max_connections_per_ip",
    "header_timeout_ms",
    "body_timeout_ms",
    "body_min_rate",
    "idle_timeout_ms",
    "max_key_len",
    "peer_store_bytes",
    "max_records_per_ip",
    "queries_per_ip",
    "dht_ipv6",
    "announce_ipv6",
];

impl GrapeConfig {
    /// Sets the numeric option `name` (one of [`GRAPE_OPTION_NAMES`], matched ignoring case,
    /// underscores and dashes, so `peerMaxAgeMs` works too) to `value`. `dht_ipv6` is 0 (IPv4
    /// only), 1 ([`DhtIpv6::Auto`], the default) or 2 (dual-stack on `[::]`, required);
    /// `announce_ipv6` is 0 or 1. Errors: `InvalidArgument` for an unknown name, a port above
    /// 65535 or a `dht_ipv6` above 2.
    pub fn set(&mut self, name: &str, value: u64) -> crate::Result<&mut Self> {
        let index = crate::transport::option_index(&GRAPE_OPTION_NAMES, name)
            .ok_or_else(|| crate::Error::invalid(format!("unknown Grape option {name:?} (one of {})", GRAPE_OPTION_NAMES.join(", "))))?;
        let ms = Duration::from_millis(value);
        let n = usize::try_from(value).unwrap_or(usize::MAX);
        let port = || u16::try_from(value).map_err(|_| crate::Error::invalid(format!("{name} {value} is not a port")));
        match index {
            0 => self.dht_port(port()?),
            1 => self.api_port(port()?),
            2 => self.peer_max_age(ms),
            3 => self.node_liveness(ms),
            4 => self.max_tables(n),
            5 => self.max_values(n),
            6 => self.max_peers(n),
            7 => self.check_max_payload_size(n),
            8 => self.max_connections(n),
            9 => self.announce_window(ms),
            10 => self.lookup_window(ms),
            11 => self.max_connections_per_ip(n),
            12..=15 => {
                let mut d = self.get_read_deadlines();
                match index {
                    12 => d.header = ms,
                    13 => d.body = ms,
                    14 => d.body_min_rate = value,
                    _ => d.idle = ms,
                }
                self.read_deadlines(d)
            }
            20 => self.dht_ipv6(match value {
                0 => DhtIpv6::Off,
                1 => DhtIpv6::Auto,
                2 => DhtIpv6::Bind(Ipv6Addr::UNSPECIFIED),
                _ => return Err(crate::Error::invalid(format!("{name} {value} is not 0 (off), 1 (auto) or 2 (on)"))),
            }),
            21 => self.announce_ipv6(value != 0),
            _ => {
                let mut l = self.get_dht_limits();
                match index {
                    16 => l.peer_store.max_key_len = n,
                    17 => l.peer_store.max_bytes = n,
                    18 => l.peer_store.max_per_source = n,
                    _ => {
                        l.queries_per_second = value as f64;
                        l.query_burst = (value as f64 * 2.0).max(1.0);
                    }
                }
                self.dht_limits(l)
            }
        };
        Ok(self)
    }

    /// A default configuration (see each setter for its default).
    pub fn new() -> GrapeConfig {
        GrapeConfig::default()
    }

    /// Address the HTTP API binds to (the reference's `host`, CLI `-b`). When it is an IPv4
    /// address, an announce also stores `host:port` in this Grape's own peer store.
    ///
    /// Default is `None`: the API listens on every IPv4 address (`0.0.0.0`).
    pub fn host(&mut self, host: Option<IpAddr>) -> &mut Self {
        self.host = host;
        self
    }

    /// Address the UDP DHT socket binds to (the reference always uses `0.0.0.0`; tests use
    /// `127.0.0.1`). An IPv6 address (e.g. `::` or `::1`) makes an IPv6-only DHT (BEP 32), which
    /// joins other IPv6 Grapes of ours but not Node Grapes (IPv4 only).
    ///
    /// Default is `0.0.0.0` (and IPv6 beside it where the host has it: see
    /// [`GrapeConfig::dht_ipv6`]).
    pub fn dht_bind(&mut self, ip: IpAddr) -> &mut Self {
        self.dht_bind = ip;
        self
    }

    /// Whether the DHT also runs over IPv6 when `dht_bind` is IPv4 (BEP 32 dual-stack: one
    /// routing table per address family, lookups search both and merge what they find, Node
    /// Grapes keep talking IPv4 as before). `grape --dht-bind6 IP` / `--no-ipv6`.
    ///
    /// Default is [`DhtIpv6::Auto`]: `[::]` beside `0.0.0.0` where the host has IPv6.
    pub fn dht_ipv6(&mut self, mode: DhtIpv6) -> &mut Self {
        self.dht_ipv6 = mode;
        self
    }

    /// On a dual-stack DHT, announce services over IPv6 too, so lookups also return this
    /// host's IPv6 address for them (`[addr]:port`). Only for services that listen on IPv6
    /// (e.g. on `[::]`): a client may pick either address. `grape --announce-ipv6`.
    ///
    /// Default is `false`: announces go over IPv4 only, as today (an IPv6-only DHT always
    /// announces over IPv6).
    pub fn announce_ipv6(&mut self, on: bool) -> &mut Self {
        self.announce_ipv6 = on;
        self
    }

    /// UDP port of the DHT node; `0` picks a free port (see [`Grape::dht_addr`]).
    ///
    /// Default is `20001`.
    pub fn dht_port(&mut self, port: u16) -> &mut Self {
        self.dht_port = port;
        self
    }

    /// TCP port of the HTTP API; `0` picks a free port (see [`Grape::api_addr`]). Required:
    /// [`Grape::start`] fails with `InvalidArgument` (`ERR_NO_PORT`) without it.
    ///
    /// Default is `None`.
    pub fn api_port(&mut self, port: u16) -> &mut Self {
        self.api_port = Some(port);
        self
    }

    /// DHT bootstrap nodes as `"host:port"` strings.
    ///
    /// Default is empty (no bootstrap; the public BitTorrent routers are never used).
    pub fn bootstrap(&mut self, nodes: Vec<String>) -> &mut Self {
        self.bootstrap = nodes;
        self
    }

    /// How long an announced service is kept (`dht_peer_maxAge`). The lookup cache keeps peers
    /// for half of it. Zero disables expiry.
    ///
    /// Default is 120 s.
    pub fn peer_max_age(&mut self, age: Duration) -> &mut Self {
        self.peer_max_age = age;
        self
    }

    /// LRU size of the per-target closest-node tables (`dht_maxTables`).
    ///
    /// Default is 5000.
    pub fn max_tables(&mut self, n: usize) -> &mut Self {
        self.max_tables = n;
        self
    }

    /// LRU size of the BEP44 value store (`dht_maxValues`).
    ///
    /// Default is 5000.
    pub fn max_values(&mut self, n: usize) -> &mut Self {
        self.max_values = n;
        self
    }

    /// Upper bound on announced peers stored by the DHT node, over all names (new ones are
    /// refused when full). A record costs tens of bytes.
    ///
    /// Default is 1 000 000 (the reference caps at a fixed 10 000).
    pub fn max_peers(&mut self, n: usize) -> &mut Self {
        self.max_peers = n;
        self
    }

    /// Routing-table liveness period (`dht_nodeLiveness`).
    ///
    /// Default is 5 minutes.
    pub fn node_liveness(&mut self, d: Duration) -> &mut Self {
        self.node_liveness = d;
        self
    }

    /// Largest accepted HTTP body in bytes (`check_maxPayloadSize`); a body exactly this size is
    /// accepted, one byte more gets `413 ERR_GRAPE_PAYLOAD_SIZE`. `usize::MAX` disables the limit.
    ///
    /// Default is 8192.
    pub fn check_max_payload_size(&mut self, bytes: usize) -> &mut Self {
        self.check_max_payload_size = bytes;
        self
    }

    /// Most HTTP connections served at once; further ones are closed at once. Once three
    /// quarters are held, a source holding `max_connections_per_ip / 16` or more gets no more
    /// (the rest is kept for sources with few connections).
    ///
    /// Default is 10 000.
    pub fn max_connections(&mut self, n: usize) -> &mut Self {
        self.max_connections = n;
        self
    }

    /// Most HTTP connections one source IP address holds at once; further ones are closed at
    /// once.
    ///
    /// Default is 2,000.
    pub fn max_connections_per_ip(&mut self, n: usize) -> &mut Self {
        self.max_connections_per_ip = n;
        self
    }

    /// Deadlines on reading each HTTP request (head, body, minimum body rate) and on idle
    /// keep-alive connections. A late head or an idle connection is closed; a late or slow body
    /// gets `408 ERR_GRAPE_TIMEOUT` (raw text) and its connection closes.
    ///
    /// Default: head 10 s, body 10 s, at least 4 KiB/s after 5 s, idle 5 s (the `keep-alive:
    /// timeout=5` the replies announce, and Node's default).
    pub fn read_deadlines(&mut self, d: crate::transport::ReadDeadlines) -> &mut Self {
        self.deadlines = d;
        self
    }

    /// The DHT node's limits per source address (KRPC queries per second, records per address)
    /// and the peer store's bounds (longest service name, bytes).
    ///
    /// Default: [`crate::dht::limits::DhtLimits::default`] (500 queries/s per address, bursts of
    /// 1000; names of at most 256 bytes; 64 MiB; 10,000 records per address).
    pub fn dht_limits(&mut self, l: crate::dht::limits::DhtLimits) -> &mut Self {
        self.dht_limits = l;
        self
    }

    /// The read deadlines set (see [`GrapeConfig::read_deadlines`]).
    pub fn get_read_deadlines(&self) -> crate::transport::ReadDeadlines {
        self.deadlines
    }

    /// The DHT limits set (see [`GrapeConfig::dht_limits`]).
    pub fn get_dht_limits(&self) -> crate::dht::limits::DhtLimits {
        self.dht_limits
    }

    /// Re-announce window: an announce of the same name and port that already succeeded less
    /// than this long ago is answered with that result without a new DHT round. It bounds the
    /// UDP traffic a client in a tight announce loop can cause (each announce goes to every
    /// token-holding node found), and costs at most this much of the record's lifetime. Zero
    /// turns it off (every announce reaches the DHT, like the reference).
    ///
    /// Default is `peer_max_age / 20`, at most 1 s (1 s with the default max age).
    pub fn announce_window(&mut self, window: Duration) -> &mut Self {
        self.announce_window = Some(window);
        self
    }

    /// Lookup walk window: a lookup of a name whose last DHT walk found peers less than this long
    /// ago is answered from the lookup cache without a new walk. Under load this turns thousands
    /// of walks per second for a hot name (each a burst of UDP queries to other Grapes) into at
    /// most one per window; a service announced elsewhere shows up at most this much later. Zero
    /// turns it off (every lookup walks the DHT, like the reference). Lookups that found nothing
    /// always walk.
    ///
    /// Default is `peer_max_age / 1200`, at most 100 ms (100 ms with the default max age).
    pub fn lookup_window(&mut self, window: Duration) -> &mut Self {
        self.lookup_window = Some(window);
        self
    }

    /// A file that keeps the DHT node's id and the good nodes of its routing table across
    /// restarts (`grape --dht-state FILE`). It is read at start: the saved nodes go into the
    /// routing table at once, so the Grape serves lookups without any bootstrap node, and those
    /// that do not answer are dropped. It is written on [`Grape::stop`] and every minute while
    /// the Grape runs (to a temporary file renamed over it, so a crash never leaves half a file).
    /// A missing file is a first start; an unreadable or malformed one is reported as a
    /// [`GrapeEvent::Warning`] and the Grape starts without it.
    ///
    /// Default is `None` (nothing saved; a new random id at every start, like the reference).
    pub fn dht_state(&mut self, path: Option<std::path::PathBuf>) -> &mut Self {
        self.dht_state = path;
        self
    }

    /// The configured HTTP port, if any.
    pub fn get_api_port(&self) -> Option<u16> {
        self.api_port
    }

    /// The configured peer max age.
    pub fn get_peer_max_age(&self) -> Duration {
        self.peer_max_age
    }
}

/// An event of a running [`Grape`] (the reference's EventEmitter events).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum GrapeEvent {
    /// The UDP socket is bound.
    Listening,
    /// The DHT bootstrap walk finished (also when every bootstrap node was unreachable).
    Ready,
    /// A service was stored in this Grape's peer store; the argument is its name.
    Announce(String),
    /// A lookup found a peer, as `"ip:port"`.
    Peer(String),
    /// A service was removed from this Grape's peer store by its announcer (or this Grape
    /// unannounced it); the argument is its name.
    Unannounce(String),
    /// A node was added to the routing table.
    Node,
    /// A malformed or unexpected datagram was dropped.
    Warning(String),
}

/// A running Grape. Cheap to clone; every clone drives the same Grape.
#[derive(Debug, Clone)]
pub struct Grape {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    dht: Dht,
    dht_addr: SocketAddr,
    api_addr: SocketAddr,
    events: broadcast::Sender<GrapeEvent>,
    cache: Mutex<LookupCache>,
    /// Lookups in flight, by name: later callers wait for the first one's walk.
    inflight: Mutex<HashMap<Vec<u8>, watch::Receiver<bool>>>,
    /// Re-announces of the same name and port within this window are answered without a DHT
    /// round (zero: never).
    announce_window: Duration,
    /// Last successful announce per (name, port), bounded LRU.
    recent_announces: Mutex<RecentAnnounces>,
    /// Last unannounce per (name, port) (same window, same bound): a client in an unannounce
    /// loop causes one DHT round per window, not one per request.
    recent_unannounces: Mutex<RecentAnnounces>,
    /// Lookups of a name within this long after a walk that found peers skip the walk.
    lookup_window: Duration,
    /// When the last walk that found peers ended, per name; bounded LRU.
    recent_walks: Mutex<lru::LruCache<Vec<u8>, std::time::Instant>>,
    stop: CancellationToken,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Longest service name looked up or announced (the peer store's longest key).
    max_key_len: usize,
    /// Where the DHT state is saved, if anywhere.
    dht_state: Option<std::path::PathBuf>,
}

/// How often a running Grape writes its DHT state file.
const STATE_SAVE_EVERY: Duration = Duration::from_secs(60);

/// Reads a DHT state file; `Ok(None)` when there is none.
async fn load_state(path: &std::path::Path) -> Result<Option<DhtState>> {
    match tokio::fs::metadata(path).await {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::new(ErrorKind::Io, format!("cannot read {}: {e}", path.display()))),
        Ok(m) if m.len() > DhtState::MAX_BYTES as u64 => {
            return Err(Error::invalid(format!("{} is larger than {} bytes", path.display(), DhtState::MAX_BYTES)));
        }
        Ok(_) => {}
    }
    let text =
        tokio::fs::read_to_string(path).await.map_err(|e| Error::new(ErrorKind::Io, format!("cannot read {}: {e}", path.display())))?;
    DhtState::from_json(&text).map(Some)
}

/// Writes a DHT state file: to `<file>.tmp`, then renamed over the file.
async fn save_state(path: &std::path::Path, state: &DhtState) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    tokio::fs::write(&tmp, state.to_json()).await.map_err(|e| Error::new(ErrorKind::Io, format!("cannot write {}: {e}", tmp.display())))?;
    tokio::fs::rename(&tmp, path).await.map_err(|e| Error::new(ErrorKind::Io, format!("cannot replace {}: {e}", path.display())))
}

async fn save_periodically(dht: Dht, path: std::path::PathBuf, stop: CancellationToken) {
    let mut last: Option<DhtState> = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(STATE_SAVE_EVERY) => {}
        }
        let state = dht.state_snapshot();
        if state.nodes.is_empty() || last.as_ref() == Some(&state) {
            continue;
        }
        match save_state(&path, &state).await {
            Ok(()) => last = Some(state),
            Err(e) => tracing::warn!(error = %e, "cannot save the DHT state"),
        }
    }
}

impl Grape {
    /// Binds the UDP DHT socket and the HTTP API and starts both. Resolves once both are bound
    /// (the DHT bootstrap may still be running: see [`Grape::ready`]).
    ///
    /// Errors: `InvalidArgument` (`ERR_NO_PORT`) without an API port; `Io` when a port is busy.
    pub async fn start(config: GrapeConfig) -> Result<Grape> {
        let Some(api_port) = config.api_port else {
            return Err(Error::invalid("ERR_NO_PORT: api_port is required"));
        };
        let http_ip = config.host.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        // Bind HTTP first so a busy API port does not leave a DHT node running.
        let listener = crate::transport::listen(SocketAddr::new(http_ip, api_port))
            .map_err(|e| Error::new(ErrorKind::Io, format!("cannot bind the HTTP API to {http_ip}:{api_port}: {e}")))?;
        let api_addr = listener.local_addr()?;

        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        let mut state_warning = None;
        let saved = match &config.dht_state {
            Some(path) => match load_state(path).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "ignoring the saved DHT state");
                    state_warning = Some(format!("ignoring the saved DHT state {}: {}", path.display(), e.message()));
                    None
                }
            },
            None => None,
        };
        let (bind6, bind6_optional) = match (config.dht_bind, config.dht_ipv6) {
            (IpAddr::V6(_), _) | (_, DhtIpv6::Off) => (None, false),
            (IpAddr::V4(ip), DhtIpv6::Auto) => (ip.is_unspecified().then_some(SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0))), true),
            (IpAddr::V4(_), DhtIpv6::Bind(ip)) => (Some(SocketAddr::from((ip, 0))), false),
        };
        let dht_config = DhtConfig {
            bind: SocketAddr::new(config.dht_bind, config.dht_port),
            bind6,
            bind6_optional,
            announce6: config.announce_ipv6,
            bootstrap: config.bootstrap.clone(),
            peer_max_age: config.peer_max_age,
            max_peers: config.max_peers,
            max_tables: config.max_tables,
            max_values: config.max_values,
            node_liveness: config.node_liveness,
            query_timeout: Duration::from_secs(2),
            concurrency: 16,
            self_host: config.host.filter(|ip| ip.is_ipv4() || !ip.is_unspecified()),
            limits: config.dht_limits,
            id: saved.as_ref().map(|s| s.id),
            saved_nodes: saved.map(|s| s.nodes).unwrap_or_default(),
            ..DhtConfig::default()
        };
        let dht = Dht::bind(dht_config).await.map_err(|e| {
            Error::new(e.kind(), format!("cannot start the DHT on UDP {}:{}: {}", config.dht_bind, config.dht_port, e.message()))
        })?;
        // Subscribe before anything can happen on the node.
        let dht_events = dht.events();
        let dht_addr = dht.local_addr();
        let _ = events.send(GrapeEvent::Listening);
        if let Some(w) = state_warning {
            let _ = events.send(GrapeEvent::Warning(w));
        }

        // `_mem` lives half the peer max age (rounded up to a millisecond).
        let mem_age = Duration::from_millis(u64::try_from(config.peer_max_age.as_millis().div_ceil(2)).unwrap_or(u64::MAX));
        let inner = Arc::new(Inner {
            max_key_len: config.dht_limits.peer_store.max_key_len,
            dht,
            dht_addr,
            api_addr,
            events,
            cache: Mutex::new(LookupCache::new(mem_age, LOOKUP_CACHE_SIZE)),
            inflight: Mutex::new(HashMap::new()),
            announce_window: config.announce_window.unwrap_or_else(|| (config.peer_max_age / 20).min(Duration::from_secs(1))),
            recent_announces: Mutex::new(lru::LruCache::new(RECENT_ANNOUNCES)),
            recent_unannounces: Mutex::new(lru::LruCache::new(RECENT_ANNOUNCES)),
            lookup_window: config.lookup_window.unwrap_or_else(|| (config.peer_max_age / 1200).min(Duration::from_millis(100))),
            recent_walks: Mutex::new(lru::LruCache::new(RECENT_ANNOUNCES)),
            stop: CancellationToken::new(),
            tasks: Mutex::new(Vec::new()),
            dht_state: config.dht_state.clone(),
        });

        let forward = tokio::spawn(forward_events(Arc::downgrade(&inner), dht_events, inner.stop.clone()));
        let opts = http::ServerOptions {
            max_body: config.check_max_payload_size,
            connections: crate::transport::ConnLimits {
                max_connections: config.max_connections,
                max_per_ip: config.max_connections_per_ip,
            },
            deadlines: config.deadlines,
            refusals: Arc::default(),
        };
        let server = tokio::spawn(http::serve(listener, Arc::new(Api(Arc::downgrade(&inner))), opts, inner.stop.clone()));
        lock(&inner.tasks).extend([forward, server]);
        if let Some(path) = inner.dht_state.clone() {
            let saver = tokio::spawn(save_periodically(inner.dht.clone(), path, inner.stop.clone()));
            lock(&inner.tasks).push(saver);
        }
        tracing::info!(dht = %dht_addr, api = %api_addr, "grape started");
        Ok(Grape { inner })
    }

    /// The bound UDP address of the DHT node.
    pub fn dht_addr(&self) -> SocketAddr {
        self.inner.dht_addr
    }

    /// The bound IPv6 UDP address of a dual-stack DHT (see [`GrapeConfig::dht_ipv6`]); `None`
    /// when the DHT runs on one address family.
    pub fn dht_addr6(&self) -> Option<SocketAddr> {
        self.inner.dht.local_addr6()
    }

    /// The bound TCP address of the HTTP API.
    pub fn api_addr(&self) -> SocketAddr {
        self.inner.api_addr
    }

    /// The API base URL, `http://127.0.0.1:<port>` (`http://[::1]:<port>`) when bound to every
    /// IPv4 (IPv6) address.
    pub fn api_url(&self) -> String {
        let a = self.inner.api_addr;
        let ip = loopback_if_unspecified(a.ip());
        format!("http://{}", SocketAddr::new(ip, a.port()))
    }

    /// `"127.0.0.1:<dht port>"` (or the bound IP, `[ip]:port` for IPv6), for other Grapes'
    /// bootstrap lists.
    pub fn dht_bootstrap_addr(&self) -> String {
        let a = self.inner.dht_addr;
        let ip = loopback_if_unspecified(a.ip());
        SocketAddr::new(ip, a.port()).to_string()
    }

    /// The DHT node (for direct DHT calls).
    pub fn dht(&self) -> &Dht {
        &self.inner.dht
    }

    /// Subscribes to events. The channel is bounded ([`EVENT_CAPACITY`]): a subscriber that falls
    /// behind gets `RecvError::Lagged` and misses the oldest events.
    pub fn events(&self) -> broadcast::Receiver<GrapeEvent> {
        self.inner.events.subscribe()
    }

    /// Resolves once the DHT bootstrap walk has finished (it finishes even if no bootstrap node
    /// answers, after the query timeout). Wrap it in a timeout if you need a bound.
    pub async fn ready(&self) {
        self.inner.dht.ready().await
    }

    /// Announces `name` on `port` (0: this Grape's DHT port). Returns how many DHT nodes stored it.
    pub async fn announce(&self, name: &str, port: u16) -> Result<usize> {
        self.inner.announce(name.as_bytes(), port).await
    }

    /// Removes the announce of `name` on `port` (0: this Grape's DHT port) from the Grapes that
    /// hold it, at once (see [`Dht::unannounce`]; Node Grapes keep it until it expires). Returns
    /// how many DHT nodes acknowledged. The service should stop announcing it first.
    pub async fn unannounce(&self, name: &str, port: u16) -> Result<usize> {
        self.inner.unannounce(name.as_bytes(), port).await
    }

    /// Looks `name` up: up to 100 peers seen by any lookup for the name recently, random order.
    pub async fn lookup(&self, name: &str) -> Result<Vec<SocketAddr>> {
        self.inner.lookup(name.as_bytes()).await
    }

    /// What [`Grape::lookup`] would answer at once, without a DHT walk: the cached peers of a
    /// name whose last walk found peers less than the lookup window ago (see
    /// [`GrapeConfig::lookup_window`]). `None` when `lookup` would walk (or wait for a walk).
    ///
    /// It takes two short locks and never waits, so an embedder can call it on its own thread
    /// and hand the answer to the caller there, without a trip through the runtime.
    pub fn lookup_in_window(&self, name: &str) -> Option<Vec<SocketAddr>> {
        self.inner.lookup_in_window(name.as_bytes())
    }

    /// Stops the HTTP API and the DHT node and frees both ports. Connections in flight get their
    /// reply (up to 2 s); idle keep-alive connections are closed. With
    /// [`GrapeConfig::dht_state`], the routing table is saved first.
    pub async fn stop(&self) {
        // The routing table as it is now, before anything shuts down (an empty table is not
        // saved over a useful file: a Grape stopped before it joined keeps its old state).
        if let Some(path) = &self.inner.dht_state
            && !self.inner.stop.is_cancelled()
        {
            let state = self.inner.dht.state_snapshot();
            if !state.nodes.is_empty()
                && let Err(e) = save_state(path, &state).await
            {
                tracing::warn!(error = %e, "cannot save the DHT state");
            }
        }
        self.inner.stop.cancel();
        let tasks: Vec<JoinHandle<()>> = lock(&self.inner.tasks).drain(..).collect();
        for t in tasks {
            let abort = t.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), t).await.is_err() {
                abort.abort();
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), self.inner.dht.shutdown()).await;
        tracing::info!(api = %self.inner.api_addr, "grape stopped");
    }
}

/// `ip`, or the loopback address of its family when it is the unspecified one.
fn loopback_if_unspecified(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Re-emits DHT events as Grape events and feeds found peers into the lookup cache.
async fn forward_events(inner: std::sync::Weak<Inner>, mut rx: broadcast::Receiver<DhtEvent>, stop: CancellationToken) {
    loop {
        let ev = tokio::select! {
            _ = stop.cancelled() => return,
            ev = rx.recv() => ev,
        };
        let ev = match ev {
            Ok(ev) => ev,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::debug!(missed = n, "grape fell behind the DHT events");
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let Some(inner) = inner.upgrade() else { return };
        let out = match ev {
            DhtEvent::Listening(_) => None,
            DhtEvent::Ready => Some(GrapeEvent::Ready),
            DhtEvent::Node(_) => Some(GrapeEvent::Node),
            DhtEvent::Warning(w) => Some(GrapeEvent::Warning(w)),
            DhtEvent::Announce { info_hash, .. } => Some(GrapeEvent::Announce(String::from_utf8_lossy(&info_hash).into_owned())),
            DhtEvent::Peer { info_hash, peer } => {
                lock(&inner.cache).add(&info_hash, peer);
                Some(GrapeEvent::Peer(peer.to_string()))
            }
            DhtEvent::Unannounce { info_hash, peer } => {
                lock(&inner.cache).remove(&info_hash, peer);
                Some(GrapeEvent::Unannounce(String::from_utf8_lossy(&info_hash).into_owned()))
            }
            #[allow(unreachable_patterns)]
            _ => None,
        };
        if let Some(e) = out {
            let _ = inner.events.send(e);
        }
    }
}

impl Inner {
    async fn announce(&self, name: &[u8], port: u16) -> Result<usize> {
        let port = if port == 0 { self.dht_addr.port() } else { port };
        let key = (name.to_vec(), port);
        if !self.announce_window.is_zero()
            && let Some((at, hits)) = lock(&self.recent_announces).get(&key).copied()
            && at.elapsed() < self.announce_window
        {
            return Ok(hits);
        }
        lock(&self.recent_unannounces).pop(&key);
        let res = match tokio::time::timeout(DHT_OP_TIMEOUT, self.dht.announce(name, port)).await {
            Ok(r) => r,
            Err(_) => Err(Error::new(ErrorKind::AllQueriesFailed, "All queries failed")),
        };
        if let Ok(hits) = res
            && !self.announce_window.is_zero()
        {
            lock(&self.recent_announces).put(key, (std::time::Instant::now(), hits));
        }
        res
    }

    async fn unannounce(&self, name: &[u8], port: u16) -> Result<usize> {
        let port = if port == 0 { self.dht_addr.port() } else { port };
        let key = (name.to_vec(), port);
        // The next announce of it must reach the DHT again.
        lock(&self.recent_announces).pop(&key);
        if !self.announce_window.is_zero()
            && let Some((at, acks)) = lock(&self.recent_unannounces).get(&key).copied()
            && at.elapsed() < self.announce_window
        {
            return Ok(acks);
        }
        let res = match tokio::time::timeout(DHT_OP_TIMEOUT, self.dht.unannounce(name, port)).await {
            Ok(r) => r,
            Err(_) => Err(Error::new(ErrorKind::AllQueriesFailed, "All queries failed")),
        };
        let out = res.map(|u| {
            let mut cache = lock(&self.cache);
            for p in &u.removed {
                cache.remove(name, *p);
            }
            u.acks
        });
        if let Ok(acks) = out
            && !self.announce_window.is_zero()
        {
            lock(&self.recent_unannounces).put(key, (std::time::Instant::now(), acks));
        }
        out
    }

    /// The lookup cache's peers for `name` when its last walk found peers less than
    /// `lookup_window` ago (and some are still cached): a lookup then needs no walk.
    fn lookup_in_window(&self, name: &[u8]) -> Option<Vec<SocketAddr>> {
        if self.lookup_window.is_zero() || lock(&self.recent_walks).get(name).is_none_or(|at| at.elapsed() >= self.lookup_window) {
            return None;
        }
        let cached = lock(&self.cache).get(name, LOOKUP_MAX_PEERS);
        (!cached.is_empty()).then_some(cached)
    }

    /// One DHT walk per name at a time (the reference's `cbq`); every caller then answers from
    /// the lookup cache.
    async fn lookup(self: &Arc<Self>, name: &[u8]) -> Result<Vec<SocketAddr>> {
        if let Some(cached) = self.lookup_in_window(name) {
            return Ok(cached);
        }
        let mut rx = {
            let mut inflight = lock(&self.inflight);
            match inflight.get(name) {
                Some(rx) => {
                    // A walk is already running: when earlier walks found peers, answer from the
                    // lookup cache now rather than queueing behind it (see docs/compat.md).
                    let cached = lock(&self.cache).get(name, LOOKUP_MAX_PEERS);
                    if !cached.is_empty() {
                        return Ok(cached);
                    }
                    rx.clone()
                }
                None => {
                    let (tx, rx) = watch::channel(false);
                    inflight.insert(name.to_vec(), rx.clone());
                    let me = self.clone();
                    let key = name.to_vec();
                    // A task of its own, so a client that hangs up does not cancel other waiters.
                    tokio::spawn(async move {
                        let found = tokio::time::timeout(DHT_OP_TIMEOUT, me.dht.lookup_with_gone(&key)).await;
                        match found {
                            Ok(Ok((peers, gone))) => {
                                let found = !peers.is_empty();
                                let mut cache = lock(&me.cache);
                                for p in gone {
                                    cache.remove(&key, p);
                                }
                                for p in peers {
                                    cache.add(&key, p);
                                }
                                drop(cache);
                                if found && !me.lookup_window.is_zero() {
                                    lock(&me.recent_walks).put(key.clone(), std::time::Instant::now());
                                }
                            }
                            Ok(Err(e)) => tracing::debug!(error = %e, "lookup walk failed"),
                            Err(_) => tracing::debug!("lookup walk timed out"),
                        }
                        lock(&me.inflight).remove(&key);
                        let _ = tx.send(true);
                    });
                    rx
                }
            }
        };
        let _ = tokio::time::timeout(DHT_OP_TIMEOUT + Duration::from_secs(1), rx.wait_for(|done| *done)).await;
        Ok(lock(&self.cache).get(name, LOOKUP_MAX_PEERS))
    }

    async fn handle(self: &Arc<Self>, req: ApiRequest) -> ApiReply {
        if let ApiRequest::Lookup { name } | ApiRequest::Announce { name, .. } | ApiRequest::Unannounce { name, .. } = &req
            && name.len() > self.max_key_len
        {
            // No node would store it (the reference takes any length).
            return ApiReply::app_error(200, api::ERR_KEY_TOO_LONG);
        }
        match req {
            ApiRequest::Lookup { name } => match self.lookup(&name).await {
                Ok(peers) => ApiReply::json_text(api::lookup_json(&peers)),
                Err(e) => ApiReply::app_error(200, e.message()),
            },
            ApiRequest::Announce { name, port } => match self.announce(&name, port).await {
                Ok(n) => ApiReply::json_text(n.to_string()),
                Err(e) => api::dht_error_reply(&e),
            },
            ApiRequest::Unannounce { name, port } => match self.unannounce(&name, port).await {
                Ok(n) => ApiReply::json_text(n.to_string()),
                Err(e) => api::dht_error_reply(&e),
            },
            ApiRequest::Put(item) => self.put(item).await,
            ApiRequest::Get(get) => {
                let Ok(target) = <[u8; 20]>::try_from(get.target.as_slice()) else {
                    // Only a 20-byte target can match anything.
                    return ApiReply::empty();
                };
                let salt = get.salt.as_deref();
                match tokio::time::timeout(DHT_OP_TIMEOUT, self.dht.get(target, salt, get.use_local)).await {
                    Ok(Ok(Some(res))) => ApiReply::json_text(api::get_result_json(&res, salt)),
                    Ok(Ok(None)) => ApiReply::empty(),
                    Ok(Err(e)) if matches!(e.kind(), ErrorKind::NoNodes | ErrorKind::AllQueriesFailed | ErrorKind::Timeout) => {
                        ApiReply::empty()
                    }
                    Ok(Err(e)) => api::dht_error_reply(&e),
                    Err(_) => ApiReply::empty(),
                }
            }
        }
    }

    async fn put(&self, item: PutItem) -> ApiReply {
        match tokio::time::timeout(DHT_OP_TIMEOUT, self.dht.put(item)).await {
            Ok(Ok((target, _))) => ApiReply::json_text(serde_json::Value::String(hex::encode(target)).to_string()),
            Ok(Err(e)) => api::dht_error_reply(&e),
            Err(_) => ApiReply::app_error(200, "All queries failed"),
        }
    }
}

/// The HTTP handler: a weak handle, so open connections never keep a stopped Grape alive.
struct Api(std::sync::Weak<Inner>);

impl http::Handler for Api {
    async fn handle(&self, req: ApiRequest) -> ApiReply {
        match self.0.upgrade() {
            Some(inner) => inner.handle(req).await,
            None => ApiReply::raw(503, "ERR_GRAPE_STOPPED"),
        }
    }
}
