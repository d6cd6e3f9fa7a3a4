//! Plain WebSocket sockets read and written on Node's own event loop (libuv), for the drop-in
//! `grenache-native/ws` RPC client and server, and plain HTTP client connections for
//! `grenache-native/http`.
//!
//! Why: through the core's threads every request and every reply of a JS caller crosses between
//! the JS thread and a runtime thread, and on an idle loop each crossing wakes a sleeping thread
//! (a futex or an eventfd), which costs more than the reference's whole in-loop round trip. Here
//! the core dials (or accepts) and upgrades the socket on its runtime and hands it over
//! ([`grenache::transport::ws::handoff`]); from then on the JS thread polls it with a `uv_poll_t`
//! on Node's loop, decodes frames with the core's decoder and writes frames with a plain
//! `write(2)`. A round trip then wakes no thread but the peer's, like the reference's.
//!
//! Batching: all messages one readiness event brings are delivered in one JS call (an array);
//! frames sent while such a call runs (replies, and the requests that their continuations issue,
//! on any socket of this loop) are queued and written once it returns, one write per socket.
//! TLS sockets stay on the core's threads (`lib/native.js` picks the path).
//!
//! The same goes for the drop-in `grenache-native/http` client's plain requests: the core dials
//! the TCP connection ([`tcp_dial`]), and the loop writes each request and parses its reply
//! (HTTP/1.1 keep-alive, one request at a time per connection; see [`NativeLoopConn::http`]).
//!
//! Everything here runs on the JS thread; the `uv_poll_t` of a socket holds an `Rc` of its state
//! until libuv has closed it.

use std::cell::{Cell, RefCell};
use std::ffi::{c_int, c_void};
use std::io::Write;
use std::ptr;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use grenache::transport::ws::handoff::{self, Decoder, HandedOff, Message, Pumped};
use grenache::transport::ws::{WsServer, WsServerConfig};
use napi::bindgen_prelude::FnArgs;
use napi::bindgen_prelude::Function;
use napi::sys;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi::{Env, JsValue, Status};
use napi_derive::napi;

use crate::{ErrName, js_err, port, runtime};
use grenache::transport::http_handoff::{self, Expiry, Serve};

// libuv, as exported by the node binary.
const UV_POLL: c_int = 8;
const UV_READABLE: c_int = 1;
const UV_WRITABLE: c_int = 2;
type PollCb = unsafe extern "C" fn(handle: *mut c_void, status: c_int, events: c_int);
type CloseCb = unsafe extern "C" fn(handle: *mut c_void);
unsafe extern "C" {
    fn uv_handle_size(kind: c_int) -> usize;
    fn uv_poll_init(lp: *mut sys::uv_loop_s, handle: *mut c_void, fd: c_int) -> c_int;
    fn uv_poll_start(handle: *mut c_void, events: c_int, cb: PollCb) -> c_int;
    fn uv_poll_stop(handle: *mut c_void) -> c_int;
    fn uv_close(handle: *mut c_void, cb: CloseCb);
    fn uv_ref(handle: *mut c_void);
    fn uv_unref(handle: *mut c_void);
}

/// Largest message read (the core's default).
const MAX_MESSAGE: usize = grenache::transport::ws::DEFAULT_MAX_MESSAGE_SIZE;
/// Bytes queued for a peer that does not read before its socket is closed.
const MAX_OUTBOX: usize = 64 << 20;
/// Bytes read from one socket per readiness event before other sockets are read.
const READ_BUDGET: usize = 1 << 20;
/// How long a loop server's peer may leave its replies unread before its socket is closed (the
/// core's servers: 30 s without write progress).
const WRITE_STALL: Duration = Duration::from_secs(30);
/// How long a dial may take (TCP and upgrade).
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

thread_local! {
    /// Depth of deliveries into JS running now: frames sent meanwhile wait in their outbox.
    static DELIVERING: Cell<u32> = const { Cell::new(0) };
    /// Sockets with frames queued during a delivery, written when it returns.
    static DIRTY: RefCell<Vec<Rc<Conn>>> = const { RefCell::new(Vec::new()) };
}

struct State {
    stream: Option<std::net::TcpStream>,
    input: Input,
    out: Vec<u8>,
    /// Events the poll handle watches now.
    events: c_int,
    dirty: bool,
    /// Why the socket ended (set once), reported to `on_close`.
    ended: Option<String>,
    /// The close code the peer sent, if it sent a close frame.
    peer_close: Option<u16>,
    /// Close once `out` is written (an HTTP server's last reply).
    closing: bool,
    /// Since when `out` has held bytes the socket did not take (reset by any progress).
    stalled_since: Option<Instant>,
}

impl State {
    /// Whether the socket is to be read now.
    fn reading(&self) -> bool {
        self.ended.is_none() && !self.closing && if let Input::Serve(s) = &self.input { s.reading() } else { true }
    }
}

/// What a socket's bytes are: WebSocket frames, HTTP/1.1 replies to the requests it sent, or
/// HTTP/1.1 requests to a loop server.
enum Input {
    Ws(Decoder),
    Http(HttpIn),
    Serve(Box<Serve>),
}

/// The reading side of a plain HTTP/1.1 client connection: one request at a time, no
/// pipelining (the JS side sends the next request once the reply came).
struct HttpIn {
    buf: Vec<u8>,
    /// Requests sent and not answered: the handle keeps the process alive while there are some.
    awaiting: u32,
}

