//! The Grape HTTP API as pure functions: request parsing and validation, and reply shaping.
//!
//! Nothing here does I/O, so the whole request path up to the DHT call can be unit-tested and
//! fuzzed ([`handle_body`]). The wire rules follow `grape-protocol.md` §2:
//!
//! * the body is a JSON envelope `{"rid": …, "data": …}`; only `data` is read, `rid` is ignored;
//! * the route is the path minus its leading `/`: `announce`, `lookup`, `put`, `get` (an
//!   upper-case first letter is accepted too); anything else is `200 "ERR_REQ_NOTFOUND"`;
//! * application errors are **status 200 with a JSON string**; KRPC 3xx errors on put/announce
//!   become the HTTP status; body problems are 500/413 with **raw text**.
//!
//! Where the Node reference throws a JavaScript exception (a 500 with a `TypeError` text, or a
//! crashed process) this module answers with a clear error instead; `docs/compat.md` ("Grape")
//! lists each such case.

use std::net::SocketAddr;

use bytes::Bytes;
use serde_json::Value;
use sha1::{Digest, Sha1};

use crate::dht::{GetResult, PutItem};
use crate::error::{Error, ErrorKind};

/// Raw-text body of a 500 reply for a body that is not valid JSON (or not a usable envelope).
pub const ERR_PAYLOAD_INVALID: &str = "ERR_GRAPE_PAYLOAD_INVALID";
/// Raw-text body of a 413 reply for a body over `check_maxPayloadSize`.
pub const ERR_PAYLOAD_SIZE: &str = "ERR_GRAPE_PAYLOAD_SIZE";
/// Raw-text body of a 408 reply for a body that did not arrive within the read deadlines (ours:
/// the reference has no such deadline).
pub const ERR_TIMEOUT: &str = "ERR_GRAPE_TIMEOUT";
/// `/lookup` or `/announce` of a name over the longest DHT key (200, JSON string; ours: the
/// reference takes any length).
pub const ERR_KEY_TOO_LONG: &str = "ERR_GRAPE_KEY_TOO_LONG";
/// Unknown route (200, JSON string).
pub const ERR_REQ_NOTFOUND: &str = "ERR_REQ_NOTFOUND";
/// `/lookup` with a missing, empty or non-string name (200, JSON string).
pub const ERR_LOOKUP: &str = "ERR_GRAPE_LOOKUP";
/// `/announce` whose `data` is not a `[name, port]` array (200, JSON string).
pub const ERR_ANNOUNCE: &str = "ERR_GRAPE_ANNOUNCE";
/// `/announce` whose port is not an integer in 0..=65535 (200, JSON string).
pub const ERR_SERVICE_PORT: &str = "ERR_GRAPE_SERVICE_PORT";
/// `/unannounce` whose `data` is not a `[name, port]` array (200, JSON string).
pub const ERR_UNANNOUNCE: &str = "ERR_GRAPE_UNANNOUNCE";
/// `/get` whose `data` is neither a hash string nor an object with a string `hash` (200).
pub const ERR_GENERIC: &str = "ERR_GRAPE_GENERIC";

/// One of the four API calls, parsed and validated.
#[derive(Debug, Clone)]
pub enum ApiRequest {
    /// `POST /announce {"data":[name, port]}`.
    Announce {
        /// The service name's UTF-8 bytes (the DHT info-hash).
        name: Vec<u8>,
        /// The service port; `0` means "use the Grape's DHT port".
        port: u16,
    },
    /// `POST /unannounce {"data":[name, port]}` (ours; a Node Grape answers
    /// `"ERR_REQ_NOTFOUND"`): removes the announce of `port` from the Grapes that hold it.
    Unannounce {
        /// The service name's UTF-8 bytes.
        name: Vec<u8>,
        /// The service port; `0` means "the Grape's DHT port", as in `/announce`.
        port: u16,
    },
    /// `POST /lookup {"data": name}`.
    Lookup {
        /// The service name's UTF-8 bytes.
        name: Vec<u8>,
    },
    /// `POST /put {"data": …}`.
    Put(PutItem),
    /// `POST /get {"data": …}`.
    Get(GetRequest),
}

/// A parsed `/get`.
#[derive(Debug, Clone, PartialEq)]
pub struct GetRequest {
    /// The decoded target. Anything but 20 bytes can never be found (empty reply).
    pub target: Vec<u8>,
    /// The salt, needed to verify a salted mutable item read from the network.
    pub salt: Option<Vec<u8>>,
    /// False when the request said `"cache": false` (skip the Grape's own value store).
    pub use_local: bool,
}

