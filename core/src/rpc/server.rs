//! The RPC server peer (the reference's `PeerRPCServer`): a transport listener serving a handler,
//! announced under one or more names through a [`Link`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::ServerTransport;
use crate::error::Result;
use crate::link::{AnnounceHandle, Link};

/// The announce interval the reference's examples use with the Grape's 2-minute peer age.
pub const DEFAULT_ANNOUNCE_INTERVAL: Duration = Duration::from_secs(60);

/// A listening transport plus the names it is announced under.
pub struct PeerRpcServer {
    link: Link,
    transport: Arc<dyn ServerTransport>,
    announcers: Mutex<HashMap<String, AnnounceHandle>>,
    /// Names announced once with [`PeerRpcServer::announce`] (unannounced on shutdown too).
    announced: Mutex<std::collections::HashSet<String>>,
}

impl std::fmt::Debug for PeerRpcServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerRpcServer").field("addr", &self.transport.local_addr()).finish_non_exhaustive()
    }
}

impl PeerRpcServer {
    /// Wraps a listening transport (e.g. an [`HttpServer`](crate::transport::http::HttpServer)).
    pub fn new(link: Link, transport: Arc<dyn ServerTransport>) -> PeerRpcServer {
        PeerRpcServer { link, transport, announcers: Mutex::new(HashMap::new()), announced: Mutex::default() }
    }

    /// The listening port (the one announced).
    pub fn port(&self) -> u16 {
        self.transport.local_addr().port()
    }

    /// The Link.
    pub fn link(&self) -> &Link {
        &self.link
    }

    /// Announces `name` once.
    pub async fn announce(&self, name: &str) -> Result<()> {
        self.announced.lock().unwrap_or_else(|e| e.into_inner()).insert(name.to_string());
        self.link.announce(name, self.port()).await
    }

    /// Keeps announcing `name` every `interval` (jittered ±50 %) until stopped; see
    /// [`Link::start_announcing`].
    pub fn start_announcing(&self, name: &str, interval: Duration) -> AnnounceHandle {
        let h = self.link.start_announcing(name, self.port(), interval);
        let mut a = self.announcers.lock().unwrap_or_else(|e| e.into_inner());
        a.insert(name.to_string(), h.clone());
        h
    }

    /// Stops announcing `name`. False when it was not announced.
    pub fn stop_announcing(&self, name: &str) -> bool {
        self.announced.lock().unwrap_or_else(|e| e.into_inner()).remove(name);
        self.announcers.lock().unwrap_or_else(|e| e.into_inner()).remove(name);
        self.link.stop_announcing(name, self.port())
    }

    /// Stops every announce loop and closes the transport, at once. It does not unannounce (the
    /// Grapes return this worker until its announce expires): use [`PeerRpcServer::shutdown`] for
    /// that.
    pub fn stop(&self) {
        self.stop_all_announcing();
        self.transport.close();
    }

    /// Shuts down gracefully, for restarts without failed requests: stops announcing every name,
    /// unannounces them (the Grape's `/unannounce`: lookups through our Grapes stop returning
    /// this worker at once), stops listening (clients' connects are refused, and `PeerRpcClient`
    /// sends those requests to another worker of the key), lets the requests already read finish
    /// with their replies sent, closes each connection once it is done, and after `grace` closes
    /// the rest. Resolves to true when every connection finished within `grace`.
    ///
    /// The unannounce runs beside the drain and is best effort: a Node reference Grape has no
    /// `/unannounce` (it keeps returning the worker until the announce expires; clients learn it
    /// is gone from the refused connect), and a failure is only logged.
    pub async fn shutdown(&self, grace: Duration) -> bool {
        let names = self.stop_all_announcing();
        let (_, drained) = tokio::join!(unannounce_all(self.link.clone(), names, self.port()), self.transport.drain(grace));
        drained
    }

    /// Stops every announce loop; returns the names that were announced (by a loop or once).
    fn stop_all_announcing(&self) -> Vec<String> {
        let mut names: Vec<String> = self.announcers.lock().unwrap_or_else(|e| e.into_inner()).drain().map(|(n, _)| n).collect();
        for n in &names {
            self.link.stop_announcing(n, self.port());
        }
        for n in self.announced.lock().unwrap_or_else(|e| e.into_inner()).drain() {
            if !names.contains(&n) {
                names.push(n);
            }
        }
        names
    }
}

/// Unannounces every name of `port` at once; failures are logged (a Node Grape answers
/// `ERR_REQ_NOTFOUND`).
async fn unannounce_all(link: Link, names: Vec<String>, port: u16) {
    let calls = names.iter().map(|n| {
        let link = link.clone();
        async move {
            match link.unannounce(n, port).await {
                Ok(acks) => tracing::debug!(name = %n, port, acks, "unannounced"),
                Err(e) => tracing::info!(name = %n, port, error = %e, "unannounce failed (the announce expires on its own)"),
            }
        }
    });
    futures_util::future::join_all(calls).await;
}

impl Drop for PeerRpcServer {
    fn drop(&mut self) {
        self.stop();
    }
}
