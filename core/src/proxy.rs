//! A transport proxy: one service reachable from every transport.
//!
//! A [`Proxy`] serves a name on one transport (`from`) and forwards each request to the workers
//! of another name on another transport (`to`): a grenache-nodejs-ws client can call a ZeroMQ
//! worker, an HTTP client a WebSocket one, and so on for any pair of HTTP, WS and ZeroMQ. The
//! served name is announced through the Grapes like any worker's; the forwarding goes through a
//! [`PeerRpcClient`], so the workers are looked up, pooled (one keep-alive pool per side: the
//! callers' connections to the proxy and the proxy's to the workers), retried and failed over
//! like any client's requests.
//!
//! What the caller gets back:
//! * the worker's result, passed through as JSON text (never parsed and re-encoded);
//! * the worker's error message, as it is (`ERR_BOOM` stays `ERR_BOOM`);
//! * `ERR_TIMEOUT` when no worker answered within [`ProxyConfig::timeout`] (the caller's own
//!   timeout is not on the wire: set the proxy's below the callers'), `ERR_GRAPE_LOOKUP_EMPTY`
//!   when the target has no worker, and `ERR_PROXY_<KIND>: message` for other failures (a
//!   worker that cannot be reached, say).
//!
//! PUB/SUB bridging ([`ProxyConfig::bridge`]): the proxy subscribes to every publisher of a name
//! on the `to` transport and republishes each message on a publisher of its own on the `from`
//! transport, announced under another name (HTTP has no PUB/SUB, so there is none to or from it).
//!
//! Workers behind NATs ([`ProxyConfig::broker`], `to` uTP): the proxy asks a broker for the
//! workers' external endpoints and punches them (both sides at once) from the node its requests
//! leave from, so HTTP, WS or ZeroMQ callers reach a uTP worker that the Grapes' lookup alone
//! could not (it returns the Grape's view of the worker's address). `from` uTP serves uTP
//! callers (a legacy grenache-nodejs-utp peer among them) like any uTP server.
//!
//! The served name must differ from the target (the DHT does not say which transport a worker
//! speaks, so a proxy announcing its target's name would forward to itself), and so must the
//! bridge's two names.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::error::{Error, ErrorKind, Result};
use crate::link::{AnnounceHandle, Link};
use crate::pubsub::{PeerPub, PeerSub, PubConfig, SubConfig};
use crate::rpc::{PeerRpcClient, PeerRpcClientConfig, PeerRpcServer, Reply, Request, RequestOptions, TransportKind};
use crate::tls::{ClientTls, ServerTls};

/// Settings of a [`Proxy`].
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// The name the proxy serves and announces.
    pub name: String,
    /// The name whose workers the requests go to.
    pub target: String,
    /// The transport callers use.
    pub from: TransportKind,
    /// The transport the workers speak.
    pub to: TransportKind,
    /// Where to listen (port 0: any free port). Default `0.0.0.0:0`.
    pub addr: SocketAddr,
    /// How long a forwarded request may take, retries included; then the caller gets
    /// `ERR_TIMEOUT`. Default 30 s.
    pub timeout: Duration,
    /// Attempts per request (each retry to another worker when there is one). Default 1;
    /// requests that reached no worker are always sent to another one.
    pub retry: u32,
    /// How often the served names are announced. Default 10 s.
    pub announce_interval: Duration,
    /// TLS of the `from` side (HTTPS or WSS).
    pub server_tls: Option<ServerTls>,
    /// TLS of the `to` side (HTTPS or WSS workers).
    pub client_tls: Option<ClientTls>,
    /// PUB/SUB bridging: `(publishers' name on the to side, the proxy publisher's name on the
    /// from side)`. Default none.
    pub bridge: Option<(String, String)>,
    /// `to` uTP only: find the workers through the broker of this name and punch them before
    /// forwarding (workers behind NATs). Default none (the Grapes' lookup).
    pub broker: Option<String>,
    /// With a broker: how long punching a worker may take. Default 5 s.
    pub punch_timeout: Duration,
}

