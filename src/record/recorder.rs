//! The recorder: a sidecar that takes each step's ingested events from the
//! core and hands them, owned, to a writer thread over a bounded queue. The
//! writer encodes, writes, rotates and flushes; the core thread never
//! serialises, never touches the disk and never waits (except in `finish`,
//! up to its deadline).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use tracing::{error, info, warn};

use super::line::{self, Completeness, End, Header, Idle};
use super::{codec, segments};
use crate::core::Config;
use crate::core::Core;
use crate::core::{AdoptedSocket, SavedTeam};
use crate::core::ShutdownCause;
use crate::inbox::Wake;
use crate::runtime::{RunEnd, Sidecar, Step};

/// Rotated segments kept by default (`FILE.1` … `FILE.4`).
pub const DEFAULT_KEEP: usize = 4;

/// Steps the queue to the writer holds: 40 s of busy steps at a 10 ms tick.
const QUEUE_STEPS: usize = 4096;

/// Events the queue to the writer holds, over all its steps: at 40 bytes
/// an event (plus a rare boxed frame) about 10 MiB. A step is always
/// taken when the queue is empty, however many events it has, so a single
/// step can never overflow it.
const QUEUE_EVENTS: usize = 1 << 18;

/// The writer's buffer; it is also flushed whenever the queue runs dry.
const WRITE_BUFFER: usize = 256 << 10;

/// Where and how much to record.
#[derive(Clone, Debug)]
pub struct RecordOptions {
    /// The recording's newest segment; rotated ones sit beside it.
    pub path: PathBuf,
    /// Rotate once a segment reaches this many bytes; `None`: never.
    pub max_bytes: Option<u64>,
    /// Rotated segments kept beside `path`.
    pub keep: usize,
}

/// The recording could not start.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The file could not be created, or old segments removed.
    #[error("cannot record to {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Something other than a regular file is at the path: the recorder
    /// writes only files it creates, so it never writes through a link (a
    /// planted one would overwrite its target with URLs and tokens) or into
    /// a device or pipe it did not make.
    #[error(
        "cannot record to {path}: it is {kind}, not a regular file; the recorder writes only files it creates (name a new path)"
    )]
    NotAFile {
        /// The path.
        path: PathBuf,
        /// What is there.
        kind: &'static str,
    },
}

/// What the recorder wrote, for logs and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecordStats {
    /// Bytes written, over every segment.
    pub bytes: u64,
    /// Steps recorded (idle ones included).
    pub steps: u64,
    /// Events recorded.
    pub events: u64,
    /// Segments begun (1 + rotations).
    pub segments: u64,
    /// Why the recording stopped early, if it did.
    pub incomplete: Option<String>,
}

/// What the sidecar and the writer share.
#[derive(Default)]
struct Shared {
    /// Events queued and not yet written.
    queued: AtomicUsize,
    /// The writer hit an I/O error and writes nothing more.
    failed: AtomicBool,
    /// Why the sidecar stopped sending, for the end line.
    abandoned: Mutex<Option<String>>,
    bytes: AtomicU64,
    steps: AtomicU64,
    events: AtomicU64,
    segments: AtomicU64,
}

/// What the sidecar hands the writer.
enum Msg {
    /// Segment 0's header: the teams restored, and the sockets adopted,
    /// before the first step.
    Start(Vec<SavedTeam>, Vec<AdoptedSocket>),
    /// Late readings taken before the next step.
    Late(Vec<AdoptedSocket>),
    /// A step with input.
    Step(line::Step),
    /// Steps without.
    Idle(Idle),
    /// The end line.
    End(End),
}

/// The flight recorder, as a sidecar. See the [module doc](super).
pub struct Recorder {
    path: PathBuf,
    tx: Option<Sender<Msg>>,
    shared: Arc<Shared>,
    done: Receiver<()>,
    thread: Option<JoinHandle<()>>,
    queue_events: usize,
    /// Segment 0's header went out.
    started: bool,
    /// The core's step count and time after the last step seen.
    step: u64,
    now: u64,
    /// The local stop has been recorded.
    stop_seen: bool,
    /// Idle steps not yet handed over (they are coalesced).
    idle: Option<(Idle, u64)>,
    /// The final figures, once finished.
    finished: Option<RecordStats>,
    /// A writer not started yet (tests start it late, to fill the queue).
    pending_writer: Option<Box<dyn FnOnce() + Send>>,
}

