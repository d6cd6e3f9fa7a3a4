//! The broker: a rendezvous service for peers behind NATs.
//!
//! A Grape can only ever return the address a service's Grape announced from, and the port the
//! service bound: right for a public host, wrong behind a NAT. The broker is a public uTP RPC
//! service, announced in the DHT under a name (default [`DEFAULT_BROKER_NAME`]), that sees every
//! peer's external endpoint (the NAT mapping of the peer's node socket) and introduces peers:
//!
//! 1. workers register `{"op":"register","service":S,"role":"server"}` on a timer
//!    ([`BrokerClient::keep_registered`]), from their service's node, so the broker records the
//!    mapping that also carries their service (and keeps it open);
//! 2. a client asks `{"op":"lookup","service":S}` from its node: the broker records the client's
//!    endpoint, answers with the external endpoints of the workers of `S` (that service only),
//!    and at the same moment sends each of those workers a punch request naming the client;
//! 3. both sides punch each other at once ([`UtpNode::punch`]): each side's first punch opens its
//!    own NAT toward the other, so the other's punches get in, and both hear back. The client
//!    then sends its requests over uTP to the worker's external endpoint.
//!
//! Entries expire ([`BrokerConfig::entry_ttl`]) and their number is bounded
//! ([`BrokerConfig::max_entries`]). The broker never carries application traffic.
//!
//! The legacy broker request of grenache-nodejs-utp's example (`{service, server}`, no `op`) is
//! recorded too and answered with the legacy registry shape `{S: {id: {service, server,
//! address, port}}}` (entries of that service only).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::client::{UtpClient, UtpClientConfig};
use super::node::UtpNode;
use super::server::{UtpServer, UtpServerConfig};
use crate::error::{Error, ErrorKind, Result};
use crate::link::Link;
use crate::rpc::{BoxFuture, ClientTransport, OutgoingRequest, PeerRpcServer, Reply, Request, Resolve};

/// The name a broker is announced under unless configured otherwise.
pub const DEFAULT_BROKER_NAME: &str = "grenache_broker";

/// The error a broker answers to a request it cannot read.
pub const ERR_BROKER_BAD_REQUEST: &str = "ERR_BROKER_BAD_REQUEST";
/// The error a broker answers when its registry is full.
pub const ERR_BROKER_FULL: &str = "ERR_BROKER_FULL";

/// The settings of a [`Broker`].
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// The name announced in the DHT. Default [`DEFAULT_BROKER_NAME`].
    pub name: String,
    /// An entry not refreshed within this time is forgotten. Default 30 s.
    pub entry_ttl: Duration,
    /// The most entries kept (all services); past this a new peer is refused with
    /// [`ERR_BROKER_FULL`]. Default 10 000.
    pub max_entries: usize,
    /// The most workers a lookup answers with. Default 100 (what a Grape lookup gives at most).
    pub max_results: usize,
    /// How often the broker re-announces its name. Default 10 s.
    pub announce_interval: Duration,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            name: DEFAULT_BROKER_NAME.to_string(),
            entry_ttl: Duration::from_secs(30),
            max_entries: 10_000,
            max_results: 100,
            announce_interval: Duration::from_secs(10),
        }
    }
}

/// The role of a registered peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Role {
    Server,
    Client,
}

/// Service → (role, external endpoint) → expiry.
#[derive(Debug, Default)]
struct Registry {
    services: HashMap<String, HashMap<(Role, SocketAddr), Instant>>,
    len: usize,
}

impl Registry {
    fn purge(&mut self, now: Instant) {
        let mut len = 0;
        self.services.retain(|_, m| {
            m.retain(|_, until| *until > now);
            len += m.len();
            !m.is_empty()
        });
        self.len = len;
    }

    /// Records an entry; false when full.
    fn record(&mut self, service: &str, role: Role, at: SocketAddr, ttl: Duration, max: usize) -> bool {
        let now = Instant::now();
        let until = now + ttl;
        if let Some(e) = self.services.get_mut(service).and_then(|m| m.get_mut(&(role, at))) {
            *e = until;
            return true;
        }
        if self.len >= max {
            self.purge(now);
            if self.len >= max {
                return false;
            }
        }
        self.services.entry(service.to_string()).or_default().insert((role, at), until);
        self.len += 1;
        true
    }

    fn entries(&self, service: &str, role: Option<Role>, limit: usize) -> Vec<(Role, SocketAddr)> {
        let now = Instant::now();
        self.services
            .get(service)
            .map(|m| {
                m.iter().filter(|((r, _), until)| **until > now && role.is_none_or(|x| x == *r)).map(|(k, _)| *k).take(limit).collect()
            })
            .unwrap_or_default()
    }
}

fn endpoint(a: SocketAddr) -> Value {
    json!({"address": a.ip().to_string(), "port": a.port()})
}

