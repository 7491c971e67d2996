//! The seam between the broker core and a cluster's metadata log.
//!
//! On a single node a change to metadata (a user, a vhost, a permission, a
//! policy, a limit, an exchange, a binding, a queue definition) is applied
//! where it is asked for. In a cluster it is a [`MetaCommand`] proposed to
//! the metadata Raft group; once the group committed it, every node, the
//! proposer included, applies it in log order with [`Broker::apply_meta`],
//! which calls the same broker code a single node calls. The proposer
//! answers its client with the result of its own apply, so refusals (a 406
//! for an inequivalent redeclare, a 404 for a missing exchange) are what a
//! single node answers.
//!
//! The core stays free of networking: it only knows the [`MetadataLog`]
//! trait, which the server's cluster crate implements and hands the broker
//! with [`Broker::set_metadata_log`]. A broker without one is a single node.

use std::fmt;
use std::sync::Arc;

use antre_amqp::FieldTable;
use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::access::{
    AccessError, AccessSnapshot, Credentials, Permission, TopicPermission, VhostLimits,
};
use crate::broker::Broker;
use crate::definitions::{json_to_table, PolicyDef, VhostDefinitions};
use crate::error::BrokerError;
use crate::exchange::Destination;
use crate::policy::{Policy, PolicyKind};
use crate::queue::QueueCounts;
use crate::vhost::{ExchangeDeclaration, QueueDeclaration, Vhost};

/// A field table carried in the log in its AMQP wire form, so that the
/// types of its values (a long is not a short) survive replication exactly
/// and equivalence checks answer as on the proposer.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct WireTable(pub FieldTable);

impl Serialize for WireTable {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut out = BytesMut::new();
        self.0.encode(&mut out);
        // The table's own u32 length prefix is redundant with serde's.
        s.serialize_bytes(out.get(4..).unwrap_or_default())
    }
}

impl<'de> Deserialize<'de> for WireTable {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw: Vec<u8> = serde_bytes_vec(d)?;
        FieldTable::decode(Bytes::from(raw), 0)
            .map(WireTable)
            .map_err(serde::de::Error::custom)
    }
}

/// Reads bytes whether the format gives them as bytes or as a sequence.
fn serde_bytes_vec<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = Vec<u8>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("bytes")
        }
        fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }
        fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Vec<u8>, A::Error> {
            let mut out = Vec::new();
            while let Some(b) = a.next_element::<u8>()? {
                out.push(b);
            }
            Ok(out)
        }
    }
    d.deserialize_bytes(V)
}

/// What a declare of a client-named exclusive queue expects of its name
/// ([`MetaCommand::ExclusiveQueue`]): applied only if no other node holds
/// it, or only `from`. So of two declares of a free name on two nodes at
/// the same moment, the first in the log gets the name and the other is
/// refused (405) on every node alike, as RabbitMQ refuses one of the two;
/// without a claim the later one took the name, and the first client's
/// queue was deleted under it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExclusiveClaim {
    /// The node the declaring node saw hold the name while that node was
    /// down (a node that is down lost its exclusive queues, so its names
    /// are free), if any.
    pub from: Option<String>,
}

