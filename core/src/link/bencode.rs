//! Bencoding of JSON values, as the Grape bencodes `v` (bittorrent-dht / `bencode` 2.0.3).

use serde_json::Value;

/// Bencodes a JSON value the way the Grape does: strings as UTF-8 byte strings, integers as
/// `i<n>e` (floats truncated), booleans as `i1e`/`i0e`, arrays as lists, objects as dicts with
/// sorted keys; `null` values inside containers are left out (a bare `null` encodes as nothing).
pub fn bencode(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    write(&mut out, v);
    out
}

fn write_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(b.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(b);
}

fn write(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Null => {}
        Value::Bool(b) => out.extend_from_slice(if *b { b"i1e" } else { b"i0e" }),
        Value::Number(n) => {
            let i = n
                .as_i64()
                .or_else(|| n.as_u64().map(|u| u as i64))
                .unwrap_or_else(|| n.as_f64().unwrap_or(0.0).trunc() as i64);
            out.extend_from_slice(format!("i{i}e").as_bytes());
        }
        Value::String(s) => write_bytes(out, s.as_bytes()),
        Value::Array(a) => {
            out.push(b'l');
            for x in a.iter().filter(|x| !x.is_null()) {
                write(out, x);
            }
            out.push(b'e');
        }
        Value::Object(o) => {
            out.push(b'd');
            let mut keys: Vec<&String> = o.iter().filter(|(_, v)| !v.is_null()).map(|(k, _)| k).collect();
            keys.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
            for k in keys {
                write_bytes(out, k.as_bytes());
                write(out, &o[k]);
            }
            out.push(b'e');
        }
    }
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
    }
}
