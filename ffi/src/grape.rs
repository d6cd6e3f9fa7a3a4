//! `grenache_grape`: a Grape (DHT node + HTTP API) run inside the process.

use std::ffi::c_char;

use grenache_core::embed::{EmbedGrape, GrapeConfig};

use crate::error::grenache_result;
use crate::panic::ffi_panic_boundary;
use crate::ptr::{try_box, try_ref, write_out};
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
            match unsafe { crate::ptr::str_from_c(bootstrap) } {
                Ok(s) => s.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect(),
                Err(e) => return e,
            }
        };
        if out.is_null() {
            return grenache_result::NullParameter;
        }
        let mut config = GrapeConfig::new();
        config.dht_port(dht_port).api_port(api_port).bootstrap(bootstrap);
        match EmbedGrape::start(&rt.rt, config) {
            Ok(inner) => {
                unsafe { write_out(out, Box::into_raw(Box::new(grenache_grape { inner }))) };
                grenache_result::Ok
            }
            Err(e) => grenache_result::from(&e),
        }
    }
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
