//! The message tap: the text of every `message`, as it comes off a team
//! socket, for a consumer on the I/O side (the NATS publisher, or a library
//! user's own code). The core only counts; the tap carries the text.
//!
//! It is bounded in bytes: a socket takes a share of the budget for each
//! message it hands over, and the consumer gives it back by dropping the
//! [`Tapped`] message when done with it (the publisher: once the broker has
//! acknowledged it). When the budget is spent, a socket with a message in
//! hand stops reading, so TCP flow control pushes back on the server, and
//! tells the core it has paused (a paused link is not a dead one). Nothing
//! is ever dropped: a socket that ends while holding a message hands it
//! over anyway, so the budget can be exceeded by at most one message per
//! socket. With no tap, no text is ever copied off a socket.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::PollSemaphore;

use crate::bridge::ConnId;
use crate::core::TeamEvent;
use crate::protocol::TeamId;

/// One message taken off a team socket. Holds its share of the tap's
/// budget until dropped.
#[derive(Debug)]
pub struct Tapped {
    /// The team.
    pub team: TeamId,
    /// The socket it came on.
    pub conn: ConnId,
    /// Its index among the messages read on that socket (0-based): with
    /// `conn`, names the message uniquely within a run.
    pub index: u64,
    /// The message text, unescaped.
    pub text: String,
    /// When it was read off the socket.
    pub received_at: SystemTime,
    /// Its share of the budget; `None` if it was handed over without one
    /// (a socket ending with a message in hand).
    _budget: Option<OwnedSemaphorePermit>,
}

/// What a tap consumer receives.
#[derive(Debug)]
pub enum Delivery {
    /// A message's text.
    Message(Tapped),
    /// A team lifecycle event from the core (joined, connected, dropped,
    /// left, stopped).
    Team(TeamEvent),
}

/// Creates a tap of `budget_bytes`: the sending half for the runtime, the
/// receiving half for the consumer.
pub fn tap(budget_bytes: usize) -> (Tap, TapReceiver) {
    let (tx, rx) = mpsc::unbounded_channel();
    let budget = Arc::new(Semaphore::new(budget_bytes.min(Semaphore::MAX_PERMITS)));
    (
        Tap {
            tx,
            budget: budget.clone(),
            cap: budget_bytes.min(Semaphore::MAX_PERMITS),
        },
        TapReceiver { rx, budget },
    )
}

/// The sending half; the runtime gives each socket a clone.
#[derive(Clone, Debug)]
pub struct Tap {
    tx: mpsc::UnboundedSender<Delivery>,
    budget: Arc<Semaphore>,
    cap: usize,
}

impl Tap {
    /// The budget share of a text: its bytes, plus one so that empty
    /// messages count too, capped at the whole budget so any message fits.
    fn share(&self, text: &str) -> u32 {
        let share = (text.len() + 1).min(self.cap.max(1));
        u32::try_from(share).unwrap_or(u32::MAX)
    }

    /// Forwards a team lifecycle event (from the driver; never waits:
    /// these are few, one per transition).
    pub fn team_event(&self, event: TeamEvent) {
        let _ = self.tx.send(Delivery::Team(event));
    }

    /// Bytes of budget free right now.
    pub fn free(&self) -> usize {
        self.budget.available_permits()
    }

    /// Whether the consumer is gone.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// A socket's handle on the tap: holds the message it could not hand over
/// yet, and waits for budget without polling.
pub(crate) struct SocketTap {
    tap: Tap,
    wait: PollSemaphore,
    team: TeamId,
    conn: ConnId,
    /// A message read but not handed over: the socket reads nothing more
    /// until it is.
    held: Option<(u64, String, SystemTime)>,
}

impl SocketTap {
    pub(crate) fn new(tap: &Tap, team: TeamId, conn: ConnId) -> SocketTap {
        SocketTap {
            wait: PollSemaphore::new(tap.budget.clone()),
            tap: tap.clone(),
            team,
            conn,
            held: None,
        }
    }

