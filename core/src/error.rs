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

/// The family of an [`ErrorKind`]: the hundreds digit of its code. Every face groups its error
/// classes by family (Ruby's `Grenache::TransportError`, Python's `grenache.TransportError`,
/// Node's `grenache.TransportError`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorFamily {
    /// 1xx: the caller's input.
    Input,
    /// 2xx: the transport.
    Transport,
    /// 3xx: Grape and DHT.
    Discovery,
    /// 4xx: RPC, reported by the other side.
    Rpc,
    /// 5xx: TLS.
    Tls,
    /// 9xx: bugs in the library, cancellations.
    Library,
}

impl ErrorFamily {
    /// Every family, in code order.
    pub const ALL: &'static [ErrorFamily] =
        &[ErrorFamily::Input, ErrorFamily::Transport, ErrorFamily::Discovery, ErrorFamily::Rpc, ErrorFamily::Tls, ErrorFamily::Library];

    /// The family's class name in the faces (`"TransportError"`).
    pub fn class_name(self) -> &'static str {
        match self {
            ErrorFamily::Input => "InputError",
            ErrorFamily::Transport => "TransportError",
            ErrorFamily::Discovery => "DiscoveryError",
            ErrorFamily::Rpc => "RpcError",
            ErrorFamily::Tls => "TlsError",
            ErrorFamily::Library => "LibraryError",
        }
    }
}

