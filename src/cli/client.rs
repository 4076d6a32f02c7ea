//! `switchboard connect`: the client's flags, and running it to its end.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, ValueEnum};
use switchboard::Config;
use switchboard::runtime::{self, RunConfig, RunError, StopHandle};
use switchboard::transport::TransportConfig;
use tracing::{info, warn};

use super::{byte_size, duration, duration_or_zero, human, usage_error};

/// The help line of a timing flag whose default differs in the demo: both
/// values come from the library's two configs.
fn timing_help(what: &str, get: fn(&Config) -> Duration) -> String {
    format!(
        "{what} [default: {}; demo: {}]",
        human(get(&Config::default())),
        human(get(&Config::demo()))
    )
}

/// Tunables shared by every command that runs the client.
#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    /// Length of one tick of the core (at most 1s).
    #[arg(long, env = "SWITCHBOARD_TICK", value_parser = duration,
          default_value_t = human(Config::default().tick))]
    tick: humantime::Duration,
    #[arg(long, env = "SWITCHBOARD_PING_INTERVAL", value_parser = duration,
          help = timing_help("How often each open team link is pinged", |c| c.ping_interval))]
    ping_interval: Option<humantime::Duration>,
    #[arg(long, env = "SWITCHBOARD_PONG_TIMEOUT", value_parser = duration,
          help = timing_help("Silence after a ping after which a link is declared dead; may exceed the ping interval", |c| c.pong_timeout))]
    pong_timeout: Option<humantime::Duration>,
    #[arg(long, env = "SWITCHBOARD_BACKOFF_MIN", value_parser = duration,
          help = timing_help("Backoff ceiling of the first retry, doubling per failure", |c| c.backoff_min))]
    backoff_min: Option<humantime::Duration>,
    #[arg(long, env = "SWITCHBOARD_BACKOFF_MAX", value_parser = duration,
          help = timing_help("Largest backoff ceiling", |c| c.backoff_max))]
    backoff_max: Option<humantime::Duration>,
    /// Longest socket handshake (DNS, TCP, TLS, websocket).
    #[arg(long, env = "SWITCHBOARD_CONNECT_TIMEOUT", value_parser = duration,
          default_value_t = human(Config::default().connect_timeout))]
    connect_timeout: humantime::Duration,
    /// Longest wait for the answer to a team.connect request.
    #[arg(long, env = "SWITCHBOARD_REQUEST_TIMEOUT", value_parser = duration,
          default_value_t = human(Config::default().request_timeout))]
    request_timeout: humantime::Duration,
    /// Longest wait for a close handshake.
    #[arg(long, env = "SWITCHBOARD_CLOSE_TIMEOUT", value_parser = duration,
          default_value_t = human(Config::default().close_timeout))]
    close_timeout: humantime::Duration,
    /// Largest message accepted from a peer, in bytes (suffixes KiB, MiB).
    #[arg(long, env = "SWITCHBOARD_MAX_MESSAGE_SIZE", value_parser = byte_size,
          default_value_t = TransportConfig::default().max_message_size)]
    max_message_size: usize,
    /// How often to log a one-line status (0s: never).
    #[arg(long, env = "SWITCHBOARD_STATUS_INTERVAL", value_parser = duration_or_zero,
          default_value = "10s")]
    status_interval: humantime::Duration,
    /// Exit 1 when Global stays unreachable this long (default: retry forever).
    #[arg(long, env = "SWITCHBOARD_GIVE_UP_AFTER", value_parser = duration)]
    give_up_after: Option<humantime::Duration>,
    /// Final report format on stdout.
    #[arg(long, env = "SWITCHBOARD_REPORT", default_value = "table")]
    pub report: ReportFormat,
    /// PEM file of extra CA certificates to trust for wss:// (on top of the
    /// bundled web roots), e.g. for a Global API behind a private CA.
    #[arg(long, env = "SWITCHBOARD_CA_FILE")]
    ca_file: Option<std::path::PathBuf>,
    /// Seed for backoff jitter (default: derived from the clock, and logged).
    #[arg(long, env = "SWITCHBOARD_SEED")]
    pub seed: Option<u64>,
}

/// How the final report is printed.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReportFormat {
    /// A table, or a summary line above 100 teams.
    Table,
    /// Every team, as JSON.
    Json,
}

impl ClientArgs {
    /// The run's configuration: flags given, else `base` (the service or
    /// the demo defaults).
    pub fn run_config(&self, global_url: String, base: Config) -> Result<RunConfig, ExitCode> {
        let or = |flag: Option<humantime::Duration>, default: Duration| {
            flag.map_or(default, Duration::from)
        };
        let seed = self.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
                ^ u64::from(std::process::id())
        });
        let core = Config {
            global_url,
            tick: self.tick.into(),
            ping_interval: or(self.ping_interval, base.ping_interval),
            pong_timeout: or(self.pong_timeout, base.pong_timeout),
            backoff_min: or(self.backoff_min, base.backoff_min),
            backoff_max: or(self.backoff_max, base.backoff_max),
            connect_timeout: self.connect_timeout.into(),
            request_timeout: self.request_timeout.into(),
            close_timeout: self.close_timeout.into(),
            ..base
        };
        if let Err(error) = core.validate() {
            return Err(usage_error(error));
        }
        let mut transport = TransportConfig {
            max_message_size: self.max_message_size,
            ..TransportConfig::default()
        };
        if let Some(path) = &self.ca_file {
            match switchboard::transport::tls_with_ca_file(path) {
                Ok(tls) => transport.tls = Some(tls),
                Err(error) => return Err(usage_error(error)),
            }
        }
        let status: Duration = self.status_interval.into();
        Ok(RunConfig {
            core,
            transport,
            seed,
            status_interval: (!status.is_zero()).then_some(status),
            give_up_after: self.give_up_after.map(Into::into),
        })
    }
}

/// Raises the soft open-files limit to the hard limit: every team is a socket.
pub(super) fn raise_fd_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => info!(limit, "open-files limit"),
        Err(error) => warn!(%error, "could not raise the open-files limit"),
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

/// Runs the client to its end and prints its report. `Err` carries the
/// exit code of a run that could not start or gave up.
pub fn run_client(
    config: RunConfig,
    report: ReportFormat,
    runtime: &tokio::runtime::Runtime,
    on_tick: runtime::OnTick<'_>,
) -> Result<runtime::RunOutcome, ExitCode> {
    raise_fd_limit();
    info!(seed = config.seed, url = %config.core.global_url, "starting");
    let stop = StopHandle::new();
    runtime.spawn(watch_signals(stop.clone()));
    match runtime::run(&config, runtime.handle().clone(), &stop, on_tick) {
        Ok(outcome) => {
            match report {
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

/// `switchboard connect URL`.
pub fn connect(global_url: String, args: &ClientArgs) -> ExitCode {
    let config = match args.run_config(global_url, Config::default()) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let runtime = match super::tokio_runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    match run_client(config, args.report, &runtime, &mut |_| {}) {
        Ok(_) => ExitCode::SUCCESS,
        Err(code) => code,
    }
}
