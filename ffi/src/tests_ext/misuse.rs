//! Misuse of the C API gets an error code, not a crash: NULL handles and strings, invalid UTF-8,
//! missing callbacks, handles freed while requests are in flight, calls from many threads at
//! once, blocking calls inside callbacks. These call the exported functions directly.

use std::ffi::{c_char, c_void};
use std::net::TcpListener;
use std::ptr::{null, null_mut};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::callback::grenache_json_cb;
use crate::client::*;
use crate::error::{grenache_error, grenache_error_code, grenache_result};
use crate::link::*;
use crate::reply::{grenache_reply, grenache_reply_send, grenache_request};
use crate::runtime::*;
use crate::server::*;
use crate::tls::*;

type R = grenache_result;

/// A "Grape" that accepts connections and never answers, so that calls stay in flight.
fn silent_grape() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", l.local_addr().expect("addr"));
    (l, url)
}

fn runtime() -> *mut grenache_runtime {
    let mut rt = null_mut();
    assert_eq!(grenache_runtime_new(2, &mut rt), R::Ok);
    rt
}

fn link(rt: *mut grenache_runtime, url: &str) -> *mut grenache_link {
    let url = std::ffi::CString::new(url).expect("cstring");
    let mut l = null_mut();
    assert_eq!(grenache_link_new(rt, url.as_ptr(), &mut l), R::Ok);
    l
}

/// Counts completions per code.
#[derive(Default)]
struct Tally {
    calls: AtomicUsize,
    codes: Mutex<Vec<R>>,
}

unsafe extern "C" fn tally_json(ud: *mut c_void, code: R, err: *const grenache_error, _json: *const c_char, _len: usize) {
    let t = unsafe { &*(ud as *const Tally) };
    if code != R::Ok {
        assert_eq!(grenache_error_code(err), code);
    }
    t.calls.fetch_add(1, Ordering::SeqCst);
    t.codes.lock().expect("lock").push(code);
}

unsafe extern "C" fn tally_done(ud: *mut c_void, code: R, err: *const grenache_error) {
    unsafe { tally_json(ud, code, err, null(), 0) };
}

unsafe extern "C" fn handler(_ud: *mut c_void, _req: *const grenache_request, reply: *mut grenache_reply) {
    crate::reply::grenache_reply_free(reply);
}

static FREED: AtomicUsize = AtomicUsize::new(0);
unsafe extern "C" fn count_free(_ud: *mut c_void) {
    FREED.fetch_add(1, Ordering::SeqCst);
}

