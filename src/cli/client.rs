//! `switchboard connect`: the client's tunables (shared with the demo and
//! `bench`), the flags of a run someone operates (shared with the demo),
//! and running the client to its end.

use std::process::ExitCode;
use std::time::Duration;

use crate::Config;
use crate::http::{HttpOptions, HttpServer, Limits, Telemetry};
use crate::persistence::Persistence;
use crate::record::{RecordOptions, Recorder};
use crate::report::Report;
use crate::runtime::{self, RunConfig, RunEnd, RunError, Sidecar, StopHandle};
use crate::store::Store;
use crate::transport::TransportConfig;
use clap::{Args, ValueEnum};
use tracing::{info, warn};

use super::{byte_size, duration, duration_or_zero, heading, human, span, usage_error};

/// The help line of a timing flag whose default differs in the demo: both
/// values come from the library's two configs.
fn timing_help(what: &str, get: fn(&Config) -> Duration) -> String {
    format!(
        "{what} [default: {}; demo: {}]",
        human(get(&Config::default())),
        human(get(&Config::demo()))
    )
}

/// The client's tunables: what every command that runs the client honours
/// (`connect`, `demo` and `bench`). What only an operated run has (the
/// report, the state file, the recording, HTTP) is [`ServiceArgs`].
#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    /// Length of one tick of the core (at most 1s).
    #[arg(long, env = "SWITCHBOARD_TICK", value_parser = duration,
          default_value_t = human(Config::default().tick), help_heading = heading::TIMING)]
    tick: humantime::Duration,
    #[arg(long, env = "SWITCHBOARD_PING_INTERVAL", value_parser = duration,
          help_heading = heading::TIMING,
          help = timing_help("How often each open team link is pinged", |c| c.ping_interval))]
    ping_interval: Option<humantime::Duration>,
    #[arg(long, env = "SWITCHBOARD_PONG_TIMEOUT", value_parser = duration,
          help_heading = heading::TIMING,
          help = timing_help("Silence after a ping after which a link is declared dead; may exceed the ping interval", |c| c.pong_timeout))]
    pong_timeout: Option<humantime::Duration>,
    #[arg(long, env = "SWITCHBOARD_BACKOFF_MIN", value_parser = duration,
          help_heading = heading::TIMING,
          help = timing_help("Backoff ceiling of the first retry, doubling per failure", |c| c.backoff_min))]
    backoff_min: Option<humantime::Duration>,
    #[arg(long, env = "SWITCHBOARD_BACKOFF_MAX", value_parser = duration,
          help_heading = heading::TIMING,
          help = timing_help("Largest backoff ceiling", |c| c.backoff_max))]
    backoff_max: Option<humantime::Duration>,
    /// Longest socket handshake (DNS, TCP, TLS, websocket).
    #[arg(long, env = "SWITCHBOARD_CONNECT_TIMEOUT", value_parser = duration,
          default_value_t = human(Config::default().connect_timeout),
          help_heading = heading::TIMING)]
    connect_timeout: humantime::Duration,
    /// Longest wait for the answer to a team.connect request.
    #[arg(long, env = "SWITCHBOARD_REQUEST_TIMEOUT", value_parser = duration,
          default_value_t = human(Config::default().request_timeout),
          help_heading = heading::TIMING)]
    request_timeout: humantime::Duration,
    /// Longest wait for a close handshake.
    #[arg(long, env = "SWITCHBOARD_CLOSE_TIMEOUT", value_parser = duration,
          default_value_t = human(Config::default().close_timeout),
          help_heading = heading::TIMING)]
    close_timeout: humantime::Duration,
    /// Exit 1 when Global stays unreachable this long (default: retry forever).
    #[arg(long, env = "SWITCHBOARD_GIVE_UP_AFTER", value_parser = span,
          help_heading = heading::TIMING)]
    give_up_after: Option<humantime::Duration>,
    /// Seed for backoff jitter (default: derived from the clock, and logged).
    #[arg(long, env = "SWITCHBOARD_SEED", help_heading = heading::TIMING)]
    pub seed: Option<u64>,
    #[arg(long, env = "SWITCHBOARD_MAX_TEAMS", help = max_teams_help(),
          help_heading = heading::LIMITS)]
    max_teams: Option<usize>,
    /// Most team.connect requests awaiting an answer at once: after a
    /// Global reconnect, requests go out in waves of this size.
    #[arg(long, env = "SWITCHBOARD_MAX_REQUESTS_IN_FLIGHT",
          default_value_t = Config::default().max_requests_in_flight,
          help_heading = heading::LIMITS)]
    max_requests_in_flight: usize,
    /// Largest message accepted from a peer, in bytes (suffixes KiB, MiB).
    #[arg(long, env = "SWITCHBOARD_MAX_MESSAGE_SIZE", value_parser = byte_size,
          default_value_t = TransportConfig::default().max_message_size,
          help_heading = heading::LIMITS)]
    max_message_size: usize,
    /// Most bytes held in partially received messages over all sockets
    /// (suffixes KiB, MiB); a socket that would pass it is dropped.
    #[arg(long, env = "SWITCHBOARD_MAX_PARTIAL_BYTES", value_parser = byte_size,
          default_value_t = TransportConfig::default().max_partial_bytes,
          help_heading = heading::LIMITS)]
    max_partial_bytes: usize,
    /// PEM file of extra CA certificates to trust for wss:// (on top of the
    /// bundled web roots), e.g. for a Global API behind a private CA.
    #[arg(long, env = "SWITCHBOARD_CA_FILE", help_heading = heading::TEAM_URLS)]
    ca_file: Option<std::path::PathBuf>,
    /// Open plaintext ws:// team URLs handed out by a wss:// Global.
    #[arg(long, env = "SWITCHBOARD_ALLOW_INSECURE_TEAM_URLS",
          help_heading = heading::TEAM_URLS)]
    allow_insecure_team_urls: bool,
    /// Only open team URLs on this host (example.com, *.example.com,
    /// host:port); repeatable. Default: any host.
    #[arg(long = "team-host", value_name = "PATTERN", help_heading = heading::TEAM_URLS)]
    team_hosts: Vec<crate::core::HostPattern>,
    /// How often to log a one-line status (0s: never).
    #[arg(long, env = "SWITCHBOARD_STATUS_INTERVAL", value_parser = duration_or_zero,
          default_value = "10s", help_heading = heading::OUTPUT)]
    status_interval: humantime::Duration,
    #[command(flatten)]
    pub publish: super::publish::PublishArgs,
}

