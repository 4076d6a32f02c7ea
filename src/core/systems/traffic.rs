//! Team traffic: socket lifecycle events and frames on team connections.

use bevy_ecs::prelude::*;
use tracing::{debug, info, warn};

use crate::bridge::{CloseReason, Inbound, NetEvent, TeamControl};
use crate::core::components::{AfterClose, Counters, Health, Link, LinkState, Team};
use crate::core::links::Links;
use crate::core::resources::{LogLimiter, Stats, TeamInbox, Visits};
use crate::protocol::DecodeError;

/// Acts on a run of team events in arrival order (see
/// [`apply_in_arrival_order`](super::ingest::apply_in_arrival_order)).
/// Cost: O(events).
pub fn handle_team_events(
    mut inbox: ResMut<TeamInbox>,
    mut stats: ResMut<Stats>,
    mut limiter: ResMut<LogLimiter>,
    mut visits: ResMut<Visits>,
    mut teams: Query<(&Team, &mut Link, &mut Counters, &mut Health)>,
    mut links: Links,
) {
    let (now, step) = (links.now(), links.step());
    // Taken, not drained: a burst (10,000 sockets opening) must not leave
    // its capacity behind for the rest of the run.
    for (entity, event) in std::mem::take(&mut inbox.0) {
        visits.0 += 1;
        let Ok((team, link, counters, health)) = teams.get_mut(entity) else {
            continue;
        };
        let mut row = Row {
            entity,
            team,
            link,
            counters,
            health,
        };
        let mut around = Around {
            stats: &mut stats,
            limiter: &mut limiter,
            links: &mut links,
            now,
            step,
        };
        // The state is the authority on which socket is the team's.
        if row.link.state.conn() != Some(event.conn()) {
            around.not_the_teams_socket(&mut row, event);
        } else if let NetEvent::Received { frame, .. } = event {
            // Any frame, even a bad one, shows the link is alive.
            row.health.heard(now, step);
            match *frame {
                Inbound::Team(decoded) => around.on_frame(&mut row, decoded),
                Inbound::Global(_) => {
                    *around
                        .stats
                        .ignored
                        .entry("global frame on team")
                        .or_default() += 1;
                }
            }
        } else {
            around.on_socket_event(&mut row, event);
        }
    }
}

/// One team's components, borrowed for one event.
struct Row<'a> {
    entity: Entity,
    team: &'a Team,
    link: Mut<'a, Link>,
    counters: Mut<'a, Counters>,
    health: Mut<'a, Health>,
}

/// What an event may touch beside its team.
struct Around<'a, 'w> {
    stats: &'a mut Stats,
    limiter: &'a mut LogLimiter,
    links: &'a mut Links<'w>,
    now: u64,
    step: u64,
}

impl Around<'_, '_> {
    /// An event from a socket that is no longer the team's: messages the
    /// core gave up on were still received for the team, and count.
    fn not_the_teams_socket(&mut self, row: &mut Row<'_>, event: NetEvent) {
        match event {
            NetEvent::Messages {
                conn, count, props, ..
            } => {
                self.links
                    .count(&mut row.counters, conn, count.into(), props.into());
                self.stats.late_messages += u64::from(count);
            }
            NetEvent::Closed {
                conn,
                reason: CloseReason::WorkerLost,
            } => self.links.gave_up(row.team.id, &row.counters, conn),
            _ => self.stats.stale_events += 1,
        }
    }

