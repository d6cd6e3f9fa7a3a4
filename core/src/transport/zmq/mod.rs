//! RPC over ZeroMQ: a ROUTER server and DEALER clients speaking ZMTP 3.1 over TCP (our own
//! design: the Node prototype never shipped, see `docs/compat.md`).
//!
//! Frames (each message multipart, all frames UTF-8 text):
//! * request, DEALER → ROUTER: `[rid, key, payload-json]`;
//! * reply, ROUTER → DEALER: `[rid, err, result-json]`, where `err` is empty on success and the
//!   error message otherwise (`result-json` is then `null`).
//!
//! A ROUTER socket of libzmq adds the peer's routing id in front of what it receives, and takes
//! it off what it sends, so a libzmq ROUTER sees `[id, rid, key, payload]`; a REQ socket (which
//! adds an empty delimiter frame) can call our server too: the delimiter is echoed back.
//!
//! The wire protocol is implemented here rather than taken from the `zeromq` crate: its 0.7 frame
//! decoder reserves memory for whatever length a frame header announces (up to `isize::MAX`), so
//! one 9-byte header from any peer aborts the process, and it has no message-size limit or
//! high-water-mark setting (`docs/compat.md`). The subset here is tested against libzmq (pyzmq).
//!
//! Bounds, in ZeroMQ's terms:
//! * the receive side of every connection has a message-size limit
//!   ([`ZmqServerConfig::max_message_size`], [`ZmqClientConfig::max_message_size`], 16 MiB):
//!   a larger message closes that connection, as libzmq's `ZMQ_MAXMSGSIZE` does;
//! * the send side has a high-water mark in messages ([`ZmqServerConfig::send_hwm`],
//!   [`ZmqClientConfig::send_hwm`], 1000): past it, the server stops reading that peer's requests
//!   (TCP pushes back) and a client's request waits (within its timeout), as a DEALER blocks at
//!   its `ZMQ_SNDHWM`; a peer that reads nothing for 30 s is disconnected;
//! * a server runs at most [`ZmqServerConfig::max_in_flight_per_connection`] requests per
//!   connection at once, and a client tracks at most
//!   [`ZmqClientConfig::max_pending_per_connection`] per connection.
//!
//! There is no CURVE (or PLAIN) security: the NULL mechanism only. Use this transport inside a
//! trusted network, or the WS/HTTP transports with TLS across untrusted ones.
//!
//! Malformed requests get an error reply on the same connection, which keeps serving: a message
//! without exactly three frames `ERR_BAD_FRAMES`, a rid, key or payload that is not UTF-8 or not
//! JSON `ERR_DECODE`. A graceful shutdown answers requests that arrive while it waits for the
//! ones in flight with `ERR_TRANSPORT_DRAINING` (nothing ran), which our clients take as a failed
//! connect, so `PeerRpcClient` sends them to another worker. A connection that closes with
//! nothing running first sends a closing notice, a reply with an empty rid and
//! `ERR_TRANSPORT_DRAINING`: what the client sent and got no answer for never ran, and goes to
//! another worker too.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, ErrorKind, Result};
use crate::rpc::envelope::ResultForm;
use crate::rpc::{
    BoxFuture, ClientTransport, Dispatched, Handler, OutgoingRequest, Payload, ReplyResult, Request, RequestInfo, ResultSender,
    ServerTransport, TransportKind, WireReply, await_reply, start_dispatch,
};
use crate::transport::{Lifecycle, accept_loop};

pub(crate) mod zmtp;

use zmtp::{FrameReader, Incoming, Limits, SocketType};

/// The default message-size limit (16 MiB, the WS transport's).
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 16 << 20;
/// The default send high-water mark, in messages (libzmq's default too).
pub const DEFAULT_SEND_HWM: usize = 1000;
/// The error a draining server answers to requests it did not run.
pub const ERR_TRANSPORT_DRAINING: &str = "ERR_TRANSPORT_DRAINING";
/// The error a server answers to a message that is not `[rid, key, payload]`.
pub const ERR_BAD_FRAMES: &str = "ERR_BAD_FRAMES";

