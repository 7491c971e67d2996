//! Elections with a pre-vote, for the metadata group and every quorum
//! queue group.
//!
//! openraft 0.9 has no pre-vote (it came in 0.10, still an alpha): a
//! member that hears no leader for its election timeout stands, raising
//! the term. A member cut off by a partition stood again and again, and
//! when the partition healed its higher term deposed the healthy leader
//! (the leader steps down on seeing it), for a new election the cut-off
//! member, whose log is behind, could not even win: a leader change and a
//! pause for nothing. A restarted member did the same when its election
//! timeout ran out before the leader, which had backed off from it while
//! it was down, reached it.
//!
//! So openraft's own election timer is off (`enable_elect: false`) and
//! [`run`] stands in for it, as Raft's thesis (section 9.6) describes:
//! when the timer runs out, the member first asks the other voters
//! ([`Request::PreVote`]) whether they would vote for it, which changes
//! nothing on them, and stands (a new term) only when a majority would. A
//! voter would when it has no leader it heard from within the leader's
//! lease (openraft's own rule for real votes: the longest election
//! timeout after the leader's last heartbeat) and its log is no longer
//! than the candidate's. A member that cannot reach a majority, or whose
//! log is behind, thus never raises the term, and rejoins under the
//! leader it left.
//!
//! The timer is openraft's: the election timeout, drawn between its
//! minimum and maximum, counts from the last change of the member's vote
//! (a leader's heartbeat or append renews it), plus the leader's lease
//! while the vote is committed (a leader was known). The fast failover
//! ([`crate::failover`]) asks the same pre-vote, naming the leader it
//! found dead, which a voter then no longer counts as live if it cannot
//! reach it either ([`crate::Cluster`] checks its own link first).
//!
//! A leader writing a large entry is silent until the write is durable:
//! openraft 0.9's core waits for each append of its log, and sends no
//! heartbeat meanwhile. An 80 MiB message took over a second to write on a
//! busy machine, both followers' leases ran out, they elected one of
//! themselves and the message was nacked. The leader is asked in a
//! pre-vote like any voter, and it answers for itself without its core:
//! busy appending for longer than a heartbeat interval, or it was within
//! the last lease ([`PreVoteAnswer::Writing`]), and no candidate stands
//! against that. Not past [`WRITING_AT_MOST`] of writing: a leader that
//! cannot be reached, is paused, or whose disk hangs is replaced as
//! before. (A follower does not hear its leader either while a large
//! append is on its way to it: the leader sends it heartbeats beside it,
//! see `GroupClient::keep_lease`.)

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use openraft::{Instant as _, LogId, RaftTypeConfig, ServerState, Vote};
use serde::{Deserialize, Serialize};

use crate::config::RaftTiming;
use crate::log_store::{Appends, LogConfig, LogStore};
use crate::network::{NetworkFactory, PooledConnection};
use crate::wire::{Request, Response};
use crate::NodeId;

/// How a group's member reaches another voter of the group, named in
/// its membership.
pub(crate) trait Voters<C: RaftTypeConfig<NodeId = NodeId>>: Send + Sync + 'static {
    /// A connection to voter `id`, described by `node` in the membership.
    fn connection(&self, id: NodeId, node: &C::Node) -> PooledConnection;
    /// The node's connections, for the name of this node.
    fn network(&self) -> &NetworkFactory;
}

/// The name this node's peer list gives `id` (else `name`) and the
/// address to dial it at: the list's (this node's route to the peer), or
/// `addr` from the membership for a member added later.
pub(crate) fn route(
    network: &NetworkFactory,
    id: NodeId,
    name: &str,
    addr: &str,
) -> (String, SocketAddr) {
    let cfg = &network.link.config;
    let name = cfg.name_of(id).unwrap_or(name).to_owned();
    // As last resolved: never looked up here, on the runtime, for every
    // request (the refresh does that).
    let addr = crate::network::routed(&network.link, &name, Some(addr))
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
    (name, addr)
}

