//! The Ruby binding (`bindings/ruby`, through the `ffi` gem) and its examples (`examples/ruby/`)
//! against real peers: the C examples, the Node reference clients and servers
//! (grenache-nodejs-http, -ws) and Node Grapes; plus the binding's own minitest suite.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;
use support::{Flavor, GrapeNet, Running, check, lib_dir, root, spawn};

/// Starts `ruby <script>` (a path relative to the workspace root) with the built library.
fn ruby_at(script: &str, args: &[&str]) -> Running {
    let child = Command::new("ruby")
        .arg(root().join(script))
        .args(args)
        .env("GRENACHE_LIB", lib_dir().join("libgrenache.so"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ruby not found (scripts/test.sh installs ruby and ruby-ffi)");
    let name = Path::new(script).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    Running { child, what: format!("ruby {name}") }
}

/// Starts one of `examples/ruby/`.
fn ruby(script: &str, args: &[&str]) -> Running {
    ruby_at(&format!("examples/ruby/{script}"), args)
}

/// Waits for a Ruby script and asserts a clean exit; returns its stdout.
fn ruby_ok(r: Running, what: &str, timeout: Duration) -> String {
    let (ok, out, err) = r.wait(timeout);
    check(what, Flavor::Plain, ok, &out, &err);
    out
}

#[test]
fn ruby_client_calls_c_server() {
    let net = GrapeNet::start(false);
    // 3 hellos + 1 map + 1 bye.
    let server = spawn("rpc_server", Flavor::Plain, &[&net.urls[0], "5"], &[]);
    let out = ruby_ok(ruby("rpc_client.rb", &[&net.urls[1], "3"]), "rpc_client.rb", Duration::from_secs(90));
    assert!(out.contains("rpc_test hello -> \"world\""), "{out}");
    assert!(out.contains("map -> [\"world\"]"), "{out}");
    assert!(out.contains("Grenache::RemoteError: ERR_UNKNOWN_REQUEST"), "{out}");
    let (ok, out, err) = server.wait(Duration::from_secs(30));
    check("rpc_server", Flavor::Plain, ok, &out, &err);
}

#[test]
fn c_client_calls_ruby_server() {
    let net = GrapeNet::start(false);
    // rpc_client sends 2 hellos, 1 map and 1 bye.
    let server = ruby("rpc_server.rb", &[&net.urls[0], "4"]);
    let client = spawn("rpc_client", Flavor::Plain, &[&net.urls[1], "2"], &[]);
    let (ok, out, err) = client.wait(Duration::from_secs(90));
    check("rpc_client", Flavor::Plain, ok, &out, &err);
    let out = ruby_ok(server, "rpc_server.rb", Duration::from_secs(30));
    assert!(out.contains("answered 4"), "{out}");
}

#[test]
fn ruby_ws_client_calls_c_ws_server() {
    let net = GrapeNet::start(false);
    let server = spawn("rpc_server", Flavor::Plain, &[&net.urls[0], "5", "ws"], &[]);
    let out = ruby_ok(ruby("rpc_client.rb", &[&net.urls[1], "3", "ws"]), "rpc_client.rb ws", Duration::from_secs(90));
    assert!(out.contains("rpc_test hello -> \"world\""), "{out}");
    assert!(out.contains("ERR_UNKNOWN_REQUEST"), "{out}");
    let (ok, out, err) = server.wait(Duration::from_secs(30));
    check("rpc_server ws", Flavor::Plain, ok, &out, &err);
}

#[test]
fn c_ws_client_calls_ruby_ws_server() {
    let net = GrapeNet::start(false);
    let server = ruby("rpc_server.rb", &[&net.urls[0], "4", "ws"]);
    let client = spawn("rpc_client", Flavor::Plain, &[&net.urls[1], "2", "ws"], &[]);
    let (ok, out, err) = client.wait(Duration::from_secs(90));
    check("rpc_client ws", Flavor::Plain, ok, &out, &err);
    let out = ruby_ok(server, "rpc_server.rb ws", Duration::from_secs(30));
    assert!(out.contains("answered 4"), "{out}");
}

/// Drives a Node reference client (`http_client.js` or `ws_client.js`) against the Ruby
/// rpc_server.rb: hello, a handler that raises (answered ERR_HANDLER_PANIC, the server goes
/// on), hello again, and a ReplyError.
fn node_client_against_ruby_server(script: &'static str, transport: &str) {
    let net = GrapeNet::start(false);
    let server = ruby("rpc_server.rb", &[&net.urls[0], "4", transport]);
    let url = net.urls[1].clone();
    net.rt.block_on(async move {
        let mut node = grenache_e2e::NodeProcess::spawn(script, &["--grape", &url]);
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
        let mut ask = async |payload: &str| {
            node.send_line(
                &json!({"id": 0, "op": "request", "key": "rpc_test", "payload": payload, "opts": {"timeout": 10000}}).to_string(),
            )
            .await;
            node.json(Duration::from_secs(30)).await
        };
        let a = ask("raise").await;
        assert_eq!(a["err"], json!("ERR_HANDLER_PANIC"), "{a}");
        let a = ask("hello").await;
        assert_eq!(a["result"], json!("world"), "the server did not survive its handler's exception: {a}");
        let a = ask("bye").await;
        assert_eq!(a["err"], json!("ERR_UNKNOWN_REQUEST"), "{a}");
    });
    let (ok, out, err) = server.wait(Duration::from_secs(30));
    check("rpc_server.rb", Flavor::Plain, ok, &out, &err);
    assert!(err.contains("a bug in the handler"), "the handler's exception was not reported: {err}");
}

#[test]
fn ruby_server_answers_node_http_client() {
    node_client_against_ruby_server("http_client.js", "http");
}

#[test]
fn ruby_ws_server_answers_node_ws_client() {
    node_client_against_ruby_server("ws_client.js", "ws");
}

#[test]
fn ruby_ws_client_calls_node_ws_server() {
    let net = GrapeNet::start(false);
    let url0 = net.urls[0].clone();
    let node = net.rt.block_on(async move {
        let (node, _port, _) = grenache_e2e::NodeProcess::spawn_listening(
            "ws_server.js",
            &["--grape", &url0, "--name", "ruby_ws_interop"],
            Duration::from_secs(20),
        )
        .await;
        node
    });
    let out = ruby_ok(
        ruby_at("bindings/ruby/test/interop/ws_client_node.rb", &[&net.urls[1], "ruby_ws_interop"]),
        "ws_client_node.rb",
        Duration::from_secs(90),
    );
    assert!(out.contains("ok fail -> Grenache::RemoteError ERR_BOOM"), "{out}");
    assert!(out.contains("ok sleep -> Grenache::TimeoutError ERR_TIMEOUT"), "{out}");
    assert!(out.contains("done"), "{out}");
    drop(node);
}

#[test]
fn ruby_link_lookup_announce_put_get() {
    let net = GrapeNet::start(true);
    let out =
        ruby_ok(ruby_at("bindings/ruby/test/interop/link_dht.rb", &[&net.urls[0], &net.urls[1]]), "link_dht.rb", Duration::from_secs(120));
    assert!(out.contains("ok wrong cas -> Grenache::CasMismatchError"), "{out}");
    assert!(out.contains("done"), "{out}");
}

#[test]
fn ruby_publisher_to_ruby_and_c_subscribers() {
    let net = GrapeNet::start(false);
    // The publisher waits for both subscribers before publishing, so each gets every message.
    let publisher = ruby("pubsub_pub.rb", &[&net.urls[0], "10", "2"]);
    let c_sub = spawn("pubsub_sub", Flavor::Plain, &[&net.urls[1], "10"], &[]);
    let rb_sub = ruby("pubsub_sub.rb", &[&net.urls[1], "10"]);
    let (ok, out, err) = c_sub.wait(Duration::from_secs(90));
    check("pubsub_sub", Flavor::Plain, ok, &out, &err);
    assert!(out.contains("received 10"), "{out}");
    let out = ruby_ok(rb_sub, "pubsub_sub.rb", Duration::from_secs(90));
    assert!(out.contains("received 10"), "{out}");
    assert!(out.lines().any(|l| l.strip_prefix("binary frames ").and_then(|n| n.parse::<u32>().ok()).is_some_and(|n| n >= 1)), "{out}");
    let pout = ruby_ok(publisher, "pubsub_pub.rb", Duration::from_secs(90));
    assert!(pout.contains("subscriber from 127.0.0.1:"), "the verify_client hook did not run: {pout}");
    assert!(pout.contains("published 10"), "{pout}");
}

#[test]
fn ruby_minitest_suite() {
    let (ok, out, err) = ruby_at("bindings/ruby/test/test_grenache.rb", &[]).wait(Duration::from_secs(180));
    assert!(ok && out.contains(" 0 failures, 0 errors"), "minitest failed\n--- stdout\n{out}\n--- stderr\n{err}");
}

#[test]
fn ruby_local_network_example() {
    let out = ruby_ok(ruby("ws_local_network.rb", &[]), "ws_local_network.rb", Duration::from_secs(60));
    assert!(out.contains("rpc_test -> world"), "{out}");
    assert!(out.contains("version 2 (seq 2)"), "{out}");
}
