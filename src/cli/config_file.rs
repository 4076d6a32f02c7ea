//! `connect --config FILE`: settings from a TOML file whose keys are the
//! long flags without `--` (`ping-interval = "15s"`, `team-host = ["a",
//! "b"]`, `global-url = "wss://…"`).
//!
//! The file knows no setting of its own: its keys, values and defaults are
//! the command line's. A value the command line and the environment leave
//! unset joins the command line, where clap parses and checks it like a
//! flag; so a flag wins over a `SWITCHBOARD_*` variable, which wins over the
//! file, which wins over the default.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::ArgAction;
use clap::parser::{ArgMatches, ValueSource};
use tracing::info;

use super::{one_line, usage_error};

/// The command the file configures.
const COMMAND: &str = "connect";

/// The flag that names the file (which the file cannot set).
const CONFIG: &str = "config";

/// A file read and merged into the command line.
#[derive(Debug)]
pub struct Applied {
    /// The command line with the file's settings that took effect.
    pub argv: Vec<OsString>,
    path: PathBuf,
    /// Keys that took effect, and how each reads as a flag (`--tick
    /// <TICK>`), as clap names it in an error.
    used: Vec<(String, String)>,
    /// Keys a flag or a variable overrode.
    overridden: Vec<String>,
}

/// A flag's key in the file: its long name, or for the positional
/// argument its name in kebab case.
fn key_of(arg: &clap::Arg) -> String {
    arg.get_long()
        .map_or_else(|| arg.get_id().as_str().replace('_', "-"), str::to_owned)
}

/// The settings a file may hold: the flags of `connect` (a built command,
/// so the global ones are among them), but for the file's own.
fn settings(command: &clap::Command) -> Vec<&clap::Arg> {
    command
        .find_subcommand(COMMAND)
        .into_iter()
        .flat_map(clap::Command::get_arguments)
        .filter(|arg| {
            arg.get_id() != CONFIG
                && matches!(
                    arg.get_action(),
                    ArgAction::Set | ArgAction::Append | ArgAction::SetTrue
                )
        })
        .collect()
}

/// Reads `connect --config FILE`, if given, and merges it into `argv`.
/// `command` is built; `given` is `connect`'s matches from a lenient parse
/// of `argv`: what the command line and the environment already set. A
/// file that cannot be read, or holds an unknown key or a value of the
/// wrong shape, stops the start with one line (exit 2). The value of a key
/// a flag or a variable overrides is not looked at.
pub fn apply(
    command: &clap::Command,
    given: &ArgMatches,
    argv: &[OsString],
) -> Result<Option<Applied>, ExitCode> {
    let Ok(Some(path)) = given.try_get_one::<PathBuf>(CONFIG) else {
        return Ok(None);
    };
    let table = read(path)?;
    let settings = settings(command);
    let mut applied = Applied {
        argv: Vec::new(),
        path: path.clone(),
        used: Vec::new(),
        overridden: Vec::new(),
    };
    let mut flags = Vec::new();
    for (key, value) in &table {
        let Some(arg) = settings.iter().find(|arg| key_of(arg) == *key) else {
            return Err(unknown_key(path, key, &settings));
        };
        if set_already(given, arg.get_id().as_str()) {
            applied.overridden.push(key.clone());
            continue;
        }
        let args = as_flags(arg, key, value)
            .map_err(|why| usage_error(format!("{}: {key}: {why}", path.display())))?;
        flags.extend(args);
        applied.used.push((key.clone(), arg.to_string()));
    }
    // Right after the command's name: before any `--`, and where the
    // positional URL goes if the file gives it.
    let at = argv
        .iter()
        .skip(1)
        .position(|a| a == COMMAND)
        .map_or(argv.len(), |i| i + 2);
    applied.argv = argv[..at]
        .iter()
        .cloned()
        .chain(flags)
        .chain(argv[at..].iter().cloned())
        .collect();
    Ok(Some(applied))
}

