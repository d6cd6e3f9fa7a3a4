//! ZMTP 3.1 with the NULL mechanism (RFC 37 / 23 of rfc.zeromq.org), the part of it the ZeroMQ
//! transport needs: the greeting, the `READY` handshake with socket-type checks, multipart
//! messages, `PING`/`PONG`, and subscriptions in both their 3.0 form (a message whose first byte
//! is 1 or 0) and their 3.1 form (`SUBSCRIBE`/`CANCEL` commands).
//!
//! Every read is bounded: a message larger than its limit is an error before anything of that
//! size is allocated, frames past the message's frame limit are read and thrown away (the message
//! comes back marked [`Message::truncated`]), and commands are small by definition (255 bytes and
//! less are enough for what we accept; a longer one is a protocol error).

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::{Error, ErrorKind, Result};

/// The socket types this module speaks as, or accepts as peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SocketType {
    Router,
    Dealer,
    Req,
    Rep,
    Pub,
    Sub,
    XPub,
    XSub,
}

impl SocketType {
    pub(crate) fn name(self) -> &'static str {
        match self {
            SocketType::Router => "ROUTER",
            SocketType::Dealer => "DEALER",
            SocketType::Req => "REQ",
            SocketType::Rep => "REP",
            SocketType::Pub => "PUB",
            SocketType::Sub => "SUB",
            SocketType::XPub => "XPUB",
            SocketType::XSub => "XSUB",
        }
    }

    fn parse(name: &[u8]) -> Option<SocketType> {
        Some(match name {
            b"ROUTER" => SocketType::Router,
            b"DEALER" => SocketType::Dealer,
            b"REQ" => SocketType::Req,
            b"REP" => SocketType::Rep,
            b"PUB" => SocketType::Pub,
            b"SUB" => SocketType::Sub,
            b"XPUB" => SocketType::XPub,
            b"XSUB" => SocketType::XSub,
            _ => return None,
        })
    }

    /// The peer types ZMTP allows for this type (RFC 37's table).
    fn accepts(self, peer: SocketType) -> bool {
        use SocketType::*;
        match self {
            Router => matches!(peer, Dealer | Req | Router),
            Dealer => matches!(peer, Router | Rep | Dealer),
            Req => matches!(peer, Rep | Router),
            Rep => matches!(peer, Req | Dealer),
            Pub | XPub => matches!(peer, Sub | XSub),
            Sub | XSub => matches!(peer, Pub | XPub),
        }
    }

    /// Whether the READY command carries an `Identity` property for this type.
    fn has_identity(self) -> bool {
        matches!(self, SocketType::Router | SocketType::Dealer | SocketType::Req)
    }
}

/// The size limits of a connection's reader.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// The largest message, all frames together; past it the connection fails with
    /// `PayloadTooLarge` (ZeroMQ's `ZMQ_MAXMSGSIZE` does the same).
    pub(crate) max_message_size: usize,
    /// Frames kept per message; further frames are read and dropped.
    pub(crate) max_frames: usize,
}

/// The largest command we read (a READY with a long identity, a SUBSCRIBE with a long prefix).
const MAX_COMMAND_SIZE: usize = 64 * 1024;

/// What the handshake learnt about the peer.
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    pub(crate) socket_type: SocketType,
}

/// Our greeting: signature, version 3.1, mechanism NULL, as-server 0, filler.
fn greeting() -> [u8; 64] {
    let mut g = [0u8; 64];
    g[0] = 0xff;
    g[9] = 0x7f;
    g[10] = 3;
    g[11] = 1;
    g[12..16].copy_from_slice(b"NULL");
    g
}

/// Appends one frame's header: flags, then a 1-byte or 8-byte length.
fn put_header(out: &mut Vec<u8>, flags: u8, len: usize) {
    if len > 255 {
        out.push(flags | 0x02);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    } else {
        out.push(flags);
        out.push(len as u8);
    }
}

/// Appends a multipart message made of `frames`.
pub(crate) fn encode_message<B: AsRef<[u8]>>(out: &mut Vec<u8>, frames: &[B]) {
    let last = frames.len().saturating_sub(1);
    for (i, f) in frames.iter().enumerate() {
        let f = f.as_ref();
        put_header(out, if i < last { 0x01 } else { 0x00 }, f.len());
        out.extend_from_slice(f);
    }
}

