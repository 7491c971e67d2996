//! A virtual host: its exchanges, queues and bindings, and the one publish
//! path into them.
//!
//! - [`topology`]: the routing table and the rules that walk it;
//! - [`declare`]: declaring, deleting, binding, with RabbitMQ's rules;
//! - [`publish`]: every message's way in ([`Vhost::publish`]);
//! - [`policies`]: policies and operator policies, applied at once;
//! - [`persist`]: durable definitions on disk;
//! - [`storage`]: the stores of durable queues and exchanges.
//!
//! The topology sits behind one reader-writer lock: publishing only reads it
//! (to route), while declarations and bindings, which are rare, write it.
//! Routing collects the target queues under the read lock and releases it
//! before enqueueing, so a slow queue never holds up the topology.

pub(crate) mod declare;
mod persist;
mod policies;
pub mod publish;
mod storage;
mod topology;
pub(crate) use topology::{locked, locked_name, ANY_CONNECTION};

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use antre_amqp::FieldTable;
use parking_lot::RwLock;
use rand::Rng;

use crate::clock::Clock;
use crate::definitions::VhostDefinitions;
use crate::durable::Durable;
use crate::error::BrokerError;
use crate::exchange::delayed::DelayedMessages;
use crate::exchange::Exchange;
use crate::metrics::BrokerMetrics;
use crate::queue::{ConnectionId, Queue};
use crate::stream::Stream;

pub use declare::DeclaredQueue;
pub(crate) use declare::{check_queue_name, check_server_named};
use persist::DefinitionsLog;
pub use publish::{PublishOptions, PublishOutcome, PublishSource};
pub use storage::{dir_name, VhostStorage};
pub use topology::QueueLifecycle;
use topology::Topology;

/// The pseudo-queue of RabbitMQ's direct reply-to: consuming from it (with
/// no_ack) gives a channel a private reply address, and publishing with it
/// as `reply_to` stamps that address on the request.
pub const REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// What exchange.declare asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct ExchangeDeclaration {
    /// Name.
    pub name: String,
    /// Type name as the client sent it.
    pub kind: String,
    /// Durable.
    pub durable: bool,
    /// Auto-delete.
    pub auto_delete: bool,
    /// Internal.
    pub internal: bool,
    /// Arguments.
    pub arguments: FieldTable,
}

/// What queue.declare asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueDeclaration {
    /// Name; empty asks the server to pick one.
    pub name: String,
    /// Durable.
    pub durable: bool,
    /// Exclusive to the declaring connection.
    pub exclusive: bool,
    /// Auto-delete.
    pub auto_delete: bool,
    /// Arguments.
    pub arguments: FieldTable,
}

/// Where a client-named exclusive queue lives (see `Vhost::exclusive_of`).
#[derive(Debug, Clone)]
struct ExclusiveHolder {
    /// The cluster node that holds it.
    node: Arc<str>,
    /// Recorded by the metadata ([`crate::cluster::MetaCommand::ExclusiveQueue`]),
    /// not only learnt from a binding: its release goes through the
    /// metadata too.
    recorded: bool,
}

