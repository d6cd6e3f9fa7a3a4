//! `grenache_client`: an RPC client (the reference's `PeerRPCClient`).

use std::ffi::{c_char, c_void};
use std::time::Duration;

use grenache_core::embed::{ClientOptions, ClientTransportKind, EmbedClient, RequestOptions};

use crate::callback::{grenache_json_cb, json_completion, try_callback};
use crate::error::grenache_result;
use crate::link::grenache_link;
use crate::panic::ffi_panic_boundary;
use crate::ptr::{try_box, try_ref, try_str, try_str_len, write_handle};
use crate::tls::grenache_client_tls;

/// An RPC client: finds the workers of a service through a Link and sends them requests.
/// Thread-safe. Create it with `grenache_client_new_http`; free it with `grenache_client_free`.
#[derive(Debug)]
pub struct grenache_client {
    inner: EmbedClient,
}

fn new_client(
    kind: ClientTransportKind,
    link: *const grenache_link,
    tls: *const grenache_client_tls,
    out: *mut *mut grenache_client,
) -> grenache_result {
    let link = try_ref!(link);
    if out.is_null() {
        return grenache_result::NullParameter;
    }
    // SAFETY: the caller passes NULL or a live handle of this library (header contract); NULL gives None.
    let tls = unsafe { tls.as_ref() }.map(|t| t.inner.clone());
    // SAFETY: the out-pointer is the caller's, checked non-NULL by the write helper or before; the header says it must point to writable memory.
    unsafe {
        write_handle(out, EmbedClient::new(&link.inner, kind, ClientOptions { tls, ..Default::default() }), |inner| grenache_client {
            inner,
        })
    }
}

/// Creates an HTTP RPC client (grenache-nodejs-http compatible) that finds workers through
/// `link`; with `tls` (NULL: plain HTTP) it speaks HTTPS (settings copied). Non-blocking.
/// Writes `*out` (owned by the caller) on success. Errors: `NULL_PARAMETER`.
#[unsafe(no_mangle)]
pub extern "C" fn grenache_client_new_http(
    link: *const grenache_link,
    tls: *const grenache_client_tls,
    out: *mut *mut grenache_client,
) -> grenache_result {
    ffi_panic_boundary! {
        new_client(ClientTransportKind::Http, link, tls, out)
    }
}

/// Creates a WebSocket RPC client (grenache-nodejs-ws compatible; pooled, multiplexed sockets);
/// with `tls` it speaks `wss://`. Same contract as `grenache_client_new_http`.
#[unsafe(no_mangle)]
pub extern "C" fn grenache_client_new_ws(
    link: *const grenache_link,
    tls: *const grenache_client_tls,
    out: *mut *mut grenache_client,
) -> grenache_result {
    ffi_panic_boundary! {
        new_client(ClientTransportKind::Ws, link, tls, out)
    }
}

/// Creates a uTP RPC client (grenache-nodejs-utp compatible) that finds workers through `link`.
/// With `broker` (NULL: none) it asks the broker announced under that name for the workers'
/// external endpoints (behind NATs), punches them (both sides at once; at most `punch_timeout_ms`,
/// 0: 5 s) and sends the requests there; the Grapes' lookup when the broker knows none. A request
/// whose workers could not be punched fails with `PUNCH_TIMEOUT`. With a broker this call binds a
/// UDP socket (blocking, at most 10 s; `INVALID_STATE` inside callbacks). Writes `*out` (owned by
/// the caller). Errors: `NULL_PARAMETER`, `INVALID_UTF8`, `IO`, `INVALID_STATE`.
#[unsafe(no_mangle)]
pub extern "C" fn grenache_client_new_utp(
    link: *const grenache_link,
    broker: *const c_char,
    punch_timeout_ms: u64,
    out: *mut *mut grenache_client,
) -> grenache_result {
    ffi_panic_boundary! {
        let link = try_ref!(link);
        if out.is_null() {
            return grenache_result::NullParameter;
        }
        let broker = if broker.is_null() { None } else { Some(try_str!(broker).to_string()) };
        let options = ClientOptions {
            broker,
            punch_timeout: (punch_timeout_ms > 0).then(|| Duration::from_millis(punch_timeout_ms)),
            ..Default::default()
        };
        // SAFETY: the out-pointer is the caller's, checked non-NULL by the write helper or before; the header says it must point to writable memory.
        unsafe { write_handle(out, EmbedClient::new(&link.inner, ClientTransportKind::Utp, options), |inner| grenache_client { inner }) }
    }
}

