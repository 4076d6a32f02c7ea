//! The one seam between the deterministic core and the network.
//!
//! [`NetEvent`]s flow into the core over a crossbeam channel (the core
//! drains it, as `bevy_time` does with its time channel); [`NetCommand`]s
//! flow out as a plain list the driver drains after each tick. Frames are
//! decoded on the I/O side, so a bad frame still arrives here, as the typed
//! [`DecodeError`], to be counted by the core.
//!
//! The contract the transport keeps: every [`NetCommand::Open`] is answered
//! by exactly one terminal event, [`NetEvent::OpenFailed`] or (after
//! [`NetEvent::Opened`] and any number of frames) [`NetEvent::Closed`], even
//! when the core aborted the connection; nothing follows it. The core keeps
//! its own deadlines, so it never waits on the "eventually".
//!
//! The channel is bounded by credits, not by slots: a frame event costs one
//! of [`EVENT_CREDITS`], given back when the core drains it, and a socket
//! task with no credit waits (woken when one frees, never polling) and stops
//! reading its socket meanwhile, so TCP flow control slows the peer. Credits
//! are handed out first come, first served, so a busy connection queues
//! behind every other waiting connection for its next one: each gets a fair
//! share per tick. Terminal events, and the last run of messages a closing
//! socket read, never wait and are never dropped; nor do flow notices (at
//! most one pause and one resume at a time). Each connection thus adds at
//! most six credit-free events at once (opened, pause, resume, last run,
//! the event read with it, terminal), so the channel holds at most
//! `EVENT_CREDITS` plus six per live connection.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering, fence};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio_util::sync::PollSemaphore;

use crate::protocol::{DecodeError, GlobalServerEvent, TeamId};

/// Names one connection attempt. Fresh for every `Open`, never reused, so an
/// event from an abandoned attempt can never be mistaken for the current one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct ConnId(pub u64);

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "c{}", self.0)
    }
}

/// What a connection is for; decides which decoder the transport uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum ConnKind {
    /// The one Global API connection.
    Global,
    /// One team's connection.
    Team(TeamId),
}

/// A team frame other than a `message`: messages cross the bridge only as
/// runs ([`NetEvent::Messages`]), so the core has a single counting path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TeamControl {
    /// The team connection is ready.
    Hello,
    /// The answer to a `ping`.
    Pong {
        /// The ping's id.
        unique_id: u64,
    },
    /// The team left.
    TeamLeft {
        /// The team the server names.
        team_id: TeamId,
    },
}

/// A decoded inbound frame, already split by connection kind.
#[derive(Clone, Debug, PartialEq)]
pub enum Inbound {
    /// A frame on the Global connection.
    Global(Result<GlobalServerEvent, DecodeError>),
    /// A frame on a team connection, other than a `message`.
    Team(Result<TeamControl, DecodeError>),
}

/// The text of one outbound frame, encoded once by the core. Cloning shares
/// the buffer, so one healthcheck reply answers every request of a tick
/// without being encoded or copied again.
#[derive(Clone, PartialEq, Eq)]
pub struct Text(Bytes);

