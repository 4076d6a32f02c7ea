//! `switchboard bench`: one measured run against the simulator in a child
//! process, so the client's figures are its own. The simulator times
//! connecting and delivering (as a server sees them: a healthcheck reply
//! showing every message); this process measures its own memory, its CPU
//! per message and while idle, and, when messages come at a set rate, the
//! latency from the server's write to the counter changing in the world.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::runtime::{Sidecar, Step};
use crate::sim::Verdict;
use crate::tap::{self, Delivery};
use crate::{Config, ConnId, Core, NetEvent};
use clap::{Args, Parser};
use serde::Serialize;

use super::client::{ClientArgs, run_client};
use super::logging::LogFormat;
use super::sim::{SimArgs, SimChild};
use super::{duration, heading, usage_error};

/// `switchboard bench`: the run's size and pace, and the client's
/// tunables. It has no report, state file, recording or HTTP server (see
/// [`ServiceArgs`]): it prints its own figures of one fresh run.
///
/// [`ServiceArgs`]: super::client::ServiceArgs
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Teams that join.
    #[arg(long, default_value_t = 1_000, help_heading = heading::SCENARIO)]
    teams: u64,
    /// Messages each team receives.
    #[arg(long, default_value_t = 1_000, help_heading = heading::SCENARIO)]
    messages: u64,
    /// Messages per second per team (default: as fast as the simulator
    /// writes). With a rate, latency is measured too.
    #[arg(long, help_heading = heading::SCENARIO)]
    rate: Option<f64>,
    /// The idle window after delivery, in which the client's CPU is measured.
    #[arg(long, value_parser = duration, default_value = "3s", help_heading = heading::SCENARIO)]
    idle: humantime::Duration,
    /// Over TLS: the simulator serves wss:// with a certificate made at
    /// start, which this client trusts (as through --ca-file).
    #[arg(long, conflicts_with = "ca_file", help_heading = heading::SCENARIO)]
    tls: bool,
    /// Print the figures as one JSON object.
    #[arg(long, help_heading = heading::OUTPUT)]
    json: bool,
    #[command(flatten)]
    client: ClientArgs,
}

/// The figures of one run.
#[derive(Debug, Default, Serialize)]
struct Figures {
    teams: u64,
    messages_per_team: u64,
    rate: Option<f64>,
    tls: bool,
    connect_all_ms: Option<f64>,
    /// CPU from the start until every team's link was open in the core.
    cpu_connect_s: Option<f64>,
    /// The same per team (a handshake, TCP and websocket, TLS if on).
    cpu_us_per_connect: Option<f64>,
    /// TLS handshakes the simulator completed, by kind.
    tls_handshakes: Option<crate::sim::Handshakes>,
    deliver_all_ms: Option<f64>,
    messages_per_s: Option<f64>,
    peak_rss_kib: Option<u64>,
    rss_kib_per_team: Option<f64>,
    cpu_deliver_s: Option<f64>,
    cpu_ns_per_message: Option<f64>,
    idle_window_s: Option<f64>,
    cpu_idle_s: Option<f64>,
    latency_p50_ms: Option<f64>,
    latency_p99_ms: Option<f64>,
    latency_samples: usize,
    verified: bool,
    verdict: String,
}

/// CPU time of every thread of this process, ns.
fn cpu_ns() -> Option<u64> {
    crate::procfs::cpu_time().map(|t| u64::try_from(t.as_nanos()).unwrap_or(u64::MAX))
}

/// Peak resident memory of this process, KiB.
fn peak_rss_kib() -> Option<u64> {
    crate::procfs::peak_resident_bytes().map(|bytes| bytes >> 10)
}

