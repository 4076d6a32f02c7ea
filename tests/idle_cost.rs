//! Per-tick work grows with events, not teams: 10,000 connected, idle teams
//! cost no per-team work on a tick where nothing is due. Measured here as
//! work done (timers popped, events handled, commands emitted, team
//! entities the systems looked up or iterated), which is deterministic; the
//! time it takes is reported by `benches/idle_tick.rs`.

use std::time::Duration;

use switchboard::Config;
use switchboard::testkit::{Peer, test_config};

const TEAMS: u64 = 10_000;

fn fleet(ping: Duration) -> Peer {
    let config = Config {
        ping_interval: ping,
        pong_timeout: Duration::from_secs(5),
        ..test_config()
    };
    Peer::connected_fleet(&config, 5, TEAMS)
}

#[test]
fn idle_ticks_do_no_per_team_work() {
    let mut peer = fleet(Duration::from_secs(3600));
    let connected = peer
        .core
        .healthcheck()
        .iter()
        .filter(|t| t.connected)
        .count();
    assert_eq!(connected, TEAMS as usize);
    // The request and connect deadlines set while connecting are left in
    // the heap (lazy deletion): swept once the heap doubled, or popped,
    // stale, when they come due: a cost of those past transitions, paid
    // once. Let them drain first.
    // Those swept before they come due are not popped here, hence `<=`.
    let fired = peer.core.timers_fired();
    let visited = peer.core.entities_visited();
    peer.advance(Duration::from_secs(3));
    let drained = peer.core.timers_fired() - fired;
    assert!(drained <= 2 * TEAMS);
    assert_eq!(
        peer.core.entities_visited() - visited,
        drained,
        "one entity visited per timer popped"
    );
    let _ = peer.take_new();
    let fired = peer.core.timers_fired();
    let events = peer.core.stats().events;
    let visited = peer.core.entities_visited();
    peer.step_n(1_000);
    assert_eq!(peer.core.timers_fired(), fired, "no timer came due");
    assert_eq!(
        peer.core.entities_visited(),
        visited,
        "an idle tick visited team entities"
    );
    assert_eq!(peer.core.stats().events, events);
    assert!(peer.take_new().is_empty());
    // A few timers per team, not a growing pile.
    assert_eq!(
        peer.core.pending_timers(),
        TEAMS as usize,
        "one ping timer each"
    );
}

#[test]
fn a_ping_round_costs_one_timer_per_ping() {
    let mut peer = fleet(Duration::from_secs(1));
    let fired = peer.core.timers_fired();
    let visited = peer.core.entities_visited();
    peer.advance(Duration::from_millis(1_000));
    // Each team: its ping timer fired once; pong checks are not due yet.
    assert_eq!(peer.core.timers_fired() - fired, TEAMS);
    assert_eq!(peer.core.stats().pings_sent, TEAMS);
    // One entity visit per timer fired: the ping round costs O(due timers).
    assert_eq!(peer.core.entities_visited() - visited, TEAMS);
}
