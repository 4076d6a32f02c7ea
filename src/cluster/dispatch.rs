//! The leader's side of the transport for team sockets: the driver hands
//! it the core's team commands, it places each new socket on a worker,
//! sends each worker one batch per step, and feeds the workers' events into
//! the same inbox the Global socket's events go to, in the order each
//! worker sent them.
//!
//! It keeps the transport's contract for the core: every `Open` it takes
//! ends in exactly one terminal event. A worker answers for the sockets it
//! holds; when a worker is lost (see [`super::membership`]) this closes
//! every socket it held, in the core's eyes, with
//! [`CloseReason::WorkerLost`] (the worker closed them itself before its
//! lease could lapse), and an `Open` no worker has room for fails at once.

use std::collections::{BTreeMap, HashMap};
use std::future::poll_fn;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::ClusterConfig;
use super::book::{Book, Candidate};
use super::lease::Buckets;
use super::lease::{WorkerValue, worker_value};
use super::membership::Roster;
use super::rebalance::{self, Rebalance};
use super::wire::{Command, CommandBatch, EventBatch, Inventory, ToWorker};
use crate::bridge::{CloseReason, ConnId, NetCommand, NetEvent};
use crate::core::{AdoptedSocket, Core, RestoreError};
use crate::inbox::{EventSender, Wake};
use crate::protocol::TeamId;

/// Command batches waiting for the publisher task. When full, the driver
/// waits (its next step with it): commands are never dropped.
const OUTBOX: usize = 1024;

/// What a leader needs to run its teams on workers. Cheap to clone.
#[derive(Clone, Debug)]
pub struct LeaderLink {
    /// The cluster (its lease resolved from the buckets).
    pub config: ClusterConfig,
    /// This leader's epoch.
    pub epoch: u64,
    /// The NATS connection.
    pub client: async_nats::Client,
    /// The cluster's buckets.
    pub buckets: Buckets,
    /// The live workers.
    pub roster: Roster,
    /// Team sockets per live worker, as the dispatch last counted them
    /// (for the leader lease's value, which `status` reads).
    pub loads: Arc<Mutex<BTreeMap<String, usize>>>,
    /// Which worker holds each socket (for `/teams`).
    pub placed: super::Placed,
    /// Teams moved a second onto a worker that joins (0: none).
    pub move_rate: u32,
    /// The rebalancing's numbers (for `/metrics`).
    pub moves: Arc<super::Moves>,
    /// What crosses NATS (for `/metrics`).
    pub traffic: Arc<super::traffic::Traffic>,
}

/// The leader's team transport; lives on the driver thread.
pub struct Dispatch {
    link: LeaderLink,
    events: EventSender,
    book: Book,
    pending: BTreeMap<usize, Vec<Command>>,
    out: mpsc::Sender<(String, Bytes)>,
    loads_at: Instant,
    runtime: Handle,
    /// Answers to report calls, from their tasks.
    reports: (
        std::sync::mpsc::Sender<Vec<AdoptedSocket>>,
        std::sync::mpsc::Receiver<Vec<AdoptedSocket>>,
    ),
    /// Reports held until the core has taken the lost socket's close.
    held: Vec<AdoptedSocket>,
    /// Joined workers to call for a report.
    joins: Vec<(String, WorkerValue)>,
    /// A lost worker's sockets whose synthesized close the core has not
    /// taken yet.
    closing: std::collections::HashSet<ConnId>,
    /// Moves onto workers that joined.
    rebalance: Rebalance,
}

/// How often the shared loads are recounted (O(workers)).
const LOADS_EVERY: Duration = Duration::from_secs(1);