impl Text {
    /// The frame's text.
    pub fn as_str(&self) -> &str {
        // Built only from `String`s (see `From`), so always UTF-8.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The shared buffer, for the socket.
    pub fn bytes(&self) -> Bytes {
        self.0.clone()
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `other` is a clone of this text (one buffer, held once).
    pub fn shares_buffer(&self, other: &Text) -> bool {
        self.0.as_ptr() == other.0.as_ptr() && self.0.len() == other.0.len()
    }
}

impl From<String> for Text {
    fn from(text: String) -> Text {
        Text(Bytes::from(text))
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

/// Serialised as the JSON it holds (so snapshots show the frame, not an
/// escaped string), or as a string if it is not JSON.
impl Serialize for Text {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match serde_json::from_str::<serde_json::Value>(self.as_str()) {
            Ok(json) => json.serialize(serializer),
            Err(_) => serializer.serialize_str(self.as_str()),
        }
    }
}

/// Why a connection ended. Carried back so the core can log it and keep it
/// as the team's last error; every reason is handled the same way otherwise.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum CloseReason {
    /// The peer sent a close frame with this code (1005 when it sent none).
    Remote {
        /// The close code.
        code: u16,
    },
    /// We closed it, as a `NetCommand` asked.
    Local,
    /// The TCP connection was reset or ended without a close frame.
    Reset,
    /// The peer sent a frame or message above the configured limit.
    TooLarge,
    /// The connection's outbound queue overflowed: the peer stopped reading.
    Overflow,
    /// A write could not drain, or a message stayed incomplete, for longer
    /// than the pong timeout: the peer stalled the socket.
    Stalled(&'static str),
    /// The core gave up on the connection and asked for it to be dropped.
    Aborted,
    /// Any other transport error.
    Error(String),
}

impl CloseReason {
    /// Why [`CloseReason::Stalled`]: our writes could not drain.
    pub const PEER_NOT_READING: &'static str = "peer not reading";
    /// Why [`CloseReason::Stalled`]: a message was begun and not finished.
    pub const MESSAGE_INCOMPLETE: &'static str = "message left incomplete";
    /// Every reason a [`CloseReason::Stalled`] carries.
    pub(crate) const STALLS: [&'static str; 2] = [Self::PEER_NOT_READING, Self::MESSAGE_INCOMPLETE];

    /// A short, stable name for the kind of end, for counters.
    pub fn class(&self) -> &'static str {
        match self {
            CloseReason::Remote { .. } => "remote_close",
            CloseReason::Local => "local_close",
            CloseReason::Reset => "reset",
            CloseReason::TooLarge => "too_large",
            CloseReason::Overflow => "overflow",
            CloseReason::Stalled(_) => "stalled",
            CloseReason::Aborted => "aborted",
            CloseReason::Error(_) => "error",
        }
    }

    /// The reason whose [`class`](Self::class) is `class`, its detail (the
    /// close code, what stalled, the error text) left empty for the caller
    /// to fill in, as a decoder of recorded reasons does; `None` for a name
    /// that is no class.
    pub fn from_class(class: &str) -> Option<CloseReason> {
        Some(match class {
            "remote_close" => CloseReason::Remote { code: 0 },
            "local_close" => CloseReason::Local,
            "reset" => CloseReason::Reset,
            "too_large" => CloseReason::TooLarge,
            "overflow" => CloseReason::Overflow,
            "stalled" => CloseReason::Stalled(""),
            "aborted" => CloseReason::Aborted,
            "error" => CloseReason::Error(String::new()),
            _ => return None,
        })
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::Remote { code } => write!(f, "closed by peer ({code})"),
            CloseReason::Local => f.write_str("closed locally"),
            CloseReason::Reset => f.write_str("connection reset"),
            CloseReason::TooLarge => f.write_str("frame too large"),
            CloseReason::Overflow => f.write_str("outbound queue overflow"),
            CloseReason::Stalled(what) => write!(f, "stalled: {what}"),
            CloseReason::Aborted => f.write_str("aborted"),
            CloseReason::Error(e) => write!(f, "error: {e}"),
        }
    }
}

/// Inbound: what happened on the network.
#[derive(Clone, Debug, PartialEq)]
pub enum NetEvent {
    /// The websocket handshake completed.
    Opened {
        /// Which attempt.
        conn: ConnId,
    },
    /// The attempt failed before the handshake completed.
    OpenFailed {
        /// Which attempt.
        conn: ConnId,
        /// Why, for logs.
        error: String,
    },
    /// A frame arrived (other than a `message`: those come in runs).
    Received {
        /// On which connection.
        conn: ConnId,
        /// The decoded frame, or why it is bad input. Boxed: these are
        /// rare next to runs of messages, and the largest variant would
        /// otherwise size every event.
        frame: Box<Inbound>,
    },
    /// A run of consecutive `message` frames on a team connection, decoded
    /// and classified on the I/O side and handed over as one event: the
    /// core still does the counting, but pays for one event per run, not
    /// per message. A run never spans another frame, so order is kept. The
    /// only way messages reach the core (see [`crate::reader`]).
    Messages {
        /// On which connection.
        conn: ConnId,
        /// Index on this connection of the run's first message (0-based).
        first: u64,
        /// Messages in the run.
        count: u32,
        /// Of those, whose text contains `props`.
        props: u32,
    },
    /// A websocket control frame (ping or pong) arrived: a sign of life
    /// with no protocol content.
    Alive {
        /// On which connection.
        conn: ConnId,
    },
    /// The socket stopped reading because the message tap's consumer is
    /// behind (`paused`), or started again. A paused link is not dead: the
    /// peer's frames wait in TCP because we chose not to read them.
    Flow {
        /// On which connection.
        conn: ConnId,
        /// Whether reading is paused.
        paused: bool,
    },
    /// The connection ended.
    Closed {
        /// Which connection.
        conn: ConnId,
        /// Why.
        reason: CloseReason,
    },
}

impl NetEvent {
    /// The connection this event concerns.
    pub fn conn(&self) -> ConnId {
        match self {
            NetEvent::Opened { conn }
            | NetEvent::OpenFailed { conn, .. }
            | NetEvent::Received { conn, .. }
            | NetEvent::Messages { conn, .. }
            | NetEvent::Alive { conn }
            | NetEvent::Flow { conn, .. }
            | NetEvent::Closed { conn, .. } => *conn,
        }
    }
}

/// Outbound: what the core wants done on the network.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum NetCommand {
    /// Open a websocket. `url` is already normalised to `ws://` or `wss://`.
    Open {
        /// The id the transport must use in every event about this socket.
        conn: ConnId,
        /// Which decoder the transport applies to inbound frames.
        kind: ConnKind,
        /// Where to connect.
        url: String,
    },
    /// Send one text frame.
    Send {
        /// On which connection.
        conn: ConnId,
        /// The frame, encoded.
        text: Text,
    },
    /// Send a websocket-level ping (a control frame every RFC 6455 peer
    /// answers with a pong): how a silent Global link is probed, since the
    /// protocol's own `ping` exists only on team connections.
    Probe {
        /// Which connection.
        conn: ConnId,
    },
    /// Send a close frame with this code and wait (bounded) for the peer's.
    Close {
        /// Which connection.
        conn: ConnId,
        /// Close code; 1000 for a normal close.
        code: u16,
    },
    /// Drop the connection at once, without a close handshake (dead link).
    Abort {
        /// Which connection.
        conn: ConnId,
    },
}

/// The normal websocket close code.
pub const CLOSE_NORMAL: u16 = 1000;

/// Credits of the inbound bridge: frame events handed over and not yet
/// drained by the core. At a 10ms tick that is 6.5 million events a second
/// before a socket has to wait; each is well under 128 bytes, so a full
/// bridge holds at most ~8 MiB.
pub const EVENT_CREDITS: usize = 65_536;

/// The core is gone: nothing will read the event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the core is gone")]
pub struct Disconnected;

/// `try_send` could not hand the event over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TrySendError {
    /// Every credit is taken: drain the core first.
    #[error("the bridge is full ({EVENT_CREDITS} events); step the core first")]
    Full,
    /// The core is gone.
    #[error("the core is gone")]
    Disconnected,
}