impl Recorder {
    /// Creates the recording at `options.path` and starts its writer; a
    /// recording already there is kept as `FILE.previous` (see
    /// [`segments::keep_previous`]). The header carries `config` and
    /// `seed`: pass the run's own.
    pub fn create(
        options: RecordOptions,
        config: &Config,
        seed: u64,
    ) -> Result<Recorder, RecordError> {
        Recorder::with_limits(options, config, seed, QUEUE_STEPS, QUEUE_EVENTS, true)
    }

    fn with_limits(
        options: RecordOptions,
        config: &Config,
        seed: u64,
        queue_steps: usize,
        queue_events: usize,
        spawn: bool,
    ) -> Result<Recorder, RecordError> {
        let path = options.path.clone();
        let io = |source| RecordError::Io {
            path: path.clone(),
            source,
        };
        if let Some(kind) = segments::special(&options.path) {
            return Err(RecordError::NotAFile {
                path: options.path,
                kind,
            });
        }
        if segments::keep_previous(&options.path).map_err(io)? {
            info!(
                path = %segments::previous(&options.path).display(),
                "the recording already there is kept here, replacing the one kept before"
            );
        }
        let file = create(&options.path).map_err(io)?;
        let shared = Arc::new(Shared::default());
        let (tx, rx) = crossbeam_channel::bounded(queue_steps);
        let (done_tx, done) = crossbeam_channel::bounded(1);
        let writer = Writer {
            base: options.path.clone(),
            out: BufWriter::with_capacity(WRITE_BUFFER, file),
            max_bytes: options.max_bytes,
            keep: options.keep,
            run: run_id(),
            config: config.clone(),
            seed,
            segment: 0,
            written: 0,
            steps_in_segment: 0,
            step: 0,
            now: 0,
            buf: Vec::with_capacity(4096),
            shared: shared.clone(),
            warned_names: false,
            ended: false,
        };
        let mut recorder = Recorder {
            path: options.path,
            tx: Some(tx),
            shared,
            done,
            thread: None,
            queue_events,
            started: false,
            step: 0,
            now: 0,
            stop_seen: false,
            idle: None,
            finished: None,
            pending_writer: None,
        };
        let start = move || writer.run(rx, done_tx);
        if spawn {
            let thread = std::thread::Builder::new()
                .name("switchboard-record".into())
                .spawn(start)
                .map_err(io)?;
            recorder.thread = Some(thread);
        } else {
            recorder.pending_writer = Some(Box::new(start));
        }
        Ok(recorder)
    }

    /// The recording's path (its newest segment).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What was written so far (the final figures once the run finished).
    pub fn stats(&self) -> RecordStats {
        if let Some(stats) = &self.finished {
            return stats.clone();
        }
        let s = &self.shared;
        RecordStats {
            bytes: s.bytes.load(Ordering::Relaxed),
            steps: s.steps.load(Ordering::Relaxed),
            events: s.events.load(Ordering::Relaxed),
            segments: s.segments.load(Ordering::Relaxed),
            incomplete: s.abandoned.lock().ok().and_then(|r| r.clone()),
        }
    }

    /// Hands `msg` to the writer without waiting; on a full queue (or a
    /// failed writer) the recording stops, visibly, and the core stops
    /// keeping events.
    fn send(&mut self, core: &mut Core, msg: Msg, events: usize) {
        let Some(tx) = self.tx.clone() else {
            return;
        };
        if self.shared.failed.load(Ordering::Relaxed) {
            return self.abandon(core, "the writer failed (see the error above)".into());
        }
        let queued = self.shared.queued.load(Ordering::Relaxed);
        if queued > 0 && queued + events > self.queue_events {
            return self.abandon(core, format!("the writer fell behind by {queued} events"));
        }
        self.shared.queued.fetch_add(events, Ordering::Relaxed);
        let lost = match tx.try_send(msg) {
            Ok(()) => return,
            Err(TrySendError::Full(_)) => "the writer fell behind by a full queue of steps",
            Err(TrySendError::Disconnected(_)) => "the writer stopped",
        };
        self.shared.queued.fetch_sub(events, Ordering::Relaxed);
        self.abandon(core, lost.into());
    }

