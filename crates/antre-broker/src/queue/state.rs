//! A queue's state behind its lock: ready messages, consumers, unacked
//! count, store and dead letters, with the bookkeeping every way out of the
//! queue shares (forgetting a message, paging bodies in and out).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use antre_store::{QueueStore, SegmentPosition};

use super::dying::Dying;
use super::line::ConsumerLine;
use super::paging::{Pager, Paging, ENTRY_COST};
use super::ready::{Body, Ready, ReadyList, Tally};
use super::utilisation::HeldTime;
use super::{DeadLetter, DeathReason, Entry, QueueArgs, Unsettled};
use crate::message::Message;
use crate::metrics::{DeadLetterMode, DeadLettered};
use crate::replicated::QueueReplica;

#[derive(Debug)]
pub(super) struct QueueState {
    pub(super) ready: ReadyList,
    pub(super) consumers: ConsumerLine,
    pub(super) next_seq: u64,
    pub(super) unacked: u32,
    /// Body bytes of the unacked messages.
    pub(super) unacked_bytes: u64,
    /// Of the unacked messages, those the durable store keeps (their
    /// bodies are not held in memory meanwhile, see [`Unsettled`]).
    pub(super) unacked_persistent: Tally,
    pub(super) had_consumer: bool,
    pub(super) deleted: bool,
    /// The message store of a durable queue.
    pub(super) store: Option<QueueStore>,
    /// Keys of the messages in the queue (ready or unacked), for
    /// `x-message-deduplication`, with how many messages hold each.
    pub(super) dedup: HashMap<String, u32>,
    /// Messages waiting to be routed to the dead-letter exchange.
    pub(super) dead: Vec<DeadLetter>,
    /// Last time the queue was used (for `x-expires`).
    pub(super) last_used: u64,
    /// What its arguments and policies turn on.
    pub(super) args: Arc<QueueArgs>,
    /// A quorum queue's replication (cluster only): forgotten messages are
    /// settled through it.
    pub(super) replica: Option<Arc<dyn QueueReplica>>,
    /// A replicated queue: the ids handed out by this engine (this
    /// leadership) and not settled yet. Settles of other ids (a delivery
    /// of an earlier leadership of this node) change nothing.
    pub(super) outstanding: HashSet<u64>,
    /// A replicated queue whose group this node does not lead: the engine
    /// holds nothing and takes nothing.
    pub(super) standby: bool,
    /// Messages dead-lettered at least once and not held by their targets
    /// yet, by sequence number.
    pub(super) dying: BTreeMap<u64, Dying>,
    /// Body bytes of `dying`.
    pub(super) dying_bytes: u64,
    /// How long consumers could not take its messages.
    pub(super) held: HeldTime,
    /// The broker's dead-letter counters, once the queue is in a vhost.
    pub(super) dead_lettered: Option<Arc<DeadLettered>>,
}

impl QueueState {
    pub(super) fn new(
        args: Arc<QueueArgs>,
        now: u64,
        paging: Option<Paging>,
        name: &str,
    ) -> QueueState {
        QueueState {
            ready: ReadyList::new(args.max_priority, Pager::new(paging, name)),
            consumers: ConsumerLine::new(args.single_active_consumer),
            next_seq: 0,
            unacked: 0,
            unacked_bytes: 0,
            unacked_persistent: Tally::default(),
            had_consumer: false,
            deleted: false,
            store: None,
            dedup: HashMap::new(),
            dead: Vec::new(),
            last_used: now,
            args,
            replica: None,
            outstanding: HashSet::new(),
            standby: false,
            dying: BTreeMap::new(),
            dying_bytes: 0,
            held: HeldTime::new(now),
            dead_lettered: None,
        }
    }

    /// A publish `reject-publish-dlx` refused: dead-lettered at most once
    /// (or dropped, and counted, without a dead-letter exchange).
    pub(super) fn refused_to_dead_letter(&mut self, message: Arc<Message>) {
        if self.args.dead_letter_exchange.is_some() {
            self.dead.push(DeadLetter {
                message,
                reason: DeathReason::MaxLen,
                hold: None,
            });
        } else {
            self.count_dead(DeathReason::MaxLen, DeadLetterMode::Disabled, 1);
        }
    }

