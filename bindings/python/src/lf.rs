//! Plain WebSocket sockets of a plain handler's server, read and answered by the threads that
//! run the handler (leader/followers).
//!
//! Why: through the core's threads every request crosses from an I/O thread to a handler thread
//! (a wake-up of a sleeping thread) and every reply crosses back (another), which on a small
//! machine costs more than the round trip itself. Here the core accepts and upgrades the socket
//! and hands it over ([`grenache::transport::ws::handoff`]); from then on the server's own
//! threads take turns waiting for its sockets: the thread that owns the poller waits in it; when
//! sockets are ready it reads them, decodes the frames with the core's decoder, runs the handler
//! for the requests itself (through the server's [`Pool`], whose standby thread takes the queue
//! over when a handler blocks) and comes back to the poller. A reply given during the handler
//! is written by that thread with a plain `write(2)`. A watchdog thread gives the poller to
//! another thread when its owner has been away for [`STALL`] (a handler that blocks), so the
//! other sockets are still read. A sequential request thus wakes one thread, the one the kernel
//! wakes when its bytes arrive. A reply given later, from any thread, is written by a task of
//! the runtime once it comes. Once a reply went out, the thread at the poller polls it for up to
//! the asyncio loops' budget before it sleeps (`GRENACHE_PYTHON_POLL_US`, 50 µs by default on two
//! CPUs or more; the core's `loop_spin` policy), so that the next request of a sequential
//! client finds it awake.
//!
//! Kept from the core's WS server: the envelope and reply encoding, `ERR_NO_REPLY` for a reply
//! dropped unanswered, the 16 MiB message limit and the close codes of malformed frames, pings
//! answered, `max_connections`, `max_connections_per_ip` and `ws_idle_timeout_ms`, graceful
//! `shutdown` (sockets close with 4001 once answered) and `close` (1001). A peer that does not
//! read its replies is closed once 64 MiB wait for it. Not used with a `reply_timeout` (the
//! core's path keeps that timer).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use grenache::rpc::{ReplyReceiver, Request, RequestInfo, WireReply};
use grenache::transport::TransportKind;
use grenache::transport::ws::handoff::{self, Decoder, HandedOff, Message, Pumped};
use mio::{Events, Interest, Poll, Registry, Token, Waker};
use pyo3::prelude::*;

use crate::{FINALIZING, IN_PYTHON, Pool, embed, lock};
use grenache::transport::loop_spin;

/// Polls before sleeping at a poller, and those that found it ready, over every server of
/// the process (`_native._lf_spin_stats`).
static SPINS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static HITS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// `(polls, hits)` of the threads of plain handlers' servers before they sleep at their poller.
#[pyfunction]
pub(crate) fn _lf_spin_stats() -> (u64, u64) {
    (SPINS.load(Ordering::Relaxed), HITS.load(Ordering::Relaxed))
}

/// Largest message read (the core's default).
const MAX_MESSAGE: usize = grenache::transport::ws::DEFAULT_MAX_MESSAGE_SIZE;
/// Bytes queued for a peer that does not read before its socket is closed.
const MAX_OUTBOX: usize = 64 << 20;
/// Bytes read from one socket per readiness event before other sockets are read.
const READ_BUDGET: usize = 1 << 20;
/// Most threads taking turns at the poller.
const MAX_THREADS: usize = 64;
/// Longest wait in the poller: sweeps for idle sockets happen at this pace.
const TICK: Duration = Duration::from_millis(100);
/// How long the poller's owner may be away running handlers before the watchdog gives the
/// poller to another thread (the handler pool's own stall time).
const STALL: Duration = Duration::from_millis(5);
/// How often the watchdog looks while polls find work.
const WATCH: Duration = Duration::from_millis(2);
/// How long after the last work the watchdog keeps looking.
const ACTIVE: Duration = Duration::from_secs(1);
/// A thread that found nothing to do for this long ends (two stay).
const IDLE_EXIT: Duration = Duration::from_secs(30);
/// How long closing a socket may block to write what is queued (a peer that reads slowly).
const CLOSE_LINGER: Duration = Duration::from_millis(200);
/// Requests read from one socket and not answered yet before it is read no more until some
/// are (the core's `max_in_flight_per_connection` default).
const MAX_IN_FLIGHT: usize = 1024;
/// The poller's token for the waker.
const WAKE: Token = Token(usize::MAX);

