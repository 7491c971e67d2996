//! The queue class: declare, bind, unbind, purge, delete.

use antre_amqp::method::*;

use super::{reply, Channel, Outgoing};
use crate::error::BrokerError;
use crate::exchange::Destination;
use crate::vhost::{QueueDeclaration, REPLY_TO};

impl Channel {
    pub(super) fn queue_declare(
        &mut self,
        m: QueueDeclare,
        out: &mut Vec<Outgoing>,
    ) -> Result<(), BrokerError> {
        if m.passive && m.queue == REPLY_TO {
            // The pseudo-queue always "exists", as in RabbitMQ, so that
            // clients checking for direct reply-to find it; RabbitMQ
            // reports one consumer and no messages.
            let ok = QueueDeclareOk {
                queue: REPLY_TO.into(),
                message_count: 0,
                consumer_count: 1,
            };
            reply(out, ok, m.nowait);
            return Ok(());
        }
        let name = if m.passive && m.queue.is_empty() {
            // With nothing declared yet, a passive declare looks for the
            // queue named "", as RabbitMQ's 404 says.
            self.last_queue.clone().unwrap_or_default()
        } else {
            m.queue
        };
        let declaration = QueueDeclaration {
            name,
            durable: m.durable,
            exclusive: m.exclusive,
            auto_delete: m.auto_delete,
            arguments: m.arguments,
        };
        let (q, counts) =
            self.ctx
                .vhost
                .declare_queue(declaration, m.passive, self.ctx.connection)?;
        self.last_queue = Some(q.name.clone());
        let ok = QueueDeclareOk {
            queue: q.name.clone(),
            message_count: counts.ready,
            consumer_count: counts.consumers,
        };
        reply(out, ok, m.nowait);
        Ok(())
    }

    pub(super) fn queue_bind(
        &mut self,
        m: QueueBind,
        out: &mut Vec<Outgoing>,
    ) -> Result<(), BrokerError> {
        let queue = self.resolve_queue(&m.queue)?;
        let key = if m.routing_key.is_empty() && m.queue.is_empty() {
            queue.clone()
        } else {
            m.routing_key
        };
        let conn = self.ctx.connection;
        self.ctx.vhost.bind(
            &m.exchange,
            Destination::Queue(queue),
            &key,
            m.arguments,
            conn,
        )?;
        reply(out, QueueBindOk {}, m.nowait);
        Ok(())
    }

    pub(super) fn queue_unbind(
        &mut self,
        m: QueueUnbind,
        out: &mut Vec<Outgoing>,
    ) -> Result<(), BrokerError> {
        let queue = self.resolve_queue(&m.queue)?;
        let conn = self.ctx.connection;
        self.ctx.vhost.unbind(
            &m.exchange,
            Destination::Queue(queue),
            &m.routing_key,
            &m.arguments,
            conn,
        )?;
        reply(out, QueueUnbindOk {}, false);
        Ok(())
    }

    pub(super) fn queue_purge(
        &mut self,
        m: QueuePurge,
        out: &mut Vec<Outgoing>,
    ) -> Result<(), BrokerError> {
        let queue = self.resolve_queue(&m.queue)?;
        let message_count = self.ctx.vhost.purge_queue(&queue, self.ctx.connection)?;
        reply(out, QueuePurgeOk { message_count }, m.nowait);
        Ok(())
    }

    pub(super) fn queue_delete(
        &mut self,
        m: QueueDelete,
        out: &mut Vec<Outgoing>,
    ) -> Result<(), BrokerError> {
        let queue = self.resolve_queue(&m.queue)?;
        let conn = self.ctx.connection;
        let message_count = self
            .ctx
            .vhost
            .delete_queue(&queue, m.if_unused, m.if_empty, conn)?;
        reply(out, QueueDeleteOk { message_count }, m.nowait);
        Ok(())
    }
}
