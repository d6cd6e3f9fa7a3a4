//! A mixed network of 20 Grapes, half of them Node reference Grapes (grenache-grape 1.0.0), under
//! churn: each round stops and replaces two Grapes of each kind and one worker (gracefully), then
//! checks that
//! * the stopped worker leaves the lookups of every Rust Grape at once (unannounce; the Node
//!   Grapes keep it until it expires, and the clients' failover covers that);
//! * the new worker is found through every Grape, old and new, of both kinds;
//! * requests through a Rust Grape and through a Node Grape all succeed.
//!
//! Small enough for CI (about 30 s). Needs `npm ci --prefix tests/interop` (scripts/test.sh does
//! it). Everything binds 127.0.0.1; every process is stopped at the end (and killed on drop when
//! the test fails).

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use grenache::grape::Grape;
use grenache::link::Link;
use grenache::rpc::{PeerRpcClient, PeerRpcClientConfig, PeerRpcServer, Reply, Request, RequestOptions};
use grenache::transport::http::{HttpClient, HttpServer, HttpServerConfig};
use grenache_e2e::eventually;
use grenache_e2e::grapes::{NodeGrape, T, lookup, rust_grape};
use serde_json::json;

const NAME: &str = "churn:svc";
const HALF: usize = 10;
const ROUNDS: usize = 4;

struct Worker {
    srv: PeerRpcServer,
    addr: String,
    /// Its Grape is one of ours (so its graceful stop unannounces it).
    on_rust: bool,
}

async fn worker(grape_url: &str, on_rust: bool) -> Worker {
    let link = Link::with_grape(grape_url).unwrap();
    let cell = Arc::new(AtomicU16::new(0));
    let c = cell.clone();
    let handler = Arc::new(move |_req: Request, reply: Reply| reply.ok(json!({"port": c.load(Ordering::Relaxed)})));
    let t = HttpServer::bind("127.0.0.1:0".parse().unwrap(), handler, HttpServerConfig::default()).await.unwrap();
    let port = t.local_addr().port();
    cell.store(port, Ordering::Relaxed);
    let srv = PeerRpcServer::new(link, Arc::new(t));
    // Up once an announce got through: under churn on a loaded machine a Grape may miss the
    // first one's 2.5 s, and the loop tries again every second.
    let mut h = srv.start_announcing(NAME, Duration::from_secs(1));
    let deadline = Instant::now() + T;
    while h.status().successes == 0 {
        h.changed(deadline.saturating_duration_since(Instant::now())).await.unwrap();
    }
    Worker { srv, addr: format!("127.0.0.1:{port}"), on_rust }
}

