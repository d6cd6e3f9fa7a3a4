//! Fuzzes the RPC HTTP server's request path without its socket: the `_gr` header, the gunzip
//! step and the `[rid, key, payload]` envelope (`grenache::transport::http::decode_body`), then the
//! reply encoding, and the client's reply decoders on the same bytes. Nothing may panic, every
//! refusal must be a 400 or a 413, and every reply the server would send must decode.
//!
//! Input layout: byte 0 holds flags (bit 0: `grc-compress: gzip`, bit 1: a `_gr` header), byte 1
//! the `_gr` header's length, then that header, then the body.
#![no_main]

use grenache::rpc::envelope;
use grenache::transport::http::{decode_body, decode_gr_header};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// A small limit so that the size checks are reached.
const MAX: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else { return };
    let Some((&gr_len, rest)) = rest.split_first() else { return };
    let (gr, body) = if flags & 2 != 0 {
        let n = (gr_len as usize).min(rest.len());
        (Some(&rest[..n]), &rest[n..])
    } else {
        (None, rest)
    };
    let slots = match decode_gr_header(gr) {
        Ok(v) => v.map(|h| h.slots),
        // Answered 500 ERR_HEADER_PARSE_GR before the body is read.
        Err(_) => return,
    };
    match decode_body(body, flags & 1 != 0, slots, MAX) {
        Ok((rid, key, payload)) => {
            let _ = key.len();
            for reply in [Ok(payload.into_value()), Err("ERR_X".to_string())] {
                let out = envelope::encode_reply(&rid, &reply);
                let back = envelope::decode_reply(&out).expect("our replies decode");
                assert_eq!(back.rid, rid);
            }
        }
        Err((status, msg)) => {
            assert!(matches!(status.as_u16(), 400 | 413), "status {status}");
            let out = envelope::encode_reply(&Value::Null, &Err::<Value, _>(msg));
            envelope::decode_reply(&out).expect("our error replies decode");
        }
    }
    // The client's decoders see the same bytes as a reply.
    let _ = envelope::decode_reply(body);
    let _ = envelope::decode_reply_routed(body, |_| Some(((), envelope::ResultForm::Raw)));
});
