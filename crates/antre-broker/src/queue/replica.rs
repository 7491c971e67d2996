//! A quorum queue's engine in a cluster: fed by its Raft group's applied
//! log on the group's leader, idle elsewhere (see [`crate::replicated`]).

use std::sync::Arc;

use super::{DeathReason, Overflow, Queue};
use crate::durable::Durable;
use crate::error::BrokerError;
use crate::message::Message;
use crate::replicated::QueueReplica;

/// A message of a replicated queue as its group holds it, for an engine
/// taking over: its id, the message, how often it came back.
#[derive(Debug, Clone)]
pub struct ReplicatedMessage {
    /// The group's id for it (the engine's sequence number).
    pub id: u64,
    /// The message.
    pub message: Arc<Message>,
    /// Deliveries that came back (`x-delivery-count`).
    pub delivery_count: u32,
    /// Dead-lettered at least once, its letter not known to be held yet:
    /// why. The new leader dead-letters it again rather than deliver it.
    pub dying: Option<DeathReason>,
}

impl Queue {
    /// Makes this queue's contents replicated through `replica`. The engine
    /// starts idle (standby) until [`Queue::replica_takeover`]. Returns
    /// false if it already had one.
    pub fn set_replica(&self, replica: Arc<dyn QueueReplica>) -> bool {
        if self.replica.set(Arc::clone(&replica)).is_err() {
            return false;
        }
        let mut st = self.state.lock();
        st.replica = Some(replica);
        st.standby = true;
        true
    }

    /// The queue's replication, if its contents are replicated.
    pub fn replica(&self) -> Option<&Arc<dyn QueueReplica>> {
        self.replica.get()
    }

    /// Publishes to a replicated queue (on its group's leader): applies the
    /// overflow rule `reject-publish` against the engine's count and the
    /// publishes still being committed, then hands the message to the
    /// group. Returns the batch the confirm waits for,
    /// or None if the queue refused the message.
    pub fn replicate(
        self: &Arc<Self>,
        message: &Arc<Message>,
        source: Option<crate::replicated::Source>,
    ) -> Result<Option<Arc<dyn Durable>>, BrokerError> {
        let Some(replica) = self.replica.get() else {
            return Err(BrokerError::Internal(format!(
                "{} is not replicated",
                self.describe()
            )));
        };
        {
            let mut st = self.state.lock();
            if st.deleted {
                return Ok(None);
            }
            // Under the queue's lock (the replica's locks are only ever
            // taken inside it): the engine's count and the one in flight
            // are of the same moment.
            let coming = replica.in_flight(st.next_seq);
            let full = st.is_full_with(message.body.len() as u64, coming);
            if full && st.args.overflow != Overflow::DropHead {
                if st.args.overflow == Overflow::RejectPublishDlx {
                    st.refused_to_dead_letter(Arc::clone(message));
                }
                return Ok(None);
            }
        }
        replica.enqueue(message, source).map(Some)
    }

    /// A committed enqueue, applied on the leader: the message joins the
    /// engine with the group's id as its sequence number (ids grow in log
    /// order), is delivered if a consumer can take it, and the queue's
    /// limits and TTLs apply (what they drop is settled through the group).
    pub fn replica_enqueue(self: &Arc<Self>, id: u64, message: Arc<Message>) {
        let now = self.clock.now_ms();
        let mut st = self.state.lock();
        if st.deleted || st.standby {
            return;
        }
        let entry = self.entry_for(&st.args, message, id, now);
        st.next_seq = st.next_seq.max(id + 1);
        self.metrics.published.inc();
        let arrived = super::arrival(&entry.message, now);
        st.insert_entry(entry, false);
        self.dispatch(&mut st, arrived.saturating_sub(1));
        self.enforce_committed_limits(&mut st);
        self.expire(&mut st, now);
    }

    /// The length limits, on messages the group committed: drop-head drops
    /// as ever, but under `reject-publish` every one was confirmed to its
    /// publisher, and dropping it would lose it. Publishes checked against
    /// the count at the same moment on different channels can take the
    /// queue a little past its limit; the next publishes are refused until
    /// it is back under (RabbitMQ's quorum queues also treat the limit as
    /// approximate).
    fn enforce_committed_limits(&self, st: &mut super::state::QueueState) {
        if st.args.overflow == Overflow::DropHead {
            self.enforce_limits(st);
        }
    }

