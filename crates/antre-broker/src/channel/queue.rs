//! The queue class: declare, bind, unbind, purge, delete.

use antre_amqp::method::*;

use super::exchange::named_exchange;
use super::{reply, Channel, Outgoing};
use crate::access::{Perm, ResourceKind};
use crate::cluster::{MetaCommand, MetaOutcome, MetadataLog, WireTable};
use crate::error::BrokerError;
use crate::exchange::Destination;
use crate::vhost::{
    check_queue_name, check_server_named, generated_name, QueueDeclaration, REPLY_TO,
};

impl Channel {
    /// The cluster's metadata log, when this channel's change must go
    /// through it: in a cluster, for anything but an exclusive queue
    /// (exclusive queues belong to their connection's node).
    pub(super) fn replicated(&self, exclusive: bool) -> Option<std::sync::Arc<dyn MetadataLog>> {
        if exclusive {
            return None;
        }
        self.ctx.broker.metadata_log().cloned()
    }

    /// A bind or unbind of `queue`, as the metadata group is to apply it
    /// on every node, so that every node's exchanges route to the queue.
    /// An exclusive queue (this connection's: another's is refused with
    /// 405) is this node's alone, so the change names this node: the
    /// others forward there.
    fn replicated_binding(
        &self,
        queue: &str,
        command: MetaCommand,
    ) -> Result<MetaCommand, BrokerError> {
        let Some(q) = self.ctx.vhost.queue_info(queue) else {
            return Ok(command);
        };
        let Some(owner) = q.options.exclusive_owner else {
            return Ok(command);
        };
        if owner != self.ctx.connection {
            return Err(crate::vhost::locked(&q));
        }
        self.ctx.vhost.announce(queue);
        Ok(match self.ctx.broker.metadata_log() {
            Some(log) => command.on_node(log.node_name()),
            None => command,
        })
    }

    /// Whether `queue` is an exclusive queue of this node (its bindings and
    /// deletion are this node's business only).
    fn is_local_exclusive(&self, queue: &str) -> bool {
        self.ctx.broker.metadata_log().is_some()
            && self
                .ctx
                .vhost
                .queue_info(queue)
                .is_some_and(|q| q.options.exclusive_owner.is_some())
    }

    /// The metadata log, in a cluster that records client-named exclusive
    /// queues (see [`MetaCommand::ExclusiveQueue`]).
    fn records_exclusive_names(&self) -> Option<std::sync::Arc<dyn MetadataLog>> {
        let log = self.ctx.broker.metadata_log()?;
        self.ctx
            .broker
            .feature_flag_enabled(crate::feature_flags::EXCLUSIVE_QUEUE_NAMES)
            .then(|| std::sync::Arc::clone(log))
    }

    /// Refuses (405, as RabbitMQ does) a declare of a name that a client of
    /// another running cluster node holds as its exclusive queue. A node
    /// that is down lost its exclusive queues: its names are free (the
    /// declare records the new holder).
    fn check_not_held_elsewhere(&self, name: &str) -> Result<(), BrokerError> {
        match self.ctx.vhost.exclusive_of_running(name) {
            Some(_) => Err(crate::vhost::locked_name(&self.ctx.vhost.name, name)),
            None => Ok(()),
        }
    }

