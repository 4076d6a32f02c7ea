//! `switchboard sim`: the simulated Global API on its own; the scenario
//! flags it shares with the demo (and `bench` passes its child); and the
//! simulator as a child process of the demo (`--sim-process`) or of
//! `bench`, spoken to over its stdin and stdout.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::sim::{Chaos, Fault, PLAY_BUDGET, Scenario, Schedule, SimConfig, SimServer, Verdict};
use clap::{Args, ValueEnum};
use tracing::info;

use super::client::raise_fd_limit;
use super::{LogFormat, duration, duration_or_zero, heading, human, span, usage_error};

/// How the verdict is printed.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum VerdictFormat {
    /// Words and a fault table.
    Text,
    /// One line of JSON (what the demo's `--sim-process` reads).
    Json,
}

/// `switchboard sim`.
#[derive(Args, Debug)]
pub struct SimCommand {
    /// Address to listen on (port 0: any free port; the first line on
    /// stdout names the URL).
    #[arg(long, env = "SWITCHBOARD_LISTEN", default_value = "127.0.0.1:8080",
          help_heading = heading::SIMULATOR)]
    listen: std::net::SocketAddr,
    /// How the verdict is printed at the end.
    #[arg(long, default_value = "text", help_heading = heading::SIMULATOR)]
    verdict: VerdictFormat,
    /// Exit when stdin closes, so a supervising process (the demo's
    /// --sim-process) takes the simulator down with it even if it is killed.
    #[arg(long, help_heading = heading::SIMULATOR)]
    supervised: bool,
    /// Serve wss:// with a certificate made at start for the listen
    /// address, written (PEM) to FILE for the client's --ca-file.
    #[arg(long, value_name = "FILE", help_heading = heading::SIMULATOR)]
    tls: Option<std::path::PathBuf>,
    #[command(flatten)]
    sim: SimArgs,
}

/// The help line of `--fault`: the names come from the fault enum.
fn fault_help() -> String {
    let names: Vec<&str> = Fault::ALL.iter().map(|f| f.name()).collect();
    format!(
        "Set one fault's rate, e.g. --fault zombie=2 (per second; for connect-error and \
         delayed-hello a probability). Repeatable. Faults: {}",
        names.join(", ")
    )
}

/// The help line of `--max-duration`: the budget comes from the library.
fn max_duration_help() -> String {
    format!(
        "The whole run (streaming, recovery, final check, goodbye) must be over by then \
         [default: {} of streaming, past --duration if given, plus the recovery wait, \
         final check and goodbye]",
        human(PLAY_BUDGET)
    )
}

/// The help line of `--recovery-wait`: the default comes from the client's.
fn recovery_wait_help() -> String {
    format!(
        "Longest wait, once chaos is off, for every team to be back; a team still not back \
         fails the run. It must cover the client's ping interval, pong timeout, backoff max, \
         request and connect timeouts [default: {}, which covers connect's defaults; demo: \
         derived from its client's timings, {} with its defaults]",
        human(Scenario::default().recovery_wait),
        human(Scenario::recovery_wait_for(&crate::Config::demo()))
    )
}

/// The simulated run.
#[derive(Args, Debug, Clone, PartialEq)]
pub struct SimArgs {
    /// Teams that join.
    #[arg(long, default_value_t = Scenario::default().teams, help_heading = heading::SCENARIO)]
    pub teams: u64,
    /// Messages each team receives.
    #[arg(long, default_value_t = Scenario::default().messages, help_heading = heading::SCENARIO)]
    messages: u64,
    /// Duration mode: teams stream at --rate for this long (from the
    /// client's first connection) instead of --messages each, e.g.
    /// `--duration 10m --teams 2000 --chaos all` for a soak. In the demo it
    /// implies --sim-process and prints the soak report.
    #[arg(long, value_parser = span, help_heading = heading::SCENARIO)]
    pub duration: Option<humantime::Duration>,
    /// Messages per second per team.
    #[arg(long, default_value_t = Scenario::default().rate, help_heading = heading::SCENARIO)]
    rate: f64,
    /// Fraction of messages containing "props".
    #[arg(long, default_value_t = Scenario::default().props_fraction,
          help_heading = heading::SCENARIO)]
    props: f64,
    /// Joins are spread over this long.
    #[arg(long, value_parser = duration, default_value_t = human(Scenario::default().join_over),
          help_heading = heading::SCENARIO)]
    join_over: humantime::Duration,
    /// How often the simulator asks for a healthcheck.
    #[arg(long, value_parser = duration,
          default_value_t = human(Scenario::default().healthcheck_every),
          help_heading = heading::SCENARIO)]
    healthcheck_every: humantime::Duration,
    /// Fraction of teams that leave during the run (half of them rejoin).
    #[arg(long, default_value_t = Scenario::default().leave_fraction,
          help_heading = heading::SCENARIO)]
    leave: f64,
    /// Chaos level: 0 (or `none`) turns faults off, 1 is the default mix, 2
    /// doubles every rate; `all` is every fault kind at its default rate
    /// (the same as 1).
    #[arg(long, value_parser = chaos_level, default_value = "1", help_heading = heading::CHAOS)]
    pub chaos: f64,
    #[arg(long = "fault", value_parser = fault_rate, help = fault_help(),
          help_heading = heading::CHAOS)]
    faults: Vec<(Fault, f64)>,
    #[arg(long, value_parser = span, help = max_duration_help(),
          help_heading = heading::SCENARIO)]
    max_duration: Option<humantime::Duration>,
    #[arg(long, value_parser = duration, help = recovery_wait_help(),
          help_heading = heading::CHAOS)]
    pub recovery_wait: Option<humantime::Duration>,
    /// Seed for the simulator's decisions (and the client's jitter in the demo).
    #[arg(long, default_value_t = 1, help_heading = heading::SCENARIO)]
    pub sim_seed: u64,
    /// Once every message is written and counted, stay quiet this long
    /// before the final check (a benchmark's idle window).
    #[arg(long, value_parser = duration_or_zero, default_value_t = human(Scenario::default().idle_for),
          help_heading = heading::SCENARIO)]
    pub idle_for: humantime::Duration,
    /// Begin each message with `t=<ns since the epoch>` (for latency).
    #[arg(long, help_heading = heading::SCENARIO)]
    pub stamp: bool,
}

