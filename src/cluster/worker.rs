//! `switchboard worker`: team sockets and nothing else. It executes the
//! leader's command batches on the same transport the single process uses,
//! and sends back the same events, batched once per tick, and decides
//! nothing.
//!
//! Its rules, all for "never two sockets for one team":
//! - It obeys only the newest epoch it has seen. A new leader first calls
//!   it to report its sockets (adoption): it answers with every open
//!   socket and every socket that ended lately, each with what it has
//!   read, and from then on obeys the new epoch; its sockets stay open
//!   (one still connecting is ended: the new leader does not know it). A
//!   batch of a newer epoch that did not call first ends every socket of
//!   the old one; that batch runs once they have all ended.
//! - Its lease is renewed every quarter lease. Unrenewed for half a lease,
//!   or lost (taken over, revoked), it closes every socket (a close
//!   handshake, so nothing written to it is left unread; dropped if not
//!   done by five eighths of a lease, or, if that is past, a sixteenth of
//!   a lease from then), and only then registers again as a new
//!   incarnation: the leader declares the old one lost, and reopens its
//!   teams elsewhere, only after that (or after a whole lease), so a
//!   worker cut off from NATS has closed its sockets by then, and one
//!   paused and resumed closes them at once, reading what its kernel
//!   buffered while it was stopped but obeying nothing more.
//! - A command batch out of sequence (NATS lost one) is the same: fence,
//!   then come back as a new incarnation.
//! - While it fences, each socket's end still goes to the leader, in the
//!   fenced incarnation's stream, as `worker lost`: the leader gives the
//!   team up as soon as its socket has closed, not a lease later.
//! - SIGTERM hands its teams over: it marks itself leaving (the leader
//!   places nothing new on it), closes every socket with a normal close
//!   (the leader re-requests each team elsewhere, once), deletes its lease
//!   and exits. A second signal ends every socket at once.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::runtime::Handle;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use super::lease::{self, WorkerLease, WorkerValue};
use super::wire::{CommandBatch, EventBatch, Inventory, SOCKETS_PER_PART, ToWorker};
use super::{ClusterConfig, ClusterError};
use crate::bridge::{CLOSE_NORMAL, CloseReason, ConnId, ConnKind, NetCommand, NetEvent};
use crate::core::{AdoptedSocket, Config};
use crate::inbox::{self, EventReceiver, Wake};
use crate::protocol::TeamId;
use crate::transport::{Transport, TransportConfig};

/// Command batches taken from NATS and not yet executed: past this the
/// subscription waits (and NATS buffers, then drops: a gap, and a fence).
const QUEUED_BATCHES: usize = 256;

/// Events handed to the leader in one batch, at most.
const EVENTS_PER_BATCH: usize = 4096;

/// How long an ended socket's reading is kept for a new leader's call: it
/// must outlast the old leader's last copy of the counts (at most a second
/// old, [`super::state::MIRROR_EVERY`]) plus the takeover (a lease and a
/// second). Twice the lease and ten seconds more.
fn ended_kept(lease: Duration) -> Duration {
    lease * 2 + Duration::from_secs(10)
}

/// A socket this worker opened, and what it has read.
#[derive(Clone, Copy, Debug)]
struct Held {
    team: TeamId,
    messages: u64,
    props: u64,
    /// Its handshake completed.
    open: bool,
    /// The leader asked to close it.
    closing: bool,
    /// Ended at an adoption while still connecting: the new leader never
    /// knew it, so nothing of it is sent.
    orphan: bool,
}

/// Everything a worker needs.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// The cluster.
    pub cluster: ClusterConfig,
    /// This worker's name: unique among live workers.
    pub name: String,
    /// Most sockets it takes.
    pub capacity: usize,
    /// Socket limits.
    pub transport: TransportConfig,
    /// The core's settings the sockets follow (the stall limit is the pong
    /// timeout; the close handshake's bound).
    pub core: Config,
}

