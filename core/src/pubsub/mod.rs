//! PUB/SUB over WebSocket, wire-compatible with grenache-nodejs-ws 1.0.0 (`PeerPub`, `PeerSub`).
//!
//! The wire has no envelope: a publisher is one channel, announced under a name in the DHT;
//! [`PeerPub::publish`] sends the message as-is, one text frame, to every connected subscriber. A
//! subscriber dials `ws://host:port/ws` and sends nothing.
//!
//! Differences from the reference (also in `docs/compat.md`):
//! * **Slow subscribers are bounded.** Each subscriber has a queue of
//!   [`PubConfig::queue_capacity`] messages (default 1024). When it is full, the
//!   [`SlowSubscriberPolicy`] applies: [`Disconnect`](SlowSubscriberPolicy::Disconnect) (the
//!   default) closes that subscriber's socket so it can reconnect and resume with fresh messages,
//!   [`DropOldest`](SlowSubscriberPolicy::DropOldest) discards its oldest queued message. Either way
//!   the publisher's memory stays bounded and other subscribers are not slowed down. The reference
//!   buffers without limit.
//! * [`PeerSub::sub`] connects to **every** publisher the lookup returns (the reference picks one
//!   at random), looks the name up again every [`SubConfig::relookup_interval`] to pick up new
//!   publishers, and reconnects with back-off when a publisher goes away (the reference never
//!   reconnects and closes sockets still connecting after 5 s).
//! * Optional TLS on both sides ([`PubConfig::tls`], [`SubConfig::tls`]); the reference has none.
//! * The same publishers and subscribers also run over ZeroMQ PUB/SUB sockets
//!   ([`PubConfig::transport`], [`SubConfig::transport`] with [`TransportKind::Zmq`]; see
//!   [`zmq`] for the wire), with the same bounded queues, policies and reconnects.
//! * Closing a [`Subscription`] closes its sockets (the reference's `PeerSub.stop()` leaves them).
//!
//! Both sides speak WebSocket with the RPC path's RFC 6455 code (`transport::ws`'s framing and
//! socket), so its rules hold here too: a protocol violation, a message over the size limit or
//! text that is not UTF-8 closes only the socket that sent it, with the close code that says why
//! (1002, 1009, 1007); pings are answered and closes echoed. A publisher encodes each message as a
//! frame once and writes the same bytes to every subscriber; closing it sends 1001.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc, watch};

use crate::transport::limits::{Liveness, Verdict, WsLiveness};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::link::{AnnounceHandle, Link};
use crate::rpc::TransportKind;
use crate::tls::{ClientTls, ServerTls, VerifyClient};
use crate::transport::ws::frame::{
    self as wsframe, CLOSE_GOING_AWAY, CLOSE_NORMAL, FrameReader, Msg, OP_BINARY, OP_PING, OP_PONG, OP_TEXT, Owned, Side,
};
use crate::transport::ws::{AcceptSettings, DEFAULT_MAX_MESSAGE_SIZE, NetStream, accept_raw, dial_raw};

pub mod zmq;

/// A subscriber whose socket accepts no bytes for this long is disconnected.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------------------------
// Publisher
// ---------------------------------------------------------------------------------------------

/// What a publisher does when a subscriber's queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SlowSubscriberPolicy {
    /// Close the slow subscriber's socket (our subscribers reconnect and resume with new
    /// messages; messages queued for it are lost). The default.
    #[default]
    Disconnect,
    /// Drop the subscriber's oldest queued message to make room (it misses messages but stays
    /// connected).
    DropOldest,
}

/// Settings of a [`PeerPub`].
#[derive(Clone)]
pub struct PubConfig {
    tls: Option<ServerTls>,
    verify_client: Option<VerifyClient>,
    queue_capacity: usize,
    policy: SlowSubscriberPolicy,
    max_subscribers: usize,
    max_subscribers_per_ip: usize,
    max_message_size: usize,
    handshake_timeout: Duration,
    transport: TransportKind,
    liveness: WsLiveness,
}

impl Default for PubConfig {
    fn default() -> Self {
        PubConfig {
            transport: TransportKind::Ws,
            tls: None,
            verify_client: None,
            queue_capacity: 1024,
            policy: SlowSubscriberPolicy::Disconnect,
            max_subscribers: 10_000,
            max_subscribers_per_ip: crate::transport::ConnLimits::default().max_per_ip,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            handshake_timeout: Duration::from_secs(10),
            // Subscribers send nothing: no idle time, only pings.
            liveness: WsLiveness { idle: Duration::ZERO, ..WsLiveness::default() },
        }
    }
}

