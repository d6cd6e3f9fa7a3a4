//! A small bencode codec for KRPC.
//!
//! Why hand-written rather than `serde_bencode`/`bt_bencode`: KRPC needs (1) dicts whose keys and
//! values are arbitrary byte strings (any-length `t`, raw service-name info-hashes), (2) a generic
//! value for BEP44 `v` that can be re-encoded byte-exactly to check signatures and hashes, and
//! (3) hard bounds on nesting depth and element count for untrusted datagrams, with an error (never
//! a panic or unbounded recursion) on every malformed input. The serde-based crates map into typed
//! structs (which reject the "wrong type in an unknown key" cases differently from the reference)
//! and do not bound recursion depth. The codec is about 250 lines of code, covered by unit tests, a
//! proptest round trip and a cargo-fuzz target (`fuzz/fuzz_targets/krpc_decode.rs`).
//!
//! Decoding is lenient like the Node `bencode` package on one point: dict keys need not be sorted
//! (the last duplicate wins). Encoding always sorts keys, so `encode(decode(x))` is canonical.

use std::collections::BTreeMap;

/// Maximum nesting depth of lists/dicts accepted by [`decode`].
pub const MAX_DEPTH: usize = 32;
/// Maximum number of values (of any kind) in one decoded document.
pub const MAX_ITEMS: usize = 16_384;

/// A bencoded value.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Value {
    /// `i<n>e`
    Int(i64),
    /// `<len>:<bytes>`
    Bytes(Vec<u8>),
    /// `l...e`
    List(Vec<Value>),
    /// `d...e`, keys sorted.
    Dict(BTreeMap<Vec<u8>, Value>),
}

impl Value {
    /// The bytes, if this is a byte string.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }
    /// The integer, if this is an integer.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }
    /// The dict, if this is a dict.
    pub fn as_dict(&self) -> Option<&BTreeMap<Vec<u8>, Value>> {
        match self {
            Value::Dict(d) => Some(d),
            _ => None,
        }
    }
    /// The list, if this is a list.
    pub fn as_list(&self) -> Option<&[Value]> {
        match self {
            Value::List(l) => Some(l),
            _ => None,
        }
    }
    /// Canonical encoding of this value.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        encode_into(self, &mut out);
        out
    }
}

/// A decoding failure (the position is for diagnostics only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// Byte offset where decoding failed.
    pub pos: usize,
    /// What was wrong.
    pub what: &'static str,
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "bencode: {} at byte {}", self.what, self.pos)
    }
}

impl std::error::Error for DecodeError {}

/// Appends the canonical encoding of `v` to `out`.
pub fn encode_into(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Int(i) => {
            out.push(b'i');
            out.extend_from_slice(i.to_string().as_bytes());
            out.push(b'e');
        }
        Value::Bytes(b) => encode_bytes(b, out),
        Value::List(l) => {
            out.push(b'l');
            for x in l {
                encode_into(x, out);
            }
            out.push(b'e');
        }
        Value::Dict(d) => {
            out.push(b'd');
            for (k, x) in d {
                encode_bytes(k, out);
                encode_into(x, out);
            }
            out.push(b'e');
        }
    }
}

