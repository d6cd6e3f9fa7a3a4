//! `rpc_load`: the Rust client as a load generator against any announced RPC service, for
//! benchmarks driven from another language (`bench/python/bench.py`).
//!
//! ```text
//! rpc_load --grape URL --key NAME [--transport ws|http] [--warmup N] [--seq N] [--rounds R] [--conc C]
//!          [--payload JSON] [--expect JSON]
//! ```
//!
//! Sends `--warmup` then `--seq` sequential requests, then `--rounds` rounds of `--conc`
//! requests in flight (each round waits for all of them, as the Node reference's benchmark
//! clients in tests/interop do), through the full `PeerRpcClient::request` path (cached lookup).
//! Every result must equal `--expect` (default `"world"`). Prints one JSON line
//! `{"seq_rps": .., "conc_rps": ..}`; a failed request prints `{"error": ..}` and exits 1.

use std::sync::Arc;
use std::time::{Duration, Instant};

use grenache::link::{Link, LinkConfig};
use grenache::rpc::{PeerRpcClient, PeerRpcClientConfig, RequestOptions};
use grenache::transport::{self, TransportKind};
use serde_json::{Value, json};

struct Args {
    grape: String,
    key: String,
    transport: TransportKind,
    warmup: usize,
    seq: usize,
    rounds: usize,
    conc: usize,
    payload: Value,
    expect: Value,
}

fn parse() -> Result<Args, String> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let opt = |name: &str| argv.iter().position(|a| a == name).and_then(|i| argv.get(i + 1)).cloned();
    let num = |name: &str, d: usize| -> Result<usize, String> {
        opt(name).map_or(Ok(d), |v| v.parse().map_err(|_| format!("{name} must be a number, not {v:?}")))
    };
    let json_opt = |name: &str, d: Value| -> Result<Value, String> {
        opt(name).map_or(Ok(d), |v| serde_json::from_str(&v).map_err(|e| format!("{name}: {e}")))
    };
    Ok(Args {
        grape: opt("--grape").ok_or("--grape URL is required")?,
        key: opt("--key").ok_or("--key NAME is required")?,
        transport: opt("--transport").unwrap_or_else(|| "ws".into()).parse().map_err(|e: grenache::Error| e.to_string())?,
        warmup: num("--warmup", 300)?,
        seq: num("--seq", 5000)?,
        rounds: num("--rounds", 100)?,
        conc: num("--conc", 100)?,
        payload: json_opt("--payload", json!("hello"))?,
        expect: json_opt("--expect", json!("world"))?,
    })
}

async fn run(a: Args) -> grenache::Result<Value> {
    let link = Link::new(LinkConfig::with_grape(&a.grape))?;
    let client = PeerRpcClient::new(link, transport::client(a.transport, None), PeerRpcClientConfig::default());
    let opts = RequestOptions { timeout: Some(Duration::from_secs(30)), ..Default::default() };
    let key: Arc<str> = a.key.as_str().into();
    let payload: Arc<str> = a.payload.to_string().into();
    let call = || async {
        let r = client.send::<serde_json::Value>(key.clone(), payload.clone(), &opts).await?;
        if r == a.expect { Ok(()) } else { Err(grenache::Error::invalid(format!("unexpected result {r}"))) }
    };
    for _ in 0..a.warmup {
        call().await?;
    }
    let t0 = Instant::now();
    for _ in 0..a.seq {
        call().await?;
    }
    let seq_secs = t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    for _ in 0..a.rounds {
        for r in futures_util::future::join_all((0..a.conc).map(|_| call())).await {
            r?;
        }
    }
    let conc_secs = t0.elapsed().as_secs_f64();
    client.stop();
    Ok(json!({
        "seq_rps": a.seq as f64 / seq_secs.max(1e-9),
        "conc_rps": (a.rounds * a.conc) as f64 / conc_secs.max(1e-9),
    }))
}

fn main() -> std::process::ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("rpc_load: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            println!("{}", json!({ "error": e.to_string() }));
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(v) => {
            println!("{v}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            println!("{}", json!({ "error": e.to_string() }));
            std::process::ExitCode::FAILURE
        }
    }
}
