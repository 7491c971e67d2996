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
//! Memory: all queues share one budget for the messages they keep in
//! memory; past it, bodies go to disk (the durable store, or a scratch
//! store for transient ones) and a long queue's index goes to disk in pages
//! ([`paging`]), so a backlog can be far larger than RAM, transient or not.
//!
//! Dead letters: messages that expire, overflow, are rejected or exceed the
//! delivery limit are collected under the lock and routed to the dead-letter
//! exchange by the caller after the lock is released
//! ([`Queue::take_dead_letters`]), so dead-lettering into the same queue
//! cannot deadlock.

mod args;
mod credit;
mod dying;
mod line;
mod paging;
mod ready;
mod replica;
mod state;
mod utilisation;

use std::sync::Arc;

use antre_amqp::{FieldTable, FieldValue};
use antre_store::{PendingSync, QueueStore, SegmentPosition, StoreError, StoreOptions};
use parking_lot::{Mutex, RwLock};

pub use args::{DeadLetterStrategy, Locator, Overflow, QueueArgs, QueueKind};
pub use credit::{
    Activity, ConsumerInfo, ConsumerSpec, Credit, OutputBudget, OutputWindow, DELIVERY_OVERHEAD,
    FAIR_SHARE,
};
pub use paging::{MessageMemory, Paging, PAGE_ENTRIES};
pub use ready::Tally;
pub use replica::ReplicatedMessage;
use state::QueueState;
pub use utilisation::share_free;

use crate::clock::Clock;
use crate::error::{queue_ref, BrokerError};
use crate::message::Message;
use crate::metrics::QueueMetrics;
use crate::policy::AppliedPolicy;
use crate::replicated::QueueReplica;

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

/// A delivered message waiting for its consumer to settle it.
///
/// A persistent message in a durable queue keeps only its place in the
/// store ([`Entry::into_unsettled`]): its body is on disk already, and
/// holding it would let consumers' unacked windows (prefetch × message
/// size, unbounded with prefetch 0) pin that many bodies in memory. The
/// body is read back only if the message comes back (requeue) or is
/// dead-lettered, which are the rare paths; an ack needs no body.
#[derive(Debug)]
///
/// Its fields are open to the crate so that a channel can keep them packed
/// (see `channel::unacked`) and put them back together at settle time.
pub struct Unsettled {
    pub(crate) seq: u64,
    /// The message, unless it is persistent and can be read back from the store.
    pub(crate) message: Option<Arc<Message>>,
    pub(crate) pos: Option<SegmentPosition>,
    pub(crate) delivery_count: u32,
    /// Body size, to count the message when it comes back.
    pub(crate) size: u32,
    pub(crate) priority: u8,
    pub(crate) expires_at: Option<u64>,
    pub(crate) dedup_key: Option<String>,
}

impl Unsettled {
    /// Whether the body is still held in memory.
    pub fn holds_body(&self) -> bool {
        self.message.is_some()
    }
}

impl From<Entry> for Unsettled {
    /// Keeps the body (see [`Entry::into_unsettled`] to drop it).
    fn from(e: Entry) -> Unsettled {
        Unsettled {
            seq: e.seq,
            size: e.body_size(),
            message: Some(e.message),
            pos: e.pos,
            delivery_count: e.delivery_count,
            priority: e.priority,
            expires_at: e.expires_at,
            dedup_key: e.dedup_key,
        }
    }
}

impl Entry {
    /// Its body's size (what a queue's byte counts count).
    pub(crate) fn body_size(&self) -> u32 {
        u32::try_from(self.message.body.len()).unwrap_or(u32::MAX)
    }