/// One change to cluster-wide metadata, as the metadata log carries it.
/// Passwords travel only as salted hashes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum MetaCommand {
    /// Creates or replaces a user (`PUT /api/users/{name}`).
    PutUser {
        /// Login name.
        name: String,
        /// Salted hash (empty: no password login).
        password_hash: String,
        /// RabbitMQ's name of the hashing algorithm.
        algorithm: String,
        /// Tags.
        tags: Vec<String>,
    },
    /// Deletes a user with their permissions.
    DeleteUser {
        /// Login name.
        name: String,
    },
    /// Creates a vhost, granting its creator full permissions.
    CreateVhost {
        /// The vhost.
        name: String,
        /// The user who asked.
        creator: String,
    },
    /// Creates a vhost without granting anyone anything (a definitions
    /// import).
    AddVhost {
        /// The vhost.
        name: String,
    },
    /// Adds users and permissions in one change, all or nothing (a
    /// definitions import; see [`crate::AccessControl::import`]).
    ImportAccess {
        /// Users, with their password hashes.
        users: Vec<crate::access::UserRecord>,
        /// Permissions.
        permissions: Vec<Permission>,
        /// Topic permissions.
        topic_permissions: Vec<TopicPermission>,
    },
    /// Sets vhost and user limits in one change (a definitions import; see
    /// [`Broker::import_limits`]).
    ImportLimits {
        /// Vhost limits (each replaces the vhost's).
        vhosts: Vec<VhostLimits>,
        /// User limits (added to the user's).
        users: Vec<crate::access::UserLimits>,
    },
    /// Deletes a vhost and everything in it.
    DeleteVhost {
        /// The vhost.
        name: String,
    },
    /// Sets a user's permission in a vhost.
    SetPermission(Permission),
    /// Clears a user's permission in a vhost.
    ClearPermission {
        /// The user.
        user: String,
        /// The vhost.
        vhost: String,
    },
    /// Sets a topic permission.
    SetTopicPermission(TopicPermission),
    /// Clears topic permissions (of one exchange, or all of the vhost's).
    ClearTopicPermission {
        /// The user.
        user: String,
        /// The vhost.
        vhost: String,
        /// The exchange, or every one.
        exchange: Option<String>,
    },
    /// Sets a policy (`operator`: an operator policy).
    SetPolicy {
        /// Operator policy rather than policy.
        operator: bool,
        /// The policy, as definitions hold it.
        def: PolicyDef,
    },
    /// Clears a policy.
    DeletePolicy {
        /// Operator policy rather than policy.
        operator: bool,
        /// The vhost.
        vhost: String,
        /// The policy's name.
        name: String,
    },
    /// Sets one vhost limit.
    SetVhostLimit {
        /// The vhost.
        vhost: String,
        /// `max-connections`, `max-queues`.
        name: String,
        /// The value (negative: no limit).
        value: i64,
    },
    /// Clears one vhost limit.
    ClearVhostLimit {
        /// The vhost.
        vhost: String,
        /// The limit.
        name: String,
    },
    /// Replaces a vhost's limits (`PUT /api/parameters/vhost-limits/...`).
    ReplaceVhostLimits(VhostLimits),
    /// Sets one user limit.
    SetUserLimit {
        /// The user.
        user: String,
        /// `max-connections`, `max-channels`.
        name: String,
        /// The value.
        value: i64,
    },
    /// Clears one user limit.
    ClearUserLimit {
        /// The user.
        user: String,
        /// The limit.
        name: String,
    },
    /// exchange.declare (not passive).
    DeclareExchange {
        /// The vhost.
        vhost: String,
        /// The exchange.
        name: String,
        /// Its type.
        kind: String,
        /// Durable.
        durable: bool,
        /// Auto-delete.
        auto_delete: bool,
        /// Internal.
        internal: bool,
        /// Arguments.
        arguments: WireTable,
    },
    /// exchange.delete.
    DeleteExchange {
        /// The vhost.
        vhost: String,
        /// The exchange.
        name: String,
        /// Only if it has no bindings.
        if_unused: bool,
    },
    /// queue.declare (not passive, not exclusive) of a named queue.
    DeclareQueue {
        /// The vhost.
        vhost: String,
        /// The queue (the proposer generated a server-named queue's name).
        name: String,
        /// Durable.
        durable: bool,
        /// Auto-delete.
        auto_delete: bool,
        /// Arguments.
        arguments: WireTable,
        /// The node where a new queue's engine (its messages) will live:
        /// the proposer's.
        owner: String,
    },
    /// queue.delete.
    DeleteQueue {
        /// The vhost.
        vhost: String,
        /// The queue.
        name: String,
        /// Only if it has no consumers.
        if_unused: bool,
        /// Only if it has no ready messages.
        if_empty: bool,
    },
    /// Records where a node listens for a protocol (`stream`), or that
    /// it no longer does (`address` None). Each node records its own as
    /// it starts.
    SetListener {
        /// The node's name.
        node: String,
        /// The protocol (`stream`).
        protocol: String,
        /// `HOST:PORT` as clients reach it.
        address: Option<String>,
    },
    /// Records that a node is drained (maintenance mode) or no longer is.
    /// Each node records its own state: when it is drained or revived,
    /// and when it starts (a restart ends maintenance mode).
    SetDrained {
        /// The node's name.
        node: String,
        /// Whether it is drained.
        drained: bool,
    },
    /// Names the cluster (RabbitMQ's global parameter `cluster_name`,
    /// `rabbitmqctl set_cluster_name`): what the management API, the
    /// overview and the metrics call it from then on.
    SetClusterName {
        /// The name.
        name: String,
    },
    /// Enables a feature flag (see [`crate::feature_flags`]): from this
    /// entry on, the commands that need it may be logged. Proposed by the
    /// metadata leader once every member supports the flag.
    EnableFeatureFlag {
        /// The flag's name.
        name: String,
    },
    /// A quorum queue's group elected a leader: where its engine (its
    /// consumers, its publishes) lives now. Proposed by the new leader;
    /// nodes that are not members of the group learn it from here (members
    /// follow their own replica).
    QueueLeader {
        /// The vhost.
        vhost: String,
        /// The queue.
        name: String,
        /// The leader's node name.
        leader: String,
        /// The group's Raft term it leads in: an older term's leader
        /// recorded later changes nothing (absent in entries of older
        /// versions: 0).
        #[serde(default)]
        term: u64,
    },
    /// Adds a member to a quorum queue's group, or (with `add` false)
    /// removes one: the replicated member list every node knows (`rabbitmq-queues
    /// add_member` / `delete_member`). The group's own Raft membership is
    /// changed by its leader around it (see `antre_cluster::queue_group::members`):
    /// a new member is recorded first (so it starts its replica and can be
    /// sent the log), a removed one last (so it serves until the group no
    /// longer counts it).
    QueueMember {
        /// The vhost.
        vhost: String,
        /// The queue.
        name: String,
        /// The member's node name.
        node: String,
        /// Add (else remove).
        add: bool,
    },
    /// A client-named exclusive queue: `node` holds it (`held`), or no
    /// longer does. Exclusive queues are node-local, but their names are
    /// the cluster's, as in RabbitMQ: every node knows which node holds
    /// one, so a publish by name reaches it from any node and a second
    /// declare of the name elsewhere is refused (405). Server-named ones
    /// need none of it: their names name their node
    /// ([`crate::vhost::exclusive_name`]).
    ExclusiveQueue {
        /// The vhost.
        vhost: String,
        /// The queue.
        name: String,
        /// The node whose connection declared it.
        node: String,
        /// Declared (else gone: applied only if `node` still holds it, so
        /// a late release never undoes a later declare).
        held: bool,
        /// A declare's claim on the name: the first declare in the log
        /// wins (see [`ExclusiveClaim`]). None for the records that take
        /// the name whatever held it (from versions without the feature
        /// flag `exclusive_queue_first_declare_wins`, and a node recording
        /// again a queue it still has).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        claim: Option<ExclusiveClaim>,
    },
    /// queue.bind / exchange.bind (`unbind`: the unbind of each).
    Binding {
        /// Unbind rather than bind.
        unbind: bool,
        /// The vhost.
        vhost: String,
        /// The source exchange.
        source: String,
        /// The destination's name.
        destination: String,
        /// Whether the destination is an exchange (else a queue).
        to_exchange: bool,
        /// The binding key.
        routing_key: String,
        /// Arguments.
        arguments: WireTable,
        /// The node whose exclusive queue the destination is (exclusive
        /// queues are node-local): the other nodes' bindings route to it
        /// there. None for a shared queue or an exchange (and from older
        /// versions, which do not send it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        node: Option<String>,
    },
}

impl MetaCommand {
    /// A bind (or, with `unbind`, an unbind) of `destination` to `source`.
    pub fn binding(
        unbind: bool,
        vhost: &str,
        source: String,
        destination: Destination,
        routing_key: String,
        arguments: FieldTable,
    ) -> MetaCommand {
        let (destination, to_exchange) = match destination {
            Destination::Queue(q) => (q, false),
            Destination::Exchange(e) => (e, true),
        };
        MetaCommand::Binding {
            unbind,
            vhost: vhost.to_owned(),
            source,
            destination,
            to_exchange,
            routing_key,
            arguments: WireTable(arguments),
            node: None,
        }
    }

    /// This command naming `node` as where its destination, an exclusive
    /// queue, lives (a binding's; other commands are left as they are).
    pub fn on_node(mut self, at: &str) -> MetaCommand {
        if let MetaCommand::Binding { node, .. } = &mut self {
            *node = Some(at.to_owned());
        }
        self
    }