    /// This node now leads the queue's group: the engine starts from the
    /// group's applied messages. Every one is marked redelivered: the old
    /// leader may have handed any of them out (the honest rule RabbitMQ's
    /// quorum queues also follow for messages returned by a lost consumer).
    pub fn replica_takeover(self: &Arc<Self>, messages: Vec<ReplicatedMessage>) {
        let now = self.clock.now_ms();
        let mut st = self.state.lock();
        Self::idle(&mut st);
        st.standby = false;
        let mut dying = false;
        for m in messages {
            st.next_seq = st.next_seq.max(m.id + 1);
            if let Some(reason) = m.dying {
                // Its letter goes again: it may reach a target twice,
                // never zero times.
                let retry = super::dying::DyingStage::RetryAt(now);
                st.hold_dying(m.id, m.message, reason, None, None, retry);
                dying = true;
                continue;
            }
            let mut entry = self.entry_for(&st.args, m.message, m.id, now);
            entry.delivery_count = m.delivery_count;
            st.insert_entry(entry, true);
        }
        self.dispatch(&mut st, now);
        self.enforce_committed_limits(&mut st);
        self.expire(&mut st, now);
        drop(st);
        if dying {
            self.mark_timed();
        }
    }

    /// This node no longer leads the queue's group: the engine drops what
    /// it holds (the group keeps it) and cancels its consumers, which are
    /// told with basic.cancel (clients re-subscribe on the new leader's
    /// node, as with RabbitMQ's consumer cancel notifications).
    pub fn replica_step_down(&self) {
        let mut st = self.state.lock();
        Self::idle(&mut st);
        st.standby = true;
        for c in st.consumers.take_all() {
            c.release_credit();
            c.sink.cancel(&c.tag);
        }
    }

