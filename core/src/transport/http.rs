//! The HTTP and HTTPS transport, wire-compatible with grenache-nodejs-http 1.0.2.
//!
//! * **Client** ([`HttpClient`], a [`ClientTransport`]): one `POST /` per request with the body
//!   `[rid, key, payload]` and the header `grc-compress: none|gzip` (the body is gzipped both ways
//!   when asked), over pooled keep-alive connections (plain or TLS), with exact timeouts.
//!   [`HttpClient::request_stream`] sends a raw body in the reference's streaming mode
//!   (`_gr: [rid,key]`, chunked body, extra headers such as `_a`/`_ar`).
//! * **Server** ([`HttpServer`]): HTTP/1.1 (optionally TLS with client certificates), ignores
//!   method and path, answers `200` with `[rid, error, result]` (gzipped when the request said
//!   `grc-compress: gzip`). Streaming requests (with `_gr`) are buffered and parsed like the
//!   reference's buffered mode, taking rid and key from `_gr`, or go to a [`StreamHandler`] that
//!   reads the raw body when one is configured.
//!
//! Deliberate differences (see `docs/compat.md`, "HTTP transport"): a malformed body gets a `400`
//! reply `[null,"ERR_DECODE: ...",null]` instead of no answer; a body over the limit gets a `413`
//! reply `[null,"ERR_PAYLOAD_SIZE",null]`; TLS connections are pooled and reused; a reply whose rid
//! differs from the request's is an error at once; replies carry `Content-Length`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use http::{HeaderMap, HeaderValue, StatusCode};
use http_body_util::{BodyExt, Either, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, ErrorKind, Result};
use crate::rpc::envelope::{self, ResultForm, decode_reply};
use crate::rpc::{
    BoxFuture, ClientTransport, Handler, HttpMeta, OutgoingRequest, ReplyResult, Request, RequestInfo, ServerTransport, TransportKind,
};
use crate::tls::PeerCert;

/// Default limit of a request body (server) and a reply body (client): 64 MiB.
pub const DEFAULT_MAX_BODY: usize = 64 * 1024 * 1024;

/// Default of [`HttpServerConfig::max_body_in_flight`]: 256 MiB (four bodies at the size limit).
pub const DEFAULT_MAX_BODY_IN_FLIGHT: usize = 256 * 1024 * 1024;

/// The header that asks for gzip (`none` or `gzip`).
pub const HEADER_COMPRESS: &str = "grc-compress";
/// The streaming-mode header `[rid, key]`.
pub const HEADER_GR: &str = "_gr";
/// The streaming-mode action header.
pub const HEADER_ACTION: &str = "_a";
/// The streaming-mode action-arguments header (JSON).
pub const HEADER_ARGS: &str = "_ar";

/// A stream of raw body chunks (streaming mode).
pub type BodyStream = Pin<Box<dyn Stream<Item = std::result::Result<Bytes, std::io::Error>> + Send + 'static>>;

type ReqBody = Either<Full<Bytes>, StreamBody<Pin<Box<dyn Stream<Item = std::result::Result<Frame<Bytes>, std::io::Error>> + Send>>>>;
type RespBody = Either<Full<Bytes>, StreamBody<Pin<Box<dyn Stream<Item = std::result::Result<Frame<Bytes>, std::io::Error>> + Send>>>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Gzips `data` (a reply body asked for with `grc-compress: gzip`).
pub fn gzip(data: &[u8]) -> Result<Vec<u8>> {
    let mut enc = flate2::write::GzEncoder::new(Vec::with_capacity(data.len() / 2 + 32), flate2::Compression::default());
    enc.write_all(data)?;
    Ok(enc.finish()?)
}

/// Gunzips `data`, refusing more than `max` bytes out (`ErrorKind::PayloadTooLarge`); bytes that
/// are not gzip are an `ErrorKind::Decode` error.
pub fn gunzip(data: &[u8], max: usize) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data)
        .take((max as u64).saturating_add(1))
        .read_to_end(&mut out)
        .map_err(|e| Error::decode(format!("gunzip: {e}")))?;
    if out.len() > max {
        return Err(Error::new(ErrorKind::PayloadTooLarge, format!("gunzipped body is over {max} bytes")));
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------------------

/// HTTP client settings.
#[derive(Debug, Clone)]
pub struct HttpClientConfig {
    /// TLS settings: `Some` makes every request `https://` (with a client certificate if the
    /// config has one). The TLS server name is the destination's host (an IP address).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Largest reply body accepted (after gunzip).
    pub max_body: usize,
    /// How long an idle pooled connection is kept. Node servers close idle connections after 5 s,
    /// so the default is 4 s.
    pub pool_idle_timeout: Duration,
    /// Most idle connections kept per destination.
    pub pool_max_idle_per_dest: usize,
    /// Timeout of the TCP connect (and TLS handshake) of a new connection.
    pub connect_timeout: Duration,
}

impl Default for HttpClientConfig {
    fn default() -> Self {
        HttpClientConfig {
            tls: None,
            max_body: DEFAULT_MAX_BODY,
            pool_idle_timeout: Duration::from_secs(4),
            pool_max_idle_per_dest: 256,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

type LiveMap = Arc<Mutex<HashMap<String, usize>>>;

/// Counts a live connection to a destination until dropped.
struct LiveGuard {
    map: LiveMap,
    dest: String,
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        let mut m = lock(&self.map);
        if let Some(n) = m.get_mut(&self.dest) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.dest);
            }
        }
    }
}

enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// A client connection, plain or TLS.
struct ClientStream {
    io: Io,
    _live: LiveGuard,
}

impl Connection for ClientStream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[std::io::IoSlice<'_>]) -> Poll<std::io::Result<usize>> {
        match &mut self.io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// The connector of [`HttpClient`]: TCP (+ TLS), with live-connection counting.
#[derive(Clone)]
struct Connector {
    tls: Option<tokio_rustls::TlsConnector>,
    live: LiveMap,
    connect_timeout: Duration,
}

impl tower_service::Service<http::Uri> for Connector {
    type Response = TokioIo<ClientStream>;
    type Error = Error;
    type Future = BoxFuture<'static, Result<TokioIo<ClientStream>>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let host = uri.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_string();
            let port = uri.port_u16().unwrap_or(if this.tls.is_some() { 443 } else { 80 });
            let dest = format!("{}:{port}", uri.host().unwrap_or_default());
            let fut = async {
                let tcp = TcpStream::connect((host.as_str(), port))
                    .await
                    .map_err(|e| Error::new(ErrorKind::Connect, format!("connect to {dest}: {e}")))?;
                let _ = tcp.set_nodelay(true);
                let io = match &this.tls {
                    None => Io::Plain(tcp),
                    Some(tls) => {
                        let name = rustls_pki_types::ServerName::try_from(host.clone())
                            .map_err(|e| Error::invalid(format!("bad TLS server name {host:?}: {e}")))?;
                        let s = tls
                            .connect(name, tcp)
                            .await
                            .map_err(|e| Error::new(ErrorKind::TlsHandshake, format!("TLS handshake with {dest}: {e}")))?;
                        Io::Tls(Box::new(s))
                    }
                };
                Ok::<_, Error>(io)
            };
            let io = tokio::time::timeout(this.connect_timeout, fut)
                .await
                .map_err(|_| Error::new(ErrorKind::Connect, format!("connect to {dest}: timed out")))??;
            *lock(&this.live).entry(dest.clone()).or_insert(0) += 1;
            Ok(TokioIo::new(ClientStream { io, _live: LiveGuard { map: this.live.clone(), dest } }))
        })
    }
}

struct ClientInner {
    client: Mutex<Option<Client<Connector, ReqBody>>>,
    closed: CancellationToken,
    live: LiveMap,
    scheme: &'static str,
    config: HttpClientConfig,
}

/// The HTTP(S) client transport. Cheap to clone; clones share the connection pool.
#[derive(Clone)]
pub struct HttpClient {
    inner: Arc<ClientInner>,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient").field("scheme", &self.inner.scheme).finish_non_exhaustive()
    }
}

/// The answer to a streaming request: the HTTP status and the raw body.
#[derive(Debug, Clone)]
pub struct StreamResponse {
    /// The HTTP status code.
    pub status: u16,
    /// The raw response body (at most the client's `max_body` bytes).
    pub body: Bytes,
}

impl Default for HttpClient {
    fn default() -> Self {
        HttpClient::new(HttpClientConfig::default())
    }
}

