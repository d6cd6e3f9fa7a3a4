//! The native addon of the `grenache-native` npm package (napi-rs) over the core's
//! [`grenache::embed`] facade.
//!
//! It is private: `index.js` wraps it with the public API (Promises, JSON, `Error` objects with
//! `.code`). Conventions:
//! * one-shot operations take a completion function `(err, result)` called exactly once on the
//!   JS thread (a threadsafe function); `err` is the JSON text `{"code","errno","message"}`,
//!   `result` a JSON text;
//! * synchronous failures throw an `Error` whose message is that same JSON text;
//! * request handlers get `(id, payloadJson, fingerprint)` and answer with
//!   `server.reply(id, err, resultJson)`; replies not yet sent are kept in a bounded table;
//! * nothing panics across the boundary: napi-rs turns a panic into a JS exception, and the
//!   facade catches panics of its own tasks.

// The classes are opaque handles for JS; Debug on them would print nothing useful.
#![allow(missing_debug_implementations)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use grenache::embed::{
    self, ClientOptions, ClientTls, EmbedClient, EmbedGrape, EmbedLink, EmbedPublisher, EmbedServer, EmbedSubscriber,
    GrapeConfig, Keypair as CoreKeypair, LinkConfig, MutableItem, RequestOptions, RuntimeOptions, ServerOptions,
    ServerTls as CoreServerTls,
};
use grenache::rpc::{Reply, Request, TransportKind};
use grenache::tls::ClientAuth;
use grenache::{Error, ErrorKind, Result as GResult};
use napi::bindgen_prelude::{Buffer, FnArgs};
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi::Status;
use napi_derive::napi;

/// A completion: `(err, result)`.
type Done = ThreadsafeFunction<FnArgs<(Option<String>, Option<String>)>, (), FnArgs<(Option<String>, Option<String>)>, Status, false>;
/// A request handler: `(id, payloadJson, fingerprint)`. Weak: it does not keep the process
/// alive by itself; `index.js` holds a handle of its own while the server is open, so the
/// process lives exactly until `close()`.
type HandlerFn = ThreadsafeFunction<FnArgs<(u32, String, Option<String>)>, (), FnArgs<(u32, String, Option<String>)>, Status, false, true>;
/// A punch event callback: `(from)`; weak like [`HandlerFn`].
type PunchFn = ThreadsafeFunction<String, (), String, Status, false, true>;
/// A subscription callback: `(publisher, data, binary)`; weak like [`HandlerFn`].
type MessageFn = ThreadsafeFunction<FnArgs<(String, Buffer, bool)>, (), FnArgs<(String, Buffer, bool)>, Status, false, true>;

/// Most replies a server keeps waiting for its JS handler; more requests are answered
/// `ERR_BUSY` until some are answered or time out.
const MAX_PENDING_REPLIES: usize = 65_536;

static RUNTIME: Mutex<Option<embed::Runtime>> = Mutex::new(None);

/// The process's runtime, started on first use: one worker per core, or
/// `GRENACHE_WORKER_THREADS` workers.
fn runtime() -> napi::Result<embed::Runtime> {
    let mut guard = RUNTIME.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(rt) = guard.as_ref()
        && rt.is_running()
    {
        return Ok(rt.clone());
    }
    let threads = std::env::var("GRENACHE_WORKER_THREADS").ok().and_then(|t| t.parse().ok()).unwrap_or(0);
    let rt = embed::Runtime::new(RuntimeOptions { worker_threads: threads, ..RuntimeOptions::default() }).map_err(|e| js_err(&e))?;
    *guard = Some(rt.clone());
    Ok(rt)
}

fn err_json(e: &Error) -> String {
    serde_json::json!({"grenache": true, "code": e.kind().name(), "errno": e.code(), "message": e.message()}).to_string()
}

fn js_err(e: &Error) -> napi::Error {
    napi::Error::new(Status::GenericFailure, err_json(e))
}

fn invalid(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidArgument, message)
}

/// The completion closure for the facade: calls `done(err, result)` on the JS thread.
fn complete(done: Done) -> impl FnOnce(GResult<String>) + Send + 'static {
    move |r| {
        let args = match r {
            Ok(text) => (None, Some(text)),
            Err(e) => (Some(err_json(&e)), None),
        };
        done.call(FnArgs::from(args), ThreadsafeFunctionCallMode::NonBlocking);
    }
}