    /// Turns a delivered entry into what its channel keeps until it is
    /// settled: without its body when the store has it.
    pub fn into_unsettled(self) -> Unsettled {
        let stored = self.pos.is_some();
        let mut u = Unsettled::from(self);
        if stored {
            u.message = None;
        }
        u
    }
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
    /// The channel's prefetch window the delivery took credit from (none
    /// for no-ack consumers). A delivery that comes back undelivered gives
    /// it back, or the channel's other consumers would wait for it forever.
    pub channel_credit: Option<Arc<Credit>>,
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
    /// Whether the channel's connection can take another delivery now (see
    /// [`OutputWindow`]). When it says no, the queue holds its messages and
    /// the connection kicks it once it has written.
    fn has_room(&self) -> bool {
        true
    }
    /// Hands over a delivery a queue on another cluster node made (see
    /// [`crate::remote`]); gives it back if the channel is gone. Sinks
    /// that never carry forwarded consumers keep this default.
    fn deliver_remote(
        &self,
        delivery: crate::remote::RemoteDelivery,
    ) -> Result<(), Box<crate::remote::RemoteDelivery>> {
        Err(Box::new(delivery))
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

/// A queue's messages at one moment, in the figures RabbitMQ's
/// management API reports for a queue.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct QueueStats {
    /// Ready messages.
    pub ready: Tally,
    /// Delivered messages not settled yet.
    pub unacked: Tally,
    /// Ready and unacked messages kept on disk: those the durable store
    /// keeps, or every message of a quorum queue (its Raft log keeps them).
    pub persistent: Tally,
    /// Ready messages whose bodies are in memory (the rest are paged out).
    pub ready_in_memory: Tally,
    /// Unacked messages whose bodies are held in memory (a stored one is
    /// read back only if it comes back).
    pub unacked_in_memory: Tally,
    /// The `timestamp` property (seconds) of the next message to deliver,
    /// if it has one and its body is in memory.
    pub head_timestamp: Option<u64>,
    /// Consumers attached.
    pub consumers: u32,
    /// ms it was held back (ready messages, consumers without room) and
    /// ms since it was created: two readings give RabbitMQ's consumer
    /// utilisation over the time between them ([`share_free`]).
    pub held: (u64, u64),
    /// An estimate of the memory it holds, in bytes (RabbitMQ's `memory`,
    /// its process's): what it holds of the node's message budget (ready
    /// entries and the bodies among them in memory, dead letters kept),
    /// and its unacked messages' entries and bodies held in memory.
    pub memory: u64,
}

impl QueueStats {
    /// Ready and unacked messages.
    pub fn messages(&self) -> Tally {
        self.ready.plus(self.unacked)
    }

    /// Messages whose bodies are in memory.
    pub fn in_memory(&self) -> Tally {
        self.ready_in_memory.plus(self.unacked_in_memory)
    }

    /// Ready messages whose bodies are on disk only.
    pub fn paged_out(&self) -> Tally {
        self.ready.minus(self.ready_in_memory)
    }
}

/// How a message left a queue: a basic.get answer or a delivery to a
/// consumer, either to be acked or acked on the way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Took {
    /// A basic.get answer.
    Get {
        /// Acked on the way.
        no_ack: bool,
    },
    /// A delivery to a consumer.
    Consume {
        /// Acked on the way.
        no_ack: bool,
    },
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

    /// The reason [`DeathReason::as_str`] names.
    pub fn from_name(name: &str) -> Option<DeathReason> {
        [
            DeathReason::Rejected,
            DeathReason::Expired,
            DeathReason::MaxLen,
            DeathReason::DeliveryLimit,
        ]
        .into_iter()
        .find(|r| r.as_str() == name)
    }
}

/// A message leaving a queue for its dead-letter exchange.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// The message as it was in the queue.
    pub message: Arc<Message>,
    /// Why it left.
    pub reason: DeathReason,
    /// At-least-once dead-lettering: the sequence number of the message
    /// the queue keeps until this letter is held; the router reports back
    /// with [`Queue::dead_letter_routed`]. None: the message is gone
    /// already (at most once).
    pub hold: Option<u64>,
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

    fn watch(&self, hook: antre_store::DirtyHook) {
        if let Some(store) = self.state.lock().store.as_mut() {
            store.set_on_dirty(hook);
        }
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
    /// What its arguments and its policies turn on, for readers outside
    /// the queue's lock ([`Queue::args`]); the queue itself works with the
    /// copy in its state, and both change together
    /// ([`Queue::apply_policy`]).
    args: RwLock<Arc<QueueArgs>>,
    /// Its type, which no policy changes: read on every delivery (for the
    /// per-type counters), so without the arguments' lock.
    kind: QueueKind,
    /// The policy and operator policy that apply to it.
    policy: RwLock<AppliedPolicy>,
    /// Message counters.
    pub metrics: QueueMetrics,
    clock: Arc<dyn Clock>,
    state: Mutex<QueueState>,
    /// Time alone can change the queue (TTLs, `x-expires`, a message with
    /// an expiration), so the broker's timer must visit it.
    timed: std::sync::atomic::AtomicBool,
    /// Tells the vhost the queue became timed.
    timer_hook: std::sync::OnceLock<TimerHook>,
    /// A quorum queue's replication, on the members of its group in a
    /// cluster (see [`crate::replicated`]).
    replica: std::sync::OnceLock<Arc<dyn QueueReplica>>,
}

