//! Every rule of docs/PROTOCOL.md, stepped through the core with no sockets, each
//! as its own scenario. Each test asserts the rule directly, then snapshots
//! the commands emitted and the whole world (files in `snapshots/`).

use std::time::Duration;

use serde::Serialize;
use switchboard::bridge::{CLOSE_NORMAL, CloseReason, NetCommand, NetEvent};
use switchboard::core::{AfterClose, LinkState};
use switchboard::protocol::{
    GlobalClientEvent, GlobalServerEvent, TeamId, TeamServerEvent, TeamStats, decode_global_client,
};
use switchboard::reader::Frame;
use switchboard::testkit::Peer;
use switchboard::{ConnId, Snapshot};

const T1: TeamId = TeamId(1);
const T2: TeamId = TeamId(2);
const T3: TeamId = TeamId(3);

#[derive(Serialize)]
struct Record<'a> {
    commands: &'a [NetCommand],
    world: Snapshot,
}

/// Snapshots a scenario's full command stream and final world.
fn snapshot(name: &str, peer: &Peer) {
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path("../snapshots");
    settings.set_prepend_module_to_snapshot(false);
    settings.bind(|| {
        insta::assert_json_snapshot!(
            name,
            Record {
                commands: &peer.commands,
                world: peer.core.snapshot(),
            }
        );
    });
}

fn team(peer: &Peer, id: TeamId) -> switchboard::TeamSnapshot {
    peer.core
        .snapshot()
        .teams
        .into_iter()
        .find(|t| t.id == id)
        .expect("team is known")
}

