//! The one error type of the crate.
//!
//! Every fallible call returns [`Error`]. Its [`ErrorKind`] carries a stable numeric code
//! ([`ErrorKind::code`]) and a stable name ([`ErrorKind::name`], the reference's `ERR_*` string
//! where one exists). The C ABI, Python and Node faces map these one to one, so **codes are never
//! renumbered or reused**: a retired code stays listed as a comment.
//!
//! Families:
//! * 1xx: the caller's input (bad argument, invalid UTF-8, a handle used twice...)
//! * 2xx: transport (I/O, connect, timeout, closed, payload too large, undecodable bytes)
//! * 3xx: Grape and DHT (empty lookup, Grape error replies, KRPC errors)
//! * 4xx: RPC (an error reply from the remote handler, a handler that never replied or panicked)
//! * 5xx: TLS
//! * 9xx: internal (panic, cancelled, bug)

use std::fmt;

/// A specialised `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, as a stable code. See the module docs for the families.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[repr(u32)]
pub enum ErrorKind {
    /// A required pointer or handle was NULL (C ABI only).
    NullParameter = 100,
    /// An argument is out of range or malformed (a port of 70000, a bad hex key, bad JSON...).
    InvalidArgument = 101,
    /// A string argument is not valid UTF-8.
    InvalidUtf8 = 102,
    /// A one-shot object (a reply handle, a builder) was used a second time.
    AlreadyUsed = 103,
    /// An output buffer is too small.
    BufferTooSmall = 104,
    /// The object is not in a state that allows the call (not started, already stopped...).
    InvalidState = 105,

    /// An operating-system I/O error (bind, read, write).
    Io = 200,
    /// Could not connect to the peer (refused, unreachable, DNS).
    Connect = 201,
    /// The operation did not complete within its timeout.
    Timeout = 202,
    /// The connection or the object was closed while the operation was in flight.
    Closed = 203,
    /// A payload exceeded a configured size limit.
    PayloadTooLarge = 204,
    /// Bytes received could not be decoded (bad JSON, bad bencode, bad gzip, bad frame).
    Decode = 205,
    /// The peer answered something that breaks the protocol (wrong status, wrong shape).
    Protocol = 206,
    /// Hole punching found no open path to the peer within its time (`ERR_PUNCH_TIMEOUT`): a NAT
    /// that maps every destination to a new port (symmetric), or a peer that does not punch back.
    PunchTimeout = 207,

    /// A lookup found no peer for the name (`ERR_GRAPE_LOOKUP_EMPTY`).
    LookupEmpty = 300,
    /// The Grape answered with an application error (a JSON string such as `ERR_GRAPE_ANNOUNCE`).
    Grape = 301,
    /// The DHT knows no node to send the query to (`No nodes to query`).
    NoNodes = 302,
    /// Every DHT query failed or timed out (`All queries failed`).
    AllQueriesFailed = 303,
    /// A mutable put with a sequence number not above the stored one (KRPC 302).
    SeqTooLow = 304,
    /// A mutable put whose `cas` does not match the stored sequence number (KRPC 301).
    CasMismatch = 305,
    /// Another KRPC error from a DHT node.
    Dht = 306,

    /// The remote handler replied with an error; the message is the remote text.
    Remote = 400,
    /// The local handler dropped its reply handle without answering.
    NoReply = 401,
    /// The local handler panicked.
    HandlerPanicked = 402,

    /// The TLS handshake failed.
    TlsHandshake = 500,
    /// A certificate or key could not be parsed or was refused.
    Certificate = 501,
    /// The TLS configuration is invalid.
    TlsConfig = 502,
    /// The server's `verify_client` hook refused the client.
    ClientRefused = 503,

    /// A panic was caught at an API boundary.
    Panic = 900,
    /// A bug: an invariant did not hold.
    Internal = 901,
    /// The operation was cancelled because its owner was stopped or freed.
    Cancelled = 902,
}

