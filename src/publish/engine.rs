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
        let (mut task, mut stop) = Task::new(self);
        loop {
            let now = Instant::now();
            task.start_due(now);
            if task.drained() {
                break;
            }
            let wake = task.next_wake();
            tokio::select! {
                biased;
                _ = &mut stop => break,
                Some((team, result)) = task.in_flight.next(), if !task.in_flight.is_empty() => {
                    task.settle(team, result);
                }
                Some(result) = OptionFuture::from(task.stream.ensuring.as_mut()),
                    if task.stream.ensuring.is_some() => task.ensured(result),
                n = task.tap.recv_many(&mut task.taken, TAKE_BATCH), if task.open => task.take(n),
                _ = tokio::time::sleep_until(wake.unwrap_or(now).into()),
                    if wake.is_some() => {}
            }
        }
        task.finish();
    }
}

/// Making sure the stream exists: nothing is published before it does, and
/// a publish that finds it gone sends the task back here.
struct StreamSetup {
    ensuring: Option<Ensure>,
    /// Failed attempts in a row, for the retry delay.
    failures: u32,
    /// When to try next, if not trying now.
    at: Option<Instant>,
    ready: bool,
}

/// The running task: the engine's parts and what is under way.
struct Task<B> {
    broker: B,
    tap: TapReceiver,
    outbox: Outbox,
    counters: Arc<Counters>,
    budget: usize,
    max_in_flight: usize,
    in_flight: FuturesUnordered<Attempt>,
    stream: StreamSetup,
    /// Whether the tap may still deliver.
    open: bool,
    taken: Vec<Delivery>,
    alarms: Alarms,
}

impl<B: Broker> Task<B> {
    fn new(engine: Engine<B>) -> (Task<B>, oneshot::Receiver<()>) {
        let alarms = Alarms {
            counters: engine.counters.clone(),
            budget: engine.budget,
            failing_since: None,
            last_failure_log: None,
            last_full_log: None,
        };
        let task = Task {
            broker: engine.broker,
            tap: engine.tap,
            outbox: engine.outbox,
            counters: engine.counters,
            budget: engine.budget,
            max_in_flight: engine.max_in_flight,
            in_flight: FuturesUnordered::new(),
            stream: StreamSetup {
                ensuring: None,
                failures: 0,
                at: Some(Instant::now()),
                ready: false,
            },
            open: true,
            taken: Vec::with_capacity(TAKE_BATCH),
            alarms,
        };
        (task, engine.stop)
    }

    /// Tap budget held by records not yet acknowledged, bytes.
    fn used(&self) -> u64 {
        self.budget.saturating_sub(self.tap.free()) as u64
    }

    /// Notes how full the buffer is; returns it.
    fn sample_buffer(&self) -> u64 {
        let in_use = self.used();
        self.counters
            .buffer_peak
            .fetch_max(in_use, Ordering::Relaxed);
        Counters::set(&self.counters.buffer_used, in_use);
        in_use
    }

    /// Starts what is due: a check of the stream, or the teams' heads (at
    /// most `max_in_flight` at once) once it exists.
    fn start_due(&mut self, now: Instant) {
        let stream = &mut self.stream;
        if !stream.ready && stream.ensuring.is_none() && stream.at.is_some_and(|t| t <= now) {
            let broker = self.broker.clone();
            stream.ensuring = Some(Box::pin(async move { broker.ensure_stream().await }));
            stream.at = None;
        }
        if stream.ready {
            while self.in_flight.len() < self.max_in_flight
                && let Some(job) = self.outbox.next(now)
            {
                self.in_flight
                    .push(Box::pin(attempt(self.broker.clone(), job)));
            }
        }
        Counters::set(&self.counters.waiting, self.outbox.len() as u64);
    }

    /// The tap is closed and everything it gave was acknowledged.
    fn drained(&self) -> bool {
        !self.open && self.outbox.is_empty()
    }

    /// When there is something to do besides answers and deliveries.
    fn next_wake(&self) -> Option<Instant> {
        if self.stream.ready {
            self.outbox.next_retry()
        } else {
            self.stream.at
        }
    }

    /// An attempt ended: the team's head is done, or waits for a retry.
    fn settle(&mut self, team: TeamId, result: Result<Outcome, BrokerError>) {
        // Releases happen only here: sampling just before each one sees
        // the budget at its fullest.
        let in_use = self.sample_buffer();
        let now = Instant::now();
        match result {
            Ok(outcome) => {
                let counter = match outcome {
                    Outcome::Stored(Ack::New) => &self.counters.stored,
                    Outcome::Stored(Ack::Duplicate) => &self.counters.duplicates,
                    Outcome::FoundStored => &self.counters.found_stored,
                };
                Counters::add(counter, 1);
                self.outbox.settle(team, Settled::Stored, now);
                self.alarms.succeeded(&self.outbox);
            }
            Err(error) => {
                Counters::add(&self.counters.failed_attempts, 1);
                let unsure = matches!(error, BrokerError::NoAnswer(_));
                self.outbox.settle(team, Settled::Failed { unsure }, now);
                if error == BrokerError::NoStream && self.stream.ready {
                    self.stream.ready = false;
                    self.counters.stream_ready.store(false, Ordering::Relaxed);
                    self.stream.at = Some(now);
                }
                self.alarms.failed(&error, &self.outbox, in_use);
            }
        }
    }

    /// The stream check answered: publishing may start, or it is tried
    /// again after a delay.
    fn ensured(&mut self, result: Result<(), BrokerError>) {
        self.stream.ensuring = None;
        match result {
            Ok(()) => {
                self.stream.ready = true;
                self.stream.failures = 0;
                self.counters.stream_ready.store(true, Ordering::Relaxed);
            }
            Err(error) => {
                self.stream.failures = self.stream.failures.saturating_add(1);
                self.stream.at = Some(Instant::now() + retry_delay(self.stream.failures));
                self.alarms.failed(&error, &self.outbox, self.used());
            }
        }
    }

    /// `n` deliveries arrived from the tap (none: it is closed): into the
    /// outbox.
    fn take(&mut self, n: usize) {
        if n == 0 {
            self.open = false;
            return;
        }
        let wall = SystemTime::now();
        for delivery in self.taken.drain(..) {
            let counter = match &delivery {
                Delivery::Message(_) => &self.counters.messages_taken,
                Delivery::Team(_) => &self.counters.events_taken,
            };
            Counters::add(counter, 1);
            self.outbox.push(delivery, wall);
        }
        let in_use = self.sample_buffer();
        self.alarms.buffer(in_use, &self.outbox, self.stream.ready);
    }

    /// Leaves the counters as the task ends, and says what NATS never
    /// acknowledged.
    fn finish(&self) {
        Counters::set(&self.counters.waiting, self.outbox.len() as u64);
        Counters::set(&self.counters.buffer_used, self.used());
        if !self.outbox.is_empty() {
            error!(
                records = self.outbox.len(),
                teams = self.outbox.teams_waiting(),
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
