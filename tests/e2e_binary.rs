//! The brief's whole flow against the real `switchboard` binary, over
//! loopback, with a server written here: hello → team.join → team.connect →
//! team socket (from an http:// ws_url) → hello → messages → ping/pong →
//! healthcheck checked field by field → team.left → client closes →
//! goodbye → the process exits 0 and prints its report.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchboard::testkit::server::{DEADLINE, Server};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_brief_full_flow_against_the_binary() {
    let mut server = Server::bind().await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["connect", &server.url("/global")])
        .args(["--ping-interval", "200ms", "--pong-timeout", "5s"])
        .args(["--status-interval", "0s", "--report", "json"])
        .args(["--state", "none"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("binary starts");

    let mut global = server.accept().await;
    assert_eq!(global.path, "/global");
    global.send(json!({"type": "hello"}));
    global.send(json!({"type": "team.join", "team_id": 1}));
    assert_eq!(
        global.expect("team.connect").await,
        json!({"type": "team.connect", "team_id": 1})
    );
    let ws_url = format!("http://{}/connect/to/team", server.addr);
    global.send(json!({"type": "team.connect", "team_id": 1, "ws_url": ws_url}));

    let mut team = server.accept().await;
    assert_eq!(team.path, "/connect/to/team");
    team.send(json!({"type": "hello"}));
    for text in ["hi", "props to you", "no", "more props", "bye"] {
        team.send(json!({"type": "message", "text": text}));
    }
    let ping = team.expect("ping").await;
    assert!(ping["unique_id"].is_u64(), "{ping}");
    team.send(json!({"type": "pong", "unique_id": ping["unique_id"]}));

    // The messages travel on another socket than the healthcheck: ask until
    // they have all been counted (deadline-bounded), then check every field.
    let started = Instant::now();
    let reply = loop {
        global.send(json!({"type": "healthcheck"}));
        let reply = global.expect("healthcheck").await;
        if reply["stats"][0]["message_count"] == 5 || started.elapsed() > DEADLINE {
            break reply;
        }
    };
    assert_eq!(
        reply,
        json!({"type": "healthcheck", "stats": [
            {"id": 1, "connected": true, "message_count": 5, "props_count": 2}
        ]})
    );

    team.send(json!({"type": "team.left", "team_id": 1}));
    assert_eq!(
        team.closed_by_client().await,
        Some(1000),
        "client closes normally"
    );
    global.send(json!({"type": "goodbye"}));
    assert_eq!(global.closed_by_client().await, Some(1000));

    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(started.elapsed() < DEADLINE * 2, "binary did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "exit status {status}");
    let output = child.wait_with_output().expect("output");
    let report: Value = serde_json::from_slice(&output.stdout).expect("JSON report");
    assert_eq!(report["messages"], 5);
    assert_eq!(report["props"], 2);
    assert_eq!(report["teams"][0]["id"], 1);
    assert_eq!(report["teams"][0]["state"], "left");
    assert!(report["teams"][0]["rtt_ms"].is_u64());
}

#[test]
fn a_foreign_state_file_stops_the_start_with_one_line_and_is_left_alone() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("not-a-state-file");
    std::fs::write(&path, b"hello, I am somebody's notes\n").expect("write");
    let output = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["connect", "ws://127.0.0.1:9/global", "--state"])
        .arg(&path)
        .output()
        .expect("binary runs");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].contains(&*path.to_string_lossy()), "{stderr}");
    assert_eq!(
        std::fs::read(&path).expect("read"),
        b"hello, I am somebody's notes\n",
        "untouched"
    );
}

/// Credentials in URLs never leave the process: a Global URL with a
/// password and a token, and a team URL the client refuses (a malformed
/// one, with both), appear in no log line and no report, masked instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_in_urls_appear_in_no_log_and_no_report() {
    let mut server = Server::bind().await;
    let global_url = format!(
        "ws://bot:globalpass@{}/global?token=GLOBALTOKEN",
        server.addr
    );
    let child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["connect", &global_url])
        .args(["--status-interval", "0s", "--report", "json"])
        .args(["--state", "none"])
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("binary starts");

    let mut global = server.accept().await;
    global.send(json!({"type": "hello"}));
    global.send(json!({"type": "team.join", "team_id": 1}));
    global.expect("team.connect").await;
    // Whitespace makes it malformed: refused, kept as the team's last
    // error, logged at WARN, and asked for again.
    let ws_url = format!("ws://user:teampass@{}/t?token=TEAMTOKEN x", server.addr);
    global.send(json!({"type": "team.connect", "team_id": 1, "ws_url": ws_url}));
    global.expect("team.connect").await;
    global.send(json!({"type": "goodbye"}));
    assert_eq!(global.closed_by_client().await, Some(1000));

    // Bounded: a binary that never exits is killed and fails the test.
    let pid = child.id().to_string();
    let output = tokio::time::timeout(
        DEADLINE,
        tokio::task::spawn_blocking(move || child.wait_with_output()),
    )
    .await
    .unwrap_or_else(|_| {
        let _ = Command::new("kill").args(["-9", &pid]).status();
        panic!("the binary did not exit within {DEADLINE:?} of goodbye")
    })
    .expect("join")
    .expect("output");
    assert!(output.status.success(), "exit status {}", output.status);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let report: Value = serde_json::from_str(&stdout).expect("JSON report");
    assert_eq!(report["teams"][0]["id"], 1);
    let logged = |what: &str| {
        stderr
            .lines()
            .any(|l| l.contains(what) && l.contains("token=***"))
    };
    assert!(logged("starting"), "the start is logged, masked: {stderr}");
    assert!(
        logged("unusable ws_url"),
        "the refusal is logged, masked: {stderr}"
    );
    for secret in ["globalpass", "GLOBALTOKEN", "teampass", "TEAMTOKEN"] {
        assert!(!stdout.contains(secret), "{secret} in the report: {stdout}");
        assert!(!stderr.contains(secret), "{secret} in the logs: {stderr}");
    }
}

/// A duration past any sane timer (here, one that overflows the clock) is
/// refused on the command line with one line and exit 2, for every
/// duration flag of `connect`; it once reached a socket task and panicked
/// it. (`--give-up-after 2s`: a build that took it would exit 1, not hang.)
#[test]
fn every_duration_flag_refuses_an_absurd_value_with_one_line() {
    for flag in [
        "--tick",
        "--ping-interval",
        "--pong-timeout",
        "--backoff-min",
        "--backoff-max",
        "--connect-timeout",
        "--request-timeout",
        "--close-timeout",
        "--status-interval",
        "--state-interval",
        "--give-up-after",
    ] {
        let mut args = vec!["connect", "ws://127.0.0.1:9/global", "--state", "none"];
        if flag != "--give-up-after" {
            args.extend(["--give-up-after", "2s"]);
        }
        args.extend([flag, "18446744073709551615s"]);
        let output = Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .args(&args)
            .env("RUST_LOG", "error")
            .output()
            .expect("binary runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{flag}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{flag}: {stderr}");
        assert!(stderr.contains(flag), "{flag}: {stderr}");
        assert!(stderr.contains("at most"), "{flag}: {stderr}");
    }
}
