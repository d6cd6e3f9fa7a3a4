//! Fuzzes the query handlers: a sequence of datagrams (split on the byte sequence `\n--\n`) is
//! answered by one fresh node state. No input may panic, and every reply must decode.
#![no_main]

use grenache::dht::{answer_datagrams, krpc};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut parts: Vec<&[u8]> = Vec::new();
    let mut rest = data;
    while let Some(i) = rest.windows(4).position(|w| w == b"\n--\n") {
        parts.push(&rest[..i]);
        rest = &rest[i + 4..];
    }
    parts.push(rest);
    parts.truncate(16);
    for reply in answer_datagrams(&parts).into_iter().flatten() {
        krpc::decode(&reply).expect("our replies decode");
    }
});
