//! `grenache_link`: the client of a Grape's HTTP API, and `grenache_keypair` for mutable items.

use std::ffi::{c_char, c_void};
use std::time::Duration;

use grenache_core::embed::{EmbedLink, Keypair, LinkConfig, MutableItem};

use crate::callback::{done_completion, grenache_done_cb, grenache_json_cb, json_completion, try_callback};
use crate::error::grenache_result;
use crate::panic::ffi_panic_boundary;
use crate::ptr::{try_box, try_mut, try_ref, try_str, try_str_len, write_boxed, write_handle, write_out};
use crate::runtime::grenache_runtime;

/// A Link: the client of one Grape's HTTP API (lookups with a cache, announces, DHT put/get).
/// Create it with `grenache_link_new`, free it with `grenache_link_free`. Thread-safe: its
/// functions may be called from many threads at once.
#[derive(Debug)]
pub struct grenache_link {
    pub(crate) inner: EmbedLink,
}

/// An ed25519 key pair that signs mutable DHT items (`grenache_link_put_mutable`).
/// Create it with `grenache_keypair_generate` or `grenache_keypair_from_secret_hex`, free it with
/// `grenache_keypair_free`. Immutable, so thread-safe.
#[derive(Debug)]
pub struct grenache_keypair {
    inner: Keypair,
}

/// Creates a Link to the Grape HTTP API at `grape_url` (`"http://127.0.0.1:30001"`), run by `rt`.
///
/// Ownership: the caller owns `*out` and frees it with `grenache_link_free`; `rt` is not taken
/// (the Link keeps its own reference to the worker threads). Errors: `NULL_PARAMETER`,
/// `INVALID_UTF8`, `INVALID_ARGUMENT` (not an `http://host:port` URL). Non-blocking.
#[unsafe(no_mangle)]
pub extern "C" fn grenache_link_new(
    rt: *const grenache_runtime,
    grape_url: *const c_char,
    out: *mut *mut grenache_link,
) -> grenache_result {
    ffi_panic_boundary! {
        let rt = try_ref!(rt);
        let url = try_str!(grape_url);
        if out.is_null() {
            return grenache_result::NullParameter;
        }
        // SAFETY: the out-pointer is the caller's, checked non-NULL by the write helper or before; the header says it must point to writable memory.
        unsafe { write_handle(out, EmbedLink::new(&rt.rt, LinkConfig::with_grape(url)), |inner| grenache_link { inner }) }
    }
}

/// Link settings beyond the Grape URL (the reference Link's options): a builder. Create it with
/// `grenache_link_options_new`, set what you need with `grenache_link_options_set`, create Links
/// with `grenache_link_new_opts` (which copies the settings), free it with
/// `grenache_link_options_free`.
#[derive(Debug)]
pub struct grenache_link_options {
    config: LinkConfig,
}

/// The numeric settings of `grenache_link_options_set`. Durations are in milliseconds.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum grenache_link_option {
    /// Timeout of each call to the Grape's HTTP API (the reference's `requestTimeout`; default
    /// 2500). At least 1.
    RequestTimeoutMs = 0,
    /// Most entries in the lookup cache (`lruMaxSizeLookup`; default 2500).
    LookupCacheSize = 1,
    /// How long a lookup result is served from the cache (`lruMaxAgeLookup`; default 10000; 0
    /// disables the cache).
    LookupCacheTtlMs = 2,
    /// Total attempts of a lookup or announce on transport errors (default 3). At least 1.
    Retries = 3,
}

/// Creates Link options with the defaults (see `grenache_link_option`) into `*out` (owned by the
/// caller: `grenache_link_options_free`). Errors: `NULL_PARAMETER`.
#[unsafe(no_mangle)]
pub extern "C" fn grenache_link_options_new(out: *mut *mut grenache_link_options) -> grenache_result {
    ffi_panic_boundary! {
        if out.is_null() {
            return grenache_result::NullParameter;
        }
        // SAFETY: the out-pointer is the caller's, checked non-NULL by the write helper or before; the header says it must point to writable memory.
        unsafe { write_boxed(out, grenache_link_options { config: LinkConfig::default() }) };
        grenache_result::Ok
    }
}

