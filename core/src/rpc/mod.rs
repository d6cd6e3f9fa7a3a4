//! Transport-independent RPC: the envelope, the server-side handler and reply handle, and the
//! client-side transport contract.
//!
//! The wire envelope is the reference's, on every transport:
//! * request: JSON array `[rid, key, payload]` (rid is a uuid-v4 string from our clients; servers
//!   echo whatever JSON value arrives in slot 0);
//! * reply: JSON array `[rid, error, result]`, where `error` is `null` or the error message string.

use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use serde_json::value::RawValue;
use tokio::sync::oneshot;

use crate::error::{Error, ErrorKind, Result};
use crate::tls::PeerCert;

pub mod client;
pub mod envelope;
pub mod server;

pub use client::{PeerRpcClient, PeerRpcClientConfig, ReplyForm, RequestOptions, Resolve};
pub use server::PeerRpcServer;

/// A boxed, sendable future, as returned by [`ClientTransport::request`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The message sent back when a handler drops its [`Reply`] without answering.
pub const ERR_NO_REPLY: &str = "ERR_NO_REPLY";
/// The message sent back when a handler panics.
pub const ERR_HANDLER_PANIC: &str = "ERR_HANDLER_PANIC";
/// The message sent back when a handler does not answer within the server's reply timeout.
pub const ERR_TIMEOUT: &str = "ERR_TIMEOUT";

/// Which transport a request arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum TransportKind {
    /// HTTP or HTTPS (grenache-nodejs-http).
    #[default]
    Http,
    /// WebSocket, plain or TLS (grenache-nodejs-ws).
    Ws,
    /// uTP over UDP, with NAT hole punching (grenache-nodejs-utp).
    Utp,
    /// ZeroMQ (ZMTP 3.1, ROUTER/DEALER and PUB/SUB): see [`crate::transport::zmq`].
    Zmq,
}

impl TransportKind {
    /// The name faces use for it: `"http"`, `"ws"`, `"utp"` or `"zmq"`.
    pub fn as_str(self) -> &'static str {
        match self {
            TransportKind::Http => "http",
            TransportKind::Ws => "ws",
            TransportKind::Utp => "utp",
            TransportKind::Zmq => "zmq",
        }
    }
}

impl std::str::FromStr for TransportKind {
    type Err = Error;

    /// `"http"`, `"ws"`, `"utp"` or `"zmq"`; anything else is an [`ErrorKind::InvalidArgument`] error.
    fn from_str(s: &str) -> Result<TransportKind> {
        match s {
            "http" => Ok(TransportKind::Http),
            "ws" => Ok(TransportKind::Ws),
            "utp" => Ok(TransportKind::Utp),
            "zmq" => Ok(TransportKind::Zmq),
            other => Err(Error::invalid(format!("transport must be \"http\", \"ws\", \"utp\" or \"zmq\", not {other:?}"))),
        }
    }
}

/// HTTP-specific request details (the reference's `meta` argument).
#[derive(Debug, Clone, Default)]
pub struct HttpMeta {
    /// The request came with `Transfer-Encoding: chunked` (the reference's `isStream`).
    pub is_stream: bool,
    /// The request carried `grc-compress: gzip`; the reply is gzipped too.
    pub compress: bool,
    /// The `_gr` header, parsed (`[rid, key]`), if present.
    pub info_headers: Option<Value>,
    /// The `_a` header (action), if present.
    pub action: Option<String>,
    /// The `_ar` header parsed as JSON, or `{}` when absent or invalid.
    pub args: Value,
}

/// Who sent a request and how.
#[derive(Debug, Clone, Default)]
pub struct RequestInfo {
    /// The transport the request arrived on.
    pub transport: TransportKind,
    /// The remote socket address, when known.
    pub remote_addr: Option<SocketAddr>,
    /// The client's TLS certificate, when the connection is TLS and the client sent one.
    /// Its [`PeerCert::fingerprint`] is the SHA-1 `AA:BB:...` string Node apps key permissions on.
    pub cert: Option<Arc<PeerCert>>,
    /// HTTP details; `None` on other transports.
    pub http: Option<HttpMeta>,
}

