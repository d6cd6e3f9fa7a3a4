//! `grenache._native`: the pyo3 face of the core's [`grenache::embed`] facade.
//!
//! This module is private; the `grenache` Python package (in `python/grenache`) wraps it with the
//! public API: JSON conversion, the exception classes, asyncio glue, context managers.
//!
//! Rules this module keeps:
//! * every wait releases the GIL and wakes every 100 ms to let Python deliver signals
//!   (Ctrl-C interrupts a blocking call; the operation then finishes in the background);
//! * nothing that may wait for a library thread runs with the GIL held (closing waits for the
//!   callbacks in flight, and they need the GIL), and objects dropped by Python's garbage
//!   collector are closed on a thread of their own for the same reason;
//! * a blocking call can poll for its result for a few tens of microseconds (GIL released,
//!   bounded, adaptive; off by default, see `spin`) before it sleeps, which saves the wake-up
//!   of the calling thread on fast round trips where cores are spare;
//! * the asyncio path goes through an `Inbox` per event loop: completions (and requests for
//!   `async def` handlers) are queued without the GIL, and the loop is woken once per batch
//!   through a socket it watches, not once per reply;
//! * an `async def` handler's plain WS server hands its sockets to the handler's loop, which
//!   reads and writes them itself (`inloop`): no thread between a request and its reply;
//! * plain request handlers run on a small pool of threads of this module (`Pool`) that take
//!   the GIL once and call the handler for every queued request in a row; a handler that blocks
//!   lets another thread of the pool take over, so a slow Python handler never stalls the I/O
//!   threads nor the other requests;
//! * errors become instances of the package's exception classes (`_set_error_factory`).

use std::cell::Cell;
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use grenache::embed::{
    self, ClientOptions, ClientTls, EmbedClient, EmbedGrape, EmbedLink, EmbedPublisher, EmbedServer, EmbedSubscriber, GrapeConfig,
    Keypair as CoreKeypair, LinkConfig, MutableItem, RequestOptions, ServerOptions, ServerTls,
};
use grenache::rpc::{Request, TransportKind};
use grenache::tls::ClientAuth;
use grenache::{Error, ErrorKind, Result as GResult};
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;

mod aioclient;
mod inloop;
mod lf;
mod loop_spin;

/// How often a blocking wait wakes up to check for signals.
const TICK: Duration = Duration::from_millis(100);

static ERROR_FACTORY: OnceLock<Py<PyAny>> = OnceLock::new();

/// The process's runtime (see [`embed::shared_runtime`]).
fn runtime(py: Python<'_>) -> PyResult<embed::Runtime> {
    embed::shared_runtime().map_err(|e| py_err(py, &e))
}

/// The exception instance for `e` (a class of the package's hierarchy once it registered its
/// factory; a `RuntimeError` before that).
fn error_value(py: Python<'_>, e: &Error) -> Py<PyAny> {
    let made = ERROR_FACTORY.get().map(|f| f.call1(py, (e.code(), e.kind().name(), e.text())));
    match made {
        Some(Ok(v)) => v,
        Some(Err(err)) => err.into_value(py).into_any(),
        None => PyRuntimeError::new_err(format!("{}: {}", e.kind().name(), e.text())).into_value(py).into_any(),
    }
}

fn py_err(py: Python<'_>, e: &Error) -> PyErr {
    PyErr::from_value(error_value(py, e).into_bound(py))
}

fn invalid(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidArgument, message)
}

/// The environment variable that sets how long blocking waits, and asyncio loops that drive the
/// package's sockets, poll before they sleep, in microseconds (at most 1000; 0 turns both off).
/// Unset, blocking waits do not poll and those loops poll 50 µs (`loop_spin.rs`).
const POLL_ENV: &str = "GRENACHE_PYTHON_POLL_US";

/// How long a blocking wait polls for its result before it sleeps (the idea of the core's
/// WebSocket `busy_poll`, applied to the hop from the library's thread to the caller's):
/// [`POLL_ENV`], read once.
///
/// Off by default: on the two-core development machine, with the peer on the same machine,
/// polling measured no faster over WS and half as fast over HTTP (the polling thread takes a
/// core the I/O threads need). It pays where cores are spare and round trips short.
/// Idle handler threads never poll for the next request, for the same reason.
fn spin() -> Duration {
    static SPIN: OnceLock<Duration> = OnceLock::new();
    *SPIN.get_or_init(|| grenache::transport::loop_spin::budget_from_env(POLL_ENV))
}

/// How long an asyncio loop that drives the package's sockets polls before it sleeps
/// ([`POLL_ENV`], read once; unset: the core's default, 50 µs on two CPUs or more).
fn loop_spin_budget() -> Duration {
    static SPIN: OnceLock<Duration> = OnceLock::new();
    *SPIN.get_or_init(|| grenache::transport::loop_spin::budget_from_env_or_default(POLL_ENV))
}

/// Every this many waits, a thread whose waits stopped ending within [`spin`] polls once more,
/// to notice when round trips got fast again.
const SPIN_PROBE: u32 = 32;

thread_local! {
    /// Whether this thread's next blocking wait polls first, and the waits since it stopped.
    static SPINNING: Cell<(bool, u32)> = const { Cell::new((true, 0)) };
}

/// Where a completion leaves its result for a blocking caller.
struct Slot<T> {
    ready: AtomicBool,
    value: Mutex<(Option<GResult<T>>, bool)>,
    wake: Condvar,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<T> Slot<T> {
    fn put(&self, r: GResult<T>) {
        let mut v = lock(&self.value);
        v.0 = Some(r);
        self.ready.store(true, Ordering::Release);
        // The waiter is asleep only when it said so (under the same lock): no futex call on the
        // fast path, where it was still polling.
        if v.1 {
            self.wake.notify_one();
        }
    }

    /// The result, or `None` when none came within `tick`.
    fn take(&self, tick: Duration) -> Option<GResult<T>> {
        let mut v = lock(&self.value);
        let deadline = Instant::now() + tick;
        loop {
            if let Some(r) = v.0.take() {
                v.1 = false;
                return Some(r);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                v.1 = false;
                return None;
            }
            v.1 = true;
            v = self.wake.wait_timeout(v, left).map(|(g, _)| g).unwrap_or_else(|e| e.into_inner().0);
        }
    }
}

/// Waits for `slot` with the GIL released: polls for up to [`spin`] when this thread's recent
/// waits ended that fast (or to probe again), then sleeps in slices of [`TICK`], checking for
/// signals between them (Ctrl-C raises `KeyboardInterrupt`; the operation finishes in the
/// background).
fn wait_slot<T: Send + 'static>(py: Python<'_>, slot: &Arc<Slot<T>>) -> PyResult<GResult<T>> {
    let budget = spin();
    let (spinning, misses) = SPINNING.with(Cell::get);
    let probe = !spinning && misses % SPIN_PROBE == SPIN_PROBE - 1;
    let started = Instant::now();
    if (spinning || probe) && !budget.is_zero() {
        let s = Arc::clone(slot);
        py.detach(move || {
            while !s.ready.load(Ordering::Acquire) && started.elapsed() < budget {
                std::hint::spin_loop();
            }
        });
    }
    loop {
        if slot.ready.load(Ordering::Acquire)
            && let Some(r) = lock(&slot.value).0.take()
        {
            let fast = started.elapsed() <= budget;
            SPINNING.with(|c| c.set(if fast { (true, 0) } else { (false, misses.wrapping_add(1)) }));
            return Ok(r);
        }
        let s = Arc::clone(slot);
        if let Some(r) = py.detach(move || s.take(TICK)) {
            let fast = started.elapsed() <= budget;
            SPINNING.with(|c| c.set(if fast { (true, 0) } else { (false, misses.wrapping_add(1)) }));
            return Ok(r);
        }
        py.check_signals()?;
    }
}

/// Starts an operation whose completion fills a [`Slot`], and waits for it ([`wait_slot`]).
fn blocking<T: Send + 'static>(py: Python<'_>, start: impl FnOnce(Sender<T>)) -> PyResult<T> {
    let slot = Arc::new(Slot { ready: AtomicBool::new(false), value: Mutex::new((None, false)), wake: Condvar::new() });
    start(Sender(Some(Arc::clone(&slot))));
    match wait_slot(py, &slot)? {
        Ok(v) => Ok(v),
        Err(e) => Err(py_err(py, &e)),
    }
}

