//! The server side of plain HTTP/1.1 connections read and written on Node's loop (the drop-in
//! `grenache-native/http` server, [`crate::inloop::NativeLoopConn::http_server`]): whole requests
//! cut from a connection's bytes, their replies put back in request order, and the core HTTP
//! server's limits (body size, read deadlines, idle keep-alive, body bytes buffered at once).
//!
//! Pure state, no I/O: `inloop.rs` reads and writes the socket.

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use grenache::transport::http::{DEFAULT_MAX_BODY, gunzip, gzip};
use grenache::{ErrorKind, transport::ReadDeadlines};

/// Largest request head (request line and headers); past it `431`.
pub const MAX_HEAD: usize = 64 << 10;
/// Requests of one connection read and not answered yet (pipelined); past it the connection is
/// not read until replies go out.
pub const MAX_PIPELINED: usize = 64;

thread_local! {
    /// Request bytes buffered by all loop server connections of this thread.
    static BUFFERED: Cell<usize> = const { Cell::new(0) };
}

/// The limits of the core's HTTP server, from the face's table of limits by name.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_body: usize,
    pub deadlines: ReadDeadlines,
    pub max_in_flight: usize,
}

impl Limits {
    /// From `serverLimits()`' table; missing names keep the core's defaults.
    pub fn from_table(t: &HashMap<String, f64>) -> Limits {
        let mut deadlines = ReadDeadlines::default();
        let ms = |name: &str, d: &mut Duration| {
            if let Some(v) = t.get(name).filter(|v| v.is_finite() && **v >= 0.0) {
                *d = Duration::from_millis(*v as u64);
            }
        };
        ms("header_timeout_ms", &mut deadlines.header);
        ms("body_timeout_ms", &mut deadlines.body);
        ms("idle_timeout_ms", &mut deadlines.idle);
        if let Some(v) = t.get("body_min_rate").filter(|v| v.is_finite() && **v >= 0.0) {
            deadlines.body_min_rate = *v as u64;
        }
        let max_in_flight = t
            .get("max_body_in_flight")
            .filter(|v| v.is_finite() && **v > 0.0)
            .map_or(grenache::transport::http::DEFAULT_MAX_BODY_IN_FLIGHT, |v| *v as usize);
        Limits { max_body: DEFAULT_MAX_BODY, deadlines, max_in_flight }
    }
}

/// How a request's body is delimited.
#[derive(Debug, Clone, Copy)]
enum BodyLen {
    Length(usize),
    Chunked,
}

/// A request head, read.
#[derive(Debug)]
struct Head {
    len: usize,
    body: BodyLen,
    compress: bool,
    gr: Option<String>,
    action: Option<String>,
    args: Option<String>,
    /// The client closes after this request (`Connection: close`, or HTTP/1.0 without
    /// keep-alive).
    close: bool,
    expect_continue: bool,
}

/// A whole request, for JS.
#[derive(Debug)]
pub struct Request {
    /// Its number on the connection, given back with its reply.
    pub seq: u32,
    /// The body, gunzipped when the request asked for gzip and it gunzips.
    pub body: Vec<u8>,
    pub compress: bool,
    /// The body came chunked (`isStream` in the reference's meta).
    pub stream: bool,
    /// The `_gr`, `_a` and `_ar` headers.
    pub gr: Option<String>,
    pub action: Option<String>,
    pub args: Option<String>,
}

/// The place of one request's reply in the connection's order.
#[derive(Debug)]
struct Slot {
    compress: bool,
    reply: Option<Vec<u8>>,
}

/// What [`Serve::expire`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Expiry {
    Keep,
    /// Close without a word (a late head, an idle keep-alive connection).
    Close(&'static str),
    /// A body too late or too slow: `408 [null,"ERR_TIMEOUT",null]`, then close.
    LateBody,
}

/// The server side of one connection.
#[derive(Debug)]
pub struct Serve {
    buf: Vec<u8>,
    /// Bytes of `buf` counted in [`BUFFERED`].
    counted: usize,
    head: Option<Head>,
    scan: ChunkScan,
    /// When the request being read began, and when its head was whole.
    since: Option<Instant>,
    head_at: Option<Instant>,
    /// `100 Continue` was sent for the request being read.
    continued: bool,
    /// Replies in request order; `slots[0]` is request `first`'s.
    slots: VecDeque<Slot>,
    first: u32,
    /// The connection closes after the reply to this request.
    close_after: Option<u32>,
    /// The client ended its side.
    pub eof: bool,
    /// The last request or reply.
    last: Instant,
    limits: Limits,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let n = self.counted;
        BUFFERED.with(|b| b.set(b.get().saturating_sub(n)));
    }
}

