//! `switchboard bench` from the binary: a small run at a set rate reports
//! every figure, latency included, and the simulator's verdict.

use std::process::Command;

use serde_json::Value;

#[test]
fn a_small_bench_reports_every_figure_and_verifies() {
    let output = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args([
            "bench",
            "--teams",
            "20",
            "--messages",
            "60",
            "--rate",
            "100",
        ])
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
