//! The deterministic core: a bevy_ecs `World` plus one `Schedule`. A *step*
//! is one run of the schedule; the *tick* is the core time a step usually
//! covers (a driver that slept steps over several ticks at once). It does
//! no I/O, never reads a clock and uses only the seeded RNG it is built
//! with: events go in ([`Core::handle`], a call that cannot
//! fail), time goes in ([`Core::step`]), commands come out
//! ([`Core::drain_commands`]). Same events, same seed → the same commands
//! and the same [`Snapshot`]. How events reach the driver (a channel, a
//! recording, a script, another machine) is the driver's business.

pub(crate) mod components;
pub(crate) mod config;
pub(crate) mod global_link;
pub(crate) mod lifecycle;
pub(crate) mod links;
pub(crate) mod reconcile;
pub(crate) mod resources;
pub(crate) mod saved;
pub(crate) mod snapshot;
pub(crate) mod systems;
pub(crate) mod timers;
pub(crate) mod url_policy;

// The core's vocabulary: what its methods take and hand out. The ECS
// inside (components as stored, resources, systems, the schedule) stays
// private; these types are views and values.
pub use components::{AfterClose, Counters, Health, LinkKind, LinkState};
pub use config::{Config, ConfigError, MAX_TICK, Settings};
pub use global_link::{GlobalLink, GlobalState};
pub use lifecycle::{Fleet, History, HistoryEntry, Lifecycle, TeamEvent};
pub use resources::{Clock, RttHistogram, Shutdown, ShutdownCause, Stats};
pub use saved::{AdoptedSocket, SavedTeam, SocketMark};
pub use snapshot::{Snapshot, TeamSnapshot};
pub(crate) use systems::healthcheck::max_reply_bytes;
pub use url_policy::HostPattern;

use std::time::Duration;

use bevy_ecs::prelude::*;
use bevy_ecs::schedule::ScheduleLabel;

use crate::bridge::{ConnId, NetCommand, NetEvent};
use crate::protocol::TeamStats;
use bevy_ecs::system::RunSystemOnce;
use components::{Link, Team};
use links::{Beat, StateDeadline};
use resources::{
    Arrived, Connections, GlobalInbox, Jitter, LogLimiter, Outbox, PendingHealthchecks, Routed,
    TeamInbox, TeamIndex, UrlRequests,
};
use systems::heartbeat::PingIds;
use timers::Timers;

/// The phases of one step, in order.
#[derive(SystemSet, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum CoreSystems {
    /// Apply the events handed over since the last step, in arrival order,
    /// Global and team alike.
    Ingest,
    /// The Global link's own deadlines; start a shutdown asked for locally.
    Global,
    /// Pings and pong timeouts.
    Heartbeat,
    /// State deadlines and `team.connect` requests.
    Reconnect,
    /// Healthcheck replies; closing Global at shutdown.
    Emit,
}

/// Fleet totals; see [`Core::summary`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Summary {
    /// Teams ever joined.
    pub teams: u64,
    /// Teams reported connected: socket open, worker not quiet.
    pub connected: u64,
    /// Joined teams without an open socket: asking, connecting or backing off.
    pub reconnecting: u64,
    /// Teams that left.
    pub left: u64,
    /// Messages counted over all teams.
    pub messages: u64,
    /// Props counted over all teams.
    pub props: u64,
    /// Open links lost and re-requested, over all teams.
    pub reconnects: u64,
    /// Whether the Global link is open and ready.
    pub global_connected: bool,
}

/// The label of the core's one schedule (one run of it is a step).
#[derive(ScheduleLabel, Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Tick;

/// Saved teams could not be restored.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RestoreError {
    /// The core has already stepped: restoring now would race the run.
    #[error("saved state can only be restored before the first step")]
    AlreadyRunning,
    /// More saved teams than `max_teams` allows.
    #[error("the saved state holds {saved} teams, above --max-teams {max}")]
    TooMany {
        /// Teams saved.
        saved: usize,
        /// The limit.
        max: usize,
    },
}

/// `step_until` ran out of steps before its condition held.
#[derive(Debug, thiserror::Error)]
#[error("condition still false after {0} steps")]
pub struct StepLimit(pub u64);

