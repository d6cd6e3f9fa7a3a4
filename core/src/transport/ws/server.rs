//! The RPC server over WebSocket: [`WsServer`] and its settings.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

use super::frame::{self as wsframe, CLOSE_DRAINED, CLOSE_GOING_AWAY, CLOSE_NORMAL, FrameReader, Msg, OP_PONG, OP_TEXT, Side};
use super::stream::{AcceptSettings, NetStream, accept_raw};
use super::{DEFAULT_BUSY_POLL, DEFAULT_MAX_MESSAGE_SIZE, MAX_BUSY_POLL};

use crate::error::Result;
use crate::rpc::envelope::{decode_request, encode_reply_into};
use crate::rpc::{Dispatched, Handler, Request, RequestInfo, TransportKind, await_reply, start_dispatch};
use crate::tls::{PeerCert, ServerTls, VerifyClient};
use crate::transport::Lifecycle;
use crate::transport::busy::BusyPoll;

/// A server socket whose peer accepts no bytes for this long is closed (it does not read its
/// replies).
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Settings of a [`WsServer`].
#[derive(Clone)]
pub struct WsServerConfig {
    tls: Option<ServerTls>,
    verify_client: Option<VerifyClient>,
    max_message_size: usize,
    max_in_flight_per_connection: usize,
    max_connections: usize,
    max_connections_per_ip: usize,
    reply_timeout: Option<Duration>,
    handshake_timeout: Duration,
    busy_poll: Duration,
    liveness: crate::transport::limits::WsLiveness,
    hand_off: Option<super::handoff::HandOff>,
}

impl Default for WsServerConfig {
    fn default() -> Self {
        WsServerConfig {
            tls: None,
            verify_client: None,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            max_in_flight_per_connection: 1024,
            max_connections: 10_000,
            max_connections_per_ip: crate::transport::ConnLimits::default().max_per_ip,
            reply_timeout: None,
            handshake_timeout: Duration::from_secs(10),
            busy_poll: DEFAULT_BUSY_POLL,
            liveness: crate::transport::limits::WsLiveness::default(),
            hand_off: None,
        }
    }
}

impl fmt::Debug for WsServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WsServerConfig")
            .field("tls", &self.tls)
            .field("verify_client", &self.verify_client.is_some())
            .field("max_message_size", &self.max_message_size)
            .field("max_in_flight_per_connection", &self.max_in_flight_per_connection)
            .field("max_connections", &self.max_connections)
            .field("reply_timeout", &self.reply_timeout)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("busy_poll", &self.busy_poll)
            .field("max_connections_per_ip", &self.max_connections_per_ip)
            .field("liveness", &self.liveness)
            .field("hand_off", &self.hand_off.is_some())
            .finish()
    }
}

impl WsServerConfig {
    /// Serve `wss://` with this TLS configuration. Default: plain `ws://`.
    pub fn tls(mut self, tls: ServerTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// A hook that accepts or refuses each client before its upgrade (refusal: `HTTP 401`).
    /// Default: none (every client is accepted).
    pub fn verify_client(mut self, hook: VerifyClient) -> Self {
        self.verify_client = Some(hook);
        self
    }

    /// The largest message accepted; a larger one closes the socket that sent it.
    /// Default is 16 MiB.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes.max(1024);
        self
    }

    /// How many requests of one socket run at once; beyond that the socket is not read until a
    /// reply goes out. Default is 1024.
    pub fn max_in_flight_per_connection(mut self, n: usize) -> Self {
        self.max_in_flight_per_connection = n.max(1);
        self
    }