/// The file's settings as a table; one line and exit 2 if it cannot be
/// read or is not TOML.
fn read(path: &Path) -> Result<toml::Table, ExitCode> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| usage_error(format!("--config {}: {e}", path.display())))?;
    text.parse::<toml::Table>().map_err(|error| {
        let line = error
            .span()
            .and_then(|span| text.as_bytes().get(..span.start))
            .map_or(0, |before| {
                before.iter().filter(|&&b| b == b'\n').count() + 1
            });
        let message: Vec<&str> = error.message().lines().map(str::trim).collect();
        usage_error(format!(
            "{}:{line}: not TOML: {}",
            path.display(),
            message.join(" ")
        ))
    })
}

/// Whether the command line or the environment gave `id` a value.
fn set_already(matches: &ArgMatches, id: &str) -> bool {
    matches!(
        matches.value_source(id),
        Some(ValueSource::CommandLine | ValueSource::EnvVariable)
    )
}

/// The command-line words that give `arg` the file's `value`.
fn as_flags(arg: &clap::Arg, key: &str, value: &toml::Value) -> Result<Vec<OsString>, String> {
    let flag = |text: &str| OsString::from(format!("--{key}={text}"));
    match arg.get_action() {
        ArgAction::SetTrue => match value {
            toml::Value::Boolean(true) => Ok(vec![OsString::from(format!("--{key}"))]),
            toml::Value::Boolean(false) => Ok(Vec::new()),
            _ => Err("expected true or false".into()),
        },
        ArgAction::Append => match value {
            toml::Value::Array(items) => items
                .iter()
                .map(|item| scalar(item).map(|text| flag(&text)))
                .collect(),
            one => Ok(vec![flag(&scalar(one)?)]),
        },
        _ if arg.is_positional() => Ok(vec![OsString::from(scalar(value)?)]),
        _ => Ok(vec![flag(&scalar(value)?)]),
    }
}

/// A value as the command line would spell it.
fn scalar(value: &toml::Value) -> Result<String, String> {
    match value {
        toml::Value::String(text) => Ok(text.clone()),
        toml::Value::Integer(n) => Ok(n.to_string()),
        toml::Value::Float(x) => Ok(x.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        toml::Value::Array(_) => Err("expected one value, not a list".into()),
        toml::Value::Table(_) | toml::Value::Datetime(_) => {
            Err("expected a string, a number or true/false".into())
        }
    }
}

fn unknown_key(path: &Path, key: &str, settings: &[&clap::Arg]) -> ExitCode {
    let kebab = key.replace('_', "-");
    let hint = if kebab != key && settings.iter().any(|arg| key_of(arg) == kebab) {
        format!("; did you mean `{kebab}`?")
    } else {
        format!("; the keys are `{COMMAND} --help`'s long flags without `--`")
    };
    usage_error(format!("{}: unknown key `{key}`{hint}", path.display()))
}

impl Applied {
    /// Says which of the file's settings took effect and which a flag or a
    /// variable overrode.
    pub fn log(&self) {
        let used: Vec<&str> = self.used.iter().map(|(key, _)| key.as_str()).collect();
        info!(
            path = %self.path.display(),
            from_file = %used.join(", "),
            overridden = %self.overridden.join(", "),
            "config file"
        );
    }

    /// The second parse's error, on one line: naming the file's key when a
    /// value from the file is the one refused, else naming the file (the
    /// fault may be in the file or on the command line).
    pub fn parse_error(&self, error: clap::Error) -> ExitCode {
        use clap::error::{ContextKind, ContextValue, ErrorKind};
        if matches!(
            error.kind(),
            ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
        ) {
            return super::parse_error(error);
        }
        let culprits: BTreeSet<&str> = match error.get(ContextKind::InvalidArg) {
            Some(ContextValue::String(arg)) => BTreeSet::from([arg.as_str()]),
            Some(ContextValue::Strings(args)) => args.iter().map(String::as_str).collect(),
            _ => BTreeSet::new(),
        };
        let message = one_line(&error);
        let message = message.strip_prefix("error: ").unwrap_or(&message);
        let path = self.path.display();
        match self
            .used
            .iter()
            .find(|(_, flag)| culprits.contains(flag.as_str()))
        {
            Some((key, _)) => usage_error(format!("{path}: {key}: {message}")),
            None => usage_error(format!("{message} (with --config {path}; see --help)")),
        }
    }
}