/// Frees Link options. NULL is ignored.
#[unsafe(no_mangle)]
pub extern "C" fn grenache_link_options_free(opts: *mut grenache_link_options) {
    ffi_panic_boundary! {
        drop(try_box!(opts));
    }
}

/// Sets the numeric setting `option` (one of `GRENACHE_LINK_OPTION_*`) to `value`. Errors:
/// `NULL_PARAMETER`, `INVALID_ARGUMENT` (unknown option, a zero timeout or retry count, a value
/// out of range); nothing changes on error.
#[unsafe(no_mangle)]
pub extern "C" fn grenache_link_options_set(opts: *mut grenache_link_options, option: u32, value: u64) -> grenache_result {
    ffi_panic_boundary! {
        let o = try_mut!(opts);
        let c = &mut o.config;
        match option {
            0 if value > 0 => c.request_timeout = Duration::from_millis(value),
            1 => c.lookup_cache_size = usize::try_from(value).unwrap_or(usize::MAX),
            2 => c.lookup_cache_ttl = Duration::from_millis(value),
            3 if value > 0 => match u32::try_from(value) {
                Ok(n) => c.retries = n,
                Err(_) => return grenache_result::InvalidArgument,
            },
            _ => return grenache_result::InvalidArgument,
        }
        grenache_result::Ok
    }
}

/// Creates a Link to the Grape HTTP API at `grape_url` with `opts` (copied; NULL: the defaults).
/// Otherwise the same contract as `grenache_link_new`.
#[unsafe(no_mangle)]
pub extern "C" fn grenache_link_new_opts(
    rt: *const grenache_runtime,
    grape_url: *const c_char,
    opts: *const grenache_link_options,
    out: *mut *mut grenache_link,
) -> grenache_result {
    ffi_panic_boundary! {
        let rt = try_ref!(rt);
        let url = try_str!(grape_url);
        if out.is_null() {
            return grenache_result::NullParameter;
        }
        // SAFETY: the caller passes NULL or a live handle of this library (header contract); NULL gives None.
        let mut config = unsafe { opts.as_ref() }.map(|o| o.config.clone()).unwrap_or_default();
        config.grape = url.to_string();
        // SAFETY: the out-pointer is the caller's, checked non-NULL by the write helper or before; the header says it must point to writable memory.
        unsafe { write_handle(out, EmbedLink::new(&rt.rt, config), |inner| grenache_link { inner }) }
    }
}

/// Frees a Link: stops its keep-announcing loops and fires the completions of its calls in flight
/// with `GRENACHE_RESULT_CANCELLED` (on this thread) before returning; after it returns none of
/// its callbacks runs any more. Servers and clients created from the Link keep working (they hold
/// their own reference). NULL is ignored. Allowed inside callbacks.
#[unsafe(no_mangle)]
pub extern "C" fn grenache_link_free(link: *mut grenache_link) {
    ffi_panic_boundary! {
        drop(try_box!(link));
    }
}

/// Looks up the peers announcing `name`. `cb` gets a JSON array of `"host:port"` strings, or
/// `GRENACHE_RESULT_LOOKUP_EMPTY` when nobody announces it.
///
/// Non-blocking; allowed inside callbacks. Returns `NULL_PARAMETER` / `INVALID_UTF8` without
/// calling `cb`; otherwise returns OK and `cb` fires exactly once.
#[unsafe(no_mangle)]
pub extern "C" fn grenache_link_lookup(
    link: *const grenache_link,
    name: *const c_char,
    cb: grenache_json_cb,
    userdata: *mut c_void,
) -> grenache_result {
    ffi_panic_boundary! {
        let link = try_ref!(link);
        let name = try_str!(name);
        let cb = try_callback!(cb);
        link.inner.lookup(name.to_string(), json_completion(cb, userdata));
        grenache_result::Ok
    }
}

