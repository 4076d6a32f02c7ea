//! The simulator waits as long as the client it talks to may take to
//! recover. The run of issue 17, the real `sim` with zombies against the
//! real `connect` on its default flags: `connect` finds a silent socket
//! only at its first ping (15 s after the socket opened) plus the pong
//! timeout (10 s), after the simulator's old fixed 20 s wait had ended, and
//! the run was failed as "not recovered" while the fault table called the
//! same zombies "not observed". With the wait derived from `connect`'s
//! defaults the run is verified and every zombie survived.
//!
//! The run streams for two seconds (duration mode: a zombie's team does
//! not hold the stream open until it is back), so every zombie strikes
//! before the first ping and is found 25 s in, always after the old wait.
//! The test takes about that long, almost all of it idle.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use switchboard::sim::{Fault, Scenario, Verdict};

/// Kills a child process when the test ends, however it ends.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// How long the teams stream.
const STREAM: Duration = Duration::from_secs(2);

#[test]
fn a_zombie_that_connect_finds_on_its_default_timings_is_survived_not_blamed() {
    let bin = env!("CARGO_BIN_EXE_switchboard");
    let mut sim = Command::new(bin)
        .args(["sim", "--listen", "127.0.0.1:0", "--verdict", "json"])
        .args(["--teams", "60", "--rate", "100", "--duration"])
        .arg(humantime::format_duration(STREAM).to_string())
        .args(["--join-over", "100ms", "--chaos", "0", "--leave", "0"])
        .args(["--fault", "zombie=5", "--supervised"])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the simulator starts");
    let stdout = sim.stdout.take().expect("piped");
    let sim = Reaped(sim);
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let first = lines
        .recv_timeout(Duration::from_secs(30))
        .expect("the simulator names its URL");
    let url = first
        .strip_prefix("simulator listening: ")
        .expect("the first line names the URL")
        .trim()
        .to_owned();

    let client = Reaped(
        Command::new(bin)
            .args([
                "connect",
                &url,
                "--state",
                "none",
                "--status-interval",
                "0s",
            ])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the client starts"),
    );

    // The simulator's own bound on the run, and a little more.
    let bound = Scenario::default().max_duration + STREAM;
    let deadline = Instant::now() + bound + Duration::from_secs(30);
    let verdict: Verdict = loop {
        let wait = deadline.saturating_duration_since(Instant::now());
        let line = lines.recv_timeout(wait).expect("a verdict in time");
        if line.starts_with('{') {
            break serde_json::from_str(&line).expect("a readable verdict");
        }
    };
    drop((client, sim));

    eprintln!("{verdict}");
    let zombies = verdict.fault(Fault::Zombie);
    assert!(zombies.injected > 0, "no zombie injected: {verdict}");
    assert!(verdict.verified, "{verdict}");
    assert_eq!(zombies.survived, zombies.injected, "{verdict}");
}
