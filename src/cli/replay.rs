//! `switchboard replay FILE`: a recording fed into a fresh core with no
//! sockets; prints the same final report as `connect` (or the snapshot),
//! and on stderr how far it got, how fast, and whether it reached the live
//! run's exact state.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use crate::record::{ReplayEnd, ReplayError, ReplayOptions, replay};
use clap::Args;

use super::client::{ReportFormat, print_report};
use super::usage_error;

/// The replay's flags.
#[derive(Args, Debug, Clone)]
pub struct ReplayArgs {
    /// The recording: the file `--record` wrote (its rotated segments,
    /// FILE.1, FILE.2, …, are read from beside it).
    file: PathBuf,
    /// Final report format on stdout.
    #[arg(long, default_value = "table")]
    report: ReportFormat,
    /// Print the core's snapshot (JSON) instead of the report.
    #[arg(long)]
    snapshot: bool,
    /// Stop once the core has run N steps (a step is one run of its
    /// schedule; the snapshot's `clock.tick`): bisect an incident.
    #[arg(long, value_name = "N")]
    until_step: Option<u64>,
    /// Replay a recording that stops before its run did (the run was
    /// killed, or the recorder fell behind) up to where it stops.
    #[arg(long)]
    allow_incomplete: bool,
}

/// Runs the replay. Exit 2 for a recording it cannot use, 1 when the
/// replay does not reach the live run's state.
pub fn run(args: &ReplayArgs) -> ExitCode {
    let started = Instant::now();
    let options = ReplayOptions {
        until_step: args.until_step,
    };
    let replayed = match replay(&args.file, &options) {
        Ok(replayed) => replayed,
        Err(error @ ReplayError::Diverged { .. }) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
        Err(error) => return usage_error(error),
    };
    let took = started.elapsed();
    if let ReplayEnd::Incomplete { at, reason } = &replayed.end
        && !args.allow_incomplete
    {
        return usage_error(format!(
            "{at}: the recording is incomplete: {reason} (--allow-incomplete replays it up to there)"
        ));
    }
    if args.snapshot {
        match serde_json::to_string_pretty(&replayed.snapshot) {
            Ok(json) => println!("{json}"),
            Err(error) => {
                eprintln!("error: cannot print the snapshot: {error}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        print_report(&replayed.report, args.report);
    }
    let verdict = match &replayed.end {
        ReplayEnd::Verified { run_end } => {
            format!("the final snapshot is the live run's (it ended {run_end})")
        }
        ReplayEnd::UntilStep { step } => format!("stopped at step {step} (--until-step)"),
        ReplayEnd::Incomplete { at, reason } => {
            format!("incomplete: stopped at {at}: {reason}")
        }
    };
    let secs = took.as_secs_f64().max(1e-9);
    eprintln!(
        "replayed {}: {} segment(s), {} steps, {} events, to step {} ({}ms of core time) in {}ms ({:.0} events/s, {:.0} steps/s); {verdict}",
        args.file.display(),
        replayed.segments,
        replayed.steps,
        replayed.events,
        replayed.snapshot.clock.step,
        replayed.snapshot.clock.now,
        took.as_millis(),
        replayed.events as f64 / secs,
        replayed.steps as f64 / secs,
    );
    ExitCode::SUCCESS
}
