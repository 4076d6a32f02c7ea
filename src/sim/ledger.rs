//! The simulator's book, shared by the director and every socket task: the
//! truth per team, the sockets and URLs it issued, the live Global and the
//! healthchecks asked on it, the faults and their recoveries, and what the
//! client did wrong. The ledger is the one writer of its book: the sockets,
//! the injector, the plan and the phases report what happened through the
//! methods here, and the ledger decides what that means for the truth, the
//! outage clocks and the survival rules, and keeps them in step.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::faults::{Fault, WatchId};
use super::schedule::Trigger;
use super::socket::SocketCtl;
use super::survival::{Recovery, Reply, Survival};
use super::truth::{self, TeamTruth};
use super::verdict::{Disconnect, TeamCount, Timing, Verdict};
use crate::protocol::{TeamId, TeamStats};

/// A healthcheck request in flight.
struct Waiter {
    /// When the request was sent.
    sent_at: Instant,
    /// What had been written to the teams whose recovery needs an exact
    /// reply, when the request was sent.
    written_then: BTreeMap<TeamId, u64>,
    /// The reply goes here.
    reply: oneshot::Sender<Vec<TeamStats>>,
}

/// The live Global connection. Healthcheck waiters belong to it: a reply
/// arriving late on a dropped Global can never be taken for the answer to a
/// request made on its successor, and dropping it releases its askers.
struct GlobalCtl {
    /// Socket id.
    id: u64,
    /// Its control channel.
    ctl: mpsc::UnboundedSender<SocketCtl>,
    /// Healthcheck requests in flight on it, oldest first.
    waiters: VecDeque<Waiter>,
}

/// At most this many violations are kept (the count goes on).
const MAX_VIOLATIONS: usize = 50;

/// The whole book.
pub(crate) struct Ledger {
    /// Every team ever announced.
    teams: BTreeMap<TeamId, TeamTruth>,
    /// Issued URL tokens: token → (team, used).
    tokens: HashMap<u64, (TeamId, bool)>,
    /// Last token issued.
    next_token: u64,
    /// Last socket id given (Global and team sockets share the sequence).
    next_socket: u64,
    /// The live Global connection.
    global: Option<GlobalCtl>,
    /// Global connections accepted.
    global_connects: u64,
    /// Faults injected and what became of them.
    survival: Survival,
    /// Scheduled faults not yet fired.
    triggers: Vec<Trigger>,
    /// Everything the client did wrong, in words (the first few).
    violations: Vec<String>,
    /// How many violations there were in all.
    violations_total: u64,
    /// Healthcheck replies checked.
    replies_checked: u64,
    /// Sockets the client closed with 1000 after `goodbye`.
    closed_after_goodbye: u64,
    /// `goodbye` was sent.
    goodbye_sent: bool,
    /// Most sockets one team had open at once.
    max_open: u32,
    /// Whether faults may be injected (off from the recovery on).
    chaos_on: bool,
    /// Whether teams are still sent messages (off once a duration is up).
    streaming: bool,
    /// The longest time a team was without a socket.
    longest_disconnect: Option<Disconnect>,
    /// The simulator's randomness.
    rng: fastrand::Rng,
    /// When connecting and delivering began and ended.
    timing: TimingMarks,
}

/// The moments [`Timing`] is measured between.
struct TimingMarks {
    first_join: Option<Instant>,
    all_connected: Option<Instant>,
    /// Teams that have had a socket open.
    ever_connected: u64,
    /// Teams the scenario announces.
    expected_teams: u64,
    first_write: Option<Instant>,
    delivered: Option<Instant>,
}

impl TimingMarks {
    fn figures(&self) -> Timing {
        let ms = |from: Option<Instant>, to: Option<Instant>| {
            Some(to?.saturating_duration_since(from?).as_secs_f64() * 1000.0)
        };
        Timing {
            connect_all_ms: ms(self.first_join, self.all_connected),
            deliver_all_ms: ms(self.first_write, self.delivered),
        }
    }
}