/// A virtual host.
#[derive(Debug)]
pub struct Vhost {
    /// Its name, e.g. "/".
    pub name: String,
    topology: RwLock<Topology>,
    storage: Option<VhostStorage>,
    /// The definitions of a persistent vhost on disk; written while the
    /// topology is write-locked, so changes are logged in their order.
    definitions: Option<Arc<DefinitionsLog>>,
    clock: Arc<dyn Clock>,
    metrics: Arc<BrokerMetrics>,
    /// The `max-queues` limit, [`NO_LIMIT`] when there is none.
    max_queues: AtomicU64,
    /// In a cluster, the queues whose engine runs on another node, by name,
    /// with that node's name. Such a queue exists here so that its
    /// definition, bindings and declarations behave as on its owner, but it
    /// takes no messages and serves no consumers here.
    remote: RwLock<HashMap<String, Arc<str>>>,
    /// Whether `remote` has any entry: the publish path reads only this
    /// flag on a single node.
    has_remote: AtomicBool,
    /// Set once an exchange is bound to another node's exclusive queue.
    binds_elsewhere: AtomicBool,
    /// This node's exclusive queues bound through the metadata (so other
    /// nodes route to them): when one goes, its bindings there go too.
    announced: parking_lot::Mutex<std::collections::HashSet<String>>,
    /// Exclusive queues named by their clients, with the node that holds
    /// each (a server-named one's name says it): other nodes' that this
    /// node's bindings route to, and, once the cluster records them
    /// ([`crate::cluster::MetaCommand::ExclusiveQueue`]), every node's, this
    /// one's included.
    exclusive_of: RwLock<HashMap<String, ExclusiveHolder>>,
    /// Quorum queues' groups in a cluster: members and leader, by queue.
    quorum: RwLock<HashMap<String, QuorumInfo>>,
    /// In a cluster, where the removals this vhost decides itself (an
    /// auto-delete queue's last consumer leaving, `x-expires`) are proposed
    /// so that every node forgets the queue.
    metadata: std::sync::OnceLock<Arc<dyn crate::cluster::MetadataLog>>,
    /// In a cluster, where the messages this vhost routes itself (dead
    /// letters, delayed releases) go when they reach another node's queue.
    forwarder: std::sync::OnceLock<Arc<dyn crate::remote::RemoteQueues>>,
    /// What its channels published through each exchange.
    flows: Arc<crate::channel::ExchangeFlows>,
}

/// What [`Vhost::max_queues`] holds when no queue limit is set.
const NO_LIMIT: u64 = u64::MAX;

impl Vhost {
    /// A vhost with the predeclared exchanges, kept in memory only.
    pub fn new(name: &str, clock: Arc<dyn Clock>, metrics: Arc<BrokerMetrics>) -> Vhost {
        let topo = Topology::new(name, Arc::clone(&metrics.dead_lettered));
        Vhost {
            name: name.to_owned(),
            flows: Arc::clone(&topo.flows),
            topology: RwLock::new(topo),
            storage: None,
            definitions: None,
            clock,
            metrics,
            max_queues: AtomicU64::new(NO_LIMIT),
            remote: RwLock::default(),
            has_remote: AtomicBool::new(false),
            binds_elsewhere: AtomicBool::new(false),
            announced: parking_lot::Mutex::default(),
            exclusive_of: RwLock::default(),
            quorum: RwLock::default(),
            metadata: std::sync::OnceLock::new(),
            forwarder: std::sync::OnceLock::new(),
        }
    }

    /// A vhost that persists its durable definitions and messages under
    /// `storage.dir`, recovering whatever is there.
    pub fn open(
        name: &str,
        storage: VhostStorage,
        clock: Arc<dyn Clock>,
        metrics: Arc<BrokerMetrics>,
    ) -> Result<Vhost, BrokerError> {
        for sub in ["queues", "streams"] {
            std::fs::create_dir_all(storage.dir.join(sub))
                .map_err(|e| storage::internal(&storage.dir, "create vhost directory", e))?;
        }
        let mut topo = Topology::new(name, Arc::clone(&metrics.dead_lettered));
        let definitions = DefinitionsLog::recover(&storage, &mut topo, &clock)?;
        Ok(Vhost {
            name: name.to_owned(),
            flows: Arc::clone(&topo.flows),
            topology: RwLock::new(topo),
            storage: Some(storage),
            definitions: Some(definitions),
            clock,
            metrics,
            max_queues: AtomicU64::new(NO_LIMIT),
            remote: RwLock::default(),
            has_remote: AtomicBool::new(false),
            binds_elsewhere: AtomicBool::new(false),
            announced: parking_lot::Mutex::default(),
            exclusive_of: RwLock::default(),
            quorum: RwLock::default(),
            metadata: std::sync::OnceLock::new(),
            forwarder: std::sync::OnceLock::new(),
        })
    }

