//! Who the members of the cluster are, and adding and removing them.
//!
//! The membership is the metadata group's Raft membership: each member is
//! recorded with its name and the cluster address it listens on
//! ([`Member`], openraft's node type), so a node added after the cluster
//! was bootstrapped is known, with its address, to every node through the
//! log, not only to the nodes whose peer list names it. A node's peer list
//! still wins for the address of a node it lists (its own route to it, a
//! proxy say) and is what bootstraps the cluster the first time.
//!
//! Changes (openraft's add_learner and change_membership) are made by the
//! leader; any member hands a change to the leader over the link:
//!
//! - **add** (`antre cluster join`, `POST /api/cluster/members`, or a new
//!   node started with `--cluster-join`): the node becomes a learner, the
//!   leader sends it the log (or its snapshot) until it is up to date,
//!   then makes it a voter (a joint configuration, then the new one);
//! - **remove** (`antre cluster leave` on the node itself, `antre cluster
//!   forget NODE` for a dead one, `DELETE /api/cluster/members/NODE`): the
//!   node stops being a voter and a member. It can be done while the node
//!   is down, as long as a majority of the old and of the new membership
//!   answers.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::ChangeMembers;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::config::{check_name, node_id_of};
use crate::network::{CallError, Connection};
use crate::node::Cluster;
use crate::wire::{Request, Response};
use crate::NodeId;

/// A member as the Raft membership records it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Its node name. Empty in memberships written before names were
    /// recorded: the peer list names those.
    #[serde(default)]
    pub name: String,
    /// Its cluster listener, `HOST:PORT`.
    pub addr: String,
}

impl Member {
    /// Its name: as recorded, or for a membership written before names
    /// were recorded (every node listed its members then) the name `cfg`'s
    /// peer list gives its id.
    pub fn name_in<'a>(&'a self, id: NodeId, cfg: &'a crate::ClusterConfig) -> Option<&'a str> {
        match self.name.as_str() {
            "" => cfg.name_of(id),
            name => Some(name),
        }
    }

    /// A member named `name` listening at `addr`.
    pub fn new(name: &str, addr: SocketAddr) -> Member {
        Member {
            name: name.to_owned(),
            addr: addr.to_string(),
        }
    }
}

impl std::fmt::Display for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at {}", self.name, self.addr)
    }
}

/// A change of membership.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum MemberChange {
    /// Add this node (as a voter, once it has caught up).
    Add(Member),
    /// Remove the node of this name.
    Remove(String),
}

impl std::fmt::Display for MemberChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MemberChange::Add(m) => write!(f, "add {m}"),
            MemberChange::Remove(n) => write!(f, "remove {n}"),
        }
    }
}

/// Why a membership change was not made.
#[derive(Debug, Clone, PartialEq, thiserror::Error, Serialize, Deserialize)]
pub enum MembershipError {
    /// The change makes no sense (an unknown node, the last voter, another
    /// change under way): trying again will not help.
    #[error("{0}")]
    Invalid(String),
    /// No leader or no quorum answered in time, or the answer was lost.
    #[error("{0}")]
    Unavailable(String),
}

/// How long a membership change may take: adding a node waits for it to
/// catch up with the log (or receive the snapshot). Under the CLI's HTTP
/// timeout (30 s), so `antre cluster join` gets the answer.
pub const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(25);

/// How often a node started with `--cluster-join` asks again.
const JOIN_RETRY: Duration = Duration::from_secs(2);

/// One member, as [`Cluster::members`] lists them.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberInfo {
    /// Raft id.
    pub id: NodeId,
    /// Node name.
    pub name: String,
    /// Where this node dials it.
    pub addr: Option<SocketAddr>,
    /// A voter (false: a learner, catching up before it votes).
    pub voter: bool,
}

impl Cluster {
    /// The members as this node's log knows them, by name. A node that
    /// has no membership yet (waiting to join) lists its peer list.
    pub fn members(&self) -> Vec<MemberInfo> {
        let cfg = &self.link.config;
        let stored = self.raft.metrics().borrow().membership_config.clone();
        let membership = stored.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let mut members: Vec<MemberInfo> = membership
            .nodes()
            .map(|(&id, m)| MemberInfo {
                id,
                name: m.name_in(id, cfg).unwrap_or("?").to_owned(),
                addr: cfg.listed_addr(id).or_else(|| self.link.resolved(&m.addr)),
                voter: voters.contains(&id),
            })
            .collect();
        if !members.is_empty() {
            // By name, for listings (the membership is by id).
            members.sort_by(|a, b| a.name.cmp(&b.name));
            return members;
        }
        cfg.peers
            .iter()
            .map(|p| MemberInfo {
                id: p.id(),
                name: p.name.clone(),
                addr: p.addr(),
                voter: cfg.join.is_none(),
            })
            .collect()
    }

