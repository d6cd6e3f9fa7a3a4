//! RPC servers for embedders.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::transport::utp::broker::{BrokerClient, BrokerClientConfig, Registration};
use crate::transport::utp::{PunchEvent, UtpNode, UtpServer, UtpServerConfig};

use crate::error::Result;
use crate::rpc::{Handler, PeerRpcServer};
use crate::tls::{ServerTls, VerifyClient};

use super::{EmbedLink, Ops, Runtime};

/// How long a blocking bind waits.
const BIND_TIMEOUT: Duration = Duration::from_secs(10);

/// Options of an [`EmbedServer`].
#[derive(Clone, Default)]
pub struct ServerOptions {
    /// Port to listen on (0: any free port). Default 0.
    pub port: u16,
    /// TLS: `Some` makes the server HTTPS/WSS; client certificates reach the handler.
    pub tls: Option<ServerTls>,
    /// Answer `ERR_TIMEOUT` when the handler has not replied within this time. Default none.
    pub reply_timeout: Option<Duration>,
    /// WS only: a hook that sees each client (its certificate's fingerprint, address, path)
    /// before the socket is accepted, and refuses it by returning false. It runs on a worker
    /// thread, concurrently for several clients. Default none. A listen over HTTP with a hook
    /// fails with `InvalidArgument`.
    pub verify_client: Option<VerifyClient>,
    /// uTP only: the name of a broker (see [`crate::transport::utp::broker`]) that every name
    /// announced is also registered with, from the server's node, so that clients behind other
    /// NATs can be introduced. Default none.
    pub broker: Option<String>,
    /// uTP with a broker: how often registrations are renewed. Default 5 s.
    pub broker_register_interval: Option<Duration>,
    /// uTP only: serve on this node (a socket shared with clients and punches, as the legacy
    /// transport's one socket per process) instead of binding one on `port`. Default none.
    pub utp_node: Option<Arc<UtpNode>>,
    /// HTTP and WS: limits against hostile load (connections per source, read deadlines, the
    /// body budget, WS liveness); set them by name with [`crate::transport::ServerLimits::set`].
    pub limits: crate::transport::ServerLimits,
    /// WS without TLS only: each socket, once upgraded, goes to this hook instead of being served
    /// (see [`crate::transport::ws::handoff`]): for a face that reads and writes its sockets on
    /// an event loop of its own. Such sockets are not drained by [`EmbedServer::shutdown`] nor
    /// closed by [`EmbedServer::close`]: they are the hook's. Default none.
    pub hand_off: Option<crate::transport::ws::handoff::HandOff>,
}

impl std::fmt::Debug for ServerOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerOptions")
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("reply_timeout", &self.reply_timeout)
            .field("verify_client", &self.verify_client.is_some())
            .field("broker", &self.broker)
            .field("utp_node", &self.utp_node)
            .field("limits", &self.limits)
            .field("hand_off", &self.hand_off.is_some())
            .finish()
    }
}

/// Which transport a server speaks (HTTP, WS or uTP).
pub type ServerTransportKind = crate::transport::TransportKind;

/// A listening RPC server (a [`PeerRpcServer`]) driven by an embed [`Runtime`].
#[derive(Debug)]
pub struct EmbedServer {
    rt: Runtime,
    server: Arc<PeerRpcServer>,
    ops: Ops,
    utp: Option<UtpParts>,
}

/// What a uTP server has beside its transport: its node, and its broker registrations.
#[derive(Debug)]
struct UtpParts {
    node: Arc<UtpNode>,
    broker: Option<(BrokerClient, Duration)>,
    registrations: Mutex<Vec<Registration>>,
    stop: CancellationToken,
}

