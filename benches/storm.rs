//! Storm figures at 10,000 teams, in core time with production defaults
//! and a server that answers each `team.connect` after a 50 ms round trip
//! (see `tests/storms/scenario.rs`, shared with `tests/storms.rs`, which
//! asserts the bounds): the in-flight peak, the request and handshake rates
//! the server sees, and the time until every team is back.
//! `cargo bench --bench storm`.

#[path = "../tests/storms/scenario.rs"]
mod scenario;

use std::time::Duration;

use scenario::Figures;

const TEAMS: u64 = 10_000;

fn print(figures: &Figures, bound: Option<Duration>) {
    let back = figures
        .all_back
        .map_or_else(|| "-".to_string(), |d| format!("{} ms", d.as_millis()));
    let bound = bound.map_or_else(|| "-".to_string(), |d| format!("{} ms", d.as_millis()));
    println!(
        "{:<36} {:>6} teams  in flight peak {:>4}  requests {:>6} (peak {:>5}/s)  \
         handshakes {:>6} (peak {:>5}/s)  all back {:>8} (bound {:>7})  \
         early {}  most per team {}  stepped in {:.2?}",
        figures.name,
        figures.teams,
        figures.peak_in_flight,
        figures.requests,
        figures.peak_requests_per_s,
        figures.handshakes,
        figures.peak_handshakes_per_s,
        back,
        bound,
        figures.early,
        figures.most_per_team,
        figures.wall,
    );
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not and
    // only wants to know this builds.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let config = scenario::config();
    println!(
        "tick {:?}, max_requests_in_flight {}, backoff {:?}..{:?}, round trip {:?}, dial {:?}",
        config.tick,
        config.max_requests_in_flight,
        config.backoff_min,
        config.backoff_max,
        scenario::ROUND_TRIP,
        scenario::DIAL
    );
    let (figures, bound) = scenario::all_join(TEAMS, &config);
    print(&figures, Some(bound));
    let (figures, bound) = scenario::global_drop(TEAMS, &config);
    print(&figures, Some(bound));
    let (figures, bound) = scenario::mass_drop(TEAMS, &config);
    print(&figures, Some(bound));
    let figures = scenario::hello_and_drop(TEAMS, &config, Duration::from_secs(30));
    print(&figures, None);
    let envelope = scenario::envelope(&config, 30);
    let floor = scenario::floor(&config, TEAMS, 30);
    println!(
        "  hello-and-drop requests by 5/10/30 s: {}/{}/{} (full-jitter envelope {:.0}/{:.0}/{:.0}, floor {}/{}/{})",
        figures.requests_by_second[4],
        figures.requests_by_second[9],
        figures.requests_by_second[29],
        envelope[5] * TEAMS as f64,
        envelope[10] * TEAMS as f64,
        envelope[30] * TEAMS as f64,
        floor[5] * TEAMS,
        floor[10] * TEAMS,
        floor[30] * TEAMS,
    );
}
