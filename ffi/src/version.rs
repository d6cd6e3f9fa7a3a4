//! The library version.

use std::ffi::c_char;

use crate::panic::ffi_panic_boundary;

static VERSION: &str = concat!("grenache/", env!("CARGO_PKG_VERSION"), "\0");

/// The library version as a static NUL-terminated string, `"grenache/MAJOR.MINOR.PATCH"`.
///
/// Compare it with the `GRENACHE_VERSION_*` macros of the header you compiled against. Never
/// free it. Thread-safe; may be called inside callbacks.
#[unsafe(no_mangle)]
pub extern "C" fn grenache_version() -> *const c_char {
    ffi_panic_boundary! { VERSION.as_ptr().cast() }
}
