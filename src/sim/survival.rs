//! When an injected fault counts as survived. Each fault, as it is
//! injected, gets a [`Recovery`]: what the simulator must itself observe
//! the client do before it calls the fault survived. The events that can
//! settle one (sockets opening and closing, requests, healthcheck replies,
//! leaves) are fed in by the ledger. A fault whose team (or Global) is still
//! not back when the recovery wait runs out is "not recovered", a failure
//! named among the problems; whatever else is still waiting when the run
//! ends, or can no longer be observed (its socket closed for another
//! reason, its team left), is counted "not observed", never survived.

use std::collections::BTreeMap;
use std::time::Instant;

use super::faults::{Fault, WatchId};
use super::truth::TeamTruth;
use super::verdict::FaultCount;
use crate::protocol::{TeamId, TeamStats};

/// The recovery a fault calls for. "A reply" below is a healthcheck reply
/// to a request sent at or after the moment named; "exact" means the
/// reply's `message_count` for the team is at least what the simulator had
/// written to it when the request was sent (it can never be above what was
/// written: every reply is checked for that, see `truth::check_reply`).
#[derive(Debug)]
pub(crate) enum Recovery {
    /// team-close, team-error-close, team-reset, zombie, oversize,
    /// connect-error: a socket for the team opens after the fault (`back_at`),
    /// then a reply to a request sent after that shows the team's count at
    /// least `before`, what had been written to it when the fault struck.
    /// The team leaving before its socket came back makes it unobservable.
    Reconnect {
        /// The team.
        team: TeamId,
        /// Messages written to it before the fault.
        before: u64,
        /// When its next socket opened.
        back_at: Option<Instant>,
    },
    /// global-drop: a reply arrives on a Global connection opened after the
    /// one dropped (socket ids only grow).
    NewGlobal {
        /// The dropped Global's socket id.
        dropped: u64,
    },
    /// garbage or a delayed hello on a team socket: armed once the frame
    /// (the garbage, or the late hello) is written, noting the count then
    /// (`after`); survived at the first exact reply while that socket is
    /// still the team's open socket and at least one message was written
    /// after the frame, so the client is seen counting past it. The socket
    /// closing first makes it unobservable.
    KeptTeamSocket {
        /// The team.
        team: TeamId,
        /// The socket the frame went to.
        socket: u64,
        /// When the frame was written, and the team's count then.
        armed: Option<(Instant, u64)>,
    },
    /// garbage or a delayed hello on Global: survived at the first reply
    /// on that same Global connection to a request queued at or after
    /// `since` (Global writes in queue order, and only after its hello, so
    /// the request followed the frame on the socket: the client read past
    /// it and kept the link). Global closing first makes it unobservable.
    KeptGlobal {
        /// The Global's socket id.
        global: u64,
        /// When the garbage was queued, or the socket opened.
        since: Instant,
    },
    /// duplicate-join: settled at the first reply on the same Global to a
    /// request sent after the duplicate `team.join` (which it follows on the
    /// wire, so the client had handled the join): survived if the team's
    /// socket is still the one it had, and its only one. A `team.connect`
    /// for the team before that, or the socket or Global closing, makes it
    /// unobservable.
    SingleSocket {
        /// The team.
        team: TeamId,
        /// Its socket when the join was sent.
        socket: u64,
        /// The Global the join went out on.
        global: u64,
        /// When the join was sent.
        sent_at: Instant,
    },
    /// slow-reader: survived at the first exact reply to a request sent
    /// after the pause ended (`until`) while the team has an open socket —
    /// the one paused, or a new one if the link was dropped and came back.
    ExactAfterPause {
        /// The team.
        team: TeamId,
        /// When the server reads again.
        until: Instant,
    },
}

impl Recovery {
    /// The team it concerns, if any.
    pub fn team(&self) -> Option<TeamId> {
        match *self {
            Recovery::Reconnect { team, .. }
            | Recovery::KeptTeamSocket { team, .. }
            | Recovery::SingleSocket { team, .. }
            | Recovery::ExactAfterPause { team, .. } => Some(team),
            Recovery::NewGlobal { .. } | Recovery::KeptGlobal { .. } => None,
        }
    }

    /// Whether its settling reply must be exact for its team.
    fn needs_exact(&self) -> bool {
        matches!(
            self,
            Recovery::KeptTeamSocket { .. } | Recovery::ExactAfterPause { .. }
        )
    }
}

