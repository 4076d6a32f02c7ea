//! The run's last phase: `goodbye`, after which the client must close every
//! socket it holds with 1000.

use std::time::{Duration, Instant};

use super::shared::Shared;
use super::socket::{SocketCtl, text};
use crate::protocol::GlobalServerEvent;

/// Sends `goodbye` and checks the closes that follow.
pub(super) async fn goodbye(shared: &Shared) -> Vec<String> {
    let mut mismatches = Vec::new();
    let expected_closes = {
        let mut ledger = shared.lock();
        let owed = ledger.goodbye();
        ledger.to_global(SocketCtl::Send(text(&GlobalServerEvent::Goodbye)));
        owed
    };
    let closed_until = Instant::now() + shared.scenario.goodbye_wait;
    loop {
        let (open, global) = {
            let ledger = shared.lock();
            (ledger.open_team_sockets(), ledger.global_open())
        };
        if open == 0 && !global {
            break;
        }
        if Instant::now() > closed_until {
            mismatches.push(format!(
                "after goodbye, {open} team sockets and global={global} still open"
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let closed = shared.lock().closed_after_goodbye();
    if closed < expected_closes {
        mismatches.push(format!(
            "after goodbye the client closed {closed} of {expected_closes} sockets with 1000"
        ));
    }
    mismatches
}
