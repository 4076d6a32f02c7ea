//! Messages per second from socket to counter, switchboard against a bare
//! tokio-tungstenite client, both fed by the same in-process server that
//! blasts pre-encoded `message` frames to every team as fast as it can.
//!
//! `cargo bench --bench throughput` (env: TEAMS, MESSAGES, ROUNDS, and
//! ONLY=bare|switchboard to run one side, e.g. under a profiler).
//! Reports each client's rate and switchboard's ratio to the bare client.
//! The bare client decodes every frame with the same decoder and counts
//! per team, so the ratio measures what the bridge and the core cost.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use switchboard::Config;
use switchboard::protocol::{TeamServerEvent, decode_team};
use switchboard::runtime::{self, RunConfig, StopHandle};
use switchboard::transport::TransportConfig;
use tokio::net::TcpListener;
use tokio::sync::{Barrier, Notify};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The blaster: Global announces `teams`; each team socket, once every
/// team is connected, receives `messages` frames as fast as TCP takes them.
struct Blaster {
    url: String,
    started: Arc<std::sync::Mutex<Option<Instant>>>,
}

async fn blaster(teams: u64, messages: u64) -> Blaster {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let ready = Arc::new(Barrier::new(teams as usize + 1));
    let started = Arc::new(std::sync::Mutex::new(None));
    let frame =
        Message::text(json!({"type": "message", "text": "hello team, props to you"}).to_string());
    {
        let ready = ready.clone();
        let started = started.clone();
        tokio::spawn(async move {
            ready.wait().await;
            *started.lock().expect("lock") = Some(Instant::now());
        });
    }
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            let (ready, frame) = (ready.clone(), frame.clone());
            tokio::spawn(async move {
                let mut path = String::new();
                #[allow(clippy::result_large_err)]
                let callback = |req: &Request, resp: Response| {
                    path = req.uri().path().to_owned();
                    Ok(resp)
                };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
                    return;
                };
                if path == "/global" {
                    let _ = ws.feed(Message::text(r#"{"type":"hello"}"#)).await;
                    for id in 1..=teams {
                        let join = json!({"type": "team.join", "team_id": id});
                        let _ = ws.feed(Message::text(join.to_string())).await;
                    }
                    let _ = ws.flush().await;
                    while let Some(Ok(msg)) = ws.next().await {
                        let Message::Text(text) = msg else { continue };
                        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                        if v["type"] == "team.connect" {
                            let id = v["team_id"].as_u64().unwrap_or(0);
                            let url = format!("ws://{addr}/team/{id}");
                            let answer = json!({"type":"team.connect","team_id":id,"ws_url":url});
                            let _ = ws.send(Message::text(answer.to_string())).await;
                        }
                    }
                } else {
                    let _ = ws.send(Message::text(r#"{"type":"hello"}"#)).await;
                    ready.wait().await;
                    for _ in 0..messages {
                        if ws.feed(frame.clone()).await.is_err() {
                            return;
                        }
                    }
                    let _ = ws.flush().await;
                    // Keep the socket open (answering pings) until the client leaves.
                    while let Some(Ok(msg)) = ws.next().await {
                        if let Message::Text(t) = msg
                            && t.contains("\"ping\"")
                        {
                            let id = serde_json::from_str::<serde_json::Value>(&t)
                                .map(|v| v["unique_id"].clone())
                                .unwrap_or_default();
                            let pong = json!({"type": "pong", "unique_id": id});
                            let _ = ws.send(Message::text(pong.to_string())).await;
                        }
                    }
                }
            });
        }
    });
    Blaster {
        url: format!("ws://{addr}/global"),
        started,
    }
}

