//! Changing a vhost's topology: declaring and deleting exchanges and
//! queues, binding and unbinding, with RabbitMQ's rules and reply texts.
//! Each change that touches durable topology is saved before it returns.

use std::sync::Arc;

use antre_amqp::{FieldTable, FieldValue};

use crate::equivalence;
use crate::error::{exchange_ref, queue_ref, BrokerError};
use crate::exchange::{Binding, Destination, ExchangeType};
use crate::queue::{ConnectionId, Queue, QueueArgs, QueueCounts, QueueKind, QueueOptions};
use crate::stream::Stream;

use super::storage::build_exchange;
use super::topology::{check_exclusive, locked};
use super::{generated_name, ExchangeDeclaration, ExclusiveHolder, QueueDeclaration, Vhost};

/// What a queue.declare found or made: a queue or a stream.
#[derive(Debug, Clone)]
pub enum DeclaredQueue {
    /// A classic queue.
    Queue(Arc<Queue>),
    /// A stream (`x-queue-type: stream`).
    Stream(Arc<Stream>),
}

impl DeclaredQueue {
    /// Its name.
    pub fn name(&self) -> &str {
        match self {
            DeclaredQueue::Queue(q) => &q.name,
            DeclaredQueue::Stream(s) => &s.name,
        }
    }
}

/// Whether declaration arguments ask for a stream.
pub(crate) fn is_stream(args: &FieldTable) -> bool {
    args.get("x-queue-type").and_then(FieldValue::as_str) == Some("stream")
}

/// A stream's counts as queue.declare-ok reports them: its messages, and
/// no consumers, as RabbitMQ's stream queues answer.
fn stream_counts(s: &Stream) -> QueueCounts {
    QueueCounts {
        ready: u32::try_from(s.info().messages).unwrap_or(u32::MAX),
        unacked: 0,
        consumers: 0,
    }
}

fn reserved(name: &str) -> bool {
    name.starts_with("amq.")
}

/// Refuses a client-chosen queue name with the reserved prefix `amq.`.
/// The server may pick a queue's name only for types that allow it:
/// RabbitMQ refuses server-named quorum queues and streams.
pub(crate) fn check_server_named(arguments: &FieldTable) -> Result<(), BrokerError> {
    let kind = arguments.get("x-queue-type").and_then(|v| v.as_str());
    match kind {
        Some(t @ ("quorum" | "stream")) => Err(BrokerError::PreconditionFailed(format!(
            "Cannot declare a server-named queue for type rabbit_{t}_queue"
        ))),
        _ => Ok(()),
    }
}

/// What a queue type demands of a declaration's properties, checked as
/// RabbitMQ checks them (auto-delete, then exclusive, then durable), with
/// its texts.
fn check_properties(
    args: &QueueArgs,
    d: &QueueDeclaration,
    queue: &str,
) -> Result<(), BrokerError> {
    if args.kind == QueueKind::Classic {
        return Ok(());
    }
    let invalid = |property: &str| {
        Err(BrokerError::PreconditionFailed(format!(
            "invalid property '{property}' for {queue}"
        )))
    };
    if d.auto_delete {
        return invalid("auto-delete");
    }
    if d.exclusive {
        return invalid("exclusive-owner");
    }
    if !d.durable {
        return invalid("non-durable");
    }
    Ok(())
}

pub(crate) fn check_queue_name(name: &str) -> Result<(), BrokerError> {
    if reserved(name) {
        return Err(BrokerError::AccessRefused(format!(
            "queue name '{name}' contains reserved prefix 'amq.*'"
        )));
    }
    Ok(())
}

fn inequivalent(
    what: &str,
    arg: &str,
    vhost: &str,
    name: &str,
    got: impl std::fmt::Display,
    have: impl std::fmt::Display,
) -> BrokerError {
    BrokerError::PreconditionFailed(format!(
        "inequivalent arg '{arg}' for {what} '{name}' in vhost '{vhost}': received '{got}' but current is '{have}'"
    ))
}

