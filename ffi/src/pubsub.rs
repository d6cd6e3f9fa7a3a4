//! PUB/SUB over WebSocket or ZeroMQ: `grenache_publisher` and `grenache_subscriber`.

use std::ffi::{c_char, c_void};
use std::time::Duration;

use grenache_core::embed::{EmbedPublisher, EmbedSubscriber, ServerOptions, SubMessage};
use grenache_core::rpc::TransportKind;

use crate::error::grenache_result;
use crate::link::grenache_link;
use crate::panic::ffi_panic_boundary;
use crate::ptr::{NulString, try_box, try_ref, try_str, try_str_len, write_handle, write_out};
use crate::reply::{OwnedUserData, grenache_free_cb, grenache_transport};
use crate::server::grenache_server_options;
use crate::tls::{grenache_client_tls, grenache_server_tls};

/// A publisher (the reference's `PeerPub`): a WebSocket server that sends each published
/// message to every connected subscriber. Thread-safe. Free with `grenache_publisher_free`.
#[derive(Debug)]
pub struct grenache_publisher {
    inner: EmbedPublisher,
}

/// A subscription to every publisher announcing a name (the reference's `PeerSub`), delivering
/// messages to a callback. Free with `grenache_subscriber_free`.
#[derive(Debug)]
pub struct grenache_subscriber {
    inner: EmbedSubscriber,
}

/// Receives one message: `publisher` is the publisher's `"host:port"`, `data`/`len` the message
/// (NUL-terminated; text frames are UTF-8). Both borrowed until the callback returns. Called on a
/// worker thread, one message at a time per subscriber. May call any non-blocking function,
/// including `grenache_subscriber_free` on its own subscriber.
pub type grenache_message_cb =
    Option<unsafe extern "C" fn(userdata: *mut c_void, publisher: *const c_char, data: *const c_char, len: usize)>;

/// Starts a publisher on `port` (0: any free port), with `tls` (NULL: plain `ws://`; settings
/// copied). Blocks until bound (at most 10 s): not allowed inside callbacks (`INVALID_STATE`).
/// Writes `*out` (owned by the caller) on success. Errors: `NULL_PARAMETER`, `IO`,
/// `INVALID_STATE`.
#[unsafe(no_mangle)]
pub extern "C" fn grenache_publisher_new(
    link: *const grenache_link,
    port: u16,
    tls: *const grenache_server_tls,
    out: *mut *mut grenache_publisher,
) -> grenache_result {
    ffi_panic_boundary! {
        new_publisher(link, crate::server::port_tls(port, tls), out)
    }
}

/// Starts a publisher with `opts` (NULL: the defaults; copied): its port, TLS and
/// `verify_client` hook, which sees each subscriber before its socket is accepted (the reply
/// timeout does not apply). Otherwise the same contract as `grenache_publisher_new`.
#[unsafe(no_mangle)]
pub extern "C" fn grenache_publisher_new_opts(
    link: *const grenache_link,
    opts: *const grenache_server_options,
    out: *mut *mut grenache_publisher,
) -> grenache_result {
    ffi_panic_boundary! {
        // SAFETY: the caller passes NULL or valid options.
        new_publisher(link, move || unsafe { opts.as_ref() }.map(|o| o.inner.clone()).unwrap_or_default(), out)
    }
}

/// The PUB/SUB wire of a `grenache_transport` value: WS or ZeroMQ (HTTP and uTP have no PUB/SUB).
fn pubsub_kind(transport: u32) -> Option<TransportKind> {
    match transport {
        1 => Some(TransportKind::Ws),
        2 => Some(TransportKind::Zmq),
        _ => None,
    }
}

