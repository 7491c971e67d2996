//! Feature flags: which metadata commands a cluster may log.
//!
//! A node reads every entry of the metadata log, so a command a node's
//! version does not know stops its metadata at that entry until it is
//! upgraded. A command added after the first clustered release therefore
//! names a flag ([`MetaCommand::feature_flag`]), and is proposed only once
//! the flag is enabled. A flag is enabled by a replicated
//! [`MetaCommand::EnableFeatureFlag`], which the metadata leader proposes
//! once every member says it supports the flag (its `NodeInfo` answer
//! lists it; an older node's answer lists none). So in a rolling upgrade
//! the new commands start once the last node runs the new version, and a
//! node without a flag the cluster enabled is refused as a new member.
//!
//! As RabbitMQ's feature flags, with one difference: RabbitMQ enables a
//! flag on an upgraded cluster only when asked (`rabbitmqctl
//! enable_feature_flag`), antre as soon as every member supports it. An
//! older antre refuses data a newer one wrote (docs/durability.md), so a
//! downgrade is no reason to hold a flag back.

use std::collections::BTreeSet;

use crate::broker::Broker;
use crate::cluster::MetaCommand;

/// A feature flag this version knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeatureFlag {
    /// Its name, as the metadata records it.
    pub name: &'static str,
    /// What enabling it starts, for listings.
    pub desc: &'static str,
}

/// Maintenance mode recorded in the metadata ([`MetaCommand::SetDrained`]).
/// RabbitMQ's flag of the same purpose has this name.
pub const MAINTENANCE_MODE_STATUS: &str = "maintenance_mode_status";

/// Forwarded publishes and calls (consume, get, passive declare...) name
/// how far their forwarding node applied the metadata (data-link frames
/// an older node cannot read, not a command). A queue's node that has not
/// applied that far yet, and so does not know a queue just declared,
/// waits until it has instead of answering that the queue does not exist,
/// which the forwarding node took for "unroutable" and confirmed (or, for
/// a consume, gave the client as 404).
pub const FORWARDED_METADATA_INDEX: &str = "forwarded_publish_metadata_index";

/// Client-named exclusive queues recorded in the metadata
/// ([`MetaCommand::ExclusiveQueue`]): their names are the cluster's, so a
/// publish by name reaches one from any node and a second declare of the
/// name on another node is refused, as in RabbitMQ.
pub const EXCLUSIVE_QUEUE_NAMES: &str = "cluster_wide_exclusive_queue_names";

/// Declares of client-named exclusive queues claim their name
/// ([`crate::cluster::ExclusiveClaim`]): of two declares of a free name on
/// two nodes at the same moment, the first in the log wins and the other
/// is refused, as in RabbitMQ (before, the later one won).
pub const EXCLUSIVE_QUEUE_CLAIMS: &str = "exclusive_queue_first_declare_wins";

/// Forwarded publishes carry their forwarding node's numbers for them
/// ([`crate::replicated::Source`]; data-link frames, queue-group entries
/// and snapshots an older node cannot read), so that a quorum queue
/// stores a message once however often it is sent, and a forwarding
/// node sends again what it cannot know was stored (its queue's leader
/// died or was deposed with the message on its way) instead of nacking
/// it, or losing it for a publisher without confirms.
pub const FORWARDED_PUBLISH_DEDUPE: &str = "quorum_queue_forwarded_publish_dedupe";

/// A node that finds no queue or exchange by the name a publish or a
/// lookup gives asks the metadata leader how far it applied the
/// metadata, and applies that much itself before it calls the publish
/// unroutable or the name not found (a request older versions do not
/// know: asked only once every node does).
pub const METADATA_READ_INDEX: &str = "metadata_read_index";

/// A metadata change made through a node is answered to its client once
/// every running member applied it (a request older versions do not
/// know: asked only once every node does), so that a binding, a user or
/// a permission a client was told exists is there through every node.
pub const METADATA_APPLIED_EVERYWHERE: &str = "metadata_applied_everywhere";

/// The cluster's name can be set at run time
/// ([`MetaCommand::SetClusterName`]), as RabbitMQ's `cluster_name`
/// global parameter.
pub const RUNTIME_CLUSTER_NAME: &str = "runtime_cluster_name";

/// Every flag this version knows, oldest first.
pub const FEATURE_FLAGS: &[FeatureFlag] = &[
    FeatureFlag {
        name: MAINTENANCE_MODE_STATUS,
        desc: "Maintenance mode recorded in the metadata: other nodes place no new queue leader on a drained node",
    },
    FeatureFlag {
        name: FORWARDED_METADATA_INDEX,
        desc: "A forwarded publish or call waits on its queue's node until that node knows the queues the forwarding node knew",
    },
    FeatureFlag {
        name: EXCLUSIVE_QUEUE_NAMES,
        desc: "Client-named exclusive queues are known to every node: reached by name from any node, their names refused elsewhere",
    },
    FeatureFlag {
        name: EXCLUSIVE_QUEUE_CLAIMS,
        desc: "Of two declares of one exclusive queue name on two nodes at the same moment, the first wins and the other is refused",
    },
    FeatureFlag {
        name: FORWARDED_PUBLISH_DEDUPE,
        desc: "A publish forwarded to a quorum queue whose leader died or was deposed on its way is sent again, and stored once",
    },
    FeatureFlag {
        name: METADATA_READ_INDEX,
        desc: "A publish to, or lookup of, a queue or exchange declared through another node a moment before finds it: the node catches up with the metadata leader first",
    },
    FeatureFlag {
        name: METADATA_APPLIED_EVERYWHERE,
        desc: "A metadata change (a binding, a user, a permission...) is answered once every running node applied it",
    },
    FeatureFlag {
        name: RUNTIME_CLUSTER_NAME,
        desc: "The cluster's name can be set at run time (rabbitmqctl set_cluster_name, PUT /api/cluster-name, a definitions file's cluster_name)",
    },
];