/// What a team may cost in memory when the table is full: ~10 KiB of
/// client RSS per connected team, plus the kernel's socket buffers of a
/// busy one; the default `--max-teams` keeps a full table within RAM.
const BYTES_PER_TEAM: u64 = 64 << 10;

/// The default team limit: this machine's memory over [`BYTES_PER_TEAM`]
/// (the library default if memory cannot be read).
fn max_teams_for_memory() -> usize {
    match crate::procfs::memory_total_bytes() {
        Some(bytes) => usize::try_from(bytes / BYTES_PER_TEAM)
            .unwrap_or(usize::MAX)
            .max(1),
        None => Config::default().max_teams,
    }
}

fn max_teams_help() -> String {
    format!(
        "Most teams kept; a team.join beyond it is refused and counted \
         [default: this machine's memory at {} KiB a team: {}]",
        BYTES_PER_TEAM >> 10,
        max_teams_for_memory()
    )
}

/// How the final report is printed.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReportFormat {
    /// A table, or a summary line above 100 teams.
    Table,
    /// Every team, as JSON.
    Json,
    /// Nothing on stdout.
    None,
}

impl ClientArgs {
    /// The core's configuration: flags given, else `base` (not yet
    /// validated). Its timings also tell a simulator how long this client
    /// may take to recover.
    pub fn core(&self, global_url: String, base: Config) -> Config {
        let or = |flag: Option<humantime::Duration>, default: Duration| {
            flag.map_or(default, Duration::from)
        };
        Config {
            global_url,
            tick: self.tick.into(),
            ping_interval: or(self.ping_interval, base.ping_interval),
            pong_timeout: or(self.pong_timeout, base.pong_timeout),
            backoff_min: or(self.backoff_min, base.backoff_min),
            backoff_max: or(self.backoff_max, base.backoff_max),
            connect_timeout: self.connect_timeout.into(),
            request_timeout: self.request_timeout.into(),
            close_timeout: self.close_timeout.into(),
            max_teams: self.max_teams.unwrap_or_else(max_teams_for_memory),
            max_requests_in_flight: self.max_requests_in_flight,
            allow_insecure_team_urls: self.allow_insecure_team_urls,
            team_hosts: self.team_hosts.clone(),
            ..base
        }
    }