struct Conn {
    env: sys::napi_env,
    handle: *mut c_void,
    /// Size of the handle's memory, in u64 words.
    handle_words: usize,
    client: bool,
    state: RefCell<State>,
    on_messages: sys::napi_ref,
    on_close: sys::napi_ref,
    closed: Cell<bool>,
}

fn check(status: sys::napi_status) -> napi::Result<()> {
    if status == sys::Status::napi_ok { Ok(()) } else { Err(napi::Error::new(Status::GenericFailure, format!("napi status {status}"))) }
}

impl Conn {
    /// Writes what is queued; on `WouldBlock` watches for writability. False when the socket
    /// failed (it is then shut down, and its poll reports the end).
    fn flush(self: &Rc<Self>) {
        let mut st = self.state.borrow_mut();
        let st = &mut *st;
        let Some(stream) = st.stream.as_mut() else { return };
        let report = handoff::write_report(stream, &mut st.out);
        if report.bytes > 0 {
            crate::spin::wrote();
        }
        st.stalled_since = match (st.out.is_empty(), report.bytes > 0) {
            (true, _) => None,
            (false, true) => Some(Instant::now()),
            (false, false) => st.stalled_since.or_else(|| Some(Instant::now())),
        };
        if let Some(why) = report.error {
            st.out.clear();
            st.ended.get_or_insert(why);
            let _ = stream.shutdown(std::net::Shutdown::Both);
        } else if st.closing && st.out.is_empty() && st.ended.is_none() {
            // The last reply is written: the end of our side, and what the peer sent since is
            // read and dropped, so that the close sends a FIN, not a reset that could cost the
            // peer the reply.
            let _ = stream.shutdown(std::net::Shutdown::Write);
            let mut sink = [0u8; 4096];
            for _ in 0..16 {
                if !matches!(std::io::Read::read(stream, &mut sink), Ok(n) if n > 0) {
                    break;
                }
            }
            st.ended = Some("the connection was closed after its last reply".into());
        }
        // An ended socket is polled for writability, which is at once: the poll then ends it
        // (and tells JS) from the loop, not from inside the call that ended it.
        let mut want = if st.reading() { UV_READABLE } else { 0 };
        if !st.out.is_empty() || st.ended.is_some() {
            want |= UV_WRITABLE;
        }
        if want != st.events && !self.closed.get() {
            st.events = want;
            // SAFETY: the handle lives until `close` hands it to uv_close.
            unsafe { uv_poll_start(self.handle, want, on_poll) };
        }
    }

    /// Queues a frame, and writes it now unless a delivery is running.
    fn queue(self: &Rc<Self>, encode: impl FnOnce(&mut Vec<u8>)) -> bool {
        self.queue_with(|st| encode(&mut st.out))
    }

