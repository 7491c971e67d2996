//! Consuming: basic.qos, basic.consume and basic.cancel, basic.get, the
//! deliveries queues push to the channel, basic.recover, channel.flow and
//! the consumer timeout.

use std::sync::Arc;

use antre_amqp::method::*;

use super::{reply, Channel, ChannelConsumer, Mode, Outgoing, Settle, Source, Unacked};
use crate::access::{Perm, ResourceKind};
use crate::error::BrokerError;
use crate::metrics::DeliveryCounters;
use crate::queue::{ConsumerSpec, Credit, Delivery, Queue, QueueKind, Took};
use crate::vhost::{generated_name, REPLY_TO};

impl Channel {
    /// The tag a basic.consume asked for, or a generated one; 530 if a
    /// consumer of any kind (queue, stream, remote) on this channel has it.
    pub(super) fn new_consumer_tag(&self, requested: &str) -> Result<Arc<str>, BrokerError> {
        let tag: Arc<str> = if requested.is_empty() {
            generated_name("amq.ctag-").into()
        } else {
            requested.into()
        };
        if self.consumers.contains_key(&tag)
            || self.streams.contains_key(&tag)
            || self.remotes.contains_key(&tag)
        {
            return Err(BrokerError::NotAllowed(format!(
                "attempt to reuse consumer tag '{tag}'"
            )));
        }
        Ok(tag)
    }

    pub(super) fn qos(&mut self, m: BasicQos, out: &mut Vec<Outgoing>) -> Result<(), BrokerError> {
        if m.prefetch_size != 0 {
            return Err(BrokerError::NotImplemented(format!(
                "prefetch_size!=0 ({})",
                m.prefetch_size
            )));
        }
        // A per-consumer basic.qos also lifts the channel-wide limit, as
        // RabbitMQ (3.8 on) does, so that it overrides a default: clients
        // that set both set the global one last.
        let global = if m.global { m.prefetch_count } else { 0 };
        if !m.global {
            self.prefetch = m.prefetch_count.into();
        }
        if m.global || self.credit.limit() > 0 {
            self.credit.set_limit(global.into());
            self.qos_remote(global);
            self.kick_consumers();
        }
        self.stats.set_prefetch(self.prefetch, self.credit.limit());
        reply(out, BasicQosOk {}, false);
        Ok(())
    }

