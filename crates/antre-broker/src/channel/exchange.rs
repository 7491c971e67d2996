//! The exchange class: declare, delete, bind, unbind.

use antre_amqp::method::*;

use super::{reply, Channel, Outgoing};
use crate::access::{Perm, ResourceKind};
use crate::cluster::{MetaCommand, WireTable};
use crate::error::BrokerError;
use crate::exchange::{Destination, ExchangeType};
use crate::vhost::ExchangeDeclaration;

/// The exchange a declaration argument names, when it is a string.
pub(super) fn named_exchange<'a>(args: &'a antre_amqp::FieldTable, key: &str) -> Option<&'a str> {
    args.get(key).and_then(antre_amqp::FieldValue::as_str)
}

impl Channel {
    pub(super) fn exchange_declare(
        &mut self,
        m: ExchangeDeclare,
        out: &mut Vec<Outgoing>,
    ) -> Result<(), BrokerError> {
        // RabbitMQ's order: the type, the default exchange, then configure;
        // a new exchange's alternate exchange needs read on it and write on
        // the alternate. A passive declare needs nothing.
        if !m.passive && !m.exchange.is_empty() {
            ExchangeType::parse(&m.kind, &m.arguments)?;
            self.permit(ResourceKind::Exchange, &m.exchange, Perm::Configure)?;
            if let Some(ae) = named_exchange(&m.arguments, "alternate-exchange") {
                if !self.ctx.vhost.has_exchange(&m.exchange) {
                    self.permit(ResourceKind::Exchange, &m.exchange, Perm::Read)?;
                    self.permit(ResourceKind::Exchange, ae, Perm::Write)?;
                }
            }
        }
        let declaration = ExchangeDeclaration {
            name: m.exchange,
            kind: m.kind,
            durable: m.durable,
            auto_delete: m.auto_delete,
            internal: m.internal,
            arguments: m.arguments,
        };
        match self.replicated(m.passive) {
            Some(log) => {
                log.propose(MetaCommand::DeclareExchange {
                    vhost: self.ctx.vhost.name.clone(),
                    name: declaration.name,
                    kind: declaration.kind,
                    durable: declaration.durable,
                    auto_delete: declaration.auto_delete,
                    internal: declaration.internal,
                    arguments: WireTable(declaration.arguments),
                })?;
            }
            None if m.passive => {
                // One declared through another node a moment ago is found.
                let vhost = &self.ctx.vhost;
                vhost.caught_up(|| vhost.declare_exchange(declaration.clone(), true))?
            }
            None => self.ctx.vhost.declare_exchange(declaration, false)?,
        }
        reply(out, ExchangeDeclareOk {}, m.nowait);
        Ok(())
    }

    pub(super) fn exchange_delete(
        &mut self,
        m: ExchangeDelete,
        out: &mut Vec<Outgoing>,
    ) -> Result<(), BrokerError> {
        // The default and system exchanges are refused as such first.
        if !m.exchange.is_empty() && !m.exchange.starts_with("amq.") {
            self.permit(ResourceKind::Exchange, &m.exchange, Perm::Configure)?;
        }
        match self.replicated(false) {
            Some(log) => {
                log.propose(MetaCommand::DeleteExchange {
                    vhost: self.ctx.vhost.name.clone(),
                    name: m.exchange,
                    if_unused: m.if_unused,
                })?;
            }
            None => self.ctx.vhost.delete_exchange(&m.exchange, m.if_unused)?,
        }
        reply(out, ExchangeDeleteOk {}, m.nowait);
        Ok(())
    }

    pub(super) fn exchange_bind(
        &mut self,
        m: ExchangeBind,
        out: &mut Vec<Outgoing>,
    ) -> Result<(), BrokerError> {
        self.permit_binding(
            &m.source,
            ResourceKind::Exchange,
            &m.destination,
            &m.routing_key,
        )?;
        if let Some(log) = self.replicated(false) {
            log.propose(MetaCommand::binding(
                false,
                &self.ctx.vhost.name,
                m.source,
                Destination::Exchange(m.destination),
                m.routing_key,
                m.arguments,
            ))?;
            reply(out, ExchangeBindOk {}, m.nowait);
            return Ok(());
        }
        let destination = Destination::Exchange(m.destination);
        let conn = self.ctx.connection;
        self.ctx
            .vhost
            .bind(&m.source, destination, &m.routing_key, m.arguments, conn)?;
        reply(out, ExchangeBindOk {}, m.nowait);
        Ok(())
    }

    pub(super) fn exchange_unbind(
        &mut self,
        m: ExchangeUnbind,
        out: &mut Vec<Outgoing>,
    ) -> Result<(), BrokerError> {
        self.permit_binding(
            &m.source,
            ResourceKind::Exchange,
            &m.destination,
            &m.routing_key,
        )?;
        if let Some(log) = self.replicated(false) {
            log.propose(MetaCommand::binding(
                true,
                &self.ctx.vhost.name,
                m.source,
                Destination::Exchange(m.destination),
                m.routing_key,
                m.arguments,
            ))?;
            reply(out, ExchangeUnbindOk {}, m.nowait);
            return Ok(());
        }
        let destination = Destination::Exchange(m.destination);
        let conn = self.ctx.connection;
        self.ctx
            .vhost
            .unbind(&m.source, destination, &m.routing_key, &m.arguments, conn)?;
        reply(out, ExchangeUnbindOk {}, m.nowait);
        Ok(())
    }

    /// What bind and unbind need (RabbitMQ's `binding_action`): write on
    /// the destination, then read on the source and the topic permission
    /// on the key. A binding naming the default exchange is refused as
    /// such by the vhost, after the destination's check.
    pub(super) fn permit_binding(
        &mut self,
        source: &str,
        kind: ResourceKind,
        destination: &str,
        key: &str,
    ) -> Result<(), BrokerError> {
        self.permit(kind, destination, Perm::Write)?;
        let default = |k: ResourceKind, name: &str| k == ResourceKind::Exchange && name.is_empty();
        if default(kind, destination) || source.is_empty() {
            return Ok(());
        }
        self.permit(ResourceKind::Exchange, source, Perm::Read)?;
        self.permit_topic(source, key, Perm::Read)
    }
}
