//! Replay: a recording fed into a fresh core, with no sockets and no clock,
//! step by step as the live run stepped it: same configuration and seed,
//! the same restored teams, the same events in the same steps, the same
//! time advances, the local stop before the same step. The core is
//! deterministic, so it ends in the live run's state; the end line's
//! digest of the live snapshot checks that it did.

use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::line::{self, Completeness, End, Header, Idle, Line, Step};
use super::segments;
use crate::core::Config;
use crate::core::Core;
use crate::core::Snapshot;
use crate::report::Report;

/// The longest line read: far above the largest step (`max_events_per_step`
/// events) or header (every restored team), and a bound on what a corrupt
/// file can make replay hold.
pub const MAX_LINE: usize = 256 << 20;

/// How far to replay.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplayOptions {
    /// Stop once the core has run this many steps (`Core::steps`).
    pub until_step: Option<u64>,
}

/// A line of one segment file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Place {
    /// The segment file.
    pub path: PathBuf,
    /// The line, from 1.
    pub line: u64,
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.path.display(), self.line)
    }
}

/// How a replay ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplayEnd {
    /// The whole run was replayed and the final snapshot is the live
    /// run's (its digest matches the end line's).
    Verified {
        /// How the live run ended.
        run_end: String,
    },
    /// Stopped at `--until-step`.
    UntilStep {
        /// The step reached.
        step: u64,
    },
    /// The recording stops before the run did; everything before `at` was
    /// replayed.
    Incomplete {
        /// Where it stops.
        at: Place,
        /// Why.
        reason: String,
    },
}

/// A finished replay.
#[derive(Clone, Debug)]
pub struct Replayed {
    /// The core's final snapshot.
    pub snapshot: Snapshot,
    /// The final report, as `connect` prints it.
    pub report: Report,
    /// How it ended.
    pub end: ReplayEnd,
    /// Steps run.
    pub steps: u64,
    /// Events fed.
    pub events: u64,
    /// Segment files read.
    pub segments: usize,
    /// The recorded run's configuration.
    pub config: Config,
    /// The recorded run's seed.
    pub seed: u64,
    /// Teams restored before the first step.
    pub restored: usize,
}

/// A recording that cannot be replayed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// A segment could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A line is not what the format allows there.
    #[error("{at}: {reason}")]
    Bad {
        /// Where.
        at: Place,
        /// What is wrong.
        reason: String,
    },
    /// The oldest segment present is not the recording's first.
    #[error(
        "{at}: this is segment {segment} of its recording, and segment 0 (the start, with the \
         configuration) is not beside it: it was rotated away (--record-keep) or moved; a \
         recording replays only from its start"
    )]
    StartMissing {
        /// The oldest segment found.
        at: Place,
        /// Its number.
        segment: u64,
    },
    /// The replay did not reach the live run's final state: the core is
    /// not deterministic in some way, or the recording misses an input.
    #[error("{at}: replay diverged from the live run: {detail}")]
    Diverged {
        /// The end line.
        at: Place,
        /// What differs.
        detail: String,
    },
}

/// Replays the recording whose newest segment is `path` (rotated
/// segments `path.1`, `path.2`, … beside it are read first, oldest first).
pub fn replay(path: &Path, options: &ReplayOptions) -> Result<Replayed, ReplayError> {
    let chain = segments::chain(path);
    let mut run: Option<Run> = None;
    let mut last_place = Place {
        path: path.to_path_buf(),
        line: 0,
    };
    for (i, segment) in chain.iter().enumerate() {
        let mut lines = Lines::open(segment)?;
        let header = read_header(&mut lines, run.is_none())?;
        let run = match &mut run {
            Some(run) => {
                run.next_segment(&header, &lines)?;
                run
            }
            None => run.insert(Run::start(*header, &lines)?),
        };
        let newest = i + 1 == chain.len();
        if let Some(end) = run.play_segment(&mut lines, newest, options)? {
            return Ok(run.finish(end, chain.len()));
        }
        last_place = lines.place();
    }
    // The chain always holds its newest segment, whose header started it.
    let Some(mut run) = run else {
        return Err(ReplayError::Bad {
            at: last_place,
            reason: "no segment".into(),
        });
    };
    let end = run.verdict(last_place)?;
    Ok(run.finish(end, chain.len()))
}

