//! A channel: the per-channel state machine of an AMQP session, without I/O.
//!
//! The server decodes frames, assembles content, and hands each method to
//! [`Channel::handle`] (or a whole message to [`Channel::publish`]); the
//! channel answers by pushing [`Outgoing`] frames into a vector the server
//! encodes. Deliveries that queues push to the channel's sink come back in
//! through [`Channel::deliver`], which assigns their delivery tags. Nothing
//! here touches a socket or a clock, so every rule (tags, acks, prefetch,
//! confirms, transactions) is testable in plain unit tests.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use antre_amqp::method::*;
use antre_amqp::reply;
use antre_amqp::{ContentHeader, Method};
use bytes::Bytes;

use crate::broker::Broker;
use crate::durable::{add_once, Durable};
use crate::error::BrokerError;
use crate::exchange::{sender_selected, Destination};
use crate::message::Message;
use crate::queue::{
    ConnectionId, ConsumerId, ConsumerSpec, Credit, Delivery, DeliverySink, Enqueued, Entry, Queue,
};
use crate::vhost::REPLY_TO;
use crate::vhost::{generated_name, ExchangeDeclaration, QueueDeclaration, Vhost};

/// A frame the channel wants sent.
#[derive(Debug, Clone, PartialEq)]
pub enum Outgoing {
    /// A method without content.
    Method(Method),
    /// basic.deliver, basic.get-ok or basic.return, followed by the message's
    /// content header and body.
    Content(Method, Arc<Message>),
}

#[derive(Debug)]
struct Unacked {
    queue: Arc<Queue>,
    entry: Entry,
    /// The consumer's window, to release on settle; None for basic.get.
    credit: Option<Arc<Credit>>,
    /// When it was delivered (ms), for the consumer timeout.
    delivered_at: u64,
}

#[derive(Debug)]
struct ChannelConsumer {
    id: ConsumerId,
    queue: Arc<Queue>,
    credit: Arc<Credit>,
}

/// A publish held back by an open transaction.
#[derive(Debug)]
struct PendingPublish {
    mandatory: bool,
    message: Arc<Message>,
}

/// An ack, nack or reject held back by an open transaction.
#[derive(Debug, Clone, Copy)]
struct PendingSettle {
    tag: u64,
    multiple: bool,
    requeue: Option<bool>,
}

#[derive(Debug, Default)]
enum Mode {
    #[default]
    Plain,
    /// Publisher confirms: the sequence number of the next publish.
    Confirm { next: u64, unconfirmed: Option<u64> },
    Tx {
        publishes: Vec<PendingPublish>,
        settles: Vec<PendingSettle>,
    },
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
    /// Largest message body accepted, in bytes.
    pub max_message_size: u64,
    /// The user the connection logged in as: a published `user_id` must
    /// name it.
    pub user: String,
}

/// One open channel.
#[derive(Debug)]
pub struct Channel {
    /// Channel number.
    pub id: u16,
    ctx: ChannelContext,
    sink: Arc<dyn DeliverySink>,
    next_tag: u64,
    unacked: BTreeMap<u64, Unacked>,
    consumers: HashMap<Arc<str>, ChannelConsumer>,
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
    /// This channel's direct reply-to queue, once it consumed from
    /// `amq.rabbitmq.reply-to`.
    reply_queue: Option<Arc<Queue>>,
}

/// The sync token that stands for a transaction commit (confirm tokens are
/// publish sequence numbers, which never get this high).
const TX_COMMIT_TOKEN: u64 = u64::MAX;
/// Marks a sync token that stands for a nack of one publish (a queue
/// refused it), sent once the confirms before it are out.
const NACK_TOKEN_FLAG: u64 = 1 << 62;

/// What settling a delivery does to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settle {
    Ack,
    Requeue,
    /// Rejected without requeue: dead-lettered or dropped.
    Reject,
}

impl Channel {
    /// A freshly opened channel whose consumers' deliveries go to `sink`.
    pub fn new(id: u16, ctx: ChannelContext, sink: Arc<dyn DeliverySink>) -> Channel {
        Channel {
            id,
            ctx,
            sink,
            next_tag: 1,
            unacked: BTreeMap::new(),
            consumers: HashMap::new(),
            prefetch: 0,
            credit: Credit::new(0),
            mode: Mode::Plain,
            last_queue: None,
            dirty: Vec::new(),
            syncs_outstanding: 0,
            sync_started: std::collections::VecDeque::new(),
            confirmed_up_to: 0,
            reply_queue: None,
        }
    }

    /// Messages delivered on this channel and not yet settled.
    pub fn unacked_count(&self) -> usize {
        self.unacked.len()
    }

    /// Number of consumers on this channel.
    pub fn consumer_count(&self) -> usize {
        self.consumers.len()
    }

