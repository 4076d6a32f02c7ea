//! The simulator's own rules, driven by a small scripted client written
//! here (not the library's): a client that restarts mid-run is neither a
//! fault nor an error; one that restarts and forgets its counts is caught;
//! one that leaves a healthcheck unanswered is caught; one that never
//! brings a team back fails the run, with its fault "not recovered"; an
//! impossible scenario is refused before anything binds.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use switchboard::protocol::TeamId;
use switchboard::sim::{
    Chaos, Fault, Scenario, ScenarioError, Schedule, SimConfig, SimError, SimServer, Trigger,
    Verdict,
};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

/// Every wait in this file is bounded by this.
const DEADLINE: Duration = Duration::from_secs(30);

/// A short scenario whose failure phases are short too, so a run the
/// simulator fails still ends in seconds.
fn quick(teams: u64) -> Scenario {
    let mut scenario = Scenario {
        teams,
        messages: 60,
        rate: 30.0,
        join_over: Duration::from_millis(100),
        healthcheck_every: Duration::from_millis(100),
        reply_within: Duration::from_millis(500),
        leave_fraction: 0.0,
        recovery_wait: Duration::from_secs(3),
        final_check_wait: Duration::from_secs(2),
        goodbye_wait: Duration::from_secs(2),
        ..Scenario::default()
    };
    scenario.max_duration = Duration::from_secs(4) + scenario.ending();
    scenario
}

async fn start(scenario: Scenario) -> SimServer {
    start_with(scenario, Schedule::none()).await
}

async fn start_with(scenario: Scenario, schedule: Schedule) -> SimServer {
    SimServer::start(SimConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        scenario,
        chaos: Chaos::none(),
        schedule,
        seed: 3,
        tls: false,
    })
    .await
    .unwrap()
}

/// What the scripted client does besides counting.
#[derive(Clone, Copy, Default)]
struct Script {
    /// Leave every healthcheck unanswered.
    mute: bool,
    /// Restart once this many messages are counted in all.
    restart_after: Option<u64>,
    /// Start the restarted client with no counts.
    forget: bool,
    /// Open a second socket for team 1 while holding its first.
    second_socket: bool,
}

/// One team's counts: (connected, messages, props).
type Counts = Arc<Mutex<BTreeMap<u64, (bool, u64, u64)>>>;

fn close_frame() -> Message {
    Message::Close(Some(CloseFrame {
        code: 1000.into(),
        reason: "".into(),
    }))
}

