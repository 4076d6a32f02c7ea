//! The run's second phase: chaos off, every joined team given the recovery
//! wait (which must cover the client's own timings) to get its socket back,
//! then the final check — the client's healthcheck must converge on
//! exactly the truth. What is still not back when the wait runs out is
//! judged once, by the ledger, for both the problems and the fault table.

use std::time::{Duration, Instant};

use super::ask::ask_healthcheck;
use super::shared::Shared;

/// How often recovery looks again.
const POLL: Duration = Duration::from_millis(50);

/// Turns chaos off and waits for the client to recover. Returns the
/// problems: what did not recover in time, and a final healthcheck that
/// never came out exact.
pub(super) async fn recover(shared: &Shared) -> Vec<String> {
    let mut mismatches = Vec::new();
    shared.lock().chaos_over();
    let back_until = Instant::now() + shared.scenario.recovery_wait;
    loop {
        if shared.lock().all_back() {
            break;
        }
        if Instant::now() > back_until {
            mismatches.extend(
                shared
                    .lock()
                    .recovery_ran_out(shared.scenario.recovery_wait),
            );
            break;
        }
        tokio::time::sleep(POLL).await;
    }

    // Every reply on the way was checked never to exceed the truth; now it
    // must equal it.
    let exact_until = Instant::now() + shared.scenario.final_check_wait;
    let mut exact = Err("no healthcheck reply".to_owned());
    while Instant::now() < exact_until {
        let asked = tokio::time::timeout_at(exact_until.into(), ask_healthcheck(shared)).await;
        if let Ok(Some(stats)) = asked {
            exact = shared.lock().exact(&stats);
            if exact.is_ok() {
                break;
            }
        }
        tokio::time::sleep(POLL).await;
    }
    if let Err(diff) = exact {
        mismatches.push(format!("final healthcheck not exact: {diff}"));
    }
    mismatches
}