impl ErrorKind {
    /// Every kind, in code order. Useful to generate tables for other languages.
    pub const ALL: &'static [ErrorKind] = &[
        ErrorKind::NullParameter,
        ErrorKind::InvalidArgument,
        ErrorKind::InvalidUtf8,
        ErrorKind::AlreadyUsed,
        ErrorKind::BufferTooSmall,
        ErrorKind::InvalidState,
        ErrorKind::Io,
        ErrorKind::Connect,
        ErrorKind::Timeout,
        ErrorKind::Closed,
        ErrorKind::PayloadTooLarge,
        ErrorKind::Decode,
        ErrorKind::Protocol,
        ErrorKind::PunchTimeout,
        ErrorKind::LookupEmpty,
        ErrorKind::Grape,
        ErrorKind::NoNodes,
        ErrorKind::AllQueriesFailed,
        ErrorKind::SeqTooLow,
        ErrorKind::CasMismatch,
        ErrorKind::Dht,
        ErrorKind::Remote,
        ErrorKind::NoReply,
        ErrorKind::HandlerPanicked,
        ErrorKind::TlsHandshake,
        ErrorKind::Certificate,
        ErrorKind::TlsConfig,
        ErrorKind::ClientRefused,
        ErrorKind::Panic,
        ErrorKind::Internal,
        ErrorKind::Cancelled,
    ];

    /// The stable numeric code.
    pub fn code(self) -> u32 {
        self as u32
    }

    /// The kind for a numeric code, if any.
    pub fn from_code(code: u32) -> Option<ErrorKind> {
        Self::ALL.iter().copied().find(|k| k.code() == code)
    }

    /// The stable name. Where the Node reference has a string for this case, it is that string.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::NullParameter => "ERR_NULL_PARAMETER",
            ErrorKind::InvalidArgument => "ERR_INVALID_ARGUMENT",
            ErrorKind::InvalidUtf8 => "ERR_INVALID_UTF8",
            ErrorKind::AlreadyUsed => "ERR_ALREADY_USED",
            ErrorKind::BufferTooSmall => "ERR_BUFFER_TOO_SMALL",
            ErrorKind::InvalidState => "ERR_INVALID_STATE",
            ErrorKind::Io => "ERR_IO",
            ErrorKind::Connect => "ERR_CONNECT",
            ErrorKind::Timeout => "ERR_TIMEOUT",
            ErrorKind::Closed => "ERR_TRANSPORT_CLOSE",
            ErrorKind::PayloadTooLarge => "ERR_PAYLOAD_SIZE",
            ErrorKind::Decode => "ERR_DECODE",
            ErrorKind::Protocol => "ERR_PROTOCOL",
            ErrorKind::PunchTimeout => "ERR_PUNCH_TIMEOUT",
            ErrorKind::LookupEmpty => "ERR_GRAPE_LOOKUP_EMPTY",
            ErrorKind::Grape => "ERR_GRAPE",
            ErrorKind::NoNodes => "ERR_NO_NODES",
            ErrorKind::AllQueriesFailed => "ERR_ALL_QUERIES_FAILED",
            ErrorKind::SeqTooLow => "ERR_SEQ_TOO_LOW",
            ErrorKind::CasMismatch => "ERR_CAS_MISMATCH",
            ErrorKind::Dht => "ERR_DHT",
            ErrorKind::Remote => "ERR_REMOTE",
            ErrorKind::NoReply => "ERR_NO_REPLY",
            ErrorKind::HandlerPanicked => "ERR_HANDLER_PANIC",
            ErrorKind::TlsHandshake => "ERR_TLS_HANDSHAKE",
            ErrorKind::Certificate => "ERR_CERTIFICATE",
            ErrorKind::TlsConfig => "ERR_TLS_CONFIG",
            ErrorKind::ClientRefused => "ERR_CLIENT_REFUSED",
            ErrorKind::Panic => "ERR_PANIC",
            ErrorKind::Internal => "ERR_INTERNAL",
            ErrorKind::Cancelled => "ERR_CANCELLED",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The error type of every fallible call in this crate.
///
/// It is one pointer wide. Classify it with [`Error::kind`]; the [`Display`](fmt::Display) text
/// is for people and is not a stable interface, except for [`ErrorKind::Remote`] where
/// [`Error::message`] is exactly the text the remote peer sent.
pub struct Error {
    inner: Box<Inner>,
}

struct Inner {
    kind: ErrorKind,
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl Error {
    /// A new error of `kind` with a human-readable `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error { inner: Box::new(Inner { kind, message: message.into(), source: None }) }
    }

    /// Attaches the underlying cause.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Error {
        self.inner.source = Some(Box::new(source));
        self
    }

    /// The kind, with its stable code.
    pub fn kind(&self) -> ErrorKind {
        self.inner.kind
    }

    /// The stable numeric code (shortcut for `self.kind().code()`).
    pub fn code(&self) -> u32 {
        self.inner.kind.code()
    }

    /// The message. For [`ErrorKind::Remote`] it is exactly what the remote peer sent.
    pub fn message(&self) -> &str {
        &self.inner.message
    }

    /// True for [`ErrorKind::Timeout`].
    pub fn is_timeout(&self) -> bool {
        self.kind() == ErrorKind::Timeout
    }

    /// True for errors reported by the remote application (as opposed to the transport).
    pub fn is_remote(&self) -> bool {
        self.kind() == ErrorKind::Remote
    }

    /// Shortcut constructors used across the crate.
    pub fn invalid(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::InvalidArgument, message)
    }

    /// A timeout error.
    pub fn timeout(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Timeout, message)
    }

    /// A decode error.
    pub fn decode(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Decode, message)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.inner.kind).field("message", &self.inner.message);
        if let Some(s) = &self.inner.source {
            d.field("source", s);
        }
        d.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.inner.message.is_empty() {
            write!(f, "{}", self.inner.kind.name())
        } else if self.inner.kind == ErrorKind::Remote {
            f.write_str(&self.inner.message)
        } else {
            write!(f, "{}: {}", self.inner.kind.name(), self.inner.message)
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.inner.source.as_ref().map(|s| &**s as &(dyn std::error::Error + 'static))
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Error {
        let kind = match e.kind() {
            std::io::ErrorKind::TimedOut => ErrorKind::Timeout,
            std::io::ErrorKind::ConnectionRefused => ErrorKind::Connect,
            std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::BrokenPipe
            | std::io::ErrorKind::UnexpectedEof => ErrorKind::Closed,
            _ => ErrorKind::Io,
        };
        Error::new(kind, e.to_string()).with_source(e)
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Error {
        Error::new(ErrorKind::Decode, e.to_string()).with_source(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_is_pointer_sized() {
        assert_eq!(std::mem::size_of::<Error>(), std::mem::size_of::<usize>());
    }

    #[test]
    fn codes_are_unique_and_round_trip() {
        let mut seen = std::collections::HashSet::new();
        for k in ErrorKind::ALL {
            assert!(seen.insert(k.code()), "duplicate code {}", k.code());
            assert_eq!(ErrorKind::from_code(k.code()), Some(*k));
        }
        let mut names = std::collections::HashSet::new();
        for k in ErrorKind::ALL {
            assert!(names.insert(k.name()), "duplicate name {}", k.name());
        }
    }

    #[test]
    fn remote_display_is_the_remote_text() {
        let e = Error::new(ErrorKind::Remote, "ERR_BOOM");
        assert_eq!(e.to_string(), "ERR_BOOM");
        assert!(e.is_remote());
    }
}
