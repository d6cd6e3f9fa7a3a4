//! Transports: one module per wire protocol, each with its client and its server.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::rpc::{ClientTransport, Handler, ServerTransport};
use crate::tls::{ClientTls, ServerTls, VerifyClient};

mod busy;
pub mod http;
pub mod http_handoff;
pub mod limits;
pub mod loop_spin;
pub mod utp;
pub mod ws;
pub mod zmq;

pub use crate::rpc::TransportKind;
pub use limits::{ConnLimits, ReadDeadlines, Refusals, WsLiveness};

/// Entry points of the fuzz targets in `fuzz/`: the decoders of this module without their
/// sockets. Not part of the stable API.
#[doc(hidden)]
pub mod fuzzing {
    use std::task::{Context, Poll, Waker};

    use super::ws::frame::{FrameReader, Msg, Owned, Side, close_code_is_valid};

    /// Feeds `bytes` to a WebSocket frame reader of `server`'s side (limit `max_message`), `chunk`
    /// bytes per read (at least 1), taking every message after each read, as a connection does.
    /// Panics if the reader breaks one of its promises: a text message that is not UTF-8, a
    /// message over the limit, a close code a peer may not send. Returns how many messages and
    /// control frames it read before the end or the first error.
    pub fn ws_frames(server: bool, max_message: usize, bytes: &[u8], chunk: usize) -> usize {
        ws_frames_as(server, false, max_message, bytes, chunk)
    }

    /// [`ws_frames`], taking data messages as owned bytes (`FrameReader::next_owned`, as a PUB/SUB
    /// subscriber does) when `owned` is set; the same promises are checked.
    pub fn ws_frames_as(server: bool, owned: bool, max_message: usize, bytes: &[u8], chunk: usize) -> usize {
        let side = if server { Side::Server } else { Side::Client };
        let mut reader = FrameReader::new(side, max_message, Vec::new());
        let mut cx = Context::from_waker(Waker::noop());
        let mut n = 0;
        for part in bytes.chunks(chunk.max(1)) {
            let mut src: &[u8] = part;
            while !src.is_empty() {
                match reader.poll_fill(&mut src, &mut cx) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) | Poll::Pending => return n,
                    Poll::Ready(Ok(_)) => {}
                }
                loop {
                    let next = if owned {
                        // Owned bytes are checked as the borrowed kind they would have been.
                        match reader.next_owned() {
                            Ok(Some(Owned::Data { bytes, text })) => {
                                n += 1;
                                assert!(!text || std::str::from_utf8(&bytes).is_ok(), "a text message that is not UTF-8");
                                assert!(bytes.len() <= max_message, "a message over the limit");
                                continue;
                            }
                            Ok(Some(Owned::Ping(p))) => Ok(Some(Msg::Ping(p))),
                            Ok(Some(Owned::Close(c))) => Ok(Some(Msg::Close(c))),
                            Ok(None) => Ok(None),
                            Err(e) => Err(e),
                        }
                    } else {
                        reader.next_message()
                    };
                    match next {
                        Ok(Some(msg)) => {
                            n += 1;
                            match msg {
                                Msg::Text(t) => {
                                    assert!(std::str::from_utf8(t).is_ok(), "a text message that is not UTF-8");
                                    assert!(t.len() <= max_message, "a message over the limit");
                                }
                                Msg::Binary(b) => assert!(b.len() <= max_message, "a message over the limit"),
                                Msg::Ping(p) => assert!(p.len() <= 125, "a ping over 125 bytes"),
                                Msg::Close(code) => {
                                    assert!(code.is_none_or(close_code_is_valid), "a close code a peer may not send");
                                    return n;
                                }
                            }
                        }
                        Ok(None) => break,
                        Err(_) => return n,
                    }
                }
            }
        }
        n
    }

    /// Feeds `bytes` to a ZeroMQ connection as our socket type `socket` selects (ROUTER, DEALER,
    /// PUB or SUB, modulo 4), `chunk` bytes per read: the ZMTP handshake, then messages and
    /// commands until the end or the first error, with a message limit of `max_message` bytes and
    /// `max_frames` frames kept. Panics if the reader breaks one of its promises (a peer type
    /// accepted that may not be, a message kept over a limit). Returns how many messages and
    /// commands it read.
    pub fn zmtp(socket: u8, max_message: usize, max_frames: usize, bytes: &[u8], chunk: usize) -> usize {
        super::zmq::zmtp::fuzz_stream(socket, max_message, max_frames, bytes, chunk)
    }

    /// Feeds `bytes` to the uTP transport's stream reader (`chunk` bytes per read, messages of
    /// at most `max_message` bytes), as a server or client connection does: every whole message
    /// is decoded as a request and as a reply. Panics if the reader breaks one of its promises
    /// (a message over the limit, or one that is not a whole JSON array or object). Returns how
    /// many messages it read before the end or the first error.
    pub fn utp_stream(bytes: &[u8], chunk: usize, max_message: usize) -> usize {
        let mut split = super::utp::JsonSplitter::new(max_message);
        let mut n = 0;
        for part in bytes.chunks(chunk.max(1)) {
            split.push(part);
            loop {
                match split.next_message() {
                    Ok(Some(m)) => {
                        n += 1;
                        assert!(m.len() <= max_message, "a message over the limit");
                        assert!(
                            matches!(m.first(), Some(b'[' | b'{')) && matches!(m.last(), Some(b']' | b'}')),
                            "not a whole array or object"
                        );
                        let _ = crate::rpc::envelope::decode_request(m);
                        let _ = crate::rpc::ResultSender::deliver(m, |_| None);
                    }
                    Ok(None) => break,
                    Err(_) => return n,
                }
            }
        }
        n
    }

    /// Reads `bytes` as a datagram reaching a uTP node: a broker's punch-request body, and a uTP
    /// header (true when the engine would take it).
    pub fn utp_datagram(bytes: &[u8]) -> bool {
        let _ = super::utp::node::parse_endpoint(bytes);
        librqbit_utp::raw::UtpHeader::deserialize(bytes).is_some()
    }
}

