//! Prometheus's own parser on a `/metrics` body: `promtool check metrics`
//! from Debian's `prometheus` package (`.ci/test` installs it).

use std::io::Write;
use std::process::{Command, Stdio};

/// Panics, with promtool's words, unless it accepts `metrics`.
pub fn assert_promtool_accepts(metrics: &str) {
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool checks the exposition format: apt-get install prometheus");
    check
        .stdin
        .take()
        .expect("stdin")
        .write_all(metrics.as_bytes())
        .expect("write to promtool");
    let output = check.wait_with_output().expect("promtool ends");
    assert!(
        output.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
