//! The HTTP/1.1 server of the Grape API (hyper 1, keep-alive).
//!
//! Reads each body up to the size limit (a larger one is refused with 413 as soon as the limit is
//! passed, without reading the rest), parses it with [`api::handle_body`], hands the request to
//! a [`Handler`], and writes the [`ApiReply`] with a `Content-Length`.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, HeaderValue};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::api::{self, ApiReply, ApiRequest};
use crate::transport::limits::{self, Activity, BodyError, Sources, Watched, idle_for};
use crate::transport::{ConnLimits, ReadDeadlines, Refusals};

/// Executes a parsed API request (the Grape itself, or a stub in tests).
pub(crate) trait Handler: Send + Sync + 'static {
    /// Runs `req` and returns the reply.
    fn handle(&self, req: ApiRequest) -> impl Future<Output = ApiReply> + Send;
}

/// Server-wide settings.
#[derive(Debug, Clone)]
pub(crate) struct ServerOptions {
    /// Largest accepted body in bytes (`usize::MAX`: no limit).
    pub max_body: usize,
    /// Connections in all and per source address.
    pub connections: ConnLimits,
    /// Deadlines on the head, the body and idle keep-alive connections.
    pub deadlines: ReadDeadlines,
    /// Where refusals are counted.
    pub refusals: Arc<Refusals>,
}

/// Accepts connections on `listener` until `stop` is cancelled; open connections are shut down
/// gracefully then (an in-flight request gets its reply; idle keep-alive connections close).
pub(crate) async fn serve<H: Handler>(listener: TcpListener, handler: Arc<H>, opts: ServerOptions, stop: CancellationToken) {
    let mut builder = http1::Builder::new();
    builder.keep_alive(true).timer(TokioTimer::new()).header_read_timeout(opts.deadlines.header);
    let builder = Arc::new(builder);
    let opts = Arc::new(opts);
    let sources = Sources::new(opts.connections, opts.refusals.clone());
    crate::transport::accept_loop(listener, sources, stop.clone(), move |stream, peer| {
        let handler = handler.clone();
        let builder = builder.clone();
        let stop = stop.clone();
        let opts = opts.clone();
        async move {
            let activity = Activity::new();
            let svc_activity = activity.clone();
            let idle = opts.deadlines.idle;
            let svc = service_fn(move |req| {
                let handler = handler.clone();
                let opts = opts.clone();
                let running = svc_activity.running();
                async move {
                    let _running = running;
                    Ok::<_, Infallible>(respond(handler.as_ref(), req, &opts, peer).await)
                }
            });
            let conn = builder.serve_connection(Watched::new(TokioIo::new(stream), activity.clone()), svc);
            tokio::pin!(conn);
            tokio::select! {
                res = conn.as_mut() => {
                    if let Err(e) = res {
                        tracing::trace!(%peer, error = %e, "connection ended with an error");
                    }
                }
                // Idle keep-alive (nothing running, nothing received), or the server stopping:
                // a request being answered finishes, then the connection closes.
                () = async { tokio::select! { () = idle_for(&activity, idle) => {}, () = stop.cancelled() => {} } } => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(2), conn).await;
                }
            }
        }
    })
    .await;
}

/// Reads the body with the limit, runs the request, shapes the HTTP response.
async fn respond<H: Handler>(
    handler: &H,
    req: http::Request<Incoming>,
    opts: &ServerOptions,
    peer: std::net::SocketAddr,
) -> http::Response<Full<Bytes>> {
    let path = req.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| req.uri().path().to_string());
    let reply = match read_body(req, opts, peer).await {
        Err(reply) => reply,
        Ok(body) => match api::handle_body(&path, &body) {
            Err(reply) => reply,
            Ok(request) => handler.handle(request).await,
        },
    };
    to_response(reply)
}

/// Collects the request body within the deadlines, refusing it (413) once it passes `max_body`
/// bytes; a late or slow body gets `408 ERR_GRAPE_TIMEOUT` (raw text).
async fn read_body(req: http::Request<Incoming>, opts: &ServerOptions, peer: std::net::SocketAddr) -> Result<Bytes, ApiReply> {
    let declared = req.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok());
    match limits::read_body(req.into_body(), declared, opts.max_body, &opts.deadlines, None).await {
        Ok((body, _)) => Ok(body),
        Err(BodyError::TooLarge) => Err(ApiReply::payload_too_large()),
        Err(BodyError::TimedOut) => {
            opts.refusals.refuse("a request body did not arrive in time", Some(peer.ip()));
            Err(ApiReply::raw(408, api::ERR_TIMEOUT))
        }
        Err(BodyError::Busy) => Err(ApiReply::raw(503, "ERR_GRAPE_BUSY")),
        Err(BodyError::Io(e)) => Err(ApiReply::raw(500, &e)),
    }
}

