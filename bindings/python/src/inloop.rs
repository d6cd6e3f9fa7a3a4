//! Plain WebSocket sockets of an `async def` handler's server, read and written on its asyncio
//! event loop.
//!
//! Why: through the core's threads every request crosses from an I/O thread to the loop (a
//! wake-up through the inbox's socket pair) and every reply crosses back, and on an idle loop
//! each crossing wakes a sleeping thread, which costs more than a whole round trip on one
//! thread. Here the core accepts and upgrades the socket on its runtime and hands it over
//! ([`grenache::transport::ws::handoff`]); from then on the loop watches it (`add_reader`), a
//! native call reads it until it would block, decodes the frames with the core's decoder,
//! answers pings and closes, and gives the requests to Python in one list; replies are framed
//! and written with a plain `write(2)`.
//!
//! Batching: replies given while other requests of the same socket are still running (of the
//! batch being handled, or earlier ones) wait in the socket's outbox and go out in one write per
//! socket: at the last reply the socket waits for, at the end of the batch, or at the next
//! iteration of the loop ([`_inloop_flush`], scheduled once per iteration). A socket whose
//! kernel buffer is full is watched for writability; one whose peer does not read at all is
//! closed once [`MAX_OUTBOX`] bytes wait for it.
//!
//! Threads: everything runs on the loop's thread except answers given from other threads (a
//! deferred reply answered elsewhere, a reply dropped by the garbage collector there): their
//! frames are queued under the socket's lock and the loop is woken through the server's inbox to
//! write them.
//!
//! Python is told about a socket through the owner it gave (a weak reference to the package's
//! `_LoopCalls`, so that no reference cycle runs through Rust): `owner()._kick()` to schedule a
//! flush on the next iteration, `owner()._event(fd, event)` when a socket needs watching for
//! writability ([`EV_BLOCKED`]) or has finished draining ([`EV_DRAINED`]).

use std::cell::{Cell, RefCell};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use grenache::transport::ws::handoff::{self, Decoder, HandedOff, Message, Pumped};
use pyo3::prelude::*;

use crate::{Inbox, InboxShared, Item, lock, py_err};

/// Largest message read (the core's default).
const MAX_MESSAGE: usize = grenache::transport::ws::DEFAULT_MAX_MESSAGE_SIZE;
/// Bytes queued for a peer that does not read before its socket is closed.
const MAX_OUTBOX: usize = 64 << 20;
/// Bytes read from one socket per readiness event before other sockets are read.
const READ_BUDGET: usize = 1 << 20;
/// How long closing a socket may block to write what is queued (a peer that reads slowly).
const CLOSE_LINGER: Duration = Duration::from_millis(200);

/// `owner()._event(fd, EV_BLOCKED)`: the socket's buffer is full, watch it for writability.
const EV_BLOCKED: u8 = 0;
/// `owner()._event(fd, EV_DRAINED)`: a draining socket answered its last request: close it.
const EV_DRAINED: u8 = 1;

thread_local! {
    /// Depth of deliveries into Python running now: frames queued meanwhile wait for its end.
    static DELIVERING: Cell<u32> = const { Cell::new(0) };
    /// Sockets with frames waiting for the end of a delivery or for the next iteration of the loop.
    static DIRTY: RefCell<Vec<Arc<Conn>>> = const { RefCell::new(Vec::new()) };
    /// A flush is scheduled for the next iteration of this thread's loop.
    static KICKED: Cell<bool> = const { Cell::new(false) };
}

struct State {
    stream: Option<std::net::TcpStream>,
    decoder: Decoder,
    out: Vec<u8>,
    /// In the thread-local dirty list.
    dirty: bool,
    /// Queued in the inbox for a flush by the loop (frames from another thread).
    cross: bool,
    /// Watched for writability.
    blocked: bool,
    /// The socket ended (set once): nothing more is read or sent.
    ended: bool,
    /// Shutting down: nothing more is read; closed once `in_flight` reaches 0.
    draining: bool,
    /// A close frame was queued.
    close_sent: bool,
    /// Requests delivered and not answered yet.
    in_flight: usize,
    /// When the last request came (for the idle limit).
    last_request: Instant,
}

pub(crate) struct Conn {
    fd: i32,
    thread: ThreadId,
    state: Mutex<State>,
    /// Wakes the loop for frames queued on another thread.
    inbox: Arc<InboxShared>,
    /// A weak reference to the package's `_LoopCalls`.
    owner: Py<PyAny>,
}

