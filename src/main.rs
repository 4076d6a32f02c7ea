//! The switchboard binary: parse the command line, set up logging, and call
//! into the library. No protocol logic lives here.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use switchboard::runtime::{self, RunConfig, RunError, StopHandle};
use switchboard::sim::{Chaos, Fault, Scenario, SimConfig, SimServer};
use switchboard::transport::TransportConfig;
use switchboard::{Config, protocol};
use tracing::{info, warn};

/// Keeps a fleet of bot team connections alive behind one Global websocket
/// API. With no subcommand, runs the demo: the built-in simulator with
/// chaos on, the client against it, and the simulator's verdict.
#[derive(Parser, Debug)]
#[command(version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    /// Log format on stderr.
    #[arg(
        long,
        global = true,
        env = "SWITCHBOARD_LOG_FORMAT",
        default_value = "pretty"
    )]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Option<Command>,

    #[command(flatten)]
    demo: DemoArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Connect to a Global API and keep every team connected until `goodbye`
    /// or SIGINT/SIGTERM.
    Connect {
        /// The Global API's websocket URL, e.g. ws://127.0.0.1:8080/global.
        #[arg(value_parser = global_url, env = "SWITCHBOARD_GLOBAL_URL")]
        global_url: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Run the simulated Global API server for one scenario, then print its
    /// verdict (exit 0 only when the client's counts were exact).
    Sim {
        /// Address to listen on.
        #[arg(long, env = "SWITCHBOARD_LISTEN", default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        #[command(flatten)]
        sim: SimArgs,
    },
    /// The simulator and the client in one process (the default).
    Demo(DemoArgs),
}

#[derive(Args, Debug, Clone)]
struct DemoArgs {
    #[command(flatten)]
    sim: SimArgs,
    #[command(flatten)]
    client: ClientArgs,
}

/// The simulated run.
#[derive(Args, Debug, Clone)]
struct SimArgs {
    /// Teams that join.
    #[arg(long, default_value_t = 50)]
    teams: u64,
    /// Messages each team receives.
    #[arg(long, default_value_t = 200)]
    messages: u64,
    /// Messages per second per team.
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    /// Fraction of messages containing "props".
    #[arg(long, default_value_t = 0.2)]
    props: f64,
    /// Joins are spread over this long.
    #[arg(long, default_value = "1s", value_parser = duration)]
    join_over: Duration,
    /// How often the simulator asks for a healthcheck.
    #[arg(long, default_value = "500ms", value_parser = duration)]
    healthcheck_every: Duration,
    /// Fraction of teams that leave during the run (half of them rejoin).
    #[arg(long, default_value_t = 0.1)]
    leave: f64,
    /// Chaos level: 0 turns faults off, 1 is the default mix, 2 doubles it.
    #[arg(long, default_value_t = 1.0)]
    chaos: f64,
    /// Set one fault's rate, e.g. --fault zombie=2 (per second; for
    /// connect-error and delayed-hello a probability). Repeatable.
    /// Faults: team-close, team-error-close, team-reset, global-drop,
    /// zombie, garbage, connect-error, duplicate-join, delayed-hello,
    /// oversize, slow-reader.
    #[arg(long = "fault", value_parser = fault_rate)]
    faults: Vec<(Fault, f64)>,
    /// Give up the run after this long.
    #[arg(long, default_value = "120s", value_parser = duration)]
    max_duration: Duration,
    /// Seed for the simulator's decisions (and the client's jitter in the demo).
    #[arg(long, default_value_t = 1)]
    sim_seed: u64,
}

impl SimArgs {
    fn config(&self, listen: std::net::SocketAddr) -> SimConfig {
        let mut chaos = Chaos::level(self.chaos);
        for &(fault, rate) in &self.faults {
            chaos.0.insert(fault, rate);
        }
        SimConfig {
            listen,
            scenario: Scenario {
                teams: self.teams,
                messages: self.messages,
                rate: self.rate,
                props_fraction: self.props,
                join_over: self.join_over,
                healthcheck_every: self.healthcheck_every,
                leave_fraction: self.leave,
                max_duration: self.max_duration,
                ..Scenario::default()
            },
            chaos,
            seed: self.sim_seed,
        }
    }
}

fn fault_rate(text: &str) -> Result<(Fault, f64), String> {
    let (name, rate) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: expected NAME=RATE, e.g. zombie=0.5"))?;
    let fault = Fault::ALL
        .into_iter()
        .find(|f| f.name() == name)
        .ok_or_else(|| format!("unknown fault {name:?}"))?;
    let rate: f64 = rate
        .parse()
        .map_err(|_| format!("{rate:?} is not a number"))?;
    if !rate.is_finite() || rate < 0.0 {
        return Err("a rate is a non-negative number".into());
    }
    Ok((fault, rate))
}

