//! RPC servers for embedders.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

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
}

impl std::fmt::Debug for ServerOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerOptions")
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("reply_timeout", &self.reply_timeout)
            .field("verify_client", &self.verify_client.is_some())
            .finish()
    }
}

/// Which transport a server speaks (HTTP or WS).
pub type ServerTransportKind = crate::transport::TransportKind;

/// A listening RPC server (a [`PeerRpcServer`]) driven by an embed [`Runtime`].
#[derive(Debug)]
pub struct EmbedServer {
    rt: Runtime,
    server: Arc<PeerRpcServer>,
    ops: Ops,
}

impl EmbedServer {
    /// Binds `0.0.0.0:port` and serves `handler`. Blocks until bound (at most 10 s); refuses to
    /// run on a worker thread.
    pub fn listen(
        link: &EmbedLink,
        kind: ServerTransportKind,
        handler: Arc<dyn Handler>,
        options: ServerOptions,
    ) -> Result<EmbedServer> {
        let rt = link.runtime().clone();
        let core_link = link.link().clone();
        let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, options.port));
        let server = rt.block_on(BIND_TIMEOUT, async move {
            let settings = crate::transport::ServerSettings {
                tls: options.tls,
                reply_timeout: options.reply_timeout,
                verify_client: options.verify_client,
                limits: Default::default(),
            };
            let transport = crate::transport::bind_server_with(kind, addr, handler, settings).await?;
            Ok(PeerRpcServer::new(core_link, transport))
        })?;
        Ok(EmbedServer { rt, server: Arc::new(server), ops: Ops::new() })
    }

    /// The listening port.
    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// Announces `name` once.
    pub fn announce(&self, name: String, done: impl FnOnce(Result<()>) + Send + 'static) {
        let s = self.server.clone();
        self.ops.spawn(&self.rt, async move { s.announce(&name).await }, done);
    }

    /// Keeps announcing `name` every `interval` (jittered) until stopped or closed.
    pub fn start_announcing(&self, name: &str, interval: Duration) {
        let _g = self.rt.handle().enter();
        let _ = self.server.start_announcing(name, interval);
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
