//! The seam between a queue engine and the replication of its contents (a
//! quorum queue in a cluster).
//!
//! A quorum queue's messages live in a Raft group of its own (in the
//! cluster crate). Its engine, the ordinary [`crate::queue::Queue`], runs on
//! the group's leader only and is fed by the group's applied log:
//!
//! - a publish does not enter the engine directly: [`QueueReplica::enqueue`]
//!   hands the message to the group and returns a [`Durable`] that reports
//!   when the entry holding it is committed (on a majority of the members'
//!   disks). Confirms wait for it exactly as they wait for an fsync;
//! - once committed, the leader's apply gives the message to the engine
//!   ([`crate::queue::Queue::replica_enqueue`]) with the group's id for it as
//!   its sequence number;
//! - whenever the engine forgets a message for good (ack, reject, drop,
//!   expiry, dead-letter, purge) it calls [`QueueReplica::settle`]; when a
//!   delivered message comes back (nack/reject with requeue, consumer gone)
//!   it calls [`QueueReplica::returned`], which counts a delivery on every
//!   member (for `x-delivery-limit` after a failover); a message
//!   dead-lettered at least once is marked with
//!   [`QueueReplica::dead_lettered`] and settled once its letter is held.
//!
//! Settles and returns are proposed asynchronously: the client's ack is
//! answered at once, as RabbitMQ's acks are. If the leader dies before the
//! settle is committed, the new leader delivers the message again, marked
//! redelivered (at-least-once, as RabbitMQ documents).

use std::sync::Arc;

use crate::durable::Durable;
use crate::error::BrokerError;
use crate::message::Message;
use crate::stream::sac::Report as SacReport;

/// Where a forwarded message came from, so that a queue's group stores it
/// once however often it is sent: the forwarding node's run (a number it
/// draws when it starts) and that node's number for the message in this
/// queue (1, 2, 3... per queue). A forwarding node sends a message again,
/// with the same numbers, when it cannot know whether the queue's leader
/// stored it (the leader died or was deposed while it was on its way);
/// every member of the group then skips what it applied already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Source {
    /// The forwarding node's run.
    pub run: u64,
    /// Its number for the message in this queue.
    pub seq: u64,
}

/// Completes when a takeover under way ended (see
/// [`QueueReplica::taking_over`]).
pub type TakeOver = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// What a queue engine tells the replication of its contents.
pub trait QueueReplica: Send + Sync + std::fmt::Debug {
    /// Replicates a message published to the queue (on the leader), from
    /// `source` if it was forwarded with one. The returned durable
    /// completes when the message is committed (or, for a message from
    /// `source` the group had already, when that is known).
    fn enqueue(
        &self,
        message: &Arc<Message>,
        source: Option<Source>,
    ) -> Result<Arc<dyn Durable>, BrokerError>;
    /// The engine forgot the message with this id for good.
    fn settle(&self, id: u64);
    /// A delivered message with this id came back to the queue.
    fn returned(&self, id: u64);
    /// The message with this id is being dead-lettered at least once: it
    /// stays (out of consumers' reach) until [`QueueReplica::settle`], and
    /// a new leader dead-letters it again. (No default: a wrapper that
    /// forgot to pass it on would have a new leader deliver it again.)
    fn dead_lettered(&self, id: u64, reason: crate::queue::DeathReason);
    /// How many messages this member's replica holds (applied, not
    /// settled): the leader's count once a member caught up.
    fn replicated_messages(&self) -> u64 {
        0
    }
    /// Messages handed to [`QueueReplica::enqueue`] on this leader and not
    /// applied yet (proposed or waiting to be): their count and body bytes.
    /// `reject-publish` counts them against the queue's limits, or every
    /// publish of a burst would pass the check before the first commit.
    /// Only ids from `from_id` on count: the caller holds the queue's lock
    /// and passes the first id its engine has not applied, so a message
    /// being applied at that moment counts once, in the engine or here,
    /// never twice or not at all. (No default: a wrapper that forgot to
    /// pass it on would let every burst through.)
    fn in_flight(&self, from_id: u64) -> (u64, u64);
    /// Whether this node holds a replica now (a node removed from the
    /// group keeps the object, which then holds nothing): a stream's
    /// consumers here read its log only then.
    fn is_member(&self) -> bool {
        true
    }
    /// Whether this node leads the group now (it takes publishes).
    fn leads(&self) -> bool;
    /// While this node, elected the group's leader a moment ago, takes the
    /// queue over (it applies its log before its engine takes publishes):
    /// what completes once it is done, or failed. None otherwise. A link
    /// from a forwarding node waits for it rather than answer "not yet"
    /// and take the batches behind (see antre-cluster's forward module).
    /// (No default: a wrapper that forgot to pass it on would let a
    /// publisher's messages be stored out of order.)
    fn taking_over(&self) -> Option<TakeOver>;
    /// Whether this node's engine may hand messages out now: a leader
    /// delivers only while a majority of its group is known to follow it,
    /// so that one cut off from the others stops before another can be
    /// elected. (No default: a wrapper that forgot to pass it on would
    /// let a deposed leader deliver what its successor delivers too.)
    fn may_deliver(&self) -> bool;
    /// Waits, within the cluster's change timeout, until this node knows
    /// where the queue is served: it leads and may deliver
    /// ([`QueueReplica::may_deliver`]), or the vhost names the leader's
    /// node as the queue's remote owner. Returns whether it does. Blocks
    /// the calling thread. (No default: a wrapper that forgot to pass it
    /// on would have a get find an idle engine empty.)
    fn await_location(&self) -> bool;
    /// A stream's: replicates a stream-protocol publisher's records
    /// (publishing id, [`crate::stream::Stream::replica_published`]
    /// encoding) on the leader, dropping a named publisher's duplicates
    /// (`accepted` says which were kept). The durable completes when the
    /// kept ones are committed.
    fn publish_records(
        &self,
        writer: Option<&str>,
        records: Vec<(u64, bytes::Bytes)>,
        accepted: &mut Vec<bool>,
    ) -> Result<Arc<dyn Durable>, BrokerError> {
        let _ = (writer, records, accepted);
        Err(BrokerError::Internal("not a stream".into()))
    }
    /// A stream's: stores a named consumer's offset through the group
    /// (handed to the leader from any member; not confirmed, as in
    /// RabbitMQ).
    fn store_offset(&self, reference: &str, offset: u64) -> Result<(), BrokerError> {
        let _ = (reference, offset);
        Err(BrokerError::Internal("not a stream".into()))
    }
    /// A stream's: hands this node's single-active-consumer members of the
    /// stream to the group's coordinator (on its leader, see
    /// [`crate::stream::sac`]) and calls `answer` with, for each member in
    /// the report's order, whether it should be active, or why the
    /// coordinator could not be asked. `answer` may run on another thread.
    /// (No default: a wrapper that forgot to pass it on would leave every
    /// member inactive.)
    fn report_consumers(&self, report: SacReport, answer: SacAnswer);
}

