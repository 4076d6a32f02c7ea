//! Logs on stderr, and the demo's live progress beside them. Colour only on
//! a terminal; on a terminal the progress is one line redrawn in place with
//! the log lines printed above it, elsewhere it is a plain log line.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use clap::ValueEnum;
use indicatif::{ProgressBar, ProgressStyle};
use tracing::info;
use tracing_subscriber::fmt::MakeWriter;

/// Log format on stderr.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// One human line per event.
    Pretty,
    /// One JSON object per event.
    Json,
}

/// Who reads the log, which decides what is shown without `RUST_LOG`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Audience {
    /// An operator of a long-lived service: everything at info.
    Service,
    /// Someone watching the demo: warnings, plus the progress.
    Demo,
    /// Someone reading one result (a replay's report, a benchmark's
    /// figures): routine logs would only bury it; warnings.
    Quiet,
}

/// The demo's progress display.
pub enum Progress {
    /// A line redrawn in place on a terminal.
    Live(ProgressBar),
    /// Plain log lines, for a log file or a pipe.
    Lines,
}

impl Progress {
    /// How often a new progress line is worth showing.
    pub fn every(&self) -> Duration {
        match self {
            Progress::Live(_) => Duration::from_millis(200),
            Progress::Lines => Duration::from_secs(1),
        }
    }

    /// Shows `line` as the current progress.
    pub fn show(&self, line: String) {
        match self {
            Progress::Live(bar) => bar.set_message(line),
            Progress::Lines => info!(target: "switchboard::progress", "{line}"),
        }
    }

    /// Removes a live line, so what follows starts on a clean line.
    pub fn finish(&self) {
        if let Progress::Live(bar) = self {
            bar.finish_and_clear();
        }
    }
}

/// Installs the global subscriber and returns the progress display to use.
/// `RUST_LOG` overrides the audience's default filter.
pub fn init(format: LogFormat, audience: Audience) -> Progress {
    let terminal = std::io::stderr().is_terminal();
    let progress = match (audience, format, terminal) {
        (Audience::Demo, LogFormat::Pretty, true) => {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            Progress::Live(bar)
        }
        _ => Progress::Lines,
    };
    let default = match audience {
        Audience::Service => "info",
        Audience::Demo => "warn,switchboard::progress=info",
        Audience::Quiet => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let writer = Stderr(match &progress {
        Progress::Live(bar) => Some(bar.clone()),
        Progress::Lines => None,
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(terminal)
        .with_writer(writer);
    match format {
        LogFormat::Pretty => builder.compact().init(),
        LogFormat::Json => builder.json().init(),
    }
    progress
}

/// Stderr that, while a live progress line is shown, prints each log event
/// above it instead of through it.
#[derive(Clone)]
struct Stderr(Option<ProgressBar>);

impl<'a> MakeWriter<'a> for Stderr {
    type Writer = EventWriter;

    fn make_writer(&'a self) -> EventWriter {
        EventWriter {
            buf: Vec::new(),
            bar: self.0.clone(),
        }
    }
}

/// Collects one formatted event and writes it whole when dropped.
struct EventWriter {
    buf: Vec<u8>,
    bar: Option<ProgressBar>,
}

impl Write for EventWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for EventWriter {
    fn drop(&mut self) {
        let out = || {
            let _ = std::io::stderr().write_all(&self.buf);
        };
        match &self.bar {
            Some(bar) => bar.suspend(out),
            None => out(),
        }
    }
}