/// The stepping type: owns the world and its schedule.
pub struct Core {
    world: World,
    schedule: Schedule,
    /// Registered once, so it remembers what it already reported.
    changed_teams: bevy_ecs::system::SystemId<(), Vec<SavedTeam>>,
}

impl Core {
    /// Builds a core with no I/O. Nothing happens until the first step,
    /// which asks for the Global link to be opened.
    pub fn new(config: &Config, seed: u64) -> Result<Core, ConfigError> {
        let settings: Settings = config.validate()?;
        let mut world = World::new();
        world.insert_resource(settings);
        world.insert_resource(Clock::default());
        world.insert_resource(Jitter(fastrand::Rng::with_seed(seed)));
        world.init_resource::<Arrived>();
        world.init_resource::<Outbox>();
        world.init_resource::<Connections>();
        world.init_resource::<TeamIndex>();
        world.init_resource::<UrlRequests>();
        world.init_resource::<Routed>();
        world.init_resource::<GlobalInbox>();
        world.init_resource::<TeamInbox>();
        world.init_resource::<PendingHealthchecks>();
        world.init_resource::<Shutdown>();
        world.init_resource::<Stats>();
        world.init_resource::<resources::Visits>();
        world.init_resource::<LogLimiter>();
        world.init_resource::<GlobalLink>();
        world.init_resource::<PingIds>();
        world.init_resource::<Timers<Beat>>();
        world.init_resource::<Timers<StateDeadline>>();
        world.init_resource::<lifecycle::Fleet>();
        world.init_resource::<resources::Recorded>();
        world.init_resource::<resources::Restored>();
        world.init_resource::<reconcile::Reconcile>();
        world.init_resource::<lifecycle::Transitions>();
        world.init_resource::<lifecycle::TeamEvents>();
        let changed_teams = world.register_system(systems::restore::changed_teams);
        let handlers = systems::ingest::RouteHandlers::register(&mut world);
        world.insert_resource(handlers);
        Ok(Core {
            world,
            schedule: build_schedule(),
            changed_teams,
        })
    }

    /// Restores teams saved by an earlier run (the state file keeps them),
    /// before the first step: each comes back with its
    /// counts, and joined ones reconnect as soon as Global is ready.
    pub fn restore(&mut self, saved: &[SavedTeam]) -> Result<(), RestoreError> {
        if self.world.resource::<Clock>().step > 0 {
            return Err(RestoreError::AlreadyRunning);
        }
        let max = self.world.resource::<Settings>().max_teams;
        if saved.len() > max {
            return Err(RestoreError::TooMany {
                saved: saved.len(),
                max,
            });
        }
        let saved: Vec<SavedTeam> = saved.iter().map(without_insane_marks).collect();
        self.world.resource_mut::<resources::Restored>().0 = saved.clone();
        self.world
            .run_system_once_with(systems::restore::restore_teams, saved)
            .map_err(|_| RestoreError::AlreadyRunning)
    }

