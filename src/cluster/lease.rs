//! Leases in JetStream KV, one mechanism for two uses.
//!
//! A lease is a key in a bucket whose max age is the lease: an entry not
//! renewed within it expires on the server, whoever held it. It is renewed
//! by a revision-checked update, so a holder whose entry was replaced (a
//! takeover) or deleted (a revocation) learns it on its next renewal and
//! stops at once.
//!
//! - The leader's: key `leader` in `<cluster>_leader`, taken by `create`
//!   (which succeeds only when no live entry exists). The revision of that
//!   create is the leader's **epoch**: JetStream revisions only grow, so
//!   every takeover has a larger one, and a worker obeys only the largest
//!   it has seen.
//! - A worker's: key `<name>` in `<cluster>_workers`, its value the
//!   worker's incarnation and capacity, written by `put` (a restarted
//!   worker replaces the dead one's entry; the dead one, were it alive,
//!   fails its next renewal and fences itself).

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{ClusterConfig, ClusterError};

/// A worker whose lease was last renewed `since` ago fences itself: from
/// half a lease it closes every socket with a close handshake (so nothing
/// the server wrote is left unread), and drops any still open at
/// [`fence_deadline`].
pub fn must_fence(since: Duration, lease: Duration) -> bool {
    since > lease / 2
}

/// How long after its last renewal a fencing worker's sockets are all
/// ended: five eighths of a lease, an eighth before the leader may declare
/// it lost ([`lost_after`]) however late (below a quarter lease) it heard
/// of that renewal.
pub fn fence_deadline(lease: Duration) -> Duration {
    lease * 5 / 8
}

/// How long a worker that finds its fence's deadline already past (a
/// process woken from `SIGSTOP`) still gives its sockets to close with a
/// handshake: a sixteenth of a lease, so that what its kernel buffered
/// while it was stopped is read and reported, not dropped. Woken just past
/// the deadline, it is done by eleven sixteenths, still before the leader
/// may declare it lost; woken later, the leader may have reopened its
/// teams already (the kernel kept both sockets open meanwhile), and this
/// adds at most a sixteenth to that.
pub fn woken_close(lease: Duration) -> Duration {
    lease / 16
}

/// The leader declares a worker lost once it has seen no renewal of its
/// lease for `since`: a whole lease.
pub fn lost_after(since: Duration, lease: Duration) -> bool {
    since > lease
}

/// The leader lease's key.
const LEADER_KEY: &str = "leader";

/// The cluster's two buckets.
#[derive(Clone, Debug)]
pub struct Buckets {
    /// The leader lease.
    pub leader: kv::Store,
    /// The workers' leases.
    pub workers: kv::Store,
    /// The leader's saved teams ([`super::state`]); entries never expire.
    pub state: kv::Store,
}

/// Opens the buckets, creating them when absent (the leases' with the
/// lease as their max age; a bucket that exists keeps its own, which every process then
/// reads back as the lease).
pub async fn buckets(
    js: &jetstream::Context,
    config: &ClusterConfig,
) -> Result<(Buckets, Duration), ClusterError> {
    // Replicated on up to three servers of a NATS cluster, so that the
    // leases and the saved counts outlive one lost server: the servers
    // are those `--cluster` names, or the one reached and those it tells
    // of, whichever are more.
    let told = 1 + js.client().server_info().connect_urls.len();
    let replicas = config.servers().len().max(told).min(3);
    let leader = bucket(js, config.leader_bucket(), config.lease, replicas).await?;
    let workers = bucket(js, config.workers_bucket(), config.lease, replicas).await?;
    let state = bucket(js, config.state_bucket(), Duration::ZERO, replicas).await?;
    let lease = leader
        .status()
        .await
        .map(|s| s.max_age())
        .unwrap_or(config.lease);
    if lease != config.lease {
        tracing::warn!(
            bucket_ms = lease.as_millis() as u64,
            asked_ms = config.lease.as_millis() as u64,
            "the cluster's lease is its bucket's, not the one asked for"
        );
    }
    Ok((
        Buckets {
            leader,
            workers,
            state,
        },
        lease,
    ))
}

/// Tries to reach or make a bucket this often before giving up: a NATS
/// cluster electing its leaders, or several processes making replicated
/// buckets at once, can take several seconds.
const BUCKET_ATTEMPTS: u32 = 15;

async fn bucket(
    js: &jetstream::Context,
    name: String,
    max_age: Duration,
    replicas: usize,
) -> Result<kv::Store, ClusterError> {
    let mut attempt = 1;
    loop {
        match try_bucket(js, &name, max_age, replicas).await {
            Ok(store) => return Ok(store),
            Err(error) if attempt < BUCKET_ATTEMPTS => {
                tracing::warn!(%error, attempt, "the cluster's bucket; trying again");
                tokio::time::sleep(Duration::from_secs(1)).await;
                attempt += 1;
            }
            Err(error) => return Err(error),
        }
    }
}