/// Tunables shared by every command that runs the client.
#[derive(Args, Debug, Clone)]
struct ClientArgs {
    /// Length of one tick of the core (e.g. 10ms).
    #[arg(long, env = "SWITCHBOARD_TICK", default_value = "10ms", value_parser = duration)]
    tick: Duration,
    /// How often each open team link is pinged [default: 15s; demo: 1s].
    #[arg(long, env = "SWITCHBOARD_PING_INTERVAL", value_parser = duration)]
    ping_interval: Option<Duration>,
    /// Silence after a ping after which a team link is declared dead; may
    /// exceed the ping interval [default: 10s; demo: 1s].
    #[arg(long, env = "SWITCHBOARD_PONG_TIMEOUT", value_parser = duration)]
    pong_timeout: Option<Duration>,
    /// Backoff ceiling for the first retry, doubling per failure
    /// [default: 250ms; demo: 50ms].
    #[arg(long, env = "SWITCHBOARD_BACKOFF_MIN", value_parser = duration)]
    backoff_min: Option<Duration>,
    /// Largest backoff ceiling [default: 30s; demo: 1s].
    #[arg(long, env = "SWITCHBOARD_BACKOFF_MAX", value_parser = duration)]
    backoff_max: Option<Duration>,
    /// Longest socket handshake (TCP, TLS, websocket).
    #[arg(long, env = "SWITCHBOARD_CONNECT_TIMEOUT", default_value = "10s", value_parser = duration)]
    connect_timeout: Duration,
    /// Longest wait for the answer to a team.connect request.
    #[arg(long, env = "SWITCHBOARD_REQUEST_TIMEOUT", default_value = "10s", value_parser = duration)]
    request_timeout: Duration,
    /// Longest wait for a close handshake.
    #[arg(long, env = "SWITCHBOARD_CLOSE_TIMEOUT", default_value = "2s", value_parser = duration)]
    close_timeout: Duration,
    /// Largest message accepted from a peer, in bytes (suffixes KiB, MiB).
    #[arg(long, env = "SWITCHBOARD_MAX_MESSAGE_SIZE", default_value = "1MiB", value_parser = byte_size)]
    max_message_size: usize,
    /// How often to log a one-line status (0s: never).
    #[arg(long, env = "SWITCHBOARD_STATUS_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    status_interval: Duration,
    /// Exit 1 when Global stays unreachable this long (default: retry forever).
    #[arg(long, env = "SWITCHBOARD_GIVE_UP_AFTER", value_parser = duration)]
    give_up_after: Option<Duration>,
    /// Final report format on stdout.
    #[arg(long, env = "SWITCHBOARD_REPORT", default_value = "table")]
    report: ReportFormat,
    /// PEM file of extra CA certificates to trust for wss:// (on top of the
    /// bundled web roots), e.g. for a Global API behind a private CA.
    #[arg(long, env = "SWITCHBOARD_CA_FILE")]
    ca_file: Option<std::path::PathBuf>,
    /// Seed for backoff jitter (default: derived from the clock, and logged).
    #[arg(long, env = "SWITCHBOARD_SEED")]
    seed: Option<u64>,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum LogFormat {
    Pretty,
    Json,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum ReportFormat {
    Table,
    Json,
}

/// A human duration that is at least 1ms.
fn duration(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text).map_err(|e| format!("{e} (try 300ms or 15s)"))?;
    if d < Duration::from_millis(1) {
        return Err("must be at least 1ms".into());
    }
    Ok(d)
}

/// Bytes, with an optional KiB/MiB suffix.
fn byte_size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, ""),
    };
    let n: usize = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size (try 65536, 64KiB or 1MiB)"))?;
    let scale = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" | "KB" => 1 << 10,
        "MiB" | "M" | "MB" => 1 << 20,
        other => return Err(format!("unknown unit {other:?} (use KiB or MiB)")),
    };
    match n.checked_mul(scale) {
        Some(0) | None => Err("must be between 1 byte and the address space".into()),
        Some(v) => Ok(v),
    }
}

fn global_url(text: &str) -> Result<String, String> {
    protocol::normalize_ws_url(text)
        .map(|_| text.to_owned())
        .map_err(|e| e.to_string())
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Pretty => builder.compact().init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Raises the soft open-files limit to the hard limit: every team is a socket.
fn raise_fd_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => info!(limit, "open-files limit"),
        Err(error) => warn!(%error, "could not raise the open-files limit"),
    }
}

