//! The simulator: a Global API server that plays a scenario, injects faults
//! (at rates, or at set points of a schedule), keeps a ground truth of
//! everything it sent, checks every healthcheck reply against it, and calls
//! a fault survived only once it saw the client recover from it. It is the
//! built-in demo, the end-to-end test fixture and the load generator.
//!
//! It speaks `PROTOCOL.md` with the same wire types as the client. Team URLs
//! are single-use (`/team/<id>/<token>`), a `team.connect` for a team that is
//! not joined gets an `error` carrying `received_message`, every `ping` gets
//! its `pong`. Exactness under faults: a message is booked only once its
//! write was flushed; a graceful close flushes first; before a reset (which
//! may discard data in flight) the team is paused and the client must
//! confirm, by healthcheck, every message written, so the truth stays exact.
//!
//! A client that restarts mid-run (Global and every team socket closed with
//! 1000 without a `goodbye`, then a new Global that re-requests every team)
//! is not a fault and breaks no rule by itself: the new Global gets `hello`
//! and every joined team again, its requests get fresh URLs, and its counts
//! are held to the same truth (so a restart that lost counts fails on
//! "went down").
//!
//! Files, from the bottom up (each imports only files below it): TLS (the
//! certificate, the handshakes seen), faults
//! and [`Chaos`] rates, the write pace, the [`Schedule`] of set-point
//! faults, the [`Verdict`], what every socket shares (its orders and frame
//! helpers); [`Scenario`] (what a run looks like, and what is refused), the
//! per-team truth, the survival rules; the ledger, the one writer of the
//! book, fed by what the others report; the state shared under its lock;
//! healthcheck asks, the plan, injection; the team and Global sockets and
//! the listener; the phases (play, recovery, goodbye) run by the director;
//! and this file, which starts it all.

mod ask;
mod director;
mod faults;
mod global_socket;
mod goodbye;
mod inject;
mod ledger;
mod listener;
mod pace;
mod plan;
mod play;
mod recovery;
mod scenario;
mod schedule;
mod shared;
mod socket;
mod survival;
mod team_socket;
mod tls;
mod truth;
mod verdict;

use std::net::SocketAddr;
use std::sync::Arc;

use serde::Serialize;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use faults::{Chaos, Fault};
pub use pace::max_rate;
pub use scenario::{MAX_OVERSIZE, MAX_RUN, MAX_TEAMS, PLAY_BUDGET, Scenario, ScenarioError};
pub use schedule::{Schedule, Trigger};
use shared::Shared;
pub use tls::{Handshakes, TlsSetupError};
pub use verdict::{Disconnect, FaultCount, TeamCount, Verdict, thousands};

/// Everything a simulator run needs.
#[derive(Clone, Debug, PartialEq)]
pub struct SimConfig {
    /// Where to listen (port 0 for an ephemeral one).
    pub listen: SocketAddr,
    /// The run.
    pub scenario: Scenario,
    /// Faults at rates.
    pub chaos: Chaos,
    /// Faults at set points.
    pub schedule: Schedule,
    /// Seed for every random decision.
    pub seed: u64,
    /// Serve `wss://` with a certificate generated at start (see
    /// [`SimServer::certificate_pem`]) instead of `ws://`.
    pub tls: bool,
}

impl SimConfig {
    /// Refuses a run that is empty, impossible or cannot end in time.
    pub fn validate(&self) -> Result<(), ScenarioError> {
        self.scenario.validate()?;
        self.chaos.validate()?;
        self.schedule.validate(self.scenario.teams)
    }
}

/// Why a simulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The scenario is refused.
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
    /// The listener could not bind.
    #[error("cannot listen: {0}")]
    Bind(#[from] std::io::Error),
    /// TLS was asked for and could not be set up.
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
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

/// A running simulator.
pub struct SimServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    director: JoinHandle<Verdict>,
    acceptor: JoinHandle<()>,
}

/// The listener's accept queue (the kernel caps it at somaxconn).
const ACCEPT_BACKLOG: u32 = 16_384;

impl SimServer {
    /// Validates the run, binds and starts serving; the scenario begins
    /// when a client opens `/global`. Must be called inside a tokio runtime.
    pub async fn start(config: SimConfig) -> Result<SimServer, SimError> {
        config.validate()?;
        // A deep accept queue: ten thousand teams connect at once, and a
        // full queue costs a client a one-second SYN retry.
        let socket = match config.listen {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        socket.set_reuseaddr(true)?;
        socket.bind(config.listen)?;
        let listener: TcpListener = socket.listen(ACCEPT_BACKLOG)?;
        let addr = listener.local_addr()?;
        let tls = match config.tls {
            true => Some(tls::SimTls::new(addr.ip())?),
            false => None,
        };
        let shared = Arc::new(Shared::new(
            config.scenario,
            config.chaos,
            config.schedule,
            config.seed,
            addr,
            tls,
        ));
        let acceptor = tokio::spawn(listener::accept_loop(listener, shared.clone()));
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
        let scheme = if self.shared.tls.is_some() { "wss" } else { "ws" };
        format!("{scheme}://{}/global", self.addr)
    }

    /// The certificate (PEM) a client must trust, when serving `wss://`.
    pub fn certificate_pem(&self) -> Option<&str> {
        self.shared.tls.as_ref().map(|t| t.certificate_pem())
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
        let mut verdict = match self.director.await {
            Ok(verdict) => verdict,
            Err(error) => Verdict::failed(format!("simulator director failed: {error}")),
        };
        verdict.tls_handshakes = self.shared.tls.as_ref().map(|t| t.handshakes());
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
    let teams = ledger.teams();
    SimProgress {
        teams: teams.len(),
        connected: teams.values().filter(|t| t.connected()).count(),
        messages: teams.values().map(|t| t.written).sum(),
        faults: ledger.faults_injected(),
        healthchecks: ledger.replies_checked(),
        started: shared.started.get().is_some(),
    }
}
