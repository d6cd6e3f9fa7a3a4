//! RPC clients for embedders.

use std::sync::Arc;
use std::time::Duration;

use crate::error::Result;
use crate::rpc::{PeerRpcClient, PeerRpcClientConfig, RequestOptions};
use crate::tls::ClientTls;
use crate::transport::utp::broker::{BrokerClient, BrokerClientConfig};
use crate::transport::utp::{UtpClient, UtpClientConfig, UtpNode};

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
        Ok(EmbedClient { rt, client, ops: Ops::new() })
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

    /// Cancels requests in flight (their completions fire `Cancelled`) and closes connections.
    pub fn close(&self) {
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
}