#[test]
fn null_handles_and_strings_are_rejected() {
    let rt = runtime();
    let cb: grenache_json_cb = Some(tally_json);
    let mut l = null_mut();
    assert_eq!(grenache_link_new(null(), c"http://127.0.0.1:1".as_ptr(), &mut l), R::NullParameter);
    assert_eq!(grenache_link_new(rt, null(), &mut l), R::NullParameter);
    assert_eq!(grenache_link_new(rt, c"http://127.0.0.1:1".as_ptr(), null_mut()), R::NullParameter);
    assert_eq!(grenache_link_new(rt, c"ftp://nope".as_ptr(), &mut l), R::InvalidArgument);
    assert_eq!(grenache_link_new(rt, c"http://\xff".as_ptr(), &mut l), R::InvalidUtf8);
    assert!(l.is_null(), "out-param written on failure");

    let link = link(rt, "http://127.0.0.1:1");
    let t = Tally::default();
    let ud = &t as *const Tally as *mut c_void;
    assert_eq!(grenache_link_lookup(null(), c"x".as_ptr(), cb, ud), R::NullParameter);
    assert_eq!(grenache_link_lookup(link, null(), cb, ud), R::NullParameter);
    assert_eq!(grenache_link_lookup(link, c"\xfe".as_ptr(), cb, ud), R::InvalidUtf8);
    assert_eq!(grenache_link_lookup(link, c"x".as_ptr(), None, ud), R::NullParameter);
    assert_eq!(grenache_link_announce(link, c"x".as_ptr(), 1, None, ud), R::NullParameter);
    assert_eq!(grenache_link_put(link, null(), 3, cb, ud), R::NullParameter);
    assert_eq!(grenache_link_put(link, c"\"\xff\"".as_ptr().cast(), 3, cb, ud), R::InvalidUtf8);
    assert_eq!(grenache_link_get(link, null(), null(), cb, ud), R::NullParameter);
    assert_eq!(grenache_link_start_announcing(link, c"x".as_ptr(), 1, 0), R::InvalidArgument);
    assert_eq!(grenache_link_stop_announcing(link, c"never".as_ptr(), 1), R::InvalidState);
    assert_eq!(grenache_link_put_mutable(link, null(), c"1".as_ptr(), 1, 1, null(), cb, ud), R::NullParameter);

    let mut c = null_mut();
    assert_eq!(grenache_client_new_http(null(), null(), &mut c), R::NullParameter);
    assert_eq!(grenache_client_new_http(link, null(), null_mut()), R::NullParameter);
    assert_eq!(grenache_client_new_http(link, null(), &mut c), R::Ok);
    assert_eq!(grenache_client_request(null(), c"k".as_ptr(), c"1".as_ptr(), 1, 0, cb, ud), R::NullParameter);
    assert_eq!(grenache_client_request(c, null(), c"1".as_ptr(), 1, 0, cb, ud), R::NullParameter);
    assert_eq!(grenache_client_request(c, c"k".as_ptr(), null(), 1, 0, cb, ud), R::NullParameter);
    assert_eq!(grenache_client_request(c, c"k".as_ptr(), c"1".as_ptr(), 1, 0, None, ud), R::NullParameter);
    assert_eq!(grenache_client_map(c, c"\xff".as_ptr(), c"1".as_ptr(), 1, 0, cb, ud), R::InvalidUtf8);
    let bad = grenache_request_options { timeout_ms: 0, retry: 0, retry_remote: false, compress: false, limit: 0, dest: c"\xff".as_ptr() };
    assert_eq!(grenache_client_request_opts(c, c"k".as_ptr(), c"1".as_ptr(), 1, &bad, cb, ud), R::InvalidUtf8);
    assert_eq!(grenache_client_map_opts(c, c"k".as_ptr(), c"1".as_ptr(), 1, null(), None, ud), R::NullParameter);
    // Nothing was started, so no completion fired.
    assert_eq!(t.calls.load(Ordering::SeqCst), 0);

    // Bad JSON is not an argument error: the completion fires with INVALID_ARGUMENT.
    assert_eq!(grenache_client_request(c, c"k".as_ptr(), c"{x".as_ptr(), 2, 0, cb, ud), R::Ok);
    grenache_client_free(c);
    assert_eq!(t.calls.load(Ordering::SeqCst), 1);
    assert!(matches!(t.codes.lock().expect("lock")[0], R::InvalidArgument | R::Cancelled));

    // A fixed destination skips the lookup: a refused port completes with CONNECT.
    let mut c2 = null_mut();
    assert_eq!(grenache_client_new_http(link, null(), &mut c2), R::Ok);
    let (tx, rx) = std::sync::mpsc::channel::<R>();
    unsafe extern "C" fn code_to_channel(ud: *mut c_void, code: R, _e: *const grenache_error, _j: *const c_char, _n: usize) {
        let _ = unsafe { &*(ud as *const std::sync::mpsc::Sender<R>) }.send(code);
    }
    let o = grenache_request_options {
        timeout_ms: 5000,
        retry: 2,
        retry_remote: false,
        compress: true,
        limit: 0,
        dest: c"127.0.0.1:1".as_ptr(),
    };
    assert_eq!(
        grenache_client_request_opts(c2, c"k".as_ptr(), c"1".as_ptr(), 1, &o, Some(code_to_channel), &tx as *const _ as *mut c_void),
        R::Ok
    );
    assert_eq!(rx.recv_timeout(Duration::from_secs(20)).expect("completion"), R::Connect);
    grenache_client_free(c2);

    // Server creation frees the userdata even when it fails.
    let before = FREED.load(Ordering::SeqCst);
    let mut s = null_mut();
    assert_eq!(grenache_server_new_http(null(), 0, null(), Some(handler), null_mut(), Some(count_free), &mut s), R::NullParameter);
    assert_eq!(grenache_server_new_http(link, 0, null(), None, null_mut(), Some(count_free), &mut s), R::NullParameter);
    assert_eq!(FREED.load(Ordering::SeqCst), before + 2);
    assert_eq!(grenache_server_port(null()), 0);

    let mut tls = null_mut();
    assert_eq!(grenache_server_tls_new(c"junk".as_ptr(), c"junk".as_ptr(), null(), 0, &mut tls), R::Certificate);
    assert_eq!(grenache_server_tls_new(c"a".as_ptr(), c"b".as_ptr(), null(), 9, &mut tls), R::InvalidArgument);
    assert!(tls.is_null());
    let mut ctls = null_mut();
    assert_eq!(grenache_client_tls_new(null(), null(), null(), &mut ctls), R::NullParameter);
    assert_eq!(grenache_client_tls_new(c"x".as_ptr(), c"y".as_ptr(), null(), &mut ctls), R::InvalidArgument);

    let mut kp = null_mut();
    assert_eq!(grenache_keypair_from_secret_hex(c"zz".as_ptr(), &mut kp), R::InvalidArgument);
    assert_eq!(grenache_keypair_generate(&mut kp), R::Ok);
    let mut buf = [0 as c_char; 65];
    let mut n = 0;
    assert_eq!(grenache_keypair_public_hex(kp, buf.as_mut_ptr(), 10, &mut n), R::BufferTooSmall);
    assert_eq!(n, 0);
    assert_eq!(grenache_keypair_public_hex(kp, buf.as_mut_ptr(), 65, &mut n), R::Ok);
    assert_eq!(n, 64);
    grenache_keypair_free(kp);

    grenache_client_free(null_mut());
    grenache_server_free(null_mut());
    grenache_link_free(null_mut());
    grenache_keypair_free(null_mut());
    grenache_link_free(link);
    grenache_runtime_free(rt);
}