fn transport_kind(name: &str) -> napi::Result<TransportKind> {
    match name {
        "http" => Ok(TransportKind::Http),
        "ws" => Ok(TransportKind::Ws),
        "utp" => Ok(TransportKind::Utp),
        other => Err(js_err(&invalid(format!("transport must be \"http\", \"ws\" or \"utp\", not {other:?}")))),
    }
}

fn millis(ms: Option<u32>) -> Option<Duration> {
    ms.map(|m| Duration::from_millis(u64::from(m)))
}

fn port(p: Option<u32>) -> napi::Result<u16> {
    u16::try_from(p.unwrap_or(0)).map_err(|_| js_err(&invalid("a port is 0..=65535")))
}

/// The library's version.
#[napi]
pub fn version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}

/// A running Grape.
#[napi]
pub struct NativeGrape {
    inner: Arc<Mutex<Option<EmbedGrape>>>,
    dht_port: u16,
    api_port: u16,
}

#[napi]
impl NativeGrape {
    #[napi(constructor)]
    pub fn new(dht_port: Option<u32>, api_port: Option<u32>, bootstrap: Option<Vec<String>>, host: Option<String>) -> napi::Result<Self> {
        let rt = runtime()?;
        let mut config = GrapeConfig::new();
        config.dht_port(port(dht_port)?).api_port(port(api_port)?).bootstrap(bootstrap.unwrap_or_default());
        if let Some(h) = host {
            let ip = h.parse().map_err(|_| js_err(&invalid(format!("host {h:?} is not an IP address"))))?;
            config.host(Some(ip));
        }
        let grape = EmbedGrape::start(&rt, config).map_err(|e| js_err(&e))?;
        let (dht_port, api_port) = grape.grape().map_or((0, 0), |g| (g.dht_addr().port(), g.api_addr().port()));
        Ok(NativeGrape { inner: Arc::new(Mutex::new(Some(grape))), dht_port, api_port })
    }

    #[napi(getter)]
    pub fn dht_port(&self) -> u32 {
        u32::from(self.dht_port)
    }

    #[napi(getter)]
    pub fn api_port(&self) -> u32 {
        u32::from(self.api_port)
    }

    /// Stops the Grape on a thread of its own, then calls `done`.
    #[napi]
    pub fn stop(&self, done: Done) {
        let grape = self.inner.lock().unwrap_or_else(|e| e.into_inner()).take();
        let _ = std::thread::Builder::new().name("grenache-stop".into()).spawn(move || {
            drop(grape);
            complete(done)(Ok("null".into()));
        });
    }
}

/// An ed25519 key pair.
#[napi]
pub struct NativeKeypair {
    inner: CoreKeypair,
}

#[napi]
impl NativeKeypair {
    #[napi(factory)]
    pub fn generate() -> Self {
        NativeKeypair { inner: CoreKeypair::generate() }
    }

    #[napi(factory)]
    pub fn from_secret_hex(secret: String) -> napi::Result<Self> {
        CoreKeypair::from_secret_hex(&secret).map(|inner| NativeKeypair { inner }).map_err(|e| js_err(&e))
    }

    #[napi(getter)]
    pub fn secret_hex(&self) -> String {
        self.inner.secret_hex()
    }

    #[napi(getter)]
    pub fn public_hex(&self) -> String {
        self.inner.public_hex()
    }
}

/// TLS settings of a server.
#[napi]
pub struct NativeServerTls {
    inner: CoreServerTls,
}

#[napi]
impl NativeServerTls {
    #[napi(constructor)]
    pub fn new(cert_pem: String, key_pem: String, client_ca_pem: Option<String>, client_auth: Option<String>) -> napi::Result<Self> {
        let mode = match client_auth.as_deref().unwrap_or("none") {
            "none" => ClientAuth::None,
            "optional" => ClientAuth::Optional,
            "required" => ClientAuth::Required,
            other => return Err(js_err(&invalid(format!("clientAuth must be none, optional or required, not {other:?}")))),
        };
        let mut b = CoreServerTls::builder(cert_pem.into_bytes(), key_pem.into_bytes());
        if let Some(ca) = client_ca_pem {
            b = b.client_ca_pem(ca.into_bytes());
        }
        b.client_auth(mode).build().map(|inner| NativeServerTls { inner }).map_err(|e| js_err(&e))
    }
}

/// TLS settings of a client.
#[napi]
pub struct NativeClientTls {
    inner: ClientTls,
}

