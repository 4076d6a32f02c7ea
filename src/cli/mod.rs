//! The command line: one file per command, plus the parsers, the headings
//! and the logging they share. The library's settings are never given a
//! default here: clap shows the library's own (`Config::default()`,
//! `Config::demo()`, `Scenario::default()`, …). The defaults written in
//! this folder belong to the command line alone (the log and report
//! formats, the status interval, `sim`'s listen address, `bench`'s run),
//! each in one place.

mod bench;
mod client;
mod cluster;
mod config_file;
mod demo;
mod logging;
mod publish;
mod replay;
mod signals;
mod sim;

use std::ffi::OsString;
use std::process::ExitCode;
use std::time::Duration;

use crate::protocol;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

pub(crate) use logging::LogFormat;

/// The headings `--help` groups flags under, named once so that every
/// command calls a group alike.
mod heading {
    pub const SCENARIO: &str = "Scenario";
    pub const CHAOS: &str = "Chaos";
    pub const SIMULATOR: &str = "Simulator";
    pub const TIMING: &str = "Timing";
    pub const LIMITS: &str = "Limits";
    pub const TEAM_URLS: &str = "Team URLs and TLS";
    pub const OUTPUT: &str = "Output";
    pub const STATE: &str = "State file";
    pub const RECORDING: &str = "Recording";
    pub const HTTP: &str = "HTTP";
    pub const PUBLISHING: &str = "Publishing (NATS JetStream)";
}

/// Keeps a fleet of bot team connections alive behind one Global websocket
/// API.
#[derive(Parser, Debug)]
#[command(
    version,
    about,
    after_help = "With no command, runs `demo`, and takes its flags: \
                  e.g. `switchboard --teams 50` (see `switchboard demo --help`)."
)]
struct Cli {
    /// Log format on stderr.
    #[arg(
        long,
        global = true,
        env = "SWITCHBOARD_LOG_FORMAT",
        default_value = "pretty",
        help_heading = heading::OUTPUT
    )]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Option<Command>,

    /// The demo's flags, for `switchboard` with no command (hidden from the
    /// top-level help: `demo --help` lists them).
    #[command(flatten)]
    demo: demo::DemoArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Connect to a Global API and keep every team connected until `goodbye`
    /// or SIGINT/SIGTERM.
    Connect {
        /// The Global API's websocket URL, e.g. ws://127.0.0.1:8080/global.
        #[arg(value_parser = global_url, env = "SWITCHBOARD_GLOBAL_URL")]
        global_url: String,
        /// Read settings from this TOML file: the keys are the long flags
        /// without `--` (`ping-interval = "15s"`, `global-url = "wss://…"`);
        /// a flag or a SWITCHBOARD_* variable wins over the file.
        #[arg(long, env = "SWITCHBOARD_CONFIG", value_name = "FILE")]
        config: Option<std::path::PathBuf>,
        #[command(flatten)]
        client: client::ClientArgs,
        #[command(flatten)]
        service: client::ServiceArgs,
        #[command(flatten)]
        cluster: cluster::ClusterArgs,
    },
    /// Hold team sockets for a cluster's leader (`connect --cluster`):
    /// open, read and count them as it commands, and decide nothing.
    Worker(cluster::WorkerArgs),
    /// Print a cluster's leader, standbys and workers (with their teams).
    Status(cluster::StatusArgs),
    /// Run the simulated Global API server for one scenario, then print its
    /// verdict (exit 0 only when the client's counts were exact).
    Sim(sim::SimCommand),
    /// The simulator and the client in one process (the default).
    Demo(demo::DemoArgs),
    /// Feed a recording (--record FILE) into a fresh core, with no sockets,
    /// and print the same final report as the live run, or its snapshot.
    Replay(replay::ReplayArgs),
    /// One measured run against the simulator in a child process: connect
    /// time, messages/s end to end, memory, CPU per message and idle,
    /// latency (with --rate), and the verdict.
    Bench(bench::BenchArgs),
}

