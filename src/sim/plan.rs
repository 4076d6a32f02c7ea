//! The scenario's seeded plan: when each team joins, and which teams leave
//! (on Global or on their socket) and come back.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use super::Shared;
use super::server::{SocketCtl, text};
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
        let mut ledger = shared.lock();
        match step {
            Step::Join(team) => {
                // Stamped and queued under one lock: a healthcheck queued
                // later is behind this join on the wire.
                let join = text(&GlobalServerEvent::TeamJoin { team_id: team });
                if let Some(global) = ledger.global.as_ref() {
                    let _ = global.ctl.send(SocketCtl::Send(join));
                }
                let truth = ledger.teams.entry(team).or_default();
                truth.quota = match shared.scenario.run_for {
                    Some(_) => u64::MAX,
                    None => shared.scenario.messages,
                };
                truth.joined = true;
                truth.announced_at.get_or_insert(now);
                ledger.timing.joined(now);
            }
            Step::Leave {
                team,
                on_global,
                rejoin,
            } => {
                let global = ledger.global.as_ref().map(|g| g.ctl.clone());
                let Some(truth) = ledger.teams.get(&team) else {
                    return;
                };
                if !truth.joined || truth.paused || !truth.reading(now) {
                    // Mid-fault: try again shortly.
                    return self.push(now + RETRY, step);
                }
                let told = match (on_global, global, truth.socket.as_ref()) {
                    (true, Some(ctl), _) => ctl
                        .send(SocketCtl::Send(text(&GlobalServerEvent::TeamLeft {
                            team_id: team,
                        })))
                        .is_ok()
                        .then_some("global"),
                    (_, _, Some((_, ctl))) if !truth.zombie => {
                        ctl.send(SocketCtl::Leave).is_ok().then_some("socket")
                    }
                    _ => None,
                };
                let Some(via) = told else {
                    return self.push(now + RETRY, step);
                };
                ledger.team_left(team, via, now);
                if rejoin {
                    self.push(now + REJOIN_AFTER, Step::Rejoin(team));
                } else if let Some(truth) = ledger.teams.get_mut(&team) {
                    truth.finished = true;
                }
            }
            Step::Rejoin(team) => {
                ledger.team_rejoined(team, now);
                let join = text(&GlobalServerEvent::TeamJoin { team_id: team });
                if let Some(global) = ledger.global.as_ref() {
                    let _ = global.ctl.send(SocketCtl::Send(join));
                }
            }
        }
    }
}
