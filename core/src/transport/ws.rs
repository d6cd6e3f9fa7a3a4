//! The WebSocket transport, wire-compatible with grenache-nodejs-ws 1.0.0.
//!
//! Wire format (see the module docs of [`crate::rpc`]): one text frame per message, request
//! `[rid, key, payload]`, reply `[rid, error|null, result]`; replies come back in any order and are
//! matched by `rid`. Clients dial `ws://host:port/ws` (`wss://` with TLS); the server accepts any
//! path, and text and binary frames.
//!
//! * [`WsServer`] listens, optionally with TLS ([`ServerTls`]) and a [`VerifyClient`] hook that
//!   sees the client certificate before the upgrade (a refusal is answered `HTTP 401`). Each
//!   request goes to the [`Handler`] with the connection's client certificate in
//!   [`RequestInfo::cert`]. Many requests may be in flight per socket.
//! * [`WsClient`] keeps up to `max_active_dest_transports` (default 3) sockets per destination,
//!   multiplexes requests over them (an idle open socket first, a new one while all are busy,
//!   then the least loaded) and implements [`ClientTransport`].
//!
//! Per-request path (kept short for sequential latency): the framing is our own
//! (`wsframe`, RFC 6455 with no extensions); a client request writes its own frame (no writer
//! task; requests issued together share one write) and is completed by the socket's reader task;
//! the server runs the handler in the socket's task, queues a reply given before the handler
//! returns at once and writes every queued reply in one go once the requests read so far are
//! handled, so a round trip involves no task spawn and no extra timer.
//!
//! Deliberate differences from the reference (also in `docs/compat.md`):
//! * a refused or failed connection (TCP, TLS, `401`) fails the requests waiting for it at once,
//!   with [`ErrorKind::Connect`], [`ErrorKind::TlsHandshake`] or [`ErrorKind::ClientRefused`]; the
//!   reference crashes the process on an uncaught `'error'`;
//! * requests in flight fail at once with [`ErrorKind::Closed`] when their socket closes; the
//!   reference waits for the 10 s pool tick or forever;
//! * timeouts fire on time (the reference checks every 10 s), and a request without a timeout
//!   gets [`WsClientConfig::default_request_timeout`] (60 s, the reference's transport default);
//! * the pending-request map of a socket is bounded
//!   ([`WsClientConfig::max_pending_per_connection`]), and so are the requests a server runs per
//!   socket ([`WsServerConfig::max_in_flight_per_connection`]: the server stops reading that socket
//!   until replies go out) and the server's connections;
//! * the maximum message size is configurable (default 16 MiB; the reference's `ws` default is
//!   100 MiB); a larger message closes only the socket that sent it;
//! * a malformed frame (not JSON, not an array) is dropped, like the reference, and never affects
//!   other sockets; a text frame that is not UTF-8 closes its socket with 1007, and a close code a
//!   peer may not send (999, 1005, ...) is answered 1002, never echoed;
//! * secure mode does not *require* a `verify_client` hook (the reference asserts one).

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::busy::BusyPoll;
use super::wsframe::{self, CLOSE_DRAINED, CLOSE_GOING_AWAY, CLOSE_NORMAL, FrameReader, HandshakeError, Msg, OP_PONG, OP_TEXT, Side};

use crate::error::{Error, ErrorKind, Result};
use crate::rpc::envelope::{ResultForm, decode_request, encode_reply_into};
use crate::rpc::{
    BoxFuture, ClientTransport, Dispatched, Handler, OutgoingRequest, ReplyResult, Request, RequestInfo, TransportKind,
    await_reply, start_dispatch,
};
use crate::tls::{ClientInfo, ClientTls, PeerCert, ServerTls, VerifyClient, client_cert};

/// A server socket whose peer accepts no bytes for this long is closed (it does not read its
/// replies).
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// The default largest message accepted, in bytes (16 MiB).
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 16 << 20;

/// The default busy-poll budget of [`WsClientConfig::busy_poll`] and [`WsServerConfig::busy_poll`].
pub const DEFAULT_BUSY_POLL: Duration = Duration::from_micros(50);

/// The largest busy-poll budget; larger ones are clamped to it (a spinning server connection
/// notices the server closing only when its spin ends).
pub const MAX_BUSY_POLL: Duration = Duration::from_millis(1);

/// The busy-poll rules, shared by the client's and the server's `busy_poll` setters.
macro_rules! busy_poll_doc {
    () => {
        "\n\nOnly where the waiting thread drives the socket's I/O: a current-thread runtime, or a \
         multi-thread runtime with one worker, in a task spawned on it (with more workers a parked worker holds the I/O \
         driver and spinning would only burn CPU, so it is skipped). Each spin lasts at most the \
         budget (at most [`MAX_BUSY_POLL`]) and yields to other tasks between tries; a socket whose last wait took longer than \
         the budget does not spin until a wait ends within it again; one wait spins per thread at \
         a time. On loopback this turns a sequential round trip's two sleeps and wake-ups into \
         polling: the README's benchmark shows twice the sequential rate at no more CPU time per \
         request. `Duration::ZERO` turns it off."
    };
}

// ---------------------------------------------------------------------------------------------
// Streams
// ---------------------------------------------------------------------------------------------

/// A TCP stream, plain or wrapped in TLS (either side).
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub(crate) enum NetStream {
    Plain(TcpStream),
    ServerTls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    ClientTls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for NetStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            NetStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            NetStream::ServerTls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            NetStream::ClientTls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for NetStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            NetStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            NetStream::ServerTls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            NetStream::ClientTls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            NetStream::Plain(s) => Pin::new(s).poll_flush(cx),
            NetStream::ServerTls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            NetStream::ClientTls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            NetStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            NetStream::ServerTls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            NetStream::ClientTls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            NetStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            NetStream::ServerTls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            NetStream::ClientTls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            NetStream::Plain(s) => s.is_write_vectored(),
            NetStream::ServerTls(s) => s.is_write_vectored(),
            NetStream::ClientTls(s) => s.is_write_vectored(),
        }
    }
}