impl fmt::Debug for PubConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PubConfig")
            .field("tls", &self.tls)
            .field("verify_client", &self.verify_client.is_some())
            .field("queue_capacity", &self.queue_capacity)
            .field("policy", &self.policy)
            .field("max_subscribers", &self.max_subscribers)
            .field("max_message_size", &self.max_message_size)
            .field("transport", &self.transport)
            .finish_non_exhaustive()
    }
}

impl PubConfig {
    /// The wire: [`TransportKind::Ws`] (the reference's, the default) or [`TransportKind::Zmq`]
    /// (a ZeroMQ PUB socket: no TLS, no `verify_client`). HTTP has no PUB/SUB.
    pub fn transport(mut self, kind: TransportKind) -> Self {
        self.transport = kind;
        self
    }

    /// Serve `wss://` (an extension: the reference's PUB/SUB has no TLS). Default: plain.
    pub fn tls(mut self, tls: ServerTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// A hook that accepts or refuses each subscriber before its upgrade (`HTTP 401`).
    /// Default: none.
    pub fn verify_client(mut self, hook: VerifyClient) -> Self {
        self.verify_client = Some(hook);
        self
    }

    /// Messages queued per subscriber before [`SlowSubscriberPolicy`] applies. Default is 1024.
    pub fn queue_capacity(mut self, n: usize) -> Self {
        self.queue_capacity = n.max(1);
        self
    }

    /// What to do with a subscriber whose queue is full. Default is
    /// [`SlowSubscriberPolicy::Disconnect`].
    pub fn slow_subscriber_policy(mut self, p: SlowSubscriberPolicy) -> Self {
        self.policy = p;
        self
    }

    /// Subscribers served at once; further ones are closed at once (see
    /// [`crate::transport::ConnLimits`]). Default is 10,000.
    pub fn max_subscribers(mut self, n: usize) -> Self {
        self.max_subscribers = n.max(1);
        self
    }

    /// Subscribers one source IP address holds at once; further ones are closed at once.
    /// Default is 2,000.
    pub fn max_subscribers_per_ip(mut self, n: usize) -> Self {
        self.max_subscribers_per_ip = n.max(1);
        self
    }

    /// Pings to a silent subscriber and the time it has to answer (its `idle` is not used:
    /// subscribers send nothing). Default: a ping after 30 s of silence, 10 s to answer.
    pub fn liveness(mut self, l: WsLiveness) -> Self {
        self.liveness = WsLiveness { idle: Duration::ZERO, ..l };
        self
    }

    /// The largest message (its fragments together) accepted from a subscriber (they send
    /// nothing that matters); a larger one closes that subscriber's socket with 1009. Default is
    /// 16 MiB.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes.max(1024);
        self
    }
}

/// One published message, shared by every subscriber's queue: the WebSocket frame as the
/// publisher sends it (server frames are not masked, so the bytes are the same for every
/// subscriber and are encoded once per message, not once per subscriber) and where its payload
/// starts (ZeroMQ sends the payload alone).
#[derive(Clone)]
pub(crate) struct Published {
    frame: Arc<[u8]>,
    header: usize,
}

impl Published {
    fn new(opcode: u8, payload: &[u8]) -> Published {
        let (h, n) = wsframe::frame_header(opcode, payload.len(), None);
        // One allocation, shared by every subscriber's queue.
        let frame: Arc<[u8]> = h[..n].iter().chain(payload).copied().collect();
        Published { frame, header: n }
    }

    /// The message's bytes.
    pub(crate) fn payload(&self) -> &[u8] {
        &self.frame[self.header..]
    }
}

/// One subscriber's bounded queue.
struct SubQueue {
    q: Mutex<QueueState>,
    notify: Notify,
    /// Cancelled by the publisher to disconnect a slow subscriber, even mid-write.
    kick: CancellationToken,
}

struct QueueState {
    items: VecDeque<Published>,
    /// Set by the publisher to disconnect a slow subscriber.
    kicked: bool,
    dropped: u64,
}

/// Counters of a [`PeerPub`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PubStats {
    /// Subscribers connected now.
    pub subscribers: usize,
    /// Messages published since start.
    pub published: u64,
    /// Messages dropped from full queues ([`SlowSubscriberPolicy::DropOldest`]).
    pub dropped: u64,
    /// Subscribers disconnected for being slow ([`SlowSubscriberPolicy::Disconnect`]).
    pub kicked: u64,
}

struct PubShared {
    subs: Mutex<HashMap<u64, Arc<SubQueue>>>,
    next_id: AtomicU64,
    capacity: usize,
    policy: SlowSubscriberPolicy,
    published: AtomicU64,
    dropped: AtomicU64,
    kicked: AtomicU64,
    count: watch::Sender<usize>,
}