    /// How many sockets are served at once; further ones are closed at once (see
    /// [`crate::transport::ConnLimits`]). Default is 10,000.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n.max(1);
        self
    }

    /// How many sockets one source IP address holds at once; further ones are closed at once.
    /// Default is 2,000.
    pub fn max_connections_per_ip(mut self, n: usize) -> Self {
        self.max_connections_per_ip = n.max(1);
        self
    }

    /// Pings after a silence, the time to answer, and the idle time after which a socket that
    /// sends no request is closed (see [`crate::transport::limits::WsLiveness`]). Default: a ping after 30 s
    /// of silence, 10 s to answer, idle 300 s.
    pub fn liveness(mut self, l: crate::transport::limits::WsLiveness) -> Self {
        self.liveness = l;
        self
    }

    /// A handler that has not answered after this long is answered `ERR_TIMEOUT`.
    /// Default: none.
    pub fn reply_timeout(mut self, t: Option<Duration>) -> Self {
        self.reply_timeout = t;
        self
    }

    /// The time a client has for the TLS handshake and the upgrade. Default is 10 s.
    pub fn handshake_timeout(mut self, t: Duration) -> Self {
        self.handshake_timeout = t;
        self
    }

    #[doc = "How long a connection with nothing running polls for its client's next request \
             before it sleeps. Default is [`DEFAULT_BUSY_POLL`] (50 µs)."]
    #[doc = busy_poll_doc!()]
    pub fn busy_poll(mut self, budget: Duration) -> Self {
        self.busy_poll = budget.min(MAX_BUSY_POLL);
        self
    }

    /// Gives each plain (non-TLS) socket, once upgraded, to `hook` instead of serving it (see
    /// [`super::handoff`]): for a face that reads and writes its sockets on an event loop of its
    /// own. TLS sockets are served as usual. Default: none.
    pub fn hand_off(mut self, hook: super::handoff::HandOff) -> Self {
        self.hand_off = Some(hook);
        self
    }

    pub(crate) fn accept_settings(&self) -> AcceptSettings {
        AcceptSettings {
            tls: self.tls.clone(),
            verify_client: self.verify_client.clone(),
            max_message_size: self.max_message_size,
            handshake_timeout: self.handshake_timeout,
        }
    }
}

/// A WebSocket RPC server (the reference's `PeerRPCServer` with the WS transport, listening).
///
/// Dropping it (or calling [`WsServer::close`]) stops accepting and closes every socket with a
/// WebSocket close frame; requests still running are abandoned.
pub struct WsServer {
    local_addr: SocketAddr,
    life: Lifecycle,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl fmt::Debug for WsServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WsServer").field("local_addr", &self.local_addr).finish_non_exhaustive()
    }
}

impl WsServer {
    /// Binds `addr` (port 0 picks a free port) and serves `handler`.
    pub async fn bind(addr: SocketAddr, handler: impl Handler, config: WsServerConfig) -> Result<WsServer> {
        Self::bind_arc(addr, Arc::new(handler), config).await
    }

    /// Like [`WsServer::bind`], with a shared handler.
    pub async fn bind_arc(addr: SocketAddr, handler: Arc<dyn Handler>, config: WsServerConfig) -> Result<WsServer> {
        let listener = crate::transport::listen(addr)?;
        let local_addr = listener.local_addr()?;
        let life = Lifecycle::listening(&listener)?;
        let task = tokio::spawn(accept_loop(listener, handler, config, life.clone()));
        Ok(WsServer { local_addr, life, task: Some(task) })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The port the server listens on (to announce).
    pub fn port(&self) -> u16 {
        self.local_addr.port()
    }

    /// How many sockets are open now.
    pub fn connections(&self) -> usize {
        self.life.connections.count()
    }

    /// Shuts down gracefully: stops accepting (new connections are refused), lets every socket
    /// finish the requests it has already read (their replies are sent; nothing more is read from
    /// it), then closes it with code 4001 ("every request I read was answered"); idle sockets
    /// close at once. After `grace` the rest are closed as by [`WsServer::close`] (1001). True
    /// when every socket finished in time.
    ///
    /// Requests a client sent that were not read yet never reached a handler: our client fails
    /// them with [`ErrorKind::Connect`](crate::ErrorKind::Connect) on a 4001 close, so `PeerRpcClient` sends them to another
    /// worker.
    pub fn drain(&self, grace: Duration) -> impl Future<Output = bool> + Send + 'static {
        self.life.drain(grace)
    }

    /// Stops accepting and closes every socket; returns once the listener is closed.
    pub async fn close(mut self) {
        self.life.close();
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
    }
}

impl Drop for WsServer {
    fn drop(&mut self) {
        self.life.close();
    }
}

impl crate::rpc::ServerTransport for WsServer {
    fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting (connects are refused once this returns) and closes every socket (in
    /// the background).
    fn close(&self) {
        self.life.close();
    }

    fn drain(&self, grace: Duration) -> crate::rpc::BoxFuture<'static, bool> {
        Box::pin(WsServer::drain(self, grace))
    }
}