    /// Handles a method that carries no content.
    pub fn handle(&mut self, method: Method, out: &mut Vec<Outgoing>) -> Result<(), BrokerError> {
        let vhost = Arc::clone(&self.ctx.vhost);
        let conn = self.ctx.connection;
        let mut reply = |m: Method, nowait: bool| {
            if !nowait {
                out.push(Outgoing::Method(m));
            }
        };
        match method {
            Method::ExchangeDeclare(m) => {
                vhost.declare_exchange(
                    ExchangeDeclaration {
                        name: m.exchange,
                        kind: m.kind,
                        durable: m.durable,
                        auto_delete: m.auto_delete,
                        internal: m.internal,
                        arguments: m.arguments,
                    },
                    m.passive,
                )?;
                reply(ExchangeDeclareOk {}.into(), m.nowait);
            }
            Method::ExchangeDelete(m) => {
                vhost.delete_exchange(&m.exchange, m.if_unused)?;
                reply(ExchangeDeleteOk {}.into(), m.nowait);
            }
            Method::ExchangeBind(m) => {
                vhost.bind(
                    &m.source,
                    Destination::Exchange(m.destination),
                    &m.routing_key,
                    m.arguments,
                    conn,
                )?;
                reply(ExchangeBindOk {}.into(), m.nowait);
            }
            Method::ExchangeUnbind(m) => {
                vhost.unbind(
                    &m.source,
                    Destination::Exchange(m.destination),
                    &m.routing_key,
                    &m.arguments,
                    conn,
                )?;
                reply(ExchangeUnbindOk {}.into(), m.nowait);
            }
            Method::QueueDeclare(m) if m.passive && m.queue == REPLY_TO => {
                // The pseudo-queue always "exists", as in RabbitMQ, so that
                // clients checking for direct reply-to find it; RabbitMQ
                // reports one consumer and no messages.
                reply(
                    QueueDeclareOk {
                        queue: REPLY_TO.into(),
                        message_count: 0,
                        consumer_count: 1,
                    }
                    .into(),
                    m.nowait,
                );
            }
            Method::QueueDeclare(m) => {
                let name = if m.passive && m.queue.is_empty() {
                    // With nothing declared yet, a passive declare looks
                    // for the queue named "", as RabbitMQ's 404 says.
                    self.last_queue.clone().unwrap_or_default()
                } else {
                    m.queue
                };
                let (q, counts) = vhost.declare_queue(
                    QueueDeclaration {
                        name,
                        durable: m.durable,
                        exclusive: m.exclusive,
                        auto_delete: m.auto_delete,
                        arguments: m.arguments,
                    },
                    m.passive,
                    conn,
                )?;
                self.last_queue = Some(q.name.clone());
                reply(
                    QueueDeclareOk {
                        queue: q.name.clone(),
                        message_count: counts.ready,
                        consumer_count: counts.consumers,
                    }
                    .into(),
                    m.nowait,
                );
            }
            Method::QueueBind(m) => {
                let queue = self.resolve_queue(&m.queue)?;
                let key = if m.routing_key.is_empty() && m.queue.is_empty() {
                    queue.clone()
                } else {
                    m.routing_key
                };
                vhost.bind(
                    &m.exchange,
                    Destination::Queue(queue),
                    &key,
                    m.arguments,
                    conn,
                )?;
                reply(QueueBindOk {}.into(), m.nowait);
            }
            Method::QueueUnbind(m) => {
                let queue = self.resolve_queue(&m.queue)?;
                vhost.unbind(
                    &m.exchange,
                    Destination::Queue(queue),
                    &m.routing_key,
                    &m.arguments,
                    conn,
                )?;
                reply(QueueUnbindOk {}.into(), false);
            }
            Method::QueuePurge(m) => {
                let queue = self.resolve_queue(&m.queue)?;
                let message_count = vhost.purge_queue(&queue, conn)?;
                reply(QueuePurgeOk { message_count }.into(), m.nowait);
            }
            Method::QueueDelete(m) => {
                let queue = self.resolve_queue(&m.queue)?;
                let message_count = vhost.delete_queue(&queue, m.if_unused, m.if_empty, conn)?;
                reply(QueueDeleteOk { message_count }.into(), m.nowait);
            }
            Method::BasicQos(m) => {
                if m.prefetch_size != 0 {
                    return Err(BrokerError::NotImplemented(format!(
                        "prefetch_size!=0 ({})",
                        m.prefetch_size
                    )));
                }
                if m.global {
                    self.credit.set_limit(m.prefetch_count.into());
                    self.kick_consumers();
                } else {
                    self.prefetch = m.prefetch_count.into();
                }
                reply(BasicQosOk {}.into(), false);
            }
            Method::BasicConsume(m) => self.consume(m, out)?,
            Method::BasicCancel(m) => {
                self.cancel(&m.consumer_tag);
                reply(
                    BasicCancelOk {
                        consumer_tag: m.consumer_tag,
                    }
                    .into(),
                    m.nowait,
                );
            }
            Method::BasicGet(m) => self.get(m, out)?,
            Method::BasicAck(m) => self.settle(PendingSettle {
                tag: m.delivery_tag,
                multiple: m.multiple,
                requeue: None,
            })?,
            Method::BasicReject(m) => self.settle(PendingSettle {
                tag: m.delivery_tag,
                multiple: false,
                requeue: Some(m.requeue),
            })?,
            Method::BasicNack(m) => self.settle(PendingSettle {
                tag: m.delivery_tag,
                multiple: m.multiple,
                requeue: Some(m.requeue),
            })?,
            Method::BasicRecover(BasicRecover { requeue }) => {
                self.recover(requeue)?;
                reply(BasicRecoverOk {}.into(), false);
            }
            Method::BasicRecoverAsync(BasicRecoverAsync { requeue }) => self.recover(requeue)?,
            Method::ChannelFlow(m) => {
                self.credit.set_paused(!m.active);
                if m.active {
                    self.kick_consumers();
                }
                reply(ChannelFlowOk { active: m.active }.into(), false);
            }
            Method::ConfirmSelect(m) => {
                match self.mode {
                    Mode::Tx { .. } => {
                        return Err(BrokerError::PreconditionFailed(
                            "cannot switch from tx to confirm mode".into(),
                        ))
                    }
                    Mode::Plain => {
                        self.mode = Mode::Confirm {
                            next: 1,
                            unconfirmed: None,
                        }
                    }
                    Mode::Confirm { .. } => {}
                }
                reply(ConfirmSelectOk {}.into(), m.nowait);
            }
            Method::TxSelect(_) => {
                match self.mode {
                    Mode::Confirm { .. } => {
                        return Err(BrokerError::PreconditionFailed(
                            "cannot switch from confirm to tx mode".into(),
                        ))
                    }
                    Mode::Plain => {
                        self.mode = Mode::Tx {
                            publishes: Vec::new(),
                            settles: Vec::new(),
                        }
                    }
                    Mode::Tx { .. } => {}
                }
                reply(TxSelectOk {}.into(), false);
            }
            Method::TxCommit(_) => {
                let Mode::Tx { publishes, settles } = &mut self.mode else {
                    return Err(BrokerError::PreconditionFailed(
                        "channel is not transactional".into(),
                    ));
                };
                let publishes = std::mem::take(publishes);
                let settles = std::mem::take(settles);
                // Acks first: they refer to deliveries made before the commit.
                for s in settles {
                    self.apply_settle(s)?;
                }
                for p in publishes {
                    self.route(p.mandatory, p.message, out)?;
                }
                // Persistent messages of a transaction are on disk before
                // commit-ok, as in RabbitMQ.
                if !self.request_sync(TX_COMMIT_TOKEN) {
                    out.push(Outgoing::Method(TxCommitOk {}.into()));
                }
            }
            Method::TxRollback(_) => {
                let Mode::Tx { publishes, settles } = &mut self.mode else {
                    return Err(BrokerError::PreconditionFailed(
                        "channel is not transactional".into(),
                    ));
                };
                publishes.clear();
                settles.clear();
                out.push(Outgoing::Method(TxRollbackOk {}.into()));
            }
            // Server-to-client methods (and close-ok nobody asked for):
            // RabbitMQ's wording.
            _ => return Err(BrokerError::CommandInvalid("unimplemented method".into())),
        }
        Ok(())
    }

