//! The server side of an RPC: `grenache_request` (borrowed view) and `grenache_reply` (the
//! exactly-once answer handle), and the adapter from a C handler callback to a core handler.

use std::ffi::{c_char, c_void};
use std::sync::{Arc, OnceLock};

use grenache_core::embed;
use grenache_core::rpc::{Handler, Reply, Request, TransportKind};

use crate::error::grenache_result;
use crate::panic::ffi_panic_boundary;
use crate::ptr::{NulString, UserData, try_box, try_ref, write_out};

/// The transport a request arrived on.
#[allow(non_camel_case_types)]
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum grenache_transport {
    /// HTTP or HTTPS (grenache-nodejs-http).
    Http = 0,
    /// WebSocket, plain or TLS (grenache-nodejs-ws).
    Ws = 1,
    /// ZeroMQ (ZMTP 3.1 ROUTER/DEALER; no TLS, no CURVE).
    Zmq = 2,
    /// uTP over UDP (grenache-nodejs-utp).
    Utp = 3,
}

/// A request as a handler callback sees it: the service key, the payload as JSON text, and who
/// sent it.
///
/// Borrowed: valid only until the handler callback returns (copy what you need to keep). Never
/// free it. Its accessors are thread-safe.
#[derive(Debug)]
pub struct grenache_request {
    request: Request,
    // The C strings are built on first use: many handlers never ask for some of them.
    key: OnceLock<NulString>,
    payload: OnceLock<NulString>,
    fingerprint: OnceLock<Option<NulString>>,
    remote_addr: OnceLock<Option<NulString>>,
}

impl grenache_request {
    pub(crate) fn from_request(request: Request) -> grenache_request {
        grenache_request {
            request,
            key: OnceLock::new(),
            payload: OnceLock::new(),
            fingerprint: OnceLock::new(),
            remote_addr: OnceLock::new(),
        }
    }

    fn key(&self) -> &NulString {
        self.key.get_or_init(|| NulString::new(self.request.key.clone()))
    }

    fn payload(&self) -> &NulString {
        self.payload.get_or_init(|| NulString::new(embed::rpc::payload_json(&self.request).to_string()))
    }

    fn fingerprint(&self) -> Option<&NulString> {
        self.fingerprint.get_or_init(|| embed::rpc::fingerprint(&self.request).map(|f| NulString::new(f.to_string()))).as_ref()
    }

    fn remote_addr(&self) -> Option<&NulString> {
        self.remote_addr.get_or_init(|| self.request.info.remote_addr.map(|a| NulString::new(a.to_string()))).as_ref()
    }

    fn transport(&self) -> grenache_transport {
        match self.request.info.transport {
            TransportKind::Ws => grenache_transport::Ws,
            TransportKind::Utp => grenache_transport::Utp,
            TransportKind::Zmq => grenache_transport::Zmq,
            _ => grenache_transport::Http,
        }
    }
}

/// The handle to answer one request, exactly once, from any thread, now or later.
///
/// Owned by the handler that received it: answer it with `grenache_reply_send` or
/// `grenache_reply_error`, or drop it with `grenache_reply_free` (the client then receives the
/// error `ERR_NO_REPLY`). Each of these three calls consumes and frees the handle: using the
/// pointer again afterwards is a use-after-free (undefined behaviour), like with `free()`.
#[derive(Debug)]
pub struct grenache_reply {
    reply: Reply,
}

/// The service key of a request (`"rpc_test"`) as a NUL-terminated string, borrowed from `req`.
/// Its length without the NUL goes to `*out_len` unless `out_len` is NULL. NULL when `req` is NULL.
#[unsafe(no_mangle)]
pub extern "C" fn grenache_request_key(req: *const grenache_request, out_len: *mut usize) -> *const c_char {
    ffi_panic_boundary! {
        let key = try_ref!(req).key();
        if !out_len.is_null() {
            // SAFETY: the out-pointer is the caller's, checked non-NULL by the write helper or before; the header says it must point to writable memory.
            unsafe { write_out(out_len, key.len()) };
        }
        key.as_ptr()
    }
}