/// A WebSocket over a [`NetStream`].
pub(crate) type Ws = WebSocketStream<Prefixed>;

/// A [`NetStream`] that first yields bytes read past the opening handshake. tungstenite's own
/// way in for such bytes (`from_partially_read`) left subscribers that got early messages with
/// the handshake reading 3x slower for the socket's whole life (measured in `ws_bench`).
#[derive(Debug)]
pub(crate) struct Prefixed {
    prefix: Vec<u8>,
    pos: usize,
    inner: NetStream,
}

impl Prefixed {
    pub(crate) fn new(inner: NetStream, prefix: Vec<u8>) -> Prefixed {
        Prefixed { prefix, pos: 0, inner }
    }
}

impl AsyncRead for Prefixed {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pos < this.prefix.len() {
            let n = (this.prefix.len() - this.pos).min(buf.remaining());
            buf.put_slice(&this.prefix[this.pos..this.pos + n]);
            this.pos += n;
            if this.pos == this.prefix.len() {
                this.prefix = Vec::new();
                this.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

pub(crate) fn ws_config(max_message_size: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(wsframe::READ_CHUNK)
        .max_message_size(Some(max_message_size))
        .max_frame_size(Some(max_message_size))
        .write_buffer_size(64 * 1024)
        .max_write_buffer_size(max_message_size.saturating_add(1 << 20))
}

/// Settings shared by the RPC and PUB/SUB servers for accepting one WebSocket.
#[derive(Clone)]
pub(crate) struct AcceptSettings {
    pub(crate) tls: Option<ServerTls>,
    pub(crate) verify_client: Option<VerifyClient>,
    pub(crate) max_message_size: usize,
    pub(crate) handshake_timeout: Duration,
}

/// Runs the TLS handshake (if any), the `verify_client` hook and the WebSocket upgrade on an
/// accepted TCP stream. A refusal by the hook is answered `HTTP 401`. Returns the stream, the
/// bytes the client sent after its upgrade request, and the client certificate.
pub(crate) async fn accept_raw(
    tcp: TcpStream,
    remote: SocketAddr,
    s: &AcceptSettings,
) -> Result<(NetStream, Vec<u8>, Option<Arc<PeerCert>>)> {
    let _ = tcp.set_nodelay(true);
    let fut = async {
        let (mut stream, cert) = match &s.tls {
            Some(tls) => {
                let t = tls
                    .acceptor()
                    .accept(tcp)
                    .await
                    .map_err(|e| Error::new(ErrorKind::TlsHandshake, format!("TLS accept from {remote}: {e}")))?;
                let cert = client_cert(&t).map(Arc::new);
                (NetStream::ServerTls(Box::new(t)), cert)
            }
            None => (NetStream::Plain(tcp), None),
        };
        let hook = s.verify_client.clone();
        let allow = |path: &str| match &hook {
            Some(hook) => {
                let info = ClientInfo::new(cert.as_deref(), Some(remote), path);
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| hook(&info))).unwrap_or(false)
            }
            None => true,
        };
        let (_path, leftover) = wsframe::server_handshake(&mut stream, allow).await.map_err(|e| match e {
            HandshakeError::Refused => Error::new(ErrorKind::ClientRefused, format!("verify_client refused {remote}")),
            other => Error::new(ErrorKind::Protocol, format!("WebSocket upgrade from {remote}: {other}")),
        })?;
        Ok((stream, leftover, cert))
    };
    match tokio::time::timeout(s.handshake_timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(Error::timeout(format!("handshake with {remote} timed out"))),
    }
}

/// [`accept_raw`] with tungstenite's framing on top (PUB/SUB).
pub(crate) async fn accept_ws(tcp: TcpStream, remote: SocketAddr, s: &AcceptSettings) -> Result<(Ws, Option<Arc<PeerCert>>)> {
    let (stream, leftover, cert) = accept_raw(tcp, remote, s).await?;
    Ok((wsframe::into_tungstenite(stream, leftover, Side::Server, s.max_message_size).await, cert))
}

/// Splits `"host:port"` into its host (brackets kept off) and port.
fn split_dest(dest: &str) -> Result<(String, u16)> {
    let (host, port) = dest.rsplit_once(':').ok_or_else(|| Error::invalid(format!("bad destination {dest:?}: no port")))?;
    let port: u16 = port.parse().map_err(|_| Error::invalid(format!("bad destination {dest:?}: bad port")))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(Error::invalid(format!("bad destination {dest:?}: no host")));
    }
    Ok((host.to_string(), port))
}