/// Writes a bencoded byte string (`<len>:<bytes>`).
pub fn encode_bytes(b: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(b.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(b);
}

/// Bencodes a JSON value the way `bencode` 2.0.3 does: strings as UTF-8 byte strings, numbers as
/// integers (fractions truncated), booleans as 0/1, arrays as lists, objects as dicts with sorted
/// keys; `null` members are left out. Recursion is bounded by serde_json's parse depth.
pub fn encode_json(v: &serde_json::Value, out: &mut Vec<u8>) {
    use serde_json::Value;
    match v {
        Value::Null => {}
        Value::Bool(b) => out.extend_from_slice(if *b { b"i1e" } else { b"i0e" }),
        Value::Number(n) => {
            let i = if let Some(i) = n.as_i64() {
                i as i128
            } else if let Some(u) = n.as_u64() {
                u as i128
            } else {
                n.as_f64().map(|f| f.trunc() as i128).unwrap_or(0)
            };
            out.extend_from_slice(format!("i{i}e").as_bytes());
        }
        Value::String(s) => encode_bytes(s.as_bytes(), out),
        Value::Array(a) => {
            out.push(b'l');
            for x in a {
                encode_json(x, out);
            }
            out.push(b'e');
        }
        Value::Object(o) => {
            out.push(b'd');
            let mut keys: Vec<&String> = o.keys().collect();
            keys.sort();
            for k in keys {
                let val = &o[k];
                if val.is_null() {
                    continue;
                }
                encode_bytes(k.as_bytes(), out);
                encode_json(val, out);
            }
            out.push(b'e');
        }
    }
}

/// Decodes exactly one value spanning all of `input` (trailing bytes are an error).
pub fn decode(input: &[u8]) -> Result<Value, DecodeError> {
    let mut d = Decoder { input, pos: 0, items: 0 };
    let v = d.value(0)?;
    if d.pos != input.len() {
        return Err(d.err("trailing bytes"));
    }
    Ok(v)
}

/// Decodes one value from the start of `input`; returns it and the number of bytes consumed.
pub fn decode_prefix(input: &[u8]) -> Result<(Value, usize), DecodeError> {
    let mut d = Decoder { input, pos: 0, items: 0 };
    let v = d.value(0)?;
    Ok((v, d.pos))
}

struct Decoder<'a> {
    input: &'a [u8],
    pos: usize,
    items: usize,
}

impl Decoder<'_> {
    fn err(&self, what: &'static str) -> DecodeError {
        DecodeError { pos: self.pos, what }
    }

    fn peek(&self) -> Result<u8, DecodeError> {
        self.input.get(self.pos).copied().ok_or_else(|| self.err("unexpected end"))
    }

    fn value(&mut self, depth: usize) -> Result<Value, DecodeError> {
        self.items += 1;
        if self.items > MAX_ITEMS {
            return Err(self.err("too many items"));
        }
        match self.peek()? {
            b'i' => {
                self.pos += 1;
                let n = self.int_until(b'e')?;
                Ok(Value::Int(n))
            }
            b'0'..=b'9' => Ok(Value::Bytes(self.bytes()?)),
            b'l' => {
                if depth >= MAX_DEPTH {
                    return Err(self.err("too deep"));
                }
                self.pos += 1;
                let mut l = Vec::new();
                while self.peek()? != b'e' {
                    l.push(self.value(depth + 1)?);
                }
                self.pos += 1;
                Ok(Value::List(l))
            }
            b'd' => {
                if depth >= MAX_DEPTH {
                    return Err(self.err("too deep"));
                }
                self.pos += 1;
                let mut m = BTreeMap::new();
                while self.peek()? != b'e' {
                    if !self.peek()?.is_ascii_digit() {
                        return Err(self.err("dict key is not a byte string"));
                    }
                    let k = self.bytes()?;
                    let v = self.value(depth + 1)?;
                    m.insert(k, v);
                }
                self.pos += 1;
                Ok(Value::Dict(m))
            }
            _ => Err(self.err("unexpected byte")),
        }
    }

    /// Parses a decimal integer terminated by `end`, consuming the terminator.
    fn int_until(&mut self, end: u8) -> Result<i64, DecodeError> {
        let start = self.pos;
        let rest = &self.input[start..];
        let len = rest.iter().position(|&c| c == end).ok_or_else(|| self.err("unterminated integer"))?;
        let digits = &rest[..len];
        let (neg, body) = match digits.split_first() {
            Some((b'-', body)) => (true, body),
            _ => (false, digits),
        };
        if body.is_empty() || !body.iter().all(u8::is_ascii_digit) {
            return Err(self.err("bad integer"));
        }
        if (body.len() > 1 && body[0] == b'0') || (neg && body == b"0") {
            return Err(self.err("non-canonical integer"));
        }
        let mut n: i64 = 0;
        for &c in body {
            let d = i64::from(c - b'0');
            n = n
                .checked_mul(10)
                .and_then(|n| if neg { n.checked_sub(d) } else { n.checked_add(d) })
                .ok_or_else(|| self.err("integer overflow"))?;
        }
        self.pos = start + len + 1;
        Ok(n)
    }

    fn bytes(&mut self) -> Result<Vec<u8>, DecodeError> {
        let start = self.pos;
        let rest = &self.input[start..];
        let len = rest.iter().take(21).position(|&c| c == b':').ok_or_else(|| self.err("bad string length"))?;
        let digits = &rest[..len];
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) || (digits.len() > 1 && digits[0] == b'0') {
            return Err(self.err("bad string length"));
        }
        let mut n: usize = 0;
        for &c in digits {
            n = n.checked_mul(10).and_then(|n| n.checked_add(usize::from(c - b'0'))).ok_or_else(|| self.err("string length overflow"))?;
        }
        let body_start = start + len + 1;
        let body_end = body_start.checked_add(n).ok_or_else(|| self.err("string length overflow"))?;
        if body_end > self.input.len() {
            return Err(self.err("string runs past the end"));
        }
        self.pos = body_end;
        Ok(self.input[body_start..body_end].to_vec())
    }
}

