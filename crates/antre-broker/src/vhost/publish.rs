//! The one way into the vhost's queues.
//!
//! Every message, whatever its source (a client's basic.publish, the
//! management API, a delayed-message exchange releasing it, a queue
//! dead-lettering it), enters through [`Vhost::publish`], which runs, in
//! order: the exchange's hooks (deduplication, delay), routing (bindings,
//! exchange-to-exchange, alternate exchanges), enqueueing (each queue's
//! overflow rule may refuse it or drop its head), and the dead letters all
//! that caused, each of which goes round the same path again. The outcome
//! says what happened and which stores the caller must sync before it may
//! promise the message is safe (a publisher confirm, an API answer).

use std::sync::Arc;

use crate::dead_letter::{dead_lettered, is_cycle, DeadLetterWork};
use crate::durable::{add_once, Durable};
use crate::error::BrokerError;
use crate::exchange::delayed::{delay_of, DelayedMessages};
use crate::exchange::sender_selected;
use crate::message::Message;
use crate::metrics::DeadLetterMode;
use crate::queue::{DeadLetter, DeathReason, Enqueued, Queue};
use crate::replicated::{Commit, PendingCommit};
use crate::stream::Stream;

use super::topology::Targets;
use super::Vhost;

/// Where a message comes from, which decides the rules it passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishSource {
    /// A client's basic.publish.
    Client,
    /// The management API's publish.
    Api,
    /// A delayed-message exchange releasing a message whose delay ran out:
    /// it was deduplicated and delayed when it was first published.
    DelayedRelease,
    /// A queue dead-lettering a message, for this reason: it may go to an
    /// internal exchange, and RabbitMQ's cycle rule applies.
    DeadLetter(DeathReason),
}

impl PublishSource {
    /// A publisher's message (counted as published, may be returned).
    fn is_publisher(self) -> bool {
        matches!(self, PublishSource::Client | PublishSource::Api)
    }
}

/// How to publish.
#[derive(Debug, Clone, Copy)]
pub struct PublishOptions {
    /// Return the message if no queue takes it (basic.publish mandatory).
    pub mandatory: bool,
    /// Where it comes from.
    pub source: PublishSource,
    /// A dead letter its queue keeps until it is held (at least once):
    /// the outcome's `stored` also waits for the nodes it is forwarded to.
    pub held: bool,
}

impl PublishOptions {
    /// A publisher's message from `source`.
    pub fn new(source: PublishSource, mandatory: bool) -> PublishOptions {
        PublishOptions {
            mandatory,
            source,
            held: false,
        }
    }
}

/// What one publish did.
#[derive(Debug, Default)]
pub struct PublishOutcome {
    /// Queues that took the message.
    pub routed: usize,
    /// A deduplicating exchange had seen its key: it was dropped, and a
    /// publisher retrying after a lost confirm is told it succeeded.
    pub duplicate: bool,
    /// A delayed-message exchange holds it until its delay runs out.
    pub delayed: bool,
    /// No queue matched it (nor another node's): it was dropped, or
    /// returned if mandatory.
    pub unroutable: bool,
    /// No queue matched a mandatory publish: return it (basic.return 312).
    pub returned: bool,
    /// A queue refused it (overflow `reject-publish`): nack it.
    pub rejected: bool,
    /// A dead letter was kept from queues it died in before (RabbitMQ's
    /// cycle rule).
    pub cycled: bool,
    /// Stores written, to sync before promising the message is safe.
    pub stored: Vec<Arc<dyn Durable>>,
    /// In a cluster, for a client's publish: queues it was routed to that
    /// other nodes own, with their owner. The channel forwards it there
    /// ([`crate::remote`]); nothing was enqueued for them here.
    pub remote: Vec<(Arc<str>, String)>,
}

impl PublishOutcome {
    /// The answer to the node that forwarded this publish (see
    /// [`Vhost::publish_forwarded`]).
    pub fn forwarded_result(&self) -> crate::remote::RemoteResult {
        use crate::remote::RemoteResult;
        if self.rejected {
            RemoteResult::Rejected
        } else if !self.remote.is_empty() {
            // Some of its queues are another node's now (a quorum queue's
            // leader moved): it is not stored there, so the publisher is
            // told to try again rather than that nothing matched.
            RemoteResult::Failed
        } else if self.routed == 0 {
            RemoteResult::Gone
        } else {
            RemoteResult::Accepted
        }
    }
}

