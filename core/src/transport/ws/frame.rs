//! WebSocket (RFC 6455) opening handshakes and framing: the one implementation of the protocol,
//! shared by the RPC server and client and by the PUB/SUB publisher and subscriber.
//!
//! tokio-tungstenite served these sockets before. Its per-message costs (a waker proxy on every
//! poll, a `BiLock` between the halves of a split socket, a zero-filled read buffer, one owned
//! `Message` per frame) were the largest user-space share of a sequential round trip, and a
//! publisher encoded every message once per subscriber; so the project speaks the protocol itself
//! with this module. It covers what Grenache peers exchange: text and binary messages (fragmented
//! or not), ping/pong and the close handshake, with no extensions (`permessage-deflate` offered by
//! Node's `ws` is declined by not echoing it, which the RFC allows).
//!
//! Protocol violations (reserved bits, an unknown opcode, a bad control frame, a client frame
//! without a mask or a server frame with one, a continuation without a start) and messages over
//! the size limit end the one socket that sent them, with a close frame giving the reason.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use sha1::{Digest, Sha1};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The largest opening-handshake head (request or response) accepted, in bytes.
pub(crate) const MAX_HEAD: usize = 16 * 1024;

/// Bytes read from a socket at a time (more when a large message needs it). The free room is not
/// zeroed before a read (tungstenite zero-filled its 128 KiB read buffer before every read, once
/// the largest single cost of a round trip).
pub(crate) const READ_CHUNK: usize = 8 * 1024;

/// Close codes (RFC 6455 §7.4.1).
pub(crate) const CLOSE_NORMAL: u16 = 1000;
pub(crate) const CLOSE_GOING_AWAY: u16 = 1001;
pub(crate) const CLOSE_PROTOCOL: u16 = 1002;
pub(crate) const CLOSE_INVALID_DATA: u16 = 1007;
pub(crate) const CLOSE_TOO_BIG: u16 = 1009;
/// Ours (RFC 6455 leaves 4000-4999 to applications): a server that drained before closing; every
/// request it read was answered, so a request still waiting for a reply was never handled.
pub(crate) const CLOSE_DRAINED: u16 = 4001;
/// The reason sent with [`CLOSE_DRAINED`].
pub(crate) const DRAINED_REASON: &str = "the server is shutting down; every request it read was answered";

const OP_CONT: u8 = 0x0;
pub(crate) const OP_TEXT: u8 = 0x1;
pub(crate) const OP_BINARY: u8 = 0x2;
pub(crate) const OP_CLOSE: u8 = 0x8;
pub(crate) const OP_PING: u8 = 0x9;
pub(crate) const OP_PONG: u8 = 0xA;

/// Which end of the socket we are: servers read masked frames and write plain ones, clients the
/// other way round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Server,
    Client,
}

/// One thing read from a socket: a whole data message (reassembled when it came in fragments) or
/// a control frame. Slices borrow the reader's buffer until the next call.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Msg<'a> {
    /// A text message (valid UTF-8: a text message that is not closes with 1007).
    Text(&'a [u8]),
    /// A binary message.
    Binary(&'a [u8]),
    /// A ping: answer it with a pong carrying the same bytes.
    Ping(&'a [u8]),
    /// A close frame, with its status code when it has one (a code a peer may send: see
    /// [`close_code_is_valid`]; any other is a protocol error).
    Close(Option<u16>),
}

/// What [`FrameReader::next_owned`] reads: a data message with its bytes owned, or a control
/// frame.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Owned<'a> {
    /// A text (valid UTF-8) or binary message.
    Data { bytes: Bytes, text: bool },
    /// A ping: answer it with a pong carrying the same bytes.
    Ping(&'a [u8]),
    /// A close frame, with its status code when it has one.
    Close(Option<u16>),
}

/// Whether a peer may send `code` in a close frame (RFC 6455 §7.4.1 and the IANA registry):
/// 1000-1003, 1007-1014, and 3000-4999. 1004-1006 and 1015 are reserved (never on the wire); below
/// 1000 and 1016-2999 are not assigned; 5000 and up are out of range.
pub(crate) fn close_code_is_valid(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Why a socket's input cannot be read any further.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum FrameError {
    /// A message over the size limit (close code 1009).
    TooLarge(u64),
    /// A protocol violation (close code 1002).
    Protocol(&'static str),
    /// A text message or a close reason that is not UTF-8 (close code 1007).
    InvalidUtf8,
}

impl FrameError {
    /// The close code to send for it.
    pub(crate) fn close_code(&self) -> u16 {
        match self {
            FrameError::TooLarge(_) => CLOSE_TOO_BIG,
            FrameError::Protocol(_) => CLOSE_PROTOCOL,
            FrameError::InvalidUtf8 => CLOSE_INVALID_DATA,
        }
    }
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::TooLarge(n) => write!(f, "message of {n} bytes or more is over the size limit"),
            FrameError::Protocol(why) => write!(f, "WebSocket protocol violation: {why}"),
            FrameError::InvalidUtf8 => write!(f, "a text message or close reason that is not UTF-8"),
        }
    }
}

/// What a parsed frame turned out to be (indices into the reader's buffer or its reassembly
/// buffer), so that the parse loop needs no borrow of `self`.
enum Parsed {
    Data { text: bool, start: usize, end: usize },
    Assembled { text: bool },
    Ping { start: usize, end: usize },
    Close(Option<u16>),
}

/// Reads frames from a socket's bytes: fill it with [`FrameReader::poll_fill`] (or
/// [`FrameReader::fill`]), then take whole messages with [`FrameReader::next_message`] until it
/// says it needs more.
pub(crate) struct FrameReader {
    /// Bytes read; `buf[start..]` is not parsed yet. A `BytesMut` so that
    /// [`FrameReader::next_owned`] can hand a message's bytes out without copying them.
    buf: BytesMut,
    start: usize,
    /// Bytes the frame at `start` needs in all (0: unknown yet), so a fill reserves room for it.
    need: usize,
    side: Side,
    max_message: usize,
    /// A fragmented data message being reassembled: its kind and bytes so far.
    frag: Option<(bool, Vec<u8>)>,
    /// The last reassembled message (returned by reference).
    assembled: Vec<u8>,
}

impl std::fmt::Debug for FrameReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameReader").field("buffered", &(self.buf.len() - self.start)).field("side", &self.side).finish()
    }
}