    /// Sets the vhost's `max-queues` limit (`None`: no limit). Queues that
    /// exist stay; only new declarations are refused past it.
    pub fn set_max_queues(&self, limit: Option<u64>) {
        self.max_queues
            .store(limit.unwrap_or(NO_LIMIT), Ordering::Relaxed);
    }

    /// Records (or, with None, forgets) a quorum queue's group.
    pub fn set_quorum_info(&self, name: &str, info: Option<QuorumInfo>) {
        let mut quorum = self.quorum.write();
        match info {
            Some(i) => {
                quorum.insert(name.to_owned(), i);
            }
            None => {
                quorum.remove(name);
            }
        }
    }

    /// Records the node that leads a quorum queue's group in Raft term
    /// `term`, unless a leader of a later term is known already: the news
    /// of a leadership arrives by several paths (this node's replica, the
    /// metadata group) in any order, and a node that led for a moment must
    /// not undo what its successor recorded.
    pub fn set_quorum_leader(&self, name: &str, leader: &str, term: u64) {
        if let Some(i) = self.quorum.write().get_mut(name) {
            if term >= i.leader_term {
                i.leader = Some(leader.to_owned());
                i.leader_term = term;
            }
        }
    }

    /// This node (`me`) stopped leading a quorum queue's group: it no
    /// longer lists itself as the leader (the leader is unknown until one
    /// is elected, which then records itself).
    pub fn forget_quorum_leader(&self, name: &str, me: &str) {
        if let Some(i) = self.quorum.write().get_mut(name) {
            if i.leader.as_deref() == Some(me) {
                i.leader = None;
            }
        }
    }

    /// A quorum queue's group, in a cluster.
    pub fn quorum_info(&self, name: &str) -> Option<QuorumInfo> {
        self.quorum.read().get(name).cloned()
    }

    /// Whether `name` is a quorum queue (or replicated stream): its
    /// contents are replicated. Cheaper than [`Vhost::quorum_info`], which
    /// copies the record, for each message of a batch a forwarding node
    /// holds or sends again.
    pub fn is_replicated(&self, name: &str) -> bool {
        self.quorum.read().contains_key(name)
    }

    /// The name of every quorum queue and replicated stream of the vhost,
    /// cluster-wide (from the metadata, whichever nodes hold them).
    pub fn replicated_names(&self) -> Vec<String> {
        self.quorum.read().keys().cloned().collect()
    }

    /// Each quorum queue's leader, where one is known.
    pub fn quorum_leaders(&self) -> Vec<Option<String>> {
        self.quorum
            .read()
            .values()
            .map(|i| i.leader.clone())
            .collect()
    }

    /// Makes this vhost a cluster node's (see the `metadata` field).
    pub(crate) fn set_metadata_log(&self, log: Arc<dyn crate::cluster::MetadataLog>) {
        let _ = self.metadata.set(log);
    }

    /// Makes this vhost forward the messages it routes itself to other
    /// nodes' queues through `remote` (see the `forwarder` field).
    pub(crate) fn set_forwarder(&self, remote: Arc<dyn crate::remote::RemoteQueues>) {
        let _ = self.forwarder.set(remote);
    }

    /// Records that the queue `name` is owned by the node `owner` (in a
    /// cluster, another node than this one), or, with `None`, that it is
    /// this node's own (or gone).
    pub fn set_remote_owner(&self, name: &str, owner: Option<&str>) {
        let mut remote = self.remote.write();
        match owner {
            Some(node) => {
                remote.insert(name.to_owned(), Arc::from(node));
            }
            None => {
                remote.remove(name);
            }
        }
        self.has_remote.store(!remote.is_empty(), Ordering::Release);
    }

    /// The node that owns the queue `name`, when that is another node.
    pub fn remote_owner(&self, name: &str) -> Option<Arc<str>> {
        if !self.has_remote.load(Ordering::Acquire) {
            return None;
        }
        self.remote.read().get(name).cloned()
    }

