//! The `grape` binary: flags, exit codes, serving, clean stop on SIGTERM.
//!
//! Builds the binary first (`grenache_e2e::grapes::cli_bin`, debug profile).

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use grenache_e2e::free_port;
use grenache_e2e::grapes::grape_bin;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn run(args: &[&str]) -> Output {
    let mut child = Command::new(grape_bin()).args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn grape");
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

/// `--dht-state FILE`: written on SIGTERM with this Grape's id and the Grape it knows; read back
/// by the next start, which then knows that Grape without any `--bn`.
#[tokio::test]
async fn dht_state_is_saved_on_stop_and_used_at_the_next_start() {
    let other = {
        let mut c = grenache::grape::GrapeConfig::new();
        c.dht_bind([127, 0, 0, 1].into()).dht_port(0).api_port(0);
        grenache::grape::Grape::start(c).await.expect("start the other grape")
    };
    let dir = std::env::temp_dir().join(format!("grenache-cli-state-{}-{}", std::process::id(), free_port()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    struct Cleanup(PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = Cleanup(dir.clone());
    let state = dir.join("dht.json");
    let state_arg = state.to_string_lossy().into_owned();
    let dp = free_port().to_string();
    let spawn = |bn: String, ap: u16| {
        tokio::process::Command::new(grape_bin())
            .args(["--dp", &dp, "--aph", &ap.to_string(), "-b", "127.0.0.1", "--bn", &bn, "--dht-state", &state_arg])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn")
    };
    let stop = |child: &tokio::process::Child| {
        let pid = child.id().expect("pid");
        assert!(Command::new("kill").args(["-TERM", &pid.to_string()]).status().expect("kill").success());
    };
    let mut child = spawn(other.dht_bootstrap_addr(), free_port());
    let deadline = Instant::now() + Duration::from_secs(20);
    while other.dht().node_count() == 0 {
        assert!(Instant::now() < deadline, "the CLI grape never joined");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop(&child);
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait()).await.expect("grape did not stop").expect("wait");
    assert_eq!(status.code(), Some(0));
    let saved: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&state).expect("state written")).expect("json");
    let other_addr = other.dht_bootstrap_addr();
    assert!(saved["nodes"].as_array().expect("nodes").iter().any(|n| n["addr"] == other_addr.as_str()), "{saved}");
    assert_eq!(saved["id"].as_str().expect("id").len(), 40);
    // the restart has no --bn: an announce through it reaches the saved node at once
    let ap = free_port();
    let mut child = spawn(String::new(), ap);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let body = r#"{"data":["cli:state",4545]}"#;
        let reply = async {
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", ap)).await.ok()?;
            let req = format!("POST /announce HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
            s.write_all(req.as_bytes()).await.ok()?;
            let mut out = Vec::new();
            tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await.ok()?.ok()?;
            Some(String::from_utf8_lossy(&out).into_owned())
        }
        .await;
        if reply.is_some_and(|r| r.ends_with("\r\n\r\n1"))
            && other.lookup("cli:state").await.expect("lookup").contains(&"127.0.0.1:4545".parse().expect("addr"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "the restarted grape never reached the saved node");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop(&child);
    let _ = tokio::time::timeout(Duration::from_secs(15), child.wait()).await;
    other.stop().await;
}

/// A KRPC ping from `from` to `to`; true when a reply comes within 500 ms.
async fn pings(from: &tokio::net::UdpSocket, to: std::net::SocketAddr) -> bool {
    let _ = from.send_to(b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe", to).await;
    let mut buf = [0u8; 512];
    matches!(tokio::time::timeout(Duration::from_millis(500), from.recv_from(&mut buf)).await, Ok(Ok((n, _))) if buf[..n].starts_with(b"d1:r"))
}

/// `--dht-bind6 IP` runs the DHT dual-stack on that address (same port), `--no-ipv6` does not;
/// flags that contradict each other or are of the wrong family exit with 1.
#[tokio::test]
async fn ipv6_flags() {
    for bad in [&["--aph", "1", "--dht-bind6", "127.0.0.1"][..], &["--aph", "1", "--no-ipv6", "--dht-bind6", "::1"][..]] {
        let out = run(bad);
        assert_eq!(out.status.code(), Some(1), "{bad:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let sock4 = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("udp4");
    let sock6 = tokio::net::UdpSocket::bind("[::1]:0").await.expect("udp6");
    for (flag, dual) in [(&["--dht-bind6", "::1"][..], true), (&["--no-ipv6"][..], false)] {
        let (dp, ap) = (free_port(), free_port());
        let mut child = tokio::process::Command::new(grape_bin())
            .args(["--dp", &dp.to_string(), "--aph", &ap.to_string(), "-b", "127.0.0.1", "--dht-bind", "127.0.0.1"])
            .args(flag)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn");
        let v4: std::net::SocketAddr = format!("127.0.0.1:{dp}").parse().expect("addr");
        let v6: std::net::SocketAddr = format!("[::1]:{dp}").parse().expect("addr");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !pings(&sock4, v4).await {
            assert!(Instant::now() < deadline, "grape {flag:?} never answered over IPv4");
        }
        assert_eq!(pings(&sock6, v6).await, dual, "{flag:?}: IPv6 on the same port");
        let _ = child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(15), child.wait()).await;
    }
}
