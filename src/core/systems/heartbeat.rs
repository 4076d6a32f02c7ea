//! Heartbeats: a ping on every open team link each interval, and a dead-link
//! verdict when nothing at all arrived within the pong timeout after one.

use bevy_ecs::prelude::*;
use tracing::warn;

use crate::bridge::{NetCommand, Outbound};
use crate::core::components::{Health, Link, LinkState, MAX_PINGS_IN_FLIGHT, Team};
use crate::core::links::{Beat, Links};
use crate::core::resources::{LogLimiter, Stats};
use crate::protocol::TeamClientEvent;

/// Source of fresh ping ids, unique across all teams for the whole run.
#[derive(Resource, Default)]
pub struct PingIds(u64);

/// Fires the heartbeat timers that are due. Cost: O(due timers).
pub fn send_pings_and_check_pongs(
    mut ids: ResMut<PingIds>,
    mut stats: ResMut<Stats>,
    mut limiter: ResMut<LogLimiter>,
    mut teams: Query<(&Team, &mut Link, &mut Health)>,
    mut links: Links,
) {
    let now = links.clock.now;
    while let Some(due) = links.beats.pop_due(now) {
        let Ok((team, mut link, mut health)) = teams.get_mut(due.entity) else {
            continue;
        };
        let LinkState::Open { conn, .. } = link.state else {
            continue;
        };
        if link.epoch != due.epoch {
            continue;
        }
        match due.kind {
            Beat::Ping => {
                ids.0 += 1;
                let unique_id = ids.0;
                links.outbox.0.push(NetCommand::Send {
                    conn,
                    frame: Outbound::Team(TeamClientEvent::Ping { unique_id }),
                });
                if health.pings_in_flight.len() == MAX_PINGS_IN_FLIGHT {
                    health.pings_in_flight.pop_front();
                }
                health.pings_in_flight.push_back((unique_id, now));
                stats.pings_sent += 1;
                let (interval, timeout) =
                    (links.settings.ping_interval, links.settings.pong_timeout);
                links.beats.set(
                    now + timeout,
                    due.entity,
                    link.epoch,
                    Beat::PongCheck { sent_at: now },
                );
                links
                    .beats
                    .set(now + interval, due.entity, link.epoch, Beat::Ping);
            }
            Beat::PongCheck { sent_at } => {
                if health.last_activity > sent_at {
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
                    "no frame within pong timeout",
                    true,
                );
            }
        }
    }
}
