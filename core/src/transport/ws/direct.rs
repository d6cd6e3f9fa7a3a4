//! WebSocket requests sent and answered on the caller's own thread.
//!
//! A blocking caller (a Python thread in `client.request(...)`) that hands its request to the
//! runtime and waits for the reply pays two thread wake-ups per round trip: the runtime's thread
//! to send, the caller's to take the reply. Between two processes on a small machine those
//! wake-ups cost as much as the round trip itself. Here the caller's thread writes the request's
//! frame to a plain socket itself and sleeps in the socket's `read` until the reply is there: one
//! wake-up, the one the kernel gives when the reply arrives.
//!
//! [`DirectPool`] keeps such sockets per destination, idle between calls; a call takes one for
//! itself ([`DirectPool::take`]) and gives it back once its reply came ([`DirectConn::finish`]). A
//! socket is dialled on the runtime ([`handoff::dial_plain`], the same connect and upgrade as
//! the [`WsClient`](super::WsClient)'s) in the background when a call found none idle
//! ([`DirectPool::want`]), so the call itself never waits for a connect: that call takes the
//! runtime's path, and the next ones find the socket.
//!
//! Behaviour kept from the [`WsClient`](super::WsClient): the same frames (masked text, pings
//! answered), the same envelope and reply decoding, the same errors (`no reply within ...`,
//! [`ErrorKind::Timeout`]; `ERR_TRANSPORT_CLOSE: ...`, [`ErrorKind::Closed`]; a malformed reply
//! fails the call with a decode error). A socket whose call did not end cleanly (a timeout, an
//! interrupted wait, an error) is closed, never reused: a late reply never reaches a later call.

use std::collections::HashMap;
use std::io::{self, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::value::RawValue;

use super::handoff::{self, Decoder, Message};
use crate::error::{Error, ErrorKind, Result};
use crate::rpc::ReplyResult;
use crate::rpc::envelope::{self, ResultForm};

/// Idle sockets kept per destination; more are closed when given back.
const MAX_IDLE_PER_DEST: usize = 16;
/// Destinations with sockets; a new one past this many is not dialled (its calls take the
/// runtime's path).
const MAX_DESTS: usize = 1024;
/// How long a background dial may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// An idle socket unused for this long is closed (at the next sweep, every [`SWEEP_EVERY`]).
const IDLE_CLOSE: Duration = Duration::from_secs(60);
/// How often the sockets idle for [`IDLE_CLOSE`] are looked for (by a call taking a socket).
const SWEEP_EVERY: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Dest {
    idle: Vec<DirectConn>,
    /// Sockets open to this destination: idle, taken by a call, or being dialled.
    open: usize,
    dialing: bool,
}

/// The caller-thread sockets of one client (see the module docs).
pub struct DirectPool {
    dests: Mutex<HashMap<Arc<str>, Dest>>,
    closed: AtomicBool,
    sent: AtomicU64,
    /// Milliseconds from `born` to the last sweep of idle sockets.
    swept_ms: AtomicU64,
    born: Instant,
    /// [`IDLE_CLOSE`] and [`SWEEP_EVERY`] (shorter in tests).
    idle_close: Duration,
    sweep_every: Duration,
    max_message: usize,
    handle: tokio::runtime::Handle,
}

impl std::fmt::Debug for DirectPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectPool").field("closed", &self.closed.load(Ordering::Relaxed)).finish_non_exhaustive()
    }
}

/// One socket of a [`DirectPool`], owned by one call at a time.
pub struct DirectConn {
    stream: TcpStream,
    decoder: Decoder,
    dest: Arc<str>,
    out: Vec<u8>,
    /// The read timeout the socket has now (set only when it changes).
    read_timeout: Option<Duration>,
    /// The rid of the call the socket carries, while it waits.
    rid: Option<String>,
    /// When it was last given back (or dialled).
    idle_since: Instant,
    pool: Arc<DirectPool>,
}

impl std::fmt::Debug for DirectConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectConn").field("dest", &self.dest).field("rid", &self.rid).finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn closed(why: &str) -> Error {
    Error::new(ErrorKind::Closed, format!("ERR_TRANSPORT_CLOSE: {why}"))
}

impl DirectPool {
    /// A pool whose sockets are dialled on `handle`'s runtime; replies over `max_message` bytes
    /// close their socket.
    pub fn new(handle: tokio::runtime::Handle, max_message: usize) -> Arc<DirectPool> {
        Self::with_idle_close(handle, max_message, IDLE_CLOSE, SWEEP_EVERY)
    }

