//! Transports: one module per wire protocol, each with its client and its server.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

pub mod http;
pub mod ws;

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
