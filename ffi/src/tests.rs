//! Rust tests that call the exported functions directly: NULLs, invalid UTF-8, panics, double
//! use, the reply handle's exactly-once contract.

use std::ffi::{CStr, c_char, c_void};
use std::ptr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use grenache_core::ErrorKind;
use grenache_core::embed::{Runtime, RuntimeOptions};
use grenache_core::rpc::{Request, RequestInfo, dispatch};
use serde_json::json;

use crate::error::*;
use crate::panic::ffi_panic_boundary;
use crate::reply::*;
use crate::runtime::*;
use crate::version::grenache_version;

fn cstr(p: *const c_char) -> String {
    assert!(!p.is_null());
    unsafe { CStr::from_ptr(p) }.to_str().expect("utf8").to_string()
}

#[test]
fn every_error_kind_has_a_c_code_with_the_same_number_and_name() {
    assert_eq!(grenache_result::Ok as u32, 0);
    assert_eq!(cstr(grenache_result_name(0)), "OK");
    for k in ErrorKind::ALL {
        let r = grenache_result::from_u32(k.code()).unwrap_or_else(|| panic!("no C code for {k:?}"));
        assert_eq!(format!("{r:?}"), format!("{k:?}"), "variant name of code {}", k.code());
        assert_eq!(r.kind(), Some(*k));
        assert_eq!(cstr(grenache_result_name(k.code())), k.name());
    }
    // And nothing in C that core does not know.
    for r in grenache_result::ALL {
        if *r != grenache_result::Ok {
            assert!(r.kind().is_some(), "{r:?} has no core kind");
        }
    }
    assert_eq!(grenache_result::ALL.len(), ErrorKind::ALL.len() + 1);
    assert!(grenache_result_name(1).is_null());
    assert!(grenache_result_name(u32::MAX).is_null());
}

#[test]
fn result_message_checks_buffers_and_writes_only_on_success() {
    let mut buf = [0x55 as c_char; 256];
    let mut n = 12345usize;
    let rc = grenache_result_message(202, buf.as_mut_ptr(), buf.len(), &mut n);
    assert_eq!(rc, grenache_result::Ok);
    assert_eq!(cstr(buf.as_ptr()), "the operation timed out");
    assert_eq!(n, "the operation timed out".len());

    let mut small = [0x55 as c_char; 4];
    let mut n2 = 7usize;
    assert_eq!(grenache_result_message(202, small.as_mut_ptr(), 4, &mut n2), grenache_result::BufferTooSmall);
    assert_eq!(n2, 7);
    assert!(small.iter().all(|c| *c == 0x55));
    assert_eq!(grenache_result_message(202, ptr::null_mut(), 4, &mut n2), grenache_result::NullParameter);
    assert_eq!(grenache_result_message(202, buf.as_mut_ptr(), 4, ptr::null_mut()), grenache_result::NullParameter);
    assert_eq!(grenache_result_message(7, buf.as_mut_ptr(), 256, &mut n2), grenache_result::InvalidArgument);
    for r in grenache_result::ALL {
        assert_eq!(grenache_result_message(*r as u32, buf.as_mut_ptr(), 256, &mut n), grenache_result::Ok);
    }
}

#[test]
fn version_matches_cargo() {
    assert_eq!(cstr(grenache_version()), format!("grenache/{}", env!("CARGO_PKG_VERSION")));
}

extern "C" fn panics() -> grenache_result {
    ffi_panic_boundary! {
        if std::hint::black_box(true) {
            panic!("test panic");
        }
        grenache_result::Ok
    }
}

extern "C" fn panics_ptr() -> *const c_char {
    ffi_panic_boundary! {
        if std::hint::black_box(true) {
            panic!("test panic");
        }
        c"x".as_ptr()
    }
}

#[test]
fn panics_become_codes_or_defaults() {
    assert_eq!(panics(), grenache_result::Panic);
    assert!(panics_ptr().is_null());
}

#[test]
fn error_detail_accessors() {
    let e = grenache_error::from_error(&grenache_core::Error::new(ErrorKind::Remote, "ERR_BOOM"));
    assert_eq!(grenache_error_code(&e), grenache_result::Remote);
    assert_eq!(cstr(grenache_error_message(&e)), "ERR_BOOM");
    assert_eq!(grenache_error_code(ptr::null()), grenache_result::NullParameter);
    assert!(grenache_error_message(ptr::null()).is_null());
    let e = grenache_error::from_error(&grenache_core::Error::new(ErrorKind::Timeout, ""));
    assert_eq!(cstr(grenache_error_message(&e)), ErrorKind::Timeout.message(), "no detail: the code's message");
}

