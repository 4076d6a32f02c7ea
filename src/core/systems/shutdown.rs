//! Shutdown, after `goodbye` or a local stop: every team socket gets a
//! normal close, then Global does, after the tick's healthcheck replies.

use bevy_ecs::prelude::*;

use crate::core::components::{AfterClose, Health, Link, LinkState};
use crate::core::global_link::GlobalLink;
use crate::core::links::Links;
use crate::core::resources::{Shutdown, Visits};

/// Once a shutdown is asked for, closes every team socket with a normal
/// close and stops every team that has none. Runs its full scan once.
pub fn begin_shutdown(
    mut shutdown: ResMut<Shutdown>,
    mut visits: ResMut<Visits>,
    mut teams: Query<(Entity, &mut Link, &mut Health)>,
    mut links: Links,
) {
    if shutdown.cause.is_none() || shutdown.begun {
        return;
    }
    shutdown.begun = true;
    for (entity, mut link, mut health) in &mut teams {
        visits.0 += 1;
        health.connected_at_shutdown = link.state.connected();
        // A team that left stays `left`: the report must tell the two apart.
        if link.state != LinkState::Left {
            links.close(entity, &mut link, AfterClose::Stop);
        }
    }
}

/// Closes the Global link at the end of a shutdown tick, after the
/// healthcheck replies of that tick went out on it.
pub fn close_global_link(
    shutdown: Res<Shutdown>,
    mut global: ResMut<GlobalLink>,
    mut links: Links,
) {
    if !shutdown.begun {
        return;
    }
    global.close(&mut links);
}
