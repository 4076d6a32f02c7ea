//! A tiny reference model of what the core must have done, stepped beside
//! it from the same inputs (the events the core ingested, in order) and
//! compared with it after every step. It knows the protocol's rules, not
//! the core's code: which teams were admitted, which left, which requests
//! are awaited, what every team's counts must be, which connections are
//! live. Every rule it checks is one of `PROTOCOL.md`.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use switchboard::bridge::{ConnId, ConnKind, Inbound, NetCommand, NetEvent, TeamControl};
use switchboard::core::GlobalState;
use switchboard::core::SavedTeam;
use switchboard::core::{AfterClose, LinkState};
use switchboard::protocol::{
    GlobalClientEvent, GlobalServerEvent, TeamId, decode_global_client, normalize_ws_url,
};
use switchboard::{Config, Core};

use super::wire::Counted;

/// Fails the check with a message.
macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}
pub(crate) use ensure;

/// A connection as the core must see it: opened by an `Open` command, not
/// yet ended by an ingested terminal event.
#[derive(Clone, Copy, Debug)]
struct Live {
    kind: ConnKind,
    /// The core sent `Abort`: it gave up on it; only its terminal event
    /// and messages it had read may still come.
    aborted: bool,
    /// The core sent `Close`.
    closed: bool,
    /// Its `Opened` was ingested.
    opened: bool,
    /// Its terminal event was ingested this step. It is forgotten after
    /// the step's commands: those were decided in the same tick, some
    /// (those of events that arrived before it) before the core looked at
    /// the terminal event.
    ended: bool,
}

/// What the run measured, for the report.
#[derive(Clone, Copy, Debug, Default)]
pub struct Seen {
    /// Steps checked.
    pub steps: u64,
    /// Most timers held at once.
    pub max_timers: usize,
    /// Most timers per joined team (+1) at once.
    pub max_timers_per_team: f64,
    /// Most requests in flight at once.
    pub max_in_flight: usize,
    /// Healthcheck replies checked.
    pub replies: u64,
    /// Messages counted.
    pub messages: u64,
    /// Teams seen connected, summed over checks.
    pub connected: u64,
    /// Most requests for one team the server held at once (one the core
    /// gave up on after `request_timeout` still waits at the server).
    pub held_per_team: usize,
    /// Crashes after which the new core restored teams from the store.
    pub crash_restores: u64,
    /// Steps checked after a `goodbye` was acted on.
    pub after_goodbye: u64,
    /// Teams seen backing off, summed over checks.
    pub backing_off: u64,
    /// Backoffs waited out: a team backing off at one check and, its wait
    /// over, retrying (asking, connecting or connected) at the next.
    pub backoff_waits: u64,
    /// Most links one core declared dead for want of a pong.
    pub pong_timeouts: u64,
}

/// The reference model.
pub struct Model {
    cap: usize,
    max_teams: usize,
    request_timeout: u64,
    backoff_min: u64,
    backoff_max: u64,
    ping_interval: u64,
    secure: bool,
    hosts: bool,
    conns: HashMap<ConnId, Live>,
    /// Events handed to the core and not yet ingested, in order.
    queue: VecDeque<(NetEvent, Counted)>,
    /// Messages and props ingested per team, over its whole life.
    counts: BTreeMap<TeamId, (u64, u64)>,
    /// Teams ever admitted (and not lost to a crash).
    admitted: BTreeSet<TeamId>,
    /// Teams that left and have not joined since: never reconnected.
    left: BTreeSet<TeamId>,
    /// Teams restored as joined and not announced by a `team.join` since.
    resumed: BTreeSet<TeamId>,
    /// Requests awaited, with when they were sent.
    outstanding: BTreeMap<TeamId, u64>,
    /// Teams whose awaited request was answered with a URL this step, with
    /// it (normalised): the only teams the core may open a socket for.
    answered: BTreeMap<TeamId, String>,
    /// `goodbye` was ingested: nothing is opened or requested any more.
    goodbye: bool,
    /// Healthcheck requests ingested this step, with their connection.
    asked: Vec<ConnId>,
    /// What the last check saw, to tell new states from old ones.
    last_states: HashMap<TeamId, LinkState>,
    last_attempts: HashMap<TeamId, u32>,
    last_global: GlobalState,
    last_global_attempts: u32,
    /// The state store: what `changed_teams` handed over.
    pub store: BTreeMap<TeamId, SavedTeam>,
    /// Figures for the report.
    pub seen: Seen,
}

