//! The uTP RPC server: accepts uTP streams on a [`UtpNode`] and answers the requests they carry.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use librqbit_utp::UtpStream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::node::UtpNode;
use super::split::JsonSplitter;
use super::{DEFAULT_MAX_MESSAGE_SIZE, write_message_within};
use crate::error::{Error, ErrorKind, Result};
use crate::rpc::envelope::{decode_request, encode_reply_into};
use crate::rpc::{
    BoxFuture, Dispatched, Handler, Request, RequestInfo, ServerTransport, TransportKind, WireReply, await_reply, start_dispatch,
};
use crate::transport::Lifecycle;

/// A reply of which no 64 KiB can be written within this time closes its stream (the peer reads
/// nothing). A large reply on a slow, lossy path takes longer in all; it only has to keep moving.
const WRITE_STALL: Duration = Duration::from_secs(30);
/// How many bytes of requests a stream buffers (beyond the engine's own 1 MiB) while a reply is
/// written.
const READ_AHEAD: usize = 1 << 20;

/// [`UtpServerConfig::idle_timeout`]'s default.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// The settings of a [`UtpServer`].
#[derive(Debug, Clone)]
pub struct UtpServerConfig {
    /// A handler that has not answered within this time gets `ERR_TIMEOUT` sent for it.
    pub reply_timeout: Option<Duration>,
    /// The largest request accepted, in bytes; a larger one closes its stream. Default 16 MiB.
    pub max_message_size: usize,
    /// Requests run at once per stream; past this the stream is not read until replies go out.
    /// Default 1024.
    pub max_in_flight_per_stream: usize,
    /// Write each reply on its own and wait until it left before the next one (default true), so
    /// that a reply of up to about 1.3 KB reaches a legacy peer (which parses every chunk it
    /// receives as one message) as one chunk. False lets replies share packets (faster with many
    /// requests in flight; only for peers that split the stream themselves, as ours do).
    pub one_message_per_write: bool,
    /// A stream that carries no request for this long (none running, nothing read) is closed.
    /// The engine never ends a quiet stream whose data was all acknowledged, so without this a
    /// client that vanished (a crash, a NAT mapping gone) would hold one of the node's
    /// [`UtpNodeConfig::max_streams`](super::UtpNodeConfig::max_streams) slots until the node
    /// closes. Default 300 s, as the WS server's idle sockets; our clients replace a stream
    /// idle for less than the node's inactivity timeout (60 s), so they never send on one the
    /// server is closing. `None` keeps quiet streams open.
    pub idle_timeout: Option<Duration>,
}

impl Default for UtpServerConfig {
    fn default() -> Self {
        UtpServerConfig {
            reply_timeout: None,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            max_in_flight_per_stream: 1024,
            one_message_per_write: true,
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
        }
    }
}

/// An RPC server on a [`UtpNode`]: every uTP stream the node accepts carries requests
/// `[rid, key, payload]` (JSON texts one after another, however the packets split them) and gets
/// replies `[rid, error, result]`. The handler sees the caller's endpoint as this node sees it
/// (behind a NAT, its mapping) in [`RequestInfo::remote_addr`].
///
/// A node has at most one server. Closing the server stops accepting and closes its streams; the
/// node's socket stays open for its other users (the reference closed the process-wide socket).
pub struct UtpServer {
    node: Arc<UtpNode>,
    life: Lifecycle,
}

impl std::fmt::Debug for UtpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UtpServer").field("addr", &self.node.local_addr()).finish_non_exhaustive()
    }
}

impl UtpServer {
    /// Serves `handler` on `node`. Errors: `InvalidState` when the node already has a server.
    pub fn serve(node: Arc<UtpNode>, handler: Arc<dyn Handler>, config: UtpServerConfig) -> Result<UtpServer> {
        if node.serving.swap(true, Ordering::AcqRel) {
            return Err(Error::new(ErrorKind::InvalidState, "this uTP node already has a server"));
        }
        let life = Lifecycle::new();
        let (n, l) = (node.clone(), life.clone());
        tokio::spawn(async move {
            let config = Arc::new(config);
            loop {
                let stream = tokio::select! {
                    s = n.accept() => match s {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::debug!("uTP accept: {e}");
                            break;
                        }
                    },
                    _ = l.draining.cancelled() => break,
                };
                let (h, c, life) = (handler.clone(), config.clone(), l.clone());
                let live = l.connections.enter();
                tokio::spawn(async move {
                    let _live = live;
                    serve_stream(stream, &*h, &c, &life).await;
                });
            }
            n.serving.store(false, Ordering::Release);
        });
        Ok(UtpServer { node, life })
    }

    /// Binds a new node on `addr` and serves `handler` on it.
    pub async fn bind(addr: SocketAddr, handler: Arc<dyn Handler>, config: UtpServerConfig) -> Result<UtpServer> {
        UtpServer::serve(UtpNode::bind(addr).await?, handler, config)
    }

    /// The bound address (its port is what gets announced).
    pub fn local_addr(&self) -> SocketAddr {
        self.node.local_addr()
    }

    /// The node this server listens on (punch through it, or use it for a client).
    pub fn node(&self) -> &Arc<UtpNode> {
        &self.node
    }
}