/// Creates a ZeroMQ RPC client (a DEALER per worker, requests multiplexed on it; frames
/// `[rid, key, payload]`, see the README). ZeroMQ has no TLS here (no CURVE). Non-blocking.
/// Writes `*out` (owned by the caller) on success. Errors: `NULL_PARAMETER`.
#[unsafe(no_mangle)]
pub extern "C" fn grenache_client_new_zmq(link: *const grenache_link, out: *mut *mut grenache_client) -> grenache_result {
    ffi_panic_boundary! {
        new_client(ClientTransportKind::Zmq, link, std::ptr::null(), out)
    }
}

/// Per-call options of `grenache_client_request_opts` and `grenache_client_map_opts`.
/// Zero-initialise it (`grenache_request_options o = {0};`) and set what you need: all zeros and
/// NULL mean the defaults.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct grenache_request_options {
    /// Give up an attempt after this many milliseconds (0: 30 s).
    pub timeout_ms: u64,
    /// Total attempts of a request (0 and 1: one); each retry picks another worker when there is
    /// one. Request only.
    pub retry: u32,
    /// Also retry when the remote handler answered an error. Request only.
    pub retry_remote: bool,
    /// HTTP: gzip the request and the reply (`grc-compress: gzip`).
    pub compress: bool,
    /// Map only: ask at most this many random workers (0: all).
    pub limit: usize,
    /// Send to this `"ip:port"` without a lookup (NULL: look the key up). Request only.
    pub dest: *const c_char,
}

/// The options behind `opts`, or the defaults when it is NULL.
fn options_or_default(opts: *const grenache_request_options) -> Result<RequestOptions, grenache_result> {
    // SAFETY: the caller passes NULL or a pointer to a valid `grenache_request_options`.
    match unsafe { opts.as_ref() } {
        Some(o) => options(o),
        None => Ok(RequestOptions::default()),
    }
}

fn options(o: &grenache_request_options) -> Result<RequestOptions, grenache_result> {
    // SAFETY: the caller passes NULL or memory valid for the given length (or up to its NUL) for this call, as the header requires; NULL is checked.
    let dest = if o.dest.is_null() { None } else { Some(unsafe { crate::ptr::str_from_c(o.dest) }?.to_string()) };
    Ok(RequestOptions {
        timeout: (o.timeout_ms > 0).then(|| Duration::from_millis(o.timeout_ms)),
        retry: o.retry,
        retry_remote: o.retry_remote,
        compress: o.compress,
        dest,
        limit: o.limit,
        ..Default::default()
    })
}

fn opts(timeout_ms: u64) -> RequestOptions {
    RequestOptions { timeout: (timeout_ms > 0).then(|| Duration::from_millis(timeout_ms)), ..Default::default() }
}