/// An HTTP reply: a status and a body (every reply carries a `Content-Length`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiReply {
    /// HTTP status code.
    pub status: u16,
    /// The body bytes (JSON, raw text, or empty).
    pub body: Bytes,
}

impl ApiReply {
    /// 200 with `value` serialised as JSON.
    pub fn json(value: &Value) -> ApiReply {
        ApiReply { status: 200, body: Bytes::from(value.to_string()) }
    }
    /// 200 with an already-serialised JSON body.
    pub fn json_text(text: String) -> ApiReply {
        ApiReply { status: 200, body: Bytes::from(text) }
    }
    /// 200 with an empty body (a `/get` miss).
    pub fn empty() -> ApiReply {
        ApiReply { status: 200, body: Bytes::new() }
    }
    /// An application error: `status` (200 unless a KRPC 3xx) and the message as a JSON string.
    pub fn app_error(status: u16, message: &str) -> ApiReply {
        ApiReply { status, body: Bytes::from(Value::String(message.to_string()).to_string()) }
    }
    /// A transport-level error: `status` and the message as **raw text**.
    pub fn raw(status: u16, text: &str) -> ApiReply {
        ApiReply { status, body: Bytes::from(text.to_string()) }
    }
    /// 500 `ERR_GRAPE_PAYLOAD_INVALID` (raw text).
    pub fn payload_invalid() -> ApiReply {
        ApiReply::raw(500, ERR_PAYLOAD_INVALID)
    }
    /// 413 `ERR_GRAPE_PAYLOAD_SIZE` (raw text).
    pub fn payload_too_large() -> ApiReply {
        ApiReply::raw(413, ERR_PAYLOAD_SIZE)
    }
}

/// The four routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `/announce`
    Announce,
    /// `/lookup`
    Lookup,
    /// `/unannounce` (ours)
    Unannounce,
    /// `/put`
    Put,
    /// `/get`
    Get,
}

/// Maps a request path (with any query string) to a route. `/lookup` and `/Lookup` match;
/// `/lookup?x=1`, `/lookup/`, `/LOOKUP` do not (as in the reference).
pub fn route(path_and_query: &str) -> Option<Route> {
    match path_and_query {
        "/announce" | "/Announce" => Some(Route::Announce),
        "/lookup" | "/Lookup" => Some(Route::Lookup),
        "/unannounce" | "/Unannounce" => Some(Route::Unannounce),
        "/put" | "/Put" => Some(Route::Put),
        "/get" | "/Get" => Some(Route::Get),
        _ => None,
    }
}

/// Parses a whole request body for `path`: the JSON envelope, the route, and the `data` field.
///
/// Returns the validated [`ApiRequest`], or the exact [`ApiReply`] to send when the request is refused
/// before any DHT work. Never panics, whatever the bytes (this is the fuzz target's entry point).
pub fn handle_body(path: &str, body: &[u8]) -> Result<ApiRequest, ApiReply> {
    // The reference decodes the bytes as UTF-8 (invalid sequences become U+FFFD) before JSON.parse.
    let text = String::from_utf8_lossy(body);
    let envelope: Value = serde_json::from_str(&text).map_err(|_| ApiReply::payload_invalid())?;
    // `null` has no `data` (the reference throws a TypeError: 500). Other non-objects simply
    // have no `data` field.
    if envelope.is_null() {
        return Err(ApiReply::payload_invalid());
    }
    let data = envelope.get("data");
    let Some(route) = route(path) else {
        return Err(ApiReply::app_error(200, ERR_REQ_NOTFOUND));
    };
    match route {
        Route::Announce => parse_announce(data),
        Route::Lookup => parse_lookup(data),
        Route::Unannounce => match parse_announce(data) {
            Ok(ApiRequest::Announce { name, port }) => Ok(ApiRequest::Unannounce { name, port }),
            Err(r) if r.body == ApiReply::app_error(200, ERR_ANNOUNCE).body => Err(ApiReply::app_error(200, ERR_UNANNOUNCE)),
            other => other,
        },
        Route::Put => parse_put(data).map(ApiRequest::Put).map_err(|m| ApiReply::app_error(200, &m)),
        Route::Get => parse_get(data).map(ApiRequest::Get),
    }
}

fn parse_lookup(data: Option<&Value>) -> Result<ApiRequest, ApiReply> {
    match data {
        Some(Value::String(s)) if !s.is_empty() => Ok(ApiRequest::Lookup { name: s.as_bytes().to_vec() }),
        _ => Err(ApiReply::app_error(200, ERR_LOOKUP)),
    }
}

