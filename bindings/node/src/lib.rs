//! The native addon of the `grenache-native` npm package (napi-rs) over the core's
//! [`grenache::embed`] facade.
//!
//! It is private: `index.js` wraps it with the public API (Promises, JSON, one error class per
//! core error kind, made from [`error_kinds`]). Conventions:
//! * one-shot operations take a completion function `(code, text)` called exactly once on the
//!   JS thread (a threadsafe function): on success `code` is undefined and `text` the result as
//!   JSON text; on failure `code` is the error kind's number and `text` its message;
//! * synchronous failures throw an `Error` whose `code` is the kind's `ERR_*` name and whose
//!   `message` is the error's text;
//! * request handlers get `(reply, payloadJson, fingerprint)`, `reply` a [`NativeReply`] that
//!   answers exactly once;
//! * nothing panics across the boundary: napi-rs turns a panic into a JS exception, and the
//!   facade catches panics of its own tasks.

// The classes are opaque handles for JS; Debug on them would print nothing useful.
#![allow(missing_debug_implementations)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use grenache::embed::{
    self, ClientOptions, ClientTls, EmbedClient, EmbedGrape, EmbedLink, EmbedPublisher, EmbedServer, EmbedSubscriber,
    GrapeConfig, Keypair as CoreKeypair, LinkConfig, MutableItem, ReplyOnce, RequestOptions, ServerOptions,
    ServerTls as CoreServerTls,
};
use grenache::rpc::{Reply, Request, TransportKind};
use grenache::tls::ClientAuth;
use grenache::{Error, ErrorKind, Result as GResult};
use napi::bindgen_prelude::{Buffer, FnArgs};
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi::Status;
use napi_derive::napi;

/// A completion: `(code, text)`.
type Done = ThreadsafeFunction<FnArgs<(Option<u32>, Option<String>)>, (), FnArgs<(Option<u32>, Option<String>)>, Status, false>;
/// A request handler: `(reply, payloadJson, fingerprint)`. Weak: it does not keep the process
/// alive by itself; `index.js` holds a handle of its own while the server is open, so the
/// process lives exactly until `close()`.
type HandlerArgs = FnArgs<(NativeReply, String, Option<String>)>;
type HandlerFn = ThreadsafeFunction<HandlerArgs, (), HandlerArgs, Status, false, true>;
/// A punch event callback: `(from)`; weak like [`HandlerFn`].
type PunchFn = ThreadsafeFunction<String, (), String, Status, false, true>;
/// A subscription callback: `(publisher, data, binary)`; weak like [`HandlerFn`].
type MessageFn = ThreadsafeFunction<FnArgs<(String, Buffer, bool)>, (), FnArgs<(String, Buffer, bool)>, Status, false, true>;

/// What a call returns: a thrown error's `code` is the kind's `ERR_*` name (napi sets `code`
/// from the status). Spelt out as `napi::Result<T, ErrName>` in signatures: the attribute macro
/// recognises a result by the name `Result`.
type ErrName = &'static str;

fn runtime() -> napi::Result<embed::Runtime, ErrName> {
    embed::shared_runtime().map_err(|e| js_err(&e))
}

fn js_err(e: &Error) -> napi::Error<ErrName> {
    napi::Error::new(e.kind().name(), e.text())
}

fn invalid(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidArgument, message)
}

/// The completion closure for the facade: calls `done(code, text)` on the JS thread.
fn complete(done: Done) -> impl FnOnce(GResult<String>) + Send + 'static {
    move |r| {
        let args = match r {
            Ok(text) => (None, Some(text)),
            Err(e) => (Some(e.code()), Some(e.text().to_string())),
        };
        done.call(FnArgs::from(args), ThreadsafeFunctionCallMode::NonBlocking);
    }
}

fn transport_kind(name: &str) -> napi::Result<TransportKind, ErrName> {
    name.parse().map_err(|e| js_err(&e))
}

fn millis(ms: Option<u32>) -> Option<Duration> {
    embed::millis(ms.map(u64::from))
}

fn port(p: Option<u32>) -> napi::Result<u16, ErrName> {
    u16::try_from(p.unwrap_or(0)).map_err(|_| js_err(&invalid("a port is 0..=65535")))
}

/// One core error kind, as [`error_kinds`] lists them.
#[napi(object)]
pub struct ErrorKindRow {
    pub code: u32,
    pub name: String,
    pub family: String,
    pub class_name: String,
    pub message: String,
}

