//! Heartbeats: a ping on every open team link each interval, and a dead-link
//! verdict when nothing at all arrived within the pong timeout after one.

use bevy_ecs::prelude::*;
use tracing::warn;

use crate::core::components::{Health, Link, LinkState, MAX_PINGS_IN_FLIGHT, Team};
use crate::core::links::{Beat, Links};
use crate::core::resources::{LogLimiter, Stats, Visits};

/// Source of fresh ping ids, unique across all teams for the whole run.
#[derive(Resource, Default)]
pub struct PingIds(u64);

/// Fires the heartbeat timers that are due. Cost: O(due timers).
///
/// A ping beat is also where failures are forgiven: a link that stayed open
/// a whole ping interval and heard anything since it opened has proved the
/// server healthy, so its next failure backs off from the start again. A
/// `hello` alone forgives nothing: a server that greets and drops at once
/// sees the backoff grow to its cap, not a retry storm.
pub fn send_pings_and_check_pongs(
    mut ids: ResMut<PingIds>,
    mut stats: ResMut<Stats>,
    mut limiter: ResMut<LogLimiter>,
    mut visits: ResMut<Visits>,
    mut teams: Query<(&Team, &mut Link, &mut Health)>,
    mut links: Links,
) {
    let now = links.now();
    while let Some(due) = links.pop_due_beat() {
        visits.0 += 1;
        let Ok((team, mut link, mut health)) = teams.get_mut(due.entity) else {
            continue;
        };
        let LinkState::Open { since, .. } = link.state else {
            continue;
        };
        if link.epoch != due.epoch {
            continue;
        }
        match due.kind {
            Beat::Ping => {
                if health.attempts > 0 && health.last_activity > since {
                    health.attempts = 0;
                }
                ids.0 += 1;
                let unique_id = ids.0;
                links.ping(due.entity, &link, unique_id);
                if health.pings_in_flight.len() == MAX_PINGS_IN_FLIGHT {
                    health.pings_in_flight.pop_front();
                }
                health.pings_in_flight.push_back((unique_id, now));
                stats.pings_sent += 1;
            }
            Beat::PongCheck { sent_step } => {
                if health.last_activity_step > sent_step || health.paused {
                    continue;
                }
                stats.dead_links += 1;
                if limiter.allow("dead_link", now).is_some() {
                    warn!(team_id = %team.id, silent_ms = now - health.last_activity, "team link dead: nothing since ping; dropping");
                }
                links.fail(
                    due.entity,
                    &mut link,
                    &mut health,
                    "pong_timeout",
                    "no frame within pong timeout",
                    true,
                );
            }
        }
    }
    links.sweep_beats(|due| {
        visits.0 += 1;
        teams
            .get(due.entity)
            .is_ok_and(|(_, l, _)| l.epoch == due.epoch)
    });
}
