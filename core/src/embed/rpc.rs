//! RPC helpers for embedders: payloads cross the faces as JSON text.

use serde_json::Value;

use crate::error::{Error, ErrorKind, Result};
use crate::rpc::{Reply, Request};

/// The request payload as JSON text (what a C or Ruby handler receives).
pub fn payload_json(request: &Request) -> String {
    request.payload.to_string()
}

/// The client certificate's SHA-1 fingerprint (`AA:BB:...`), when the request came over TLS with a
/// client certificate.
pub fn fingerprint(request: &Request) -> Option<&str> {
    request.info.cert.as_deref().map(|c| c.fingerprint.as_str())
}

/// Parses a JSON text coming from an embedder.
pub fn parse_json(text: &str) -> Result<Value> {
    serde_json::from_str(text).map_err(|e| Error::new(ErrorKind::InvalidArgument, format!("invalid JSON: {e}")))
}

/// Answers `reply` with the JSON text `result`. The reply is consumed whatever happens: when the
/// text is not valid JSON the client receives the error `ERR_INVALID_ARGUMENT` and the parse error
/// is returned.
pub fn reply_json(reply: Reply, result: &str) -> Result<()> {
    // Checked to be JSON, then written to the wire as it is: no parse into a Value and back.
    match serde_json::value::RawValue::from_string(result.to_string()) {
        Ok(raw) => {
            reply.ok_raw(raw);
            Ok(())
        }
        Err(e) => {
            reply.err(ErrorKind::InvalidArgument.name());
            Err(Error::new(ErrorKind::InvalidArgument, format!("invalid JSON: {e}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::{RequestInfo, dispatch};
    use serde_json::json;

    fn req() -> Request {
        Request { rid: json!("r"), key: "k".into(), payload: json!({"a": [1, "x"]}), info: RequestInfo::default() }
    }

    #[tokio::test]
    async fn json_reply_round_trip() {
        assert_eq!(payload_json(&req()), r#"{"a":[1,"x"]}"#);
        assert_eq!(fingerprint(&req()), None);
        let h = |_r: Request, reply: Reply| reply_json(reply, r#""world""#).expect("valid");
        assert_eq!(dispatch(&h, req(), None).await, Ok(json!("world")));
        let h = |_r: Request, reply: Reply| assert!(reply_json(reply, "{nope").is_err());
        assert_eq!(dispatch(&h, req(), None).await, Err("ERR_INVALID_ARGUMENT".to_string()));
    }
}
