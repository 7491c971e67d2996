//! The fence: a quorum queue's leader delivers only while a majority of
//! its group is known to follow it.
//!
//! A leader learns that it was deposed only when a member answers it with
//! a later term. Cut off from the others, it hears nothing, and its
//! engine went on handing out the messages it held: a get through its
//! node took a message the majority's new leader had already given out
//! (and, for a no-ack get, forgotten for good), unmarked as a
//! redelivery. RabbitMQ's quorum queues do not: their deliveries are
//! effects of commands their Raft commits, which a cut-off leader cannot.
//!
//! antre's engine delivers without a Raft round per delivery, so it
//! fences itself by time, as Raft's thesis (section 6.4.1) describes for
//! leader leases. Every member that heard the leader refuses to vote for
//! another for [`RaftTiming::fence`] after (openraft's lease and the
//! pre-vote's are longer; the fast failover, which stands at once for a
//! leader found dead, waits for it too, see [`crate::election`]). So when
//! a majority answered a request the leader sent at `t` (an append, a
//! heartbeat or a lease), no other leader can be elected before
//! `t + fence` by the member's clock, which starts later than the
//! leader's. The leader delivers until `t + fence - fence / 8`: the
//! eighth covers the two clocks' drift. After that its queue holds its
//! deliveries, and a get through it waits, until the next answers come.
//! An idle group's leases come every third heartbeat interval (0.3 s by
//! default, inside the 0.35 s), and a busy one's heartbeats every
//! interval, so a leader that is followed never notices.
//!
//! [`RaftTiming::fence`]: crate::config::RaftTiming::fence

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{OnceLock, Weak};
use std::time::{Duration, Instant};

use antre_broker::Queue;
use openraft::{BasicNode, RaftMetrics};
use parking_lot::Mutex;

use crate::NodeId;

/// One group's fence, on each member (it matters only while it leads).
pub(crate) struct Fence {
    /// How long after a request a majority answered the leader delivers.
    hold: Duration,
    /// The clock `until` counts from.
    base: Instant,
    /// Until when the leader may deliver: nanoseconds after `base`; 0 for
    /// not at all.
    until: AtomicU64,
    acks: Mutex<Acks>,
    /// The replica's metrics, for the group's voters.
    metrics: OnceLock<tokio::sync::watch::Receiver<RaftMetrics<NodeId, BasicNode>>>,
    /// The queue whose held deliveries go out once the fence opens again.
    queue: Weak<Queue>,
    /// Counts the times the fence opened again, for a get waiting on it.
    pub(crate) opened: tokio::sync::watch::Sender<u64>,
    /// The leader held a delivery since the fence last opened (logged
    /// once per lapse).
    held: AtomicBool,
}

/// The latest request each member answered, in the leader's latest term.
#[derive(Default)]
struct Acks {
    term: u64,
    sent: HashMap<NodeId, Instant>,
    /// The answer the fence last moved on with.
    computed: Option<Instant>,
}

impl Fence {
    /// The fence of `queue` (none for a stream: its consumers read their
    /// own member's log), with the group's `fence` timing.
    pub(crate) fn new(queue: Weak<Queue>, fence: Duration) -> Fence {
        Fence {
            hold: fence - fence / 8,
            base: Instant::now(),
            until: AtomicU64::new(0),
            acks: Mutex::default(),
            metrics: OnceLock::new(),
            queue,
            opened: tokio::sync::watch::Sender::new(0),
            held: AtomicBool::new(false),
        }
    }

    /// Gives the fence the group's voters, once its Raft runs.
    pub(crate) fn watch(
        &self,
        metrics: tokio::sync::watch::Receiver<RaftMetrics<NodeId, BasicNode>>,
    ) {
        let _ = self.metrics.set(metrics);
    }

    /// Whether the leader may deliver now.
    pub(crate) fn open(&self) -> bool {
        let Some(metrics) = self.metrics.get() else {
            // No Raft (a unit test's engine).
            return true;
        };
        let until = self.until.load(Ordering::Acquire);
        if until != 0 && self.nanos(Instant::now()) < until {
            return true;
        }
        // A group of one voter, this member, has nobody to hear from.
        let m = metrics.borrow();
        let configs = m.membership_config.membership().get_joint_config();
        configs.iter().all(|c| c.len() == 1 && c.contains(&m.id))
    }

