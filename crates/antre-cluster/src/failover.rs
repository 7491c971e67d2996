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
//! heartbeat intervals, and again (a new term) every one to three
//! heartbeat intervals while the group has no leader, for at most twice
//! the longest election timeout (by then Raft's timers stand anyway). The
//! first candidate is refused by a follower whose lease of the dead leader
//! still runs, and two candidates of the same term refuse each other; but
//! a follower that stood once has no lease any more, so the next
//! candidate of a higher term gets its vote: the group has a leader within
//! a few heartbeat intervals. Nothing here is needed for safety (an
//! election never is): a peer that is paused, cut off or slow keeps its
//! connections or answers the dial too slowly to tell, and Raft's timers
//! decide.

use std::net::SocketAddr;
use std::sync::{Arc, Weak};

use openraft::{RaftTypeConfig, ServerState};

use crate::config::RaftTiming;
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
    let timing = n.link.config.metadata_timing;
    n.raft_handle()
        .spawn(stand_if_led_by(n.raft.clone(), id, timing));
    for raft in n.queue_groups.led_by(id) {
        let timing = n.link.config.queue_timing;
        n.raft_handle().spawn(stand_if_led_by(raft, id, timing));
    }
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
        ServerState::Follower => m.current_leader.is_none_or(|l| l == dead),
        ServerState::Candidate => m.current_leader.is_none_or(|l| l == dead),
        _ => false,
    }
}

/// Stands for election in `raft`, which followed the dead `leader`: after
/// a random delay, then again while it finds no leader (see the module
/// docs).
async fn stand_if_led_by<C: RaftTypeConfig<NodeId = NodeId>>(
    raft: openraft::Raft<C>,
    leader: NodeId,
    timing: RaftTiming,
) {
    let give_up = tokio::time::Instant::now() + timing.election_max() * 2;
    let beat = timing.heartbeat;
    let mut wait = (beat * 2).mul_f64(rand::random::<f64>());
    loop {
        tokio::time::sleep(wait).await;
        if !leaderless(&raft, leader) || tokio::time::Instant::now() >= give_up {
            return;
        }
        if let Err(e) = raft.trigger().elect().await {
            tracing::debug!("no election: {e}");
            return;
        }
        wait = beat + (beat * 2).mul_f64(rand::random::<f64>());
    }
}
