//! Runs the built `grenache` binary against Node reference Grapes: lookup, announce, request,
//! map, serve, put/get (immutable and signed mutable), keygen, error names and exit codes.

#![allow(clippy::unwrap_used)]

use std::process::Stdio;
use std::time::Duration;

use grenache_e2e::{NodeProcess, free_port, free_tcp_port};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_grenache");

async fn grapes() -> (Vec<NodeProcess>, String) {
    // The Node Grapes cannot listen on port 0, so their ports are picked free beforehand; another
    // test can take one before Node binds it (the Grape then dies with EADDRINUSE), so a start
    // that fails is retried on new ports.
    'attempt: for attempt in 1..=5 {
        let (d1, d2, a1, a2) = (free_port(), free_port(), free_port(), free_port());
        let mut procs = Vec::new();
        for (dht, api, boot) in [(d1, a1, d2), (d2, a2, d1)] {
            let (dht, api, boot) = (dht.to_string(), api.to_string(), format!("127.0.0.1:{boot}"));
            let mut p = NodeProcess::spawn("grape.js", &["--dht-port", &dht, "--api-port", &api, "--bootstrap", &boot, "--verify"]);
            loop {
                match p.try_json(Duration::from_secs(30)).await {
                    Some(v) if v["event"] == "started" => break,
                    Some(_) => continue,
                    None => {
                        eprintln!("grape.js did not start on ports {dht}/{api} (taken?), attempt {attempt} of 5");
                        continue 'attempt;
                    }
                }
            }
            procs.push(p);
        }
        return (procs, format!("http://127.0.0.1:{a1}"));
    }
    panic!("the Node Grapes could not start on free ports in 5 attempts")
}

