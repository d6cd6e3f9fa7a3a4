//! Helpers shared by the unannounce, signed-announce and mixed-network tests: Node reference
//! Grapes and Rust Grapes on 127.0.0.1, and raw calls to a Grape's HTTP API.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use grenache::grape::{Grape, GrapeConfig};
use grenache_e2e::{NodeProcess, free_port};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The wait for anything in these tests.
pub const T: Duration = Duration::from_secs(30);

/// One HTTP/1.1 POST with `Connection: close`; returns the status and the body.
pub async fn post(addr: SocketAddr, path: &str, body: &str) -> (u16, String) {
    let fut = async {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await.expect("write");
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.expect("read");
        let text = String::from_utf8_lossy(&out).into_owned();
        let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        (status, body)
    };
    tokio::time::timeout(T, fut).await.expect("HTTP request timed out")
}

/// `POST <path> {"rid","data"}`.
pub async fn call(addr: SocketAddr, path: &str, data: Value) -> (u16, String) {
    post(addr, path, &json!({"rid": "trust", "data": data}).to_string()).await
}

/// `/lookup` through the Grape at `addr`, sorted.
pub async fn lookup(addr: SocketAddr, name: &str) -> Vec<String> {
    let (_, body) = call(addr, "/lookup", json!(name)).await;
    let mut v: Vec<String> = serde_json::from_str(&body).unwrap_or_default();
    v.sort();
    v
}

/// `127.0.0.1:p`.
pub fn local(p: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], p))
}

/// A Node reference Grape (grenache-grape 1.0.0) on free ports.
pub struct NodeGrape {
    /// The process (killed when dropped).
    pub proc: NodeProcess,
    /// Its UDP DHT address.
    pub dht: SocketAddr,
    /// Its HTTP API address.
    pub api: SocketAddr,
}

impl NodeGrape {
    /// Starts one bootstrapped to `bootstrap`, with `extra` arguments for `grape.js`.
    pub async fn start(bootstrap: &[String], extra: &[&str]) -> NodeGrape {
        // The reference cannot report a port 0 it bound: ports are picked free beforehand, and a
        // start that lost its port to another program is retried.
        for attempt in 1..=5 {
            let (dp, ap) = (free_port(), free_port());
            let (dps, aps, bs) = (dp.to_string(), ap.to_string(), bootstrap.join(","));
            let mut args = vec!["--dht-port", &dps, "--api-port", &aps, "--bootstrap", &bs];
            args.extend_from_slice(extra);
            let mut proc = NodeProcess::spawn("grape.js", &args);
            loop {
                match proc.try_json(T).await {
                    Some(line) if line["event"] == "started" => return NodeGrape { proc, dht: local(dp), api: local(ap) },
                    Some(line) if line["event"] == "error" => {
                        eprintln!("node grape failed on ports {dp}/{ap} ({line}), attempt {attempt}");
                        break;
                    }
                    Some(_) => {}
                    None => {
                        eprintln!("node grape exited on ports {dp}/{ap}, attempt {attempt}");
                        break;
                    }
                }
            }
        }
        panic!("could not start a Node grape in 5 attempts")
    }

    /// The API URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.api)
    }

    /// `"127.0.0.1:<dht port>"`.
    pub fn bootstrap(&self) -> String {
        self.dht.to_string()
    }
}

/// A Rust Grape configuration on 127.0.0.1 with OS-chosen ports.
pub fn rust_config(bootstrap: Vec<String>) -> GrapeConfig {
    let mut c = GrapeConfig::default();
    let ip = "127.0.0.1".parse().expect("ip");
    c.dht_bind(ip).host(Some(ip)).dht_port(0).api_port(0).bootstrap(bootstrap);
    c
}

/// A started Rust Grape that finished its bootstrap walk.
pub async fn rust_grape(bootstrap: Vec<String>) -> Grape {
    rust_grape_with(rust_config(bootstrap)).await
}

/// [`rust_grape`] with a configuration of one's own.
pub async fn rust_grape_with(config: GrapeConfig) -> Grape {
    let g = Grape::start(config).await.expect("rust grape");
    tokio::time::timeout(T, g.ready()).await.expect("rust grape ready");
    g
}
