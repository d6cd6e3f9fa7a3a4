//! The RPC envelope in bytes: `[rid, key, payload]` requests and `[rid, error, result]` replies.

use std::collections::HashMap;

use serde_json::Value;
use serde_json::value::RawValue;

use crate::error::{Error, Result};
use crate::rpc::Payload;

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
    /// Slot 2, `null` when absent, as the JSON text that came off the wire.
    pub payload: Payload,
}

/// Decodes a request body. Like the reference, an object with keys `"0"`, `"1"`, `"2"` is read the
/// same as an array. Anything else (invalid JSON, `null`, a number, a string) is a decode error,
/// which servers answer with an error reply instead of the reference's silence.
pub fn decode_request(body: &[u8]) -> Result<DecodedRequest> {
    // The slots are kept as JSON text; rid and key are small and parsed, the payload stays text
    // until a handler asks for a value (embedders hand the text on without a parse).
    let (rid, key, payload) = match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'[') => {
            let slots: Vec<Box<RawValue>> = serde_json::from_slice(body)?;
            let mut it = slots.into_iter();
            (it.next(), it.next(), it.next())
        }
        Some(b'{') => {
            let mut slots: HashMap<String, Box<RawValue>> = serde_json::from_slice(body)?;
            (slots.remove("0"), slots.remove("1"), slots.remove("2"))
        }
        _ => {
            let other: Value = serde_json::from_slice(body)?;
            return Err(Error::decode(format!("request is not a JSON array: {}", type_name(&other))));
        }
    };
    let value = |slot: Option<Box<RawValue>>| -> Result<Value> {
        slot.map_or(Ok(Value::Null), |raw| serde_json::from_str(raw.get()).map_err(Error::from))
    };
    let key = match value(key)? {
        Value::String(s) => s,
        Value::Null => String::new(),
        other => other.to_string(),
    };
    let payload = payload.map_or_else(|| Payload::from(Value::Null), Payload::from_raw);
    Ok(DecodedRequest { rid: value(rid)?, key, payload })
}

/// Encodes a reply `[rid, error, result]`.
pub fn encode_reply<R: serde::Serialize>(rid: &Value, body: &std::result::Result<R, String>) -> Vec<u8> {
    let mut out = Vec::new();
    encode_reply_into(&mut out, rid, body);
    out
}

/// [`encode_reply`] into `out` (cleared first), so a transport can reuse one buffer.
pub fn encode_reply_into<R: serde::Serialize>(out: &mut Vec<u8>, rid: &Value, body: &std::result::Result<R, String>) {
    out.clear();
    // A tuple serialises as a JSON array and `()` as `null`: no copy of the result, no tree.
    let written = match body {
        Ok(result) => serde_json::to_writer(&mut *out, &(rid, (), result)),
        Err(msg) => serde_json::to_writer(&mut *out, &(rid, msg, ())),
    };
    // Serialising Values, raw JSON and strings into a Vec cannot fail; never leave half an array.
    if written.is_err() {
        out.clear();
    }
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
    let error = truthy_error(it.next().unwrap_or(Value::Null));
    let result = it.next().unwrap_or(Value::Null);
    Ok(DecodedReply { rid, error, result })
}

/// How [`decode_reply_routed`] reads a reply's result (slot 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultForm {
    /// Parsed into a [`Value`].
    Value,
    /// Kept as JSON text, exactly as it is on the wire (whitespace and escapes included), checked
    /// to be JSON but never parsed into a [`Value`].
    Raw,
}

/// A reply decoded by [`decode_reply_routed`].
#[derive(Debug)]
pub struct RoutedReply<T> {
    /// Slot 0.
    pub rid: Value,
    /// What `pick` returned for the rid; `None` when nobody waits for it (its result was skipped,
    /// not parsed: [`RoutedReply::result`] is then `Null`).
    pub target: Option<T>,
    /// Slot 1 when it is truthy, as in [`DecodedReply::error`].
    pub error: Option<String>,
    /// Slot 2 in the form `pick` asked for (`null` when absent).
    pub result: super::ReplyResult,
}