    /// The queue a method names, or the channel's last declared queue when
    /// the name is empty (AMQP's shorthand that RabbitMQ supports).
    fn resolve_queue(&self, name: &str) -> Result<String, BrokerError> {
        if !name.is_empty() {
            return Ok(name.to_owned());
        }
        self.last_queue
            .clone()
            .ok_or_else(|| BrokerError::NotFound("no previously declared queue".into()))
    }

    fn consume(&mut self, m: BasicConsume, out: &mut Vec<Outgoing>) -> Result<(), BrokerError> {
        let queue_name = self.resolve_queue(&m.queue)?;
        let queue = if queue_name == REPLY_TO {
            self.reply_consumer(&m)?
        } else {
            self.ctx.vhost.queue(&queue_name, self.ctx.connection)?
        };
        let tag: Arc<str> = if m.consumer_tag.is_empty() {
            generated_name("amq.ctag-").into()
        } else {
            m.consumer_tag.as_str().into()
        };
        if self.consumers.contains_key(&tag) {
            return Err(BrokerError::NotAllowed(format!(
                "attempt to reuse consumer tag '{tag}'"
            )));
        }
        let priority = match m.arguments.get("x-priority") {
            None => 0,
            Some(v) => v.as_i64().ok_or_else(|| {
                BrokerError::PreconditionFailed(format!(
                    "invalid arg 'x-priority' for {}: \"expected integer, got {}\"",
                    crate::error::queue_ref(&self.ctx.vhost.name, &queue.name),
                    crate::equivalence::type_name(v)
                ))
            })?,
        };
        let id = self.ctx.broker.next_id();
        let credit = Credit::new(self.prefetch);
        // consume-ok must reach the client before the first delivery; the
        // deliveries travel through the sink, which the server drains after
        // it has written this method's replies.
        if !m.nowait {
            out.push(Outgoing::Method(
                BasicConsumeOk {
                    consumer_tag: tag.to_string(),
                }
                .into(),
            ));
        }
        self.consumers.insert(
            Arc::clone(&tag),
            ChannelConsumer {
                id,
                queue: Arc::clone(&queue),
                credit: Arc::clone(&credit),
            },
        );
        let spec = ConsumerSpec {
            id,
            connection: self.ctx.connection,
            channel: self.id,
            tag: Arc::clone(&tag),
            no_ack: m.no_ack,
            exclusive: m.exclusive,
            credit,
            channel_credit: Arc::clone(&self.credit),
            sink: Arc::clone(&self.sink),
            priority,
        };
        if let Err(e) = queue.add_consumer(spec) {
            self.consumers.remove(&tag);
            if !m.nowait {
                out.pop();
            }
            return Err(e);
        }
        Ok(())
    }

    /// Direct reply-to: the private queue a consumer of
    /// `amq.rabbitmq.reply-to` reads, with RabbitMQ's rules for it.
    fn reply_consumer(&mut self, m: &BasicConsume) -> Result<Arc<Queue>, BrokerError> {
        if !m.no_ack {
            return Err(BrokerError::PreconditionFailed(
                "reply consumer cannot acknowledge".into(),
            ));
        }
        if self.live_reply_queue().is_some() {
            return Err(BrokerError::PreconditionFailed(
                "reply consumer already set".into(),
            ));
        }
        let queue = self.ctx.vhost.declare_reply_queue(self.ctx.connection)?;
        self.reply_queue = Some(Arc::clone(&queue));
        Ok(queue)
    }

    /// The reply queue, while its consumer is still there.
    fn live_reply_queue(&self) -> Option<&Arc<Queue>> {
        self.reply_queue
            .as_ref()
            .filter(|q| self.consumers.values().any(|c| Arc::ptr_eq(&c.queue, q)))
    }

    /// Cancels a consumer by tag (client's basic.cancel or channel close).
    fn cancel(&mut self, tag: &str) {
        if let Some(c) = self.consumers.remove(tag) {
            if c.queue.remove_consumer(c.id) {
                self.ctx.vhost.auto_delete_queue(&c.queue);
            }
        }
    }

    /// The queue cancelled one of our consumers (it was deleted). Returns
    /// whether the channel knew it, so the server sends basic.cancel once.
    pub fn consumer_cancelled(&mut self, tag: &str) -> bool {
        self.consumers.remove(tag).is_some()
    }

    fn get(&mut self, m: BasicGet, out: &mut Vec<Outgoing>) -> Result<(), BrokerError> {
        let queue_name = self.resolve_queue(&m.queue)?;
        let queue = self.ctx.vhost.queue(&queue_name, self.ctx.connection)?;
        let Some((entry, message_count)) = queue.get(m.no_ack) else {
            out.push(Outgoing::Method(BasicGetEmpty::default().into()));
            return Ok(());
        };
        let delivery_tag = self.next_tag;
        self.next_tag += 1;
        self.count_delivery(entry.redelivered);
        let message = Arc::clone(&entry.message);
        let redelivered = entry.redelivered;
        if !m.no_ack {
            self.unacked.insert(
                delivery_tag,
                Unacked {
                    queue,
                    entry,
                    credit: None,
                    delivered_at: self.ctx.broker.clock().now_ms(),
                },
            );
        }
        out.push(Outgoing::Content(
            BasicGetOk {
                delivery_tag,
                redelivered,
                exchange: message.exchange.clone(),
                routing_key: message.routing_key.clone(),
                message_count,
            }
            .into(),
            message,
        ));
        Ok(())
    }

