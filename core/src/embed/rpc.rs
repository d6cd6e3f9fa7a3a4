//! RPC helpers for embedders: payloads cross the faces as JSON text, and a handler answers
//! through a [`ReplyOnce`].

use std::sync::Mutex;

use serde_json::Value;

use crate::error::{Error, ErrorKind, Result};
use crate::rpc::{Reply, Request};

/// The request payload as JSON text, as it came off the wire (what every face's handler
/// receives, to parse once in its own language).
pub fn payload_json(request: &Request) -> &str {
    request.payload.json()
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

/// The answer-once reply handle every face hands its handlers (Python's and Node's `Reply`
/// objects, Ruby's through the C handle): a [`Reply`] that may be answered from any thread, where
/// a second answer is refused with [`ErrorKind::AlreadyUsed`] instead of being impossible to
/// express. Dropped unanswered, it answers `ERR_NO_REPLY` (as [`Reply`] does).
#[derive(Debug)]
pub struct ReplyOnce(Mutex<Option<Reply>>);

impl ReplyOnce {
    /// Wraps the reply of one request.
    pub fn new(reply: Reply) -> ReplyOnce {
        ReplyOnce(Mutex::new(Some(reply)))
    }

    fn take(&self) -> Result<Reply> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .ok_or_else(|| Error::new(ErrorKind::AlreadyUsed, "the request was already answered"))
    }

    /// Answers with the JSON text `result` (see [`reply_json`]: text that is not JSON answers
    /// `ERR_INVALID_ARGUMENT` and is returned as an error).
    pub fn ok_json(&self, result: &str) -> Result<()> {
        reply_json(self.take()?, result)
    }

    /// Answers with the JSON value `null`.
    pub fn ok_null(&self) -> Result<()> {
        self.take()?.ok(Value::Null);
        Ok(())
    }

    /// Answers with an error message; the client receives it as a remote error.
    pub fn err(&self, message: &str) -> Result<()> {
        self.take()?.err(message);
        Ok(())
    }

    /// Gives the reply up without an answer: the client receives `ERR_NO_REPLY` at once.
    pub fn abandon(&self) -> Result<()> {
        drop(self.take()?);
        Ok(())
    }

    /// True once answered (or abandoned).
    pub fn is_answered(&self) -> bool {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).is_none()
    }

    /// True when nobody waits for the answer any more (answered, the connection closed, or the
    /// server's reply timeout fired).
    pub fn is_closed(&self) -> bool {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).as_ref().is_none_or(Reply::is_closed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::{RequestInfo, dispatch};
    use serde_json::json;

    fn req() -> Request {
        Request { rid: json!("r"), key: "k".into(), payload: json!({"a": [1, "x"]}).into(), info: RequestInfo::default() }
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

    #[tokio::test]
    async fn reply_once_refuses_a_second_answer() {
        let h = |_r: Request, reply: Reply| {
            let once = ReplyOnce::new(reply);
            assert!(!once.is_answered());
            once.ok_json(r#""first""#).expect("first answer");
            assert!(once.is_answered() && once.is_closed());
            for second in [once.ok_json("1"), once.err("ERR_X"), once.ok_null(), once.abandon()] {
                assert_eq!(second.map_err(|e| e.kind()), Err(ErrorKind::AlreadyUsed));
            }
        };
        assert_eq!(dispatch(&h, req(), None).await, Ok(json!("first")));
        let h = |_r: Request, reply: Reply| drop(ReplyOnce::new(reply));
        assert_eq!(dispatch(&h, req(), None).await, Err("ERR_NO_REPLY".to_string()));
    }
}
