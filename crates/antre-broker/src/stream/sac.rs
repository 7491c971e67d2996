//! Single active consumer over the stream protocol: which member of each
//! group of a stream is active, as RabbitMQ's
//! `rabbit_stream_sac_coordinator` decides it. Subscriptions that share a
//! name on a stream form a group, and only one of them (the active one)
//! gets messages. A plain stream's group keeps its first member active
//! until it leaves; a super stream partition's group makes member
//! `partition index mod size` active, so the partitions spread over the
//! members, and a newcomer may take the place of the active one, which is
//! first told to step down (so it can store its offset) and replaced once
//! it answered.
//!
//! The [`Coordinator`] only decides: nodes hold the members (a member is
//! one subscription of one client connection) and report them, each with
//! whether it is active now, and apply the answer. On one node the
//! coordinator is called in place; on a cluster a replicated stream's
//! leader runs it and every node with members reports to it, on change
//! and every [`REPORT_EVERY`], so that members on different nodes form one
//! group.
//!
//! Leases keep two members from being active at once when nodes or links
//! fail. A node whose reports went unanswered for [`NODE_LEASE`] (counted
//! from when it sent the last answered one) makes its members step down;
//! the coordinator drops the members of a node not heard from for
//! [`COORDINATOR_LEASE`], which is longer, so by then they stopped. A
//! coordinator only answers while a majority follows its node, and a new
//! one (a new leader) activates nobody that was not reported active for
//! [`NODE_LEASE`] plus a margin, unless its term is the stream's first:
//! a member activated by an earlier leader is either reported to it by
//! then or stopped.
//!
//! "While a majority follows" costs a round of heartbeats to the other
//! members; one round serves every report answered within
//! [`PROOF_FRESH`] of its start ([`LeadershipProof`]), so a stream's
//! leader pays about one round per [`REPORT_EVERY`] however many nodes
//! report, not one per report.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// How often a node with members reports them (it also reports at once
/// when they change).
pub const REPORT_EVERY: Duration = Duration::from_millis(300);
/// Unanswered for this long, a node's active members step down.
pub const NODE_LEASE: Duration = Duration::from_secs(2);
/// Not heard from for this long, a node's members are dropped.
pub const COORDINATOR_LEASE: Duration = Duration::from_millis(2500);
/// How long a coordinator of a later term waits before it activates a
/// member nobody reported active.
pub const TAKEOVER_GRACE: Duration = Duration::from_millis(2500);

/// How long after it started a round of heartbeats a majority answered
/// still proves the coordinator's node leads (see [`LeadershipProof`]).
pub const PROOF_FRESH: Duration = Duration::from_millis(250);

// A member renewed on the strength of a proof's round stays active until
// NODE_LEASE after its report was sent, at most PROOF_FRESH after the
// round began; a later leader was elected after that start (a majority
// answered the round in the old term first) and activates others only
// TAKEOVER_GRACE after its election. This must hold with a margin:
const _: () =
    assert!(NODE_LEASE.as_millis() + PROOF_FRESH.as_millis() + 200 <= TAKEOVER_GRACE.as_millis());

/// When a majority last confirmed, in a round of heartbeats begun at
/// `since`, that this node leads the stream in `term`: a coordinator
/// answers a report only on such a proof, at most [`PROOF_FRESH`] old,
/// and asks for a new round when it has none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LeadershipProof {
    last: Option<(u64, Instant)>,
    /// When the last round that failed began.
    failed: Option<Instant>,
}

impl LeadershipProof {
    /// Whether a report may be answered at `now` in `term` without a new
    /// round.
    pub fn holds(&self, term: u64, now: Instant) -> bool {
        self.last.is_some_and(|(t, since)| {
            t == term && now.saturating_duration_since(since) < PROOF_FRESH
        })
    }

    /// A majority answered a round begun at `since` in `term`.
    pub fn confirmed(&mut self, term: u64, since: Instant) {
        match self.last {
            // A round begun later already answered.
            Some((t, s)) if t == term && s >= since => {}
            _ => self.last = Some((term, since)),
        }
    }

    /// A round begun at `since` failed (no majority, or another leader).
    pub fn failed(&mut self, since: Instant) {
        self.failed = Some(since);
    }

    /// Whether a round begun after `asked` failed: a report that waited
    /// for it shares its failure rather than start another round.
    pub fn failed_since(&self, asked: Instant) -> bool {
        self.failed.is_some_and(|f| f >= asked)
    }
}

