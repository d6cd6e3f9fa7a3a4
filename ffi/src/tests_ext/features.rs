//! The C ABI's reach into core beyond plain requests: server options (reply timeout, the WSS
//! `verify_client` hook), compare-and-swap puts, Grape events, binary PUB/SUB frames. Real Grapes
//! and servers on port 0; every wait has a timeout.

use super::tls_certs;

use std::ffi::{CStr, CString, c_char, c_void};
use std::ptr::{null, null_mut};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use crate::client::*;
use crate::error::{grenache_error, grenache_error_message, grenache_result};
use crate::grape::*;
use crate::link::*;
use crate::pubsub::*;
use crate::reply::*;
use crate::runtime::*;
use crate::server::*;
use crate::tls::*;

type R = grenache_result;
const WAIT: Duration = Duration::from_secs(30);

fn c(s: &str) -> CString {
    CString::new(s).expect("cstring")
}

/// Two Grapes (so that DHT puts and announces have a node to go to) and a Link to the first.
struct Net {
    rt: *mut grenache_runtime,
    g1: *mut grenache_grape,
    g2: *mut grenache_grape,
    link: *mut grenache_link,
}

impl Net {
    fn start() -> Net {
        let mut rt = null_mut();
        assert_eq!(grenache_runtime_new(2, &mut rt), R::Ok);
        let (mut g1, mut g2) = (null_mut(), null_mut());
        assert_eq!(grenache_grape_start(rt, 0, 0, null(), &mut g1), R::Ok);
        let boot = c(&format!("127.0.0.1:{}", grenache_grape_dht_port(g1)));
        assert_eq!(grenache_grape_start(rt, 0, 0, boot.as_ptr(), &mut g2), R::Ok);
        super::wait_until_ready(g2);
        let url = c(&format!("http://127.0.0.1:{}", grenache_grape_api_port(g1)));
        let mut link = null_mut();
        assert_eq!(grenache_link_new(rt, url.as_ptr(), &mut link), R::Ok);
        Net { rt, g1, g2, link }
    }

    fn stop(self) {
        grenache_link_free(self.link);
        grenache_grape_free(self.g2);
        grenache_grape_free(self.g1);
        grenache_runtime_free(self.rt);
    }
}

unsafe extern "C" fn to_channel(ud: *mut c_void, code: R, err: *const grenache_error, json: *const c_char, len: usize) {
    // A clone: the waiter may drop the original as soon as the message is in, while `send` still
    // runs here.
    let tx = unsafe { &*(ud as *const mpsc::Sender<(R, String)>) }.clone();
    let text = if json.is_null() {
        unsafe { CStr::from_ptr(grenache_error_message(err)) }.to_string_lossy().into_owned()
    } else {
        String::from_utf8_lossy(unsafe { std::slice::from_raw_parts(json.cast::<u8>(), len) }).into_owned()
    };
    let _ = tx.send((code, text));
}