impl Vhost {
    /// Publishes a message through the vhost's one publish path (see the
    /// module docs). Errors are the publisher's (no such exchange, an
    /// internal exchange) or the disk's; dead letters it causes never fail
    /// it.
    pub fn publish(
        &self,
        message: Arc<Message>,
        options: PublishOptions,
    ) -> Result<PublishOutcome, BrokerError> {
        let mut outcome = PublishOutcome::default();
        let mut work = DeadLetterWork::new();
        let result = self.publish_one(message, options, &mut outcome, &mut work);
        // Dead letters caused before a failure are real: route them anyway.
        self.route_dead_letter_work(work, &mut outcome.stored);
        result.map(|()| outcome)
    }

    /// Checks that a client may publish to `exchange`, for a publish whose
    /// routing waits (in a transaction): RabbitMQ fails the publish, not
    /// the commit.
    pub fn check_publishable(&self, exchange: &str) -> Result<(), BrokerError> {
        if exchange.is_empty() {
            return Ok(());
        }
        // One declared through another node a moment ago is found.
        self.caught_up(|| self.topology.read().publishable(exchange).map(|_| ()))
    }

    fn publish_one(
        &self,
        message: Arc<Message>,
        options: PublishOptions,
        outcome: &mut PublishOutcome,
        work: &mut DeadLetterWork,
    ) -> Result<(), BrokerError> {
        let source = options.source;
        if source.is_publisher() {
            self.metrics.published.inc();
            self.metrics.message_size.observe(message.body.len() as u64);
            self.check_publishable(&message.exchange)?;
        }
        if source != PublishSource::DelayedRelease && self.exchange_hooks(&message, outcome)? {
            return Ok(());
        }
        let mut targets = self.route(&message, source)?;
        if targets.is_empty()
            && targets.elsewhere.is_empty()
            && source.is_publisher()
            && message.exchange.is_empty()
            && !message.routing_key.is_empty()
            && self.catch_up()
        {
            // A queue declared through another node a moment ago may be
            // known now.
            targets = self.route(&message, source)?;
        }
        // BCC names extra routes; consumers must not see it.
        let mut message = sender_selected::without_bcc(message);
        if message.is_persistent() && targets.queues.iter().any(|q| q.options.durable) {
            // It will be stored: encode the record once, the body its tail
            // (unless another holder shares the message already).
            if let Some(m) = Arc::get_mut(&mut message) {
                m.seal_record();
            }
        }
        if let PublishSource::DeadLetter(reason) = source {
            targets.queues.retain(|q| {
                let cycle = is_cycle(&message, reason, &q.name);
                if cycle {
                    tracing::debug!(queue = q.name, "dropping dead letter caught in a cycle");
                    outcome.cycled = true;
                }
                !cycle
            });
        }
        // Another node's direct reply-to address or server-named exclusive
        // queue (by name, or bound): forwarded there.
        for name in std::mem::take(&mut targets.elsewhere) {
            if let Some(node) = self.named_elsewhere(&name) {
                outcome.remote.push((node, name));
            }
        }
        if self.has_remote.load(std::sync::atomic::Ordering::Acquire) || !outcome.remote.is_empty()
        {
            self.leave_out_remote(&mut targets, &mut outcome.remote);
            if !source.is_publisher() && !outcome.remote.is_empty() {
                // Nobody's channel forwards what the broker routes itself.
                let remote = std::mem::take(&mut outcome.remote);
                let n = remote.len();
                let answered = self.forward_internal(&message, remote, source);
                if options.held {
                    outcome.routed += n;
                    add_once(&mut outcome.stored, answered);
                }
            }
        }
        if targets.is_empty() && outcome.remote.is_empty() && source.is_publisher() {
            outcome.unroutable = true;
            self.metrics.unroutable.inc();
            if options.mandatory {
                self.metrics.returned.inc();
                outcome.returned = true;
            }
        }
        for s in &targets.streams {
            if s.replica().is_some() {
                // A stream in a cluster: appended once its group committed
                // it (the confirm waits for that commit).
                add_once(&mut outcome.stored, s.replicate(&message)?);
            } else {
                s.publish(&message)?;
                add_once(&mut outcome.stored, Arc::clone(s) as Arc<dyn Durable>);
            }
            outcome.routed += 1;
        }
        for q in &targets.queues {
            if q.replica().is_some() {
                // A quorum queue in a cluster: the message enters its
                // engine once its group committed it.
                match q.replicate(&message, None)? {
                    Some(batch) => {
                        outcome.routed += 1;
                        add_once(&mut outcome.stored, batch);
                    }
                    None => outcome.rejected = true,
                }
                work.collect(q);
                continue;
            }
            match q.publish(Arc::clone(&message))? {
                Enqueued::Accepted { stored } => {
                    outcome.routed += 1;
                    if stored {
                        add_once(&mut outcome.stored, Arc::clone(q) as Arc<dyn Durable>);
                    }
                }
                Enqueued::Duplicate => {}
                Enqueued::Rejected => outcome.rejected = true,
            }
            work.collect(q);
        }
        Ok(())
    }