/// Dials `ws(s)://dest/ws`: TCP connect, TLS handshake when `tls` is set, WebSocket upgrade, all
/// within `timeout`. Errors: [`ErrorKind::Connect`] (refused, unreachable, bad response),
/// [`ErrorKind::TlsHandshake`], [`ErrorKind::ClientRefused`] (`HTTP 401`), [`ErrorKind::Timeout`].
/// Returns the stream and the bytes the server sent after its `101`.
pub(crate) async fn dial_raw(dest: &str, tls: Option<&ClientTls>, timeout: Duration) -> Result<(NetStream, Vec<u8>)> {
    let (host, port) = split_dest(dest)?;
    let fut = async {
        let tcp = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| Error::new(ErrorKind::Connect, format!("connect to {dest}: {e}")).with_source(e))?;
        let _ = tcp.set_nodelay(true);
        let mut stream = match tls {
            Some(tls) => {
                let name = crate::tls::server_name(&host)?;
                let t = tls
                    .connector()
                    .connect(name, tcp)
                    .await
                    .map_err(|e| Error::new(ErrorKind::TlsHandshake, format!("TLS with {dest}: {e}")))?;
                NetStream::ClientTls(Box::new(t))
            }
            None => NetStream::Plain(tcp),
        };
        let host_port = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
        let leftover = wsframe::client_handshake(&mut stream, &host_port, "/ws").await.map_err(|e| match e {
            HandshakeError::Status(401) => Error::new(ErrorKind::ClientRefused, format!("{dest} refused the client (HTTP 401)")),
            HandshakeError::Status(s) => Error::new(ErrorKind::Connect, format!("{dest} answered HTTP {s} to the upgrade")),
            HandshakeError::Io(e) if is_tls_alert(&e) => Error::new(ErrorKind::TlsHandshake, format!("TLS with {dest}: {e}")),
            other => Error::new(ErrorKind::Connect, format!("WebSocket upgrade with {dest}: {other}")),
        })?;
        Ok((stream, leftover))
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(Error::timeout(format!("connecting to {dest} took longer than {timeout:?}"))),
    }
}

/// [`dial_raw`] with tungstenite's framing on top (PUB/SUB).
pub(crate) async fn dial(dest: &str, tls: Option<&ClientTls>, max_message_size: usize, timeout: Duration) -> Result<Ws> {
    let (stream, leftover) = dial_raw(dest, tls, timeout).await?;
    Ok(wsframe::into_tungstenite(stream, leftover, Side::Client, max_message_size).await)
}

/// In TLS 1.3 the server checks the client certificate after the client finished its handshake,
/// so a refusal shows up as an alert on the first read.
fn is_tls_alert(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
}

// ---------------------------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------------------------

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
    liveness: super::limits::WsLiveness,
}