impl<T> RoutedReply<T> {
    /// The requester's outcome: the result, or an [`ErrorKind::Remote`](crate::ErrorKind::Remote)
    /// error carrying the remote message.
    pub fn outcome(self) -> Result<super::ReplyResult> {
        match self.error {
            Some(msg) => Err(Error::new(crate::ErrorKind::Remote, msg)),
            None => Ok(self.result),
        }
    }
}

/// Decodes a reply for whoever waits for it, in one pass: `pick` sees the rid (slot 0) before the
/// result is read and returns the waiter with the form its result is wanted in ([`ResultForm`]),
/// or `None` when nobody waits (the result is then skipped). So a client transport parses a
/// result once, straight into what its requester wants: a [`Value`], or the raw JSON text that
/// embedders hand on.
///
/// On a malformed body the error comes with the target `pick` already returned, if it ran, so
/// that its waiter can be failed instead of left waiting. Accepts what [`decode_reply`] accepts.
pub fn decode_reply_routed<T>(
    body: &[u8],
    pick: impl FnOnce(&Value) -> Option<(T, ResultForm)>,
) -> std::result::Result<RoutedReply<T>, (Option<T>, Error)> {
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'[') {
        let msg = format!("reply is not a JSON array: {}", String::from_utf8_lossy(&body[..body.len().min(100)]));
        return Err((None, Error::decode(msg)));
    }
    let mut target = None;
    let mut de = serde_json::Deserializer::from_slice(body);
    let decoded =
        serde::de::Deserializer::deserialize_seq(&mut de, RoutedVisitor { pick, target: &mut target }).and_then(|r| de.end().map(|()| r));
    match decoded {
        Ok((rid, error, result)) => Ok(RoutedReply { rid, target, error, result }),
        Err(e) => Err((target, e.into())),
    }
}

struct RoutedVisitor<'t, T, P> {
    pick: P,
    target: &'t mut Option<T>,
}

impl<'de, T, P> serde::de::Visitor<'de> for RoutedVisitor<'_, T, P>
where
    P: FnOnce(&Value) -> Option<(T, ResultForm)>,
{
    type Value = (Value, Option<String>, super::ReplyResult);

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a reply array [rid, error, result]")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Self::Value, A::Error> {
        use super::ReplyResult;
        let rid: Value = seq.next_element()?.unwrap_or(Value::Null);
        let form = (self.pick)(&rid).map(|(t, form)| {
            *self.target = Some(t);
            form
        });
        let error = seq.next_element::<Value>()?.and_then(truthy_error);
        let result = match form {
            Some(ResultForm::Value) => ReplyResult::Value(seq.next_element()?.unwrap_or(Value::Null)),
            Some(ResultForm::Raw) => ReplyResult::Raw(seq.next_element::<Box<serde_json::value::RawValue>>()?.unwrap_or_default()),
            None => {
                seq.next_element::<serde::de::IgnoredAny>()?;
                ReplyResult::Value(Value::Null)
            }
        };
        // Like `decode_reply`, slots past the third are ignored (but must be JSON).
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok((rid, error, result))
    }
}

