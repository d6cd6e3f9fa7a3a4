//! Limits that keep a server answering under hostile load, shared by every server here (Grape
//! API, HTTP, WS, PUB/SUB): connections per source address, deadlines on reading HTTP request
//! bodies, idle connections, a server-wide byte budget for request bodies in flight, and refusals
//! counted and logged at a bounded rate.

use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use tokio::time::Instant;

/// How many connections a server holds, in all and per source IP address.
///
/// A connection over either bound is accepted and closed at once (counted as a refusal), so that a
/// full server answers quickly instead of leaving clients in the listen backlog. Once the server
/// holds three quarters of `max_connections`, a source holding `max_per_ip / 16` connections or
/// more (at least 1) gets no more: the last quarter is kept for sources with few connections, so
/// that a handful of sources at their per-IP cap cannot fill the server.
///
/// Default: 10,000 in all, 2,000 per address (five sources at their cap are needed to reach the
/// reserve; above 7,500, a source holding 125 or more gets no more).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    /// Most connections served at once.
    pub max_connections: usize,
    /// Most connections one source IP address holds at once.
    pub max_per_ip: usize,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits { max_connections: 10_000, max_per_ip: 2_000 }
    }
}

/// Refusals of one server: counted, and logged at most once a second (with how many were refused
/// since the last line), so that a flood does not flood the log too.
#[derive(Debug, Default)]
pub struct Refusals {
    count: AtomicU64,
    logged: AtomicU64,
    /// Milliseconds since `EPOCH` of the last log line.
    last_log_ms: AtomicU64,
}

static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

fn now_ms() -> u64 {
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(Instant::now().saturating_duration_since(epoch).as_millis()).unwrap_or(u64::MAX)
}

impl Refusals {
    /// Counts one refusal of `what` (a short reason) from `source`.
    pub fn refuse(&self, what: &'static str, source: Option<IpAddr>) {
        let n = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        let now = now_ms();
        let last = self.last_log_ms.load(Ordering::Relaxed);
        if (last == 0 || now.saturating_sub(last) >= 1000)
            && self.last_log_ms.compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            let since = n - self.logged.swap(n, Ordering::Relaxed);
            tracing::warn!(reason = what, ?source, refused_since_last_line = since, refused_total = n, "refused");
        }
    }

    /// How many were refused since the server started.
    pub fn total(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

/// The connections a server holds per source address, with [`ConnLimits`] applied.
#[derive(Debug)]
pub(crate) struct Sources {
    limits: ConnLimits,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    total: AtomicUsize,
    pub(crate) refusals: Arc<Refusals>,
}

impl Sources {
    pub(crate) fn new(limits: ConnLimits, refusals: Arc<Refusals>) -> Arc<Sources> {
        Arc::new(Sources { limits, per_ip: Mutex::default(), total: AtomicUsize::new(0), refusals })
    }

    /// A slot for a connection from `ip`, or `None` (counted as a refusal) when a bound is reached.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<SourceSlot> {
        let max = self.limits.max_connections.max(1);
        let per_ip = self.limits.max_per_ip.max(1);
        let refused = {
            let mut map = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
            let total = self.total.load(Ordering::Acquire);
            let held = map.get(&ip).copied().unwrap_or(0);
            let reserve_from = max - max / 4;
            let why = if total >= max {
                Some("the server holds its most connections")
            } else if held >= per_ip {
                Some("the source holds its most connections")
            } else if total >= reserve_from && held >= (per_ip / 16).max(1) {
                Some("the last connections are kept for sources with few")
            } else {
                None
            };
            if why.is_none() {
                *map.entry(ip).or_insert(0) += 1;
                self.total.fetch_add(1, Ordering::AcqRel);
            }
            why
        };
        match refused {
            Some(why) => {
                self.refusals.refuse(why, Some(ip));
                None
            }
            None => Some(SourceSlot { sources: self.clone(), ip }),
        }
    }
}

