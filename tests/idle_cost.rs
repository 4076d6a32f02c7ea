//! Per-tick work grows with events, not teams: 10,000 connected, idle teams
//! cost no per-team work on a tick where nothing is due. Measured here as
//! work done (timers popped, events handled, commands emitted, team
//! entities the systems looked up or iterated), which is deterministic; the
//! time it takes is reported by `benches/idle_tick.rs`.

use std::time::Duration;

use switchboard::Config;
use switchboard::protocol::TeamId;
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
    // once. Let them drain first. Some were swept while the fleet
    // connected, so fewer than 2 per team pop: exactly the stale ones
    // still held (all but one ping timer per team), each once.
    let held = peer.core.pending_timers() as u64;
    assert!(held <= 3 * TEAMS, "{held} timers held");
    let fired = peer.core.timers_fired();
    let visited = peer.core.entities_visited();
    peer.advance(Duration::from_secs(3));
    let drained = peer.core.timers_fired() - fired;
    assert_eq!(drained, held - TEAMS, "every stale timer popped once");
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

/// A step's work in entities visited, measured the same way on a fleet of
/// 100 and one of 10,000: equal, whatever the fleet's size.
#[derive(Debug, PartialEq)]
struct StepCost {
    /// Over 1,000 idle steps.
    idle: u64,
    /// One step handing over a run of messages on each of 50 teams.
    fifty_teams_talk: u64,
    /// Events that step applied.
    events: u64,
}

fn step_cost(teams: u64) -> StepCost {
    let config = Config {
        ping_interval: Duration::from_secs(3600),
        ..test_config()
    };
    let mut peer = Peer::connected_fleet(&config, 5, teams);
    // Past the connect phase's stale deadlines (see above).
    peer.advance(Duration::from_secs(3));
    let visited = peer.core.entities_visited();
    peer.step_n(1_000);
    let idle = peer.core.entities_visited() - visited;
    let (visited, events) = (peer.core.entities_visited(), peer.core.stats().events);
    for id in 1..=50 {
        peer.messages(TeamId(id), 3, 1);
    }
    peer.step();
    let cost = StepCost {
        idle,
        fifty_teams_talk: peer.core.entities_visited() - visited,
        events: peer.core.stats().events - events,
    };
    assert_eq!(
        peer.core.team(TeamId(50)).map(|t| t.counters.message_count),
        Some(3),
        "the messages were counted"
    );
    cost
}

#[test]
fn a_step_costs_the_same_for_100_teams_as_for_10_000() {
    let small = step_cost(100);
    assert_eq!(small.idle, 0, "an idle step visited team entities");
    assert_eq!(
        small.fifty_teams_talk, small.events,
        "one entity visited per event"
    );
    assert_eq!(step_cost(TEAMS), small);
}
