//! The switchboard binary. Until the network driver lands, it steps a
//! scripted run through the deterministic core and prints the healthcheck.

use switchboard::TeamId;
use switchboard::bridge::CloseReason;
use switchboard::protocol::GlobalServerEvent;
use switchboard::testkit::Peer;

fn main() {
    let mut peer = Peer::new(1);
    peer.open_global();
    for id in 1..=3 {
        peer.join(TeamId(id));
        peer.connect_team(TeamId(id));
    }
    for i in 0..30 {
        let team = TeamId(1 + i % 3);
        peer.message(team, if i % 4 == 0 { "props!" } else { "hi" });
    }
    peer.step();
    // Team 2's socket drops; it is re-requested and reconnected.
    peer.closed(peer.team_conn(TeamId(2)), CloseReason::Reset);
    while peer.requests().len() < 4 {
        peer.step();
    }
    peer.connect_team(TeamId(2));
    peer.global_says(GlobalServerEvent::Goodbye);
    peer.step();
    let report = peer.core.healthcheck();
    println!(
        "{}",
        serde_json::to_string_pretty(&report).unwrap_or_default()
    );
}
