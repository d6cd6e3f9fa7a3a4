//! Fuzzes the server side of a handed-over HTTP/1.1 connection
//! (`grenache::transport::http_handoff::Serve`) as a face's event loop drives it: the bytes
//! arrive in pieces, whole requests are taken and answered in any order, replies go out in
//! request order. Nothing may panic, a request is handed out at most once, every reply written
//! parses as HTTP/1.1, and the connection closes at most once.
//!
//! Input layout: byte 0 picks where the input is cut into reads (its value is the piece length,
//! 1 to 256), the rest is the connection's bytes.
#![no_main]

use std::time::Instant;

use grenache::transport::ReadDeadlines;
use grenache::transport::http_handoff::{Limits, Serve};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, wire)) = data.split_first() else { return };
    let piece = usize::from(cut) + 1;
    let limits = Limits { max_body: 4096, deadlines: ReadDeadlines::default(), max_in_flight: 1 << 20 };
    let mut s = Serve::new(Vec::new(), limits);
    let mut out = Vec::new();
    let mut closed = false;
    let mut seen = std::collections::HashSet::new();
    for chunk in wire.chunks(piece) {
        if closed || !s.reading() {
            break;
        }
        if !s.extend(chunk) {
            s.refuse(503, "ERR_BUSY");
        }
        let (mut reqs, mut interim) = (Vec::new(), Vec::new());
        s.parse(Instant::now(), &mut reqs, &mut interim);
        out.extend_from_slice(&interim);
        // Answered last first.
        for r in reqs.iter().rev() {
            assert!(seen.insert(r.seq), "request {} handed out twice", r.seq);
            assert!(r.body.len() <= 4096);
            assert!(s.answer(r.seq, 200, b"[\"r\",null,1]"));
        }
        if s.ready(Instant::now(), &mut out) {
            closed = true;
        }
    }
    // Every reply parses.
    let mut rest = &out[..];
    while !rest.is_empty() {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut r = httparse::Response::new(&mut headers);
        let Ok(httparse::Status::Complete(n)) = r.parse(rest) else { panic!("a reply that does not parse") };
        let len: usize = r
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .map_or(0, |h| std::str::from_utf8(h.value).expect("ascii").parse().expect("a length"));
        rest = &rest[n + len..];
    }
});
