//! Plain HTTP/1.1 RPC connections handed over to a face's event loop (the Node face's drop-in
//! `grenache-native/http` server and client read and write their sockets on Node's loop).
//!
//! The server side ([`Serve`]): whole requests cut from the connection's bytes, their replies
//! put back in request order, and the limits of [`super::http::HttpServer`] (body size, read
//! deadlines, idle keep-alive, body bytes buffered at once), so that every face serving such
//! sockets keeps the same rules.
//!
//! Pure state, no I/O: the face reads the socket into [`Serve::extend`], takes requests from
//! [`Serve::parse`], gives replies to [`Serve::answer`] and writes what [`Serve::ready`] puts out.
//! Budget of buffered bytes: per thread (a face's loop thread), `max_body_in_flight`.
//!
//! The client side of such a connection reads its replies with [`parse_response`].

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::ReadDeadlines;
use super::http::{DEFAULT_MAX_BODY, gunzip, gzip};
use crate::ErrorKind;

/// Largest request head (request line and headers); past it `431`.
pub const MAX_HEAD: usize = 64 << 10;
/// Requests of one connection read and not answered yet (pipelined); past it the connection is
/// not read until replies go out.
pub const MAX_PIPELINED: usize = 64;

thread_local! {
    /// Request bytes buffered by all loop server connections of this thread.
    static BUFFERED: Cell<usize> = const { Cell::new(0) };
    /// The `date` header's value and the second it was made for.
    static DATE: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((u64::MAX, String::new())) };
}

/// Appends `date: <IMF-fixdate>\r\n` (RFC 9110 section 6.6.1: an origin server with a clock
/// sends it, as Node's `http` module and hyper do). Formatted once a second per thread.
fn push_date(out: &mut Vec<u8>) {
    let now = std::time::SystemTime::now();
    let second = now.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.0 != second {
            *d = (second, httpdate::fmt_http_date(now));
        }
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(d.1.as_bytes());
        out.extend_from_slice(b"\r\n");
    });
}

/// The limits of the core's HTTP server, from the face's table of limits by name.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The largest request body (after gunzip too); past it `413`.
    pub max_body: usize,
    /// The head's, the body's and the idle keep-alive deadlines.
    pub deadlines: ReadDeadlines,
    /// Request bytes all connections of one thread buffer at once; past it `503`.
    pub max_in_flight: usize,
}