/// One event in the channel, and whether it took a credit.
struct Delivery {
    event: NetEvent,
    paid: bool,
}

/// What both ends share: the credits, and the doorbell that wakes a
/// sleeping driver when an event arrives.
struct Shared {
    credits: Arc<Semaphore>,
    asleep: AtomicBool,
    driver: OnceLock<std::thread::Thread>,
}

impl Shared {
    fn ring(&self) {
        // Pairs with the fence in `EventReceiver::wait`: either the driver
        // sees the event before it sleeps, or we see that it sleeps.
        fence(Ordering::SeqCst);
        if self.asleep.load(Ordering::Relaxed) && self.asleep.swap(false, Ordering::AcqRel) {
            self.wake();
        }
    }

    fn wake(&self) {
        if let Some(driver) = self.driver.get() {
            driver.unpark();
        }
    }
}

/// Creates the bridge: the transport's sending half, the core's receiving half.
pub fn event_channel() -> (EventSender, EventReceiver) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let shared = Arc::new(Shared {
        credits: Arc::new(Semaphore::new(EVENT_CREDITS)),
        asleep: AtomicBool::new(false),
        driver: OnceLock::new(),
    });
    (
        EventSender {
            tx,
            credit: None,
            shared: shared.clone(),
            held: false,
        },
        EventReceiver { rx, shared },
    )
}

