//! At-least-once dead-lettering (`x-dead-letter-strategy: at-least-once`,
//! quorum queues): a dead-lettered message stays in its queue, out of
//! consumers' reach, until every queue its letter reached holds it.
//!
//! The queue only keeps the messages and their stage ([`DyingStage`]);
//! the vhost routes the letters and reports back
//! ([`Queue::dead_letter_routed`]), and the broker's timer checks whether
//! the targets hold them yet and routes again those that went nowhere
//! ([`crate::vhost::Vhost::tick`]). As in RabbitMQ's dead-letter worker, a
//! letter may reach a target twice (a retry after a failover), never zero
//! times while its queue exists.
//!
//! Kept messages live within the node's message budget like ready ones:
//! past it, a body stays in the durable store it is in already, or goes
//! to the queue's scratch store, so dead letters with nowhere to go cost
//! an index entry each, not their bodies.
//!
//! Across restarts: in a cluster the queue's group keeps the dying mark
//! (see [`crate::replicated::QueueReplica::dead_lettered`]); on a single
//! node the message is written to its queue's store again with the mark
//! ([`DYING_HEADER`]) and its unmarked record acked, so that a restarted
//! node goes on dead-lettering it rather than deliver it again.

use std::sync::Arc;

use antre_amqp::FieldValue;
use antre_store::SegmentPosition;

use super::paging::ENTRY_COST;
use super::state::{decode, QueueState};
use super::{DeadLetter, DeathReason, Queue, Unsettled};
use crate::durable::Durable;
use crate::message::Message;
use crate::metrics::DeadLetterMode;

/// The first wait before a dead letter that reached no queue is routed
/// again; it doubles with each failure up to [`DYING_RETRY_MAX_MS`].
/// RabbitMQ retries after three minutes; a few seconds make a dead-letter
/// queue declared late, or a target's leader that moved, cost little.
pub(super) const DYING_RETRY_MS: u64 = 1_000;
/// The longest wait between two attempts of the same dead letter.
pub(super) const DYING_RETRY_MAX_MS: u64 = 60_000;

/// The header of a dying message's record in its queue's store (single
/// node): the reason, as `x-death` names it. Never seen by clients: it is
/// taken off when the record is read back.
const DYING_HEADER: &str = "x-antre-dying";

/// The dying mark of a message read back from a queue's store, and the
/// message without it; None if it carries none.
pub(super) fn stored_mark(message: &Message) -> Option<(DeathReason, Message)> {
    let headers = message.properties.headers.as_ref()?;
    let name = headers.get(DYING_HEADER)?.as_str()?;
    // A name this version does not know (a newer one's) is dead-lettered
    // all the same.
    let reason = DeathReason::from_name(name).unwrap_or(DeathReason::Rejected);
    Some((reason, message.without_header(DYING_HEADER)))
}

/// A message dead-lettered at least once: out of consumers' reach, but
/// kept (and counted against the queue's limits) until every queue its
/// dead letter reached holds it safely.
#[derive(Debug)]
pub(super) struct Dying {
    body: DyingBody,
    /// Body bytes.
    size: u64,
    /// What its body in memory charges to the node's budget.
    charged: u64,
    reason: DeathReason,
    pos: Option<SegmentPosition>,
    dedup_key: Option<String>,
    stage: DyingStage,
    /// The wait before the next attempt, should this one fail.
    backoff: u64,
}

/// Where a kept message's body is.
#[derive(Debug)]
enum DyingBody {
    Memory(Arc<Message>),
    /// In the queue's durable store, at the message's `pos`.
    Stored,
    /// In the queue's scratch store.
    Scratch(SegmentPosition),
}

/// Where a [`Dying`] message's dead letter stands.
#[derive(Debug)]
pub(super) enum DyingStage {
    /// Handed to the vhost to route.
    Routing,
    /// Routed: held once each of these has it durably (synced,
    /// committed, or answered by the node that owns the target).
    Routed(Vec<Arc<dyn Durable>>),
    /// Reached no queue (or a target refused or lost it): routed again
    /// at this time.
    RetryAt(u64),
}

impl QueueState {
    /// A message leaves the queue for its dead-letter exchange. At most
    /// once, it is forgotten as its letter goes; at least once, it is kept
    /// until the letter's targets hold it ([`Self::hold_dying`]), and its
    /// group (if replicated) learns it is dying, so that a new leader goes
    /// on dead-lettering it rather than deliver it again.
    pub(super) fn dead_letter(
        &mut self,
        seq: u64,
        pos: Option<SegmentPosition>,
        dedup_key: Option<String>,
        message: Arc<Message>,
        reason: DeathReason,
        queue: &str,
    ) {
        if !self.args.at_least_once() {
            self.dead.push(DeadLetter {
                message,
                reason,
                hold: None,
            });
            self.forget(seq, pos, dedup_key.as_deref(), queue);
            return;
        }
        self.count_dead(reason, DeadLetterMode::AtLeastOnce, 1);
        if let Some(replica) = &self.replica {
            replica.dead_lettered(seq, reason);
        }
        let pos = self.store_mark(pos, &message, reason, queue);
        self.dead.push(DeadLetter {
            message: Arc::clone(&message),
            reason,
            hold: Some(seq),
        });
        self.hold_dying(seq, message, reason, pos, dedup_key, DyingStage::Routing);
    }