impl Default for WsServerConfig {
    fn default() -> Self {
        WsServerConfig {
            tls: None,
            verify_client: None,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            max_in_flight_per_connection: 1024,
            max_connections: 10_000,
            max_connections_per_ip: super::ConnLimits::default().max_per_ip,
            reply_timeout: None,
            handshake_timeout: Duration::from_secs(10),
            busy_poll: DEFAULT_BUSY_POLL,
            liveness: super::limits::WsLiveness::default(),
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
    /// [`super::ConnLimits`]). Default is 10,000.
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
    /// sends no request is closed (see [`super::limits::WsLiveness`]). Default: a ping after 30 s
    /// of silence, 10 s to answer, idle 300 s.
    pub fn liveness(mut self, l: super::limits::WsLiveness) -> Self {
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
    life: super::Lifecycle,
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
        let listener = super::listen(addr)?;
        let local_addr = listener.local_addr()?;
        let life = super::Lifecycle::new();
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
    /// them with [`ErrorKind::Connect`] on a 4001 close, so `PeerRpcClient` sends them to another
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

    /// Stops accepting and closes every socket (in the background).
    fn close(&self) {
        self.life.close();
    }

    fn drain(&self, grace: Duration) -> crate::rpc::BoxFuture<'static, bool> {
        Box::pin(WsServer::drain(self, grace))
    }
}

async fn accept_loop(
    listener: TcpListener,
    handler: Arc<dyn Handler>,
    config: WsServerConfig,
    life: super::Lifecycle,
) {
    let settings = Arc::new(config.accept_settings());
    let (in_flight, reply_timeout, busy_poll) = (config.max_in_flight_per_connection, config.reply_timeout, config.busy_poll);
    let liveness = config.liveness;
    let limits = super::ConnLimits { max_connections: config.max_connections, max_per_ip: config.max_connections_per_ip };
    let sources = super::limits::Sources::new(limits, Arc::default());
    super::accept_loop(listener, sources, life.draining.clone(), move |tcp, remote| {
        let handler = handler.clone();
        let settings = settings.clone();
        let life = life.clone();
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
    liveness: super::limits::WsLiveness,
    life: &super::Lifecycle,
) {
    let mut frames = FrameReader::new(Side::Server, max_message_size, leftover);
    let busy = BusyPoll::new(busy_poll);
    let mut out = Outbox { frames: Vec::with_capacity(4096), scratch: Vec::with_capacity(256) };
    let mut running = FuturesUnordered::new();
    let info = RequestInfo { transport: TransportKind::Ws, remote_addr: Some(remote), cert, http: None };
    // Made once: a `cancelled()` future per loop turn would join and leave the token's waiter
    // list (two lock round trips) on every message.
    let stopping = life.closing.cancelled();
    tokio::pin!(stopping);
    // Draining: handle what was read, send the replies, read nothing more, then close.
    let drain = life.draining.cancelled();
    tokio::pin!(drain);
    let mut drained = false;
    // Liveness: counts of reads and requests, compared by the timer when it fires.
    let mut live = super::limits::Liveness::new(liveness);
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
            break (CLOSE_DRAINED, "the server is shutting down; every request it read was answered".to_string());
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
                    super::limits::Verdict::Ping => {
                        wsframe::encode_frame(&mut out.frames, wsframe::OP_PING, b"", None);
                        None
                    }
                    super::limits::Verdict::Dead => break (CLOSE_GOING_AWAY, "no answer to a ping".to_string()),
                    super::limits::Verdict::Idle => break (CLOSE_NORMAL, "idle".to_string()),
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

// ---------------------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------------------

/// Settings of a [`WsClient`].
#[derive(Clone)]
pub struct WsClientConfig {
    tls: Option<ClientTls>,
    max_active_dest_transports: usize,
    connect_timeout: Duration,
    idle_timeout: Option<Duration>,
    default_request_timeout: Option<Duration>,
    max_pending_per_connection: usize,
    max_message_size: usize,
    max_dests: usize,
    busy_poll: Duration,
}

impl Default for WsClientConfig {
    fn default() -> Self {
        WsClientConfig {
            tls: None,
            max_active_dest_transports: 3,
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Some(Duration::from_secs(120)),
            default_request_timeout: Some(Duration::from_secs(60)),
            max_pending_per_connection: 65_536,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            max_dests: 10_000,
            busy_poll: DEFAULT_BUSY_POLL,
        }
    }
}

impl fmt::Debug for WsClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WsClientConfig")
            .field("tls", &self.tls)
            .field("max_active_dest_transports", &self.max_active_dest_transports)
            .field("connect_timeout", &self.connect_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("default_request_timeout", &self.default_request_timeout)
            .field("max_pending_per_connection", &self.max_pending_per_connection)
            .field("max_message_size", &self.max_message_size)
            .field("max_dests", &self.max_dests)
            .field("busy_poll", &self.busy_poll)
            .finish()
    }
}

impl WsClientConfig {
    /// Dial `wss://` with this TLS configuration (the reference's `secure`). Default: plain.
    pub fn tls(mut self, tls: ClientTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Sockets kept per destination (the reference's `maxActiveDestTransports`). Default is 3.
    pub fn max_active_dest_transports(mut self, n: usize) -> Self {
        self.max_active_dest_transports = n.max(1);
        self
    }

    /// Time allowed for TCP connect + TLS + upgrade. Default is 10 s.
    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }

    /// A socket with nothing in flight for this long is closed (close frame) and dropped from the
    /// pool (the reference's `inactivityTimeout`). `None` keeps sockets open. Default is 120 s.
    pub fn idle_timeout(mut self, t: Option<Duration>) -> Self {
        self.idle_timeout = t;
        self
    }

    /// The timeout of requests that carry none. `None` waits forever (not recommended).
    /// Default is 60 s (the reference's transport `requestTimeout`).
    pub fn default_request_timeout(mut self, t: Option<Duration>) -> Self {
        self.default_request_timeout = t;
        self
    }

    /// Requests in flight per socket; beyond that a request fails at once with
    /// [`ErrorKind::InvalidState`]. Default is 65,536.
    pub fn max_pending_per_connection(mut self, n: usize) -> Self {
        self.max_pending_per_connection = n.max(1);
        self
    }

    /// The largest reply accepted; a larger one closes its socket. Default is 16 MiB.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes.max(1024);
        self
    }

    /// Destinations kept in the pool; beyond that, destinations with nothing in flight are
    /// dropped first. Default is 10,000.
    pub fn max_dests(mut self, n: usize) -> Self {
        self.max_dests = n.max(1);
        self
    }

    #[doc = "How long a request alone on its socket polls for its reply before it sleeps. \
             Default is [`DEFAULT_BUSY_POLL`] (50 µs)."]
    #[doc = busy_poll_doc!()]
    pub fn busy_poll(mut self, budget: Duration) -> Self {
        self.busy_poll = budget.min(MAX_BUSY_POLL);
        self
    }
}

type Waiter = crate::rpc::ResultSender;

/// A request in flight on a socket: who waits for it, and until when.
struct Pending {
    waiter: Waiter,
    /// When it times out, and its timeout (for the message); `None`: never.
    deadline: Option<(Instant, Duration)>,
}

struct PendingState {
    map: HashMap<String, Pending>,
    closed: bool,
    /// What the reader task's timeout timer is set to: the earliest deadline when it was set (a
    /// request answered since leaves it early, which only costs one look at the map).
    armed: Option<Instant>,
}

/// The read half of a client socket (owned by its reader task).
enum ReadHalf {
    Plain(tokio::net::tcp::OwnedReadHalf),
    Tls(tokio::io::ReadHalf<NetStream>),
}

impl AsyncRead for ReadHalf {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ReadHalf::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ReadHalf::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

/// The write half of a client socket (shared by its requesters under [`Session::writer`]).
enum WriteHalf {
    Plain(tokio::net::tcp::OwnedWriteHalf),
    Tls(tokio::io::WriteHalf<NetStream>),
}

impl AsyncWrite for WriteHalf {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteHalf::Plain(s) => Pin::new(s).poll_write(cx, buf),
            WriteHalf::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Plain(s) => Pin::new(s).poll_flush(cx),
            WriteHalf::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Plain(s) => Pin::new(s).poll_shutdown(cx),
            WriteHalf::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

fn split_stream(io: NetStream) -> (ReadHalf, WriteHalf) {
    match io {
        NetStream::Plain(tcp) => {
            let (r, w) = tcp.into_split();
            (ReadHalf::Plain(r), WriteHalf::Plain(w))
        }
        tls => {
            let (r, w) = tokio::io::split(tls);
            (ReadHalf::Tls(r), WriteHalf::Tls(w))
        }
    }
}

/// A client socket's writing side: frames are appended to `buf` whole and written from its
/// front, so a requester cancelled mid-write leaves the rest for the next writer and the stream
/// stays well-formed.
struct Writer {
    half: WriteHalf,
    buf: Vec<u8>,
}

impl Writer {
    async fn write_out(&mut self) -> bool {
        wsframe::write_out(&mut self.half, &mut self.buf).await.is_ok()
    }
}

/// One live WebSocket: requesters write their frames themselves (under `writer`), a reader task
/// completes `pending` and closes the socket when it ends.
struct Session {
    writer: tokio::sync::Mutex<Writer>,
    pending: Mutex<PendingState>,
    last_used: AtomicU64,
    /// Tells the reader task to close the socket (client closed, write failure).
    close: CancellationToken,
    /// Tells the reader task a request came with a deadline earlier than `armed`.
    rearm: tokio::sync::Notify,
    /// Busy-polling of a lone request's reply (see [`WsClientConfig::busy_poll`]).
    busy: BusyPoll,
}

impl Session {
    fn lock(&self) -> std::sync::MutexGuard<'_, PendingState> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Writes one text frame from the requesting task (no hop through a writer task). Alone on
    /// the socket it is written at once; when other requests are in flight, the requester yields
    /// once first so the frames of requests issued together leave in one write. Every requester
    /// writes out before it waits for its reply (finding nothing to write when another one did).
    async fn write(&self, payload: &[u8], batch: bool) -> bool {
        {
            let mut w = self.writer.lock().await;
            wsframe::encode_frame(&mut w.buf, OP_TEXT, payload, Some(wsframe::mask_key()));
            if !batch {
                return w.write_out().await;
            }
        }
        tokio::task::yield_now().await;
        self.writer.lock().await.write_out().await
    }

    /// Marks the session closed and fails everything in flight with `why`.
    fn fail_all(&self, kind: ErrorKind, why: &str) {
        let waiters: Vec<Waiter> = {
            let mut p = self.lock();
            p.closed = true;
            p.map.drain().map(|(_, e)| e.waiter).collect()
        };
        for w in waiters {
            let _ = w.send(Err(Error::new(kind, why.to_string())));
        }
    }
}

struct ConnectState {
    /// When the last connect attempt failed, and why.
    last_failure: Option<(Instant, ErrorKind, String)>,
}

/// One pooled transport to a destination: connects lazily, reconnects after a close.
struct Conn {
    dest: Arc<str>,
    session: Mutex<Option<Arc<Session>>>,
    connect: tokio::sync::Mutex<ConnectState>,
    pool: Weak<ClientInner>,
}

impl Conn {
    fn live_session(&self) -> Option<Arc<Session>> {
        let s = self.session.lock().unwrap_or_else(|p| p.into_inner());
        s.as_ref().filter(|s| !s.is_closed()).cloned()
    }

    /// Requests in flight on the open socket; `None` while it is not open.
    fn load(&self) -> Option<usize> {
        let s = self.session.lock().unwrap_or_else(|p| p.into_inner());
        let p = s.as_ref()?.lock();
        (!p.closed).then_some(p.map.len())
    }

    async fn session(self: &Arc<Self>, inner: &ClientInner) -> Result<Arc<Session>> {
        if let Some(s) = self.live_session() {
            return Ok(s);
        }
        let asked = Instant::now();
        let mut st = self.connect.lock().await;
        if let Some(s) = self.live_session() {
            return Ok(s);
        }
        // Someone else tried while we waited for the lock: share their failure.
        if let Some((at, kind, msg)) = &st.last_failure
            && *at >= asked
        {
            return Err(Error::new(*kind, msg.clone()));
        }
        match dial_raw(&self.dest, inner.config.tls.as_ref(), inner.config.connect_timeout).await {
            Ok((io, leftover)) => {
                st.last_failure = None;
                let s = self.start_session(io, leftover, inner);
                *self.session.lock().unwrap_or_else(|p| p.into_inner()) = Some(s.clone());
                Ok(s)
            }
            Err(e) => {
                st.last_failure = Some((Instant::now(), e.kind(), e.message().to_string()));
                Err(e)
            }
        }
    }

    fn start_session(self: &Arc<Self>, io: NetStream, leftover: Vec<u8>, inner: &ClientInner) -> Arc<Session> {
        let (rd, wr) = split_stream(io);
        let session = Arc::new(Session {
            writer: tokio::sync::Mutex::new(Writer { half: wr, buf: Vec::with_capacity(1024) }),
            pending: Mutex::new(PendingState { map: HashMap::new(), closed: false, armed: None }),
            last_used: AtomicU64::new(inner.now_ms()),
            close: CancellationToken::new(),
            rearm: tokio::sync::Notify::new(),
            // Made where the reader task is spawned: it spins only on that runtime's thread.
            busy: BusyPoll::new(inner.config.busy_poll),
        });
        let frames = FrameReader::new(Side::Client, inner.config.max_message_size, leftover);
        tokio::spawn(reader_task(rd, frames, session.clone(), Arc::downgrade(self), inner.config.idle_timeout, inner.epoch));
        session
    }
}

async fn reader_task(
    mut rd: ReadHalf,
    mut frames: FrameReader,
    session: Arc<Session>,
    conn: Weak<Conn>,
    idle: Option<Duration>,
    epoch: Instant,
) {
    let tick = idle.map(|i| (i / 4).clamp(Duration::from_millis(10), Duration::from_secs(5))).unwrap_or(Duration::from_secs(5));
    let mut sweep = tokio::time::interval(tick);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut close = (CLOSE_NORMAL, String::new());
    let mut drained = false;
    let mut client_closing = false;
    let token = session.close.clone();
    let closed_by_client = token.cancelled();
    tokio::pin!(closed_by_client);
    // Request timeouts: one timer per socket, set to the earliest deadline, instead of a timer
    // per request (registering and removing one cost a lock round trip and a clock read each).
    let rearm = session.rearm.notified();
    tokio::pin!(rearm);
    let expiry = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(expiry);
    let mut expiry_set = false;
    let why = 'read: loop {
        loop {
            match frames.next_message() {
                Ok(Some(Msg::Text(bytes) | Msg::Binary(bytes))) => {
                    // A reply nobody waits for any more is dropped.
                    let _ = Waiter::deliver(bytes, |rid| session.lock().map.remove(rid).map(|e| e.waiter));
                }
                Ok(Some(Msg::Ping(p))) => {
                    // Answered from a task of its own: waiting here for the writer (held by a
                    // requester whose write is blocked) would stop this task reading replies, and a
                    // server blocked on writing them would never unblock that write.
                    let (p, session) = (p.to_vec(), session.clone());
                    tokio::spawn(async move {
                        let mut w = session.writer.lock().await;
                        wsframe::encode_frame(&mut w.buf, OP_PONG, &p, Some(wsframe::mask_key()));
                        if !w.write_out().await {
                            session.close.cancel();
                        }
                    });
                }
                Ok(Some(Msg::Close(Some(CLOSE_DRAINED)))) => {
                    // Our server drained: it answered everything it read, so what is still
                    // waiting was never handled and may go to another worker.
                    close.0 = CLOSE_NORMAL;
                    drained = true;
                    break 'read "the server shut down before reading the request (it was not handled)";
                }
                Ok(Some(Msg::Close(code))) => {
                    close.0 = code.unwrap_or(CLOSE_NORMAL);
                    break 'read "the server closed the socket";
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!("ws client read: {e}");
                    close = (e.close_code(), e.to_string());
                    break 'read "the server broke the protocol";
                }
            }
        }
        if client_closing {
            break "the socket was closed by the client";
        }
        tokio::select! {
            r = frames.fill(&mut rd) => match r {
                Ok(0) => break "the socket closed",
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!("ws client read: {e}");
                    break "the socket failed";
                }
            },
            _ = sweep.tick() => {
                let now = epoch.elapsed().as_millis() as u64;
                let mut p = session.lock();
                p.map.retain(|_, e| !e.waiter.is_closed());
                if let Some(idle) = idle {
                    let last = session.last_used.load(Ordering::Relaxed);
                    if p.map.is_empty() && now.saturating_sub(last) >= u64::try_from(idle.as_millis()).unwrap_or(u64::MAX) {
                        p.closed = true;
                        drop(p);
                        if let Some(c) = conn.upgrade()
                            && let Some(pool) = c.pool.upgrade()
                        {
                            pool.remove_conn(&c);
                        }
                        break "idle";
                    }
                }
            }
            () = &mut rearm => {
                rearm.set(session.rearm.notified());
                if let Some(at) = session.lock().armed {
                    expiry.as_mut().reset(at.into());
                    expiry_set = true;
                }
            }
            () = &mut expiry, if expiry_set => {
                expiry_set = false;
                let now = Instant::now();
                let expired: Vec<(Waiter, Duration)> = {
                    let mut p = session.lock();
                    let expired = p
                        .map
                        .extract_if(|_, e| e.deadline.is_some_and(|(at, _)| at <= now))
                        .filter_map(|(_, e)| Some((e.waiter, e.deadline?.1)))
                        .collect();
                    p.armed = p.map.values().filter_map(|e| e.deadline.map(|(at, _)| at)).min();
                    if let Some(at) = p.armed {
                        expiry.as_mut().reset(at.into());
                        expiry_set = true;
                    }
                    expired
                };
                for (w, t) in expired {
                    let _ = w.send(Err(Error::timeout(format!("ERR_TIMEOUT: no reply within {t:?}"))));
                }
            }
            _ = &mut closed_by_client, if !client_closing => {
                // Replies and a drained server's close that have arrived still count: read what
                // is there, once, without waiting.
                client_closing = true;
                let _ = std::future::poll_fn(|cx| Poll::Ready(frames.poll_fill(&mut rd, cx))).await;
            }
        }
    };
    // Requests a drained server never read fail like a refused connect: nothing was handled.
    session.fail_all(if drained { ErrorKind::Connect } else { ErrorKind::Closed }, &format!("ERR_TRANSPORT_CLOSE: {why}"));
    // Send a close frame when the socket still takes one, and let the socket go.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let mut w = session.writer.lock().await;
        wsframe::encode_close(&mut w.buf, close.0, &close.1, Some(wsframe::mask_key()));
        if w.write_out().await {
            let _ = w.half.shutdown().await;
        }
    })
    .await;
}

struct ClientInner {
    config: WsClientConfig,
    pools: Mutex<HashMap<Arc<str>, Vec<Arc<Conn>>>>,
    next: AtomicUsize,
    epoch: Instant,
}

impl ClientInner {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Vec<Arc<Conn>>>> {
        self.pools.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn remove_conn(&self, conn: &Arc<Conn>) {
        let mut pools = self.lock();
        if let Some(v) = pools.get_mut(&conn.dest) {
            v.retain(|c| !Arc::ptr_eq(c, conn));
            if v.is_empty() {
                pools.remove(&conn.dest);
            }
        }
    }
}

/// A WebSocket RPC client: a pool of sockets per destination, requests multiplexed over them.
/// Cheap to clone (clones share the pool).
#[derive(Clone)]
pub struct WsClient {
    inner: Arc<ClientInner>,
}

impl fmt::Debug for WsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WsClient").field("config", &self.inner.config).finish_non_exhaustive()
    }
}

impl Default for WsClient {
    fn default() -> Self {
        WsClient::new(WsClientConfig::default())
    }
}

/// A handle on one pooled transport (socket) of a [`WsClient`], as returned by
/// [`WsClient::transport`].
#[derive(Clone)]
pub struct WsTransport {
    conn: Arc<Conn>,
    client: WsClient,
}

impl fmt::Debug for WsTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WsTransport").field("dest", &self.conn.dest).field("connected", &self.is_connected()).finish()
    }
}