/// Appends a command: its name (length-prefixed) then `body`.
pub(crate) fn encode_command(out: &mut Vec<u8>, name: &str, body: &[u8]) {
    put_header(out, 0x04, 1 + name.len() + body.len());
    out.push(name.len() as u8);
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(body);
}

fn ready_body(ours: SocketType) -> Vec<u8> {
    let mut body = Vec::new();
    let mut prop = |name: &str, value: &[u8]| {
        body.push(name.len() as u8);
        body.extend_from_slice(name.as_bytes());
        body.extend_from_slice(&(value.len() as u32).to_be_bytes());
        body.extend_from_slice(value);
    };
    prop("Socket-Type", ours.name().as_bytes());
    if ours.has_identity() {
        prop("Identity", b"");
    }
    body
}

fn protocol(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::Protocol, msg)
}

/// Runs the ZMTP 3 handshake as `ours` on `io` within `timeout`: greetings, then READY both
/// ways. A peer of a type `ours` cannot talk to is sent an ERROR command and refused. `reader`
/// keeps what the peer sent after its READY: read the connection with it afterwards.
pub(crate) async fn handshake<S>(io: &mut S, ours: SocketType, timeout: Duration, reader: &mut FrameReader) -> Result<Peer>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match tokio::time::timeout(timeout, handshake_inner(io, ours, reader)).await {
        Ok(r) => r,
        Err(_) => Err(Error::timeout(format!("ZMTP handshake not done within {timeout:?}"))),
    }
}

async fn handshake_inner<S>(io: &mut S, ours: SocketType, reader: &mut FrameReader) -> Result<Peer>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    io.write_all(&greeting()).await?;
    io.flush().await?;
    let mut g = [0u8; 64];
    // The signature first: a peer that is not ZMTP 3 (or not ZeroMQ at all) is told apart here.
    io.read_exact(&mut g[..11]).await?;
    if g[0] != 0xff || g[9] & 1 != 1 {
        return Err(protocol("not a ZeroMQ peer (bad ZMTP signature)"));
    }
    if g[10] < 3 {
        return Err(protocol(format!("ZMTP {}.x is not supported (3.0 or later is)", g[10])));
    }
    io.read_exact(&mut g[11..]).await?;
    let mechanism = &g[12..32];
    if !mechanism.starts_with(b"NULL") || mechanism[4..].iter().any(|b| *b != 0) {
        let name = String::from_utf8_lossy(mechanism).trim_end_matches('\0').to_string();
        return Err(protocol(format!("ZMTP mechanism {name:?} is not supported (NULL is; there is no CURVE)")));
    }
    let mut out = Vec::with_capacity(64);
    encode_command(&mut out, "READY", &ready_body(ours));
    io.write_all(&out).await?;
    io.flush().await?;
    // The peer's READY (or its ERROR).
    let command = match reader.read_frame_raw(io).await? {
        RawFrame::Command(c) => c,
        RawFrame::Message { .. } => return Err(protocol("the peer sent a message before READY")),
    };
    let (name, body) = split_command(&command)?;
    if name == b"ERROR" {
        let reason = body.get(1..).map(String::from_utf8_lossy).unwrap_or_default();
        return Err(protocol(format!("the peer refused the handshake: {reason}")));
    }
    if name != b"READY" {
        return Err(protocol(format!("expected READY, got {:?}", String::from_utf8_lossy(name))));
    }
    let peer_type = ready_socket_type(body)?;
    if !ours.accepts(peer_type) {
        let reason = format!("a {} socket does not talk to a {}", ours.name(), peer_type.name());
        let mut out = Vec::new();
        let mut body = vec![reason.len().min(255) as u8];
        body.extend_from_slice(&reason.as_bytes()[..reason.len().min(255)]);
        encode_command(&mut out, "ERROR", &body);
        let _ = io.write_all(&out).await;
        let _ = io.flush().await;
        return Err(protocol(reason));
    }
    Ok(Peer { socket_type: peer_type })
}