/// When a member last heard its group's leader by a lease
/// ([`Request::QueueLeases`]) rather than a Raft heartbeat, and under
/// which vote. An idle quorum queue's leader sends leases instead of
/// heartbeats (see `queue_group::leases`): openraft's core never sees
/// them, so its own record of the last heartbeat (`vote_last_modified`)
/// grows old while the leader is heard. The election timer and the
/// pre-vote count whichever of the two is newer, under the same vote.
#[derive(Debug, Clone, Default)]
pub(crate) struct Heard(Arc<parking_lot::Mutex<Option<LeaseSeen>>>);

/// The vote of the last lease taken, and when.
type LeaseSeen = (Vote<NodeId>, std::time::Instant);

impl Heard {
    /// The leader of `vote` was heard now.
    pub(crate) fn record(&self, vote: Vote<NodeId>) {
        *self.0.lock() = Some((vote, std::time::Instant::now()));
    }

    /// How long ago a lease of the leader of `vote` (a committed vote)
    /// arrived; `None` if none did under that vote.
    fn since(&self, vote: &Vote<NodeId>) -> Option<Duration> {
        if !vote.is_committed() {
            return None;
        }
        self.0
            .lock()
            .as_ref()
            .filter(|(v, _)| v == vote)
            .map(|(_, at)| at.elapsed())
    }
}

/// What a voter's Raft state says about a pre-vote.
#[derive(Debug, Clone, Copy)]
struct View {
    state: ServerState,
    leader: Option<NodeId>,
    /// Its vote is committed (a leader was elected) and the leader was
    /// heard from within the lease.
    lease_runs: bool,
    /// And within the fence: it votes for no other, even a candidate that
    /// found the leader dead (see `queue_group::fence`).
    fenced: bool,
}

/// A voter's answer to a pre-vote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PreVoteAnswer {
    /// It would vote for the candidate.
    Yes,
    /// It has no live leader either, but its log is longer: the candidate
    /// cannot win.
    LongerLog,
    /// It leads, or heard its leader within the lease.
    HasLeader,
    /// It runs no replica of the group (or is no voter).
    NoReplica,
    /// It leads, and has been writing an append to its log for longer
    /// than a heartbeat interval, or just was (its heartbeats wait for
    /// it): alive, so nobody stands.
    Writing,
}

/// Longest a leader's append may keep candidates from standing
/// ([`PreVoteAnswer::Writing`]): a write that takes longer is a disk that
/// hangs, and another member had better lead.
pub(crate) const WRITING_AT_MOST: Duration = Duration::from_secs(30);

/// Whether a member in `state`, whose log's appends are `appends`,
/// answers a pre-vote with [`PreVoteAnswer::Writing`] without asking its
/// Raft core, which waits for the append: it leads, and has been writing
/// for longer than a heartbeat interval, or was a moment ago (within a
/// lease: its first heartbeats after the write are still on their way).
fn writing_leader(state: ServerState, appends: Appends, timing: RaftTiming) -> bool {
    let long = |d: Duration| d >= timing.heartbeat && d <= WRITING_AT_MOST;
    state == ServerState::Leader
        && (appends.running.is_some_and(long)
            || appends
                .longest
                .is_some_and(|(took, ago)| long(took) && ago <= timing.election_max()))
}

