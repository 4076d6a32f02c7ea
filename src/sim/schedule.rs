//! Faults at set points of a team's stream rather than at random times, so
//! that a test can know exactly how many will be injected.

use std::collections::BTreeSet;
use std::ops::Range;

use super::faults::Fault;
use crate::protocol::TeamId;

/// One fault, injected once, when `team` has received `after` messages.
///
/// For most kinds the fault fires at the first director tick at which the
/// team has received `after` messages and can take it (joined, its socket
/// open and read, no other fault at work on it, and enough messages still
/// to come for its recovery to be seen); until then it waits. The two
/// per-connection kinds fire on the team's next occasion once it has
/// received `after` messages: `connect-error` refuses its next
/// `team.connect`, `delayed-hello` holds back the hello of its next socket
/// (so `after: 0` hits the team's very first request or socket).
/// `global-drop` uses the team only as its clock; `garbage` goes to the
/// team's socket or to Global, as [`Trigger::garbage_on_global`] decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Trigger {
    /// The team whose stream it waits on (and that it hits).
    pub team: TeamId,
    /// Messages the team must have received first.
    pub after: u64,
    /// What is injected.
    pub fault: Fault,
}

impl Trigger {
    /// Where a scheduled `garbage` goes: a fixed function of the trigger, so
    /// a schedule hits the same connections every run.
    pub fn garbage_on_global(&self) -> bool {
        (self.team.0 ^ self.after).is_multiple_of(2)
    }
}

/// Triggers, each fired at most once. Teams named here are never made to
/// leave by the scenario's plan, so each trigger fires as long as the
/// client keeps its team connected: the number injected is certain.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Schedule(pub Vec<Trigger>);

impl Schedule {
    /// No triggers.
    pub fn none() -> Schedule {
        Schedule::default()
    }

    /// `per_kind` triggers of each of `faults`, each on its own team drawn
    /// (seeded) from `1..=teams`, after a message index drawn from `after`
    /// (for `connect-error` and `delayed-hello`: after 0, the team's first
    /// request or socket). Stops early if the teams run out.
    pub fn seeded(
        seed: u64,
        faults: &[Fault],
        per_kind: usize,
        teams: u64,
        after: Range<u64>,
    ) -> Schedule {
        let mut rng = fastrand::Rng::with_seed(seed ^ 0x5c4e_d01e);
        let mut ids: Vec<u64> = (1..=teams).collect();
        rng.shuffle(&mut ids);
        let mut ids = ids.into_iter();
        let mut triggers = Vec::new();
        for &fault in faults {
            for _ in 0..per_kind {
                let Some(id) = ids.next() else {
                    return Schedule(triggers);
                };
                let after = if fault.is_probability() || after.is_empty() {
                    0
                } else {
                    rng.u64(after.clone())
                };
                triggers.push(Trigger {
                    team: TeamId(id),
                    after,
                    fault,
                });
            }
        }
        Schedule(triggers)
    }

    /// How many triggers inject `fault`.
    pub fn count(&self, fault: Fault) -> u64 {
        self.0.iter().filter(|t| t.fault == fault).count() as u64
    }

    /// The teams some trigger waits on.
    pub fn teams(&self) -> BTreeSet<TeamId> {
        self.0.iter().map(|t| t.team).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seeded_schedule_puts_each_trigger_on_its_own_team() {
        let kinds = [Fault::Zombie, Fault::ConnectError];
        let schedule = Schedule::seeded(3, &kinds, 4, 20, 10..30);
        assert_eq!(schedule.count(Fault::Zombie), 4);
        assert_eq!(schedule.count(Fault::ConnectError), 4);
        assert_eq!(schedule.teams().len(), 8);
        for t in &schedule.0 {
            assert!((1..=20).contains(&t.team.0));
            match t.fault {
                Fault::ConnectError => assert_eq!(t.after, 0),
                _ => assert!((10..30).contains(&t.after)),
            }
        }
        assert_eq!(schedule, Schedule::seeded(3, &kinds, 4, 20, 10..30));
    }

    #[test]
    fn a_seeded_schedule_stops_when_the_teams_run_out() {
        let schedule = Schedule::seeded(1, &[Fault::Garbage], 5, 3, 1..2);
        assert_eq!(schedule.count(Fault::Garbage), 3);
    }
}