/// A publisher: a WebSocket server that sends each published message to every subscriber.
///
/// Dropping it (or [`PeerPub::close`]) stops announcing, stops accepting and closes every
/// subscriber's socket.
pub struct PeerPub {
    local_addr: SocketAddr,
    shared: Arc<PubShared>,
    shutdown: CancellationToken,
    /// Shut down by `close`: connects are refused once it returns.
    listening: crate::transport::ListenerStop,
    announces: Mutex<Vec<AnnounceHandle>>,
}

impl fmt::Debug for PeerPub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerPub").field("local_addr", &self.local_addr).field("stats", &self.stats()).finish()
    }
}

impl PeerPub {
    /// Binds `addr` (port 0 picks a free port) and starts accepting subscribers.
    /// Errors: `InvalidArgument` for the HTTP transport, or TLS or a `verify_client` hook on the
    /// ZeroMQ one; `Io` when the address cannot be bound.
    pub async fn bind(addr: SocketAddr, config: PubConfig) -> Result<PeerPub> {
        match config.transport {
            TransportKind::Ws => {}
            TransportKind::Zmq if config.tls.is_none() && config.verify_client.is_none() => {}
            TransportKind::Zmq => return Err(Error::invalid("ZeroMQ PUB/SUB has no TLS (and no CURVE): use WS for TLS")),
            other => return Err(Error::invalid(format!("no PUB/SUB over {other:?}: WS or ZeroMQ"))),
        }
        let listener = crate::transport::listen(addr)?;
        let local_addr = listener.local_addr()?;
        let (count, _) = watch::channel(0);
        let shared = Arc::new(PubShared {
            subs: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            capacity: config.queue_capacity,
            policy: config.policy,
            published: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            kicked: AtomicU64::new(0),
            count,
        });
        let shutdown = CancellationToken::new();
        let listening = crate::transport::ListenerStop::new(&listener)?;
        let settings = AcceptSettings {
            tls: config.tls.clone(),
            verify_client: config.verify_client.clone(),
            max_message_size: config.max_message_size,
            handshake_timeout: config.handshake_timeout,
        };
        if config.transport == TransportKind::Zmq {
            tokio::spawn(zmq::pub_accept_loop(listener, shared.clone(), settings, config.max_subscribers, shutdown.clone()));
        } else {
            tokio::spawn(pub_accept_loop(listener, shared.clone(), settings, config.clone(), shutdown.clone()));
        }
        Ok(PeerPub { local_addr, shared, shutdown, listening, announces: Mutex::new(Vec::new()) })
    }

    /// The address the publisher listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The port to announce.
    pub fn port(&self) -> u16 {
        self.local_addr.port()
    }

    /// Keeps announcing `name` on this publisher's port through `link` every `interval`
    /// (jittered), until the publisher is closed. See [`Link::start_announcing`].
    pub fn start_announcing(&self, link: &Link, name: &str, interval: Duration) -> AnnounceHandle {
        let h = link.start_announcing(name, self.port(), interval);
        lock(&self.announces).push(h.clone());
        h
    }

    /// Sends `message` as one text frame to every connected subscriber; returns how many it was
    /// queued for. Never blocks: a full queue applies the [`SlowSubscriberPolicy`].
    pub fn publish(&self, message: impl Into<String>) -> usize {
        self.publish_message(Published::new(OP_TEXT, message.into().as_bytes()))
    }

    /// Sends `data` as one binary frame to every connected subscriber (the reference sends Node
    /// Buffers this way).
    pub fn publish_binary(&self, data: impl Into<Bytes>) -> usize {
        self.publish_message(Published::new(OP_BINARY, &data.into()))
    }

    fn publish_message(&self, msg: Published) -> usize {
        let s = &self.shared;
        s.published.fetch_add(1, Ordering::Relaxed);
        let subs = lock(&s.subs);
        for q in subs.values() {
            let mut st = lock(&q.q);
            if st.kicked {
                continue;
            }
            if st.items.len() >= s.capacity {
                match s.policy {
                    SlowSubscriberPolicy::DropOldest => {
                        st.items.pop_front();
                        st.dropped += 1;
                        s.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    SlowSubscriberPolicy::Disconnect => {
                        st.kicked = true;
                        st.items.clear();
                        s.kicked.fetch_add(1, Ordering::Relaxed);
                        drop(st);
                        q.kick.cancel();
                        continue;
                    }
                }
            }
            st.items.push_back(msg.clone());
            drop(st);
            q.notify.notify_one();
        }
        subs.len()
    }

    /// Subscribers connected now.
    pub fn subscribers(&self) -> usize {
        lock(&self.shared.subs).len()
    }

    /// Waits until at least `n` subscribers are connected, or fails after `timeout`.
    pub async fn wait_subscribers(&self, n: usize, timeout: Duration) -> Result<()> {
        let mut rx = self.shared.count.subscribe();
        let fut = rx.wait_for(|c| *c >= n);
        match tokio::time::timeout(timeout, fut).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(Error::timeout(format!("fewer than {n} subscribers after {timeout:?}"))),
        }
    }

