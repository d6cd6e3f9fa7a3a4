//! RPC clients for embedders.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::Result;
use crate::rpc::{PeerRpcClient, PeerRpcClientConfig, RequestOptions};
use crate::tls::ClientTls;
use crate::transport::utp::broker::{BrokerClient, BrokerClientConfig};
use crate::transport::utp::{UtpClient, UtpClientConfig, UtpNode};
use crate::transport::ws::direct::{DirectConn, DirectPool};

use super::{EmbedLink, Ops, Runtime};

/// Which transport a client speaks (HTTP, WS or uTP).
pub type ClientTransportKind = crate::transport::TransportKind;

/// Options of an [`EmbedClient`].
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// TLS: `Some` makes requests HTTPS/WSS, with a client certificate if it has one.
    pub tls: Option<ClientTls>,
    /// Timeout of a request when the call gives none. Default 30 s.
    pub default_timeout: Option<Duration>,
    /// uTP only: find workers through the broker of this name (their external endpoints
    /// behind NATs) and punch them before the requests; the Grapes' lookup when the broker knows
    /// none. Default none.
    pub broker: Option<String>,
    /// uTP with a broker: how long punching a worker may take. Default 5 s.
    pub punch_timeout: Option<Duration>,
    /// uTP only: send from this node (a socket shared with a server and punches, as the legacy
    /// transport's one socket per process) instead of a node of the client's own. Default none.
    pub utp_node: Option<Arc<UtpNode>>,
}

/// A [`PeerRpcClient`] driven by an embed [`Runtime`]: requests complete through closures that
/// fire exactly once; [`EmbedClient::close`] cancels what is in flight.
#[derive(Debug)]
pub struct EmbedClient {
    rt: Runtime,
    client: PeerRpcClient,
    ops: Ops,
    /// Plain WS only: sockets for requests sent on the caller's thread ([`EmbedClient::start_direct`]).
    direct: Option<Arc<DirectPool>>,
}

/// A request sent on the caller's thread by [`EmbedClient::start_direct`], waiting for its
/// reply. Dropped before its reply came (an interrupted wait), its socket is closed.
#[derive(Debug)]
pub struct DirectCall {
    conn: Option<DirectConn>,
    client: PeerRpcClient,
    deadline: Instant,
    timeout: Duration,
}

impl DirectCall {
    /// Waits for the reply on this thread, at most `slice` this time (`None`: the slice passed;
    /// wait again). The outcome is as [`EmbedClient::request`] gives it: the result as the
    /// worker sent it, or the same errors.
    pub fn wait(&mut self, slice: Duration) -> Option<Result<String>> {
        let conn = self.conn.as_mut()?;
        let outcome = conn.wait(self.deadline, self.timeout, slice)?;
        let conn = self.conn.take()?;
        // A result or a remote error is an answer: the worker lives and the socket is reused.
        // Any other end leaves the socket in doubt: it is closed.
        if outcome.as_ref().map_or_else(|e| e.is_remote(), |_| true) {
            self.client.mark_alive(conn.dest());
            conn.finish();
        }
        Some(outcome.map(|raw| String::from(Box::<str>::from(raw))))
    }
}

