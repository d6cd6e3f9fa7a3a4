//! Building and running the C examples (`examples/c/*.c`) against the built library.
#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How to build and run an example.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// Plain build, plain run.
    Plain,
    /// Built and linked with `-fsanitize=address`, run with leak detection.
    Asan,
    /// Plain build, run under `valgrind --leak-check=full --error-exitcode=1`.
    Valgrind,
}

impl Flavor {
    fn suffix(self) -> &'static str {
        match self {
            Flavor::Plain => "",
            Flavor::Asan => "-asan",
            Flavor::Valgrind => "-vg",
        }
    }
}

/// `target/<profile>/deps`, where cargo puts the `libgrenache.so` it builds for this test run
/// (`cargo test` does not copy it up to `target/<profile>`, `cargo build` does).
pub fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test>-<hash>
    exe.parent().expect("target/<profile>/deps").to_path_buf()
}

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The LeakSanitizer suppressions file (see its comments).
pub fn lsan_suppressions() -> PathBuf {
    root().join("examples/c/lsan.supp")
}

/// Compiles `examples/c/<name>.c` (plus `common.h`) with warnings as errors; returns the binary.
/// Built once per test process, into a folder of that process (tests run in parallel, and a
/// binary must not be rewritten while another test runs it).
pub fn build(name: &str, flavor: Flavor) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<((String, Flavor), PathBuf)>> = std::sync::Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, p)) = built.iter().find(|(k, _)| k.0 == name && k.1 == flavor) {
        return p.clone();
    }
    let p = compile(name, flavor);
    built.push(((name.to_string(), flavor), p.clone()));
    p
}