/// A body (or head) refused: the status and the error of the reply.
type Refusal = (u16, String);

impl Serve {
    pub fn new(leftover: Vec<u8>, limits: Limits) -> Serve {
        let mut s = Serve {
            buf: Vec::new(),
            counted: 0,
            head: None,
            scan: ChunkScan::default(),
            since: None,
            head_at: None,
            continued: false,
            slots: VecDeque::new(),
            first: 0,
            close_after: None,
            eof: false,
            last: Instant::now(),
            limits,
        };
        s.extend(&leftover);
        s
    }

    /// Whether the socket should be read now: not once the connection is closing, nor while
    /// [`MAX_PIPELINED`] requests wait for replies.
    pub fn reading(&self) -> bool {
        self.close_after.is_none() && !self.eof && self.slots.len() < MAX_PIPELINED
    }

    /// Bytes read from the socket. False when this thread's budget of buffered request bytes is
    /// spent: the connection is then refused (`503 ERR_BUSY`).
    pub fn extend(&mut self, bytes: &[u8]) -> bool {
        self.buf.extend_from_slice(bytes);
        self.recount()
    }

    fn recount(&mut self) -> bool {
        let (was, now) = (self.counted, self.buf.len());
        self.counted = now;
        let total = BUFFERED.with(|b| {
            let t = b.get().saturating_sub(was).saturating_add(now);
            b.set(t);
            t
        });
        now <= was || total <= self.limits.max_in_flight
    }

    /// Refuses what is being read: the reply goes after those before it, then the connection
    /// closes. Nothing more is read.
    pub fn refuse(&mut self, status: u16, error: &str) {
        let seq = self.first.wrapping_add(self.slots.len() as u32);
        self.slots.push_back(Slot { compress: false, reply: Some(reply_bytes(status, &error_envelope(error), true)) });
        self.close_after = Some(seq);
        self.buf.clear();
        self.buf.shrink_to_fit();
        self.recount();
        self.head = None;
        self.since = None;
    }

    /// Cuts whole requests from the bytes read, into `out`; `interim` gets a `100 Continue` for a
    /// request that asks for one (when no reply is due before it). A request that cannot be
    /// served is refused ([`Serve::refuse`]).
    pub fn parse(&mut self, now: Instant, out: &mut Vec<Request>, interim: &mut Vec<u8>) {
        let mut off = 0;
        while self.close_after.is_none() && self.slots.len() < MAX_PIPELINED {
            if off == self.buf.len() {
                self.since = None;
                break;
            }
            self.since.get_or_insert(now);
            let rest = &self.buf[off..];
            if self.head.is_none() {
                match parse_head(rest) {
                    Ok(None) => break,
                    Ok(Some(h)) => {
                        if let BodyLen::Length(n) = h.body
                            && n > self.limits.max_body
                        {
                            self.buf.drain(..off);
                            return self.refuse(413, ErrorKind::PayloadTooLarge.name());
                        }
                        self.head = Some(h);
                        self.head_at = Some(now);
                        self.scan = ChunkScan::default();
                        self.continued = false;
                    }
                    Err((status, e)) => {
                        self.buf.drain(..off);
                        return self.refuse(status, &e);
                    }
                }
            }
            let Some(head) = self.head.as_ref() else { break };
            let body = &rest[head.len..];
            let whole = match head.body {
                BodyLen::Length(n) if body.len() >= n => Some((n, body[..n].to_vec())),
                BodyLen::Length(_) => None,
                BodyLen::Chunked => match dechunk(body, self.limits.max_body, &mut self.scan) {
                    Ok(w) => w,
                    Err(ChunkError::TooLarge) => {
                        self.buf.drain(..off);
                        return self.refuse(413, ErrorKind::PayloadTooLarge.name());
                    }
                    Err(ChunkError::Bad(e)) => {
                        self.buf.drain(..off);
                        return self.refuse(400, &format!("ERR_DECODE: {e}"));
                    }
                },
            };
            let Some((used, body)) = whole else {
                if head.expect_continue && !self.continued && self.slots.is_empty() {
                    self.continued = true;
                    interim.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                }
                break;
            };
            let Some(head) = self.head.take() else { break };
            off += head.len + used;
            let body = if head.compress {
                match gunzip(&body, self.limits.max_body) {
                    Ok(b) => b,
                    Err(e) if e.kind() == ErrorKind::PayloadTooLarge => {
                        self.buf.drain(..off);
                        return self.refuse(413, ErrorKind::PayloadTooLarge.name());
                    }
                    // Kept as it is, like the reference.
                    Err(_) => body,
                }
            } else {
                body
            };
            let seq = self.first.wrapping_add(self.slots.len() as u32);
            self.slots.push_back(Slot { compress: head.compress, reply: None });
            if head.close {
                self.close_after = Some(seq);
            }
            self.last = now;
            self.since = None;
            out.push(Request {
                seq,
                body,
                compress: head.compress,
                stream: matches!(head.body, BodyLen::Chunked),
                gr: head.gr,
                action: head.action,
                args: head.args,
            });
        }
        self.buf.drain(..off);
        if self.buf.capacity() > 1 << 20 && self.buf.len() < 1 << 16 {
            self.buf.shrink_to(1 << 16);
        }
        self.recount();
    }