impl WsTransport {
    /// The destination (`host:port`).
    pub fn dest(&self) -> &str {
        &self.conn.dest
    }

    /// True while its socket is open.
    pub fn is_connected(&self) -> bool {
        self.conn.live_session().is_some()
    }

    /// Sends a request on this very transport.
    pub async fn request(&self, request: OutgoingRequest) -> Result<Value> {
        self.client.request_on(self.conn.clone(), request, ResultForm::Value).await.map(ReplyResult::into_value)
    }
}

impl WsClient {
    /// A client with `config`. It opens no socket until the first request.
    pub fn new(config: WsClientConfig) -> WsClient {
        WsClient {
            inner: Arc::new(ClientInner {
                config,
                pools: Mutex::new(HashMap::new()),
                next: AtomicUsize::new(0),
                epoch: Instant::now(),
            }),
        }
    }

    /// The settings.
    pub fn config(&self) -> &WsClientConfig {
        &self.inner.config
    }

    /// Picks a transport to `dest`: an open socket with nothing in flight if there is one, else a
    /// new one while the destination has fewer than `max_active_dest_transports`, else the open
    /// socket with the fewest requests in flight (round robin while none is open yet). The
    /// reference opens a new one while it has fewer than the maximum and then picks at random, so
    /// a sequential caller spreads over all of them. No socket is opened here.
    pub fn transport(&self, dest: &str) -> WsTransport {
        WsTransport { conn: self.pick(dest), client: self.clone() }
    }