/// What a request read here carries to the handler's thread: where its reply goes. Dropped
/// without being delivered (the pool was closed), it answers `ERR_NO_REPLY`.
pub(crate) struct Sink(Option<(ReplyReceiver, Arc<Conn>, serde_json::Value)>);

impl Sink {
    /// Called right after the handler ran: queues a reply given meanwhile in `delivered`,
    /// written by [`flush_delivered`] (once per socket for the replies of a run of requests);
    /// one given later is written by a task of the runtime when it comes.
    pub(crate) fn deliver(mut self, delivered: &Delivered) {
        use tokio::sync::oneshot::error::TryRecvError;
        let Some((mut rx, conn, rid)) = self.0.take() else { return };
        let body = match rx.try_recv() {
            Ok(body) => body,
            Err(TryRecvError::Closed) => Err(grenache::rpc::ERR_NO_REPLY.to_string()),
            Err(TryRecvError::Empty) => {
                match conn.lf.upgrade() {
                    Some(lf) => lf.rt.spawn(async move {
                        let body = grenache::rpc::await_reply(rx, None).await;
                        conn.reply(&rid, &body);
                    }),
                    None => conn.reply(&rid, &Err(grenache::rpc::ERR_NO_REPLY.to_string())),
                }
                return;
            }
        };
        if conn.queue(&rid, &body) && !std::mem::replace(&mut lock(&conn.state).dirty, true) {
            lock(delivered).push(conn);
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        if let Some((_, conn, rid)) = self.0.take() {
            conn.reply(&rid, &Err(grenache::rpc::ERR_NO_REPLY.to_string()));
        }
    }
}

/// Sockets with replies queued by [`Sink::deliver`] and not written yet (one list per pool).
pub(crate) type Delivered = Mutex<Vec<Arc<Conn>>>;

/// Writes the replies [`Sink::deliver`] queued: one write per socket.
pub(crate) fn flush_delivered(delivered: &Delivered) {
    let conns = std::mem::take(&mut *lock(delivered));
    for c in conns {
        c.write_queued();
    }
}

/// One request for the [`Pool`].
pub(crate) type Job = (Request, grenache::rpc::Reply, Option<Sink>);

struct ConnState {
    stream: Option<mio::net::TcpStream>,
    decoder: Decoder,
    out: Vec<u8>,
    /// Waiting for writability (the kernel buffer was full).
    blocked: bool,
    /// Replies queued in a pool's [`Delivered`] list.
    dirty: bool,
    /// Nothing more is read or sent.
    ended: bool,
    /// Shutting down: nothing more is read; closed once `in_flight` reaches 0.
    draining: bool,
    close_sent: bool,
    in_flight: usize,
    /// Reading paused at [`MAX_IN_FLIGHT`].
    paused: bool,
    last_request: Instant,
}

/// A socket of the server.
pub(crate) struct Conn {
    token: Token,
    ip: IpAddr,
    remote: std::net::SocketAddr,
    state: Mutex<ConnState>,
    lf: Weak<Lf>,
}

impl Conn {
    /// Queues the reply to `rid` and writes what is queued.
    fn reply(self: &Arc<Self>, rid: &serde_json::Value, body: &WireReply) {
        if self.queue(rid, body) {
            self.write_queued();
        }
    }

    /// Queues the reply to `rid`; false when nothing is to be written (the socket ended).
    fn queue(self: &Arc<Self>, rid: &serde_json::Value, body: &WireReply) -> bool {
        let mut st = lock(&self.state);
        st.in_flight = st.in_flight.saturating_sub(1);
        if st.stream.is_none() || st.ended {
            return false;
        }
        handoff::encode_reply(&mut st.out, rid, body, false);
        if st.out.len() > MAX_OUTBOX {
            // The peer does not read its replies.
            st.out.clear();
            st.ended = true;
            drop(st);
            self.finish(None);
            return false;
        }
        true
    }