/// The completion side of [`blocking`]; dropped without a result, it reports an internal error
/// (the waiter never hangs).
struct Sender<T>(Option<Arc<Slot<T>>>);

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        if let Some(s) = self.0.take() {
            s.put(Err(Error::new(ErrorKind::Internal, "the operation ended without a result")));
        }
    }
}

fn sender<T: Send + 'static>(mut tx: Sender<T>) -> impl FnOnce(GResult<T>) + Send + 'static {
    move |r| {
        if let Some(s) = tx.0.take() {
            s.put(r);
        }
    }
}

/// A completion that calls `cb(error, result)` with the GIL (the asyncio path).
fn callback(cb: Py<PyAny>) -> impl FnOnce(GResult<String>) + Send + 'static {
    move |r| {
        Python::attach(|py| {
            let called = match r {
                Ok(text) => cb.call1(py, (py.None(), text)),
                Err(e) => cb.call1(py, (error_value(py, &e), py.None())),
            };
            if let Err(e) = called {
                e.print(py);
            }
        })
    }
}

/// Closes a handle away from the caller's thread: dropping it waits for callbacks in flight,
/// which may need the GIL that the garbage collector's thread holds.
fn close_in_background<T: Send + 'static>(value: T) {
    let _ = std::thread::Builder::new().name("grenache-close".into()).spawn(move || drop(value));
}

/// A facade handle owned by a Python object: shared with the closures that release the GIL,
/// and closed on a thread of its own when Python drops the object.
struct Handle<T: Send + Sync + 'static>(Option<Arc<T>>);

impl<T: Send + Sync + 'static> Handle<T> {
    fn new(value: T) -> Handle<T> {
        Handle(Some(Arc::new(value)))
    }
}

impl<T: Send + Sync + 'static> std::ops::Deref for Handle<T> {
    type Target = Arc<T>;
    fn deref(&self) -> &Arc<T> {
        // `None` only inside `drop`.
        self.0.as_ref().expect("a handle is set until it is dropped")
    }
}

impl<T: Send + Sync + 'static> Drop for Handle<T> {
    fn drop(&mut self) {
        if let Some(v) = self.0.take() {
            close_in_background(v);
        }
    }
}

fn transport_kind(py: Python<'_>, name: &str) -> PyResult<TransportKind> {
    name.parse().map_err(|e| py_err(py, &e))
}

/// Lets the package turn errors into its exception classes: `factory(code, name, message)`.
#[pyfunction]
fn _set_error_factory(factory: Py<PyAny>) {
    let _ = ERROR_FACTORY.set(factory);
}

/// Every error kind of the core, in code order, as `(code, name, family class, class, message)`:
/// the table the package derives its exception classes from.
#[pyfunction]
fn error_kinds() -> Vec<(u32, &'static str, &'static str, &'static str, &'static str)> {
    ErrorKind::ALL.iter().map(|k| (k.code(), k.name(), k.family().class_name(), k.class_name(), k.message())).collect()
}

/// The library's version.
#[pyfunction]
fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

/// True when this module is a debug build (benchmarks say which build they measured).
#[pyfunction]
fn _debug_build() -> bool {
    cfg!(debug_assertions)
}

/// A running Grape (DHT node + HTTP API).
#[pyclass(module = "grenache._native")]
struct Grape {
    inner: Mutex<Option<EmbedGrape>>,
    dht_port: u16,
    api_port: u16,
}

#[pymethods]
impl Grape {
    #[new]
    #[pyo3(signature = (dht_port=0, api_port=0, bootstrap=Vec::new(), host=None, dht_state=None, options=None))]
    fn new(
        py: Python<'_>,
        dht_port: u16,
        api_port: u16,
        bootstrap: Vec<String>,
        host: Option<String>,
        dht_state: Option<std::path::PathBuf>,
        options: Option<std::collections::BTreeMap<String, u64>>,
    ) -> PyResult<Grape> {
        let rt = runtime(py)?;
        let mut config = GrapeConfig::new();
        config.dht_port(dht_port).api_port(api_port).bootstrap(bootstrap).dht_state(dht_state);
        // The numeric options by name (the core's table: `GRAPE_OPTION_NAMES`).
        for (name, value) in options.unwrap_or_default() {
            config.set(&name, value).map_err(|e| py_err(py, &e))?;
        }
        if let Some(h) = host {
            let ip = h.parse().map_err(|_| py_err(py, &invalid(format!("host {h:?} is not an IP address"))))?;
            config.host(Some(ip));
        }
        let grape = py.detach(|| EmbedGrape::start(&rt, config)).map_err(|e| py_err(py, &e))?;
        let (dht_port, api_port) = grape.grape().map_or((0, 0), |g| (g.dht_addr().port(), g.api_addr().port()));
        Ok(Grape { inner: Mutex::new(Some(grape)), dht_port, api_port })
    }

    #[getter]
    fn dht_port(&self) -> u16 {
        self.dht_port
    }

    #[getter]
    fn api_port(&self) -> u16 {
        self.api_port
    }

    /// Stops the Grape and frees both ports (idempotent).
    fn stop(&self, py: Python<'_>) {
        let grape = self.inner.lock().unwrap_or_else(|e| e.into_inner()).take();
        py.detach(move || drop(grape));
    }
}

impl Drop for Grape {
    fn drop(&mut self) {
        if let Some(g) = self.inner.get_mut().unwrap_or_else(|e| e.into_inner()).take() {
            close_in_background(g);
        }
    }
}

/// A client of one Grape's HTTP API.
#[pyclass(module = "grenache._native")]
struct Link {
    inner: Handle<EmbedLink>,
}

#[pymethods]
impl Link {
    #[new]
    #[pyo3(signature = (grape, request_timeout_ms=None, lookup_cache_ms=None))]
    fn new(py: Python<'_>, grape: String, request_timeout_ms: Option<u64>, lookup_cache_ms: Option<u64>) -> PyResult<Link> {
        let rt = runtime(py)?;
        let mut config = LinkConfig::with_grape(grape);
        if let Some(t) = embed::millis(request_timeout_ms) {
            config.request_timeout = t;
        }
        if let Some(t) = embed::millis(lookup_cache_ms) {
            config.lookup_cache_ttl = t;
        }
        let link = EmbedLink::new(&rt, config).map_err(|e| py_err(py, &e))?;
        Ok(Link { inner: Handle::new(link) })
    }

    /// The workers of `name` as a JSON array text of `"host:port"`.
    fn lookup(&self, py: Python<'_>, name: String) -> PyResult<String> {
        blocking(py, |tx| self.inner.lookup(name, sender(tx)))
    }

    fn lookup_cb(&self, name: String, cb: Py<PyAny>) {
        self.inner.lookup(name, callback(cb));
    }

    fn announce(&self, py: Python<'_>, name: String, port: u16) -> PyResult<()> {
        blocking(py, |tx| self.inner.announce(name, port, sender(tx)))
    }

    fn announce_cb(&self, name: String, port: u16, cb: Py<PyAny>) {
        let done = callback(cb);
        self.inner.announce(name, port, move |r| done(r.map(|()| "null".to_string())));
    }

    fn start_announcing(&self, py: Python<'_>, name: &str, port: u16, interval_ms: u64) -> PyResult<()> {
        self.inner.start_announcing(name, port, Duration::from_millis(interval_ms)).map_err(|e| py_err(py, &e))
    }

    fn stop_announcing(&self, name: &str, port: u16) -> bool {
        self.inner.stop_announcing(name, port)
    }

    /// Removes the announce of (name, port) from the Grapes at once; returns how many DHT nodes
    /// removed it.
    fn unannounce(&self, py: Python<'_>, name: String, port: u16) -> PyResult<u64> {
        blocking(py, |tx| self.inner.unannounce(name, port, sender(tx)))
    }

