//! The publisher's counters, shared between its task and whoever watches
//! it (the CLI's final line, `/metrics`, the tests). Each is written by the
//! task only, but `budget`, set once before the task starts.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use serde::Serialize;

/// The live counters.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub messages_taken: AtomicU64,
    pub events_taken: AtomicU64,
    pub stored: AtomicU64,
    pub duplicates: AtomicU64,
    pub found_stored: AtomicU64,
    pub failed_attempts: AtomicU64,
    pub waiting: AtomicU64,
    pub buffer_peak: AtomicU64,
    pub buffer_used: AtomicU64,
    pub alarms_logged: AtomicU64,
    pub stream_ready: AtomicBool,
    pub budget: AtomicU64,
}

impl Counters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn set(counter: &AtomicU64, n: u64) {
        counter.store(n, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> PublishStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        PublishStats {
            messages_taken: get(&self.messages_taken),
            events_taken: get(&self.events_taken),
            stored: get(&self.stored),
            duplicates: get(&self.duplicates),
            found_stored: get(&self.found_stored),
            failed_attempts: get(&self.failed_attempts),
            waiting: get(&self.waiting),
            buffer_peak: get(&self.buffer_peak),
            buffer_used: get(&self.buffer_used),
            buffer_budget: get(&self.budget),
            alarms_logged: get(&self.alarms_logged),
            stream_ready: self.stream_ready.load(Ordering::Relaxed),
        }
    }
}

/// The publisher's numbers at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PublishStats {
    /// Messages taken from the tap.
    pub messages_taken: u64,
    /// Lifecycle events taken from the tap.
    pub events_taken: u64,
    /// Records JetStream stored (acknowledged as new).
    pub stored: u64,
    /// Retried records JetStream acknowledged as duplicates (an earlier
    /// attempt had been stored; the duplicate window dropped this one).
    pub duplicates: u64,
    /// Retried records found already stored by asking the stream, so not
    /// published again.
    pub found_stored: u64,
    /// Publish attempts that failed (each was retried).
    pub failed_attempts: u64,
    /// Records not yet acknowledged.
    pub waiting: u64,
    /// The most budget bytes seen in use (sampled before every release).
    pub buffer_peak: u64,
    /// Budget bytes in use when last sampled.
    pub buffer_used: u64,
    /// The budget.
    pub buffer_budget: u64,
    /// Warnings logged about NATS or the buffer (they are rate-limited).
    pub alarms_logged: u64,
    /// Whether the stream was last known to exist.
    pub stream_ready: bool,
}

/// A cheap, cloneable view of a running publisher's numbers (for
/// `/metrics`): it holds no part of the tap, so it never keeps a run open.
#[derive(Clone, Debug)]
pub struct PublishWatch(pub(crate) std::sync::Arc<Counters>);

impl PublishWatch {
    /// The numbers now.
    pub fn stats(&self) -> PublishStats {
        self.0.snapshot()
    }
}

impl PublishStats {
    /// Records taken from the tap.
    pub fn taken(&self) -> u64 {
        self.messages_taken + self.events_taken
    }

    /// Records acknowledged one way or another: each taken record ends
    /// here exactly once.
    pub fn done(&self) -> u64 {
        self.stored + self.duplicates + self.found_stored
    }
}