    /// Writes the queued replies; closes a draining socket that answered its last request,
    /// and resumes reading a paused one.
    fn write_queued(self: &Arc<Self>) {
        let mut st = lock(&self.state);
        st.dirty = false;
        let resume = st.paused && st.in_flight < MAX_IN_FLIGHT / 2;
        self.flush(&mut st);
        let drained = st.draining && st.in_flight == 0 && st.out.is_empty();
        drop(st);
        if drained {
            self.finish(Some(handoff::CLOSE_DRAINED));
        } else if resume && let Some(lf) = self.lf.upgrade() {
            lock(&self.state).paused = false;
            lf.wake_for(self);
        }
    }

    /// Writes what is queued, until the socket would block (then watched for writability).
    fn flush(self: &Arc<Self>, st: &mut ConnState) {
        let Some(stream) = st.stream.as_mut() else { return };
        let had = !st.out.is_empty();
        if handoff::write_queued(&mut &*stream, &mut st.out) == handoff::Written::Failed {
            st.out.clear();
            st.ended = true;
            let _ = stream.shutdown(std::net::Shutdown::Both);
            return;
        }
        if had {
            // A reply went out: the next request may follow within a round trip.
            loop_spin::wrote();
        }
        let want = !st.out.is_empty();
        if want != st.blocked {
            st.blocked = want;
            if let Some(lf) = self.lf.upgrade() {
                let interest = if want { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE };
                let _ = lf.registry.reregister(stream, self.token, interest);
            }
        }
    }

    /// Reads what came (up to a budget) and turns each request into a job; false when the
    /// socket ended.
    fn read(self: &Arc<Self>, jobs: &mut Vec<Job>) -> bool {
        let mut st = lock(&self.state);
        let st = &mut *st;
        if st.ended {
            return false;
        }
        if st.draining || st.paused {
            return true;
        }
        let Some(stream) = st.stream.as_mut() else { return false };
        let mut counted = Counted { stream: &*stream, n: 0 };
        let mut read = 0;
        let pumped = st.decoder.pump(&mut counted, READ_BUDGET, false, &mut st.out, |m| {
            let body = match m {
                Message::Text(t) => t.as_bytes(),
                Message::Binary(b) => b,
                _ => return,
            };
            // A malformed envelope is dropped, as the core's WS server drops it.
            let Ok(d) = grenache::rpc::envelope::decode_request(body) else { return };
            let (reply, rx) = grenache::rpc::Reply::new(d.rid.clone());
            let info = RequestInfo { transport: TransportKind::Ws, remote_addr: Some(self.remote), ..Default::default() };
            let request = Request { rid: d.rid.clone(), key: d.key, payload: d.payload, info };
            jobs.push((request, reply, Some(Sink(Some((rx, Arc::clone(self), d.rid))))));
            read += 1;
        });
        // The poller reports a socket once per arrival (edge-triggered): one left unread at the
        // budget is read again at the next turn.
        let more = matches!(pumped, Pumped::Open) && counted.n >= READ_BUDGET;
        let ended = match pumped {
            Pumped::Open => false,
            Pumped::Ended(_) => true,
            Pumped::PeerClosed(_) | Pumped::Violation(_) => {
                st.close_sent = true;
                true
            }
        };
        if read > 0 {
            st.in_flight += read;
            st.last_request = Instant::now();
        }
        if st.in_flight >= MAX_IN_FLIGHT {
            st.paused = true;
        }
        // Pongs and close frames go out now.
        if !st.out.is_empty() {
            self.flush(st);
        }
        if ended {
            st.ended = true;
        } else if more && let Some(lf) = self.lf.upgrade() {
            lf.wake_for(self);
        }
        !ended
    }

