//! The HTTP side over real HTTP: every endpoint against a live run, the
//! metrics checked by Prometheus's own `promtool`, and readiness following
//! the Global link down and back up.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchboard::TeamId;
use switchboard::http::{ConnStats, HttpOptions, HttpServer, Limits};
use switchboard::runtime::{self, StopHandle};
use switchboard::testkit::client::{config, join};
use switchboard::testkit::server::{Conn, DEADLINE, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;

/// One HTTP/1.1 GET; the status and the body.
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
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
    run_with_http_and(url, http, |_| {})
}

fn run_with_http_and(
    url: String,
    http: &HttpServer,
    tweak: impl FnOnce(&mut runtime::RunConfig) + Send + 'static,
) -> (StopHandle, std::thread::JoinHandle<()>) {
    let stop = StopHandle::new();
    let mut telemetry = http.telemetry();
    let handle = tokio::runtime::Handle::current();
    let thread = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut config = config(url);
            tweak(&mut config);
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
    join(thread, || stop.force()).await.expect("no panic");
    drop((team, global, again));
}

/// Not ready while a team has waited for its URL longer than the request
/// timeout: a Global that never answers `team.connect`, one request in
/// flight at a time, three teams queued behind it; ready again once they
/// leave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_fails_while_a_team_waits_for_its_url_past_the_request_timeout() {
    let mut server = Server::bind().await;
    let http = HttpServer::start("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("binds");
    let addr = http.addr();
    let (stop, thread) = run_with_http_and(server.url("/global"), &http, |c| {
        c.core.max_requests_in_flight = 1;
        c.core.request_timeout = Duration::from_millis(200);
    });
    let global = server.accept().await;
    global.send(json!({"type": "hello"}));
    get_until(addr, "/readyz", |s, _| s == 200).await;
    for team_id in 1..=3 {
        global.send(json!({"type": "team.join", "team_id": team_id}));
    }
    let waiting = get_until(addr, "/readyz", |s, _| s == 503).await;
    assert!(
        waiting["why"]
            .as_str()
            .is_some_and(|w| w.contains("waited") && w.contains("request timeout")),
        "{waiting}"
    );
    // The teams leave: nobody waits for a URL any more, ready again.
    for team_id in 1..=3 {
        global.send(json!({"type": "team.left", "team_id": team_id}));
    }
    get_until(addr, "/readyz", |s, _| s == 200).await;
    stop.stop();
    join(thread, || stop.force()).await.expect("no panic");
}

/// The binary's stderr, read on a thread that can be told to stop reading
/// (the pipe then fills and every write to it blocks) and to read again.
struct Stderr {
    http: std::sync::mpsc::Receiver<SocketAddr>,
    paused: Arc<AtomicBool>,
    resume: Option<std::sync::mpsc::Sender<()>>,
    thread: std::thread::JoinHandle<()>,
}

impl Stderr {
    /// Reads `pipe` line by line: sends the HTTP address once it is logged
    /// (as JSON), and while paused reads nothing until resumed. Ends at
    /// the end of the pipe.
    fn read(pipe: std::io::PipeReader) -> Stderr {
        use std::io::BufRead;
        let (addr, http) = std::sync::mpsc::channel();
        let (resume, resumed) = std::sync::mpsc::channel::<()>();
        let paused = Arc::new(AtomicBool::new(false));
        let thread = {
            let paused = paused.clone();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(pipe).lines() {
                    let Ok(line) = line else { return };
                    let logged: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
                    let url = logged["fields"]["url"].as_str().unwrap_or_default();
                    if let Some(found) = url
                        .strip_prefix("http://")
                        .and_then(|rest| rest.trim_end_matches('/').parse().ok())
                    {
                        let _ = addr.send(found);
                    }
                    if paused.load(Ordering::Relaxed) {
                        // Resumed, or the test is over (the sender gone).
                        let _ = resumed.recv();
                    }
                }
            })
        };
        Stderr {
            http,
            paused,
            resume: Some(resume),
            thread,
        }
    }

    fn pause(&self) {
        self.paused.store(true, Ordering::Relaxed);
    }

    fn resume(&self) {
        self.paused.store(false, Ordering::Relaxed);
        if let Some(resume) = &self.resume {
            let _ = resume.send(());
        }
    }
}

