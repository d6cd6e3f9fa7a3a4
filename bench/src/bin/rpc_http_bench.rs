//! RPC over HTTP and HTTPS: grenache-rs (Rust client → Rust server) beside the Node reference
//! (grenache-nodejs-http 1.0.2 client process → Node server process) in the same run, plus a bare
//! hyper echo of the same bytes as the floor.
//!
//! Each side goes through its full request path: cached lookup on a Node Grape, random
//! destination, envelope encode/decode; payload `"hello"`, answer `"world"`.
//! "100 in flight" = rounds of 100 requests fired together, waiting for all 100 each round (the
//! method of the spec's Node measurement).
//!
//! `cargo run --release -p grenache-bench --bin rpc_http_bench`

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use grenache::link::Link;
use grenache::rpc::{PeerRpcClient, PeerRpcClientConfig, PeerRpcServer, Reply, Request, RequestOptions};
use grenache::tls::{ClientAuth, ClientTls, ServerTls};
use grenache::transport::http::{HttpClient, HttpClientConfig, HttpServer, HttpServerConfig};
use grenache_bench::{Row, Samples, print_table};
use grenache_e2e::{NodeProcess, free_port, free_tcp_port, interop_dir};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};

const CONC: usize = 100;

#[derive(Debug, Default, Clone, Copy)]
struct Stats {
    seq_rps: f64,
    seq_p50: f64,
    seq_p99: f64,
    conc_rps: f64,
    conc_p50: f64,
    conc_p99: f64,
}

impl Stats {
    fn from_node(v: &Value) -> Stats {
        let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
        Stats {
            seq_rps: f("seq_rps"),
            seq_p50: f("seq_p50_us"),
            seq_p99: f("seq_p99_us"),
            conc_rps: f("conc_rps"),
            conc_p50: f("conc_p50_us"),
            conc_p99: f("conc_p99_us"),
        }
    }
}

async fn measure<F, Fut>(f: F, warmup: usize, seq: usize, rounds: usize) -> Stats
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = bool> + Send + 'static,
{
    for _ in 0..warmup {
        assert!(f().await, "warm-up request failed");
    }
    let mut s = Samples::with_capacity(seq);
    let t0 = Instant::now();
    for _ in 0..seq {
        let t = Instant::now();
        assert!(f().await, "request failed");
        s.push(t.elapsed());
    }
    let seq_secs = t0.elapsed().as_secs_f64();
    let mut c = Samples::with_capacity(rounds * CONC);
    let t0 = Instant::now();
    for _ in 0..rounds {
        let mut tasks = Vec::with_capacity(CONC);
        for _ in 0..CONC {
            let f = f.clone();
            tasks.push(tokio::spawn(async move {
                let t = Instant::now();
                let ok = f().await;
                (ok, t.elapsed())
            }));
        }
        for t in tasks {
            let (ok, d) = t.await.expect("task");
            assert!(ok, "request failed");
            c.push(d);
        }
    }
    let conc_secs = t0.elapsed().as_secs_f64();
    Stats {
        seq_rps: seq as f64 / seq_secs,
        seq_p50: s.percentile_us(50.0) as f64,
        seq_p99: s.percentile_us(99.0) as f64,
        conc_rps: (rounds * CONC) as f64 / conc_secs,
        conc_p50: c.percentile_us(50.0) as f64,
        conc_p99: c.percentile_us(99.0) as f64,
    }
}

async fn start_grapes() -> (Vec<NodeProcess>, String) {
    let (d1, d2, a1, a2) = (free_port(), free_port(), free_port(), free_port());
    let mut procs = Vec::new();
    for (dht, api, boot) in [(d1, a1, d2), (d2, a2, d1)] {
        let (dht, api, boot) = (dht.to_string(), api.to_string(), format!("127.0.0.1:{boot}"));
        let mut p = NodeProcess::spawn("grape.js", &["--dht-port", &dht, "--api-port", &api, "--bootstrap", &boot]);
        while p.json(Duration::from_secs(30)).await["event"] != "started" {}
        procs.push(p);
    }
    (procs, format!("http://127.0.0.1:{a1}"))
}

fn cert(name: &str) -> String {
    interop_dir().join("node_modules/grenache-nodejs-http/test/certs").join(name).to_string_lossy().into_owned()
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(cert(name)).expect("reference test certificate")
}

async fn ours(link: &Link, name: &str, tls: bool, warmup: usize, seq: usize, rounds: usize) -> Stats {
    let mut scfg = HttpServerConfig::default();
    let mut ccfg = HttpClientConfig::default();
    if tls {
        let s = ServerTls::builder(read("server-crt.pem"), read("server-key.pem"))
            .client_ca_pem(read("ca-crt.pem"))
            .client_auth(ClientAuth::Required)
            .build()
            .expect("server tls");
        scfg.tls = Some(s.config());
        let c = ClientTls::builder()
            .ca_pem(read("ca-crt.pem"))
            .client_cert_pem(read("client1-crt.pem"), read("client1-key.pem"))
            .build()
            .expect("client tls");
        ccfg.tls = Some(c.config());
    }
    let handler = |_req: Request, reply: Reply| reply.ok(json!("world"));
    let http = HttpServer::bind("127.0.0.1:0".parse().expect("addr"), Arc::new(handler), scfg).await.expect("bind");
    let srv = PeerRpcServer::new(link.clone(), Arc::new(http));
    srv.start_announcing(name, Duration::from_secs(1)).first_result(Duration::from_secs(20)).await.expect("announce");
    let client = PeerRpcClient::new(link.clone(), Arc::new(HttpClient::new(ccfg)), PeerRpcClientConfig::default());
    let opts = Arc::new(RequestOptions { timeout: Some(Duration::from_secs(30)), ..Default::default() });
    let name: Arc<str> = name.into();
    let f = move || {
        let client = client.clone();
        let opts = opts.clone();
        let name = name.clone();
        async move { client.request(&name, "hello", &opts).await.is_ok_and(|v| v == "world") }
    };
    let st = measure(f, warmup, seq, rounds).await;
    srv.stop();
    st
}