impl MetaCommand {
    /// The feature flag that must be enabled before this command may be
    /// logged; `None` for the commands every clustered version knows.
    ///
    /// No wildcard: a command added later must be given its flag here.
    pub fn feature_flag(&self) -> Option<&'static str> {
        use MetaCommand as C;
        match self {
            C::SetDrained { .. } => Some(MAINTENANCE_MODE_STATUS),
            C::SetClusterName { .. } => Some(RUNTIME_CLUSTER_NAME),
            C::ExclusiveQueue { claim: Some(_), .. } => Some(EXCLUSIVE_QUEUE_CLAIMS),
            C::ExclusiveQueue { claim: None, .. } => Some(EXCLUSIVE_QUEUE_NAMES),
            C::PutUser { .. }
            | C::DeleteUser { .. }
            | C::CreateVhost { .. }
            | C::AddVhost { .. }
            | C::ImportAccess { .. }
            | C::ImportLimits { .. }
            | C::DeleteVhost { .. }
            | C::SetPermission(_)
            | C::ClearPermission { .. }
            | C::SetTopicPermission(_)
            | C::ClearTopicPermission { .. }
            | C::SetPolicy { .. }
            | C::DeletePolicy { .. }
            | C::SetVhostLimit { .. }
            | C::ClearVhostLimit { .. }
            | C::ReplaceVhostLimits(_)
            | C::SetUserLimit { .. }
            | C::ClearUserLimit { .. }
            | C::DeclareExchange { .. }
            | C::DeleteExchange { .. }
            | C::DeclareQueue { .. }
            | C::DeleteQueue { .. }
            | C::SetListener { .. }
            | C::QueueLeader { .. }
            | C::QueueMember { .. }
            | C::Binding { .. }
            // Proposed only once every member supports the flag it
            // enables, so every member knows this command.
            | C::EnableFeatureFlag { .. } => None,
        }
    }
}

impl Broker {
    /// The flags the cluster enabled, by name (some may be unknown to this
    /// version, if it is older than the node that enabled them).
    pub fn enabled_feature_flags(&self) -> Vec<String> {
        self.feature_flags.read().iter().cloned().collect()
    }

    /// Whether the command(s) of flag `name` may be logged: enabled in the
    /// cluster. A single node logs nothing, so every flag it knows is
    /// usable.
    pub fn feature_flag_enabled(&self, name: &str) -> bool {
        if self.metadata_log().is_none() {
            return FEATURE_FLAGS.iter().any(|f| f.name == name);
        }
        self.feature_flags.read().contains(name)
    }

    /// Replaces the enabled flags (a snapshot's, or what a node persisted
    /// before a restart).
    pub fn set_enabled_feature_flags(&self, names: Vec<String>) {
        *self.feature_flags.write() = names.into_iter().collect::<BTreeSet<_>>();
    }

    /// Applies [`MetaCommand::EnableFeatureFlag`]: whether it was new.
    pub(crate) fn enable_feature_flag(&self, name: String) -> bool {
        if !FEATURE_FLAGS.iter().any(|f| f.name == name) {
            tracing::error!(
                "the cluster enabled feature flag '{name}', which this version of antre does not know: upgrade this node"
            );
        }
        self.feature_flags.write().insert(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{MetaOutcome, MetaSnapshot};

    #[test]
    fn an_enabled_flag_is_recorded_and_carried_by_snapshots() {
        let a = Broker::new();
        let enable = |name: &str| MetaCommand::EnableFeatureFlag { name: name.into() };
        assert_eq!(
            a.apply_meta(enable(MAINTENANCE_MODE_STATUS)).unwrap(),
            MetaOutcome::Changed(true)
        );
        assert_eq!(
            a.apply_meta(enable(MAINTENANCE_MODE_STATUS)).unwrap(),
            MetaOutcome::Changed(false)
        );
        // A newer version's flag is recorded all the same.
        a.apply_meta(enable("from_the_future")).unwrap();
        assert_eq!(
            a.enabled_feature_flags(),
            ["from_the_future", MAINTENANCE_MODE_STATUS]
        );
        let b = Broker::new();
        b.install_meta_snapshot(a.meta_snapshot()).unwrap();
        assert_eq!(b.enabled_feature_flags(), a.enabled_feature_flags());
        // A snapshot of a version without flags has none enabled.
        let mut old = serde_json::to_value(a.meta_snapshot()).unwrap();
        old.as_object_mut().unwrap().remove("feature_flags");
        let old: MetaSnapshot = serde_json::from_value(old).unwrap();
        b.install_meta_snapshot(old).unwrap();
        assert!(b.enabled_feature_flags().is_empty());
    }

    #[test]
    fn a_single_node_uses_every_flag_it_knows() {
        let b = Broker::new();
        assert!(b.feature_flag_enabled(MAINTENANCE_MODE_STATUS));
        assert!(!b.feature_flag_enabled("from_the_future"));
    }

    #[test]
    fn the_drain_record_needs_its_flag() {
        let c = MetaCommand::SetDrained {
            node: "n1".into(),
            drained: true,
        };
        assert_eq!(c.feature_flag(), Some(MAINTENANCE_MODE_STATUS));
        assert!(FEATURE_FLAGS
            .iter()
            .any(|f| f.name == MAINTENANCE_MODE_STATUS));
    }
}