/// `/healthz` says 503 while the real driver is stalled the way a running
/// binary can stall: its status line goes to stderr on the driver's
/// thread, and a stderr nobody reads (a full pipe) blocks that write.
/// Read again, the driver moves on and `/healthz` says 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_is_503_while_the_driver_is_stalled_and_200_once_it_moves_again() {
    let mut server = Server::bind().await;
    let (pipe, stderr) = std::io::pipe().expect("pipe");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["connect", &server.url("/global"), "--state", "none"])
        .args(["--http", "127.0.0.1:0", "--log-format", "json"])
        // A status line every few milliseconds fills the pipe quickly.
        .args(["--status-interval", "2ms"])
        // Only the driver logs after the start: no other thread blocks on
        // the pipe (the HTTP server must go on answering).
        .env(
            "RUST_LOG",
            "warn,switchboard::cli=info,switchboard::status=info",
        )
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("binary starts");
    let stderr = Stderr::read(pipe);
    let addr = stderr
        .http
        .recv_timeout(DEADLINE)
        .expect("the binary logs its HTTP address");
    let global = server.accept().await;
    global.send(json!({"type": "hello"}));
    get_until(addr, "/healthz", |s, _| s == 200).await;

    stderr.pause();
    let stalled = get_until(addr, "/healthz", |s, _| s == 503).await;
    assert_eq!(stalled["ok"], false, "{stalled}");
    assert!(
        stalled["why"]
            .as_str()
            .is_some_and(|w| w.contains("did not answer")),
        "{stalled}"
    );
    stderr.resume();
    let alive = get_until(addr, "/healthz", |s, _| s == 200).await;
    assert_eq!(alive["ok"], true, "{alive}");

    child.kill().expect("kill");
    child.wait().expect("reaped");
    let Stderr { resume, thread, .. } = stderr;
    drop(resume);
    join(thread, || {}).await.expect("stderr reader");
    drop(global);
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
    common::promtool::assert_promtool_accepts(&metrics);
    // A scraper that asks for OpenMetrics gets it.
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nAccept: application/openmetrics-text\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.expect("write");
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
    join(thread, || stop.force()).await.expect("no panic");
    drop(global);
}

// ---------------------------------------------------------------------------
// The core under HTTP load.

/// One GET on a kept-alive connection; the status and the body's length.
async fn get_kept_alive(
    stream: &mut tokio::io::BufReader<tokio::net::TcpStream>,
    addr: SocketAddr,
    path: &str,
) -> std::io::Result<(u16, usize)> {
    use tokio::io::AsyncBufReadExt;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    stream.get_mut().write_all(request.as_bytes()).await?;
    let mut line = String::new();
    stream.read_line(&mut line).await?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status in {line:?}")))?;
    let mut length = 0usize;
    loop {
        line.clear();
        if stream.read_line(&mut line).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length];
    stream.read_exact(&mut body).await?;
    Ok((status, length))
}

/// What the driver did, seen from a sidecar after each step.
#[derive(Clone, Copy, Debug, Default)]
struct Pulse {
    steps: u64,
    pongs: u64,
    rtt_sum_ms: u64,
    open: u64,
}

