//! A channel: the per-channel state machine of an AMQP session, without I/O.
//!
//! The session hands each method to [`Channel::handle`] (or a whole message
//! to [`Channel::publish`]); the channel answers by pushing [`Outgoing`]
//! frames into a vector the session encodes. Deliveries that queues push to
//! the channel's sink come back in through [`Channel::deliver`], which
//! assigns their delivery tags. Nothing here touches a socket or a clock, so
//! every rule (tags, acks, prefetch, confirms, transactions) is testable in
//! plain unit tests.
//!
//! [`Channel::handle`] only dispatches; each AMQP class has its own file
//! with one method per AMQP method, each in the same three steps (check,
//! apply to the vhost or the channel's state, answer):
//! - [`exchange`](self::exchange): exchange.declare/delete/bind/unbind;
//! - [`queue`](self::queue): queue.declare/bind/unbind/purge/delete;
//! - [`consume`](self::consume): basic.qos/consume/cancel/get, deliveries,
//!   recover, channel.flow and the consumer timeout;
//! - [`settle`](self::settle): basic.ack/nack/reject;
//! - [`publish`](self::publish): basic.publish, publisher confirms and
//!   transactions;
//! - [`access`](self::access): the user's permissions, checked by each of
//!   the above as RabbitMQ checks them.

mod access;
mod consume;
mod exchange;
mod held;
mod publish;
mod queue;
mod remote;
mod settle;
mod stats;
mod stream;
#[cfg(test)]
mod tests;
mod unacked;

pub use stats::{ChannelStats, ExchangeFlow, ExchangeFlows};

use std::collections::HashMap;
use std::sync::Arc;

use antre_amqp::Method;

use crate::broker::Broker;
use crate::durable::Durable;
use crate::error::BrokerError;
use crate::message::Message;
use crate::queue::{ConnectionId, ConsumerId, Credit, DeliverySink, Queue, Unsettled};
use crate::vhost::Vhost;

/// A frame the channel wants sent.
#[derive(Debug, Clone, PartialEq)]
pub enum Outgoing {
    /// A method without content.
    Method(Method),
    /// basic.deliver, basic.get-ok or basic.return, followed by the message's
    /// content header and body.
    Content(Method, Arc<Message>),
}

/// Where an unacked delivery came from.
#[derive(Debug)]
pub(crate) enum Source {
    /// A queue, which settles the entry.
    Queue { queue: Arc<Queue>, entry: Unsettled },
    /// A stream: settling only gives the consumer's credit back.
    Stream(Arc<crate::stream::Stream>),
    /// A queue another cluster node owns: settled on the proxy channel
    /// there, under the owner's delivery tag.
    Remote {
        channel: Arc<dyn crate::remote::RemoteChannel>,
        tag: u64,
        /// The queue's consumer timeout (ms), if it has one.
        timeout: Option<u64>,
        /// The queue's type, for the per-type counters.
        kind: crate::queue::QueueKind,
    },
}

/// A delivery as it is handed to the channel's unacked log (which keeps it
/// packed, see [`unacked`](self::unacked)).
#[derive(Debug)]
pub(crate) struct Unacked {
    pub(crate) source: Source,
    /// The consumer's window, to release on settle; None for basic.get.
    pub(crate) credit: Option<Arc<Credit>>,
    /// When it was delivered (ms), for the consumer timeout.
    pub(crate) delivered_at: u64,
}

#[derive(Debug)]
pub(crate) struct ChannelConsumer {
    pub(crate) id: ConsumerId,
    pub(crate) queue: Arc<Queue>,
    pub(crate) credit: Arc<Credit>,
}

/// A publish held back by an open transaction.
#[derive(Debug)]
pub(crate) struct PendingPublish {
    pub(crate) mandatory: bool,
    pub(crate) message: Arc<Message>,
}

/// An ack, nack or reject held back by an open transaction.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PendingSettle {
    pub(crate) tag: u64,
    pub(crate) multiple: bool,
    pub(crate) requeue: Option<bool>,
}

