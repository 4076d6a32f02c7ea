//! Reconnects: state deadlines (backoff over, request or connect or close
//! taking too long), and sending queued `team.connect` requests.

use bevy_ecs::prelude::*;

use crate::core::components::{Health, Link, LinkState, Team};
use crate::core::links::Links;
use crate::core::resources::Shutdown;
use crate::core::systems::global::GlobalLink;

/// Fires due state deadlines. A deadline counts only if the link is still in
/// the state (same epoch) that set it. Cost: O(due timers).
pub fn expire_deadlines(mut teams: Query<(&mut Link, &mut Health)>, mut links: Links) {
    while let Some(due) = links.pop_due_deadline() {
        let Ok((mut link, mut health)) = teams.get_mut(due.entity) else {
            continue;
        };
        if link.epoch != due.epoch {
            continue;
        }
        let entity = due.entity;
        match link.state {
            LinkState::Backoff { .. } => links.retry(entity, &mut link),
            LinkState::Requesting { .. } => {
                links.fail(
                    entity,
                    &mut link,
                    &mut health,
                    "team.connect unanswered",
                    false,
                );
            }
            LinkState::Connecting { .. } => {
                links.fail(entity, &mut link, &mut health, "connect timeout", true);
            }
            LinkState::Closing { .. } => links.closed(entity, &mut link, true),
            _ => {}
        }
    }
}

/// Sends `team.connect` for queued teams while the Global link is ready and
/// request slots are free. Cost: O(requests sent).
pub fn request_team_urls(
    global: Res<GlobalLink>,
    shutdown: Res<Shutdown>,
    mut teams: Query<(&Team, &mut Link)>,
    mut links: Links,
) {
    let Some(conn) = global.ready_conn() else {
        return;
    };
    if shutdown.cause.is_some() {
        return;
    }
    while links.requests.in_flight.len() < links.settings.max_requests_in_flight {
        let Some(entity) = links.requests.pop() else {
            break;
        };
        if let Ok((team, mut link)) = teams.get_mut(entity)
            && matches!(link.state, LinkState::NeedsUrl)
        {
            links.request(entity, team.id, &mut link, conn);
        }
    }
}
