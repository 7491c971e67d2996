//! The queue engine: ready messages, consumers, credit and redelivery.
//!
//! A queue's state has a single owner at a time: one mutex per queue, held
//! only for the few operations of an enqueue or a dispatch, so publishers to
//! different queues never contend. Dispatch pushes deliveries into each
//! consumer's [`DeliverySink`] (in the server, a channel to the consumer's
//! connection task), which never blocks.
//!
//! Order: every message gets a sequence number when it is enqueued; ready
//! messages are kept sorted by it, so a requeued message goes back to its
//! original position, ahead of messages published after it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use antre_amqp::FieldTable;
use parking_lot::Mutex;

use crate::error::{queue_ref, BrokerError};
use crate::message::Message;

/// Identifies a client connection (for exclusive queues).
pub type ConnectionId = u64;
/// Identifies a consumer across the broker (tags are only unique per channel).
pub type ConsumerId = u64;

/// A prefetch window: how many unacked deliveries may be outstanding.
///
/// Shared between a channel and the queues its consumers read from, hence
/// atomics: the channel releases credit on ack, queues take it on dispatch.
#[derive(Debug, Default)]
pub struct Credit {
    limit: AtomicU32,
    in_flight: AtomicU32,
    paused: AtomicBool,
}

impl Credit {
    /// A window of `limit` deliveries (0 = unlimited).
    pub fn new(limit: u32) -> Arc<Credit> {
        let credit = Credit::default();
        credit.limit.store(limit, Ordering::Relaxed);
        Arc::new(credit)
    }

    /// Changes the window; deliveries already out stay out.
    pub fn set_limit(&self, limit: u32) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    /// Stops or resumes all dispatch through this window (channel.flow).
    pub fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Ordering::Relaxed);
    }

    /// Deliveries outstanding.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    fn try_take(&self) -> bool {
        if self.paused.load(Ordering::Relaxed) {
            return false;
        }
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                let limit = self.limit.load(Ordering::Relaxed);
                (limit == 0 || n < limit).then_some(n + 1)
            })
            .is_ok()
    }

    /// Returns `n` deliveries' worth of credit (on ack, reject or requeue).
    pub fn release(&self, n: u32) {
        let _ = self
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(n))
            });
    }
}

/// A message in a queue.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Position in the queue's order of arrival.
    pub seq: u64,
    /// The message, shared with every other queue it was routed to.
    pub message: Arc<Message>,
    /// Whether it was delivered before (and came back).
    pub redelivered: bool,
}

/// A message handed to a consumer.
#[derive(Debug)]
pub struct Delivery {
    /// The queue it came from (to ack or requeue it there).
    pub queue: Arc<Queue>,
    /// The consumer it is for.
    pub consumer: ConsumerId,
    /// The consumer's tag on its channel.
    pub consumer_tag: Arc<str>,
    /// Whether the consumer acks (false) or it counts as acked when sent.
    pub no_ack: bool,
    /// The message.
    pub entry: Entry,
}

/// Where a queue pushes deliveries for the consumers of one channel.
pub trait DeliverySink: Send + Sync + std::fmt::Debug {
    /// Hands over a delivery. Gives it back if the channel's connection is
    /// gone, so the queue can requeue it and drop the consumer.
    fn deliver(&self, delivery: Delivery) -> Result<(), Box<Delivery>>;
    /// The queue cancelled the consumer (the queue was deleted).
    fn cancel(&self, consumer_tag: &str);
}

/// A consumer as its queue knows it.
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    /// Broker-wide id.
    pub id: ConsumerId,
    /// Tag on its channel.
    pub tag: Arc<str>,
    /// Deliveries count as acked when sent.
    pub no_ack: bool,
    /// No other consumer may use the queue.
    pub exclusive: bool,
    /// The consumer's own prefetch window.
    pub credit: Arc<Credit>,
    /// Its channel's shared window (basic.qos global=true) and flow switch.
    pub channel_credit: Arc<Credit>,
    /// Where its deliveries go.
    pub sink: Arc<dyn DeliverySink>,
}

