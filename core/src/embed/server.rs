//! RPC servers for embedders.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use crate::error::Result;
use crate::rpc::{Handler, PeerRpcServer};
use crate::tls::ServerTls;

use super::{EmbedLink, Ops, Runtime};

/// How long a blocking bind waits.
const BIND_TIMEOUT: Duration = Duration::from_secs(10);

/// Options of an [`EmbedServer`].
#[derive(Debug, Clone, Default)]
pub struct ServerOptions {
    /// Port to listen on (0: any free port). Default 0.
    pub port: u16,
    /// TLS: `Some` makes the server HTTPS/WSS; client certificates reach the handler.
    pub tls: Option<ServerTls>,
    /// Answer `ERR_TIMEOUT` when the handler has not replied within this time. Default none.
    pub reply_timeout: Option<Duration>,
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
            let transport =
                crate::transport::bind_server(kind, addr, handler, options.tls, options.reply_timeout).await?;
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