    /// How many transports the pool holds for `dest`.
    pub fn pool_size(&self, dest: &str) -> usize {
        self.inner.lock().get(dest).map_or(0, |v| v.len())
    }

    /// How many sockets to `dest` are open now.
    pub fn open_sockets(&self, dest: &str) -> usize {
        self.inner.lock().get(dest).map_or(0, |v| v.iter().filter(|c| c.live_session().is_some()).count())
    }

    fn pick(&self, dest: &str) -> Arc<Conn> {
        let max = self.inner.config.max_active_dest_transports;
        let mut pools = self.inner.lock();
        if !pools.contains_key(dest) && pools.len() >= self.inner.config.max_dests {
            // Drop destinations with nothing open to stay bounded.
            pools.retain(|_, v| v.iter().any(|c| c.live_session().is_some()));
            if pools.len() >= self.inner.config.max_dests
                && let Some(k) = pools.keys().next().cloned()
            {
                pools.remove(&k);
            }
        }
        let list = pools.entry(Arc::from(dest)).or_default();
        // An open socket with nothing in flight is reused (a sequential caller keeps to one warm
        // socket, whose busy-polling stays hot on both ends); the least loaded one otherwise.
        let mut best: Option<(usize, &Arc<Conn>)> = None;
        for c in list.iter() {
            if let Some(n) = c.load()
                && best.is_none_or(|(b, _)| n < b)
            {
                best = Some((n, c));
                if n == 0 {
                    return c.clone();
                }
            }
        }
        if list.len() < max {
            let conn = Arc::new(Conn {
                dest: Arc::from(dest),
                session: Mutex::new(None),
                connect: tokio::sync::Mutex::new(ConnectState { last_failure: None }),
                pool: Arc::downgrade(&self.inner),
            });
            list.push(conn.clone());
            return conn;
        }
        if let Some((_, c)) = best {
            return c.clone();
        }
        // None open yet (all connecting or closed): spread over them.
        let i = self.inner.next.fetch_add(1, Ordering::Relaxed) % list.len();
        list[i].clone()
    }