/// A connection counted against its source until dropped.
#[derive(Debug)]
pub(crate) struct SourceSlot {
    sources: Arc<Sources>,
    ip: IpAddr,
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut map = self.sources.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
        self.sources.total.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Deadlines on reading an HTTP request: its head, its body, and an idle keep-alive connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadDeadlines {
    /// The whole request head must arrive within this time of the connection starting to wait
    /// for it (hyper's header read timeout).
    pub header: Duration,
    /// The whole body must arrive within this time of its head.
    pub body: Duration,
    /// After `body_grace`, the body must have come at least this fast on average, in bytes per
    /// second (0: no minimum rate).
    pub body_min_rate: u64,
    /// The time a body has before its minimum rate is checked.
    pub body_grace: Duration,
    /// A keep-alive connection with no request running that receives nothing for this long is
    /// closed.
    pub idle: Duration,
}

impl Default for ReadDeadlines {
    fn default() -> Self {
        ReadDeadlines {
            header: Duration::from_secs(10),
            body: Duration::from_secs(60),
            body_min_rate: 4096,
            body_grace: Duration::from_secs(5),
            // Node's http servers close idle keep-alive connections after 5 s, and our clients
            // keep pooled ones 4 s.
            idle: Duration::from_secs(5),
        }
    }
}

/// Why a request body could not be read.
#[derive(Debug)]
pub(crate) enum BodyError {
    /// Over the size limit (413).
    TooLarge,
    /// The server-wide budget of body bytes in flight is spent (503).
    Busy,
    /// It did not arrive in time or too slowly (408).
    TimedOut,
    /// The connection failed while reading it.
    Io(String),
}

/// A server-wide budget of request-body bytes held at once (buffered bodies waiting for or in
/// their handler).
#[derive(Debug)]
pub(crate) struct ByteBudget {
    sem: Arc<tokio::sync::Semaphore>,
    limit: usize,
}

impl ByteBudget {
    pub(crate) fn new(bytes: usize) -> ByteBudget {
        let limit = bytes.clamp(1, tokio::sync::Semaphore::MAX_PERMITS).min(u32::MAX as usize);
        ByteBudget { sem: Arc::new(tokio::sync::Semaphore::new(limit)), limit }
    }

    fn take(&self, n: usize) -> Option<tokio::sync::OwnedSemaphorePermit> {
        if n > self.limit {
            return None;
        }
        self.sem.clone().try_acquire_many_owned(u32::try_from(n).ok()?).ok()
    }
}

/// Reads a whole body: at most `max` bytes, within `deadlines`, holding `budget` bytes for what it
/// buffered (given back when the returned permit is dropped).
pub(crate) async fn read_body<B>(
    mut body: B,
    declared: Option<u64>,
    max: usize,
    deadlines: &ReadDeadlines,
    budget: Option<&ByteBudget>,
) -> Result<(Bytes, Option<tokio::sync::OwnedSemaphorePermit>), BodyError>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    if declared.is_some_and(|n| n > max as u64) {
        return Err(BodyError::TooLarge);
    }
    let start = Instant::now();
    let hard = start + deadlines.body;
    // A declared length is reserved at once; a chunked body reserves as it comes.
    let mut permit = match (budget, declared) {
        (Some(b), Some(n)) if n > 0 => Some(b.take(n as usize).ok_or(BodyError::Busy)?),
        _ => None,
    };
    // A declared length held in the budget is allocated once (no doubling, no copies while it
    // grows); without a budget a declared length is not trusted beyond 64 KiB.
    let first = match (&permit, declared) {
        (Some(_), Some(n)) => n as usize,
        _ => declared.map_or(256, |n| n as usize).min(max).min(64 * 1024),
    };
    let mut buf = BytesMut::with_capacity(first);
    loop {
        let allowed = match deadlines.body_min_rate {
            0 => deadlines.body,
            rate => deadlines.body_grace + Duration::from_secs_f64(buf.len() as f64 / rate as f64),
        };
        let deadline = hard.min(start + allowed);
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return Err(BodyError::TimedOut),
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(BodyError::Io(e.to_string())),
            Ok(Some(Ok(f))) => f,
        };
        let Ok(data) = frame.into_data() else { continue };
        let len = buf.len().saturating_add(data.len());
        if len > max {
            return Err(BodyError::TooLarge);
        }
        if let Some(b) = budget {
            let held = permit.as_ref().map_or(0, |p| p.num_permits());
            if len > held {
                let more = b.take(len - held).ok_or(BodyError::Busy)?;
                match permit.as_mut() {
                    Some(p) => p.merge(more),
                    None => permit = Some(more),
                }
            }
        }
        buf.extend_from_slice(&data);
    }
    Ok((buf.freeze(), permit))
}