/// One healthcheck reply, as the recovery rules read it.
pub(crate) struct Reply<'a> {
    /// The Global connection it arrived on.
    pub global: u64,
    /// When its request was sent.
    pub sent_at: Instant,
    /// What had been written to the teams watched for exactness when the
    /// request was sent.
    pub written_then: &'a BTreeMap<TeamId, u64>,
    /// The reply's lines by team.
    pub stats: &'a BTreeMap<TeamId, &'a TeamStats>,
}

impl Reply<'_> {
    fn count(&self, team: TeamId) -> Option<u64> {
        self.stats.get(&team).map(|s| s.message_count)
    }

    fn exact(&self, team: TeamId) -> bool {
        self.written_then
            .get(&team)
            .is_some_and(|&w| self.count(team).is_some_and(|c| c >= w))
    }
}

/// What a reply does to a pending recovery.
enum Settles {
    Survived,
    NotObserved(&'static str),
    No,
}

/// Whether `reply` settles `recovery`, per the rules on [`Recovery`].
fn settles(recovery: &Recovery, reply: &Reply<'_>, teams: &BTreeMap<TeamId, TeamTruth>) -> Settles {
    let yes = |b: bool| if b { Settles::Survived } else { Settles::No };
    let socket_of = |team: &TeamId| teams.get(team).and_then(TeamTruth::socket_id);
    match *recovery {
        Recovery::Reconnect {
            team,
            before,
            back_at,
        } => yes(back_at.is_some_and(|b| reply.sent_at >= b)
            && reply.count(team).is_some_and(|c| c >= before)),
        Recovery::NewGlobal { dropped } => yes(reply.global > dropped),
        Recovery::KeptTeamSocket {
            team,
            socket,
            armed,
        } => yes(armed.is_some_and(|(at, after)| {
            reply.sent_at >= at
                && socket_of(&team) == Some(socket)
                && reply.written_then.get(&team).is_some_and(|&w| w > after)
                && reply.exact(team)
        })),
        Recovery::KeptGlobal { global, since } => {
            yes(global == reply.global && reply.sent_at >= since)
        }
        Recovery::SingleSocket {
            team,
            socket,
            global,
            sent_at,
        } => {
            if global != reply.global || reply.sent_at < sent_at {
                Settles::No
            } else if socket_of(&team) == Some(socket)
                && teams.get(&team).is_some_and(|t| t.open_sockets == 1)
            {
                Settles::Survived
            } else {
                Settles::NotObserved("another socket at the next reply")
            }
        }
        Recovery::ExactAfterPause { team, until } => yes(reply.sent_at >= until
            && teams.get(&team).is_some_and(TeamTruth::connected)
            && reply.exact(team)),
    }
}

/// An injected fault whose recovery is not yet settled.
#[derive(Debug)]
struct Watch {
    id: WatchId,
    fault: Fault,
    recovery: Recovery,
}

/// Faults injected, and what became of them.
#[derive(Debug, Default)]
pub(crate) struct Survival {
    next_id: u64,
    pending: Vec<Watch>,
    counts: BTreeMap<Fault, FaultCount>,
    why_not: BTreeMap<Fault, BTreeMap<&'static str, u64>>,
}

/// Books one fault whose recovery could not be observed, and why.
fn not_observed(
    counts: &mut BTreeMap<Fault, FaultCount>,
    why_not: &mut BTreeMap<Fault, BTreeMap<&'static str, u64>>,
    fault: Fault,
    why: &'static str,
) {
    counts.entry(fault).or_default().not_observed += 1;
    *why_not.entry(fault).or_default().entry(why).or_default() += 1;
}

impl Survival {
    /// Books an injected fault and the recovery it waits for.
    pub fn inject(&mut self, fault: Fault, recovery: Recovery) -> WatchId {
        self.next_id += 1;
        let id = WatchId(self.next_id);
        self.counts.entry(fault).or_default().injected += 1;
        self.pending.push(Watch {
            id,
            fault,
            recovery,
        });
        id
    }

    /// Counts by kind so far.
    pub fn counts(&self) -> &BTreeMap<Fault, FaultCount> {
        &self.counts
    }

    /// Why recoveries were not observed, by kind: reason → times.
    pub fn why_not(&self) -> &BTreeMap<Fault, BTreeMap<&'static str, u64>> {
        &self.why_not
    }

    /// Faults injected so far, all kinds.
    pub fn injected(&self) -> u64 {
        self.counts.values().map(|c| c.injected).sum()
    }

    /// Whether some fault on `team` is still waiting for its recovery.
    pub fn busy(&self, team: TeamId) -> bool {
        self.pending.iter().any(|w| w.recovery.team() == Some(team))
    }

