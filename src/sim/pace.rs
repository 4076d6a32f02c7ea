//! How fast a team socket writes: credit accrues at the scenario's rate and
//! is paid out in whole messages once per write tick, at most a batch at a
//! time. The batch bounds the fastest rate a scenario may ask for.

use std::time::{Duration, Instant};

/// How often a team socket writes what is due.
pub(crate) const WRITE_TICK: Duration = Duration::from_millis(10);

/// Most messages one socket writes per tick: a stalled task catches up at
/// most this much, and no rate can make one batch unbounded.
const MAX_BATCH: u64 = 1000;

/// The fastest rate a socket can keep, messages per second.
pub fn max_rate() -> f64 {
    MAX_BATCH as f64 / WRITE_TICK.as_secs_f64()
}

/// One socket's write credit.
pub(crate) struct Pace {
    credit: f64,
    last: Instant,
}

impl Pace {
    /// No credit yet, accruing from `now`.
    pub fn new(now: Instant) -> Pace {
        Pace {
            credit: 0.0,
            last: now,
        }
    }

    /// Whole messages due at `rate` per second since the last call (at most
    /// a batch), paid out of the credit.
    pub fn due(&mut self, rate: f64, now: Instant) -> u64 {
        self.credit += rate * now.duration_since(self.last).as_secs_f64();
        self.credit = self.credit.min(MAX_BATCH as f64);
        self.last = now;
        let due = self.credit.floor() as u64;
        self.credit -= due as f64;
        due
    }
}