    /// Takes a message just read: hands it over if the budget allows, else
    /// holds it. Returns true if the socket must now pause.
    pub(crate) fn offer(&mut self, index: u64, text: &str) -> bool {
        let now = SystemTime::now();
        match self
            .tap
            .budget
            .clone()
            .try_acquire_many_owned(self.tap.share(text))
        {
            Ok(permit) => {
                self.deliver(index, text.to_owned(), now, Some(permit));
                false
            }
            Err(_) => {
                self.held = Some((index, text.to_owned(), now));
                true
            }
        }
    }

    /// Whether a message waits for budget.
    pub(crate) fn is_holding(&self) -> bool {
        self.held.is_some()
    }

    /// Ready once the held message (if any) is handed over.
    pub(crate) fn poll_release(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some((_, text, _)) = &self.held else {
            return Poll::Ready(());
        };
        let share = self.tap.share(text);
        match self.wait.poll_acquire_many(cx, share) {
            Poll::Ready(permit) => {
                if let Some((index, text, at)) = self.held.take() {
                    // `None`: the consumer is gone; nothing waits any more.
                    self.deliver(index, text, at, permit);
                }
                Poll::Ready(())
            }
            Poll::Pending => Poll::Pending,
        }
    }

    /// The socket is ending: the held message goes now, budget or not.
    pub(crate) fn release_now(&mut self) {
        if let Some((index, text, at)) = self.held.take() {
            self.deliver(index, text, at, None);
        }
    }

    fn deliver(
        &self,
        index: u64,
        text: String,
        received_at: SystemTime,
        budget: Option<OwnedSemaphorePermit>,
    ) {
        let _ = self.tap.tx.send(Delivery::Message(Tapped {
            team: self.team,
            conn: self.conn,
            index,
            text,
            received_at,
            _budget: budget,
        }));
    }
}

/// The consumer's half.
#[derive(Debug)]
pub struct TapReceiver {
    rx: mpsc::UnboundedReceiver<Delivery>,
    budget: Arc<Semaphore>,
}

impl TapReceiver {
    /// The next delivery; `None` once the run is over and everything was
    /// received.
    pub async fn recv(&mut self) -> Option<Delivery> {
        self.rx.recv().await
    }

    /// Up to `max` deliveries into `out`, waiting for at least one;
    /// returns how many (0 once the run is over).
    pub async fn recv_many(&mut self, out: &mut Vec<Delivery>, max: usize) -> usize {
        self.rx.recv_many(out, max).await
    }

    /// The next delivery if one is ready.
    pub fn try_recv(&mut self) -> Option<Delivery> {
        self.rx.try_recv().ok()
    }

    /// Bytes of budget free right now.
    pub fn free(&self) -> usize {
        self.budget.available_permits()
    }
}

impl Drop for TapReceiver {
    fn drop(&mut self) {
        // Sockets waiting for budget must not wait for a consumer that is gone.
        self.budget.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_holds_back_a_message_until_the_consumer_lets_one_go() {
        let (tap, mut rx) = tap(10);
        let mut socket = SocketTap::new(&tap, TeamId(1), ConnId(1));
        assert!(!socket.offer(0, "12345678")); // 9 bytes of 10
        assert!(socket.offer(1, "ab"), "no room: the socket pauses");
        assert!(socket.is_holding());
        let first = rx.try_recv().expect("first delivered");
        assert!(rx.try_recv().is_none());
        drop(first);
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert_eq!(socket.poll_release(&mut cx), Poll::Ready(()));
        match rx.try_recv() {
            Some(Delivery::Message(m)) => assert_eq!((m.index, m.text.as_str()), (1, "ab")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_message_larger_than_the_budget_still_passes_and_an_ending_socket_drops_nothing() {
        let (tap, mut rx) = tap(4);
        let mut socket = SocketTap::new(&tap, TeamId(1), ConnId(1));
        assert!(!socket.offer(0, "much longer than four"));
        assert!(socket.offer(1, "x"));
        socket.release_now();
        assert!(matches!(rx.try_recv(), Some(Delivery::Message(m)) if m.index == 0));
        assert!(matches!(rx.try_recv(), Some(Delivery::Message(m)) if m.index == 1));
    }
}
