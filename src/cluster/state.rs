//! The leader's saved teams (counts, joins) in JetStream KV, so that a
//! standby on another machine resumes from them: the state file stays
//! the leader's own, and this is its copy where every core reaches it.
//!
//! Teams are kept in [`CHUNKS`] keys per Global URL (`<fingerprint of the
//! URL>.chunk.<n>`, a team in chunk `id % CHUNKS`: counts belong to one
//! Global API, as the state file's do), each holding every team of its chunk: a hand-over
//! rewrites only the chunks with a changed team, at most once per
//! [`MIRROR_EVERY`], from a task of its own (the driver never waits on it;
//! a chunk that cannot be sent yet stays marked and goes with the next).
//! Counts only grow, so a restore that meets a team in the file and in the
//! bucket keeps the larger ([`crate::persistence::merge`]). A takeover loses at most what arrived after the
//! last copy, on top of what the takeover itself loses (docs/CLUSTER.md).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tracing::warn;

use super::ClusterError;
use crate::core::SavedTeam;
use crate::persistence::Mirror;

/// Keys the teams are spread over.
pub const CHUNKS: u64 = 256;

/// How often changed chunks are copied, at most.
pub const MIRROR_EVERY: Duration = Duration::from_secs(1);

/// Copies waiting for the writer task: past this the driver keeps the
/// chunks marked and sends them later (the newest copy supersedes).
const QUEUED: usize = 2;

enum Job {
    Put(Vec<(String, Bytes)>),
    /// Answer once every put before it is done.
    Drained(std_mpsc::Sender<()>),
}

/// The copy in KV, as the persistence sidecar's mirror.
pub struct KvState {
    prefix: String,
    chunks: BTreeMap<u64, BTreeMap<u64, SavedTeam>>,
    dirty: BTreeSet<u64>,
    last: Option<Instant>,
    jobs: mpsc::Sender<Job>,
}

impl KvState {
    /// Starts the writer task on `runtime`, with the teams already in the
    /// bucket (`loaded`) as its starting copy.
    pub fn start(
        store: kv::Store,
        runtime: &Handle,
        global_url: &str,
        loaded: &[SavedTeam],
    ) -> KvState {
        let (jobs, queue) = mpsc::channel(QUEUED);
        runtime.spawn(write(store, queue));
        let mut state = KvState {
            prefix: prefix(global_url),
            chunks: BTreeMap::new(),
            dirty: BTreeSet::new(),
            last: None,
            jobs,
        };
        state.note(loaded);
        state.dirty.clear();
        state
    }

    fn note(&mut self, teams: &[SavedTeam]) {
        for team in teams {
            let chunk = team.id.0 % CHUNKS;
            self.chunks
                .entry(chunk)
                .or_default()
                .insert(team.id.0, team.clone());
            self.dirty.insert(chunk);
        }
    }

    /// Hands the marked chunks to the writer if it has room.
    fn send(&mut self) {
        if self.dirty.is_empty() {
            return;
        }
        let puts = self
            .dirty
            .iter()
            .map(|chunk| {
                let teams: Vec<&SavedTeam> = self.chunks[chunk].values().collect();
                let value = serde_json::to_vec(&teams).unwrap_or_default();
                (format!("{}{chunk}", self.prefix), Bytes::from(value))
            })
            .collect();
        if self.jobs.try_send(Job::Put(puts)).is_ok() {
            self.dirty.clear();
            self.last = Some(Instant::now());
        }
    }
}

impl Mirror for KvState {
    fn update(&mut self, changed: &[SavedTeam]) {
        self.note(changed);
        if self.last.is_none_or(|last| last.elapsed() >= MIRROR_EVERY) {
            self.send();
        }
    }

