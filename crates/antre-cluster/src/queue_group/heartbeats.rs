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

use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::*;
use crate::network::{CallError, Connection};

/// The longest a heartbeat waits for others to go with.
const GATHER_AT_MOST: Duration = Duration::from_millis(10);
/// The most heartbeats in one message.
const BATCH_MAX: usize = 2048;

/// One group's heartbeat on its way.
struct Beat {
    group: String,
    rpc: AppendEntriesRequest<QueueTypeConfig>,
    ttl: Duration,
    answer: oneshot::Sender<Result<Response, CallError>>,
}

/// The node's batching of heartbeats, one task per member it sends to.
#[derive(Default)]
pub(crate) struct Heartbeats {
    to: Mutex<HashMap<(NodeId, SocketAddr), mpsc::UnboundedSender<Beat>>>,
}

impl Heartbeats {
    /// Sends `group`'s empty append to `target` with the others going
    /// there; its answer, within `ttl`.
    pub(crate) async fn send(
        &self,
        link: &Arc<Link>,
        target: NodeId,
        (name, addr): (String, SocketAddr),
        group: String,
        rpc: AppendEntriesRequest<QueueTypeConfig>,
        ttl: Duration,
    ) -> Result<Response, CallError> {
        let (answer, answered) = oneshot::channel();
        let beat = Beat {
            group,
            rpc,
            ttl,
            answer,
        };
        {
            let mut to = self.to.lock();
            let queue = to.entry((target, addr)).or_insert_with(|| {
                let (tx, rx) = mpsc::unbounded_channel();
                tokio::spawn(carry(rx, Connection::new(Arc::clone(link), &name, addr)));
                tx
            });
            // The task ends only when this registry is dropped.
            let _ = queue.send(beat);
        }
        answered
            .await
            .unwrap_or_else(|_| Err(CallError::Network("the heartbeat was not sent".into())))
    }
}

/// Sends the heartbeats to one member as they come, a batch at a time.
async fn carry(mut beats: mpsc::UnboundedReceiver<Beat>, mut conn: Connection) {
    while let Some(first) = beats.recv().await {
        let started = tokio::time::Instant::now();
        tokio::time::sleep((first.ttl / 10).min(GATHER_AT_MOST)).await;
        let mut batch = vec![first];
        while batch.len() < BATCH_MAX {
            match beats.try_recv() {
                Ok(b) => batch.push(b),
                Err(_) => break,
            }
        }
        // A group whose Raft gave up on its heartbeat waits no more.
        batch.retain(|b| !b.answer.is_closed());
        let Some(ttl) = batch.iter().map(|b| b.ttl).min() else {
            continue;
        };
        let ttl = ttl.saturating_sub(started.elapsed());
        let mut answers = Vec::with_capacity(batch.len());
        let mut sent = Vec::with_capacity(batch.len());
        for b in batch {
            answers.push(b.answer);
            sent.push((b.group, b.rpc));
        }
        let request = Request::QueueHeartbeats {
            within_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
            beats: sent,
        };
        match conn.call(&request, ttl).await {
            Ok(Response::QueueHeartbeats(each)) if each.len() == answers.len() => {
                for (answer, r) in answers.into_iter().zip(each) {
                    let r = match r {
                        Response::Late(g) => Err(CallError::Network(format!(
                            "the replica of {g} did not answer in time"
                        ))),
                        r => no_group(r),
                    };
                    let _ = answer.send(r);
                }
            }
            Ok(_) => {
                for answer in answers {
                    let _ = answer.send(Err(CallError::Network("answer of the wrong kind".into())));
                }
            }
            Err(e) => {
                for answer in answers {
                    let _ = answer.send(Err(e.clone()));
                }
            }
        }
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
        // Half the sender's time: the rest is for the answer's way back.
        let deadline = tokio::time::Instant::now() + within / 2;
        let each = beats.into_iter().map(|(group, rpc)| {
            let g = self.group(&group);
            async move {
                let Some(g) = g else {
                    return Response::NoGroup(group);
                };
                match tokio::time::timeout_at(deadline, g.raft.append_entries(rpc)).await {
                    Ok(r) => Response::QueueAppend(r),
                    Err(_) => Response::Late(group),
                }
            }
        });
        Response::QueueHeartbeats(futures::future::join_all(each).await)
    }
}
