//! Ingest: take the events handed over for this step, route each to the Global
//! lifecycle or to its team by connection id, and apply them in the order
//! they arrived, whichever connection they came on.
//!
//! Order across connections matters: a team that leaves on its own socket
//! and is announced again on Global a moment later must end up joined, and
//! a `team.connect` answer must meet the state the events before it left.
//! Each run of consecutive events with the same route is applied by that
//! route's systems before the next run starts, so the systems keep their
//! own queries while the world sees every event in arrival order.

use bevy_ecs::prelude::*;
use bevy_ecs::system::SystemId;
use tracing::{error, trace};

use crate::bridge::NetEvent;
use crate::core::resources::{
    Arrived, Connections, GlobalInbox, Owner, Recorded, Route, Routed, Stats, TeamInbox,
};

/// Takes every event handed over since the last step, in arrival order,
/// into [`Routed`]. A connection the core gave up on (retired) is done with
/// here: messages it had already read still go to its team, to be counted;
/// its terminal event ends it; anything else is stale, as is every event
/// about a connection that already ended.
pub fn route_net_events(
    mut arrived: ResMut<Arrived>,
    mut conns: ResMut<Connections>,
    mut routed: ResMut<Routed>,
    mut stats: ResMut<Stats>,
    mut recorded: ResMut<Recorded>,
) {
    for event in arrived.0.drain(..) {
        stats.events += 1;
        if recorded.on {
            recorded.events.push(event.clone());
        }
        let conn = event.conn();
        let route = match conns.owner(conn) {
            Some((Owner::Global, true)) => Some(Route::Global),
            Some((Owner::Team(entity), true)) => Some(Route::Team(entity)),
            Some((owner, false)) => match event {
                NetEvent::Closed { .. } | NetEvent::OpenFailed { .. } => {
                    conns.ended(conn);
                    None
                }
                NetEvent::Messages { .. } => match owner {
                    Owner::Team(entity) => Some(Route::Team(entity)),
                    Owner::Global => {
                        stats.stale_events += 1;
                        None
                    }
                },
                _ => {
                    stats.stale_events += 1;
                    None
                }
            },
            None => {
                stats.stale_events += 1;
                trace!(%conn, "event for a connection that ended");
                None
            }
        };
        if let Some(route) = route {
            routed.0.push((route, event));
        }
    }
}

/// The systems that apply one run of routed events, registered once.
#[derive(Resource, Clone, Copy)]
pub struct RouteHandlers {
    /// Global, in order: admit new teams, act on the events, begin a
    /// shutdown `goodbye` asked for (so team events after it meet it begun).
    pub global: [SystemId; 3],
    /// Team traffic.
    pub team: SystemId,
}

impl RouteHandlers {
    /// Registers the handlers in `world`.
    pub fn register(world: &mut World) -> RouteHandlers {
        use crate::core::systems::{global, shutdown, traffic};
        RouteHandlers {
            global: [
                world.register_system(global::admit_joined_teams),
                world.register_system(global::handle_global_events),
                world.register_system(shutdown::begin_shutdown),
            ],
            team: world.register_system(traffic::handle_team_events),
        }
    }
}

/// Applies this step's routed events in arrival order, one run of
/// same-route events at a time. Cost: O(events), plus a system run per run
/// of routes (a Global event between team events splits them).
pub fn apply_in_arrival_order(world: &mut World) {
    let events = std::mem::take(&mut world.resource_mut::<Routed>().0);
    if events.is_empty() {
        return;
    }
    let handlers = *world.resource::<RouteHandlers>();
    let mut events = events.into_iter().peekable();
    while let Some((route, event)) = events.next() {
        match route {
            Route::Global => {
                let mut run = vec![event];
                while let Some((_, event)) = events.next_if(|(r, _)| *r == Route::Global) {
                    run.push(event);
                }
                world.resource_mut::<GlobalInbox>().0 = run;
                for id in handlers.global {
                    run_handler(world, id);
                }
            }
            Route::Team(entity) => {
                let mut run = vec![(entity, event)];
                while let Some((Route::Team(entity), event)) =
                    events.next_if(|(r, _)| matches!(r, Route::Team(_)))
                {
                    run.push((entity, event));
                }
                world.resource_mut::<TeamInbox>().0 = run;
                run_handler(world, handlers.team);
            }
        }
    }
}

fn run_handler(world: &mut World, id: SystemId) {
    // Fails only for a system removed or already running: neither happens
    // to these, registered once and run only from here.
    if let Err(e) = world.run_system(id) {
        error!(error = %e, "an event handler could not run");
    }
}
