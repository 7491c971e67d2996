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
//!
//! Durability: a durable queue owns a [`QueueStore`]. A persistent message is
//! appended to it on enqueue and acked in it when consumed; the broker's
//! syncer makes appends durable in groups ([`Queue::begin_sync`]). Past the
//! queue's memory limit, persistent messages keep only their store position
//! in memory and their bodies are read back when delivered, so a backlog can
//! be far larger than RAM.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use antre_amqp::FieldTable;
use antre_store::{PendingSync, QueueStore, SegmentPosition, StoreError, StoreOptions};
use parking_lot::Mutex;

use crate::error::{queue_ref, BrokerError};
use crate::message::Message;
use crate::metrics::QueueMetrics;

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

    /// The window's size (0 = unlimited).
    pub fn limit(&self) -> u32 {
        self.limit.load(Ordering::Relaxed)
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

/// A message handed out of a queue (delivered or fetched).
#[derive(Debug, Clone)]
pub struct Entry {
    /// Position in the queue's order of arrival.
    pub seq: u64,
    /// The message, shared with every other queue it was routed to.
    pub message: Arc<Message>,
    /// Whether it was delivered before (and came back).
    pub redelivered: bool,
    /// Where the queue's store keeps it, if it is persisted.
    pub pos: Option<SegmentPosition>,
}

/// A message waiting in a queue; its body may be on disk only.
#[derive(Debug)]
struct Ready {
    seq: u64,
    message: Option<Arc<Message>>,
    pos: Option<SegmentPosition>,
    redelivered: bool,
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

/// Where a queue pushes deliveries for the consumers of one channel, and
/// where the broker reports that a channel's persistent publishes are on disk.
pub trait DeliverySink: Send + Sync + std::fmt::Debug {
    /// Hands over a delivery. Gives it back if the channel's connection is
    /// gone, so the queue can requeue it and drop the consumer.
    fn deliver(&self, delivery: Delivery) -> Result<(), Box<Delivery>>;
    /// The queue cancelled the consumer (the queue was deleted).
    fn cancel(&self, consumer_tag: &str);
    /// A sync the channel asked for finished (`ok` false: the disk failed).
    fn synced(&self, token: u64, ok: bool);
}

/// A consumer as its queue knows it.
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    /// Broker-wide id.
    pub id: ConsumerId,
    /// The connection it belongs to.
    pub connection: ConnectionId,
    /// Its channel number on that connection.
    pub channel: u16,
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

/// A consumer, as the management API lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerInfo {
    /// Its tag.
    pub tag: String,
    /// The connection it belongs to.
    pub connection: ConnectionId,
    /// Its channel number.
    pub channel: u16,
    /// Whether deliveries count as acked when sent.
    pub no_ack: bool,
    /// Whether it is the queue's exclusive consumer.
    pub exclusive: bool,
    /// Its prefetch window (0 = unlimited).
    pub prefetch: u32,
    /// Deliveries it has not acked yet.
    pub unacked: u32,
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

/// Where a durable queue keeps its messages.
#[derive(Debug)]
pub struct QueueStorage {
    /// The store.
    pub store: QueueStore,
    /// Bytes of message bodies a queue keeps in memory before it leaves
    /// further persistent messages on disk only.
    pub memory_limit: u64,
}

#[derive(Debug, Default)]
struct QueueState {
    ready: VecDeque<Ready>,
    consumers: Vec<ConsumerSpec>,
    next_consumer: usize,
    next_seq: u64,
    unacked: u32,
    had_consumer: bool,
    deleted: bool,
    storage: Option<QueueStorage>,
    /// Memory held by the bodies of ready messages.
    in_memory: u64,
}

impl QueueState {
    fn store(&mut self) -> Option<&mut QueueStore> {
        self.storage.as_mut().map(|s| &mut s.store)
    }

    /// Forgets a stored message (acked, dropped or purged). A failure only
    /// means the message may come back after a restart, never a loss, so it
    /// is logged rather than failing the client's ack.
    fn forget(&mut self, pos: Option<SegmentPosition>, queue: &str) {
        if let (Some(pos), Some(store)) = (pos, self.store()) {
            if let Err(e) = store.ack(pos) {
                tracing::warn!(queue, %pos, "could not record ack in store: {e}");
            }
        }
    }

    /// Queues a message at its place by sequence number.
    fn insert_ready(&mut self, entry: Entry, redelivered: bool) {
        let keep = entry.pos.is_none()
            || self
                .storage
                .as_ref()
                .is_none_or(|s| self.in_memory < s.memory_limit);
        if keep {
            self.in_memory += entry.message.memory_size();
        }
        let ready = Ready {
            seq: entry.seq,
            message: keep.then_some(entry.message),
            pos: entry.pos,
            redelivered,
        };
        if self.ready.back().is_none_or(|last| last.seq < ready.seq) {
            self.ready.push_back(ready);
        } else {
            let at = self.ready.partition_point(|e| e.seq < ready.seq);
            self.ready.insert(at, ready);
        }
    }

    /// Takes the next ready message, reading its body from disk if it was
    /// paged out. A record that cannot be read back is dropped (and acked in
    /// the store so it does not come back), never delivered.
    fn pop_ready(&mut self, queue: &str) -> Option<Entry> {
        loop {
            let r = self.ready.pop_front()?;
            let message = match r.message {
                Some(m) => {
                    self.in_memory = self.in_memory.saturating_sub(m.memory_size());
                    m
                }
                None => match self.read_paged(r.pos, queue) {
                    Some(m) => m,
                    None => {
                        self.forget(r.pos, queue);
                        continue;
                    }
                },
            };
            return Some(Entry {
                seq: r.seq,
                message,
                redelivered: r.redelivered,
                pos: r.pos,
            });
        }
    }

    fn read_paged(&mut self, pos: Option<SegmentPosition>, queue: &str) -> Option<Arc<Message>> {
        let (pos, store) = (pos?, self.store()?);
        let record = store
            .read(pos)
            .map_err(|e| tracing::error!(queue, %pos, "dropping unreadable message: {e}"))
            .ok()?;
        Message::from_record(&record)
            .map_err(|e| tracing::error!(queue, %pos, "dropping undecodable message: {e}"))
            .ok()
            .map(Arc::new)
    }
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
    /// Message counters.
    pub metrics: QueueMetrics,
    state: Mutex<QueueState>,
}

fn store_failed(queue: &Queue, e: StoreError) -> BrokerError {
    BrokerError::Internal(format!(
        "message store of {} failed: {e}",
        queue_ref(&queue.vhost, &queue.name)
    ))
}

impl Queue {
    /// A new, empty queue; messages live in memory only.
    pub fn new(vhost: &str, name: &str, options: QueueOptions) -> Arc<Queue> {
        Arc::new(Queue {
            name: name.to_owned(),
            vhost: vhost.to_owned(),
            options,
            metrics: QueueMetrics::default(),
            state: Mutex::new(QueueState::default()),
        })
    }

    /// A durable queue backed by the store in `dir`, with the messages the
    /// store recovered (all marked redelivered: they may have been delivered
    /// before the restart).
    pub fn open_durable(
        vhost: &str,
        name: &str,
        options: QueueOptions,
        dir: &std::path::Path,
        store_options: StoreOptions,
        memory_limit: u64,
    ) -> Result<Arc<Queue>, StoreError> {
        let mut state = QueueState::default();
        let mut undecodable = Vec::new();
        let (store, stats) = QueueStore::open(dir, store_options, |pos, payload| {
            let seq = state.next_seq;
            state.next_seq += 1;
            let message = if state.in_memory < memory_limit {
                match Message::from_record(payload) {
                    Ok(m) => {
                        state.in_memory += m.memory_size();
                        Some(Arc::new(m))
                    }
                    Err(e) => {
                        tracing::error!(queue = name, %pos, "skipping undecodable message: {e}");
                        undecodable.push(pos);
                        return;
                    }
                }
            } else {
                None
            };
            state.ready.push_back(Ready {
                seq,
                message,
                pos: Some(pos),
                redelivered: true,
            });
        })?;
        if stats.records_recovered > 0 || stats.bytes_truncated > 0 || stats.corrupt_records > 0 {
            tracing::info!(vhost, queue = name, ?stats, "recovered queue");
        }
        let mut storage = QueueStorage {
            store,
            memory_limit,
        };
        for pos in undecodable {
            let _ = storage.store.ack(pos);
        }
        state.storage = Some(storage);
        Ok(Arc::new(Queue {
            name: name.to_owned(),
            vhost: vhost.to_owned(),
            options,
            metrics: QueueMetrics::default(),
            state: Mutex::new(state),
        }))
    }

    fn describe(&self) -> String {
        queue_ref(&self.vhost, &self.name)
    }

    /// Whether the queue persists messages.
    pub fn is_durable_store(&self) -> bool {
        self.state.lock().storage.is_some()
    }

    /// Enqueues a message and delivers it if a consumer has credit. Returns
    /// whether it was written to the store (so a confirm must wait for sync).
    pub fn publish(self: &Arc<Self>, message: Arc<Message>) -> Result<bool, BrokerError> {
        let mut st = self.state.lock();
        if st.deleted {
            return Ok(false);
        }
        let pos = match st.store() {
            Some(store) if message.is_persistent() => Some(
                store
                    .append(message.record())
                    .map_err(|e| store_failed(self, e))?,
            ),
            _ => None,
        };
        let seq = st.next_seq;
        st.next_seq += 1;
        self.metrics.published.inc();
        let stored = pos.is_some();
        st.insert_ready(
            Entry {
                seq,
                message,
                redelivered: false,
                pos,
            },
            false,
        );
        self.dispatch(&mut st);
        Ok(stored)
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
        let entry = st.pop_ready(&self.name)?;
        self.count_delivery(&entry);
        if no_ack {
            st.forget(entry.pos, &self.name);
        } else {
            st.unacked += 1;
        }
        Some((entry, st.ready.len() as u32))
    }

    /// Settles delivered messages for good (ack, or reject without requeue).
    pub fn ack(self: &Arc<Self>, entries: &[Entry]) {
        let mut st = self.state.lock();
        st.unacked = st.unacked.saturating_sub(entries.len() as u32);
        self.metrics.acked.add(entries.len() as u64);
        for e in entries {
            st.forget(e.pos, &self.name);
        }
    }

    /// Puts delivered messages back at their original positions, marked
    /// redelivered, and dispatches them again.
    pub fn requeue(self: &Arc<Self>, entries: Vec<Entry>) {
        let mut st = self.state.lock();
        st.unacked = st.unacked.saturating_sub(entries.len() as u32);
        if st.deleted {
            return;
        }
        for entry in entries {
            st.insert_ready(entry, true);
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
        let redelivered = delivery.entry.redelivered;
        st.insert_ready(delivery.entry, redelivered);
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
        let ready = std::mem::take(&mut st.ready);
        st.in_memory = 0;
        for r in ready {
            st.forget(r.pos, &self.name);
        }
        n
    }

    /// Marks the queue deleted, drops its messages and store, and cancels
    /// its consumers. Returns how many messages were ready.
    pub fn delete(&self) -> u32 {
        let mut st = self.state.lock();
        st.deleted = true;
        let n = st.ready.len() as u32;
        st.ready.clear();
        st.in_memory = 0;
        if let Some(storage) = st.storage.take() {
            if let Err(e) = storage.store.delete_all() {
                tracing::warn!(
                    queue = self.name,
                    "could not remove store of deleted queue: {e}"
                );
            }
        }
        for c in std::mem::take(&mut st.consumers) {
            c.sink.cancel(&c.tag);
        }
        n
    }

    /// The queue's consumers.
    pub fn consumers(&self) -> Vec<ConsumerInfo> {
        self.state
            .lock()
            .consumers
            .iter()
            .map(|c| ConsumerInfo {
                tag: c.tag.to_string(),
                connection: c.connection,
                channel: c.channel,
                no_ack: c.no_ack,
                exclusive: c.exclusive,
                prefetch: c.credit.limit(),
                unacked: c.credit.in_flight(),
            })
            .collect()
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

    /// Whether the store has appends or acks a sync would write.
    pub fn is_dirty(&self) -> bool {
        self.state
            .lock()
            .storage
            .as_ref()
            .is_some_and(|s| s.store.is_dirty())
    }

    /// Starts a group commit: hands appends to the kernel under the queue's
    /// lock and returns the fsyncs to run without it (see
    /// [`QueueStore::begin_sync`]). None when the queue has no store.
    pub fn begin_sync(&self) -> Option<Result<PendingSync, StoreError>> {
        self.state.lock().store().map(|s| s.begin_sync())
    }

    /// Completes a group commit started with [`Queue::begin_sync`].
    pub fn finish_sync(
        &self,
        pending: PendingSync,
        result: Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        match self.state.lock().store() {
            Some(store) => store.finish_sync(pending, result),
            // Deleted meanwhile: nothing left to make durable.
            None => Ok(()),
        }
    }

    /// Flushes and closes the store (clean shutdown): no acked message comes
    /// back after a restart.
    pub fn close_store(&self) {
        let mut st = self.state.lock();
        if let Some(storage) = st.storage.take() {
            if let Err(e) = storage.store.close() {
                tracing::error!(queue = self.name, "closing store failed: {e}");
            }
        }
        st.deleted = true;
    }

    fn count_delivery(&self, entry: &Entry) {
        self.metrics.delivered.inc();
        if entry.redelivered {
            self.metrics.redelivered.inc();
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
            let Some(entry) = st.pop_ready(&self.name) else {
                st.consumers[idx].release_credit();
                return;
            };
            self.count_delivery(&entry);
            let consumer = &st.consumers[idx];
            let no_ack = consumer.no_ack;
            let pos = entry.pos;
            let delivery = Delivery {
                queue: Arc::clone(self),
                consumer: consumer.id,
                consumer_tag: Arc::clone(&consumer.tag),
                no_ack,
                entry,
            };
            match consumer.sink.deliver(delivery) {
                Ok(()) if no_ack => st.forget(pos, &self.name),
                Ok(()) => st.unacked += 1,
                Err(back) => {
                    // The consumer's connection is gone: keep the message,
                    // forget the consumer.
                    let redelivered = back.entry.redelivered;
                    st.insert_ready(back.entry, redelivered);
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
        pub synced: Mutex<Vec<(u64, bool)>>,
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
        fn synced(&self, token: u64, ok: bool) {
            self.synced.lock().push((token, ok));
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
        Arc::new(Message::new(
            String::new(),
            "q".into(),
            BasicProperties::default(),
            Bytes::copy_from_slice(body.as_bytes()),
        ))
    }

    impl Queue {
        fn publish_ok(self: &Arc<Self>, m: Arc<Message>) {
            self.publish(m).expect("publish");
        }
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
            connection: 1,
            channel: 1,
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
            q.publish_ok(message(&i.to_string()));
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
            q.publish_ok(message(&i.to_string()));
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
            q.publish_ok(message(&i.to_string()));
        }
        assert_eq!(a.bodies(), ["0"]);
        assert_eq!(b.bodies(), ["1", "2", "3"]);
    }

    #[test]
    fn requeue_restores_original_position_and_marks_redelivered() {
        let q = queue();
        for i in 0..4 {
            q.publish_ok(message(&i.to_string()));
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
        q.publish_ok(message("m"));
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
        q.publish_ok(message("m"));
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
        q.publish_ok(message("x"));
        q.delete();
        assert_eq!(*sink.cancelled.lock(), ["c3"]);
    }
}