    /// The leader holds a delivery behind the closed fence: true the
    /// first time since it last opened (to say so once).
    pub(crate) fn first_hold(&self) -> bool {
        !self.held.swap(true, Ordering::AcqRel)
    }

    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Member `from` accepted the leadership of `term` in answer to a
    /// request sent at `sent`.
    pub(crate) fn acked(&self, from: NodeId, term: u64, sent: Instant) {
        let Some(metrics) = self.metrics.get() else {
            return;
        };
        let until = {
            let mut acks = self.acks.lock();
            if term < acks.term {
                return;
            }
            if term > acks.term {
                *acks = Acks {
                    term,
                    ..Acks::default()
                };
            }
            let at = acks.sent.entry(from).or_insert(sent);
            *at = (*at).max(sent);
            // A busy group's answers come thousands of times a second:
            // the fence moves on at most every RECOMPUTE (one a little
            // shorter than it could be is only more careful).
            if acks.computed.is_some_and(|c| sent < c + RECOMPUTE) {
                return;
            }
            let m = metrics.borrow();
            // During a membership change (joint consensus) an election
            // needs a majority of each configuration: so does the fence.
            let mut heard: Option<Instant> = None;
            for config in m.membership_config.membership().get_joint_config() {
                let Some(t) = majority_heard(m.id, config, &acks.sent) else {
                    return;
                };
                heard = Some(heard.map_or(t, |h| h.min(t)));
            }
            let Some(heard) = heard else {
                return;
            };
            acks.computed = Some(sent);
            self.nanos(heard + self.hold)
        };
        let was = self.until.fetch_max(until, Ordering::AcqRel);
        let now = self.nanos(Instant::now());
        if was <= now && until > now {
            // It had lapsed (or never opened): what it held goes out.
            let held = self.held.swap(false, Ordering::AcqRel);
            self.opened.send_modify(|n| *n += 1);
            if let Some(q) = self.queue.upgrade() {
                if held {
                    tracing::info!(
                        queue = %q.name,
                        "a majority answers this leader again: its deliveries go on"
                    );
                }
                q.kick();
            }
        }
    }
}

/// How often at most a fence moves on.
const RECOMPUTE: Duration = Duration::from_millis(5);

/// The latest time by which a majority of `voters` (this member `me`
/// counting as hearing itself now) had heard the leader, from the time
/// each other voter's latest answered request was sent; None if fewer
/// than a majority answered.
fn majority_heard(
    me: NodeId,
    voters: &std::collections::BTreeSet<NodeId>,
    sent: &HashMap<NodeId, Instant>,
) -> Option<Instant> {
    let majority = voters.len() / 2 + 1;
    let need = majority - usize::from(voters.contains(&me));
    let others = voters
        .iter()
        .filter(|&&v| v != me)
        .filter_map(|v| sent.get(v).copied());
    match need {
        0 => Some(Instant::now() + Duration::from_secs(3600)),
        // Three voters: the latest of the two others' answers.
        1 => others.max(),
        _ => {
            let mut others: Vec<Instant> = others.collect();
            others.sort_unstable_by(|a, b| b.cmp(a));
            others.get(need - 1).copied()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_majority_is_the_leader_and_the_latest_answers_it_needs() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let sent: HashMap<NodeId, Instant> = [(2, at(10)), (3, at(30))].into();
        // Three voters: the leader and the later of the two answers.
        let set = |v: &[NodeId]| v.iter().copied().collect::<std::collections::BTreeSet<_>>();
        assert_eq!(majority_heard(1, &set(&[1, 2, 3]), &sent), Some(at(30)));
        // Five: the leader and two answers, the second latest counts.
        let five: HashMap<NodeId, Instant> = [(2, at(10)), (3, at(30)), (4, at(20))].into();
        assert_eq!(
            majority_heard(1, &set(&[1, 2, 3, 4, 5]), &five),
            Some(at(20))
        );
        // Too few answers.
        let one: HashMap<NodeId, Instant> = [(2, at(10))].into();
        assert_eq!(majority_heard(1, &set(&[1, 2, 3, 4, 5]), &one), None);
        // Answers of members that are no voters do not count.
        let learner: HashMap<NodeId, Instant> = [(9, at(50)), (2, at(10))].into();
        assert_eq!(majority_heard(1, &set(&[1, 2, 3]), &learner), Some(at(10)));
        // A group of one needs nobody.
        assert!(majority_heard(1, &set(&[1]), &HashMap::new()).is_some());
    }

    /// A fence of member 1 in a group of `configs` (two: joint).
    fn fence_of(configs: Vec<std::collections::BTreeSet<NodeId>>) -> Fence {
        let fence = Fence::new(Weak::new(), Duration::from_millis(400));
        let mut m = RaftMetrics::new_initial(1);
        m.membership_config = std::sync::Arc::new(openraft::StoredMembership::new(
            None,
            openraft::Membership::new(configs, None),
        ));
        // The sender may go: the fence keeps the last metrics.
        fence.watch(tokio::sync::watch::channel(m).1);
        fence
    }

    #[test]
    fn the_fence_opens_with_a_majority_of_the_latest_term_and_lapses() {
        let fence = fence_of(vec![[1, 2, 3].into()]);
        assert!(!fence.open(), "closed until a majority answered");
        let now = Instant::now();
        fence.acked(2, 5, now);
        assert!(fence.open());
        assert_eq!(*fence.opened.borrow(), 1);
        // An answer of an earlier term changes nothing; a later term's
        // answers start over, and one long ago does not open it.
        fence.acked(3, 4, now);
        fence.acked(3, 6, now - Duration::from_secs(1));
        assert!(fence.open(), "the open fence of term 5 still runs");
        let lapsed = fence_of(vec![[1, 2, 3].into()]);
        lapsed.acked(2, 5, now - Duration::from_millis(350));
        assert!(!lapsed.open(), "past the fence's 350 ms");
    }

    #[test]
    fn a_membership_change_needs_a_majority_of_each_configuration() {
        let fence = fence_of(vec![[1, 2, 3].into(), [1, 4, 5].into()]);
        let now = Instant::now();
        // 4 and 5 with the leader are a majority of the five, not of the
        // first configuration.
        fence.acked(4, 2, now);
        fence.acked(5, 2, now);
        assert!(!fence.open());
        fence.acked(3, 2, now);
        assert!(fence.open());
    }
}