    fn with_idle_close(handle: tokio::runtime::Handle, max_message: usize, idle_close: Duration, sweep_every: Duration) -> Arc<DirectPool> {
        Arc::new(DirectPool {
            dests: Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
            sent: AtomicU64::new(0),
            swept_ms: AtomicU64::new(0),
            born: Instant::now(),
            idle_close,
            sweep_every,
            max_message,
            handle,
        })
    }

    /// Sockets open to `dest` (idle or in a call), as the client counts active connections.
    pub fn open(&self, dest: &str) -> usize {
        lock(&self.dests).get(dest).map_or(0, |d| d.open)
    }

    /// An idle socket to `dest` that is still open (what the peer sent meanwhile is handled:
    /// pings answered; a socket the peer closed is dropped), or `None`.
    pub fn take(self: &Arc<Self>, dest: &str) -> Option<DirectConn> {
        if self.closed.load(Ordering::Acquire) {
            return None;
        }
        self.sweep();
        loop {
            let mut conn = {
                let mut m = lock(&self.dests);
                let d = m.get_mut(dest)?;
                d.idle.pop()?
            };
            if conn.healthy() {
                return Some(conn);
            }
            // Dropping it closes it and forgets it.
            drop(conn);
        }
    }

    /// Closes the sockets idle for [`IDLE_CLOSE`], every [`SWEEP_EVERY`] at most (a peer that
    /// closed one meanwhile left it half-closed here).
    fn sweep(&self) {
        let now = self.born.elapsed().as_millis() as u64;
        let last = self.swept_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) < self.sweep_every.as_millis() as u64
            || self.swept_ms.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_err()
        {
            return;
        }
        let stale: Vec<DirectConn> = {
            let mut m = lock(&self.dests);
            let mut stale = Vec::new();
            for d in m.values_mut() {
                // Given back in order: the oldest first.
                let keep = d.idle.iter().position(|c| c.idle_since.elapsed() < self.idle_close).unwrap_or(d.idle.len());
                stale.extend(d.idle.drain(..keep));
            }
            stale
        };
        // Dropped without the lock (each forgets itself from its destination).
        drop(stale);
    }

    /// Dials a socket to `dest` in the background, unless one is being dialled or the pool is
    /// full; a call that found no idle socket asks for one this way.
    pub fn want(self: &Arc<Self>, dest: &str) {
        if self.closed.load(Ordering::Acquire) {
            return;
        }
        {
            let mut m = lock(&self.dests);
            if !m.contains_key(dest) && m.len() >= MAX_DESTS {
                return;
            }
            let d = m.entry(Arc::from(dest)).or_default();
            if d.dialing || d.open >= MAX_IDLE_PER_DEST {
                return;
            }
            d.dialing = true;
            d.open += 1;
        }
        let pool = Arc::clone(self);
        let dest: Arc<str> = Arc::from(dest);
        self.handle.spawn(async move {
            let dialled = handoff::dial_plain(&dest, DIAL_TIMEOUT).await;
            let mut m = lock(&pool.dests);
            let Some(d) = m.get_mut(&dest) else { return };
            d.dialing = false;
            let conn = match dialled {
                Ok(h) if !pool.closed.load(Ordering::Acquire) && h.stream.set_nonblocking(false).is_ok() => DirectConn {
                    stream: h.stream,
                    decoder: Decoder::new(true, pool.max_message, h.leftover),
                    dest: dest.clone(),
                    out: Vec::new(),
                    read_timeout: None,
                    rid: None,
                    idle_since: Instant::now(),
                    pool: Arc::clone(&pool),
                },
                other => {
                    if let Err(e) = other {
                        tracing::debug!(dest = %dest, error = %e, "a caller-thread socket could not be dialled");
                    }
                    d.open -= 1;
                    if d.open == 0 && d.idle.is_empty() {
                        m.remove(&dest);
                    }
                    return;
                }
            };
            d.idle.push(conn);
        });
    }

    /// Closes the idle sockets; sockets in a call are closed when their call ends, and nothing
    /// more is dialled or given back.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let idle: Vec<DirectConn> = lock(&self.dests).values_mut().flat_map(|d| d.idle.drain(..)).collect();
        drop(idle);
    }

    /// Requests sent on sockets of this pool so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Whether [`DirectPool::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

impl DirectConn {
    /// The destination.
    pub fn dest(&self) -> &str {
        &self.dest
    }