    /// A user change whose cleartext password, if any, is hashed here, on
    /// the proposer, so the log never holds it.
    pub fn put_user(name: &str, credentials: Credentials, tags: Vec<String>) -> MetaCommand {
        let (password_hash, algorithm) = match credentials {
            Credentials::Password(p) => (
                crate::access::password::hash(&p),
                crate::access::password::SHA256.to_owned(),
            ),
            Credentials::Hash { hash, algorithm } => (hash, algorithm),
            Credentials::None => (String::new(), crate::access::password::SHA256.to_owned()),
        };
        MetaCommand::PutUser {
            name: name.to_owned(),
            password_hash,
            algorithm,
            tags,
        }
    }

    /// A short description for logs.
    pub fn describe(&self) -> String {
        match self {
            MetaCommand::PutUser { name, .. } => format!("put user {name}"),
            MetaCommand::DeleteUser { name } => format!("delete user {name}"),
            MetaCommand::CreateVhost { name, .. } => format!("create vhost {name}"),
            MetaCommand::DeleteVhost { name } => format!("delete vhost {name}"),
            MetaCommand::DeclareQueue { vhost, name, .. } => {
                format!("declare queue {name} in {vhost}")
            }
            MetaCommand::DeclareExchange { vhost, name, .. } => {
                format!("declare exchange {name} in {vhost}")
            }
            MetaCommand::QueueMember {
                vhost,
                name,
                node,
                add,
            } => format!(
                "{} member {node} of queue {name} in {vhost}",
                if *add { "add" } else { "remove" }
            ),
            other => format!("{other:?}").chars().take(120).collect(),
        }
    }
}

/// What applying a [`MetaCommand`] gave, on the node that applied it.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaOutcome {
    /// Done, nothing to report.
    Done,
    /// Whether something was created (a user, a vhost, a permission, a
    /// policy) or existed (a deletion).
    Changed(bool),
    /// A declared queue: its name and counts for queue.declare-ok.
    Queue {
        /// The queue.
        name: String,
        /// Its counts here.
        counts: QueueCounts,
    },
    /// How many messages a deleted queue held.
    Messages(u32),
}

impl MetaOutcome {
    /// The flag of [`MetaOutcome::Changed`] (false for the others).
    pub fn changed(&self) -> bool {
        matches!(self, MetaOutcome::Changed(true))
    }
}

/// Why a metadata change failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MetaError {
    /// The broker refused it (the same refusal a single node gives).
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The access store refused it.
    #[error(transparent)]
    Access(#[from] AccessError),
    /// The cluster could not commit it in time (no quorum reachable, no
    /// leader): nothing of it was applied by this node.
    #[error("{0}")]
    Unavailable(String),
}

impl From<MetaError> for BrokerError {
    /// For AMQP: an unavailable cluster is RabbitMQ's 541 INTERNAL_ERROR,
    /// what RabbitMQ 3.10 answers when a quorum queue's Raft cluster cannot
    /// be started in time (`rabbit_quorum_queue:declare_queue_error/4`).
    fn from(e: MetaError) -> BrokerError {
        match e {
            MetaError::Broker(e) => e,
            MetaError::Access(e) => BrokerError::Internal(e.to_string()),
            MetaError::Unavailable(text) => BrokerError::Internal(text),
        }
    }
}

/// A cluster's replicated metadata log, as the broker sees it.
pub trait MetadataLog: Send + Sync + fmt::Debug {
    /// This node's name in the cluster.
    fn node_name(&self) -> &str;

    /// The cluster's running nodes (its voters), where a new queue may be
    /// placed.
    fn nodes(&self) -> Vec<String> {
        vec![self.node_name().to_owned()]
    }

    /// Proposes a change and waits (bounded) until this node applied it,
    /// returning this node's result. May block the calling thread: it is
    /// called from the synchronous channel handlers, so implementations
    /// must cope with being called on an async runtime's worker.
    fn propose(&self, command: MetaCommand) -> Result<MetaOutcome, MetaError>;

    /// Whether the cluster may log `command` now: the feature flag it
    /// needs, if any, is enabled ([`MetaCommand::feature_flag`]).
    fn may_log(&self, command: &MetaCommand) -> bool {
        let _ = command;
        true
    }

    /// Waits (bounded) until this node applied what the metadata leader
    /// had applied when this was called: a publish or a lookup that found
    /// no queue or exchange by its name tries again if this returns true,
    /// since one declared through another node a moment before may not
    /// have been applied here yet. May block the calling thread, as
    /// [`Self::propose`] does.
    fn catch_up(&self) -> bool {
        false
    }

    /// Proposes a change without waiting for it (a queue's owner removing
    /// an auto-delete or expired queue, from a timer or a channel that must
    /// not block on the cluster); a failure is logged.
    fn propose_later(&self, command: MetaCommand);

    /// The queue or stream `created` of `vhost` was just created, and no
    /// client can reach it yet. A cluster gives a member of a quorum
    /// queue's or stream's group its replication here: otherwise the queue
    /// would be, until its replica started in the background, a plain
    /// local queue that confirmed publishes its replica would then drop.
    fn created(&self, vhost: &str, created: Created<'_>) {
        let _ = (vhost, created);
    }
}

/// A queue or stream just created by a metadata change (see
/// [`MetadataLog::created`]).
#[derive(Clone, Copy)]
pub enum Created<'a> {
    /// A queue.
    Queue(&'a Arc<crate::queue::Queue>),
    /// A stream.
    Stream(&'a Arc<crate::stream::Stream>),
}

/// The whole replicated metadata, as a cluster's snapshot carries it: what
/// a node that missed too much of the log installs instead.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MetaSnapshot {
    /// Vhost names.
    pub vhosts: Vec<String>,
    /// Users, permissions, limits.
    pub access: AccessSnapshot,
    /// Each vhost's durable exchanges, queues, bindings and policies.
    pub definitions: Vec<VhostDefinitions>,
    /// Queues and their owning node: (vhost, queue, node).
    pub owners: Vec<(String, String, String)>,
    /// Quorum queues' groups (filled in by the cluster's state machine,
    /// which decides them).
    #[serde(default)]
    pub quorum: Vec<QuorumDef>,
    /// Nodes' listeners of other protocols: (node, protocol, address).
    #[serde(default)]
    pub listeners: Vec<(String, String, String)>,
    /// The nodes recorded as drained.
    #[serde(default)]
    pub drained: Vec<String>,
    /// The feature flags the cluster enabled.
    #[serde(default)]
    pub feature_flags: Vec<String>,
    /// What the metadata declared that brokers keep in memory only
    /// (transient exchanges and queues, their bindings, exclusive queues'
    /// bindings), filled in by the cluster's state machine, which keeps it:
    /// the definitions above are the durable ones.
    #[serde(default)]
    pub transient: Vec<MetaCommand>,
}

