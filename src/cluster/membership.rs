//! The leader's view of the live workers, kept from their leases: a watch
//! on the workers' bucket, and the leader's own clock for expiry.
//!
//! A worker is lost when its entry is deleted by the worker (it closed its
//! sockets and left), replaced by a new incarnation (it restarted, or
//! fenced itself and came back), or not renewed for a whole lease. A
//! worker that cannot renew fences itself after half a lease, so by the
//! time the leader declares it lost its sockets are closed: break before
//! make. A worker the leader revoked (its events had a gap) is lost only
//! the same ways, never on the revocation itself.
//!
//! A worker unrenewed for half a lease (when it would fence itself) is
//! **quiet** until it is heard again or lost: its sockets are closing, or
//! nobody reads them, so its teams are not reported connected, and it
//! takes no new socket; but none of its teams is opened elsewhere yet.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use futures_util::StreamExt;
use tracing::{info, warn};

use super::lease::{WorkerValue, lost_after, must_fence, worker_value};
use crate::inbox::Wake;

/// Joins kept for [`Roster::take_joined`], at most (the leader takes them
/// every loop; more means it is not running, and a join then needs no
/// call).
const MOST_JOINED: usize = 4096;

/// Worker names whose last revision is remembered, at most (past it, only
/// the live ones' are kept).
const MOST_NAMES: usize = 65_536;

/// One live worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Its lease's value.
    pub value: WorkerValue,
    last_seen: Instant,
    /// The entry's revision when last seen (0: not known).
    revision: u64,
    revoked: bool,
    quiet: bool,
}

/// A worker incarnation that went quiet, or was heard again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quiet {
    /// The worker.
    pub worker: String,
    /// Which run of it.
    pub incarnation: String,
    /// Quiet (else heard again).
    pub quiet: bool,
}

/// A worker incarnation that is gone: every socket it held is closed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lost {
    /// The worker.
    pub worker: String,
    /// Which run of it.
    pub incarnation: String,
    /// Why, for the log.
    pub why: &'static str,
}

#[derive(Debug, Default)]
struct State {
    live: BTreeMap<String, Member>,
    lost: Vec<Lost>,
    /// Live workers that went quiet or were heard again since the last
    /// [`Roster::take_quiet`] (at most two a worker between takes, since
    /// each change reverses the last: quiet, heard).
    quiet: Vec<Quiet>,
    /// Incarnations that joined since the last [`Roster::take_joined`].
    joined: Vec<(String, WorkerValue)>,
    /// The newest entry revision applied per worker name, lost ones too:
    /// a remade watch replays each key's latest entry, which must neither
    /// bring a lost worker back nor pass for a renewal.
    revisions: std::collections::HashMap<String, u64>,
    wake: Option<Wake>,
}

/// The live workers, shared by the watch task, the event ingress and the
/// dispatcher. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Roster(Arc<Mutex<State>>);

impl Roster {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while holding it leaves plain data: go on.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes the driver whenever a worker is lost, goes quiet or is heard
    /// again.
    pub fn attach(&self, wake: Wake) {
        self.state().wake = Some(wake);
    }

    /// The live workers, by name.
    pub fn live(&self) -> BTreeMap<String, WorkerValue> {
        self.state()
            .live
            .iter()
            .map(|(name, m)| (name.clone(), m.value.clone()))
            .collect()
    }

    /// The live workers that are quiet, by name.
    pub fn quiet_workers(&self) -> std::collections::BTreeSet<String> {
        let state = self.state();
        let quiet = state.live.iter().filter(|(_, m)| m.quiet);
        quiet.map(|(name, _)| name.clone()).collect()
    }

    /// Calls `each` with every live worker that may take sockets (not
    /// revoked, not quiet; no copies: for placement).
    pub fn each_live(&self, mut each: impl FnMut(&str, &WorkerValue)) {
        let state = self.state();
        for (name, member) in state.live.iter().filter(|(_, m)| !m.revoked && !m.quiet) {
            each(name, &member.value);
        }
    }

