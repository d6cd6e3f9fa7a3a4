//! The uTP node: one UDP socket carrying uTP streams (in and out), punch datagrams and the
//! broker's punch requests.
//!
//! Every datagram is sorted before the uTP engine sees it:
//! * exactly the punch bytes (`C3 BF`, the legacy `ÿ`): a punch. The sender's endpoint (its NAT
//!   mapping) is reported as a [`PunchEvent`], and an acknowledgement is sent back;
//! * the punch bytes followed by `A`: an acknowledgement of one of our punches;
//! * the punch bytes followed by `P` and a JSON object `{"address","port"}`: a broker asking us to
//!   punch that endpoint (only from a broker this node registered with);
//! * a datagram that parses as a uTP header: to the engine;
//! * anything else: dropped and counted.
//!
//! Legacy peers recognise only the whole 2-byte punch, so the acknowledgement and the request are
//! ignored by them (they fall in boxgloves' "not the control string" case).

use std::collections::HashMap;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use librqbit_utp::{SocketOpts, UtpSocket, UtpStream};
use tokio::net::UdpSocket;
use tokio::sync::{Semaphore, broadcast, watch};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, ErrorKind, Result};

/// The legacy punch datagram: the UTF-8 bytes of `ÿ` (boxgloves' default control string).
pub const LEGACY_PUNCH: [u8; 2] = [0xC3, 0xBF];
/// The tag after the punch bytes of an acknowledgement.
const ACK_TAG: u8 = b'A';
/// The tag after the punch bytes of a broker's punch request.
const REQUEST_TAG: u8 = b'P';

/// How many punch attempts (distinct targets) may run at once on a node.
const MAX_ATTEMPTS: usize = 1024;
/// How many brokers a node trusts with punch requests.
const MAX_BROKERS: usize = 16;
/// How many punches a broker's requests may start at once; further requests are dropped.
const MAX_REQUESTED_PUNCHES: usize = 64;
/// How many events wait for a slow subscriber before the oldest are lost.
const EVENT_QUEUE: usize = 256;
/// How long the first SYN of a connect waits for an answer before another is sent.
const CONNECT_RETRY_FIRST: Duration = Duration::from_secs(1);
/// How long each further SYN waits before the next.
const CONNECT_RETRY_NEXT: Duration = Duration::from_secs(2);
/// Most SYNs one connect sends (the caller's timeout usually ends it first).
const CONNECT_ATTEMPTS: usize = 16;
/// Most attempts of one connect waiting at once: the engine refuses a fifth connect to one
/// destination while four wait (`MAX_CONNECTING_PER_ADDR` in librqbit-utp 0.7).
const MAX_CONNECTING_PER_DESTINATION: usize = 4;
/// The smallest link MTU the engine accepts: IPv4 (20), UDP (8) and uTP (20) headers and a byte.
const MIN_LINK_MTU: usize = 49;
/// The engine's first send buffer of a stream (it grows from there up to the send window).
const ENGINE_INITIAL_SEND_BUFFER: usize = 32 * 1024;
/// Bounds of [`UtpNodeConfig::send_window`].
const MIN_SEND_WINDOW: usize = 4 * 1024;
const MAX_SEND_WINDOW: usize = 64 << 20;
/// The engine's `max_retransmissions`: how many times it sends a data packet, or a server
/// stream's SYN-ACK (every 200 ms), again before it gives the stream up. Its default, 5, gave a
/// server's new stream 1 s to hear the client's first packet; when that packet was lost, the
/// client's retransmission timeout (about 300 ms at a 100 ms round trip, doubling each time)
/// often came after it, and the stream died under the request (see `docs/compat.md`). At 30 a
/// new stream waits 6 s; a data packet's copies, 30 timeouts that double each time, outlast the
/// inactivity timeout, which is what ends a stream whose peer went silent.
const ENGINE_MAX_RETRANSMISSIONS: usize = 30;
/// The shortest [`UtpNodeConfig::inactivity_timeout`].
const MIN_INACTIVITY_TIMEOUT: Duration = Duration::from_secs(1);