    /// Counters.
    pub fn stats(&self) -> PubStats {
        let s = &self.shared;
        PubStats {
            subscribers: lock(&s.subs).len(),
            published: s.published.load(Ordering::Relaxed),
            dropped: s.dropped.load(Ordering::Relaxed),
            kicked: s.kicked.load(Ordering::Relaxed),
        }
    }

    /// Stops announcing, stops accepting (connects are refused once this returns) and closes
    /// every subscriber's socket.
    pub fn close(&self) {
        for h in lock(&self.announces).drain(..) {
            h.stop();
        }
        self.shutdown.cancel();
        self.listening.stop();
    }
}

impl Drop for PeerPub {
    fn drop(&mut self) {
        self.close();
    }
}

async fn pub_accept_loop(
    listener: TcpListener,
    shared: Arc<PubShared>,
    settings: AcceptSettings,
    config: PubConfig,
    shutdown: CancellationToken,
) {
    let settings = Arc::new(settings);
    let limits = crate::transport::ConnLimits { max_connections: config.max_subscribers, max_per_ip: config.max_subscribers_per_ip };
    let sources = crate::transport::limits::Sources::new(limits, Arc::default());
    let liveness = config.liveness;
    crate::transport::accept_loop(listener, sources, shutdown.clone(), move |tcp, remote| {
        let shared = shared.clone();
        let settings = settings.clone();
        let shutdown = shutdown.clone();
        async move {
            let (io, leftover) = match accept_raw(tcp, remote, &settings).await {
                Ok((io, leftover, _cert)) => (io, leftover),
                Err(e) => {
                    tracing::debug!("pub: {e}");
                    return;
                }
            };
            let frames = FrameReader::new(Side::Server, settings.max_message_size, leftover);
            serve_subscriber(io, frames, remote, shared, shutdown, liveness).await;
        }
    })
    .await;
}

/// Runs one socket write. The timer and the kick's waiter are only set up when the write does not
/// complete at once (the usual case: the bytes go to the socket buffer). False when the socket
/// failed, took no bytes for [`WRITE_TIMEOUT`], or `kick` was cancelled meanwhile.
async fn write_or_kick(io: &mut NetStream, out: &mut Vec<u8>, kick: &CancellationToken) -> bool {
    use std::future::Future;
    let mut write = std::pin::pin!(wsframe::write_out(io, out));
    match std::future::poll_fn(|cx| std::task::Poll::Ready(write.as_mut().poll(cx))).await {
        std::task::Poll::Ready(r) => r.is_ok(),
        std::task::Poll::Pending => tokio::select! {
            r = tokio::time::timeout(WRITE_TIMEOUT, write) => matches!(r, Ok(Ok(()))),
            _ = kick.cancelled() => false,
        },
    }
}

