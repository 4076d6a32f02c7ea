//! What the HTTP side knows of the running client, and how it learns it.
//!
//! The [`Telemetry`] sidecar runs on the driver's thread. After a step (at
//! most every [`PUBLISH_EVERY`]) it publishes a [`View`] (fleet totals,
//! counters, the Global link, all O(1) to build) and the teams that changed
//! (see [`super::book`]). Every HTTP answer is made on the I/O threads from
//! what was published: no request ever puts work on the core's thread, so
//! however many clients poll, the core steps as if none did. Only
//! `/healthz` rings the driver, to see it wake (one counter, shared by any
//! number of callers); an idle fleet is woken only by someone asking.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use prometheus_client::metrics::histogram::Histogram;
use serde::Serialize;
use tokio::sync::watch;

use super::book::{Book, Pages, REFRESH_PER_PUBLISH};

use crate::core::Core;
use crate::core::LinkKind;
use crate::core::RttHistogram;
use crate::inbox::Wake;
use crate::runtime::{RunEnd, Sidecar, Step};

/// The least time between two published views.
pub const PUBLISH_EVERY: Duration = Duration::from_millis(100);

/// Step duration buckets, in seconds.
const STEP_BUCKETS: [f64; 10] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.1,
];

/// The client as of the last publication.
#[derive(Clone, Debug, Default, Serialize)]
pub struct View {
    /// When it was built (not serialised).
    #[serde(skip)]
    pub at: Option<Instant>,
    /// Schedule runs so far.
    pub steps: u64,
    /// Core time, ms.
    pub core_ms: u64,
    /// Teams ever joined.
    pub teams: u64,
    /// Teams per link state (every state named).
    pub by_state: BTreeMap<&'static str, u64>,
    /// Messages counted.
    pub messages: u64,
    /// Of those, with props.
    pub props: u64,
    /// Open links lost and re-requested.
    pub reconnects: u64,
    /// Those, by cause.
    pub drops: BTreeMap<&'static str, u64>,
    /// Bad frames on Global, by class.
    pub bad_global: BTreeMap<&'static str, u64>,
    /// Bad frames on team sockets, by class.
    pub bad_team: BTreeMap<&'static str, u64>,
    /// `team.join`s refused at the team limit.
    pub refused_joins: u64,
    /// Team links declared dead.
    pub dead_links: u64,
    /// Healthcheck replies sent.
    pub healthchecks_answered: u64,
    /// Answered-ping round trips.
    #[serde(skip)]
    pub rtt: RttHistogram,
    /// `team.connect` requests awaiting an answer.
    pub requests_in_flight: usize,
    /// How long the longest-waiting team has waited to send its request, ms.
    pub url_backlog_ms: Option<u64>,
    /// Events waiting in the driver's inbox beyond the last step's batch.
    pub bridge_depth: usize,
    /// The Global link's state.
    pub global_state: &'static str,
    /// Whether Global is open and ready.
    pub global_ready: bool,
    /// Global sockets opened over the run.
    pub global_connects: u64,
    /// Why Global last failed.
    pub global_error: Option<String>,
    /// The request timeout, ms (readiness compares the backlog with it).
    pub request_timeout_ms: u64,
    /// Steps that took longer than a tick.
    pub overruns: u64,
    /// Whether the run is over.
    pub finished: bool,
}

impl View {
    fn of(core: &Core, overruns: u64, bridge_depth: usize) -> View {
        let fleet = core.fleet();
        let stats = core.stats();
        let global = core.global();
        let by_state = LinkKind::ALL
            .iter()
            .map(|&kind| (kind.name(), fleet.in_state(kind)))
            .collect();
        View {
            at: Some(Instant::now()),
            steps: core.steps(),
            core_ms: core.now().as_millis() as u64,
            teams: fleet.teams,
            by_state,
            messages: fleet.messages,
            props: fleet.props,
            reconnects: fleet.reconnects,
            drops: fleet.drops.clone(),
            bad_global: stats.bad_global.clone(),
            bad_team: stats.bad_team.clone(),
            refused_joins: stats.refused_joins,
            dead_links: stats.dead_links,
            healthchecks_answered: stats.healthchecks_answered,
            rtt: stats.rtt.clone(),
            requests_in_flight: core.requests_in_flight(),
            url_backlog_ms: core.url_backlog_age().map(|d| d.as_millis() as u64),
            bridge_depth,
            global_state: global.state().name(),
            global_ready: global.ready_conn().is_some(),
            global_connects: global.connects(),
            // Served without authentication: never a credential.
            global_error: global.last_error().map(crate::redact::text),
            request_timeout_ms: core.settings().request_timeout,
            overruns,
            finished: core.is_finished(),
        }
    }
}

/// What the HTTP handlers and the sidecar share. The driver only ever
/// swaps a pointer under a lock a reader holds for a pointer copy: it never
/// waits on a handler.
pub struct Shared {
    view: RwLock<Arc<View>>,
    pages: RwLock<Arc<Pages>>,
    /// Counts the driver's wake-ups; `/healthz` rings and waits for it to move.
    alive: watch::Sender<u64>,
    wake: std::sync::OnceLock<Wake>,
    /// Step durations, observed on the driver's thread (atomic, cheap).
    pub step_seconds: Histogram,
    /// When the HTTP server started.
    pub started: Instant,
    /// The NATS publisher's numbers, once one is attached.
    pub publish: std::sync::OnceLock<crate::publish::PublishWatch>,
    /// The cluster, when this process leads one.
    pub cluster: std::sync::OnceLock<crate::cluster::LeaderWatch>,
    /// A core of a cluster: whether it stands by.
    pub standby: std::sync::OnceLock<crate::cluster::StandbyWatch>,
}