#[test]
fn runtime_new_and_free() {
    assert_eq!(grenache_runtime_new(1, ptr::null_mut()), grenache_result::NullParameter);
    let mut rt: *mut grenache_runtime = ptr::null_mut();
    assert_eq!(grenache_runtime_new(100_000, &mut rt), grenache_result::InvalidArgument);
    assert!(rt.is_null(), "out-param written on failure");
    assert_eq!(grenache_runtime_new(2, &mut rt), grenache_result::Ok);
    assert!(!rt.is_null());
    grenache_runtime_free(rt);
    grenache_runtime_free(ptr::null_mut());
}

// --- The reply handle, through the core dispatcher ------------------------------------------

fn req(payload: serde_json::Value) -> Request {
    Request { rid: json!("r1"), key: "rpc_test".into(), payload: payload.into(), info: RequestInfo::default() }
}

fn test_rt() -> Runtime {
    Runtime::new(RuntimeOptions { worker_threads: 2, ..Default::default() }).expect("rt")
}

fn run(
    rt: &Runtime,
    cb: grenache_handler_cb,
    ud: *mut c_void,
    free: grenache_free_cb,
    payload: serde_json::Value,
) -> Result<serde_json::Value, String> {
    let h = c_handler(cb, ud, free).expect("handler");
    rt.block_on(Duration::from_secs(5), async move { Ok(dispatch(&*h, req(payload), None).await) }).expect("dispatch")
}

unsafe extern "C" fn answer_world(_ud: *mut c_void, req: *const grenache_request, reply: *mut grenache_reply) {
    let mut n = 0usize;
    let key = unsafe { CStr::from_ptr(grenache_request_key(req, &mut n)) };
    assert_eq!(key.to_str().expect("utf8"), "rpc_test");
    assert_eq!(n, 8);
    let p = unsafe { CStr::from_ptr(grenache_request_payload(req, ptr::null_mut())) };
    assert_eq!(p.to_str().expect("utf8"), "\"hello\"");
    assert!(grenache_request_fingerprint(req).is_null());
    assert_eq!(grenache_request_transport(req), grenache_transport::Http);
    assert!(!grenache_reply_is_closed(reply));
    let w = b"\"world\"";
    assert_eq!(grenache_reply_send(reply, w.as_ptr().cast(), w.len()), grenache_result::Ok);
}

unsafe extern "C" fn answer_error(_ud: *mut c_void, _req: *const grenache_request, reply: *mut grenache_reply) {
    assert_eq!(grenache_reply_error(reply, c"ERR_BOOM".as_ptr()), grenache_result::Ok);
}

unsafe extern "C" fn answer_bad_json(_ud: *mut c_void, _req: *const grenache_request, reply: *mut grenache_reply) {
    let t = b"{nope";
    assert_eq!(grenache_reply_send(reply, t.as_ptr().cast(), t.len()), grenache_result::InvalidArgument);
}

unsafe extern "C" fn answer_bad_utf8(_ud: *mut c_void, _req: *const grenache_request, reply: *mut grenache_reply) {
    let t = b"\"\xff\"";
    assert_eq!(grenache_reply_send(reply, t.as_ptr().cast(), t.len()), grenache_result::InvalidUtf8);
}

unsafe extern "C" fn answer_null_text(_ud: *mut c_void, _req: *const grenache_request, reply: *mut grenache_reply) {
    assert_eq!(grenache_reply_send(reply, ptr::null(), 3), grenache_result::NullParameter);
}

unsafe extern "C" fn drop_reply(_ud: *mut c_void, _req: *const grenache_request, reply: *mut grenache_reply) {
    grenache_reply_free(reply);
}

unsafe extern "C" fn leak_to_thread(ud: *mut c_void, _req: *const grenache_request, reply: *mut grenache_reply) {
    // Answer later, from a thread of "C"'s own.
    let counter = ud as usize;
    let reply = reply as usize;
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        let w = b"\"later\"";
        let rc = grenache_reply_send(reply as *mut grenache_reply, w.as_ptr().cast(), w.len());
        assert_eq!(rc, grenache_result::Ok);
        let _ = counter;
    });
}

static FREED: AtomicUsize = AtomicUsize::new(0);
unsafe extern "C" fn count_free(_ud: *mut c_void) {
    FREED.fetch_add(1, Ordering::SeqCst);
}

