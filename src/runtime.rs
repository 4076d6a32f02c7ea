//! The driver: runs the core against real sockets. It is the only place that
//! touches both worlds, and it runs on its own OS thread, never on a tokio
//! worker.
//!
//! The core advances in whole ticks on a fixed grid (tick `k` at
//! `start + k·tick`), so its behaviour is the fixed-tick model whatever the
//! driver does. But the driver does not wake for ticks in which nothing is
//! due: when the core has no work pending it sleeps until the core's next
//! deadline, or until an event arrives (the inbox's doorbell), whichever is
//! first; then it hands the core a batch of events and runs the ticks owed
//! in one step. While events keep coming
//! it steps once per grid tick. An idle fleet therefore costs no CPU at all,
//! and an event waits at most one tick. Global's events wait for none: one
//! arriving between ticks gets a step of its own at once, with no ticks in
//! it (a `team.connect` answer frees a request slot and names a socket to
//! dial; a healthcheck wants its reply), so a wave of requests behind the
//! in-flight cap follows the answers, not the grid.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::runtime::Handle;
use tracing::{info, warn};

use crate::bridge::{ConnKind, NetCommand, NetEvent};
use crate::cluster::dispatch::{Dispatch, LeaderLink};
use crate::core::ShutdownCause;
use crate::core::TeamEvent;
use crate::core::{Config, ConfigError};
use crate::core::{Core, Summary};
use crate::inbox::{self, Doorbell, EventReceiver, Wake};
use crate::report::Report;
use crate::tap::Tap;
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
    /// Where message texts and team events go, if anywhere (see
    /// [`crate::tap`]).
    pub tap: Option<Tap>,
}

/// How far a stop has been asked to go (0: not at all).
const STOP: u8 = 1;
const FORCE: u8 = 2;

/// Asks a running driver to stop: gracefully (every socket closed with a
/// normal close, bounded), or at once. Cheap to clone; safe to use from a
/// signal handler task. Wakes a sleeping driver.
#[derive(Clone, Debug, Default)]
pub struct StopHandle(Arc<StopState>);

#[derive(Debug, Default)]
struct StopState {
    level: AtomicU8,
    wake: Mutex<Option<Wake>>,
}

impl StopHandle {
    /// A handle not yet triggered.
    pub fn new() -> StopHandle {
        StopHandle::default()
    }

    /// Asks for a graceful shutdown.
    pub fn stop(&self) {
        self.raise(STOP);
    }

    /// Asks the driver to end now: no waiting for close handshakes; the
    /// report is still taken and the state still saved.
    pub fn force(&self) {
        self.raise(FORCE);
    }

    fn raise(&self, level: u8) {
        self.0.level.fetch_max(level, Ordering::SeqCst);
        if let Ok(wake) = self.0.wake.lock()
            && let Some(wake) = wake.as_ref()
        {
            wake.wake();
        }
    }

    /// Whether a shutdown was asked for.
    pub fn is_stopped(&self) -> bool {
        self.0.level.load(Ordering::SeqCst) >= STOP
    }

    /// Whether an immediate end was asked for.
    pub fn is_forced(&self) -> bool {
        self.0.level.load(Ordering::SeqCst) >= FORCE
    }

    fn attach(&self, wake: Wake) {
        if let Ok(mut slot) = self.0.wake.lock() {
            *slot = Some(wake);
        }
    }
}

/// Why a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunEnd {
    /// The server's `goodbye`, or a local stop, and every socket closed.
    Finished(ShutdownCause),
    /// A shutdown whose close handshakes did not all finish in time.
    ShutdownTimedOut(ShutdownCause),
    /// A forced stop: sockets were dropped without waiting.
    Forced,
    /// A cluster's leader asked to stop: it ended without closing any team
    /// socket, which stay on the workers for the next leader to adopt (the
    /// Global link is closed; the state is saved as at any end).
    HandedOver,
    /// Global stayed unreachable for longer than `give_up_after`.
    GaveUp {
        /// How long it was down.
        down_for: Duration,
        /// The last connection error.
        last_error: String,
    },
}

/// How a run ended. Every end, giving up included, has its report.
#[derive(Clone, Debug)]
pub struct RunOutcome {
    /// Why it ended.
    pub end: RunEnd,
    /// The final report.
    pub report: Report,
    /// The core's final snapshot.
    pub snapshot: crate::core::Snapshot,
    /// Schedule runs.
    pub steps: u64,
    /// Steps that took longer than a tick.
    pub overruns: u64,
    /// Wall time of the run.
    pub elapsed: Duration,
}

/// A run that could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The workers' sockets could not be taken over.
    #[error("taking over the workers' sockets: {0}")]
    Adopt(#[from] crate::core::RestoreError),
}

