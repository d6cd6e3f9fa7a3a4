//! The RPC envelope in bytes: `[rid, key, payload]` requests and `[rid, error, result]` replies.

use serde_json::Value;

use crate::error::{Error, Result};

/// Encodes a request `[rid, key, payload]`; `payload_json` must already be valid JSON text.
pub fn encode_request(rid: &str, key: &str, payload_json: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(rid.len() + key.len() + payload_json.len() + 16);
    out.push(b'[');
    write_json_str(&mut out, rid);
    out.push(b',');
    write_json_str(&mut out, key);
    out.push(b',');
    out.extend_from_slice(payload_json.as_bytes());
    out.push(b']');
    out
}

fn write_json_str(out: &mut Vec<u8>, s: &str) {
    // serde_json never fails writing a str into a Vec.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// A decoded request envelope.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedRequest {
    /// Slot 0, any JSON value.
    pub rid: Value,
    /// Slot 1: a string key, or the JSON text of a non-string key (empty when absent).
    pub key: String,
    /// Slot 2, `null` when absent.
    pub payload: Value,
}

/// Decodes a request body. Like the reference, an object with keys `"0"`, `"1"`, `"2"` is read the
/// same as an array. Anything else (invalid JSON, `null`, a number, a string) is a decode error,
/// which servers answer with an error reply instead of the reference's silence.
pub fn decode_request(body: &[u8]) -> Result<DecodedRequest> {
    let v: Value = serde_json::from_slice(body)?;
    let (rid, key, payload) = match v {
        Value::Array(mut a) => {
            a.truncate(3);
            let mut it = a.into_iter();
            (it.next().unwrap_or(Value::Null), it.next().unwrap_or(Value::Null), it.next().unwrap_or(Value::Null))
        }
        Value::Object(mut o) => (
            o.remove("0").unwrap_or(Value::Null),
            o.remove("1").unwrap_or(Value::Null),
            o.remove("2").unwrap_or(Value::Null),
        ),
        other => return Err(Error::decode(format!("request is not a JSON array: {}", type_name(&other)))),
    };
    let key = match key {
        Value::String(s) => s,
        Value::Null => String::new(),
        other => other.to_string(),
    };
    Ok(DecodedRequest { rid, key, payload })
}

/// Encodes a reply `[rid, error, result]`.
pub fn encode_reply<R: serde::Serialize>(rid: &Value, body: &std::result::Result<R, String>) -> Vec<u8> {
    // A tuple serialises as a JSON array and `()` as `null`: no copy of the result.
    let out = match body {
        Ok(result) => serde_json::to_vec(&(rid, (), result)),
        Err(msg) => serde_json::to_vec(&(rid, msg, ())),
    };
    // Serialising Values and strings into a Vec cannot fail.
    out.unwrap_or_default()
}

/// A decoded reply envelope.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedReply {
    /// Slot 0.
    pub rid: Value,
    /// Slot 1 when it is truthy: the remote error message (a non-string error is given as JSON).
    pub error: Option<String>,
    /// Slot 2.
    pub result: Value,
}

/// Decodes a reply body.
pub fn decode_reply(body: &[u8]) -> Result<DecodedReply> {
    let v: Value = serde_json::from_slice(body)?;
    let Value::Array(a) = v else {
        return Err(Error::decode(format!("reply is not a JSON array: {}", String::from_utf8_lossy(&body[..body.len().min(100)]))));
    };
    let mut it = a.into_iter();
    let rid = it.next().unwrap_or(Value::Null);
    let error = match it.next().unwrap_or(Value::Null) {
        Value::Null | Value::Bool(false) => None,
        Value::String(s) if s.is_empty() => None,
        Value::String(s) => Some(s),
        Value::Number(n) if n.as_f64() == Some(0.0) => None,
        other => Some(other.to_string()),
    };
    let result = it.next().unwrap_or(Value::Null);
    Ok(DecodedReply { rid, error, result })
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn request_round_trip() {
        let b = encode_request("8100b310-fbf4-450b-8410-f29838a24b48", "rpc_http_cap", "\"hello\"");
        assert_eq!(b, br#"["8100b310-fbf4-450b-8410-f29838a24b48","rpc_http_cap","hello"]"#);
        let d = decode_request(&b).unwrap();
        assert_eq!(d.rid, json!("8100b310-fbf4-450b-8410-f29838a24b48"));
        assert_eq!(d.key, "rpc_http_cap");
        assert_eq!(d.payload, json!("hello"));
    }

    #[test]
    fn object_form_and_bad_bodies() {
        let d = decode_request(br#"{"0":"objrid","1":"k","2":"p"}"#).unwrap();
        assert_eq!((d.rid, d.key.as_str(), d.payload), (json!("objrid"), "k", json!("p")));
        assert!(decode_request(b"not json").is_err());
        assert!(decode_request(b"null").is_err());
        assert!(decode_request(b"5").is_err());
        let d = decode_request(br#"[12345,"k",{"a":1}]"#).unwrap();
        assert_eq!(d.rid, json!(12345));
    }

    #[test]
    fn reply_round_trip() {
        let b = encode_reply(&json!("r"), &Err::<Value, _>("ERR_BOOM".into()));
        assert_eq!(b, br#"["r","ERR_BOOM",null]"#);
        let d = decode_reply(&b).unwrap();
        assert_eq!(d.error.as_deref(), Some("ERR_BOOM"));
        let b = encode_reply(&json!("r"), &Ok(json!("world")));
        assert_eq!(b, br#"["r",null,"world"]"#);
        assert_eq!(decode_reply(&b).unwrap().result, json!("world"));
        assert!(decode_reply(b"{}").is_err());
    }

    #[test]
    fn utf8_is_kept_raw() {
        let b = encode_reply(&json!("r"), &Ok(json!({"u": "ü€"})));
        assert!(std::str::from_utf8(&b).unwrap().contains("ü€"));
    }
}
