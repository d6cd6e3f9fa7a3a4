//! The C ABI of Grenache: `libgrenache.so`, `libgrenache.a` and `include/grenache.h`.
//!
//! Every exported function is a thin adapter over [`grenache_core::embed`], the callback-style
//! facade of the core: it checks pointers, converts strings and codes, and catches panics. The
//! conventions (result codes, ownership, callbacks, threading) are described at the top of the
//! generated header, `include/grenache.h`.
#![allow(non_camel_case_types)]
#![warn(missing_docs)]
// Adapters (userdata, request views) used by the server and client wrappers as transports land.
#![allow(dead_code)]

mod panic;
mod ptr;

pub mod error;
pub mod reply;
pub mod runtime;
pub mod version;

pub use error::{grenache_error, grenache_result};
pub use reply::{grenache_reply, grenache_request};
pub use runtime::grenache_runtime;

#[cfg(test)]
mod tests;