/// A peer that accepts no bytes for this long is disconnected.
pub(crate) const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Writes are gathered up to this many bytes per system call.
const WRITE_BATCH: usize = 256 * 1024;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Writes what arrives on `rx` to `wr`, gathering what is queued into one write, until `rx`
/// ends, `stop` fires, or a write fails or stalls for [`WRITE_TIMEOUT`].
pub(crate) async fn write_loop<W: AsyncWrite + Unpin>(mut wr: W, mut rx: mpsc::Receiver<Vec<u8>>, stop: CancellationToken) {
    let mut buf = Vec::new();
    loop {
        let first = tokio::select! {
            m = rx.recv() => match m { Some(m) => m, None => break },
            _ = stop.cancelled() => return,
        };
        buf.clear();
        buf.extend_from_slice(&first);
        while buf.len() < WRITE_BATCH {
            match rx.try_recv() {
                Ok(m) => buf.extend_from_slice(&m),
                Err(_) => break,
            }
        }
        let write = async {
            wr.write_all(&buf).await?;
            wr.flush().await
        };
        tokio::select! {
            r = tokio::time::timeout(WRITE_TIMEOUT, write) => match r {
                Ok(Ok(())) => {}
                _ => return,
            },
            _ = stop.cancelled() => return,
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), wr.shutdown()).await;
}

// ---------------------------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------------------------

/// Settings of a [`ZmqServer`].
#[derive(Debug, Clone)]
pub struct ZmqServerConfig {
    max_message_size: usize,
    send_hwm: usize,
    max_in_flight_per_connection: usize,
    max_connections: usize,
    reply_timeout: Option<Duration>,
    handshake_timeout: Duration,
}

impl Default for ZmqServerConfig {
    fn default() -> Self {
        ZmqServerConfig {
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            send_hwm: DEFAULT_SEND_HWM,
            max_in_flight_per_connection: 1024,
            max_connections: 10_000,
            reply_timeout: None,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

impl ZmqServerConfig {
    /// The largest request (all frames); a larger one closes its connection. Default 16 MiB.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes.max(1024);
        self
    }

    /// Replies queued per connection before the server stops reading its requests. Default 1000.
    pub fn send_hwm(mut self, messages: usize) -> Self {
        self.send_hwm = messages.max(1);
        self
    }

    /// Requests run at once per connection; further ones wait unread. Default 1024.
    pub fn max_in_flight_per_connection(mut self, n: usize) -> Self {
        self.max_in_flight_per_connection = n.max(1);
        self
    }

    /// Connections served at once; further ones are closed at once (the shared accept loop of
    /// [`crate::transport::ConnLimits`], with no per-IP cap here). Default 10,000.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n.max(1);
        self
    }

    /// A handler that has not answered after this long is answered `ERR_TIMEOUT`. Default: none.
    pub fn reply_timeout(mut self, t: Option<Duration>) -> Self {
        self.reply_timeout = t;
        self
    }

    /// Time allowed for a peer's ZMTP handshake. Default 10 s.
    pub fn handshake_timeout(mut self, t: Duration) -> Self {
        self.handshake_timeout = t;
        self
    }
}

/// An RPC server on a ZeroMQ ROUTER socket (see the module docs for the frames).
pub struct ZmqServer {
    local_addr: SocketAddr,
    life: Lifecycle,
}

impl fmt::Debug for ZmqServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ZmqServer").field("local_addr", &self.local_addr).finish_non_exhaustive()
    }
}

impl ZmqServer {
    /// Binds `addr` (port 0: any free port) and serves `handler`. Errors: `Io` when the address
    /// cannot be bound.
    pub async fn bind(addr: SocketAddr, handler: impl Handler, config: ZmqServerConfig) -> Result<ZmqServer> {
        Self::bind_arc(addr, Arc::new(handler), config).await
    }

    /// [`ZmqServer::bind`] with a shared handler.
    pub async fn bind_arc(addr: SocketAddr, handler: Arc<dyn Handler>, config: ZmqServerConfig) -> Result<ZmqServer> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        let life = Lifecycle::listening(&listener)?;
        let config = Arc::new(config);
        let l = life.clone();
        let stop = life.draining.clone();
        let max = config.max_connections;
        // A total cap on connections; no per-IP cap on this internal-network transport.
        let sources = super::limits::Sources::new(super::ConnLimits { max_connections: max, max_per_ip: max }, Arc::default());
        tokio::spawn(accept_loop(listener, sources, stop, move |tcp, remote| {
            serve_connection(tcp, remote, handler.clone(), config.clone(), l.clone())
        }));
        Ok(ZmqServer { local_addr, life })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The bound port (the one to announce).
    pub fn port(&self) -> u16 {
        self.local_addr.port()
    }