    /// Pins `name` to the service's public keys (hex; empty unpins).
    fn pin_service(&self, py: Python<'_>, name: &str, keys: Vec<String>) -> PyResult<()> {
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        self.inner.pin_service(name, &keys).map_err(|e| py_err(py, &e))
    }

    /// Signs the announces of `name` with `keys` (proofs valid `ttl_ms`; no keys stops).
    fn sign_announcements(&self, py: Python<'_>, name: &str, keys: Vec<PyRef<'_, Keypair>>, ttl_ms: u64) -> PyResult<()> {
        let keys = keys.iter().map(|k| k.inner.clone()).collect();
        let ttl = if ttl_ms == 0 { Duration::from_secs(600) } else { Duration::from_millis(ttl_ms) };
        self.inner.sign_announcements(name, keys, ttl).map_err(|e| py_err(py, &e))
    }

    /// Stores an immutable item (JSON text); returns its hex hash.
    fn put(&self, py: Python<'_>, v_json: &str) -> PyResult<String> {
        blocking(py, |tx| self.inner.put(v_json, sender(tx)))
    }

    /// Signs and stores a mutable item; returns its hex target.
    #[pyo3(signature = (key, v_json, seq, salt=None, cas=None))]
    fn put_mutable(
        &self,
        py: Python<'_>,
        key: &Keypair,
        v_json: &str,
        seq: i64,
        salt: Option<String>,
        cas: Option<i64>,
    ) -> PyResult<String> {
        let v = embed::rpc::parse_json(v_json).map_err(|e| py_err(py, &e))?;
        let mut item = MutableItem::new(v, seq);
        item.salt = salt;
        item.cas = cas;
        blocking(py, |tx| self.inner.put_mutable(&key.inner, item, sender(tx)))
    }

    /// The item with hex `hash` (and `salt`) as JSON text, `null` when there is none.
    #[pyo3(signature = (hash, salt=None))]
    fn get(&self, py: Python<'_>, hash: String, salt: Option<String>) -> PyResult<String> {
        blocking(py, |tx| self.inner.get(hash, salt, sender(tx)))
    }

    /// Cancels calls in flight and stops every keep-announcing loop.
    fn close(&self, py: Python<'_>) {
        let link = Arc::clone(&self.inner);
        py.detach(move || link.close());
    }
}

/// An ed25519 key pair for mutable items.
#[pyclass(module = "grenache._native", frozen)]
struct Keypair {
    inner: CoreKeypair,
}

#[pymethods]
impl Keypair {
    #[staticmethod]
    fn generate() -> Keypair {
        Keypair { inner: CoreKeypair::generate() }
    }

    #[staticmethod]
    fn from_secret_hex(py: Python<'_>, secret: &str) -> PyResult<Keypair> {
        CoreKeypair::from_secret_hex(secret).map(|inner| Keypair { inner }).map_err(|e| py_err(py, &e))
    }

    #[getter]
    fn secret_hex(&self) -> String {
        self.inner.secret_hex()
    }

    #[getter]
    fn public_hex(&self) -> String {
        self.inner.public_hex()
    }
}

/// TLS settings of a server.
#[pyclass(module = "grenache._native", frozen, name = "ServerTls")]
struct PyServerTls {
    inner: ServerTls,
}

#[pymethods]
impl PyServerTls {
    #[new]
    #[pyo3(signature = (cert_pem, key_pem, client_ca_pem=None, client_auth="none"))]
    fn new(py: Python<'_>, cert_pem: &str, key_pem: &str, client_ca_pem: Option<&str>, client_auth: &str) -> PyResult<Self> {
        let mode: ClientAuth = client_auth.parse().map_err(|e| py_err(py, &e))?;
        let mut b = ServerTls::builder(cert_pem.as_bytes().to_vec(), key_pem.as_bytes().to_vec());
        if let Some(ca) = client_ca_pem {
            b = b.client_ca_pem(ca.as_bytes().to_vec());
        }
        b.client_auth(mode).build().map(|inner| PyServerTls { inner }).map_err(|e| py_err(py, &e))
    }
}

/// TLS settings of a client.
#[pyclass(module = "grenache._native", frozen, name = "ClientTls")]
struct PyClientTls {
    inner: ClientTls,
}

#[pymethods]
impl PyClientTls {
    #[new]
    #[pyo3(signature = (ca_pem, cert_pem=None, key_pem=None))]
    fn new(py: Python<'_>, ca_pem: &str, cert_pem: Option<&str>, key_pem: Option<&str>) -> PyResult<Self> {
        let mut b = ClientTls::builder().ca_pem(ca_pem.as_bytes().to_vec()).check_server_name(false);
        match (cert_pem, key_pem) {
            (Some(c), Some(k)) => b = b.client_cert_pem(c.as_bytes().to_vec(), k.as_bytes().to_vec()),
            (None, None) => {}
            _ => return Err(py_err(py, &invalid("cert_pem and key_pem go together"))),
        }
        b.build().map(|inner| PyClientTls { inner }).map_err(|e| py_err(py, &e))
    }
}

/// The handle to answer one request, exactly once, from any thread (over
/// [`embed::ReplyOnce`]): a second answer raises `AlreadyUsedError`; dropped unanswered, the
/// client receives `ERR_NO_REPLY`.
#[pyclass(module = "grenache._native", frozen)]
struct Reply {
    inner: embed::ReplyOnce,
}

#[pymethods]
impl Reply {
    /// Answers with JSON text.
    fn send(&self, py: Python<'_>, result_json: &str) -> PyResult<()> {
        self.inner.ok_json(result_json).map_err(|e| py_err(py, &e))
    }

    /// Answers with an error message (the client gets a remote error with exactly this text).
    fn error(&self, py: Python<'_>, message: &str) -> PyResult<()> {
        self.inner.err(message).map_err(|e| py_err(py, &e))
    }

    /// Gives the reply up: the client receives `ERR_NO_REPLY` at once.
    fn abandon(&self, py: Python<'_>) -> PyResult<()> {
        self.inner.abandon().map_err(|e| py_err(py, &e))
    }

    #[getter]
    fn answered(&self) -> bool {
        self.inner.is_answered()
    }

    #[getter]
    fn closed(&self) -> bool {
        self.inner.is_closed()
    }
}

/// Most requests a server keeps queued for its Python handler; past it a request is answered
/// `ERR_NO_REPLY` at once (the bound of the queue; the transports' own limits come first).
const MAX_QUEUED: usize = 65_536;

/// What an [`Inbox`] carries to its event loop.
enum Item {
    /// The result of an asyncio call, with the caller's token (its future).
    Done(Py<PyAny>, GResult<String>),
    /// A request for an `async def` handler.
    Call(Box<(Request, grenache::rpc::Reply)>),
    /// A plain WS socket handed to the loop (`inloop`).
    Socket(Box<grenache::transport::ws::handoff::HandedOff>),
    /// Frames queued from another thread for a socket the loop drives (`inloop`).
    Flush(Arc<inloop::Conn>),
}

struct InboxState {
    items: Vec<Item>,
    /// A wake-up was sent and the loop has not drained since.
    woken: bool,
    closed: bool,
    /// The server that fed it let go of it (closed, its requests in flight handed over).
    finished: bool,
}

struct InboxShared {
    state: Mutex<InboxState>,
    /// The end the library writes one byte to, to wake the loop.
    wake: UnixStream,
}

impl InboxShared {
    /// Queues `item` from any thread, without the GIL; wakes the loop only when it was not woken
    /// since its last drain, so replies that arrive while the loop is busy share one wake-up.
    fn push(&self, item: Item) {
        let mut st = lock(&self.state);
        let full = matches!(item, Item::Call(..)) && st.items.len() >= MAX_QUEUED;
        if st.closed || full {
            drop(st);
            // A request's reply dropped here answers ERR_NO_REPLY; a result has nobody waiting.
            drop(item);
            return;
        }
        st.items.push(item);
        if st.woken {
            return;
        }
        st.woken = true;
        drop(st);
        // Non-blocking; at most one byte is ever unread, so the socket's buffer never fills.
        let _ = (&self.wake).write(&[1]);
    }