/// Serves one subscriber in one task: writes what is published to it (every message queued
/// since the last write goes out in one write), answers its pings, pings it when it is silent,
/// and reads what it sends (nothing that matters, within the frame and message limits: a
/// violation closes its socket with the close code that says why).
async fn serve_subscriber(
    mut io: NetStream,
    mut frames: FrameReader,
    remote: SocketAddr,
    shared: Arc<PubShared>,
    shutdown: CancellationToken,
    liveness: WsLiveness,
) {
    let mut live = Liveness::new(liveness);
    let mut reads = 0u64;
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let q = Arc::new(SubQueue {
        q: Mutex::new(QueueState { items: VecDeque::new(), kicked: false, dropped: 0 }),
        notify: Notify::new(),
        kick: CancellationToken::new(),
    });
    {
        let mut subs = lock(&shared.subs);
        subs.insert(id, q.clone());
        let n = subs.len();
        shared.count.send_replace(n);
    }
    let stopping = shutdown.cancelled();
    tokio::pin!(stopping);
    let mut batch: VecDeque<Published> = VecDeque::new();
    let mut out: Vec<u8> = Vec::with_capacity(4096);
    // `Some((code, reason))`: close the socket with a close frame; `None`: just drop it.
    let closing: Option<(u16, String)> = 'serve: loop {
        // What the subscriber sent: pongs to queue, a close, or a violation.
        loop {
            match frames.next_message() {
                Ok(Some(Msg::Text(_) | Msg::Binary(_))) => {}
                Ok(Some(Msg::Ping(p))) => wsframe::encode_frame(&mut out, OP_PONG, p, None),
                Ok(Some(Msg::Close(code))) => break 'serve Some((code.unwrap_or(CLOSE_NORMAL), String::new())),
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!("pub: closing subscriber {remote}: {e}");
                    break 'serve Some((e.close_code(), e.to_string()));
                }
            }
        }
        // What was published to it since the last iteration.
        let kicked = {
            let mut st = lock(&q.q);
            std::mem::swap(&mut batch, &mut st.items);
            st.kicked
        };
        if kicked {
            tracing::debug!("pub: disconnecting a slow subscriber {remote}");
            break None;
        }
        for m in batch.drain(..) {
            out.extend_from_slice(&m.frame);
        }
        // A subscriber that does not read for WRITE_TIMEOUT is dropped even if its queue never
        // fills (e.g. a stalled TCP window with few, large messages).
        if !out.is_empty() && !write_or_kick(&mut io, &mut out, &q.kick).await {
            break None;
        }
        tokio::select! {
            _ = q.notify.notified() => {}
            r = frames.fill(&mut io) => match r {
                Ok(0) | Err(_) => break None,
                Ok(_) => reads += 1,
            },
            _ = q.kick.cancelled() => {}
            () = &mut stopping => break Some((CLOSE_GOING_AWAY, "the publisher is closing".to_string())),
            v = live.check(reads, 0) => {
                if v != Verdict::Ping {
                    tracing::debug!("pub: subscriber {remote} did not answer a ping");
                    break Some((CLOSE_GOING_AWAY, "no answer to a ping".to_string()));
                }
                wsframe::encode_frame(&mut out, OP_PING, b"", None);
            }
        }
    };
    {
        let mut subs = lock(&shared.subs);
        subs.remove(&id);
        let n = subs.len();
        shared.count.send_replace(n);
    }
    // A kicked subscriber's socket is not being read: no close handshake, it is dropped.
    if let Some((code, reason)) = closing.filter(|_| !q.kick.is_cancelled()) {
        wsframe::encode_close(&mut out, code, &reason, None);
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let _ = wsframe::write_out(&mut io, &mut out).await;
            let _ = io.shutdown().await;
        })
        .await;
    }
}

// ---------------------------------------------------------------------------------------------
// Subscriber
// ---------------------------------------------------------------------------------------------

/// Settings of a [`PeerSub`].
#[derive(Clone)]
pub struct SubConfig {
    tls: Option<ClientTls>,
    relookup_interval: Duration,
    lookup_timeout: Duration,
    connect_timeout: Duration,
    reconnect_min: Duration,
    reconnect_max: Duration,
    buffer: usize,
    max_message_size: usize,
    max_publishers: usize,
    transport: TransportKind,
}

impl Default for SubConfig {
    fn default() -> Self {
        SubConfig {
            transport: TransportKind::Ws,
            tls: None,
            relookup_interval: Duration::from_secs(5),
            lookup_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(2),
            buffer: 4096,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            max_publishers: 100,
        }
    }
}

impl fmt::Debug for SubConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubConfig")
            .field("tls", &self.tls)
            .field("relookup_interval", &self.relookup_interval)
            .field("lookup_timeout", &self.lookup_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("reconnect_min", &self.reconnect_min)
            .field("reconnect_max", &self.reconnect_max)
            .field("buffer", &self.buffer)
            .field("max_message_size", &self.max_message_size)
            .field("max_publishers", &self.max_publishers)
            .field("transport", &self.transport)
            .finish()
    }
}

impl SubConfig {
    /// The wire: [`TransportKind::Ws`] (the default) or [`TransportKind::Zmq`] (a ZeroMQ SUB
    /// socket subscribed to everything; TLS does not apply). Other kinds fall back to WS.
    pub fn transport(mut self, kind: TransportKind) -> Self {
        self.transport = kind;
        self
    }

    /// Dial `wss://` with this TLS configuration (an extension). Default: plain.
    pub fn tls(mut self, tls: ClientTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// How often the name is looked up again to find new publishers (the Link's lookup cache is
    /// bypassed). Default is 5 s.
    pub fn relookup_interval(mut self, t: Duration) -> Self {
        self.relookup_interval = t.max(Duration::from_millis(10));
        self
    }

    /// Timeout of each lookup (the reference's 5 s). Default is 5 s.
    pub fn lookup_timeout(mut self, t: Duration) -> Self {
        self.lookup_timeout = t;
        self
    }

    /// Time allowed for connect + TLS + upgrade. Default is 5 s.
    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }

    /// Back-off between reconnect attempts to a publisher: starts at `min`, doubles up to `max`.
    /// Defaults are 100 ms and 2 s.
    pub fn reconnect_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.reconnect_min = min.max(Duration::from_millis(1));
        self.reconnect_max = max.max(self.reconnect_min);
        self
    }

    /// Messages buffered for the application. When full, sockets are not read, so TCP pushes back
    /// to the publishers (whose own policy then applies). Default is 4096.
    pub fn buffer(mut self, n: usize) -> Self {
        self.buffer = n.max(1);
        self
    }

    /// The largest message (its fragments together) accepted; a larger one closes that
    /// publisher's socket with 1009 (it is reconnected). Default is 16 MiB.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes.max(1024);
        self
    }

    /// Most publishers connected per subscription (a Grape lookup returns at most 100).
    /// Default is 100.
    pub fn max_publishers(mut self, n: usize) -> Self {
        self.max_publishers = n.max(1);
        self
    }
}

/// One message received from a publisher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubMessage {
    /// The publisher's `host:port`.
    pub publisher: Arc<str>,
    /// The message's bytes. Over WebSocket, a message that came in one frame shares the
    /// connection's read buffer (no copy): that buffer's memory (at least 8 KiB, holding the
    /// messages read with it) is freed once the subscription and every message from it let go.
    pub data: Bytes,
    /// True for a binary frame, false for a text frame (valid UTF-8).
    pub binary: bool,
}

impl SubMessage {
    /// The message as text: `Some` for text frames (and binary frames that are UTF-8).
    pub fn text(&self) -> Option<&str> {
        std::str::from_utf8(&self.data).ok()
    }
}

/// Where a subscription finds its publishers.
#[derive(Clone, Debug)]
enum Source {
    Link(Link),
    Fixed(Vec<String>),
}

/// Subscribes to publishers found through a [`Link`] (the reference's `PeerSub`).
#[derive(Clone, Debug)]
pub struct PeerSub {
    link: Link,
    config: SubConfig,
}

impl PeerSub {
    /// A subscriber that finds publishers with `link`.
    pub fn new(link: Link, config: SubConfig) -> PeerSub {
        PeerSub { link, config }
    }

    /// Subscribes to every publisher announcing `name`: looks it up, connects to each, delivers
    /// their messages through the returned [`Subscription`], reconnects to publishers that go
    /// away, and looks the name up again every `relookup_interval` to pick up new ones.
    /// Needs a tokio runtime.
    pub fn sub(&self, name: &str) -> Subscription {
        Subscription::start(Source::Link(self.link.clone()), name.to_string(), self.config.clone())
    }

    /// Subscribes to publishers at fixed `host:port` addresses, without a lookup.
    pub fn sub_to(dests: Vec<String>, config: SubConfig) -> Subscription {
        Subscription::start(Source::Fixed(dests), String::new(), config)
    }
}

struct SubShared {
    connected: Mutex<HashSet<Arc<str>>>,
    connected_tx: watch::Sender<usize>,
    lookup_error: Mutex<Option<Error>>,
    received: AtomicU64,
    connects: AtomicUsize,
}

impl SubShared {
    fn set_connected(&self, dest: &Arc<str>, on: bool) {
        let mut c = lock(&self.connected);
        if on {
            c.insert(dest.clone());
        } else {
            c.remove(dest);
        }
        self.connected_tx.send_replace(c.len());
    }
}

/// A live subscription: a stream of [`SubMessage`]s from every publisher of a name. Dropping it
/// (or [`Subscription::close`]) closes its sockets.
pub struct Subscription {
    rx: mpsc::Receiver<SubMessage>,
    shared: Arc<SubShared>,
    cancel: CancellationToken,
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription").field("publishers", &self.publishers()).finish_non_exhaustive()
    }
}

impl Subscription {
    fn start(source: Source, name: String, config: SubConfig) -> Subscription {
        let (tx, rx) = mpsc::channel(config.buffer);
        let (connected_tx, _) = watch::channel(0);
        let shared = Arc::new(SubShared {
            connected: Mutex::new(HashSet::new()),
            connected_tx,
            lookup_error: Mutex::new(None),
            received: AtomicU64::new(0),
            connects: AtomicUsize::new(0),
        });
        let cancel = CancellationToken::new();
        tokio::spawn(manage(source, name, config, tx, shared.clone(), cancel.clone()));
        Subscription { rx, shared, cancel }
    }