/// What a worker shows on `/metrics` and `/healthz`: written by its loop
/// once per turn, read at scrape time. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct WorkerWatch(Arc<WatchState>);

#[derive(Debug, Default)]
struct WatchState {
    /// The cluster's lease, ms, once read from its bucket.
    lease_ms: std::sync::atomic::AtomicU64,
    sockets: std::sync::atomic::AtomicUsize,
    ended: std::sync::atomic::AtomicUsize,
    epoch: std::sync::atomic::AtomicU64,
    renewed: Mutex<Option<Instant>>,
    /// Its publisher's numbers (`--publish`).
    publish: std::sync::OnceLock<crate::publish::PublishWatch>,
}

impl WorkerWatch {
    /// A fresh watch (nothing registered yet).
    pub fn new() -> WorkerWatch {
        WorkerWatch(Arc::new(WatchState {
            lease_ms: Default::default(),
            sockets: Default::default(),
            ended: Default::default(),
            epoch: Default::default(),
            renewed: Mutex::new(None),
            publish: std::sync::OnceLock::new(),
        }))
    }

    /// Shows the publisher's numbers too.
    pub fn watch_publisher(&self, watch: crate::publish::PublishWatch) {
        let _ = self.0.publish.set(watch);
    }

    /// The publisher's numbers, if it publishes.
    pub fn publisher(&self) -> Option<&crate::publish::PublishWatch> {
        self.0.publish.get()
    }

    /// Team sockets it holds.
    pub fn sockets(&self) -> usize {
        self.0.sockets.load(Ordering::Relaxed)
    }

    /// Ended sockets' readings it keeps for a leader's call.
    pub fn ended(&self) -> usize {
        self.0.ended.load(Ordering::Relaxed)
    }

    /// The leader epoch it obeys (0: none yet).
    pub fn epoch(&self) -> u64 {
        self.0.epoch.load(Ordering::Relaxed)
    }

    /// Since its lease was last registered or renewed; `None` before the
    /// first time.
    pub fn lease_age(&self) -> Option<Duration> {
        self.0
            .renewed
            .lock()
            .ok()
            .and_then(|r| r.map(|at| at.elapsed()))
    }

    /// Healthy: its lease is fresh enough that it is not fencing.
    pub fn healthy(&self) -> bool {
        let lease = Duration::from_millis(self.0.lease_ms.load(Ordering::Relaxed));
        self.lease_age()
            .is_some_and(|age| !lease.is_zero() && !lease::must_fence(age, lease))
    }

    fn record(&self, sockets: usize, ended: usize, epoch: u64, renewed: Instant, lease: Duration) {
        self.0
            .lease_ms
            .store(lease.as_millis() as u64, Ordering::Relaxed);
        self.0.sockets.store(sockets, Ordering::Relaxed);
        self.0.ended.store(ended, Ordering::Relaxed);
        self.0.epoch.store(epoch, Ordering::Relaxed);
        if let Ok(mut at) = self.0.renewed.lock() {
            *at = Some(renewed);
        }
    }
}

/// How a worker ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerEnd {
    /// Handed every team over and left.
    HandedOver,
    /// A second signal: sockets dropped at once.
    Forced,
}

/// Asks a running worker to leave (1) or to stop at once (2).
#[derive(Clone, Debug, Default)]
pub struct Leave(Arc<AtomicU8>, Arc<Mutex<Option<Wake>>>);

impl Leave {
    /// A fresh handle.
    pub fn new() -> Leave {
        Leave::default()
    }

    /// First call: leave gracefully; second: at once.
    pub fn signal(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
        if let Ok(wake) = self.1.lock()
            && let Some(wake) = wake.as_ref()
        {
            wake.wake();
        }
    }

    fn level(&self) -> u8 {
        self.0.load(Ordering::SeqCst)
    }
}

/// What the worker loop asks of its lease task.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Desired {
    /// The incarnation to hold (registered anew when it changes); `None`
    /// while sockets of a fenced one are still ending.
    incarnation: Option<String>,
    leaving: bool,
    /// Delete the lease and stop.
    released: bool,
}