    fn close(&self) -> Vec<Item> {
        let mut st = lock(&self.state);
        st.closed = true;
        std::mem::take(&mut st.items)
    }
}

/// A server's hold on its inbox: dropped with the server's handler (closed, and its requests in
/// flight handed over), it marks the inbox finished and wakes the loop a last time so that the
/// loop stops watching it.
struct InboxProducer(Arc<InboxShared>);

impl Drop for InboxProducer {
    fn drop(&mut self) {
        let mut st = lock(&self.0.state);
        st.finished = true;
        if !st.woken {
            st.woken = true;
            drop(st);
            let _ = (&self.0.wake).write(&[1]);
        }
    }
}

/// The queue between the library's threads and one asyncio event loop: the loop watches
/// `fileno` (`loop.add_reader`) and calls `drain` when it is readable. Results arrive as
/// `(token, error, result_json)` and requests for an `async def` handler as
/// `(payload_json, fingerprint, reply)`. Once closed (the loop went away), what is queued and
/// what arrives later is dropped: requests are answered `ERR_NO_REPLY` at once.
#[pyclass(module = "grenache._native", frozen)]
struct Inbox {
    shared: Arc<InboxShared>,
    read: UnixStream,
}

impl Inbox {
    /// Everything queued, in arrival order. The wake-up is consumed before the items are taken:
    /// a push after the take wakes the loop again.
    fn take(&self) -> Vec<Item> {
        let mut buf = [0u8; 64];
        while matches!((&self.read).read(&mut buf), Ok(n) if n > 0) {}
        let mut st = lock(&self.shared.state);
        st.woken = false;
        std::mem::take(&mut st.items)
    }
}

#[pymethods]
impl Inbox {
    #[new]
    fn new(py: Python<'_>) -> PyResult<Inbox> {
        let io = |e: std::io::Error| py_err(py, &Error::from(e));
        let (read, wake) = UnixStream::pair().map_err(io)?;
        read.set_nonblocking(true).map_err(io)?;
        wake.set_nonblocking(true).map_err(io)?;
        let state = Mutex::new(InboxState { items: Vec::new(), woken: false, closed: false, finished: false });
        Ok(Inbox { shared: Arc::new(InboxShared { state, wake }), read })
    }

    /// The descriptor that becomes readable when items are queued.
    fn fileno(&self) -> i32 {
        self.read.as_raw_fd()
    }

    /// Everything queued since the last call, in arrival order.
    fn drain<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, pyo3::types::PyList>> {
        let items = self.take();
        let list = pyo3::types::PyList::empty(py);
        for item in items {
            match item {
                Item::Done(token, Ok(text)) => list.append((token, py.None(), text))?,
                Item::Done(token, Err(e)) => list.append((token, error_value(py, &e), py.None()))?,
                Item::Call(call) => {
                    let (request, reply) = *call;
                    let payload = embed::rpc::payload_json(&request);
                    let fingerprint = embed::rpc::fingerprint(&request);
                    let reply = Py::new(py, Reply { inner: embed::ReplyOnce::new(reply) })?;
                    list.append((payload, fingerprint, reply))?
                }
                Item::Socket(h) => list.append(inloop::LoopSocket::new(*h))?,
                Item::Flush(conn) => inloop::flush_from_inbox(py, &conn),
            }
        }
        Ok(list)
    }