    /// Connections open now.
    pub fn connections(&self) -> usize {
        self.life.connections.count()
    }

    /// The graceful shutdown (see [`ServerTransport::drain`]): stops accepting; on each
    /// connection, the requests already running finish and their replies go out, requests read
    /// meanwhile are answered [`ERR_TRANSPORT_DRAINING`], and the connection closes once nothing
    /// runs on it. After `grace` the rest are closed. True when all finished in time.
    pub fn drain(&self, grace: Duration) -> impl std::future::Future<Output = bool> + Send + 'static {
        self.life.drain(grace)
    }

    /// Stops listening and closes every connection now.
    pub fn close(&self) {
        self.life.close();
    }
}

impl Drop for ZmqServer {
    fn drop(&mut self) {
        self.life.close();
    }
}

impl ServerTransport for ZmqServer {
    fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    fn close(&self) {
        self.life.close();
    }

    fn drain(&self, grace: Duration) -> BoxFuture<'static, bool> {
        Box::pin(self.life.drain(grace))
    }
}

/// Encodes a reply `[rid, err, result]` (with the REQ delimiter in front when `delimited`).
fn encode_reply(delimited: bool, rid: &[u8], body: WireReply) -> Vec<u8> {
    let mut out = Vec::with_capacity(rid.len() + 64);
    let (err, result): (String, Box<RawValue>) = match body {
        Ok(r) => (String::new(), r.into_raw()),
        // An empty message would read as success.
        Err(e) if e.is_empty() => ("ERR".to_string(), null_raw()),
        Err(e) => (e, null_raw()),
    };
    if delimited {
        zmtp::encode_message(&mut out, &[b"".as_slice(), rid, err.as_bytes(), result.get().as_bytes()]);
    } else {
        zmtp::encode_message(&mut out, &[rid, err.as_bytes(), result.get().as_bytes()]);
    }
    out
}

fn null_raw() -> Box<RawValue> {
    // "null" is JSON.
    RawValue::from_string("null".to_string()).unwrap_or_default()
}