    /// Takes over the team sockets workers kept open through a change of
    /// leader, after [`Core::restore`] and before the first step: each
    /// open one becomes its team's socket with no new `team.connect`, and
    /// every report adds to its team's counts exactly what the restored
    /// counts do not include (their [`SocketMark`]s say how much of which
    /// socket they do). A team the restored state does not know is
    /// restored joined, from zero. From now on the core's socket ids are
    /// larger than any reported or marked.
    ///
    /// Returns the open sockets it did not take (a second one reported for
    /// a team): the caller ends them.
    pub fn adopt(&mut self, sockets: &[AdoptedSocket]) -> Result<Vec<ConnId>, RestoreError> {
        if self.world.resource::<Clock>().step > 0 {
            return Err(RestoreError::AlreadyRunning);
        }
        let (sockets, insane): (Vec<AdoptedSocket>, Vec<AdoptedSocket>) =
            sockets.iter().partition(|s| resources::sane_conn(s.conn));
        let insane: Vec<ConnId> = insane.iter().filter(|s| s.open).map(|s| s.conn).collect();
        let index = &self.world.resource::<resources::TeamIndex>().0;
        let mut unknown: Vec<SavedTeam> = sockets
            .iter()
            .filter(|s| !index.contains_key(&s.team))
            .map(|s| SavedTeam {
                id: s.team,
                joined: true,
                message_count: 0,
                props_count: 0,
                socket: None,
                unreported: Vec::new(),
            })
            .collect();
        unknown.sort_by_key(|t| t.id);
        unknown.dedup_by_key(|t| t.id);
        let max = self.world.resource::<Settings>().max_teams;
        if index.len() + unknown.len() > max {
            return Err(RestoreError::TooMany {
                saved: index.len() + unknown.len(),
                max,
            });
        }
        self.world
            .run_system_once_with(systems::restore::restore_teams, unknown)
            .map_err(|_| RestoreError::AlreadyRunning)?;
        let mut sockets = sockets;
        sockets.sort_by_key(|s| (s.team, s.conn));
        let mut recorded = self.world.resource_mut::<resources::Recorded>();
        if recorded.on {
            recorded.adopted.extend_from_slice(&sockets);
        }
        let mut refused = self
            .world
            .run_system_once_with(systems::restore::adopt_sockets, sockets)
            .map_err(|_| RestoreError::AlreadyRunning)?;
        refused.extend(insane);
        Ok(refused)
    }

    /// The sockets adopted before the first step, in the order taken (for
    /// the flight recorder; empty unless recording).
    pub fn adopted(&self) -> &[AdoptedSocket] {
        &self.world.resource::<resources::Recorded>().adopted
    }

    /// The late readings taken since the last call, in order (empty
    /// unless recording).
    pub fn drain_late_recorded(&mut self) -> Vec<AdoptedSocket> {
        std::mem::take(&mut self.world.resource_mut::<resources::Recorded>().late)
    }

    /// Readings of ended sockets reported late (by a worker a leader
    /// called after it was lost, or that registered after the takeover):
    /// each adds to its team what no count holds yet, exactly once (see
    /// `core/reconcile.rs`). Open ones are ignored: only [`Core::adopt`]
    /// takes sockets over. Any time, between steps.
    pub fn late_reports(&mut self, sockets: &[AdoptedSocket]) {
        let sockets: Vec<AdoptedSocket> = sockets
            .iter()
            .filter(|s| resources::sane_conn(s.conn))
            .copied()
            .collect();
        let mut recorded = self.world.resource_mut::<resources::Recorded>();
        if recorded.on {
            recorded.late.extend_from_slice(&sockets);
        }
        let _ = self
            .world
            .run_system_once_with(systems::restore::late_reports, sockets);
    }

    /// The teams restored before the first step (for the flight recorder).
    pub fn restored(&self) -> &[SavedTeam] {
        &self.world.resource::<resources::Restored>().0
    }

    /// Keeps (or stops keeping) every event the core ingests, for the
    /// flight recorder: [`Core::drain_recorded`] takes them after each step.
    pub fn set_recording(&mut self, on: bool) {
        let mut recorded = self.world.resource_mut::<resources::Recorded>();
        recorded.on = on;
        if !on {
            recorded.events = Vec::new();
            recorded.late = Vec::new();
        }
    }

    /// The events ingested since the last call, in order (empty unless
    /// recording).
    pub fn drain_recorded(&mut self) -> Vec<NetEvent> {
        std::mem::take(&mut self.world.resource_mut::<resources::Recorded>().events)
    }

    /// Teams whose counts or standing changed since the last call, for the
    /// state store. O(teams): once per commit interval, not per step.
    pub fn changed_teams(&mut self) -> Vec<SavedTeam> {
        self.world
            .run_system(self.changed_teams)
            .unwrap_or_default()
    }

    /// Hands over one event: the next step applies it, after every event
    /// handed over before it, whichever connection each came from. The
    /// core keeps what it is given until that step; the driver decides
    /// how much to hand over per step.
    pub fn handle(&mut self, event: NetEvent) {
        self.world.resource_mut::<Arrived>().0.push(event);
    }

