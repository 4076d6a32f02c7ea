//! Saved state in and out: teams restored before the first step, and the
//! teams whose counts or standing changed, for the state store.

use bevy_ecs::prelude::*;

use crate::bridge::ConnId;
use crate::core::components::{Counters, Health, Link, LinkState, Team};
use crate::core::lifecycle::History;
use crate::core::links::Links;
use crate::core::reconcile::Reconcile;
use crate::core::resources::TeamIndex;
use crate::core::saved::{AdoptedSocket, SavedTeam};

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
            socket: team.socket,
        };
        if let Some(mark) = team.socket {
            links.skip_past(mark.conn);
            links.restored_mark(team.id, mark);
        }
        for mark in &team.unreported {
            links.restored_unreported(team.id, *mark);
        }
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
    links.own_from_now();
}

/// What a saved team is made of changed.
type SavedChanged = Or<(Changed<Counters>, Changed<Link>)>;

/// The teams whose counters or link changed since the last call (bevy's
/// change detection: the system remembers when it last ran). O(teams) per
/// call, so the store calls it once per commit interval, not per tick.
pub fn changed_teams(
    teams: Query<(&Team, &Counters, &Link), SavedChanged>,
    reconcile: Res<Reconcile>,
) -> Vec<SavedTeam> {
    teams
        .iter()
        .map(|(team, counters, link)| SavedTeam {
            id: team.id,
            joined: link.state.was_joined(),
            message_count: counters.message_count,
            props_count: counters.props_count,
            socket: counters.socket,
            unreported: reconcile.unreported(team.id),
        })
        .collect()
}

/// Takes over sockets a worker kept through a change of leader (after
/// [`restore_teams`], before the first step; teams they serve that were
/// not saved are restored first, joined, from zero). Each report adds what
/// the restored counts do not include ([`SocketMark::unseen`]); an open
/// one becomes the team's socket, without a `team.connect`. Reports come
/// sorted by team, then socket.
/// Returns the open sockets it could not adopt (a second one for a team:
/// the caller ends them).
pub fn adopt_sockets(
    In(sockets): In<Vec<AdoptedSocket>>,
    index: Res<TeamIndex>,
    mut links: Links,
    mut teams: Query<(&mut Counters, &mut Link, &mut Health)>,
) -> Vec<ConnId> {
    let mut refused = Vec::new();
    for socket in &sockets {
        links.skip_past(socket.conn);
    }
    links.own_from_now();
    for socket in sockets {
        let Some(&entity) = index.0.get(&socket.team) else {
            refused.extend(socket.open.then_some(socket.conn));
            continue;
        };
        let Ok((mut counters, mut link, mut health)) = teams.get_mut(entity) else {
            refused.extend(socket.open.then_some(socket.conn));
            continue;
        };
        if socket.open && link.state.conn().is_some() {
            // A second open socket for one team: not counted (its mark
            // would hide the first's), ended by the caller.
            refused.push(socket.conn);
            continue;
        }
        links.reported(socket.team, &mut counters, socket.mark());
        if socket.open {
            // A live socket means the team was joined when the old leader
            // last acted, whatever the copy says.
            if link.state == LinkState::Left {
                links.join(entity, &mut link);
            }
            if !links.adopt(entity, &mut link, &mut health, socket.conn) {
                refused.push(socket.conn);
            }
        }
    }
    refused
}

/// Late reports ([`crate::Core::late_reports`]): ended sockets whose
/// readings add what no count holds yet.
pub fn late_reports(
    In(sockets): In<Vec<AdoptedSocket>>,
    index: Res<TeamIndex>,
    mut links: Links,
    mut teams: Query<&mut Counters>,
) {
    for socket in sockets.iter().filter(|s| !s.open) {
        let Some(&entity) = index.0.get(&socket.team) else {
            continue;
        };
        if let Ok(mut counters) = teams.get_mut(entity) {
            links.reported(socket.team, &mut counters, socket.mark());
        }
    }
}