    /// Sends one request to `dest` and waits for the reply. See [`ClientTransport::request`].
    pub async fn send(&self, dest: &str, request: OutgoingRequest) -> Result<Value> {
        self.send_as(dest, request, ResultForm::Value).await.map(ReplyResult::into_value)
    }

    /// [`WsClient::send`] with the result in `form` (raw: the JSON text as it came on the wire).
    pub async fn send_as(&self, dest: &str, request: OutgoingRequest, form: ResultForm) -> Result<ReplyResult> {
        let conn = self.pick(dest);
        self.request_on(conn, request, form).await
    }

    /// Sends `request` on `conn` and waits for its reply. The timeout covers connecting (a tokio
    /// timer, only when the socket must be opened) and the reply (the socket's reader task fails
    /// the request when its deadline passes).
    async fn request_on(&self, conn: Arc<Conn>, request: OutgoingRequest, form: ResultForm) -> Result<ReplyResult> {
        let timeout = request.timeout.or(self.inner.config.default_request_timeout);
        // A timeout too long to add to the clock never fires.
        let deadline = timeout.and_then(|t| Some((Instant::now().checked_add(t)?, t)));
        let mut frame = Some(request.envelope());
        // Two tries: a socket that closes between picking it and registering the request is
        // replaced once.
        for _ in 0..2 {
            let session = match (conn.live_session(), deadline) {
                (Some(s), _) => s,
                (None, Some((at, t))) => match tokio::time::timeout_at(at.into(), conn.session(&self.inner)).await {
                    Ok(s) => s?,
                    Err(_) => return Err(Error::timeout(format!("ERR_TIMEOUT: no reply within {t:?}"))),
                },
                (None, None) => conn.session(&self.inner).await?,
            };
            let (tx, mut rx) = Waiter::channel(form);
            let batch;
            let mut rearm = false;
            {
                let mut p = session.lock();
                if p.closed {
                    continue;
                }
                if p.map.len() >= self.inner.config.max_pending_per_connection {
                    p.map.retain(|_, e| !e.waiter.is_closed());
                    if p.map.len() >= self.inner.config.max_pending_per_connection {
                        return Err(Error::new(ErrorKind::InvalidState, "too many requests in flight on this socket"));
                    }
                }
                if p.map.contains_key(&request.rid) {
                    return Err(Error::invalid(format!("request id {} already in flight", request.rid)));
                }
                p.map.insert(request.rid.clone(), Pending { waiter: tx, deadline });
                batch = p.map.len() > 1;
                if let Some((at, _)) = deadline
                    && p.armed.is_none_or(|armed| at < armed)
                {
                    p.armed = Some(at);
                    rearm = true;
                }
            }
            if rearm {
                session.rearm.notify_one();
            }
            // (`last_used` is stored when the request ends, answered or not: while a request is
            // pending its socket is never idle.)
            let guard = PendingGuard { session: &session, rid: &request.rid, inner: &self.inner };
            let Some(frame) = frame.take() else { break };
            // A write stuck on a full socket still ends at the deadline (the reader task fails
            // the request; the frame stays whole in the socket's buffer).
            let (wrote, early) = tokio::select! {
                biased;
                ok = session.write(&frame, batch) => (ok, None),
                r = &mut rx => (true, Some(r)),
            };
            if !wrote {
                // The socket is broken: the reader task reads what the server sent before (a
                // drained server's close among it), fails what is in flight, this request
                // included, and closes it.
                session.lock().closed = true;
                session.close.cancel();
                let r = tokio::time::timeout(Duration::from_secs(2), &mut rx).await;
                guard.disarm();
                return match r {
                    // Not handled by a server that drained: another worker may take it.
                    Ok(Ok(Err(e))) if e.kind() == ErrorKind::Connect => Err(e),
                    _ => Err(Error::new(ErrorKind::Closed, "ERR_TRANSPORT_CLOSE: the socket failed while sending")),
                };
            }
            let r = match early {
                Some(r) => r,
                None if batch || !session.busy.enabled() => rx.await,
                // A request alone on its socket polls for its reply for a few microseconds first.
                None => {
                    let waiting = Instant::now();
                    match session.busy.spin(|cx| Pin::new(&mut rx).poll(cx)).await {
                        Some(r) => r,
                        None => {
                            let r = rx.await;
                            session.busy.observe(waiting.elapsed());
                            r
                        }
                    }
                }
            };
            guard.disarm();
            session.last_used.store(self.inner.now_ms(), Ordering::Relaxed);
            return match r {
                Ok(r) => r,
                Err(_) => Err(Error::new(ErrorKind::Closed, "ERR_TRANSPORT_CLOSE: the socket closed")),
            };
        }
        Err(Error::new(ErrorKind::Closed, "ERR_TRANSPORT_CLOSE: the socket closed while sending"))
    }

