//! The simulator's ground truth: what it actually wrote to each team's
//! sockets, which sockets it holds, which URLs it issued, which faults it
//! injected. Every healthcheck reply is checked against it; the verdict is
//! read from it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

use crate::protocol::{TeamId, TeamStats};

/// A fault the simulator can inject.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// Team socket closed with 1000 after a flush.
    TeamClose,
    /// Team socket closed with 1011 after a flush.
    TeamErrorClose,
    /// Team socket reset (RST), after the client confirmed every message.
    TeamReset,
    /// Global closed and reopened; hello and joins replayed.
    GlobalDrop,
    /// Team socket that stops answering and sending, TCP kept open.
    Zombie,
    /// Malformed JSON, unknown type, missing/ill-typed field, binary frame.
    Garbage,
    /// An `error` in place of a `team.connect` answer.
    ConnectError,
    /// `team.join` again for a team already joined.
    DuplicateJoin,
    /// `hello` held back on a new socket.
    DelayedHello,
    /// A frame above the client's size limit.
    Oversize,
    /// The server stops reading the client's frames for a while.
    SlowReader,
}

impl Fault {
    /// Every fault, in a stable order.
    pub const ALL: [Fault; 11] = [
        Fault::TeamClose,
        Fault::TeamErrorClose,
        Fault::TeamReset,
        Fault::GlobalDrop,
        Fault::Zombie,
        Fault::Garbage,
        Fault::ConnectError,
        Fault::DuplicateJoin,
        Fault::DelayedHello,
        Fault::Oversize,
        Fault::SlowReader,
    ];

    /// The knob's name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Fault::TeamClose => "team-close",
            Fault::TeamErrorClose => "team-error-close",
            Fault::TeamReset => "team-reset",
            Fault::GlobalDrop => "global-drop",
            Fault::Zombie => "zombie",
            Fault::Garbage => "garbage",
            Fault::ConnectError => "connect-error",
            Fault::DuplicateJoin => "duplicate-join",
            Fault::DelayedHello => "delayed-hello",
            Fault::Oversize => "oversize",
            Fault::SlowReader => "slow-reader",
        }
    }

    /// Whether the fault takes a connection down, so surviving it means the
    /// client connected again afterwards.
    pub fn disconnects(self) -> bool {
        matches!(
            self,
            Fault::TeamClose
                | Fault::TeamErrorClose
                | Fault::TeamReset
                | Fault::GlobalDrop
                | Fault::Zombie
                | Fault::ConnectError
                | Fault::Oversize
        )
    }
}

/// What the server tells a live socket task to do.
#[derive(Debug)]
pub enum SocketCtl {
    /// Send a raw frame.
    Send(Message),
    /// Close with this code (after what is queued).
    Close(u16),
    /// Drop with RST.
    Reset,
    /// Stop sending and answering; keep reading to notice the end.
    Zombie,
    /// Stop reading for this long.
    SlowRead(Duration),
    /// Send `team.left` and stop sending.
    Leave,
    /// Stop sending; acknowledge once no write is in flight.
    Pause(oneshot::Sender<()>),
    /// Send one message of this many bytes (above the client's limit).
    Oversize(usize),
}

/// One team as the server sees it.
#[derive(Debug, Default)]
pub struct TeamTruth {
    /// Messages this team is to receive over the run.
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
    pub last_reported: u64,
    /// Disconnecting faults waiting for the team to connect again.
    pub pending_recovery: Vec<Fault>,
    /// The server is not reading this team's socket until then.
    pub slow_until: Option<Instant>,
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

    /// Whether the server is reading this team's socket right now.
    pub fn reading(&self, now: Instant) -> bool {
        self.slow_until.is_none_or(|until| until <= now)
    }

    /// Whether the team still has messages to receive.
    pub fn wants_messages(&self) -> bool {
        self.joined && !self.paused && !self.zombie && self.written < self.quota
    }

    /// Whether the server holds a usable socket for it.
    pub fn connected(&self) -> bool {
        self.open_sockets > 0 && !self.zombie
    }
}

/// How often each fault was injected and survived.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FaultCount {
    /// Times injected.
    pub injected: u64,
    /// Times the client recovered from it.
    pub survived: u64,
}

/// A pending healthcheck request: when it was sent, and who waits for it.
pub struct Waiter {
    /// When the request was sent.
    pub sent_at: Instant,
    /// The reply goes here.
    pub reply: oneshot::Sender<Vec<TeamStats>>,
}

