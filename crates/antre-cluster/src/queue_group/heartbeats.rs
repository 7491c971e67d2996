//! The heartbeats of every queue group to one member, in one message.
//!
//! Each quorum queue's (or stream's) leader sends each follower an empty
//! append every heartbeat interval, busy or not: 500 queues on three
//! nodes are 10,000 requests a second over the link, each a frame, a
//! write and a read on both ends and a wake-up of the connection's task,
//! about half of a core where RabbitMQ's Ra sends nothing for an idle
//! queue (BENCHMARKS.md, "Idle quorum queues"). Here the heartbeats of
//! a node's idle groups (see `IDLE_BEFORE_BATCHING`) to one member wait a
//! moment (a tenth of the heartbeat interval, at most 10 ms) for others,
//! and go together as one
//! [`Request::QueueHeartbeats`]; the member hands each to its group at
//! once, side by side, and answers them together. A group whose Raft is
//! slow to answer (a large append being written) is answered as late
//! before the batch's deadline, so it holds up no other group's answer;
//! for its leader, that heartbeat failed, as it would have alone.
//!
//! Appends that carry entries or a new commit index, and a busy group's
//! heartbeats, keep the group's own connection and wait for nobody.

use std::time::Duration;

use super::carriers::{self, Batch, Carriers};
use super::*;
use crate::network::CallError;

/// The carriers of the node's heartbeats, one per member.
pub(crate) type Heartbeats = Carriers<Beat>;

/// One group's heartbeat on its way.
pub(crate) struct Beat {
    pub(crate) group: String,
    pub(crate) rpc: AppendEntriesRequest<QueueTypeConfig>,
    /// How long its Raft waits for the answer.
    pub(crate) ttl: Duration,
}

impl Batch for Beat {
    type Answer = Response;

    fn ttl(&self) -> Duration {
        self.ttl
    }

    fn request(beats: Vec<Beat>, ttl: Duration) -> Request {
        Request::QueueHeartbeats {
            within_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
            beats: beats.into_iter().map(|b| (b.group, b.rpc)).collect(),
        }
    }

    fn answers(response: Response) -> Option<Vec<Result<Response, CallError>>> {
        let Response::QueueHeartbeats(each) = response else {
            return None;
        };
        let each = each.into_iter().map(|r| match r {
            Response::Late(g) => Err(CallError::Network(format!(
                "the replica of {g} did not answer in time"
            ))),
            r => no_group(r),
        });
        Some(each.collect())
    }
}

impl QueueGroups {
    /// Answers a peer's batch of heartbeats ([`Request::QueueHeartbeats`]):
    /// each group's answer, in order: [`Response::NoGroup`] for a group
    /// this node runs no replica of, [`Response::Late`] for one that did
    /// not answer within half of `within`.
    pub async fn serve_heartbeats(
        &self,
        beats: Vec<(String, AppendEntriesRequest<QueueTypeConfig>)>,
        within: Duration,
    ) -> Response {
        let each = beats.into_iter().map(|(group, rpc)| {
            let g = self.group(&group);
            let late = group.clone();
            let answer = async move {
                match g {
                    Some(g) => Response::QueueAppend(g.raft.append_entries(rpc).await),
                    None => Response::NoGroup(group),
                }
            };
            (answer, move || Response::Late(late))
        });
        Response::QueueHeartbeats(carriers::answer_each(within, each).await)
    }
}
