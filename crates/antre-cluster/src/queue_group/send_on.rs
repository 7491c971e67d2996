//! A quorum queue's leader deposed with its own node's publishes not
//! committed sends them on to the next leader, which stores them once.
//!
//! A client connected to the leader's node publishes into the leader's
//! engine directly. When that leader is deposed (a drain, a rebalance, a
//! lost election) with such publishes gathered but not proposed, or in an
//! entry not committed in its term, it cannot know whether the next leader
//! will commit that entry: it nacked them, and a publisher without
//! confirms lost them. RabbitMQ's channel keeps a quorum queue's pending
//! enqueues and resends them to the new leader, which skips the ones it
//! has by the enqueuer's sequence numbers.
//!
//! antre does the same with what a forwarding node already has (see
//! [`super::sources`]): each replica draws a run when it starts and numbers
//! every publish of its own node in it, the entry carries the numbers, and
//! every member skips a number it applied. A publish its leader did not
//! get committed goes to the forwarder, which holds it until the queue's
//! next leader is known and sends it there (or puts it in the queue here,
//! if this node leads again); its confirm is that leader's answer. Only
//! once every node reads the numbers (feature flag
//! `quorum_queue_forwarded_publish_dedupe`), and only for quorum queues:
//! a stream's offsets are its ids, and a skipped publish would leave a
//! gap every reader sees.

use std::sync::Arc;

use antre_broker::message::Message;
use antre_broker::remote::{RemotePublish, RemoteResult};
use antre_broker::replicated::PendingCommit;
use bytes::Bytes;

use super::{decode, Pending, QueueOps, Replica};
use crate::forward::Forwarder;

/// This node's own publishes in an entry (or in what was gathered) whose
/// commit in this leader's term is not known: each one's number in the
/// replica's run and its record, and the batch they confirm with.
pub(super) struct Unsure {
    messages: Vec<(u64, Bytes)>,
    pub(super) local: Arc<PendingCommit>,
}

impl Unsure {
    /// The messages of `ops` numbered in `run`.
    pub(super) fn of(ops: &QueueOps, run: u64, local: Arc<PendingCommit>) -> Unsure {
        let mut messages = Vec::new();
        for r in ops.sources.iter().filter(|r| r.run == run) {
            for k in 0..u64::from(r.count) {
                let id = r.id + k;
                if let Ok(i) = ops.enqueue.binary_search_by_key(&id, |(id, _)| *id) {
                    messages.push((r.seq + k, ops.enqueue[i].1 .0.clone()));
                }
            }
        }
        Unsure { messages, local }
    }
}

impl Pending {
    /// The number of this node's next publish, in the replica's run.
    pub(super) fn number(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }
}

impl Replica {
    /// Whether this node's publishes are numbered (once the cluster
    /// enabled the flag the forwarder numbers its messages by).
    pub(super) fn numbers(&self) -> bool {
        self.numbering.enabled_in(&self.engine.broker)
    }

    fn forwarder(&self) -> Option<Arc<Forwarder>> {
        self.groups.upgrade()?.forwarder.get()?.upgrade()
    }

    /// Sends on the publishes of an entry not committed in this leader's
    /// term.
    pub(super) fn send_on_unsure(&self, unsure: Unsure) {
        let messages: Option<Vec<(u64, Arc<Message>)>> = unsure
            .messages
            .into_iter()
            .map(|(seq, record)| Some((seq, decode(&record)?)))
            .collect();
        match messages {
            Some(messages) => self.send_on(messages, unsure.local),
            None => unsure.local.complete(false),
        }
    }

    /// Sends `messages` (each with its number in the replica's run) to
    /// the queue's next leader through the forwarder; `local` completes
    /// with its answer: committed if that leader took every one (or had
    /// it already).
    pub(super) fn send_on(&self, messages: Vec<(u64, Arc<Message>)>, local: Arc<PendingCommit>) {
        if messages.is_empty() {
            // None of the batch's publishes was in this entry.
            local.complete(true);
            return;
        }
        let (Some(forwarder), Some(queue)) = (self.forwarder(), self.engine.target.queue()) else {
            local.complete(false);
            return;
        };
        let batch = messages
            .into_iter()
            .map(|(seq, message)| RemotePublish {
                queues: vec![queue.name.clone()],
                message,
                seqs: vec![seq],
            })
            .collect();
        let done = Box::new(move |results: Vec<RemoteResult>| {
            local.complete(results.iter().all(|r| *r == RemoteResult::Accepted));
        });
        forwarder.send_on(&queue.vhost, self.run, batch, done);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue_group::sources::SourceRange;
    use crate::queue_group::Body;

    /// Only the messages numbered in the replica's run are sent on, each
    /// with its number; a forwarded one (another run) is its forwarding
    /// node's to send again.
    #[test]
    fn an_unsure_entry_sends_on_its_own_runs_messages_alone() {
        let ops = QueueOps {
            enqueue: (10..15)
                .map(|id| (id, Body(Bytes::from(format!("m{id}")))))
                .collect(),
            sources: vec![
                SourceRange {
                    run: 7,
                    seq: 100,
                    id: 10,
                    count: 2,
                },
                SourceRange {
                    run: 9,
                    seq: 5,
                    id: 12,
                    count: 1,
                },
                SourceRange {
                    run: 7,
                    seq: 102,
                    id: 13,
                    count: 2,
                },
            ],
            ..QueueOps::default()
        };
        let u = Unsure::of(&ops, 7, PendingCommit::new(None));
        let got: Vec<(u64, &[u8])> = u.messages.iter().map(|(s, b)| (*s, &b[..])).collect();
        assert_eq!(
            got,
            vec![
                (100, &b"m10"[..]),
                (101, b"m11"),
                (102, b"m13"),
                (103, b"m14")
            ]
        );
        assert!(Unsure::of(&ops, 8, PendingCommit::new(None))
            .messages
            .is_empty());
    }
}