async fn bare_hyper(warmup: usize, seq: usize, rounds: usize) -> Stats {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr: SocketAddr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let _ = tcp.set_nodelay(true);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                    Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(body)))
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(tcp), svc).await;
            });
        }
    });
    let mut conn = hyper_util::client::legacy::connect::HttpConnector::new();
    conn.set_nodelay(true);
    let client: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(conn);
    let uri: http::Uri = format!("http://{addr}/").parse().expect("uri");
    let body = Bytes::from_static(br#"["8100b310-fbf4-450b-8410-f29838a24b48","bench","hello"]"#);
    let f = move || {
        let client = client.clone();
        let uri = uri.clone();
        let body = body.clone();
        async move {
            let req = http::Request::post(uri).header("grc-compress", "none").body(Full::new(body)).expect("req");
            match client.request(req).await {
                Ok(r) => r.into_body().collect().await.is_ok(),
                Err(_) => false,
            }
        }
    };
    measure(f, warmup, seq, rounds).await
}

async fn node(grape: &str, name: &str, tls: bool, warmup: usize, seq: usize, rounds: usize) -> Stats {
    let port = free_tcp_port().to_string();
    let (k, c, ca) = (cert("server-key.pem"), cert("server-crt.pem"), cert("ca-crt.pem"));
    let mut sargs = vec!["--grape", grape, "--name", name, "--port", &port, "--bench"];
    if tls {
        sargs.extend(["--key", &k, "--cert", &c, "--ca", &ca]);
    }
    let mut server = NodeProcess::spawn("http_server.js", &sargs);
    while server.json(Duration::from_secs(30)).await["event"] != "started" {}
    let (ck, cc) = (cert("client1-key.pem"), cert("client1-crt.pem"));
    let (w, s, r) = (warmup.to_string(), seq.to_string(), rounds.to_string());
    let mut cargs = vec!["--grape", grape, "--key", name, "--seq", &s, "--rounds", &r, "--warmup", &w];
    if tls {
        cargs.extend(["--key-file", &ck, "--cert", &cc, "--ca", &ca]);
    }
    let mut client = NodeProcess::spawn("http_bench.js", &cargs);
    let v = client.json(Duration::from_secs(150)).await;
    assert!(v.get("error").is_none(), "node bench failed: {v}");
    drop(server);
    Stats::from_node(&v)
}

fn rows(prefix: &str, ours: Stats, reference: Stats) -> Vec<Row> {
    let row = |m: &str, o: f64, r: f64, unit: &str, hib: bool| Row {
        metric: format!("{prefix} {m}"),
        ours: o,
        reference: r,
        unit: unit.into(),
        higher_is_better: hib,
    };
    vec![
        row("sequential", ours.seq_rps, reference.seq_rps, "req/s", true),
        row("sequential p50", ours.seq_p50, reference.seq_p50, "µs", false),
        row("sequential p99", ours.seq_p99, reference.seq_p99, "µs", false),
        row("100 in flight", ours.conc_rps, reference.conc_rps, "req/s", true),
        row("100 in flight p50", ours.conc_p50, reference.conc_p50, "µs", false),
        row("100 in flight p99", ours.conc_p99, reference.conc_p99, "µs", false),
    ]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let started = Instant::now();
    let (_grapes, grape) = start_grapes().await;
    let link = Link::with_grape(grape.clone()).expect("link");

    eprintln!("bare hyper…");
    let floor = bare_hyper(2000, 10_000, 200).await;
    eprintln!("ours, HTTP…");
    let ours_http = ours(&link, "bench_rs", false, 2000, 10_000, 200).await;
    eprintln!("ours, HTTPS…");
    let ours_https = ours(&link, "bench_rs_tls", true, 2000, 10_000, 200).await;
    eprintln!("Node, HTTP…");
    let node_http = node(&grape, "bench_node", false, 300, 3000, 30).await;
    eprintln!("Node, HTTPS…");
    let node_https = node(&grape, "bench_node_tls", true, 20, 200, 3).await;

    let mut table = rows("HTTP", ours_http, node_http);
    table.extend(rows("HTTPS (mTLS)", ours_https, node_https));
    print_table("RPC over HTTP(S): grenache-rs vs grenache-nodejs-http 1.0.2 (Node client → Node server)", &table);
    print_table(
        "RPC over HTTP: grenache-rs vs a bare hyper echo of the same bytes (the \"Node reference\" column holds bare hyper)",
        &rows("HTTP", ours_http, floor),
    );
    println!(
        "\n(2-core machine shared with other builds; the Node client and server are two processes, ours run in one process on 2 tokio workers; total {:.0} s)",
        started.elapsed().as_secs_f64()
    );
}
