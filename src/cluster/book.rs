//! The leader's book of which worker incarnation holds which team socket:
//! plain data, no I/O, so its rules are tested over random histories.
//!
//! A socket is owned from the `Open` the leader sends until its terminal
//! event reaches the core, or until its holder is lost; a lost holder owns
//! nothing and is never placed on again; a new socket goes only to a live
//! worker that is not leaving and has room.

use std::collections::{BTreeMap, HashMap};

use super::placement::{self, Slot};
use crate::bridge::ConnId;
use crate::protocol::TeamId;

/// A worker that may take a new socket, as the roster lists it.
#[derive(Clone, Copy, Debug)]
pub struct Candidate<'a> {
    /// Its name.
    pub worker: &'a str,
    /// Its live incarnation.
    pub incarnation: &'a str,
    /// Most sockets it takes.
    pub capacity: usize,
}

/// A worker incarnation that was sent sockets.
#[derive(Debug)]
pub struct Holder {
    /// The worker.
    pub worker: String,
    /// Which run of it.
    pub incarnation: String,
    /// Sockets it holds or was asked to open.
    load: usize,
    /// Command batches sent to it so far (the next is `seq + 1`).
    seq: u64,
    /// Lost: owns nothing, takes nothing.
    gone: bool,
}

/// Holders, by index, and the owner of every socket.
#[derive(Debug, Default)]
pub struct Book {
    holders: Vec<Holder>,
    by_name: HashMap<(String, String), usize>,
    owner: HashMap<ConnId, usize>,
}

