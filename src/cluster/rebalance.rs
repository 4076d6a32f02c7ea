//! Moving teams onto a worker that joins, at a bounded rate.
//!
//! Placement puts a new socket on its team's first choice with room, but
//! teams already placed stay where they are; a worker that joins (a new
//! one, or one back from a restart) would get only new sockets. So when one
//! joins, the leader lists the sockets whose team ranks it above the worker
//! holding them (about 1/N of them: rendezvous moves nothing else) and asks
//! their holders to close them, a normal close each, at most `rate` a
//! second. The core takes each close as a dropped link and re-requests the
//! team under its backoff and in-flight cap; the reopened socket goes to
//! the team's first choice with room, the new worker. Break before make, as
//! for a worker's hand-over: the new socket opens only once the old one has
//! closed, and each moved team is dropped once.
//!
//! This module is the plan and the pacing, pure: the dispatch feeds it the
//! sockets and the workers, and sends the closes it picks.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::placement;
use crate::bridge::ConnId;
use crate::protocol::TeamId;

/// A socket as the plan sees it.
#[derive(Clone, Copy, Debug)]
pub struct Placed<'a> {
    /// The socket.
    pub conn: ConnId,
    /// Its team.
    pub team: TeamId,
    /// The worker holding it.
    pub worker: &'a str,
}

/// The sockets waiting to move, and the pace.
#[derive(Debug)]
pub struct Rebalance {
    /// Moves per second (0: never move).
    rate: u32,
    queue: VecDeque<(ConnId, String)>,
    tokens: f64,
    refilled: Instant,
    /// Closes asked for so far.
    pub asked: u64,
}

impl Rebalance {
    /// No move planned; at most `rate` a second once there are.
    pub fn new(rate: u32, now: Instant) -> Rebalance {
        Rebalance {
            rate,
            queue: VecDeque::new(),
            tokens: 0.0,
            refilled: now,
            asked: 0,
        }
    }

    /// Sockets waiting to move.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// `to` joined: queues every socket whose team ranks it above its
    /// holder, by socket id, replacing what was queued for `to` before. How
    /// many it queued.
    pub fn joined<'a>(&mut self, to: &str, sockets: impl IntoIterator<Item = Placed<'a>>) -> usize {
        if self.rate == 0 {
            return 0;
        }
        self.queue.retain(|(_, w)| w != to);
        let mut found: Vec<ConnId> = sockets
            .into_iter()
            .filter(|s| s.worker != to && placement::prefers(s.team, to, s.worker))
            .map(|s| s.conn)
            .collect();
        found.sort_unstable();
        let n = found.len();
        self.queue
            .extend(found.into_iter().map(|conn| (conn, to.to_owned())));
        n
    }

    /// The moves due at `now`, each checked by `still` (the socket is
    /// still held elsewhere, its team still ranks the target above its
    /// holder, and the target is live, not leaving, and has room): the
    /// socket and where it goes. A move that no longer holds is dropped
    /// and costs nothing.
    pub fn due(
        &mut self,
        now: Instant,
        mut still: impl FnMut(ConnId, &str) -> bool,
    ) -> Vec<(ConnId, String)> {
        let rate = f64::from(self.rate);
        // A second's worth at most: an idle spell does not bank a burst.
        self.tokens = (self.tokens + now.duration_since(self.refilled).as_secs_f64() * rate)
            .min(rate.max(1.0));
        self.refilled = now;
        let mut out = Vec::new();
        while self.tokens >= 1.0 {
            let Some((conn, to)) = self.queue.pop_front() else {
                break;
            };
            if still(conn, &to) {
                self.tokens -= 1.0;
                self.asked += 1;
                out.push((conn, to));
            }
        }
        if self.queue.is_empty() {
            self.tokens = 0.0;
        }
        out
    }

    /// When the next move is due, if any is queued.
    pub fn next_due(&self) -> Option<Instant> {
        if self.queue.is_empty() || self.rate == 0 {
            return None;
        }
        let wait = ((1.0 - self.tokens).max(0.0) / f64::from(self.rate)).max(0.001);
        Some(self.refilled + Duration::from_secs_f64(wait))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sockets(n: u64, worker: &str) -> Vec<(ConnId, TeamId, String)> {
        (1..=n)
            .map(|i| (ConnId(i), TeamId(i), worker.to_owned()))
            .collect()
    }

    #[test]
    fn a_joining_worker_takes_only_the_teams_that_rank_it_first_at_the_rate() {
        // 3,000 teams placed on a and b; c joins.
        let mut held: Vec<(ConnId, TeamId, String)> = sockets(3_000, "a");
        for s in held.iter_mut() {
            if placement::prefers(s.1, "b", "a") {
                s.2 = "b".into();
            }
        }
        let start = Instant::now();
        let mut plan = Rebalance::new(100, start);
        let queued = plan.joined(
            "c",
            held.iter().map(|(conn, team, w)| Placed {
                conn: *conn,
                team: *team,
                worker: w,
            }),
        );
        // Each queued team ranks c above its holder; none other is.
        for (conn, team, w) in &held {
            let wants = placement::prefers(*team, "c", w);
            assert_eq!(plan.queue.iter().any(|(c, _)| c == conn), wants);
        }
        assert!((800..=1_200).contains(&queued), "about a third: {queued}");
        // Paced: none at once, a second's worth a second later, never a
        // burst after a long pause.
        assert!(plan.due(start, |_, _| true).is_empty());
        assert_eq!(
            plan.due(start + Duration::from_secs(1), |_, _| true).len(),
            100
        );
        assert_eq!(
            plan.due(start + Duration::from_secs(60), |_, _| true).len(),
            100
        );
        // A move that no longer holds is dropped and costs nothing.
        let before = plan.queued();
        let mut seen = 0;
        let picked = plan.due(start + Duration::from_secs(61), |_, _| {
            seen += 1;
            seen > 1
        });
        assert_eq!(picked.len(), 100);
        assert_eq!(plan.queued(), before - 101);
        assert!(plan.next_due().is_some());
    }

    #[test]
    fn rate_zero_never_moves_and_a_rejoin_replaces_its_plan() {
        let held = sockets(100, "a");
        let placed = || {
            held.iter().map(|(conn, team, w)| Placed {
                conn: *conn,
                team: *team,
                worker: w,
            })
        };
        let now = Instant::now();
        let mut off = Rebalance::new(0, now);
        assert_eq!(off.joined("b", placed()), 0);
        assert!(off.next_due().is_none());
        let mut on = Rebalance::new(10, now);
        let n = on.joined("b", placed());
        assert_eq!(on.joined("b", placed()), n);
        assert_eq!(on.queued(), n, "planned once, not twice");
    }
}