/// One clear line and exit status 2 for unusable input.
fn usage_error(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(2)
}

/// Which defaults apply to the client's timing flags.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// A long-lived service: patient defaults.
    Service,
    /// The ten-second demo: faults must be noticed and healed quickly.
    Demo,
}

fn run_config(global_url: String, args: &ClientArgs, mode: Mode) -> RunConfig {
    let pick = |value: Option<Duration>, service: u64, demo: u64| {
        value.unwrap_or(Duration::from_millis(match mode {
            Mode::Service => service,
            Mode::Demo => demo,
        }))
    };
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id())
    });
    RunConfig {
        core: Config {
            global_url,
            tick: args.tick,
            ping_interval: pick(args.ping_interval, 15_000, 1_000),
            pong_timeout: pick(args.pong_timeout, 10_000, 1_000),
            backoff_min: pick(args.backoff_min, 250, 50),
            backoff_max: pick(args.backoff_max, 30_000, 1_000),
            connect_timeout: args.connect_timeout,
            request_timeout: args.request_timeout,
            close_timeout: args.close_timeout,
            ..Config::default()
        },
        transport: TransportConfig {
            max_message_size: args.max_message_size,
            ..TransportConfig::default()
        },
        seed,
        status_interval: (!args.status_interval.is_zero()).then_some(args.status_interval),
        give_up_after: args.give_up_after,
    }
}

/// SIGINT/SIGTERM: the first asks for a graceful shutdown, the second exits.
async fn watch_signals(stop: StopHandle) {
    #[cfg(unix)]
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => Some(term),
        Err(error) => {
            warn!(%error, "cannot watch SIGTERM");
            None
        }
    };
    loop {
        #[cfg(unix)]
        let terminated = async {
            match term.as_mut() {
                Some(term) => term.recv().await,
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let terminated = std::future::pending::<Option<()>>();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminated => {}
        }
        if stop.is_stopped() {
            eprintln!("second signal: exiting now");
            std::process::exit(130);
        }
        info!("signal received: shutting down gracefully (again to force)");
        stop.stop();
    }
}

fn tokio_runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("switchboard-io")
        .build()
        .map_err(|error| {
            eprintln!("error: cannot start the async runtime: {error}");
            ExitCode::FAILURE
        })
}

/// Runs the client to its end and prints its report; `None` if it failed.
fn run_client(
    mut config: RunConfig,
    args: &ClientArgs,
    runtime: &tokio::runtime::Runtime,
    on_tick: runtime::OnTick<'_>,
) -> Result<runtime::RunOutcome, ExitCode> {
    if let Err(error) = config.core.validate() {
        return Err(usage_error(error));
    }
    if let Some(path) = &args.ca_file {
        match switchboard::transport::tls_with_ca_file(path) {
            Ok(tls) => config.transport.tls = Some(tls),
            Err(error) => return Err(usage_error(error)),
        }
    }
    raise_fd_limit();
    info!(seed = config.seed, url = %config.core.global_url, "starting");
    let stop = StopHandle::new();
    runtime.spawn(watch_signals(stop.clone()));
    match runtime::run(&config, runtime.handle().clone(), &stop, on_tick) {
        Ok(outcome) => {
            match args.report {
                ReportFormat::Table if outcome.report.teams.len() <= 100 => {
                    print!("{}", outcome.report.table());
                }
                ReportFormat::Table => println!(
                    "{} teams, {} messages, {} props (--report json for every team)",
                    outcome.report.teams.len(),
                    outcome.report.messages,
                    outcome.report.props
                ),
                ReportFormat::Json => println!("{}", outcome.report.json()),
            }
            info!(
                cause = ?outcome.cause,
                ticks = outcome.ticks,
                overruns = outcome.overruns,
                elapsed_ms = outcome.elapsed.as_millis() as u64,
                "run over"
            );
            Ok(outcome)
        }
        Err(RunError::Config(error)) => Err(usage_error(error)),
        Err(error @ RunError::GaveUp { .. }) => {
            eprintln!("error: {error}");
            Err(ExitCode::FAILURE)
        }
    }
}

fn connect(global_url: String, args: &ClientArgs) -> ExitCode {
    let config = run_config(global_url, args, Mode::Service);
    let runtime = match tokio_runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    match run_client(config, args, &runtime, &mut |_| {}) {
        Ok(_) => ExitCode::SUCCESS,
        Err(code) => code,
    }
}

