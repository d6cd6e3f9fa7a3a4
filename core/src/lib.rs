#![doc = include_str!("../../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod dht;
pub mod embed;
pub mod error;
pub mod grape;
pub mod link;
pub mod proxy;
pub mod pubsub;
pub mod rpc;
pub mod tls;
pub mod transport;

pub use error::{Error, ErrorKind, Result};