/// Runs `grenache --grape <grape> <args>`; returns (exit code, stdout JSON or Null, stderr).
async fn run(grape: &str, args: &[&str]) -> (i32, Value, String) {
    let out =
        tokio::time::timeout(Duration::from_secs(60), Command::new(BIN).arg("--grape").arg(grape).args(args).stdin(Stdio::null()).output())
            .await
            .expect("grenache finishes")
            .expect("grenache runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v = serde_json::from_str(stdout.trim()).unwrap_or(Value::Null);
    (out.status.code().unwrap_or(-1), v, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_against_grapes() {
    let (_g, grape) = grapes().await;

    // serve (echo) on a free port, announced.
    let mut serve = Command::new(BIN)
        .args(["--grape", &grape, "serve", "svc_cli", "--bind", "127.0.0.1", "--interval", "1000"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(serve.stdout.take().unwrap()).lines();
    let started: Value =
        serde_json::from_str(&tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await.unwrap().unwrap().unwrap()).unwrap();
    assert_eq!(started["event"], "started");
    let port = started["port"].as_u64().unwrap();
    let addr = format!("127.0.0.1:{port}");

    let (code, v, _) = run(&grape, &["lookup", "svc_cli"]).await;
    assert_eq!((code, v), (0, json!([addr])));
    let (code, v, _) = run(&grape, &["request", "svc_cli", r#"{"a":1}"#, "--timeout", "5000", "--retry", "2"]).await;
    assert_eq!((code, v), (0, json!({"a": 1})));
    let (code, v, _) = run(&grape, &["request", "svc_cli", "hello", "--dest", &addr, "--compress"]).await;
    assert_eq!((code, v), (0, json!("hello")));
    let (code, v, _) = run(&grape, &["map", "svc_cli", r#""hi""#]).await;
    assert_eq!((code, v), (0, json!(["hi"])));

    // A fixed-answer server on a second name.
    let mut fixed = Command::new(BIN)
        .args(["--grape", &grape, "serve", "svc_fixed", "--bind", "127.0.0.1", "--reply", r#"{"ok":true}"#])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut flines = BufReader::new(fixed.stdout.take().unwrap()).lines();
    tokio::time::timeout(Duration::from_secs(30), flines.next_line()).await.unwrap().unwrap().unwrap();
    let (code, v, _) = run(&grape, &["request", "svc_fixed", "anything"]).await;
    assert_eq!((code, v), (0, json!({"ok": true})));

    // The transport is a value: the same over WebSocket.
    let mut ws = Command::new(BIN)
        .args(["--grape", &grape, "serve", "svc_ws", "--bind", "127.0.0.1", "--transport", "ws"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut wlines = BufReader::new(ws.stdout.take().unwrap()).lines();
    tokio::time::timeout(Duration::from_secs(30), wlines.next_line()).await.unwrap().unwrap().unwrap();
    let (code, v, err) = run(&grape, &["request", "svc_ws", r#"{"over":"ws"}"#, "--transport", "ws"]).await;
    assert_eq!((code, v), (0, json!({"over": "ws"})), "{err}");

    // announce + lookup.
    let (code, v, _) = run(&grape, &["announce", "svc_other", "4321"]).await;
    assert_eq!((code, v), (0, json!({"announced": "svc_other", "port": 4321})));
    let (code, v, _) = run(&grape, &["lookup", "svc_other"]).await;
    assert_eq!((code, v), (0, json!(["127.0.0.1:4321"])));

    // put / get, immutable.
    let (code, v, _) = run(&grape, &["put", "hello world"]).await;
    assert_eq!((code, v.clone()), (0, json!("6d33adc2b6b2c14c3036feefb7fedbca1a880527")));
    let (code, v, _) = run(&grape, &["get", v.as_str().unwrap()]).await;
    assert_eq!((code, v["v"].clone()), (0, json!("hello world")));
    let (code, v, _) = run(&grape, &["get", "0000000000000000000000000000000000000000"]).await;
    assert_eq!((code, v), (0, Value::Null));

    // keygen + signed mutable put / get.
    let dir = std::env::temp_dir().join(format!("grenache-cli-{}-{}", std::process::id(), free_tcp_port()));
    std::fs::create_dir_all(&dir).unwrap();
    let kf = dir.join("key.json");
    let kfs = kf.to_string_lossy().to_string();
    let (code, v, _) = run(&grape, &["keygen", &kfs]).await;
    assert_eq!(code, 0);
    let public = v["public"].as_str().unwrap().to_string();
    let (code, _, err) = run(&grape, &["keygen", &kfs]).await;
    assert_eq!(code, 8, "keygen does not overwrite: {err}");
    let (code, hash, err) = run(&grape, &["put", "mutable v1", "--key", &kfs, "--seq", "1", "--salt", "s1"]).await;
    assert_eq!(code, 0, "{err}");
    let (code, v, _) = run(&grape, &["get", hash.as_str().unwrap(), "--salt", "s1"]).await;
    assert_eq!(code, 0);
    assert_eq!((v["v"].clone(), v["k"].clone(), v["seq"].clone()), (json!("mutable v1"), json!(public), json!(1)));
    let (code, _, err) = run(&grape, &["put", "mutable v1", "--key", &kfs, "--seq", "1", "--salt", "s1"]).await;
    assert_eq!(code, 7, "{err}");
    assert!(err.starts_with("ERR_SEQ_TOO_LOW"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);

    // Errors: names on stderr, distinct exit codes.
    let (code, _, err) = run(&grape, &["lookup", "svc_none"]).await;
    assert_eq!(code, 5);
    assert!(err.starts_with("ERR_GRAPE_LOOKUP_EMPTY"), "{err}");
    let dead = format!("http://127.0.0.1:{}", free_tcp_port());
    let (code, _, err) = run(&dead, &["lookup", "x"]).await;
    assert_eq!(code, 4);
    assert!(err.starts_with("ERR_CONNECT"), "{err}");
    let (code, _, err) = run(&grape, &["request", "x", "1", "--dest", &format!("127.0.0.1:{}", free_tcp_port())]).await;
    assert_eq!(code, 4, "{err}");
    let (code, _, _) = run(&grape, &["put", "x", "--key", "/nonexistent/key.json"]).await;
    assert_eq!(code, 8);
    let (code, _, _) = run(&grape, &["frobnicate"]).await;
    assert_eq!(code, 2);

    // SIGTERM: a graceful shutdown (stop announcing and listening, finish, exit 0).
    let pid = serve.id().unwrap().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let stopped: Value =
        serde_json::from_str(&tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await.unwrap().unwrap().unwrap()).unwrap();
    assert_eq!(stopped, json!({"event": "stopped", "drained": true}));
    assert!(tokio::time::timeout(Duration::from_secs(10), serve.wait()).await.unwrap().unwrap().success());
    assert!(tokio::net::TcpStream::connect(&addr).await.is_err(), "no longer listening");
    drop(fixed);
    drop(ws);
}

/// `grenache pub` publishes stdin lines to every subscriber; `grenache sub` prints them, here
/// through two of our own Grapes (the publisher announces on one, the subscriber looks up on the
/// other).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_pub_sub_through_rust_grapes() {
    use tokio::io::AsyncWriteExt;
    let net = grenache::grape::Testnet::start(2).await.unwrap();
    let (g0, g1) = (net.api_url(0), net.api_url(1));

    let mut publisher = Command::new(BIN)
        .args(["--grape", &g0, "pub", "chan_cli", "--bind", "127.0.0.1", "--interval", "1000", "--wait-subscribers", "1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut pub_out = BufReader::new(publisher.stdout.take().unwrap()).lines();
    let started: Value =
        serde_json::from_str(&tokio::time::timeout(Duration::from_secs(30), pub_out.next_line()).await.unwrap().unwrap().unwrap()).unwrap();
    assert_eq!(started["event"], "started", "{started}");

    let subscriber = Command::new(BIN)
        .args(["--grape", &g1, "sub", "chan_cli", "--count", "3"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = publisher.stdin.take().unwrap();
    stdin.write_all(b"hello\n{\"seq\":2}\nlast line\n").await.unwrap();
    drop(stdin);

    let out = tokio::time::timeout(Duration::from_secs(60), subscriber.wait_with_output()).await.unwrap().unwrap();
    assert!(out.status.success(), "sub exit {:?}", out.status);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n{\"seq\":2}\nlast line\n");

    let stopped: Value =
        serde_json::from_str(&tokio::time::timeout(Duration::from_secs(30), pub_out.next_line()).await.unwrap().unwrap().unwrap()).unwrap();
    assert_eq!(stopped, json!({"event": "stopped", "published": 3}));
    let status = tokio::time::timeout(Duration::from_secs(10), publisher.wait()).await.unwrap().unwrap();
    assert!(status.success());
    net.stop().await;
}

/// Starts `grenache --grape <grape> <args>` and returns the child with its first stdout line.
async fn start(grape: &str, args: &[&str]) -> (tokio::process::Child, tokio::io::Lines<BufReader<tokio::process::ChildStdout>>, Value) {
    let mut child = Command::new(BIN)
        .args(["--grape", grape])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first: Value =
        serde_json::from_str(&tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await.unwrap().unwrap().unwrap()).unwrap();
    assert_eq!(first["event"], "started", "{first}");
    (child, lines, first)
}

/// `--transport zmq` on serve, request, map, pub and sub, and `grenache proxy` from HTTP to a
/// ZeroMQ worker, through two of our Grapes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_zmq_transport_and_proxy() {
    use tokio::io::AsyncWriteExt;
    let net = grenache::grape::Testnet::start(2).await.unwrap();
    let (g0, g1) = (net.api_url(0), net.api_url(1));
    let (_serve, _l, started) =
        start(&g0, &["serve", "svc_zmq_cli", "--transport", "zmq", "--bind", "127.0.0.1", "--interval", "1000"]).await;
    let addr = format!("127.0.0.1:{}", started["port"]);
    let (code, v, err) = run(&g1, &["request", "svc_zmq_cli", r#"{"a":1}"#, "--transport", "zmq", "--retry", "3"]).await;
    assert_eq!((code, v), (0, json!({"a": 1})), "{err}");
    let (code, v, _) = run(&g1, &["request", "svc_zmq_cli", "hi", "--transport", "zmq", "--dest", &addr]).await;
    assert_eq!((code, v), (0, json!("hi")));
    let (code, v, _) = run(&g1, &["map", "svc_zmq_cli", "2", "--transport", "zmq"]).await;
    assert_eq!((code, v), (0, json!([2])));
    // TLS does not exist on ZeroMQ: a clear bad-input error.
    let (code, _, err) = run(&g1, &["serve", "x", "--transport", "zmq", "--tls-cert", "/dev/null", "--tls-key", "/dev/null"]).await;
    assert_ne!(code, 0, "{err}");

    // The proxy: HTTP callers, the ZeroMQ worker above.
    let (_proxy, _pl, p) = start(
        &g0,
        &[
            "proxy",
            "svc_http_front",
            "svc_zmq_cli",
            "--from",
            "http",
            "--to",
            "zmq",
            "--bind",
            "127.0.0.1",
            "--interval",
            "1000",
            "--timeout",
            "5000",
        ],
    )
    .await;
    assert!(p["port"].as_u64().is_some(), "{p}");
    let (code, v, err) = run(&g1, &["request", "svc_http_front", r#"{"via":"proxy"}"#, "--retry", "3"]).await;
    assert_eq!((code, v), (0, json!({"via": "proxy"})), "{err}");
    let (code, _, _) = run(&g1, &["proxy", "same", "same", "--from", "ws", "--to", "zmq"]).await;
    assert_eq!(code, 8, "a proxy to itself is bad input");

    // pub/sub over ZeroMQ.
    let (mut publisher, _publ, _) =
        start(&g0, &["pub", "chan_zmq_cli", "--transport", "zmq", "--bind", "127.0.0.1", "--interval", "1000", "--wait-subscribers", "1"])
            .await;
    let subscriber = Command::new(BIN)
        .args(["--grape", &g1, "sub", "chan_zmq_cli", "--transport", "zmq", "--count", "2"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = publisher.stdin.take().unwrap();
    stdin.write_all(b"one\ntwo\n").await.unwrap();
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(60), subscriber.wait_with_output()).await.unwrap().unwrap();
    assert!(out.status.success(), "sub exit {:?}", out.status);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "one\ntwo\n");
    net.stop().await;
}

/// `serve --sign-key` publishes proofs (through Node Grapes given an ed25519 verifier, which
/// store mutable items); `--service-key` keeps only the proven address, not one announced
/// without the key; a bad key is an invalid argument; `unannounce` on a Node Grape is a Grape
/// error (it has no such route).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_signed_announces_and_pinned_lookups() {
    let (_g, grape) = grapes().await;
    let dir = std::env::temp_dir().join(format!("grenache-cli-sign-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    struct Rm(std::path::PathBuf);
    impl Drop for Rm {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _rm = Rm(dir.clone());
    let key_file = dir.join("service.key");
    let key_path = key_file.to_str().unwrap();
    let (code, v, _) = run(&grape, &["keygen", key_path]).await;
    assert_eq!(code, 0);
    let public = v["public"].as_str().unwrap().to_string();

    let (mut serve, _lines, started) =
        start(&grape, &["serve", "svc_signed", "--bind", "127.0.0.1", "--interval", "1000", "--sign-key", key_path]).await;
    let addr = format!("127.0.0.1:{}", started["port"]);
    // A hijacker announces the name without the key.
    let (code, _, _) = run(&grape, &["announce", "svc_signed", "4999"]).await;
    assert_eq!(code, 0);
    let (code, v, _) = run(&grape, &["lookup", "svc_signed"]).await;
    assert_eq!(code, 0);
    assert_eq!(v.as_array().map(Vec::len), Some(2), "{v}");
    let (code, v, err) = run(&grape, &["--service-key", &public, "lookup", "svc_signed"]).await;
    assert_eq!((code, v), (0, json!([addr])), "{err}");
    let (code, v, err) = run(&grape, &["--service-key", &public, "request", "svc_signed", "\"hi\"", "--timeout", "5000"]).await;
    assert_eq!((code, v), (0, json!("hi")), "{err}");
    let other = grenache::link::Keypair::generate().public_hex();
    let (code, _, _) = run(&grape, &["--service-key", &other, "lookup", "svc_signed"]).await;
    assert_eq!(code, 5, "no proven address: lookup empty");
    let (code, _, err) = run(&grape, &["--service-key", "zz", "lookup", "svc_signed"]).await;
    assert_eq!(code, 8, "{err}");
    let (code, _, err) = run(&grape, &["unannounce", "svc_signed", "4999"]).await;
    assert_eq!(code, 7, "{err}");
    assert!(err.contains("ERR_REQ_NOTFOUND"), "{err}");
    let _ = serve.kill().await;
}