/// `owner()._event(fd, event)`, or `owner()._kick()` without an event; nothing once the owner
/// is gone.
fn call_owner(py: Python<'_>, owner: &Py<PyAny>, event: Option<(i32, u8)>) {
    let Ok(target) = owner.call0(py) else { return };
    if target.is_none(py) {
        return;
    }
    let called = match event {
        Some(ev) => target.call_method1(py, "_event", ev),
        None => target.call_method0(py, "_kick"),
    };
    if let Err(e) = called {
        e.print(py);
    }
}

impl Conn {
    /// Writes what is queued. On `WouldBlock` asks the owner to watch the socket (once); a
    /// failed socket is shut down (its reader then sees the end). Returns whether bytes are
    /// still waiting.
    fn flush(&self, py: Python<'_>) -> bool {
        let (ask, drained, waiting) = {
            let mut st = lock(&self.state);
            let st = &mut *st;
            let Some(stream) = st.stream.as_mut() else { return false };
            if !st.out.is_empty() {
                grenache::transport::loop_spin::wrote();
            }
            if handoff::write_queued(stream, &mut st.out) == handoff::Written::Failed {
                st.out.clear();
                st.ended = true;
                let _ = stream.shutdown(std::net::Shutdown::Both);
            }
            let waiting = !st.out.is_empty();
            let ask = waiting && !st.blocked;
            if ask {
                st.blocked = true;
            }
            (ask, st.draining && st.in_flight == 0 && !waiting && !st.ended, waiting)
        };
        if ask {
            call_owner(py, &self.owner, Some((self.fd, EV_BLOCKED)));
        }
        if drained {
            call_owner(py, &self.owner, Some((self.fd, EV_DRAINED)));
        }
        waiting
    }

    /// Queues a reply frame `text` (from any thread) and has it written: now, at the end of the
    /// delivery running, at the next iteration of the loop, or by the loop when queued from another
    /// thread.
    fn queue_reply(self: &Arc<Self>, py: Python<'_>, text: &str) {
        let on_loop = std::thread::current().id() == self.thread;
        let mut st = lock(&self.state);
        st.in_flight = st.in_flight.saturating_sub(1);
        if st.stream.is_none() || st.ended {
            return;
        }
        handoff::encode_text(&mut st.out, text, false);
        if st.out.len() > MAX_OUTBOX {
            // The peer does not read its replies: close the socket (its reader sees the end).
            st.out.clear();
            st.ended = true;
            if let Some(s) = st.stream.as_ref() {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
            return;
        }
        if !on_loop {
            if !st.cross {
                st.cross = true;
                drop(st);
                self.inbox.push(Item::Flush(Arc::clone(self)));
            }
            return;
        }
        if st.blocked {
            return; // written when the socket becomes writable
        }
        // Other requests of this socket still run (delivered in this batch or earlier): their
        // replies will likely come in this iteration, and go out in the same write. A reply the
        // socket waits for alone goes out at once, also in the middle of a batch: what the
        // handler's task does after answering is then off the client's round trip.
        let delivering = DELIVERING.with(Cell::get) > 0;
        if st.in_flight > 0 && (delivering || !st.draining) {
            if !st.dirty {
                st.dirty = true;
                drop(st);
                DIRTY.with(|d| d.borrow_mut().push(Arc::clone(self)));
                if !delivering && !KICKED.with(|k| k.replace(true)) {
                    call_owner(py, &self.owner, None);
                }
            }
            return;
        }
        drop(st);
        self.flush(py);
    }
}

/// Writes every socket with frames waiting on this thread.
fn flush_dirty(py: Python<'_>) {
    loop {
        let dirty = DIRTY.with(|d| std::mem::take(&mut *d.borrow_mut()));
        if dirty.is_empty() {
            return;
        }
        for c in dirty {
            lock(&c.state).dirty = false;
            c.flush(py);
        }
    }
}

/// Writes the frames queued for sockets on this thread since the last iteration of the loop (the
/// owner's `_kick` schedules it with `loop.call_soon`).
#[pyfunction]
pub(crate) fn _inloop_flush(py: Python<'_>) {
    KICKED.with(|k| k.set(false));
    flush_dirty(py);
}

/// Called by [`Inbox::drain`](crate::Inbox) on the loop for frames queued from another thread.
pub(crate) fn flush_from_inbox(py: Python<'_>, conn: &Arc<Conn>) {
    lock(&conn.state).cross = false;
    conn.flush(py);
}

/// A plain socket the server upgraded and handed to the loop, not yet adopted.
#[pyclass(module = "grenache._native", frozen)]
pub(crate) struct LoopSocket {
    inner: Mutex<Option<HandedOff>>,
    remote: String,
}

impl LoopSocket {
    pub(crate) fn new(h: HandedOff) -> LoopSocket {
        let remote = h.remote.ip().to_string();
        LoopSocket { inner: Mutex::new(Some(h)), remote }
    }
}

#[pymethods]
impl LoopSocket {
    /// The peer's IP address.
    #[getter]
    fn remote_ip(&self) -> &str {
        &self.remote
    }
}

/// A plain WebSocket server socket driven by the event loop of the thread that adopts it.
#[pyclass(module = "grenache._native", frozen)]
pub(crate) struct LoopConn {
    conn: Arc<Conn>,
    /// `functools.partial(loop.call_later, reply_timeout)`, when the server has one.
    arm: Option<Py<PyAny>>,
}

#[pymethods]
impl LoopConn {
    /// Adopts `socket` on this thread (the loop's): `inbox` wakes the loop for frames queued on
    /// other threads, `owner` is a weak reference to the package's `_LoopCalls`, `arm(cb)` arms
    /// a reply timeout.
    #[new]
    #[pyo3(signature = (socket, inbox, owner, arm=None))]
    fn new(py: Python<'_>, socket: &LoopSocket, inbox: &Inbox, owner: Py<PyAny>, arm: Option<Py<PyAny>>) -> PyResult<LoopConn> {
        let h = lock(&socket.inner).take();
        let Some(h) = h else { return Err(py_err(py, &crate::invalid("this socket was already adopted"))) };
        let fd = h.stream.as_raw_fd();
        let state = State {
            stream: Some(h.stream),
            decoder: Decoder::new(false, MAX_MESSAGE, h.leftover),
            out: Vec::new(),
            dirty: false,
            cross: false,
            blocked: false,
            ended: false,
            draining: false,
            close_sent: false,
            in_flight: 0,
            last_request: Instant::now(),
        };
        let conn = Conn { fd, thread: std::thread::current().id(), state: Mutex::new(state), inbox: Arc::clone(&inbox.shared), owner };
        Ok(LoopConn { conn: Arc::new(conn), arm })
    }

