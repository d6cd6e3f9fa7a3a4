//! `grenache_grape`: a Grape (DHT node + HTTP API) run inside the process.

use std::ffi::{c_char, c_void};
use std::net::IpAddr;

use grenache_core::embed::{EmbedGrape, GrapeConfig, GrapeEvent, GrapeEventDelivery};

use crate::error::grenache_result;
use crate::panic::ffi_panic_boundary;
use crate::ptr::{NulString, try_box, try_mut, try_ref, try_str, write_boxed, write_handle};
use crate::reply::{OwnedUserData, grenache_free_cb};
use crate::runtime::grenache_runtime;

/// A running Grape: a DHT node (UDP) plus the Grape HTTP API (TCP) that Links talk to.
/// Start it with `grenache_grape_start`, stop and free it with `grenache_grape_free`.
#[derive(Debug)]
pub struct grenache_grape {
    inner: EmbedGrape,
}

/// Starts a Grape with its DHT on UDP `dht_port` and its HTTP API on TCP `api_port` (0: any free
/// port for either; read them back with `grenache_grape_dht_port` / `grenache_grape_api_port`),
/// bootstrapping from `bootstrap`, a comma-separated list of `"host:port"` DHT addresses of
/// other Grapes (NULL or `""`: none). Peers are kept for the reference's 2 minutes.
///
/// Blocks until both ports are bound (at most 10 s): not allowed inside callbacks
/// (`INVALID_STATE`). Writes `*out` (owned by the caller) on success. Errors: `NULL_PARAMETER`,
/// `INVALID_UTF8`, `IO` (a port is busy), `INVALID_STATE`.
#[unsafe(no_mangle)]
pub extern "C" fn grenache_grape_start(
    rt: *const grenache_runtime,
    dht_port: u16,
    api_port: u16,
    bootstrap: *const c_char,
    out: *mut *mut grenache_grape,
) -> grenache_result {
    ffi_panic_boundary! {
        let rt = try_ref!(rt);
        let bootstrap = if bootstrap.is_null() {
            Vec::new()
        } else {
            // SAFETY: the caller passes NULL or memory valid for the given length (or up to its NUL) for this call, as the header requires; NULL is checked.
            match unsafe { crate::ptr::str_from_c(bootstrap) } {
                Ok(s) => parse_bootstrap(s),
                Err(e) => return e,
            }
        };
        if out.is_null() {
            return grenache_result::NullParameter;
        }
        let mut config = GrapeConfig::new();
        config.dht_port(dht_port).api_port(api_port).bootstrap(bootstrap);
        start(rt, config, out)
    }
}

fn start(rt: &grenache_runtime, config: GrapeConfig, out: *mut *mut grenache_grape) -> grenache_result {
    // SAFETY: the out-pointer is the caller's, checked non-NULL by the write helper or before; the header says it must point to writable memory.
    unsafe { write_handle(out, EmbedGrape::start(&rt.rt, config), |inner| grenache_grape { inner }) }
}

fn parse_bootstrap(list: &str) -> Vec<String> {
    list.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect()
}

/// The Grape's DHT (UDP) port, for other Grapes' bootstrap lists (0 when `grape` is NULL).
#[unsafe(no_mangle)]
pub extern "C" fn grenache_grape_dht_port(grape: *const grenache_grape) -> u16 {
    ffi_panic_boundary! {
        try_ref!(grape).inner.grape().map_or(0, |g| g.dht_addr().port())
    }
}

/// The Grape's HTTP API port: Links connect to `http://127.0.0.1:<port>` (0 when `grape` is NULL).
#[unsafe(no_mangle)]
pub extern "C" fn grenache_grape_api_port(grape: *const grenache_grape) -> u16 {
    ffi_panic_boundary! {
        try_ref!(grape).inner.grape().map_or(0, |g| g.api_addr().port())
    }
}

/// Stops the Grape, frees its ports and the handle. Blocks (at most 10 s) until stopped; inside
/// a callback the stop finishes in the background instead. NULL is ignored.
#[unsafe(no_mangle)]
pub extern "C" fn grenache_grape_free(grape: *mut grenache_grape) {
    ffi_panic_boundary! {
        drop(try_box!(grape));
    }
}

