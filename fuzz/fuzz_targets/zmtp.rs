//! Fuzzes the ZeroMQ transport's ZMTP 3.1 reader (`grenache::transport::fuzzing::zmtp`): the
//! greeting and READY handshake as a ROUTER, DEALER, PUB or SUB socket, then multipart messages,
//! PING and subscriptions, read in chunks of any size. Nothing may panic or allocate past the
//! limits; no peer type may be accepted that the socket may not talk to, no message kept over
//! 4 KiB or 4 frames (the function asserts these).
//!
//! Input layout: byte 0 holds our socket type (bits 0-1) and the chunk size (the other bits),
//! then the peer's bytes.
#![no_main]

use grenache::transport::fuzzing::zmtp;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, bytes)) = data.split_first() else { return };
    let chunk = 1 + usize::from(sel >> 2) * 4;
    zmtp(sel & 3, 4096, 4, bytes, chunk);
});
