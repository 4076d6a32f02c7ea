//! Singletons of the core: clock, randomness, routing tables, queues, stats.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

use bevy_ecs::prelude::*;
use serde::Serialize;

use crate::bridge::{ConnId, NetCommand, NetEvent};
use crate::protocol::TeamId;

/// Core time. Advanced only by the driver (or a test), never read from the OS.
#[derive(Resource, Clone, Copy, Debug, Default, Serialize)]
pub struct Clock {
    /// Steps run so far (schedule runs; the tick is a step's length).
    /// Serialised as `tick`, its name before: the snapshot's shape, and the
    /// digests recordings hold of it, stay as they were.
    #[serde(rename = "tick")]
    pub step: u64,
    /// Milliseconds since the core was built.
    pub now: u64,
}

/// The only randomness in the core: seeded, used for backoff jitter.
#[derive(Resource)]
pub struct Jitter(pub fastrand::Rng);

impl Jitter {
    /// A full-jitter exponential backoff delay for the `attempts`-th retry:
    /// uniform in `[0, min(max, min·2^attempts)]`, so a fleet that failed
    /// together does not retry together.
    pub fn backoff(&mut self, attempts: u32, min: u64, max: u64) -> u64 {
        let ceiling = min.saturating_mul(1u64 << attempts.min(32)).min(max);
        self.0.u64(0..=ceiling)
    }
}

/// Events handed to the core (`Core::handle`) and not yet applied: the
/// next step applies all of them, in this order. The driver bounds it: it
/// hands over one batch per step.
#[derive(Resource, Default)]
pub struct Arrived(pub Vec<NetEvent>);

/// Events applied, kept (when recording) for the flight
/// recorder: what the core ingested, in order, step by step.
#[derive(Resource, Default)]
pub struct Recorded {
    /// Whether events are kept.
    pub on: bool,
    /// Kept since the last drain.
    pub events: Vec<NetEvent>,
    /// The sockets adopted before the first step (a cluster's new leader).
    pub adopted: Vec<crate::core::saved::AdoptedSocket>,
    /// Late readings taken since the last drain.
    pub late: Vec<crate::core::saved::AdoptedSocket>,
}

/// The teams restored before the first step, kept for the recorder.
#[derive(Resource, Default)]
pub struct Restored(pub Vec<crate::core::saved::SavedTeam>);

/// Commands produced this tick, drained by the driver.
#[derive(Resource, Default)]
pub struct Outbox(pub Vec<NetCommand>);

/// Who owns a live connection id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    /// The Global link.
    Global,
    /// A team's link.
    Team(Entity),
}

/// Socket ids stay below this (2^53: exact as a JSON number wherever they
/// are written). An id from outside the core (a saved mark, a worker's
/// report) at or above it is not taken: the next ids would run past the
/// top of `u64` and repeat ids in use.
pub const MAX_CONN_ID: u64 = 1 << 53;

/// Whether `conn`, an id from outside the core, may be taken.
pub fn sane_conn(conn: ConnId) -> bool {
    conn.0 < MAX_CONN_ID
}

/// Connection ids the core opened, with their owners, until the transport
/// reports their end. A connection the core gave up on (and asked to be
/// aborted) is *retired*: it no longer drives any state, but messages it
/// had already read still arrive and still count, until its terminal event.
#[derive(Resource, Default)]
pub struct Connections {
    next: u64,
    owners: HashMap<ConnId, (Owner, bool)>,
}

impl Connections {
    /// A fresh id, registered to `owner`.
    pub fn open(&mut self, owner: Owner) -> ConnId {
        self.next += 1;
        let conn = ConnId(self.next);
        self.owners.insert(conn, (owner, true));
        conn
    }

    /// Takes over `conn`, a socket another process opened, for `owner`;
    /// ids handed out from now on are larger.
    pub fn adopt(&mut self, conn: ConnId, owner: Owner) {
        self.skip_past(conn);
        self.owners.insert(conn, (owner, true));
    }

    /// Ids handed out from now on are larger than `conn` (an id some other
    /// leader gave out: marks compare ids, so later must mean larger).
    pub fn skip_past(&mut self, conn: ConnId) {
        self.next = self.next.max(conn.0);
    }

    /// The id the next [`Connections::open`] hands out.
    pub fn next_id(&self) -> ConnId {
        ConnId(self.next + 1)
    }

    /// Who owns `conn`, and whether it is still live (not retired).
    pub fn owner(&self, conn: ConnId) -> Option<(Owner, bool)> {
        self.owners.get(&conn).copied()
    }

    /// The core gave up on `conn`: its terminal event is still to come.
    pub fn retire(&mut self, conn: ConnId) {
        if let Some((_, live)) = self.owners.get_mut(&conn) {
            *live = false;
        }
    }

