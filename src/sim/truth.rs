//! The ground truth for one team — what the simulator actually wrote to its
//! sockets, which socket it holds, how long it was without one — and the
//! checks of healthcheck replies against it.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::socket::SocketCtl;
use crate::protocol::{TeamId, TeamStats};

/// One team as the server sees it.
#[derive(Debug, Default)]
pub(crate) struct TeamTruth {
    /// Messages this team is to receive over the run (`u64::MAX` in
    /// duration mode, where the stream stops with the clock).
    pub quota: u64,
    /// Messages written to its sockets (counted after a successful send).
    pub written: u64,
    /// Of those, with `props`.
    pub props: u64,
    /// Messages being written right now (not yet flushed): the client may
    /// already have counted them, so they bound a reply from above.
    pub in_flight: u64,
    /// Of those, with `props`.
    pub props_in_flight: u64,
    /// When `team.join` was first sent: only requests made after that owe
    /// the team a line in their reply.
    pub announced_at: Option<Instant>,
    /// Joined (announced and not left).
    pub joined: bool,
    /// Whether a socket of its has ever opened.
    pub ever_opened: bool,
    /// When it last left, if it is out.
    pub left_at: Option<Instant>,
    /// Whether the team is done for good (left without rejoining).
    pub finished: bool,
    /// Sending is paused (quiescing before a reset).
    pub paused: bool,
    /// The live socket, if any: its id and control channel.
    pub socket: Option<(u64, mpsc::UnboundedSender<SocketCtl>)>,
    /// The live socket is a zombie.
    pub zombie: bool,
    /// Sockets open right now (more than one is a violation).
    pub open_sockets: u32,
    /// When the last socket closed.
    pub last_closed_at: Option<Instant>,
    /// Highest `message_count` the client has reported.
    pub reported: u64,
    /// Highest `props_count` the client has reported.
    pub reported_props: u64,
    /// The server is not reading this team's socket until then.
    pub slow_until: Option<Instant>,
    /// Time without a usable socket, as the server sees it.
    pub outage: Outage,
    /// The team's last few events, for explaining a violation.
    pub history: VecDeque<String>,
}

/// Events kept per team for explaining violations.
const HISTORY: usize = 12;

impl TeamTruth {
    /// Notes an event in the team's short history.
    pub fn note(&mut self, event: String) {
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(event);
    }

    /// The history, oldest first, on one line.
    pub fn history_line(&self) -> String {
        self.history.iter().cloned().collect::<Vec<_>>().join(", ")
    }

    /// Whether the server is reading this team's socket right now.
    pub fn reading(&self, now: Instant) -> bool {
        self.slow_until.is_none_or(|until| until <= now)
    }

    /// Messages it may still receive.
    pub fn remaining(&self) -> u64 {
        self.quota.saturating_sub(self.written + self.in_flight)
    }

    /// Whether the server holds a usable socket for it.
    pub fn connected(&self) -> bool {
        self.open_sockets > 0 && !self.zombie
    }

    /// Whether the server still waits for the client to set this team
    /// right after chaos: joined without a usable socket, left but still
    /// holding one, or paused before a reset.
    pub fn owes_recovery(&self) -> bool {
        (self.joined && !self.connected()) || (!self.joined && self.open_sockets > 0) || self.paused
    }

    /// The id of its live socket.
    pub fn socket_id(&self) -> Option<u64> {
        self.socket.as_ref().map(|(id, _)| *id)
    }
}

/// A team's time without a socket: from losing its socket (or the socket
/// turning zombie) to its next socket, not counting time it was left.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Outage {
    /// It has a socket, or is not owed one.
    #[default]
    Up,
    /// It lost its socket at `since`, after `before` of outage it had when
    /// it left (and has since rejoined).
    Down {
        /// When the current stretch began.
        since: Instant,
        /// Outage accrued before a leave.
        before: Duration,
    },
    /// It left while down; the clock resumes if it rejoins.
    Left {
        /// Outage accrued before the leave.
        before: Duration,
    },
}