impl HttpClient {
    /// A client with `config`.
    pub fn new(config: HttpClientConfig) -> HttpClient {
        let live: LiveMap = Arc::default();
        let connector = Connector {
            tls: config.tls.clone().map(tokio_rustls::TlsConnector::from),
            live: live.clone(),
            connect_timeout: config.connect_timeout,
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(config.pool_idle_timeout)
            .pool_max_idle_per_host(config.pool_max_idle_per_dest)
            .pool_timer(TokioTimer::new())
            .build(connector);
        HttpClient {
            inner: Arc::new(ClientInner {
                client: Mutex::new(Some(client)),
                closed: CancellationToken::new(),
                live,
                scheme: if config.tls.is_some() { "https" } else { "http" },
                config,
            }),
        }
    }

    fn client(&self) -> Result<Client<Connector, ReqBody>> {
        lock(&self.inner.client).clone().ok_or_else(|| Error::new(ErrorKind::Closed, "the HTTP client is closed"))
    }

    fn uri(&self, dest: &str) -> Result<http::Uri> {
        format!("{}://{}/", self.inner.scheme, dest).parse().map_err(|e| Error::invalid(format!("bad destination {dest:?}: {e}")))
    }

    async fn send(&self, dest: &str, req: http::Request<ReqBody>, timeout: Option<Duration>) -> Result<(StatusCode, Bytes)> {
        let client = self.client()?;
        let max = self.inner.config.max_body;
        let url = dest;
        let fut = async move {
            let resp = client.request(req).await.map_err(|e| map_client_error(url, e))?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), max).collect().await.map_err(|e| {
                if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                    Error::new(ErrorKind::PayloadTooLarge, format!("reply from {url} is over {max} bytes"))
                } else {
                    Error::new(ErrorKind::Closed, format!("reading the reply from {url}: {e}"))
                }
            })?;
            Ok::<_, Error>((status, body.to_bytes()))
        };
        let fut = async {
            tokio::select! {
                r = fut => r,
                _ = self.inner.closed.cancelled() => Err(Error::new(ErrorKind::Closed, "the HTTP client was closed")),
            }
        };
        match timeout {
            Some(t) => tokio::time::timeout(t, fut).await.map_err(|_| Error::timeout(format!("no reply from {dest} within {t:?}")))?,
            None => fut.await,
        }
    }

    /// Sends one buffered request (what [`ClientTransport::request`] does).
    pub async fn request_to(&self, dest: &str, request: OutgoingRequest) -> Result<Value> {
        self.request_as(dest, request, ResultForm::Value).await.map(ReplyResult::into_value)
    }

    /// [`HttpClient::request_to`] with the result in `form` (raw: the JSON text as it came on the
    /// wire).
    pub async fn request_as(&self, dest: &str, request: OutgoingRequest, form: ResultForm) -> Result<ReplyResult> {
        let uri = self.uri(dest)?;
        let envelope = request.envelope();
        let mut builder = http::Request::post(uri);
        let body = if request.compress {
            builder = builder.header(HEADER_COMPRESS, "gzip");
            gzip(&envelope)?
        } else {
            builder = builder.header(HEADER_COMPRESS, "none").header(http::header::CONTENT_TYPE, "text/plain;charset=UTF-8");
            envelope
        };
        let req =
            builder.body(Either::Left(Full::new(Bytes::from(body)))).map_err(|e| Error::invalid(format!("building the request: {e}")))?;
        let (status, bytes) = self.send(dest, req, request.timeout).await?;
        if !status.is_success() {
            return Err(status_error(status, &bytes));
        }
        let bytes = if request.compress {
            Bytes::from(
                gunzip(&bytes, self.inner.config.max_body)
                    .map_err(|e| Error::new(e.kind(), format!("ERR_REPLY_ENCODING_COMPRESSION: {}", e.message())))?,
            )
        } else {
            bytes
        };
        let reply =
            envelope::decode_reply_routed(&bytes, |rid| (rid.as_str() == Some(&*request.rid)).then_some(((), form))).map_err(|(_, e)| e)?;
        if reply.target.is_none() {
            return Err(Error::new(ErrorKind::Protocol, format!("reply rid {} does not match request rid {:?}", reply.rid, request.rid)));
        }
        reply.outcome()
    }

    /// Sends a raw body in the reference's streaming mode: `POST /` with `_gr: ["<rid>","<key>"]`,
    /// a chunked body, and `headers` (values sent as they are; use JSON text for `_ar`). Returns the
    /// status and the raw response body. A new uuid-v4 rid is made for the request.
    pub async fn request_stream(
        &self,
        dest: &str,
        key: &str,
        headers: &[(&str, &str)],
        body: BodyStream,
        timeout: Option<Duration>,
    ) -> Result<StreamResponse> {
        let rid = crate::rpc::new_rid();
        self.request_stream_with_rid(dest, &rid, key, headers, body, timeout).await
    }

    /// [`HttpClient::request_stream`] with a given rid.
    pub async fn request_stream_with_rid(
        &self,
        dest: &str,
        rid: &str,
        key: &str,
        headers: &[(&str, &str)],
        body: BodyStream,
        timeout: Option<Duration>,
    ) -> Result<StreamResponse> {
        let req = self.stream_request(dest, rid, key, headers, body)?;
        let (status, body) = self.send(dest, req, timeout).await?;
        Ok(StreamResponse { status: status.as_u16(), body })
    }

    fn stream_request(
        &self,
        dest: &str,
        rid: &str,
        key: &str,
        headers: &[(&str, &str)],
        body: BodyStream,
    ) -> Result<http::Request<ReqBody>> {
        use futures_util::StreamExt;
        let gr = serde_json::to_string(&serde_json::json!([rid, key]))?;
        let mut builder = http::Request::post(self.uri(dest)?).header(HEADER_GR, gr);
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let frames: Pin<Box<dyn Stream<Item = std::result::Result<Frame<Bytes>, std::io::Error>> + Send>> =
            Box::pin(body.map(|r| r.map(Frame::data)));
        builder.body(Either::Right(StreamBody::new(frames))).map_err(|e| Error::invalid(format!("building the stream request: {e}")))
    }

    /// Streaming mode with a streamed answer: like [`HttpClient::request_stream_with_rid`], but
    /// returns as soon as the response headers arrive, with the status and the raw response body
    /// as a stream (for downloads larger than `max_body`). `timeout` covers the upload and the wait
    /// for the response headers; reading the body is bounded by the caller (e.g. with
    /// `tokio::time::timeout` around each chunk).
    pub async fn request_stream_body(
        &self,
        dest: &str,
        rid: &str,
        key: &str,
        headers: &[(&str, &str)],
        body: BodyStream,
        timeout: Option<Duration>,
    ) -> Result<(u16, BodyStream)> {
        let req = self.stream_request(dest, rid, key, headers, body)?;
        let client = self.client()?;
        let fut = async {
            tokio::select! {
                r = client.request(req) => r.map_err(|e| map_client_error(dest, e)),
                _ = self.inner.closed.cancelled() => Err(Error::new(ErrorKind::Closed, "the HTTP client was closed")),
            }
        };
        let resp = match timeout {
            Some(t) => {
                tokio::time::timeout(t, fut).await.map_err(|_| Error::timeout(format!("no response from {dest} within {t:?}")))??
            }
            None => fut.await?,
        };
        Ok((resp.status().as_u16(), incoming_stream(resp.into_body())))
    }
}