impl Dispatch {
    /// Starts the event ingress and the command publisher on `runtime`;
    /// events go to `events`, and a lost worker wakes `wake`.
    /// Blocks the calling thread (not a tokio worker) until the workers'
    /// events are subscribed to.
    pub fn new(link: LeaderLink, runtime: &Handle, events: EventSender, wake: Wake) -> Dispatch {
        link.roster.attach(wake);
        let reports = std::sync::mpsc::channel();
        let (out, commands) = mpsc::channel(OUTBOX);
        runtime.spawn(publish(link.client.clone(), commands, link.traffic.clone()));
        // Subscribed before any worker is called: its first batch after
        // answering must not be missed (a gap revokes it).
        let subject = link.config.all_events();
        match runtime.block_on(link.client.subscribe(subject.clone())) {
            Ok(batches) => {
                runtime.spawn(ingress(
                    link.clone(),
                    batches,
                    events.clone(),
                    reports.0.clone(),
                ));
            }
            Err(error) => warn!(%error, subject, "cannot take the workers' events"),
        }
        Dispatch {
            events,
            book: Book::default(),
            pending: BTreeMap::new(),
            out,
            loads_at: Instant::now(),
            runtime: runtime.clone(),
            reports,
            held: Vec::new(),
            joins: Vec::new(),
            closing: std::collections::HashSet::new(),
            rebalance: Rebalance::new(link.move_rate, Instant::now()),
            link,
        }
    }

    /// At a takeover, before the core's first step: calls every registered
    /// worker, adopts the sockets each reports into the book and the core
    /// ([`Core::adopt`]), and returns how many it adopted. A worker that
    /// does not answer within half a lease is revoked (it fences itself on
    /// its next renewal), and this waits three quarters of a lease more so
    /// that it has, before any of its teams may be opened elsewhere.
    pub fn adopt(&mut self, core: &mut Core, runtime: &Handle) -> Result<usize, RestoreError> {
        let lease = self.link.config.lease;
        let workers = runtime.block_on(registered(&self.link));
        for (name, value) in &workers {
            self.link.roster.seen(name, value.clone(), Instant::now());
        }
        let answers = runtime.block_on(call(&self.link, &workers, lease / 2, ToWorker::adopt));
        // Joiners that did not answer (or were not called) get a report
        // call from `poll`.
        self.joins = self
            .link
            .roster
            .take_joined()
            .into_iter()
            .filter(|(name, value)| {
                !answers.contains_key(&(name.clone(), value.incarnation.clone()))
            })
            .collect();
        let mut sockets = Vec::new();
        let mut silent = 0;
        for (name, value) in &workers {
            match answers.get(&(name.clone(), value.incarnation.clone())) {
                Some(reported) => {
                    let worker: Arc<str> = Arc::from(name.as_str());
                    for socket in reported.iter().filter(|s| s.open) {
                        self.book.adopt(socket.conn, name, &value.incarnation);
                        self.placed(|p| {
                            p.insert(socket.conn, (socket.team, worker.clone()));
                        });
                    }
                    sockets.extend_from_slice(reported);
                }
                None => {
                    warn!(worker = %name, "no answer to the new leader's call: revoking it");
                    self.link.roster.revoke(name, &value.incarnation);
                    let _ = runtime.block_on(self.link.buckets.workers.delete(name));
                    silent += 1;
                }
            }
        }
        if silent > 0 {
            std::thread::sleep(lease * 3 / 4);
        }
        let refused = core.adopt(&sockets)?;
        for &conn in &refused {
            self.execute(NetCommand::Abort { conn });
            self.placed(|p| {
                p.remove(&conn);
            });
        }
        let adopted = sockets.iter().filter(|s| s.open).count() - refused.len();
        info!(
            workers = workers.len() - silent,
            silent,
            adopted,
            refused = refused.len(),
            ended = sockets.iter().filter(|s| !s.open).count(),
            "took over the workers' sockets"
        );
        Ok(adopted)
    }