    /// Hands over a batch of events, in order (see [`Core::handle`]).
    pub fn handle_all(&mut self, events: impl IntoIterator<Item = NetEvent>) {
        self.world.resource_mut::<Arrived>().0.extend(events);
    }

    /// One step of one tick: advances the clock by the tick and runs the
    /// schedule.
    pub fn step(&mut self) {
        self.step_ticks(1);
    }

    /// One step of `n` whole ticks: advances the clock by them and runs the
    /// schedule once, for a driver that slept through ticks in which
    /// nothing was due.
    pub fn step_ticks(&mut self, n: u64) {
        let tick = self.world.resource::<Settings>().tick;
        self.advance(tick.saturating_mul(n));
    }

    /// The tick length, in core time.
    pub fn tick(&self) -> Duration {
        Duration::from_millis(self.world.resource::<Settings>().tick)
    }

    /// Advances the clock by `dt` (rounded down to whole ms) and runs the
    /// schedule once (one step): for a driver whose real tick overran.
    pub fn step_by(&mut self, dt: Duration) {
        self.advance(u64::try_from(dt.as_millis()).unwrap_or(u64::MAX / 4));
    }

    fn advance(&mut self, ms: u64) {
        let mut clock = self.world.resource_mut::<Clock>();
        clock.step += 1;
        clock.now += ms;
        self.schedule.run(&mut self.world);
    }

    /// Runs `n` steps of one tick each.
    pub fn step_n(&mut self, n: u64) {
        for _ in 0..n {
            self.step();
        }
    }

    /// Runs one-tick steps until `done` holds, at most `max_steps`; returns
    /// how many ran.
    pub fn step_until(
        &mut self,
        max_steps: u64,
        mut done: impl FnMut(&Core) -> bool,
    ) -> Result<u64, StepLimit> {
        for ran in 0..=max_steps {
            if done(self) {
                return Ok(ran);
            }
            if ran < max_steps {
                self.step();
            }
        }
        Err(StepLimit(max_steps))
    }

    /// Takes the commands produced since the last call, in order.
    pub fn drain_commands(&mut self) -> Vec<NetCommand> {
        std::mem::take(&mut self.world.resource_mut::<Outbox>().0)
    }

    /// Takes the team lifecycle events (joined, connected, dropped, left,
    /// stopped) produced since the last call, in order.
    pub fn drain_team_events(&mut self) -> Vec<lifecycle::TeamEvent> {
        std::mem::take(&mut self.world.resource_mut::<lifecycle::TeamEvents>().0)
    }

    /// Events handed over and not yet applied (the next step applies them).
    pub fn pending_events(&self) -> usize {
        self.world.resource::<Arrived>().0.len()
    }

    /// `team.connect` requests awaiting an answer.
    pub fn requests_in_flight(&self) -> usize {
        self.world.resource::<UrlRequests>().in_flight()
    }

    /// How long the team that has waited longest to send its `team.connect`
    /// (held back by the in-flight cap, or by Global being down) has
    /// waited, in core time.
    pub fn url_backlog_age(&self) -> Option<Duration> {
        let now = self.world.resource::<Clock>().now;
        self.world
            .resource::<UrlRequests>()
            .oldest_since()
            .map(|since| Duration::from_millis(now.saturating_sub(since)))
    }

    /// One team's full view, if it ever joined.
    pub fn team(&self, id: crate::protocol::TeamId) -> Option<TeamSnapshot> {
        let &entity = self.world.resource::<TeamIndex>().0.get(&id)?;
        self.team_snapshot(entity)
    }

    fn team_snapshot(&self, e: Entity) -> Option<TeamSnapshot> {
        let team = self.world.get::<Team>(e)?;
        let link = self.world.get::<Link>(e)?;
        Some(TeamSnapshot {
            id: team.id,
            connected: link.state.connected(),
            link: link.state,
            counters: *self.world.get::<Counters>(e)?,
            health: self.world.get::<Health>(e)?.clone(),
            history: self.world.get::<lifecycle::History>(e)?.clone(),
        })
    }

    /// The validated configuration in core units.
    pub fn settings(&self) -> &Settings {
        self.world.resource::<Settings>()
    }

