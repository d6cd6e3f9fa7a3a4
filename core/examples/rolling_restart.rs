//! A rolling restart with no failed request: two workers serve `rpc_restart` over WebSocket while
//! a client keeps calling it; each worker in turn shuts down gracefully
//! (`PeerRpcServer::shutdown`) and a new one takes its place. The Grapes keep returning a stopped
//! worker until its announce expires; the client sends requests that could not reach it to the
//! other worker and avoids it meanwhile. Local Grapes in this process, no external setup.
//!
//! Run with `cargo run --example rolling_restart`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use grenache::grape::Testnet;
use grenache::link::Link;
use grenache::rpc::client::{PeerRpcClient, PeerRpcClientConfig, RequestOptions};
use grenache::rpc::server::PeerRpcServer;
use grenache::rpc::{Reply, Request};
use grenache::transport::ws::{WsClient, WsServer, WsServerConfig};
use serde_json::json;

const NAME: &str = "rpc_restart";

/// A worker: answers with its generation after a few milliseconds (so requests are in flight
/// when it shuts down), announced through `grape`.
async fn start_worker(grape: String, generation: u64) -> grenache::Result<PeerRpcServer> {
    let handler = move |_req: Request, reply: Reply| {
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            reply.ok(json!({ "generation": generation }));
        });
    };
    let server = WsServer::bind(([127, 0, 0, 1], 0).into(), handler, WsServerConfig::default()).await?;
    let peer = PeerRpcServer::new(Link::with_grape(grape)?, Arc::new(server));
    peer.announce(NAME).await?;
    peer.start_announcing(NAME, Duration::from_secs(1));
    Ok(peer)
}

#[tokio::main]
async fn main() -> grenache::Result<()> {
    let t0 = Instant::now();
    let net = Testnet::start(2).await?;
    let mut workers = vec![start_worker(net.api_url(0), 0).await?, start_worker(net.api_url(0), 1).await?];
    let link = Link::with_grape(net.api_url(1))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while link.lookup(NAME).await.map_or(0, |v| v.len()) < 2 {
        assert!(Instant::now() < deadline, "the workers never became visible");
        link.invalidate(NAME);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The callers: 4 tasks, default options (one attempt each), counting outcomes.
    let client = PeerRpcClient::new(link, Arc::new(WsClient::default()), PeerRpcClientConfig::default());
    let (stop, ok, failed) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut callers = Vec::new();
    for _ in 0..4 {
        let (client, stop, ok, failed) = (client.clone(), stop.clone(), ok.clone(), failed.clone());
        callers.push(tokio::spawn(async move {
            let opts = RequestOptions { timeout: Some(Duration::from_secs(5)), ..Default::default() };
            while !stop.load(Ordering::Relaxed) {
                match client.request(NAME, "hello", &opts).await {
                    Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        eprintln!("failed: {e}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }

    // Restart each worker in turn, as a deploy would.
    for (i, generation) in [(0usize, 2u64), (1, 3)] {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let old = workers[i].port();
        let finished = workers[i].shutdown(Duration::from_secs(5)).await;
        println!("worker on port {old}: shut down (every request it had read answered: {finished})");
        workers[i] = start_worker(net.api_url(0), generation).await?;
        println!("worker generation {generation}: serving {NAME} on port {}", workers[i].port());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for c in callers {
        let _ = c.await;
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!("{ok} requests answered, {failed} failed, in {:?}", t0.elapsed());
    for w in &workers {
        w.stop();
    }
    net.stop().await;
    if failed > 0 {
        return Err(grenache::Error::new(grenache::ErrorKind::Internal, format!("{failed} requests failed during the restarts")));
    }
    Ok(())
}