/// The live Global connection as the director sees it. Healthcheck waiters
/// belong to it: a reply arriving late on a dropped Global can never be
/// taken for the answer to a request made on its successor.
pub struct GlobalCtl {
    /// Socket id.
    pub id: u64,
    /// Its control channel.
    pub ctl: mpsc::UnboundedSender<SocketCtl>,
    /// Healthcheck requests in flight on it, oldest first.
    pub waiters: VecDeque<Waiter>,
}

/// The whole ground truth.
#[derive(Default)]
pub struct Ledger {
    /// Every team ever announced.
    pub teams: BTreeMap<TeamId, TeamTruth>,
    /// Issued URL tokens: token → (team, used).
    pub tokens: HashMap<u64, (TeamId, bool)>,
    /// Next token.
    pub next_token: u64,
    /// Next socket id.
    pub next_socket: u64,
    /// The live Global connection.
    pub global: Option<GlobalCtl>,
    /// Global connections accepted.
    pub global_connects: u64,
    /// Faults by kind.
    pub faults: BTreeMap<Fault, FaultCount>,
    /// Everything the client did wrong, in words.
    pub violations: Vec<String>,
    /// Healthcheck replies checked.
    pub replies_checked: u64,
    /// Sockets the client closed with 1000 after `goodbye`.
    pub closed_after_goodbye: u64,
    /// `goodbye` was sent.
    pub goodbye_sent: bool,
    /// Global drops not yet followed by a new Global connection.
    pub pending_global_drops: u64,
    /// Most sockets one team had open at once.
    pub max_open: u32,
    /// Whether faults may be injected (off for the final check).
    pub chaos_on: bool,
    /// The simulator's randomness, seeded by [`Ledger::new`].
    pub rng: fastrand::Rng,
}

/// At most this many violations are kept (the count goes on).
const MAX_VIOLATIONS: usize = 50;

impl Ledger {
    /// An empty ledger whose randomness is seeded with `seed`.
    pub fn new(seed: u64) -> Ledger {
        Ledger {
            rng: fastrand::Rng::with_seed(seed),
            chaos_on: true,
            ..Ledger::default()
        }
    }

    /// Records that the client broke a rule.
    pub fn violation(&mut self, text: String) {
        if self.violations.len() < MAX_VIOLATIONS {
            self.violations.push(text);
        }
    }

    /// Records an injected fault; disconnecting ones wait for `team` (or
    /// Global, for `None`) to connect again.
    pub fn injected(&mut self, fault: Fault, team: Option<TeamId>) {
        self.faults.entry(fault).or_default().injected += 1;
        if let Some(team) = team
            && let Some(truth) = self.teams.get_mut(&team)
        {
            truth.note(format!("fault {}", fault.name()));
            if fault.disconnects() {
                truth.pending_recovery.push(fault);
            }
        }
    }

    /// Marks faults survived.
    pub fn survived(&mut self, fault: Fault, n: u64) {
        self.faults.entry(fault).or_default().survived += n;
    }

    /// The team connected again: the faults that took it down are survived.
    pub fn team_recovered(&mut self, team: TeamId) {
        let pending = self
            .teams
            .get_mut(&team)
            .map(|t| std::mem::take(&mut t.pending_recovery))
            .unwrap_or_default();
        for fault in pending {
            self.survived(fault, 1);
        }
    }

    /// Checks a healthcheck reply against the truth: every team announced
    /// present once, in order; no count above what was written or below
    /// what was already reported; `connected` consistent with the server's
    /// sockets. Mismatches become violations.
    pub fn check_reply(&mut self, stats: &[TeamStats], sent_at: Instant) {
        const GRACE: Duration = Duration::from_secs(2);
        self.replies_checked += 1;
        let mut problems = Vec::new();
        if !stats.windows(2).all(|w| w[0].id < w[1].id) {
            problems.push("healthcheck stats not sorted by id, or an id twice".to_owned());
        }
        let reported: BTreeMap<TeamId, &TeamStats> = stats.iter().map(|s| (s.id, s)).collect();
        for id in reported.keys() {
            if !self.teams.contains_key(id) {
                problems.push(format!("team {id} reported but never joined"));
            }
        }
        for (id, truth) in &mut self.teams {
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
            if stat.message_count < truth.last_reported {
                problems.push(format!(
                    "team {id}: count went down from {} to {}",
                    truth.last_reported, stat.message_count
                ));
            }
            truth.last_reported = truth.last_reported.max(stat.message_count);
            let gone_since = |at: Option<Instant>| at.is_some_and(|t| t + GRACE < sent_at);
            if stat.connected && truth.left_at.is_some() && gone_since(truth.left_at) {
                problems.push(format!("team {id}: connected long after it left"));
            }
            if stat.connected && truth.open_sockets == 0 && gone_since(truth.last_closed_at) {
                problems.push(format!("team {id}: connected but no socket since long"));
            }
        }
        for p in problems {
            self.violation(p);
        }
    }

