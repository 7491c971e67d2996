//! Replica management of quorum queues: adding and removing one queue's
//! members (`rabbitmq-queues add_member` / `delete_member`), the same for
//! every queue of a node (`grow` / `shrink`), and moving leaders so each
//! node leads about as many queues as the others (`rebalance`).
//!
//! A queue's member list is part of its replicated definition, so a change
//! is a metadata entry ([`MetaCommand::QueueMember`]) as well as a change of
//! the queue's own Raft membership, made by the group's leader with
//! openraft's `add_learner` (the new member receives the log, or the
//! snapshot, until it has caught up) then `change_membership` (it votes),
//! or `change_membership` alone for a removal (joint consensus: a majority
//! of the old and of the new members agree at every step). The order keeps
//! the group available:
//!
//! - adding: the metadata entry first, so the new node starts its replica
//!   (without bootstrapping: it waits for the leader's log) before the
//!   leader sends it anything; then the group change;
//! - removing: the group change first, so the removed node serves as a
//!   voter until the group no longer counts it; then the metadata entry,
//!   on whose apply it stops its replica and deletes its data.
//!
//! Each step is idempotent, so a change interrupted half-way (no quorum in
//! time, a node killed) is completed by asking for it again.
//!
//! Leader transfer: openraft 0.9 has no leader transfer (it came in 0.10),
//! and a follower's election triggered with `trigger().elect()` is refused
//! by the other voters while the leader's lease runs (openraft's followers
//! refuse votes until `election_timeout_max` after the leader's last
//! heartbeat or append). So the leader makes its lease lapse: it holds new
//! entries (publishes and settles wait, gathered, in the proposer), stops
//! its heartbeats, waits until every voter has its whole log, then asks
//! the target to stand for election once the lease has passed (and again
//! while it is not elected). The target, holding the whole log, wins; the
//! other followers' own election timers (lease + 400 to 800 ms) have not
//! fired yet. A transfer costs about one lease (800 ms) of held entries;
//! the ones held when leadership moves are nacked, as in a failover.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use antre_broker::cluster::{check_member_change, MetaCommand, MetaError, QuorumDef};
use antre_broker::error::BrokerError;
use openraft::error::ClientWriteError;
use openraft::ChangeMembers;
use tokio::time::Instant;

use super::*;
use crate::network::Connection;
use crate::node::Cluster;

/// How long one queue's membership change may take (a new member catches
/// up first): under the CLI's HTTP timeout.
pub const CHANGE_TIMEOUT: Duration = Duration::from_secs(20);

/// How long one leadership transfer may take.
pub const TRANSFER_TIMEOUT: Duration = Duration::from_secs(8);

/// Queue changes of a node-wide `grow`/`shrink` or a `rebalance` run at
/// most this many at a time.
const PARALLEL: usize = 8;

/// The broker's queue holds one [`QueueReplica`] for its life, but a node
/// may leave a queue's group and join it again later: the queue holds a
/// slot, which hands each call to this node's current replica (none while
/// it is not a member, or its replica is still starting: publishes then
/// fail and are nacked; they reach this node only in the moment before it
/// knows the new leader, or just after the queue was declared).
pub(super) struct Slot {
    current: Mutex<Option<Arc<Replica>>>,
    /// For the nack of a publish that reaches a node no longer a member.
    syncer: Option<antre_broker::syncer::Syncer>,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot").finish_non_exhaustive()
    }
}

impl QueueReplica for Slot {
    fn enqueue(
        &self,
        message: &Arc<Message>,
        source: Option<antre_broker::replicated::Source>,
    ) -> Result<Arc<dyn Durable>, BrokerError> {
        let current = self.current.lock().clone();
        match current {
            Some(r) => r.enqueue(message, source),
            None => {
                // Not a member (any more): the publisher gets a nack, as
                // from a replica that just lost leadership.
                Ok(PendingCommit::done(self.syncer.clone(), false))
            }
        }
    }

    fn settle(&self, id: u64) {
        if let Some(r) = self.current.lock().clone() {
            r.settle(id);
        }
    }

    fn returned(&self, id: u64) {
        if let Some(r) = self.current.lock().clone() {
            r.returned(id);
        }
    }

    fn dead_lettered(&self, id: u64, reason: DeathReason) {
        if let Some(r) = self.current.lock().clone() {
            r.dead_lettered(id, reason);
        }
    }

    fn replicated_messages(&self) -> u64 {
        let current = self.current.lock().clone();
        current.map_or(0, |r| r.replicated_messages())
    }

    fn in_flight(&self, from_id: u64) -> (u64, u64) {
        let current = self.current.lock().clone();
        current.map_or((0, 0), |r| r.in_flight(from_id))
    }

    fn is_member(&self) -> bool {
        self.current.lock().is_some()
    }

    fn leads(&self) -> bool {
        let current = self.current.lock().clone();
        current.is_some_and(|r| r.leads())
    }

    fn taking_over(&self) -> Option<antre_broker::replicated::TakeOver> {
        let current = self.current.lock().clone();
        current.and_then(|r| r.taking_over())
    }

    fn may_deliver(&self) -> bool {
        let current = self.current.lock().clone();
        current.is_none_or(|r| r.may_deliver())
    }

    fn await_location(&self) -> bool {
        // Not a member: the metadata names the queue's node.
        let current = self.current.lock().clone();
        current.is_none_or(|r| r.await_location())
    }