/// A running broker: a uTP RPC service announced under [`BrokerConfig::name`].
pub struct Broker {
    peer: PeerRpcServer,
    server: Arc<UtpServer>,
    registry: Arc<Mutex<Registry>>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker").field("addr", &self.server.local_addr()).finish_non_exhaustive()
    }
}

impl Broker {
    /// Binds a node on `addr`, serves the broker on it and announces it through `link` (the
    /// first announce is awaited). Errors: `Io` when it cannot bind; the announce's error.
    pub async fn start(link: Link, addr: SocketAddr, config: BrokerConfig) -> Result<Broker> {
        let node = UtpNode::bind(addr).await?;
        let registry = Arc::new(Mutex::new(Registry::default()));
        let (reg, n, cfg) = (registry.clone(), Arc::downgrade(&node), config.clone());
        let handler = move |req: Request, reply: Reply| handle(&reg, &n, &cfg, req, reply);
        let server = Arc::new(UtpServer::serve(node, Arc::new(handler), UtpServerConfig::default())?);
        let peer = PeerRpcServer::new(link, server.clone());
        peer.announce(&config.name).await?;
        peer.start_announcing(&config.name, config.announce_interval);
        Ok(Broker { peer, server, registry })
    }

    /// The broker's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// How many live entries the registry holds.
    pub fn entries(&self) -> usize {
        let mut r = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        r.purge(Instant::now());
        r.len
    }

    /// Stops announcing and serving.
    pub fn stop(&self) {
        self.peer.stop();
    }
}

fn handle(registry: &Mutex<Registry>, node: &std::sync::Weak<UtpNode>, config: &BrokerConfig, req: Request, reply: Reply) {
    let Some(from) = req.info.remote_addr else { return reply.err(ERR_BROKER_BAD_REQUEST) };
    let p = &req.payload;
    let Some(service) = p.get("service").and_then(Value::as_str).filter(|s| !s.is_empty() && s.len() <= 1024) else {
        return reply.err(ERR_BROKER_BAD_REQUEST);
    };
    let mut reg = registry.lock().unwrap_or_else(|e| e.into_inner());
    let (ttl, max) = (config.entry_ttl, config.max_entries);
    match p.get("op").and_then(Value::as_str) {
        Some("register") => {
            let role = match p.get("role").and_then(Value::as_str) {
                Some("server") => Role::Server,
                Some("client") => Role::Client,
                _ => return reply.err(ERR_BROKER_BAD_REQUEST),
            };
            if !reg.record(service, role, from, ttl, max) {
                return reply.err(ERR_BROKER_FULL);
            }
            reply.ok(json!({"you": endpoint(from)}));
        }
        Some("lookup") => {
            if !reg.record(service, Role::Client, from, ttl, max) {
                return reply.err(ERR_BROKER_FULL);
            }
            let servers: Vec<SocketAddr> =
                reg.entries(service, Some(Role::Server), config.max_results).into_iter().map(|(_, a)| a).collect();
            drop(reg);
            // Both sides punch at once: the workers are told now, the client when it reads this
            // reply. The request goes out three times (a datagram can be lost).
            if let Some(node) = node.upgrade() {
                for s in &servers {
                    node.send_punch_request(*s, from);
                }
                let targets = servers.clone();
                tokio::spawn(async move {
                    for _ in 0..2 {
                        tokio::time::sleep(Duration::from_millis(150)).await;
                        for s in &targets {
                            node.send_punch_request(*s, from);
                        }
                    }
                });
            }
            reply.ok(json!({"you": endpoint(from), "servers": servers.into_iter().map(endpoint).collect::<Vec<_>>()}));
        }
        Some(_) => reply.err(ERR_BROKER_BAD_REQUEST),
        None => {
            // The legacy example's request: {service, server}.
            let role = if p.get("server").and_then(Value::as_bool).unwrap_or(false) { Role::Server } else { Role::Client };
            if !reg.record(service, role, from, ttl, max) {
                return reply.err(ERR_BROKER_FULL);
            }
            let mut all = serde_json::Map::new();
            for (r, a) in reg.entries(service, None, config.max_results.saturating_mul(2)) {
                let server = r == Role::Server;
                all.insert(
                    format!("{a}:{}", if server { "server" } else { "client" }),
                    json!({"service": service, "server": server, "address": a.ip().to_string(), "port": a.port()}),
                );
            }
            reply.ok(json!({ service: all }));
        }
    }
}

/// The settings of a [`BrokerClient`].
#[derive(Debug, Clone)]
pub struct BrokerClientConfig {
    /// The broker's name in the DHT. Default [`DEFAULT_BROKER_NAME`].
    pub name: String,
    /// The timeout of a request to the broker. Default 5 s.
    pub request_timeout: Duration,
    /// How long punching a worker may take before it is given up
    /// ([`ErrorKind::PunchTimeout`] when no worker could be punched). Default 5 s.
    pub punch_timeout: Duration,
    /// How long the punched endpoints of a service are reused before the broker is asked again.
    /// Default 10 s.
    pub cache_ttl: Duration,
}

