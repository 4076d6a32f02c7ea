//! `switchboard demo` (the default): the simulator on an ephemeral loopback
//! port (in this process, or in a child process with `--sim-process`), the
//! client against it, live progress, the client's report held to the
//! simulator's truth, and the verdict. With a separate simulator it also
//! reports the client's own vitals: the soak report.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::Config;
use crate::http::HttpServer;
use crate::report::Report;
use crate::runtime::RunConfig;
use crate::sim::{ProgressHandle, Scenario, SimConfig, SimServer, Verdict, thousands};
use clap::Args;

use super::client::{ClientArgs, ServiceArgs, Sidecars, run_client};
use super::logging::{self, Audience, LogFormat, Progress};
use super::publish::Publishing;
use super::sim::{SimArgs, SimChild};
use super::{heading, usage_error};

/// The demo's flags: a scenario, the client's tunables, and what an
/// operated run keeps beside it.
#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    #[command(flatten)]
    sim: SimArgs,
    /// Run the simulator in a child process (`switchboard sim`), so the
    /// memory and descriptors the demo reports are the client's alone.
    /// Implied by --duration.
    #[arg(long, help_heading = heading::SIMULATOR)]
    sim_process: bool,
    #[command(flatten)]
    client: ClientArgs,
    #[command(flatten)]
    service: ServiceArgs,
}

/// The live progress of the demo: a line rewritten in place on a terminal,
/// plain lines otherwise.
struct DemoProgress {
    sim: Option<ProgressHandle>,
    display: Progress,
    started: Instant,
    last: Instant,
}

impl DemoProgress {
    fn tick(&mut self, core: &crate::Core) {
        let now = Instant::now();
        if now.duration_since(self.last) < self.display.every() {
            return;
        }
        self.last = now;
        let c = core.summary();
        let sim = self.sim.as_ref().map_or_else(String::new, |sim| {
            let s = sim.progress();
            format!(
                " | simulator: {} written, {} faults injected",
                s.messages, s.faults
            )
        });
        self.display.show(format!(
            "[{:>5.1}s] client: {}/{} teams connected, {} messages counted, {} reconnects{sim}",
            now.duration_since(self.started).as_secs_f64(),
            c.connected,
            c.teams,
            c.messages,
            c.reconnects,
        ));
    }
}

/// When the client's memory is first sampled for the soak report: after a
/// minute of warm-up, or half a shorter duration.
const WARM_UP: Duration = Duration::from_secs(60);

/// How often the client's memory is sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// The client's memory over the run.
struct Vitals {
    started: Instant,
    warm_up: Duration,
    at_warm_up: Option<u64>,
    /// The most seen from the warm-up on: a rise that falls back by the
    /// end shows here, not in the two end points.
    peak_after_warm_up: Option<u64>,
    last: Option<u64>,
    sampled: Option<Instant>,
}

impl Vitals {
    fn new(run_for: Option<Duration>) -> Vitals {
        Vitals {
            started: Instant::now(),
            warm_up: run_for.map_or(WARM_UP, |d| WARM_UP.min(d / 2)),
            at_warm_up: None,
            peak_after_warm_up: None,
            last: None,
            sampled: None,
        }
    }