impl Model {
    /// A model for a fresh core built from `config`.
    pub fn new(config: &Config) -> Model {
        let ms = |d: std::time::Duration| d.as_millis() as u64;
        Model {
            cap: config.max_requests_in_flight,
            max_teams: config.max_teams,
            request_timeout: ms(config.request_timeout),
            backoff_min: ms(config.backoff_min),
            backoff_max: ms(config.backoff_max),
            ping_interval: ms(config.ping_interval),
            secure: config.global_url.starts_with("wss://"),
            hosts: !config.team_hosts.is_empty(),
            conns: HashMap::new(),
            queue: VecDeque::new(),
            counts: BTreeMap::new(),
            admitted: BTreeSet::new(),
            left: BTreeSet::new(),
            resumed: BTreeSet::new(),
            outstanding: BTreeMap::new(),
            answered: BTreeMap::new(),
            goodbye: false,
            asked: Vec::new(),
            last_states: HashMap::new(),
            last_attempts: HashMap::new(),
            last_global: GlobalState::Idle,
            last_global_attempts: 0,
            store: BTreeMap::new(),
            seen: Seen::default(),
        }
    }

    /// An event handed to the core.
    pub fn pushed(&mut self, event: NetEvent, counted: Counted) {
        self.queue.push_back((event, counted));
    }

    /// Whether `goodbye` has been ingested.
    pub fn ended(&self) -> bool {
        self.goodbye
    }

    /// Teams admitted and not left: the ones that must get connected.
    pub fn joined(&self) -> Vec<TeamId> {
        self.admitted.difference(&self.left).copied().collect()
    }

    /// The expected counts of every admitted team.
    pub fn counts(&self, team: TeamId) -> (u64, u64) {
        self.counts.get(&team).copied().unwrap_or_default()
    }

    /// Applies one step of the core: the events it ingested, the deadlines
    /// that came due, the commands it sent; then checks every rule.
    /// `waiting`: events pushed and not applied yet (the driver's inbox
    /// and what the core was handed).
    pub fn after_step(
        &mut self,
        core: &Core,
        waiting: usize,
        commands: &[NetCommand],
    ) -> Result<(), String> {
        self.seen.steps += 1;
        let now = core.now().as_millis() as u64;
        let ingested = self
            .queue
            .len()
            .checked_sub(waiting)
            .ok_or("more events wait than were pushed")?;
        self.asked.clear();
        self.answered.clear();
        let batch: Vec<_> = self.queue.drain(..ingested).collect();
        self.ingest_batch(batch)?;
        // Requests whose deadline passed were given up (the answers, if
        // any, were taken first: events come before deadlines in a tick).
        let timeout = self.request_timeout;
        self.outstanding.retain(|_, sent| now < *sent + timeout);
        for command in commands {
            self.command(command, core)?;
        }
        self.conns.retain(|_, live| !live.ended);
        self.check(core, commands)
    }

