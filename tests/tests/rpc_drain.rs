//! Restarting a worker under load without failed requests: `PeerRpcServer::shutdown` (stop
//! announcing, refuse new connections, finish what was read, close) with the client's connect
//! failover and dead-worker avoidance, over HTTP and WebSocket, on a network of Node Grapes
//! (which keep returning the stopped worker until its announce expires).

#![allow(clippy::unwrap_used)]

mod link_support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use grenache::ErrorKind;
use grenache::link::Link;
use grenache::rpc::{ClientTransport, PeerRpcClient, PeerRpcClientConfig, PeerRpcServer, Reply, Request, RequestOptions, ServerTransport};
use grenache::transport::http::{HttpClient, HttpServer, HttpServerConfig};
use grenache::transport::ws::{WsClient, WsServer, WsServerConfig};
use link_support::{Grapes, wait_lookup};
use serde_json::{Value, json};

#[derive(Clone, Copy, Debug)]
enum Kind {
    Http,
    Ws,
}

/// How many requests with a `sleep` reached a handler (each test runs in a process of its own).
static SLEEPING: AtomicUsize = AtomicUsize::new(0);

/// Waits (at most 20 s) until more than `before` requests with a `sleep` reached a handler: the
/// shutdown that follows comes while the request runs.
async fn wait_sleeping(before: usize) {
    grenache_e2e::eventually(Duration::from_secs(20), "the slow request reaches its handler", || async {
        (SLEEPING.load(Ordering::SeqCst) > before).then_some(())
    })
    .await
}

/// Answers `{"port": p}`, after `{"sleep": ms}` milliseconds when asked.
fn handler(port: u16) -> impl Fn(Request, Reply) + Send + Sync + 'static {
    move |req: Request, reply: Reply| {
        let ms = req.payload.get("sleep").and_then(Value::as_u64).unwrap_or(0);
        if ms == 0 {
            return reply.ok(json!({ "port": port }));
        }
        SLEEPING.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            reply.ok(json!({ "port": port }));
        });
    }
}

/// A server of `kind` on a free port, with [`handler`].
async fn bind(kind: Kind) -> (Arc<dyn ServerTransport>, u16) {
    let port = grenache_e2e::free_tcp_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let t: Arc<dyn ServerTransport> = match kind {
        Kind::Http => Arc::new(HttpServer::bind(addr, Arc::new(handler(port)), HttpServerConfig::default()).await.unwrap()),
        Kind::Ws => Arc::new(WsServer::bind(addr, handler(port), WsServerConfig::default()).await.unwrap()),
    };
    (t, port)
}

async fn worker(kind: Kind, link: &Link, name: &str) -> (PeerRpcServer, u16) {
    let (t, port) = bind(kind).await;
    let srv = PeerRpcServer::new(link.clone(), t);
    srv.start_announcing(name, Duration::from_secs(1)).first_result(Duration::from_secs(20)).await.unwrap();
    (srv, port)
}

fn client(kind: Kind, link: &Link) -> PeerRpcClient {
    let t: Arc<dyn ClientTransport> = match kind {
        Kind::Http => Arc::new(HttpClient::default()),
        Kind::Ws => Arc::new(WsClient::default()),
    };
    PeerRpcClient::new(link.clone(), t, PeerRpcClientConfig::default())
}

fn opts() -> RequestOptions {
    RequestOptions { timeout: Some(Duration::from_secs(20)), ..Default::default() }
}

