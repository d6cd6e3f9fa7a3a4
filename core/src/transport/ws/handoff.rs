//! WebSocket sockets handed to an event loop other than tokio's.
//!
//! A face whose callers live on one event loop of their own (Node's libuv loop) pays for every
//! hand-off between that loop's thread and the runtime's threads: each request and each reply
//! would wake a sleeping thread. For plain (non-TLS) sockets it can instead take the socket
//! itself once the opening handshake is done, and read and write it on its own loop: the
//! connection, TLS and the handshake stay here; the face gets a non-blocking
//! [`std::net::TcpStream`] and the bytes already read past the handshake, and speaks RFC 6455
//! frames over it with [`Decoder`] and the `encode_*` functions (the same framing the RPC server
//! and client use).
//!
//! * Client side: [`dial_plain`] connects and upgrades `ws://dest/ws`.
//! * Server side: [`WsServerConfig::hand_off`](super::WsServerConfig::hand_off) makes a
//!   [`WsServer`](super::WsServer) give each plain socket it upgraded to a hook instead of
//!   serving it. Such sockets are the hook's from then on: they are not counted in the server's
//!   connection limits, not closed by [`WsServer::close`](super::WsServer::close), and their
//!   requests never reach the server's handler.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::frame::{self, FrameError, FrameReader, Msg, Side};
use super::stream::{NetStream, dial_raw};
use crate::error::{Error, ErrorKind, Result};

/// A plain socket after its opening handshake.
#[derive(Debug)]
pub struct HandedOff {
    /// The socket, in non-blocking mode, Nagle off.
    pub stream: std::net::TcpStream,
    /// Bytes the peer sent after its handshake (the start of its first frames).
    pub leftover: Vec<u8>,
    /// The peer's address.
    pub remote: SocketAddr,
}

/// What a server calls with each plain socket it upgraded (on a runtime thread).
pub type HandOff = Arc<dyn Fn(HandedOff) + Send + Sync>;

/// Dials `ws://dest/ws` (TCP, then the WebSocket upgrade) within `timeout` and hands the socket
/// over. Errors as [`WsClient`](super::WsClient) reports them: [`ErrorKind::Connect`],
/// [`ErrorKind::ClientRefused`] (`HTTP 401`), [`ErrorKind::Timeout`], [`ErrorKind::InvalidArgument`]
/// for a destination that is not `host:port`.
pub async fn dial_plain(dest: &str, timeout: Duration) -> Result<HandedOff> {
    let (io, leftover) = dial_raw(dest, None, timeout).await?;
    match io {
        NetStream::Plain(tcp) => {
            let remote = tcp.peer_addr()?;
            let stream = tcp.into_std().map_err(|e| Error::new(ErrorKind::Io, format!("socket of {dest}: {e}")))?;
            Ok(HandedOff { stream, leftover, remote })
        }
        _ => Err(Error::new(ErrorKind::Internal, "a plain dial gave a TLS socket")),
    }
}

