//! What happened to teams, told three ways from one record: every link
//! transition ([`Links`](super::links::Links) notes each one) becomes an
//! entry in the team's short [`History`], a public [`TeamEvent`] when it is
//! one a consumer cares about (joined, connected, dropped, left, stopped),
//! and a move in the [`Fleet`] totals, which are kept as things happen so
//! that a summary never scans the teams.

use std::collections::VecDeque;

use bevy_ecs::prelude::*;
use serde::Serialize;

use super::components::{AfterClose, LinkKind, LinkState, Team};
use crate::protocol::TeamId;

/// Entries kept in a team's history.
pub const HISTORY_LEN: usize = 8;

/// One past transition of a team's link.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HistoryEntry {
    /// Core time, ms.
    pub at: u64,
    /// The state entered (see [`LinkState::label`]).
    pub state: &'static str,
    /// Why, when the transition had a reason (a failure, a close).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A team's last few transitions, oldest first.
#[derive(Component, Clone, Debug, Default, Serialize)]
#[serde(transparent)]
pub struct History(pub VecDeque<HistoryEntry>);

/// What a consumer of team events learns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Lifecycle {
    /// The team joined (or joined again after leaving).
    Joined,
    /// Its socket opened.
    Connected,
    /// Its open socket was lost without `team.left`; it will be re-requested.
    Dropped,
    /// It left; its socket is closed and it stays down.
    Left,
    /// The run is ending.
    Stopped,
}

impl Lifecycle {
    /// The name used in subjects and logs.
    pub fn name(self) -> &'static str {
        match self {
            Lifecycle::Joined => "joined",
            Lifecycle::Connected => "connected",
            Lifecycle::Dropped => "dropped",
            Lifecycle::Left => "left",
            Lifecycle::Stopped => "stopped",
        }
    }

    /// The public event a transition is, if any.
    fn of(from: LinkState, to: LinkState) -> Option<Lifecycle> {
        let closing_for = |s: LinkState| match s {
            LinkState::Closing { after, .. } => Some(after),
            _ => None,
        };
        match (from, to) {
            (LinkState::Left, LinkState::NeedsUrl) => Some(Lifecycle::Joined),
            (
                _,
                LinkState::Closing {
                    after: AfterClose::Rejoin,
                    ..
                },
            ) => Some(Lifecycle::Joined),
            (LinkState::Connecting { .. }, LinkState::Open { .. }) => Some(Lifecycle::Connected),
            (LinkState::Open { .. }, LinkState::Backoff { .. }) => Some(Lifecycle::Dropped),
            (
                _,
                LinkState::Closing {
                    after: AfterClose::Left,
                    ..
                },
            ) => Some(Lifecycle::Left),
            (f, LinkState::Left) if closing_for(f).is_none() => Some(Lifecycle::Left),
            (
                _,
                LinkState::Closing {
                    after: AfterClose::Stop,
                    ..
                },
            ) => Some(Lifecycle::Stopped),
            (f, LinkState::Stopped) if closing_for(f).is_none() => Some(Lifecycle::Stopped),
            _ => None,
        }
    }
}

/// A lifecycle event of one team.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TeamEvent {
    /// The team.
    pub team: TeamId,
    /// Core time, ms.
    pub at: u64,
    /// What happened.
    pub kind: Lifecycle,
    /// Why, for drops (and for the rest when there was a reason).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A transition as `Links` noted it, before it is told.
#[derive(Clone, Debug)]
pub(crate) struct Transition {
    pub entity: Entity,
    pub at: u64,
    pub from: LinkState,
    pub to: LinkState,
    pub reason: Option<String>,
}

/// This tick's transitions, in order.
#[derive(Resource, Default)]
pub(crate) struct Transitions(pub Vec<Transition>);

/// Lifecycle events not yet drained by the driver
/// ([`crate::Core::drain_team_events`]), in order.
#[derive(Resource, Default)]
pub struct TeamEvents(pub Vec<TeamEvent>);