    /// Ends the socket: sends a close frame with `code` (unless one was sent), writes what is
    /// queued (waiting at most [`CLOSE_LINGER`]) and closes it; forgets it in its server.
    fn finish(self: &Arc<Self>, code: Option<u16>) {
        let stream = {
            let mut st = lock(&self.state);
            let st = &mut *st;
            st.ended = true;
            handoff::take_to_close(&mut st.stream, &mut st.out, &mut st.close_sent, code)
        };
        if let Some(lf) = self.lf.upgrade() {
            lf.forget(self);
        }
        if let Some((mut s, out)) = stream {
            if let Some(lf) = self.lf.upgrade() {
                let _ = lf.registry.deregister(&mut s);
            }
            handoff::close_after(s.into(), &out, CLOSE_LINGER);
        }
    }
}

/// A socket's reads, counted.
struct Counted<'a> {
    stream: &'a mio::net::TcpStream,
    n: usize,
}

impl std::io::Read for Counted<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = std::io::Read::read(&mut self.stream, buf)?;
        self.n += n;
        Ok(n)
    }
}

#[derive(Default)]
struct Conns {
    by_token: HashMap<usize, Arc<Conn>>,
    per_ip: HashMap<IpAddr, usize>,
    next: usize,
}

impl Conns {
    /// One socket of `ip` fewer.
    fn release(&mut self, ip: IpAddr) {
        match self.per_ip.get_mut(&ip) {
            Some(n) if *n > 1 => *n -= 1,
            _ => {
                self.per_ip.remove(&ip);
            }
        }
    }
}

struct Threads {
    /// Threads alive (the watchdog not counted).
    alive: usize,
    /// Threads waiting for their turn at the poller.
    waiting: usize,
    /// The poller has an owner: a thread polling, or one that left it to run handlers and comes
    /// back to it (`busy_since`).
    owned: bool,
    /// Bumped each time the watchdog takes the poller from a busy owner.
    epoch: u64,
    /// When the owner left the poller to do I/O and run handlers.
    busy_since: Option<Instant>,
    /// When a poll last found something.
    last_activity: Instant,
    /// The watchdog sleeps until woken (nothing happened for a while).
    watchdog_idle: bool,
    watchdog: bool,
    closed: bool,
    draining: bool,
}

/// The limits kept on the sockets (the core's names).
#[derive(Clone, Copy)]
pub(crate) struct LfLimits {
    pub(crate) max_connections: usize,
    pub(crate) max_connections_per_ip: usize,
    pub(crate) idle: Duration,
}

/// The sockets of one server and the threads that take turns at their poller.
pub(crate) struct Lf {
    poller: Mutex<(Poll, Events)>,
    registry: Registry,
    waker: Waker,
    conns: Mutex<Conns>,
    incoming: Mutex<Vec<HandedOff>>,
    /// Sockets whose reading resumes (their in-flight requests fell under the bound).
    resumed: Mutex<Vec<Arc<Conn>>>,
    threads: Mutex<Threads>,
    /// Threads waiting for their turn at the poller.
    turn: Condvar,
    /// The watchdog's sleep.
    watch: Condvar,
    /// Signalled when a socket ends (for a draining shutdown).
    ended: Condvar,
    pool: Arc<Pool>,
    rt: embed::Runtime,
    limits: LfLimits,
    closed: AtomicBool,
    last_sweep: Mutex<Instant>,
}

impl Lf {
    pub(crate) fn new(pool: Arc<Pool>, rt: embed::Runtime, limits: LfLimits) -> std::io::Result<Arc<Lf>> {
        let poll = Poll::new()?;
        let registry = poll.registry().try_clone()?;
        let waker = Waker::new(poll.registry(), WAKE)?;
        let lf = Arc::new(Lf {
            poller: Mutex::new((poll, Events::with_capacity(64))),
            registry,
            waker,
            conns: Mutex::default(),
            incoming: Mutex::default(),
            resumed: Mutex::default(),
            threads: Mutex::new(Threads {
                alive: 0,
                waiting: 0,
                owned: false,
                epoch: 0,
                busy_since: None,
                last_activity: Instant::now(),
                watchdog_idle: true,
                watchdog: false,
                closed: false,
                draining: false,
            }),
            turn: Condvar::new(),
            watch: Condvar::new(),
            ended: Condvar::new(),
            pool,
            rt,
            limits,
            closed: AtomicBool::new(false),
            last_sweep: Mutex::new(Instant::now()),
        });
        Ok(lf)
    }