impl Default for BrokerClientConfig {
    fn default() -> Self {
        BrokerClientConfig {
            name: DEFAULT_BROKER_NAME.to_string(),
            request_timeout: Duration::from_secs(5),
            punch_timeout: Duration::from_secs(5),
            cache_ttl: Duration::from_secs(10),
        }
    }
}

/// How many services' punched endpoints a [`BrokerClient`] keeps.
const MAX_CACHED_SERVICES: usize = 1024;

/// Talks to a broker from a node: registers a worker, or finds and punches the workers of a
/// service for a client. As a [`Resolve`]r of a [`PeerRpcClient`](crate::rpc::PeerRpcClient),
/// it gives the punched external endpoints of a service's workers, and the Grape's lookup when
/// the broker knows no worker of it (public workers that do not register).
#[derive(Clone)]
pub struct BrokerClient {
    inner: Arc<BrokerInner>,
}

/// Service → (when punched, the endpoints reached).
type PunchedCache = HashMap<String, (Instant, Arc<[String]>)>;

struct BrokerInner {
    link: Link,
    node: Arc<UtpNode>,
    client: UtpClient,
    config: BrokerClientConfig,
    cache: Mutex<PunchedCache>,
}

impl std::fmt::Debug for BrokerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerClient").field("node", &self.inner.node).field("broker", &self.inner.config.name).finish()
    }
}