#[napi]
impl NativeClientTls {
    #[napi(constructor)]
    pub fn new(ca_pem: String, cert_pem: Option<String>, key_pem: Option<String>) -> napi::Result<Self> {
        let mut b = ClientTls::builder().ca_pem(ca_pem.into_bytes()).check_server_name(false);
        match (cert_pem, key_pem) {
            (Some(c), Some(k)) => b = b.client_cert_pem(c.into_bytes(), k.into_bytes()),
            (None, None) => {}
            _ => return Err(js_err(&invalid("cert and key go together"))),
        }
        b.build().map(|inner| NativeClientTls { inner }).map_err(|e| js_err(&e))
    }
}

/// A client of one Grape's HTTP API.
#[napi]
pub struct NativeLink {
    inner: Arc<EmbedLink>,
}

#[napi]
impl NativeLink {
    #[napi(constructor)]
    pub fn new(grape: String, request_timeout_ms: Option<u32>, lookup_cache_ms: Option<u32>) -> napi::Result<Self> {
        let rt = runtime()?;
        let mut config = LinkConfig::with_grape(grape);
        if let Some(t) = millis(request_timeout_ms) {
            config.request_timeout = t;
        }
        if let Some(t) = millis(lookup_cache_ms) {
            config.lookup_cache_ttl = t;
        }
        let link = EmbedLink::new(&rt, config).map_err(|e| js_err(&e))?;
        Ok(NativeLink { inner: Arc::new(link) })
    }

    #[napi]
    pub fn lookup(&self, name: String, done: Done) {
        self.inner.lookup(name, complete(done));
    }

    #[napi]
    pub fn announce(&self, name: String, port_: u32, done: Done) -> napi::Result<()> {
        let p = port(Some(port_))?;
        let done = complete(done);
        self.inner.announce(name, p, move |r| done(r.map(|()| "null".to_string())));
        Ok(())
    }

    #[napi]
    pub fn start_announcing(&self, name: String, port_: u32, interval_ms: u32) -> napi::Result<()> {
        let p = port(Some(port_))?;
        self.inner.start_announcing(&name, p, Duration::from_millis(u64::from(interval_ms))).map_err(|e| js_err(&e))
    }

    #[napi]
    pub fn stop_announcing(&self, name: String, port_: u32) -> napi::Result<bool> {
        Ok(self.inner.stop_announcing(&name, port(Some(port_))?))
    }

    #[napi]
    pub fn put(&self, v_json: String, done: Done) {
        self.inner.put(&v_json, complete(done));
    }

    #[napi]
    pub fn put_mutable(
        &self,
        key: &NativeKeypair,
        v_json: String,
        seq: i64,
        salt: Option<String>,
        cas: Option<i64>,
        done: Done,
    ) -> napi::Result<()> {
        let v = embed::rpc::parse_json(&v_json).map_err(|e| js_err(&e))?;
        let mut item = MutableItem::new(v, seq);
        item.salt = salt;
        item.cas = cas;
        self.inner.put_mutable(&key.inner, item, complete(done));
        Ok(())
    }

    #[napi]
    pub fn get(&self, hash: String, salt: Option<String>, done: Done) {
        self.inner.get(hash, salt, complete(done));
    }

    #[napi]
    pub fn close(&self) {
        self.inner.close();
    }
}

/// Replies waiting for the JS handler.
#[derive(Default)]
struct Pending {
    next: AtomicU32,
    replies: Mutex<HashMap<u32, Reply>>,
}

impl Pending {
    /// Keeps `reply` under a new id; `None` (and the reply answered `ERR_BUSY`) when full.
    fn insert(&self, reply: Reply) -> Option<u32> {
        let mut map = self.replies.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_PENDING_REPLIES {
            // Drop the replies nobody waits for any more (timed out, client gone).
            map.retain(|_, r| !r.is_closed());
            if map.len() >= MAX_PENDING_REPLIES {
                drop(map);
                reply.err("ERR_BUSY");
                return None;
            }
        }
        let mut id = self.next.fetch_add(1, Ordering::Relaxed);
        while map.contains_key(&id) {
            id = self.next.fetch_add(1, Ordering::Relaxed);
        }
        map.insert(id, reply);
        Some(id)
    }

    fn take(&self, id: u32) -> Option<Reply> {
        self.replies.lock().unwrap_or_else(|e| e.into_inner()).remove(&id)
    }
}

/// An RPC server.
#[napi]
pub struct NativeServer {
    inner: Arc<EmbedServer>,
    pending: Arc<Pending>,
}