    /// For an inbox that only gets results (tokens that are asyncio futures): settles the
    /// futures of everything queued since the last call, in arrival order, in one call:
    /// `set_result(loads(result_json))`, or `set_exception` with the error (or with what `loads`
    /// raised); futures already done (cancelled) are skipped. Every future is settled even when
    /// one of these calls raises; the first such error is raised at the end.
    fn settle(&self, py: Python<'_>, loads: &Bound<'_, PyAny>) -> PyResult<()> {
        let items = self.take();
        LOOP_ITERATION.fetch_add(1, Ordering::Relaxed);
        let mut first: Option<PyErr> = None;
        for item in items {
            let Item::Done(fut, result) = item else { continue };
            let fut = fut.bind(py);
            let r = fut.call_method0(pyo3::intern!(py, "done")).and_then(|d| d.is_truthy()).and_then(|done| {
                if done {
                    return Ok(());
                }
                let outcome = match result {
                    Ok(text) => loads.call1((text,)).map_err(|e| e.into_value(py).into_any()),
                    Err(e) => Err(error_value(py, &e)),
                };
                match outcome {
                    Ok(v) => fut.call_method1(pyo3::intern!(py, "set_result"), (v,)).map(drop),
                    Err(e) => fut.call_method1(pyo3::intern!(py, "set_exception"), (e,)).map(drop),
                }
            });
            if let Err(e) = r {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Drops what is queued and everything that arrives later (idempotent).
    fn close(&self, py: Python<'_>) {
        let shared = Arc::clone(&self.shared);
        let items = py.detach(move || shared.close());
        drop(items);
    }

    #[getter]
    fn closed(&self) -> bool {
        lock(&self.shared.state).closed
    }

    /// True once the server that fed this inbox let go of it and everything was drained.
    #[getter]
    fn finished(&self) -> bool {
        let st = lock(&self.shared.state);
        st.finished && st.items.is_empty()
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        drop(self.shared.close());
    }
}

/// How long a request may wait behind a running handler before another thread of the [`Pool`]
/// takes it (that handler is then taken to block).
const STALL: Duration = Duration::from_millis(5);

/// Most threads of one server's [`Pool`].
const MAX_THREADS: usize = 64;

/// How long an idle thread of a [`Pool`] stays.
const IDLE_EXIT: Duration = Duration::from_secs(30);

/// Set at interpreter exit ([`_finalize`]): pools no longer call into Python.
static FINALIZING: AtomicBool = AtomicBool::new(false);

/// Threads of pools that are running (or about to run) Python code.
static IN_PYTHON: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// How many handler threads of a server run at once when none blocks: 1 under the GIL, the
/// number of cores on a free-threaded interpreter.
#[pyfunction]
fn _parallel_handlers() -> usize {
    PARALLEL_HANDLERS.load(Ordering::Relaxed)
}

/// Called by the package at interpreter exit (`atexit`): pool threads stop calling handlers,
/// and this waits (at most 2 s, GIL released) for those inside a handler to leave it, so that
/// none of them wakes up inside an interpreter that is being torn down.
#[pyfunction]
fn _finalize(py: Python<'_>) {
    FINALIZING.store(true, Ordering::SeqCst);
    py.detach(|| {
        let deadline = Instant::now() + Duration::from_secs(2);
        while IN_PYTHON.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    });
}

struct PoolState {
    queue: VecDeque<lf::Job>,
    threads: usize,
    /// Threads holding (or taking) the GIL to run handlers.
    active: usize,
    /// When the last request was taken from the queue.
    last_take: Instant,
    /// Idle threads waking every [`STALL`] to see whether the running handlers still take
    /// requests (the others sleep until woken or [`IDLE_EXIT`]).
    watching: usize,
    closed: bool,
}

impl PoolState {
    /// Requests wait behind a running handler and no idle thread watches it: one should (it
    /// takes them over if that handler blocks).
    fn wants_watcher(&self) -> bool {
        !self.queue.is_empty() && self.active > 0 && self.watching == 0 && self.threads > 0
    }
}

/// How many threads of one [`Pool`] run handlers at once while none of them blocks: one where
/// the GIL runs Python code one thread at a time (more would only take turns), the number of
/// cores where the interpreter runs without a GIL (free-threaded CPython), so that handlers run
/// in parallel. Set when the module is imported ([`_native`]).
static PARALLEL_HANDLERS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(1);

/// Whether the interpreter runs with its GIL: `sys._is_gil_enabled()` where it exists (3.13 and
/// later; a free-threaded build can still turn the GIL on, `PYTHON_GIL=1`), true before.
fn gil_enabled(py: Python<'_>) -> bool {
    py.import("sys")
        .and_then(|sys| sys.getattr("_is_gil_enabled"))
        .and_then(|f| f.call0())
        .and_then(|v| v.extract::<bool>())
        .unwrap_or(true)
}

impl PoolState {
    /// Whether a request in the queue needs another thread: nobody is running handlers, fewer
    /// run than may run in parallel ([`PARALLEL_HANDLERS`]), or the ones that run have not taken
    /// a request for [`STALL`] (a handler blocks).
    fn wants_thread(&self) -> bool {
        !self.queue.is_empty()
            && (self.active == 0 || self.active < PARALLEL_HANDLERS.load(Ordering::Relaxed) || self.last_take.elapsed() >= STALL)
    }
}

/// The threads that run a server's plain (not `async def`) Python handler. One thread takes the
/// GIL once and answers every queued request in a row, instead of one thread hop and one GIL
/// acquisition per request; when a handler blocks (sleeps, waits for I/O) for longer than
/// [`STALL`] with requests waiting, another thread takes over the queue, up to [`MAX_THREADS`].
struct Pool {
    state: Mutex<PoolState>,
    ready: Condvar,
    handler: Py<PyAny>,
    /// Replies to [`lf`] sockets queued and not written yet.
    delivered: lf::Delivered,
}

impl Pool {
    /// Queues a request (on an I/O thread) and wakes a thread for it when needed.
    fn push(self: &Arc<Self>, request: Request, reply: grenache::rpc::Reply) {
        let mut st = lock(&self.state);
        if st.closed || st.queue.len() >= MAX_QUEUED {
            drop(st);
            drop(reply); // ERR_NO_REPLY
            return;
        }
        st.queue.push_back((request, reply, None));
        if !st.wants_thread() {
            if st.wants_watcher() {
                self.ready.notify_one();
            }
            return;
        }
        if st.threads > st.active {
            // An idle thread, or one about to look at the queue again.
            self.ready.notify_one();
        } else if st.threads < MAX_THREADS {
            self.spawn_thread(&mut st);
        }
    }

    /// Queues the requests a thread read itself (a socket of [`lf`]). When no handler runs,
    /// that thread is counted as running them and answers them without waking another
    /// ([`Pool::drain`] next, true); a thread of the pool stands by to take the queue over if
    /// a handler blocks. When one runs, it takes them (false). False too when the pool is
    /// closed (the requests are answered `ERR_NO_REPLY`).
    fn push_claimed(self: &Arc<Self>, jobs: Vec<lf::Job>) -> bool {
        let mut st = lock(&self.state);
        if st.closed {
            drop(st);
            drop(jobs);
            return false;
        }
        let room = MAX_QUEUED.saturating_sub(st.queue.len());
        let mut jobs = jobs.into_iter();
        st.queue.extend(jobs.by_ref().take(room));
        // Handlers already run (under the GIL, one thread at a time): the runner takes these
        // too, in the same hold of the GIL; this thread goes back to the sockets.
        let claim = st.active < PARALLEL_HANDLERS.load(Ordering::Relaxed);
        if claim {
            st.active += 1;
            st.last_take = Instant::now();
        }
        // Requests wait behind a running handler: a thread of the pool watches them, to take
        // them over if that handler blocks (or to take a share where handlers run in
        // parallel). A lone request its reader runs wakes nobody.
        let waiting = if claim { st.queue.len() > 1 } else { !st.queue.is_empty() };
        if st.threads < st.active && st.threads < MAX_THREADS {
            self.spawn_thread(&mut st);
        } else if waiting && (st.wants_watcher() || st.wants_thread()) {
            self.ready.notify_one();
        }
        drop(st);
        // Past the bound: ERR_NO_REPLY.
        drop(jobs);
        claim
    }

    fn spawn_thread(self: &Arc<Self>, st: &mut PoolState) {
        st.threads += 1;
        let pool = Arc::clone(self);
        if std::thread::Builder::new().name("grenache-handler".into()).spawn(move || pool.run()).is_err() {
            st.threads -= 1;
        }
    }

    /// A thread of the pool. It attaches to Python once for its whole life and only releases
    /// the GIL between batches: attaching per batch would create and destroy a Python thread
    /// state each time, which costs more than a short handler.
    fn run(self: Arc<Self>) {
        Python::attach(|py| {
            loop {
                let work = py.detach(|| self.next_batch());
                if work {
                    self.drain(py);
                }
                IN_PYTHON.fetch_sub(1, Ordering::SeqCst);
                if !work {
                    break;
                }
            }
        });
    }

    /// Waits, GIL released, until the queue needs this thread (true) or the thread should end
    /// (false). Either way the thread is counted in [`IN_PYTHON`] when this returns; at
    /// interpreter exit it never returns (the thread sleeps until the process ends rather than
    /// take the GIL of an interpreter being torn down).
    fn next_batch(self: &Arc<Self>) -> bool {
        let mut st = lock(&self.state);
        let work = loop {
            if st.wants_thread() {
                break true;
            }
            if st.closed && st.queue.is_empty() {
                break false;
            }
            // While handlers run, look every STALL whether they still take requests.
            let wait = if st.active > 0 { STALL } else { IDLE_EXIT };
            if wait == STALL {
                st.watching += 1;
            }
            let (g, timeout) = self.ready.wait_timeout(st, wait).unwrap_or_else(|e| e.into_inner());
            st = g;
            if wait == STALL {
                st.watching -= 1;
            }
            if timeout.timed_out() && st.queue.is_empty() && wait == IDLE_EXIT {
                break false;
            }
        };
        if work {
            st.active += 1;
            st.last_take = Instant::now();
        } else {
            st.threads -= 1;
        }
        IN_PYTHON.fetch_add(1, Ordering::SeqCst);
        if FINALIZING.load(Ordering::SeqCst) {
            IN_PYTHON.fetch_sub(1, Ordering::SeqCst);
            if work {
                st.active -= 1;
                st.threads -= 1;
            }
            drop(st);
            loop {
                std::thread::park();
            }
        }
        // Keep one thread on standby while handlers run: it takes the queue over when they stop
        // taking requests (a handler blocks), even when no new request comes.
        // (`<=`: a thread that read its own requests, `push_claimed`, counts as active but is
        // not one of the pool's.)
        if work && st.threads <= st.active && st.threads < MAX_THREADS {
            self.spawn_thread(&mut st);
        } else if work && st.queue.len() > 1 && st.watching == 0 {
            // Requests still wait behind this one: an idle thread watches them in turn (one
            // that went to sleep while no handler ran waits for the idle timeout otherwise).
            self.ready.notify_one();
        }
        work
    }

    /// Answers queued requests until the queue is empty (or the interpreter exits).
    ///
    /// Replies to sockets the handler threads read themselves ([`lf`]) are written once per
    /// socket for a run of requests: before the last queued request runs, after it, and every
    /// [`FLUSH_EVERY`] requests. A thread that takes the queue over from a blocking handler
    /// writes what that one left queued first.
    fn drain(&self, py: Python<'_>) {
        lf::flush_delivered(&self.delivered);
        let mut answered = 0usize;
        loop {
            let (job, more) = {
                let mut st = lock(&self.state);
                let job = if FINALIZING.load(Ordering::SeqCst) { None } else { st.queue.pop_front() };
                match job {
                    Some(_) => st.last_take = Instant::now(),
                    // Under the lock that saw the queue empty: a push after this sees no active
                    // thread and wakes one.
                    None => st.active -= 1,
                }
                let more = !st.queue.is_empty();
                (job, more)
            };
            let Some((request, reply, sink)) = job else { break };
            if !more {
                lf::flush_delivered(&self.delivered);
            }
            answer(py, &self.handler, request, reply);
            if let Some(sink) = sink {
                sink.deliver(&self.delivered);
                answered += 1;
                if !more || answered.is_multiple_of(FLUSH_EVERY) {
                    lf::flush_delivered(&self.delivered);
                }
            }
        }
        lf::flush_delivered(&self.delivered);
    }
}

/// Replies queued for [`lf`] sockets in a run of requests before they are written.
const FLUSH_EVERY: usize = 32;

/// Held by the server's handler closure: when the core drops the handler (the server closed and
/// its requests in flight finished), the pool's threads finish the queue and exit.
struct PoolHandle(Arc<Pool>);

impl Drop for PoolHandle {
    fn drop(&mut self) {
        lock(&self.0.state).closed = true;
        self.0.ready.notify_all();
    }
}

/// An RPC server whose handler is a Python callable `handler(payload_json, fingerprint, reply)`
/// that answers through `reply` (a [`Reply`]), now or later.
#[pyclass(module = "grenache._native")]
struct Server {
    inner: Handle<EmbedServer>,
    /// A plain handler's plain WS sockets, read by its threads ([`lf`]).
    lf: Option<Arc<lf::Lf>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(l) = self.lf.take() {
            // Closing may linger on slow readers: not on the thread that drops the server.
            let _ = std::thread::Builder::new().name("grenache-close".into()).spawn(move || l.close());
        }
    }
}

fn answer(py: Python<'_>, handler: &Py<PyAny>, request: Request, reply: grenache::rpc::Reply) {
    let payload = embed::rpc::payload_json(&request);
    let fingerprint = embed::rpc::fingerprint(&request).map(str::to_string);
    let reply = match Py::new(py, Reply { inner: embed::ReplyOnce::new(reply) }) {
        Ok(r) => r,
        Err(e) => return e.print(py),
    };
    if let Err(e) = handler.call1(py, (payload, fingerprint, reply.clone_ref(py))) {
        // The package's wrapper answers what the handler raised; this is its own failure.
        e.print(py);
        let _ = reply.get().inner.err(ErrorKind::HandlerPanicked.name());
    }
}

#[pymethods]
impl Server {
    #[new]
    #[pyo3(signature = (link, transport, handler, port=0, tls=None, reply_timeout_ms=None, verify_client=None, broker=None, inbox=None, limits=None, in_loop=false))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        link: &Link,
        transport: &str,
        handler: Option<Py<PyAny>>,
        port: u16,
        tls: Option<&PyServerTls>,
        reply_timeout_ms: Option<u64>,
        verify_client: Option<Py<PyAny>>,
        broker: Option<String>,
        inbox: Option<&Inbox>,
        limits: Option<std::collections::BTreeMap<String, u64>>,
        in_loop: bool,
    ) -> PyResult<Server> {
        let kind = transport_kind(py, transport)?;
        // Limits against hostile load by name (the core's table: `SERVER_LIMIT_NAMES`).
        let mut server_limits = grenache::transport::ServerLimits::default();
        for (name, value) in limits.unwrap_or_default() {
            server_limits.set(&name, value).map_err(|e| py_err(py, &e))?;
        }
        // `in_loop` (WS without TLS, with an inbox): every socket, once upgraded, goes to the
        // loop's inbox, which reads and writes it on the loop (`inloop`).
        let mut lf_sockets: Option<Arc<lf::Lf>> = None;
        let mut hand_off = match inbox {
            Some(inbox) if in_loop && kind == TransportKind::Ws && tls.is_none() => {
                let shared = Arc::clone(&inbox.shared);
                let hook: grenache::transport::ws::handoff::HandOff = Arc::new(move |h| {
                    // The loop went away: requests are answered ERR_NO_REPLY, as queued ones were.
                    if lock(&shared.state).closed {
                        inloop::refuse(h);
                    } else {
                        shared.push(Item::Socket(Box::new(h)));
                    }
                });
                Some(hook)
            }
            _ => None,
        };
        let h: Arc<dyn grenache::rpc::Handler> = match (inbox, handler) {
            // `async def` handlers: requests go to the event loop's inbox in batches.
            (Some(inbox), _) => {
                let producer = InboxProducer(Arc::clone(&inbox.shared));
                Arc::new(move |request: Request, reply: grenache::rpc::Reply| {
                    producer.0.push(Item::Call(Box::new((request, reply))));
                })
            }
            // Plain handlers: the pool's threads, never an I/O thread (a handler may block).
            (None, Some(handler)) => {
                let state =
                    PoolState { queue: VecDeque::new(), threads: 0, active: 0, last_take: Instant::now(), watching: 0, closed: false };
                let pool = Arc::new(Pool { state: Mutex::new(state), ready: Condvar::new(), handler, delivered: Mutex::default() });
                // `in_loop` (WS without TLS and without a reply timeout): the pool's threads read
                // and answer the sockets themselves (`lf`).
                if in_loop && kind == TransportKind::Ws && tls.is_none() && reply_timeout_ms.is_none() {
                    let limits = lf::LfLimits {
                        max_connections: server_limits.connections.max_connections,
                        max_connections_per_ip: server_limits.connections.max_per_ip,
                        idle: server_limits.ws.idle,
                    };
                    let l = lf::Lf::new(Arc::clone(&pool), runtime(py)?, limits)
                        .map_err(|e| py_err(py, &Error::new(ErrorKind::Io, format!("poller: {e}"))))?;
                    let hook_lf = Arc::clone(&l);
                    hand_off = Some(Arc::new(move |h| hook_lf.hand_over(h)));
                    lf_sockets = Some(l);
                }
                let pool = PoolHandle(pool);
                Arc::new(move |request: Request, reply: grenache::rpc::Reply| pool.0.push(request, reply))
            }
            (None, None) => return Err(py_err(py, &invalid("a server needs a handler or an inbox"))),
        };
        // WS only: `verify_client(fingerprint, remote_addr) -> bool` before a socket is accepted
        // (an exception refuses the client). It holds an I/O thread while it runs: keep it short.
        let verify_client = verify_client.map(|f| {
            grenache::tls::verify_client(move |c| {
                let fingerprint = c.cert.map(|cert| cert.fingerprint.clone());
                let addr = c.remote_addr.map(|a| a.to_string());
                Python::attach(|py| match f.call1(py, (fingerprint, addr)).and_then(|v| v.is_truthy(py)) {
                    Ok(ok) => ok,
                    Err(e) => {
                        e.print(py);
                        false
                    }
                })
            })
        });
        let options = ServerOptions {
            port,
            tls: tls.map(|t| t.inner.clone()),
            reply_timeout: embed::millis(reply_timeout_ms),
            verify_client,
            broker,
            limits: server_limits,
            hand_off,
            ..Default::default()
        };
        let link = Arc::clone(&link.inner);
        let server = match py.detach(move || EmbedServer::listen(&link, kind, h, options)) {
            Ok(s) => s,
            Err(e) => {
                if let Some(l) = &lf_sockets {
                    l.close();
                }
                return Err(py_err(py, &e));
            }
        };
        Ok(Server { inner: Handle::new(server), lf: lf_sockets })
    }

    #[getter]
    fn port(&self) -> u16 {
        self.inner.port()
    }

    fn announce(&self, py: Python<'_>, name: String) -> PyResult<()> {
        blocking(py, |tx| self.inner.announce(name, sender(tx)))
    }

    fn start_announcing(&self, name: &str, interval_ms: u64) {
        self.inner.start_announcing(name, Duration::from_millis(interval_ms));
    }

    fn stop_announcing(&self, name: &str) -> bool {
        self.inner.stop_announcing(name)
    }

    /// Graceful shutdown; true when every connection finished within the grace.
    fn shutdown(&self, py: Python<'_>, grace_ms: u64) -> PyResult<bool> {
        let grace = Duration::from_millis(grace_ms);
        let core = blocking(py, |tx| self.inner.shutdown(grace, sender(tx)))?;
        let sockets = match &self.lf {
            Some(l) => {
                let l = Arc::clone(l);
                py.detach(move || l.drain(grace))
            }
            None => true,
        };
        Ok(core && sockets)
    }

    /// uTP: punches `target` ("ip:port") until it answers; raises on ERR_PUNCH_TIMEOUT.
    fn punch(&self, py: Python<'_>, target: &str, timeout_ms: u64) -> PyResult<()> {
        blocking(py, |tx| self.inner.punch(target, Duration::from_millis(timeout_ms), sender(tx)))
    }

    /// uTP: `cb(from)` for every punch reaching the server's socket.
    fn on_punch(&self, py: Python<'_>, cb: Py<PyAny>) -> PyResult<()> {
        let cb = Arc::new(cb);
        self.inner
            .on_punch(move |from| {
                Python::attach(|py| {
                    if let Err(e) = cb.call1(py, (from,)) {
                        e.print(py);
                    }
                })
            })
            .map_err(|e| py_err(py, &e))
    }

    /// With a plain handler over plain WS: the sockets its threads read and answer themselves
    /// ([`lf`]); `None` on the other paths.
    fn _lf_sockets(&self) -> Option<usize> {
        self.lf.as_ref().map(|l| l.sockets())
    }

    fn shutdown_cb(&self, grace_ms: u64, cb: Py<PyAny>) {
        let done = callback(cb);
        let grace = Duration::from_millis(grace_ms);
        let lf = self.lf.clone();
        self.inner.shutdown(grace, move |r| {
            // The sockets the handler's threads read drain on a thread of their own.
            let Some(l) = lf else { return done(r.map(|ok| ok.to_string())) };
            let _ = std::thread::Builder::new().name("grenache-drain".into()).spawn(move || {
                let sockets = l.drain(grace);
                done(r.map(|ok| (ok && sockets).to_string()));
            });
        });
    }

    fn close(&self, py: Python<'_>) {
        let s = Arc::clone(&self.inner);
        let lf = self.lf.clone();
        py.detach(move || {
            s.close();
            if let Some(l) = lf {
                l.close();
            }
        });
    }
}

/// An RPC client; payloads and results are JSON text.
#[pyclass(module = "grenache._native")]
struct Client {
    inner: Handle<EmbedClient>,
    /// Asyncio requests (`request_in`) not yet handed to the client: see [`Submissions`].
    queued: Arc<Submissions>,
    rt: embed::Runtime,
}

/// An asyncio request waiting to be handed to the client.
struct Submission {
    name: String,
    payload: String,
    opts: RequestOptions,
    inbox: Arc<InboxShared>,
    token: Py<PyAny>,
}

/// The asyncio requests issued while the loop runs, handed to the client by one task of the
/// runtime: the first request of a batch spawns that task (one wake-up of a runtime thread),
/// the ones issued before it runs join the batch, and the task starts them in their order (its
/// spawns stay on its thread's queue: no wake-up per request). Bounded: the loop's thread
/// queues while a runtime thread empties it, and past `MAX_QUEUED` a request is started on the
/// caller's thread as before.
///
/// The first request of a loop iteration (see [`LOOP_ITERATION`]) is started on the caller's thread at once
/// when nothing is queued: a sequential caller (one request per iteration) pays one hop, as before,
/// not two (the batch's task, then the request's).
#[derive(Default)]
struct Submissions {
    queue: Mutex<Vec<Submission>>,
    /// The [`LOOP_ITERATION`] in which this client last started a request on the caller's thread.
    direct_iteration: AtomicU64,
}

/// Counts the batches of results settled ([`Inbox::settle`]): the requests issued between two
/// of them were issued in the same iteration of a loop, as far as batching is concerned (only a
/// heuristic: it chooses between two paths that both deliver).
static LOOP_ITERATION: AtomicU64 = AtomicU64::new(1);

impl Submissions {
    /// Starts every queued request on `client`, in order.
    fn submit(&self, client: &EmbedClient) {
        let batch = std::mem::take(&mut *lock(&self.queue));
        for s in batch {
            start_in(client, s);
        }
    }
}

/// Starts `s`: its result goes to its inbox.
fn start_in(client: &EmbedClient, s: Submission) {
    let Submission { name, payload, opts, inbox, token } = s;
    client.request(name, &payload, opts, move |r| inbox.push(Item::Done(token, r)));
}

/// The task that submits a batch; it submits in `Drop`, so that a task the runtime drops
/// without running it (shut down) still starts (and so completes, `Cancelled`) its requests.
struct SubmitTask {
    client: Arc<EmbedClient>,
    queued: Arc<Submissions>,
}

impl Drop for SubmitTask {
    fn drop(&mut self) {
        self.queued.submit(&self.client);
    }
}

/// `GRENACHE_PYTHON_DIRECT=0` keeps blocking requests on the library's threads (see
/// [`wait_direct`]).
const DIRECT_ENV: &str = "GRENACHE_PYTHON_DIRECT";

fn direct_enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        let v = std::env::var(DIRECT_ENV).unwrap_or_default();
        !matches!(v.trim().to_ascii_lowercase().as_str(), "0" | "false" | "no" | "off")
    })
}

