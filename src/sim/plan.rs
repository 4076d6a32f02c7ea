//! The scenario's seeded plan: when each team joins, and which teams leave
//! (on Global or on their socket) and come back.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use super::ledger::Ledger;
use super::shared::Shared;
use super::socket::{SocketCtl, text};
use crate::protocol::{GlobalServerEvent, TeamId};

/// Something the plan makes happen at a set time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    Join(TeamId),
    Leave {
        team: TeamId,
        on_global: bool,
        rejoin: bool,
    },
    Rejoin(TeamId),
}

/// A leave that cannot happen now (a fault is at work) is tried again
/// this much later.
const RETRY: Duration = Duration::from_millis(200);

/// A team that rejoins does so this long after it left.
const REJOIN_AFTER: Duration = Duration::from_millis(500);

/// The steps still to come, soonest first.
pub(super) struct Plan {
    steps: BinaryHeap<Reverse<(Instant, u64, Step)>>,
    seq: u64,
}

impl Plan {
    /// The plan of a run whose first Global connection was at `t0`. Teams
    /// with a scheduled fault never leave: their fault must fire.
    pub fn new(shared: &Shared, t0: Instant) -> Plan {
        let scenario = &shared.scenario;
        let mut rng = fastrand::Rng::with_seed(shared.seed ^ 0x5ce7_a210);
        let scheduled = shared.schedule.teams();
        let mut plan = Plan {
            steps: BinaryHeap::new(),
            seq: 0,
        };
        // Validated: the scenario streams for a finite time.
        let stream_for = scenario
            .streams_for()
            .unwrap_or(scenario.max_duration)
            .saturating_sub(scenario.join_over);
        for id in 1..=scenario.teams {
            let team = TeamId(id);
            let join_at = t0
                + scenario
                    .join_over
                    .mul_f64((id - 1) as f64 / scenario.teams as f64);
            plan.push(join_at, Step::Join(team));
            if rng.f64() < scenario.leave_fraction && !scheduled.contains(&team) {
                let leave_at = join_at + stream_for.mul_f64(0.2 + 0.6 * rng.f64());
                let step = Step::Leave {
                    team,
                    on_global: rng.f64() < scenario.leave_on_global,
                    rejoin: rng.f64() < scenario.rejoin_fraction,
                };
                plan.push(leave_at, step);
            }
        }
        plan
    }

    fn push(&mut self, at: Instant, step: Step) {
        self.seq += 1;
        self.steps.push(Reverse((at, self.seq, step)));
    }

    /// Whether every step has happened.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// Applies every step due at `now`.
    pub fn apply_due(&mut self, shared: &Shared, now: Instant) {
        while self
            .steps
            .peek()
            .is_some_and(|Reverse((at, _, _))| *at <= now)
        {
            if let Some(Reverse((_, _, step))) = self.steps.pop() {
                self.apply(shared, step, now);
            }
        }
    }

    /// Applies one step; one that cannot happen now is put back for later.
    fn apply(&mut self, shared: &Shared, step: Step, now: Instant) {
        match step {
            Step::Join(team) => {
                let quota = match shared.scenario.run_for {
                    Some(_) => u64::MAX,
                    None => shared.scenario.messages,
                };
                // Sent and booked under one lock: a healthcheck queued
                // later is behind this join on the wire.
                let mut ledger = shared.lock();
                ledger.to_global(join(team));
                ledger.team_joined(team, quota, now);
            }
            Step::Leave {
                team,
                on_global,
                rejoin,
            } => {
                let mut ledger = shared.lock();
                let Some(truth) = ledger.team(team) else {
                    return;
                };
                if !truth.joined || truth.paused || !truth.reading(now) {
                    // Mid-fault: try again shortly.
                    return self.push(now + RETRY, step);
                }
                let Some(via) = tell_left(&ledger, team, on_global) else {
                    return self.push(now + RETRY, step);
                };
                ledger.team_left(team, via, now, !rejoin);
                if rejoin {
                    self.push(now + REJOIN_AFTER, Step::Rejoin(team));
                }
            }
            Step::Rejoin(team) => {
                let mut ledger = shared.lock();
                ledger.team_rejoined(team, now);
                ledger.to_global(join(team));
            }
        }
    }
}

/// The order that sends `team.join` for `team` on Global.
fn join(team: TeamId) -> SocketCtl {
    SocketCtl::Send(text(&GlobalServerEvent::TeamJoin { team_id: team }))
}

/// Tells `team` it left: on Global if so planned and one is open, else on
/// its socket unless that is a zombie. How it was told, if it was.
fn tell_left(ledger: &Ledger, team: TeamId, on_global: bool) -> Option<&'static str> {
    let truth = ledger.team(team)?;
    if on_global && ledger.global_open() {
        let left = text(&GlobalServerEvent::TeamLeft { team_id: team });
        return ledger.to_global(SocketCtl::Send(left)).map(|_| "global");
    }
    match truth.socket.as_ref() {
        Some((_, ctl)) if !truth.zombie => ctl.send(SocketCtl::Leave).is_ok().then_some("socket"),
        _ => None,
    }
}