    /// Counts `n` messages that left the queue for `reason` and were
    /// dropped (no dead-letter exchange), or kept until their letters are
    /// held (at least once). Letters routed at most once are counted where
    /// they are routed, which knows whether the exchange exists.
    pub(super) fn count_dead(&self, reason: DeathReason, mode: DeadLetterMode, n: u64) {
        if let Some(c) = &self.dead_lettered {
            c.count(self.args.kind, mode, reason, n);
        }
    }

    /// Whether a handed-out message with this id still counts: always on
    /// an ordinary queue; on a replicated one, if this leadership handed it
    /// out (it stops counting).
    pub(super) fn take_outstanding(&mut self, seq: u64) -> bool {
        self.replica.is_none() || self.outstanding.remove(&seq)
    }

    /// Counts a message of `size` bytes handed out to be acked; `stored`
    /// if the durable store keeps it.
    pub(super) fn count_unacked(&mut self, size: u32, stored: bool) {
        self.unacked += 1;
        self.unacked_bytes += u64::from(size);
        if stored {
            self.unacked_persistent.add(size);
        }
    }

    /// Counts out an unacked message (settled, or back in the queue).
    pub(super) fn uncount_unacked(&mut self, size: u32, stored: bool) {
        self.unacked = self.unacked.saturating_sub(1);
        self.unacked_bytes = self.unacked_bytes.saturating_sub(u64::from(size));
        if stored {
            self.unacked_persistent.sub(size);
        }
    }

    /// Forgets every unacked message (a replica stepping down).
    pub(super) fn clear_unacked(&mut self) {
        self.unacked = 0;
        self.unacked_bytes = 0;
        self.unacked_persistent = Tally::default();
    }

    /// Notes a message handed out (replicated queues only).
    pub(super) fn hand_out(&mut self, seq: u64) {
        if self.replica.is_some() {
            self.outstanding.insert(seq);
        }
    }

    /// Whether a message of `size` bytes would take the queue past
    /// `x-max-length` or `x-max-length-bytes`.
    pub(super) fn is_full_for(&self, size: u64) -> bool {
        self.is_full_with(size, (0, 0))
    }

    /// [`Self::is_full_for`], counting `(messages, bytes)` more that are on
    /// their way in (a replicated queue's publishes not applied yet). Dead
    /// letters the queue still keeps count, as in RabbitMQ: a queue whose
    /// dead letters have nowhere to go refuses publishes rather than grow
    /// without bound.
    pub(super) fn is_full_with(&self, size: u64, coming: (u64, u64)) -> bool {
        let held = self.ready.len() as u64 + self.dying.len() as u64;
        let bytes = self.ready.bytes() + self.dying_bytes;
        self.args
            .max_length
            .is_some_and(|max| held + coming.0 >= max)
            || self
                .args
                .max_length_bytes
                .is_some_and(|max| bytes + coming.1 + size > max)
    }

    pub(super) fn store(&mut self) -> Option<&mut QueueStore> {
        self.store.as_mut()
    }

