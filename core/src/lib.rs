//! Grenache in Rust: a Grape DHT node, the Link client, RPC over HTTP and WebSocket, and
//! PUB/SUB, wire-compatible with the Node.js reference (grenache-grape, grenache-nodejs-link,
//! -http, -ws).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod dht;
pub mod embed;
pub mod error;
pub mod grape;
pub mod link;
pub mod pubsub;
pub mod rpc;
pub mod tls;
pub mod transport;

pub use error::{Error, ErrorKind, Result};