async fn serve_connection(
    mut tcp: TcpStream,
    remote: SocketAddr,
    handler: Arc<dyn Handler>,
    config: Arc<ZmqServerConfig>,
    life: Lifecycle,
) {
    let _live = life.connections.enter();
    // Three frames, plus the REQ delimiter, plus one to tell "extra" apart.
    let mut reader = FrameReader::new(Limits { max_message_size: config.max_message_size, max_frames: 5 });
    let peer = tokio::select! {
        r = zmtp::handshake(&mut tcp, SocketType::Router, config.handshake_timeout, &mut reader) => match r {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(%remote, "zmq: handshake failed: {e}");
                return;
            }
        },
        _ = life.closing.cancelled() => return,
    };
    let delimited = peer.socket_type == SocketType::Req;
    let (mut rd, wr) = tcp.into_split();
    let (tx, rx) = mpsc::channel::<Vec<u8>>(config.send_hwm);
    // The writer outlives the loop for the last replies (and the closing notice below).
    let stop_writer = CancellationToken::new();
    let writer = tokio::spawn(write_loop(wr, rx, stop_writer.clone()));
    let permits = Arc::new(Semaphore::new(config.max_in_flight_per_connection));
    let running = Arc::new(crate::transport::Connections::default());
    let info = RequestInfo { transport: TransportKind::Zmq, remote_addr: Some(remote), ..Default::default() };
    loop {
        let draining = life.draining.is_cancelled();
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = life.closing.cancelled() => break,
        };
        let incoming = tokio::select! {
            r = reader.next(&mut rd) => r,
            // Draining and nothing runs: done.
            _ = running.all_closed(), if draining => break,
            _ = life.draining.cancelled(), if !draining => continue,
            _ = life.closing.cancelled() => break,
        };
        let msg = match incoming {
            Ok(Some(Incoming::Message(m))) => m,
            Ok(Some(Incoming::Ping(ctx))) => {
                let mut out = Vec::new();
                zmtp::encode_pong(&mut out, &ctx);
                if tx.send(out).await.is_err() {
                    break;
                }
                continue;
            }
            Ok(Some(_)) => continue,
            Ok(None) => break,
            Err(e) => {
                tracing::debug!(%remote, "zmq: closing a connection: {e}");
                break;
            }
        };
        let mut frames = msg.frames.as_slice();
        let delim = delimited && frames.first().is_some_and(|f| f.is_empty());
        if delim {
            frames = &frames[1..];
        }
        let rid = frames.first().cloned().unwrap_or_default();
        if msg.truncated || frames.len() != 3 {
            let n = if msg.truncated { "more than 4".to_string() } else { frames.len().to_string() };
            let e = format!("{ERR_BAD_FRAMES}: a request is 3 frames [rid, key, payload], got {n}");
            if tx.send(encode_reply(delim, &rid, Err(e))).await.is_err() {
                break;
            }
            continue;
        }
        if draining {
            if tx.send(encode_reply(delim, &rid, Err(ERR_TRANSPORT_DRAINING.to_string()))).await.is_err() {
                break;
            }
            continue;
        }
        let request = match decode_request(&frames[0], &frames[1], &frames[2], &info) {
            Ok(r) => r,
            Err(e) => {
                if tx.send(encode_reply(delim, &rid, Err(format!("ERR_DECODE: {}", e.message())))).await.is_err() {
                    break;
                }
                continue;
            }
        };
        match start_dispatch(&*handler, request) {
            Dispatched::Answered(body) => {
                drop(permit);
                if tx.send(encode_reply(delim, &rid, body)).await.is_err() {
                    break;
                }
            }
            Dispatched::Pending(rx) => {
                let (tx, guard, timeout) = (tx.clone(), running.enter(), config.reply_timeout);
                tokio::spawn(async move {
                    let body = await_reply(rx, timeout).await;
                    let _ = tx.send(encode_reply(delim, &rid, body)).await;
                    drop((permit, guard));
                });
            }
        }
    }
    if running.count() == 0 && !delimited {
        // Nothing runs: whatever the peer sent that is unanswered was never read, so it never
        // ran. Say so before closing (a reply with an empty rid), so its requests go elsewhere.
        let _ = tx.try_send(encode_reply(false, b"", Err(ERR_TRANSPORT_DRAINING.to_string())));
    } else if life.closing.is_cancelled() {
        // Closed now, requests running: they end without a reply.
        stop_writer.cancel();
    }
    drop(tx);
    // The replies of the requests still running go out (the writer ends after the last one); a
    // close ends them, but lets the closing notice go out first.
    let mut writer = writer;
    tokio::select! {
        _ = &mut writer => return,
        _ = life.closing.cancelled() => {}
    }
    if running.count() == 0 && tokio::time::timeout(Duration::from_secs(2), &mut writer).await.is_ok() {
        return;
    }
    stop_writer.cancel();
    let _ = writer.await;
}

fn decode_request(rid: &Bytes, key: &Bytes, payload: &Bytes, info: &RequestInfo) -> Result<Request> {
    let rid = std::str::from_utf8(rid).map_err(|_| Error::decode("the rid is not UTF-8"))?;
    let key = std::str::from_utf8(key).map_err(|_| Error::decode("the key is not UTF-8"))?;
    // Checked to be JSON, kept as text until the handler asks for a value.
    let payload: Box<RawValue> = serde_json::from_slice(payload).map_err(|e| Error::decode(format!("the payload is not JSON: {e}")))?;
    Ok(Request { rid: Value::String(rid.to_string()), key: key.to_string(), payload: Payload::from_raw(payload), info: info.clone() })
}

// ---------------------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------------------

/// Settings of a [`ZmqClient`].
#[derive(Debug, Clone)]
pub struct ZmqClientConfig {
    connect_timeout: Duration,
    default_request_timeout: Option<Duration>,
    max_pending_per_connection: usize,
    max_message_size: usize,
    send_hwm: usize,
    max_dests: usize,
}

impl Default for ZmqClientConfig {
    fn default() -> Self {
        ZmqClientConfig {
            connect_timeout: Duration::from_secs(10),
            default_request_timeout: Some(Duration::from_secs(60)),
            max_pending_per_connection: 65_536,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            send_hwm: DEFAULT_SEND_HWM,
            max_dests: 10_000,
        }
    }
}

