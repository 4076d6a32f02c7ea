//! Past one process: team sockets on workers, the core on a leader, NATS
//! between them (see `docs/CLUSTER.md` for the design and its failure
//! table).
//!
//! - [`wire`]: the core's contract (`NetCommand` out, `NetEvent` in) as
//!   batches on core NATS subjects, stamped with the leader's epoch.
//! - [`lease`]: the leases in JetStream KV: one for the leader (its
//!   creation's revision is the epoch, the fencing token), one per worker.
//! - [`membership`]: the leader's view of the live workers, from their
//!   leases.
//! - [`book`]: which worker incarnation holds which socket (plain data).
//! - [`dispatch`]: the leader's side of the transport: places each team on
//!   a worker ([`placement`]), sends the commands, takes the events, and
//!   closes a lost worker's sockets in the core's eyes.
//! - [`rebalance`]: moving teams onto a worker that joins, at a bounded
//!   rate (pure).
//! - [`state`]: the leader's saved teams copied to KV, for a standby on
//!   another machine.
//! - [`status`]: what `switchboard status --cluster` reads and prints.
//! - [`traffic`]: the leader's count of batches, bytes and hop latency.
//! - [`worker`]: `switchboard worker`, the transport alone.

pub mod book;
pub mod dispatch;
pub mod lease;
pub mod membership;
pub mod placement;
pub mod rebalance;
pub mod state;
pub mod status;
pub mod traffic;
pub mod wire;
pub mod worker;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use serde::Serialize;

use crate::bridge::ConnId;
use crate::protocol::TeamId;

/// A lease's default length, for the leader and for each worker.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(5);

/// Teams a leader moves a second onto a worker that joins, by default.
pub const DEFAULT_MOVE_RATE: u32 = 100;

/// The default cluster name: the prefix of its subjects and buckets.
pub const DEFAULT_NAME: &str = "switchboard";

/// How a process reaches its cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    /// The NATS server, `nats://host:port`, or a NATS cluster's servers
    /// separated by commas.
    pub url: String,
    /// Names the cluster's subjects and buckets: several fleets can share
    /// one NATS.
    pub name: String,
    /// How long a lease lasts unrenewed (the buckets' max age). A worker
    /// fences itself after half of it; a standby leads within it plus the
    /// poll.
    pub lease: Duration,
}

impl ClusterConfig {
    /// The subject a worker takes its command batches on.
    pub fn commands(&self, worker: &str) -> String {
        format!("{}.cmd.{worker}", self.name)
    }

    /// The subject a worker publishes its event batches on.
    pub fn events(&self, worker: &str) -> String {
        format!("{}.evt.{worker}", self.name)
    }

    /// The NATS servers to try, in order.
    pub fn servers(&self) -> Vec<&str> {
        self.url.split(',').map(str::trim).collect()
    }

    /// Every worker's event subject (the leader subscribes to this).
    pub fn all_events(&self) -> String {
        format!("{}.evt.*", self.name)
    }

    /// The leader lease's bucket.
    pub fn leader_bucket(&self) -> String {
        format!("{}_leader", self.name)
    }

    /// The saved teams' bucket.
    pub fn state_bucket(&self) -> String {
        format!("{}_state", self.name)
    }

    /// The workers' leases' bucket.
    pub fn workers_bucket(&self) -> String {
        format!("{}_workers", self.name)
    }
}

/// Whether `name` may name a worker or a cluster: it becomes a NATS
/// subject token and a KV key or bucket name.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A cluster operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// NATS could not be reached or refused us.
    #[error("NATS at {url}: {error}")]
    Connect {
        /// Where.
        url: String,
        /// Why.
        error: String,
    },
    /// A JetStream request failed.
    #[error("JetStream: {0}")]
    JetStream(String),
}

/// Connects to the cluster's NATS (and keeps reconnecting in the
/// background for as long as the process runs).
pub async fn connect(
    config: &ClusterConfig,
    role: &str,
) -> Result<(async_nats::Client, jetstream::Context), ClusterError> {
    let client = async_nats::ConnectOptions::new()
        .name(format!("switchboard {role}"))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis(50)
                .saturating_mul(2u32.saturating_pow(attempts.min(10) as u32))
                .min(Duration::from_secs(1))
        })
        // Event batches wait here while the leader's inbox is full; past
        // this NATS drops them (a slow consumer) and the leader sees the
        // gap in their sequence.
        .subscription_capacity(16 * 1024)
        .connect(config.servers().as_slice())
        .await
        .map_err(|e| ClusterError::Connect {
            url: config.url.clone(),
            error: e.to_string(),
        })?;
    let context = jetstream::context::ContextBuilder::new()
        .timeout(Duration::from_secs(2))
        .build(client.clone());
    Ok((client, context))
}