    /// `conn` ended (its terminal event arrived): forget it.
    pub fn ended(&mut self, conn: ConnId) {
        self.owners.remove(&conn);
    }

    /// Connections not yet ended, retired ones included.
    pub fn len(&self) -> usize {
        self.owners.len()
    }

    /// Whether every connection ended.
    pub fn is_empty(&self) -> bool {
        self.owners.is_empty()
    }
}

/// Team id → entity, ordered so healthcheck replies come out sorted by id.
#[derive(Resource, Default)]
pub struct TeamIndex(pub BTreeMap<TeamId, Entity>);

/// Teams waiting to send `team.connect` (first come, first served), and the
/// requests in flight. Kept by hand, not queried: a tick then costs what
/// it sends, not a scan of every team.
#[derive(Resource, Default)]
pub struct UrlRequests {
    /// Teams that entered `NeedsUrl`, oldest first, with when. May hold
    /// stale entries (teams that left `NeedsUrl` since); `queued` is the
    /// truth.
    queue: VecDeque<(Entity, u64)>,
    queued: HashSet<Entity>,
    /// Teams in `Requesting`.
    in_flight: BTreeSet<Entity>,
}

impl UrlRequests {
    /// Queues `entity` (at core time `now`) unless it already is.
    pub fn enqueue(&mut self, entity: Entity, now: u64) {
        if self.queued.insert(entity) {
            self.queue.push_back((entity, now));
        }
    }

    /// Takes `entity` out of the queue.
    pub fn dequeue(&mut self, entity: Entity) {
        self.queued.remove(&entity);
    }

    /// `entity`'s request went out.
    pub fn sent(&mut self, entity: Entity) {
        self.in_flight.insert(entity);
    }

    /// `entity`'s request is no longer awaited.
    pub fn answered(&mut self, entity: Entity) {
        self.in_flight.remove(&entity);
    }

    /// Requests awaiting an answer.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// The teams whose request awaits an answer.
    pub fn in_flight_teams(&self) -> Vec<Entity> {
        self.in_flight.iter().copied().collect()
    }

    /// Whether any team waits to send its request.
    pub fn has_queued(&self) -> bool {
        !self.queued.is_empty()
    }

    /// The longest-waiting queued team.
    pub fn pop(&mut self) -> Option<Entity> {
        while let Some((entity, _)) = self.queue.pop_front() {
            if self.queued.remove(&entity) {
                return Some(entity);
            }
        }
        // Empty: give back what a burst of joins grew.
        if self.queue.capacity() > 1024 {
            self.queue.shrink_to(1024);
            self.queued.shrink_to(1024);
        }
        None
    }

    /// Since when the longest-waiting queued team has waited (stale
    /// entries at the front are skipped, not removed: reads are free).
    pub fn oldest_since(&self) -> Option<u64> {
        self.queue
            .iter()
            .find(|(entity, _)| self.queued.contains(entity))
            .map(|&(_, since)| since)
    }
}

/// Where an ingested event goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// To the Global lifecycle.
    Global,
    /// To this team's traffic.
    Team(Entity),
}

/// This step's events, routed, in arrival order across every connection:
/// applied in that order, a run of same-route events at a time.
#[derive(Resource, Default)]
pub struct Routed(pub Vec<(Route, crate::bridge::NetEvent)>);

/// The run of consecutive Global events being applied now.
#[derive(Resource, Default)]
pub struct GlobalInbox(pub Vec<crate::bridge::NetEvent>);

/// The run of consecutive team events being applied now.
#[derive(Resource, Default)]
pub struct TeamInbox(pub Vec<(Entity, crate::bridge::NetEvent)>);

/// `healthcheck` requests waiting for their reply at the end of the tick,
/// each with the Global connection it came on.
#[derive(Resource, Default)]
pub struct PendingHealthchecks(pub Vec<ConnId>);

/// Why the run is ending.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ShutdownCause {
    /// The server sent `goodbye`.
    Goodbye,
    /// The operator asked (signal, or `Core::shutdown`).
    Local,
}

/// Shutdown progress.
#[derive(Resource, Default, Clone, Copy, Debug, Serialize)]
pub struct Shutdown {
    /// Set when a shutdown is asked for.
    pub cause: Option<ShutdownCause>,
    /// Set once every link was told to close.
    pub begun: bool,
}

/// Team entities the schedule's systems looked up or iterated, over the
/// run: shows what a tick costs in entities touched, so a system that scans
/// every team each tick cannot hide (see `tests/idle_cost.rs`; the core's
/// unit tests check that every system that reads a team component writes
/// it). Not part of [`Stats`]: it is a cost, not something that happened
/// to a link, and it stays out of snapshots.
#[derive(Resource, Default)]
pub struct Visits(pub u64);

