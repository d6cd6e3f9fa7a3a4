//! The callback-style facade that the C ABI and the Python and Node bindings wrap, and the
//! plumbing they share (the process runtime, JSON text in and out, the answer-once reply).
//!
//! Rust users drive the core with their own tokio runtime and `async fn`s. Embedders that have no
//! runtime of their own go through this module instead:
//!
//! * a [`Runtime`] object owns the tokio worker threads (never a hidden global runtime) and is shut
//!   down explicitly with [`Runtime::shutdown`], which joins the workers;
//! * one-shot operations take a completion closure `FnOnce(Result<T>) + Send + 'static`; an
//!   [`Ops`] set tracks them so that each completion fires **exactly once**: with the result, with
//!   an error, or with [`ErrorKind::Cancelled`](crate::ErrorKind::Cancelled) when the owning handle
//!   is closed (or the runtime shut down) first;
//! * long-lived handlers are `Arc<dyn Fn ..>` closures (see [`rpc::Handler`](crate::rpc::Handler));
//!   the face attaches its user data to the closure so that its destructor runs exactly once, when
//!   the last clone is dropped.
//!
//! Blocking calls (those that wait for a bind or a stop) refuse to run on a runtime worker thread
//! (they would stall the runtime that must make them progress) and return
//! [`ErrorKind::InvalidState`](crate::ErrorKind::InvalidState) there instead; see [`on_worker_thread`].

mod client;
mod grape;
mod link;
pub(crate) mod ops;
mod pubsub;
pub mod rpc;
mod runtime;
mod server;

pub use client::{ClientOptions, ClientTransportKind, DirectCall, EmbedClient};
pub use grape::{EmbedGrape, GrapeEventDelivery};
pub use link::EmbedLink;
pub use ops::{Gate, Ops, in_completion};
pub use pubsub::{EmbedPublisher, EmbedSubscriber};
pub use rpc::ReplyOnce;
pub use runtime::{Runtime, RuntimeOptions, WORKER_THREADS_ENV, millis, on_worker_thread, shared_runtime};
pub use server::{EmbedServer, ServerOptions, ServerTransportKind};

/// Re-exports the option types the facade's callers fill in.
pub use crate::grape::{GrapeConfig, GrapeEvent};
pub use crate::link::{Keypair, LinkConfig, MutableItem};
pub use crate::pubsub::SubMessage;
pub use crate::rpc::RequestOptions;
pub use crate::tls::{ClientTls, ServerTls};