impl Vhost {
    /// exchange.declare. `passive` only checks that it exists.
    pub fn declare_exchange(
        &self,
        d: ExchangeDeclaration,
        passive: bool,
    ) -> Result<(), BrokerError> {
        // The default exchange cannot be declared, not even passively.
        if d.name.is_empty() {
            return Err(BrokerError::AccessRefused(
                "operation not permitted on the default exchange".into(),
            ));
        }
        if passive {
            let topo = self.topology.read();
            return match topo.exchanges.contains_key(&d.name) {
                true => Ok(()),
                false => Err(topo.no_exchange(&d.name)),
            };
        }
        ExchangeType::parse(&d.kind, &d.arguments)?;
        let mut topo = self.topology.write();
        let existing = topo.exchanges.get(&d.name);
        // amq.* names are reserved for new exchanges only: redeclaring a
        // built-in one as it is succeeds, as in RabbitMQ.
        if existing.is_none() && reserved(&d.name) {
            return Err(BrokerError::AccessRefused(format!(
                "exchange name '{}' contains reserved prefix 'amq.*'",
                d.name
            )));
        }
        if let Some(ex) = existing {
            let err = |arg, got: &dyn std::fmt::Display, have: &dyn std::fmt::Display| {
                inequivalent("exchange", arg, &self.name, &d.name, got, have)
            };
            if ex.type_name != d.kind {
                return Err(err("type", &d.kind, &ex.type_name));
            }
            if ex.durable != d.durable {
                return Err(err("durable", &d.durable, &ex.durable));
            }
            if ex.auto_delete != d.auto_delete {
                return Err(err("auto_delete", &d.auto_delete, &ex.auto_delete));
            }
            if ex.internal != d.internal {
                return Err(err("internal", &d.internal, &ex.internal));
            }
            return equivalence::check_exchange_args(
                &exchange_ref(&self.name, &d.name),
                &ex.arguments,
                &d.arguments,
            );
        }
        let ex = build_exchange(&self.name, self.storage.as_ref(), d, true)?;
        topo.insert_exchange(ex);
        self.save(&mut topo)
    }

    /// exchange.delete. Deleting a missing exchange succeeds, as in RabbitMQ.
    pub fn delete_exchange(&self, name: &str, if_unused: bool) -> Result<(), BrokerError> {
        if name.is_empty() {
            return Err(BrokerError::AccessRefused(
                "operation not permitted on the default exchange".into(),
            ));
        }
        if reserved(name) {
            return Err(BrokerError::AccessRefused(format!(
                "deletion of system {} not allowed",
                exchange_ref(&self.name, name)
            )));
        }
        let mut topo = self.topology.write();
        let Some(ex) = topo.exchanges.get(name) else {
            return Ok(());
        };
        // In use means bound as a source, as in RabbitMQ: bindings that
        // lead to it from other exchanges do not count.
        if if_unused && !ex.bindings.is_empty() {
            return Err(BrokerError::PreconditionFailed(format!(
                "{} in use",
                exchange_ref(&self.name, name)
            )));
        }
        topo.remove_exchange(name);
        self.save(&mut topo)
    }

    /// queue.declare. Returns the queue (whose name the server picked if the
    /// client sent none) and its counts.
    pub fn declare_queue(
        &self,
        d: QueueDeclaration,
        passive: bool,
        conn: ConnectionId,
    ) -> Result<(DeclaredQueue, QueueCounts), BrokerError> {
        if passive {
            if let Some(s) = self.stream(&d.name) {
                let counts = stream_counts(&s);
                return Ok((DeclaredQueue::Stream(s), counts));
            }
            // A passive declare only looks: unlike a redeclare it does not
            // renew the queue's x-expires lease (as in RabbitMQ).
            let q = self.queue(&d.name, conn)?;
            let counts = q.counts();
            return Ok((DeclaredQueue::Queue(q), counts));
        }
        let name = if d.name.is_empty() {
            check_server_named(&d.arguments)?;
            generated_name("amq.gen-")
        } else {
            check_queue_name(&d.name)?;
            d.name.clone()
        };
        self.declare_queue_as(name, d, conn)
    }