    /// A delivered message leaves for good: dead-lettered for `reason`
    /// (the queue has a dead-letter exchange), or forgotten. One whose
    /// body cannot be read back is forgotten too.
    pub(super) fn leave(
        &mut self,
        u: Unsettled,
        reason: DeathReason,
        dead_lettering: bool,
        queue: &str,
    ) {
        let body = dead_lettering.then(|| self.body_of(&u, queue)).flatten();
        match body {
            Some(message) => self.dead_letter(u.seq, u.pos, u.dedup_key, message, reason, queue),
            None => {
                self.count_dead(reason, DeadLetterMode::Disabled, 1);
                self.forget(u.seq, u.pos, u.dedup_key.as_deref(), queue)
            }
        }
    }

    /// On a single node, writes the dying mark to the queue's store: the
    /// message again, marked, and its unmarked record acked. Returns where
    /// the message now is (where it was if the store failed: it then
    /// comes back ready after a restart, as if dead-lettered at most once).
    fn store_mark(
        &mut self,
        pos: Option<SegmentPosition>,
        message: &Message,
        reason: DeathReason,
        queue: &str,
    ) -> Option<SegmentPosition> {
        let (Some(old), Some(store)) = (pos, self.store.as_mut()) else {
            return pos;
        };
        let marked = message.with_header(DYING_HEADER, FieldValue::string(reason.as_str()));
        let record = marked.record();
        match store.append(record) {
            Ok(new) => {
                if let Err(e) = store.ack(old) {
                    tracing::warn!(queue, %old, "could not record ack in store: {e}");
                }
                self.ready.pager.spent_on_disk(record.len() as u64);
                Some(new)
            }
            Err(e) => {
                tracing::warn!(queue, "could not store a dead letter's mark: {e}");
                pos
            }
        }
    }

    /// Keeps a dying message until its dead letter is held: its body in
    /// memory if the node's budget has room, else on disk.
    pub(super) fn hold_dying(
        &mut self,
        seq: u64,
        message: Arc<Message>,
        reason: DeathReason,
        pos: Option<SegmentPosition>,
        dedup_key: Option<String>,
        stage: DyingStage,
    ) {
        let size = message.body.len() as u64;
        let cost = ENTRY_COST + message.memory_size();
        let (body, charged) = if self.ready.pager.try_charge(cost) {
            (DyingBody::Memory(message), cost)
        } else if pos.is_some() && self.store.is_some() {
            (DyingBody::Stored, 0)
        } else {
            match self.ready.pager.write(message.record()) {
                Some(at) => (DyingBody::Scratch(at), 0),
                None => {
                    // Cannot page it: it stays, counted all the same.
                    self.ready.pager.force_charge(cost);
                    (DyingBody::Memory(message), cost)
                }
            }
        };
        let dying = Dying {
            body,
            size,
            charged,
            reason,
            pos,
            dedup_key,
            stage,
            backoff: DYING_RETRY_MS,
        };
        self.dying_bytes += size;
        if let Some(old) = self.dying.insert(seq, dying) {
            self.let_go(old);
        }
    }

    /// A dying message's dead letter is held by every queue it was routed
    /// to (or went nowhere by rule): counted as confirmed, as RabbitMQ
    /// counts it, then forgotten.
    fn confirm_dying(&mut self, seq: u64, queue: &str) {
        if let (Some(c), true) = (&self.dead_lettered, self.dying.contains_key(&seq)) {
            c.confirmed.inc();
        }
        self.settle_dying(seq, queue);
    }

    /// A dying message's dead letter is held by its targets (or went
    /// nowhere by rule): it is forgotten for good.
    pub(super) fn settle_dying(&mut self, seq: u64, queue: &str) {
        if let Some(d) = self.dying.remove(&seq) {
            let (pos, key) = (d.pos, d.dedup_key.clone());
            self.let_go(d);
            self.forget(seq, pos, key.as_deref(), queue);
        }
    }

    /// Drops the kept messages without settling them anywhere (the queue
    /// is deleted, or its group keeps them while another node leads it).
    pub(super) fn drop_dying(&mut self) {
        for (_, d) in std::mem::take(&mut self.dying) {
            self.let_go(d);
        }
    }

    /// Gives back what a kept message's body held: its charge, its
    /// scratch record.
    fn let_go(&mut self, d: Dying) {
        self.dying_bytes -= d.size;
        match d.body {
            DyingBody::Memory(_) => self.ready.pager.release(d.charged),
            DyingBody::Scratch(at) => self.ready.pager.free(at),
            DyingBody::Stored => {}
        }
    }

