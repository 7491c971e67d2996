//! Permission checks, as RabbitMQ's channel makes them (`check_*_permitted`
//! in `rabbit_channel.erl`): which permission each method needs is decided
//! in the method's own file; this keeps the user's compiled permissions for
//! the vhost and makes the checks cheap.
//!
//! The compiled permissions are reloaded whenever the broker's access
//! generation moves, so a change applies to open channels from their next
//! method on. (RabbitMQ caches up to 12 granted checks per channel for the
//! channel's life with its internal backend; antre never answers from a
//! stale grant.) A publish checks `write` on the exchange once per change
//! of exchange or of permissions: the last granted exchange name is kept,
//! in a buffer reused without allocating.

use std::sync::Arc;

use super::Channel;
use crate::access::permissions::refused;
use crate::access::{Perm, ResourceKind, VhostPermissions};
use crate::error::BrokerError;

/// A channel's view of its user's permissions.
#[derive(Debug, Default)]
pub(crate) struct ChannelAccess {
    /// The access generation `perms` was loaded at (0: never).
    generation: u64,
    perms: Option<Arc<VhostPermissions>>,
    /// The exchange last granted `write` at `generation`, if `granted`
    /// (the buffer outlives grants so that it is reused).
    granted_exchange: String,
    granted: bool,
}

impl Channel {
    /// The user's permissions in the channel's vhost, reloaded if they
    /// changed; None when the user has none there any more.
    fn permissions(&mut self) -> Option<&Arc<VhostPermissions>> {
        let access = self.ctx.broker.access();
        let generation = access.generation();
        if generation != self.access.generation {
            self.access.perms = access.compiled(&self.ctx.user, &self.ctx.vhost.name);
            self.access.generation = generation;
            self.access.granted = false;
        }
        self.access.perms.as_ref()
    }

    /// Checks that the user's `perm` covers a queue or exchange.
    pub(super) fn permit(
        &mut self,
        kind: ResourceKind,
        name: &str,
        perm: Perm,
    ) -> Result<(), BrokerError> {
        match self.permissions() {
            Some(p) => p.check(kind, name, perm),
            None => Err(refused(kind, name, &self.ctx.vhost.name, &self.ctx.user)),
        }
    }

    /// Checks a routing key against the user's topic permission, when
    /// `exchange` is a topic exchange they have one for.
    pub(super) fn permit_topic(
        &mut self,
        exchange: &str,
        key: &str,
        perm: Perm,
    ) -> Result<(), BrokerError> {
        // The common case, no topic permission for this exchange, costs a
        // map emptiness check; only then is the exchange's type looked up.
        let has_rules = matches!(self.permissions(), Some(p) if p.has_topic_rules(exchange));
        if !has_rules || !self.ctx.vhost.is_topic_exchange(exchange) {
            return Ok(());
        }
        match self.permissions() {
            Some(p) => p.check_topic(exchange, key, perm),
            None => Ok(()),
        }
    }

    /// What basic.publish needs: `write` on the exchange, then the topic
    /// permission on the routing key.
    pub(super) fn permit_publish(&mut self, exchange: &str, key: &str) -> Result<(), BrokerError> {
        let fresh = self.access.generation == self.ctx.broker.access().generation();
        if !(fresh && self.access.granted && self.access.granted_exchange == exchange) {
            self.permit(ResourceKind::Exchange, exchange, Perm::Write)?;
            self.access.granted_exchange.clear();
            self.access.granted_exchange.push_str(exchange);
            self.access.granted = true;
        }
        self.permit_topic(exchange, key, Perm::Write)
    }

    /// RabbitMQ's rule for the `user_id` property: if set, it must be the
    /// user who is publishing.
    pub(super) fn check_user_id(&self, user_id: Option<&str>) -> Result<(), BrokerError> {
        match user_id {
            Some(claimed) if claimed != &*self.ctx.user => {
                Err(BrokerError::PreconditionFailed(format!(
                    "user_id property set to '{claimed}' but authenticated user was '{}'",
                    self.ctx.user
                )))
            }
            _ => Ok(()),
        }
    }
}
