//! Fast failover when a peer's process dies.
//!
//! Raft alone replaces a dead leader once its followers' timers run out: a
//! follower refuses votes during the leader's lease (the longest election
//! timeout after its last heartbeat) and then waits its own election
//! timeout, so a quorum queue's leader was replaced 1.2 to 1.6 s after it
//! died, the metadata group's 3 to 4 s after. But a process that dies
//! (kill -9, a crash, a reboot) closes its sockets at once, as RabbitMQ's
//! nodes see a peer's Erlang distribution connection drop: when a
//! connection a peer opened to this node ends, this node dials the peer;
//! if the peer refuses (nothing listens there any more) or cannot
//! authenticate, it is down, and every group it led here stands for
//! election now instead of waiting for its timers.
//!
//! Each follower of such a group stands after a random delay of up to two
//! heartbeat intervals, and again (a new term) every half to one and a
//! half heartbeat intervals while the group has no leader, for at most twice
//! the longest election timeout (by then Raft's timers stand anyway). The
//! first candidate is refused by a follower whose lease of the dead leader
//! still runs, and two candidates of the same term refuse each other; but
//! a follower that stood once has no lease any more, so the next
//! candidate of a higher term gets its vote: the group has a leader within
//! a few heartbeat intervals. Nothing here is needed for safety (an
//! election never is): a peer that is paused, cut off or slow keeps its
//! connections or answers the dial too slowly to tell, and Raft's timers
//! decide.
//!
//! A member stands again only after a pre-vote ([`Request::PreVote`]): a
//! majority must answer that they would vote for it, having no other
//! leader and no longer log. Without it, a member whose log was a few
//! entries short (it cannot win: the others refuse it) raised the term
//! again and again, and each time cancelled the candidacy of the member
//! that could win, which adopts any higher term it sees; with two
//! survivors this went on for seconds (a failover of 4.5 s, seen in the
//! failover soak). Its first stand needs no pre-vote: it is what ends its
//! lease of the dead leader, without which it would refuse the winner.
//! One probe runs per dead peer, and its standing with it, so a group has
//! one stand loop on each member however many of the peer's connections
//! closed (two loops on one member doubled its pace in the same race).

use std::net::SocketAddr;
use std::sync::{Arc, Weak};

use std::time::Duration;

use openraft::{LogId, RaftTypeConfig, ServerState};

use crate::config::RaftTiming;
use crate::log_store::{LogConfig, LogStore};
use crate::network::{CallError, Connection};
use crate::node::Cluster;
use crate::wire::{Request, Response};
use crate::NodeId;

/// A connection `peer` had opened to this node ended: finds out whether
/// it died (one probe per peer at a time), and if it did, has the groups
/// it led stand for election.
pub(crate) fn link_closed(node: &Arc<Cluster>, peer: &str) {
    let id = crate::node_id_of(peer);
    if id == node.id() || !node.led_by(id) {
        return;
    }
    let Some(addr) = node.addr_of(id) else {
        return;
    };
    if !node.probing.lock().insert(id) {
        return;
    }
    let weak = Arc::downgrade(node);
    let peer = peer.to_owned();
    node.raft_handle().spawn(async move {
        probe(weak.clone(), &peer, id, addr).await;
        if let Some(n) = weak.upgrade() {
            n.probing.lock().remove(&id);
        }
    });
}