#[derive(Debug, Default)]
pub(crate) enum Mode {
    #[default]
    Plain,
    /// Publisher confirms: the sequence number of the next publish.
    Confirm { next: u64, unconfirmed: Option<u64> },
    Tx {
        publishes: Vec<PendingPublish>,
        settles: Vec<PendingSettle>,
    },
}

/// What a channel's publishes get, as the management API shows it
/// (RabbitMQ's `confirm` and `transactional`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PublishMode {
    /// Neither confirms nor a transaction.
    #[default]
    Plain,
    /// confirm.select: publisher confirms.
    Confirm,
    /// tx.select: a transaction.
    Transactional,
}

/// Per-connection facts a channel needs.
#[derive(Debug, Clone)]
pub struct ChannelContext {
    /// The broker (for ids).
    pub broker: Arc<Broker>,
    /// The vhost the connection opened.
    pub vhost: Arc<Vhost>,
    /// The connection, for exclusive queues.
    pub connection: ConnectionId,
    /// The user who opened the connection, whose permissions apply and
    /// whom a published `user_id` must name.
    pub user: Arc<str>,
    /// Largest message body accepted, in bytes.
    pub max_message_size: u64,
}

/// One open channel.
#[derive(Debug)]
pub struct Channel {
    /// Channel number.
    pub id: u16,
    ctx: ChannelContext,
    sink: Arc<dyn DeliverySink>,
    next_tag: u64,
    unacked: unacked::UnackedLog,
    consumers: HashMap<Arc<str>, ChannelConsumer>,
    /// Consumers of streams, by tag.
    streams: HashMap<Arc<str>, stream::StreamSub>,
    /// What a stream calls to wake this channel's stream consumers.
    stream_waker: crate::stream::StreamWaker,
    prefetch: u32,
    credit: Arc<Credit>,
    mode: Mode,
    last_queue: Option<String>,
    /// Durable queues written to since the last confirm flush.
    dirty: Vec<Arc<dyn Durable>>,
    /// Sync requests sent and not answered yet. While any is outstanding,
    /// later confirms queue behind it, so a `multiple` ack can never cover a
    /// message that is not on disk yet.
    syncs_outstanding: usize,
    /// When each outstanding sync request was made, for confirm latency.
    sync_started: std::collections::VecDeque<std::time::Instant>,
    /// Highest publish sequence number confirmed so far.
    confirmed_up_to: u64,
    /// Its figures, shared with the management API.
    stats: Arc<ChannelStats>,
    /// The exchange it published to last, and its counts there.
    flow: Option<Arc<ExchangeFlow>>,
    /// This channel's direct reply-to queue, once it consumed from
    /// `amq.rabbitmq.reply-to`.
    reply_queue: Option<Arc<Queue>>,
    /// Output waiting for the disk (see [`held`](self::held)).
    held: std::collections::VecDeque<held::Segment>,
    /// A proxy channel: never holds output (see [`Channel::answer_at_once`]).
    at_once: bool,
    /// Whether it has published, so counts among the broker's publishers.
    publisher: bool,
    /// The user's permissions in the vhost.
    access: access::ChannelAccess,
    /// Consumers of queues other cluster nodes own, by tag.
    remotes: HashMap<Arc<str>, remote::RemoteSub>,
    /// Proxy channels on other nodes, by node.
    remote_channels: HashMap<Arc<str>, Arc<dyn crate::remote::RemoteChannel>>,
    /// Publishes routed to other nodes' queues since the last flush.
    remote_window: Vec<remote::RemoteItem>,
    /// Publishes a local queue refused while remote ones are in flight.
    window_refused: Vec<u64>,
    /// Flushed groups whose answers are not all in (see [`remote`]).
    remote_groups: std::collections::VecDeque<remote::Group>,
    next_group: u64,
    /// Remote targets of the publish being routed.
    remote_pending: Option<remote::RemoteItem>,
    /// The nodes this channel forwarded publishes to, for flow control.
    forwarded_to: Vec<Arc<str>>,
    /// Deliveries of other nodes' queues held while the channel-wide
    /// prefetch window is full (see [`remote`]).
    remote_held: std::collections::VecDeque<crate::remote::RemoteDelivery>,
}