/// Answers a peer's [`Request::PreVote`] in a group whose Raft is `raft`
/// and log `log`: whether this member would vote for a candidate whose
/// log ends at `theirs`. `dead` is the leader the candidate found dead,
/// if this node cannot reach it either; `timing` the group's (its leader
/// lease is the longest election timeout); `heard` its leader's leases;
/// `fence` how long after hearing its leader it votes for no other even
/// when the leader was found dead (zero: no fence).
pub(crate) async fn grants<C: LogConfig>(
    raft: &openraft::Raft<C>,
    log: &LogStore<C>,
    heard: &Heard,
    dead: Option<NodeId>,
    theirs: Option<LogId<NodeId>>,
    timing: RaftTiming,
    fence: Duration,
) -> PreVoteAnswer {
    let state = raft.metrics().borrow().state;
    if writing_leader(state, log.appends(), timing) {
        return PreVoteAnswer::Writing;
    }
    let Some((lease_runs, fenced)) = heard_leader(raft, heard, timing.election_max(), fence).await
    else {
        return PreVoteAnswer::NoReplica;
    };
    let view = {
        let m = raft.metrics();
        let m = m.borrow();
        View {
            state: m.state,
            leader: m.current_leader,
            lease_runs,
            fenced,
        }
    };
    would_vote(view, dead, log.last_log_id(), theirs)
}

/// Whether the member whose Raft is `raft` heard its leader (its vote is
/// committed) within `lease`, and within `fence`, by a heartbeat or a
/// lease (`heard`); None if its Raft stopped.
pub(crate) async fn heard_leader<C: LogConfig>(
    raft: &openraft::Raft<C>,
    heard: &Heard,
    lease: Duration,
    fence: Duration,
) -> Option<(bool, bool)> {
    let vote = raft.metrics().borrow().vote;
    let by_lease = heard.since(&vote);
    raft.with_raft_state(move |st| {
        let by_raft = st.vote_last_modified().map(|t| t.elapsed());
        let ago = by_lease.into_iter().chain(by_raft).min();
        let within = |d| st.vote_ref().is_committed() && ago.is_some_and(|a| a <= d);
        (within(lease), within(fence))
    })
    .await
    .ok()
}

fn would_vote(
    v: View,
    dead: Option<NodeId>,
    mine: Option<LogId<NodeId>>,
    theirs: Option<LogId<NodeId>>,
) -> PreVoteAnswer {
    let leaderless = match v.state {
        // A learner answers as a follower does. openraft names a member
        // that has no membership in its log a learner (a member added to
        // a group, until the leader's log reaches it; a new group's
        // members begin with the membership); it grants a real vote to
        // any candidate whose log is not shorter (Raft counts every
        // member of the candidate's configuration). Refusing its pre-vote
        // once left a group of three without a leader for good when the
        // leader died before the third member's first append.
        ServerState::Follower | ServerState::Candidate | ServerState::Learner => {
            !v.lease_runs || (dead.is_some() && v.leader == dead && !v.fenced)
        }
        ServerState::Leader => false,
        ServerState::Shutdown => return PreVoteAnswer::NoReplica,
    };
    if !leaderless {
        PreVoteAnswer::HasLeader
    } else if theirs >= mine {
        PreVoteAnswer::Yes
    } else {
        PreVoteAnswer::LongerLog
    }
}

/// The answers to a pre-vote.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Tally {
    /// Voters in the group.
    voters: usize,
    /// This member is one of them.
    voter: bool,
    /// Voters that would vote for it.
    yes: usize,
    /// Voters that have no live leader but a longer log.
    longer: usize,
    /// The leader answered that it is writing to its log.
    writing: bool,
    /// This member's vote when it asked.
    vote: Vote<NodeId>,
}

impl Tally {
    fn majority(&self, others: usize) -> bool {
        !self.writing && (others + usize::from(self.voter)) * 2 > self.voters
    }

    /// A majority would vote for this member: it would win (unless the
    /// leader said it is alive, writing).
    pub(crate) fn wins(&self) -> bool {
        self.majority(self.yes)
    }

    /// A majority answered and has no live leader, though some would not
    /// vote for this member (their logs are longer).
    pub(crate) fn leaderless(&self) -> bool {
        self.majority(self.yes + self.longer)
    }
}

