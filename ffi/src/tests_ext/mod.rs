//! Tests that call the exported functions directly (they live in the crate so that the crate
//! builds only `cdylib` + `staticlib`: an extra `rlib` named `grenache` would collide with core's).
#![allow(clippy::unwrap_used)]

#[path = "../../../core/tests/tls_certs/mod.rs"]
mod tls_certs;

mod contract;
mod features;
mod misuse;
mod tls;