    /// Where a get from `queue` goes: to its remote owner (`Some`), or to
    /// this node's engine. A quorum queue's member that does not lead it
    /// and does not know who does (just deposed, or just restarted) first
    /// waits for the news ([`QueueReplica::await_location`]): its idle
    /// engine would answer "empty" whatever the queue holds. So does a
    /// leader that no majority has answered lately (it may have been
    /// deposed without knowing: [`QueueReplica::may_deliver`]). RabbitMQ's
    /// gets also wait for the queue's leader, and fail when none comes.
    /// Blocks the calling thread while it waits.
    ///
    /// [`QueueReplica::await_location`]: crate::replicated::QueueReplica::await_location
    /// [`QueueReplica::may_deliver`]: crate::replicated::QueueReplica::may_deliver
    pub fn owner_for_get(&self, queue: &Queue) -> Result<Option<Arc<str>>, BrokerError> {
        let owner = self.remote_owner(&queue.name);
        let placed = |r: &Arc<dyn crate::replicated::QueueReplica>| r.leads() && r.may_deliver();
        let Some(replica) = queue.replica().filter(|r| owner.is_none() && !placed(r)) else {
            return Ok(owner);
        };
        if !replica.await_location() {
            return Err(BrokerError::Internal(format!(
                "Cannot get a message from {}: no leader known",
                crate::error::queue_ref(&self.name, &queue.name)
            )));
        }
        Ok(self.remote_owner(&queue.name))
    }

    /// Whether any queue of this vhost is owned by another node (one
    /// atomic load: the publish path asks it for every message).
    pub fn has_remote_queues(&self) -> bool {
        self.has_remote.load(Ordering::Acquire)
    }

    /// Whether publishing `message` here may forward it to another node:
    /// a queue of this vhost is another node's, an exchange is bound to
    /// another node's exclusive queue, or the message is addressed by name
    /// to another node's node-local queue (see [`node_named_by`]).
    pub fn may_forward(&self, message: &crate::message::Message) -> bool {
        self.has_remote_queues()
            || self.binds_elsewhere.load(Ordering::Acquire)
            || (message.exchange.is_empty()
                && self.metadata.get().is_some()
                && may_be_node_local(&message.routing_key))
    }

    /// Notes that an exchange of this vhost is bound to another node's
    /// exclusive queue (kept once set: a hint for [`Vhost::may_forward`]).
    pub(crate) fn note_binding_elsewhere(&self) {
        self.binds_elsewhere.store(true, Ordering::Release);
    }

    /// Every queue of this vhost owned by another node, with its owner.
    pub fn remote_owners(&self) -> Vec<(String, String)> {
        let remote = self.remote.read();
        let mut all: Vec<(String, String)> = remote
            .iter()
            .map(|(q, n)| (q.clone(), n.to_string()))
            .collect();
        all.sort();
        all
    }

    /// The error for using here a queue whose engine runs on `owner`
    /// (a broker without a forwarder; a management request that reached
    /// a node the queue moved away from meanwhile), as RabbitMQ answers
    /// 404 for a queue whose home node is unreachable. AMQP channels and
    /// the management API forward to the owner instead
    /// ([`crate::remote`]).
    pub fn remote_queue_error(&self, name: &str, owner: &str) -> BrokerError {
        BrokerError::NotFound(format!(
            "{} lives on cluster node '{owner}', not on this one: use '{owner}'",
            crate::error::queue_ref(&self.name, name)
        ))
    }

    /// Refuses to use the queue `name` here if another node owns it.
    pub fn check_local(&self, name: &str) -> Result<(), BrokerError> {
        match self.remote_owner(name) {
            Some(owner) => Err(self.remote_queue_error(name, &owner)),
            None => Ok(()),
        }
    }

