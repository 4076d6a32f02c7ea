//! The flight recorder: `--record FILE` keeps every event the core takes
//! in, step by step, with the configuration, the seed and the restored
//! teams, so that `switchboard replay FILE` can feed it into a fresh core,
//! with no sockets, and reach the live run's exact state; `--until-step`
//! stops early, to bisect an incident on a laptop.
//!
//! # Why replay is exact
//!
//! The core is deterministic: the same configuration and seed, the same
//! restored teams, the same events in the same steps with the same time
//! advances, and a local stop before the same step, give the same state,
//! byte for byte. A step with no events still runs timers (pings, pong and
//! state deadlines, backoffs, the Global link's probes) and is counted (the
//! core's step count is part of its state), so every step is recorded, idle
//! ones too; a run of idle steps that advance time equally is one line.
//!
//! # Format (version 3)
//!
//! JSON Lines, UTF-8, `\n`-terminated; one segment file or several. A
//! *step* is one run of the core's schedule; `K` below is a step count
//! (steps run so far), `T` the core's time in ms.
//!
//! - Line 1 of a segment: its header. Segment 0's holds the run:
//!   `{"switchboard_recording":3,"segment":0,"run":ID,"config":{…},"seed":N,"restored":[…],"adopted":[…]?}`
//!   (`config` is [`crate::Config`] as serde writes it; `restored` the
//!   [`crate::core::SavedTeam`]s restored before the first step; `adopted`,
//!   for a cluster's leader that took over, the
//!   [`crate::core::AdoptedSocket`]s it adopted after them).
//!   A later segment's holds where the core stood when it began:
//!   `{"switchboard_recording":3,"segment":S,"run":ID,"step":K,"now":T}`.
//! - A step with input: `[K,T,"stop"?,EVENT…]`: the `K`th step (the
//!   snapshot's step count, `clock.tick` in its JSON), which brought the
//!   core to time `T`; `"stop"` when the driver asked for a local shutdown just
//!   before it; then the events it ingested, in order (see [`codec`]).
//! - Idle steps: `[K,T,N]`: `N` steps with no input, each advancing time by
//!   the same whole number of ms, the last being the `K`th, ending at `T`;
//!   at most [`line::MAX_IDLE_RUN`] a line (a longer run takes several).
//! - Late readings (a cluster's leader): `{"late":[…]}`, the
//!   [`crate::core::AdoptedSocket`]s it took (`Core::late_reports`) after
//!   the step before this line and before the one after it (or the end).
//! - The last line: `{"end":"complete","step":K,"now":T,"stop":true?,"run_end":…,"snapshot_fnv1a":HEX}`
//!   (`stop`: a local stop after the last step; the digest is
//!   [`line::digest`] of the live final snapshot, which replay checks), or
//!   `{"end":"incomplete","step":K,"now":T,"reason":…}` when the recording
//!   stopped before the run did.
//!
//! Version 1 differed only in naming the step count `tick` in headers and
//! end lines (`"tick":K`), version 2 in having neither `adopted` nor late
//! lines; this build reads both ([`line::OLDEST_READ`]), and refuses a
//! later version than its own in one line naming it.
//!
//! A message run costs about 19 bytes whatever its length, so a recording's
//! size follows the number of runs, not of messages. Measured per million
//! messages: 0.25 MB against the yardstick's load server (each team's burst
//! arrives as one run), 2.0 MB in the demo at `--rate 1000` (runs of 10),
//! 0.9 MB in a chaos demo of 1000 teams at 300/s; about 20 MB at worst
//! (every message a run of its own).
//!
//! # Bounds and failure policy
//!
//! - Memory: the sidecar hands each step's events, owned, to a writer
//!   thread over a queue bounded in steps and in events (`QUEUE_STEPS`,
//!   `QUEUE_EVENTS` in [`recorder`]; a step is always taken by an empty
//!   queue, so no single step overflows it). It never blocks the core: if
//!   the queue is full, or the writer hit an I/O error, the recording
//!   *stops* (it cannot resume: a gap would make replay wrong): an error is
//!   logged, the core stops keeping events, the writer writes what it has
//!   and an `"incomplete"` end line, and replay of the file says it is
//!   incomplete and where.
//! - Off the core thread: serialising, writing, rotating and flushing are
//!   the writer's. It flushes whenever it catches up with the queue, and at
//!   the end, which every end of the run reaches (the sidecar's `finish`).
//! - Size: with `max_bytes`, a segment is closed once the next line would
//!   take it past the cap (a single line may exceed it), and log-rotated:
//!   `FILE` is the newest, `FILE.1` the one before, up to `FILE.keep`; the
//!   oldest beyond that is deleted. Replay needs the chain from segment 0
//!   (the core's state cannot be rebuilt mid-run), so once segment 0 is
//!   rotated away the recorder logs a warning and replay refuses, naming the
//!   oldest segment left.
//! - Restarts: starting a recording at `FILE` keeps the one already there
//!   (with its segments) as `FILE.previous` (`FILE.previous.1`, …),
//!   replacing the one kept before: a service restarted after a crash does
//!   not erase the recording of the crash. Every segment is a file the recorder
//!   creates (`O_EXCL`, mode 0600): something other than a regular file at
//!   `FILE` (a symlink, a device, a pipe) is refused, never written through. Disk use is thus at most twice
//!   `(keep + 1) × max_bytes`, plus one line per segment.
//! - Replay reads one line at a time (at most [`replay::MAX_LINE`] bytes,
//!   a longer one refused once that much is read): memory is the core's
//!   plus one line, and what parsing it builds is bounded too (headers are
//!   read straight into their types; a step line holds at most
//!   [`line::MAX_STEP_VALUES`] values, counted first). Time per line is
//!   bounded by [`line::MAX_IDLE_RUN`] steps, and no step may take the core
//!   past [`line::MAX_NOW_MS`]: what no recorder writes is refused.

pub mod codec;
pub mod line;
pub mod recorder;
pub mod replay;
pub mod segments;

pub use recorder::{DEFAULT_KEEP, RecordError, RecordOptions, RecordStats, Recorder};
pub use replay::{Place, ReplayEnd, ReplayError, ReplayOptions, Replayed, replay};