/// A request as a server handler sees it.
#[derive(Debug, Clone)]
pub struct Request {
    /// The request id, exactly as sent (echoed in the reply).
    pub rid: Value,
    /// The service key (slot 1 of the envelope). A non-string key is given as its JSON text.
    pub key: String,
    /// The payload (slot 2), `null` when absent: the JSON text as it came off the wire, parsed
    /// into a [`Value`] on first use (it derefs to one).
    pub payload: Payload,
    /// Transport details.
    pub info: RequestInfo,
}

/// A request's payload: the JSON text as it came off the wire ([`Payload::json`]), parsed into a
/// [`Value`] once, on first use ([`Payload::value`], or through `Deref`). Embedders hand the text
/// to their handlers without a parse into a `Value` and back; Rust handlers read it as a `Value`.
pub struct Payload {
    raw: Box<RawValue>,
    value: std::sync::OnceLock<Value>,
}

impl Payload {
    /// A payload from JSON text (already checked to be JSON, as a [`RawValue`] is).
    pub fn from_raw(raw: Box<RawValue>) -> Payload {
        Payload { raw, value: std::sync::OnceLock::new() }
    }

    /// The JSON text, as sent.
    pub fn json(&self) -> &str {
        self.raw.get()
    }

    /// The payload as a [`Value`], parsed on the first call.
    pub fn value(&self) -> &Value {
        // A RawValue is valid JSON, so the parse cannot fail.
        self.value.get_or_init(|| serde_json::from_str(self.raw.get()).unwrap_or(Value::Null))
    }

    /// The JSON text, as sent, to answer with it unparsed ([`Reply::ok_raw`]).
    pub fn into_raw(self) -> Box<RawValue> {
        self.raw
    }

    /// The payload as a [`Value`].
    pub fn into_value(self) -> Value {
        match self.value.into_inner() {
            Some(v) => v,
            None => serde_json::from_str(self.raw.get()).unwrap_or(Value::Null),
        }
    }
}

impl From<Value> for Payload {
    fn from(value: Value) -> Payload {
        // Serialising a Value cannot fail.
        let raw = serde_json::value::to_raw_value(&value).unwrap_or_default();
        Payload { raw, value: std::sync::OnceLock::from(value) }
    }
}

impl std::ops::Deref for Payload {
    type Target = Value;
    fn deref(&self) -> &Value {
        self.value()
    }
}

impl Clone for Payload {
    fn clone(&self) -> Payload {
        Payload { raw: self.raw.clone(), value: self.value.clone() }
    }
}

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.raw.get())
    }
}

impl std::fmt::Display for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self.value(), f)
    }
}

impl PartialEq for Payload {
    fn eq(&self, other: &Payload) -> bool {
        self.value() == other.value()
    }
}

impl serde::Serialize for Payload {
    /// As the JSON text it is (no parse).
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.raw.serialize(s)
    }
}

impl PartialEq<Value> for Payload {
    fn eq(&self, other: &Value) -> bool {
        self.value() == other
    }
}

/// What a handler answers: a result, or an error message that travels to the client.
pub type ReplyBody = std::result::Result<Value, String>;

/// A reply's result on its way to the wire: a JSON value, or JSON text passed through as it is
/// (checked to be JSON but never parsed into a [`Value`]: embedders answer with text, see
/// [`Reply::ok_raw`]).
#[derive(Debug, Clone)]
pub enum ReplyResult {
    /// A value.
    Value(Value),
    /// JSON text, written to the wire unchanged.
    Raw(Box<serde_json::value::RawValue>),
}

impl ReplyResult {
    /// The result as a [`Value`] (parses a raw one).
    pub fn into_value(self) -> Value {
        match self {
            ReplyResult::Value(v) => v,
            // Raw text was checked to be JSON when it was made.
            ReplyResult::Raw(r) => serde_json::from_str(r.get()).unwrap_or(Value::Null),
        }
    }
}

impl ReplyResult {
    /// The result as JSON text (serialises a value).
    pub fn into_raw(self) -> Box<RawValue> {
        match self {
            ReplyResult::Raw(r) => r,
            // Serialising a Value cannot fail.
            ReplyResult::Value(v) => serde_json::value::to_raw_value(&v).unwrap_or_default(),
        }
    }
}

impl PartialEq for ReplyResult {
    fn eq(&self, other: &Self) -> bool {
        self.clone().into_value() == other.clone().into_value()
    }
}