/// What the lease task reports.
#[derive(Debug)]
struct LeaseView {
    /// The incarnation registered, if any.
    registered: Option<String>,
    /// Last successful register or renewal.
    last_ok: Instant,
    /// The registered lease was taken or revoked.
    lost: bool,
    /// Released (the worker may exit).
    released: bool,
}

/// Runs a worker until it has handed its teams over (or is forced).
/// Blocks the calling thread, which must not be a tokio worker. With a
/// `tap` (`--publish`), its sockets hand every message's text to it: the
/// texts are published here, and only counts go to the leader.
pub fn run(
    config: &WorkerConfig,
    runtime: &Handle,
    leave: &Leave,
    watch: &WorkerWatch,
    tap: Option<crate::tap::Tap>,
) -> Result<WorkerEnd, ClusterError> {
    let (client, js) = runtime.block_on(super::connect(&config.cluster, "worker"))?;
    let (buckets, lease) = runtime.block_on(lease::buckets(&js, &config.cluster))?;
    let (events, inbox) = inbox::channel();
    let doorbell = inbox.doorbell();
    let wake = doorbell.waker();
    if let Ok(mut slot) = leave.1.lock() {
        *slot = Some(wake.clone());
    }
    // Commands: subscribed before the lease exists, so none is missed.
    let batches = subscribe_commands(config, runtime, &client, &wake)?;
    let first = Desired {
        incarnation: Some(new_incarnation()),
        leaving: false,
        released: false,
    };
    let (desired, desired_rx) = watch::channel(first.clone());
    let view = Arc::new(Mutex::new(LeaseView {
        registered: None,
        last_ok: Instant::now(),
        lost: false,
        released: false,
    }));
    runtime.spawn(hold_lease(
        buckets.workers.clone(),
        config.name.clone(),
        config.capacity,
        lease,
        desired_rx,
        view.clone(),
        wake.clone(),
    ));
    let transport = Transport::new(
        runtime.clone(),
        events,
        &config.transport,
        &config.core,
        tap,
    );
    let mut worker = Worker {
        config,
        runtime: runtime.clone(),
        client,
        lease,
        transport,
        inbox,
        batches,
        desired,
        want: first,
        view,
        epoch: 0,
        expected: 1,
        held: None,
        live: HashMap::new(),
        ended: VecDeque::new(),
        discarding: false,
        fenced_from: None,
        oldest_at: None,
        outgoing: Vec::new(),
        sent: 0,
        last_flush: Instant::now(),
        leaving_since: None,
        fence_by: None,
        ended_unreported: false,
        ended_due: false,
    };
    info!(worker = %config.name, capacity = config.capacity, lease_ms = lease.as_millis() as u64, "worker started");
    Ok(worker.drive(&doorbell, leave, watch))
}

/// Takes this worker's command subject into a bounded queue, waking the
/// loop for each batch.
fn subscribe_commands(
    config: &WorkerConfig,
    runtime: &Handle,
    client: &async_nats::Client,
    wake: &Wake,
) -> Result<mpsc::Receiver<(ToWorker, Option<String>)>, ClusterError> {
    let (batches_in, batches) = mpsc::channel(QUEUED_BATCHES);
    let subscription = runtime
        .block_on(client.subscribe(config.cluster.commands(&config.name)))
        .map_err(|e| ClusterError::Connect {
            url: config.cluster.url.clone(),
            error: e.to_string(),
        })?;
    runtime.spawn(take_commands(subscription, batches_in, wake.clone()));
    Ok(batches)
}

fn micros_since_epoch(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

fn new_incarnation() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{:x}-{:x}", std::process::id(), nanos)
}