fn healthcheck_replies(commands: &[NetCommand]) -> Vec<Vec<TeamStats>> {
    commands
        .iter()
        .filter_map(|c| match c {
            NetCommand::Send { text, .. } => match decode_global_client(text.as_str()) {
                Ok(GlobalClientEvent::Healthcheck { stats }) => Some(stats.to_vec()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

fn closes(commands: &[NetCommand]) -> Vec<ConnId> {
    commands
        .iter()
        .filter_map(|c| match c {
            NetCommand::Close { conn, code } => {
                assert_eq!(*code, CLOSE_NORMAL);
                Some(*conn)
            }
            _ => None,
        })
        .collect()
}

fn aborts(commands: &[NetCommand]) -> Vec<ConnId> {
    commands
        .iter()
        .filter_map(|c| match c {
            NetCommand::Abort { conn } => Some(*conn),
            _ => None,
        })
        .collect()
}

fn opens_for(commands: &[NetCommand], team: TeamId) -> Vec<String> {
    commands
        .iter()
        .filter_map(|c| match c {
            NetCommand::Open {
                kind: switchboard::ConnKind::Team(t),
                url,
                ..
            } if *t == team => Some(url.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn happy_path_from_the_brief() {
    let mut peer = Peer::new(1);
    peer.open_global();
    peer.join(T1);
    assert_eq!(peer.requests(), vec![T1], "one team.connect per join");
    peer.connect_team(T1);
    assert_eq!(
        opens_for(&peer.commands, T1),
        vec!["ws://sim/team/1".to_owned()],
        "the brief's http:// URL is opened as ws://"
    );
    for text in ["hello", "props to you", "nice props", "bye"] {
        peer.message(T1, text);
    }
    peer.step();
    // One ping after the interval; its pong gives a round-trip time.
    peer.advance(Duration::from_secs(1));
    let conn = peer.team_conn(T1);
    let pings = peer.pings_on(conn);
    assert_eq!(pings, vec![1]);
    peer.step_n(3);
    peer.team_says(
        T1,
        TeamServerEvent::Pong {
            unique_id: pings[0],
        },
    );
    peer.step();
    // Ping sent at open+1000ms, answered 5 ticks later.
    assert_eq!(team(&peer, T1).health.rtt_ms, Some(50));
    peer.global_says(GlobalServerEvent::Healthcheck);
    peer.step();
    assert_eq!(
        healthcheck_replies(&peer.commands),
        vec![vec![TeamStats {
            id: T1,
            connected: true,
            message_count: 4,
            props_count: 2
        }]]
    );
    peer.team_says(T1, TeamServerEvent::TeamLeft { team_id: T1 });
    peer.step();
    assert_eq!(
        closes(&peer.commands),
        vec![conn],
        "the client closes the team socket"
    );
    peer.closed(conn, CloseReason::Local);
    peer.step();
    assert_eq!(team(&peer, T1).link, LinkState::Left);
    peer.global_says(GlobalServerEvent::Goodbye);
    peer.step();
    assert_eq!(closes(&peer.commands), vec![conn, peer.global_conn()]);
    assert!(!peer.core.is_finished(), "Global still closing");
    peer.closed(peer.global_conn(), CloseReason::Local);
    peer.step();
    assert!(peer.core.is_finished());
    snapshot("happy_path_from_the_brief", &peer);
}

#[test]
fn duplicate_team_join_changes_nothing() {
    let mut peer = Peer::new(2);
    peer.open_global();
    peer.join(T1);
    peer.join(T1); // while requesting
    assert_eq!(peer.requests(), vec![T1]);
    peer.connect_team(T1);
    peer.join(T1); // while open
    peer.global_says(GlobalServerEvent::TeamJoin { team_id: T1 });
    peer.global_says(GlobalServerEvent::TeamJoin { team_id: T1 });
    peer.step();
    assert_eq!(peer.requests(), vec![T1], "at most one request per team");
    assert_eq!(opens_for(&peer.commands, T1).len(), 1, "at most one socket");
    assert!(team(&peer, T1).connected);
    assert_eq!(peer.core.stats().ignored["duplicate team.join"], 4);
    snapshot("duplicate_team_join_changes_nothing", &peer);
}

#[test]
fn team_left_on_global_closes_the_socket_and_keeps_stats() {
    let mut peer = Peer::with_teams(3, &[T1]);
    peer.message(T1, "props");
    peer.step();
    let conn = peer.team_conn(T1);
    peer.global_says(GlobalServerEvent::TeamLeft { team_id: T1 });
    // A message already in flight on the team socket still counts while the
    // close handshake runs.
    peer.message(T1, "late props");
    peer.step();
    assert_eq!(closes(&peer.commands), vec![conn]);
    let t = team(&peer, T1);
    assert!(!t.connected, "a closing socket is not connected");
    assert_eq!(t.counters.message_count, 2);
    peer.closed(conn, CloseReason::Remote { code: 1000 });
    peer.step();
    peer.advance(Duration::from_secs(5));
    assert_eq!(team(&peer, T1).link, LinkState::Left);
    assert_eq!(
        peer.requests(),
        vec![T1],
        "a team that left is never reconnected"
    );
    peer.global_says(GlobalServerEvent::Healthcheck);
    peer.step();
    assert_eq!(
        healthcheck_replies(&peer.commands)[0],
        vec![TeamStats {
            id: T1,
            connected: false,
            message_count: 2,
            props_count: 2
        }]
    );
    snapshot(
        "team_left_on_global_closes_the_socket_and_keeps_stats",
        &peer,
    );
}

#[test]
fn team_left_on_the_team_socket_closes_it_and_never_reconnects() {
    let mut peer = Peer::with_teams(4, &[T1]);
    let conn = peer.team_conn(T1);
    peer.team_says(T1, TeamServerEvent::TeamLeft { team_id: T1 });
    peer.step();
    assert_eq!(closes(&peer.commands), vec![conn]);
    // The server drops the socket instead of answering the close: still left.
    peer.closed(conn, CloseReason::Reset);
    peer.step();
    peer.advance(Duration::from_secs(5));
    assert_eq!(team(&peer, T1).link, LinkState::Left);
    assert_eq!(team(&peer, T1).health.reconnects, 0);
    assert_eq!(opens_for(&peer.commands, T1).len(), 1);
    snapshot(
        "team_left_on_the_team_socket_closes_it_and_never_reconnects",
        &peer,
    );
}

#[test]
fn close_handshake_that_never_finishes_is_aborted() {
    let mut peer = Peer::with_teams(5, &[T1]);
    let conn = peer.team_conn(T1);
    peer.global_says(GlobalServerEvent::TeamLeft { team_id: T1 });
    peer.step();
    peer.advance(Duration::from_secs(2));
    assert_eq!(aborts(&peer.commands), vec![conn]);
    assert_eq!(team(&peer, T1).link, LinkState::Left);
    // Held until the aborted socket reports its end.
    assert_eq!(peer.core.snapshot().live_connections, 2);
    peer.settle();
    assert_eq!(peer.core.snapshot().live_connections, 1, "only Global");
}

#[test]
fn rejoin_after_leave_continues_the_counters() {
    let mut peer = Peer::with_teams(6, &[T1]);
    peer.message(T1, "one props");
    peer.message(T1, "two");
    peer.team_says(T1, TeamServerEvent::TeamLeft { team_id: T1 });
    peer.step();
    let first = peer.team_conn(T1);
    // Rejoin while the old socket is still closing: no second socket yet.
    peer.join(T1);
    assert_eq!(peer.requests(), vec![T1]);
    assert_eq!(
        team(&peer, T1).link,
        LinkState::Closing {
            conn: first,
            deadline: team_deadline(&peer),
            after: AfterClose::Rejoin
        }
    );
    peer.closed(first, CloseReason::Local);
    peer.step();
    assert_eq!(
        peer.requests(),
        vec![T1, T1],
        "re-requested once the old socket is gone"
    );
    peer.connect_team(T1);
    assert_ne!(peer.team_conn(T1), first);
    peer.message(T1, "three props");
    peer.step();
    let t = team(&peer, T1);
    assert!(t.connected);
    assert_eq!((t.counters.message_count, t.counters.props_count), (3, 2));
    snapshot("rejoin_after_leave_continues_the_counters", &peer);
}

fn team_deadline(peer: &Peer) -> u64 {
    match team(peer, T1).link {
        LinkState::Closing { deadline, .. } => deadline,
        other => panic!("not closing: {other:?}"),
    }
}

#[test]
fn error_for_team_connect_retries_with_backoff() {
    let mut peer = Peer::new(7);
    peer.open_global();
    peer.join(T1);
    peer.global_says(GlobalServerEvent::Error {
        message: "team not ready".into(),
        received_message: Some(serde_json::json!({"type":"team.connect","team_id":1})),
        team_id: None,
    });
    peer.step();
    let LinkState::Backoff { until } = team(&peer, T1).link else {
        panic!("backing off");
    };
    let now = peer.core.now().as_millis() as u64;
    assert!(
        until >= now && until <= now + 100,
        "first backoff ≤ backoff_min"
    );
    // An unrelated error is only logged.
    peer.global_says(GlobalServerEvent::Error {
        message: "whatever".into(),
        received_message: Some(serde_json::json!({"type":"healthcheck"})),
        team_id: Some(T1),
    });
    peer.advance(Duration::from_millis(110));
    assert_eq!(peer.requests(), vec![T1, T1], "retried after the backoff");
    peer.connect_team(T1);
    assert!(team(&peer, T1).connected);
    assert_eq!(
        team(&peer, T1).health.attempts,
        1,
        "a hello forgives nothing"
    );
    // Up a ping interval, and it answered: the failure is forgiven.
    let conn = peer.team_conn(T1);
    peer.step_until("first ping", |p| !p.pings_on(conn).is_empty());
    let id = peer.pings_on(conn)[0];
    peer.team_says(T1, TeamServerEvent::Pong { unique_id: id });
    peer.step_until("second ping", |p| p.pings_on(conn).len() == 2);
    assert_eq!(team(&peer, T1).health.attempts, 0, "stable: forgiven");
    assert_eq!(peer.core.stats().server_errors, 2);
    snapshot("error_for_team_connect_retries_with_backoff", &peer);
}

#[test]
fn backoff_grows_exponentially_with_full_jitter_up_to_the_max() {
    let mut peer = Peer::new(8);
    peer.open_global();
    peer.join(T1);
    let mut delays = Vec::new();
    for _ in 0..8 {
        peer.global_says(GlobalServerEvent::Error {
            message: "no".into(),
            received_message: Some(serde_json::json!({"type":"team.connect","team_id":1})),
            team_id: Some(T1),
        });
        peer.step();
        let now = peer.core.now().as_millis() as u64;
        let LinkState::Backoff { until } = team(&peer, T1).link else {
            panic!("backing off");
        };
        delays.push(until - now);
        peer.step_until_requested(T1);
    }
    for (attempt, delay) in delays.iter().enumerate() {
        let ceiling = (100u64 << attempt).min(1000);
        assert!(*delay <= ceiling, "attempt {attempt}: {delay} > {ceiling}");
    }
    assert_eq!(peer.requests().len(), 9);
    insta::with_settings!({snapshot_path => "../snapshots", prepend_module_to_snapshot => false}, {
        insta::assert_json_snapshot!("backoff_delays_seed_8", delays);
    });
}

#[test]
fn team_drop_is_re_requested_and_counts_are_kept() {
    let mut peer = Peer::with_teams(9, &[T1]);
    peer.message(T1, "props");
    peer.step();
    let first = peer.team_conn(T1);
    peer.closed(first, CloseReason::Remote { code: 1011 });
    peer.step();
    assert!(!team(&peer, T1).connected);
    assert!(matches!(team(&peer, T1).link, LinkState::Backoff { .. }));
    peer.step_until_requested(T1);
    // A frame on the dropped socket after its end (which no transport
    // sends) is not counted.
    peer.push(NetEvent::Messages {
        conn: first,
        first: 1,
        count: 1,
        props: 0,
    });
    peer.connect_team(T1);
    peer.message(T1, "again props");
    peer.step();
    let t = team(&peer, T1);
    assert!(t.connected);
    assert_eq!(t.health.reconnects, 1);
    assert_eq!((t.counters.message_count, t.counters.props_count), (2, 2));
    assert_eq!(peer.core.stats().stale_events, 1);
    snapshot("team_drop_is_re_requested_and_counts_are_kept", &peer);
}

#[test]
fn connect_failure_and_connect_timeout_retry() {
    let mut peer = Peer::new(10);
    peer.open_global();
    peer.join(T1);
    peer.global_says(GlobalServerEvent::TeamConnect {
        team_id: T1,
        ws_url: "ws://sim/t/1".into(),
    });
    peer.step();
    let first = peer.team_conn(T1);
    peer.push(NetEvent::OpenFailed {
        conn: first,
        error: "connection refused".into(),
    });
    peer.step();
    assert!(matches!(team(&peer, T1).link, LinkState::Backoff { .. }));
    peer.step_until_requested(T1);
    peer.global_says(GlobalServerEvent::TeamConnect {
        team_id: T1,
        ws_url: "ws://sim/t/1b".into(),
    });
    peer.step();
    let second = peer.team_conn(T1);
    // The socket never opens: abandoned after connect_timeout (2s).
    peer.advance(Duration::from_secs(2));
    assert_eq!(aborts(&peer.commands), vec![second]);
    assert_eq!(
        team(&peer, T1).health.last_error.as_deref(),
        Some("connect timeout")
    );
    snapshot("connect_failure_and_connect_timeout_retry", &peer);
}

#[test]
fn unrequested_or_unusable_team_connect_is_not_opened() {
    let mut peer = Peer::new(11);
    peer.open_global();
    // Never joined.
    peer.global_says(GlobalServerEvent::TeamConnect {
        team_id: T2,
        ws_url: "ws://sim/t/2".into(),
    });
    peer.join(T1);
    peer.connect_team(T1);
    // Already open: a second answer must not open a second socket.
    peer.global_says(GlobalServerEvent::TeamConnect {
        team_id: T1,
        ws_url: "ws://sim/t/1-again".into(),
    });
    // A bad scheme is bad input for that team: retried with backoff.
    peer.join(T3);
    peer.global_says(GlobalServerEvent::TeamConnect {
        team_id: T3,
        ws_url: "ftp://sim/t/3".into(),
    });
    peer.step();
    assert_eq!(opens_for(&peer.commands, T1).len(), 1);
    assert!(opens_for(&peer.commands, T2).is_empty());
    assert!(opens_for(&peer.commands, T3).is_empty());
    assert!(matches!(team(&peer, T3).link, LinkState::Backoff { .. }));
    assert_eq!(peer.core.stats().ignored["unrequested team.connect"], 2);
    peer.step_until_requested(T3);
    snapshot("unrequested_or_unusable_team_connect_is_not_opened", &peer);
}

#[test]
fn pong_timeout_declares_a_silent_link_dead() {
    let mut peer = Peer::with_teams(12, &[T1]);
    let conn = peer.team_conn(T1);
    peer.advance(Duration::from_secs(1));
    assert_eq!(peer.pings_on(conn).len(), 1);
    // Nothing at all for the pong timeout (500ms) after the ping.
    peer.advance(Duration::from_millis(500));
    assert_eq!(
        aborts(&peer.commands),
        vec![conn],
        "dropped at once, no handshake"
    );
    assert!(matches!(team(&peer, T1).link, LinkState::Backoff { .. }));
    assert_eq!(peer.core.stats().dead_links, 1);
    peer.step_until_requested(T1);
    // Detected within ping interval + pong timeout of the last sign of life.
    snapshot("pong_timeout_declares_a_silent_link_dead", &peer);
}

/// A driver steps at once, with no time in the step, for an event that
/// arrives between ticks; an answer heard so is still after its ping.
#[test]
fn a_pong_heard_in_a_step_with_no_time_answers_the_ping() {
    let mut peer = Peer::with_teams(14, &[T1]);
    let conn = peer.team_conn(T1);
    peer.advance(Duration::from_secs(1));
    let pinged = peer.core.now();
    let [id] = peer.pings_on(conn)[..] else {
        panic!("one ping")
    };
    peer.team_says(T1, TeamServerEvent::Pong { unique_id: id });
    peer.settle();
    assert_eq!(
        peer.core.now(),
        pinged,
        "answered within the ping's millisecond"
    );
    // Past the pong timeout, before the next ping's.
    peer.advance(Duration::from_millis(700));
    assert_eq!(peer.core.stats().dead_links, 0, "the pong answered it");
    assert!(team(&peer, T1).connected);
}

/// The same for Global's websocket probe: the probe's answer can land in
/// the same millisecond on loopback.
#[test]
fn a_global_probe_answered_in_a_step_with_no_time_keeps_the_link() {
    let mut peer = Peer::with_teams(27, &[T1]);
    let global = peer.global_conn();
    while probes(&peer.commands) == 0 {
        for id in peer.pings_on(peer.team_conn(T1)) {
            peer.team_says(T1, TeamServerEvent::Pong { unique_id: id });
        }
        peer.step();
    }
    // The peer has pushed the probe's answer; take it at the same instant.
    let probed = peer.core.now();
    peer.settle();
    assert_eq!(peer.core.now(), probed);
    peer.answer_probes = false;
    peer.advance(Duration::from_millis(700));
    assert_eq!(
        peer.global_conn(),
        global,
        "Global kept: its probe was answered"
    );
    assert_eq!(peer.core.global().connects(), 1);
}

#[test]
fn a_busy_link_whose_pong_is_late_is_not_torn_down() {
    let mut peer = Peer::with_teams(13, &[T1]);
    let conn = peer.team_conn(T1);
    // The server never answers pings but keeps sending messages.
    for _ in 0..500 {
        peer.message(T1, "busy");
        peer.step();
    }
    assert!(peer.pings_on(conn).len() >= 4);
    assert!(aborts(&peer.commands).is_empty());
    let t = team(&peer, T1);
    assert!(t.connected);
    assert_eq!(t.counters.message_count, 500);
    assert_eq!(peer.core.stats().dead_links, 0);
}

#[test]
fn unanswered_pings_are_bounded() {
    let mut peer = Peer::with_teams(14, &[T1]);
    for _ in 0..4_000 {
        peer.message(T1, "busy");
        peer.step();
    }
    let conn = peer.team_conn(T1);
    assert!(peer.pings_on(conn).len() > 30);
    // Not visible in the snapshot; assert through a late pong for an old id:
    // it is unknown (dropped from the window) and gives no RTT.
    peer.team_says(T1, TeamServerEvent::Pong { unique_id: 1 });
    peer.step();
    assert_eq!(team(&peer, T1).health.rtt_ms, None);
    let latest = *peer.pings_on(conn).last().expect("pinged");
    peer.team_says(T1, TeamServerEvent::Pong { unique_id: latest });
    peer.step();
    assert!(team(&peer, T1).health.rtt_ms.is_some());
}

#[test]
fn global_drop_reopens_and_replayed_joins_are_idempotent() {
    let mut peer = Peer::with_teams(15, &[T1]);
    peer.join(T2); // request in flight, unanswered when Global drops
    let old_global = peer.global_conn();
    let t1_conn = peer.team_conn(T1);
    peer.closed(old_global, CloseReason::Reset);
    peer.step();
    assert!(matches!(
        peer.core.global().state(),
        switchboard::core::GlobalState::Backoff { .. }
    ));
    assert!(team(&peer, T1).connected, "team sockets stay up meanwhile");
    assert_eq!(team(&peer, T2).link, LinkState::NeedsUrl);
    peer.message(T1, "props during the outage");
    peer.open_global();
    assert_ne!(peer.global_conn(), old_global);
    // The server replays every join after the new hello.
    peer.join(T1);
    peer.join(T2);
    assert_eq!(
        peer.requests(),
        vec![T1, T2, T2],
        "T2 re-requested once, T1 not"
    );
    assert_eq!(peer.team_conn(T1), t1_conn, "no second socket for T1");
    assert_eq!(opens_for(&peer.commands, T1).len(), 1);
    peer.connect_team(T2);
    assert!(team(&peer, T2).connected);
    assert_eq!(team(&peer, T1).counters.message_count, 1);
    snapshot(
        "global_drop_reopens_and_replayed_joins_are_idempotent",
        &peer,
    );
}

#[test]
fn global_that_cannot_be_reached_keeps_retrying() {
    let mut peer = Peer::new(16);
    let mut opened = 0;
    for _ in 0..5 {
        let before = peer.global;
        peer.step_until("Global reopened", |p| p.global != before);
        opened += 1;
        peer.push(NetEvent::OpenFailed {
            conn: peer.global_conn(),
            error: "connection refused".into(),
        });
        peer.step();
    }
    assert_eq!(opened, 5);
    assert_eq!(peer.core.global().attempts(), 5);
    let before = peer.global;
    peer.step_until("Global reopened", |p| p.global != before);
    peer.push(NetEvent::Opened {
        conn: peer.global_conn(),
    });
    peer.global_says(GlobalServerEvent::Hello);
    peer.step();
    // A hello proves the socket opened, not that the server is healthy.
    assert_eq!(peer.core.global().attempts(), 5);
    assert!(peer.core.global().ready_conn().is_some());
    // Up and answering for a ping interval: the failures are forgiven.
    peer.advance(Duration::from_millis(1_100));
    assert_eq!(peer.core.global().attempts(), 0);
}

#[test]
fn bad_input_is_counted_and_changes_nothing() {
    let mut peer = Peer::with_teams(17, &[T1]);
    peer.message(T1, "props");
    peer.step();
    let before = peer.core.snapshot();
    // One frame of every class of bad input, on each connection.
    let (global, t1) = (peer.global_conn(), peer.team_conn(T1));
    for conn in [global, t1] {
        peer.frame(conn, Frame::Binary(3));
        for text in ["{not json", "[1,2]", "{}", r#"{"type":"surprise"}"#] {
            peer.frame(conn, Frame::Text(text));
        }
    }
    peer.global_text(r#"{"type":"team.join"}"#);
    peer.global_text(r#"{"type":"team.join","team_id":"one"}"#);
    peer.team_text(T1, r#"{"type":"message"}"#);
    peer.team_text(T1, r#"{"type":"message","text":3}"#);
    peer.step();
    let after = peer.core.snapshot();
    assert_eq!(after.stats.bad_global.values().sum::<u64>(), 7);
    assert_eq!(after.stats.bad_team.values().sum::<u64>(), 7);
    assert_eq!(after.teams[0].health.bad_frames, 7);
    assert_eq!(
        after.teams[0].counters.message_count,
        before.teams[0].counters.message_count
    );
    assert!(after.teams[0].connected);
    assert_eq!(after.global.state(), before.global.state());
    assert!(
        peer.take_new()
            .iter()
            .all(|c| !matches!(c, NetCommand::Close { .. } | NetCommand::Abort { .. })),
        "no healthy connection is closed"
    );
    snapshot("bad_input_is_counted_and_changes_nothing", &peer);
}

#[test]
fn healthcheck_lists_every_team_ever_joined_sorted_by_id() {
    let mut peer = Peer::new(18);
    peer.open_global();
    for id in [TeamId(30), TeamId(4), TeamId(17)] {
        peer.join(id);
    }
    peer.connect_team(TeamId(17));
    peer.connect_team(TeamId(4));
    peer.message(TeamId(4), "props");
    peer.message(TeamId(17), "x");
    peer.global_says(GlobalServerEvent::TeamLeft {
        team_id: TeamId(17),
    });
    // Two requests in one tick: two replies, in order, both after the
    // tick's messages were counted.
    peer.global_says(GlobalServerEvent::Healthcheck);
    peer.global_says(GlobalServerEvent::Healthcheck);
    peer.step();
    let replies = healthcheck_replies(&peer.commands);
    assert_eq!(replies.len(), 2);
    assert_eq!(replies[0], replies[1]);
    assert_eq!(
        replies[0],
        vec![
            TeamStats {
                id: TeamId(4),
                connected: true,
                message_count: 1,
                props_count: 1
            },
            TeamStats {
                id: TeamId(17),
                connected: false,
                message_count: 1,
                props_count: 0
            },
            TeamStats {
                id: TeamId(30),
                connected: false,
                message_count: 0,
                props_count: 0
            },
        ]
    );
    snapshot(
        "healthcheck_lists_every_team_ever_joined_sorted_by_id",
        &peer,
    );
}

#[test]
fn goodbye_closes_every_socket_and_finishes() {
    let mut peer = Peer::with_teams(19, &[T1]);
    peer.join(T2);
    peer.connect_team(T2);
    peer.join(T3); // still requesting
    let (c1, c2, g) = (peer.team_conn(T1), peer.team_conn(T2), peer.global_conn());
    peer.global_says(GlobalServerEvent::Healthcheck);
    peer.global_says(GlobalServerEvent::Goodbye);
    // Anything after goodbye is not acted on.
    peer.global_says(GlobalServerEvent::TeamJoin {
        team_id: TeamId(99),
    });
    peer.step();
    let mut closed = closes(&peer.commands);
    closed.sort();
    assert_eq!(closed, vec![g, c1, c2]);
    let new = peer.take_new();
    let last = new.last().expect("commands");
    assert!(
        matches!(last, NetCommand::Close { conn, .. } if *conn == g),
        "Global closes last, after the healthcheck reply: {new:?}"
    );
    assert_eq!(healthcheck_replies(&new).len(), 1);
    for conn in [c1, c2, g] {
        peer.closed(conn, CloseReason::Local);
    }
    peer.step();
    assert!(peer.core.is_finished());
    assert_eq!(
        peer.core.snapshot().teams.len(),
        3,
        "team 99 never admitted"
    );
    peer.advance(Duration::from_secs(5));
    assert!(
        peer.take_new().is_empty(),
        "nothing is reopened after goodbye"
    );
    snapshot("goodbye_closes_every_socket_and_finishes", &peer);
}

#[test]
fn a_team_that_left_stays_left_when_goodbye_comes_mid_close() {
    let mut peer = Peer::with_teams(23, &[T1]);
    let conn = peer.team_conn(T1);
    peer.team_says(T1, TeamServerEvent::TeamLeft { team_id: T1 });
    peer.step();
    peer.global_says(GlobalServerEvent::Goodbye);
    peer.step();
    peer.closed(conn, CloseReason::Local);
    peer.closed(peer.global_conn(), CloseReason::Local);
    peer.step();
    assert!(peer.core.is_finished());
    assert_eq!(team(&peer, T1).link, LinkState::Left);
}

#[test]
fn local_shutdown_is_graceful_and_bounded() {
    let mut peer = Peer::with_teams(20, &[T1]);
    peer.core.shutdown();
    peer.step();
    assert_eq!(closes(&peer.commands).len(), 2);
    // Nobody answers the close frames: everything is dropped at close_timeout,
    // and the run is over once the dropped sockets report their end.
    peer.advance(Duration::from_secs(2));
    assert!(!peer.core.is_finished());
    peer.settle();
    assert!(peer.core.is_finished());
    assert_eq!(aborts(&peer.commands).len(), 2);
}

#[test]
fn requests_in_flight_are_capped() {
    let config = switchboard::Config {
        max_requests_in_flight: 3,
        ..switchboard::testkit::test_config()
    };
    let mut peer = Peer::with_config(&config, 21);
    peer.open_global();
    for id in 1..=10 {
        peer.global_says(GlobalServerEvent::TeamJoin {
            team_id: TeamId(id),
        });
    }
    peer.step();
    assert_eq!(peer.requests(), vec![TeamId(1), TeamId(2), TeamId(3)]);
    peer.connect_team(TeamId(2));
    assert_eq!(peer.requests().len(), 4, "a freed slot is reused");
}

#[test]
fn requests_wait_for_hello() {
    let mut peer = Peer::new(22);
    peer.step();
    let g = peer.global_conn();
    peer.push(NetEvent::Opened { conn: g });
    peer.step();
    assert!(peer.core.global().ready_conn().is_none());
    peer.global_says(GlobalServerEvent::TeamJoin { team_id: T1 });
    peer.step();
    // A team.join shows the server is talking even without hello.
    assert_eq!(peer.requests(), vec![T1]);
}

#[test]
fn healthcheck_before_hello_is_still_answered() {
    let mut peer = Peer::new(24);
    peer.step();
    let g = peer.global_conn();
    peer.push(NetEvent::Opened { conn: g });
    peer.global_says(GlobalServerEvent::Healthcheck);
    peer.step();
    assert!(peer.core.global().ready_conn().is_none(), "no hello yet");
    assert_eq!(healthcheck_replies(&peer.commands), vec![vec![]]);
}

#[test]
fn team_left_naming_another_team_is_bad_input() {
    let mut peer = Peer::with_teams(25, &[T1, T2]);
    peer.team_says(T1, TeamServerEvent::TeamLeft { team_id: T2 });
    peer.step();
    assert!(closes(&peer.commands).is_empty(), "neither team is closed");
    assert!(team(&peer, T1).connected && team(&peer, T2).connected);
    assert_eq!(team(&peer, T1).health.bad_frames, 1);
    assert_eq!(peer.core.stats().bad_team["team_left_mismatch"], 1);
}

fn probes(commands: &[NetCommand]) -> usize {
    commands
        .iter()
        .filter(|c| matches!(c, NetCommand::Probe { .. }))
        .count()
}

#[test]
fn a_silent_global_is_probed_then_dropped_and_reopened() {
    let mut peer = Peer::with_teams(26, &[T1]);
    peer.answer_probes = false;
    let old = peer.global_conn();
    // The team keeps answering pings; only Global goes silent.
    let deadline = peer.core.now() + Duration::from_millis(1600);
    while peer.core.now() < deadline {
        for id in peer.pings_on(peer.team_conn(T1)) {
            peer.team_says(T1, TeamServerEvent::Pong { unique_id: id });
        }
        peer.step();
    }
    assert_eq!(probes(&peer.commands), 1, "probed once after 1s of quiet");
    assert_eq!(aborts(&peer.commands), vec![old], "dropped 500ms later");
    assert!(team(&peer, T1).connected, "team sockets stay up");
    // The reopen may already have been asked for during the loop.
    peer.step_until("Global reopened", |p| p.global != Some(old));
    let new = peer.global_conn();
    peer.push(NetEvent::Opened { conn: new });
    peer.global_says(GlobalServerEvent::Hello);
    peer.step();
    assert_eq!(peer.core.global().ready_conn(), Some(new));
    assert!(team(&peer, T1).connected);
    assert_eq!(aborts(&peer.commands), vec![old], "nothing else dropped");
    snapshot("a_silent_global_is_probed_then_dropped_and_reopened", &peer);
}

#[test]
fn a_quiet_global_that_answers_probes_stays_up() {
    let mut peer = Peer::new(27);
    peer.open_global();
    peer.advance(Duration::from_secs(10));
    let n = probes(&peer.commands);
    assert!(
        (8..=10).contains(&n),
        "about one probe per quiet second: {n}"
    );
    assert!(aborts(&peer.commands).is_empty());
    assert_eq!(peer.core.global().connects(), 1);
}

#[test]
fn a_talking_global_is_never_probed() {
    let mut peer = Peer::new(28);
    peer.open_global();
    for _ in 0..50 {
        peer.global_says(GlobalServerEvent::Healthcheck);
        peer.advance(Duration::from_millis(200));
    }
    assert_eq!(probes(&peer.commands), 0);
}

#[test]
fn settle_does_everything_queued_without_time_passing() {
    let mut peer = Peer::new(29);
    peer.settle();
    assert!(peer.global.is_some(), "opening Global is work at t=0");
    let g = peer.global_conn();
    peer.push(NetEvent::Opened { conn: g });
    peer.global_says(GlobalServerEvent::Hello);
    for id in 1..=3 {
        peer.global_says(GlobalServerEvent::TeamJoin {
            team_id: TeamId(id),
        });
    }
    peer.global_says(GlobalServerEvent::Healthcheck);
    let before = peer.core.now();
    peer.settle();
    assert_eq!(peer.core.now(), before, "no time passed");
    assert_eq!(peer.requests(), vec![TeamId(1), TeamId(2), TeamId(3)]);
    assert_eq!(healthcheck_replies(&peer.commands).len(), 1);
    assert!(!peer.core.has_pending_work());
}

#[test]
fn next_deadline_lets_a_test_jump_straight_to_the_next_ping() {
    let mut peer = Peer::with_teams(30, &[T1]);
    let conn = peer.team_conn(T1);
    let opened = team(&peer, T1).health.last_activity;
    // Stale connect-phase deadlines may come first; jump until the ping.
    let mut jumps = 0;
    while peer.pings_on(conn).is_empty() {
        let at = peer.jump_to_next_deadline().expect("a deadline");
        assert!(
            at <= Duration::from_millis(opened + 1_000),
            "never late: {at:?}"
        );
        jumps += 1;
        assert!(jumps < 10, "reached the ping in a few jumps");
    }
    assert_eq!(peer.core.now(), Duration::from_millis(opened + 1_000));
    assert!(jumps < 10);
}

/// Plays one fixed script, with faults, through a core.
fn scripted_run(seed: u64) -> (Vec<NetCommand>, String) {
    let mut peer = Peer::new(seed);
    peer.open_global();
    for id in 1..=5 {
        peer.join(TeamId(id));
        peer.connect_team(TeamId(id));
    }
    for round in 0..50u64 {
        for id in 1..=5 {
            peer.message(TeamId(id), if round % 3 == 0 { "props" } else { "m" });
        }
        if round % 7 == 0 {
            let id = TeamId(1 + round % 5);
            peer.closed(peer.team_conn(id), CloseReason::Reset);
        }
        peer.step_n(5);
        for id in 1..=5 {
            let team = TeamId(id);
            if matches!(team_link(&peer, team), LinkState::Requesting { .. }) {
                peer.connect_team(team);
            }
        }
    }
    let json = serde_json::to_string(&peer.core.snapshot()).expect("serialises");
    (peer.commands, json)
}

fn team_link(peer: &Peer, id: TeamId) -> LinkState {
    team(peer, id).link
}

#[test]
fn same_inputs_and_seed_give_identical_commands_and_snapshots() {
    let (a_cmds, a_snap) = scripted_run(42);
    let (b_cmds, b_snap) = scripted_run(42);
    assert_eq!(a_cmds, b_cmds);
    assert_eq!(a_snap, b_snap);
    let (_, other) = scripted_run(43);
    assert_ne!(a_snap, other, "the seed drives the jitter");
}

#[test]
fn restored_teams_resume_their_counts_and_reconnect_unless_global_disowns_them() {
    use switchboard::store::SavedTeam;
    let mut peer = Peer::new(31);
    let saved = [
        SavedTeam {
            id: T1,
            joined: true,
            message_count: 40,
            props_count: 4,
            socket: None,
            unreported: Vec::new(),
        },
        SavedTeam {
            id: T2,
            joined: true,
            message_count: 7,
            props_count: 0,
            socket: None,
            unreported: Vec::new(),
        },
        SavedTeam {
            id: T3,
            joined: false,
            message_count: 9,
            props_count: 9,
            socket: None,
            unreported: Vec::new(),
        },
    ];
    peer.core
        .restore(&saved)
        .expect("restored before the first step");
    peer.open_global();
    // Joined teams ask for their URLs as soon as Global is ready; the one
    // that had left waits for a join.
    assert_eq!(peer.requests(), vec![T1, T2]);
    let stats = peer.core.healthcheck();
    assert_eq!(
        stats
            .iter()
            .map(|s| (s.id, s.connected, s.message_count))
            .collect::<Vec<_>>(),
        vec![(T1, false, 40), (T2, false, 7), (T3, false, 9)]
    );
    // Global confirms T1 and connects it; it does not know T2 any more.
    peer.join(T1);
    peer.connect_team(T1);
    peer.message(T1, "props");
    peer.global_says(GlobalServerEvent::Error {
        message: "team is not joined".into(),
        received_message: Some(serde_json::json!({"type": "team.connect", "team_id": 2})),
        team_id: Some(T2),
    });
    peer.step();
    assert_eq!(team(&peer, T1).counters.message_count, 41);
    assert!(team(&peer, T1).connected);
    assert_eq!(
        team(&peer, T2).link,
        LinkState::Left,
        "disowned: waits for a join"
    );
    peer.advance(Duration::from_secs(3));
    let asked_for_t2 = peer.requests().iter().filter(|&&t| t == T2).count();
    assert_eq!(asked_for_t2, 1, "no retries for a team that left");
    assert_eq!(
        peer.core.restore(&saved),
        Err(switchboard::core::RestoreError::AlreadyRunning)
    );
    snapshot("restored_teams_resume_their_counts_and_reconnect", &peer);
}

#[test]
fn adopted_sockets_stay_open_and_add_exactly_what_the_copy_missed() {
    use switchboard::core::{AdoptedSocket, SocketMark};
    use switchboard::store::SavedTeam;
    let mut peer = Peer::new(32);
    let mark = |conn, messages, props| {
        Some(SocketMark {
            conn: ConnId(conn),
            messages,
            props,
        })
    };
    // The old leader's last copy: T1's counts include 30 messages (3
    // props) of socket 7; T2's include 20 of socket 5.
    peer.core
        .restore(&[
            SavedTeam {
                id: T1,
                joined: true,
                message_count: 100,
                props_count: 10,
                socket: mark(7, 30, 3),
                unreported: Vec::new(),
            },
            SavedTeam {
                id: T2,
                joined: true,
                message_count: 50,
                props_count: 5,
                socket: mark(5, 20, 2),
                unreported: Vec::new(),
            },
        ])
        .expect("restored");
    let socket = |team, conn, messages, props, open| AdoptedSocket {
        team,
        conn: ConnId(conn),
        messages,
        props,
        open,
    };
    let refused = peer
        .adopt(&[
            // Socket 7 read 15 more (1 props) after the copy.
            socket(T1, 7, 45, 4, true),
            // Socket 5 ended with nothing new; socket 9 opened after the copy.
            socket(T2, 5, 20, 2, false),
            socket(T2, 9, 6, 1, true),
            // A team the copy does not know: joined, from zero; a second
            // open socket for it is refused.
            socket(T3, 11, 2, 0, true),
            socket(T3, 12, 1, 0, true),
            // An earlier socket of T1's, fully counted already.
            socket(T1, 3, 80, 8, false),
        ])
        .expect("adopted before the first step");
    assert_eq!(refused, vec![ConnId(12)]);
    let counts = |peer: &Peer, id| {
        let t = team(peer, id);
        (
            t.counters.message_count,
            t.counters.props_count,
            t.connected,
        )
    };
    assert_eq!(counts(&peer, T1), (115, 11, true));
    assert_eq!(counts(&peer, T2), (56, 6, true));
    assert_eq!(counts(&peer, T3), (2, 0, true));
    peer.open_global();
    assert!(
        peer.global_conn() > ConnId(12),
        "new ids above every adopted one"
    );
    // Global replays its joins: nothing is requested, nothing reopened.
    for id in [T1, T2, T3] {
        peer.join(id);
    }
    assert_eq!(peer.requests(), Vec::<TeamId>::new());
    assert!(
        !peer
            .commands
            .iter()
            .any(|c| matches!(c, NetCommand::Open { conn, .. } if *conn != peer.global_conn())),
        "no team socket reopened"
    );
    // Traffic on an adopted socket counts; its pings go out on it.
    peer.messages(T1, 5, 2);
    peer.step();
    assert_eq!(counts(&peer, T1), (120, 13, true));
    peer.advance(Duration::from_secs(30));
    assert!(peer.commands.iter().any(|c| matches!(c,
        NetCommand::Send { conn, text } if *conn == ConnId(7) && text.as_str().contains("ping"))));
    assert_eq!(
        peer.adopt(&[]),
        Err(switchboard::core::RestoreError::AlreadyRunning)
    );
}

/// The old leader gave a lost worker's socket up and counted the team's
/// next socket, but died before the worker's late report of the first came:
/// its copy of the counts names the first as unreported, so the next leader
/// adds exactly what that report brings, though a later socket is marked.
#[test]
fn a_late_report_the_old_leader_never_got_adds_exactly_what_it_lacks() {
    use switchboard::core::{AdoptedSocket, SocketMark};
    let mut old = Peer::with_teams(34, &[T1]);
    old.messages(T1, 10, 2);
    old.step();
    let first = old.team_conn(T1);
    old.closed(first, CloseReason::WorkerLost);
    old.step_until_requested(T1);
    old.connect_team(T1);
    old.messages(T1, 4, 1);
    old.step();
    let second = old.team_conn(T1);
    let saved = old.core.changed_teams();
    let mark = |conn, messages, props| SocketMark {
        conn,
        messages,
        props,
    };
    assert_eq!(saved[0].message_count, 14);
    assert_eq!(saved[0].socket, Some(mark(second, 4, 1)));
    assert_eq!(saved[0].unreported, vec![mark(first, 10, 2)]);
    let socket = |conn, messages, props, open| AdoptedSocket {
        team: T1,
        conn,
        messages,
        props,
        open,
    };
    let mut new = Peer::new(35);
    new.core.restore(&saved).expect("restored");
    new.adopt(&[socket(first, 11, 2, false), socket(second, 6, 1, true)])
        .expect("adopted");
    let counts = |peer: &Peer| {
        let t = team(peer, T1);
        (t.counters.message_count, t.counters.props_count)
    };
    assert_eq!(counts(&new), (14 + 1 + 2, 3));
    // The same report again adds nothing, and the next copy no longer
    // waits for it.
    new.core.late_reports(&[socket(first, 11, 2, false)]);
    assert_eq!(counts(&new), (17, 3));
    let saved = new.core.changed_teams();
    assert!(saved[0].unreported.is_empty(), "{saved:?}");
    // Had the old leader got the report, its copy would not wait either.
    old.core.late_reports(&[socket(first, 11, 2, false)]);
    let saved = old.core.changed_teams();
    assert_eq!((saved[0].message_count, saved[0].unreported.len()), (15, 0));
}

/// Socket ids from outside the core (a saved mark, a worker's report) past
/// 2^53 are not taken: the next ids would run past the top of `u64` and
/// repeat ids in use.
#[test]
fn a_socket_whose_worker_went_quiet_is_not_reported_connected_until_heard_again() {
    let mut peer = Peer::with_teams(41, &[T1, T2]);
    let first = peer.team_conn(T1);
    let connected = |peer: &mut Peer| {
        peer.global_says(GlobalServerEvent::Healthcheck);
        peer.step();
        let replies = healthcheck_replies(&peer.commands);
        let last = replies.last().expect("a reply");
        let of = |id| last.iter().find(|s| s.id == id).expect("listed").connected;
        let fleet = peer.core.summary().connected;
        assert_eq!(fleet, u64::from(of(T1)) + u64::from(of(T2)), "fleet total");
        (of(T1), of(T2), team(peer, T1).connected)
    };
    assert_eq!(connected(&mut peer), (true, true, true));
    // The leader says T1's worker went quiet: not connected anywhere it
    // is reported, but the socket is still the team's: no close, no new
    // request, and what it still reads counts.
    peer.push(NetEvent::Quiet {
        conn: first,
        quiet: true,
    });
    peer.message(T1, "props");
    assert_eq!(connected(&mut peer), (false, true, false));
    assert!(matches!(team(&peer, T1).link, LinkState::Open { conn, .. } if conn == first));
    assert!(closes(&peer.commands).is_empty() && aborts(&peer.commands).is_empty());
    assert_eq!(peer.requests().iter().filter(|&&t| t == T1).count(), 1);
    assert_eq!(team(&peer, T1).counters.message_count, 1);
    // Heard again: connected again.
    peer.push(NetEvent::Quiet {
        conn: first,
        quiet: false,
    });
    assert_eq!(connected(&mut peer), (true, true, true));
    // Quiet, then lost: the team reconnects, and its new socket is
    // connected whatever its old worker was.
    peer.push(NetEvent::Quiet {
        conn: first,
        quiet: true,
    });
    peer.closed(first, CloseReason::WorkerLost);
    peer.step_until_requested(T1);
    peer.connect_team(T1);
    assert_ne!(peer.team_conn(T1), first);
    assert_eq!(connected(&mut peer), (true, true, true));
    // A notice about a socket that is no longer the team's is stale.
    let stale = peer.core.stats().stale_events;
    peer.push(NetEvent::Quiet {
        conn: first,
        quiet: true,
    });
    assert_eq!(connected(&mut peer), (true, true, true));
    assert_eq!(peer.core.stats().stale_events, stale + 1);
    snapshot(
        "a_socket_whose_worker_went_quiet_is_not_reported_connected_until_heard_again",
        &peer,
    );
}

#[test]
fn socket_ids_past_the_limit_from_outside_are_not_taken() {
    use switchboard::core::{AdoptedSocket, SocketMark};
    use switchboard::store::SavedTeam;
    let huge = ConnId(u64::MAX);
    let mut peer = Peer::new(36);
    peer.core
        .restore(&[SavedTeam {
            id: T1,
            joined: true,
            message_count: 10,
            props_count: 1,
            socket: Some(SocketMark {
                conn: huge,
                messages: 10,
                props: 1,
            }),
            unreported: vec![SocketMark {
                conn: ConnId(u64::MAX - 1),
                messages: 3,
                props: 0,
            }],
        }])
        .expect("restored");
    let report = |team, conn, open| AdoptedSocket {
        team,
        conn,
        messages: 5,
        props: 0,
        open,
    };
    let refused = peer
        .adopt(&[report(T2, huge, true), report(T1, ConnId(3), false)])
        .expect("adopted");
    assert_eq!(refused, vec![huge], "the caller ends it");
    peer.core
        .late_reports(&[report(T1, ConnId(u64::MAX - 1), false)]);
    // The restored counts stay; socket 3 is a later one than no mark.
    assert_eq!(team(&peer, T1).counters.message_count, 15);
    assert!(
        peer.core.healthcheck().iter().all(|s| s.id != T2),
        "no team made for the refused socket"
    );
    peer.open_global();
    assert_eq!(
        peer.global_conn(),
        ConnId(4),
        "ids go on from the sane ones"
    );
}

#[test]
fn joins_beyond_max_teams_are_refused_and_counted() {
    let config = switchboard::Config {
        max_teams: 2,
        ..switchboard::testkit::test_config()
    };
    let mut peer = Peer::with_config(&config, 32);
    peer.open_global();
    for id in [T1, T2, T3] {
        peer.join(id);
    }
    assert_eq!(peer.requests(), vec![T1, T2]);
    assert_eq!(peer.core.stats().refused_joins, 1);
    let ids: Vec<TeamId> = peer.core.healthcheck().iter().map(|s| s.id).collect();
    assert_eq!(ids, vec![T1, T2]);
}

#[test]
fn a_burst_of_healthchecks_shares_one_encoded_reply() {
    let mut peer = Peer::with_teams(33, &[T1, T2]);
    for _ in 0..100 {
        peer.global_says(GlobalServerEvent::Healthcheck);
    }
    peer.step();
    let texts: Vec<switchboard::Text> = peer
        .take_new()
        .into_iter()
        .filter_map(|c| match c {
            NetCommand::Send { text, .. } if text.as_str().contains("healthcheck") => Some(text),
            _ => None,
        })
        .collect();
    assert_eq!(texts.len(), 100, "one reply per request");
    let first = texts[0].bytes().as_ptr();
    assert!(
        texts.iter().all(|t| t.bytes().as_ptr() == first),
        "encoded once, shared"
    );
}

#[test]
fn a_secure_global_never_opens_a_plaintext_team_url_and_team_hosts_are_enforced() {
    let config = switchboard::Config {
        global_url: "wss://sim/global".into(),
        team_hosts: vec!["*.teams.example".parse().expect("pattern")],
        ..switchboard::testkit::test_config()
    };
    let mut peer = Peer::with_config(&config, 34);
    peer.open_global();
    peer.join(T1);
    peer.join(T2);
    peer.global_says(GlobalServerEvent::TeamConnect {
        team_id: T1,
        ws_url: "ws://a.teams.example/t/1".into(),
    });
    peer.global_says(GlobalServerEvent::TeamConnect {
        team_id: T2,
        ws_url: "wss://evil.example/t/2".into(),
    });
    peer.step();
    assert!(opens_for(&peer.commands, T1).is_empty(), "no downgrade");
    assert!(
        opens_for(&peer.commands, T2).is_empty(),
        "not an allowed host"
    );
    let reason = |id| team(&peer, id).health.last_error.unwrap_or_default();
    assert!(reason(T1).contains("plaintext"), "{}", reason(T1));
    assert!(
        reason(T2).contains("not an allowed team host"),
        "{}",
        reason(T2)
    );
    // The next answer for T1, on an allowed host and wss, is opened.
    peer.step_until_requested(T1);
    peer.global_says(GlobalServerEvent::TeamConnect {
        team_id: T1,
        ws_url: "https://a.teams.example/t/1".into(),
    });
    peer.step();
    assert_eq!(
        opens_for(&peer.commands, T1),
        vec!["wss://a.teams.example/t/1".to_owned()]
    );
}

/// Events take effect in the order they arrived, across connections: a team
/// that leaves on its own socket and is announced again on Global a moment
/// later (a reinstall) ends up joined and reconnected, even when both land
/// in one step.
#[test]
fn a_team_that_leaves_on_its_socket_and_rejoins_on_global_in_one_step_reconnects() {
    let mut peer = Peer::with_teams(17, &[T1]);
    let first = peer.team_conn(T1);
    peer.message(T1, "one props");
    peer.team_says(T1, TeamServerEvent::TeamLeft { team_id: T1 });
    peer.global_says(GlobalServerEvent::TeamJoin { team_id: T1 });
    peer.step();
    assert_eq!(closes(&peer.commands), vec![first], "the old socket closes");
    assert_eq!(
        team(&peer, T1).link,
        LinkState::Closing {
            conn: first,
            deadline: team_deadline(&peer),
            after: AfterClose::Rejoin
        },
        "the later join wins over the earlier leave"
    );
    peer.closed(first, CloseReason::Local);
    peer.step();
    assert_eq!(peer.requests(), vec![T1, T1], "asked again for its URL");
    peer.connect_team(T1);
    let t = team(&peer, T1);
    assert!(t.connected);
    assert_ne!(peer.team_conn(T1), first);
    assert_eq!(t.counters.message_count, 1);
    snapshot(
        "a_team_that_leaves_on_its_socket_and_rejoins_on_global_in_one_step_reconnects",
        &peer,
    );
}

/// The mirror: Global announces the team (a duplicate: it is joined), then
/// its socket says it left. The leave came last, so the team is out.
#[test]
fn a_join_then_a_leave_on_the_socket_in_one_step_leaves_the_team_out() {
    let mut peer = Peer::with_teams(18, &[T1]);
    let first = peer.team_conn(T1);
    peer.global_says(GlobalServerEvent::TeamJoin { team_id: T1 });
    peer.team_says(T1, TeamServerEvent::TeamLeft { team_id: T1 });
    peer.step();
    peer.closed(first, CloseReason::Local);
    peer.step();
    peer.advance(Duration::from_secs(5));
    assert_eq!(team(&peer, T1).link, LinkState::Left);
    assert_eq!(peer.requests(), vec![T1], "never asked for again");
    snapshot(
        "a_join_then_a_leave_on_the_socket_in_one_step_leaves_the_team_out",
        &peer,
    );
}

/// Hundreds of teams leave on their sockets and are announced again on
/// Global at once, interleaved: those whose old socket is still closing,
/// those whose socket already closed in the same step, and those announced
/// a step later. Every one of them is reconnected.
#[test]
fn hundreds_of_teams_leaving_and_rejoining_at_once_all_reconnect() {
    const TEAMS: u64 = 300;
    let mut peer = Peer::connected_fleet(&switchboard::testkit::test_config(), 19, TEAMS);
    let first: Vec<ConnId> = (1..=TEAMS).map(|id| peer.team_conn(TeamId(id))).collect();
    for id in 1..=TEAMS {
        let team = TeamId(id);
        peer.team_says(team, TeamServerEvent::TeamLeft { team_id: team });
        match id % 3 {
            // Announced again while its old socket is still open.
            0 => peer.global_says(GlobalServerEvent::TeamJoin { team_id: team }),
            // The old socket ends first, then the announcement.
            1 => {
                peer.closed(first[id as usize - 1], CloseReason::Remote { code: 1000 });
                peer.global_says(GlobalServerEvent::TeamJoin { team_id: team });
            }
            // Announced in the next step.
            _ => {}
        }
    }
    peer.step();
    for id in (1..=TEAMS).filter(|id| id % 3 == 2) {
        peer.global_says(GlobalServerEvent::TeamJoin {
            team_id: TeamId(id),
        });
    }
    for id in (1..=TEAMS).filter(|id| id % 3 != 1) {
        peer.closed(first[id as usize - 1], CloseReason::Local);
    }
    peer.step();
    peer.step_until("every team asked for again", |peer| {
        peer.requests().len() as u64 == 2 * TEAMS
    });
    for id in 1..=TEAMS {
        peer.global_says(GlobalServerEvent::TeamConnect {
            team_id: TeamId(id),
            ws_url: format!("ws://sim/t/{id}/again"),
        });
    }
    peer.step();
    for id in 1..=TEAMS {
        let conn = peer.team_conn(TeamId(id));
        assert_ne!(conn, first[id as usize - 1], "team {id} has a new socket");
        peer.push(NetEvent::Opened { conn });
    }
    peer.step();
    let summary = peer.core.summary();
    assert_eq!(summary.connected, TEAMS, "every team is back: {summary:?}");
    assert_eq!(summary.left, 0);
}

/// A refused `ws_url` is kept as the team's last error (served over HTTP)
/// with its credentials masked.
#[test]
fn a_refused_ws_url_is_kept_without_its_credentials() {
    let mut config = switchboard::testkit::test_config();
    config.global_url = "wss://sim/global".into();
    let mut peer = Peer::with_config(&config, 21);
    peer.open_global();
    peer.join(T1);
    peer.global_says(GlobalServerEvent::TeamConnect {
        team_id: T1,
        ws_url: "ws://bot:hunter2@sim/team/1?token=SECRET".into(),
    });
    peer.step();
    let error = team(&peer, T1).health.last_error.unwrap_or_default();
    assert!(error.contains("ws://***@sim/team/1?token=***"), "{error}");
    assert!(
        !error.contains("hunter2") && !error.contains("SECRET"),
        "{error}"
    );
}