/// Announces once that `name` is served on `port` of this host. `cb` fires exactly once.
///
/// Non-blocking; allowed inside callbacks. Argument errors are returned without calling `cb`.
#[unsafe(no_mangle)]
pub extern "C" fn grenache_link_announce(
    link: *const grenache_link,
    name: *const c_char,
    port: u16,
    cb: grenache_done_cb,
    userdata: *mut c_void,
) -> grenache_result {
    ffi_panic_boundary! {
        let link = try_ref!(link);
        let name = try_str!(name);
        let cb = try_callback!(cb);
        link.inner.announce(name.to_string(), port, done_completion(cb, userdata));
        grenache_result::Ok
    }
}

/// Keeps announcing `name` on `port`: now, then every `interval_ms` milliseconds (jittered ±50 %;
/// keep it well under the Grape's 2-minute peer age) until `grenache_link_stop_announcing` or
/// `grenache_link_free`. Starting it again for a running `(name, port)` does nothing.
/// Non-blocking; allowed inside callbacks. Errors: `NULL_PARAMETER`, `INVALID_UTF8`,
/// `INVALID_ARGUMENT` (interval 0).
#[unsafe(no_mangle)]
pub extern "C" fn grenache_link_start_announcing(
    link: *const grenache_link,
    name: *const c_char,
    port: u16,
    interval_ms: u64,
) -> grenache_result {
    ffi_panic_boundary! {
        let link = try_ref!(link);
        let name = try_str!(name);
        if interval_ms == 0 {
            return grenache_result::InvalidArgument;
        }
        match link.inner.start_announcing(name, port, Duration::from_millis(interval_ms)) {
            Ok(()) => grenache_result::Ok,
            Err(e) => grenache_result::from(&e),
        }
    }
}

/// Stops the keep-announcing loop of `(name, port)`. Returns `INVALID_STATE` when none runs.
#[unsafe(no_mangle)]
pub extern "C" fn grenache_link_stop_announcing(link: *const grenache_link, name: *const c_char, port: u16) -> grenache_result {
    ffi_panic_boundary! {
        let link = try_ref!(link);
        let name = try_str!(name);
        if link.inner.stop_announcing(name, port) { grenache_result::Ok } else { grenache_result::InvalidState }
    }
}

/// Removes the announce of `name` on `port` from the Grapes at once (the Grape's `/unannounce`:
/// lookups through grenache-rs Grapes stop returning it; a Node reference Grape answers
/// `ERR_REQ_NOTFOUND`, i.e. `GRENACHE_RESULT_GRAPE`, and keeps it until it expires). Stop
/// announcing it first. `cb` gets the number of DHT nodes that removed it, as JSON text.
/// `grenache_server_shutdown` does this for the server's names.
///
/// Non-blocking; allowed inside callbacks. Argument errors are returned without calling `cb`.
#[unsafe(no_mangle)]
pub extern "C" fn grenache_link_unannounce(
    link: *const grenache_link,
    name: *const c_char,
    port: u16,
    cb: grenache_json_cb,
    userdata: *mut c_void,
) -> grenache_result {
    ffi_panic_boundary! {
        let link = try_ref!(link);
        let name = try_str!(name);
        let cb = try_callback!(cb);
        let done = json_completion(cb, userdata);
        link.inner.unannounce(name.to_string(), port, move |r| done(r.map(|n| n.to_string())));
        grenache_result::Ok
    }
}