/// A segment's first line, its header. In the first segment read, a line
/// that is not one means the file is no recording at all.
fn read_header(lines: &mut Lines, first: bool) -> Result<Box<Header>, ReplayError> {
    let bytes = match lines.next()? {
        Next::Line(bytes) => bytes,
        Next::Cut | Next::Eof => {
            return Err(lines.bad("no complete header line: the segment is empty or cut short"));
        }
    };
    match line::parse(bytes) {
        Ok(Line::Header(header)) => Ok(header),
        Ok(_) => Err(lines.bad("the first line is not a segment header")),
        Err(reason) if first && !line::claims_header(bytes) => {
            Err(lines.bad(format!("not a switchboard recording: {reason}")))
        }
        Err(reason) => Err(lines.bad(reason)),
    }
}

/// The core being replayed, and where it stands.
struct Run {
    core: Core,
    config: Config,
    seed: u64,
    restored: usize,
    run_id: String,
    segment: u64,
    step: u64,
    now: u64,
    steps: u64,
    events: u64,
    max_events: usize,
    end: Option<(End, Place)>,
}

impl Run {
    fn start(header: Header, lines: &Lines) -> Result<Run, ReplayError> {
        if header.segment != 0 {
            return Err(ReplayError::StartMissing {
                at: lines.place(),
                segment: header.segment,
            });
        }
        let (Some(config), Some(seed), Some(restored)) =
            (header.config, header.seed, header.restored)
        else {
            return Err(lines.bad(
                "the first segment's header lacks the configuration, seed or restored teams",
            ));
        };
        let mut core = Core::new(&config, seed)
            .map_err(|e| lines.bad(format!("the recorded configuration is refused: {e}")))?;
        core.restore(&restored)
            .map_err(|e| lines.bad(format!("the restored teams are refused: {e}")))?;
        if let Some(adopted) = &header.adopted {
            core.adopt(adopted)
                .map_err(|e| lines.bad(format!("the adopted sockets are refused: {e}")))?;
        }
        Ok(Run {
            max_events: config.max_events_per_step,
            core,
            config,
            seed,
            restored: restored.len(),
            run_id: header.run,
            segment: 0,
            step: 0,
            now: 0,
            steps: 0,
            events: 0,
            end: None,
        })
    }

    fn next_segment(&mut self, header: &Header, lines: &Lines) -> Result<(), ReplayError> {
        if header.run != self.run_id {
            return Err(lines.bad(format!(
                "this segment belongs to another recording (run {:?}, not {:?})",
                header.run, self.run_id
            )));
        }
        if self.end.is_some() {
            return Err(lines.bad("a segment after the one with the end line"));
        }
        if header.segment != self.segment + 1 {
            return Err(lines.bad(format!(
                "segment {} follows segment {}: a segment is missing",
                header.segment, self.segment
            )));
        }
        if header.step != Some(self.step) || header.now != Some(self.now) {
            return Err(lines.bad(format!(
                "the segment starts at step {:?}, time {:?}ms; the previous one ended at step {}, {}ms",
                header.step, header.now, self.step, self.now
            )));
        }
        self.segment = header.segment;
        Ok(())
    }

