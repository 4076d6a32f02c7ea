//! The director runs the phases in order — play, recovery (with the final
//! exact check), goodbye — within the scenario's max duration, and draws
//! the verdict from the ledger.

use std::sync::Arc;
use std::time::Duration;

use super::Shared;
use super::ask::ask_healthcheck;
use super::goodbye::goodbye;
use super::ledger::Ledger;
use super::play::play;
use super::recovery::recover;
use super::verdict::{TeamCount, Verdict};

/// Plays the whole run and returns the verdict.
pub(crate) async fn direct(shared: Arc<Shared>) -> Verdict {
    let t0 = loop {
        if let Some(t0) = shared.started.get() {
            break *t0;
        }
        shared.global_seen.notified().await;
    };
    // Play ends early enough for the later phases to fit in the max
    // duration (validated: at most a week, and long enough for them).
    let scenario = &shared.scenario;
    let play_until = t0 + scenario.max_duration.saturating_sub(scenario.ending());
    let mut mismatches = Vec::new();
    mismatches.extend(play(&shared, t0, play_until).await);
    if !scenario.idle_for.is_zero() {
        // Delivery is measured before the quiet window, not after it.
        let until = tokio::time::Instant::now() + scenario.final_check_wait;
        while !shared.lock().timing.is_delivered() && tokio::time::Instant::now() < until {
            ask_healthcheck(&shared).await;
            tokio::time::sleep(scenario.healthcheck_every).await;
        }
        tokio::time::sleep(scenario.idle_for).await;
    }
    mismatches.extend(recover(&shared).await);
    shared.lock().close_the_books();
    mismatches.extend(goodbye(&shared).await);
    verdict(&shared.lock(), mismatches, t0.elapsed())
}

/// The verdict: verified only if nothing went wrong, anywhere.
fn verdict(ledger: &Ledger, mut mismatches: Vec<String>, duration: Duration) -> Verdict {
    mismatches.extend(ledger.violations.iter().cloned());
    let untold = ledger.violations_total - ledger.violations.len() as u64;
    if untold > 0 {
        mismatches.push(format!("... and {untold} more violations"));
    }
    let truth: Vec<TeamCount> = ledger
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
        teams: ledger.teams.len(),
        messages: truth.iter().map(|t| t.messages).sum(),
        props: truth.iter().map(|t| t.props).sum(),
        faults: ledger.survival.counts().clone(),
        not_observed_why: ledger
            .survival
            .why_not()
            .iter()
            .map(|(&f, why)| (f, why.iter().map(|(w, &n)| ((*w).to_owned(), n)).collect()))
            .collect(),
        healthchecks_checked: ledger.replies_checked,
        global_connects: ledger.global_connects,
        max_sockets_per_team: ledger.max_open,
        longest_disconnect: ledger.longest_disconnect,
        truth,
        mismatches,
        duration,
        timing: ledger.timing.figures(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::TeamId;
    use crate::sim::faults::Fault;
    use crate::sim::survival::Recovery;
    use crate::sim::truth::TeamTruth;

    #[test]
    fn the_problems_and_the_fault_table_come_from_one_judgement() {
        let mut ledger = Ledger::new(1, Vec::new());
        // Seven teams down with a zombie pending; team 8 back, its
        // team-close waiting on a reply that never came.
        for id in 1..=8 {
            let joined = TeamTruth {
                joined: true,
                ..TeamTruth::default()
            };
            ledger.teams.insert(TeamId(id), joined);
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
        let v = verdict(&ledger, problems, Duration::ZERO);
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