    /// Fleet totals, kept as things happen: O(1).
    pub fn fleet(&self) -> &lifecycle::Fleet {
        self.world.resource::<lifecycle::Fleet>()
    }

    /// Asks for a graceful shutdown, as `goodbye` does: every socket gets a
    /// normal close on the next step.
    pub fn shutdown(&mut self) {
        let mut shutdown = self.world.resource_mut::<Shutdown>();
        shutdown.cause.get_or_insert(ShutdownCause::Local);
    }

    /// Why the run is ending, if it is.
    pub fn shutdown_cause(&self) -> Option<ShutdownCause> {
        self.world.resource::<Shutdown>().cause
    }

    /// Whether the run is over: shutdown begun and every connection gone.
    pub fn is_finished(&self) -> bool {
        self.world.resource::<Shutdown>().begun && self.world.resource::<Connections>().is_empty()
    }

    /// Schedule runs so far.
    pub fn steps(&self) -> u64 {
        self.world.resource::<Clock>().step
    }

    /// Core time since construction.
    pub fn now(&self) -> Duration {
        Duration::from_millis(self.world.resource::<Clock>().now)
    }

    /// When the core next has work of its own (a ping, a timeout, a backoff
    /// ending, Global to open or probe), in core time; `None` if never. As
    /// quinn's `poll_timeout`: a driver or a test can sleep, or jump, until
    /// then. Stale timers count, so it may be early, never late.
    pub fn next_deadline(&self) -> Option<Duration> {
        let global = self
            .global()
            .next_due(
                self.world.resource::<Settings>(),
                self.world.resource::<Shutdown>(),
            )
            .map(|(at, _)| at);
        [
            self.world.resource::<Timers<Beat>>().next_at(),
            self.world.resource::<Timers<StateDeadline>>().next_at(),
            global,
        ]
        .into_iter()
        .flatten()
        .min()
        .map(Duration::from_millis)
    }

    /// Whether a step at the current instant would do anything: events
    /// were handed over, a request may go out, a shutdown waits to begin,
    /// or a deadline has come.
    pub fn has_pending_work(&self) -> bool {
        let now = self.world.resource::<Clock>().now;
        let shutdown = self.world.resource::<Shutdown>();
        let requests = systems::reconnect::request_channel(
            self.global(),
            shutdown,
            self.world.resource::<UrlRequests>(),
            self.world.resource::<Settings>(),
        );
        !self.world.resource::<Arrived>().0.is_empty()
            || (shutdown.cause.is_some() && !shutdown.begun)
            || requests.is_some()
            || self
                .next_deadline()
                .is_some_and(|at| at <= Duration::from_millis(now))
    }

    /// Runs the schedule without advancing time until no work is pending
    /// (see [`Core::has_pending_work`]), at most `max_steps` times: "drive
    /// until idle" for tests that push events and want every consequence
    /// at this instant. Returns the steps run.
    pub fn settle(&mut self, max_steps: u64) -> Result<u64, StepLimit> {
        for ran in 0..max_steps {
            if !self.has_pending_work() {
                return Ok(ran);
            }
            self.advance(0);
        }
        if self.has_pending_work() {
            Err(StepLimit(max_steps))
        } else {
            Ok(max_steps)
        }
    }

    /// Timers held (stale ones included): shows per-step cost is not per team.
    pub fn pending_timers(&self) -> usize {
        self.world.resource::<Timers<Beat>>().len()
            + self.world.resource::<Timers<StateDeadline>>().len()
    }

    /// Timers popped over the run (stale ones included).
    pub fn timers_fired(&self) -> u64 {
        self.world.resource::<Timers<Beat>>().popped()
            + self.world.resource::<Timers<StateDeadline>>().popped()
    }

    /// Team entities the schedule's systems looked up or iterated over the
    /// run: grows with events and due timers, never with the fleet's size
    /// alone (the idle-cost tests hold it to that).
    pub fn entities_visited(&self) -> u64 {
        self.world.resource::<resources::Visits>().0
    }

    /// Run-wide counters.
    pub fn stats(&self) -> &Stats {
        self.world.resource::<Stats>()
    }