/// One step, as sidecars see it.
#[derive(Debug)]
pub struct Step<'a> {
    /// When the step ran.
    pub at: Instant,
    /// How long the step (and handing its commands over) took.
    pub took: Duration,
    /// Team lifecycle events of the step, in order.
    pub team_events: &'a [TeamEvent],
    /// Events left waiting in the inbox for the next step (beyond this
    /// step's batch).
    pub inbox_depth: usize,
}

/// Something that runs beside the driver on its thread: it sees the core
/// after every step, and at the end. It must never block: what takes time
/// (disk, network) it hands to a thread or task of its own.
pub trait Sidecar {
    /// Once, before the first step, with a handle that wakes the driver
    /// (for a sidecar that needs the core's attention from elsewhere).
    fn start(&mut self, _core: &mut Core, _wake: &Wake) {}

    /// After each step.
    fn after_step(&mut self, core: &mut Core, step: &Step<'_>);

    /// On a wake-up without a step.
    fn on_wake(&mut self, _core: &mut Core) {}

    /// When it needs calling next even if the core has nothing due.
    fn next_wake(&self) -> Option<Instant> {
        None
    }

    /// The run is over; finish by `deadline`.
    fn finish(&mut self, _core: &mut Core, _end: &RunEnd, _deadline: Instant) {}
}

/// A closure is a sidecar that runs after each step (a progress display).
impl<F: FnMut(&Core)> Sidecar for F {
    fn after_step(&mut self, core: &mut Core, _step: &Step<'_>) {
        self(core)
    }
}

/// Runs until `goodbye`, a stop, or giving up. Blocks the calling thread,
/// which must not be a tokio worker; socket tasks run on `runtime`.
pub fn run(
    config: &RunConfig,
    runtime: Handle,
    stop: &StopHandle,
    sidecars: &mut [&mut dyn Sidecar],
) -> Result<RunOutcome, RunError> {
    run_on(config, runtime, stop, sidecars, None)
}

/// [`run`], with the team sockets on a cluster's workers (the Global link
/// stays here): the leader's run. `None` is [`run`].
pub fn run_on(
    config: &RunConfig,
    runtime: Handle,
    stop: &StopHandle,
    sidecars: &mut [&mut dyn Sidecar],
    cluster: Option<LeaderLink>,
) -> Result<RunOutcome, RunError> {
    let mut driver = Driver::new(config, runtime, stop, sidecars, cluster)?;
    let end = driver.drive(stop, sidecars);
    Ok(driver.finish(end, sidecars))
}

/// The driver's state between steps: the core, the inbox it feeds the core
/// from, the sockets, and the wall clock's bookkeeping.
struct Driver<'a> {
    config: &'a RunConfig,
    core: Core,
    /// Events from the socket tasks, handed to the core a batch per step.
    inbox: EventReceiver,
    doorbell: Doorbell,
    /// The batch being handed over (kept to reuse its allocation).
    batch: Vec<NetEvent>,
    transport: Transport,
    /// The workers' side of the transport, when the team sockets are a
    /// cluster's.
    dispatch: Option<Dispatch>,
    start: Instant,
    grid: Grid,
    overruns: Overruns,
    status: StatusLine,
    last_sweep: Instant,
    global_down_since: Option<Instant>,
    shutdown_at: Option<Instant>,
}

