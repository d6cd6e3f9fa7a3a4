//! The uTP RPC client: one uTP stream per destination, requests multiplexed over it by rid.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use serde_json::value::RawValue;
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

use super::node::UtpNode;
use super::split::JsonSplitter;
use super::{DEFAULT_MAX_MESSAGE_SIZE, write_message};
use crate::error::{Error, ErrorKind, Result};
use crate::rpc::envelope::ResultForm;
use crate::rpc::{BoxFuture, ClientTransport, OutgoingRequest, ReplyResult, ResultSender};

/// The settings of a [`UtpClient`].
#[derive(Debug, Clone)]
pub struct UtpClientConfig {
    /// How long opening a uTP stream may take before the request fails with
    /// [`ErrorKind::Connect`] (so the client tries another worker). Default 5 s. The SYN is sent
    /// again after 1 s and then every 2 s within it.
    pub connect_timeout: Duration,
    /// The timeout of a request that has none. Default 60 s (the reference's transport default).
    pub default_request_timeout: Duration,
    /// The largest reply accepted, in bytes; a larger one closes the stream (its requests fail
    /// with [`ErrorKind::PayloadTooLarge`]). Default 16 MiB.
    pub max_message_size: usize,
    /// Requests waiting for their reply per stream; past this a request fails with
    /// [`ErrorKind::InvalidState`]. Default 4096.
    pub max_pending_per_stream: usize,
    /// Write each request on its own and wait until it left before the next one (default true):
    /// a legacy server parses every chunk it receives as one message. See
    /// [`super::UtpServerConfig::one_message_per_write`].
    pub one_message_per_write: bool,
}

impl Default for UtpClientConfig {
    fn default() -> Self {
        UtpClientConfig {
            connect_timeout: Duration::from_secs(5),
            default_request_timeout: Duration::from_secs(60),
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            max_pending_per_stream: 4096,
            one_message_per_write: true,
        }
    }
}

/// A stream idle for the node's inactivity timeout less this (or less half of it, when that is
/// shorter) is replaced by a new one before it carries a request.
const RETIRE_MARGIN: Duration = Duration::from_secs(10);

/// A stream to one destination.
struct Conn {
    writer: tokio::sync::Mutex<librqbit_utp::UtpStreamWriteHalf>,
    pending: Mutex<HashMap<String, ResultSender>>,
    dead: AtomicBool,
    stop: CancellationToken,
    /// Why the stream ended, once its reader saw it end; `ended` is cancelled then.
    why: Mutex<Option<String>>,
    ended: CancellationToken,
    /// When data last arrived (or the stream opened).
    heard: Mutex<tokio::time::Instant>,
}

impl Conn {
    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<String, ResultSender>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Why the stream ended: what its reader saw, waiting a moment for it (a write can see the
    /// stream die before the reader is told why).
    async fn why(&self) -> String {
        let _ = tokio::time::timeout(Duration::from_millis(200), self.ended.cancelled()).await;
        self.why.lock().unwrap_or_else(|e| e.into_inner()).clone().unwrap_or_else(|| "the uTP stream died".to_string())
    }

    /// True when nothing uses the stream and it has heard nothing for `quiet`. The engine ends a
    /// stream `inactivity_timeout` after data arrived unless its own data was acknowledged since,
    /// so a request written just before that deadline would die with the stream (perhaps after
    /// the server got it); such a stream is retired before it is given a request.
    fn idle_for(self: &Arc<Self>, quiet: Duration) -> bool {
        // The slot and the reader hold the other two references.
        Arc::strong_count(self) <= 2 && self.pending().is_empty() && self.heard.lock().unwrap_or_else(|e| e.into_inner()).elapsed() >= quiet
    }

    /// Fails every request waiting on this stream.
    fn fail_all(&self, kind: ErrorKind, why: &str) {
        self.dead.store(true, Ordering::Release);
        for (_, w) in self.pending().drain() {
            let _ = w.send(Err(Error::new(kind, why.to_string())));
        }
    }
}

/// The stream slot of one destination: connecting holds its lock, so requests issued together
/// share one connect.
type Slot = Arc<tokio::sync::Mutex<Option<Arc<Conn>>>>;

struct Inner {
    node: tokio::sync::OnceCell<Arc<UtpNode>>,
    config: UtpClientConfig,
    slots: Mutex<HashMap<String, Slot>>,
    /// Cancelled (and replaced) by `close`.
    stop: Mutex<CancellationToken>,
}

impl Inner {
    fn stop_token(&self) -> CancellationToken {
        self.stop.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The client side of the uTP transport ([`ClientTransport`]): one stream per destination,
/// opened on the first request, shared by every request to it (matched by rid, in any order).
///
/// Built on a [`UtpNode`] (share the node of a [`super::UtpServer`] so that punches, broker
/// traffic, requests and the service use one port), or on a node of its own bound to any port
/// on the first request.
#[derive(Clone)]
pub struct UtpClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for UtpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UtpClient").field("node", &self.inner.node.get()).finish_non_exhaustive()
    }
}

impl UtpClient {
    /// A client on `node`.
    pub fn with_node(node: Arc<UtpNode>, config: UtpClientConfig) -> UtpClient {
        UtpClient::make(tokio::sync::OnceCell::new_with(Some(node)), config)
    }