    /// Queues what `add` puts in the socket's state (`out`), and writes it now unless a delivery
    /// is running.
    fn queue_with(self: &Rc<Self>, add: impl FnOnce(&mut State)) -> bool {
        let mut st = self.state.borrow_mut();
        if st.stream.is_none() || st.ended.is_some() || st.closing {
            return false;
        }
        add(&mut st);
        if st.out.len() > MAX_OUTBOX {
            st.out.clear();
            st.ended.get_or_insert_with(|| "the peer does not read its replies".to_string());
            if let Some(s) = st.stream.as_ref() {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
            return false;
        }
        if DELIVERING.with(Cell::get) > 0 {
            if !st.dirty {
                st.dirty = true;
                drop(st);
                DIRTY.with(|d| d.borrow_mut().push(self.clone()));
            }
        } else {
            drop(st);
            self.flush();
        }
        true
    }

    /// Stops polling, closes the socket and lets libuv free the handle.
    fn close(self: &Rc<Self>) {
        if self.closed.replace(true) {
            return;
        }
        {
            let mut st = self.state.borrow_mut();
            // Best effort: what is queued (a close frame) goes if the socket takes it now.
            let out = std::mem::take(&mut st.out);
            if let Some(s) = st.stream.as_mut() {
                let _ = s.write(&out);
            }
            // SAFETY: the handle is live; stopping it before the fd closes, as libuv asks.
            unsafe { uv_poll_stop(self.handle) };
            if let Some(s) = st.stream.as_ref() {
                use std::os::fd::AsRawFd;
                crate::spin::unwatch(s.as_raw_fd());
            }
            st.stream = None;
        }
        // SAFETY: the handle was initialised; `on_closed` drops the Rc held by the handle.
        unsafe { uv_close(self.handle, on_closed) };
    }

    /// Calls `on_messages(array)` or `on_close(reason)` in a callback scope (microtasks and
    /// `nextTick`s run when it ends, as after any I/O callback); an exception becomes an
    /// uncaught exception of the process.
    fn call_js(&self, func: sys::napi_ref, arg: impl FnOnce(sys::napi_env) -> sys::napi_value) {
        let env = self.env;
        // SAFETY: on the JS thread (libuv callbacks run there), with a handle scope around the
        // values made.
        unsafe {
            let mut scope = ptr::null_mut();
            if sys::napi_open_handle_scope(env, &mut scope) != sys::Status::napi_ok {
                return;
            }
            let mut f = ptr::null_mut();
            let mut recv = ptr::null_mut();
            sys::napi_get_reference_value(env, func, &mut f);
            sys::napi_get_global(env, &mut recv);
            if !f.is_null() {
                let a = arg(env);
                let mut result = ptr::null_mut();
                let status = sys::napi_make_callback(env, ptr::null_mut(), recv, f, 1, &a, &mut result);
                if status == sys::Status::napi_pending_exception {
                    let mut e = ptr::null_mut();
                    if sys::napi_get_and_clear_last_exception(env, &mut e) == sys::Status::napi_ok {
                        sys::napi_fatal_exception(env, e);
                    }
                }
            }
            sys::napi_close_handle_scope(env, scope);
        }
    }

    /// Reads what the socket has, answers pings and closes, and delivers the messages.
    fn readable(self: &Rc<Self>) {
        let (http, serve) = {
            let st = self.state.borrow();
            (matches!(st.input, Input::Http(_)), matches!(st.input, Input::Serve(_)))
        };
        if http {
            return self.readable_http();
        }
        if serve {
            return self.readable_serve();
        }
        let mut texts: Vec<String> = Vec::new();
        let mut close_after = false;
        {
            let mut st = self.state.borrow_mut();
            let st = &mut *st;
            let client = self.client;
            let Input::Ws(decoder) = &mut st.input else { return };
            if let Some(stream) = st.stream.as_mut() {
                let pumped = decoder.pump(stream, READ_BUDGET, client, &mut st.out, |m| match m {
                    Message::Text(t) => texts.push(t.to_string()),
                    // The reference parses binary frames as JSON too.
                    Message::Binary(b) => {
                        if let Ok(t) = std::str::from_utf8(b) {
                            texts.push(t.to_string());
                        }
                    }
                    _ => {}
                });
                let why = match pumped {
                    Pumped::Open => None,
                    Pumped::Ended(error) => Some(error.unwrap_or_else(|| "the peer closed the connection".into())),
                    Pumped::PeerClosed(code) => {
                        st.peer_close = Some(code.unwrap_or(1005));
                        Some("the peer closed the connection".into())
                    }
                    Pumped::Violation(e) => Some(e.to_string()),
                };
                if let Some(why) = why {
                    st.ended.get_or_insert(why);
                    close_after = true;
                }
            }
        }
        self.delivered(&texts, close_after);
    }

    /// Reads what an HTTP client socket has and delivers the replies it completes, as
    /// `[status, body, status, body, ...]` (strings); a reply that asks to close the connection,
    /// a bad reply or the end of the socket closes it after the delivery.
    fn readable_http(self: &Rc<Self>) {
        let mut texts: Vec<String> = Vec::new();
        let mut close_after = false;
        let idle;
        {
            let mut st = self.state.borrow_mut();
            let st = &mut *st;
            let Input::Http(inp) = &mut st.input else { return };
            let mut eof = false;
            if let Some(stream) = st.stream.as_mut() {
                match read_available(stream, |b| {
                    inp.buf.extend_from_slice(b);
                    true
                }) {
                    Drained::Eof => eof = true,
                    Drained::Failed(e) => {
                        st.ended.get_or_insert(e);
                        close_after = true;
                    }
                    Drained::Paused | Drained::Stopped => {}
                }
            }
            let mut off = 0;
            while off < inp.buf.len() || eof {
                match http_handoff::parse_response(&inp.buf[off..], eof, MAX_MESSAGE) {
                    Ok(None) => break,
                    Ok(Some(r)) => {
                        off += r.consumed;
                        if (100..200).contains(&r.status) {
                            continue;
                        }
                        inp.awaiting = inp.awaiting.saturating_sub(1);
                        texts.push(r.status.to_string());
                        texts.push(String::from_utf8_lossy(&r.body).into_owned());
                        if r.close {
                            st.ended.get_or_insert_with(|| "the server closed the connection after its reply".into());
                            close_after = true;
                            break;
                        }
                    }
                    Err(e) => {
                        st.ended.get_or_insert(e);
                        close_after = true;
                        break;
                    }
                }
            }
            inp.buf.drain(..off);
            if eof {
                st.ended.get_or_insert_with(|| "the peer closed the connection".into());
                close_after = true;
            }
            idle = inp.awaiting == 0;
        }
        if idle && !self.closed.get() {
            // SAFETY: the handle is live until closed.
            unsafe { uv_unref(self.handle) };
        }
        self.delivered(&texts, close_after);
    }

    /// Reads what an HTTP server socket has and delivers the requests it completes, six strings
    /// each: `[seq, flags, body, _gr, _a, _ar]` (`flags`: `c` gzip asked, `s` chunked body, `g`,
    /// `a`, `r` the headers present). Replies go back with `replyHttp(seq, ...)`, in any order;
    /// they are written in request order.
    fn readable_serve(self: &Rc<Self>) {
        let mut reqs = Vec::new();
        let mut close_after = false;
        {
            let mut st = self.state.borrow_mut();
            let st = &mut *st;
            let Input::Serve(srv) = &mut st.input else { return };
            let mut eof = false;
            if let Some(stream) = st.stream.as_mut()
                && srv.reading()
                && !st.closing
            {
                let drained = read_available(stream, |b| {
                    if srv.extend(b) {
                        return true;
                    }
                    srv.refuse(503, "ERR_BUSY");
                    false
                });
                match drained {
                    Drained::Eof => eof = true,
                    Drained::Failed(e) => {
                        st.ended.get_or_insert(e);
                        close_after = true;
                    }
                    Drained::Paused | Drained::Stopped => {}
                }
            }
            let now = Instant::now();
            srv.parse(now, &mut reqs, &mut st.out);
            if eof && srv.end_input() {
                st.ended.get_or_insert_with(|| "the peer closed the connection".into());
                close_after = true;
            }
            if srv.ready(now, &mut st.out) {
                st.closing = true;
            }
        }
        if !reqs.is_empty() {
            let mut texts = Vec::with_capacity(reqs.len() * 6);
            for r in reqs {
                let mut flags = String::new();
                for (on, c) in
                    [(r.compress, 'c'), (r.stream, 's'), (r.gr.is_some(), 'g'), (r.action.is_some(), 'a'), (r.args.is_some(), 'r')]
                {
                    if on {
                        flags.push(c);
                    }
                }
                texts.push(r.seq.to_string());
                texts.push(flags);
                texts.push(String::from_utf8(r.body).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()));
                texts.push(r.gr.unwrap_or_default());
                texts.push(r.action.unwrap_or_default());
                texts.push(r.args.unwrap_or_default());
            }
            deliver(|| {
                self.call_js(self.on_messages, |env| strings(env, &texts));
            });
        }
        if close_after {
            self.end();
        } else {
            self.flush();
        }
    }