    /// In a cluster, catches up with the metadata leader (see
    /// [`crate::cluster::MetadataLog::catch_up`]): whether a publish that
    /// named a queue this node does not know should be routed again.
    fn catch_up(&self) -> bool {
        self.metadata.get().is_some_and(|m| m.catch_up())
    }

    /// Runs `find` (a lookup of a queue or an exchange by name), and once
    /// more after catching up with the metadata leader if it found none: a
    /// consume, get or passive declare of a queue (or a publish to or
    /// passive declare of an exchange) declared through another node a
    /// moment ago finds it. Call it holding no lock of the
    /// vhost: the catch-up waits for this node to apply the metadata.
    pub fn caught_up<T>(
        &self,
        mut find: impl FnMut() -> Result<T, BrokerError>,
    ) -> Result<T, BrokerError> {
        match find() {
            Err(BrokerError::NotFound(_)) if self.catch_up() => find(),
            found => found,
        }
    }

    /// The node, other than this one, that a node-local queue name names
    /// (a direct reply-to address or a server-named exclusive queue: see
    /// [`super::reply_to_name`]); None for a name of this node or none at
    /// all, or outside a cluster.
    pub fn named_elsewhere(&self, routing_key: &str) -> Option<Arc<str>> {
        let me = self.metadata.get()?.node_name();
        let node = match super::node_named_by(routing_key) {
            Some(node) => Arc::from(node),
            None => Arc::clone(&self.exclusive_of.read().get(routing_key)?.node),
        };
        (*node != *me).then_some(node)
    }

    /// In a cluster, a queue another node owns is left out of the local
    /// targets and listed in `remote`: a client's channel (or the
    /// management API's publish) forwards its message there, and a dead
    /// letter or a delayed release is forwarded by
    /// [`Vhost::forward_internal`].
    fn leave_out_remote(
        &self,
        targets: &mut Targets,
        remote_targets: &mut Vec<(Arc<str>, String)>,
    ) {
        let remote = self.remote.read();
        let mut local = |name: &str| match remote.get(name) {
            Some(owner) => {
                remote_targets.push((Arc::clone(owner), name.to_owned()));
                false
            }
            None => true,
        };
        targets.queues.retain(|q| local(&q.name));
        targets.streams.retain(|s| local(&s.name));
    }

    /// Hands a message this vhost routed itself (a dead letter, a delayed
    /// release) to the owners of the `targets` it reached on other nodes,
    /// one batch per owner, in order behind what this node sent them
    /// before. Only a dead letter its queue keeps (at least once) waits
    /// for the answer, through the returned durable, which completes once
    /// every owner took and stored the message (a queue gone or full
    /// there fails it, and the letter is retried). Otherwise, like
    /// RabbitMQ's dead-lettering of classic queues, this is at most once,
    /// but a message that does not get there (its owner unreachable, its
    /// disk failing) is counted (`antre_cluster_internal_forwards_failed_total`)
    /// and logged, never dropped silently.
    fn forward_internal(
        &self,
        message: &Arc<Message>,
        targets: Vec<(Arc<str>, String)>,
        source: PublishSource,
    ) -> Arc<dyn Durable> {
        let what = match source {
            PublishSource::DelayedRelease => "delayed message",
            _ => "dead letter",
        };
        let per_owner = crate::remote::by_owner(targets);
        let Some(remote) = self.forwarder.get() else {
            let n = per_owner.len() as u64;
            self.metrics.internal_forwards_failed.add(n);
            tracing::warn!(
                vhost = self.name,
                "dropping a {what} for a queue another cluster node owns: this node does not forward"
            );
            return PendingCommit::done(None, false);
        };
        let answered = PendingCommit::new(None);
        for _ in 1..per_owner.len() {
            answered.add_part();
        }
        for (owner, queues) in per_owner {
            let metrics = Arc::clone(&self.metrics);
            let vhost = self.name.clone();
            let node = Arc::clone(&owner);
            let named = queues.join(", ");
            let answer = Arc::clone(&answered);
            let done: crate::remote::RemoteDone = Box::new(move |results| {
                use crate::remote::RemoteResult;
                answer.complete(results.iter().all(|r| *r == RemoteResult::Accepted));
                // A queue deleted meanwhile (Gone) or one that refused it
                // (overflow) is as for a local queue: routed nowhere.
                if results.contains(&RemoteResult::Failed) {
                    metrics.internal_forwards_failed.inc();
                    tracing::warn!(
                        vhost,
                        queues = named,
                        node = &*node,
                        "a {what} for queues of cluster node '{node}' did not reach them"
                    );
                }
            });
            let batch = vec![crate::remote::RemotePublish {
                queues,
                message: Arc::clone(message),
                seqs: Vec::new(),
            }];
            remote.publish(&owner, &self.name, batch, done);
        }
        answered
    }