/// A quorum queue's Raft group, as every node of a cluster knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuorumDef {
    /// The vhost.
    pub vhost: String,
    /// The queue.
    pub name: String,
    /// Its members' node names, the declaring node first.
    pub members: Vec<String>,
    /// The members added after the declare (`add_member`, `grow`): they
    /// start without bootstrapping the group and wait for its leader to
    /// send them the log. The others bootstrapped it together.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub joined: Vec<String>,
    /// The group's id (stable for this declaration of the queue).
    pub group: String,
}

/// Whether adding (`add`) or removing `node` to or from a quorum queue
/// whose members are `members` makes sense: the refusals RabbitMQ's
/// `add_member` and `delete_member` give, with antre's wording. Used by the
/// apply and by the cluster before it proposes the change.
pub fn check_member_change(
    members: &[String],
    queue: &str,
    vhost: &str,
    node: &str,
    add: bool,
) -> Result<(), BrokerError> {
    let is_member = members.iter().any(|m| m == node);
    if add && is_member {
        return Err(BrokerError::PreconditionFailed(format!(
            "node '{node}' is already a member of queue '{queue}' in vhost '{vhost}'"
        )));
    }
    if !add && !is_member {
        return Err(BrokerError::PreconditionFailed(format!(
            "node '{node}' is not a member of queue '{queue}' in vhost '{vhost}'"
        )));
    }
    if !add && members.len() == 1 {
        return Err(BrokerError::PreconditionFailed(format!(
            "node '{node}' is the last member of queue '{queue}' in vhost '{vhost}': delete the queue instead"
        )));
    }
    Ok(())
}

/// A change handed to the wrong half of [`Broker::apply_meta`] (a bug).
fn misrouted(command: &MetaCommand) -> MetaError {
    BrokerError::Internal(format!("misrouted metadata change {}", command.describe())).into()
}

fn no_vhost(name: &str) -> BrokerError {
    BrokerError::NotFound(format!("no vhost '{name}'"))
}

fn kind_of(operator: bool) -> PolicyKind {
    if operator {
        PolicyKind::Operator
    } else {
        PolicyKind::Policy
    }
}

impl Broker {
    /// Makes this broker a cluster node whose metadata changes go through
    /// `log`. Returns false if it already had one.
    pub fn set_metadata_log(&self, log: Arc<dyn MetadataLog>) -> bool {
        if self.metadata.set(Arc::clone(&log)).is_err() {
            return false;
        }
        for v in self.vhosts() {
            v.set_metadata_log(Arc::clone(&log));
        }
        true
    }

    /// The cluster's metadata log, if this broker is a cluster node.
    pub fn metadata_log(&self) -> Option<&Arc<dyn MetadataLog>> {
        self.metadata.get()
    }

    /// This node's name, in a cluster.
    pub fn node_name(&self) -> Option<&str> {
        self.metadata.get().map(|l| l.node_name())
    }

    /// Makes a metadata change: applied at once on a single node, proposed
    /// to the metadata log in a cluster (see the module docs).
    pub fn change_meta(&self, command: MetaCommand) -> Result<MetaOutcome, MetaError> {
        match self.metadata.get() {
            Some(log) => log.propose(command),
            None => self.apply_meta(command),
        }
    }

    fn vhost_or_404(&self, name: &str) -> Result<Arc<Vhost>, BrokerError> {
        self.vhost(name).ok_or_else(|| no_vhost(name))
    }

    /// Applies one committed change with the broker's own code. Every node
    /// of a cluster calls this for every entry, in log order, so it must be
    /// deterministic: its result depends only on the metadata, which is the
    /// same on every node at the same point of the log.
    pub fn apply_meta(&self, command: MetaCommand) -> Result<MetaOutcome, MetaError> {
        use MetaCommand as C;
        let access = matches!(
            command,
            C::PutUser { .. }
                | C::DeleteUser { .. }
                | C::CreateVhost { .. }
                | C::AddVhost { .. }
                | C::ImportAccess { .. }
                | C::DeleteVhost { .. }
                | C::SetPermission(_)
                | C::ClearPermission { .. }
                | C::SetTopicPermission(_)
                | C::ClearTopicPermission { .. }
                | C::SetClusterName { .. }
        );
        if access {
            self.apply_access(command)
        } else {
            self.apply_topology(command)
        }
    }

    /// [`Broker::apply_meta`] for users, vhosts and permissions.
    fn apply_access(&self, command: MetaCommand) -> Result<MetaOutcome, MetaError> {
        use MetaCommand as C;
        let access = self.access();
        Ok(match command {
            C::PutUser {
                name,
                password_hash,
                algorithm,
                tags,
            } => {
                let credentials = if password_hash.is_empty() {
                    Credentials::None
                } else {
                    Credentials::Hash {
                        hash: password_hash,
                        algorithm,
                    }
                };
                MetaOutcome::Changed(access.put_user(&name, credentials, tags)?)
            }
            C::DeleteUser { name } => MetaOutcome::Changed(self.delete_user(&name)?),
            C::CreateVhost { name, creator } => {
                MetaOutcome::Changed(self.create_vhost(&name, &creator)?)
            }
            C::AddVhost { name } => {
                let new = self.vhost(&name).is_none();
                self.add_vhost(&name)?;
                MetaOutcome::Changed(new)
            }
            C::ImportAccess {
                users,
                permissions,
                topic_permissions,
            } => {
                access.import(users, permissions, topic_permissions)?;
                MetaOutcome::Done
            }
            C::DeleteVhost { name } => MetaOutcome::Changed(self.delete_vhost(&name)?),
            C::SetPermission(p) => MetaOutcome::Changed(self.set_permission(p)?),
            C::ClearPermission { user, vhost } => {
                MetaOutcome::Changed(access.clear_permission(&user, &vhost)?)
            }
            C::SetTopicPermission(t) => MetaOutcome::Changed(self.set_topic_permission(t)?),
            C::ClearTopicPermission {
                user,
                vhost,
                exchange,
            } => MetaOutcome::Changed(access.clear_topic_permission(
                &user,
                &vhost,
                exchange.as_deref(),
            )?),
            C::SetClusterName { name } => MetaOutcome::Changed(access.set_cluster_name(&name)?),
            other => return Err(misrouted(&other)),
        })
    }