/// Sending half of the inbound bridge; each socket task holds a clone.
pub struct EventSender {
    tx: crossbeam_channel::Sender<Delivery>,
    shared: Arc<Shared>,
    /// Waits for a credit without polling; made on first need.
    credit: Option<PollSemaphore>,
    /// A credit taken and not yet spent.
    held: bool,
}

impl Clone for EventSender {
    fn clone(&self) -> EventSender {
        EventSender {
            tx: self.tx.clone(),
            shared: self.shared.clone(),
            credit: None,
            held: false,
        }
    }
}

impl EventSender {
    /// Ready when a credit is held for the next [`EventSender::send`];
    /// pending (and woken when a credit frees) otherwise.
    pub fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Disconnected>> {
        if self.held {
            return Poll::Ready(Ok(()));
        }
        let credits = &self.shared.credits;
        let poll = self
            .credit
            .get_or_insert_with(|| PollSemaphore::new(credits.clone()));
        match poll.poll_acquire(cx) {
            Poll::Ready(Some(permit)) => {
                // Given back by the core when it drains the event.
                permit.forget();
                self.held = true;
                Poll::Ready(Ok(()))
            }
            Poll::Ready(None) => Poll::Ready(Err(Disconnected)),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Hands over a frame event with the credit `poll_ready` took (or
    /// without one, if it took none: a caller bug that only loosens the bound).
    pub fn send(&mut self, event: NetEvent) -> Result<(), Disconnected> {
        let paid = std::mem::take(&mut self.held);
        self.deliver(Delivery { event, paid })
    }

    /// Hands over a frame event if a credit is free right now.
    pub fn try_send(&mut self, event: NetEvent) -> Result<(), TrySendError> {
        if !self.held {
            match self.shared.credits.try_acquire() {
                Ok(permit) => permit.forget(),
                Err(tokio::sync::TryAcquireError::NoPermits) => return Err(TrySendError::Full),
                Err(tokio::sync::TryAcquireError::Closed) => {
                    return Err(TrySendError::Disconnected);
                }
            }
            self.held = true;
        }
        self.send(event).map_err(|_| TrySendError::Disconnected)
    }

    /// Hands over a terminal event, or the last of what a closing socket
    /// read: never waits, never dropped (see the module doc for the bound).
    pub fn send_final(&self, event: NetEvent) -> Result<(), Disconnected> {
        self.deliver(Delivery { event, paid: false })
    }

    fn deliver(&self, delivery: Delivery) -> Result<(), Disconnected> {
        self.tx.send(delivery).map_err(|_| Disconnected)?;
        self.shared.ring();
        Ok(())
    }
}

/// Receiving half of the inbound bridge, held by the core.
pub struct EventReceiver {
    rx: crossbeam_channel::Receiver<Delivery>,
    shared: Arc<Shared>,
}

impl EventReceiver {
    /// Takes at most `max` events, in arrival order, and gives their credits
    /// back, waking the sockets that wait for one.
    pub fn drain(&self, max: usize, mut each: impl FnMut(NetEvent)) {
        let mut paid = 0;
        for delivery in self.rx.try_iter().take(max) {
            paid += usize::from(delivery.paid);
            each(delivery.event);
        }
        if paid > 0 {
            self.shared.credits.add_permits(paid);
        }
    }

    /// Whether no event waits.
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }

    /// Events waiting.
    pub fn len(&self) -> usize {
        self.rx.len()
    }

    /// What a driver sleeps on between ticks. The thread that takes it is
    /// the one a ring or a [`Wake`] wakes.
    pub fn doorbell(&self) -> Doorbell {
        self.shared.driver.get_or_init(std::thread::current);
        Doorbell {
            rx: self.rx.clone(),
            shared: self.shared.clone(),
        }
    }
}

/// Lets the driver sleep until an event arrives, without polling: senders
/// ring it (an atomic load each, a wake-up only when the driver sleeps).
pub struct Doorbell {
    rx: crossbeam_channel::Receiver<Delivery>,
    shared: Arc<Shared>,
}

impl Doorbell {
    /// Parks the calling thread until an event arrives, a [`Wake`] is used,
    /// or `deadline` passes (`None`: no deadline). May return early; never
    /// late.
    pub fn wait(&self, deadline: Option<Instant>) {
        let shared = &self.shared;
        shared.asleep.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if self.rx.is_empty() {
            match deadline {
                Some(at) => std::thread::park_timeout(at.saturating_duration_since(Instant::now())),
                None => std::thread::park(),
            }
        }
        shared.asleep.store(false, Ordering::SeqCst);
    }

    /// A handle that wakes the driver from [`Doorbell::wait`].
    pub fn waker(&self) -> Wake {
        Wake(self.shared.clone())
    }
}

impl Drop for EventReceiver {
    fn drop(&mut self) {
        // Wakes every socket waiting for a credit: there is no one to give
        // one back.
        self.shared.credits.close();
    }
}

/// Wakes the driver from [`Doorbell::wait`] (a stop request, a status
/// request).
#[derive(Clone)]
pub struct Wake(Arc<Shared>);

impl Wake {
    /// Wakes the driver now.
    pub fn wake(&self) {
        self.0.wake();
    }
}

impl fmt::Debug for Wake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Wake")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alive(n: u64) -> NetEvent {
        NetEvent::Alive { conn: ConnId(n) }
    }