impl SimArgs {
    /// The simulator's configuration, listening on `listen` (not yet
    /// validated: see [`SimConfig::validate`]).
    pub fn config(&self, listen: std::net::SocketAddr) -> SimConfig {
        let mut chaos = Chaos::level(self.chaos);
        for &(fault, rate) in &self.faults {
            chaos.0.insert(fault, rate);
        }
        let run_for = self.duration.map(Duration::from);
        let mut scenario = Scenario {
            teams: self.teams,
            messages: self.messages,
            run_for,
            rate: self.rate,
            props_fraction: self.props,
            join_over: self.join_over.into(),
            healthcheck_every: self.healthcheck_every.into(),
            leave_fraction: self.leave,
            idle_for: self.idle_for.into(),
            stamp: self.stamp,
            ..Scenario::default()
        };
        if let Some(wait) = self.recovery_wait {
            scenario.recovery_wait = wait.into();
        }
        scenario.max_duration = self
            .max_duration
            .map_or_else(|| scenario.default_max_duration(), Into::into);
        SimConfig {
            listen,
            scenario,
            chaos,
            schedule: Schedule::none(),
            seed: self.sim_seed,
            // `sim --tls` and `bench --tls` turn it on: it needs a file.
            tls: false,
        }
    }

    /// The flags that give these arguments back: how the demo passes its
    /// scenario to a simulator child process.
    pub fn to_args(&self) -> Vec<String> {
        let mut args = vec![
            format!("--teams={}", self.teams),
            format!("--messages={}", self.messages),
            format!("--rate={}", self.rate),
            format!("--props={}", self.props),
            format!("--join-over={}", self.join_over),
            format!("--healthcheck-every={}", self.healthcheck_every),
            format!("--leave={}", self.leave),
            format!("--chaos={}", self.chaos),
            format!("--sim-seed={}", self.sim_seed),
            format!("--idle-for={}", self.idle_for),
        ];
        if self.stamp {
            args.push("--stamp".into());
        }
        if let Some(d) = self.duration {
            args.push(format!("--duration={d}"));
        }
        if let Some(d) = self.max_duration {
            args.push(format!("--max-duration={d}"));
        }
        if let Some(d) = self.recovery_wait {
            args.push(format!("--recovery-wait={d}"));
        }
        args.extend(
            self.faults
                .iter()
                .map(|(f, r)| format!("--fault={}={r}", f.name())),
        );
        args
    }
}

fn chaos_level(text: &str) -> Result<f64, String> {
    match text {
        "all" => Ok(1.0),
        "none" | "off" => Ok(0.0),
        _ => match text.parse::<f64>() {
            Ok(level) if level.is_finite() && level >= 0.0 => Ok(level),
            _ => Err(format!(
                "{text:?}: expected a level of at least 0 (1 is the default mix), all or none"
            )),
        },
    }
}

fn fault_rate(text: &str) -> Result<(Fault, f64), String> {
    let (name, rate) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: expected NAME=RATE, e.g. zombie=0.5"))?;
    let fault = Fault::from_name(name).ok_or_else(|| format!("unknown fault {name:?}"))?;
    let rate: f64 = rate
        .parse()
        .map_err(|_| format!("{rate:?} is not a number"))?;
    if !rate.is_finite() || rate < 0.0 {
        return Err("a rate is a non-negative number".into());
    }
    Ok((fault, rate))
}