    /// Every line of a segment after its header. `Some`: the replay
    /// ended inside it (`--until-step`, or a cut in the newest segment).
    fn play_segment(
        &mut self,
        lines: &mut Lines,
        newest: bool,
        options: &ReplayOptions,
    ) -> Result<Option<ReplayEnd>, ReplayError> {
        loop {
            let bytes = match lines.next()? {
                Next::Eof => return Ok(None),
                Next::Cut if newest => {
                    return Ok(Some(ReplayEnd::Incomplete {
                        at: lines.place(),
                        reason: "the line is cut short: the recording was truncated (the run was killed, or the disk filled)".into(),
                    }));
                }
                Next::Cut => {
                    return Err(
                        lines.bad("the line is cut short, in a segment that is not the newest")
                    );
                }
                Next::Line(bytes) => bytes,
            };
            let parsed = line::parse(bytes).map_err(|reason| lines.bad(reason))?;
            if self.play_line(parsed, lines, options)? {
                let step = self.step;
                return Ok(Some(ReplayEnd::UntilStep { step }));
            }
        }
    }

    /// One line after a header. `Ok(true)`: stopped (`--until-step`).
    fn play_line(
        &mut self,
        parsed: Line,
        lines: &Lines,
        options: &ReplayOptions,
    ) -> Result<bool, ReplayError> {
        if self.end.is_some() {
            return Err(lines.bad("a line after the end line"));
        }
        match parsed {
            Line::Header(_) => Err(lines.bad("a segment header in the middle of a segment")),
            Line::Step(step) => self.step(step, lines, options),
            Line::Idle(idle) => self.idle(idle, lines, options),
            Line::Late(late) => {
                self.core.late_reports(&late.late);
                Ok(false)
            }
            Line::End(end) => {
                self.end_line(&end, lines)?;
                self.end = Some((end, lines.place()));
                Ok(false)
            }
        }
    }

    /// How a replay of every line ended, by the end line (or its absence
    /// at `last`): the live run's final state reached, checked by its
    /// digest, or a recording that stops early.
    fn verdict(&mut self, last: Place) -> Result<ReplayEnd, ReplayError> {
        let Some((end, at)) = self.end.take() else {
            return Ok(ReplayEnd::Incomplete {
                at: last,
                reason: "no end line: the run was killed, or its recorder stopped".into(),
            });
        };
        if end.end == Completeness::Incomplete {
            let reason = end
                .reason
                .unwrap_or_else(|| "the recorder stopped early".into());
            return Ok(ReplayEnd::Incomplete { at, reason });
        }
        let replayed = line::digest(&self.core.snapshot());
        match end.snapshot_fnv1a {
            Some(live) if live == replayed => Ok(ReplayEnd::Verified {
                run_end: end.run_end.unwrap_or_default(),
            }),
            Some(live) => Err(ReplayError::Diverged {
                at,
                detail: format!(
                    "the final snapshot's digest is {replayed}, the live run's was {live}"
                ),
            }),
            None => Err(ReplayError::Bad {
                at,
                reason: "a complete end line without the live snapshot's digest".into(),
            }),
        }
    }

    fn reached(&self, options: &ReplayOptions) -> bool {
        options.until_step.is_some_and(|until| self.step >= until)
    }

    /// One step with input. `Ok(true)`: stopped before it (`--until-step`).
    fn step(
        &mut self,
        step: Step,
        lines: &Lines,
        options: &ReplayOptions,
    ) -> Result<bool, ReplayError> {
        if self.reached(options) {
            return Ok(true);
        }
        if step.step != self.step + 1 {
            return Err(lines.bad(format!(
                "step {} follows step {}: steps are missing",
                step.step, self.step
            )));
        }
        let Some(dt) = step.now.checked_sub(self.now) else {
            return Err(lines.bad(format!(
                "time goes back from {}ms to {}ms",
                self.now, step.now
            )));
        };
        if step.events.len() > self.max_events {
            return Err(lines.bad(format!(
                "{} events in one step, above the recorded max_events_per_step {}",
                step.events.len(),
                self.max_events
            )));
        }
        if step.stop {
            self.core.shutdown();
        }
        let n = step.events.len() as u64;
        // The recorded step's batch, handed over as the driver did.
        self.core.handle_all(step.events);
        self.advance(dt);
        self.events += n;
        Ok(false)
    }