/// The kind of a Grape event (the `event` argument of `grenache_grape_event_cb`). New kinds may be
/// added: ignore the ones you do not know.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum grenache_grape_event {
    /// The DHT's UDP socket is bound (always the first event). `detail` is NULL.
    Listening = 0,
    /// The DHT bootstrap walk finished (also when no bootstrap node answered). `detail` is NULL.
    Ready = 1,
    /// A service was stored in this Grape's peer store; `detail` is its name.
    Announce = 2,
    /// A lookup found a peer; `detail` is its `"ip:port"`.
    Peer = 3,
    /// A node was added to the DHT routing table. `detail` is NULL.
    Node = 4,
    /// A malformed or unexpected datagram was dropped; `detail` says what.
    Warning = 5,
    /// The callback fell behind: `dropped` events (the oldest) were dropped for it. `detail` is
    /// NULL.
    Lagged = 6,
    /// An event this version of the header does not name. `detail` is NULL.
    Other = 7,
}

/// Receives one event of a Grape (`grenache_grape_on_event`): its kind, a `detail` text
/// (NUL-terminated, borrowed until the callback returns; NULL for kinds without one, see
/// `grenache_grape_event`) and, for `GRENACHE_GRAPE_EVENT_LAGGED`, how many events were dropped
/// (0 otherwise).
///
/// Called on a library worker thread, one event at a time per registration, in order. It should
/// return quickly: while it runs, events queue up (at most 1024 per registration; beyond that the
/// oldest are dropped and reported with `GRENACHE_GRAPE_EVENT_LAGGED`, so memory stays bounded
/// and the Grape is never slowed down). It may call non-blocking functions of this library, not
/// blocking ones (`INVALID_STATE`), and must not unwind across the library.
pub type grenache_grape_event_cb =
    Option<unsafe extern "C" fn(userdata: *mut c_void, event: grenache_grape_event, detail: *const c_char, dropped: u64)>;

/// Registers `cb` to receive the events of `grape` (several registrations may coexist). The first
/// event is `GRENACHE_GRAPE_EVENT_LISTENING`, then `GRENACHE_GRAPE_EVENT_READY` once the bootstrap
/// walk has finished (at once if it already has), then events as they happen, until
/// `grenache_grape_free`: after that returns `cb` is not running (unless `grenache_grape_free`
/// was called from inside it) and never runs again.
///
/// `free_userdata` (may be NULL) runs exactly once, on any thread, after the last call of `cb`
/// (also when this call fails). Non-blocking. Errors: `NULL_PARAMETER`, `CANCELLED` (runtime
/// freed).
#[unsafe(no_mangle)]
pub extern "C" fn grenache_grape_on_event(
    grape: *const grenache_grape,
    cb: grenache_grape_event_cb,
    userdata: *mut c_void,
    free_userdata: grenache_free_cb,
) -> grenache_result {
    ffi_panic_boundary! {
        let ud = OwnedUserData::new(userdata, free_userdata);
        let g = try_ref!(grape);
        let cb = crate::callback::try_callback!(cb);
        let on_event = move |d: GrapeEventDelivery<'_>| {
            let (kind, detail, dropped) = match d {
                GrapeEventDelivery::Lagged(n) => (grenache_grape_event::Lagged, None, n),
                GrapeEventDelivery::Event(e) => match e {
                    GrapeEvent::Listening => (grenache_grape_event::Listening, None, 0),
                    GrapeEvent::Ready => (grenache_grape_event::Ready, None, 0),
                    GrapeEvent::Announce(n) => (grenache_grape_event::Announce, Some(n), 0),
                    GrapeEvent::Peer(p) => (grenache_grape_event::Peer, Some(p), 0),
                    GrapeEvent::Node => (grenache_grape_event::Node, None, 0),
                    GrapeEvent::Warning(w) => (grenache_grape_event::Warning, Some(w), 0),
                    _ => (grenache_grape_event::Other, None, 0),
                },
            };
            let detail = detail.map(|t| NulString::new(t.clone()));
            let p = detail.as_ref().map_or(std::ptr::null(), |d| d.as_ptr());
            // SAFETY: the callback contract in the header; `detail` outlives the call.
            unsafe { cb(ud.get(), kind, p, dropped) };
        };
        match g.inner.on_event(on_event) {
            Ok(()) => grenache_result::Ok,
            Err(e) => grenache_result::from(&e),
        }
    }
}