/// Builds a dict value from `(key, value)` pairs.
pub fn dict<const N: usize>(pairs: [(&[u8], Value); N]) -> Value {
    Value::Dict(pairs.into_iter().map(|(k, v)| (k.to_vec(), v)).collect())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn decodes_basic_values() {
        assert_eq!(decode(b"i42e").unwrap(), Value::Int(42));
        assert_eq!(decode(b"i-7e").unwrap(), Value::Int(-7));
        assert_eq!(decode(b"0:").unwrap(), Value::Bytes(vec![]));
        assert_eq!(decode(b"3:abc").unwrap(), Value::Bytes(b"abc".to_vec()));
        assert_eq!(decode(b"d1:al1:bi1eee").unwrap(), dict([(b"a", Value::List(vec![Value::Bytes(b"b".to_vec()), Value::Int(1)]))]));
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            &b""[..],
            b"i",
            b"ie",
            b"i-0e",
            b"i01e",
            b"i1",
            b"3:ab",
            b"-1:a",
            b"01:a",
            b"d1:ae",
            b"di1ei1ee",
            b"l",
            b"x",
            b"i1ei2e",
            b"i9223372036854775808e",
            b"99999999999999999999999:a",
        ] {
            assert!(decode(bad).is_err(), "{:?} should fail", String::from_utf8_lossy(bad));
        }
        assert_eq!(decode(b"i-9223372036854775808e").unwrap(), Value::Int(i64::MIN));
    }

    #[test]
    fn depth_is_bounded() {
        let mut deep = vec![b'l'; 10_000];
        deep.extend(vec![b'e'; 10_000]);
        assert!(decode(&deep).is_err());
        let mut ok = vec![b'l'; MAX_DEPTH];
        ok.extend(vec![b'e'; MAX_DEPTH]);
        assert!(decode(&ok).is_ok());
    }

    #[test]
    fn unsorted_keys_are_accepted_and_reencoded_sorted() {
        let v = decode(b"d1:bi2e1:ai1ee").unwrap();
        assert_eq!(v.encode(), b"d1:ai1e1:bi2ee");
    }

    fn arb_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![any::<i64>().prop_map(Value::Int), proptest::collection::vec(any::<u8>(), 0..24).prop_map(Value::Bytes),];
        leaf.prop_recursive(4, 64, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::List),
                proptest::collection::btree_map(proptest::collection::vec(any::<u8>(), 0..8), inner, 0..6).prop_map(Value::Dict),
            ]
        })
    }

    proptest! {
        #[test]
        fn round_trip(v in arb_value()) {
            let enc = v.encode();
            prop_assert_eq!(decode(&enc).unwrap(), v);
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode(&bytes);
        }
    }
}