    /// After a read: hands the messages it brought to JS in one call, then ends the socket
    /// (`close_after`) or writes what the call queued.
    fn delivered(self: &Rc<Self>, texts: &[String], close_after: bool) {
        if !texts.is_empty() {
            deliver(|| {
                self.call_js(self.on_messages, |env| strings(env, texts));
            });
        }
        if close_after {
            self.end();
        } else if !self.state.borrow().out.is_empty() {
            self.flush();
        }
    }

    /// Closes the socket and tells JS why (once).
    fn end(self: &Rc<Self>) {
        if self.closed.get() {
            return;
        }
        let why = self.state.borrow_mut().ended.take().unwrap_or_else(|| "closed".into());
        self.close();
        deliver(|| {
            self.call_js(self.on_close, |env| string(env, &why));
        });
    }
}

/// How [`read_available`] stopped.
enum Drained {
    /// The socket has nothing more now, or the read budget is spent.
    Paused,
    /// `take` asked to stop.
    Stopped,
    /// The peer ended its side.
    Eof,
    Failed(String),
}

/// Reads what `stream` has now, up to [`READ_BUDGET`] bytes, handing each piece to `take`
/// (false: stop). A short read ends it: the socket has nothing more (no pointless read that
/// would only say so).
fn read_available(stream: &mut std::net::TcpStream, mut take: impl FnMut(&[u8]) -> bool) -> Drained {
    use std::io::Read;
    let mut chunk = [0u8; 16 << 10];
    let mut budget = READ_BUDGET;
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return Drained::Eof,
            Ok(n) => {
                if !take(&chunk[..n]) {
                    return Drained::Stopped;
                }
                budget = budget.saturating_sub(n);
                if n < chunk.len() || budget == 0 {
                    return Drained::Paused;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Drained::Paused,
            Err(e) => return Drained::Failed(e.to_string()),
        }
    }
}

/// Runs a delivery into JS; frames queued meanwhile are written once the outermost one returns.
fn deliver(f: impl FnOnce()) {
    DELIVERING.with(|d| d.set(d.get() + 1));
    f();
    let depth = DELIVERING.with(|d| {
        d.set(d.get() - 1);
        d.get()
    });
    if depth == 0 {
        let dirty = DIRTY.with(|d| std::mem::take(&mut *d.borrow_mut()));
        for c in dirty {
            c.state.borrow_mut().dirty = false;
            c.flush();
        }
    }
}

fn string(env: sys::napi_env, s: &str) -> sys::napi_value {
    let mut v = ptr::null_mut();
    // SAFETY: called with a handle scope open on the JS thread.
    unsafe { sys::napi_create_string_utf8(env, s.as_ptr().cast(), s.len() as isize, &mut v) };
    v
}

fn strings(env: sys::napi_env, items: &[String]) -> sys::napi_value {
    let mut arr = ptr::null_mut();
    // SAFETY: as in `string`.
    unsafe {
        sys::napi_create_array_with_length(env, items.len(), &mut arr);
        for (i, s) in items.iter().enumerate() {
            sys::napi_set_element(env, arr, i as u32, string(env, s));
        }
    }
    arr
}

unsafe extern "C" fn on_poll(handle: *mut c_void, status: c_int, events: c_int) {
    // SAFETY: `data` (the first field of every uv handle) holds the `Rc<Conn>` leaked in
    // `NativeLoopConn::new` until `on_closed`.
    let conn: &Conn = unsafe { &*(*(handle as *mut *const Conn)) };
    // A temporary strong reference, so that a close inside the callbacks keeps `conn` alive.
    // SAFETY: the pointer came from `Rc::into_raw` and the handle's reference is still held.
    let conn = unsafe {
        Rc::increment_strong_count(conn as *const Conn);
        Rc::from_raw(conn as *const Conn)
    };
    if conn.closed.get() {
        return;
    }
    if status < 0 {
        conn.state.borrow_mut().ended.get_or_insert_with(|| format!("poll error {status}"));
        conn.end();
        return;
    }
    if events & UV_WRITABLE != 0 {
        conn.flush();
    }
    if events & UV_READABLE != 0 {
        conn.readable();
    } else if conn.state.borrow().ended.is_some() {
        conn.end();
    }
}