struct Worker<'a> {
    config: &'a WorkerConfig,
    runtime: Handle,
    client: async_nats::Client,
    lease: Duration,
    transport: Transport,
    inbox: EventReceiver,
    batches: mpsc::Receiver<(ToWorker, Option<String>)>,
    desired: watch::Sender<Desired>,
    want: Desired,
    view: Arc<Mutex<LeaseView>>,
    /// The newest epoch obeyed.
    epoch: u64,
    /// The next command batch's sequence number in (epoch, incarnation).
    expected: u64,
    /// A batch of a newer epoch, waiting for the old epoch's sockets to end.
    held: Option<CommandBatch>,
    /// Sockets opened and not yet ended.
    live: HashMap<ConnId, Held>,
    /// Sockets that ended, with when, kept for a new leader's call
    /// ([`ended_kept`]); at most twice the capacity (the oldest goes).
    ended: VecDeque<(Instant, AdoptedSocket)>,
    /// Every live socket is being ended: none of their events is sent.
    discarding: bool,
    /// Fencing: the incarnation whose stream still carries each ending
    /// socket's close, as [`CloseReason::WorkerLost`], so that the leader
    /// learns it has ended without waiting for this incarnation's loss.
    fenced_from: Option<String>,
    /// When the oldest event in `outgoing` was taken off the sockets.
    oldest_at: Option<SystemTime>,
    outgoing: Vec<NetEvent>,
    /// Event batches sent in this (epoch, incarnation).
    sent: u64,
    last_flush: Instant,
    leaving_since: Option<Instant>,
    /// Fencing: sockets still open then are dropped.
    fence_by: Option<Instant>,
    /// This stream (epoch, incarnation) began without an adoption call:
    /// the ended sockets' readings go with its first batch of events,
    /// once a command batch of it ran (so the leader knows this stream).
    ended_unreported: bool,
    ended_due: bool,
}

