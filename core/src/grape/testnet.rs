//! A local network of Grapes for tests and examples.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use super::{Grape, GrapeConfig};
use crate::error::{Error, ErrorKind, Result};

/// N Grapes on 127.0.0.1 with OS-chosen ports (UDP and TCP), bootstrapped to the first two:
/// Grape 0 has no bootstrap, Grape 1 bootstraps to Grape 0, every later Grape to Grapes 0 and 1.
///
/// ```no_run
/// # async fn demo() -> grenache::Result<()> {
/// let net = grenache::grape::Testnet::start(3).await?;
/// let url = net.api_url(0); // "http://127.0.0.1:<port>"
/// # let _ = url;
/// net.stop().await;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Testnet {
    grapes: Vec<Grape>,
}

/// How long [`Testnet::start`] waits for each Grape's bootstrap walk.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

impl Testnet {
    /// Starts `n` Grapes with the default configuration (plus port 0 and 127.0.0.1) and waits
    /// until each finished its bootstrap walk.
    pub async fn start(n: usize) -> Result<Testnet> {
        Testnet::start_with(n, |_| {}).await
    }

    /// Like [`Testnet::start`], with `tweak` applied to every Grape's configuration first (its
    /// ports and bootstrap list are set afterwards).
    pub async fn start_with(n: usize, tweak: impl Fn(&mut GrapeConfig)) -> Result<Testnet> {
        let mut net = Testnet { grapes: Vec::with_capacity(n) };
        for i in 0..n {
            let mut config = GrapeConfig::default();
            tweak(&mut config);
            let bootstrap: Vec<String> = net.grapes.iter().take(2).map(Grape::dht_bootstrap_addr).collect();
            config
                .dht_bind(IpAddr::V4(Ipv4Addr::LOCALHOST))
                .host(Some(IpAddr::V4(Ipv4Addr::LOCALHOST)))
                .dht_port(0)
                .api_port(0)
                .bootstrap(bootstrap);
            match Grape::start(config).await {
                Ok(g) => net.grapes.push(g),
                Err(e) => {
                    net.stop_all().await;
                    return Err(Error::new(e.kind(), format!("testnet grape {i}: {}", e.message())));
                }
            }
        }
        for (i, g) in net.grapes.iter().enumerate() {
            if tokio::time::timeout(READY_TIMEOUT, g.ready()).await.is_err() {
                net.stop_all().await;
                return Err(Error::new(ErrorKind::Timeout, format!("testnet grape {i} not ready within {READY_TIMEOUT:?}")));
            }
        }
        Ok(net)
    }

    /// Every Grape, in start order.
    pub fn grapes(&self) -> &[Grape] {
        &self.grapes
    }

    /// Grape `i` (panics if out of range, like indexing).
    pub fn grape(&self, i: usize) -> &Grape {
        &self.grapes[i]
    }

    /// Number of Grapes.
    pub fn len(&self) -> usize {
        self.grapes.len()
    }

    /// True when the network has no Grape.
    pub fn is_empty(&self) -> bool {
        self.grapes.is_empty()
    }

    /// The API base URL of Grape `i`, `http://127.0.0.1:<port>`.
    pub fn api_url(&self, i: usize) -> String {
        self.grapes[i].api_url()
    }

    /// Every API base URL, in start order.
    pub fn api_urls(&self) -> Vec<String> {
        self.grapes.iter().map(Grape::api_url).collect()
    }

    /// `"127.0.0.1:<dht port>"` of the first two Grapes: a bootstrap list for extra nodes.
    pub fn bootstrap(&self) -> Vec<String> {
        self.grapes.iter().take(2).map(Grape::dht_bootstrap_addr).collect()
    }

    async fn stop_all(&mut self) {
        let stops = self.grapes.iter().map(|g| g.stop());
        futures_util::future::join_all(stops).await;
        self.grapes.clear();
    }

    /// Stops every Grape and frees their ports.
    pub async fn stop(mut self) {
        self.stop_all().await;
    }
}
