//! Counts that reach the core late: what a worker read on sockets whose
//! last events never came (the worker was lost, or served an earlier
//! leader), reported when a leader calls it. Each report is added at most
//! once, exactly: for a socket an earlier leader gave out, against the mark
//! the restored counts carry; for one given up with a lost worker (by this
//! core, or by an earlier one whose saved counts list it as unreported),
//! against what was counted when it was given up.

use std::collections::{HashMap, HashSet, VecDeque};

use bevy_ecs::prelude::*;

use crate::bridge::ConnId;
use crate::core::saved::{MOST_UNREPORTED, SocketMark};
use crate::protocol::TeamId;

/// Sockets of this core given up without their last events, kept for a
/// late report: at most this many (the oldest goes first).
pub const MOST_LOST: usize = 100_000;

/// What late reports are reconciled against.
#[derive(Resource, Default, Debug)]
pub struct Reconcile {
    /// Socket ids below this were given out by earlier leaders.
    first_own: ConnId,
    /// Per team, how much of an earlier leader's sockets its counts hold.
    restored: HashMap<TeamId, SocketMark>,
    /// Sockets given up for a lost worker (this core's, or restored: an
    /// earlier leader's): what the counts hold of each.
    lost: HashMap<ConnId, (TeamId, u64, u64)>,
    order: VecDeque<ConnId>,
    /// Per team, those of `lost` whose report has not come, oldest first
    /// (saved with the team's counts: a leader that resumes from them adds
    /// exactly what the report brings).
    unreported: HashMap<TeamId, Vec<ConnId>>,
    /// Earlier leaders' sockets this core adopted: counted from their
    /// events since, so only [`Reconcile::gave_up`] makes a late report of
    /// one count.
    adopted: HashSet<ConnId>,
}

impl Reconcile {
    /// Counts restored for `team` include `mark` of an earlier leader's
    /// socket.
    pub fn restored(&mut self, team: TeamId, mark: SocketMark) {
        self.restored.insert(team, mark);
    }

    /// Ids from `first` on are this core's own.
    pub fn own_from(&mut self, first: ConnId) {
        self.first_own = first;
    }

    /// `conn`, an earlier leader's socket, is this core's from now on.
    pub fn adopted(&mut self, conn: ConnId) {
        self.adopted.insert(conn);
    }

    /// This core gave `conn` up with its worker, having counted `counted`
    /// (messages, props) of it. The first time counts: a second close of
    /// the same socket (the worker's own, then the leader's for the lost
    /// worker) comes when the team may have another socket, and must not
    /// reset what a report already added.
    pub fn gave_up(&mut self, conn: ConnId, team: TeamId, counted: (u64, u64)) {
        if let std::collections::hash_map::Entry::Vacant(slot) = self.lost.entry(conn) {
            slot.insert((team, counted.0, counted.1));
            self.order.push_back(conn);
            let waiting = self.unreported.entry(team).or_default();
            waiting.push(conn);
            if waiting.len() > MOST_UNREPORTED {
                waiting.remove(0);
            }
        }
        while self.order.len() > MOST_LOST {
            if let Some(old) = self.order.pop_front()
                && let Some((team, ..)) = self.lost.remove(&old)
            {
                self.reported(team, old);
            }
        }
    }

    /// `conn`'s report came (or will not).
    fn reported(&mut self, team: TeamId, conn: ConnId) {
        if let Some(waiting) = self.unreported.get_mut(&team) {
            waiting.retain(|c| *c != conn);
            if waiting.is_empty() {
                self.unreported.remove(&team);
            }
        }
    }

    /// `team`'s given-up sockets still waiting for a report, each with what
    /// the counts hold of it (for the saved state).
    pub fn unreported(&self, team: TeamId) -> Vec<SocketMark> {
        let Some(waiting) = self.unreported.get(&team) else {
            return Vec::new();
        };
        waiting
            .iter()
            .filter_map(|conn| {
                let &(_, messages, props) = self.lost.get(conn)?;
                Some(SocketMark {
                    conn: *conn,
                    messages,
                    props,
                })
            })
            .collect()
    }

    /// What `report` (a socket's whole reading) adds to its team's counts
    /// now, remembered so that the same report adds nothing twice.
    pub fn unseen(&mut self, report: SocketMark, team: TeamId) -> (u64, u64) {
        if let Some((owner, messages, props)) = self.lost.get_mut(&report.conn) {
            if *owner != team {
                return (0, 0);
            }
            let add = (
                report.messages.saturating_sub(*messages),
                report.props.saturating_sub(*props),
            );
            *messages = (*messages).max(report.messages);
            *props = (*props).max(report.props);
            self.reported(team, report.conn);
            return add;
        }
        if report.conn < self.first_own && !self.adopted.contains(&report.conn) {
            let mark = self.restored.get(&team).copied();
            let add = SocketMark::unseen(mark, report);
            if mark.is_none_or(|m| report.conn >= m.conn) {
                self.restored.insert(team, report);
            }
            return add;
        }
        (0, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(conn: u64, messages: u64) -> SocketMark {
        SocketMark {
            conn: ConnId(conn),
            messages,
            props: 0,
        }
    }

    #[test]
    fn each_report_adds_once_and_only_what_was_not_counted() {
        let mut r = Reconcile::default();
        let t = TeamId(1);
        r.restored(t, mark(5, 10));
        r.own_from(ConnId(20));
        // An earlier leader's sockets: before the mark nothing, the marked
        // one the rest, a later one all; each once.
        assert_eq!(r.unseen(mark(4, 99), t), (0, 0));
        assert_eq!(r.unseen(mark(5, 15), t), (5, 0));
        assert_eq!(r.unseen(mark(5, 15), t), (0, 0));
        assert_eq!(r.unseen(mark(7, 3), t), (3, 0));
        assert_eq!(r.unseen(mark(7, 3), t), (0, 0));
        // This core's: only one it gave up, against what it counted.
        assert_eq!(r.unseen(mark(21, 8), t), (0, 0));
        r.gave_up(ConnId(22), t, (6, 0));
        assert_eq!(r.unseen(mark(22, 8), TeamId(2)), (0, 0), "another team's");
        assert_eq!(r.unseen(mark(22, 8), t), (2, 0));
        assert_eq!(r.unseen(mark(22, 8), t), (0, 0));
        // Given up twice (the worker's close, then the loss's): the first
        // stands, and the report adds nothing again.
        r.gave_up(ConnId(22), t, (0, 0));
        assert_eq!(r.unseen(mark(22, 8), t), (0, 0));
        // An adopted socket counts its own events: a report of it adds
        // nothing, unless the core gave it up.
        assert_eq!(r.unseen(mark(9, 4), t), (4, 0));
        r.adopted(ConnId(9));
        assert_eq!(r.unseen(mark(9, 30), t), (0, 0));
        r.gave_up(ConnId(9), t, (25, 0));
        assert_eq!(r.unseen(mark(9, 30), t), (5, 0));
    }
}