/// Every error kind of the core, in code order: the table `index.js` derives its error classes
/// from.
#[napi]
pub fn error_kinds() -> Vec<ErrorKindRow> {
    ErrorKind::ALL
        .iter()
        .map(|k| ErrorKindRow {
            code: k.code(),
            name: k.name().to_string(),
            family: k.family().class_name().to_string(),
            class_name: k.class_name().to_string(),
            message: k.message().to_string(),
        })
        .collect()
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
    pub fn new(
        dht_port: Option<u32>,
        api_port: Option<u32>,
        bootstrap: Option<Vec<String>>,
        host: Option<String>,
        dht_state: Option<String>,
    ) -> napi::Result<Self, ErrName> {
        let rt = runtime()?;
        let mut config = GrapeConfig::new();
        config
            .dht_port(port(dht_port)?)
            .api_port(port(api_port)?)
            .bootstrap(bootstrap.unwrap_or_default())
            .dht_state(dht_state.filter(|p| !p.is_empty()).map(std::path::PathBuf::from));
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
    pub fn from_secret_hex(secret: String) -> napi::Result<Self, ErrName> {
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
    pub fn new(cert_pem: String, key_pem: String, client_ca_pem: Option<String>, client_auth: Option<String>) -> napi::Result<Self, ErrName> {
        let mode: ClientAuth = client_auth.as_deref().unwrap_or("none").parse().map_err(|e| js_err(&e))?;
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
    pub fn new(ca_pem: String, cert_pem: Option<String>, key_pem: Option<String>) -> napi::Result<Self, ErrName> {
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
    pub fn new(grape: String, request_timeout_ms: Option<u32>, lookup_cache_ms: Option<u32>) -> napi::Result<Self, ErrName> {
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
    pub fn announce(&self, name: String, port_: u32, done: Done) -> napi::Result<(), ErrName> {
        let p = port(Some(port_))?;
        let done = complete(done);
        self.inner.announce(name, p, move |r| done(r.map(|()| "null".to_string())));
        Ok(())
    }

    #[napi]
    pub fn start_announcing(&self, name: String, port_: u32, interval_ms: u32) -> napi::Result<(), ErrName> {
        let p = port(Some(port_))?;
        self.inner.start_announcing(&name, p, Duration::from_millis(u64::from(interval_ms))).map_err(|e| js_err(&e))
    }

    #[napi]
    pub fn stop_announcing(&self, name: String, port_: u32) -> napi::Result<bool, ErrName> {
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
    ) -> napi::Result<(), ErrName> {
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

/// The handle to answer one request, exactly once (over [`ReplyOnce`]): a second answer throws
/// `ERR_ALREADY_USED`; collected unanswered, the client receives `ERR_NO_REPLY`.
#[napi]
pub struct NativeReply {
    inner: ReplyOnce,
}

#[napi]
impl NativeReply {
    /// Answers with JSON text.
    #[napi]
    pub fn send(&self, result_json: String) -> napi::Result<(), ErrName> {
        self.inner.ok_json(&result_json).map_err(|e| js_err(&e))
    }

    /// Answers with an error message (the client gets a remote error with exactly this text).
    #[napi]
    pub fn error(&self, message: String) -> napi::Result<(), ErrName> {
        self.inner.err(&message).map_err(|e| js_err(&e))
    }

    /// Gives the reply up: the client receives `ERR_NO_REPLY` at once.
    #[napi]
    pub fn abandon(&self) -> napi::Result<(), ErrName> {
        self.inner.abandon().map_err(|e| js_err(&e))
    }

    #[napi(getter)]
    pub fn answered(&self) -> bool {
        self.inner.is_answered()
    }

    #[napi(getter)]
    pub fn closed(&self) -> bool {
        self.inner.is_closed()
    }
}

/// An RPC server.
#[napi]
pub struct NativeServer {
    inner: Arc<EmbedServer>,
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
    ) -> napi::Result<Self, ErrName> {
        let kind = transport_kind(&transport)?;
        // WS only: accept only clients whose certificate has one of these SHA-1 fingerprints.
        let verify_client = allow_fingerprints.map(grenache::tls::allow_fingerprints);
        let handler = Arc::new(handler);
        // A call that cannot be queued (the server is closing) drops its reply, which answers
        // ERR_NO_REPLY.
        let h = move |request: Request, reply: Reply| {
            let payload = embed::rpc::payload_json(&request).to_string();
            let fingerprint = embed::rpc::fingerprint(&request).map(str::to_string);
            let reply = NativeReply { inner: ReplyOnce::new(reply) };
            handler.call(FnArgs::from((reply, payload, fingerprint)), ThreadsafeFunctionCallMode::NonBlocking);
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
        Ok(NativeServer { inner: Arc::new(server) })
    }

    #[napi(getter)]
    pub fn port(&self) -> u32 {
        u32::from(self.inner.port())
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
    pub fn on_punch(&self, on_punch: PunchFn) -> napi::Result<(), ErrName> {
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

    /// Stops announcing and listening and closes connections: unanswered requests fail on the
    /// client's side with `ERR_TRANSPORT_CLOSE`.
    #[napi]
    pub fn close(&self) {
        self.inner.close();
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
    ) -> napi::Result<Self, ErrName> {
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
    pub fn new(link: &NativeLink, port_: Option<u32>, tls: Option<&NativeServerTls>) -> napi::Result<Self, ErrName> {
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
    pub fn new(link: &NativeLink, name: String, on_message: MessageFn, tls: Option<&NativeClientTls>) -> napi::Result<Self, ErrName> {
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
