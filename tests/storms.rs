//! Storms at 10,000 teams, stepped in core time with production defaults
//! and a server that answers after a round trip (see `storms/scenario.rs`):
//! (a) every team joins at once, (b) Global drops with every request slot
//! taken, (c) every team socket drops at once; and issue 8's server that
//! accepts, says hello and hangs up, for 30 s. Each asserts the bounds
//! derived from the configuration: never more requests in flight than the
//! cap, no request before its backoff ran out, every team back within the
//! waves the cap and the round trip allow, and a request rate within the
//! full-jitter backoff envelope. `cargo bench --bench storm` prints the
//! figures.

mod storms {
    pub mod scenario;
}

use std::time::Duration;

use storms::scenario::{self, Figures};

const TEAMS: u64 = 10_000;

fn assert_storm(figures: &Figures, bound: Duration, cap: usize) {
    assert!(
        figures.peak_in_flight <= cap && figures.peak_held <= cap,
        "{figures:#?}: more than {cap} requests in flight"
    );
    let back = figures.all_back.expect("every team came back");
    assert!(
        back <= bound,
        "{figures:#?}: back in {back:?}, bound {bound:?}"
    );
}

#[test]
fn all_teams_joining_at_once_come_up_in_waves_of_the_cap() {
    let config = scenario::config();
    let (figures, bound) = scenario::all_join(TEAMS, &config);
    assert_storm(&figures, bound, config.max_requests_in_flight);
    assert_eq!(figures.requests, TEAMS as usize, "one request per team");
    assert_eq!(figures.peak_in_flight, config.max_requests_in_flight);
}

#[test]
fn a_global_drop_with_every_slot_taken_asks_again_once_on_the_next_global() {
    let config = scenario::config();
    let (figures, bound) = scenario::global_drop(TEAMS, &config);
    assert_storm(&figures, bound, config.max_requests_in_flight);
    // The requests lost with the old Global are asked again, once; the
    // teams still waiting ask for the first time.
    assert_eq!(figures.requests, TEAMS as usize);
    assert_eq!(figures.most_per_team, 1);
}

#[test]
fn a_mass_drop_of_team_sockets_retries_within_the_backoff() {
    let config = scenario::config();
    let (figures, bound) = scenario::mass_drop(TEAMS, &config);
    assert_storm(&figures, bound, config.max_requests_in_flight);
    assert_eq!(figures.requests, TEAMS as usize, "one retry per team");
    assert_eq!(figures.early, 0, "a retry before its backoff ran out");
}

/// Issue 8 item 3: a server that accepts, says hello and drops at once sees
/// every team's backoff grow to its cap, not a retry storm. Requests by
/// every second stay within 10% above the full-jitter envelope (the
/// expectation if every failure were instant; 1,000 independent teams
/// stay within a few percent of it), and at or above the floor of the
/// slowest retries the backoff bounds allow: the client keeps retrying.
#[test]
fn a_server_that_greets_and_hangs_up_sees_the_backoff_grow() {
    let config = scenario::config();
    let teams: u64 = 1_000;
    let run = Duration::from_secs(30);
    let figures = scenario::hello_and_drop(teams, &config, run);
    let envelope = scenario::envelope(&config, 30);
    let floor = scenario::floor(&config, teams, 30);
    assert_eq!(figures.requests_by_second.len(), 30);
    for (second, &seen) in figures.requests_by_second.iter().enumerate() {
        let allowed = 1.1 * teams as f64 * envelope[second + 1];
        assert!(
            seen as f64 <= allowed,
            "{seen} requests by {}s, envelope {allowed:.0}: {figures:#?}",
            second + 1
        );
        let needed = teams * floor[second + 1];
        assert!(
            seen as u64 >= needed,
            "{seen} requests by {}s, floor {needed}: {figures:#?}",
            second + 1
        );
    }
    // The floor is not vacuous: by the end it asks for several retries.
    assert!(floor[30] >= 5, "floor {floor:?}");
    assert!(figures.handshakes <= figures.requests);
    assert!(figures.peak_in_flight <= config.max_requests_in_flight);
}