/// Pins the service `name` to its ed25519 public keys: `keys_hex` is a comma-separated list of
/// 64-hex-character keys (at most 8; two during a key rotation; `""` unpins). From now on
/// lookups of `name`, and the requests of clients created from this Link, use only addresses
/// with a valid signed proof under one of the keys (published by workers that sign their
/// announces, `grenache_link_sign_announcements`); an address without one, e.g. a hijacker
/// announcing the name, is never used, and when no address has one the lookup completes with
/// `LOOKUP_EMPTY`. The proofs are read through the Grape: it must be a grenache-rs Grape (or a
/// Node Grape given an ed25519 verifier). See docs/signed-announce.md.
///
/// Errors: `NULL_PARAMETER`, `INVALID_UTF8`, `INVALID_ARGUMENT` (a key that is not an ed25519
/// public key in hex, more than 8 keys). Allowed inside callbacks.
#[unsafe(no_mangle)]
pub extern "C" fn grenache_link_pin_service(link: *const grenache_link, name: *const c_char, keys_hex: *const c_char) -> grenache_result {
    ffi_panic_boundary! {
        let link = try_ref!(link);
        let name = try_str!(name);
        let keys = try_str!(keys_hex);
        let keys: Vec<&str> = keys.split(',').map(str::trim).filter(|k| !k.is_empty()).collect();
        match link.inner.pin_service(name, &keys) {
            Ok(()) => grenache_result::Ok,
            Err(e) => grenache_result::from(&e),
        }
    }
}

/// Makes every announce of `name` through this Link (once, kept up, or by a server created
/// from it) also publish a signed proof of the address under each of the `n_keys` key pairs in
/// `keys` (1 to 8; two during a key rotation), valid `ttl_ms` milliseconds (0: 10 minutes) and
/// published again once half of it has passed. Clients pinned to the public keys
/// (`grenache_link_pin_service`) use only such addresses. `n_keys` 0 stops signing. The key
/// pairs are copied; the caller keeps ownership of them.
///
/// Errors: `NULL_PARAMETER` (`keys` NULL with `n_keys` > 0, or a NULL entry),
/// `INVALID_ARGUMENT` (more than 8 keys). Allowed inside callbacks.
#[unsafe(no_mangle)]
pub extern "C" fn grenache_link_sign_announcements(
    link: *const grenache_link,
    name: *const c_char,
    keys: *const *const grenache_keypair,
    n_keys: usize,
    ttl_ms: u64,
) -> grenache_result {
    ffi_panic_boundary! {
        let link = try_ref!(link);
        let name = try_str!(name);
        if n_keys > 0 && keys.is_null() {
            return grenache_result::NullParameter;
        }
        if n_keys > 8 {
            return grenache_result::InvalidArgument;
        }
        let mut pairs = Vec::with_capacity(n_keys);
        for i in 0..n_keys {
            // SAFETY: `keys` is non-NULL and, per the header, points to `n_keys` readable pointers.
            let k = unsafe { *keys.add(i) };
            pairs.push(try_ref!(k).inner.clone());
        }
        let ttl = if ttl_ms == 0 { Duration::from_secs(600) } else { Duration::from_millis(ttl_ms) };
        match link.inner.sign_announcements(name, pairs, ttl) {
            Ok(()) => grenache_result::Ok,
            Err(e) => grenache_result::from(&e),
        }
    }
}

/// Stores the JSON value in `json` (`json_len` bytes) in the DHT as an immutable item. `cb` gets
/// the item's hash as a JSON string (`"\"8c3f...\""`). Invalid JSON completes with
/// `INVALID_ARGUMENT`. Non-blocking; allowed inside callbacks.
#[unsafe(no_mangle)]
pub extern "C" fn grenache_link_put(
    link: *const grenache_link,
    json: *const c_char,
    json_len: usize,
    cb: grenache_json_cb,
    userdata: *mut c_void,
) -> grenache_result {
    ffi_panic_boundary! {
        let link = try_ref!(link);
        let text = try_str_len!(json, json_len);
        let cb = try_callback!(cb);
        let done = json_completion(cb, userdata);
        link.inner.put(text, move |r| done(r.map(|h| serde_json::Value::String(h).to_string())));
        grenache_result::Ok
    }
}

