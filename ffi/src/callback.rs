//! Completion callbacks: the C function-pointer types and their adapters to core closures.

use std::ffi::{c_char, c_void};

use grenache_core::Result;

use crate::error::{grenache_error, grenache_result};
use crate::ptr::{UserData, with_nul};

/// The completion of an operation that yields JSON text (a request's result, a lookup's peer
/// list, a put's hash, a get's item). Fires exactly once, on a worker thread (or, with
/// `GRENACHE_RESULT_CANCELLED`, on the thread that frees the handle).
///
/// On success `code` is `GRENACHE_RESULT_OK`, `err` is NULL and `json`/`json_len` hold the result
/// as NUL-terminated JSON text. On failure `err` holds the detail (for `GRENACHE_RESULT_REMOTE`
/// the remote handler's own text) and `json` is NULL. `err` and `json` are borrowed: valid only
/// until the callback returns.
pub type grenache_json_cb = Option<
    unsafe extern "C" fn(userdata: *mut c_void, code: grenache_result, err: *const grenache_error, json: *const c_char, json_len: usize),
>;

/// The completion of an operation that yields nothing (an announce). Fires exactly once, like
/// `grenache_json_cb`; `err` is NULL on success and borrowed otherwise.
pub type grenache_done_cb = Option<unsafe extern "C" fn(userdata: *mut c_void, code: grenache_result, err: *const grenache_error)>;

/// The completion of an operation that yields a yes or no (a graceful shutdown: did every
/// connection finish in time?). Fires exactly once, like `grenache_json_cb`: on success `code` is
/// `GRENACHE_RESULT_OK`, `err` is NULL and `value` is the answer; on failure `err` holds the
/// detail (borrowed) and `value` is false.
pub type grenache_bool_cb =
    Option<unsafe extern "C" fn(userdata: *mut c_void, code: grenache_result, err: *const grenache_error, value: bool)>;

type JsonFn = unsafe extern "C" fn(*mut c_void, grenache_result, *const grenache_error, *const c_char, usize);
type DoneFn = unsafe extern "C" fn(*mut c_void, grenache_result, *const grenache_error);
type BoolFn = unsafe extern "C" fn(*mut c_void, grenache_result, *const grenache_error, bool);

/// A core completion that calls the C `cb` with `userdata`.
pub(crate) fn json_completion(cb: JsonFn, userdata: *mut c_void) -> impl FnOnce(Result<String>) + Send + 'static {
    let ud = UserData(userdata);
    move |r: Result<String>| {
        let ud = ud;
        match r {
            // SAFETY: `cb` is the caller's function of this C signature; every pointer passed lives until it returns.
            Ok(s) => with_nul(s, |p, len| unsafe { cb(ud.0, grenache_result::Ok, std::ptr::null(), p, len) }),
            Err(e) => {
                let detail = grenache_error::from_error(&e);
                // SAFETY: `cb` is the caller's function of this C signature; every pointer passed lives until it returns.
                unsafe { cb(ud.0, grenache_result::from(&e), &detail, std::ptr::null(), 0) };
            }
        }
    }
}

/// A core completion that calls the C `cb` with `userdata`.
pub(crate) fn done_completion(cb: DoneFn, userdata: *mut c_void) -> impl FnOnce(Result<()>) + Send + 'static {
    let ud = UserData(userdata);
    move |r: Result<()>| {
        let ud = ud;
        match r {
            // SAFETY: `cb` is the caller's function of this C signature; every pointer passed lives until it returns.
            Ok(()) => unsafe { cb(ud.0, grenache_result::Ok, std::ptr::null()) },
            Err(e) => {
                let detail = grenache_error::from_error(&e);
                // SAFETY: `cb` is the caller's function of this C signature; every pointer passed lives until it returns.
                unsafe { cb(ud.0, grenache_result::from(&e), &detail) };
            }
        }
    }
}

/// A core completion that calls the C `cb` with `userdata`.
pub(crate) fn bool_completion(cb: BoolFn, userdata: *mut c_void) -> impl FnOnce(Result<bool>) + Send + 'static {
    let ud = UserData(userdata);
    move |r: Result<bool>| {
        let ud = ud;
        match r {
            // SAFETY: the callback contract in the header (a C function taking these arguments).
            Ok(v) => unsafe { cb(ud.0, grenache_result::Ok, std::ptr::null(), v) },
            Err(e) => {
                let detail = grenache_error::from_error(&e);
                // SAFETY: as above; `detail` outlives the call.
                unsafe { cb(ud.0, grenache_result::from(&e), &detail, false) };
            }
        }
    }
}

/// `Some(fn)` or an early `return NULL_PARAMETER`.
macro_rules! try_callback {
    ($cb:expr) => {
        match $cb {
            Some(f) => f,
            None => return $crate::error::grenache_result::NullParameter,
        }
    };
}
pub(crate) use try_callback;
