//! Leases: what an idle quorum queue's leader sends its members instead
//! of Raft heartbeats.
//!
//! A heartbeat is an empty append: openraft's core on the leader makes
//! one per member, its replication task sends it, and the member's core
//! checks it and answers it, republishing its metrics on both sides. For
//! a queue nobody uses, that is all the work there is, and it grows with
//! the number of queues: 500 idle queues on three nodes kept 11.9% of a
//! core busy where RabbitMQ's (whose Ra sends nothing for an idle queue,
//! its nodes watching each other instead) used 7.0% (BENCHMARKS.md,
//! "Idle quorum queues without Raft timers").
//!
//! What an idle follower needs from its leader is only to know it is
//! alive, so that it does not stand for election; the group's log, its
//! commit index and its votes have not moved. So once a group is idle
//! (nothing but heartbeats for a second) and its membership is settled,
//! the pacing task sends each member, instead of a heartbeat, a lease: the
//! group, its leader's vote and the last entry the leader applied, in one
//! [`Request::QueueLeases`] per member for all the groups this node leads
//! there. No Raft core sees it: the member checks it against its
//! replica's published metrics and records the time
//! ([`crate::election::Heard`]), which its election timer and its answers
//! to pre-votes count as they count a heartbeat. A member that cannot take
//! a lease as it is (it follows another leader or a later term, has not
//! applied as far, was restarted and has no leader yet, runs no replica)
//! names the group in its answer, and the leader sends that group a Raft
//! heartbeat at once, which sorts it out as before: it carries the commit
//! index, and a later term makes the leader step down. A member that does
//! not answer at all gets Raft heartbeats for all its groups, so a lease
//! is only ever a cheaper heartbeat, never the lack of one.
//!
//! Failure detection is unchanged: a member that stops hearing its leader,
//! by lease or heartbeat, stands after the lease and an election timeout
//! as before, and a dead leader is noticed at once by the node
//! ([`crate::failover`]).

use std::collections::HashMap;

use openraft::Vote;

use super::*;

/// One group's lease: the group, its leader's vote, and the last entry
/// its leader applied.
pub type Lease = (String, Vote<NodeId>, Option<LogId<NodeId>>);

/// The leases of one round of the pacing task, by member.
#[derive(Default)]
pub(super) struct Round {
    to: HashMap<NodeId, (BasicNode, Vec<Lease>)>,
    /// The groups with leases in this round, for those a member refuses.
    groups: HashMap<String, Arc<Group>>,
}

impl Round {
    /// Adds the leases of `g`, which this node (`me`) leads, for each of
    /// its other members; false if it has no committed leadership to
    /// lease (a Raft heartbeat then does what it does).
    pub(super) fn add(&mut self, g: &Arc<Group>, me: NodeId) -> bool {
        let rx = g.raft.metrics();
        if !leads(&rx) {
            return false;
        }
        let m = rx.borrow();
        for (&id, node) in m.membership_config.membership().nodes() {
            if id != me {
                let lease = (g.def.group.clone(), m.vote, m.last_applied);
                self.to
                    .entry(id)
                    .or_insert_with(|| (node.clone(), Vec::new()))
                    .1
                    .push(lease);
            }
        }
        self.groups.insert(g.def.group.clone(), Arc::clone(g));
        true
    }

    /// Sends each member its leases, each within `ttl`, on a task of its
    /// own; a group whose lease a member refused gets a Raft heartbeat.
    pub(super) fn send(self, network: &NetworkFactory, ttl: Duration) {
        let groups = Arc::new(self.groups);
        let beaten = Arc::new(Beaten::default());
        for (id, (node, leases)) in self.to {
            let (name, addr) = crate::election::route(network, id, "", &node.addr);
            let mut conn = network.connection(id, &name, addr, &node.addr);
            let groups = Arc::clone(&groups);
            let beaten = Arc::clone(&beaten);
            tokio::spawn(async move {
                let request = Request::QueueLeases(leases);
                let sent = std::time::Instant::now();
                let refused = match conn.call(&request, ttl).await {
                    Ok(Response::QueueLeases(refused)) => {
                        // The leases it took renew its leaders' fences.
                        if let Request::QueueLeases(leases) = &request {
                            for (group, vote, _) in leases {
                                if refused.contains(group) {
                                    continue;
                                }
                                if let Some(g) = groups.get(group) {
                                    let term = vote.leader_id().get_term();
                                    g.machine.engine.fence.acked(id, term, sent);
                                }
                            }
                        }
                        refused
                    }
                    // The member did not answer, or not in kind (a node of
                    // a version without leases closes the connection): its
                    // groups get Raft heartbeats, as before leases. One
                    // that is down costs a failed call each; the member
                    // hears its leader either way when it can.
                    answer => {
                        let why = answer.map(|_| "answer of another kind".to_owned());
                        tracing::debug!(member = name, "leases not taken: {why:?}");
                        let Request::QueueLeases(leases) = request else {
                            return;
                        };
                        leases.into_iter().map(|(group, ..)| group).collect()
                    }
                };
                for group in refused {
                    let Some(g) = groups.get(&group) else {
                        continue;
                    };
                    if !beaten.first(&group) {
                        continue;
                    }
                    if let Err(e) = g.raft.trigger().heartbeat().await {
                        tracing::debug!(group, "no heartbeat for a refused lease: {e}");
                    }
                }
            });
        }
    }
}

/// The groups of one round that got a Raft heartbeat for a refused
/// lease. A heartbeat goes to every member of its group, so a group whose
/// leases two members refused (or two members did not answer: the leader
/// cut off from both) needs one, not one per member.
#[derive(Default)]
struct Beaten(Mutex<std::collections::HashSet<String>>);

