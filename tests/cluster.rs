//! The cluster as it runs: a real `nats-server -js`, the simulator, and
//! the real binary as cores (`connect --cluster`) and workers (`worker`),
//! killed with SIGKILL and stopped with SIGTERM mid-run. The simulator
//! counts every team's sockets, so "never two sockets for one team" is its
//! `max_sockets_per_team`, checked against its own books.

#[allow(dead_code)]
#[path = "publish/nats.rs"]
mod nats;
#[path = "common/process.rs"]
mod process;
#[path = "common/promtool.rs"]
mod promtool;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use switchboard::Config;
use switchboard::sim::{Chaos, Scenario, Schedule, SimConfig, SimServer, Verdict};

use nats::Nats;

/// The lease every process of these clusters uses.
const LEASE: Duration = Duration::from_secs(3);
const RATE: f64 = 50.0;
const DEADLINE: Duration = Duration::from_secs(60);

/// One cluster at a time: each is a NATS server, a simulator and five or
/// six processes, too much to run side by side on a small CI machine.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The client's timings (the simulator waits for a recovery this slow).
fn timings() -> Config {
    Config {
        ping_interval: Duration::from_secs(1),
        pong_timeout: Duration::from_secs(2),
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(500),
        ..Config::default()
    }
}

/// A worker's teams are back within twice the lease (its fence at half a
/// lease, the leader's expiry at one, the watch's check) plus the backoff
/// and a re-request.
fn worker_loss_wait() -> Duration {
    LEASE * 2 + timings().backoff_max + Duration::from_secs(2)
}

async fn simulator(teams: u64, messages: u64, chaos: Chaos) -> SimServer {
    SimServer::start(SimConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        scenario: Scenario {
            teams,
            messages,
            rate: RATE,
            leave_fraction: 0.0,
            join_over: Duration::from_millis(500),
            healthcheck_every: Duration::from_millis(500),
            max_duration: Duration::from_secs(120),
            recovery_wait: Scenario::recovery_wait_for(&timings()) + worker_loss_wait() + LEASE,
            ..Scenario::default()
        },
        chaos,
        schedule: Schedule::none(),
        seed: 19,
        tls: false,
    })
    .await
    .expect("simulator binds")
}

/// What every test here starts from: the others finished (hold the guard),
/// a directory, a JetStream NATS in it, and the simulator.
async fn bench(
    teams: u64,
    messages: u64,
    chaos: Chaos,
) -> (
    tokio::sync::MutexGuard<'static, ()>,
    tempfile::TempDir,
    Nats,
    SimServer,
) {
    let one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = Nats::start(&dir.path().join("js"), 0);
    let server = simulator(teams, messages, chaos).await;
    (one, dir, nats, server)
}

