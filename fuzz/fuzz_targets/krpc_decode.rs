//! Fuzzes the KRPC decoder: it must never panic, and whatever it accepts must re-encode to bytes
//! that decode to the same message (and are canonical: a second encode is identical).
#![no_main]

use grenache::dht::{bencode, krpc};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = bencode::decode(data) {
        let enc = v.encode();
        assert_eq!(bencode::decode(&enc).ok(), Some(v));
    }
    if let Ok(m) = krpc::decode(data) {
        let enc = m.encode();
        let back = krpc::decode(&enc).expect("re-encoded message decodes");
        assert_eq!(back, m);
        assert_eq!(back.encode(), enc);
        if let krpc::Body::Response(r) = &m.body {
            if let Some(n) = &r.nodes {
                let _ = krpc::decode_nodes(n);
            }
            for v in r.values.iter().flatten() {
                let _ = krpc::decode_peer(v);
            }
        }
    }
});