/// The error slot's message when it is truthy (a non-string error is given as JSON).
fn truthy_error(v: Value) -> Option<String> {
    match v {
        Value::Null | Value::Bool(false) => None,
        Value::String(s) if s.is_empty() => None,
        Value::String(s) => Some(s),
        Value::Number(n) if n.as_f64() == Some(0.0) => None,
        other => Some(other.to_string()),
    }
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
    fn encode_reply_into_a_used_buffer_matches_encode_reply() {
        let mut buf = b"left over from the last reply".to_vec();
        for (rid, body) in
            [(json!("r1"), Ok(json!({"a": [1, "ü€"]}))), (json!(12345), Err("ERR_BOOM".to_string())), (Value::Null, Ok(Value::Null))]
        {
            encode_reply_into(&mut buf, &rid, &body);
            assert_eq!(buf, encode_reply(&rid, &body));
        }
    }

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
        assert_eq!((d.rid, d.key.as_str(), d.payload.into_value()), (json!("objrid"), "k", json!("p")));
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

    fn raw(form: ResultForm, body: &str) -> RoutedReply<&'static str> {
        decode_reply_routed(body.as_bytes(), |_| Some(("w", form))).map_err(|(_, e)| e).unwrap()
    }

    #[test]
    fn routed_raw_result_is_the_wire_text() {
        // Whitespace, escapes and key order are kept as they are on the wire.
        let r = raw(ResultForm::Raw, "[\"r\", null , { \"b\" : 1, \"a\":\"\\u00e9\\n\" } ]");
        assert_eq!((r.rid.clone(), r.target, r.error.clone()), (json!("r"), Some("w"), None));
        let super::super::ReplyResult::Raw(text) = r.outcome().unwrap() else { panic!("not raw") };
        assert_eq!(text.get(), "{ \"b\" : 1, \"a\":\"\\u00e9\\n\" }");
        // An absent slot 2 is `null`, in both forms; slots past the third are ignored.
        for body in [r#"["r",null]"#, r#"["r"]"#, r#"["r",null,null,{"x":1}]"#] {
            let super::super::ReplyResult::Raw(text) = raw(ResultForm::Raw, body).result else { panic!("not raw") };
            assert_eq!(text.get(), "null", "{body}");
            assert_eq!(raw(ResultForm::Value, body).result.into_value(), Value::Null, "{body}");
        }
    }

    #[test]
    fn routed_value_result_matches_decode_reply() {
        for body in [
            r#"["r",null,{"a":[1,"x",{"b":null}]}]"#,
            r#"["r","ERR_BOOM",null]"#,
            r#"["r",false,7]"#,
            r#"["r",0,"z"]"#,
            r#"["r","",[]]"#,
            r#"[12,{"code":1},null]"#,
        ] {
            let d = decode_reply(body.as_bytes()).unwrap();
            let r = raw(ResultForm::Value, body);
            assert_eq!((r.rid.clone(), r.error.clone(), r.result.clone().into_value()), (d.rid, d.error, d.result), "{body}");
            let r = raw(ResultForm::Raw, body);
            assert_eq!(r.result.into_value(), decode_reply(body.as_bytes()).unwrap().result, "{body}");
        }
        let e = raw(ResultForm::Raw, r#"["r","ERR_BOOM",null]"#).outcome().unwrap_err();
        assert_eq!((e.kind(), e.message()), (crate::ErrorKind::Remote, "ERR_BOOM"));
    }

    #[test]
    fn routed_picks_by_rid_and_fails_bad_bodies() {
        // Nobody waits: the result is skipped.
        let r = decode_reply_routed::<()>(br#"["r",null,{"big":[1,2,3]}]"#, |rid| {
            assert_eq!(rid, &json!("r"));
            None
        })
        .unwrap();
        assert!(r.target.is_none());
        assert_eq!(r.result.into_value(), Value::Null);
        // Not a reply at all: `pick` never runs.
        for body in [&b"{}"[..], b"null", b"", b"  \"x\"", b"not json"] {
            let (t, e) = decode_reply_routed(body, |_| -> Option<((), ResultForm)> { panic!("picked") }).unwrap_err();
            assert!(t.is_none());
            assert_eq!(e.kind(), crate::ErrorKind::Decode);
        }
        // Malformed after the rid: the target comes back with the error, so it can be failed.
        for body in [&br#"["r",null,{bad"#[..], br#"["r",null,1] x"#, br#"["r",null,1,]"#] {
            let (t, e) = decode_reply_routed(body, |_| Some(("w", ResultForm::Raw))).unwrap_err();
            assert_eq!(t, Some("w"), "{}", String::from_utf8_lossy(body));
            assert_eq!(e.kind(), crate::ErrorKind::Decode);
        }
        // Same checks as decode_reply on bad bodies.
        assert!(decode_reply(b"{}").is_err());
    }

    #[test]
    fn utf8_is_kept_raw() {
        let b = encode_reply(&json!("r"), &Ok(json!({"u": "ü€"})));
        assert!(std::str::from_utf8(&b).unwrap().contains("ü€"));
    }
}