/// A hyper body as a stream of data chunks (trailers are skipped).
fn incoming_stream(body: Incoming) -> BodyStream {
    use futures_util::StreamExt;
    Box::pin(http_body_util::BodyStream::new(body).filter_map(|f| async move {
        match f {
            Ok(frame) => frame.into_data().ok().map(Ok),
            Err(e) => Some(Err(std::io::Error::other(e))),
        }
    }))
}

fn status_error(status: StatusCode, body: &[u8]) -> Error {
    let text = String::from_utf8_lossy(&body[..body.len().min(1000)]).into_owned();
    // Our servers put the reason in an envelope; show its message when there is one.
    let msg = decode_reply(body).ok().and_then(|r| r.error).unwrap_or(text);
    let kind = match status {
        StatusCode::PAYLOAD_TOO_LARGE => ErrorKind::PayloadTooLarge,
        StatusCode::BAD_REQUEST => ErrorKind::Decode,
        _ => ErrorKind::Protocol,
    };
    Error::new(kind, format!("HTTP {}: {msg}", status.as_u16()))
}

fn map_client_error(url: &str, e: hyper_util::client::legacy::Error) -> Error {
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(&e);
    while let Some(s) = src {
        if let Some(ours) = s.downcast_ref::<Error>() {
            return Error::new(ours.kind(), ours.message().to_string());
        }
        src = s.source();
    }
    let mut detail = e.to_string();
    let mut src: Option<&dyn std::error::Error> = std::error::Error::source(&e);
    while let Some(s) = src {
        detail.push_str(": ");
        detail.push_str(&s.to_string());
        src = s.source();
    }
    let kind = if e.is_connect() { ErrorKind::Connect } else { ErrorKind::Closed };
    Error::new(kind, format!("request to {url} failed: {detail}"))
}

impl ClientTransport for HttpClient {
    fn request(&self, dest: &str, request: OutgoingRequest) -> BoxFuture<'static, Result<Value>> {
        let this = self.clone();
        let dest = dest.to_string();
        Box::pin(async move { this.request_to(&dest, request).await })
    }

    fn request_raw(&self, dest: &str, request: OutgoingRequest) -> BoxFuture<'static, Result<Box<RawValue>>> {
        let this = self.clone();
        let dest = dest.to_string();
        Box::pin(async move { this.request_as(&dest, request, ResultForm::Raw).await.map(ReplyResult::into_raw) })
    }

    fn active_connections(&self, dest: &str) -> usize {
        lock(&self.inner.live).get(dest).copied().unwrap_or(0)
    }

    fn close(&self) {
        self.inner.closed.cancel();
        lock(&self.inner.client).take();
    }
}

// ---------------------------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------------------------

/// A streaming (`_gr`) request as a [`StreamHandler`] sees it: the raw body, unread.
pub struct StreamRequest {
    /// The rid from `_gr` (slot 0).
    pub rid: Value,
    /// The key from `_gr` (slot 1).
    pub key: String,
    /// Transport details; `info.http` holds `_gr`, `_a`, `_ar`.
    pub info: RequestInfo,
    /// All request headers (e.g. `content-type`).
    pub headers: HeaderMap,
    /// The raw request body.
    pub body: BodyStream,
}

impl std::fmt::Debug for StreamRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamRequest").field("rid", &self.rid).field("key", &self.key).finish_non_exhaustive()
    }
}

impl StreamRequest {
    /// Reads the whole body, failing past `max` bytes.
    pub async fn read_all(&mut self, max: usize) -> Result<Vec<u8>> {
        use futures_util::StreamExt;
        let mut out = Vec::new();
        while let Some(chunk) = self.body.next().await {
            let chunk = chunk?;
            if out.len() + chunk.len() > max {
                return Err(Error::new(ErrorKind::PayloadTooLarge, format!("body over {max} bytes")));
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }
}

/// Handles streaming-mode requests (those with a `_gr` header) with access to the raw body; the
/// answer is the raw response body (for an RPC-style answer, return
/// [`envelope::encode_reply`] bytes). Without one, `_gr` requests are parsed as envelopes.
pub trait StreamHandler: Send + Sync + 'static {
    /// Handles one streaming request; the response is sent with status 200.
    fn handle(&self, request: StreamRequest) -> BoxFuture<'static, Result<BodyStream>>;
}

/// HTTP server settings.
#[derive(Clone)]
pub struct HttpServerConfig {
    /// TLS settings: `Some` makes the server HTTPS. Client certificates the config asks for reach
    /// handlers as [`RequestInfo::cert`].
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Largest request body accepted (after gunzip); larger ones get a 413 error reply.
    pub max_body: usize,
    /// Answer `ERR_TIMEOUT` when a handler has not replied within this time.
    pub reply_timeout: Option<Duration>,
    /// Most connections served at once; further ones are closed at once (see
    /// [`super::ConnLimits`]).
    pub max_connections: usize,
    /// Most connections one source IP address holds at once.
    pub max_connections_per_ip: usize,
    /// Deadlines on reading each request (head, body, minimum body rate) and on idle keep-alive
    /// connections. A late head closes the connection; a late or slow body is answered `408
    /// [null,"ERR_TIMEOUT",null]` and the connection closes.
    pub deadlines: super::ReadDeadlines,
    /// Most request-body bytes the whole server buffers at once (bodies being read and waiting
    /// for their handler). A body that does not fit is answered `503 [null,"ERR_BUSY",null]` and
    /// its connection closes, so that many large bodies at once cannot exhaust memory.
    pub max_body_in_flight: usize,
    /// Timeout of the TLS handshake.
    pub tls_handshake_timeout: Duration,
    /// Handler of streaming-mode (`_gr`) requests with raw bodies. `None`: they are parsed as
    /// envelopes, rid and key taken from `_gr`.
    pub stream_handler: Option<Arc<dyn StreamHandler>>,
}

impl std::fmt::Debug for HttpServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpServerConfig")
            .field("tls", &self.tls.is_some())
            .field("max_body", &self.max_body)
            .field("reply_timeout", &self.reply_timeout)
            .field("max_connections", &self.max_connections)
            .finish_non_exhaustive()
    }
}

