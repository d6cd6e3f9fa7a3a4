// The crate's documentation is the workspace README (its Rust blocks run as doctests). It is
// read only where documentation is built or doctests are collected: a build from a package
// without the workspace around it (the Python sdist, which holds core/ but not the README)
// gets the one-line summary instead.
#![cfg_attr(any(doc, doctest), doc = include_str!("../../README.md"))]
#![cfg_attr(not(any(doc, doctest)), doc = "Grenache, rebuilt in Rust: see the README of grenache-rs.")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod dht;
pub mod embed;
pub mod error;
pub mod grape;
pub mod link;
pub mod proxy;
pub mod pubsub;
mod rid;
pub mod rpc;
pub mod tls;
pub mod transport;

pub use error::{Error, ErrorFamily, ErrorKind, Result};
