//! `grenache_result`: the code every fallible call returns, one number per core error kind.
//!
//! A leaf module: the pointer helpers and the panic boundary use the codes, and the C functions
//! that describe them (`error.rs`) use those helpers.

use grenache_core::{Error, ErrorKind};

/// The result of every fallible call, and the code of every completion.
///
/// `GRENACHE_RESULT_OK` is 0, so `if (rc) { ... }` tests for failure. Every other value is the
/// stable code of the core library's error kind (the same numbers in every language binding):
/// 1xx the caller's input, 2xx transport, 3xx Grape and DHT, 4xx RPC, 5xx TLS, 9xx internal.
/// Codes are never renumbered or reused. Turn a code into text with `grenache_result_name` and
/// `grenache_result_message`.
#[allow(non_camel_case_types)]
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum grenache_result {
    /// Success.
    Ok = 0,
    /// A required pointer or handle was NULL (`ERR_NULL_PARAMETER`).
    NullParameter = 100,
    /// An argument is out of range or malformed: a bad port, bad JSON, a bad hex key (`ERR_INVALID_ARGUMENT`).
    InvalidArgument = 101,
    /// A string argument is not valid UTF-8 (`ERR_INVALID_UTF8`).
    InvalidUtf8 = 102,
    /// A one-shot object was used a second time (`ERR_ALREADY_USED`).
    AlreadyUsed = 103,
    /// An output buffer is too small (`ERR_BUFFER_TOO_SMALL`).
    BufferTooSmall = 104,
    /// The object is not in a state that allows the call, or a blocking call was made inside a
    /// callback (`ERR_INVALID_STATE`).
    InvalidState = 105,
    /// An operating-system I/O error such as a failed bind (`ERR_IO`).
    Io = 200,
    /// Could not connect to the peer (`ERR_CONNECT`).
    Connect = 201,
    /// The operation did not complete within its timeout (`ERR_TIMEOUT`).
    Timeout = 202,
    /// The connection or the object was closed while the operation was in flight (`ERR_TRANSPORT_CLOSE`).
    Closed = 203,
    /// A payload exceeded a size limit (`ERR_PAYLOAD_SIZE`).
    PayloadTooLarge = 204,
    /// Received bytes could not be decoded (`ERR_DECODE`).
    Decode = 205,
    /// The peer broke the protocol (`ERR_PROTOCOL`).
    Protocol = 206,
    /// Hole punching found no open path to the peer in time, e.g. behind a symmetric NAT (`ERR_PUNCH_TIMEOUT`).
    PunchTimeout = 207,
    /// A lookup found no peer for the service name (`ERR_GRAPE_LOOKUP_EMPTY`).
    LookupEmpty = 300,
    /// The Grape answered with an error (`ERR_GRAPE`).
    Grape = 301,
    /// The DHT knows no node to query (`ERR_NO_NODES`).
    NoNodes = 302,
    /// Every DHT query failed (`ERR_ALL_QUERIES_FAILED`).
    AllQueriesFailed = 303,
    /// A mutable put with a sequence number not above the stored one (`ERR_SEQ_TOO_LOW`).
    SeqTooLow = 304,
    /// A mutable put whose `cas` does not match the stored sequence number (`ERR_CAS_MISMATCH`).
    CasMismatch = 305,
    /// Another DHT error (`ERR_DHT`).
    Dht = 306,
    /// The remote handler replied with an error; the error detail holds its text (`ERR_REMOTE`).
    Remote = 400,
    /// A handler dropped its reply handle without answering (`ERR_NO_REPLY`).
    NoReply = 401,
    /// A handler panicked (`ERR_HANDLER_PANIC`).
    HandlerPanicked = 402,
    /// The TLS handshake failed (`ERR_TLS_HANDSHAKE`).
    TlsHandshake = 500,
    /// A certificate or key could not be parsed or was refused (`ERR_CERTIFICATE`).
    Certificate = 501,
    /// The TLS configuration is invalid (`ERR_TLS_CONFIG`).
    TlsConfig = 502,
    /// The server's client verification refused the client (`ERR_CLIENT_REFUSED`).
    ClientRefused = 503,
    /// A panic was caught at the C boundary: a bug in the library (`ERR_PANIC`).
    Panic = 900,
    /// An internal invariant did not hold: a bug in the library (`ERR_INTERNAL`).
    Internal = 901,
    /// The operation was cancelled because its handle or runtime was freed first (`ERR_CANCELLED`).
    Cancelled = 902,
}

impl grenache_result {
    /// Every code, `Ok` first, then in the order of [`ErrorKind::ALL`].
    pub const ALL: &'static [grenache_result] = &[
        grenache_result::Ok,
        grenache_result::NullParameter,
        grenache_result::InvalidArgument,
        grenache_result::InvalidUtf8,
        grenache_result::AlreadyUsed,
        grenache_result::BufferTooSmall,
        grenache_result::InvalidState,
        grenache_result::Io,
        grenache_result::Connect,
        grenache_result::Timeout,
        grenache_result::Closed,
        grenache_result::PayloadTooLarge,
        grenache_result::Decode,
        grenache_result::Protocol,
        grenache_result::PunchTimeout,
        grenache_result::LookupEmpty,
        grenache_result::Grape,
        grenache_result::NoNodes,
        grenache_result::AllQueriesFailed,
        grenache_result::SeqTooLow,
        grenache_result::CasMismatch,
        grenache_result::Dht,
        grenache_result::Remote,
        grenache_result::NoReply,
        grenache_result::HandlerPanicked,
        grenache_result::TlsHandshake,
        grenache_result::Certificate,
        grenache_result::TlsConfig,
        grenache_result::ClientRefused,
        grenache_result::Panic,
        grenache_result::Internal,
        grenache_result::Cancelled,
    ];

    /// The code for a number, if it is one.
    pub fn from_u32(code: u32) -> Option<grenache_result> {
        Self::ALL.iter().copied().find(|r| *r as u32 == code)
    }

    /// The core error kind (None for `Ok`).
    pub fn kind(self) -> Option<ErrorKind> {
        ErrorKind::from_code(self as u32)
    }

    /// The C code of a core error kind. Kinds added to core before this enum learns them map to
    /// `Internal` (a test makes sure none is missing).
    pub fn from_kind(kind: ErrorKind) -> grenache_result {
        Self::from_u32(kind.code()).unwrap_or(grenache_result::Internal)
    }

    /// `"OK"` or the core kind's `ERR_*` name.
    pub fn name(self) -> &'static str {
        match self.kind() {
            None => "OK",
            Some(k) => k.name(),
        }
    }

    /// A one-line description for people: core's [`ErrorKind::message`], the same text in
    /// every face.
    pub fn message(self) -> &'static str {
        match self.kind() {
            None => "success",
            Some(k) => k.message(),
        }
    }
}

impl From<&Error> for grenache_result {
    fn from(e: &Error) -> Self {
        grenache_result::from_kind(e.kind())
    }
}