    /// Sockets open now.
    pub(crate) fn sockets(&self) -> usize {
        lock(&self.conns).by_token.len()
    }

    /// Takes a socket the core upgraded (on a runtime thread): the poller's thread adopts it.
    pub(crate) fn hand_over(self: &Arc<Self>, h: HandedOff) {
        if self.closed.load(Ordering::Acquire) || lock(&self.threads).draining {
            crate::inloop::refuse(h);
            return;
        }
        lock(&self.incoming).push(h);
        self.ensure_threads();
        let _ = self.waker.wake();
    }

    fn wake_for(&self, conn: &Arc<Conn>) {
        lock(&self.resumed).push(Arc::clone(conn));
        let _ = self.waker.wake();
    }

    fn forget(&self, conn: &Conn) {
        let mut c = lock(&self.conns);
        if c.by_token.remove(&conn.token.0).is_some() {
            c.release(conn.ip);
        }
        drop(c);
        self.ended.notify_all();
    }

    /// Two threads at least while the server is open: one at the poller, one to take over.
    fn ensure_threads(self: &Arc<Self>) {
        let mut t = lock(&self.threads);
        while t.alive < 2 && !t.closed {
            if !self.spawn(&mut t) {
                break;
            }
        }
        if !t.watchdog && !t.closed {
            let lf = Arc::clone(self);
            t.watchdog = std::thread::Builder::new().name("grenache-watchdog".into()).spawn(move || lf.watchdog()).is_ok();
        }
    }

    /// Gives the poller to another thread when its owner has been away from it, running
    /// handlers, for [`STALL`]: a handler that blocks does not keep the other sockets unread.
    /// It looks every [`WATCH`] while polls find work, and sleeps until woken otherwise; it
    /// starts a thread when none waits for a turn.
    fn watchdog(self: Arc<Self>) {
        let mut t = lock(&self.threads);
        loop {
            if t.closed {
                return;
            }
            let now = Instant::now();
            if let Some(since) = t.busy_since
                && now.duration_since(since) >= STALL
            {
                t.epoch += 1;
                t.owned = false;
                t.busy_since = None;
                if t.waiting > 0 {
                    self.turn.notify_one();
                } else if t.alive < MAX_THREADS {
                    self.spawn(&mut t);
                }
            }
            let active = t.busy_since.is_some() || now.duration_since(t.last_activity) < ACTIVE;
            t.watchdog_idle = !active;
            t = if active {
                self.watch.wait_timeout(t, WATCH).map(|(g, _)| g).unwrap_or_else(|e| e.into_inner().0)
            } else {
                self.watch.wait(t).unwrap_or_else(|e| e.into_inner())
            };
        }
    }

    /// Waits for this thread's turn at the poller: it keeps the poller it came back to unless
    /// the watchdog gave it away (`mine` holds the epoch it owns it in). False: end the thread.
    fn take_turn(&self, mine: &mut Option<u64>) -> bool {
        let mut t = lock(&self.threads);
        loop {
            if t.closed {
                t.alive -= 1;
                return false;
            }
            if let Some(e) = mine.take()
                && t.owned
                && t.epoch == e
            {
                t.busy_since = None;
                *mine = Some(e);
                return true;
            }
            if !t.owned {
                t.owned = true;
                t.busy_since = None;
                *mine = Some(t.epoch);
                return true;
            }
            t.waiting += 1;
            let (g, timeout) = self.turn.wait_timeout(t, IDLE_EXIT).unwrap_or_else(|e| e.into_inner());
            t = g;
            t.waiting -= 1;
            if timeout.timed_out() && t.alive > 2 {
                t.alive -= 1;
                return false;
            }
        }
    }