/// The settings of a Grape beyond its ports and bootstrap list (the reference's Grape options and
/// the `grape` command line's): a builder. Create it with `grenache_grape_options_new`, set what
/// you need, start Grapes with `grenache_grape_start_opts` (which copies the settings), free it
/// with `grenache_grape_options_free`.
#[derive(Debug)]
pub struct grenache_grape_options {
    config: GrapeConfig,
}

/// The numeric settings of `grenache_grape_options_set`. Durations are in milliseconds.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum grenache_grape_option {
    /// UDP port of the DHT node (0, the default here: any free port). At most 65535.
    DhtPort = 0,
    /// TCP port of the HTTP API (0, the default here: any free port). At most 65535.
    ApiPort = 1,
    /// How long an announced service is kept (`dht_peer_maxAge`; default 120000; 0: forever).
    PeerMaxAgeMs = 2,
    /// Routing-table liveness period (`dht_nodeLiveness`; default 300000).
    NodeLivenessMs = 3,
    /// LRU size of the per-target closest-node tables (`dht_maxTables`; default 5000).
    MaxTables = 4,
    /// LRU size of the BEP44 value store (`dht_maxValues`; default 5000).
    MaxValues = 5,
    /// Most announced peers stored, over all names (default 1000000).
    MaxPeers = 6,
    /// Largest accepted HTTP API body in bytes (`check_maxPayloadSize`; default 8192).
    MaxPayloadSize = 7,
    /// Most HTTP API connections served at once (default 10000).
    MaxConnections = 8,
    /// Re-announces of the same name and port within this window are answered without a DHT
    /// round (default: peer max age / 20, at most 1000; 0: every announce reaches the DHT).
    AnnounceWindowMs = 9,
    /// Lookups of a name within this long after a DHT walk that found peers skip the walk
    /// (default: peer max age / 1200, at most 100; 0: every lookup walks).
    LookupWindowMs = 10,
    /// Most HTTP API connections one source IP address holds at once; further ones are closed at
    /// once (default 2000).
    MaxConnectionsPerIp = 11,
    /// Time an HTTP client has to send a request's head (default 10000).
    HeaderTimeoutMs = 12,
    /// Time an HTTP client has to send a request's whole body; a late one gets `408
    /// ERR_GRAPE_TIMEOUT` (default 10000).
    BodyTimeoutMs = 13,
    /// Bytes per second a body must come at, on average, after its first 5 s (default 4096; 0:
    /// any rate).
    BodyMinRate = 14,
    /// Time an idle keep-alive HTTP connection is kept (default 5000).
    IdleTimeoutMs = 15,
    /// Longest service name (DHT key) stored or looked up, in bytes (default 256).
    MaxKeyLen = 16,
    /// Most bytes the peer store holds, keys and records (default 67108864).
    PeerStoreBytes = 17,
    /// Most peer records one IP address has in the peer store (default 10000).
    MaxRecordsPerIp = 18,
    /// KRPC queries one IP address may send per second, bursts of twice as many (default 500; 0:
    /// any).
    QueriesPerIp = 19,
    /// Whether the DHT also runs over IPv6 (BEP 32): 0 IPv4 only, 1 dual-stack where the host has
    /// IPv6 (an IPv6 socket on `[::]` beside `0.0.0.0`; IPv4 only on a host without IPv6), 2
    /// dual-stack on `[::]`, the Grape does not start without it (default 1).
    DhtIpv6 = 20,
    /// 1: a dual-stack DHT announces over IPv6 too, so lookups also return the host's IPv6
    /// address (for services listening on IPv6); 0: over IPv4 only (default 0).
    AnnounceIpv6 = 21,
}