/// A command's name and body.
fn split_command(c: &[u8]) -> Result<(&[u8], &[u8])> {
    let n = *c.first().ok_or_else(|| protocol("an empty command"))? as usize;
    if c.len() < 1 + n {
        return Err(protocol("a command shorter than its name"));
    }
    Ok((&c[1..1 + n], &c[1 + n..]))
}

/// The `Socket-Type` property of a READY body.
fn ready_socket_type(mut body: &[u8]) -> Result<SocketType> {
    let mut found = None;
    while !body.is_empty() {
        let n = body[0] as usize;
        let name = body.get(1..1 + n).ok_or_else(|| protocol("a READY property name runs past the command"))?;
        let len_bytes = body.get(1 + n..5 + n).ok_or_else(|| protocol("a READY property has no length"))?;
        let len = u32::from_be_bytes([len_bytes[0], len_bytes[1], len_bytes[2], len_bytes[3]]) as usize;
        let value = body.get(5 + n..5 + n + len).ok_or_else(|| protocol("a READY property value runs past the command"))?;
        if name.eq_ignore_ascii_case(b"Socket-Type") {
            found = Some(
                SocketType::parse(value).ok_or_else(|| protocol(format!("unknown socket type {:?}", String::from_utf8_lossy(value))))?,
            );
        }
        body = &body[5 + n + len..];
    }
    found.ok_or_else(|| protocol("READY without a Socket-Type"))
}

/// One frame as read off the wire.
enum RawFrame {
    Command(Bytes),
    Message { data: Option<Bytes>, more: bool },
}

/// What a connection received after the handshake.
#[derive(Debug)]
pub(crate) enum Incoming {
    /// A multipart message.
    Message(Message),
    /// A `PING` with its context: answer with [`encode_pong`].
    Ping(Bytes),
    /// A subscription to a prefix (either form).
    Subscribe(Bytes),
    /// A subscription cancelled (either form).
    Cancel(Bytes),
}

/// A multipart message.
#[derive(Debug, Default)]
pub(crate) struct Message {
    /// Its frames, at most the reader's `max_frames`.
    pub(crate) frames: Vec<Bytes>,
    /// More frames came than `max_frames`; they were dropped.
    pub(crate) truncated: bool,
}

/// Appends the PONG answering a PING with `context`.
pub(crate) fn encode_pong(out: &mut Vec<u8>, context: &[u8]) {
    encode_command(out, "PONG", context);
}

/// Reads frames from a connection with [`Limits`]. [`FrameReader::next`] is cancel-safe: a
/// message half read when its future is dropped is carried on by the next call.
#[derive(Debug)]
pub(crate) struct FrameReader {
    limits: Limits,
    buf: BytesMut,
    /// The message being read: its frames so far and their bytes.
    partial: Message,
    used: usize,
    /// A frame being skipped: bytes left, and its MORE flag.
    skipping: Option<(u64, bool)>,
}

impl FrameReader {
    pub(crate) fn new(limits: Limits) -> FrameReader {
        FrameReader { limits, buf: BytesMut::with_capacity(8 * 1024), partial: Message::default(), used: 0, skipping: None }
    }

    /// Fills the buffer until it holds `n` bytes; false at a clean end of stream before any byte.
    async fn fill<R: AsyncRead + Unpin>(&mut self, io: &mut R, n: usize) -> Result<bool> {
        while self.buf.len() < n {
            let before = self.buf.len();
            self.buf.reserve((n - before).max(8 * 1024));
            if io.read_buf(&mut self.buf).await? == 0 {
                if before == 0 {
                    return Ok(false);
                }
                return Err(Error::new(ErrorKind::Closed, "the peer closed the connection in the middle of a frame"));
            }
        }
        Ok(true)
    }

