//! `grenache_server`: an RPC server (the reference's `PeerRPCServer`).

use std::ffi::{c_char, c_void};
use std::time::Duration;

use grenache_core::embed::{EmbedServer, ServerOptions, ServerTransportKind};

use crate::callback::{done_completion, grenache_done_cb, try_callback};
use crate::error::grenache_result;
use crate::link::grenache_link;
use crate::panic::ffi_panic_boundary;
use crate::ptr::{try_box, try_ref, try_str, write_out};
use crate::reply::{c_handler, grenache_free_cb, grenache_handler_cb};
use crate::tls::grenache_server_tls;

/// A listening RPC server. Each request goes to its handler callback with a `grenache_reply` to
/// answer. Create it with `grenache_server_new_http`; free it with `grenache_server_free`.
#[derive(Debug)]
pub struct grenache_server {
    inner: EmbedServer,
}

fn new_server(
    kind: ServerTransportKind,
    link: *const grenache_link,
    port: u16,
    tls: *const grenache_server_tls,
    handler: grenache_handler_cb,
    userdata: *mut c_void,
    free_userdata: grenache_free_cb,
    out: *mut *mut grenache_server,
) -> grenache_result {
    // The handler owns the userdata from here on, so every early return frees it.
    let handler = c_handler(handler, userdata, free_userdata);
    let link = try_ref!(link);
    let Some(handler) = handler else { return grenache_result::NullParameter };
    if out.is_null() {
        return grenache_result::NullParameter;
    }
    let tls = unsafe { tls.as_ref() }.map(|t| t.inner.clone());
    let opts = ServerOptions { port, tls, reply_timeout: None };
    match EmbedServer::listen(&link.inner, kind, handler, opts) {
        Ok(inner) => {
            unsafe { write_out(out, Box::into_raw(Box::new(grenache_server { inner }))) };
            grenache_result::Ok
        }
        Err(e) => grenache_result::from(&e),
    }
}

/// Starts an HTTP RPC server (grenache-nodejs-http compatible) on `port` (0: any free port; read
/// it back with `grenache_server_port`), serving `handler`, announced through `link`. With `tls`
/// (NULL: plain HTTP) it is HTTPS; the settings are copied.
///
/// `handler` is called for each request on a worker thread, possibly concurrently, with
/// `userdata`; `free_userdata` (may be NULL) runs exactly once after the server is freed and its
/// last handler call returned, also when this call fails.
///
/// Blocks until the port is bound (at most 10 s): not allowed inside callbacks (`INVALID_STATE`).
/// Writes `*out` (owned by the caller) on success. Errors: `NULL_PARAMETER`, `IO` (bind failed),
/// `INVALID_STATE`.
#[unsafe(no_mangle)]
pub extern "C" fn grenache_server_new_http(
    link: *const grenache_link,
    port: u16,
    tls: *const grenache_server_tls,
    handler: grenache_handler_cb,
    userdata: *mut c_void,
    free_userdata: grenache_free_cb,
    out: *mut *mut grenache_server,
) -> grenache_result {
    ffi_panic_boundary! {
        new_server(ServerTransportKind::Http, link, port, tls, handler, userdata, free_userdata, out)
    }
}

/// Starts a WebSocket RPC server (grenache-nodejs-ws compatible): the same contract as
/// `grenache_server_new_http`; with `tls` it serves `wss://` and the client certificate's
/// fingerprint reaches the handler (`grenache_request_fingerprint`).
#[unsafe(no_mangle)]
pub extern "C" fn grenache_server_new_ws(
    link: *const grenache_link,
    port: u16,
    tls: *const grenache_server_tls,
    handler: grenache_handler_cb,
    userdata: *mut c_void,
    free_userdata: grenache_free_cb,
    out: *mut *mut grenache_server,
) -> grenache_result {
    ffi_panic_boundary! {
        new_server(ServerTransportKind::Ws, link, port, tls, handler, userdata, free_userdata, out)
    }
}

/// The port the server listens on (0 when `server` is NULL).
#[unsafe(no_mangle)]
pub extern "C" fn grenache_server_port(server: *const grenache_server) -> u16 {
    ffi_panic_boundary! {
        try_ref!(server).inner.port()
    }
}

/// Announces `name` on the server's port once; `cb` fires exactly once. Non-blocking.
#[unsafe(no_mangle)]
pub extern "C" fn grenache_server_announce(server: *const grenache_server, name: *const c_char, cb: grenache_done_cb, userdata: *mut c_void) -> grenache_result {
    ffi_panic_boundary! {
        let s = try_ref!(server);
        let name = try_str!(name);
        let cb = try_callback!(cb);
        s.inner.announce(name.to_string(), done_completion(cb, userdata));
        grenache_result::Ok
    }
}

/// Keeps announcing `name` on the server's port every `interval_ms` ms (jittered ±50 %) until
/// `grenache_server_stop_announcing` or `grenache_server_free`. Non-blocking. Errors:
/// `NULL_PARAMETER`, `INVALID_UTF8`, `INVALID_ARGUMENT` (interval 0).
#[unsafe(no_mangle)]
pub extern "C" fn grenache_server_start_announcing(server: *const grenache_server, name: *const c_char, interval_ms: u64) -> grenache_result {
    ffi_panic_boundary! {
        let s = try_ref!(server);
        let name = try_str!(name);
        if interval_ms == 0 {
            return grenache_result::InvalidArgument;
        }
        s.inner.start_announcing(name, Duration::from_millis(interval_ms));
        grenache_result::Ok
    }
}

/// Stops announcing `name`. Returns `INVALID_STATE` when it was not announced.
#[unsafe(no_mangle)]
pub extern "C" fn grenache_server_stop_announcing(server: *const grenache_server, name: *const c_char) -> grenache_result {
    ffi_panic_boundary! {
        let s = try_ref!(server);
        let name = try_str!(name);
        if s.inner.stop_announcing(name) { grenache_result::Ok } else { grenache_result::InvalidState }
    }
}

/// Stops announcing, stops listening and closes connections, fires pending announce completions
/// with `GRENACHE_RESULT_CANCELLED`, then frees the server. Requests being handled may still be
/// answered (their replies go nowhere); `free_userdata` runs after the last handler call. NULL is
/// ignored. Allowed inside callbacks.
#[unsafe(no_mangle)]
pub extern "C" fn grenache_server_free(server: *mut grenache_server) {
    ffi_panic_boundary! {
        drop(try_box!(server));
    }
}