#[test]
fn reply_handle_contract() {
    let rt = test_rt();
    assert_eq!(run(&rt, Some(answer_world), ptr::null_mut(), None, json!("hello")), Ok(json!("world")));
    assert_eq!(run(&rt, Some(answer_error), ptr::null_mut(), None, json!(1)), Err("ERR_BOOM".into()));
    assert_eq!(run(&rt, Some(answer_bad_json), ptr::null_mut(), None, json!(1)), Err("ERR_INVALID_ARGUMENT".into()));
    assert_eq!(run(&rt, Some(answer_bad_utf8), ptr::null_mut(), None, json!(1)), Err("ERR_INVALID_ARGUMENT".into()));
    assert_eq!(run(&rt, Some(answer_null_text), ptr::null_mut(), None, json!(1)), Err("ERR_INVALID_ARGUMENT".into()));
    assert_eq!(run(&rt, Some(drop_reply), ptr::null_mut(), None, json!(1)), Err("ERR_NO_REPLY".into()));
    assert_eq!(run(&rt, Some(leak_to_thread), ptr::null_mut(), None, json!(1)), Ok(json!("later")));
    assert!(c_handler(None, ptr::null_mut(), None).is_none());
    rt.shutdown();
}

#[test]
fn free_userdata_runs_once_after_the_last_call() {
    let rt = test_rt();
    let before = FREED.load(Ordering::SeqCst);
    let h = c_handler(Some(answer_world), ptr::null_mut(), Some(count_free)).expect("handler");
    for _ in 0..3 {
        let h = h.clone();
        let r = rt.block_on(Duration::from_secs(5), async move { Ok(dispatch(&*h, req(json!("hello")), None).await) });
        assert_eq!(r.expect("dispatch"), Ok(json!("world")));
    }
    assert_eq!(FREED.load(Ordering::SeqCst), before);
    drop(h);
    assert_eq!(FREED.load(Ordering::SeqCst), before + 1);
    rt.shutdown();
}

#[test]
fn null_reply_and_request_are_rejected() {
    assert_eq!(grenache_reply_send(ptr::null_mut(), c"1".as_ptr(), 1), grenache_result::NullParameter);
    assert_eq!(grenache_reply_error(ptr::null_mut(), c"x".as_ptr()), grenache_result::NullParameter);
    grenache_reply_free(ptr::null_mut());
    assert!(!grenache_reply_is_closed(ptr::null()));
    assert!(grenache_request_key(ptr::null(), ptr::null_mut()).is_null());
    assert!(grenache_request_payload(ptr::null(), ptr::null_mut()).is_null());
    assert!(grenache_request_fingerprint(ptr::null()).is_null());
    assert!(grenache_request_remote_addr(ptr::null()).is_null());
}

#[test]
fn many_threads_answer_many_replies() {
    let rt = test_rt();
    let h = c_handler(Some(leak_to_thread), ptr::null_mut(), None).expect("handler");
    let r = rt.block_on(Duration::from_secs(20), async move {
        let mut tasks = Vec::new();
        for i in 0..64 {
            let h = h.clone();
            tasks.push(tokio::spawn(async move { dispatch(&*h, req(json!(i)), None).await }));
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.map_err(|e| grenache_core::Error::invalid(e.to_string()))?);
        }
        Ok(out)
    });
    let r = r.expect("all answered");
    assert!(r.iter().all(|x| *x == Ok(json!("later"))));
    rt.shutdown();
}

fn sigpipe_action() -> libc::sighandler_t {
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        assert_eq!(libc::sigaction(libc::SIGPIPE, ptr::null(), &mut old), 0);
        old.sa_sigaction
    }
}

fn set_sigpipe(action: libc::sighandler_t) {
    unsafe {
        let mut new: libc::sigaction = std::mem::zeroed();
        new.sa_sigaction = action;
        libc::sigemptyset(&mut new.sa_mask);
        assert_eq!(libc::sigaction(libc::SIGPIPE, &new, ptr::null_mut()), 0);
    }
}

extern "C" fn app_sigpipe_handler(_: libc::c_int) {}