    /// The Global link.
    pub fn global(&self) -> &GlobalLink {
        self.world.resource::<GlobalLink>()
    }

    /// What a `healthcheck` reply would say now.
    pub fn healthcheck(&self) -> Vec<TeamStats> {
        systems::healthcheck::team_stats(self.world.resource::<TeamIndex>(), |e| {
            let link = self.world.get::<Link>(e)?;
            let counters = self.world.get::<Counters>(e)?;
            Some((link.state.connected(), *counters))
        })
    }

    /// Fleet totals, for status lines. O(1).
    pub fn summary(&self) -> Summary {
        let fleet = self.fleet();
        let joined_down = LinkKind::RECONNECTING
            .iter()
            .map(|&kind| fleet.in_state(kind))
            .sum();
        Summary {
            teams: fleet.teams,
            connected: fleet.in_state(LinkKind::Open).saturating_sub(fleet.quiet),
            reconnecting: joined_down,
            left: fleet.in_state(LinkKind::Left),
            messages: fleet.messages,
            props: fleet.props,
            reconnects: fleet.reconnects,
            global_connected: self.global().ready_conn().is_some(),
        }
    }

    /// A full view of the core, in stable order.
    pub fn snapshot(&self) -> Snapshot {
        let teams = self
            .world
            .resource::<TeamIndex>()
            .0
            .values()
            .filter_map(|&e| self.team_snapshot(e))
            .collect();
        Snapshot {
            clock: *self.world.resource::<Clock>(),
            global: self.global().clone(),
            teams,
            stats: self.stats().clone(),
            shutdown: *self.world.resource::<Shutdown>(),
            live_connections: self.world.resource::<Connections>().len(),
            finished: self.is_finished(),
        }
    }

    /// Teams whose link, counts, health or history changed since `since`
    /// (a mark this returned earlier; `Tick::default()` for every team),
    /// and the mark to pass next time: for a view of the teams kept
    /// current by what changed, beside the run (the HTTP side). It reads
    /// each team's change ticks, a compare per team: call it once per
    /// publication, not per step. Reading leaves the core as it was.
    pub(crate) fn teams_changed_since(
        &mut self,
        since: bevy_ecs::change_detection::Tick,
    ) -> (
        Vec<crate::protocol::TeamId>,
        bevy_ecs::change_detection::Tick,
    ) {
        // Every change made from now on is stamped after `now`.
        let now = self.world.increment_change_tick();
        let mut teams = self.world.query::<(
            &Team,
            Ref<Link>,
            Ref<Counters>,
            Ref<Health>,
            Ref<lifecycle::History>,
        )>();
        let changed = teams
            .iter(&self.world)
            .filter(|(_, link, counters, health, history)| {
                [
                    link.last_changed(),
                    counters.last_changed(),
                    health.last_changed(),
                    history.last_changed(),
                ]
                .into_iter()
                .any(|at| at.is_newer_than(since, now))
            })
            .map(|(team, ..)| team.id)
            .collect();
        (changed, now)
    }
}

fn build_schedule() -> Schedule {
    use systems::{global, healthcheck, heartbeat, ingest, reconnect, shutdown};
    let mut schedule = Schedule::new(Tick);
    schedule.configure_sets(
        (
            CoreSystems::Ingest,
            CoreSystems::Global,
            CoreSystems::Heartbeat,
            CoreSystems::Reconnect,
            CoreSystems::Emit,
        )
            .chain(),
    );
    schedule.add_systems((
        (ingest::route_net_events, ingest::apply_in_arrival_order)
            .chain()
            .in_set(CoreSystems::Ingest),
        (global::run_global_deadlines, shutdown::begin_shutdown)
            .chain()
            .in_set(CoreSystems::Global),
        heartbeat::send_pings_and_check_pongs.in_set(CoreSystems::Heartbeat),
        (reconnect::expire_deadlines, reconnect::request_team_urls)
            .chain()
            .in_set(CoreSystems::Reconnect),
        (
            healthcheck::answer_healthchecks,
            shutdown::close_global_link,
            lifecycle::tell_transitions,
        )
            .chain()
            .in_set(CoreSystems::Emit),
    ));
    schedule
}

