//! Reconnects: state deadlines (backoff over, request or connect or close
//! taking too long), and sending queued `team.connect` requests.

use bevy_ecs::prelude::*;

use crate::bridge::ConnId;
use crate::core::components::{Health, Link, LinkState, Team};
use crate::core::config::Settings;
use crate::core::global_link::GlobalLink;
use crate::core::links::Links;
use crate::core::resources::{Shutdown, UrlRequests, Visits};

/// Fires due state deadlines. A deadline counts only if the link is still in
/// the state (same epoch) that set it. Cost: O(due timers).
pub fn expire_deadlines(
    mut visits: ResMut<Visits>,
    mut teams: Query<(&mut Link, &mut Health)>,
    mut links: Links,
) {
    while let Some(due) = links.pop_due_deadline() {
        visits.0 += 1;
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
                    "request_timeout",
                    "team.connect unanswered",
                    false,
                );
            }
            LinkState::Connecting { .. } => {
                let why = "connect timeout";
                links.fail(entity, &mut link, &mut health, "connect_timeout", why, true);
            }
            LinkState::Closing { .. } => links.closed(entity, &mut link, true),
            _ => {}
        }
    }
    links.sweep_deadlines(|due| {
        visits.0 += 1;
        teams
            .get(due.entity)
            .is_ok_and(|(l, _)| l.epoch == due.epoch)
    });
}

/// The Global connection a request may go out on now, if any: Global is
/// ready, the run is not ending, a team waits and a request slot is free.
/// The one rule for both [`request_team_urls`] and
/// [`crate::Core::has_pending_work`].
pub fn request_channel(
    global: &GlobalLink,
    shutdown: &Shutdown,
    requests: &UrlRequests,
    settings: &Settings,
) -> Option<ConnId> {
    let may = shutdown.cause.is_none()
        && requests.has_queued()
        && requests.in_flight() < settings.max_requests_in_flight;
    may.then(|| global.ready_conn()).flatten()
}

/// Sends `team.connect` for queued teams while the Global link is ready and
/// request slots are free. Cost: O(requests sent).
pub fn request_team_urls(
    global: Res<GlobalLink>,
    shutdown: Res<Shutdown>,
    mut visits: ResMut<Visits>,
    mut teams: Query<(&Team, &mut Link)>,
    mut links: Links,
) {
    let Some(conn) = request_channel(&global, &shutdown, links.requests(), links.settings()) else {
        return;
    };
    while let Some(entity) = links.next_to_request() {
        visits.0 += 1;
        if let Ok((team, mut link)) = teams.get_mut(entity)
            && matches!(link.state, LinkState::NeedsUrl)
        {
            links.request(entity, team.id, &mut link, conn);
        }
    }
}