    fn abandon(&mut self, core: &mut Core, why: String) {
        core.set_recording(false);
        self.tx = None;
        self.idle = None;
        error!(
            path = %self.path.display(),
            step = self.step,
            "recording stopped: {why}; the run goes on unrecorded, and the file replays only up to here (it says it is incomplete)"
        );
        if let Ok(mut reason) = self.shared.abandoned.lock() {
            reason.get_or_insert(why);
        }
    }

    fn start_once(&mut self, core: &mut Core) {
        if !self.started {
            self.started = true;
            let restored = core.restored().to_vec();
            let adopted = core.adopted().to_vec();
            self.send(core, Msg::Start(restored, adopted), 0);
        }
    }

    /// Late readings the core took before this step (or, at the end,
    /// after the last), written ahead of it.
    fn take_late(&mut self, core: &mut Core) {
        let late = core.drain_late_recorded();
        if !late.is_empty() {
            self.flush_idle(core);
            let n = late.len();
            self.send(core, Msg::Late(late), n);
        }
    }

    fn flush_idle(&mut self, core: &mut Core) {
        if let Some((idle, _)) = self.idle.take() {
            self.send(core, Msg::Idle(idle), 0);
        }
    }

    /// Whether a local stop was asked since the last look: the driver
    /// asks (`Core::shutdown`) just before the step that acts on it.
    fn stop_asked(&mut self, core: &Core) -> bool {
        let asked = !self.stop_seen && core.shutdown_cause() == Some(ShutdownCause::Local);
        self.stop_seen |= asked;
        asked
    }
}

impl Sidecar for Recorder {
    fn start(&mut self, core: &mut Core, _wake: &Wake) {
        core.set_recording(true);
    }

    fn after_step(&mut self, core: &mut Core, _step: &Step<'_>) {
        if self.tx.is_none() {
            return;
        }
        // Restored teams are known once every sidecar has started.
        self.start_once(core);
        self.take_late(core);
        let events = core.drain_recorded();
        let now = u64::try_from(core.now().as_millis()).unwrap_or(u64::MAX);
        let dt = now.saturating_sub(self.now);
        self.step += 1;
        self.now = now;
        let stop = self.stop_asked(core);
        if events.is_empty() && !stop {
            // Idle steps still run timers, so each is kept, but a run of
            // them with equal time advances is one line.
            if let Some(ended) = coalesce(&mut self.idle, dt, self.step, now) {
                self.send(core, Msg::Idle(ended), 0);
            }
            return;
        }
        self.flush_idle(core);
        let n = events.len();
        let step = line::Step {
            step: self.step,
            now,
            stop,
            events,
        };
        self.send(core, Msg::Step(step), n);
    }