    /// Whether this incarnation of `worker` is live.
    pub fn is_live(&self, worker: &str, incarnation: &str) -> bool {
        self.state()
            .live
            .get(worker)
            .is_some_and(|m| m.value.incarnation == incarnation)
    }

    /// Worker incarnations that joined since the last call (the leader
    /// calls each for what its ended sockets read: a worker that fenced
    /// comes back as one).
    pub fn take_joined(&self) -> Vec<(String, WorkerValue)> {
        std::mem::take(&mut self.state().joined)
    }

    /// Workers lost since the last call.
    pub fn take_lost(&self) -> Vec<Lost> {
        std::mem::take(&mut self.state().lost)
    }

    /// Live workers that went quiet or were heard again since the last
    /// call, in order.
    pub fn take_quiet(&self) -> Vec<Quiet> {
        std::mem::take(&mut self.state().quiet)
    }

    /// Marks this incarnation revoked: its entry's deletion (which the
    /// caller asks for) is then not a loss; its expiry or successor is.
    pub fn revoke(&self, worker: &str, incarnation: &str) {
        if let Some(m) = self.state().live.get_mut(worker)
            && m.value.incarnation == incarnation
        {
            m.revoked = true;
        }
    }

    /// A put of `worker`'s entry, seen at `now`.
    pub fn seen(&self, worker: &str, value: WorkerValue, now: Instant) {
        self.seen_at(worker, value, 0, now);
    }

    /// [`Roster::seen`], with the entry's revision.
    pub fn seen_at(&self, worker: &str, value: WorkerValue, revision: u64, now: Instant) {
        let mut state = self.state();
        if revision > 0 {
            if state.revisions.get(worker).is_some_and(|&r| r >= revision) {
                return; // replayed: applied already
            }
            if state.revisions.len() >= MOST_NAMES {
                let State {
                    revisions, live, ..
                } = &mut *state;
                revisions.retain(|name, _| live.contains_key(name));
            }
            state.revisions.insert(worker.to_owned(), revision);
        }
        let replaced = match state.live.get_mut(worker) {
            Some(m) if m.value.incarnation == value.incarnation => {
                m.value = value;
                m.last_seen = now;
                m.revision = m.revision.max(revision);
                if m.quiet {
                    m.quiet = false;
                    let incarnation = m.value.incarnation.clone();
                    info!(worker, %incarnation, "quiet worker heard again");
                    change(&mut state, worker, incarnation, false);
                }
                return;
            }
            Some(_) => state.live.remove(worker),
            None => None,
        };
        if let Some(old) = replaced {
            lose(&mut state, worker, old, "replaced by a new incarnation");
        }
        info!(worker, incarnation = %value.incarnation, capacity = value.capacity, "worker joined");
        if state.joined.len() < MOST_JOINED {
            state.joined.push((worker.to_owned(), value.clone()));
        }
        state.live.insert(
            worker.to_owned(),
            Member {
                value,
                last_seen: now,
                revision,
                revoked: false,
                quiet: false,
            },
        );
    }

    /// `worker`'s entry was deleted or purged. A leaving worker deletes
    /// its own after its last events: it is lost when the leader has taken
    /// them ([`Roster::left`]), or else when its lease would have expired,
    /// as is a revoked one. Any other deletion (an operator's) is a loss.
    pub fn deleted(&self, worker: &str) {
        let mut state = self.state();
        if state
            .live
            .get(worker)
            .is_some_and(|m| !m.revoked && !m.value.leaving)
            && let Some(old) = state.live.remove(worker)
        {
            lose(&mut state, worker, old, "lease deleted");
        }
    }

    /// This incarnation of `worker` sent its last events and left.
    pub fn left(&self, worker: &str, incarnation: &str) {
        self.lose_incarnation(worker, incarnation, "left");
    }

    /// Loses `worker` if `incarnation` is the live one.
    fn lose_incarnation(&self, worker: &str, incarnation: &str, why: &'static str) {
        let mut state = self.state();
        if state
            .live
            .get(worker)
            .is_some_and(|m| m.value.incarnation == incarnation)
            && let Some(old) = state.live.remove(worker)
        {
            lose(&mut state, worker, old, why);
        }
    }