    /// The vhost's `max-queues` limit, if any.
    pub fn max_queues(&self) -> Option<u64> {
        let limit = self.max_queues.load(Ordering::Relaxed);
        (limit != NO_LIMIT).then_some(limit)
    }

    /// How many queues the vhost has, as its queue limit counts them
    /// (direct reply-to's addresses are not queues to clients).
    pub fn queue_count(&self) -> usize {
        self.topology.read().queue_count()
    }

    /// Logs the changes to durable definitions `topo` recorded.
    fn save(&self, topo: &mut Topology) -> Result<(), BrokerError> {
        match &self.definitions {
            Some(log) => log.record(topo),
            None => {
                topo.take_changes();
                Ok(())
            }
        }
    }

    /// How many changes to durable definitions this thread logged so far:
    /// an operation that changed the count must not be answered before
    /// [`Vhost::definitions_store`] is synced. Changes other threads made
    /// meanwhile do not count (see `persist::APPENDED_HERE`).
    pub fn definitions_changed(&self) -> u64 {
        self.definitions
            .as_ref()
            .map_or(0, |_| persist::appended_here())
    }

    /// The store of the vhost's durable definitions, to sync before
    /// answering an operation that changed them.
    pub fn definitions_store(&self) -> Option<Arc<dyn Durable>> {
        self.definitions
            .as_ref()
            .map(|d| Arc::clone(d) as Arc<dyn Durable>)
    }

    /// The vhost's durable definitions, as they are saved.
    pub fn definitions(&self) -> VhostDefinitions {
        persist::durable_definitions(&self.topology.read())
    }

    /// Flushes and closes every store (clean shutdown).
    pub fn close(&self) {
        let topo = self.topology.read();
        for q in topo.queues.values() {
            q.close_store();
        }
        for s in topo.streams.values() {
            s.close();
        }
        for ex in topo.exchanges.values() {
            ex.close_stores();
        }
        if let Some(d) = &self.definitions {
            d.close_store();
        }
    }

    /// Looks up a queue the connection may use: 405 for another
    /// connection's exclusive queue, on this node or (as the metadata
    /// records it) on another running cluster node.
    pub fn queue(&self, name: &str, conn: ConnectionId) -> Result<Arc<Queue>, BrokerError> {
        let topo = self.topology.read();
        let Some(q) = topo.queues.get(name) else {
            if self.exclusive_of_running(name).is_some() {
                return Err(locked_name(&self.name, name));
            }
            return Err(topo.no_queue(name));
        };
        topology::check_exclusive(q, conn)?;
        Ok(Arc::clone(q))
    }

    /// The stream `name`, if there is one.
    pub fn stream(&self, name: &str) -> Option<Arc<Stream>> {
        self.topology.read().streams.get(name).cloned()
    }

    /// Every stream, for listing.
    pub fn streams(&self) -> Vec<Arc<Stream>> {
        self.topology.read().streams.values().cloned().collect()
    }

    /// Purges a queue; returns how many messages were dropped.
    pub fn purge_queue(&self, name: &str, conn: ConnectionId) -> Result<u32, BrokerError> {
        if self.stream(name).is_some() {
            // RabbitMQ's stream queues do not support purge.
            return Err(BrokerError::PreconditionFailed(format!(
                "purge not supported by {}",
                crate::error::queue_ref(&self.name, name)
            )));
        }
        Ok(self.queue(name, conn)?.purge())
    }

    /// Queue declarations, creations and deletions so far.
    pub fn queue_lifecycle(&self) -> QueueLifecycle {
        self.topology.read().lifecycle
    }

    /// What its channels published through each exchange, in and out
    /// (RabbitMQ's exchange `publish_in` and `publish_out`).
    pub fn exchange_flows(&self) -> &crate::channel::ExchangeFlows {
        &self.flows
    }

    /// Whether the exchange `name` exists.
    pub fn has_exchange(&self, name: &str) -> bool {
        self.topology.read().exchanges.contains_key(name)
    }