    /// Accepts a delivery a queue pushed to this channel: assigns its tag and
    /// emits basic.deliver. A delivery for a consumer that was cancelled in
    /// the meantime goes back to its queue.
    ///
    /// Returns whether the consumer's prefetch window (or the channel's) is
    /// now full: nothing more will be delivered to it until the client
    /// settles something, so what was delivered should not be held back.
    pub fn deliver(&mut self, delivery: Delivery, out: &mut Vec<Outgoing>) -> bool {
        let credit = match self.consumers.get(&delivery.consumer_tag) {
            Some(c) if c.id == delivery.consumer => Arc::clone(&c.credit),
            _ => {
                let queue = Arc::clone(&delivery.queue);
                queue.return_undelivered(delivery);
                return false;
            }
        };
        let full = credit.is_full() || self.credit.is_full();
        let delivery_tag = self.next_tag;
        self.next_tag += 1;
        self.count_delivery(delivery.entry.redelivered);
        let message = Arc::clone(&delivery.entry.message);
        out.push(Outgoing::Content(
            BasicDeliver {
                consumer_tag: delivery.consumer_tag.to_string(),
                delivery_tag,
                redelivered: delivery.entry.redelivered,
                exchange: message.exchange.clone(),
                routing_key: message.routing_key.clone(),
            }
            .into(),
            message,
        ));
        if !delivery.no_ack {
            self.unacked.insert(
                delivery_tag,
                Unacked {
                    queue: delivery.queue,
                    entry: delivery.entry,
                    credit: Some(credit),
                    delivered_at: self.ctx.broker.clock().now_ms(),
                },
            );
        }
        full
    }

    fn count_delivery(&self, redelivered: bool) {
        let m = &self.ctx.broker.metrics;
        m.delivered.inc();
        if redelivered {
            m.redelivered.inc();
        }
    }

    fn settle(&mut self, s: PendingSettle) -> Result<(), BrokerError> {
        // Validate now so an unknown tag fails at once, even in a transaction.
        self.check_tag(s.tag, s.multiple)?;
        if let Mode::Tx { settles, .. } = &mut self.mode {
            settles.push(s);
            return Ok(());
        }
        self.apply_settle(s)
    }

    fn check_tag(&self, tag: u64, multiple: bool) -> Result<(), BrokerError> {
        if (multiple && tag == 0) || self.unacked.contains_key(&tag) {
            Ok(())
        } else {
            Err(BrokerError::PreconditionFailed(format!(
                "unknown delivery tag {tag}"
            )))
        }
    }

    fn apply_settle(&mut self, s: PendingSettle) -> Result<(), BrokerError> {
        self.check_tag(s.tag, s.multiple)?;
        let settled: Vec<Unacked> = if s.multiple {
            let rest = if s.tag == 0 {
                BTreeMap::new()
            } else {
                self.unacked.split_off(&(s.tag + 1))
            };
            std::mem::replace(&mut self.unacked, rest)
                .into_values()
                .collect()
        } else {
            self.unacked.remove(&s.tag).into_iter().collect()
        };
        if s.requeue.is_none() {
            self.ctx.broker.metrics.acked.add(settled.len() as u64);
        }
        let how = match s.requeue {
            None => Settle::Ack,
            Some(true) => Settle::Requeue,
            Some(false) => Settle::Reject,
        };
        self.finish(settled, how);
        Ok(())
    }

    /// Settles deliveries with their queues, releases their credit and lets
    /// the queues deliver more.
    fn finish(&mut self, settled: Vec<Unacked>, how: Settle) {
        let mut by_queue: Vec<(Arc<Queue>, Vec<Entry>)> = Vec::new();
        for u in settled {
            if let Some(c) = &u.credit {
                c.release(1);
                self.credit.release(1);
            }
            match by_queue.iter_mut().find(|(q, _)| Arc::ptr_eq(q, &u.queue)) {
                Some((_, entries)) => entries.push(u.entry),
                None => by_queue.push((u.queue, vec![u.entry])),
            }
        }
        for (queue, entries) in by_queue {
            match how {
                Settle::Ack => queue.ack(&entries),
                Settle::Requeue => queue.requeue(entries),
                Settle::Reject => queue.reject(entries),
            }
            // Rejections, and requeues past a delivery limit, leave dead letters.
            if how != Settle::Ack && queue.args.dead_letter_exchange.is_some() {
                self.ctx.vhost.route_dead_letters(&queue);
            }
        }
        self.kick_consumers();
    }

    fn kick_consumers(&self) {
        let mut kicked: Vec<&Arc<Queue>> = Vec::new();
        for c in self.consumers.values() {
            if !kicked.iter().any(|q| Arc::ptr_eq(q, &c.queue)) {
                c.queue.kick();
                kicked.push(&c.queue);
            }
        }
    }

    fn recover(&mut self, requeue: bool) -> Result<(), BrokerError> {
        if !requeue {
            return Err(BrokerError::NotImplemented("requeue=false".into()));
        }
        // Deliveries a transaction has acked (or rejected) are no longer
        // the client's to recover, though the queue hears of it only at
        // commit: RabbitMQ requeues just the others.
        let pending: Vec<(u64, bool)> = match &self.mode {
            Mode::Tx { settles, .. } => settles.iter().map(|s| (s.tag, s.multiple)).collect(),
            _ => Vec::new(),
        };
        if pending.is_empty() {
            self.requeue_all();
            return Ok(());
        }
        let settled = |t: u64| {
            pending
                .iter()
                .any(|&(tag, multiple)| t == tag || (multiple && (tag == 0 || t <= tag)))
        };
        let recovered: Vec<u64> = self
            .unacked
            .keys()
            .copied()
            .filter(|&t| !settled(t))
            .collect();
        let entries = recovered
            .iter()
            .filter_map(|t| self.unacked.remove(t))
            .collect();
        self.finish(entries, Settle::Requeue);
        Ok(())
    }

