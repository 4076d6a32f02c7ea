//! Failure behaviours over real loopback sockets, driving the library's
//! runtime against a server written in the test. Waits are deadline-bounded
//! polls; no test sleeps to let time pass.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchboard::runtime::{RunEnd, RunOutcome};
use switchboard::testkit::client::{Client, join, start};
use switchboard::testkit::server::{Conn, DEADLINE, Server};
use tokio_tungstenite::tungstenite::Message;

mod common;
use common::script::{answer_connect, connect_one, join_team};

/// Asks for healthchecks until `done` holds for the reply (deadline-bounded).
async fn healthcheck_until(global: &mut Conn, done: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        global.send(json!({"type": "healthcheck"}));
        let reply = global.expect("healthcheck").await;
        if done(&reply) {
            return reply;
        }
        assert!(started.elapsed() < DEADLINE, "never reached: {reply}");
    }
}

fn send_messages(team: &Conn, n: usize, props_every: usize) {
    for i in 0..n {
        let text = if i % props_every == 0 {
            "props"
        } else {
            "plain"
        };
        team.send(json!({"type": "message", "text": text}));
    }
}

async fn goodbye(global: Conn, client: Client) -> RunOutcome {
    global.send(json!({"type": "goodbye"}));
    client.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn team_socket_closed_mid_stream_is_re_requested_and_counts_are_exact() {
    let mut server = Server::bind().await;
    let client = start(server.url("/global"), |_| {});
    let (mut global, team) = connect_one(&mut server, 1).await;
    send_messages(&team, 100, 4);
    team.close(1011);
    // Re-requested on Global; the new socket carries on counting.
    let team = answer_connect(&mut server, &mut global, 1).await;
    send_messages(&team, 50, 5);
    let reply = healthcheck_until(&mut global, |r| {
        r["stats"][0]["message_count"] == 150 && r["stats"][0]["connected"] == true
    })
    .await;
    assert_eq!(reply["stats"][0]["props_count"], 25 + 10);
    let outcome = goodbye(global, client).await;
    assert_eq!(outcome.report.messages, 150, "never lost, never doubled");
    assert_eq!(outcome.report.teams[0].reconnects, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn team_socket_reset_is_re_requested() {
    let mut server = Server::bind().await;
    let client = start(server.url("/global"), |_| {});
    let (mut global, team) = connect_one(&mut server, 1).await;
    send_messages(&team, 10, 2);
    healthcheck_until(&mut global, |r| r["stats"][0]["message_count"] == 10).await;
    team.reset();
    let team = answer_connect(&mut server, &mut global, 1).await;
    send_messages(&team, 3, 1);
    healthcheck_until(&mut global, |r| r["stats"][0]["message_count"] == 13).await;
    goodbye(global, client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_closed_by_server_is_reopened_and_replayed_joins_open_no_second_socket() {
    let mut server = Server::bind().await;
    let client = start(server.url("/global"), |_| {});
    let (mut global, team) = connect_one(&mut server, 1).await;
    healthcheck_until(&mut global, |r| r["stats"][0]["connected"] == true).await;
    global.close(1001);
    assert_eq!(
        global.closed_by_client().await,
        Some(1001),
        "client answers the close"
    );
    // Team sockets stay up meanwhile.
    send_messages(&team, 7, 7);
    let mut global = server.accept().await;
    assert_eq!(global.path, "/global");
    global.send(json!({"type": "hello"}));
    global.send(json!({"type": "team.join", "team_id": 1}));
    global.send(json!({"type": "healthcheck"}));
    // A team.connect for team 1 would come before this reply (it is emitted
    // earlier in the same tick or in an earlier one).
    loop {
        match global.recv().await {
            Some(Message::Text(text)) => {
                let v: Value = serde_json::from_str(text.as_str()).expect("json");
                assert_ne!(
                    v["type"], "team.connect",
                    "replayed join must not re-request"
                );
                if v["type"] == "healthcheck" {
                    break;
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let reply = healthcheck_until(&mut global, |r| r["stats"][0]["message_count"] == 7).await;
    assert_eq!(
        reply["stats"][0]["connected"], true,
        "same socket, still open"
    );
    let outcome = goodbye(global, client).await;
    assert_eq!(outcome.report.teams[0].reconnects, 0);
    assert_eq!(outcome.snapshot.global.connects(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pong_that_never_comes_gets_the_link_dropped_and_re_requested() {
    let mut server = Server::bind().await;
    let client = start(server.url("/global"), |c| {
        c.core.ping_interval = Duration::from_millis(150);
        c.core.pong_timeout = Duration::from_millis(300);
    });
    let (mut global, mut zombie) = connect_one(&mut server, 1).await;
    let opened = Instant::now();
    // The zombie keeps TCP open but answers nothing.
    zombie.expect("ping").await;
    assert_eq!(
        zombie.closed_by_client().await,
        None,
        "dropped, no close handshake"
    );
    let mut team = answer_connect(&mut server, &mut global, 1).await;
    eprintln!("dead link re-requested after {:?}", opened.elapsed());
    // A live link answers its pings and stays up.
    for _ in 0..3 {
        let ping = team.expect("ping").await;
        team.send(json!({"type": "pong", "unique_id": ping["unique_id"].to_string()}));
    }
    let outcome = goodbye(global, client).await;
    assert_eq!(outcome.snapshot.stats.dead_links, 1);
    assert!(
        outcome.report.teams[0].rtt_ms.is_some(),
        "string ids match too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_frame_closes_only_that_connection() {
    let mut server = Server::bind().await;
    let client = start(server.url("/global"), |c| {
        c.transport.max_message_size = 64 * 1024;
    });
    let (mut global, mut team) = connect_one(&mut server, 1).await;
    let (_, mut other) = ((), join_team(&mut server, &mut global, 2).await);
    let huge = "x".repeat(100 * 1024);
    team.send(json!({"type": "message", "text": huge}));
    team.closed_by_client().await;
    let team = answer_connect(&mut server, &mut global, 1).await;
    send_messages(&team, 2, 1);
    send_messages(&other, 3, 1);
    let reply = healthcheck_until(&mut global, |r| {
        r["stats"][0]["message_count"] == 2 && r["stats"][1]["message_count"] == 3
    })
    .await;
    assert_eq!(reply["stats"][1]["connected"], true, "team 2 untouched");
    let outcome = goodbye(global, client).await;
    assert_eq!(outcome.report.teams[0].reconnects, 1);
    assert_eq!(outcome.report.teams[1].reconnects, 0);
    assert_eq!(other.closed_by_client().await, Some(1000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_real_sockets_is_counted_and_harmless() {
    let mut server = Server::bind().await;
    let client = start(server.url("/global"), |_| {});
    let (mut global, team) = connect_one(&mut server, 1).await;
    for conn in [&global, &team] {
        conn.send_raw(Message::binary(vec![0u8, 1, 2]));
        conn.send_raw(Message::text("{not json"));
        conn.send_raw(Message::text(r#"{"type":"surprise"}"#));
        conn.send_raw(Message::text(r#"{"type":"message","text":5}"#));
    }
    send_messages(&team, 4, 2);
    let reply = healthcheck_until(&mut global, |r| r["stats"][0]["message_count"] == 4).await;
    assert_eq!(reply["stats"][0]["connected"], true);
    let outcome = goodbye(global, client).await;
    let bad_global: u64 = outcome.snapshot.stats.bad_global.values().sum();
    let bad_team: u64 = outcome.snapshot.stats.bad_team.values().sum();
    assert_eq!((bad_global, bad_team), (4, 4));
    assert_eq!(
        outcome.snapshot.global.connects(),
        1,
        "Global never dropped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_global_gives_up_only_when_asked() {
    // Bind then drop a listener: a port with nobody on it.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port");
    let client = start(format!("ws://{addr}/global"), |c| {
        c.give_up_after = Some(Duration::from_millis(300));
    });
    let stop = client.stop.clone();
    let result = join(client.thread, || stop.force())
        .await
        .expect("no panic");
    match result.map(|outcome| outcome.end) {
        Ok(RunEnd::GaveUp { last_error, .. }) => assert!(!last_error.is_empty()),
        other => panic!("expected GaveUp, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_stop_closes_every_socket_normally() {
    let mut server = Server::bind().await;
    let client = start(server.url("/global"), |_| {});
    let (mut global, mut team) = connect_one(&mut server, 1).await;
    healthcheck_until(&mut global, |r| r["stats"][0]["connected"] == true).await;
    client.stop.stop();
    assert_eq!(team.closed_by_client().await, Some(1000));
    assert_eq!(global.closed_by_client().await, Some(1000));
    let outcome = client.finish().await;
    assert!(
        outcome.report.teams[0].connected,
        "connected when the stop came"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_global_is_detected_by_websocket_ping_and_reopened() {
    let mut server = Server::bind().await;
    let client = start(server.url("/global"), |c| {
        c.core.ping_interval = Duration::from_millis(200);
        c.core.pong_timeout = Duration::from_millis(300);
    });
    let global = server.accept().await;
    global.send(json!({"type": "hello"}));
    // The server's websocket layer answers the client's pings while it
    // reads; once frozen it answers nothing and the client must move on.
    global.freeze();
    let second = server.accept().await;
    assert_eq!(second.path, "/global");
    second.send(json!({"type": "hello"}));
    let outcome = goodbye(second, client).await;
    assert_eq!(outcome.snapshot.global.connects(), 2);
    assert!(
        outcome
            .snapshot
            .global
            .last_error()
            .is_some_and(|e| e.contains("silent")),
        "{:?}",
        outcome.snapshot.global.last_error()
    );
    drop(global);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthcheck_reply_larger_than_the_inbound_limit_is_sent() {
    // 40,000 joined teams make a reply of ~2.7 MB, above twice the 1 MiB
    // inbound limit; it must still go out in one frame.
    let mut server = Server::bind().await;
    let client = start(server.url("/global"), |c| {
        c.core.max_requests_in_flight = 1;
    });
    let mut global = server.accept().await;
    global.send(json!({"type": "hello"}));
    for team_id in 1..=40_000u64 {
        global.send(json!({"type": "team.join", "team_id": team_id}));
    }
    let reply = healthcheck_until(&mut global, |r| {
        r["stats"].as_array().is_some_and(|s| s.len() == 40_000)
    })
    .await;
    assert_eq!(reply["stats"][39_999]["id"], 40_000);
    goodbye(global, client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_longer_than_one_read_budget_is_counted_exactly() {
    // 5,000 frames arrive faster than they are read: the transport hands
    // them over in runs of at most 1,024, and none may be lost at a seam.
    let mut server = Server::bind().await;
    let client = start(server.url("/global"), |_| {});
    let (mut global, team) = connect_one(&mut server, 1).await;
    send_messages(&team, 5_000, 3);
    team.send(json!({"type": "hello"}));
    send_messages(&team, 5_000, 3);
    let reply = healthcheck_until(&mut global, |r| r["stats"][0]["message_count"] == 10_000).await;
    assert_eq!(reply["stats"][0]["props_count"], 2 * 1_667);
    let outcome = goodbye(global, client).await;
    assert_eq!(outcome.report.messages, 10_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tick_of_requests_larger_than_the_outbound_queue_does_not_drop_global() {
    // 3,000 joins in one burst with 3,000 requests allowed in flight: the
    // core queues them all on Global in one tick, beyond the 1,024 frames a
    // socket's queue holds; Global's queue has room for the in-flight cap.
    let mut server = Server::bind().await;
    let client = start(server.url("/global"), |c| {
        c.core.max_requests_in_flight = 3_000;
    });
    let mut global = server.accept().await;
    global.send(json!({"type": "hello"}));
    for team_id in 1..=3_000u64 {
        global.send(json!({"type": "team.join", "team_id": team_id}));
    }
    let mut asked = std::collections::BTreeSet::new();
    while asked.len() < 3_000 {
        asked.insert(global.expect("team.connect").await["team_id"].as_u64());
    }
    let outcome = goodbye(global, client).await;
    assert_eq!(
        outcome.snapshot.global.connects(),
        1,
        "Global never dropped"
    );
}

/// A pong timeout past the clock's range (a library user's `Duration::MAX`)
/// is the socket's stall limit too: a message that arrives in pieces must
/// not overflow its deadline (that panicked the socket's task), and the
/// link carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stall_limit_past_the_clocks_range_never_overflows() {
    let mut server = Server::bind().await;
    let client = start(server.url("/global"), |c| {
        c.core.pong_timeout = Duration::MAX;
    });
    let (mut global, team) = connect_one(&mut server, 1).await;
    let frame = |text: &str| {
        let mut bytes = vec![0x81, u8::try_from(text.len()).expect("short")];
        bytes.extend_from_slice(text.as_bytes());
        bytes
    };
    let one = frame(r#"{"type":"message","text":"one"}"#);
    let two = frame(r#"{"type":"message","text":"two"}"#);
    // One whole message and the start of the next, in one write: once the
    // first is counted, the partial one has been read and its deadline set.
    let (head, tail) = two.split_at(10);
    team.send_bytes([one.as_slice(), head].concat());
    healthcheck_until(&mut global, |r| r["stats"][0]["message_count"] == 1).await;
    team.send_bytes(tail.to_vec());
    healthcheck_until(&mut global, |r| {
        r["stats"][0]["message_count"] == 2 && r["stats"][0]["connected"] == true
    })
    .await;
    let outcome = goodbye(global, client).await;
    assert_eq!(outcome.report.teams[0].reconnects, 0);
}

/// With one request allowed in flight and a one-second tick, twenty teams
/// take twenty request waves. Each wave follows the answer before it at
/// once (a Global event steps the core between ticks), so the whole fleet
/// is asked for and connected within a few ticks of core time, where waves
/// that waited for the grid would take twenty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_request_follows_an_answer_without_waiting_for_a_tick() {
    const TEAMS: u64 = 20;
    let mut server = Server::bind().await;
    let client = start(server.url("/global"), |c| {
        c.core.tick = switchboard::core::MAX_TICK;
        c.core.max_requests_in_flight = 1;
    });
    let mut global = server.accept().await;
    global.send(json!({"type": "hello"}));
    for team_id in 1..=TEAMS {
        global.send(json!({"type": "team.join", "team_id": team_id}));
    }
    let mut sockets = Vec::new();
    for _ in 1..=TEAMS {
        let request = global.expect("team.connect").await;
        let team_id = request["team_id"].as_u64().expect("a team id");
        let url = server.url(&format!("/team/{team_id}"));
        global.send(json!({"type": "team.connect", "team_id": team_id, "ws_url": url}));
        let team = server.accept().await;
        team.send(json!({"type": "hello"}));
        sockets.push(team);
    }
    let outcome = goodbye(global, client).await;
    let ticks = outcome.snapshot.clock.now / switchboard::core::MAX_TICK.as_millis() as u64;
    assert!(
        ticks < TEAMS / 2,
        "{TEAMS} request waves took {ticks} ticks of core time: they waited for the grid"
    );
}