/// A client transport of `kind` with default settings: HTTP(S) (grenache-nodejs-http), WS(S)
/// (grenache-nodejs-ws), over TLS when `tls` is given, uTP (grenache-nodejs-utp; no TLS, a node
/// of its own bound on the first request) or ZeroMQ (DEALER; no TLS: `tls` is ignored). Needs a
/// tokio runtime context.
pub fn client(kind: TransportKind, tls: Option<ClientTls>) -> Arc<dyn ClientTransport> {
    match kind {
        TransportKind::Zmq => Arc::new(zmq::ZmqClient::default()),
        TransportKind::Ws => {
            let mut config = ws::WsClientConfig::default();
            if let Some(t) = tls {
                config = config.tls(t);
            }
            Arc::new(ws::WsClient::new(config))
        }
        TransportKind::Utp => {
            if tls.is_some() {
                tracing::warn!("the uTP transport has no TLS; the TLS settings are ignored");
            }
            Arc::new(utp::UtpClient::new(utp::UtpClientConfig::default()))
        }
        _ => Arc::new(http::HttpClient::new(http::HttpClientConfig { tls: tls.map(|t| t.config()), ..Default::default() })),
    }
}

/// Binds a server transport of `kind` on `addr` (port 0: any free port) serving `handler`, over
/// TLS when `tls` is given; a handler that has not answered within `reply_timeout` gets
/// `ERR_TIMEOUT` sent for it. Errors: `Io` when the address cannot be bound.
pub async fn bind_server(
    kind: TransportKind,
    addr: SocketAddr,
    handler: Arc<dyn Handler>,
    tls: Option<ServerTls>,
    reply_timeout: Option<Duration>,
) -> Result<Arc<dyn ServerTransport>> {
    bind_server_with(kind, addr, handler, ServerSettings { tls, reply_timeout, ..Default::default() }).await
}

/// The settings of a server transport that [`bind_server_with`] applies to either kind.
#[derive(Clone, Default)]
pub struct ServerSettings {
    /// TLS: `Some` makes the server HTTPS or WSS.
    pub tls: Option<ServerTls>,
    /// A handler that has not answered within this time gets `ERR_TIMEOUT` sent for it.
    pub reply_timeout: Option<Duration>,
    /// WS only: a hook that accepts or refuses each client before its upgrade (see
    /// [`ws::WsServerConfig::verify_client`]). The HTTP transport has none and refuses it.
    pub verify_client: Option<VerifyClient>,
    /// Limits against hostile load: connections per source, read deadlines and the body budget
    /// (HTTP), liveness (WS).
    pub limits: ServerLimits,
    /// WS without TLS only: each socket, once upgraded, goes to this hook instead of being served
    /// (see [`ws::handoff`]); ignored by the other transports and by a WSS server.
    pub hand_off: Option<ws::handoff::HandOff>,
}