    /// The run's configuration: flags given, else `base` (the service or
    /// the demo defaults).
    pub fn run_config(&self, global_url: String, base: Config) -> Result<RunConfig, ExitCode> {
        let seed = self.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
                ^ u64::from(std::process::id())
        });
        let core = self.core(global_url, base);
        if let Err(error) = core.validate() {
            return Err(usage_error(error));
        }
        let transport = with_ca_file(
            TransportConfig {
                max_message_size: self.max_message_size,
                max_partial_bytes: self.max_partial_bytes,
                ..TransportConfig::default()
            },
            self.ca_file.as_deref(),
        )?;
        let status: Duration = self.status_interval.into();
        Ok(RunConfig {
            core,
            transport,
            seed,
            status_interval: (!status.is_zero()).then_some(status),
            give_up_after: self.give_up_after.map(Into::into),
            tap: None,
        })
    }
}

/// The flags of a run someone operates (`connect` and the demo): its final
/// report, the state file that keeps counts across restarts, the flight
/// recording, and the HTTP server. `bench` has none of them: it prints its
/// own figures of one fresh, unobserved run.
#[derive(Args, Debug, Clone)]
pub struct ServiceArgs {
    /// Final report format on stdout.
    #[arg(long, env = "SWITCHBOARD_REPORT", default_value = "table",
          help_heading = heading::OUTPUT)]
    pub report: ReportFormat,
    /// The state file that keeps every team's counts across restarts, or
    /// `none` [default for connect: a file per Global URL under
    /// $XDG_STATE_HOME/switchboard; demo: none].
    #[arg(long, env = "SWITCHBOARD_STATE", help_heading = heading::STATE)]
    state: Option<String>,
    /// How often changed counts are handed to the state file (and
    /// committed): a kill -9 loses at most this much, plus one commit.
    #[arg(long, env = "SWITCHBOARD_STATE_INTERVAL", value_parser = duration,
          default_value_t = human(crate::persistence::DEFAULT_INTERVAL),
          help_heading = heading::STATE)]
    state_interval: humantime::Duration,
    /// Record every event the core takes in, step by step, to this file
    /// (JSON Lines), for `switchboard replay FILE` to reproduce the run. A
    /// recording already there is kept as FILE.previous.
    #[arg(long, env = "SWITCHBOARD_RECORD", value_name = "FILE",
          help_heading = heading::RECORDING)]
    record: Option<std::path::PathBuf>,
    /// Rotate the recording once a segment reaches this size (suffixes
    /// KiB, MiB) [default: never]. Replay needs the first segment.
    #[arg(long, env = "SWITCHBOARD_RECORD_MAX_BYTES", value_parser = byte_size,
          requires = "record", help_heading = heading::RECORDING)]
    record_max_bytes: Option<usize>,
    /// Rotated recording segments kept beside FILE (FILE.1 … FILE.N).
    #[arg(long, env = "SWITCHBOARD_RECORD_KEEP", requires = "record",
          default_value_t = crate::record::DEFAULT_KEEP,
          help_heading = heading::RECORDING)]
    record_keep: usize,
    #[command(flatten)]
    http: HttpArgs,
}