impl Beaten {
    /// Whether `group` is the first time this round: it gets the
    /// heartbeat.
    fn first(&self, group: &str) -> bool {
        let mut done = self.0.lock();
        !done.contains(group) && done.insert(group.to_owned())
    }
}

/// Whether the replica whose metrics `rx` receives leads, with a
/// committed vote, and its Raft core still runs. A core that panicked
/// leaves its last metrics (leader) as they were, dropping only their
/// sender: leases sent for it would keep its followers from electing
/// another leader for good, where its heartbeats simply stop.
fn leads(rx: &tokio::sync::watch::Receiver<openraft::RaftMetrics<NodeId, BasicNode>>) -> bool {
    if rx.has_changed().is_err() {
        return false;
    }
    let m = rx.borrow();
    m.running_state.is_ok() && m.state == ServerState::Leader && m.vote.is_committed()
}

/// Whether a member whose replica publishes `m` takes a lease of `vote`
/// (a leader's, committed) that `from` sent, whose last applied entry was
/// `applied`: it follows that leader in that very term (so its log is the
/// leader's as far as it goes) and applied as far.
fn takes(
    m: &openraft::RaftMetrics<NodeId, BasicNode>,
    from: NodeId,
    vote: &Vote<NodeId>,
    applied: Option<LogId<NodeId>>,
) -> bool {
    matches!(m.state, ServerState::Follower | ServerState::Learner)
        && vote.is_committed()
        && m.current_leader == Some(from)
        && m.vote == *vote
        && m.last_applied >= applied
}

impl QueueGroups {
    /// Takes a peer's leases ([`Request::QueueLeases`]), `from` its node
    /// id: the groups of those it did not take, whose leader then sends a
    /// Raft heartbeat.
    pub fn serve_leases(&self, from: NodeId, leases: Vec<Lease>) -> Vec<String> {
        leases
            .into_iter()
            .filter_map(|(group, vote, applied)| {
                let taken = self.group(&group).is_some_and(|g| {
                    let ok = takes(&g.raft.metrics().borrow(), from, &vote, applied);
                    if ok {
                        g.heard.record(vote);
                    }
                    ok
                });
                (!taken).then_some(group)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use openraft::CommittedLeaderId;

    use super::*;

    const LEADER: NodeId = 7;

    #[test]
    fn a_group_refused_by_two_members_gets_one_heartbeat() {
        let beaten = Beaten::default();
        assert!(beaten.first("q1"), "the first refusal sends it");
        assert!(!beaten.first("q1"), "the second member's does not");
        assert!(beaten.first("q2"), "another group has its own");
    }

    fn applied(term: u64, index: u64) -> Option<LogId<NodeId>> {
        Some(LogId::new(CommittedLeaderId::new(term, LEADER), index))
    }

    /// A follower of LEADER in term 3 that applied up to 10.
    fn follower() -> openraft::RaftMetrics<NodeId, BasicNode> {
        let mut m = openraft::RaftMetrics::new_initial(2);
        m.state = ServerState::Follower;
        m.vote = Vote::new_committed(3, LEADER);
        m.current_leader = Some(LEADER);
        m.last_applied = applied(3, 10);
        m
    }

    #[test]
    fn a_member_takes_only_a_lease_of_the_leader_it_follows_in_that_term() {
        let m = follower();
        let vote = Vote::new_committed(3, LEADER);
        assert!(takes(&m, LEADER, &vote, applied(3, 10)));
        assert!(takes(&m, LEADER, &vote, applied(3, 9)));
        // It has not applied as far: a heartbeat brings the commit index.
        assert!(!takes(&m, LEADER, &vote, applied(3, 11)));
        // A stale leader (the member voted in a later term since) is
        // refused: its heartbeat then makes it step down.
        assert!(!takes(&m, LEADER, &Vote::new_committed(2, LEADER), None));
        // Another node's lease, or one not committed.
        assert!(!takes(&m, 9, &Vote::new_committed(3, 9), None));
        assert!(!takes(&m, LEADER, &Vote::new(3, LEADER), None));
        // A member that has no leader (just restarted, or standing).
        let mut lost = follower();
        lost.current_leader = None;
        assert!(!takes(&lost, LEADER, &vote, None));
        lost.state = ServerState::Candidate;
        lost.current_leader = Some(LEADER);
        assert!(!takes(&lost, LEADER, &vote, None));
        // A learner follows as a follower does.
        let mut learner = follower();
        learner.state = ServerState::Learner;
        assert!(takes(&learner, LEADER, &vote, applied(3, 10)));
    }

    #[test]
    fn only_a_running_leader_sends_leases() {
        let mut leader = follower();
        leader.id = LEADER;
        leader.state = ServerState::Leader;
        let (tx, rx) = tokio::sync::watch::channel(leader.clone());
        assert!(leads(&rx));
        // Its core panicked: the metrics still say leader, but their
        // sender is gone.
        drop(tx);
        assert!(!leads(&rx));
        // Its core stopped on an error.
        let mut stopped = leader.clone();
        stopped.running_state = Err(openraft::error::Fatal::Stopped);
        assert!(!leads(&tokio::sync::watch::channel(stopped).1));
        // Standing, not elected yet.
        let mut candidate = leader;
        candidate.vote = Vote::new(4, LEADER);
        assert!(!leads(&tokio::sync::watch::channel(candidate).1));
        assert!(!leads(&tokio::sync::watch::channel(follower()).1));
    }
}
