//! The seam between the broker core and forwarding to queues other cluster
//! nodes own.
//!
//! In a cluster a classic queue lives on one node, its owner
//! ([`crate::vhost::Vhost::remote_owner`] names it on every other node).
//! A client connected to another node still publishes to it and consumes
//! from it: its channel hands the work to a [`RemoteQueues`], which the
//! cluster crate implements over the cluster link. The core stays free of
//! networking; it only sees:
//!
//! - [`RemoteQueues::publish`]: a batch of messages for queues of one
//!   owner, answered once the owner has them (for a persistent message to a
//!   durable queue: once the owner's store synced it), through a callback
//!   that the channel turns into a sync answer (`DeliverySink::synced`), so
//!   publisher confirms wait for remote queues the way they wait for the
//!   local disk;
//! - [`RemoteQueues::open_channel`]: a proxy channel on the owner, a real
//!   [`crate::channel::Channel`] there, to which this node's channel sends
//!   the AMQP methods it forwards (basic.consume with the client's
//!   prefetch, basic.get, queue.purge, basic.cancel, and the settles of
//!   forwarded deliveries mapped to the owner's delivery tags). Its
//!   deliveries come back through the channel's sink
//!   ([`crate::queue::DeliverySink::deliver_remote`]).
//!
//! Which node owns a queue is only ever asked of the vhost's
//! `remote_owner`, so a queue whose owner moves (a replicated queue's
//! leader) is followed by updating that lookup.

use std::sync::Arc;

use antre_amqp::Method;

use crate::channel::Outgoing;
use crate::error::BrokerError;
use crate::message::Message;
use crate::queue::DeliverySink;

/// One message forwarded to an owner, for some of its queues.
#[derive(Debug, Clone)]
pub struct RemotePublish {
    /// The owner's queues it was routed to.
    pub queues: Vec<String>,
    /// The message, with its original exchange and routing key.
    pub message: Arc<Message>,
    /// The forwarding node's number for it in each of `queues`, in order
    /// ([`crate::replicated::Source`]); given by the forwarder, empty
    /// until then (and in a cluster without feature flag
    /// `quorum_queue_forwarded_publish_dedupe`).
    pub seqs: Vec<u64>,
}

/// What the owner did with one forwarded message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteResult {
    /// At least one of its queues took it (and it is synced if it must be).
    Accepted,
    /// A queue refused it (overflow `reject-publish`): nack it.
    Rejected,
    /// None of its queues exists any more: unroutable (returned if
    /// mandatory).
    Gone,
    /// It is not known to be stored (the owner is unreachable, or its disk
    /// failed): nack it.
    Failed,
}

/// Called once with the result of each message of a batch, in order.
pub type RemoteDone = Box<dyn FnOnce(Vec<RemoteResult>) + Send>;

/// Forwarding to queues other nodes own (see the module docs).
pub trait RemoteQueues: Send + Sync + std::fmt::Debug {
    /// Sends `batch` to `owner`'s queues in `vhost`, in order after every
    /// batch sent to it before; `done` is called once `owner` answered (or
    /// the link failed: every result is then [`RemoteResult::Failed`]).
    fn publish(&self, owner: &str, vhost: &str, batch: Vec<RemotePublish>, done: RemoteDone);

    /// Whether this node has more forwarded publishes out to `owner`, not
    /// answered, than it may buffer: the connections that publish there
    /// are then blocked, as by the memory alarm, until it catches up.
    fn congested(&self, _owner: &str) -> bool {
        false
    }

    /// Opens a proxy channel on `owner` for a channel of this node whose
    /// user is `user`; deliveries and cancels it pushes go to `sink`.
    fn open_channel(
        &self,
        owner: &str,
        vhost: &str,
        user: &str,
        sink: Arc<dyn DeliverySink>,
    ) -> Arc<dyn RemoteChannel>;
}

/// A channel on a queue's owner that forwards one local channel's work.
pub trait RemoteChannel: Send + Sync + std::fmt::Debug {
    /// Runs `method` on the owner's channel and waits for its answer (the
    /// frames it replied with, or the error that closed it), within the
    /// cluster's change timeout. Blocks the calling thread.
    fn call(&self, method: Method) -> Result<Vec<Outgoing>, BrokerError>;