/// Signs the JSON value in `json` with `key` and stores it as a mutable item with sequence number
/// `seq` and an optional `salt` (NULL for none). `cb` gets the item's hash as a JSON string.
/// A `seq` not above the stored one completes with `SEQ_TOO_LOW`. Non-blocking. For a
/// compare-and-swap put see `grenache_link_put_mutable_cas`.
#[unsafe(no_mangle)]
pub extern "C" fn grenache_link_put_mutable(
    link: *const grenache_link,
    key: *const grenache_keypair,
    json: *const c_char,
    json_len: usize,
    seq: i64,
    salt: *const c_char,
    cb: grenache_json_cb,
    userdata: *mut c_void,
) -> grenache_result {
    ffi_panic_boundary! {
        put_mutable(link, key, json, json_len, seq, salt, None, cb, userdata)
    }
}

/// `grenache_link_put_mutable` with compare-and-swap (BEP44 `cas`): the item is stored only if
/// the sequence number stored now is `cas`; otherwise `cb` completes with `CAS_MISMATCH` (and
/// nothing changes). Use it to update an item without overwriting a concurrent update:
/// read it (`grenache_link_get`), then put `seq + 1` with `cas = seq`. Non-blocking.
#[unsafe(no_mangle)]
pub extern "C" fn grenache_link_put_mutable_cas(
    link: *const grenache_link,
    key: *const grenache_keypair,
    json: *const c_char,
    json_len: usize,
    seq: i64,
    salt: *const c_char,
    cas: i64,
    cb: grenache_json_cb,
    userdata: *mut c_void,
) -> grenache_result {
    ffi_panic_boundary! {
        put_mutable(link, key, json, json_len, seq, salt, Some(cas), cb, userdata)
    }
}

fn put_mutable(
    link: *const grenache_link,
    key: *const grenache_keypair,
    json: *const c_char,
    json_len: usize,
    seq: i64,
    salt: *const c_char,
    cas: Option<i64>,
    cb: grenache_json_cb,
    userdata: *mut c_void,
) -> grenache_result {
    let link = try_ref!(link);
    let key = try_ref!(key);
    let text = try_str_len!(json, json_len);
    let salt = if salt.is_null() { None } else { Some(try_str!(salt).to_string()) };
    let cb = try_callback!(cb);
    let v = match grenache_core::embed::rpc::parse_json(text) {
        Ok(v) => v,
        Err(e) => return grenache_result::from(&e),
    };
    let item = MutableItem { v, seq, salt, cas };
    let done = json_completion(cb, userdata);
    link.inner.put_mutable(&key.inner, item, move |r| done(r.map(|h| serde_json::Value::String(h).to_string())));
    grenache_result::Ok
}

/// Reads the DHT item with hex hash `hash` (and `salt`, or NULL, for salted mutable items). `cb`
/// gets the item as a JSON object (`{"v": ..., "k": ..., "seq": ...}`), or the JSON text `null`
/// when there is none. Non-blocking; allowed inside callbacks.
#[unsafe(no_mangle)]
pub extern "C" fn grenache_link_get(
    link: *const grenache_link,
    hash: *const c_char,
    salt: *const c_char,
    cb: grenache_json_cb,
    userdata: *mut c_void,
) -> grenache_result {
    ffi_panic_boundary! {
        let link = try_ref!(link);
        let hash = try_str!(hash);
        let salt = if salt.is_null() { None } else { Some(try_str!(salt).to_string()) };
        let cb = try_callback!(cb);
        link.inner.get(hash.to_string(), salt, json_completion(cb, userdata));
        grenache_result::Ok
    }
}

/// Generates a random key pair into `*out` (owned by the caller: `grenache_keypair_free`).
#[unsafe(no_mangle)]
pub extern "C" fn grenache_keypair_generate(out: *mut *mut grenache_keypair) -> grenache_result {
    ffi_panic_boundary! {
        if out.is_null() {
            return grenache_result::NullParameter;
        }
        // SAFETY: the out-pointer is the caller's, checked non-NULL by the write helper or before; the header says it must point to writable memory.
        unsafe { write_boxed(out, grenache_keypair { inner: Keypair::generate() }) };
        grenache_result::Ok
    }
}

