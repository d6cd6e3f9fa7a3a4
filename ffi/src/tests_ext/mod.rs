//! Tests that call the exported functions directly (they live in the crate so that the crate
//! builds only `cdylib` + `staticlib`: an extra `rlib` named `grenache` would collide with core's).
#![allow(clippy::unwrap_used)]

use grenache_test_certs as tls_certs;

mod contract;
mod features;
mod misuse;
mod tls;

/// Waits (at most 30 s) until `grape` has finished its bootstrap walk. A Grape started with
/// another as its bootstrap node is then in that node's routing table, so the two-Grape networks
/// of these tests can take announces and puts at once (a Grape with no node to query answers
/// `NO_NODES`, as the reference does).
fn wait_until_ready(grape: *const crate::grape::grenache_grape) {
    use crate::grape::*;
    use std::ffi::{c_char, c_void};
    use std::sync::mpsc;
    unsafe extern "C" fn on_event(ud: *mut c_void, event: grenache_grape_event, _detail: *const c_char, _dropped: u64) {
        if event == grenache_grape_event::Ready {
            let _ = unsafe { &*(ud as *const mpsc::Sender<()>) }.send(());
        }
    }
    unsafe extern "C" fn free_sender(ud: *mut c_void) {
        drop(unsafe { Box::from_raw(ud as *mut mpsc::Sender<()>) });
    }
    let (tx, rx) = mpsc::channel::<()>();
    let ud = Box::into_raw(Box::new(tx)) as *mut c_void;
    assert_eq!(grenache_grape_on_event(grape, Some(on_event), ud, Some(free_sender)), crate::error::grenache_result::Ok);
    rx.recv_timeout(std::time::Duration::from_secs(30)).expect("the Grape's bootstrap walk finished");
}
