//! Fuzzes the WebSocket frame reader of the RPC server and client
//! (`grenache::transport::fuzzing::ws_frames`): any bytes, read in chunks of any size, from either
//! side. Nothing may panic; no text message may be invalid UTF-8, no message may be over the
//! limit, no close code may be one a peer may not send (the function asserts these).
//!
//! Input layout: byte 0 holds the side (bit 0: server, reading masked frames) and the chunk size
//! (the other bits), then the bytes of the stream.
#![no_main]

use grenache::transport::fuzzing::ws_frames;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, bytes)) = data.split_first() else { return };
    let chunk = 1 + usize::from(sel >> 1) * 8;
    ws_frames(sel & 1 != 0, 1024, bytes, chunk);
});
