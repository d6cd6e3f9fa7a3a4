//! The C ABI of Grenache: `libgrenache.so`, `libgrenache.a` and `include/grenache.h`.
//!
//! Every exported function is a thin adapter over [`grenache_core::embed`], the callback-style
//! facade of the core: it checks pointers, converts strings and codes, and catches panics. The
//! conventions (result codes, ownership, callbacks, threading) are described at the top of the
//! generated header, `include/grenache.h`.
#![allow(non_camel_case_types)]
// Exported functions take raw pointers from C and check them for NULL; their validity otherwise
// is the C caller's contract, written in the header. Marking them `unsafe fn` would change
// nothing for C callers (as in rustls-ffi).
#![allow(clippy::not_unsafe_ptr_arg_deref)]
// C signatures carry (pointer, length) pairs, callbacks and userdata: long argument lists.
#![allow(clippy::too_many_arguments)]
#![warn(missing_docs)]
// Every `unsafe` block says why it is sound (`// SAFETY:`), or sits in one of the pointer macros of
// `ptr.rs`, whose contract is written there once.
#![warn(clippy::undocumented_unsafe_blocks)]

mod panic;
mod ptr;

pub mod callback;
pub mod client;
pub mod error;
pub mod grape;
pub mod link;
pub mod pubsub;
pub mod reply;
pub mod result;
pub mod runtime;
pub mod server;
pub mod tls;
pub mod version;

pub use error::{grenache_error, grenache_result};
pub use reply::{grenache_reply, grenache_request};
pub use runtime::grenache_runtime;

#[cfg(test)]
#[allow(clippy::undocumented_unsafe_blocks)]
mod tests;
#[cfg(test)]
#[allow(clippy::undocumented_unsafe_blocks)]
mod tests_ext;
