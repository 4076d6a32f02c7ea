//! Asking the client for a healthcheck. Every request, whoever asks it, is
//! owed a reply within the scenario's `reply_within` while the Global it
//! was sent on stays open: one left unanswered is a violation.

use std::time::Instant;

use tokio::sync::oneshot;

use super::Shared;
use super::ledger::Waiter;
use super::server::{SocketCtl, text};
use crate::protocol::{GlobalServerEvent, TeamStats};

/// Sends a healthcheck on the live Global and waits for its reply (which
/// the Global task checks against the truth as it arrives). `None` when
/// there is no Global, when it closed before replying (nobody owes the
/// reply then), or when the reply is overdue (a violation).
pub(crate) async fn ask_healthcheck(shared: &Shared) -> Option<Vec<TeamStats>> {
    let (reply, global, sent_at) = {
        let mut ledger = shared.lock();
        let written_then = ledger.written_now();
        let global = ledger.global.as_mut()?;
        let (tx, rx) = oneshot::channel();
        let sent_at = Instant::now();
        // Queued under the lock, so waiters stay in request order.
        global
            .ctl
            .send(SocketCtl::Send(text(&GlobalServerEvent::Healthcheck)))
            .ok()?;
        global.waiters.push_back(Waiter {
            sent_at,
            written_then,
            reply: tx,
        });
        (rx, global.id, sent_at)
    };
    let within = shared.scenario.reply_within;
    match tokio::time::timeout(within, reply).await {
        Ok(Ok(stats)) => Some(stats),
        // The Global closed (its waiters went with it).
        Ok(Err(_)) => None,
        Err(_) => {
            let mut ledger = shared.lock();
            if ledger.global.as_ref().is_some_and(|g| g.id == global) {
                let at = shared
                    .started
                    .get()
                    .map_or(0.0, |t0| sent_at.duration_since(*t0).as_secs_f64());
                ledger.violation(format!(
                    "healthcheck sent at {at:.1}s unanswered after {}ms on a Global still open",
                    within.as_millis()
                ));
            }
            None
        }
    }
}