    /// One step's ingested events, in arrival order across every
    /// connection: the order the core must act on them in.
    fn ingest_batch(&mut self, batch: Vec<(NetEvent, Counted)>) -> Result<(), String> {
        // Teams whose socket Global closed this step (`team.left`): a later
        // `team.left` on that socket finds it closing.
        let mut left_on_global = BTreeSet::new();
        // Sockets that said `team.left` this step: closing since.
        let mut closing = BTreeSet::new();
        for (event, counted) in batch {
            let conn = event.conn();
            let Some(live) = self.conns.get(&conn).copied().filter(|l| !l.ended) else {
                return Err(format!(
                    "harness: {event:?} for a connection the core never opened or already ended"
                ));
            };
            if let Some(l) = self.conns.get_mut(&conn) {
                match event {
                    NetEvent::Opened { .. } => l.opened = true,
                    NetEvent::Closed { .. } | NetEvent::OpenFailed { .. } => l.ended = true,
                    _ => {}
                }
            }
            let team = match live.kind {
                ConnKind::Global => {
                    self.on_global(event, live, &mut left_on_global);
                    continue;
                }
                ConnKind::Team(team) => team,
            };
            if let Some((for_team, n, props)) = counted {
                // Every message a socket read before its terminal event
                // counts, the core having given up on the socket or not.
                let c = self.counts.entry(for_team).or_default();
                c.0 += n;
                c.1 += props;
                self.seen.messages += n;
            }
            let NetEvent::Received { frame, .. } = event else {
                continue;
            };
            // `team.left` on a team's open socket (not one we gave up on or
            // already closed) is the team leaving — unless Global's events
            // before it this step already closed it, or the run is ending.
            if let Inbound::Team(Ok(TeamControl::TeamLeft { team_id })) = *frame
                && team_id == team
                && !live.aborted
                && !live.closed
                && self.conns.get(&conn).is_some_and(|l| l.opened)
                && !left_on_global.contains(&team)
                && !self.goodbye
                && closing.insert(conn)
            {
                self.left.insert(team);
            }
        }
        Ok(())
    }

    fn on_global(&mut self, event: NetEvent, live: Live, left: &mut BTreeSet<TeamId>) {
        let conn = event.conn();
        if matches!(event, NetEvent::Closed { .. } | NetEvent::OpenFailed { .. }) {
            if !live.aborted {
                // A dropped Global takes its unanswered requests with it.
                self.outstanding.clear();
            }
            return;
        }
        if live.aborted || self.goodbye {
            return;
        }
        let NetEvent::Received { frame, .. } = event else {
            return;
        };
        let Inbound::Global(Ok(event)) = *frame else {
            return;
        };
        match &event {
            GlobalServerEvent::TeamJoin { team_id } => {
                if !self.admitted.contains(team_id) && self.admitted.len() < self.max_teams {
                    self.admitted.insert(*team_id);
                }
                self.left.remove(team_id);
                self.resumed.remove(team_id);
            }
            GlobalServerEvent::TeamLeft { team_id } => {
                if self.admitted.contains(team_id) {
                    self.left.insert(*team_id);
                    left.insert(*team_id);
                    self.outstanding.remove(team_id);
                }
            }
            GlobalServerEvent::TeamConnect { team_id, ws_url } => {
                if self.outstanding.remove(team_id).is_some()
                    && let Ok(url) = normalize_ws_url(ws_url)
                {
                    self.answered.insert(*team_id, url);
                }
            }
            GlobalServerEvent::Error { .. } => {
                if let Some(team) = event.failed_team_connect()
                    && self.outstanding.remove(&team).is_some()
                    && self.resumed.remove(&team)
                {
                    // Restored as joined, never announced since, and
                    // refused: Global does not know it any more.
                    self.left.insert(team);
                }
            }
            GlobalServerEvent::Healthcheck => self.asked.push(conn),
            GlobalServerEvent::Goodbye => {
                self.goodbye = true;
                self.outstanding.clear();
            }
            GlobalServerEvent::Hello => {}
        }
    }