    fn requeue_all(&mut self) {
        let all = std::mem::take(&mut self.unacked).into_values().collect();
        self.finish(all, Settle::Requeue);
    }

    /// Handles basic.publish with its assembled content.
    pub fn publish(
        &mut self,
        m: BasicPublish,
        header: ContentHeader,
        body: Bytes,
        out: &mut Vec<Outgoing>,
    ) -> Result<(), BrokerError> {
        if m.immediate {
            return Err(BrokerError::NotImplemented("immediate=true".into()));
        }
        if let Some(claimed) = &header.properties.user_id {
            // RabbitMQ's validated user id: consumers may trust it.
            if *claimed != self.ctx.user {
                return Err(BrokerError::PreconditionFailed(format!(
                    "user_id property set to '{claimed}' but authenticated user was '{}'",
                    self.ctx.user
                )));
            }
        }
        let mut header = header;
        if header.properties.reply_to.as_deref() == Some(REPLY_TO) {
            // The responder replies to this channel's own address.
            let Some(queue) = self.live_reply_queue() else {
                return Err(BrokerError::PreconditionFailed(
                    "fast reply consumer does not exist".into(),
                ));
            };
            header.properties.reply_to = Some(queue.name.clone());
        }
        let now = self.ctx.broker.clock().now_ms();
        let message =
            Message::new(m.exchange, m.routing_key, header.properties, body).published_at(now);
        if let Err(why) = message.ttl() {
            return Err(BrokerError::PreconditionFailed(why));
        }
        let message = Arc::new(message);
        self.ctx.broker.metrics.published.inc();
        if let Mode::Tx { publishes, .. } = &mut self.mode {
            // Check the exchange now: RabbitMQ fails the publish, not the commit.
            self.ctx.vhost.route(&message.exchange, "", None)?;
            publishes.push(PendingPublish {
                mandatory: m.mandatory,
                message,
            });
            return Ok(());
        }
        self.route(m.mandatory, message, out)
    }

    /// Checks a content header before its body is read: the class must be
    /// basic and the size within the limit.
    pub fn check_header(&self, header: &ContentHeader) -> Result<(), BrokerError> {
        if header.class_id != antre_amqp::CLASS_BASIC {
            return Err(BrokerError::UnexpectedFrame(format!(
                "expected content header for class 60, got one for class {} instead",
                header.class_id
            )));
        }
        if header.body_size > self.ctx.max_message_size {
            return Err(BrokerError::PreconditionFailed(format!(
                "message size {} is larger than configured max size {}",
                header.body_size, self.ctx.max_message_size
            )));
        }
        Ok(())
    }

    fn route(
        &mut self,
        mandatory: bool,
        message: Arc<Message>,
        out: &mut Vec<Outgoing>,
    ) -> Result<(), BrokerError> {
        let rejected = self.enqueue(mandatory, message, out)?;
        let seq = match &mut self.mode {
            Mode::Confirm { next, .. } => {
                *next += 1;
                *next - 1
            }
            _ => return Ok(()),
        };
        if rejected {
            // RabbitMQ nacks a publish that any of its queues refused.
            self.nack_publish(seq, out);
        } else if let Mode::Confirm { unconfirmed, .. } = &mut self.mode {
            *unconfirmed = Some(seq);
        }
        Ok(())
    }

    fn mark_dirty(&mut self, durable: Arc<dyn Durable>) {
        add_once(&mut self.dirty, durable);
    }

    /// Puts a message where it goes: nowhere if its exchange saw its key
    /// already, into the exchange's schedule if it asks for a delay, else
    /// into the queues its exchange routes it to. Returns whether a queue
    /// refused it.
    fn enqueue(
        &mut self,
        mandatory: bool,
        message: Arc<Message>,
        out: &mut Vec<Outgoing>,
    ) -> Result<bool, BrokerError> {
        let (dedup, delayed) = self.ctx.vhost.exchange_hooks(&message.exchange);
        if let Some(cache) = dedup {
            let (duplicate, stored) = cache.check(&message, message.published_at)?;
            if stored {
                self.mark_dirty(cache as Arc<dyn Durable>);
            }
            if duplicate {
                // The publisher's retry succeeded: confirmed, not routed.
                return Ok(false);
            }
        }
        if let Some(schedule) = delayed {
            if crate::exchange::delayed::delay_of(&message).is_some() {
                if schedule.schedule(message)? {
                    self.mark_dirty(schedule as Arc<dyn Durable>);
                }
                return Ok(false);
            }
        }
        let headers = message.properties.headers.as_ref();
        let mut queues = self
            .ctx
            .vhost
            .route(&message.exchange, &message.routing_key, headers)?;
        for key in sender_selected::extra_keys(headers) {
            for q in self.ctx.vhost.route(&message.exchange, &key, headers)? {
                if !queues.iter().any(|seen| Arc::ptr_eq(seen, &q)) {
                    queues.push(q);
                }
            }
        }
        let message = sender_selected::without_bcc(message);
        if queues.is_empty() {
            self.ctx.broker.metrics.unroutable.inc();
            if mandatory {
                self.ctx.broker.metrics.returned.inc();
                out.push(Outgoing::Content(
                    BasicReturn {
                        reply_code: reply::NO_ROUTE,
                        reply_text: "NO_ROUTE".into(),
                        exchange: message.exchange.clone(),
                        routing_key: message.routing_key.clone(),
                    }
                    .into(),
                    Arc::clone(&message),
                ));
            }
        }
        let mut rejected = false;
        for q in &queues {
            match q.publish(Arc::clone(&message))? {
                Enqueued::Accepted { stored: true } => {
                    self.mark_dirty(Arc::clone(q) as Arc<dyn Durable>)
                }
                Enqueued::Accepted { stored: false } | Enqueued::Duplicate => {}
                Enqueued::Rejected => rejected = true,
            }
            if q.args.dead_letter_exchange.is_some() {
                self.ctx.vhost.route_dead_letters(q);
            }
        }
        Ok(rejected)
    }