#[test]
fn freeing_a_client_cancels_requests_in_flight_exactly_once() {
    let (_grape, url) = silent_grape();
    let rt = runtime();
    let link = link(rt, &url);
    let mut c = null_mut();
    assert_eq!(grenache_client_new_http(link, null(), &mut c), R::Ok);
    let t = Arc::new(Tally::default());
    let ud = Arc::as_ptr(&t) as *mut c_void;
    for _ in 0..20 {
        assert_eq!(grenache_client_request(c, c"rpc_test".as_ptr(), c"1".as_ptr(), 1, 60_000, Some(tally_json), ud), R::Ok);
    }
    assert_eq!(grenache_link_announce(link, c"svc".as_ptr(), 1000, Some(tally_done), ud), R::Ok);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(t.calls.load(Ordering::SeqCst), 0);
    grenache_client_free(c);
    assert_eq!(t.calls.load(Ordering::SeqCst), 20, "every request completed by the time free returned");
    grenache_link_free(link);
    assert_eq!(t.calls.load(Ordering::SeqCst), 21);
    assert!(t.codes.lock().expect("lock").iter().all(|c| *c == R::Cancelled));
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(t.calls.load(Ordering::SeqCst), 21, "no completion after free");
    grenache_runtime_free(rt);
}

#[test]
fn freeing_the_runtime_first_cancels_too() {
    let (_grape, url) = silent_grape();
    let rt = runtime();
    let link = link(rt, &url);
    let t = Arc::new(Tally::default());
    let ud = Arc::as_ptr(&t) as *mut c_void;
    assert_eq!(grenache_link_lookup(link, c"svc".as_ptr(), Some(tally_json), ud), R::Ok);
    grenache_runtime_free(rt);
    assert_eq!(t.calls.load(Ordering::SeqCst), 1);
    assert_eq!(t.codes.lock().expect("lock")[0], R::Cancelled);
    // The link outlives its runtime safely: new calls complete at once with CANCELLED.
    assert_eq!(grenache_link_lookup(link, c"svc".as_ptr(), Some(tally_json), ud), R::Ok);
    grenache_link_free(link);
    assert_eq!(t.calls.load(Ordering::SeqCst), 2);
    assert_eq!(t.codes.lock().expect("lock")[1], R::Cancelled);
}

#[test]
fn many_threads_use_one_client_at_once() {
    let (_grape, url) = silent_grape();
    let rt = runtime();
    let link = link(rt, &url);
    let mut c = null_mut();
    assert_eq!(grenache_client_new_http(link, null(), &mut c), R::Ok);
    let t = Arc::new(Tally::default());
    let (cu, tu) = (c as usize, Arc::as_ptr(&t) as usize);
    let threads: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(move || {
                for _ in 0..50 {
                    let rc = grenache_client_request(
                        cu as *const grenache_client,
                        c"k".as_ptr(),
                        c"[1,2]".as_ptr(),
                        5,
                        60_000,
                        Some(tally_json),
                        tu as *mut c_void,
                    );
                    assert_eq!(rc, R::Ok);
                }
            })
        })
        .collect();
    for th in threads {
        th.join().expect("thread");
    }
    grenache_client_free(c);
    assert_eq!(t.calls.load(Ordering::SeqCst), 400);
    grenache_link_free(link);
    grenache_runtime_free(rt);
}

struct Nested {
    link: usize,
    code: Mutex<Option<R>>,
    done: AtomicUsize,
}