/// A stream of body chunks.
pub(crate) type ChunkStream = Pin<Box<dyn futures_util::Stream<Item = std::result::Result<Bytes, std::io::Error>> + Send + 'static>>;

/// A streamed request body (the HTTP server's `_gr` stream path) under the same deadlines as
/// [`read_body`]: the whole body within `deadlines.body`, and after `body_grace` at least
/// `body_min_rate` bytes per second on average. A late or slow body ends with a `TimedOut` I/O
/// error, which the stream handler sees as its body failing.
/// The stream is spelled out (it is `http::BodyStream`) so that limits stay below the HTTP
/// transport that uses them.
pub(crate) fn deadline_body(body: ChunkStream, deadlines: ReadDeadlines) -> ChunkStream {
    use futures_util::StreamExt;
    let start = Instant::now();
    let state = Some((body, 0usize));
    Box::pin(futures_util::stream::unfold(state, move |state| async move {
        let (mut body, got) = state?;
        let allowed = match deadlines.body_min_rate {
            0 => deadlines.body,
            rate => deadlines.body_grace + Duration::from_secs_f64(got as f64 / rate as f64),
        };
        let deadline = (start + deadlines.body).min(start + allowed);
        match tokio::time::timeout_at(deadline, body.next()).await {
            Err(_) => {
                let e = std::io::Error::new(std::io::ErrorKind::TimedOut, "the request body did not arrive in time (read deadline)");
                Some((Err(e), None))
            }
            Ok(None) => None,
            Ok(Some(Ok(chunk))) => {
                let got = got.saturating_add(chunk.len());
                Some((Ok(chunk), Some((body, got))))
            }
            Ok(Some(Err(e))) => Some((Err(e), None)),
        }
    }))
}

/// What a connection did last: when it last received bytes, and how many requests it is
/// running (an idle connection has none and received nothing for a while).
#[derive(Debug)]
pub(crate) struct Activity {
    last_read_ms: AtomicU64,
    running: AtomicUsize,
}

impl Activity {
    pub(crate) fn new() -> Arc<Activity> {
        Arc::new(Activity { last_read_ms: AtomicU64::new(now_ms()), running: AtomicUsize::new(0) })
    }

    /// Counts a request as running until the guard is dropped.
    pub(crate) fn running(self: &Arc<Self>) -> Running {
        self.running.fetch_add(1, Ordering::AcqRel);
        Running(self.clone())
    }

    /// When the connection, idle since its last read, reaches `idle`; `None` while a request
    /// runs (check again after another `idle`).
    pub(crate) fn idle_deadline(&self, idle: Duration) -> Option<Instant> {
        if self.running.load(Ordering::Acquire) > 0 {
            return None;
        }
        let epoch = *EPOCH.get_or_init(Instant::now);
        Some(epoch + Duration::from_millis(self.last_read_ms.load(Ordering::Relaxed)) + idle)
    }
}

/// A request running on a connection (see [`Activity::running`]).
pub(crate) struct Running(Arc<Activity>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.last_read_ms.store(now_ms(), Ordering::Relaxed);
        self.0.running.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An I/O stream that records its reads in an [`Activity`].
pub(crate) struct Watched<I> {
    io: I,
    activity: Arc<Activity>,
}

impl<I> Watched<I> {
    pub(crate) fn new(io: I, activity: Arc<Activity>) -> Watched<I> {
        Watched { io, activity }
    }
}

impl<I: hyper::rt::Read + Unpin> hyper::rt::Read for Watched<I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: hyper::rt::ReadBufCursor<'_>) -> Poll<std::io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) {
            self.activity.last_read_ms.store(now_ms(), Ordering::Relaxed);
        }
        r
    }
}

