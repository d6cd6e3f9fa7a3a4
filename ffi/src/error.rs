//! Result codes, their names and messages, and the error detail of async completions.

use std::ffi::{CString, c_char};

use grenache_core::{Error, ErrorKind};

use crate::panic::ffi_panic_boundary;
use crate::ptr::{try_ref, write_out};
pub use crate::result::grenache_result;

/// The C strings of one text per code, built once.
type CodeTexts = std::sync::OnceLock<Vec<(u32, CString)>>;

static NAMES: CodeTexts = std::sync::OnceLock::new();
static CLASS_NAMES: CodeTexts = std::sync::OnceLock::new();

fn code_text(table: &'static CodeTexts, code: u32, text: fn(grenache_result) -> &'static str) -> Option<&'static CString> {
    let texts =
        table.get_or_init(|| grenache_result::ALL.iter().map(|r| (*r as u32, CString::new(text(*r)).unwrap_or_default())).collect());
    texts.iter().find(|(c, _)| *c == code).map(|(_, n)| n)
}

/// The stable name of a result code: `"OK"`, `"ERR_TIMEOUT"`, `"ERR_GRAPE_LOOKUP_EMPTY"`...
/// (the Node reference's string where one exists).
///
/// Returns a static NUL-terminated string that must not be freed, or NULL for a number that is
/// not a code. Thread-safe; may be called inside callbacks.
#[unsafe(no_mangle)]
pub extern "C" fn grenache_result_name(code: u32) -> *const c_char {
    ffi_panic_boundary! {
        match code_text(&NAMES, code, grenache_result::name) {
            Some(n) => n.as_ptr(),
            None => std::ptr::null(),
        }
    }
}

/// The name of the error class of a result code in the language faces: `"TimeoutError"`,
/// `"LookupEmptyError"`... (`"Ok"` for `GRENACHE_RESULT_OK`). A binding over the C ABI derives
/// its exception classes from it, by walking the codes from 100 to 999.
///
/// Returns a static NUL-terminated string that must not be freed, or NULL for a number that is
/// not a code. Thread-safe; may be called inside callbacks.
#[unsafe(no_mangle)]
pub extern "C" fn grenache_result_class_name(code: u32) -> *const c_char {
    ffi_panic_boundary! {
        let class = |r: grenache_result| r.kind().map_or("Ok", ErrorKind::class_name);
        match code_text(&CLASS_NAMES, code, class) {
            Some(n) => n.as_ptr(),
            None => std::ptr::null(),
        }
    }
}

/// Writes a one-line description of `code` into `buf` (at most `len` bytes, NUL included) and
/// its length without the NUL into `*out_n`.
///
/// Returns `GRENACHE_RESULT_BUFFER_TOO_SMALL` when `len` is too small (256 bytes always suffice),
/// `GRENACHE_RESULT_INVALID_ARGUMENT` for a number that is not a code, `NULL_PARAMETER` for NULL
/// `buf` or `out_n`. Nothing is written unless the result is OK. Thread-safe; may be called inside
/// callbacks.
#[unsafe(no_mangle)]
pub extern "C" fn grenache_result_message(code: u32, buf: *mut c_char, len: usize, out_n: *mut usize) -> grenache_result {
    ffi_panic_boundary! {
        if buf.is_null() || out_n.is_null() {
            return grenache_result::NullParameter;
        }
        let Some(r) = grenache_result::from_u32(code) else {
            return grenache_result::InvalidArgument;
        };
        let msg = r.message().as_bytes();
        if msg.len() + 1 > len {
            return grenache_result::BufferTooSmall;
        }
        // SAFETY: `buf` and `out_n` were checked non-NULL and `len` covers the text and its NUL;
        // the header requires `buf` to hold `len` writable bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(msg.as_ptr(), buf.cast::<u8>(), msg.len());
            buf.add(msg.len()).write(0);
            write_out(out_n, msg.len());
        }
        grenache_result::Ok
    }
}

/// The detail of a failed asynchronous operation, handed to its completion callback.
///
/// Borrowed: valid only until the callback returns; never free it. Read it with
/// `grenache_error_code` and `grenache_error_message`.
#[derive(Debug)]
pub struct grenache_error {
    code: grenache_result,
    message: CString,
}

impl grenache_error {
    /// The detail of a core error. For `REMOTE` errors the message is exactly the remote text.
    pub(crate) fn from_error(e: &Error) -> grenache_error {
        grenache_error { code: grenache_result::from(e), message: CString::new(e.text().replace('\0', " ")).unwrap_or_default() }
    }
}

/// The code of an error detail; `GRENACHE_RESULT_NULL_PARAMETER` when `err` is NULL.
///
/// Thread-safe; meant to be called inside the completion callback that received `err`.
#[unsafe(no_mangle)]
pub extern "C" fn grenache_error_code(err: *const grenache_error) -> grenache_result {
    ffi_panic_boundary! {
        let e = try_ref!(err);
        e.code
    }
}

/// The message of an error detail as a NUL-terminated UTF-8 string: for
/// `GRENACHE_RESULT_REMOTE` exactly the text the remote handler sent (e.g. `"ERR_BOOM"`),
/// otherwise the library's description of this failure, or the code's message
/// (`grenache_result_message`) when it has none: the same text as the `message` of the
/// Ruby, Python and Node errors. NULL when `err` is NULL.
///
/// Borrowed from `err`: valid only until the completion callback returns; copy it to keep it.
#[unsafe(no_mangle)]
pub extern "C" fn grenache_error_message(err: *const grenache_error) -> *const c_char {
    ffi_panic_boundary! {
        let e = try_ref!(err);
        e.message.as_ptr()
    }
}
