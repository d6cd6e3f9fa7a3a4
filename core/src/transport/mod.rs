//! Transports: one module per wire protocol, each with its client and its server.

pub mod http;
pub mod ws;