#[napi]
impl NativeServer {
    #[napi(constructor)]
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        link: &NativeLink,
        transport: String,
        handler: HandlerFn,
        port_: Option<u32>,
        tls: Option<&NativeServerTls>,
        reply_timeout_ms: Option<u32>,
        allow_fingerprints: Option<Vec<String>>,
        broker: Option<String>,
    ) -> napi::Result<Self> {
        let kind = transport_kind(&transport)?;
        // WS only: accept only clients whose certificate has one of these SHA-1 fingerprints.
        let verify_client = allow_fingerprints.map(grenache::tls::allow_fingerprints);
        let pending = Arc::new(Pending::default());
        let p2 = pending.clone();
        let handler = Arc::new(handler);
        let h = move |request: Request, reply: Reply| {
            let Some(id) = p2.insert(reply) else { return };
            let payload = embed::rpc::payload_json(&request);
            let fingerprint = embed::rpc::fingerprint(&request).map(str::to_string);
            let status = handler.call(FnArgs::from((id, payload, fingerprint)), ThreadsafeFunctionCallMode::NonBlocking);
            if status != Status::Ok
                && let Some(reply) = p2.take(id)
            {
                reply.err("ERR_BUSY");
            }
        };
        let options = ServerOptions {
            port: port(port_)?,
            tls: tls.map(|t| t.inner.clone()),
            reply_timeout: millis(reply_timeout_ms),
            verify_client,
            broker,
            ..Default::default()
        };
        let server = EmbedServer::listen(&link.inner, kind, Arc::new(h), options).map_err(|e| js_err(&e))?;
        Ok(NativeServer { inner: Arc::new(server), pending })
    }

    #[napi(getter)]
    pub fn port(&self) -> u32 {
        u32::from(self.inner.port())
    }

    /// Answers request `id`: with `err` (an error message) or with the JSON text `result_json`.
    /// Returns false when the request is unknown or was already answered (or timed out).
    #[napi]
    pub fn reply(&self, id: u32, err: Option<String>, result_json: Option<String>) -> napi::Result<bool> {
        let Some(reply) = self.pending.take(id) else { return Ok(false) };
        match (err, result_json) {
            (Some(e), _) => reply.err(e),
            (None, Some(json)) => embed::rpc::reply_json(reply, &json).map_err(|e| js_err(&e))?,
            (None, None) => reply.ok(serde_json::Value::Null),
        }
        Ok(true)
    }

    #[napi]
    pub fn announce(&self, name: String, done: Done) {
        let done = complete(done);
        self.inner.announce(name, move |r| done(r.map(|()| "null".to_string())));
    }

    #[napi]
    pub fn start_announcing(&self, name: String, interval_ms: u32) {
        self.inner.start_announcing(&name, Duration::from_millis(u64::from(interval_ms)));
    }

    #[napi]
    pub fn stop_announcing(&self, name: String) -> bool {
        self.inner.stop_announcing(&name)
    }

    /// uTP: punches `target` ("ip:port") until it answers; `done` gets an error
    /// (ERR_PUNCH_TIMEOUT) when nothing came back within `timeout_ms`.
    #[napi]
    pub fn punch(&self, target: String, timeout_ms: u32, done: Done) {
        let done = complete(done);
        self.inner.punch(&target, Duration::from_millis(u64::from(timeout_ms)), move |r| done(r.map(|()| "null".to_string())));
    }

    /// uTP: `on_punch(from)` for every punch reaching the server's socket, until closed.
    #[napi]
    pub fn on_punch(&self, on_punch: PunchFn) -> napi::Result<()> {
        self.inner
            .on_punch(move |from| {
                on_punch.call(from, ThreadsafeFunctionCallMode::NonBlocking);
            })
            .map_err(|e| js_err(&e))
    }

    /// Graceful shutdown; `done` gets "true" when every connection finished within the grace,
    /// "false" when the rest had to be closed.
    #[napi]
    pub fn shutdown(&self, grace_ms: u32, done: Done) {
        let done = complete(done);
        self.inner.shutdown(Duration::from_millis(u64::from(grace_ms)), move |r| done(r.map(|ok| ok.to_string())));
    }

    /// Stops listening; unanswered requests get `ERR_TRANSPORT_CLOSE`-style failures.
    #[napi]
    pub fn close(&self) {
        self.inner.close();
        let drained: Vec<Reply> = self.pending.replies.lock().unwrap_or_else(|e| e.into_inner()).drain().map(|(_, r)| r).collect();
        for r in drained {
            r.err("ERR_SERVER_CLOSED");
        }
    }
}