unsafe extern "C" fn on_closed(handle: *mut c_void) {
    // SAFETY: see `on_poll`; this is the last use of the handle, whose memory was allocated as
    // a Vec<u64> in `NativeLoopConn::new`.
    unsafe {
        let conn = Rc::from_raw(*(handle as *mut *const Conn));
        let words = conn.handle_words;
        let env = conn.env;
        sys::napi_delete_reference(env, conn.on_messages);
        sys::napi_delete_reference(env, conn.on_close);
        drop(conn);
        drop(Vec::from_raw_parts(handle as *mut u64, words, words));
    }
}

/// A socket dialed or accepted by the core and not yet driven by the loop (it may cross
/// threads).
#[napi]
pub struct NativeWsSocket {
    inner: Mutex<Option<HandedOff>>,
    /// A socket a loop server handed over: its place in the server's count of sockets not yet
    /// taken by JS, given back when the socket is taken (or dropped untaken).
    queued: Mutex<Option<Queued>>,
}

/// One socket counted in a [`NativeLoopServer`]'s sockets waiting for the JS thread.
struct Queued(Arc<AtomicUsize>);

impl Drop for Queued {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl NativeWsSocket {
    fn new(h: HandedOff, queued: Option<Queued>) -> Self {
        NativeWsSocket { inner: Mutex::new(Some(h)), queued: Mutex::new(queued) }
    }

    /// Takes the socket (once); it leaves the server's count of sockets waiting.
    fn take(&self) -> Option<HandedOff> {
        let h = self.inner.lock().unwrap_or_else(|e| e.into_inner()).take();
        drop(self.queued.lock().unwrap_or_else(|e| e.into_inner()).take());
        h
    }
}

#[napi]
impl NativeWsSocket {
    /// The peer's IP address (empty once the socket was taken).
    #[napi(getter)]
    pub fn remote_ip(&self) -> String {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|h| h.remote.ip().to_string()).unwrap_or_default()
    }
}

/// A socket driven by Node's loop: `onMessages(texts)` for every batch of messages read,
/// `onClose(reason)` once when it ends (not after `close()`).
#[napi]
pub struct NativeLoopConn {
    conn: Rc<Conn>,
}

#[napi]
impl NativeLoopConn {
    #[napi(constructor)]
    pub fn new(env: Env, socket: &NativeWsSocket, client: bool, on_messages: Function<'_>, on_close: Function<'_>) -> napi::Result<Self> {
        let h = socket.take();
        let Some(h) = h else { return Err(napi::Error::new(Status::InvalidArg, "this socket was already taken")) };
        let input = Input::Ws(Decoder::new(client, MAX_MESSAGE, h.leftover));
        Self::adopt(env, h.stream, input, client, on_messages, on_close)
    }

    /// A plain HTTP/1.1 client connection (from [`tcp_dial`]) driven by the loop:
    /// `sendHttp(host, body)` posts a request, `onMessages([status, body, ...])` gets the
    /// replies. It keeps the process alive while a reply is awaited.
    #[napi(factory)]
    pub fn http(env: Env, socket: &NativeWsSocket, on_messages: Function<'_>, on_close: Function<'_>) -> napi::Result<Self> {
        let h = socket.take();
        let Some(h) = h else { return Err(napi::Error::new(Status::InvalidArg, "this socket was already taken")) };
        let input = Input::Http(HttpIn { buf: h.leftover, awaiting: 0 });
        Self::adopt(env, h.stream, input, true, on_messages, on_close)
    }

    /// A plain HTTP/1.1 server connection (from a [`NativeLoopServer::listen_tcp`] server)
    /// driven by the loop: `onMessages([seq, flags, body, _gr, _a, _ar, ...])` gets whole
    /// requests, `replyHttp(seq, status, body)` answers each. `limits`: the core's server limits
    /// by name (`serverLimits()`), of which the body and read deadlines apply here
    /// ([`NativeLoopConn::expire`] checks the deadlines).
    #[napi(factory)]
    pub fn http_server(
        env: Env,
        socket: &NativeWsSocket,
        limits: std::collections::HashMap<String, f64>,
        on_messages: Function<'_>,
        on_close: Function<'_>,
    ) -> napi::Result<Self> {
        let h = socket.take();
        let Some(h) = h else { return Err(napi::Error::new(Status::InvalidArg, "this socket was already taken")) };
        let input = Input::Serve(Box::new(Serve::new(h.leftover, http_handoff::Limits::from_table(&limits))));
        Self::adopt(env, h.stream, input, false, on_messages, on_close)
    }