/// Asks the other voters of `group` (none: the metadata group) whether
/// they would vote for this member, whose log is `log`, now that their
/// leader is gone (`dead`, when it was found dead). Each voter has `ttl`
/// to answer.
pub(crate) async fn pre_vote<C: LogConfig>(
    voters: &impl Voters<C>,
    group: Option<String>,
    raft: &openraft::Raft<C>,
    log: &LogStore<C>,
    dead: Option<NodeId>,
    ttl: Duration,
) -> Tally {
    let me = voters.network().link.config.node_id();
    let (mut tally, mut asked, leader) = {
        let m = raft.metrics();
        let m = m.borrow();
        let membership = m.membership_config.membership();
        let ids: Vec<NodeId> = membership.voter_ids().collect();
        let asked: Vec<(NodeId, PooledConnection)> = ids
            .iter()
            .filter(|&&id| id != me && Some(id) != dead)
            .filter_map(|&id| Some((id, voters.connection(id, membership.get_node(&id)?))))
            .collect();
        let tally = Tally {
            voters: ids.len(),
            voter: ids.contains(&me),
            vote: m.vote,
            ..Tally::default()
        };
        let leader = m
            .current_leader
            .filter(|l| asked.iter().any(|(id, _)| id == l));
        (tally, asked, leader)
    };
    let request = Arc::new(Request::PreVote {
        group,
        dead,
        last_log: log.last_log_id(),
    });
    let mut answers = tokio::task::JoinSet::new();
    for (id, mut conn) in asked.drain(..) {
        let request = Arc::clone(&request);
        answers.spawn(async move {
            match conn.call(&request, ttl).await {
                Ok(Response::PreVote(answer)) => (id, Some(answer)),
                _ => (id, None),
            }
        });
    }
    // Not waiting for the rest once a majority said yes: a voter that is
    // paused or cut off answers only after `ttl`. But the leader this
    // member knew gets a little longer than the others: it may answer that
    // it is alive, writing (see the module docs), and a follower's yes
    // may come first.
    let mut leader_answered = leader.is_none();
    let mut grace: Option<tokio::time::Instant> = None;
    while !tally.writing {
        if tally.wins() {
            if leader_answered {
                break;
            }
            grace.get_or_insert_with(|| tokio::time::Instant::now() + ttl / 4);
        }
        let next = match grace {
            Some(due) => match tokio::time::timeout_at(due, answers.join_next()).await {
                Ok(next) => next,
                Err(_) => break,
            },
            None => answers.join_next().await,
        };
        let Some(joined) = next else {
            break;
        };
        let Ok((id, answer)) = joined else {
            continue;
        };
        leader_answered |= Some(id) == leader;
        match answer {
            Some(PreVoteAnswer::Yes) => tally.yes += 1,
            Some(PreVoteAnswer::LongerLog) => tally.longer += 1,
            Some(PreVoteAnswer::Writing) => tally.writing = true,
            _ => {}
        }
    }
    tally
}

/// Stands for election in `raft` after a pre-vote, unless its vote
/// changed since the pre-vote was asked (`tally`): a leader elected
/// meanwhile would be deposed by the new term. False if Raft stopped.
pub(crate) async fn stand<C: RaftTypeConfig<NodeId = NodeId>>(
    raft: &openraft::Raft<C>,
    tally: &Tally,
) -> bool {
    if raft.metrics().borrow().vote != tally.vote {
        return true;
    }
    match raft.trigger().elect().await {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!("no election: {e}");
            false
        }
    }
}

/// Stands for election in `raft` if a pre-vote (each voter given two
/// heartbeat intervals of `timing` to answer) says a majority would vote
/// for this member: what an election timer does when it runs out. False
/// if Raft stopped.
pub(crate) async fn stand_if_a_majority_would<C: LogConfig>(
    voters: &impl Voters<C>,
    group: Option<String>,
    raft: &openraft::Raft<C>,
    log: &LogStore<C>,
    timing: RaftTiming,
) -> bool {
    let tally = pre_vote(voters, group.clone(), raft, log, None, timing.heartbeat * 2).await;
    if !tally.wins() {
        return true;
    }
    tracing::debug!(?group, "a majority would vote for this member: it stands");
    stand(raft, &tally).await
}