    /// Updates the shared map of which worker holds each socket.
    fn placed(
        &self,
        change: impl FnOnce(&mut std::collections::HashMap<ConnId, (TeamId, Arc<str>)>),
    ) {
        change(&mut self.link.placed.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// Whether the socket `conn` is a worker's (else it is the leader's
    /// own: Global).
    pub fn owns(&self, conn: ConnId) -> bool {
        self.book.holder_of(conn).is_some()
    }

    /// Takes one team command (an `Open` of a team, or a command for a
    /// socket it [owns](Self::owns)).
    pub fn execute(&mut self, command: NetCommand) {
        let Some(command) = Command::from_net(command) else {
            return;
        };
        let conn = command.conn();
        let holder = match &command {
            Command::Open { team, .. } => match self.place(conn, *team) {
                Some(holder) => {
                    let worker = Arc::from(self.book.holder(holder).worker.as_str());
                    let team = *team;
                    self.placed(|p| {
                        p.insert(conn, (team, worker));
                    });
                    holder
                }
                None => {
                    let _ = self.events.send_final(NetEvent::OpenFailed {
                        conn,
                        error: "no worker has room".into(),
                    });
                    return;
                }
            },
            _ => match self.book.holder_of(conn) {
                Some(holder) => holder,
                None => return,
            },
        };
        self.pending.entry(holder).or_default().push(command);
    }

    /// Places `conn`, a new socket of `team`, on a live worker that is not
    /// leaving and has room; its holder.
    fn place(&mut self, conn: ConnId, team: TeamId) -> Option<usize> {
        let mut live: Vec<(String, String, usize)> = Vec::new();
        self.link.roster.each_live(|name, value| {
            if !value.leaving {
                live.push((name.to_owned(), value.incarnation.clone(), value.capacity));
            }
        });
        let candidates: Vec<Candidate<'_>> = live
            .iter()
            .map(|(worker, incarnation, capacity)| Candidate {
                worker,
                incarnation,
                capacity: *capacity,
            })
            .collect();
        self.book.open(conn, team, &candidates)
    }

    /// Sends each worker the step's commands, one batch each. Blocks while
    /// the outbox is full: NATS is behind, and the driver waits with it.
    pub fn flush(&mut self) {
        for (holder, commands) in std::mem::take(&mut self.pending) {
            let Some(seq) = self.book.next_seq(holder) else {
                continue; // lost
            };
            let h = self.book.holder(holder);
            let batch = CommandBatch {
                epoch: self.link.epoch,
                incarnation: h.incarnation.clone(),
                seq,
                commands,
            };
            let subject = self.link.config.commands(&h.worker);
            if self
                .out
                .blocking_send((subject, Bytes::from(batch.encode())))
                .is_err()
            {
                warn!("the command publisher is gone; commands dropped");
            }
        }
    }

    /// Notes the terminal events of worker sockets as the core takes them.
    pub fn observe(&mut self, event: &NetEvent) {
        if let NetEvent::Closed { conn, .. } | NetEvent::OpenFailed { conn, .. } = event {
            self.book.ended(*conn);
            self.closing.remove(conn);
            self.placed(|p| {
                p.remove(conn);
            });
        }
    }

    /// Tells the core which sockets' workers went quiet or were heard again,
    /// closes, in the core's eyes, every socket of each worker lost since
    /// the last call (O(sockets) per change, which is rare), calls each
    /// worker that joined for what its ended sockets read, and recounts
    /// the shared loads once a second. Returns the readings reported, for
    /// [`Core::late_reports`]: a lost socket's only once the core has taken
    /// its close.
    pub fn poll(&mut self) -> Vec<AdoptedSocket> {
        if self.loads_at.elapsed() >= LOADS_EVERY {
            self.loads_at = Instant::now();
            let loads = self.loads();
            if let Ok(mut shared) = self.link.loads.lock() {
                *shared = loads;
            }
        }
        for change in self.link.roster.take_quiet() {
            let conns = self.book.held_by(&change.worker, &change.incarnation);
            for &conn in &conns {
                let _ = self.events.send_final(NetEvent::Quiet {
                    conn,
                    quiet: change.quiet,
                });
            }
            debug!(worker = %change.worker, sockets = conns.len(), quiet = change.quiet, "told the core");
        }
        for lost in self.link.roster.take_lost() {
            let Some((holder, conns)) = self.book.lose(&lost.worker, &lost.incarnation) else {
                continue;
            };
            self.pending.remove(&holder);
            for &conn in &conns {
                let _ = self.events.send_final(NetEvent::Closed {
                    conn,
                    reason: CloseReason::WorkerLost,
                });
            }
            self.closing.extend(conns.iter().copied());
            self.placed(|p| {
                for conn in &conns {
                    p.remove(conn);
                }
            });
            warn!(worker = %lost.worker, sockets = conns.len(), why = lost.why, "closing a lost worker's sockets");
        }
        let mut joined = std::mem::take(&mut self.joins);
        joined.extend(self.link.roster.take_joined());
        for (name, value) in &joined {
            if !value.leaving {
                self.plan_moves(name);
            }
        }
        self.move_some();
        if !joined.is_empty() {
            let (link, answers) = (self.link.clone(), self.reports.0.clone());
            self.runtime.spawn(async move {
                let wait = link.config.lease / 2;
                for (_, sockets) in call(&link, &joined, wait, ToWorker::report).await {
                    let _ = answers.send(sockets);
                }
            });
        }
        while let Ok(sockets) = self.reports.1.try_recv() {
            self.held.extend(sockets.into_iter().filter(|s| !s.open));
        }
        if self.held.is_empty() {
            return Vec::new();
        }
        // Until the core has taken the socket's end (and given it up, if
        // its worker did): a reading applied before that would be lost.
        let (closing, book) = (&self.closing, &self.book);
        let (wait, ready): (Vec<_>, Vec<_>) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|s| closing.contains(&s.conn) || book.holder_of(s.conn).is_some());
        self.held = wait;
        ready
    }

    /// Sockets on each live worker, by name.
    pub fn loads(&self) -> BTreeMap<String, usize> {
        self.book.loads()
    }

    /// `to` joined: plans the moves onto it (O(sockets), once per join).
    fn plan_moves(&mut self, to: &str) {
        let placed = self.link.placed.lock().unwrap_or_else(|e| e.into_inner());
        let queued = self.rebalance.joined(
            to,
            placed
                .iter()
                .map(|(&conn, (team, worker))| rebalance::Placed {
                    conn,
                    team: *team,
                    worker,
                }),
        );
        drop(placed);
        if queued > 0 {
            info!(
                worker = to,
                teams = queued,
                rate = self.link.move_rate,
                "moving teams onto a worker that joined"
            );
        }
    }

    /// Asks the holders of the moves now due to close those sockets, and
    /// sends the closes at once (no step may be due).
    fn move_some(&mut self) {
        if self.rebalance.queued() == 0 {
            return;
        }
        let mut room: BTreeMap<String, usize> = BTreeMap::new();
        self.link.roster.each_live(|name, value| {
            if !value.leaving {
                room.insert(name.to_owned(), value.capacity);
            }
        });
        for (name, load) in self.book.loads() {
            if let Some(free) = room.get_mut(&name) {
                *free = free.saturating_sub(load);
            }
        }
        let placed = self.link.placed.clone();
        let placed = placed.lock().unwrap_or_else(|e| e.into_inner());
        let (book, closing) = (&self.book, &self.closing);
        let due = self.rebalance.due(Instant::now(), |conn, to| {
            let held = book.holder_of(conn).is_some() && !closing.contains(&conn);
            let ranks = placed
                .get(&conn)
                .is_some_and(|(team, from)| super::placement::prefers(*team, to, from));
            match room.get_mut(to) {
                Some(free) if held && ranks && *free > 0 => {
                    *free -= 1;
                    true
                }
                _ => false,
            }
        });
        drop(placed);
        for (conn, _) in &due {
            if let Some(holder) = self.book.holder_of(*conn) {
                self.pending
                    .entry(holder)
                    .or_default()
                    .push(Command::Close {
                        conn: *conn,
                        code: crate::bridge::CLOSE_NORMAL,
                    });
            }
        }
        let moves = &self.link.moves;
        moves
            .asked
            .store(self.rebalance.asked, std::sync::atomic::Ordering::Relaxed);
        moves.queued.store(
            self.rebalance.queued() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        if !due.is_empty() {
            self.flush();
        }
    }

    /// When the next move is due, for the driver's sleep.
    pub fn next_wake(&self) -> Option<Instant> {
        self.rebalance.next_due()
    }
}

/// The workers registered now, by name: read from the bucket (the
/// roster's watch may not have caught up), three tries of a third of a
/// lease each (a NATS cluster may still be electing the bucket's leader),
/// and whatever the roster has seen besides.
async fn registered(link: &LeaderLink) -> Vec<(String, WorkerValue)> {
    let store = &link.buckets.workers;
    let list = || async {
        let mut found = Vec::new();
        let mut keys = store.keys().await.ok()?;
        while let Some(key) = keys.next().await {
            let key = key.ok()?;
            if let Some(value) = store
                .get(&key)
                .await
                .ok()?
                .as_deref()
                .and_then(worker_value)
            {
                found.push((key, value));
            }
        }
        Some(found)
    };
    let mut found: BTreeMap<String, WorkerValue> = BTreeMap::new();
    for attempt in 1..=3 {
        match tokio::time::timeout(link.config.lease / 3, list()).await {
            Ok(Some(listed)) => {
                found.extend(listed);
                break;
            }
            _ => warn!(attempt, "listing the workers failed"),
        }
    }
    for (name, value) in link.roster.live() {
        found.entry(name).or_insert(value);
    }
    found.into_iter().collect()
}

/// Calls each worker (to adopt, or for a report); the complete answers by
/// (worker, incarnation), within `wait`.
async fn call(
    link: &LeaderLink,
    workers: &[(String, WorkerValue)],
    wait: Duration,
    body: fn(u64, &str) -> Vec<u8>,
) -> HashMap<(String, String), Vec<AdoptedSocket>> {
    let mut done = HashMap::new();
    if workers.is_empty() {
        return done;
    }
    let inbox = link.client.new_inbox();
    let Ok(mut replies) = link.client.subscribe(inbox.clone()).await else {
        return done;
    };
    for (name, value) in workers {
        let body = Bytes::from(body(link.epoch, &value.incarnation));
        if let Err(error) = link
            .client
            .publish_with_reply(link.config.commands(name), inbox.clone(), body)
            .await
        {
            warn!(%error, worker = %name, "calling a worker");
        }
    }
    let _ = link.client.flush().await;
    let mut partial: HashMap<(String, String), (u64, Vec<AdoptedSocket>)> = HashMap::new();
    let deadline = tokio::time::Instant::now() + wait;
    while done.len() < workers.len() {
        let Ok(Some(message)) = tokio::time::timeout_at(deadline, replies.next()).await else {
            break;
        };
        let part = match Inventory::decode(&message.payload) {
            Ok(part) if part.epoch == link.epoch => part,
            Ok(_) => continue,
            Err(error) => {
                warn!(%error, "an answer that does not read; ignored");
                continue;
            }
        };
        let key = (part.worker.clone(), part.incarnation.clone());
        let entry = partial.entry(key.clone()).or_default();
        entry.0 += 1;
        entry.1.extend(part.sockets);
        if entry.0 == part.parts
            && let Some((_, sockets)) = partial.remove(&key)
        {
            done.insert(key, sockets);
        }
    }
    done
}

/// Publishes command batches in order.
async fn publish(
    client: async_nats::Client,
    mut commands: mpsc::Receiver<(String, Bytes)>,
    traffic: Arc<super::traffic::Traffic>,
) {
    while let Some((subject, body)) = commands.recv().await {
        traffic.command_batch(body.len());
        if let Err(error) = client.publish(subject, body).await {
            warn!(%error, "publishing a command batch failed");
        }
    }
}

/// A revoked incarnation's batch: what came between is lost, but each
/// socket it says ended has (break before make holds), so the core gives
/// it up at once (`worker lost`) rather than at the worker's loss; its
/// reading comes when the worker registers again. `Err`: the driver is
/// gone.
fn ends_of_revoked(batch: Vec<NetEvent>, events: &mut EventSender) -> Result<(), ()> {
    for event in batch {
        let ended = match event {
            NetEvent::Closed { conn, .. } => NetEvent::Closed {
                conn,
                reason: CloseReason::WorkerLost,
            },
            failed @ NetEvent::OpenFailed { .. } => failed,
            _ => continue,
        };
        events.send_final(ended).map_err(|_| ())?;
    }
    Ok(())
}

/// Whether the worker sending these is fencing: it gives sockets up.
fn fencing(batch: &[NetEvent]) -> bool {
    batch.iter().any(|e| {
        matches!(
            e,
            NetEvent::Closed {
                reason: CloseReason::WorkerLost,
                ..
            }
        )
    })
}

/// Takes the workers' event batches into the inbox: only this epoch's,
/// only from live workers, in sequence. A batch out of sequence means NATS
/// dropped one (a slow consumer, a reconnect): that worker's incarnation
/// is revoked (its lease deleted; it fences itself on its next renewal)
/// and nothing more of it is taken; its sockets are closed in the core's
/// eyes once the worker is lost.
async fn ingress(
    link: LeaderLink,
    mut batches: async_nats::Subscriber,
    mut events: EventSender,
    reports: std::sync::mpsc::Sender<Vec<AdoptedSocket>>,
) {
    let mut next: HashMap<(String, String), u64> = HashMap::new();
    while let Some(message) = batches.next().await {
        link.traffic.event_batch(message.payload.len());
        let batch = match EventBatch::decode(&message.payload) {
            Ok(batch) => batch,
            Err(error) => {
                warn!(%error, subject = %message.subject, "an event batch that does not read; ignored");
                continue;
            }
        };
        if batch.epoch != link.epoch || !link.roster.is_live(&batch.worker, &batch.incarnation) {
            debug!(
                worker = batch.worker,
                epoch = batch.epoch,
                "events of another epoch or a gone worker"
            );
            continue;
        }
        let key = (batch.worker, batch.incarnation);
        let expected = next.entry(key.clone()).or_insert(1);
        if *expected == 0 {
            if ends_of_revoked(batch.events, &mut events).is_err() {
                return; // the driver is gone
            }
            continue;
        }
        if batch.seq != *expected {
            warn!(worker = %key.0, expected = *expected, got = batch.seq, "events lost in transit; revoking the worker");
            *expected = 0;
            link.roster.revoke(&key.0, &key.1);
            let _ = link.buckets.workers.delete(&key.0).await;
            continue;
        }
        *expected += 1;
        if !batch.events.is_empty() {
            link.traffic.hop_from(batch.read_at_us);
        }
        if !batch.ended.is_empty() {
            let _ = reports.send(batch.ended);
        }
        if fencing(&batch.events) {
            // Nothing new goes to it (its lease's lapse or its next
            // incarnation makes it lost).
            link.roster.revoke(&key.0, &key.1);
        }
        for event in batch.events {
            if matches!(event, NetEvent::Quiet { .. }) {
                continue; // the leader's word about a worker, not a worker's
            }
            let terminal = matches!(event, NetEvent::Closed { .. } | NetEvent::OpenFailed { .. });
            let sent = if terminal {
                events.send_final(event)
            } else {
                match poll_fn(|cx| events.poll_ready(cx)).await {
                    Ok(()) => events.send(event),
                    Err(e) => Err(e),
                }
            };
            if sent.is_err() {
                return; // the driver is gone
            }
        }
        if batch.bye {
            link.roster.left(&key.0, &key.1);
        }
    }
}
