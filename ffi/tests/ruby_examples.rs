//! The Ruby examples (`examples/ruby/`, through the `ffi` gem) against the C examples and the
//! Node reference client, over a local network of Node Grapes.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;
use support::{Flavor, GrapeNet, Running, check, lib_dir, root, spawn};

fn ruby(script: &str, args: &[&str]) -> Running {
    let child = Command::new("ruby")
        .arg(root().join("examples/ruby").join(script))
        .args(args)
        .env("GRENACHE_LIB", lib_dir().join("libgrenache.so"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ruby not found (scripts/test.sh installs ruby and ruby-ffi)");
    Running { child, what: format!("ruby {script}") }
}

#[test]
fn ruby_client_calls_c_server() {
    let net = GrapeNet::start(false);
    // 3 hellos + 1 map + 1 bye.
    let server = spawn("rpc_server", Flavor::Plain, &[&net.urls[0], "5"], &[]);
    let (ok, out, err) = ruby("rpc_client.rb", &[&net.urls[1], "3"]).wait(Duration::from_secs(90));
    check("rpc_client.rb", Flavor::Plain, ok, &out, &err);
    assert!(out.contains("rpc_test hello -> \"world\""), "{out}");
    assert!(out.contains("ERR_UNKNOWN_REQUEST"), "{out}");
    let (ok, out, err) = server.wait(Duration::from_secs(30));
    check("rpc_server", Flavor::Plain, ok, &out, &err);
}

/// Over WebSocket: the Ruby client (request, lookup, map) against the C server, and the Node
/// reference's WS client against the Ruby server, which then shuts down gracefully.
#[test]
fn ruby_over_websocket_both_ways() {
    let net = GrapeNet::start(false);
    // 3 hellos + 1 map + 1 bye.
    let server = spawn("rpc_server", Flavor::Plain, &[&net.urls[0], "5", "ws"], &[]);
    let (ok, out, err) = ruby("rpc_client.rb", &[&net.urls[1], "3", "ws"]).wait(Duration::from_secs(90));
    check("rpc_client.rb ws", Flavor::Plain, ok, &out, &err);
    assert!(out.contains("rpc_test hello -> \"world\""), "{out}");
    assert!(out.contains("map rpc_test hello -> [\"world\"]"), "{out}");
    assert!(out.contains("lookup rpc_test -> [\"127.0.0.1:"), "{out}");
    assert!(out.contains("ERR_UNKNOWN_REQUEST"), "{out}");
    let (ok, out, err) = server.wait(Duration::from_secs(30));
    check("rpc_server ws", Flavor::Plain, ok, &out, &err);

    let net = GrapeNet::start(false);
    let server = ruby("rpc_server.rb", &[&net.urls[0], "2", "ws"]);
    let url = net.urls[1].clone();
    net.rt.block_on(async move {
        let mut node = grenache_e2e::NodeProcess::spawn("ws_client.js", &["--grape", &url]);
        assert_eq!(node.json(Duration::from_secs(20)).await["event"], "started");
        let mut id = 0;
        let answer = loop {
            id += 1;
            let cmd = json!({"id": id, "op": "request", "key": "rpc_test", "payload": "hello", "opts": {"timeout": 10000}});
            node.send_line(&cmd.to_string()).await;
            let a = loop {
                let v = node.json(Duration::from_secs(30)).await;
                if v.get("id").is_some() {
                    break v;
                }
            };
            if a["err"].is_null() || id > 150 {
                break a;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert_eq!(answer["result"], json!("world"), "{answer}");
        node.send_line(&json!({"id": 0, "op": "request", "key": "rpc_test", "payload": "bye", "opts": {"timeout": 10000}}).to_string()).await;
        let a = loop {
            let v = node.json(Duration::from_secs(30)).await;
            if v.get("id").is_some() {
                break v;
            }
        };
        assert_eq!(a["err"], json!("ERR_UNKNOWN_REQUEST"), "{a}");
    });
    let (ok, out, err) = server.wait(Duration::from_secs(30));
    check("rpc_server.rb ws", Flavor::Plain, ok, &out, &err);
    assert!(out.contains("shutdown: drained"), "{out}");
}

#[test]
fn c_client_calls_ruby_server() {
    let net = GrapeNet::start(false);
    // rpc_client sends 2 hellos, 1 map and 1 bye.
    let server = ruby("rpc_server.rb", &[&net.urls[0], "4"]);
    let client = spawn("rpc_client", Flavor::Plain, &[&net.urls[1], "2"], &[]);
    let (ok, out, err) = client.wait(Duration::from_secs(90));
    check("rpc_client", Flavor::Plain, ok, &out, &err);
    let (ok, out, err) = server.wait(Duration::from_secs(30));
    check("rpc_server.rb", Flavor::Plain, ok, &out, &err);
    assert!(out.contains("answered 4"), "{out}");
}

#[test]
fn ruby_server_answers_node_client() {
    let net = GrapeNet::start(false);
    let server = ruby("rpc_server.rb", &[&net.urls[0], "2"]);
    let url = net.urls[1].clone();
    net.rt.block_on(async move {
        let mut node = grenache_e2e::NodeProcess::spawn("http_client.js", &["--grape", &url]);
        assert_eq!(node.json(Duration::from_secs(20)).await["event"], "started");
        let mut id = 0;
        let answer = loop {
            id += 1;
            let cmd = json!({"id": id, "op": "request", "key": "rpc_test", "payload": "hello", "opts": {"timeout": 10000}});
            node.send_line(&cmd.to_string()).await;
            let a = node.json(Duration::from_secs(30)).await;
            if a["err"].is_null() || id > 150 {
                break a;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert_eq!(answer["result"], json!("world"), "{answer}");
        node.send_line(&json!({"id": 0, "op": "request", "key": "rpc_test", "payload": "bye", "opts": {"timeout": 10000}}).to_string()).await;
        let a = node.json(Duration::from_secs(30)).await;
        assert_eq!(a["err"], json!("ERR_UNKNOWN_REQUEST"), "{a}");
    });
    let (ok, out, err) = server.wait(Duration::from_secs(30));
    check("rpc_server.rb", Flavor::Plain, ok, &out, &err);
}