async fn probe(node: Weak<Cluster>, peer: &str, id: NodeId, addr: SocketAddr) {
    let Some(n) = node.upgrade() else {
        return;
    };
    let mut conn = Connection::new(Arc::clone(&n.link), peer, addr);
    // Time enough for a live peer to answer over any link the timings
    // suit; a slower answer leaves the decision to Raft's timers.
    let wait = n.link.config.queue_timing.election_min;
    drop(n);
    let why = match tokio::time::timeout(wait, conn.call(&Request::Ping, wait)).await {
        Ok(Err(CallError::Unreachable(why))) => why,
        _ => return,
    };
    let Some(n) = node.upgrade() else {
        return;
    };
    tracing::info!(
        peer,
        "cluster peer {peer} is down ({why}): the Raft groups it led here elect a new leader now"
    );
    // The probe ends with its stand loops (see the module docs).
    let mut standing = tokio::task::JoinSet::new();
    let timing = n.link.config.metadata_timing;
    standing.spawn_on(
        stand_if_led_by(
            node.clone(),
            None,
            n.raft.clone(),
            n.log().clone(),
            id,
            timing,
        ),
        n.raft_handle(),
    );
    for (group, raft, log) in n.queue_groups.led_by(id) {
        let timing = n.link.config.queue_timing;
        standing.spawn_on(
            stand_if_led_by(node.clone(), Some(group), raft, log, id, timing),
            n.raft_handle(),
        );
    }
    drop(n);
    while standing.join_next().await.is_some() {}
}

/// Whether `raft` is a follower of `leader`, as it knows.
pub(crate) fn follows<C: RaftTypeConfig<NodeId = NodeId>>(
    raft: &openraft::Raft<C>,
    leader: NodeId,
) -> bool {
    let m = raft.metrics();
    let m = m.borrow();
    m.current_leader == Some(leader) && m.state == ServerState::Follower
}

/// Whether `raft` still looks for a leader after `dead` died: it follows
/// it, or stands for election (it knows no leader).
fn leaderless<C: RaftTypeConfig<NodeId = NodeId>>(raft: &openraft::Raft<C>, dead: NodeId) -> bool {
    let m = raft.metrics();
    let m = m.borrow();
    looks_for_leader(m.state, m.current_leader, dead)
}

fn looks_for_leader(state: ServerState, leader: Option<NodeId>, dead: NodeId) -> bool {
    match state {
        ServerState::Follower | ServerState::Candidate => leader.is_none_or(|l| l == dead),
        _ => false,
    }
}

/// Whether a member whose last log entry is `mine` would vote for a
/// candidate whose log ends at `theirs`, now that `dead` died: it has no
/// other leader, and the candidate's log is at least as long as its own
/// (Raft's vote rule).
pub(crate) fn grants<C: RaftTypeConfig<NodeId = NodeId>>(
    raft: &openraft::Raft<C>,
    mine: Option<LogId<NodeId>>,
    dead: NodeId,
    theirs: Option<LogId<NodeId>>,
) -> bool {
    let m = raft.metrics();
    let m = m.borrow();
    would_vote(m.state, m.current_leader, dead, mine, theirs)
}

fn would_vote(
    state: ServerState,
    leader: Option<NodeId>,
    dead: NodeId,
    mine: Option<LogId<NodeId>>,
    theirs: Option<LogId<NodeId>>,
) -> bool {
    looks_for_leader(state, leader, dead) && theirs >= mine
}

/// Asks the other voters of `group` (none: the metadata group) whether
/// they would vote for this member, whose log is `log`: whether a
/// majority, this member included, would.
async fn pre_vote<C: LogConfig>(
    node: &Cluster,
    group: Option<String>,
    raft: &openraft::Raft<C>,
    log: &LogStore<C>,
    dead: NodeId,
    ttl: Duration,
) -> bool {
    let voters: Vec<NodeId> = raft
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .voter_ids()
        .collect();
    let me = node.id();
    let request = Arc::new(Request::PreVote {
        group,
        dead,
        last_log: log.last_log_id(),
    });
    let mut answers = tokio::task::JoinSet::new();
    for &id in voters.iter().filter(|&&id| id != me && id != dead) {
        let (Some(name), Some(addr)) = (node.name_of(id), node.addr_of(id)) else {
            continue;
        };
        let mut conn = node.queue_groups.network().connection(id, &name, addr);
        let request = Arc::clone(&request);
        answers.spawn(async move {
            matches!(conn.call(&request, ttl).await, Ok(Response::PreVote(true)))
        });
    }
    let mut granted = 0;
    while let Some(answer) = answers.join_next().await {
        granted += usize::from(answer.unwrap_or(false));
    }
    majority(&voters, me, granted)
}

