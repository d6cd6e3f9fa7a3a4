//! The RPC client over WebSocket: [`WsClient`], its pool of sockets per destination, and its
//! settings.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use serde_json::Value;
use serde_json::value::RawValue;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_util::sync::CancellationToken;

use super::frame::{self as wsframe, CLOSE_DRAINED, CLOSE_NORMAL, FrameReader, Msg, OP_PONG, OP_TEXT, Side};
use super::stream::{NetStream, dial_raw};
use super::{DEFAULT_BUSY_POLL, DEFAULT_MAX_MESSAGE_SIZE, MAX_BUSY_POLL};

use crate::error::{Error, ErrorKind, Result};
use crate::rpc::envelope::ResultForm;
use crate::rpc::{BoxFuture, ClientTransport, OutgoingRequest, ReplyResult};
use crate::tls::ClientTls;
use crate::transport::busy::BusyPoll;

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
                    let _ = w.send(Err(Error::timeout(format!("no reply within {t:?}"))));
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
            inner: Arc::new(ClientInner { config, pools: Mutex::new(HashMap::new()), next: AtomicUsize::new(0), epoch: Instant::now() }),
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
                    Err(_) => return Err(Error::timeout(format!("no reply within {t:?}"))),
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