/// Waits on this thread for the reply of a blocking request sent on it
/// ([`EmbedClient::start_direct`]: plain WS, an idle socket to the worker), with the GIL
/// released, in slices of [`TICK`] with signals checked between them. On Ctrl-C the call is
/// dropped, which closes its socket (its late reply cannot reach a later call).
fn wait_direct(py: Python<'_>, mut call: embed::DirectCall) -> PyResult<String> {
    loop {
        match py.detach(|| call.wait(TICK)) {
            Some(Ok(text)) => return Ok(text),
            Some(Err(e)) => return Err(py_err(py, &e)),
            None => py.check_signals()?,
        }
    }
}

fn request_options(timeout_ms: Option<u64>, retry: u32, compress: bool, dest: Option<String>, limit: usize) -> RequestOptions {
    RequestOptions { timeout: embed::millis(timeout_ms), retry, compress, dest, limit, ..Default::default() }
}

#[pymethods]
impl Client {
    #[new]
    #[pyo3(signature = (link, transport, tls=None, timeout_ms=None, broker=None, punch_timeout_ms=None))]
    fn new(
        py: Python<'_>,
        link: &Link,
        transport: &str,
        tls: Option<&PyClientTls>,
        timeout_ms: Option<u64>,
        broker: Option<String>,
        punch_timeout_ms: Option<u64>,
    ) -> PyResult<Client> {
        let kind = transport_kind(py, transport)?;
        let options = ClientOptions {
            tls: tls.map(|t| t.inner.clone()),
            default_timeout: embed::millis(timeout_ms),
            broker,
            punch_timeout: embed::millis(punch_timeout_ms),
            ..Default::default()
        };
        let link = Arc::clone(&link.inner);
        let rt = link.runtime().clone();
        let client = py.detach(move || EmbedClient::new(&link, kind, options)).map_err(|e| py_err(py, &e))?;
        Ok(Client { inner: Handle::new(client), queued: Arc::default(), rt })
    }

