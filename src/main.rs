//! The switchboard binary: parse the command line, set up logging, and call
//! into the library. No protocol logic lives here.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use switchboard::runtime::{self, RunConfig, RunError, StopHandle};
use switchboard::transport::TransportConfig;
use switchboard::{Config, protocol};
use tracing::{info, warn};

/// Keeps a fleet of bot team connections alive behind one Global websocket API.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
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
}

/// Tunables shared by every command that runs the client.
#[derive(Args, Debug, Clone)]
struct ClientArgs {
    /// Length of one tick of the core (e.g. 10ms).
    #[arg(long, env = "SWITCHBOARD_TICK", default_value = "10ms", value_parser = duration)]
    tick: Duration,
    /// How often each open team link is pinged.
    #[arg(long, env = "SWITCHBOARD_PING_INTERVAL", default_value = "15s", value_parser = duration)]
    ping_interval: Duration,
    /// Silence after a ping after which a team link is declared dead. May
    /// exceed the ping interval.
    #[arg(long, env = "SWITCHBOARD_PONG_TIMEOUT", default_value = "10s", value_parser = duration)]
    pong_timeout: Duration,
    /// Backoff ceiling for the first retry; doubles per failure.
    #[arg(long, env = "SWITCHBOARD_BACKOFF_MIN", default_value = "250ms", value_parser = duration)]
    backoff_min: Duration,
    /// Largest backoff ceiling.
    #[arg(long, env = "SWITCHBOARD_BACKOFF_MAX", default_value = "30s", value_parser = duration)]
    backoff_max: Duration,
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

fn run_config(global_url: String, args: &ClientArgs) -> RunConfig {
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
            ping_interval: args.ping_interval,
            pong_timeout: args.pong_timeout,
            backoff_min: args.backoff_min,
            backoff_max: args.backoff_max,
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

fn connect(global_url: String, args: &ClientArgs) -> ExitCode {
    let config = run_config(global_url, args);
    if let Err(error) = config.core.validate() {
        return usage_error(error);
    }
    raise_fd_limit();
    info!(seed = config.seed, url = %config.core.global_url, "starting");
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("switchboard-io")
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let stop = StopHandle::new();
    runtime.spawn(watch_signals(stop.clone()));
    let outcome = runtime::run(&config, runtime.handle().clone(), &stop, &mut |_| {});
    match outcome {
        Ok(outcome) => {
            match args.report {
                ReportFormat::Table => print!("{}", outcome.report.table()),
                ReportFormat::Json => println!("{}", outcome.report.json()),
            }
            info!(
                cause = ?outcome.cause,
                ticks = outcome.ticks,
                overruns = outcome.overruns,
                elapsed = %humantime::format_duration(Duration::from_millis(outcome.elapsed.as_millis() as u64)),
                "run over"
            );
            ExitCode::SUCCESS
        }
        Err(RunError::Config(error)) => usage_error(error),
        Err(error @ RunError::GaveUp { .. }) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// With no subcommand: steps a scripted run through the core (no sockets)
/// and prints the final healthcheck. Replaced by the simulator demo.
fn scripted_run() -> ExitCode {
    use switchboard::TeamId;
    use switchboard::bridge::CloseReason;
    use switchboard::protocol::GlobalServerEvent;
    use switchboard::testkit::Peer;
    let mut peer = Peer::new(1);
    peer.open_global();
    for id in 1..=3 {
        peer.join(TeamId(id));
        peer.connect_team(TeamId(id));
    }
    for i in 0..30 {
        let team = TeamId(1 + i % 3);
        peer.message(team, if i % 4 == 0 { "props!" } else { "hi" });
    }
    peer.step();
    // Team 2's socket drops; it is re-requested and reconnected.
    peer.closed(peer.team_conn(TeamId(2)), CloseReason::Reset);
    while peer.requests().len() < 4 {
        peer.step();
    }
    peer.connect_team(TeamId(2));
    peer.global_says(GlobalServerEvent::Goodbye);
    peer.step();
    let report = switchboard::report::Report::from_snapshot(&peer.core.snapshot());
    print!("{}", report.table());
    ExitCode::SUCCESS
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
        None => scripted_run(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