/// One team socket: counts every message until the socket ends, which it
/// does on `team.left`, or when told to close (it then keeps counting
/// until the server's close).
async fn team_socket(url: String, id: u64, counts: Counts, mut close: mpsc::Receiver<()>) {
    let url = url.replacen("http://", "ws://", 1);
    let Ok((ws, _)) = tokio_tungstenite::connect_async(url).await else {
        return;
    };
    let (mut sink, mut stream) = ws.split();
    counts.lock().unwrap().entry(id).or_default().0 = true;
    let mut closing = false;
    loop {
        tokio::select! {
            _ = close.recv(), if !closing => {
                closing = true;
                let _ = sink.send(close_frame()).await;
            }
            frame = stream.next() => match frame {
                Some(Ok(Message::Text(text))) => {
                    let event: Value = serde_json::from_str(text.as_str()).unwrap();
                    match event["type"].as_str() {
                        Some("message") => {
                            let text = event["text"].as_str().unwrap();
                            let mut counts = counts.lock().unwrap();
                            let team = counts.entry(id).or_default();
                            team.1 += 1;
                            team.2 += u64::from(text.contains("props"));
                        }
                        Some("team.left") if !closing => {
                            closing = true;
                            let _ = sink.send(close_frame()).await;
                        }
                        _ => {}
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            },
        }
    }
    counts.lock().unwrap().entry(id).or_default().0 = false;
}

/// Why a Global session ended.
enum End {
    Goodbye,
    Restart,
}

/// One Global session: requests a URL for every team joined, answers
/// healthchecks from `counts` (unless mute), and ends on `goodbye` (closing
/// every socket with 1000) or, for a restart, once `restart_after` messages
/// are counted (closing every socket with 1000, no goodbye).
async fn global_session(url: &str, counts: &Counts, script: Script, restarted: bool) -> End {
    let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let (mut sink, mut stream) = ws.split();
    let mut teams: Vec<mpsc::Sender<()>> = Vec::new();
    let mut doubled = false;
    let mut tasks = Vec::new();
    let mut check = tokio::time::interval(Duration::from_millis(20));
    let end = loop {
        tokio::select! {
            frame = stream.next() => {
                let Some(Ok(Message::Text(text))) = frame else { continue };
                let event: Value = serde_json::from_str(text.as_str()).unwrap();
                let team = event["team_id"].as_u64();
                match (event["type"].as_str().unwrap(), team) {
                    ("team.join", Some(id)) => {
                        counts.lock().unwrap().entry(id).or_default();
                        let request = json!({"type": "team.connect", "team_id": id});
                        sink.send(Message::text(request.to_string())).await.unwrap();
                    }
                    ("team.connect", Some(id)) => {
                        let (tx, rx) = mpsc::channel(1);
                        teams.push(tx);
                        if script.second_socket && id == 1 && !doubled {
                            doubled = true;
                            let again = json!({"type": "team.connect", "team_id": id});
                            sink.send(Message::text(again.to_string())).await.unwrap();
                        }
                        let ws_url = event["ws_url"].as_str().unwrap().to_owned();
                        tasks.push(tokio::spawn(team_socket(ws_url, id, counts.clone(), rx)));
                    }
                    ("healthcheck", _) if !script.mute => {
                        let stats: Vec<Value> = counts
                            .lock()
                            .unwrap()
                            .iter()
                            .map(|(id, (connected, m, p))| json!({
                                "id": id, "connected": connected,
                                "message_count": m, "props_count": p,
                            }))
                            .collect();
                        let reply = json!({"type": "healthcheck", "stats": stats});
                        sink.send(Message::text(reply.to_string())).await.unwrap();
                    }
                    ("goodbye", _) => break End::Goodbye,
                    _ => {}
                }
            }
            _ = check.tick() => {
                let counted: u64 = counts.lock().unwrap().values().map(|c| c.1).sum();
                if !restarted && script.restart_after.is_some_and(|n| counted >= n) {
                    break End::Restart;
                }
            }
        }
    };
    for close in &teams {
        let _ = close.send(()).await;
    }
    for task in tasks {
        tokio::time::timeout(DEADLINE, task).await.unwrap().unwrap();
    }
    let _ = sink.send(close_frame()).await;
    // Drain to the server's close.
    while tokio::time::timeout(DEADLINE, stream.next())
        .await
        .unwrap()
        .is_some_and(|f| f.is_ok())
    {}
    end
}

/// Runs the scripted client against `server` to its goodbye; returns the
/// verdict.
async fn run(server: SimServer, script: Script) -> Verdict {
    let url = server.global_url();
    let counts: Counts = Arc::default();
    let client = tokio::spawn(async move {
        let mut restarted = false;
        loop {
            match global_session(&url, &counts, script, restarted).await {
                End::Goodbye => break,
                End::Restart => {
                    restarted = true;
                    if script.forget {
                        counts.lock().unwrap().clear();
                    }
                }
            }
        }
    });
    let verdict = tokio::time::timeout(DEADLINE, server.verdict())
        .await
        .expect("the run ends");
    let started = Instant::now();
    tokio::time::timeout(DEADLINE, client)
        .await
        .expect("the client ends after goodbye")
        .unwrap();
    assert!(started.elapsed() < DEADLINE);
    eprintln!("{verdict}");
    verdict
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_restarts_mid_run_is_no_fault_and_no_error() {
    let script = Script {
        restart_after: Some(300),
        ..Script::default()
    };
    let verdict = run(start(quick(10)).await, script).await;
    assert!(verdict.verified, "{verdict}");
    assert_eq!(verdict.global_connects, 2, "one restart: {verdict}");
    assert_eq!(verdict.injected(), 0);
    assert_eq!(verdict.messages, 600);
    let gap = verdict
        .longest_disconnect
        .expect("the restart took sockets down");
    assert!(!gap.unended);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_restarts_and_forgets_its_counts_is_caught() {
    let script = Script {
        restart_after: Some(300),
        forget: true,
        ..Script::default()
    };
    let verdict = run(start(quick(10)).await, script).await;
    assert!(!verdict.verified, "{verdict}");
    assert!(
        verdict
            .mismatches
            .iter()
            .any(|m| m.contains("message_count went down")),
        "{verdict}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_holds_two_sockets_for_a_team_is_caught() {
    let script = Script {
        second_socket: true,
        ..Script::default()
    };
    let verdict = run(start(quick(2)).await, script).await;
    assert!(!verdict.verified, "{verdict}");
    assert_eq!(verdict.max_sockets_per_team, 2, "{verdict}");
    assert!(
        verdict
            .mismatches
            .iter()
            .any(|m| m.contains("team 1: 2 sockets open at once")),
        "{verdict}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthcheck_left_unanswered_is_a_violation() {
    let script = Script {
        mute: true,
        ..Script::default()
    };
    let verdict = run(start(quick(2)).await, script).await;
    assert!(!verdict.verified, "{verdict}");
    assert!(
        verdict
            .mismatches
            .iter()
            .any(|m| m.contains("unanswered after 500ms on a Global still open")),
        "{verdict}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_team_still_down_after_the_wait_fails_the_run_and_its_fault_is_not_recovered() {
    // This client never pings, so it never finds the zombie: team 1 is
    // still down when the recovery wait runs out. The problems and the
    // fault table must say the same: a failure, not "not observed".
    let zombie = Trigger {
        team: TeamId(1),
        after: 10,
        fault: Fault::Zombie,
    };
    let server = start_with(quick(2), Schedule(vec![zombie])).await;
    let verdict = run(server, Script::default()).await;
    assert!(!verdict.verified, "{verdict}");
    assert!(
        verdict
            .mismatches
            .iter()
            .any(|m| m.contains("not recovered") && m.contains("team 1") && m.contains("zombie")),
        "{verdict}"
    );
    let count = verdict.fault(Fault::Zombie);
    assert_eq!(count.injected, 1, "{verdict}");
    assert_eq!(count.survived + count.not_observed, 0, "{verdict}");
    assert!(
        !verdict.not_observed_why.contains_key(&Fault::Zombie),
        "{verdict}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_impossible_scenario_is_refused_before_binding() {
    let refused = SimServer::start(SimConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        scenario: Scenario {
            messages: u64::MAX,
            rate: 1e-9,
            ..Scenario::default()
        },
        chaos: Chaos::none(),
        schedule: Schedule::none(),
        seed: 1,
        tls: false,
    })
    .await;
    assert!(matches!(
        refused,
        Err(SimError::Scenario(ScenarioError::CannotEndInTime { .. }))
    ));
}