impl FrameReader {
    /// A reader for `side`, starting with bytes already read past the opening handshake.
    pub(crate) fn new(side: Side, max_message: usize, leftover: Vec<u8>) -> FrameReader {
        let mut buf = BytesMut::from(&leftover[..]);
        buf.reserve(READ_CHUNK.saturating_sub(buf.len()));
        FrameReader { buf, start: 0, need: 0, side, max_message, frag: None, assembled: Vec::new() }
    }

    /// Makes room for the next read: drops parsed bytes, and reserves what the pending frame
    /// needs (bounded by the message limit, which [`FrameReader::next_message`] checked).
    fn prepare(&mut self) {
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > 0 && (self.start >= self.buf.len() / 2 || self.buf.capacity() - self.buf.len() < READ_CHUNK / 2) {
            // The room freed at the front is taken back by `reserve` (one move of the unparsed
            // bytes, or none when the buffer is shared with messages handed out).
            self.buf.advance(self.start);
            self.start = 0;
        }
        let want = self.need.saturating_sub(self.buf.len() - self.start).max(READ_CHUNK / 2);
        if self.buf.capacity() - self.buf.len() < want {
            self.buf.reserve(want.max(READ_CHUNK));
        }
        // A large buffer left by a large message is given back once it is empty.
        if self.buf.is_empty() && self.buf.capacity() > 4 * READ_CHUNK && self.need <= READ_CHUNK {
            self.buf = BytesMut::with_capacity(READ_CHUNK);
        }
    }

    /// Reads once from `io` into the buffer. `Ready(Ok(0))` is the end of the stream.
    pub(crate) fn poll_fill<R: AsyncRead + Unpin + ?Sized>(&mut self, io: &mut R, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        self.prepare();
        tokio_util::io::poll_read_buf(Pin::new(io), cx, &mut self.buf)
    }

