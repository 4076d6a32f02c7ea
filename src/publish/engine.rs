//! The publisher's task: takes what the tap delivers into the outbox,
//! publishes each team's head as soon as the stream is there, settles the
//! answers, retries what failed, and says (rate-limited) when NATS is
//! failing or the buffer is full. It gives a record's tap budget back only
//! once JetStream has acknowledged it, which is what pauses team sockets
//! while NATS is slow or gone.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use futures_util::StreamExt;
use futures_util::future::OptionFuture;
use futures_util::stream::FuturesUnordered;
use tokio::sync::oneshot;
use tracing::{error, info, warn};

use super::broker::{Ack, Broker, BrokerError};
use super::outbox::{Job, Outbox, Settled, retry_delay};
use super::stats::Counters;
use crate::protocol::TeamId;
use crate::tap::{Delivery, TapReceiver};

/// Most deliveries taken from the tap at once.
const TAKE_BATCH: usize = 1024;
/// At most one warning of each kind this often.
const ALARM_EVERY: Duration = Duration::from_secs(10);

/// How one attempt ended when it did not fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Stored(Ack),
    /// Asked before a retry: the stream already holds it.
    FoundStored,
}

type Attempt = Pin<Box<dyn Future<Output = (TeamId, Result<Outcome, BrokerError>)> + Send>>;
type Ensure = Pin<Box<dyn Future<Output = Result<(), BrokerError>> + Send>>;

/// One attempt at a job: asks the stream first when an earlier attempt may
/// have been stored (so a retry after the duplicate window has passed still
/// does not store it twice), then publishes.
async fn attempt<B: Broker>(broker: B, job: Job) -> (TeamId, Result<Outcome, BrokerError>) {
    let team = job.team;
    if job.check_first {
        match broker.last_id(job.record.subject.clone()).await {
            Ok(Some(id)) if id == job.record.msg_id => return (team, Ok(Outcome::FoundStored)),
            Ok(_) => {}
            Err(e) => return (team, Err(e)),
        }
    }
    (team, broker.publish(job.record).await.map(Outcome::Stored))
}

/// What the task is handed.
pub(crate) struct Engine<B> {
    pub broker: B,
    pub tap: TapReceiver,
    pub outbox: Outbox,
    pub counters: Arc<Counters>,
    /// The tap's budget, bytes.
    pub budget: usize,
    pub max_in_flight: usize,
    /// Fires when the caller stops waiting for the drain.
    pub stop: oneshot::Receiver<()>,
}

/// Rate-limited warnings, and the recovery line once NATS answers again.
struct Alarms {
    counters: Arc<Counters>,
    budget: usize,
    failing_since: Option<Instant>,
    last_failure_log: Option<Instant>,
    last_full_log: Option<Instant>,
}

impl Alarms {
    fn due(last: Option<Instant>, now: Instant) -> bool {
        last.is_none_or(|t| now.duration_since(t) >= ALARM_EVERY)
    }

    /// A request failed: warn, at most once per [`ALARM_EVERY`].
    fn failed(&mut self, error: &BrokerError, outbox: &Outbox, used: u64) {
        let now = Instant::now();
        self.failing_since.get_or_insert(now);
        if !Alarms::due(self.last_failure_log, now) {
            return;
        }
        self.last_failure_log = Some(now);
        Counters::add(&self.counters.alarms_logged, 1);
        let (waiting, teams, budget) = (outbox.len(), outbox.teams_waiting(), self.budget);
        let message = "publishing to NATS is failing; retrying. Records are kept until \
            acknowledged; team sockets stop reading while the buffer is full";
        if matches!(error, BrokerError::Refused(_)) {
            error!(%error, waiting, teams, buffer_used = used, buffer_budget = budget, "{message}");
        } else {
            warn!(%error, waiting, teams, buffer_used = used, buffer_budget = budget, "{message}");
        }
    }

    /// A request succeeded: say so once if it follows failures.
    fn succeeded(&mut self, outbox: &Outbox) {
        if let Some(since) = self.failing_since.take() {
            self.last_failure_log = None;
            info!(
                after_ms = since.elapsed().as_millis() as u64,
                waiting = outbox.len(),
                "publishing to NATS again"
            );
        }
    }