fn compile(name: &str, flavor: Flavor) -> PathBuf {
    let lib = lib_dir();
    assert!(lib.join("libgrenache.so").exists(), "libgrenache.so not built in {}", lib.display());
    let out_dir = lib.parent().expect("target/<profile>").join("c-examples").join(std::process::id().to_string());
    std::fs::create_dir_all(&out_dir).expect("mkdir c-examples");
    let out = out_dir.join(format!("{name}{}", flavor.suffix()));
    let mut cmd = Command::new("cc");
    cmd.args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic", "-g", "-O1", "-pthread"])
        .arg("-I")
        .arg(root().join("include"))
        .arg(root().join(format!("examples/c/{name}.c")))
        .arg("-o")
        .arg(&out)
        .arg("-L")
        .arg(&lib)
        .arg("-lgrenache")
        .arg(format!("-Wl,-rpath,{}", lib.display()));
    if flavor == Flavor::Asan {
        cmd.args(["-fsanitize=address", "-fno-omit-frame-pointer"]);
    }
    let o = cmd.output().expect("cc not found (scripts/test.sh installs gcc)");
    assert!(o.status.success(), "compiling {name}.c failed:\n{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    out
}

/// The command that runs a built example in `flavor`.
pub fn command(bin: &Path, flavor: Flavor, args: &[&str]) -> Command {
    let mut cmd = match flavor {
        Flavor::Valgrind => {
            let mut c = Command::new("valgrind");
            c.args(["--leak-check=full", "--error-exitcode=1", "--errors-for-leak-kinds=definite,possible", "--quiet"])
                .arg(format!("--suppressions={}", root().join("examples/c/valgrind.supp").display()))
                .arg(bin);
            c
        }
        _ => Command::new(bin),
    };
    cmd.args(args).env("LD_LIBRARY_PATH", lib_dir());
    if flavor == Flavor::Asan {
        cmd.env("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0:exitcode=23")
            .env("LSAN_OPTIONS", format!("suppressions={}:print_suppressions=0", lsan_suppressions().display()));
    }
    cmd
}

/// A running example.
#[derive(Debug)]
pub struct Running {
    /// The process.
    pub child: Child,
    /// What it is, for messages.
    pub what: String,
}

/// Starts an example with piped stdout/stderr.
pub fn spawn(name: &str, flavor: Flavor, args: &[&str], env: &[(&str, &str)]) -> Running {
    let bin = build(name, flavor);
    let mut cmd = command(&bin, flavor, args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {name} ({flavor:?}): {e}"));
    Running { child, what: format!("{name} ({flavor:?})") }
}

impl Running {
    /// Waits at most `timeout` for the exit; returns (success, stdout, stderr). Kills on timeout.
    pub fn wait(mut self, timeout: Duration) -> (bool, String, String) {
        let deadline = Instant::now() + timeout;
        let status = loop {
            match self.child.try_wait().expect("try_wait") {
                Some(s) => break Some(s),
                None if Instant::now() >= deadline => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break None;
                }
                None => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        let mut out = String::new();
        let mut err = String::new();
        if let Some(mut s) = self.child.stdout.take() {
            let _ = s.read_to_string(&mut out);
        }
        if let Some(mut s) = self.child.stderr.take() {
            let _ = s.read_to_string(&mut err);
        }
        if status.is_none() {
            err.push_str(&format!("\n[killed: {} did not exit within {timeout:?}]", self.what));
        }
        (status.is_some_and(|s| s.success()), out, err)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Builds, runs and checks one example: exit 0 within the timeout, and for the sanitizers no
/// report on stderr. Returns its stdout.
pub fn run_example(name: &str, flavor: Flavor, args: &[&str], env: &[(&str, &str)]) -> String {
    let timeout = match flavor {
        Flavor::Valgrind => Duration::from_secs(240),
        _ => Duration::from_secs(60),
    };
    let (ok, out, err) = spawn(name, flavor, args, env).wait(timeout);
    check(name, flavor, ok, &out, &err);
    out
}

/// Asserts a clean run.
pub fn check(name: &str, flavor: Flavor, ok: bool, out: &str, err: &str) {
    assert!(ok, "{name} ({flavor:?}) failed\n--- stdout\n{out}\n--- stderr\n{err}");
    assert!(!err.contains("ERROR: AddressSanitizer"), "{name}: ASan report\n{err}");
    assert!(!err.contains("ERROR: LeakSanitizer"), "{name}: LSan report\n{err}");
}

/// Two Node reference Grapes bootstrapped on each other (as in the reference README), stopped
/// when dropped.
pub struct GrapeNet {
    /// Runs the helper processes' stdout readers.
    pub rt: tokio::runtime::Runtime,
    grapes: Vec<grenache_e2e::NodeProcess>,
    /// The Grapes' HTTP API URLs.
    pub urls: Vec<String>,
}

impl std::fmt::Debug for GrapeNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrapeNet").field("urls", &self.urls).finish()
    }
}

impl GrapeNet {
    /// Starts two Node Grapes (`verify`: with an ed25519 verifier, needed for mutable puts).
    pub fn start(verify: bool) -> GrapeNet {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("rt");
        let (grapes, urls) = rt.block_on(async move {
            let d1 = grenache_e2e::free_port();
            let d2 = grenache_e2e::free_port();
            let a1 = grenache_e2e::free_tcp_port();
            let a2 = grenache_e2e::free_tcp_port();
            let mut grapes = Vec::new();
            for (d, a, b) in [(d1, a1, d2), (d2, a2, d1)] {
                let (d, a, b) = (d.to_string(), a.to_string(), format!("127.0.0.1:{b}"));
                let mut args = vec!["--dht-port", &d, "--api-port", &a, "--bootstrap", &b];
                if verify {
                    args.push("--verify");
                }
                let mut p = grenache_e2e::NodeProcess::spawn("grape.js", &args);
                loop {
                    let v = p.json(Duration::from_secs(20)).await;
                    if v["event"] == "started" {
                        break;
                    }
                }
                grapes.push(p);
            }
            // Let the two DHT nodes find each other.
            tokio::time::sleep(Duration::from_millis(500)).await;
            (grapes, vec![format!("http://127.0.0.1:{a1}"), format!("http://127.0.0.1:{a2}")])
        });
        GrapeNet { rt, grapes, urls }
    }
}

impl Drop for GrapeNet {
    fn drop(&mut self) {
        let grapes = std::mem::take(&mut self.grapes);
        self.rt.block_on(async move {
            for mut g in grapes {
                g.kill().await;
            }
        });
    }
}

/// Runs the rpc_test pair in `flavor` against a fresh Grape network: the server announces on one
/// Grape, the client looks up through the other. Returns the client's stdout.
pub fn run_rpc_pair(flavor: Flavor) -> String {
    run_rpc_pair_on(flavor, "http")
}

/// [`run_rpc_pair`] over `transport` (`"http"` or `"ws"`).
pub fn run_rpc_pair_on(flavor: Flavor, transport: &str) -> String {
    let net = GrapeNet::start(false);
    let count = 5;
    // count requests + 1 map + 1 remote-error request, all answered by the one server.
    let total = (count + 2).to_string();
    let timeout = if flavor == Flavor::Valgrind { Duration::from_secs(300) } else { Duration::from_secs(90) };
    let server = spawn("rpc_server", flavor, &[&net.urls[0], &total, transport], &[]);
    let client = spawn("rpc_client", flavor, &[&net.urls[1], &count.to_string(), transport], &[]);
    let (cok, cout, cerr) = client.wait(timeout);
    let (sok, sout, serr) = server.wait(timeout);
    check("rpc_client", flavor, cok, &cout, &cerr);
    check("rpc_server", flavor, sok, &sout, &serr);
    assert!(cout.contains("rpc_test hello -> \"world\""), "{cout}");
    assert!(sout.contains(&format!("answered {total}")), "{sout}");
    drop(net);
    cout
}

/// Runs the pub/sub pair in `flavor`: the publisher announces on one Grape, the subscriber looks
/// up through the other and waits for 10 messages.
pub fn run_pubsub_pair(flavor: Flavor) {
    run_pubsub_pair_over(flavor, "ws");
}

/// The PUB/SUB example pair over `transport` ("ws" or "zmq").
pub fn run_pubsub_pair_over(flavor: Flavor, transport: &str) {
    let net = GrapeNet::start(false);
    let timeout = if flavor == Flavor::Valgrind { Duration::from_secs(300) } else { Duration::from_secs(90) };
    let publisher = spawn("pubsub_pub", flavor, &[&net.urls[0], "10", transport], &[]);
    let sub = spawn("pubsub_sub", flavor, &[&net.urls[1], "10", transport], &[]);
    let (ok, out, err) = sub.wait(timeout);
    check("pubsub_sub", flavor, ok, &out, &err);
    assert!(out.contains("received 1"), "{out}");
    assert!(out.lines().any(|l| l.strip_prefix("binary frames ").and_then(|n| n.parse::<u32>().ok()).is_some_and(|n| n >= 1)), "{out}");
    let (ok, out, err) = publisher.wait(timeout);
    check("pubsub_pub", flavor, ok, &out, &err);
    if transport == "ws" {
        assert!(out.contains("subscriber from 127.0.0.1:"), "the verify_client hook did not run: {out}");
    }
    drop(net);
}