impl Default for HttpServerConfig {
    fn default() -> Self {
        HttpServerConfig {
            tls: None,
            max_body: DEFAULT_MAX_BODY,
            reply_timeout: None,
            max_connections: 10_000,
            max_connections_per_ip: super::ConnLimits::default().max_per_ip,
            deadlines: super::ReadDeadlines::default(),
            max_body_in_flight: DEFAULT_MAX_BODY_IN_FLIGHT,
            tls_handshake_timeout: Duration::from_secs(10),
            stream_handler: None,
        }
    }
}

struct ServerCtx {
    handler: Arc<dyn Handler>,
    config: HttpServerConfig,
    sources: Arc<super::limits::Sources>,
    budget: super::limits::ByteBudget,
    /// Closes every connection now.
    life: super::Lifecycle,
}

/// A running HTTP(S) RPC server. Stops when [`HttpServer::close`] is called or it is dropped.
#[derive(Debug)]
pub struct HttpServer {
    local_addr: SocketAddr,
    life: super::Lifecycle,
    refusals: Arc<super::Refusals>,
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.life.close();
    }
}

impl HttpServer {
    /// Binds `addr` (port 0 picks a free port) and serves `handler` in the background.
    pub async fn bind(addr: SocketAddr, handler: Arc<dyn Handler>, config: HttpServerConfig) -> Result<HttpServer> {
        let listener = super::listen(addr)?;
        let local_addr = listener.local_addr()?;
        let life = super::Lifecycle::listening(&listener)?;
        let refusals = Arc::new(super::Refusals::default());
        let limits = super::ConnLimits { max_connections: config.max_connections, max_per_ip: config.max_connections_per_ip };
        let sources = super::limits::Sources::new(limits, refusals.clone());
        let budget = super::limits::ByteBudget::new(config.max_body_in_flight);
        tokio::spawn(accept_loop(listener, Arc::new(ServerCtx { handler, config, sources, budget, life: life.clone() })));
        Ok(HttpServer { local_addr, life, refusals })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.local_addr.port()
    }

    /// Stops accepting and closes every connection (requests in flight are dropped).
    pub fn close(&self) {
        self.life.close();
    }

    /// How many connections are open now.
    pub fn connections(&self) -> usize {
        self.life.connections.count()
    }

    /// How many connections and requests were refused by a limit (connections per source or in
    /// all, the body budget, a read deadline) since the server started.
    pub fn refused(&self) -> u64 {
        self.refusals.total()
    }

    /// Shuts down gracefully: stops accepting (new connections are refused), keeps serving the
    /// open connections for 250 ms with every reply carrying `Connection: close` (the client then
    /// closes the connection itself, so no request races a server-side close), then lets the
    /// request being served finish and closes each connection. After `grace` the rest are closed
    /// as by [`HttpServer::close`]. True when every connection finished in time.
    pub fn drain(&self, grace: Duration) -> impl Future<Output = bool> + Send + 'static {
        self.life.drain(grace)
    }
}

impl ServerTransport for HttpServer {
    fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
    fn close(&self) {
        self.life.close();
    }

    fn drain(&self, grace: Duration) -> crate::rpc::BoxFuture<'static, bool> {
        Box::pin(HttpServer::drain(self, grace))
    }
}

/// How long a draining server keeps serving requests on its open connections (answering each with
/// `Connection: close`) before it closes the idle ones. Closing an idle keep-alive connection at
/// once races with a client that is sending a request on it at that moment; a client that gets
/// `Connection: close` closes the connection itself.
const HTTP_DRAIN_LINGER: Duration = Duration::from_millis(250);