    fn publish_records(
        &self,
        writer: Option<&str>,
        records: Vec<(u64, Bytes)>,
        accepted: &mut Vec<bool>,
    ) -> Result<Arc<dyn Durable>, BrokerError> {
        let current = self.current.lock().clone();
        match current {
            Some(r) => r.publish_records(writer, records, accepted),
            None => {
                accepted.clear();
                accepted.resize(records.len(), true);
                Ok(PendingCommit::done(self.syncer.clone(), false))
            }
        }
    }

    fn store_offset(&self, reference: &str, offset: u64) -> Result<(), BrokerError> {
        let current = self.current.lock().clone();
        match current {
            Some(r) => r.store_offset(reference, offset),
            None => Err(BrokerError::NotFound(
                "this node holds no replica of the stream".into(),
            )),
        }
    }

    fn report_consumers(
        &self,
        report: antre_broker::stream::sac::Report,
        answer: antre_broker::replicated::SacAnswer,
    ) {
        let current = self.current.lock().clone();
        match current {
            Some(r) => r.report_consumers(report, answer),
            None => answer(Err("this node holds no replica of the stream".into())),
        }
    }
}

/// What [`QueueGroups`] knows for replica management: every quorum
/// queue's definition (members, group), member or not, and the slot of
/// each queue this node holds a replica of.
#[derive(Default)]
pub(super) struct Known {
    defs: Mutex<Defs>,
    slots: Mutex<Vec<(WeakTarget, Arc<Slot>)>>,
}

/// A change of one group, made by its leader (or, for `Elect`, by the
/// member that should stand).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum GroupOp {
    /// Add this node as a learner, then, once it caught up, as a voter.
    AddVoter(String),
    /// Remove this node.
    RemoveVoter(String),
    /// Make this node the leader.
    TransferLeader(String),
    /// To a member: stand for election now (a transfer's last step).
    Elect,
    /// A stream's: store named consumers' offsets (a member that does not
    /// lead hands them to the leader).
    StoreOffsets(Vec<(String, u64)>),
}

/// Why a group change was not made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
pub enum GroupOpError {
    /// Not the group's leader: the one it knows, if any.
    #[error("not the queue's leader")]
    NotLeader(Option<String>),
    /// The change makes no sense (the last member...).
    #[error("{0}")]
    Invalid(String),
    /// It could not be done in time.
    #[error("{0}")]
    Failed(String),
}

/// Why a replica management request failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QueueMemberError {
    /// No such vhost or queue (HTTP 404).
    #[error("{0}")]
    NotFound(String),
    /// Refused: not a quorum queue, unknown node, already a member, the
    /// last member (HTTP 400).
    #[error("{0}")]
    Invalid(String),
    /// No quorum or leader in time (HTTP 503); asking again completes it.
    #[error("{0}")]
    Unavailable(String),
}

impl From<MetaError> for QueueMemberError {
    fn from(e: MetaError) -> Self {
        match e {
            MetaError::Broker(BrokerError::NotFound(t)) => QueueMemberError::NotFound(t),
            MetaError::Broker(BrokerError::PreconditionFailed(t)) => QueueMemberError::Invalid(t),
            MetaError::Unavailable(t) => QueueMemberError::Unavailable(t),
            other => QueueMemberError::Invalid(other.to_string()),
        }
    }
}

/// Which queues `grow` adds a member to (`rabbitmq-queues grow <node> <all|even>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrowStrategy {
    /// Every quorum queue the node is not a member of.
    All,
    /// Those with an even number of members (growing them to an odd
    /// number adds fault tolerance; an odd one gains none from one more).
    Even,
}

/// The outcome of one queue's change within `grow`, `shrink` or `rebalance`.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueChange {
    /// The vhost.
    pub vhost: String,
    /// The queue.
    pub name: String,
    /// Its members after the change (or as they were, if it failed).
    pub members: Vec<String>,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

/// One leader move of a rebalance.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaderMove {
    /// The vhost.
    pub vhost: String,
    /// The queue.
    pub name: String,
    /// The leader before.
    pub from: String,
    /// The member asked to lead.
    pub to: String,
    /// Why it did not move, if it did not.
    pub error: Option<String>,
}

/// What `rebalance` did: leaders per node before and after, and each move.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Rebalance {
    /// Quorum queues led by each node (every node that is a member of a
    /// selected queue), before.
    pub before: BTreeMap<String, usize>,
    /// The same, after.
    pub after: BTreeMap<String, usize>,
    /// The moves tried.
    pub moves: Vec<LeaderMove>,
}

/// Quorum queue definitions by vhost and name, and by group (a lookup
/// per replica start or stop: linear scans would make a node with many
/// quorum queues quadratic).
#[derive(Default)]
struct Defs {
    by_name: BTreeMap<(String, String), QuorumDef>,
    by_group: HashMap<String, (String, String)>,
}

impl QueueGroups {
    /// Records a quorum queue's definition (every node, member or not).
    pub(crate) fn remember(&self, def: &QuorumDef) {
        let key = (def.vhost.clone(), def.name.clone());
        let mut defs = self.known.defs.lock();
        if let Some(old) = defs.by_name.insert(key.clone(), def.clone()) {
            defs.by_group.remove(&old.group);
        }
        defs.by_group.insert(def.group.clone(), key);
    }

    /// Forgets the definition of the queue whose group is `group`.
    pub(super) fn forget(&self, group: &str) {
        let mut defs = self.known.defs.lock();
        if let Some(key) = defs.by_group.remove(group) {
            defs.by_name.remove(&key);
        }
    }