    #[test]
    fn credits_bound_frame_events_and_come_back_when_drained() {
        let (mut tx, rx) = event_channel();
        for n in 0..EVENT_CREDITS as u64 {
            tx.try_send(alive(n)).expect("credit");
        }
        assert_eq!(tx.try_send(alive(0)), Err(TrySendError::Full));
        // Terminal events never wait.
        tx.send_final(alive(1)).expect("final");
        let mut seen = 0;
        rx.drain(10, |_| seen += 1);
        assert_eq!(seen, 10);
        for n in 0..10 {
            tx.try_send(alive(n)).expect("credit given back");
        }
        assert_eq!(tx.try_send(alive(0)), Err(TrySendError::Full));
    }

    #[tokio::test]
    async fn a_waiting_sender_is_woken_when_a_credit_frees() {
        let (mut tx, rx) = event_channel();
        while tx.try_send(alive(0)).is_ok() {}
        let mut waiting = tx.clone();
        let handed = tokio::spawn(async move {
            std::future::poll_fn(|cx| waiting.poll_ready(cx)).await?;
            waiting.send(alive(7))
        });
        tokio::task::yield_now().await;
        assert!(!handed.is_finished());
        rx.drain(1, |_| {});
        assert_eq!(handed.await.expect("task"), Ok(()));
    }

    #[tokio::test]
    async fn senders_learn_the_core_is_gone() {
        let (mut tx, rx) = event_channel();
        while tx.try_send(alive(0)).is_ok() {}
        let mut waiting = tx.clone();
        let handed =
            tokio::spawn(async move { std::future::poll_fn(|cx| waiting.poll_ready(cx)).await });
        tokio::task::yield_now().await;
        drop(rx);
        assert_eq!(handed.await.expect("task"), Err(Disconnected));
        assert_eq!(tx.send_final(alive(1)), Err(Disconnected));
    }
}