async fn accept_loop(listener: TcpListener, ctx: Arc<ServerCtx>) {
    let acceptor = ctx.config.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    let draining = ctx.life.draining.clone();
    super::accept_loop(listener, ctx.sources.clone(), draining, move |tcp, remote| {
        let ctx = ctx.clone();
        let token = ctx.life.closing.clone();
        let acceptor = acceptor.clone();
        async move {
            let _live = ctx.life.connections.enter();
            match acceptor {
                None => serve_conn(TokioIo::new(tcp), remote, None, ctx, token).await,
                Some(acc) => {
                    let hs = tokio::select! {
                        hs = tokio::time::timeout(ctx.config.tls_handshake_timeout, acc.accept(tcp)) => hs,
                        () = token.cancelled() => return,
                    };
                    let tls = match hs {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(%remote, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    };
                    let cert = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(|c| Arc::new(PeerCert::from_der(c.as_ref().to_vec())));
                    serve_conn(TokioIo::new(tls), remote, cert, ctx, token).await
                }
            }
        }
    })
    .await;
}

async fn serve_conn<I>(io: I, remote: SocketAddr, cert: Option<Arc<PeerCert>>, ctx: Arc<ServerCtx>, token: CancellationToken)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let svc_ctx = ctx.clone();
    let activity = super::limits::Activity::new();
    let svc_activity = activity.clone();
    let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
        let ctx = svc_ctx.clone();
        let cert = cert.clone();
        let running = svc_activity.running();
        async move {
            let _running = running;
            let mut resp = handle_request(req, remote, cert, &ctx).await;
            if ctx.life.draining.is_cancelled() {
                // Draining: the client must not send another request on this connection.
                resp.headers_mut().insert(http::header::CONNECTION, HeaderValue::from_static("close"));
            }
            Ok::<_, Infallible>(resp)
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(ctx.config.deadlines.header)
        .keep_alive(true)
        .serve_connection(super::limits::Watched::new(io, activity.clone()), svc);
    tokio::pin!(conn);
    let idle = super::limits::idle_for(&activity, ctx.config.deadlines.idle);
    tokio::pin!(idle);
    let drain = ctx.life.draining.cancelled();
    tokio::pin!(drain);
    let linger = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(linger);
    let (mut drained, mut shut) = (false, false);
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%remote, error = %e, "connection ended with an error");
                }
                return;
            }
            // Draining: for a short while requests are still served, each answered with
            // `Connection: close` (the client then closes the connection itself, with no race);
            // then the request being served finishes and an idle connection closes.
            () = &mut drain, if !drained => {
                drained = true;
                linger.as_mut().reset(tokio::time::Instant::now() + HTTP_DRAIN_LINGER);
            }
            () = &mut linger, if drained && !shut => {
                shut = true;
                conn.as_mut().graceful_shutdown();
            }
            // Idle keep-alive: nothing running and nothing received for the idle deadline.
            () = &mut idle, if !shut => {
                shut = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = token.cancelled() => return,
        }
    }
}

fn full(status: StatusCode, body: Vec<u8>) -> http::Response<RespBody> {
    let mut r = http::Response::new(Either::Left(Full::new(Bytes::from(body))));
    *r.status_mut() = status;
    r
}

fn header_str<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v: &HeaderValue| v.to_str().ok())
}

/// The reply to a body that could not be read. Every one but a size refusal with a declared
/// length closes the connection (the rest of the body is never read).
fn body_error_reply(e: super::limits::BodyError, remote: SocketAddr, ctx: &ServerCtx) -> http::Response<RespBody> {
    use super::limits::BodyError;
    let mut r = match e {
        BodyError::TooLarge => error_reply(StatusCode::PAYLOAD_TOO_LARGE, ErrorKind::PayloadTooLarge.name()),
        BodyError::Busy => {
            ctx.sources.refusals.refuse("the server's budget of body bytes in flight is spent", Some(remote.ip()));
            error_reply(StatusCode::SERVICE_UNAVAILABLE, "ERR_BUSY")
        }
        BodyError::TimedOut => {
            ctx.sources.refusals.refuse("a request body did not arrive in time", Some(remote.ip()));
            error_reply(StatusCode::REQUEST_TIMEOUT, crate::rpc::ERR_TIMEOUT)
        }
        BodyError::Io(e) => error_reply(StatusCode::BAD_REQUEST, &format!("ERR_DECODE: reading the body: {e}")),
    };
    r.headers_mut().insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    r
}

fn error_reply(status: StatusCode, msg: &str) -> http::Response<RespBody> {
    full(status, envelope::encode_reply(&Value::Null, &Err::<Value, _>(msg.to_string())))
}

