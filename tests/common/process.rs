//! Driving the real binary against the simulator: its timings as flags,
//! signals, and waiting for the simulator's progress. Shared by the tests
//! that run whole processes (`restart.rs`, `cluster.rs`).

use std::process::Command;
use std::time::{Duration, Instant};

use switchboard::Config;
use switchboard::sim::SimServer;

/// `config`'s ping and backoff timings as `connect`'s flags.
pub fn timing_flags(config: &Config) -> Vec<String> {
    let flag = |name: &str, d: Duration| [name.into(), humantime::format_duration(d).to_string()];
    [
        flag("--ping-interval", config.ping_interval),
        flag("--pong-timeout", config.pong_timeout),
        flag("--backoff-min", config.backoff_min),
        flag("--backoff-max", config.backoff_max),
    ]
    .concat()
}

/// Sends `sig` (`-STOP`, `-9`, …) to the process `pid`.
pub fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill {sig} {pid}");
}

/// Waits until the simulator has written `n` messages, at most `deadline`.
pub async fn written(server: &SimServer, n: u64, deadline: Duration) {
    let started = Instant::now();
    while server.progress().messages < n {
        assert!(started.elapsed() < deadline, "simulator stalled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