/// The HTTP server's flags (`connect`, `demo`, `worker`).
#[derive(Args, Debug, Clone)]
pub struct HttpArgs {
    /// Serve HTTP (metrics and health; on a core also team views and the
    /// status page) on this address (e.g. 127.0.0.1:9090), or `none`
    /// [default for connect and worker: none; demo: 127.0.0.1 on a free
    /// port].
    #[arg(long, env = "SWITCHBOARD_HTTP", help_heading = heading::HTTP)]
    http: Option<String>,
    /// Serve HTTP on an address other machines can reach (it has no
    /// authentication); without it, a non-loopback --http is refused.
    #[arg(long, env = "SWITCHBOARD_HTTP_PUBLIC", help_heading = heading::HTTP)]
    http_public: bool,
    /// Also answer HTTP requests whose Host is this name (`name` or
    /// `name:port`); repeatable. Default: localhost, loopback addresses
    /// and the address a request came in on; others get 421.
    #[arg(long = "http-allow-host", value_name = "HOST", help_heading = heading::HTTP)]
    http_allow_hosts: Vec<String>,
    /// Most HTTP connections at once, never more than 1/8 of the open-files
    /// limit (the rest is the team sockets'). Beyond it, the oldest
    /// connection waiting for a request is closed to make room.
    #[arg(long, env = "SWITCHBOARD_HTTP_MAX_CONNECTIONS",
          default_value_t = Limits::default().max_connections,
          help_heading = heading::HTTP)]
    http_max_connections: usize,
}

impl HttpArgs {
    /// Where to serve and how, checked (one clear line and exit 2 on a bad
    /// flag); `None` without `--http` (unless `default_on`) or with `none`.
    pub fn options(
        &self,
        default_on: bool,
    ) -> Result<Option<(std::net::SocketAddr, HttpOptions)>, ExitCode> {
        let addr: std::net::SocketAddr = match self.http.as_deref() {
            Some("none") => return Ok(None),
            Some(text) => text
                .parse()
                .map_err(|_| usage_error(format!("--http {text:?}: expected ADDR:PORT or none")))?,
            None if default_on => std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            None => return Ok(None),
        };
        if !addr.ip().is_loopback() && !self.http_public {
            return Err(usage_error(format!(
                "--http {addr}: reachable from other machines, and HTTP has no authentication; \
                 add --http-public to mean it"
            )));
        }
        if self.http_max_connections == 0 {
            return Err(usage_error("--http-max-connections: at least 1"));
        }
        let max_connections = http_connection_budget(self.http_max_connections, open_files_limit());
        if max_connections < self.http_max_connections {
            warn!(
                asked = self.http_max_connections,
                max_connections,
                "HTTP: connection cap lowered to its share of the open-files limit"
            );
        }
        Ok(Some((
            addr,
            HttpOptions {
                limits: Limits {
                    max_connections,
                    ..Limits::default()
                },
                allow_hosts: self.http_allow_hosts.clone(),
            },
        )))
    }
}

impl ServiceArgs {
    /// The state file for a run against `global_url`: `--state PATH`, or
    /// none with `--state none`, or else the per-URL default when
    /// `default_on`. A file that cannot be used stops the start (exit 2).
    pub fn persistence(
        &self,
        global_url: &str,
        max_teams: usize,
        default_on: bool,
    ) -> Result<Option<Persistence>, ExitCode> {
        let path = match self.state.as_deref() {
            Some("none") => return Ok(None),
            Some(path) => std::path::PathBuf::from(path),
            None if default_on => crate::store::default_path(global_url),
            None => return Ok(None),
        };
        let store = Store::open(&path, global_url).map_err(usage_error)?;
        let persistence =
            Persistence::open(store, self.state_interval.into()).map_err(usage_error)?;
        let saved = persistence.saved().len();
        if saved > max_teams {
            return Err(usage_error(format!(
                "state file {} holds {saved} teams, above --max-teams {max_teams}",
                path.display()
            )));
        }
        info!(path = %path.display(), teams = saved, "state file");
        Ok(Some(persistence))
    }