impl Limits {
    /// From a table of server limits by name (as [`super::ServerLimits`] lists them); missing
    /// names keep the defaults.
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
            .map_or(super::http::DEFAULT_MAX_BODY_IN_FLIGHT, |v| *v as usize);
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
    /// The request asked for gzip (`grc-compress: gzip`): its reply is gzipped too.
    pub compress: bool,
    /// The body came chunked (`isStream` in the reference's meta).
    pub stream: bool,
    /// The `_gr` header (streaming mode's `[rid, key]`), as sent.
    pub gr: Option<String>,
    /// The `_a` header (streaming mode's action).
    pub action: Option<String>,
    /// The `_ar` header (streaming mode's action arguments, JSON), as sent.
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
    /// Within every deadline.
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
    /// A connection whose first bytes (read with its handshake, if any) are `leftover`.
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

// ---------------------------------------------------------------------------------------------
// The client side: replies read from a handed-over client connection
// ---------------------------------------------------------------------------------------------
/// One HTTP reply read from the front of a connection's input.
#[derive(Debug, PartialEq, Eq)]
pub struct HttpResponse {
    /// Bytes of the input it took.
    pub consumed: usize,
    /// The status code.
    pub status: u16,
    /// The body, de-chunked.
    pub body: Vec<u8>,
    /// The server closes the connection after it (or the body ran to the end of the socket).
    pub close: bool,
}

/// Parses one reply from `buf`: `None` until it is whole. `eof`: the socket ended after `buf`
/// (a reply with neither a length nor chunks ends there). Bodies over `max` bytes are refused.
pub fn parse_response(buf: &[u8], eof: bool, max: usize) -> Result<Option<HttpResponse>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut r = httparse::Response::new(&mut headers);
    let head = match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => return Err("the reply's head is too large".into()),
        Ok(httparse::Status::Partial) if eof && !buf.is_empty() => return Err("the connection ended inside a reply".into()),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("bad HTTP reply: {e}")),
    };
    let status = r.code.unwrap_or(0);
    let http10 = r.version == Some(0);
    let mut close = http10;
    let mut length = None;
    let mut chunked = false;
    for h in r.headers.iter() {
        let value = std::str::from_utf8(h.value).unwrap_or("").trim();
        if h.name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse::<usize>().map_err(|_| format!("bad content-length {value:?}"))?);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().ends_with("chunked");
        } else if h.name.eq_ignore_ascii_case("connection") {
            let v = value.to_ascii_lowercase();
            if v.contains("close") {
                close = true;
            } else if http10 && v.contains("keep-alive") {
                close = false;
            }
        }
    }
    let rest = &buf[head..];
    let no_body = (100..200).contains(&status) || status == 204 || status == 304;
    let (used, body) = if no_body {
        (0, Vec::new())
    } else if chunked {
        let chunks = dechunk(rest, max, &mut ChunkScan::default()).map_err(|e| match e {
            ChunkError::TooLarge => format!("the reply is over {max} bytes"),
            ChunkError::Bad(why) => why.to_string(),
        })?;
        match chunks {
            Some(b) => b,
            None if eof => return Err("the connection ended inside a reply".into()),
            None => return Ok(None),
        }
    } else if let Some(n) = length {
        if n > max {
            return Err(format!("the reply is over {max} bytes"));
        }
        if rest.len() < n {
            return if eof { Err("the connection ended inside a reply".into()) } else { Ok(None) };
        }
        (n, rest[..n].to_vec())
    } else {
        // Neither a length nor chunks: the body runs to the end of the socket.
        if rest.len() > max {
            return Err(format!("the reply is over {max} bytes"));
        }
        if !eof {
            return Ok(None);
        }
        close = true;
        (rest.len(), rest.to_vec())
    };
    Ok(Some(HttpResponse { consumed: head + used, status, body, close }))
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
    let mut out = Vec::with_capacity(body.len() + 128);
    let _ = write!(out, "HTTP/1.1 {status} {reason}\r\n");
    push_date(&mut out);
    let _ = write!(out, "content-length: {}\r\n", body.len());
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
    /// Not chunked encoding: why.
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

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits { max_body: 1024, deadlines: ReadDeadlines::default(), max_in_flight: 1 << 20 }
    }

    fn post(body: &[u8], headers: &str) -> Vec<u8> {
        let mut v = format!("POST / HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n{headers}\r\n", body.len()).into_bytes();
        v.extend_from_slice(body);
        v
    }

    fn parse(s: &mut Serve) -> (Vec<Request>, Vec<u8>) {
        let (mut reqs, mut interim) = (Vec::new(), Vec::new());
        s.parse(Instant::now(), &mut reqs, &mut interim);
        (reqs, interim)
    }

    /// The replies `out` holds: `(status, headers, body)`.
    fn replies(mut out: &[u8]) -> Vec<(u16, String, Vec<u8>)> {
        let mut v = Vec::new();
        while !out.is_empty() {
            let mut headers = [httparse::EMPTY_HEADER; 16];
            let mut r = httparse::Response::new(&mut headers);
            let Ok(httparse::Status::Complete(n)) = r.parse(out) else { panic!("a whole reply") };
            let len: usize = r
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .map_or(0, |h| std::str::from_utf8(h.value).unwrap_or("0").parse().unwrap_or(0));
            let names =
                r.headers.iter().map(|h| format!("{}: {}", h.name, String::from_utf8_lossy(h.value))).collect::<Vec<_>>().join("\n");
            v.push((r.code.unwrap_or(0), names, out[n..n + len].to_vec()));
            out = &out[n + len..];
        }
        v
    }

    #[test]
    fn pipelined_requests_are_answered_in_request_order() {
        let mut s = Serve::new(Vec::new(), limits());
        let gz = gzip(br#"["r3","k",3]"#).expect("gzip");
        let mut wire = post(br#"["r1","k",1]"#, "");
        wire.extend_from_slice(
            b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n_gr: [\"g\",\"k\"]\r\n\r\n4\r\n[\"r2\r\n8;x=y\r\n\",\"k\",2]\r\n0\r\n\r\n",
        );
        wire.extend_from_slice(&post(&gz, "grc-compress: gzip\r\n"));
        assert!(s.extend(&wire));
        let (reqs, _) = parse(&mut s);
        let bodies: Vec<_> = reqs.iter().map(|r| String::from_utf8_lossy(&r.body).into_owned()).collect();
        assert_eq!(bodies, [r#"["r1","k",1]"#, r#"["r2","k",2]"#, r#"["r3","k",3]"#]);
        assert_eq!(reqs.iter().map(|r| (r.compress, r.stream)).collect::<Vec<_>>(), [(false, false), (false, true), (true, false)]);
        assert_eq!(reqs[1].gr.as_deref(), Some(r#"["g","k"]"#));
        // Answered last, first, second: nothing goes out before the first.
        let mut out = Vec::new();
        assert!(s.answer(reqs[2].seq, 200, b"three"));
        assert!(s.answer(reqs[1].seq, 200, b"two"));
        assert!(!s.ready(Instant::now(), &mut out));
        assert!(out.is_empty());
        assert!(s.answer(reqs[0].seq, 200, b"one"));
        assert!(!s.answer(reqs[0].seq, 200, b"again"), "one reply per request");
        assert!(!s.ready(Instant::now(), &mut out));
        let got = replies(&out);
        assert_eq!(got.iter().map(|r| r.0).collect::<Vec<_>>(), [200, 200, 200]);
        assert_eq!(got[0].2, b"one");
        assert_eq!(got[1].2, b"two");
        assert_eq!(gunzip(&got[2].2, 100).expect("the gzip request's reply is gzipped"), b"three");
        assert!(s.reading() && !s.unparsed());
    }

    #[test]
    fn a_request_cut_anywhere_is_read_whole_once() {
        let mut wire = b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\nx-trailer: 1\r\n\r\n".to_vec();
        wire.extend_from_slice(&post(b"fgh", ""));
        for cut in 1..wire.len() {
            let mut s = Serve::new(Vec::new(), limits());
            let mut reqs = Vec::new();
            for piece in [&wire[..cut], &wire[cut..]] {
                assert!(s.extend(piece));
                reqs.extend(parse(&mut s).0);
            }
            assert_eq!(reqs.iter().map(|r| r.body.clone()).collect::<Vec<_>>(), [b"abcde".to_vec(), b"fgh".to_vec()], "cut at {cut}");
        }
        // Byte by byte.
        let mut s = Serve::new(Vec::new(), limits());
        let mut n = 0;
        for b in &wire {
            assert!(s.extend(std::slice::from_ref(b)));
            n += parse(&mut s).0.len();
        }
        assert_eq!(n, 2);
    }

    #[test]
    fn bad_requests_are_refused_and_the_connection_closes_after_the_replies_before() {
        let cases: [(&[u8], u16); 6] = [
            (b"GARBAGE\0\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\ncontent-length: 99999\r\n\r\n", 413),
            (b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n800\r\n", 413),
            (b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n", 400),
            (b"POST / HTTP/1.1\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n", 400),
        ];
        for (bad, status) in cases {
            let mut s = Serve::new(Vec::new(), limits());
            let mut wire = post(b"[1]", "");
            wire.extend_from_slice(bad);
            assert!(s.extend(&wire));
            let (reqs, _) = parse(&mut s);
            assert_eq!(reqs.len(), 1, "the good request before it is served");
            assert!(!s.reading(), "nothing more is read");
            let mut out = Vec::new();
            assert!(!s.ready(Instant::now(), &mut out), "the refusal waits for the reply before it");
            s.answer(reqs[0].seq, 200, b"ok");
            assert!(s.ready(Instant::now(), &mut out), "then the connection closes");
            let got = replies(&out);
            assert_eq!(got.iter().map(|r| r.0).collect::<Vec<_>>(), [200, status], "{}", String::from_utf8_lossy(bad));
            assert!(got[1].1.contains("connection: close"));
            assert!(String::from_utf8_lossy(&got[1].2).starts_with("[null,\"ERR_"));
        }
        // A head that never ends.
        let mut s = Serve::new(Vec::new(), limits());
        assert!(s.extend(format!("POST / HTTP/1.1\r\nx: {}", "a".repeat(MAX_HEAD + 1)).as_bytes()));
        parse(&mut s);
        let mut out = Vec::new();
        assert!(s.ready(Instant::now(), &mut out));
        assert_eq!(replies(&out)[0].0, 431);
        // A gzip body that grows past the limit.
        let mut s = Serve::new(Vec::new(), limits());
        assert!(s.extend(&post(&gzip(&[b' '; 5000]).expect("gzip"), "grc-compress: gzip\r\n")));
        assert!(parse(&mut s).0.is_empty());
        let mut out = Vec::new();
        assert!(s.ready(Instant::now(), &mut out));
        assert_eq!(replies(&out)[0].0, 413);
    }

    #[test]
    fn connection_close_http10_continue_and_the_pipelining_bound() {
        let mut s = Serve::new(Vec::new(), limits());
        let mut wire = post(b"a", "connection: close\r\n");
        wire.extend_from_slice(&post(b"b", ""));
        assert!(s.extend(&wire));
        let (reqs, _) = parse(&mut s);
        assert_eq!(reqs.len(), 1, "nothing after a request that closes");
        s.answer(reqs[0].seq, 200, b"x");
        let mut out = Vec::new();
        assert!(s.ready(Instant::now(), &mut out));
        assert!(replies(&out)[0].1.contains("connection: close"));

        let mut s = Serve::new(b"POST / HTTP/1.0\r\ncontent-length: 1\r\n\r\nz".to_vec(), limits());
        let (reqs, _) = parse(&mut s);
        s.answer(reqs[0].seq, 200, b"x");
        assert!(s.ready(Instant::now(), &mut Vec::new()), "HTTP/1.0 closes after its reply");

        let mut s = Serve::new(Vec::new(), limits());
        assert!(s.extend(b"POST / HTTP/1.1\r\nexpect: 100-continue\r\ncontent-length: 2\r\n\r\n"));
        let (reqs, interim) = parse(&mut s);
        assert!(reqs.is_empty());
        assert_eq!(interim, b"HTTP/1.1 100 Continue\r\n\r\n");
        assert!(parse(&mut s).1.is_empty(), "once");
        assert!(s.extend(b"ok"));
        assert_eq!(parse(&mut s).0.len(), 1);

        let mut s = Serve::new(Vec::new(), limits());
        let wire: Vec<u8> = (0..MAX_PIPELINED + 6).flat_map(|i| post(format!("{i}").as_bytes(), "")).collect();
        assert!(s.extend(&wire));
        let (reqs, _) = parse(&mut s);
        assert_eq!(reqs.len(), MAX_PIPELINED);
        assert!(!s.reading() && s.unparsed());
        s.answer(reqs[0].seq, 200, b"x");
        s.ready(Instant::now(), &mut Vec::new());
        assert!(s.reading());
        let (more, _) = parse(&mut s);
        assert_eq!(more.len(), 1);
        assert_eq!(more[0].body, format!("{MAX_PIPELINED}").as_bytes());

        let mut s = Serve::new(Vec::new(), limits());
        assert!(s.end_input(), "nothing to answer: close now");
        let mut s = Serve::new(post(b"q", ""), limits());
        let (reqs, _) = parse(&mut s);
        assert!(!s.end_input(), "the peer's end waits for the reply");
        s.answer(reqs[0].seq, 200, b"x");
        assert!(s.ready(Instant::now(), &mut Vec::new()));
    }

    #[test]
    fn deadlines_close_late_heads_late_bodies_and_idle_connections() {
        let d = ReadDeadlines {
            header: Duration::from_millis(100),
            body: Duration::from_millis(300),
            body_min_rate: 0,
            body_grace: Duration::from_millis(50),
            idle: Duration::from_millis(200),
        };
        let l = Limits { deadlines: d, ..limits() };
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);

        let s = Serve::new(Vec::new(), l);
        assert_eq!(s.expire(at(150)), Expiry::Keep, "a fresh connection has the idle time");
        assert_eq!(s.expire(at(250)), Expiry::Close("idle keep-alive connection"));

        let mut s = Serve::new(Vec::new(), l);
        assert!(s.extend(b"POST / HT"));
        s.parse(t0, &mut Vec::new(), &mut Vec::new());
        assert_eq!(s.expire(at(90)), Expiry::Keep);
        assert_eq!(s.expire(at(120)), Expiry::Close("the request head did not arrive in time"));

        let mut s = Serve::new(Vec::new(), l);
        assert!(s.extend(b"POST / HTTP/1.1\r\ncontent-length: 10\r\n\r\n12"));
        s.parse(t0, &mut Vec::new(), &mut Vec::new());
        assert_eq!(s.expire(at(250)), Expiry::Keep);
        assert_eq!(s.expire(at(350)), Expiry::LateBody);

        // A request running is not idle.
        let mut s = Serve::new(post(b"x", ""), l);
        let mut reqs = Vec::new();
        s.parse(t0, &mut reqs, &mut Vec::new());
        assert_eq!(s.expire(at(1000)), Expiry::Keep);
        s.answer(reqs[0].seq, 200, b"y");
        s.ready(at(1000), &mut Vec::new());
        assert_eq!(s.expire(at(1100)), Expiry::Keep);
        assert_eq!(s.expire(at(1300)), Expiry::Close("idle keep-alive connection"));
    }

    #[test]
    fn replies_in_every_framing() {
        let whole = |b: &[u8], eof| parse_response(b, eof, 100).expect("a reply").expect("whole");
        let r = whole(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1", false);
        assert_eq!((r.status, r.body.as_slice(), r.consumed, r.close), (200, &b"ok"[..], 40, false));
        let r = whole(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n2\r\nab\r\n1\r\nc\r\n0\r\n\r\n", false);
        assert_eq!((r.body.as_slice(), r.close), (&b"abc"[..], true));
        assert_eq!(parse_response(b"HTTP/1.1 200 OK\r\n\r\nto the end", false, 100), Ok(None), "a body to the end waits for it");
        let r = whole(b"HTTP/1.1 200 OK\r\n\r\nto the end", true);
        assert_eq!((r.body.as_slice(), r.close), (&b"to the end"[..], true));
        let r = whole(b"HTTP/1.0 204 No Content\r\n\r\n", false);
        assert_eq!((r.status, r.close), (204, true), "HTTP/1.0 closes");
        assert_eq!(parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nab", false, 100), Ok(None));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nab", true, 100).is_err(), "ended inside");
        assert!(parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 500\r\n\r\n", false, 100).is_err(), "over the limit");
        assert!(parse_response(b"NOT HTTP\r\n\r\n", false, 100).is_err());
        assert!(parse_response(&[b'a'; MAX_HEAD + 2], false, 100).is_err(), "a head that never ends");
    }

    #[test]
    fn replies_carry_the_date_and_their_length() {
        let before = std::time::SystemTime::now() - Duration::from_secs(1);
        let out = reply_bytes(200, b"[\"r\",null,1]", true);
        let text = std::str::from_utf8(&out).expect("text");
        let mut headers = [httparse::EMPTY_HEADER; 8];
        let mut r = httparse::Response::new(&mut headers);
        let head = match r.parse(&out) {
            Ok(httparse::Status::Complete(n)) => n,
            other => panic!("{other:?}: {text}"),
        };
        assert_eq!((r.code, &out[head..]), (Some(200), &b"[\"r\",null,1]"[..]));
        let header = |name: &str| r.headers.iter().find(|h| h.name == name).map(|h| std::str::from_utf8(h.value).expect("utf-8"));
        assert_eq!((header("content-length"), header("connection")), (Some("12"), Some("close")));
        let date = httpdate::parse_http_date(header("date").expect("a date header")).expect("an IMF-fixdate");
        let after = std::time::SystemTime::now() + Duration::from_secs(1);
        assert!(before <= date && date <= after, "{text}");
        // The same second's value is reused; a reply made later still carries one.
        assert!(std::str::from_utf8(&reply_bytes(400, b"x", false)).expect("text").contains("\r\ndate: "));
    }

    #[test]
    fn the_thread_budget_of_buffered_bytes_is_shared_and_given_back() {
        let l = Limits { max_in_flight: 100, ..limits() };
        let mut a = Serve::new(Vec::new(), l);
        assert!(a.extend(&[b'x'; 60]));
        let mut b = Serve::new(Vec::new(), l);
        assert!(!b.extend(&[b'y'; 60]), "two connections past the budget");
        drop(b);
        drop(a);
        let mut c = Serve::new(Vec::new(), l);
        assert!(c.extend(&[b'z'; 90]), "given back when the connections went");
    }
}