async fn try_bucket(
    js: &jetstream::Context,
    name: &str,
    max_age: Duration,
    replicas: usize,
) -> Result<kv::Store, ClusterError> {
    if let Ok(store) = js.get_key_value(name).await {
        return Ok(store);
    }
    // The bucket's stream as `create_key_value` would make it, made
    // directly: async-nats 0.51's `create_key_value` first reads the
    // account's info and fails on the reply of a nats-server before 2.10
    // (Debian's 2.9), which lacks the `reserved_*` fields it requires.
    js.get_or_create_stream(jetstream::stream::Config {
        name: format!("KV_{name}"),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: 1,
        max_age,
        storage: jetstream::stream::StorageType::File,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: jetstream::stream::DiscardPolicy::New,
        num_replicas: replicas,
        ..Default::default()
    })
    .await
    .map_err(|e| ClusterError::JetStream(format!("bucket {name}: {e}")))?;
    tracing::info!(bucket = %name, replicas, "created");
    js.get_key_value(name)
        .await
        .map_err(|e| ClusterError::JetStream(format!("bucket {name}: {e}")))
}

/// Why a renewal failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenewError {
    /// Someone else's entry replaced ours, or ours was deleted: the lease
    /// is lost for good.
    #[error("the lease was taken or revoked")]
    Lost,
    /// No answer: try again (the lease may still be ours).
    #[error("no answer: {0}")]
    Unreachable(String),
}

fn renew_error(error: kv::UpdateError) -> RenewError {
    match error.kind() {
        kv::UpdateErrorKind::WrongLastRevision => RenewError::Lost,
        _ => RenewError::Unreachable(error.to_string()),
    }
}

/// What the leader's entry says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderValue {
    /// Who holds it (`host:pid` unless named).
    pub holder: String,
    /// The epoch (0 in the entry that took the lease: the epoch is that
    /// entry's revision, known only once written).
    pub epoch: u64,
    /// Team sockets per worker, as of the last renewal.
    #[serde(default)]
    pub loads: BTreeMap<String, usize>,
    /// The leader's run ended with Global's `goodbye`: the standbys end
    /// too, and the entry is left to expire (a core started after that
    /// leads anew).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ended: bool,
}

/// The leader lease, held.
#[derive(Debug)]
pub struct LeaderLease {
    store: kv::Store,
    holder: String,
    /// The fencing token.
    pub epoch: u64,
    revision: u64,
}

/// Takes the leader lease if nobody holds it; `None` if somebody does.
pub async fn try_lead(
    store: &kv::Store,
    holder: &str,
) -> Result<Option<LeaderLease>, ClusterError> {
    let value = LeaderValue {
        holder: holder.to_owned(),
        epoch: 0,
        loads: BTreeMap::new(),
        ended: false,
    };
    match store.create(LEADER_KEY, to_bytes(&value)).await {
        Ok(revision) => Ok(Some(LeaderLease {
            store: store.clone(),
            holder: holder.to_owned(),
            epoch: revision,
            revision,
        })),
        Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(None),
        Err(e) => Err(ClusterError::JetStream(e.to_string())),
    }
}

/// Who leads now, if anyone: the entry's holder and epoch.
pub async fn current_leader(store: &kv::Store) -> Result<Option<LeaderValue>, ClusterError> {
    let entry = store
        .entry(LEADER_KEY)
        .await
        .map_err(|e| ClusterError::JetStream(e.to_string()))?;
    Ok(entry.and_then(|entry| {
        if entry.operation != kv::Operation::Put {
            return None;
        }
        let mut value: LeaderValue = serde_json::from_slice(&entry.value).ok()?;
        if value.epoch == 0 {
            value.epoch = entry.revision;
        }
        Some(value)
    }))
}

impl LeaderLease {
    /// Renews the lease (revision-checked), with the current `loads`.
    pub async fn renew(&mut self, loads: BTreeMap<String, usize>) -> Result<(), RenewError> {
        let value = LeaderValue {
            holder: self.holder.clone(),
            epoch: self.epoch,
            loads,
            ended: false,
        };
        self.revision = self
            .store
            .update(LEADER_KEY, to_bytes(&value), self.revision)
            .await
            .map_err(renew_error)?;
        Ok(())
    }

    /// Marks the run ended (Global said `goodbye`), revision-checked, and
    /// keeps the lease until it expires: a standby that reads the mark
    /// ends too, rather than lead a run that is over.
    pub async fn end(self) {
        let value = LeaderValue {
            holder: self.holder.clone(),
            epoch: self.epoch,
            loads: BTreeMap::new(),
            ended: true,
        };
        let _ = self
            .store
            .update(LEADER_KEY, to_bytes(&value), self.revision)
            .await;
    }