    /// A run of idle steps. `Ok(true)`: stopped inside it (`--until-step`).
    fn idle(
        &mut self,
        idle: Idle,
        lines: &Lines,
        options: &ReplayOptions,
    ) -> Result<bool, ReplayError> {
        if idle.step != self.step + idle.count {
            return Err(lines.bad(format!(
                "{} idle steps to step {} do not follow step {}: steps are missing",
                idle.count, idle.step, self.step
            )));
        }
        let span = idle.now.checked_sub(self.now);
        let Some(dt) = span.filter(|s| s % idle.count == 0).map(|s| s / idle.count) else {
            return Err(lines.bad(format!(
                "{} idle steps cannot take the time from {}ms to {}ms in equal whole ms",
                idle.count, self.now, idle.now
            )));
        };
        for _ in 0..idle.count {
            if self.reached(options) {
                return Ok(true);
            }
            self.advance(dt);
        }
        Ok(false)
    }

    fn advance(&mut self, dt: u64) {
        self.core.step_by(Duration::from_millis(dt));
        // What the driver would hand the transport and the tap: nobody
        // here, but they must not pile up.
        self.core.drain_commands();
        self.core.drain_team_events();
        self.step += 1;
        self.now += dt;
        self.steps += 1;
    }

    fn end_line(&mut self, end: &End, lines: &Lines) -> Result<(), ReplayError> {
        if end.end == Completeness::Complete && (end.step != self.step || end.now != self.now) {
            return Err(ReplayError::Diverged {
                at: lines.place(),
                detail: format!(
                    "the live run ended at step {}, {}ms; the recording's steps reach step {}, {}ms",
                    end.step, end.now, self.step, self.now
                ),
            });
        }
        if end.stop {
            self.core.shutdown();
        }
        Ok(())
    }

    fn finish(&self, end: ReplayEnd, segments: usize) -> Replayed {
        let snapshot = self.core.snapshot();
        Replayed {
            report: Report::from_snapshot(&snapshot),
            snapshot,
            end,
            steps: self.steps,
            events: self.events,
            segments,
            config: self.config.clone(),
            seed: self.seed,
            restored: self.restored,
        }
    }
}

/// What reading a line found.
enum Next<'a> {
    /// A whole line, without its newline.
    Line(&'a [u8]),
    /// A last line without its newline: cut short.
    Cut,
    /// The end of the file.
    Eof,
}

/// The lines of one segment file, counted.
struct Lines {
    path: PathBuf,
    reader: BufReader<File>,
    line: u64,
    buf: Vec<u8>,
}

impl Lines {
    fn open(path: &Path) -> Result<Lines, ReplayError> {
        let file = File::open(path).map_err(|source| ReplayError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Lines {
            path: path.to_path_buf(),
            reader: BufReader::with_capacity(1 << 20, file),
            line: 0,
            buf: Vec::new(),
        })
    }

    fn next(&mut self) -> Result<Next<'_>, ReplayError> {
        self.buf.clear();
        self.line += 1;
        let read = (&mut self.reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut self.buf)
            .map_err(|source| ReplayError::Io {
                path: self.path.clone(),
                source,
            })?;
        if read == 0 {
            self.line -= 1;
            return Ok(Next::Eof);
        }
        if self.buf.last() == Some(&b'\n') {
            self.buf.pop();
            return Ok(Next::Line(&self.buf));
        }
        if self.buf.len() > MAX_LINE {
            return Err(self.bad(format!("a line longer than {} MiB", MAX_LINE >> 20)));
        }
        Ok(Next::Cut)
    }

    fn place(&self) -> Place {
        Place {
            path: self.path.clone(),
            line: self.line.max(1),
        }
    }

    fn bad(&self, reason: impl Into<String>) -> ReplayError {
        ReplayError::Bad {
            at: self.place(),
            reason: reason.into(),
        }
    }
}
