//! Healthcheck replies: one per request, in order, on the Global connection
//! the request came on, built after this tick's traffic was counted.

use bevy_ecs::prelude::*;

use crate::bridge::{NetCommand, Outbound};
use crate::core::components::{Counters, Link, LinkState};
use crate::core::resources::{Outbox, PendingHealthchecks, Stats, TeamIndex};
use std::sync::Arc;

use crate::core::systems::global::{GlobalLink, GlobalState};
use crate::protocol::{GlobalClientEvent, TeamStats};

/// Every team ever joined, sorted by id. O(teams): runs per request only.
pub fn team_stats(
    index: &TeamIndex,
    mut get: impl FnMut(Entity) -> Option<(LinkState, Counters)>,
) -> Vec<TeamStats> {
    index
        .0
        .iter()
        .filter_map(|(&id, &entity)| {
            let (state, counters) = get(entity)?;
            Some(TeamStats {
                id,
                connected: matches!(state, LinkState::Open { .. }),
                message_count: counters.message_count,
                props_count: counters.props_count,
            })
        })
        .collect()
}

/// Answers the healthchecks asked this tick. A request whose Global
/// connection is gone is dropped: its asker can no longer hear the answer.
pub fn answer_healthchecks(
    mut pending: ResMut<PendingHealthchecks>,
    global: Res<GlobalLink>,
    index: Res<TeamIndex>,
    teams: Query<(&Link, &Counters)>,
    mut outbox: ResMut<Outbox>,
    mut stats: ResMut<Stats>,
) {
    if pending.0.is_empty() {
        return;
    }
    // Answered on the Global socket the request came on, as long as it is
    // open, `hello` or not: every request gets its reply.
    let current = match global.state {
        GlobalState::Open { conn, .. } => Some(conn),
        _ => None,
    };
    let mut reply: Option<Arc<[TeamStats]>> = None;
    for conn in pending.0.drain(..) {
        if current != Some(conn) {
            continue;
        }
        let stats_list = reply
            .get_or_insert_with(|| {
                team_stats(&index, |e| teams.get(e).ok().map(|(l, c)| (l.state, *c))).into()
            })
            .clone();
        outbox.0.push(NetCommand::Send {
            conn,
            frame: Outbound::Global(GlobalClientEvent::Healthcheck { stats: stats_list }),
        });
        stats.healthchecks_answered += 1;
    }
}