    /// Empties the engine without settling anything in the group.
    fn idle(st: &mut super::state::QueueState) {
        for r in st.ready.drain() {
            if let super::ready::Body::Scratch(at) = r.body {
                st.ready.pager.free(at);
            }
        }
        st.outstanding.clear();
        st.clear_unacked();
        st.dead.clear();
        st.drop_dying();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::queue::tests::{consumer, message, queue_with, CollectSink};
    use crate::replicated::PendingCommit;
    use antre_amqp::FieldValue;
    use parking_lot::Mutex;

    /// Records what the engine reports.
    #[derive(Debug, Default)]
    struct Recorder {
        enqueued: Mutex<Vec<String>>,
        settled: Mutex<Vec<u64>>,
        returned: Mutex<Vec<u64>>,
        dying: Mutex<Vec<u64>>,
    }

    impl QueueReplica for Recorder {
        fn enqueue(
            &self,
            message: &Arc<Message>,
            _source: Option<crate::replicated::Source>,
        ) -> Result<Arc<dyn Durable>, BrokerError> {
            self.enqueued
                .lock()
                .push(String::from_utf8_lossy(&message.body).into_owned());
            Ok(PendingCommit::new(None))
        }
        fn settle(&self, id: u64) {
            self.settled.lock().push(id);
        }
        fn returned(&self, id: u64) {
            self.returned.lock().push(id);
        }
        fn dead_lettered(&self, id: u64, _reason: DeathReason) {
            self.dying.lock().push(id);
        }
        fn leads(&self) -> bool {
            true
        }
        fn taking_over(&self) -> Option<crate::replicated::TakeOver> {
            None
        }
        fn may_deliver(&self) -> bool {
            true
        }
        fn await_location(&self) -> bool {
            true
        }
        /// Nothing is ever applied here: every enqueue is in flight.
        fn in_flight(&self, _from_id: u64) -> (u64, u64) {
            let e = self.enqueued.lock();
            (e.len() as u64, e.iter().map(|b| b.len() as u64).sum())
        }
        fn report_consumers(
            &self,
            _report: crate::stream::sac::Report,
            answer: crate::replicated::SacAnswer,
        ) {
            answer(Err("a queue".into()));
        }
    }

    fn replicated(args: &[(&str, FieldValue)]) -> (Arc<Queue>, Arc<Recorder>) {
        let mut all = vec![("x-queue-type", FieldValue::string("quorum"))];
        all.extend_from_slice(args);
        let q = queue_with(&all, Arc::new(ManualClock::at(1_000_000)));
        let r = Arc::new(Recorder::default());
        assert!(q.set_replica(Arc::clone(&r) as Arc<dyn QueueReplica>));
        (q, r)
    }

    /// Whether the replicated queue took a publish of `body` (it went to
    /// the group).
    fn taken(q: &Arc<Queue>, body: &str) -> bool {
        q.replicate(&message(body), None)
            .expect("replicate")
            .is_some()
    }

    #[test]
    fn publishes_are_proposed_and_applied_enqueues_reach_consumers() {
        let (q, r) = replicated(&[]);
        assert!(taken(&q, "a"));
        assert_eq!(*r.enqueued.lock(), ["a"]);
        // Standby (not leading): an applied enqueue is not the engine's.
        q.replica_enqueue(0, message("a"));
        assert_eq!(q.counts().ready, 0);
        q.replica_takeover(Vec::new());
        let sink = Arc::new(CollectSink::default());
        q.add_consumer(consumer(1, 10, &sink)).expect("consume");
        q.replica_enqueue(0, message("a"));
        q.replica_enqueue(1, message("b"));
        assert_eq!(sink.bodies(), ["a", "b"]);
        let deliveries: Vec<_> = sink.deliveries.lock().drain(..).collect();
        q.ack([deliveries[0].entry.clone()]);
        q.requeue(vec![deliveries[1].entry.clone()]);
        assert_eq!(*r.settled.lock(), [0]);
        assert_eq!(*r.returned.lock(), [1]);
        // An ack of a message this leadership did not hand out (or already
        // settled) changes nothing.
        q.ack([deliveries[0].entry.clone()]);
        assert_eq!(*r.settled.lock(), [0]);
    }

    #[test]
    fn a_takeover_marks_everything_redelivered_and_stale_acks_are_ignored() {
        let (q, r) = replicated(&[("x-delivery-limit", FieldValue::I32(1))]);
        q.replica_takeover(Vec::new());
        let sink = Arc::new(CollectSink::default());
        q.add_consumer(consumer(1, 10, &sink)).expect("consume");
        q.replica_enqueue(4, message("x"));
        let old: Vec<_> = sink.deliveries.lock().drain(..).collect();
        // Leadership lost: consumers cancelled, engine empty.
        q.replica_step_down();
        assert_eq!(*sink.cancelled.lock(), ["c1"]);
        assert_eq!(q.counts().ready, 0);
        // Back as leader, from the group's state (one return counted).
        q.replica_takeover(vec![ReplicatedMessage {
            id: 4,
            message: message("x"),
            delivery_count: 1,
            dying: None,
        }]);
        q.ack([old[0].entry.clone()]);
        assert!(r.settled.lock().is_empty(), "a stale ack settles nothing");
        let (got, _) = q.get(false).expect("the message");
        assert!(got.redelivered);
        assert_eq!(got.delivery_count, 1);
        // One more return passes the limit: settled, not requeued.
        q.requeue(vec![got]);
        assert_eq!(*r.settled.lock(), [4]);
        assert!(r.returned.lock().is_empty());
        assert_eq!(q.counts().ready, 0);
    }

    /// At least once, a rejected message is marked dying in the group and
    /// settled only once its letter is held; a new leader dead-letters
    /// the dying messages it takes over again, never delivers them.
    #[test]
    fn a_dying_message_is_settled_once_held_and_survives_a_takeover() {
        let (q, r) = replicated(&[
            ("x-overflow", FieldValue::string("reject-publish")),
            ("x-dead-letter-exchange", FieldValue::string("dlx")),
            (
                "x-dead-letter-strategy",
                FieldValue::string("at-least-once"),
            ),
        ]);
        q.replica_takeover(Vec::new());
        let sink = Arc::new(CollectSink::default());
        q.add_consumer(consumer(1, 10, &sink)).expect("consume");
        q.replica_enqueue(7, message("pay"));
        let d: Vec<_> = sink.deliveries.lock().drain(..).collect();
        q.reject([d[0].entry.clone()]);
        assert_eq!(*r.dying.lock(), [7]);
        assert!(r.settled.lock().is_empty(), "kept until held");
        let letters = q.take_dead_letters();
        assert_eq!(letters[0].hold, Some(7));
        // Routed nowhere: routed again once its wait is over.
        q.dead_letter_routed(7, None);
        assert_eq!(q.dying_due(1_000_000), 0);
        assert_eq!(q.dying_due(1_001_000), 1);
        assert_eq!(q.take_dead_letters()[0].hold, Some(7));
        q.dead_letter_routed(7, Some(Vec::new()));
        assert_eq!(*r.settled.lock(), [7]);
        assert_eq!(q.dying().0, 0);

        // A new leader of a group holding a dying message.
        q.replica_step_down();
        q.replica_takeover(vec![ReplicatedMessage {
            id: 9,
            message: message("refund"),
            delivery_count: 0,
            dying: Some(DeathReason::Rejected),
        }]);
        let sink = Arc::new(CollectSink::default());
        q.add_consumer(consumer(2, 10, &sink)).expect("consume");
        assert!(sink.bodies().is_empty(), "a dying message is not delivered");
        assert_eq!(q.dying_due(1_000_000), 1);
        let again = q.take_dead_letters();
        assert_eq!(
            (again[0].hold, again[0].reason),
            (Some(9), DeathReason::Rejected)
        );
    }

    #[test]
    fn reject_publish_refuses_before_proposing() {
        let (q, r) = replicated(&[
            ("x-max-length", FieldValue::I32(1)),
            ("x-overflow", FieldValue::string("reject-publish")),
        ]);
        q.replica_takeover(Vec::new());
        q.replica_enqueue(0, message("a"));
        assert!(!taken(&q, "b"));
        assert!(r.enqueued.lock().is_empty());
    }

    #[test]
    fn reject_publish_counts_publishes_not_applied_yet() {
        let (q, r) = replicated(&[
            ("x-max-length", FieldValue::I32(2)),
            ("x-overflow", FieldValue::string("reject-publish")),
        ]);
        q.replica_takeover(Vec::new());
        assert!(taken(&q, "a"));
        assert!(taken(&q, "b"));
        // Two on their way in, none applied: the queue is full already.
        assert!(!taken(&q, "c"));
        assert_eq!(*r.enqueued.lock(), ["a", "b"]);

        let (q, r) = replicated(&[
            ("x-max-length-bytes", FieldValue::I32(5)),
            ("x-overflow", FieldValue::string("reject-publish")),
        ]);
        q.replica_takeover(Vec::new());
        assert!(taken(&q, "abc"));
        assert!(!taken(&q, "def"));
        assert!(taken(&q, "gh"));
        assert_eq!(*r.enqueued.lock(), ["abc", "gh"]);
    }

    #[test]
    fn committed_messages_past_a_reject_publish_limit_are_kept() {
        let (q, r) = replicated(&[
            ("x-max-length", FieldValue::I32(1)),
            ("x-overflow", FieldValue::string("reject-publish")),
        ]);
        q.replica_takeover(Vec::new());
        // Two publishes that passed the check at the same moment: both were
        // confirmed, both stay.
        q.replica_enqueue(0, message("a"));
        q.replica_enqueue(1, message("b"));
        assert_eq!(q.counts().ready, 2);
        assert!(r.settled.lock().is_empty());
        assert!(!taken(&q, "c"));

        // Under drop-head the oldest leaves, settled through the group.
        let (q, r) = replicated(&[("x-max-length", FieldValue::I32(1))]);
        q.replica_takeover(Vec::new());
        q.replica_enqueue(0, message("a"));
        q.replica_enqueue(1, message("b"));
        assert_eq!(q.counts().ready, 1);
        assert_eq!(*r.settled.lock(), [0]);
    }
}