/// Run by nextest, each test in a process of its own: changing the process's SIGPIPE action here
/// touches no other test.
#[test]
fn runtime_new_ignores_a_default_sigpipe_and_keeps_an_application_handler() {
    // As in a C program: the default action (terminate).
    set_sigpipe(libc::SIG_DFL);
    let mut rt: *mut grenache_runtime = ptr::null_mut();
    assert_eq!(grenache_runtime_new(1, &mut rt), grenache_result::Ok);
    assert_eq!(sigpipe_action(), libc::SIG_IGN);
    grenache_runtime_free(rt);
    // An application's own handler stays.
    let handler = app_sigpipe_handler as extern "C" fn(libc::c_int) as libc::sighandler_t;
    set_sigpipe(handler);
    let mut rt: *mut grenache_runtime = ptr::null_mut();
    assert_eq!(grenache_runtime_new(1, &mut rt), grenache_result::Ok);
    assert_eq!(sigpipe_action(), handler);
    grenache_runtime_free(rt);
    set_sigpipe(libc::SIG_IGN);
}

// --- Graceful shutdown through the C ABI ------------------------------------------------------

/// Answers after 300 ms from a thread of "C"'s own; `"never"` keeps the reply until the test
/// frees it (a handler that outlives the grace).
unsafe extern "C" fn answer_slowly(_ud: *mut c_void, req: *const grenache_request, reply: *mut grenache_reply) {
    let p = unsafe { CStr::from_ptr(grenache_request_payload(req, ptr::null_mut())) }.to_str().expect("utf8").to_string();
    let reply = reply as usize;
    std::thread::spawn(move || {
        let reply = reply as *mut grenache_reply;
        if p == "\"never\"" {
            std::thread::sleep(Duration::from_secs(3));
            grenache_reply_free(reply);
            return;
        }
        std::thread::sleep(Duration::from_millis(300));
        let w = b"\"later\"";
        let _ = grenache_reply_send(reply, w.as_ptr().cast(), w.len());
    });
}

unsafe extern "C" fn send_bool(ud: *mut c_void, code: grenache_result, _err: *const grenache_error, value: bool) {
    // SAFETY: `ud` is the test's `Mutex<Sender>`, alive until the test has received.
    let tx = unsafe { &*(ud as *const std::sync::Mutex<std::sync::mpsc::Sender<(grenache_result, bool)>>) };
    let _ = tx.lock().expect("lock").send((code, value));
}

#[test]
fn server_shutdown_answers_what_it_read_and_reports_the_grace() {
    use crate::link::*;
    use crate::server::*;
    use grenache_core::rpc::{ClientTransport, OutgoingRequest};
    let mut rt: *mut grenache_runtime = ptr::null_mut();
    assert_eq!(grenache_runtime_new(2, &mut rt), grenache_result::Ok);
    let mut link: *mut grenache_link = ptr::null_mut();
    assert_eq!(grenache_link_new(rt, c"http://127.0.0.1:1".as_ptr(), &mut link), grenache_result::Ok);
    let client_rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("rt");
    let (tx, rx) = std::sync::mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let ud = &tx as *const _ as *mut c_void;
    assert_eq!(grenache_server_shutdown(ptr::null(), 10, Some(send_bool), ud), grenache_result::NullParameter);
    for ws in [false, true] {
        let new = if ws { grenache_server_new_ws } else { grenache_server_new_http };
        for (payload, grace, in_time) in [("slow", 5000, true), ("never", 200, false)] {
            let mut server: *mut grenache_server = ptr::null_mut();
            assert_eq!(new(link, 0, ptr::null(), Some(answer_slowly), ptr::null_mut(), None, &mut server), grenache_result::Ok);
            let dest = format!("127.0.0.1:{}", grenache_server_port(server));
            let transport: std::sync::Arc<dyn ClientTransport> = if ws {
                std::sync::Arc::new(grenache_core::transport::ws::WsClient::default())
            } else {
                std::sync::Arc::new(grenache_core::transport::http::HttpClient::default())
            };
            let out = OutgoingRequest {
                rid: grenache_core::rpc::new_rid(),
                key: "k".into(),
                payload_json: format!("\"{payload}\"").into(),
                timeout: Some(Duration::from_secs(10)),
                compress: false,
            };
            let (t, d) = (transport.clone(), dest.clone());
            let call = client_rt.spawn(async move { t.request(&d, out).await });
            std::thread::sleep(Duration::from_millis(100));
            let t0 = std::time::Instant::now();
            assert_eq!(grenache_server_shutdown(server, grace, Some(send_bool), ud), grenache_result::Ok);
            assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok((grenache_result::Ok, in_time)), "ws={ws} {payload}");
            let took = t0.elapsed();
            let r = client_rt.block_on(call).expect("join");
            if in_time {
                assert_eq!(r.expect("answered before closing"), json!("later"));
                assert!(took >= Duration::from_millis(150), "waited for the reply: {took:?}");
            } else {
                assert!(r.is_err(), "cut off at the grace");
                assert!(took >= Duration::from_millis(200) && took < Duration::from_secs(3), "{took:?}");
            }
            assert!(std::net::TcpStream::connect(&dest).is_err(), "no longer listening");
            grenache_server_free(server);
        }
    }
    grenache_link_free(link);
    grenache_runtime_free(rt);
}