impl serde::Serialize for ReplyResult {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            ReplyResult::Value(v) => v.serialize(s),
            ReplyResult::Raw(r) => r.serialize(s),
        }
    }
}

/// What a server transport writes for a request: a result, or an error message.
pub type WireReply = std::result::Result<ReplyResult, String>;

/// The handle a server gives a handler with each request, to answer it exactly once.
///
/// It is `Send`: answer later, from any thread or task. Answering consumes it, so a second answer
/// cannot compile. Dropping it unanswered sends the error `ERR_NO_REPLY`; dropping it while a panic
/// unwinds sends `ERR_HANDLER_PANIC`. Either way the client gets a reply instead of a timeout.
#[derive(Debug)]
pub struct Reply {
    rid: Value,
    tx: Option<oneshot::Sender<WireReply>>,
}

/// The receiving side of a [`Reply`], held by the transport.
pub type ReplyReceiver = oneshot::Receiver<WireReply>;

impl Reply {
    /// A new reply handle for `rid` and the receiver the transport awaits.
    pub fn new(rid: Value) -> (Reply, ReplyReceiver) {
        let (tx, rx) = oneshot::channel();
        (Reply { rid, tx: Some(tx) }, rx)
    }

    /// The id of the request this handle answers.
    pub fn rid(&self) -> &Value {
        &self.rid
    }

    /// True when nobody waits for the answer any more (the connection closed).
    pub fn is_closed(&self) -> bool {
        self.tx.as_ref().is_none_or(|tx| tx.is_closed())
    }

    /// Answers with a result.
    pub fn ok(self, result: Value) {
        self.send(Ok(result));
    }

    /// Answers with an error message; the client receives it as an [`ErrorKind::Remote`] error.
    pub fn err(self, message: impl Into<String>) {
        self.send(Err(message.into()));
    }

    /// Answers with a result or an error.
    pub fn send(self, body: ReplyBody) {
        self.deliver(body.map(ReplyResult::Value));
    }

    /// Answers with a result given as JSON text, written to the wire as it is (no parse into a
    /// [`Value`] and back): for embedders whose handlers produce text.
    pub fn ok_raw(self, result: Box<serde_json::value::RawValue>) {
        self.deliver(Ok(ReplyResult::Raw(result)));
    }

    fn deliver(mut self, body: WireReply) {
        if let Some(tx) = self.tx.take() {
            // The receiver is gone only when the client's connection closed: nothing to do.
            let _ = tx.send(body);
        }
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            let msg = if std::thread::panicking() { ERR_HANDLER_PANIC } else { ERR_NO_REPLY };
            let _ = tx.send(Err(msg.to_string()));
        }
    }
}

/// A server-side request handler.
///
/// `handle` runs on a runtime worker thread and must not block: answer through the [`Reply`] at
/// once, or move it into a task and answer later. Closures `Fn(Request, Reply)` are handlers.
pub trait Handler: Send + Sync + 'static {
    /// Handles one request.
    fn handle(&self, request: Request, reply: Reply);
}

impl<F> Handler for F
where
    F: Fn(Request, Reply) + Send + Sync + 'static,
{
    fn handle(&self, request: Request, reply: Reply) {
        self(request, reply)
    }
}

/// A handler made from an async function: each request runs in its own task.
///
/// ```
/// # use grenache::rpc::handler_fn;
/// let h = handler_fn(|req| async move {
///     Ok::<_, String>(serde_json::json!(format!("{}: world", req.payload)))
/// });
/// ```
pub fn handler_fn<F, Fut, E>(f: F) -> impl Handler
where
    F: Fn(Request) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = std::result::Result<Value, E>> + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    move |req: Request, reply: Reply| {
        let fut = f(req);
        tokio::spawn(async move {
            reply.send(fut.await.map_err(|e| e.to_string()));
        });
    }
}

/// Runs `handler` on `request` and waits for its answer, as every server transport does.
///
/// A panic in the handler becomes `ERR_HANDLER_PANIC`, a dropped reply `ERR_NO_REPLY`, and no
/// answer within `reply_timeout` (when set) becomes `ERR_TIMEOUT`.
pub async fn dispatch(handler: &dyn Handler, request: Request, reply_timeout: Option<Duration>) -> ReplyBody {
    dispatch_wire(handler, request, reply_timeout).await.map(ReplyResult::into_value)
}