/// JavaScript's `Number.isInteger` on a JSON number, as an `i64` when it fits.
fn js_integer(v: &Value) -> Option<i64> {
    let n = v.as_number()?;
    if let Some(i) = n.as_i64() {
        return Some(i);
    }
    if n.as_u64().is_some() {
        return Some(i64::MAX); // an integer, but far out of any range we accept
    }
    let f = n.as_f64()?;
    if f.is_finite() && f.fract() == 0.0 {
        Some(if f >= i64::MAX as f64 {
            i64::MAX
        } else if f <= i64::MIN as f64 {
            i64::MIN
        } else {
            f as i64
        })
    } else {
        None
    }
}

fn parse_announce(data: Option<&Value>) -> Result<ApiRequest, ApiReply> {
    let Some(Value::Array(items)) = data else {
        return Err(ApiReply::app_error(200, ERR_ANNOUNCE));
    };
    // Port first, as the reference checks it before touching the name.
    let port = items.get(1).and_then(js_integer).ok_or_else(|| ApiReply::app_error(200, ERR_SERVICE_PORT))?;
    let port = u16::try_from(port).map_err(|_| ApiReply::app_error(200, ERR_SERVICE_PORT))?;
    match items.first() {
        Some(Value::String(name)) => Ok(ApiRequest::Announce { name: name.as_bytes().to_vec(), port }),
        _ => Err(ApiReply::app_error(200, ERR_ANNOUNCE)),
    }
}

/// Node's `Buffer.from(str, 'hex')`: decodes pairs until the first invalid pair; an odd trailing
/// nibble is dropped.
pub fn node_hex(s: &str) -> Vec<u8> {
    fn nib(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len() / 2);
    for pair in b.chunks_exact(2) {
        match (nib(pair[0]), nib(pair[1])) {
            (Some(h), Some(l)) => out.push(h << 4 | l),
            _ => break,
        }
    }
    out
}

/// A JSON value as `Buffer.from(value)` sees it: an array of numbers, or Node's
/// `{"type":"Buffer","data":[…]}` form. `None` when Node would throw.
fn buffer_from_json(v: &Value) -> Option<Vec<u8>> {
    let arr = match v {
        Value::String(s) => return Some(s.as_bytes().to_vec()),
        Value::Array(a) => a,
        Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("Buffer") => o.get("data")?.as_array()?,
        _ => return None,
    };
    Some(
        arr.iter()
            .map(|x| match x {
                Value::Number(n) => n.as_i64().map(|i| i as u8).or_else(|| n.as_f64().map(|f| (f.trunc() as i64) as u8)).unwrap_or(0),
                Value::Bool(b) => u8::from(*b),
                _ => 0,
            })
            .collect(),
    )
}

/// The reference's `str2buf`: `Buffer.from(JSON.parse(s))`, falling back to the string's bytes in
/// `hex` (keys, signatures, get targets) or UTF-8 (salts).
pub fn str2buf(s: &str, hex: bool) -> Vec<u8> {
    if let Ok(parsed) = serde_json::from_str::<Value>(s)
        && let Some(b) = buffer_from_json(&parsed)
    {
        return b;
    }
    if hex { node_hex(s) } else { s.as_bytes().to_vec() }
}

/// JavaScript truthiness of a JSON value.
fn truthy(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_f64().is_some_and(|f| f != 0.0),
        Some(Value::String(s)) => !s.is_empty(),
        Some(_) => true,
    }
}

pub use crate::dht::bencode::encode_json as bencode_json;

use crate::dht::bencode::encode_bytes as bencode_bytes;