/// What a queue calls when it first needs the broker's timer.
pub struct TimerHook(pub Box<dyn Fn() + Send + Sync>);

impl std::fmt::Debug for TimerHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TimerHook")
    }
}

/// Whether a policy key changes what an antre queue does (the others are
/// RabbitMQ features antre does not have, accepted for compatibility).
fn effective_key(key: &str) -> bool {
    matches!(
        key,
        "message-ttl"
            | "expires"
            | "max-length"
            | "max-length-bytes"
            | "overflow"
            | "dead-letter-exchange"
            | "dead-letter-routing-key"
            | "dead-letter-strategy"
            | "delivery-limit"
            | "consumer-timeout"
            | "alternate-exchange"
    )
}

fn store_failed(queue: &Queue, e: StoreError) -> BrokerError {
    BrokerError::Internal(format!(
        "message store of {} failed: {e}",
        queue_ref(&queue.vhost, &queue.name)
    ))
}

impl Queue {
    /// A new, empty queue; its messages live in memory within the node's
    /// budget and are paged to scratch stores beyond it (with `paging`; in
    /// memory only without).
    pub fn new(
        vhost: &str,
        name: &str,
        options: QueueOptions,
        clock: Arc<dyn Clock>,
        paging: Option<Paging>,
    ) -> Result<Arc<Queue>, BrokerError> {
        let args = Arc::new(QueueArgs::parse(&options.arguments, vhost, name)?);
        let state = QueueState::new(Arc::clone(&args), clock.now_ms(), paging, name);
        let args_timed = args.needs_timer();
        Ok(Arc::new(Queue {
            name: name.to_owned(),
            vhost: vhost.to_owned(),
            options,
            kind: args.kind,
            args: RwLock::new(args),
            policy: RwLock::new(AppliedPolicy::default()),
            metrics: QueueMetrics::default(),
            clock,
            state: Mutex::new(state),
            timed: std::sync::atomic::AtomicBool::new(args_timed),
            timer_hook: std::sync::OnceLock::new(),
            replica: std::sync::OnceLock::new(),
        }))
    }

    /// Asks the queue to call `hook` once, when it first needs the broker's
    /// timer (now, if its arguments already make it timed), so the timer
    /// visits only such queues, not every queue of the vhost.
    pub fn on_timed(&self, hook: TimerHook) {
        let hook = self.timer_hook.get_or_init(|| hook);
        if self.timed.load(std::sync::atomic::Ordering::Relaxed) {
            (hook.0)();
        }
    }

    /// Makes the queue count the messages it dead-letters or drops for a
    /// dead-letter reason into `counters` (the broker's).
    pub fn count_dead_letters_in(&self, counters: Arc<crate::metrics::DeadLettered>) {
        self.state.lock().dead_lettered = Some(counters);
    }

    /// Notes that the queue holds something that expires.
    fn mark_timed(&self) {
        if !self.timed.swap(true, std::sync::atomic::Ordering::Relaxed) {
            if let Some(hook) = self.timer_hook.get() {
                (hook.0)();
            }
        }
    }

    /// What the queue's arguments and policies turn on, as of now.
    pub fn args(&self) -> Arc<QueueArgs> {
        Arc::clone(&self.args.read())
    }

    /// The queue's type (never changed by a policy).
    pub fn kind(&self) -> QueueKind {
        self.kind
    }

    /// The policy and operator policy that apply to the queue.
    pub fn policy(&self) -> AppliedPolicy {
        self.policy.read().clone()
    }

