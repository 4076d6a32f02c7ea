//! The binary allocates with jemalloc under the settings `src/main.rs` gives
//! it. A misspelt settings symbol is silently ignored by jemalloc, and the
//! soak's RSS would creep again without any other test noticing; here
//! jemalloc's own statistics, printed at exit, say what it runs with.
#![cfg(target_os = "linux")]

use std::process::Command;

#[test]
fn the_binary_runs_on_jemalloc_with_a_short_decay_and_no_background_thread() {
    let output = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .arg("--version")
        // Adds printing at exit, as JSON; keeps every other setting.
        .env("_RJEM_MALLOC_CONF", "stats_print:true,stats_print_opts:J")
        .output()
        .expect("the binary runs");
    assert!(output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let start = stderr
        .find('{')
        .unwrap_or_else(|| panic!("no jemalloc statistics (not jemalloc?):\n{stderr}"));
    let stats: serde_json::Value =
        serde_json::from_str(stderr[start..].trim()).expect("jemalloc's statistics are JSON");
    let opt = &stats["jemalloc"]["opt"];
    assert_eq!(opt["background_thread"], false, "{opt}");
    assert_eq!(opt["dirty_decay_ms"], 100, "{opt}");
}
