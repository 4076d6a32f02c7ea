//! The driver: runs the core on a fixed tick against real sockets. It is the
//! only place that touches both worlds, and it runs on its own OS thread
//! (it sleeps between ticks), never on a tokio worker.
//!
//! Each tick: step the core (which drains the bridge), hand its commands to
//! the transport. The core's clock is fed the real time elapsed, which on a
//! punctual tick is exactly one tick; a tick that overran is counted and
//! logged, and the next step covers the time it lost, so timeouts stay true
//! to the wall clock instead of drifting behind it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::runtime::Handle;
use tracing::{info, warn};

use crate::core::config::{Config, ConfigError};
use crate::core::resources::ShutdownCause;
use crate::core::{Core, Summary};
use crate::report::Report;
use crate::transport::{Transport, TransportConfig};

/// Everything a run needs.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// The core's tunables (Global URL, tick, pings, backoff, timeouts).
    pub core: Config,
    /// Socket limits.
    pub transport: TransportConfig,
    /// Seed for backoff jitter.
    pub seed: u64,
    /// How often to log a one-line status; `None` for never.
    pub status_interval: Option<Duration>,
    /// Give up (error) when Global has been unreachable this long; `None`
    /// to keep retrying forever, as a service should.
    pub give_up_after: Option<Duration>,
}

/// Asks a running driver to shut down gracefully. Cheap to clone; safe to
/// trigger from a signal handler task.
#[derive(Clone, Debug, Default)]
pub struct StopHandle(Arc<AtomicBool>);

impl StopHandle {
    /// A handle not yet triggered.
    pub fn new() -> StopHandle {
        StopHandle::default()
    }

    /// Asks for a graceful shutdown.
    pub fn stop(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Whether a shutdown was asked for.
    pub fn is_stopped(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// How a run ended.
#[derive(Clone, Debug)]
pub struct RunOutcome {
    /// The server's `goodbye`, or a local stop.
    pub cause: ShutdownCause,
    /// The final report.
    pub report: Report,
    /// The core's final snapshot.
    pub snapshot: crate::core::snapshot::Snapshot,
    /// Ticks run.
    pub ticks: u64,
    /// Ticks that overran their slot by more than a whole tick.
    pub overruns: u64,
    /// Wall time of the run.
    pub elapsed: Duration,
}

/// A run that could not go on.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Global stayed unreachable for longer than `give_up_after`.
    #[error("Global API unreachable for {}ms: {last_error}", .down_for.as_millis())]
    GaveUp {
        /// How long it was down.
        down_for: Duration,
        /// The last connection error.
        last_error: String,
    },
}

/// Called once per tick with the core, for progress displays.
pub type OnTick<'a> = &'a mut dyn FnMut(&Core);

/// Runs until `goodbye`, a stop, or giving up. Blocks the calling thread,
/// which must not be a tokio worker; socket tasks run on `runtime`.
pub fn run(
    config: &RunConfig,
    runtime: Handle,
    stop: &StopHandle,
    on_tick: OnTick<'_>,
) -> Result<RunOutcome, RunError> {
    let mut core = Core::new(&config.core, config.seed)?;
    let transport_config = TransportConfig {
        connect_timeout: config.core.connect_timeout,
        close_timeout: config.core.close_timeout,
        ..config.transport.clone()
    };
    let mut transport = Transport::new(runtime, core.event_sender(), transport_config);
    let tick = config.core.tick;
    let start = Instant::now();
    let mut next_tick = start + tick;
    let mut overruns = 0u64;
    let mut last_overrun_log: Option<Instant> = None;
    let mut status = StatusLine::new(config.status_interval, start);
    let mut last_sweep = start;
    let mut global_down_since: Option<Instant> = Some(start);
    let mut shutdown_at: Option<Instant> = None;
    // Past this, a shutdown stops waiting for close handshakes.
    let shutdown_limit = config.core.close_timeout * 2 + Duration::from_secs(1);

    loop {
        if stop.is_stopped() && core.shutdown_cause().is_none() {
            info!("stop requested: closing every connection");
            core.shutdown();
        }
        let elapsed = start.elapsed();
        core.step_by(elapsed.saturating_sub(core.now()));
        for command in core.drain_commands() {
            transport.execute(command);
        }
        on_tick(&core);
        let now = Instant::now();

        if core.is_finished() {
            break;
        }
        if core.shutdown_cause().is_some() {
            let since = *shutdown_at.get_or_insert(now);
            if now.duration_since(since) > shutdown_limit {
                warn!("shutdown took too long; dropping the remaining sockets");
                break;
            }
        } else if let Some(limit) = config.give_up_after {
            if core.global().ready_conn().is_some() {
                global_down_since = None;
            } else {
                let since = *global_down_since.get_or_insert(now);
                if now.duration_since(since) >= limit {
                    transport.abort_all();
                    return Err(RunError::GaveUp {
                        down_for: now.duration_since(since),
                        last_error: core
                            .global()
                            .last_error
                            .clone()
                            .unwrap_or_else(|| "no answer".into()),
                    });
                }
            }
        }
        status.maybe_log(&core, now);
        if now.duration_since(last_sweep) >= Duration::from_secs(1) {
            transport.sweep();
            last_sweep = now;
        }

        if now > next_tick + tick {
            overruns += 1;
            if last_overrun_log.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(10)) {
                warn!(
                    behind_ms = now.duration_since(next_tick).as_millis() as u64,
                    overruns, "tick overran"
                );
                last_overrun_log = Some(now);
            }
            next_tick = now + tick;
        } else {
            if next_tick > now {
                std::thread::sleep(next_tick - now);
            }
            next_tick += tick;
        }
    }
    transport.abort_all();
    let snapshot = core.snapshot();
    Ok(RunOutcome {
        cause: core.shutdown_cause().unwrap_or(ShutdownCause::Local),
        report: Report::from_snapshot(&snapshot),
        ticks: snapshot.clock.tick,
        snapshot,
        overruns,
        elapsed: start.elapsed(),
    })
}

/// The periodic one-line status on stderr (through tracing).
struct StatusLine {
    every: Option<Duration>,
    last: Instant,
    last_messages: u64,
}

impl StatusLine {
    fn new(every: Option<Duration>, start: Instant) -> StatusLine {
        StatusLine {
            every,
            last: start,
            last_messages: 0,
        }
    }

    fn maybe_log(&mut self, core: &Core, now: Instant) {
        let Some(every) = self.every else {
            return;
        };
        let since = now.duration_since(self.last);
        if since < every {
            return;
        }
        let Summary {
            teams,
            connected,
            reconnecting,
            left,
            messages,
            reconnects,
            global_connected,
            ..
        } = core.summary();
        let rate = (messages - self.last_messages) as f64 / since.as_secs_f64();
        info!(
            target: "switchboard::status",
            global = if global_connected { "up" } else { "down" },
            teams, connected, reconnecting, left,
            msgs_per_sec = rate.round() as u64,
            messages, reconnects,
            "status"
        );
        self.last = now;
        self.last_messages = messages;
    }
}