    fn finish(&mut self, core: &mut Core, end: &RunEnd, deadline: Instant) {
        if let Some(start) = self.pending_writer.take() {
            self.thread = std::thread::Builder::new()
                .name("switchboard-record".into())
                .spawn(start)
                .ok();
        }
        if self.tx.is_some() {
            self.start_once(core);
            self.flush_idle(core);
            self.take_late(core);
        }
        // Still recording after those: the end line, with what replay
        // must reach.
        if let Some(tx) = self.tx.clone() {
            let stop = self.stop_asked(core);
            let snapshot = core.snapshot();
            if snapshot.clock.step != self.step {
                error!(
                    path = %self.path.display(),
                    "the core ran {} steps, the recorder saw {}: the recording will not replay (every step must reach after_step)",
                    snapshot.clock.step,
                    self.step
                );
            }
            let msg = Msg::End(End {
                end: Completeness::Complete,
                step: snapshot.clock.step,
                now: snapshot.clock.now,
                stop,
                run_end: Some(format!("{end:?}")),
                snapshot_fnv1a: Some(line::digest(&snapshot)),
                reason: None,
            });
            if tx.send_deadline(msg, deadline).is_err() {
                self.abandon(core, "the writer did not take the end line in time".into());
            }
        }
        self.tx = None;
        core.set_recording(false);
        let wait = deadline.saturating_duration_since(Instant::now());
        if self.done.recv_timeout(wait).is_err() {
            warn!(path = %self.path.display(), "the recording was not closed in time: its end may be missing");
            self.finished = Some(self.stats());
            return;
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let stats = self.stats();
        match &stats.incomplete {
            None => info!(
                path = %self.path.display(),
                bytes = stats.bytes,
                steps = stats.steps,
                events = stats.events,
                segments = stats.segments,
                "recording saved"
            ),
            Some(why) => warn!(path = %self.path.display(), %why, "recording saved, incomplete"),
        }
        self.finished = Some(stats);
    }
}

/// Creates a segment, readable by its owner only: it holds the Global URL
/// and every team URL the server handed out. Whatever was at `path` has
/// been moved away (kept as `FILE.previous`, or rotated), so the file must
/// be new: `create_new` (`O_EXCL`) never follows a symlink and never opens
/// a file someone else made, even one planted since.
fn create(path: &Path) -> std::io::Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

/// Adds an idle step (the `step`th, a time advance of `dt` ms to `now`)
/// to the run of them being coalesced into one line; returns the run it
/// had to end (another advance, or a line full at [`line::MAX_IDLE_RUN`]).
fn coalesce(idle: &mut Option<(Idle, u64)>, dt: u64, step: u64, now: u64) -> Option<Idle> {
    match idle {
        Some((run, each)) if *each == dt && run.count < line::MAX_IDLE_RUN => {
            run.count += 1;
            run.step = step;
            run.now = now;
            None
        }
        _ => idle
            .replace((
                Idle {
                    step,
                    now,
                    count: 1,
                },
                dt,
            ))
            .map(|(run, _)| run),
    }
}

/// A name for this recording, unique enough to tell runs apart.
fn run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{nanos:x}-{:x}", std::process::id())
}

/// The writer thread: owns the file.
struct Writer {
    base: PathBuf,
    out: BufWriter<File>,
    max_bytes: Option<u64>,
    keep: usize,
    run: String,
    config: Config,
    seed: u64,
    /// The current segment's number, and its size so far.
    segment: u64,
    written: u64,
    steps_in_segment: u64,
    /// The core's step count and time after the last step written.
    step: u64,
    now: u64,
    buf: Vec<u8>,
    shared: Arc<Shared>,
    warned_names: bool,
    ended: bool,
}

impl Writer {
    fn run(mut self, rx: Receiver<Msg>, done: Sender<()>) {
        self.shared.segments.store(1, Ordering::Relaxed);
        loop {
            let msg = match rx.try_recv() {
                Ok(msg) => msg,
                Err(crossbeam_channel::TryRecvError::Empty) => {
                    // Caught up: what is written reaches the file now.
                    self.io(|w| w.out.flush());
                    match rx.recv() {
                        Ok(msg) => msg,
                        Err(_) => break,
                    }
                }
                Err(crossbeam_channel::TryRecvError::Disconnected) => break,
            };
            self.handle(msg);
        }
        if !self.ended {
            // The sidecar stopped sending without an end line: say so in
            // the file, so a replay knows.
            let reason = self
                .shared
                .abandoned
                .lock()
                .ok()
                .and_then(|r| r.clone())
                .unwrap_or_else(|| "the recorder stopped without an end".into());
            self.end(End {
                end: Completeness::Incomplete,
                step: self.step,
                now: self.now,
                stop: false,
                run_end: None,
                snapshot_fnv1a: None,
                reason: Some(format!(
                    "{reason}: steps after step {} are not recorded",
                    self.step
                )),
            });
        }
        self.io(|w| w.out.flush());
        self.io(|w| w.out.get_ref().sync_data());
        let _ = done.send(());
    }

    /// Runs one I/O operation unless an earlier one failed; a failure is
    /// logged once and stops the recording.
    fn io(&mut self, op: impl FnOnce(&mut Self) -> std::io::Result<()>) {
        if self.shared.failed.load(Ordering::Relaxed) {
            return;
        }
        if let Err(source) = op(self) {
            self.shared.failed.store(true, Ordering::Relaxed);
            error!(path = %self.base.display(), %source, "recording failed: nothing more is written");
        }
    }

