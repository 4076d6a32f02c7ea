//! Team traffic: socket lifecycle events and frames on team connections.

use bevy_ecs::prelude::*;
use tracing::{debug, info, warn};

use crate::bridge::{Inbound, NetEvent, TeamControl};
use crate::core::components::{AfterClose, Counters, Health, Link, LinkState, Team};
use crate::core::links::Links;
use crate::core::resources::{LogLimiter, Stats, TeamInbox, Visits};

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
    let now = links.now();
    // Taken, not drained: a burst (10,000 sockets opening) must not leave
    // its capacity behind for the rest of the run.
    for (entity, event) in std::mem::take(&mut inbox.0) {
        visits.0 += 1;
        let Ok((team, mut link, mut counters, mut health)) = teams.get_mut(entity) else {
            continue;
        };
        // The state is the authority on which socket is the team's. Messages
        // from a socket the core gave up on were still received for the team.
        if link.state.conn() != Some(event.conn()) {
            match event {
                NetEvent::Messages { count, props, .. } => {
                    links.count(&mut counters, count, props);
                    stats.late_messages += u64::from(count);
                }
                _ => stats.stale_events += 1,
            }
            continue;
        }
        match event {
            NetEvent::Opened { .. } => {
                if matches!(link.state, LinkState::Connecting { .. }) {
                    links.opened(entity, &mut link, &mut health);
                    debug!(team_id = %team.id, "team socket open");
                }
            }
            NetEvent::OpenFailed { error, .. } => {
                links.fail(entity, &mut link, &mut health, "open_failed", &error, false);
            }
            NetEvent::Alive { .. } => health.last_activity = now,
            NetEvent::Flow { paused, .. } => {
                health.paused = paused;
                health.last_activity = now;
            }
            NetEvent::Messages { count, props, .. } => {
                health.last_activity = now;
                links.count(&mut counters, count, props);
            }
            NetEvent::Closed { reason, .. } => {
                if !matches!(link.state, LinkState::Closing { .. })
                    && limiter.allow("team_drop", now).is_some()
                {
                    info!(team_id = %team.id, %reason, "team socket dropped; re-requesting");
                }
                let detail = reason.to_string();
                links.fail(
                    entity,
                    &mut link,
                    &mut health,
                    reason.class(),
                    &detail,
                    false,
                );
            }
            NetEvent::Received { frame, .. } => {
                // Any frame, even a bad one, shows the link is alive.
                health.last_activity = now;
                let decoded = match *frame {
                    Inbound::Team(decoded) => decoded,
                    Inbound::Global(_) => {
                        *stats.ignored.entry("global frame on team").or_default() += 1;
                        continue;
                    }
                };
                match decoded {
                    // A hello proves the socket opened, not that the server
                    // is healthy: failures are forgiven only once the link
                    // proved stable (see the heartbeat), so a server that
                    // greets and drops at once sees the backoff grow.
                    Ok(TeamControl::Hello) => {}
                    Ok(TeamControl::Pong { unique_id }) => {
                        if let Some(rtt) = on_pong(&mut health, unique_id, now) {
                            stats.rtt.observe(rtt);
                        }
                    }
                    Ok(TeamControl::TeamLeft { team_id }) if team_id != team.id => {
                        // Inconsistent: neither team is closed on its word.
                        health.bad_frames += 1;
                        *stats.bad_team.entry("team_left_mismatch").or_default() += 1;
                        if limiter.allow("team_left_mismatch", now).is_some() {
                            warn!(team_id = %team.id, said = %team_id, "team.left for another team on this socket; ignored");
                        }
                    }
                    Ok(TeamControl::TeamLeft { .. }) => {
                        if matches!(link.state, LinkState::Open { .. }) {
                            links.close(entity, &mut link, AfterClose::Left);
                            if let Some(suppressed) = limiter.allow("team_left", now) {
                                info!(team_id = %team.id, suppressed, "team left (team socket)");
                            }
                        }
                    }
                    Err(error) => {
                        health.bad_frames += 1;
                        *stats.bad_team.entry(error.class()).or_default() += 1;
                        if let Some(suppressed) = limiter.allow("bad_team", now) {
                            warn!(team_id = %team.id, %error, suppressed, "bad input on team socket");
                        }
                    }
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