fn epoch_ns(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Writes and counts met by (socket, index on it), whichever came first.
#[derive(Default)]
struct Latencies {
    sent: HashMap<(ConnId, u64), u64>,
    counted: HashMap<(ConnId, u64), u64>,
    samples_us: Vec<u32>,
}

impl Latencies {
    fn pair(&mut self, sent_ns: u64, counted_ns: u64) {
        let us = counted_ns.saturating_sub(sent_ns) / 1_000;
        self.samples_us.push(u32::try_from(us).unwrap_or(u32::MAX));
    }

    fn sent(&mut self, key: (ConnId, u64), ns: u64) {
        match self.counted.remove(&key) {
            Some(counted) => self.pair(ns, counted),
            None => {
                self.sent.insert(key, ns);
            }
        }
    }

    fn counted(&mut self, key: (ConnId, u64), ns: u64) {
        match self.sent.remove(&key) {
            Some(sent) => self.pair(sent, ns),
            None => {
                self.counted.insert(key, ns);
            }
        }
    }

    fn percentile_ms(&mut self, p: f64) -> Option<f64> {
        if self.samples_us.is_empty() {
            return None;
        }
        self.samples_us.sort_unstable();
        let i = ((self.samples_us.len() - 1) as f64 * p).round() as usize;
        Some(f64::from(self.samples_us[i]) / 1000.0)
    }
}

/// The sidecar that samples CPU and memory at the run's milestones and,
/// in latency mode, stamps the step in which each message was counted.
struct Probe {
    teams: u64,
    started: Option<u64>,
    connected: Option<u64>,
    total: u64,
    idle: Duration,
    latencies: Option<Arc<Mutex<Latencies>>>,
    deliver_started: Option<u64>,
    delivered: Option<(Instant, u64)>,
    idle_measured: Option<(f64, f64)>,
}

impl Probe {
    fn idle_due(&self) -> Option<Instant> {
        match (self.delivered, self.idle_measured) {
            // Most of the window: the simulator's final check follows it.
            (Some((at, _)), None) => Some(at + self.idle.mul_f64(0.8)),
            _ => None,
        }
    }

    fn check_idle(&mut self) {
        if let (Some(due), Some((at, cpu))) = (self.idle_due(), self.delivered)
            && Instant::now() >= due
            && let Some(now) = cpu_ns()
        {
            let window = at.elapsed().as_secs_f64();
            self.idle_measured = Some((window, now.saturating_sub(cpu) as f64 / 1e9));
        }
    }
}

impl Sidecar for Probe {
    fn start(&mut self, core: &mut Core, _wake: &crate::inbox::Wake) {
        self.started = cpu_ns();
        if self.latencies.is_some() {
            core.set_recording(true);
        }
    }

    fn after_step(&mut self, core: &mut Core, step: &Step<'_>) {
        let fleet = core.fleet();
        let counted = fleet.messages;
        if self.connected.is_none()
            && fleet.by_state[crate::core::LinkKind::Open.index()] >= self.teams
        {
            self.connected = cpu_ns();
        }
        if self.deliver_started.is_none() && counted > 0 {
            self.deliver_started = cpu_ns();
        }
        if self.delivered.is_none()
            && counted >= self.total
            && let Some(cpu) = cpu_ns()
        {
            self.delivered = Some((Instant::now(), cpu));
        }
        if let Some(latencies) = &self.latencies {
            let at = epoch_ns(SystemTime::now()) - step.at.elapsed().as_nanos() as u64;
            let recorded = core.drain_recorded();
            if let Ok(mut book) = latencies.lock() {
                for event in recorded {
                    if let NetEvent::Messages {
                        conn, first, count, ..
                    } = event
                    {
                        for index in first..first + u64::from(count) {
                            book.counted((conn, index), at);
                        }
                    }
                }
            }
        }
        self.check_idle();
    }

    fn on_wake(&mut self, _core: &mut Core) {
        self.check_idle();
    }

    fn next_wake(&self) -> Option<Instant> {
        self.idle_due()
    }
}

/// The scenario flags for the simulator child, through the simulator's own
/// parser (one definition of every flag).
fn sim_args(args: &BenchArgs) -> Result<SimArgs, String> {
    #[derive(Parser)]
    struct Wrap {
        #[command(flatten)]
        sim: SimArgs,
    }
    let rate = args.rate.unwrap_or_else(crate::sim::max_rate).to_string();
    let mut flags = vec![
        "sim".to_owned(),
        format!("--teams={}", args.teams),
        format!("--messages={}", args.messages),
        format!("--rate={rate}"),
        "--chaos=0".into(),
        "--leave=0".into(),
        "--join-over=1ms".into(),
        "--healthcheck-every=50ms".into(),
        format!("--idle-for={}", args.idle),
        // The simulator waits as long as this client may take to recover.
        format!(
            "--recovery-wait={}",
            humantime::format_duration(crate::sim::Scenario::recovery_wait_for(
                &args.client.core(String::new(), Config::default())
            ))
        ),
    ];
    if args.rate.is_some() {
        flags.push("--stamp".into());
    }
    Wrap::try_parse_from(flags)
        .map(|w| w.sim)
        .map_err(|e| e.to_string())
}

/// Runs the benchmark.
pub fn run(args: &BenchArgs, format: LogFormat) -> ExitCode {
    bench(args, format).unwrap_or_else(|code| code)
}

fn bench(args: &BenchArgs, format: LogFormat) -> Result<ExitCode, ExitCode> {
    let sim = checked_scenario(args)?;
    let runtime = super::tokio_runtime()?;
    let certificate = args.tls.then(|| {
        std::env::temp_dir().join(format!("switchboard-bench-{}.pem", std::process::id()))
    });
    let child = SimChild::spawn(&sim, format, certificate.as_deref()).map_err(|error| {
        eprintln!("error: {error}");
        ExitCode::FAILURE
    })?;
    let mut config = args
        .client
        .run_config(child.global_url().to_owned(), Config::default())?;
    if let Some(path) = &certificate {
        let trusted = crate::transport::tls_with_ca_file(path);
        let _ = std::fs::remove_file(path);
        config.transport.tls = Some(trusted.map_err(|error| {
            eprintln!("error: the simulator's certificate: {error}");
            ExitCode::FAILURE
        })?);
    }
    let latencies = args
        .rate
        .map(|_| Arc::new(Mutex::new(Latencies::default())));
    // Publishing is measured on its own: latency mode reads the tap itself.
    if latencies.is_some() && args.client.publish.requested() {
        return Err(usage_error(
            "--publish and --rate: latency is measured without publishing",
        ));
    }
    let publishing = args.client.publish.start(&runtime, &mut config, None)?;
    if let Some(book) = &latencies {
        config.tap = Some(time_writes(&runtime, book.clone()));
    }
    let mut probe = Probe {
        teams: args.teams,
        started: None,
        connected: None,
        total: args.teams * args.messages,
        idle: args.idle.into(),
        latencies: latencies.clone(),
        deliver_started: None,
        delivered: None,
        idle_measured: None,
    };
    let outcome = run_client(
        config,
        super::client::ReportFormat::None,
        &runtime,
        &mut [&mut probe],
    );
    let published = publishing.is_none_or(|p| p.finish(&runtime).is_ok());
    let verdict: Verdict = child.verdict(Duration::from_secs(30));
    let figures = Figures::of(args, &verdict, &probe, outcome.is_ok() && published);
    if args.json {
        println!("{}", serde_json::to_string(&figures).unwrap_or_default());
    } else {
        print!("{}", table(&figures, config_tick(args)));
    }
    runtime.shutdown_background();
    Ok(if figures.verified {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The simulator's scenario for this run, checked (one line and exit 2
/// if it cannot be played).
fn checked_scenario(args: &BenchArgs) -> Result<SimArgs, ExitCode> {
    let sim = sim_args(args)
        .map_err(|error| usage_error(error.lines().next().unwrap_or("bad scenario")))?;
    sim.config(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
        .validate()
        .map_err(usage_error)?;
    Ok(sim)
}

/// A tap that notes when the simulator wrote each message (the stamp it
/// begins with) in `book`, where the count's step is met.
fn time_writes(runtime: &tokio::runtime::Runtime, book: Arc<Mutex<Latencies>>) -> tap::Tap {
    let (tap, mut receiver) = tap::tap(64 << 20);
    runtime.spawn(async move {
        while let Some(delivery) = receiver.recv().await {
            let Delivery::Message(m) = delivery else {
                continue;
            };
            let sent = m
                .text
                .strip_prefix("t=")
                .and_then(|t| t.split(' ').next())
                .and_then(|t| t.parse::<u64>().ok());
            if let (Some(sent), Ok(mut book)) = (sent, book.lock()) {
                book.sent((m.conn, m.index), sent);
            }
        }
    });
    tap
}

impl Figures {
    /// The figures of a run: the simulator's timings, this process's
    /// memory, and what the probe measured. `finished`: the client ended
    /// as asked and everything was published.
    fn of(args: &BenchArgs, verdict: &Verdict, probe: &Probe, finished: bool) -> Figures {
        let total = args.teams * args.messages;
        let mut figures = Figures {
            teams: args.teams,
            messages_per_team: args.messages,
            rate: args.rate,
            tls: args.tls,
            tls_handshakes: verdict.tls_handshakes,
            connect_all_ms: verdict.timing.connect_all_ms,
            deliver_all_ms: verdict.timing.deliver_all_ms,
            messages_per_s: verdict
                .timing
                .deliver_all_ms
                .map(|ms| total as f64 / (ms / 1000.0)),
            peak_rss_kib: peak_rss_kib(),
            verified: verdict.verified && finished,
            verdict: verdict
                .to_string()
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned(),
            ..Figures::default()
        };
        figures.rss_kib_per_team = figures.peak_rss_kib.map(|k| k as f64 / args.teams as f64);
        if let (Some(start), Some(end)) = (probe.started, probe.connected) {
            let cpu = end.saturating_sub(start) as f64 / 1e9;
            figures.cpu_connect_s = Some(cpu);
            figures.cpu_us_per_connect = Some(cpu * 1e6 / args.teams as f64);
        }
        if let (Some(start), Some((_, end))) = (probe.deliver_started, probe.delivered) {
            let cpu = end.saturating_sub(start) as f64 / 1e9;
            figures.cpu_deliver_s = Some(cpu);
            figures.cpu_ns_per_message = Some(cpu * 1e9 / total as f64);
        }
        if let Some((window, cpu)) = probe.idle_measured {
            figures.idle_window_s = Some(window);
            figures.cpu_idle_s = Some(cpu);
        }
        if let Some(book) = &probe.latencies
            && let Ok(mut book) = book.lock()
        {
            figures.latency_p50_ms = book.percentile_ms(0.50);
            figures.latency_p99_ms = book.percentile_ms(0.99);
            figures.latency_samples = book.samples_us.len();
        }
        figures
    }
}

fn config_tick(args: &BenchArgs) -> Duration {
    args.client
        .run_config(String::from("ws://x/global"), Config::default())
        .map_or(Config::default().tick, |c| c.core.tick)
}

fn table(f: &Figures, tick: Duration) -> String {
    let opt =
        |v: Option<f64>, unit: &str| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}{unit}"));
    let pace = f.rate.map_or_else(
        || "as fast as the simulator writes".to_owned(),
        |r| format!("{r} a second each"),
    );
    let mut out = format!(
        "bench: {} teams x {} messages ({pace}), tick {}ms{}\n",
        f.teams,
        f.messages_per_team,
        tick.as_millis(),
        if f.tls { ", over TLS" } else { "" }
    );
    out += &format!(
        "  connect all      {}  (first team.join -> every team's socket open, as the simulator saw it)\n",
        opt(f.connect_all_ms, " ms")
    );
    out += &format!(
        "  CPU connecting   {} ({} a team){}\n",
        opt(f.cpu_connect_s, " s"),
        opt(f.cpu_us_per_connect, " µs"),
        f.tls_handshakes.map_or_else(String::new, |h| format!(
            "; TLS handshakes {} full, {} resumed",
            h.full, h.resumed
        ))
    );
    out += &format!(
        "  deliver all      {}  -> {} messages/s end to end (first write -> a healthcheck showing every message)\n",
        opt(f.deliver_all_ms, " ms"),
        f.messages_per_s
            .map_or_else(|| "-".into(), |v| format!("{v:.0}"))
    );
    out += &format!(
        "  peak RSS         {} ({} a team)\n",
        opt(f.peak_rss_kib.map(|k| k as f64 / 1024.0), " MiB"),
        opt(f.rss_kib_per_team, " KiB")
    );
    out += &format!(
        "  CPU              {} delivering, {} a message; {} over {} idle\n",
        opt(f.cpu_deliver_s, " s"),
        opt(f.cpu_ns_per_message, " ns"),
        f.cpu_idle_s
            .map_or_else(|| "-".into(), |v| format!("{v:.4} s")),
        opt(f.idle_window_s, " s")
    );
    out += &match (f.latency_p50_ms, f.latency_p99_ms) {
        (Some(p50), Some(p99)) => format!(
            "  latency          p50 {p50:.2} ms, p99 {p99:.2} ms (write -> counter in the world, {} messages)\n",
            f.latency_samples
        ),
        _ => "  latency          - (measured with --rate)\n".to_owned(),
    };
    out += &format!("  {}\n", f.verdict);
    out
}