    fn handle(&mut self, msg: Msg) {
        self.buf.clear();
        match msg {
            Msg::Start(restored, adopted) => {
                let header = Header {
                    version: line::VERSION,
                    segment: 0,
                    run: self.run.clone(),
                    config: Some(self.config.clone()),
                    seed: Some(self.seed),
                    restored: Some(restored),
                    adopted: (!adopted.is_empty()).then_some(adopted),
                    step: None,
                    now: None,
                };
                line::write_json(&mut self.buf, &header);
                self.write_buf();
            }
            Msg::Step(step) => {
                let n = step.events.len();
                if !self.warned_names && !step.events.iter().all(codec::names_known) {
                    self.warned_names = true;
                    error!(
                        path = %self.base.display(),
                        step = step.step,
                        "an event carries a name the recording format does not know: replay will stop at it (add it to protocol::reference::TYPES or FIELDS, or CloseReason::STALLS)"
                    );
                }
                line::write_step(&mut self.buf, step.step, step.now, step.stop, &step.events);
                drop(step.events);
                self.write_step_line(step.step, step.now, 1, n);
                self.shared.queued.fetch_sub(n, Ordering::Relaxed);
            }
            Msg::Idle(idle) => {
                line::write_idle(&mut self.buf, idle);
                self.write_step_line(idle.step, idle.now, idle.count, 0);
            }
            Msg::Late(late) => {
                let n = late.len();
                line::write_json(&mut self.buf, &line::Late { late });
                // Written with the step it precedes in mind: never the
                // first line of a new segment (no rotation here).
                self.write_buf();
                self.shared.queued.fetch_sub(n, Ordering::Relaxed);
            }
            Msg::End(end) => self.end(end),
        }
    }

    fn end(&mut self, end: End) {
        self.ended = true;
        self.buf.clear();
        line::write_json(&mut self.buf, &end);
        self.write_buf();
    }

    fn write_step_line(&mut self, step: u64, now: u64, steps: u64, events: usize) {
        if let Some(max) = self.max_bytes
            && self.steps_in_segment > 0
            && self.written + self.buf.len() as u64 > max
        {
            self.io(Writer::rotate);
        }
        self.write_buf();
        self.step = step;
        self.now = now;
        self.steps_in_segment += 1;
        self.shared.steps.fetch_add(steps, Ordering::Relaxed);
        self.shared
            .events
            .fetch_add(events as u64, Ordering::Relaxed);
    }

    fn write_buf(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        self.io(|w| w.out.write_all(&buf));
        self.written += buf.len() as u64;
        self.shared
            .bytes
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        self.buf = buf;
    }

    /// Closes the current segment, ages the old ones, opens a new one.
    fn rotate(&mut self) -> std::io::Result<()> {
        self.out.flush()?;
        let dropped = segments::rotate(&self.base, self.keep)?;
        let file = create(&self.base)?;
        self.out = BufWriter::with_capacity(WRITE_BUFFER, file);
        self.segment += 1;
        self.written = 0;
        self.steps_in_segment = 0;
        self.shared.segments.fetch_add(1, Ordering::Relaxed);
        if dropped && self.segment == self.keep as u64 + 1 {
            warn!(
                path = %self.base.display(),
                "the recording's first segment was rotated away: what is kept can no longer be replayed (raise --record-max-bytes or --record-keep)"
            );
        }
        let header = Header {
            version: line::VERSION,
            segment: self.segment,
            run: self.run.clone(),
            config: None,
            seed: None,
            restored: None,
            adopted: None,
            step: Some(self.step),
            now: Some(self.now),
        };
        let mut buf = Vec::new();
        line::write_json(&mut buf, &header);
        self.out.write_all(&buf)?;
        self.written += buf.len() as u64;
        self.shared
            .bytes
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{ReplayEnd, ReplayOptions, replay};
    use crate::testkit::{Peer, test_config};

    fn step_info() -> Step<'static> {
        Step {
            at: Instant::now(),
            took: std::time::Duration::ZERO,
            team_events: &[],
            inbox_depth: 0,
        }
    }

