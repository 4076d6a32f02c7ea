//! The records waiting for NATS, one ordered lane per team, and the rule
//! that keeps each team's order in the stream: a team has at most one
//! publish awaiting its acknowledgement. Its next record goes only once
//! that one is acknowledged, so a failed publish is retried before anything
//! after it is sent. (Pipelining a team's publishes would let a failed one
//! land, on retry, after a later one that succeeded: a lost connection
//! drops what was written to it, while what was queued behind goes out on
//! the next.) Throughput comes from many teams in flight at once.
//!
//! Pure: no I/O, no clock of its own. Records keep their tap budget until
//! acknowledged, so the lanes are bounded by the tap.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::time::{Duration, Instant, SystemTime};

use super::record::{Encoded, encode_event, encode_message};
use crate::core::TeamEvent;
use crate::protocol::TeamId;
use crate::tap::{Delivery, Tapped};

/// First retry delay of a team whose publish failed; doubles per failure.
const RETRY_MIN: Duration = Duration::from_millis(100);
/// Longest retry delay.
const RETRY_MAX: Duration = Duration::from_secs(2);

/// The wait before the next try after `failures` failures in a row (1 or
/// more): doubling from `RETRY_MIN` up to `RETRY_MAX`.
pub fn retry_delay(failures: u32) -> Duration {
    RETRY_MIN
        .saturating_mul(1 << failures.saturating_sub(1).min(16))
        .min(RETRY_MAX)
}

/// One publish to make.
#[derive(Debug)]
pub struct Job {
    /// The team whose lane it heads.
    pub team: TeamId,
    /// What to publish.
    pub record: Encoded,
    /// An earlier attempt may have been stored (its answer was lost): ask
    /// the stream before publishing again.
    pub check_first: bool,
}

/// How a publish ended, as the outbox needs to know it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settled {
    /// Stored (now or by an earlier attempt): the record is done.
    Stored,
    /// Not stored: try again later. `unsure` when the record may have been
    /// stored after all (no answer came).
    Failed {
        /// Whether the attempt may have been stored.
        unsure: bool,
    },
}

enum Record {
    Message {
        seq: u64,
        message: Tapped,
    },
    Event {
        n: u64,
        event: TeamEvent,
        taken_at: SystemTime,
    },
}

struct Entry {
    record: Record,
    /// Some attempt may have been stored without an answer.
    unsure: bool,
}

#[derive(Default)]
struct Lane {
    queue: VecDeque<Entry>,
    /// The head is being published.
    busy: bool,
    /// Scheduled: in the ready queue or the retry heap.
    scheduled: bool,
    /// Failures in a row of the head record.
    failures: u32,
    /// The next message's sequence (from 1).
    next_seq: u64,
    /// The next lifecycle event's number (from 1).
    next_event: u64,
}

/// Every team's lane.
pub struct Outbox {
    run: String,
    prefix: String,
    lanes: HashMap<TeamId, Lane>,
    /// Teams whose head can go now, in turn.
    ready: VecDeque<TeamId>,
    /// Teams waiting to retry, by when.
    retry: BinaryHeap<Reverse<(Instant, TeamId)>>,
    /// Records queued, in flight included.
    records: usize,
    in_flight: usize,
}

impl Outbox {
    /// An empty outbox for run `run`, subjects under `prefix`.
    pub fn new(run: String, prefix: String) -> Outbox {
        Outbox {
            run,
            prefix,
            lanes: HashMap::new(),
            ready: VecDeque::new(),
            retry: BinaryHeap::new(),
            records: 0,
            in_flight: 0,
        }
    }

    /// Queues what the tap delivered, numbering it in its team's lane.
    pub fn push(&mut self, delivery: Delivery, now: SystemTime) {
        let (team, lane) = match &delivery {
            Delivery::Message(m) => (m.team, self.lanes.entry(m.team).or_default()),
            Delivery::Team(e) => (e.team, self.lanes.entry(e.team).or_default()),
        };
        let record = match delivery {
            Delivery::Message(message) => {
                lane.next_seq += 1;
                Record::Message {
                    seq: lane.next_seq,
                    message,
                }
            }
            Delivery::Team(event) => {
                lane.next_event += 1;
                Record::Event {
                    n: lane.next_event,
                    event,
                    taken_at: now,
                }
            }
        };
        lane.queue.push_back(Entry {
            record,
            unsure: false,
        });
        self.records += 1;
        if !lane.busy && !lane.scheduled {
            lane.scheduled = true;
            self.ready.push_back(team);
        }
    }

    /// The next publish to make, if a team's head may go at `now`.
    pub fn next(&mut self, now: Instant) -> Option<Job> {
        while let Some(Reverse((at, team))) = self.retry.peek().copied()
            && at <= now
        {
            self.retry.pop();
            self.ready.push_back(team);
        }
        let team = self.ready.pop_front()?;
        let lane = self.lanes.get_mut(&team)?;
        let head = lane.queue.front()?;
        lane.scheduled = false;
        lane.busy = true;
        self.in_flight += 1;
        let record = match &head.record {
            Record::Message { seq, message } => {
                encode_message(&self.run, &self.prefix, *seq, message)
            }
            Record::Event { n, event, taken_at } => {
                encode_event(&self.run, &self.prefix, *n, event, *taken_at)
            }
        };
        Some(Job {
            team,
            record,
            check_first: head.unsure,
        })
    }

