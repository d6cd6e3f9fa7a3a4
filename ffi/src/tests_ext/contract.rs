//! The face contract: the same cases run through every face (this file: the C ABI, called as C
//! calls it; `tests/faces/contract.{rb,py,js}`: Ruby, Python, Node), each printing one JSON row
//! per case; the faces must print the same rows. Cases: a handler that answers, one that
//! answers twice (the second answer is refused), one that never answers (the server's reply
//! timeout answers), one that raises; and the errors of a client timeout, a refused connection
//! and a bad argument, with their code, name and message.
//!
//! In C the reply handle is consumed by the first answer (a second call on it is a
//! use-after-free by contract, like `free()`), so the C rows carry no `second` field: the
//! refusal of a second answer is compared across Ruby, Python and Node.

use std::ffi::{CStr, c_char, c_void};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::ptr;
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::callback::*;
use crate::client::*;
use crate::error::*;
use crate::link::*;
use crate::reply::*;
use crate::runtime::*;
use crate::server::*;

type Rx = mpsc::Receiver<(grenache_result, String, String)>;

/// A json_cb sending `(code, error message, json)` to the `Sender` behind `ud` (leaked, one per call).
unsafe extern "C" fn on_json(ud: *mut c_void, code: grenache_result, err: *const grenache_error, json: *const c_char, len: usize) {
    // SAFETY: `ud` is a `Box<Sender>` leaked by `call` for this one completion.
    let tx = unsafe { Box::from_raw(ud.cast::<mpsc::Sender<(grenache_result, String, String)>>()) };
    let message = if err.is_null() {
        String::new()
    } else {
        // SAFETY: a borrowed, NUL-terminated message, valid during the callback.
        unsafe { CStr::from_ptr(grenache_error_message(err)) }.to_string_lossy().into_owned()
    };
    // SAFETY: `json` holds `len` bytes when not NULL.
    let text = if json.is_null() {
        String::new()
    } else {
        String::from_utf8_lossy(unsafe { std::slice::from_raw_parts(json.cast::<u8>(), len) }).into_owned()
    };
    let _ = tx.send((code, message, text));
}

fn call(start: impl FnOnce(grenache_json_cb, *mut c_void) -> grenache_result) -> Rx {
    let (tx, rx) = mpsc::channel();
    let ud = Box::into_raw(Box::new(tx)).cast::<c_void>();
    assert_eq!(start(Some(on_json), ud), grenache_result::Ok);
    rx
}

fn outcome(case: &str, rx: Rx) -> Value {
    let (code, message, text) = rx.recv_timeout(Duration::from_secs(20)).expect("completion");
    if code == grenache_result::Ok {
        json!({"case": case, "result": serde_json::from_str::<Value>(&text).expect("json")})
    } else {
        json!({"case": case, "code": code as u32, "name": code.name(), "message": message})
    }
}

/// The handler: "twice" answers once (the handle is gone after it), "never" keeps the reply
/// until the server is freed, "raise" answers as a handler that failed is answered, else "world".
unsafe extern "C" fn handler(ud: *mut c_void, req: *const grenache_request, reply: *mut grenache_reply) {
    // SAFETY: `ud` is the test's `Mutex<Vec<usize>>` of kept replies; `req` is valid during the call.
    let kept = unsafe { &*ud.cast::<std::sync::Mutex<Vec<usize>>>() };
    let payload = unsafe { CStr::from_ptr(grenache_request_payload(req, ptr::null_mut())) }.to_string_lossy().into_owned();
    let answer = |text: &str| {
        let _ = grenache_reply_send(reply, text.as_ptr().cast(), text.len());
    };
    match payload.as_str() {
        "\"twice\"" => answer("\"first\""),
        "\"never\"" => kept.lock().expect("lock").push(reply as usize),
        "\"raise\"" => {
            let _ = grenache_reply_error(reply, c"ERR_HANDLER_PANIC".as_ptr());
        }
        _ => answer("\"world\""),
    }
}

