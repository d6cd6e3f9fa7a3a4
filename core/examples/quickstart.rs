//! The quick start: a local network of three Grapes in one process, two workers serving
//! `rpc_test` over HTTP, and a client that looks the service up, requests it and maps over both
//! workers. No external setup.
//!
//! Run with `cargo run --example quickstart`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use grenache::grape::Testnet;
use grenache::link::Link;
use grenache::rpc::client::{PeerRpcClient, PeerRpcClientConfig, RequestOptions};
use grenache::rpc::server::PeerRpcServer;
use grenache::rpc::{Reply, Request};
use grenache::transport::http::{HttpClient, HttpClientConfig, HttpServer, HttpServerConfig};
use serde_json::json;

#[tokio::main]
async fn main() -> grenache::Result<()> {
    let t0 = Instant::now();
    // 1. Three Grapes (DHT nodes + HTTP API) on 127.0.0.1, free ports, bootstrapped to each other.
    let net = Testnet::start(3).await?;
    for (i, url) in net.api_urls().iter().enumerate() {
        println!("grape {i}: API {url}, DHT {}", net.grape(i).dht_addr());
    }

    // 2. Two workers serving `rpc_test` over HTTP, each announcing through its own Grape.
    let mut workers = Vec::new();
    for i in 0..2 {
        let handler = move |req: Request, reply: Reply| {
            reply.ok(json!(format!("{}: world (from worker {i})", req.payload.as_str().unwrap_or("?"))));
        };
        let server = HttpServer::bind(([127, 0, 0, 1], 0).into(), Arc::new(handler), HttpServerConfig::default()).await?;
        let peer = PeerRpcServer::new(Link::with_grape(net.api_url(i))?, Arc::new(server));
        peer.announce("rpc_test").await?;
        peer.start_announcing("rpc_test", Duration::from_secs(1));
        println!("worker {i}: serving rpc_test on 127.0.0.1:{}", peer.port());
        workers.push(peer);
    }

    // 3. A client that talks to the third Grape: lookup, request, map.
    let link = Link::with_grape(net.api_url(2))?;
    let peers = wait_for_both(&link).await?;
    println!("lookup rpc_test via grape 2: {peers:?}");
    let client = PeerRpcClient::new(link, Arc::new(HttpClient::new(HttpClientConfig::default())), PeerRpcClientConfig::default());
    let opts = RequestOptions { timeout: Some(Duration::from_secs(5)), ..Default::default() };
    let reply = client.request("rpc_test", "hello", &opts).await?;
    println!("request rpc_test \"hello\" -> {reply}");
    let all = client.map("rpc_test", "hello", &opts).await?;
    println!("map rpc_test \"hello\" -> {}", json!(all));

    for w in &workers {
        w.stop();
    }
    net.stop().await;
    println!("done in {:?}", t0.elapsed());
    Ok(())
}

/// Announces travel through the DHT; poll until the client's Grape sees both workers.
async fn wait_for_both(link: &Link) -> grenache::Result<Vec<String>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        link.invalidate("rpc_test");
        match link.lookup("rpc_test").await {
            Ok(p) if p.len() >= 2 => return Ok(p),
            Err(e) if Instant::now() >= deadline => return Err(e),
            _ if Instant::now() >= deadline => {
                return Err(grenache::Error::timeout("rpc_test not visible on grape 2 within 10 s"));
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}