async fn handle_request(
    req: http::Request<Incoming>,
    remote: SocketAddr,
    cert: Option<Arc<PeerCert>>,
    ctx: &ServerCtx,
) -> http::Response<RespBody> {
    let headers = req.headers();
    let is_stream = header_str(headers, "transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    let compress = header_str(headers, HEADER_COMPRESS).is_some_and(|v| v.contains("gzip"));
    let (info_headers, gr_rid_key) = match decode_gr_header(headers.get(HEADER_GR).map(|v| v.as_bytes())) {
        Ok(Some(GrHeader { value, slots })) => (Some(value), Some(slots)),
        Ok(None) => (None, None),
        Err(_) => {
            // The reference's exact answer.
            return full(StatusCode::INTERNAL_SERVER_ERROR, b"[null, \"ERR_HEADER_PARSE_GR\", null]".to_vec());
        }
    };
    let action = header_str(headers, HEADER_ACTION).map(str::to_string);
    let args = headers
        .get(HEADER_ARGS)
        .and_then(|v| serde_json::from_slice::<Value>(v.as_bytes()).ok())
        .unwrap_or_else(|| Value::Object(Default::default()));
    let meta = HttpMeta { is_stream, compress, info_headers, action, args };
    let info = RequestInfo { transport: TransportKind::Http, remote_addr: Some(remote), cert, http: Some(meta) };

    // Streaming mode with a raw-body handler.
    if let (Some((rid, key)), Some(sh)) = (&gr_rid_key, &ctx.config.stream_handler) {
        use futures_util::StreamExt;
        let headers = req.headers().clone();
        // The stream handler reads the body at its own pace, but never past the read deadlines.
        let body = super::limits::deadline_body(incoming_stream(req.into_body()), ctx.config.deadlines);
        let sreq = StreamRequest { rid: rid.clone(), key: key.clone(), info, headers, body };
        return match sh.handle(sreq).await {
            Ok(stream) => {
                let frames: Pin<Box<dyn Stream<Item = std::result::Result<Frame<Bytes>, std::io::Error>> + Send>> =
                    Box::pin(stream.map(|r| r.map(Frame::data)));
                http::Response::new(Either::Right(StreamBody::new(frames)))
            }
            Err(e) => full(StatusCode::OK, envelope::encode_reply(rid, &Err::<Value, _>(e.to_string()))),
        };
    }

    let max = ctx.config.max_body;
    let declared = header_str(req.headers(), "content-length").and_then(|v| v.parse::<u64>().ok());
    let read = super::limits::read_body(req.into_body(), declared, max, &ctx.config.deadlines, Some(&ctx.budget)).await;
    let (body, _budget) = match read {
        Ok(b) => b,
        Err(e) => return body_error_reply(e, remote, ctx),
    };
    let (rid, key, payload) = match decode_body(&body, compress, gr_rid_key, max) {
        Ok(d) => d,
        Err((status, msg)) => return error_reply(status, &msg),
    };
    let request = Request { rid: rid.clone(), key, payload, info };
    let answer = crate::rpc::dispatch_wire(ctx.handler.as_ref(), request, ctx.config.reply_timeout).await;
    let out = envelope::encode_reply(&rid, &answer);
    if compress {
        match gzip(&out) {
            Ok(z) => full(StatusCode::OK, z),
            Err(e) => error_reply(StatusCode::INTERNAL_SERVER_ERROR, &format!("ERR_REPLY_ENCODING_COMPRESSION: {e}")),
        }
    } else {
        full(StatusCode::OK, out)
    }
}

/// The `(rid, key)` a `_gr` header names, as the server reads it (a key that is not a string is
/// its JSON text).
fn gr_slots(gr: &Value) -> (Value, String) {
    let rid = gr.get(0).cloned().unwrap_or(Value::Null);
    let key = match gr.get(1) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    };
    (rid, key)
}

/// What the server makes of a whole request body: gunzipped when `compress` (a body that does not
/// gunzip is used as it is, like the reference; past `max` bytes it is refused), decoded as an
/// envelope, and rid and key taken from the `_gr` slots that are truthy. `Err` is the status and
/// error string of the reply. Pure, whatever the bytes (the `rpc_http_body` fuzz target's entry
/// point, with [`decode_gr_header`]).
pub fn decode_body(
    body: &[u8],
    compress: bool,
    gr: Option<(Value, String)>,
    max: usize,
) -> std::result::Result<(Value, String, crate::rpc::Payload), (StatusCode, String)> {
    let body: std::borrow::Cow<'_, [u8]> = if compress {
        match gunzip(body, max) {
            Ok(b) => b.into(),
            Err(e) if e.kind() == ErrorKind::PayloadTooLarge => {
                return Err((StatusCode::PAYLOAD_TOO_LARGE, ErrorKind::PayloadTooLarge.name().to_string()));
            }
            Err(_) => body.into(),
        }
    } else {
        body.into()
    };
    let decoded = envelope::decode_request(&body).map_err(|e| (StatusCode::BAD_REQUEST, format!("ERR_DECODE: {}", e.message())))?;
    // Like the reference, each `_gr` slot wins only when it is truthy.
    Ok(match gr {
        Some((rid, key)) => (
            if is_truthy(&rid) { rid } else { decoded.rid },
            if key.is_empty() || key == "0" || key == "false" { decoded.key } else { key },
            decoded.payload,
        ),
        None => (decoded.rid, decoded.key, decoded.payload),
    })
}

/// A `_gr` header, read: its whole value and the `(rid, key)` slots the server uses.
#[derive(Debug, Clone, PartialEq)]
pub struct GrHeader {
    /// The whole JSON value (what handlers see as `info_headers`).
    pub value: Value,
    /// The `(rid, key)` slots (a key that is not a string is its JSON text).
    pub slots: (Value, String),
}

/// Reads a `_gr` header value: `Ok(None)` when absent; a decode error (answered `500
/// ERR_HEADER_PARSE_GR` like the reference) when it is not JSON.
pub fn decode_gr_header(value: Option<&[u8]>) -> Result<Option<GrHeader>> {
    match value {
        None => Ok(None),
        Some(v) => {
            let value = serde_json::from_slice::<Value>(v).map_err(|e| Error::decode(format!("_gr: {e}")))?;
            let slots = gr_slots(&value);
            Ok(Some(GrHeader { value, slots }))
        }
    }
}