    /// The name of the node with Raft id `id`, from the membership or the
    /// peer list.
    pub fn name_of(&self, id: NodeId) -> Option<String> {
        self.members()
            .into_iter()
            .find(|m| m.id == id)
            .map(|m| m.name)
            .or_else(|| self.link.config.name_of(id).map(str::to_owned))
    }

    /// The address the metadata membership records for node `id`, as
    /// recorded (a host name stays a name).
    pub fn recorded_addr(&self, id: NodeId) -> Option<String> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        m.membership_config
            .membership()
            .get_node(&id)
            .map(|n| n.addr.clone())
    }

    /// Where this node dials the node with Raft id `id`.
    pub fn addr_of(&self, id: NodeId) -> Option<SocketAddr> {
        self.members()
            .into_iter()
            .find(|m| m.id == id)
            .and_then(|m| m.addr)
            .or_else(|| self.link.config.listed_addr(id))
    }

    /// The names of the nodes that may connect: the members (the peer
    /// list before the first membership). `None`: anyone knowing the
    /// secret, while this node waits to join (the leader that adds it is
    /// not in its peer list).
    pub fn accepted_names(&self) -> Option<Vec<String>> {
        let stored = self.raft.metrics().borrow().membership_config.clone();
        let empty = stored.membership().nodes().next().is_none();
        if empty && self.link.config.join.is_some() {
            return None;
        }
        Some(self.members().into_iter().map(|m| m.name).collect())
    }

    /// Whether this node is a voter of the metadata group.
    pub fn is_voter(&self) -> bool {
        let me = self.id();
        let stored = self.raft.metrics().borrow().membership_config.clone();
        let voter = stored.membership().voter_ids().any(|v| v == me);
        voter
    }

    /// Makes `change` through whoever leads, within [`MEMBERSHIP_TIMEOUT`].
    pub async fn change_members(&self, change: MemberChange) -> Result<(), MembershipError> {
        let deadline = Instant::now() + MEMBERSHIP_TIMEOUT;
        let me = self.id();
        let mut metrics = self.raft.metrics();
        let mut last_error = "no leader is elected".to_owned();
        loop {
            if Instant::now() >= deadline {
                return Err(MembershipError::Unavailable(last_error));
            }
            let leader = metrics.borrow().current_leader;
            match leader {
                Some(l) if l == me => match self.change_as_leader(&change, deadline).await {
                    Err(Refusal::NotLeader) => last_error = "leadership moved".into(),
                    Err(Refusal::Error(e)) => return Err(e),
                    Ok(()) => return Ok(()),
                },
                Some(l) => {
                    let request = Request::Members(change.clone());
                    match self.forward_request(l, &request, deadline).await {
                        Ok(Response::Members(r)) => return r,
                        Ok(_) => {
                            return Err(MembershipError::Unavailable(
                                "answer of the wrong kind".into(),
                            ))
                        }
                        Err(CallError::Unreachable(e)) => {
                            last_error = format!("the leader is unreachable: {e}");
                        }
                        Err(CallError::Network(e)) => {
                            return Err(MembershipError::Unavailable(format!(
                                "the leader did not answer (the change may still be made): {e}"
                            )))
                        }
                    }
                }
                None => {}
            }
            let pause = tokio::time::sleep(Duration::from_millis(100));
            tokio::select! {
                _ = metrics.changed() => {}
                _ = pause => {}
            }
        }
    }

    async fn change_as_leader(
        &self,
        change: &MemberChange,
        deadline: Instant,
    ) -> Result<(), Refusal> {
        let invalid = |e: String| Refusal::Error(MembershipError::Invalid(e));
        let stored = self.raft.metrics().borrow().membership_config.clone();
        let membership = stored.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        match change {
            MemberChange::Add(m) => {
                check_name(&m.name).map_err(|e| invalid(e.to_string()))?;
                if !crate::config::is_host_port(&m.addr) {
                    return Err(invalid(format!("'{}' is not HOST:PORT", m.addr)));
                }
                let addr = crate::config::lookup(&m.addr).await.map_err(invalid)?;
                let id = node_id_of(&m.name);
                let known = membership.get_node(&id);
                if voters.contains(&id) {
                    return match known {
                        Some(k) if k.addr == m.addr || k.addr == addr.to_string() => Ok(()),
                        Some(k) => Err(invalid(format!(
                            "node '{}' is already a member, at {}: forget it first to move it",
                            m.name, k.addr
                        ))),
                        None => Ok(()),
                    };
                }
                // Until the membership lists it (its entry is appended as
                // add_learner starts), no feature flag is enabled.
                let flags = self.flag_changes.lock().await;
                self.check_joiner_flags(&m.name, addr)
                    .await
                    .map_err(Refusal::Error)?;
                // A host name is recorded as it is, and each member
                // resolves it (again when it moves).
                let member = match m.addr.parse::<SocketAddr>() {
                    Ok(_) => Member::new(&m.name, addr),
                    Err(_) => m.clone(),
                };
                tracing::info!("adding {member} to the cluster as a learner");
                let added =
                    tokio::time::timeout_at(deadline, self.raft.add_learner(id, member, true))
                        .await;
                drop(flags);
                write_result(added)?;
                tracing::info!("{} caught up: making it a voter", m.name);
                let ids = BTreeSet::from([id]);
                let promoted = tokio::time::timeout_at(
                    deadline,
                    self.raft
                        .change_membership(ChangeMembers::AddVoterIds(ids), false),
                )
                .await;
                write_result(promoted)
            }
            MemberChange::Remove(name) => {
                let id = node_id_of(name);
                if membership.get_node(&id).is_none() {
                    return Err(invalid(format!("node '{name}' is not a member")));
                }
                if voters.len() == 1 && voters.contains(&id) {
                    return Err(invalid(format!(
                        "node '{name}' is the last voter: a cluster cannot remove its last member"
                    )));
                }
                let ids = BTreeSet::from([id]);
                let changes = if voters.contains(&id) {
                    ChangeMembers::RemoveVoters(ids)
                } else {
                    ChangeMembers::RemoveNodes(ids)
                };
                tracing::info!("removing {name} from the cluster");
                let removed =
                    tokio::time::timeout_at(deadline, self.raft.change_membership(changes, false))
                        .await;
                write_result(removed)
            }
        }
    }
}