/// Decodes a `/put` payload into a [`PutItem`], with the reference's checks in its order and its
/// exact error strings (returned as `Err(message)`, sent as 200 + JSON string).
pub fn parse_put(data: Option<&Value>) -> Result<PutItem, String> {
    let obj = match data {
        Some(Value::String(s)) => {
            let mut v = Vec::with_capacity(s.len() + 8);
            bencode_bytes(s.as_bytes(), &mut v);
            check_v_len(&Value::String(s.clone()))?;
            return Ok(PutItem::Immutable { v_bencoded: v });
        }
        Some(Value::Object(o)) => o,
        // A number, array, bool (and, where the reference crashes, null or no data): no `v`.
        _ => return Err("opts.v not given".into()),
    };
    let v = match obj.get("v") {
        None | Some(Value::Null) => return Err("opts.v not given".into()),
        Some(v) => v,
    };
    check_v_len(v)?;
    let mut v_bencoded = Vec::new();
    bencode_json(v, &mut v_bencoded);

    let k_val = obj.get("k");
    if !truthy(k_val) {
        return Ok(PutItem::Immutable { v_bencoded });
    }
    // Mutable.
    let cas = match obj.get("cas") {
        None => None,
        Some(c @ Value::Number(_)) => Some(js_trunc(c)),
        Some(_) => return Err("opts.cas must be an integer if provided".into()),
    };
    let k = match k_val {
        Some(Value::String(s)) => str2buf(s, true),
        Some(other) => buffer_from_json(other).unwrap_or_default(),
        None => Vec::new(),
    };
    let k: [u8; 32] = k.try_into().map_err(|_| "opts.k ed25519 public key must be 32 bytes".to_string())?;
    let sig_val = obj.get("sig");
    if !truthy(sig_val) {
        return Err("opts.sign function or options.sig signature is required for mutable put".into());
    }
    let sig = match sig_val {
        Some(Value::String(s)) => str2buf(s, true),
        Some(other) => {
            buffer_from_json(other).ok_or_else(|| "opts.sign function or options.sig signature is required for mutable put".to_string())?
        }
        None => Vec::new(),
    };
    let salt_val = obj.get("salt");
    let salt = if truthy(salt_val) {
        match salt_val {
            Some(Value::String(s)) => Some(str2buf(s, false)),
            Some(other) => Some(buffer_from_json(other).ok_or_else(|| "opts.salt must be a string".to_string())?),
            None => None,
        }
    } else {
        None
    };
    if salt.as_ref().is_some_and(|s| s.len() > 64) {
        return Err("opts.salt is > 64 bytes long".into());
    }
    let seq = match obj.get("seq") {
        None => return Err("opts.seq not provided for a mutable update".into()),
        Some(s @ Value::Number(_)) => js_trunc(s),
        Some(_) => return Err("opts.seq not an integer".into()),
    };
    // Not checked by the reference (a bad length silently fails on every remote node).
    let sig: [u8; 64] = sig.try_into().map_err(|_| "opts.sig ed25519 signature must be 64 bytes".to_string())?;
    let salt = salt.filter(|s| !s.is_empty());
    Ok(PutItem::Mutable { v_bencoded, k, sig, seq, salt, cas })
}

/// A JSON number truncated towards zero into an `i64` (bencode's integer conversion).
fn js_trunc(v: &Value) -> i64 {
    match v.as_number() {
        Some(n) => n.as_i64().unwrap_or_else(|| n.as_f64().map(|f| f.trunc() as i64).unwrap_or(0)),
        None => 0,
    }
}

/// `v.length >= 1000` as JavaScript measures it: UTF-16 code units for strings, elements for arrays.
fn check_v_len(v: &Value) -> Result<(), String> {
    let len = match v {
        Value::String(s) => s.encode_utf16().count(),
        Value::Array(a) => a.len(),
        _ => 0,
    };
    if len >= 1000 { Err("v must be less than 1000 bytes in put()".into()) } else { Ok(()) }
}

/// Decodes a `/get` payload: a target string (JSON, else hex), or `{hash, salt?, cache?}`.
pub fn parse_get(data: Option<&Value>) -> Result<GetRequest, ApiReply> {
    let generic = || ApiReply::app_error(200, ERR_GENERIC);
    match data {
        Some(Value::String(s)) => Ok(GetRequest { target: str2buf(s, true), salt: None, use_local: true }),
        Some(Value::Object(o)) => {
            let target = match o.get("hash") {
                Some(Value::String(h)) => node_hex(h),
                _ => return Err(generic()),
            };
            let salt_val = o.get("salt");
            let salt = if truthy(salt_val) {
                match salt_val {
                    Some(Value::String(s)) => Some(str2buf(s, false)),
                    Some(other) => Some(buffer_from_json(other).ok_or_else(generic)?),
                    None => None,
                }
            } else {
                None
            };
            let use_local = o.get("cache") != Some(&Value::Bool(false));
            Ok(GetRequest { target, salt, use_local })
        }
        _ => Err(generic()),
    }
}

/// The target of a put item: `sha1(bencode(v))` or `sha1(k ‖ salt)`.
pub fn put_target(item: &PutItem) -> [u8; 20] {
    let mut h = Sha1::new();
    match item {
        PutItem::Immutable { v_bencoded } => h.update(v_bencoded),
        PutItem::Mutable { k, salt, .. } => {
            h.update(k);
            if let Some(s) = salt {
                h.update(s);
            }
        }
    }
    h.finalize().into()
}