    /// queue.declare (not passive) of the queue `name`, which the caller
    /// checked or generated (a channel generates a server-named queue's
    /// name itself, to check the user's permission on it first).
    pub(crate) fn declare_queue_as(
        &self,
        name: String,
        d: QueueDeclaration,
        conn: ConnectionId,
    ) -> Result<(DeclaredQueue, QueueCounts), BrokerError> {
        let mut topo = self.topology.write();
        if let Some(s) = topo.streams.get(&name) {
            let err = |arg, got: &dyn std::fmt::Display, have: &dyn std::fmt::Display| {
                inequivalent("queue", arg, &self.name, &name, got, have)
            };
            if !d.durable {
                return Err(err("durable", &d.durable, &true));
            }
            if d.auto_delete {
                return Err(err("auto_delete", &d.auto_delete, &false));
            }
            equivalence::check_queue_args(
                &queue_ref(&self.name, &name),
                &s.arguments,
                &d.arguments,
            )?;
            let s = Arc::clone(s);
            topo.lifecycle.declared += 1;
            drop(topo);
            let counts = stream_counts(&s);
            return Ok((DeclaredQueue::Stream(s), counts));
        }
        if let Some(q) = topo.queues.get(&name) {
            check_exclusive(q, conn)?;
            let o = &q.options;
            let err = |arg, got: &dyn std::fmt::Display, have: &dyn std::fmt::Display| {
                inequivalent("queue", arg, &self.name, &name, got, have)
            };
            if o.durable != d.durable {
                return Err(err("durable", &d.durable, &o.durable));
            }
            if o.exclusive_owner.is_some() != d.exclusive {
                // RabbitMQ treats a differing exclusive flag as a lock
                // conflict, not as an inequivalent argument.
                return Err(locked(q));
            }
            if o.auto_delete != d.auto_delete {
                return Err(err("auto_delete", &d.auto_delete, &o.auto_delete));
            }
            equivalence::check_queue_args(
                &queue_ref(&self.name, &name),
                &o.arguments,
                &d.arguments,
            )?;
            let q = Arc::clone(q);
            topo.lifecycle.declared += 1;
            drop(topo);
            q.touch();
            let counts = q.counts();
            return Ok((DeclaredQueue::Queue(q), counts));
        }
        if is_stream(&d.arguments) {
            let stream = self.new_stream(&name, d)?;
            self.announce_created(crate::cluster::Created::Stream(&stream));
            topo.insert_stream(Arc::clone(&stream));
            self.save(&mut topo)?;
            topo.lifecycle.declared += 1;
            topo.lifecycle.created += 1;
            return Ok((DeclaredQueue::Stream(stream), QueueCounts::default()));
        }
        if let Some(limit) = self.max_queues() {
            // In a cluster every node applies a shared queue's declare and
            // checks the limit: all must count alike, so the shared
            // queues count, not this node's own exclusive ones (a node
            // that alone refused lacked the queue for good). An exclusive
            // queue's declare is this node's and counts them too.
            let replicated = self.metadata.get().is_some() && !d.exclusive;
            let count = if replicated {
                topo.shared_queue_count()
            } else {
                topo.queue_count()
            };
            if count as u64 >= limit {
                return Err(BrokerError::PreconditionFailed(format!(
                    "cannot declare queue '{name}': queue limit in vhost '{}' ({limit}) is reached",
                    self.name
                )));
            }
        }
        let args = QueueArgs::parse(&d.arguments, &self.name, &name)?;
        check_properties(&args, &d, &queue_ref(&self.name, &name))?;
        let options = QueueOptions {
            durable: d.durable,
            exclusive_owner: d.exclusive.then_some(conn),
            auto_delete: d.auto_delete,
            arguments: d.arguments,
        };
        // Exclusive queues die with their connection, so their messages
        // never need to outlive a restart.
        let q = match &self.storage {
            Some(storage) if d.durable && !d.exclusive => {
                storage.open_queue(&self.name, &name, options, Arc::clone(&self.clock), true)?
            }
            _ => Queue::new(
                &self.name,
                &name,
                options,
                Arc::clone(&self.clock),
                self.paging(),
            )?,
        };
        self.announce_created(crate::cluster::Created::Queue(&q));
        topo.insert_queue(Arc::clone(&q));
        self.save(&mut topo)?;
        topo.lifecycle.declared += 1;
        topo.lifecycle.created += 1;
        Ok((DeclaredQueue::Queue(q), QueueCounts::default()))
    }

