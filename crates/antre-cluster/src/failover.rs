//! Fast failover when a peer's process dies.
//!
//! Raft alone replaces a dead leader once its followers' timers run out: a
//! follower refuses votes during the leader's lease (the longest election
//! timeout after its last heartbeat) and then waits its own election
//! timeout, so a quorum queue's leader was replaced 1.2 to 1.6 s after it
//! died, the metadata group's 3 to 4 s after. But a process that dies
//! (kill -9, a crash, a reboot) closes its sockets at once, as RabbitMQ's
//! nodes see a peer's Erlang distribution connection drop: when a
//! connection a peer opened to this node ends after carrying Raft's
//! traffic (not only pings: a peer's own probe ends that way), this node
//! dials the peer;
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
//! Every stand asks a pre-vote first ([`crate::election`]), naming the
//! dead leader, and a member stands when a majority would vote for it.
//! The first time, it also stands when a majority answered that they have
//! no live leader but would not vote for it (their logs are longer): that
//! stand cannot win, but it ends its own lease of the dead leader, without
//! which it would refuse the member that can win. Later it does not:
//! without the pre-vote, a member whose log was a few entries short raised
//! the term again and again, and each time cancelled the candidacy of the
//! member that could win, which adopts any higher term it sees; with two
//! survivors this went on for seconds (a failover of 4.5 s, seen in the
//! failover soak). A member that hears no majority at all (cut off, by a
//! firewall that refuses its connections as a dead peer's port would)
//! never stands, so it deposes nobody when it returns.
//! One probe runs per dead peer, and its standing with it, so a group has
//! one stand loop on each member however many of the peer's connections
//! closed (two loops on one member doubled its pace in the same race).

use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use openraft::{RaftTypeConfig, ServerState};

use crate::config::RaftTiming;
use crate::election::{heard_leader, pre_vote, stand, Heard, Voters};
use crate::log_store::{LogConfig, LogStore};
use crate::network::{CallError, Connection};
use crate::node::Cluster;
use crate::wire::Request;
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
    n.link.probing(peer);
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
    let network = n.queue_groups.network().clone();
    let metadata = Standing {
        group: None,
        heard: Heard::default(),
        // No fence: the metadata group delivers no messages.
        fence: Duration::ZERO,
    };
    standing.spawn_on(
        stand_if_led_by(
            network,
            metadata,
            n.raft.clone(),
            n.log().clone(),
            id,
            timing,
        ),
        n.raft_handle(),
    );
    for (network, raft, log, heard) in n.queue_groups.led_by(id) {
        let timing = n.link.config.queue_timing;
        let group = Standing {
            group: Some(network.group.to_string()),
            heard,
            fence: timing.fence(),
        };
        standing.spawn_on(
            stand_if_led_by(network, group, raft, log, id, timing),
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
    match m.state {
        ServerState::Follower | ServerState::Candidate => {
            m.current_leader.is_none_or(|l| l == dead)
        }
        _ => false,
    }
}

/// The group a stand loop is for.
struct Standing {
    /// Its id (none: the metadata group).
    group: Option<String>,
    /// The leases of its leader this member heard.
    heard: Heard,
    /// How long after hearing the dead leader this member waits (see
    /// `queue_group::fence`).
    fence: Duration,
}

/// Stands for election in `raft`, which followed the dead `leader`: after
/// a random delay, then again, once a pre-vote passes, while it finds no
/// leader (see the module docs). Not within the group's fence after it
/// last heard the leader: the others' answers keep to it, and this
/// member's own vote must too (with three members, it is half of the
/// majority that elects it).
async fn stand_if_led_by<C: LogConfig>(
    voters: impl Voters<C>,
    standing: Standing,
    raft: openraft::Raft<C>,
    log: LogStore<C>,
    leader: NodeId,
    timing: RaftTiming,
) {
    let Standing {
        group,
        heard,
        fence,
    } = standing;
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
        if group.is_some() && voters.network().link.draining() {
            // A drained node's replica leaves the leadership to the others.
            continue;
        }
        let lease = timing.election_max();
        if heard_leader(&raft, &heard, lease, fence)
            .await
            .is_some_and(|(_, fenced)| fenced)
        {
            continue;
        }
        let tally = pre_vote(&voters, group.clone(), &raft, &log, Some(leader), beat * 2).await;
        if !(tally.wins() || !stood && tally.leaderless()) {
            continue;
        }
        if !stand(&raft, &tally).await {
            return;
        }
        stood = true;
    }
}