    /// Sends basic.nack for one publish, after the acks owed for the
    /// publishes before it (which may be waiting for the disk).
    fn nack_publish(&mut self, seq: u64, out: &mut Vec<Outgoing>) {
        self.flush_confirms(out);
        if self.syncs_outstanding == 0 {
            out.push(Outgoing::Method(refused_publish(seq).into()));
            self.confirmed_up_to = self.confirmed_up_to.max(seq);
            return;
        }
        if let Some(syncer) = self.ctx.broker.syncer() {
            self.syncs_outstanding += 1;
            self.sync_started.push_back(std::time::Instant::now());
            syncer.request(Vec::new(), Arc::clone(&self.sink), NACK_TOKEN_FLAG | seq);
        }
    }

    /// Emits the publisher confirms owed so far as one basic.ack with
    /// multiple=true. The server calls this once per batch of frames, so a
    /// fast publisher gets one confirm frame per read, not one per message.
    /// When the batch wrote to a store, the ack waits for the syncer instead
    /// and comes back through [`Channel::on_synced`].
    pub fn flush_confirms(&mut self, out: &mut Vec<Outgoing>) {
        let Mode::Confirm { unconfirmed, .. } = &mut self.mode else {
            // Without confirms nobody waits: the syncer's sweep writes these.
            self.dirty.clear();
            return;
        };
        let Some(tag) = unconfirmed.take() else {
            return;
        };
        if !self.request_sync(tag) {
            let ack = self.ack_up_to(tag);
            out.push(Outgoing::Method(ack.into()));
        }
    }

    /// The basic.ack confirming every publish up to `tag`: multiple only
    /// when it covers more than one, as RabbitMQ sends them.
    fn ack_up_to(&mut self, tag: u64) -> BasicAck {
        let multiple = tag > self.confirmed_up_to + 1;
        self.count_confirms(tag);
        BasicAck {
            delivery_tag: tag,
            multiple,
        }
    }

    fn count_confirms(&mut self, up_to: u64) {
        let n = up_to.saturating_sub(self.confirmed_up_to);
        self.confirmed_up_to = self.confirmed_up_to.max(up_to);
        self.ctx.broker.metrics.confirmed.add(n);
    }

    /// Asks the syncer to make this channel's appends durable, if there are
    /// any (or earlier requests are still out, to keep answers in order).
    /// Returns false when the answer can be given at once.
    fn request_sync(&mut self, token: u64) -> bool {
        let Some(syncer) = self.ctx.broker.syncer() else {
            self.dirty.clear();
            return false;
        };
        if self.dirty.is_empty() && self.syncs_outstanding == 0 {
            return false;
        }
        self.syncs_outstanding += 1;
        self.sync_started.push_back(std::time::Instant::now());
        syncer.request(
            std::mem::take(&mut self.dirty),
            Arc::clone(&self.sink),
            token,
        );
        true
    }

    /// The syncer finished a request of this channel: send the confirm (a
    /// nack if the disk failed) or the commit-ok it was holding back.
    pub fn on_synced(
        &mut self,
        token: u64,
        ok: bool,
        out: &mut Vec<Outgoing>,
    ) -> Result<(), BrokerError> {
        self.syncs_outstanding = self.syncs_outstanding.saturating_sub(1);
        if let Some(started) = self.sync_started.pop_front() {
            self.ctx
                .broker
                .metrics
                .confirm_seconds
                .observe(started.elapsed());
        }
        if token != TX_COMMIT_TOKEN && token & NACK_TOKEN_FLAG != 0 {
            let seq = token & !NACK_TOKEN_FLAG;
            self.confirmed_up_to = self.confirmed_up_to.max(seq);
            out.push(Outgoing::Method(refused_publish(seq).into()));
            return Ok(());
        }
        if token == TX_COMMIT_TOKEN {
            if !ok {
                return Err(BrokerError::Internal(
                    "could not write the transaction to disk".into(),
                ));
            }
            out.push(Outgoing::Method(TxCommitOk {}.into()));
            return Ok(());
        }
        let method: Method = if ok {
            self.ack_up_to(token).into()
        } else {
            BasicNack {
                delivery_tag: token,
                multiple: true,
                requeue: false,
            }
            .into()
        };
        out.push(Outgoing::Method(method));
        Ok(())
    }

    /// The consumer timeout: fails when a delivery has waited for its ack
    /// longer than its queue's `x-consumer-timeout`, or `default_ms` for
    /// queues without one. The server then closes the channel with this
    /// error (406), which requeues its deliveries, as RabbitMQ does.
    pub fn check_consumer_timeout(
        &self,
        now: u64,
        default_ms: Option<u64>,
    ) -> Result<(), BrokerError> {
        for u in self.unacked.values() {
            let Some(timeout) = u.queue.args.consumer_timeout.or(default_ms) else {
                continue;
            };
            if now.saturating_sub(u.delivered_at) > timeout {
                return Err(BrokerError::PreconditionFailed(format!(
                    "delivery acknowledgement on channel {} timed out. Timeout value used: {timeout} ms. \
                     This timeout value can be configured, see consumers doc guide to learn more",
                    self.id
                )));
            }
        }
        Ok(())
    }

    /// Tears the channel down (channel.close, or its connection went away):
    /// cancels its consumers, then puts every unacked delivery back.
    pub fn close(&mut self) {
        let tags: Vec<Arc<str>> = self.consumers.keys().cloned().collect();
        for tag in tags {
            self.cancel(&tag);
        }
        self.requeue_all();
    }
}