    /// Enqueues a message another cluster node routed (and forwarded) to
    /// these queues of this node, skipping the exchange's hooks and
    /// routing, which the forwarding node ran. Queues that no longer exist
    /// are skipped (`routed` 0 means none took it); those another node owns
    /// now (the forwarding node did not know yet) are listed in `remote`,
    /// not enqueued. With `sources` (the forwarding node's run and its
    /// number for the message in each of `queues`, in order), a quorum
    /// queue led here stores the message once however often it comes
    /// ([`crate::replicated::Source`]).
    pub fn publish_forwarded(
        &self,
        message: Arc<Message>,
        queues: &[String],
        sources: Option<(u64, &[u64])>,
    ) -> Result<PublishOutcome, BrokerError> {
        let mut outcome = PublishOutcome::default();
        let source_of = |i: usize| {
            let (run, seqs) = sources?;
            Some(crate::replicated::Source {
                run,
                seq: *seqs.get(i)?,
            })
        };
        let (targets, streams): (Vec<(Arc<Queue>, _)>, Vec<Arc<Stream>>) = {
            let topo = self.topology.read();
            let mut here = Vec::new();
            let mut streams = Vec::new();
            for (i, n) in queues.iter().enumerate() {
                let q = topo.queues.get(n.as_str());
                let s = topo.streams.get(n.as_str());
                if q.is_none() && s.is_none() {
                    continue;
                }
                if let Some(owner) = self.remote_owner(n) {
                    // A quorum queue this node has just taken over is its
                    // own, though the vhost names its former leader until
                    // the takeover is done (see antre-cluster's take_over).
                    let led_here = q.is_some_and(|q| q.replica().is_some_and(|r| r.leads()));
                    if !led_here {
                        outcome.remote.push((owner, n.clone()));
                        continue;
                    }
                }
                here.extend(q.cloned().map(|q| (q, source_of(i))));
                streams.extend(s.cloned());
            }
            (here, streams)
        };
        for s in &streams {
            let stored = match s.replica() {
                Some(_) => s.replicate(&message)?,
                None => {
                    s.publish(&message)?;
                    Arc::clone(s) as Arc<dyn Durable>
                }
            };
            outcome.routed += 1;
            add_once(&mut outcome.stored, stored);
        }
        let mut message = message;
        if message.is_persistent() && targets.iter().any(|(q, _)| q.options.durable) {
            if let Some(m) = Arc::get_mut(&mut message) {
                m.seal_record();
            }
        }
        let mut work = DeadLetterWork::new();
        let mut result = Ok(());
        for (q, source) in &targets {
            if q.replica().is_some() {
                // This node leads the quorum queue: the message enters its
                // engine once the group committed it, as for a client of
                // this node (the confirm waits for that commit).
                match q.replicate(&message, *source) {
                    Ok(Some(batch)) => {
                        outcome.routed += 1;
                        add_once(&mut outcome.stored, batch);
                    }
                    Ok(None) => outcome.rejected = true,
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
                work.collect(q);
                continue;
            }
            match q.publish(Arc::clone(&message)) {
                Ok(Enqueued::Accepted { stored }) => {
                    outcome.routed += 1;
                    if stored {
                        add_once(&mut outcome.stored, Arc::clone(q) as Arc<dyn Durable>);
                    }
                }
                Ok(Enqueued::Duplicate) => outcome.routed += 1,
                Ok(Enqueued::Rejected) => outcome.rejected = true,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
            work.collect(q);
        }
        self.route_dead_letter_work(work, &mut outcome.stored);
        result.map(|()| outcome)
    }

    /// The queues and streams a message reaches: by its routing key and, for a
    /// publisher's message, also by each key in its `CC` and `BCC` headers
    /// (RabbitMQ's sender-selected distribution), each queue once.
    fn route(&self, message: &Message, source: PublishSource) -> Result<Targets, BrokerError> {
        let headers = message.properties.headers.as_ref();
        let topo = self.topology.read();
        let mut targets = topo.route(&message.exchange, &message.routing_key, headers)?;
        if message.exchange.is_empty()
            && targets.is_empty()
            && self
                .binds_elsewhere
                .load(std::sync::atomic::Ordering::Acquire)
            && self.exclusive_of.read().contains_key(&message.routing_key)
        {
            // Another node's client-named exclusive queue, by name.
            targets.elsewhere.push(message.routing_key.clone());
        }
        if source.is_publisher() {
            for key in sender_selected::extra_keys(headers) {
                let more = topo.route(&message.exchange, &key, headers)?;
                for q in more.queues {
                    if !targets.queues.iter().any(|seen| Arc::ptr_eq(seen, &q)) {
                        targets.queues.push(q);
                    }
                }
                for s in more.streams {
                    if !targets.streams.iter().any(|seen| Arc::ptr_eq(seen, &s)) {
                        targets.streams.push(s);
                    }
                }
            }
        }
        Ok(targets)
    }

    /// Runs the exchange's deduplication and delay; returns whether they
    /// took the message (it must not be routed now).
    fn exchange_hooks(
        &self,
        message: &Arc<Message>,
        outcome: &mut PublishOutcome,
    ) -> Result<bool, BrokerError> {
        let (dedup, delayed) = match self.topology.read().exchanges.get(&message.exchange) {
            Some(ex) => (ex.dedup.clone(), ex.delayed.clone()),
            None => return Ok(false),
        };
        if let Some(cache) = dedup {
            let (duplicate, stored) = cache.check(message, message.published_at)?;
            if stored {
                add_once(&mut outcome.stored, cache as Arc<dyn Durable>);
            }
            if duplicate {
                outcome.duplicate = true;
                return Ok(true);
            }
        }
        if let Some(schedule) = delayed {
            if delay_of(message).is_some() {
                if schedule.schedule(Arc::clone(message))? {
                    add_once(&mut outcome.stored, schedule as Arc<dyn Durable>);
                }
                outcome.delayed = true;
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Routes the dead letters `queue` collected (a consumer rejected
    /// messages, a requeue passed the delivery limit, the management API
    /// rejected what it fetched) to its dead-letter exchange. Returns the
    /// stores they were written to.
    pub fn route_dead_letters(&self, queue: &Arc<Queue>) -> Vec<Arc<dyn Durable>> {
        let mut work = DeadLetterWork::new();
        work.collect(queue);
        let mut stored = Vec::new();
        self.route_dead_letter_work(work, &mut stored);
        stored
    }

    /// At-least-once dead-lettering, on the broker's timer: the messages
    /// `queue` keeps whose letters every target now holds go for good
    /// (local stores are synced here; commits and forwards are only
    /// looked at), those lost on the way and those whose retry is due are
    /// routed again (by the caller, with the queue's other dead letters).
    pub(super) fn advance_dying(&self, queue: &Arc<Queue>, now: u64) {
        if queue.dying().0 == 0 {
            return;
        }
        let in_flight = queue.dying_in_flight();
        if !in_flight.is_empty() {
            let mut local: Vec<Arc<dyn Durable>> = Vec::new();
            for d in in_flight.iter().flat_map(|(_, stores)| stores) {
                if d.commit() == Commit::Local {
                    add_once(&mut local, Arc::clone(d));
                }
            }
            let failed = crate::syncer::fsync_round(&local);
            let mut done = Vec::new();
            for (seq, stores) in in_flight {
                let mut held = Some(true);
                for d in &stores {
                    match d.commit() {
                        Commit::Local if failed.iter().any(|f| Arc::ptr_eq(f, d)) => {
                            held = Some(false)
                        }
                        Commit::Local | Commit::Done(true) => {}
                        Commit::Done(false) => held = Some(false),
                        Commit::Pending => held = held.filter(|h| !h),
                    }
                }
                done.extend(held.map(|h| (seq, h)));
            }
            queue.dying_settled(done);
        }
        queue.dying_due(now);
    }

    /// Counts a letter dead-lettered at most once (one kept by its queue
    /// until it is held was counted when it died, and is routed again
    /// until then).
    fn count_at_most_once(&self, from: &Queue, letter: &DeadLetter, mode: DeadLetterMode) {
        if letter.hold.is_none() {
            self.metrics
                .dead_lettered
                .count(from.kind(), mode, letter.reason, 1);
        }
    }

    /// Publishes dead letters, and the dead letters they cause in turn, hop
    /// by hop, within the work's budget.
    fn route_dead_letter_work(&self, mut work: DeadLetterWork, stored: &mut Vec<Arc<dyn Durable>>) {
        let mut round = 0;
        while !work.is_empty() {
            for (from, letters) in work.next_round(round) {
                let Some(dlx) = from.args().dead_letter_exchange.clone() else {
                    for letter in &letters {
                        self.count_at_most_once(&from, letter, DeadLetterMode::Disabled);
                        letter.unroutable(&from);
                    }
                    continue;
                };
                for letter in letters {
                    if !work.spend() {
                        self.count_at_most_once(&from, &letter, DeadLetterMode::AtMostOnce);
                        work.put_off(&letter, &from);
                        continue;
                    }
                    let now = self.clock.now_ms();
                    let message = Arc::new(dead_lettered(&letter, &from, &dlx, now));
                    let mut options =
                        PublishOptions::new(PublishSource::DeadLetter(letter.reason), false);
                    options.held = letter.hold.is_some();
                    let mut outcome = PublishOutcome::default();
                    let result = self.publish_one(message, options, &mut outcome, &mut work);
                    if let Err(e) = &result {
                        // RabbitMQ drops dead letters whose exchange is
                        // gone (a kept one is retried).
                        tracing::debug!(queue = from.name, "dead letter not routed: {e}");
                    }
                    // As RabbitMQ counts it: a letter whose exchange is
                    // gone was dropped.
                    let mode = match &result {
                        Err(BrokerError::NotFound(_)) => DeadLetterMode::Disabled,
                        _ => DeadLetterMode::AtMostOnce,
                    };
                    self.count_at_most_once(&from, &letter, mode);
                    if let Some(seq) = letter.hold {
                        // Held once every target has it; a letter kept
                        // from its queues by the cycle rule goes nowhere
                        // by rule, as in RabbitMQ.
                        let reached = outcome.routed > 0
                            || outcome.duplicate
                            || outcome.delayed
                            || outcome.cycled;
                        let held = result.is_ok() && reached && !outcome.rejected;
                        // The timer waits for what holds it, not the caller
                        // (a rejecting channel's confirms must not wait for
                        // another node's answer).
                        from.dead_letter_routed(seq, held.then_some(outcome.stored));
                        continue;
                    }
                    for s in outcome.stored {
                        add_once(stored, s);
                    }
                }
            }
            round += 1;
        }
        if work.dropped > 0 {
            self.metrics.dead_letters_dropped.add(work.dropped as u64);
            tracing::warn!(
                vhost = self.name,
                dropped = work.dropped,
                "dropped dead letters: one operation caused more than the dead-letter budget allows (a dead-letter topology that multiplies messages)"
            );
        }
    }

    /// Routes the delayed messages that are due, as if published now. They
    /// leave the exchange's store only once the queues that took them have
    /// synced them, so a crash in between delivers twice rather than never.
    pub(super) fn release_due(&self, schedule: &DelayedMessages, now: u64) {
        let due = schedule.take_due(now);
        if due.is_empty() {
            return;
        }
        let mut stored: Vec<Arc<dyn Durable>> = Vec::new();
        for item in &due {
            let message = Arc::new((*item.message).clone().published_at(now));
            let options = PublishOptions::new(PublishSource::DelayedRelease, false);
            match self.publish(message, options) {
                Ok(outcome) => outcome
                    .stored
                    .into_iter()
                    .for_each(|s| add_once(&mut stored, s)),
                Err(e) => tracing::warn!(vhost = self.name, "dropping delayed message: {e}"),
            }
        }
        if !crate::syncer::sync_round(&stored).is_empty() {
            // Keep them in the schedule's store: they come back after a
            // restart rather than being lost.
            return;
        }
        schedule.release(&due);
    }
}
