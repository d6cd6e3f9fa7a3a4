//! NULL-checked pointer casts and borrowed views of C strings and buffers.

use std::ffi::{CStr, c_char, c_void};

use crate::result::grenache_result;

/// `&T` from a `*const T`, or an early return of the [`NullParameterOrDefault`] value.
///
/// [`NullParameterOrDefault`]: crate::panic::NullParameterOrDefault
macro_rules! try_ref {
    ($p:expr) => {
        // SAFETY: the caller passes NULL or a live handle of this library (header contract); NULL gives None.
        match unsafe { ($p).as_ref() } {
            Some(r) => r,
            None => return $crate::panic::NullParameterOrDefault::null_value(),
        }
    };
}
pub(crate) use try_ref;

/// `&mut T` from a `*mut T`, or an early return of the NULL value.
macro_rules! try_mut {
    ($p:expr) => {
        // SAFETY: the caller passes NULL or a live handle of this library (header contract); NULL gives None.
        match unsafe { ($p).as_mut() } {
            Some(r) => r,
            None => return $crate::panic::NullParameterOrDefault::null_value(),
        }
    };
}
pub(crate) use try_mut;

/// Takes back ownership of a `Box<T>` handed out with `Box::into_raw`, or returns early on NULL.
macro_rules! try_box {
    ($p:expr) => {{
        let p = $p;
        if p.is_null() {
            return $crate::panic::NullParameterOrDefault::null_value();
        }
        // SAFETY: a non-NULL handle came from Box::into_raw in this library and is given back once (header contract: freeing consumes it).
        unsafe { Box::from_raw(p) }
    }};
}
pub(crate) use try_box;

/// `&str` from a NUL-terminated C string, or an early return of `NULL_PARAMETER` /
/// `INVALID_UTF8`.
macro_rules! try_str {
    ($p:expr) => {
        // SAFETY: the caller passes NULL or memory valid for the given length (or up to its NUL) for this call, as the header requires; NULL is checked.
        match unsafe { $crate::ptr::str_from_c($p) } {
            Ok(s) => s,
            Err(code) => return code,
        }
    };
}
pub(crate) use try_str;

/// `&str` from `(ptr, len)` bytes, or an early return of `NULL_PARAMETER` / `INVALID_UTF8`.
macro_rules! try_str_len {
    ($p:expr, $len:expr) => {
        // SAFETY: the caller passes NULL or memory valid for the given length (or up to its NUL) for this call, as the header requires; NULL is checked.
        match unsafe { $crate::ptr::str_from_raw($p, $len) } {
            Ok(s) => s,
            Err(code) => return code,
        }
    };
}
pub(crate) use try_str_len;

/// Reads a NUL-terminated UTF-8 C string.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string that stays valid for `'a`.
pub(crate) unsafe fn str_from_c<'a>(p: *const c_char) -> Result<&'a str, grenache_result> {
    if p.is_null() {
        return Err(grenache_result::NullParameter);
    }
    // SAFETY: the caller passes NULL or memory valid for the given length (or up to its NUL) for this call, as the header requires; NULL is checked.
    let c = unsafe { CStr::from_ptr(p) };
    c.to_str().map_err(|_| grenache_result::InvalidUtf8)
}

/// Reads `len` UTF-8 bytes at `p`. `p` may be NULL only when `len` is 0.
///
/// # Safety
/// `p` is NULL or points to `len` readable bytes that stay valid for `'a`.
pub(crate) unsafe fn str_from_raw<'a>(p: *const c_char, len: usize) -> Result<&'a str, grenache_result> {
    // SAFETY: the caller passes NULL or memory valid for the given length (or up to its NUL) for this call, as the header requires; NULL is checked.
    let bytes = unsafe { bytes_from_raw(p.cast(), len)? };
    std::str::from_utf8(bytes).map_err(|_| grenache_result::InvalidUtf8)
}

/// Reads `len` bytes at `p`. `p` may be NULL only when `len` is 0.
///
/// # Safety
/// `p` is NULL or points to `len` readable bytes that stay valid for `'a`.
pub(crate) unsafe fn bytes_from_raw<'a>(p: *const u8, len: usize) -> Result<&'a [u8], grenache_result> {
    if p.is_null() {
        return if len == 0 { Ok(&[]) } else { Err(grenache_result::NullParameter) };
    }
    if len > isize::MAX as usize {
        return Err(grenache_result::InvalidArgument);
    }
    // SAFETY: the caller passes NULL or memory valid for the given length (or up to its NUL) for this call, as the header requires; NULL is checked.
    Ok(unsafe { std::slice::from_raw_parts(p, len) })
}

