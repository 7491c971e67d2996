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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use antre_amqp::BasicProperties;
    use bytes::Bytes;

    /// A sink that keeps what it is given, or refuses like a dead connection.
    #[derive(Debug, Default)]
    pub(crate) struct CollectSink {
        pub deliveries: Mutex<Vec<Delivery>>,
        pub cancelled: Mutex<Vec<String>>,
        pub dead: AtomicBool,
    }

    impl DeliverySink for CollectSink {
        fn deliver(&self, delivery: Delivery) -> Result<(), Box<Delivery>> {
            if self.dead.load(Ordering::Relaxed) {
                return Err(Box::new(delivery));
            }
            self.deliveries.lock().push(delivery);
            Ok(())
        }
        fn cancel(&self, consumer_tag: &str) {
            self.cancelled.lock().push(consumer_tag.to_owned());
        }
    }

    impl CollectSink {
        pub(crate) fn bodies(&self) -> Vec<String> {
            self.deliveries
                .lock()
                .iter()
                .map(|d| String::from_utf8_lossy(&d.entry.message.body).into_owned())
                .collect()
        }
    }

    pub(crate) fn message(body: &str) -> Arc<Message> {
        Arc::new(Message {
            exchange: String::new(),
            routing_key: "q".into(),
            properties: BasicProperties::default(),
            body: Bytes::copy_from_slice(body.as_bytes()),
        })
    }

    fn queue() -> Arc<Queue> {
        Queue::new(
            "/",
            "q",
            QueueOptions {
                durable: false,
                exclusive_owner: None,
                auto_delete: false,
                arguments: FieldTable::new(),
            },
        )
    }

    fn consumer(id: u64, prefetch: u32, sink: &Arc<CollectSink>) -> ConsumerSpec {
        ConsumerSpec {
            id,
            tag: format!("c{id}").into(),
            no_ack: false,
            exclusive: false,
            credit: Credit::new(prefetch),
            channel_credit: Credit::new(0),
            sink: Arc::clone(sink) as Arc<dyn DeliverySink>,
        }
    }

    #[test]
    fn consumers_are_served_round_robin() {
        let q = queue();
        let (a, b) = (
            Arc::new(CollectSink::default()),
            Arc::new(CollectSink::default()),
        );
        q.add_consumer(consumer(1, 0, &a)).unwrap();
        q.add_consumer(consumer(2, 0, &b)).unwrap();
        for i in 0..6 {
            q.publish(message(&i.to_string()));
        }
        assert_eq!(a.bodies(), ["0", "2", "4"]);
        assert_eq!(b.bodies(), ["1", "3", "5"]);
        assert_eq!(
            q.counts(),
            QueueCounts {
                ready: 0,
                unacked: 6,
                consumers: 2
            }
        );
    }

    #[test]
    fn prefetch_window_limits_and_release_resumes() {
        let q = queue();
        let sink = Arc::new(CollectSink::default());
        let spec = consumer(1, 2, &sink);
        let credit = Arc::clone(&spec.credit);
        q.add_consumer(spec).unwrap();
        for i in 0..5 {
            q.publish(message(&i.to_string()));
        }
        assert_eq!(sink.bodies(), ["0", "1"]);
        assert_eq!(q.counts().ready, 3);
        credit.release(1);
        q.kick();
        assert_eq!(sink.bodies(), ["0", "1", "2"]);
    }

    #[test]
    fn a_full_consumer_is_skipped_for_one_with_room() {
        let q = queue();
        let (a, b) = (
            Arc::new(CollectSink::default()),
            Arc::new(CollectSink::default()),
        );
        q.add_consumer(consumer(1, 1, &a)).unwrap();
        q.add_consumer(consumer(2, 0, &b)).unwrap();
        for i in 0..4 {
            q.publish(message(&i.to_string()));
        }
        assert_eq!(a.bodies(), ["0"]);
        assert_eq!(b.bodies(), ["1", "2", "3"]);
    }

    #[test]
    fn requeue_restores_original_position_and_marks_redelivered() {
        let q = queue();
        for i in 0..4 {
            q.publish(message(&i.to_string()));
        }
        let (e0, _) = q.get(false).unwrap();
        let (e1, _) = q.get(false).unwrap();
        q.requeue(vec![e1, e0]);
        let order: Vec<_> = std::iter::from_fn(|| q.get(true))
            .map(|(e, _)| {
                (
                    String::from_utf8_lossy(&e.message.body).into_owned(),
                    e.redelivered,
                )
            })
            .collect();
        assert_eq!(
            order,
            [
                ("0".into(), true),
                ("1".into(), true),
                ("2".into(), false),
                ("3".into(), false)
            ]
        );
    }

    #[test]
    fn dead_sink_drops_the_consumer_and_keeps_the_message() {
        let q = queue();
        let (dead, alive) = (
            Arc::new(CollectSink::default()),
            Arc::new(CollectSink::default()),
        );
        dead.dead.store(true, Ordering::Relaxed);
        q.add_consumer(consumer(1, 0, &dead)).unwrap();
        q.publish(message("m"));
        assert_eq!(
            q.counts(),
            QueueCounts {
                ready: 1,
                unacked: 0,
                consumers: 0
            }
        );
        q.add_consumer(consumer(2, 0, &alive)).unwrap();
        assert_eq!(alive.bodies(), ["m"]);
    }

    #[test]
    fn exclusive_consumer_excludes_others() {
        let q = queue();
        let sink = Arc::new(CollectSink::default());
        let mut first = consumer(1, 0, &sink);
        first.exclusive = true;
        q.add_consumer(first).unwrap();
        assert!(matches!(
            q.add_consumer(consumer(2, 0, &sink)),
            Err(BrokerError::AccessRefused(_))
        ));
        q.remove_consumer(1);
        q.add_consumer(consumer(2, 0, &sink)).unwrap();
        let mut late = consumer(3, 0, &sink);
        late.exclusive = true;
        assert!(matches!(
            q.add_consumer(late),
            Err(BrokerError::AccessRefused(_))
        ));
    }

    #[test]
    fn paused_channel_gets_nothing_until_resumed() {
        let q = queue();
        let sink = Arc::new(CollectSink::default());
        let spec = consumer(1, 0, &sink);
        let channel = Arc::clone(&spec.channel_credit);
        channel.set_paused(true);
        q.add_consumer(spec).unwrap();
        q.publish(message("m"));
        assert!(sink.bodies().is_empty());
        channel.set_paused(false);
        q.kick();
        assert_eq!(sink.bodies(), ["m"]);
    }

    #[test]
    fn delete_cancels_consumers_and_auto_delete_triggers_on_last_consumer() {
        let q = Queue::new(
            "/",
            "auto",
            QueueOptions {
                durable: false,
                exclusive_owner: None,
                auto_delete: true,
                arguments: FieldTable::new(),
            },
        );
        let sink = Arc::new(CollectSink::default());
        q.add_consumer(consumer(1, 0, &sink)).unwrap();
        q.add_consumer(consumer(2, 0, &sink)).unwrap();
        assert!(!q.remove_consumer(1));
        assert!(
            q.remove_consumer(2),
            "last consumer left an auto-delete queue"
        );
        q.add_consumer(consumer(3, 0, &sink)).unwrap();
        q.publish(message("x"));
        q.delete();
        assert_eq!(*sink.cancelled.lock(), ["c3"]);
    }
}
