//! The soak, short: the real binary in duration mode (simulator in a child
//! process, every fault kind on), its report's fields, its verdict; the
//! simulator child gone when the demo ends, or is killed; bad scenarios
//! refused with one line and exit 2.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Every wait in this file is bounded by this.
const DEADLINE: Duration = Duration::from_secs(60);

fn switchboard() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_switchboard"));
    command.env("RUST_LOG", "warn");
    command
}

/// Whether process `pid` has ended (gone, or a zombie nobody reaped yet).
fn ended(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/status")) {
        Err(_) => true,
        Ok(status) => status
            .lines()
            .any(|l| l.starts_with("State:") && l.contains('Z')),
    }
}

fn wait_until_ended(pid: u32) {
    let started = Instant::now();
    while !ended(pid) {
        assert!(started.elapsed() < DEADLINE, "process {pid} still running");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The pid in "... process N ..." on `line`.
fn pid_in(line: &str) -> Option<u32> {
    let rest = &line[line.find("process ")? + "process ".len()..];
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Runs the demo in duration mode with `args`, bounded by [`DEADLINE`];
/// asserts it succeeded and returns its pid and standard output.
fn soak(args: &[&str]) -> (u32, String) {
    let (pid, status, stdout) = run_soak(args);
    assert!(status.success(), "exit {status}:\n{stdout}");
    (pid, stdout)
}

/// Runs the demo in duration mode with `args`, bounded by [`DEADLINE`]:
/// its pid, exit status and standard output.
fn run_soak(args: &[&str]) -> (u32, std::process::ExitStatus, String) {
    let child = switchboard()
        .arg("demo")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("binary starts");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    let output = rx
        .recv_timeout(DEADLINE)
        .expect("the demo ends")
        .expect("output");
    let stdout = String::from_utf8(output.stdout).expect("utf-8");
    (pid, output.status, stdout)
}

#[test]
fn a_short_soak_reports_every_figure_and_verifies() {
    let (demo, stdout) = soak(&[
        "--teams",
        "12",
        "--rate",
        "20",
        "--duration",
        "3s",
        "--chaos",
        "all",
        "--sim-seed",
        "5",
    ]);
    let report = stdout
        .split_once("soak report:")
        .map(|(_, r)| r)
        .unwrap_or_else(|| panic!("no soak report in:\n{stdout}"));
    let value = |key: &str| -> &str {
        report
            .lines()
            .find_map(|l| l.trim_start().strip_prefix(key))
            .map(str::trim)
            .unwrap_or_else(|| panic!("{key} missing from:\n{report}"))
    };
    let number = |text: &str| -> u64 {
        let digits: String = text
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == ',')
            .filter(char::is_ascii_digit)
            .collect();
        digits
            .parse()
            .unwrap_or_else(|_| panic!("no number in {text:?}"))
    };
    assert!(number(value("messages delivered:")) > 0);
    assert!(value("faults:").contains("injected"));
    number(value("client reconnects:"));
    assert!(value("longest disconnect:").ends_with(')') || value("longest disconnect:") == "none");
    assert!(value("client RSS at 1s 500ms:").ends_with("MiB"));
    assert!(value("client RSS at end:").contains("after warm-up"));
    assert!(value("client RSS max since 1s 500ms:").ends_with("MiB"));
    assert!(number(value("descriptors open at end:")) > 0);
    assert!(report.contains("\nverified: 12 teams"), "{report}");
    assert!(report.contains("not observed"), "{report}");
    let sim = pid_in(report).expect("the simulator's pid");
    assert_ne!(sim, demo);
    wait_until_ended(sim);
}

#[test]
fn a_killed_demo_takes_its_simulator_down() {
    let mut demo = switchboard()
        .args(["demo", "--teams", "3", "--duration", "60s"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("binary starts");
    let stderr = demo.stderr.take().expect("stderr");
    let sim = BufReader::new(stderr)
        .lines()
        .map_while(Result::ok)
        .find_map(|line| {
            line.contains("child process")
                .then(|| pid_in(&line))
                .flatten()
        })
        .expect("the demo names its simulator process");
    assert!(!ended(sim), "simulator running");
    demo.kill().expect("kill");
    demo.wait().expect("reaped");
    wait_until_ended(sim);
}

#[test]
fn empty_and_impossible_scenarios_are_refused_with_one_line() {
    for args in [
        vec!["--teams", "0"],
        vec!["--messages", "18446744073709551615", "--rate", "0.000001"],
        vec!["--rate", "NaN"],
        vec!["--props", "1.5"],
        vec!["--duration", "10m", "--max-duration", "5m"],
    ] {
        let output = switchboard()
            .arg("demo")
            .args(&args)
            .output()
            .expect("binary runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("error: "), "{args:?}: {stderr}");
        assert!(output.stdout.is_empty(), "{args:?}");
    }
}

/// The README's claim that RSS stays flat under churn, asserted: a soak
/// with every fault kind at eight times its rate over 300 teams, whose
/// client RSS at the end is within 10% of its RSS at warm-up (half the
/// run), with reconnects seen. Memory is the claim here, so the soak needs
/// to end with its report, not verified: on a loaded machine, counts under
/// this much chaos are another test's business (the verdict is printed).
#[test]
fn rss_stays_within_ten_percent_of_its_warm_size_under_churn() {
    // Eight times the default fault rates: ~400 reconnects, half of them
    // after warm-up.
    let (_, status, stdout) = run_soak(&[
        "--teams",
        "300",
        "--rate",
        "20",
        "--duration",
        "16s",
        "--chaos",
        "8",
        "--sim-seed",
        "5",
    ]);
    assert!(
        status.code() == Some(0) || stdout.contains("NOT verified"),
        "exit {status} without a verdict:\n{stdout}"
    );
    if !status.success() {
        eprintln!("{stdout}");
    }
    let line = |key: &str| -> &str {
        stdout
            .lines()
            .find_map(|l| l.trim_start().strip_prefix(key))
            .map(str::trim)
            .unwrap_or_else(|| panic!("{key} missing from:\n{stdout}"))
    };
    let reconnects: u64 = line("client reconnects:")
        .replace(',', "")
        .parse()
        .expect("a count");
    assert!(reconnects > 0, "no churn to measure:\n{stdout}");
    // "31.5 MiB (+0.1 MiB, +0.4% after warm-up)"
    let end = line("client RSS at end:");
    eprintln!("client RSS at end: {end}; {reconnects} reconnects; exit {status}");
    let growth: f64 = end
        .split_once(", ")
        .and_then(|(_, rest)| rest.split_once('%'))
        .and_then(|(pct, _)| pct.trim_start_matches('+').parse().ok())
        .unwrap_or_else(|| panic!("no growth figure in {end:?}"));
    assert!(
        growth <= 10.0,
        "RSS grew {growth}% after warm-up under churn ({reconnects} reconnects):\n{stdout}"
    );
}