/// `v.toString()` of a bencoded value as the reference decodes it: byte strings as UTF-8 text,
/// integers in decimal, lists joined with `,`, dicts as `[object Object]`.
pub fn v_to_string(v_bencoded: &[u8]) -> String {
    let mut out = String::new();
    let mut pos = 0;
    if js_string_of(v_bencoded, &mut pos, &mut out, 0).is_none() {
        // Not valid bencode: show the raw bytes as text.
        return String::from_utf8_lossy(v_bencoded).into_owned();
    }
    out
}

/// Appends the JS `toString()` of the bencoded value at `*pos`; returns `None` on bad bencode.
fn js_string_of(b: &[u8], pos: &mut usize, out: &mut String, depth: usize) -> Option<()> {
    if depth > 64 {
        return None;
    }
    match *b.get(*pos)? {
        b'i' => {
            let end = *pos + b[*pos..].iter().position(|&c| c == b'e')?;
            let digits = std::str::from_utf8(&b[*pos + 1..end]).ok()?;
            let n: i64 = digits.parse().ok()?;
            out.push_str(&n.to_string());
            *pos = end + 1;
        }
        b'l' => {
            *pos += 1;
            let mut first = true;
            while *b.get(*pos)? != b'e' {
                if !first {
                    out.push(',');
                }
                first = false;
                js_string_of(b, pos, out, depth + 1)?;
            }
            *pos += 1;
        }
        b'd' => {
            *pos += 1;
            let mut scratch = String::new();
            while *b.get(*pos)? != b'e' {
                js_string_of(b, pos, &mut scratch, depth + 1)?; // key
                js_string_of(b, pos, &mut scratch, depth + 1)?; // value
            }
            *pos += 1;
            out.push_str("[object Object]");
        }
        b'0'..=b'9' => {
            let colon = *pos + b[*pos..].iter().position(|&c| c == b':')?;
            let len: usize = std::str::from_utf8(&b[*pos..colon]).ok()?.parse().ok()?;
            let start = colon + 1;
            let end = start.checked_add(len)?;
            let bytes = b.get(start..end)?;
            out.push_str(&String::from_utf8_lossy(bytes));
            *pos = end;
        }
        _ => return None,
    }
    Some(())
}

/// The JSON text of a `/get` hit, with the reference's key order: from the Grape's own store
/// `{"id","token":null,"v"[,"sig","k","seq"]}`; from a remote node
/// `{"id"[,"k","seq","sig"],"token","v"[,"salt"]}`.
pub fn get_result_json(res: &GetResult, salt: Option<&[u8]>) -> String {
    let s = |x: String| Value::String(x).to_string();
    let mut out = String::with_capacity(256);
    out.push_str("{\"id\":");
    out.push_str(&s(hex::encode(res.id)));
    let v = s(v_to_string(&res.v_bencoded));
    if res.local {
        out.push_str(",\"token\":null,\"v\":");
        out.push_str(&v);
        if let Some(m) = &res.mutable {
            out.push_str(",\"sig\":");
            out.push_str(&s(hex::encode(m.sig)));
            out.push_str(",\"k\":");
            out.push_str(&s(hex::encode(m.k)));
            out.push_str(&format!(",\"seq\":{}", m.seq));
        }
    } else {
        if let Some(m) = &res.mutable {
            out.push_str(",\"k\":");
            out.push_str(&s(hex::encode(m.k)));
            out.push_str(&format!(",\"seq\":{}", m.seq));
            out.push_str(",\"sig\":");
            out.push_str(&s(hex::encode(m.sig)));
        }
        out.push_str(",\"token\":");
        match &res.token {
            Some(t) => out.push_str(&s(hex::encode(t))),
            None => out.push_str("null"),
        }
        out.push_str(",\"v\":");
        out.push_str(&v);
        if let Some(salt) = salt.filter(|s| !s.is_empty()) {
            out.push_str(",\"salt\":");
            out.push_str(&s(String::from_utf8_lossy(salt).into_owned()));
        }
    }
    out.push('}');
    out
}

/// The JSON array reply of a `/lookup`: `"ip:port"` strings.
pub fn lookup_json(peers: &[SocketAddr]) -> String {
    Value::Array(peers.iter().map(|p| Value::String(p.to_string())).collect()).to_string()
}