/// What the book says: read by anyone, written by no one else.
impl Ledger {
    /// An empty book for a run announcing `expected_teams`: randomness
    /// seeded with `seed`, `triggers` armed.
    pub fn new(seed: u64, triggers: Vec<Trigger>, expected_teams: u64) -> Ledger {
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
            timing: TimingMarks {
                first_join: None,
                all_connected: None,
                ever_connected: 0,
                expected_teams,
                first_write: None,
                delivered: None,
            },
        }
    }

    /// Every team ever announced.
    pub fn teams(&self) -> &BTreeMap<TeamId, TeamTruth> {
        &self.teams
    }

    /// One team's truth.
    pub fn team(&self, team: TeamId) -> Option<&TeamTruth> {
        self.teams.get(&team)
    }

    /// Messages written to `team` so far.
    pub fn written(&self, team: TeamId) -> u64 {
        self.teams.get(&team).map_or(0, |t| t.written)
    }

    /// Whether faults may be injected.
    pub fn chaos_on(&self) -> bool {
        self.chaos_on
    }

    /// Whether teams are still sent messages.
    pub fn streaming(&self) -> bool {
        self.streaming
    }

    /// Whether some fault on `team` is still waiting for its recovery.
    pub fn fault_pending(&self, team: TeamId) -> bool {
        self.survival.busy(team)
    }

    /// Whether a Global connection is open.
    pub fn global_open(&self) -> bool {
        self.global.is_some()
    }

    /// Faults injected so far, all kinds.
    pub fn faults_injected(&self) -> u64 {
        self.survival.injected()
    }

    /// Healthcheck replies checked so far.
    pub fn replies_checked(&self) -> u64 {
        self.replies_checked
    }

    /// Sockets the client closed with 1000 after `goodbye`.
    pub fn closed_after_goodbye(&self) -> u64 {
        self.closed_after_goodbye
    }

    /// Team sockets open right now.
    pub fn open_team_sockets(&self) -> u32 {
        self.teams.values().map(|t| t.open_sockets).sum()
    }

    /// Whether a healthcheck reply has shown every message delivered.
    pub fn delivered(&self) -> bool {
        self.timing.delivered.is_some()
    }

    /// Whether every team has had all its messages, or is done for good.
    pub fn every_team_served(&self) -> bool {
        self.teams
            .values()
            .all(|t| t.finished || (t.joined && t.written >= t.quota))
    }

    /// Whether the client has set everything right after chaos: every team
    /// back (see [`TeamTruth::owes_recovery`]) and a Global open.
    pub fn all_back(&self) -> bool {
        self.not_back().is_empty() && self.global.is_some()
    }

    /// Scheduled faults (of the kinds the director fires) whose team has
    /// received enough messages.
    pub fn due_triggers(&self) -> Vec<Trigger> {
        self.triggers
            .iter()
            .filter(|t| !t.fault.is_probability())
            .filter(|t| self.written(t.team) >= t.after)
            .copied()
            .collect()
    }

    /// Whether a reply matches the truth exactly (the final check).
    pub fn exact(&self, stats: &[TeamStats]) -> Result<(), String> {
        truth::exact(&self.teams, stats)
    }

    /// The simulator's randomness: every random decision draws from it, in
    /// the order the run makes them, so a seed replays a run.
    pub fn dice(&mut self) -> &mut fastrand::Rng {
        &mut self.rng
    }

    /// Sends `order` to the live Global; its socket id if sent.
    pub fn to_global(&self, order: SocketCtl) -> Option<u64> {
        let global = self.global.as_ref()?;
        global.ctl.send(order).ok()?;
        Some(global.id)
    }

    fn not_back(&self) -> Vec<TeamId> {
        self.teams
            .iter()
            .filter(|(_, t)| t.owes_recovery())
            .map(|(&id, _)| id)
            .collect()
    }

    /// What was written to the teams whose recovery needs an exact reply.
    fn written_now(&self) -> BTreeMap<TeamId, u64> {
        self.survival
            .exact_teams()
            .filter_map(|t| self.teams.get(&t).map(|truth| (t, truth.written)))
            .collect()
    }
}

/// What the sockets report.
impl Ledger {
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