impl ConsumerSpec {
    /// Takes one delivery's credit from both windows, or none.
    fn try_take_credit(&self) -> bool {
        if self.no_ack {
            return !self.channel_credit.paused.load(Ordering::Relaxed);
        }
        if !self.channel_credit.try_take() {
            return false;
        }
        if !self.credit.try_take() {
            self.channel_credit.release(1);
            return false;
        }
        true
    }

    fn release_credit(&self) {
        if !self.no_ack {
            self.credit.release(1);
            self.channel_credit.release(1);
        }
    }
}

/// How a queue was declared.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueOptions {
    /// Survives a restart.
    pub durable: bool,
    /// Owned by one connection, deleted when it closes.
    pub exclusive_owner: Option<ConnectionId>,
    /// Deleted when its last consumer leaves.
    pub auto_delete: bool,
    /// Declaration arguments (`x-...`).
    pub arguments: FieldTable,
}

/// Message and consumer counts of a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueCounts {
    /// Messages waiting for a consumer.
    pub ready: u32,
    /// Messages delivered and not yet acked.
    pub unacked: u32,
    /// Consumers attached.
    pub consumers: u32,
}

#[derive(Debug, Default)]
struct QueueState {
    ready: VecDeque<Entry>,
    consumers: Vec<ConsumerSpec>,
    next_consumer: usize,
    next_seq: u64,
    unacked: u32,
    had_consumer: bool,
    deleted: bool,
}

/// A queue.
#[derive(Debug)]
pub struct Queue {
    /// Its name.
    pub name: String,
    /// The vhost it lives in.
    pub vhost: String,
    /// How it was declared.
    pub options: QueueOptions,
    state: Mutex<QueueState>,
}

impl Queue {
    /// A new, empty queue.
    pub fn new(vhost: &str, name: &str, options: QueueOptions) -> Arc<Queue> {
        Arc::new(Queue {
            name: name.to_owned(),
            vhost: vhost.to_owned(),
            options,
            state: Mutex::new(QueueState::default()),
        })
    }

    fn describe(&self) -> String {
        queue_ref(&self.vhost, &self.name)
    }

    /// Enqueues a message and delivers it if a consumer has credit.
    pub fn publish(self: &Arc<Self>, message: Arc<Message>) {
        let mut st = self.state.lock();
        if st.deleted {
            return;
        }
        let seq = st.next_seq;
        st.next_seq += 1;
        st.ready.push_back(Entry {
            seq,
            message,
            redelivered: false,
        });
        self.dispatch(&mut st);
    }

    /// Attaches a consumer and starts delivering to it.
    pub fn add_consumer(self: &Arc<Self>, spec: ConsumerSpec) -> Result<(), BrokerError> {
        let mut st = self.state.lock();
        if st.deleted {
            return Err(BrokerError::NotFound(format!("no {}", self.describe())));
        }
        if st.consumers.iter().any(|c| c.exclusive) || (spec.exclusive && !st.consumers.is_empty())
        {
            return Err(BrokerError::AccessRefused(format!(
                "{} in exclusive use",
                self.describe()
            )));
        }
        st.consumers.push(spec);
        st.had_consumer = true;
        self.dispatch(&mut st);
        Ok(())
    }

    /// Detaches a consumer. Returns whether the queue should now be
    /// auto-deleted (it is auto-delete and its last consumer left).
    pub fn remove_consumer(&self, id: ConsumerId) -> bool {
        let mut st = self.state.lock();
        st.consumers.retain(|c| c.id != id);
        if st.next_consumer >= st.consumers.len() {
            st.next_consumer = 0;
        }
        self.options.auto_delete && st.had_consumer && st.consumers.is_empty() && !st.deleted
    }

    /// Takes the next ready message for basic.get. With `no_ack` it counts as
    /// acked at once; otherwise it is unacked until the channel settles it.
    /// Also returns how many messages remain ready.
    pub fn get(&self, no_ack: bool) -> Option<(Entry, u32)> {
        let mut st = self.state.lock();
        let entry = st.ready.pop_front()?;
        if !no_ack {
            st.unacked += 1;
        }
        Some((entry, st.ready.len() as u32))
    }

