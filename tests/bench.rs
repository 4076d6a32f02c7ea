//! `switchboard bench` from the binary: a small run at a set rate reports
//! every figure, latency included, and the simulator's verdict; over TLS
//! too.

use std::process::Command;

use serde_json::Value;

/// Runs `switchboard bench ARGS --idle 300ms --json`; its figures, once it
/// exited successfully and verified.
fn bench(args: &[&str]) -> Value {
    let output = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .arg("bench")
        .args(args)
        .args(["--idle", "300ms", "--json"])
        .env("RUST_LOG", "error")
        .output()
        .expect("binary runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let figures: Value = serde_json::from_slice(&output.stdout).expect("one JSON object");
    assert_eq!(figures["verified"], true, "{figures}");
    figures
}

#[test]
fn a_small_bench_reports_every_figure_and_verifies() {
    let figures = bench(&["--teams", "20", "--messages", "60", "--rate", "100"]);
    for field in [
        "connect_all_ms",
        "deliver_all_ms",
        "messages_per_s",
        "peak_rss_kib",
        "cpu_ns_per_message",
        "cpu_idle_s",
        "latency_p50_ms",
        "latency_p99_ms",
    ] {
        assert!(figures[field].is_number(), "{field} missing: {figures}");
    }
    assert_eq!(figures["latency_samples"], 20 * 60, "every message timed");
}

#[test]
fn a_bench_over_tls_counts_its_handshakes_and_verifies() {
    let figures = bench(&["--tls", "--teams", "20", "--messages", "10"]);
    assert_eq!(figures["tls"], true, "{figures}");
    let handshakes = &figures["tls_handshakes"];
    let (full, resumed) = (
        handshakes["full"].as_u64().expect("full"),
        handshakes["resumed"].as_u64().expect("resumed"),
    );
    // Global and 20 teams, each one handshake: none failed, none twice.
    assert_eq!(full + resumed, 21, "{figures}");
    assert!(figures["cpu_us_per_connect"].is_number(), "{figures}");
}