    /// Reads once from `io` into the buffer; 0 is the end of the stream. Cancel-safe.
    pub(crate) async fn fill<R: AsyncRead + Unpin + ?Sized>(&mut self, io: &mut R) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_fill(io, cx)).await
    }

    /// Reads once from a blocking or non-blocking std reader into the buffer (see
    /// [`FrameReader::poll_fill`]); the free room is zeroed first (a few KiB).
    pub(crate) fn fill_from<R: io::Read>(&mut self, r: &mut R) -> io::Result<usize> {
        self.prepare();
        let len = self.buf.len();
        let room = self.buf.capacity() - len;
        self.buf.resize(len + room, 0);
        let got = r.read(&mut self.buf[len..]);
        self.buf.truncate(len + *got.as_ref().unwrap_or(&0));
        got
    }

    /// The next whole message or control frame in the buffer, `Ok(None)` when more bytes are
    /// needed. Pongs are skipped. After an error the reader must not be used again.
    pub(crate) fn next_message(&mut self) -> Result<Option<Msg<'_>>, FrameError> {
        let Some(parsed) = self.parse()? else { return Ok(None) };
        Ok(Some(match parsed {
            Parsed::Data { text: true, start, end } => Msg::Text(&self.buf[start..end]),
            Parsed::Data { text: false, start, end } => Msg::Binary(&self.buf[start..end]),
            Parsed::Assembled { text: true } => Msg::Text(&self.assembled),
            Parsed::Assembled { text: false } => Msg::Binary(&self.assembled),
            Parsed::Ping { start, end } => Msg::Ping(&self.buf[start..end]),
            Parsed::Close(code) => Msg::Close(code),
        }))
    }

    /// [`FrameReader::next_message`] with a data message's bytes owned: a message that came in
    /// one frame shares the read buffer (no copy; the buffer's memory is freed once the reader
    /// and every such message let it go), a reassembled one is handed over.
    pub(crate) fn next_owned(&mut self) -> Result<Option<Owned<'_>>, FrameError> {
        let Some(parsed) = self.parse()? else { return Ok(None) };
        Ok(Some(match parsed {
            Parsed::Data { text, start, end } => {
                // `parse` left `start` at `end`: everything before it is parsed.
                let mut head = self.buf.split_to(end);
                self.start = 0;
                head.advance(start);
                Owned::Data { bytes: head.freeze(), text }
            }
            Parsed::Assembled { text } => Owned::Data { bytes: Bytes::from(std::mem::take(&mut self.assembled)), text },
            Parsed::Ping { start, end } => Owned::Ping(&self.buf[start..end]),
            Parsed::Close(code) => Owned::Close(code),
        }))
    }

    /// Parses frames up to the next whole message or control frame (checking a text message's
    /// UTF-8), `Ok(None)` when more bytes are needed.
    fn parse(&mut self) -> Result<Option<Parsed>, FrameError> {
        if !self.assembled.is_empty() {
            // The last reassembled message was handled: do not keep it (it may be large).
            self.assembled = Vec::new();
        }
        let parsed = loop {
            let avail = &self.buf[self.start..];
            if avail.len() < 2 {
                self.need = 2;
                return Ok(None);
            }
            let (b0, b1) = (avail[0], avail[1]);
            if b0 & 0x70 != 0 {
                return Err(FrameError::Protocol("reserved bits set (no extension was agreed)"));
            }
            let fin = b0 & 0x80 != 0;
            let op = b0 & 0x0F;
            let masked = b1 & 0x80 != 0;
            match (self.side, masked) {
                (Side::Server, false) => return Err(FrameError::Protocol("a client frame without a mask")),
                (Side::Client, true) => return Err(FrameError::Protocol("a server frame with a mask")),
                _ => {}
            }
            let (len, mut pos) = match b1 & 0x7F {
                126 => {
                    if avail.len() < 4 {
                        self.need = 4;
                        return Ok(None);
                    }
                    (u64::from(u16::from_be_bytes([avail[2], avail[3]])), 4)
                }
                127 => {
                    if avail.len() < 10 {
                        self.need = 10;
                        return Ok(None);
                    }
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&avail[2..10]);
                    let n = u64::from_be_bytes(b);
                    if n >> 63 != 0 {
                        return Err(FrameError::Protocol("frame length with the top bit set"));
                    }
                    (n, 10)
                }
                n => (u64::from(n), 2),
            };
            let control = op & 0x8 != 0;
            if control {
                if !fin {
                    return Err(FrameError::Protocol("a fragmented control frame"));
                }
                if len > 125 {
                    return Err(FrameError::Protocol("a control frame over 125 bytes"));
                }
            } else {
                let so_far = self.frag.as_ref().map_or(0, |(_, v)| v.len() as u64);
                if len.saturating_add(so_far) > self.max_message as u64 {
                    return Err(FrameError::TooLarge(len.saturating_add(so_far)));
                }
            }
            let mut key = [0u8; 4];
            if masked {
                if avail.len() < pos + 4 {
                    self.need = pos + 4;
                    return Ok(None);
                }
                key.copy_from_slice(&avail[pos..pos + 4]);
                pos += 4;
            }
            // `len` is at most `max_message` (a usize) or 125 here.
            let len = len as usize;
            if avail.len() < pos + len {
                self.need = pos + len;
                return Ok(None);
            }
            self.need = 0;
            let (start, end) = (self.start + pos, self.start + pos + len);
            self.start = end;
            if masked {
                apply_mask(&mut self.buf[start..end], key);
            }
            match op {
                OP_CONT => {
                    let Some((text, acc)) = self.frag.as_mut() else {
                        return Err(FrameError::Protocol("a continuation frame with no message to continue"));
                    };
                    acc.extend_from_slice(&self.buf[start..end]);
                    if fin {
                        let text = *text;
                        if let Some((_, acc)) = self.frag.take() {
                            self.assembled = acc;
                        }
                        break Parsed::Assembled { text };
                    }
                }
                OP_TEXT | OP_BINARY => {
                    if self.frag.is_some() {
                        return Err(FrameError::Protocol("a new message inside a fragmented one"));
                    }
                    let text = op == OP_TEXT;
                    if fin {
                        break Parsed::Data { text, start, end };
                    }
                    self.frag = Some((text, self.buf[start..end].to_vec()));
                }
                OP_CLOSE => {
                    break match len {
                        0 => Parsed::Close(None),
                        1 => return Err(FrameError::Protocol("a close frame of one byte")),
                        _ => {
                            let code = u16::from_be_bytes([self.buf[start], self.buf[start + 1]]);
                            if !close_code_is_valid(code) {
                                return Err(FrameError::Protocol("a close code a peer may not send"));
                            }
                            if std::str::from_utf8(&self.buf[start + 2..end]).is_err() {
                                return Err(FrameError::InvalidUtf8);
                            }
                            Parsed::Close(Some(code))
                        }
                    };
                }
                OP_PING => break Parsed::Ping { start, end },
                OP_PONG => {}
                _ => return Err(FrameError::Protocol("an unknown opcode")),
            }
        };
        let text = match parsed {
            Parsed::Data { text: true, start, end } => Some(&self.buf[start..end]),
            Parsed::Assembled { text: true } => Some(&self.assembled[..]),
            _ => None,
        };
        if text.is_some_and(|t| std::str::from_utf8(t).is_err()) {
            return Err(FrameError::InvalidUtf8);
        }
        Ok(Some(parsed))
    }
}