    /// Closes every socket; requests in flight fail with [`ErrorKind::Closed`].
    pub fn close_all(&self) {
        let conns: Vec<Arc<Conn>> = self.inner.lock().drain().flat_map(|(_, v)| v).collect();
        for c in conns {
            if let Some(s) = c.live_session() {
                s.fail_all(ErrorKind::Closed, "ERR_TRANSPORT_CLOSE: the client was closed");
                s.close.cancel();
            }
        }
    }
}

/// Removes a pending entry when a request future is dropped (timeout or cancellation).
struct PendingGuard<'a> {
    session: &'a Session,
    rid: &'a str,
    inner: &'a ClientInner,
}

impl PendingGuard<'_> {
    fn disarm(self) {
        std::mem::forget(self);
    }
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.session.lock().map.remove(self.rid);
        self.session.last_used.store(self.inner.now_ms(), Ordering::Relaxed);
    }
}

impl ClientTransport for WsClient {
    fn request(&self, dest: &str, request: OutgoingRequest) -> BoxFuture<'static, Result<Value>> {
        let this = self.clone();
        let dest = dest.to_string();
        Box::pin(async move { this.send(&dest, request).await })
    }

    fn request_raw(&self, dest: &str, request: OutgoingRequest) -> BoxFuture<'static, Result<Box<RawValue>>> {
        let this = self.clone();
        let dest = dest.to_string();
        Box::pin(async move { this.send_as(&dest, request, ResultForm::Raw).await.map(ReplyResult::into_raw) })
    }

    fn active_connections(&self, dest: &str) -> usize {
        self.pool_size(dest)
    }

    fn close(&self) {
        self.close_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dest_parsing() {
        assert_eq!(split_dest("127.0.0.1:1337").ok(), Some(("127.0.0.1".to_string(), 1337)));
        assert_eq!(split_dest("[::1]:80").ok(), Some(("::1".to_string(), 80)));
        assert!(split_dest("nohost").is_err());
        assert!(split_dest(":80").is_err());
        assert!(split_dest("h:99999").is_err());
    }

    #[tokio::test]
    async fn prefixed_yields_the_handshake_leftover_then_the_socket() {
        use tokio::io::AsyncReadExt;
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let c = TcpStream::connect(l.local_addr().expect("addr")).await.expect("connect");
        let (mut s, _) = l.accept().await.expect("accept");
        s.write_all(b" and the socket").await.expect("write");
        drop(s);
        let mut p = Prefixed::new(NetStream::Plain(c), b"the leftover".to_vec());
        let mut small = [0u8; 5];
        p.read_exact(&mut small).await.expect("read");
        assert_eq!(&small, b"the l");
        let mut rest = String::new();
        p.read_to_string(&mut rest).await.expect("read");
        assert_eq!(rest, "eftover and the socket");
    }

    #[tokio::test]
    async fn pool_keeps_max_transports_per_dest() {
        // grenache-nodejs-ws test/unit-pool.js, without network.
        let c = WsClient::default();
        for _ in 0..4 {
            c.transport("127.0.0.1:1337");
        }
        assert_eq!(c.pool_size("127.0.0.1:1337"), 3);
        let c = WsClient::new(WsClientConfig::default().max_active_dest_transports(2));
        for _ in 0..4 {
            c.transport("127.0.0.1:1337");
        }
        assert_eq!(c.pool_size("127.0.0.1:1337"), 2);
    }
}