    /// In a cluster: removes this node's exclusive queue `name`, if there
    /// is one, because a shared queue of that name was declared on another
    /// node (exclusive queues are not replicated, so that node could not
    /// refuse). Every node must apply a declaration alike: when this one
    /// refused it, this node alone lacked the shared queue for good, and
    /// what its clients published to it was unroutable. The exclusive
    /// queue's consumers are cancelled, as when a queue is deleted.
    pub(crate) fn evict_exclusive(&self, name: &str) {
        self.evict_exclusive_for(
            name,
            "a shared queue declared on another cluster node takes the name of this node's exclusive queue: the exclusive queue is deleted",
        );
    }

    /// Deletes this node's exclusive queue `name`, if there is one, because
    /// the metadata gave its name to another queue (`why`, logged). Its
    /// name is not released: it is no longer this node's to release.
    pub(crate) fn evict_exclusive_for(&self, name: &str, why: &str) {
        let mut topo = self.topology.write();
        let exclusive = topo
            .queues
            .get(name)
            .is_some_and(|q| q.options.exclusive_owner.is_some());
        if !exclusive {
            return;
        }
        if let Some(q) = topo.remove_queue(name) {
            q.delete();
        }
        drop(topo);
        self.announced.lock().remove(name);
        tracing::warn!(vhost = self.name, queue = name, "{why}");
    }

    /// Tells the cluster (if any) of a queue or stream created here, before
    /// it is inserted where clients find it (see
    /// [`crate::cluster::MetadataLog::created`]).
    fn announce_created(&self, created: crate::cluster::Created<'_>) {
        if let Some(log) = self.metadata.get() {
            log.created(&self.name, created);
        }
    }

    /// A new stream, after RabbitMQ's checks of its properties (in its
    /// order and words).
    fn new_stream(&self, name: &str, d: QueueDeclaration) -> Result<Arc<Stream>, BrokerError> {
        let resource = queue_ref(&self.name, name);
        let invalid = |property: &str| {
            BrokerError::PreconditionFailed(format!("invalid property '{property}' for {resource}"))
        };
        if d.auto_delete {
            return Err(invalid("auto-delete"));
        }
        if d.exclusive {
            return Err(invalid("exclusive-owner"));
        }
        if !d.durable {
            return Err(invalid("non-durable"));
        }
        let Some(storage) = &self.storage else {
            return Err(BrokerError::PreconditionFailed(format!(
                "{resource} cannot be a stream: the broker has no data directory"
            )));
        };
        storage.open_stream(&self.name, name, d.arguments, Arc::clone(&self.clock), true)
    }

    /// A fresh reply queue for direct reply-to: named
    /// `amq.rabbitmq.reply-to.[<node>.]<random>` ([`super::reply_to_name`]), transient, exclusive to `conn` and
    /// deleted with its consumer, so replies published to its name through
    /// the default exchange reach exactly one channel, and a reply that
    /// arrives after the requester left is unroutable.
    pub fn declare_reply_queue(&self, conn: ConnectionId) -> Result<Arc<Queue>, BrokerError> {
        let name = super::reply_to_name(self.metadata.get().map(|m| m.node_name()));
        let options = QueueOptions {
            durable: false,
            exclusive_owner: Some(conn),
            auto_delete: true,
            arguments: FieldTable::default(),
        };
        let q = Queue::new(
            &self.name,
            &name,
            options,
            Arc::clone(&self.clock),
            self.paging(),
        )?;
        // Transient and exclusive: nothing to save in the definitions.
        self.topology.write().insert_queue(Arc::clone(&q));
        Ok(q)
    }

    /// queue.delete; returns how many messages it held.
    pub fn delete_queue(
        &self,
        name: &str,
        if_unused: bool,
        if_empty: bool,
        conn: ConnectionId,
    ) -> Result<u32, BrokerError> {
        let mut topo = self.topology.write();
        if topo.streams.contains_key(name) {
            // RabbitMQ deletes a stream whatever if-unused and if-empty say.
            let n = topo.remove_stream(name).map_or(0, |s| s.delete());
            self.save(&mut topo)?;
            return Ok(u32::try_from(n).unwrap_or(u32::MAX));
        }
        let Some(q) = topo.queues.get(name) else {
            // RabbitMQ answers delete-ok for a queue that is already gone.
            return Ok(0);
        };
        check_exclusive(q, conn)?;
        self.check_delete(name, &q.counts(), if_unused, if_empty)?;
        let removed = topo.remove_queue(name);
        let n = removed.as_ref().map_or(0, |q| q.delete());
        self.save(&mut topo)?;
        drop(topo);
        if removed.is_some_and(|q| q.options.exclusive_owner.is_some()) {
            self.unannounce(name);
        }
        Ok(n)
    }