    /// Handles what an idle socket received (pings, a close) without blocking; false when the
    /// socket can no longer carry a call.
    fn healthy(&mut self) -> bool {
        if !self.drain_control() {
            return false;
        }
        // Whether anything came (a ping, a close, the end of the stream), without blocking.
        let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); 1];
        match socket2::SockRef::from(&self.stream).recv_with_flags(&mut probe, libc::MSG_PEEK | libc::MSG_DONTWAIT) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Ok(0) | Err(_) => return false,
            Ok(_) => {}
        }
        // Readable: this read does not block.
        match self.decoder.read_from(&mut self.stream) {
            Ok(0) | Err(_) => false,
            Ok(_) => self.drain_control(),
        }
    }

    /// Handles the whole messages already read while no call waits: pings are answered, data
    /// (a late reply cannot come: a socket is closed when its call ends without one) dropped;
    /// false on a close frame or a protocol error.
    fn drain_control(&mut self) -> bool {
        loop {
            match self.decoder.next_message() {
                Ok(None) => return self.write_out(Instant::now() + DIAL_TIMEOUT).is_ok(),
                Ok(Some(Message::Ping(p))) => handoff::encode_pong(&mut self.out, p, true),
                Ok(Some(Message::Close(_))) | Err(_) => return false,
                Ok(Some(_)) => {}
            }
        }
    }

    /// Writes `out` within `deadline`.
    fn write_out(&mut self, deadline: Instant) -> Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
        // Small frames go into an idle socket's empty buffer at once: no timeout needed. A large
        // one may block while the peer reads it.
        if self.out.len() > 64 << 10 {
            self.stream.set_write_timeout(Some(left))?;
        }
        let r = self.stream.write_all(&self.out);
        self.out.clear();
        match r {
            Ok(()) => Ok(()),
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                Err(Error::timeout("the request could not be written in time"))
            }
            Err(e) => Err(closed(&format!("the socket failed while sending: {e}"))),
        }
    }

    /// Sends the request `[rid, key, payload_json]` (the payload already checked to be JSON).
    pub fn send(&mut self, rid: &str, key: &str, payload_json: &str, deadline: Instant) -> Result<()> {
        handoff::encode_request(&mut self.out, rid, key, payload_json, true);
        self.rid = Some(rid.to_string());
        self.pool.sent.fetch_add(1, Ordering::Relaxed);
        self.write_out(deadline)
    }

    /// Waits for the reply until `deadline`, at most `slice` this time: `None` when the slice
    /// passed first (the caller may check for signals and wait again). The result is the JSON
    /// text exactly as the worker sent it; a remote error is an [`ErrorKind::Remote`] error; past
    /// `deadline` a timeout of `timeout` is reported as the [`WsClient`](super::WsClient) does.
    pub fn wait(&mut self, deadline: Instant, timeout: Duration, slice: Duration) -> Option<Result<Box<RawValue>>> {
        let Some(rid) = self.rid.clone() else { return Some(Err(Error::new(ErrorKind::InvalidState, "no request was sent"))) };
        let until = deadline.min(Instant::now() + slice);
        loop {
            loop {
                let msg = match self.decoder.next_message() {
                    Ok(None) => break,
                    Ok(Some(m)) => m,
                    Err(e) => return Some(Err(closed(&format!("the socket broke the protocol: {e}")))),
                };
                let body = match msg {
                    Message::Ping(p) => {
                        handoff::encode_pong(&mut self.out, p, true);
                        continue;
                    }
                    Message::Close(_) => return Some(Err(closed("the socket closed"))),
                    Message::Text(t) => t.as_bytes(),
                    Message::Binary(b) => b,
                };
                if let Some(r) = reply_for(body, &rid) {
                    return Some(r);
                }
            }
            if let Err(e) = self.write_out(deadline) {
                return Some(Err(e));
            }
            if self.pool.is_closed() {
                // As the runtime's path reports a request its closing client cancelled.
                return Some(Err(crate::embed::ops::cancelled()));
            }
            let now = Instant::now();
            if now >= deadline {
                return Some(Err(Error::timeout(format!("no reply within {timeout:?}"))));
            }
            if now >= until {
                return None;
            }
            // Round the read timeout up to whole milliseconds so that it is set again only near
            // the deadline.
            let left = until - now;
            let t = Duration::from_millis(left.as_millis().max(1) as u64);
            if self.read_timeout != Some(t) {
                if let Err(e) = self.stream.set_read_timeout(Some(t)) {
                    return Some(Err(closed(&format!("the socket failed: {e}"))));
                }
                self.read_timeout = Some(t);
            }
            match self.decoder.read_from(&mut self.stream) {
                Ok(0) => return Some(Err(closed("the socket closed"))),
                Ok(_) => {}
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted) => {}
                Err(e) => return Some(Err(closed(&format!("the socket failed: {e}")))),
            }
        }
    }

    /// Ends a call that got its reply: the socket goes back to its pool for the next call.
    pub fn finish(mut self) {
        self.rid = None;
        self.idle_since = Instant::now();
        let pool = Arc::clone(&self.pool);
        if pool.is_closed() {
            return;
        }
        let mut m = lock(&pool.dests);
        if let Some(d) = m.get_mut(&self.dest)
            && d.idle.len() < MAX_IDLE_PER_DEST
        {
            d.idle.push(self);
        }
    }
}

