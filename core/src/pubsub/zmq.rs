//! PUB/SUB over ZeroMQ PUB and SUB sockets (ZMTP 3.1), behind the same [`PeerPub`](super::PeerPub)
//! and [`PeerSub`](super::PeerSub) as WebSocket: choose it with
//! [`PubConfig::transport`](super::PubConfig::transport) and
//! [`SubConfig::transport`](super::SubConfig::transport).
//!
//! The wire: each published message is one frame (its bytes; ZeroMQ has no text/binary flag, so
//! a subscriber marks a message binary when it is not UTF-8). The publisher filters by the
//! prefixes each subscriber subscribed to, as a libzmq PUB does (both the 3.0 form, a message
//! starting with byte 1 or 0, and the 3.1 `SUBSCRIBE`/`CANCEL` commands are understood); our
//! subscribers subscribe to everything. A subscriber counts (for
//! [`PeerPub::subscribers`](super::PeerPub::subscribers) and `publish`) from its first
//! subscription. A message of several frames (a libzmq publisher's topic frame, say) reaches our
//! subscribers as its frames concatenated.
//!
//! The publisher's per-subscriber queue, its [`SlowSubscriberPolicy`](super::SlowSubscriberPolicy)
//! and the 30 s write timeout are those of the WS publisher (ZeroMQ's `ZMQ_SNDHWM` with drop, or
//! a disconnect); a subscriber reads at most `max_message_size` per message and holds at most
//! its `buffer` of messages for the application.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use super::{PubShared, Published, QueueState, SubConfig, SubMessage, SubQueue, SubShared, WRITE_TIMEOUT, lock};
use crate::transport::ws::AcceptSettings;
use crate::transport::zmq::zmtp::{self, FrameReader, Incoming, Limits, SocketType};

/// Subscriptions a subscriber may hold at once; further ones are ignored.
const MAX_PREFIXES: usize = 1024;
/// The largest message a publisher reads from a subscriber (subscriptions are small).
const MAX_SUBSCRIBER_MESSAGE: usize = 64 * 1024;

pub(super) async fn pub_accept_loop(
    listener: TcpListener,
    shared: Arc<PubShared>,
    settings: AcceptSettings,
    max_subscribers: usize,
    shutdown: CancellationToken,
) {
    let timeout = settings.handshake_timeout;
    // ZeroMQ subscribers share the total cap; the WS publisher's per-IP cap is not applied here.
    let limits = crate::transport::ConnLimits { max_connections: max_subscribers, max_per_ip: max_subscribers };
    let sources = crate::transport::limits::Sources::new(limits, Arc::default());
    crate::transport::accept_loop(listener, sources, shutdown.clone(), move |tcp, remote| {
        serve_subscriber(tcp, remote, shared.clone(), timeout, shutdown.clone())
    })
    .await;
}

async fn serve_subscriber(
    mut tcp: TcpStream,
    remote: SocketAddr,
    shared: Arc<PubShared>,
    handshake_timeout: Duration,
    shutdown: CancellationToken,
) {
    let mut reader = FrameReader::new(Limits { max_message_size: MAX_SUBSCRIBER_MESSAGE, max_frames: 1 });
    tokio::select! {
        r = zmtp::handshake(&mut tcp, SocketType::Pub, handshake_timeout, &mut reader) => if let Err(e) = r {
            tracing::debug!(%remote, "zmq pub: handshake failed: {e}");
            return;
        },
        _ = shutdown.cancelled() => return,
    }
    let (mut rd, mut wr) = tcp.into_split();
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let q = Arc::new(SubQueue {
        q: Mutex::new(QueueState { items: VecDeque::new(), kicked: false, dropped: 0 }),
        notify: Notify::new(),
        kick: CancellationToken::new(),
    });
    let mut prefixes: Vec<Bytes> = Vec::new();
    let mut registered = false;
    let mut batch: Vec<Published> = Vec::new();
    let mut out: Vec<u8> = Vec::new();
    loop {
        tokio::select! {
            _ = q.notify.notified(), if registered => {
                let kicked = {
                    let mut st = lock(&q.q);
                    batch.extend(st.items.drain(..));
                    st.kicked
                };
                if kicked {
                    tracing::debug!(%remote, "zmq pub: disconnecting a slow subscriber");
                    break;
                }
                out.clear();
                for m in batch.drain(..) {
                    let data = m.payload();
                    if prefixes.iter().any(|p| data.starts_with(p)) {
                        zmtp::encode_message(&mut out, &[data]);
                    }
                }
                if out.is_empty() {
                    continue;
                }
                tokio::select! {
                    r = tokio::time::timeout(WRITE_TIMEOUT, wr.write_all(&out)) => match r {
                        Ok(Ok(())) => {}
                        _ => break,
                    },
                    _ = q.kick.cancelled() => break,
                }
            }
            r = reader.next(&mut rd) => {
                let change = match r {
                    Ok(Some(Incoming::Message(m))) => zmtp::subscription_of(&m),
                    Ok(Some(Incoming::Ping(ctx))) => {
                        let mut pong = Vec::new();
                        zmtp::encode_pong(&mut pong, &ctx);
                        if wr.write_all(&pong).await.is_err() {
                            break;
                        }
                        None
                    }
                    Ok(Some(other)) => Some(other),
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(%remote, "zmq pub: closing a subscriber: {e}");
                        break;
                    }
                };
                match change {
                    Some(Incoming::Subscribe(p)) => {
                        if prefixes.len() < MAX_PREFIXES && !prefixes.contains(&p) {
                            prefixes.push(p);
                        }
                        if !registered {
                            registered = true;
                            let mut subs = lock(&shared.subs);
                            subs.insert(id, q.clone());
                            shared.count.send_replace(subs.len());
                        }
                    }
                    Some(Incoming::Cancel(p)) => {
                        if let Some(i) = prefixes.iter().position(|x| *x == p) {
                            prefixes.swap_remove(i);
                        }
                    }
                    _ => {}
                }
            }
            _ = q.kick.cancelled() => break,
            _ = shutdown.cancelled() => break,
        }
    }
    if registered {
        let mut subs = lock(&shared.subs);
        subs.remove(&id);
        shared.count.send_replace(subs.len());
    }
    if !q.kick.is_cancelled() {
        let _ = tokio::time::timeout(Duration::from_secs(2), wr.shutdown()).await;
    }
}

