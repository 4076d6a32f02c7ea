//! Keeps the state file current beside the driver: restores the saved teams
//! before the first step, hands the teams whose counts changed to the
//! store's writer (which commits on its own thread) at most once per
//! interval, and flushes at the end of the run, whatever the end.
//!
//! After a `kill -9`, counts resume short by at most what arrived in the
//! last interval plus one commit (the writer commits at most once per
//! interval too, right after each hand-over).

use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use crate::core::Core;
use crate::core::SavedTeam;
use crate::inbox::Wake;
use crate::runtime::{RunEnd, Sidecar, Step};
use crate::store::{Store, StoreError, StoreWriter, WriterStats};

/// The teams of `a` and `b`, one entry each: where both have a team, the
/// one that counted more (counts only grow).
pub fn merge(a: Vec<SavedTeam>, b: Vec<SavedTeam>) -> Vec<SavedTeam> {
    let mut all: std::collections::BTreeMap<crate::protocol::TeamId, SavedTeam> =
        std::collections::BTreeMap::new();
    for team in a.into_iter().chain(b) {
        let counted = |t: &SavedTeam| (t.message_count, t.props_count);
        if all.get(&team.id).is_none_or(|kept| counted(&team) > counted(kept)) {
            all.insert(team.id, team);
        }
    }
    all.into_values().collect()
}

/// The default interval between hand-overs (and commits).
pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(250);

/// A copy of the saved teams kept elsewhere (a cluster's, in JetStream),
/// fed the same changes as the state file.
pub trait Mirror: Send {
    /// Teams whose counts or standing changed. Never blocks.
    fn update(&mut self, changed: &[SavedTeam]);
    /// Sends what is left, by `deadline`.
    fn flush(&mut self, deadline: Instant);
}

/// The state file (and a mirror of it, if any), as a sidecar.
pub struct Persistence {
    saved: Vec<SavedTeam>,
    writer: Option<StoreWriter>,
    mirror: Option<Box<dyn Mirror>>,
    interval: Duration,
    last: Instant,
    /// A step ran since the last hand-over: something may have changed.
    dirty: bool,
    stats: Option<WriterStats>,
}

impl Persistence {
    /// Loads `store` and starts its writer. The loaded teams are restored
    /// when the run starts.
    pub fn open(store: Store, interval: Duration) -> Result<Persistence, StoreError> {
        let saved = store.load()?;
        let writer = StoreWriter::spawn(store, interval)?;
        Ok(Persistence {
            saved,
            writer: Some(writer),
            mirror: None,
            interval,
            last: Instant::now(),
            dirty: false,
            stats: None,
        })
    }

    /// No state file: only `mirror`, which held `saved` at start.
    pub fn mirror_only(mirror: Box<dyn Mirror>, saved: Vec<SavedTeam>, interval: Duration) -> Persistence {
        Persistence {
            saved,
            writer: None,
            mirror: Some(mirror),
            interval,
            last: Instant::now(),
            dirty: false,
            stats: None,
        }
    }

    /// Adds `mirror`, which held `saved` at start: each team is restored
    /// from whichever of the file and the mirror counted more of it.
    pub fn with_mirror(mut self, mirror: Box<dyn Mirror>, saved: Vec<SavedTeam>) -> Persistence {
        self.saved = merge(std::mem::take(&mut self.saved), saved);
        self.mirror = Some(mirror);
        self
    }

    /// The teams the file held at start.
    pub fn saved(&self) -> &[SavedTeam] {
        &self.saved
    }

    /// The writer's figures (final ones once the run finished).
    pub fn stats(&self) -> Option<WriterStats> {
        self.stats
            .or_else(|| self.writer.as_ref().map(StoreWriter::stats))
    }

    fn hand_over(&mut self, core: &mut Core) {
        self.last = Instant::now();
        self.dirty = false;
        let changed = core.changed_teams();
        if changed.is_empty() {
            return;
        }
        if let Some(writer) = &self.writer {
            writer.update(&changed);
        }
        if let Some(mirror) = self.mirror.as_mut() {
            mirror.update(&changed);
        }
    }
}

impl Sidecar for Persistence {
    fn start(&mut self, core: &mut Core, _wake: &Wake) {
        let saved = std::mem::take(&mut self.saved);
        match core.restore(&saved) {
            Ok(()) if !saved.is_empty() => info!(
                teams = saved.len(),
                joined = saved.iter().filter(|t| t.joined).count(),
                messages = saved.iter().map(|t| t.message_count).sum::<u64>(),
                "resumed from the state file"
            ),
            Ok(()) => {}
            Err(error) => error!(%error, "saved state not restored"),
        }
        self.saved = saved;
        // Restored teams count as changed: they are all written again with
        // the first hand-over, which is harmless (same values).
        self.dirty = true;
    }

    fn after_step(&mut self, core: &mut Core, step: &Step<'_>) {
        self.dirty = true;
        if step.at.duration_since(self.last) >= self.interval {
            self.hand_over(core);
        }
    }

    fn on_wake(&mut self, core: &mut Core) {
        if self.dirty && self.last.elapsed() >= self.interval {
            self.hand_over(core);
        }
    }

    fn next_wake(&self) -> Option<Instant> {
        // An interval past the clock's range means no wake-up, not a panic.
        self.last.checked_add(self.interval).filter(|_| self.dirty)
    }

    fn finish(&mut self, core: &mut Core, _end: &RunEnd, deadline: Instant) {
        self.hand_over(core);
        if let Some(mirror) = self.mirror.as_mut() {
            mirror.flush(deadline);
        }
        if let Some(writer) = self.writer.take() {
            match writer.flush(deadline) {
                Ok(stats) => {
                    info!(commits = stats.commits, "state file saved");
                    self.stats = Some(stats);
                }
                Err(error) => warn!(%error, "state file not fully saved"),
            }
        }
    }
}
