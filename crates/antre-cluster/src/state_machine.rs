//! The metadata state machine: committed entries applied to the broker.
//!
//! Every node applies every committed entry, in log order, with
//! [`Broker::apply_meta`], the broker's one deterministic apply function.
//! When the entry was proposed by this node, the result of its apply is
//! handed to the waiting proposer, which answers its client with it.
//!
//! The broker persists what an apply changes itself (definitions,
//! `access.json`; the definitions are synced before `applied.json` is
//! written); this state machine persists, in `applied.json` and the
//! journal after it ([`crate::applied_store`]), the last applied log id,
//! the membership and the owning node of each replicated queue. The owner
//! of a new queue is written there *before* the entry is applied, and the
//! last applied id after, so a crash in between re-applies the entry
//! (declarations are idempotent) and still knows the owner. The snapshot
//! is the whole replicated metadata ([`MetaSnapshot`], JSON), kept in
//! `snapshot.json`.

use std::collections::{BTreeMap, HashMap};
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use antre_broker::cluster::{MetaCommand, MetaError, MetaOutcome, MetaSnapshot, QuorumDef};
use antre_broker::Broker;
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, LogId, RaftSnapshotBuilder, SnapshotMeta, StorageError, StorageIOError,
    StoredMembership,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::applied_store::{AppliedStore, Tracked};
use crate::log_store::SnapshotFloor;
use crate::queue_group::QueueGroups;
use crate::transient::Transient;
use crate::{ClusterError, Member, NodeId, TypeConfig};

/// Something the server does after every applied change (closing the
/// connections of a deleted user, say), on every node.
pub type AppliedHook = Arc<dyn Fn(&MetaCommand) + Send + Sync>;

/// The hooks of a node, shared with its state machine.
pub type AppliedHooks = Arc<Mutex<Vec<AppliedHook>>>;

/// A proposer waiting for its own node's apply of its entry.
pub type Waiters = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<MetaOutcome, MetaError>>>>>;

/// What `applied.json` holds.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Applied {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, Member>,
    /// (vhost, queue, owning node) of every replicated queue.
    owners: Vec<(String, String, String)>,
    /// Every quorum queue's group (members, id).
    #[serde(default)]
    quorum: Vec<QuorumDef>,
    /// Nodes' listeners of other protocols: (node, protocol, address).
    /// Kept by the broker in memory only, so here for a restart (which
    /// does not apply again the entries that recorded them).
    #[serde(default)]
    listeners: Vec<(String, String, String)>,
    /// The nodes recorded as drained, kept for the same reason.
    #[serde(default)]
    drained: Vec<String>,
    /// The feature flags enabled, kept for the same reason.
    #[serde(default)]
    feature_flags: Vec<String>,
    /// Each quorum queue's and stream's leader as the metadata last
    /// recorded it (`QueueLeader`): (vhost, queue, leader, its term). A
    /// node that is no member of the group knows the leader only from
    /// there; without this a restart showed the declaring node until the
    /// next leadership change.
    #[serde(default)]
    leaders: Vec<(String, String, String, u64)>,
    /// What the broker keeps in memory only ([`crate::transient`]).
    #[serde(default)]
    transient: Transient,
    /// The checkpoint's epoch: its journal carries the same
    /// ([`crate::applied_store`]; 0 in files written before the journal).
    #[serde(default)]
    epoch: u64,
}

/// A queue's entry of one of the state's maps, as a save changed it
/// ((vhost, queue), and its value now: None if removed).
type Change<V> = ((String, String), Option<V>);

