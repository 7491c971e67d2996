//! The queue engine: ready messages, consumers, credit and redelivery, and
//! the features its arguments turn on (TTL, limits, priorities, dead
//! letters, delivery limits, single active consumer, deduplication).
//!
//! A queue's state has a single owner at a time: one mutex per queue, held
//! only for the few operations of an enqueue or a dispatch, so publishers to
//! different queues never contend. Dispatch pushes deliveries into each
//! consumer's [`DeliverySink`] (in the server, a channel to the consumer's
//! connection task), which never blocks.
//!
//! Order: every message gets a sequence number when it is enqueued; ready
//! messages are kept sorted by it (per priority level), so a requeued message
//! goes back to its original position, ahead of messages published after it.
//!
//! Durability: a durable queue owns a [`QueueStore`]. A persistent message is
//! appended to it on enqueue and acked in it when it leaves the queue; the
//! broker's syncer makes appends durable in groups ([`Queue::begin_sync`]).
//! Past the queue's memory limit, persistent messages keep only their store
//! position in memory and their bodies are read back when delivered, so a
//! backlog can be far larger than RAM.
//!
//! Dead letters: messages that expire, overflow, are rejected or exceed the
//! delivery limit are collected under the lock and routed to the dead-letter
//! exchange by the caller after the lock is released
//! ([`Queue::take_dead_letters`]), so dead-lettering into the same queue
//! cannot deadlock.

mod args;
mod credit;
mod ready;

use std::collections::HashMap;
use std::sync::Arc;

use antre_amqp::{FieldTable, FieldValue};
use antre_store::{PendingSync, QueueStore, SegmentPosition, StoreError, StoreOptions};
use parking_lot::Mutex;

pub use args::{Overflow, QueueArgs};
pub use credit::{ConsumerInfo, ConsumerSpec, Credit};
use ready::{Ready, ReadyList};

use crate::clock::Clock;
use crate::error::{queue_ref, BrokerError};
use crate::message::Message;
use crate::metrics::QueueMetrics;

/// Identifies a client connection (for exclusive queues).
pub type ConnectionId = u64;
/// Identifies a consumer across the broker (tags are only unique per channel).
pub type ConsumerId = u64;

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
    /// Times it came back unacked.
    pub delivery_count: u32,
    priority: u8,
    expires_at: Option<u64>,
    dedup_key: Option<String>,
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

/// Why a message was dead-lettered (the `reason` of its `x-death` entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeathReason {
    /// Rejected or nacked without requeue.
    Rejected,
    /// Its TTL ran out.
    Expired,
    /// The queue was over its length limit.
    MaxLen,
    /// It came back more often than `x-delivery-limit` allows.
    DeliveryLimit,
}

impl DeathReason {
    /// The name RabbitMQ uses in `x-death`.
    pub fn as_str(self) -> &'static str {
        match self {
            DeathReason::Rejected => "rejected",
            DeathReason::Expired => "expired",
            DeathReason::MaxLen => "maxlen",
            DeathReason::DeliveryLimit => "delivery_limit",
        }
    }
}

/// A message leaving a queue for its dead-letter exchange.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// The message as it was in the queue.
    pub message: Arc<Message>,
    /// Why it left.
    pub reason: DeathReason,
}

/// What happened to a published message at one queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    /// Queued; `stored` when written to the store (a confirm waits for sync).
    Accepted {
        /// Written to the store.
        stored: bool,
    },
    /// Refused: the queue is full and its overflow rule rejects publishes.
    Rejected,
    /// Not queued: a message with the same deduplication key is in the queue.
    Duplicate,
}

#[derive(Debug)]
struct QueueState {
    ready: ReadyList,
    consumers: Vec<ConsumerSpec>,
    next_consumer: usize,
    next_seq: u64,
    unacked: u32,
    had_consumer: bool,
    deleted: bool,
    /// The message store of a durable queue.
    store: Option<QueueStore>,
    /// Bytes of bodies kept in memory before further persistent messages
    /// stay on disk only (unlimited without a store).
    memory_limit: u64,
    /// Keys of the messages in the queue (ready or unacked), for
    /// `x-message-deduplication`, with how many messages hold each.
    dedup: HashMap<String, u32>,
    /// Messages waiting to be routed to the dead-letter exchange.
    dead: Vec<DeadLetter>,
    /// Last time the queue was used (for `x-expires`).
    last_used: u64,
}

