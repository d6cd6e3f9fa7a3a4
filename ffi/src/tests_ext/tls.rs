//! TLS through the C ABI: a server built with `grenache_server_tls_new` sees the client
//! certificate's SHA-1 fingerprint (`grenache_request_fingerprint`) of a client built with
//! `grenache_client_tls_new`, over WSS and HTTPS, against our own Grapes.

use super::tls_certs;

use std::ffi::{CStr, CString, c_char, c_void};
use std::ptr::{null, null_mut};
use std::sync::mpsc;
use std::time::Duration;

use crate::client::*;
use crate::error::{grenache_error, grenache_error_message, grenache_result};
use crate::grape::*;
use crate::link::*;
use crate::reply::*;
use crate::runtime::*;
use crate::server::*;
use crate::tls::*;

type R = grenache_result;

unsafe extern "C" fn echo_fingerprint(_ud: *mut c_void, req: *const grenache_request, reply: *mut grenache_reply) {
    let fp = grenache_request_fingerprint(req);
    let text = if fp.is_null() {
        "null".to_string()
    } else {
        serde_json::Value::String(unsafe { CStr::from_ptr(fp) }.to_string_lossy().into_owned()).to_string()
    };
    assert_eq!(grenache_reply_send(reply, text.as_ptr().cast(), text.len()), R::Ok);
}

unsafe extern "C" fn to_channel(ud: *mut c_void, code: R, err: *const grenache_error, json: *const c_char, len: usize) {
    let tx = unsafe { &*(ud as *const mpsc::Sender<(R, String)>) };
    let text = if json.is_null() {
        unsafe { CStr::from_ptr(grenache_error_message(err)) }.to_string_lossy().into_owned()
    } else {
        String::from_utf8_lossy(unsafe { std::slice::from_raw_parts(json.cast::<u8>(), len) }).into_owned()
    };
    let _ = tx.send((code, text));
}

fn c(s: &str) -> CString {
    CString::new(s).expect("cstring")
}

fn fingerprint_round_trip(ws: bool) {
    let pki = tls_certs::RcgenCa::pki("grenache-ffi-test");
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

    let (cert, key, ca) = (c(&pki.server.cert_pem), c(&pki.server.key_pem), c(&pki.ca.cert_pem));
    let mut stls = null_mut();
    assert_eq!(grenache_server_tls_new(cert.as_ptr(), key.as_ptr(), ca.as_ptr(), 2, &mut stls), R::Ok);
    let mut server = null_mut();
    let rc = if ws {
        grenache_server_new_ws(link, 0, stls, Some(echo_fingerprint), null_mut(), None, &mut server)
    } else {
        grenache_server_new_http(link, 0, stls, Some(echo_fingerprint), null_mut(), None, &mut server)
    };
    assert_eq!(rc, R::Ok);
    grenache_server_tls_free(stls);
    let name = c(if ws { "tls_ws" } else { "tls_http" });
    assert_eq!(grenache_server_start_announcing(server, name.as_ptr(), 1000), R::Ok);

    let (ccert, ckey) = (c(&pki.client.cert_pem), c(&pki.client.key_pem));
    let mut ctls = null_mut();
    assert_eq!(grenache_client_tls_new(ca.as_ptr(), ccert.as_ptr(), ckey.as_ptr(), &mut ctls), R::Ok);
    let mut client = null_mut();
    let rc = if ws { grenache_client_new_ws(link, ctls, &mut client) } else { grenache_client_new_http(link, ctls, &mut client) };
    assert_eq!(rc, R::Ok);
    grenache_client_tls_free(ctls);

    let (tx, rx) = mpsc::channel::<(R, String)>();
    let mut answer = (R::Internal, String::new());
    for _ in 0..300 {
        let rc = grenache_client_request(client, name.as_ptr(), c"1".as_ptr(), 1, 10_000, Some(to_channel), &tx as *const _ as *mut c_void);
        assert_eq!(rc, R::Ok);
        answer = rx.recv_timeout(Duration::from_secs(30)).expect("completion");
        if answer.0 != R::LookupEmpty {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let der = grenache_core::tls::certs_from_pem(pki.client.cert_pem.as_bytes()).expect("pem");
    let expected = grenache_core::tls::fingerprint_sha1(&der[0]);
    assert_eq!(answer, (R::Ok, serde_json::Value::String(expected).to_string()));

    // A client without a certificate is refused by a server that requires one.
    let mut ctls = null_mut();
    assert_eq!(grenache_client_tls_new(ca.as_ptr(), null(), null(), &mut ctls), R::Ok);
    let mut anon = null_mut();
    let rc = if ws { grenache_client_new_ws(link, ctls, &mut anon) } else { grenache_client_new_http(link, ctls, &mut anon) };
    assert_eq!(rc, R::Ok);
    grenache_client_tls_free(ctls);
    assert_eq!(
        grenache_client_request(anon, name.as_ptr(), c"1".as_ptr(), 1, 5_000, Some(to_channel), &tx as *const _ as *mut c_void),
        R::Ok
    );
    let refused = rx.recv_timeout(Duration::from_secs(30)).expect("completion");
    assert_ne!(refused.0, R::Ok, "{refused:?}");

    grenache_client_free(anon);
    grenache_client_free(client);
    grenache_server_free(server);
    grenache_link_free(link);
    grenache_grape_free(g2);
    grenache_grape_free(g1);
    grenache_runtime_free(rt);
}

#[test]
fn wss_server_sees_the_client_fingerprint() {
    fingerprint_round_trip(true);
}

#[test]
fn https_server_sees_the_client_fingerprint() {
    fingerprint_round_trip(false);
}
