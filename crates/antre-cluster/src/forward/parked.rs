//! Forwarded publishes whose quorum queues' leader went: held until the
//! next leader is known, then sent there (or, if this node leads now, put
//! in its queues here), in the order they came.
//!
//! Before, a batch for a node whose data link had just died failed at
//! once: a publisher with confirms got a nack, and one without (Celery's
//! default, many others) lost its messages, for as long as the election
//! took (some 200 messages at 500 a second). RabbitMQ's channel keeps a
//! quorum queue's pending enqueues and resends them to the new leader.
//!
//! Batches that were never sent are held if every queue they name is
//! replicated: a classic queue's node that is down has its queue with it.
//! Batches sent that may have been stored (their link died before the
//! answer, or the owner answered that it no longer leads their queues)
//! are held too, ahead of those, if every queue they name is a quorum
//! queue: its group skips a message it has by its forwarding node's
//! number ([`super::Forwarder::send_again`]); one of them may go to the
//! node it was sent to after a pause (`Parked::same_after`).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use antre_broker::queue::{Delivery, DeliverySink};
use antre_broker::remote::{RemoteDone, RemotePublish, RemoteResult};
use antre_broker::vhost::Vhost;
use antre_broker::Broker;
use parking_lot::Mutex;

/// How often the held batches look for their queues' next leader.
pub(super) const POLL: Duration = Duration::from_millis(20);

/// One held batch.
pub(super) struct Parked {
    pub vhost: String,
    pub batch: Vec<RemotePublish>,
    pub done: RemoteDone,
    /// The node whose link died under it (or that did not store it);
    /// empty for a batch held only to keep its queues' order, which goes
    /// wherever they are led when its turn comes.
    pub gone: String,
    /// When it may go to `gone` after all (a batch sent again; None: a
    /// batch never sent waits for another node).
    pub same_after: Option<Instant>,
    /// When it fails after all, as a forwarded publish with no answer does.
    pub deadline: Instant,
    /// The run its messages' numbers are of: the forwarder's, or a quorum
    /// queue replica's on this node for its publishes sent on (see
    /// [`super::Forwarder::send_on`]).
    pub run: u64,
}

impl Parked {
    /// A batch held from now, failed once `timeout` has passed, which
    /// `gone` failed (empty: a batch held only behind others).
    pub fn new(
        vhost: &str,
        batch: Vec<RemotePublish>,
        done: RemoteDone,
        gone: &str,
        timeout: Duration,
        run: u64,
    ) -> Parked {
        Parked {
            vhost: vhost.to_owned(),
            batch,
            done,
            gone: gone.to_owned(),
            same_after: None,
            deadline: Instant::now() + timeout,
            run,
        }
    }
}

/// The held batches, oldest first, and whether a task releases them.
#[derive(Default)]
pub(super) struct ParkedPublishes {
    batches: VecDeque<Parked>,
    pub releasing: bool,
    /// Each held queue (vhost, name): how many held batches name it. Every
    /// publish looks its queues up here; scanning the held batches instead
    /// cost each publish their number, thousands during an election at a
    /// high rate.
    queues: HashMap<(String, String), usize>,
    /// Messages sent on by a deposed leader since the last log line.
    pub sent_on: Tally,
}

/// Counts events for a log line at most once per [`Tally::EVERY`].
#[derive(Default)]
pub(super) struct Tally {
    last: Option<Instant>,
    since: usize,
}

impl Tally {
    const EVERY: Duration = Duration::from_secs(1);

    /// Counts `n`; returns how many were counted since the last line if
    /// one is due now.
    pub fn count(&mut self, n: usize) -> Option<usize> {
        self.since += n;
        let now = Instant::now();
        if self.last.is_some_and(|t| now < t + Self::EVERY) {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.since))
    }
}

impl ParkedPublishes {
    /// The oldest held batch.
    pub fn front(&self) -> Option<&Parked> {
        self.batches.front()
    }

    /// Holds `p` after the others.
    pub fn push_back(&mut self, p: Parked) {
        self.count(&p, true);
        self.batches.push_back(p);
    }

    /// Holds `p` before the others (it was the oldest, and goes on waiting).
    pub fn push_front(&mut self, p: Parked) {
        self.count(&p, true);
        self.batches.push_front(p);
    }

    /// Holds `p`, a batch sent before and answered as not stored (or
    /// not answered), among the others by when it was first sent, which
    /// its deadline tells (every batch's is that time plus the same
    /// forwarding timeout): after those held or sent before it, before
    /// those that came after it. Put first instead, each batch a deposed
    /// leader answered one by one went ahead of the one answered before
    /// it, and a publisher's messages reached the next leader in reverse.
    pub fn insert_by_age(&mut self, p: Parked) {
        self.count(&p, true);
        let at = self
            .batches
            .iter()
            .rposition(|held| held.deadline <= p.deadline)
            .map_or(0, |i| i + 1);
        self.batches.insert(at, p);
    }