    /// Reads one frame. `keep`: whether a message frame's bytes are wanted (else they are
    /// skipped without being stored). `budget`: bytes still allowed for the current message.
    /// Nothing is consumed from the buffer until the frame is whole (or being skipped, with the
    /// skip's progress kept in `self`), so the future can be dropped at any await.
    async fn read_frame<R: AsyncRead + Unpin>(&mut self, io: &mut R, keep: bool, budget: usize) -> Result<Option<RawFrame>> {
        if self.skipping.is_none() {
            if !self.fill(io, 2).await? {
                return Ok(None);
            }
            let flags = self.buf[0];
            if flags & 0xf8 != 0 {
                return Err(protocol(format!("bad frame flags {flags:#04x}")));
            }
            let (header, len) = if flags & 0x02 != 0 {
                self.fill(io, 9).await?;
                let mut l = [0u8; 8];
                l.copy_from_slice(&self.buf[1..9]);
                (9, u64::from_be_bytes(l))
            } else {
                (2, u64::from(self.buf[1]))
            };
            let command = flags & 0x04 != 0;
            let more = flags & 0x01 != 0;
            let limit = if command { MAX_COMMAND_SIZE } else { budget };
            if len > limit as u64 {
                return Err(Error::new(
                    ErrorKind::PayloadTooLarge,
                    format!("a {} of {len} bytes is over the limit of {limit}", if command { "command" } else { "message" }),
                ));
            }
            if command || keep {
                let len = len as usize;
                self.fill(io, header + len).await?;
                let _ = self.buf.split_to(header);
                let data = self.buf.split_to(len).freeze();
                return Ok(Some(if command { RawFrame::Command(data) } else { RawFrame::Message { data: Some(data), more } }));
            }
            let _ = self.buf.split_to(header);
            self.skipping = Some((len, more));
        }
        // Skip the frame in pieces, never holding more than one read's worth.
        while let Some((left, more)) = self.skipping {
            if left == 0 {
                self.skipping = None;
                return Ok(Some(RawFrame::Message { data: None, more }));
            }
            if self.buf.is_empty() && !self.fill(io, 1).await? {
                return Err(Error::new(ErrorKind::Closed, "the peer closed the connection in the middle of a frame"));
            }
            let n = left.min(self.buf.len() as u64);
            let _ = self.buf.split_to(n as usize);
            self.skipping = Some((left - n, more));
        }
        Ok(None)
    }

    async fn read_frame_raw<R: AsyncRead + Unpin>(&mut self, io: &mut R) -> Result<RawFrame> {
        self.read_frame(io, true, self.limits.max_message_size)
            .await?
            .ok_or_else(|| Error::new(ErrorKind::Closed, "the peer closed the connection during the handshake"))
    }

    /// Reads the next message or command; `None` when the peer closed the connection cleanly
    /// between messages.
    pub(crate) async fn next<R: AsyncRead + Unpin>(&mut self, io: &mut R) -> Result<Option<Incoming>> {
        loop {
            let started = !self.partial.frames.is_empty() || self.partial.truncated;
            let budget = self.limits.max_message_size - self.used;
            let keep = self.partial.frames.len() < self.limits.max_frames;
            let frame = match self.read_frame(io, keep, budget).await? {
                Some(f) => f,
                None if !started => return Ok(None),
                None => return Err(Error::new(ErrorKind::Closed, "the peer closed the connection in the middle of a message")),
            };
            match frame {
                RawFrame::Command(c) => {
                    if started {
                        return Err(protocol("a command in the middle of a multipart message"));
                    }
                    let (name, body) = split_command(&c)?;
                    let body = c.slice_ref(body);
                    match name {
                        b"PING" => return Ok(Some(Incoming::Ping(body.slice(body.len().min(2)..)))),
                        b"SUBSCRIBE" => return Ok(Some(Incoming::Subscribe(body))),
                        b"CANCEL" => return Ok(Some(Incoming::Cancel(body))),
                        b"ERROR" => {
                            let reason = body.get(1..).map(String::from_utf8_lossy).unwrap_or_default();
                            return Err(protocol(format!("the peer sent ERROR: {reason}")));
                        }
                        // PONG and commands of later versions are ignored.
                        _ => continue,
                    }
                }
                RawFrame::Message { data, more } => {
                    match data {
                        Some(d) => {
                            self.used += d.len();
                            self.partial.frames.push(d);
                        }
                        None => self.partial.truncated = true,
                    }
                    if !more {
                        self.used = 0;
                        return Ok(Some(Incoming::Message(std::mem::take(&mut self.partial))));
                    }
                }
            }
        }
    }
}