/// XORs `buf` with the repeated 4-byte `key` (masking and unmasking are the same operation),
/// eight bytes at a time.
pub(crate) fn apply_mask(buf: &mut [u8], key: [u8; 4]) {
    let wide = u64::from_ne_bytes([key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3]]);
    let mut chunks = buf.chunks_exact_mut(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        c.copy_from_slice(&(u64::from_ne_bytes(w) ^ wide).to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= key[i & 3];
    }
}

/// The header of one whole (FIN) frame of `len` payload bytes, with the mask key when there is
/// one: the bytes and how many of them are used (2 to 14).
pub(crate) fn frame_header(opcode: u8, len: usize, mask: Option<[u8; 4]>) -> ([u8; 14], usize) {
    let m = if mask.is_some() { 0x80 } else { 0 };
    let mut h = [0u8; 14];
    h[0] = 0x80 | opcode;
    let mut n = match len {
        l if l < 126 => {
            h[1] = m | l as u8;
            2
        }
        l if l <= 0xFFFF => {
            h[1] = m | 126;
            h[2..4].copy_from_slice(&(l as u16).to_be_bytes());
            4
        }
        l => {
            h[1] = m | 127;
            h[2..10].copy_from_slice(&(l as u64).to_be_bytes());
            10
        }
    };
    if let Some(key) = mask {
        h[n..n + 4].copy_from_slice(&key);
        n += 4;
    }
    (h, n)
}

/// Appends one whole (FIN) frame to `out`: servers pass no mask, clients a fresh random one.
pub(crate) fn encode_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) {
    let (h, n) = frame_header(opcode, payload.len(), mask);
    out.reserve(payload.len() + n);
    out.extend_from_slice(&h[..n]);
    match mask {
        Some(key) => {
            let s = out.len();
            out.extend_from_slice(payload);
            apply_mask(&mut out[s..], key);
        }
        None => out.extend_from_slice(payload),
    }
}

/// A close frame's payload: the code and a reason cut to fit a control frame.
pub(crate) fn encode_close(out: &mut Vec<u8>, code: u16, reason: &str, mask: Option<[u8; 4]>) {
    let mut cut = reason.len().min(123);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut payload = Vec::with_capacity(2 + cut);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..cut]);
    encode_frame(out, OP_CLOSE, &payload, mask);
}

/// A random masking key (RFC 6455 §5.3 wants it unpredictable).
pub(crate) fn mask_key() -> [u8; 4] {
    rand::random()
}

// ---------------------------------------------------------------------------------------------
// Opening handshakes
// ---------------------------------------------------------------------------------------------

/// The `Sec-WebSocket-Accept` value for a client's `Sec-WebSocket-Key` (RFC 6455 §4.2.2): the
/// base64 of the SHA-1 of the key followed by the protocol's GUID.
pub(crate) fn derive_accept_key(key: &[u8]) -> String {
    const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    let mut h = Sha1::new();
    h.update(key);
    h.update(GUID);
    base64(&h.finalize())
}

/// Standard base64 with padding (RFC 4648 §4), for the handshake's keys.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Why an opening handshake failed.
#[derive(Debug)]
pub(crate) enum HandshakeError {
    /// The socket failed or closed.
    Io(io::Error),
    /// The peer sent something that is not a WebSocket opening handshake.
    Bad(String),
    /// The server answered with this status instead of `101`.
    Status(u16),
    /// The server-side check refused the client (answered `401`).
    Refused,
}

impl std::fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandshakeError::Io(e) => write!(f, "{e}"),
            HandshakeError::Bad(why) => f.write_str(why),
            HandshakeError::Status(s) => write!(f, "answered HTTP {s} to the upgrade"),
            HandshakeError::Refused => f.write_str("refused (HTTP 401)"),
        }
    }
}

impl From<io::Error> for HandshakeError {
    fn from(e: io::Error) -> Self {
        HandshakeError::Io(e)
    }
}

/// Reads an HTTP head (up to the blank line) into `buf`; returns its length. What follows it
/// in `buf` was sent after the head.
async fn read_head<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
    complete: impl Fn(&[u8]) -> Result<Option<usize>, String>,
) -> Result<usize, HandshakeError> {
    loop {
        if let Some(n) = complete(buf).map_err(HandshakeError::Bad)? {
            return Ok(n);
        }
        if buf.len() >= MAX_HEAD {
            return Err(HandshakeError::Bad(format!("handshake head over {MAX_HEAD} bytes")));
        }
        buf.reserve(1024);
        if s.read_buf(buf).await? == 0 {
            return Err(HandshakeError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the socket closed during the WebSocket handshake",
            )));
        }
    }
}

