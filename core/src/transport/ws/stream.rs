//! The socket under a WebSocket: TCP, plain or TLS (either side), the opening handshakes (with
//! the server's `verify_client` hook) and the dialing of a destination. RPC and PUB/SUB both put
//! [`super::frame`]'s framing on such a socket.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::frame::{self as wsframe, HandshakeError};

use crate::error::{Error, ErrorKind, Result};
use crate::tls::{ClientInfo, ClientTls, PeerCert, ServerTls, VerifyClient, client_cert};

/// A TCP stream, plain or wrapped in TLS (either side).
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub(crate) enum NetStream {
    Plain(TcpStream),
    ServerTls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    ClientTls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for NetStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            NetStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            NetStream::ServerTls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            NetStream::ClientTls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for NetStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            NetStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            NetStream::ServerTls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            NetStream::ClientTls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            NetStream::Plain(s) => Pin::new(s).poll_flush(cx),
            NetStream::ServerTls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            NetStream::ClientTls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            NetStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            NetStream::ServerTls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            NetStream::ClientTls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            NetStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            NetStream::ServerTls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            NetStream::ClientTls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            NetStream::Plain(s) => s.is_write_vectored(),
            NetStream::ServerTls(s) => s.is_write_vectored(),
            NetStream::ClientTls(s) => s.is_write_vectored(),
        }
    }
}

/// Settings shared by the RPC and PUB/SUB servers for accepting one WebSocket.
#[derive(Clone)]
pub(crate) struct AcceptSettings {
    pub(crate) tls: Option<ServerTls>,
    pub(crate) verify_client: Option<VerifyClient>,
    pub(crate) max_message_size: usize,
    pub(crate) handshake_timeout: Duration,
}

/// Runs the TLS handshake (if any), the `verify_client` hook and the WebSocket upgrade on an
/// accepted TCP stream. A refusal by the hook is answered `HTTP 401`. Returns the stream, the
/// bytes the client sent after its upgrade request, and the client certificate.
pub(crate) async fn accept_raw(
    tcp: TcpStream,
    remote: SocketAddr,
    s: &AcceptSettings,
) -> Result<(NetStream, Vec<u8>, Option<Arc<PeerCert>>)> {
    let _ = tcp.set_nodelay(true);
    let fut = async {
        let (mut stream, cert) = match &s.tls {
            Some(tls) => {
                let t = tls
                    .acceptor()
                    .accept(tcp)
                    .await
                    .map_err(|e| Error::new(ErrorKind::TlsHandshake, format!("TLS accept from {remote}: {e}")))?;
                let cert = client_cert(&t).map(Arc::new);
                (NetStream::ServerTls(Box::new(t)), cert)
            }
            None => (NetStream::Plain(tcp), None),
        };
        let hook = s.verify_client.clone();
        let allow = |path: &str| match &hook {
            Some(hook) => {
                let info = ClientInfo::new(cert.as_deref(), Some(remote), path);
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| hook(&info))).unwrap_or(false)
            }
            None => true,
        };
        let (_path, leftover) = wsframe::server_handshake(&mut stream, allow).await.map_err(|e| match e {
            HandshakeError::Refused => Error::new(ErrorKind::ClientRefused, format!("verify_client refused {remote}")),
            other => Error::new(ErrorKind::Protocol, format!("WebSocket upgrade from {remote}: {other}")),
        })?;
        Ok((stream, leftover, cert))
    };
    match tokio::time::timeout(s.handshake_timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(Error::timeout(format!("handshake with {remote} timed out"))),
    }
}

/// Splits `"host:port"` into its host (brackets kept off) and port.
fn split_dest(dest: &str) -> Result<(String, u16)> {
    let (host, port) = dest.rsplit_once(':').ok_or_else(|| Error::invalid(format!("bad destination {dest:?}: no port")))?;
    let port: u16 = port.parse().map_err(|_| Error::invalid(format!("bad destination {dest:?}: bad port")))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(Error::invalid(format!("bad destination {dest:?}: no host")));
    }
    Ok((host.to_string(), port))
}

/// Dials `ws(s)://dest/ws`: TCP connect, TLS handshake when `tls` is set, WebSocket upgrade, all
/// within `timeout`. Errors: [`ErrorKind::Connect`] (refused, unreachable, bad response),
/// [`ErrorKind::TlsHandshake`], [`ErrorKind::ClientRefused`] (`HTTP 401`), [`ErrorKind::Timeout`].
/// Returns the stream and the bytes the server sent after its `101`.
pub(crate) async fn dial_raw(dest: &str, tls: Option<&ClientTls>, timeout: Duration) -> Result<(NetStream, Vec<u8>)> {
    let (host, port) = split_dest(dest)?;
    let fut = async {
        let tcp = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| Error::new(ErrorKind::Connect, format!("connect to {dest}: {e}")).with_source(e))?;
        let _ = tcp.set_nodelay(true);
        let mut stream = match tls {
            Some(tls) => {
                let name = crate::tls::server_name(&host)?;
                let t = tls
                    .connector()
                    .connect(name, tcp)
                    .await
                    .map_err(|e| Error::new(ErrorKind::TlsHandshake, format!("TLS with {dest}: {e}")))?;
                NetStream::ClientTls(Box::new(t))
            }
            None => NetStream::Plain(tcp),
        };
        let host_port = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
        let leftover = wsframe::client_handshake(&mut stream, &host_port, "/ws").await.map_err(|e| match e {
            HandshakeError::Status(401) => Error::new(ErrorKind::ClientRefused, format!("{dest} refused the client (HTTP 401)")),
            HandshakeError::Status(s) => Error::new(ErrorKind::Connect, format!("{dest} answered HTTP {s} to the upgrade")),
            HandshakeError::Io(e) if is_tls_alert(&e) => Error::new(ErrorKind::TlsHandshake, format!("TLS with {dest}: {e}")),
            other => Error::new(ErrorKind::Connect, format!("WebSocket upgrade with {dest}: {other}")),
        })?;
        Ok((stream, leftover))
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(Error::timeout(format!("connecting to {dest} took longer than {timeout:?}"))),
    }
}

/// In TLS 1.3 the server checks the client certificate after the client finished its handshake,
/// so a refusal shows up as an alert on the first read.
fn is_tls_alert(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dest_parsing() {
        assert_eq!(split_dest("127.0.0.1:1337").ok(), Some(("127.0.0.1".to_string(), 1337)));
        assert_eq!(split_dest("[::1]:80").ok(), Some(("::1".to_string(), 80)));
        assert!(split_dest("nohost").is_err());
        assert!(split_dest(":80").is_err());
        assert!(split_dest("h:99999").is_err());
    }
}