async fn restart_under_load(kind: Kind) {
    let g = Grapes::start(false).await;
    let link = g.link();
    let name = format!("rpc_drain_{kind:?}");
    let (a, port_a) = worker(kind, &link, &name).await;
    let (_b, port_b) = worker(kind, &link, &name).await;
    wait_lookup(&link, &name, 2).await;
    let c = client(kind, &link);
    // Load: 6 tasks, default options (no retry), one request in five slow, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, served_by_b_after) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let a_gone = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for t in 0..6u64 {
        let (c, name, stop, ok, by_b, gone) =
            (c.clone(), name.clone(), stop.clone(), ok.clone(), served_by_b_after.clone(), a_gone.clone());
        load.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let payload = if (t + i).is_multiple_of(5) { json!({"sleep": 20}) } else { json!("x") };
                match c.request(&name, &payload, &opts()).await {
                    Ok(v) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        if gone.load(Ordering::Relaxed) && v["port"] == port_b {
                            by_b.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(e) => failures.push(e.to_string()),
                }
                i += 1;
            }
            failures
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A slow request on A is in flight when A shuts down: it is answered.
    let before = SLEEPING.load(Ordering::SeqCst);
    let slow = {
        let c = c.clone();
        let o = RequestOptions { dest: Some(format!("127.0.0.1:{port_a}")), ..opts() };
        tokio::spawn(async move { c.request("any", &json!({"sleep": 400}), &o).await })
    };
    wait_sleeping(before).await;
    let t0 = Instant::now();
    assert!(a.shutdown(Duration::from_secs(10)).await, "every connection finished within the grace");
    let took = t0.elapsed();
    a_gone.store(true, Ordering::Relaxed);
    assert!(took >= Duration::from_millis(200) && took < Duration::from_secs(8), "waited for the slow request: {took:?}");
    assert_eq!(slow.await.unwrap().expect("the slow request in flight at shutdown is answered"), json!({"port": port_a}));
    // A refuses connections now, while the Grapes still return it.
    assert!(tokio::net::TcpStream::connect(("127.0.0.1", port_a)).await.is_err());
    assert!(wait_lookup(&link, &name, 2).await.contains(&format!("127.0.0.1:{port_a}")));
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for l in load {
        failures.extend(l.await.unwrap());
    }
    assert!(failures.is_empty(), "{kind:?}: {} requests failed, e.g. {:?}", failures.len(), &failures[..failures.len().min(3)]);
    assert!(ok.load(Ordering::Relaxed) > 100, "load ran");
    assert!(served_by_b_after.load(Ordering::Relaxed) > 10, "the other worker took the load");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_worker_restarts_under_load_without_failed_requests() {
    restart_under_load(Kind::Http).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_worker_restarts_under_load_without_failed_requests() {
    restart_under_load(Kind::Ws).await;
}

/// A request that outlives the grace is cut off: `shutdown` resolves false after the grace, and
/// the request fails as closed (it was handled, so it is not sent elsewhere).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_at_the_grace() {
    for kind in [Kind::Http, Kind::Ws] {
        let link = Link::with_grape(format!("http://127.0.0.1:{}", grenache_e2e::free_tcp_port())).unwrap();
        let (t, port) = bind(kind).await;
        let srv = PeerRpcServer::new(link.clone(), t);
        let c = client(kind, &link);
        let o = RequestOptions { dest: Some(format!("127.0.0.1:{port}")), ..opts() };
        // Idle sockets and finished requests do not hold the shutdown up.
        assert_eq!(c.request("k", &json!("x"), &o).await.unwrap(), json!({"port": port}));
        let before = SLEEPING.load(Ordering::SeqCst);
        let long = {
            let (c, o) = (c.clone(), o.clone());
            tokio::spawn(async move { c.request("k", &json!({"sleep": 5000}), &o).await })
        };
        wait_sleeping(before).await;
        let t0 = Instant::now();
        assert!(!srv.shutdown(Duration::from_millis(300)).await, "{kind:?}: not finished within the grace");
        let took = t0.elapsed();
        assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(3), "{kind:?}: {took:?}");
        let e = tokio::time::timeout(Duration::from_secs(3), long).await.expect("fails promptly").unwrap().unwrap_err();
        assert!(matches!(e.kind(), ErrorKind::Closed | ErrorKind::Protocol), "{kind:?}: {e}");
        // Nothing listens any more.
        assert!(tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err());
    }
}