impl<'a> Driver<'a> {
    fn new(
        config: &'a RunConfig,
        runtime: Handle,
        stop: &StopHandle,
        sidecars: &mut [&mut dyn Sidecar],
        cluster: Option<LeaderLink>,
    ) -> Result<Driver<'a>, RunError> {
        let mut core = Core::new(&config.core, config.seed)?;
        let (events, inbox) = inbox::channel();
        // Taken on this thread: the one a ring or a wake unparks.
        let doorbell = inbox.doorbell();
        let wake = doorbell.waker();
        stop.attach(wake.clone());
        for sidecar in sidecars.iter_mut() {
            sidecar.start(&mut core, &wake);
        }
        let dispatch = match cluster {
            Some(link) => {
                let mut dispatch = Dispatch::new(link, &runtime, events.clone(), wake.clone());
                // After the sidecars restored the saved teams: the workers'
                // reports add to those counts.
                dispatch.adopt(&mut core, &runtime)?;
                Some(dispatch)
            }
            None => None,
        };
        let transport = Transport::new(
            runtime,
            events,
            &config.transport,
            &config.core,
            config.tap.clone(),
        );
        let tick = core.tick();
        let start = Instant::now();
        Ok(Driver {
            config,
            core,
            inbox,
            doorbell,
            batch: Vec::new(),
            transport,
            dispatch,
            start,
            grid: Grid {
                start,
                tick,
                done: 0,
            },
            overruns: Overruns::default(),
            status: StatusLine::new(config.status_interval, start),
            last_sweep: start,
            global_down_since: Some(start),
            shutdown_at: None,
        })
    }

    /// Steps on the grid, and sleeps between, until the run ends.
    fn drive(&mut self, stop: &StopHandle, sidecars: &mut [&mut dyn Sidecar]) -> RunEnd {
        loop {
            if stop.is_forced() {
                return RunEnd::Forced;
            }
            if stop.is_stopped() && self.core.shutdown_cause().is_none() {
                if self.dispatch.is_some() {
                    info!(
                        "stop requested: handing the lead over; the team sockets stay on the workers"
                    );
                    return RunEnd::HandedOver;
                }
                info!("stop requested: closing every connection");
                self.core.shutdown();
            }
            if let Some(dispatch) = &mut self.dispatch {
                let late = dispatch.poll();
                if !late.is_empty() {
                    self.core.late_reports(&late);
                }
            }
            let owed = self.grid.owed(Instant::now());
            // An urgent event (Global's) steps at once, between grid ticks,
            // with no time passing: the step's tick count is zero.
            let urgent = self.inbox.take_urgent() && !self.inbox.is_empty();
            if owed > 0 || urgent {
                self.step(owed, sidecars);
            } else {
                for sidecar in sidecars.iter_mut() {
                    sidecar.on_wake(&mut self.core);
                }
            }
            if self.core.is_finished() {
                return RunEnd::Finished(
                    self.core.shutdown_cause().unwrap_or(ShutdownCause::Local),
                );
            }
            let now = Instant::now();
            let wake_by = match self.wall_clock_limits(now, sidecars) {
                Ok(wake_by) => wake_by,
                Err(end) => return end,
            };
            self.status.maybe_log(&self.core, now);
            if now.duration_since(self.last_sweep) >= Duration::from_secs(1) {
                self.transport.sweep();
                self.last_sweep = now;
            }
            self.sleep(wake_by);
        }
    }

    /// Hands the core one batch from the inbox, runs the `owed` ticks in one
    /// step, executes its commands and shows the step to the sidecars.
    fn step(&mut self, owed: u64, sidecars: &mut [&mut dyn Sidecar]) {
        let began = Instant::now();
        let core = &mut self.core;
        let batch = &mut self.batch;
        self.inbox
            .drain(core.settings().max_events_per_step, |event| {
                batch.push(event)
            });
        if let Some(dispatch) = &mut self.dispatch {
            batch.iter().for_each(|event| dispatch.observe(event));
        }
        core.handle_all(batch.drain(..));
        core.step_ticks(owed);
        self.grid.done += owed;
        match &mut self.dispatch {
            None => {
                for command in core.drain_commands() {
                    self.transport.execute(command);
                }
            }
            Some(dispatch) => {
                for command in core.drain_commands() {
                    let team = match &command {
                        NetCommand::Open { kind, .. } => matches!(kind, ConnKind::Team(_)),
                        other => dispatch.owns(other.conn()),
                    };
                    if team {
                        dispatch.execute(command);
                    } else {
                        self.transport.execute(command);
                    }
                }
                dispatch.flush();
            }
        }
        let took = began.elapsed();
        let team_events = core.drain_team_events();
        if let Some(tap) = &self.config.tap {
            for event in &team_events {
                tap.team_event(event.clone());
            }
        }
        let step = Step {
            at: began,
            took,
            team_events: &team_events,
            inbox_depth: self.inbox.len(),
        };
        for sidecar in sidecars.iter_mut() {
            sidecar.after_step(core, &step);
        }
        if took > self.grid.tick {
            self.overruns.note(took);
        }
    }

    /// The wall-clock limits (status line, sidecars, a shutdown's bound,
    /// giving up on Global): the earliest is a reason to wake; one that has
    /// passed ends the run.
    fn wall_clock_limits(
        &mut self,
        now: Instant,
        sidecars: &[&mut dyn Sidecar],
    ) -> Result<Option<Instant>, RunEnd> {
        let mut wake_by: Option<Instant> = self.status.next();
        for sidecar in sidecars.iter() {
            wake_by = earliest(wake_by, sidecar.next_wake());
        }
        if let Some(dispatch) = &self.dispatch {
            wake_by = earliest(wake_by, dispatch.next_wake());
        }
        if let Some(cause) = self.core.shutdown_cause() {
            // Past this, a shutdown stops waiting for close handshakes.
            let limit = *self.shutdown_at.get_or_insert(now)
                + self.config.core.close_timeout * 2
                + Duration::from_secs(1);
            if now >= limit {
                warn!("shutdown took too long; dropping the remaining sockets");
                return Err(RunEnd::ShutdownTimedOut(cause));
            }
            wake_by = earliest(wake_by, Some(limit));
        } else if let Some(limit) = self.config.give_up_after {
            if self.core.global().ready_conn().is_some() {
                self.global_down_since = None;
            } else {
                let since = *self.global_down_since.get_or_insert(now);
                if now >= since + limit {
                    return Err(RunEnd::GaveUp {
                        down_for: now.duration_since(since),
                        last_error: self
                            .core
                            .global()
                            .last_error()
                            .unwrap_or("no answer")
                            .to_owned(),
                    });
                }
                wake_by = earliest(wake_by, Some(since + limit));
            }
        }
        Ok(wake_by)
    }

    /// Sleeps until the next step is due.
    fn sleep(&self, wake_by: Option<Instant>) {
        if self.inbox.has_urgent() {
            // An urgent event came during the step: step again now.
        } else if self.core.has_pending_work() || !self.inbox.is_empty() {
            // Work for the next grid tick: sleep until it, woken early only
            // by a stop or an urgent event (other events wait for the tick).
            let next = self.grid.at(self.grid.done + 1);
            if let Some(left) = next.checked_duration_since(Instant::now()) {
                std::thread::park_timeout(left);
            }
        } else {
            // Idle: sleep until the core's next deadline, an event, or a
            // wall-clock limit, whichever is first.
            let deadline = self.core.next_deadline().map(|d| self.grid.at_or_after(d));
            self.doorbell.wait(earliest(deadline, wake_by));
        }
    }

    /// Drops what is left of the sockets, lets the sidecars finish, and
    /// takes the report.
    fn finish(mut self, end: RunEnd, sidecars: &mut [&mut dyn Sidecar]) -> RunOutcome {
        self.transport.abort_all();
        let finish_by = Instant::now() + FINISH_LIMIT;
        for sidecar in sidecars.iter_mut() {
            sidecar.finish(&mut self.core, &end, finish_by);
        }
        let snapshot = self.core.snapshot();
        RunOutcome {
            end,
            report: Report::from_snapshot(&snapshot),
            steps: snapshot.clock.step,
            snapshot,
            overruns: self.overruns.count,
            elapsed: self.start.elapsed(),
        }
    }
}