    fn command(&mut self, command: &NetCommand, core: &Core) -> Result<(), String> {
        match command {
            NetCommand::Open { conn, kind, url } => {
                ensure!(
                    !self.conns.contains_key(conn),
                    "{conn} opened twice: {command:?}"
                );
                match kind {
                    ConnKind::Global => {
                        ensure!(!self.goodbye, "Global opened after goodbye: {command:?}");
                        let other = self
                            .conns
                            .iter()
                            .find(|(_, l)| l.kind == ConnKind::Global && !l.aborted && !l.ended);
                        ensure!(
                            other.is_none(),
                            "a second Global socket {conn} while {:?} is live",
                            other.map(|(c, _)| c)
                        );
                    }
                    ConnKind::Team(team) => {
                        // Only a URL the client asked for, once: a left
                        // team is never asked for (see `team.connect`).
                        ensure!(
                            self.answered.remove(team).as_ref() == Some(url),
                            "opened {url} for team {team}, not the answer to its request this step"
                        );
                        let live = self.live_sockets(*team);
                        ensure!(
                            live.is_empty(),
                            "a second socket {conn} for team {team} while {live:?} is open or opening"
                        );
                        ensure!(
                            !self.secure || url.starts_with("wss://"),
                            "opened {url} for team {team}: plaintext under a wss:// Global"
                        );
                        let host = url.split("://").nth(1).and_then(|r| r.split('/').next());
                        ensure!(
                            !self.hosts || matches!(host, Some("sim" | "other.sim")),
                            "opened {url} for team {team}: host not allowed"
                        );
                    }
                }
                self.conns.insert(
                    *conn,
                    Live {
                        kind: *kind,
                        aborted: false,
                        closed: false,
                        opened: false,
                        ended: false,
                    },
                );
            }
            NetCommand::Send { conn, text } => {
                let live = self.usable(*conn, command)?;
                if live.kind != ConnKind::Global {
                    return Ok(());
                }
                match decode_global_client(text.as_str()) {
                    Ok(GlobalClientEvent::TeamConnect { team_id }) => {
                        ensure!(!self.goodbye, "team.connect after goodbye: {command:?}");
                        ensure!(
                            self.admitted.contains(&team_id),
                            "team.connect for team {team_id}, never admitted"
                        );
                        ensure!(
                            !self.left.contains(&team_id),
                            "team.connect for team {team_id}, which left and has not rejoined"
                        );
                        ensure!(
                            !self.outstanding.contains_key(&team_id),
                            "a second team.connect in flight for team {team_id}"
                        );
                        self.outstanding
                            .insert(team_id, core.now().as_millis() as u64);
                        ensure!(
                            self.outstanding.len() <= self.cap,
                            "{} requests in flight, above the cap of {}",
                            self.outstanding.len(),
                            self.cap
                        );
                    }
                    Ok(GlobalClientEvent::Healthcheck { stats }) => {
                        self.seen.replies += 1;
                        let ids: Vec<TeamId> = stats.iter().map(|s| s.id).collect();
                        let expected: Vec<TeamId> = self.admitted.iter().copied().collect();
                        ensure!(
                            ids == expected,
                            "healthcheck lists {ids:?}, every team ever joined is {expected:?}"
                        );
                        for s in stats.iter() {
                            let (m, p) = self.counts(s.id);
                            ensure!(
                                (s.message_count, s.props_count) == (m, p),
                                "healthcheck says team {} has {}/{} messages/props, {m}/{p} were delivered",
                                s.id,
                                s.message_count,
                                s.props_count
                            );
                        }
                        ensure!(
                            *stats == *core.healthcheck(),
                            "the reply differs from the core's own healthcheck"
                        );
                    }
                    Err(error) => return Err(format!("undecodable frame on Global: {error}")),
                }
            }
            NetCommand::Probe { conn } => {
                let live = self.usable(*conn, command)?;
                ensure!(
                    live.kind == ConnKind::Global,
                    "probe on a team socket: {command:?}"
                );
            }
            NetCommand::Close { conn, .. } => {
                self.usable(*conn, command)?;
                if let Some(live) = self.conns.get_mut(conn) {
                    live.closed = true;
                }
            }
            NetCommand::Abort { conn } => {
                let live = self.conns.get_mut(conn);
                ensure!(
                    live.as_ref().is_some_and(|l| !l.aborted),
                    "abort of a connection that is not live: {command:?}"
                );
                if let Some(live) = live {
                    live.aborted = true;
                    if live.kind == ConnKind::Global && !self.goodbye {
                        self.outstanding.clear();
                    }
                }
            }
        }
        Ok(())
    }