impl QueueState {
    fn new(args: &QueueArgs, now: u64) -> QueueState {
        QueueState {
            ready: ReadyList::new(args.max_priority),
            consumers: Vec::new(),
            next_consumer: 0,
            next_seq: 0,
            unacked: 0,
            had_consumer: false,
            deleted: false,
            store: None,
            memory_limit: u64::MAX,
            dedup: HashMap::new(),
            dead: Vec::new(),
            last_used: now,
        }
    }

    fn store(&mut self) -> Option<&mut QueueStore> {
        self.store.as_mut()
    }

    /// Forgets a message for good (acked, dropped, dead-lettered, purged):
    /// its store record and its deduplication key. A store failure only means
    /// the message may come back after a restart, never a loss, so it is
    /// logged rather than failing the client's ack.
    fn forget(&mut self, pos: Option<SegmentPosition>, key: Option<&str>, queue: &str) {
        if let (Some(pos), Some(store)) = (pos, self.store()) {
            if let Err(e) = store.ack(pos) {
                tracing::warn!(queue, %pos, "could not record ack in store: {e}");
            }
        }
        if let Some(key) = key {
            if let Some(n) = self.dedup.get_mut(key) {
                *n -= 1;
                if *n == 0 {
                    self.dedup.remove(key);
                }
            }
        }
    }

    fn insert_entry(&mut self, e: Entry, redelivered: bool) {
        let keep = e.pos.is_none() || self.ready.in_memory < self.memory_limit;
        self.ready.insert(Ready {
            seq: e.seq,
            size: e.message.body.len() as u64,
            message: keep.then_some(e.message),
            pos: e.pos,
            redelivered,
            priority: e.priority,
            expires_at: e.expires_at,
            delivery_count: e.delivery_count,
            dedup_key: e.dedup_key,
        });
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

    /// Loads a ready message's body (from disk if paged out). A record that
    /// cannot be read back is dropped, never delivered.
    fn load(&mut self, r: Ready, queue: &str) -> Option<Entry> {
        let message = match r.message {
            Some(m) => m,
            None => match self.read_paged(r.pos, queue) {
                Some(m) => m,
                None => {
                    self.forget(r.pos, r.dedup_key.as_deref(), queue);
                    return None;
                }
            },
        };
        Some(Entry {
            seq: r.seq,
            message,
            redelivered: r.redelivered,
            pos: r.pos,
            delivery_count: r.delivery_count,
            priority: r.priority,
            expires_at: r.expires_at,
            dedup_key: r.dedup_key,
        })
    }

    /// Dead-letters (or drops) messages that leave the queue without being
    /// consumed.
    fn discard(
        &mut self,
        readies: Vec<Ready>,
        reason: DeathReason,
        queue: &str,
        dead_lettering: bool,
    ) {
        for r in readies {
            let pos = r.pos;
            let key = r.dedup_key.clone();
            if dead_lettering {
                if let Some(e) = self.load(r, queue) {
                    self.dead.push(DeadLetter {
                        message: e.message,
                        reason,
                    });
                    self.forget(pos, key.as_deref(), queue);
                }
            } else {
                self.forget(pos, key.as_deref(), queue);
            }
        }
    }
}

/// Group commit delegates to the queue's own sync methods.
impl crate::durable::Durable for Queue {
    fn label(&self) -> &str {
        &self.name
    }

    fn begin_sync(&self) -> Option<Result<PendingSync, StoreError>> {
        Queue::begin_sync(self)
    }

    fn finish_sync(
        &self,
        pending: PendingSync,
        result: Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        Queue::finish_sync(self, pending, result)
    }