    /// Applies a (new) policy selection at once, as RabbitMQ does: limits
    /// are enforced on the messages already in the queue (drop-head drops,
    /// or dead-letters, the oldest), and new TTLs, expiry, dead-lettering,
    /// delivery limit and consumer timeout take effect from now on
    /// (messages keep the expiry they were given). Returns whether anything
    /// changed. Dead letters it causes wait in the queue for the caller to
    /// route ([`Queue::take_dead_letters`]).
    pub fn apply_policy(self: &Arc<Self>, applied: AppliedPolicy) -> bool {
        if *self.policy.read() == applied {
            return false;
        }
        let declared = match QueueArgs::parse(&self.options.arguments, &self.vhost, &self.name) {
            Ok(args) => args,
            // Parsed once already when the queue was made.
            Err(e) => {
                tracing::error!(queue = self.name, "cannot apply policy: {e}");
                return false;
            }
        };
        let args = Arc::new(applied.queue_args(&self.options.arguments, declared));
        if applied.definition().keys().any(|k| !effective_key(k)) {
            tracing::debug!(
                queue = self.name,
                policy = applied.policy_name(),
                "policy keys without effect in antre (mirroring, queue mode or version, \
                 stream and placement settings) are kept but ignored"
            );
        }
        let now = self.clock.now_ms();
        let mut st = self.state.lock();
        st.args = Arc::clone(&args);
        *self.args.write() = Arc::clone(&args);
        *self.policy.write() = applied;
        if args.needs_timer() {
            self.mark_timed();
        }
        if !args.at_least_once() && !st.dying.is_empty() {
            st.release_dying(&self.name);
        }
        self.enforce_limits(&mut st);
        self.expire(&mut st, now);
        true
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
        paging: Option<Paging>,
    ) -> Result<Arc<Queue>, BrokerError> {
        let queue = Queue::new(vhost, name, options, clock, paging)?;
        let mut undecodable = Vec::new();
        // Dead-lettered at least once before the restart, their letters
        // not known to be held: kept once the store is the queue's, so
        // their bodies can stay in it.
        let mut kept = Vec::new();
        {
            let mut st = queue.state.lock();
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
                if let Some((reason, message)) = dying::stored_mark(&message) {
                    kept.push((seq, message, reason, pos));
                    return;
                }
                let mut entry = queue.entry_for(&st.args, Arc::new(message), seq, now);
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
            for (seq, message, reason, pos) in kept {
                // Its letter goes again at once.
                let retry = dying::DyingStage::RetryAt(now);
                st.hold_dying(seq, Arc::new(message), reason, Some(pos), None, retry);
                queue.mark_timed();
            }
        }
        Ok(queue)
    }

    fn describe(&self) -> String {
        queue_ref(&self.vhost, &self.name)
    }