impl<I: hyper::rt::Write + Unpin> hyper::rt::Write for Watched<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[std::io::IoSlice<'_>]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Resolves when the connection of `activity` has been idle for `idle` (no request running,
/// nothing received). Never resolves for a zero `idle`.
pub(crate) async fn idle_for(activity: &Activity, idle: Duration) {
    if idle.is_zero() {
        return std::future::pending().await;
    }
    loop {
        match activity.idle_deadline(idle) {
            Some(at) if at <= Instant::now() => return,
            Some(at) => tokio::time::sleep_until(at).await,
            None => tokio::time::sleep(idle).await,
        }
    }
}

/// Liveness of a WebSocket connection: a socket that sends nothing for `ping_interval` gets a
/// ping; if nothing at all comes back within `pong_timeout` it is closed. A socket that sends no
/// request for `idle` is closed with 1000 (servers of requests only; zero: never). Zero
/// `ping_interval`: no pings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WsLiveness {
    /// Silence after which the server pings.
    pub ping_interval: Duration,
    /// Time the client has to answer a ping (any bytes will do).
    pub pong_timeout: Duration,
    /// Time without a request after which the socket is closed.
    pub idle: Duration,
}

impl Default for WsLiveness {
    fn default() -> Self {
        // Our clients close idle sockets after 120 s, the reference's after 120 s as well.
        WsLiveness { ping_interval: Duration::from_secs(30), pong_timeout: Duration::from_secs(10), idle: Duration::from_secs(300) }
    }
}

/// What a liveness check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Send a ping now.
    Ping,
    /// A ping went unanswered: close.
    Dead,
    /// No request for the idle time: close.
    Idle,
}

/// The liveness timer of one socket (see [`WsLiveness`]). Costs nothing per message: the socket
/// counts what it reads and the requests it handles, and the timer compares the counts when it
/// fires.
pub(crate) struct Liveness {
    cfg: WsLiveness,
    sleep: Pin<Box<tokio::time::Sleep>>,
    reads: u64,
    requests: u64,
    last_request: Instant,
    pinged: bool,
}

impl Liveness {
    pub(crate) fn new(cfg: WsLiveness) -> Liveness {
        let now = Instant::now();
        let mut l =
            Liveness { cfg, sleep: Box::pin(tokio::time::sleep_until(now)), reads: 0, requests: 0, last_request: now, pinged: false };
        let next = l.next_check(now);
        l.sleep.as_mut().reset(next);
        l
    }

    fn next_check(&self, now: Instant) -> Instant {
        let far = now + Duration::from_secs(86_400 * 365);
        let ping = if self.cfg.ping_interval.is_zero() { far } else { now + self.cfg.ping_interval };
        let idle = if self.cfg.idle.is_zero() { far } else { self.last_request + self.cfg.idle };
        ping.min(idle)
    }

    /// Resolves when the socket must ping or be closed, given how many reads and requests it has
    /// seen in all so far. Cancel-safe.
    pub(crate) async fn check(&mut self, reads: u64, requests: u64) -> Verdict {
        if self.cfg.ping_interval.is_zero() && self.cfg.idle.is_zero() {
            return std::future::pending().await;
        }
        loop {
            self.sleep.as_mut().await;
            let now = Instant::now();
            if requests != self.requests {
                self.requests = requests;
                self.last_request = now;
            }
            if !self.cfg.idle.is_zero() && now.saturating_duration_since(self.last_request) >= self.cfg.idle {
                return Verdict::Idle;
            }
            if reads != self.reads || self.cfg.ping_interval.is_zero() {
                self.reads = reads;
                self.pinged = false;
                let next = self.next_check(now);
                self.sleep.as_mut().reset(next);
                continue;
            }
            if self.pinged {
                return Verdict::Dead;
            }
            self.pinged = true;
            let next = (now + self.cfg.pong_timeout).min(self.next_check(now));
            self.sleep.as_mut().reset(next);
            return Verdict::Ping;
        }
    }
}