/// Creates Grape options with the defaults (both ports 0: any free port; no bootstrap node; the
/// rest as documented on `grenache_grape_option`) into `*out` (owned by the caller:
/// `grenache_grape_options_free`). Errors: `NULL_PARAMETER`.
#[unsafe(no_mangle)]
pub extern "C" fn grenache_grape_options_new(out: *mut *mut grenache_grape_options) -> grenache_result {
    ffi_panic_boundary! {
        if out.is_null() {
            return grenache_result::NullParameter;
        }
        let mut config = GrapeConfig::new();
        config.dht_port(0).api_port(0);
        // SAFETY: the out-pointer is the caller's, checked non-NULL by the write helper or before; the header says it must point to writable memory.
        unsafe { write_boxed(out, grenache_grape_options { config }) };
        grenache_result::Ok
    }
}

/// Frees Grape options. NULL is ignored.
#[unsafe(no_mangle)]
pub extern "C" fn grenache_grape_options_free(opts: *mut grenache_grape_options) {
    ffi_panic_boundary! {
        drop(try_box!(opts));
    }
}

/// Sets the numeric setting `option` (one of `GRENACHE_GRAPE_OPTION_*`) to `value`.
/// Errors: `NULL_PARAMETER`, `INVALID_ARGUMENT` (unknown option, or a port above 65535); nothing
/// changes on error.
#[unsafe(no_mangle)]
pub extern "C" fn grenache_grape_options_set(opts: *mut grenache_grape_options, option: u32, value: u64) -> grenache_result {
    ffi_panic_boundary! {
        let o = try_mut!(opts);
        let Some(name) = grenache_core::grape::GRAPE_OPTION_NAMES.get(option as usize) else {
            return grenache_result::InvalidArgument;
        };
        match o.config.set(name, value) {
            Ok(_) => grenache_result::Ok,
            Err(_) => grenache_result::InvalidArgument,
        }
    }
}

/// The name of the Grape option `option` (`"peer_max_age_ms"`...), as the Python, Node and Ruby
/// faces spell it, or NULL for an unknown option. Static: never free it.
#[unsafe(no_mangle)]
pub extern "C" fn grenache_grape_option_name(option: u32) -> *const c_char {
    ffi_panic_boundary! {
        static NAMES: crate::ptr::StaticNames = crate::ptr::StaticNames::new(&grenache_core::grape::GRAPE_OPTION_NAMES);
        NAMES.get(option)
    }
}

/// Sets the address the HTTP API binds to, an IP address such as `"127.0.0.1"` (the reference's
/// `host`, the `grape -b` option); with an IPv4 address an announce also stores `host:port` in
/// this Grape's own peer store. NULL (the default): every IPv4 address. Errors: `NULL_PARAMETER`
/// (`opts`), `INVALID_UTF8`, `INVALID_ARGUMENT` (not an IP address).
#[unsafe(no_mangle)]
pub extern "C" fn grenache_grape_options_set_host(opts: *mut grenache_grape_options, host: *const c_char) -> grenache_result {
    ffi_panic_boundary! {
        let o = try_mut!(opts);
        if host.is_null() {
            o.config.host(None);
            return grenache_result::Ok;
        }
        match try_str!(host).parse::<IpAddr>() {
            Ok(ip) => {
                o.config.host(Some(ip));
                grenache_result::Ok
            }
            Err(_) => grenache_result::InvalidArgument,
        }
    }
}

/// Sets the DHT bootstrap nodes: a comma-separated list of `"host:port"` DHT addresses of other
/// Grapes (NULL or `""`: none, the default). Errors: `NULL_PARAMETER` (`opts`), `INVALID_UTF8`.
#[unsafe(no_mangle)]
pub extern "C" fn grenache_grape_options_set_bootstrap(opts: *mut grenache_grape_options, bootstrap: *const c_char) -> grenache_result {
    ffi_panic_boundary! {
        let o = try_mut!(opts);
        let list = if bootstrap.is_null() { Vec::new() } else { parse_bootstrap(try_str!(bootstrap)) };
        o.config.bootstrap(list);
        grenache_result::Ok
    }
}