impl Book {
    /// Places a new socket of `team` on one of `live` (its rendezvous
    /// choice with room) and records it as that holder's; `None` when none
    /// has room.
    pub fn open(&mut self, conn: ConnId, team: TeamId, live: &[Candidate<'_>]) -> Option<usize> {
        let loads: Vec<usize> = live
            .iter()
            .map(|c| self.holder_index(c).map_or(0, |h| self.holders[h].load))
            .collect();
        let chosen = placement::choose(
            team,
            live.iter().zip(&loads).map(|(c, &load)| Slot {
                name: c.worker,
                load,
                capacity: c.capacity,
            }),
        )?;
        let candidate = live.iter().find(|c| c.worker == chosen)?;
        let holder = self.holder_for(candidate.worker, candidate.incarnation);
        self.owner.insert(conn, holder);
        self.holders[holder].load += 1;
        Some(holder)
    }

    /// Records `conn`, a socket a worker kept through a change of leader,
    /// as that worker incarnation's.
    pub fn adopt(&mut self, conn: ConnId, worker: &str, incarnation: &str) {
        let holder = self.holder_for(worker, incarnation);
        if self.owner.insert(conn, holder).is_none() {
            self.holders[holder].load += 1;
        }
    }

    /// The live holder for this incarnation, made if new.
    fn holder_for(&mut self, worker: &str, incarnation: &str) -> usize {
        let key = (worker.to_owned(), incarnation.to_owned());
        if let Some(&h) = self.by_name.get(&key)
            && !self.holders[h].gone
        {
            return h;
        }
        self.holders.push(Holder {
            worker: worker.to_owned(),
            incarnation: incarnation.to_owned(),
            load: 0,
            seq: 0,
            gone: false,
        });
        let holder = self.holders.len() - 1;
        self.by_name.insert(key, holder);
        holder
    }

    fn holder_index(&self, c: &Candidate<'_>) -> Option<usize> {
        self.by_name
            .get(&(c.worker.to_owned(), c.incarnation.to_owned()))
            .copied()
            .filter(|&h| !self.holders[h].gone)
    }

    /// Who holds `conn`, if a worker does.
    pub fn holder_of(&self, conn: ConnId) -> Option<usize> {
        self.owner.get(&conn).copied()
    }

    /// The holder at `index`.
    pub fn holder(&self, index: usize) -> &Holder {
        &self.holders[index]
    }

    /// The next batch number for `index`, or `None` if it is gone.
    pub fn next_seq(&mut self, index: usize) -> Option<u64> {
        let h = &mut self.holders[index];
        if h.gone {
            return None;
        }
        h.seq += 1;
        Some(h.seq)
    }

    /// `conn`'s terminal event reached the core.
    pub fn ended(&mut self, conn: ConnId) {
        if let Some(holder) = self.owner.remove(&conn) {
            let h = &mut self.holders[holder];
            h.load = h.load.saturating_sub(1);
        }
    }

    /// The sockets this incarnation of `worker` holds, in order (none if
    /// it was never sent any, or is lost). O(sockets): for rare changes.
    pub fn held_by(&self, worker: &str, incarnation: &str) -> Vec<ConnId> {
        let Some(&holder) = self
            .by_name
            .get(&(worker.to_owned(), incarnation.to_owned()))
        else {
            return Vec::new();
        };
        let mut conns: Vec<ConnId> = (self.owner.iter())
            .filter(|&(_, &h)| h == holder)
            .map(|(&conn, _)| conn)
            .collect();
        conns.sort();
        conns
    }

    /// This incarnation of `worker` is lost: its index and every socket it
    /// held, in order (each to be closed in the core's eyes once), or
    /// `None` if it was never sent any.
    pub fn lose(&mut self, worker: &str, incarnation: &str) -> Option<(usize, Vec<ConnId>)> {
        let holder = *self
            .by_name
            .get(&(worker.to_owned(), incarnation.to_owned()))?;
        self.holders[holder].gone = true;
        self.holders[holder].load = 0;
        let mut conns = Vec::new();
        self.owner.retain(|&conn, &mut h| {
            if h == holder {
                conns.push(conn);
            }
            h != holder
        });
        conns.sort();
        Some((holder, conns))
    }

    /// Sockets on each live worker, by name.
    pub fn loads(&self) -> BTreeMap<String, usize> {
        let mut loads = BTreeMap::new();
        for h in self.holders.iter().filter(|h| !h.gone) {
            *loads.entry(h.worker.clone()).or_insert(0) += h.load;
        }
        loads
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[derive(Clone, Debug)]
    enum Op {
        Join(usize),
        Leave(usize),
        Lose(usize),
        Open(u64),
        End(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0usize..4).prop_map(Op::Join),
            (0usize..4).prop_map(Op::Leave),
            (0usize..4).prop_map(Op::Lose),
            (0u64..40).prop_map(Op::Open),
            (0usize..64).prop_map(Op::End),
            (0u64..40).prop_map(Op::Open),
        ]
    }

    /// A worker as the roster would list it.
    #[derive(Clone, Debug)]
    struct Model {
        incarnation: u32,
        live: bool,
        leaving: bool,
        capacity: usize,
    }

    proptest! {
        // Failures are kept as named tests, not files beside the sources.
        #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

        /// Over random histories of workers joining (again: a restart),
        /// leaving, being lost, and teams opening and ending: no team has
        /// two owned sockets, no socket two owners, a lost incarnation owns
        /// nothing and gets nothing, nothing goes to a leaving or full
        /// worker, and every socket of a lost worker is given back once.
        #[test]
        fn no_team_ever_has_two_owners(ops in proptest::collection::vec(op(), 1..300)) {
            let names = ["a", "b", "c", "d"];
            let mut workers: Vec<Model> = (0..4)
                .map(|i| Model { incarnation: 0, live: false, leaving: false, capacity: 3 + i })
                .collect();
            let mut book = Book::default();
            let mut next_conn = 0u64;
            // The core's side: each team's open socket, and which incarnation.
            let mut open: BTreeMap<u64, (ConnId, usize, u32)> = BTreeMap::new();
            let mut lost_incarnations: BTreeSet<(usize, u32)> = BTreeSet::new();
            for op in ops {
                match op {
                    Op::Join(w) => {
                        if workers[w].live {
                            // A restart: the old incarnation is lost first.
                            let old = workers[w].incarnation;
                            let conns = book.lose(names[w], &old.to_string()).map(|x| x.1).unwrap_or_default();
                            open.retain(|_, (c, _, _)| !conns.contains(c));
                            lost_incarnations.insert((w, old));
                        }
                        workers[w].incarnation += 1;
                        workers[w].live = true;
                        workers[w].leaving = false;
                    }
                    Op::Leave(w) => workers[w].leaving = workers[w].live,
                    Op::Lose(w) => {
                        if workers[w].live {
                            let inc = workers[w].incarnation;
                            let expected: BTreeSet<ConnId> = open.values()
                                .filter(|(_, ow, oi)| *ow == w && *oi == inc)
                                .map(|(c, ..)| *c).collect();
                            let given: BTreeSet<ConnId> = book.lose(names[w], &inc.to_string())
                                .map(|x| x.1.into_iter().collect()).unwrap_or_default();
                            prop_assert_eq!(&given, &expected, "a lost worker's sockets, once each");
                            open.retain(|_, (c, _, _)| !given.contains(c));
                            workers[w].live = false;
                            lost_incarnations.insert((w, inc));
                        }
                    }
                    Op::Open(team) => {
                        if open.contains_key(&team) {
                            continue; // the core holds one socket per team
                        }
                        let incs: Vec<String> = workers.iter().map(|m| m.incarnation.to_string()).collect();
                        let live: Vec<Candidate<'_>> = workers.iter().enumerate()
                            .filter(|(_, m)| m.live && !m.leaving)
                            .map(|(i, m)| Candidate { worker: names[i], incarnation: &incs[i], capacity: m.capacity })
                            .collect();
                        next_conn += 1;
                        let conn = ConnId(next_conn);
                        if let Some(h) = book.open(conn, TeamId(team), &live) {
                            let holder = book.holder(h);
                            let w = names.iter().position(|n| *n == holder.worker).expect("known");
                            prop_assert!(workers[w].live && !workers[w].leaving);
                            let inc: u32 = holder.incarnation.parse().expect("number");
                            prop_assert_eq!(inc, workers[w].incarnation);
                            prop_assert!(!lost_incarnations.contains(&(w, inc)));
                            open.insert(team, (conn, w, inc));
                        }
                    }
                    Op::End(i) => {
                        if let Some((&team, &(conn, ..))) = open.iter().nth(i % open.len().max(1)) {
                            book.ended(conn);
                            open.remove(&team);
                        }
                    }
                }
                // Invariants after every step.
                let mut per_worker = BTreeMap::new();
                for (conn, w, inc) in open.values() {
                    let h = book.holder_of(*conn);
                    prop_assert!(h.is_some(), "an open socket has no owner");
                    let holder = book.holder(h.expect("some"));
                    prop_assert_eq!(holder.worker.as_str(), names[*w]);
                    prop_assert_eq!(holder.incarnation.clone(), inc.to_string());
                    *per_worker.entry(names[*w].to_owned()).or_insert(0usize) += 1;
                }
                prop_assert_eq!(book.loads().into_iter().filter(|(_, n)| *n > 0).collect::<BTreeMap<_, _>>(), per_worker.clone());
                for (name, n) in &per_worker {
                    let w = names.iter().position(|x| x == name).expect("known");
                    prop_assert!(*n <= workers[w].capacity, "over capacity");
                }
            }
        }
    }
}