/// Sends `payload` to `name` until the lookup finds the server; returns the answer.
fn request_until_found(client: *mut grenache_client, name: &CStr, timeout_ms: u64) -> (R, String) {
    let (tx, rx) = mpsc::channel::<(R, String)>();
    let mut answer = (R::Internal, String::new());
    for _ in 0..300 {
        let rc =
            grenache_client_request(client, name.as_ptr(), c"1".as_ptr(), 1, timeout_ms, Some(to_channel), &tx as *const _ as *mut c_void);
        assert_eq!(rc, R::Ok);
        answer = rx.recv_timeout(WAIT).expect("completion");
        if answer.0 != R::LookupEmpty {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    answer
}

unsafe extern "C" fn echo(_ud: *mut c_void, _req: *const grenache_request, reply: *mut grenache_reply) {
    assert_eq!(grenache_reply_send(reply, c"\"ok\"".as_ptr(), 4), R::Ok);
}

// ---- verify_client -------------------------------------------------------------------------

/// What a hook saw of one client: fingerprint, remote address, path.
type Seen = (Option<String>, Option<String>, String);

/// The userdata of the whitelist hook: the allowed fingerprint, what the hook saw, a free count.
struct Whitelist {
    allowed: String,
    seen: Mutex<Vec<Seen>>,
    freed: AtomicUsize,
}

fn opt_cstr(p: *const c_char) -> Option<String> {
    (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
}

unsafe extern "C" fn whitelist(ud: *mut c_void, info: *const grenache_client_info) -> bool {
    let w = unsafe { &*(ud as *const Whitelist) };
    let fp = opt_cstr(grenache_client_info_fingerprint(info));
    let remote = opt_cstr(grenache_client_info_remote_addr(info));
    let path = opt_cstr(grenache_client_info_path(info)).expect("path");
    let ok = fp.as_deref() == Some(w.allowed.as_str());
    w.seen.lock().expect("lock").push((fp, remote, path));
    ok
}

unsafe extern "C" fn free_whitelist(ud: *mut c_void) {
    let w = unsafe { Arc::from_raw(ud as *const Whitelist) };
    w.freed.fetch_add(1, Ordering::SeqCst);
}

#[test]
fn wss_verify_client_whitelists_by_fingerprint() {
    let pki = tls_certs::RcgenCa::pki("grenache-ffi-verify");
    let fp_of = |pem: &str| {
        let der = grenache_core::tls::certs_from_pem(pem.as_bytes()).expect("pem");
        grenache_core::tls::fingerprint_sha1(&der[0])
    };
    let allowed = fp_of(&pki.client.cert_pem);
    let net = Net::start();

    let (cert, key, ca) = (c(&pki.server.cert_pem), c(&pki.server.key_pem), c(&pki.ca.cert_pem));
    let mut stls = null_mut();
    // Any certificate is accepted by TLS; the hook decides.
    assert_eq!(grenache_server_tls_new(cert.as_ptr(), key.as_ptr(), null(), 3, &mut stls), R::Ok);
    let w = Arc::new(Whitelist { allowed: allowed.clone(), seen: Mutex::new(Vec::new()), freed: AtomicUsize::new(0) });
    let mut opts = null_mut();
    assert_eq!(grenache_server_options_new(&mut opts), R::Ok);
    assert_eq!(grenache_server_options_set_tls(opts, stls), R::Ok);
    grenache_server_tls_free(stls);
    let ud = Arc::into_raw(w.clone()) as *mut c_void;
    assert_eq!(grenache_server_options_set_verify_client(opts, Some(whitelist), ud, Some(free_whitelist)), R::Ok);

    // HTTP has no such hook: refused with a typed error, nothing leaks.
    let mut bad = null_mut();
    assert_eq!(grenache_server_new(net.link, 0, opts, Some(echo), null_mut(), None, &mut bad), R::InvalidArgument);
    assert!(bad.is_null(), "out written on failure");
    assert_eq!(grenache_server_new(net.link, 7, opts, Some(echo), null_mut(), None, &mut bad), R::InvalidArgument);
    assert!(bad.is_null());

    let mut server = null_mut();
    assert_eq!(grenache_server_new(net.link, 1, opts, Some(echo), null_mut(), None, &mut server), R::Ok);
    grenache_server_options_free(opts);
    assert_eq!(w.freed.load(Ordering::SeqCst), 0, "the server still holds the hook");
    assert_eq!(grenache_server_start_announcing(server, c"verify_ws".as_ptr(), 500), R::Ok);

    let client_with = |ck: Option<(&str, &str)>| {
        let (cc, kk) = ck.map(|(a, b)| (c(a), c(b))).unzip();
        let mut ctls = null_mut();
        let rc = grenache_client_tls_new(
            ca.as_ptr(),
            cc.as_ref().map_or(null(), |x| x.as_ptr()),
            kk.as_ref().map_or(null(), |x| x.as_ptr()),
            &mut ctls,
        );
        assert_eq!(rc, R::Ok);
        let mut client = null_mut();
        assert_eq!(grenache_client_new_ws(net.link, ctls, &mut client), R::Ok);
        grenache_client_tls_free(ctls);
        client
    };
    let good = client_with(Some((&pki.client.cert_pem, &pki.client.key_pem)));
    assert_eq!(request_until_found(good, c"verify_ws", 10_000), (R::Ok, "\"ok\"".to_string()));
    let other = client_with(Some((&pki.client2.cert_pem, &pki.client2.key_pem)));
    let refused = request_until_found(other, c"verify_ws", 10_000);
    assert_eq!(refused.0, R::ClientRefused, "{refused:?}");
    let anon = client_with(None);
    let refused = request_until_found(anon, c"verify_ws", 10_000);
    assert_eq!(refused.0, R::ClientRefused, "{refused:?}");

    {
        let seen = w.seen.lock().expect("lock");
        assert!(seen.iter().any(|(fp, _, _)| fp.as_deref() == Some(allowed.as_str())));
        assert!(seen.iter().any(|(fp, _, _)| fp.as_deref() == Some(fp_of(&pki.client2.cert_pem).as_str())));
        assert!(seen.iter().any(|(fp, _, _)| fp.is_none()), "the client without a certificate: {seen:?}");
        assert!(
            seen.iter().all(|(_, remote, path)| remote.as_deref().is_some_and(|r| r.starts_with("127.0.0.1:")) && path == "/ws"),
            "{seen:?}"
        );
    }
    for cl in [good, other, anon] {
        grenache_client_free(cl);
    }
    grenache_server_free(server);
    let t0 = Instant::now();
    while w.freed.load(Ordering::SeqCst) == 0 && t0.elapsed() < WAIT {
        std::thread::sleep(Duration::from_millis(10));
    }
    net.stop();
    assert_eq!(w.freed.load(Ordering::SeqCst), 1, "free_userdata runs exactly once");
}

static FREED_OPTS: AtomicUsize = AtomicUsize::new(0);
unsafe extern "C" fn count_opts_free(_ud: *mut c_void) {
    FREED_OPTS.fetch_add(1, Ordering::SeqCst);
}
unsafe extern "C" fn accept_all(_ud: *mut c_void, _info: *const grenache_client_info) -> bool {
    true
}

#[test]
fn server_options_check_pointers_and_free_replaced_userdata() {
    let before = FREED_OPTS.load(Ordering::SeqCst);
    assert_eq!(grenache_server_options_new(null_mut()), R::NullParameter);
    assert_eq!(grenache_server_options_set_port(null_mut(), 1), R::NullParameter);
    assert_eq!(grenache_server_options_set_tls(null_mut(), null()), R::NullParameter);
    assert_eq!(grenache_server_options_set_reply_timeout(null_mut(), 1), R::NullParameter);
    // A NULL options or callback still frees the userdata it was given.
    assert_eq!(
        grenache_server_options_set_verify_client(null_mut(), Some(accept_all), null_mut(), Some(count_opts_free)),
        R::NullParameter
    );
    let mut opts = null_mut();
    assert_eq!(grenache_server_options_new(&mut opts), R::Ok);
    assert_eq!(grenache_server_options_set_verify_client(opts, None, null_mut(), Some(count_opts_free)), R::NullParameter);
    assert_eq!(FREED_OPTS.load(Ordering::SeqCst), before + 2);
    assert_eq!(grenache_server_options_set_verify_client(opts, Some(accept_all), null_mut(), Some(count_opts_free)), R::Ok);
    assert_eq!(grenache_server_options_set_verify_client(opts, Some(accept_all), null_mut(), Some(count_opts_free)), R::Ok);
    assert_eq!(FREED_OPTS.load(Ordering::SeqCst), before + 3, "the replaced hook's userdata is freed");
    assert_eq!(grenache_server_options_set_port(opts, 0), R::Ok);
    assert_eq!(grenache_server_options_set_reply_timeout(opts, 0), R::Ok);
    assert_eq!(grenache_server_options_set_tls(opts, null()), R::Ok);
    grenache_server_options_free(opts);
    grenache_server_options_free(null_mut());
    assert_eq!(FREED_OPTS.load(Ordering::SeqCst), before + 4);
    assert!(grenache_client_info_fingerprint(null()).is_null());
    assert!(grenache_client_info_remote_addr(null()).is_null());
    assert!(grenache_client_info_path(null()).is_null());
    // grenache_server_new checks its pointers and frees the handler's userdata on failure.
    let mut out = null_mut();
    assert_eq!(grenache_server_new(null(), 1, null(), Some(echo), null_mut(), Some(count_opts_free), &mut out), R::NullParameter);
    assert_eq!(FREED_OPTS.load(Ordering::SeqCst), before + 5);
    assert_eq!(grenache_server_new(null(), 9, null(), Some(echo), null_mut(), Some(count_opts_free), &mut out), R::InvalidArgument);
    assert_eq!(FREED_OPTS.load(Ordering::SeqCst), before + 6);
    assert!(out.is_null());
}

// ---- reply timeout -------------------------------------------------------------------------

static HELD: Mutex<Vec<usize>> = Mutex::new(Vec::new());
unsafe extern "C" fn hold_reply(_ud: *mut c_void, _req: *const grenache_request, reply: *mut grenache_reply) {
    HELD.lock().expect("lock").push(reply as usize);
}

fn reply_timeout_answers_for_a_silent_handler(transport: u32, name: &CStr) {
    let net = Net::start();
    let mut opts = null_mut();
    assert_eq!(grenache_server_options_new(&mut opts), R::Ok);
    assert_eq!(grenache_server_options_set_reply_timeout(opts, 200), R::Ok);
    let mut server = null_mut();
    assert_eq!(grenache_server_new(net.link, transport, opts, Some(hold_reply), null_mut(), None, &mut server), R::Ok);
    grenache_server_options_free(opts);
    assert_ne!(grenache_server_port(server), 0);
    assert_eq!(grenache_server_start_announcing(server, name.as_ptr(), 500), R::Ok);
    let mut client = null_mut();
    let rc = if transport == 1 {
        grenache_client_new_ws(net.link, null(), &mut client)
    } else {
        grenache_client_new_http(net.link, null(), &mut client)
    };
    assert_eq!(rc, R::Ok);
    // The client's own timeout (30 s) is far away: the answer is the server's ERR_TIMEOUT.
    let answer = request_until_found(client, name, 30_000);
    assert_eq!(answer.0, R::Remote, "{answer:?}");
    assert!(answer.1.contains("ERR_TIMEOUT"), "{answer:?}");
    // The held reply's client is gone: answering it late is harmless.
    grenache_client_free(client);
    grenache_server_free(server);
    net.stop();
}

#[test]
fn ws_server_reply_timeout() {
    reply_timeout_answers_for_a_silent_handler(1, c"reply_timeout_ws");
    for r in HELD.lock().expect("lock").drain(..) {
        grenache_reply_free(r as *mut grenache_reply);
    }
}

#[test]
fn http_server_reply_timeout() {
    reply_timeout_answers_for_a_silent_handler(0, c"reply_timeout_http");
    for r in HELD.lock().expect("lock").drain(..) {
        grenache_reply_free(r as *mut grenache_reply);
    }
}

// ---- compare-and-swap ----------------------------------------------------------------------

#[test]
fn put_mutable_cas() {
    let net = Net::start();
    let mut key = null_mut();
    assert_eq!(grenache_keypair_generate(&mut key), R::Ok);
    let (tx, rx) = mpsc::channel::<(R, String)>();
    let ud = &tx as *const _ as *mut c_void;
    let put = |v: &str, seq: i64, cas: Option<i64>| {
        let rc = match cas {
            Some(cas) => {
                grenache_link_put_mutable_cas(net.link, key, v.as_ptr().cast(), v.len(), seq, c"s".as_ptr(), cas, Some(to_channel), ud)
            }
            None => grenache_link_put_mutable(net.link, key, v.as_ptr().cast(), v.len(), seq, c"s".as_ptr(), Some(to_channel), ud),
        };
        assert_eq!(rc, R::Ok);
        rx.recv_timeout(WAIT).expect("completion")
    };
    assert_eq!(put("\"one\"", 1, None).0, R::Ok);
    let wrong = put("\"two\"", 2, Some(5));
    assert_eq!(wrong.0, R::CasMismatch, "{wrong:?}");
    let right = put("\"two\"", 2, Some(1));
    assert_eq!(right.0, R::Ok, "{right:?}");
    // The stored item is the one the successful CAS put wrote.
    let mut buf = [0 as c_char; 64];
    let mut n = 0usize;
    assert_eq!(grenache_keypair_target_hex(key, c"s".as_ptr(), buf.as_mut_ptr(), buf.len(), &mut n), R::Ok);
    assert_eq!(grenache_link_get(net.link, buf.as_ptr(), c"s".as_ptr(), Some(to_channel), ud), R::Ok);
    let got = rx.recv_timeout(WAIT).expect("completion");
    assert_eq!(got.0, R::Ok);
    let item: serde_json::Value = serde_json::from_str(&got.1).expect("json");
    assert_eq!(item["v"], "two", "{item}");
    assert_eq!(item["seq"], 2, "{item}");
    // Pointers are checked before anything is sent.
    assert_eq!(grenache_link_put_mutable_cas(net.link, null(), c"1".as_ptr(), 1, 3, null(), 2, Some(to_channel), ud), R::NullParameter);
    assert_eq!(grenache_link_put_mutable_cas(net.link, key, c"{".as_ptr(), 1, 3, null(), 2, Some(to_channel), ud), R::InvalidArgument);
    assert_eq!(grenache_link_put_mutable_cas(net.link, key, c"1".as_ptr(), 1, 3, null(), 2, None, ud), R::NullParameter);
    grenache_keypair_free(key);
    net.stop();
}

// ---- Grape events --------------------------------------------------------------------------

#[derive(Default)]
struct Events {
    got: Mutex<Vec<(grenache_grape_event, Option<String>, u64)>>,
    freed: AtomicUsize,
}

unsafe extern "C" fn on_event(ud: *mut c_void, event: grenache_grape_event, detail: *const c_char, dropped: u64) {
    let e = unsafe { &*(ud as *const Events) };
    e.got.lock().expect("lock").push((event, opt_cstr(detail), dropped));
}

unsafe extern "C" fn free_events(ud: *mut c_void) {
    let e = unsafe { Arc::from_raw(ud as *const Events) };
    e.freed.fetch_add(1, Ordering::SeqCst);
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < WAIT, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn grape_events_reach_a_c_callback() {
    let mut rt = null_mut();
    assert_eq!(grenache_runtime_new(2, &mut rt), R::Ok);
    let mut g1 = null_mut();
    assert_eq!(grenache_grape_start(rt, 0, 0, null(), &mut g1), R::Ok);
    let ev = Arc::new(Events::default());
    let ud = Arc::into_raw(ev.clone()) as *mut c_void;
    assert_eq!(grenache_grape_on_event(g1, Some(on_event), ud, Some(free_events)), R::Ok);
    wait_for("listening and ready", || {
        let got = ev.got.lock().expect("lock");
        got.iter().any(|e| e.0 == grenache_grape_event::Ready)
    });
    // A second Grape bootstrapping from the first becomes a node of its table.
    let boot = c(&format!("127.0.0.1:{}", grenache_grape_dht_port(g1)));
    let mut g2 = null_mut();
    assert_eq!(grenache_grape_start(rt, 0, 0, boot.as_ptr(), &mut g2), R::Ok);
    wait_for("a node event", || ev.got.lock().expect("lock").iter().any(|e| e.0 == grenache_grape_event::Node));
    // An announce through the second Grape's API is stored in the first one's peer store.
    let url = c(&format!("http://127.0.0.1:{}", grenache_grape_api_port(g2)));
    let mut link = null_mut();
    assert_eq!(grenache_link_new(rt, url.as_ptr(), &mut link), R::Ok);
    let (tx, rx) = mpsc::channel::<R>();
    unsafe extern "C" fn done(ud: *mut c_void, code: R, _e: *const grenache_error) {
        let _ = unsafe { &*(ud as *const mpsc::Sender<R>) }.clone().send(code);
    }
    assert_eq!(grenache_link_announce(link, c"events_svc".as_ptr(), 4242, Some(done), &tx as *const _ as *mut c_void), R::Ok);
    assert_eq!(rx.recv_timeout(WAIT).expect("announce"), R::Ok);
    wait_for("the announce event", || {
        ev.got.lock().expect("lock").iter().any(|e| e.0 == grenache_grape_event::Announce && e.1.as_deref() == Some("events_svc"))
    });
    {
        let got = ev.got.lock().expect("lock");
        assert_eq!(got[0], (grenache_grape_event::Listening, None, 0), "{got:?}");
        assert_eq!(got.iter().filter(|e| e.0 == grenache_grape_event::Ready).count(), 1, "{got:?}");
        assert!(got.iter().all(|e| e.0 != grenache_grape_event::Lagged), "{got:?}");
    }
    // Pointers are checked; the userdata of a failed registration is freed.
    assert_eq!(grenache_grape_on_event(null(), Some(on_event), null_mut(), None), R::NullParameter);
    let ev2 = Arc::new(Events::default());
    assert_eq!(grenache_grape_on_event(g1, None, Arc::into_raw(ev2.clone()) as *mut c_void, Some(free_events)), R::NullParameter);
    assert_eq!(ev2.freed.load(Ordering::SeqCst), 1);

    grenache_link_free(link);
    assert_eq!(ev.freed.load(Ordering::SeqCst), 0);
    grenache_grape_free(g1);
    // After free returns the callback never runs again and its userdata is freed once.
    let n = ev.got.lock().expect("lock").len();
    wait_for("free_userdata", || ev.freed.load(Ordering::SeqCst) == 1);
    grenache_grape_free(g2);
    grenache_runtime_free(rt);
    assert_eq!(ev.got.lock().expect("lock").len(), n, "an event after grenache_grape_free");
    assert_eq!(ev.freed.load(Ordering::SeqCst), 1);
}

// ---- binary PUB/SUB ------------------------------------------------------------------------

#[derive(Default)]
struct Inbox {
    got: Mutex<Vec<(Vec<u8>, bool)>>,
}

unsafe extern "C" fn on_message_ex(ud: *mut c_void, publisher: *const c_char, data: *const u8, len: usize, binary: bool) {
    let inbox = unsafe { &*(ud as *const Inbox) };
    assert!(opt_cstr(publisher).is_some_and(|p| p.contains(':')));
    let bytes = unsafe { std::slice::from_raw_parts(data, len) }.to_vec();
    assert_eq!(unsafe { *data.add(len) }, 0, "NUL-terminated");
    inbox.got.lock().expect("lock").push((bytes, binary));
}

#[test]
fn binary_frames_reach_subscribers_as_binary() {
    let net = Net::start();
    let mut opts = null_mut();
    assert_eq!(grenache_server_options_new(&mut opts), R::Ok);
    assert_eq!(grenache_server_options_set_verify_client(opts, Some(accept_all), null_mut(), None), R::Ok);
    let mut publisher = null_mut();
    assert_eq!(grenache_publisher_new_opts(net.link, opts, &mut publisher), R::Ok);
    grenache_server_options_free(opts);
    assert_eq!(grenache_publisher_start_announcing(publisher, c"bin_feed".as_ptr(), 500), R::Ok);
    let inbox = Arc::new(Inbox::default());
    let mut sub = null_mut();
    let ud = Arc::as_ptr(&inbox) as *mut c_void;
    assert_eq!(grenache_subscriber_new_ex(net.link, c"bin_feed".as_ptr(), null(), Some(on_message_ex), ud, None, &mut sub), R::Ok);
    wait_for("the subscriber", || grenache_publisher_subscribers(publisher) == 1);
    let bytes = [0u8, 255, 1, 0, 128];
    let mut n = 99usize;
    assert_eq!(grenache_publisher_publish_binary(publisher, bytes.as_ptr(), bytes.len(), &mut n), R::Ok);
    assert_eq!(n, 1);
    assert_eq!(grenache_publisher_publish(publisher, c"text".as_ptr(), 4, null_mut()), R::Ok);
    wait_for("both messages", || inbox.got.lock().expect("lock").len() == 2);
    assert_eq!(*inbox.got.lock().expect("lock"), vec![(bytes.to_vec(), true), (b"text".to_vec(), false)]);
    // Pointers are checked.
    assert_eq!(grenache_publisher_publish_binary(publisher, null(), 3, null_mut()), R::NullParameter);
    assert_eq!(grenache_publisher_publish_binary(publisher, null(), 0, null_mut()), R::Ok);
    assert_eq!(grenache_publisher_publish_binary(null(), bytes.as_ptr(), 1, null_mut()), R::NullParameter);
    assert_eq!(grenache_publisher_new_opts(net.link, null(), null_mut()), R::NullParameter);
    let mut none = null_mut();
    assert_eq!(grenache_subscriber_new_ex(net.link, c"x".as_ptr(), null(), None, null_mut(), None, &mut none), R::NullParameter);
    assert!(none.is_null());
    grenache_subscriber_free(sub);
    grenache_publisher_free(publisher);
    net.stop();
}

// ---- Grape options -------------------------------------------------------------------------

#[test]
fn grape_options_apply_and_check_their_input() {
    let mut rt = null_mut();
    assert_eq!(grenache_runtime_new(2, &mut rt), R::Ok);
    let mut opts = null_mut();
    assert_eq!(grenache_grape_options_new(&mut opts), R::Ok);
    assert_eq!(grenache_grape_options_new(null_mut()), R::NullParameter);
    assert_eq!(grenache_grape_options_set(null_mut(), 0, 0), R::NullParameter);
    assert_eq!(grenache_grape_options_set(opts, 99, 1), R::InvalidArgument);
    assert_eq!(grenache_grape_options_set(opts, grenache_grape_option::DhtPort as u32, 70_000), R::InvalidArgument);
    assert_eq!(grenache_grape_options_set_host(opts, c"not an ip".as_ptr()), R::InvalidArgument);
    assert_eq!(grenache_grape_options_set_host(null_mut(), null()), R::NullParameter);
    // Own announces are stored locally with a host; a small API body limit refuses big puts.
    assert_eq!(grenache_grape_options_set_host(opts, c"127.0.0.1".as_ptr()), R::Ok);
    assert_eq!(grenache_grape_options_set(opts, grenache_grape_option::MaxPayloadSize as u32, 400), R::Ok);
    assert_eq!(grenache_grape_options_set(opts, grenache_grape_option::PeerMaxAgeMs as u32, 60_000), R::Ok);
    assert_eq!(grenache_grape_options_set(opts, grenache_grape_option::AnnounceWindowMs as u32, 0), R::Ok);
    // The limits against hostile load; service names of at most 8 bytes.
    for (o, v) in [
        (grenache_grape_option::MaxConnectionsPerIp, 100),
        (grenache_grape_option::HeaderTimeoutMs, 5000),
        (grenache_grape_option::BodyTimeoutMs, 5000),
        (grenache_grape_option::BodyMinRate, 1024),
        (grenache_grape_option::IdleTimeoutMs, 5000),
        (grenache_grape_option::MaxKeyLen, 8),
        (grenache_grape_option::PeerStoreBytes, 1 << 20),
        (grenache_grape_option::MaxRecordsPerIp, 100),
        (grenache_grape_option::QueriesPerIp, 100),
    ] {
        assert_eq!(grenache_grape_options_set(opts, o as u32, v), R::Ok, "{o:?}");
    }
    assert_eq!(grenache_grape_options_set_bootstrap(opts, c"".as_ptr()), R::Ok);
    // NULL options: the defaults (free ports). This Grape is the other node of the DHT.
    let mut g0 = null_mut();
    assert_eq!(grenache_grape_start_opts(rt, null(), &mut g0), R::Ok);
    assert_ne!(grenache_grape_dht_port(g0), 0);
    let boot = c(&format!("127.0.0.1:{}", grenache_grape_dht_port(g0)));
    assert_eq!(grenache_grape_options_set_bootstrap(opts, boot.as_ptr()), R::Ok);
    let mut g = null_mut();
    assert_eq!(grenache_grape_start_opts(rt, opts, null_mut()), R::NullParameter);
    assert_eq!(grenache_grape_start_opts(rt, opts, &mut g), R::Ok);
    grenache_grape_options_free(opts);
    assert_ne!(grenache_grape_api_port(g), 0);
    let url = c(&format!("http://127.0.0.1:{}", grenache_grape_api_port(g)));
    let mut link = null_mut();
    assert_eq!(grenache_link_new(rt, url.as_ptr(), &mut link), R::Ok);
    let (tx, rx) = mpsc::channel::<(R, String)>();
    let ud = &tx as *const _ as *mut c_void;
    let ev = Arc::new(Events::default());
    assert_eq!(grenache_grape_on_event(g, Some(on_event), Arc::into_raw(ev.clone()) as *mut c_void, Some(free_events)), R::Ok);
    let (atx, arx) = mpsc::channel::<R>();
    unsafe extern "C" fn done(ud: *mut c_void, code: R, _e: *const grenache_error) {
        let _ = unsafe { &*(ud as *const mpsc::Sender<R>) }.clone().send(code);
    }
    assert_eq!(grenache_link_announce(link, c"solo".as_ptr(), 4242, Some(done), &atx as *const _ as *mut c_void), R::Ok);
    assert_eq!(arx.recv_timeout(WAIT).expect("announce"), R::Ok);
    assert_eq!(grenache_link_announce(link, c"longer-than-8".as_ptr(), 4242, Some(done), &atx as *const _ as *mut c_void), R::Ok);
    assert_ne!(arx.recv_timeout(WAIT).expect("announce"), R::Ok, "a name over MaxKeyLen is refused");
    // With a host, a Grape also stores its own announces (and says so).
    wait_for("the local announce", || {
        ev.got.lock().expect("lock").iter().any(|e| e.0 == grenache_grape_event::Announce && e.1.as_deref() == Some("solo"))
    });
    let big = format!("\"{}\"", "x".repeat(1000));
    assert_eq!(grenache_link_put(link, big.as_ptr().cast(), big.len(), Some(to_channel), ud), R::Ok);
    let refused = rx.recv_timeout(WAIT).expect("put");
    assert_ne!(refused.0, R::Ok, "{refused:?}");
    assert!(refused.1.contains("ERR_GRAPE_PAYLOAD_SIZE") || refused.1.contains("413"), "{refused:?}");
    grenache_link_free(link);
    grenache_grape_free(g);
    grenache_grape_free(g0);
    grenache_runtime_free(rt);
    wait_for("free_userdata", || ev.freed.load(Ordering::SeqCst) == 1);
}

// ---- Link options --------------------------------------------------------------------------

#[test]
fn link_options_apply_and_check_their_input() {
    let mut rt = null_mut();
    assert_eq!(grenache_runtime_new(1, &mut rt), R::Ok);
    let mut opts = null_mut();
    assert_eq!(grenache_link_options_new(null_mut()), R::NullParameter);
    assert_eq!(grenache_link_options_new(&mut opts), R::Ok);
    assert_eq!(grenache_link_options_set(null_mut(), 0, 1), R::NullParameter);
    assert_eq!(grenache_link_options_set(opts, 42, 1), R::InvalidArgument);
    assert_eq!(grenache_link_options_set(opts, grenache_link_option::RequestTimeoutMs as u32, 0), R::InvalidArgument);
    assert_eq!(grenache_link_options_set(opts, grenache_link_option::Retries as u32, 0), R::InvalidArgument);
    assert_eq!(grenache_link_options_set(opts, grenache_link_option::Retries as u32, u64::MAX), R::InvalidArgument);
    assert_eq!(grenache_link_options_set(opts, grenache_link_option::Retries as u32, 1), R::Ok);
    assert_eq!(grenache_link_options_set(opts, grenache_link_option::LookupCacheSize as u32, 10), R::Ok);
    assert_eq!(grenache_link_options_set(opts, grenache_link_option::LookupCacheTtlMs as u32, 0), R::Ok);
    assert_eq!(grenache_link_options_set(opts, grenache_link_option::RequestTimeoutMs as u32, 200), R::Ok);
    // A "Grape" that accepts connections and never answers: the short timeout applies.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = c(&format!("http://{}", silent.local_addr().expect("addr")));
    let mut link = null_mut();
    assert_eq!(grenache_link_new_opts(rt, url.as_ptr(), opts, null_mut()), R::NullParameter);
    assert_eq!(grenache_link_new_opts(rt, c"ftp://x".as_ptr(), opts, &mut link), R::InvalidArgument);
    assert!(link.is_null());
    assert_eq!(grenache_link_new_opts(rt, url.as_ptr(), opts, &mut link), R::Ok);
    grenache_link_options_free(opts);
    let (tx, rx) = mpsc::channel::<(R, String)>();
    assert_eq!(grenache_link_lookup(link, c"anything".as_ptr(), Some(to_channel), &tx as *const _ as *mut c_void), R::Ok);
    let got = rx.recv_timeout(WAIT).expect("lookup");
    assert_eq!(got.0, R::Timeout, "{got:?}");
    grenache_link_free(link);
    // NULL options: the defaults.
    let mut link2 = null_mut();
    assert_eq!(grenache_link_new_opts(rt, url.as_ptr(), null(), &mut link2), R::Ok);
    grenache_link_free(link2);
    grenache_runtime_free(rt);
    drop(silent);
}