/// What one save changed, as the journal after `applied.json` records it
/// ([`crate::applied_store`]): the keys of the maps that changed (None:
/// removed) and the small parts whole.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Changes {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, Member>,
    owners: Vec<Change<String>>,
    quorum: Vec<Change<QuorumDef>>,
    leaders: Vec<Change<(String, u64)>>,
    listeners: Vec<(String, String, String)>,
    drained: Vec<String>,
    feature_flags: Vec<String>,
    /// What changed the transient record, in order, as
    /// [`Transient::applied`] took it (the command, whether the broker
    /// took it, whether it declared a new queue): applied again when the
    /// journal is read, which gives the same record.
    transient: Vec<(MetaCommand, bool, bool)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, Member>,
    data: Vec<u8>,
}

struct State {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, Member>,
    owners: Tracked<(String, String), String>,
    quorum: Tracked<(String, String), QuorumDef>,
    /// (vhost, queue) -> (leader, term), see [`Applied::leaders`].
    leaders: Tracked<(String, String), (String, u64)>,
    /// What the broker keeps in memory only ([`crate::transient`]): a node
    /// that restarts or installs a snapshot gives it back to its broker.
    transient: Transient,
    /// What changed `transient` since the last save (see
    /// [`Changes::transient`]).
    transient_changes: Vec<(MetaCommand, bool, bool)>,
    /// Where the state is saved.
    store: AppliedStore,
    /// The next save writes the whole state (a snapshot replaced it).
    checkpoint_due: bool,
    snapshot: Option<StoredSnapshot>,
}

/// The state machine; clones share it (one is also the snapshot builder).
#[derive(Clone)]
pub struct StateMachine {
    broker: Arc<Broker>,
    me: NodeId,
    node_name: String,
    dir: PathBuf,
    state: Arc<Mutex<State>>,
    waiters: Waiters,
    hooks: AppliedHooks,
    snapshots_built: Arc<AtomicU64>,
    /// Told of each snapshot once it is on disk: the log's purges wait
    /// for it ([`crate::log_store::SnapshotFloor`]).
    pub(crate) floor: Arc<SnapshotFloor>,
    /// The quorum queue groups this node runs.
    groups: Arc<QueueGroups>,
    /// Held for a whole batch of applies and while a snapshot is built:
    /// openraft builds snapshots on a task of their own, and a snapshot
    /// must see the broker between entries, never in the middle of one.
    applying: Arc<Mutex<()>>,
    /// Set by [`StateMachine::stop`]: nothing is applied any more.
    stopped: Arc<std::sync::atomic::AtomicBool>,
    /// How far this node applied the log (for the data link).
    pub(crate) progress: Arc<MetaProgress>,
}

type StorageResult<T> = Result<T, StorageError<NodeId>>;

