//! The run's first phase: the plan's joins and leaves, messages streaming,
//! periodic healthchecks, and faults from the rates and the schedule, until
//! every team has its messages (or the duration is up).

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::ask::ask_healthcheck;
use super::inject::{fire_due_triggers, inject_random};
use super::plan::Plan;
use super::shared::Shared;

/// How often the director looks at the world.
const TICK: Duration = Duration::from_millis(20);

/// Plays the scenario from `t0`. Returns a mismatch if it was not over by
/// `until`.
pub(super) async fn play(shared: &Arc<Shared>, t0: Instant, until: Instant) -> Option<String> {
    let scenario = &shared.scenario;
    let mut plan = Plan::new(shared, t0);
    let stream_until = scenario.run_for.map(|d| t0 + d);
    let rate_faults = shared.chaos.per_second();
    let mut ticker = tokio::time::interval(TICK);
    let mut next_healthcheck = t0 + scenario.healthcheck_every;
    let mut last = Instant::now();
    loop {
        ticker.tick().await;
        let now = Instant::now();
        let dt = now.duration_since(last).as_secs_f64();
        last = now;
        plan.apply_due(shared, now);
        if stream_until.is_some_and(|end| now >= end) {
            shared.lock().streaming_over();
        }
        if now >= next_healthcheck {
            next_healthcheck = now + scenario.healthcheck_every;
            let shared = shared.clone();
            // Checked on arrival by the ledger; an overdue reply is flagged
            // by the ask itself.
            tokio::spawn(async move { ask_healthcheck(&shared).await });
        }
        fire_due_triggers(shared);
        for &(fault, rate) in &rate_faults {
            let fire = shared.lock().dice().f64() < rate * dt;
            if fire {
                inject_random(shared, fault);
            }
        }
        let done = plan.is_empty() && {
            let ledger = shared.lock();
            match stream_until {
                Some(_) => !ledger.streaming(),
                None => ledger.every_team_served(),
            }
        };
        if done {
            return None;
        }
        if now >= until {
            return Some(format!(
                "run not over after {:.1}s: teams still streaming",
                now.duration_since(t0).as_secs_f64()
            ));
        }
    }
}
