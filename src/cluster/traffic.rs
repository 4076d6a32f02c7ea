//! What crosses NATS between the leader and its workers, as the leader
//! counts it: batches and bytes each way, and the hop from a worker taking
//! an event off its sockets to the leader's inbox (the core counts it at
//! its next step). Atomics, written by the ingress and publisher tasks and
//! read at scrape time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Upper bounds of the hop histogram's buckets, µs (the last bucket is
/// everything above). A worker batches per tick (10 ms by default), so
/// most hops wait part of one.
pub const HOP_BOUNDS_US: [u64; 14] = [
    250, 500, 1_000, 2_000, 5_000, 10_000, 15_000, 20_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 5_000_000,
];

/// The leader's NATS traffic. Shared; cheap to read.
#[derive(Debug, Default)]
pub struct Traffic {
    /// Event batches taken from workers (any epoch, any worker).
    pub event_batches: AtomicU64,
    /// Their bytes.
    pub event_bytes: AtomicU64,
    /// Command batches published to workers.
    pub command_batches: AtomicU64,
    /// Their bytes.
    pub command_bytes: AtomicU64,
    hop: [AtomicU64; HOP_BOUNDS_US.len() + 1],
    hop_sum_us: AtomicU64,
}

/// The hop histogram as read: per-bucket counts (not cumulative) and the
/// sum, µs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hops {
    /// Hops within each bound of [`HOP_BOUNDS_US`], then above them all.
    pub buckets: Vec<u64>,
    /// Sum of all hops, µs.
    pub sum_us: u64,
}

impl Traffic {
    /// An event batch of `bytes` arrived.
    pub fn event_batch(&self, bytes: usize) {
        self.event_batches.fetch_add(1, Ordering::Relaxed);
        self.event_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// A command batch of `bytes` was published.
    pub fn command_batch(&self, bytes: usize) {
        self.command_batches.fetch_add(1, Ordering::Relaxed);
        self.command_bytes
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// A batch whose oldest event was read at `read_at_us` (the worker's
    /// clock) reached the inbox now (this clock). A clock behind the
    /// worker's counts as 0.
    pub fn hop_from(&self, read_at_us: u64) {
        if read_at_us == 0 {
            return;
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        self.observe_hop(now.saturating_sub(read_at_us));
    }

    fn observe_hop(&self, us: u64) {
        let i = HOP_BOUNDS_US.partition_point(|&b| b < us);
        self.hop[i].fetch_add(1, Ordering::Relaxed);
        self.hop_sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// The hop histogram now.
    pub fn hops(&self) -> Hops {
        Hops {
            buckets: self.hop.iter().map(|b| b.load(Ordering::Relaxed)).collect(),
            sum_us: self.hop_sum_us.load(Ordering::Relaxed),
        }
    }
}

impl Hops {
    /// Hops recorded.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// The bucket bound under which a `q` share of hops fell (µs; `None`
    /// with no hops, or above the last bound).
    pub fn quantile_bound_us(&self, q: f64) -> Option<u64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let want = (q * total as f64).ceil() as u64;
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= want.max(1) {
                return HOP_BOUNDS_US.get(i).copied();
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hops_fall_in_their_buckets_and_quantiles_read_back() {
        let t = Traffic::default();
        for us in [
            100, 600, 700, 3_000, 9_000, 9_500, 12_000, 40_000, 40_000, 9_000_000,
        ] {
            t.observe_hop(us);
        }
        let h = t.hops();
        assert_eq!(h.count(), 10);
        assert_eq!(h.buckets[0], 1);
        assert_eq!(h.buckets[2], 2);
        assert_eq!(*h.buckets.last().expect("overflow"), 1);
        assert_eq!(h.quantile_bound_us(0.5), Some(10_000));
        assert_eq!(h.quantile_bound_us(0.9), Some(50_000));
        assert_eq!(h.quantile_bound_us(1.0), None, "above every bound");
        assert_eq!(Hops::default().quantile_bound_us(0.5), None);
        t.hop_from(0);
        assert_eq!(t.hops().count(), 10, "an unknown read time is not a hop");
    }
}