async fn accept_loop(listener: TcpListener, handler: Arc<dyn Handler>, config: WsServerConfig, life: Lifecycle) {
    let settings = Arc::new(config.accept_settings());
    let (in_flight, reply_timeout, busy_poll) = (config.max_in_flight_per_connection, config.reply_timeout, config.busy_poll);
    let liveness = config.liveness;
    let hand_off = config.hand_off.clone();
    let limits = crate::transport::ConnLimits { max_connections: config.max_connections, max_per_ip: config.max_connections_per_ip };
    let sources = crate::transport::limits::Sources::new(limits, Arc::default());
    crate::transport::accept_loop(listener, sources, life.draining.clone(), move |tcp, remote| {
        let handler = handler.clone();
        let settings = settings.clone();
        let life = life.clone();
        let hand_off = hand_off.clone();
        async move {
            // A handshake still running when the server closes is cut short.
            let accepted = tokio::select! {
                r = accept_raw(tcp, remote, &settings) => r,
                () = life.closing.cancelled() => return,
            };
            let (io, leftover, cert) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!("ws: {e}");
                    return;
                }
            };
            let io = match (io, &hand_off) {
                (NetStream::Plain(tcp), Some(hook)) => {
                    match tcp.into_std() {
                        Ok(stream) => hook(super::handoff::HandedOff { stream, leftover, remote }),
                        Err(e) => tracing::debug!("ws: hand-off of {remote}: {e}"),
                    }
                    return;
                }
                (io, _) => io,
            };
            let _live = life.connections.enter();
            let max = settings.max_message_size;
            serve_connection(io, leftover, remote, cert, handler, in_flight, max, reply_timeout, busy_poll, liveness, &life).await;
        }
    })
    .await;
}

/// Runs a socket write, allowing it [`WRITE_TIMEOUT`]; the timer is only armed when the write
/// does not complete at once (the usual case: the data goes to the socket buffer), which saves
/// reading the clock and registering a timer twice per reply.
async fn write_within<F: std::future::Future>(fut: F) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    match std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await {
        Poll::Ready(v) => Some(v),
        Poll::Pending => tokio::time::timeout(WRITE_TIMEOUT, fut).await.ok(),
    }
}

/// A server connection's outgoing bytes: reply frames are appended as they come and written out
/// together when nothing else is ready.
struct Outbox {
    frames: Vec<u8>,
    scratch: Vec<u8>,
}

impl Outbox {
    fn reply<R: serde::Serialize>(&mut self, rid: &Value, body: &std::result::Result<R, String>) {
        encode_reply_into(&mut self.scratch, rid, body);
        wsframe::encode_frame(&mut self.frames, OP_TEXT, &self.scratch, None);
        if self.scratch.capacity() > 64 * 1024 {
            self.scratch = Vec::new();
        }
    }

    /// Writes what is queued (allowing [`WRITE_TIMEOUT`]); false when the socket is gone.
    async fn flush(&mut self, io: &mut NetStream) -> bool {
        if self.frames.is_empty() {
            return true;
        }
        matches!(write_within(wsframe::write_out(io, &mut self.frames)).await, Some(Ok(())))
    }
}