    /// Ends the publish of `team`'s head. A stored head is dropped (giving
    /// its budget back to the tap); a failed one is retried after a delay
    /// that doubles with each failure in a row.
    pub fn settle(&mut self, team: TeamId, outcome: Settled, now: Instant) {
        let Some(lane) = self.lanes.get_mut(&team).filter(|l| l.busy) else {
            return;
        };
        lane.busy = false;
        self.in_flight -= 1;
        match outcome {
            Settled::Stored => {
                lane.queue.pop_front();
                self.records -= 1;
                lane.failures = 0;
                if !lane.queue.is_empty() {
                    lane.scheduled = true;
                    self.ready.push_back(team);
                }
            }
            Settled::Failed { unsure } => {
                if let Some(head) = lane.queue.front_mut() {
                    head.unsure |= unsure;
                }
                lane.failures = lane.failures.saturating_add(1);
                lane.scheduled = true;
                self.retry
                    .push(Reverse((now + retry_delay(lane.failures), team)));
            }
        }
    }

    /// When a team waiting to retry may go, if one is waiting.
    pub fn next_retry(&self) -> Option<Instant> {
        self.retry.peek().map(|Reverse((at, _))| *at)
    }

    /// Records queued, in flight included.
    pub fn len(&self) -> usize {
        self.records
    }

    /// Whether every record was stored.
    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// Publishes awaiting their answer.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Teams with records queued.
    pub fn teams_waiting(&self) -> usize {
        self.lanes.values().filter(|l| !l.queue.is_empty()).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bridge::ConnId;
    use crate::core::Lifecycle;
    use crate::publish::record::MessageRecord;
    use crate::tap::{SocketTap, tap};

    /// Messages as a socket of `team` would tap them.
    fn tapped(team: u64, texts: &[&str]) -> Vec<Delivery> {
        let (tap, mut rx) = tap(1 << 20);
        let mut socket = SocketTap::new(&tap, TeamId(team), ConnId(team));
        for (i, text) in texts.iter().enumerate() {
            assert!(!socket.offer(i as u64, text));
        }
        std::iter::from_fn(|| rx.try_recv()).collect()
    }

    fn seq_of(job: &Job) -> u64 {
        serde_json::from_slice::<MessageRecord<'_>>(&job.record.payload)
            .unwrap()
            .seq
    }

    #[test]
    fn a_team_never_has_two_publishes_in_flight_and_a_failed_head_goes_again_first() {
        let now = Instant::now();
        let mut outbox = Outbox::new("r".into(), "sb".into());
        for d in tapped(1, &["a", "b", "c"])
            .into_iter()
            .chain(tapped(2, &["x"]))
        {
            outbox.push(d, SystemTime::now());
        }
        let first = outbox.next(now).unwrap();
        let other = outbox.next(now).unwrap();
        assert_eq!((first.team, seq_of(&first)), (TeamId(1), 1));
        assert_eq!((other.team, seq_of(&other)), (TeamId(2), 1));
        assert!(
            outbox.next(now).is_none(),
            "team 1's second waits for its first"
        );
        // The first fails with no answer: it may have been stored.
        outbox.settle(TeamId(1), Settled::Failed { unsure: true }, now);
        outbox.settle(TeamId(2), Settled::Stored, now);
        assert!(
            outbox.next(now).is_none(),
            "a failed team waits out its delay"
        );
        let at = outbox.next_retry().unwrap();
        assert_eq!(at, now + RETRY_MIN);
        let again = outbox.next(at).unwrap();
        assert_eq!((again.team, seq_of(&again)), (TeamId(1), 1));
        assert_eq!(again.record.msg_id, first.record.msg_id, "same id on retry");
        assert!(again.check_first);
        outbox.settle(TeamId(1), Settled::Stored, at);
        let second = outbox.next(at).unwrap();
        assert_eq!(seq_of(&second), 2);
        assert!(!second.check_first);
        assert_eq!(outbox.len(), 2);
    }

    #[test]
    fn failures_in_a_row_back_off_up_to_the_limit_and_events_keep_their_place() {
        let now = Instant::now();
        let mut outbox = Outbox::new("r".into(), "sb".into());
        outbox.push(
            Delivery::Team(TeamEvent {
                team: TeamId(3),
                at: 5,
                kind: Lifecycle::Joined,
                reason: None,
            }),
            SystemTime::now(),
        );
        for d in tapped(3, &["m"]) {
            outbox.push(d, SystemTime::now());
        }
        let mut at = now;
        let mut delays = Vec::new();
        for _ in 0..7 {
            let job = outbox.next(at).unwrap();
            assert_eq!(job.record.subject, "sb.teams.3.joined");
            outbox.settle(job.team, Settled::Failed { unsure: false }, at);
            let next = outbox.next_retry().unwrap();
            delays.push(next - at);
            at = next;
        }
        let ms: Vec<u128> = delays.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1600, 2000, 2000]);
        let job = outbox.next(at).unwrap();
        assert!(!job.check_first, "refused attempts were not stored");
        outbox.settle(job.team, Settled::Stored, at);
        assert_eq!(
            outbox.next(at).unwrap().record.subject,
            "sb.teams.3.message"
        );
    }
}
