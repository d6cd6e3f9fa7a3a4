//! Tests that call the exported functions directly (they live in the crate so that the crate
//! builds only `cdylib` + `staticlib`: an extra `rlib` named `grenache` would collide with core's).
#![allow(clippy::unwrap_used)]

use grenache_test_certs as tls_certs;

mod contract;
mod features;
mod misuse;
mod tls;