/// Starts a publisher speaking `transport`: `GRENACHE_TRANSPORT_WS` (what
/// `grenache_publisher_new_opts` starts) or `GRENACHE_TRANSPORT_ZMQ` (a ZeroMQ PUB socket: libzmq
/// SUB sockets can subscribe too; no TLS and no `verify_client` hook). `opts` (NULL: the
/// defaults; copied) gives the port, and TLS and the hook for WS. Blocks until bound (at most
/// 10 s): not allowed inside callbacks (`INVALID_STATE`). Writes `*out` (owned by the caller) on
/// success. Errors: `NULL_PARAMETER`, `INVALID_ARGUMENT` (another transport; TLS or a hook with
/// ZeroMQ), `IO`, `INVALID_STATE`.
#[unsafe(no_mangle)]
pub extern "C" fn grenache_publisher_new_transport(
    link: *const grenache_link,
    transport: u32,
    opts: *const grenache_server_options,
    out: *mut *mut grenache_publisher,
) -> grenache_result {
    ffi_panic_boundary! {
        let Some(kind) = pubsub_kind(transport) else { return grenache_result::InvalidArgument };
        let link = try_ref!(link);
        if out.is_null() {
            return grenache_result::NullParameter;
        }
        // SAFETY: the caller passes NULL or valid options.
        let opts = unsafe { opts.as_ref() }.map(|o| o.inner.clone()).unwrap_or_default();
        // SAFETY: the out-pointer is the caller's, checked non-NULL before; the header says it must point to writable memory.
        unsafe { write_handle(out, EmbedPublisher::bind_kind(&link.inner, kind, opts), |inner| grenache_publisher { inner }) }
    }
}

/// Binds a publisher with the options `opts` builds (after the pointer checks).
fn new_publisher(link: *const grenache_link, opts: impl FnOnce() -> ServerOptions, out: *mut *mut grenache_publisher) -> grenache_result {
    let link = try_ref!(link);
    if out.is_null() {
        return grenache_result::NullParameter;
    }
    // SAFETY: the out-pointer is the caller's, checked non-NULL by the write helper or before; the header says it must point to writable memory.
    unsafe { write_handle(out, EmbedPublisher::bind_with(&link.inner, opts()), |inner| grenache_publisher { inner }) }
}

/// The publisher's port (0 when `publisher` is NULL).
#[unsafe(no_mangle)]
pub extern "C" fn grenache_publisher_port(publisher: *const grenache_publisher) -> u16 {
    ffi_panic_boundary! {
        try_ref!(publisher).inner.port()
    }
}

/// Keeps announcing `name` on the publisher's port every `interval_ms` ms (jittered ±50 %) until
/// the publisher is freed. Non-blocking. Errors: `NULL_PARAMETER`, `INVALID_UTF8`,
/// `INVALID_ARGUMENT` (interval 0).
#[unsafe(no_mangle)]
pub extern "C" fn grenache_publisher_start_announcing(
    publisher: *const grenache_publisher,
    name: *const c_char,
    interval_ms: u64,
) -> grenache_result {
    ffi_panic_boundary! {
        let p = try_ref!(publisher);
        let name = try_str!(name);
        if interval_ms == 0 {
            return grenache_result::InvalidArgument;
        }
        p.inner.start_announcing(name, Duration::from_millis(interval_ms));
        grenache_result::Ok
    }
}

/// Publishes the UTF-8 text `msg` (`len` bytes) to every connected subscriber and writes how many
/// it was queued for into `*out_count` (may be NULL). Non-blocking (slow subscribers have bounded
/// queues). Errors: `NULL_PARAMETER`, `INVALID_UTF8`.
#[unsafe(no_mangle)]
pub extern "C" fn grenache_publisher_publish(
    publisher: *const grenache_publisher,
    msg: *const c_char,
    len: usize,
    out_count: *mut usize,
) -> grenache_result {
    ffi_panic_boundary! {
        let p = try_ref!(publisher);
        let text = try_str_len!(msg, len);
        let n = p.inner.publish(text);
        if !out_count.is_null() {
            // SAFETY: the out-pointer is the caller's, checked non-NULL by the write helper or before; the header says it must point to writable memory.
            unsafe { write_out(out_count, n) };
        }
        grenache_result::Ok
    }
}