    fn adopt(
        env: Env,
        stream: std::net::TcpStream,
        input: Input,
        client: bool,
        on_messages: Function<'_>,
        on_close: Function<'_>,
    ) -> napi::Result<Self> {
        let raw_env = env.raw();
        let mut lp = ptr::null_mut();
        // SAFETY: plain napi calls on the JS thread with live values.
        let (on_messages, on_close) = unsafe {
            check(sys::napi_get_uv_event_loop(raw_env, &mut lp))?;
            let mut a = ptr::null_mut();
            let mut b = ptr::null_mut();
            check(sys::napi_create_reference(raw_env, on_messages.raw(), 1, &mut a))?;
            check(sys::napi_create_reference(raw_env, on_close.raw(), 1, &mut b))?;
            (a, b)
        };
        // SAFETY: asks libuv for the size of its own struct.
        let words = unsafe { uv_handle_size(UV_POLL) }.div_ceil(8);
        let mut mem = vec![0u64; words.max(1)];
        let handle = mem.as_mut_ptr().cast::<c_void>();
        let words = mem.len();
        std::mem::forget(mem);
        use std::os::fd::AsRawFd;
        let fd = stream.as_raw_fd();
        let conn = Rc::new(Conn {
            env: raw_env,
            handle,
            handle_words: words,
            client,
            state: RefCell::new(State {
                stream: Some(stream),
                input,
                out: Vec::new(),
                events: UV_READABLE,
                dirty: false,
                ended: None,
                peer_close: None,
                closing: false,
                stalled_since: None,
            }),
            on_messages,
            on_close,
            closed: Cell::new(false),
        });
        // SAFETY: `handle` is zeroed memory of the poll handle's size; its first field (`data`)
        // gets the handle's own strong reference, given back in `on_closed`.
        unsafe {
            if uv_poll_init(lp, handle, fd) != 0 {
                drop(Vec::from_raw_parts(handle as *mut u64, words, words));
                sys::napi_delete_reference(raw_env, on_messages);
                sys::napi_delete_reference(raw_env, on_close);
                return Err(napi::Error::new(Status::GenericFailure, "uv_poll_init failed"));
            }
            *(handle as *mut *const Conn) = Rc::into_raw(conn.clone());
            uv_poll_start(handle, UV_READABLE, on_poll);
            crate::spin::watch(raw_env, lp, fd);
            // A socket alone does not keep the process alive: the caller refs it while it
            // waits for replies (`setRef`), a server while it listens.
            uv_unref(handle);
        }
        Ok(NativeLoopConn { conn })
    }

    /// Reads and delivers what is already there (the bytes that came with the handshake may hold
    /// whole messages, which no poll would announce): call once after the constructor.
    #[napi]
    pub fn pump(&self) {
        if !self.conn.closed.get() {
            self.conn.readable();
        }
    }

    /// Sends one text message; false when the socket is closed.
    #[napi]
    pub fn send(&self, text: String) -> bool {
        let client = self.conn.client;
        self.conn.queue(|out| handoff::encode_text(out, &text, client))
    }

    /// HTTP server: the reply to request `seq` (`body`: JSON text; gzipped here when the
    /// request asked for it). Replies are written in request order. Returns true when requests
    /// read earlier wait to be cut from the input (a client that sent many at once): call
    /// `pump()` soon (not from inside this call's caller's delivery).
    #[napi]
    pub fn reply_http(&self, seq: u32, status: u32, body: String) -> bool {
        let mut pump = false;
        self.conn.queue_with(|st| {
            if let Input::Serve(srv) = &mut st.input
                && srv.answer(seq, u16::try_from(status).unwrap_or(500), body.as_bytes())
            {
                if srv.ready(Instant::now(), &mut st.out) {
                    st.closing = true;
                }
                pump = srv.unparsed() && srv.reading() && !st.closing;
            }
        });
        pump
    }

    /// A server's socket, now and then: closes it when its peer took none of its replies for
    /// 30 s (as the core's servers do) and, for an HTTP server, applies the read deadlines and
    /// the idle limit. True when the socket was closed now (`onClose` is not called); a late
    /// body is answered `408` after the replies due before it, then the socket ends as after any
    /// last reply.
    #[napi]
    pub fn expire(&self) -> bool {
        let why: Option<String> = {
            let mut st = self.conn.state.borrow_mut();
            let st = &mut *st;
            if self.conn.closed.get() {
                return false;
            }
            let now = Instant::now();
            if !st.out.is_empty() {
                // Replies waiting for the peer to read: it has WRITE_STALL to take some.
                if st.stalled_since.is_none_or(|t| now.saturating_duration_since(t) <= WRITE_STALL) {
                    return false;
                }
                Some("the peer does not read its replies".into())
            } else if st.closing || st.ended.is_some() {
                return false;
            } else if let Input::Serve(srv) = &mut st.input {
                match srv.expire(now) {
                    Expiry::Keep => return false,
                    Expiry::Close(why) => Some(why.into()),
                    Expiry::LateBody => {
                        srv.refuse(408, grenache::rpc::ERR_TIMEOUT);
                        if srv.ready(now, &mut st.out) {
                            st.closing = true;
                        }
                        None
                    }
                }
            } else {
                return false;
            }
        };
        let Some(why) = why else {
            self.conn.flush();
            return false;
        };
        self.conn.state.borrow_mut().ended = Some(why);
        self.conn.close();
        true
    }