impl ZmqClientConfig {
    /// Time allowed for TCP connect plus the ZMTP handshake. Default 10 s.
    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }

    /// The timeout of a request that has none. Default 60 s.
    pub fn default_request_timeout(mut self, t: Option<Duration>) -> Self {
        self.default_request_timeout = t;
        self
    }

    /// Requests in flight per connection; past it a request fails with `InvalidState`.
    /// Default 65,536.
    pub fn max_pending_per_connection(mut self, n: usize) -> Self {
        self.max_pending_per_connection = n.max(1);
        self
    }

    /// The largest reply; a larger one closes the connection (its requests fail). Default 16 MiB.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes.max(1024);
        self
    }

    /// Requests queued per connection before a request waits for room (ZeroMQ's `ZMQ_SNDHWM`).
    /// Default 1000.
    pub fn send_hwm(mut self, messages: usize) -> Self {
        self.send_hwm = messages.max(1);
        self
    }

    /// Destinations with an open connection; past it the idle ones are closed first.
    /// Default 10,000.
    pub fn max_dests(mut self, n: usize) -> Self {
        self.max_dests = n.max(1);
        self
    }
}

/// One DEALER connection to one server.
struct Conn {
    tx: mpsc::Sender<Vec<u8>>,
    pending: Mutex<Option<HashMap<String, ResultSender>>>,
    close: CancellationToken,
}

impl Conn {
    fn is_open(&self) -> bool {
        !self.close.is_cancelled() && !self.tx.is_closed()
    }

    /// Fails every request in flight and closes the connection.
    fn fail_all(&self, kind: ErrorKind, why: &str) {
        let waiting = lock(&self.pending).take();
        for (_, w) in waiting.into_iter().flatten() {
            let _ = w.send(Err(Error::new(kind, why.to_string())));
        }
        self.close.cancel();
    }
}

/// Where a destination's connection is made (one connect at a time per destination).
#[derive(Default)]
struct Slot {
    conn: tokio::sync::Mutex<Option<Arc<Conn>>>,
    /// The connection once open, read without the async lock.
    live: Mutex<Option<Arc<Conn>>>,
}

struct ClientInner {
    config: ZmqClientConfig,
    slots: Mutex<HashMap<String, Arc<Slot>>>,
}

/// A ZeroMQ DEALER client: one connection per destination, requests multiplexed on it by rid.
#[derive(Clone)]
pub struct ZmqClient {
    inner: Arc<ClientInner>,
}

impl fmt::Debug for ZmqClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ZmqClient").field("config", &self.inner.config).finish_non_exhaustive()
    }
}

impl Default for ZmqClient {
    fn default() -> Self {
        ZmqClient::new(ZmqClientConfig::default())
    }
}

impl ZmqClient {
    /// A client with `config`. Connections open on first use.
    pub fn new(config: ZmqClientConfig) -> ZmqClient {
        ZmqClient { inner: Arc::new(ClientInner { config, slots: Mutex::new(HashMap::new()) }) }
    }

    /// The settings.
    pub fn config(&self) -> &ZmqClientConfig {
        &self.inner.config
    }

    fn slot(&self, dest: &str) -> Arc<Slot> {
        let mut slots = lock(&self.inner.slots);
        if let Some(s) = slots.get(dest) {
            return s.clone();
        }
        if slots.len() >= self.inner.config.max_dests {
            // Forget destinations without an open connection; if none, the oldest-looking one.
            slots.retain(|_, s| lock(&s.live).as_ref().is_some_and(|c| c.is_open()));
            if slots.len() >= self.inner.config.max_dests
                && let Some(k) = slots.keys().next().cloned()
                && let Some(s) = slots.remove(&k)
                && let Some(c) = lock(&s.live).take()
            {
                c.fail_all(ErrorKind::Closed, "ERR_TRANSPORT_CLOSE: too many destinations");
            }
        }
        let s = Arc::new(Slot::default());
        slots.insert(dest.to_string(), s.clone());
        s
    }

    /// The open connection to `dest`, connecting first when there is none.
    async fn conn(&self, dest: &str) -> Result<Arc<Conn>> {
        let slot = self.slot(dest);
        if let Some(c) = lock(&slot.live).as_ref().filter(|c| c.is_open()) {
            return Ok(c.clone());
        }
        let mut guard = slot.conn.lock().await;
        if let Some(c) = guard.as_ref().filter(|c| c.is_open()) {
            return Ok(c.clone());
        }
        let c = connect(dest, &self.inner.config).await?;
        *guard = Some(c.clone());
        *lock(&slot.live) = Some(c.clone());
        Ok(c)
    }

    /// Whether a connection to `dest` is open.
    pub fn is_connected(&self, dest: &str) -> bool {
        lock(&self.inner.slots).get(dest).is_some_and(|s| lock(&s.live).as_ref().is_some_and(|c| c.is_open()))
    }