/// The limits of a server transport against hostile load, for either kind
/// ([`ServerSettings::limits`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ServerLimits {
    /// Connections in all and per source address.
    pub connections: ConnLimits,
    /// HTTP: deadlines on each request's head and body, and on idle keep-alive connections.
    pub deadlines: ReadDeadlines,
    /// HTTP: request-body bytes the whole server buffers at once.
    pub max_body_in_flight: usize,
    /// WS: pings to silent sockets, and the idle time of sockets that send no request.
    pub ws: limits::WsLiveness,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            connections: ConnLimits::default(),
            deadlines: ReadDeadlines::default(),
            max_body_in_flight: http::DEFAULT_MAX_BODY_IN_FLIGHT,
            ws: limits::WsLiveness::default(),
        }
    }
}

/// The settings of [`ServerLimits`] by name, in the order the C ABI numbers them
/// (`grenache_server_limit`). Every face sets server limits through [`ServerLimits::set`], so the
/// names, units and checks are the same everywhere (and the CLI's `--NAME` options, with
/// dashes). Durations are in milliseconds, sizes in bytes, rates in bytes per second.
pub const SERVER_LIMIT_NAMES: [&str; 10] = [
    "max_connections",
    "max_connections_per_ip",
    "header_timeout_ms",
    "body_timeout_ms",
    "body_min_rate",
    "idle_timeout_ms",
    "max_body_in_flight",
    "ws_ping_interval_ms",
    "ws_pong_timeout_ms",
    "ws_idle_timeout_ms",
];

impl ServerLimits {
    /// Sets the limit `name` (one of [`SERVER_LIMIT_NAMES`], matched ignoring case and
    /// underscores, so `maxConnectionsPerIp` works too) to `value`. Errors: `InvalidArgument` for
    /// an unknown name, or 0 where 0 would refuse everything (connection caps, timeouts, the body
    /// budget); `body_min_rate` 0 means no minimum rate.
    pub fn set(&mut self, name: &str, value: u64) -> Result<()> {
        let index = server_limit_index(name)
            .ok_or_else(|| Error::invalid(format!("unknown server limit {name:?} (one of {})", SERVER_LIMIT_NAMES.join(", "))))?;
        if value == 0 && index != 4 {
            return Err(Error::invalid(format!("server limit {} must be above 0", SERVER_LIMIT_NAMES[index])));
        }
        let n = usize::try_from(value).unwrap_or(usize::MAX);
        let ms = Duration::from_millis(value);
        match index {
            0 => self.connections.max_connections = n,
            1 => self.connections.max_per_ip = n,
            2 => self.deadlines.header = ms,
            3 => self.deadlines.body = ms,
            4 => self.deadlines.body_min_rate = value,
            5 => self.deadlines.idle = ms,
            6 => self.max_body_in_flight = n,
            7 => self.ws.ping_interval = ms,
            8 => self.ws.pong_timeout = ms,
            _ => self.ws.idle = ms,
        }
        Ok(())
    }

    /// The value of the limit `name` in the units [`ServerLimits::set`] takes; `None` for an
    /// unknown name.
    pub fn get(&self, name: &str) -> Option<u64> {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Some(match server_limit_index(name)? {
            0 => self.connections.max_connections as u64,
            1 => self.connections.max_per_ip as u64,
            2 => ms(self.deadlines.header),
            3 => ms(self.deadlines.body),
            4 => self.deadlines.body_min_rate,
            5 => ms(self.deadlines.idle),
            6 => self.max_body_in_flight as u64,
            7 => ms(self.ws.ping_interval),
            8 => ms(self.ws.pong_timeout),
            _ => ms(self.ws.idle),
        })
    }
}

/// The index in [`SERVER_LIMIT_NAMES`] of `name`, ignoring case and underscores.
fn server_limit_index(name: &str) -> Option<usize> {
    option_index(&SERVER_LIMIT_NAMES, name)
}

/// The index in `names` (snake_case) of `name` in any spelling the faces use: case, underscores
/// and dashes do not count (`max_key_len`, `maxKeyLen`, `max-key-len`).
pub(crate) fn option_index(names: &[&str], name: &str) -> Option<usize> {
    let norm = |s: &str| s.chars().filter(|c| *c != '_' && *c != '-').map(|c| c.to_ascii_lowercase()).collect::<String>();
    let want = norm(name);
    names.iter().position(|n| norm(n) == want)
}