    fn spawn(self: &Arc<Self>, t: &mut Threads) -> bool {
        t.alive += 1;
        let lf = Arc::clone(self);
        let ok = std::thread::Builder::new().name("grenache-handler".into()).spawn(move || lf.run()).is_ok();
        if !ok {
            t.alive -= 1;
        }
        ok
    }

    /// A thread: attached to Python for its life, it releases the GIL while it waits at the
    /// poller and does socket I/O, and takes it only to run handlers. At interpreter exit it
    /// never takes the GIL again (it sleeps until the process ends), as the pool's threads.
    fn run(self: Arc<Self>) {
        Python::attach(|py| {
            let mut mine = None;
            loop {
                let jobs = py.detach(|| {
                    let jobs = loop {
                        match self.lead(&mut mine) {
                            Some(jobs) if jobs.is_empty() => continue,
                            other => break other,
                        }
                    };
                    IN_PYTHON.fetch_add(1, Ordering::SeqCst);
                    if FINALIZING.load(Ordering::SeqCst) {
                        IN_PYTHON.fetch_sub(1, Ordering::SeqCst);
                        // Dropped: each request is answered ERR_NO_REPLY.
                        drop(jobs);
                        loop {
                            std::thread::park();
                        }
                    }
                    jobs
                });
                let Some(jobs) = jobs else {
                    IN_PYTHON.fetch_sub(1, Ordering::SeqCst);
                    break;
                };
                if self.pool.push_claimed(jobs) {
                    self.pool.drain(py);
                }
                IN_PYTHON.fetch_sub(1, Ordering::SeqCst);
            }
        });
    }

