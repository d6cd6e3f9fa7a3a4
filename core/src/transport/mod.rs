//! Transports: one module per wire protocol, each with its client and its server.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::error::Result;
use crate::rpc::{ClientTransport, Handler, ServerTransport};
use crate::tls::{ClientTls, ServerTls, VerifyClient};

mod busy;
pub mod http;
pub mod ws;
mod wsframe;

pub use crate::rpc::TransportKind;

/// A client transport of `kind` with default settings: HTTP(S) (grenache-nodejs-http) or WS(S)
/// (grenache-nodejs-ws), over TLS when `tls` is given. Needs a tokio runtime context.
pub fn client(kind: TransportKind, tls: Option<ClientTls>) -> Arc<dyn ClientTransport> {
    match kind {
        TransportKind::Ws => {
            let mut config = ws::WsClientConfig::default();
            if let Some(t) = tls {
                config = config.tls(t);
            }
            Arc::new(ws::WsClient::new(config))
        }
        _ => Arc::new(http::HttpClient::new(http::HttpClientConfig {
            tls: tls.map(|t| t.config()),
            ..Default::default()
        })),
    }
}

/// Binds a server transport of `kind` on `addr` (port 0: any free port) serving `handler`, over
/// TLS when `tls` is given; a handler that has not answered within `reply_timeout` gets
/// `ERR_TIMEOUT` sent for it. Errors: `Io` when the address cannot be bound.
pub async fn bind_server(
    kind: TransportKind,
    addr: SocketAddr,
    handler: Arc<dyn Handler>,
    tls: Option<ServerTls>,
    reply_timeout: Option<Duration>,
) -> Result<Arc<dyn ServerTransport>> {
    bind_server_with(kind, addr, handler, ServerSettings { tls, reply_timeout, verify_client: None }).await
}

/// The settings of a server transport that [`bind_server_with`] applies to either kind.
#[derive(Clone, Default)]
pub struct ServerSettings {
    /// TLS: `Some` makes the server HTTPS or WSS.
    pub tls: Option<ServerTls>,
    /// A handler that has not answered within this time gets `ERR_TIMEOUT` sent for it.
    pub reply_timeout: Option<Duration>,
    /// WS only: a hook that accepts or refuses each client before its upgrade (see
    /// [`ws::WsServerConfig::verify_client`]). The HTTP transport has none and refuses it.
    pub verify_client: Option<VerifyClient>,
}

impl std::fmt::Debug for ServerSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerSettings")
            .field("tls", &self.tls)
            .field("reply_timeout", &self.reply_timeout)
            .field("verify_client", &self.verify_client.is_some())
            .finish()
    }
}

/// Like [`bind_server`], with every setting. Errors: `InvalidArgument` for a `verify_client`
/// hook on the HTTP transport; `Io` when the address cannot be bound.
pub async fn bind_server_with(
    kind: TransportKind,
    addr: SocketAddr,
    handler: Arc<dyn Handler>,
    settings: ServerSettings,
) -> Result<Arc<dyn ServerTransport>> {
    let ServerSettings { tls, reply_timeout, verify_client } = settings;
    Ok(match kind {
        TransportKind::Ws => {
            let mut config = ws::WsServerConfig::default().reply_timeout(reply_timeout);
            if let Some(t) = tls {
                config = config.tls(t);
            }
            if let Some(hook) = verify_client {
                config = config.verify_client(hook);
            }
            Arc::new(ws::WsServer::bind_arc(addr, handler, config).await?)
        }
        _ => {
            if verify_client.is_some() {
                return Err(crate::Error::invalid("verify_client is supported by the WS transport only"));
            }
            let config = http::HttpServerConfig { reply_timeout, tls: tls.map(|t| t.config()), ..Default::default() };
            Arc::new(http::HttpServer::bind(addr, handler, config).await?)
        }
    })
}

/// The accept loop every server here shares (Grape API, HTTP, WS, PUB/SUB).
///
/// Accepts connections until `stop` is cancelled, serving at most `max_connections` at once
/// (further ones wait in the kernel's backlog). Each socket (with `TCP_NODELAY`) goes to `serve`
/// in a task of its own, which holds its connection slot until it ends. Accept errors (EMFILE and
/// friends) back off 50 ms instead of spinning.
pub(crate) async fn accept_loop<F, Fut>(listener: TcpListener, max_connections: usize, stop: CancellationToken, serve: F)
where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(max_connections.clamp(1, Semaphore::MAX_PERMITS)));
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = stop.cancelled() => return,
        };
        let (tcp, remote) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, addr = ?listener.local_addr().ok(), "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => return,
        };
        let _ = tcp.set_nodelay(true);
        let conn = serve(tcp, remote);
        tokio::spawn(async move {
            let _permit = permit;
            conn.await;
        });
    }
}

/// The graceful shutdown shared by the servers: `draining` stops the accept loop and tells each
/// connection to finish what it has read and close; after `grace` (or once `connections` is 0)
/// `shutdown` closes what is left. True when every connection finished in time.
pub(crate) async fn drain(draining: CancellationToken, shutdown: CancellationToken, connections: Arc<std::sync::atomic::AtomicUsize>, grace: Duration) -> bool {
    draining.cancel();
    // A grace too long to add to the clock never ends.
    let deadline = tokio::time::Instant::now().checked_add(grace);
    let finished = loop {
        if connections.load(std::sync::atomic::Ordering::Acquire) == 0 {
            break true;
        }
        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    shutdown.cancel();
    finished
}
