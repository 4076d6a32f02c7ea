//! The HTTP side over real HTTP: every endpoint against a live run, the
//! metrics checked by Prometheus's own `promtool`, and readiness following
//! the Global link down and back up.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchboard::http::HttpServer;
use switchboard::runtime::{self, StopHandle};
use switchboard::testkit::client::config;
use switchboard::testkit::server::{Conn, DEADLINE, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One HTTP/1.1 GET; the status and the body.
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    tokio::time::timeout(DEADLINE, stream.read_to_end(&mut response))
        .await
        .expect("answered in time")
        .expect("read");
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status");
    (status, body.to_owned())
}

/// GETs `path` until `done` holds for its status and JSON (deadline-bounded).
async fn get_until(addr: SocketAddr, path: &str, done: impl Fn(u16, &Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let (status, body) = get(addr, path).await;
        let value: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        if done(status, &value) {
            return value;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "{path}: never; last {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The runtime against `url` with the HTTP server's telemetry as a sidecar.
fn run_with_http(url: String, http: &HttpServer) -> (StopHandle, std::thread::JoinHandle<()>) {
    let stop = StopHandle::new();
    let mut telemetry = http.telemetry();
    let handle = tokio::runtime::Handle::current();
    let thread = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let config = config(url);
            let _ = runtime::run(&config, handle, &stop, &mut [&mut telemetry]);
        })
    };
    (stop, thread)
}

/// A client with an HTTP server, its Global accepted and greeted.
struct Running {
    server: Server,
    http: HttpServer,
    addr: SocketAddr,
    stop: StopHandle,
    thread: std::thread::JoinHandle<()>,
    global: Conn,
}

async fn running() -> Running {
    let mut server = Server::bind().await;
    let http = HttpServer::start("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("binds");
    let addr = http.addr();
    let (stop, thread) = run_with_http(server.url("/global"), &http);
    let global = server.accept().await;
    global.send(json!({"type": "hello"}));
    Running {
        server,
        http,
        addr,
        stop,
        thread,
        global,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_answers_and_readiness_follows_the_global_link() {
    let Running {
        mut server,
        http: _http,
        addr,
        stop,
        thread,
        mut global,
    } = running().await;
    global.send(json!({"type": "team.join", "team_id": 7}));
    global.expect("team.connect").await;
    global.send(json!({"type": "team.connect", "team_id": 7, "ws_url": server.url("/t/7")}));
    let team = server.accept().await;
    team.send(json!({"type": "hello"}));
    for text in ["props", "plain", "more props"] {
        team.send(json!({"type": "message", "text": text}));
    }

    let fleet = get_until(addr, "/fleet", |_, v| v["messages"] == 3).await;
    assert_eq!(fleet["props"], 2);
    assert_eq!(fleet["by_state"]["open"], 1);
    let ready = get_until(addr, "/readyz", |s, _| s == 200).await;
    assert_eq!(ready, json!({"ready": true}));
    let (status, body) = get(addr, "/healthz").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = get(addr, "/teams").await;
    assert_eq!(status, 200);
    let teams: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(teams[0]["id"], 7);
    assert_eq!(teams[0]["state"], "open");
    assert_eq!(teams[0]["messages"], 3);
    let (status, body) = get(addr, "/teams/7").await;
    assert_eq!(status, 200);
    let one: Value = serde_json::from_str(&body).expect("JSON");
    let states: Vec<&str> = one["history"]
        .as_array()
        .expect("history")
        .iter()
        .filter_map(|h| h["state"].as_str())
        .collect();
    assert_eq!(states, ["needs_url", "requesting", "connecting", "open"]);
    let (status, _) = get(addr, "/teams/8").await;
    assert_eq!(status, 404);
    let (status, page) = get(addr, "/").await;
    assert_eq!(status, 200);
    assert!(page.contains("<canvas id=\"grid\""), "the status page");

    // Global drops: not ready, saying why; back once it returns.
    global.close(1001);
    let down = get_until(addr, "/readyz", |s, _| s == 503).await;
    assert!(
        down["why"].as_str().is_some_and(|w| w.contains("Global")),
        "{down}"
    );
    let again = server.accept().await;
    again.send(json!({"type": "hello"}));
    get_until(addr, "/readyz", |s, _| s == 200).await;

    stop.stop();
    tokio::task::spawn_blocking(move || thread.join())
        .await
        .expect("join")
        .expect("no panic");
    drop((team, global, again));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_and_openmetrics_is_served_on_request() {
    let Running {
        server: _server,
        http: _http,
        addr,
        stop,
        thread,
        global,
    } = running().await;
    global.send(json!({"type": "bogus"}));
    get_until(addr, "/fleet", |_, v| v["bad_global"]["unknown_type"] == 1).await;
    let (status, metrics) = get(addr, "/metrics").await;
    assert_eq!(status, 200);
    for name in [
        "switchboard_teams{state=\"open\"}",
        "switchboard_messages_total",
        "switchboard_bad_frames_global_total{class=\"unknown_type\"} 1",
        "switchboard_pong_rtt_seconds_bucket",
        "switchboard_step_duration_seconds_bucket",
        "switchboard_global_link{state=\"open\"} 1",
        "switchboard_process_resident_memory_bytes",
        "switchboard_process_open_fds",
    ] {
        assert!(metrics.contains(name), "{name} missing:\n{metrics}");
    }
    switchboard::testkit::promtool::assert_promtool_accepts(&metrics);
    // A scraper that asks for OpenMetrics gets it.
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(
            b"GET /metrics HTTP/1.1\r\nHost: t\r\nAccept: application/openmetrics-text\r\nConnection: close\r\n\r\n",
        )
        .await
        .expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    assert!(
        response.contains("application/openmetrics-text"),
        "{response:.300}"
    );
    assert!(
        response.trim_end().ends_with("# EOF"),
        "OpenMetrics ends with # EOF"
    );
    stop.stop();
    tokio::task::spawn_blocking(move || thread.join())
        .await
        .expect("join")
        .expect("no panic");
    drop(global);
}