unsafe extern "C" fn blocking_inside_callback(ud: *mut c_void, _code: R, _err: *const grenache_error, _j: *const c_char, _n: usize) {
    let n = unsafe { &*(ud as *const Nested) };
    let mut s = null_mut();
    let rc = grenache_server_new_http(n.link as *const grenache_link, 0, null(), Some(handler), null_mut(), None, &mut s);
    *n.code.lock().expect("lock") = Some(rc);
    n.done.fetch_add(1, Ordering::SeqCst);
}

#[test]
fn blocking_calls_inside_callbacks_return_invalid_state() {
    let rt = runtime();
    // Port 1 refuses connections at once, so the lookup fails quickly on a worker thread.
    let link = link(rt, "http://127.0.0.1:1");
    let n = Arc::new(Nested { link: link as usize, code: Mutex::new(None), done: AtomicUsize::new(0) });
    assert_eq!(grenache_link_lookup(link, c"svc".as_ptr(), Some(blocking_inside_callback), Arc::as_ptr(&n) as *mut c_void), R::Ok);
    for _ in 0..500 {
        if n.done.load(Ordering::SeqCst) == 1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(*n.code.lock().expect("lock"), Some(R::InvalidState));
    grenache_link_free(link);
    grenache_runtime_free(rt);
}

static STASH: Mutex<Vec<usize>> = Mutex::new(Vec::new());
static FREED_SERVER: AtomicUsize = AtomicUsize::new(0);
unsafe extern "C" fn count_server_free(_ud: *mut c_void) {
    FREED_SERVER.fetch_add(1, Ordering::SeqCst);
}

unsafe extern "C" fn stash_reply(_ud: *mut c_void, _req: *const grenache_request, reply: *mut grenache_reply) {
    STASH.lock().expect("lock").push(reply as usize);
}

#[test]
fn freeing_a_server_with_requests_in_flight() {
    use crate::grape::*;
    let rt = runtime();
    let mut g = null_mut();
    assert_eq!(grenache_grape_start(rt, 0, 0, null(), &mut g), R::Ok);
    let mut g2 = null_mut();
    let boot = std::ffi::CString::new(format!("127.0.0.1:{}", grenache_grape_dht_port(g))).expect("c");
    assert_eq!(grenache_grape_start(rt, 0, 0, boot.as_ptr(), &mut g2), R::Ok);
    super::wait_until_ready(g2);
    let link = link(rt, &format!("http://127.0.0.1:{}", grenache_grape_api_port(g)));
    let before = FREED_SERVER.load(Ordering::SeqCst);
    let mut server = null_mut();
    assert_eq!(grenache_server_new_ws(link, 0, null(), Some(stash_reply), null_mut(), Some(count_server_free), &mut server), R::Ok);
    assert_eq!(grenache_server_start_announcing(server, c"stash".as_ptr(), 500), R::Ok);
    let mut client = null_mut();
    assert_eq!(grenache_client_new_ws(link, null(), &mut client), R::Ok);
    let t = Arc::new(Tally::default());
    let ud = Arc::as_ptr(&t) as *mut c_void;
    // Wait until the server is found and holds a request.
    let mut issued = 0;
    for _ in 0..300 {
        issued += 1;
        assert_eq!(grenache_client_request(client, c"stash".as_ptr(), c"1".as_ptr(), 1, 30_000, Some(tally_json), ud), R::Ok);
        std::thread::sleep(Duration::from_millis(100));
        if !STASH.lock().expect("lock").is_empty() {
            break;
        }
    }
    let held = STASH.lock().expect("lock").len();
    assert!(held >= 1, "the handler never got a request");
    // Free the server while it holds unanswered replies: the clients get an error, not a hang.
    grenache_server_free(server);
    let t0 = std::time::Instant::now();
    while t.calls.load(Ordering::SeqCst) < issued && t0.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(t.calls.load(Ordering::SeqCst), issued, "requests in flight did not fail within 20 s");
    eprintln!("in-flight requests failed {:?} after the server was freed: {:?}", t0.elapsed(), t.codes.lock().expect("lock"));
    // Answering a held reply after its server is gone is harmless.
    for r in STASH.lock().expect("lock").drain(..) {
        assert_eq!(grenache_reply_send(r as *mut grenache_reply, c"1".as_ptr(), 1), R::Ok);
    }
    grenache_client_free(client);
    grenache_link_free(link);
    grenache_grape_free(g2);
    grenache_grape_free(g);
    grenache_runtime_free(rt);
    assert!(t.codes.lock().expect("lock").iter().all(|c| *c != R::Ok), "no request was answered");
    assert_eq!(FREED_SERVER.load(Ordering::SeqCst), before + 1, "free_userdata ran once");
}