    /// queue.delete's if-unused and if-empty against the queue's `counts`
    /// (its owner's, in a cluster).
    pub(crate) fn check_delete(
        &self,
        name: &str,
        counts: &QueueCounts,
        if_unused: bool,
        if_empty: bool,
    ) -> Result<(), BrokerError> {
        if if_unused && counts.consumers > 0 {
            return Err(BrokerError::PreconditionFailed(format!(
                "{} in use",
                queue_ref(&self.name, name)
            )));
        }
        // RabbitMQ looks at ready messages only: a queue whose messages
        // are all out for delivery counts as empty.
        if if_empty && counts.ready > 0 {
            return Err(BrokerError::PreconditionFailed(format!(
                "{} not empty",
                queue_ref(&self.name, name)
            )));
        }
        Ok(())
    }

    /// Removes a queue whose last consumer left, if it is still auto-delete
    /// and consumer-less (a new consumer may have raced in).
    pub fn auto_delete_queue(&self, queue: &Arc<Queue>) {
        self.remove_if_current(queue, |q| q.counts().consumers == 0);
    }

    /// Removes `queue` if it is still the vhost's queue of that name and
    /// `still` holds, saving the definitions.
    pub(super) fn remove_if_current(&self, queue: &Arc<Queue>, still: impl Fn(&Queue) -> bool) {
        if self.remote_owner(&queue.name).is_some() {
            // Its owner decides; its replicated deletion removes it here.
            return;
        }
        let mut topo = self.topology.write();
        let same = topo
            .queues
            .get(&queue.name)
            .is_some_and(|q| Arc::ptr_eq(q, queue));
        if same && still(queue) {
            if let Some(q) = topo.remove_queue(&queue.name) {
                q.delete();
            }
            if let Err(e) = self.save(&mut topo) {
                tracing::error!("{e}");
            }
            let shared = queue.options.exclusive_owner.is_none();
            if !shared {
                self.unannounce(&queue.name);
            }
            if let (Some(log), true) = (self.metadata.get(), shared) {
                // Removed here first (the owner's engine is gone); the
                // other nodes drop their copy of the definition when this
                // commits.
                log.propose_later(self.delete_command(&queue.name));
            }
        }
    }

    /// Deletes the exclusive queues of a closed connection.
    pub fn connection_closed(&self, conn: ConnectionId) {
        let gone = self.topology.write().take_exclusive(conn);
        for q in gone {
            q.delete();
            self.unannounce(&q.name);
        }
    }

    /// Records that this node's exclusive queue `name` is bound through the
    /// metadata, so other nodes route to it.
    pub(crate) fn announce(&self, name: &str) {
        self.announced.lock().insert(name.to_owned());
    }

    /// This node's exclusive queue `name` is gone: if other nodes route to
    /// it, its deletion goes through the metadata, so they drop their
    /// bindings to it (else they would keep forwarding to nothing, and
    /// bindings of short-lived subscribers would pile up).
    fn unannounce(&self, name: &str) {
        if !self.announced.lock().remove(name) {
            return;
        }
        let Some(log) = self.metadata.get() else {
            return;
        };
        log.propose_later(if self.holds_exclusive(name) {
            // Released only while still this node's: a release overtaken
            // by a later declare of the name elsewhere changes nothing.
            self.exclusive_record(name, log.node_name(), false)
        } else {
            self.delete_command(name)
        });
    }

    /// The metadata's record that cluster node `node` holds (`held`) the
    /// client-named exclusive queue `name`, or no longer does.
    pub(crate) fn exclusive_record(
        &self,
        name: &str,
        node: &str,
        held: bool,
    ) -> crate::cluster::MetaCommand {
        crate::cluster::MetaCommand::ExclusiveQueue {
            vhost: self.name.clone(),
            name: name.to_owned(),
            node: node.to_owned(),
            held,
            claim: None,
        }
    }