fn io_err(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// Runs the broker's (blocking, disk-writing) apply off the async path.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// How far this node applied the metadata log. A forwarded publish
/// carries its forwarding node's [`MetaProgress::seen`]; the queue's node,
/// missing one of the queues it names, waits until its own
/// [`MetaProgress::reached`] that far before it answers that the queue does
/// not exist (a queue declared a moment ago is known on one node before
/// another).
#[derive(Debug)]
pub struct MetaProgress {
    /// The entry being applied, else the last applied: the broker may
    /// already show what it changes.
    seen: AtomicU64,
    /// The last entry whose apply is complete.
    done: tokio::sync::watch::Sender<u64>,
}

impl MetaProgress {
    /// Progress that starts at entry `index` (applied before a restart).
    pub fn new(index: u64) -> MetaProgress {
        MetaProgress {
            seen: AtomicU64::new(index),
            done: tokio::sync::watch::Sender::new(index),
        }
    }

    /// The newest entry whose changes the broker may show.
    pub fn seen(&self) -> u64 {
        self.seen.load(Ordering::Acquire)
    }

    /// The last entry whose apply is complete.
    pub fn done(&self) -> u64 {
        *self.done.borrow()
    }

    /// Waits until the entry at `index` is applied, or `deadline`; returns
    /// whether it was.
    pub async fn reached(&self, index: u64, deadline: tokio::time::Instant) -> bool {
        let mut rx = self.done.subscribe();
        tokio::time::timeout_at(deadline, rx.wait_for(|done| *done >= index))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    fn applying(&self, index: u64) {
        self.seen.fetch_max(index, Ordering::AcqRel);
    }

    pub(crate) fn applied(&self, index: u64) {
        self.applying(index);
        self.done.send_if_modified(|done| {
            let newer = index > *done;
            if newer {
                *done = index;
            }
            newer
        });
    }
}

impl StateMachine {
    /// Opens the state machine of `broker` in `dir`, restoring the owners
    /// of replicated queues into the broker.
    pub fn open(
        dir: &Path,
        broker: Arc<Broker>,
        me: NodeId,
        node_name: &str,
        waiters: Waiters,
        hooks: AppliedHooks,
        groups: Arc<QueueGroups>,
    ) -> Result<StateMachine, ClusterError> {
        let storage = |e: &dyn std::fmt::Display| ClusterError::Storage(e.to_string());
        std::fs::create_dir_all(dir).map_err(|e| storage(&e))?;
        let (store, mut applied, records) =
            AppliedStore::open(dir, |a: &Applied| a.epoch).map_err(|e| storage(&e))?;
        let mut owners: Tracked<(String, String), String> = std::mem::take(&mut applied.owners)
            .into_iter()
            .map(|(v, q, n)| ((v, q), n))
            .collect();
        let mut quorum: Tracked<(String, String), QuorumDef> = std::mem::take(&mut applied.quorum)
            .into_iter()
            .map(|d| ((d.vhost.clone(), d.name.clone()), d))
            .collect();
        let mut leaders: Tracked<(String, String), (String, u64)> =
            std::mem::take(&mut applied.leaders)
                .into_iter()
                .map(|(v, q, leader, term)| ((v, q), (leader, term)))
                .collect();
        for raw in &records {
            let changes: Changes = serde_json::from_slice(raw).map_err(|e| storage(&e))?;
            applied.last_applied = changes.last_applied;
            applied.membership = changes.membership;
            owners.apply_changes(changes.owners);
            quorum.apply_changes(changes.quorum);
            leaders.apply_changes(changes.leaders);
            applied.listeners = changes.listeners;
            applied.drained = changes.drained;
            applied.feature_flags = changes.feature_flags;
            for (command, ok, new_queue) in &changes.transient {
                applied.transient.applied(command, *ok, *new_queue);
            }
        }
        let snapshot: Option<StoredSnapshot> =
            match antre_store::definitions::read(&dir.join("snapshot.json"))
                .map_err(|e| storage(&e))?
            {
                Some(raw) => Some(serde_json::from_slice(&raw).map_err(|e| storage(&e))?),
                None => None,
            };
        broker.set_listeners(applied.listeners);
        broker.set_drained_nodes(applied.drained);
        broker.set_enabled_feature_flags(applied.feature_flags);
        let floor = SnapshotFloor::new(snapshot.as_ref().and_then(|s| s.meta.last_log_id));
        let sm = StateMachine {
            broker,
            me,
            node_name: node_name.to_owned(),
            dir: dir.to_owned(),
            state: Arc::new(Mutex::new(State {
                last_applied: applied.last_applied,
                membership: applied.membership,
                owners,
                quorum,
                leaders,
                transient: applied.transient,
                transient_changes: Vec::new(),
                store,
                // What was read is written again as one checkpoint, so a
                // torn journal tail is never appended to.
                checkpoint_due: true,
                snapshot,
            })),
            waiters,
            hooks,
            groups,
            snapshots_built: Arc::default(),
            floor: Arc::new(floor),
            applying: Arc::default(),
            stopped: Arc::default(),
            progress: Arc::new(MetaProgress::new(
                applied.last_applied.map_or(0, |l| l.index),
            )),
        };
        sm.restore_owners();
        sm.save(&mut sm.state.lock()).map_err(|e| storage(&e))?;
        Ok(sm)
    }

    /// Gives the broker again what it keeps in memory only
    /// ([`crate::transient`]): after a restart, once it knows it is a
    /// cluster node, and after a snapshot is installed.
    pub(crate) fn restore_transient(&self) {
        let _applying = self.applying.lock();
        let state = self.state.lock();
        self.restore_transient_in(&state);
    }

    /// The releases of the exclusive queues this node held before its
    /// restart (see [`crate::transient::Transient::released_by_restart`]).
    pub(crate) fn released_by_restart(&self) -> Vec<MetaCommand> {
        self.state
            .lock()
            .transient
            .released_by_restart(&self.node_name)
    }

    fn restore_transient_in(&self, state: &State) {
        for v in self.broker.vhosts() {
            v.forget_recorded_exclusive();
        }
        for command in state.transient.to_restore(&self.node_name) {
            if let Err(e) = self.broker.apply_meta(command.clone()) {
                tracing::debug!("not restored: {}: {e}", command.describe());
            }
        }
    }

    /// Hands the broker the owner of every replicated queue it has, and
    /// starts this node's quorum queue replicas.
    fn restore_owners(&self) {
        let state = self.state.lock();
        for def in state.quorum.values() {
            self.groups.declared(def);
        }
        for ((vhost, queue), node) in state.owners.iter() {
            if let Some(v) = self.broker.vhost(vhost) {
                if v.has_queue(queue) {
                    let remote = (*node != self.node_name).then_some(node.as_str());
                    v.set_remote_owner(queue, remote);
                }
            }
        }
        // A member learns its leader from its own replica; a node that is
        // none from the metadata, whose entries it does not apply again.
        for (key, (leader, term)) in state.leaders.iter() {
            let Some(def) = state.quorum.get(key) else {
                continue;
            };
            // A leader removed from the group since is stale.
            let useful = !def.members.contains(&self.node_name) && def.members.contains(leader);
            match self.broker.vhost(&key.0) {
                Some(v) if useful && v.has_queue(&key.1) => {
                    v.set_quorum_leader(&key.1, leader, *term);
                    let remote = (*leader != self.node_name).then_some(leader.as_str());
                    v.set_remote_owner(&key.1, remote);
                }
                _ => {}
            }
        }
    }

    /// The group of a quorum queue or a stream about to be declared by the
    /// metadata entry at `index` (None for other queue types): its members
    /// are the declaring node then the next voters by name, wrapping
    /// around, `x-quorum-initial-group-size` (a stream's
    /// `x-initial-cluster-size`) of them (3 by default, at most every
    /// voter), as RabbitMQ starts with the declaring node. Every node
    /// computes the same from the same log.
    fn quorum_def(
        &self,
        state: &State,
        vhost: &str,
        name: &str,
        owner: &str,
        arguments: &antre_amqp::FieldTable,
        index: u64,
    ) -> Option<QuorumDef> {
        // A stream's contents are replicated the same way, by a group of
        // its own (`x-initial-cluster-size` members).
        let size_argument = match arguments
            .get("x-queue-type")
            .and_then(antre_amqp::FieldValue::as_str)
        {
            Some("quorum") => "x-quorum-initial-group-size",
            Some("stream") => "x-initial-cluster-size",
            _ => return None,
        };
        let size = arguments
            .get(size_argument)
            .and_then(antre_amqp::FieldValue::as_i64)
            .filter(|n| *n > 0)
            .unwrap_or(3);
        // By the names the membership records, the same on every node: a
        // node's peer list may leave out nodes that joined later (one
        // started with --cluster-join lists only itself), and picking from
        // it made such a node give a new queue other members than the
        // rest of the cluster did (itself alone, a group of one).
        let membership = state.membership.membership();
        let cfg = &self.groups.link.config;
        let voters: Vec<String> = membership
            .voter_ids()
            .filter_map(|id| {
                membership
                    .get_node(&id)?
                    .name_in(id, cfg)
                    .map(str::to_owned)
            })
            .collect();
        let members = self.groups.pick_members(owner, voters, size as usize);
        Some(QuorumDef {
            vhost: vhost.to_owned(),
            name: name.to_owned(),
            members,
            joined: Vec::new(),
            group: crate::queue_group::group_id(vhost, name, index),
        })
    }

    fn save(&self, state: &mut State) -> Result<(), std::io::Error> {
        // What the entries applied so far changed in the broker's durable
        // definitions must be on disk before `last_applied` says they were
        // applied: the broker only appends those changes and leaves them
        // to its group commit, so a kill -9 in between once lost a queue
        // on one node for good (its restart did not apply the entry again)
        // while the others kept it.
        self.broker.sync_definitions().map_err(io_err)?;
        if state.checkpoint_due || state.store.checkpoint_due() {
            let applied = Applied {
                last_applied: state.last_applied,
                membership: state.membership.clone(),
                owners: state
                    .owners
                    .iter()
                    .map(|((v, q), n)| (v.clone(), q.clone(), n.clone()))
                    .collect(),
                quorum: state.quorum.values().cloned().collect(),
                leaders: state
                    .leaders
                    .iter()
                    .map(|((v, q), (leader, term))| (v.clone(), q.clone(), leader.clone(), *term))
                    .collect(),
                listeners: self.broker.listeners(),
                drained: self.broker.drained_nodes(),
                feature_flags: self.broker.enabled_feature_flags(),
                transient: state.transient.clone(),
                epoch: state.store.next_epoch(),
            };
            let json = serde_json::to_vec(&applied).map_err(io_err)?;
            state.store.checkpoint(&json)?;
            state.owners.clear_changes();
            state.quorum.clear_changes();
            state.leaders.clear_changes();
            state.transient_changes.clear();
            state.checkpoint_due = false;
            return Ok(());
        }
        let changes = Changes {
            last_applied: state.last_applied,
            membership: state.membership.clone(),
            owners: state.owners.take_changes(),
            quorum: state.quorum.take_changes(),
            leaders: state.leaders.take_changes(),
            listeners: self.broker.listeners(),
            drained: self.broker.drained_nodes(),
            feature_flags: self.broker.enabled_feature_flags(),
            transient: std::mem::take(&mut state.transient_changes),
        };
        let json = serde_json::to_vec(&changes).map_err(io_err)?;
        state.store.append(&json)
    }

    /// Applies one proposal; keeps the owners of queues in step.
    fn apply_one(
        &self,
        command: MetaCommand,
        index: u64,
    ) -> Result<Result<MetaOutcome, MetaError>, std::io::Error> {
        if let MetaCommand::QueueMember { .. } = &command {
            return self.apply_queue_member(command);
        }
        let mut new_queue = false;
        let queue_key = match &command {
            MetaCommand::DeclareQueue {
                vhost,
                name,
                owner,
                arguments,
                ..
            } => {
                let key = (vhost.clone(), name.clone());
                let exists = self.broker.vhost(vhost).is_some_and(|v| v.has_queue(name));
                let mut state = self.state.lock();
                new_queue = !exists && !state.owners.contains_key(&key);
                if new_queue {
                    // Recorded before the apply: see the module docs.
                    state.owners.insert(key.clone(), owner.clone());
                    // And given to the broker before the queue appears in
                    // it: in between, a publish through this node would be
                    // confirmed into its idle copy of another node's queue.
                    // A quorum queue's leader replaces it once known.
                    if *owner != self.node_name {
                        if let Some(v) = self.broker.vhost(vhost) {
                            v.set_remote_owner(name, Some(owner));
                        }
                    }
                    if let Some(def) =
                        self.quorum_def(&state, vhost, name, owner, &arguments.0, index)
                    {
                        // Known before the broker creates the queue, which
                        // a member's group then gives its replication at
                        // once (`QueueGroups::created`).
                        self.groups.remember(&def);
                        state.quorum.insert(key.clone(), def);
                    }
                    self.save(&mut state)?;
                }
                Some(key)
            }
            MetaCommand::DeleteQueue { vhost, name, .. } => Some((vhost.clone(), name.clone())),
            _ => None,
        };
        let led = match &command {
            MetaCommand::QueueLeader { vhost, name, .. } => Some((vhost.clone(), name.clone())),
            _ => None,
        };
        let deleted_vhost = match &command {
            MetaCommand::DeleteVhost { name } => Some(name.clone()),
            _ => None,
        };
        let for_transient = Transient::concerns(&command).then(|| command.clone());
        let hooks: Vec<AppliedHook> = self.hooks.lock().clone();
        let for_hooks = (!hooks.is_empty()).then(|| command.clone());
        let result = self.broker.apply_meta(command);
        if let (Some(command), true) = (for_hooks, result.is_ok()) {
            for hook in &hooks {
                hook(&command);
            }
        }
        let mut state = self.state.lock();
        if let Some(key) = led {
            // The leader the broker took (an older term's changes nothing).
            let known = self
                .broker
                .vhost(&key.0)
                .and_then(|v| v.quorum_info(&key.1))
                .and_then(|i| Some((i.leader?, i.leader_term)));
            if let Some(known) = known {
                state.leaders.insert(key, known);
            }
        }
        if let Some((vhost, queue)) = queue_key {
            let key = (vhost.clone(), queue.clone());
            let v = self.broker.vhost(&vhost);
            if v.as_ref().is_some_and(|v| v.has_queue(&queue)) {
                let def = state.quorum.get(&key);
                if let (Some(v), Some(node)) = (v, state.owners.get(&key)) {
                    // A quorum queue's location follows its group's leader
                    // (see queue_group); until one is known, its declarer.
                    let led = def.is_some() && v.quorum_info(&queue).is_some();
                    if !led {
                        v.set_remote_owner(
                            &queue,
                            (*node != self.node_name).then_some(node.as_str()),
                        );
                    }
                }
                if let Some(def) = def {
                    self.groups.declared(def);
                }
            } else {
                // Declared in vain (or deleted): no owner left behind.
                if let Some(v) = &v {
                    v.set_remote_owner(&queue, None);
                }
                state.owners.remove(&key);
                state.leaders.remove(&key);
                if let Some(def) = state.quorum.remove(&key) {
                    self.groups.deleted(&def.group);
                    self.save(&mut state)?;
                }
            }
        }
        if let Some(command) = for_transient {
            state.transient.applied(&command, result.is_ok(), new_queue);
            state
                .transient_changes
                .push((command, result.is_ok(), new_queue));
        }
        if let Some(gone) = deleted_vhost {
            state.owners.retain(|(v, _), _| *v != gone);
            state.leaders.retain(|(v, _), _| *v != gone);
            let dropped: Vec<String> = state
                .quorum
                .iter()
                .filter(|((v, _), _)| *v == gone)
                .map(|(_, d)| d.group.clone())
                .collect();
            state.quorum.retain(|(v, _), _| *v != gone);
            for g in &dropped {
                self.groups.deleted(g);
            }
        }
        Ok(result)
    }

    /// A quorum queue's member added or removed: the broker checks and
    /// records it, then this node's definition of the group follows and
    /// its replica starts (a new member) or stops and is removed (a removed
    /// one). Only a member of the metadata group can be added.
    fn apply_queue_member(
        &self,
        command: MetaCommand,
    ) -> Result<Result<MetaOutcome, MetaError>, std::io::Error> {
        let MetaCommand::QueueMember {
            vhost,
            name,
            node,
            add,
        } = &command
        else {
            return Ok(Ok(MetaOutcome::Done));
        };
        let key = (vhost.clone(), name.clone());
        if *add {
            let state = self.state.lock();
            let id = crate::node_id_of(node);
            if state.membership.membership().get_node(&id).is_none() {
                return Ok(Err(MetaError::Broker(
                    antre_broker::error::BrokerError::PreconditionFailed(format!(
                        "node '{node}' is not a member of the cluster"
                    )),
                )));
            }
        }
        let (vhost, name, node, add) = (vhost.clone(), name.clone(), node.clone(), *add);
        let result = self.broker.apply_meta(command.clone());
        if result.is_err() {
            return Ok(result);
        }
        let hooks: Vec<AppliedHook> = self.hooks.lock().clone();
        for hook in &hooks {
            hook(&command);
        }
        let mut state = self.state.lock();
        let Some(def) = state.quorum.get_mut(&key) else {
            return Ok(result);
        };
        if add {
            def.members.push(node.clone());
            def.joined.push(node.clone());
        } else {
            def.members.retain(|m| *m != node);
            def.joined.retain(|m| *m != node);
        }
        let def = def.clone();
        self.save(&mut state)?;
        drop(state);
        tracing::info!(vhost, queue = name, members = ?def.members, "quorum queue members changed");
        self.groups.members_changed(&def);
        Ok(result)
    }

    /// Stops applying, once the batch under way (if any) is done: the
    /// node is stopping and its broker closes its stores next. A change
    /// applied to closed stores would be recorded as applied, so not
    /// applied again after the restart, without having been written.
    /// openraft's shutdown does not wait for an apply under way.
    pub(crate) fn stop(&self) {
        let _applying = self.applying.lock();
        self.stopped.store(true, Ordering::Relaxed);
    }

    /// Refuses work once [`StateMachine::stop`] ran (call it holding
    /// `applying`).
    fn check_running(&self) -> Result<(), std::io::Error> {
        if self.stopped.load(Ordering::Relaxed) {
            return Err(io_err("the node is stopping"));
        }
        Ok(())
    }

    fn apply_entries(&self, entries: Vec<Entry<TypeConfig>>) -> Result<usize, std::io::Error> {
        let n = entries.len();
        let _applying = self.applying.lock();
        self.check_running()?;
        for entry in entries {
            match entry.payload {
                EntryPayload::Blank => {}
                EntryPayload::Normal(proposal) => {
                    tracing::debug!(index = entry.log_id.index, "applying {proposal}");
                    self.progress.applying(entry.log_id.index);
                    let result = self.apply_one(proposal.command, entry.log_id.index)?;
                    if let Err(e) = &result {
                        tracing::debug!(index = entry.log_id.index, "refused: {e}");
                    }
                    if proposal.origin == self.me {
                        if let Some(tx) = self.waiters.lock().remove(&proposal.request) {
                            let _ = tx.send(result);
                        }
                    }
                }
                EntryPayload::Membership(m) => {
                    self.state.lock().membership = StoredMembership::new(Some(entry.log_id), m);
                }
            }
            self.state.lock().last_applied = Some(entry.log_id);
            self.progress.applied(entry.log_id.index);
        }
        self.save(&mut self.state.lock())?;
        Ok(n)
    }

    fn store_snapshot(&self, snapshot: &StoredSnapshot) -> Result<(), std::io::Error> {
        let json = serde_json::to_vec(snapshot).map_err(io_err)?;
        antre_store::definitions::write_atomic(&self.dir.join("snapshot.json"), &json)
            .map_err(io_err)?;
        self.floor.durable(snapshot.meta.last_log_id);
        Ok(())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let this = self.clone();
        blocking(move || {
            // No apply runs while `applying` is held, so the broker's state
            // is the state at last_applied.
            let _applying = this.applying.lock();
            let state = this.state.lock();
            let mut snap = this.broker.meta_snapshot();
            snap.quorum = state.quorum.values().cloned().collect();
            snap.transient = state.transient.commands().to_vec();
            let data =
                serde_json::to_vec(&snap).map_err(|e| StorageIOError::read_state_machine(&e))?;
            let n = this.snapshots_built.fetch_add(1, Ordering::Relaxed) + 1;
            let snapshot_id = match state.last_applied {
                Some(l) => format!("{}-{}-{n}", l.leader_id, l.index),
                None => format!("--{n}"),
            };
            let meta = SnapshotMeta {
                last_log_id: state.last_applied,
                last_membership: state.membership.clone(),
                snapshot_id,
            };
            let stored = StoredSnapshot {
                meta: meta.clone(),
                data: data.clone(),
            };
            drop(state);
            this.store_snapshot(&stored)
                .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
            this.state.lock().snapshot = Some(stored);
            Ok(Snapshot {
                meta,
                snapshot: Box::new(Cursor::new(data)),
            })
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(
        &mut self,
    ) -> StorageResult<(Option<LogId<NodeId>>, StoredMembership<NodeId, Member>)> {
        let state = self.state.lock();
        Ok((state.last_applied, state.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<()>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        let this = self.clone();
        let n = blocking(move || this.apply_entries(entries))
            .map_err(|e| StorageIOError::write_state_machine(&e))?;
        Ok(vec![(); n])
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Member>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let data = snapshot.into_inner();
        let this = self.clone();
        let meta = meta.clone();
        let installed = blocking(move || {
            let sig = || Some(meta.signature());
            let snap: MetaSnapshot = serde_json::from_slice(&data)
                .map_err(|e| StorageIOError::read_snapshot(sig(), &e))?;
            tracing::info!(snapshot = %meta.snapshot_id, "installing the metadata snapshot");
            let _applying = this.applying.lock();
            this.check_running()
                .map_err(|e| StorageIOError::write_snapshot(sig(), &e))?;
            let mut state = this.state.lock();
            // As for a declare applied from the log: the queues' groups
            // are known before the broker creates the queues.
            for def in &snap.quorum {
                this.groups.remember(def);
            }
            if let Some(last) = meta.last_log_id {
                this.progress.applying(last.index);
            }
            this.broker
                .install_meta_snapshot(snap.clone())
                .map_err(|e| StorageIOError::write_snapshot(sig(), &e))?;
            state.owners.replace(
                snap.owners
                    .into_iter()
                    .map(|(v, q, n)| ((v, q), n))
                    .collect(),
            );
            let quorum: BTreeMap<(String, String), QuorumDef> = snap
                .quorum
                .into_iter()
                .map(|d| ((d.vhost.clone(), d.name.clone()), d))
                .collect();
            for def in state.quorum.values() {
                if !quorum.values().any(|d| d.group == def.group) {
                    this.groups.deleted(&def.group);
                }
            }
            for def in quorum.values() {
                // Also stops this node's replica of a queue it was
                // removed from meanwhile.
                this.groups.members_changed(def);
            }
            // The snapshot carries no leaders: those of queues still there
            // stay, until the next leadership change records another.
            state.leaders.retain(|key, _| quorum.contains_key(key));
            state.quorum.replace(quorum);
            state.transient = Transient::from_commands(snap.transient);
            this.restore_transient_in(&state);
            state.last_applied = meta.last_log_id;
            state.membership = meta.last_membership.clone();
            state.checkpoint_due = true;
            this.save(&mut state)
                .map_err(|e| StorageIOError::write_snapshot(sig(), &e))?;
            let stored = StoredSnapshot {
                meta: meta.clone(),
                data,
            };
            this.store_snapshot(&stored)
                .map_err(|e| StorageIOError::write_snapshot(sig(), &e))?;
            state.snapshot = Some(stored);
            if let Some(last) = meta.last_log_id {
                this.progress.applied(last.index);
            }
            Ok(())
        });
        if installed.is_err() {
            self.floor.failed();
        }
        installed
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        let state = self.state.lock();
        Ok(state.snapshot.as_ref().map(|s| Snapshot {
            meta: s.meta.clone(),
            snapshot: Box::new(Cursor::new(s.data.clone())),
        }))
    }
}