    /// Teams whose settling reply must be exact: a request snapshots what
    /// was written to them when it is sent.
    pub fn exact_teams(&self) -> impl Iterator<Item = TeamId> + '_ {
        self.pending
            .iter()
            .filter(|w| w.recovery.needs_exact())
            .filter_map(|w| w.recovery.team())
    }

    /// The frame carrying fault `id` was written to its team's socket at
    /// `now`, when the team's count stood at `written`.
    pub fn arm(&mut self, id: WatchId, now: Instant, written: u64) {
        if let Some(w) = self.pending.iter_mut().find(|w| w.id == id)
            && let Recovery::KeptTeamSocket { armed, .. } = &mut w.recovery
        {
            *armed = Some((now, written));
        }
    }

    /// A socket for `team` opened.
    pub fn socket_opened(&mut self, team: TeamId, now: Instant) {
        for w in &mut self.pending {
            if let Recovery::Reconnect {
                team: t, back_at, ..
            } = &mut w.recovery
                && *t == team
            {
                back_at.get_or_insert(now);
            }
        }
    }

    /// Socket `socket` of `team` closed.
    pub fn socket_closed(&mut self, team: TeamId, socket: u64) {
        self.give_up("its socket closed first", |r| {
            matches!(*r, Recovery::KeptTeamSocket { team: t, socket: s, .. }
                | Recovery::SingleSocket { team: t, socket: s, .. } if t == team && s == socket)
        });
    }

    /// The client asked for a URL for `team`.
    pub fn connect_requested(&mut self, team: TeamId) {
        self.give_up(
            "a team.connect came first",
            |r| matches!(*r, Recovery::SingleSocket { team: t, .. } if t == team),
        );
    }

    /// Global connection `global` closed.
    pub fn global_closed(&mut self, global: u64) {
        self.give_up("its Global closed first", |r| {
            matches!(*r, Recovery::KeptGlobal { global: g, .. }
                | Recovery::SingleSocket { global: g, .. } if g == global)
        });
    }

    /// `team` left: what it was waiting for can no longer be told apart
    /// from the leave.
    pub fn team_left(&mut self, team: TeamId) {
        self.give_up("the team left first", |r| r.team() == Some(team));
    }

    /// A healthcheck reply arrived: settles what it can.
    pub fn reply(&mut self, reply: &Reply<'_>, teams: &BTreeMap<TeamId, TeamTruth>) {
        let (counts, why_not) = (&mut self.counts, &mut self.why_not);
        self.pending.retain(|w| {
            match settles(&w.recovery, reply, teams) {
                Settles::Survived => counts.entry(w.fault).or_default().survived += 1,
                Settles::NotObserved(why) => not_observed(counts, why_not, w.fault, why),
                Settles::No => return true,
            }
            false
        });
    }

    /// The recovery wait ran out with `team` still not back: what it was
    /// waiting for was not recovered (a failure, never "not observed").
    /// Returns those faults, for the problem that names the team.
    pub fn team_not_recovered(&mut self, team: TeamId) -> Vec<Fault> {
        self.not_recovered(|r| r.team() == Some(team))
    }

    /// The recovery wait ran out with no Global connection: the drops it
    /// was waiting to see survived were not recovered.
    pub fn global_not_recovered(&mut self) -> Vec<Fault> {
        self.not_recovered(|r| matches!(r, Recovery::NewGlobal { .. }))
    }

    fn not_recovered(&mut self, which: impl Fn(&Recovery) -> bool) -> Vec<Fault> {
        let counts = &mut self.counts;
        let mut failed = Vec::new();
        self.pending.retain(|w| {
            if which(&w.recovery) {
                counts.entry(w.fault).or_default().not_recovered += 1;
                failed.push(w.fault);
                false
            } else {
                true
            }
        });
        failed
    }

    /// The run is over: whatever is still waiting was not observed.
    pub fn finish(&mut self) {
        self.give_up("the run ended first", |_| true);
    }

    fn give_up(&mut self, why: &'static str, unobservable: impl Fn(&Recovery) -> bool) {
        let (counts, why_not) = (&mut self.counts, &mut self.why_not);
        self.pending.retain(|w| {
            if unobservable(&w.recovery) {
                not_observed(counts, why_not, w.fault, why);
                false
            } else {
                true
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const T: TeamId = TeamId(1);

    fn team_with_socket(socket: Option<u64>, written: u64) -> BTreeMap<TeamId, TeamTruth> {
        let mut truth = TeamTruth {
            written,
            ..TeamTruth::default()
        };
        if let Some(id) = socket {
            let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
            truth.socket = Some((id, tx));
            truth.open_sockets = 1;
        }
        BTreeMap::from([(T, truth)])
    }

    fn stat(count: u64) -> TeamStats {
        TeamStats {
            id: T,
            connected: true,
            message_count: count,
            props_count: 0,
        }
    }

    /// Feeds one reply: on `global`, sent at `sent_at`, `count` for team 1,
    /// with `written_then` as the snapshot.
    fn reply(
        survival: &mut Survival,
        teams: &BTreeMap<TeamId, TeamTruth>,
        global: u64,
        sent_at: Instant,
        count: u64,
        written_then: u64,
    ) {
        let s = stat(count);
        let stats = BTreeMap::from([(T, &s)]);
        let written_then = BTreeMap::from([(T, written_then)]);
        survival.reply(
            &Reply {
                global,
                sent_at,
                written_then: &written_then,
                stats: &stats,
            },
            teams,
        );
    }

    fn counts(survival: &Survival, fault: Fault) -> (u64, u64, u64) {
        let c = survival.counts()[&fault];
        (c.injected, c.survived, c.not_observed)
    }

    #[test]
    fn a_disconnect_is_survived_only_once_the_team_is_back_and_caught_up() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(1);
        let teams = team_with_socket(Some(5), 10);
        let mut s = Survival::default();
        s.inject(
            Fault::TeamClose,
            Recovery::Reconnect {
                team: T,
                before: 10,
                back_at: None,
            },
        );
        // Caught up, but the socket has not come back: not yet.
        reply(&mut s, &teams, 1, later, 10, 10);
        assert_eq!(counts(&s, Fault::TeamClose), (1, 0, 0));
        s.socket_opened(T, later);
        // Back, but a reply asked before it came back proves nothing.
        reply(&mut s, &teams, 1, t0, 10, 10);
        // Back, asked after, but short of what was written before.
        reply(&mut s, &teams, 1, later, 9, 10);
        assert_eq!(counts(&s, Fault::TeamClose), (1, 0, 0));
        reply(&mut s, &teams, 1, later, 10, 10);
        assert_eq!(counts(&s, Fault::TeamClose), (1, 1, 0));
    }

    #[test]
    fn a_team_that_leaves_before_coming_back_is_not_observed() {
        let mut s = Survival::default();
        s.inject(
            Fault::Zombie,
            Recovery::Reconnect {
                team: T,
                before: 3,
                back_at: None,
            },
        );
        assert!(s.busy(T));
        s.team_left(T);
        assert!(!s.busy(T));
        assert_eq!(counts(&s, Fault::Zombie), (1, 0, 1));
    }

    #[test]
    fn garbage_needs_the_same_socket_and_a_count_past_the_frame() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(1);
        let teams = team_with_socket(Some(5), 12);
        let mut s = Survival::default();
        let id = s.inject(
            Fault::Garbage,
            Recovery::KeptTeamSocket {
                team: T,
                socket: 5,
                armed: None,
            },
        );
        // Not armed: the frame is not out yet.
        reply(&mut s, &teams, 1, later, 12, 12);
        s.arm(id, t0, 10);
        assert_eq!(s.exact_teams().collect::<Vec<_>>(), vec![T]);
        // Nothing written after the frame yet.
        reply(&mut s, &teams, 1, later, 10, 10);
        // Written after, but the count lags what was written when asked.
        reply(&mut s, &teams, 1, later, 11, 12);
        assert_eq!(counts(&s, Fault::Garbage), (1, 0, 0));
        // Another socket now: the frame's socket was not kept.
        let moved = team_with_socket(Some(6), 12);
        reply(&mut s, &moved, 1, later, 12, 12);
        assert_eq!(counts(&s, Fault::Garbage), (1, 0, 0));
        reply(&mut s, &teams, 1, later, 12, 12);
        assert_eq!(counts(&s, Fault::Garbage), (1, 1, 0));
    }

    #[test]
    fn garbage_whose_socket_closes_first_is_not_observed() {
        let mut s = Survival::default();
        let id = s.inject(
            Fault::DelayedHello,
            Recovery::KeptTeamSocket {
                team: T,
                socket: 5,
                armed: None,
            },
        );
        s.arm(id, Instant::now(), 0);
        s.socket_closed(T, 4);
        assert_eq!(counts(&s, Fault::DelayedHello), (1, 0, 0));
        s.socket_closed(T, 5);
        assert_eq!(counts(&s, Fault::DelayedHello), (1, 0, 1));
    }

    #[test]
    fn a_duplicate_join_is_settled_by_the_next_reply_on_its_global() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(1);
        let teams = team_with_socket(Some(5), 0);
        let join = |s: &mut Survival| {
            s.inject(
                Fault::DuplicateJoin,
                Recovery::SingleSocket {
                    team: T,
                    socket: 5,
                    global: 2,
                    sent_at: t0,
                },
            )
        };
        let mut s = Survival::default();
        join(&mut s);
        // On another Global, or asked before the join: not this one's.
        reply(&mut s, &teams, 3, later, 0, 0);
        assert_eq!(counts(&s, Fault::DuplicateJoin), (1, 0, 0));
        reply(&mut s, &teams, 2, later, 0, 0);
        assert_eq!(counts(&s, Fault::DuplicateJoin), (1, 1, 0));
        // A new request for the team in between: not observed.
        join(&mut s);
        s.connect_requested(T);
        assert_eq!(counts(&s, Fault::DuplicateJoin), (2, 1, 1));
        // The reply shows another socket: not observed.
        join(&mut s);
        reply(&mut s, &team_with_socket(Some(7), 0), 2, later, 0, 0);
        assert_eq!(counts(&s, Fault::DuplicateJoin), (3, 1, 2));
    }

    #[test]
    fn a_global_drop_is_survived_by_a_reply_on_a_later_global() {
        let teams = team_with_socket(None, 0);
        let mut s = Survival::default();
        s.inject(Fault::GlobalDrop, Recovery::NewGlobal { dropped: 4 });
        reply(&mut s, &teams, 4, Instant::now(), 0, 0);
        assert_eq!(counts(&s, Fault::GlobalDrop), (1, 0, 0));
        reply(&mut s, &teams, 9, Instant::now(), 0, 0);
        assert_eq!(counts(&s, Fault::GlobalDrop), (1, 1, 0));
    }

    #[test]
    fn a_slow_reader_needs_an_exact_reply_after_the_pause() {
        let t0 = Instant::now();
        let until = t0 + Duration::from_secs(1);
        let teams = team_with_socket(Some(5), 30);
        let mut s = Survival::default();
        s.inject(
            Fault::SlowReader,
            Recovery::ExactAfterPause { team: T, until },
        );
        reply(&mut s, &teams, 1, t0, 30, 30);
        reply(&mut s, &team_with_socket(None, 30), 1, until, 30, 30);
        reply(&mut s, &teams, 1, until, 29, 30);
        assert_eq!(counts(&s, Fault::SlowReader), (1, 0, 0));
        reply(&mut s, &teams, 1, until, 30, 30);
        assert_eq!(counts(&s, Fault::SlowReader), (1, 1, 0));
    }

    #[test]
    fn a_team_still_down_when_the_wait_runs_out_is_not_recovered_never_not_observed() {
        let mut s = Survival::default();
        let zombie = |team| Recovery::Reconnect {
            team,
            before: 3,
            back_at: None,
        };
        s.inject(Fault::Zombie, zombie(T));
        s.inject(Fault::Zombie, zombie(TeamId(2)));
        s.inject(Fault::GlobalDrop, Recovery::NewGlobal { dropped: 1 });
        assert_eq!(s.team_not_recovered(T), vec![Fault::Zombie]);
        assert_eq!(s.global_not_recovered(), vec![Fault::GlobalDrop]);
        s.finish();
        let zombies = s.counts()[&Fault::Zombie];
        assert_eq!((zombies.survived, zombies.not_observed), (0, 1));
        assert_eq!(zombies.not_recovered, 1);
        assert_eq!(s.counts()[&Fault::GlobalDrop].not_recovered, 1);
        // Only team 2's zombie, which the wait did not judge, ran out with
        // the run.
        assert_eq!(s.why_not()[&Fault::Zombie]["the run ended first"], 1);
        assert!(!s.why_not().contains_key(&Fault::GlobalDrop));
    }

    #[test]
    fn what_is_pending_at_the_end_is_not_observed() {
        let mut s = Survival::default();
        s.inject(Fault::GlobalDrop, Recovery::NewGlobal { dropped: 1 });
        s.finish();
        assert_eq!(counts(&s, Fault::GlobalDrop), (1, 0, 1));
        assert_eq!(s.why_not()[&Fault::GlobalDrop]["the run ended first"], 1);
    }
}