    fn flush(&mut self, deadline: Instant) {
        while !self.dirty.is_empty() && Instant::now() < deadline {
            self.send();
            if !self.dirty.is_empty() {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let (done, drained) = std_mpsc::channel();
        let mut job = Job::Drained(done);
        loop {
            match self.jobs.try_send(job) {
                Ok(()) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let _ = drained.recv_timeout(left);
                    return;
                }
                Err(mpsc::error::TrySendError::Full(back)) if Instant::now() < deadline => {
                    job = back;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(_) => return,
            }
        }
    }
}

async fn write(store: kv::Store, mut jobs: mpsc::Receiver<Job>) {
    // Chunks whose copy failed, each with its newest value: a chunk whose
    // teams stop changing would otherwise stay stale in the bucket for good.
    let mut unsent: BTreeMap<String, Bytes> = BTreeMap::new();
    loop {
        let job = if unsent.is_empty() {
            jobs.recv().await
        } else {
            match tokio::time::timeout(MIRROR_EVERY, jobs.recv()).await {
                Ok(job) => job,
                Err(_) => Some(Job::Put(Vec::new())),
            }
        };
        let Some(job) = job else { return };
        match job {
            Job::Put(puts) => {
                unsent.extend(puts);
                put_all(&store, &mut unsent).await;
            }
            Job::Drained(done) => {
                put_all(&store, &mut unsent).await;
                let _ = done.send(());
            }
        }
    }
}

/// Copies the `unsent` chunks, stopping at the first failure (NATS is then
/// down or electing: the rest would fail too, each after its timeout);
/// what is left stays for the next round.
async fn put_all(store: &kv::Store, unsent: &mut BTreeMap<String, Bytes>) {
    let total = unsent.len();
    while let Some((key, value)) = unsent.pop_first() {
        if let Err(error) = store.put(&key, value.clone()).await {
            unsent.insert(key, value);
            warn!(%error, left = unsent.len(), of = total, "copying the saved teams to the cluster; trying again");
            return;
        }
    }
}

/// The keys of `global_url`'s teams start with this.
fn prefix(global_url: &str) -> String {
    format!(
        "{:016x}.chunk.",
        crate::fnv::fnv1a_64(global_url.as_bytes())
    )
}

/// Every team the bucket holds for `global_url`.
///
/// Tries [`LOAD_ATTEMPTS`] times, a second apart: a NATS cluster that just
/// lost a server may take seconds to elect the bucket's new leader, and a
/// core that has just taken the lead must not give it up for that.
pub async fn load(store: &kv::Store, global_url: &str) -> Result<Vec<SavedTeam>, ClusterError> {
    let mut attempt = 1;
    loop {
        match load_once(store, global_url).await {
            Ok(teams) => return Ok(teams),
            Err(error) if attempt < LOAD_ATTEMPTS => {
                warn!(%error, attempt, "reading the saved teams; trying again");
                tokio::time::sleep(Duration::from_secs(1)).await;
                attempt += 1;
            }
            Err(error) => return Err(error),
        }
    }
}

/// How many times [`load`] tries.
pub const LOAD_ATTEMPTS: u32 = 15;

async fn load_once(store: &kv::Store, global_url: &str) -> Result<Vec<SavedTeam>, ClusterError> {
    let prefix = prefix(global_url);
    let failed = |e: String| ClusterError::JetStream(format!("reading the saved teams: {e}"));
    let mut keys = store.keys().await.map_err(|e| failed(e.to_string()))?;
    let mut teams = Vec::new();
    while let Some(key) = keys.next().await {
        let key = key.map_err(|e| failed(e.to_string()))?;
        if !key.starts_with(&prefix) {
            continue;
        }
        let Some(value) = store.get(&key).await.map_err(|e| failed(e.to_string()))? else {
            continue;
        };
        let chunk: Vec<SavedTeam> =
            serde_json::from_slice(&value).map_err(|e| failed(format!("{key}: {e}")))?;
        teams.extend(chunk);
    }
    teams.sort_by_key(|t| t.id);
    Ok(teams)
}

#[cfg(test)]
mod tests {
    use crate::core::SavedTeam;
    use crate::persistence::merge;
    use crate::protocol::TeamId;

    fn team(id: u64, m: u64, joined: bool) -> SavedTeam {
        SavedTeam {
            id: TeamId(id),
            joined,
            message_count: m,
            props_count: m / 5,
            socket: None,
            unreported: Vec::new(),
        }
    }

    #[test]
    fn a_merge_keeps_each_team_once_with_its_larger_count() {
        let file = vec![team(1, 10, true), team(2, 50, false)];
        let bucket = vec![team(2, 40, true), team(3, 7, true), team(1, 12, false)];
        assert_eq!(
            merge(file, bucket),
            [team(1, 12, false), team(2, 50, false), team(3, 7, true)]
        );
    }
}