    /// The metadata's record that cluster node `node` declared the
    /// client-named exclusive queue `name`: once the cluster logs claims,
    /// applied only if no other node holds the name (or only `from`: see
    /// [`crate::cluster::ExclusiveClaim`]); before, whatever held it.
    pub(crate) fn exclusive_hold(
        &self,
        log: &dyn crate::cluster::MetadataLog,
        name: &str,
        node: &str,
        from: Option<&str>,
    ) -> crate::cluster::MetaCommand {
        let claimed = crate::cluster::MetaCommand::ExclusiveQueue {
            vhost: self.name.clone(),
            name: name.to_owned(),
            node: node.to_owned(),
            held: true,
            claim: Some(crate::cluster::ExclusiveClaim {
                from: from.map(str::to_owned),
            }),
        };
        if log.may_log(&claimed) {
            claimed
        } else {
            self.exclusive_record(name, node, true)
        }
    }

    /// The unconditional replicated deletion of queue `name`.
    pub(crate) fn delete_command(&self, name: &str) -> crate::cluster::MetaCommand {
        crate::cluster::MetaCommand::DeleteQueue {
            vhost: self.name.clone(),
            name: name.to_owned(),
            if_unused: false,
            if_empty: false,
        }
    }

    /// Drops the bindings to `name`, another node's exclusive queue whose
    /// node no longer holds it (none if a queue of this node has the name).
    fn drop_bindings_to_absent(&self, name: &str) {
        let mut topo = self.topology.write();
        if !topo.queues.contains_key(name) {
            topo.remove_bindings_to(&Destination::Queue(name.to_owned()), false);
        }
    }

    /// Applies [`crate::cluster::MetaCommand::ExclusiveQueue`] (held):
    /// cluster node `node` holds the client-named exclusive queue `name`.
    /// Refused (405) on every node alike where a shared queue or a stream
    /// has the name, or (with a `claim`) where the metadata records
    /// another node than `node` and the claim's `from` as its holder: the
    /// first declare in the log wins. Without a claim, the record takes the
    /// name: on the other nodes, an exclusive queue of that name that a
    /// client declared there loses it, the same on every node.
    pub(crate) fn hold_exclusive(
        &self,
        name: &str,
        node: &str,
        claim: Option<&crate::cluster::ExclusiveClaim>,
    ) -> Result<(), BrokerError> {
        let mine = self.metadata.get().is_some_and(|m| m.node_name() == node);
        {
            let topo = self.topology.read();
            let shared = topo
                .queues
                .get(name)
                .is_some_and(|q| q.options.exclusive_owner.is_none());
            if shared || topo.streams.contains_key(name) {
                return Err(super::topology::locked_name(&self.name, name));
            }
        }
        if let Some(claim) = claim {
            let holders = self.exclusive_of.read();
            let held_by_another = holders.get(name).is_some_and(|h| {
                h.recorded && *h.node != *node && claim.from.as_deref() != Some(&*h.node)
            });
            if held_by_another {
                return Err(super::topology::locked_name(&self.name, name));
            }
        }
        if !mine {
            self.evict_exclusive_for(
                name,
                "another cluster node's client declared this node's exclusive queue at the same moment, and was later in the metadata: this node's is deleted",
            );
            self.note_binding_elsewhere();
        }
        let taken = self
            .exclusive_of
            .read()
            .get(name)
            .is_some_and(|h| *h.node != *node);
        if taken {
            // Its node was down, or lost a race: the bindings to its queue
            // went with it, as RabbitMQ deletes a down node's exclusive
            // queues.
            self.drop_bindings_to_absent(name);
        }
        let holder = ExclusiveHolder {
            node: Arc::from(node),
            recorded: true,
        };
        self.exclusive_of.write().insert(name.to_owned(), holder);
        Ok(())
    }

