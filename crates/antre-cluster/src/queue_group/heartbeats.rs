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

/// How long a member's carrier waits for a heartbeat before it ends: a
/// member that left the cluster, or whose groups all went busy or away,
/// keeps no task. The next heartbeat starts a new one.
const CARRIER_IDLE: Duration = Duration::from_secs(30);

/// Where each member's carrier takes heartbeats, by member and address.
type Carriers = Mutex<HashMap<(NodeId, SocketAddr), mpsc::UnboundedSender<Beat>>>;

/// The node's batching of heartbeats, one task per member it sends to.
pub(crate) struct Heartbeats {
    to: Arc<Carriers>,
    idle: Duration,
}

impl Default for Heartbeats {
    fn default() -> Heartbeats {
        Heartbeats::with_idle(CARRIER_IDLE)
    }
}

impl Heartbeats {
    /// Carriers that end after `idle` without a heartbeat.
    fn with_idle(idle: Duration) -> Heartbeats {
        Heartbeats {
            to: Arc::default(),
            idle,
        }
    }

    /// The members' carriers running now.
    #[cfg(test)]
    fn carriers(&self) -> usize {
        self.to.lock().len()
    }

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
            if !to.contains_key(&(target, addr)) {
                // The member moved: its carrier to the old address ends
                // once its channel, dropped here, is drained.
                to.retain(|&(node, _), _| node != target);
            }
            let queue = to.entry((target, addr)).or_insert_with(|| {
                let (tx, rx) = mpsc::unbounded_channel();
                let carrier = Carrier {
                    registry: Arc::downgrade(&self.to),
                    key: (target, addr),
                    idle: self.idle,
                };
                tokio::spawn(carrier.run(rx, Connection::new(Arc::clone(link), &name, addr)));
                tx
            });
            // Cannot fail: a carrier ends only after taking its sender out
            // of the registry, under this lock.
            let _ = queue.send(beat);
        }
        answered
            .await
            .unwrap_or_else(|_| Err(CallError::Network("the heartbeat was not sent".into())))
    }
}

/// The task that carries the heartbeats to one member.
struct Carrier {
    registry: Weak<Carriers>,
    key: (NodeId, SocketAddr),
    idle: Duration,
}

impl Carrier {
    /// The next heartbeat, or `None` once the carrier should end: its
    /// sender was dropped (the member moved, the node stops), or nothing
    /// came for `idle`, and then it takes itself out of the registry.
    async fn next(&self, beats: &mut mpsc::UnboundedReceiver<Beat>) -> Option<Beat> {
        if let Ok(beat) = tokio::time::timeout(self.idle, beats.recv()).await {
            return beat;
        }
        let registry = self.registry.upgrade()?;
        let mut to = registry.lock();
        // Senders send under this lock: nothing can arrive between this
        // look and the removal.
        match beats.try_recv() {
            Ok(beat) => Some(beat),
            Err(mpsc::error::TryRecvError::Disconnected) => None,
            Err(mpsc::error::TryRecvError::Empty) => {
                // The sender lives, and only the registry holds it, under
                // this carrier's key.
                to.remove(&self.key);
                None
            }
        }
    }

    /// Sends the heartbeats to the member as they come, a batch at a time.
    async fn run(self, mut beats: mpsc::UnboundedReceiver<Beat>, mut conn: Connection) {
        while let Some(first) = self.next(&mut beats).await {
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
                        let _ =
                            answer.send(Err(CallError::Network("answer of the wrong kind".into())));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ClusterConfig;

    fn link() -> Arc<Link> {
        Arc::new(Link::new(ClusterConfig::for_test(
            "n1",
            "n1=127.0.0.1:1,n2=127.0.0.1:2",
        )))
    }

    /// An address nothing listens on: a heartbeat sent there fails at once.
    async fn closed_port() -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    }

    /// n1's heartbeat to n2 at `addr`, with a second to spare.
    async fn beat(beats: &Heartbeats, link: &Arc<Link>, addr: SocketAddr) -> String {
        let rpc = AppendEntriesRequest {
            vote: openraft::Vote::new(1, 1),
            prev_log_id: None,
            entries: Vec::new(),
            leader_commit: None,
        };
        let target = ("n2".to_owned(), addr);
        match beats
            .send(link, 2, target, "q".into(), rpc, Duration::from_secs(1))
            .await
        {
            Ok(r) => format!("{r:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[tokio::test]
    async fn a_member_that_moved_keeps_one_carrier() {
        let (link, beats) = (link(), Heartbeats::default());
        beat(&beats, &link, closed_port().await).await;
        beat(&beats, &link, closed_port().await).await;
        // Before: one carrier per address n2 ever had, each for good.
        assert_eq!(beats.carriers(), 1);
    }

    #[tokio::test]
    async fn an_idle_carrier_ends_and_the_next_heartbeat_starts_another() {
        let (link, beats) = (link(), Heartbeats::with_idle(Duration::from_millis(20)));
        let addr = closed_port().await;
        beat(&beats, &link, addr).await;
        tokio::time::timeout(Duration::from_secs(10), async {
            while beats.carriers() > 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the idle carrier ended");
        // Sent, and failed as a closed port fails, not for want of a carrier.
        let answer = beat(&beats, &link, addr).await;
        assert!(!answer.contains("not sent"), "{answer}");
    }
}