/// The payload of a request as NUL-terminated JSON text (`"\"hello\""` for the string hello),
/// borrowed from `req`. Its length without the NUL goes to `*out_len` unless `out_len` is NULL.
/// NULL when `req` is NULL.
#[unsafe(no_mangle)]
pub extern "C" fn grenache_request_payload(req: *const grenache_request, out_len: *mut usize) -> *const c_char {
    ffi_panic_boundary! {
        let payload = try_ref!(req).payload();
        if !out_len.is_null() {
            // SAFETY: the out-pointer is the caller's, checked non-NULL by the write helper or before; the header says it must point to writable memory.
            unsafe { write_out(out_len, payload.len()) };
        }
        payload.as_ptr()
    }
}

/// The SHA-1 fingerprint of the client's TLS certificate as `"AA:BB:..."` (Node's
/// `getPeerCertificate().fingerprint` format), borrowed from `req`; NULL when the request did not
/// come over TLS with a client certificate, or `req` is NULL.
#[unsafe(no_mangle)]
pub extern "C" fn grenache_request_fingerprint(req: *const grenache_request) -> *const c_char {
    ffi_panic_boundary! {
        let r = try_ref!(req);
        r.fingerprint().map_or(std::ptr::null(), |f| f.as_ptr())
    }
}

/// The client's address as `"ip:port"`, borrowed from `req`; NULL when unknown or `req` is NULL.
#[unsafe(no_mangle)]
pub extern "C" fn grenache_request_remote_addr(req: *const grenache_request) -> *const c_char {
    ffi_panic_boundary! {
        let r = try_ref!(req);
        r.remote_addr().map_or(std::ptr::null(), |f| f.as_ptr())
    }
}

/// The transport the request arrived on (`GRENACHE_TRANSPORT_HTTP` when `req` is NULL).
#[unsafe(no_mangle)]
pub extern "C" fn grenache_request_transport(req: *const grenache_request) -> grenache_transport {
    ffi_panic_boundary! {
        // SAFETY: the caller passes NULL or a live handle of this library (header contract); NULL gives None.
        match unsafe { req.as_ref() } {
            Some(r) => r.transport(),
            None => grenache_transport::Http,
        }
    }
}

impl crate::panic::PanicOrDefault for grenache_transport {
    fn panic_value() -> Self {
        grenache_transport::Http
    }
}

/// Answers the request with `json_len` bytes of JSON text at `json` (e.g. `"\"world\""`), then
/// frees `reply`.
///
/// Thread-safe: call it from any thread, inside the handler callback or later. It never blocks.
/// `reply` is consumed whatever the result, unless it is NULL: when the text is NULL, not UTF-8 or
/// not JSON, the client receives the error `ERR_INVALID_ARGUMENT` instead and this returns
/// `NULL_PARAMETER`, `INVALID_UTF8` or `INVALID_ARGUMENT`. A NULL `reply` gives `NULL_PARAMETER`.
#[unsafe(no_mangle)]
pub extern "C" fn grenache_reply_send(reply: *mut grenache_reply, json: *const c_char, json_len: usize) -> grenache_result {
    ffi_panic_boundary! {
        let reply = try_box!(reply).reply;
        // SAFETY: the caller passes NULL or memory valid for the given length (or up to its NUL) for this call, as the header requires; NULL is checked.
        let text = match unsafe { crate::ptr::str_from_raw(json, json_len) } {
            Ok(t) => t,
            Err(code) => {
                reply.err(grenache_core::ErrorKind::InvalidArgument.name());
                return code;
            }
        };
        match embed::rpc::reply_json(reply, text) {
            Ok(()) => grenache_result::Ok,
            Err(e) => grenache_result::from(&e),
        }
    }
}