/// Defines [`ErrorKind`] and its table from one list: each row is the variant (its doc first),
/// its code, its `ERR_*` name, its family and its human message.
macro_rules! error_kinds {
    ($( $(#[$doc:meta])* $variant:ident = $code:literal, $name:literal, $family:ident, $message:literal; )*) => {
        /// What went wrong, as a stable code. See the module docs for the families.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        #[repr(u32)]
        pub enum ErrorKind {
            $( $(#[$doc])* $variant = $code, )*
        }

        impl ErrorKind {
            /// Every kind, in code order: the table every face derives its error classes from.
            pub const ALL: &'static [ErrorKind] = &[ $( ErrorKind::$variant, )* ];

            /// The stable name. Where the Node reference has a string for this case, it is that
            /// string.
            pub fn name(self) -> &'static str {
                match self { $( ErrorKind::$variant => $name, )* }
            }

            /// The family (the hundreds digit of the code).
            pub fn family(self) -> ErrorFamily {
                match self { $( ErrorKind::$variant => ErrorFamily::$family, )* }
            }

            /// A one-line description for people, the same in every face.
            pub fn message(self) -> &'static str {
                match self { $( ErrorKind::$variant => $message, )* }
            }

            /// The kind's class name in the faces: the variant's name with `Error` appended
            /// (`"TimeoutError"`, `"LookupEmptyError"`).
            pub fn class_name(self) -> &'static str {
                match self { $( ErrorKind::$variant => concat!(stringify!($variant), "Error"), )* }
            }
        }
    };
}

error_kinds! {
    /// A required pointer or handle was NULL (C ABI only).
    NullParameter = 100, "ERR_NULL_PARAMETER", Input, "a required pointer argument was NULL";
    /// An argument is out of range or malformed (a port of 70000, a bad hex key, bad JSON...).
    InvalidArgument = 101, "ERR_INVALID_ARGUMENT", Input, "an argument is out of range or malformed";
    /// A string argument is not valid UTF-8.
    InvalidUtf8 = 102, "ERR_INVALID_UTF8", Input, "a string argument is not valid UTF-8";
    /// A one-shot object (a reply handle, a builder) was used a second time.
    AlreadyUsed = 103, "ERR_ALREADY_USED", Input, "a one-shot object was used a second time";
    /// An output buffer is too small.
    BufferTooSmall = 104, "ERR_BUFFER_TOO_SMALL", Input, "the output buffer is too small";
    /// The object is not in a state that allows the call (not started, already stopped, a
    /// blocking call inside a callback...).
    InvalidState = 105, "ERR_INVALID_STATE", Input,
        "the object is not in a state that allows this call (or a blocking call was made inside a callback)";

    /// An operating-system I/O error (bind, read, write).
    Io = 200, "ERR_IO", Transport, "an operating-system I/O error";
    /// Could not connect to the peer (refused, unreachable, DNS).
    Connect = 201, "ERR_CONNECT", Transport, "could not connect to the peer";
    /// The operation did not complete within its timeout.
    Timeout = 202, "ERR_TIMEOUT", Transport, "the operation timed out";
    /// The connection or the object was closed while the operation was in flight.
    Closed = 203, "ERR_TRANSPORT_CLOSE", Transport, "the connection was closed";
    /// A payload exceeded a configured size limit.
    PayloadTooLarge = 204, "ERR_PAYLOAD_SIZE", Transport, "a payload exceeded its size limit";
    /// Bytes received could not be decoded (bad JSON, bad bencode, bad gzip, bad frame).
    Decode = 205, "ERR_DECODE", Transport, "received bytes could not be decoded";
    /// The peer answered something that breaks the protocol (wrong status, wrong shape).
    Protocol = 206, "ERR_PROTOCOL", Transport, "the peer broke the protocol";
    /// Hole punching found no open path to the peer within its time (`ERR_PUNCH_TIMEOUT`): a NAT
    /// that maps every destination to a new port (symmetric), or a peer that does not punch back.
    PunchTimeout = 207, "ERR_PUNCH_TIMEOUT", Transport, "hole punching found no open path to the peer in time";

    /// A lookup found no peer for the name (`ERR_GRAPE_LOOKUP_EMPTY`).
    LookupEmpty = 300, "ERR_GRAPE_LOOKUP_EMPTY", Discovery, "no peer announces this service";
    /// The Grape answered with an application error (a JSON string such as `ERR_GRAPE_ANNOUNCE`).
    Grape = 301, "ERR_GRAPE", Discovery, "the Grape answered with an error";
    /// The DHT knows no node to send the query to (`No nodes to query`).
    NoNodes = 302, "ERR_NO_NODES", Discovery, "the DHT knows no node to query";
    /// Every DHT query failed or timed out (`All queries failed`).
    AllQueriesFailed = 303, "ERR_ALL_QUERIES_FAILED", Discovery, "every DHT query failed";
    /// A mutable put with a sequence number not above the stored one (KRPC 302).
    SeqTooLow = 304, "ERR_SEQ_TOO_LOW", Discovery, "the sequence number is not above the stored one";
    /// A mutable put whose `cas` does not match the stored sequence number (KRPC 301).
    CasMismatch = 305, "ERR_CAS_MISMATCH", Discovery, "the compare-and-swap sequence number does not match";
    /// Another KRPC error from a DHT node.
    Dht = 306, "ERR_DHT", Discovery, "a DHT node answered with an error";

    /// The remote handler replied with an error; the message is the remote text.
    Remote = 400, "ERR_REMOTE", Rpc, "the remote handler replied with an error";
    /// The local handler dropped its reply handle without answering.
    NoReply = 401, "ERR_NO_REPLY", Rpc, "the handler dropped its reply without answering";
    /// The local handler panicked (or raised).
    HandlerPanicked = 402, "ERR_HANDLER_PANIC", Rpc, "the handler panicked";

    /// The TLS handshake failed.
    TlsHandshake = 500, "ERR_TLS_HANDSHAKE", Tls, "the TLS handshake failed";
    /// A certificate or key could not be parsed or was refused.
    Certificate = 501, "ERR_CERTIFICATE", Tls, "a certificate or key was refused";
    /// The TLS configuration is invalid.
    TlsConfig = 502, "ERR_TLS_CONFIG", Tls, "the TLS configuration is invalid";
    /// The server's `verify_client` hook refused the client.
    ClientRefused = 503, "ERR_CLIENT_REFUSED", Tls, "the server refused the client certificate";

    /// A panic was caught at an API boundary.
    Panic = 900, "ERR_PANIC", Library, "a panic was caught at the API boundary (a library bug)";
    /// A bug: an invariant did not hold.
    Internal = 901, "ERR_INTERNAL", Library, "an internal invariant did not hold (a library bug)";
    /// The operation was cancelled because its owner was stopped or freed.
    Cancelled = 902, "ERR_CANCELLED", Library, "the operation was cancelled because its handle was freed";
}

impl ErrorKind {
    /// The stable numeric code.
    pub fn code(self) -> u32 {
        self as u32
    }

    /// The kind for a numeric code, if any.
    pub fn from_code(code: u32) -> Option<ErrorKind> {
        Self::ALL.iter().copied().find(|k| k.code() == code)
    }

    /// The kind with the stable name `name` (`"ERR_TIMEOUT"`), if any.
    pub fn from_name(name: &str) -> Option<ErrorKind> {
        Self::ALL.iter().copied().find(|k| k.name() == name)
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

    /// The message as the faces show it: [`Error::message`], or the kind's table message
    /// ([`ErrorKind::message`]) when the error carries none. Every face's `message` is this text.
    pub fn text(&self) -> &str {
        if self.inner.message.is_empty() { self.inner.kind.message() } else { &self.inner.message }
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
    fn families_follow_the_hundreds_digit() {
        for k in ErrorKind::ALL {
            let family = ErrorFamily::ALL[match k.code() / 100 {
                9 => 5,
                d => d as usize - 1,
            }];
            assert_eq!(k.family(), family, "{k:?}");
            assert!(!k.message().is_empty());
            assert!(k.class_name().ends_with("Error"));
            assert_eq!(ErrorKind::from_name(k.name()), Some(*k));
        }
    }

    #[test]
    fn remote_display_is_the_remote_text() {
        let e = Error::new(ErrorKind::Remote, "ERR_BOOM");
        assert_eq!(e.to_string(), "ERR_BOOM");
        assert!(e.is_remote());
    }
}