    #[pyo3(signature = (name, payload_json, timeout_ms=None, retry=0, compress=false, dest=None))]
    #[allow(clippy::too_many_arguments)]
    fn request(
        &self,
        py: Python<'_>,
        name: String,
        payload_json: &str,
        timeout_ms: Option<u64>,
        retry: u32,
        compress: bool,
        dest: Option<String>,
    ) -> PyResult<String> {
        let opts = request_options(timeout_ms, retry, compress, dest, 0);
        if direct_enabled() {
            let client = &self.inner;
            if let Some(started) = py.detach(|| client.start_direct(&name, payload_json, &opts)) {
                return wait_direct(py, started.map_err(|e| py_err(py, &e))?);
            }
        }
        blocking(py, |tx| self.inner.request(name, payload_json, opts, sender(tx)))
    }

    /// How many blocking requests were sent on their caller's thread (a plain WS socket of
    /// the caller's, see [`wait_direct`]) so far.
    fn _direct_sent(&self) -> u64 {
        self.inner.direct_sent()
    }

    #[pyo3(signature = (name, payload_json, cb, timeout_ms=None, retry=0, compress=false, dest=None))]
    #[allow(clippy::too_many_arguments)]
    fn request_cb(
        &self,
        name: String,
        payload_json: &str,
        cb: Py<PyAny>,
        timeout_ms: Option<u64>,
        retry: u32,
        compress: bool,
        dest: Option<String>,
    ) {
        let opts = request_options(timeout_ms, retry, compress, dest, 0);
        self.inner.request(name, payload_json, opts, callback(cb));
    }