#[test]
fn pin_service_and_sign_announcements_check_their_arguments() {
    use crate::link::*;
    let mut rt: *mut grenache_runtime = ptr::null_mut();
    assert_eq!(grenache_runtime_new(1, &mut rt), grenache_result::Ok);
    let mut link: *mut grenache_link = ptr::null_mut();
    assert_eq!(grenache_link_new(rt, c"http://127.0.0.1:1".as_ptr(), &mut link), grenache_result::Ok);
    let mut key: *mut grenache_keypair = ptr::null_mut();
    assert_eq!(grenache_keypair_generate(&mut key), grenache_result::Ok);
    let public = grenache_core::link::Keypair::generate().public_hex();
    let two = std::ffi::CString::new(format!("{public}, {public}")).expect("cstring");
    let name = c"svc".as_ptr();
    assert_eq!(grenache_link_pin_service(link, name, two.as_ptr()), grenache_result::Ok);
    assert_eq!(grenache_link_pin_service(link, name, c"".as_ptr()), grenache_result::Ok, "unpins");
    assert_eq!(grenache_link_pin_service(link, name, c"zz".as_ptr()), grenache_result::InvalidArgument);
    assert_eq!(grenache_link_pin_service(link, name, ptr::null()), grenache_result::NullParameter);
    assert_eq!(grenache_link_pin_service(ptr::null(), name, two.as_ptr()), grenache_result::NullParameter);
    let keys = [key as *const grenache_keypair];
    assert_eq!(grenache_link_sign_announcements(link, name, keys.as_ptr(), 1, 0), grenache_result::Ok);
    assert_eq!(grenache_link_sign_announcements(link, name, ptr::null(), 0, 0), grenache_result::Ok, "stops signing");
    assert_eq!(grenache_link_sign_announcements(link, name, ptr::null(), 1, 0), grenache_result::NullParameter);
    let nulls = [ptr::null::<grenache_keypair>()];
    assert_eq!(grenache_link_sign_announcements(link, name, nulls.as_ptr(), 1, 0), grenache_result::NullParameter);
    assert_eq!(grenache_link_sign_announcements(link, name, keys.as_ptr(), 9, 0), grenache_result::InvalidArgument);
    assert_eq!(grenache_link_unannounce(link, name, 1, None, ptr::null_mut()), grenache_result::NullParameter);
    grenache_keypair_free(key);
    grenache_link_free(link);
    grenache_runtime_free(rt);
}

// --- uTP through the C ABI ----------------------------------------------------------------------

unsafe extern "C" fn send_done(ud: *mut c_void, code: grenache_result, _err: *const grenache_error) {
    // SAFETY: `ud` is the test's `Mutex<Sender>`, alive until the test has received.
    let tx = unsafe { &*(ud as *const std::sync::Mutex<std::sync::mpsc::Sender<grenache_result>>) };
    let _ = tx.lock().expect("lock").send(code);
}

unsafe extern "C" fn send_json(ud: *mut c_void, code: grenache_result, _err: *const grenache_error, json: *const c_char, len: usize) {
    // SAFETY: `ud` is the test's `Mutex<Sender>`, alive until the test has received.
    let tx = unsafe { &*(ud as *const std::sync::Mutex<std::sync::mpsc::Sender<(grenache_result, String)>>) };
    // SAFETY: the library passes `len` readable bytes at `json` for the duration of the call.
    let text = if json.is_null() {
        String::new()
    } else {
        String::from_utf8_lossy(unsafe { std::slice::from_raw_parts(json.cast::<u8>(), len) }).to_string()
    };
    let _ = tx.lock().expect("lock").send((code, text));
}

unsafe extern "C" fn send_punch(ud: *mut c_void, from: *const c_char) {
    // SAFETY: `ud` is the test's `Mutex<Sender>`, alive until the server is freed.
    let tx = unsafe { &*(ud as *const std::sync::Mutex<std::sync::mpsc::Sender<String>>) };
    let _ = tx.lock().expect("lock").send(cstr(from));
}