    /// Applies [`crate::cluster::MetaCommand::ExclusiveQueue`] (not held):
    /// if cluster node `node` still holds the exclusive queue `name`, it
    /// no longer does, and the other nodes' bindings to it go.
    pub(crate) fn release_exclusive(&self, name: &str, node: &str) {
        {
            let mut holders = self.exclusive_of.write();
            if holders
                .get(name)
                .is_none_or(|h| !h.recorded || *h.node != *node)
            {
                return;
            }
            holders.remove(name);
        }
        let Some(log) = self.metadata.get() else {
            return;
        };
        if log.node_name() != node {
            self.drop_bindings_to_absent(name);
            return;
        }
        // This node's own release, applied after the name was declared
        // again here (the new declare's entry overtook it in the log): the
        // queue is still this node's, so its name and bindings are
        // recorded again.
        let Some(q) = self.queue_info(name) else {
            return;
        };
        if q.options.exclusive_owner.is_none() || !self.announced.lock().contains(name) {
            return;
        }
        // Claimed: if another node took the name meanwhile, its record,
        // applied here first, deleted this queue, and this one is refused.
        log.propose_later(self.exclusive_hold(log.as_ref(), name, node, None));
        let to_it = Destination::Queue(name.to_owned());
        for e in self.exchanges() {
            for b in e.bindings.into_iter().filter(|b| b.destination == to_it) {
                let bind = crate::cluster::MetaCommand::binding(
                    false,
                    &self.name,
                    e.name.clone(),
                    b.destination,
                    b.routing_key,
                    b.arguments,
                );
                log.propose_later(bind.on_node(node));
            }
        }
    }

    /// Whether exchange `source` has a binding equal to `binding`.
    pub(crate) fn has_binding(&self, source: &str, binding: &Binding) -> bool {
        self.topology
            .read()
            .exchanges
            .get(source)
            .is_some_and(|x| x.bindings.contains(binding))
    }

    /// Whether an exchange of this vhost is bound to the queue `name`.
    pub(crate) fn is_bound_to(&self, name: &str) -> bool {
        self.topology
            .read()
            .is_destination(&Destination::Queue(name.to_owned()))
    }

    /// Applies another node's replicated deletion of its exclusive queue
    /// `name` here: the bindings to it go.
    pub(crate) fn drop_bindings_elsewhere(&self, name: &str) {
        if self.named_elsewhere(name).is_some() {
            self.drop_bindings_to_absent(name);
        }
        self.exclusive_of.write().remove(name);
    }

    /// Forgets which nodes hold client-named exclusive queues, as the
    /// metadata recorded it, this node's own included: before the record
    /// of a snapshot or of `applied.json` is given back (a node that
    /// installs a snapshot missed the releases it compacted away). Every
    /// node must then hold the same record, or a claim on a name
    /// ([`crate::cluster::ExclusiveClaim`]) would be refused on one node
    /// and applied on the others.
    pub fn forget_recorded_exclusive(&self) {
        self.exclusive_of.write().retain(|_, h| !h.recorded);
    }

    /// A shared queue took the name `name` (see [`Vhost::evict_exclusive`]):
    /// no node holds an exclusive queue of that name any more.
    pub(crate) fn forget_exclusive(&self, name: &str) {
        self.exclusive_of.write().remove(name);
    }

    /// Records that `name` is an exclusive queue of cluster node `node`
    /// (a replicated binding names it): this node's bindings to it route
    /// there. Nothing for this node's own.
    pub(crate) fn note_exclusive_of(&self, name: &str, node: &str) {
        let mine = self.metadata.get().is_some_and(|m| m.node_name() == node);
        if !mine && crate::vhost::node_named_by(name).is_none() {
            // A recorded holder stays: the metadata says where it is.
            self.exclusive_of
                .write()
                .entry(name.to_owned())
                .or_insert_with(|| ExclusiveHolder {
                    node: Arc::from(node),
                    recorded: false,
                });
        }
    }

    /// The cluster node that holds the client-named exclusive queue `name`
    /// as the metadata recorded it, if another one than this (see
    /// [`crate::cluster::MetaCommand::ExclusiveQueue`]).
    pub fn exclusive_elsewhere(&self, name: &str) -> Option<Arc<str>> {
        let me = self.metadata.get()?.node_name();
        let holders = self.exclusive_of.read();
        let h = holders.get(name).filter(|h| h.recorded && *h.node != *me)?;
        Some(Arc::clone(&h.node))
    }

    /// The running cluster node, other than this one, that the metadata
    /// records as holding the client-named exclusive queue `name`. A node
    /// that is down lost its exclusive queues, as in RabbitMQ: its names
    /// answer as free ones do (404 to a consume, a declare takes them).
    pub fn exclusive_of_running(&self, name: &str) -> Option<Arc<str>> {
        let node = self.exclusive_elsewhere(name)?;
        self.is_running(&node).then_some(node)
    }