/// An RPC client.
#[napi]
pub struct NativeClient {
    inner: Arc<EmbedClient>,
}

fn request_options(timeout_ms: Option<u32>, retry: Option<u32>, compress: Option<bool>, dest: Option<String>, limit: Option<u32>) -> RequestOptions {
    RequestOptions {
        timeout: millis(timeout_ms),
        retry: retry.unwrap_or(0),
        compress: compress.unwrap_or(false),
        dest,
        limit: limit.unwrap_or(0) as usize,
        ..Default::default()
    }
}

#[napi]
impl NativeClient {
    #[napi(constructor)]
    pub fn new(
        link: &NativeLink,
        transport: String,
        tls: Option<&NativeClientTls>,
        timeout_ms: Option<u32>,
        broker: Option<String>,
        punch_timeout_ms: Option<u32>,
    ) -> napi::Result<Self> {
        let kind = transport_kind(&transport)?;
        let options = ClientOptions {
            tls: tls.map(|t| t.inner.clone()),
            default_timeout: millis(timeout_ms),
            broker,
            punch_timeout: millis(punch_timeout_ms),
        };
        let client = EmbedClient::new(&link.inner, kind, options).map_err(|e| js_err(&e))?;
        Ok(NativeClient { inner: Arc::new(client) })
    }

    #[napi]
    #[allow(clippy::too_many_arguments)]
    pub fn request(
        &self,
        name: String,
        payload_json: String,
        timeout_ms: Option<u32>,
        retry: Option<u32>,
        compress: Option<bool>,
        dest: Option<String>,
        done: Done,
    ) {
        let opts = request_options(timeout_ms, retry, compress, dest, None);
        self.inner.request(name, &payload_json, opts, complete(done));
    }

    #[napi]
    pub fn map(&self, name: String, payload_json: String, timeout_ms: Option<u32>, compress: Option<bool>, limit: Option<u32>, done: Done) {
        let opts = request_options(timeout_ms, None, compress, None, limit);
        self.inner.map(name, &payload_json, opts, complete(done));
    }

    #[napi]
    pub fn close(&self) {
        self.inner.close();
    }
}

/// A PUB/SUB publisher.
#[napi]
pub struct NativePublisher {
    inner: Arc<EmbedPublisher>,
}

#[napi]
impl NativePublisher {
    #[napi(constructor)]
    pub fn new(link: &NativeLink, port_: Option<u32>, tls: Option<&NativeServerTls>) -> napi::Result<Self> {
        let p = EmbedPublisher::bind(&link.inner, port(port_)?, tls.map(|t| t.inner.clone())).map_err(|e| js_err(&e))?;
        Ok(NativePublisher { inner: Arc::new(p) })
    }

    #[napi(getter)]
    pub fn port(&self) -> u32 {
        u32::from(self.inner.port())
    }

    #[napi]
    pub fn start_announcing(&self, name: String, interval_ms: u32) {
        self.inner.start_announcing(&name, Duration::from_millis(u64::from(interval_ms)));
    }

    #[napi]
    pub fn publish(&self, text: String) -> u32 {
        u32::try_from(self.inner.publish(&text)).unwrap_or(u32::MAX)
    }

    #[napi(getter)]
    pub fn subscribers(&self) -> u32 {
        u32::try_from(self.inner.subscribers()).unwrap_or(u32::MAX)
    }

    #[napi]
    pub fn close(&self) {
        self.inner.close();
    }
}

/// A PUB/SUB subscription.
#[napi]
pub struct NativeSubscriber {
    inner: Arc<EmbedSubscriber>,
}

#[napi]
impl NativeSubscriber {
    #[napi(constructor)]
    pub fn new(link: &NativeLink, name: String, on_message: MessageFn, tls: Option<&NativeClientTls>) -> napi::Result<Self> {
        let sub = EmbedSubscriber::subscribe(&link.inner, &name, tls.map(|t| t.inner.clone()), move |m| {
            let args = (m.publisher.to_string(), Buffer::from(m.data.to_vec()), m.binary);
            on_message.call(FnArgs::from(args), ThreadsafeFunctionCallMode::NonBlocking);
        })
        .map_err(|e| js_err(&e))?;
        Ok(NativeSubscriber { inner: Arc::new(sub) })
    }

    #[napi(getter)]
    pub fn publishers(&self) -> u32 {
        u32::try_from(self.inner.publishers()).unwrap_or(u32::MAX)
    }

    #[napi]
    pub fn close(&self) {
        self.inner.close();
    }
}