impl Worker<'_> {
    fn drive(
        &mut self,
        doorbell: &inbox::Doorbell,
        leave: &Leave,
        watch: &WorkerWatch,
    ) -> WorkerEnd {
        let tick = self.config.core.tick;
        loop {
            let renewed = self.view().last_ok;
            watch.record(
                self.live.len(),
                self.ended.len(),
                self.epoch,
                renewed,
                self.lease,
            );
            if leave.level() >= 2 {
                self.transport.abort_all();
                return WorkerEnd::Forced;
            }
            if leave.level() == 1 && self.leaving_since.is_none() {
                self.start_leaving();
            }
            self.check_lease();
            self.take_events();
            self.take_commands();
            let now = Instant::now();
            if self.leaving_since.is_some() && self.leave_step(now) {
                info!(worker = %self.config.name, "handed over; leaving");
                return WorkerEnd::HandedOver;
            }
            if (!self.outgoing.is_empty() || self.ended_due) && now >= self.last_flush + tick {
                self.flush();
            }
            let next_flush = (!self.outgoing.is_empty()).then(|| self.last_flush + tick);
            let next_check = self
                .fence_by
                .map_or(now + self.lease / 8, |by| by.min(now + self.lease / 8));
            let wake_by = next_flush.map_or(next_check, |f| f.min(next_check));
            if next_flush.is_some() {
                // Events in hand: wait for the tick, woken early only by
                // a command batch or a signal.
                std::thread::park_timeout(wake_by.saturating_duration_since(Instant::now()));
            } else {
                doorbell.wait(Some(wake_by));
            }
        }
    }

    /// One step of leaving; true once done. Sockets that have not closed
    /// by twice the close timeout are ended; once none is left and their
    /// events are sent, the lease is deleted (or left to expire, if NATS
    /// does not answer within a lease).
    fn leave_step(&mut self, now: Instant) -> bool {
        let Some(since) = self.leaving_since else {
            return false;
        };
        let closes_due = since + self.config.core.close_timeout * 2;
        if !self.live.is_empty() {
            if now >= closes_due {
                self.transport.abort_all();
            }
            return false;
        }
        if !self.want.released {
            self.flush_bye(true);
            self.want.released = true;
            let _ = self.desired.send(self.want.clone());
        }
        self.view().released || now >= closes_due + self.lease
    }

    fn view(&self) -> std::sync::MutexGuard<'_, LeaseView> {
        self.view.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Fences when the lease is lost or stale; registers the next
    /// incarnation once every socket of the last has ended.
    fn check_lease(&mut self) {
        let (registered, stale, lost, last_ok) = {
            let view = self.view();
            (
                view.registered.clone(),
                lease::must_fence(view.last_ok.elapsed(), self.lease),
                view.lost,
                view.last_ok,
            )
        };
        if let Some(by) = self.fence_by {
            if self.live.is_empty() {
                self.fence_by = None;
            } else if Instant::now() >= by {
                self.transport.abort_all();
                self.fence_by = None;
            }
        }
        let holding = registered.is_some() && registered == self.want.incarnation;
        if holding && (stale || lost) {
            warn!(
                worker = %self.config.name,
                why = if lost { "lease taken or revoked" } else { "lease not renewed for half its length" },
                sockets = self.live.len(),
                "fencing: ending every socket"
            );
            self.fence(last_ok);
        }
        if self.want.incarnation.is_none() && self.live.is_empty() && self.leaving_since.is_none() {
            // The fenced stream's last closes go before it is given up.
            self.flush();
            self.fenced_from = None;
            self.want.incarnation = Some(new_incarnation());
            self.expected = 1;
            self.sent = 0;
            self.ended_unreported = true;
            self.discarding = false;
            let _ = self.desired.send(self.want.clone());
        }
    }

    /// Ends every socket and gives up this incarnation: a close handshake
    /// each, dropped if not done by the fence's deadline (counted from
    /// `last_ok`, the last renewal) or, if that is past, by
    /// [`lease::woken_close`] from now.
    fn fence(&mut self, last_ok: Instant) {
        let (now, deadline) = (Instant::now(), last_ok + lease::fence_deadline(self.lease));
        let by = if now < deadline {
            deadline
        } else {
            now + lease::woken_close(self.lease)
        };
        for (&conn, held) in self.live.iter_mut() {
            held.closing = true;
            self.transport.execute(NetCommand::Close {
                conn,
                code: CLOSE_NORMAL,
            });
        }
        self.fence_by = Some(by);
        self.discarding = true;
        self.held = None;
        self.fenced_from = self.want.incarnation.take();
        let _ = self.desired.send(self.want.clone());
    }

    fn start_leaving(&mut self) {
        info!(worker = %self.config.name, sockets = self.live.len(), "leaving: handing every team over");
        self.leaving_since = Some(Instant::now());
        self.want.leaving = true;
        let _ = self.desired.send(self.want.clone());
        for &conn in self.live.keys() {
            self.transport.execute(NetCommand::Close {
                conn,
                code: CLOSE_NORMAL,
            });
        }
    }

    /// Takes the sockets' events; keeps those to send.
    fn take_events(&mut self) {
        let live = &mut self.live;
        let ended = &mut self.ended;
        let outgoing = &mut self.outgoing;
        let discarding = self.discarding;
        let fenced = self.fenced_from.is_some();
        let now = Instant::now();
        let most_ended = self.config.capacity.saturating_mul(2).max(1);
        self.inbox.drain(usize::MAX, |event| {
            let conn = event.conn();
            let Some(held) = live.get_mut(&conn) else {
                return;
            };
            match &event {
                NetEvent::Opened { .. } => held.open = true,
                NetEvent::Messages { count, props, .. } => {
                    held.messages += u64::from(*count);
                    held.props += u64::from(*props);
                }
                _ => {}
            }
            let (orphan, copy) = (held.orphan, *held);
            if matches!(event, NetEvent::Closed { .. } | NetEvent::OpenFailed { .. }) {
                live.remove(&conn);
                let held = copy;
                if held.messages > 0 && !orphan {
                    if ended.len() >= most_ended {
                        ended.pop_front();
                    }
                    ended.push_back((now, held.report(conn, false)));
                }
            }
            if !discarding && !orphan {
                outgoing.push(event);
            } else if fenced && !orphan {
                // Ended by the fence: the leader gives the socket up (its
                // reading is reported when this worker registers again).
                match event {
                    NetEvent::Closed { .. } => outgoing.push(NetEvent::Closed {
                        conn,
                        reason: CloseReason::WorkerLost,
                    }),
                    NetEvent::OpenFailed { .. } => outgoing.push(event),
                    _ => {}
                }
            }
        });
        let kept = ended_kept(self.lease);
        while self
            .ended
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > kept)
        {
            self.ended.pop_front();
        }
        if self.oldest_at.is_none() && !self.outgoing.is_empty() {
            self.oldest_at = Some(SystemTime::now());
        }
        if self.outgoing.len() >= EVENTS_PER_BATCH {
            self.flush();
        }
    }

    /// Executes the command batches that are this worker's to execute.
    fn take_commands(&mut self) {
        loop {
            if let Some(batch) = self.held.take() {
                if !self.live.is_empty() {
                    self.held = Some(batch);
                    return; // the old epoch's sockets are still ending
                }
                self.discarding = false;
                self.epoch = batch.epoch;
                self.expected = 1;
                // Event batches are numbered per (epoch, incarnation) too:
                // the new leader expects 1.
                self.sent = 0;
                self.ended_unreported = true;
                info!(worker = %self.config.name, epoch = batch.epoch, "obeying a new leader");
                self.execute(batch);
                continue;
            }
            let Ok((message, reply)) = self.batches.try_recv() else {
                return;
            };
            let batch = match message {
                ToWorker::Batch(batch) => batch,
                ToWorker::Adopt { epoch, incarnation } => {
                    self.answer_adoption(epoch, &incarnation, reply);
                    continue;
                }
                ToWorker::Report { epoch, incarnation } => {
                    if self.want.incarnation.as_deref() == Some(incarnation.as_str())
                        && let Some(reply) = reply
                    {
                        let ended: Vec<AdoptedSocket> =
                            self.ended.iter().map(|(_, s)| *s).collect();
                        self.answer(&reply, epoch, &incarnation, &ended);
                    }
                    continue;
                }
            };
            if self.want.incarnation.as_deref() != Some(batch.incarnation.as_str())
                || batch.epoch < self.epoch
            {
                continue; // another incarnation's, or a deposed leader's
            }
            if batch.epoch > self.epoch {
                if !self.live.is_empty() {
                    warn!(worker = %self.config.name, old = self.epoch, new = batch.epoch, sockets = self.live.len(), "a new leader: ending the old one's sockets first");
                    self.transport.abort_all();
                    self.discarding = true;
                    self.drop_outgoing();
                }
                self.held = Some(batch);
                continue;
            }
            self.execute(batch);
        }
    }

    fn execute(&mut self, batch: CommandBatch) {
        if batch.seq != self.expected {
            warn!(worker = %self.config.name, expected = self.expected, got = batch.seq, "commands lost in transit: fencing");
            let last_ok = self.view().last_ok;
            self.fence(last_ok);
            return;
        }
        self.expected += 1;
        if std::mem::take(&mut self.ended_unreported) {
            self.ended_due = true;
        }
        for command in batch.commands {
            let command = command.into_net();
            match command {
                NetCommand::Open { conn, .. } => {
                    let refuse = if self.leaving_since.is_some() {
                        Some("worker leaving")
                    } else if self.live.len() >= self.config.capacity {
                        Some("worker full")
                    } else {
                        None
                    };
                    if let Some(error) = refuse {
                        self.outgoing.push(NetEvent::OpenFailed {
                            conn,
                            error: error.into(),
                        });
                        continue;
                    }
                    let team = match &command {
                        NetCommand::Open {
                            kind: ConnKind::Team(team),
                            ..
                        } => *team,
                        _ => TeamId(0),
                    };
                    self.live.insert(
                        conn,
                        Held {
                            team,
                            messages: 0,
                            props: 0,
                            open: false,
                            closing: false,
                            orphan: false,
                        },
                    );
                    self.transport.execute(command);
                }
                other => {
                    if let NetCommand::Close { conn, .. } | NetCommand::Abort { conn } = &other
                        && let Some(held) = self.live.get_mut(conn)
                    {
                        held.closing = true;
                    }
                    self.transport.execute(other);
                }
            }
        }
    }

    /// A new leader's call: report every socket (open ones it adopts, ended
    /// ones it counts), then obey its epoch. Sockets still connecting are
    /// ended (it never heard of them); events not yet sent are dropped
    /// (what they counted is in the report; a socket they closed is
    /// reported ended). Ignored unless it names this incarnation and a
    /// newer epoch: the caller then hears nothing, and fences this worker.
    fn answer_adoption(&mut self, epoch: u64, incarnation: &str, reply: Option<String>) {
        let Some(reply) = reply else { return };
        if self.want.incarnation.as_deref() != Some(incarnation) || epoch <= self.epoch {
            return;
        }
        let mut sockets: Vec<AdoptedSocket> = self.ended.iter().map(|(_, s)| *s).collect();
        let mut orphaned = 0;
        for (&conn, held) in self.live.iter_mut() {
            if held.orphan {
                continue;
            }
            if held.open && !held.closing && !self.discarding {
                sockets.push(held.report(conn, true));
                continue;
            }
            // Ending (a fence, a close the old leader asked for) or not
            // open yet: reported as ended, and from now on nothing of it
            // is sent.
            if held.messages > 0 {
                sockets.push(held.report(conn, false));
            }
            held.orphan = true;
            orphaned += 1;
            if !self.discarding && !held.closing {
                self.transport.execute(NetCommand::Abort { conn });
            }
        }
        self.answer(&reply, epoch, incarnation, &sockets);
        let open = sockets.iter().filter(|s| s.open).count();
        info!(worker = %self.config.name, epoch, open, reported = sockets.len(), orphaned, "a new leader adopts this worker's sockets");
        self.epoch = epoch;
        self.expected = 1;
        self.sent = 0;
        self.ended_unreported = false;
        self.ended_due = false;
        self.drop_outgoing();
        self.discarding = false;
        if self.held.as_ref().is_some_and(|b| b.epoch <= epoch) {
            self.held = None;
        }
    }

    /// Sends `sockets` to a leader's call, in parts.
    fn answer(&self, reply: &str, epoch: u64, incarnation: &str, sockets: &[AdoptedSocket]) {
        let parts = sockets.len().div_ceil(SOCKETS_PER_PART).max(1);
        for (i, chunk) in sockets
            .chunks(SOCKETS_PER_PART)
            .chain(sockets.is_empty().then_some(&[][..]))
            .enumerate()
        {
            let part = Inventory {
                epoch,
                worker: self.config.name.clone(),
                incarnation: incarnation.to_owned(),
                part: i as u64 + 1,
                parts: parts as u64,
                sockets: chunk.to_vec(),
            };
            let body = Bytes::from(part.encode());
            if let Err(error) = self
                .runtime
                .block_on(self.client.publish(reply.to_owned(), body))
            {
                warn!(%error, "answering a leader's call failed");
            }
        }
    }

    /// Drops the events in hand unsent (and with them their oldest's read
    /// time).
    fn drop_outgoing(&mut self) {
        self.outgoing.clear();
        self.oldest_at = None;
    }

    /// Sends the events in hand as one batch.
    fn flush(&mut self) {
        self.flush_bye(false);
    }

    /// Sends the events in hand as one batch; with `bye`, even none, as
    /// the last.
    fn flush_bye(&mut self, bye: bool) {
        self.last_flush = Instant::now();
        if self.outgoing.is_empty() && !bye && !self.ended_due {
            return;
        }
        let Some(incarnation) = self
            .want
            .incarnation
            .clone()
            .or_else(|| self.fenced_from.clone())
        else {
            self.drop_outgoing();
            return;
        };
        self.sent += 1;
        let batch = EventBatch {
            epoch: self.epoch,
            worker: self.config.name.clone(),
            incarnation,
            seq: self.sent,
            events: std::mem::take(&mut self.outgoing),
            bye,
            ended: if std::mem::take(&mut self.ended_due) {
                self.ended.iter().map(|(_, s)| *s).collect()
            } else {
                Vec::new()
            },
            read_at_us: self.oldest_at.take().map_or(0, micros_since_epoch),
        };
        let subject = self.config.cluster.events(&self.config.name);
        let body = Bytes::from(batch.encode());
        // Waits while the connection's buffer is full: the sockets' reads
        // wait with it (their credits are not given back meanwhile).
        if let Err(error) = self.runtime.block_on(self.client.publish(subject, body)) {
            warn!(%error, "publishing an event batch failed");
        }
    }
}