/// The sync token that stands for a transaction commit (confirm tokens are
/// publish sequence numbers, which never get this high).
pub(crate) const TX_COMMIT_TOKEN: u64 = u64::MAX;
/// Marks a sync token that stands for a nack of one publish (a queue
/// refused it), sent once the confirms before it are out.
pub(crate) const NACK_TOKEN_FLAG: u64 = 1 << 62;

/// What settling a delivery does to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settle {
    Ack,
    Requeue,
    /// Rejected without requeue: dead-lettered or dropped.
    Reject,
}

impl Channel {
    /// Whether the channel is in confirm or tx mode.
    pub fn publish_mode(&self) -> PublishMode {
        match self.mode {
            Mode::Plain => PublishMode::Plain,
            Mode::Confirm { .. } => PublishMode::Confirm,
            Mode::Tx { .. } => PublishMode::Transactional,
        }
    }

    /// A freshly opened channel whose consumers' deliveries go to `sink`.
    pub fn new(id: u16, ctx: ChannelContext, sink: Arc<dyn DeliverySink>) -> Channel {
        let stats = Arc::default();
        ctx.vhost.exchange_flows().join(&stats);
        Channel {
            id,
            ctx,
            sink,
            next_tag: 1,
            unacked: unacked::UnackedLog::default(),
            consumers: HashMap::new(),
            streams: HashMap::new(),
            stream_waker: crate::stream::StreamWaker::new(|| {}),
            prefetch: 0,
            credit: Credit::new(0),
            mode: Mode::Plain,
            last_queue: None,
            dirty: Vec::new(),
            syncs_outstanding: 0,
            sync_started: std::collections::VecDeque::new(),
            confirmed_up_to: 0,
            stats,
            flow: None,
            reply_queue: None,
            held: std::collections::VecDeque::new(),
            at_once: false,
            publisher: false,
            access: access::ChannelAccess::default(),
            remotes: HashMap::new(),
            remote_channels: HashMap::new(),
            remote_window: Vec::new(),
            forwarded_to: Vec::new(),
            remote_held: std::collections::VecDeque::new(),
            window_refused: Vec::new(),
            remote_groups: std::collections::VecDeque::new(),
            next_group: 1,
            remote_pending: None,
        }
    }

    /// Its figures, as the management API shows them.
    pub fn stats(&self) -> &Arc<ChannelStats> {
        &self.stats
    }

    /// Notes that every publish up to `seq` was confirmed or nacked.
    fn confirmed_to(&mut self, seq: u64) {
        if seq > self.confirmed_up_to {
            self.confirmed_up_to = seq;
            self.stats.settled_up_to(seq);
        }
    }

    /// The connection id the channel belongs to (its consumers carry it).
    pub fn connection(&self) -> ConnectionId {
        self.ctx.connection
    }

    /// The vhost the channel works in.
    pub fn vhost(&self) -> &Arc<Vhost> {
        &self.ctx.vhost
    }

    /// Messages delivered on this channel and not yet settled.
    pub fn unacked_count(&self) -> usize {
        self.unacked.len()
    }

    /// Whether the channel waits for the syncer (confirms, a commit or
    /// held replies come back through [`Channel::on_synced`]).
    pub fn waiting_for_disk(&self) -> bool {
        self.syncs_outstanding > 0 || !self.remote_groups.is_empty()
    }

    /// Number of consumers on this channel.
    pub fn consumer_count(&self) -> usize {
        self.consumers.len() + self.streams.len() + self.remotes.len()
    }

    /// Sets what a stream calls to wake this channel when a chunk is
    /// written while one of its stream consumers waits (the session sends
    /// itself an event that ends in [`Channel::stream_ready`]).
    pub fn set_stream_waker(&mut self, waker: crate::stream::StreamWaker) {
        self.stream_waker = waker;
    }

