//! What the director and every socket task share: the ledger behind its
//! lock, and the run's fixed settings.

use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Instant;

use tokio::sync::Notify;

use super::faults::Chaos;
use super::ledger::Ledger;
use super::scenario::Scenario;
use super::schedule::Schedule;
use super::tls::SimTls;

/// State shared by the server tasks and the director.
pub(crate) struct Shared {
    ledger: Mutex<Ledger>,
    /// The run.
    pub scenario: Scenario,
    /// Faults at rates.
    pub chaos: Chaos,
    /// Faults at set points.
    pub schedule: Schedule,
    /// Seed for every random decision.
    pub seed: u64,
    /// Where the simulator listens (team URLs point here).
    pub addr: SocketAddr,
    /// When the first Global connection opened: the run's start.
    pub started: OnceLock<Instant>,
    /// Woken when a Global connection opens.
    pub global_seen: Notify,
    /// TLS, when serving `wss://`.
    pub tls: Option<SimTls>,
}

impl Shared {
    /// An empty ledger for a run of `scenario` listening on `addr`.
    pub fn new(
        scenario: Scenario,
        chaos: Chaos,
        schedule: Schedule,
        seed: u64,
        addr: SocketAddr,
        tls: Option<SimTls>,
    ) -> Shared {
        let ledger = Ledger::new(seed, schedule.0.clone(), scenario.teams);
        Shared {
            ledger: Mutex::new(ledger),
            scenario,
            chaos,
            schedule,
            seed,
            addr,
            started: OnceLock::new(),
            global_seen: Notify::new(),
            tls,
        }
    }

    /// The ledger. A poisoned lock is still usable: the ledger holds plain
    /// counters that stay meaningful if a task panicked mid-update.
    pub fn lock(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }
}