    /// [`Broker::apply_meta`] for policies, limits, exchanges, queues and
    /// bindings.
    fn apply_topology(&self, command: MetaCommand) -> Result<MetaOutcome, MetaError> {
        use MetaCommand as C;
        let access = self.access();
        Ok(match command {
            C::SetPolicy { operator, def } => {
                let vhost = self.vhost_or_404(&def.vhost)?;
                let policy = Policy::from_def(kind_of(operator), &def)
                    .map_err(|e| BrokerError::PreconditionFailed(e.to_string()))?;
                MetaOutcome::Changed(vhost.set_policy(policy)?)
            }
            C::DeletePolicy {
                operator,
                vhost,
                name,
            } => {
                let vhost = self.vhost_or_404(&vhost)?;
                MetaOutcome::Changed(vhost.delete_policy(kind_of(operator), &name)?)
            }
            C::SetVhostLimit { vhost, name, value } => {
                self.set_vhost_limit(&vhost, &name, value)?;
                MetaOutcome::Done
            }
            C::ClearVhostLimit { vhost, name } => {
                self.clear_vhost_limit(&vhost, &name)?;
                MetaOutcome::Done
            }
            C::ReplaceVhostLimits(limits) => {
                self.import_limits(vec![limits], Vec::new())?;
                MetaOutcome::Done
            }
            C::ImportLimits { vhosts, users } => {
                self.import_limits(vhosts, users)?;
                MetaOutcome::Done
            }
            C::SetUserLimit { user, name, value } => {
                access.set_user_limit(&user, &name, value)?;
                MetaOutcome::Done
            }
            C::ClearUserLimit { user, name } => {
                access.clear_user_limit(&user, &name)?;
                MetaOutcome::Done
            }
            C::DeclareExchange {
                vhost,
                name,
                kind,
                durable,
                auto_delete,
                internal,
                arguments,
            } => {
                let declaration = ExchangeDeclaration {
                    name,
                    kind,
                    durable,
                    auto_delete,
                    internal,
                    arguments: arguments.0,
                };
                self.vhost_or_404(&vhost)?
                    .declare_exchange(declaration, false)?;
                MetaOutcome::Done
            }
            C::DeleteExchange {
                vhost,
                name,
                if_unused,
            } => {
                self.vhost_or_404(&vhost)?
                    .delete_exchange(&name, if_unused)?;
                MetaOutcome::Done
            }
            C::DeclareQueue {
                vhost,
                name,
                durable,
                auto_delete,
                arguments,
                owner,
            } => self.apply_declare_queue(&vhost, name, durable, auto_delete, arguments, &owner)?,
            C::QueueLeader {
                vhost,
                name,
                leader,
                term,
            } => {
                let v = self.vhost_or_404(&vhost)?;
                let me = self.node_name().unwrap_or_default();
                let member = v
                    .quorum_info(&name)
                    .is_some_and(|i| i.members.iter().any(|m| m == me));
                v.set_quorum_leader(&name, &leader, term);
                let current = v.quorum_info(&name).and_then(|i| i.leader);
                if !member && v.has_queue(&name) && current.as_deref() == Some(leader.as_str()) {
                    v.set_remote_owner(&name, (leader != me).then_some(leader.as_str()));
                }
                MetaOutcome::Done
            }
            C::SetListener {
                node,
                protocol,
                address,
            } => {
                let mut listeners = self.listeners.write();
                let key = (node, protocol);
                MetaOutcome::Changed(match address {
                    Some(a) => listeners.insert(key, a.clone()).as_ref() != Some(&a),
                    None => listeners.remove(&key).is_some(),
                })
            }
            C::SetDrained { node, drained } => {
                let mut marks = self.drained.write();
                MetaOutcome::Changed(if drained {
                    marks.insert(node)
                } else {
                    marks.remove(&node)
                })
            }
            C::EnableFeatureFlag { name } => MetaOutcome::Changed(self.enable_feature_flag(name)),
            C::QueueMember {
                vhost,
                name,
                node,
                add,
            } => {
                self.apply_queue_member(&vhost, &name, &node, add)?;
                MetaOutcome::Done
            }
            C::ExclusiveQueue {
                vhost,
                name,
                node,
                held,
                claim,
            } => {
                let v = self.vhost_or_404(&vhost)?;
                if held {
                    v.hold_exclusive(&name, &node, claim.as_ref())?;
                } else {
                    v.release_exclusive(&name, &node);
                }
                MetaOutcome::Done
            }
            C::DeleteQueue {
                vhost,
                name,
                if_unused,
                if_empty,
            } => {
                let v = self.vhost_or_404(&vhost)?;
                let n = v.delete_queue(&name, if_unused, if_empty, 0)?;
                v.drop_bindings_elsewhere(&name);
                if !v.has_queue(&name) {
                    v.set_remote_owner(&name, None);
                    v.set_quorum_info(&name, None);
                }
                MetaOutcome::Messages(n)
            }
            C::Binding {
                unbind,
                vhost,
                source,
                destination,
                to_exchange,
                routing_key,
                arguments,
                node,
            } => {
                let v = self.vhost_or_404(&vhost)?;
                if let (Some(node), false) = (&node, to_exchange) {
                    v.note_exclusive_of(&destination, node);
                }
                let destination = if to_exchange {
                    Destination::Exchange(destination)
                } else {
                    Destination::Queue(destination)
                };
                // Any connection: a binding of an exclusive queue comes
                // from its own connection (checked where it was proposed).
                let conn = crate::vhost::ANY_CONNECTION;
                if unbind {
                    v.unbind(&source, destination, &routing_key, &arguments.0, conn)?;
                } else {
                    v.bind(&source, destination, &routing_key, arguments.0, conn)?;
                }
                MetaOutcome::Done
            }
            other => return Err(misrouted(&other)),
        })
    }

    /// A replicated queue.declare: the queue exists on every node, but its
    /// engine (messages, consumers) only on its owner; the others record
    /// the owner so they refuse to keep a second copy.
    fn apply_declare_queue(
        &self,
        vhost: &str,
        name: String,
        durable: bool,
        auto_delete: bool,
        arguments: WireTable,
        owner: &str,
    ) -> Result<MetaOutcome, MetaError> {
        let v = self.vhost_or_404(vhost)?;
        v.evict_exclusive(&name);
        v.forget_exclusive(&name);
        let new = !v.has_queue(&name);
        let declaration = QueueDeclaration {
            name: name.clone(),
            durable,
            exclusive: false,
            auto_delete,
            arguments: arguments.0,
        };
        let (q, counts) = v.declare_queue_as(name, declaration, 0)?;
        if new {
            let mine = self.node_name().is_none_or(|me| me == owner);
            v.set_remote_owner(q.name(), (!mine).then_some(owner));
        }
        Ok(MetaOutcome::Queue {
            name: q.name().to_owned(),
            counts,
        })
    }