    /// Handles a method that carries no content, by class. A method that
    /// changed durable definitions is answered once they are on disk.
    pub fn handle(&mut self, method: Method, out: &mut Vec<Outgoing>) -> Result<(), BrokerError> {
        let start = out.len();
        let before = self.ctx.vhost.definitions_changed();
        let result = self.dispatch(method, out);
        let changed = self.ctx.vhost.definitions_changed() != before;
        self.hold_after(out, start, changed);
        // An ack gave credit back, a consume started a reader: stream
        // consumers take what their credit allows.
        if !self.streams.is_empty() {
            let start = out.len();
            self.pump_streams(out);
            self.hold_after(out, start, false);
        }
        if !self.remote_held.is_empty() {
            // Forwarded deliveries the channel-wide window held back.
            self.release_held_remote(out);
        }
        result
    }

    fn dispatch(&mut self, method: Method, out: &mut Vec<Outgoing>) -> Result<(), BrokerError> {
        match method {
            Method::ExchangeDeclare(m) => self.exchange_declare(m, out),
            Method::ExchangeDelete(m) => self.exchange_delete(m, out),
            Method::ExchangeBind(m) => self.exchange_bind(m, out),
            Method::ExchangeUnbind(m) => self.exchange_unbind(m, out),
            Method::QueueDeclare(m) => self.queue_declare(m, out),
            Method::QueueBind(m) => self.queue_bind(m, out),
            Method::QueueUnbind(m) => self.queue_unbind(m, out),
            Method::QueuePurge(m) => self.queue_purge(m, out),
            Method::QueueDelete(m) => self.queue_delete(m, out),
            Method::BasicQos(m) => self.qos(m, out),
            Method::BasicConsume(m) => self.consume(m, out),
            Method::BasicCancel(m) => self.basic_cancel(m, out),
            Method::BasicGet(m) => self.get(m, out),
            Method::BasicAck(m) => self.ack(m),
            Method::BasicReject(m) => self.reject(m),
            Method::BasicNack(m) => self.nack(m),
            Method::BasicRecover(m) => self.recover(m.requeue, Some(out)),
            Method::BasicRecoverAsync(m) => self.recover(m.requeue, None),
            Method::ChannelFlow(m) => self.flow(m, out),
            Method::ConfirmSelect(m) => self.confirm_select(m, out),
            Method::TxSelect(_) => self.tx_select(out),
            Method::TxCommit(_) => self.tx_commit(out),
            Method::TxRollback(_) => self.tx_rollback(out),
            // Server-to-client methods (and close-ok nobody asked for):
            // RabbitMQ's wording.
            _ => Err(BrokerError::CommandInvalid("unimplemented method".into())),
        }
    }

    /// The queue a method names, or the channel's last declared queue when
    /// the name is empty (AMQP's shorthand that RabbitMQ supports).
    pub(super) fn resolve_queue(&self, name: &str) -> Result<String, BrokerError> {
        if !name.is_empty() {
            return Ok(name.to_owned());
        }
        self.last_queue
            .clone()
            .ok_or_else(|| BrokerError::NotFound("no previously declared queue".into()))
    }

    /// Tears the channel down (channel.close, or its connection went away):
    /// cancels its consumers, then puts every unacked delivery back.
    pub fn close(&mut self) {
        if std::mem::take(&mut self.publisher) {
            self.ctx.broker.metrics.publishers.dec();
        }
        let tags: Vec<Arc<str>> = self.consumers.keys().cloned().collect();
        for tag in tags {
            self.cancel(&tag);
        }
        let tags: Vec<Arc<str>> = self.streams.keys().cloned().collect();
        for tag in tags {
            self.cancel_stream(&tag);
        }
        // Forwarded consumers too, before the requeues, or the owner would
        // deliver the requeued messages to them again.
        let tags: Vec<Arc<str>> = self.remotes.keys().cloned().collect();
        for tag in tags {
            self.cancel_remote(&tag);
        }
        self.requeue_all();
        self.close_remote();
        self.ctx.vhost.exchange_flows().leave(&self.stats);
    }
}

/// Answers with `m` unless the client asked for no answer.
fn reply(out: &mut Vec<Outgoing>, m: impl Into<Method>, nowait: bool) {
    if !nowait {
        out.push(Outgoing::Method(m.into()));
    }
}
