//! The runtime's inbox: how socket tasks hand [`NetEvent`]s to the driver
//! thread, which hands them to the core in batches (`Core::handle`), at most
//! the configured batch (`max_events_per_step`) per step.
//!
//! The channel is bounded by credits, not by slots: a frame event costs one
//! of [`EVENT_CREDITS`], given back when the driver takes it for the core,
//! and a socket task with no credit waits (woken when one frees, never
//! polling) and stops reading its socket meanwhile, so TCP flow control
//! slows the peer. Credits are handed out first come, first served, so a
//! busy connection queues behind every other waiting connection for its next
//! one: each gets a fair share per step. Terminal events, and the last run
//! of messages a closing socket read, never wait and are never dropped; nor
//! do flow notices (at most one pause and one resume at a time). Each
//! connection thus adds at most six credit-free events at once (opened,
//! pause, resume, last run, the event read with it, terminal), so the
//! channel holds at most `EVENT_CREDITS` plus six per live connection. (A
//! cluster's leader adds its quiet notices, from the driver's own thread
//! between steps: at most two per worker socket each time.)

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering, fence};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::sync::Semaphore;
use tokio_util::sync::PollSemaphore;

use crate::bridge::NetEvent;

/// Credits of the inbox: frame events handed over and not yet taken by
/// the driver. At a 10ms tick that is 6.5 million events a second
/// before a socket has to wait; each is well under 128 bytes, so a full
/// inbox holds at most ~8 MiB.
pub const EVENT_CREDITS: usize = 65_536;

/// The driver is gone: nothing will read the event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the driver is gone")]
pub struct Disconnected;

/// `try_send` could not hand the event over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TrySendError {
    /// Every credit is taken: the driver must take events first.
    #[error("the inbox is full ({EVENT_CREDITS} events); the driver must take some first")]
    Full,
    /// The driver is gone.
    #[error("the driver is gone")]
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
    /// An event that should not wait for the next tick arrived (see
    /// [`EventSender::urgent`]).
    urgent: AtomicBool,
    driver: OnceLock<std::thread::Thread>,
}

impl Shared {
    /// With `credits` to hand out, no driver yet, awake.
    fn new(credits: usize) -> Arc<Shared> {
        Arc::new(Shared {
            credits: Arc::new(Semaphore::new(credits)),
            asleep: AtomicBool::new(false),
            urgent: AtomicBool::new(false),
            driver: OnceLock::new(),
        })
    }

    fn ring(&self) {
        // Pairs with the fence in `EventReceiver::wait`: either the driver
        // sees the event before it sleeps, or we see that it sleeps.
        fence(Ordering::SeqCst);
        if self.asleep.load(Ordering::Relaxed) && self.asleep.swap(false, Ordering::AcqRel) {
            self.wake();
        }
    }

    /// Rings whether or not the driver sleeps on the doorbell: it may be
    /// waiting for the next tick with work in hand, and this event should
    /// not wait for it.
    fn ring_urgent(&self) {
        self.urgent.store(true, Ordering::SeqCst);
        self.asleep.store(false, Ordering::SeqCst);
        self.wake();
    }

    fn wake(&self) {
        if let Some(driver) = self.driver.get() {
            driver.unpark();
        }
    }
}

/// Creates the inbox: the transport's sending half, the driver's receiving half.
pub fn channel() -> (EventSender, EventReceiver) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let shared = Shared::new(EVENT_CREDITS);
    (
        EventSender {
            tx,
            credit: None,
            shared: shared.clone(),
            held: false,
            urgent: false,
        },
        EventReceiver { rx, shared },
    )
}

/// Sending half of the inbox; each socket task holds a clone.
pub struct EventSender {
    tx: crossbeam_channel::Sender<Delivery>,
    shared: Arc<Shared>,
    /// Waits for a credit without polling; made on first need.
    credit: Option<PollSemaphore>,
    /// A credit taken and not yet spent.
    held: bool,
    /// Whether its events call for a step at once (see [`EventSender::urgent`]).
    urgent: bool,
}

impl Clone for EventSender {
    fn clone(&self) -> EventSender {
        EventSender {
            tx: self.tx.clone(),
            shared: self.shared.clone(),
            credit: None,
            held: false,
            urgent: self.urgent,
        }
    }
}

impl EventSender {
    /// A sender whose events do not wait for the driver's next tick: it
    /// steps as soon as one arrives. For the Global link, whose frames
    /// (a `team.connect` answer, a healthcheck) are what the fleet waits on:
    /// an answer frees a request slot and names a team's socket to dial, so
    /// with the in-flight cap a wave of requests would otherwise wait a tick
    /// per wave. Team sockets' messages are plenty and patient: they ride
    /// the tick.
    pub fn urgent(&self) -> EventSender {
        EventSender {
            urgent: true,
            ..self.clone()
        }
    }

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
                // Given back when the driver takes the event.
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
        if self.urgent {
            self.shared.ring_urgent();
        } else {
            self.shared.ring();
        }
        Ok(())
    }
}

/// Receiving half of the inbox, held by the driver.
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

    /// Whether an urgent event arrived since the last call (and forgets it).
    pub fn take_urgent(&self) -> bool {
        self.shared.urgent.swap(false, Ordering::SeqCst)
    }

    /// Whether an urgent event arrived and was not taken yet.
    pub fn has_urgent(&self) -> bool {
        self.shared.urgent.load(Ordering::SeqCst)
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
    /// A wake with no driver behind it: for a sidecar started outside a
    /// run (a test, a replay), where there is nothing to wake.
    pub fn unattached() -> Wake {
        Wake(Shared::new(0))
    }

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
    use crate::bridge::ConnId;

    fn alive(n: u64) -> NetEvent {
        NetEvent::Alive { conn: ConnId(n) }
    }

    #[test]
    fn credits_bound_frame_events_and_come_back_when_drained() {
        let (mut tx, rx) = channel();
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
        let (mut tx, rx) = channel();
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
    async fn senders_learn_the_driver_is_gone() {
        let (mut tx, rx) = channel();
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