/// Load: `clients` keep-alive clients GET `/teams` in a loop until
/// `halt`, counting the answers in `served`.
fn hammer(
    addr: SocketAddr,
    clients: usize,
    halt: Arc<AtomicBool>,
    served: Arc<AtomicU64>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..clients)
        .map(|_| {
            let (halt, served) = (halt.clone(), served.clone());
            tokio::spawn(async move {
                let Ok(stream) = tokio::net::TcpStream::connect(addr).await else {
                    return;
                };
                let mut stream = tokio::io::BufReader::new(stream);
                while !halt.load(Ordering::Relaxed) {
                    match get_kept_alive(&mut stream, addr, "/teams").await {
                        Ok((200, _)) => {
                            served.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
            })
        })
        .collect()
}

/// A simulator streaming to `teams` teams, the client pinging every
/// `ping` with the HTTP server's telemetry, and the driver's pulse.
async fn fleet_under_watch(
    teams: u64,
    ping: Duration,
) -> (
    switchboard::sim::SimServer,
    HttpServer,
    Arc<Mutex<Pulse>>,
    StopHandle,
    std::thread::JoinHandle<()>,
) {
    use switchboard::sim::{Chaos, Scenario, Schedule, SimConfig, SimServer};
    let server = SimServer::start(SimConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        scenario: Scenario {
            teams,
            run_for: Some(Duration::from_secs(3600)),
            max_duration: Duration::from_secs(7200),
            rate: 1.0,
            leave_fraction: 0.0,
            healthcheck_every: Duration::from_secs(1),
            ..Scenario::default()
        },
        chaos: Chaos::none(),
        schedule: Schedule::none(),
        seed: 3,
        tls: false,
    })
    .await
    .expect("simulator binds");
    let http = HttpServer::start("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("binds");
    let pulse = Arc::new(Mutex::new(Pulse::default()));
    let stop = StopHandle::new();
    let mut telemetry = http.telemetry();
    let handle = tokio::runtime::Handle::current();
    let mut config = config(server.global_url());
    config.core.tick = Duration::from_millis(10);
    config.core.ping_interval = ping;
    config.core.pong_timeout = Duration::from_secs(30);
    let thread = {
        let stop = stop.clone();
        let pulse = pulse.clone();
        std::thread::spawn(move || {
            let mut watch = move |core: &switchboard::Core| {
                let rtt = &core.stats().rtt;
                if let Ok(mut p) = pulse.lock() {
                    *p = Pulse {
                        steps: core.steps(),
                        pongs: rtt.count(),
                        rtt_sum_ms: rtt.sum_ms,
                        open: core.fleet().in_state(switchboard::core::LinkKind::Open),
                    };
                }
            };
            let _ = runtime::run(&config, handle, &stop, &mut [&mut telemetry, &mut watch]);
        })
    };
    let started = Instant::now();
    while pulse.lock().expect("pulse").open < teams {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "teams never all connected"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (server, http, pulse, stop, thread)
}

/// While 32 keep-alive clients poll `/teams` as fast as they are answered,
/// the core keeps stepping and its pings keep being answered: HTTP puts no
/// work on its thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_core_keeps_stepping_and_answering_pongs_while_clients_hammer_teams() {
    let teams = 300;
    let (server, http, pulse, stop, thread) =
        fleet_under_watch(teams, Duration::from_millis(200)).await;
    let halt = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let clients = hammer(http.addr(), 32, halt.clone(), served.clone());
    let started = Instant::now();
    while served.load(Ordering::Relaxed) < 64 {
        assert!(started.elapsed() < DEADLINE, "/teams never answered");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // From here on, under load.
    let before = *pulse.lock().expect("pulse");
    let loaded = served.load(Ordering::Relaxed);
    loop {
        let now = *pulse.lock().expect("pulse");
        if now.steps > before.steps + 100
            && now.pongs >= before.pongs + teams
            && served.load(Ordering::Relaxed) > loaded + 64
        {
            break;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "under load the core stalled: {before:?} then {now:?}, {} answers",
            served.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    halt.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.expect("client");
    }
    stop.stop();
    join(thread, || stop.force()).await.expect("no panic");
    drop((server, http));
}

/// Publishes `peer`'s core to `http` once, as the driver's sidecar does
/// after a step, and never again: a driver that stalled there.
fn publish_once(http: &HttpServer, peer: &mut switchboard::testkit::Peer) {
    use switchboard::runtime::{Sidecar, Step};
    let mut telemetry = http.telemetry();
    let wake = switchboard::inbox::Wake::unattached();
    telemetry.start(&mut peer.core, &wake);
    let step = Step {
        at: Instant::now(),
        took: Duration::ZERO,
        team_events: &[],
        inbox_depth: 0,
    };
    telemetry.after_step(&mut peer.core, &step);
}

/// Every answer comes from what was published: with the driver stalled
/// (the sidecar published once, then nothing calls it again), `/teams`,
/// `/teams/{id}` and `/fleet` answer at once with what it published, and
/// `/healthz` says the driver does not answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teams_are_served_from_the_published_view_while_the_driver_is_stalled() {
    use switchboard::testkit::Peer;
    let http = HttpServer::start("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("binds");
    let addr = http.addr();
    let mut peer = Peer::new(7);
    peer.open_global();
    peer.join(TeamId(1));
    peer.connect_team(TeamId(1));
    peer.message(TeamId(1), "props to you");
    peer.step();
    publish_once(&http, &mut peer);
    // The driver stalls here: nothing calls the sidecar again.

    let (status, body) = get(addr, "/teams").await;
    assert_eq!(status, 200, "{body}");
    let teams: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(teams[0]["id"], 1, "{body}");
    assert_eq!(teams[0]["messages"], 1, "{body}");
    let (status, body) = get(addr, "/teams/1").await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = get(addr, "/teams/2").await;
    assert_eq!(status, 404);
    let (status, body) = get(addr, "/fleet").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = get(addr, "/healthz").await;
    assert_eq!(status, 503, "{body}");
    drop(peer);
}

/// Measures the core's step rate and pong round trip at 2,000 teams, quiet
/// and with 32 keep-alive clients polling `/teams` (`TEAMS`, `SECS`,
/// `PING_MS` to change): `cargo test --test http -- --ignored --nocapture measure`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: prints numbers, asserts nothing about them"]
async fn measure_the_core_under_http_load() {
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let teams = env("TEAMS", 2000);
    let secs = env("SECS", 20);
    let ping = Duration::from_millis(env("PING_MS", 5000));
    let (server, http, pulse, stop, thread) = fleet_under_watch(teams, ping).await;
    let window = Duration::from_secs(secs);
    let sample = || *pulse.lock().expect("pulse");
    let report = |what: &str, a: Pulse, b: Pulse, served: u64| {
        let pongs = b.pongs - a.pongs;
        println!(
            "{what}: {teams} teams, {secs}s: {} steps ({:.1}/s), {pongs} pongs, mean pong rtt {:.1} ms, /teams answered {served}",
            b.steps - a.steps,
            (b.steps - a.steps) as f64 / secs as f64,
            (b.rtt_sum_ms - a.rtt_sum_ms) as f64 / pongs.max(1) as f64,
        );
    };
    let a = sample();
    tokio::time::sleep(window).await;
    let b = sample();
    report("quiet", a, b, 0);
    let halt = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let clients = hammer(http.addr(), 32, halt.clone(), served.clone());
    let a = sample();
    tokio::time::sleep(window).await;
    let b = sample();
    halt.store(true, Ordering::Relaxed);
    for client in clients {
        let _ = client.await;
    }
    report("32 clients on /teams", a, b, served.load(Ordering::Relaxed));
    stop.stop();
    let _ = join(thread, || stop.force()).await;
    drop((server, http));
}

// ---------------------------------------------------------------------------
// What a peer can hold: slow heads, idle connections, the connection cap.

/// An HTTP server with `limits` and `allow_hosts`.
async fn server_with(limits: Limits, allow_hosts: &[&str]) -> HttpServer {
    let options = HttpOptions {
        limits,
        allow_hosts: allow_hosts.iter().map(|h| (*h).to_owned()).collect(),
    };
    HttpServer::start_with("127.0.0.1:0".parse().expect("addr"), options)
        .await
        .expect("binds")
}

/// A connection that sent half a request head and nothing more.
async fn slow_head(addr: SocketAddr) -> tokio::net::TcpStream {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nX-Slow: ").as_bytes())
        .await
        .expect("write");
    stream
}

/// Reads until the server closes; what it sent. Panics if it never closes.
async fn until_closed(stream: &mut tokio::net::TcpStream) -> String {
    let mut got = Vec::new();
    let read = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "the server never closed the connection");
    String::from_utf8_lossy(&got).into_owned()
}

/// The server's connections once `done` holds for them.
async fn connections_until(http: &HttpServer, done: impl Fn(ConnStats) -> bool) -> ConnStats {
    let started = Instant::now();
    loop {
        let now = http.connections();
        if done(now) {
            return now;
        }
        assert!(started.elapsed() < DEADLINE, "never: {now:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heads_that_never_finish_and_idle_connections_are_closed_after_the_header_timeout() {
    let limits = Limits {
        header_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let http = server_with(limits, &[]).await;
    let addr = http.addr();
    let mut slow = Vec::new();
    for _ in 0..20 {
        slow.push(slow_head(addr).await);
    }
    // Kept alive after an answer, then silent.
    let mut idle =
        tokio::io::BufReader::new(tokio::net::TcpStream::connect(addr).await.expect("connect"));
    let (status, _) = get_kept_alive(&mut idle, addr, "/fleet")
        .await
        .expect("answered");
    assert_eq!(status, 200);
    for stream in &mut slow {
        until_closed(stream).await;
    }
    until_closed(idle.get_mut()).await;
    connections_until(&http, |c| c.open == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_cap_the_oldest_waiting_connection_makes_room_and_healthz_answers() {
    let limits = Limits {
        max_connections: 4,
        ..Limits::default()
    };
    let http = server_with(limits, &[]).await;
    let addr = http.addr();
    let mut server = Server::bind().await;
    let (stop, thread) = run_with_http(server.url("/global"), &http);
    let global = server.accept().await;
    let mut slow = Vec::new();
    for _ in 0..4 {
        slow.push(slow_head(addr).await);
        let opened = slow.len();
        connections_until(&http, |c| c.open == opened).await;
    }
    let (status, body) = get(addr, "/healthz").await;
    assert_eq!(status, 200, "{body}");
    // The oldest slow head made room; the others are still open.
    until_closed(&mut slow[0]).await;
    let now = connections_until(&http, |c| c.open == 3).await;
    assert_eq!(now.evicted, 1, "{now:?}");
    stop.stop();
    join(thread, || stop.force()).await.expect("no panic");
    drop(global);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_cap_with_every_connection_being_answered_a_new_one_is_refused() {
    use switchboard::runtime::Sidecar;
    use switchboard::testkit::Peer;
    let limits = Limits {
        max_connections: 4,
        ..Limits::default()
    };
    let http = server_with(limits, &[]).await;
    let addr = http.addr();
    // A driver that never wakes: each /healthz waits for it, busy.
    let mut peer = Peer::new(7);
    let mut telemetry = http.telemetry();
    let wake = switchboard::inbox::Wake::unattached();
    telemetry.start(&mut peer.core, &wake);
    let waiting: Vec<_> = (0..4)
        .map(|_| tokio::spawn(async move { get(addr, "/healthz").await }))
        .collect();
    connections_until(&http, |c| c.busy == 4).await;
    let mut refused = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET /fleet HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    // The server may close before the write lands.
    let _ = refused.write_all(request.as_bytes()).await;
    let mut got = Vec::new();
    let read = tokio::time::timeout(DEADLINE, refused.read_to_end(&mut got)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "refused, not answered: {:?}",
        String::from_utf8_lossy(&got)
    );
    assert_eq!(http.connections().refused, 1);
    for waiting in waiting {
        let (status, _) = waiting.await.expect("answered");
        assert_eq!(status, 503);
    }
    drop(peer);
}

// ---------------------------------------------------------------------------
// What a web page or a stranger can read.

/// One GET with a chosen `Host`; the status and body.
async fn get_as(addr: SocketAddr, host: &str, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let response = until_closed(&mut stream).await;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, body.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_this_machines_names_and_allowed_hosts_are_answered() {
    let http = server_with(Limits::default(), &["status.example"]).await;
    let addr = http.addr();
    let port = addr.port();
    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        "status.example".to_owned(),
    ] {
        let (status, body) = get_as(addr, &host, "/fleet").await;
        assert_eq!(status, 200, "{host}: {body}");
    }
    // A DNS-rebinding page: its own name, pointed at 127.0.0.1.
    for host in [format!("rebound.example:{port}"), "localhost:1".to_owned()] {
        let (status, body) = get_as(addr, &host, "/teams/1").await;
        assert_eq!(status, 421, "{host}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_team_view_never_shows_the_credentials_of_a_refused_url() {
    use switchboard::bridge::NetEvent;
    use switchboard::protocol::GlobalServerEvent;
    use switchboard::testkit::Peer;
    let http = server_with(Limits::default(), &[]).await;
    let addr = http.addr();
    let secret_url = "ws://bot:hunter2@127.0.0.1:9/team?token=s3cret";
    let mut peer = Peer::new(7);
    peer.open_global();
    peer.join(TeamId(5));
    peer.global_says(GlobalServerEvent::TeamConnect {
        team_id: TeamId(5),
        ws_url: secret_url.to_owned(),
    });
    peer.step();
    let conn = peer.team_conn(TeamId(5));
    peer.push(NetEvent::OpenFailed {
        conn,
        error: format!("connect {secret_url}: connection refused"),
    });
    peer.step();
    publish_once(&http, &mut peer);
    let (status, body) = get(addr, "/teams/5").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("127.0.0.1:9"),
        "the error is still told: {body}"
    );
    for secret in ["hunter2", "s3cret"] {
        assert!(!body.contains(secret), "{secret} served: {body}");
    }
}

#[test]
fn http_on_a_non_loopback_address_is_refused_unless_asked_for() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args([
            "connect",
            "ws://127.0.0.1:9/global",
            "--state",
            "none",
            "--give-up-after",
            "1s",
            "--http",
            "0.0.0.0:0",
        ])
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--http-public"), "{stderr}");
}