impl Drop for DirectConn {
    fn drop(&mut self) {
        // Not given back: closed with its socket. Forgotten by its destination's count.
        let mut m = lock(&self.pool.dests);
        if let Some(d) = m.get_mut(&self.dest) {
            d.open = d.open.saturating_sub(1);
            if d.open == 0 && d.idle.is_empty() && !d.dialing {
                m.remove(&self.dest);
            }
        }
    }
}

/// The outcome of the reply `body` when its rid is `rid`; `None` for another rid.
fn reply_for(body: &[u8], rid: &str) -> Option<Result<Box<RawValue>>> {
    let routed = envelope::decode_reply_routed(body, |r| (r.as_str() == Some(rid)).then_some(((), ResultForm::Raw)));
    match routed {
        Ok(r) if r.target.is_some() => Some(r.outcome().map(ReplyResult::into_raw)),
        Ok(_) => None,
        Err((Some(()), e)) => Some(Err(Error::new(e.kind(), e.message().to_string()))),
        // Not a reply at all: dropped, as the WsClient drops it.
        Err((None, _)) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::{Reply, Request};
    use crate::transport::TransportKind;

    fn wait_idle(pool: &Arc<DirectPool>, dest: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while lock(&pool.dests).get(dest).is_none_or(|d| d.idle.is_empty()) {
            assert!(Instant::now() < deadline, "no socket was dialled");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// A socket is dialled on request, carries calls one at a time, goes back idle after each,
    /// is closed once idle past the limit, and is not reused after a call that ended without
    /// its reply; a socket the server closed is dropped when taken.
    #[test]
    fn sockets_are_reused_swept_and_dropped() {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("rt");
        let handler = Arc::new(|req: Request, reply: Reply| reply.ok(req.payload.into_value()));
        let server = rt
            .block_on(crate::transport::bind_server(TransportKind::Ws, "127.0.0.1:0".parse().expect("addr"), handler, None, None))
            .expect("bind");
        let dest = server.local_addr().to_string();
        let pool = DirectPool::with_idle_close(rt.handle().clone(), 1 << 20, Duration::from_millis(300), Duration::from_millis(50));
        assert!(pool.take(&dest).is_none());
        pool.want(&dest);
        wait_idle(&pool, &dest);
        assert_eq!(pool.open(&dest), 1);
        let call = |pool: &Arc<DirectPool>, payload: &str| {
            let mut c = pool.take(&dest).expect("idle socket");
            let deadline = Instant::now() + Duration::from_secs(5);
            c.send("r1", "k", payload, deadline).expect("sent");
            let got = loop {
                if let Some(r) = c.wait(deadline, Duration::from_secs(5), Duration::from_millis(50)) {
                    break r.expect("reply");
                }
            };
            c.finish();
            got.get().to_string()
        };
        for i in 0..20 {
            assert_eq!(call(&pool, &i.to_string()), i.to_string());
        }
        assert_eq!(pool.open(&dest), 1, "one socket carried every call");
        assert_eq!(pool.sent(), 20);
        // A call dropped while it waits closes its socket.
        let mut c = pool.take(&dest).expect("idle socket");
        c.send("r2", "k", "1", Instant::now() + Duration::from_secs(5)).expect("sent");
        drop(c);
        assert_eq!(pool.open(&dest), 0);
        assert!(pool.take(&dest).is_none());
        // Idle past the limit: closed by the sweep of a later take.
        pool.want(&dest);
        wait_idle(&pool, &dest);
        std::thread::sleep(Duration::from_millis(400));
        assert!(pool.take(&dest).is_none(), "swept");
        assert_eq!(pool.open(&dest), 0);
        // Closed by the server while idle: dropped when taken.
        pool.want(&dest);
        wait_idle(&pool, &dest);
        server.close();
        std::thread::sleep(Duration::from_millis(100));
        assert!(pool.take(&dest).is_none(), "a closed socket is not handed out");
        assert_eq!(pool.open(&dest), 0);
        pool.close();
        assert!(pool.is_closed());
    }
}