/// A random election timeout of `timing`.
fn election_timeout(timing: RaftTiming) -> Duration {
    let spread = timing.election_max().saturating_sub(timing.election_min);
    timing.election_min + spread.mul_f64(rand::random::<f64>())
}

/// The election timer of a member of `group` (none: the metadata group),
/// for as long as its Raft runs (see the module docs); `heard` records
/// its leader's leases. It does not run for `hold`, unless a leader is
/// known sooner: a new queue group's members leave its first election to
/// the member placed to lead it.
pub(crate) async fn run<C: LogConfig>(
    voters: impl Voters<C>,
    group: Option<String>,
    raft: openraft::Raft<C>,
    log: LogStore<C>,
    heard: Heard,
    timing: RaftTiming,
    hold: Duration,
) {
    let lease = timing.election_max();
    let me = voters.network().link.config.node_id();
    let mut timeout = election_timeout(timing);
    // Openraft's server metrics change only with the state, the leader,
    // the vote or the membership, not with every message the core handles.
    let mut server = raft.server_metrics();
    let held = tokio::time::Instant::now() + hold;
    while server.borrow_and_update().current_leader.is_none() {
        tokio::select! {
            r = server.changed() => if r.is_err() { return },
            _ = tokio::time::sleep_until(held) => break,
        }
    }
    loop {
        // Asked of the metrics, not of the Raft core: a leader's timer (one
        // per group it leads) no longer sends its core a message every
        // timeout.
        let (leads, voter, vote) = {
            if server.has_changed().is_err() {
                // Raft stopped: the group is gone, or the node.
                return;
            }
            let m = server.borrow_and_update();
            let voter = m
                .membership_config
                .membership()
                .voter_ids()
                .any(|v| v == me);
            (m.state == ServerState::Leader, voter, m.vote)
        };
        if leads || !voter {
            // Nothing to time until it steps down or becomes a voter: a
            // leader's timer woke every election timeout for nothing, a
            // third of an idle cluster's timers.
            if server.changed().await.is_err() {
                return;
            }
            timeout = election_timeout(timing);
            continue;
        }
        // A leader heard by its leases: not due, and its Raft core (which
        // never saw them) is not asked.
        if let Some(due) = heard
            .since(&vote)
            .map(|s| (lease + timeout).saturating_sub(s))
            .filter(|due| !due.is_zero())
        {
            tokio::time::sleep(due).await;
            continue;
        }
        let Ok((since, committed)) = raft
            .with_raft_state(|st| {
                (
                    st.vote_last_modified().map(|t| t.elapsed()),
                    st.vote_ref().is_committed(),
                )
            })
            .await
        else {
            // Raft stopped: the group is gone, or the node.
            return;
        };
        let wait = if committed { lease + timeout } else { timeout };
        let due = since.map_or(Duration::ZERO, |s| wait.saturating_sub(s));
        if !due.is_zero() {
            tokio::time::sleep(due).await;
            continue;
        }
        // A drained node's replicas follow and vote, but do not lead
        // again: their leaderships were handed away before it stops.
        if group.is_some() && voters.network().link.draining() {
            timeout = election_timeout(timing);
            tokio::time::sleep(timeout).await;
            continue;
        }
        if !stand_if_a_majority_would(&voters, group.clone(), &raft, &log, timing).await {
            return;
        }
        // Not again before this election could end, or, refused, before
        // another timeout (a leader may reach this member meanwhile).
        timeout = election_timeout(timing);
        tokio::time::sleep(timeout).await;
    }
}

#[cfg(test)]
mod tests {
    use openraft::CommittedLeaderId;

    use super::*;

    fn log_id(term: u64, index: u64) -> Option<LogId<NodeId>> {
        Some(LogId::new(CommittedLeaderId::new(term, 1), index))
    }

