//! What `switchboard status --cluster` shows: the cluster as its buckets
//! hold it (the leader lease, the standbys' announcements, the workers'
//! leases), read without creating or changing anything.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, kv};
use futures_util::StreamExt;

use super::lease::{LeaderValue, WorkerValue, worker_value};
use super::{ClusterConfig, ClusterError};

/// The cluster, as read.
#[derive(Clone, Debug, Default)]
pub struct ClusterStatus {
    /// The lease, as the leader bucket keeps it.
    pub lease: Option<Duration>,
    /// The leader, and how long ago it renewed its lease.
    pub leader: Option<(LeaderValue, Duration)>,
    /// Standbys by holder, and how long ago each announced itself.
    pub standbys: Vec<(String, Duration)>,
    /// Workers by name, and how long ago each renewed its lease.
    pub workers: Vec<(String, WorkerValue, Duration)>,
}

fn age(entry: &kv::Entry) -> Duration {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128);
    let nanos = now.saturating_sub(entry.created.unix_timestamp_nanos());
    Duration::from_nanos(u64::try_from(nanos.max(0)).unwrap_or(u64::MAX))
}

/// Reads the cluster's buckets; a bucket that does not exist is empty.
pub async fn read(
    js: &jetstream::Context,
    config: &ClusterConfig,
) -> Result<ClusterStatus, ClusterError> {
    let mut status = ClusterStatus::default();
    if let Ok(store) = js.get_key_value(config.leader_bucket()).await {
        status.lease = store.status().await.ok().map(|s| s.max_age());
        for entry in entries(&store).await? {
            if entry.key == "leader" {
                if let Ok(mut value) = serde_json::from_slice::<LeaderValue>(&entry.value) {
                    if value.epoch == 0 {
                        value.epoch = entry.revision;
                    }
                    status.leader = Some((value, age(&entry)));
                }
            } else if entry.key.starts_with("standby.") {
                let holder = String::from_utf8_lossy(&entry.value).into_owned();
                status.standbys.push((holder, age(&entry)));
            }
        }
    }
    if let Ok(store) = js.get_key_value(config.workers_bucket()).await {
        for entry in entries(&store).await? {
            if let Some(value) = worker_value(&entry.value) {
                status.workers.push((entry.key.clone(), value, age(&entry)));
            }
        }
    }
    Ok(status)
}

/// The live entries (puts) of a bucket.
async fn entries(store: &kv::Store) -> Result<Vec<kv::Entry>, ClusterError> {
    let failed = |e: String| ClusterError::JetStream(format!("reading {}: {e}", store.name));
    let mut keys = store.keys().await.map_err(|e| failed(e.to_string()))?;
    let mut entries = Vec::new();
    while let Some(key) = keys.next().await {
        let key = key.map_err(|e| failed(e.to_string()))?;
        if let Some(entry) = store.entry(&key).await.map_err(|e| failed(e.to_string()))?
            && entry.operation == kv::Operation::Put
        {
            entries.push(entry);
        }
    }
    Ok(entries)
}

impl ClusterStatus {
    /// The text `status` prints: one line per process.
    pub fn text(&self) -> String {
        let ms = |d: &Duration| d.as_millis();
        let mut out = String::new();
        match &self.leader {
            Some((leader, age)) => out.push_str(&format!(
                "leader   {}  epoch {}  renewed {} ms ago  (lease {} ms)\n",
                leader.holder,
                leader.epoch,
                ms(age),
                self.lease.map_or(0, |l| l.as_millis())
            )),
            None => out.push_str("leader   none\n"),
        }
        for (holder, age) in &self.standbys {
            out.push_str(&format!("standby  {holder}  seen {} ms ago\n", ms(age)));
        }
        for (name, worker, age) in &self.workers {
            let teams = self
                .leader
                .as_ref()
                .and_then(|(l, _)| l.loads.get(name))
                .map_or("?".to_owned(), usize::to_string);
            out.push_str(&format!(
                "worker   {name}  teams {teams}  capacity {}  renewed {} ms ago{}\n",
                worker.capacity,
                ms(age),
                if worker.leaving { "  leaving" } else { "" }
            ));
        }
        out
    }
}