    /// The reply to request `seq` (JSON text, gzipped if the request asked for it). False when
    /// no such request waits for one.
    pub fn answer(&mut self, seq: u32, status: u16, body: &[u8]) -> bool {
        let i = seq.wrapping_sub(self.first) as usize;
        let close = self.close_after == Some(seq);
        let Some(slot) = self.slots.get_mut(i) else { return false };
        if slot.reply.is_some() {
            return false;
        }
        let reply = if slot.compress {
            match gzip(body) {
                Ok(z) => reply_bytes(status, &z, close),
                Err(e) => reply_bytes(500, &error_envelope(&format!("ERR_REPLY_ENCODING_COMPRESSION: {e}")), close),
            }
        } else {
            reply_bytes(status, body, close)
        };
        slot.reply = Some(reply);
        true
    }

    /// Moves the replies that are next in order to `out`. True once the reply after which the
    /// connection closes is among them.
    pub fn ready(&mut self, now: Instant, out: &mut Vec<u8>) -> bool {
        while self.slots.front().is_some_and(|s| s.reply.is_some()) {
            let Some(Slot { reply: Some(r), .. }) = self.slots.pop_front() else { break };
            out.extend_from_slice(&r);
            let seq = self.first;
            self.first = self.first.wrapping_add(1);
            self.last = now;
            if self.close_after == Some(seq) {
                return true;
            }
        }
        false
    }

    /// The client ended its side. True when nothing is left to answer (the connection ends
    /// now); otherwise it closes after the last reply.
    pub fn end_input(&mut self) -> bool {
        self.eof = true;
        if self.slots.is_empty() {
            return true;
        }
        if self.close_after.is_none() {
            self.close_after = Some(self.first.wrapping_add(self.slots.len() as u32 - 1));
        }
        false
    }

    /// Bytes read and not cut into requests yet.
    pub fn unparsed(&self) -> bool {
        !self.buf.is_empty()
    }

    /// The read deadlines at `now`: a head must be whole within `header_timeout_ms` of its first
    /// byte, a body within `body_timeout_ms` of its head and, after a grace, at `body_min_rate`;
    /// a connection with nothing running and nothing read for `idle_timeout_ms` closes.
    pub fn expire(&self, now: Instant) -> Expiry {
        let d = &self.limits.deadlines;
        if let Some(since) = self.since {
            match (self.head.as_ref(), self.head_at) {
                (Some(head), Some(at)) => {
                    let got = self.buf.len().saturating_sub(head.len) as u64;
                    let allowed = match d.body_min_rate {
                        0 => d.body,
                        rate => (d.body_grace + Duration::from_secs_f64(got as f64 / rate as f64)).min(d.body),
                    };
                    if now.saturating_duration_since(at) > allowed {
                        return Expiry::LateBody;
                    }
                }
                _ => {
                    if now.saturating_duration_since(since) > d.header {
                        return Expiry::Close("the request head did not arrive in time");
                    }
                }
            }
            return Expiry::Keep;
        }
        if self.slots.is_empty() && now.saturating_duration_since(self.last) > d.idle {
            return Expiry::Close("idle keep-alive connection");
        }
        Expiry::Keep
    }
}

/// `[null, error, null]`.
fn error_envelope(error: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!([null, error, null])).unwrap_or_default()
}