impl EmbedClient {
    /// A client that finds workers through `link`. With a broker (uTP), binds its node first
    /// (blocking, at most 10 s; refused on a runtime thread).
    pub fn new(link: &EmbedLink, kind: ClientTransportKind, options: ClientOptions) -> Result<EmbedClient> {
        let rt = link.runtime().clone();
        let _g = rt.handle().enter();
        let mut config = PeerRpcClientConfig::default();
        if let Some(t) = options.default_timeout {
            config.default_timeout = t;
        }
        if kind != ClientTransportKind::Utp && (options.broker.is_some() || options.utp_node.is_some()) {
            return Err(crate::Error::invalid("a broker or a uTP node needs the uTP transport"));
        }
        let plain_ws = kind == ClientTransportKind::Ws && options.tls.is_none();
        let client = match (options.broker, options.utp_node) {
            (None, Some(node)) => {
                PeerRpcClient::new(link.link().clone(), Arc::new(UtpClient::with_node(node, UtpClientConfig::default())), config)
            }
            (None, None) => PeerRpcClient::new(link.link().clone(), crate::transport::client(kind, options.tls), config),
            (Some(name), node) => {
                // One node carries the broker lookup, the punches and the requests.
                let addr = std::net::SocketAddr::from(([0, 0, 0, 0], 0));
                let node = match node {
                    Some(n) => n,
                    None => rt.block_on(Duration::from_secs(10), async move { UtpNode::bind(addr).await })?,
                };
                let transport = Arc::new(UtpClient::with_node(node.clone(), UtpClientConfig::default()));
                let bc = BrokerClientConfig {
                    name,
                    punch_timeout: options.punch_timeout.unwrap_or(Duration::from_secs(5)),
                    ..Default::default()
                };
                let resolver = Arc::new(BrokerClient::new(link.link().clone(), node, bc));
                PeerRpcClient::new(link.link().clone(), transport, config).with_resolver(resolver)
            }
        };
        let direct = plain_ws.then(|| DirectPool::new(rt.handle().clone(), crate::transport::ws::DEFAULT_MAX_MESSAGE_SIZE));
        Ok(EmbedClient { rt, client, ops: Ops::new(), direct })
    }

    /// Sends a request on the caller's thread, when it can go there: a plain WS client (no
    /// TLS), one attempt (`opts.retry` at most 1), the key's lookup cached (or `opts.dest`), and
    /// an idle socket to the chosen worker. The frame is written before this returns; wait for
    /// the reply with [`DirectCall::wait`] on the same thread. No runtime thread is involved, so
    /// a sequential caller pays no thread wake-up besides its own at the reply. `None`: send it
    /// with [`EmbedClient::request`] instead (a socket for the next calls is then dialled in the
    /// background). Blocks at most until the request's deadline (a large payload to a peer that
    /// reads slowly); never waits for a connect or a lookup.
    pub fn start_direct(&self, key: &str, payload_json: &str, opts: &RequestOptions) -> Option<Result<DirectCall>> {
        let pool = self.direct.as_ref()?;
        if opts.retry > 1 || pool.is_closed() {
            return None;
        }
        // Checked here as `request` checks it (a bad payload is an error of the runtime's path).
        serde_json::from_str::<serde::de::IgnoredAny>(payload_json).ok()?;
        let dest = self.client.pick_cached(key, opts, &|d| pool.open(d))?;
        let Some(mut conn) = pool.take(&dest) else {
            if !self.client.is_avoided(&dest) {
                pool.want(&dest);
            }
            return None;
        };
        let timeout = opts.timeout.unwrap_or(self.client.default_timeout());
        let deadline = Instant::now() + timeout;
        let rid = crate::rpc::new_rid();
        match conn.send(&rid, key, payload_json, deadline) {
            Ok(()) => Some(Ok(DirectCall { conn: Some(conn), client: self.client.clone(), deadline, timeout })),
            // Nothing whole reached the worker (the socket broke while idle): the runtime's path
            // sends it again.
            Err(e) if e.kind() == crate::ErrorKind::Closed => None,
            Err(e) => Some(Err(e)),
        }
    }

    /// The client under this facade (destination choice, settings), for a face that drives
    /// some sockets itself.
    pub fn peer(&self) -> &PeerRpcClient {
        &self.client
    }

    /// Records that `dest` answered a request sent on a face's own socket: it is no longer
    /// avoided as a dead worker, as after an answer on this client's own paths.
    pub fn answered(&self, dest: &str) {
        self.client.mark_alive(dest);
    }