/// Writes `v` through `out` (already checked non-NULL by the caller's contract).
///
/// # Safety
/// `out` is valid for a write of `T`.
pub(crate) unsafe fn write_out<T>(out: *mut T, v: T) {
    // SAFETY: the out-pointer is the caller's, checked non-NULL by the write helper or before; the header says it must point to writable memory.
    unsafe { out.write(v) }
}

/// Boxes `v` and writes the pointer through `out`; the caller of the C function owns it.
///
/// # Safety
/// As [`write_out`].
pub(crate) unsafe fn write_boxed<T>(out: *mut *mut T, v: T) {
    // SAFETY: the out-pointer is the caller's, checked non-NULL by the write helper or before; the header says it must point to writable memory.
    unsafe { write_out(out, Box::into_raw(Box::new(v))) }
}

/// The usual end of a constructor: on success writes the boxed handle `wrap(value)` through
/// `out` and returns `OK`; on failure writes nothing and returns the error's code.
///
/// # Safety
/// As [`write_out`].
pub(crate) unsafe fn write_handle<T, H>(out: *mut *mut H, made: grenache_core::Result<T>, wrap: impl FnOnce(T) -> H) -> grenache_result {
    match made {
        Ok(v) => {
            // SAFETY: the out-pointer is the caller's, checked non-NULL by the write helper or before; the header says it must point to writable memory.
            unsafe { write_boxed(out, wrap(v)) };
            grenache_result::Ok
        }
        Err(e) => grenache_result::from(&e),
    }
}

/// A C `void *userdata` that the caller promised may be used from any thread.
#[derive(Debug, Clone, Copy)]
pub(crate) struct UserData(pub(crate) *mut c_void);

// SAFETY: the header's threading contract: userdata given with a callback is used from library
// threads, concurrently; the caller guarantees that this is safe for its data.
unsafe impl Send for UserData {}
// SAFETY: as for Send: sharing it between library threads is the caller's contract.
unsafe impl Sync for UserData {}

/// A string with a trailing NUL, to hand out as `const char *` plus a length without the NUL.
#[derive(Debug, Clone)]
pub(crate) struct NulString(String);

impl NulString {
    pub(crate) fn new(mut s: String) -> NulString {
        // Interior NULs are legal in JSON only escaped, so they never occur in our JSON texts;
        // for other strings they merely truncate what C's str* functions see.
        s.push('\0');
        NulString(s)
    }

    pub(crate) fn as_ptr(&self) -> *const c_char {
        self.0.as_ptr().cast()
    }

    /// Length without the trailing NUL.
    pub(crate) fn len(&self) -> usize {
        self.0.len() - 1
    }
}

/// Calls `f` with `s` as a NUL-terminated string and its length without the NUL, borrowed for the
/// call: a short string is copied to the stack (no allocation per completion), a longer one gets
/// its NUL appended in place.
pub(crate) fn with_nul<R>(s: String, f: impl FnOnce(*const c_char, usize) -> R) -> R {
    const STACK: usize = 256;
    let len = s.len();
    if len < STACK {
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); STACK];
        // SAFETY: `len + 1 <= STACK` bytes are written, and only they are read (up to the NUL).
        unsafe {
            std::ptr::copy_nonoverlapping(s.as_ptr(), buf.as_mut_ptr().cast::<u8>(), len);
            buf.as_mut_ptr().add(len).write(std::mem::MaybeUninit::new(0));
        }
        f(buf.as_ptr().cast(), len)
    } else {
        let s = NulString::new(s);
        f(s.as_ptr(), s.len())
    }
}

/// A table of names handed to C as static NUL-terminated strings (`grenache_*_name`), made once
/// on first use.
pub(crate) struct StaticNames {
    names: &'static [&'static str],
    c: std::sync::OnceLock<Vec<std::ffi::CString>>,
}

impl StaticNames {
    pub(crate) const fn new(names: &'static [&'static str]) -> StaticNames {
        StaticNames { names, c: std::sync::OnceLock::new() }
    }

    /// The name at `index`, or NULL past the end. Valid for the life of the process.
    pub(crate) fn get(&'static self, index: u32) -> *const c_char {
        let c = self.c.get_or_init(|| self.names.iter().filter_map(|n| std::ffi::CString::new(*n).ok()).collect());
        c.get(index as usize).map_or(std::ptr::null(), |n| n.as_ptr())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_nul_gives_nul_terminated_text_of_any_length() {
        for len in [0, 1, 7, 255, 256, 257, 5000] {
            let s: String = "é".repeat(len / 2) + &"x".repeat(len % 2);
            let expect = s.clone();
            with_nul(s, |p, n| {
                assert_eq!(n, expect.len());
                // SAFETY: `with_nul` hands a NUL-terminated buffer that lives during the closure.
                let c = unsafe { CStr::from_ptr(p) };
                assert_eq!(c.to_str().expect("utf8"), expect);
            });
        }
    }
}
