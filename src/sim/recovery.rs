//! The run's second phase: chaos off, every joined team given time to get
//! its socket back, then the final check — the client's healthcheck must
//! converge on exactly the truth.

use std::time::{Duration, Instant};

use super::Shared;
use super::ask::ask_healthcheck;
use super::truth;
use crate::protocol::TeamId;

/// How often recovery looks again.
const POLL: Duration = Duration::from_millis(50);

/// Turns chaos off and waits for the client to recover. Returns what did
/// not recover in time, and whether the final healthcheck was exact.
pub(super) async fn recover(shared: &Shared) -> Vec<String> {
    let mut mismatches = Vec::new();
    shared.lock().chaos_on = false;
    let back_until = Instant::now() + shared.scenario.recovery_wait;
    loop {
        let (waiting, global_up) = {
            let ledger = shared.lock();
            let waiting: Vec<TeamId> = ledger
                .teams
                .iter()
                .filter(|(_, t)| {
                    (t.joined && !t.connected()) || (!t.joined && t.open_sockets > 0) || t.paused
                })
                .map(|(&id, _)| id)
                .collect();
            (waiting, ledger.global.is_some())
        };
        if waiting.is_empty() && global_up {
            break;
        }
        if Instant::now() > back_until {
            let ledger = shared.lock();
            for team in waiting.iter().take(5) {
                let t = &ledger.teams[team];
                mismatches.push(format!(
                    "not recovered after chaos: team {team} joined={} sockets={} (last events: {})",
                    t.joined,
                    t.open_sockets,
                    t.history_line()
                ));
            }
            if !global_up {
                mismatches.push("not recovered after chaos: Global down".into());
            }
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
            exact = truth::exact(&shared.lock().teams, &stats);
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