/// The settings of a [`UtpNode`].
#[derive(Debug, Clone)]
pub struct UtpNodeConfig {
    /// The punch datagram (default [`LEGACY_PUNCH`], what legacy peers send and recognise).
    pub punch_bytes: Vec<u8>,
    /// How often [`UtpNode::punch`] repeats its punch until it hears from the target. Default 100 ms.
    pub punch_interval: Duration,
    /// How long a punch asked for by a broker keeps trying. Default 5 s.
    pub requested_punch_timeout: Duration,
    /// At most this many acknowledgements per second are sent (a flood of punches from a stranger
    /// gets no more than this back). Default 500.
    pub acks_per_second: u32,
    /// Most uTP streams at once (the engine's `max_live_vsocks`). Default 128.
    pub max_streams: usize,
    /// The largest IP packet the path carries, in bytes (default 1500, Ethernet). The engine
    /// sends packets of up to this size less the IP, UDP and uTP headers, and probes its way up
    /// to it. On a path with a smaller MTU that drops larger packets without the ICMP error that
    /// would make the kernel fragment them (a "black hole"), set it to the path's MTU: a packet
    /// that never gets through fails its stream (see [`UtpNode`] on MTU probes).
    /// Errors: below 49 (IP + UDP + uTP headers and one byte) or above 65535, `bind_with` fails
    /// with `InvalidArgument`.
    pub link_mtu: usize,
    /// The most bytes a uTP stream keeps sent and not yet acknowledged (the engine's send buffer,
    /// which bounds the data in flight). Default 64 KiB: about 45 full packets, within the 64
    /// that one selective acknowledgement describes, so that lost packets are found and sent
    /// again from the acknowledgements; with the engine's own default (1 MiB) a loss on a fast
    /// path leaves hundreds of packets in flight, and librqbit-utp 0.7 then repairs the holes one
    /// retransmission timeout at a time, doubling it each time, until the stream is given up (see
    /// `docs/compat.md`, "Engine defects we work around"). It caps a stream's rate at this much
    /// per round trip (640 KB/s at 100 ms): raise it on a clean path with a long round trip.
    /// Errors: below 4 KiB or above 64 MiB, `bind_with` fails with `InvalidArgument`.
    pub send_window: usize,
    /// The engine's `remote_inactivity_timeout`: a stream is given up (its requests fail with
    /// `ErrorKind::Closed`) when for this long it neither got new data nor had data of its
    /// own acknowledged, from the moment it received data or sent data not yet acknowledged
    /// until its own data is all acknowledged. So it also ends a server's stream whose handler
    /// takes longer than this to answer, and a client's stream idle for this long after a reply.
    /// Default 60 s (the engine's is 10 s): above the clients' default request timeouts, and
    /// room for the engine's retransmission timeout, which doubles at each one in a row (at 10 s,
    /// a few losses in a row on a lossy path ended streams that were still being repaired).
    /// Raise it on a server whose handlers take longer. Errors: below 1 s, `bind_with` fails
    /// with `InvalidArgument`.
    pub inactivity_timeout: Duration,
}

impl Default for UtpNodeConfig {
    fn default() -> Self {
        UtpNodeConfig {
            punch_bytes: LEGACY_PUNCH.to_vec(),
            punch_interval: Duration::from_millis(100),
            requested_punch_timeout: Duration::from_secs(5),
            acks_per_second: 500,
            max_streams: 128,
            link_mtu: 1500,
            send_window: 64 * 1024,
            inactivity_timeout: Duration::from_secs(60),
        }
    }
}

/// What a node heard on its socket besides uTP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PunchEvent {
    /// A punch arrived from `from` (the sender's endpoint as this node sees it: behind a NAT,
    /// its mapping). The node acknowledged it.
    Punched {
        /// The sender.
        from: SocketAddr,
    },
    /// The broker at `broker` asked this node to punch `target`; the node is punching it.
    Requested {
        /// The broker.
        broker: SocketAddr,
        /// The endpoint to punch.
        target: SocketAddr,
    },
}