fn is_truthy(v: &Value) -> bool {
    match v {
        Value::Null | Value::Bool(false) => false,
        Value::String(s) => !s.is_empty(),
        Value::Number(n) => n.as_f64() != Some(0.0),
        _ => true,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::rpc::Reply;
    use serde_json::json;

    fn echo() -> Arc<dyn Handler> {
        Arc::new(|req: Request, reply: Reply| {
            if req.payload == json!("fail") {
                reply.err("ERR_BOOM");
            } else {
                reply.ok(json!({"key": req.key, "payload": req.payload}));
            }
        })
    }

    fn out(payload: &Value, compress: bool) -> OutgoingRequest {
        OutgoingRequest {
            rid: crate::rpc::new_rid(),
            key: "k".into(),
            payload_json: serde_json::to_string(payload).unwrap().into(),
            timeout: Some(Duration::from_secs(10)),
            compress,
        }
    }

    #[tokio::test]
    async fn round_trip_plain_gzip_and_error() {
        let srv = HttpServer::bind("127.0.0.1:0".parse().unwrap(), echo(), HttpServerConfig::default()).await.unwrap();
        let dest = format!("127.0.0.1:{}", srv.port());
        let c = HttpClient::default();
        let r = c.request_to(&dest, out(&json!("hi"), false)).await.unwrap();
        assert_eq!(r, json!({"key": "k", "payload": "hi"}));
        assert_eq!(c.active_connections(&dest), 1);
        let r = c.request_to(&dest, out(&json!({"a": [1, 2]}), true)).await.unwrap();
        assert_eq!(r["payload"], json!({"a": [1, 2]}));
        let e = c.request_to(&dest, out(&json!("fail"), false)).await.unwrap_err();
        assert_eq!((e.kind(), e.message()), (ErrorKind::Remote, "ERR_BOOM"));
        c.close();
        let e = c.request_to(&dest, out(&json!("x"), false)).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Closed);
    }

    #[tokio::test]
    async fn raw_results_are_the_wire_text() {
        let h: Arc<dyn Handler> = Arc::new(|req: Request, reply: Reply| match req.payload.as_str() {
            Some("fail") => reply.err("ERR_BOOM"),
            _ => reply.ok_raw(RawValue::from_string("{ \"b\" : [1, \"\\u00e9\"], \"a\":null }".into()).unwrap()),
        });
        let srv = HttpServer::bind("127.0.0.1:0".parse().unwrap(), h, HttpServerConfig::default()).await.unwrap();
        let dest = format!("127.0.0.1:{}", srv.port());
        let c = HttpClient::default();
        for compress in [false, true] {
            let r = c.request_raw(&dest, out(&json!("x"), compress)).await.unwrap();
            assert_eq!(r.get(), "{ \"b\" : [1, \"\\u00e9\"], \"a\":null }");
            let v = c.request_to(&dest, out(&json!("x"), compress)).await.unwrap();
            assert_eq!(v, json!({"b": [1, "é"], "a": null}));
        }
        let e = c.request_raw(&dest, out(&json!("fail"), false)).await.unwrap_err();
        assert_eq!((e.kind(), e.message()), (ErrorKind::Remote, "ERR_BOOM"));
    }

    /// Arbitrary bodies (random bytes, random gzip flags, random `_gr`) always get an answer.
    #[tokio::test]
    async fn arbitrary_bodies_always_get_an_answer() {
        use rand::{Rng, SeedableRng};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let srv = HttpServer::bind("127.0.0.1:0".parse().unwrap(), echo(), HttpServerConfig::default()).await.unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for i in 0..200 {
            let len = rng.gen_range(0..300);
            let mut body: Vec<u8> = (0..len).map(|_| rng.r#gen()).collect();
            if i % 4 == 0 {
                // Mostly-valid JSON shapes.
                body = [&b"["[..], &body[..len.min(5)], b"]"].concat();
            }
            if i % 7 == 0 {
                body = gzip(&body).unwrap();
            }
            let mut head = format!("POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\nConnection: close\r\n", body.len());
            if i % 3 == 0 {
                head.push_str("grc-compress: gzip\r\n");
            }
            if i % 5 == 0 {
                head.push_str("_gr: [\"r\",\"k\"]\r\n_ar: {bad\r\n");
            }
            head.push_str("\r\n");
            let mut s = TcpStream::connect(srv.local_addr()).await.unwrap();
            s.write_all(head.as_bytes()).await.unwrap();
            s.write_all(&body).await.unwrap();
            let mut out = Vec::new();
            tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await.unwrap().unwrap();
            let text = String::from_utf8_lossy(&out);
            assert!(text.starts_with("HTTP/1.1 200") || text.starts_with("HTTP/1.1 400"), "case {i}: {text}");
        }
    }

    #[test]
    fn gzip_round_trip_and_limit() {
        let z = gzip(b"hello hello hello").unwrap();
        assert_eq!(&z[..3], &[0x1f, 0x8b, 0x08]);
        assert_eq!(gunzip(&z, 100).unwrap(), b"hello hello hello");
        assert_eq!(gunzip(&z, 5).unwrap_err().kind(), ErrorKind::PayloadTooLarge);
        assert!(gunzip(b"nope", 100).is_err());
    }
}