/// Steps that took longer than a tick, logged at most every 10 s.
#[derive(Default)]
struct Overruns {
    count: u64,
    last_log: Option<Instant>,
}

impl Overruns {
    fn note(&mut self, took: Duration) {
        self.count += 1;
        if self
            .last_log
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(10))
        {
            warn!(
                took_ms = took.as_millis() as u64,
                overruns = self.count,
                "step overran its tick"
            );
            self.last_log = Some(Instant::now());
        }
    }
}

/// How long sidecars get, together, to finish (save, publish) at the end.
const FINISH_LIMIT: Duration = Duration::from_secs(5);

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The fixed grid of ticks on the wall clock.
struct Grid {
    start: Instant,
    tick: Duration,
    /// Ticks the core has advanced through.
    done: u64,
}

impl Grid {
    /// When tick `k` is due.
    fn at(&self, k: u64) -> Instant {
        self.start
            + self
                .tick
                .saturating_mul(u32::try_from(k).unwrap_or(u32::MAX))
    }

    /// Ticks due by `now` that the core has not run yet.
    fn owed(&self, now: Instant) -> u64 {
        let elapsed = now.duration_since(self.start).as_nanos();
        let due = u64::try_from(elapsed / self.tick.as_nanos().max(1)).unwrap_or(u64::MAX);
        due.saturating_sub(self.done)
    }

    /// The first grid tick at which core time has reached `core_time`.
    fn at_or_after(&self, core_time: Duration) -> Instant {
        let tick = self.tick.as_nanos().max(1);
        let k = core_time.as_nanos().div_ceil(tick);
        self.at(u64::try_from(k).unwrap_or(u64::MAX).max(self.done + 1))
    }
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

    fn next(&self) -> Option<Instant> {
        self.every.map(|every| self.last + every)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grid_owes_whole_ticks_and_rounds_deadlines_up() {
        let start = Instant::now();
        let mut grid = Grid {
            start,
            tick: Duration::from_millis(10),
            done: 0,
        };
        assert_eq!(grid.owed(start + Duration::from_millis(9)), 0);
        assert_eq!(grid.owed(start + Duration::from_millis(35)), 3);
        grid.done = 3;
        assert_eq!(grid.owed(start + Duration::from_millis(39)), 0);
        assert_eq!(
            grid.at_or_after(Duration::from_millis(41)),
            start + Duration::from_millis(50)
        );
        // Never a tick already run.
        assert_eq!(
            grid.at_or_after(Duration::from_millis(5)),
            start + Duration::from_millis(40)
        );
    }
}