    pub(super) fn consume(
        &mut self,
        m: BasicConsume,
        out: &mut Vec<Outgoing>,
    ) -> Result<(), BrokerError> {
        let queue_name = self.resolve_queue(&m.queue)?;
        let queue = if queue_name == REPLY_TO {
            // Direct reply-to needs no permission, as in RabbitMQ.
            self.reply_consumer(&m)?
        } else {
            self.permit(ResourceKind::Queue, &queue_name, Perm::Read)?;
            if let Some(stream) = self.ctx.vhost.stream(&queue_name) {
                // A member of a stream's group reads its own replica; a
                // node that holds none reads the leader's.
                match self.ctx.vhost.remote_owner(&queue_name) {
                    Some(owner) if !stream.replica().is_some_and(|r| r.is_member()) => {
                        return self.consume_remote(m, queue_name, None, &owner, out);
                    }
                    _ => return self.consume_stream(m, stream, out),
                }
            }
            let vhost = &self.ctx.vhost;
            let queue = vhost.caught_up(|| vhost.queue(&queue_name, self.ctx.connection))?;
            if let Some(owner) = self.ctx.vhost.remote_owner(&queue_name) {
                return self.consume_remote(m, queue_name, Some(&queue), &owner, out);
            }
            queue
        };
        if queue.kind() == QueueKind::Quorum && self.credit.limit() > 0 {
            // RabbitMQ's quorum queues have no channel-wide prefetch.
            return Err(BrokerError::NotImplemented(format!(
                "{} does not support global qos",
                crate::error::queue_ref(&self.ctx.vhost.name, &queue.name)
            )));
        }
        let tag = self.new_consumer_tag(&m.consumer_tag)?;
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
    pub(super) fn reply_consumer(&mut self, m: &BasicConsume) -> Result<Arc<Queue>, BrokerError> {
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
    pub(super) fn live_reply_queue(&self) -> Option<&Arc<Queue>> {
        self.reply_queue
            .as_ref()
            .filter(|q| self.consumers.values().any(|c| Arc::ptr_eq(&c.queue, q)))
    }

    pub(super) fn basic_cancel(
        &mut self,
        m: BasicCancel,
        out: &mut Vec<Outgoing>,
    ) -> Result<(), BrokerError> {
        if !self.cancel_remote_and_wait(&m.consumer_tag) {
            self.cancel(&m.consumer_tag);
        }
        let ok = BasicCancelOk {
            consumer_tag: m.consumer_tag,
        };
        reply(out, ok, m.nowait);
        Ok(())
    }

    /// Cancels a consumer by tag (client's basic.cancel or channel close).
    pub(super) fn cancel(&mut self, tag: &str) {
        if self.cancel_stream(tag) || self.cancel_remote(tag) {
            return;
        }
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
            || self.streams.remove(tag).is_some()
            || self.remotes.remove(tag).is_some()
    }

    pub(super) fn get(&mut self, m: BasicGet, out: &mut Vec<Outgoing>) -> Result<(), BrokerError> {
        let queue_name = self.resolve_queue(&m.queue)?;
        self.permit(ResourceKind::Queue, &queue_name, Perm::Read)?;
        if let Some(stream) = self.ctx.vhost.stream(&queue_name) {
            return Err(BrokerError::NotImplemented(format!(
                "basic.get not supported by stream queues {}",
                stream.describe()
            )));
        }
        let vhost = &self.ctx.vhost;
        let queue = vhost.caught_up(|| vhost.queue(&queue_name, self.ctx.connection))?;
        let owner = self.ctx.vhost.owner_for_get(&queue)?;
        if let Some(owner) = owner {
            let timeout = queue.args().consumer_timeout;
            return self.get_remote(m, queue_name, &owner, (timeout, queue.kind()), out);
        }
        let Some((entry, message_count)) = queue.get(m.no_ack) else {
            self.stats.get_empty.inc();
            if let Some(c) = self.counters(queue.kind()) {
                c.get_empty.inc();
            }
            out.push(Outgoing::Method(BasicGetEmpty::default().into()));
            return Ok(());
        };
        let delivery_tag = self.next_tag;
        self.next_tag += 1;
        let took = Took::Get { no_ack: m.no_ack };
        self.count_delivery(queue.kind(), entry.redelivered, took);
        let message = Arc::clone(&entry.message);
        let redelivered = entry.redelivered;
        if !m.no_ack {
            self.unacked.insert(
                delivery_tag,
                Unacked {
                    source: Source::Queue {
                        queue,
                        entry: entry.into_unsettled(),
                    },
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
    pub(super) fn deliver_now(&mut self, delivery: Delivery, out: &mut Vec<Outgoing>) -> bool {
        let credit = match self.consumers.get(&delivery.consumer_tag) {
            Some(c) if c.id == delivery.consumer => Arc::clone(&c.credit),
            _ => {
                let queue = Arc::clone(&delivery.queue);
                queue.return_undelivered(delivery);
                // That freed room in the channel's window for its other
                // consumers.
                self.kick_consumers();
                return false;
            }
        };
        let full = credit.is_full() || self.credit.is_full();
        let delivery_tag = self.next_tag;
        self.next_tag += 1;
        let took = Took::Consume {
            no_ack: delivery.no_ack,
        };
        self.count_delivery(delivery.queue.kind(), delivery.entry.redelivered, took);
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
        if delivery.no_ack {
            delivery.queue.settle_no_ack(&delivery.entry);
        } else {
            self.unacked.insert(
                delivery_tag,
                Unacked {
                    source: Source::Queue {
                        queue: delivery.queue,
                        entry: delivery.entry.into_unsettled(),
                    },
                    credit: Some(credit),
                    delivered_at: self.ctx.broker.clock().now_ms(),
                },
            );
        }
        full
    }

    pub(super) fn flow(
        &mut self,
        m: ChannelFlow,
        out: &mut Vec<Outgoing>,
    ) -> Result<(), BrokerError> {
        self.credit.set_paused(!m.active);
        if m.active {
            self.kick_consumers();
        }
        reply(out, ChannelFlowOk { active: m.active }, false);
        Ok(())
    }

    /// Lets the queues of this channel's consumers dispatch again (room
    /// freed in a window).
    pub(crate) fn kick_consumers(&self) {
        let mut kicked: Vec<&Arc<Queue>> = Vec::new();
        for c in self.consumers.values() {
            if !kicked.iter().any(|q| Arc::ptr_eq(q, &c.queue)) {
                c.queue.kick();
                kicked.push(&c.queue);
            }
        }
    }

    /// basic.recover (answered) and basic.recover-async (`out` None).
    pub(super) fn recover(
        &mut self,
        requeue: bool,
        out: Option<&mut Vec<Outgoing>>,
    ) -> Result<(), BrokerError> {
        if !requeue {
            return Err(BrokerError::NotImplemented("requeue=false".into()));
        }
        self.requeue_unsettled();
        if let Some(out) = out {
            reply(out, BasicRecoverOk {}, false);
        }
        Ok(())
    }

    /// Requeues every unacked delivery but those an open transaction has
    /// settled already: they are no longer the client's to recover, though
    /// the queue hears of it only at commit (RabbitMQ requeues the others).
    fn requeue_unsettled(&mut self) {
        let pending: Vec<(u64, bool)> = match &self.mode {
            Mode::Tx { settles, .. } => settles.iter().map(|s| (s.tag, s.multiple)).collect(),
            _ => Vec::new(),
        };
        if pending.is_empty() {
            self.requeue_all();
            return;
        }
        let settled = |t: u64| {
            pending
                .iter()
                .any(|&(tag, multiple)| t == tag || (multiple && (tag == 0 || t <= tag)))
        };
        let recovered = self.unacked.take_where(|t| !settled(t));
        self.finish(recovered, Settle::Requeue);
    }

    pub(super) fn requeue_all(&mut self) {
        let all = self.unacked.take_all();
        self.finish(all, Settle::Requeue);
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
        if let Some(timeout) = self.unacked.overdue(now, default_ms) {
            return Err(BrokerError::PreconditionFailed(format!(
                "delivery acknowledgement on channel {} timed out. Timeout value used: {timeout} ms. \
                 This timeout value can be configured, see consumers doc guide to learn more",
                self.id
            )));
        }
        Ok(())
    }
}

impl Channel {
    /// Counts a delivery or basic.get answer from a queue of type `kind`
    /// (nothing on a proxy channel, see [`Channel::counters`]).
    pub(super) fn count_delivery(&self, kind: QueueKind, redelivered: bool, took: Took) {
        self.stats.delivered(took, redelivered);
        let Some(c) = self.counters(kind) else {
            return;
        };
        c.delivered.inc();
        if redelivered {
            c.redelivered.inc();
        }
        match took {
            Took::Get { no_ack: true } => c.delivered_get_auto_ack.inc(),
            Took::Get { no_ack: false } => c.delivered_get_manual_ack.inc(),
            Took::Consume { no_ack: true } => c.delivered_consume_auto_ack.inc(),
            Took::Consume { no_ack: false } => c.delivered_consume_manual_ack.inc(),
        }
    }

    /// The counters of deliveries and acks from queues of type `kind`, or
    /// none on a proxy channel: the node of the client's own channel
    /// counts those (RabbitMQ counts them in the client's channel), and the
    /// queue's node would count them a second time.
    pub(super) fn counters(&self, kind: QueueKind) -> Option<&DeliveryCounters> {
        (!self.at_once).then(|| self.ctx.broker.metrics.of(kind))
    }
}
