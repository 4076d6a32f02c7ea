//! Which worker opens a team's socket: rendezvous (highest random weight)
//! hashing of the team id over the live workers that have room.
//!
//! Every team ranks every worker by a hash of the pair and takes the first
//! with room, so the choice needs no shared table, is the same on every
//! core (a standby that takes over places teams as the leader did), and a
//! worker that joins or leaves moves only the teams whose first choice it
//! is or was: about 1/N of them, never a reshuffle. A worker is full at its
//! capacity (by default its descriptor limit less a margin); a team whose
//! every worker is full waits, under the backoff, as any failed open does.

use crate::fnv::fnv1a_64;
use crate::protocol::TeamId;

/// A live worker as placement sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot<'a> {
    /// Its name (unique among live workers).
    pub name: &'a str,
    /// Sockets it holds or was asked to open.
    pub load: usize,
    /// Most sockets it may hold.
    pub capacity: usize,
}

/// The worker `team` goes to: of `workers` with room, the one ranked
/// highest for it; `None` when every worker is full (or there is none).
pub fn choose<'a>(team: TeamId, workers: impl IntoIterator<Item = Slot<'a>>) -> Option<&'a str> {
    workers
        .into_iter()
        .filter(|w| w.load < w.capacity)
        .max_by_key(|w| (weight(team, w.name), w.name))
        .map(|w| w.name)
}

/// Whether `team` ranks worker `a` above worker `b` (room aside).
pub fn prefers(team: TeamId, a: &str, b: &str) -> bool {
    (weight(team, a), a) > (weight(team, b), b)
}

/// The pair's rank: FNV-1a of the worker's name, mixed with the team id
/// (splitmix64's finaliser), stable across releases and machines.
fn weight(team: TeamId, worker: &str) -> u64 {
    let mut z = fnv1a_64(worker.as_bytes()) ^ team.0.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NAMES: [&str; 6] = ["w0", "w1", "w2", "w3", "w4", "w5"];

    fn slots(n: usize, capacity: usize) -> Vec<Slot<'static>> {
        NAMES[..n]
            .iter()
            .map(|name| Slot {
                name,
                load: 0,
                capacity,
            })
            .collect()
    }

    #[test]
    fn teams_spread_evenly_over_workers() {
        let workers = slots(3, usize::MAX);
        let mut per = [0usize; 3];
        for team in 0..30_000 {
            let name = choose(TeamId(team), workers.iter().copied()).expect("room");
            per[NAMES.iter().position(|n| *n == name).expect("known")] += 1;
        }
        for n in per {
            assert!((9_000..=11_000).contains(&n), "uneven spread: {per:?}");
        }
    }

    #[test]
    fn no_room_anywhere_is_none() {
        let full = slots(3, 0);
        assert_eq!(choose(TeamId(1), full), None);
        assert_eq!(choose(TeamId(1), Vec::new()), None);
    }

    proptest! {
        // Failures are kept as named tests, not files beside the sources.
        #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

        /// Losing a worker moves exactly the teams it held; a joining
        /// worker takes teams only for itself.
        #[test]
        fn a_worker_leaving_or_joining_moves_only_its_own_teams(
            n in 2usize..6,
            gone in 0usize..6,
            teams in proptest::collection::vec(any::<u64>(), 1..200),
        ) {
            let gone = gone % n;
            let all = slots(n, usize::MAX);
            let rest: Vec<_> = all.iter().copied().filter(|s| s.name != NAMES[gone]).collect();
            for team in teams {
                let before = choose(TeamId(team), all.iter().copied());
                let after = choose(TeamId(team), rest.iter().copied());
                if before != Some(NAMES[gone]) {
                    prop_assert_eq!(before, after, "team {} moved off a live worker", team);
                } else {
                    prop_assert!(after.is_some() && after != before);
                }
            }
        }

        /// A full worker is never chosen, and the choice is the highest
        /// ranked of those with room.
        #[test]
        fn full_workers_are_skipped(
            loads in proptest::collection::vec(0usize..4, 1..6),
            team in any::<u64>(),
        ) {
            let workers: Vec<_> = loads
                .iter()
                .zip(NAMES)
                .map(|(&load, name)| Slot { name, load, capacity: 2 })
                .collect();
            let chosen = choose(TeamId(team), workers.iter().copied());
            let open: Vec<_> = workers.iter().filter(|w| w.load < 2).collect();
            match chosen {
                None => prop_assert!(open.is_empty()),
                Some(name) => {
                    let w = workers.iter().find(|w| w.name == name).expect("one of them");
                    prop_assert!(w.load < w.capacity);
                    for other in open {
                        prop_assert!(weight(TeamId(team), other.name) <= weight(TeamId(team), name));
                    }
                }
            }
        }
    }
}