fn sim(listen: std::net::SocketAddr, args: &SimArgs) -> ExitCode {
    let runtime = match tokio_runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    let config = args.config(listen);
    runtime.block_on(async {
        let server = match SimServer::start(config).await {
            Ok(server) => server,
            Err(error) => {
                eprintln!("error: cannot listen on {listen}: {error}");
                return ExitCode::FAILURE;
            }
        };
        println!("simulator listening: {}", server.global_url());
        let progress = server.progress_handle();
        let ticker = tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(2));
            loop {
                every.tick().await;
                let p = progress.progress();
                if p.started {
                    info!(
                        teams = p.teams,
                        connected = p.connected,
                        messages = p.messages,
                        faults = p.faults,
                        healthchecks = p.healthchecks,
                        "simulator"
                    );
                }
            }
        });
        let verdict = server.verdict().await;
        ticker.abort();
        println!("{verdict}");
        if verdict.verified {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    })
}

/// The live progress line of the demo, on stderr.
struct DemoProgress {
    sim: switchboard::sim::ProgressHandle,
    started: std::time::Instant,
    last: std::time::Instant,
}

impl DemoProgress {
    fn tick(&mut self, core: &switchboard::Core) {
        let now = std::time::Instant::now();
        if now.duration_since(self.last) < Duration::from_millis(500) {
            return;
        }
        self.last = now;
        let c = core.summary();
        let s = self.sim.progress();
        eprintln!(
            "[{:>5.1}s] client: {}/{} teams connected, {} messages counted, {} reconnects | simulator: {} written, {} faults injected",
            now.duration_since(self.started).as_secs_f64(),
            c.connected,
            c.teams,
            c.messages,
            c.reconnects,
            s.messages,
            s.faults,
        );
    }
}

fn demo(args: &DemoArgs) -> ExitCode {
    let runtime = match tokio_runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    let listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let server = match runtime.block_on(SimServer::start(args.sim.config(listen))) {
        Ok(server) => server,
        Err(error) => {
            eprintln!("error: cannot start the simulator: {error}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!(
        "demo: simulator on {} with {} teams, chaos level {}; the client connects to it",
        server.global_url(),
        args.sim.teams,
        args.sim.chaos
    );
    let mut config = run_config(server.global_url(), &args.client, Mode::Demo);
    config.seed = args.client.seed.unwrap_or(args.sim.sim_seed);
    let mut progress = DemoProgress {
        sim: server.progress_handle(),
        started: std::time::Instant::now(),
        last: std::time::Instant::now(),
    };
    let verdict = runtime.spawn(server.verdict());
    let outcome = run_client(config, &args.client, &runtime, &mut |core| {
        progress.tick(core)
    });
    let verdict = match runtime.block_on(verdict) {
        Ok(verdict) => verdict,
        Err(error) => {
            eprintln!("error: simulator failed: {error}");
            return ExitCode::FAILURE;
        }
    };
    println!("{verdict}");
    match outcome {
        Ok(_) if verdict.verified => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(code) => code,
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            use clap::error::ErrorKind;
            if matches!(
                error.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                error.exit();
            }
            // clap's message can span lines; say it on one.
            let text = error.to_string();
            let line: Vec<&str> = text
                .lines()
                .map(str::trim)
                .take_while(|l| !l.is_empty())
                .collect();
            eprintln!("{}", line.join(" "));
            eprintln!("(see --help)");
            return ExitCode::from(2);
        }
    };
    init_logging(cli.log_format);
    match cli.command {
        Some(Command::Connect { global_url, client }) => connect(global_url, &client),
        Some(Command::Sim { listen, sim: args }) => sim(listen, &args),
        Some(Command::Demo(args)) => demo(&args),
        None => demo(&cli.demo),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn fault_rates_parse_by_name() {
        assert_eq!(fault_rate("zombie=0.5"), Ok((Fault::Zombie, 0.5)));
        assert!(fault_rate("zombie").is_err());
        assert!(fault_rate("gremlins=1").is_err());
        assert!(fault_rate("zombie=-1").is_err());
        assert!(fault_rate("zombie=NaN").is_err());
    }

    #[test]
    fn sizes_and_durations_parse_in_human_form() {
        assert_eq!(byte_size("1MiB"), Ok(1 << 20));
        assert_eq!(byte_size("64KiB"), Ok(64 << 10));
        assert_eq!(byte_size("4096"), Ok(4096));
        assert!(byte_size("0").is_err());
        assert!(byte_size("lots").is_err());
        assert!(byte_size("3GiB").is_err());
        assert_eq!(duration("300ms"), Ok(Duration::from_millis(300)));
        assert!(duration("0s").is_err());
        assert!(duration("soon").is_err());
    }
}