    const DEAD: NodeId = 7;

    /// A follower of `leader`, whose lease runs or not.
    fn follower(leader: Option<NodeId>, lease_runs: bool) -> View {
        View {
            state: ServerState::Follower,
            leader,
            lease_runs,
            fenced: false,
        }
    }

    #[test]
    fn a_pre_vote_is_refused_to_a_shorter_log_and_granted_to_an_equal_or_longer_one() {
        let v = follower(Some(DEAD), true);
        let vote = |mine, theirs| would_vote(v, Some(DEAD), mine, theirs);
        // The failover soak's 4.5 s case: the two survivors' logs ended at
        // 1296 and 1299; the one at 1296 cannot win, and must not stand.
        assert_eq!(
            vote(log_id(53, 1299), log_id(53, 1296)),
            PreVoteAnswer::LongerLog
        );
        assert_eq!(vote(log_id(53, 1296), log_id(53, 1299)), PreVoteAnswer::Yes);
        assert_eq!(vote(log_id(53, 1299), log_id(53, 1299)), PreVoteAnswer::Yes);
        // A later term wins over a longer log of an earlier one.
        assert_eq!(vote(log_id(53, 1299), log_id(54, 10)), PreVoteAnswer::Yes);
        assert_eq!(
            vote(log_id(54, 10), log_id(53, 1299)),
            PreVoteAnswer::LongerLog
        );
        assert_eq!(vote(log_id(1, 0), None), PreVoteAnswer::LongerLog);
        assert_eq!(vote(None, None), PreVoteAnswer::Yes);
    }

    #[test]
    fn a_member_that_hears_its_leader_refuses_a_pre_vote() {
        let log = log_id(3, 10);
        let vote = |v, dead| would_vote(v, dead, log, log);
        // The partition case: the leader's heartbeats reach this voter,
        // so a cut-off member asking it gets no, and does not stand.
        assert_eq!(
            vote(follower(Some(1), true), None),
            PreVoteAnswer::HasLeader
        );
        // Its lease ran out: the leader is gone, as far as it knows.
        assert_eq!(vote(follower(Some(1), false), None), PreVoteAnswer::Yes);
        // The candidate found the leader dead (a refused dial): the lease
        // no longer counts.
        assert_eq!(
            vote(follower(Some(DEAD), true), Some(DEAD)),
            PreVoteAnswer::Yes
        );
        // But not for another leader than the dead one.
        assert_eq!(
            vote(follower(Some(1), true), Some(DEAD)),
            PreVoteAnswer::HasLeader
        );
        // Nor within the fence: the "dead" leader may be alive behind a
        // firewall that refuses, and delivering while a majority heard it.
        let fenced = View {
            fenced: true,
            ..follower(Some(DEAD), true)
        };
        assert_eq!(vote(fenced, Some(DEAD)), PreVoteAnswer::HasLeader);
        // A candidate's vote is not committed: no lease.
        let standing = View {
            state: ServerState::Candidate,
            leader: None,
            lease_runs: false,
            fenced: false,
        };
        assert_eq!(vote(standing, None), PreVoteAnswer::Yes);
        let with = |state| View {
            state,
            leader: Some(1),
            lease_runs: false,
            fenced: false,
        };
        assert_eq!(
            vote(with(ServerState::Leader), None),
            PreVoteAnswer::HasLeader
        );
        assert_eq!(
            vote(with(ServerState::Shutdown), None),
            PreVoteAnswer::NoReplica
        );
    }