    /// Sends one request to `dest` (`host:port`) and waits for its result.
    pub async fn send(&self, dest: &str, request: OutgoingRequest) -> Result<Value> {
        self.send_as(dest, request, ResultForm::Value).await.map(ReplyResult::into_value)
    }

    /// [`ZmqClient::send`] with the result in `form` (raw: the JSON text as it came).
    pub async fn send_as(&self, dest: &str, request: OutgoingRequest, form: ResultForm) -> Result<ReplyResult> {
        let timeout = request.timeout.or(self.inner.config.default_request_timeout);
        let fut = self.request_inner(dest, request, form);
        match timeout {
            Some(t) => match tokio::time::timeout(t, fut).await {
                Ok(r) => r,
                Err(_) => Err(Error::timeout(format!("ERR_TIMEOUT: no reply within {t:?}"))),
            },
            None => fut.await,
        }
    }

    async fn request_inner(&self, dest: &str, request: OutgoingRequest, form: ResultForm) -> Result<ReplyResult> {
        let conn = self.conn(dest).await?;
        let (w, rx) = ResultSender::channel(form);
        {
            let mut p = lock(&conn.pending);
            let Some(map) = p.as_mut() else {
                // Nothing was sent: as for a failed connect, another worker may take it.
                return Err(Error::new(ErrorKind::Connect, "ERR_TRANSPORT_CLOSE: the connection closed before sending"));
            };
            if map.len() >= self.inner.config.max_pending_per_connection {
                map.retain(|_, w| !w.is_closed());
                if map.len() >= self.inner.config.max_pending_per_connection {
                    return Err(Error::new(ErrorKind::InvalidState, "too many requests in flight on this connection"));
                }
            }
            if map.contains_key(&request.rid) {
                return Err(Error::invalid(format!("request id {} already in flight", request.rid)));
            }
            map.insert(request.rid.clone(), w);
        }
        let _guard = PendingGuard { conn: &conn, rid: &request.rid };
        let mut out = Vec::with_capacity(request.rid.len() + request.key.len() + request.payload_json.len() + 32);
        zmtp::encode_message(&mut out, &[request.rid.as_bytes(), request.key.as_bytes(), request.payload_json.as_bytes()]);
        // Waits while the connection's queue is at its high-water mark.
        if conn.tx.send(out).await.is_err() {
            // The writer is gone and gave the request back unsent.
            return Err(Error::new(ErrorKind::Connect, "ERR_TRANSPORT_CLOSE: the connection closed before sending"));
        }
        match rx.await {
            Ok(r) => r,
            Err(_) => Err(Error::new(ErrorKind::Closed, "ERR_TRANSPORT_CLOSE: the connection closed")),
        }
    }

    /// Closes every connection; requests in flight fail with [`ErrorKind::Closed`].
    pub fn close_all(&self) {
        let slots: Vec<Arc<Slot>> = lock(&self.inner.slots).drain().map(|(_, s)| s).collect();
        for s in slots {
            if let Some(c) = lock(&s.live).take() {
                c.fail_all(ErrorKind::Closed, "ERR_TRANSPORT_CLOSE: the client was closed");
            }
        }
    }
}

/// Removes a pending entry when its request ends or is dropped (timeout, cancellation).
struct PendingGuard<'a> {
    conn: &'a Conn,
    rid: &'a str,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        if let Some(m) = lock(&self.conn.pending).as_mut() {
            m.remove(self.rid);
        }
    }
}

/// Connects to `dest`, runs the handshake, and starts the connection's writer and reader.
async fn connect(dest: &str, config: &ZmqClientConfig) -> Result<Arc<Conn>> {
    let connecting = async {
        let mut tcp = TcpStream::connect(dest)
            .await
            .map_err(|e| Error::new(ErrorKind::Connect, format!("ERR_TRANSPORT_CONNECT: {dest}: {e}")).with_source(e))?;
        let _ = tcp.set_nodelay(true);
        // A ROUTER peer never sends more than 3 frames; 4 tells a bad one apart.
        let mut reader = FrameReader::new(Limits { max_message_size: config.max_message_size, max_frames: 4 });
        zmtp::handshake(&mut tcp, SocketType::Dealer, config.connect_timeout, &mut reader)
            .await
            .map_err(|e| Error::new(ErrorKind::Connect, format!("ERR_TRANSPORT_CONNECT: {dest}: {}", e.message())))?;
        Ok::<_, Error>((tcp, reader))
    };
    let (tcp, reader) = match tokio::time::timeout(config.connect_timeout, connecting).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(Error::new(
                ErrorKind::Connect,
                format!("ERR_TRANSPORT_CONNECT: {dest}: no connection within {:?}", config.connect_timeout),
            ));
        }
    };
    let (rd, wr) = tcp.into_split();
    let (tx, rx) = mpsc::channel(config.send_hwm);
    let conn = Arc::new(Conn { tx, pending: Mutex::new(Some(HashMap::new())), close: CancellationToken::new() });
    tokio::spawn(write_loop(wr, rx, conn.close.clone()));
    tokio::spawn(read_replies(rd, reader, conn.clone(), dest.to_string()));
    Ok(conn)
}

