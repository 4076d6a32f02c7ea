//! The teams as the HTTP side sees them: a copy kept beside the run and
//! refreshed by what changed, so that `/teams` and `/teams/{id}` never cost
//! the core a scan or a wait, however often they are asked.
//!
//! The [`Telemetry`](super::Telemetry) sidecar owns a [`Book`] on the
//! driver's thread. At each publication it asks the core which teams changed
//! since the last one ([`Core::teams_changed_since`]), copies at most
//! [`REFRESH_PER_PUBLISH`] of them (the rest are kept in order for the next
//! publication, which then comes at once) and hands out [`Pages`]: the teams
//! in chunks of `CHUNK`, each chunk shared with the previous publication
//! unless one of its teams changed. A publication thus copies the changed
//! teams and their chunks' pointers plus one pointer per chunk, never every
//! team; readers on the I/O threads hold an `Arc` and never block the driver.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use bevy_ecs::change_detection::Tick;

use crate::core::Core;
use crate::core::TeamSnapshot;
use crate::protocol::TeamId;
use crate::report::TeamLine;

/// Teams per chunk: a changed team costs a copy of its chunk's pointers.
const CHUNK: usize = 64;

/// Most teams copied from the core per publication, so that a publication
/// after a burst (every team's counts moved) stays a bounded cost.
pub const REFRESH_PER_PUBLISH: usize = 1024;

type Chunk = Arc<Vec<Arc<TeamSnapshot>>>;

/// The teams as of one publication. Cheap to hold: chunks are shared.
#[derive(Clone, Debug, Default)]
pub struct Pages {
    /// Counts publications; tells a cached rendering apart from a stale one.
    pub version: u64,
    chunks: Vec<Chunk>,
}

impl Pages {
    /// Every team ever joined, one line each (the final report's lines),
    /// by id. O(teams): run by a handler on an I/O thread, once per version.
    pub fn lines(&self) -> Vec<TeamLine> {
        let mut lines: Vec<TeamLine> = self
            .chunks
            .iter()
            .flat_map(|chunk| chunk.iter().map(|team| TeamLine::of(team)))
            .collect();
        lines.sort_unstable_by_key(|line| line.id);
        lines
    }

    /// One team, if it ever joined (a scan, on an I/O thread).
    pub fn team(&self, id: TeamId) -> Option<Arc<TeamSnapshot>> {
        self.chunks
            .iter()
            .flat_map(|chunk| chunk.iter())
            .find(|team| team.id == id)
            .cloned()
    }
}

/// The driver's side: where each team sits, and what still needs copying.
#[derive(Default)]
pub struct Book {
    chunks: Vec<Chunk>,
    place: HashMap<TeamId, (usize, usize)>,
    /// Changed teams not yet copied, oldest change first; each once.
    pending: VecDeque<TeamId>,
    queued: HashSet<TeamId>,
    mark: Tick,
    version: u64,
}

impl Book {
    /// Takes in what changed since the last call, copies up to `limit`
    /// changed teams from the core, and returns the pages to publish.
    pub fn refresh(&mut self, core: &mut Core, limit: usize) -> Pages {
        let (changed, mark) = core.teams_changed_since(self.mark);
        self.mark = mark;
        for id in changed {
            if self.queued.insert(id) {
                self.pending.push_back(id);
            }
        }
        for _ in 0..limit.min(self.pending.len()) {
            let Some(id) = self.pending.pop_front() else {
                break;
            };
            self.queued.remove(&id);
            if let Some(team) = core.team(id) {
                self.put(Arc::new(team));
            }
        }
        self.version += 1;
        Pages {
            version: self.version,
            chunks: self.chunks.clone(),
        }
    }

    /// Whether changed teams wait for the next publication.
    pub fn behind(&self) -> bool {
        !self.pending.is_empty()
    }

    fn put(&mut self, team: Arc<TeamSnapshot>) {
        match self.place.get(&team.id) {
            // Copies the chunk's pointers only if a reader still holds it.
            Some(&(chunk, slot)) => Arc::make_mut(&mut self.chunks[chunk])[slot] = team,
            None => {
                if self.chunks.last().is_none_or(|c| c.len() >= CHUNK) {
                    self.chunks.push(Arc::new(Vec::with_capacity(CHUNK)));
                }
                let chunk = self.chunks.len() - 1;
                let teams = Arc::make_mut(&mut self.chunks[chunk]);
                self.place.insert(team.id, (chunk, teams.len()));
                teams.push(team);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::Peer;

    #[test]
    fn a_publication_copies_what_changed_at_most_its_limit_and_carries_the_rest() {
        let mut peer = Peer::new(1);
        peer.open_global();
        for id in 1..=3 {
            peer.join(TeamId(id));
            peer.connect_team(TeamId(id));
        }
        peer.step();
        let mut book = Book::default();
        let first = book.refresh(&mut peer.core, 2);
        assert_eq!(first.lines().len(), 2);
        assert!(book.behind());
        let all = book.refresh(&mut peer.core, 2);
        assert_eq!(all.lines().len(), 3);
        assert!(!book.behind());
        // Nothing moved: nothing copied, and the chunk is the same one.
        let quiet = book.refresh(&mut peer.core, 2);
        assert!(Arc::ptr_eq(&all.chunks[0], &quiet.chunks[0]));
        peer.message(TeamId(2), "props");
        peer.step();
        let moved = book.refresh(&mut peer.core, 2);
        let two = moved.team(TeamId(2)).expect("team 2");
        assert_eq!(two.counters.message_count, 1);
        assert!(!Arc::ptr_eq(&quiet.chunks[0], &moved.chunks[0]));
        // The earlier publication still reads as it was.
        let before = quiet.team(TeamId(2)).expect("team 2");
        assert_eq!(before.counters.message_count, 0);
    }
}
