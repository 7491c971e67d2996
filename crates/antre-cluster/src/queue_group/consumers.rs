//! Single active consumer of a replicated stream across the cluster: every
//! node with members of the stream's groups reports them to the stream's
//! leader, which runs the one [`Coordinator`] of the stream (see
//! [`antre_broker::stream::sac`] for the protocol and its leases).
//!
//! A node's reports to one leader's node travel together (see
//! [`super::carriers`]): every stream's members are reported every
//! [`antre_broker::stream::sac::REPORT_EVERY`], and at 100 partitions
//! that was a thousand calls a second across a 3-node cluster, one per
//! stream and node.

use std::time::{Duration, Instant};

use antre_broker::stream::sac::{Coordinator, LeadershipProof, Report};
use openraft::ServerState;

use super::carriers::{self, Batch};
use super::*;
use crate::network::CallError;

/// How long a report may wait for its answer: past it the node counts the
/// report as unanswered (its lease runs from when it sent the last
/// answered one).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(1);

/// A replica's side of the coordination: the coordinator while this node
/// leads the stream.
pub(super) struct Consumers {
    /// The group started with this process (not from a log on disk): in
    /// its first term, no earlier coordinator activated anybody. (A leader
    /// that restarts may lead on in the same term.)
    fresh: bool,
    coordinator: Mutex<Option<Coordinator>>,
    /// The last round of heartbeats a majority answered; held across a
    /// round, so that reports arriving meanwhile wait for it rather than
    /// each start one (every report of every node came with a round of its
    /// own, and at 30 partitions those rounds took a core).
    proof: tokio::sync::Mutex<LeadershipProof>,
}

impl Consumers {
    pub(super) fn new(fresh: bool) -> Consumers {
        Consumers {
            fresh,
            coordinator: Mutex::default(),
            proof: tokio::sync::Mutex::default(),
        }
    }
}

/// One stream's report on its way to the stream's leader.
pub(super) struct StreamReport {
    group: String,
    report: Report,
}

impl Batch for StreamReport {
    type Answer = Result<Vec<bool>, String>;

    fn ttl(&self) -> Duration {
        ANSWER_TIMEOUT
    }

    fn request(reports: Vec<StreamReport>, ttl: Duration) -> Request {
        Request::StreamConsumers {
            within_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
            reports: reports.into_iter().map(|r| (r.group, r.report)).collect(),
        }
    }

    fn answers(response: Response) -> Option<Vec<Result<Self::Answer, CallError>>> {
        let Response::StreamConsumers(each) = response else {
            return None;
        };
        Some(each.into_iter().map(Ok).collect())
    }
}

impl QueueGroups {
    /// Hands `report` (this node's members of the stream `group`'s
    /// groups) to the stream's leader: for each member, whether it should
    /// be active.
    pub(super) async fn report_consumers(
        &self,
        group: &str,
        mut report: Report,
    ) -> Result<Vec<bool>, String> {
        let g = self
            .group(group)
            .ok_or_else(|| "no replica of the stream here".to_owned())?;
        report.node = self.link.config.node_name.clone();
        let m = g.raft.metrics().borrow().clone();
        if m.state == ServerState::Leader {
            return self.coordinate(group, &report).await;
        }
        let leader = m
            .current_leader
            .ok_or_else(|| "the stream has no leader".to_owned())?;
        let to = self
            .name_of(leader)
            .zip(self.address_of(leader))
            .ok_or_else(|| "the stream's leader is not known yet".to_owned())?;
        let call = StreamReport {
            group: group.to_owned(),
            report,
        };
        match self.reports.send(&self.link, leader, to, call).await {
            Ok(answer) => answer,
            Err(e) => Err(format!("the stream's leader did not answer: {e}")),
        }
    }

    /// Answers a node's reports ([`Request::StreamConsumers`]), each
    /// within half of `within` (the rest is for the answer's way back): a
    /// stream whose leadership cannot be proven in time holds up no other
    /// stream's answer.
    pub(crate) async fn serve_reports(
        &self,
        reports: Vec<(String, Report)>,
        within: Duration,
    ) -> Response {
        let each = reports.into_iter().map(|(group, report)| {
            let answer = async move { self.coordinate(&group, &report).await };
            let late = || Err("the stream's leader did not answer in time".into());
            (answer, late)
        });
        Response::StreamConsumers(carriers::answer_each(within, each).await)
    }

    /// Answers a node's report, on the stream's leader: only while a
    /// majority follows this node, so that a leader cut off from it stops
    /// renewing its members' leases.
    async fn coordinate(&self, group: &str, report: &Report) -> Result<Vec<bool>, String> {
        let g = self
            .group(group)
            .ok_or_else(|| "no replica of the stream here".to_owned())?;
        let engine = &g.machine.engine;
        let term = engine.term.load(Ordering::Acquire);
        let asked = Instant::now();
        let mut proof = g.replica.consumers.proof.lock().await;
        if proof.failed_since(asked) {
            return Err("no majority confirmed the stream's leader".into());
        }
        if !proof.holds(term, Instant::now()) {
            let since = Instant::now();
            let round = tokio::time::timeout(ANSWER_TIMEOUT, g.raft.ensure_linearizable()).await;
            let failure = match round {
                Ok(Ok(_)) => None,
                Ok(Err(e)) => Some(format!("not the stream's leader: {e}")),
                Err(_) => Some("no majority answered in time".into()),
            };
            if let Some(why) = failure {
                proof.failed(since);
                return Err(why);
            }
            proof.confirmed(term, since);
        }
        if !engine.active.load(Ordering::Acquire) {
            return Err("the stream's leader is taking over".into());
        }
        let now = Instant::now();
        // The round proved `term`; leading another by now, this node waits
        // for a round of that one.
        if engine.term.load(Ordering::Acquire) != term || !proof.holds(term, now) {
            return Err("the stream's leadership changed".into());
        }
        drop(proof);
        let mut coordinator = g.replica.consumers.coordinator.lock();
        let c = match coordinator.as_mut() {
            Some(c) if c.term() == term => c,
            _ => {
                // The stream's first leader: nobody was activated before.
                let first = term <= 1 && g.replica.consumers.fresh;
                tracing::debug!(group, term, first, "coordinating single active consumers");
                coordinator.insert(Coordinator::new(term, now, first))
            }
        };
        Ok(c.report(report, now))
    }
}