/// Takes command batches from NATS, in order, into the worker's queue.
async fn take_commands(
    mut subscription: async_nats::Subscriber,
    queue: mpsc::Sender<(ToWorker, Option<String>)>,
    wake: Wake,
) {
    while let Some(message) = subscription.next().await {
        match ToWorker::decode(&message.payload) {
            Ok(batch) => {
                let reply = message.reply.map(|r| r.to_string());
                if queue.send((batch, reply)).await.is_err() {
                    return;
                }
                wake.wake();
            }
            Err(error) => warn!(%error, "a command batch that does not read; ignored"),
        }
    }
}

/// Holds the worker's lease as the loop asks: registers each new
/// incarnation, renews every quarter lease, marks it leaving, deletes it
/// at the end.
async fn hold_lease(
    store: async_nats::jetstream::kv::Store,
    name: String,
    capacity: usize,
    lease: Duration,
    mut desired: watch::Receiver<Desired>,
    view: Arc<Mutex<LeaseView>>,
    wake: Wake,
) {
    let report = |f: &dyn Fn(&mut LeaseView)| {
        if let Ok(mut v) = view.lock() {
            f(&mut v);
        }
        wake.wake();
    };
    let mut held: Option<WorkerLease> = None;
    let mut every = tokio::time::interval(lease / 4);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let want = desired.borrow_and_update().clone();
        if want.released {
            if let Some(lease) = held.take() {
                let _ = lease.release().await;
            }
            report(&|v| v.released = true);
            return;
        }
        match (&mut held, &want.incarnation) {
            (_, None) => {
                held = None;
                report(&|v| v.registered = None);
            }
            (Some(lease), Some(inc)) if &lease.value.incarnation == inc => {
                lease.value.leaving = want.leaving;
                match lease.renew().await {
                    Ok(()) => report(&|v| v.last_ok = Instant::now()),
                    Err(lease::RenewError::Lost) => {
                        held = None;
                        report(&|v| v.lost = true);
                    }
                    Err(lease::RenewError::Unreachable(error)) => {
                        warn!(%error, "renewing the worker lease");
                    }
                }
            }
            (_, Some(inc)) => {
                let value = WorkerValue {
                    incarnation: inc.clone(),
                    capacity,
                    leaving: want.leaving,
                };
                match WorkerLease::register(&store, &name, value).await {
                    Ok(lease) => {
                        info!(worker = %name, incarnation = %inc, "registered");
                        held = Some(lease);
                        let inc = inc.clone();
                        report(&move |v| {
                            v.registered = Some(inc.clone());
                            v.last_ok = Instant::now();
                            v.lost = false;
                        });
                    }
                    Err(error) => warn!(%error, "registering the worker"),
                }
            }
        }
        tokio::select! {
            _ = every.tick() => {}
            changed = desired.changed() => if changed.is_err() { return },
        }
    }
}

impl Held {
    fn report(&self, conn: ConnId, open: bool) -> AdoptedSocket {
        AdoptedSocket {
            team: self.team,
            conn,
            messages: self.messages,
            props: self.props,
            open,
        }
    }
}