/// What the first line on stdout starts with; the URL follows.
const LISTENING: &str = "simulator listening: ";

/// Exits once stdin reaches its end (the supervisor is gone).
fn exit_when_stdin_closes() {
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
        // Not eprintln!: it panics if stderr went with the supervisor, and
        // the exit must happen.
        let _ = writeln!(
            std::io::stderr(),
            "simulator: supervisor gone (stdin closed), exiting"
        );
        std::process::exit(1);
    });
}

/// `switchboard sim`: serve one scenario, print the verdict.
pub fn run(command: &SimCommand) -> ExitCode {
    let mut config = command.sim.config(command.listen);
    config.tls = command.tls.is_some();
    if let Err(error) = config.validate() {
        return usage_error(error);
    }
    if command.supervised {
        exit_when_stdin_closes();
    }
    raise_fd_limit();
    let runtime = match super::tokio_runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    let listen = command.listen;
    runtime.block_on(async {
        let server = match SimServer::start(config).await {
            Ok(server) => server,
            Err(error) => {
                eprintln!("error: cannot start the simulator on {listen}: {error}");
                return ExitCode::FAILURE;
            }
        };
        if let (Some(path), Some(pem)) = (&command.tls, server.certificate_pem())
            && let Err(error) = write_certificate(path, pem)
        {
            eprintln!(
                "error: cannot write the certificate to {}: {error}",
                path.display()
            );
            return ExitCode::FAILURE;
        }
        println!("{LISTENING}{}", server.global_url());
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
        match command.verdict {
            VerdictFormat::Text => println!("{verdict}"),
            VerdictFormat::Json => match serde_json::to_string(&verdict) {
                Ok(json) => println!("{json}"),
                Err(error) => {
                    eprintln!("error: cannot write the verdict as JSON: {error}");
                    return ExitCode::FAILURE;
                }
            },
        }
        if verdict.verified {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    })
}

/// Writes the certificate a client is to trust; never through a symlink
/// (the target would be overwritten).
fn write_certificate(path: &std::path::Path, pem: &str) -> std::io::Result<()> {
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(std::io::Error::other("it is a symbolic link"));
    }
    std::fs::write(path, pem)
}

/// Longest wait for a child simulator to name its URL.
const CHILD_START_WAIT: Duration = Duration::from_secs(15);

/// What the child's stdout reader passes on.
enum Line {
    Text(String),
    /// Stdout ended.
    End,
}

/// A simulator in a child process (`switchboard sim` from this very
/// binary). It is killed when this handle drops, and exits on its own if
/// this process dies (it watches its stdin, which only this process holds).
pub struct SimChild {
    child: Child,
    lines: mpsc::Receiver<Line>,
    /// Held open: its end is the child's signal to exit.
    _stdin: Option<ChildStdin>,
    /// Set by the reader when stdout ended before a verdict line.
    ended_early: Arc<AtomicBool>,
    url: String,
    pid: u32,
}

impl SimChild {
    /// Starts `switchboard sim --listen 127.0.0.1:0` with `args`' scenario
    /// and waits (bounded) for the URL it listens on.
    /// With `tls`, it serves `wss://` and writes its certificate there
    /// before it names its URL.
    pub fn spawn(
        args: &SimArgs,
        log_format: LogFormat,
        tls: Option<&std::path::Path>,
    ) -> Result<SimChild, String> {
        let exe = std::env::current_exe()
            .map_err(|e| format!("cannot find this executable to start the simulator: {e}"))?;
        let format = match log_format {
            LogFormat::Pretty => "pretty",
            LogFormat::Json => "json",
        };
        let mut command = Command::new(exe);
        command
            .args(["sim", "--log-format", format, "--listen", "127.0.0.1:0"])
            .args(["--verdict", "json", "--supervised"])
            .args(args.to_args())
            .args(
                tls.iter()
                    .flat_map(|path| [std::ffi::OsStr::new("--tls"), path.as_os_str()]),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if std::env::var_os("RUST_LOG").is_none() {
            // Its progress lines would cut through the demo's.
            command.env("RUST_LOG", "warn");
        }
        let mut child = command
            .spawn()
            .map_err(|e| format!("cannot start the simulator process: {e}"))?;
        let pid = child.id();
        let stdin = child.stdin.take();
        let Some(stdout) = child.stdout.take() else {
            let _ = child.kill();
            return Err("the simulator process has no stdout".into());
        };
        let (tx, lines) = mpsc::channel();
        let ended_early = Arc::new(AtomicBool::new(false));
        let early = ended_early.clone();
        std::thread::spawn(move || {
            let mut verdict_seen = false;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                verdict_seen |= line.starts_with('{');
                if tx.send(Line::Text(line)).is_err() {
                    return;
                }
            }
            early.store(!verdict_seen, Ordering::Relaxed);
            let _ = tx.send(Line::End);
        });
        let mut sim = SimChild {
            child,
            lines,
            _stdin: stdin,
            ended_early,
            url: String::new(),
            pid,
        };
        let first = sim.next_line(Instant::now() + CHILD_START_WAIT);
        match first.as_deref().and_then(|l| l.strip_prefix(LISTENING)) {
            Some(url) => sim.url = url.trim().to_owned(),
            None => {
                return Err(format!(
                    "the simulator process did not name its URL within {}s (got {first:?})",
                    CHILD_START_WAIT.as_secs()
                ));
            }
        }
        Ok(sim)
    }