/// Turns a one-frame message from a SUB peer into the 3.0 form of a subscription (first byte 1:
/// subscribe, 0: cancel); `None` for anything else (which PUB sockets ignore).
pub(crate) fn subscription_of(msg: &Message) -> Option<Incoming> {
    let [f] = msg.frames.as_slice() else { return None };
    match f.first() {
        Some(1) => Some(Incoming::Subscribe(f.slice(1..))),
        Some(0) => Some(Incoming::Cancel(f.slice(1..))),
        _ => None,
    }
}

/// The fuzzing entry point (see `crate::transport::fuzzing::zmtp`): a ZMTP handshake as the
/// socket type `ours` selects, then messages until the end of `bytes` (read `chunk` bytes at a
/// time) or the first error. Panics when the code breaks a promise: a peer accepted that `ours`
/// may not talk to, a message over `max_message` bytes or with more than `max_frames` frames
/// kept. Returns how many messages and commands it read.
pub(crate) fn fuzz_stream(ours: u8, max_message: usize, max_frames: usize, bytes: &[u8], chunk: usize) -> usize {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// The peer's side of a connection: its bytes, `chunk` at a time; what we write is dropped.
    struct Feed<'a> {
        data: &'a [u8],
        chunk: usize,
    }
    impl AsyncRead for Feed<'_> {
        fn poll_read(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut tokio::io::ReadBuf<'_>) -> Poll<std::io::Result<()>> {
            let n = self.data.len().min(self.chunk).min(buf.remaining());
            let (now, rest) = self.data.split_at(n);
            buf.put_slice(now);
            self.data = rest;
            Poll::Ready(Ok(()))
        }
    }
    impl AsyncWrite for Feed<'_> {
        fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    thread_local! {
        static RT: tokio::runtime::Runtime =
            tokio::runtime::Builder::new_current_thread().enable_time().build().expect("a current-thread runtime");
    }
    const TYPES: [SocketType; 4] = [SocketType::Router, SocketType::Dealer, SocketType::Pub, SocketType::Sub];
    let ours = TYPES[usize::from(ours) % TYPES.len()];
    let limits = Limits { max_message_size: max_message, max_frames: max_frames.max(1) };
    RT.with(|rt| {
        rt.block_on(async {
            let mut io = Feed { data: bytes, chunk: chunk.max(1) };
            let mut reader = FrameReader::new(limits);
            let Ok(peer) = handshake(&mut io, ours, Duration::from_secs(5), &mut reader).await else { return 0 };
            assert!(ours.accepts(peer.socket_type), "a {} accepted a {}", ours.name(), peer.socket_type.name());
            let mut n = 0;
            while let Ok(Some(incoming)) = reader.next(&mut io).await {
                n += 1;
                match incoming {
                    Incoming::Message(m) => {
                        assert!(m.frames.len() <= limits.max_frames, "{} frames kept", m.frames.len());
                        let size: usize = m.frames.iter().map(Bytes::len).sum();
                        assert!(size <= limits.max_message_size, "a message of {size} bytes kept");
                    }
                    Incoming::Ping(c) | Incoming::Subscribe(c) | Incoming::Cancel(c) => {
                        assert!(c.len() <= MAX_COMMAND_SIZE, "a command of {} bytes", c.len());
                    }
                }
            }
            n
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fuzz_entry_reads_its_seeds() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/zmtp");
        let read = |name: &str| {
            let data = std::fs::read(dir.join(name)).expect("a committed seed");
            let (sel, bytes) = data.split_first().expect("a selector byte");
            fuzz_stream(sel & 3, 4096, 4, bytes, 1 + usize::from(sel >> 2) * 4)
        };
        // A request and a PING after the handshake; a SUBSCRIBE, a 3.0 subscription, a CANCEL.
        assert_eq!(read("dealer_request"), 2);
        assert_eq!(read("sub_subscribe"), 3);
        // Six frames, four kept, one over 255 bytes: one message.
        assert_eq!(read("dealer_big_and_many_frames"), 1);
        // A PUB peer is refused by a ROUTER; a 2^62-byte frame header is refused before reading.
        assert_eq!(read("wrong_type"), 0);
        assert_eq!(read("huge_length"), 0);
    }

    async fn pair(a: SocketType, b: SocketType) -> (Result<Peer>, Result<Peer>) {
        let (mut x, mut y) = tokio::io::duplex(4096);
        let limits = Limits { max_message_size: 1024, max_frames: 4 };
        let (mut rx, mut ry) = (FrameReader::new(limits), FrameReader::new(limits));
        tokio::join!(handshake(&mut x, a, Duration::from_secs(5), &mut rx), handshake(&mut y, b, Duration::from_secs(5), &mut ry))
    }

    #[tokio::test]
    async fn handshake_checks_socket_types() {
        let (a, b) = pair(SocketType::Dealer, SocketType::Router).await;
        assert_eq!(a.expect("dealer").socket_type, SocketType::Router);
        assert_eq!(b.expect("router").socket_type, SocketType::Dealer);
        let (a, b) = pair(SocketType::Pub, SocketType::Dealer).await;
        assert_eq!(a.expect_err("pub refuses").kind(), ErrorKind::Protocol);
        assert!(b.is_err());
    }

    #[tokio::test]
    async fn messages_round_trip_and_limits_hold() {
        let limits = Limits { max_message_size: 1000, max_frames: 3 };
        let mut wire = Vec::new();
        encode_message(&mut wire, &[b"rid".as_slice(), b"key", &[b'x'; 300]]);
        encode_message(&mut wire, &[b"a".as_slice(), b"b", b"c", b"d", b"e"]);
        encode_command(&mut wire, "PING", b"\x00\x0actx");
        encode_message(&mut wire, &[[1u8, b't'].as_slice()]);
        encode_command(&mut wire, "CANCEL", b"t");
        put_header(&mut wire, 0x02, 1 << 40);
        let mut r = FrameReader::new(limits);
        let mut io = wire.as_slice();
        let Some(Incoming::Message(m)) = r.next(&mut io).await.expect("one") else { panic!("a message") };
        assert_eq!((m.frames.len(), m.frames[2].len(), m.truncated), (3, 300, false));
        let Some(Incoming::Message(m)) = r.next(&mut io).await.expect("two") else { panic!("a message") };
        assert_eq!((m.frames.len(), m.truncated), (3, true));
        let Some(Incoming::Ping(ctx)) = r.next(&mut io).await.expect("ping") else { panic!("a ping") };
        assert_eq!(&ctx[..], b"ctx");
        let Some(Incoming::Message(m)) = r.next(&mut io).await.expect("sub") else { panic!("a message") };
        assert!(matches!(subscription_of(&m), Some(Incoming::Subscribe(p)) if &p[..] == b"t"));
        assert!(matches!(r.next(&mut io).await.expect("cancel"), Some(Incoming::Cancel(p)) if &p[..] == b"t"));
        // A frame announcing a terabyte fails before anything is allocated for it.
        assert_eq!(r.next(&mut io).await.expect_err("too large").kind(), ErrorKind::PayloadTooLarge);
    }

    #[tokio::test]
    async fn a_message_cut_short_is_an_error_and_a_clean_end_is_none() {
        let mut wire = Vec::new();
        encode_message(&mut wire, &[b"rid".as_slice(), b"key"]);
        let limits = Limits { max_message_size: 1000, max_frames: 8 };
        let mut io = &wire[..wire.len() - 1];
        assert_eq!(FrameReader::new(limits).next(&mut io).await.expect_err("cut").kind(), ErrorKind::Closed);
        let mut io = &wire[..];
        let mut r = FrameReader::new(limits);
        assert!(r.next(&mut io).await.expect("one").is_some());
        assert!(r.next(&mut io).await.expect("end").is_none());
        // Bad flags.
        let mut io: &[u8] = &[0x40, 0];
        assert_eq!(FrameReader::new(limits).next(&mut io).await.expect_err("flags").kind(), ErrorKind::Protocol);
    }
}