fn c_rows(refused_port: u16) -> Vec<Value> {
    let mut rows = Vec::new();
    let mut rt = ptr::null_mut();
    assert_eq!(grenache_runtime_new(2, &mut rt), grenache_result::Ok);
    let mut link = ptr::null_mut();
    assert_eq!(grenache_link_new(rt, c"http://127.0.0.1:1".as_ptr(), &mut link), grenache_result::Ok);
    let kept = std::sync::Mutex::new(Vec::<usize>::new());
    for (transport, name) in [(0u32, "http"), (1, "ws")] {
        let mut opts = ptr::null_mut();
        assert_eq!(grenache_server_options_new(&mut opts), grenache_result::Ok);
        assert_eq!(grenache_server_options_set_reply_timeout(opts, 1000), grenache_result::Ok);
        let mut server = ptr::null_mut();
        let ud = (&kept as *const std::sync::Mutex<Vec<usize>>).cast_mut().cast::<c_void>();
        assert_eq!(grenache_server_new(link, transport, opts, Some(handler), ud, None, &mut server), grenache_result::Ok);
        grenache_server_options_free(opts);
        let mut client = ptr::null_mut();
        let new_client = if transport == 0 { grenache_client_new_http } else { grenache_client_new_ws };
        assert_eq!(new_client(link, ptr::null(), &mut client), grenache_result::Ok);
        let port = grenache_server_port(server);
        let ask = |payload: &str, timeout_ms: u64, dest_port: u16| {
            let dest = std::ffi::CString::new(format!("127.0.0.1:{dest_port}")).expect("dest");
            let body = format!("\"{payload}\"");
            let o = grenache_request_options { timeout_ms, retry: 0, retry_remote: false, compress: false, limit: 0, dest: dest.as_ptr() };
            call(|cb, ud| grenache_client_request_opts(client, c"contract".as_ptr(), body.as_ptr().cast(), body.len(), &o, cb, ud))
        };
        let mut these = vec![
            outcome("answers", ask("hello", 5000, port)),
            outcome("twice", ask("twice", 5000, port)),
            outcome("never", ask("never", 5000, port)),
            outcome("raises", ask("raise", 5000, port)),
            outcome("timeout", ask("never", 250, port)),
            outcome("refused", ask("hello", 5000, refused_port)),
        ];
        let mut key = ptr::null_mut();
        assert_eq!(grenache_keypair_generate(&mut key), grenache_result::Ok);
        let salt = std::ffi::CString::new("s".repeat(65)).expect("salt");
        these.push(outcome(
            "bad_argument",
            call(|cb, ud| grenache_link_put_mutable(link, key, c"\"v\"".as_ptr(), 3, 1, salt.as_ptr(), cb, ud)),
        ));
        grenache_keypair_free(key);
        rows.push(json!({"server_port": port}));
        for mut r in these {
            r["transport"] = json!(name);
            rows.push(r);
        }
        grenache_client_free(client);
        grenache_server_free(server);
        for r in kept.lock().expect("lock").drain(..) {
            grenache_reply_free(r as *mut grenache_reply);
        }
    }
    grenache_link_free(link);
    grenache_runtime_free(rt);
    rows
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs a face's contract script; its stdout rows.
fn face_rows(what: &str, mut cmd: Command) -> Vec<Value> {
    let mut child =
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap_or_else(|e| panic!("{what}: {e}"));
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while child.try_wait().expect("try_wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{what} failed\n--- stdout\n{stdout}\n--- stderr\n{}", String::from_utf8_lossy(&out.stderr));
    stdout.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{what}: {e}: {l}"))).collect()
}

/// The rows with each face's own server port written `SERVER` (the timeout message names it).
fn normalised(rows: Vec<Value>) -> Vec<Value> {
    let mut port = String::new();
    rows.into_iter()
        .filter_map(|mut r| {
            if let Some(p) = r.get("server_port") {
                port = format!("127.0.0.1:{p}");
                return None;
            }
            if let Some(m) = r.get("message").and_then(Value::as_str) {
                r["message"] = json!(m.replace(&port, "127.0.0.1:SERVER"));
            }
            Some(r)
        })
        .collect()
}

fn require(path: &Path, how: &str) -> PathBuf {
    assert!(path.exists(), "{} is missing: {how} (scripts/test.sh does it)", path.display());
    path.to_path_buf()
}

#[test]
fn every_face_keeps_the_same_contract() {
    let refused = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let refused_port = refused.local_addr().expect("addr").port();
    drop(refused);
    let c = normalised(c_rows(refused_port));
    let script = |name: &str| root().join("tests/faces").join(name);
    let port = refused_port.to_string();

    // target/<profile>/deps/<test> -> target/<profile>/libgrenache.so (beside deps/ too).
    let exe = std::env::current_exe().expect("exe");
    let deps = exe.parent().expect("deps");
    let lib = [deps.join("libgrenache.so"), deps.join("../libgrenache.so")].into_iter().find(|p| p.exists());
    let mut ruby = Command::new("ruby");
    ruby.arg(script("contract.rb")).arg(&port).env("GRENACHE_LIB", lib.expect("libgrenache.so built beside the tests"));
    let python = require(&root().join("target/pyenv/bin/python"), "a venv with the binding built by maturin develop");
    let mut py = Command::new(python);
    py.arg(script("contract.py")).arg(&port);
    require(&root().join("bindings/node/grenache.node"), "the Node addon copied from target/debug");
    let mut node = Command::new("node");
    node.arg(script("contract.js")).arg(&port);

    assert_eq!(c.len(), 14, "{c:#?}");
    for (what, cmd) in [("ruby", ruby), ("python", py), ("node", node)] {
        let rows = normalised(face_rows(what, cmd));
        assert_eq!(rows.len(), c.len(), "{what}: {rows:#?}");
        for (ours, theirs) in c.iter().zip(&rows) {
            let mut theirs = theirs.clone();
            // The one field C cannot have (see the module docs), asserted here instead.
            if theirs["case"] == "twice" {
                assert_eq!(theirs["second"], "ERR_ALREADY_USED", "{what}: {theirs}");
                theirs.as_object_mut().expect("row").remove("second");
            }
            assert_eq!(ours, &theirs, "{what} differs from C");
        }
    }
    // What the rows say, so that the contract is written down and not only compared.
    let row = |case: &str, t: &str| c.iter().find(|r| r["case"] == case && r["transport"] == t).cloned().expect("row");
    for t in ["http", "ws"] {
        assert_eq!(row("answers", t)["result"], "world");
        assert_eq!(row("twice", t)["result"], "first");
        assert_eq!((row("never", t)["name"].clone(), row("never", t)["message"].clone()), (json!("ERR_REMOTE"), json!("ERR_TIMEOUT")));
        assert_eq!(row("raises", t)["message"], "ERR_HANDLER_PANIC");
        assert_eq!((row("timeout", t)["code"].clone(), row("timeout", t)["name"].clone()), (json!(202), json!("ERR_TIMEOUT")));
        assert_eq!((row("refused", t)["code"].clone(), row("refused", t)["name"].clone()), (json!(201), json!("ERR_CONNECT")));
        assert_eq!(row("bad_argument", t)["name"], "ERR_INVALID_ARGUMENT");
    }
}