/// The command line's definition: [`Cli`]'s, with the demo's flags hidden
/// at the top level so that its help is the commands.
fn command() -> clap::Command {
    Cli::command().mut_args(|arg| {
        if arg.is_global_set() {
            arg
        } else {
            arg.hide(true)
        }
    })
}

/// Parses the command line (and `connect --config`'s file) and runs the
/// command.
pub fn main() -> ExitCode {
    let (cli, file) = match parse(std::env::args_os().collect()) {
        Ok(parsed) => parsed,
        Err(code) => return code,
    };
    match cli.command {
        Some(Command::Connect {
            global_url,
            client,
            service,
            cluster,
            ..
        }) => {
            logging::init(cli.log_format, logging::Audience::Service);
            if let Some(file) = &file {
                file.log();
            }
            client::connect(global_url, &client, &service, &cluster)
        }
        Some(Command::Status(args)) => {
            logging::init(cli.log_format, logging::Audience::Quiet);
            cluster::run_status(&args)
        }
        Some(Command::Worker(args)) => {
            logging::init(cli.log_format, logging::Audience::Service);
            cluster::run_worker(&args)
        }
        Some(Command::Sim(command)) => {
            logging::init(cli.log_format, logging::Audience::Service);
            sim::run(&command)
        }
        Some(Command::Demo(args)) => demo::run(&args, cli.log_format),
        Some(Command::Bench(args)) => {
            logging::init(cli.log_format, logging::Audience::Quiet);
            bench::run(&args, cli.log_format)
        }
        Some(Command::Replay(args)) => {
            logging::init(cli.log_format, logging::Audience::Quiet);
            replay::run(&args)
        }
        None => demo::run(&cli.demo, cli.log_format),
    }
}

/// Parses `argv`. With `connect --config FILE`, twice: a first, lenient
/// pass finds the file and what the command line and environment already
/// set; the file's other settings then join the command line, and the
/// second pass parses (and checks) them all as one.
fn parse(argv: Vec<OsString>) -> Result<(Cli, Option<config_file::Applied>), ExitCode> {
    let first = command()
        .ignore_errors(true)
        .try_get_matches_from(&argv)
        .map_err(parse_error)?;
    let file = match first.subcommand() {
        Some(("connect", given)) => {
            let mut built = command();
            built.build();
            config_file::apply(&built, given, &argv)?
        }
        _ => None,
    };
    let argv = file.as_ref().map_or(argv, |f| f.argv.clone());
    let matches = command()
        .try_get_matches_from(&argv)
        .map_err(|error| match &file {
            Some(file) => file.parse_error(error),
            None => parse_error(error),
        })?;
    refuse_demo_flags_with_a_command(&matches)?;
    let cli = Cli::from_arg_matches(&matches).map_err(parse_error)?;
    Ok((cli, file))
}

/// The demo's flags are `switchboard`'s with no command: with a command
/// they would be ignored, so they are refused (one line, exit 2). Checked
/// here rather than by clap's `args_conflicts_with_subcommands`, which
/// refuses the global `--log-format` before a command too.
fn refuse_demo_flags_with_a_command(matches: &clap::ArgMatches) -> Result<(), ExitCode> {
    use clap::parser::ValueSource;
    let Some(name) = matches.subcommand_name() else {
        return Ok(());
    };
    let command = command();
    let given = command.get_arguments().find(|arg| {
        !arg.is_global_set()
            && matches.value_source(arg.get_id().as_str()) == Some(ValueSource::CommandLine)
    });
    match given.and_then(clap::Arg::get_long) {
        Some(flag) => Err(usage_error(format!(
            "--{flag} is the demo's: give it with no command or after `demo`, \
             not before `{name}` (see --help)"
        ))),
        None => Ok(()),
    }
}

/// clap's own output for help and version; one line and exit 2 otherwise.
fn parse_error(error: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        error.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        error.exit();
    }
    eprintln!("{} (see --help)", one_line(&error));
    ExitCode::from(2)
}

