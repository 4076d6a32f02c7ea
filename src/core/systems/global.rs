//! The Global link: keeping it open, and acting on what it says.

use bevy_ecs::prelude::*;
use bevy_ecs::system::SystemParam;
use serde::Serialize;
use tracing::{debug, info, warn};

use crate::bridge::{ConnId, ConnKind, Inbound, NetCommand, NetEvent};
use crate::core::components::{AfterClose, Counters, Health, Link, Team};
use crate::core::links::{Links, MAX_ERROR_LEN};
use crate::core::resources::{
    GlobalInbox, LogLimiter, Owner, PendingHealthchecks, Shutdown, ShutdownCause, Stats, TeamIndex,
};
use crate::protocol::{GlobalServerEvent, clip};

/// The Global link's state machine. Times are core milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum GlobalState {
    /// Not opened yet.
    Idle,
    /// Socket opening.
    Connecting {
        /// The attempt.
        conn: ConnId,
        /// When it is abandoned.
        deadline: u64,
    },
    /// Socket open. `ready` once the server said `hello` (or anything that
    /// shows it is talking): only then are `team.connect` requests sent.
    Open {
        /// The socket.
        conn: ConnId,
        /// Whether requests may be sent.
        ready: bool,
    },
    /// Waiting to reopen.
    Backoff {
        /// When to reopen.
        until: u64,
    },
    /// Close frame sent at shutdown.
    Closing {
        /// The socket.
        conn: ConnId,
        /// When it is dropped without waiting longer.
        deadline: u64,
    },
    /// Closed for good.
    Closed,
}

/// The Global link as a resource: there is exactly one.
#[derive(Resource, Clone, Debug, Serialize)]
pub struct GlobalLink {
    /// Where it stands.
    pub state: GlobalState,
    /// Consecutive failed attempts; reset by `hello`.
    pub attempts: u32,
    /// Sockets opened over the run.
    pub connects: u64,
    /// Why the last attempt or socket failed.
    pub last_error: Option<String>,
    /// When anything last arrived on the open socket.
    pub last_activity: u64,
    /// When a websocket ping was sent to a quiet link, if one is unanswered.
    pub probe_sent_at: Option<u64>,
}

impl Default for GlobalLink {
    fn default() -> Self {
        GlobalLink {
            state: GlobalState::Idle,
            attempts: 0,
            connects: 0,
            last_error: None,
            last_activity: 0,
            probe_sent_at: None,
        }
    }
}

impl GlobalLink {
    /// The open socket, if requests and replies may be sent on it.
    pub fn ready_conn(&self) -> Option<ConnId> {
        match self.state {
            GlobalState::Open { conn, ready: true } => Some(conn),
            _ => None,
        }
    }

    /// When `maintain_global_link` or `watch_global_liveness` next has
    /// something to do, given the tunables: open, reopen, time out, probe.
    pub fn next_deadline(&self, ping_interval: u64, pong_timeout: u64) -> Option<u64> {
        match self.state {
            GlobalState::Idle => Some(0),
            GlobalState::Backoff { until } => Some(until),
            GlobalState::Connecting { deadline, .. } | GlobalState::Closing { deadline, .. } => {
                Some(deadline)
            }
            GlobalState::Open { .. } => Some(match self.unanswered_probe() {
                Some(sent) => sent + pong_timeout,
                None => self.last_activity + ping_interval,
            }),
            GlobalState::Closed => None,
        }
    }

    /// When the outstanding websocket probe was sent, if nothing has
    /// arrived since: a probe is answered by any frame at all.
    pub fn unanswered_probe(&self) -> Option<u64> {
        self.probe_sent_at
            .filter(|&sent| self.last_activity <= sent)
    }

    /// The socket the link owns, if any.
    pub fn conn(&self) -> Option<ConnId> {
        match self.state {
            GlobalState::Connecting { conn, .. }
            | GlobalState::Open { conn, .. }
            | GlobalState::Closing { conn, .. } => Some(conn),
            _ => None,
        }
    }
}

