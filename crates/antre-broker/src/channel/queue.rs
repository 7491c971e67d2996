//! The queue class: declare, bind, unbind, purge, delete.

use antre_amqp::method::*;

use super::exchange::named_exchange;
use super::{reply, Channel, Outgoing};
use crate::access::{Perm, ResourceKind};
use crate::error::BrokerError;
use crate::exchange::Destination;
use crate::vhost::{
    check_queue_name, check_server_named, generated_name, QueueDeclaration, REPLY_TO,
};

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
        let conn = self.ctx.connection;
        let (q, counts) = if m.passive {
            // A passive declare needs no permission, as in RabbitMQ.
            self.ctx.vhost.declare_queue(declaration, true, conn)?
        } else {
            // The name first (server-generated `amq.gen-...`, or the
            // client's, which must not be reserved), then configure on it:
            // exclusive and server-named queues need it like any other.
            let name = if declaration.name.is_empty() {
                check_server_named(&declaration.arguments)?;
                generated_name("amq.gen-")
            } else {
                check_queue_name(&declaration.name)?;
                declaration.name.clone()
            };
            self.permit(ResourceKind::Queue, &name, Perm::Configure)?;
            let dlx = named_exchange(&declaration.arguments, "x-dead-letter-exchange");
            if let Some(dlx) = dlx.filter(|_| !self.ctx.vhost.has_queue(&name)) {
                // A new queue that dead-letters: read on it, write on the DLX.
                let dlx = dlx.to_owned();
                self.permit(ResourceKind::Queue, &name, Perm::Read)?;
                self.permit(ResourceKind::Exchange, &dlx, Perm::Write)?;
            }
            self.ctx.vhost.declare_queue_as(name, declaration, conn)?
        };
        self.last_queue = Some(q.name().to_owned());
        let ok = QueueDeclareOk {
            queue: q.name().to_owned(),
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
        self.permit_binding(&m.exchange, ResourceKind::Queue, &queue, &key)?;
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
        self.permit_binding(&m.exchange, ResourceKind::Queue, &queue, &m.routing_key)?;
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
        self.permit(ResourceKind::Queue, &queue, Perm::Read)?;
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
        self.permit(ResourceKind::Queue, &queue, Perm::Configure)?;
        let conn = self.ctx.connection;
        let message_count = self
            .ctx
            .vhost
            .delete_queue(&queue, m.if_unused, m.if_empty, conn)?;
        reply(out, QueueDeleteOk { message_count }, m.nowait);
        Ok(())
    }
}