    fn fileno(&self) -> i32 {
        self.conn.fd
    }

    /// Reads what the socket has (up to a budget), answers pings and closes, and calls
    /// `deliver(requests)` once with the requests read, as `(payload_json, None, reply)`;
    /// replies given meanwhile go out in one write when it returns. Returns true when the
    /// socket ended (the peer closed it, sent a close frame or a malformed frame, or failed):
    /// stop watching it and `close()` it.
    fn pump(&self, py: Python<'_>, deliver: &Bound<'_, PyAny>) -> PyResult<bool> {
        let mut requests: Vec<(String, String)> = Vec::new();
        let mut ended = false;
        {
            let mut st = lock(&self.conn.state);
            let st = &mut *st;
            if st.ended || st.draining {
                return Ok(st.ended);
            }
            if let Some(stream) = st.stream.as_mut() {
                let pumped = st.decoder.pump(stream, READ_BUDGET, false, &mut st.out, |m| match m {
                    Message::Text(t) => push_request(&mut requests, t.as_bytes()),
                    Message::Binary(b) => push_request(&mut requests, b),
                    _ => {}
                });
                match pumped {
                    Pumped::Open => {}
                    Pumped::Ended(_) => ended = true,
                    // A close frame answering it was queued.
                    Pumped::PeerClosed(_) | Pumped::Violation(_) => {
                        st.close_sent = true;
                        ended = true;
                    }
                }
            }
            if ended {
                st.ended = true;
            }
            if !requests.is_empty() {
                st.in_flight += requests.len();
                st.last_request = Instant::now();
            }
        }
        if !requests.is_empty() && !ended {
            let list = pyo3::types::PyList::empty(py);
            for (rid, payload) in requests {
                let reply =
                    Py::new(py, LoopReply { conn: Arc::clone(&self.conn), rid, state: AtomicU8::new(OPEN), timer: Mutex::new(None) })?;
                if let Some(arm) = &self.arm {
                    match arm.call1(py, (reply.getattr(py, "_expire")?,)) {
                        Ok(t) => *lock(&reply.get().timer) = Some(t),
                        Err(e) => e.print(py),
                    }
                }
                list.append((payload, py.None(), reply))?;
            }
            DELIVERING.with(|d| d.set(d.get() + 1));
            let called = deliver.call1((list,));
            let depth = DELIVERING.with(|d| {
                d.set(d.get() - 1);
                d.get()
            });
            if let Err(e) = called {
                e.print(py);
            }
            if depth == 0 {
                flush_dirty(py);
            }
        }
        // Pongs (and, inside an outer delivery, nothing else) still queued go out now: a peer
        // waiting for its pong must not wait for the replies of long requests.
        let pending = {
            let st = lock(&self.conn.state);
            !st.out.is_empty() && !st.blocked && !st.dirty
        };
        if !ended && pending {
            self.conn.flush(py);
        }
        Ok(ended)
    }