/// An HTTP/1.1 reply with a `content-length` body.
pub fn reply_bytes(status: u16, body: &[u8], close: bool) -> Vec<u8> {
    use std::io::Write;
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    };
    let mut out = Vec::with_capacity(body.len() + 96);
    let _ = write!(out, "HTTP/1.1 {status} {reason}\r\ncontent-length: {}\r\n", body.len());
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// The head at the front of `buf`, once whole.
fn parse_head(buf: &[u8]) -> Result<Option<Head>, Refusal> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut r = httparse::Request::new(&mut headers);
    let len = match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => return Err((431, "ERR_DECODE: the request head is too large".into())),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err((431, "ERR_DECODE: too many request headers".into())),
        Err(e) => return Err((400, format!("ERR_DECODE: bad HTTP request: {e}"))),
    };
    let http10 = r.version == Some(0);
    let mut close = http10;
    let (mut length, mut chunked, mut compress, mut expect_continue) = (None, false, false, false);
    let (mut gr, mut action, mut args) = (None, None, None);
    let text = |v: &[u8]| String::from_utf8_lossy(v).into_owned();
    for h in r.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            let v = std::str::from_utf8(h.value).unwrap_or("").trim();
            let n = v.parse::<usize>().map_err(|_| (400, format!("ERR_DECODE: bad content-length {v:?}")))?;
            if length.is_some_and(|l| l != n) {
                return Err((400, "ERR_DECODE: two different content-lengths".into()));
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            let v = text(h.value).to_ascii_lowercase();
            if !v.trim().ends_with("chunked") {
                return Err((400, format!("ERR_DECODE: transfer-encoding {v:?} is not supported")));
            }
            chunked = true;
        } else if name.eq_ignore_ascii_case("connection") {
            let v = text(h.value).to_ascii_lowercase();
            if v.contains("close") {
                close = true;
            } else if http10 && v.contains("keep-alive") {
                close = false;
            }
        } else if name.eq_ignore_ascii_case("grc-compress") {
            compress = text(h.value).contains("gzip");
        } else if name.eq_ignore_ascii_case("expect") {
            expect_continue = text(h.value).eq_ignore_ascii_case("100-continue");
        } else if name.eq_ignore_ascii_case("_gr") {
            gr = Some(text(h.value));
        } else if name.eq_ignore_ascii_case("_a") {
            action = Some(text(h.value));
        } else if name.eq_ignore_ascii_case("_ar") {
            args = Some(text(h.value));
        }
    }
    // A request with both is refused (request smuggling), as hyper does.
    if chunked && length.is_some() {
        return Err((400, "ERR_DECODE: both content-length and transfer-encoding".into()));
    }
    let body = if chunked { BodyLen::Chunked } else { BodyLen::Length(length.unwrap_or(0)) };
    Ok(Some(Head { len, body, compress, gr, action, args, close, expect_continue }))
}

/// Progress through a chunked body, kept between reads so that each byte is scanned once.
#[derive(Debug, Default)]
pub struct ChunkScan {
    pos: usize,
    chunks: Vec<(usize, usize)>,
    total: usize,
    trailers: bool,
}

/// Why a chunked body was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum ChunkError {
    /// Over the size limit.
    TooLarge,
    Bad(&'static str),
}

/// A chunked body at the front of `b`: `(bytes taken, body)` once it is whole; `scan` keeps the
/// chunks found so far (give the same one with the same body start until it is whole).
pub fn dechunk(b: &[u8], max: usize, scan: &mut ChunkScan) -> Result<Option<(usize, Vec<u8>)>, ChunkError> {
    // The end of the line at `from`, looked for within `limit` bytes.
    let line_end =
        |from: usize, limit: usize| b.get(from..).and_then(|s| s[..s.len().min(limit + 2)].windows(2).position(|w| w == b"\r\n"));
    loop {
        if scan.trailers {
            let Some(eol) = line_end(scan.pos, MAX_HEAD) else {
                return if b.len() - scan.pos > MAX_HEAD { Err(ChunkError::Bad("the trailers are too large")) } else { Ok(None) };
            };
            scan.pos += eol + 2;
            if eol == 0 {
                let mut body = Vec::with_capacity(scan.total);
                for &(from, len) in &scan.chunks {
                    body.extend_from_slice(&b[from..from + len]);
                }
                return Ok(Some((scan.pos, body)));
            }
            continue;
        }
        let Some(eol) = line_end(scan.pos, 1024) else {
            return if b.len() - scan.pos > 1024 { Err(ChunkError::Bad("bad chunk size line")) } else { Ok(None) };
        };
        let line = &b[scan.pos..scan.pos + eol];
        let digits = line.split(|&c| c == b';').next().unwrap_or(line);
        let size = std::str::from_utf8(digits)
            .ok()
            .and_then(|d| usize::from_str_radix(d.trim(), 16).ok())
            .ok_or(ChunkError::Bad("bad chunk size"))?;
        if size == 0 {
            scan.pos += eol + 2;
            scan.trailers = true;
            continue;
        }
        if scan.total.saturating_add(size) > max {
            return Err(ChunkError::TooLarge);
        }
        let data = scan.pos + eol + 2;
        if b.len() < data + size + 2 {
            return Ok(None);
        }
        if &b[data + size..data + size + 2] != b"\r\n" {
            return Err(ChunkError::Bad("a chunk does not end with CRLF"));
        }
        scan.chunks.push((data, size));
        scan.total += size;
        scan.pos = data + size + 2;
    }
}