    /// A replicated change of a quorum queue's member list: checks it as
    /// `rabbitmq-queues add_member`/`delete_member` do (the queue exists
    /// and is a quorum queue; the node is not already a member / is one;
    /// the last member stays) and records the new list. On a node that is
    /// no longer a member, the queue lives where its leader is.
    fn apply_queue_member(
        &self,
        vhost: &str,
        name: &str,
        node: &str,
        add: bool,
    ) -> Result<(), BrokerError> {
        let v = self.vhost_or_404(vhost)?;
        if !v.has_queue(name) {
            return Err(BrokerError::NotFound(format!(
                "no queue '{name}' in vhost '{vhost}'"
            )));
        }
        let Some(mut info) = v.quorum_info(name) else {
            return Err(BrokerError::PreconditionFailed(format!(
                "queue '{name}' in vhost '{vhost}' is not a quorum queue"
            )));
        };
        check_member_change(&info.members, name, vhost, node, add)?;
        if add {
            info.members.push(node.to_owned());
        } else {
            info.members.retain(|m| m != node);
        }
        let me = self.node_name().unwrap_or_default();
        let member = info.members.iter().any(|m| m == me);
        if !member {
            // Not (or no longer) a member: publishes and consumers go to
            // the leader. A leader recorded that is no member any more
            // (this node, or the one just removed) is stale: a remaining
            // member until the new leader announces itself.
            let leader = match &info.leader {
                Some(l) if l != me && info.members.contains(l) => Some(l.clone()),
                _ => info.members.first().cloned(),
            };
            v.set_remote_owner(name, leader.as_deref());
            if let Some(l) = leader {
                info.leader = Some(l);
            }
        }
        v.set_quorum_info(name, Some(info));
        Ok(())
    }

    /// The whole replicated metadata, for a cluster snapshot.
    pub fn meta_snapshot(&self) -> MetaSnapshot {
        let mut vhosts = self.vhosts();
        vhosts.sort_by(|a, b| a.name.cmp(&b.name));
        let me = self.node_name().unwrap_or_default().to_owned();
        let mut owners = Vec::new();
        for v in &vhosts {
            let remote = v.remote_owners();
            for q in v.queues() {
                if q.options.exclusive_owner.is_some() {
                    continue;
                }
                let node = remote
                    .iter()
                    .find(|(n, _)| *n == q.name)
                    .map_or_else(|| me.clone(), |(_, node)| node.clone());
                owners.push((v.name.clone(), q.name.clone(), node));
            }
        }
        MetaSnapshot {
            vhosts: vhosts.iter().map(|v| v.name.clone()).collect(),
            access: self.access().snapshot(),
            definitions: vhosts.iter().map(|v| v.definitions()).collect(),
            owners,
            quorum: Vec::new(),
            listeners: self.listeners(),
            drained: self.drained_nodes(),
            feature_flags: self.enabled_feature_flags(),
            transient: Vec::new(),
        }
    }

    /// Replaces the replicated metadata with a snapshot's: vhosts, users
    /// and the rest that the snapshot lacks are removed, what it has is
    /// declared (idempotently) and owners are recorded.
    pub fn install_meta_snapshot(&self, snapshot: MetaSnapshot) -> Result<(), MetaError> {
        for v in self.vhosts() {
            if !snapshot.vhosts.contains(&v.name) {
                self.delete_vhost(&v.name)?;
            }
        }
        for name in &snapshot.vhosts {
            self.add_vhost(name)?;
        }
        self.access().replace_all(snapshot.access.clone())?;
        for v in self.vhosts() {
            self.apply_vhost_limits_of(&v);
        }
        // Owners first: a queue another node owns must not be visible here
        // as this node's own, even for a moment, or a publish through this
        // node would be confirmed into its idle copy. Only the snapshot's
        // queues have owners, and only queues it lacks are deleted below.
        let me = self.node_name().unwrap_or_default();
        for (vhost, queue, node) in &snapshot.owners {
            if let Some(v) = self.vhost(vhost) {
                v.set_remote_owner(queue, (node != me).then_some(node.as_str()));
            }
        }
        for defs in &snapshot.definitions {
            let Some(v) = self.vhost(&defs.name) else {
                continue;
            };
            install_vhost_definitions(&v, defs)?;
        }
        self.set_listeners(snapshot.listeners);
        self.set_drained_nodes(snapshot.drained);
        self.set_enabled_feature_flags(snapshot.feature_flags);
        Ok(())
    }

    /// The nodes recorded as drained, by name.
    pub fn drained_nodes(&self) -> Vec<String> {
        self.drained.read().iter().cloned().collect()
    }

    /// Whether `node` is recorded as drained.
    pub fn node_drained(&self, node: &str) -> bool {
        self.drained.read().contains(node)
    }

    /// Replaces the drained nodes (a snapshot's, or what a node persisted
    /// before a restart).
    pub fn set_drained_nodes(&self, nodes: Vec<String>) {
        *self.drained.write() = nodes.into_iter().collect();
    }

    /// Every node's recorded listeners: (node, protocol, address).
    pub fn listeners(&self) -> Vec<(String, String, String)> {
        self.listeners
            .read()
            .iter()
            .map(|((node, protocol), a)| (node.clone(), protocol.clone(), a.clone()))
            .collect()
    }

    /// Replaces the recorded listeners (a snapshot's, or what a node
    /// persisted before a restart).
    pub fn set_listeners(&self, listeners: Vec<(String, String, String)>) {
        *self.listeners.write() = listeners
            .into_iter()
            .map(|(node, protocol, a)| ((node, protocol), a))
            .collect();
    }

    /// Where node `node` listens for `protocol`, as it recorded it.
    pub fn listener(&self, node: &str, protocol: &str) -> Option<String> {
        self.listeners
            .read()
            .get(&(node.to_owned(), protocol.to_owned()))
            .cloned()
    }
}