async fn requests_all_succeed(grape_url: &str, n: usize) -> usize {
    let link = Link::with_grape(grape_url).unwrap();
    let c = PeerRpcClient::new(link, Arc::new(HttpClient::default()), PeerRpcClientConfig::default());
    let opts = RequestOptions { timeout: Some(Duration::from_secs(5)), retry: 3, ..Default::default() };
    let mut ok = 0;
    for _ in 0..n {
        match c.request(NAME, &json!("ping"), &opts).await {
            Ok(v) if v["port"].as_u64().is_some() => ok += 1,
            other => eprintln!("request through {grape_url} failed: {other:?}"),
        }
    }
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_grapes_half_node_under_churn() {
    let started = Instant::now();
    // Seeds: two Rust Grapes and two Node Grapes that stay up; the workers use them.
    let r0 = rust_grape(vec![]).await;
    let r1 = rust_grape(vec![r0.dht_bootstrap_addr()]).await;
    let seeds = vec![r0.dht_bootstrap_addr(), r1.dht_bootstrap_addr()];
    let n0 = NodeGrape::start(&seeds, &[]).await;
    let n1 = NodeGrape::start(&seeds, &[]).await;
    let boot = vec![r0.dht_bootstrap_addr(), n0.bootstrap()];
    // The churning rest: 8 of each kind.
    let mut rust: Vec<Grape> = futures_util::future::join_all((0..HALF - 2).map(|_| rust_grape(boot.clone()))).await;
    let mut node: Vec<NodeGrape> = futures_util::future::join_all((0..HALF - 2).map(|_| NodeGrape::start(&boot, &[]))).await;
    let stable_urls = [r0.api_url(), r1.api_url(), n0.url(), n1.url()];
    let mut workers = Vec::new();
    for (i, u) in stable_urls.iter().enumerate() {
        workers.push(worker(u, i < 2).await);
    }
    eprintln!("20 grapes and 4 workers up in {:?}", started.elapsed());

    let (mut ok_total, mut sent_total) = (0, 0);
    for round in 0..ROUNDS {
        // Churn: two Grapes of each kind stop, two new ones join (bootstrapped to survivors).
        for _ in 0..2 {
            rust.remove(round % rust.len()).stop().await;
            let mut gone = node.remove(round % node.len());
            gone.proc.kill().await;
        }
        let alive = vec![r1.dht_bootstrap_addr(), n1.bootstrap(), rust[0].dht_bootstrap_addr(), node[0].bootstrap()];
        rust.extend(futures_util::future::join_all((0..2).map(|_| rust_grape(alive.clone()))).await);
        node.extend(futures_util::future::join_all((0..2).map(|_| NodeGrape::start(&alive, &[]))).await);

        // One worker stops gracefully and a new one starts, on a seed Grape of the other kind.
        let old = workers.remove(0);
        assert!(old.srv.shutdown(Duration::from_secs(2)).await);
        let i = round % stable_urls.len();
        workers.push(worker(&stable_urls[i], i < 2).await);
        let live: Vec<String> = workers.iter().map(|w| w.addr.clone()).collect();

        // A worker whose Grape is ours leaves every Rust Grape's lookups at once (seconds, not
        // the 120 s of its announce's expiry). One whose Grape is a Node Grape cannot unannounce:
        // it stays until it expires, and the requests below go around it.
        let rust_apis: Vec<_> = [r0.api_addr(), r1.api_addr()].into_iter().chain(rust.iter().map(Grape::api_addr)).collect();
        if old.on_rust {
            futures_util::future::join_all(rust_apis.iter().map(|api| {
                let (api, old_addr) = (*api, old.addr.clone());
                async move {
                    eventually(Duration::from_secs(10), "a Rust grape drops the stopped worker", || {
                        let old_addr = old_addr.clone();
                        async move { (!lookup(api, NAME).await.contains(&old_addr)).then_some(()) }
                    })
                    .await
                }
            }))
            .await;
        }
        // Every live worker is found through every Grape, old and new, of both kinds.
        let all_apis: Vec<_> = rust_apis.iter().copied().chain([n0.api, n1.api]).chain(node.iter().map(|n| n.api)).collect();
        futures_util::future::join_all(all_apis.iter().map(|api| {
            let (api, live) = (*api, live.clone());
            async move {
                eventually(T, "every grape finds every live worker", || {
                    let live = live.clone();
                    async move {
                        let got = lookup(api, NAME).await;
                        live.iter().all(|w| got.contains(w)).then_some(())
                    }
                })
                .await
            }
        }))
        .await;
        // Requests through a new Rust Grape and a new Node Grape.
        for url in [rust[rust.len() - 1].api_url(), node[node.len() - 1].url()] {
            let ok = requests_all_succeed(&url, 10).await;
            ok_total += ok;
            sent_total += 10;
            assert_eq!(ok, 10, "round {round}: requests through {url}");
        }
        eprintln!("round {round} done at {:?}", started.elapsed());
    }
    eprintln!("{ok_total}/{sent_total} requests answered; {:?} in all", started.elapsed());
    for w in workers {
        w.srv.shutdown(Duration::from_secs(1)).await;
    }
    for g in rust {
        g.stop().await;
    }
    for mut n in node {
        n.proc.kill().await;
    }
    r0.stop().await;
    r1.stop().await;
    drop((n0, n1));
}