/// [`dispatch`] for a transport: the answer as it goes on the wire (a raw result stays text).
pub async fn dispatch_wire(handler: &dyn Handler, request: Request, reply_timeout: Option<Duration>) -> WireReply {
    match start_dispatch(handler, request) {
        Dispatched::Answered(body) => body,
        Dispatched::Pending(rx) => await_reply(rx, reply_timeout).await,
    }
}

/// What [`start_dispatch`] found once the handler returned.
#[derive(Debug)]
pub enum Dispatched {
    /// The handler answered (or dropped its [`Reply`], or panicked) before returning.
    Answered(WireReply),
    /// The handler kept the [`Reply`] to answer later: wait with [`await_reply`].
    Pending(ReplyReceiver),
}

/// The first half of [`dispatch`]: runs `handler` on `request` and returns its answer when it gave
/// one before returning, so a transport can write it straight away, without a task or a timer.
pub fn start_dispatch(handler: &dyn Handler, request: Request) -> Dispatched {
    let (reply, mut rx) = Reply::new(request.rid.clone());
    if std::panic::catch_unwind(AssertUnwindSafe(|| handler.handle(request, reply))).is_err() {
        tracing::warn!("rpc handler panicked");
    }
    match rx.try_recv() {
        Ok(body) => Dispatched::Answered(body),
        Err(oneshot::error::TryRecvError::Closed) => Dispatched::Answered(Err(ERR_NO_REPLY.to_string())),
        Err(oneshot::error::TryRecvError::Empty) => Dispatched::Pending(rx),
    }
}

/// The second half of [`dispatch`]: waits for a [`Reply`] kept by the handler, at most
/// `reply_timeout` (then `ERR_TIMEOUT`).
pub async fn await_reply(rx: ReplyReceiver, reply_timeout: Option<Duration>) -> WireReply {
    let received = match reply_timeout {
        Some(t) => match tokio::time::timeout(t, rx).await {
            Ok(r) => r,
            Err(_) => return Err(ERR_TIMEOUT.to_string()),
        },
        None => rx.await,
    };
    received.unwrap_or_else(|_| Err(ERR_NO_REPLY.to_string()))
}

/// A request on its way out, as given to a [`ClientTransport`].
#[derive(Debug, Clone)]
pub struct OutgoingRequest {
    /// The request id (uuid v4).
    pub rid: String,
    /// The service key.
    pub key: Arc<str>,
    /// The payload, already serialised as JSON text (serialised once, shared by `map` and retries).
    pub payload_json: Arc<str>,
    /// Give up after this long. `None` waits forever (not recommended).
    pub timeout: Option<Duration>,
    /// HTTP only: gzip the request and expect a gzipped reply (`grc-compress: gzip`).
    pub compress: bool,
}

impl OutgoingRequest {
    /// The envelope `[rid, key, payload]` as bytes.
    pub fn envelope(&self) -> Vec<u8> {
        envelope::encode_request(&self.rid, &self.key, &self.payload_json)
    }
}

/// The client side of a transport (HTTP, WS): sends one request to one destination.
///
/// Implementations own their connection pooling and must honour `timeout` exactly; dropping the
/// returned future cancels the request and frees what it held.
pub trait ClientTransport: Send + Sync + 'static {
    /// Sends `request` to `dest` (`"host:port"`) and resolves to the reply's result. An error reply
    /// is an [`ErrorKind::Remote`] error carrying the remote message.
    fn request(&self, dest: &str, request: OutgoingRequest) -> BoxFuture<'static, Result<Value>>;

    /// [`ClientTransport::request`] resolving to the reply's result as JSON text, for embedders
    /// that hand results on as text. The transports of this crate give the text exactly as it was
    /// on the wire, never parsed into a [`Value`]; this default serialises the [`Value`] that
    /// `request` gives.
    fn request_raw(&self, dest: &str, request: OutgoingRequest) -> BoxFuture<'static, Result<Box<RawValue>>> {
        let fut = self.request(dest, request);
        Box::pin(async move { Ok(serde_json::value::to_raw_value(&fut.await?)?) })
    }

    /// How many live connections this transport holds to `dest` (used for `maxActiveKeyDests`).
    fn active_connections(&self, dest: &str) -> usize;

    /// Closes every connection. Requests in flight fail with [`ErrorKind::Closed`].
    fn close(&self);
}