    /// The definition of quorum queue `name` in `vhost`, as this node
    /// applied it.
    pub fn def_of(&self, vhost: &str, name: &str) -> Option<QuorumDef> {
        self.known
            .defs
            .lock()
            .by_name
            .get(&(vhost.to_owned(), name.to_owned()))
            .cloned()
    }

    /// The definition of the queue whose group is `group`, if it exists.
    pub(super) fn def_by_group(&self, group: &str) -> Option<QuorumDef> {
        let defs = self.known.defs.lock();
        let key = defs.by_group.get(group)?;
        defs.by_name.get(key).cloned()
    }

    /// Every quorum queue's definition, by vhost and name.
    pub fn defs(&self) -> Vec<QuorumDef> {
        self.known.defs.lock().by_name.values().cloned().collect()
    }

    /// Gives the broker's `queue` this node's `replica` (through the
    /// queue's slot). False if the queue already has a live replica.
    pub(super) fn attach(&self, queue: &Target, replica: Arc<Replica>) -> bool {
        let Some(slot) = self.slot(queue) else {
            return false;
        };
        let mut current = slot.current.lock();
        if current.is_some() {
            return false;
        }
        *current = Some(replica);
        true
    }

    /// Gives the broker's `queue` its slot now, empty until this node's
    /// replica starts (in the background): from then on the queue is
    /// replicated, and a publish that reaches it before the replica is
    /// nacked rather than taken by the queue as a plain local queue (and
    /// dropped when the replica takes it over).
    pub(super) fn reserve(&self, queue: &Target) {
        let _ = self.slot(queue);
    }

    /// The queue's slot, given to it now if it has none. None if the
    /// queue's replication is not a slot of this node's.
    fn slot(&self, queue: &Target) -> Option<Arc<Slot>> {
        let mut slots = self.known.slots.lock();
        slots.retain(|(q, _)| q.alive());
        if let Some((_, slot)) = slots.iter().find(|(q, _)| q.is(queue)) {
            return Some(Arc::clone(slot));
        }
        let slot = Arc::new(Slot {
            current: Mutex::new(None),
            syncer: self.broker.syncer().cloned(),
        });
        if !queue.set_replica(Arc::clone(&slot) as Arc<dyn QueueReplica>) {
            return None;
        }
        slots.push((queue.downgrade(), Arc::clone(&slot)));
        Some(slot)
    }

    fn detach(&self, queue: &Target) {
        let slots = self.known.slots.lock();
        for (q, slot) in slots.iter() {
            if q.is(queue) {
                *slot.current.lock() = None;
            }
        }
    }

    /// A quorum queue's definition applied (declared, members changed,
    /// snapshot installed): records it; starts this node's replica if it
    /// is a member now, stops it and removes its data if it no longer is.
    pub fn members_changed(&self, def: &QuorumDef) {
        self.declared(def);
        if !def.members.iter().any(|m| m == self.me()) && self.group(&def.group).is_some() {
            self.reconcile(&def.group);
        }
    }

    /// Stops this node's replica `g` (no longer a member, or the queue is
    /// gone): the queue's publishes are nacked from now on, its consumers
    /// here cancelled, and the replica's data removed.
    pub(super) async fn stop_replica(&self, g: &Group) {
        self.detach(&g.machine.engine.target);
        g.stop.send_replace(true);
        if g.machine.engine.active.load(Ordering::Acquire) {
            step_down(g);
        }
        remove_replica(g).await;
        if let Some(stream) = g.machine.engine.target.stream() {
            // The log goes with the replica; should this node become a
            // member again, it gets the stream anew from offset 0.
            if let Err(e) = stream.replica_clear() {
                tracing::warn!(
                    stream = stream.name,
                    "clearing a removed replica's log: {e}"
                );
            }
        }
    }

    /// The name of node `id`: from the queues' definitions (their members,
    /// those added later included), else this node's peer list. Not from
    /// the list first: a node that joined later is in no list but its own.
    pub(super) fn name_of(&self, id: NodeId) -> Option<String> {
        let known = self.known.defs.lock();
        known
            .by_name
            .values()
            .flat_map(|d| d.members.iter())
            .find(|m| crate::node_id_of(m) == id)
            .cloned()
            .or_else(|| self.link.config.name_of(id).map(str::to_owned))
    }