/// The basic.nack for a publish a queue refused (x-overflow=reject-publish),
/// in RabbitMQ's form: multiple and requeue set. Every earlier publish is
/// confirmed by the time it is sent, so multiple covers only this one.
fn refused_publish(seq: u64) -> BasicNack {
    BasicNack {
        delivery_tag: seq,
        multiple: true,
        requeue: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::tests::CollectSink;
    use antre_amqp::BasicProperties;

    struct Fixture {
        vhost: Arc<Vhost>,
        sink: Arc<CollectSink>,
        channel: Channel,
        out: Vec<Outgoing>,
    }

    fn fixture() -> Fixture {
        let broker = Arc::new(Broker::new());
        let vhost = broker.vhost("/").unwrap();
        let sink = Arc::new(CollectSink::default());
        let ctx = ChannelContext {
            broker,
            vhost: Arc::clone(&vhost),
            connection: 1,
            max_message_size: 1024,
            user: "guest".into(),
        };
        let channel = Channel::new(1, ctx, Arc::clone(&sink) as Arc<dyn DeliverySink>);
        Fixture {
            vhost,
            sink,
            channel,
            out: Vec::new(),
        }
    }

    impl Fixture {
        fn call(&mut self, m: impl Into<Method>) -> Result<(), BrokerError> {
            self.channel.handle(m.into(), &mut self.out)
        }

        fn declare(&mut self, name: &str) {
            self.call(QueueDeclare {
                queue: name.into(),
                ..Default::default()
            })
            .unwrap();
        }

        fn publish(&mut self, key: &str, body: &str) {
            let header = ContentHeader {
                class_id: 60,
                body_size: body.len() as u64,
                properties: BasicProperties::default(),
            };
            let m = BasicPublish {
                routing_key: key.into(),
                ..Default::default()
            };
            self.channel
                .publish(
                    m,
                    header,
                    Bytes::copy_from_slice(body.as_bytes()),
                    &mut self.out,
                )
                .unwrap();
        }

        /// Feeds what the queues pushed to the sink back through the channel,
        /// as the server does, and returns the delivery tags it assigned.
        fn pump(&mut self) -> Vec<u64> {
            let deliveries: Vec<Delivery> = std::mem::take(&mut *self.sink.deliveries.lock());
            let mut tags = Vec::new();
            for d in deliveries {
                let before = self.out.len();
                self.channel.deliver(d, &mut self.out);
                for o in &self.out[before..] {
                    if let Outgoing::Content(Method::BasicDeliver(m), _) = o {
                        tags.push(m.delivery_tag);
                    }
                }
            }
            tags
        }

        /// Hands what the queues pushed to the channel; for each delivery,
        /// whether it reported a full prefetch window.
        fn deliver_pending(&mut self) -> Vec<bool> {
            let deliveries: Vec<Delivery> = std::mem::take(&mut *self.sink.deliveries.lock());
            deliveries
                .into_iter()
                .map(|d| self.channel.deliver(d, &mut self.out))
                .collect()
        }

        fn ready(&self, q: &str) -> u32 {
            self.vhost.queue(q, 1).unwrap().counts().ready
        }
    }

    #[test]
    fn delivery_tags_count_up_and_multiple_ack_settles_a_prefix() {
        let mut f = fixture();
        f.declare("q");
        f.call(BasicConsume {
            queue: "q".into(),
            consumer_tag: "c".into(),
            ..Default::default()
        })
        .unwrap();
        for i in 0..4 {
            f.publish("q", &i.to_string());
        }
        assert_eq!(f.pump(), [1, 2, 3, 4]);
        f.call(BasicAck {
            delivery_tag: 3,
            multiple: true,
        })
        .unwrap();
        assert_eq!(f.channel.unacked_count(), 1);
        let err = f
            .call(BasicAck {
                delivery_tag: 2,
                multiple: false,
            })
            .unwrap_err();
        assert_eq!(
            err,
            BrokerError::PreconditionFailed("unknown delivery tag 2".into())
        );
    }

    #[test]
    fn deliver_reports_when_the_prefetch_window_fills() {
        let mut f = fixture();
        f.declare("q");
        f.call(BasicQos {
            prefetch_count: 2,
            ..Default::default()
        })
        .unwrap();
        f.call(BasicConsume {
            queue: "q".into(),
            consumer_tag: "c".into(),
            ..Default::default()
        })
        .unwrap();
        f.publish("q", "0");
        assert_eq!(f.deliver_pending(), [false], "one of two is out");
        for i in 1..3 {
            f.publish("q", &i.to_string());
        }
        // The second fills the window; the third waits for an ack.
        assert_eq!(f.deliver_pending(), [true]);
        assert_eq!(f.ready("q"), 1);
        f.call(BasicAck {
            delivery_tag: 1,
            multiple: false,
        })
        .unwrap();
        assert_eq!(f.deliver_pending(), [true]);
    }

    #[test]
    fn ack_all_with_tag_zero_and_nack_requeues() {
        let mut f = fixture();
        f.declare("q");
        for i in 0..3 {
            f.publish("q", &i.to_string());
        }
        for _ in 0..3 {
            f.call(BasicGet {
                queue: "q".into(),
                ..Default::default()
            })
            .unwrap();
        }
        f.call(BasicNack {
            delivery_tag: 2,
            multiple: false,
            requeue: true,
        })
        .unwrap();
        assert_eq!(f.ready("q"), 1);
        f.call(BasicAck {
            delivery_tag: 0,
            multiple: true,
        })
        .unwrap();
        assert_eq!(f.channel.unacked_count(), 0);
    }

    #[test]
    fn confirms_are_flushed_as_one_multiple_ack() {
        let mut f = fixture();
        f.declare("q");
        f.call(ConfirmSelect { nowait: false }).unwrap();
        f.out.clear();
        for i in 0..5 {
            f.publish("q", &i.to_string());
        }
        f.channel.flush_confirms(&mut f.out);
        assert_eq!(
            f.out,
            [Outgoing::Method(
                BasicAck {
                    delivery_tag: 5,
                    multiple: true
                }
                .into()
            )]
        );
        let err = f.call(TxSelect {}).unwrap_err();
        assert!(matches!(err, BrokerError::PreconditionFailed(_)));
    }

    #[test]
    fn transactions_hold_publishes_until_commit() {
        let mut f = fixture();
        f.declare("q");
        f.call(TxSelect {}).unwrap();
        f.publish("q", "a");
        assert_eq!(f.ready("q"), 0);
        f.call(TxCommit {}).unwrap();
        assert_eq!(f.ready("q"), 1);
        f.publish("q", "b");
        f.call(TxRollback {}).unwrap();
        f.call(TxCommit {}).unwrap();
        assert_eq!(f.ready("q"), 1);
    }

    #[test]
    fn closing_requeues_unacked_and_cancels_consumers() {
        let mut f = fixture();
        f.declare("q");
        f.call(BasicConsume {
            queue: "q".into(),
            consumer_tag: "c".into(),
            ..Default::default()
        })
        .unwrap();
        f.publish("q", "x");
        f.pump();
        f.channel.close();
        let q = f.vhost.queue("q", 1).unwrap();
        assert_eq!(
            q.counts(),
            crate::QueueCounts {
                ready: 1,
                unacked: 0,
                consumers: 0
            }
        );
    }

    #[test]
    fn delivery_for_a_cancelled_consumer_goes_back_unmarked() {
        let mut f = fixture();
        f.declare("q");
        f.call(BasicConsume {
            queue: "q".into(),
            consumer_tag: "c".into(),
            ..Default::default()
        })
        .unwrap();
        f.publish("q", "x");
        f.call(BasicCancel {
            consumer_tag: "c".into(),
            nowait: false,
        })
        .unwrap();
        assert!(f.pump().is_empty());
        let q = f.vhost.queue("q", 1).unwrap();
        let (entry, _) = q.get(true).unwrap();
        assert!(!entry.redelivered, "it never reached the client");
    }

    #[test]
    fn empty_queue_name_means_the_last_declared_queue() {
        let mut f = fixture();
        f.declare("");
        f.publish("q", "unrouted");
        f.call(BasicGet::default()).unwrap();
        assert!(matches!(
            f.out.last(),
            Some(Outgoing::Method(Method::BasicGetEmpty(_)))
        ));
        let mut g = fixture();
        assert!(matches!(
            g.call(BasicGet::default()),
            Err(BrokerError::NotFound(_))
        ));
    }

    #[test]
    fn a_user_id_must_name_the_logged_in_user() {
        let mut f = fixture();
        f.declare("q");
        let publish = |f: &mut Fixture, user: &str| {
            let header = ContentHeader {
                class_id: 60,
                body_size: 1,
                properties: BasicProperties {
                    user_id: Some(user.into()),
                    ..Default::default()
                },
            };
            let m = BasicPublish {
                routing_key: "q".into(),
                ..Default::default()
            };
            f.channel
                .publish(m, header, Bytes::from_static(b"x"), &mut f.out)
        };
        assert!(publish(&mut f, "guest").is_ok());
        let err = publish(&mut f, "mallory").unwrap_err();
        assert_eq!(
            err.to_string(),
            "PRECONDITION_FAILED - user_id property set to 'mallory' but authenticated user was 'guest'"
        );
        assert_eq!(f.ready("q"), 1);
    }

    #[test]
    fn oversized_or_foreign_content_headers_are_refused() {
        let f = fixture();
        let big = ContentHeader {
            class_id: 60,
            body_size: 1025,
            properties: BasicProperties::default(),
        };
        assert!(matches!(
            f.channel.check_header(&big),
            Err(BrokerError::PreconditionFailed(_))
        ));
        let foreign = ContentHeader {
            class_id: 10,
            body_size: 1,
            properties: BasicProperties::default(),
        };
        assert!(matches!(
            f.channel.check_header(&foreign),
            Err(BrokerError::UnexpectedFrame(_))
        ));
    }

    #[test]
    fn consumer_timeout_trips_on_the_queue_timeout_or_the_default() {
        use crate::clock::{Clock, ManualClock};
        let clock = Arc::new(ManualClock::at(10_000));
        let broker = Arc::new(Broker::with_clock(Arc::clone(&clock) as Arc<dyn Clock>));
        let vhost = broker.vhost("/").unwrap();
        let sink = Arc::new(CollectSink::default());
        let ctx = ChannelContext {
            broker,
            vhost,
            connection: 1,
            max_message_size: 1024,
            user: "guest".into(),
        };
        let mut f = Fixture {
            vhost: Arc::clone(&ctx.vhost),
            sink: Arc::clone(&sink),
            channel: Channel::new(1, ctx, sink as Arc<dyn DeliverySink>),
            out: Vec::new(),
        };
        let timeout: antre_amqp::FieldTable =
            [("x-consumer-timeout", antre_amqp::FieldValue::I32(500))]
                .into_iter()
                .collect();
        f.call(QueueDeclare {
            queue: "slow".into(),
            arguments: timeout,
            ..Default::default()
        })
        .unwrap();
        f.declare("plain");
        f.publish("slow", "a");
        f.publish("plain", "b");
        for q in ["slow", "plain"] {
            f.call(BasicGet {
                queue: q.into(),
                ..Default::default()
            })
            .unwrap();
        }
        clock.advance(500);
        assert!(f
            .channel
            .check_consumer_timeout(clock.now_ms(), Some(1000))
            .is_ok());
        clock.advance(1);
        let err = f
            .channel
            .check_consumer_timeout(clock.now_ms(), None)
            .unwrap_err();
        assert!(
            err.to_string().contains("Timeout value used: 500 ms"),
            "{err}"
        );
        f.call(BasicAck {
            delivery_tag: 1,
            multiple: false,
        })
        .unwrap();
        assert!(f
            .channel
            .check_consumer_timeout(clock.now_ms(), Some(1000))
            .is_ok());
        clock.advance(500);
        let err = f
            .channel
            .check_consumer_timeout(clock.now_ms(), Some(1000))
            .unwrap_err();
        assert!(
            err.to_string().contains("Timeout value used: 1000 ms"),
            "{err}"
        );
    }
}
