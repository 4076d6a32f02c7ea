//! Ingest: take this tick's events off the bridge and route each to the
//! Global lifecycle or to its team, by connection id.

use bevy_ecs::prelude::*;
use tracing::trace;

use crate::bridge::NetEvent;
use crate::core::config::Settings;
use crate::core::resources::{
    Connections, GlobalInbox, NetInbox, Owner, Recorded, Stats, TeamInbox,
};

/// Drains at most `max_events_per_tick` events, in arrival order. A
/// connection the core gave up on (retired) is done with here: messages it
/// had already read still go to its team, to be counted; its terminal event
/// ends it; anything else is stale, as is every event about a connection
/// that already ended.
pub fn route_net_events(
    inbox: Res<NetInbox>,
    settings: Res<Settings>,
    mut conns: ResMut<Connections>,
    mut global: ResMut<GlobalInbox>,
    mut teams: ResMut<TeamInbox>,
    mut stats: ResMut<Stats>,
    mut recorded: ResMut<Recorded>,
) {
    inbox.0.drain(settings.max_events_per_tick, |event| {
        stats.events += 1;
        if recorded.on {
            recorded.events.push(event.clone());
        }
        let conn = event.conn();
        match conns.owner(conn) {
            Some((Owner::Global, true)) => global.0.push(event),
            Some((Owner::Team(entity), true)) => teams.0.push((entity, event)),
            Some((owner, false)) => match event {
                NetEvent::Closed { .. } | NetEvent::OpenFailed { .. } => conns.ended(conn),
                NetEvent::Messages { .. } => match owner {
                    Owner::Team(entity) => teams.0.push((entity, event)),
                    Owner::Global => stats.stale_events += 1,
                },
                _ => stats.stale_events += 1,
            },
            None => {
                stats.stale_events += 1;
                trace!(%conn, "event for a connection that ended");
            }
        }
    });
}
