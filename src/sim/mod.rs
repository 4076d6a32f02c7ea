//! The simulator: a Global API server that plays a scenario, injects faults
//! on demand, keeps a ground truth of everything it sent, and checks every
//! healthcheck reply against it. It is the built-in demo, the end-to-end
//! test fixture and the load generator.
//!
//! It speaks `PROTOCOL.md` with the same wire types as the client. Team URLs
//! are single-use (`/team/<id>/<token>`), a `team.connect` for a team that is
//! not joined gets an `error` carrying `received_message`, every `ping` gets
//! its `pong`. Exactness under faults: a message is booked only once its
//! write was flushed; a graceful close flushes first; before a reset (which
//! may discard data in flight) the team is paused and the client must
//! confirm, by healthcheck, every message written, so the truth stays exact.

mod director;
pub mod ledger;
mod server;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use ledger::Ledger;
pub use ledger::{Fault, FaultCount, Verdict};

use crate::protocol::TeamId;

/// What the simulated run looks like.
#[derive(Clone, Debug, PartialEq)]
pub struct Scenario {
    /// Teams that join.
    pub teams: u64,
    /// Messages each team receives over the run (unless it leaves for good).
    pub messages: u64,
    /// Messages per second per team.
    pub rate: f64,
    /// Fraction of messages whose text contains `props`.
    pub props_fraction: f64,
    /// Joins are spread evenly over this long.
    pub join_over: Duration,
    /// How often a `healthcheck` is asked during the run.
    pub healthcheck_every: Duration,
    /// Fraction of teams that leave during the run.
    pub leave_fraction: f64,
    /// Of those, the fraction told on Global (the rest on their socket).
    pub leave_on_global: f64,
    /// Of those, the fraction that join again shortly after.
    pub rejoin_fraction: f64,
    /// The run fails if it is not over by then.
    pub max_duration: Duration,
    /// Size of the oversized frame (above the client's limit).
    pub oversize_bytes: usize,
    /// How long a slow reader stops reading.
    pub slow_read_for: Duration,
    /// How long a delayed `hello` is held back.
    pub delayed_hello_for: Duration,
}

impl Default for Scenario {
    fn default() -> Self {
        Scenario {
            teams: 50,
            messages: 200,
            rate: 50.0,
            props_fraction: 0.2,
            join_over: Duration::from_secs(1),
            healthcheck_every: Duration::from_millis(500),
            leave_fraction: 0.1,
            leave_on_global: 0.5,
            rejoin_fraction: 0.5,
            max_duration: Duration::from_secs(120),
            oversize_bytes: 2 << 20,
            slow_read_for: Duration::from_millis(1500),
            delayed_hello_for: Duration::from_millis(300),
        }
    }
}

/// Fault rates. For `connect-error` and `delayed-hello` the value is a
/// probability per request / per new socket; for every other fault it is
/// injections per second across the whole fleet.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Chaos(pub BTreeMap<Fault, f64>);

impl Chaos {
    /// No faults.
    pub fn none() -> Chaos {
        Chaos::default()
    }

    /// The default mix scaled by `level` (0 = none, 1 = default).
    pub fn level(level: f64) -> Chaos {
        let mix = [
            (Fault::TeamClose, 1.0),
            (Fault::TeamErrorClose, 1.0),
            (Fault::TeamReset, 0.5),
            (Fault::GlobalDrop, 0.2),
            (Fault::Zombie, 0.3),
            (Fault::Garbage, 3.0),
            (Fault::ConnectError, 0.05),
            (Fault::DuplicateJoin, 1.0),
            (Fault::DelayedHello, 0.05),
            (Fault::Oversize, 0.3),
            (Fault::SlowReader, 0.3),
        ];
        let probability = |f: Fault| matches!(f, Fault::ConnectError | Fault::DelayedHello);
        Chaos(
            mix.into_iter()
                .filter(|_| level > 0.0)
                .map(|(f, r)| {
                    let scaled = r * level;
                    (
                        f,
                        if probability(f) {
                            scaled.min(0.9)
                        } else {
                            scaled
                        },
                    )
                })
                .collect(),
        )
    }

    /// Only `fault`, at `rate`.
    pub fn only(fault: Fault, rate: f64) -> Chaos {
        Chaos(BTreeMap::from([(fault, rate)]))
    }

    /// The rate (or probability) of `fault`.
    pub fn rate(&self, fault: Fault) -> f64 {
        self.0.get(&fault).copied().unwrap_or(0.0)
    }
}