    /// A fresh entry for `message`: its priority, expiry and dedup key.
    fn entry_for(&self, args: &QueueArgs, message: Arc<Message>, seq: u64, now: u64) -> Entry {
        let published = if message.published_at == 0 {
            now
        } else {
            message.published_at
        };
        let ttl = match (args.message_ttl, message.ttl().ok().flatten()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if ttl.is_some() {
            self.mark_timed();
        }
        Entry {
            seq,
            priority: message.priority().min(args.max_priority),
            expires_at: ttl.map(|t| published.saturating_add(t)),
            dedup_key: if args.deduplication {
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
        let mut entry = self.entry_for(&st.args, message, seq, now);
        if let Some(key) = &entry.dedup_key {
            if st.dedup.contains_key(key) {
                return Ok(Enqueued::Duplicate);
            }
        }
        let full = st.is_full_for(entry.message.body.len() as u64);
        if full && st.args.overflow != Overflow::DropHead {
            if st.args.overflow == Overflow::RejectPublishDlx {
                st.refused_to_dead_letter(entry.message);
            }
            return Ok(Enqueued::Rejected);
        }
        // A quorum queue keeps every message, whatever its delivery mode,
        // as RabbitMQ's do (its publisher's confirm then waits for it).
        if entry.message.is_persistent() || st.args.kind == QueueKind::Quorum {
            if let Some(store) = st.store() {
                let record = entry.message.record();
                entry.pos = Some(store.append(record).map_err(|e| store_failed(self, e))?);
                st.ready.pager.spent_on_disk(record.len() as u64);
            }
        }
        st.next_seq += 1;
        self.metrics.published.inc();
        if let Some(key) = &entry.dedup_key {
            *st.dedup.entry(key.clone()).or_default() += 1;
        }
        let stored = entry.pos.is_some();
        let arrived = arrival(&entry.message, now);
        st.insert_entry(entry, false);
        // Dispatch as of the millisecond before it arrived: a message whose
        // TTL (0) ends the instant it arrives still goes to a consumer that
        // can take it at once, as in RabbitMQ, and expires otherwise just
        // below.
        self.dispatch(&mut st, arrived.saturating_sub(1));
        self.enforce_limits(&mut st);
        self.expire(&mut st, now);
        Ok(Enqueued::Accepted { stored })
    }

    /// Drop-head overflow: the oldest ready messages make room.
    fn enforce_limits(&self, st: &mut QueueState) {
        let mut dropped = Vec::new();
        loop {
            let over_len = st
                .args
                .max_length
                .is_some_and(|max| st.ready.len() as u64 > max);
            let over_bytes = st
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
            let dlx = st.args.dead_letter_exchange.is_some();
            st.discard(dropped, DeathReason::MaxLen, &self.name, dlx);
        }
    }

    /// Removes expired messages from the heads of the queue.
    fn expire(&self, st: &mut QueueState, now: u64) {
        let expired = st.ready.take_expired(now);
        if !expired.is_empty() {
            let dlx = st.args.dead_letter_exchange.is_some();
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
            spec.exclusive && (!st.consumers.is_empty() || st.args.single_active_consumer);
        if st.consumers.all().any(|c| c.exclusive) || exclusive_refused {
            return Err(BrokerError::AccessRefused(format!(
                "{} in exclusive use",
                self.describe()
            )));
        }
        st.consumers.join(spec);
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
        let at = st.consumers.all().position(|c| c.id == id);
        if let Some(at) = at {
            st.consumers.remove(at);
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
            let Some(r) = st.ready.pop_front() else {
                self.metrics.get_empty.inc();
                return None;
            };
            if let Some(e) = st.load(r, &self.name) {
                break e;
            }
        };
        let took = Took::Get { no_ack };
        let entry = self.prepare_delivery(&st.args, entry, took);
        if no_ack {
            st.forget(entry.seq, entry.pos, entry.dedup_key.as_deref(), &self.name);
        } else {
            st.count_unacked(entry.body_size(), entry.pos.is_some());
            st.hand_out(entry.seq);
        }
        Some((entry, st.ready.len() as u32))
    }

    /// Counts a delivery and stamps it with `x-delivery-count` as quorum
    /// queues do.
    fn prepare_delivery(&self, args: &QueueArgs, mut entry: Entry, took: Took) -> Entry {
        self.metrics.delivered.inc();
        match took {
            Took::Get { no_ack: false } => self.metrics.got.inc(),
            Took::Get { no_ack: true } => self.metrics.got_no_ack.inc(),
            Took::Consume { no_ack: true } => self.metrics.consumed_no_ack.inc(),
            Took::Consume { no_ack: false } => {}
        }
        let got = matches!(took, Took::Get { .. });
        if entry.redelivered {
            self.metrics.redelivered.inc();
        }
        // Quorum queues stamp redeliveries, and every basic.get, the first
        // with 0 (as RabbitMQ 3.10 does: its dequeue always adds the
        // header, a consumer's delivery only once the count is not 0); a
        // classic queue with a delivery limit stamps redeliveries.
        let stamped = match args.kind {
            QueueKind::Quorum => got || entry.delivery_count > 0,
            _ => args.delivery_limit.is_some() && entry.delivery_count > 0,
        };
        if stamped {
            let count = FieldValue::I64(i64::from(entry.delivery_count));
            entry.message = Arc::new(entry.message.with_header("x-delivery-count", count));
        }
        entry
    }

    /// Settles delivered messages for good (acked).
    pub fn ack<E: Into<Unsettled>>(self: &Arc<Self>, entries: impl IntoIterator<Item = E>) {
        let mut st = self.state.lock();
        for e in entries {
            let e = e.into();
            if !st.take_outstanding(e.seq) {
                continue;
            }
            st.uncount_unacked(e.size, e.pos.is_some());
            self.metrics.acked.inc();
            st.forget(e.seq, e.pos, e.dedup_key.as_deref(), &self.name);
        }
    }

    /// Settles delivered messages that the consumer rejected without
    /// requeue: they are dead-lettered if the queue has a dead-letter
    /// exchange, dropped otherwise.
    pub fn reject<E: Into<Unsettled>>(self: &Arc<Self>, entries: impl IntoIterator<Item = E>) {
        let mut st = self.state.lock();
        let dlx = st.args.dead_letter_exchange.is_some();
        for e in entries {
            let e = e.into();
            if !st.take_outstanding(e.seq) {
                continue;
            }
            st.uncount_unacked(e.size, e.pos.is_some());
            st.leave(e, DeathReason::Rejected, dlx, &self.name);
        }
    }

    /// Puts delivered messages back at their original positions, marked
    /// redelivered, and dispatches them again. A message that came back more
    /// often than the queue's delivery limit is dead-lettered instead.
    pub fn requeue<E: Into<Unsettled>>(self: &Arc<Self>, entries: impl IntoIterator<Item = E>) {
        let now = self.clock.now_ms();
        let mut st = self.state.lock();
        let entries: Vec<Unsettled> = entries
            .into_iter()
            .map(Into::into)
            .filter(|e: &Unsettled| st.take_outstanding(e.seq))
            .collect();
        for e in &entries {
            st.uncount_unacked(e.size, e.pos.is_some());
        }
        if st.deleted || st.standby {
            return;
        }
        for mut e in entries {
            e.delivery_count += 1;
            if st
                .args
                .delivery_limit
                .is_some_and(|limit| u64::from(e.delivery_count) > limit)
            {
                let dlx = st.args.dead_letter_exchange.is_some();
                st.leave(e, DeathReason::DeliveryLimit, dlx, &self.name);
                continue;
            }
            if let Some(replica) = &st.replica {
                replica.returned(e.seq);
            }
            st.insert_unsettled(e);
        }
        self.dispatch(&mut st, now);
    }

    /// Settles a delivery to a no-ack consumer once its channel has handed
    /// it to the client. Until then it keeps its store record and its
    /// deduplication key, so that if it comes back undelivered
    /// ([`Queue::return_undelivered`]) it is still durable.
    pub fn settle_no_ack(&self, entry: &Entry) {
        let replicated = self.replica.get().is_some();
        if entry.pos.is_none() && entry.dedup_key.is_none() && !replicated {
            return;
        }
        let mut st = self.state.lock();
        if st.take_outstanding(entry.seq) {
            st.forget(entry.seq, entry.pos, entry.dedup_key.as_deref(), &self.name);
        }
    }

    /// Puts back a message that never reached its consumer (its channel
    /// closed first), without marking it redelivered.
    pub fn return_undelivered(self: &Arc<Self>, delivery: Delivery) {
        if let Some(window) = &delivery.channel_credit {
            window.release(1);
        }
        let now = self.clock.now_ms();
        let mut st = self.state.lock();
        if !st.take_outstanding(delivery.entry.seq) {
            return;
        }
        if !delivery.no_ack {
            let e = &delivery.entry;
            st.uncount_unacked(e.body_size(), e.pos.is_some());
        }
        if st.deleted || st.standby {
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
        st.args.expires.is_some_and(|ttl| {
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
            st.drop_ready(r, &self.name);
        }
        n
    }

    /// Marks the queue deleted, drops its messages and store, and cancels
    /// its consumers. Returns how many messages were ready.
    pub fn delete(&self) -> u32 {
        let mut st = self.state.lock();
        st.deleted = true;
        let n = st.ready.clear() as u32;
        st.dedup.clear();
        st.drop_dying();
        if let Some(store) = st.store.take() {
            if let Err(e) = store.delete_all() {
                tracing::warn!(
                    queue = self.name,
                    "could not remove store of deleted queue: {e}"
                );
            }
        }
        for c in st.consumers.take_all() {
            c.sink.cancel(&c.tag);
        }
        n
    }

    /// The queue's consumers.
    pub fn consumers(&self) -> Vec<ConsumerInfo> {
        let st = self.state.lock();
        let single_active = st.consumers.single_active();
        st.consumers
            .all()
            .enumerate()
            .map(|(i, c)| ConsumerInfo {
                tag: c.tag.to_string(),
                // The first in line is a single-active-consumer queue's
                // active one (see line.rs).
                activity: match (single_active, i) {
                    (false, _) => Activity::Up,
                    (true, 0) => Activity::SingleActive,
                    (true, _) => Activity::Waiting,
                },
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

    /// Its messages now, in RabbitMQ's figures.
    pub fn stats(&self) -> QueueStats {
        let now = self.clock.now_ms();
        let st = self.state.lock();
        let ready = Tally {
            count: st.ready.len() as u64,
            bytes: st.ready.bytes(),
        };
        let unacked = Tally {
            count: u64::from(st.unacked),
            bytes: st.unacked_bytes,
        };
        let persistent = if st.args.kind == QueueKind::Quorum {
            ready.plus(unacked)
        } else {
            st.ready.persistent().plus(st.unacked_persistent)
        };
        let consumers = st.consumers.len() as u32;
        let unacked_in_memory = unacked.minus(st.unacked_persistent);
        QueueStats {
            ready,
            unacked,
            persistent,
            ready_in_memory: st.ready.in_memory(),
            unacked_in_memory,
            head_timestamp: st
                .ready
                .head_in_memory()
                .and_then(|m| m.properties.timestamp),
            consumers,
            held: st.held.reading(now),
            memory: st.ready.pager.charged()
                + unacked_in_memory.bytes
                + unacked.count * paging::ENTRY_COST,
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
        st.ready.clear();
        st.deleted = true;
    }

    /// Delivers ready messages to consumers with credit, taking turns (see
    /// [`line`]; only to the first consumer, with a single active
    /// consumer). Expired messages met on the way are dead-lettered, never
    /// delivered.
    fn dispatch(self: &Arc<Self>, st: &mut QueueState, now: u64) {
        self.dispatch_ready(st, now);
        // Whatever stopped it, messages left behind with consumers present
        // wait on them.
        let held = !st.ready.is_empty() && !st.consumers.is_empty();
        st.held.note(held, now);
    }

    fn dispatch_ready(self: &Arc<Self>, st: &mut QueueState, now: u64) {
        if st.ready.is_empty() || st.consumers.is_empty() {
            return;
        }
        // A replicated queue's leader that no majority answered lately
        // holds its deliveries: it may have been deposed without knowing
        // (its replica kicks the queue once answers come again).
        if st.replica.as_ref().is_some_and(|r| !r.may_deliver()) {
            return;
        }
        while !st.ready.is_empty() && !st.consumers.is_empty() {
            let Some(idx) = st.consumers.take_turn() else {
                return;
            };
            self.expire(st, now);
            let entry = loop {
                let Some(r) = st.ready.pop_front() else {
                    st.consumers.get(idx).release_credit();
                    return;
                };
                if let Some(e) = st.load(r, &self.name) {
                    break e;
                }
            };
            let no_ack = st.consumers.get(idx).no_ack;
            let entry = self.prepare_delivery(&st.args, entry, Took::Consume { no_ack });
            let (seq, size, stored) = (entry.seq, entry.body_size(), entry.pos.is_some());
            let consumer = st.consumers.get(idx);
            let delivery = Delivery {
                queue: Arc::clone(self),
                consumer: consumer.id,
                consumer_tag: Arc::clone(&consumer.tag),
                no_ack,
                entry,
                channel_credit: (!no_ack).then(|| Arc::clone(&consumer.channel_credit)),
            };
            match consumer.sink.deliver(delivery) {
                // Settled when its channel hands it out (settle_no_ack):
                // until then it may come back undelivered.
                Ok(()) if no_ack => st.hand_out(seq),
                Ok(()) => {
                    st.count_unacked(size, stored);
                    st.hand_out(seq);
                }
                Err(back) => {
                    // The consumer's connection is gone: keep the message,
                    // forget the consumer.
                    let redelivered = back.entry.redelivered;
                    st.insert_entry(back.entry, redelivered);
                    st.consumers.remove(idx).release_credit();
                }
            }
        }
    }
}

/// When `message` arrived: when its channel stamped it, which under load
/// (or behind a Raft commit) can be a few milliseconds before its queue
/// took it at `now`.
fn arrival(message: &Message, now: u64) -> u64 {
    match message.published_at {
        0 => now,
        at => at.min(now),
    }
}

#[cfg(test)]
mod paging_tests;
#[cfg(test)]
pub(crate) mod tests;