/// Publishes the `len` bytes at `data` as one binary WebSocket frame (any bytes, not only UTF-8)
/// to every connected subscriber and writes how many it was queued for into `*out_count` (may be
/// NULL). Subscribers receive the bytes unchanged (`grenache_subscriber_new_ex` tells them the
/// frame was binary). Non-blocking. Errors: `NULL_PARAMETER` (`data` NULL with `len` > 0).
#[unsafe(no_mangle)]
pub extern "C" fn grenache_publisher_publish_binary(
    publisher: *const grenache_publisher,
    data: *const u8,
    len: usize,
    out_count: *mut usize,
) -> grenache_result {
    ffi_panic_boundary! {
        let p = try_ref!(publisher);
        // SAFETY: the caller passes NULL or memory valid for the given length (or up to its NUL) for this call, as the header requires; NULL is checked.
        let bytes = match unsafe { crate::ptr::bytes_from_raw(data, len) } {
            Ok(b) => b,
            Err(e) => return e,
        };
        let n = p.inner.publish_binary(bytes);
        if !out_count.is_null() {
            // SAFETY: the out-pointer is the caller's, checked non-NULL by the write helper or before; the header says it must point to writable memory.
            unsafe { write_out(out_count, n) };
        }
        grenache_result::Ok
    }
}

/// How many subscribers are connected (0 when `publisher` is NULL).
#[unsafe(no_mangle)]
pub extern "C" fn grenache_publisher_subscribers(publisher: *const grenache_publisher) -> usize {
    ffi_panic_boundary! {
        try_ref!(publisher).inner.subscribers()
    }
}

/// Stops announcing, closes every subscriber's socket and frees the publisher. NULL is ignored.
#[unsafe(no_mangle)]
pub extern "C" fn grenache_publisher_free(publisher: *mut grenache_publisher) {
    ffi_panic_boundary! {
        drop(try_box!(publisher));
    }
}

/// Subscribes to every publisher announcing `name` (looked up through `link`, again every few
/// seconds; lost publishers are reconnected), with `tls` (NULL: plain `ws://`). Each message goes
/// to `on_message` with `userdata`; `free_userdata` (may be NULL) runs exactly once after the
/// subscription stopped (also when this call fails), on any thread. Non-blocking.
/// Writes `*out` (owned by the caller) on success. Errors: `NULL_PARAMETER`, `INVALID_UTF8`,
/// `CANCELLED` (runtime freed).
#[unsafe(no_mangle)]
pub extern "C" fn grenache_subscriber_new(
    link: *const grenache_link,
    name: *const c_char,
    tls: *const grenache_client_tls,
    on_message: grenache_message_cb,
    userdata: *mut c_void,
    free_userdata: grenache_free_cb,
    out: *mut *mut grenache_subscriber,
) -> grenache_result {
    ffi_panic_boundary! {
        let ud = OwnedUserData::new(userdata, free_userdata);
        let Some(cb) = on_message else { return grenache_result::NullParameter };
        subscribe(link, name, tls, out, move |m: &SubMessage| {
            let (publisher, data) = message_c_strings(m);
            // SAFETY: `cb` is the caller's function of this C signature; every pointer passed lives until it returns.
            unsafe { cb(ud.get(), publisher.as_ptr(), data.as_ptr().cast(), m.data.len()) };
        })
    }
}

/// The publisher as a C string and the message bytes with a NUL after them (for text callers).
fn message_c_strings(m: &SubMessage) -> (NulString, Vec<u8>) {
    let mut data = Vec::with_capacity(m.data.len() + 1);
    data.extend_from_slice(&m.data);
    data.push(0);
    (NulString::new(m.publisher.to_string()), data)
}

/// Receives one message, telling text from binary frames: `publisher` is the publisher's
/// `"host:port"` (NUL-terminated), `data`/`len` the message bytes (NUL-terminated too, for text),
/// `binary` true for a binary frame (`grenache_publisher_publish_binary`; any bytes) and false for
/// a text frame (UTF-8). All borrowed until the callback returns. Otherwise the same contract as
/// `grenache_message_cb`.
pub type grenache_message_ex_cb =
    Option<unsafe extern "C" fn(userdata: *mut c_void, publisher: *const c_char, data: *const u8, len: usize, binary: bool)>;

/// `grenache_subscriber_new` with a callback that also tells binary frames from text frames.
/// The same contract otherwise.
#[unsafe(no_mangle)]
pub extern "C" fn grenache_subscriber_new_ex(
    link: *const grenache_link,
    name: *const c_char,
    tls: *const grenache_client_tls,
    on_message: grenache_message_ex_cb,
    userdata: *mut c_void,
    free_userdata: grenache_free_cb,
    out: *mut *mut grenache_subscriber,
) -> grenache_result {
    grenache_subscriber_new_transport(link, name, grenache_transport::Ws as u32, tls, on_message, userdata, free_userdata, out)
}

