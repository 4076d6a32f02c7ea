//! What the transport and one socket task share: the frames queued for the
//! socket, and, once set, why it must end. One small allocation per socket
//! (a tokio channel would preallocate a block of slots for each of ten
//! thousand mostly idle sockets); frames are rare here, a ping every few
//! seconds, so a lock held for a push or a pop is all they need.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Context;

use futures_util::task::AtomicWaker;

use crate::bridge::{CloseReason, Text};

/// What the transport asks a connection task to do.
#[derive(Debug)]
pub(crate) enum Outgoing {
    /// Send a text frame.
    Text(Text),
    /// Send a websocket ping.
    Probe,
    /// Send a close frame, then wait for the peer's.
    Close(u16),
}

#[derive(Default)]
struct Inner {
    queue: VecDeque<Outgoing>,
    /// Bytes held by the queued texts, each buffer once.
    unsent: usize,
    end: Option<CloseReason>,
}

impl Inner {
    /// What queuing `item` adds to `unsent`: nothing for a clone of the
    /// text queued just before it (one healthcheck reply answering a burst
    /// of requests is held once).
    fn cost(&self, item: &Outgoing) -> usize {
        match (item, self.queue.back()) {
            (Outgoing::Text(text), Some(Outgoing::Text(last))) if text.shares_buffer(last) => 0,
            (Outgoing::Text(text), _) => text.len(),
            _ => 0,
        }
    }
}

/// A socket's mailbox.
pub(crate) struct Mailbox {
    inner: Mutex<Inner>,
    /// Something was posted since the task last looked: lets the task skip
    /// the lock on the many polls where nothing was.
    posted: AtomicBool,
    /// An end was asked for.
    ending: AtomicBool,
    /// The task is over: nothing posted will be read.
    ended: AtomicBool,
    waker: AtomicWaker,
    capacity: usize,
    max_unsent: usize,
}

/// Why a frame could not be queued.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PostError {
    /// The queue is full, in frames or in bytes: the peer is not reading.
    Full,
    /// The task ended.
    Ended,
}

impl Mailbox {
    /// A mailbox for at most `capacity` frames and, beyond the first text
    /// queued, `max_unsent` bytes of text (or twice the text being queued,
    /// if larger: two of the largest replies always fit).
    pub(crate) fn new(capacity: usize, max_unsent: usize) -> Arc<Mailbox> {
        Arc::new(Mailbox {
            inner: Mutex::new(Inner::default()),
            posted: AtomicBool::new(false),
            ending: AtomicBool::new(false),
            ended: AtomicBool::new(false),
            waker: AtomicWaker::new(),
            capacity,
            max_unsent,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Only pushes and pops happen under the lock: a panic cannot leave
        // the queue half-changed, so a poisoned lock is still sound.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn notify(&self) {
        self.posted.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Queues a frame for the socket (the transport's side).
    pub(crate) fn post(&self, item: Outgoing) -> Result<(), PostError> {
        if self.ended.load(Ordering::Acquire) {
            return Err(PostError::Ended);
        }
        {
            let mut inner = self.lock();
            if inner.queue.len() >= self.capacity {
                return Err(PostError::Full);
            }
            let cost = inner.cost(&item);
            let budget = self.max_unsent.max(cost.saturating_mul(2));
            if inner.unsent > 0 && inner.unsent.saturating_add(cost) > budget {
                return Err(PostError::Full);
            }
            inner.unsent += cost;
            inner.queue.push_back(item);
        }
        self.notify();
        Ok(())
    }

    /// Tells the task to end with `reason` (the first reason given wins).
    pub(crate) fn end(&self, reason: CloseReason) {
        self.lock().end.get_or_insert(reason);
        self.ending.store(true, Ordering::Release);
        self.notify();
    }

    /// The task's side: ready with the reason once an end was asked for;
    /// otherwise registers to be woken by the next post.
    pub(crate) fn poll_end(&self, cx: &mut Context<'_>) -> std::task::Poll<CloseReason> {
        self.waker.register(cx.waker());
        if self.ending.load(Ordering::Acquire)
            && let Some(reason) = self.lock().end.clone()
        {
            return std::task::Poll::Ready(reason);
        }
        std::task::Poll::Pending
    }

    /// Whether the task is over.
    pub(crate) fn is_ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    /// The task's side: takes the next frame, if any, else registers to be
    /// woken by the next post.
    pub(crate) fn poll_take(&self, cx: &mut Context<'_>) -> Option<Outgoing> {
        self.waker.register(cx.waker());
        if !self.posted.swap(false, Ordering::AcqRel) {
            return None;
        }
        let mut inner = self.lock();
        let item = inner.queue.pop_front();
        if let Some(Outgoing::Text(text)) = &item {
            let shared = matches!(inner.queue.front(), Some(Outgoing::Text(next)) if next.shares_buffer(text));
            if !shared {
                inner.unsent = inner.unsent.saturating_sub(text.len());
            }
        }
        if !inner.queue.is_empty() {
            // More to take: keep the flag up for the next call.
            self.posted.store(true, Ordering::Release);
        }
        item
    }

    /// The task is over (it reported its end).
    pub(crate) fn close(&self) {
        self.ended.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_come_out_in_order_and_the_first_end_asked_for_is_kept() {
        let mailbox = Mailbox::new(2, 1024);
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(mailbox.poll_take(&mut cx).is_none());
        assert!(mailbox.poll_end(&mut cx).is_pending());
        mailbox.post(Outgoing::Probe).expect("room");
        mailbox.post(Outgoing::Close(1000)).expect("room");
        assert_eq!(mailbox.post(Outgoing::Probe), Err(PostError::Full));
        assert!(matches!(mailbox.poll_take(&mut cx), Some(Outgoing::Probe)));
        mailbox.end(CloseReason::Aborted);
        mailbox.end(CloseReason::Overflow);
        assert_eq!(
            mailbox.poll_end(&mut cx),
            std::task::Poll::Ready(CloseReason::Aborted)
        );
        mailbox.close();
        assert_eq!(mailbox.post(Outgoing::Probe), Err(PostError::Ended));
    }

    fn text(len: usize) -> Text {
        Text::from("x".repeat(len))
    }

    #[test]
    fn unsent_text_is_bounded_in_bytes_and_a_shared_reply_is_held_once() {
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mailbox = Mailbox::new(1024, 1000);
        // One reply answering a burst of requests: one buffer, held once.
        let reply = text(400);
        for _ in 0..100 {
            mailbox.post(Outgoing::Text(reply.clone())).expect("shared");
        }
        // A new reply per request, never read: refused past the budget.
        mailbox
            .post(Outgoing::Text(text(400)))
            .expect("800 bytes held");
        assert_eq!(
            mailbox.post(Outgoing::Text(text(400))),
            Err(PostError::Full)
        );
        // Reading frees the room again.
        for _ in 0..100 {
            assert!(matches!(
                mailbox.poll_take(&mut cx),
                Some(Outgoing::Text(_))
            ));
        }
        mailbox.post(Outgoing::Text(text(400))).expect("room again");
        // A text above the budget still fits into an empty queue, and one
        // more like it: the largest reply is never refused for its size.
        let big = Mailbox::new(1024, 1000);
        big.post(Outgoing::Text(text(5000))).expect("empty queue");
        big.post(Outgoing::Text(text(5000)))
            .expect("twice the largest");
        assert_eq!(big.post(Outgoing::Text(text(5000))), Err(PostError::Full));
    }
}