/// Brings one vhost's durable definitions to a snapshot's.
fn install_vhost_definitions(v: &Vhost, defs: &VhostDefinitions) -> Result<(), MetaError> {
    let current = v.definitions();
    for b in &current.bindings {
        if !defs.bindings.contains(b) {
            v.unbind(
                &b.source,
                destination_of(&b.destination_type, &b.destination),
                &b.routing_key,
                &json_to_table(&b.arguments),
                0,
            )?;
        }
    }
    for q in &current.queues {
        if !defs.queues.iter().any(|d| d.name == q.name) {
            v.delete_queue(&q.name, false, false, 0)?;
            v.set_remote_owner(&q.name, None);
        }
    }
    for e in &current.exchanges {
        if !defs.exchanges.iter().any(|d| d.name == e.name) {
            v.delete_exchange(&e.name, false)?;
        }
    }
    for (operator, list) in [
        (false, &current.policies),
        (true, &current.operator_policies),
    ] {
        let wanted = if operator {
            &defs.operator_policies
        } else {
            &defs.policies
        };
        for p in list {
            if !wanted.iter().any(|w| w.name == p.name) {
                v.delete_policy(kind_of(operator), &p.name)?;
            }
        }
    }
    for e in &defs.exchanges {
        let declaration = ExchangeDeclaration {
            name: e.name.clone(),
            kind: e.kind.clone(),
            durable: e.durable,
            auto_delete: e.auto_delete,
            internal: e.internal,
            arguments: json_to_table(&e.arguments),
        };
        v.declare_exchange(declaration, false)?;
    }
    for q in &defs.queues {
        v.evict_exclusive(&q.name);
        if v.has_queue(&q.name) {
            continue;
        }
        let declaration = QueueDeclaration {
            name: q.name.clone(),
            durable: q.durable,
            exclusive: false,
            auto_delete: q.auto_delete,
            arguments: json_to_table(&q.arguments),
        };
        v.declare_queue_as(q.name.clone(), declaration, 0)?;
    }
    for b in &defs.bindings {
        v.bind(
            &b.source,
            destination_of(&b.destination_type, &b.destination),
            &b.routing_key,
            json_to_table(&b.arguments),
            0,
        )?;
    }
    for (operator, list) in [(false, &defs.policies), (true, &defs.operator_policies)] {
        for def in list {
            let policy = Policy::from_def(kind_of(operator), def)
                .map_err(|e| BrokerError::Internal(e.to_string()))?;
            v.set_policy(policy)?;
        }
    }
    Ok(())
}