/// Routes each reply to its request until the connection ends, then fails what is left.
async fn read_replies(mut rd: tokio::net::tcp::OwnedReadHalf, mut reader: FrameReader, conn: Arc<Conn>, dest: String) {
    let why = loop {
        let incoming = tokio::select! {
            r = reader.next(&mut rd) => r,
            _ = conn.close.cancelled() => break Ok("the connection was closed".to_string()),
        };
        let msg = match incoming {
            Ok(Some(Incoming::Message(m))) => m,
            Ok(Some(Incoming::Ping(ctx))) => {
                let mut out = Vec::new();
                zmtp::encode_pong(&mut out, &ctx);
                let _ = conn.tx.try_send(out);
                continue;
            }
            Ok(Some(_)) => continue,
            Ok(None) => break Ok("the server closed the connection".to_string()),
            Err(e) => break Ok(e.message().to_string()),
        };
        if let [rid, err, _] = msg.frames.as_slice()
            && rid.is_empty()
            && &err[..] == ERR_TRANSPORT_DRAINING.as_bytes()
        {
            // The server closes, and nothing it did not answer ran.
            break Err("the server closed; unanswered requests did not run".to_string());
        }
        let [rid, err, result] = msg.frames.as_slice() else {
            tracing::debug!(%dest, frames = msg.frames.len(), "zmq: a reply that is not [rid, err, result]; dropped");
            // Its request, if the rid is readable, is failed at once instead of timing out.
            if let Some(rid) = msg.frames.first().and_then(|r| std::str::from_utf8(r).ok())
                && let Some(w) = lock(&conn.pending).as_mut().and_then(|m| m.remove(rid))
            {
                let _ = w.send(Err(Error::new(ErrorKind::Protocol, "a reply that is not [rid, err, result]")));
            }
            continue;
        };
        let Ok(rid) = std::str::from_utf8(rid) else { continue };
        let Some(w) = lock(&conn.pending).as_mut().and_then(|m| m.remove(rid)) else { continue };
        let form = w.form();
        let _ = w.send(decode_reply(err, result, form));
    };
    match why {
        // Sent to a server that did not run them: for the caller, a worker that was not reached.
        Err(why) => conn.fail_all(ErrorKind::Connect, &format!("{ERR_TRANSPORT_DRAINING}: {why}")),
        Ok(why) => conn.fail_all(ErrorKind::Closed, &format!("ERR_TRANSPORT_CLOSE: {why}")),
    }
}

/// A reply's `err` and `result` frames as the request's outcome.
fn decode_reply(err: &[u8], result: &[u8], form: ResultForm) -> Result<ReplyResult> {
    if !err.is_empty() {
        let msg = String::from_utf8_lossy(err).into_owned();
        // Nothing ran on a draining server: for the caller it is a worker that could not be reached.
        let kind = if msg == ERR_TRANSPORT_DRAINING { ErrorKind::Connect } else { ErrorKind::Remote };
        return Err(Error::new(kind, msg));
    }
    let text = std::str::from_utf8(result).map_err(|_| Error::decode("the result is not UTF-8"))?;
    match form {
        ResultForm::Raw => {
            RawValue::from_string(text.to_string()).map(ReplyResult::Raw).map_err(|e| Error::decode(format!("the result is not JSON: {e}")))
        }
        _ => serde_json::from_str(text).map(ReplyResult::Value).map_err(|e| Error::decode(format!("the result is not JSON: {e}"))),
    }
}

impl ClientTransport for ZmqClient {
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
        usize::from(self.is_connected(dest))
    }

    fn close(&self) {
        self.close_all();
    }
}