/// True when the comma-separated header value lists `token` (case-insensitive).
fn has_token(value: &[u8], token: &str) -> bool {
    value.split(|b| *b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

fn header<'a>(headers: &'a [httparse::Header<'_>], name: &str) -> Option<&'a [u8]> {
    headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value)
}

/// The server side: reads the client's upgrade request, asks `allow(path)` (a `false` is
/// answered `401`), answers `101`. Returns the request path and the bytes read past the head.
pub(crate) async fn server_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    allow: impl FnOnce(&str) -> bool,
) -> Result<(String, Vec<u8>), HandshakeError> {
    let mut buf = Vec::with_capacity(1024);
    let n = read_head(s, &mut buf, |b| {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        match httparse::Request::new(&mut headers).parse(b) {
            Ok(httparse::Status::Complete(n)) => Ok(Some(n)),
            Ok(httparse::Status::Partial) => Ok(None),
            Err(e) => Err(format!("not an HTTP request: {e}")),
        }
    })
    .await;
    let n = match n {
        Ok(n) => n,
        Err(HandshakeError::Bad(why)) => {
            let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n").await;
            return Err(HandshakeError::Bad(why));
        }
        Err(e) => return Err(e),
    };
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    let _ = req.parse(&buf[..n]);
    let problem = if req.method != Some("GET") {
        Some("the upgrade request is not a GET")
    } else if !header(req.headers, "upgrade").is_some_and(|v| has_token(v, "websocket")) {
        Some("no `Upgrade: websocket` header")
    } else if !header(req.headers, "connection").is_some_and(|v| has_token(v, "upgrade")) {
        Some("no `Connection: Upgrade` header")
    } else if header(req.headers, "sec-websocket-key").is_none_or(|k| k.trim_ascii().is_empty()) {
        Some("no Sec-WebSocket-Key header")
    } else {
        None
    };
    if let Some(why) = problem {
        let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n").await;
        return Err(HandshakeError::Bad(why.to_string()));
    }
    if header(req.headers, "sec-websocket-version").map(<[u8]>::trim_ascii) != Some(b"13") {
        let _ = s
            .write_all(b"HTTP/1.1 426 Upgrade Required\r\nSec-WebSocket-Version: 13\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
            .await;
        return Err(HandshakeError::Bad("unsupported Sec-WebSocket-Version (13 is)".to_string()));
    }
    let path = req.path.unwrap_or("/").to_string();
    let accept = derive_accept_key(header(req.headers, "sec-websocket-key").unwrap_or_default().trim_ascii());
    if !allow(&path) {
        let _ = s
            .write_all(
                b"HTTP/1.1 401 Unauthorized\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: 12\r\n\r\nUnauthorized",
            )
            .await;
        let _ = s.flush().await;
        return Err(HandshakeError::Refused);
    }
    let resp =
        format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n");
    s.write_all(resp.as_bytes()).await?;
    s.flush().await?;
    let leftover = buf.split_off(n);
    Ok((path, leftover))
}

/// The client side: sends the upgrade request for `path` to `host_port` (the `Host` header) and
/// checks the `101` answer. Returns the bytes read past the response head.
pub(crate) async fn client_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    host_port: &str,
    path: &str,
) -> Result<Vec<u8>, HandshakeError> {
    let key = base64(&rand::random::<[u8; 16]>());
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host_port}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await?;
    s.flush().await?;
    let mut buf = Vec::with_capacity(512);
    let n = read_head(s, &mut buf, |b| {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        match httparse::Response::new(&mut headers).parse(b) {
            Ok(httparse::Status::Complete(n)) => Ok(Some(n)),
            Ok(httparse::Status::Partial) => Ok(None),
            Err(e) => Err(format!("not an HTTP response: {e}")),
        }
    })
    .await?;
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let _ = resp.parse(&buf[..n]);
    let code = resp.code.unwrap_or(0);
    if code != 101 {
        return Err(HandshakeError::Status(code));
    }
    let want = derive_accept_key(key.as_bytes());
    if header(resp.headers, "sec-websocket-accept").map(<[u8]>::trim_ascii) != Some(want.as_bytes()) {
        return Err(HandshakeError::Bad("the server's Sec-WebSocket-Accept does not match the key".to_string()));
    }
    if !header(resp.headers, "upgrade").is_some_and(|v| has_token(v, "websocket")) {
        return Err(HandshakeError::Bad("the server's 101 has no `Upgrade: websocket`".to_string()));
    }
    Ok(buf.split_off(n))
}

/// Writes all of `buf` to `io`. What was written leaves `buf` when this ends, finished, failed
/// or cancelled part way, so a cancelled caller leaves exactly the unwritten bytes in `buf` (the
/// frames stay whole on the wire once the rest is written). Written bytes are removed once, not
/// after each partial write, so a large buffer is not moved again and again; once empty, a
/// buffer grown past 256 KiB (a large message) is given back.
pub(crate) async fn write_out<W: AsyncWrite + Unpin + ?Sized>(io: &mut W, buf: &mut Vec<u8>) -> io::Result<()> {
    write_all_from(io, buf).await?;
    if buf.capacity() > 256 * 1024 {
        *buf = Vec::new();
    }
    Ok(())
}

