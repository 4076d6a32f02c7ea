//! The simulator's book, shared by the director and every socket task: the
//! truth per team, the sockets and URLs it issued, the live Global and the
//! healthchecks asked on it, the faults and their recoveries, and what the
//! client did wrong. Socket and request events enter through the methods
//! here, which keep the truth, the outage clocks and the survival rules in
//! step.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::faults::Fault;
use super::schedule::Trigger;
use super::server::SocketCtl;
use super::survival::{Recovery, Reply, Survival, WatchId};
use super::truth::{self, TeamTruth};
use super::verdict::{Disconnect, Timing};
use crate::protocol::{TeamId, TeamStats};

/// A healthcheck request in flight.
pub(crate) struct Waiter {
    /// When the request was sent.
    pub sent_at: Instant,
    /// What had been written to the teams whose recovery needs an exact
    /// reply, when the request was sent.
    pub written_then: BTreeMap<TeamId, u64>,
    /// The reply goes here.
    pub reply: oneshot::Sender<Vec<TeamStats>>,
}

/// The live Global connection. Healthcheck waiters belong to it: a reply
/// arriving late on a dropped Global can never be taken for the answer to a
/// request made on its successor, and dropping it releases its askers.
pub(crate) struct GlobalCtl {
    /// Socket id.
    pub id: u64,
    /// Its control channel.
    pub ctl: mpsc::UnboundedSender<SocketCtl>,
    /// Healthcheck requests in flight on it, oldest first.
    pub waiters: VecDeque<Waiter>,
}

/// At most this many violations are kept (the count goes on).
const MAX_VIOLATIONS: usize = 50;

/// The whole book.
pub(crate) struct Ledger {
    /// Every team ever announced.
    pub teams: BTreeMap<TeamId, TeamTruth>,
    /// Issued URL tokens: token → (team, used).
    pub tokens: HashMap<u64, (TeamId, bool)>,
    /// Last token issued.
    pub next_token: u64,
    /// Last socket id given (Global and team sockets share the sequence).
    pub next_socket: u64,
    /// The live Global connection.
    pub global: Option<GlobalCtl>,
    /// Global connections accepted.
    pub global_connects: u64,
    /// Faults injected and what became of them.
    pub survival: Survival,
    /// Scheduled faults not yet fired.
    pub triggers: Vec<Trigger>,
    /// Everything the client did wrong, in words (the first few).
    pub violations: Vec<String>,
    /// How many violations there were in all.
    pub violations_total: u64,
    /// Healthcheck replies checked.
    pub replies_checked: u64,
    /// Sockets the client closed with 1000 after `goodbye`.
    pub closed_after_goodbye: u64,
    /// `goodbye` was sent.
    pub goodbye_sent: bool,
    /// Most sockets one team had open at once.
    pub max_open: u32,
    /// Whether faults may be injected (off from the recovery on).
    pub chaos_on: bool,
    /// Whether teams are still sent messages (off once a duration is up).
    pub streaming: bool,
    /// The longest time a team was without a socket.
    pub longest_disconnect: Option<Disconnect>,
    /// The simulator's randomness.
    pub rng: fastrand::Rng,
    /// When connecting and delivering began and ended.
    pub timing: TimingMarks,
}

/// The moments [`Timing`] is measured between.
#[derive(Default)]
pub(crate) struct TimingMarks {
    first_join: Option<Instant>,
    all_connected: Option<Instant>,
    /// Teams that have had a socket open.
    ever_connected: u64,
    /// Teams the scenario announces.
    pub expected_teams: u64,
    first_write: Option<Instant>,
    delivered: Option<Instant>,
}

impl TimingMarks {
    pub fn joined(&mut self, at: Instant) {
        self.first_join.get_or_insert(at);
    }

    pub fn is_delivered(&self) -> bool {
        self.delivered.is_some()
    }

    pub fn wrote(&mut self, at: Instant) {
        self.first_write.get_or_insert(at);
    }

    pub fn figures(&self) -> Timing {
        let ms = |from: Option<Instant>, to: Option<Instant>| {
            Some(to?.saturating_duration_since(from?).as_secs_f64() * 1000.0)
        };
        Timing {
            connect_all_ms: ms(self.first_join, self.all_connected),
            deliver_all_ms: ms(self.first_write, self.delivered),
        }
    }
}

impl Ledger {
    /// An empty book: randomness seeded with `seed`, `triggers` armed.
    pub fn new(seed: u64, triggers: Vec<Trigger>) -> Ledger {
        Ledger {
            teams: BTreeMap::new(),
            tokens: HashMap::new(),
            next_token: 0,
            next_socket: 0,
            global: None,
            global_connects: 0,
            survival: Survival::default(),
            triggers,
            violations: Vec::new(),
            violations_total: 0,
            replies_checked: 0,
            closed_after_goodbye: 0,
            goodbye_sent: false,
            max_open: 0,
            chaos_on: true,
            streaming: true,
            longest_disconnect: None,
            rng: fastrand::Rng::with_seed(seed),
            timing: TimingMarks::default(),
        }
    }