/// One thing read from a socket: a whole data message or a control frame. Slices borrow the
/// decoder until the next call.
#[derive(Debug, PartialEq, Eq)]
pub enum Message<'a> {
    /// A text message (checked to be UTF-8).
    Text(&'a str),
    /// A binary message.
    Binary(&'a [u8]),
    /// A ping: answer with [`encode_pong`] carrying the same bytes.
    Ping(&'a [u8]),
    /// A close frame and its status code, if any: answer with [`encode_close`] and close.
    Close(Option<u16>),
}

/// Why a socket's input cannot be read any further; [`DecodeError::close_code`] is the close
/// code to send before closing.
#[derive(Debug, PartialEq, Eq)]
pub struct DecodeError(FrameError);

impl DecodeError {
    /// The close code to send (1002 protocol error, 1007 bad UTF-8, 1009 too large).
    pub fn close_code(&self) -> u16 {
        self.0.close_code()
    }
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for DecodeError {}

/// Reads RFC 6455 frames from a socket's bytes: [`Decoder::read_from`] until it would block,
/// then [`Decoder::next_message`] until it gives `None`.
#[derive(Debug)]
pub struct Decoder {
    inner: FrameReader,
}

impl Decoder {
    /// A decoder for a client's socket (`client`: frames from the server, unmasked) or a
    /// server's; messages over `max_message` bytes are an error. `leftover`: bytes read past the
    /// handshake.
    pub fn new(client: bool, max_message: usize, leftover: Vec<u8>) -> Decoder {
        let side = if client { Side::Client } else { Side::Server };
        Decoder { inner: FrameReader::new(side, max_message, leftover) }
    }

    /// One `read` from `r` into the buffer; `Ok(0)` is the end of the stream, `WouldBlock` as
    /// `r` gives it.
    pub fn read_from<R: io::Read>(&mut self, r: &mut R) -> io::Result<usize> {
        self.inner.fill_from(r)
    }

    /// The next whole message or control frame, `Ok(None)` when more bytes are needed. Pongs are
    /// skipped. After an error the decoder must not be used again.
    pub fn next_message(&mut self) -> std::result::Result<Option<Message<'_>>, DecodeError> {
        match self.inner.next_message() {
            Ok(None) => Ok(None),
            // Text was checked to be UTF-8 by the reader.
            Ok(Some(Msg::Text(t))) => {
                std::str::from_utf8(t).map(|s| Some(Message::Text(s))).map_err(|_| DecodeError(FrameError::InvalidUtf8))
            }
            Ok(Some(Msg::Binary(b))) => Ok(Some(Message::Binary(b))),
            Ok(Some(Msg::Ping(b))) => Ok(Some(Message::Ping(b))),
            Ok(Some(Msg::Close(c))) => Ok(Some(Message::Close(c))),
            Err(e) => Err(DecodeError(e)),
        }
    }
}

/// How [`Decoder::pump`] left a socket.
#[derive(Debug, PartialEq, Eq)]
pub enum Pumped {
    /// Nothing more to read for now (the socket would block, or the read budget is spent):
    /// watch it again.
    Open,
    /// The stream ended (`None`) or a read failed (`Some`, the error's text).
    Ended(Option<String>),
    /// The peer sent a close frame (its code, if any); the answering close frame is in `out`.
    PeerClosed(Option<u16>),
    /// The input broke the protocol; a close frame with the code that says why is in `out`.
    Violation(DecodeError),
}

/// A read shorter than this left the socket empty: the decoder reads into at least 4 KiB.
const SHORT_READ: usize = 4096;

impl Decoder {
    /// Reads a non-blocking `stream` until it would block or about `budget` bytes came (other
    /// sockets then get read), and decodes what came, in order: each data message goes to
    /// `on_data` ([`Message::Text`] or [`Message::Binary`]), a ping is answered with a pong
    /// appended to `out`, and a close frame or a protocol violation is answered with a close frame
    /// appended to `out` and ends the pump (nothing after it is read). `client`: the side this
    /// decoder reads for, which masks the frames written. A read shorter than the decoder's room
    /// is taken to have emptied the socket, so a level-triggered poller is not asked for the read
    /// that would only say `WouldBlock`.
    pub fn pump<R: io::Read>(
        &mut self,
        stream: &mut R,
        budget: usize,
        client: bool,
        out: &mut Vec<u8>,
        mut on_data: impl FnMut(Message<'_>),
    ) -> Pumped {
        let mut budget = budget;
        loop {
            let (n, end) = match self.read_from(stream) {
                Ok(0) => (0, Some(Pumped::Ended(None))),
                Ok(n) => (n, None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => (0, None),
                Err(e) => (0, Some(Pumped::Ended(Some(e.to_string())))),
            };
            // What came before the end of the stream is still decoded and delivered.
            loop {
                match self.next_message() {
                    Ok(None) => break,
                    Ok(Some(Message::Ping(p))) => encode_pong(out, p, client),
                    Ok(Some(Message::Close(code))) => {
                        encode_close(out, code.unwrap_or(1000), "", client);
                        return Pumped::PeerClosed(code);
                    }
                    Ok(Some(data)) => on_data(data),
                    Err(e) => {
                        encode_close(out, e.close_code(), &e.to_string(), client);
                        return Pumped::Violation(e);
                    }
                }
            }
            if let Some(end) = end {
                return end;
            }
            if n < SHORT_READ {
                return Pumped::Open;
            }
            budget = budget.saturating_sub(n);
            if budget == 0 {
                return Pumped::Open;
            }
        }
    }
}

/// How [`write_queued`] left a socket.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Written {
    /// Everything queued went out.
    All,
    /// Bytes still wait: the socket would block (watch it for writability).
    Blocked,
    /// The socket failed, or took nothing: close it (what was not written is still queued).
    Failed,
}

/// What [`write_report`] did: the bytes that went out, and why the socket failed. Bytes still
/// queued without an error mean the socket would block.
#[derive(Debug)]
pub struct WriteReport {
    /// Bytes that went out (removed from the buffer).
    pub bytes: usize,
    /// Why the socket failed, or took nothing ([`Written::Failed`]).
    pub error: Option<String>,
}

/// Writes the bytes queued in `out` to a non-blocking socket until they are all out or it would
/// block, and removes what went out (an emptied buffer over 64 KiB is released).
pub fn write_queued<W: io::Write>(w: &mut W, out: &mut Vec<u8>) -> Written {
    match write_report(w, out) {
        WriteReport { error: Some(_), .. } => Written::Failed,
        _ if out.is_empty() => Written::All,
        _ => Written::Blocked,
    }
}

/// [`write_queued`], with the bytes that went out and the reason of a failure (a face that
/// tracks a stalled peer or reports the error to its caller).
pub fn write_report<W: io::Write>(w: &mut W, out: &mut Vec<u8>) -> WriteReport {
    let mut bytes = 0;
    let mut error = None;
    while bytes < out.len() {
        match w.write(&out[bytes..]) {
            Ok(0) => {
                error = Some("the socket accepts no more bytes".to_string());
                break;
            }
            Ok(n) => bytes += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => {
                error = Some(e.to_string());
                break;
            }
        }
    }
    out.drain(..bytes);
    if out.is_empty() && out.capacity() > 1 << 16 {
        *out = Vec::new();
    }
    WriteReport { bytes, error }
}

fn mask(client: bool) -> Option<[u8; 4]> {
    client.then(frame::mask_key)
}

/// Appends a text frame carrying `text` to `out` (masked when `client`).
pub fn encode_text(out: &mut Vec<u8>, text: &str, client: bool) {
    frame::encode_frame(out, frame::OP_TEXT, text.as_bytes(), mask(client));
}

/// Appends a text frame carrying the request envelope `[rid, key, payload]`
/// ([`envelope::encode_request`](crate::rpc::envelope::encode_request); `payload_json` is
/// already JSON text), masked when `client`. The envelope is UTF-8 by construction: it is framed
/// as it is, not checked again.
pub fn encode_request(out: &mut Vec<u8>, rid: &str, key: &str, payload_json: &str, client: bool) {
    let body = crate::rpc::envelope::encode_request(rid, key, payload_json);
    frame::encode_frame(out, frame::OP_TEXT, &body, mask(client));
}

/// Appends a text frame carrying the reply envelope `[rid, error, result]` to `body`
/// ([`envelope::encode_reply`](crate::rpc::envelope::encode_reply)), masked when `client`.
pub fn encode_reply(out: &mut Vec<u8>, rid: &serde_json::Value, body: &crate::rpc::WireReply, client: bool) {
    let env = crate::rpc::envelope::encode_reply(rid, body);
    frame::encode_frame(out, frame::OP_TEXT, &env, mask(client));
}

/// Closes a socket handed over: writes `queued` (a last reply, a close frame) waiting at most
/// `linger` for a peer that reads slowly, then shuts it down both ways.
pub fn close_after(mut stream: std::net::TcpStream, queued: &[u8], linger: Duration) {
    if !queued.is_empty() {
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_write_timeout(Some(linger));
        let _ = io::Write::write_all(&mut stream, queued);
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

/// The close code of a server that drained before closing (ours; RFC 6455 leaves 4000-4999 to
/// applications): every request it read was answered, so one still waiting was never handled.
pub const CLOSE_DRAINED: u16 = frame::CLOSE_DRAINED;

/// Takes a socket handed over out to close it (with [`close_after`]): queues a close frame
/// with `code` after what is queued, unless one was sent ([`CLOSE_DRAINED`] carries the core's
/// reason), and returns the socket with those bytes; `None` when it was taken already.
pub fn take_to_close<S>(stream: &mut Option<S>, out: &mut Vec<u8>, close_sent: &mut bool, code: Option<u16>) -> Option<(S, Vec<u8>)> {
    if let Some(code) = code
        && !*close_sent
        && stream.is_some()
    {
        let reason = if code == CLOSE_DRAINED { frame::DRAINED_REASON } else { "" };
        encode_close(out, code, reason, false);
        *close_sent = true;
    }
    let out = std::mem::take(out);
    stream.take().map(|s| (s, out))
}

/// Appends a pong answering a ping's `payload`.
pub fn encode_pong(out: &mut Vec<u8>, payload: &[u8], client: bool) {
    frame::encode_frame(out, frame::OP_PONG, payload, mask(client));
}

/// Appends a close frame with `code` and `reason` (cut to fit a control frame).
pub fn encode_close(out: &mut Vec<u8>, code: u16, reason: &str, client: bool) {
    frame::encode_close(out, code, reason, mask(client));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// A request framed by a client decodes on the server's side to its envelope, and a reply
    /// framed by the server on the client's, with a result or an error.
    #[test]
    fn envelopes_frame_both_ways() {
        let mut out = Vec::new();
        encode_request(&mut out, "r1", "svc", r#"{"a":[1,"é"]}"#, true);
        let mut server = Decoder::new(false, 1 << 20, out);
        let Ok(Some(Message::Text(t))) = server.next_message() else { panic!("a text frame") };
        let d = crate::rpc::envelope::decode_request(t.as_bytes()).expect("request");
        assert_eq!((d.rid, d.key.as_str(), d.payload.json()), (serde_json::json!("r1"), "svc", r#"{"a":[1,"é"]}"#));
        let mut out = Vec::new();
        let rid = serde_json::json!("r1");
        encode_reply(&mut out, &rid, &Ok(crate::rpc::ReplyResult::Value(serde_json::json!([1, 2]))), false);
        encode_reply(&mut out, &rid, &Err("ERR_BOOM".to_string()), false);
        let mut client = Decoder::new(true, 1 << 20, out);
        for want in [(None, serde_json::json!([1, 2])), (Some("ERR_BOOM".to_string()), serde_json::Value::Null)] {
            let Ok(Some(Message::Text(t))) = client.next_message() else { panic!("a text frame") };
            let r = crate::rpc::envelope::decode_reply(t.as_bytes()).expect("reply");
            assert_eq!((r.rid, r.error, r.result), (rid.clone(), want.0, want.1));
        }
    }

    /// A socket taken out to close gets one close frame after what was queued (a drained close
    /// with its reason), and is taken once.
    #[test]
    fn take_to_close_queues_one_close_frame() {
        let mut stream = Some(());
        let mut out = b"queued".to_vec();
        let mut sent = false;
        let (_, bytes) = take_to_close(&mut stream, &mut out, &mut sent, Some(CLOSE_DRAINED)).expect("the socket");
        assert!(sent && out.is_empty() && stream.is_none());
        assert_eq!(&bytes[..6], b"queued");
        let mut client = Decoder::new(true, 1 << 20, bytes[6..].to_vec());
        assert!(matches!(client.next_message(), Ok(Some(Message::Close(Some(CLOSE_DRAINED))))));
        assert!(take_to_close(&mut stream, &mut out, &mut sent, Some(1001)).is_none());
        let mut again = Some(());
        let (_, bytes) = take_to_close(&mut again, &mut Vec::new(), &mut sent, Some(1001)).expect("the socket");
        assert!(bytes.is_empty(), "a close frame was sent already");
    }

    /// `write_report` writes until the socket would block, counts what went out and keeps the
    /// rest queued; a failed or closed socket says why.
    #[test]
    fn write_report_counts_the_bytes_and_says_why_a_write_failed() {
        /// Takes at most `room` bytes, then would block (or fails with `fail`).
        struct Sink {
            room: usize,
            taken: Vec<u8>,
            fail: Option<io::ErrorKind>,
        }
        impl io::Write for Sink {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                if self.room == 0 {
                    return Err(self.fail.unwrap_or(io::ErrorKind::WouldBlock).into());
                }
                let n = buf.len().min(self.room).min(3);
                self.room -= n;
                self.taken.extend_from_slice(&buf[..n]);
                Ok(n)
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut sink = Sink { room: 7, taken: Vec::new(), fail: None };
        let mut out = b"0123456789".to_vec();
        let r = write_report(&mut sink, &mut out);
        assert_eq!((r.bytes, r.error, &out[..], &sink.taken[..]), (7, None, &b"789"[..], &b"0123456"[..]));
        sink.room = 1;
        assert_eq!(write_queued(&mut sink, &mut out), Written::Blocked);
        sink.room = 10;
        assert_eq!(write_queued(&mut sink, &mut out), Written::All);
        assert!(out.is_empty() && sink.taken == b"0123456789");
        let mut broken = Sink { room: 0, taken: Vec::new(), fail: Some(io::ErrorKind::BrokenPipe) };
        let mut out = b"x".to_vec();
        let r = write_report(&mut broken, &mut out);
        assert_eq!((r.bytes, out.len()), (0, 1), "what was not written stays queued");
        assert!(r.error.is_some_and(|e| e.contains("broken pipe")));
        assert_eq!(write_queued(&mut broken, &mut out), Written::Failed);
        let r = write_report(&mut &mut [0u8; 0][..], &mut b"y".to_vec());
        assert_eq!(r.error.as_deref(), Some("the socket accepts no more bytes"));
    }

    /// `pump` reads until the socket would block, delivers data messages in order, answers a ping
    /// with a pong and a close frame with a close frame, and says how the socket was left: open,
    /// closed by the peer (its code), broken (the violation's code), or ended.
    #[test]
    fn pump_delivers_answers_and_says_how_the_socket_was_left() {
        let pump_all = |input: &[u8], tail: Option<&[u8]>| {
            let (mut a, mut b) = std::os::unix::net::UnixStream::pair().expect("pair");
            a.write_all(input).expect("write");
            b.set_nonblocking(true).expect("nonblocking");
            if tail.is_none() {
                drop(a);
            }
            let mut dec = Decoder::new(false, 1024, Vec::new());
            let (mut out, mut got) = (Vec::new(), Vec::new());
            // A short read is taken to have emptied the socket: the end of the stream shows in
            // the next pump, as a poller would call it again.
            let mut end = Pumped::Open;
            for _ in 0..3 {
                end = dec.pump(&mut b, 1 << 20, false, &mut out, |m| got.push(format!("{m:?}")));
                if end != Pumped::Open {
                    break;
                }
            }
            (end, got, out)
        };
        let mut frames = Vec::new();
        encode_text(&mut frames, "[1]", true);
        frame::encode_frame(&mut frames, frame::OP_BINARY, b"[2]", Some([1, 2, 3, 4]));
        frame::encode_frame(&mut frames, frame::OP_PING, b"p", Some([1, 2, 3, 4]));
        // Open: everything delivered, the pong queued.
        let (end, got, out) = pump_all(&frames, Some(b""));
        assert_eq!(end, Pumped::Open);
        assert_eq!(got, vec!["Text(\"[1]\")".to_string(), "Binary([91, 50, 93])".to_string()]);
        let mut pong = Vec::new();
        encode_pong(&mut pong, b"p", false);
        assert_eq!(out, pong);
        // The stream ends after them: delivered, then Ended.
        let (end, got, _) = pump_all(&frames, None);
        assert_eq!((end, got.len()), (Pumped::Ended(None), 2));
        // A close frame: answered, nothing after it delivered.
        let mut closing = Vec::new();
        frame::encode_close(&mut closing, 1001, "", Some([1, 2, 3, 4]));
        encode_text(&mut closing, "[3]", true);
        let (end, got, out) = pump_all(&closing, Some(b""));
        assert_eq!(end, Pumped::PeerClosed(Some(1001)));
        assert!(got.is_empty());
        assert_eq!(out[0], 0x88);
        // An unmasked frame from a client: 1002.
        let mut bad = Vec::new();
        encode_text(&mut bad, "x", false);
        let (end, _, out) = pump_all(&bad, Some(b""));
        assert!(matches!(&end, Pumped::Violation(e) if e.close_code() == 1002), "{end:?}");
        assert_eq!(u16::from_be_bytes([out[2], out[3]]), 1002);
    }

    /// A client and a server socket handed over, talking frames through the sans-IO API; a
    /// protocol violation gives its close code.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dial_and_hand_off_speak_frames() {
        let (tx, rx) = std::sync::mpsc::channel();
        let hook: HandOff = Arc::new(move |h: HandedOff| tx.send(h).expect("send"));
        let handler = |_r: crate::rpc::Request, reply: crate::rpc::Reply| reply.ok(serde_json::Value::Null);
        let config = super::super::WsServerConfig::default().hand_off(hook);
        let server = super::super::WsServer::bind("127.0.0.1:0".parse().expect("addr"), handler, config).await.expect("bind");
        let client = dial_plain(&server.local_addr().to_string(), Duration::from_secs(5)).await.expect("dial");
        let served = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(5))).await.expect("join").expect("handed off");
        let (mut c, mut s) = (client.stream, served.stream);
        c.set_nonblocking(false).expect("blocking");
        s.set_nonblocking(false).expect("blocking");
        let mut out = Vec::new();
        encode_text(&mut out, "[\"rid\",\"k\",1]", true);
        c.write_all(&out).expect("write");
        let mut dec = Decoder::new(false, 1024, served.leftover);
        let got = loop {
            if let Some(m) = dec.next_message().expect("frame") {
                break format!("{m:?}");
            }
            assert!(dec.read_from(&mut s).expect("read") > 0);
        };
        assert_eq!(got, "Text(\"[\\\"rid\\\",\\\"k\\\",1]\")");
        out.clear();
        encode_text(&mut out, "reply", false);
        s.write_all(&out).expect("write");
        let mut dec = Decoder::new(true, 1024, client.leftover);
        while dec.next_message().expect("frame").is_none() {
            assert!(dec.read_from(&mut c).expect("read") > 0);
        }
        // An unmasked frame from a client is a protocol error (1002).
        out.clear();
        encode_text(&mut out, "x", false);
        c.write_all(&out).expect("write");
        let mut dec = Decoder::new(false, 1024, Vec::new());
        let err = loop {
            match dec.next_message() {
                Ok(Some(m)) => panic!("unexpected {m:?}"),
                Ok(None) => assert!(dec.read_from(&mut s).expect("read") > 0),
                Err(e) => break e,
            }
        };
        assert_eq!(err.close_code(), 1002);
        let mut rest = [0u8; 1];
        drop(c);
        assert_eq!(s.read(&mut rest).expect("eof"), 0);
        server.close().await;
    }
}