/// Sends the JSON payload `json` (`json_len` bytes, e.g. `"\"hello\""`) to one worker of the
/// service `key` and waits at most `timeout_ms` ms (0: 30 s). `cb` fires exactly once with the
/// result as JSON text, or an error: `LOOKUP_EMPTY`, `TIMEOUT`, `CONNECT`, `REMOTE` (the error
/// detail's message is the remote handler's text), `CANCELLED` (client freed first)...
///
/// Non-blocking; allowed inside callbacks. Argument errors (`NULL_PARAMETER`, `INVALID_UTF8`)
/// are returned without calling `cb`; a payload that is not JSON completes with
/// `INVALID_ARGUMENT`.
#[unsafe(no_mangle)]
pub extern "C" fn grenache_client_request(
    client: *const grenache_client,
    key: *const c_char,
    json: *const c_char,
    json_len: usize,
    timeout_ms: u64,
    cb: grenache_json_cb,
    userdata: *mut c_void,
) -> grenache_result {
    ffi_panic_boundary! {
        send(Call::Request, client, key, json, json_len, || Ok(opts(timeout_ms)), cb, userdata)
    }
}

/// Sends the JSON payload to every worker of `key` at once; `cb` fires exactly once with their
/// results as a JSON array text, or the first error. Same contract as `grenache_client_request`.
#[unsafe(no_mangle)]
pub extern "C" fn grenache_client_map(
    client: *const grenache_client,
    key: *const c_char,
    json: *const c_char,
    json_len: usize,
    timeout_ms: u64,
    cb: grenache_json_cb,
    userdata: *mut c_void,
) -> grenache_result {
    ffi_panic_boundary! {
        send(Call::Map, client, key, json, json_len, || Ok(opts(timeout_ms)), cb, userdata)
    }
}

/// `grenache_client_request` with options (`opts` may be NULL: the defaults). The options are
/// copied. Same contract; `INVALID_UTF8` for a non-UTF-8 `opts->dest`.
#[unsafe(no_mangle)]
pub extern "C" fn grenache_client_request_opts(
    client: *const grenache_client,
    key: *const c_char,
    json: *const c_char,
    json_len: usize,
    opts: *const grenache_request_options,
    cb: grenache_json_cb,
    userdata: *mut c_void,
) -> grenache_result {
    ffi_panic_boundary! {
        send(Call::Request, client, key, json, json_len, || options_or_default(opts), cb, userdata)
    }
}

/// `grenache_client_map` with options (`opts` may be NULL: the defaults; `limit` picks that many
/// random workers). Same contract.
#[unsafe(no_mangle)]
pub extern "C" fn grenache_client_map_opts(
    client: *const grenache_client,
    key: *const c_char,
    json: *const c_char,
    json_len: usize,
    opts: *const grenache_request_options,
    cb: grenache_json_cb,
    userdata: *mut c_void,
) -> grenache_result {
    ffi_panic_boundary! {
        send(Call::Map, client, key, json, json_len, || options_or_default(opts), cb, userdata)
    }
}

#[derive(Clone, Copy)]
enum Call {
    Request,
    Map,
}

/// The four request/map entry points: checks the arguments in order (client, key, payload,
/// options, callback), then starts the call.
#[allow(clippy::too_many_arguments)]
fn send(
    call: Call,
    client: *const grenache_client,
    key: *const c_char,
    json: *const c_char,
    json_len: usize,
    options: impl FnOnce() -> Result<RequestOptions, grenache_result>,
    cb: grenache_json_cb,
    userdata: *mut c_void,
) -> grenache_result {
    let c = try_ref!(client);
    let key = try_str!(key);
    let text = try_str_len!(json, json_len);
    let o = match options() {
        Ok(o) => o,
        Err(e) => return e,
    };
    let cb = try_callback!(cb);
    let done = json_completion(cb, userdata);
    match call {
        Call::Request => c.inner.request(key, text, o, done),
        Call::Map => c.inner.map(key.to_string(), text, o, done),
    }
    grenache_result::Ok
}

/// Fires the completions of requests in flight with `GRENACHE_RESULT_CANCELLED` (on this
/// thread), closes connections and frees the client; after it returns none of its callbacks runs
/// any more. NULL is ignored. Allowed inside callbacks (including its own completions).
#[unsafe(no_mangle)]
pub extern "C" fn grenache_client_free(client: *mut grenache_client) {
    ffi_panic_boundary! {
        drop(try_box!(client));
    }
}