/// Connects to one ZeroMQ publisher, subscribes to everything, and forwards its messages;
/// reconnects with back-off until cancelled.
pub(super) async fn publisher_conn(
    dest: Arc<str>,
    config: SubConfig,
    tx: mpsc::Sender<SubMessage>,
    shared: Arc<SubShared>,
    cancel: CancellationToken,
) {
    let mut backoff = config.reconnect_min;
    loop {
        let dialled = tokio::select! {
            r = dial(&dest, &config) => r,
            _ = cancel.cancelled() => return,
        };
        match dialled {
            Ok((tcp, mut reader)) => {
                backoff = config.reconnect_min;
                shared.connects.fetch_add(1, Ordering::Relaxed);
                shared.set_connected(&dest, true);
                let (mut rd, mut wr) = tcp.into_split();
                loop {
                    let msg = tokio::select! {
                        m = reader.next(&mut rd) => m,
                        _ = cancel.cancelled() => {
                            shared.set_connected(&dest, false);
                            return;
                        }
                    };
                    let frames = match msg {
                        Ok(Some(Incoming::Message(m))) => m.frames,
                        Ok(Some(Incoming::Ping(ctx))) => {
                            let mut pong = Vec::new();
                            zmtp::encode_pong(&mut pong, &ctx);
                            let _ = wr.write_all(&pong).await;
                            continue;
                        }
                        Ok(Some(_)) => continue,
                        Ok(None) => break,
                        Err(e) => {
                            tracing::debug!("zmq sub: publisher {dest}: {e}");
                            break;
                        }
                    };
                    let data = match frames.as_slice() {
                        [one] => one.clone(),
                        many => Bytes::from(many.concat()),
                    };
                    let binary = std::str::from_utf8(&data).is_err();
                    shared.received.fetch_add(1, Ordering::Relaxed);
                    let m = SubMessage { publisher: dest.clone(), data, binary };
                    tokio::select! {
                        r = tx.send(m) => if r.is_err() {
                            shared.set_connected(&dest, false);
                            return;
                        },
                        _ = cancel.cancelled() => {
                            shared.set_connected(&dest, false);
                            return;
                        }
                    }
                }
                shared.set_connected(&dest, false);
                tracing::debug!("zmq sub: publisher {dest} went away; reconnecting");
            }
            Err(e) => tracing::debug!("zmq sub: cannot reach publisher {dest}: {e}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = cancel.cancelled() => return,
        }
        backoff = backoff.saturating_mul(2).min(config.reconnect_max);
    }
}

/// TCP connect, the handshake as SUB, and the subscription to everything, within the connect
/// timeout.
async fn dial(dest: &str, config: &SubConfig) -> crate::Result<(TcpStream, FrameReader)> {
    let fut = async {
        let mut tcp = TcpStream::connect(dest).await?;
        let _ = tcp.set_nodelay(true);
        // Several frames are kept (they are concatenated); the size limit bounds them.
        let mut reader = FrameReader::new(Limits { max_message_size: config.max_message_size, max_frames: 64 });
        zmtp::handshake(&mut tcp, SocketType::Sub, config.connect_timeout, &mut reader).await?;
        let mut sub = Vec::new();
        zmtp::encode_message(&mut sub, &[[1u8].as_slice()]);
        tcp.write_all(&sub).await?;
        Ok::<_, crate::Error>((tcp, reader))
    };
    match tokio::time::timeout(config.connect_timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(crate::Error::timeout(format!("no connection to {dest} within {:?}", config.connect_timeout))),
    }
}