    /// A client that binds a node of its own (`0.0.0.0:0`) on its first request.
    pub fn new(config: UtpClientConfig) -> UtpClient {
        UtpClient::make(tokio::sync::OnceCell::new(), config)
    }

    fn make(node: tokio::sync::OnceCell<Arc<UtpNode>>, config: UtpClientConfig) -> UtpClient {
        UtpClient { inner: Arc::new(Inner { node, config, slots: Mutex::new(HashMap::new()), stop: Mutex::new(CancellationToken::new()) }) }
    }

    /// The node, binding it first if this client binds its own.
    pub async fn node(&self) -> Result<Arc<UtpNode>> {
        self.inner.node.get_or_try_init(|| UtpNode::bind(SocketAddr::from(([0, 0, 0, 0], 0)))).await.cloned()
    }

    fn send(&self, dest: &str, request: OutgoingRequest, form: ResultForm) -> BoxFuture<'static, Result<ReplyResult>> {
        let this = self.clone();
        let dest = dest.to_string();
        Box::pin(async move {
            let timeout = request.timeout.unwrap_or(this.inner.config.default_request_timeout);
            let deadline = tokio::time::Instant::now() + timeout;
            let stop = this.inner.stop_token();
            let fut = this.send_inner(dest, request, form, deadline);
            tokio::select! {
                r = fut => r,
                _ = stop.cancelled() => Err(Error::new(ErrorKind::Closed, "the uTP client was closed")),
            }
        })
    }

