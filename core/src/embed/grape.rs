//! Grapes (DHT node + HTTP API) for embedders.

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;

use crate::error::{Error, ErrorKind, Result};
use crate::grape::{Grape, GrapeConfig, GrapeEvent};

use super::{Gate, Runtime};

/// How long starting or stopping a Grape may block.
const GRAPE_TIMEOUT: Duration = Duration::from_secs(10);

/// A running [`Grape`] driven by an embed [`Runtime`].
#[derive(Debug)]
pub struct EmbedGrape {
    rt: Runtime,
    grape: Option<Grape>,
    /// The event listeners: their gates and tasks, closed by [`EmbedGrape::stop`].
    listeners: Mutex<Vec<(Gate, tokio::task::AbortHandle)>>,
}

/// What an event listener of an [`EmbedGrape`] receives.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum GrapeEventDelivery<'a> {
    /// An event of the Grape.
    Event(&'a GrapeEvent),
    /// The listener fell behind by more than [`crate::grape::EVENT_CAPACITY`] events: this many
    /// of the oldest were dropped for it.
    Lagged(u64),
}

impl EmbedGrape {
    /// Starts a Grape. Blocks until its ports are bound (at most 10 s); refuses to run on a
    /// worker thread.
    pub fn start(rt: &Runtime, config: GrapeConfig) -> Result<EmbedGrape> {
        let grape = rt.block_on(GRAPE_TIMEOUT, async move { Grape::start(config).await })?;
        Ok(EmbedGrape { rt: rt.clone(), grape: Some(grape), listeners: Mutex::new(Vec::new()) })
    }

    /// Calls `on_event` for each event of the Grape, on a worker thread, one at a time, until
    /// [`EmbedGrape::stop`]; `on_event` is dropped (with what it owns) once it cannot run again.
    ///
    /// The first delivery is [`GrapeEvent::Listening`] (the Grape is bound since it started),
    /// then [`GrapeEvent::Ready`] once the bootstrap walk has finished (at once when it already
    /// has), then the events as they happen. Memory is bounded: a listener that falls more than
    /// [`crate::grape::EVENT_CAPACITY`] events behind misses the oldest and is told how many with
    /// [`GrapeEventDelivery::Lagged`]. Errors: `InvalidState` once stopped.
    pub fn on_event(&self, on_event: impl Fn(GrapeEventDelivery<'_>) + Send + Sync + 'static) -> Result<()> {
        let Some(grape) = self.grape.clone() else {
            return Err(Error::new(ErrorKind::InvalidState, "the Grape is stopped"));
        };
        if !self.rt.is_running() {
            return Err(Error::new(ErrorKind::Cancelled, "the runtime was shut down"));
        }
        // Subscribe before looking at readiness, so that a Ready between the two is not lost
        // (it may then be seen twice: the second is skipped).
        let mut rx = grape.events();
        let gate = Gate::new();
        let g2 = gate.clone();
        let task = self.rt.handle().spawn(async move {
            let deliver = |d: GrapeEventDelivery<'_>| g2.run(|| on_event(d));
            if !deliver(GrapeEventDelivery::Event(&GrapeEvent::Listening)) {
                return;
            }
            let mut ready_sent = false;
            if grape.dht().is_ready() {
                ready_sent = true;
                if !deliver(GrapeEventDelivery::Event(&GrapeEvent::Ready)) {
                    return;
                }
            }
            drop(grape);
            loop {
                let delivered = match rx.recv().await {
                    Ok(GrapeEvent::Listening) => true,
                    Ok(GrapeEvent::Ready) if ready_sent => true,
                    Ok(ev) => {
                        ready_sent |= ev == GrapeEvent::Ready;
                        deliver(GrapeEventDelivery::Event(&ev))
                    }
                    Err(RecvError::Lagged(n)) => deliver(GrapeEventDelivery::Lagged(n)),
                    Err(RecvError::Closed) => break,
                };
                if !delivered {
                    break;
                }
            }
        });
        self.listeners.lock().unwrap_or_else(|p| p.into_inner()).push((gate, task.abort_handle()));
        Ok(())
    }

    /// The Grape.
    pub fn grape(&self) -> Option<&Grape> {
        self.grape.as_ref()
    }

    /// Stops the Grape and frees its ports: blocks (at most 10 s) on a thread of the caller's;
    /// on a worker thread the stop runs in the background. Idempotent.
    pub fn stop(&mut self) {
        // Listeners first: after this no event callback runs (except the one calling stop).
        for (gate, task) in self.listeners.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            gate.close(super::link::CLOSE_WAIT);
            task.abort();
        }
        let Some(g) = self.grape.take() else { return };
        if super::on_worker_thread() {
            self.rt.spawn(async move { g.stop().await });
        } else {
            let _ = self.rt.block_on(GRAPE_TIMEOUT, async move {
                g.stop().await;
                Ok(())
            });
        }
    }
}

impl Drop for EmbedGrape {
    fn drop(&mut self) {
        self.stop();
    }
}