impl std::fmt::Debug for ServerSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerSettings")
            .field("tls", &self.tls)
            .field("reply_timeout", &self.reply_timeout)
            .field("verify_client", &self.verify_client.is_some())
            .field("limits", &self.limits)
            .field("hand_off", &self.hand_off.is_some())
            .finish()
    }
}

/// Like [`bind_server`], with every setting. Errors: `InvalidArgument` for a `verify_client`
/// hook on the HTTP transport, or TLS or a hook on the ZeroMQ transport; `Io` when the address
/// cannot be bound.
pub async fn bind_server_with(
    kind: TransportKind,
    addr: SocketAddr,
    handler: Arc<dyn Handler>,
    settings: ServerSettings,
) -> Result<Arc<dyn ServerTransport>> {
    let ServerSettings { tls, reply_timeout, verify_client, limits, hand_off } = settings;
    Ok(match kind {
        TransportKind::Zmq => {
            if tls.is_some() || verify_client.is_some() {
                return Err(crate::Error::invalid("the ZeroMQ transport has no TLS (and no CURVE): use WS or HTTP for TLS"));
            }
            let config = zmq::ZmqServerConfig::default().reply_timeout(reply_timeout);
            Arc::new(zmq::ZmqServer::bind_arc(addr, handler, config).await?)
        }
        TransportKind::Ws => {
            let mut config = ws::WsServerConfig::default()
                .reply_timeout(reply_timeout)
                .max_connections(limits.connections.max_connections)
                .max_connections_per_ip(limits.connections.max_per_ip)
                .liveness(limits.ws);
            if let Some(t) = tls {
                config = config.tls(t);
            }
            if let Some(hook) = verify_client {
                config = config.verify_client(hook);
            }
            if let Some(hook) = hand_off {
                config = config.hand_off(hook);
            }
            Arc::new(ws::WsServer::bind_arc(addr, handler, config).await?)
        }
        TransportKind::Utp => {
            if verify_client.is_some() || tls.is_some() {
                return Err(crate::Error::invalid("the uTP transport has no TLS and no verify_client"));
            }
            let config = utp::UtpServerConfig { reply_timeout, ..Default::default() };
            Arc::new(utp::UtpServer::bind(addr, handler, config).await?)
        }
        _ => {
            if verify_client.is_some() {
                return Err(crate::Error::invalid("verify_client is supported by the WS transport only"));
            }
            let config = http::HttpServerConfig {
                reply_timeout,
                tls: tls.map(|t| t.config()),
                max_connections: limits.connections.max_connections,
                max_connections_per_ip: limits.connections.max_per_ip,
                deadlines: limits.deadlines,
                max_body_in_flight: limits.max_body_in_flight,
                ..Default::default()
            };
            Arc::new(http::HttpServer::bind(addr, handler, config).await?)
        }
    })
}

/// Binds a listening TCP socket with a backlog of 4096 (the kernel caps it at
/// `net.core.somaxconn`) instead of tokio's 1024, so that a burst of connections, or a flood from
/// one source that the accept loop is closing, does not overflow the queue and drop the connects
/// of well-behaved clients.
pub fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let s = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    s.set_reuseaddr(true)?;
    s.bind(addr)?;
    s.listen(4096)
}

/// The accept loop every server here shares (Grape API, HTTP, WS, PUB/SUB).
///
/// Accepts connections until `stop` is cancelled. Each one is admitted by `sources` (connections
/// in all and per source IP, see [`ConnLimits`]) or closed at once; an admitted socket (with
/// `TCP_NODELAY`) goes to `serve` in a task of its own, which holds its slot until it ends. Accept
/// errors (EMFILE and friends) back off 50 ms instead of spinning.
pub(crate) async fn accept_loop<F, Fut>(listener: TcpListener, sources: Arc<limits::Sources>, stop: CancellationToken, serve: F)
where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        let (tcp, remote) = tokio::select! {
            // A stopped server's listener may also be shut down: its accept fails, not retried.
            biased;
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, addr = ?listener.local_addr().ok(), "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(slot) = sources.admit(remote.ip()) else {
            // Closed at once: the client learns now instead of waiting in the backlog.
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let conn = serve(tcp, remote);
        tokio::spawn(async move {
            let _slot = slot;
            conn.await;
        });
    }
}