    /// The buffer was seen `used` bytes full: warn when it is nearly all
    /// spent, at most once per [`ALARM_EVERY`].
    fn buffer(&mut self, used: u64, outbox: &Outbox, stream_ready: bool) {
        let now = Instant::now();
        let budget = self.budget as u64;
        if used.saturating_mul(10) < budget.saturating_mul(9)
            || !Alarms::due(self.last_full_log, now)
        {
            return;
        }
        self.last_full_log = Some(now);
        Counters::add(&self.counters.alarms_logged, 1);
        warn!(
            buffer_used = used,
            buffer_budget = budget,
            waiting = outbox.len(),
            stream_ready,
            "publish buffer full: team sockets pause until NATS acknowledges"
        );
    }
}

impl<B: Broker> Engine<B> {
    /// Runs until the tap is closed and everything was acknowledged, or
    /// until stopped.
    pub async fn run(self) {
        let Engine {
            broker,
            mut tap,
            mut outbox,
            counters,
            budget,
            max_in_flight,
            mut stop,
        } = self;
        let used = |tap: &TapReceiver| budget.saturating_sub(tap.free()) as u64;
        let mut in_flight: FuturesUnordered<Attempt> = FuturesUnordered::new();
        let mut ensuring: Option<Ensure> = None;
        let mut ensure_failures = 0u32;
        let mut ensure_at = Some(Instant::now());
        let mut stream_ready = false;
        let mut open = true;
        let mut taken = Vec::with_capacity(TAKE_BATCH);
        let mut alarms = Alarms {
            counters: counters.clone(),
            budget,
            failing_since: None,
            last_failure_log: None,
            last_full_log: None,
        };
        loop {
            let now = Instant::now();
            if !stream_ready && ensuring.is_none() && ensure_at.is_some_and(|t| t <= now) {
                let broker = broker.clone();
                ensuring = Some(Box::pin(async move { broker.ensure_stream().await }));
                ensure_at = None;
            }
            if stream_ready {
                while in_flight.len() < max_in_flight
                    && let Some(job) = outbox.next(now)
                {
                    in_flight.push(Box::pin(attempt(broker.clone(), job)));
                }
            }
            Counters::set(&counters.waiting, outbox.len() as u64);
            if !open && outbox.is_empty() {
                break;
            }
            let wake = match (stream_ready, ensure_at) {
                (true, _) => outbox.next_retry(),
                (false, at) => at,
            };
            tokio::select! {
                biased;
                _ = &mut stop => break,
                Some((team, result)) = in_flight.next(), if !in_flight.is_empty() => {
                    // Releases happen only here: sampling just before each
                    // one sees the budget at its fullest.
                    let in_use = used(&tap);
                    counters.buffer_peak.fetch_max(in_use, Ordering::Relaxed);
                    Counters::set(&counters.buffer_used, in_use);
                    let now = Instant::now();
                    match result {
                        Ok(outcome) => {
                            let counter = match outcome {
                                Outcome::Stored(Ack::New) => &counters.stored,
                                Outcome::Stored(Ack::Duplicate) => &counters.duplicates,
                                Outcome::FoundStored => &counters.found_stored,
                            };
                            Counters::add(counter, 1);
                            outbox.settle(team, Settled::Stored, now);
                            alarms.succeeded(&outbox);
                        }
                        Err(error) => {
                            Counters::add(&counters.failed_attempts, 1);
                            let unsure = matches!(error, BrokerError::NoAnswer(_));
                            outbox.settle(team, Settled::Failed { unsure }, now);
                            if error == BrokerError::NoStream && stream_ready {
                                stream_ready = false;
                                counters.stream_ready.store(false, Ordering::Relaxed);
                                ensure_at = Some(now);
                            }
                            alarms.failed(&error, &outbox, in_use);
                        }
                    }
                }
                Some(result) = OptionFuture::from(ensuring.as_mut()), if ensuring.is_some() => {
                    ensuring = None;
                    match result {
                        Ok(()) => {
                            stream_ready = true;
                            ensure_failures = 0;
                            counters.stream_ready.store(true, Ordering::Relaxed);
                        }
                        Err(error) => {
                            ensure_failures = ensure_failures.saturating_add(1);
                            ensure_at = Some(Instant::now() + retry_delay(ensure_failures));
                            alarms.failed(&error, &outbox, used(&tap));
                        }
                    }
                }
                n = tap.recv_many(&mut taken, TAKE_BATCH), if open => {
                    if n == 0 {
                        open = false;
                        continue;
                    }
                    let wall = SystemTime::now();
                    for delivery in taken.drain(..) {
                        let counter = match &delivery {
                            Delivery::Message(_) => &counters.messages_taken,
                            Delivery::Team(_) => &counters.events_taken,
                        };
                        Counters::add(counter, 1);
                        outbox.push(delivery, wall);
                    }
                    let in_use = used(&tap);
                    counters.buffer_peak.fetch_max(in_use, Ordering::Relaxed);
                    Counters::set(&counters.buffer_used, in_use);
                    alarms.buffer(in_use, &outbox, stream_ready);
                }
                _ = tokio::time::sleep_until(wake.unwrap_or(now).into()), if wake.is_some() => {}
            }
        }
        Counters::set(&counters.waiting, outbox.len() as u64);
        Counters::set(&counters.buffer_used, used(&tap));
        if !outbox.is_empty() {
            error!(
                records = outbox.len(),
                teams = outbox.teams_waiting(),
                "publishing stopped with records NATS never acknowledged"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashSet};
    use std::sync::Mutex;

    use super::*;
    use crate::bridge::ConnId;
    use crate::publish::record::{Encoded, MessageRecord};
    use crate::tap::{SocketTap, tap};

    /// A broker that stores in memory and fails on a script: every third
    /// publish of team 1 is stored but its answer lost, every fifth is
    /// refused. It also fails the test if a team ever has two publishes
    /// in flight.
    #[derive(Clone, Default)]
    struct Scripted(Arc<Mutex<State>>);

    #[derive(Default)]
    struct State {
        stored: Vec<Encoded>,
        ids: HashSet<String>,
        calls: u64,
        busy: HashSet<String>,
        overlaps: u64,
    }

    impl Broker for Scripted {
        async fn ensure_stream(&self) -> Result<(), BrokerError> {
            Ok(())
        }

        async fn publish(&self, record: Encoded) -> Result<Ack, BrokerError> {
            let subject = record.subject.clone();
            let call = {
                let mut s = self.0.lock().unwrap();
                s.calls += 1;
                if !s.busy.insert(subject.clone()) {
                    s.overlaps += 1;
                }
                s.calls
            };
            // Let other teams' publishes interleave.
            tokio::task::yield_now().await;
            let mut s = self.0.lock().unwrap();
            s.busy.remove(&subject);
            let team_one = subject.contains(".1.");
            if team_one && call % 5 == 0 {
                return Err(BrokerError::Refused("full".into()));
            }
            let duplicate = !s.ids.insert(record.msg_id.clone());
            if !duplicate {
                s.stored.push(record);
            }
            if team_one && call % 3 == 0 {
                return Err(BrokerError::NoAnswer("timed out".into()));
            }
            Ok(if duplicate { Ack::Duplicate } else { Ack::New })
        }

        async fn last_id(&self, subject: String) -> Result<Option<String>, BrokerError> {
            let s = self.0.lock().unwrap();
            Ok(s.stored
                .iter()
                .rev()
                .find(|r| r.subject == subject)
                .map(|r| r.msg_id.clone()))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn failed_publishes_are_retried_in_order_and_stored_exactly_once() {
        let (tap, rx) = tap(1 << 20);
        let broker = Scripted::default();
        let counters = Arc::new(Counters::default());
        let (_stop_tx, stop) = oneshot::channel();
        let engine = Engine {
            broker: broker.clone(),
            tap: rx,
            outbox: Outbox::new("r".into(), "sb".into()),
            counters: counters.clone(),
            budget: 1 << 20,
            max_in_flight: 64,
            stop,
        };
        let task = tokio::spawn(engine.run());
        for team in 1..=3 {
            let mut socket = SocketTap::new(&tap, TeamId(team), ConnId(team));
            for i in 0..40 {
                assert!(!socket.offer(i, &format!("{team}/{i}")));
            }
        }
        drop(tap);
        task.await.unwrap();
        let s = broker.0.lock().unwrap();
        assert_eq!(s.overlaps, 0, "never two publishes of one team at once");
        let mut per_team: BTreeMap<u64, Vec<(u64, String)>> = BTreeMap::new();
        for r in &s.stored {
            let m: MessageRecord<'_> = serde_json::from_slice(&r.payload).unwrap();
            per_team
                .entry(m.team_id.0)
                .or_default()
                .push((m.seq, m.text.into_owned()));
        }
        for (team, records) in &per_team {
            let want: Vec<(u64, String)> =
                (0..40).map(|i| (i + 1, format!("{team}/{i}"))).collect();
            assert_eq!(records, &want, "team {team}: each once, in order");
        }
        let stats = counters.snapshot();
        assert!(stats.failed_attempts > 0 && stats.found_stored > 0);
        assert_eq!(stats.done(), 120);
        assert_eq!(s.stored.len(), 120, "each record stored once");
        assert_eq!(stats.waiting, 0);
    }
}
