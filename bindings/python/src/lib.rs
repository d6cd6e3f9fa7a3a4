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
//! * request handlers run on tokio's blocking pool, so a slow Python handler never stalls the
//!   I/O threads; completion callbacks (the asyncio path) run on an I/O thread and only
//!   schedule work on the event loop;
//! * errors become instances of the package's exception classes (`_set_error_factory`).

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use grenache::embed::{
    self, ClientOptions, ClientTls, EmbedClient, EmbedGrape, EmbedLink, EmbedPublisher, EmbedServer, EmbedSubscriber,
    GrapeConfig, Keypair as CoreKeypair, LinkConfig, MutableItem, RequestOptions, ServerOptions,
    ServerTls,
};
use grenache::rpc::{Request, TransportKind};
use grenache::tls::ClientAuth;
use grenache::{Error, ErrorKind, Result as GResult};
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;

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

/// Starts an operation whose completion sends on the channel, and waits for it with the GIL
/// released.
fn blocking<T: Send + 'static>(py: Python<'_>, start: impl FnOnce(mpsc::SyncSender<GResult<T>>)) -> PyResult<T> {
    let (tx, mut rx) = mpsc::sync_channel(1);
    start(tx);
    loop {
        let (got, back) = py.detach(move || (rx.recv_timeout(TICK), rx));
        rx = back;
        match got {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => return Err(py_err(py, &e)),
            Err(RecvTimeoutError::Timeout) => py.check_signals()?,
            Err(RecvTimeoutError::Disconnected) => {
                return Err(py_err(py, &Error::new(ErrorKind::Internal, "the operation ended without a result")));
            }
        }
    }
}

fn sender<T: Send + 'static>(tx: mpsc::SyncSender<GResult<T>>) -> impl FnOnce(GResult<T>) + Send + 'static {
    move |r| {
        let _ = tx.send(r);
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
    #[pyo3(signature = (dht_port=0, api_port=0, bootstrap=Vec::new(), host=None, dht_state=None))]
    fn new(
        py: Python<'_>,
        dht_port: u16,
        api_port: u16,
        bootstrap: Vec<String>,
        host: Option<String>,
        dht_state: Option<std::path::PathBuf>,
    ) -> PyResult<Grape> {
        let rt = runtime(py)?;
        let mut config = GrapeConfig::new();
        config.dht_port(dht_port).api_port(api_port).bootstrap(bootstrap).dht_state(dht_state);
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

/// An RPC server whose handler is a Python callable `handler(payload_json, fingerprint, reply)`
/// that answers through `reply` (a [`Reply`]), now or later.
#[pyclass(module = "grenache._native")]
struct Server {
    inner: Handle<EmbedServer>,
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
    #[pyo3(signature = (link, transport, handler, port=0, tls=None, reply_timeout_ms=None, verify_client=None, broker=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        link: &Link,
        transport: &str,
        handler: Py<PyAny>,
        port: u16,
        tls: Option<&PyServerTls>,
        reply_timeout_ms: Option<u64>,
        verify_client: Option<Py<PyAny>>,
        broker: Option<String>,
    ) -> PyResult<Server> {
        let kind = transport_kind(py, transport)?;
        let handler = Arc::new(handler);
        let h = move |request: Request, reply: grenache::rpc::Reply| {
            let handler = handler.clone();
            // A Python handler may block: run it on the blocking pool, not on an I/O thread.
            tokio::task::spawn_blocking(move || Python::attach(|py| answer(py, &handler, request, reply)));
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
            ..Default::default()
        };
        let link = Arc::clone(&link.inner);
        let server = py.detach(move || EmbedServer::listen(&link, kind, Arc::new(h), options)).map_err(|e| py_err(py, &e))?;
        Ok(Server { inner: Handle::new(server) })
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
        blocking(py, |tx| self.inner.shutdown(Duration::from_millis(grace_ms), sender(tx)))
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

    fn shutdown_cb(&self, grace_ms: u64, cb: Py<PyAny>) {
        let done = callback(cb);
        self.inner.shutdown(Duration::from_millis(grace_ms), move |r| done(r.map(|ok| ok.to_string())));
    }

    fn close(&self, py: Python<'_>) {
        let s = Arc::clone(&self.inner);
        py.detach(move || s.close());
    }
}

/// An RPC client; payloads and results are JSON text.
#[pyclass(module = "grenache._native")]
struct Client {
    inner: Handle<EmbedClient>,
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
        let client = py.detach(move || EmbedClient::new(&link, kind, options)).map_err(|e| py_err(py, &e))?;
        Ok(Client { inner: Handle::new(client) })
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
        blocking(py, |tx| self.inner.request(name, payload_json, opts, sender(tx)))
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

    #[pyo3(signature = (name, payload_json, timeout_ms=None, compress=false, limit=0))]
    fn map(&self, py: Python<'_>, name: String, payload_json: &str, timeout_ms: Option<u64>, compress: bool, limit: usize) -> PyResult<String> {
        let opts = request_options(timeout_ms, 0, compress, None, limit);
        blocking(py, |tx| self.inner.map(name, payload_json, opts, sender(tx)))
    }

    #[pyo3(signature = (name, payload_json, cb, timeout_ms=None, compress=false, limit=0))]
    #[allow(clippy::too_many_arguments)]
    fn map_cb(&self, name: String, payload_json: &str, cb: Py<PyAny>, timeout_ms: Option<u64>, compress: bool, limit: usize) {
        let opts = request_options(timeout_ms, 0, compress, None, limit);
        self.inner.map(name, payload_json, opts, callback(cb));
    }

    fn close(&self, py: Python<'_>) {
        let c = Arc::clone(&self.inner);
        py.detach(move || c.close());
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
    fn new(py: Python<'_>, link: &Link, name: &str, on_message: Py<PyAny>, tls: Option<&PyClientTls>, transport: &str) -> PyResult<Subscriber> {
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
    m.add_function(wrap_pyfunction!(_set_error_factory, m)?)?;
    m.add_function(wrap_pyfunction!(version, m)?)?;
    m.add_function(wrap_pyfunction!(error_kinds, m)?)?;
    m.add_class::<Reply>()?;
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