    /// Waits for this thread's turn at the poller, polls, leaves the poller (it comes back to
    /// it unless the watchdog gives it away meanwhile), and does the I/O of the sockets that
    /// were ready; returns the requests read (`None`: end this thread).
    fn lead(self: &Arc<Self>, mine: &mut Option<u64>) -> Option<Vec<Job>> {
        if !self.take_turn(mine) {
            return None;
        }
        let mut poller = lock(&self.poller);
        let (poll, events) = &mut *poller;
        // After a reply went out from this thread, poll for up to the budget before sleeping.
        let ready = crate::loop_spin::with_thread_spin(|spin| {
            let b = spin.plan(Some(TICK))?;
            let found = spin.spin(b, || poll.poll(events, Some(Duration::ZERO)).is_ok() && !events.is_empty());
            SPINS.fetch_add(1, Ordering::Relaxed);
            HITS.fetch_add(u64::from(found), Ordering::Relaxed);
            Some(found)
        })
        .flatten()
        .unwrap_or(false);
        if !ready
            && let Err(e) = poll.poll(events, Some(TICK))
            && e.kind() != std::io::ErrorKind::Interrupted
        {
            // Not expected (the poller's own descriptor is bad): do not spin on it.
            events.clear();
            std::thread::sleep(TICK);
        }
        let mut ready: Vec<(Token, bool, bool)> =
            events.iter().map(|e| (e.token(), e.is_readable() || e.is_read_closed() || e.is_error(), e.is_writable())).collect();
        drop(poller);
        {
            let mut t = lock(&self.threads);
            if t.closed {
                t.alive -= 1;
                return None;
            }
            let now = Instant::now();
            if !ready.is_empty() {
                t.busy_since = Some(now);
                t.last_activity = now;
                if t.watchdog_idle {
                    t.watchdog_idle = false;
                    self.watch.notify_one();
                }
            }
        }
        let mut jobs = Vec::new();
        if ready.iter().any(|r| r.0 == WAKE) {
            self.adopt(&mut jobs);
            let resumed = std::mem::take(&mut *lock(&self.resumed));
            ready.extend(resumed.iter().map(|c| (c.token, true, false)));
        }
        for (token, readable, writable) in ready {
            if token == WAKE {
                continue;
            }
            let Some(conn) = lock(&self.conns).by_token.get(&token.0).cloned() else { continue };
            if writable {
                let mut st = lock(&conn.state);
                conn.flush(&mut st);
            }
            if readable && !conn.read(&mut jobs) {
                let code = if lock(&conn.state).close_sent { None } else { Some(1000) };
                conn.finish(code);
            }
        }
        let due = {
            let mut last = lock(&self.last_sweep);
            let due = last.elapsed() >= (self.limits.idle / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
            if due {
                *last = Instant::now();
            }
            due
        };
        if due {
            self.sweep();
        }
        Some(jobs)
    }

    /// Adopts the sockets handed over, within the connection limits (a socket over them is
    /// closed at once); bytes that came with the handshake may hold whole requests.
    fn adopt(self: &Arc<Self>, jobs: &mut Vec<Job>) {
        let incoming = std::mem::take(&mut *lock(&self.incoming));
        for h in incoming {
            let ip = h.remote.ip();
            let token = {
                let mut c = lock(&self.conns);
                let n = c.per_ip.get(&ip).copied().unwrap_or(0);
                if self.closed.load(Ordering::Acquire)
                    || c.by_token.len() >= self.limits.max_connections
                    || n >= self.limits.max_connections_per_ip
                {
                    None
                } else {
                    c.next = (c.next + 1) % (usize::MAX - 1);
                    let t = c.next;
                    c.per_ip.insert(ip, n + 1);
                    Some(t)
                }
            };
            let Some(token) = token else {
                drop(h);
                continue;
            };
            let mut stream = mio::net::TcpStream::from_std(h.stream);
            if self.registry.register(&mut stream, Token(token), Interest::READABLE).is_err() {
                lock(&self.conns).release(ip);
                continue;
            }
            let state = ConnState {
                stream: Some(stream),
                decoder: Decoder::new(false, MAX_MESSAGE, h.leftover),
                out: Vec::new(),
                blocked: false,
                dirty: false,
                ended: false,
                draining: false,
                close_sent: false,
                in_flight: 0,
                paused: false,
                last_request: Instant::now(),
            };
            let conn = Arc::new(Conn { token: Token(token), ip, remote: h.remote, state: Mutex::new(state), lf: Arc::downgrade(self) });
            lock(&self.conns).by_token.insert(token, Arc::clone(&conn));
            if !conn.read(jobs) {
                conn.finish(Some(1000));
            }
        }
    }

    /// Closes the sockets idle for the idle limit (1000), as the core's server does.
    fn sweep(&self) {
        let conns: Vec<Arc<Conn>> = lock(&self.conns).by_token.values().cloned().collect();
        for c in conns {
            let idle = {
                let st = lock(&c.state);
                st.in_flight == 0 && st.last_request.elapsed() >= self.limits.idle
            };
            if idle {
                c.finish(Some(1000));
            }
        }
    }

    /// Stops reading every socket, closes each once its requests are answered (4001) and the
    /// rest after `grace` (1001). True when every socket finished in time. Blocks (GIL released
    /// by the caller).
    pub(crate) fn drain(&self, grace: Duration) -> bool {
        lock(&self.threads).draining = true;
        let conns: Vec<Arc<Conn>> = lock(&self.conns).by_token.values().cloned().collect();
        for c in conns {
            let done = {
                let mut st = lock(&c.state);
                st.draining = true;
                st.in_flight == 0
            };
            if done {
                c.finish(Some(4001));
            }
        }
        let deadline = Instant::now() + grace;
        let mut c = lock(&self.conns);
        while !c.by_token.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                drop(c);
                self.close_all(1001);
                return false;
            }
            c = self.ended.wait_timeout(c, left).map(|(g, _)| g).unwrap_or_else(|e| e.into_inner().0);
        }
        true
    }

    fn close_all(&self, code: u16) {
        let conns: Vec<Arc<Conn>> = lock(&self.conns).by_token.values().cloned().collect();
        for c in conns {
            c.finish(Some(code));
        }
    }

    /// Closes every socket (1001) and ends the threads.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        for h in std::mem::take(&mut *lock(&self.incoming)) {
            drop(h);
        }
        self.close_all(1001);
        lock(&self.threads).closed = true;
        self.turn.notify_all();
        self.watch.notify_all();
        let _ = self.waker.wake();
    }
}