impl ProxyConfig {
    /// Serve `name` on `from`, forwarding to the workers of `target` on `to`, with the defaults.
    pub fn new(name: impl Into<String>, target: impl Into<String>, from: TransportKind, to: TransportKind) -> ProxyConfig {
        ProxyConfig {
            name: name.into(),
            target: target.into(),
            from,
            to,
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            timeout: Duration::from_secs(30),
            retry: 1,
            announce_interval: Duration::from_secs(10),
            server_tls: None,
            client_tls: None,
            bridge: None,
            broker: None,
            punch_timeout: Duration::from_secs(5),
        }
    }
}

/// Counters of a [`Proxy`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Requests forwarded.
    pub forwarded: u64,
    /// Of those, the ones answered with an error (the worker's or the proxy's).
    pub failed: u64,
    /// Messages republished by the PUB/SUB bridge.
    pub bridged: u64,
}

#[derive(Debug, Default)]
struct Counters {
    forwarded: AtomicU64,
    failed: AtomicU64,
    bridged: AtomicU64,
}

/// A running proxy (see the module docs). Dropping it stops it.
pub struct Proxy {
    server: PeerRpcServer,
    client: PeerRpcClient,
    publisher: Option<Arc<PeerPub>>,
    bridge_task: Option<tokio::task::AbortHandle>,
    announces: Vec<AnnounceHandle>,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy").field("port", &self.port()).field("stats", &self.stats()).finish_non_exhaustive()
    }
}

/// The error message a caller gets for a request the proxy could not forward.
fn proxy_error(e: &Error) -> String {
    match e.kind() {
        ErrorKind::Remote => e.message().to_string(),
        ErrorKind::Timeout => "ERR_TIMEOUT".to_string(),
        ErrorKind::LookupEmpty => "ERR_GRAPE_LOOKUP_EMPTY".to_string(),
        k => format!("ERR_PROXY_{}: {}", k.name().trim_start_matches("ERR_"), e.message()),
    }
}

