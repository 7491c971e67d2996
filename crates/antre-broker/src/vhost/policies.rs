//! Setting and clearing a vhost's policies and operator policies: each
//! change is saved with the durable definitions and applied at once to
//! every exchange and queue of the vhost, as RabbitMQ does.

use std::sync::Arc;

use crate::error::BrokerError;
use crate::policy::{AppliedPolicy, Policy, PolicyKind};
use crate::queue::QueueKind;

use super::persist::Change;
use super::Vhost;

impl Vhost {
    /// Sets a policy (of its kind), replacing one of the same name; returns
    /// whether it is new. Every exchange and queue whose selection changes
    /// gets the new one at once (limits are enforced on messages already
    /// queued), and the dead letters that causes are routed.
    pub fn set_policy(&self, policy: Policy) -> Result<bool, BrokerError> {
        let kind = policy.kind;
        tracing::info!(
            vhost = self.name,
            name = policy.name,
            pattern = policy.pattern,
            apply_to = policy.apply_to.as_str(),
            "setting {}",
            kind.component()
        );
        let def = policy.to_def();
        let (created, changed) = {
            let mut topo = self.topology.write();
            let created = topo.policies.insert(policy).is_none();
            topo.push_change(Change::put_policy(kind, def));
            let changed = topo.reapply_policies();
            self.save(&mut topo)?;
            (created, changed)
        };
        self.route_all_dead_letters(&changed);
        Ok(created)
    }

    /// Clears a policy; returns whether there was one. What it set is
    /// undone at once: queues return to their declared arguments (or to the
    /// next policy that matches).
    pub fn delete_policy(&self, kind: PolicyKind, name: &str) -> Result<bool, BrokerError> {
        let changed = {
            let mut topo = self.topology.write();
            if topo.policies.remove(kind, name).is_none() {
                return Ok(false);
            }
            tracing::info!(vhost = self.name, name, "clearing {}", kind.component());
            topo.push_change(Change::delete_policy(kind, name));
            let changed = topo.reapply_policies();
            self.save(&mut topo)?;
            changed
        };
        self.route_all_dead_letters(&changed);
        Ok(true)
    }

    /// The policies of a kind, by priority (lowest first), then name.
    pub fn policies(&self, kind: PolicyKind) -> Vec<Arc<Policy>> {
        self.topology.read().policies.list(kind)
    }

    /// The policies that would apply to a queue `name` of type `kind`
    /// (one that may not exist yet).
    pub fn queue_policy(&self, name: &str, kind: QueueKind) -> AppliedPolicy {
        self.topology.read().policies.select_queue(name, kind)
    }

    /// One policy.
    pub fn policy(&self, kind: PolicyKind, name: &str) -> Option<Arc<Policy>> {
        self.topology.read().policies.get(kind, name).cloned()
    }

    fn route_all_dead_letters(&self, queues: &[Arc<crate::queue::Queue>]) {
        for q in queues {
            self.route_dead_letters(q);
        }
    }
}