/// What a leader shows of its cluster (`/metrics`, `/workers`): cheap to
/// clone, read at scrape time.
#[derive(Clone, Debug)]
pub struct LeaderWatch {
    /// Its epoch.
    pub epoch: u64,
    /// The lease.
    pub lease: Duration,
    /// When it last renewed the lease.
    pub renewed: Arc<Mutex<Instant>>,
    /// Team sockets per worker, recounted once a second.
    pub loads: Arc<Mutex<BTreeMap<String, usize>>>,
    /// The live workers.
    pub roster: membership::Roster,
    /// Which worker holds each socket.
    pub placed: Placed,
    /// Moves onto joining workers: asked for, and waiting.
    pub moves: Arc<Moves>,
    /// What crosses NATS, as the leader counts it.
    pub traffic: Arc<traffic::Traffic>,
}

/// The leader's rebalancing, for `/metrics`.
#[derive(Debug, Default)]
pub struct Moves {
    /// Closes asked for to move a team onto a worker that joined.
    pub asked: std::sync::atomic::AtomicU64,
    /// Moves waiting for the rate.
    pub queued: std::sync::atomic::AtomicU64,
}

/// Each worker socket's team and holder, kept by the leader's dispatch as
/// it places, adopts and ends them (O(1) each), read by `/teams`.
pub type Placed = Arc<Mutex<HashMap<ConnId, (TeamId, Arc<str>)>>>;

/// What a core shows while it stands by for the leader lease (`/metrics`,
/// `/healthz`, `/readyz`): since when, and who leads. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct StandbyWatch(Arc<Mutex<Option<Waiting>>>);

/// A core standing by.
#[derive(Clone, Debug)]
pub struct Waiting {
    /// Since when.
    pub since: Instant,
    /// The leader as last read from its lease: holder and epoch.
    pub leader: Option<(String, u64)>,
}

impl StandbyWatch {
    /// Standing by, with the leader as last read.
    pub fn waiting(&self, since: Instant, leader: Option<(String, u64)>) {
        if let Ok(mut state) = self.0.lock() {
            *state = Some(Waiting { since, leader });
        }
    }

    /// No longer standing by: it leads.
    pub fn leads(&self) {
        if let Ok(mut state) = self.0.lock() {
            *state = None;
        }
    }

    /// While standing by, since when and who leads.
    pub fn standing_by(&self) -> Option<Waiting> {
        self.0.lock().ok().and_then(|s| s.clone())
    }
}

/// One worker, as `/workers` lists it.
#[derive(Clone, Debug, Serialize)]
pub struct WorkerLine {
    /// Its name.
    pub name: String,
    /// Its live incarnation.
    pub incarnation: String,
    /// Most sockets it takes.
    pub capacity: usize,
    /// Handing its teams over.
    pub leaving: bool,
    /// Team sockets it holds.
    pub teams: usize,
    /// Unrenewed for half a lease: its teams are not reported connected
    /// ([`membership`]).
    pub quiet: bool,
}

impl LeaderWatch {
    /// How long since the lease was renewed.
    pub fn lease_age(&self) -> Duration {
        self.renewed
            .lock()
            .map(|at| at.elapsed())
            .unwrap_or_default()
    }

    /// The worker holding each team's socket (the newest socket's, while
    /// an old one is still closing). O(sockets): for `/teams`, once per
    /// publication.
    pub fn team_workers(&self) -> HashMap<TeamId, Arc<str>> {
        let placed = self.placed.lock().unwrap_or_else(|e| e.into_inner());
        let mut newest: HashMap<TeamId, (ConnId, Arc<str>)> = HashMap::with_capacity(placed.len());
        for (&conn, (team, worker)) in placed.iter() {
            let entry = newest.entry(*team).or_insert((conn, worker.clone()));
            if conn > entry.0 {
                *entry = (conn, worker.clone());
            }
        }
        newest.into_iter().map(|(team, (_, w))| (team, w)).collect()
    }

    /// The live workers with their teams, by name.
    pub fn workers(&self) -> Vec<WorkerLine> {
        let loads = self.loads.lock().map(|l| l.clone()).unwrap_or_default();
        let quiet = self.roster.quiet_workers();
        self.roster
            .live()
            .into_iter()
            .map(|(name, value)| WorkerLine {
                teams: loads.get(&name).copied().unwrap_or(0),
                quiet: quiet.contains(&name),
                name,
                incarnation: value.incarnation,
                capacity: value.capacity,
                leaving: value.leaving,
            })
            .collect()
    }
}
