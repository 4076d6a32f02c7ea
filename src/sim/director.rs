//! The director runs the phases in order — play, recovery (with the final
//! exact check), goodbye — within the scenario's max duration, and draws
//! the verdict from the ledger.

use std::sync::Arc;

use super::ask::ask_healthcheck;
use super::goodbye::goodbye;
use super::play::play;
use super::recovery::recover;
use super::shared::Shared;
use super::verdict::Verdict;

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
        while !shared.lock().delivered() && tokio::time::Instant::now() < until {
            ask_healthcheck(&shared).await;
            tokio::time::sleep(scenario.healthcheck_every).await;
        }
        tokio::time::sleep(scenario.idle_for).await;
    }
    mismatches.extend(recover(&shared).await);
    shared.lock().close_the_books();
    mismatches.extend(goodbye(&shared).await);
    shared.lock().verdict(mismatches, t0.elapsed())
}
