//! Grapes (DHT node + HTTP API) for embedders.

use std::time::Duration;

use crate::error::Result;
use crate::grape::{Grape, GrapeConfig};

use super::Runtime;

/// How long starting or stopping a Grape may block.
const GRAPE_TIMEOUT: Duration = Duration::from_secs(10);

/// A running [`Grape`] driven by an embed [`Runtime`].
#[derive(Debug)]
pub struct EmbedGrape {
    rt: Runtime,
    grape: Option<Grape>,
}

impl EmbedGrape {
    /// Starts a Grape. Blocks until its ports are bound (at most 10 s); refuses to run on a
    /// worker thread.
    pub fn start(rt: &Runtime, config: GrapeConfig) -> Result<EmbedGrape> {
        let grape = rt.block_on(GRAPE_TIMEOUT, async move { Grape::start(config).await })?;
        Ok(EmbedGrape { rt: rt.clone(), grape: Some(grape) })
    }

    /// The Grape.
    pub fn grape(&self) -> Option<&Grape> {
        self.grape.as_ref()
    }

    /// Stops the Grape and frees its ports: blocks (at most 10 s) on a thread of the caller's;
    /// on a worker thread the stop runs in the background. Idempotent.
    pub fn stop(&mut self) {
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