    /// The HTTP server, if `--http` (or, with `default_on`, the demo's
    /// default) asks for one. Must be called inside the tokio runtime.
    pub fn http(
        &self,
        runtime: &tokio::runtime::Runtime,
        default_on: bool,
    ) -> Result<Option<HttpServer>, ExitCode> {
        let Some((addr, options)) = self.http.options(default_on)? else {
            return Ok(None);
        };
        let max_connections = options.limits.max_connections;
        let server = runtime
            .block_on(HttpServer::start_with(addr, options))
            .map_err(|e| usage_error(format!("--http {addr}: {e}")))?;
        info!(url = %server.url(), max_connections, "HTTP: metrics, health, teams, status page");
        Ok(Some(server))
    }

    /// The flight recorder for `config`'s run, if `--record` asks for one.
    /// A file that cannot be created stops the start (exit 2).
    pub fn recorder(&self, config: &RunConfig) -> Result<Option<Recorder>, ExitCode> {
        let Some(path) = &self.record else {
            return Ok(None);
        };
        let options = RecordOptions {
            path: path.clone(),
            max_bytes: self.record_max_bytes.map(|b| b as u64),
            keep: self.record_keep,
        };
        let recorder = Recorder::create(options, &config.core, config.seed).map_err(usage_error)?;
        info!(path = %path.display(), "recording");
        Ok(Some(recorder))
    }
}

/// The state file, the recorder and the HTTP server's telemetry of one
/// run, each there when asked for.
#[derive(Default)]
pub struct Sidecars {
    pub persistence: Option<Persistence>,
    pub recorder: Option<Recorder>,
    pub telemetry: Option<Telemetry>,
}

impl Sidecars {
    /// `first`, then each of these that is there: the order the runtime
    /// hands them every step.
    pub fn after<'a>(&'a mut self, first: Vec<&'a mut dyn Sidecar>) -> Vec<&'a mut dyn Sidecar> {
        let mut all = first;
        if let Some(persistence) = self.persistence.as_mut() {
            all.push(persistence);
        }
        if let Some(recorder) = self.recorder.as_mut() {
            all.push(recorder);
        }
        if let Some(telemetry) = self.telemetry.as_mut() {
            all.push(telemetry);
        }
        all
    }
}

/// The open-files limit, raised as far as allowed (raising is idempotent).
fn open_files_limit() -> Option<u64> {
    rlimit::increase_nofile_limit(u64::MAX).ok()
}

/// HTTP may hold at most this fraction (1/N) of the open-files limit: the
/// rest is the team sockets' (and the state file's, the recorder's, NATS's).
const HTTP_SHARE_OF_DESCRIPTORS: u64 = 8;

/// HTTP's connection cap: as asked, but never above its share of the
/// open-files limit, so HTTP can never take the team sockets' descriptors.
fn http_connection_budget(asked: usize, open_files: Option<u64>) -> usize {
    let share = open_files.map_or(usize::MAX, |limit| {
        usize::try_from(limit / HTTP_SHARE_OF_DESCRIPTORS).unwrap_or(usize::MAX)
    });
    asked.min(share).max(1)
}

/// Raises the soft open-files limit to the hard limit: every team is a socket.
pub(super) fn raise_fd_limit() -> Option<u64> {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => {
            info!(limit, "open-files limit");
            Some(limit)
        }
        Err(error) => {
            warn!(%error, "could not raise the open-files limit");
            None
        }
    }
}