    /// Records that the client broke a rule.
    pub fn violation(&mut self, text: String) {
        self.violations_total += 1;
        if self.violations.len() < MAX_VIOLATIONS {
            self.violations.push(text);
        }
    }

    /// A fresh socket id.
    pub fn socket_id(&mut self) -> u64 {
        self.next_socket += 1;
        self.next_socket
    }

    /// Books an injected fault and the recovery it waits for.
    pub fn injected(&mut self, fault: Fault, recovery: Recovery) -> WatchId {
        if let Some(team) = recovery.team()
            && let Some(truth) = self.teams.get_mut(&team)
        {
            truth.note(format!("fault {}", fault.name()));
        }
        self.survival.inject(fault, recovery)
    }

    /// The frame carrying fault `id` was written to `team`'s socket.
    pub fn armed(&mut self, id: WatchId, team: TeamId) {
        let written = self.teams.get(&team).map_or(0, |t| t.written);
        self.survival.arm(id, Instant::now(), written);
    }

    /// Whether a due trigger of `fault` for `team` fires now (and is used up).
    pub fn take_trigger(&mut self, team: TeamId, fault: Fault) -> bool {
        let written = self.teams.get(&team).map_or(0, |t| t.written);
        let due = self
            .triggers
            .iter()
            .position(|t| t.team == team && t.fault == fault && written >= t.after);
        due.map(|i| self.triggers.swap_remove(i)).is_some()
    }

    /// A socket `id` for `team` opened (with control channel `ctl`).
    pub fn team_socket_opened(
        &mut self,
        team: TeamId,
        id: u64,
        ctl: mpsc::UnboundedSender<SocketCtl>,
    ) {
        let now = Instant::now();
        let Some(truth) = self.teams.get_mut(&team) else {
            return;
        };
        if !truth.ever_opened {
            truth.ever_opened = true;
            self.timing.ever_connected += 1;
            if self.timing.ever_connected == self.timing.expected_teams {
                self.timing.all_connected = Some(now);
            }
        }
        truth.open_sockets += 1;
        truth.socket = Some((id, ctl));
        truth.zombie = false;
        truth.paused = false;
        truth.slow_until = None;
        truth.note(format!("socket {id} open"));
        let overlap = truth.open_sockets;
        let ended = truth.outage.end(now);
        let history = (overlap > 1).then(|| truth.history_line());
        self.max_open = self.max_open.max(overlap);
        if let Some(history) = history {
            self.violation(format!(
                "team {team}: {overlap} sockets open at once (last events: {history})"
            ));
        }
        if let Some(length) = ended {
            self.record_disconnect(team, length, false);
        }
        self.survival.socket_opened(team, now);
    }

    /// Socket `id` of `team` closed.
    pub fn team_socket_closed(&mut self, team: TeamId, id: u64) {
        let now = Instant::now();
        let goodbye = self.goodbye_sent;
        if let Some(truth) = self.teams.get_mut(&team) {
            truth.note(format!("socket {id} closed"));
            truth.open_sockets = truth.open_sockets.saturating_sub(1);
            truth.last_closed_at = Some(now);
            if truth.socket_id() == Some(id) {
                truth.socket = None;
                truth.zombie = false;
                // A team that left, or a run that is over, owes no socket.
                if truth.joined && !goodbye {
                    truth.outage.lose(now);
                }
            }
        }
        self.survival.socket_closed(team, id);
    }

    /// `team`'s socket stopped working (a zombie) at `now`.
    pub fn team_socket_unusable(&mut self, team: TeamId, now: Instant) {
        if let Some(truth) = self.teams.get_mut(&team) {
            truth.zombie = true;
            truth.outage.lose(now);
        }
    }

    /// `team` was told it left (on `via`).
    pub fn team_left(&mut self, team: TeamId, via: &str, now: Instant) {
        if let Some(truth) = self.teams.get_mut(&team) {
            truth.joined = false;
            truth.left_at = Some(now);
            truth.outage.leave(now);
            truth.note(format!("left (on {via})"));
        }
        self.survival.team_left(team);
    }

    /// `team` joined again.
    pub fn team_rejoined(&mut self, team: TeamId, now: Instant) {
        if let Some(truth) = self.teams.get_mut(&team) {
            truth.joined = true;
            truth.left_at = None;
            truth.outage.rejoin(now);
            truth.note("rejoined".into());
        }
    }

    /// The client asked for a URL for `team`.
    pub fn connect_requested(&mut self, team: TeamId) {
        self.survival.connect_requested(team);
    }

    /// A Global connection `id` opened: it is the live one from now on.
    pub fn global_opened(&mut self, id: u64, ctl: mpsc::UnboundedSender<SocketCtl>) {
        if let Some(old) = self.global.take() {
            self.survival.global_closed(old.id);
        }
        self.global = Some(GlobalCtl {
            id,
            ctl,
            waiters: VecDeque::new(),
        });
        self.global_connects += 1;
    }

