//! Support for the end-to-end tests: locating and starting the Node.js reference peers (installed
//! from npm into `tests/interop/node_modules` by `scripts/test.sh`), free ports, and timeouts.
//!
//! Node helper scripts live in `tests/interop/*.js`. By convention a script prints one JSON object
//! per line on stdout (the first one says it is ready, with the ports it bound), and exits when its
//! stdin closes, so a test that drops its [`NodeProcess`] never leaves a process behind.

pub mod bridge;
pub mod grapes;
pub mod lossy;

use std::net::{TcpListener, UdpSocket};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

/// The folder with the pinned Node reference peers and the helper scripts.
pub fn interop_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("interop")
}

/// The workspace root.
pub fn workspace_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Panics with a clear message unless the Node reference peers are installed.
pub fn require_node_peers() {
    let nm = interop_dir().join("node_modules").join("grenache-grape");
    assert!(nm.exists(), "the Node reference peers are not installed: run `npm ci --prefix tests/interop` (scripts/test.sh does it)");
}

/// The Python interpreter with pyzmq (the real libzmq) installed: `$GRENACHE_PYZMQ_PYTHON`, else
/// `target/zmqenv/bin/python` (made by `scripts/test.sh`). Panics with how to make it when missing.
pub fn pyzmq_python() -> PathBuf {
    let p = std::env::var_os("GRENACHE_PYZMQ_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_dir().join("target").join("zmqenv").join("bin").join("python"));
    assert!(
        p.exists(),
        "no Python with pyzmq at {}: run `python3 -m venv target/zmqenv && target/zmqenv/bin/pip install pyzmq==27.1.0` (scripts/test.sh does it)",
        p.display()
    );
    p
}

/// A TCP port that was free a moment ago (bound to 127.0.0.1:0, then released).
pub fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("no free TCP port")
}

/// A UDP port that was free a moment ago.
pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()).map(|a| a.port()).expect("no free UDP port")
}

/// A port free for both TCP and UDP a moment ago.
pub fn free_port() -> u16 {
    for _ in 0..100 {
        let p = free_tcp_port();
        if UdpSocket::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
    panic!("no port free for both TCP and UDP")
}

/// A running Node helper script. Killed when dropped.
#[derive(Debug)]
pub struct NodeProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::UnboundedReceiver<String>,
    name: String,
}

impl NodeProcess {
    /// Starts `node tests/interop/<script> <args...>` with the reference peers on `NODE_PATH`.
    /// Its stderr is passed through (visible with `--nocapture`).
    pub fn spawn(script: &str, args: &[&str]) -> NodeProcess {
        require_node_peers();
        let dir = interop_dir();
        let mut cmd = Command::new("node");
        cmd.env("NODE_PATH", dir.join("node_modules"));
        Self::spawn_with(cmd, script, args)
    }

    /// Starts `tests/interop/<script>` (a Python script) with the Python that has pyzmq (see
    /// [`pyzmq_python`]), under the same conventions as the Node scripts.
    pub fn spawn_python(script: &str, args: &[&str]) -> NodeProcess {
        Self::spawn_with(Command::new(pyzmq_python()), script, args)
    }

    fn spawn_with(mut cmd: Command, script: &str, args: &[&str]) -> NodeProcess {
        let dir = interop_dir();
        let mut child = cmd
            .arg(dir.join(script))
            .args(args)
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {script}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let stdin = child.stdin.take();
        let (tx, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut r = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = r.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        NodeProcess { child, stdin, lines, name: script.to_string() }
    }

    /// The next stdout line, or a panic after `timeout`.
    pub async fn line(&mut self, timeout: Duration) -> String {
        match tokio::time::timeout(timeout, self.lines.recv()).await {
            Ok(Some(l)) => l,
            Ok(None) => panic!("{}: stdout closed (process exited?)", self.name),
            Err(_) => panic!("{}: no output within {timeout:?}", self.name),
        }
    }

    /// The next stdout line that parses as JSON (other lines are skipped), or a panic after `timeout`.
    pub async fn json(&mut self, timeout: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let l = self.line(left).await;
            if let Ok(v) = serde_json::from_str::<Value>(&l) {
                return v;
            }
        }
    }

    /// The next stdout line that parses as JSON, or `None` when the process exited first or
    /// `timeout` passed.
    pub async fn try_json(&mut self, timeout: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let l = tokio::time::timeout_at(deadline, self.lines.recv()).await.ok()??;
            if let Ok(v) = serde_json::from_str::<Value>(&l) {
                return Some(v);
            }
        }
    }

    /// Starts a Node server script on a TCP port chosen here (`--port P` is appended to
    /// `args`) and waits for its `{"event":"started"}` line. The reference servers cannot
    /// listen on port 0 and report the port, so the port is picked free beforehand; another
    /// program can take it before Node binds it (the script then dies with `EADDRINUSE`), so a
    /// start that fails is retried on a new port, up to 5 times. Returns the process, its port
    /// and the started line.
    pub async fn spawn_listening(script: &str, args: &[&str], timeout: Duration) -> (NodeProcess, u16, Value) {
        for attempt in 1..=5 {
            let port = free_tcp_port();
            let ps = port.to_string();
            let mut all: Vec<&str> = args.to_vec();
            all.extend_from_slice(&["--port", &ps]);
            let mut p = NodeProcess::spawn(script, &all);
            loop {
                match p.try_json(timeout).await {
                    Some(v) if v["event"] == "started" => return (p, port, v),
                    Some(v) if v["event"] == "error" => panic!("{script} failed: {v}"),
                    Some(_) => continue,
                    None => {
                        eprintln!("{script}: did not start on port {port} (taken?), attempt {attempt} of 5");
                        break;
                    }
                }
            }
        }
        panic!("{script}: could not start on a free port in 5 attempts")
    }

    /// Writes one line to the script's stdin (for scripts that take commands).
    pub async fn send_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(line.as_bytes()).await.expect("write to node stdin");
        stdin.write_all(b"\n").await.expect("write to node stdin");
        stdin.flush().await.expect("flush node stdin");
    }

    /// Kills the process now.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// The OS process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}

/// Polls `f` every 20 ms until it returns `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
