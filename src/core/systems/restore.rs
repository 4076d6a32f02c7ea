//! Saved state in and out: teams restored before the first step, and the
//! teams whose counts or standing changed, for the state store.

use bevy_ecs::prelude::*;

use crate::core::components::{Counters, Health, Link, Team};
use crate::core::lifecycle::History;
use crate::core::links::Links;
use crate::core::resources::TeamIndex;
use crate::core::saved::SavedTeam;

/// Spawns every saved team with its counts; joined ones ask for a URL as
/// soon as Global is ready (marked `resumed` until Global confirms them).
pub fn restore_teams(
    In(saved): In<Vec<SavedTeam>>,
    mut index: ResMut<TeamIndex>,
    mut links: Links,
    mut commands: Commands,
) {
    for team in saved {
        if index.0.contains_key(&team.id) {
            continue;
        }
        let entity = commands.spawn_empty().id();
        let counters = Counters {
            message_count: team.message_count,
            props_count: team.props_count,
        };
        let mut link = Link::default();
        links.restore(entity, &mut link, team.joined, &counters);
        commands.entity(entity).insert((
            Team { id: team.id },
            link,
            counters,
            Health {
                resumed: team.joined,
                ..Health::default()
            },
            History::default(),
        ));
        index.0.insert(team.id, entity);
    }
}

/// What a saved team is made of changed.
type SavedChanged = Or<(Changed<Counters>, Changed<Link>)>;

/// The teams whose counters or link changed since the last call (bevy's
/// change detection: the system remembers when it last ran). O(teams) per
/// call, so the store calls it once per commit interval, not per tick.
pub fn changed_teams(teams: Query<(&Team, &Counters, &Link), SavedChanged>) -> Vec<SavedTeam> {
    teams
        .iter()
        .map(|(team, counters, link)| SavedTeam {
            id: team.id,
            joined: link.state.was_joined(),
            message_count: counters.message_count,
            props_count: counters.props_count,
        })
        .collect()
}