/// The connections a server is serving, and a wake-up for when the last one ends (what a
/// graceful shutdown waits for).
#[derive(Debug, Default)]
pub(crate) struct Connections {
    n: std::sync::atomic::AtomicUsize,
    none_left: tokio::sync::Notify,
}

impl Connections {
    /// How many are open now.
    pub(crate) fn count(&self) -> usize {
        self.n.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Counts a connection until the returned guard is dropped.
    pub(crate) fn enter(self: &Arc<Self>) -> LiveConnection {
        self.n.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        LiveConnection(self.clone())
    }

    /// Resolves once no connection is open.
    pub(crate) async fn all_closed(&self) {
        loop {
            let notified = self.none_left.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.count() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// One connection being served (see [`Connections::enter`]).
pub(crate) struct LiveConnection(Arc<Connections>);

impl Drop for LiveConnection {
    fn drop(&mut self) {
        if self.0.n.fetch_sub(1, std::sync::atomic::Ordering::AcqRel) == 1 {
            self.0.none_left.notify_waiters();
        }
    }
}

/// How a server stops, shared by its accept loop, its connections and its handle: `closing` closes
/// every connection now; `draining` (cancelled with `closing` too) stops accepting and tells each
/// connection to finish what it has read and close.
#[derive(Debug, Clone)]
pub(crate) struct Lifecycle {
    pub(crate) closing: CancellationToken,
    pub(crate) draining: CancellationToken,
    pub(crate) connections: Arc<Connections>,
    /// Shut down when the server stops accepting.
    listener: ListenerStop,
}

/// A second descriptor of a listening socket, to stop it from any thread at once: once
/// [`ListenerStop::stop`] returns the kernel refuses connects, before the accept loop's task
/// has even run (that task holds the listener and drops it when it next runs).
#[derive(Debug, Clone, Default)]
pub(crate) struct ListenerStop(Arc<std::sync::Mutex<Option<socket2::Socket>>>);

impl ListenerStop {
    pub(crate) fn new(listener: &TcpListener) -> std::io::Result<ListenerStop> {
        Ok(ListenerStop(Arc::new(std::sync::Mutex::new(Some(socket2::SockRef::from(listener).try_clone()?)))))
    }

    /// Shuts the listening socket down: Linux refuses the connects of a listening socket shut
    /// down for reading, and resets those waiting in its backlog, not accepted yet. Call it after
    /// the accept loop was told to stop, so that the loop ends instead of retrying the failed
    /// accept.
    pub(crate) fn stop(&self) {
        let socket = self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(s) = socket {
            let _ = s.shutdown(std::net::Shutdown::Read);
        }
    }
}

impl Lifecycle {
    /// The lifecycle of a server with no listening socket of its own (uTP).
    pub(crate) fn new() -> Lifecycle {
        let closing = CancellationToken::new();
        Lifecycle { draining: closing.child_token(), closing, connections: Arc::default(), listener: ListenerStop::default() }
    }

    /// The lifecycle of a server accepting on `listener`.
    pub(crate) fn listening(listener: &TcpListener) -> std::io::Result<Lifecycle> {
        Ok(Lifecycle { listener: ListenerStop::new(listener)?, ..Lifecycle::new() })
    }

    /// Stops accepting and closes every connection now. Once this returns, connects to the
    /// server's port are refused (the accept loop and the connections end in the background).
    pub(crate) fn close(&self) {
        self.closing.cancel();
        self.listener.stop();
    }

    /// The graceful shutdown: stop accepting, let the connections finish and close; once none is
    /// left, or after `grace`, close what remains. True when every connection finished in time.
    pub(crate) fn drain(&self, grace: Duration) -> impl Future<Output = bool> + Send + 'static {
        let this = self.clone();
        async move {
            this.draining.cancel();
            this.listener.stop();
            // A grace too long to add to the clock never ends.
            let finished = match tokio::time::Instant::now().checked_add(grace) {
                Some(deadline) => tokio::time::timeout_at(deadline, this.connections.all_closed()).await.is_ok(),
                None => {
                    this.connections.all_closed().await;
                    true
                }
            };
            this.close();
            finished
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Once `close` returns, or once a drain has started, connects are refused by the kernel: a
    /// client never reaches a server that is going away (it would be served by no handler).
    #[tokio::test]
    async fn stopped_servers_refuse_connects_at_once() {
        let handler: Arc<dyn Handler> = Arc::new(|_: crate::rpc::Request, reply: crate::rpc::Reply| drop(reply));
        let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let refused = |r: std::io::Result<TcpStream>| matches!(r, Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused);
        let servers: Vec<Box<dyn ServerTransport>> = vec![
            Box::new(ws::WsServer::bind_arc(any, handler.clone(), ws::WsServerConfig::default()).await.expect("ws")),
            Box::new(http::HttpServer::bind(any, handler.clone(), http::HttpServerConfig::default()).await.expect("http")),
            Box::new(zmq::ZmqServer::bind_arc(any, handler.clone(), zmq::ZmqServerConfig::default()).await.expect("zmq")),
        ];
        for s in &servers {
            let addr = s.local_addr();
            let _open = TcpStream::connect(addr).await.expect("listening");
            s.close();
            assert!(refused(TcpStream::connect(addr).await), "{addr} after close");
        }
        for kind in [TransportKind::Ws, TransportKind::Zmq] {
            let publisher =
                crate::pubsub::PeerPub::bind(any, crate::pubsub::PubConfig::default().transport(kind)).await.expect("publisher");
            let addr = publisher.local_addr();
            let _open = TcpStream::connect(addr).await.expect("listening");
            publisher.close();
            assert!(refused(TcpStream::connect(addr).await), "{kind:?} publisher after close");
        }
        // A drain refuses new connects from its first step on, while it waits for the open ones.
        for s in [
            Box::new(ws::WsServer::bind_arc(any, handler.clone(), ws::WsServerConfig::default()).await.expect("ws"))
                as Box<dyn ServerTransport>,
            Box::new(http::HttpServer::bind(any, handler.clone(), http::HttpServerConfig::default()).await.expect("http")),
        ] {
            let addr = s.local_addr();
            let open = TcpStream::connect(addr).await.expect("listening");
            let mut drain = std::pin::pin!(s.drain(Duration::from_secs(5)));
            let pending = std::future::poll_fn(|cx| std::task::Poll::Ready(drain.as_mut().poll(cx).is_pending())).await;
            assert!(refused(TcpStream::connect(addr).await), "{addr} while draining (pending: {pending})");
            drop(open);
            if pending {
                assert!(tokio::time::timeout(Duration::from_secs(10), drain).await.is_ok(), "the drain ends");
            }
        }
    }

    #[test]
    fn server_limits_set_by_name_in_any_spelling() {
        let mut l = ServerLimits::default();
        for name in SERVER_LIMIT_NAMES {
            assert!(l.get(name).is_some(), "{name}");
        }
        l.set("max_connections_per_ip", 5).expect("snake case");
        l.set("wsIdleTimeoutMs", 1500).expect("camel case");
        l.set("header-timeout-ms", 250).expect("dashes");
        assert_eq!(l.connections.max_per_ip, 5);
        assert_eq!(l.ws.idle, Duration::from_millis(1500));
        assert_eq!(l.get("header_timeout_ms"), Some(250));
        assert_eq!(l.set("max_connections", 0).map_err(|e| e.kind()), Err(crate::ErrorKind::InvalidArgument));
        assert_eq!(l.set("nope", 1).map_err(|e| e.kind()), Err(crate::ErrorKind::InvalidArgument));
        l.set("body_min_rate", 0).expect("no minimum rate");
    }

    #[test]
    fn the_utp_fuzz_entries_read_their_seeds() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/utp");
        let read = |name: &str| {
            let data = std::fs::read(dir.join(name)).expect("a committed seed");
            let (sel, bytes) = data.split_first().expect("a selector byte");
            (fuzzing::utp_datagram(bytes), fuzzing::utp_stream(bytes, 1 + usize::from(*sel) * 4, 2048))
        };
        assert_eq!(read("request"), (false, 1));
        // Three messages coalesced, one with brackets and escaped quotes inside a string.
        assert_eq!(read("coalesced"), (false, 3));
        assert_eq!(read("reply"), (false, 2));
        assert_eq!(read("punch_request"), (false, 1));
        // A top-level scalar breaks the stream before anything is read.
        assert_eq!(read("scalar"), (false, 0));
        // A uTP SYN goes to the engine; as a stream it is garbage.
        assert_eq!(read("utp_syn"), (true, 0));
    }
}