    async fn send_inner(
        &self,
        dest: String,
        request: OutgoingRequest,
        form: ResultForm,
        deadline: tokio::time::Instant,
    ) -> Result<ReplyResult> {
        let conn = match tokio::time::timeout_at(deadline, self.conn(&dest)).await {
            Ok(c) => c?,
            Err(_) => return Err(Error::new(ErrorKind::Timeout, format!("uTP connect to {dest}: ERR_TIMEOUT"))),
        };
        let (tx, rx) = ResultSender::channel(form);
        {
            let mut p = conn.pending();
            if p.len() >= self.inner.config.max_pending_per_stream {
                return Err(Error::new(ErrorKind::InvalidState, format!("too many requests waiting on the stream to {dest}")));
            }
            p.insert(request.rid.clone(), tx);
        }
        // Forget the waiter however this ends (a reply, a timeout, the caller dropping us).
        struct Forget<'a>(&'a Conn, &'a str);
        impl Drop for Forget<'_> {
            fn drop(&mut self) {
                self.0.pending().remove(self.1);
            }
        }
        let _forget = Forget(&conn, &request.rid);
        let msg = request.envelope();
        let written = {
            let mut w = conn.writer.lock().await;
            tokio::time::timeout_at(deadline, write_message(&mut w, &msg, self.inner.config.one_message_per_write)).await
        };
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                // The engine says only "socket died"; the reader is told why.
                let why = conn.why().await;
                conn.fail_all(ErrorKind::Closed, &why);
                return Err(Error::new(ErrorKind::Closed, format!("uTP write to {dest} failed ({e}): {why}")));
            }
            Err(_) => return Err(Error::new(ErrorKind::Timeout, format!("uTP request to {dest}: ERR_TIMEOUT"))),
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(Error::new(ErrorKind::Closed, format!("the uTP stream to {dest} closed"))),
            Err(_) => Err(Error::new(ErrorKind::Timeout, format!("uTP request to {dest}: ERR_TIMEOUT"))),
        }
    }

    /// The live stream to `dest`, opened if there is none.
    async fn conn(&self, dest: &str) -> Result<Arc<Conn>> {
        let slot = {
            let mut s = self.inner.slots.lock().unwrap_or_else(|e| e.into_inner());
            if s.len() >= 65536 {
                s.retain(|_, v| {
                    Arc::strong_count(v) > 1 || v.try_lock().is_ok_and(|c| c.as_ref().is_some_and(|c| !c.dead.load(Ordering::Acquire)))
                });
            }
            s.entry(dest.to_string()).or_default().clone()
        };
        let mut slot = slot.lock().await;
        let node = self.node().await?;
        if let Some(c) = slot.as_ref()
            && !c.dead.load(Ordering::Acquire)
        {
            let timeout = node.inactivity_timeout();
            if !c.idle_for(timeout - (timeout / 2).min(RETIRE_MARGIN)) {
                return Ok(c.clone());
            }
            // Closed (both halves dropped once its reader stops): the peer sees it end.
            c.dead.store(true, Ordering::Release);
            c.stop.cancel();
        }
        let addr = resolve(dest).await?;
        let stream = match tokio::time::timeout(self.inner.config.connect_timeout, node.connect(addr)).await {
            Ok(s) => s?,
            Err(_) => return Err(Error::new(ErrorKind::Connect, format!("uTP connect to {dest}: no answer"))),
        };
        let (mut rd, wr) = stream.split();
        let conn = Arc::new(Conn {
            writer: tokio::sync::Mutex::new(wr),
            pending: Mutex::new(HashMap::new()),
            dead: AtomicBool::new(false),
            stop: self.inner.stop_token().child_token(),
            why: Mutex::new(None),
            ended: CancellationToken::new(),
            heard: Mutex::new(tokio::time::Instant::now()),
        });
        let (c, max) = (conn.clone(), self.inner.config.max_message_size);
        tokio::spawn(async move {
            let mut split = JsonSplitter::new(max);
            let mut buf = vec![0u8; 64 * 1024];
            let why = loop {
                let n = tokio::select! {
                    r = rd.read(&mut buf) => match r {
                        Ok(0) => break (ErrorKind::Closed, "the uTP stream closed".to_string()),
                        Ok(n) => {
                            *c.heard.lock().unwrap_or_else(|e| e.into_inner()) = tokio::time::Instant::now();
                            n
                        }
                        // The engine gave the stream up: "remote was inactive for too long"
                        // (`UtpNodeConfig::inactivity_timeout` without an answer), "max number of
                        // retransmissions reached" (a packet sent 31 times: the node's
                        // `ENGINE_MAX_RETRANSMISSIONS`), or a reset.
                        Err(e) => break (ErrorKind::Closed, format!("the uTP stream failed: {e}")),
                    },
                    _ = c.stop.cancelled() => break (ErrorKind::Closed, "the uTP client was closed".to_string()),
                };
                split.push(&buf[..n]);
                let broken = loop {
                    match split.next_message() {
                        Ok(Some(msg)) => {
                            if let Err(e) = ResultSender::deliver(msg, |rid| c.pending().remove(rid)) {
                                tracing::debug!("uTP: dropped a malformed reply: {e}");
                            }
                        }
                        Ok(None) => break None,
                        Err(e) => break Some((e.kind(), e.message().to_string())),
                    }
                };
                if let Some(b) = broken {
                    break b;
                }
            };
            *c.why.lock().unwrap_or_else(|e| e.into_inner()) = Some(why.1.clone());
            c.ended.cancel();
            c.fail_all(why.0, &why.1);
        });
        *slot = Some(conn.clone());
        Ok(conn)
    }
}

/// `"host:port"` to an address (a name is resolved; IPv4 first).
async fn resolve(dest: &str) -> Result<SocketAddr> {
    if let Ok(a) = dest.parse::<SocketAddr>() {
        return Ok(a);
    }
    let addrs: Vec<SocketAddr> =
        tokio::net::lookup_host(dest).await.map_err(|e| Error::new(ErrorKind::Connect, format!("resolve {dest}: {e}")))?.collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| Error::new(ErrorKind::Connect, format!("resolve {dest}: no address")))
}

impl ClientTransport for UtpClient {
    fn request(&self, dest: &str, request: OutgoingRequest) -> BoxFuture<'static, Result<Value>> {
        let f = self.send(dest, request, ResultForm::Value);
        Box::pin(async move { f.await.map(ReplyResult::into_value) })
    }

    fn request_raw(&self, dest: &str, request: OutgoingRequest) -> BoxFuture<'static, Result<Box<RawValue>>> {
        let f = self.send(dest, request, ResultForm::Raw);
        Box::pin(async move { f.await.map(ReplyResult::into_raw) })
    }

    fn active_connections(&self, dest: &str) -> usize {
        let s = self.inner.slots.lock().unwrap_or_else(|e| e.into_inner());
        s.get(dest)
            .and_then(|slot| slot.try_lock().ok().map(|c| c.as_ref().is_some_and(|c| !c.dead.load(Ordering::Acquire))))
            .map_or(0, usize::from)
    }

    fn close(&self) {
        std::mem::take(&mut *self.inner.stop.lock().unwrap_or_else(|e| e.into_inner())).cancel();
        self.inner.slots.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}