    /// Gives the lease up (at a clean exit), so a standby need not wait
    /// for it to expire. Only if still ours.
    pub async fn release(self) {
        // A delete is not revision-checked; an update to an empty holder
        // that is would still block `create`. Purge only if still ours.
        if let Ok(Some(entry)) = self.store.entry(LEADER_KEY).await
            && entry.revision == self.revision
        {
            let _ = self.store.purge(LEADER_KEY).await;
        }
    }
}

/// The key a standby announces itself under (its holder name, made a
/// valid key), in the leader's bucket: it expires a lease after the
/// standby stops renewing it.
pub fn standby_key(holder: &str) -> String {
    let name: String = holder
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("standby.{name}")
}

/// What a worker's entry says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerValue {
    /// This run of the worker: a new one after a restart or a fence.
    pub incarnation: String,
    /// Most sockets it takes.
    pub capacity: usize,
    /// It is handing its teams over before it exits: place nothing new on
    /// it.
    #[serde(default)]
    pub leaving: bool,
}

/// A worker's lease, held.
#[derive(Debug)]
pub struct WorkerLease {
    store: kv::Store,
    name: String,
    /// What it says.
    pub value: WorkerValue,
    revision: u64,
}

impl WorkerLease {
    /// Registers (or re-registers) the worker `name` with `value`.
    pub async fn register(
        store: &kv::Store,
        name: &str,
        value: WorkerValue,
    ) -> Result<WorkerLease, RenewError> {
        let revision = store
            .put(name, to_bytes(&value))
            .await
            .map_err(|e| RenewError::Unreachable(e.to_string()))?;
        Ok(WorkerLease {
            store: store.clone(),
            name: name.to_owned(),
            value,
            revision,
        })
    }

    /// Renews it (revision-checked).
    pub async fn renew(&mut self) -> Result<(), RenewError> {
        self.revision = self
            .store
            .update(&self.name, to_bytes(&self.value), self.revision)
            .await
            .map_err(renew_error)?;
        Ok(())
    }

    /// Deletes it: the worker holds no socket any more.
    pub async fn release(self) -> Result<(), RenewError> {
        self.store
            .delete(&self.name)
            .await
            .map_err(|e| RenewError::Unreachable(e.to_string()))
    }
}

fn to_bytes(value: &impl Serialize) -> Bytes {
    // Serialising these plain structs cannot fail.
    Bytes::from(serde_json::to_vec(value).unwrap_or_default())
}

/// A worker's entry read back; `None` if it is not one.
pub fn worker_value(bytes: &[u8]) -> Option<WorkerValue> {
    serde_json::from_slice(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        // Failures are kept as named tests, not files beside the sources.
        #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

        /// Break before make, over random histories: a worker renews every
        /// quarter lease; each renewal reaches the server, then the worker
        /// (its answer) and the leader (its watch) after delays below a
        /// quarter lease each; renewals fail while it is cut off. Whenever
        /// the leader declares it lost, every socket of the worker has
        /// already ended (closed, or dropped at the fence's deadline).
        #[test]
        fn a_worker_fences_before_the_leader_declares_it_lost(
            lease_ms in 400u64..10_000,
            history in proptest::collection::vec((any::<bool>(), 0.0f64..1.0, 0.0f64..1.0), 1..200),
        ) {
            let lease = Duration::from_millis(lease_ms);
            let every = lease / 4;
            let (mut worker_ok, mut leader_seen) = (Duration::ZERO, Duration::ZERO);
            let mut fenced_at: Option<Duration> = None;
            let mut ended_at: Option<Duration> = None;
            let mut t = Duration::ZERO;
            for (cut_off, answer, watch) in history {
                // Between renewals, check both rules at a fine grain.
                let next = t + every;
                let mut now = t;
                while now < next {
                    if fenced_at.is_none() && must_fence(now.saturating_sub(worker_ok), lease) {
                        fenced_at = Some(now);
                    }
                    if ended_at.is_none() && fenced_at.is_some()
                        && now.saturating_sub(worker_ok) >= fence_deadline(lease) {
                        ended_at = Some(now);
                    }
                    if lost_after(now.saturating_sub(leader_seen), lease) {
                        prop_assert!(ended_at.is_some_and(|f| f <= now),
                            "declared lost at {now:?}, worker's sockets ended at {ended_at:?}");
                        return Ok(());
                    }
                    now += Duration::from_millis(5);
                }
                t = next;
                if !cut_off && fenced_at.is_none() {
                    // Written at t; heard by each side a little later.
                    worker_ok = worker_ok.max(t + every.mul_f64(answer));
                    leader_seen = leader_seen.max(t + every.mul_f64(watch));
                }
            }
        }
    }
}