    /// The next message; `None` once the subscription is closed.
    pub async fn recv(&mut self) -> Option<SubMessage> {
        self.rx.recv().await
    }

    /// The next message, or a [`ErrorKind::Timeout`](crate::ErrorKind::Timeout) error after
    /// `timeout`.
    pub async fn recv_timeout(&mut self, timeout: Duration) -> Result<SubMessage> {
        match tokio::time::timeout(timeout, self.rx.recv()).await {
            Ok(Some(m)) => Ok(m),
            Ok(None) => Err(Error::new(crate::ErrorKind::Closed, "subscription closed")),
            Err(_) => Err(Error::timeout(format!("no message within {timeout:?}"))),
        }
    }

    /// A message if one is waiting.
    pub fn try_recv(&mut self) -> Option<SubMessage> {
        self.rx.try_recv().ok()
    }

    /// How many publishers are connected now.
    pub fn publishers(&self) -> usize {
        lock(&self.shared.connected).len()
    }

    /// How many successful connections (first connects and reconnects) were made so far.
    pub fn connects(&self) -> usize {
        self.shared.connects.load(Ordering::Relaxed)
    }

    /// Messages received so far.
    pub fn received(&self) -> u64 {
        self.shared.received.load(Ordering::Relaxed)
    }

    /// The error of the last failed lookup, if the last lookup failed (e.g. `ERR_GRAPE_LOOKUP_EMPTY`).
    pub fn lookup_error(&self) -> Option<Error> {
        lock(&self.shared.lookup_error).as_ref().map(|e| Error::new(e.kind(), e.message().to_string()))
    }

    /// Waits until at least `n` publishers are connected, or fails after `timeout`.
    pub async fn wait_publishers(&self, n: usize, timeout: Duration) -> Result<()> {
        let mut rx = self.shared.connected_tx.subscribe();
        match tokio::time::timeout(timeout, rx.wait_for(|c| *c >= n)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(Error::timeout(format!("fewer than {n} publishers after {timeout:?}"))),
        }
    }