/// Why the leader did not make a change.
enum Refusal {
    /// It is not the leader (any more): ask again.
    NotLeader,
    /// Anything else: the answer.
    Error(MembershipError),
}

type WriteResult = Result<
    Result<
        openraft::raft::ClientWriteResponse<crate::TypeConfig>,
        RaftError<NodeId, ClientWriteError<NodeId, Member>>,
    >,
    tokio::time::error::Elapsed,
>;

fn write_result(r: WriteResult) -> Result<(), Refusal> {
    match r {
        Err(_) => Err(Refusal::Error(MembershipError::Unavailable(
            "the membership change was not committed in time".into(),
        ))),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => {
            Err(Refusal::NotLeader)
        }
        Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => {
            Err(Refusal::Error(MembershipError::Invalid(e.to_string())))
        }
        Ok(Err(e)) => Err(Refusal::Error(MembershipError::Unavailable(e.to_string()))),
    }
}

/// A node started with `--cluster-join ADDR` and not yet a voter: asks
/// the node at `target` to add it, again every two seconds until it is a
/// voter (the node there hands the request to the leader).
pub(crate) async fn join(node: Weak<Cluster>, target: String) {
    let mut last_error = String::new();
    loop {
        let Some(n) = node.upgrade() else { return };
        if n.stopped.load(Ordering::Relaxed) {
            return;
        }
        if n.is_voter() {
            tracing::info!("this node is a voting member of the cluster");
            return;
        }
        let cfg = &n.link.config;
        let me = Member {
            name: cfg.node_name.clone(),
            addr: cfg.advertised_host(),
        };
        // The node there is known by its address only: any name it proves
        // with the secret will do.
        let request = Request::Members(MemberChange::Add(me));
        let link = Arc::clone(&n.link);
        drop(n);
        let answer = match crate::config::lookup(&target).await {
            Ok(addr) => Connection::new(link, "", addr)
                .call(&request, MEMBERSHIP_TIMEOUT)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        let error = match answer {
            Ok(Response::Members(Ok(()))) => {
                tracing::info!("joined the cluster through {target}");
                return;
            }
            Ok(Response::Members(Err(e))) => e.to_string(),
            Ok(_) => "answer of the wrong kind".into(),
            Err(e) => e,
        };
        if error != last_error {
            tracing::warn!(
                "joining the cluster through {target}: {error} (asking again every {JOIN_RETRY:?})"
            );
            last_error = error;
        }
        tokio::time::sleep(JOIN_RETRY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memberships_written_before_names_were_recorded_still_load() {
        // openraft's BasicNode, as the first cluster release stored it.
        let old: Member = serde_json::from_str(r#"{"addr":"127.0.0.1:25672"}"#).unwrap();
        assert_eq!(old.name, "");
        assert_eq!(old.addr, "127.0.0.1:25672");
        let m = Member::new("n4", "10.0.0.4:25672".parse().unwrap());
        let back: Member = serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
        assert_eq!(back, m);
        assert_eq!(m.to_string(), "n4 at 10.0.0.4:25672");
        assert_eq!(MemberChange::Remove("n3".into()).to_string(), "remove n3");
    }
}
