//! What a hostile or broken server can try over real sockets, and what the
//! client does about it: a Global that stops reading, a message begun and
//! never finished, partial messages past their memory budget. And that an
//! idle fleet wakes the driver for nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use switchboard::protocol::TeamId;
use switchboard::runtime::{self, StopHandle};
use switchboard::testkit::client::{config, join, start};
use switchboard::testkit::server::{DEADLINE, Server};

mod common;
use common::script::connect_one;

/// A text frame header announcing `len` bytes, unmasked (server to client).
fn text_header(len: u64) -> Vec<u8> {
    let mut header = vec![0x81, 127];
    header.extend_from_slice(&len.to_be_bytes());
    header
}

/// A client whose Global (with `pong_timeout`) greets, announces `teams`
/// teams and then stops reading; the server, that Global, and the client.
async fn deaf_global_with(
    teams: u64,
    pong_timeout: Duration,
) -> (
    Server,
    switchboard::testkit::server::Conn,
    switchboard::testkit::client::Client,
) {
    let mut server = Server::bind().await;
    let client = start(server.url("/global"), |c| {
        c.core.pong_timeout = pong_timeout;
        c.core.max_requests_in_flight = 1;
    });
    let global = server.accept().await;
    global.send(json!({"type": "hello"}));
    for team_id in 1..=teams {
        global.send(json!({"type": "team.join", "team_id": team_id}));
    }
    global.deaf();
    (server, global, client)
}