/// A process of the cluster, its stderr in a file to search.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, sig: &str) {
        process::signal(self.child.id(), sig);
    }

    /// Waits (deadline-bounded) until its log has `needle`.
    async fn logged(&self, needle: &str) -> Instant {
        let started = Instant::now();
        loop {
            if self.log().contains(needle) {
                return Instant::now();
            }
            assert!(
                started.elapsed() < DEADLINE,
                "never logged {needle:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits (deadline-bounded) for it to exit; its stdout.
    async fn exit(mut self) -> (std::process::ExitStatus, Vec<u8>) {
        let started = Instant::now();
        while self.child.try_wait().expect("wait").is_none() {
            if started.elapsed() > DEADLINE {
                let _ = self.child.kill();
                panic!("did not exit:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut stdout = Vec::new();
        if let Some(mut pipe) = self.child.stdout.take() {
            // The report is small (a line per team): it fits the pipe.
            std::io::Read::read_to_end(&mut pipe, &mut stdout).expect("stdout");
        }
        (self.child.wait().expect("status"), stdout)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(dir: &Path, name: &str, args: &[String]) -> Proc {
    let log = dir.join(format!("{name}.log"));
    let child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(args)
        .env("RUST_LOG", "info,async_nats=warn")
        .env("SWITCHBOARD_LOG_FORMAT", "json")
        .stdout(Stdio::piped())
        .stderr(File::create(&log).expect("log file"))
        .spawn()
        .expect("binary starts");
    Proc { child, log }
}

fn lease() -> String {
    humantime::format_duration(LEASE).to_string()
}

fn worker(dir: &Path, nats: &str, name: &str) -> Proc {
    worker_with(dir, nats, name, &[])
}

/// [`worker`], with more flags.
fn worker_with(dir: &Path, nats: &str, name: &str, extra: &[&str]) -> Proc {
    let mut args: Vec<String> = [
        "worker",
        "--cluster",
        nats,
        "--name",
        name,
        "--lease",
        &lease(),
        "--pong-timeout",
        "2s",
        "--http",
        "127.0.0.1:0",
    ]
    .map(String::from)
    .into();
    args.extend(extra.iter().map(|a| a.to_string()));
    spawn(dir, name, &args)
}

/// Workers a, b and c, each registered: a leader that starts later calls
/// all three. (Started together, one may be slow to make the buckets; a
/// leader that led before it registered never adopts it, and places
/// nothing on it once every team is placed.)
async fn workers(dir: &Path, nats: &str) -> Vec<Proc> {
    let workers: Vec<Proc> = ["a", "b", "c"]
        .iter()
        .map(|n| worker(dir, nats, n))
        .collect();
    for w in &workers {
        w.logged("\"registered\"").await;
    }
    workers
}

/// One core, `core`, with its state file `s.redb`.
fn one_core(dir: &Path, nats: &str, global: &str) -> Proc {
    core(dir, nats, "core", global, &dir.join("s.redb"))
}

/// `core1` leading and `core2` standing by, each waited for; their state
/// files `one` and `two` (one path: as on one machine). The standby
/// records its run (`core2.rec`), to be replayed if it leads.
async fn two_cores(dir: &Path, nats: &str, global: &str, one: &Path, two: &Path) -> (Proc, Proc) {
    let leader = core(dir, nats, "core1", global, one);
    leader.logged("\"leading\"").await;
    let record = dir.join("core2.rec").display().to_string();
    let standby = core_with(dir, nats, "core2", global, two, &["--record", &record]);
    standby
        .logged("standby: waiting for the leader lease")
        .await;
    (leader, standby)
}

fn core(dir: &Path, nats: &str, name: &str, global: &str, state: &Path) -> Proc {
    core_with(dir, nats, name, global, state, &[])
}

/// [`core`], with more flags.
fn core_with(
    dir: &Path,
    nats: &str,
    name: &str,
    global: &str,
    state: &Path,
    extra: &[&str],
) -> Proc {
    let mut args: Vec<String> = ["connect", global, "--cluster", nats, "--lease", &lease()]
        .map(String::from)
        .into();
    args.extend(["--state".into(), state.display().to_string()]);
    args.extend([
        "--report".into(),
        "json".into(),
        "--status-interval".into(),
        "0s".into(),
        "--http".into(),
        "127.0.0.1:0".into(),
    ]);
    args.extend(process::timing_flags(&timings()));
    args.extend(extra.iter().map(|a| a.to_string()));
    spawn(dir, name, &args)
}

async fn verdict(server: SimServer) -> Verdict {
    tokio::time::timeout(Duration::from_secs(150), server.verdict())
        .await
        .expect("verdict in time")
}

async fn written(server: &SimServer, n: u64) {
    process::written(server, n, DEADLINE).await;
}

/// Each team's (messages, props) in a core's JSON report.
fn counts(report: &[u8]) -> BTreeMap<u64, (u64, u64)> {
    let report: Value = serde_json::from_slice(report).expect("a JSON report");
    report["teams"]
        .as_array()
        .expect("teams")
        .iter()
        .map(|t| {
            let n = |k: &str| t[k].as_u64().expect("a count");
            (n("id"), (n("messages"), n("props")))
        })
        .collect()
}

/// Every team short by at most `most` messages (never over): what a run
/// that lost only what was in flight may show. Returns the total short.
fn short_by_at_most(verdict: &Verdict, report: &BTreeMap<u64, (u64, u64)>, most: u64) -> u64 {
    let mut short = 0;
    for truth in &verdict.truth {
        let (got, props) = report.get(&truth.id.0).copied().unwrap_or_default();
        assert!(
            got <= truth.messages && props <= truth.props,
            "team {}: counted {got}/{props}, written {}/{}",
            truth.id,
            truth.messages,
            truth.props
        );
        let gap = truth.messages - got;
        assert!(
            gap <= most,
            "team {}: short by {gap} (at most {most})",
            truth.id
        );
        short += gap;
    }
    short
}

/// A GET on the HTTP server the process logged it serves.
fn http_get(proc: &Proc, path: &str) -> String {
    use std::io::{Read, Write};
    let log = proc.log();
    let url = log
        .lines()
        .find(|l| l.contains("HTTP: metrics"))
        .and_then(|l| serde_json::from_str::<Value>(l).ok())
        .and_then(|l| l["fields"]["url"].as_str().map(str::to_owned))
        .expect("the HTTP server's URL in the log");
    let host = url.trim_start_matches("http://").trim_end_matches('/');
    let mut socket = std::net::TcpStream::connect(host).expect("HTTP up");
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(socket, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").expect("request");
    let mut response = String::new();
    socket.read_to_string(&mut response).expect("response");
    response
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_owned())
}

fn verdict_problems(verdict: &Verdict) -> String {
    verdict.mismatches.join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_cores_and_three_workers_keep_every_count_under_chaos() {
    let (_one, dir, nats, server) = bench(300, 300, Chaos::level(1.0)).await;
    let workers = workers(dir.path(), &nats.url()).await;
    let state = dir.path().join("state.redb");
    let (leader, standby) = two_cores(
        dir.path(),
        &nats.url(),
        &server.global_url(),
        &state,
        &state,
    )
    .await;
    written(&server, 300 * 300 / 2).await;
    // `status` sees the leader, the standby and every worker with teams.
    let shown = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["status", "--cluster", &nats.url()])
        .output()
        .expect("status runs");
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.starts_with("leader   ") && shown.contains("\nstandby  "),
        "{shown}"
    );
    let teams: Vec<usize> = shown
        .lines()
        .filter(|l| l.starts_with("worker "))
        .filter_map(|l| l.split("teams ").nth(1)?.split(' ').next()?.parse().ok())
        .collect();
    assert!(teams.len() == 3 && teams.iter().all(|&n| n > 0), "{shown}");
    // The leader's /workers and /metrics agree on three workers with teams.
    let shown: Value = serde_json::from_str(&http_get(&leader, "/workers")).expect("JSON");
    let listed = shown["workers"].as_array().expect("workers");
    assert_eq!(listed.len(), 3, "{shown}");
    assert!(
        listed.iter().all(|w| w["teams"].as_u64() > Some(0)),
        "{shown}"
    );
    let metrics = http_get(&leader, "/metrics");
    assert!(metrics.contains("switchboard_cluster_epoch "), "{metrics}");
    // The NATS hop was measured, and batches and bytes counted each way.
    for counted in [
        "switchboard_cluster_hop_seconds_count ",
        "switchboard_cluster_event_bytes_total ",
        "switchboard_cluster_command_bytes_total ",
    ] {
        let n: f64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(counted))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {counted}:\n{metrics}"));
        assert!(n > 0.0, "{counted}{n}");
    }
    assert!(
        metrics.contains("switchboard_cluster_role{role=\"leader\"} 1"),
        "{metrics}"
    );
    // Each team's line on /teams names the worker holding it, one of the
    // three, as /workers lists them.
    let names: Vec<&str> = listed.iter().filter_map(|w| w["name"].as_str()).collect();
    let lines: Value = serde_json::from_str(&http_get(&leader, "/teams")).expect("JSON");
    let on_workers = lines
        .as_array()
        .expect("lines")
        .iter()
        .filter(|t| t["worker"].as_str().is_some_and(|w| names.contains(&w)))
        .count();
    assert!(on_workers > 150, "most teams on a named worker:\n{lines}");
    // The standby serves too: alive, not ready, its role and the leader's
    // epoch, and no team numbers.
    let standby_metrics = http_get(&standby, "/metrics");
    assert!(
        standby_metrics.contains("switchboard_cluster_role{role=\"standby\"} 1"),
        "{standby_metrics}"
    );
    assert!(
        standby_metrics.contains("switchboard_cluster_leader_epoch "),
        "{standby_metrics}"
    );
    assert!(
        !standby_metrics.contains("switchboard_teams"),
        "{standby_metrics}"
    );
    promtool::assert_promtool_accepts(&standby_metrics);
    promtool::assert_promtool_accepts(&metrics);
    let health: Value = serde_json::from_str(&http_get(&standby, "/healthz")).expect("JSON");
    assert_eq!(health["role"], "standby", "{health}");
    let ready: Value = serde_json::from_str(&http_get(&standby, "/readyz")).expect("JSON");
    assert_eq!(ready["ready"], false, "{ready}");
    // Each worker's own /metrics and /healthz.
    for w in &workers {
        let metrics = http_get(w, "/metrics");
        let sockets: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix("switchboard_worker_sockets "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no socket gauge:\n{metrics}"));
        assert!(sockets > 0, "{metrics}");
        assert!(
            metrics.contains("switchboard_worker_lease_age_seconds "),
            "{metrics}"
        );
        assert!(
            metrics.contains("switchboard_cluster_role{role=\"worker\"} 1"),
            "{metrics}"
        );
        promtool::assert_promtool_accepts(&metrics);
        let health: Value = serde_json::from_str(&http_get(w, "/healthz")).expect("JSON");
        assert_eq!(health["ok"], true, "{health}");
    }
    for family in ["teams", "quiet"] {
        let line = format!("switchboard_cluster_worker_{family}{{");
        assert_eq!(metrics.matches(&line).count(), 3, "{metrics}");
    }
    let verdict = verdict(server).await;
    let (status, _) = leader.exit().await;
    assert!(status.success(), "the leader ends as the run does");
    assert!(verdict.verified, "{}", verdict_problems(&verdict));
    assert_eq!(verdict.max_sockets_per_team, 1);
    assert!(verdict.injected() > 0, "chaos injected nothing");
    // The run ended with goodbye: the standby ends too, without leading
    // (it would have reconnected to a Global that said goodbye).
    let log = standby.log.clone();
    let (status, _) = standby.exit().await;
    let log = std::fs::read_to_string(log).unwrap_or_default();
    assert!(status.success(), "{log}");
    assert!(log.contains("this standby ends too"), "{log}");
    assert!(!log.contains("\"leading\""), "the standby led: {log}");
    for w in &workers {
        assert!(
            w.log().contains("a new leader adopts this worker"),
            "worker never commanded:\n{}",
            w.log()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_s_teams_come_back_on_the_others_and_never_twice() {
    let (teams, messages) = (150, 500);
    let (_one, dir, nats, server) = bench(teams, messages, Chaos::none()).await;
    let workers = workers(dir.path(), &nats.url()).await;
    let leader = one_core(dir.path(), &nats.url(), &server.global_url());
    written(&server, teams * messages / 4).await;
    workers[1].signal("-KILL");
    let killed = Instant::now();
    let moved = leader.logged("closing a lost worker's sockets").await;
    let verdict = verdict(server).await;
    let (_, report) = leader.exit().await;
    assert_eq!(verdict.max_sockets_per_team, 1, "two sockets for a team");
    assert!(
        moved - killed <= LEASE * 2,
        "declared lost {:?} after the kill",
        moved - killed
    );
    let outage = verdict
        .longest_disconnect
        .expect("the lost worker's teams were without a socket");
    assert!(
        !outage.unended && outage.length <= worker_loss_wait(),
        "{outage:?}"
    );
    // What the killed worker had read and not yet sent, or not yet read
    // from its kernel's buffers, is lost with it: a tick's worth and the
    // socket buffers, never more than a second of a team's stream.
    let short = short_by_at_most(&verdict, &counts(&report), RATE as u64);
    eprintln!(
        "lost with the killed worker: {short} messages of {}",
        verdict.messages
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standby_leads_within_the_lease_when_the_leader_is_killed() {
    let takeover = leader_change("-KILL").await;
    assert!(
        takeover <= LEASE + Duration::from_secs(1),
        "took over after {takeover:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_to_the_leader_hands_the_lead_over_without_closing_a_socket() {
    leader_change("-TERM").await;
}

/// Two cores, three workers, 150 teams: the leader gets `signal`
/// mid-run, and the standby takes over with every worker's socket (none
/// closed, none twice) and every count exact. How long the standby took
/// to lead.
async fn leader_change(signal: &str) -> Duration {
    let (teams, messages) = (150, 500);
    let (_one, dir, nats, server) = bench(teams, messages, Chaos::none()).await;
    let _workers = workers(dir.path(), &nats.url()).await;
    // Each core its own state file, as on two machines: the standby
    // resumes from the leader's copy in JetStream.
    let one = dir.path().join("1.redb");
    let two = dir.path().join("2.redb");
    let (leader, standby) =
        two_cores(dir.path(), &nats.url(), &server.global_url(), &one, &two).await;
    written(&server, teams * messages / 4).await;
    leader.signal(signal);
    let signalled = Instant::now();
    let led = standby.logged("\"leading\"").await;
    standby.logged("saved teams in the cluster").await;
    let takeover = led - signalled;
    eprintln!("the standby led {takeover:?} after {signal}");
    let adopted = standby.logged("took over the workers' sockets").await;
    eprintln!("adopted {:?} after {signal}", adopted - signalled);
    if signal == "-TERM" {
        // It saved its state and gave the lease up: a clean exit.
        let log = leader.log.clone();
        let (status, _) = leader.exit().await;
        let log = std::fs::read_to_string(log).unwrap_or_default();
        assert!(status.success(), "{log}");
        assert!(log.contains("gave the leader lease up"), "{log}");
    }
    let log = standby.log();
    let verdict = verdict(server).await;
    let (status, report) = standby.exit().await;
    assert!(status.success());
    let line = log
        .lines()
        .find(|l| l.contains("took over the workers' sockets"))
        .and_then(|l| serde_json::from_str::<Value>(l).ok())
        .expect("the adoption logged");
    assert_eq!(line["fields"]["adopted"], teams, "{line}");
    assert_eq!(verdict.max_sockets_per_team, 1, "two sockets for a team");
    // The workers kept every socket: no team was ever without one.
    assert_eq!(
        verdict.longest_disconnect, None,
        "a socket closed by the takeover"
    );
    assert!(verdict.verified, "{}", verdict_problems(&verdict));
    assert_eq!(short_by_at_most(&verdict, &counts(&report), 0), 0);
    // The new leader's flight recording, adoption included, replays to
    // its exact final state.
    let recording = dir.path().join("core2.rec");
    let text = std::fs::read_to_string(&recording).expect("the recording");
    assert!(
        text.lines()
            .next()
            .is_some_and(|h| h.contains("\"adopted\":[")),
        "no adoption recorded"
    );
    replays_exactly(&recording);
    takeover
}

/// `switchboard replay FILE` reaches the live run's final state.
fn replays_exactly(recording: &Path) {
    let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["replay", &recording.display().to_string()])
        .output()
        .expect("replay runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("the final snapshot is the live run's"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_each_worker_s_teams_over_and_loses_nothing() {
    let (teams, messages) = (150, 600);
    let (_one, dir, nats, server) = bench(teams, messages, Chaos::none()).await;
    // Publishing: the workers publish the texts, the leader the lifecycle.
    let publish = ["--publish", &nats.url()];
    let mut workers: Vec<Proc> = ["a", "b", "c"]
        .iter()
        .map(|n| worker_with(dir.path(), &nats.url(), n, &publish))
        .collect();
    let state = dir.path().join("s.redb");
    let global = server.global_url();
    let leader = core_with(dir.path(), &nats.url(), "core", &global, &state, &publish);
    // A rolling deploy: each worker in turn is told to go, and a new one
    // takes its place once it has.
    for (i, name) in ["a2", "b2", "c2"].iter().enumerate() {
        written(&server, teams * messages * (i as u64 + 1) / 5).await;
        let new = worker_with(dir.path(), &nats.url(), name, &publish);
        let old = std::mem::replace(&mut workers[i], new);
        old.signal("-TERM");
        let log = old.log.clone();
        let (status, _) = old.exit().await;
        let log = std::fs::read_to_string(log).unwrap_or_default();
        assert!(
            status.success(),
            "worker {i} did not hand over cleanly:\n{log}"
        );
        assert!(log.contains("handed over"), "{log}");
    }
    let verdict = verdict(server).await;
    let (_, report) = leader.exit().await;
    assert_eq!(verdict.max_sockets_per_team, 1, "two sockets for a team");
    assert!(verdict.verified, "{}", verdict_problems(&verdict));
    let counted = counts(&report);
    assert_eq!(short_by_at_most(&verdict, &counted, 0), 0);
    // The last workers publish what they still hold before they exit.
    for w in workers {
        w.signal("-TERM");
        let (status, _) = w.exit().await;
        assert!(status.success(), "a worker's publisher did not drain");
    }
    let stored = nats::read_stream(&nats.url(), "SWITCHBOARD").await;
    published_once_each(&stored, &counted);
}

/// Every counted message of every team is in the stream once: no message
/// id twice, each publishing worker's records of a team numbered 1, 2, 3…
/// in order, and as many as the leader counted; each team joined once and
/// ended stopped (published by the leader).
fn published_once_each(stored: &[nats::Stored], counted: &BTreeMap<u64, (u64, u64)>) {
    let ids: std::collections::BTreeSet<&str> = stored.iter().map(|s| s.msg_id.as_str()).collect();
    assert_eq!(ids.len(), stored.len(), "a message id stored twice");
    for (&team, &(messages, _)) in counted {
        let subject = format!("switchboard.teams.{team}.message");
        let mut runs: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
        for s in stored.iter().filter(|s| s.subject == subject) {
            let run = s.payload["run"].as_str().expect("run");
            runs.entry(run)
                .or_default()
                .push(s.payload["seq"].as_u64().expect("seq"));
        }
        let mut total = 0;
        for (run, seqs) in &runs {
            let want: Vec<u64> = (1..=seqs.len() as u64).collect();
            assert_eq!(seqs, &want, "team {team}, worker run {run}: in order, once");
            total += seqs.len() as u64;
        }
        assert_eq!(total, messages, "team {team}: every counted message stored");
        let kinds = |kind: &str| {
            let subject = format!("switchboard.teams.{team}.{kind}");
            stored.iter().filter(|s| s.subject == subject).count()
        };
        assert_eq!(kinds("joined"), 1, "team {team} joined once");
        assert_eq!(kinds("stopped"), 1, "team {team} stopped once");
    }
}

/// Every team had a socket at the end: no "no socket" problem (`logs`
/// are shown if there was).
fn every_team_reconnected(verdict: &Verdict, logs: &str) {
    let stranded: Vec<&String> = verdict
        .mismatches
        .iter()
        .filter(|m| m.contains("no socket"))
        .collect();
    assert!(stranded.is_empty(), "{stranded:?}\n{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_joins_takes_its_share_of_the_placed_teams() {
    let (teams, messages) = (150, 600);
    let (_one, dir, nats, server) = bench(teams, messages, Chaos::none()).await;
    let _first = [
        worker(dir.path(), &nats.url(), "a"),
        worker(dir.path(), &nats.url(), "b"),
    ];
    let state = dir.path().join("s.redb");
    let global = server.global_url();
    let leader = core_with(
        dir.path(),
        &nats.url(),
        "core",
        &global,
        &state,
        &["--move-rate", "20"],
    );
    written(&server, teams * messages / 5).await;
    let _c = worker(dir.path(), &nats.url(), "c");
    // Every team ends on its first choice of the three: the teams that
    // rank c first moved to it, and no other team moved.
    let names = ["a", "b", "c"];
    let started = Instant::now();
    loop {
        let lines: Value = serde_json::from_str(&http_get(&leader, "/teams")).expect("JSON");
        let misplaced = lines
            .as_array()
            .expect("lines")
            .iter()
            .filter(|t| {
                let team = switchboard::protocol::TeamId(t["id"].as_u64().expect("id"));
                let first = switchboard::cluster::placement::choose(
                    team,
                    names
                        .iter()
                        .map(|name| switchboard::cluster::placement::Slot {
                            name,
                            load: 0,
                            capacity: usize::MAX,
                        }),
                );
                t["worker"].as_str() != first
            })
            .count();
        if misplaced == 0 {
            break;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "{misplaced} teams not on their first choice:\n{lines}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics = http_get(&leader, "/metrics");
    let moved: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("switchboard_cluster_moves_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no move counter:\n{metrics}"));
    eprintln!("moved {moved} of {teams} teams onto the worker that joined");
    assert!((20..=80).contains(&moved), "about a third moved: {moved}");
    let verdict = verdict(server).await;
    let (_, report) = leader.exit().await;
    assert_eq!(verdict.max_sockets_per_team, 1, "two sockets for a team");
    assert!(verdict.verified, "{}", verdict_problems(&verdict));
    assert_eq!(short_by_at_most(&verdict, &counts(&report), 0), 0);
    let dropped: u64 = counts_of(&report, "reconnects");
    assert_eq!(dropped, moved, "each moved team dropped once, no other");
}

/// The sum of one field over a JSON report's teams.
fn counts_of(report: &[u8], field: &str) -> u64 {
    let report: Value = serde_json::from_slice(report).expect("a JSON report");
    report["teams"]
        .as_array()
        .expect("teams")
        .iter()
        .filter_map(|t| t[field].as_u64())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_worker_fences_itself_and_its_teams_move() {
    let (teams, messages) = (150, 1000);
    let (_one, dir, nats, server) = bench(teams, messages, Chaos::none()).await;
    let workers = workers(dir.path(), &nats.url()).await;
    let (state, recording) = (dir.path().join("s.redb"), dir.path().join("core.rec"));
    let global = server.global_url();
    let record = ["--record", recording.to_str().expect("utf-8")];
    let leader = core_with(dir.path(), &nats.url(), "core", &global, &state, &record);
    written(&server, teams * messages / 5).await;
    let pause = LEASE * 3;
    workers[1].signal("-STOP");
    let paused_at = tokio::time::Instant::now();
    // Unrenewed for half a lease, b is quiet to the leader: its teams are
    // reported not connected while still placed on it (none may be opened
    // elsewhere before b is lost), and /workers says so. Without that, they
    // stayed connected until then, and /teams never showed one both on b
    // and unconnected.
    loop {
        let teams = http_get(&leader, "/teams");
        let teams: Vec<Value> = serde_json::from_str(&teams).unwrap_or_default();
        let on_b: Vec<&Value> = teams.iter().filter(|t| t["worker"] == "b").collect();
        let workers: Value =
            serde_json::from_str(&http_get(&leader, "/workers")).unwrap_or_default();
        let b_quiet = workers["workers"]
            .as_array()
            .is_some_and(|ws| ws.iter().any(|w| w["name"] == "b" && w["quiet"] == true));
        if b_quiet && !on_b.is_empty() && on_b.iter().all(|t| t["connected"] == false) {
            break;
        }
        assert!(
            paused_at.elapsed() < pause,
            "b's teams were reported connected until it was lost"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    leader.logged("worker quiet for half a lease").await;
    // The fault is the pause itself: three leases long.
    tokio::time::sleep_until(paused_at + pause).await;
    workers[1].signal("-CONT");
    workers[1].logged("fencing: ending every socket").await;
    workers[1].logged("registered").await;
    leader.logged("closing a lost worker's sockets").await;
    let verdict = verdict(server).await;
    let logs = format!("core:\n{}\nworker b:\n{}", leader.log(), workers[1].log());
    let (_, report) = leader.exit().await;
    every_team_reconnected(&verdict, &logs);
    // A stopped process cannot close its sockets: the kernel keeps them
    // open until it runs again, while the leader (after a lease) has
    // reopened its teams elsewhere. So the simulator may see two sockets
    // for a team during the pause, never more; and part of what it wrote
    // to the stopped worker is lost (docs/CLUSTER.md), though the worker
    // reads what its kernel buffered as it closes them on waking.
    assert!(
        verdict.max_sockets_per_team <= 2,
        "{}",
        verdict.max_sockets_per_team
    );
    let most = (RATE * (pause + LEASE).as_secs_f64()) as u64;
    let short = short_by_at_most(&verdict, &counts(&report), most);
    eprintln!(
        "paused {pause:?}: {} sockets at most for a team; {short} messages lost of {}",
        verdict.max_sockets_per_team, verdict.messages
    );
    // What the resumed worker reported late is in the leader's recording,
    // which replays to its exact final state.
    let text = std::fs::read_to_string(&recording).expect("the recording");
    assert!(
        text.lines().any(|l| l.starts_with("{\"late\":[")),
        "no late readings recorded"
    );
    replays_exactly(&recording);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_nats_restart_a_standby_leads_and_every_team_comes_back() {
    let (teams, messages) = (150, 1000);
    let (_one, dir, nats, server) = bench(teams, messages, Chaos::none()).await;
    let store = dir.path().join("js");
    let _workers = workers(dir.path(), &nats.url()).await;
    let state = dir.path().join("state.redb");
    let (leader, standby) = two_cores(
        dir.path(),
        &nats.url(),
        &server.global_url(),
        &state,
        &state,
    )
    .await;
    written(&server, teams * messages / 5).await;
    let port = nats.kill();
    // Down for longer than half a lease: every worker fences itself and the
    // leader, unable to renew, stops.
    let (status, _) = leader.exit().await;
    assert!(
        !status.success(),
        "the leader kept leading without its lease"
    );
    let nats = Nats::start(&store, port);
    standby.logged("\"leading\"").await;
    let verdict = verdict(server).await;
    let logs = standby.log();
    let (status, report) = standby.exit().await;
    assert!(status.success());
    drop(nats);
    every_team_reconnected(&verdict, &logs);
    assert_eq!(verdict.max_sockets_per_team, 1, "two sockets for a team");
    let counted = counts(&report);
    let short: u64 = verdict
        .truth
        .iter()
        .map(|t| t.messages - counted.get(&t.id.0).map_or(0, |c| c.0).min(t.messages))
        .sum();
    eprintln!(
        "lost across the NATS restart: {short} messages of {}",
        verdict.messages
    );
    // The workers fenced, but kept what each socket read for the next
    // leader's call; the bucket survived the restart (file store).
    assert!(verdict.verified, "{}", verdict_problems(&verdict));
    assert_eq!(short, 0);
}

/// Three `nats-server -js` in one cluster on loopback; their client URLs,
/// comma-separated, as `--cluster` takes them.
async fn nats_cluster(dir: &Path) -> (Vec<Nats>, String) {
    // Route ports must be known before any server starts (JetStream
    // clustering wants its routes configured): taken free, then let go.
    let ports: Vec<u16> = (0..3)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a free port"))
        .collect::<Vec<_>>()
        .iter()
        .map(|l| l.local_addr().expect("bound").port())
        .collect();
    let routes = ports
        .iter()
        .map(|p| format!("nats://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let servers: Vec<Nats> = ports
        .iter()
        .enumerate()
        .map(|(i, port)| {
            let args = [
                "-n".to_string(),
                format!("n{i}"),
                "--cluster_name".into(),
                "sb".into(),
                "-cluster".into(),
                format!("nats://127.0.0.1:{port}"),
                "-routes".into(),
                routes.clone(),
            ];
            Nats::start_with(&dir.join(format!("js{i}")), 0, &args)
        })
        .collect();
    let urls = servers.iter().map(Nats::url).collect::<Vec<_>>().join(",");
    // Ready once JetStream takes a stream on all three.
    let started = Instant::now();
    let client = async_nats::connect(servers[0].url()).await.expect("NATS");
    let js = async_nats::jetstream::new(client);
    loop {
        let config = async_nats::jetstream::stream::Config {
            name: "ready".into(),
            subjects: vec!["ready".into()],
            num_replicas: 3,
            ..Default::default()
        };
        if js.get_or_create_stream(config).await.is_ok() {
            let _ = js.delete_stream("ready").await;
            break;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "the NATS cluster never formed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (servers, urls)
}

/// A three-node JetStream cluster, one server killed mid-run. History on
/// Debian's nats-server 2.9.10 (2026-12-02/03): 2 of 6 runs passed until
/// the leader read an overdue worker's lease from the bucket (a stalled
/// watch had lost a worker that was renewing: two sockets for a team); 4
/// of 6 until fencing workers' closes reached the leader (teams reported
/// connected after their sockets closed); 10 of 12 until the leader remade a
/// watch gone quiet (one stalled without an error and no worker's new
/// registration was seen for 100 s); 9 of 9 after that here, but the
/// clean-clone CI of 9ddd2bb failed it: after the takeover 22 of 150 teams
/// ended 1 message short (the old leader had given a fenced worker's
/// sockets up and counted the teams' next ones, then died before that
/// worker's late report; the standby took the report for an earlier
/// socket's, already counted). Saved teams now list such sockets as
/// unreported (1ecb92b). Since: 16 of 17 (the failure: both cores lost the
/// lease in turn and nothing restarted them), then 20 of 20 with the test
/// restarting a core that exits 1, as a supervisor would (3 of the 20 did).
/// Once, before 1ecb92b, 2 teams were reported connected over 2 s after
/// their sockets closed; not seen in the 37 runs since, cause not found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_server_lost_from_a_cluster_of_three_loses_nothing() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut servers, urls) = nats_cluster(dir.path()).await;
    let teams = 150;
    let messages = 600;
    let server = simulator(teams, messages, Chaos::none()).await;
    let _workers = workers(dir.path(), &urls).await;
    let one = dir.path().join("1.redb");
    let two = dir.path().join("2.redb");
    let (leader, standby) = two_cores(dir.path(), &urls, &server.global_url(), &one, &two).await;
    let js = async_nats::jetstream::new(async_nats::connect(servers[1].url()).await.expect("NATS"));
    for bucket in ["leader", "workers", "state"] {
        let mut stream = js
            .get_stream(format!("KV_switchboard_{bucket}"))
            .await
            .expect("the bucket's stream");
        let info = stream.info().await.expect("stream info");
        assert_eq!(info.config.num_replicas, 3, "bucket {bucket}");
    }
    written(&server, teams * messages / 4).await;
    drop(servers.remove(0)); // kill -9
    // A core that cannot renew through the election stops (exit 1); as
    // its supervisor would (deploy/: Kubernetes), the test starts it again,
    // and it comes back as a standby.
    let global = server.global_url();
    let judged = tokio::spawn(verdict(server));
    let mut cores = [(leader, one), (standby, two)];
    let mut restarts = 0;
    while !judged.is_finished() {
        for (core, state) in cores.iter_mut() {
            if core
                .child
                .try_wait()
                .expect("wait")
                .is_some_and(|s| !s.success())
            {
                restarts += 1;
                let name = format!("core-restart-{restarts}");
                *core = self::core(dir.path(), &urls, &name, &global, state);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let verdict = judged.await.expect("the verdict");
    let logs: Vec<String> = cores.iter().map(|(core, _)| core.log()).collect();
    let workers: Vec<String> = _workers.iter().map(Proc::log).collect();
    let logs = format!("{}\nworkers:\n{}", logs.join("\n"), workers.join("\n"));
    // After the goodbye the leader ends (0), and every standby with it.
    for (core, _) in cores {
        let (status, _) = core.exit().await;
        assert!(status.success(), "a core did not end the run\n{logs}");
    }
    every_team_reconnected(&verdict, &logs);
    assert_eq!(verdict.max_sockets_per_team, 1, "two sockets for a team");
    // The simulator checks the final healthcheck against what it wrote.
    assert!(verdict.verified, "{}\n{logs}", verdict_problems(&verdict));
}

/// A copy of the saved teams that fails (here: the bucket is gone) is sent
/// again once it can be, though no team changes meanwhile: a chunk whose
/// teams went quiet must not stay stale in the bucket for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_of_the_saved_teams_that_failed_is_sent_again() {
    use switchboard::cluster::ClusterConfig;
    use switchboard::cluster::lease::buckets;
    use switchboard::cluster::state::{self, KvState};
    use switchboard::persistence::Mirror;
    use switchboard::store::SavedTeam;
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = Nats::start(&dir.path().join("js"), 0);
    let config = ClusterConfig {
        url: nats.url(),
        name: "switchboard".into(),
        lease: LEASE,
    };
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.expect("NATS"));
    let (made, _) = buckets(&js, &config).await.expect("buckets");
    let global = "ws://global.example/";
    let mut copy = KvState::start(made.state, &tokio::runtime::Handle::current(), global, &[]);
    js.delete_key_value(config.state_bucket())
        .await
        .expect("bucket deleted");
    let team = SavedTeam {
        id: switchboard::protocol::TeamId(7),
        joined: true,
        message_count: 42,
        props_count: 3,
        socket: None,
        unreported: Vec::new(),
    };
    // Returns once the writer has tried (and failed) to copy it.
    tokio::task::block_in_place(|| {
        copy.update(std::slice::from_ref(&team));
        copy.flush(Instant::now() + DEADLINE);
    });
    let (made, _) = buckets(&js, &config).await.expect("buckets again");
    let store = made.state;
    let started = Instant::now();
    loop {
        let saved = state::load(&store, global).await.expect("read back");
        if saved == [team.clone()] {
            break;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "never copied again: {saved:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
