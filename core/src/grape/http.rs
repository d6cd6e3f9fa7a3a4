//! The HTTP/1.1 server of the Grape API (hyper 1, keep-alive).
//!
//! Reads each body up to the size limit (a larger one is refused with 413 as soon as the limit is
//! passed, without reading the rest), parses it with [`api::handle_body`], hands the request to
//! a [`Handler`], and writes the [`Reply`] with a `Content-Length`.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, HeaderValue};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::api::{self, Reply, Request};

/// Executes a parsed API request (the Grape itself, or a stub in tests).
pub(crate) trait Handler: Send + Sync + 'static {
    /// Runs `req` and returns the reply.
    fn handle(&self, req: Request) -> impl Future<Output = Reply> + Send;
}

/// Server-wide settings.
#[derive(Debug, Clone)]
pub(crate) struct ServerOptions {
    /// Largest accepted body in bytes (`usize::MAX`: no limit).
    pub max_body: usize,
    /// Most connections served at once; more wait in the accept queue.
    pub max_connections: usize,
}

/// Accepts connections on `listener` until `stop` is cancelled; open connections are shut down
/// gracefully then (an in-flight request gets its reply; idle keep-alive connections close).
pub(crate) async fn serve<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    opts: ServerOptions,
    stop: CancellationToken,
) {
    let mut builder = http1::Builder::new();
    builder.keep_alive(true).timer(TokioTimer::new()).header_read_timeout(Duration::from_secs(30));
    let builder = Arc::new(builder);
    let max_body = opts.max_body;
    crate::transport::accept_loop(listener, opts.max_connections, stop.clone(), move |stream, peer| {
        let handler = handler.clone();
        let builder = builder.clone();
        let stop = stop.clone();
        async move {
            let svc = service_fn(move |req| {
                let handler = handler.clone();
                async move { Ok::<_, Infallible>(respond(handler.as_ref(), req, max_body).await) }
            });
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                res = conn.as_mut() => {
                    if let Err(e) = res {
                        tracing::trace!(%peer, error = %e, "connection ended with an error");
                    }
                }
                _ = stop.cancelled() => {
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
    max_body: usize,
) -> http::Response<Full<Bytes>> {
    let path = req.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| req.uri().path().to_string());
    let reply = match read_body(req, max_body).await {
        Err(reply) => reply,
        Ok(body) => match api::handle_body(&path, &body) {
            Err(reply) => reply,
            Ok(request) => handler.handle(request).await,
        },
    };
    to_response(reply)
}

/// Collects the request body, refusing it (413) once it passes `max_body` bytes.
async fn read_body(req: http::Request<Incoming>, max_body: usize) -> Result<Bytes, Reply> {
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > max_body as u64) {
        return Err(Reply::payload_too_large());
    }
    let mut body = req.into_body();
    let mut buf = BytesMut::with_capacity(declared.map(|n| n as usize).unwrap_or(256).min(max_body).min(64 * 1024));
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Reply::raw(500, &e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            if buf.len().saturating_add(data.len()) > max_body {
                return Err(Reply::payload_too_large());
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

fn to_response(reply: Reply) -> http::Response<Full<Bytes>> {
    let len = reply.body.len();
    let status = reply.status;
    let mut res = http::Response::new(Full::new(reply.body));
    *res.status_mut() = http::StatusCode::from_u16(reply.status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    res.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from(len));
    if status == 413 {
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
        async fn handle(&self, req: Request) -> Reply {
            match req {
                Request::Lookup { name } => Reply::json_text(format!("[\"{}\"]", String::from_utf8_lossy(&name))),
                _ => Reply::empty(),
            }
        }
    }

    async fn start(max_body: usize) -> (std::net::SocketAddr, CancellationToken) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let stop = CancellationToken::new();
        tokio::spawn(serve(l, Arc::new(Echo), ServerOptions { max_body, max_connections: 64 }, stop.clone()));
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
        let out = raw(addr, b"POST /lookup HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n0123456789abcdef\r\n10\r\n0123456789abcdef\r\n0\r\n\r\n").await;
        assert!(out.starts_with("HTTP/1.1 413"), "{out}");
        stop.cancel();
    }
}
