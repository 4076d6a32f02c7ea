//! The flight recorder: a live chaos run over real sockets, recorded and
//! replayed into a fresh core, must end in the live run's snapshot byte for
//! byte (a local stop mid-run too); rotated segments replay as one
//! recording; `--until-step` stops at the live state of that step; corrupt
//! and truncated recordings are named by file and line, never a panic; and
//! the binary says so in one line with exit 2.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::sim_run::{scenario, simulator};
use switchboard::bridge::{CloseReason, NetEvent};
use switchboard::core::{SavedTeam, Snapshot};
use switchboard::protocol::{TeamId, TeamServerEvent};
use switchboard::record::{
    RecordOptions, Recorder, ReplayEnd, ReplayError, ReplayOptions, Replayed, replay,
};
use switchboard::runtime::{self, RunConfig, RunEnd, RunOutcome, Sidecar, Step, StopHandle};
use switchboard::sim::{Chaos, Scenario, Schedule};
use switchboard::testkit::server::DEADLINE;
use switchboard::testkit::{Peer, test_config};

fn json(snapshot: &Snapshot) -> String {
    serde_json::to_string(snapshot).expect("a snapshot serialises")
}

fn options(path: &Path) -> RecordOptions {
    RecordOptions {
        path: path.to_path_buf(),
        max_bytes: None,
        keep: 0,
    }
}

fn replay_all(path: &Path) -> Result<Replayed, ReplayError> {
    replay(path, &ReplayOptions::default())
}

// ---------------------------------------------------------------------------
// Live runs over real sockets.

/// The live runs' client: a zombie is caught in well under a second.
fn client_config(global_url: String) -> RunConfig {
    common::sim_run::client_config(global_url, Duration::from_millis(400))
}