/// Answers the request with an error: the client receives the NUL-terminated UTF-8 `message`
/// (e.g. `"ERR_BOOM"`) as a remote error, exactly as written. Then frees `reply`.
///
/// Thread-safe; never blocks. `reply` is consumed whatever the result, unless it is NULL: a NULL or
/// non-UTF-8 message sends `ERR_INVALID_ARGUMENT` instead and returns `NULL_PARAMETER` or
/// `INVALID_UTF8`.
#[unsafe(no_mangle)]
pub extern "C" fn grenache_reply_error(reply: *mut grenache_reply, message: *const c_char) -> grenache_result {
    ffi_panic_boundary! {
        let reply = try_box!(reply).reply;
        // SAFETY: the caller passes NULL or memory valid for the given length (or up to its NUL) for this call, as the header requires; NULL is checked.
        match unsafe { crate::ptr::str_from_c(message) } {
            Ok(m) => {
                reply.err(m);
                grenache_result::Ok
            }
            Err(code) => {
                reply.err(grenache_core::ErrorKind::InvalidArgument.name());
                code
            }
        }
    }
}

/// Frees `reply` without answering: the client receives the error `ERR_NO_REPLY` at once instead
/// of waiting for its timeout. NULL is ignored. Thread-safe; never blocks.
#[unsafe(no_mangle)]
pub extern "C" fn grenache_reply_free(reply: *mut grenache_reply) {
    ffi_panic_boundary! {
        drop(try_box!(reply));
    }
}

/// True when nobody waits for the answer any more (the client's connection closed), so the work
/// can be skipped (the reply must still be answered or freed). False when `reply` is NULL.
#[unsafe(no_mangle)]
pub extern "C" fn grenache_reply_is_closed(reply: *const grenache_reply) -> bool {
    ffi_panic_boundary! {
        try_ref!(reply).reply.is_closed()
    }
}

/// A request handler: called for each request, on a worker thread, possibly concurrently.
///
/// It receives the `userdata` given at registration, the borrowed `req` (valid until it returns)
/// and the owned `reply`, which it must answer or free exactly once, now or later, from any thread.
/// It must not block for long (it holds a worker thread); it may call any non-blocking function
/// of this library, including `grenache_reply_*` and starting client requests.
pub type grenache_handler_cb =
    Option<unsafe extern "C" fn(userdata: *mut c_void, req: *const grenache_request, reply: *mut grenache_reply)>;

/// Destroys the `userdata` of a long-lived callback. Called exactly once, after the last call of
/// that callback returned, on any thread. May be NULL when the userdata needs no cleanup.
pub type grenache_free_cb = Option<unsafe extern "C" fn(userdata: *mut c_void)>;

/// Userdata with its destructor, which runs once when the last owner drops it.
#[derive(Debug)]
pub(crate) struct OwnedUserData {
    pub(crate) ptr: UserData,
    free: grenache_free_cb,
}

impl OwnedUserData {
    pub(crate) fn new(ptr: *mut c_void, free: grenache_free_cb) -> OwnedUserData {
        OwnedUserData { ptr: UserData(ptr), free }
    }

    /// The raw pointer (a method, so that closures capture the whole value, destructor included).
    pub(crate) fn get(&self) -> *mut c_void {
        self.ptr.0
    }
}

impl Drop for OwnedUserData {
    fn drop(&mut self) {
        if let Some(f) = self.free.take() {
            let p = self.ptr.0;
            // SAFETY: the caller's free_userdata function, called once with the userdata it registered.
            let _ = std::panic::catch_unwind(|| unsafe { f(p) });
        }
    }
}

/// Adapts a C handler callback into a core [`Handler`]; the userdata destructor runs when the
/// returned handler (and every clone of it held by in-flight requests) is dropped.
pub(crate) fn c_handler(cb: grenache_handler_cb, userdata: *mut c_void, free: grenache_free_cb) -> Option<Arc<dyn Handler>> {
    // Own the userdata first, so that it is freed even when the callback is missing.
    let ud = OwnedUserData::new(userdata, free);
    let f = cb?;
    Some(Arc::new(move |request: Request, reply: Reply| {
        let view = grenache_request::from_request(request);
        let r = Box::into_raw(Box::new(grenache_reply { reply }));
        // SAFETY: the callback contract in the header; `view` outlives the call and `r` is owned by C.
        unsafe { f(ud.get(), &view, r) };
    }))
}