/// A bare client: no ECS, no bridge; one task per team decoding and
/// counting into shared counters.
async fn bare_client(server: &Blaster, teams: u64, messages: u64) -> Duration {
    let total = teams * messages;
    let counted = Arc::new(AtomicU64::new(0));
    let done = Arc::new(Notify::new());
    let (mut global, _) = tokio_tungstenite::connect_async(server.url.as_str())
        .await
        .expect("global");
    let mut sockets = 0;
    while sockets < teams {
        let Some(Ok(Message::Text(text))) = global.next().await else {
            panic!("global ended");
        };
        let v: serde_json::Value = serde_json::from_str(&text).expect("json");
        match v["type"].as_str() {
            Some("team.join") => {
                let id = v["team_id"].as_u64().expect("id");
                let ask = json!({"type": "team.connect", "team_id": id});
                global
                    .send(Message::text(ask.to_string()))
                    .await
                    .expect("send");
            }
            Some("team.connect") => {
                let url = v["ws_url"].as_str().expect("url").to_owned();
                let (counted, done) = (counted.clone(), done.clone());
                tokio::spawn(async move {
                    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.expect("team");
                    let (mut n, mut props) = (0u64, 0u64);
                    while let Some(Ok(Message::Text(text))) = ws.next().await {
                        if let Ok(TeamServerEvent::Message { text }) = decode_team(&text) {
                            n += 1;
                            props += u64::from(TeamServerEvent::is_props(&text));
                            if counted.fetch_add(1, Ordering::Relaxed) + 1 == total {
                                done.notify_one();
                            }
                        }
                        if n == messages {
                            break;
                        }
                    }
                    std::hint::black_box(props);
                });
                sockets += 1;
            }
            _ => {}
        }
    }
    done.notified().await;
    let end = Instant::now();
    let started = server.started.lock().expect("lock").expect("started");
    end - started
}

/// switchboard's runtime, exactly as the binary runs it.
async fn switchboard_client(server: &Blaster, teams: u64, messages: u64) -> Duration {
    let total = teams * messages;
    let config = RunConfig {
        core: Config {
            global_url: server.url.clone(),
            max_requests_in_flight: teams as usize,
            ..Config::default()
        },
        transport: TransportConfig::default(),
        seed: 1,
        status_interval: None,
        give_up_after: None,
        tap: None,
    };
    let stop = StopHandle::new();
    let handle = tokio::runtime::Handle::current();
    let end = tokio::task::spawn_blocking(move || {
        let mut end = None;
        let mut last_check = Instant::now();
        let stopper = stop.clone();
        let mut watch = |core: &switchboard::Core| {
            if end.is_none() && last_check.elapsed() >= Duration::from_millis(5) {
                last_check = Instant::now();
                if core.summary().messages >= total {
                    end = Some(Instant::now());
                    stopper.stop();
                }
            }
        };
        let _ = runtime::run(&config, handle, &stop, &mut [&mut watch]);
        end.expect("all messages counted")
    })
    .await
    .expect("client thread");
    let started = server.started.lock().expect("lock").expect("started");
    end - started
}

fn main() {
    // `cargo test --benches` runs benches with --bench absent: do a tiny run.
    let quick = !std::env::args().any(|a| a == "--bench");
    let teams = env("TEAMS", if quick { 10 } else { 1000 });
    let messages = env("MESSAGES", if quick { 100 } else { 2000 });
    let rounds = env("ROUNDS", if quick { 1 } else { 3 });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let total = (teams * messages) as f64;
    let mut results: HashMap<&str, Vec<f64>> = HashMap::new();
    for round in 0..rounds {
        let only = std::env::var("ONLY").ok();
        for which in ["bare", "switchboard"] {
            if only.as_deref().is_some_and(|o| o != which) {
                continue;
            }
            let rate = runtime.block_on(async {
                let server = blaster(teams, messages).await;
                let took = match which {
                    "bare" => bare_client(&server, teams, messages).await,
                    _ => switchboard_client(&server, teams, messages).await,
                };
                total / took.as_secs_f64()
            });
            println!("round {round} {which:>11}: {:>10.0} messages/s", rate);
            results.entry(which).or_default().push(rate);
        }
    }
    let best = |k: &str| {
        results
            .get(k)
            .map_or(0.0, |r| r.iter().cloned().fold(0.0, f64::max))
    };
    let (bare, sb) = (best("bare"), best("switchboard"));
    println!(
        "{teams} teams x {messages} messages, best of {rounds}: bare {bare:.0}/s, switchboard {sb:.0}/s, ratio {:.2}",
        sb / bare
    );
}