/// The library's runtime against a simulator with chaos on, recorded to
/// `path`; with `stop_at`, stopped locally once the simulator has written
/// that many messages.
async fn live(
    path: &Path,
    scenario: Scenario,
    chaos: Chaos,
    seed: u64,
    stop_at: Option<u64>,
) -> RunOutcome {
    let server = simulator(scenario, chaos, Schedule::none(), seed).await;
    let mut config = client_config(server.global_url());
    config.seed = seed;
    let mut recorder = Recorder::create(options(path), &config.core, seed).expect("recorder");
    let stop = StopHandle::new();
    let thread = {
        let stop = stop.clone();
        let handle = tokio::runtime::Handle::current();
        std::thread::spawn(move || {
            let outcome = runtime::run(&config, handle, &stop, &mut [&mut recorder]);
            (outcome, recorder.stats())
        })
    };
    if let Some(messages) = stop_at {
        let started = Instant::now();
        while server.progress().messages < messages {
            assert!(
                started.elapsed() < DEADLINE,
                "the simulator never got going"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        stop.stop();
    } else {
        let verdict = server.verdict().await;
        assert!(verdict.verified, "{verdict}");
    }
    // Bounded: a run that never ends fails the test instead of hanging it.
    let (outcome, stats) = switchboard::testkit::client::join(thread, || stop.force())
        .await
        .expect("no panic");
    let outcome = outcome.expect("run ok");
    assert_eq!(stats.incomplete, None, "{stats:?}");
    assert!(stats.events > 0 && stats.bytes > 0, "{stats:?}");
    outcome
}

/// How many events of each tag, and of each close class and bad-input
/// class, a recording holds: shows what a run exercised.
fn tags(path: &Path) -> std::collections::BTreeMap<String, u64> {
    let mut seen = std::collections::BTreeMap::new();
    for line in std::fs::read_to_string(path).expect("read").lines() {
        let Ok(serde_json::Value::Array(items)) = serde_json::from_str(line) else {
            continue;
        };
        if items.len() == 3 && items[2].is_u64() {
            *seen.entry("idle".to_owned()).or_default() += 1;
            continue;
        }
        for item in &items[2..] {
            let key = match item.as_array() {
                Some(event) => match (event[0].as_str(), event.get(2)) {
                    (Some(tag @ ("x" | "G" | "T")), Some(class)) => {
                        format!("{tag}:{}", class.as_str().unwrap_or("?"))
                    }
                    (Some(tag), _) => tag.to_owned(),
                    (None, _) => "?".to_owned(),
                },
                None => item.as_str().unwrap_or("?").to_owned(),
            };
            *seen.entry(key).or_default() += 1;
        }
    }
    seen
}

fn assert_same(live: &RunOutcome, replayed: &Replayed) {
    assert_eq!(
        json(&replayed.snapshot),
        json(&live.snapshot),
        "the replayed snapshot is the live one, byte for byte"
    );
    assert_eq!(replayed.report, live.report);
    assert!(
        matches!(replayed.end, ReplayEnd::Verified { .. }),
        "{:?}",
        replayed.end
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_chaos_run_replays_to_the_same_snapshot_byte_for_byte() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("chaos.rec");
    let outcome = live(
        &path,
        scenario(40, &client_config(String::new())),
        Chaos::level(4.0),
        11,
        None,
    )
    .await;
    let seen = tags(&path);
    eprintln!("{seen:?}");
    // The run was rough: drops of several kinds, bad input on both
    // connection kinds, idle steps between.
    for tag in ["m", "o", "g", "t", "idle", "x:local_close"] {
        assert!(seen.contains_key(tag), "{tag} missing: {seen:?}");
    }
    let closes = seen.keys().filter(|k| k.starts_with("x:")).count();
    assert!(closes >= 2, "several kinds of close: {seen:?}");
    assert!(
        seen.keys()
            .any(|k| k.starts_with("T:") || k.starts_with("G:")),
        "bad input: {seen:?}"
    );

    let replayed = replay_all(&path).expect("replays");
    assert_same(&outcome, &replayed);
    assert_eq!(replayed.steps, outcome.steps);

    // The comparison has teeth: one message run taken out of the
    // recording, and the replay no longer reaches the live state.
    let text = std::fs::read_to_string(&path).expect("read");
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let (i, cut) = lines
        .iter()
        .enumerate()
        .find_map(|(i, line)| {
            let at = line.find(",[\"m\",")?;
            let end = at + line[at + 1..].find(']')? + 2;
            // Keep the line a step with input.
            let rest = format!("{}{}", &line[..at], &line[end..]);
            (rest.contains("[\"")).then_some((i, rest))
        })
        .expect("a step with a message run and more");
    lines[i] = cut;
    let tampered = dir.path().join("tampered.rec");
    std::fs::write(&tampered, lines.join("\n") + "\n").expect("write");
    match replay_all(&tampered) {
        Err(ReplayError::Diverged { at, .. }) => assert_eq!(at.line, lines.len() as u64),
        other => panic!("a missing run must diverge: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_stopped_locally_mid_flight_replays_byte_for_byte() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("stopped.rec");
    let scenario = Scenario {
        teams: 20,
        // Never finishes by itself: it is stopped locally long before.
        messages: 100_000,
        rate: 200.0,
        join_over: Duration::from_millis(200),
        max_duration: Duration::from_secs(600),
        recovery_wait: Scenario::recovery_wait_for(&client_config(String::new()).core),
        ..Scenario::default()
    };
    let outcome = live(&path, scenario, Chaos::level(2.0), 5, Some(2_000)).await;
    assert!(
        matches!(
            outcome.end,
            RunEnd::Finished(_) | RunEnd::ShutdownTimedOut(_)
        ),
        "{:?}",
        outcome.end
    );
    let seen = tags(&path);
    assert_eq!(seen.get("stop"), Some(&1), "{seen:?}");
    let replayed = replay_all(&path).expect("replays");
    assert_same(&outcome, &replayed);
    assert!(
        replayed.report.messages >= 1_000,
        "{}",
        replayed.report.messages
    );
}

// ---------------------------------------------------------------------------
// Scripted runs: a hand-driven core, no sockets, every step recorded.

/// A core driven by hand, with the recorder beside it as the driver runs
/// it, and the snapshot after every step.
struct Scripted {
    peer: Peer,
    recorder: Recorder,
    /// The snapshot (as JSON) after each step; index 0 is before the first.
    snapshots: Vec<String>,
}

fn step_info() -> Step<'static> {
    Step {
        at: Instant::now(),
        took: Duration::ZERO,
        team_events: &[],
        inbox_depth: 0,
    }
}

impl Scripted {
    fn new(options: RecordOptions, restored: &[SavedTeam]) -> Scripted {
        let config = test_config();
        let mut peer = Peer::with_config(&config, 3);
        peer.core.restore(restored).expect("restore");
        let mut recorder = Recorder::create(options, &config, 3).expect("recorder");
        let wake = switchboard::inbox::Wake::unattached();
        recorder.start(&mut peer.core, &wake);
        let snapshots = vec![json(&peer.core.snapshot())];
        Scripted {
            peer,
            recorder,
            snapshots,
        }
    }

    fn seen(&mut self) {
        self.recorder.after_step(&mut self.peer.core, &step_info());
        self.snapshots.push(json(&self.peer.core.snapshot()));
    }

    /// One step.
    fn step(&mut self) {
        self.peer.step();
        self.seen();
    }

    /// One step straight to the core's next deadline (several ticks of time).
    fn jump(&mut self) {
        self.peer
            .jump_to_next_deadline()
            .expect("the core has a deadline");
        self.seen();
    }

    fn finish(mut self, end: RunEnd) -> (Vec<String>, Snapshot) {
        let deadline = Instant::now() + DEADLINE;
        self.recorder.finish(&mut self.peer.core, &end, deadline);
        (self.snapshots, self.peer.core.snapshot())
    }
}

/// A run with a bit of everything: restored teams, joins, sockets, message
/// runs, bad input, pings and pongs, drops of several kinds, idle steps and
/// multi-tick jumps, a local stop mid-run. Returns the snapshot after every
/// step and the final one.
fn scripted(options: RecordOptions) -> (Vec<String>, Snapshot) {
    let restored = [
        SavedTeam {
            id: TeamId(9),
            joined: true,
            message_count: 40,
            props_count: 4,
            socket: None,
            unreported: Vec::new(),
        },
        SavedTeam {
            id: TeamId(8),
            joined: false,
            message_count: 7,
            props_count: 0,
            socket: None,
            unreported: Vec::new(),
        },
    ];
    let mut s = Scripted::new(options, &restored);
    s.step(); // the core asks for Global
    let global = s.peer.global_conn();
    s.peer.push(NetEvent::Opened { conn: global });
    s.peer.global_text(r#"{"type":"hello"}"#);
    for id in 1..=3 {
        s.peer
            .global_text(&format!(r#"{{"type":"team.join","team_id":{id}}}"#));
    }
    s.step();
    for id in [1, 2, 3, 9] {
        s.peer.global_text(&format!(
            r#"{{"type":"team.connect","team_id":{id},"ws_url":"http://sim/team/{id}"}}"#
        ));
    }
    s.step();
    for id in [1, 2, 3, 9] {
        let conn = s.peer.team_conn(TeamId(id));
        s.peer.push(NetEvent::Opened { conn });
        s.peer.team_says(TeamId(id), TeamServerEvent::Hello);
    }
    s.step();
    for round in 0..30u32 {
        for id in [1, 2, 3, 9] {
            s.peer.messages(TeamId(id), 1 + round % 4, round % 2);
        }
        if round == 3 {
            s.peer.team_text(TeamId(2), "not json");
            s.peer.team_text(TeamId(3), r#"{"type":"message"}"#);
            s.peer.global_text(r#"{"type":"surprise"}"#);
            s.peer.global_text(r#"{"type":"healthcheck"}"#);
        }
        if round == 10 {
            let conn = s.peer.team_conn(TeamId(2));
            s.peer.closed(conn, CloseReason::Reset);
            let conn = s.peer.team_conn(TeamId(3));
            s.peer
                .closed(conn, CloseReason::Stalled("message left incomplete"));
        }
        s.step();
        if round % 7 == 6 {
            // Idle steps, then a jump over quiet time.
            for _ in 0..3 {
                s.step();
            }
            s.jump();
        }
        // Answer the pings on team 1; team 9's go unanswered.
        let conn = s.peer.team_conn(TeamId(1));
        if let Some(&id) = s.peer.pings_on(conn).last() {
            s.peer
                .team_says(TeamId(1), TeamServerEvent::Pong { unique_id: id });
        }
    }
    s.peer.global_text(r#"{"type":"team.left","team_id":1}"#);
    s.step();
    // A local stop, as the driver asks for one: just before a step.
    s.peer.core.shutdown();
    s.step();
    for _ in 0..3 {
        s.step();
    }
    s.finish(RunEnd::Finished(switchboard::core::ShutdownCause::Local))
}

#[test]
fn a_scripted_run_replays_exactly_and_until_step_stops_at_that_steps_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("scripted.rec");
    let (snapshots, last) = scripted(options(&path));
    let replayed = replay_all(&path).expect("replays");
    assert_eq!(json(&replayed.snapshot), json(&last));
    assert!(matches!(replayed.end, ReplayEnd::Verified { .. }));
    assert_eq!(replayed.restored, 2);
    let seen = tags(&path);
    for tag in [
        "idle",
        "stop",
        "x:reset",
        "x:stalled",
        "T:not_json",
        "G:unknown_type",
    ] {
        assert!(seen.contains_key(tag), "{tag} missing: {seen:?}");
    }
    // Every step's state, reached by stopping there.
    let steps = snapshots.len() as u64 - 1;
    for step in (0..=steps).step_by(5).chain([1, steps - 1]) {
        let until = replay(
            &path,
            &ReplayOptions {
                until_step: Some(step),
            },
        )
        .expect("replays");
        assert_eq!(until.snapshot.clock.step, step, "stopped at the step asked");
        assert_eq!(
            json(&until.snapshot),
            snapshots[step as usize],
            "step {step}"
        );
    }
}

#[test]
fn a_stop_after_the_last_step_is_replayed_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("forced.rec");
    let mut s = Scripted::new(options(&path), &[]);
    s.step();
    s.step();
    // Stop asked, then forced before any step acted on it.
    s.peer.core.shutdown();
    let (_, last) = s.finish(RunEnd::Forced);
    assert!(last.shutdown.cause.is_some());
    let replayed = replay_all(&path).expect("replays");
    assert_eq!(json(&replayed.snapshot), json(&last));
}

#[test]
fn rotated_segments_replay_as_one_recording() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("rotated.rec");
    // Leftovers, past a gap too, are not chained in.
    std::fs::write(dir.path().join("rotated.rec.90"), "stale").expect("write");
    std::fs::write(dir.path().join("rotated.rec.1"), "stale").expect("write");
    let (_, last) = scripted(RecordOptions {
        path: path.clone(),
        max_bytes: Some(512),
        keep: 1000,
    });
    let kept = (1..)
        .take_while(|n| dir.path().join(format!("rotated.rec.{n}")).exists())
        .count();
    assert!(kept >= 5, "it rotated: {kept} segments");
    for n in 1..=kept {
        let size = std::fs::metadata(dir.path().join(format!("rotated.rec.{n}")))
            .expect("segment")
            .len();
        // A segment closes once the next line would pass the cap; one line
        // may be longer than the cap by itself.
        assert!(size < 512 + 1024, "segment {n}: {size} bytes");
    }
    let replayed = replay_all(&path).expect("replays");
    assert_eq!(json(&replayed.snapshot), json(&last));
    assert_eq!(replayed.segments, kept + 1);

    // A missing middle segment breaks the chain, by name.
    let middle = dir.path().join(format!("rotated.rec.{}", kept / 2));
    let moved = dir.path().join("aside");
    std::fs::rename(&middle, &moved).expect("move");
    // The chain now stops below the gap: its oldest is not segment 0.
    match replay_all(&path) {
        Err(error @ ReplayError::StartMissing { .. }) => {
            let text = error.to_string();
            assert!(text.contains("segment 0"), "{text}");
            assert!(
                text.contains(&format!("rotated.rec.{}:1", kept / 2 - 1)),
                "{text}"
            );
        }
        other => panic!("{other:?}"),
    }
    std::fs::rename(&moved, &middle).expect("back");
    assert!(replay_all(&path).is_ok());
}

#[test]
fn a_new_recording_keeps_the_previous_one_replayable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("service.rec");
    let rotating = |path: &Path| RecordOptions {
        path: path.to_path_buf(),
        max_bytes: Some(2048),
        keep: 100,
    };
    let (_, first) = scripted(rotating(&path));
    // A restart (after a crash, say) records again at the same path.
    let mut s = Scripted::new(rotating(&path), &[]);
    s.step();
    let (_, second) = s.finish(RunEnd::Forced);
    let previous = dir.path().join("service.rec.previous");
    assert!(dir.path().join("service.rec.previous.1").exists());
    assert!(!dir.path().join("service.rec.1").exists());
    let replayed = replay_all(&previous).expect("the previous recording replays");
    assert_eq!(json(&replayed.snapshot), json(&first));
    let replayed = replay_all(&path).expect("the new one replays");
    assert_eq!(json(&replayed.snapshot), json(&second));
}

#[test]
fn a_start_rotated_away_is_refused_naming_the_oldest_segment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("short.rec");
    scripted(RecordOptions {
        path: path.clone(),
        max_bytes: Some(512),
        keep: 2,
    });
    assert!(dir.path().join("short.rec.2").exists());
    assert!(!dir.path().join("short.rec.3").exists());
    let error = replay_all(&path).expect_err("the start is gone");
    let text = error.to_string();
    assert!(matches!(error, ReplayError::StartMissing { .. }), "{text}");
    assert!(text.contains("short.rec.2:1"), "{text}");
    assert!(text.contains("rotated away"), "{text}");
}

#[test]
fn a_failing_disk_stops_the_recording_visibly_and_the_run_goes_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Rotation fails: the segment name it must free is taken by a folder,
    // as any I/O error the writer meets.
    let path = dir.path().join("full.rec");
    let rotating = RecordOptions {
        path: path.clone(),
        max_bytes: Some(1),
        keep: 1,
    };
    let mut s = Scripted::new(rotating, &[]);
    std::fs::create_dir(dir.path().join("full.rec.1")).expect("mkdir");
    s.step(); // the core asks for Global
    let global = s.peer.global_conn();
    s.peer.push(NetEvent::Opened { conn: global });
    let started = Instant::now();
    let why = loop {
        s.peer.global_text(r#"{"type":"healthcheck"}"#);
        s.step();
        if let Some(why) = s.recorder.stats().incomplete {
            break why;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "the failure was never noticed"
        );
    };
    assert!(why.contains("writer failed"), "{why}");
    // The core no longer keeps events for a recorder that stopped.
    s.peer.global_text(r#"{"type":"healthcheck"}"#);
    s.step();
    assert!(s.peer.core.drain_recorded().is_empty());
    let deadline = Instant::now() + DEADLINE;
    let (_, last) = s.finish(RunEnd::Forced);
    assert!(Instant::now() < deadline, "finish is bounded");
    assert!(last.clock.step > 0);
}

/// A symlink planted at FILE (in a shared folder, say) must not make the
/// recorder overwrite its target with the run's URLs and tokens: the start
/// is refused, in one line and exit 2, and both the link and its target
/// are left as they were. Refused rather than replaced: the operator named
/// a path that is not what they think it is, and should know.
#[test]
fn a_symlink_at_the_recording_path_is_refused_and_its_target_untouched() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let victim = dir.path().join("victim.txt");
    std::fs::write(&victim, "precious\n").expect("write");
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let link = dir.path().join("run.rec");
    std::os::unix::fs::symlink(&victim, &link).expect("symlink");
    let untouched = || {
        assert_eq!(
            std::fs::read_to_string(&victim).expect("read"),
            "precious\n"
        );
        let mode = std::fs::metadata(&victim)
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644);
        assert_eq!(std::fs::read_link(&link).expect("still a link"), victim);
        assert!(!dir.path().join("run.rec.previous").exists());
    };

    for max_bytes in [None, Some(1 << 20)] {
        let refused = Recorder::create(
            RecordOptions {
                path: link.clone(),
                max_bytes,
                keep: 1,
            },
            &test_config(),
            1,
        );
        let error = refused.err().expect("refused").to_string();
        assert!(error.contains("a symbolic link"), "{error}");
        untouched();
    }

    // The binary: one line, exit 2, before any connection (the port is
    // closed; the old behaviour gave up on it after 2 s and exited 1).
    let err = refused_in_one_line(&[
        "connect",
        "ws://127.0.0.1:9/global",
        "--state",
        "none",
        "--give-up-after",
        "2s",
        "--record",
        link.to_str().expect("utf-8"),
    ]);
    assert!(err.contains("a symbolic link"), "{err}");
    untouched();
}

// ---------------------------------------------------------------------------
// Damaged recordings.

/// A finished scripted recording's lines.
fn recorded(dir: &Path) -> (PathBuf, Vec<String>) {
    let path = dir.join("good.rec");
    scripted(options(&path));
    let text = std::fs::read_to_string(&path).expect("read");
    (path, text.lines().map(str::to_owned).collect())
}

/// A header's version key and value, as written.
fn magic(version: u64) -> String {
    format!("\"switchboard_recording\":{version}")
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path
}

fn bad_at(path: &Path, line: usize, says: &str) {
    match replay_all(path) {
        Err(error @ ReplayError::Bad { .. }) => {
            let text = error.to_string();
            let place = format!("{}:{line}: ", path.display());
            assert!(text.starts_with(&place), "{text} (expected {place})");
            assert!(text.contains(says), "{text} (expected {says:?})");
        }
        other => panic!("{}: expected a bad line {line}: {other:?}", path.display()),
    }
}

#[test]
fn corrupt_recordings_are_errors_naming_the_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, lines) = recorded(dir.path());
    let with = |i: usize, replacement: Option<&str>| {
        let mut lines = lines.clone();
        match replacement {
            Some(text) => lines[i] = text.to_owned(),
            None => {
                lines.remove(i);
            }
        }
        lines.join("\n") + "\n"
    };
    // A step line in the middle.
    let mid = lines
        .iter()
        .enumerate()
        .skip(lines.len() / 2)
        .find(|(_, l)| l.contains("[\"m\""))
        .map(|(i, _)| i)
        .expect("a step with messages");
    let line = &lines[mid];
    let cases: Vec<(String, String, &str)> = vec![
        (
            with(mid, Some("{garbage")),
            "garbage".into(),
            "not a JSON value",
        ),
        (with(mid, None), "gap".into(), "steps are missing"),
        (
            with(mid, Some(&line.replacen("[\"m\"", "[\"z\"", 1))),
            "tag".into(),
            "unknown event tag",
        ),
        (
            with(mid, Some(&line.replacen(",[\"m\",", ",[\"m\",-", 1))),
            "negative".into(),
            "not a whole number",
        ),
        (with(mid, Some("[1,1]")), "shape".into(), "no input"),
        (
            with(0, Some("hello")),
            "header".into(),
            "not a switchboard recording",
        ),
        (
            with(
                0,
                Some(&lines[0].replacen(&magic(switchboard::record::line::VERSION), &magic(9), 1)),
            ),
            "version".into(),
            "format version 9",
        ),
        (
            with(
                lines.len() - 1,
                Some(&format!("{}\n[1,1,1]", lines[lines.len() - 1])),
            ),
            "after the end".into(),
            "after the end line",
        ),
    ];
    for (text, name, says) in cases {
        let path = write(dir.path(), &format!("{name}.rec"), &text);
        let line = match name.as_str() {
            "header" | "version" => 1,
            "after the end" => lines.len() + 1,
            _ => mid + 1,
        };
        bad_at(&path, line, says);
    }
    // A name the codec does not know, and time going backwards.
    let stalled = lines
        .iter()
        .position(|l| l.contains("message left incomplete"))
        .expect("the stall is recorded");
    let path = write(
        dir.path(),
        "name.rec",
        &with(
            stalled,
            Some(&lines[stalled].replace("message left incomplete", "dreaming")),
        ),
    );
    bad_at(&path, stalled + 1, "unknown name \"dreaming\"");
    let mut step: Vec<serde_json::Value> = serde_json::from_str(line).expect("a step");
    step[1] = 0.into();
    let back = serde_json::to_string(&step).expect("json");
    let path = write(dir.path(), "time.rec", &with(mid, Some(&back)));
    bad_at(&path, mid + 1, "time goes back");
}

/// What no recorder writes is refused at once, however it is dressed:
/// an idle run of a trillion steps (it once replayed for hours), and a
/// 128 MiB line of numbers (it once took 4.3 GB to parse; here the binary
/// runs with 1 GiB of address space and still answers in one line).
#[test]
fn hostile_lines_are_refused_quickly_in_bounded_memory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, lines) = recorded(dir.path());
    let header = &lines[0];

    let idle = format!("{header}\n[1000000000000,1000000000000,1000000000000]\n");
    let path = write(dir.path(), "idle.rec", &idle);
    bad_at(&path, 2, "a recorder writes at most");
    // A jump to the end of time (it overflowed the core's arithmetic).
    let jump = format!("{header}\n[1,1000,1]\n[2,18446744073709551615,\"stop\"]\n");
    let path = write(dir.path(), "jump.rec", &jump);
    bad_at(&path, 3, "past a century");

    let mut long = Vec::with_capacity(130 << 20);
    long.extend_from_slice(header.as_bytes());
    long.extend_from_slice(b"\n[1");
    while long.len() < 128 << 20 {
        long.extend_from_slice(b",1000000000000");
    }
    long.extend_from_slice(b"]\n");
    let path = dir.path().join("long.rec");
    std::fs::write(&path, &long).expect("write");
    drop(long);
    bad_at(&path, 2, "no recorder writes one");

    let mut command = Command::new(env!("CARGO_BIN_EXE_switchboard"));
    command.args(["replay", path.to_str().expect("utf-8")]);
    // SAFETY: only an async-signal-safe setrlimit runs between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, || {
            rlimit::setrlimit(rlimit::Resource::AS, 1 << 30, 1 << 30)
        });
    }
    let out = command.output().expect("binary runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("long.rec:2: "), "{err}");
}

