//! uTP RPC beside our HTTP and WS transports and a libutp echo (npm utp-native 2.5.3), in the
//! same run, on loopback.
//!
//! ```text
//! cargo run --release -p grenache-bench --bin utp_bench
//! ```
//!
//! For each of our transports: a server (echo handler) on one single-threaded runtime, a client
//! transport on another (as two processes would be), requests straight to the server's address
//! (no lookup): a sequential loop of `"hello"`, rounds of 100 requests at once (each round waits
//! for all 100), and sequential requests with a 1 MB string payload echoed back (MB/s counts the
//! payload one way). uTP is measured twice: with each message written alone (the default, for
//! legacy peers) and with replies and requests sharing packets (`one_message_per_write` off).
//! The libutp row is `tests/interop/utp_bench.js`: a utp-native client and echo server in one
//! Node process with the same message shapes (and a raw 1 MB stream echo for MB/s).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use grenache::rpc::{ClientTransport, OutgoingRequest, Reply, Request, ServerTransport};
use grenache::transport::http::{HttpClient, HttpServer, HttpServerConfig};
use grenache::transport::utp::{UtpClient, UtpClientConfig, UtpNode, UtpServer, UtpServerConfig};
use grenache::transport::ws::{WsClient, WsServer, WsServerConfig};
use grenache_e2e::NodeProcess;
use serde_json::{Value, json};

const SEQ: usize = 2000;
const ROUNDS: usize = 30;
const MEGABYTES: usize = 5;

fn runtime_thread() -> tokio::runtime::Handle {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let handle = rt.handle().clone();
    std::thread::spawn(move || rt.block_on(std::future::pending::<()>()));
    handle
}

fn echo(req: Request, reply: Reply) {
    reply.ok_raw(req.payload.into_raw());
}

fn out(payload: &Arc<str>) -> OutgoingRequest {
    OutgoingRequest {
        rid: grenache::rpc::new_rid(),
        key: Arc::from("bench"),
        payload_json: payload.clone(),
        timeout: Some(Duration::from_secs(60)),
        compress: false,
    }
}

/// (sequential req/s, 100-in-flight req/s, MB/s of 1 MB echoes).
async fn measure(client: Arc<dyn ClientTransport>, dest: String) -> (f64, f64, f64) {
    let hello: Arc<str> = Arc::from("\"hello\"");
    for _ in 0..200 {
        client.request(&dest, out(&hello)).await.expect("warm-up");
    }
    let t0 = Instant::now();
    for _ in 0..SEQ {
        client.request(&dest, out(&hello)).await.expect("sequential");
    }
    let seq = SEQ as f64 / t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    for _ in 0..ROUNDS {
        let futs = (0..100).map(|_| client.request(&dest, out(&hello)));
        for r in futures_util::future::join_all(futs).await {
            r.expect("concurrent");
        }
    }
    let conc = (ROUNDS * 100) as f64 / t0.elapsed().as_secs_f64();
    let big: Arc<str> = Arc::from(json!("x".repeat(1 << 20)).to_string());
    let t0 = Instant::now();
    for _ in 0..MEGABYTES {
        let v = client.request(&dest, out(&big)).await.expect("1 MB");
        assert_eq!(v.as_str().map(str::len), Some(1 << 20));
    }
    let mbps = MEGABYTES as f64 / t0.elapsed().as_secs_f64();
    (seq, conc, mbps)
}

fn main() {
    let server_rt = runtime_thread();
    let client_rt = runtime_thread();
    let main_rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let mut rows: Vec<(String, (f64, f64, f64))> = Vec::new();
    let run = |client: Arc<dyn ClientTransport>, dest: String| {
        client_rt.block_on(async move { tokio::spawn(measure(client, dest)).await.expect("join") })
    };

    let http: Arc<dyn ServerTransport> =
        server_rt.block_on(async { HttpServer::bind(any, Arc::new(echo), HttpServerConfig::default()).await.map(Arc::new) }).expect("http");
    let c: Arc<dyn ClientTransport> = client_rt.block_on(async { Arc::new(HttpClient::default()) as Arc<dyn ClientTransport> });
    rows.push(("ours, HTTP".into(), run(c, http.local_addr().to_string())));

    let ws: Arc<dyn ServerTransport> =
        server_rt.block_on(async { WsServer::bind(any, echo, WsServerConfig::default()).await.map(Arc::new) }).expect("ws");
    let c: Arc<dyn ClientTransport> = client_rt.block_on(async { Arc::new(WsClient::default()) as Arc<dyn ClientTransport> });
    rows.push(("ours, WS".into(), run(c, ws.local_addr().to_string())));

    for alone in [true, false] {
        let config = UtpServerConfig { one_message_per_write: alone, ..Default::default() };
        let utp = server_rt.block_on(async { UtpServer::bind(any, Arc::new(echo), config).await }).expect("utp");
        let c: Arc<dyn ClientTransport> = client_rt.block_on(async {
            let node = UtpNode::bind(any).await.expect("node");
            let config = UtpClientConfig { one_message_per_write: alone, ..Default::default() };
            Arc::new(UtpClient::with_node(node, config)) as Arc<dyn ClientTransport>
        });
        let name = if alone { "ours, uTP (one message per write)" } else { "ours, uTP (shared packets)" };
        rows.push((name.into(), run(c, utp.local_addr().to_string())));
        drop(utp);
    }

    let libutp = main_rt.block_on(async {
        let args = [SEQ.to_string(), ROUNDS.to_string(), MEGABYTES.to_string()];
        let mut p = NodeProcess::spawn("utp_bench.js", &[&args[0], &args[1], &args[2]]);
        p.json(Duration::from_secs(300)).await
    });
    let f = |v: &Value, k: &str| v[k].as_f64().unwrap_or(0.0);
    rows.push(("libutp echo (utp-native, Node)".into(), (f(&libutp, "seq_rps"), f(&libutp, "conc_rps"), f(&libutp, "mbps"))));

    println!("| loopback | sequential req/s | 100 in flight req/s | MB/s, 1 MB echoes |");
    println!("|---|---:|---:|---:|");
    for (name, (seq, conc, mbps)) in rows {
        println!("| {name} | {seq:.0} | {conc:.0} | {mbps:.1} |");
    }
    drop(http);
    drop(ws);
}