/// SIGINT/SIGTERM: the first asks for a graceful shutdown, the second for
/// an immediate one (report and state still written), a third exits at once.
async fn watch_signals(stop: StopHandle) {
    let mut signals = super::signals::Signals::new();
    loop {
        signals.next().await;
        if stop.is_forced() {
            eprintln!("third signal: exiting without a report");
            std::process::exit(130);
        }
        if stop.is_stopped() {
            eprintln!("second signal: ending now (again to exit without a report)");
            stop.force();
        } else {
            info!("signal received: shutting down gracefully (again to force)");
            stop.stop();
        }
    }
}

/// Prints the final report on stdout.
pub fn print_report(report: &Report, format: ReportFormat) {
    match format {
        ReportFormat::Table if report.teams.len() <= 100 => print!("{}", report.table()),
        ReportFormat::Table => println!(
            "{} teams, {} messages, {} props (--report json for every team)",
            report.teams.len(),
            report.messages,
            report.props
        ),
        ReportFormat::Json => println!("{}", report.json()),
        ReportFormat::None => {}
    }
}

/// Runs the client to its end and prints its report, whatever the end.
/// `Err` carries the exit code of a run that could not start or that did
/// not end as asked (it gave up, or was forced).
pub fn run_client(
    config: RunConfig,
    report: ReportFormat,
    runtime: &tokio::runtime::Runtime,
    sidecars: &mut [&mut dyn runtime::Sidecar],
) -> Result<runtime::RunOutcome, ExitCode> {
    let stop = StopHandle::new();
    runtime.spawn(watch_signals(stop.clone()));
    run_client_on(config, report, runtime, sidecars, &stop, None)
}

/// [`run_client`] with the caller's stop handle (its signals already
/// watched), and the team sockets on a cluster's workers if `cluster`.
pub fn run_client_on(
    config: RunConfig,
    report: ReportFormat,
    runtime: &tokio::runtime::Runtime,
    sidecars: &mut [&mut dyn runtime::Sidecar],
    stop: &StopHandle,
    cluster: Option<crate::cluster::dispatch::LeaderLink>,
) -> Result<runtime::RunOutcome, ExitCode> {
    raise_fd_limit();
    info!(seed = config.seed, url = %crate::redact::Redacted(&config.core.global_url), "starting");
    let outcome = match runtime::run_on(&config, runtime.handle().clone(), stop, sidecars, cluster)
    {
        Ok(outcome) => outcome,
        Err(RunError::Config(error)) => return Err(usage_error(error)),
        Err(error @ RunError::Adopt(_)) => {
            eprintln!("error: {error}");
            return Err(ExitCode::FAILURE);
        }
    };
    print_report(&outcome.report, report);
    info!(
        end = ?outcome.end,
        steps = outcome.steps,
        overruns = outcome.overruns,
        elapsed_ms = outcome.elapsed.as_millis() as u64,
        "run over"
    );
    match &outcome.end {
        RunEnd::Finished(_) | RunEnd::ShutdownTimedOut(_) | RunEnd::HandedOver => Ok(outcome),
        RunEnd::Forced => Err(ExitCode::from(130)),
        RunEnd::GaveUp {
            down_for,
            last_error,
        } => {
            eprintln!(
                "error: Global API unreachable for {}ms: {last_error}",
                down_for.as_millis()
            );
            Err(ExitCode::FAILURE)
        }
    }
}

/// A leader keeps its saved teams in the cluster too, for a standby on
/// another machine, and resumes from whichever of its file and that copy
/// counted more.
fn with_cluster_copy(
    leading: &super::cluster::Leading,
    runtime: &tokio::runtime::Runtime,
    global_url: &str,
    file: Option<Persistence>,
    service: &ServiceArgs,
) -> Result<Option<Persistence>, ExitCode> {
    let (mirror, saved) = leading.state(runtime, global_url)?;
    Ok(Some(match file {
        Some(file) => file.with_mirror(mirror, saved),
        None => Persistence::mirror_only(mirror, saved, service.state_interval.into()),
    }))
}

