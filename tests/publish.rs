//! `--publish` against a real NATS JetStream server (`nats-server -js`):
//! every message a team socket read lands in the stream exactly once, in
//! the team's order, beside the team's lifecycle; when NATS dies mid-run
//! the buffer fills to its bound, the team sockets stop reading, and once
//! NATS is back everything goes through with nothing lost or doubled and
//! the simulator's verdict exact. Then two copies of `examples/worker.rs`
//! in one durable consumer split the stream between them. And against a
//! scripted server, whose history is known record by record, the stream
//! holds exactly that history: every lifecycle event once and in order,
//! every message once, in order, on the socket it was written to.

mod common;
mod publish {
    pub mod history;
    pub mod nats;
}

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::script::{answer_connect, join_team};
use publish::history::History;
use publish::nats::{Nats, Stored, read_stream};
use serde_json::{Value, json};
use switchboard::testkit::server::{Conn, Server};

const DEADLINE: Duration = Duration::from_secs(120);

/// Starts `command` with stdout and stderr piped; a thread reads stderr
/// and hands over what `keep` makes of each line.
fn spawn_reading_stderr(
    command: &mut Command,
    keep: impl Fn(String) -> Option<String> + Send + 'static,
) -> (Child, std::sync::mpsc::Receiver<String>) {
    let mut child = command
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let stderr = child.stderr.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(kept) = keep(line) {
                let _ = tx.send(kept);
            }
        }
    });
    (child, rx)
}

/// The demo, publishing to `url`, with `args`; its stderr is read on a
/// thread that hands over the status page URL.
fn demo(url: &str, args: &[&str]) -> (Child, std::sync::mpsc::Receiver<String>) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_switchboard"));
    command
        .args([
            "demo",
            "--publish",
            url,
            "--report",
            "json",
            "--status-interval",
            "0s",
        ])
        .args(args);
    spawn_reading_stderr(&mut command, |line| {
        if let Some(url) = line.strip_prefix("status page: ") {
            return Some(url.trim_end_matches('/').to_owned());
        }
        (line.starts_with("publish:") || line.starts_with("error")).then_some(line)
    })
}

/// Waits for the demo to end; returns its exit success, report and verdict line.
fn finish(child: Child) -> (bool, Value, String) {
    let (ok, out) = wait_out(child, "the demo");
    let mut values = serde_json::Deserializer::from_str(&out).into_iter::<Value>();
    let report = values.next().expect("a report").expect("JSON report");
    let verdict = out
        .lines()
        .find(|l| l.contains("verified"))
        .unwrap_or_default()
        .to_owned();
    (ok, report, verdict)
}

/// One sample of `/metrics`: name (with labels) → value.
fn metrics(base: &str) -> BTreeMap<String, f64> {
    let body = http_get(&format!("{base}/metrics"));
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// A plain HTTP/1.0 GET over a TCP socket (the test needs nothing more).
fn http_get(url: &str) -> String {
    use std::io::Write;
    let rest = url.strip_prefix("http://").expect("http URL");
    let (host, path) = rest.split_once('/').map_or((rest, "/"), |(h, p)| (h, p));
    let mut socket = std::net::TcpStream::connect(host).expect("HTTP server up");
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        socket,
        "GET /{} HTTP/1.0\r\nHost: {host}\r\n\r\n",
        path.trim_start_matches('/')
    )
    .expect("request");
    let mut response = String::new();
    socket.read_to_string(&mut response).expect("response");
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default()
}