    /// Sends the JSON text `payload_json` to one worker of `key`; completes with the result as
    /// JSON text, exactly as the worker sent it (whitespace and escapes included). A remote error
    /// is an [`ErrorKind::Remote`](crate::ErrorKind::Remote) error whose message is the remote
    /// text.
    pub fn request(
        &self,
        key: impl Into<Arc<str>>,
        payload_json: &str,
        opts: RequestOptions,
        done: impl FnOnce(Result<String>) + Send + 'static,
    ) {
        // Validate only: the text goes on the wire as it is (no parse + re-serialise).
        let payload = match serde_json::from_str::<serde::de::IgnoredAny>(payload_json) {
            Ok(_) => Arc::<str>::from(payload_json),
            Err(e) => {
                let e = crate::Error::new(crate::ErrorKind::InvalidArgument, format!("invalid JSON: {e}"));
                return self.ops.spawn(&self.rt, async move { Err(e) }, done);
            }
        };
        let c = self.client.clone();
        let key = key.into();
        // The result as the worker sent it: no parse into a Value and back.
        let fut = async move { Ok(String::from(Box::<str>::from(c.send::<Box<serde_json::value::RawValue>>(key, payload, &opts).await?))) };
        self.ops.spawn(&self.rt, fut, done);
    }

    /// Sends the payload to every worker of `key`; completes with their results as a JSON array
    /// text. The first error fails the call.
    pub fn map(&self, key: String, payload_json: &str, opts: RequestOptions, done: impl FnOnce(Result<String>) + Send + 'static) {
        let payload = match super::rpc::parse_json(payload_json) {
            Ok(v) => v,
            Err(e) => return self.ops.spawn(&self.rt, async move { Err(e) }, done),
        };
        let c = self.client.clone();
        self.ops.spawn(&self.rt, async move { Ok(serde_json::Value::Array(c.map(&key, &payload, &opts).await?).to_string()) }, done);
    }

    /// How many requests [`EmbedClient::start_direct`] sent on the caller's thread so far.
    pub fn direct_sent(&self) -> u64 {
        self.direct.as_ref().map_or(0, |p| p.sent())
    }

    /// Cancels requests in flight (their completions fire `Cancelled`) and closes connections.
    pub fn close(&self) {
        if let Some(p) = &self.direct {
            p.close();
        }
        self.ops.close(super::link::CLOSE_WAIT);
        self.client.stop();
    }
}

impl Drop for EmbedClient {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embed::{EmbedLink, RuntimeOptions};
    use crate::rpc::{Reply, Request};
    use crate::transport::TransportKind;
    use std::sync::mpsc;

    const TEXT: &str = "{ \"b\" : [1, \"\\u00e9\"], \"a\":null }";

