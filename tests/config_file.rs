//! `switchboard connect --config FILE` from the binary: the file's settings
//! take effect, a flag and a `SWITCHBOARD_*` variable win over them, and a
//! file that cannot be used stops the start with one line and exit 2.
//!
//! The runs that start point at a port where nothing listens and give up
//! after 200ms (exit 1), having logged the seed they use: what the file,
//! the variable or the flag said.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Where nothing answers (the discard port, closed on a test machine).
const NOBODY: &str = "ws://127.0.0.1:9/global";

/// A file for a run that ends by itself: no state file, and it gives up.
fn ending_file(dir: &Path, extra: &str) -> PathBuf {
    let path = dir.join("switchboard.toml");
    let text = format!(
        "global-url = \"{NOBODY}\"\nstate = \"none\"\ngive-up-after = \"200ms\"\n\
         status-interval = \"0s\"\n{extra}"
    );
    std::fs::write(&path, text).expect("write the file");
    path
}

/// `switchboard connect` with `args` and `env`, and none of the caller's
/// settings.
fn connect(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_switchboard"));
    command.arg("connect").args(args).env_remove("RUST_LOG");
    for (name, _) in std::env::vars() {
        if name.starts_with("SWITCHBOARD_") {
            command.env_remove(name);
        }
    }
    command.envs(env.iter().copied());
    command.output().expect("binary runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The seed the run logged as it started.
fn seed(output: &Output) -> Option<u64> {
    let text = stderr(output);
    let line = text.lines().find(|l| l.contains("starting"))?;
    let at = line.find("seed=")? + "seed=".len();
    line[at..].split_whitespace().next()?.parse().ok()
}

#[test]
fn the_files_settings_take_effect() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = ending_file(dir.path(), "seed = 4242\n");
    let output = connect(&["--config", file.to_str().expect("utf-8")], &[]);
    let text = stderr(&output);
    // The URL and the give-up came from the file too: it tried, then gave up.
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("Global API unreachable"), "{text}");
    assert_eq!(seed(&output), Some(4242), "{text}");
    let said = text
        .lines()
        .find(|l| l.contains("config file"))
        .expect(&text);
    assert!(
        said.contains("seed") && said.contains("global-url"),
        "{said}"
    );
}

#[test]
fn a_flag_wins_over_a_variable_which_wins_over_the_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = ending_file(dir.path(), "seed = 4242\n");
    let config = ["--config", file.to_str().expect("utf-8")];
    let flag = [config[0], config[1], "--seed", "7"];
    let variable = [("SWITCHBOARD_SEED", "9")];

    let by_flag = connect(&flag, &[]);
    assert_eq!(seed(&by_flag), Some(7), "{}", stderr(&by_flag));
    let by_variable = connect(&config, &variable);
    assert_eq!(seed(&by_variable), Some(9), "{}", stderr(&by_variable));
    let both = connect(&flag, &variable);
    assert_eq!(seed(&both), Some(7), "{}", stderr(&both));
    // The file's other settings still hold, and it says what was overridden.
    let text = stderr(&both);
    assert_eq!(both.status.code(), Some(1), "{text}");
    let said = text
        .lines()
        .find(|l| l.contains("config file"))
        .expect(&text);
    assert!(said.contains("overridden=seed"), "{said}");
}

/// One line on stderr, exit 2, naming `needles`.
fn refused(output: &Output, needles: &[&str]) {
    let text = stderr(output);
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert_eq!(text.lines().count(), 1, "{text}");
    for needle in needles {
        assert!(text.contains(needle), "{needle} not in: {text}");
    }
}

#[test]
fn an_unknown_key_is_refused_with_one_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = ending_file(dir.path(), "pings = \"1s\"\n");
    let path = file.to_str().expect("utf-8");
    refused(
        &connect(&["--config", path], &[]),
        &[path, "unknown key `pings`"],
    );
    // A snake-case key is pointed at its flag's spelling.
    ending_file(dir.path(), "ping_interval = \"1s\"\n");
    refused(
        &connect(&["--config", path], &[]),
        &["`ping_interval`", "`ping-interval`"],
    );
}

#[test]
fn a_bad_value_is_refused_with_one_line_naming_its_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("switchboard.toml");
    let path_text = path.to_str().expect("utf-8");
    for (line, key) in [
        ("tick = \"5parsecs\"", "tick"),
        ("max-teams = -5", "max-teams"),
        ("team-host = [[]]", "team-host"),
        (
            "allow-insecure-team-urls = \"yes\"",
            "allow-insecure-team-urls",
        ),
    ] {
        ending_file(dir.path(), &format!("{line}\n"));
        refused(
            &connect(&["--config", path_text], &[]),
            &[path_text, &format!(": {key}: ")],
        );
    }
    // Not TOML at all: where, and why.
    std::fs::write(&path, "tick =\n").expect("write");
    refused(
        &connect(&["--config", path_text], &[]),
        &[path_text, "not TOML"],
    );
}

#[test]
fn a_missing_file_is_refused_with_one_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("nowhere.toml");
    let path = path.to_str().expect("utf-8");
    refused(&connect(&[NOBODY, "--config", path], &[]), &[path]);
}

/// The example in `examples/` holds only keys the binary knows (its URL,
/// state file and HTTP address overridden here so that it ends at once).
#[test]
fn the_example_file_is_accepted() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/connect.toml");
    let output = connect(
        &[
            NOBODY, "--config", example, "--state", "none", "--http", "none",
        ],
        &[("SWITCHBOARD_GIVE_UP_AFTER", "200ms")],
    );
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("\"config file\""), "{text}");
}
