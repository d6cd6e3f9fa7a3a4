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
    self, ClientOptions, ClientTls, EmbedClient, EmbedGrape, EmbedLink, EmbedPublisher, EmbedServer, EmbedSubscriber, GrapeConfig,
    Keypair as CoreKeypair, LinkConfig, MutableItem, ReplyOnce, RequestOptions, ServerOptions, ServerTls as CoreServerTls,
};
use grenache::rpc::{Reply, Request, TransportKind};
use grenache::tls::ClientAuth;
use grenache::{Error, ErrorKind, Result as GResult};
use napi::Status;
use napi::bindgen_prelude::{Buffer, Either, FnArgs};
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi_derive::napi;

// Their exports are registered by #[napi]; a test build of the crate does not register them.
#[cfg_attr(test, allow(dead_code))]
mod inloop;
#[cfg_attr(test, allow(dead_code))]
mod spin;

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

/// A JS object of numeric settings `{ name: number }` as whole numbers (a negative, fractional or
/// non-finite value is an `InvalidArgument` error naming the setting).
fn whole_numbers(map: Option<std::collections::HashMap<String, f64>>) -> napi::Result<Vec<(String, u64)>, ErrName> {
    let mut out = Vec::new();
    for (name, v) in map.unwrap_or_default() {
        if !(v.is_finite() && v >= 0.0 && v.fract() == 0.0 && v <= u64::MAX as f64) {
            return Err(js_err(&invalid(format!("{name} must be a whole number >= 0, not {v}"))));
        }
        out.push((name, v as u64));
    }
    Ok(out)
}

