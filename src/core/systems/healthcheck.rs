//! Healthcheck replies: one per request, in order, on the Global connection
//! the request came on, built after this tick's traffic was counted.

use bevy_ecs::prelude::*;

use crate::bridge::{NetCommand, Text};
use crate::core::components::{Counters, Link};
use crate::core::global_link::GlobalLink;
use crate::core::resources::{Outbox, PendingHealthchecks, Stats, TeamIndex, Visits};
use crate::protocol::{GlobalClientEvent, TeamStats, encode};

/// Longest line one team can take in a reply: every number at its widest
/// (`{"id":18446744073709551615,"connected":false,...}`) plus a comma.
pub const MAX_STATS_ENTRY: usize = 118;

/// The largest healthcheck reply `max_teams` teams can produce: the
/// transport's cap on an outbound frame derives from it, so a reply is
/// never too large to send.
pub fn max_reply_bytes(max_teams: usize) -> usize {
    const ENVELOPE: usize = r#"{"type":"healthcheck","stats":[]}"#.len();
    max_teams
        .saturating_mul(MAX_STATS_ENTRY)
        .saturating_add(ENVELOPE)
}

/// Every team ever joined, sorted by id, from `get`'s `connected` and
/// counters of each. O(teams): runs per request only.
pub fn team_stats(
    index: &TeamIndex,
    mut get: impl FnMut(Entity) -> Option<(bool, Counters)>,
) -> Vec<TeamStats> {
    index
        .0
        .iter()
        .filter_map(|(&id, &entity)| {
            let (connected, counters) = get(entity)?;
            Some(TeamStats {
                id,
                connected,
                message_count: counters.message_count,
                props_count: counters.props_count,
            })
        })
        .collect()
}

/// Answers the healthchecks asked this tick, all with one reply encoded
/// once (a burst of requests costs one encoding, not one each). A request
/// whose Global connection is gone is dropped: its asker can no longer
/// hear the answer.
pub fn answer_healthchecks(
    mut pending: ResMut<PendingHealthchecks>,
    global: Res<GlobalLink>,
    index: Res<TeamIndex>,
    teams: Query<(&Link, &Counters)>,
    mut outbox: ResMut<Outbox>,
    mut stats: ResMut<Stats>,
    mut visits: ResMut<Visits>,
) {
    if pending.0.is_empty() {
        return;
    }
    // Answered on the Global socket the request came on, as long as it is
    // open, `hello` or not: every request gets its reply.
    let current = global.open_conn();
    let mut reply: Option<Text> = None;
    for conn in pending.0.drain(..) {
        if current != Some(conn) {
            continue;
        }
        let text = reply
            .get_or_insert_with(|| {
                let stats = team_stats(&index, |e| {
                    visits.0 += 1;
                    let (link, counters) = teams.get(e).ok()?;
                    Some((link.state.connected(), *counters))
                });
                Text::from(encode(&GlobalClientEvent::Healthcheck {
                    stats: stats.into(),
                }))
            })
            .clone();
        outbox.0.push(NetCommand::Send { conn, text });
        stats.healthchecks_answered += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::TeamId;

    #[test]
    fn the_widest_entry_fits_the_bound() {
        let widest = TeamStats {
            id: TeamId(u64::MAX),
            connected: false,
            message_count: u64::MAX,
            props_count: u64::MAX,
        };
        let two = encode(&GlobalClientEvent::Healthcheck {
            stats: vec![widest.clone(), widest].into(),
        });
        assert!(
            two.len() <= max_reply_bytes(2),
            "{} > {}",
            two.len(),
            max_reply_bytes(2)
        );
        assert_eq!(
            two.len(),
            max_reply_bytes(2) - 1,
            "only the last comma is spare"
        );
    }
}