    /// A client-named exclusive queue in a cluster: its name is claimed in
    /// the metadata first (refused there, as on every node, if a shared
    /// queue or another node's exclusive queue has it), then the queue is
    /// made here, on its connection's node.
    fn declare_exclusive(
        &mut self,
        log: &std::sync::Arc<dyn MetadataLog>,
        name: String,
        declaration: QueueDeclaration,
        nowait: bool,
        out: &mut Vec<Outgoing>,
    ) -> Result<(), BrokerError> {
        let vhost = &self.ctx.vhost;
        let me = log.node_name();
        let release = || log.propose_later(vhost.exclusive_record(&name, me, false));
        let claim = |from: Option<&str>| {
            log.propose(vhost.exclusive_hold(log.as_ref(), &name, me, from))
                .map_err(|e| {
                    if !matches!(e, crate::cluster::MetaError::Broker(_)) {
                        // Not refused: it may still be applied (after a
                        // timeout), and must not keep the name for a queue
                        // that is not here. Released only while this node
                        // holds it.
                        release();
                    }
                    BrokerError::from(e)
                })
        };
        // A redeclare by its connection (or another's 405) is this node's
        // business only.
        let new = !vhost.has_queue(&name);
        if new {
            // Whoever the metadata records is down (checked before): its
            // name is free.
            claim(vhost.exclusive_elsewhere(&name).as_deref())?;
        }
        let (q, counts) =
            match vhost.declare_queue_as(name.clone(), declaration, self.ctx.connection) {
                Ok(made) => made,
                Err(e) => {
                    if new && !vhost.has_queue(&name) {
                        release();
                    }
                    return Err(e);
                }
            };
        vhost.announce(&name);
        if !vhost.holds_exclusive(&name) {
            if !new {
                // Declared before the cluster recorded names.
                log.propose_later(vhost.exclusive_hold(log.as_ref(), &name, me, None));
            } else if let Err(e) = claim(None) {
                // This node's release of an earlier queue of the name came
                // after the claim in the log, before the queue was made
                // here (`Vhost::release_exclusive` claims it again when the
                // queue already exists). Claimed again: if another node
                // took the name since, this declare is refused after all.
                vhost.evict_exclusive_for(
                    &name,
                    "another cluster node's client took this exclusive queue's name while it was declared here: the declare is refused",
                );
                return Err(e);
            }
        }
        self.last_queue = Some(q.name().to_owned());
        let ok = QueueDeclareOk {
            queue: q.name().to_owned(),
            message_count: counts.ready,
            consumer_count: counts.consumers,
        };
        reply(out, ok, nowait);
        Ok(())
    }

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
            self.check_not_held_elsewhere(&declaration.name)?;
            let vhost = &self.ctx.vhost;
            vhost.caught_up(|| vhost.declare_queue(declaration.clone(), true, conn))?
        } else {
            // The name first (server-generated `amq.gen-...`, or the
            // client's, which must not be reserved), then configure on it:
            // exclusive and server-named queues need it like any other.
            let name = if declaration.name.is_empty() {
                check_server_named(&declaration.arguments)?;
                match self.ctx.broker.metadata_log() {
                    // Node-local: named after its node (see
                    // `vhost::exclusive_name`).
                    Some(log) if declaration.exclusive => {
                        crate::vhost::exclusive_name(Some(log.node_name()))
                    }
                    _ => generated_name("amq.gen-"),
                }
            } else {
                check_queue_name(&declaration.name)?;
                declaration.name.clone()
            };
            self.permit(ResourceKind::Queue, &name, Perm::Configure)?;
            crate::queue::QueueArgs::check_expiries(
                &declaration.arguments,
                &self.ctx.vhost.name,
                &name,
            )?;
            let dlx = named_exchange(&declaration.arguments, "x-dead-letter-exchange");
            if let Some(dlx) = dlx.filter(|_| !self.ctx.vhost.has_queue(&name)) {
                // A new queue that dead-letters: read on it, write on the DLX.
                let dlx = dlx.to_owned();
                self.permit(ResourceKind::Queue, &name, Perm::Read)?;
                self.permit(ResourceKind::Exchange, &dlx, Perm::Write)?;
            }
            self.check_not_held_elsewhere(&name)?;
            if declaration.exclusive && !declaration.name.is_empty() {
                if let Some(log) = self.records_exclusive_names() {
                    return self.declare_exclusive(&log, name, declaration, m.nowait, out);
                }
            }
            if let Some(log) = self.replicated(declaration.exclusive) {
                // An exclusive queue of this node holds the name: refused
                // here, as on a single node (405), rather than proposed:
                // every node would then evict it (see
                // `Vhost::evict_exclusive`, for such a queue elsewhere).
                if let Some(q) = self.ctx.vhost.queue_info(&name) {
                    if q.options.exclusive_owner.is_some() {
                        return Err(crate::vhost::locked(&q));
                    }
                }
                // In a cluster, a shared queue's definition is metadata:
                // every node applies it; this node owns its engine.
                let owner = self
                    .ctx
                    .broker
                    .place_new_queue(&self.ctx.vhost, &name, &declaration.arguments)
                    .unwrap_or_else(|| log.node_name().to_owned());
                let outcome = log.propose(MetaCommand::DeclareQueue {
                    vhost: self.ctx.vhost.name.clone(),
                    name,
                    durable: declaration.durable,
                    auto_delete: declaration.auto_delete,
                    arguments: WireTable(declaration.arguments),
                    owner,
                })?;
                let MetaOutcome::Queue { name, counts } = outcome else {
                    return Err(BrokerError::Internal(
                        "queue.declare applied no queue".into(),
                    ));
                };
                self.last_queue = Some(name.clone());
                let ok = QueueDeclareOk {
                    queue: name,
                    message_count: counts.ready,
                    consumer_count: counts.consumers,
                };
                reply(out, ok, m.nowait);
                return Ok(());
            }
            self.ctx.vhost.declare_queue_as(name, declaration, conn)?
        };
        self.last_queue = Some(q.name().to_owned());
        let mut counts = counts;
        if m.passive {
            if let Some(owner) = self.ctx.vhost.remote_owner(q.name()) {
                // The counts are the owner's, as RabbitMQ asks the queue's
                // home node.
                counts = self.remote_counts(q.name(), &owner, out).unwrap_or(counts);
            }
        }
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
        if let Some(log) = self.replicated(false) {
            let command = MetaCommand::binding(
                false,
                &self.ctx.vhost.name,
                m.exchange,
                Destination::Queue(queue.clone()),
                key,
                m.arguments,
            );
            log.propose(self.replicated_binding(&queue, command)?)?;
            reply(out, QueueBindOk {}, m.nowait);
            return Ok(());
        }
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
        // RabbitMQ answers unbind-ok for a binding that does not exist
        // before it looks at the queue's owner: another connection's
        // exclusive queue is refused (405) only when the binding is there.
        let others = self
            .ctx
            .vhost
            .queue_info(&queue)
            .and_then(|q| q.options.exclusive_owner)
            .is_some_and(|owner| owner != conn);
        let binding = crate::exchange::Binding {
            destination: Destination::Queue(queue.clone()),
            routing_key: m.routing_key.clone(),
            arguments: m.arguments.clone(),
        };
        if others && !self.ctx.vhost.has_binding(&m.exchange, &binding) {
            reply(out, QueueUnbindOk {}, false);
            return Ok(());
        }
        if let Some(log) = self.replicated(false) {
            let command = MetaCommand::binding(
                true,
                &self.ctx.vhost.name,
                m.exchange,
                Destination::Queue(queue.clone()),
                m.routing_key,
                m.arguments,
            );
            log.propose(self.replicated_binding(&queue, command)?)?;
            reply(out, QueueUnbindOk {}, false);
            return Ok(());
        }
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
        let message_count = match self.ctx.vhost.remote_owner(&queue) {
            Some(owner) => {
                // Its existence and exclusivity are checked here first.
                self.ctx.vhost.queue(&queue, self.ctx.connection)?;
                self.purge_remote(queue, &owner, out)?
            }
            None => self.ctx.vhost.purge_queue(&queue, self.ctx.connection)?,
        };
        reply(out, QueuePurgeOk { message_count }, m.nowait);
        Ok(())
    }

    /// queue.delete of `name`, an exclusive queue of cluster node `node`.
    /// While `node` runs, the queue is its connection's alone, as on a
    /// single node (405): a replicated delete would have dropped, on every
    /// other node, the record of its node and the bindings that route to
    /// it, and answered delete-ok. Once `node` is down, its exclusive
    /// queues are gone, as in RabbitMQ: delete-ok, as for any queue that is
    /// no more, and the name the metadata still records for `node` is
    /// released on every node (only while `node` still holds it).
    fn delete_exclusive_elsewhere(
        &mut self,
        name: &str,
        node: &str,
        nowait: bool,
        out: &mut Vec<Outgoing>,
    ) -> Result<(), BrokerError> {
        let vhost = &self.ctx.vhost;
        if vhost.is_running(node) {
            return Err(crate::vhost::locked_name(&vhost.name, name));
        }
        let recorded = vhost.exclusive_elsewhere(name).is_some_and(|n| *n == *node);
        if let (true, Some(log)) = (recorded, self.ctx.broker.metadata_log()) {
            log.propose(vhost.exclusive_record(name, node, false))?;
        }
        reply(out, QueueDeleteOk { message_count: 0 }, nowait);
        Ok(())
    }

    pub(super) fn queue_delete(
        &mut self,
        m: QueueDelete,
        out: &mut Vec<Outgoing>,
    ) -> Result<(), BrokerError> {
        let queue = self.resolve_queue(&m.queue)?;
        self.permit(ResourceKind::Queue, &queue, Perm::Configure)?;
        if let Some(node) = self
            .ctx
            .vhost
            .named_elsewhere(&queue)
            .filter(|_| !self.ctx.vhost.has_queue(&queue))
        {
            return self.delete_exclusive_elsewhere(&queue, &node, m.nowait, out);
        }
        let conn = self.ctx.connection;
        if let Some(log) = self.replicated(self.is_local_exclusive(&queue)) {
            // if-unused and if-empty are about the queue's consumers and
            // messages, which its owner (or quorum leader) has: decided
            // there, once. Every node applying the conditional delete
            // against its own copy (no consumers, no messages) deleted it
            // everywhere but on the owner, which refused.
            // (A stream is deleted whatever they say, as in RabbitMQ.) The
            // delete-ok's count is the owner's too, when it can tell.
            let conditional =
                (m.if_unused || m.if_empty) && self.ctx.vhost.stream(&queue).is_none();
            let counts = match self.ctx.vhost.remote_owner(&queue) {
                Some(owner) => match self.owner_counts(&queue, &owner, out) {
                    Ok(counts) => Some(counts),
                    Err(e) if conditional => return Err(e),
                    Err(_) => None,
                },
                None => self.ctx.vhost.queue_info(&queue).map(|q| q.counts()),
            };
            if let (true, Some(counts)) = (conditional, &counts) {
                self.ctx
                    .vhost
                    .check_delete(&queue, counts, m.if_unused, m.if_empty)?;
            }
            let owner_count = counts.map(|c| c.ready);
            let outcome = log.propose(self.ctx.vhost.delete_command(&queue))?;
            let message_count = match outcome {
                MetaOutcome::Messages(n) => owner_count.unwrap_or(n).max(n),
                _ => 0,
            };
            reply(out, QueueDeleteOk { message_count }, m.nowait);
            return Ok(());
        }
        let message_count = self
            .ctx
            .vhost
            .delete_queue(&queue, m.if_unused, m.if_empty, conn)?;
        reply(out, QueueDeleteOk { message_count }, m.nowait);
        Ok(())
    }
}