fn to_response(reply: ApiReply) -> http::Response<Full<Bytes>> {
    let len = reply.body.len();
    let status = reply.status;
    let mut res = http::Response::new(Full::new(reply.body));
    *res.status_mut() = http::StatusCode::from_u16(reply.status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    res.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from(len));
    if matches!(status, 408 | 413) {
        // The rest of the body is never read: close instead of draining it.
        res.headers_mut().insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    } else {
        res.headers_mut().insert("keep-alive", HeaderValue::from_static("timeout=5"));
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    struct Echo;
    impl Handler for Echo {
        async fn handle(&self, req: ApiRequest) -> ApiReply {
            match req {
                ApiRequest::Lookup { name } => ApiReply::json_text(format!("[\"{}\"]", String::from_utf8_lossy(&name))),
                _ => ApiReply::empty(),
            }
        }
    }

    async fn start(max_body: usize) -> (std::net::SocketAddr, CancellationToken) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let stop = CancellationToken::new();
        tokio::spawn(serve(
            l,
            Arc::new(Echo),
            ServerOptions {
                max_body,
                connections: ConnLimits { max_connections: 64, max_per_ip: 64 },
                deadlines: ReadDeadlines::default(),
                refusals: Arc::default(),
            },
            stop.clone(),
        ));
        (addr, stop)
    }

    async fn raw(addr: std::net::SocketAddr, req: &[u8]) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(req).await.expect("write");
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn a_stalled_body_gets_408_and_sources_are_capped() {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let stop = CancellationToken::new();
        let deadlines = ReadDeadlines {
            header: Duration::from_millis(500),
            body: Duration::from_millis(800),
            body_min_rate: 100,
            body_grace: Duration::from_millis(300),
            idle: Duration::from_millis(300),
        };
        let opts = ServerOptions {
            max_body: 8192,
            connections: ConnLimits { max_connections: 64, max_per_ip: 2 },
            deadlines,
            refusals: Arc::default(),
        };
        tokio::spawn(serve(l, Arc::new(Echo), opts, stop.clone()));
        let t = std::time::Instant::now();
        let out = raw(addr, b"POST /lookup HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"data\"").await;
        assert!(out.starts_with("HTTP/1.1 408"), "{out}");
        assert!(out.ends_with(api::ERR_TIMEOUT), "{out}");
        assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
        // Two held connections from 127.0.0.1; a third is closed at once.
        let _a = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let _b = tokio::net::TcpStream::connect(addr).await.expect("connect");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let out = raw(addr, b"POST /lookup HTTP/1.1\r\nContent-Length: 14\r\n\r\n{\"data\":\"svc\"}").await;
        assert_eq!(out, "");
        // The held ones are idle: closed after the idle deadline, then there is room again.
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let out = raw(addr, b"POST /lookup HTTP/1.1\r\nContent-Length: 14\r\nConnection: close\r\n\r\n{\"data\":\"svc\"}").await;
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        stop.cancel();
    }

    #[tokio::test]
    async fn limit_and_keepalive() {
        let (addr, stop) = start(20).await;
        let body = r#"{"data":"svc"}"#;
        let req = format!(
            "POST /lookup HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}POST /get HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len(),
            body.len()
        );
        let out = raw(addr, req.as_bytes()).await;
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(out.contains("content-length: 7\r\n"), "{out}");
        assert!(out.contains("[\"svc\"]"), "{out}");
        assert!(out.contains("content-length: 0\r\n"), "{out}");
        // 21 bytes > 20.
        let big = r#"{"data":"0123456789"}"#;
        let out = raw(addr, format!("POST /lookup HTTP/1.1\r\nContent-Length: {}\r\n\r\n{big}", big.len()).as_bytes()).await;
        assert!(out.starts_with("HTTP/1.1 413"), "{out}");
        assert!(out.ends_with("ERR_GRAPE_PAYLOAD_SIZE"), "{out}");
        // Chunked, over the limit.
        let out = raw(
            addr,
            b"POST /lookup HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n0123456789abcdef\r\n10\r\n0123456789abcdef\r\n0\r\n\r\n",
        )
        .await;
        assert!(out.starts_with("HTTP/1.1 413"), "{out}");
        stop.cancel();
    }
}