    /// HTTP: posts `body` (JSON text) to `/` of `host` on this connection; false when the
    /// socket is closed. Send one request at a time: the next once the reply came.
    #[napi]
    pub fn send_http(&self, host: String, body: String) -> bool {
        if host.bytes().any(|b| b.is_ascii_control()) {
            return false;
        }
        if !self.idle_and_open() {
            return false;
        }
        let sent = self.conn.queue(|out| {
            let _ = write!(
                out,
                "POST / HTTP/1.1\r\nhost: {host}\r\ngrc-compress: none\r\ncontent-type: text/plain;charset=UTF-8\r\ncontent-length: {}\r\n\r\n",
                body.len()
            );
            out.extend_from_slice(body.as_bytes());
        });
        if sent {
            if let Input::Http(inp) = &mut self.conn.state.borrow_mut().input {
                inp.awaiting += 1;
            }
            // SAFETY: the handle is live (the socket is open).
            unsafe { uv_ref(self.conn.handle) };
        }
        sent
    }

    /// Before a request goes on a connection that awaits nothing (a reused keep-alive one):
    /// false when the server already closed it (its FIN arrived since the loop last polled) or
    /// sent bytes nobody asked for; the connection is then ended. A request is written at most
    /// once, so a connection the server closed is found here, before the write, not from a
    /// missing reply after it.
    fn idle_and_open(&self) -> bool {
        let mut st = self.conn.state.borrow_mut();
        let st = &mut *st;
        let awaiting = match &st.input {
            Input::Http(inp) => inp.awaiting,
            _ => return true,
        };
        let Some(stream) = st.stream.as_ref() else { return false };
        if awaiting > 0 || st.ended.is_some() {
            return st.ended.is_none();
        }
        let mut byte = [0u8; 1];
        let why = match stream.peek(&mut byte) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
            Ok(0) => "the peer closed the connection".to_string(),
            Ok(_) => "the peer sent bytes that answer no request".to_string(),
            Err(e) => e.to_string(),
        };
        let _ = stream.shutdown(std::net::Shutdown::Both);
        st.ended = Some(why);
        false
    }

    /// Whether the socket keeps the process alive (while replies are awaited).
    #[napi]
    pub fn set_ref(&self, on: bool) {
        if !self.conn.closed.get() {
            // SAFETY: the handle is live until closed.
            unsafe {
                if on {
                    uv_ref(self.conn.handle);
                } else {
                    uv_unref(self.conn.handle);
                }
            }
        }
    }

    #[napi(getter)]
    pub fn open(&self) -> bool {
        !self.conn.closed.get() && self.conn.state.borrow().ended.is_none()
    }

    /// The close code the peer sent (1005 for a close frame without one), 0 when it sent none.
    #[napi(getter)]
    pub fn peer_close_code(&self) -> u32 {
        self.conn.state.borrow().peer_close.map_or(0, u32::from)
    }

    /// Sends a close frame (1000, 1001 with `goingAway`, or `code`) and closes the socket;
    /// `onClose` is not called.
    #[napi]
    pub fn close(&self, going_away: Option<bool>, code: Option<u32>) {
        let client = self.conn.client;
        let code = code.and_then(|c| u16::try_from(c).ok()).unwrap_or(if going_away.unwrap_or(false) { 1001 } else { 1000 });
        {
            let mut st = self.conn.state.borrow_mut();
            if st.stream.is_some() && st.ended.is_none() && matches!(st.input, Input::Ws(_)) {
                handoff::encode_close(&mut st.out, code, "", client);
            }
        }
        self.conn.close();
    }
}

type SocketDone = ThreadsafeFunction<
    FnArgs<(Option<u32>, Option<String>, Option<NativeWsSocket>)>,
    (),
    FnArgs<(Option<u32>, Option<String>, Option<NativeWsSocket>)>,
    Status,
    false,
>;

/// Dials `ws://dest/ws` on the core's runtime: `done(code, message, socket)`.
#[napi]
pub fn ws_dial(dest: String, timeout_ms: Option<u32>, done: SocketDone) -> napi::Result<(), ErrName> {
    let rt = runtime()?;
    let timeout = timeout_ms.map_or(DIAL_TIMEOUT, |t| Duration::from_millis(u64::from(t)));
    rt.spawn(async move {
        let args = match handoff::dial_plain(&dest, timeout).await {
            Ok(h) => (None, None, Some(NativeWsSocket::new(h, None))),
            Err(e) => (Some(e.code()), Some(e.text().to_string()), None),
        };
        done.call(FnArgs::from(args), ThreadsafeFunctionCallMode::NonBlocking);
    });
    Ok(())
}

/// Dials TCP `dest` ("host:port") on the core's runtime, Nagle off: `done(code, message,
/// socket)`, the socket for [`NativeLoopConn::http`].
#[napi]
pub fn tcp_dial(dest: String, timeout_ms: Option<u32>, done: SocketDone) -> napi::Result<(), ErrName> {
    use grenache::{Error, ErrorKind};
    let rt = runtime()?;
    let timeout = timeout_ms.map_or(DIAL_TIMEOUT, |t| Duration::from_millis(u64::from(t)));
    rt.spawn(async move {
        let dial = async {
            let tcp = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(dest.as_str()))
                .await
                .map_err(|_| Error::new(ErrorKind::Connect, format!("connect to {dest}: timed out")))?
                .map_err(|e| Error::new(ErrorKind::Connect, format!("connect to {dest}: {e}")))?;
            tcp.set_nodelay(true)?;
            let remote = tcp.peer_addr()?;
            let stream = tcp.into_std()?;
            Ok::<_, Error>(HandedOff { stream, leftover: Vec::new(), remote })
        };
        let args = match dial.await {
            Ok(h) => (None, None, Some(NativeWsSocket::new(h, None))),
            Err(e) => (Some(e.code()), Some(e.text().to_string()), None),
        };
        done.call(FnArgs::from(args), ThreadsafeFunctionCallMode::NonBlocking);
    });
    Ok(())
}