#[test]
fn a_truncated_recording_is_incomplete_at_the_cut_and_replays_up_to_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (good, lines) = recorded(dir.path());
    let text = std::fs::read_to_string(&good).expect("read");
    // Cut in the middle of a line.
    let mid = lines.len() / 2;
    let offset: usize =
        lines[..mid].iter().map(|l| l.len() + 1).sum::<usize>() + lines[mid].len() / 2;
    let cut = write(dir.path(), "cut.rec", &text[..offset]);
    let replayed = replay_all(&cut).expect("replays up to the cut");
    match &replayed.end {
        ReplayEnd::Incomplete { at, reason } => {
            assert_eq!(at.line, mid as u64 + 1);
            assert!(reason.contains("cut short"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    // Everything before the cut was replayed: the state of the last whole
    // step line.
    let before: Vec<serde_json::Value> =
        serde_json::from_str(&lines[mid - 1]).expect("a step line");
    assert_eq!(Some(replayed.snapshot.clock.step), before[0].as_u64());
    // Bisecting below the cut needs no leave.
    let early = replay(
        &cut,
        &ReplayOptions {
            until_step: Some(3),
        },
    )
    .expect("replays");
    assert_eq!(early.end, ReplayEnd::UntilStep { step: 3 });

    // Cut at a line boundary: no end line.
    let offset: usize = lines[..mid].iter().map(|l| l.len() + 1).sum();
    let short = write(dir.path(), "short.rec", &text[..offset]);
    match replay_all(&short).expect("replays").end {
        ReplayEnd::Incomplete { at, reason } => {
            assert_eq!(at.line, mid as u64);
            assert!(reason.contains("no end line"), "{reason}");
        }
        other => panic!("{other:?}"),
    }

    // Nothing at all, or half a header.
    bad_at(&write(dir.path(), "empty.rec", ""), 1, "no complete header");
    bad_at(
        &write(dir.path(), "half.rec", &lines[0][..20]),
        1,
        "no complete header",
    );
}

/// Version 1 of the format named the step count `tick` in segment headers
/// and end lines; such a recording (rotated, so later headers carry it
/// too) still replays to the live state.
#[test]
fn a_version_1_recording_replays_to_the_live_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("v2.rec");
    let (_, last) = scripted(RecordOptions {
        path: path.clone(),
        max_bytes: Some(2048),
        keep: 100,
    });
    let mut renamed = 0;
    for n in 0.. {
        let suffix = if n == 0 {
            String::new()
        } else {
            format!(".{n}")
        };
        let Ok(text) = std::fs::read_to_string(dir.path().join(format!("v2.rec{suffix}"))) else {
            break;
        };
        let old: Vec<String> = text
            .lines()
            .map(|line| {
                if !line.starts_with('{') {
                    return line.to_owned();
                }
                renamed += usize::from(line.contains("\"step\":"));
                line.replace(&magic(switchboard::record::line::VERSION), &magic(1))
                    .replace("\"step\":", "\"tick\":")
                    .replace("\"max_events_per_step\":", "\"max_events_per_tick\":")
            })
            .collect();
        write(
            dir.path(),
            &format!("v1.rec{suffix}"),
            &(old.join("\n") + "\n"),
        );
    }
    assert!(renamed >= 3, "headers and the end line renamed: {renamed}");
    let replayed = replay_all(&dir.path().join("v1.rec")).expect("version 1 replays");
    assert!(
        matches!(replayed.end, ReplayEnd::Verified { .. }),
        "{:?}",
        replayed.end
    );
    assert_eq!(json(&replayed.snapshot), json(&last));
}

// ---------------------------------------------------------------------------
// The binary.

fn switchboard(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(args)
        .env("RUST_LOG", "error")
        .output()
        .expect("binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs the binary, which must refuse: exit 2, nothing on stdout, one line
/// on stderr, which is returned.
fn refused_in_one_line(args: &[&str]) -> String {
    let (code, out, err) = switchboard(args);
    assert_eq!(code, 2, "{err}");
    assert!(out.is_empty(), "{out}");
    assert_eq!(err.lines().count(), 1, "{err}");
    err
}

#[test]
fn the_binary_replays_prints_and_refuses_in_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (good, lines) = recorded(dir.path());
    let good = good.to_str().expect("utf-8 path");

    let (code, out, err) = switchboard(&["replay", good, "--report", "json"]);
    assert_eq!(code, 0, "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).expect("a JSON report");
    assert_eq!(report["teams"].as_array().map(Vec::len), Some(5), "{out}");
    assert!(
        err.contains("the final snapshot is the live run's"),
        "{err}"
    );
    assert!(err.contains("events/s"), "{err}");

    let (code, out, _) = switchboard(&["replay", good, "--snapshot", "--until-step", "4"]);
    assert_eq!(code, 0);
    let snapshot: serde_json::Value = serde_json::from_str(&out).expect("a JSON snapshot");
    // The snapshot's JSON keeps the step count's old name.
    assert_eq!(snapshot["clock"]["tick"], 4);

    // Corrupt: one line naming the file and line, exit 2.
    let mut damaged = lines.clone();
    damaged[5] = "{garbage".into();
    let bad = write(dir.path(), "bad.rec", &(damaged.join("\n") + "\n"));
    let err = refused_in_one_line(&["replay", bad.to_str().expect("utf-8")]);
    assert!(
        err.starts_with(&format!("error: {}:6: ", bad.display())),
        "{err}"
    );

    // A later version of the format: one line naming it.
    let mut newer = lines.clone();
    let version = switchboard::record::line::VERSION;
    newer[0] = newer[0].replacen(&magic(version), &magic(version + 1), 1);
    let newer = write(dir.path(), "newer.rec", &(newer.join("\n") + "\n"));
    let err = refused_in_one_line(&["replay", newer.to_str().expect("utf-8")]);
    assert!(
        err.contains("newer.rec:1: ")
            && err.contains(&format!(
                "format version {}; this build reads versions 1 to {version}",
                version + 1
            )),
        "{err}"
    );
    // It is a recording, only a newer one.
    assert!(!err.contains("not a switchboard recording"), "{err}");

    // Truncated: refused by default, replayed when allowed.
    let text = lines.join("\n");
    let cut = write(dir.path(), "cut.rec", &text[..text.len() / 2]);
    let cut = cut.to_str().expect("utf-8");
    let err = refused_in_one_line(&["replay", cut]);
    assert!(
        err.contains("incomplete") && err.contains("--allow-incomplete"),
        "{err}"
    );
    assert!(err.contains(&format!("{cut}:")), "{err}");
    let (code, out, err) = switchboard(&["replay", cut, "--allow-incomplete"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("total"), "{out}");
    assert!(err.contains("incomplete"), "{err}");

    // Missing file.
    let (code, _, err) = switchboard(&["replay", "/nonexistent/x.rec"]);
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/x.rec"), "{err}");
}