/// Sets the file that keeps the DHT node's id and the good nodes of its routing table across
/// restarts (the `grape --dht-state FILE` option). It is read at start: the saved nodes are used
/// at once, so the Grape serves lookups without any bootstrap node, and those that do not answer
/// are dropped. It is written when the Grape stops and every minute while it runs. A missing file
/// is a first start; a malformed one is reported as a `WARNING` event and ignored. NULL (the
/// default): nothing is saved. Errors: `NULL_PARAMETER` (`opts`), `INVALID_UTF8`.
#[unsafe(no_mangle)]
pub extern "C" fn grenache_grape_options_set_dht_state(opts: *mut grenache_grape_options, path: *const c_char) -> grenache_result {
    ffi_panic_boundary! {
        let o = try_mut!(opts);
        let path = if path.is_null() { None } else { Some(std::path::PathBuf::from(try_str!(path))) };
        o.config.dht_state(path.filter(|p| !p.as_os_str().is_empty()));
        grenache_result::Ok
    }
}

/// Starts a Grape with `opts` (copied; NULL: the defaults of `grenache_grape_options_new`).
/// Otherwise the same contract as `grenache_grape_start`: blocks until both ports are bound (at
/// most 10 s; `INVALID_STATE` inside callbacks) and writes `*out` on success. Errors:
/// `NULL_PARAMETER`, `IO` (a port is busy), `INVALID_STATE`.
#[unsafe(no_mangle)]
pub extern "C" fn grenache_grape_start_opts(
    rt: *const grenache_runtime,
    opts: *const grenache_grape_options,
    out: *mut *mut grenache_grape,
) -> grenache_result {
    ffi_panic_boundary! {
        let rt = try_ref!(rt);
        if out.is_null() {
            return grenache_result::NullParameter;
        }
        // SAFETY: the caller passes NULL or a live handle of this library (header contract); NULL gives None.
        let config = match unsafe { opts.as_ref() } {
            Some(o) => o.config.clone(),
            None => {
                let mut c = GrapeConfig::new();
                c.dht_port(0).api_port(0);
                c
            }
        };
        start(rt, config, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_numbers_match_the_core_names() {
        use grenache_grape_option::*;
        let all = [
            (DhtPort, "dht_port"),
            (ApiPort, "api_port"),
            (PeerMaxAgeMs, "peer_max_age_ms"),
            (NodeLivenessMs, "node_liveness_ms"),
            (MaxTables, "max_tables"),
            (MaxValues, "max_values"),
            (MaxPeers, "max_peers"),
            (MaxPayloadSize, "max_payload_size"),
            (MaxConnections, "max_connections"),
            (AnnounceWindowMs, "announce_window_ms"),
            (LookupWindowMs, "lookup_window_ms"),
            (MaxConnectionsPerIp, "max_connections_per_ip"),
            (HeaderTimeoutMs, "header_timeout_ms"),
            (BodyTimeoutMs, "body_timeout_ms"),
            (BodyMinRate, "body_min_rate"),
            (IdleTimeoutMs, "idle_timeout_ms"),
            (MaxKeyLen, "max_key_len"),
            (PeerStoreBytes, "peer_store_bytes"),
            (MaxRecordsPerIp, "max_records_per_ip"),
            (QueriesPerIp, "queries_per_ip"),
            (DhtIpv6, "dht_ipv6"),
            (AnnounceIpv6, "announce_ipv6"),
        ];
        assert_eq!(all.len(), grenache_core::grape::GRAPE_OPTION_NAMES.len());
        for (option, name) in all {
            // SAFETY: a static NUL-terminated string of this library.
            let got = unsafe { std::ffi::CStr::from_ptr(grenache_grape_option_name(option as u32)) };
            assert_eq!(got.to_str(), Ok(name));
        }
        assert!(grenache_grape_option_name(all.len() as u32).is_null());
        let mut opts: *mut grenache_grape_options = std::ptr::null_mut();
        assert_eq!(grenache_grape_options_new(&mut opts), grenache_result::Ok);
        assert_eq!(grenache_grape_options_set(opts, MaxKeyLen as u32, 64), grenache_result::Ok);
        assert_eq!(grenache_grape_options_set(opts, DhtPort as u32, 70_000), grenache_result::InvalidArgument);
        assert_eq!(grenache_grape_options_set(opts, 99, 1), grenache_result::InvalidArgument);
        // SAFETY: `opts` is the live handle created above.
        assert_eq!(unsafe { &(*opts).config }.get_dht_limits().peer_store.max_key_len, 64);
        grenache_grape_options_free(opts);
    }
}
