//! Deadlines in an ordered heap, so a tick costs O(due timers), not O(teams).
//!
//! A timer is never cancelled: it carries the link epoch it was set in, and
//! the consumer drops it when it pops if the link has moved on since. A link
//! that keeps moving on (a Global flapping a team's join and leave every
//! tick) would leave a stale timer per move until each came due, so the
//! owner sweeps the stale ones out whenever the heap has doubled since the
//! last sweep: the heap holds at most twice its live timers plus
//! [`SWEEP_FLOOR`], at an amortised O(1) per timer set.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::marker::PhantomData;

use bevy_ecs::prelude::*;

/// A due timer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Due<K> {
    /// When it was due, ms.
    pub at: u64,
    /// Insertion order, so equal deadlines pop in the order they were set.
    seq: u64,
    /// The team it belongs to.
    pub entity: Entity,
    /// The link epoch it was set in.
    pub epoch: u32,
    /// What to do.
    pub kind: K,
}

/// Stale timers a heap may hold before it is swept, however few are live.
pub const SWEEP_FLOOR: usize = 64;

/// An ordered set of deadlines of one kind `K`; `Links` is the one writer
/// of both kinds (beats and state deadlines), beside the link states they
/// belong to.
#[derive(Resource)]
pub struct Timers<K: Send + Sync + 'static> {
    heap: BinaryHeap<Reverse<Due<K>>>,
    seq: u64,
    popped: u64,
    /// Sweep once the heap holds more than this.
    sweep_above: usize,
    _kind: PhantomData<K>,
}

impl<K: Ord + Copy + Send + Sync + 'static> Default for Timers<K> {
    fn default() -> Self {
        Timers {
            heap: BinaryHeap::new(),
            seq: 0,
            popped: 0,
            sweep_above: SWEEP_FLOOR,
            _kind: PhantomData,
        }
    }
}

impl<K: Ord + Copy + Send + Sync + 'static> Timers<K> {
    /// Sets a timer for `entity` at `at`, valid while its link is at `epoch`.
    pub fn set(&mut self, at: u64, entity: Entity, epoch: u32, kind: K) {
        self.seq += 1;
        self.heap.push(Reverse(Due {
            at,
            seq: self.seq,
            entity,
            epoch,
            kind,
        }));
    }

    /// Removes and returns the earliest timer due at or before `now`.
    pub fn pop_due(&mut self, now: u64) -> Option<Due<K>> {
        if self.heap.peek()?.0.at > now {
            self.trim();
            return None;
        }
        self.popped += 1;
        self.heap.pop().map(|Reverse(due)| due)
    }

    /// Drops every timer `live` says is stale, if the heap has doubled since
    /// the last sweep. Order is kept: it is (deadline, insertion), not heap
    /// layout, so sweeping changes nothing a consumer sees.
    pub fn sweep(&mut self, mut live: impl FnMut(&Due<K>) -> bool) {
        if self.heap.len() <= self.sweep_above {
            return;
        }
        let mut kept = std::mem::take(&mut self.heap).into_vec();
        kept.retain(|Reverse(due)| live(due));
        self.heap = BinaryHeap::from(kept);
        self.sweep_above = 2 * self.heap.len() + SWEEP_FLOOR;
        self.trim();
    }

    /// Gives back the room a burst of timers left (ten thousand teams
    /// connecting at once), once the heap is mostly empty again.
    fn trim(&mut self) {
        const KEEP: usize = 1024;
        let (len, cap) = (self.heap.len(), self.heap.capacity());
        if cap > KEEP && len < cap / 4 {
            self.heap.shrink_to((len * 2).max(KEEP));
        }
    }

    /// Timers popped so far, stale ones included: the core's per-tick work
    /// apart from events, which tests count to show idle ticks do none.
    pub fn popped(&self) -> u64 {
        self.popped
    }

    /// Timers held, stale ones included.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// The earliest deadline, if any.
    pub fn next_at(&self) -> Option<u64> {
        self.heap.peek().map(|Reverse(d)| d.at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pops_in_deadline_then_insertion_order() {
        let mut world = World::new();
        let (a, b) = (world.spawn_empty().id(), world.spawn_empty().id());
        let mut timers = Timers::<u8>::default();
        timers.set(30, a, 0, 1);
        timers.set(10, b, 0, 2);
        timers.set(10, a, 0, 3);
        assert_eq!(timers.pop_due(9), None);
        let order: Vec<u8> = std::iter::from_fn(|| timers.pop_due(30))
            .map(|d| d.kind)
            .collect();
        assert_eq!(order, vec![2, 3, 1]);
    }

    #[test]
    fn a_sweep_drops_stale_timers_once_the_heap_doubled_and_keeps_order() {
        let mut world = World::new();
        let a = world.spawn_empty().id();
        let mut timers = Timers::<u8>::default();
        // Epoch 0 is stale, odd epochs live; all set at shuffled deadlines.
        for i in 0..SWEEP_FLOOR as u64 {
            timers.set(1000 - i, a, 0, 0);
        }
        timers.sweep(|due| due.epoch != 0);
        assert_eq!(timers.len(), SWEEP_FLOOR, "not above the floor: kept");
        timers.set(5, a, 1, 7);
        timers.set(3, a, 1, 8);
        timers.sweep(|due| due.epoch != 0);
        assert_eq!(timers.len(), 2);
        let order: Vec<u8> = std::iter::from_fn(|| timers.pop_due(u64::MAX))
            .map(|d| d.kind)
            .collect();
        assert_eq!(order, vec![8, 7]);
        assert_eq!(timers.len(), 0);
    }
}