    fn tick(&mut self) {
        let now = Instant::now();
        if self
            .sampled
            .is_some_and(|at| now.duration_since(at) < SAMPLE_EVERY)
        {
            return;
        }
        self.sampled = Some(now);
        self.last = crate::procfs::resident_bytes();
        if self.at_warm_up.is_none() && now.duration_since(self.started) >= self.warm_up {
            self.at_warm_up = self.last;
        }
        if self.at_warm_up.is_some() {
            self.peak_after_warm_up = self.peak_after_warm_up.max(self.last);
        }
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

/// The soak report: the simulator's observations and the client's vitals.
fn soak_report(
    config: &SimConfig,
    verdict: &Verdict,
    report: Option<&Report>,
    vitals: &Vitals,
    sim_pid: u32,
) -> String {
    let mut lines = ReportLines(soak_heading(config, sim_pid));
    lines.traffic(verdict, report);
    lines.vitals(vitals);
    lines.0
}

/// The soak report's first line: what was played.
fn soak_heading(config: &SimConfig, sim_pid: u32) -> String {
    let scenario = &config.scenario;
    let length = scenario.run_for.map_or_else(
        || format!("{} messages a team", thousands(scenario.messages)),
        |d| format!("{} of streaming", humantime::format_duration(d)),
    );
    format!(
        "soak report: {length}, {} teams at {}/s (client figures are this process's; the \
         simulator ran as process {sim_pid})\n",
        thousands(scenario.teams),
        scenario.rate
    )
}

/// The soak report, a `key value` line at a time.
struct ReportLines(String);

impl ReportLines {
    fn line(&mut self, key: &str, value: String) {
        self.0.push_str(&format!("  {key:<24} {value}\n"));
    }

    /// What was delivered, what was injected, and how the client coped.
    fn traffic(&mut self, verdict: &Verdict, report: Option<&Report>) {
        self.line(
            "messages delivered:",
            format!(
                "{} (props {})",
                thousands(verdict.messages),
                thousands(verdict.props)
            ),
        );
        let failed = match verdict.not_recovered() {
            0 => String::new(),
            n => format!(", {} not recovered", thousands(n)),
        };
        self.line(
            "faults:",
            format!(
                "{} injected, {} survived, {} not observed{failed} (by kind below)",
                thousands(verdict.injected()),
                thousands(verdict.survived()),
                thousands(verdict.not_observed())
            ),
        );
        self.line(
            "client reconnects:",
            report.map_or_else(
                || "n/a (the client did not finish)".to_owned(),
                |r| thousands(r.teams.iter().map(|t| t.reconnects).sum()),
            ),
        );
        self.line(
            "longest disconnect:",
            verdict.longest_disconnect.map_or_else(
                || "none".to_owned(),
                |d| {
                    format!(
                        "{:.2}s (team {}{})",
                        d.length.as_secs_f64(),
                        d.team,
                        if d.unended {
                            ", still down at the end"
                        } else {
                            ""
                        }
                    )
                },
            ),
        );
    }

    /// The client's memory from the warm-up on, and its descriptors.
    fn vitals(&mut self, vitals: &Vitals) {
        let warm = humantime::format_duration(vitals.warm_up);
        self.line(
            &format!("client RSS at {warm}:"),
            vitals
                .at_warm_up
                .map_or_else(|| "n/a (the run ended first)".to_owned(), mib),
        );
        let growth = match (vitals.at_warm_up, vitals.last) {
            (Some(warm), Some(end)) => {
                let delta = end as f64 - warm as f64;
                format!(
                    " ({}{}, {:+.1}% after warm-up)",
                    if delta >= 0.0 { "+" } else { "-" },
                    mib(delta.abs() as u64),
                    100.0 * delta / warm as f64
                )
            }
            _ => String::new(),
        };
        self.line(
            "client RSS at end:",
            vitals
                .last
                .map_or_else(|| "n/a".to_owned(), |b| format!("{}{growth}", mib(b))),
        );
        self.line(
            &format!("client RSS max since {warm}:"),
            vitals
                .peak_after_warm_up
                .map_or_else(|| "n/a".to_owned(), mib),
        );
        self.line(
            "descriptors open at end:",
            crate::procfs::open_descriptors().map_or_else(|| "n/a".to_owned(), |n| n.to_string()),
        );
    }
}

/// Where the simulator runs.
enum Simulator {
    InProcess(tokio::task::JoinHandle<Verdict>),
    Child(SimChild),
}

/// The simulator, started, and what the client needs of it.
struct Started {
    simulator: Simulator,
    url: String,
    /// Its live counts (in this process only).
    progress: Option<ProgressHandle>,
}

impl Started {
    /// Starts the simulator: in a child process if `separate`, else on
    /// `runtime`.
    fn start(
        sim_args: &SimArgs,
        sim_config: &SimConfig,
        separate: bool,
        runtime: &tokio::runtime::Runtime,
        format: LogFormat,
    ) -> Result<Started, ExitCode> {
        if separate {
            let child = SimChild::spawn(sim_args, format, None).map_err(|error| {
                eprintln!("error: {error}");
                ExitCode::FAILURE
            })?;
            let url = child.global_url().to_owned();
            return Ok(Started {
                simulator: Simulator::Child(child),
                url,
                progress: None,
            });
        }
        let server = runtime
            .block_on(SimServer::start(sim_config.clone()))
            .map_err(|error| {
                eprintln!("error: cannot start the simulator: {error}");
                ExitCode::FAILURE
            })?;
        Ok(Started {
            url: server.global_url(),
            progress: Some(server.progress_handle()),
            simulator: Simulator::InProcess(runtime.spawn(server.verdict())),
        })
    }
}

impl Simulator {
    /// The process it runs in.
    fn pid(&self) -> u32 {
        match self {
            Simulator::Child(child) => child.pid(),
            Simulator::InProcess(_) => std::process::id(),
        }
    }

    /// Set if a child simulator ended without a verdict.
    fn ended_early(&self) -> Option<Arc<AtomicBool>> {
        match self {
            Simulator::Child(child) => Some(child.ended_early()),
            Simulator::InProcess(_) => None,
        }
    }

    /// Its verdict, once the client is done (bounded for a child).
    fn verdict(self, runtime: &tokio::runtime::Runtime) -> Verdict {
        match self {
            Simulator::InProcess(verdict) => runtime
                .block_on(verdict)
                .unwrap_or_else(|e| Verdict::failed(format!("simulator failed: {e}"))),
            Simulator::Child(child) => child.verdict(VERDICT_WAIT),
        }
    }
}

/// How long after the client's end a child simulator has to give its verdict.
const VERDICT_WAIT: Duration = Duration::from_secs(30);

/// Past the max duration, how long the demo waits before giving up on a
/// client that did not end.
const OVERTIME: Duration = Duration::from_secs(30);

/// Says why the demo gives up, and exits 1. Not `eprintln!`, which panics
/// if stderr is gone: the exit must happen.
fn give_up(why: &str) -> ! {
    let _ = writeln!(std::io::stderr(), "error: {why}");
    std::process::exit(1);
}

/// Ends the process if the run outlives its max duration (plus
/// [`OVERTIME`]) or a child simulator dies without a verdict: every wait
/// of the demo has a deadline. Dropped (disarmed) when the client is done.
struct Watchdog(Arc<AtomicBool>);

impl Watchdog {
    fn arm(limit: Duration, sim_ended_early: Option<Arc<AtomicBool>>) -> Watchdog {
        let done = Arc::new(AtomicBool::new(false));
        let watching = done.clone();
        let deadline = Instant::now() + limit + OVERTIME;
        std::thread::spawn(move || {
            while !watching.load(Ordering::Relaxed) {
                if sim_ended_early
                    .as_ref()
                    .is_some_and(|e| e.load(Ordering::Relaxed))
                {
                    give_up("the simulator process ended without a verdict");
                }
                if Instant::now() > deadline {
                    give_up(&format!(
                        "the demo did not end within its max duration (+{}s)",
                        OVERTIME.as_secs()
                    ));
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        Watchdog(done)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The scenario the simulator plays: the flags, with a recovery wait that
/// covers this demo's client (its own timings, not connect's), unless
/// --recovery-wait was given.
fn scenario_args(args: &DemoArgs) -> SimArgs {
    let mut sim = args.sim.clone();
    if sim.recovery_wait.is_none() {
        let client = args.client.core(String::new(), Config::demo());
        sim.recovery_wait = Some(Scenario::recovery_wait_for(&client).into());
    }
    sim
}

/// The demo's client, ready to run against the simulator.
struct Client {
    config: RunConfig,
    sidecars: Sidecars,
    publishing: Option<Publishing>,
}

impl Client {
    /// The client's configuration (the demo's defaults under the flags)
    /// and what runs beside it, for the simulator at `url`.
    fn prepare(
        args: &DemoArgs,
        url: &str,
        runtime: &tokio::runtime::Runtime,
        http: Option<&HttpServer>,
    ) -> Result<Client, ExitCode> {
        let mut config = args.client.run_config(url.to_owned(), Config::demo())?;
        // The simulator starts fresh every time: no state file unless asked.
        let persistence = args
            .service
            .persistence(url, config.core.max_teams, false)?;
        config.seed = args.client.seed.unwrap_or(args.sim.sim_seed);
        let publishing = args.client.publish.start(runtime, &mut config, http)?;
        let recorder = args.service.recorder(&config)?;
        Ok(Client {
            config,
            sidecars: Sidecars {
                persistence,
                recorder,
                telemetry: http.map(HttpServer::telemetry),
            },
            publishing,
        })
    }
}

/// Runs the demo.
pub fn run(args: &DemoArgs, format: LogFormat) -> ExitCode {
    demo(args, format).unwrap_or_else(|code| code)
}

fn demo(args: &DemoArgs, format: LogFormat) -> Result<ExitCode, ExitCode> {
    let listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let sim_args = scenario_args(args);
    let sim_config = sim_args.config(listen);
    sim_config.validate().map_err(usage_error)?;
    let display = logging::init(format, Audience::Demo);
    let runtime = super::tokio_runtime()?;
    let http = args.service.http(&runtime, true)?;
    if let Some(http) = &http {
        eprintln!("status page: {}", http.url());
    }
    let separate = args.sim_process || args.sim.duration.is_some();
    let started = Started::start(&sim_args, &sim_config, separate, &runtime, format)?;
    let client = Client::prepare(args, &started.url, &runtime, http.as_ref())?;
    let sim_pid = started.simulator.pid();
    eprintln!(
        "demo: simulator on {}{} with {} teams, chaos level {}; the client connects to it",
        started.url,
        if separate {
            format!(" (child process {sim_pid})")
        } else {
            String::new()
        },
        args.sim.teams,
        args.sim.chaos
    );
    let watchdog = Watchdog::arm(
        sim_config.scenario.max_duration,
        started.simulator.ended_early(),
    );
    let mut progress = DemoProgress {
        sim: started.progress,
        display,
        started: Instant::now(),
        last: Instant::now() - Duration::from_secs(60),
    };
    let mut vitals = Vitals::new(sim_config.scenario.run_for);
    let Client {
        config,
        mut sidecars,
        publishing,
    } = client;
    let mut show = |core: &crate::Core| {
        progress.tick(core);
        vitals.tick();
    };
    let outcome = run_client(
        config,
        args.service.report,
        &runtime,
        &mut sidecars.after(vec![&mut show]),
    );
    progress.display.finish();
    let published = publishing.map_or(Ok(()), |p| p.finish(&runtime).map(|_| ()));
    drop(watchdog);
    let mut verdict = started.simulator.verdict(&runtime);
    if let Ok(outcome) = &outcome {
        verdict.check_report(&outcome.report);
    }
    if separate {
        let report = outcome.as_ref().ok().map(|o| &o.report);
        print!(
            "{}",
            soak_report(&sim_config, &verdict, report, &vitals, sim_pid)
        );
    }
    println!("{verdict}");
    match outcome {
        Ok(_) if published.is_err() => Ok(ExitCode::FAILURE),
        Ok(_) if verdict.verified => Ok(ExitCode::SUCCESS),
        Ok(_) => Ok(ExitCode::FAILURE),
        Err(code) => Err(code),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Probe {
        #[command(flatten)]
        demo: DemoArgs,
    }

    fn recovery_wait(argv: &[&str]) -> (Duration, Vec<String>) {
        let args = Probe::parse_from(std::iter::once("probe").chain(argv.iter().copied())).demo;
        let sim = scenario_args(&args);
        let listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        (sim.config(listen).scenario.recovery_wait, sim.to_args())
    }

    #[test]
    fn the_simulator_waits_as_long_as_the_demos_client_may_take_to_recover() {
        let (wait, _) = recovery_wait(&[]);
        assert_eq!(wait, Scenario::recovery_wait_for(&Config::demo()));
        let slow = Config {
            ping_interval: Duration::from_secs(40),
            pong_timeout: Duration::from_secs(20),
            connect_timeout: Duration::from_secs(3),
            ..Config::demo()
        };
        let (wait, flags) = recovery_wait(&[
            "--ping-interval=40s",
            "--pong-timeout=20s",
            "--connect-timeout=3s",
        ]);
        assert_eq!(wait, Scenario::recovery_wait_for(&slow));
        assert!(wait > Duration::from_secs(60), "{wait:?}");
        // A simulator in a child process is told the same.
        let told = format!("--recovery-wait={}", humantime::format_duration(wait));
        assert!(flags.contains(&told), "{told} not in {flags:?}");
        // One given on the command line is kept.
        let (wait, _) = recovery_wait(&["--ping-interval=40s", "--recovery-wait=5s"]);
        assert_eq!(wait, Duration::from_secs(5));
    }
}
