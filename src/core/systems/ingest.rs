//! Ingest: take this tick's events off the bridge and route each to the
//! Global lifecycle or to its team, by connection id.

use bevy_ecs::prelude::*;
use tracing::trace;

use crate::core::config::Settings;
use crate::core::resources::{Connections, GlobalInbox, NetInbox, Owner, Stats, TeamInbox};

/// Drains at most `max_events_per_tick` events, in arrival order. Events
/// about connections the core already gave up on are counted and dropped.
pub fn route_net_events(
    inbox: Res<NetInbox>,
    settings: Res<Settings>,
    conns: Res<Connections>,
    mut global: ResMut<GlobalInbox>,
    mut teams: ResMut<TeamInbox>,
    mut stats: ResMut<Stats>,
) {
    for event in inbox.0.try_iter().take(settings.max_events_per_tick) {
        stats.events += 1;
        match conns.owner(event.conn()) {
            Some(Owner::Global) => global.0.push(event),
            Some(Owner::Team(entity)) => teams.0.push((entity, event)),
            None => {
                stats.stale_events += 1;
                trace!(conn = %event.conn(), "event for a forgotten connection");
            }
        }
    }
}
