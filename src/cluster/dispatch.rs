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
use tracing::{debug, warn};

use super::ClusterConfig;
use super::book::{Book, Candidate};
use super::lease::Buckets;
use super::membership::Roster;
use super::wire::{Command, CommandBatch, EventBatch};
use crate::bridge::{CloseReason, ConnId, NetCommand, NetEvent};
use crate::inbox::{EventSender, Wake};

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
}

/// The leader's team transport; lives on the driver thread.
pub struct Dispatch {
    link: LeaderLink,
    events: EventSender,
    book: Book,
    pending: BTreeMap<usize, Vec<Command>>,
    out: mpsc::Sender<(String, Bytes)>,
    loads_at: Instant,
}

/// How often the shared loads are recounted (O(workers)).
const LOADS_EVERY: Duration = Duration::from_secs(1);

impl Dispatch {
    /// Starts the event ingress and the command publisher on `runtime`;
    /// events go to `events`, and a lost worker wakes `wake`.
    pub fn new(link: LeaderLink, runtime: &Handle, events: EventSender, wake: Wake) -> Dispatch {
        link.roster.attach(wake);
        let (out, commands) = mpsc::channel(OUTBOX);
        runtime.spawn(publish(link.client.clone(), commands));
        runtime.spawn(ingress(link.clone(), events.clone()));
        Dispatch {
            link,
            events,
            book: Book::default(),
            pending: BTreeMap::new(),
            out,
            loads_at: Instant::now(),
        }
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
                Some(holder) => holder,
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
    fn place(&mut self, conn: ConnId, team: crate::protocol::TeamId) -> Option<usize> {
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
        }
    }

    /// Closes, in the core's eyes, every socket of each worker lost since
    /// the last call (O(sockets) per loss, which is rare), and recounts the
    /// shared loads once a second.
    pub fn poll(&mut self) {
        if self.loads_at.elapsed() >= LOADS_EVERY {
            self.loads_at = Instant::now();
            let loads = self.loads();
            if let Ok(mut shared) = self.link.loads.lock() {
                *shared = loads;
            }
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
            warn!(worker = %lost.worker, sockets = conns.len(), why = lost.why, "closing a lost worker's sockets");
        }
    }

    /// Sockets on each live worker, by name.
    pub fn loads(&self) -> BTreeMap<String, usize> {
        self.book.loads()
    }
}

/// Publishes command batches in order.
async fn publish(client: async_nats::Client, mut commands: mpsc::Receiver<(String, Bytes)>) {
    while let Some((subject, body)) = commands.recv().await {
        if let Err(error) = client.publish(subject, body).await {
            warn!(%error, "publishing a command batch failed");
        }
    }
}

/// Takes the workers' event batches into the inbox: only this epoch's,
/// only from live workers, in sequence. A batch out of sequence means NATS
/// dropped one (a slow consumer, a reconnect): that worker's incarnation
/// is revoked (its lease deleted; it fences itself on its next renewal)
/// and nothing more of it is taken; its sockets are closed in the core's
/// eyes once the worker is lost.
async fn ingress(link: LeaderLink, mut events: EventSender) {
    let subject = link.config.all_events();
    let mut batches = match link.client.subscribe(subject.clone()).await {
        Ok(batches) => batches,
        Err(error) => {
            warn!(%error, subject, "cannot take the workers' events");
            return;
        }
    };
    let mut next: HashMap<(String, String), u64> = HashMap::new();
    while let Some(message) = batches.next().await {
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
            continue; // revoked
        }
        if batch.seq != *expected {
            warn!(worker = %key.0, expected = *expected, got = batch.seq, "events lost in transit; revoking the worker");
            *expected = 0;
            link.roster.revoke(&key.0, &key.1);
            let _ = link.buckets.workers.delete(&key.0).await;
            continue;
        }
        *expected += 1;
        for event in batch.events {
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