    /// The queue `name`, whoever may use it (for looking at it only).
    pub fn queue_info(&self, name: &str) -> Option<Arc<Queue>> {
        self.topology.read().queues.get(name).cloned()
    }

    /// Whether the queue (or stream) `name` exists.
    pub fn has_queue(&self, name: &str) -> bool {
        let topo = self.topology.read();
        topo.queues.contains_key(name) || topo.streams.contains_key(name)
    }

    /// Whether `name` is a topic exchange (whose routing keys topic
    /// permissions cover).
    pub fn is_topic_exchange(&self, name: &str) -> bool {
        let topo = self.topology.read();
        topo.exchanges
            .get(name)
            .is_some_and(|e| e.type_name == "topic")
    }

    /// A snapshot of every exchange, with its bindings.
    pub fn exchanges(&self) -> Vec<Exchange> {
        self.topology.read().exchanges.values().cloned().collect()
    }

    /// Every exchange without its bindings ([`Exchange::without_bindings`]),
    /// for listing.
    pub fn exchange_summaries(&self) -> Vec<Exchange> {
        let topo = self.topology.read();
        topo.exchanges
            .values()
            .map(Exchange::without_bindings)
            .collect()
    }

    /// The exchange `name`, with its bindings.
    pub fn exchange(&self, name: &str) -> Option<Exchange> {
        self.topology.read().exchanges.get(name).cloned()
    }

    /// The exchange `name` without its bindings.
    pub fn exchange_summary(&self, name: &str) -> Option<Exchange> {
        let topo = self.topology.read();
        topo.exchanges.get(name).map(Exchange::without_bindings)
    }

    /// How many exchanges the vhost has.
    pub fn exchange_count(&self) -> usize {
        self.topology.read().exchanges.len()
    }

    /// Every queue, for listing.
    pub fn queues(&self) -> Vec<Arc<Queue>> {
        self.topology.read().queues.values().cloned().collect()
    }

    /// The queues whose engine runs on this node: every queue on a single
    /// node; on a cluster node not those another node owns (a classic
    /// queue's home, a quorum queue's leader), whose copy here is not
    /// where their messages, consumers and counters are. What a node
    /// counts and exports as its own.
    pub fn owned_queues(&self) -> Vec<Arc<Queue>> {
        let mut queues = self.queues();
        if self.has_remote_queues() {
            let remote = self.remote.read();
            queues.retain(|q| !remote.contains_key(&q.name));
        }
        queues
    }

    /// Time passes: releases due delayed messages, expires messages and
    /// idle queues, and routes the dead letters that produced. Called by the
    /// broker's timer.
    pub fn tick(&self, now: u64) {
        if let Some(definitions) = &self.definitions {
            definitions.compact_if_due();
        }
        let schedules: Vec<Arc<DelayedMessages>> = self
            .topology
            .read()
            .exchanges
            .values()
            .filter_map(|e| e.delayed.clone())
            .collect();
        for schedule in schedules {
            self.release_due(&schedule, now);
        }
        let aging: Vec<Arc<Stream>> = {
            let topo = self.topology.read();
            let streams = topo.streams.values();
            streams
                .filter(|s| s.args.max_age_ms.is_some())
                .cloned()
                .collect()
        };
        for s in aging {
            s.tick(now);
        }
        // Only queues that hold something that expires, or whose arguments
        // expire them, need the timer; idle vhosts with many queues cost
        // nothing here.
        let timed: Vec<Arc<Queue>> = {
            let topo = self.topology.read();
            let mut list = topo.timed.lock();
            list.retain(|q| q.strong_count() > 0);
            list.iter().filter_map(Weak::upgrade).collect()
        };
        for q in &timed {
            // Another node's queue expires on its owner, which then has
            // every node forget it.
            if q.tick(now) && self.remote_owner(&q.name).is_none() {
                tracing::info!(
                    queue = q.name,
                    vhost = self.name,
                    "deleting queue unused for its x-expires time"
                );
                self.remove_if_current(q, |_| true);
            }
            self.advance_dying(q, now);
            self.route_dead_letters(q);
        }
    }
}