    /// Why the management API may not act on queue `name` (delete, purge,
    /// get from, bind, redeclare), as RabbitMQ's refuses: an exclusive
    /// queue belongs to its connection, here or on another running node
    /// (named by its name, or as the metadata records it). The error is
    /// the one its AMQP gives another connection. A node that is down lost
    /// its exclusive queues: its names are free.
    pub fn locked_for_management(&self, name: &str) -> Option<BrokerError> {
        let here = self
            .topology
            .read()
            .queues
            .get(name)
            .map(|q| q.options.exclusive_owner.is_some());
        let locked = match here {
            Some(exclusive) => exclusive,
            None => self
                .named_elsewhere(name)
                .is_some_and(|node| self.is_running(&node)),
        };
        locked.then(|| super::locked_name(&self.name, name))
    }

    /// Whether cluster node `node` runs, as this node sees it.
    pub(crate) fn is_running(&self, node: &str) -> bool {
        self.metadata
            .get()
            .is_some_and(|log| log.nodes().iter().any(|n| n == node))
    }

    /// What makes every node forget the node-local queue `name` that its
    /// node `node` says is gone: the release of a recorded client-named
    /// exclusive queue (if still `node`'s), or the deletion of a queue
    /// bound here. None for a name neither recorded nor bound here: a
    /// publish to a made-up name must not cost the cluster a metadata
    /// change.
    pub(crate) fn forget_gone(
        &self,
        name: &str,
        node: &str,
    ) -> Option<crate::cluster::MetaCommand> {
        if self.exclusive_elsewhere(name).is_some_and(|n| *n == *node) {
            return Some(self.exclusive_record(name, node, false));
        }
        self.is_bound_to(name).then(|| self.delete_command(name))
    }

    /// Whether the metadata records this node as holding the client-named
    /// exclusive queue `name`.
    pub(crate) fn holds_exclusive(&self, name: &str) -> bool {
        let Some(log) = self.metadata.get() else {
            return false;
        };
        self.exclusive_of
            .read()
            .get(name)
            .is_some_and(|h| h.recorded && *h.node == *log.node_name())
    }

    /// queue.bind / exchange.bind.
    pub fn bind(
        &self,
        source: &str,
        destination: Destination,
        routing_key: &str,
        arguments: FieldTable,
        conn: ConnectionId,
    ) -> Result<(), BrokerError> {
        let binding = Binding {
            destination,
            routing_key: routing_key.to_owned(),
            arguments,
        };
        self.change_binding(source, binding, conn, true)
    }

    /// queue.unbind / exchange.unbind. Idempotent, as in RabbitMQ: a missing
    /// binding, queue, source or destination exchange is not an error
    /// (clients unbind in teardown, after auto-delete has removed things);
    /// the default exchange and another connection's exclusive queue still
    /// are.
    pub fn unbind(
        &self,
        source: &str,
        destination: Destination,
        routing_key: &str,
        arguments: &FieldTable,
        conn: ConnectionId,
    ) -> Result<(), BrokerError> {
        let binding = Binding {
            destination,
            routing_key: routing_key.to_owned(),
            arguments: arguments.clone(),
        };
        self.change_binding(source, binding, conn, false)
    }

    /// Adds or removes a binding once both its ends check out.
    fn change_binding(
        &self,
        source: &str,
        binding: Binding,
        conn: ConnectionId,
        add: bool,
    ) -> Result<(), BrokerError> {
        // A server-named exclusive queue of another node (bound through
        // the metadata): bound here too, to route to that node.
        let elsewhere = match &binding.destination {
            Destination::Queue(q) => self.named_elsewhere(q).is_some(),
            Destination::Exchange(_) => false,
        };
        if elsewhere && add {
            self.note_binding_elsewhere();
        }
        let mut topo = self.topology.write();
        match topo.check_binding_ends(source, &binding.destination, conn, elsewhere) {
            Err(BrokerError::NotFound(_)) if !add => return Ok(()),
            other => other?,
        }
        if add {
            topo.bind(source, binding)?;
        } else {
            topo.unbind(source, &binding);
        }
        self.save(&mut topo)
    }
}