fn destination_of(kind: &str, name: &str) -> Destination {
    if kind == "exchange" {
        Destination::Exchange(name.to_owned())
    } else {
        Destination::Queue(name.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use antre_amqp::FieldValue;

    #[test]
    fn wire_tables_keep_their_value_types() {
        let mut t = FieldTable::new();
        t.insert("x-max-length", FieldValue::I16(7));
        t.insert("x-message-ttl", FieldValue::I64(60_000));
        t.insert("x-dead-letter-exchange", FieldValue::string("dlx"));
        let cmd = MetaCommand::DeclareQueue {
            vhost: "/".into(),
            name: "q".into(),
            durable: true,
            auto_delete: false,
            arguments: WireTable(t.clone()),
            owner: "n1".into(),
        };
        let json = serde_json::to_vec(&cmd).unwrap();
        let back: MetaCommand = serde_json::from_slice(&json).unwrap();
        assert_eq!(back, cmd);
    }

    #[test]
    fn a_queue_declared_for_another_node_is_remote_and_takes_no_messages() {
        let broker = Broker::new();
        let cmd = |owner: &str| MetaCommand::DeclareQueue {
            vhost: "/".into(),
            name: "q".into(),
            durable: true,
            auto_delete: false,
            arguments: WireTable::default(),
            owner: owner.into(),
        };
        // Without a metadata log the broker is a single node: it owns all.
        broker.apply_meta(cmd("n1")).unwrap();
        let v = broker.vhost("/").unwrap();
        assert_eq!(v.remote_owner("q"), None);
        v.set_remote_owner("q", Some("n1"));
        let err = v.check_local("q").unwrap_err();
        assert_eq!(err.reply_code(), 404);
        assert!(err.to_string().contains("'n1'"), "{err}");
        // A redeclare keeps the owner; a delete forgets it.
        broker.apply_meta(cmd("n2")).unwrap();
        assert_eq!(v.remote_owner("q").as_deref(), Some("n1"));
        broker
            .apply_meta(MetaCommand::DeleteQueue {
                vhost: "/".into(),
                name: "q".into(),
                if_unused: false,
                if_empty: false,
            })
            .unwrap();
        assert_eq!(v.remote_owner("q"), None);
    }

    /// A broker with the durable queue `q` in `/`, declared on `n1`.
    fn with_durable_queue_q() -> Broker {
        let broker = Broker::new();
        broker
            .apply_meta(MetaCommand::DeclareQueue {
                vhost: "/".into(),
                name: "q".into(),
                durable: true,
                auto_delete: false,
                arguments: WireTable::default(),
                owner: "n1".into(),
            })
            .unwrap();
        broker
    }

    /// Seen in CI: a node that led for a moment announced itself just
    /// before its successor, and its announcement was applied after the
    /// successor's: every node then named a dead node as the leader.
    #[test]
    fn a_late_announcement_of_an_older_quorum_leader_changes_nothing() {
        let broker = with_durable_queue_q();
        let v = broker.vhost("/").unwrap();
        v.set_quorum_info(
            "q",
            Some(crate::vhost::QuorumInfo {
                members: vec!["n1".into(), "n3".into()],
                ..Default::default()
            }),
        );
        let leader = |leader: &str, term| MetaCommand::QueueLeader {
            vhost: "/".into(),
            name: "q".into(),
            leader: leader.into(),
            term,
        };
        broker.apply_meta(leader("n3", 4)).unwrap();
        broker.apply_meta(leader("n1", 3)).unwrap();
        assert_eq!(v.quorum_info("q").unwrap().leader.as_deref(), Some("n3"));
        assert_eq!(v.remote_owner("q").as_deref(), Some("n3"));
        broker.apply_meta(leader("n1", 5)).unwrap();
        assert_eq!(v.quorum_info("q").unwrap().leader.as_deref(), Some("n1"));
        assert_eq!(v.remote_owner("q").as_deref(), Some("n1"));
    }

    #[test]
    fn a_quorum_queues_members_change_as_rabbitmq_queues_allows() {
        let broker = with_durable_queue_q();
        let member = |node: &str, add: bool| MetaCommand::QueueMember {
            vhost: "/".into(),
            name: "q".into(),
            node: node.into(),
            add,
        };
        let refused = |r: Result<MetaOutcome, MetaError>| match r {
            Err(MetaError::Broker(e)) => e.to_string(),
            other => panic!("not refused: {other:?}"),
        };
        // A classic queue has no members to change.
        assert!(refused(broker.apply_meta(member("n2", true))).contains("not a quorum queue"));
        let v = broker.vhost("/").unwrap();
        v.set_quorum_info(
            "q",
            Some(crate::vhost::QuorumInfo {
                members: vec!["n1".into()],
                leader: Some("n1".into()),
                leader_term: 1,
            }),
        );
        broker.apply_meta(member("n2", true)).unwrap();
        assert_eq!(v.quorum_info("q").unwrap().members, ["n1", "n2"]);
        assert!(refused(broker.apply_meta(member("n2", true))).contains("already a member"));
        assert!(refused(broker.apply_meta(member("n3", false))).contains("not a member"));
        broker.apply_meta(member("n1", false)).unwrap();
        let info = v.quorum_info("q").unwrap();
        assert_eq!(info.members, ["n2"]);
        // Not a member here (a single node has no name, so it is none):
        // the queue lives with its remaining member, not the removed leader.
        assert_eq!(v.remote_owner("q").as_deref(), Some("n2"));
        assert_eq!(info.leader.as_deref(), Some("n2"));
        assert!(refused(broker.apply_meta(member("n2", false))).contains("last member"));
        let missing = MetaCommand::QueueMember {
            vhost: "/".into(),
            name: "nope".into(),
            node: "n1".into(),
            add: true,
        };
        assert!(matches!(
            broker.apply_meta(missing),
            Err(MetaError::Broker(BrokerError::NotFound(_)))
        ));
    }

    #[test]
    fn another_nodes_queue_does_not_expire_here() {
        let clock = Arc::new(crate::clock::ManualClock::default());
        let broker = Broker::with_clock(clock.clone());
        let declare = |name: &str| MetaCommand::DeclareQueue {
            vhost: "/".into(),
            name: name.into(),
            durable: false,
            auto_delete: false,
            arguments: WireTable([("x-expires", FieldValue::I32(1000))].into_iter().collect()),
            owner: "n1".into(),
        };
        broker.apply_meta(declare("mine")).unwrap();
        broker.apply_meta(declare("theirs")).unwrap();
        let v = broker.vhost("/").unwrap();
        v.set_remote_owner("theirs", Some("n1"));
        clock.advance(2000);
        broker.tick();
        // The owner's copy expires on the owner, which has every node
        // forget it; this node's copy waits for that.
        assert!(!v.has_queue("mine"));
        assert!(v.has_queue("theirs"));
    }

    #[test]
    fn an_inequivalent_redeclare_gives_the_single_node_error() {
        let broker = Broker::new();
        let declare = |ttl: i32| MetaCommand::DeclareQueue {
            vhost: "/".into(),
            name: "q".into(),
            durable: true,
            auto_delete: false,
            arguments: WireTable(
                [("x-message-ttl", FieldValue::I32(ttl))]
                    .into_iter()
                    .collect(),
            ),
            owner: "n1".into(),
        };
        broker.apply_meta(declare(1000)).unwrap();
        let err = BrokerError::from(broker.apply_meta(declare(2000)).unwrap_err());
        assert_eq!(err.reply_code(), 406);
        assert!(err.to_string().contains("x-message-ttl"), "{err}");
    }

    #[test]
    fn a_snapshot_installs_on_an_empty_broker() {
        let a = Broker::new();
        a.apply_meta(MetaCommand::CreateVhost {
            name: "eu".into(),
            creator: "guest".into(),
        })
        .unwrap();
        a.apply_meta(MetaCommand::put_user(
            "ops",
            Credentials::Password("pw".into()),
            vec!["administrator".into()],
        ))
        .unwrap();
        a.apply_meta(MetaCommand::DeclareExchange {
            vhost: "eu".into(),
            name: "x".into(),
            kind: "topic".into(),
            durable: true,
            auto_delete: false,
            internal: false,
            arguments: WireTable::default(),
        })
        .unwrap();
        a.apply_meta(MetaCommand::DeclareQueue {
            vhost: "eu".into(),
            name: "q".into(),
            durable: true,
            auto_delete: false,
            arguments: WireTable::default(),
            owner: "n1".into(),
        })
        .unwrap();
        a.apply_meta(MetaCommand::Binding {
            unbind: false,
            vhost: "eu".into(),
            source: "x".into(),
            destination: "q".into(),
            to_exchange: false,
            routing_key: "k.#".into(),
            arguments: WireTable::default(),
            node: None,
        })
        .unwrap();
        let snapshot = a.meta_snapshot();
        let json = serde_json::to_vec(&snapshot).unwrap();
        let b = Broker::new();
        b.apply_meta(MetaCommand::CreateVhost {
            name: "stale".into(),
            creator: "guest".into(),
        })
        .unwrap();
        b.install_meta_snapshot(serde_json::from_slice(&json).unwrap())
            .unwrap();
        assert!(b.vhost("stale").is_none());
        let eu = b.vhost("eu").unwrap();
        assert!(eu.has_exchange("x") && eu.has_queue("q"));
        assert_eq!(eu.definitions().bindings.len(), 1);
        assert!(b.access().user("ops").is_some());
        assert_eq!(b.meta_snapshot(), snapshot);
    }

    #[test]
    fn a_drained_node_is_recorded_until_it_records_otherwise() {
        let a = Broker::new();
        let mark = |node: &str, drained| MetaCommand::SetDrained {
            node: node.into(),
            drained,
        };
        assert_eq!(
            a.apply_meta(mark("n2", true)).unwrap(),
            MetaOutcome::Changed(true)
        );
        assert_eq!(
            a.apply_meta(mark("n2", true)).unwrap(),
            MetaOutcome::Changed(false)
        );
        a.apply_meta(mark("n3", true)).unwrap();
        a.apply_meta(mark("n3", false)).unwrap();
        assert!(a.node_drained("n2") && !a.node_drained("n3"));
        // A snapshot carries the record; one of an older version has none.
        let b = Broker::new();
        b.set_drained_nodes(vec!["n1".into()]);
        b.install_meta_snapshot(a.meta_snapshot()).unwrap();
        assert_eq!(b.drained_nodes(), ["n2"]);
        let mut old = serde_json::to_value(a.meta_snapshot()).unwrap();
        old.as_object_mut().unwrap().remove("drained");
        let old: MetaSnapshot = serde_json::from_value(old).unwrap();
        assert!(old.drained.is_empty());
    }
}