/// A quorum queue's Raft group as a cluster node knows it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct QuorumInfo {
    /// Members' node names.
    pub members: Vec<String>,
    /// The leader's node name, once one is known.
    pub leader: Option<String>,
    /// The Raft term `leader` was elected in (0: not known).
    pub leader_term: u64,
}

/// Server-named queues' prefix.
pub(crate) const GENERATED: &str = "amq.gen-";

/// A server-generated name for an exclusive queue. In a cluster (`node`
/// given) it names the queue's node (`amq.gen-<node in base64url>.<random>`),
/// as [`reply_to_name`] does for direct reply-to: an exclusive queue is
/// node-local, and a reply published to it on another node (the RPC
/// pattern: the responder answers to the requester's exclusive queue)
/// is forwarded there by its name alone.
pub(crate) fn exclusive_name(node: Option<&str>) -> String {
    node_local_name(GENERATED, "", node)
}

/// The node a server-generated exclusive queue's name names (see
/// [`exclusive_name`]), if it names one.
pub(crate) fn exclusive_node(name: &str) -> Option<String> {
    node_of(name.strip_prefix(GENERATED)?)
}

fn node_local_name(prefix: &str, separator: &str, node: Option<&str>) -> String {
    use base64::Engine as _;
    let tag = node.map(|n| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(n));
    match tag {
        // A queue name (and a reply-to) is a short string, 255 bytes at
        // most: a node name too long for it gives a plain name, reached
        // on this node only.
        Some(tag) if prefix.len() + separator.len() + tag.len() + 23 <= 255 => {
            generated_name(&format!("{prefix}{separator}{tag}."))
        }
        _ => generated_name(&format!("{prefix}{separator}")),
    }
}

/// The node named by what follows a node-local name's prefix.
fn node_of(tagged: &str) -> Option<String> {
    use base64::Engine as _;
    let (tag, _) = tagged.split_once('.')?;
    let node = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(tag)
        .ok()?;
    String::from_utf8(node).ok()
}

/// Whether `name` has the shape of a node-local queue's name (see
/// [`node_named_by`]): a cheap test before decoding it.
pub(crate) fn may_be_node_local(name: &str) -> bool {
    name.starts_with(GENERATED) || name.starts_with(REPLY_TO)
}

/// The node, if any, that a node-local queue name names: a direct
/// reply-to address's or a server-named exclusive queue's.
pub(crate) fn node_named_by(name: &str) -> Option<String> {
    reply_to_node(name).or_else(|| exclusive_node(name))
}

/// A new direct reply-to address. In a cluster (`node` given) it names
/// the node its reply queue lives on (`amq.rabbitmq.reply-to.<node in
/// base64url>.<random>`), as RabbitMQ's encode their node: a reply is
/// published where the responder is connected, often another node, which
/// routes it by the name alone (no node knows another's reply queues).
/// Clients treat the address as opaque.
pub(crate) fn reply_to_name(node: Option<&str>) -> String {
    node_local_name(REPLY_TO, ".", node)
}

/// The node a direct reply-to address names (see [`reply_to_name`]), if
/// it names one.
pub(crate) fn reply_to_node(name: &str) -> Option<String> {
    node_of(name.strip_prefix(REPLY_TO)?.strip_prefix('.')?)
}

/// A server-generated name: `prefix` then 22 URL-safe base64 characters, the
/// shape RabbitMQ uses for `amq.gen-` queues and `amq.ctag-` consumer tags.
pub fn generated_name(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut rng = rand::thread_rng();
    let mut name = String::with_capacity(prefix.len() + 22);
    name.push_str(prefix);
    for _ in 0..22 {
        name.push(ALPHABET[rng.gen_range(0..ALPHABET.len())] as char);
    }
    name
}

#[cfg(test)]
mod tests;