    /// Writes what is queued (the socket became writable); false when nothing waits any more
    /// (stop watching for writability).
    fn writable(&self, py: Python<'_>) -> bool {
        lock(&self.conn.state).blocked = false;
        self.conn.flush(py)
    }

    /// Stops reading: the socket closes once every request it delivered is answered. Returns
    /// true when none is running (close it now).
    fn drain(&self) -> bool {
        let mut st = lock(&self.conn.state);
        st.draining = true;
        st.in_flight == 0
    }

    /// Requests delivered and not answered yet.
    #[getter]
    fn in_flight(&self) -> usize {
        lock(&self.conn.state).in_flight
    }

    /// Seconds since the last request (or since the socket was adopted).
    #[getter]
    fn idle(&self) -> f64 {
        lock(&self.conn.state).last_request.elapsed().as_secs_f64()
    }

    /// Sends a close frame with `code` (unless one was sent), writes what is queued (waiting at
    /// most 200 ms for a slow reader) and closes the socket. Stop watching it first.
    #[pyo3(signature = (code=None))]
    fn close(&self, py: Python<'_>, code: Option<u16>) {
        let stream = {
            let mut st = lock(&self.conn.state);
            let st = &mut *st;
            st.ended = true;
            handoff::take_to_close(&mut st.stream, &mut st.out, &mut st.close_sent, code)
        };
        if let Some((s, out)) = stream {
            py.detach(move || handoff::close_after(s, &out, CLOSE_LINGER));
        }
    }
}

impl Drop for LoopConn {
    fn drop(&mut self) {
        // The loop let go of the socket (closed without a shutdown): close it.
        let mut st = lock(&self.conn.state);
        st.ended = true;
        st.stream = None;
    }
}

/// Decodes a request envelope `[rid, key, payload]` (the core's rules); a malformed one is
/// dropped, as the core's WS server does.
fn push_request(requests: &mut Vec<(String, String)>, body: &[u8]) {
    if let Ok(d) = grenache::rpc::envelope::decode_request(body) {
        let rid = serde_json::to_string(&d.rid).unwrap_or_else(|_| "null".into());
        requests.push((rid, d.payload.json().to_string()));
    }
}

const OPEN: u8 = 0;
const ANSWERED: u8 = 1;
/// The reply timeout fired: `ERR_TIMEOUT` went out; the first answer is accepted and dropped.
const EXPIRED: u8 = 2;

/// The reply of one request read on the loop: the same interface as `Reply` (answer once, from
/// any thread; dropped unanswered, the client gets `ERR_NO_REPLY`).
#[pyclass(module = "grenache._native", frozen)]
pub(crate) struct LoopReply {
    conn: Arc<Conn>,
    /// The request id, as JSON text.
    rid: String,
    state: AtomicU8,
    timer: Mutex<Option<Py<PyAny>>>,
}

impl LoopReply {
    /// Takes the right to answer: `Ok(true)` to send, `Ok(false)` when the timeout already
    /// answered (the answer is dropped), `AlreadyUsed` after an answer.
    fn take(&self, py: Python<'_>) -> PyResult<bool> {
        let won = match self.state.compare_exchange(OPEN, ANSWERED, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => true,
            Err(EXPIRED) if self.state.compare_exchange(EXPIRED, ANSWERED, Ordering::AcqRel, Ordering::Acquire).is_ok() => false,
            Err(_) => {
                return Err(py_err(py, &grenache::Error::new(grenache::ErrorKind::AlreadyUsed, "the request was already answered")));
            }
        };
        if won {
            self.cancel_timer(py);
        }
        Ok(won)
    }

    fn cancel_timer(&self, py: Python<'_>) {
        let timer = lock(&self.timer).take();
        if let Some(t) = timer {
            let _ = t.call_method0(py, "cancel");
        }
    }

    fn answer_err(&self, py: Python<'_>, message: &str) {
        let msg = serde_json::to_string(message).unwrap_or_else(|_| "\"ERR_REPLY\"".into());
        self.conn.queue_reply(py, &format!("[{},{},null]", self.rid, msg));
    }
}

#[pymethods]
impl LoopReply {
    /// Answers with JSON text (checked: text that is not JSON answers `ERR_INVALID_ARGUMENT`
    /// and raises).
    fn send(&self, py: Python<'_>, result_json: &str) -> PyResult<()> {
        if !self.take(py)? {
            return Ok(());
        }
        if let Err(e) = serde_json::from_str::<&serde_json::value::RawValue>(result_json) {
            self.answer_err(py, grenache::ErrorKind::InvalidArgument.name());
            return Err(py_err(py, &grenache::Error::new(grenache::ErrorKind::InvalidArgument, format!("invalid JSON: {e}"))));
        }
        self.conn.queue_reply(py, &format!("[{},null,{}]", self.rid, result_json));
        Ok(())
    }