    /// The socket's own lifecycle, flow and message runs.
    fn on_socket_event(&mut self, row: &mut Row<'_>, event: NetEvent) {
        let (now, step) = (self.now, self.step);
        match event {
            NetEvent::Opened { .. } => {
                if matches!(row.link.state, LinkState::Connecting { .. }) {
                    self.links
                        .opened(row.entity, &mut row.link, &mut row.health);
                    debug!(team_id = %row.team.id, "team socket open");
                }
            }
            NetEvent::OpenFailed { error, .. } => {
                self.links.fail(
                    row.entity,
                    &mut row.link,
                    &mut row.health,
                    "open_failed",
                    &error,
                    false,
                );
            }
            NetEvent::Alive { .. } => row.health.heard(now, step),
            NetEvent::Flow { paused, .. } => {
                row.health.paused = paused;
                row.health.heard(now, step);
            }
            // Not a sign of life: the leader's word about the worker.
            NetEvent::Quiet { quiet, .. } => self.links.hush(&mut row.link, quiet),
            NetEvent::Messages {
                conn, count, props, ..
            } => {
                row.health.heard(now, step);
                self.links
                    .count(&mut row.counters, conn, count.into(), props.into());
            }
            NetEvent::Closed { conn, reason } => {
                if reason == CloseReason::WorkerLost {
                    self.links.gave_up(row.team.id, &row.counters, conn);
                }
                if !matches!(row.link.state, LinkState::Closing { .. })
                    && self.limiter.allow("team_drop", now).is_some()
                {
                    info!(team_id = %row.team.id, %reason, "team socket dropped; re-requesting");
                }
                let detail = reason.to_string();
                self.links.fail(
                    row.entity,
                    &mut row.link,
                    &mut row.health,
                    reason.class(),
                    &detail,
                    false,
                );
            }
            // Frames go to `on_frame`.
            NetEvent::Received { .. } => {}
        }
    }

    /// A decoded team frame (or why it could not be decoded).
    fn on_frame(&mut self, row: &mut Row<'_>, decoded: Result<TeamControl, DecodeError>) {
        let now = self.now;
        let team_id = row.team.id;
        match decoded {
            // A hello proves the socket opened, not that the server is
            // healthy: failures are forgiven only once the link proved
            // stable (see the heartbeat), so a server that greets and drops
            // at once sees the backoff grow.
            Ok(TeamControl::Hello) => {}
            Ok(TeamControl::Pong { unique_id }) => {
                if let Some(rtt) = on_pong(&mut row.health, unique_id, now) {
                    self.stats.rtt.observe(rtt);
                }
            }
            Ok(TeamControl::TeamLeft { team_id: said }) if said != team_id => {
                // Inconsistent: neither team is closed on its word.
                row.health.bad_frames += 1;
                *self.stats.bad_team.entry("team_left_mismatch").or_default() += 1;
                if self.limiter.allow("team_left_mismatch", now).is_some() {
                    warn!(%team_id, %said, "team.left for another team on this socket; ignored");
                }
            }
            Ok(TeamControl::TeamLeft { .. }) => {
                if matches!(row.link.state, LinkState::Open { .. }) {
                    self.links
                        .close(row.entity, &mut row.link, AfterClose::Left);
                    if let Some(suppressed) = self.limiter.allow("team_left", now) {
                        info!(%team_id, suppressed, "team left (team socket)");
                    }
                }
            }
            Err(error) => {
                row.health.bad_frames += 1;
                *self.stats.bad_team.entry(error.class()).or_default() += 1;
                if let Some(suppressed) = self.limiter.allow("bad_team", now) {
                    warn!(%team_id, %error, suppressed, "bad input on team socket");
                }
            }
        }
    }
}

/// Matches a pong to its ping and returns the round trip. Pongs for older
/// pings than the one answered are implied lost; an unknown id is still a
/// sign of life, nothing more.
fn on_pong(health: &mut Health, unique_id: u64, now: u64) -> Option<u64> {
    let pos = health
        .pings_in_flight
        .iter()
        .position(|&(id, _)| id == unique_id)?;
    let (_, sent_at) = health.pings_in_flight[pos];
    health.pings_in_flight.drain(..=pos);
    let rtt = now - sent_at;
    health.rtt_ms = Some(rtt);
    health.last_pong = Some(now);
    Some(rtt)
}
