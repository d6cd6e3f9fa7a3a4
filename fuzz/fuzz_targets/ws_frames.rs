//! Fuzzes the WebSocket frame reader of the RPC server and client and of PUB/SUB
//! (`grenache::transport::fuzzing::ws_frames_as`): any bytes, read in chunks of any size, from
//! either side, messages borrowed (RPC) or owned (a PUB/SUB subscriber). Nothing may panic; no text message may be invalid UTF-8, no message may be over the
//! limit, no close code may be one a peer may not send (the function asserts these).
//!
//! Input layout: byte 0 holds the side (bit 0: server, reading masked frames), the way messages
//! are taken (bit 1: owned) and the chunk size (the other bits), then the bytes of the stream.
#![no_main]

use grenache::transport::fuzzing::ws_frames_as;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, bytes)) = data.split_first() else { return };
    let chunk = 1 + usize::from(sel >> 2) * 8;
    ws_frames_as(sel & 1 != 0, sel & 2 != 0, 1024, bytes, chunk);
});