/// Team data the Global systems read and change.
type TeamParts = (&'static Team, &'static mut Link, &'static mut Health);

/// Everything the Global lifecycle reads and changes while acting on
/// Global events.
#[derive(SystemParam)]
pub struct GlobalLifecycle<'w, 's> {
    global: ResMut<'w, GlobalLink>,
    shutdown: ResMut<'w, Shutdown>,
    pending: ResMut<'w, PendingHealthchecks>,
    stats: ResMut<'w, Stats>,
    limiter: ResMut<'w, LogLimiter>,
    index: Res<'w, TeamIndex>,
    teams: Query<'w, 's, TeamParts>,
    links: Links<'w>,
}

/// Opens the Global link when it is down and its backoff is over, and
/// enforces its connect and close deadlines. O(1) per tick.
pub fn maintain_global_link(
    mut global: ResMut<GlobalLink>,
    shutdown: Res<Shutdown>,
    mut links: Links,
) {
    let now = links.clock.now;
    match global.state {
        GlobalState::Idle if shutdown.cause.is_none() => {
            open_global(&mut global, &mut links);
        }
        GlobalState::Backoff { until } if until <= now && shutdown.cause.is_none() => {
            open_global(&mut global, &mut links);
        }
        GlobalState::Connecting { conn, deadline } if deadline <= now => {
            links.outbox.0.push(NetCommand::Abort { conn });
            lose_global(&mut global, &mut links, &shutdown, "connect timeout");
        }
        GlobalState::Closing { conn, deadline } if deadline <= now => {
            links.outbox.0.push(NetCommand::Abort { conn });
            links.conns.forget(conn);
            global.state = GlobalState::Closed;
        }
        _ => {}
    }
}

fn open_global(global: &mut GlobalLink, links: &mut Links) {
    let conn = links.conns.open(Owner::Global);
    links.outbox.0.push(NetCommand::Open {
        conn,
        kind: ConnKind::Global,
        url: links.settings.global_url.clone(),
    });
    let deadline = links.clock.now + links.settings.connect_timeout;
    global.state = GlobalState::Connecting { conn, deadline };
    info!(%conn, url = %links.settings.global_url, "opening Global link");
}

/// The Global socket or attempt is gone. Reopen after a backoff (unless the
/// run is ending). Requests are the caller's business: an attempt that never
/// opened carried none (see [`drop_global`]).
fn lose_global(global: &mut GlobalLink, links: &mut Links, shutdown: &Shutdown, error: &str) {
    if let Some(conn) = global.conn() {
        links.conns.forget(conn);
    }
    if shutdown.cause.is_some() {
        global.state = GlobalState::Closed;
        return;
    }
    let delay = links.backoff_delay(global.attempts);
    global.attempts = global.attempts.saturating_add(1);
    global.last_error = Some(clip(error, MAX_ERROR_LEN));
    global.state = GlobalState::Backoff {
        until: links.clock.now + delay,
    };
    warn!(error, retry_in_ms = delay, "Global link lost; reopening");
}

/// Spawns an entity for every team id seen for the first time in this tick's
/// `team.join`s, so the lifecycle system can treat every join alike.
pub fn admit_joined_teams(
    inbox: Res<GlobalInbox>,
    shutdown: Res<Shutdown>,
    mut index: ResMut<TeamIndex>,
    mut commands: Commands,
) {
    if shutdown.cause.is_some() {
        return;
    }
    for event in &inbox.0 {
        let NetEvent::Received {
            frame: Inbound::Global(Ok(event)),
            ..
        } = event
        else {
            continue;
        };
        // Nothing after `goodbye` is acted on, joins included.
        if *event == GlobalServerEvent::Goodbye {
            break;
        }
        if let GlobalServerEvent::TeamJoin { team_id } = event {
            index.0.entry(*team_id).or_insert_with(|| {
                commands
                    .spawn((
                        Team { id: *team_id },
                        Link::default(),
                        Counters::default(),
                        Health::default(),
                    ))
                    .id()
            });
        }
    }
}

/// Acts on this tick's Global events, in arrival order.
pub fn handle_global_events(mut inbox: ResMut<GlobalInbox>, mut lc: GlobalLifecycle) {
    for event in inbox.0.drain(..) {
        let now = lc.links.clock.now;
        match event {
            NetEvent::Opened { conn } => {
                if let GlobalState::Connecting { conn: c, .. } = lc.global.state
                    && c == conn
                {
                    lc.global.state = GlobalState::Open { conn, ready: false };
                    lc.global.connects += 1;
                    lc.global.last_activity = now;
                    lc.global.probe_sent_at = None;
                    info!(%conn, "Global link open");
                }
            }
            NetEvent::Alive { .. } => lc.global.last_activity = now,
            NetEvent::Messages { .. } => {
                *lc.stats.ignored.entry("team frame on global").or_default() += 1;
            }
            NetEvent::OpenFailed { error, .. } => lc.drop_global(&error),
            NetEvent::Closed { reason, .. } => {
                if matches!(lc.global.state, GlobalState::Closing { .. }) {
                    if let Some(conn) = lc.global.conn() {
                        lc.links.conns.forget(conn);
                    }
                    lc.global.state = GlobalState::Closed;
                } else {
                    lc.drop_global(&reason.to_string());
                }
            }
            NetEvent::Received { conn, frame } => {
                lc.global.last_activity = now;
                match frame {
                    Inbound::Global(Ok(event)) if lc.shutdown.cause.is_none() => {
                        lc.on_event(event, conn);
                    }
                    // Nothing after goodbye is acted on.
                    Inbound::Global(Ok(_)) => {}
                    Inbound::Global(Err(error)) => {
                        *lc.stats.bad_global.entry(error.class()).or_default() += 1;
                        if let Some(suppressed) = lc.limiter.allow("bad_global", now) {
                            warn!(%conn, %error, suppressed, "bad input on Global");
                        }
                    }
                    Inbound::Team(_) => {
                        *lc.stats.ignored.entry("team frame on global").or_default() += 1;
                    }
                }
            }
        }
    }
}

/// An open Global socket is gone: reopen it later, and ask again on the
/// next one for every URL requested on this one (their answers can no
/// longer arrive).
fn drop_global(
    global: &mut GlobalLink,
    links: &mut Links,
    shutdown: &Shutdown,
    teams: &mut Query<TeamParts>,
    error: &str,
) {
    lose_global(global, links, shutdown, error);
    let in_flight: Vec<Entity> = links.requests.in_flight.iter().copied().collect();
    for entity in in_flight {
        if let Ok((_, mut link, _)) = teams.get_mut(entity) {
            links.requeue(entity, &mut link);
        }
    }
}

/// The protocol pings team links only, so a Global link that went silent
/// (a black-holed TCP connection) is probed with a websocket ping once it
/// has been quiet for a ping interval, and dropped if nothing at all
/// arrives within the pong timeout after that. O(1) per tick.
pub fn watch_global_liveness(
    mut global: ResMut<GlobalLink>,
    shutdown: Res<Shutdown>,
    mut teams: Query<TeamParts>,
    mut links: Links,
) {
    let GlobalState::Open { conn, .. } = global.state else {
        return;
    };
    if shutdown.cause.is_some() {
        return;
    }
    let now = links.clock.now;
    let (interval, timeout) = (links.settings.ping_interval, links.settings.pong_timeout);
    match global.unanswered_probe() {
        Some(sent) if now >= sent + timeout => {
            links.outbox.0.push(NetCommand::Abort { conn });
            let error = "Global silent: no frame within pong timeout";
            drop_global(&mut global, &mut links, &shutdown, &mut teams, error);
        }
        // Waiting for the answer: never re-probe (that would re-arm it).
        Some(_) => {}
        None if now >= global.last_activity + interval => {
            links.outbox.0.push(NetCommand::Probe { conn });
            global.probe_sent_at = Some(now);
        }
        None => {}
    }
}

impl GlobalLifecycle<'_, '_> {
    /// See [`drop_global`].
    fn drop_global(&mut self, error: &str) {
        drop_global(
            &mut self.global,
            &mut self.links,
            &self.shutdown,
            &mut self.teams,
            error,
        );
    }

    /// Acts on one well-formed Global event.
    fn on_event(&mut self, event: GlobalServerEvent, conn: ConnId) {
        let Self {
            global,
            shutdown,
            pending,
            stats,
            limiter,
            index,
            teams,
            links,
        } = self;
        let now = links.clock.now;
        let mut ignore = |stats: &mut Stats, why: &'static str, team: crate::protocol::TeamId| {
            *stats.ignored.entry(why).or_default() += 1;
            if limiter.allow(why, now).is_some() {
                debug!(team_id = %team, why, "ignored Global event");
            }
        };
        match event {
            GlobalServerEvent::Hello => {
                mark_ready(global);
                global.attempts = 0;
            }
            GlobalServerEvent::TeamJoin { team_id } => {
                // A server that skips `hello` but announces teams is talking.
                mark_ready(global);
                if let Some(&entity) = index.0.get(&team_id)
                    && let Ok((_, mut link, _)) = teams.get_mut(entity)
                    && !links.join(entity, &mut link)
                {
                    ignore(stats, "duplicate team.join", team_id);
                }
            }
            GlobalServerEvent::TeamLeft { team_id } => {
                match index
                    .0
                    .get(&team_id)
                    .and_then(|&e| teams.get_mut(e).ok().map(|t| (e, t)))
                {
                    Some((entity, (_, mut link, _))) => {
                        links.close(entity, &mut link, AfterClose::Left);
                        if let Some(suppressed) = limiter.allow("team_left", now) {
                            info!(team_id = %team_id, suppressed, "team left (Global)");
                        }
                    }
                    None => ignore(stats, "team.left for unknown team", team_id),
                }
            }
            GlobalServerEvent::TeamConnect { team_id, ws_url } => {
                let found = index
                    .0
                    .get(&team_id)
                    .and_then(|&e| teams.get_mut(e).ok().map(|t| (e, t)));
                match found {
                    Some((entity, (team, mut link, mut health)))
                        if matches!(
                            link.state,
                            crate::core::components::LinkState::Requesting { .. }
                        ) =>
                    {
                        if let Err(error) =
                            links.connect(entity, team.id, &mut link, &mut health, &ws_url)
                            && limiter.allow("bad_ws_url", now).is_some()
                        {
                            warn!(team_id = %team_id, %error, "unusable ws_url; retrying");
                        }
                    }
                    _ => ignore(stats, "unrequested team.connect", team_id),
                }
            }
            ref error @ GlobalServerEvent::Error {
                ref message,
                team_id,
                ..
            } => {
                stats.server_errors += 1;
                let failed = error.failed_team_connect();
                if limiter.allow("server_error", now).is_some() {
                    warn!(message = %clip(message, 200), ?team_id, ?failed, "error from Global");
                }
                if let Some(team_id) = failed
                    && let Some(&entity) = index.0.get(&team_id)
                    && let Ok((_, mut link, mut health)) = teams.get_mut(entity)
                    && matches!(
                        link.state,
                        crate::core::components::LinkState::Requesting { .. }
                    )
                {
                    let why = format!("team.connect refused: {}", clip(message, 120));
                    links.fail(entity, &mut link, &mut health, &why, false);
                }
            }
            GlobalServerEvent::Healthcheck => pending.0.push(conn),
            GlobalServerEvent::Goodbye => {
                info!("goodbye from Global: ending the run");
                shutdown.cause = Some(ShutdownCause::Goodbye);
            }
        }
    }
}

fn mark_ready(global: &mut GlobalLink) {
    if let GlobalState::Open { conn, .. } = global.state {
        global.state = GlobalState::Open { conn, ready: true };
    }
}
