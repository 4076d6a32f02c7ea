//! The run's last phase: `goodbye`, after which the client must close every
//! socket it holds with 1000.

use std::time::{Duration, Instant};

use super::Shared;
use super::server::{SocketCtl, text};
use crate::protocol::GlobalServerEvent;

/// Sends `goodbye` and checks the closes that follow.
pub(super) async fn goodbye(shared: &Shared) -> Vec<String> {
    let mut mismatches = Vec::new();
    let expected_closes = {
        let mut ledger = shared.lock();
        ledger.goodbye_sent = true;
        if let Some(global) = ledger.global.as_ref() {
            let _ = global
                .ctl
                .send(SocketCtl::Send(text(&GlobalServerEvent::Goodbye)));
        }
        1 + ledger
            .teams
            .values()
            .map(|t| u64::from(t.open_sockets))
            .sum::<u64>()
    };
    let closed_until = Instant::now() + shared.scenario.goodbye_wait;
    loop {
        let (open, global) = {
            let ledger = shared.lock();
            let open: u32 = ledger.teams.values().map(|t| t.open_sockets).sum();
            (open, ledger.global.is_some())
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
    let closed = shared.lock().closed_after_goodbye;
    if closed < expected_closes {
        mismatches.push(format!(
            "after goodbye the client closed {closed} of {expected_closes} sockets with 1000"
        ));
    }
    mismatches
}
