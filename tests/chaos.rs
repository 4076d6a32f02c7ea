//! The client against the simulator, one chaos knob at a time and all of
//! them at once: the verdict must be exact, every knob must actually have
//! fired, and no team may ever hold two sockets.

use std::time::Duration;

use switchboard::sim::{Chaos, Fault, Scenario, SimConfig, SimServer, Verdict};
use switchboard::testkit::client::start;

fn scenario(teams: u64) -> Scenario {
    Scenario {
        teams,
        messages: 60,
        rate: 40.0,
        join_over: Duration::from_millis(300),
        healthcheck_every: Duration::from_millis(200),
        leave_fraction: 0.2,
        max_duration: Duration::from_secs(60),
        oversize_bytes: 128 * 1024,
        slow_read_for: Duration::from_millis(800),
        ..Scenario::default()
    }
}

/// Runs the library's client against a simulator and returns the verdict.
async fn run(scenario: Scenario, chaos: Chaos, seed: u64) -> Verdict {
    let server = SimServer::start(SimConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        scenario,
        chaos,
        seed,
    })
    .await
    .expect("simulator binds");
    let client = start(server.global_url(), |c| {
        c.seed = seed;
        c.core.ping_interval = Duration::from_millis(300);
        c.core.pong_timeout = Duration::from_millis(400);
        c.transport.max_message_size = 64 * 1024;
    });
    let verdict = server.verdict().await;
    let outcome = client.finish().await;
    assert_eq!(
        outcome.report.messages, verdict.messages,
        "client report agrees with the simulator"
    );
    verdict
}

fn assert_survived(verdict: &Verdict, fault: Fault) {
    assert!(verdict.verified, "{verdict}");
    assert_eq!(verdict.max_sockets_per_team, 1, "two sockets for one team");
    let count = verdict.faults.get(&fault).copied().unwrap_or_default();
    assert!(
        count.injected > 0,
        "{} never fired: {verdict}",
        fault.name()
    );
    assert_eq!(count.injected, count.survived, "{verdict}");
}

async fn one_knob(fault: Fault, rate: f64) {
    one_knob_in(scenario(20), fault, rate).await;
}

async fn one_knob_in(scenario: Scenario, fault: Fault, rate: f64) {
    let verdict = run(scenario, Chaos::only(fault, rate), 7).await;
    eprintln!("{verdict}");
    assert_survived(&verdict, fault);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn team_socket_closed_gracefully() {
    one_knob(Fault::TeamClose, 4.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn team_socket_closed_with_1011() {
    one_knob(Fault::TeamErrorClose, 4.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn team_socket_reset() {
    one_knob(Fault::TeamReset, 3.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_closed_and_reopened() {
    one_knob(Fault::GlobalDrop, 2.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zombie_team_socket() {
    one_knob(Fault::Zombie, 3.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_either_connection() {
    one_knob(Fault::Garbage, 20.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_in_place_of_team_connect() {
    one_knob(Fault::ConnectError, 0.3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_team_join() {
    one_knob(Fault::DuplicateJoin, 10.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_hello() {
    one_knob(Fault::DelayedHello, 0.5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frame() {
    one_knob(Fault::Oversize, 3.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reader() {
    // Only a team with messages left to send through the pause is picked.
    let long = Scenario {
        messages: 150,
        ..scenario(20)
    };
    one_knob_in(long, Fault::SlowReader, 3.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_knob_at_once_over_three_hundred_teams() {
    let scenario = Scenario {
        messages: 80,
        join_over: Duration::from_millis(800),
        ..scenario(300)
    };
    let verdict = run(scenario, Chaos::level(4.0), 11).await;
    eprintln!("{verdict}");
    assert!(verdict.verified, "{verdict}");
    assert_eq!(verdict.max_sockets_per_team, 1);
    assert_eq!(verdict.teams, 300);
    let kinds = verdict.faults.values().filter(|c| c.injected > 0).count();
    assert!(kinds >= 9, "most knobs fired: {verdict}");
    for (fault, count) in &verdict.faults {
        assert_eq!(
            count.injected,
            count.survived,
            "{}: {verdict}",
            fault.name()
        );
    }
}