    /// Forgets a message for good (acked, dropped, dead-lettered, purged):
    /// its store record and its deduplication key. A store failure only means
    /// the message may come back after a restart, never a loss, so it is
    /// logged rather than failing the client's ack.
    pub(super) fn forget(
        &mut self,
        seq: u64,
        pos: Option<SegmentPosition>,
        key: Option<&str>,
        queue: &str,
    ) {
        if let Some(replica) = &self.replica {
            replica.settle(seq);
        }
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

    /// Puts a message in the ready list: its body stays in memory if the
    /// node's message budget has room, else it goes to disk (it is in the
    /// durable store already, or is written to the scratch store).
    ///
    /// A stored message waiting in a queue without consumers is not kept
    /// in memory at all: its body is on disk already, nobody is about to
    /// take it, and a thousand such queues would otherwise fill the budget
    /// with the heads of backlogs that may wait for hours (32 MiB of the
    /// 109 MiB a 10M backlog in 1000 queues cost), leaving nothing for the
    /// queues that are being consumed.
    pub(super) fn insert_entry(&mut self, e: Entry, redelivered: bool) {
        let cost = ENTRY_COST + e.message.memory_size();
        let size = e.body_size();
        let idle = e.pos.is_some() && self.consumers.is_empty();
        let (body, charged) = if !idle && self.ready.pager.try_charge(cost) {
            (Body::Memory(e.message), cost)
        } else if e.pos.is_some() {
            (Body::Stored, 0)
        } else {
            match self.ready.pager.write(e.message.record()) {
                Some(at) => (Body::Scratch(at), 0),
                None => {
                    // Cannot page it: it stays, counted all the same.
                    self.ready.pager.force_charge(cost);
                    (Body::Memory(e.message), cost)
                }
            }
        };
        self.ready.insert(Ready {
            seq: e.seq,
            size,
            body,
            pos: e.pos,
            redelivered,
            priority: e.priority,
            expires_at: e.expires_at,
            delivery_count: e.delivery_count,
            charged: charged as u32,
            dedup_key: e.dedup_key,
        });
    }

    pub(super) fn read_paged(
        &mut self,
        pos: Option<SegmentPosition>,
        queue: &str,
    ) -> Option<Arc<Message>> {
        let (pos, store) = (pos?, self.store()?);
        let record = store
            .read(pos)
            .map_err(|e| tracing::error!(queue, %pos, "dropping unreadable message: {e}"))
            .ok()?;
        decode(&record, queue)
    }

    /// The body of a delivered message: held, or read back from the store.
    pub(super) fn body_of(&mut self, u: &Unsettled, queue: &str) -> Option<Arc<Message>> {
        match &u.message {
            Some(m) => Some(Arc::clone(m)),
            None => self.read_paged(u.pos, queue),
        }
    }

    /// Puts a message that came back from a consumer in the ready list,
    /// marked redelivered. One whose body was let go stays on disk until
    /// it is delivered again.
    pub(super) fn insert_unsettled(&mut self, u: Unsettled) {
        let Unsettled {
            seq,
            message,
            pos,
            delivery_count,
            size,
            priority,
            expires_at,
            dedup_key,
            ..
        } = u;
        match message {
            Some(message) => self.insert_entry(
                Entry {
                    seq,
                    message,
                    redelivered: true,
                    pos,
                    delivery_count,
                    priority,
                    expires_at,
                    dedup_key,
                },
                true,
            ),
            None => self.ready.insert(Ready {
                seq,
                size,
                body: Body::Stored,
                pos,
                redelivered: true,
                priority,
                expires_at,
                delivery_count,
                charged: 0,
                dedup_key,
            }),
        }
    }

    /// Loads a ready message's body (from disk if paged out). A record that
    /// cannot be read back is dropped, never delivered.
    pub(super) fn load(&mut self, r: Ready, queue: &str) -> Option<Entry> {
        let message = match r.body {
            Body::Memory(m) => Some(m),
            Body::Stored => self.read_paged(r.pos, queue),
            Body::Scratch(at) => {
                let m = self
                    .ready
                    .pager
                    .read(at)
                    .and_then(|raw| decode(&raw, queue));
                self.ready.pager.free(at);
                m
            }
        };
        let Some(message) = message else {
            self.forget(r.seq, r.pos, r.dedup_key.as_deref(), queue);
            return None;
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

    /// Forgets a ready message that leaves without being delivered: its
    /// store record, its scratch copy, its deduplication key.
    pub(super) fn drop_ready(&mut self, r: Ready, queue: &str) {
        if let Body::Scratch(at) = r.body {
            self.ready.pager.free(at);
        }
        self.forget(r.seq, r.pos, r.dedup_key.as_deref(), queue);
    }

    /// Dead-letters (or drops) messages that leave the queue without being
    /// consumed.
    pub(super) fn discard(
        &mut self,
        readies: Vec<Ready>,
        reason: DeathReason,
        queue: &str,
        dead_lettering: bool,
    ) {
        if !dead_lettering {
            self.count_dead(reason, DeadLetterMode::Disabled, readies.len() as u64);
        }
        for r in readies {
            let (seq, pos) = (r.seq, r.pos);
            let key = r.dedup_key.clone();
            if dead_lettering {
                if let Some(e) = self.load(r, queue) {
                    self.dead_letter(seq, pos, key, e.message, reason, queue);
                }
            } else {
                self.drop_ready(r, queue);
            }
        }
    }
}

pub(super) fn decode(record: &[u8], queue: &str) -> Option<Arc<Message>> {
    Message::from_record(record)
        .map_err(|e| tracing::error!(queue, "dropping undecodable message: {e}"))
        .ok()
        .map(Arc::new)
}