/// The server side of a transport, as a [`PeerRpcServer`] holds it: a listener already serving a
/// [`Handler`], whose port the server announces.
pub trait ServerTransport: Send + Sync + 'static {
    /// The bound address (its port is what gets announced).
    fn local_addr(&self) -> SocketAddr;

    /// Stops listening and closes every connection. Once it returns, connects to the port are
    /// refused (the TCP transports' listening socket is shut down at once); the connections close
    /// in the background.
    fn close(&self);

    /// Shuts down gracefully: stops listening (new connections are refused), lets the requests
    /// already read finish and their replies go out, closes each connection once it is done,
    /// and after `grace` closes the rest as [`ServerTransport::close`] does. Resolves to true when
    /// every connection finished in time. The default closes at once.
    fn drain(&self, grace: Duration) -> BoxFuture<'static, bool> {
        let _ = grace;
        self.close();
        Box::pin(async { true })
    }
}

pub use crate::rid::new_rid;

/// Where a client transport delivers the outcome of a request in flight: its result as a
/// [`Value`] or, for [`ClientTransport::request_raw`], as raw JSON text ([`ReplyResult::Raw`]).
/// The form is known before the reply is read, so it is parsed once, straight into that form
/// (see [`envelope::decode_reply_routed`]).
#[derive(Debug)]
pub struct ResultSender {
    tx: oneshot::Sender<Result<ReplyResult>>,
    form: envelope::ResultForm,
}

/// The receiving side of a [`ResultSender`].
pub type ResultReceiver = oneshot::Receiver<Result<ReplyResult>>;

impl ResultSender {
    /// A sender expecting the result in `form`, and its receiver.
    pub fn channel(form: envelope::ResultForm) -> (ResultSender, ResultReceiver) {
        let (tx, rx) = oneshot::channel();
        (ResultSender { tx, form }, rx)
    }

    /// The form the result is wanted in.
    pub fn form(&self) -> envelope::ResultForm {
        self.form
    }

    /// True when the receiver is gone (the request was cancelled or timed out).
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Delivers the outcome; `Err` gives it back when the receiver is gone.
    pub fn send(self, outcome: Result<ReplyResult>) -> std::result::Result<(), Result<ReplyResult>> {
        self.tx.send(outcome)
    }

    /// Decodes the reply `body` and delivers it to the sender `take` returns for its rid (given
    /// as the rid string, or the JSON text of a non-string rid), parsing the result once in the
    /// form that sender wants. A reply nobody waits for is dropped (its result skipped, not
    /// parsed); a malformed one fails its waiter, if its rid could be read, with a decode error.
    /// Returns the decode error, if any.
    pub fn deliver(body: &[u8], take: impl FnOnce(&str) -> Option<ResultSender>) -> Result<()> {
        let routed = envelope::decode_reply_routed(body, |rid| {
            let w = match rid {
                Value::String(s) => take(s),
                other => take(&other.to_string()),
            }?;
            let form = w.form;
            Some((w, form))
        });
        match routed {
            Ok(mut reply) => {
                if let Some(w) = reply.target.take() {
                    let _ = w.send(reply.outcome());
                }
                Ok(())
            }
            Err((w, e)) => {
                if let Some(w) = w {
                    let _ = w.send(Err(Error::new(e.kind(), e.message().to_string())));
                }
                Err(e)
            }
        }
    }
}