async fn write_all_from<W: AsyncWrite + Unpin + ?Sized>(io: &mut W, buf: &mut Vec<u8>) -> io::Result<()> {
    struct Written<'a> {
        buf: &'a mut Vec<u8>,
        n: usize,
    }
    impl Drop for Written<'_> {
        fn drop(&mut self) {
            self.buf.drain(..self.n);
        }
    }
    let mut w = Written { buf, n: 0 };
    while w.n < w.buf.len() {
        let k = io.write(&w.buf[w.n..]).await?;
        if k == 0 {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "the socket takes no more bytes"));
        }
        w.n += k;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(op: u8, fin: bool, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut out = Vec::new();
        encode_frame(&mut out, op, payload, mask);
        if !fin {
            out[0] &= 0x7F;
        }
        out
    }

    fn reader(side: Side, bytes: Vec<u8>) -> FrameReader {
        FrameReader::new(side, 1 << 20, bytes)
    }

    #[test]
    fn masked_round_trip_all_length_forms() {
        for len in [0usize, 1, 7, 8, 125, 126, 127, 65535, 65536, 100_000] {
            // Printable ASCII: valid UTF-8 for the text form.
            let payload: Vec<u8> = (0..len).map(|i| b' ' + (i * 31 % 95) as u8).collect();
            let mut r = reader(Side::Server, frame(OP_BINARY, true, &payload, Some([1, 2, 3, 4])));
            assert_eq!(r.next_message(), Ok(Some(Msg::Binary(&payload))), "len {len}");
            assert_eq!(r.next_message(), Ok(None));
            let mut r = reader(Side::Client, frame(OP_TEXT, true, &payload, None));
            assert_eq!(r.next_message(), Ok(Some(Msg::Text(&payload))), "len {len}");
        }
    }

    #[test]
    fn byte_at_a_time_needs_more_then_completes() {
        let bytes = frame(OP_TEXT, true, b"[\"r\",\"k\",1]", Some([9, 8, 7, 6]));
        let mut r = reader(Side::Server, Vec::new());
        for (i, b) in bytes.iter().enumerate() {
            r.buf.extend_from_slice(&[*b]);
            let got = r.next_message().expect("valid");
            if i + 1 < bytes.len() {
                assert_eq!(got, None, "at byte {i}");
            } else {
                assert_eq!(got, Some(Msg::Text(b"[\"r\",\"k\",1]")));
            }
        }
    }

    #[test]
    fn fragments_reassemble_around_control_frames() {
        let mut bytes = frame(OP_TEXT, false, b"[\"a\",", None);
        bytes.extend(frame(OP_PING, true, b"p", None));
        bytes.extend(frame(OP_CONT, false, b"\"b\",", None));
        bytes.extend(frame(OP_PONG, true, b"", None));
        bytes.extend(frame(OP_CONT, true, b"1]", None));
        bytes.extend(frame(OP_CLOSE, true, &1000u16.to_be_bytes(), None));
        let mut r = reader(Side::Client, bytes);
        assert_eq!(r.next_message(), Ok(Some(Msg::Ping(b"p"))));
        assert_eq!(r.next_message(), Ok(Some(Msg::Text(b"[\"a\",\"b\",1]"))));
        assert_eq!(r.next_message(), Ok(Some(Msg::Close(Some(1000)))));
        assert_eq!(r.next_message(), Ok(None));
    }

    #[test]
    fn owned_messages_share_the_buffer_and_parsing_goes_on_after_them() {
        let mut bytes = frame(OP_TEXT, true, b"first", None);
        bytes.extend(frame(OP_PING, true, b"p", None));
        bytes.extend(frame(OP_BINARY, false, b"fr", None));
        bytes.extend(frame(OP_CONT, true, b"ag", None));
        bytes.extend(frame(OP_BINARY, true, &[0xFF], None));
        let half = frame(OP_TEXT, true, b"split across reads", None);
        bytes.extend_from_slice(&half[..5]);
        let mut r = reader(Side::Client, bytes);
        let first = match r.next_owned() {
            Ok(Some(Owned::Data { bytes, text: true })) => bytes,
            other => panic!("{other:?}"),
        };
        assert_eq!(r.next_owned(), Ok(Some(Owned::Ping(b"p"))));
        assert_eq!(r.next_owned(), Ok(Some(Owned::Data { bytes: Bytes::from_static(b"frag"), text: false })));
        assert_eq!(r.next_owned(), Ok(Some(Owned::Data { bytes: Bytes::from_static(&[0xFF]), text: false })));
        assert_eq!(r.next_owned(), Ok(None));
        // A message handed out stays intact while the reader reads on into a fresh buffer.
        r.prepare();
        r.buf.extend_from_slice(&half[5..]);
        assert_eq!(r.next_owned(), Ok(Some(Owned::Data { bytes: Bytes::from_static(b"split across reads"), text: true })));
        assert_eq!(&first[..], b"first");
        // Text that is not UTF-8 is refused here too.
        let mut r = reader(Side::Client, frame(OP_TEXT, true, b"\xFF", None));
        assert_eq!(r.next_owned(), Err(FrameError::InvalidUtf8));
    }

    #[test]
    fn violations_are_errors() {
        let cases: Vec<(Side, Vec<u8>)> = vec![
            (Side::Server, frame(OP_TEXT, true, b"x", None)),               // unmasked from a client
            (Side::Client, frame(OP_TEXT, true, b"x", Some([1, 1, 1, 1]))), // masked from a server
            (Side::Client, vec![0xC1, 0x00]),                               // RSV1
            (Side::Client, vec![0x83, 0x00]),                               // opcode 3
            (Side::Client, frame(OP_CONT, true, b"x", None)),               // nothing to continue
            (Side::Client, frame(OP_PING, false, b"x", None)),              // fragmented control
            (Side::Client, frame(OP_PING, true, &[0u8; 126], None)),        // control over 125
            (Side::Client, frame(OP_CLOSE, true, b"x", None)),              // 1-byte close
            (Side::Client, [frame(OP_TEXT, false, b"a", None), frame(OP_TEXT, true, b"b", None)].concat()),
            (Side::Client, vec![0x82, 0x7F, 0x80, 0, 0, 0, 0, 0, 0, 0]), // 64-bit length, top bit
        ];
        for (i, (side, bytes)) in cases.into_iter().enumerate() {
            let mut r = reader(side, bytes);
            assert!(matches!(r.next_message(), Err(FrameError::Protocol(_))), "case {i}");
        }
    }

    #[test]
    fn size_limit_counts_fragments_and_is_checked_before_buffering() {
        let mut r = FrameReader::new(Side::Client, 10, vec![0x82, 127, 0, 0, 0, 1, 0, 0, 0, 0]);
        assert_eq!(r.next_message(), Err(FrameError::TooLarge(1 << 32)));
        let mut bytes = frame(OP_BINARY, false, &[0u8; 6], None);
        bytes.extend(frame(OP_CONT, true, &[0u8; 6], None));
        let mut r = FrameReader::new(Side::Client, 10, bytes);
        assert_eq!(r.next_message(), Err(FrameError::TooLarge(12)));
        let mut r = FrameReader::new(Side::Client, 10, frame(OP_BINARY, true, &[7u8; 10], None));
        assert_eq!(r.next_message(), Ok(Some(Msg::Binary(&[7u8; 10]))));
    }

    #[test]
    fn close_codes_and_utf8_are_checked() {
        for (code, ok) in [
            (999u16, false),
            (1000, true),
            (1003, true),
            (1004, false),
            (1005, false),
            (1006, false),
            (1007, true),
            (1014, true),
            (1015, false),
            (2999, false),
            (3000, true),
            (4999, true),
            (5000, false),
        ] {
            let mut r = reader(Side::Client, frame(OP_CLOSE, true, &code.to_be_bytes(), None));
            let got = r.next_message();
            if ok {
                assert_eq!(got, Ok(Some(Msg::Close(Some(code)))), "{code}");
            } else {
                assert!(matches!(got, Err(ref e @ FrameError::Protocol(_)) if e.close_code() == CLOSE_PROTOCOL), "{code}: {got:?}");
            }
        }
        let mut r = reader(Side::Client, frame(OP_CLOSE, true, &[0x03, 0xE8, 0xC3], None));
        assert_eq!(r.next_message(), Err(FrameError::InvalidUtf8));
        assert_eq!(FrameError::InvalidUtf8.close_code(), 1007);
        let mut r = reader(Side::Client, frame(OP_TEXT, true, b"ok \xFF", None));
        assert_eq!(r.next_message(), Err(FrameError::InvalidUtf8));
        // A character split over two fragments is fine.
        let mut bytes = frame(OP_TEXT, false, "\u{e9}".as_bytes()[..1].as_ref(), None);
        bytes.extend(frame(OP_CONT, true, &"\u{e9}".as_bytes()[1..], None));
        let mut r = reader(Side::Client, bytes);
        assert_eq!(r.next_message(), Ok(Some(Msg::Text("\u{e9}".as_bytes()))));
        let mut r = reader(Side::Client, frame(OP_BINARY, true, b"\xFF", None));
        assert_eq!(r.next_message(), Ok(Some(Msg::Binary(b"\xFF"))));
    }

    #[test]
    fn base64_and_accept_key_match_the_rfcs() {
        // RFC 4648 §10 test vectors.
        for (input, want) in
            [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("fooba", "Zm9vYmE="), ("foobar", "Zm9vYmFy")]
        {
            assert_eq!(base64(input.as_bytes()), want);
        }
        // RFC 6455 §1.3's example.
        assert_eq!(derive_accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        // A client key is 16 random bytes: 24 characters.
        assert_eq!(base64(&[0xFF; 16]).len(), 24);
    }

    #[test]
    fn mask_matches_bytewise_xor() {
        let key = [0xA1, 0x02, 0xF3, 0x44];
        for len in 0..40 {
            let data: Vec<u8> = (0..len as u8).collect();
            let mut fast = data.clone();
            apply_mask(&mut fast, key);
            let slow: Vec<u8> = data.iter().enumerate().map(|(i, b)| b ^ key[i % 4]).collect();
            assert_eq!(fast, slow);
        }
    }

    #[test]
    fn close_reason_is_cut_on_a_char_boundary() {
        let mut out = Vec::new();
        encode_close(&mut out, 1002, &"é".repeat(100), None);
        let mut r = reader(Side::Client, out);
        assert_eq!(r.next_message(), Ok(Some(Msg::Close(Some(1002)))));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300), server in proptest::prelude::any::<bool>()) {
            let mut r = FrameReader::new(if server { Side::Server } else { Side::Client }, 200, bytes);
            for _ in 0..300 {
                match r.next_message() {
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                }
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn owned_and_borrowed_reads_agree(
            msgs in proptest::collection::vec((proptest::prelude::any::<bool>(), proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300), 0usize..3), 0..20),
            chunk in 1usize..64,
        ) {
            // Messages (text only when UTF-8), some in fragments, read in chunks both ways.
            let mut bytes = Vec::new();
            for (text, payload, pieces) in &msgs {
                let op = if *text && std::str::from_utf8(payload).is_ok() { OP_TEXT } else { OP_BINARY };
                let cut = payload.len() / (pieces + 1);
                if *pieces == 0 || cut == 0 {
                    bytes.extend(frame(op, true, payload, None));
                } else {
                    bytes.extend(frame(op, false, &payload[..cut], None));
                    bytes.extend(frame(OP_PING, true, b"p", None));
                    bytes.extend(frame(OP_CONT, true, &payload[cut..], None));
                }
            }
            let mut borrowed = Vec::new();
            let mut owned = Vec::new();
            let mut a = FrameReader::new(Side::Client, 1 << 20, Vec::new());
            let mut b = FrameReader::new(Side::Client, 1 << 20, Vec::new());
            for part in bytes.chunks(chunk) {
                a.prepare();
                a.buf.extend_from_slice(part);
                while let Some(m) = a.next_message().expect("valid") {
                    borrowed.push(match m {
                        Msg::Text(t) => (1u8, t.to_vec()),
                        Msg::Binary(d) => (2, d.to_vec()),
                        Msg::Ping(p) => (9, p.to_vec()),
                        Msg::Close(_) => (8, Vec::new()),
                    });
                }
                b.prepare();
                b.buf.extend_from_slice(part);
                while let Some(m) = b.next_owned().expect("valid") {
                    owned.push(match m {
                        Owned::Data { bytes, text } => (if text { 1u8 } else { 2 }, bytes),
                        Owned::Ping(p) => (9, Bytes::copy_from_slice(p)),
                        Owned::Close(_) => (8, Bytes::new()),
                    });
                }
            }
            // Owned messages kept while reading on are intact, and equal the borrowed ones.
            let owned: Vec<(u8, Vec<u8>)> = owned.into_iter().map(|(k, b)| (k, b.to_vec())).collect();
            proptest::prop_assert_eq!(borrowed, owned);
        }
    }

    #[tokio::test]
    async fn handshakes_agree_and_keep_bytes_sent_after_the_head() {
        let (mut a, mut b) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(async move {
            let r = server_handshake(&mut b, |p| p == "/ws").await;
            (r, b)
        });
        let left = client_handshake(&mut a, "127.0.0.1:1", "/ws").await.expect("client");
        assert!(left.is_empty());
        let (r, _b) = server.await.expect("join");
        let (path, left) = r.expect("server");
        assert_eq!(path, "/ws");
        assert!(left.is_empty());

        // A refusal is a 401 the client reports as such.
        let (mut a, mut b) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(async move { server_handshake(&mut b, |_| false).await.map(|_| ()) });
        assert!(matches!(client_handshake(&mut a, "h:1", "/ws").await, Err(HandshakeError::Status(401))));
        assert!(matches!(server.await.expect("join"), Err(HandshakeError::Refused)));

        // Bytes pipelined after the request head are kept for the frame reader.
        let (mut a, mut b) = tokio::io::duplex(64 * 1024);
        let mut req = b"GET /x HTTP/1.1\r\nHost: h\r\nUpgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".to_vec();
        req.extend(frame(OP_TEXT, true, b"hi", Some([1, 2, 3, 4])));
        a.write_all(&req).await.expect("write");
        let (path, left) = server_handshake(&mut b, |_| true).await.expect("server");
        assert_eq!(path, "/x");
        let mut r = reader(Side::Server, left);
        assert_eq!(r.next_message(), Ok(Some(Msg::Text(b"hi"))));
        let mut resp = vec![0u8; 200];
        let n = a.read(&mut resp).await.expect("read");
        let resp = String::from_utf8_lossy(&resp[..n]);
        assert!(resp.starts_with("HTTP/1.1 101"), "{resp}");
        // RFC 6455's own example key and accept value.
        assert!(resp.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{resp}");
    }

    #[tokio::test]
    async fn bad_requests_get_http_errors() {
        for (req, status) in [
            (&b"POST /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: a\r\n\r\n"[..], "400"),
            (&b"GET /ws HTTP/1.1\r\nConnection: upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: a\r\n\r\n"[..], "400"),
            (&b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\nSec-WebSocket-Version: 8\r\nSec-WebSocket-Key: a\r\n\r\n"[..], "426"),
            (&b"\x00\x01garbage\r\n\r\n"[..], "400"),
        ] {
            let (mut a, mut b) = tokio::io::duplex(64 * 1024);
            a.write_all(req).await.expect("write");
            assert!(server_handshake(&mut b, |_| true).await.is_err());
            drop(b);
            let mut resp = String::new();
            a.read_to_string(&mut resp).await.expect("read");
            assert!(resp.starts_with(&format!("HTTP/1.1 {status}")), "{resp}");
        }
        // A head that never ends is cut off at the limit.
        let (mut a, mut b) = tokio::io::duplex(64 * 1024);
        let w = tokio::spawn(async move {
            let _ = a.write_all(b"GET / HTTP/1.1\r\n").await;
            for _ in 0..2000 {
                if a.write_all(b"X-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n").await.is_err() {
                    break;
                }
            }
        });
        assert!(matches!(server_handshake(&mut b, |_| true).await, Err(HandshakeError::Bad(_))));
        drop(b);
        let _ = w.await;
    }
}