    /// `request` for asyncio: the result goes to `inbox` as `(token, error, result_json)`.
    #[pyo3(signature = (name, payload_json, inbox, token, timeout_ms=None, retry=0, compress=false, dest=None))]
    #[allow(clippy::too_many_arguments)]
    fn request_in(
        &self,
        name: String,
        payload_json: &str,
        inbox: &Inbox,
        token: Py<PyAny>,
        timeout_ms: Option<u64>,
        retry: u32,
        compress: bool,
        dest: Option<String>,
    ) {
        let opts = request_options(timeout_ms, retry, compress, dest, 0);
        let s = Submission { name, payload: payload_json.to_string(), opts, inbox: Arc::clone(&inbox.shared), token };
        let first = {
            let mut q = lock(&self.queued.queue);
            let iteration = LOOP_ITERATION.load(Ordering::Relaxed);
            if q.is_empty() && self.queued.direct_iteration.swap(iteration, Ordering::Relaxed) != iteration {
                // The first request of this iteration: start it now.
                drop(q);
                return start_in(&self.inner, s);
            }
            if q.len() >= MAX_QUEUED {
                drop(q);
                return start_in(&self.inner, s);
            }
            q.push(s);
            q.len() == 1
        };
        if first {
            let task = SubmitTask { client: Arc::clone(&self.inner), queued: Arc::clone(&self.queued) };
            self.rt.handle().spawn(async move { drop(task) });
        }
    }

    /// `map` for asyncio: the results go to `inbox` as `(token, error, results_json)`.
    #[pyo3(signature = (name, payload_json, inbox, token, timeout_ms=None, compress=false, limit=0))]
    #[allow(clippy::too_many_arguments)]
    fn map_in(
        &self,
        name: String,
        payload_json: &str,
        inbox: &Inbox,
        token: Py<PyAny>,
        timeout_ms: Option<u64>,
        compress: bool,
        limit: usize,
    ) {
        let opts = request_options(timeout_ms, 0, compress, None, limit);
        let shared = Arc::clone(&inbox.shared);
        self.inner.map(name, payload_json, opts, move |r| shared.push(Item::Done(token, r)));
    }

    #[pyo3(signature = (name, payload_json, timeout_ms=None, compress=false, limit=0))]
    fn map(
        &self,
        py: Python<'_>,
        name: String,
        payload_json: &str,
        timeout_ms: Option<u64>,
        compress: bool,
        limit: usize,
    ) -> PyResult<String> {
        let opts = request_options(timeout_ms, 0, compress, None, limit);
        blocking(py, |tx| self.inner.map(name, payload_json, opts, sender(tx)))
    }

    #[pyo3(signature = (name, payload_json, cb, timeout_ms=None, compress=false, limit=0))]
    #[allow(clippy::too_many_arguments)]
    fn map_cb(&self, name: String, payload_json: &str, cb: Py<PyAny>, timeout_ms: Option<u64>, compress: bool, limit: usize) {
        let opts = request_options(timeout_ms, 0, compress, None, limit);
        self.inner.map(name, payload_json, opts, callback(cb));
    }

    /// Cancels what is in flight and what is queued (`Cancelled`, to their inboxes).
    fn close(&self, py: Python<'_>) {
        let c = Arc::clone(&self.inner);
        let queued = Arc::clone(&self.queued);
        py.detach(move || {
            c.close();
            // Closed: what is still queued completes Cancelled at once.
            queued.submit(&c);
        });
    }
}

/// A PUB/SUB publisher (WebSocket server).
#[pyclass(module = "grenache._native")]
struct Publisher {
    inner: Handle<EmbedPublisher>,
}

#[pymethods]
impl Publisher {
    #[new]
    #[pyo3(signature = (link, port=0, tls=None, transport="ws"))]
    fn new(py: Python<'_>, link: &Link, port: u16, tls: Option<&PyServerTls>, transport: &str) -> PyResult<Publisher> {
        let kind = transport_kind(py, transport)?;
        let link = Arc::clone(&link.inner);
        let tls = tls.map(|t| t.inner.clone());
        let options = grenache::embed::ServerOptions { port, tls, ..Default::default() };
        let p = py.detach(move || EmbedPublisher::bind_kind(&link, kind, options)).map_err(|e| py_err(py, &e))?;
        Ok(Publisher { inner: Handle::new(p) })
    }

    #[getter]
    fn port(&self) -> u16 {
        self.inner.port()
    }

    fn start_announcing(&self, name: &str, interval_ms: u64) {
        self.inner.start_announcing(name, Duration::from_millis(interval_ms));
    }

    /// Sends `text` to every subscriber; returns how many it was queued for.
    fn publish(&self, text: &str) -> usize {
        self.inner.publish(text)
    }

    #[getter]
    fn subscribers(&self) -> usize {
        self.inner.subscribers()
    }

    fn close(&self, py: Python<'_>) {
        let p = Arc::clone(&self.inner);
        py.detach(move || p.close());
    }
}

/// A PUB/SUB subscription: `on_message(publisher, data, binary)` runs for each message, one at
/// a time (`data` is `str` for text frames, `bytes` for binary ones).
#[pyclass(module = "grenache._native")]
struct Subscriber {
    inner: Handle<EmbedSubscriber>,
}

#[pymethods]
impl Subscriber {
    #[new]
    #[pyo3(signature = (link, name, on_message, tls=None, transport="ws"))]
    fn new(
        py: Python<'_>,
        link: &Link,
        name: &str,
        on_message: Py<PyAny>,
        tls: Option<&PyClientTls>,
        transport: &str,
    ) -> PyResult<Subscriber> {
        let kind = transport_kind(py, transport)?;
        let tls = tls.map(|t| t.inner.clone());
        let sub = EmbedSubscriber::subscribe_kind(&link.inner, name, kind, tls, move |m| {
            Python::attach(|py| {
                let called = match (m.binary, m.text()) {
                    (false, Some(text)) => on_message.call1(py, (&*m.publisher, text, false)),
                    _ => on_message.call1(py, (&*m.publisher, pyo3::types::PyBytes::new(py, &m.data), true)),
                };
                if let Err(e) = called {
                    e.print(py);
                }
            })
        })
        .map_err(|e| py_err(py, &e))?;
        Ok(Subscriber { inner: Handle::new(sub) })
    }

    #[getter]
    fn publishers(&self) -> usize {
        self.inner.publishers()
    }

    fn close(&self, py: Python<'_>) {
        let s = Arc::clone(&self.inner);
        py.detach(move || s.close());
    }
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let parallel = if gil_enabled(m.py()) { 1 } else { std::thread::available_parallelism().map_or(1, |n| n.get()).min(MAX_THREADS) };
    PARALLEL_HANDLERS.store(parallel, Ordering::Relaxed);
    m.add_function(wrap_pyfunction!(_parallel_handlers, m)?)?;
    m.add_function(wrap_pyfunction!(_set_error_factory, m)?)?;
    m.add_function(wrap_pyfunction!(version, m)?)?;
    m.add_function(wrap_pyfunction!(_debug_build, m)?)?;
    m.add_function(wrap_pyfunction!(_finalize, m)?)?;
    m.add_function(wrap_pyfunction!(error_kinds, m)?)?;
    m.add_class::<Reply>()?;
    m.add_class::<Inbox>()?;
    m.add_class::<inloop::LoopSocket>()?;
    m.add_class::<inloop::LoopConn>()?;
    m.add_class::<inloop::LoopReply>()?;
    m.add_class::<aioclient::LoopClient>()?;
    m.add_class::<aioclient::DialedSocket>()?;
    m.add_function(wrap_pyfunction!(inloop::_inloop_flush, m)?)?;
    m.add_function(wrap_pyfunction!(loop_spin::_loop_spin, m)?)?;
    m.add_function(wrap_pyfunction!(loop_spin::_spin_stats, m)?)?;
    m.add_function(wrap_pyfunction!(loop_spin::_poll_us, m)?)?;
    m.add_function(wrap_pyfunction!(lf::_lf_spin_stats, m)?)?;
    m.add_class::<Grape>()?;
    m.add_class::<Link>()?;
    m.add_class::<Keypair>()?;
    m.add_class::<PyServerTls>()?;
    m.add_class::<PyClientTls>()?;
    m.add_class::<Server>()?;
    m.add_class::<Client>()?;
    m.add_class::<Publisher>()?;
    m.add_class::<Subscriber>()?;
    Ok(())
}