impl EmbedServer {
    /// Binds `0.0.0.0:port` and serves `handler`. Blocks until bound (at most 10 s); refuses to
    /// run on a worker thread.
    pub fn listen(link: &EmbedLink, kind: ServerTransportKind, handler: Arc<dyn Handler>, options: ServerOptions) -> Result<EmbedServer> {
        let rt = link.runtime().clone();
        let core_link = link.link().clone();
        let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, options.port));
        if kind == ServerTransportKind::Utp {
            return EmbedServer::listen_utp(rt, core_link, addr, handler, options);
        }
        if options.broker.is_some() || options.utp_node.is_some() {
            return Err(crate::Error::invalid("a broker or a uTP node needs the uTP transport"));
        }
        let server = rt.block_on(BIND_TIMEOUT, async move {
            let settings = crate::transport::ServerSettings {
                tls: options.tls,
                reply_timeout: options.reply_timeout,
                verify_client: options.verify_client,
                limits: options.limits,
                hand_off: options.hand_off,
            };
            let transport = crate::transport::bind_server_with(kind, addr, handler, settings).await?;
            Ok(PeerRpcServer::new(core_link, transport))
        })?;
        Ok(EmbedServer { rt, server: Arc::new(server), ops: Ops::new(), utp: None })
    }

    fn listen_utp(
        rt: Runtime,
        link: crate::link::Link,
        addr: SocketAddr,
        handler: Arc<dyn Handler>,
        options: ServerOptions,
    ) -> Result<EmbedServer> {
        if options.tls.is_some() || options.verify_client.is_some() {
            return Err(crate::Error::invalid("the uTP transport has no TLS and no verify_client"));
        }
        let config = UtpServerConfig { reply_timeout: options.reply_timeout, ..Default::default() };
        let utp = match options.utp_node {
            Some(node) => {
                let _g = rt.handle().enter();
                UtpServer::serve(node, handler, config)?
            }
            None => rt.block_on(BIND_TIMEOUT, async move { UtpServer::bind(addr, handler, config).await })?,
        };
        let node = utp.node().clone();
        let broker = options.broker.map(|name| {
            let config = BrokerClientConfig { name, ..Default::default() };
            let interval = options.broker_register_interval.unwrap_or(Duration::from_secs(5));
            (BrokerClient::new(link.clone(), node.clone(), config), interval)
        });
        let server = PeerRpcServer::new(link, Arc::new(utp));
        let utp = UtpParts { node, broker, registrations: Mutex::new(Vec::new()), stop: CancellationToken::new() };
        Ok(EmbedServer { rt, server: Arc::new(server), ops: Ops::new(), utp: Some(utp) })
    }

    /// uTP: punches `target` (`"ip:port"`) from the server's node until it answers (see
    /// [`UtpNode::punch`]); `done` gets `Ok(())`, or `PunchTimeout` after `timeout`.
    /// `InvalidState` on other transports, `InvalidArgument` for a bad address.
    pub fn punch(&self, target: &str, timeout: Duration, done: impl FnOnce(Result<()>) + Send + 'static) {
        let node = self.utp.as_ref().map(|u| u.node.clone());
        let target = target.parse::<SocketAddr>();
        let fut = async move {
            let node = node.ok_or_else(|| crate::Error::new(crate::ErrorKind::InvalidState, "punch needs the uTP transport"))?;
            let target = target.map_err(|e| crate::Error::invalid(format!("bad punch target: {e}")))?;
            node.punch(target, timeout).await
        };
        self.ops.spawn(&self.rt, fut, done);
    }

    /// uTP: calls `on_punch` with the `"ip:port"` of every peer whose punch reaches the server's
    /// node (its NAT mapping), on a runtime thread, until the server is closed. Punches asked
    /// for by a broker are reported too. `InvalidState` on other transports.
    pub fn on_punch(&self, on_punch: impl Fn(String) + Send + Sync + 'static) -> Result<()> {
        let Some(u) = &self.utp else {
            return Err(crate::Error::new(crate::ErrorKind::InvalidState, "punch events need the uTP transport"));
        };
        let mut events = u.node.subscribe();
        let stop = u.stop.clone();
        let _g = self.rt.handle().enter();
        tokio::spawn(async move {
            loop {
                let ev = tokio::select! {
                    e = events.recv() => e,
                    _ = stop.cancelled() => return,
                };
                match ev {
                    Ok(PunchEvent::Punched { from }) => on_punch(from.to_string()),
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => return,
                }
            }
        });
        Ok(())
    }

    /// Registers `name` with the broker (see [`ServerOptions::broker`]) now and then on the
    /// timer, until closed, without announcing it to the Grapes. Nothing without a broker.
    pub fn register(&self, name: &str) {
        let Some(UtpParts { broker: Some((b, interval)), registrations, .. }) = &self.utp else { return };
        let _g = self.rt.handle().enter();
        let r = b.start_registering(name, *interval);
        registrations.lock().unwrap_or_else(|e| e.into_inner()).push(r);
    }

    /// The listening port.
    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// Announces `name` once.
    pub fn announce(&self, name: String, done: impl FnOnce(Result<()>) + Send + 'static) {
        if let Some(UtpParts { broker: Some((b, _)), .. }) = &self.utp {
            let (s, b) = (self.server.clone(), b.clone());
            let fut = async move {
                s.announce(&name).await?;
                b.register(&name).await.map(|_| ())
            };
            return self.ops.spawn(&self.rt, fut, done);
        }
        let s = self.server.clone();
        self.ops.spawn(&self.rt, async move { s.announce(&name).await }, done);
    }

    /// Keeps announcing `name` every `interval` (jittered) until stopped or closed.
    pub fn start_announcing(&self, name: &str, interval: Duration) {
        let _g = self.rt.handle().enter();
        let _ = self.server.start_announcing(name, interval);
        self.register(name);
    }

    /// Stops announcing `name`; false when it was not announced.
    pub fn stop_announcing(&self, name: &str) -> bool {
        self.server.stop_announcing(name)
    }

    /// Shuts down gracefully (see [`PeerRpcServer::shutdown`]): stops announcing, unannounces,
    /// stops listening,
    /// lets the requests already read finish, then closes. `done` gets `Ok(true)` when every
    /// connection finished within `grace`, `Ok(false)` when the rest had to be closed.
    pub fn shutdown(&self, grace: Duration, done: impl FnOnce(Result<bool>) + Send + 'static) {
        let s = self.server.clone();
        self.ops.spawn(&self.rt, async move { Ok(s.shutdown(grace).await) }, done);
    }

    /// Cancels pending announces, stops announcing, stops listening and closes connections.
    /// The handler is dropped once the requests in flight have finished.
    pub fn close(&self) {
        if let Some(u) = &self.utp {
            u.stop.cancel();
            u.registrations.lock().unwrap_or_else(|e| e.into_inner()).clear();
        }
        self.ops.close(super::link::CLOSE_WAIT);
        let _g = self.rt.handle().enter();
        self.server.stop();
    }
}

impl Drop for EmbedServer {
    fn drop(&mut self) {
        self.close();
    }
}