impl Outage {
    /// The socket was lost (or became unusable) at `now`.
    pub fn lose(&mut self, now: Instant) {
        if *self == Outage::Up {
            *self = Outage::Down {
                since: now,
                before: Duration::ZERO,
            };
        }
    }

    /// The team left at `now`: the clock stops.
    pub fn leave(&mut self, now: Instant) {
        if let Outage::Down { since, before } = *self {
            *self = Outage::Left {
                before: before + now.saturating_duration_since(since),
            };
        }
    }

    /// The team rejoined at `now`: a pending outage resumes.
    pub fn rejoin(&mut self, now: Instant) {
        if let Outage::Left { before } = *self {
            *self = Outage::Down { since: now, before };
        }
    }

    /// How long it has been down at `now`, if it is.
    pub fn length(&self, now: Instant) -> Option<Duration> {
        match *self {
            Outage::Down { since, before } => Some(before + now.saturating_duration_since(since)),
            Outage::Up | Outage::Left { .. } => None,
        }
    }

    /// A socket opened at `now`: returns the outage that ends, if any.
    pub fn end(&mut self, now: Instant) -> Option<Duration> {
        let length = self.length(now);
        *self = Outage::Up;
        length
    }
}

/// How long after a team left (or lost its last socket) a reply may still
/// show it connected: the client sees the close after the server does.
const CONNECTED_GRACE: Duration = Duration::from_secs(2);

/// Checks a healthcheck reply against the truth: every team announced
/// present once, in order; no count above what was written, nor below what
/// was already reported (messages or props); `connected` consistent with
/// the server's sockets. Returns what is wrong, in words.
pub(crate) fn check_reply(
    teams: &mut BTreeMap<TeamId, TeamTruth>,
    reported: &BTreeMap<TeamId, &TeamStats>,
    sorted: bool,
    sent_at: Instant,
) -> Vec<String> {
    let mut problems = Vec::new();
    if !sorted {
        problems.push("healthcheck stats not sorted by id, or an id twice".to_owned());
    }
    for id in reported.keys() {
        if !teams.contains_key(id) {
            problems.push(format!("team {id} reported but never joined"));
        }
    }
    for (id, truth) in teams.iter_mut() {
        let Some(stat) = reported.get(id) else {
            if truth.announced_at.is_some_and(|at| at < sent_at) {
                problems.push(format!("team {id} missing from healthcheck"));
            }
            continue;
        };
        let (most, most_props) = (
            truth.written + truth.in_flight,
            truth.props + truth.props_in_flight,
        );
        if stat.message_count > most || stat.props_count > most_props {
            problems.push(format!(
                "team {id}: reported {}/{} but only {most}/{most_props} written",
                stat.message_count, stat.props_count
            ));
        }
        for (what, was, now) in [
            ("message_count", truth.reported, stat.message_count),
            ("props_count", truth.reported_props, stat.props_count),
        ] {
            if now < was {
                problems.push(format!("team {id}: {what} went down from {was} to {now}"));
            }
        }
        truth.reported = truth.reported.max(stat.message_count);
        truth.reported_props = truth.reported_props.max(stat.props_count);
        let gone_since = |at: Option<Instant>| at.is_some_and(|t| t + CONNECTED_GRACE < sent_at);
        if stat.connected && truth.left_at.is_some() && gone_since(truth.left_at) {
            problems.push(format!("team {id}: connected long after it left"));
        }
        if stat.connected && truth.open_sockets == 0 && gone_since(truth.last_closed_at) {
            problems.push(format!("team {id}: connected but no socket since long"));
        }
    }
    problems
}