impl ServerTransport for UtpServer {
    fn local_addr(&self) -> SocketAddr {
        self.node.local_addr()
    }

    fn close(&self) {
        self.life.close();
    }

    fn drain(&self, grace: Duration) -> BoxFuture<'static, bool> {
        Box::pin(self.life.drain(grace))
    }
}

impl Drop for UtpServer {
    fn drop(&mut self) {
        self.life.close();
    }
}

/// Serves one stream: reads requests, runs the handler on each, writes the replies.
async fn serve_stream(stream: UtpStream, handler: &dyn Handler, config: &UtpServerConfig, life: &Lifecycle) {
    let remote = stream.remote_addr();
    let (mut rd, mut wr) = stream.split();
    let info = RequestInfo { transport: TransportKind::Utp, remote_addr: Some(remote), cert: None, http: None };
    let mut split = JsonSplitter::new(config.max_message_size);
    let mut running: FuturesUnordered<BoxFuture<'static, (serde_json::Value, WireReply)>> = FuturesUnordered::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut out = Vec::with_capacity(256);
    let mut eof = false;
    let mut draining = false;
    // When the stream last read bytes or finished a request.
    let mut active = tokio::time::Instant::now();
    let idle_limit = config.idle_timeout.unwrap_or(Duration::ZERO).min(Duration::from_secs(1 << 32));
    loop {
        // Handle every whole request buffered, up to the in-flight bound.
        let mut broken = false;
        while running.len() < config.max_in_flight_per_stream && !draining {
            match split.next_message() {
                Ok(Some(msg)) => match decode_request(msg) {
                    Ok(d) => {
                        let req = Request { rid: d.rid.clone(), key: d.key, payload: d.payload, info: info.clone() };
                        match start_dispatch(handler, req) {
                            Dispatched::Answered(body) => {
                                let ahead = ReadAhead { rd: &mut rd, split: &mut split, buf: &mut buf, eof: &mut eof };
                                if !reply(&mut wr, &mut out, &d.rid, &body, config, ahead).await {
                                    return;
                                }
                            }
                            Dispatched::Pending(rx) => {
                                let t = config.reply_timeout;
                                running.push(Box::pin(async move { (d.rid, await_reply(rx, t).await) }));
                            }
                        }
                    }
                    Err(e) => tracing::debug!("uTP {remote}: dropped a malformed request: {e}"),
                },
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!("uTP {remote}: {e}; closing the stream");
                    broken = true;
                    break;
                }
            }
        }
        if broken || ((eof || draining) && running.is_empty()) {
            break;
        }
        let can_read = !eof && !draining && running.len() < config.max_in_flight_per_stream;
        // (With no idle timeout the branch is off and the sleep never polled.)
        let quiet = running.is_empty() && config.idle_timeout.is_some();
        let idle_until = active + idle_limit;
        tokio::select! {
            r = rd.read(&mut buf), if can_read => match r {
                Ok(0) | Err(_) => eof = true,
                Ok(n) => {
                    split.push(&buf[..n]);
                    active = tokio::time::Instant::now();
                }
            },
            Some((rid, body)) = running.next(), if !running.is_empty() => {
                let ahead = ReadAhead { rd: &mut rd, split: &mut split, buf: &mut buf, eof: &mut eof };
                if !reply(&mut wr, &mut out, &rid, &body, config, ahead).await {
                    return;
                }
                active = tokio::time::Instant::now();
            }
            _ = tokio::time::sleep_until(idle_until), if quiet => {
                tracing::debug!("uTP {remote}: no request for {idle_limit:?}; closing the stream");
                break;
            }
            _ = life.draining.cancelled(), if !draining => draining = true,
            _ = life.closing.cancelled() => return,
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), wr.shutdown()).await;
}

/// The stream's read side, read on while a reply is written.
struct ReadAhead<'a> {
    rd: &'a mut librqbit_utp::UtpStreamReadHalf,
    split: &'a mut JsonSplitter,
    buf: &'a mut [u8],
    eof: &'a mut bool,
}

/// Writes one reply; false when the stream is gone.
///
/// The stream is read on meanwhile (up to [`READ_AHEAD`] bytes buffered), so that the engine's
/// receive window does not close while a reply waits for the peer: librqbit-utp 0.7 announces a
/// reopened window once, and a peer that missed that packet would wait forever to send.
async fn reply(
    wr: &mut librqbit_utp::UtpStreamWriteHalf,
    out: &mut Vec<u8>,
    rid: &serde_json::Value,
    body: &WireReply,
    config: &UtpServerConfig,
    ahead: ReadAhead<'_>,
) -> bool {
    encode_reply_into(out, rid, body);
    let write = write_message_within(wr, out, config.one_message_per_write, WRITE_STALL);
    tokio::pin!(write);
    let ReadAhead { rd, split, buf, eof } = ahead;
    loop {
        tokio::select! {
            r = &mut write => return r.is_ok(),
            r = rd.read(buf), if !*eof && split.buffered() < READ_AHEAD => match r {
                Ok(0) | Err(_) => *eof = true,
                Ok(n) => split.push(&buf[..n]),
            },
        }
    }
}