    /// The completion gets the result's JSON text exactly as the server wrote it, on both
    /// transports; a remote error keeps its text.
    #[test]
    fn results_are_the_wire_text() {
        let rt = Runtime::new(RuntimeOptions { worker_threads: 2, ..Default::default() }).expect("rt");
        let link = EmbedLink::new(&rt, crate::link::LinkConfig::with_grape("http://127.0.0.1:1")).expect("link");
        let handler = Arc::new(|req: Request, reply: Reply| match req.payload.as_str() {
            Some("fail") => reply.err("ERR_BOOM"),
            _ => crate::embed::rpc::reply_json(reply, TEXT).expect("json"),
        });
        for kind in [TransportKind::Http, TransportKind::Ws] {
            let addr = "127.0.0.1:0".parse().expect("addr");
            let server =
                rt.block_on(Duration::from_secs(10), crate::transport::bind_server(kind, addr, handler.clone(), None, None)).expect("bind");
            let client = EmbedClient::new(&link, kind, ClientOptions::default()).expect("client");
            let opts = RequestOptions { dest: Some(server.local_addr().to_string()), ..Default::default() };
            let (tx, rx) = mpsc::channel();
            for payload in ["\"x\"", "\"fail\""] {
                let tx = tx.clone();
                client.request("k", payload, opts.clone(), move |r| {
                    tx.send(r.map_err(|e| (e.kind(), e.message().to_string()))).expect("send")
                });
                let got = rx.recv_timeout(Duration::from_secs(10)).expect("completed");
                if payload == "\"x\"" {
                    assert_eq!(got, Ok(TEXT.to_string()), "{kind:?}");
                } else {
                    assert_eq!(got, Err((crate::ErrorKind::Remote, "ERR_BOOM".to_string())), "{kind:?}");
                }
            }
            client.close();
            server.close();
        }
        rt.shutdown();
    }
    /// A plain WS client sends on the caller's thread once a socket is there: the first call
    /// takes the runtime's path (and has a socket dialled), later ones go direct and give the
    /// wire text, remote errors and timeouts as the runtime's path does; a timed-out call's
    /// socket is not reused; a closed client cancels a waiting call. Not for HTTP or retries.
    #[test]
    fn direct_calls_on_the_callers_thread() {
        let rt = Runtime::new(RuntimeOptions { worker_threads: 2, ..Default::default() }).expect("rt");
        let link = EmbedLink::new(&rt, crate::link::LinkConfig::with_grape("http://127.0.0.1:1")).expect("link");
        let handler = Arc::new(|req: Request, reply: Reply| match req.payload.as_str() {
            Some("fail") => reply.err("ERR_BOOM"),
            Some("slow") => {
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(400)).await;
                    reply.ok(serde_json::json!("late"));
                });
            }
            _ => crate::embed::rpc::reply_json(reply, TEXT).expect("json"),
        });
        let addr = "127.0.0.1:0".parse().expect("addr");
        let server = rt
            .block_on(Duration::from_secs(10), crate::transport::bind_server(TransportKind::Ws, addr, handler, None, None))
            .expect("bind");
        let opts = RequestOptions { dest: Some(server.local_addr().to_string()), ..Default::default() };
        let wait = |call: &mut DirectCall| loop {
            if let Some(r) = call.wait(Duration::from_millis(50)) {
                return r.map_err(|e| (e.kind(), e.message().to_string()));
            }
        };
        let http = EmbedClient::new(&link, TransportKind::Http, ClientOptions::default()).expect("client");
        assert!(http.start_direct("k", "\"x\"", &opts).is_none(), "HTTP takes the runtime's path");
        let client = EmbedClient::new(&link, TransportKind::Ws, ClientOptions::default()).expect("client");
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut call = loop {
            if let Some(c) = client.start_direct("k", "\"x\"", &opts) {
                break c.expect("sent");
            }
            assert!(Instant::now() < deadline, "no socket was dialled");
            std::thread::sleep(Duration::from_millis(5));
        };
        assert_eq!(wait(&mut call), Ok(TEXT.to_string()));
        let retried = RequestOptions { retry: 3, ..opts.clone() };
        assert!(client.start_direct("k", "\"x\"", &retried).is_none(), "retries take the runtime's path");
        assert!(client.start_direct("k", "{bad", &opts).is_none(), "a bad payload is refused by the runtime's path");
        let mut call = client.start_direct("k", "\"fail\"", &opts).expect("direct").expect("sent");
        assert_eq!(wait(&mut call), Err((crate::ErrorKind::Remote, "ERR_BOOM".to_string())));
        let short = RequestOptions { timeout: Some(Duration::from_millis(100)), ..opts.clone() };
        let mut call = client.start_direct("k", "\"slow\"", &short).expect("direct").expect("sent");
        assert_eq!(wait(&mut call).map_err(|e| e.0), Err(crate::ErrorKind::Timeout));
        // The socket went with the timed-out call: the next call takes the runtime's path.
        assert!(client.start_direct("k", "\"x\"", &opts).is_none());
        let sent = client.direct_sent();
        assert_eq!(sent, 3);
        let mut call = loop {
            if let Some(c) = client.start_direct("k", "\"slow\"", &opts) {
                break c.expect("sent");
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        client.close();
        assert_eq!(wait(&mut call).map_err(|e| e.0), Err(crate::ErrorKind::Cancelled));
        assert!(client.start_direct("k", "\"x\"", &opts).is_none(), "closed");
        http.close();
        server.close();
        rt.shutdown();
    }
}