    /// A recorder whose writer starts only at `finish`, so its queue fills
    /// deterministically.
    fn stalled(path: PathBuf, steps: usize, events: usize) -> Recorder {
        let options = RecordOptions {
            path,
            max_bytes: None,
            keep: 0,
        };
        Recorder::with_limits(options, &test_config(), 7, steps, events, false).expect("create")
    }

    /// One step, seen by the recorder, as the driver does it.
    fn step(peer: &mut Peer, recorder: &mut Recorder) {
        peer.step();
        recorder.after_step(&mut peer.core, &step_info());
    }

    /// Steps with input until the recorder gives up; returns the steps run.
    fn fill(peer: &mut Peer, recorder: &mut Recorder) -> u64 {
        let wake = crate::inbox::Wake::unattached();
        recorder.start(&mut peer.core, &wake);
        // The first step asks for Global; it opens and says hello.
        step(peer, recorder);
        let conn = peer.global_conn();
        peer.push(crate::bridge::NetEvent::Opened { conn });
        peer.global_text(r#"{"type":"hello"}"#);
        for n in 2..=50 {
            peer.global_text(r#"{"type":"healthcheck"}"#);
            step(peer, recorder);
            if recorder.stats().incomplete.is_some() {
                return n;
            }
        }
        panic!("the queue never filled");
    }

    fn overflow_is_visible_and_replays_as_incomplete(steps: usize, events: usize, says: &str) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("run.rec");
        let mut peer = Peer::new(7);
        let mut recorder = stalled(path.clone(), steps, events);
        let ran = fill(&mut peer, &mut recorder);
        // The core stopped keeping events: nothing piles up unrecorded.
        peer.global_text(r#"{"type":"healthcheck"}"#);
        step(&mut peer, &mut recorder);
        assert!(peer.core.drain_recorded().is_empty());
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        recorder.finish(&mut peer.core, &RunEnd::Forced, deadline);
        let stats = recorder.stats();
        assert!(
            stats
                .incomplete
                .as_deref()
                .is_some_and(|why| why.contains(says)),
            "{stats:?}"
        );
        let text = std::fs::read_to_string(&path).expect("read");
        let last = text.lines().last().expect("lines");
        assert!(last.contains(r#""end":"incomplete""#), "{last}");
        let replayed = replay(&path, &ReplayOptions::default()).expect("replays");
        match replayed.end {
            ReplayEnd::Incomplete { at, reason } => {
                assert_eq!(at.line, text.lines().count() as u64);
                assert!(reason.contains(says), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        // Every step handed over before the overflow was replayed.
        assert_eq!(replayed.steps, ran - 1);
    }

    /// A long idle stretch is cut into lines replay accepts.
    #[test]
    fn an_idle_run_is_cut_at_the_most_a_line_holds() {
        let mut idle = None;
        assert_eq!(coalesce(&mut idle, 10, 1, 10), None);
        assert_eq!(coalesce(&mut idle, 10, 2, 20), None);
        // Another time advance ends the run.
        let ended = coalesce(&mut idle, 30, 3, 50).expect("ended");
        assert_eq!((ended.step, ended.now, ended.count), (2, 20, 2));
        // A full line too.
        if let Some((run, _)) = &mut idle {
            run.count = line::MAX_IDLE_RUN - 1;
        }
        assert_eq!(coalesce(&mut idle, 30, 4, 80), None);
        let full = coalesce(&mut idle, 30, 5, 110).expect("full");
        assert_eq!((full.step, full.count), (4, line::MAX_IDLE_RUN));
        assert_eq!(idle.map(|(run, _)| run.count), Some(1));
    }

    #[test]
    fn a_full_queue_of_steps_stops_the_recording_visibly() {
        // The header and two steps (the first an idle one, handed over
        // when the second has input) fill it; the third step overflows.
        overflow_is_visible_and_replays_as_incomplete(3, 1 << 20, "full queue of steps");
    }

    #[test]
    fn a_full_queue_of_events_stops_the_recording_visibly() {
        // The second step brings three events, taken by the empty queue;
        // the third step's would pass the budget.
        overflow_is_visible_and_replays_as_incomplete(1000, 3, "fell behind by");
    }
}