/// clap's message, which can span lines, on one.
fn one_line(error: &clap::Error) -> String {
    let text = error.to_string();
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .take_while(|l| !l.is_empty())
        .collect();
    lines.join(" ")
}

/// One clear line and exit status 2 for unusable input.
fn usage_error(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(2)
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

/// The longest timer a flag may set (a tick, ping, timeout, backoff,
/// interval): a day. Longer is a slip (a pong timeout of a day already
/// means "never"), and every deadline computed from one stays far from
/// the clock's overflow.
const MAX_TIMER: Duration = Duration::from_secs(24 * 60 * 60);

/// The longest span a flag may set that is not a timer but how long a run
/// lasts or a record is kept (`--give-up-after`, `--duration`,
/// `--max-duration`, `--publish-max-age`): a year.
const MAX_SPAN: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// A human duration (`300ms`, `15s`) from 1ms to [`MAX_TIMER`].
fn duration(text: &str) -> Result<humantime::Duration, String> {
    at_least_1ms(text, MAX_TIMER)
}

/// A human duration from 0 (for "off") to [`MAX_TIMER`].
fn duration_or_zero(text: &str) -> Result<humantime::Duration, String> {
    parse_duration(text, MAX_TIMER)
}

/// A human duration from 1ms to [`MAX_SPAN`].
fn span(text: &str) -> Result<humantime::Duration, String> {
    at_least_1ms(text, MAX_SPAN)
}

/// A human duration from 0 (for "no limit") to [`MAX_SPAN`].
fn span_or_zero(text: &str) -> Result<humantime::Duration, String> {
    parse_duration(text, MAX_SPAN)
}

fn at_least_1ms(text: &str, max: Duration) -> Result<humantime::Duration, String> {
    let d = parse_duration(text, max)?;
    if Duration::from(d) < Duration::from_millis(1) {
        return Err("must be at least 1ms".into());
    }
    Ok(d)
}

fn parse_duration(text: &str, max: Duration) -> Result<humantime::Duration, String> {
    let d = humantime::parse_duration(text).map_err(|e| format!("{e} (try 300ms or 15s)"))?;
    if d > max {
        return Err(format!("must be at most {}", human(max)));
    }
    Ok(d.into())
}

/// How a default duration reads in `--help`.
fn human(d: Duration) -> humantime::Duration {
    d.into()
}

/// Bytes, with an optional KiB/MiB/GiB suffix, at least 1.
fn byte_size(text: &str) -> Result<usize, String> {
    match byte_size_or_zero(text)? {
        0 => Err("must be between 1 byte and the address space".into()),
        n => Ok(n),
    }
}

/// Bytes, with an optional KiB/MiB/GiB suffix; 0 allowed (for "no limit").
fn byte_size_or_zero(text: &str) -> Result<usize, String> {
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
        "GiB" | "G" | "GB" => 1 << 30,
        other => return Err(format!("unknown unit {other:?} (use KiB, MiB or GiB)")),
    };
    n.checked_mul(scale)
        .ok_or_else(|| "must fit in the address space".to_string())
}