/// Everything a simulator run needs.
#[derive(Clone, Debug, PartialEq)]
pub struct SimConfig {
    /// Where to listen (port 0 for an ephemeral one).
    pub listen: SocketAddr,
    /// The run.
    pub scenario: Scenario,
    /// The faults.
    pub chaos: Chaos,
    /// Seed for every random decision.
    pub seed: u64,
}

/// Live numbers for a progress display.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct SimProgress {
    /// Teams announced.
    pub teams: usize,
    /// Teams with a usable socket, as the server sees them.
    pub connected: usize,
    /// Messages written.
    pub messages: u64,
    /// Faults injected.
    pub faults: u64,
    /// Healthcheck replies checked.
    pub healthchecks: u64,
    /// Whether a client has connected yet.
    pub started: bool,
}

/// State shared by the server tasks and the director.
pub(crate) struct Shared {
    ledger: Mutex<Ledger>,
    scenario: Scenario,
    chaos: Chaos,
    seed: u64,
    addr: SocketAddr,
    started: OnceLock<std::time::Instant>,
    global_seen: Notify,
}

impl Shared {
    /// The ledger. A poisoned lock is still usable: the ledger holds plain
    /// counters that stay meaningful if a task panicked mid-update.
    fn lock(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a probability-type fault fires now.
    fn roll(&self, ledger: &mut Ledger, fault: Fault) -> bool {
        let p = self.chaos.rate(fault);
        ledger.chaos_on && p > 0.0 && ledger.rng.f64() < p
    }

    /// A delayed-hello decision for a new socket.
    fn roll_delayed_hello(&self, ledger: &mut Ledger, team: Option<TeamId>) -> Option<Duration> {
        if self.roll(ledger, Fault::DelayedHello) {
            ledger.injected(Fault::DelayedHello, team);
            Some(self.scenario.delayed_hello_for)
        } else {
            None
        }
    }
}

/// A running simulator.
pub struct SimServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    director: JoinHandle<Verdict>,
    acceptor: JoinHandle<()>,
}

impl SimServer {
    /// Binds and starts serving; the scenario begins when a client opens
    /// `/global`. Must be called inside a tokio runtime.
    pub async fn start(config: SimConfig) -> std::io::Result<SimServer> {
        let listener = TcpListener::bind(config.listen).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            ledger: Mutex::new(Ledger::new(config.seed)),
            scenario: config.scenario,
            chaos: config.chaos,
            seed: config.seed,
            addr,
            started: OnceLock::new(),
            global_seen: Notify::new(),
        });
        let acceptor = tokio::spawn(server::accept_loop(listener, shared.clone()));
        let director = tokio::spawn(director::direct(shared.clone()));
        Ok(SimServer {
            addr,
            shared,
            director,
            acceptor,
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The Global URL a client should open.
    pub fn global_url(&self) -> String {
        format!("ws://{}/global", self.addr)
    }

    /// Live numbers.
    pub fn progress(&self) -> SimProgress {
        progress(&self.shared)
    }

    /// A cheap handle for reading progress from another thread.
    pub fn progress_handle(&self) -> ProgressHandle {
        ProgressHandle(self.shared.clone())
    }

    /// Waits for the run to end and returns the verdict.
    pub async fn verdict(self) -> Verdict {
        let verdict = match self.director.await {
            Ok(verdict) => verdict,
            Err(error) => Verdict {
                verified: false,
                teams: 0,
                messages: 0,
                props: 0,
                faults: BTreeMap::new(),
                healthchecks_checked: 0,
                global_connects: 0,
                max_sockets_per_team: 0,
                mismatches: vec![format!("simulator director failed: {error}")],
                duration: Duration::ZERO,
            },
        };
        self.acceptor.abort();
        verdict
    }
}

/// Reads a simulator's progress from anywhere.
#[derive(Clone)]
pub struct ProgressHandle(Arc<Shared>);

impl ProgressHandle {
    /// Live numbers.
    pub fn progress(&self) -> SimProgress {
        progress(&self.0)
    }
}

fn progress(shared: &Shared) -> SimProgress {
    let ledger = shared.lock();
    SimProgress {
        teams: ledger.teams.len(),
        connected: ledger.teams.values().filter(|t| t.connected()).count(),
        messages: ledger.teams.values().map(|t| t.written).sum(),
        faults: ledger.faults.values().map(|f| f.injected).sum(),
        healthchecks: ledger.replies_checked,
        started: shared.started.get().is_some(),
    }
}