/// Maps a DHT error of an announce or put to the reply the reference gives: `"No nodes to query"`,
/// `"All queries failed"` (200), KRPC 3xx as the HTTP status with `"<code> <message>"`, anything
/// else as 200 with the error's message.
pub fn dht_error_reply(e: &Error) -> ApiReply {
    match e.kind() {
        ErrorKind::NoNodes => ApiReply::app_error(200, "No nodes to query"),
        ErrorKind::AllQueriesFailed => ApiReply::app_error(200, "All queries failed"),
        ErrorKind::SeqTooLow => ApiReply::app_error(302, &krpc_text(e.message(), 302, "sequence number less than current")),
        ErrorKind::CasMismatch => ApiReply::app_error(301, &krpc_text(e.message(), 301, "CAS mismatch, re-read and try again")),
        _ => {
            let msg = e.message();
            // "3xx text" from another KRPC error keeps its code as the HTTP status.
            let code = msg.get(..3).and_then(|c| c.parse::<u16>().ok()).filter(|c| (300..400).contains(c));
            match (e.kind(), code) {
                (ErrorKind::Dht, Some(c)) if msg.as_bytes().get(3) == Some(&b' ') => ApiReply::app_error(c, msg),
                _ if msg.is_empty() => ApiReply::app_error(200, e.kind().name()),
                _ => ApiReply::app_error(200, msg),
            }
        }
    }
}