/// Whether a reply matches the truth exactly (the final check).
pub(crate) fn exact(
    teams: &BTreeMap<TeamId, TeamTruth>,
    stats: &[TeamStats],
) -> Result<(), String> {
    let expected: Vec<TeamStats> = teams
        .iter()
        .map(|(&id, t)| TeamStats {
            id,
            connected: t.connected(),
            message_count: t.written,
            props_count: t.props,
        })
        .collect();
    if stats == expected.as_slice() {
        return Ok(());
    }
    let mut differing: Vec<String> = expected
        .iter()
        .filter_map(|e| {
            let got = stats.iter().find(|s| s.id == e.id);
            (got != Some(e)).then(|| format!("team {}: want {:?}, got {:?}", e.id, e, got))
        })
        .collect();
    differing.extend(
        stats
            .iter()
            .filter(|s| !teams.contains_key(&s.id))
            .map(|s| format!("team {} reported but never joined", s.id)),
    );
    Err(format!(
        "{} of {} teams differ: {}",
        differing.len(),
        expected.len(),
        differing[..differing.len().min(5)].join("; ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn teams_with(written: u64, props: u64) -> BTreeMap<TeamId, TeamTruth> {
        let truth = TeamTruth {
            written,
            props,
            announced_at: Some(Instant::now()),
            ..TeamTruth::default()
        };
        BTreeMap::from([(TeamId(1), truth)])
    }

    fn stat(id: u64, count: u64, props: u64) -> TeamStats {
        TeamStats {
            id: TeamId(id),
            connected: false,
            message_count: count,
            props_count: props,
        }
    }

    fn check(
        teams: &mut BTreeMap<TeamId, TeamTruth>,
        stats: &[TeamStats],
        at: Instant,
    ) -> Vec<String> {
        let by_id = stats.iter().map(|s| (s.id, s)).collect();
        check_reply(teams, &by_id, true, at)
    }

    #[test]
    fn exact_names_every_kind_of_difference() {
        let teams = teams_with(5, 0);
        assert!(exact(&teams, &[stat(1, 5, 0)]).is_ok());
        let short = exact(&teams, &[stat(1, 4, 0)]).unwrap_err();
        assert!(short.starts_with("1 of 1 teams differ"), "{short}");
        let extra = exact(&teams, &[stat(1, 5, 0), stat(9, 0, 0)]).unwrap_err();
        assert!(
            extra.contains("team 9 reported but never joined"),
            "{extra}"
        );
        let missing = exact(&teams, &[]).unwrap_err();
        assert!(missing.contains("got None"), "{missing}");
    }

    #[test]
    fn replies_are_checked_against_the_truth() {
        let mut teams = teams_with(5, 2);
        let later = Instant::now() + Duration::from_secs(1);
        assert!(check(&mut teams, &[stat(1, 5, 2)], later).is_empty());
        let down = check(&mut teams, &[stat(1, 4, 2)], later);
        assert_eq!(down, ["team 1: message_count went down from 5 to 4"]);
        let props_down = check(&mut teams, &[stat(1, 5, 1)], later);
        assert_eq!(props_down, ["team 1: props_count went down from 2 to 1"]);
        assert!(check(&mut teams, &[stat(1, 6, 2)], later)[0].contains("only 5/2 written"));
        assert!(check(&mut teams, &[], later)[0].contains("missing"));
        // Asked before the team was announced: its absence is fine.
        let before = Instant::now() - Duration::from_secs(1);
        assert!(check(&mut teams, &[], before).is_empty());
    }

    #[test]
    fn an_outage_runs_from_losing_a_socket_to_the_next_minus_time_left() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut outage = Outage::Up;
        outage.lose(t0);
        outage.lose(t0 + s(1)); // already down: the first loss counts
        outage.leave(t0 + s(2));
        assert_eq!(outage.length(t0 + s(5)), None);
        outage.rejoin(t0 + s(10));
        assert_eq!(outage.end(t0 + s(13)), Some(s(5)));
        assert_eq!(outage.end(t0 + s(14)), None);
        // A team that left while up owes no outage when it rejoins.
        outage.leave(t0 + s(15));
        outage.rejoin(t0 + s(16));
        assert_eq!(outage, Outage::Up);
    }
}