    /// Workers not seen for half a lease before `now`: name, incarnation,
    /// the revision last seen, and whether a whole lease passed, to be
    /// checked against the bucket before they are declared quiet or lost
    /// ([`watch`]).
    pub fn overdue(&self, now: Instant, lease: Duration) -> Vec<(String, String, u64, bool)> {
        self.state()
            .live
            .iter()
            .filter_map(|(name, m)| {
                let since = now.saturating_duration_since(m.last_seen);
                must_fence(since, lease).then(|| {
                    let lapsed = lost_after(since, lease);
                    (
                        name.clone(),
                        m.value.incarnation.clone(),
                        m.revision,
                        lapsed,
                    )
                })
            })
            .collect()
    }

    /// Declares this incarnation of `worker` quiet: unrenewed for as long
    /// as makes a worker fence itself. Once only, until heard again.
    pub fn hush(&self, worker: &str, incarnation: &str) {
        let mut state = self.state();
        let Some(m) = state.live.get_mut(worker) else {
            return;
        };
        if m.value.incarnation != incarnation || m.quiet {
            return;
        }
        m.quiet = true;
        warn!(
            worker,
            incarnation, "worker quiet for half a lease: its teams are not reported connected"
        );
        change(&mut state, worker, incarnation.to_owned(), true);
    }

    /// Declares this incarnation of `worker` lost: its lease lapsed.
    pub fn expire_one(&self, worker: &str, incarnation: &str) {
        self.lose_incarnation(worker, incarnation, "lease expired");
    }

    /// Declares lost every worker not seen for `lease` before `now`.
    pub fn expire(&self, now: Instant, lease: Duration) {
        let mut state = self.state();
        let expired: Vec<String> = state
            .live
            .iter()
            .filter(|(_, m)| lost_after(now.saturating_duration_since(m.last_seen), lease))
            .map(|(name, _)| name.clone())
            .collect();
        for name in expired {
            if let Some(old) = state.live.remove(&name) {
                lose(&mut state, &name, old, "lease expired");
            }
        }
    }
}

fn change(state: &mut State, worker: &str, incarnation: String, quiet: bool) {
    state.quiet.push(Quiet {
        worker: worker.to_owned(),
        incarnation,
        quiet,
    });
    if let Some(wake) = &state.wake {
        wake.wake();
    }
}

fn lose(state: &mut State, worker: &str, old: Member, why: &'static str) {
    warn!(worker, incarnation = %old.value.incarnation, why, "worker lost");
    state.lost.push(Lost {
        worker: worker.to_owned(),
        incarnation: old.value.incarnation,
        why,
    });
    if let Some(wake) = &state.wake {
        wake.wake();
    }
}

/// Keeps `roster` in step with the workers' bucket, for as long as the
/// process runs: a watch (remade after an error, or after a lease with
/// nothing from it), and an expiry check ten times a lease. A worker the
/// watch has not seen renewed for a lease is read from the bucket first: a
/// watch that stalled (its server lost, a reconnect) must not declare lost
/// a worker that renewed meanwhile, which would then hold its sockets while
/// the teams are opened elsewhere.
pub async fn watch(store: kv::Store, roster: Roster, lease: Duration) {
    let mut check = tokio::time::interval(lease / 10);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut entries = match store.watch_with_history(">").await {
            Ok(entries) => entries,
            Err(error) => {
                warn!(%error, "watching the workers' leases; retrying");
                check.tick().await;
                recheck(&store, &roster, lease).await;
                continue;
            }
        };
        let mut heard = Instant::now();
        loop {
            tokio::select! {
                entry = entries.next() => match entry {
                    Some(Ok(entry)) => {
                        heard = Instant::now();
                        apply(&roster, entry);
                    }
                    Some(Err(error)) => {
                        warn!(%error, "the workers' lease watch failed; remaking it");
                        break;
                    }
                    None => break,
                },
                _ = check.tick() => {
                    recheck(&store, &roster, lease).await;
                    // Live workers renew every quarter lease: a watch
                    // silent for a whole one may have stalled without an
                    // error (its server lost), and would never show a
                    // worker that registers. Remade, it replays the
                    // latest entry of every key.
                    if heard.elapsed() > lease {
                        if !roster.live().is_empty() {
                            warn!("the workers' lease watch went quiet for a lease; remaking it");
                        }
                        break;
                    }
                }
            }
        }
    }
}