    /// Settles delivered messages for good (ack, or reject without requeue).
    pub fn ack(self: &Arc<Self>, entries: &[Entry]) {
        let mut st = self.state.lock();
        st.unacked = st.unacked.saturating_sub(entries.len() as u32);
    }

    /// Puts delivered messages back at their original positions, marked
    /// redelivered, and dispatches them again.
    pub fn requeue(self: &Arc<Self>, entries: Vec<Entry>) {
        let mut st = self.state.lock();
        st.unacked = st.unacked.saturating_sub(entries.len() as u32);
        if st.deleted {
            return;
        }
        for mut entry in entries {
            entry.redelivered = true;
            let at = st.ready.partition_point(|e| e.seq < entry.seq);
            st.ready.insert(at, entry);
        }
        self.dispatch(&mut st);
    }

    /// Puts back a message that never reached its consumer (its channel
    /// closed first), without marking it redelivered.
    pub fn return_undelivered(self: &Arc<Self>, delivery: Delivery) {
        let mut st = self.state.lock();
        if !delivery.no_ack {
            st.unacked = st.unacked.saturating_sub(1);
        }
        if st.deleted {
            return;
        }
        let at = st.ready.partition_point(|e| e.seq < delivery.entry.seq);
        st.ready.insert(at, delivery.entry);
        self.dispatch(&mut st);
    }

    /// Tries to deliver again, e.g. after credit was released.
    pub fn kick(self: &Arc<Self>) {
        let mut st = self.state.lock();
        self.dispatch(&mut st);
    }

    /// Drops every ready message (unacked ones stay); returns how many.
    pub fn purge(&self) -> u32 {
        let mut st = self.state.lock();
        let n = st.ready.len() as u32;
        st.ready.clear();
        n
    }

    /// Marks the queue deleted, drops its messages and cancels its consumers.
    /// Returns how many messages were ready.
    pub fn delete(&self) -> u32 {
        let mut st = self.state.lock();
        st.deleted = true;
        let n = st.ready.len() as u32;
        st.ready.clear();
        for c in std::mem::take(&mut st.consumers) {
            c.sink.cancel(&c.tag);
        }
        n
    }

    /// Current counts.
    pub fn counts(&self) -> QueueCounts {
        let st = self.state.lock();
        QueueCounts {
            ready: st.ready.len() as u32,
            unacked: st.unacked,
            consumers: st.consumers.len() as u32,
        }
    }

    /// Delivers ready messages round-robin to consumers with credit.
    fn dispatch(self: &Arc<Self>, st: &mut QueueState) {
        while !st.ready.is_empty() && !st.consumers.is_empty() {
            let n = st.consumers.len();
            let start = st.next_consumer % n;
            let Some(idx) = (0..n)
                .map(|i| (start + i) % n)
                .find(|&i| st.consumers[i].try_take_credit())
            else {
                return;
            };
            st.next_consumer = (idx + 1) % n;
            let Some(entry) = st.ready.pop_front() else {
                st.consumers[idx].release_credit();
                return;
            };
            let consumer = &st.consumers[idx];
            let delivery = Delivery {
                queue: Arc::clone(self),
                consumer: consumer.id,
                consumer_tag: Arc::clone(&consumer.tag),
                no_ack: consumer.no_ack,
                entry,
            };
            let no_ack = consumer.no_ack;
            match consumer.sink.deliver(delivery) {
                Ok(()) => {
                    if !no_ack {
                        st.unacked += 1;
                    }
                }
                Err(back) => {
                    // The consumer's connection is gone: keep the message,
                    // forget the consumer.
                    st.ready.push_front(back.entry);
                    let gone = st.consumers.remove(idx);
                    gone.release_credit();
                    st.next_consumer = 0;
                }
            }
        }
    }
}
