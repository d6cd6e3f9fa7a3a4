//! The cost of the C ABI: requests per second of a C client and C server (`examples/c/rpc_bench.c`
//! through `libgrenache.so`) beside the same workload in pure Rust, over HTTP and over WS, in one
//! run. Target: the C ABI costs under 10 % of throughput.
//!
//! Both sides run a server and a client in one process with 2 runtime worker threads, keep 100
//! requests in flight (payload `"hello"`, answer `"world"`) and find the server through a Grape
//! (ours, started here). The C program is compiled with `-O2` against the `libgrenache.so` cargo
//! built beside this binary.
//!
//! `cargo run --release -p grenache-bench --bin ffi_bench [-- N [http|ws]]` (N: requests per run;
//! 0 keeps the defaults; `http` or `ws` runs that transport only, e.g. under `perf record`)

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use grenache::grape::{Grape, GrapeConfig};
use grenache::link::Link;
use grenache::rpc::{ClientTransport, PeerRpcClient, PeerRpcClientConfig, PeerRpcServer, Reply, Request, RequestOptions, ServerTransport};
use grenache::transport::http::{HttpClient, HttpClientConfig, HttpServer, HttpServerConfig};
use grenache::transport::ws::{WsClient, WsClientConfig, WsServer, WsServerConfig};
use serde_json::json;

const CONC: usize = 100;

fn handler(_req: Request, reply: Reply) {
    reply.ok(json!("world"));
}

/// The pure-Rust workload: its own 2-worker runtime, a server and a client, `n` requests.
fn rust_rps(grape: &str, ws: bool, n: i64, name: &str) -> f64 {
    let name = name.to_string();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let grape = grape.to_string();
    rt.block_on(async move {
        let link = Link::with_grape(grape).expect("link");
        let (server_t, client_t): (Arc<dyn ServerTransport>, Arc<dyn ClientTransport>) = if ws {
            let s = WsServer::bind("0.0.0.0:0".parse().expect("addr"), handler, WsServerConfig::default()).await.expect("ws bind");
            (Arc::new(s), Arc::new(WsClient::new(WsClientConfig::default())))
        } else {
            let s = HttpServer::bind("0.0.0.0:0".parse().expect("addr"), Arc::new(handler), HttpServerConfig::default())
                .await
                .expect("http bind");
            (Arc::new(s), Arc::new(HttpClient::new(HttpClientConfig::default())))
        };
        let server = PeerRpcServer::new(link.clone(), server_t);
        let _announcing = server.start_announcing(&name, Duration::from_secs(1));
        let client = PeerRpcClient::new(link, client_t, PeerRpcClientConfig::default());
        let opts = RequestOptions { timeout: Some(Duration::from_secs(10)), ..Default::default() };
        for _ in 0..300 {
            if client.request(&name, &json!("hello"), &opts).await.is_ok() {
                break;
            }
            client.link().invalidate(&name);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let left = Arc::new(AtomicI64::new(n));
        let t0 = Instant::now();
        let tasks: Vec<_> = (0..CONC)
            .map(|_| {
                let (client, left, opts, name) = (client.clone(), left.clone(), opts.clone(), name.clone());
                tokio::spawn(async move {
                    while left.fetch_sub(1, Ordering::Relaxed) > 0 {
                        let v = client.request(&name, &json!("hello"), &opts).await.expect("request");
                        debug_assert_eq!(v, json!("world"));
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("task");
        }
        let secs = t0.elapsed().as_secs_f64();
        server.stop();
        client.stop();
        n as f64 / secs
    })
}

/// Compiles `examples/c/rpc_bench.c` against the library cargo built beside this binary.
fn build_c() -> PathBuf {
    let exe = std::env::current_exe().expect("exe");
    let profile = exe.parent().expect("profile dir").to_path_buf();
    let deps = profile.join("deps");
    assert!(
        deps.join("libgrenache.so").exists(),
        "{} missing: build with `cargo build --release -p grenache-bench` (it builds grenache-ffi)",
        deps.join("libgrenache.so").display()
    );
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = profile.join("rpc_bench_c");
    let st = Command::new("cc")
        .args(["-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-pedantic", "-pthread", "-I"])
        .arg(root.join("include"))
        .arg(root.join("examples/c/rpc_bench.c"))
        .arg("-o")
        .arg(&out)
        .arg("-L")
        .arg(&deps)
        .arg("-lgrenache")
        .arg(format!("-Wl,-rpath,{}", deps.display()))
        .status()
        .expect("cc");
    assert!(st.success(), "compiling rpc_bench.c failed");
    out
}

fn c_rps(bin: &PathBuf, grape: &str, ws: bool, n: i64, name: &str) -> f64 {
    let o = Command::new(bin)
        .args([grape, if ws { "ws" } else { "http" }, &n.to_string(), &CONC.to_string(), name])
        .output()
        .expect("run rpc_bench");
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "rpc_bench failed: {text}{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_str(text.trim()).expect("rpc_bench output");
    v["rps"].as_f64().expect("rps")
}

fn main() {
    // Requests per run: about a second of work each (WS is ~5x faster than HTTP here), so a
    // run is long enough to measure; `-- N` sets both.
    let arg: Option<i64> = std::env::args().nth(1).and_then(|s| s.parse().ok()).filter(|n| *n > 0);
    let only = std::env::args().nth(2);
    let (n_http, n_ws) = (arg.unwrap_or(50_000), arg.unwrap_or(250_000));
    let c_bin = build_c();
    let grape_rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    // Two Grapes bootstrapped on each other (a lone DHT node has nobody to announce to).
    let (grape, grape2) = grape_rt.block_on(async {
        let mut config = GrapeConfig::new();
        config.dht_port(0).api_port(0);
        let g1 = Grape::start(config).await.expect("grape");
        let mut config = GrapeConfig::new();
        config.dht_port(0).api_port(0).bootstrap(vec![g1.dht_bootstrap_addr()]);
        let g2 = Grape::start(config).await.expect("grape");
        tokio::time::sleep(Duration::from_millis(500)).await;
        (g1, g2)
    });
    let url = grape.api_url();
    println!(
        "\n### C ABI overhead: {n_http} (HTTP) / {n_ws} (WS) requests per run, {CONC} in flight, server + client in one process, 2 workers, best of 3 interleaved runs\n"
    );
    println!("| transport | pure Rust | C through libgrenache | C / Rust |");
    println!("|---|---:|---:|---:|");
    for ws in [false, true] {
        if only.as_deref().is_some_and(|o| o != if ws { "ws" } else { "http" }) {
            continue;
        }
        let n = if ws { n_ws } else { n_http };
        // Interleave and keep the best of three runs of each, to damp the noise of a shared machine.
        let mut rust = 0f64;
        let mut c = 0f64;
        // Each run announces a service name of its own: a stopped server's announce lingers in
        // the Grape for its peer max age.
        for i in 0..3 {
            rust = rust.max(rust_rps(&url, ws, n, &format!("rpc_bench_rs_{ws}_{i}")));
            c = c.max(c_rps(&c_bin, &url, ws, n, &format!("rpc_bench_c_{ws}_{i}")));
        }
        println!("| {} | {rust:.0} req/s | {c:.0} req/s | {:.1} % |", if ws { "WS" } else { "HTTP" }, 100.0 * c / rust);
    }
    grape_rt.block_on(async move {
        grape2.stop().await;
        grape.stop().await;
    });
}