    /// Sends methods that need no answer (settles, cancels), in order.
    fn cast(&self, methods: Vec<Method>);

    /// Closes the owner's channel: its consumers are cancelled and what it
    /// delivered and nobody settled goes back to its queues.
    fn close(&self);

    /// Whether it still works (false once its link to the owner broke: a
    /// new one must be opened).
    fn is_open(&self) -> bool;

    /// This node's session took a delivery of `bytes` (body and
    /// [`crate::queue::DELIVERY_OVERHEAD`]) from this channel: the owner
    /// may push that much more. The owner pushes at most a window of
    /// bytes not yet taken, so a client that does not read holds up its
    /// own deliveries on the owner, not this node's memory.
    fn taken(&self, _bytes: u64) {}
}

/// A delivery a queue on another node made to a consumer of this node.
#[derive(Debug)]
pub struct RemoteDelivery {
    /// The proxy channel it came through (to settle it there).
    pub channel: Arc<dyn RemoteChannel>,
    /// The consumer's tag (the same on both nodes).
    pub consumer_tag: String,
    /// The owner's delivery tag.
    pub remote_tag: u64,
    /// Whether it was delivered before.
    pub redelivered: bool,
    /// The message (its exchange and routing key are the original ones).
    pub message: Arc<Message>,
}

/// Queues of other nodes a message was routed to, `(owner, queue)`, as
/// one list of queues per owner, in the order the owners first appear:
/// what is forwarded to each owner as one publish.
pub fn by_owner(targets: Vec<(Arc<str>, String)>) -> Vec<(Arc<str>, Vec<String>)> {
    let mut per_owner: Vec<(Arc<str>, Vec<String>)> = Vec::new();
    for (owner, queue) in targets {
        match per_owner.iter_mut().find(|(o, _)| *o == owner) {
            Some((_, queues)) => queues.push(queue),
            None => per_owner.push((owner, vec![queue])),
        }
    }
    per_owner
}

/// The broker error a forwarded method failed with on the owner, from its
/// reply code and text (`CODE_NAME - details`).
pub fn error_from_reply(code: u16, text: &str) -> BrokerError {
    use antre_amqp::constants::reply;
    let details = text
        .split_once(" - ")
        .map_or(text, |(_, rest)| rest)
        .to_owned();
    match code {
        reply::NOT_FOUND => BrokerError::NotFound(details),
        reply::PRECONDITION_FAILED => BrokerError::PreconditionFailed(details),
        reply::ACCESS_REFUSED => BrokerError::AccessRefused(details),
        reply::RESOURCE_LOCKED => BrokerError::ResourceLocked(details),
        reply::NOT_ALLOWED => BrokerError::NotAllowed(details),
        reply::COMMAND_INVALID => BrokerError::CommandInvalid(details),
        reply::CHANNEL_ERROR => BrokerError::ChannelError(details),
        reply::UNEXPECTED_FRAME => BrokerError::UnexpectedFrame(details),
        reply::NOT_IMPLEMENTED => BrokerError::NotImplemented(details),
        _ => BrokerError::Internal(details),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_group_by_owner_in_first_seen_order() {
        let t = |o: &str, q: &str| (Arc::<str>::from(o), q.to_owned());
        let grouped = by_owner(vec![t("n2", "a"), t("n1", "b"), t("n2", "c")]);
        let names: Vec<(&str, Vec<&str>)> = grouped
            .iter()
            .map(|(o, qs)| (&**o, qs.iter().map(String::as_str).collect()))
            .collect();
        assert_eq!(names, [("n2", vec!["a", "c"]), ("n1", vec!["b"])]);
    }

    #[test]
    fn errors_survive_the_trip_by_code_and_text() {
        let e = BrokerError::ResourceLocked("queue 'q' in vhost '/' is exclusive".into());
        assert_eq!(error_from_reply(e.reply_code(), &e.to_string()), e);
        let e = BrokerError::NotFound("no queue 'x'".into());
        assert_eq!(error_from_reply(e.reply_code(), &e.to_string()), e);
    }
}