    /// The connection kept in `cached` to a group's `leader`, dialled
    /// anew when the leader changed; None while its name or address is
    /// not known.
    pub(super) fn leader_link<'a>(
        &self,
        cached: &'a mut Option<(NodeId, Connection)>,
        leader: NodeId,
    ) -> Option<&'a mut Connection> {
        if cached.as_ref().is_none_or(|(to, _)| *to != leader) {
            let (name, addr) = (self.name_of(leader)?, self.address_of(leader)?);
            *cached = Some((leader, Connection::new(Arc::clone(&self.link), &name, addr)));
        }
        cached.as_mut().map(|(_, c)| c)
    }

    /// Hands stream consumers' stored offsets to `group`'s leader, in the
    /// background, until none are left (see [`Replica::store_offset`]).
    /// The stream protocol does not answer a StoreOffset: offsets the
    /// leader could not be reached for are dropped, and a consumer stores
    /// again as it goes.
    pub(super) async fn forward_offsets(&self, replica: &Replica) {
        let mut conn: Option<(NodeId, Connection)> = None;
        loop {
            let offsets: Vec<(String, u64)> = {
                let mut waiting = replica.offsets_to_forward.lock();
                if waiting.is_empty() {
                    replica.forwarding.store(false, Ordering::Release);
                    return;
                }
                waiting.drain().collect()
            };
            let leader = self
                .group(&replica.group)
                .and_then(|g| g.raft.metrics().borrow().current_leader);
            let Some(leader) = leader else {
                tracing::debug!(group = replica.group, "no leader to store offsets with");
                continue;
            };
            let Some(c) = self.leader_link(&mut conn, leader) else {
                continue;
            };
            let request = Request::QueueMembers {
                group: replica.group.clone(),
                op: GroupOp::StoreOffsets(offsets),
            };
            match c.call(&request, Duration::from_secs(5)).await {
                Ok(Response::QueueMembers(Ok(_))) => {}
                other => {
                    tracing::debug!(group = replica.group, "storing offsets: {other:?}");
                    conn = None;
                }
            }
        }
    }

    /// Makes `op` on this node's replica of `group` (see [`GroupOp`]).
    /// Returns whether anything changed (false: it was already so).
    pub async fn group_op(
        &self,
        group: &str,
        op: GroupOp,
        deadline: Instant,
    ) -> Result<bool, GroupOpError> {
        let Some(g) = self.group(group) else {
            return Err(GroupOpError::NotLeader(None));
        };
        if op == GroupOp::Elect {
            if self.link.draining() {
                return Err(GroupOpError::Failed(
                    "this node is drained (maintenance mode): it takes no leadership".into(),
                ));
            }
            return match g.raft.trigger().elect().await {
                Ok(()) => Ok(true),
                Err(e) => Err(GroupOpError::Failed(e.to_string())),
            };
        }
        let m = g.raft.metrics().borrow().clone();
        if m.state != ServerState::Leader {
            return Err(GroupOpError::NotLeader(
                m.current_leader.and_then(|l| self.name_of(l)),
            ));
        }
        if let GroupOp::StoreOffsets(offsets) = op {
            return g
                .replica
                .store_offsets_here(offsets)
                .map(|()| true)
                .map_err(|e| GroupOpError::Failed(e.to_string()));
        }
        let membership = m.membership_config.membership().clone();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        if !voters.contains(&self.link.config.node_id()) {
            // A leader that removed itself leads only until that change
            // commits, and openraft must not be given another change by it
            // (a debug assertion of its `append_membership` once took the
            // group's Raft down): the caller asks again, of the next one.
            return Err(GroupOpError::NotLeader(None));
        }
        match op {
            GroupOp::AddVoter(node) => {
                let id = crate::node_id_of(&node);
                if voters.contains(&id) {
                    return Ok(false);
                }
                let node_info = BasicNode::new(self.recorded_address(id));
                tracing::info!(group, "adding {node} to the queue's group as a learner");
                let added =
                    tokio::time::timeout_at(deadline, g.raft.add_learner(id, node_info, true))
                        .await;
                write_result(added)?;
                tracing::info!(group, "{node} caught up: making it a voter");
                let ids = BTreeSet::from([id]);
                let promoted = tokio::time::timeout_at(
                    deadline,
                    g.raft
                        .change_membership(ChangeMembers::AddVoterIds(ids), false),
                )
                .await;
                write_result(promoted)?;
                Ok(true)
            }
            GroupOp::RemoveVoter(node) => {
                let id = crate::node_id_of(&node);
                if membership.get_node(&id).is_none() {
                    return Ok(false);
                }
                if voters.len() == 1 && voters.contains(&id) {
                    return Err(GroupOpError::Invalid(format!(
                        "node '{node}' is the queue's last member"
                    )));
                }
                let ids = BTreeSet::from([id]);
                let change = if voters.contains(&id) {
                    ChangeMembers::RemoveVoters(ids)
                } else {
                    ChangeMembers::RemoveNodes(ids)
                };
                tracing::info!(group, "removing {node} from the queue's group");
                let removed =
                    tokio::time::timeout_at(deadline, g.raft.change_membership(change, false))
                        .await;
                write_result(removed)?;
                Ok(true)
            }
            GroupOp::TransferLeader(node) => {
                let id = crate::node_id_of(&node);
                if id == self.link.config.node_id() {
                    return Ok(false);
                }
                if !voters.contains(&id) {
                    return Err(GroupOpError::Invalid(format!(
                        "node '{node}' is not a member of the queue"
                    )));
                }
                self.transfer(&g, &node, deadline).await
            }
            GroupOp::Elect | GroupOp::StoreOffsets(_) => Ok(false),
        }
    }

    /// Moves the leadership of `g` (led by this node) to `to` (see the
    /// module docs for why this is how).
    async fn transfer(
        &self,
        g: &Arc<Group>,
        to: &str,
        deadline: Instant,
    ) -> Result<bool, GroupOpError> {
        let me = self.link.config.node_id();
        let target = crate::node_id_of(to);
        g.paused.store(true, Ordering::Release);
        g.raft.runtime_config().heartbeat(false);
        let result = self.await_transfer(g, to, target, deadline).await;
        g.raft.runtime_config().heartbeat(true);
        g.paused.store(false, Ordering::Release);
        // What was held goes out now (or is nacked by the step-down).
        g.replica.wake.notify_one();
        let leader = g.raft.metrics().borrow().current_leader;
        tracing::info!(
            vhost = g.def.vhost,
            queue = g.def.name,
            "leadership transfer to {to}: {}",
            match (&result, leader) {
                (Ok(_), Some(l)) if l == target => "done".to_owned(),
                (Ok(_), Some(l)) if l == me => "this node still leads".to_owned(),
                (Ok(_), _) => "another member was elected".to_owned(),
                (Err(e), _) => e.to_string(),
            }
        );
        result
    }

    async fn await_transfer(
        &self,
        g: &Arc<Group>,
        to: &str,
        target: NodeId,
        deadline: Instant,
    ) -> Result<bool, GroupOpError> {
        let me = self.link.config.node_id();
        // openraft's followers hold the lease for `election_timeout_max`.
        let lease = Duration::from_millis(g.raft.config().election_timeout_max + 50);
        let mut metrics = g.raft.metrics();
        let mut lease_from: Option<Instant> = None;
        let mut next_ask = Instant::now();
        let addr = self.address_of(target);
        let mut conn = addr.map(|a| Connection::new(Arc::clone(&self.link), to, a));
        loop {
            let now = Instant::now();
            let (leader, caught_up) = {
                let m = metrics.borrow_and_update();
                let last = m.last_log_index;
                let caught_up = m
                    .replication
                    .as_ref()
                    .is_some_and(|r| r.values().all(|matched| matched.map(|l| l.index) == last));
                (m.current_leader, caught_up)
            };
            match leader {
                Some(l) if l == target => return Ok(true),
                Some(l) if l != me => {
                    return Err(GroupOpError::Failed(format!(
                        "another member than {to} was elected"
                    )))
                }
                // None: this node granted a candidate its vote (the
                // target, usually); its election ends shortly.
                _ => {}
            }
            if now >= deadline {
                return Err(GroupOpError::Failed(format!(
                    "{to} was not elected in time"
                )));
            }
            if lease_from.is_none() && caught_up {
                // The last append every follower got is behind us: the
                // lease runs out from here.
                lease_from = Some(now);
                next_ask = now + lease;
            }
            if lease_from.is_some() && now >= next_ask {
                next_ask = now + Duration::from_millis(300);
                let request = Request::QueueMembers {
                    group: g.def.group.clone(),
                    op: GroupOp::Elect,
                };
                if let Some(c) = conn.as_mut() {
                    if let Err(e) = c.call(&request, Duration::from_millis(500)).await {
                        tracing::debug!("asking {to} to stand: {e}");
                    }
                }
            }
            let pause = tokio::time::sleep_until(if lease_from.is_some() {
                next_ask
            } else {
                now + Duration::from_millis(20)
            });
            tokio::select! {
                r = metrics.changed() => if r.is_err() {
                    return Err(GroupOpError::Failed("the queue's group stopped".into()));
                },
                _ = pause => {}
            }
        }
    }
}