/// Keeps a worker registered with a broker until dropped (see [`BrokerClient::keep_registered`]).
#[derive(Debug)]
pub struct Registration {
    stop: tokio_util::sync::CancellationToken,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl BrokerClient {
    /// A broker client on `node` (the node of the service, or of the client's requests: the
    /// broker must see the mapping they use), finding the broker through `link`.
    pub fn new(link: Link, node: Arc<UtpNode>, config: BrokerClientConfig) -> BrokerClient {
        let client = UtpClient::with_node(node.clone(), UtpClientConfig::default());
        BrokerClient { inner: Arc::new(BrokerInner { link, node, client, config, cache: Mutex::new(HashMap::new()) }) }
    }

    /// The node.
    pub fn node(&self) -> &Arc<UtpNode> {
        &self.inner.node
    }

    /// Sends `payload` to a broker (each one the Grapes return, until one answers); the broker's
    /// address and its answer.
    async fn ask(&self, payload: Value) -> Result<(SocketAddr, Value)> {
        let i = &self.inner;
        let brokers = i.link.lookup(&i.config.name).await?;
        let mut last = None;
        for b in brokers {
            let out = OutgoingRequest {
                rid: crate::rpc::new_rid(),
                key: Arc::from(i.config.name.as_str()),
                payload_json: Arc::from(payload.to_string()),
                timeout: Some(i.config.request_timeout),
                compress: false,
            };
            let Ok(addr) = b.parse::<SocketAddr>() else { continue };
            // Punch requests from this broker are welcome from now on.
            i.node.trust_broker(addr);
            match i.client.request(&b, out).await {
                Ok(v) => return Ok((addr, v)),
                Err(e) if e.is_remote() => return Err(e),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::new(ErrorKind::LookupEmpty, i.config.name.clone())))
    }

    /// Registers `service` as served from this node; returns this node's endpoint as the broker
    /// sees it.
    pub async fn register(&self, service: &str) -> Result<SocketAddr> {
        let (_, v) = self.ask(json!({"op": "register", "service": service, "role": "server"})).await?;
        endpoint_of(&v["you"]).ok_or_else(|| Error::new(ErrorKind::Protocol, format!("broker answer without an endpoint: {v}")))
    }

    /// Re-registers `service` every `interval` (keep it below the NAT's UDP timeout, often 30 s,
    /// and the broker's entry TTL) until the returned handle is dropped. The first registration
    /// is awaited and its error returned; a broker that could not be reached (a lost datagram of
    /// the uTP handshake on a lossy link) is tried three times before that.
    pub async fn keep_registered(&self, service: &str, interval: Duration) -> Result<Registration> {
        let mut attempt = 1;
        loop {
            match self.register(service).await {
                Ok(_) => break,
                Err(e) if attempt < 3 && matches!(e.kind(), ErrorKind::Connect | ErrorKind::Timeout | ErrorKind::Closed) => {
                    tracing::debug!("broker registration of {service}, attempt {attempt}: {e}");
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(e),
            }
        }
        let stop = tokio_util::sync::CancellationToken::new();
        let (this, s, service) = (self.clone(), stop.clone(), service.to_string());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    _ = s.cancelled() => return,
                }
                if let Err(e) = this.register(&service).await {
                    tracing::debug!("broker registration of {service}: {e}");
                }
            }
        });
        Ok(Registration { stop })
    }

    /// Registers `service` now and every `interval` until the returned handle is dropped,
    /// whatever the outcome of each registration (failures are logged and retried on the next
    /// tick). Needs a tokio runtime context.
    pub fn start_registering(&self, service: &str, interval: Duration) -> Registration {
        let stop = tokio_util::sync::CancellationToken::new();
        let (this, s, service) = (self.clone(), stop.clone(), service.to_string());
        tokio::spawn(async move {
            loop {
                if let Err(e) = this.register(&service).await {
                    tracing::debug!("broker registration of {service}: {e}");
                }
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    _ = s.cancelled() => return,
                }
            }
        });
        Registration { stop }
    }

    /// Asks the broker for the workers of `service` (which also tells them to punch this node);
    /// their external endpoints, not punched yet.
    pub async fn lookup(&self, service: &str) -> Result<Vec<SocketAddr>> {
        let (_, v) = self.ask(json!({"op": "lookup", "service": service})).await?;
        Ok(v["servers"].as_array().map(|a| a.iter().filter_map(endpoint_of).collect()).unwrap_or_default())
    }

    /// Asks the broker for the workers of `service` and punches them all at once (while they
    /// punch back); the `"ip:port"` of each one reached. Errors: `LookupEmpty` when the broker
    /// knows none; `PunchTimeout` when none could be punched.
    pub async fn punch_workers(&self, service: &str) -> Result<Vec<String>> {
        let workers = self.lookup(service).await?;
        if workers.is_empty() {
            return Err(Error::new(ErrorKind::LookupEmpty, service.to_string()));
        }
        let t = self.inner.config.punch_timeout;
        let results = futures_util::future::join_all(workers.iter().map(|w| self.inner.node.punch(*w, t))).await;
        let reached: Vec<String> = workers.iter().zip(&results).filter(|(_, r)| r.is_ok()).map(|(w, _)| w.to_string()).collect();
        if reached.is_empty() {
            return Err(Error::new(
                ErrorKind::PunchTimeout,
                format!("no worker of {service} could be punched within {} ms ({} tried)", t.as_millis(), workers.len()),
            ));
        }
        Ok(reached)
    }

    async fn resolve_key(&self, key: &str) -> Result<Arc<[String]>> {
        let i = &self.inner;
        if let Some((at, d)) = i.cache.lock().unwrap_or_else(|e| e.into_inner()).get(key)
            && at.elapsed() < i.config.cache_ttl
        {
            return Ok(d.clone());
        }
        let dests: Arc<[String]> = match self.punch_workers(key).await {
            Ok(d) => d.into(),
            // The broker knows no worker: public workers are found through the Grapes.
            Err(e) if e.kind() == ErrorKind::LookupEmpty => return i.link.lookup_shared(key).await,
            Err(e) => return Err(e),
        };
        let mut c = i.cache.lock().unwrap_or_else(|e| e.into_inner());
        if c.len() >= MAX_CACHED_SERVICES {
            c.clear();
        }
        c.insert(key.to_string(), (Instant::now(), dests.clone()));
        Ok(dests)
    }
}

impl Resolve for BrokerClient {
    fn resolve(&self, key: &str) -> BoxFuture<'static, Result<Arc<[String]>>> {
        let (this, key) = (self.clone(), key.to_string());
        Box::pin(async move { this.resolve_key(&key).await })
    }

    fn invalidate(&self, key: &str) {
        self.inner.cache.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
        self.inner.link.invalidate(key);
    }
}

fn endpoint_of(v: &Value) -> Option<SocketAddr> {
    super::node::parse_endpoint(v.to_string().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_expires_and_is_bounded() {
        let mut r = Registry::default();
        let a: SocketAddr = "10.0.0.1:1".parse().expect("addr");
        let b: SocketAddr = "10.0.0.2:1".parse().expect("addr");
        assert!(r.record("s", Role::Server, a, Duration::from_secs(30), 2));
        assert!(r.record("s", Role::Server, a, Duration::from_secs(30), 2), "a refresh is not a new entry");
        assert!(r.record("t", Role::Client, b, Duration::from_millis(1), 2));
        assert!(!r.record("s", Role::Server, b, Duration::from_secs(30), 2), "full");
        std::thread::sleep(Duration::from_millis(5));
        assert!(r.record("s", Role::Server, b, Duration::from_secs(30), 2), "the expired entry made room");
        assert_eq!(r.entries("s", Some(Role::Server), 10).len(), 2);
        assert!(r.entries("s", Some(Role::Client), 10).is_empty());
        assert!(r.entries("t", None, 10).is_empty());
    }
}