/// Run-wide counters: what arrived, what was bad, what was ignored.
#[derive(Resource, Default, Clone, Debug, Serialize)]
pub struct Stats {
    /// Network events applied.
    pub events: u64,
    /// Events about connections that had already ended, or that the core
    /// had given up on (other than messages).
    pub stale_events: u64,
    /// Messages that arrived from a socket after the core gave up on it:
    /// read before it was dropped, so counted.
    pub late_messages: u64,
    /// `team.join`s for new teams refused because the table was full.
    pub refused_joins: u64,
    /// Bad frames on the Global connection, by class.
    pub bad_global: BTreeMap<&'static str, u64>,
    /// Bad frames on team connections, by class.
    pub bad_team: BTreeMap<&'static str, u64>,
    /// Well-formed events the protocol says to ignore (an answer nobody
    /// asked for, a `team.left` for an unknown team, …), by reason.
    pub ignored: BTreeMap<&'static str, u64>,
    /// `error` events received on Global.
    pub server_errors: u64,
    /// `healthcheck` replies sent.
    pub healthchecks_answered: u64,
    /// `ping`s sent.
    pub pings_sent: u64,
    /// Team links declared dead for want of any frame after a ping.
    pub dead_links: u64,
    /// Round-trip times of answered pings, in core time (tick resolution).
    pub rtt: RttHistogram,
}

/// Answered-ping round trips, in fixed buckets (ms, upper bounds inclusive).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RttHistogram {
    /// Pings answered within each bound of [`RttHistogram::BOUNDS_MS`], and
    /// (last) above them all.
    pub buckets: [u64; RttHistogram::BOUNDS_MS.len() + 1],
    /// Sum of all round trips, ms.
    pub sum_ms: u64,
}

impl RttHistogram {
    /// Bucket upper bounds, ms.
    pub const BOUNDS_MS: [u64; 12] = [1, 5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000];

    /// Records one round trip.
    pub fn observe(&mut self, ms: u64) {
        let i = Self::BOUNDS_MS.partition_point(|&b| b < ms);
        self.buckets[i] += 1;
        self.sum_ms = self.sum_ms.saturating_add(ms);
    }

    /// Round trips recorded.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }
}

/// Rate limit for warnings a peer can trigger: at most `BURST` per `WINDOW`
/// of core time per key; the rest are counted and summarised.
#[derive(Resource, Default)]
pub struct LogLimiter {
    windows: HashMap<&'static str, (u64, u32, u64)>,
}

impl LogLimiter {
    const WINDOW_MS: u64 = 10_000;
    const BURST: u32 = 10;

    /// Whether a warning under `key` may be logged at `now`. Returns the
    /// number suppressed since the last one logged, so the log can say so.
    pub fn allow(&mut self, key: &'static str, now: u64) -> Option<u64> {
        let (start, used, suppressed) = self.windows.entry(key).or_insert((now, 0, 0));
        if now >= *start + Self::WINDOW_MS {
            *start = now;
            *used = 0;
        }
        if *used < Self::BURST {
            *used += 1;
            Some(std::mem::take(suppressed))
        } else {
            *suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_stays_within_its_exponential_ceiling() {
        let mut jitter = Jitter(fastrand::Rng::with_seed(1));
        for attempts in 0..40 {
            let ceiling = (250u64 << attempts.min(32)).min(30_000);
            for _ in 0..50 {
                assert!(jitter.backoff(attempts, 250, 30_000) <= ceiling);
            }
        }
    }

    #[test]
    fn rtt_lands_in_the_first_bucket_that_holds_it() {
        let mut rtt = RttHistogram::default();
        for ms in [0, 1, 2, 10, 11, 10_000, 10_001] {
            rtt.observe(ms);
        }
        assert_eq!(rtt.buckets[0], 2);
        assert_eq!(rtt.buckets[1], 1);
        assert_eq!(rtt.buckets[2], 1);
        assert_eq!(rtt.buckets[3], 1);
        assert_eq!(rtt.buckets[11], 1);
        assert_eq!(rtt.buckets[12], 1);
        assert_eq!(rtt.count(), 7);
    }

    #[test]
    fn log_limiter_allows_a_burst_per_window_and_counts_the_rest() {
        let mut limiter = LogLimiter::default();
        let allowed = (0..100).filter(|_| limiter.allow("k", 5).is_some()).count();
        assert_eq!(allowed, LogLimiter::BURST as usize);
        assert_eq!(limiter.allow("k", 5 + LogLimiter::WINDOW_MS), Some(90));
        assert_eq!(limiter.allow("other", 5), Some(0));
    }
}
