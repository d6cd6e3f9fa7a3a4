//! Shared helpers for the Link/HTTP end-to-end tests: a pair of Node reference Grapes.
#![allow(dead_code)]
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use grenache::link::{Link, LinkConfig};
use grenache_e2e::{NodeProcess, free_port};

/// Two Node reference Grapes bootstrapped to each other; killed on drop.
pub struct Grapes {
    /// The Grape processes.
    pub procs: Vec<NodeProcess>,
    /// Their HTTP API URLs.
    pub urls: Vec<String>,
}

impl Grapes {
    /// Starts two Grapes (`verify` gives them an ed25519 verifier for mutable items).
    pub async fn start(verify: bool) -> Grapes {
        let (d1, d2, a1, a2) = (free_port(), free_port(), free_port(), free_port());
        let mut procs = Vec::new();
        let mut urls = Vec::new();
        for (dht, api, boot) in [(d1, a1, d2), (d2, a2, d1)] {
            let (dht, api, boot) = (dht.to_string(), api.to_string(), format!("127.0.0.1:{boot}"));
            let mut args = vec!["--dht-port", &dht, "--api-port", &api, "--bootstrap", &boot];
            if verify {
                args.push("--verify");
            }
            let mut p = NodeProcess::spawn("grape.js", &args);
            loop {
                let v = p.json(Duration::from_secs(30)).await;
                if v["event"] == "started" {
                    break;
                }
                assert_ne!(v["event"], "error", "grape failed: {v}");
            }
            procs.push(p);
            urls.push(format!("http://127.0.0.1:{api}"));
        }
        Grapes { procs, urls }
    }

    /// A Link to the first Grape.
    pub fn link(&self) -> Link {
        Link::new(LinkConfig::with_grape(self.urls[0].clone())).expect("link")
    }

    /// A Link to the Grape `i`.
    pub fn link_to(&self, i: usize) -> Link {
        Link::new(LinkConfig::with_grape(self.urls[i].clone())).expect("link")
    }
}

/// Polls `link.lookup(name)` until it returns exactly `want` addresses (in any order).
pub async fn wait_lookup(link: &Link, name: &str, want: usize) -> Vec<String> {
    grenache_e2e::eventually(Duration::from_secs(30), &format!("{want} peers for {name}"), || async {
        link.invalidate(name);
        match link.lookup(name).await {
            Ok(v) if v.len() >= want => Some(v),
            _ => None,
        }
    })
    .await
}

use std::net::SocketAddr;
use std::sync::Arc;

use grenache::rpc::{PeerRpcServer, Reply, Request};
use grenache::transport::http::{BodyStream, HttpServer, HttpServerConfig, StreamHandler, StreamRequest};
use serde_json::{Value, json};

/// The test handler of our servers: `"fail"` → `ERR_BOOM`; `{"sleep": ms}` → answers late;
/// `"never"` → never answers (keeps the reply); `"panic"` → panics; else an echo with the meta.
pub fn echo_handler(port_hint: u16) -> impl grenache::rpc::Handler {
    move |req: Request, reply: Reply| {
        match &*req.payload {
            Value::String(s) if s == "fail" => return reply.err("ERR_BOOM"),
            Value::String(s) if s == "panic" => panic!("test handler panics on purpose"),
            Value::String(s) if s == "never" => {
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    drop(reply);
                });
                return;
            }
            _ => {}
        }
        let meta = req.info.http.clone().unwrap_or_default();
        let result = json!({
            "from": "rust",
            "port": port_hint,
            "rid": req.rid,
            "key": req.key,
            "payload": req.payload,
            "meta": {
                "isStream": meta.is_stream,
                "compress": meta.compress,
                "infoHeaders": meta.info_headers,
                "action": meta.action,
                "args": meta.args,
            },
            "fingerprint": req.info.cert.as_ref().map(|c| c.fingerprint.clone()),
        });
        if let Some(ms) = req.payload.get("sleep").and_then(Value::as_u64) {
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                reply.ok(result);
            });
        } else {
            reply.ok(result);
        }
    }
}

/// A raw-body stream handler answering
/// `rust-stream:<rid>:<key>:<action>:<args JSON>:<content-type>:<body>`.
pub struct RawEcho;

impl StreamHandler for RawEcho {
    fn handle(&self, mut req: StreamRequest) -> grenache::rpc::BoxFuture<'static, grenache::Result<BodyStream>> {
        Box::pin(async move {
            let body = req.read_all(16 * 1024 * 1024).await?;
            let meta = req.info.http.clone().unwrap_or_default();
            let rid = req.rid.as_str().map(str::to_string).unwrap_or_else(|| req.rid.to_string());
            let ct = req.headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
            let text = format!(
                "rust-stream:{rid}:{}:{}:{}:{ct}:{}",
                req.key,
                meta.action.unwrap_or_default(),
                meta.args,
                String::from_utf8_lossy(&body)
            );
            let s: BodyStream = Box::pin(futures_util::stream::once(async move { Ok(bytes::Bytes::from(text)) }));
            Ok(s)
        })
    }
}

/// Starts one of our HTTP servers on 127.0.0.1 (port 0 = any) announcing `name` every second.
pub async fn rust_server(link: &Link, name: &str, mut cfg: HttpServerConfig, port: u16, raw: bool) -> PeerRpcServer {
    if raw {
        cfg.stream_handler = Some(Arc::new(RawEcho));
    }
    let port = if port == 0 { grenache_e2e::free_tcp_port() } else { port };
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let http = HttpServer::bind(addr, Arc::new(echo_handler(port)), cfg).await.expect("bind");
    let srv = PeerRpcServer::new(link.clone(), Arc::new(http));
    let h = srv.start_announcing(name, Duration::from_secs(1));
    h.first_result(Duration::from_secs(20)).await.expect("first announce");
    srv
}

/// A Node http_client.js driven over stdin.
pub struct NodeClient {
    /// The process.
    pub p: NodeProcess,
    next: u64,
}

impl NodeClient {
    /// Starts the Node client against `grape` (with extra args, e.g. TLS files).
    pub async fn start(grape: &str, extra: &[&str]) -> NodeClient {
        let mut args = vec!["--grape", grape];
        args.extend_from_slice(extra);
        let mut p = NodeProcess::spawn("http_client.js", &args);
        while p.json(Duration::from_secs(30)).await["event"] != "started" {}
        NodeClient { p, next: 1 }
    }

    /// Wraps a started client script of the same protocol (ws_client.js, http_client.js).
    pub fn from_process(p: NodeProcess) -> NodeClient {
        NodeClient { p, next: 1 }
    }

    /// Sends one command and returns `(err, result)`.
    pub async fn call(&mut self, mut cmd: Value) -> (Option<String>, Value) {
        let id = self.next;
        self.next += 1;
        cmd["id"] = json!(id);
        self.p.send_line(&cmd.to_string()).await;
        loop {
            let v = self.p.json(Duration::from_secs(60)).await;
            if v["id"] == json!(id) {
                return (v["err"].as_str().map(str::to_string), v["result"].clone());
            }
        }
    }
}

/// Starts Node's http_server.js on a free port announcing `name`; returns it and its port.
pub async fn node_server(grape: &str, name: &str, extra: &[&str]) -> (NodeProcess, u16) {
    let mut args = vec!["--grape", grape, "--name", name];
    args.extend_from_slice(extra);
    let (p, port, _) = NodeProcess::spawn_listening("http_server.js", &args, Duration::from_secs(30)).await;
    (p, port)
}