/// One member, as its node reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportedMember {
    /// The group: the consumer name.
    pub group: String,
    /// The stream's index among its super stream's partitions; None for a
    /// plain stream.
    pub partition: Option<usize>,
    /// The member's connection, unique on its node.
    pub connection: u64,
    /// Its subscription id on that connection.
    pub subscription: u8,
    /// Whether it is active, or told to step down and not answered yet.
    pub active: bool,
}

/// Everything one node holds of one stream's groups.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// The node (empty on a single node).
    pub node: String,
    /// Its members, in the order they subscribed.
    pub members: Vec<ReportedMember>,
}

#[derive(Debug)]
struct Member {
    node: String,
    connection: u64,
    subscription: u8,
    /// As last reported.
    reported: bool,
    /// The coordinator's decision: None until it made one.
    want: Option<bool>,
}

impl Member {
    fn is(&self, node: &str, m: &ReportedMember) -> bool {
        self.node == node && self.connection == m.connection && self.subscription == m.subscription
    }

    /// Holds the group's slot and was not told to give it up.
    fn keeps(&self) -> bool {
        self.want != Some(false) && (self.reported || self.want == Some(true))
    }

    /// Told to step down and has not answered yet.
    fn stepping_down(&self) -> bool {
        self.reported && self.want == Some(false)
    }
}

#[derive(Debug)]
struct Group {
    name: String,
    partition: Option<usize>,
    members: Vec<Member>,
}

impl Group {
    /// The member that should be active.
    fn chosen(&self) -> usize {
        self.partition.map_or(0, |p| p % self.members.len())
    }

    fn decide(&mut self, may_activate: bool) {
        let keepers: Vec<usize> = (0..self.members.len())
            .filter(|&i| self.members[i].keeps())
            .collect();
        // Two keepers only after a change of coordinator (each activated
        // by another): the first reported one stays.
        let keeper = keepers
            .iter()
            .copied()
            .find(|&i| self.members[i].reported)
            .or(keepers.first().copied());
        for &i in &keepers {
            if Some(i) != keeper {
                self.members[i].want = Some(false);
            }
        }
        if let Some(k) = keeper {
            let rebalance = self.partition.is_some() && k != self.chosen();
            self.members[k].want = Some(!rebalance);
            return;
        }
        if may_activate && !self.members.iter().any(Member::stepping_down) {
            let c = self.chosen();
            self.members[c].want = Some(true);
        }
    }
}

/// Decides which member of each group of one stream is active (see the
/// module docs).
#[derive(Debug)]
pub struct Coordinator {
    term: u64,
    /// Before this, only members reported active may be.
    activate_from: Instant,
    /// When each node last reported.
    heard: Vec<(String, Instant)>,
    groups: Vec<Group>,
}

impl Coordinator {
    /// A coordinator for leadership `term`, begun `now`. With `first`
    /// (no earlier leader could have activated anybody) it activates at
    /// once; otherwise it waits [`TAKEOVER_GRACE`] for reports.
    pub fn new(term: u64, now: Instant, first: bool) -> Coordinator {
        Coordinator {
            term,
            activate_from: if first { now } else { now + TAKEOVER_GRACE },
            heard: Vec::new(),
            groups: Vec::new(),
        }
    }

    /// The leadership term it decides for.
    pub fn term(&self) -> u64 {
        self.term
    }