    /// Closes every socket; `recv` then drains what was buffered and returns `None`.
    pub fn close(&self) {
        self.cancel.cancel();
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl futures_util::Stream for Subscription {
    type Item = SubMessage;

    fn poll_next(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<SubMessage>> {
        self.rx.poll_recv(cx)
    }
}

/// Keeps one connection task per publisher found; looks up again periodically.
async fn manage(
    source: Source,
    name: String,
    config: SubConfig,
    tx: mpsc::Sender<SubMessage>,
    shared: Arc<SubShared>,
    cancel: CancellationToken,
) {
    let mut tasks: HashMap<String, CancellationToken> = HashMap::new();
    loop {
        let found: Option<Vec<String>> = match &source {
            Source::Fixed(d) => Some(d.clone()),
            Source::Link(link) => {
                link.invalidate(&name);
                let r = tokio::select! {
                    r = tokio::time::timeout(config.lookup_timeout, link.lookup(&name)) => r,
                    _ = cancel.cancelled() => break,
                };
                match r {
                    Ok(Ok(d)) => {
                        *lock(&shared.lookup_error) = None;
                        Some(d)
                    }
                    Ok(Err(e)) => {
                        tracing::debug!("sub {name}: lookup failed: {e}");
                        *lock(&shared.lookup_error) = Some(e);
                        None
                    }
                    Err(_) => {
                        *lock(&shared.lookup_error) = Some(Error::timeout("lookup timed out"));
                        None
                    }
                }
            }
        };
        if let Some(dests) = found {
            let current: HashSet<&String> = dests.iter().collect();
            // Forget publishers no longer announced, unless connected (they still work).
            let connected = lock(&shared.connected).clone();
            tasks.retain(|d, t| {
                let keep = current.contains(d) || connected.contains(d.as_str());
                if !keep {
                    t.cancel();
                }
                keep
            });
            for d in dests {
                if tasks.len() >= config.max_publishers {
                    break;
                }
                if tasks.contains_key(&d) {
                    continue;
                }
                let token = cancel.child_token();
                tasks.insert(d.clone(), token.clone());
                tokio::spawn(publisher_conn(Arc::from(d.as_str()), config.clone(), tx.clone(), shared.clone(), token));
            }
        }
        if matches!(source, Source::Fixed(_)) {
            // Fixed publishers: nothing to look up again.
            cancel.cancelled().await;
            break;
        }
        let wait = if tasks.is_empty() { config.relookup_interval.min(Duration::from_secs(1)) } else { config.relookup_interval };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = cancel.cancelled() => break,
        }
    }
    for t in tasks.values() {
        t.cancel();
    }
}

/// Connects to one publisher and forwards its frames; reconnects with back-off until cancelled.
async fn publisher_conn(
    dest: Arc<str>,
    config: SubConfig,
    tx: mpsc::Sender<SubMessage>,
    shared: Arc<SubShared>,
    cancel: CancellationToken,
) {
    if config.transport == TransportKind::Zmq {
        return zmq::publisher_conn(dest, config, tx, shared, cancel).await;
    }
    let mut backoff = config.reconnect_min;
    loop {
        let dialled = tokio::select! {
            r = dial_raw(&dest, config.tls.as_ref(), config.connect_timeout) => r,
            _ = cancel.cancelled() => return,
        };
        match dialled {
            Ok((io, leftover)) => {
                backoff = config.reconnect_min;
                shared.connects.fetch_add(1, Ordering::Relaxed);
                shared.set_connected(&dest, true);
                let frames = FrameReader::new(Side::Client, config.max_message_size, leftover);
                let ended = read_publisher(io, frames, &dest, &tx, &shared, &cancel).await;
                shared.set_connected(&dest, false);
                if ended == Ended::Stop {
                    return;
                }
                tracing::debug!("sub: publisher {dest} went away; reconnecting");
            }
            Err(e) => tracing::debug!("sub: cannot reach publisher {dest}: {e}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = cancel.cancelled() => return,
        }
        backoff = backoff.saturating_mul(2).min(config.reconnect_max);
    }
}

/// How a connection to a publisher ended.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    /// The publisher went away or broke the protocol: reconnect.
    Lost,
    /// The subscription was closed or dropped: stop.
    Stop,
}

/// Reads one publisher's socket and forwards its messages until it closes, fails or breaks the
/// protocol (answered with the close code that says why), or the subscription ends (the socket is
/// closed with 1000). Pings are answered; while the application's buffer is full the socket is not
/// read, so TCP pushes back to the publisher.
async fn read_publisher(
    mut io: NetStream,
    mut frames: FrameReader,
    dest: &Arc<str>,
    tx: &mpsc::Sender<SubMessage>,
    shared: &SubShared,
    cancel: &CancellationToken,
) -> Ended {
    let cancelled = cancel.cancelled();
    tokio::pin!(cancelled);
    let mut out: Vec<u8> = Vec::new();
    let (closing, ended): ((u16, String), Ended) = loop {
        let (data, binary) = match frames.next_owned() {
            // The message's bytes are those of the read buffer, not a copy.
            Ok(Some(Owned::Data { bytes, text })) => (bytes, !text),
            Ok(Some(Owned::Ping(p))) => {
                wsframe::encode_frame(&mut out, OP_PONG, p, Some(wsframe::mask_key()));
                continue;
            }
            Ok(Some(Owned::Close(code))) => break ((code.unwrap_or(CLOSE_NORMAL), String::new()), Ended::Lost),
            Ok(None) => {
                // Everything buffered is handled: send the pongs, then read more.
                if !out.is_empty()
                    && !matches!(tokio::time::timeout(WRITE_TIMEOUT, wsframe::write_out(&mut io, &mut out)).await, Ok(Ok(())))
                {
                    return Ended::Lost;
                }
                tokio::select! {
                    r = frames.fill(&mut io) => match r {
                        Ok(0) | Err(_) => return Ended::Lost,
                        Ok(_) => continue,
                    },
                    () = &mut cancelled => break ((CLOSE_NORMAL, String::new()), Ended::Stop),
                }
            }
            Err(e) => {
                tracing::debug!("sub: closing publisher {dest}: {e}");
                break ((e.close_code(), e.to_string()), Ended::Lost);
            }
        };
        shared.received.fetch_add(1, Ordering::Relaxed);
        let m = SubMessage { publisher: dest.clone(), data, binary };
        match tx.try_send(m) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Closed(_)) => break ((CLOSE_NORMAL, String::new()), Ended::Stop),
            Err(mpsc::error::TrySendError::Full(m)) => tokio::select! {
                // The application's buffer is full: wait for room, reading nothing meanwhile.
                r = tx.send(m) => if r.is_err() {
                    break ((CLOSE_NORMAL, String::new()), Ended::Stop);
                },
                () = &mut cancelled => break ((CLOSE_NORMAL, String::new()), Ended::Stop),
            },
        }
    };
    wsframe::encode_close(&mut out, closing.0, &closing.1, Some(wsframe::mask_key()));
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = wsframe::write_out(&mut io, &mut out).await;
        let _ = io.shutdown().await;
    })
    .await;
    ended
}