impl Proxy {
    /// Starts serving: binds, announces the name (waiting for the first announce), and starts
    /// the bridge if asked. Errors: `InvalidArgument` for a name equal to its target, for TLS on
    /// ZeroMQ, or for a bridge to or from HTTP; `Io` when the address cannot be bound; the
    /// announce's error when the Grape refuses it.
    pub async fn start(link: Link, config: ProxyConfig) -> Result<Proxy> {
        if config.name == config.target {
            return Err(Error::invalid("the proxy's name must differ from its target's (it would forward to itself)"));
        }
        if let Some((sub, publ)) = &config.bridge
            && sub == publ
        {
            return Err(Error::invalid("the bridge's two names must differ"));
        }
        let counters = Arc::new(Counters::default());
        let client = match &config.broker {
            None => {
                let to = crate::transport::client(config.to, config.client_tls.clone());
                PeerRpcClient::new(link.clone(), to, PeerRpcClientConfig::default())
            }
            Some(name) => {
                if config.to != TransportKind::Utp {
                    return Err(Error::invalid("a broker needs the uTP transport on the workers' side (to)"));
                }
                use crate::transport::utp::broker::{BrokerClient, BrokerClientConfig};
                use crate::transport::utp::{UtpClient, UtpClientConfig, UtpNode};
                // One node carries the broker lookup, the punches and the forwarded requests.
                let node = UtpNode::bind(SocketAddr::new(config.addr.ip(), 0)).await?;
                let to = Arc::new(UtpClient::with_node(node.clone(), UtpClientConfig::default()));
                let bc = BrokerClientConfig { name: name.clone(), punch_timeout: config.punch_timeout, ..Default::default() };
                let resolver = Arc::new(BrokerClient::new(link.clone(), node, bc));
                PeerRpcClient::new(link.clone(), to, PeerRpcClientConfig::default()).with_resolver(resolver)
            }
        };
        let handler = {
            let client = client.clone();
            let target: Arc<str> = config.target.as_str().into();
            let opts = RequestOptions { timeout: Some(config.timeout), retry: config.retry, ..Default::default() };
            let counters = counters.clone();
            let budget = config.timeout;
            move |req: Request, reply: Reply| {
                let (client, target, opts, counters) = (client.clone(), target.clone(), opts.clone(), counters.clone());
                counters.forwarded.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    // The JSON text as it came, never parsed.
                    let payload: Arc<str> = req.payload.json().into();
                    // The whole forward, lookup and retries included, within the budget.
                    let r =
                        match tokio::time::timeout(budget, client.send::<Box<serde_json::value::RawValue>>(target, payload, &opts)).await {
                            Ok(r) => r,
                            Err(_) => Err(Error::timeout("the forwarded request took too long")),
                        };
                    match r {
                        Ok(raw) => reply.ok_raw(raw),
                        Err(e) => {
                            counters.failed.fetch_add(1, Ordering::Relaxed);
                            reply.err(proxy_error(&e));
                        }
                    }
                });
            }
        };
        let settings = crate::transport::ServerSettings { tls: config.server_tls.clone(), ..Default::default() };
        let transport = crate::transport::bind_server_with(config.from, config.addr, Arc::new(handler), settings).await?;
        let server = PeerRpcServer::new(link.clone(), transport);
        let mut announces = Vec::new();
        let h = server.start_announcing(&config.name, config.announce_interval);
        h.first_result(Duration::from_secs(30)).await?;
        announces.push(h);
        let (mut publisher, mut bridge_task) = (None, None);
        if let Some((sub_name, pub_name)) = &config.bridge {
            let mut pc = PubConfig::default().transport(config.from);
            if let Some(t) = &config.server_tls {
                pc = pc.tls(t.clone());
            }
            let p = Arc::new(PeerPub::bind(SocketAddr::new(config.addr.ip(), 0), pc).await?);
            let h = p.start_announcing(&link, pub_name, config.announce_interval);
            h.first_result(Duration::from_secs(30)).await?;
            announces.push(h);
            let mut sc = SubConfig::default().transport(config.to);
            if let Some(t) = &config.client_tls {
                sc = sc.tls(t.clone());
            }
            let mut sub = PeerSub::new(link.clone(), sc).sub(sub_name);
            let (p2, counters) = (p.clone(), counters.clone());
            let task = tokio::spawn(async move {
                while let Some(m) = sub.recv().await {
                    counters.bridged.fetch_add(1, Ordering::Relaxed);
                    match (m.binary, m.text()) {
                        (false, Some(t)) => p2.publish(t.to_string()),
                        _ => p2.publish_binary(m.data),
                    };
                }
            });
            publisher = Some(p);
            bridge_task = Some(task.abort_handle());
        }
        Ok(Proxy { server, client, publisher, bridge_task, announces, counters })
    }

    /// The port the proxy serves on.
    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// The port of the bridge's publisher, when there is a bridge.
    pub fn pub_port(&self) -> Option<u16> {
        self.publisher.as_ref().map(|p| p.port())
    }

    /// Counters.
    pub fn stats(&self) -> ProxyStats {
        ProxyStats {
            forwarded: self.counters.forwarded.load(Ordering::Relaxed),
            failed: self.counters.failed.load(Ordering::Relaxed),
            bridged: self.counters.bridged.load(Ordering::Relaxed),
        }
    }

    /// The graceful shutdown: stops announcing, stops the bridge, and lets the requests being
    /// forwarded finish (see [`PeerRpcServer::shutdown`]); true when they did within `grace`.
    pub async fn shutdown(&self, grace: Duration) -> bool {
        self.stop_bridge();
        let done = self.server.shutdown(grace).await;
        self.client.stop();
        done
    }

    /// Stops at once.
    pub fn stop(&self) {
        self.stop_bridge();
        self.server.stop();
        self.client.stop();
    }

    fn stop_bridge(&self) {
        for h in &self.announces {
            h.stop();
        }
        if let Some(t) = &self.bridge_task {
            t.abort();
        }
        if let Some(p) = &self.publisher {
            p.close();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
    }
}
