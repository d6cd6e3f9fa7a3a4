//! Plain WebSocket requests of an asyncio client, written and read on its event loop.
//!
//! Why: through the core's threads every request crosses from the loop's thread to an I/O
//! thread and every reply crosses back (a wake-up through the inbox's socket pair); on an idle
//! loop each crossing wakes a sleeping thread, which costs more than the round trip itself. Here
//! the core still chooses the destination (the Link's cached lookup, the same random choice,
//! dead workers avoided: [`grenache::rpc::PeerRpcClient::pick_cached`]) and dials and upgrades
//! the socket on its runtime ([`handoff::dial_plain`]); from then on the loop writes the
//! requests with a plain `write(2)` and reads the replies itself (`add_reader`), framing with the
//! core's [`Decoder`] and `encode_*`, decoding replies with the core's
//! [`envelope::decode_reply_routed`](grenache::rpc::envelope::decode_reply_routed), and settles
//! the futures in the same call.
//!
//! What stays on the normal path (the core's client): a request whose key's lookup is not
//! cached, or whose destination has no socket on this loop yet (its socket is dialled meanwhile,
//! for the next requests; a dial that fails is left to the core's path, which records the dead
//! worker and fails over), or whose socket has [`MAX_PENDING`] requests in flight. Requests a
//! draining server closed its socket on without reading (close code 4001) go to the normal path
//! too, as the core's client sends them to another worker.
//!
//! Writes: a request alone on its socket is written at once; one sent while others await their
//! replies waits in the socket's outbox for the end of the loop's iteration (the owner's
//! `_kick` schedules [`LoopClient::flush`]), so that the requests a batch of replies started go
//! out in one write. A socket whose kernel buffer is full is watched for writability (the
//! owner's `_watch`); one whose peer reads nothing is closed once [`MAX_OUTBOX`] bytes wait.
//!
//! Timeouts: one timer per loop client (the owner's `_arm(delay)`), armed at the earliest
//! deadline; [`LoopClient::sweep`] fails the expired requests with the core's message and
//! closes sockets idle for [`IDLE`].
//!
//! Everything here runs on the loop's thread, but for the end of a dial (the runtime calls the
//! callback it was given, which hands the socket to the loop with `call_soon_threadsafe`).

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use grenache::embed::{EmbedClient, RequestOptions};
use grenache::rpc::ReplyResult;
use grenache::rpc::envelope::{self, ResultForm};
use grenache::transport::ws::handoff::{self, Decoder, HandedOff, Pumped};
use grenache::{Error, ErrorKind};
use pyo3::prelude::*;

use crate::{InboxShared, Item, error_value, lock};

/// Largest reply read (the core's default).
const MAX_MESSAGE: usize = grenache::transport::ws::DEFAULT_MAX_MESSAGE_SIZE;
/// Requests in flight on one socket; past it a request takes the normal path.
const MAX_PENDING: usize = 65_536;
/// Bytes queued for a server that does not read before its socket is closed.
const MAX_OUTBOX: usize = 64 << 20;
/// Bytes read from one socket per readiness event.
const READ_BUDGET: usize = 1 << 20;
/// How long dialling a destination may take (the core's WS client's connect timeout).
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);
/// After a failed dial, requests to that destination take the normal path for this long before
/// the loop dials it again.
const DIAL_BACKOFF: Duration = Duration::from_secs(1);
/// A socket with nothing in flight for this long is closed (the core's WS client's idle timeout).
const IDLE: Duration = Duration::from_secs(120);
/// Most destinations with a socket on one loop; past it a request to a new one takes the normal
/// path.
const MAX_CONNS: usize = 1024;

/// A request in flight on a socket.
struct Pending {
    fut: Py<PyAny>,
    /// When it times out, and its timeout (for the message).
    deadline: Option<(Instant, Duration)>,
    key: Arc<str>,
    payload: Arc<str>,
    timeout: Option<Duration>,
    /// The destination the caller gave, if any.
    dest: Option<Box<str>>,
}

struct Conn {
    dest: String,
    stream: Option<std::net::TcpStream>,
    decoder: Decoder,
    out: Vec<u8>,
    /// By request id.
    pending: HashMap<String, Pending>,
    /// Watched for writability.
    blocked: bool,
    /// In the dirty list.
    dirty: bool,
    /// Why the socket failed while writing (its reader then sees the end).
    failed: Option<&'static str>,
    /// Ended: not used for new requests; closed once the loop stopped watching it.
    ended: bool,
    /// When its last request ended (for the idle limit).
    last_used: Instant,
}