    /// Answers with an error message.
    fn error(&self, py: Python<'_>, message: &str) -> PyResult<()> {
        if self.take(py)? {
            self.answer_err(py, message);
        }
        Ok(())
    }

    /// Gives the reply up: the client gets `ERR_NO_REPLY` at once.
    fn abandon(&self, py: Python<'_>) -> PyResult<()> {
        if self.take(py)? {
            self.answer_err(py, "ERR_NO_REPLY");
        }
        Ok(())
    }

    #[getter]
    fn answered(&self) -> bool {
        self.state.load(Ordering::Acquire) == ANSWERED
    }

    #[getter]
    fn closed(&self) -> bool {
        self.state.load(Ordering::Acquire) != OPEN || lock(&self.conn.state).ended
    }

    /// The server's reply timeout fired: answers `ERR_TIMEOUT` unless answered.
    fn _expire(&self, py: Python<'_>) {
        if self.state.compare_exchange(OPEN, EXPIRED, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            lock(&self.timer).take();
            self.answer_err(py, "ERR_TIMEOUT");
        }
    }
}

impl Drop for LoopReply {
    fn drop(&mut self) {
        if self.state.swap(ANSWERED, Ordering::AcqRel) == OPEN {
            let timer = lock(&self.timer).take();
            Python::attach(|py| {
                if let Some(t) = timer {
                    let _ = t.call_method0(py, "cancel");
                }
                self.answer_err(py, "ERR_NO_REPLY");
            });
        }
    }
}

/// Most sockets [`refuse`] serves at once (further ones are closed at once).
const MAX_REFUSING: usize = 64;
static REFUSING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
/// How long [`refuse`] waits for a silent peer.
const REFUSE_IDLE: Duration = Duration::from_secs(10);

/// Serves a socket handed over after the server's loop went away (its inbox is closed): every
/// request is answered `ERR_NO_REPLY`, as the requests queued for that loop were, on a thread of
/// its own, until the peer closes the socket or is silent for [`REFUSE_IDLE`].
pub(crate) fn refuse(h: HandedOff) {
    if REFUSING.fetch_add(1, Ordering::AcqRel) >= MAX_REFUSING {
        REFUSING.fetch_sub(1, Ordering::AcqRel);
        return;
    }
    let run = move || {
        let mut s = h.stream;
        let _ = s.set_nonblocking(false);
        let _ = s.set_read_timeout(Some(REFUSE_IDLE));
        let _ = s.set_write_timeout(Some(REFUSE_IDLE));
        let mut dec = Decoder::new(false, MAX_MESSAGE, h.leftover);
        let mut out = Vec::new();
        'serve: loop {
            loop {
                let body = match dec.next_message() {
                    Ok(None) => break,
                    Ok(Some(Message::Text(t))) => t.as_bytes(),
                    Ok(Some(Message::Binary(b))) => b,
                    Ok(Some(Message::Ping(p))) => {
                        handoff::encode_pong(&mut out, p, false);
                        continue;
                    }
                    Ok(Some(Message::Close(code))) => {
                        handoff::encode_close(&mut out, code.unwrap_or(1000), "", false);
                        break 'serve;
                    }
                    Err(e) => {
                        handoff::encode_close(&mut out, e.close_code(), &e.to_string(), false);
                        break 'serve;
                    }
                };
                if let Ok(d) = grenache::rpc::envelope::decode_request(body) {
                    let rid = serde_json::to_string(&d.rid).unwrap_or_else(|_| "null".into());
                    handoff::encode_text(&mut out, &format!("[{rid},\"ERR_NO_REPLY\",null]"), false);
                }
            }
            if !out.is_empty() {
                if s.write_all(&out).is_err() {
                    break;
                }
                out.clear();
            }
            if !matches!(dec.read_from(&mut s), Ok(n) if n > 0) {
                break;
            }
        }
        let _ = s.write_all(&out);
        REFUSING.fetch_sub(1, Ordering::AcqRel);
    };
    if std::thread::Builder::new().name("grenache-refuse".into()).spawn(run).is_err() {
        REFUSING.fetch_sub(1, Ordering::AcqRel);
    }
}
