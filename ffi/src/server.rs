//! `grenache_server`: an RPC server (the reference's `PeerRPCServer`).

use std::ffi::{c_char, c_void};
use std::sync::Arc;
use std::time::Duration;

use grenache_core::embed::{EmbedServer, ServerOptions, ServerTransportKind};
use grenache_core::tls::{ClientInfo, VerifyClient};

use crate::callback::{bool_completion, done_completion, grenache_bool_cb, grenache_done_cb, try_callback};
use crate::error::grenache_result;
use crate::link::grenache_link;
use crate::panic::ffi_panic_boundary;
use crate::ptr::{NulString, try_box, try_mut, try_ref, try_str, write_boxed, write_handle};
use crate::reply::{OwnedUserData, c_handler, grenache_free_cb, grenache_handler_cb};
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
    opts: impl FnOnce() -> ServerOptions,
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
    // SAFETY: the out-pointer is the caller's, checked non-NULL by the write helper or before; the header says it must point to writable memory.
    unsafe { write_handle(out, EmbedServer::listen(&link.inner, kind, handler, opts()), |inner| grenache_server { inner }) }
}

/// The options of the `grenache_server_new_*` and `grenache_publisher_new` shorthands.
pub(crate) fn port_tls(port: u16, tls: *const grenache_server_tls) -> impl FnOnce() -> ServerOptions {
    // SAFETY: the caller passes NULL or a live handle of this library (header contract); NULL gives None.
    move || ServerOptions { port, tls: unsafe { tls.as_ref() }.map(|t| t.inner.clone()), ..Default::default() }
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
        new_server(ServerTransportKind::Http, link, port_tls(port, tls), handler, userdata, free_userdata, out)
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
        new_server(ServerTransportKind::Ws, link, port_tls(port, tls), handler, userdata, free_userdata, out)
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
pub extern "C" fn grenache_server_announce(
    server: *const grenache_server,
    name: *const c_char,
    cb: grenache_done_cb,
    userdata: *mut c_void,
) -> grenache_result {
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
pub extern "C" fn grenache_server_start_announcing(
    server: *const grenache_server,
    name: *const c_char,
    interval_ms: u64,
) -> grenache_result {
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

/// Shuts the server down gracefully, for restarts without failed requests: stops announcing,
/// unannounces its names (the Grape's `/unannounce`, beside the rest: lookups through
/// grenache-rs Grapes stop returning this server at once; best effort), stops listening (clients' connects are refused, and grenache clients send those requests to
/// another worker), lets the requests already read finish and their replies go out, closes each
/// connection once it is done (WS: close code 4001; HTTP: after 250 ms of replies with
/// `Connection: close`), and after `grace_ms` closes the rest. `cb` fires exactly once: `OK`
/// with `value` true when every connection finished in time, `OK` with `value` false when some
/// had to be closed at the end of the grace, `CANCELLED` when the server is freed first.
/// Non-blocking; free the server afterwards with `grenache_server_free`. Errors: `NULL_PARAMETER`.
#[unsafe(no_mangle)]
pub extern "C" fn grenache_server_shutdown(
    server: *const grenache_server,
    grace_ms: u64,
    cb: grenache_bool_cb,
    userdata: *mut c_void,
) -> grenache_result {
    ffi_panic_boundary! {
        let s = try_ref!(server);
        let cb = try_callback!(cb);
        s.inner.shutdown(Duration::from_millis(grace_ms), bool_completion(cb, userdata));
        grenache_result::Ok
    }
}

/// Stops announcing, stops listening (connects to the port are refused once this returns) and
/// closes connections, fires pending announce completions with `GRENACHE_RESULT_CANCELLED`, then
/// frees the server. Requests being handled may still be answered (their replies go nowhere);
/// `free_userdata` runs after the last handler call. NULL is ignored. Allowed inside callbacks.
#[unsafe(no_mangle)]
pub extern "C" fn grenache_server_free(server: *mut grenache_server) {
    ffi_panic_boundary! {
        drop(try_box!(server));
    }
}

/// Settings of a server or publisher beyond the defaults: port, TLS, reply timeout and the
/// `verify_client` hook. A builder: create it with `grenache_server_options_new`, call setters,
/// pass it to `grenache_server_new` / `grenache_publisher_new_opts` (which copy what they need,
/// so one options object may serve several servers), free it with `grenache_server_options_free`.
/// Not thread-safe while being changed.
#[derive(Debug, Default)]
pub struct grenache_server_options {
    pub(crate) inner: ServerOptions,
}

/// What a `verify_client` hook sees about a client before its socket is accepted: the SHA-1
/// fingerprint of its TLS certificate, its address and the upgrade's path.
///
/// Borrowed: valid only until the hook returns (copy what you need to keep). Never free it.
#[derive(Debug)]
pub struct grenache_client_info {
    fingerprint: Option<NulString>,
    remote_addr: Option<NulString>,
    path: NulString,
}

/// A `verify_client` hook: returns true to accept the client, false to refuse it (the WebSocket
/// upgrade is then answered `HTTP 401` and closed, and the client's request fails with
/// `GRENACHE_RESULT_CLIENT_REFUSED`).
///
/// Called with the `userdata` given at registration and the borrowed `info`, on a library worker
/// thread, possibly concurrently for several clients: it must be thread-safe and must not block
/// (it holds a worker thread during the handshake). It may call the non-blocking functions of
/// this library; blocking ones return `INVALID_STATE` there. It must not unwind (C++ exceptions,
/// `longjmp`) across the library.
pub type grenache_verify_client_cb = Option<unsafe extern "C" fn(userdata: *mut c_void, info: *const grenache_client_info) -> bool>;

/// Creates server options with the defaults: port 0 (any free port), no TLS, no reply timeout,
/// no `verify_client` hook. Writes `*out` (owned by the caller: `grenache_server_options_free`).
/// Errors: `NULL_PARAMETER`.
#[unsafe(no_mangle)]
pub extern "C" fn grenache_server_options_new(out: *mut *mut grenache_server_options) -> grenache_result {
    ffi_panic_boundary! {
        if out.is_null() {
            return grenache_result::NullParameter;
        }
        // SAFETY: the out-pointer is the caller's, checked non-NULL by the write helper or before; the header says it must point to writable memory.
        unsafe { write_boxed(out, grenache_server_options::default()) };
        grenache_result::Ok
    }
}

/// Frees server options; the userdata of their `verify_client` hook is freed once no server
/// built with them uses it any more. NULL is ignored.
#[unsafe(no_mangle)]
pub extern "C" fn grenache_server_options_free(opts: *mut grenache_server_options) {
    ffi_panic_boundary! {
        drop(try_box!(opts));
    }
}

/// Sets the port to listen on (0, the default: any free port; read it back with
/// `grenache_server_port` / `grenache_publisher_port`). Errors: `NULL_PARAMETER`.
#[unsafe(no_mangle)]
pub extern "C" fn grenache_server_options_set_port(opts: *mut grenache_server_options, port: u16) -> grenache_result {
    ffi_panic_boundary! {
        try_mut!(opts).inner.port = port;
        grenache_result::Ok
    }
}

/// Sets the TLS settings (copied; NULL, the default: plain HTTP / `ws://`). With TLS the server
/// speaks HTTPS or `wss://`. Errors: `NULL_PARAMETER` (`opts` NULL).
#[unsafe(no_mangle)]
pub extern "C" fn grenache_server_options_set_tls(opts: *mut grenache_server_options, tls: *const grenache_server_tls) -> grenache_result {
    ffi_panic_boundary! {
        let o = try_mut!(opts);
        // SAFETY: the caller passes NULL or a live handle of this library (header contract); NULL gives None.
        o.inner.tls = unsafe { tls.as_ref() }.map(|t| t.inner.clone());
        grenache_result::Ok
    }
}

/// The limits of `grenache_server_options_set_limit`, against hostile load (see the README's
/// "Under hostile load"). Durations are in milliseconds. Each has a default a service would
/// choose; `grenache_server_limit_name` gives the name the other faces and the CLI use.
#[allow(non_camel_case_types)]
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum grenache_server_limit {
    /// Most connections served at once (default 10000).
    MaxConnections = 0,
    /// Most connections one source IP address holds at once (default 2000).
    MaxConnectionsPerIp = 1,
    /// HTTP: time a request's head has to arrive (default 10000).
    HeaderTimeoutMs = 2,
    /// HTTP: time a request's whole body has to arrive (default 60000).
    BodyTimeoutMs = 3,
    /// HTTP: bytes per second a body must come at, on average, after its first 5 s (default
    /// 4096; 0: any rate).
    BodyMinRate = 4,
    /// HTTP: time an idle keep-alive connection is kept (default 5000).
    IdleTimeoutMs = 5,
    /// HTTP: request-body bytes the whole server buffers at once (default 256 MiB).
    MaxBodyInFlight = 6,
    /// WS: silence after which the server pings a socket (default 30000).
    WsPingIntervalMs = 7,
    /// WS: time a client has to answer a ping (default 10000).
    WsPongTimeoutMs = 8,
    /// WS: time without a request after which a socket is closed (default 300000).
    WsIdleTimeoutMs = 9,
}

/// Sets the server limit `limit` (a `grenache_server_limit`) to `value`. Applies to HTTP and WS
/// RPC servers (the connection caps to ZeroMQ too). Errors: `NULL_PARAMETER`,
/// `INVALID_ARGUMENT` (an unknown limit; 0 for anything but `BODY_MIN_RATE`).
#[unsafe(no_mangle)]
pub extern "C" fn grenache_server_options_set_limit(opts: *mut grenache_server_options, limit: u32, value: u64) -> grenache_result {
    ffi_panic_boundary! {
        let o = try_mut!(opts);
        let Some(name) = grenache_core::transport::SERVER_LIMIT_NAMES.get(limit as usize) else {
            return grenache_result::InvalidArgument;
        };
        match o.inner.limits.set(name, value) {
            Ok(()) => grenache_result::Ok,
            Err(_) => grenache_result::InvalidArgument,
        }
    }
}

/// The name of the server limit `limit` (`"max_connections_per_ip"`...), as the Python, Node and
/// Ruby faces spell it, or NULL for an unknown limit. Static: never free it.
#[unsafe(no_mangle)]
pub extern "C" fn grenache_server_limit_name(limit: u32) -> *const c_char {
    ffi_panic_boundary! {
        static NAMES: crate::ptr::StaticNames = crate::ptr::StaticNames::new(&grenache_core::transport::SERVER_LIMIT_NAMES);
        NAMES.get(limit)
    }
}

/// Sets the reply timeout: a request whose handler has not answered within `timeout_ms` ms is
/// answered `ERR_TIMEOUT` for it (the late answer then goes nowhere; `grenache_reply_is_closed`
/// turns true). 0, the default: no timeout. Applies to RPC servers, not publishers.
/// Errors: `NULL_PARAMETER`.
#[unsafe(no_mangle)]
pub extern "C" fn grenache_server_options_set_reply_timeout(opts: *mut grenache_server_options, timeout_ms: u64) -> grenache_result {
    ffi_panic_boundary! {
        let o = try_mut!(opts);
        o.inner.reply_timeout = (timeout_ms > 0).then(|| Duration::from_millis(timeout_ms));
        grenache_result::Ok
    }
}

/// Sets the `verify_client` hook of a WebSocket server or publisher: `cb` sees each client
/// (`grenache_client_info`: with TLS, its certificate's SHA-1 fingerprint) after the TLS
/// handshake and before the socket is accepted, and accepts or refuses it (see
/// `grenache_verify_client_cb`). A panic or failure inside the library while calling it refuses
/// the client. An HTTP server refuses options with a hook (`INVALID_ARGUMENT`).
///
/// `free_userdata` (may be NULL) runs exactly once, on any thread, when neither the options nor
/// any server or publisher built with them holds the hook any more (after the last call of
/// `cb` returned); also when this call fails, and when a later call replaces the hook.
/// Errors: `NULL_PARAMETER` (`opts` or `cb` NULL).
#[unsafe(no_mangle)]
pub extern "C" fn grenache_server_options_set_verify_client(
    opts: *mut grenache_server_options,
    cb: grenache_verify_client_cb,
    userdata: *mut c_void,
    free_userdata: grenache_free_cb,
) -> grenache_result {
    ffi_panic_boundary! {
        let ud = OwnedUserData::new(userdata, free_userdata);
        let o = try_mut!(opts);
        let cb = crate::callback::try_callback!(cb);
        o.inner.verify_client = Some(c_verify_client(cb, ud));
        grenache_result::Ok
    }
}

type VerifyFn = unsafe extern "C" fn(*mut c_void, *const grenache_client_info) -> bool;

/// Adapts a C `verify_client` hook into a core [`VerifyClient`]; the userdata's destructor runs
/// when the last clone of the hook is dropped.
fn c_verify_client(cb: VerifyFn, ud: OwnedUserData) -> VerifyClient {
    Arc::new(move |c: &ClientInfo<'_>| {
        let info = grenache_client_info {
            fingerprint: c.cert.map(|c| NulString::new(c.fingerprint.clone())),
            remote_addr: c.remote_addr.map(|a| NulString::new(a.to_string())),
            path: NulString::new(c.path.to_string()),
        };
        // SAFETY: the callback contract in the header; `info` outlives the call.
        unsafe { cb(ud.get(), &info) }
    })
}

/// The SHA-1 fingerprint of the client's TLS certificate as `"AA:BB:..."` (Node's
/// `getPeerCertificate().fingerprint`), borrowed from `info`; NULL without TLS, when the client
/// sent no certificate, or when `info` is NULL.
#[unsafe(no_mangle)]
pub extern "C" fn grenache_client_info_fingerprint(info: *const grenache_client_info) -> *const c_char {
    ffi_panic_boundary! {
        try_ref!(info).fingerprint.as_ref().map_or(std::ptr::null(), |f| f.as_ptr())
    }
}

/// The client's address as `"ip:port"`, borrowed from `info`; NULL when unknown or `info` is NULL.
#[unsafe(no_mangle)]
pub extern "C" fn grenache_client_info_remote_addr(info: *const grenache_client_info) -> *const c_char {
    ffi_panic_boundary! {
        try_ref!(info).remote_addr.as_ref().map_or(std::ptr::null(), |f| f.as_ptr())
    }
}

/// The path of the client's WebSocket upgrade request (`"/ws"` for Grenache clients), borrowed
/// from `info`; NULL when `info` is NULL.
#[unsafe(no_mangle)]
pub extern "C" fn grenache_client_info_path(info: *const grenache_client_info) -> *const c_char {
    ffi_panic_boundary! {
        try_ref!(info).path.as_ptr()
    }
}

/// Starts an RPC server speaking `transport` (`GRENACHE_TRANSPORT_HTTP`, `GRENACHE_TRANSPORT_WS`,
/// `GRENACHE_TRANSPORT_ZMQ`: a ZeroMQ ROUTER socket, or `GRENACHE_TRANSPORT_UTP`) with `opts`
/// (NULL: the defaults; copied, so they may be freed at once), serving `handler`, announced through `link`. Otherwise the same contract as
/// `grenache_server_new_http`: `free_userdata` runs exactly once after the server is freed and its
/// last handler call returned, also when this call fails.
///
/// Blocks until the port is bound (at most 10 s): not allowed inside callbacks (`INVALID_STATE`).
/// Writes `*out` (owned by the caller) on success. Errors: `NULL_PARAMETER`, `INVALID_ARGUMENT`
/// (unknown `transport`; a `verify_client` hook with HTTP; TLS or a hook with ZeroMQ or uTP; a
/// broker without uTP), `IO` (bind failed), `INVALID_STATE`.
#[unsafe(no_mangle)]
pub extern "C" fn grenache_server_new(
    link: *const grenache_link,
    transport: u32,
    opts: *const grenache_server_options,
    handler: grenache_handler_cb,
    userdata: *mut c_void,
    free_userdata: grenache_free_cb,
    out: *mut *mut grenache_server,
) -> grenache_result {
    ffi_panic_boundary! {
        let kind = match transport {
            0 => ServerTransportKind::Http,
            1 => ServerTransportKind::Ws,
            2 => ServerTransportKind::Zmq,
            3 => ServerTransportKind::Utp,
            _ => {
                drop(OwnedUserData::new(userdata, free_userdata));
                return grenache_result::InvalidArgument;
            }
        };
        // SAFETY: the caller passes NULL or a live handle of this library (header contract); NULL gives None.
        let opts = move || unsafe { opts.as_ref() }.map(|o| o.inner.clone()).unwrap_or_default();
        new_server(kind, link, opts, handler, userdata, free_userdata, out)
    }
}

/// Starts a uTP RPC server (grenache-nodejs-utp compatible: one UDP socket carries the uTP
/// streams, punches and broker traffic) on UDP `port` (0: any free port), serving `handler`,
/// announced through `link`. With `broker` (NULL: none), every name announced is also registered
/// with the broker of that name, from the server's socket and every 5 s, so that clients behind
/// other NATs are introduced and punched. Otherwise the same contract as
/// `grenache_server_new_http`. Errors: `NULL_PARAMETER`, `INVALID_UTF8`, `IO`, `INVALID_STATE`.
#[unsafe(no_mangle)]
pub extern "C" fn grenache_server_new_utp(
    link: *const grenache_link,
    port: u16,
    broker: *const c_char,
    handler: grenache_handler_cb,
    userdata: *mut c_void,
    free_userdata: grenache_free_cb,
    out: *mut *mut grenache_server,
) -> grenache_result {
    ffi_panic_boundary! {
        let broker = if broker.is_null() {
            None
        } else {
            // SAFETY: checked non-NULL above; the header says a broker name is a NUL-terminated string.
            match unsafe { crate::ptr::str_from_c(broker) } {
                Ok(b) => Some(b.to_string()),
                Err(e) => {
                    drop(OwnedUserData::new(userdata, free_userdata));
                    return e;
                }
            }
        };
        let opts = move || ServerOptions { port, broker, ..Default::default() };
        new_server(ServerTransportKind::Utp, link, opts, handler, userdata, free_userdata, out)
    }
}

/// Sets the broker (uTP servers only): every name announced is also registered with the broker
/// announced under `name` (copied; NULL: none). Errors: `NULL_PARAMETER`, `INVALID_UTF8`.
#[unsafe(no_mangle)]
pub extern "C" fn grenache_server_options_set_broker(opts: *mut grenache_server_options, name: *const c_char) -> grenache_result {
    ffi_panic_boundary! {
        let o = try_mut!(opts);
        o.inner.broker = if name.is_null() { None } else { Some(try_str!(name).to_string()) };
        grenache_result::Ok
    }
}

/// uTP servers: punches `target` (`"ip:port"`) from the server's UDP socket, repeating every
/// 100 ms until the target answers (a punch or an acknowledgement from exactly that endpoint).
/// `cb` fires exactly once: `OK`; `PUNCH_TIMEOUT` when nothing came back within `timeout_ms`
/// (e.g. a symmetric NAT); `INVALID_STATE` (not uTP); `INVALID_ARGUMENT` (bad address);
/// `CANCELLED` (server freed first). Non-blocking. Errors: `NULL_PARAMETER`, `INVALID_UTF8`.
#[unsafe(no_mangle)]
pub extern "C" fn grenache_server_punch(
    server: *const grenache_server,
    target: *const c_char,
    timeout_ms: u64,
    cb: grenache_done_cb,
    userdata: *mut c_void,
) -> grenache_result {
    ffi_panic_boundary! {
        let s = try_ref!(server);
        let target = try_str!(target);
        let cb = try_callback!(cb);
        s.inner.punch(target, Duration::from_millis(timeout_ms), done_completion(cb, userdata));
        grenache_result::Ok
    }
}

/// A punch event: `from` is the `"ip:port"` of a peer whose punch reached the server's socket
/// (behind a NAT: its mapping), borrowed until the callback returns. Called on a library thread
/// with the `userdata` given at registration; it must not block or unwind.
pub type grenache_punch_cb = Option<unsafe extern "C" fn(userdata: *mut c_void, from: *const c_char)>;

/// uTP servers: calls `cb` for every punch that reaches the server's socket, until the server is
/// freed (the server acknowledges each punch by itself). `userdata` must stay valid until then.
/// Errors: `NULL_PARAMETER`, `INVALID_STATE` (not uTP).
#[unsafe(no_mangle)]
pub extern "C" fn grenache_server_on_punch(
    server: *const grenache_server,
    cb: grenache_punch_cb,
    userdata: *mut c_void,
) -> grenache_result {
    ffi_panic_boundary! {
        let s = try_ref!(server);
        let cb = try_callback!(cb);
        let ud = crate::ptr::UserData(userdata);
        let r = s.inner.on_punch(move |from| {
            let ud = &ud;
            crate::ptr::with_nul(from, |p, _| {
                // SAFETY: the callback contract in the header; `p` is a NUL-terminated string alive for the call.
                let _ = std::panic::catch_unwind(|| unsafe { cb(ud.0, p) });
            });
        });
        match r {
            Ok(()) => grenache_result::Ok,
            Err(e) => grenache_result::from(&e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_numbers_match_the_core_names() {
        use grenache_server_limit::*;
        let all = [
            (MaxConnections, "max_connections"),
            (MaxConnectionsPerIp, "max_connections_per_ip"),
            (HeaderTimeoutMs, "header_timeout_ms"),
            (BodyTimeoutMs, "body_timeout_ms"),
            (BodyMinRate, "body_min_rate"),
            (IdleTimeoutMs, "idle_timeout_ms"),
            (MaxBodyInFlight, "max_body_in_flight"),
            (WsPingIntervalMs, "ws_ping_interval_ms"),
            (WsPongTimeoutMs, "ws_pong_timeout_ms"),
            (WsIdleTimeoutMs, "ws_idle_timeout_ms"),
        ];
        assert_eq!(all.len(), grenache_core::transport::SERVER_LIMIT_NAMES.len());
        for (limit, name) in all {
            // SAFETY: a static NUL-terminated string of this library.
            let got = unsafe { std::ffi::CStr::from_ptr(grenache_server_limit_name(limit as u32)) };
            assert_eq!(got.to_str(), Ok(name));
        }
        assert!(grenache_server_limit_name(all.len() as u32).is_null());

        let mut opts: *mut grenache_server_options = std::ptr::null_mut();
        assert_eq!(grenache_server_options_new(&mut opts), grenache_result::Ok);
        assert_eq!(grenache_server_options_set_limit(opts, MaxConnectionsPerIp as u32, 7), grenache_result::Ok);
        assert_eq!(grenache_server_options_set_limit(opts, BodyMinRate as u32, 0), grenache_result::Ok);
        assert_eq!(grenache_server_options_set_limit(opts, HeaderTimeoutMs as u32, 0), grenache_result::InvalidArgument);
        assert_eq!(grenache_server_options_set_limit(opts, 99, 1), grenache_result::InvalidArgument);
        // SAFETY: `opts` is the live handle created above.
        let limits = unsafe { &(*opts).inner.limits };
        assert_eq!(limits.connections.max_per_ip, 7);
        assert_eq!(limits.deadlines.body_min_rate, 0);
        grenache_server_options_free(opts);
    }
}
