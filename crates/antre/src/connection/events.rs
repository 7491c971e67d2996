//! The queue of events (deliveries, cancellations, sync answers) that
//! queues and the syncer push to one connection's task.
//!
//! tokio's unbounded channel allocates its first block of 32 slots with the
//! channel: 32 × 136-byte events, 5 KiB a connection in jemalloc's size
//! classes, before anything is sent. That was 40% of what an idle
//! connection cost. This queue is a mutex around a `VecDeque` that
//! allocates with the first event, and the connection takes everything
//! queued at once (one lock per wake-up, not one per event), which keeps
//! the locked section short for the queues that push.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::Arc;
use std::task::{Poll, Waker};

use antre_broker::session::{EventSink, SessionEvent};
use parking_lot::Mutex;

/// A batch larger than this is not kept once handled: a burst's events
/// give their memory back rather than sizing the queue for good.
const KEEP_CAPACITY: usize = 256;

#[derive(Debug, Default)]
struct Shared {
    events: VecDeque<SessionEvent>,
    /// The connection's task, while it waits for events.
    waker: Option<Waker>,
    /// The connection is gone: sends give the event back.
    closed: bool,
}

/// Where queues and the syncer push a connection's events.
#[derive(Debug)]
pub(super) struct Events(Arc<Mutex<Shared>>);

impl EventSink for Events {
    fn send(&self, event: SessionEvent) -> Result<(), Box<SessionEvent>> {
        let waker = {
            let mut shared = self.0.lock();
            if shared.closed {
                return Err(Box::new(event));
            }
            shared.events.push_back(event);
            shared.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }
}

/// The connection's side: what it took from the queue and has not
/// handled yet.
#[derive(Debug)]
pub(super) struct Inbox {
    shared: Arc<Mutex<Shared>>,
    batch: VecDeque<SessionEvent>,
}

impl Inbox {
    /// A new queue: the inbox and the sink that feeds it.
    pub(super) fn new() -> (Inbox, Events) {
        let shared = Arc::new(Mutex::new(Shared::default()));
        let events = Events(Arc::clone(&shared));
        (
            Inbox {
                shared,
                batch: VecDeque::new(),
            },
            events,
        )
    }

    /// Resolves once there is an event to take with [`Inbox::next`]
    /// (never, once closed and empty).
    pub(super) async fn ready(&mut self) {
        poll_fn(|cx| {
            if !self.batch.is_empty() {
                return Poll::Ready(());
            }
            let mut shared = self.shared.lock();
            if !shared.events.is_empty() {
                std::mem::swap(&mut shared.events, &mut self.batch);
                return Poll::Ready(());
            }
            if !shared.closed
                && !shared
                    .waker
                    .as_ref()
                    .is_some_and(|w| w.will_wake(cx.waker()))
            {
                shared.waker = Some(cx.waker().clone());
            }
            Poll::Pending
        })
        .await;
    }

    /// The next event, if one is queued.
    pub(super) fn next(&mut self) -> Option<SessionEvent> {
        if self.batch.is_empty() {
            let mut shared = self.shared.lock();
            std::mem::swap(&mut shared.events, &mut self.batch);
        }
        let event = self.batch.pop_front();
        if self.batch.is_empty() && self.batch.capacity() > KEEP_CAPACITY {
            self.batch = VecDeque::new();
        }
        event
    }

    /// No more events are accepted: sends give them back to the sender
    /// (a queue then requeues its delivery). What is queued stays for
    /// [`Inbox::next`].
    pub(super) fn close(&mut self) {
        let mut shared = self.shared.lock();
        shared.closed = true;
        shared.waker = None;
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn synced(token: u64) -> SessionEvent {
        SessionEvent::Synced(1, token, true)
    }

    fn token(event: SessionEvent) -> u64 {
        match event {
            SessionEvent::Synced(_, token, _) => token,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn events_arrive_in_order_and_wake_the_inbox() {
        let (mut inbox, events) = Inbox::new();
        let sender = tokio::spawn(async move {
            for i in 0..1000 {
                events.send(synced(i)).expect("open");
                if i % 100 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        });
        let mut next = 0;
        while next < 1000 {
            inbox.ready().await;
            while let Some(event) = inbox.next() {
                assert_eq!(token(event), next);
                next += 1;
            }
        }
        sender.await.expect("sender");
    }

    #[test]
    fn a_closed_inbox_gives_events_back_and_keeps_what_was_queued() {
        let (mut inbox, events) = Inbox::new();
        events.send(synced(1)).expect("open");
        inbox.close();
        let refused = events.send(synced(2)).expect_err("closed");
        assert_eq!(token(*refused), 2);
        assert_eq!(inbox.next().map(token), Some(1));
        assert!(inbox.next().is_none());
        drop(inbox);
        assert!(events.send(synced(3)).is_err());
    }

    #[test]
    fn an_idle_queue_holds_no_event_slots() {
        let (inbox, _events) = Inbox::new();
        assert_eq!(inbox.batch.capacity(), 0);
        assert_eq!(inbox.shared.lock().events.capacity(), 0);
    }
}