    /// Takes the oldest held batch.
    pub fn pop_front(&mut self) -> Option<Parked> {
        let p = self.batches.pop_front()?;
        self.count(&p, false);
        Some(p)
    }

    fn count(&mut self, p: &Parked, held: bool) {
        let mut names: Vec<&String> = p.batch.iter().flat_map(|b| &b.queues).collect();
        names.sort_unstable();
        names.dedup();
        for name in names {
            let key = (p.vhost.clone(), name.clone());
            if held {
                *self.queues.entry(key).or_insert(0) += 1;
            } else if let Some(count) = self.queues.get_mut(&key) {
                *count -= 1;
                if *count == 0 {
                    self.queues.remove(&key);
                }
            }
        }
    }

    /// Whether a held batch names queue `name` of `vhost`.
    pub fn holds(&self, vhost: &str, name: &str) -> bool {
        !self.queues.is_empty()
            && self
                .queues
                .contains_key(&(vhost.to_owned(), name.to_owned()))
    }

    /// Holds a later publish of `vhost` behind the held batches if one of
    /// them names one of its queues, so that the queue gets them in the
    /// order they were published; gives it back if none does.
    ///
    /// It goes, when its turn comes, wherever its queues are led then: it
    /// was never sent, so no node has failed it. It once took the node of
    /// the first batch held for its queues instead, and waited for another
    /// leader than that one. When that batch was one the queue's new
    /// leader had answered "not stored" a moment before it took over, the
    /// publish, and every one after it, waited for a leader that never
    /// came, and was nacked at the forwarding timeout, for the rest of the
    /// run (2,915 of 4,000 publishes nacked in the forwarding failover
    /// test, about one run in ten of three at once).
    pub fn hold_behind(
        &mut self,
        vhost: &str,
        batch: Vec<RemotePublish>,
        done: RemoteDone,
        timeout: Duration,
        run: u64,
    ) -> Result<(), (Vec<RemotePublish>, RemoteDone)> {
        let behind = !self.queues.is_empty()
            && batch
                .iter()
                .flat_map(|b| &b.queues)
                .any(|q| self.queues.contains_key(&(vhost.to_owned(), q.clone())));
        if !behind {
            return Err((batch, done));
        }
        self.push_back(Parked::new(vhost, batch, done, "", timeout, run));
        Ok(())
    }
}

/// Where a held batch goes now.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Target {
    /// This node leads its queues.
    Here,
    /// That node does.
    Node(Arc<str>),
    /// Not known yet (no new leader, or items with different leaders).
    Unknown,
}

/// Whether every queue `batch` names in `v` is replicated (has a leader
/// that another member replaces when it goes).
pub(super) fn replicated(v: &Vhost, batch: &[RemotePublish]) -> bool {
    batch
        .iter()
        .flat_map(|p| &p.queues)
        .all(|q| v.is_replicated(q))
}

/// Whether every queue `batch` names in `v` is a quorum queue, whose
/// group skips a message it has (see [`super::Forwarder::send_again`]):
/// only such a batch is sent again after it may have been stored. A
/// replicated stream's group does not skip (its offsets are its ids: a
/// gap would be seen by every reader), so a stream's publish that may
/// have been stored is nacked, as before.
pub(super) fn deduplicated(v: &Vhost, batch: &[RemotePublish]) -> bool {
    replicated(v, batch)
        && batch
            .iter()
            .flat_map(|p| &p.queues)
            .all(|q| v.stream(q).is_none())
}

/// Where the `queues` of a held batch are led now, if all of them by one
/// node other than `gone`. A queue deleted meanwhile counts as here: this
/// node answers it as gone, as its owner would have. So does one this
/// node leads, though the vhost may still name its former leader: a
/// takeover here releases the held batches before this node's clients'
/// publishes go to the queue directly (see `Forwarder::released`).
pub(super) fn target(v: &Vhost, queues: &[String], gone: &str) -> Target {
    let mut found: Option<Target> = None;
    for q in queues {
        let here = match v.queue_info(q) {
            None => Target::Here,
            Some(queue) if queue.replica().is_some_and(|r| r.leads()) => Target::Here,
            Some(queue) => match v.remote_owner(q) {
                Some(node) if &*node != gone => Target::Node(node),
                Some(_) => return Target::Unknown,
                None if queue.replica().is_none_or(|r| r.leads()) => Target::Here,
                None => return Target::Unknown,
            },
        };
        match &found {
            None => found = Some(here),
            Some(t) if *t == here => {}
            Some(_) => return Target::Unknown,
        }
    }
    found.unwrap_or(Target::Here)
}

