//! PUB/SUB over WebSocket (or ZeroMQ) for embedders.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, ErrorKind, Result};
use crate::pubsub::{PeerPub, PeerSub, PubConfig, SubConfig, SubMessage, Subscription};
use crate::rpc::TransportKind;
use crate::tls::{ClientTls, ServerTls};

use super::link::CLOSE_WAIT;
use super::{EmbedLink, Gate, Runtime};

/// A publisher (the reference's `PeerPub`) driven by an embed [`Runtime`].
#[derive(Debug)]
pub struct EmbedPublisher {
    rt: Runtime,
    link: crate::link::Link,
    publisher: PeerPub,
    announcing: std::sync::Mutex<Vec<crate::link::AnnounceHandle>>,
}

impl EmbedPublisher {
    /// Binds `0.0.0.0:port` (0: any). Blocks until bound (at most 10 s); refuses to run on a
    /// worker thread.
    pub fn bind(link: &EmbedLink, port: u16, tls: Option<ServerTls>) -> Result<EmbedPublisher> {
        Self::bind_with(link, super::ServerOptions { port, tls, ..Default::default() })
    }

    /// Like [`EmbedPublisher::bind`] with server options: the port, TLS and the `verify_client`
    /// hook (which sees each subscriber before its upgrade); `reply_timeout` does not apply.
    pub fn bind_with(link: &EmbedLink, options: super::ServerOptions) -> Result<EmbedPublisher> {
        Self::bind_kind(link, TransportKind::Ws, options)
    }

    /// [`EmbedPublisher::bind_with`] over `kind`: [`TransportKind::Ws`] or [`TransportKind::Zmq`]
    /// (a ZeroMQ PUB socket; no TLS, no hook). Errors: `InvalidArgument` for HTTP, or TLS or a
    /// hook with ZeroMQ; `Io` when the port cannot be bound.
    pub fn bind_kind(link: &EmbedLink, kind: TransportKind, options: super::ServerOptions) -> Result<EmbedPublisher> {
        let rt = link.runtime().clone();
        let mut config = PubConfig::default().transport(kind);
        if let Some(t) = options.tls {
            config = config.tls(t);
        }
        if let Some(hook) = options.verify_client {
            config = config.verify_client(hook);
        }
        let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, options.port));
        let publisher = rt.block_on(Duration::from_secs(10), async move { PeerPub::bind(addr, config).await })?;
        Ok(EmbedPublisher { rt, link: link.link().clone(), publisher, announcing: Default::default() })
    }

    /// The listening port.
    pub fn port(&self) -> u16 {
        self.publisher.port()
    }

    /// Keeps announcing `name` every `interval` (jittered) until closed.
    pub fn start_announcing(&self, name: &str, interval: Duration) {
        let _g = self.rt.handle().enter();
        let h = self.publisher.start_announcing(&self.link, name, interval);
        self.announcing.lock().unwrap_or_else(|p| p.into_inner()).push(h);
    }

    /// Sends a text message to every connected subscriber; returns how many it was queued for.
    pub fn publish(&self, text: &str) -> usize {
        let _g = self.rt.handle().enter();
        self.publisher.publish(text.to_string())
    }

    /// Sends `data` as one binary frame to every connected subscriber; returns how many it was
    /// queued for.
    pub fn publish_binary(&self, data: &[u8]) -> usize {
        let _g = self.rt.handle().enter();
        self.publisher.publish_binary(bytes::Bytes::copy_from_slice(data))
    }

    /// How many subscribers are connected.
    pub fn subscribers(&self) -> usize {
        self.publisher.subscribers()
    }

    /// Stops announcing and closes every subscriber's socket.
    pub fn close(&self) {
        for h in self.announcing.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            h.stop();
        }
        let _g = self.rt.handle().enter();
        self.publisher.close();
    }
}

impl Drop for EmbedPublisher {
    fn drop(&mut self) {
        self.close();
    }
}

/// A subscription to every publisher of a name, delivering each message to a callback.
#[derive(Debug)]
pub struct EmbedSubscriber {
    gate: Gate,
    task: tokio::task::AbortHandle,
    publishers: Arc<std::sync::atomic::AtomicUsize>,
}

impl EmbedSubscriber {
    /// Subscribes to the publishers of `name` found through `link`. `on_message` runs on a worker
    /// thread for each message, one at a time, until [`EmbedSubscriber::close`]; it is dropped
    /// (with whatever it owns) once the subscription has stopped.
    pub fn subscribe(
        link: &EmbedLink,
        name: &str,
        tls: Option<ClientTls>,
        on_message: impl Fn(&SubMessage) + Send + Sync + 'static,
    ) -> Result<EmbedSubscriber> {
        Self::subscribe_kind(link, name, TransportKind::Ws, tls, on_message)
    }

    /// [`EmbedSubscriber::subscribe`] over `kind`: [`TransportKind::Ws`] or
    /// [`TransportKind::Zmq`] (ZeroMQ SUB sockets; `tls` does not apply and must be `None`).
    pub fn subscribe_kind(
        link: &EmbedLink,
        name: &str,
        kind: TransportKind,
        tls: Option<ClientTls>,
        on_message: impl Fn(&SubMessage) + Send + Sync + 'static,
    ) -> Result<EmbedSubscriber> {
        if !link.runtime().is_running() {
            return Err(Error::new(ErrorKind::Cancelled, "the runtime was shut down"));
        }
        if kind == TransportKind::Zmq && tls.is_some() {
            return Err(Error::invalid("ZeroMQ PUB/SUB has no TLS (and no CURVE): use WS for TLS"));
        }
        let mut config = SubConfig::default().transport(kind);
        if let Some(t) = tls {
            config = config.tls(t);
        }
        let rt = link.runtime().clone();
        let _g = rt.handle().enter();
        let sub: Subscription = PeerSub::new(link.link().clone(), config).sub(name);
        let gate = Gate::new();
        let publishers = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (g2, p2) = (gate.clone(), publishers.clone());
        let task = rt.handle().spawn(async move {
            let mut sub = sub;
            loop {
                match tokio::time::timeout(Duration::from_millis(200), sub.recv()).await {
                    Ok(Some(m)) => {
                        if !g2.run(|| on_message(&m)) {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(_) => {}
                }
                p2.store(sub.publishers(), std::sync::atomic::Ordering::Relaxed);
            }
        });
        Ok(EmbedSubscriber { gate, task: task.abort_handle(), publishers })
    }

    /// How many publishers were connected at the last check (updated at least every 200 ms).
    pub fn publishers(&self) -> usize {
        self.publishers.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Stops the subscription: after it returns the callback is not running (unless this is
    /// called from inside it) and will not run again.
    pub fn close(&self) {
        self.gate.close(CLOSE_WAIT);
        self.task.abort();
    }
}

impl Drop for EmbedSubscriber {
    fn drop(&mut self) {
        self.close();
    }
}
