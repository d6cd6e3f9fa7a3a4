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

/// `target/<profile>`, where cargo put `libgrenache.so`.
pub fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test>-<hash>
    exe.parent().and_then(Path::parent).expect("target/<profile>").to_path_buf()
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
pub fn build(name: &str, flavor: Flavor) -> PathBuf {
    let lib = lib_dir();
    assert!(lib.join("libgrenache.so").exists(), "libgrenache.so not built in {}", lib.display());
    let out_dir = lib.join("c-examples");
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
    assert!(
        o.status.success(),
        "compiling {name}.c failed:\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

/// The command that runs a built example in `flavor`.
pub fn command(bin: &Path, flavor: Flavor, args: &[&str]) -> Command {
    let mut cmd = match flavor {
        Flavor::Valgrind => {
            let mut c = Command::new("valgrind");
            c.args(["--leak-check=full", "--error-exitcode=1", "--errors-for-leak-kinds=definite,possible", "--quiet"])
                .arg(bin);
            c
        }
        _ => Command::new(bin),
    };
    cmd.args(args).env("LD_LIBRARY_PATH", lib_dir());
    if flavor == Flavor::Asan {
        cmd.env(
            "ASAN_OPTIONS",
            "detect_leaks=1:abort_on_error=0:exitcode=23",
        )
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
