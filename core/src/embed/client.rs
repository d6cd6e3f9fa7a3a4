//! RPC clients for embedders.

use std::sync::Arc;
use std::time::Duration;

use crate::error::Result;
use crate::rpc::{PeerRpcClient, PeerRpcClientConfig, RequestOptions};
use crate::tls::ClientTls;

use super::{EmbedLink, Ops, Runtime};

/// Which transport a client speaks (HTTP or WS).
pub type ClientTransportKind = crate::transport::TransportKind;

/// Options of an [`EmbedClient`].
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// TLS: `Some` makes requests HTTPS/WSS, with a client certificate if it has one.
    pub tls: Option<ClientTls>,
    /// Timeout of a request when the call gives none. Default 30 s.
    pub default_timeout: Option<Duration>,
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
    /// A client that finds workers through `link`.
    pub fn new(link: &EmbedLink, kind: ClientTransportKind, options: ClientOptions) -> Result<EmbedClient> {
        let rt = link.runtime().clone();
        let _g = rt.handle().enter();
        let transport = crate::transport::client(kind, options.tls);
        let mut config = PeerRpcClientConfig::default();
        if let Some(t) = options.default_timeout {
            config.default_timeout = t;
        }
        let client = PeerRpcClient::new(link.link().clone(), transport, config);
        Ok(EmbedClient { rt, client, ops: Ops::new() })
    }

    /// Sends the JSON text `payload_json` to one worker of `key`; completes with the result as
    /// JSON text. A remote error is an [`ErrorKind::Remote`](crate::ErrorKind::Remote) error
    /// whose message is the remote text.
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
        self.ops.spawn(&self.rt, async move { Ok(c.request_json_shared(key, payload, &opts).await?.to_string()) }, done);
    }

    /// Sends the payload to every worker of `key`; completes with their results as a JSON array
    /// text. The first error fails the call.
    pub fn map(&self, key: String, payload_json: &str, opts: RequestOptions, done: impl FnOnce(Result<String>) + Send + 'static) {
        let payload = match super::rpc::parse_json(payload_json) {
            Ok(v) => v,
            Err(e) => return self.ops.spawn(&self.rt, async move { Err(e) }, done),
        };
        let c = self.client.clone();
        self.ops.spawn(
            &self.rt,
            async move { Ok(serde_json::Value::Array(c.map(&key, &payload, &opts).await?).to_string()) },
            done,
        );
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