impl Conn {
    /// Writes what is queued. Returns true when bytes wait for writability and the
    /// socket was not watched yet (the caller asks the owner to watch it).
    fn write_out(&mut self) -> bool {
        let Some(stream) = self.stream.as_mut() else { return false };
        if !self.out.is_empty() {
            grenache::transport::loop_spin::wrote();
        }
        if handoff::write_queued(stream, &mut self.out) == handoff::Written::Failed {
            self.break_off("ERR_TRANSPORT_CLOSE: the socket failed while sending");
            return false;
        }
        let ask = !self.out.is_empty() && !self.blocked;
        if ask {
            self.blocked = true;
        }
        ask
    }

    /// Shuts the socket down: its reader sees the end and fails what is in flight with `why`.
    fn break_off(&mut self, why: &'static str) {
        self.out.clear();
        self.failed.get_or_insert(why);
        if let Some(s) = self.stream.as_ref() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

struct State {
    /// By descriptor.
    conns: HashMap<i32, Conn>,
    /// Live sockets by destination.
    by_dest: HashMap<String, i32>,
    /// Destinations being dialled (`None`) or whose dial failed (when).
    dialing: HashMap<String, Option<Instant>>,
    /// Sockets with requests waiting for the end of the iteration.
    dirty: Vec<i32>,
    /// A flush is scheduled.
    kicked: bool,
    /// When the owner's timer fires.
    armed: Option<Instant>,
    closed: bool,
}

/// What to settle once the state is unlocked: a future and its outcome.
type Settle = (Py<PyAny>, Result<String, Error>);

/// A request to give to the core's path (a draining server did not read it).
type Resubmit = Pending;

/// What the owner must be told once the state is unlocked.
#[derive(Default)]
struct Calls {
    dial: Option<String>,
    kick: bool,
    watch: Vec<i32>,
    arm: Option<f64>,
}

/// The plain WS sockets of one client on one asyncio event loop.
#[pyclass(module = "grenache._native", frozen)]
pub(crate) struct LoopClient {
    client: Arc<EmbedClient>,
    rt: grenache::embed::Runtime,
    /// The loop's inbox, for requests handed to the core's path.
    inbox: Arc<InboxShared>,
    /// A weak reference to the package's `_LoopClient`.
    owner: Py<PyAny>,
    /// The package's `_loads`.
    loads: Py<PyAny>,
    default_timeout: Duration,
    state: Mutex<State>,
}

/// A socket dialled for a loop client, on its way to the loop.
#[pyclass(module = "grenache._native", frozen)]
pub(crate) struct DialedSocket {
    inner: Mutex<Option<HandedOff>>,
}

impl LoopClient {
    fn call_owner(&self, py: Python<'_>, calls: Calls) {
        if calls.dial.is_none() && !calls.kick && calls.watch.is_empty() && calls.arm.is_none() {
            return;
        }
        let Ok(target) = self.owner.call0(py) else { return };
        if target.is_none(py) {
            return;
        }
        let run = |r: PyResult<Py<PyAny>>| {
            if let Err(e) = r {
                e.print(py);
            }
        };
        if let Some(dest) = calls.dial {
            run(target.call_method1(py, "_dial", (dest,)));
        }
        if calls.kick {
            run(target.call_method0(py, "_kick"));
        }
        for fd in calls.watch {
            run(target.call_method1(py, "_watch", (fd,)));
        }
        if let Some(delay) = calls.arm {
            run(target.call_method1(py, "_arm", (delay,)));
        }
    }

    /// Settles futures (outside the state's lock: `set_result` only schedules callbacks, but
    /// `loads` is Python code). A future already done (its task was cancelled) is skipped.
    fn settle(&self, py: Python<'_>, done: Vec<Settle>) {
        for (fut, outcome) in done {
            let fut = fut.bind(py);
            let r = fut.call_method0(pyo3::intern!(py, "done")).and_then(|d| d.is_truthy()).and_then(|is_done| {
                if is_done {
                    return Ok(());
                }
                let value = match outcome {
                    Ok(text) => self.loads.call1(py, (text,)).map_err(|e| e.into_value(py).into_any()),
                    Err(e) => Err(error_value(py, &e)),
                };
                match value {
                    Ok(v) => fut.call_method1(pyo3::intern!(py, "set_result"), (v,)).map(drop),
                    Err(e) => fut.call_method1(pyo3::intern!(py, "set_exception"), (e,)).map(drop),
                }
            });
            if let Err(e) = r {
                e.print(py);
            }
        }
    }

    /// Queues (or writes) a request on the socket `fd`; false when it must take the normal path.
    #[allow(clippy::too_many_arguments)]
    fn send_on(
        &self,
        st: &mut State,
        fd: i32,
        key: &str,
        payload_json: &str,
        fut: Py<PyAny>,
        timeout_ms: Option<u64>,
        given: Option<&str>,
        calls: &mut Calls,
    ) -> bool {
        let Some(c) = st.conns.get_mut(&fd) else { return false };
        if c.pending.len() >= MAX_PENDING || c.failed.is_some() {
            return false;
        }
        // As the core validates: the text goes on the wire as it is.
        if serde_json::from_str::<&serde_json::value::RawValue>(payload_json).is_err() {
            return false;
        }
        let rid = grenache::rpc::new_rid();
        let timeout = timeout_ms.map_or(self.default_timeout, Duration::from_millis);
        let now = Instant::now();
        let deadline = now.checked_add(timeout).map(|at| (at, timeout));
        handoff::encode_request(&mut c.out, &rid, key, payload_json, true);
        let alone = c.pending.is_empty();
        c.pending.insert(
            rid,
            Pending {
                fut,
                deadline,
                key: Arc::from(key),
                payload: Arc::from(payload_json),
                timeout: timeout_ms.map(Duration::from_millis),
                dest: given.map(Box::from),
            },
        );
        if c.out.len() > MAX_OUTBOX {
            // The server reads nothing: close the socket (its reader fails what is in flight).
            c.break_off("ERR_TRANSPORT_CLOSE: the server does not read its socket");
        } else if !c.blocked {
            if alone {
                if c.write_out() {
                    calls.watch.push(fd);
                }
            } else if !c.dirty {
                c.dirty = true;
                st.dirty.push(fd);
                if !st.kicked {
                    st.kicked = true;
                    calls.kick = true;
                }
            }
        }
        if let Some((at, _)) = deadline
            && st.armed.is_none_or(|armed| at < armed)
        {
            st.armed = Some(at);
            calls.arm = Some(timeout.as_secs_f64());
        }
        true
    }

    /// Gives requests a draining server did not read to the core's path (another worker).
    fn resubmit(&self, again: Vec<Resubmit>) {
        for p in again {
            let fut = p.fut;
            let inbox = Arc::clone(&self.inbox);
            let opts = RequestOptions { timeout: p.timeout, dest: p.dest.map(String::from), ..Default::default() };
            self.client.request(p.key, &p.payload, opts, move |r| inbox.push(Item::Done(fut, r)));
        }
    }

    /// Ends the socket `fd` (it stays in `conns`, not used, until the owner closes it): what is
    /// in flight on it fails with `kind` and `why`, or goes to the core's path (`again`).
    fn end_conn(st: &mut State, fd: i32, kind: ErrorKind, why: &str, again: bool, done: &mut Vec<Settle>, re: &mut Vec<Resubmit>) {
        let Some(c) = st.conns.get_mut(&fd) else { return };
        c.ended = true;
        if st.by_dest.get(&c.dest) == Some(&fd) {
            st.by_dest.remove(&c.dest);
        }
        for (_, p) in c.pending.drain() {
            if again {
                re.push(p);
            } else {
                done.push((p.fut, Err(Error::new(kind, why.to_string()))));
            }
        }
    }
}

#[pymethods]
impl LoopClient {
    /// A loop client of `client` (a `Client`): `inbox` is the loop's, `owner` a weak reference to
    /// the package's `_LoopClient`, `loads` decodes results.
    #[new]
    fn new(client: &crate::Client, inbox: &crate::Inbox, owner: Py<PyAny>, loads: Py<PyAny>) -> LoopClient {
        let rt = client.rt.clone();
        let client = Arc::clone(&client.inner);
        let default_timeout = client.peer().default_timeout();
        let state = State {
            conns: HashMap::new(),
            by_dest: HashMap::new(),
            dialing: HashMap::new(),
            dirty: Vec::new(),
            kicked: false,
            armed: None,
            closed: false,
        };
        LoopClient { client, rt, inbox: Arc::clone(&inbox.shared), owner, loads, default_timeout, state: Mutex::new(state) }
    }

    /// Sends a request on this loop when it can: true when it was taken (`fut` gets the result),
    /// false when it must take the normal path (see the module's docs).
    #[pyo3(signature = (key, payload_json, fut, timeout_ms=None, dest=None))]
    fn request(
        &self,
        py: Python<'_>,
        key: &str,
        payload_json: &str,
        fut: Py<PyAny>,
        timeout_ms: Option<u64>,
        dest: Option<String>,
    ) -> bool {
        let mut calls = Calls::default();
        let taken = {
            let mut st = lock(&self.state);
            let st = &mut *st;
            if st.closed {
                return false;
            }
            let given = dest.is_some();
            let dest = match dest {
                Some(d) => d,
                None => {
                    let by_dest = &st.by_dest;
                    match self.client.peer().pick_cached(key, &RequestOptions::default(), &|d| usize::from(by_dest.contains_key(d))) {
                        Some(d) => d,
                        None => return false,
                    }
                }
            };
            let fd = st.by_dest.get(&dest).copied();
            if let Some(fd) = fd {
                self.send_on(st, fd, key, payload_json, fut, timeout_ms, given.then_some(dest.as_str()), &mut calls)
            } else {
                let now = Instant::now();
                let fresh = match st.dialing.get(&dest) {
                    None => true,
                    Some(Some(failed)) => now.duration_since(*failed) >= DIAL_BACKOFF,
                    Some(None) => false,
                };
                if fresh && st.conns.len() + st.dialing.len() >= MAX_CONNS {
                    // Failures older than the back-off are forgotten.
                    st.dialing.retain(|_, failed| failed.is_none_or(|t| now.duration_since(t) < DIAL_BACKOFF));
                }
                if fresh && st.conns.len() + st.dialing.len() < MAX_CONNS {
                    st.dialing.insert(dest.clone(), None);
                    calls.dial = Some(dest);
                }
                false
            }
        };
        self.call_owner(py, calls);
        taken
    }

    /// Writes the requests queued during this iteration of the loop (scheduled by `_kick`).
    fn flush(&self, py: Python<'_>) {
        let mut calls = Calls::default();
        {
            let mut st = lock(&self.state);
            let st = &mut *st;
            st.kicked = false;
            for fd in std::mem::take(&mut st.dirty) {
                if let Some(c) = st.conns.get_mut(&fd) {
                    c.dirty = false;
                    if !c.blocked && !c.ended && c.write_out() {
                        calls.watch.push(fd);
                    }
                }
            }
        }
        self.call_owner(py, calls);
    }

    /// The socket `fd` became writable: writes what waits; false when nothing waits any more
    /// (stop watching it for writability).
    fn writable(&self, py: Python<'_>, fd: i32) -> bool {
        let _ = py;
        let mut st = lock(&self.state);
        let Some(c) = st.conns.get_mut(&fd) else { return false };
        c.blocked = false;
        c.write_out();
        c.blocked
    }

    /// Takes a dialled socket for `dest` (or the dial's failure: `sock` is None): returns its
    /// descriptor to watch, or -1 when it is not kept (the client closed, or a socket to `dest`
    /// exists).
    #[pyo3(signature = (dest, sock))]
    fn adopt(&self, py: Python<'_>, dest: String, sock: Option<&DialedSocket>) -> i32 {
        let mut calls = Calls::default();
        let fd = {
            let mut st = lock(&self.state);
            let Some(h) = sock.and_then(|s| lock(&s.inner).take()) else {
                st.dialing.insert(dest, Some(Instant::now()));
                return -1;
            };
            st.dialing.remove(&dest);
            if st.closed || st.by_dest.contains_key(&dest) {
                return -1;
            }
            let fd = h.stream.as_raw_fd();
            let conn = Conn {
                dest: dest.clone(),
                stream: Some(h.stream),
                decoder: Decoder::new(true, MAX_MESSAGE, h.leftover),
                out: Vec::new(),
                pending: HashMap::new(),
                blocked: false,
                dirty: false,
                failed: None,
                ended: false,
                last_used: Instant::now(),
            };
            st.conns.insert(fd, conn);
            st.by_dest.insert(dest, fd);
            // The sweep closes it when it stays idle.
            let at = Instant::now() + IDLE;
            if st.armed.is_none_or(|armed| at < armed) {
                st.armed = Some(at);
                calls.arm = Some(IDLE.as_secs_f64());
            }
            fd
        };
        self.call_owner(py, calls);
        fd
    }

    /// Reads what the socket `fd` has, answers pings and settles the futures of the replies read.
    /// True when the socket ended (what was in flight on it failed): stop watching it and
    /// `close(fd)` it.
    fn pump(&self, py: Python<'_>, fd: i32) -> bool {
        let mut done: Vec<Settle> = Vec::new();
        let mut again: Vec<Resubmit> = Vec::new();
        let mut calls = Calls::default();
        let ended = {
            let mut st = lock(&self.state);
            let st = &mut *st;
            let Some(c) = st.conns.get_mut(&fd) else { return true };
            if c.ended {
                return true;
            }
            let Some(stream) = c.stream.as_mut() else { return true };
            let pending = &mut c.pending;
            let pumped = c.decoder.pump(stream, READ_BUDGET, true, &mut c.out, |m| {
                let body = match m {
                    handoff::Message::Text(t) => t.as_bytes(),
                    handoff::Message::Binary(b) => b,
                    _ => return,
                };
                let routed = envelope::decode_reply_routed(body, |rid| {
                    let p = match rid {
                        serde_json::Value::String(s) => pending.remove(s.as_str()),
                        other => pending.remove(&other.to_string()),
                    }?;
                    Some((p.fut, ResultForm::Raw))
                });
                match routed {
                    Ok(mut reply) => {
                        if let Some(fut) = reply.target.take() {
                            let outcome = reply.outcome().map(|r| match r {
                                ReplyResult::Raw(raw) => String::from(Box::<str>::from(raw)),
                                other => other.into_raw().get().to_string(),
                            });
                            done.push((fut, outcome));
                        }
                    }
                    Err((Some(fut), e)) => done.push((fut, Err(Error::new(e.kind(), e.message().to_string())))),
                    Err((None, _)) => {}
                }
            });
            if !done.is_empty() {
                // The worker answered: it is not a dead one (as on the core's path).
                self.client.answered(&c.dest);
                if c.pending.is_empty() {
                    c.last_used = Instant::now();
                }
            }
            let end = match pumped {
                Pumped::Open => None,
                Pumped::Ended(None) => Some((c.failed.unwrap_or("ERR_TRANSPORT_CLOSE: the socket closed"), false)),
                Pumped::Ended(Some(_)) => Some((c.failed.unwrap_or("ERR_TRANSPORT_CLOSE: the socket failed"), false)),
                Pumped::PeerClosed(Some(handoff::CLOSE_DRAINED)) => Some(("", true)),
                Pumped::PeerClosed(_) => Some(("ERR_TRANSPORT_CLOSE: the server closed the socket", false)),
                Pumped::Violation(_) => Some(("ERR_TRANSPORT_CLOSE: the server broke the protocol", false)),
            };
            // Pongs (and the close frame answering the server's) go out now.
            if !c.out.is_empty() && !c.blocked && c.write_out() && end.is_none() {
                calls.watch.push(fd);
            }
            match end {
                Some((why, drained)) => {
                    Self::end_conn(st, fd, ErrorKind::Closed, why, drained, &mut done, &mut again);
                    true
                }
                None => false,
            }
        };
        self.settle(py, done);
        self.resubmit(again);
        self.call_owner(py, calls);
        ended
    }

    /// Fails the requests whose deadline passed (`no reply within ...`, as the core's client)
    /// and ends the sockets idle for 120 s. Returns the seconds until the next deadline (None:
    /// nothing to watch) and the descriptors ended (stop watching them and `close` them).
    fn sweep(&self, py: Python<'_>) -> (Option<f64>, Vec<i32>) {
        let mut done: Vec<Settle> = Vec::new();
        let mut ended = Vec::new();
        let next = {
            let mut st = lock(&self.state);
            let st = &mut *st;
            let now = Instant::now();
            let mut next: Option<Instant> = None;
            let mut idle = Vec::new();
            for (fd, c) in st.conns.iter_mut() {
                if c.ended {
                    continue;
                }
                let expired: Vec<String> =
                    c.pending.iter().filter(|(_, p)| p.deadline.is_some_and(|(at, _)| at <= now)).map(|(rid, _)| rid.clone()).collect();
                for rid in expired {
                    if let Some(p) = c.pending.remove(&rid)
                        && let Some((_, t)) = p.deadline
                    {
                        done.push((p.fut, Err(Error::timeout(format!("no reply within {t:?}")))));
                        c.last_used = now;
                    }
                }
                if c.pending.is_empty() {
                    let at = c.last_used + IDLE;
                    if at <= now {
                        idle.push(*fd);
                        continue;
                    }
                    next = Some(next.map_or(at, |n| n.min(at)));
                }
                for p in c.pending.values() {
                    if let Some((at, _)) = p.deadline {
                        next = Some(next.map_or(at, |n| n.min(at)));
                    }
                }
            }
            let mut again = Vec::new();
            for fd in idle {
                Self::end_conn(st, fd, ErrorKind::Closed, "", false, &mut done, &mut again);
                if let Some(c) = st.conns.get_mut(&fd) {
                    handoff::encode_close(&mut c.out, 1000, "", true);
                    c.write_out();
                }
                ended.push(fd);
            }
            st.armed = next;
            next.map(|at| at.saturating_duration_since(now).as_secs_f64())
        };
        self.settle(py, done);
        (next, ended)
    }

    /// Closes the socket `fd` (the loop stopped watching it): a close frame when it is still
    /// open, then the socket.
    fn close(&self, fd: i32) {
        let mut st = lock(&self.state);
        if let Some(mut c) = st.conns.remove(&fd) {
            if st.by_dest.get(&c.dest) == Some(&fd) {
                st.by_dest.remove(&c.dest);
            }
            if let Some(s) = c.stream.take() {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
        }
    }

    /// Stops taking requests and returns the descriptors of the sockets (stop watching them,
    /// then `finish`).
    fn shutdown(&self) -> Vec<i32> {
        let mut st = lock(&self.state);
        st.closed = true;
        st.conns.keys().copied().collect()
    }

    /// After `shutdown`: fails what is in flight with `kind` (an error kind's name) and
    /// `message` (`kind` None: drops it unsettled, for a loop that is closed), and closes every
    /// socket (a close frame 1000 first).
    #[pyo3(signature = (kind, message))]
    fn finish(&self, py: Python<'_>, kind: Option<&str>, message: &str) {
        let settle = kind.is_some();
        let kind = kind.and_then(ErrorKind::from_name).unwrap_or(ErrorKind::Closed);
        let mut done = Vec::new();
        {
            let mut st = lock(&self.state);
            st.closed = true;
            st.by_dest.clear();
            st.dirty.clear();
            for (_, mut c) in st.conns.drain() {
                for (_, p) in c.pending.drain() {
                    if settle {
                        done.push((p.fut, Err(Error::new(kind, message.to_string()))));
                    }
                }
                if !c.ended && c.failed.is_none() {
                    handoff::encode_close(&mut c.out, 1000, "", true);
                    c.write_out();
                }
                if let Some(s) = c.stream.take() {
                    let _ = s.shutdown(std::net::Shutdown::Both);
                }
            }
        }
        self.settle(py, done);
    }

    /// Dials `dest` on the core's runtime and calls `done(sock)` from there (`sock` None when
    /// the dial failed); `done` hands it to the loop (`call_soon_threadsafe`).
    fn dial(&self, dest: String, done: Py<PyAny>) {
        self.rt.handle().spawn(async move {
            let sock = handoff::dial_plain(&dest, DIAL_TIMEOUT).await.ok();
            if crate::FINALIZING.load(std::sync::atomic::Ordering::SeqCst) {
                return; // the interpreter is going away: the socket is dropped (closed)
            }
            Python::attach(|py| {
                let sock = sock.map(|h| DialedSocket { inner: Mutex::new(Some(h)) });
                let called = match sock {
                    Some(s) => Py::new(py, s).and_then(|s| done.call1(py, (s,))),
                    None => done.call1(py, (py.None(),)),
                };
                // The loop was closed: the socket is dropped (closed).
                drop(called);
            });
        });
    }

    /// Requests in flight on this loop's sockets.
    #[getter]
    fn in_flight(&self) -> usize {
        lock(&self.state).conns.values().map(|c| c.pending.len()).sum()
    }

    /// Destinations with a live socket on this loop.
    #[getter]
    fn dests(&self) -> Vec<String> {
        let st = lock(&self.state);
        let mut d: Vec<String> = st.by_dest.keys().cloned().collect();
        d.sort();
        d
    }
}