/// The Global the client opens after dropping the first: greeted and told
/// goodbye; the run's last Global error.
async fn next_global_then_last_error(
    server: &mut Server,
    client: switchboard::testkit::client::Client,
) -> String {
    let second = server.accept().await;
    assert_eq!(second.path, "/global");
    second.send(json!({"type": "hello"}));
    second.send(json!({"type": "goodbye"}));
    let outcome = client.finish().await;
    outcome
        .snapshot
        .global
        .last_error()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_global_that_stops_reading_is_dropped_after_the_pong_timeout() {
    // Enough teams that a few healthcheck replies overflow every socket
    // buffer between us (~2.7 MB each).
    let (mut server, global, client) = deaf_global_with(40_000, Duration::from_millis(500)).await;
    // Five replies (~13.5 MB): within the unsent-bytes budget, so it is the
    // write stall, not the budget, that drops this Global.
    for _ in 0..5 {
        global.send(json!({"type": "healthcheck"}));
    }
    // Our replies cannot drain: the client drops this Global and opens
    // another, instead of waiting on the write for ever.
    let error = next_global_then_last_error(&mut server, client).await;
    assert!(error.contains("stalled: peer not reading"), "{error}");
    drop(global);
}

/// A Global that asks for a healthcheck every few milliseconds and reads none
/// of the replies: each reply is a new buffer, so they pile up in the
/// socket's queue. Past the unsent-bytes budget (16 MiB) the Global is
/// dropped as not reading, long before the write stall (a minute here) or
/// the queue's frame count (1,024) would notice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_replies_to_a_global_that_reads_none_are_bounded_in_bytes() {
    // ~600 KB a reply.
    let (mut server, global, client) = deaf_global_with(10_000, Duration::from_secs(60)).await;
    let pacing = tokio::spawn(async move {
        // 900 requests, below the frame-count bound, over 2.7 s or more:
        // even a driver slowed to a step every 50 ms answers them with
        // dozens of distinct replies (all of them would be ~540 MB).
        for _ in 0..900 {
            global.send(json!({"type": "healthcheck"}));
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        global
    });
    let error = next_global_then_last_error(&mut server, client).await;
    assert!(error.contains("outbound queue overflow"), "{error}");
    drop(pacing.await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_left_incomplete_is_dropped_after_the_pong_timeout() {
    let mut server = Server::bind().await;
    // Pings are far apart: only the incomplete message can end the socket.
    let client = start(server.url("/global"), |c| {
        c.core.pong_timeout = Duration::from_millis(400);
    });
    let (mut global, team) = connect_one(&mut server, 1).await;
    let mut partial = text_header(100_000);
    partial.extend_from_slice(br#"{"type":"message","text":""#);
    team.send_bytes(partial);
    // Dropped and asked for again.
    global.expect("team.connect").await;
    global.send(json!({"type": "goodbye"}));
    let outcome = client.finish().await;
    let t = outcome
        .snapshot
        .teams
        .iter()
        .find(|t| t.id == TeamId(1))
        .expect("team 1");
    let error = t.health.last_error.clone().unwrap_or_default();
    assert!(error.contains("message left incomplete"), "{error}");
    drop(team);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_messages_past_their_budget_drop_the_socket_that_passes_it() {
    let mut server = Server::bind().await;
    let client = start(server.url("/global"), |c| {
        c.transport.max_partial_bytes = 1_000;
    });
    let (mut global, team) = connect_one(&mut server, 1).await;
    let mut partial = text_header(100_000);
    partial.extend(std::iter::repeat_n(b'x', 2_000));
    team.send_bytes(partial);
    global.expect("team.connect").await;
    global.send(json!({"type": "goodbye"}));
    let outcome = client.finish().await;
    let error = outcome.snapshot.teams[0]
        .health
        .last_error
        .clone()
        .unwrap_or_default();
    assert!(error.contains("memory budget"), "{error}");
    drop(team);
}

/// RFC 6455 requires failing a connection whose text frame is not UTF-8
/// (docs/PROTOCOL.md): the team socket is dropped and asked for again,
/// while bad JSON in valid UTF-8 is only counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_frame_that_is_not_utf8_drops_the_team_socket() {
    let mut server = Server::bind().await;
    let client = start(server.url("/global"), |_| {});
    let (mut global, team) = connect_one(&mut server, 1).await;
    // A whole, unfragmented text frame: a quoted string with a lone
    // continuation byte and an overlong encoding in it.
    let body: &[u8] = b"{\"type\":\"message\",\"text\":\"\x80\xc0\xaf\"}";
    let mut frame = vec![0x81, body.len() as u8];
    frame.extend_from_slice(body);
    team.send_bytes(frame);
    global.expect("team.connect").await;
    global.send(json!({"type": "goodbye"}));
    let outcome = client.finish().await;
    let t = &outcome.snapshot.teams[0];
    let error = t.health.last_error.clone().unwrap_or_default();
    assert!(error.to_lowercase().contains("utf-8"), "{error}");
    assert_eq!(t.counters.message_count, 0, "{t:?}");
    drop(team);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_fleet_does_not_wake_the_driver() {
    let mut server = Server::bind().await;
    let steps = Arc::new(AtomicU64::new(0));
    let stop = StopHandle::new();
    let thread = {
        let (steps, stop) = (steps.clone(), stop.clone());
        let mut config = config(server.url("/global"));
        // Ticks of 5ms: a driver that ticked would step 200 times a second.
        config.core.ping_interval = Duration::from_secs(60);
        let handle = tokio::runtime::Handle::current();
        std::thread::spawn(move || {
            let mut count = |_: &switchboard::Core| {
                steps.fetch_add(1, Ordering::Relaxed);
            };
            runtime::run(&config, handle, &stop, &mut [&mut count])
        })
    };
    let mut global = server.accept().await;
    global.send(json!({"type": "hello"}));
    let mut teams = Vec::new();
    for team_id in 1..=20u64 {
        global.send(json!({"type": "team.join", "team_id": team_id}));
        global.expect("team.connect").await;
        global
            .send(json!({"type": "team.connect", "team_id": team_id, "ws_url": server.url("/t")}));
        let team = server.accept().await;
        team.send(json!({"type": "hello"}));
        teams.push(team);
    }
    let started = Instant::now();
    loop {
        global.send(json!({"type": "healthcheck"}));
        let reply = global.expect("healthcheck").await;
        let stats = reply["stats"].as_array().cloned().unwrap_or_default();
        if stats.len() == 20 && stats.iter().all(|s| s["connected"] == true) {
            break;
        }
        assert!(started.elapsed() < DEADLINE, "never all connected");
    }
    // The window in which nothing is due: the Global probe comes after a
    // quiet ping interval, pings after 60s. Count the steps in it.
    // The sleep is the window measured, not a wait for something to happen:
    // a slower machine only makes it longer, still far inside 60s.
    let before = steps.load(Ordering::Relaxed);
    let window = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_steps = steps.load(Ordering::Relaxed) - before;
    assert!(idle_steps <= 2, "{idle_steps} steps while idle");
    assert!(window.elapsed() < Duration::from_secs(30), "window overran");
    // The counter is live: work wakes the driver (counted after the step
    // that answered, hence polled).
    global.send(json!({"type": "healthcheck"}));
    global.expect("healthcheck").await;
    let woke = Instant::now();
    while steps.load(Ordering::Relaxed) == before + idle_steps {
        assert!(woke.elapsed() < DEADLINE, "no step counted after work came");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    global.send(json!({"type": "goodbye"}));
    let outcome = join(thread, || stop.force())
        .await
        .expect("no panic")
        .expect("run ok");
    assert!(matches!(outcome.end, runtime::RunEnd::Finished(_)));
    drop(teams);
}
