//! Publishing to NATS JetStream (`--publish`): every message a team socket
//! reads, and every team lifecycle event, becomes a record in a durable
//! stream that any number of workers consume (see `examples/worker.rs`).
//!
//! The publisher is a consumer of the [`crate::tap`]: it holds each record's
//! share of the tap's byte budget until JetStream acknowledges it, so when
//! NATS is slow or down the budget runs out, team sockets with a message in
//! hand stop reading, and TCP pushes back on the server. Nothing is dropped
//! and the buffer never passes its bound (plus at most one message per
//! ending socket, as the tap says). Counts in healthcheck replies are the
//! core's, as without publishing.
//!
//! Exactly once: a team's records go out one at a time, in order, each
//! with a message id fixed when it was taken ([`record`]); a retry carries
//! the same id, so JetStream's duplicate window drops it, and a retry after
//! an unanswered attempt first asks the stream whether it already holds it.
//!
//! - [`config`]: the settings and their defaults.
//! - [`record`]: subjects, payloads and message ids.
//! - [`outbox`]: the per-team lanes and their retry delays (pure).
//! - [`broker`]: what the publisher asks of JetStream, on `async-nats`.
//! - `engine`: the task that drives it all.

pub mod broker;
pub mod config;
mod engine;
pub mod outbox;
pub mod record;
mod stats;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use broker::{Ack, Broker, BrokerError, JetStream};
pub use config::{Discard, PublishConfig, PublishConfigError, Retention, StreamSettings};
pub use stats::{PublishStats, PublishWatch};

use crate::tap::{Tap, tap};
use engine::Engine;
use outbox::Outbox;
use stats::Counters;

/// Why the publisher could not start.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The configuration cannot work.
    #[error(transparent)]
    Config(#[from] PublishConfigError),
    /// The NATS client refused to start (not a server that is down: that
    /// is waited for).
    #[error("NATS {0}")]
    Broker(#[from] BrokerError),
}

/// A running publisher: hand [`Publisher::tap`] to the run, then
/// [`Publisher::finish`] once the run is over.
pub struct Publisher {
    tap: Option<Tap>,
    counters: Arc<Counters>,
    task: JoinHandle<()>,
    stop: Option<oneshot::Sender<()>>,
    run: String,
}

impl Publisher {
    /// Starts publishing to JetStream as `config` says. Returns at once
    /// even if NATS is not up yet: the stream is created, and records
    /// published, as soon as it is. Must be called inside a tokio runtime.
    pub async fn start(config: &PublishConfig) -> Result<Publisher, PublishError> {
        config.validate()?;
        let broker = JetStream::connect(config).await?;
        Ok(Publisher::with_broker(config, broker, record::run_id()))
    }

    /// A publisher on any [`Broker`] (the tests script one), for run `run`.
    pub fn with_broker<B: Broker>(config: &PublishConfig, broker: B, run: String) -> Publisher {
        let (tap, receiver) = tap(config.buffer_bytes);
        let counters = Arc::new(Counters::default());
        Counters::set(&counters.budget, tap.free() as u64);
        let (stop_tx, stop) = oneshot::channel();
        let engine = Engine {
            broker,
            tap: receiver,
            outbox: Outbox::new(run.clone(), config.stream.subject_prefix.clone()),
            counters: counters.clone(),
            budget: tap.free(),
            max_in_flight: config.max_in_flight,
            stop,
        };
        Publisher {
            tap: Some(tap),
            counters,
            task: tokio::spawn(engine.run()),
            stop: Some(stop_tx),
            run,
        }
    }

    /// The tap to give the run ([`crate::runtime::RunConfig::tap`]).
    pub fn tap(&self) -> Option<Tap> {
        self.tap.clone()
    }

    /// This process's run id, the first part of every message id.
    pub fn run_id(&self) -> &str {
        &self.run
    }

    /// A view of the numbers that outlives nothing (for `/metrics`).
    pub fn watch(&self) -> PublishWatch {
        PublishWatch(self.counters.clone())
    }

    /// The numbers so far.
    pub fn stats(&self) -> PublishStats {
        self.counters.snapshot()
    }

    /// Once the run is over (every other holder of the tap dropped it):
    /// waits up to `within` for every record to be acknowledged, then
    /// stops. What is still unacknowledged then is logged and counted in
    /// [`PublishStats::waiting`].
    pub async fn finish(mut self, within: Duration) -> PublishStats {
        self.tap = None;
        let drained = tokio::time::timeout(within, &mut self.task).await.is_ok();
        if !drained {
            if let Some(stop) = self.stop.take() {
                let _ = stop.send(());
            }
            // The engine stops at its next wake; it never blocks.
            let _ = tokio::time::timeout(Duration::from_secs(1), &mut self.task).await;
        }
        self.task.abort();
        self.counters.snapshot()
    }
}
