//! The WebSocket transport, wire-compatible with grenache-nodejs-ws 1.0.0.
//!
//! Wire format (see the module docs of [`crate::rpc`]): one text frame per message, request
//! `[rid, key, payload]`, reply `[rid, error|null, result]`; replies come back in any order and are
//! matched by `rid`. Clients dial `ws://host:port/ws` (`wss://` with TLS); the server accepts any
//! path, and text and binary frames.
//!
//! * [`WsServer`] listens, optionally with TLS ([`ServerTls`](crate::tls::ServerTls)) and a [`VerifyClient`](crate::tls::VerifyClient) hook that
//!   sees the client certificate before the upgrade (a refusal is answered `HTTP 401`). Each
//!   request goes to the [`Handler`](crate::rpc::Handler) with the connection's client certificate in
//!   [`RequestInfo::cert`](crate::rpc::RequestInfo::cert). Many requests may be in flight per socket.
//! * [`WsClient`] keeps up to `max_active_dest_transports` (default 3) sockets per destination,
//!   multiplexes requests over them (an idle open socket first, a new one while all are busy,
//!   then the least loaded) and implements [`ClientTransport`](crate::rpc::ClientTransport).
//!
//! Per-request path (kept short for sequential latency): the framing is our own
//! (`frame`, RFC 6455 with no extensions); a client request writes its own frame (no writer
//! task; requests issued together share one write) and is completed by the socket's reader task;
//! the server runs the handler in the socket's task, queues a reply given before the handler
//! returns at once and writes every queued reply in one go once the requests read so far are
//! handled, so a round trip involves no task spawn and no extra timer.
//!
//! Deliberate differences from the reference (also in `docs/compat.md`):
//! * a refused or failed connection (TCP, TLS, `401`) fails the requests waiting for it at once,
//!   with [`ErrorKind::Connect`](crate::ErrorKind::Connect), [`ErrorKind::TlsHandshake`](crate::ErrorKind::TlsHandshake) or [`ErrorKind::ClientRefused`](crate::ErrorKind::ClientRefused); the
//!   reference crashes the process on an uncaught `'error'`;
//! * requests in flight fail at once with [`ErrorKind::Closed`](crate::ErrorKind::Closed) when their socket closes; the
//!   reference waits for the 10 s pool tick or forever;
//! * timeouts fire on time (the reference checks every 10 s), and a request without a timeout
//!   gets [`WsClientConfig::default_request_timeout`] (60 s, the reference's transport default);
//! * the pending-request map of a socket is bounded
//!   ([`WsClientConfig::max_pending_per_connection`]), and so are the requests a server runs per
//!   socket ([`WsServerConfig::max_in_flight_per_connection`]: the server stops reading that socket
//!   until replies go out) and the server's connections;
//! * the maximum message size is configurable (default 16 MiB; the reference's `ws` default is
//!   100 MiB); a larger message closes only the socket that sent it;
//! * a malformed frame (not JSON, not an array) is dropped, like the reference, and never affects
//!   other sockets; a text frame that is not UTF-8 closes its socket with 1007, and a close code a
//!   peer may not send (999, 1005, ...) is answered 1002, never echoed;
//!
//! Files: `stream` (TCP/TLS sockets, handshakes, dialing), `frame` (RFC 6455 framing and the
//! opening handshakes: the one implementation of the protocol, which PUB/SUB's publisher and
//! subscriber in [`crate::pubsub`] use too), `server` ([`WsServer`]), `client` ([`WsClient`]).

use std::time::Duration;

/// The default largest message accepted, in bytes (16 MiB).
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 16 << 20;

/// The default busy-poll budget of [`WsClientConfig::busy_poll`] and [`WsServerConfig::busy_poll`].
pub const DEFAULT_BUSY_POLL: Duration = Duration::from_micros(50);

/// The largest busy-poll budget; larger ones are clamped to it (a spinning server connection
/// notices the server closing only when its spin ends).
pub const MAX_BUSY_POLL: Duration = Duration::from_millis(1);

/// The busy-poll rules, shared by the client's and the server's `busy_poll` setters.
macro_rules! busy_poll_doc {
    () => {
        "\n\nOnly where the waiting thread drives the socket's I/O: a current-thread runtime, or a \
         multi-thread runtime with one worker, in a task spawned on it (with more workers a parked worker holds the I/O \
         driver and spinning would only burn CPU, so it is skipped). Each spin lasts at most the \
         budget (at most [`MAX_BUSY_POLL`]) and yields to other tasks between tries; a socket whose last wait took longer than \
         the budget does not spin until a wait ends within it again; one wait spins per thread at \
         a time. On loopback this turns a sequential round trip's two sleeps and wake-ups into \
         polling: the README's benchmark shows twice the sequential rate at no more CPU time per \
         request. `Duration::ZERO` turns it off."
    };
}

mod client;
pub mod direct;
pub(crate) mod frame;
pub mod handoff;
mod server;
pub(crate) mod stream;

pub use client::{WsClient, WsClientConfig, WsTransport};
pub use server::{WsServer, WsServerConfig};
pub(crate) use stream::{AcceptSettings, NetStream, accept_raw, dial_raw};