/// Counters of a node's non-uTP traffic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UtpNodeStats {
    /// Punches received.
    pub punches_received: u64,
    /// Acknowledgements received.
    pub acks_received: u64,
    /// Acknowledgements not sent because of [`UtpNodeConfig::acks_per_second`].
    pub acks_suppressed: u64,
    /// Datagrams dropped: neither uTP nor a known control message, or a punch request from a
    /// broker this node does not know.
    pub dropped: u64,
}

/// One target being punched: its `reached` flag flips when anything of ours comes back.
struct Attempt {
    reached: watch::Sender<bool>,
}

/// The punch side of a node, shared with the datagram sorter.
struct Punch {
    udp: Arc<UdpSocket>,
    config: UtpNodeConfig,
    attempts: Mutex<HashMap<SocketAddr, Arc<Attempt>>>,
    events: broadcast::Sender<PunchEvent>,
    brokers: Mutex<HashMap<SocketAddr, Instant>>,
    requested: Arc<Semaphore>,
    ack_budget: Mutex<(Instant, u32)>,
    punches_received: AtomicU64,
    acks_received: AtomicU64,
    acks_suppressed: AtomicU64,
    dropped: AtomicU64,
    cancel: CancellationToken,
}

/// Sends one datagram now, with the system call itself. Tokio's `try_send_to` answers
/// `WouldBlock` until its reactor has seen the socket writable once, so on a socket bound a moment
/// ago (the first punch of a process) it would drop the datagram without trying; a punch is sent
/// once, so it must go out. A full send buffer still answers `WouldBlock`.
fn send_now(udp: &UdpSocket, data: &[u8], to: SocketAddr) -> std::io::Result<usize> {
    socket2::SockRef::from(udp).send_to(data, &to.into())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Punch {
    /// Sorts one datagram: true when it was ours (a control message or garbage), false when it
    /// goes to the uTP engine.
    fn sort(self: &Arc<Self>, data: &[u8], from: SocketAddr) -> bool {
        let control = &self.config.punch_bytes[..];
        if data == control {
            self.punches_received.fetch_add(1, Ordering::Relaxed);
            self.heard_from(from);
            self.ack(from);
            let _ = self.events.send(PunchEvent::Punched { from });
            return true;
        }
        if data.len() > control.len() && data.starts_with(control) {
            match (data[control.len()], &data[control.len() + 1..]) {
                (ACK_TAG, []) => {
                    self.acks_received.fetch_add(1, Ordering::Relaxed);
                    self.heard_from(from);
                }
                (REQUEST_TAG, body) => self.requested(from, body),
                _ => {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            return true;
        }
        if librqbit_utp::raw::UtpHeader::deserialize(data).is_some() {
            return false;
        }
        self.dropped.fetch_add(1, Ordering::Relaxed);
        true
    }

    fn heard_from(&self, from: SocketAddr) {
        if let Some(a) = lock(&self.attempts).get(&from) {
            a.reached.send_replace(true);
        }
    }

    /// Acknowledges a punch, within the per-second budget.
    fn ack(&self, to: SocketAddr) {
        {
            let mut b = lock(&self.ack_budget);
            let now = Instant::now();
            if now.duration_since(b.0) >= Duration::from_secs(1) {
                *b = (now, 0);
            }
            if b.1 >= self.config.acks_per_second {
                self.acks_suppressed.fetch_add(1, Ordering::Relaxed);
                return;
            }
            b.1 += 1;
        }
        let mut msg = self.config.punch_bytes.clone();
        msg.push(ACK_TAG);
        let _ = send_now(&self.udp, &msg, to);
    }

    /// A broker's punch request: punch the endpoint it names, in the background.
    fn requested(self: &Arc<Self>, broker: SocketAddr, body: &[u8]) {
        let trusted = lock(&self.brokers).contains_key(&broker);
        let target = trusted.then(|| parse_endpoint(body)).flatten();
        let (Some(target), Ok(permit)) = (target, self.requested.clone().try_acquire_owned()) else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let _ = self.events.send(PunchEvent::Requested { broker, target });
        let this = self.clone();
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        rt.spawn(async move {
            let _permit = permit;
            let timeout = this.config.requested_punch_timeout;
            tokio::select! {
                r = this.punch(target, timeout) => {
                    if let Err(e) = r {
                        tracing::debug!("punch asked by broker {broker} to {target}: {e}");
                    }
                }
                _ = this.cancel.cancelled() => {}
            }
        });
    }

    fn send_punch(&self, to: SocketAddr) -> Result<()> {
        match send_now(&self.udp, &self.config.punch_bytes, to) {
            Ok(_) => Ok(()),
            // A full send buffer: the next try goes out.
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(Error::from(e)),
        }
    }

    async fn punch(&self, target: SocketAddr, timeout: Duration) -> Result<()> {
        let attempt = {
            let mut m = lock(&self.attempts);
            if let Some(a) = m.get(&target) {
                a.clone()
            } else {
                if m.len() >= MAX_ATTEMPTS {
                    return Err(Error::new(ErrorKind::InvalidState, "too many punches in flight"));
                }
                let a = Arc::new(Attempt { reached: watch::Sender::new(false) });
                m.insert(target, a.clone());
                a
            }
        };
        let mut reached = attempt.reached.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        let outcome = loop {
            if let Err(e) = self.send_punch(target) {
                break Err(e);
            }
            if *reached.borrow_and_update() {
                break Ok(());
            }
            let next = (tokio::time::Instant::now() + self.config.punch_interval).min(deadline);
            tokio::select! {
                _ = reached.changed() => {}
                _ = tokio::time::sleep_until(next) => {}
            }
            if *reached.borrow() {
                break Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                break Err(Error::new(
                    ErrorKind::PunchTimeout,
                    format!("no answer from {target} to punches within {} ms", timeout.as_millis()),
                ));
            }
        };
        if outcome.is_ok() {
            // One more, so that a peer still waiting hears from us even if our acknowledgement
            // was lost.
            let _ = self.send_punch(target);
        }
        drop(reached);
        let mut m = lock(&self.attempts);
        // The last punch of this target forgets it (the map holds one reference, we hold one).
        if Arc::strong_count(&attempt) <= 2 {
            m.remove(&target);
        }
        outcome
    }
}

/// Parses a punch request's body `{"address": "1.2.3.4", "port": 5}`.
pub(crate) fn parse_endpoint(body: &[u8]) -> Option<SocketAddr> {
    #[derive(serde::Deserialize)]
    struct Endpoint {
        address: std::net::IpAddr,
        port: u16,
    }
    let e: Endpoint = serde_json::from_slice(body).ok()?;
    (e.port != 0).then_some(SocketAddr::new(e.address, e.port))
}

/// The UDP socket as the uTP engine sees it: datagrams the punch side keeps never reach it.
struct Demux {
    udp: Arc<UdpSocket>,
    local: SocketAddr,
    punch: Arc<Punch>,
}

impl librqbit_dualstack_sockets::PollSendToVectored for Demux {
    fn poll_send_to_vectored(&self, cx: &mut Context<'_>, bufs: &[IoSlice<'_>], target: SocketAddr) -> Poll<std::io::Result<usize>> {
        self.udp.poll_send_to_vectored(cx, bufs, target)
    }
}

impl librqbit_utp::Transport for Demux {
    async fn recv_from(&self, buf: &mut [u8]) -> std::io::Result<(usize, SocketAddr)> {
        loop {
            match self.udp.recv_from(buf).await {
                Ok((n, from)) => {
                    if !self.punch.sort(&buf[..n], from) {
                        return Ok((n, from));
                    }
                }
                // ICMP errors reported on the socket (a peer's port closed): not fatal for the
                // other streams; the engine's own timers deal with that peer.
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn send_to<'a>(&'a self, buf: &'a [u8], target: SocketAddr) -> impl Future<Output = std::io::Result<usize>> + Send + Sync + 'a {
        self.udp.send_to(buf, target)
    }

    fn poll_send_to(&self, cx: &mut Context<'_>, buf: &[u8], target: SocketAddr) -> Poll<std::io::Result<usize>> {
        self.udp.poll_send_to(cx, buf, target)
    }

    fn bind_addr(&self) -> SocketAddr {
        self.local
    }
}

/// Names the engine's default environment (clock and RNG), whose trait the crate does not export:
/// it is the second parameter of the public alias `UtpSocketUdp`.
trait EnvOf {
    type Env;
}
impl<T, E> EnvOf for UtpSocket<T, E> {
    type Env = E;
}
type Env = <librqbit_utp::UtpSocketUdp as EnvOf>::Env;
type Engine = UtpSocket<Demux, Env>;

/// One UDP socket per node, carrying uTP streams both ways (a server's and a client's: they share
/// the port, so a NAT mapping opened by a punch or by talking to a broker is the one that carries
/// the RPC), punches and broker requests.
///
/// Cheap to share (`Arc`); the socket closes when the last holder drops it. A server
/// ([`super::UtpServer`]) and any number of clients ([`super::UtpClient`]) can use one node.
///
/// # MTU probes
///
/// The engine starts with 528-byte payloads and sends larger "probe" packets to find the
/// largest the path carries. librqbit-utp 0.7 gives a probe up when it is still unacknowledged
/// after a retransmission (by default), meaning "too large"; but it then forgets the probe's
/// bytes without taking them off its count of segmented bytes, so the next packet, reusing the
/// probe's sequence number, starts after them: the receiver gets the stream with one packet's
/// worth of bytes missing, and the sender's buffer never drains (every later flush waits
/// forever). A probe is also given up when it was lost twice by chance, or when only its
/// acknowledgements were. A node therefore never gives a probe up: it is retransmitted like any
/// packet, and a probe the path cannot carry fails its stream at the inactivity timeout
/// ([`UtpNodeConfig::inactivity_timeout`]; the requests on it fail with `Closed`, never with
/// altered data). Linux
/// fragments datagrams larger than the path MTU it learnt from ICMP, so this only bites on a
/// path that also filters those ICMP errors: set [`UtpNodeConfig::link_mtu`] there.
pub struct UtpNode {
    engine: Arc<Engine>,
    punch: Arc<Punch>,
    local: SocketAddr,
    cancel: CancellationToken,
    pub(crate) serving: AtomicBool,
}

impl std::fmt::Debug for UtpNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UtpNode").field("local", &self.local).finish_non_exhaustive()
    }
}

impl UtpNode {
    /// Binds a UDP socket on `addr` (port 0: any free port) with default settings.
    pub async fn bind(addr: SocketAddr) -> Result<Arc<UtpNode>> {
        UtpNode::bind_with(addr, UtpNodeConfig::default()).await
    }

    /// Binds a UDP socket on `addr` with `config`. Errors: `Io` when it cannot be bound;
    /// `InvalidArgument` for an empty punch.
    pub async fn bind_with(addr: SocketAddr, config: UtpNodeConfig) -> Result<Arc<UtpNode>> {
        if config.punch_bytes.is_empty() || config.punch_bytes.len() >= 20 {
            return Err(Error::invalid("punch bytes must be 1 to 19 bytes (shorter than a uTP header)"));
        }
        if !(MIN_LINK_MTU..=usize::from(u16::MAX)).contains(&config.link_mtu) {
            return Err(Error::invalid(format!("link MTU must be {MIN_LINK_MTU} to 65535 bytes")));
        }
        if !(MIN_SEND_WINDOW..=MAX_SEND_WINDOW).contains(&config.send_window) {
            return Err(Error::invalid(format!("send window must be {MIN_SEND_WINDOW} to {MAX_SEND_WINDOW} bytes")));
        }
        if config.inactivity_timeout < MIN_INACTIVITY_TIMEOUT {
            return Err(Error::invalid("inactivity timeout must be at least 1 s"));
        }
        let udp = Arc::new(UdpSocket::bind(addr).await?);
        let local = udp.local_addr()?;
        let cancel = CancellationToken::new();
        let punch = Arc::new(Punch {
            udp: udp.clone(),
            attempts: Mutex::new(HashMap::new()),
            events: broadcast::channel(EVENT_QUEUE).0,
            brokers: Mutex::new(HashMap::new()),
            requested: Arc::new(Semaphore::new(MAX_REQUESTED_PUNCHES)),
            ack_budget: Mutex::new((Instant::now(), 0)),
            punches_received: AtomicU64::new(0),
            acks_received: AtomicU64::new(0),
            acks_suppressed: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            cancel: cancel.clone(),
            config: config.clone(),
        });
        let opts = SocketOpts {
            disable_nagle: true,
            cancellation_token: cancel.clone(),
            max_live_vsocks: std::num::NonZeroUsize::new(config.max_streams.max(1)),
            link_mtu: std::num::NonZeroUsize::new(config.link_mtu),
            // An MTU probe is never given up: librqbit-utp 0.7 loses the probe's bytes from the
            // stream when it does (see the type's docs). A probe that cannot get through is
            // retransmitted like any packet, until the stream fails.
            mtu_probe_max_retransmissions: Some(usize::MAX),
            // A new server stream waits 6 s for the client's first packet (see the constant).
            max_retransmissions: std::num::NonZeroUsize::new(ENGINE_MAX_RETRANSMISSIONS),
            // The send buffer bounds the data in flight: kept within what one selective
            // acknowledgement describes, so that a hole is repaired from the acknowledgements
            // rather than by the retransmission timeout (see the type's docs).
            vsock_tx_bufsize_bytes_initial: std::num::NonZeroUsize::new(config.send_window.min(ENGINE_INITIAL_SEND_BUFFER)),
            vsock_tx_bufsize_bytes_max: std::num::NonZeroUsize::new(config.send_window),
            remote_inactivity_timeout: Some(config.inactivity_timeout),
            ..Default::default()
        };
        let demux = Demux { udp, local, punch: punch.clone() };
        let engine = Engine::new_with_opts(demux, <Env as Default>::default(), opts)
            .map_err(|e| Error::new(ErrorKind::Io, format!("uTP socket: {e}")))?;
        Ok(Arc::new(UtpNode { engine, punch, local, cancel, serving: AtomicBool::new(false) }))
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Sends one punch to `target` and returns (the reference's `transport.punch`).
    pub fn send_punch(&self, target: SocketAddr) -> Result<()> {
        self.punch.send_punch(target)
    }

    /// Punches `target` until it is heard from: every [`UtpNodeConfig::punch_interval`] a punch
    /// goes out, and the call succeeds once a punch or an acknowledgement comes back from exactly
    /// that endpoint (the path is open both ways). Two nodes behind port-restricted NATs connect
    /// when both punch each other's external endpoint at about the same time (a broker tells
    /// them to). Errors: [`ErrorKind::PunchTimeout`] when nothing came back within `timeout`
    /// (a symmetric NAT maps each destination to a new port, so the endpoint a broker saw is not
    /// the one that would be punched).
    pub async fn punch(&self, target: SocketAddr, timeout: Duration) -> Result<()> {
        self.punch.punch(target, timeout).await
    }

    /// Punch events: punches received, and punches a broker asked for. A subscriber that falls
    /// more than 256 events behind loses the oldest.
    pub fn subscribe(&self) -> broadcast::Receiver<PunchEvent> {
        self.punch.events.subscribe()
    }

    /// Lets the broker at `addr` ask this node to punch endpoints (at most 16 brokers are
    /// remembered; the oldest is forgotten first).
    pub fn trust_broker(&self, addr: SocketAddr) {
        let mut b = lock(&self.punch.brokers);
        if !b.contains_key(&addr)
            && b.len() >= MAX_BROKERS
            && let Some(oldest) = b.iter().min_by_key(|(_, t)| **t).map(|(a, _)| *a)
        {
            b.remove(&oldest);
        }
        b.insert(addr, Instant::now());
    }

    /// Counters of the non-uTP traffic.
    pub fn stats(&self) -> UtpNodeStats {
        let p = &self.punch;
        UtpNodeStats {
            punches_received: p.punches_received.load(Ordering::Relaxed),
            acks_received: p.acks_received.load(Ordering::Relaxed),
            acks_suppressed: p.acks_suppressed.load(Ordering::Relaxed),
            dropped: p.dropped.load(Ordering::Relaxed),
        }
    }

    /// Sends a broker's punch request to `node`: "punch `target`".
    pub(crate) fn send_punch_request(&self, node: SocketAddr, target: SocketAddr) {
        let mut msg = self.punch.config.punch_bytes.clone();
        msg.push(REQUEST_TAG);
        let body = serde_json::json!({"address": target.ip().to_string(), "port": target.port()});
        msg.extend_from_slice(body.to_string().as_bytes());
        let _ = send_now(&self.punch.udp, &msg, node);
    }

    /// Opens a uTP stream to `addr`. The caller bounds the time.
    ///
    /// librqbit-utp 0.7 sends a connection's SYN once and never again, so one lost datagram
    /// would leave the connect waiting until the caller's timeout. A new attempt (a new SYN)
    /// starts after 1 s, then every 2 s, while the earlier ones keep waiting (on a slow path
    /// their answer may still come); the first stream wins and the others are dropped. The
    /// engine keeps at most 4 attempts per destination (a fifth is refused), so the oldest is
    /// dropped before a fifth starts. An attempt that fails outright (too many streams, the SYN
    /// could not be sent) fails the connect only when no other attempt is still waiting: its
    /// error is the one returned.
    pub(crate) async fn connect(&self, addr: SocketAddr) -> Result<UtpStream> {
        use futures_util::StreamExt;
        let fail = |e: librqbit_utp::Error| Error::new(ErrorKind::Connect, format!("uTP connect to {addr}: {e}"));
        // Each attempt with a token that drops it (the engine then forgets its SYN).
        let attempt = |stop: CancellationToken| {
            let engine = self.engine.clone();
            async move {
                let r = tokio::select! {
                    r = engine.connect(addr) => Some(r),
                    _ = stop.cancelled() => None,
                };
                // Done: no longer counted as waiting.
                stop.cancel();
                r
            }
        };
        let mut attempts = futures_util::stream::FuturesUnordered::new();
        let mut waiting = std::collections::VecDeque::new();
        let mut started = 1;
        waiting.push_back(CancellationToken::new());
        attempts.push(attempt(waiting[0].clone()));
        let mut wait = CONNECT_RETRY_FIRST;
        loop {
            tokio::select! {
                Some(r) = attempts.next() => match r {
                    Some(Ok(stream)) => return Ok(stream),
                    // Another attempt may still be answered.
                    Some(Err(e)) if !attempts.is_empty() => tracing::debug!("uTP connect to {addr}: an attempt failed: {e}"),
                    Some(Err(e)) => return Err(fail(e)),
                    // Dropped to make room for a newer one.
                    None => {}
                },
                _ = tokio::time::sleep(wait), if started < CONNECT_ATTEMPTS => {
                    waiting.retain(|t: &CancellationToken| !t.is_cancelled());
                    if waiting.len() >= MAX_CONNECTING_PER_DESTINATION
                        && let Some(oldest) = waiting.pop_front()
                    {
                        oldest.cancel();
                    }
                    let stop = CancellationToken::new();
                    waiting.push_back(stop.clone());
                    attempts.push(attempt(stop));
                    started += 1;
                    wait = CONNECT_RETRY_NEXT;
                }
            }
        }
    }

    /// How long the engine lets a stream go without hearing from its peer.
    pub(crate) fn inactivity_timeout(&self) -> Duration {
        self.punch.config.inactivity_timeout
    }

    /// Accepts the next incoming uTP stream.
    pub(crate) async fn accept(&self) -> Result<UtpStream> {
        self.engine.accept().await.map_err(|e| Error::new(ErrorKind::Closed, format!("uTP accept: {e}")))
    }
}

impl Drop for UtpNode {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}
