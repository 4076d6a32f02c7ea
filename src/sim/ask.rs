//! Asking the client for a healthcheck. Every request, whoever asks it, is
//! owed a reply within the scenario's `reply_within` while the Global it
//! was sent on stays open: one left unanswered is a violation.

use std::time::Instant;

use super::shared::Shared;
use super::socket::{SocketCtl, text};
use crate::protocol::{GlobalServerEvent, TeamStats};

/// Sends a healthcheck on the live Global and waits for its reply (which
/// the ledger checks against the truth as the Global task hands it in). `None` when
/// there is no Global, when it closed before replying (nobody owes the
/// reply then), or when the reply is overdue (a violation).
pub(crate) async fn ask_healthcheck(shared: &Shared) -> Option<Vec<TeamStats>> {
    let (reply, global, sent_at) = {
        let mut ledger = shared.lock();
        let sent_at = Instant::now();
        // Sent and booked under one lock, so waiters stay in request order.
        let global = ledger.to_global(SocketCtl::Send(text(&GlobalServerEvent::Healthcheck)))?;
        let reply = ledger.healthcheck_asked(global, sent_at)?;
        (reply, global, sent_at)
    };
    let within = shared.scenario.reply_within;
    match tokio::time::timeout(within, reply).await {
        Ok(Ok(stats)) => Some(stats),
        // The Global closed (its waiters went with it).
        Ok(Err(_)) => None,
        Err(_) => {
            let at = shared
                .started
                .get()
                .map_or(0.0, |t0| sent_at.duration_since(*t0).as_secs_f64());
            shared.lock().healthcheck_unanswered(
                global,
                format!(
                    "healthcheck sent at {at:.1}s unanswered after {}ms on a Global still open",
                    within.as_millis()
                ),
            );
            None
        }
    }
}
