//! The uTP transport (BEP 29 over UDP), wire-compatible with grenache-nodejs-utp, with NAT hole
//! punching and a broker.
//!
//! * [`UtpNode`]: one UDP socket per node. It carries the uTP streams of a server and of any
//!   number of clients (so a NAT mapping opened by a punch, or by talking to a broker, is the
//!   one the RPC uses), punch datagrams and broker requests. [`UtpNode::punch`] punches an
//!   endpoint with retries until the peer answers, or fails with
//!   [`ErrorKind::PunchTimeout`](crate::ErrorKind::PunchTimeout).
//! * [`UtpServer`]: the RPC server on a node ([`ServerTransport`](crate::rpc::ServerTransport)).
//! * [`UtpClient`]: the RPC client ([`ClientTransport`](crate::rpc::ClientTransport)), one
//!   stream per destination with requests multiplexed by rid.
//! * [`broker`]: the rendezvous service that tells two NAT'd peers each other's external
//!   endpoint and tells both to punch at once.
//!
//! Wire: each message is the UTF-8 JSON text of `[rid, key, payload]` (requests) or
//! `[rid, error, result]` (replies), with no framing; the reader splits the stream into JSON
//! texts ([`JsonSplitter`]), so messages split across packets or sharing one are both read. The
//! legacy peer parses every chunk it receives as one message, so by default each message is
//! written on its own and the next waits until it left (messages of up to about 1.3 KB then
//! reach it as one chunk). The punch is the 2-byte datagram `C3 BF` ([`LEGACY_PUNCH`]),
//! recognised only whole. The engine is the `librqbit-utp` crate; datagrams are sorted before it
//! sees them (see [`node`]).
//!
//! Deliberate differences from the reference (also in `docs/compat.md`): split and coalesced
//! messages work; a punch is acknowledged and [`UtpNode::punch`] retries until answered
//! (two-sided punching through port-restricted NATs works); punch events go to every subscriber
//! of the node (not only to the first transport made); closing a server leaves the node's socket
//! to its other users; timeouts fire on time.

pub mod broker;
mod client;
pub mod node;
mod server;
mod split;

pub use client::{UtpClient, UtpClientConfig};
pub use node::{LEGACY_PUNCH, PunchEvent, UtpNode, UtpNodeConfig, UtpNodeStats};
pub use server::{UtpServer, UtpServerConfig};
pub use split::JsonSplitter;

/// The default largest message accepted, in bytes (16 MiB).
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 16 << 20;

/// Writes one message; with `alone`, waits until it left the stream's buffer before returning,
/// so the next message does not share its packets.
pub(crate) async fn write_message(w: &mut librqbit_utp::UtpStreamWriteHalf, msg: &[u8], alone: bool) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    w.write_all(msg).await?;
    if alone {
        w.flush().await?;
    }
    Ok(())
}

/// How much of a message [`write_message_within`] writes at a time.
const PROGRESS_CHUNK: usize = 64 * 1024;

/// Writes one message like [`write_message`], 64 KiB at a time, and fails with `TimedOut` when a
/// piece (or the flush) does not get into the stream's buffer within `stall`: a slow, lossy path
/// keeps a large message going as long as it moves, a dead one ends it.
pub(crate) async fn write_message_within(
    w: &mut librqbit_utp::UtpStreamWriteHalf,
    msg: &[u8],
    alone: bool,
    stall: std::time::Duration,
) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let stalled = || std::io::Error::new(std::io::ErrorKind::TimedOut, "the uTP stream stopped taking data");
    for piece in msg.chunks(PROGRESS_CHUNK) {
        tokio::time::timeout(stall, w.write_all(piece)).await.map_err(|_| stalled())??;
    }
    if alone {
        tokio::time::timeout(stall, w.flush()).await.map_err(|_| stalled())??;
    }
    Ok(())
}