    /// Global connection `id` closed (or was dropped by a fault).
    pub fn global_closed(&mut self, id: u64) {
        if self.global.as_ref().is_some_and(|g| g.id == id) {
            self.global = None;
        }
        self.survival.global_closed(id);
    }

    /// What was written to the teams whose recovery needs an exact reply.
    pub fn written_now(&self) -> BTreeMap<TeamId, u64> {
        self.survival
            .exact_teams()
            .filter_map(|t| self.teams.get(&t).map(|truth| (t, truth.written)))
            .collect()
    }

    /// A healthcheck reply arrived on Global `global`: it answers the
    /// oldest request in flight there, is checked against the truth, and
    /// may settle recoveries.
    pub fn healthcheck_reply(&mut self, global: u64, stats: Vec<TeamStats>) {
        let waiter = match self.global.as_mut() {
            Some(g) if g.id == global => g.waiters.pop_front(),
            // A reply on a Global already dropped: its asker is gone.
            _ => return,
        };
        let Some(waiter) = waiter else {
            self.violation("healthcheck reply nobody asked for".into());
            return;
        };
        self.replies_checked += 1;
        let sorted = stats.windows(2).all(|w| w[0].id < w[1].id);
        let by_id: BTreeMap<TeamId, &TeamStats> = stats.iter().map(|s| (s.id, s)).collect();
        for problem in truth::check_reply(&mut self.teams, &by_id, sorted, waiter.sent_at) {
            self.violation(problem);
        }
        let reply = Reply {
            global,
            sent_at: waiter.sent_at,
            written_then: &waiter.written_then,
            stats: &by_id,
        };
        self.survival.reply(&reply, &self.teams);
        // Delivered, as a server sees it: every team done writing, and
        // this reply counts every message written.
        if self.timing.delivered.is_none()
            && self.timing.first_write.is_some()
            && self.teams.iter().all(|(id, t)| {
                t.written >= t.quota && by_id.get(id).is_some_and(|s| s.message_count == t.written)
            })
        {
            self.timing.delivered = Some(Instant::now());
        }
        let _ = waiter.reply.send(stats);
    }

    fn record_disconnect(&mut self, team: TeamId, length: Duration, unended: bool) {
        if self.longest_disconnect.is_none_or(|d| length > d.length) {
            self.longest_disconnect = Some(Disconnect {
                team,
                length,
                unended,
            });
        }
    }

    /// Teams the client has not yet set right after chaos (see
    /// [`TeamTruth::owes_recovery`]).
    pub fn not_back(&self) -> Vec<TeamId> {
        self.teams
            .iter()
            .filter(|(_, t)| t.owes_recovery())
            .map(|(&id, _)| id)
            .collect()
    }

    /// The recovery wait (`wait`) ran out. One judgement makes both the
    /// problems and the fault table: every team not back, and the Global if
    /// it is down, is a problem, and every fault still waiting on one of
    /// them counts "not recovered" (never "not observed").
    pub fn recovery_ran_out(&mut self, wait: Duration) -> Vec<String> {
        /// Teams named one by one; the rest are counted.
        const NAMED: usize = 5;
        let wait = humantime::format_duration(wait);
        let not_back = self.not_back();
        let mut problems = Vec::new();
        for (i, &team) in not_back.iter().enumerate() {
            let faults = self.survival.team_not_recovered(team);
            if i >= NAMED {
                continue;
            }
            let Some(t) = self.teams.get(&team) else {
                continue;
            };
            let waiting_on = if faults.is_empty() {
                String::new()
            } else {
                let names: Vec<&str> = faults.iter().map(|f| f.name()).collect();
                format!(", fault {} not recovered", names.join(", "))
            };
            problems.push(format!(
                "not recovered {wait} after chaos: team {team} joined={} sockets={}{waiting_on} \
                 (last events: {})",
                t.joined,
                t.open_sockets,
                t.history_line()
            ));
        }
        if not_back.len() > NAMED {
            problems.push(format!(
                "not recovered {wait} after chaos: {} more teams",
                not_back.len() - NAMED
            ));
        }
        if self.global.is_none() {
            let drops = match self.survival.global_not_recovered().len() {
                0 => String::new(),
                n => format!(", fault global-drop not recovered ({n})"),
            };
            problems.push(format!(
                "not recovered {wait} after chaos: Global down{drops}"
            ));
        }
        problems
    }

    /// The run is over: teams still without a socket count their outage so
    /// far, and recoveries still pending were not observed.
    pub fn close_the_books(&mut self) {
        let now = Instant::now();
        let down: Vec<(TeamId, Duration)> = self
            .teams
            .iter()
            .filter_map(|(&id, t)| t.outage.length(now).map(|l| (id, l)))
            .collect();
        for (team, length) in down {
            self.record_disconnect(team, length, true);
        }
        self.survival.finish();
    }
}