/// `"<code> <text>"`, using the DHT's message when it already has that shape.
fn krpc_text(msg: &str, code: u16, default: &str) -> String {
    let prefix = format!("{code} ");
    if msg.starts_with(&prefix) { msg.to_string() } else { format!("{code} {default}") }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dht::MutableMeta;
    use serde_json::json;

    fn err(r: Result<ApiRequest, ApiReply>) -> (u16, String) {
        let r = r.expect_err("expected a refusal");
        (r.status, String::from_utf8(r.body.to_vec()).expect("utf8"))
    }

    #[test]
    fn envelope_errors() {
        assert_eq!(err(handle_body("/lookup", b"garbage")), (500, "ERR_GRAPE_PAYLOAD_INVALID".into()));
        assert_eq!(err(handle_body("/lookup", b"")), (500, "ERR_GRAPE_PAYLOAD_INVALID".into()));
        assert_eq!(err(handle_body("/lookup", b"null")), (500, "ERR_GRAPE_PAYLOAD_INVALID".into()));
        assert_eq!(err(handle_body("/foo", br#"{"data":"x"}"#)), (200, "\"ERR_REQ_NOTFOUND\"".into()));
        assert_eq!(err(handle_body("/lookup?x=1", br#"{"data":"x"}"#)), (200, "\"ERR_REQ_NOTFOUND\"".into()));
        assert_eq!(err(handle_body("/foo", b"nope")), (500, "ERR_GRAPE_PAYLOAD_INVALID".into()));
        assert_eq!(err(handle_body("/lookup", b"[]")), (200, "\"ERR_GRAPE_LOOKUP\"".into()));
        assert_eq!(err(handle_body("/lookup", b"5")), (200, "\"ERR_GRAPE_LOOKUP\"".into()));
    }

    #[test]
    fn routes_accept_upper_first() {
        assert!(matches!(
            handle_body("/Lookup", br#"{"rid":"r","data":"svc"}"#),
            Ok(ApiRequest::Lookup { name }) if name == b"svc"
        ));
        assert!(route("/LOOKUP").is_none());
        assert!(route("/lookup/").is_none());
        assert!(route("//lookup").is_none());
    }

    #[test]
    fn lookup_validation() {
        for body in [r#"{}"#, r#"{"data":123}"#, r#"{"data":""}"#, r#"{"data":null}"#] {
            assert_eq!(err(handle_body("/lookup", body.as_bytes())), (200, "\"ERR_GRAPE_LOOKUP\"".into()), "{body}");
        }
    }

    #[test]
    fn announce_validation() {
        let e = |b: &str| err(handle_body("/announce", b.as_bytes()));
        assert_eq!(e(r#"{"data":"x"}"#), (200, "\"ERR_GRAPE_ANNOUNCE\"".into()));
        assert_eq!(e(r#"{}"#), (200, "\"ERR_GRAPE_ANNOUNCE\"".into()));
        assert_eq!(e(r#"{"data":["x","1337"]}"#), (200, "\"ERR_GRAPE_SERVICE_PORT\"".into()));
        assert_eq!(e(r#"{"data":["x",13.5]}"#), (200, "\"ERR_GRAPE_SERVICE_PORT\"".into()));
        assert_eq!(e(r#"{"data":["x",70000]}"#), (200, "\"ERR_GRAPE_SERVICE_PORT\"".into()));
        assert_eq!(e(r#"{"data":["x",-5]}"#), (200, "\"ERR_GRAPE_SERVICE_PORT\"".into()));
        assert_eq!(e(r#"{"data":["x"]}"#), (200, "\"ERR_GRAPE_SERVICE_PORT\"".into()));
        assert_eq!(e(r#"{"data":[123,1337]}"#), (200, "\"ERR_GRAPE_ANNOUNCE\"".into()));
        assert!(matches!(
            handle_body("/announce", br#"{"data":["rest:util:net",1337.0,"extra"],"rid":"r1"}"#),
            Ok(ApiRequest::Announce { name, port: 1337 }) if name == b"rest:util:net"
        ));
        assert!(matches!(
            handle_body("/announce", br#"{"data":["",0]}"#),
            Ok(ApiRequest::Announce { name, port: 0 }) if name.is_empty()
        ));
    }

    #[test]
    fn unannounce_validation() {
        let e = |b: &str| err(handle_body("/unannounce", b.as_bytes()));
        assert_eq!(e(r#"{"data":"x"}"#), (200, "\"ERR_GRAPE_UNANNOUNCE\"".into()));
        assert_eq!(e(r#"{"data":[123,1337]}"#), (200, "\"ERR_GRAPE_UNANNOUNCE\"".into()));
        assert_eq!(e(r#"{"data":["x",70000]}"#), (200, "\"ERR_GRAPE_SERVICE_PORT\"".into()));
        assert!(matches!(
            handle_body("/unannounce", br#"{"data":["rest:util:net",1337]}"#),
            Ok(ApiRequest::Unannounce { name, port: 1337 }) if name == b"rest:util:net"
        ));
        assert!(matches!(handle_body("/Unannounce", br#"{"data":["a",0]}"#), Ok(ApiRequest::Unannounce { port: 0, .. })));
    }

    #[test]
    fn put_immutable_targets() {
        let t = |b: &str| match handle_body("/put", b.as_bytes()) {
            Ok(ApiRequest::Put(item)) => hex::encode(put_target(&item)),
            other => panic!("{other:?}"),
        };
        assert_eq!(t(r#"{"data":{"v":"hello world"}}"#), "6d33adc2b6b2c14c3036feefb7fedbca1a880527");
        assert_eq!(t(r#"{"data":"just a string"}"#), "97c063ba66185f75209a156da18dbda6763ed487");
        assert_eq!(t(r#"{"data":{"v":42}}"#), "3ce69356df4222111c27b41cccf2164e6cced799");
        assert_eq!(t(r#"{"data":{"v":{"a":1}}}"#), "f07b49d80353d8bc839cb1b2782f2eb8fc1ccdd2");
    }

    #[test]
    fn put_errors_in_order() {
        let e = |b: &str| err(handle_body("/put", b.as_bytes())).1;
        let k = "11".repeat(32);
        let sig = "22".repeat(64);
        assert_eq!(e(r#"{"data":{}}"#), "\"opts.v not given\"");
        assert_eq!(e(r#"{"data":5}"#), "\"opts.v not given\"");
        assert_eq!(e(r#"{"data":null}"#), "\"opts.v not given\"");
        assert_eq!(e(r#"{}"#), "\"opts.v not given\"");
        let long = "x".repeat(1000);
        assert_eq!(e(&format!(r#"{{"data":{{"v":"{long}"}}}}"#)), "\"v must be less than 1000 bytes in put()\"");
        assert!(handle_body("/put", format!(r#"{{"data":{{"v":"{}"}}}}"#, "x".repeat(999)).as_bytes()).is_ok());
        assert_eq!(e(&format!(r#"{{"data":{{"v":"a","k":"{k}","cas":"1"}}}}"#)), "\"opts.cas must be an integer if provided\"");
        assert_eq!(e(r#"{"data":{"v":"a","k":"abcd"}}"#), "\"opts.k ed25519 public key must be 32 bytes\"");
        assert_eq!(
            e(&format!(r#"{{"data":{{"v":"a","k":"{k}"}}}}"#)),
            "\"opts.sign function or options.sig signature is required for mutable put\""
        );
        let salt = "s".repeat(65);
        assert_eq!(e(&format!(r#"{{"data":{{"v":"a","k":"{k}","sig":"{sig}","salt":"{salt}"}}}}"#)), "\"opts.salt is > 64 bytes long\"");
        assert_eq!(e(&format!(r#"{{"data":{{"v":"a","k":"{k}","sig":"{sig}"}}}}"#)), "\"opts.seq not provided for a mutable update\"");
        assert_eq!(e(&format!(r#"{{"data":{{"v":"a","k":"{k}","sig":"{sig}","seq":"1"}}}}"#)), "\"opts.seq not an integer\"");
    }

    #[test]
    fn put_mutable_fields() {
        let k = "ab".repeat(32);
        let sig = "cd".repeat(64);
        let body = format!(r#"{{"data":{{"v":"m","k":"{k}","sig":"{sig}","seq":3,"salt":"\"abc\"","cas":2}}}}"#);
        match handle_body("/put", body.as_bytes()) {
            Ok(ApiRequest::Put(PutItem::Mutable { v_bencoded, k: kk, sig: ss, seq, salt, cas })) => {
                assert_eq!(v_bencoded, b"1:m");
                assert_eq!(kk, [0xab; 32]);
                assert_eq!(ss, [0xcd; 64]);
                assert_eq!(seq, 3);
                assert_eq!(salt.as_deref(), Some(&b"abc"[..]));
                assert_eq!(cas, Some(2));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn get_parsing() {
        let g = |b: &str| match handle_body("/get", b.as_bytes()) {
            Ok(ApiRequest::Get(g)) => Ok(g),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e),
        };
        let err = |r: Result<GetRequest, ApiReply>| {
            let r = r.expect_err("expected a refusal");
            (r.status, String::from_utf8(r.body.to_vec()).expect("utf8"))
        };
        let h = "6d33adc2b6b2c14c3036feefb7fedbca1a880527";
        let want = node_hex(h);
        assert_eq!(g(&format!(r#"{{"data":"{h}"}}"#)), Ok(GetRequest { target: want.clone(), salt: None, use_local: true }));
        assert_eq!(
            g(&format!(r#"{{"data":{{"hash":"{h}","salt":"s","cache":false}}}}"#)),
            Ok(GetRequest { target: want, salt: Some(b"s".to_vec()), use_local: false })
        );
        assert_eq!(g(r#"{"data":"zz"}"#), Ok(GetRequest { target: vec![], salt: None, use_local: true }));
        for b in [r#"{"data":{"foo":1}}"#, r#"{"data":5}"#, r#"{"data":{"hash":123}}"#, r#"{}"#, r#"{"data":null}"#] {
            assert_eq!(err(g(b)), (200, "\"ERR_GRAPE_GENERIC\"".into()), "{b}");
        }
    }

    #[test]
    fn hex_like_node() {
        assert_eq!(node_hex("abzz01"), vec![0xab]);
        assert_eq!(node_hex("abc"), vec![0xab]);
        assert_eq!(str2buf("[1,2]", false), vec![1, 2]);
        assert_eq!(str2buf("\"abc\"", false), b"abc");
        assert_eq!(str2buf("1234", true), vec![0x12, 0x34]);
    }

    #[test]
    fn v_strings() {
        assert_eq!(v_to_string(b"11:hello world"), "hello world");
        assert_eq!(v_to_string(b"i42e"), "42");
        assert_eq!(v_to_string(b"d1:ai1ee"), "[object Object]");
        assert_eq!(v_to_string(b"l1:ai2ee"), "a,2");
    }

    #[test]
    fn get_json_key_order() {
        let local = GetResult { id: [1; 20], token: None, v_bencoded: b"2:hi".to_vec(), mutable: None, local: true };
        assert_eq!(get_result_json(&local, None), format!(r#"{{"id":"{}","token":null,"v":"hi"}}"#, "01".repeat(20)));
        let m = MutableMeta { k: [2; 32], sig: [3; 64], seq: 7 };
        let remote = GetResult { id: [1; 20], token: Some(vec![9, 9]), v_bencoded: b"2:hi".to_vec(), mutable: Some(m), local: false };
        let j = get_result_json(&remote, Some(b"salty"));
        let parsed: Value = serde_json::from_str(&j).expect("json");
        assert_eq!(parsed["seq"], json!(7));
        let keys: Vec<usize> =
            ["\"id\"", "\"k\"", "\"seq\"", "\"sig\"", "\"token\"", "\"v\"", "\"salt\""].iter().map(|k| j.find(k).expect(k)).collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "{j}");
    }

    #[test]
    fn dht_errors_map() {
        assert_eq!(dht_error_reply(&Error::new(ErrorKind::NoNodes, "")).body, Bytes::from("\"No nodes to query\""));
        let r = dht_error_reply(&Error::new(ErrorKind::SeqTooLow, "302 sequence number less than current"));
        assert_eq!((r.status, r.body), (302, Bytes::from("\"302 sequence number less than current\"")));
        let r = dht_error_reply(&Error::new(ErrorKind::CasMismatch, "whatever"));
        assert_eq!((r.status, r.body), (301, Bytes::from("\"301 CAS mismatch, re-read and try again\"")));
    }
}
