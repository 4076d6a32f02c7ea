//! The Global link's systems: admitting teams, acting on what Global says,
//! and the link's own deadlines. The state machine itself is
//! [`crate::core::global_link::GlobalLink`].

use bevy_ecs::prelude::*;
use bevy_ecs::system::SystemParam;
use tracing::{debug, info, warn};

use crate::bridge::{ConnId, Inbound, NetEvent};
use crate::core::components::{AfterClose, Counters, Health, Link, LinkState, Team};
use crate::core::global_link::{GlobalDue, GlobalLink};
use crate::core::lifecycle::{Fleet, History};
use crate::core::links::Links;
use crate::core::resources::{
    GlobalInbox, LogLimiter, PendingHealthchecks, Shutdown, ShutdownCause, Stats, TeamIndex, Visits,
};
use crate::protocol::{GlobalServerEvent, TeamId, clip};

/// Team data the Global systems read and change.
type TeamParts = (&'static Team, &'static mut Link, &'static mut Health);

/// Everything the Global lifecycle reads and changes.
#[derive(SystemParam)]
pub struct GlobalLifecycle<'w, 's> {
    global: ResMut<'w, GlobalLink>,
    shutdown: ResMut<'w, Shutdown>,
    pending: ResMut<'w, PendingHealthchecks>,
    stats: ResMut<'w, Stats>,
    limiter: ResMut<'w, LogLimiter>,
    index: Res<'w, TeamIndex>,
    visits: ResMut<'w, Visits>,
    teams: Query<'w, 's, TeamParts>,
    links: Links<'w>,
}

/// Spawns an entity for every team id seen for the first time in this run
/// of Global events' `team.join`s, so the lifecycle system can treat every
/// join alike. A new
/// team beyond `max_teams` is refused: counted, logged at a bounded rate.
///
/// An exclusive system: it spawns straight into the world, where a command
/// buffer would keep the room a burst of ten thousand joins took.
pub fn admit_joined_teams(world: &mut World) {
    if world.resource::<Shutdown>().cause.is_some() {
        return;
    }
    let joined: Vec<TeamId> = world
        .resource::<GlobalInbox>()
        .0
        .iter()
        .filter_map(|event| match event {
            NetEvent::Received { frame, .. } => match &**frame {
                Inbound::Global(Ok(event)) => Some(event),
                _ => None,
            },
            _ => None,
        })
        // Nothing after `goodbye` is acted on, joins included.
        .take_while(|event| **event != GlobalServerEvent::Goodbye)
        .filter_map(|event| match *event {
            GlobalServerEvent::TeamJoin { team_id } => Some(team_id),
            _ => None,
        })
        .collect();
    let max_teams = world.resource::<crate::core::config::Settings>().max_teams;
    for team_id in joined {
        let index = world.resource::<TeamIndex>();
        if index.0.contains_key(&team_id) {
            continue;
        }
        if index.0.len() >= max_teams {
            world.resource_mut::<Stats>().refused_joins += 1;
            let now = world.resource::<crate::core::resources::Clock>().now;
            if let Some(suppressed) = world.resource_mut::<LogLimiter>().allow("max_teams", now) {
                warn!(team_id = %team_id, max_teams, suppressed,
                      "team.join refused: the team table is full (--max-teams)");
            }
            continue;
        }
        let entity = world
            .spawn((
                Team { id: team_id },
                Link::default(),
                Counters::default(),
                Health::default(),
                History::default(),
            ))
            .id();
        world.resource_mut::<TeamIndex>().0.insert(team_id, entity);
        world.resource_mut::<Fleet>().admitted();
    }
}

/// Acts on a run of Global events, in arrival order (see
/// [`apply_in_arrival_order`](super::ingest::apply_in_arrival_order)).
pub fn handle_global_events(mut inbox: ResMut<GlobalInbox>, mut lc: GlobalLifecycle) {
    // Taken, not drained: a burst must not leave its capacity behind.
    for event in std::mem::take(&mut inbox.0) {
        let (now, step) = (lc.links.now(), lc.links.step());
        match event {
            NetEvent::Opened { conn } => lc.global.opened(conn, now, step),
            NetEvent::Alive { .. } | NetEvent::Flow { .. } => lc.global.heard(now, step),
            // Only the leader sends these, and only of worker sockets.
            NetEvent::Quiet { .. } => {
                *lc.stats
                    .ignored
                    .entry("quiet notice on global")
                    .or_default() += 1;
            }
            NetEvent::Messages { .. } => {
                *lc.stats.ignored.entry("team frame on global").or_default() += 1;
            }
            NetEvent::OpenFailed { error, .. } => lc.drop_global(&error, false),
            NetEvent::Closed { reason, .. } => {
                if matches!(
                    lc.global.state(),
                    crate::core::global_link::GlobalState::Closing { .. }
                ) {
                    lc.global.closed(&mut lc.links, false);
                } else {
                    lc.drop_global(&reason.to_string(), false);
                }
            }
            NetEvent::Received { conn, frame } => {
                lc.global.heard(now, step);
                match *frame {
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

/// The Global link's own deadlines: open or reopen it, give up a slow
/// handshake, probe a quiet link with a websocket ping (the protocol pings
/// team links only, so a black-holed Global is caught this way) and drop it
/// if nothing answers within the pong timeout, forgive past failures once
/// it proved stable, and drop an unanswered close. O(1) per tick.
pub fn run_global_deadlines(mut lc: GlobalLifecycle) {
    // Each action moves the deadline past now (or re-opens at once after a
    // zero backoff); the bound is a guard, not a schedule.
    for _ in 0..4 {
        let now = lc.links.now();
        let Some((at, due)) = lc.global.next_due(lc.links.settings(), &lc.shutdown) else {
            return;
        };
        if at > now {
            return;
        }
        match due {
            GlobalDue::Open => lc.global.open(&mut lc.links),
            GlobalDue::ConnectTimeout => lc.drop_global("connect timeout", true),
            GlobalDue::Probe => lc.global.probe(&mut lc.links),
            GlobalDue::Silent => {
                lc.drop_global("Global silent: no frame within pong timeout", true);
            }
            GlobalDue::Forgive => lc.global.forgive(),
            GlobalDue::CloseTimeout => lc.global.closed(&mut lc.links, true),
        }
    }
}

impl GlobalLifecycle<'_, '_> {
    /// The Global socket is gone: reopen it later, and ask again on the
    /// next one for every URL requested on this one (their answers can no
    /// longer arrive).
    fn drop_global(&mut self, error: &str, abort: bool) {
        self.global.lost(
            &mut self.links,
            &self.shutdown,
            &mut self.limiter,
            error,
            abort,
        );
        for entity in self.links.requests_in_flight() {
            self.visits.0 += 1;
            if let Ok((_, mut link, _)) = self.teams.get_mut(entity) {
                self.links.requeue(entity, &mut link);
            }
        }
    }

    /// Acts on one well-formed Global event.
    fn on_event(&mut self, event: GlobalServerEvent, conn: ConnId) {
        // At most one team looked up per event.
        self.visits.0 += 1;
        match event {
            GlobalServerEvent::Hello => self.global.mark_ready(),
            GlobalServerEvent::TeamJoin { team_id } => self.on_join(team_id),
            GlobalServerEvent::TeamLeft { team_id } => self.on_left(team_id),
            GlobalServerEvent::TeamConnect { team_id, ws_url } => self.on_connect(team_id, &ws_url),
            error @ GlobalServerEvent::Error { .. } => self.on_error(&error),
            GlobalServerEvent::Healthcheck => self.pending.0.push(conn),
            GlobalServerEvent::Goodbye => {
                info!("goodbye from Global: ending the run");
                self.shutdown.cause = Some(ShutdownCause::Goodbye);
            }
        }
    }

    /// Counts an event ignored, and logs it at a bounded rate.
    fn ignore(&mut self, why: &'static str, team: TeamId) {
        *self.stats.ignored.entry(why).or_default() += 1;
        if self.limiter.allow(why, self.links.now()).is_some() {
            debug!(team_id = %team, why, "ignored Global event");
        }
    }

    /// `team.join`: the team (admitted by `admit_joined_teams`, or refused
    /// there and absent) asks for its URL.
    fn on_join(&mut self, team_id: TeamId) {
        // A server that skips `hello` but announces teams is talking.
        self.global.mark_ready();
        let Some(&entity) = self.index.0.get(&team_id) else {
            return;
        };
        let Ok((_, mut link, mut health)) = self.teams.get_mut(entity) else {
            return;
        };
        health.resumed = false;
        if !self.links.join(entity, &mut link) {
            self.ignore("duplicate team.join", team_id);
        }
    }

    /// `team.left` on Global: the team's socket is closed and it stays out.
    fn on_left(&mut self, team_id: TeamId) {
        let found = self.index.0.get(&team_id).copied();
        let Some((entity, Ok((_, mut link, _)))) = found.map(|e| (e, self.teams.get_mut(e))) else {
            return self.ignore("team.left for unknown team", team_id);
        };
        self.links.close(entity, &mut link, AfterClose::Left);
        if let Some(suppressed) = self.limiter.allow("team_left", self.links.now()) {
            info!(team_id = %team_id, suppressed, "team left (Global)");
        }
    }

    /// `team.connect`: the URL a requesting team asked for.
    fn on_connect(&mut self, team_id: TeamId, ws_url: &str) {
        let found = self.index.0.get(&team_id).copied();
        let Some((entity, Ok((team, mut link, mut health)))) =
            found.map(|e| (e, self.teams.get_mut(e)))
        else {
            return self.ignore("unrequested team.connect", team_id);
        };
        if !matches!(link.state, LinkState::Requesting { .. }) {
            return self.ignore("unrequested team.connect", team_id);
        }
        if let Err(error) = self
            .links
            .connect(entity, team.id, &mut link, &mut health, ws_url)
        {
            *self.stats.ignored.entry("refused ws_url").or_default() += 1;
            if self.limiter.allow("bad_ws_url", self.links.now()).is_some() {
                warn!(team_id = %team_id, %error, "unusable ws_url; retrying");
            }
        }
    }

    /// An `error` from Global; one that refuses a `team.connect` fails that
    /// team's request.
    fn on_error(&mut self, error: &GlobalServerEvent) {
        let GlobalServerEvent::Error {
            message, team_id, ..
        } = error
        else {
            return;
        };
        let now = self.links.now();
        let failed = error.failed_team_connect();
        self.stats.server_errors += 1;
        if self.limiter.allow("server_error", now).is_some() {
            warn!(message = %clip(message, 200), ?team_id, ?failed, "error from Global");
        }
        let Some(team_id) = failed else {
            return;
        };
        let Some(&entity) = self.index.0.get(&team_id) else {
            return;
        };
        let Ok((_, mut link, mut health)) = self.teams.get_mut(entity) else {
            return;
        };
        if !matches!(link.state, LinkState::Requesting { .. }) {
            return;
        }
        if health.resumed {
            // Restored as joined, and never announced since: the Global
            // does not know it any more (it left while we were down).
            // Waiting for a join beats retrying forever.
            health.resumed = false;
            self.links.close(entity, &mut link, AfterClose::Left);
            if self.limiter.allow("resumed_refused", now).is_some() {
                info!(team_id = %team_id, "team restored from state is unknown to Global; left");
            }
        } else {
            let why = format!("team.connect refused: {}", clip(message, 120));
            self.links
                .fail(entity, &mut link, &mut health, "refused", &why, false);
        }
    }
}