    /// A connection a frame or a close may be sent on: open or opening,
    /// not given up on, not closed by us.
    fn usable(&self, conn: ConnId, command: &NetCommand) -> Result<Live, String> {
        match self.conns.get(&conn) {
            Some(live) if !live.aborted && !live.closed => Ok(*live),
            Some(live) => Err(format!(
                "{command:?} on a connection already {}",
                if live.aborted { "aborted" } else { "closed" }
            )),
            None => Err(format!(
                "{command:?} on a connection that is not open or opening"
            )),
        }
    }

    /// The team's sockets that are open or opening: not ended, not aborted.
    fn live_sockets(&self, team: TeamId) -> Vec<ConnId> {
        let mut live: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, l)| l.kind == ConnKind::Team(team) && !l.aborted && !l.ended)
            .map(|(c, _)| *c)
            .collect();
        live.sort();
        live
    }

    fn ceiling(&self, attempts: u32) -> u64 {
        let shift = attempts.saturating_sub(1).min(32);
        self.backoff_min
            .saturating_mul(1u64 << shift)
            .min(self.backoff_max)
    }

    /// Every rule, after a step.
    fn check(&mut self, core: &Core, commands: &[NetCommand]) -> Result<(), String> {
        let now = core.now().as_millis() as u64;
        self.seen.after_goodbye += u64::from(self.goodbye);
        self.seen.pong_timeouts = self.seen.pong_timeouts.max(core.stats().dead_links);
        ensure!(
            core.shutdown_cause().is_some() == self.goodbye,
            "the core's shutdown ({:?}) disagrees with goodbye ingested ({})",
            core.shutdown_cause(),
            self.goodbye
        );
        // Exactly one reply per request on a Global socket that is still
        // the core's at the end of the step.
        let replies = commands
            .iter()
            .filter(|c| {
                matches!(c, NetCommand::Send { text, .. }
                    if text.as_str().starts_with(r#"{"type":"healthcheck""#))
            })
            .count();
        let global = core.global().conn();
        let expected = self.asked.iter().filter(|c| Some(**c) == global).count();
        ensure!(
            replies == expected,
            "{replies} healthcheck replies for {expected} requests"
        );
        let in_flight = core.requests_in_flight();
        ensure!(
            in_flight == self.outstanding.len() && in_flight <= self.cap,
            "the core has {in_flight} requests in flight, the model {:?} (cap {})",
            self.outstanding,
            self.cap
        );
        self.seen.max_in_flight = self.seen.max_in_flight.max(in_flight);

        // Every team ever admitted, exactly once, sorted, with its counts.
        let stats = core.healthcheck();
        let ids: Vec<TeamId> = stats.iter().map(|s| s.id).collect();
        let expected: Vec<TeamId> = self.admitted.iter().copied().collect();
        ensure!(
            ids == expected,
            "the core knows teams {ids:?}, the model {expected:?}"
        );
        let mut joined = 0usize;
        for s in stats.iter() {
            ensure!(
                (s.message_count, s.props_count) == self.counts(s.id),
                "team {} counts {}/{} messages/props, {:?} were delivered",
                s.id,
                s.message_count,
                s.props_count,
                self.counts(s.id)
            );
            let team = core.team(s.id).ok_or("a listed team has no view")?;
            let state = team.link;
            if let Some(conn) = state.conn() {
                ensure!(
                    self.conns
                        .get(&conn)
                        .is_some_and(|l| !l.aborted && l.kind == ConnKind::Team(s.id)),
                    "team {} is {state:?} on a connection that is not its live socket",
                    s.id
                );
            }
            let live = self.live_sockets(s.id);
            ensure!(
                live.len() <= 1,
                "team {} has sockets {live:?} open or opening",
                s.id
            );
            if let LinkState::Open { conn, .. } = state {
                ensure!(
                    self.conns.get(&conn).is_some_and(|l| l.opened),
                    "team {} connected on {conn}, which the network never opened",
                    s.id
                );
                self.seen.connected += 1;
            }
            self.seen.backing_off += u64::from(matches!(state, LinkState::Backoff { .. }));
            ensure!(
                matches!(state, LinkState::Requesting { .. })
                    == self.outstanding.contains_key(&s.id),
                "team {} is {state:?}; the model says its request is {}",
                s.id,
                if self.outstanding.contains_key(&s.id) {
                    "awaited"
                } else {
                    "not awaited"
                }
            );
            if let LinkState::Backoff { until } = state
                && self.last_states.get(&s.id) != Some(&state)
            {
                let ceiling = self.ceiling(team.health.attempts);
                ensure!(
                    until >= now && until - now <= ceiling,
                    "team {} backs off {}ms after {} failures: outside [0, {ceiling}]",
                    s.id,
                    until as i64 - now as i64,
                    team.health.attempts
                );
            }
            // Failures are forgiven only by stability: a link up for a
            // ping interval (the core also wants to have heard from it).
            let attempts = team.health.attempts;
            let before = self.last_attempts.get(&s.id).copied().unwrap_or(0);
            if attempts < before {
                let stable = |state: Option<&LinkState>| {
                    matches!(state, Some(LinkState::Open { since, .. })
                        if now >= since + self.ping_interval)
                };
                ensure!(
                    stable(Some(&state)) || stable(self.last_states.get(&s.id)),
                    "team {} forgiven {before} failures while {state:?} (was {:?}) at {now}: \
                     not up for a ping interval",
                    s.id,
                    self.last_states.get(&s.id)
                );
            }
            self.last_attempts.insert(s.id, attempts);
            // Standing: left, stopped by the end of the run, or joined.
            let is_left = matches!(
                state,
                LinkState::Left
                    | LinkState::Closing {
                        after: AfterClose::Left,
                        ..
                    }
            );
            let stopped = matches!(
                state,
                LinkState::Stopped
                    | LinkState::Closing {
                        after: AfterClose::Stop,
                        ..
                    }
            );
            let joined_now = state.is_joined()
                || matches!(
                    state,
                    LinkState::Closing {
                        after: AfterClose::Rejoin,
                        ..
                    }
                );
            let standing = if self.left.contains(&s.id) {
                is_left
            } else if self.goodbye {
                stopped
            } else {
                joined_now
            };
            ensure!(
                standing,
                "team {} is {state:?}; it should be {}",
                s.id,
                if self.left.contains(&s.id) {
                    "left"
                } else if self.goodbye {
                    "stopped"
                } else {
                    "joined"
                }
            );
            if joined_now {
                joined += 1;
            }
            if let Some(LinkState::Backoff { until }) = self.last_states.get(&s.id)
                && now >= *until
                && state.is_joined()
                && !matches!(state, LinkState::Backoff { .. })
            {
                self.seen.backoff_waits += 1;
            }
            self.last_states.insert(s.id, state);
        }
        let g = core.global();
        if let Some(conn) = g.conn() {
            ensure!(
                self.conns
                    .get(&conn)
                    .is_some_and(|l| !l.aborted && l.kind == ConnKind::Global),
                "Global is {:?} on a connection that is not live",
                g.state()
            );
        }
        if let GlobalState::Backoff { until } = g.state()
            && self.last_global != g.state()
        {
            let ceiling = self.ceiling(g.attempts());
            ensure!(
                until >= now && until - now <= ceiling,
                "Global backs off {}ms after {} failures: outside [0, {ceiling}]",
                until as i64 - now as i64,
                g.attempts()
            );
        }
        if g.attempts() < self.last_global_attempts {
            let stable = |state: GlobalState| {
                matches!(state, GlobalState::Open { since, .. }
                    if now >= since + self.ping_interval)
            };
            ensure!(
                stable(g.state()) || stable(self.last_global),
                "Global forgiven {} failures while {:?} (was {:?}) at {now}: not up for a ping interval",
                self.last_global_attempts,
                g.state(),
                self.last_global
            );
        }
        self.last_global_attempts = g.attempts();
        self.last_global = g.state();
        // Stale timers are dropped when they come due, not when their link
        // moves on; a few per team is the design.
        let timers = core.pending_timers();
        self.seen.max_timers = self.seen.max_timers.max(timers);
        let per_team = timers as f64 / (joined + 1) as f64;
        if per_team > self.seen.max_timers_per_team {
            self.seen.max_timers_per_team = per_team;
        }
        ensure!(
            timers <= TIMERS_PER_TEAM * self.admitted.len() + SPARE_TIMERS,
            "{timers} timers held for {} teams",
            self.admitted.len()
        );
        Ok(())
    }

    /// A restart: the new core resumed from `store`. A clean one first
    /// checks that the store, fed only what `changed_teams` handed over,
    /// holds exactly what the core knew.
    pub fn restarted(&mut self, core: &Core, clean: bool) -> Result<(), String> {
        if !clean && !core.restored().is_empty() {
            self.seen.crash_restores += 1;
        }
        if clean {
            let ids: Vec<TeamId> = self.store.keys().copied().collect();
            let expected: Vec<TeamId> = self.admitted.iter().copied().collect();
            ensure!(
                ids == expected,
                "the store holds {ids:?}, the core knew {expected:?}"
            );
            for saved in self.store.values() {
                ensure!(
                    (saved.message_count, saved.props_count) == self.counts(saved.id),
                    "the store holds {saved:?}, the model {:?}",
                    self.counts(saved.id)
                );
            }
        }
        self.conns.clear();
        self.queue.clear();
        self.outstanding.clear();
        self.asked.clear();
        self.last_states.clear();
        self.last_attempts.clear();
        self.last_global = GlobalState::Idle;
        self.last_global_attempts = 0;
        self.goodbye = false;
        self.admitted = self.store.keys().copied().collect();
        self.counts = self
            .store
            .values()
            .map(|s| (s.id, (s.message_count, s.props_count)))
            .collect();
        self.left = self
            .store
            .values()
            .filter(|s| !s.joined)
            .map(|s| s.id)
            .collect();
        self.resumed = self
            .store
            .values()
            .filter(|s| s.joined)
            .map(|s| s.id)
            .collect();
        let stats = core.healthcheck();
        let ids: Vec<TeamId> = stats.iter().map(|s| s.id).collect();
        let expected: Vec<TeamId> = self.admitted.iter().copied().collect();
        ensure!(
            ids == expected,
            "restored teams {ids:?}, saved {expected:?}"
        );
        for s in stats.iter() {
            ensure!(
                (s.message_count, s.props_count) == self.counts(s.id),
                "team {} restored with {}/{}, saved {:?}",
                s.id,
                s.message_count,
                s.props_count,
                self.counts(s.id)
            );
        }
        Ok(())
    }
}

/// Timers a team may hold at once, stale ones included: its state deadline,
/// its next ping and the pong checks of the pings in flight, and as many
/// again left over from states it passed through.
pub const TIMERS_PER_TEAM: usize = 8;

/// Timers held whatever the number of teams: a heap may keep some stale
/// ones rather than clean up after every transition.
pub const SPARE_TIMERS: usize = 128;