/// What [`QueueReplica::report_consumers`] calls with the coordinator's
/// answer.
pub type SacAnswer = Box<dyn FnOnce(Result<Vec<bool>, String>) + Send>;

/// Where a replicated write stands, for the syncer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    /// Not replicated: a local store, synced by fsync.
    Local,
    /// Replicated, not committed yet.
    Pending,
    /// Replicated: committed (true) or failed (false, e.g. leadership
    /// lost before the commit).
    Done(bool),
}

/// One batch of replicated writes, as the syncer waits for it: a
/// publisher's confirm covering a message in the batch is sent once the
/// batch is committed, and becomes a nack if it fails.
#[derive(Debug)]
pub struct PendingCommit {
    /// 0 pending, 1 committed, 2 failed.
    state: std::sync::atomic::AtomicU8,
    /// The parts (log entries) the batch went out in that are not
    /// committed yet: a large batch is proposed as several entries, and is
    /// committed once all are.
    parts: std::sync::atomic::AtomicUsize,
    /// Woken when the batch completes, so waiting confirms go out.
    syncer: Option<crate::syncer::Syncer>,
}

impl PendingCommit {
    /// A pending batch, of one part; `syncer` is poked when it completes.
    pub fn new(syncer: Option<crate::syncer::Syncer>) -> Arc<PendingCommit> {
        Arc::new(PendingCommit {
            state: std::sync::atomic::AtomicU8::new(0),
            parts: std::sync::atomic::AtomicUsize::new(1),
            syncer,
        })
    }

    /// A batch already committed (`ok`) or failed: publishes confirmed or
    /// nacked without a proposal (duplicates; leadership moved away).
    pub fn done(syncer: Option<crate::syncer::Syncer>, ok: bool) -> Arc<PendingCommit> {
        let b = PendingCommit::new(syncer);
        b.complete(ok);
        b
    }

    /// One more part: the batch is committed once each part completed.
    pub fn add_part(&self) {
        self.parts.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// Records a part's outcome: the batch fails with its first failed
    /// part, and is committed with its last committed one. Wakes the
    /// syncer when the outcome is known.
    pub fn complete(&self, ok: bool) {
        use std::sync::atomic::Ordering;
        if ok && self.parts.fetch_sub(1, Ordering::AcqRel) > 1 {
            return;
        }
        let to = if ok { 1 } else { 2 };
        if self
            .state
            .compare_exchange(0, to, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            if let Some(s) = &self.syncer {
                s.poke();
            }
        }
    }
}

impl Durable for PendingCommit {
    fn label(&self) -> &str {
        "replicated batch"
    }

    fn begin_sync(&self) -> Option<Result<antre_store::PendingSync, antre_store::StoreError>> {
        None
    }

    fn finish_sync(
        &self,
        _pending: antre_store::PendingSync,
        _result: Result<(), antre_store::StoreError>,
    ) -> Result<(), antre_store::StoreError> {
        Ok(())
    }

    fn is_dirty(&self) -> bool {
        false
    }

    fn watch(&self, _hook: antre_store::DirtyHook) {}

    fn commit(&self) -> Commit {
        match self.state.load(std::sync::atomic::Ordering::Acquire) {
            0 => Commit::Pending,
            1 => Commit::Done(true),
            _ => Commit::Done(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_in_parts_is_committed_with_its_last_part_and_fails_with_any() {
        let b = PendingCommit::new(None);
        b.add_part();
        b.add_part();
        b.complete(true);
        b.complete(true);
        assert_eq!(b.commit(), Commit::Pending);
        b.complete(true);
        assert_eq!(b.commit(), Commit::Done(true));

        let b = PendingCommit::new(None);
        b.add_part();
        b.complete(true);
        b.complete(false);
        assert_eq!(b.commit(), Commit::Done(false));
        let b = PendingCommit::new(None);
        b.add_part();
        b.complete(false);
        b.complete(true);
        assert_eq!(b.commit(), Commit::Done(false), "the first failure counts");
    }
}
