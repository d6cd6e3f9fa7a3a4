//! A uTP node driven by JSON lines on stdin, for the NAT tests (run inside a network namespace
//! with `ip netns exec`). Usage: `utp_nat_peer GRAPE_URL`.
//!
//! Prints `{"ready":true,"port":P}`, then answers each command with one JSON line:
//! * `{"cmd":"lookup","broker":B,"name":N}` → `{"servers":["ip:port",...],"you":"ip:port"}`: asks
//!   the broker only (the workers are told to punch this node; this node does not punch);
//! * `{"cmd":"punch","target":"ip:port","timeout_ms":T}` → `{"ok":true}` or `{"error":...}`;
//! * `{"cmd":"punched_by"}` → `{"from":["ip:port",...]}`: every endpoint whose punch arrived;
//! * `{"cmd":"request","name":N,"broker":B,"payload":X,"timeout_ms":T}` → `{"reply":...}` or
//!   `{"error":{"name":"ERR_...","message":...}}`, with `"elapsed_ms"`.
//!
//! Exits when stdin closes.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use grenache::link::Link;
use grenache::rpc::{PeerRpcClient, PeerRpcClientConfig, RequestOptions};
use grenache::transport::utp::broker::{BrokerClient, BrokerClientConfig};
use grenache::transport::utp::{PunchEvent, UtpClient, UtpClientConfig, UtpNode};
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;

fn error(e: &grenache::Error) -> Value {
    json!({"name": e.kind().name(), "message": e.message()})
}

#[tokio::main]
async fn main() -> grenache::Result<()> {
    let grape = std::env::args().nth(1).unwrap_or_else(|| grenache::link::DEFAULT_GRAPE.to_string());
    let link = Link::with_grape(grape)?;
    let node = UtpNode::bind(SocketAddr::from(([0, 0, 0, 0], 0))).await?;
    let punched = Arc::new(Mutex::new(BTreeSet::new()));
    let mut events = node.subscribe();
    let p = punched.clone();
    tokio::spawn(async move {
        while let Ok(ev) = events.recv().await {
            if let PunchEvent::Punched { from } = ev {
                p.lock().unwrap_or_else(|e| e.into_inner()).insert(from.to_string());
            }
        }
    });
    let transport = Arc::new(UtpClient::with_node(node.clone(), UtpClientConfig::default()));
    println!("{}", json!({"ready": true, "port": node.local_addr().port()}));
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let Ok(cmd) = serde_json::from_str::<Value>(&line) else { continue };
        let broker = |cmd: &Value, punch_ms: u64| {
            let config = BrokerClientConfig {
                name: cmd["broker"].as_str().unwrap_or_default().to_string(),
                punch_timeout: Duration::from_millis(punch_ms),
                ..Default::default()
            };
            BrokerClient::new(link.clone(), node.clone(), config)
        };
        let timeout = Duration::from_millis(cmd["timeout_ms"].as_u64().unwrap_or(10_000));
        let t0 = Instant::now();
        let out = match cmd["cmd"].as_str() {
            Some("lookup") => match broker(&cmd, 0).lookup(cmd["name"].as_str().unwrap_or_default()).await {
                Ok(s) => json!({"servers": s.iter().map(|a| a.to_string()).collect::<Vec<_>>()}),
                Err(e) => json!({"error": error(&e)}),
            },
            Some("punch") => {
                let target: Option<SocketAddr> = cmd["target"].as_str().and_then(|t| t.parse().ok());
                match target {
                    Some(t) => match node.punch(t, timeout).await {
                        Ok(()) => json!({"ok": true}),
                        Err(e) => json!({"error": error(&e)}),
                    },
                    None => json!({"error": {"name": "ERR_INVALID_ARGUMENT"}}),
                }
            }
            Some("punched_by") => json!({"from": *punched.lock().unwrap_or_else(|e| e.into_inner())}),
            Some("request") => {
                let punch_ms = cmd["punch_timeout_ms"].as_u64().unwrap_or(5_000);
                let client = PeerRpcClient::new(link.clone(), transport.clone(), PeerRpcClientConfig::default())
                    .with_resolver(Arc::new(broker(&cmd, punch_ms)));
                let opts = RequestOptions { timeout: Some(timeout), ..Default::default() };
                match client.request(cmd["name"].as_str().unwrap_or_default(), &cmd["payload"], &opts).await {
                    Ok(v) => json!({"reply": v}),
                    Err(e) => json!({"error": error(&e)}),
                }
            }
            _ => json!({"error": {"name": "ERR_INVALID_ARGUMENT", "message": "unknown command"}}),
        };
        let mut out = out;
        out["elapsed_ms"] = json!(t0.elapsed().as_millis() as u64);
        println!("{out}");
    }
    Ok(())
}
