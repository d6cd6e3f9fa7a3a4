//! Grapes for the end-to-end tests: Node reference Grapes (grenache-grape 1.0.0, `grape.js` in
//! `tests/interop`) and Rust Grapes on 127.0.0.1, raw calls to a Grape's HTTP API, and the `grape`
//! binary of this workspace.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use grenache::grape::{Grape, GrapeConfig};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{NodeProcess, free_port, workspace_dir};

/// The wait for anything in these tests.
pub const T: Duration = Duration::from_secs(30);

/// `127.0.0.1:p`.
pub fn local(p: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], p))
}

/// One HTTP/1.1 POST with `Connection: close`; returns the status and the body. A Grape that
/// cannot be reached or does not answer within [`T`] gives status 0 and the reason as the body,
/// so polling loops go on and assertions show why.
pub async fn post(addr: SocketAddr, path: &str, body: &str) -> (u16, String) {
    let fut = async {
        let mut s = TcpStream::connect(addr).await?;
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await?;
        let text = String::from_utf8_lossy(&out).into_owned();
        let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        std::io::Result::Ok((status, body))
    };
    match tokio::time::timeout(T, fut).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => (0, format!("POST {path} to {addr}: {e}")),
        Err(_) => (0, format!("POST {path} to {addr}: no answer within {T:?}")),
    }
}

/// `POST <path> {"rid","data"}`.
pub async fn call(addr: SocketAddr, path: &str, data: Value) -> (u16, String) {
    post(addr, path, &json!({"rid": "e2e", "data": data}).to_string()).await
}

/// `/lookup` through the Grape at `addr`, sorted; empty when it failed.
pub async fn lookup(addr: SocketAddr, name: &str) -> Vec<String> {
    let (_, body) = call(addr, "/lookup", json!(name)).await;
    let mut v: Vec<String> = serde_json::from_str(&body).unwrap_or_default();
    v.sort();
    v
}

/// `/announce` of `name` on `port` through the Grape at `addr`; the reply's body.
pub async fn announce(addr: SocketAddr, name: &str, port: u16) -> String {
    call(addr, "/announce", json!([name, port])).await.1
}

/// A Node reference Grape (grenache-grape 1.0.0) on ports picked free beforehand: the reference
/// cannot bind port 0 and report it. Killed when dropped.
#[derive(Debug)]
pub struct NodeGrape {
    /// The process.
    pub proc: NodeProcess,
    /// Its DHT (UDP) address.
    pub dht: SocketAddr,
    /// Its HTTP API address.
    pub api: SocketAddr,
}

impl NodeGrape {
    /// Starts one bootstrapped to `bootstrap`, with `extra` arguments for `grape.js`. Another
    /// program may take a port between its choice and Node's bind: such a start is retried on
    /// new ports, up to 5 times.
    pub async fn start(bootstrap: &[String], extra: &[&str]) -> NodeGrape {
        for attempt in 1..=5 {
            if let Some(g) = Self::start_on(free_port(), bootstrap, extra).await {
                return g;
            }
            eprintln!("node grape lost its ports, attempt {attempt} of 5");
        }
        panic!("could not start a Node grape in 5 attempts")
    }

    /// Starts one on DHT port `dht_port` (others may have been told to bootstrap from it), once;
    /// `None` when it could not bind its ports.
    pub async fn start_on(dht_port: u16, bootstrap: &[String], extra: &[&str]) -> Option<NodeGrape> {
        let api_port = free_port();
        let (dps, aps, bs) = (dht_port.to_string(), api_port.to_string(), bootstrap.join(","));
        let mut args = vec!["--dht-port", &dps, "--api-port", &aps, "--bootstrap", &bs];
        args.extend_from_slice(extra);
        let mut proc = NodeProcess::spawn("grape.js", &args);
        loop {
            match proc.try_json(T).await {
                Some(line) if line["event"] == "started" => {
                    return Some(NodeGrape { proc, dht: local(dht_port), api: local(api_port) });
                }
                Some(line) if line["event"] == "error" => {
                    eprintln!("node grape failed on ports {dht_port}/{api_port}: {line}");
                    return None;
                }
                Some(_) => {}
                None => {
                    eprintln!("node grape exited on ports {dht_port}/{api_port}");
                    return None;
                }
            }
        }
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
    let ip = [127, 0, 0, 1].into();
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

/// The `grape` binary of this workspace (debug profile), built on first use ([`cli_bin`]).
pub fn grape_bin() -> PathBuf {
    cli_bin("grape")
}

/// A binary of this workspace's CLI (`grape`, `grenache`; debug profile), built on first use.
///
/// Built the way the test command builds the workspace (`--workspace --all-targets`): a build of
/// the one package resolves the dependencies' features differently, so it recompiled and relinked
/// the binaries (15-26 s per test binary) although the test command had just built them; this
/// way it is a no-op there.
pub fn cli_bin(name: &str) -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        // Tests run as parallel processes that all build the binaries; a build that loses a race
        // on the build directory's lock or cache fails once and succeeds when tried again.
        let built = (0..3).any(|_| {
            Command::new(&cargo)
                .args(["build", "-q", "--workspace", "--all-targets", "--locked"])
                .current_dir(workspace_dir())
                .status()
                .expect("run cargo build")
                .success()
        });
        assert!(built, "building the CLI binaries failed");
        let target = std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| workspace_dir().join("target"));
        target.join("debug")
    })
    .join(name)
}