/// Serves one socket in one task: reads requests, runs the handler on each in turn
/// ([`start_dispatch`]); a reply given before the handler returns is queued at once, a kept
/// [`crate::rpc::Reply`] is awaited concurrently (up to `max_in_flight`) and queued when it comes.
/// Queued replies go out in one write once every whole request read so far has been handled.
#[allow(clippy::too_many_arguments)]
async fn serve_connection(
    mut io: NetStream,
    leftover: Vec<u8>,
    remote: SocketAddr,
    cert: Option<Arc<PeerCert>>,
    handler: Arc<dyn Handler>,
    max_in_flight: usize,
    max_message_size: usize,
    reply_timeout: Option<Duration>,
    busy_poll: Duration,
    liveness: crate::transport::limits::WsLiveness,
    life: &Lifecycle,
) {
    let mut frames = FrameReader::new(Side::Server, max_message_size, leftover);
    let busy = BusyPoll::new(busy_poll);
    let mut out = Outbox { frames: Vec::with_capacity(4096), scratch: Vec::with_capacity(256) };
    let mut running = FuturesUnordered::new();
    let info = RequestInfo { transport: TransportKind::Ws, remote_addr: Some(remote), cert, http: None };
    // Made once: a `cancelled()` future per loop iteration would join and leave the token's waiter
    // list (two lock round trips) on every message.
    let stopping = life.closing.cancelled();
    tokio::pin!(stopping);
    // Draining: handle what was read, send the replies, read nothing more, then close.
    let drain = life.draining.cancelled();
    tokio::pin!(drain);
    let mut drained = false;
    // Liveness: counts of reads and requests, compared by the timer when it fires.
    let mut live = crate::transport::limits::Liveness::new(liveness);
    let (mut reads, mut requests) = (0u64, 0u64);
    let closing: (u16, String) = loop {
        // Handle every whole message buffered, up to the in-flight bound.
        let mut close = None;
        while running.len() < max_in_flight {
            match frames.next_message() {
                Ok(Some(Msg::Text(bytes) | Msg::Binary(bytes))) => match decode_request(bytes) {
                    Ok(d) => {
                        requests += 1;
                        let req = Request { rid: d.rid.clone(), key: d.key, payload: d.payload, info: info.clone() };
                        // A handler that answers before returning (the common case) has its reply
                        // queued at once; only a kept `Reply` becomes a future to poll.
                        match start_dispatch(&*handler, req) {
                            Dispatched::Answered(body) => out.reply(&d.rid, &body),
                            Dispatched::Pending(rx) => {
                                running.push(async move { (d.rid, await_reply(rx, reply_timeout).await) });
                            }
                        }
                    }
                    Err(e) => tracing::debug!("ws {remote}: dropped a malformed request: {e}"),
                },
                Ok(Some(Msg::Ping(p))) => wsframe::encode_frame(&mut out.frames, OP_PONG, p, None),
                Ok(Some(Msg::Close(code))) => {
                    close = Some((code.unwrap_or(CLOSE_NORMAL), String::new()));
                    break;
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!("ws {remote}: {e}");
                    close = Some((e.close_code(), e.to_string()));
                    break;
                }
            }
        }
        if let Some(c) = close {
            break c;
        }
        if !out.flush(&mut io).await {
            return;
        }
        if drained && running.is_empty() {
            break (CLOSE_DRAINED, wsframe::DRAINED_REASON.to_string());
        }
        // With nothing running, poll for the client's next request for a few microseconds first.
        let waiting = (running.is_empty() && busy.enabled() && !drained).then(Instant::now);
        let spun = match waiting {
            Some(_) => busy.spin(|cx| frames.poll_fill(&mut io, cx)).await,
            None => None,
        };
        let read = match spun {
            Some(r) => Some(r),
            None => tokio::select! {
                biased;
                Some((rid, body)) = running.next(), if !running.is_empty() => {
                    out.reply(&rid, &body);
                    // Replies that are ready together leave together.
                    while let Some(Some((rid, body))) = running.next().now_or_never() {
                        out.reply(&rid, &body);
                    }
                    None
                }
                r = frames.fill(&mut io), if running.len() < max_in_flight && !drained => {
                    if let Some(t) = waiting {
                        busy.observe(t.elapsed());
                    }
                    Some(r)
                }
                _ = &mut stopping => break (CLOSE_GOING_AWAY, "the server is closing".to_string()),
                () = &mut drain, if !drained => {
                    drained = true;
                    None
                }
                v = live.check(reads, requests) => match v {
                    crate::transport::limits::Verdict::Ping => {
                        wsframe::encode_frame(&mut out.frames, wsframe::OP_PING, b"", None);
                        None
                    }
                    crate::transport::limits::Verdict::Dead => break (CLOSE_GOING_AWAY, "no answer to a ping".to_string()),
                    crate::transport::limits::Verdict::Idle => break (CLOSE_NORMAL, "idle".to_string()),
                },
            },
        };
        if let Some(Ok(_)) = read {
            reads += 1;
        }
        match read {
            Some(Ok(0)) => return,
            Some(Err(e)) => {
                tracing::debug!("ws {remote}: {e}");
                return;
            }
            Some(Ok(_)) | None => {}
        }
    };
    // Send the close frame (after what is queued) and let the socket go.
    wsframe::encode_close(&mut out.frames, closing.0, &closing.1, None);
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = wsframe::write_out(&mut io, &mut out.frames).await;
        let _ = io.shutdown().await;
    })
    .await;
}