fn global_url(text: &str) -> Result<String, String> {
    protocol::normalize_ws_url(text)
        .map(|_| text.to_owned())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        command().debug_assert();
    }

    #[test]
    fn sizes_and_durations_parse_in_human_form() {
        assert_eq!(byte_size("1MiB"), Ok(1 << 20));
        assert_eq!(byte_size("64KiB"), Ok(64 << 10));
        assert_eq!(byte_size("4096"), Ok(4096));
        assert!(byte_size("0").is_err());
        assert!(byte_size("lots").is_err());
        assert_eq!(byte_size("2GiB"), Ok(2 << 30));
        assert!(byte_size("3TiB").is_err());
        assert_eq!(byte_size_or_zero("0"), Ok(0));
        assert_eq!(
            duration("300ms").map(Duration::from),
            Ok(Duration::from_millis(300))
        );
        assert!(duration("0s").is_err());
        assert!(duration("soon").is_err());
        assert_eq!(
            duration_or_zero("0s").map(Duration::from),
            Ok(Duration::ZERO)
        );
        // Capped: a day for timers, a year for spans; beyond, one line.
        assert!(duration("24h").is_ok() && duration("25h").is_err());
        assert!(duration_or_zero("2days").is_err());
        assert!(span("365days").is_ok() && span("366days").is_err());
        assert!(span_or_zero("0s").is_ok());
        let huge = duration("18446744073709551615s").expect_err("refused");
        assert!(huge.contains("at most 1day"), "{huge}");
    }

    #[test]
    fn help_shows_the_library_defaults() {
        let mut command = command();
        let connect = command
            .find_subcommand_mut("connect")
            .expect("connect exists")
            .render_long_help()
            .to_string();
        let service = crate::Config::default();
        let demo = crate::Config::demo();
        for needle in [
            format!("[default: {}]", human(service.tick)),
            format!(
                "default: {}; demo: {}",
                human(service.ping_interval),
                human(demo.ping_interval)
            ),
            format!(
                "default: {}; demo: {}",
                human(service.backoff_max),
                human(demo.backoff_max)
            ),
        ] {
            assert!(
                connect.contains(&needle),
                "{needle} missing from:\n{connect}"
            );
        }
    }

    #[test]
    fn bench_has_no_flag_it_would_ignore() {
        use clap::error::ErrorKind;
        for flag in [
            ["--state", "none"],
            ["--record", "run.jsonl"],
            ["--http", "127.0.0.1:0"],
            ["--report", "json"],
        ] {
            let bench = command().try_get_matches_from(["switchboard", "bench", flag[0], flag[1]]);
            assert_eq!(
                bench.map(|_| ()).map_err(|e| e.kind()),
                Err(ErrorKind::UnknownArgument),
                "bench {flag:?}"
            );
            // connect and the demo do honour them.
            let connect = [
                "switchboard",
                "connect",
                "ws://127.0.0.1:9/g",
                flag[0],
                flag[1],
            ];
            assert!(
                command().try_get_matches_from(connect).is_ok(),
                "connect {flag:?}"
            );
            let demo = command().try_get_matches_from(["switchboard", flag[0], flag[1]]);
            assert!(demo.is_ok(), "demo {flag:?}");
        }
    }

    #[test]
    fn the_top_level_help_is_the_commands_and_the_default() {
        let help = command().render_long_help().to_string();
        assert!(help.contains("connect") && help.contains("bench"), "{help}");
        assert!(help.contains("switchboard --teams 50"), "{help}");
        // The demo's flags are listed by `demo --help`, not here.
        for hidden in ["--teams", "--tick", "--publish", "--http"] {
            let listed = help.lines().any(|l| l.trim_start().starts_with(hidden));
            assert!(!listed, "{hidden} listed in:\n{help}");
        }
        // Yet `switchboard --teams 50` is still the demo.
        let cli = Cli::try_parse_from(["switchboard", "--teams", "50"]).expect("parses");
        assert!(cli.command.is_none());
    }

    #[test]
    fn the_log_format_goes_before_or_after_a_command_and_demo_flags_without_one() {
        let parse = |argv: &[&str]| parse(argv.iter().map(OsString::from).collect());
        for argv in [
            &[
                "switchboard",
                "--log-format",
                "json",
                "connect",
                "ws://127.0.0.1:9/g",
            ][..],
            &[
                "switchboard",
                "connect",
                "ws://127.0.0.1:9/g",
                "--log-format",
                "json",
            ],
            &["switchboard", "--log-format", "json", "--teams", "5"],
        ] {
            let (cli, _) = parse(argv).unwrap_or_else(|_| panic!("{argv:?} refused"));
            assert_eq!(cli.log_format, LogFormat::Json, "{argv:?}");
        }
        // A demo flag before another command would be ignored: refused.
        let refused = parse(&[
            "switchboard",
            "--teams",
            "5",
            "connect",
            "ws://127.0.0.1:9/g",
        ]);
        assert!(refused.is_err());
    }
}
