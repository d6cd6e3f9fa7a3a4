//! Bencoding of JSON values, as the Grape bencodes `v` (bittorrent-dht / `bencode` 2.0.3).

use serde_json::Value;

/// Bencodes a JSON value the way the Grape does: strings as UTF-8 byte strings, integers as
/// `i<n>e` (floats truncated), booleans as `i1e`/`i0e`, arrays as lists, objects as dicts with
/// sorted keys; `null` values inside containers are left out (a bare `null` encodes as nothing).
pub fn bencode(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    crate::dht::bencode::encode_json(v, &mut out);
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn encodes_like_the_grape() {
        assert_eq!(bencode(&json!("hello world")), b"11:hello world");
        assert_eq!(bencode(&json!(42)), b"i42e");
        assert_eq!(bencode(&json!(-1.7)), b"i-1e");
        assert_eq!(bencode(&json!([1, "a", null])), b"li1e1:ae");
        assert_eq!(bencode(&json!({"b": 1, "a": "x", "n": null})), b"d1:a1:x1:bi1ee");
        assert_eq!(bencode(&json!("ü")), b"2:\xc3\xbc");
        assert_eq!(bencode(&json!(u64::MAX)), b"i18446744073709551615e");
    }
}