    /// Takes a node's report: returns, for each of its members in the
    /// report's order, whether it should be active. (Other nodes learn of
    /// decisions about their members from their next report.)
    pub fn report(&mut self, report: &Report, now: Instant) -> Vec<bool> {
        match self.heard.iter_mut().find(|(n, _)| *n == report.node) {
            Some((_, at)) => *at = now,
            None => self.heard.push((report.node.clone(), now)),
        }
        let lapsed: Vec<String> = self
            .heard
            .iter()
            .filter(|(_, at)| now.duration_since(*at) > COORDINATOR_LEASE)
            .map(|(n, _)| n.clone())
            .collect();
        self.heard.retain(|(n, _)| !lapsed.contains(n));
        let node = report.node.as_str();
        let may_activate = now >= self.activate_from;
        for g in &mut self.groups {
            g.members.retain(|m| {
                !lapsed.contains(&m.node)
                    && (m.node != node
                        || report
                            .members
                            .iter()
                            .any(|r| r.group == g.name && m.is(node, r)))
            });
        }
        for r in &report.members {
            let g = match self.groups.iter().position(|g| g.name == r.group) {
                Some(i) => &mut self.groups[i],
                None => {
                    self.groups.push(Group {
                        name: r.group.clone(),
                        partition: r.partition,
                        members: Vec::new(),
                    });
                    let last = self.groups.len() - 1;
                    &mut self.groups[last]
                }
            };
            g.partition = r.partition;
            match g.members.iter_mut().find(|m| m.is(node, r)) {
                Some(m) => m.reported = r.active,
                None => g.members.push(Member {
                    node: node.to_owned(),
                    connection: r.connection,
                    subscription: r.subscription,
                    reported: r.active,
                    // Active and unknown here: activated by an earlier
                    // coordinator (kept, during the wait), or a member
                    // this one dropped when its node's lease ended (a
                    // report held up on a slow link may still say it is
                    // active): it steps down.
                    want: (r.active && may_activate).then_some(false),
                }),
            }
        }
        self.groups.retain(|g| !g.members.is_empty());
        for g in &mut self.groups {
            g.decide(may_activate);
        }
        report
            .members
            .iter()
            .map(|r| {
                self.groups
                    .iter()
                    .filter(|g| g.name == r.group)
                    .flat_map(|g| g.members.iter())
                    .find(|m| m.is(node, r))
                    .is_some_and(|m| m.want == Some(true))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(
        group: &str,
        partition: Option<usize>,
        connection: u64,
        active: bool,
    ) -> ReportedMember {
        ReportedMember {
            group: group.into(),
            partition,
            connection,
            subscription: 1,
            active,
        }
    }

    fn report(node: &str, members: Vec<ReportedMember>) -> Report {
        Report {
            node: node.into(),
            members,
        }
    }

    #[test]
    fn the_first_member_across_nodes_stays_active_until_it_leaves() {
        let t = Instant::now();
        let mut c = Coordinator::new(1, t, true);
        let a = c.report(&report("n1", vec![member("app", None, 1, false)]), t);
        assert_eq!(a, [true]);
        let b = c.report(&report("n2", vec![member("app", None, 7, false)]), t);
        assert_eq!(b, [false], "n1's member holds the group");
        // n1's member, now active, leaves: n2's takes over.
        assert!(c.report(&report("n1", vec![]), t).is_empty());
        let b = c.report(&report("n2", vec![member("app", None, 7, false)]), t);
        assert_eq!(b, [true]);
    }

    #[test]
    fn a_partition_rebalances_across_nodes_after_the_active_one_steps_down() {
        let t = Instant::now();
        let mut c = Coordinator::new(1, t, true);
        // Partition 1 of a super stream: with two members, the second.
        assert_eq!(
            c.report(&report("n1", vec![member("app", Some(1), 1, false)]), t),
            [true]
        );
        let b = c.report(&report("n2", vec![member("app", Some(1), 2, false)]), t);
        assert_eq!(b, [false], "not before the active one stepped down");
        // n1's member, still active, is told to step down.
        assert_eq!(
            c.report(&report("n1", vec![member("app", Some(1), 1, true)]), t),
            [false]
        );
        assert_eq!(
            c.report(&report("n2", vec![member("app", Some(1), 2, false)]), t),
            [false]
        );
        // It answered: the chosen one takes over.
        assert_eq!(
            c.report(&report("n1", vec![member("app", Some(1), 1, false)]), t),
            [false]
        );
        assert_eq!(
            c.report(&report("n2", vec![member("app", Some(1), 2, false)]), t),
            [true]
        );
    }

    #[test]
    fn a_silent_nodes_members_are_dropped_after_its_lease() {
        let t = Instant::now();
        let mut c = Coordinator::new(1, t, true);
        assert_eq!(
            c.report(&report("n1", vec![member("app", None, 1, false)]), t),
            [true]
        );
        let later = t + COORDINATOR_LEASE / 2;
        assert_eq!(
            c.report(&report("n2", vec![member("app", None, 2, false)]), later),
            [false]
        );
        let lapsed = t + COORDINATOR_LEASE + Duration::from_millis(1);
        assert_eq!(
            c.report(&report("n2", vec![member("app", None, 2, false)]), lapsed),
            [true]
        );
        assert!(
            NODE_LEASE < COORDINATOR_LEASE,
            "a node stops its members first"
        );
    }

    #[test]
    fn a_member_of_a_dropped_node_reported_active_late_steps_down() {
        let t = Instant::now();
        let mut c = Coordinator::new(1, t, true);
        assert_eq!(
            c.report(&report("n1", vec![member("app", None, 1, false)]), t),
            [true]
        );
        assert_eq!(
            c.report(&report("n2", vec![member("app", None, 2, false)]), t),
            [false]
        );
        // n1 is cut off: dropped after its lease, n2's member activated.
        let lapsed = t + COORDINATOR_LEASE + Duration::from_millis(1);
        assert_eq!(
            c.report(&report("n2", vec![member("app", None, 2, false)]), lapsed),
            [true]
        );
        // A report n1 sent before its own lease ended arrives once the
        // link heals, saying its member is active: it is told to step
        // down, and n2's stays active.
        assert_eq!(
            c.report(&report("n1", vec![member("app", None, 1, true)]), lapsed),
            [false]
        );
        assert_eq!(
            c.report(&report("n2", vec![member("app", None, 2, true)]), lapsed),
            [true]
        );
        // It stepped down: it waits behind n2's.
        assert_eq!(
            c.report(&report("n1", vec![member("app", None, 1, false)]), lapsed),
            [false]
        );
    }

    #[test]
    fn a_new_coordinator_keeps_the_reported_active_member_and_waits_for_the_others() {
        let t = Instant::now();
        let mut c = Coordinator::new(2, t, false);
        // n2 reports first: its member is not activated while n1 may
        // still hold one active.
        assert_eq!(
            c.report(&report("n2", vec![member("app", None, 2, false)]), t),
            [false]
        );
        assert_eq!(
            c.report(&report("n1", vec![member("app", None, 1, true)]), t),
            [true]
        );
        assert_eq!(
            c.report(&report("n2", vec![member("app", None, 2, false)]), t),
            [false]
        );
        // With nobody active, the wait ends after the grace.
        let mut c = Coordinator::new(2, t, false);
        assert_eq!(
            c.report(&report("n2", vec![member("app", None, 2, false)]), t),
            [false]
        );
        let after = t + TAKEOVER_GRACE;
        assert_eq!(
            c.report(&report("n2", vec![member("app", None, 2, false)]), after),
            [true]
        );
        assert!(NODE_LEASE < TAKEOVER_GRACE);
    }

    #[test]
    fn of_two_members_reported_active_the_first_stays() {
        let t = Instant::now();
        let mut c = Coordinator::new(3, t, false);
        assert_eq!(
            c.report(&report("n1", vec![member("app", None, 1, true)]), t),
            [true]
        );
        assert_eq!(
            c.report(&report("n2", vec![member("app", None, 2, true)]), t),
            [false]
        );
        assert_eq!(
            c.report(&report("n1", vec![member("app", None, 1, true)]), t),
            [true]
        );
    }

    #[test]
    fn a_leadership_proof_serves_its_term_for_a_while() {
        let t0 = Instant::now();
        let mut proof = LeadershipProof::default();
        assert!(!proof.holds(3, t0), "no round yet");
        proof.confirmed(3, t0);
        assert!(proof.holds(3, t0 + PROOF_FRESH / 2));
        assert!(!proof.holds(3, t0 + PROOF_FRESH), "too old");
        assert!(!proof.holds(4, t0), "another term needs its own round");
        // A round that began earlier but answered later changes nothing.
        proof.confirmed(3, t0 + PROOF_FRESH);
        proof.confirmed(3, t0);
        assert!(proof.holds(3, t0 + PROOF_FRESH * 3 / 2));
        proof.confirmed(4, t0 + PROOF_FRESH);
        assert!(!proof.holds(3, t0 + PROOF_FRESH));
        assert!(proof.holds(4, t0 + PROOF_FRESH));
        // A failed round answers the reports that waited for it.
        let later = t0 + PROOF_FRESH * 4;
        proof.failed(later);
        assert!(proof.failed_since(later - PROOF_FRESH));
        assert!(!proof.failed_since(later + PROOF_FRESH));
    }

    #[test]
    fn groups_of_one_stream_are_decided_apart() {
        let t = Instant::now();
        let mut c = Coordinator::new(1, t, true);
        let r = report(
            "n1",
            vec![
                member("a", None, 1, false),
                member("b", None, 1, false),
                member("a", None, 2, false),
            ],
        );
        let r = Report {
            members: r
                .members
                .into_iter()
                .enumerate()
                .map(|(i, mut m)| {
                    m.subscription = i as u8;
                    m
                })
                .collect(),
            ..r
        };
        assert_eq!(c.report(&r, t), [true, true, false]);
    }
}
