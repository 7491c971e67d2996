//! The exchange class: declare, delete, bind, unbind.

use antre_amqp::method::*;

use super::{reply, Channel, Outgoing};
use crate::error::BrokerError;
use crate::exchange::Destination;
use crate::vhost::ExchangeDeclaration;

impl Channel {
    pub(super) fn exchange_declare(
        &mut self,
        m: ExchangeDeclare,
        out: &mut Vec<Outgoing>,
    ) -> Result<(), BrokerError> {
        let declaration = ExchangeDeclaration {
            name: m.exchange,
            kind: m.kind,
            durable: m.durable,
            auto_delete: m.auto_delete,
            internal: m.internal,
            arguments: m.arguments,
        };
        self.ctx.vhost.declare_exchange(declaration, m.passive)?;
        reply(out, ExchangeDeclareOk {}, m.nowait);
        Ok(())
    }

    pub(super) fn exchange_delete(
        &mut self,
        m: ExchangeDelete,
        out: &mut Vec<Outgoing>,
    ) -> Result<(), BrokerError> {
        self.ctx.vhost.delete_exchange(&m.exchange, m.if_unused)?;
        reply(out, ExchangeDeleteOk {}, m.nowait);
        Ok(())
    }

    pub(super) fn exchange_bind(
        &mut self,
        m: ExchangeBind,
        out: &mut Vec<Outgoing>,
    ) -> Result<(), BrokerError> {
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
        let destination = Destination::Exchange(m.destination);
        let conn = self.ctx.connection;
        self.ctx
            .vhost
            .unbind(&m.source, destination, &m.routing_key, &m.arguments, conn)?;
        reply(out, ExchangeUnbindOk {}, m.nowait);
        Ok(())
    }
}