/// `grenache_subscriber_new_ex` over `transport`: `GRENACHE_TRANSPORT_WS` (the same as
/// `grenache_subscriber_new_ex`) or `GRENACHE_TRANSPORT_ZMQ` (a ZeroMQ SUB socket per publisher,
/// subscribed to everything; `tls` must be NULL). ZeroMQ messages carry no text/binary flag:
/// `binary` is true when a message is not UTF-8. The same contract otherwise; `free_userdata`
/// also runs when this call fails. Errors: `NULL_PARAMETER`, `INVALID_UTF8`, `INVALID_ARGUMENT`
/// (another transport; TLS with ZeroMQ), `CANCELLED` (runtime freed).
#[unsafe(no_mangle)]
pub extern "C" fn grenache_subscriber_new_transport(
    link: *const grenache_link,
    name: *const c_char,
    transport: u32,
    tls: *const grenache_client_tls,
    on_message: grenache_message_ex_cb,
    userdata: *mut c_void,
    free_userdata: grenache_free_cb,
    out: *mut *mut grenache_subscriber,
) -> grenache_result {
    ffi_panic_boundary! {
        let ud = OwnedUserData::new(userdata, free_userdata);
        let Some(kind) = pubsub_kind(transport) else { return grenache_result::InvalidArgument };
        let Some(cb) = on_message else { return grenache_result::NullParameter };
        subscribe_kind(link, name, kind, tls, out, move |m: &SubMessage| {
            let (publisher, data) = message_c_strings(m);
            // SAFETY: `cb` is the caller's function of this C signature; every pointer passed lives until it returns.
            unsafe { cb(ud.get(), publisher.as_ptr(), data.as_ptr(), m.data.len(), m.binary) };
        })
    }
}

/// The common part of the `grenache_subscriber_new*` calls; `on_message` owns the userdata, so
/// every early return frees it.
fn subscribe(
    link: *const grenache_link,
    name: *const c_char,
    tls: *const grenache_client_tls,
    out: *mut *mut grenache_subscriber,
    on_message: impl Fn(&SubMessage) + Send + Sync + 'static,
) -> grenache_result {
    subscribe_kind(link, name, TransportKind::Ws, tls, out, on_message)
}

/// [`subscribe`] over `kind`.
fn subscribe_kind(
    link: *const grenache_link,
    name: *const c_char,
    kind: TransportKind,
    tls: *const grenache_client_tls,
    out: *mut *mut grenache_subscriber,
    on_message: impl Fn(&SubMessage) + Send + Sync + 'static,
) -> grenache_result {
    let link = try_ref!(link);
    let name = try_str!(name);
    if out.is_null() {
        return grenache_result::NullParameter;
    }
    // SAFETY: the caller passes NULL or a live handle of this library (header contract); NULL gives None.
    let tls = unsafe { tls.as_ref() }.map(|t| t.inner.clone());
    // SAFETY: the out-pointer is the caller's, checked non-NULL by the write helper or before; the header says it must point to writable memory.
    unsafe {
        write_handle(out, EmbedSubscriber::subscribe_kind(&link.inner, name, kind, tls, on_message), |inner| grenache_subscriber { inner })
    }
}

/// How many publishers the subscription is connected to (checked every 200 ms; 0 when `sub` is
/// NULL).
#[unsafe(no_mangle)]
pub extern "C" fn grenache_subscriber_publishers(sub: *const grenache_subscriber) -> usize {
    ffi_panic_boundary! {
        try_ref!(sub).inner.publishers()
    }
}

/// Stops the subscription and frees it: after it returns `on_message` is not running (unless
/// called from inside it) and never runs again; `free_userdata` follows once the subscription's
/// task has ended. NULL is ignored. Allowed inside callbacks.
#[unsafe(no_mangle)]
pub extern "C" fn grenache_subscriber_free(sub: *mut grenache_subscriber) {
    ffi_panic_boundary! {
        drop(try_box!(sub));
    }
}
