//! The client against the simulator under faults, tuned for runs of a few
//! seconds: the setup the chaos and the replay tests share.

use std::time::Duration;

use switchboard::runtime::RunConfig;
use switchboard::sim::{Chaos, Scenario, Schedule, SimConfig, SimServer};
use switchboard::testkit::client::config;

/// The client's configuration: pings every 300 ms, so a zombie socket is
/// caught within a run of seconds, and dead after `pong_timeout` of
/// silence; messages of at most 64 KiB, so the simulator's oversized
/// frames (128 KiB) are over the limit.
pub fn client_config(global_url: String, pong_timeout: Duration) -> RunConfig {
    let mut c = config(global_url);
    c.core.ping_interval = Duration::from_millis(300);
    c.core.pong_timeout = pong_timeout;
    c.transport.max_message_size = 64 * 1024;
    c
}

/// `teams` teams of 60 messages at 40/s, joining over 300 ms, a fifth of
/// them leaving, a healthcheck every 200 ms, with room for every fault: an
/// oversized frame over the client's limit, a slow reader's 800 ms pause,
/// and a recovery wait that covers `client`'s own timings.
pub fn scenario(teams: u64, client: &RunConfig) -> Scenario {
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
        recovery_wait: Scenario::recovery_wait_for(&client.core),
        ..Scenario::default()
    }
}

/// The simulator on a free loopback port.
pub async fn simulator(
    scenario: Scenario,
    chaos: Chaos,
    schedule: Schedule,
    seed: u64,
) -> SimServer {
    SimServer::start(SimConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        scenario,
        chaos,
        schedule,
        seed,
        tls: false,
    })
    .await
    .expect("simulator starts")
}