type WriteResult = Result<
    Result<
        openraft::raft::ClientWriteResponse<QueueTypeConfig>,
        RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>,
    >,
    tokio::time::error::Elapsed,
>;

fn write_result(r: WriteResult) -> Result<(), GroupOpError> {
    match r {
        Err(_) => Err(GroupOpError::Failed(
            "the queue's membership change was not committed in time".into(),
        )),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => {
            Err(GroupOpError::NotLeader(None))
        }
        Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => {
            Err(GroupOpError::Invalid(e.to_string()))
        }
        Ok(Err(e)) => Err(GroupOpError::Failed(e.to_string())),
    }
}

/// Plans leader moves so every node leads about as many queues: each
/// queue `(key, leader, members)` led by a node that leads at least two
/// more than its least loaded member moves there, pass after pass until
/// no move helps (RabbitMQ's `rebalance` takes the same greedy approach).
/// `counts` holds the leaders per node and is updated.
pub fn plan_moves(
    queues: &[(usize, String, Vec<String>)],
    counts: &mut BTreeMap<String, usize>,
) -> Vec<(usize, String)> {
    let mut leaders: Vec<String> = queues.iter().map(|(_, l, _)| l.clone()).collect();
    let mut moves: BTreeMap<usize, String> = BTreeMap::new();
    loop {
        let mut moved = false;
        for (i, (key, _, members)) in queues.iter().enumerate() {
            let leader = &leaders[i];
            let here = counts.get(leader).copied().unwrap_or(0);
            let Some(best) = members
                .iter()
                .filter(|m| *m != leader)
                .min_by_key(|m| (counts.get(*m).copied().unwrap_or(0), (*m).clone()))
            else {
                continue;
            };
            let there = counts.get(best).copied().unwrap_or(0);
            if here > there + 1 {
                *counts.entry(leader.clone()).or_default() -= 1;
                *counts.entry(best.clone()).or_default() += 1;
                moves.insert(*key, best.clone());
                leaders[i] = best.clone();
                moved = true;
            }
        }
        if !moved {
            break;
        }
    }
    moves.into_iter().collect()
}

impl Cluster {
    fn queue_groups_def(&self, vhost: &str, name: &str) -> Result<QuorumDef, QueueMemberError> {
        if let Some(def) = self.queue_groups.def_of(vhost, name) {
            return Ok(def);
        }
        let exists = self
            .queue_groups
            .broker
            .vhost(vhost)
            .is_some_and(|v| v.has_queue(name));
        if exists {
            Err(QueueMemberError::Invalid(format!(
                "queue '{name}' in vhost '{vhost}' is not a quorum queue"
            )))
        } else {
            Err(QueueMemberError::NotFound(format!(
                "no queue '{name}' in vhost '{vhost}'"
            )))
        }
    }