/// Turns a decoded reply `(err, result)` into the client's result.
pub fn reply_to_result(err: Option<String>, result: Value) -> Result<Value> {
    match err {
        Some(msg) => Err(Error::new(ErrorKind::Remote, msg)),
        None => Ok(result),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn req(payload: Value) -> Request {
        Request { rid: json!("r1"), key: "k".into(), payload: payload.into(), info: RequestInfo::default() }
    }

    #[tokio::test]
    async fn dropped_reply_sends_no_reply_error() {
        let h = |_req: Request, _reply: Reply| {};
        assert_eq!(dispatch(&h, req(json!(1)), None).await, Err(ERR_NO_REPLY.to_string()));
    }

    #[tokio::test]
    async fn panicking_handler_sends_panic_error() {
        let h = |_req: Request, _reply: Reply| panic!("boom");
        assert_eq!(dispatch(&h, req(json!(1)), None).await, Err(ERR_HANDLER_PANIC.to_string()));
    }

    #[tokio::test]
    async fn reply_from_another_task_arrives() {
        let h = |req: Request, reply: Reply| {
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                reply.ok(json!([req.payload, "world"]));
            });
        };
        assert_eq!(dispatch(&h, req(json!("hello")), None).await, Ok(json!(["hello", "world"])));
    }

    #[tokio::test]
    async fn silent_handler_times_out() {
        let h = |_req: Request, reply: Reply| {
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(60)).await;
                drop(reply);
            });
        };
        let r = dispatch(&h, req(json!(1)), Some(Duration::from_millis(20))).await;
        assert_eq!(r, Err(ERR_TIMEOUT.to_string()));
    }

    #[test]
    fn result_sender_delivers_in_the_form_asked() {
        use envelope::ResultForm;
        let (w, mut rx) = ResultSender::channel(ResultForm::Raw);
        ResultSender::deliver(br#"["r1",null,{"a" : 1}]"#, |rid| (rid == "r1").then_some(w)).expect("delivered");
        let Ok(Ok(ReplyResult::Raw(text))) = rx.try_recv() else { panic!("no raw result") };
        assert_eq!(text.get(), r#"{"a" : 1}"#);
        // A non-string rid is looked up by its JSON text.
        let (w, mut rx) = ResultSender::channel(ResultForm::Value);
        ResultSender::deliver(br#"[{"x":1},null,[1]]"#, |rid| (rid == r#"{"x":1}"#).then_some(w)).expect("delivered");
        assert_eq!(rx.try_recv().expect("sent").expect("ok"), ReplyResult::Value(json!([1])));
        // A remote error.
        let (w, mut rx) = ResultSender::channel(ResultForm::Raw);
        ResultSender::deliver(br#"["r",{"code":1},null]"#, |_| Some(w)).expect("delivered");
        let e = rx.try_recv().expect("sent").expect_err("remote");
        assert_eq!((e.kind(), e.message()), (ErrorKind::Remote, r#"{"code":1}"#));
        // A body broken after its rid fails the waiter at once (instead of leaving it to time out).
        let (w, mut rx) = ResultSender::channel(ResultForm::Value);
        assert!(ResultSender::deliver(br#"["r",null,{oops"#, |_| Some(w)).is_err());
        assert_eq!(rx.try_recv().expect("sent").expect_err("decode").kind(), ErrorKind::Decode);
        // Nobody waits.
        assert!(ResultSender::deliver(br#"["r",null,1]"#, |_| None).is_ok());
        assert!(ResultSender::deliver(b"nope", |_| None).is_err());
    }

    #[tokio::test]
    async fn default_request_raw_serialises_the_value() {
        struct Fixed;
        impl ClientTransport for Fixed {
            fn request(&self, _dest: &str, _r: OutgoingRequest) -> BoxFuture<'static, Result<Value>> {
                Box::pin(async { Ok(json!({"a": [1, "é"]})) })
            }
            fn active_connections(&self, _dest: &str) -> usize {
                0
            }
            fn close(&self) {}
        }
        let out = OutgoingRequest { rid: new_rid(), key: "k".into(), payload_json: "1".into(), timeout: None, compress: false };
        assert_eq!(Fixed.request_raw("d", out).await.expect("raw").get(), r#"{"a":[1,"é"]}"#);
    }

    #[test]
    fn rids_are_uuid_v4() {
        let r = new_rid();
        let u = uuid::Uuid::parse_str(&r).expect("a uuid");
        assert_eq!(u.get_version_num(), 4);
        assert_eq!(r.len(), 36);
        assert_ne!(r, new_rid());
    }

    #[tokio::test]
    async fn handler_fn_maps_errors_to_messages() {
        let h = handler_fn(|req: Request| async move { if req.payload == json!("fail") { Err("ERR_BOOM") } else { Ok(json!("world")) } });
        assert_eq!(dispatch(&h, req(json!("fail")), None).await, Err("ERR_BOOM".to_string()));
        assert_eq!(dispatch(&h, req(json!("x")), None).await, Ok(json!("world")));
    }
}