    /// The Global URL it serves.
    pub fn global_url(&self) -> &str {
        &self.url
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether it ended before giving a verdict (it crashed or was killed).
    pub fn ended_early(&self) -> Arc<AtomicBool> {
        self.ended_early.clone()
    }

    /// The next stdout line, if one comes by `deadline`.
    fn next_line(&mut self, deadline: Instant) -> Option<String> {
        let wait = deadline.saturating_duration_since(Instant::now());
        match self.lines.recv_timeout(wait) {
            Ok(Line::Text(line)) => Some(line),
            Ok(Line::End) | Err(_) => None,
        }
    }

    /// Waits (at most `wait`) for its verdict.
    pub fn verdict(mut self, wait: Duration) -> Verdict {
        let deadline = Instant::now() + wait;
        while let Some(line) = self.next_line(deadline) {
            if line.starts_with('{') {
                return serde_json::from_str(&line).unwrap_or_else(|e| {
                    Verdict::failed(format!("the simulator's verdict is not readable: {e}"))
                });
            }
        }
        Verdict::failed(format!(
            "no verdict from the simulator process within {}s of the client's end",
            wait.as_secs()
        ))
    }
}

impl Drop for SimChild {
    fn drop(&mut self) {
        // It may have exited already; either way it is reaped.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Probe {
        #[command(flatten)]
        sim: SimArgs,
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
    fn chaos_levels_parse_in_words_and_numbers() {
        assert_eq!(chaos_level("all"), Ok(1.0));
        assert_eq!(chaos_level("none"), Ok(0.0));
        assert_eq!(chaos_level("2.5"), Ok(2.5));
        assert!(chaos_level("-1").is_err());
        assert!(chaos_level("NaN").is_err());
        assert!(chaos_level("lots").is_err());
    }

    #[test]
    fn every_fault_is_named_in_the_help() {
        let help = fault_help();
        for fault in Fault::ALL {
            assert!(help.contains(fault.name()), "{}", fault.name());
        }
    }

    #[test]
    fn the_flags_for_a_child_give_the_same_scenario_back() {
        let given = Probe::parse_from([
            "probe",
            "--teams=7",
            "--messages=9",
            "--duration=1m 30s",
            "--rate=2.5",
            "--props=0.3",
            "--join-over=250ms",
            "--healthcheck-every=2s",
            "--leave=0.4",
            "--chaos=all",
            "--fault=zombie=0.25",
            "--fault=delayed-hello=0.5",
            "--max-duration=5m",
            "--recovery-wait=45s",
            "--sim-seed=42",
        ])
        .sim;
        let mut argv = vec!["probe".to_owned()];
        argv.extend(given.to_args());
        let back = Probe::parse_from(argv).sim;
        assert_eq!(back, given);
        let listen = "127.0.0.1:0".parse().unwrap();
        assert_eq!(back.config(listen), given.config(listen));
    }

    #[test]
    fn a_duration_moves_the_default_max_duration() {
        let soak = Probe::parse_from(["probe", "--duration=10m"]).sim;
        let config = soak.config("127.0.0.1:0".parse().unwrap());
        assert_eq!(config.scenario.run_for, Some(Duration::from_secs(600)));
        assert_eq!(
            config.scenario.max_duration,
            Duration::from_secs(600) + PLAY_BUDGET + config.scenario.ending()
        );
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn the_recovery_wait_covers_connect_by_default_and_moves_the_max_duration() {
        let listen = "127.0.0.1:0".parse().unwrap();
        let plain = Probe::parse_from(["probe"]).sim.config(listen).scenario;
        assert_eq!(
            plain.recovery_wait,
            Scenario::recovery_wait_for(&crate::Config::default())
        );
        let long = Probe::parse_from(["probe", "--recovery-wait=10m"])
            .sim
            .config(listen)
            .scenario;
        assert_eq!(long.recovery_wait, Duration::from_secs(600));
        assert_eq!(long.max_duration, PLAY_BUDGET + long.ending());
        assert_eq!(long.validate(), Ok(()));
    }
}