/// `transport`, trusting the extra CA certificates of `--ca-file` too, if
/// given (a file that does not read: exit 2).
pub fn with_ca_file(
    mut transport: TransportConfig,
    ca_file: Option<&std::path::Path>,
) -> Result<TransportConfig, ExitCode> {
    if let Some(path) = ca_file {
        transport.tls = Some(crate::transport::tls_with_ca_file(path).map_err(usage_error)?);
    }
    Ok(transport)
}

/// HTTP first: a standby serves /metrics, /healthz and /readyz (not
/// ready) while it waits. Then a core of a cluster stands by until it
/// leads: it opens the state file and the rest only then.
fn serve_then_lead(
    service: &ServiceArgs,
    cluster: &super::cluster::ClusterArgs,
    runtime: &tokio::runtime::Runtime,
    stop: &StopHandle,
) -> Result<(Option<HttpServer>, Option<super::cluster::Leading>), ExitCode> {
    let http = service.http(runtime, false)?;
    let standby = crate::cluster::StandbyWatch::default();
    if let Some(http) = http.as_ref() {
        http.watch_standby(standby.clone());
    }
    let leading = cluster.lead(runtime, stop, &standby)?;
    Ok((http, leading))
}

/// `switchboard connect URL`.
pub fn connect(
    global_url: String,
    args: &ClientArgs,
    service: &ServiceArgs,
    cluster: &super::cluster::ClusterArgs,
) -> ExitCode {
    let mut config = match args.run_config(global_url.clone(), Config::default()) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let runtime = match super::tokio_runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    let stop = StopHandle::new();
    runtime.spawn(watch_signals(stop.clone()));
    let (http, leading) = match serve_then_lead(service, cluster, &runtime, &stop) {
        Ok(started) => started,
        Err(code) => return code,
    };
    let persistence = match service
        .persistence(&global_url, config.core.max_teams, true)
        .and_then(|file| match leading.as_ref() {
            Some(leading) => with_cluster_copy(leading, &runtime, &global_url, file, service),
            None => Ok(file),
        }) {
        Ok(persistence) => persistence,
        Err(code) => return code,
    };
    let recorder = match service.recorder(&config) {
        Ok(recorder) => recorder,
        Err(code) => return code,
    };
    if let (Some(http), Some(leading)) = (http.as_ref(), leading.as_ref()) {
        http.watch_cluster(leading.watch.clone());
    }
    let publishing = match args.publish.start(&runtime, &mut config, http.as_ref()) {
        Ok(publishing) => publishing,
        Err(code) => return code,
    };
    let mut sidecars = Sidecars {
        persistence,
        recorder,
        telemetry: http.as_ref().map(HttpServer::telemetry),
    };
    let ran = run_client_on(
        config,
        service.report,
        &runtime,
        &mut sidecars.after(Vec::new()),
        &stop,
        leading.as_ref().map(|l| l.link.clone()),
    );
    let goodbye = ran.as_ref().is_ok_and(|outcome| {
        matches!(
            outcome.end,
            RunEnd::Finished(crate::core::ShutdownCause::Goodbye)
                | RunEnd::ShutdownTimedOut(crate::core::ShutdownCause::Goodbye)
        )
    });
    let mut code = match ran {
        Ok(_) => ExitCode::SUCCESS,
        Err(code) => code,
    };
    if let Some(leading) = leading
        && !leading.end(&runtime, goodbye)
    {
        code = ExitCode::FAILURE;
    }
    if let Some(publishing) = publishing
        && let Err(failed) = publishing.finish(&runtime)
        && code == ExitCode::SUCCESS
    {
        code = failed;
    }
    // A DNS lookup still running on a blocking thread must not hold the exit.
    runtime.shutdown_background();
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_takes_at_most_its_share_of_the_open_files_limit() {
        // The host: 256 descriptors; HTTP keeps to 32 of them.
        assert_eq!(http_connection_budget(64, Some(256)), 32);
        assert_eq!(http_connection_budget(64, Some(1 << 20)), 64);
        assert_eq!(http_connection_budget(64, None), 64);
        assert_eq!(http_connection_budget(64, Some(3)), 1);
    }
}