/// Answers `"world"` to a request that arrived over uTP.
unsafe extern "C" fn answer_utp(_ud: *mut c_void, req: *const grenache_request, reply: *mut grenache_reply) {
    let w: &[u8] = if grenache_request_transport(req) == grenache_transport::Utp { b"\"world\"" } else { b"\"not utp\"" };
    let _ = grenache_reply_send(reply, w.as_ptr().cast(), w.len());
}

#[test]
fn utp_server_client_and_punches() {
    use crate::client::*;
    use crate::link::*;
    use crate::server::*;
    let mut rt: *mut grenache_runtime = ptr::null_mut();
    assert_eq!(grenache_runtime_new(2, &mut rt), grenache_result::Ok);
    let mut link: *mut grenache_link = ptr::null_mut();
    assert_eq!(grenache_link_new(rt, c"http://127.0.0.1:1".as_ptr(), &mut link), grenache_result::Ok);
    let (mut a, mut b): (*mut grenache_server, *mut grenache_server) = (ptr::null_mut(), ptr::null_mut());
    for s in [&mut a, &mut b] {
        assert_eq!(grenache_server_new_utp(link, 0, ptr::null(), Some(answer_utp), ptr::null_mut(), None, s), grenache_result::Ok);
    }
    // A request to it over uTP, straight to its address.
    let mut client: *mut grenache_client = ptr::null_mut();
    assert_eq!(grenache_client_new_utp(link, ptr::null(), 0, &mut client), grenache_result::Ok);
    let (tx, rx) = std::sync::mpsc::channel::<(grenache_result, String)>();
    let tx = std::sync::Mutex::new(tx);
    let dest = std::ffi::CString::new(format!("127.0.0.1:{}", grenache_server_port(a))).expect("cstr");
    let opts =
        grenache_request_options { timeout_ms: 10_000, retry: 0, retry_remote: false, compress: false, limit: 0, dest: dest.as_ptr() };
    let body = b"\"hello\"";
    let ud = &tx as *const _ as *mut c_void;
    let rc = grenache_client_request_opts(client, c"rpc_test".as_ptr(), body.as_ptr().cast(), body.len(), &opts, Some(send_json), ud);
    assert_eq!(rc, grenache_result::Ok);
    let (code, text) = rx.recv_timeout(Duration::from_secs(10)).expect("reply");
    assert_eq!(code, grenache_result::Ok, "{text}");
    assert_eq!(text, "\"world\"");
    // Punches: b sees a's punch; a's punch to b is answered; a silent endpoint times out.
    let (ptx, prx) = std::sync::mpsc::channel::<String>();
    let ptx = std::sync::Mutex::new(ptx);
    assert_eq!(grenache_server_on_punch(b, Some(send_punch), &ptx as *const _ as *mut c_void), grenache_result::Ok);
    let (dtx, drx) = std::sync::mpsc::channel::<grenache_result>();
    let dtx = std::sync::Mutex::new(dtx);
    let dud = &dtx as *const _ as *mut c_void;
    let target = std::ffi::CString::new(format!("127.0.0.1:{}", grenache_server_port(b))).expect("cstr");
    assert_eq!(grenache_server_punch(a, target.as_ptr(), 10_000, Some(send_done), dud), grenache_result::Ok);
    assert_eq!(drx.recv_timeout(Duration::from_secs(10)), Ok(grenache_result::Ok));
    assert_eq!(prx.recv_timeout(Duration::from_secs(10)), Ok(format!("127.0.0.1:{}", grenache_server_port(a))));
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    let target = std::ffi::CString::new(silent.local_addr().expect("addr").to_string()).expect("cstr");
    assert_eq!(grenache_server_punch(a, target.as_ptr(), 300, Some(send_done), dud), grenache_result::Ok);
    assert_eq!(drx.recv_timeout(Duration::from_secs(10)), Ok(grenache_result::PunchTimeout));
    assert_eq!(grenache_server_punch(a, c"not an address".as_ptr(), 300, Some(send_done), dud), grenache_result::Ok);
    assert_eq!(drx.recv_timeout(Duration::from_secs(10)), Ok(grenache_result::InvalidArgument));
    grenache_client_free(client);
    grenache_server_free(a);
    grenache_server_free(b);
    grenache_link_free(link);
    grenache_runtime_free(rt);
}