/// The key pair of a 32-byte secret seed given as 64 hex characters, into `*out` (owned by the
/// caller). Errors: `NULL_PARAMETER`, `INVALID_UTF8`, `INVALID_ARGUMENT`.
#[unsafe(no_mangle)]
pub extern "C" fn grenache_keypair_from_secret_hex(secret_hex: *const c_char, out: *mut *mut grenache_keypair) -> grenache_result {
    ffi_panic_boundary! {
        let s = try_str!(secret_hex);
        if out.is_null() {
            return grenache_result::NullParameter;
        }
        // SAFETY: the out-pointer is the caller's, checked non-NULL by the write helper or before; the header says it must point to writable memory.
        unsafe { write_handle(out, Keypair::from_secret_hex(s), |inner| grenache_keypair { inner }) }
    }
}

fn write_hex(s: &str, buf: *mut c_char, len: usize, out_n: *mut usize) -> grenache_result {
    if buf.is_null() || out_n.is_null() {
        return grenache_result::NullParameter;
    }
    if s.len() + 1 > len {
        return grenache_result::BufferTooSmall;
    }
    // SAFETY: `buf` and `out_n` were checked non-NULL and `len` covers the text and its NUL;
    // the header requires `buf` to hold `len` writable bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(s.as_ptr(), buf.cast::<u8>(), s.len());
        buf.add(s.len()).write(0);
        write_out(out_n, s.len());
    }
    grenache_result::Ok
}

/// Writes the public key as 64 hex characters plus a NUL into `buf` (`len` >= 65) and 64 into
/// `*out_n`. Nothing is written on error (`NULL_PARAMETER`, `BUFFER_TOO_SMALL`).
#[unsafe(no_mangle)]
pub extern "C" fn grenache_keypair_public_hex(
    key: *const grenache_keypair,
    buf: *mut c_char,
    len: usize,
    out_n: *mut usize,
) -> grenache_result {
    ffi_panic_boundary! {
        let key = try_ref!(key);
        write_hex(&key.inner.public_hex(), buf, len, out_n)
    }
}

/// Writes the secret seed as 64 hex characters plus a NUL into `buf` (`len` >= 65) and 64 into
/// `*out_n`. Nothing is written on error (`NULL_PARAMETER`, `BUFFER_TOO_SMALL`).
#[unsafe(no_mangle)]
pub extern "C" fn grenache_keypair_secret_hex(
    key: *const grenache_keypair,
    buf: *mut c_char,
    len: usize,
    out_n: *mut usize,
) -> grenache_result {
    ffi_panic_boundary! {
        let key = try_ref!(key);
        write_hex(&key.inner.secret_hex(), buf, len, out_n)
    }
}

/// Writes the hex hash under which the mutable items of `key` (with `salt`, or NULL) are stored:
/// 40 hex characters plus a NUL into `buf` (`len` >= 41), 40 into `*out_n`.
#[unsafe(no_mangle)]
pub extern "C" fn grenache_keypair_target_hex(
    key: *const grenache_keypair,
    salt: *const c_char,
    buf: *mut c_char,
    len: usize,
    out_n: *mut usize,
) -> grenache_result {
    ffi_panic_boundary! {
        let key = try_ref!(key);
        let salt = if salt.is_null() { None } else { Some(try_str!(salt)) };
        write_hex(&key.inner.target_hex(salt), buf, len, out_n)
    }
}

/// Frees a key pair. NULL is ignored.
#[unsafe(no_mangle)]
pub extern "C" fn grenache_keypair_free(key: *mut grenache_keypair) {
    ffi_panic_boundary! {
        drop(try_box!(key));
    }
}