    /// Whether a reply matches the truth exactly (the final check).
    pub fn exact(&self, stats: &[TeamStats]) -> Result<(), String> {
        let expected: Vec<TeamStats> = self
            .teams
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
                .filter(|s| !self.teams.contains_key(&s.id))
                .map(|s| format!("team {} reported but never joined", s.id)),
        );
        Err(format!(
            "{} of {} teams differ: {}",
            differing.len(),
            expected.len(),
            differing[..differing.len().min(5)].join("; ")
        ))
    }
}

/// What the simulator concluded.
#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    /// True when every check passed and the final counts were exact.
    pub verified: bool,
    /// Teams ever joined.
    pub teams: usize,
    /// Messages written (and, if verified, counted).
    pub messages: u64,
    /// Props written.
    pub props: u64,
    /// Faults by kind.
    pub faults: BTreeMap<Fault, FaultCount>,
    /// Healthcheck replies checked.
    pub healthchecks_checked: u64,
    /// Global connections accepted.
    pub global_connects: u64,
    /// Most sockets one team ever had open at once (1 is correct).
    pub max_sockets_per_team: u32,
    /// What went wrong.
    pub mismatches: Vec<String>,
    /// Wall time from the first Global connection to the verdict.
    pub duration: Duration,
}

impl Verdict {
    /// Faults injected, all kinds.
    pub fn injected(&self) -> u64 {
        self.faults.values().map(|f| f.injected).sum()
    }

    /// Faults survived, all kinds.
    pub fn survived(&self) -> u64 {
        self.faults.values().map(|f| f.survived).sum()
    }
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.verified {
            write!(
                f,
                "verified: {} teams, {} messages, {} props, {} faults survived ({:.1}s)",
                thousands(self.teams as u64),
                thousands(self.messages),
                thousands(self.props),
                thousands(self.survived()),
                self.duration.as_secs_f64()
            )?;
        } else {
            write!(
                f,
                "NOT verified: {} teams, {} messages written; {} problem(s):",
                self.teams,
                self.messages,
                self.mismatches.len()
            )?;
            for m in &self.mismatches {
                write!(f, "\n  - {m}")?;
            }
        }
        for (fault, count) in &self.faults {
            write!(
                f,
                "\n  {:<17} injected {:>5}  survived {:>5}",
                fault.name(),
                count.injected,
                count.survived
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger_with(written: u64) -> Ledger {
        let mut ledger = Ledger::new(1);
        let truth = ledger.teams.entry(TeamId(1)).or_default();
        truth.written = written;
        truth.announced_at = Some(Instant::now());
        ledger
    }

    fn stat(id: u64, count: u64) -> TeamStats {
        TeamStats {
            id: TeamId(id),
            connected: false,
            message_count: count,
            props_count: 0,
        }
    }

    #[test]
    fn exact_names_every_kind_of_difference() {
        let ledger = ledger_with(5);
        assert!(ledger.exact(&[stat(1, 5)]).is_ok());
        let short = ledger.exact(&[stat(1, 4)]).unwrap_err();
        assert!(short.starts_with("1 of 1 teams differ"), "{short}");
        let extra = ledger.exact(&[stat(1, 5), stat(9, 0)]).unwrap_err();
        assert!(
            extra.contains("team 9 reported but never joined"),
            "{extra}"
        );
        let missing = ledger.exact(&[]).unwrap_err();
        assert!(missing.contains("got None"), "{missing}");
    }

    #[test]
    fn replies_are_checked_against_the_truth() {
        let mut ledger = ledger_with(5);
        let later = Instant::now() + Duration::from_secs(1);
        ledger.check_reply(&[stat(1, 5)], later);
        assert!(ledger.violations.is_empty(), "{:?}", ledger.violations);
        ledger.check_reply(&[stat(1, 6)], later);
        assert!(ledger.violations[0].contains("only 5/0 written"));
        ledger.check_reply(&[stat(1, 4)], later);
        assert!(ledger.violations[1].contains("went down"));
        ledger.check_reply(&[], later);
        assert!(ledger.violations[2].contains("missing"));
        // Asked before the team was announced: its absence is fine.
        let before = Instant::now() - Duration::from_secs(1);
        ledger.check_reply(&[], before);
        assert_eq!(ledger.violations.len(), 3);
    }
}