    /// The client opened `/team/<team>/<token>`: whether that URL was
    /// issued for the team and not used yet (it is used now). A URL reused
    /// or made up is a violation.
    pub fn url_opened(&mut self, team: TeamId, token: u64) -> bool {
        match self.tokens.get_mut(&token) {
            Some((issued, used)) if *issued == team && !*used => {
                *used = true;
                true
            }
            _ => {
                self.violation(format!("team {team}: URL token {token} reused or unknown"));
                false
            }
        }
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

    /// The frame carrying fault `watch` was written to `team`'s socket.
    pub fn fault_frame_written(&mut self, watch: WatchId, team: TeamId) {
        let written = self.written(team);
        self.survival.arm(watch, Instant::now(), written);
    }

    /// How many of `due` messages `socket` may write to `team` now: none
    /// unless the run still streams, it is the team's current socket (the
    /// truth books one write in flight per team), and the team is joined,
    /// not paused and not a zombie; never more than the team has left.
    pub fn writable(&self, team: TeamId, socket: u64, due: u64) -> u64 {
        match self.teams.get(&team) {
            Some(t)
                if self.streaming
                    && t.socket_id() == Some(socket)
                    && t.joined
                    && !t.paused
                    && !t.zombie =>
            {
                due.min(t.remaining())
            }
            _ => 0,
        }
    }

    /// A batch is about to be written to `team`, one entry per message,
    /// true for those with `props`: booked as in flight before the write,
    /// since the client may count it before the write is known to have
    /// succeeded. Returns the number of the batch's first message.
    pub fn writing(&mut self, team: TeamId, props: &[bool]) -> u64 {
        let Some(truth) = self.teams.get_mut(&team) else {
            return 0;
        };
        truth.in_flight = props.len() as u64;
        truth.props_in_flight = props.iter().filter(|p| **p).count() as u64;
        truth.written
    }

    /// The batch in flight to `team` ended at `now`: written if it was
    /// `flushed`, else lost with its socket.
    pub fn batch_ended(&mut self, team: TeamId, flushed: bool, now: Instant) {
        if flushed {
            self.timing.first_write.get_or_insert(now);
        }
        if let Some(truth) = self.teams.get_mut(&team) {
            if flushed {
                truth.written += truth.in_flight;
                truth.props += truth.props_in_flight;
            }
            truth.in_flight = 0;
            truth.props_in_flight = 0;
        }
    }

    /// The client closed a socket with `code`; after `goodbye` it must use
    /// 1000.
    pub fn client_closed(&mut self, code: Option<u16>) {
        if self.goodbye_sent && code == Some(1000) {
            self.closed_after_goodbye += 1;
        }
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

    /// The client asked for a URL for `team`.
    pub fn connect_requested(&mut self, team: TeamId) {
        self.survival.connect_requested(team);
    }

    /// A single-use URL token for `team`, issued now.
    pub fn issue_token(&mut self, team: TeamId) -> u64 {
        self.next_token += 1;
        self.tokens.insert(self.next_token, (team, false));
        self.next_token
    }

    /// A healthcheck request went out on Global `global` at `sent_at`: the
    /// reply will come through the receiver, unless that Global closes
    /// first. `None` if `global` is not the live Global.
    pub fn healthcheck_asked(
        &mut self,
        global: u64,
        sent_at: Instant,
    ) -> Option<oneshot::Receiver<Vec<TeamStats>>> {
        let written_then = self.written_now();
        let live = self.global.as_mut().filter(|g| g.id == global)?;
        let (reply, rx) = oneshot::channel();
        live.waiters.push_back(Waiter {
            sent_at,
            written_then,
            reply,
        });
        Some(rx)
    }

    /// A healthcheck request on Global `global` went unanswered too long:
    /// `problem` is a violation if that Global is still open (one that
    /// closed owes no reply).
    pub fn healthcheck_unanswered(&mut self, global: u64, problem: String) {
        if self.global.as_ref().is_some_and(|g| g.id == global) {
            self.violation(problem);
        }
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
}

/// What the injector reports.
impl Ledger {
    /// Books an injected fault and the recovery it waits for.
    pub fn injected(&mut self, fault: Fault, recovery: Recovery) -> WatchId {
        if let Some(team) = recovery.team()
            && let Some(truth) = self.teams.get_mut(&team)
        {
            truth.note(format!("fault {}", fault.name()));
        }
        self.survival.inject(fault, recovery)
    }

    /// Whether a due trigger of `fault` for `team` fires now (and is used up).
    pub fn take_trigger(&mut self, team: TeamId, fault: Fault) -> bool {
        let written = self.written(team);
        let due = self
            .triggers
            .iter()
            .position(|t| t.team == team && t.fault == fault && written >= t.after);
        due.map(|i| self.triggers.swap_remove(i)).is_some()
    }

    /// Scheduled fault `trigger` fired.
    pub fn trigger_fired(&mut self, trigger: Trigger) {
        self.triggers.retain(|t| *t != trigger);
    }

    /// `team`'s socket stopped working (a zombie) at `now`.
    pub fn team_socket_unusable(&mut self, team: TeamId, now: Instant) {
        if let Some(truth) = self.teams.get_mut(&team) {
            truth.zombie = true;
            truth.outage.lose(now);
        }
    }

    /// `team`'s socket is told to stop writing (quiescing before a reset);
    /// it stays paused until its next socket opens.
    pub fn team_paused(&mut self, team: TeamId) {
        if let Some(truth) = self.teams.get_mut(&team) {
            truth.paused = true;
        }
    }

    /// The reset `team` was paused for did not happen: it writes again.
    pub fn team_unpaused(&mut self, team: TeamId) {
        if let Some(truth) = self.teams.get_mut(&team) {
            truth.paused = false;
        }
    }

    /// The server stops reading `team`'s socket until `until`.
    pub fn reading_paused(&mut self, team: TeamId, until: Instant) {
        if let Some(truth) = self.teams.get_mut(&team) {
            truth.slow_until = Some(until);
        }
    }
}

/// What the plan and the phases report.
impl Ledger {
    /// `team.join` for `team` went out at `now`; it is to receive `quota`
    /// messages.
    pub fn team_joined(&mut self, team: TeamId, quota: u64, now: Instant) {
        let truth = self.teams.entry(team).or_default();
        truth.quota = quota;
        truth.joined = true;
        truth.announced_at.get_or_insert(now);
        self.timing.first_join.get_or_insert(now);
    }

    /// `team` was told it left (on `via`), for good unless it will rejoin.
    pub fn team_left(&mut self, team: TeamId, via: &str, now: Instant, for_good: bool) {
        if let Some(truth) = self.teams.get_mut(&team) {
            truth.joined = false;
            truth.left_at = Some(now);
            truth.outage.leave(now);
            truth.note(format!("left (on {via})"));
        }
        self.survival.team_left(team);
        if for_good && let Some(truth) = self.teams.get_mut(&team) {
            truth.finished = true;
        }
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

    /// The run's duration is up: no more messages.
    pub fn streaming_over(&mut self) {
        self.streaming = false;
    }

    /// The recovery begins: no more faults.
    pub fn chaos_over(&mut self) {
        self.chaos_on = false;
    }

    /// `goodbye` is being sent: from now on a closed socket owes no outage,
    /// and the client must close with 1000. Returns the closes owed: the
    /// Global and every team socket open now.
    pub fn goodbye(&mut self) -> u64 {
        self.goodbye_sent = true;
        1 + u64::from(self.open_team_sockets())
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

    /// The verdict, with the phases' `mismatches`, for a run that took
    /// `duration`: verified only if nothing went wrong, anywhere.
    pub fn verdict(&self, mut mismatches: Vec<String>, duration: Duration) -> Verdict {
        mismatches.extend(self.violations.iter().cloned());
        let untold = self.violations_total - self.violations.len() as u64;
        if untold > 0 {
            mismatches.push(format!("... and {untold} more violations"));
        }
        let truth: Vec<TeamCount> = self
            .teams
            .iter()
            .map(|(&id, t)| TeamCount {
                id,
                messages: t.written,
                props: t.props,
            })
            .collect();
        Verdict {
            verified: mismatches.is_empty(),
            teams: self.teams.len(),
            messages: truth.iter().map(|t| t.messages).sum(),
            props: truth.iter().map(|t| t.props).sum(),
            faults: self.survival.counts().clone(),
            not_observed_why: self
                .survival
                .why_not()
                .iter()
                .map(|(&f, why)| (f, why.iter().map(|(w, &n)| ((*w).to_owned(), n)).collect()))
                .collect(),
            healthchecks_checked: self.replies_checked,
            global_connects: self.global_connects,
            max_sockets_per_team: self.max_open,
            longest_disconnect: self.longest_disconnect,
            truth,
            mismatches,
            duration,
            timing: self.timing.figures(),
            tls_handshakes: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_problems_and_the_fault_table_come_from_one_judgement() {
        let mut ledger = Ledger::new(1, Vec::new(), 8);
        // Seven teams down with a zombie pending; team 8 back, its
        // team-close waiting on a reply that never came.
        for id in 1..=8 {
            ledger.team_joined(TeamId(id), 0, Instant::now());
            let fault = if id == 8 {
                Fault::TeamClose
            } else {
                Fault::Zombie
            };
            ledger.injected(
                fault,
                Recovery::Reconnect {
                    team: TeamId(id),
                    before: 0,
                    back_at: None,
                },
            );
        }
        let (ctl, _rx) = tokio::sync::mpsc::unbounded_channel();
        ledger.global_opened(100, ctl.clone());
        ledger.team_socket_opened(TeamId(8), 101, ctl);
        let problems = ledger.recovery_ran_out(Duration::from_secs(30));
        ledger.close_the_books();
        let v = ledger.verdict(problems, Duration::ZERO);
        assert!(!v.verified);
        let text = v.to_string();
        assert!(
            text.contains("not recovered 30s after chaos: team 1 joined=true sockets=0, fault zombie not recovered"),
            "{text}"
        );
        assert!(text.contains("2 more teams"), "{text}");
        assert!(!text.contains("team 8"), "{text}");
        // The table says what the problems say: every zombie not recovered,
        // none "not observed"; the team that was back ran out with the run.
        let zombie = v.fault(Fault::Zombie);
        assert_eq!((zombie.injected, zombie.not_recovered), (7, 7));
        assert_eq!((zombie.survived, zombie.not_observed), (0, 0));
        assert!(!v.not_observed_why.contains_key(&Fault::Zombie), "{text}");
        assert_eq!(v.fault(Fault::TeamClose).not_observed, 1);
        assert!(text.contains("not recovered"), "{text}");
        assert!(
            text.contains("zombie                   7        0            0             7"),
            "{text}"
        );
    }
}