/// `team` without the socket marks whose ids the core does not take
/// ([`resources::MAX_CONN_ID`]); its counts stay.
fn without_insane_marks(team: &SavedTeam) -> SavedTeam {
    let mut team = team.clone();
    team.socket = team.socket.filter(|m| resources::sane_conn(m.conn));
    team.unreported.retain(|m| resources::sane_conn(m.conn));
    team
}

#[cfg(test)]
mod tests {
    use bevy_ecs::component::ComponentId;
    use bevy_ecs::system::{IntoSystem, System, SystemAccess};

    use super::*;
    use components::{Counters, Health};
    use resources::Visits;
    use systems::{global, shutdown, traffic};

    /// What a system may do to team entities.
    #[derive(Debug, PartialEq)]
    enum Reach {
        /// Nothing, or only what it counts in `Visits`.
        Counted,
        /// Anything: it takes the world whole.
        Exclusive,
        /// Read team components without counting them.
        Uncounted,
    }

    fn reach(access: &SystemAccess, teams: &[ComponentId], visits: ComponentId) -> Reach {
        match access {
            SystemAccess::None => Reach::Counted,
            SystemAccess::Exclusive => Reach::Exclusive,
            SystemAccess::Shared(set) => {
                let access = set.combined_access();
                if teams.iter().any(|&c| access.has_read(c)) && !access.has_write(visits) {
                    Reach::Uncounted
                } else {
                    Reach::Counted
                }
            }
        }
    }

    /// `tests/idle_cost.rs` holds `Visits` to O(due timers + events) per
    /// step; that proves something only if no system of the step can touch
    /// a team entity without counting it. So every system of the schedule,
    /// and every route handler it runs, that reads a team component also
    /// writes `Visits`; the only ones that take the world whole are the one
    /// that runs the handlers and the one that spawns joined teams.
    #[test]
    fn every_system_that_reads_teams_counts_its_visits() {
        let mut core = Core::new(&Config::default(), 1).expect("valid config");
        core.step();
        let world = &mut core.world;
        let teams = [
            world.register_component::<Team>(),
            world.register_component::<Link>(),
            world.register_component::<Counters>(),
            world.register_component::<Health>(),
            world.register_component::<History>(),
        ];
        let visits = world.component_id::<Visits>().expect("a resource");
        // In schedule order (bevy names systems only with its `debug`
        // feature).
        let scheduled: Vec<Reach> = core
            .schedule
            .systems_with_access()
            .expect("the schedule ran")
            .map(|(_, system)| reach(system.access(), &teams, visits))
            .collect();
        let exclusive = scheduled.iter().filter(|r| **r == Reach::Exclusive).count();
        assert!(scheduled.len() >= 10, "only {} systems", scheduled.len());
        assert_eq!(
            exclusive, 1,
            "one exclusive system (apply_in_arrival_order) expected: {scheduled:?}"
        );
        let uncounted: Vec<usize> = (0..scheduled.len())
            .filter(|&i| scheduled[i] == Reach::Uncounted)
            .collect();
        assert!(
            uncounted.is_empty(),
            "scheduled systems {uncounted:?} read team components without counting visits: \
             {scheduled:?}"
        );
        let mut handler = |mut system: Box<dyn System<In = (), Out = ()>>| {
            let access = system.initialize(world);
            reach(&access, &teams, visits)
        };
        // The route handlers (`ingest::RouteHandlers::register`).
        assert_eq!(
            handler(Box::new(IntoSystem::into_system(
                global::admit_joined_teams
            ))),
            Reach::Exclusive
        );
        for (name, reached) in [
            (
                "handle_global_events",
                handler(Box::new(IntoSystem::into_system(
                    global::handle_global_events,
                ))),
            ),
            (
                "begin_shutdown",
                handler(Box::new(IntoSystem::into_system(shutdown::begin_shutdown))),
            ),
            (
                "handle_team_events",
                handler(Box::new(IntoSystem::into_system(
                    traffic::handle_team_events,
                ))),
            ),
        ] {
            assert_eq!(reached, Reach::Counted, "{name}");
        }
    }
}