type SocketFn = ThreadsafeFunction<NativeWsSocket, (), NativeWsSocket, Status, false, true>;

/// A WS server whose plain sockets are handed to `on_socket(socket)` on the JS thread
/// ([`NativeLoopServer::listen`]), or a TCP listener whose accepted sockets are
/// ([`NativeLoopServer::listen_tcp`], for HTTP).
#[napi]
pub struct NativeLoopServer {
    server: Arc<Mutex<Option<Listening>>>,
    port: u16,
}

enum Listening {
    Ws(WsServer),
    Tcp(tokio::task::JoinHandle<()>),
}

/// Hands a socket to the JS thread unless `cap` sockets already wait for it (then it is dropped:
/// closed).
fn hand_over(on_socket: &SocketFn, waiting: &Arc<AtomicUsize>, cap: usize, h: HandedOff) {
    if waiting.fetch_add(1, Ordering::AcqRel) >= cap {
        waiting.fetch_sub(1, Ordering::AcqRel);
        return;
    }
    let queued = Queued(Arc::clone(waiting));
    on_socket.call(NativeWsSocket::new(h, Some(queued)), ThreadsafeFunctionCallMode::NonBlocking);
}

fn default_cap(max_queued: Option<u32>) -> usize {
    max_queued.map_or_else(|| grenache::transport::ServerLimits::default().get("max_connections").unwrap_or(0) as usize, |n| n as usize)
}

#[napi]
impl NativeLoopServer {
    /// Listens on `port` (0: any). `maxQueued` (default: the core's `max_connections`) bounds
    /// the sockets handed over and not yet taken by the JS thread (it may be busy): past it a
    /// socket is closed at once instead of waiting in the call queue.
    #[napi(factory)]
    pub fn listen(port_: Option<u32>, on_socket: SocketFn, max_queued: Option<u32>) -> napi::Result<Self, ErrName> {
        let rt = runtime()?;
        let p = port(port_)?;
        let cap = default_cap(max_queued);
        let waiting = Arc::new(AtomicUsize::new(0));
        let hook: handoff::HandOff = Arc::new(move |h: HandedOff| hand_over(&on_socket, &waiting, cap, h));
        let addr = std::net::SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, p));
        // No handler is ever called: every plain socket is handed off (a TLS one is refused by
        // the absence of TLS settings: the server speaks plain ws only).
        let refuse = |_r: grenache::rpc::Request, reply: grenache::rpc::Reply| reply.err("ERR_NO_HANDLER");
        let server = rt
            .block_on(Duration::from_secs(10), async move { WsServer::bind(addr, refuse, WsServerConfig::default().hand_off(hook)).await })
            .map_err(|e| js_err(&e))?;
        let port = server.port();
        Ok(NativeLoopServer { server: Arc::new(Mutex::new(Some(Listening::Ws(server)))), port })
    }

    /// Listens on TCP `port` (0: any) and hands every accepted socket (Nagle off) to
    /// `on_socket`, for [`NativeLoopConn::http_server`]; `maxQueued` as in `listen`.
    #[napi(factory)]
    pub fn listen_tcp(port_: Option<u32>, on_socket: SocketFn, max_queued: Option<u32>) -> napi::Result<Self, ErrName> {
        let rt = runtime()?;
        let p = port(port_)?;
        let cap = default_cap(max_queued);
        let addr = std::net::SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, p));
        let listener =
            rt.block_on(Duration::from_secs(10), async move { Ok(grenache::transport::listen(addr)?) }).map_err(|e| js_err(&e))?;
        let port = listener.local_addr().map_err(|e| js_err(&e.into()))?.port();
        let waiting = Arc::new(AtomicUsize::new(0));
        let task = rt.handle().spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((tcp, remote)) => {
                        let _ = tcp.set_nodelay(true);
                        if let Ok(stream) = tcp.into_std() {
                            hand_over(&on_socket, &waiting, cap, HandedOff { stream, leftover: Vec::new(), remote });
                        }
                    }
                    // Out of descriptors or the like: a pause, not a busy loop.
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        Ok(NativeLoopServer { server: Arc::new(Mutex::new(Some(Listening::Tcp(task)))), port })
    }

    #[napi(getter)]
    pub fn port(&self) -> u32 {
        u32::from(self.port)
    }

    /// Stops listening (sockets already handed over are the JS side's to close).
    #[napi]
    pub fn close(&self) -> napi::Result<(), ErrName> {
        let server = self.server.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(s) = server {
            let rt = runtime()?;
            rt.block_on(Duration::from_secs(10), async move {
                match s {
                    Listening::Ws(s) => s.close().await,
                    Listening::Tcp(task) => {
                        task.abort();
                        let _ = task.await;
                    }
                }
                Ok(())
            })
            .map_err(|e| js_err(&e))?;
        }
        Ok(())
    }
}