/// Puts `batch` in this node's queues of `v` (it leads them now), as an
/// owner takes a forwarded batch (numbered by this node's `run`, if its
/// messages are), and answers `done` once what must be synced is.
pub(super) fn publish_here(
    broker: &Broker,
    v: &Vhost,
    run: u64,
    batch: Vec<RemotePublish>,
    done: RemoteDone,
) {
    let (results, stored) = super::put_forwarded(v, Some(run), batch);
    match broker.syncer() {
        Some(syncer) if !stored.is_empty() => {
            let sink = Arc::new(Answer(Mutex::new(Some((done, results)))));
            syncer.request(stored, sink, 0);
        }
        _ => done(results),
    }
}

/// Answers a held batch put in this node's queues once they synced it.
struct Answer(Mutex<Option<(RemoteDone, Vec<RemoteResult>)>>);

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Answer").finish_non_exhaustive()
    }
}

impl DeliverySink for Answer {
    fn deliver(&self, delivery: Delivery) -> Result<(), Box<Delivery>> {
        Err(Box::new(delivery))
    }

    fn cancel(&self, _consumer_tag: &str) {}

    fn synced(&self, _token: u64, ok: bool) {
        if let Some((done, mut results)) = self.0.lock().take() {
            if !ok {
                results.fill(RemoteResult::Failed);
            }
            done(results);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use antre_broker::message::Message;

    fn publish(queues: &[&str]) -> RemotePublish {
        RemotePublish {
            queues: queues.iter().map(|q| (*q).to_owned()).collect(),
            message: Arc::new(Message::new(
                String::new(),
                "k".into(),
                Default::default(),
                bytes::Bytes::from_static(b"x"),
            )),
            seqs: Vec::new(),
        }
    }

    /// A held batch goes where all its queues are led, once that is known
    /// and is not the node that went.
    #[test]
    fn a_held_batch_goes_where_its_queues_are_led_now() {
        let broker = Broker::new();
        led_by(&broker, "a", "n1");
        let v = led_by(&broker, "b", "n1");
        let names = |qs: &[&str]| -> Vec<String> { qs.iter().map(|q| (*q).to_owned()).collect() };
        // Still the node that went: not known yet.
        assert_eq!(target(&v, &names(&["a"]), "n1"), Target::Unknown);
        v.set_remote_owner("a", Some("n2"));
        assert_eq!(target(&v, &names(&["a"]), "n1"), Target::Node("n2".into()));
        // Two queues led by different nodes: not one target.
        assert_eq!(target(&v, &names(&["a", "b"]), "n1"), Target::Unknown);
        v.set_remote_owner("b", Some("n2"));
        assert_eq!(
            target(&v, &names(&["a", "b"]), "n1"),
            Target::Node("n2".into())
        );
        // Led here (no remote owner, no replica that follows), or deleted
        // meanwhile (answered here as gone).
        v.set_remote_owner("a", None);
        assert_eq!(target(&v, &names(&["a"]), "n1"), Target::Here);
        assert_eq!(target(&v, &names(&["gone"]), "n1"), Target::Here);
    }

    /// A batch that may have been stored is sent again only if each of
    /// its queues is a quorum queue (whose group skips what it has); one
    /// never sent is held for a replicated stream too.
    #[test]
    fn only_a_batch_for_quorum_queues_alone_is_sent_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = antre_broker::StorageOptions::default();
        let broker = Broker::open(dir.path(), options).expect("broker");
        let v = broker.vhost("/").expect("vhost");
        for (q, kind) in [("q", None), ("s", Some("stream")), ("c", None)] {
            let mut arguments = antre_amqp::FieldTable::default();
            if let Some(kind) = kind {
                arguments.insert("x-queue-type", antre_amqp::FieldValue::string(kind));
            }
            let declaration = antre_broker::vhost::QueueDeclaration {
                name: q.into(),
                durable: true,
                exclusive: false,
                auto_delete: false,
                arguments,
            };
            v.declare_queue(declaration, false, 0).expect("declare");
        }
        for q in ["q", "s"] {
            let info = antre_broker::vhost::QuorumInfo {
                members: vec!["n1".into()],
                leader: None,
                leader_term: 0,
            };
            v.set_quorum_info(q, Some(info));
        }
        assert!(deduplicated(&v, &[publish(&["q"]), publish(&["q"])]));
        assert!(!deduplicated(&v, &[publish(&["q", "s"])]), "a stream");
        assert!(!deduplicated(&v, &[publish(&["q"]), publish(&["c"])]));
        assert!(replicated(&v, &[publish(&["s"])]), "held, never sent");
        assert!(!replicated(&v, &[publish(&["c"])]));
    }

    /// Declares quorum queue `q` of vhost "/" in `broker`, led by `leader`
    /// (another node).
    fn led_by(broker: &Broker, q: &str, leader: &str) -> Arc<Vhost> {
        let v = broker.vhost("/").expect("vhost");
        let declaration = antre_broker::vhost::QueueDeclaration {
            name: q.into(),
            durable: true,
            exclusive: false,
            auto_delete: false,
            arguments: Default::default(),
        };
        v.declare_queue(declaration, false, 0).expect("declare");
        v.set_remote_owner(q, Some(leader));
        v
    }

    #[test]
    fn a_later_publish_to_a_held_queue_waits_behind_it() {
        let mut held = ParkedPublishes::default();
        let now = Instant::now();
        held.push_back(Parked {
            vhost: "/".into(),
            batch: vec![publish(&["orders"])],
            done: Box::new(|_| {}),
            gone: "n1".into(),
            same_after: None,
            deadline: now,
            run: 1,
        });
        let later = |queues: &[&str]| (vec![publish(queues)], Box::new(|_| {}) as RemoteDone);
        let timeout = Duration::from_secs(30);
        let (batch, done) = later(&["audit"]);
        assert!(held.hold_behind("/", batch, done, timeout, 3).is_err());
        let (batch, done) = later(&["orders"]);
        assert!(held.hold_behind("other", batch, done, timeout, 4).is_err());
        let (batch, done) = later(&["audit", "orders"]);
        assert!(held.hold_behind("/", batch, done, timeout, 2).is_ok());
        // Released: nothing waits behind them any more.
        assert_eq!(held.pop_front().map(|p| p.run), Some(1));
        assert_eq!(held.pop_front().map(|p| p.run), Some(2));
        let (batch, done) = later(&["orders"]);
        assert!(held.hold_behind("/", batch, done, timeout, 5).is_err());
    }

    /// The queue's new leader answered a batch "not stored" a moment before
    /// it took over; a publish that came meanwhile, held behind that batch,
    /// goes to that leader too once its turn comes. It once waited for
    /// another leader than the one that had answered, which never came:
    /// it and every publish after it were nacked at the forwarding timeout.
    #[test]
    fn a_publish_held_behind_goes_to_the_leader_that_said_not_yet() {
        let broker = Broker::new();
        let v = led_by(&broker, "orders", "n3");
        let now = Instant::now();
        let mut held = ParkedPublishes::default();
        held.insert_by_age(Parked {
            vhost: "/".into(),
            batch: vec![publish(&["orders"])],
            done: Box::new(|_| {}),
            gone: "n3".into(),
            same_after: Some(now),
            deadline: now + Duration::from_secs(30),
            run: 1,
        });
        let (batch, done) = (vec![publish(&["orders"])], Box::new(|_| {}) as RemoteDone);
        assert!(held
            .hold_behind("/", batch, done, Duration::from_secs(30), 2)
            .is_ok());
        let first = held.pop_front().expect("the batch sent again");
        let later = held.pop_front().expect("the publish held behind it");
        assert_eq!((first.run, later.run), (1, 2));
        let queues = vec!["orders".to_owned()];
        // The first goes back to n3 only after its pause (release_one).
        assert_eq!(target(&v, &queues, &first.gone), Target::Unknown);
        assert_eq!(target(&v, &queues, &later.gone), Target::Node("n3".into()));
    }

    #[test]
    fn batches_sent_again_are_held_in_the_order_they_were_first_sent() {
        let start = Instant::now();
        let batch = |run: u64, first_sent: u64| Parked {
            vhost: "/".into(),
            batch: vec![publish(&["orders"])],
            done: Box::new(|_| {}),
            gone: "n1".into(),
            same_after: None,
            deadline: start + Duration::from_millis(first_sent),
            run,
        };
        let mut held = ParkedPublishes::default();
        // A publish held while the queue's leader is unknown, then the
        // batches its deposed leader answered one by one, oldest first.
        held.push_back(batch(9, 90));
        for (run, first_sent) in [(1, 10), (2, 20), (3, 30)] {
            held.insert_by_age(batch(run, first_sent));
        }
        held.insert_by_age(batch(4, 95));
        let order: Vec<u64> = std::iter::from_fn(|| held.pop_front().map(|p| p.run)).collect();
        assert_eq!(order, [1, 2, 3, 9, 4]);
        let later = (vec![publish(&["orders"])], Box::new(|_| {}) as RemoteDone);
        assert!(held
            .hold_behind("/", later.0, later.1, Duration::from_secs(30), 5)
            .is_err());
    }
}