/// Whether `granted` votes of other voters, with this member's own if it
/// is a voter, are a majority of `voters`.
fn majority(voters: &[NodeId], me: NodeId, granted: usize) -> bool {
    (granted + usize::from(voters.contains(&me))) * 2 > voters.len()
}

/// Stands for election in `raft`, which followed the dead `leader`: after
/// a random delay, then again, once a pre-vote passes, while it finds no
/// leader (see the module docs).
async fn stand_if_led_by<C: LogConfig>(
    node: Weak<Cluster>,
    group: Option<String>,
    raft: openraft::Raft<C>,
    log: LogStore<C>,
    leader: NodeId,
    timing: RaftTiming,
) {
    let give_up = tokio::time::Instant::now() + timing.election_max() * 2;
    let beat = timing.heartbeat;
    let mut wait = (beat * 2).mul_f64(rand::random::<f64>());
    let mut stood = false;
    loop {
        tokio::time::sleep(wait).await;
        if !leaderless(&raft, leader) || tokio::time::Instant::now() >= give_up {
            return;
        }
        wait = beat / 2 + beat.mul_f64(rand::random::<f64>());
        if stood {
            let Some(n) = node.upgrade() else {
                return;
            };
            if !pre_vote(&n, group.clone(), &raft, &log, leader, beat * 2).await {
                continue;
            }
        }
        if let Err(e) = raft.trigger().elect().await {
            tracing::debug!("no election: {e}");
            return;
        }
        stood = true;
    }
}

#[cfg(test)]
mod tests {
    use openraft::CommittedLeaderId;

    use super::*;

    fn log_id(term: u64, index: u64) -> Option<LogId<NodeId>> {
        Some(LogId::new(CommittedLeaderId::new(term, 1), index))
    }

    #[test]
    fn a_pre_vote_is_refused_to_a_shorter_log_and_granted_to_an_equal_or_longer_one() {
        let dead = 7;
        let follower =
            |mine, theirs| would_vote(ServerState::Follower, Some(dead), dead, mine, theirs);
        // The failover soak's 4.5 s case: the two survivors' logs ended at
        // 1296 and 1299; the one at 1296 cannot win, and must not stand.
        assert!(!follower(log_id(53, 1299), log_id(53, 1296)));
        assert!(follower(log_id(53, 1296), log_id(53, 1299)));
        assert!(follower(log_id(53, 1299), log_id(53, 1299)));
        // A later term wins over a longer log of an earlier one.
        assert!(follower(log_id(53, 1299), log_id(54, 10)));
        assert!(!follower(log_id(54, 10), log_id(53, 1299)));
        assert!(!follower(log_id(1, 0), None));
        assert!(follower(None, None));
    }

    #[test]
    fn only_a_member_without_a_live_leader_grants_a_pre_vote() {
        let dead = 7;
        assert!(looks_for_leader(ServerState::Follower, Some(dead), dead));
        assert!(looks_for_leader(ServerState::Follower, None, dead));
        assert!(looks_for_leader(ServerState::Candidate, None, dead));
        // It follows another leader: the candidate should find that one.
        assert!(!looks_for_leader(ServerState::Follower, Some(8), dead));
        // It leads.
        assert!(!looks_for_leader(ServerState::Leader, Some(1), dead));
        assert!(!looks_for_leader(ServerState::Learner, None, dead));
    }

    #[test]
    fn a_pre_vote_needs_a_majority_of_the_voters() {
        let three = [1, 2, 3];
        // The leader (3) died: the other survivor's yes makes two of three.
        assert!(majority(&three, 1, 1));
        assert!(!majority(&three, 1, 0));
        let five = [1, 2, 3, 4, 5];
        assert!(!majority(&five, 1, 1));
        assert!(majority(&five, 1, 2));
        // A member that is not a voter counts only the others.
        assert!(!majority(&three, 9, 1));
        assert!(majority(&three, 9, 2));
    }
}