/// Fleet totals, kept as transitions and counts happen.
#[derive(Resource, Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Fleet {
    /// Teams ever admitted.
    pub teams: u64,
    /// Teams in each link state, in [`LinkKind::ALL`] order.
    pub by_state: [u64; LinkKind::ALL.len()],
    /// Of the open ones, those whose worker is quiet (not reported
    /// connected).
    pub quiet: u64,
    /// Messages counted over all teams.
    pub messages: u64,
    /// Of those, with props.
    pub props: u64,
    /// Open links lost and re-requested.
    pub reconnects: u64,
    /// Of those, by cause.
    pub drops: std::collections::BTreeMap<&'static str, u64>,
}

impl Fleet {
    /// A team was admitted (in `Left`, until its join is acted on).
    pub(crate) fn admitted(&mut self) {
        self.teams += 1;
        self.by_state[LinkKind::Left.index()] += 1;
    }

    /// A link moved.
    pub(crate) fn moved(&mut self, from: LinkState, to: LinkState) {
        let quiet = |state| matches!(state, LinkState::Open { quiet: true, .. });
        self.quiet = self.quiet.saturating_sub(u64::from(quiet(from))) + u64::from(quiet(to));
        let (from, to) = (from.kind().index(), to.kind().index());
        self.by_state[from] = self.by_state[from].saturating_sub(1);
        self.by_state[to] += 1;
    }

    /// An open link's worker went quiet, or was heard again.
    pub(crate) fn hushed(&mut self, quiet: bool) {
        if quiet {
            self.quiet += 1;
        } else {
            self.quiet = self.quiet.saturating_sub(1);
        }
    }

    /// Messages were counted.
    pub(crate) fn counted(&mut self, messages: u64, props: u64) {
        self.messages += messages;
        self.props += props;
    }

    /// Teams whose link is of this kind.
    pub fn in_state(&self, kind: LinkKind) -> u64 {
        self.by_state[kind.index()]
    }
}

/// Turns this tick's transitions into history entries and team events.
/// Cost: O(transitions).
pub(crate) fn tell_transitions(
    mut transitions: ResMut<Transitions>,
    mut events: ResMut<TeamEvents>,
    mut visits: ResMut<super::resources::Visits>,
    mut teams: Query<(&Team, &mut History)>,
) {
    // Taken, not drained: a burst must not leave its capacity behind.
    for t in std::mem::take(&mut transitions.0) {
        visits.0 += 1;
        let Ok((team, mut history)) = teams.get_mut(t.entity) else {
            continue;
        };
        if history.0.len() == HISTORY_LEN {
            history.0.pop_front();
        }
        history.0.push_back(HistoryEntry {
            at: t.at,
            state: t.to.label(),
            reason: t.reason.clone(),
        });
        if let Some(kind) = Lifecycle::of(t.from, t.to) {
            events.0.push(TeamEvent {
                team: team.id,
                at: t.at,
                kind,
                reason: t.reason,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bridge::ConnId;

    #[test]
    fn transitions_map_to_the_four_public_events() {
        let conn = ConnId(1);
        let open = LinkState::Open {
            conn,
            since: 0,
            quiet: false,
        };
        let closing = |after| LinkState::Closing {
            conn,
            deadline: 0,
            after,
        };
        let cases = [
            (
                LinkState::Left,
                LinkState::NeedsUrl,
                Some(Lifecycle::Joined),
            ),
            (
                LinkState::Connecting { conn, deadline: 0 },
                open,
                Some(Lifecycle::Connected),
            ),
            (
                open,
                LinkState::Backoff { until: 0 },
                Some(Lifecycle::Dropped),
            ),
            (open, closing(AfterClose::Left), Some(Lifecycle::Left)),
            (closing(AfterClose::Left), LinkState::Left, None),
            (
                closing(AfterClose::Left),
                closing(AfterClose::Rejoin),
                Some(Lifecycle::Joined),
            ),
            (closing(AfterClose::Rejoin), LinkState::NeedsUrl, None),
            (
                LinkState::Backoff { until: 0 },
                LinkState::Left,
                Some(Lifecycle::Left),
            ),
            (LinkState::Backoff { until: 0 }, LinkState::NeedsUrl, None),
            (open, closing(AfterClose::Stop), Some(Lifecycle::Stopped)),
        ];
        for (from, to, want) in cases {
            assert_eq!(Lifecycle::of(from, to), want, "{from:?} -> {to:?}");
        }
    }
}