    /// Asks the leader of `def`'s group to make `op`, following the
    /// leader it names, trying the members in turn, until `deadline`.
    async fn group_call(
        &self,
        def: &QuorumDef,
        op: GroupOp,
        deadline: Instant,
    ) -> Result<bool, QueueMemberError> {
        let me = self.link.config.node_name.clone();
        let mut hint = self
            .queue_groups
            .broker
            .vhost(&def.vhost)
            .and_then(|v| v.quorum_info(&def.name))
            .and_then(|i| i.leader);
        let mut turn = 0usize;
        let mut last_error = "no leader of the queue's group answered".to_owned();
        loop {
            if Instant::now() >= deadline {
                return Err(QueueMemberError::Unavailable(format!(
                    "queue '{}' in vhost '{}': {last_error}",
                    def.name, def.vhost
                )));
            }
            let target = match hint.take() {
                Some(h) => h,
                None => {
                    turn += 1;
                    match def.members.get(turn % def.members.len().max(1)) {
                        Some(m) => m.clone(),
                        None => me.clone(),
                    }
                }
            };
            let answer = if target == me {
                self.queue_groups
                    .group_op(&def.group, op.clone(), deadline)
                    .await
            } else {
                let request = Request::QueueMembers {
                    group: def.group.clone(),
                    op: op.clone(),
                };
                match self
                    .forward_request(crate::node_id_of(&target), &request, deadline)
                    .await
                {
                    Ok(Response::QueueMembers(r)) => r,
                    Ok(_) => Err(GroupOpError::NotLeader(None)),
                    Err(e) => {
                        last_error = format!("{target}: {e}");
                        Err(GroupOpError::NotLeader(None))
                    }
                }
            };
            match answer {
                Ok(changed) => return Ok(changed),
                Err(GroupOpError::Invalid(e)) => return Err(QueueMemberError::Invalid(e)),
                Err(GroupOpError::Failed(e)) => {
                    return Err(QueueMemberError::Unavailable(format!(
                        "queue '{}' in vhost '{}': {e}",
                        def.name, def.vhost
                    )))
                }
                Err(GroupOpError::NotLeader(Some(l))) if l != target => hint = Some(l),
                Err(GroupOpError::NotLeader(_)) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// `rabbitmq-queues add_member`: adds a member on `node` to quorum
    /// queue `name` in `vhost`; answers once it votes.
    pub async fn add_queue_member(
        &self,
        vhost: &str,
        name: &str,
        node: &str,
    ) -> Result<(), QueueMemberError> {
        let deadline = Instant::now() + CHANGE_TIMEOUT;
        let def = self.queue_groups_def(vhost, name)?;
        if !self.members().iter().any(|m| m.name == node) {
            return Err(QueueMemberError::Invalid(format!(
                "node '{node}' is not a member of the cluster"
            )));
        }
        if def.members.iter().any(|m| m == node) {
            // Recorded already: a previous request may have stopped before
            // the group added it. Finish that, or say it is done.
            let changed = self
                .group_call(&def, GroupOp::AddVoter(node.to_owned()), deadline)
                .await?;
            return match (
                changed,
                check_member_change(&def.members, name, vhost, node, true),
            ) {
                (false, Err(e)) => Err(e.into_member_error()),
                _ => Ok(()),
            };
        }
        self.propose_async(MetaCommand::QueueMember {
            vhost: vhost.to_owned(),
            name: name.to_owned(),
            node: node.to_owned(),
            add: true,
        })
        .await?;
        let def = self.queue_groups_def(vhost, name)?;
        self.group_call(&def, GroupOp::AddVoter(node.to_owned()), deadline)
            .await?;
        Ok(())
    }

    /// `rabbitmq-queues delete_member`: removes the member on `node` from
    /// quorum queue `name` in `vhost`; that node's replica and its data
    /// are removed.
    pub async fn delete_queue_member(
        &self,
        vhost: &str,
        name: &str,
        node: &str,
    ) -> Result<(), QueueMemberError> {
        let deadline = Instant::now() + CHANGE_TIMEOUT;
        let def = self.queue_groups_def(vhost, name)?;
        check_member_change(&def.members, name, vhost, node, false)
            .map_err(|e| e.into_member_error())?;
        self.group_call(&def, GroupOp::RemoveVoter(node.to_owned()), deadline)
            .await?;
        self.propose_async(MetaCommand::QueueMember {
            vhost: vhost.to_owned(),
            name: name.to_owned(),
            node: node.to_owned(),
            add: false,
        })
        .await?;
        Ok(())
    }

    fn this(&self) -> Result<Arc<Cluster>, QueueMemberError> {
        self.arc()
            .ok_or_else(|| QueueMemberError::Unavailable("the node is stopping".into()))
    }

    /// Runs `change` on each queue, [`PARALLEL`] at a time.
    async fn each_queue<F, Fut>(
        &self,
        defs: Vec<QuorumDef>,
        change: F,
    ) -> Result<Vec<QueueChange>, QueueMemberError>
    where
        F: Fn(Arc<Cluster>, QuorumDef) -> Fut,
        Fut: std::future::Future<Output = Result<(), QueueMemberError>> + Send + 'static,
    {
        let this = self.this()?;
        let mut results = Vec::new();
        for chunk in defs.chunks(PARALLEL) {
            let mut tasks = tokio::task::JoinSet::new();
            for def in chunk {
                let def = def.clone();
                let work = change(Arc::clone(&this), def.clone());
                tasks.spawn(async move { (def, work.await) });
            }
            while let Some(done) = tasks.join_next().await {
                let Ok((def, result)) = done else { continue };
                let members = self
                    .queue_groups
                    .def_of(&def.vhost, &def.name)
                    .map_or(def.members.clone(), |d| d.members);
                results.push(QueueChange {
                    vhost: def.vhost,
                    name: def.name,
                    members,
                    error: result.err().map(|e| e.to_string()),
                });
            }
        }
        results.sort_by(|a, b| (&a.vhost, &a.name).cmp(&(&b.vhost, &b.name)));
        Ok(results)
    }

    /// `rabbitmq-queues grow <node> <all|even>`: adds a member on `node`
    /// to every quorum queue (of `vhost`, if given) it is not a member
    /// of (`Even`: those with an even number of members).
    pub async fn grow_queues(
        &self,
        node: &str,
        strategy: GrowStrategy,
        vhost: Option<&str>,
    ) -> Result<Vec<QueueChange>, QueueMemberError> {
        if !self.members().iter().any(|m| m.name == node) {
            return Err(QueueMemberError::Invalid(format!(
                "node '{node}' is not a member of the cluster"
            )));
        }
        let defs: Vec<QuorumDef> = self
            .queue_groups
            .defs()
            .into_iter()
            .filter(|d| vhost.is_none_or(|v| d.vhost == v))
            .filter(|d| !d.members.iter().any(|m| m == node))
            .filter(|d| strategy == GrowStrategy::All || d.members.len() % 2 == 0)
            .collect();
        let node = node.to_owned();
        self.each_queue(defs, move |c, d| {
            let node = node.clone();
            async move { c.add_queue_member(&d.vhost, &d.name, &node).await }
        })
        .await
    }

    /// `rabbitmq-queues shrink <node>`: removes the member on `node` from
    /// every quorum queue (of `vhost`, if given) where it is not the last
    /// one; those where it is are reported, unchanged.
    pub async fn shrink_queues(
        &self,
        node: &str,
        vhost: Option<&str>,
    ) -> Result<Vec<QueueChange>, QueueMemberError> {
        let defs: Vec<QuorumDef> = self
            .queue_groups
            .defs()
            .into_iter()
            .filter(|d| vhost.is_none_or(|v| d.vhost == v))
            .filter(|d| d.members.iter().any(|m| m == node))
            .collect();
        let node = node.to_owned();
        self.each_queue(defs, move |c, d| {
            let node = node.clone();
            async move { c.delete_queue_member(&d.vhost, &d.name, &node).await }
        })
        .await
    }

    /// Leaders per node of the selected queues, as this node knows them.
    fn leader_counts(&self, defs: &[QuorumDef]) -> BTreeMap<String, usize> {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for d in defs {
            for m in &d.members {
                counts.entry(m.clone()).or_default();
            }
            if let Some(l) = self.leader_of(d) {
                *counts.entry(l).or_default() += 1;
            }
        }
        counts
    }

    fn leader_of(&self, def: &QuorumDef) -> Option<String> {
        self.queue_groups
            .broker
            .vhost(&def.vhost)
            .and_then(|v| v.quorum_info(&def.name))
            .and_then(|i| i.leader)
    }

    /// `rabbitmq-queues rebalance quorum`: moves leaders of the quorum
    /// queues `select` picks (by vhost and name) so each node leads about
    /// as many as the others (see [`plan_moves`]), moving none to the
    /// nodes in `avoid` (drained ones, which would refuse).
    pub async fn rebalance_queues(
        &self,
        select: impl Fn(&str, &str) -> bool,
        avoid: &[String],
    ) -> Result<Rebalance, QueueMemberError> {
        let defs: Vec<QuorumDef> = self
            .queue_groups
            .defs()
            .into_iter()
            .filter(|d| select(&d.vhost, &d.name))
            .collect();
        let before = self.leader_counts(&defs);
        let queues: Vec<(usize, String, Vec<String>)> = defs
            .iter()
            .enumerate()
            .filter_map(|(i, d)| {
                let leader = self.leader_of(d)?;
                let members = d
                    .members
                    .iter()
                    .filter(|m| **m == leader || !avoid.contains(m))
                    .cloned()
                    .collect();
                Some((i, leader, members))
            })
            .collect();
        let mut planned = before.clone();
        let moves = plan_moves(&queues, &mut planned);
        let this = self.this()?;
        let mut report = Vec::new();
        for chunk in moves.chunks(PARALLEL) {
            let mut tasks = tokio::task::JoinSet::new();
            for (i, to) in chunk {
                let Some(def) = defs.get(*i).cloned() else {
                    continue;
                };
                let from = self.leader_of(&def).unwrap_or_default();
                let (c, to) = (Arc::clone(&this), to.clone());
                tasks.spawn(async move {
                    let deadline = Instant::now() + TRANSFER_TIMEOUT;
                    let r = c
                        .group_call(&def, GroupOp::TransferLeader(to.clone()), deadline)
                        .await;
                    LeaderMove {
                        vhost: def.vhost,
                        name: def.name,
                        from,
                        to,
                        error: r.err().map(|e| e.to_string()),
                    }
                });
            }
            while let Some(done) = tasks.join_next().await {
                if let Ok(m) = done {
                    report.push(m);
                }
            }
        }
        // Leaders reach this node's listing through the group (members)
        // or the metadata log (others): wait for what the moves did.
        let wait_until = Instant::now() + Duration::from_secs(3);
        loop {
            let settled = report.iter().filter(|m| m.error.is_none()).all(|m| {
                self.queue_groups
                    .broker
                    .vhost(&m.vhost)
                    .and_then(|v| v.quorum_info(&m.name))
                    .and_then(|i| i.leader)
                    .as_deref()
                    == Some(m.to.as_str())
            });
            if settled || Instant::now() >= wait_until {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        report.sort_by(|a, b| (&a.vhost, &a.name).cmp(&(&b.vhost, &b.name)));
        Ok(Rebalance {
            after: self.leader_counts(&defs),
            before,
            moves: report,
        })
    }
}

impl Cluster {
    /// Drains this node's leaderships (`rabbitmq-upgrade drain`): hands
    /// each quorum queue and stream it leads to another member, the one
    /// that leads fewest of them among those running and not drained
    /// (the next if that one cannot take it), and reports each move.
    /// Call it once the link
    /// is drained ([`crate::network::Link::set_draining`]), so no
    /// leadership comes back meanwhile.
    pub async fn drain_leaders(&self) -> Result<Vec<LeaderMove>, QueueMemberError> {
        let me = self.link.config.node_name.clone();
        let defs: Vec<QuorumDef> = self.queue_groups.defs();
        let mine: Vec<QuorumDef> = defs
            .iter()
            .filter(|d| self.leader_of(d).as_deref() == Some(me.as_str()))
            .cloned()
            .collect();
        // A member recorded as drained would refuse the leadership.
        let broker = &self.queue_groups.broker;
        let running: Vec<String> = self
            .status()
            .members
            .into_iter()
            .filter(|m| m.running && !m.this_node && !broker.node_drained(&m.name))
            .map(|m| m.name)
            .collect();
        let mut counts = self.leader_counts(&defs);
        let this = self.this()?;
        let mut report = Vec::new();
        for chunk in mine.chunks(PARALLEL) {
            let mut tasks = tokio::task::JoinSet::new();
            for def in chunk {
                // Fewest leaderships first; ties by name, the same order on
                // every run.
                let mut to: Vec<String> = def
                    .members
                    .iter()
                    .filter(|m| running.contains(m))
                    .cloned()
                    .collect();
                to.sort_by_key(|m| (counts.get(m).copied().unwrap_or(0), m.clone()));
                if let Some(first) = to.first() {
                    *counts.entry(first.clone()).or_default() += 1;
                }
                let (c, def, from) = (Arc::clone(&this), def.clone(), me.clone());
                tasks.spawn(async move {
                    let mut error =
                        Some("no other member of it is running and not drained".to_owned());
                    let mut last = String::new();
                    for target in to {
                        let deadline = Instant::now() + TRANSFER_TIMEOUT;
                        let op = GroupOp::TransferLeader(target.clone());
                        error = c
                            .group_call(&def, op, deadline)
                            .await
                            .err()
                            .map(|e| e.to_string());
                        last = target;
                        if error.is_none() {
                            break;
                        }
                    }
                    LeaderMove {
                        vhost: def.vhost,
                        name: def.name,
                        from,
                        to: last,
                        error,
                    }
                });
            }
            while let Some(done) = tasks.join_next().await {
                if let Ok(m) = done {
                    report.push(m);
                }
            }
        }
        report.sort_by(|a, b| (&a.vhost, &a.name).cmp(&(&b.vhost, &b.name)));
        Ok(report)
    }
}

trait IntoMemberError {
    fn into_member_error(self) -> QueueMemberError;
}

impl IntoMemberError for BrokerError {
    fn into_member_error(self) -> QueueMemberError {
        QueueMemberError::from(MetaError::Broker(self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
        pairs.iter().map(|(n, c)| (n.to_string(), *c)).collect()
    }

    #[test]
    fn six_queues_led_by_one_node_spread_two_each() {
        let members: Vec<String> = ["n1", "n2", "n3"].map(String::from).to_vec();
        let queues: Vec<(usize, String, Vec<String>)> = (0..6)
            .map(|i| (i, "n1".to_owned(), members.clone()))
            .collect();
        let mut c = counts(&[("n1", 6), ("n2", 0), ("n3", 0)]);
        let moves = plan_moves(&queues, &mut c);
        assert_eq!(moves.len(), 4, "{moves:?}");
        assert_eq!(c, counts(&[("n1", 2), ("n2", 2), ("n3", 2)]));
    }

    #[test]
    fn balanced_queues_and_single_members_stay() {
        let q = |i: usize, l: &str, m: &[&str]| {
            (i, l.to_owned(), m.iter().map(|s| s.to_string()).collect())
        };
        let queues = vec![
            q(0, "n1", &["n1", "n2"]),
            q(1, "n2", &["n1", "n2"]),
            q(2, "n1", &["n1"]),
            q(3, "n1", &["n1"]),
        ];
        let mut c = counts(&[("n1", 3), ("n2", 1)]);
        let moves = plan_moves(&queues, &mut c);
        // Queue 0 could move to n2 (3 > 1 + 1): then n1 2, n2 2.
        assert_eq!(moves, vec![(0, "n2".to_owned())]);
        assert_eq!(c, counts(&[("n1", 2), ("n2", 2)]));
    }
}