/// The server limits `limits` gives (names of the core's table, any spelling), over the core's
/// defaults: every limit by its snake_case name. Unknown names and values the core refuses are
/// `ERR_INVALID_ARGUMENT` errors, as when a server is made with them.
#[napi]
pub fn server_limits(
    limits: Option<std::collections::HashMap<String, f64>>,
) -> napi::Result<std::collections::HashMap<String, f64>, ErrName> {
    let mut server_limits = grenache::transport::ServerLimits::default();
    for (name, value) in whole_numbers(limits)? {
        server_limits.set(&name, value).map_err(|e| js_err(&e))?;
    }
    Ok(grenache::transport::SERVER_LIMIT_NAMES.iter().map(|n| (n.to_string(), server_limits.get(n).unwrap_or(0) as f64)).collect())
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
        options: Option<std::collections::HashMap<String, f64>>,
    ) -> napi::Result<Self, ErrName> {
        let rt = runtime()?;
        let mut config = GrapeConfig::new();
        config
            .dht_port(port(dht_port)?)
            .api_port(port(api_port)?)
            .bootstrap(bootstrap.unwrap_or_default())
            .dht_state(dht_state.filter(|p| !p.is_empty()).map(std::path::PathBuf::from));
        // The numeric options by name (the core's table: `GRAPE_OPTION_NAMES`; camelCase works).
        for (name, value) in whole_numbers(options)? {
            config.set(&name, value).map_err(|e| js_err(&e))?;
        }
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
    pub fn new(
        cert_pem: String,
        key_pem: String,
        client_ca_pem: Option<String>,
        client_auth: Option<String>,
    ) -> napi::Result<Self, ErrName> {
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
    pub fn unannounce(&self, name: String, port_: u32, done: Done) -> napi::Result<(), ErrName> {
        let p = port(Some(port_))?;
        let done = complete(done);
        self.inner.unannounce(name, p, move |r| done(r.map(|n| n.to_string())));
        Ok(())
    }

    /// Pins `name` to the service's public keys (hex; empty unpins).
    #[napi]
    pub fn pin_service(&self, name: String, keys: Vec<String>) -> napi::Result<(), ErrName> {
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        self.inner.pin_service(&name, &keys).map_err(|e| js_err(&e))
    }

    /// Signs the announces of `name` with the key pairs of these secret seeds (hex).
    #[napi]
    pub fn sign_announcements(&self, name: String, secrets_hex: Vec<String>, ttl_ms: u32) -> napi::Result<(), ErrName> {
        let keys = secrets_hex.iter().map(|s| CoreKeypair::from_secret_hex(s)).collect::<Result<Vec<_>, _>>().map_err(|e| js_err(&e))?;
        let ttl = if ttl_ms == 0 { Duration::from_secs(600) } else { Duration::from_millis(u64::from(ttl_ms)) };
        self.inner.sign_announcements(&name, keys, ttl).map_err(|e| js_err(&e))
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
        limits: Option<std::collections::HashMap<String, f64>>,
    ) -> napi::Result<Self, ErrName> {
        let kind = transport_kind(&transport)?;
        // Limits against hostile load by name (the core's table: `SERVER_LIMIT_NAMES`).
        let mut server_limits = grenache::transport::ServerLimits::default();
        for (name, value) in whole_numbers(limits)? {
            server_limits.set(&name, value).map_err(|e| js_err(&e))?;
        }
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
            limits: server_limits,
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

fn request_options(
    timeout_ms: Option<u32>,
    retry: Option<u32>,
    compress: Option<bool>,
    dest: Option<String>,
    limit: Option<u32>,
) -> RequestOptions {
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
            ..Default::default()
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
    pub fn new(
        link: &NativeLink,
        port_: Option<u32>,
        tls: Option<&NativeServerTls>,
        transport: Option<String>,
    ) -> napi::Result<Self, ErrName> {
        let kind = transport_kind(transport.as_deref().unwrap_or("ws"))?;
        let options = grenache::embed::ServerOptions { port: port(port_)?, tls: tls.map(|t| t.inner.clone()), ..Default::default() };
        let p = EmbedPublisher::bind_kind(&link.inner, kind, options).map_err(|e| js_err(&e))?;
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
    pub fn new(
        link: &NativeLink,
        name: String,
        on_message: MessageFn,
        tls: Option<&NativeClientTls>,
        transport: Option<String>,
    ) -> napi::Result<Self, ErrName> {
        let kind = transport_kind(transport.as_deref().unwrap_or("ws"))?;
        let sub = EmbedSubscriber::subscribe_kind(&link.inner, &name, kind, tls.map(|t| t.inner.clone()), move |m| {
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

// ---------------------------------------------------------------------------------------------
// What the reference-compatible modules (lib/*.js: grenache-native/grape, /link, /http, /ws)
// need beyond the API above: Grape events and direct Grape calls, raw Grape API calls, request
// envelopes with their rid/key/metadata, a JS verifyClient, binary publishing and a
// subscription to one fixed publisher with connection events.

/// A Grape event listener: `(kind, argument)`; weak (the JS Grape keeps the process alive while
/// it runs).
type GrapeEventFn = ThreadsafeFunction<FnArgs<(String, Option<String>)>, (), FnArgs<(String, Option<String>)>, Status, false, true>;
/// A request handler that sees the envelope: `(reply, ridJson, key, payloadJson, fingerprint,
/// metaJson)`; `metaJson` is the HTTP metadata (`isStream`, `compress`, `infoHeaders`, `action`,
/// `args`) as JSON, `None` over WS.
type EnvelopeArgs = FnArgs<(NativeReply, String, String, String, Option<String>, Option<String>)>;
type EnvelopeHandlerFn = ThreadsafeFunction<EnvelopeArgs, (), EnvelopeArgs, Status, false, true>;
/// A JS verifyClient: `(ticket, fingerprint, remoteAddress, path)`, answered with
/// [`verify_answer`].
type VerifyFn = ThreadsafeFunction<
    FnArgs<(u32, Option<String>, Option<String>, String)>,
    (),
    FnArgs<(u32, Option<String>, Option<String>, String)>,
    Status,
    false,
    true,
>;
/// A batch of messages of one subscription, in order: text frames as strings, binary ones as
/// Buffers (weak, like [`MessageFn`]).
type BatchFn = ThreadsafeFunction<Vec<Either<String, Buffer>>, (), Vec<Either<String, Buffer>>, Status, false, true>;
/// Most messages delivered in one call of a [`BatchFn`].
const SUB_BATCH: usize = 1024;
/// A subscription's connection state: `(connected)`.
type StateFn = ThreadsafeFunction<bool, (), bool, Status, false, true>;

/// How long a TLS client waits for the JS verifyClient's answer before it is refused.
const VERIFY_TIMEOUT: Duration = Duration::from_secs(10);

/// verifyClient calls waiting for their JS answer, by ticket.
static VERIFY_WAITING: Mutex<Option<std::collections::HashMap<u32, std::sync::mpsc::Sender<bool>>>> = Mutex::new(None);
static VERIFY_NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);

/// Answers the verifyClient call `ticket`; false when it is unknown (it timed out).
#[napi]
pub fn verify_answer(ticket: u32, ok: bool) -> bool {
    let tx = VERIFY_WAITING.lock().unwrap_or_else(|e| e.into_inner()).as_mut().and_then(|m| m.remove(&ticket));
    tx.is_some_and(|tx| tx.send(ok).is_ok())
}

/// A [`grenache::tls::VerifyClient`] hook that asks the JS function and waits (bounded) for its
/// answer on the worker thread doing the handshake.
fn js_verify(verify: VerifyFn) -> grenache::tls::VerifyClient {
    let verify = Arc::new(verify);
    grenache::tls::verify_client(move |c| {
        let ticket = VERIFY_NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = std::sync::mpsc::channel();
        VERIFY_WAITING.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert_with(std::collections::HashMap::new).insert(ticket, tx);
        let args = (ticket, c.cert.map(|p| p.fingerprint.clone()), c.remote_addr.map(|a| a.to_string()), c.path.to_string());
        let ok = verify.call(FnArgs::from(args), ThreadsafeFunctionCallMode::NonBlocking) == Status::Ok
            && rx.recv_timeout(VERIFY_TIMEOUT).unwrap_or(false);
        if let Some(m) = VERIFY_WAITING.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            m.remove(&ticket);
        }
        ok
    })
}

/// The HTTP metadata of a request as JSON, in the reference's `meta` shape.
fn http_meta_json(request: &Request) -> Option<String> {
    request.info.http.as_ref().map(|h| {
        serde_json::json!({
            "isStream": h.is_stream,
            "compress": h.compress,
            "infoHeaders": h.info_headers,
            "action": h.action,
            "args": h.args,
        })
        .to_string()
    })
}

/// Peers as the JSON text of a lookup's answer: `'["ip:port",...]'`.
fn peers_json(peers: &[std::net::SocketAddr]) -> String {
    serde_json::Value::from(peers.iter().map(ToString::to_string).collect::<Vec<_>>()).to_string()
}

fn grape_event(ev: &grenache::grape::GrapeEvent) -> (String, Option<String>) {
    use grenache::grape::GrapeEvent as E;
    match ev {
        E::Listening => ("listening".into(), None),
        E::Ready => ("ready".into(), None),
        E::Announce(name) => ("announce".into(), Some(name.clone())),
        E::Peer(peer) => ("peer".into(), Some(peer.clone())),
        E::Node => ("node".into(), None),
        E::Warning(w) => ("warning".into(), Some(w.clone())),
        other => (format!("{other:?}").to_lowercase(), None),
    }
}

#[napi]
impl NativeGrape {
    /// Starts a Grape from the reference's options as JSON: `dht_port`, `api_port`,
    /// `dht_bootstrap`, `host`, `dht_maxTables`, `dht_maxValues`, `dht_peer_maxAge`,
    /// `dht_nodeLiveness`, `check_maxPayloadSize` (absent: the defaults).
    #[napi(factory)]
    pub fn start_with(conf_json: String) -> napi::Result<Self, ErrName> {
        let rt = runtime()?;
        let conf: serde_json::Value = embed::rpc::parse_json(&conf_json).map_err(|e| js_err(&e))?;
        let num = |k: &str| conf.get(k).and_then(serde_json::Value::as_u64);
        let mut config = GrapeConfig::new();
        let p = |k: &str| u16::try_from(num(k).unwrap_or(0)).map_err(|_| js_err(&invalid(format!("{k} is a port (0..=65535)"))));
        config.dht_port(p("dht_port")?).api_port(p("api_port")?);
        if let Some(b) = conf.get("dht_bootstrap").and_then(serde_json::Value::as_array) {
            config.bootstrap(b.iter().filter_map(|v| v.as_str().map(str::to_string)).collect());
        }
        if let Some(h) = conf.get("host").and_then(serde_json::Value::as_str) {
            let ip = h.parse().map_err(|_| js_err(&invalid(format!("host {h:?} is not an IP address"))))?;
            config.host(Some(ip));
        }
        let usize_of = |k: &str| num(k).map(|n| usize::try_from(n).unwrap_or(usize::MAX));
        if let Some(n) = usize_of("dht_maxTables") {
            config.max_tables(n);
        }
        if let Some(n) = usize_of("dht_maxValues") {
            config.max_values(n);
        }
        if let Some(n) = num("dht_peer_maxAge") {
            config.peer_max_age(Duration::from_millis(n));
        }
        if let Some(n) = num("dht_nodeLiveness") {
            config.node_liveness(Duration::from_millis(n));
        }
        if let Some(n) = usize_of("check_maxPayloadSize") {
            config.check_max_payload_size(n);
        }
        let grape = EmbedGrape::start(&rt, config).map_err(|e| js_err(&e))?;
        let (dht_port, api_port) = grape.grape().map_or((0, 0), |g| (g.dht_addr().port(), g.api_addr().port()));
        Ok(NativeGrape { inner: Arc::new(Mutex::new(Some(grape))), dht_port, api_port })
    }

    /// Calls `on_event(kind, arg)` for each event (listening, ready, announce, peer, node,
    /// warning) until the Grape stops.
    #[napi]
    pub fn on_event(&self, on_event: GrapeEventFn) -> napi::Result<(), ErrName> {
        let guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let Some(g) = guard.as_ref() else { return Err(js_err(&Error::new(ErrorKind::InvalidState, "the Grape is stopped"))) };
        g.on_event(move |d| {
            if let embed::GrapeEventDelivery::Event(ev) = d {
                on_event.call(FnArgs::from(grape_event(ev)), ThreadsafeFunctionCallMode::NonBlocking);
            }
        })
        .map_err(|e| js_err(&e))
    }

    fn core(&self) -> GResult<grenache::grape::Grape> {
        let guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        guard.as_ref().and_then(|g| g.grape().cloned()).ok_or_else(|| Error::new(ErrorKind::InvalidState, "the Grape is stopped"))
    }

    /// Looks `name` up in the DHT from this Grape: `done(err, '["ip:port",...]')`.
    #[napi]
    pub fn lookup(&self, name: String, done: Done) -> napi::Result<(), ErrName> {
        let rt = runtime()?;
        let done = complete(done);
        match self.core() {
            Ok(g) => rt.spawn(async move { done(g.lookup(&name).await.map(|peers| peers_json(&peers))) }),
            Err(e) => done(Err(e)),
        }
        Ok(())
    }

    /// What `lookup` would answer at once without a DHT walk (a name walked less than the
    /// lookup window ago), as `'["ip:port",...]'`, computed on the calling thread; `null` when
    /// `lookup` has to walk, or the Grape is stopped (then `lookup` reports it).
    #[napi]
    pub fn lookup_in_window(&self, name: String) -> Option<String> {
        self.core().ok()?.lookup_in_window(&name).map(|peers| peers_json(&peers))
    }

    /// Announces `name` at `port` from this Grape: `done(err, count)`.
    #[napi]
    pub fn announce(&self, name: String, port_: u32, done: Done) -> napi::Result<(), ErrName> {
        let p = port(Some(port_))?;
        let rt = runtime()?;
        let done = complete(done);
        match self.core() {
            Ok(g) => rt.spawn(async move { done(g.announce(&name, p).await.map(|n| n.to_string())) }),
            Err(e) => done(Err(e)),
        }
        Ok(())
    }
}

#[napi]
impl NativeLink {
    /// One call to the Grape's HTTP API (`POST /<kind>` with `{rid, data}`), as the reference
    /// Link's `_post`: `done(err, resultJson)`, no result for an empty body.
    #[napi]
    pub fn call(&self, kind: String, data_json: String, timeout_ms: Option<u32>, done: Done) {
        let done = complete(done);
        let data = match embed::rpc::parse_json(&data_json) {
            Ok(v) => v,
            Err(e) => return done(Err(e)),
        };
        let link = self.inner.link().clone();
        self.inner.runtime().spawn(async move {
            let r = link.call(&kind, &data, millis(timeout_ms)).await;
            match r {
                Ok(Some(v)) => done(Ok(v.to_string())),
                Ok(None) => done(Ok(String::new())),
                Err(e) => done(Err(e)),
            }
        });
    }
}

#[napi]
impl NativeServer {
    /// Like the constructor, with a handler that sees the envelope (see `EnvelopeHandlerFn`)
    /// and, for WS over TLS, a JS `verify(ticket, fingerprint, remote, path)` answered with
    /// [`verify_answer`].
    #[napi(factory)]
    #[allow(clippy::too_many_arguments)]
    pub fn listen_envelope(
        transport: String,
        handler: EnvelopeHandlerFn,
        port_: Option<u32>,
        tls: Option<&NativeServerTls>,
        verify: Option<VerifyFn>,
        link: &NativeLink,
        limits: Option<std::collections::HashMap<String, f64>>,
    ) -> napi::Result<Self, ErrName> {
        let kind = transport_kind(&transport)?;
        let mut server_limits = grenache::transport::ServerLimits::default();
        for (name, value) in whole_numbers(limits)? {
            server_limits.set(&name, value).map_err(|e| js_err(&e))?;
        }
        let handler = Arc::new(handler);
        // A call that cannot be queued (the server is closing) drops its reply, which answers
        // ERR_NO_REPLY.
        let h = move |request: Request, reply: Reply| {
            let args = (
                NativeReply { inner: ReplyOnce::new(reply) },
                request.rid.to_string(),
                request.key.clone(),
                embed::rpc::payload_json(&request).to_string(),
                embed::rpc::fingerprint(&request).map(str::to_string),
                http_meta_json(&request),
            );
            handler.call(FnArgs::from(args), ThreadsafeFunctionCallMode::NonBlocking);
        };
        let options = ServerOptions {
            port: port(port_)?,
            tls: tls.map(|t| t.inner.clone()),
            reply_timeout: None,
            verify_client: verify.map(js_verify),
            limits: server_limits,
            ..Default::default()
        };
        let server = EmbedServer::listen(&link.inner, kind, Arc::new(h), options).map_err(|e| js_err(&e))?;
        Ok(NativeServer { inner: Arc::new(server) })
    }
}

#[napi]
impl NativePublisher {
    /// Sends `data` as one binary frame to every subscriber; returns how many it was queued for.
    #[napi]
    pub fn publish_binary(&self, data: Buffer) -> u32 {
        u32::try_from(self.inner.publish_binary(&data)).unwrap_or(u32::MAX)
    }
}

/// A subscription to one publisher at a fixed address (the reference's `TransportSub`), with
/// connection events.
#[napi]
pub struct NativeSubTo {
    gate: embed::Gate,
    task: tokio::task::AbortHandle,
}

#[napi]
impl NativeSubTo {
    /// Connects to the publisher at `dest` ("host:port"); `on_messages([data, ...])` for every
    /// batch of messages that arrived together (one JS call, not one per message: a string per
    /// text frame, a Buffer per binary one), `on_state(connected)` when the connection opens or
    /// closes.
    #[napi(constructor)]
    pub fn new(dest: String, on_messages: BatchFn, on_state: StateFn) -> napi::Result<Self, ErrName> {
        let rt = runtime()?;
        let _g = rt.handle().enter();
        let sub = grenache::pubsub::PeerSub::sub_to(vec![dest], grenache::pubsub::SubConfig::default());
        let gate = embed::Gate::new();
        let g2 = gate.clone();
        let task = rt.handle().spawn(async move {
            let mut sub = sub;
            let mut connected = false;
            loop {
                let next = tokio::time::timeout(Duration::from_millis(50), sub.recv()).await;
                let now = sub.publishers() > 0;
                if now != connected {
                    connected = now;
                    if !g2.run(|| {
                        on_state.call(now, ThreadsafeFunctionCallMode::NonBlocking);
                    }) {
                        break;
                    }
                }
                match next {
                    Ok(Some(m)) => {
                        let item = |m: grenache::pubsub::SubMessage| match (m.binary, m.text()) {
                            (false, Some(t)) => Either::A(t.to_string()),
                            _ => Either::B(Buffer::from(m.data.to_vec())),
                        };
                        let mut batch = vec![item(m)];
                        while batch.len() < SUB_BATCH {
                            match sub.try_recv() {
                                Some(m) => batch.push(item(m)),
                                None => break,
                            }
                        }
                        if !g2.run(|| {
                            on_messages.call(batch, ThreadsafeFunctionCallMode::NonBlocking);
                        }) {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(_) => {}
                }
            }
        });
        Ok(NativeSubTo { gate, task: task.abort_handle() })
    }

    #[napi]
    pub fn close(&self) {
        self.gate.close(Duration::from_secs(1));
        self.task.abort();
    }
}

/// Most messages queued for one subscriber of a [`NativeQueuedPub`] before its oldest are dropped.
const DROPIN_PUB_QUEUE: usize = 65_536;

/// A publisher for the reference-compatible PeerPub: the reference buffers whatever is sent to a
/// slow subscriber, so a burst must not cost a subscriber its connection. Each subscriber's queue
/// holds up to `DROPIN_PUB_QUEUE` messages (bounded memory), and past that loses its oldest
/// ones instead of being disconnected.
#[napi]
pub struct NativeQueuedPub {
    inner: grenache::pubsub::PeerPub,
}

#[napi]
impl NativeQueuedPub {
    #[napi(constructor)]
    pub fn new(port_: Option<u32>) -> napi::Result<Self, ErrName> {
        let rt = runtime()?;
        let addr = std::net::SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, port(port_)?));
        let config = grenache::pubsub::PubConfig::default()
            .queue_capacity(DROPIN_PUB_QUEUE)
            .slow_subscriber_policy(grenache::pubsub::SlowSubscriberPolicy::DropOldest);
        let inner = rt
            .block_on(Duration::from_secs(10), async move { grenache::pubsub::PeerPub::bind(addr, config).await })
            .map_err(|e| js_err(&e))?;
        Ok(NativeQueuedPub { inner })
    }

    #[napi(getter)]
    pub fn port(&self) -> u32 {
        u32::from(self.inner.port())
    }

    #[napi]
    pub fn publish(&self, text: String) -> u32 {
        u32::try_from(self.inner.publish(text)).unwrap_or(u32::MAX)
    }

    #[napi]
    pub fn publish_binary(&self, data: Buffer) -> u32 {
        u32::try_from(self.inner.publish_binary(data.to_vec())).unwrap_or(u32::MAX)
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

/// A uTP node: the one UDP socket per process of the grenache-nodejs-utp drop-in
/// (`lib/utp.js`), shared by its servers and clients, carrying their streams and the punches.
#[napi]
pub struct NativeUtpNode {
    rt: embed::Runtime,
    node: Arc<grenache::transport::utp::UtpNode>,
    stop: tokio::sync::watch::Sender<bool>,
}

fn punch_target(target: &str) -> GResult<std::net::SocketAddr> {
    target.parse().map_err(|e| invalid(format!("bad punch target {target:?}: {e}")))
}

#[napi]
impl NativeUtpNode {
    /// Binds `0.0.0.0:port` (0: any free port).
    #[napi(constructor)]
    pub fn new(port_: Option<u32>) -> napi::Result<Self, ErrName> {
        let rt = runtime()?;
        let addr = std::net::SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, port(port_)?));
        let node = rt
            .block_on(Duration::from_secs(10), async move { grenache::transport::utp::UtpNode::bind(addr).await })
            .map_err(|e| js_err(&e))?;
        Ok(NativeUtpNode { rt, node, stop: tokio::sync::watch::Sender::new(false) })
    }

    #[napi(getter)]
    pub fn port(&self) -> u32 {
        u32::from(self.node.local_addr().port())
    }

    /// Sends one punch datagram to `target` ("ip:port") and returns (the reference's
    /// `transport.punch`).
    #[napi]
    pub fn send_punch(&self, target: String) -> napi::Result<(), ErrName> {
        let t = punch_target(&target).map_err(|e| js_err(&e))?;
        self.node.send_punch(t).map_err(|e| js_err(&e))
    }

    /// Punches `target` until it answers; `done` gets ERR_PUNCH_TIMEOUT after `timeout_ms`.
    #[napi]
    pub fn punch(&self, target: String, timeout_ms: u32, done: Done) {
        let done = complete(done);
        let t = punch_target(&target);
        let node = self.node.clone();
        self.rt.spawn(async move {
            let r = match t {
                Ok(t) => node.punch(t, Duration::from_millis(u64::from(timeout_ms))).await,
                Err(e) => Err(e),
            };
            done(r.map(|()| "null".to_string()));
        });
    }

    /// `on_punch(from)` for every punch reaching the node, until closed.
    #[napi]
    pub fn on_punch(&self, on_punch: PunchFn) {
        let mut events = self.node.subscribe();
        let mut stop = self.stop.subscribe();
        if *stop.borrow() {
            return;
        }
        self.rt.spawn(async move {
            loop {
                let ev = tokio::select! {
                    e = events.recv() => e,
                    _ = stop.changed() => return,
                };
                match ev {
                    Ok(grenache::transport::utp::PunchEvent::Punched { from }) => {
                        on_punch.call(from.to_string(), ThreadsafeFunctionCallMode::NonBlocking);
                    }
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => return,
                }
            }
        });
    }

    /// Stops the punch events; the socket closes once no server or client uses it.
    #[napi]
    pub fn close(&self) {
        self.stop.send_replace(true);
    }
}

/// The `{"address","port"}` JSON of a uTP request's caller, as the server saw it.
fn utp_remote_json(request: &Request) -> Option<String> {
    request.info.remote_addr.map(|a| serde_json::json!({ "address": a.ip().to_string(), "family": "IPv4", "port": a.port() }).to_string())
}

#[napi]
impl NativeServer {
    /// A uTP server on `node` with an envelope handler whose last argument is the caller's
    /// endpoint (`{"address","family","port"}` JSON). With `broker`, [`NativeServer::register`]
    /// registers names with that broker, found through `link`.
    #[napi(factory)]
    pub fn listen_utp(
        handler: EnvelopeHandlerFn,
        node: &NativeUtpNode,
        link: &NativeLink,
        broker: Option<String>,
    ) -> napi::Result<Self, ErrName> {
        let handler = Arc::new(handler);
        let h = move |request: Request, reply: Reply| {
            let args = (
                NativeReply { inner: ReplyOnce::new(reply) },
                request.rid.to_string(),
                request.key.clone(),
                embed::rpc::payload_json(&request).to_string(),
                None,
                utp_remote_json(&request),
            );
            handler.call(FnArgs::from(args), ThreadsafeFunctionCallMode::NonBlocking);
        };
        let options = ServerOptions { utp_node: Some(node.node.clone()), broker, ..Default::default() };
        let server = EmbedServer::listen(&link.inner, TransportKind::Utp, Arc::new(h), options).map_err(|e| js_err(&e))?;
        Ok(NativeServer { inner: Arc::new(server) })
    }

    /// uTP with a broker: registers `name` with it now and every 5 s, until closed.
    #[napi]
    pub fn register(&self, name: String) {
        self.inner.register(&name);
    }
}

#[napi]
impl NativeClient {
    /// A uTP client sending from `node`; with `broker`, requests without a destination find
    /// workers through that broker (found through `link`) and punch them first.
    #[napi(factory)]
    pub fn on_utp_node(
        node: &NativeUtpNode,
        link: &NativeLink,
        broker: Option<String>,
        punch_timeout_ms: Option<u32>,
    ) -> napi::Result<Self, ErrName> {
        let options =
            ClientOptions { broker, punch_timeout: millis(punch_timeout_ms), utp_node: Some(node.node.clone()), ..Default::default() };
        let client = EmbedClient::new(&link.inner, TransportKind::Utp, options).map_err(|e| js_err(&e))?;
        Ok(NativeClient { inner: Arc::new(client) })
    }
}
