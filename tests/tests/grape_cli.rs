//! The `grape` binary: flags, exit codes, serving, clean stop on SIGTERM.
//!
//! Builds the binary first (`cargo build -p grenache-cli --bin grape`, debug profile).

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use grenache_e2e::{free_port, workspace_dir};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn grape_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let st = Command::new(cargo)
            .args(["build", "-q", "-p", "grenache-cli", "--bin", "grape"])
            .current_dir(workspace_dir())
            .status()
            .expect("run cargo build");
        assert!(st.success(), "building the grape binary failed");
        let target = std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| workspace_dir().join("target"));
        target.join("debug").join("grape")
    })
    .clone()
}

fn run(args: &[&str]) -> Output {
    let mut child =
        Command::new(grape_bin()).args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn grape");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("grape {args:?} did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn help_version_and_bad_flags() {
    let out = run(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in ["--dp", "--aph", "--bn", "--bind", "--dpa", "--dnl", "--dht_maxTables", "--dht_maxValues", "--check_maxPayloadSize"] {
        assert!(help.contains(flag), "help lacks {flag}:\n{help}");
    }
    let out = run(&["--version"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("grape "));
    for bad in [&["--aph", "x"][..], &["--dp", "70000", "--aph", "1"][..], &["--bogus"][..], &["--dp", "1"][..]] {
        let out = run(bad);
        assert_eq!(out.status.code(), Some(1), "{bad:?}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(!out.stderr.is_empty());
    }
}

#[test]
fn busy_port_exits_with_1_and_a_clear_message() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = busy.local_addr().expect("addr").port().to_string();
    let dp = free_port().to_string();
    let out = run(&["--dp", &dp, "--aph", &port, "-b", "127.0.0.1", "--bn", ""]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot bind the HTTP API") && err.contains(&port), "{err}");
}

#[tokio::test]
async fn serves_and_stops_cleanly_on_sigterm() {
    let (dp, ap) = (free_port(), free_port());
    let mut child = tokio::process::Command::new(grape_bin())
        .args(["--dp", &dp.to_string(), "--aph", &ap.to_string(), "-b", "127.0.0.1", "--bn", "", "--dc", "32"])
        .args(["--dpa", "2000", "--check_maxPayloadSize", "100", "--log-level", "debug"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    let ask = |body: &'static str| async move {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", ap)).await.ok()?;
        let req = format!("POST /lookup HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
        s.write_all(req.as_bytes()).await.ok()?;
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await.ok()?.ok()?;
        Some(String::from_utf8_lossy(&out).into_owned())
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let reply = loop {
        if let Some(r) = ask(r#"{"data":"nothing"}"#).await {
            break r;
        }
        assert!(Instant::now() < deadline, "grape never answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(reply.starts_with("HTTP/1.1 200") && reply.ends_with("[]"), "{reply}");
    // --check_maxPayloadSize 100 is honoured.
    let big = ask(r#"{"data":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#)
        .await
        .expect("reply");
    assert!(big.starts_with("HTTP/1.1 413"), "{big}");
    let pid = child.id().expect("pid");
    let st = Command::new("kill").args(["-TERM", &pid.to_string()]).status().expect("kill");
    assert!(st.success());
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait()).await.expect("grape did not stop").expect("wait");
    assert_eq!(status.code(), Some(0));
    // Both ports are free again.
    std::net::TcpListener::bind(("127.0.0.1", ap)).expect("API port freed");
    std::net::UdpSocket::bind(("0.0.0.0", dp)).expect("DHT port freed");
}