    fn is_dirty(&self) -> bool {
        Queue::is_dirty(self)
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
    /// What its arguments turn on.
    pub args: QueueArgs,
    /// Message counters.
    pub metrics: QueueMetrics,
    clock: Arc<dyn Clock>,
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
    pub fn new(
        vhost: &str,
        name: &str,
        options: QueueOptions,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Queue>, BrokerError> {
        let args = QueueArgs::parse(&options.arguments, vhost, name)?;
        let state = QueueState::new(&args, clock.now_ms());
        Ok(Arc::new(Queue {
            name: name.to_owned(),
            vhost: vhost.to_owned(),
            options,
            args,
            metrics: QueueMetrics::default(),
            clock,
            state: Mutex::new(state),
        }))
    }

    /// A durable queue backed by the store in `dir`, with the messages the
    /// store recovered (all marked redelivered: they may have been delivered
    /// before the restart).
    pub fn open_durable(
        vhost: &str,
        name: &str,
        options: QueueOptions,
        clock: Arc<dyn Clock>,
        dir: &std::path::Path,
        store_options: StoreOptions,
        memory_limit: u64,
    ) -> Result<Arc<Queue>, BrokerError> {
        let queue = Queue::new(vhost, name, options, clock)?;
        let mut undecodable = Vec::new();
        {
            let mut st = queue.state.lock();
            st.memory_limit = memory_limit;
            let now = queue.clock.now_ms();
            let (store, stats) = QueueStore::open(dir, store_options, |pos, payload| {
                let message = match Message::from_record(payload) {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::error!(queue = name, %pos, "skipping undecodable message: {e}");
                        undecodable.push(pos);
                        return;
                    }
                };
                let seq = st.next_seq;
                st.next_seq += 1;
                let mut entry = queue.entry_for(Arc::new(message), seq, now);
                entry.pos = Some(pos);
                if let Some(key) = &entry.dedup_key {
                    *st.dedup.entry(key.clone()).or_default() += 1;
                }
                st.insert_entry(entry, true);
            })
            .map_err(|e| store_failed(&queue, e))?;
            if stats.records_recovered > 0 || stats.bytes_truncated > 0 || stats.corrupt_records > 0
            {
                tracing::info!(vhost, queue = name, ?stats, "recovered queue");
            }
            let mut store = store;
            for pos in undecodable {
                let _ = store.ack(pos);
            }
            st.store = Some(store);
        }
        Ok(queue)
    }

    fn describe(&self) -> String {
        queue_ref(&self.vhost, &self.name)
    }

    /// A fresh entry for `message`: its priority, expiry and dedup key.
    fn entry_for(&self, message: Arc<Message>, seq: u64, now: u64) -> Entry {
        let published = if message.published_at == 0 {
            now
        } else {
            message.published_at
        };
        let ttl = match (self.args.message_ttl, message.ttl().ok().flatten()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Entry {
            seq,
            priority: message.priority().min(self.args.max_priority),
            expires_at: ttl.map(|t| published.saturating_add(t)),
            dedup_key: if self.args.deduplication {
                message.dedup_key()
            } else {
                None
            },
            message,
            redelivered: false,
            pos: None,
            delivery_count: 0,
        }
    }

    /// Enqueues a message and delivers it if a consumer has credit.
    pub fn publish(self: &Arc<Self>, message: Arc<Message>) -> Result<Enqueued, BrokerError> {
        let now = self.clock.now_ms();
        let mut st = self.state.lock();
        if st.deleted {
            return Ok(Enqueued::Accepted { stored: false });
        }
        let seq = st.next_seq;
        let mut entry = self.entry_for(message, seq, now);
        if let Some(key) = &entry.dedup_key {
            if st.dedup.contains_key(key) {
                return Ok(Enqueued::Duplicate);
            }
        }
        let size = entry.message.body.len() as u64;
        let full = self
            .args
            .max_length
            .is_some_and(|max| st.ready.len() as u64 >= max)
            || self
                .args
                .max_length_bytes
                .is_some_and(|max| st.ready.bytes() + size > max);
        if full && self.args.overflow != Overflow::DropHead {
            if self.args.overflow == Overflow::RejectPublishDlx
                && self.args.dead_letter_exchange.is_some()
            {
                st.dead.push(DeadLetter {
                    message: entry.message,
                    reason: DeathReason::MaxLen,
                });
            }
            return Ok(Enqueued::Rejected);
        }
        if entry.message.is_persistent() {
            if let Some(store) = st.store() {
                entry.pos = Some(
                    store
                        .append(entry.message.record())
                        .map_err(|e| store_failed(self, e))?,
                );
            }
        }
        st.next_seq += 1;
        self.metrics.published.inc();
        if let Some(key) = &entry.dedup_key {
            *st.dedup.entry(key.clone()).or_default() += 1;
        }
        let stored = entry.pos.is_some();
        st.insert_entry(entry, false);
        // Dispatch as of the millisecond before: a message whose TTL (0)
        // ends the instant it arrives still goes to a consumer that can take
        // it at once, as in RabbitMQ, and expires otherwise just below.
        self.dispatch(&mut st, now.saturating_sub(1));
        self.enforce_limits(&mut st);
        self.expire(&mut st, now);
        Ok(Enqueued::Accepted { stored })
    }

    /// Drop-head overflow: the oldest ready messages make room.
    fn enforce_limits(&self, st: &mut QueueState) {
        let mut dropped = Vec::new();
        loop {
            let over_len = self
                .args
                .max_length
                .is_some_and(|max| st.ready.len() as u64 > max);
            let over_bytes = self
                .args
                .max_length_bytes
                .is_some_and(|max| st.ready.bytes() > max);
            if !(over_len || over_bytes) {
                break;
            }
            match st.ready.pop_front() {
                Some(r) => dropped.push(r),
                None => break,
            }
        }
        if !dropped.is_empty() {
            let dlx = self.args.dead_letter_exchange.is_some();
            st.discard(dropped, DeathReason::MaxLen, &self.name, dlx);
        }
    }

    /// Removes expired messages from the heads of the queue.
    fn expire(&self, st: &mut QueueState, now: u64) {
        let expired = st.ready.take_expired(now);
        if !expired.is_empty() {
            let dlx = self.args.dead_letter_exchange.is_some();
            st.discard(expired, DeathReason::Expired, &self.name, dlx);
        }
    }

    /// Attaches a consumer and starts delivering to it.
    pub fn add_consumer(self: &Arc<Self>, spec: ConsumerSpec) -> Result<(), BrokerError> {
        let now = self.clock.now_ms();
        let mut st = self.state.lock();
        if st.deleted {
            return Err(BrokerError::NotFound(format!("no {}", self.describe())));
        }
        // A single-active-consumer queue already picks one consumer at a
        // time, and RabbitMQ refuses exclusive consumers on it.
        let exclusive_refused =
            spec.exclusive && (!st.consumers.is_empty() || self.args.single_active_consumer);
        if st.consumers.iter().any(|c| c.exclusive) || exclusive_refused {
            return Err(BrokerError::AccessRefused(format!(
                "{} in exclusive use",
                self.describe()
            )));
        }
        // Consumers stay sorted by priority, highest first, each after the
        // ones of its priority already there. A single active consumer is
        // the first to arrive, whatever its priority.
        let at = if self.args.single_active_consumer {
            st.consumers.len()
        } else {
            st.consumers
                .iter()
                .position(|c| c.priority < spec.priority)
                .unwrap_or(st.consumers.len())
        };
        if at <= st.next_consumer && at < st.consumers.len() {
            st.next_consumer += 1;
        }
        st.consumers.insert(at, spec);
        st.had_consumer = true;
        st.last_used = now;
        self.dispatch(&mut st, now);
        Ok(())
    }

    /// Detaches a consumer. Returns whether the queue should now be
    /// auto-deleted (it is auto-delete and its last consumer left).
    pub fn remove_consumer(self: &Arc<Self>, id: ConsumerId) -> bool {
        let now = self.clock.now_ms();
        let mut st = self.state.lock();
        st.consumers.retain(|c| c.id != id);
        if st.next_consumer >= st.consumers.len() {
            st.next_consumer = 0;
        }
        st.last_used = now;
        // With a single active consumer, the next one takes over now.
        self.dispatch(&mut st, now);
        self.options.auto_delete && st.had_consumer && st.consumers.is_empty() && !st.deleted
    }

    /// Marks the queue used (a redeclare), resetting its `x-expires` timer.
    pub fn touch(&self) {
        self.state.lock().last_used = self.clock.now_ms();
    }

    /// Takes the next ready message for basic.get. With `no_ack` it counts as
    /// acked at once; otherwise it is unacked until the channel settles it.
    /// Also returns how many messages remain ready.
    pub fn get(self: &Arc<Self>, no_ack: bool) -> Option<(Entry, u32)> {
        let now = self.clock.now_ms();
        let mut st = self.state.lock();
        st.last_used = now;
        self.expire(&mut st, now);
        let entry = loop {
            let r = st.ready.pop_front()?;
            if let Some(e) = st.load(r, &self.name) {
                break e;
            }
        };
        let entry = self.prepare_delivery(entry);
        if no_ack {
            st.forget(entry.pos, entry.dedup_key.as_deref(), &self.name);
        } else {
            st.unacked += 1;
        }
        Some((entry, st.ready.len() as u32))
    }

    /// Counts a delivery and, for queues with a delivery limit, stamps
    /// redeliveries with `x-delivery-count` as quorum queues do.
    fn prepare_delivery(&self, mut entry: Entry) -> Entry {
        self.metrics.delivered.inc();
        if entry.redelivered {
            self.metrics.redelivered.inc();
        }
        if self.args.delivery_limit.is_some() && entry.delivery_count > 0 {
            let count = FieldValue::I64(i64::from(entry.delivery_count));
            entry.message = Arc::new(entry.message.with_header("x-delivery-count", count));
        }
        entry
    }

    /// Settles delivered messages for good (acked).
    pub fn ack(self: &Arc<Self>, entries: &[Entry]) {
        let mut st = self.state.lock();
        st.unacked = st.unacked.saturating_sub(entries.len() as u32);
        self.metrics.acked.add(entries.len() as u64);
        for e in entries {
            st.forget(e.pos, e.dedup_key.as_deref(), &self.name);
        }
    }

    /// Settles delivered messages that the consumer rejected without
    /// requeue: they are dead-lettered if the queue has a dead-letter
    /// exchange, dropped otherwise.
    pub fn reject(self: &Arc<Self>, entries: Vec<Entry>) {
        let mut st = self.state.lock();
        st.unacked = st.unacked.saturating_sub(entries.len() as u32);
        let dlx = self.args.dead_letter_exchange.is_some();
        for e in entries {
            st.forget(e.pos, e.dedup_key.as_deref(), &self.name);
            if dlx {
                st.dead.push(DeadLetter {
                    message: e.message,
                    reason: DeathReason::Rejected,
                });
            }
        }
    }

    /// Puts delivered messages back at their original positions, marked
    /// redelivered, and dispatches them again. A message that came back more
    /// often than the queue's delivery limit is dead-lettered instead.
    pub fn requeue(self: &Arc<Self>, entries: Vec<Entry>) {
        let now = self.clock.now_ms();
        let mut st = self.state.lock();
        st.unacked = st.unacked.saturating_sub(entries.len() as u32);
        if st.deleted {
            return;
        }
        for mut entry in entries {
            entry.delivery_count += 1;
            if self
                .args
                .delivery_limit
                .is_some_and(|limit| u64::from(entry.delivery_count) > limit)
            {
                st.forget(entry.pos, entry.dedup_key.as_deref(), &self.name);
                if self.args.dead_letter_exchange.is_some() {
                    st.dead.push(DeadLetter {
                        message: entry.message,
                        reason: DeathReason::DeliveryLimit,
                    });
                }
                continue;
            }
            st.insert_entry(entry, true);
        }
        self.dispatch(&mut st, now);
    }

    /// Puts back a message that never reached its consumer (its channel
    /// closed first), without marking it redelivered.
    pub fn return_undelivered(self: &Arc<Self>, delivery: Delivery) {
        let now = self.clock.now_ms();
        let mut st = self.state.lock();
        if !delivery.no_ack {
            st.unacked = st.unacked.saturating_sub(1);
        }
        if st.deleted {
            return;
        }
        let redelivered = delivery.entry.redelivered;
        st.insert_entry(delivery.entry, redelivered);
        self.dispatch(&mut st, now);
    }

    /// Tries to deliver again, e.g. after credit was released.
    pub fn kick(self: &Arc<Self>) {
        let now = self.clock.now_ms();
        let mut st = self.state.lock();
        self.dispatch(&mut st, now);
    }

    /// Time passes: expires messages whose TTL ran out. Returns whether the
    /// queue itself expired (`x-expires`: unused for that long).
    pub fn tick(self: &Arc<Self>, now: u64) -> bool {
        let mut st = self.state.lock();
        self.expire(&mut st, now);
        self.args.expires.is_some_and(|ttl| {
            st.consumers.is_empty() && !st.deleted && now.saturating_sub(st.last_used) >= ttl
        })
    }

    /// Messages waiting to go to the dead-letter exchange.
    pub fn take_dead_letters(&self) -> Vec<DeadLetter> {
        std::mem::take(&mut self.state.lock().dead)
    }

    /// Drops every ready message (unacked ones stay); returns how many.
    pub fn purge(&self) -> u32 {
        let mut st = self.state.lock();
        let ready = st.ready.drain();
        let n = ready.len() as u32;
        for r in ready {
            st.forget(r.pos, r.dedup_key.as_deref(), &self.name);
        }
        n
    }

    /// Marks the queue deleted, drops its messages and store, and cancels
    /// its consumers. Returns how many messages were ready.
    pub fn delete(&self) -> u32 {
        let mut st = self.state.lock();
        st.deleted = true;
        let n = st.ready.drain().len() as u32;
        st.dedup.clear();
        if let Some(store) = st.store.take() {
            if let Err(e) = store.delete_all() {
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

    /// Bytes of ready message bodies.
    pub fn ready_bytes(&self) -> u64 {
        self.state.lock().ready.bytes()
    }

    /// Whether the store has appends or acks a sync would write.
    pub fn is_dirty(&self) -> bool {
        self.state
            .lock()
            .store
            .as_ref()
            .is_some_and(QueueStore::is_dirty)
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
        if let Some(store) = st.store.take() {
            if let Err(e) = store.close() {
                tracing::error!(queue = self.name, "closing store failed: {e}");
            }
        }
        st.deleted = true;
    }

    /// The consumer the next message goes to, its credit taken: the
    /// highest priority with credit wins, round-robin among equals.
    fn pick_consumer(&self, st: &mut QueueState) -> Option<usize> {
        let n = if self.args.single_active_consumer {
            1
        } else {
            st.consumers.len()
        };
        let mut first = 0;
        while first < n {
            let priority = st.consumers[first].priority;
            let end = (first..n)
                .find(|&i| st.consumers[i].priority != priority)
                .unwrap_or(n);
            let len = end - first;
            let start = match st.next_consumer {
                next if (first..end).contains(&next) => next - first,
                _ => 0,
            };
            let found = (0..len)
                .map(|i| first + (start + i) % len)
                .find(|&i| st.consumers[i].try_take_credit());
            if let Some(idx) = found {
                st.next_consumer = idx + 1;
                return Some(idx);
            }
            first = end;
        }
        None
    }

    /// Delivers ready messages round-robin to consumers with credit (only to
    /// the first consumer, with a single active consumer). Expired messages
    /// met on the way are dead-lettered, never delivered.
    fn dispatch(self: &Arc<Self>, st: &mut QueueState, now: u64) {
        while !st.ready.is_empty() && !st.consumers.is_empty() {
            let Some(idx) = self.pick_consumer(st) else {
                return;
            };
            self.expire(st, now);
            let entry = loop {
                let Some(r) = st.ready.pop_front() else {
                    st.consumers[idx].release_credit();
                    return;
                };
                if let Some(e) = st.load(r, &self.name) {
                    break e;
                }
            };
            let entry = self.prepare_delivery(entry);
            let consumer = &st.consumers[idx];
            let no_ack = consumer.no_ack;
            let (pos, key) = (entry.pos, entry.dedup_key.clone());
            let delivery = Delivery {
                queue: Arc::clone(self),
                consumer: consumer.id,
                consumer_tag: Arc::clone(&consumer.tag),
                no_ack,
                entry,
            };
            match consumer.sink.deliver(delivery) {
                Ok(()) if no_ack => st.forget(pos, key.as_deref(), &self.name),
                Ok(()) => st.unacked += 1,
                Err(back) => {
                    // The consumer's connection is gone: keep the message,
                    // forget the consumer.
                    let redelivered = back.entry.redelivered;
                    st.insert_entry(back.entry, redelivered);
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
    use crate::clock::ManualClock;
    use antre_amqp::BasicProperties;
    use bytes::Bytes;
    use std::sync::atomic::{AtomicBool, Ordering};

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
            assert!(matches!(
                self.publish(m).expect("publish"),
                Enqueued::Accepted { .. }
            ));
        }
    }

    fn queue() -> Arc<Queue> {
        queue_with(&[], Arc::new(ManualClock::at(1_000_000)))
    }

    fn queue_with(args: &[(&str, FieldValue)], clock: Arc<ManualClock>) -> Arc<Queue> {
        Queue::new(
            "/",
            "q",
            QueueOptions {
                durable: false,
                exclusive_owner: None,
                auto_delete: false,
                arguments: args.iter().cloned().collect(),
            },
            clock,
        )
        .expect("valid arguments")
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
            priority: 0,
        }
    }

    #[test]
    fn higher_priority_consumers_are_served_first_while_they_have_credit() {
        let q = queue();
        let sinks: Vec<Arc<CollectSink>> = (0..3).map(|_| Arc::default()).collect();
        let low = ConsumerSpec {
            priority: -1,
            ..consumer(1, 0, &sinks[0])
        };
        let high_a = ConsumerSpec {
            priority: 5,
            ..consumer(2, 2, &sinks[1])
        };
        let high_b = ConsumerSpec {
            priority: 5,
            ..consumer(3, 1, &sinks[2])
        };
        q.add_consumer(low).unwrap();
        q.add_consumer(high_a).unwrap();
        q.add_consumer(high_b).unwrap();
        for i in 0..5 {
            q.publish_ok(message(&i.to_string()));
        }
        // Round-robin between the two of priority 5 until their windows
        // (2 and 1) are full; only then does the low one get messages.
        assert_eq!(sinks[1].bodies(), ["0", "2"]);
        assert_eq!(sinks[2].bodies(), ["1"]);
        assert_eq!(sinks[0].bodies(), ["3", "4"]);
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
            Arc::new(ManualClock::default()),
        )
        .unwrap();
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

    fn reasons(q: &Queue) -> Vec<(String, &'static str)> {
        q.take_dead_letters()
            .into_iter()
            .map(|d| {
                (
                    String::from_utf8_lossy(&d.message.body).into_owned(),
                    d.reason.as_str(),
                )
            })
            .collect()
    }

    fn with_props(body: &str, props: BasicProperties) -> Arc<Message> {
        Arc::new(Message::new(
            String::new(),
            "q".into(),
            props,
            Bytes::copy_from_slice(body.as_bytes()),
        ))
    }

    #[test]
    fn queue_ttl_expires_messages_to_the_dead_letter_exchange() {
        let clock = Arc::new(ManualClock::at(1_000_000));
        let q = queue_with(
            &[
                ("x-message-ttl", FieldValue::I32(1000)),
                ("x-dead-letter-exchange", FieldValue::string("dlx")),
            ],
            Arc::clone(&clock),
        );
        q.publish_ok(message("a"));
        clock.advance(999);
        assert!(!q.tick(clock.now_ms()));
        assert_eq!(q.counts().ready, 1);
        clock.advance(1);
        q.tick(clock.now_ms());
        assert_eq!(q.counts().ready, 0);
        assert_eq!(reasons(&q), [("a".to_owned(), "expired")]);
    }

    #[test]
    fn expired_messages_are_never_delivered_and_message_ttl_wins_when_shorter() {
        let clock = Arc::new(ManualClock::at(1_000_000));
        let q = queue_with(
            &[("x-message-ttl", FieldValue::I32(10_000))],
            Arc::clone(&clock),
        );
        let short = BasicProperties {
            expiration: Some("100".into()),
            ..Default::default()
        };
        q.publish_ok(with_props("short", short));
        q.publish_ok(message("long"));
        clock.advance(100);
        // No tick: delivery itself must skip the expired head.
        let sink = Arc::new(CollectSink::default());
        q.add_consumer(consumer(1, 0, &sink)).unwrap();
        assert_eq!(sink.bodies(), ["long"]);
        assert!(
            q.take_dead_letters().is_empty(),
            "no dead-letter exchange: dropped"
        );
    }

    #[test]
    fn a_ttl_zero_message_goes_to_a_waiting_consumer_or_expires() {
        let clock = Arc::new(ManualClock::at(1_000_000));
        let q = queue_with(&[("x-message-ttl", FieldValue::I32(0))], clock);
        q.publish_ok(message("nobody"));
        assert_eq!(q.counts().ready, 0, "expired at once without a consumer");
        let sink = Arc::new(CollectSink::default());
        q.add_consumer(consumer(1, 0, &sink)).unwrap();
        q.publish_ok(message("caught"));
        assert_eq!(sink.bodies(), ["caught"]);
    }

    #[test]
    fn unused_queue_expires() {
        let clock = Arc::new(ManualClock::at(5_000));
        let q = queue_with(&[("x-expires", FieldValue::I32(1000))], Arc::clone(&clock));
        clock.advance(500);
        q.touch();
        clock.advance(999);
        assert!(!q.tick(clock.now_ms()), "redeclare reset the timer");
        clock.advance(1);
        assert!(q.tick(clock.now_ms()));
    }

    #[test]
    fn max_length_drops_head_into_dead_letters() {
        let q = queue_with(
            &[
                ("x-max-length", FieldValue::I32(2)),
                ("x-dead-letter-exchange", FieldValue::string("dlx")),
            ],
            Arc::new(ManualClock::default()),
        );
        for b in ["1", "2", "3"] {
            q.publish_ok(message(b));
        }
        assert_eq!(q.counts().ready, 2);
        assert_eq!(reasons(&q), [("1".to_owned(), "maxlen")]);
        let (first, _) = q.get(true).unwrap();
        assert_eq!(&first.message.body[..], b"2");
    }

    #[test]
    fn max_length_bytes_and_reject_publish() {
        let q = queue_with(
            &[
                ("x-max-length-bytes", FieldValue::I32(5)),
                ("x-overflow", FieldValue::string("reject-publish")),
            ],
            Arc::new(ManualClock::default()),
        );
        assert_eq!(
            q.publish(message("abc")).unwrap(),
            Enqueued::Accepted { stored: false }
        );
        assert_eq!(q.publish(message("abc")).unwrap(), Enqueued::Rejected);
        assert_eq!(
            q.publish(message("ab")).unwrap(),
            Enqueued::Accepted { stored: false }
        );
        assert_eq!(q.counts().ready, 2);
        let dlx = queue_with(
            &[
                ("x-max-length", FieldValue::I32(0)),
                ("x-overflow", FieldValue::string("reject-publish-dlx")),
                ("x-dead-letter-exchange", FieldValue::string("dlx")),
            ],
            Arc::new(ManualClock::default()),
        );
        assert_eq!(dlx.publish(message("x")).unwrap(), Enqueued::Rejected);
        assert_eq!(reasons(&dlx), [("x".to_owned(), "maxlen")]);
    }

    #[test]
    fn priority_queue_delivers_highest_first() {
        let q = queue_with(
            &[("x-max-priority", FieldValue::I32(10))],
            Arc::new(ManualClock::default()),
        );
        for (body, p) in [
            ("low", 1),
            ("high", 9),
            ("none", 0),
            ("mid", 5),
            ("high2", 9),
        ] {
            let props = BasicProperties {
                priority: Some(p),
                ..Default::default()
            };
            q.publish_ok(with_props(body, props));
        }
        let order: Vec<String> = std::iter::from_fn(|| q.get(true))
            .map(|(e, _)| String::from_utf8_lossy(&e.message.body).into_owned())
            .collect();
        assert_eq!(order, ["high", "high2", "mid", "low", "none"]);
    }

    #[test]
    fn delivery_limit_dead_letters_poison_messages_and_counts_redeliveries() {
        let q = queue_with(
            &[
                ("x-delivery-limit", FieldValue::I32(2)),
                ("x-dead-letter-exchange", FieldValue::string("dlx")),
            ],
            Arc::new(ManualClock::default()),
        );
        q.publish_ok(message("poison"));
        for attempt in 0..3u32 {
            let (e, _) = q.get(false).expect("delivered again");
            let count = e
                .message
                .properties
                .headers
                .as_ref()
                .and_then(|h| h.get("x-delivery-count"))
                .and_then(FieldValue::as_i64);
            assert_eq!(count, (attempt > 0).then_some(i64::from(attempt)));
            q.requeue(vec![e]);
        }
        assert!(
            q.get(false).is_none(),
            "a third return exceeded the limit of 2"
        );
        assert_eq!(reasons(&q), [("poison".to_owned(), "delivery_limit")]);
    }

    #[test]
    fn single_active_consumer_gets_everything_until_it_leaves() {
        let q = queue_with(
            &[("x-single-active-consumer", FieldValue::Bool(true))],
            Arc::new(ManualClock::default()),
        );
        let (a, b) = (
            Arc::new(CollectSink::default()),
            Arc::new(CollectSink::default()),
        );
        q.add_consumer(consumer(1, 0, &a)).unwrap();
        q.add_consumer(consumer(2, 0, &b)).unwrap();
        for i in 0..3 {
            q.publish_ok(message(&i.to_string()));
        }
        assert_eq!(a.bodies(), ["0", "1", "2"]);
        assert!(b.bodies().is_empty());
        q.remove_consumer(1);
        q.publish_ok(message("3"));
        assert_eq!(b.bodies(), ["3"]);
    }

    #[test]
    fn deduplicating_queue_refuses_keys_it_holds_until_they_leave() {
        let q = queue_with(
            &[("x-message-deduplication", FieldValue::Bool(true))],
            Arc::new(ManualClock::default()),
        );
        let keyed = |body: &str, key: &str| {
            let headers: FieldTable = [("x-deduplication-header", FieldValue::string(key))]
                .into_iter()
                .collect();
            with_props(
                body,
                BasicProperties {
                    headers: Some(headers),
                    ..Default::default()
                },
            )
        };
        let by_id = |body: &str, id: &str| {
            with_props(
                body,
                BasicProperties {
                    message_id: Some(id.into()),
                    ..Default::default()
                },
            )
        };
        q.publish_ok(keyed("p1", "payment-1"));
        assert_eq!(
            q.publish(keyed("p1 again", "payment-1")).unwrap(),
            Enqueued::Duplicate
        );
        q.publish_ok(by_id("p2", "payment-2"));
        assert_eq!(
            q.publish(by_id("p2 again", "payment-2")).unwrap(),
            Enqueued::Duplicate
        );
        q.publish_ok(message("no key"));
        q.publish_ok(message("no key"));
        // Unacked still holds the key; acked releases it.
        let (e, _) = q.get(false).unwrap();
        assert_eq!(
            q.publish(keyed("p1 again", "payment-1")).unwrap(),
            Enqueued::Duplicate
        );
        q.ack(&[e]);
        q.publish_ok(keyed("p1 later", "payment-1"));
    }
}
