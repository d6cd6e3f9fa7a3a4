//! A lean HTTP/1.1 load generator, in the spirit of `wrk`: keep-alive connections driven from
//! one OS thread with a current-thread runtime, each request encoded once up front, one timer
//! per connection rather than per request. It shares the machine with the servers it measures,
//! so the less CPU it spends per request the closer a throughput figure gets to the server's own
//! capacity; it is used for both the Rust and the Node servers, so they are measured alike.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::Samples;

/// What a load run measured.
#[derive(Debug, Default)]
pub struct LoadResult {
    /// Replies that passed the check.
    pub ok: u64,
    /// Failed requests (bad status or body, broken connection).
    pub bad: u64,
    /// Wall time of the run in seconds.
    pub secs: f64,
    /// Latency of every successful request.
    pub samples: Samples,
}

impl LoadResult {
    /// Successful requests per second.
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.secs.max(1e-9)
    }
}

/// Encodes a `POST path` with a JSON body.
pub fn post(path: &str, body: &str) -> Vec<u8> {
    format!("POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len())
        .into_bytes()
}

/// Runs `requests.len()` keep-alive connections to `addr` for `run`, connection `i` sending
/// `requests[i]` again and again, one at a time. A reply counts as good when `ok(status, body)`.
/// Blocks the calling thread (the load runs on a thread of its own); every wait is bounded by
/// `duration` plus 30 s.
pub fn run(addr: SocketAddr, requests: Vec<Vec<u8>>, duration: Duration, ok: fn(u16, &[u8]) -> bool) -> LoadResult {
    std::thread::scope(|s| {
        s.spawn(|| {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(_) => return LoadResult::default(),
            };
            rt.block_on(drive(addr, requests, duration, ok))
        })
        .join()
        .unwrap_or_default()
    })
}

async fn drive(addr: SocketAddr, requests: Vec<Vec<u8>>, run: Duration, ok: fn(u16, &[u8]) -> bool) -> LoadResult {
    let stop = Arc::new(AtomicBool::new(false));
    let good = Arc::new(AtomicU64::new(0));
    let bad = Arc::new(AtomicU64::new(0));
    let limit = run + Duration::from_secs(30);
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(requests.len());
    for req in requests {
        let (stop, good, bad) = (stop.clone(), good.clone(), bad.clone());
        tasks.push(tokio::spawn(async move {
            let mut samples = Samples::with_capacity(1 << 14);
            let work = async {
                let mut conn: Option<TcpStream> = None;
                let mut buf = vec![0u8; 16 * 1024];
                while !stop.load(Ordering::Relaxed) {
                    let stream = match conn.as_mut() {
                        Some(s) => s,
                        None => match TcpStream::connect(addr).await {
                            Ok(s) => {
                                let _ = s.set_nodelay(true);
                                conn.insert(s)
                            }
                            Err(_) => {
                                bad.fetch_add(1, Ordering::Relaxed);
                                tokio::time::sleep(Duration::from_millis(10)).await;
                                continue;
                            }
                        },
                    };
                    let t0 = Instant::now();
                    match exchange(stream, &req, &mut buf).await {
                        Some((status, range)) if ok(status, &buf[range.clone()]) => {
                            good.fetch_add(1, Ordering::Relaxed);
                            samples.push(t0.elapsed());
                        }
                        Some(_) => {
                            bad.fetch_add(1, Ordering::Relaxed);
                        }
                        None => {
                            bad.fetch_add(1, Ordering::Relaxed);
                            conn = None;
                        }
                    }
                }
            };
            let _ = tokio::time::timeout(limit, work).await;
            samples
        }));
    }
    tokio::time::sleep(run).await;
    stop.store(true, Ordering::Relaxed);
    let mut samples = Samples::default();
    for t in tasks {
        if let Ok(s) = t.await {
            samples.extend(s);
        }
    }
    LoadResult { ok: good.load(Ordering::Relaxed), bad: bad.load(Ordering::Relaxed), secs: start.elapsed().as_secs_f64(), samples }
}

/// Writes one request and reads its whole reply into `buf`; returns the status and where the
/// body is in `buf`. `None` when the connection broke or the reply does not fit in `buf`.
async fn exchange(stream: &mut TcpStream, req: &[u8], buf: &mut [u8]) -> Option<(u16, std::ops::Range<usize>)> {
    stream.write_all(req).await.ok()?;
    let mut have = 0;
    loop {
        let n = stream.read(&mut buf[have..]).await.ok()?;
        if n == 0 {
            return None;
        }
        have += n;
        if let Some(end) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") {
            let head = &buf[..end];
            let status = parse_status(head)?;
            let len = content_length(head).unwrap_or(0);
            let body = end + 4..end + 4 + len;
            if body.end > buf.len() {
                return None;
            }
            while have < body.end {
                let n = stream.read(&mut buf[have..]).await.ok()?;
                if n == 0 {
                    return None;
                }
                have += n;
            }
            return Some((status, body));
        }
        if have == buf.len() {
            return None;
        }
    }
}

fn parse_status(head: &[u8]) -> Option<u16> {
    // "HTTP/1.1 200 OK"
    let code = head.get(9..12)?;
    std::str::from_utf8(code).ok()?.parse().ok()
}

/// The `Content-Length` of a response or request head, if it has one.
pub fn content_length(head: &[u8]) -> Option<usize> {
    for line in head.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.len() > 15 && line[..15].eq_ignore_ascii_case(b"content-length:") {
            return std::str::from_utf8(&line[15..]).ok()?.trim().parse().ok();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_parsing() {
        let head = b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 22\r\nconnection: close";
        assert_eq!(parse_status(head), Some(413));
        assert_eq!(content_length(head), Some(22));
        assert_eq!(content_length(b"HTTP/1.1 200 OK\r\ncontent-length:7"), Some(7));
        assert_eq!(content_length(b"HTTP/1.1 200 OK\r\nX: y"), None);
    }
}