impl Shared {
    /// While this core stands by for the leader lease: since when, and who
    /// leads.
    pub fn standing_by(&self) -> Option<crate::cluster::Waiting> {
        self.standby.get().and_then(|w| w.standing_by())
    }
}

/// Reads a published pointer, whatever a panicking writer left.
fn read<T>(slot: &RwLock<Arc<T>>) -> Arc<T> {
    slot.read()
        .map(|v| v.clone())
        .unwrap_or_else(|p| p.into_inner().clone())
}

/// Swaps a published pointer.
fn write<T>(slot: &RwLock<Arc<T>>, value: Arc<T>) {
    match slot.write() {
        Ok(mut slot) => *slot = value,
        Err(p) => *p.into_inner() = value,
    }
}

impl Shared {
    pub(crate) fn new() -> Arc<Shared> {
        Arc::new(Shared {
            view: RwLock::new(Arc::new(View::default())),
            pages: RwLock::new(Arc::new(Pages::default())),
            alive: watch::Sender::new(0),
            wake: std::sync::OnceLock::new(),
            step_seconds: Histogram::new(STEP_BUCKETS),
            started: Instant::now(),
            publish: std::sync::OnceLock::new(),
            cluster: std::sync::OnceLock::new(),
            standby: std::sync::OnceLock::new(),
        })
    }

    /// The last published view.
    pub fn view(&self) -> Arc<View> {
        read(&self.view)
    }

    /// The teams as of the last publication.
    pub fn pages(&self) -> Arc<Pages> {
        read(&self.pages)
    }

    fn publish(&self, view: View, pages: Pages) {
        write(&self.view, Arc::new(view));
        write(&self.pages, Arc::new(pages));
    }

    /// Wakes the driver and waits, at most `within`, for it to show it is
    /// alive; how many times it has woken. `None` if no run is attached or
    /// it did not answer in time. Any number of callers share one wake-up.
    pub(crate) async fn driver_alive(&self, within: Duration) -> Option<u64> {
        let wake = self.wake.get()?;
        let mut alive = self.alive.subscribe();
        let seen = *alive.borrow_and_update();
        wake.wake();
        let woke = tokio::time::timeout(within, alive.wait_for(|&n| n > seen));
        woke.await.ok()?.ok().map(|n| *n)
    }
}

/// The sidecar that feeds the HTTP side.
pub struct Telemetry {
    shared: Arc<Shared>,
    book: Book,
    last: Option<Instant>,
    tick: Duration,
    overruns: u64,
    /// The inbox's depth after the last step.
    bridge_depth: usize,
    alive: u64,
    /// A step ran since the last publication: publish once the throttle
    /// allows, even if the fleet goes quiet meanwhile.
    dirty: bool,
}

impl Telemetry {
    pub(crate) fn new(shared: Arc<Shared>) -> Telemetry {
        Telemetry {
            shared,
            book: Book::default(),
            last: None,
            tick: Duration::from_millis(10),
            overruns: 0,
            bridge_depth: 0,
            alive: 0,
            dirty: false,
        }
    }

    /// Tells `/healthz` the driver is awake, and publishes when due: O(1)
    /// plus the teams that changed (at most [`REFRESH_PER_PUBLISH`]).
    fn serve(&mut self, core: &mut Core) {
        self.alive += 1;
        self.shared.alive.send_replace(self.alive);
        let due = self.last.is_none_or(|at| at.elapsed() >= PUBLISH_EVERY);
        if due && (self.last.is_none() || self.dirty || self.book.behind()) {
            self.publish(core, REFRESH_PER_PUBLISH);
        }
    }

    fn publish(&mut self, core: &mut Core, refresh: usize) {
        let pages = self.book.refresh(core, refresh);
        self.shared
            .publish(View::of(core, self.overruns, self.bridge_depth), pages);
        self.last = Some(Instant::now());
        self.dirty = false;
    }
}

impl Sidecar for Telemetry {
    fn start(&mut self, core: &mut Core, wake: &Wake) {
        self.tick = core.tick();
        let _ = self.shared.wake.set(wake.clone());
        self.serve(core);
    }

    fn after_step(&mut self, core: &mut Core, step: &Step<'_>) {
        self.shared.step_seconds.observe(step.took.as_secs_f64());
        if step.took > self.tick {
            self.overruns += 1;
        }
        self.bridge_depth = step.inbox_depth;
        self.dirty = true;
        self.serve(core);
    }

    fn on_wake(&mut self, core: &mut Core) {
        self.serve(core);
    }

    fn next_wake(&self) -> Option<Instant> {
        (self.dirty || self.book.behind())
            .then(|| self.last.map(|at| at + PUBLISH_EVERY))
            .flatten()
    }

    fn finish(&mut self, core: &mut Core, _end: &RunEnd, _deadline: Instant) {
        // The last word is complete: every team that changed.
        self.publish(core, usize::MAX);
    }
}