    #[test]
    fn a_member_that_never_heard_its_leader_votes_like_a_leaderless_follower() {
        // A new member whose leader died before its first append: openraft
        // calls it a learner (no membership in its log), its log is empty,
        // and no lease runs. The other survivor asks it: yes.
        let new_member = View {
            state: ServerState::Learner,
            leader: None,
            lease_runs: false,
            fenced: false,
        };
        assert_eq!(
            would_vote(new_member, Some(DEAD), None, log_id(2, 40)),
            PreVoteAnswer::Yes
        );
        assert_eq!(would_vote(new_member, None, None, None), PreVoteAnswer::Yes);
        // A learner that hears its leader (one catching up) refuses, as a
        // follower does, and one with a longer log says so.
        let catching_up = View {
            leader: Some(1),
            lease_runs: true,
            ..new_member
        };
        assert_eq!(
            would_vote(catching_up, None, log_id(2, 40), log_id(2, 40)),
            PreVoteAnswer::HasLeader
        );
        assert_eq!(
            would_vote(new_member, Some(DEAD), log_id(2, 40), log_id(2, 39)),
            PreVoteAnswer::LongerLog
        );
    }

    fn tally(voters: usize, voter: bool, yes: usize, longer: usize) -> Tally {
        Tally {
            voters,
            voter,
            yes,
            longer,
            writing: false,
            vote: Vote::default(),
        }
    }

    #[test]
    fn a_leader_writing_a_large_entry_keeps_candidates_from_standing() {
        let t = RaftTiming::QUEUE;
        let ms = Duration::from_millis;
        let running = |d| Appends {
            running: Some(d),
            longest: None,
        };
        let ended = |took, ago| Appends {
            running: None,
            longest: Some((took, ago)),
        };
        let writing = |state, appends| writing_leader(state, appends, t);
        // The 80 MiB case: the leader has been writing for 1.3 s, longer
        // than the followers' leases; it is alive.
        assert!(writing(ServerState::Leader, running(ms(1300))));
        // It just finished: its heartbeats are on their way.
        assert!(writing(ServerState::Leader, ended(ms(1300), ms(200))));
        // An ordinary append (its heartbeat is not late), none at all, a
        // long one long ago, or a disk that hangs: the usual answer.
        assert!(!writing(ServerState::Leader, running(t.heartbeat / 2)));
        assert!(!writing(
            ServerState::Leader,
            ended(t.heartbeat / 2, ms(10))
        ));
        assert!(!writing(ServerState::Leader, Appends::default()));
        assert!(!writing(
            ServerState::Leader,
            ended(ms(1300), t.election_max() + ms(1))
        ));
        let hang = WRITING_AT_MOST + Duration::from_secs(1);
        assert!(!writing(ServerState::Leader, running(hang)));
        // A follower writing says nothing for the leader.
        assert!(!writing(
            ServerState::Follower,
            running(Duration::from_secs(2))
        ));
        // Both followers' leases ran out and they would vote for each
        // other, but the leader said it is writing: nobody stands.
        let mut t = tally(3, true, 1, 0);
        assert!(t.wins());
        t.writing = true;
        assert!(!t.wins() && !t.leaderless());
    }

    #[test]
    fn a_pre_vote_needs_a_majority_of_the_voters() {
        // The leader of three died: the other survivor's yes makes two.
        assert!(tally(3, true, 1, 0).wins());
        assert!(!tally(3, true, 0, 0).wins());
        assert!(!tally(5, true, 1, 0).wins());
        assert!(tally(5, true, 2, 0).wins());
        // A member that is not a voter counts only the others.
        assert!(!tally(3, false, 1, 0).wins());
        assert!(tally(3, false, 2, 0).wins());
        // A group of one elects itself.
        assert!(tally(1, true, 0, 0).wins());
        // The survivor with the longer log refuses, but has no leader.
        let behind = tally(3, true, 0, 1);
        assert!(!behind.wins() && behind.leaderless());
        // Nobody answered: cut off.
        assert!(!tally(3, true, 0, 0).leaderless());
    }

    #[test]
    fn election_timeouts_stay_within_the_timing() {
        let t = RaftTiming::QUEUE;
        for _ in 0..100 {
            let d = election_timeout(t);
            assert!(d >= t.election_min && d <= t.election_max(), "{d:?}");
        }
    }
}