/// Reads each overdue worker's entry: renewed since (a newer revision)
/// keeps it; unrenewed, expired or deleted makes it quiet, or loses it
/// once a whole lease passed; no answer decides nothing yet (a leader that
/// cannot read the bucket cannot renew its own lease either, and stops).
async fn recheck(store: &kv::Store, roster: &Roster, lease: Duration) {
    for (name, incarnation, revision, lapsed) in roster.overdue(Instant::now(), lease) {
        match tokio::time::timeout(lease / 10, store.entry(name.as_str())).await {
            Ok(Ok(Some(entry)))
                if entry.operation == kv::Operation::Put && entry.revision > revision =>
            {
                match worker_value(&entry.value) {
                    Some(value) => roster.seen_at(&name, value, entry.revision, Instant::now()),
                    None => roster.expire_one(&name, &incarnation),
                }
            }
            Ok(Ok(_)) if lapsed => roster.expire_one(&name, &incarnation),
            Ok(Ok(_)) => roster.hush(&name, &incarnation),
            Ok(Err(error)) => warn!(%error, worker = %name, "reading an overdue worker's lease"),
            Err(_) => warn!(worker = %name, "reading an overdue worker's lease: no answer"),
        }
    }
}

fn apply(roster: &Roster, entry: kv::Entry) {
    match entry.operation {
        kv::Operation::Put => match worker_value(&entry.value) {
            Some(value) => roster.seen_at(&entry.key, value, entry.revision, Instant::now()),
            None => warn!(worker = %entry.key, "a worker lease that does not read; ignored"),
        },
        kv::Operation::Delete | kv::Operation::Purge => roster.deleted(&entry.key),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(inc: &str) -> WorkerValue {
        WorkerValue {
            incarnation: inc.into(),
            capacity: 10,
            leaving: false,
        }
    }

    #[test]
    fn a_worker_is_lost_by_leaving_restarting_or_expiring_but_not_by_revocation() {
        let roster = Roster::default();
        let t0 = Instant::now();
        let lease = Duration::from_secs(5);
        roster.seen("a", value("1"), t0);
        roster.seen("b", value("1"), t0);
        roster.seen("c", value("1"), t0);
        // A restart: the old incarnation is lost, the new one live.
        roster.seen("a", value("2"), t0);
        assert!(roster.is_live("a", "2") && !roster.is_live("a", "1"));
        // A revoked worker's deletion is no loss; its expiry is.
        roster.revoke("b", "1");
        roster.deleted("b");
        assert!(roster.is_live("b", "1"));
        roster.deleted("c");
        // A leaving worker's deletion waits for its last events.
        roster.seen(
            "d",
            WorkerValue {
                leaving: true,
                ..value("1")
            },
            t0,
        );
        roster.deleted("d");
        assert!(roster.is_live("d", "1"));
        roster.left("d", "1");
        roster.seen("a", value("2"), t0 + lease);
        roster.expire(t0 + lease + Duration::from_millis(1), lease);
        let lost: Vec<_> = roster
            .take_lost()
            .into_iter()
            .map(|l| (l.worker, l.incarnation, l.why))
            .collect();
        assert_eq!(
            lost,
            [
                ("a".into(), "1".into(), "replaced by a new incarnation"),
                ("c".into(), "1".into(), "lease deleted"),
                ("d".into(), "1".into(), "left"),
                ("b".into(), "1".into(), "lease expired"),
            ]
        );
        assert!(roster.is_live("a", "2"));
    }

    #[test]
    fn an_overdue_worker_is_lost_only_once_its_entry_is_known_unrenewed() {
        let roster = Roster::default();
        let t0 = Instant::now();
        let lease = Duration::from_secs(5);
        roster.seen_at("a", value("1"), 7, t0);
        let later = t0 + lease + Duration::from_millis(1);
        assert_eq!(
            roster.overdue(later, lease),
            [("a".into(), "1".into(), 7, true)]
        );
        assert!(roster.is_live("a", "1"), "overdue is not lost yet");
        // The bucket shows a renewal the watch missed: alive again.
        roster.seen_at("a", value("1"), 9, later);
        assert!(roster.overdue(later, lease).is_empty());
        // Unrenewed: lost, once; another incarnation's expiry is not its.
        roster.expire_one("a", "0");
        assert!(roster.is_live("a", "1"));
        roster.expire_one("a", "1");
        roster.expire_one("a", "1");
        assert_eq!(roster.take_lost().len(), 1);
        assert!(!roster.is_live("a", "1"));
        // A remade watch replays the lost worker's last entry: it stays
        // lost. Its next incarnation's entry is a join.
        roster.seen_at("a", value("1"), 9, later);
        assert!(
            !roster.is_live("a", "1"),
            "a replay brought a lost worker back"
        );
        roster.seen_at("a", value("2"), 12, later);
        assert!(roster.is_live("a", "2"));
    }

    #[test]
    fn a_worker_unrenewed_for_half_a_lease_is_quiet_until_heard_or_lost() {
        let roster = Roster::default();
        let t0 = Instant::now();
        let lease = Duration::from_secs(4);
        roster.seen_at("a", value("1"), 7, t0);
        roster.seen_at("b", value("1"), 8, t0);
        let _ = roster.take_joined();
        let placeable = |roster: &Roster| {
            let mut names = Vec::new();
            roster.each_live(|name, _| names.push(name.to_owned()));
            names
        };
        // Half a lease is not yet overdue; a moment past it is, not lapsed.
        assert!(roster.overdue(t0 + lease / 2, lease).is_empty());
        let half = t0 + lease / 2 + Duration::from_millis(1);
        roster.seen_at("b", value("1"), 9, half);
        assert_eq!(
            roster.overdue(half, lease),
            [("a".into(), "1".into(), 7, false)]
        );
        // Quiet once, only its live incarnation; still live, takes nothing.
        roster.hush("a", "0");
        roster.hush("a", "1");
        roster.hush("a", "1");
        let quiet = |quiet| Quiet {
            worker: "a".into(),
            incarnation: "1".into(),
            quiet,
        };
        assert_eq!(roster.take_quiet(), [quiet(true)]);
        assert!(roster.is_live("a", "1"));
        assert_eq!(placeable(&roster), ["b"]);
        // A replayed entry does not wake it; a renewal does, once.
        roster.seen_at("a", value("1"), 7, half);
        assert!(roster.take_quiet().is_empty());
        roster.seen_at("a", value("1"), 10, half);
        roster.seen_at("a", value("1"), 11, half);
        assert_eq!(roster.take_quiet(), [quiet(false)]);
        assert_eq!(placeable(&roster), ["a", "b"]);
        // Quiet again, then lost: the loss says the rest.
        roster.hush("a", "1");
        roster.expire_one("a", "1");
        assert_eq!(roster.take_quiet(), [quiet(true)]);
        assert_eq!(roster.take_lost().len(), 1);
    }

    #[test]
    fn a_replayed_entry_is_no_renewal() {
        let roster = Roster::default();
        let t0 = Instant::now();
        let lease = Duration::from_secs(5);
        roster.seen_at("a", value("1"), 7, t0);
        let later = t0 + lease + Duration::from_millis(1);
        roster.seen_at("a", value("1"), 7, later);
        assert_eq!(
            roster.overdue(later, lease).len(),
            1,
            "the replay refreshed it"
        );
    }
}
