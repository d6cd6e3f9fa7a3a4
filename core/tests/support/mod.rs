//! Helpers of the core's tests: WebSocket by hand (the opening handshake and raw frames, so that
//! tests can send what no conforming peer sends and read exactly what our side wrote), and a
//! bounded wait for a condition.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long any read of these helpers waits.
pub const WAIT: Duration = Duration::from_secs(30);

/// Polls `f` every 5 ms until it is true; panics with `what` after [`WAIT`].
pub async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A client's opening handshake with the RFC 6455 sample key.
pub const UPGRADE: &[u8] = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

/// The accept key a server answers [`UPGRADE`] with.
pub const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// Reads an HTTP head, up to and including its blank line.
pub async fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tokio::time::timeout(WAIT, s.read_exact(&mut b)).await.expect("head in time").expect("head");
        head.push(b[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// A client socket to `addr` that did the opening handshake (101 with the right accept key).
pub async fn handshake(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(UPGRADE).await.expect("write");
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.contains(ACCEPT), "{head}");
    s
}

/// One frame as bytes: `mask` for a client's frames (`None` for a server's).
pub fn raw_frame(fin: bool, op: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = vec![if fin { 0x80 } else { 0 } | op];
    let m = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(m | n as u8),
        n if n <= 0xFFFF => {
            out.push(m | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(m | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(k) => {
            out.extend_from_slice(&k);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// A frame as read, unmasked.
#[derive(Debug)]
pub struct Frame {
    pub fin: bool,
    pub op: u8,
    pub payload: Vec<u8>,
    pub masked: bool,
}

/// Reads one frame (masked or not); `None` at the end of the stream. Panics after [`WAIT`].
pub async fn read_frame(s: &mut TcpStream) -> Option<Frame> {
    let fut = async {
        let mut h = [0u8; 2];
        s.read_exact(&mut h).await.ok()?;
        let mut len = u64::from(h[1] & 0x7F);
        if len == 126 {
            let mut b = [0u8; 2];
            s.read_exact(&mut b).await.ok()?;
            len = u64::from(u16::from_be_bytes(b));
        } else if len == 127 {
            let mut b = [0u8; 8];
            s.read_exact(&mut b).await.ok()?;
            len = u64::from_be_bytes(b);
        }
        let masked = h[1] & 0x80 != 0;
        let mut key = [0u8; 4];
        if masked {
            s.read_exact(&mut key).await.ok()?;
        }
        let mut payload = vec![0u8; usize::try_from(len).ok()?];
        s.read_exact(&mut payload).await.ok()?;
        if masked {
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= key[i % 4];
            }
        }
        Some(Frame { fin: h[0] & 0x80 != 0, op: h[0] & 0x0F, payload, masked })
    };
    tokio::time::timeout(WAIT, fut).await.expect("a frame or the end in time")
}
