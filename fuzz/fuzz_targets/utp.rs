//! Fuzzes the uTP transport's decoders (`grenache::transport::fuzzing::{utp_stream,
//! utp_datagram}`): the stream reader that finds where each JSON message ends (the legacy wire has
//! no framing), read in chunks of any size, with each message decoded as a request and a reply;
//! and the same bytes as a datagram (a punch request's body, a uTP header). Nothing may panic; no
//! message may be over the limit or other than a whole JSON array or object.
//!
//! Input layout: byte 0 holds the chunk size, then the bytes.
#![no_main]

use grenache::transport::fuzzing::{utp_datagram, utp_stream};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, bytes)) = data.split_first() else { return };
    utp_datagram(bytes);
    utp_stream(bytes, 1 + usize::from(sel) * 4, 2048);
});