/// Polls `/metrics` until `ready` holds, within the deadline.
fn poll_metrics(base: &str, what: &str, ready: impl Fn(&BTreeMap<String, f64>) -> bool) {
    let started = Instant::now();
    loop {
        let m = metrics(base);
        if ready(&m) {
            return;
        }
        assert!(started.elapsed() < DEADLINE, "{what}: {m:#?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn get(m: &BTreeMap<String, f64>, name: &str) -> f64 {
    m.get(name).copied().unwrap_or(0.0)
}

/// The stream holds, for every team in `report`, each of its messages once
/// and in order (seq 1..=n), and its lifecycle; no message id twice.
fn assert_stream_matches(stored: &[Stored], report: &Value) {
    let ids: BTreeSet<&str> = stored.iter().map(|s| s.msg_id.as_str()).collect();
    assert_eq!(ids.len(), stored.len(), "a message id stored twice");
    let teams = report["teams"].as_array().expect("teams");
    assert!(!teams.is_empty());
    for team in teams {
        let id = team["id"].as_u64().expect("id");
        let counted = team["messages"].as_u64().expect("messages");
        let subject = format!("switchboard.teams.{id}.message");
        let seqs: Vec<u64> = stored
            .iter()
            .filter(|s| s.subject == subject)
            .map(|s| s.payload["seq"].as_u64().expect("seq"))
            .collect();
        let want: Vec<u64> = (1..=counted).collect();
        assert_eq!(
            seqs, want,
            "team {id}: every counted message once, in order"
        );
        let joined = format!("switchboard.teams.{id}.joined");
        assert_eq!(
            stored.iter().filter(|s| s.subject == joined).count(),
            1,
            "team {id} joined once"
        );
        let connected = format!("switchboard.teams.{id}.connected");
        assert!(
            stored.iter().any(|s| s.subject == connected),
            "team {id} connected"
        );
        assert_lifecycle(stored, id, team);
    }
}

/// A team's lifecycle records, in stream order, follow its link's history:
/// joined first; connected only from joined or dropped; dropped only from
/// connected, once for every reconnect the report counts; the run ends
/// with stopped, or left for a team that left (a left team is not stopped).
fn assert_lifecycle(stored: &[Stored], id: u64, team: &Value) {
    let prefix = format!("switchboard.teams.{id}.");
    let kinds: Vec<&str> = stored
        .iter()
        .filter_map(|s| s.subject.strip_prefix(&prefix))
        .filter(|kind| *kind != "message")
        .collect();
    let mut previous: Option<&str> = None;
    for &kind in &kinds {
        let allowed = matches!(
            (previous, kind),
            (None | Some("left"), "joined")
                | (Some("joined" | "dropped"), "connected")
                | (Some("connected"), "dropped")
                | (Some("joined" | "connected" | "dropped"), "left" | "stopped")
        );
        assert!(allowed, "team {id}: {kind} after {previous:?} in {kinds:?}");
        previous = Some(kind);
    }
    assert!(
        matches!(previous, Some("stopped" | "left")),
        "team {id} ends stopped, or left: {kinds:?}"
    );
    let dropped = kinds.iter().filter(|k| **k == "dropped").count() as u64;
    assert_eq!(
        Some(dropped),
        team["reconnects"].as_u64(),
        "team {id}: one dropped per reconnect counted: {kinds:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_counted_message_is_stored_once_in_order_through_chaos() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = Nats::start(dir.path(), 0);
    let (child, _lines) = demo(
        &nats.url(),
        &[
            "--teams",
            "12",
            "--chaos",
            "2",
            "--sim-seed",
            "7",
            "--http",
            "none",
        ],
    );
    let (ok, report, verdict) = tokio::task::spawn_blocking(move || finish(child))
        .await
        .expect("join");
    assert!(ok, "{verdict}");
    assert!(verdict.starts_with("verified"), "{verdict}");
    let stored = read_stream(&nats.url(), "SWITCHBOARD").await;
    assert_stream_matches(&stored, &report);
    let messages = stored
        .iter()
        .filter(|s| s.subject.ends_with(".message"))
        .count();
    assert_eq!(messages as u64, report["messages"].as_u64().expect("total"));
    // A message record carries what a worker needs.
    let first = stored
        .iter()
        .find(|s| s.subject.ends_with(".message"))
        .expect("a message");
    for field in ["run", "team_id", "seq", "text", "received_at"] {
        assert!(
            !first.payload[field].is_null(),
            "{field} in {}",
            first.payload
        );
    }
    // Two workers in one durable consumer split the stream: every message
    // processed and acknowledged once between them.
    let url = nats.url();
    let (a, b) = tokio::task::spawn_blocking(move || {
        let a = worker(&url, "a");
        let b = worker(&url, "b");
        (collect(a), collect(b))
    })
    .await
    .expect("join");
    for team in report["teams"].as_array().expect("teams") {
        let id = team["id"].as_u64().expect("id").to_string();
        let seen =
            a["per_team"][&id].as_u64().unwrap_or(0) + b["per_team"][&id].as_u64().unwrap_or(0);
        assert_eq!(Some(seen), team["messages"].as_u64(), "team {id}: {a} {b}");
    }
    // Each record went to exactly one worker, both took a share, and
    // together they took the stream: the ids, not only the sums, agree.
    let ids = |w: &Value| -> Vec<String> {
        w["ids"]
            .as_array()
            .expect("ids reported")
            .iter()
            .map(|id| id.as_str().expect("id").to_owned())
            .collect()
    };
    let (ids_a, ids_b) = (ids(&a), ids(&b));
    assert!(
        !ids_a.is_empty() && !ids_b.is_empty(),
        "both workers took a share: {} and {}",
        ids_a.len(),
        ids_b.len()
    );
    let mut taken: Vec<&String> = ids_a.iter().chain(&ids_b).collect();
    taken.sort();
    let before = taken.len();
    taken.dedup();
    assert_eq!(taken.len(), before, "a record processed twice");
    let mut stored_ids: Vec<&String> = stored.iter().map(|s| &s.msg_id).collect();
    stored_ids.sort();
    assert_eq!(taken, stored_ids, "the workers took exactly the stream");
    eprintln!(
        "worker a: {} messages, worker b: {}",
        a["messages"], b["messages"]
    );
}

/// `examples/worker.rs` (built by `cargo test`), in the shared durable
/// consumer, exiting once idle.
fn worker(url: &str, name: &str) -> Child {
    let exe = std::env::current_exe().expect("test binary");
    let examples = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir")
        .join("examples")
        .join("worker");
    Command::new(&examples)
        .args([
            "--nats",
            url,
            "--name",
            name,
            "--batch",
            "16",
            "--exit-when-idle",
            "2s",
            "--report-ids",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", examples.display()))
}

/// A worker's closing JSON line; the worker must end within [`DEADLINE`].
fn collect(child: Child) -> Value {
    let (ok, out) = wait_out(child, "a worker");
    assert!(ok, "worker failed: {out}");
    serde_json::from_str(&out).expect("worker JSON")
}

/// Waits for `child` to end, at most [`DEADLINE`] (killed and failed
/// after it); its exit success and stdout. Its stdout must fit a pipe's
/// buffer: it is read once the child has ended.
fn wait_out(mut child: Child, what: &str) -> (bool, String) {
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not end within {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut out = String::new();
    child
        .stdout
        .take()
        .expect("piped")
        .read_to_string(&mut out)
        .expect("stdout");
    (status.success(), out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_dying_mid_run_pauses_the_sockets_within_the_buffer_and_loses_nothing() {
    const BUDGET: f64 = 2048.0;
    const TEAMS: f64 = 8.0;
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = Nats::start(dir.path(), 0);
    let url = nats.url();
    let (child, lines) = demo(
        &url,
        &[
            "--teams",
            "8",
            "--messages",
            "300",
            "--chaos",
            "0",
            "--leave",
            "0",
            "--publish-buffer",
            "2KiB",
            "--publish-drain-timeout",
            "60s",
            "--publish-ack-timeout",
            "500ms",
            "--http",
            "127.0.0.1:0",
        ],
    );
    let base = lines.recv_timeout(DEADLINE).expect("status page URL");
    let (base, nats) = tokio::task::spawn_blocking(move || {
        poll_metrics(&base, "some records stored", |m| {
            get(m, "switchboard_publish_acknowledged_total{how=\"stored\"}") >= 50.0
        });
        let exposition = http_get(&format!("{base}/metrics"));
        assert!(exposition.contains("switchboard_publish_buffer_used_bytes"));
        common::promtool::assert_promtool_accepts(&exposition);
        let port = nats.kill();
        // NATS is gone: the buffer fills to its bound and reading stops.
        poll_metrics(&base, "the buffer fills", |m| {
            get(m, "switchboard_publish_buffer_used_bytes") >= BUDGET - 64.0
        });
        for _ in 0..20 {
            let m = metrics(&base);
            let counted = get(&m, "switchboard_messages_total");
            let taken = get(&m, "switchboard_publish_taken_total{kind=\"message\"}");
            // The tap takes every counted message but at most one held per
            // socket; nothing is read beyond that.
            assert!(counted - taken <= TEAMS, "counted {counted}, taken {taken}");
            assert!(get(&m, "switchboard_publish_buffer_used_bytes") <= BUDGET);
            assert!(counted < 8.0 * 300.0, "paused before the end: {counted}");
            std::thread::sleep(Duration::from_millis(25));
        }
        // The publishes NATS took no answer for are retried, with the
        // same message ids, until it is back.
        poll_metrics(&base, "a publish times out", |m| {
            get(m, "switchboard_publish_failed_attempts_total") >= 1.0
        });
        (base, port)
    })
    .await
    .expect("join");
    drop(base);
    let nats = Nats::start(dir.path(), nats);
    let (ok, report, verdict) = tokio::task::spawn_blocking(move || finish(child))
        .await
        .expect("join");
    let publish_line: Vec<String> = lines.try_iter().collect();
    eprintln!("{publish_line:?}");
    assert!(ok, "{verdict} {publish_line:?}");
    assert!(verdict.starts_with("verified"), "{verdict}");
    assert_eq!(report["messages"].as_u64(), Some(8 * 300));
    let stored = read_stream(&nats.url(), "SWITCHBOARD").await;
    assert_stream_matches(&stored, &report);
}

/// The binary's `connect`, publishing to `nats`, against the scripted
/// `global` URL; stderr is drained on a thread (kept for failures).
fn connect(global: &str, nats: &str) -> (Child, std::sync::mpsc::Receiver<String>) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_switchboard"));
    command
        .args(["connect", global, "--publish", nats, "--state", "none"])
        .args(["--report", "json", "--status-interval", "0s", "--seed", "1"])
        .args(["--backoff-min", "10ms", "--backoff-max", "200ms"]);
    spawn_reading_stderr(&mut command, Some)
}

/// A child killed if the test fails before it is waited for (a `connect`
/// left behind would retry its vanished Global for ever).
struct KillOnDrop(Option<Child>);

impl KillOnDrop {
    fn take(mut self) -> Child {
        self.0.take().expect("taken once")
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Asks for healthchecks on `global` until every team's count is what
/// `history` wrote to it (within the server kit's deadline per reply, and
/// [`DEADLINE`] in all).
async fn counted(global: &mut Conn, history: &History) {
    let started = Instant::now();
    loop {
        global.send(json!({"type": "healthcheck"}));
        let reply = global.expect("healthcheck").await;
        let stats = reply["stats"].as_array().cloned().unwrap_or_default();
        let count = |team: u64| {
            stats
                .iter()
                .find(|s| s["id"] == team)
                .and_then(|s| s["message_count"].as_u64())
        };
        if history
            .teams()
            .all(|t| count(t) == Some(history.written(t)))
        {
            return;
        }
        assert!(started.elapsed() < DEADLINE, "never counted: {reply}");
    }
}

/// Writes each of `texts` as a message on `team`'s socket `conn`, noting it.
fn write(history: &mut History, team: u64, conn: &Conn, texts: &[&str]) {
    for text in texts {
        conn.send(json!({"type": "message", "text": text}));
        history.wrote(team, text);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_holds_exactly_the_scripted_history() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = Nats::start(dir.path(), 0);
    let mut server = Server::bind().await;
    let (child, stderr) = connect(&server.url("/global"), &nats.url());
    let child = KillOnDrop(Some(child));
    let mut history = History::default();
    let mut global = server.accept().await;
    global.send(json!({"type": "hello"}));
    let mut sockets = BTreeMap::new();
    for team in 1..=3 {
        sockets.insert(team, join_team(&mut server, &mut global, team).await);
        history.event(team, "joined");
        history.event(team, "connected");
    }
    write(&mut history, 1, &sockets[&1], &["a1", "props a2", "a3"]);
    write(&mut history, 2, &sockets[&2], &["b1", "b2 props"]);
    write(&mut history, 3, &sockets[&3], &["c1"]);
    // A duplicate join while joined changes nothing.
    global.send(json!({"type": "team.join", "team_id": 3}));
    counted(&mut global, &history).await;

    // Team 1: the server closes its socket; it is dropped and reconnected.
    sockets[&1].close(1001);
    history.event(1, "dropped");
    sockets.insert(1, answer_connect(&mut server, &mut global, 1).await);
    history.event(1, "connected");
    write(&mut history, 1, &sockets[&1], &["a4", "props a5"]);
    // Team 3: reset without a close frame; dropped and reconnected.
    sockets[&3].reset();
    history.event(3, "dropped");
    sockets.insert(3, answer_connect(&mut server, &mut global, 3).await);
    history.event(3, "connected");
    write(&mut history, 3, &sockets[&3], &["c2"]);
    // Team 2: leaves (the client closes its socket), then joins again.
    global.send(json!({"type": "team.left", "team_id": 2}));
    history.event(2, "left");
    let mut left = sockets.remove(&2).expect("team 2");
    assert_eq!(left.closed_by_client().await, Some(1000), "team 2 closed");
    sockets.insert(2, join_team(&mut server, &mut global, 2).await);
    history.event(2, "joined");
    history.event(2, "connected");
    write(&mut history, 2, &sockets[&2], &["b3"]);
    counted(&mut global, &history).await;

    global.send(json!({"type": "goodbye"}));
    history.goodbye();
    let (ok, out) = tokio::task::spawn_blocking(move || wait_out(child.take(), "connect"))
        .await
        .expect("join");
    let log: Vec<String> = stderr.try_iter().collect();
    assert!(ok, "connect failed: {out} {log:#?}");
    let report: Value = serde_json::Deserializer::from_str(&out)
        .into_iter()
        .next()
        .expect("a report")
        .expect("JSON report");
    for team in report["teams"].as_array().expect("teams") {
        let id = team["id"].as_u64().expect("id");
        assert_eq!(
            team["messages"].as_u64(),
            Some(history.written(id)),
            "{team}"
        );
    }
    let stored = read_stream(&nats.url(), "SWITCHBOARD").await;
    history.assert_stored(&stored);
    drop(sockets);
}