    /// A kept message's body, from memory or disk; None if it cannot be
    /// read back (logged where it failed).
    fn dying_body(&mut self, seq: u64, queue: &str) -> Option<Arc<Message>> {
        let d = self.dying.get(&seq)?;
        match &d.body {
            DyingBody::Memory(m) => Some(Arc::clone(m)),
            DyingBody::Stored => {
                let stored = self.read_paged(d.pos, queue)?;
                // The record carries the mark (see `store_mark`).
                match stored_mark(&stored) {
                    Some((_, unmarked)) => Some(Arc::new(unmarked)),
                    None => Some(stored),
                }
            }
            &DyingBody::Scratch(at) => decode(&self.ready.pager.read(at)?, queue),
        }
    }

    /// Hands a kept message's letter to the queue's dead letters to route,
    /// held (`hold`) or not; false if its body cannot be read back.
    fn send_dying(&mut self, seq: u64, hold: Option<u64>, queue: &str) -> bool {
        let (Some(message), Some(d)) = (self.dying_body(seq, queue), self.dying.get(&seq)) else {
            return false;
        };
        let reason = d.reason;
        self.dead.push(DeadLetter {
            message,
            reason,
            hold,
        });
        true
    }

    /// At-least-once dead-lettering was turned off (a policy changed): the
    /// kept messages go, those waiting for a retry dead-lettered at most
    /// once, as the queue now does.
    pub(super) fn release_dying(&mut self, queue: &str) {
        let dlx = self.args.dead_letter_exchange.is_some();
        let seqs: Vec<u64> = self.dying.keys().copied().collect();
        for seq in seqs {
            let waiting = self
                .dying
                .get(&seq)
                .is_some_and(|d| matches!(d.stage, DyingStage::RetryAt(_)));
            if dlx && waiting {
                self.send_dying(seq, None, queue);
            }
            self.settle_dying(seq, queue);
        }
    }
}

impl Queue {
    /// The router's report on a held dead letter: `held_by` the stores
    /// (and commits, and forwards) that must complete before the message
    /// may go, or None if it reached no queue (no route, no exchange, a
    /// target refused it): it is routed again later, waiting longer after
    /// each failure.
    pub fn dead_letter_routed(&self, seq: u64, held_by: Option<Vec<Arc<dyn Durable>>>) {
        let now = self.clock.now_ms();
        let mut st = self.state.lock();
        let Some(dying) = st.dying.get_mut(&seq) else {
            return;
        };
        match held_by {
            Some(stores) if stores.is_empty() => st.confirm_dying(seq, &self.name),
            Some(stores) => dying.stage = DyingStage::Routed(stores),
            None => {
                dying.stage = DyingStage::RetryAt(now + dying.backoff);
                dying.backoff = (dying.backoff * 2).min(DYING_RETRY_MAX_MS);
                tracing::debug!(
                    queue = self.name,
                    "a dead letter reached no queue; it stays in the queue and is retried"
                );
            }
        }
        drop(st);
        self.mark_timed();
    }

    /// The dead letters routed and not known to be held yet, with what
    /// each waits for.
    pub fn dying_in_flight(&self) -> Vec<(u64, Vec<Arc<dyn Durable>>)> {
        let st = self.state.lock();
        st.dying
            .iter()
            .filter_map(|(&seq, d)| match &d.stage {
                DyingStage::Routed(stores) => Some((seq, stores.clone())),
                _ => None,
            })
            .collect()
    }

    /// What became of dead letters in flight: held (the message goes for
    /// good) or lost on the way (routed again at once).
    pub fn dying_settled(&self, results: impl IntoIterator<Item = (u64, bool)>) {
        let now = self.clock.now_ms();
        let mut st = self.state.lock();
        for (seq, held) in results {
            if held {
                st.confirm_dying(seq, &self.name);
            } else if let Some(d) = st.dying.get_mut(&seq) {
                d.stage = DyingStage::RetryAt(now);
            }
        }
    }

    /// Hands the dead letters whose retry is due to the queue's dead
    /// letters to route ([`Queue::take_dead_letters`]); returns how many.
    /// One whose body cannot be read back any more is dropped (logged).
    pub fn dying_due(&self, now: u64) -> usize {
        let mut st = self.state.lock();
        let due: Vec<u64> = st
            .dying
            .iter()
            .filter(|(_, d)| matches!(d.stage, DyingStage::RetryAt(at) if at <= now))
            .map(|(&seq, _)| seq)
            .collect();
        let mut n = 0;
        for seq in due {
            if !st.send_dying(seq, Some(seq), &self.name) {
                st.settle_dying(seq, &self.name);
                continue;
            }
            if let Some(d) = st.dying.get_mut(&seq) {
                d.stage = DyingStage::Routing;
            }
            n += 1;
        }
        n
    }

    /// Messages dead-lettered at least once that the queue still keeps
    /// (RabbitMQ's `messages_dlx`), and their body bytes.
    pub fn dying(&self) -> (u32, u64) {
        let st = self.state.lock();
        (st.dying.len() as u32, st.dying_bytes)
    }
}
