//! A vhost's routing table: its exchanges with their bindings, and its
//! queues by name. Pure data and the rules that walk it; persistence lives
//! in [`super::persist`] and locking in [`super::Vhost`].

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

use antre_amqp::FieldTable;

use crate::channel::ExchangeFlows;
use crate::error::{exchange_ref, queue_ref, BrokerError};
use crate::exchange::{Binding, Destination, Exchange, ExchangeKind};
use crate::metrics::DeadLettered;
use crate::policy::{AppliedPolicy, PolicySet};
use crate::queue::{ConnectionId, Queue, QueueKind, TimerHook};
use crate::stream::Stream;

use super::persist::Change;

/// The exchanges every vhost has from the start.
pub(super) const PREDECLARED: [(&str, ExchangeKind); 7] = [
    ("", ExchangeKind::Direct),
    ("amq.direct", ExchangeKind::Direct),
    ("amq.fanout", ExchangeKind::Fanout),
    ("amq.topic", ExchangeKind::Topic),
    ("amq.headers", ExchangeKind::Headers),
    ("amq.match", ExchangeKind::Headers),
    ("amq.rabbitmq.trace", ExchangeKind::Topic),
];

/// Whether `name` is one of the exchanges every vhost has.
pub(super) fn is_predeclared(name: &str) -> bool {
    PREDECLARED.iter().any(|(n, _)| *n == name)
}

/// Exchanges and queues of one vhost, with the indexes that keep every
/// change O(log n) in the number of queues and bindings.
#[derive(Debug)]
pub(super) struct Topology {
    /// The vhost's name, for error texts.
    pub vhost: String,
    pub exchanges: HashMap<String, Exchange>,
    pub queues: HashMap<String, Arc<Queue>>,
    /// Its streams by name (a name is a queue's or a stream's, never both).
    pub streams: HashMap<String, Arc<Stream>>,
    /// For each destination, the exchanges with bindings to it.
    sources: HashMap<Destination, BTreeSet<String>>,
    /// Each connection's exclusive queues.
    exclusive: HashMap<ConnectionId, Vec<String>>,
    /// Changes to durable definitions not yet written to disk.
    changes: Vec<Change>,
    /// Queue declarations, creations and deletions so far.
    pub lifecycle: QueueLifecycle,
    /// Queues that need the broker's timer (they add themselves).
    pub timed: Arc<Mutex<Vec<Weak<Queue>>>>,
    /// The broker's dead-letter counters, which every queue counts into.
    dead_lettered: Arc<DeadLettered>,
    /// How many of `queues` are direct reply-to addresses.
    reply_queues: usize,
    /// How many of `queues` are exclusive (reply-to addresses included).
    exclusive_queues: usize,
    /// The vhost's policies and operator policies.
    pub policies: PolicySet,
    /// What channels published through its exchanges (shared with the
    /// vhost, so a deleted exchange's figures go with it).
    pub flows: Arc<ExchangeFlows>,
}

/// How many queue.declare calls succeeded, queues were created and queues
/// were deleted in a vhost since it was opened (RabbitMQ's
/// `queues_declared_total` and the like).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueLifecycle {
    /// Successful non-passive declarations, of new or existing queues.
    pub declared: u64,
    /// Queues created.
    pub created: u64,
    /// Queues deleted, for whatever reason (delete, auto-delete, exclusive
    /// owner gone, expiry).
    pub deleted: u64,
}

impl Topology {
    /// A topology with only the predeclared exchanges; its queues count
    /// the messages they dead-letter or drop into `dead_lettered`.
    pub fn new(vhost: &str, dead_lettered: Arc<DeadLettered>) -> Topology {
        let exchanges = PREDECLARED
            .iter()
            .map(|(name, kind)| (name.to_string(), Exchange::plain(name, *kind)))
            .collect();
        Topology {
            vhost: vhost.to_owned(),
            exchanges,
            queues: HashMap::new(),
            streams: HashMap::new(),
            sources: HashMap::new(),
            exclusive: HashMap::new(),
            changes: Vec::new(),
            lifecycle: QueueLifecycle::default(),
            timed: Arc::default(),
            dead_lettered,
            reply_queues: 0,
            exclusive_queues: 0,
            policies: PolicySet::default(),
            flows: Arc::default(),
        }
    }

    /// Queues as clients count them: without direct reply-to's addresses.
    pub fn queue_count(&self) -> usize {
        self.queues.len().saturating_sub(self.reply_queues)
    }

    /// Queues that are not exclusive: in a cluster, those every node has.
    pub fn shared_queue_count(&self) -> usize {
        self.queues.len().saturating_sub(self.exclusive_queues)
    }

    /// Records a change to durable definitions made outside the methods
    /// here (policies).
    pub fn push_change(&mut self, change: Change) {
        self.changes.push(change);
    }

    /// The changes to durable definitions made since the last call.
    pub fn take_changes(&mut self) -> Vec<Change> {
        std::mem::take(&mut self.changes)
    }

    /// Whether a queue survives a restart (durable and not exclusive).
    fn durable_queue(q: &Queue) -> bool {
        q.options.durable && q.options.exclusive_owner.is_none()
    }

    /// Whether a binding to `destination` from a durable exchange survives
    /// a restart: when its destination does.
    fn durable_destination(&self, destination: &Destination) -> bool {
        match destination {
            Destination::Queue(q) => {
                self.queues.get(q).is_some_and(|q| Self::durable_queue(q))
                    || self.streams.contains_key(q)
            }
            Destination::Exchange(e) => self.exchanges.get(e).is_some_and(|e| e.durable),
        }
    }

    /// Adds an exchange (whose name is free).
    pub fn insert_exchange(&mut self, mut ex: Exchange) {
        ex.policy = self.policies.select_exchange(&ex.name);
        if ex.durable && !is_predeclared(&ex.name) {
            self.changes.push(Change::put_exchange(&self.vhost, &ex));
        }
        self.exchanges.insert(ex.name.clone(), ex);
    }

    /// Adds a queue (whose name is free), under the policies that apply
    /// to it.
    pub fn insert_queue(&mut self, queue: Arc<Queue>) {
        queue.apply_policy(self.policy_for(&queue));
        if Self::durable_queue(&queue) {
            self.changes.push(Change::put_queue(&self.vhost, &queue));
        }
        if let Some(owner) = queue.options.exclusive_owner {
            self.exclusive
                .entry(owner)
                .or_default()
                .push(queue.name.clone());
            self.exclusive_queues += 1;
        }
        let timed = Arc::clone(&self.timed);
        let weak = Arc::downgrade(&queue);
        queue.on_timed(TimerHook(Box::new(move || timed.lock().push(weak.clone()))));
        queue.count_dead_letters_in(Arc::clone(&self.dead_lettered));
        if queue.name.starts_with(super::REPLY_TO) {
            self.reply_queues += 1;
        }
        self.queues.insert(queue.name.clone(), queue);
    }

    /// The policies that apply to a queue: none for direct reply-to's
    /// private queues, which are not queues to RabbitMQ's policies.
    fn policy_for(&self, q: &Queue) -> AppliedPolicy {
        if q.name.starts_with(super::REPLY_TO) {
            return AppliedPolicy::default();
        }
        self.policies.select_queue(&q.name, q.kind())
    }

    /// Selects again, after a policy changed, the policies of every
    /// exchange and queue, applying the new selection at once; returns the
    /// queues whose selection changed (they may hold dead letters to route).
    pub fn reapply_policies(&mut self) -> Vec<Arc<Queue>> {
        for ex in self.exchanges.values_mut() {
            ex.policy = self.policies.select_exchange(&ex.name);
        }
        for s in self.streams.values() {
            s.apply_policy(self.policies.select_queue(&s.name, QueueKind::Stream));
        }
        self.queues
            .values()
            .filter(|q| q.apply_policy(self.policy_for(q)))
            .cloned()
            .collect()
    }

    /// Adds a stream (whose name is free). Streams are always durable.
    pub fn insert_stream(&mut self, stream: Arc<Stream>) {
        self.changes.push(Change::put_stream(&self.vhost, &stream));
        stream.apply_policy(self.policies.select_queue(&stream.name, QueueKind::Stream));
        self.streams.insert(stream.name.clone(), stream);
    }

    /// Removes a stream and the bindings to it; returns the stream.
    pub fn remove_stream(&mut self, name: &str) -> Option<Arc<Stream>> {
        let s = self.streams.remove(name)?;
        self.lifecycle.deleted += 1;
        self.changes.push(Change::DeleteQueue {
            name: name.to_owned(),
        });
        self.remove_bindings_to(&Destination::Queue(name.to_owned()), true);
        Some(s)
    }

    /// Removes and returns a connection's exclusive queues (it closed).
    pub fn take_exclusive(&mut self, conn: ConnectionId) -> Vec<Arc<Queue>> {
        let names = self.exclusive.remove(&conn).unwrap_or_default();
        names
            .iter()
            .filter_map(|name| self.remove_queue(name))
            .collect()
    }

    pub fn no_exchange(&self, name: &str) -> BrokerError {
        BrokerError::NotFound(format!("no {}", exchange_ref(&self.vhost, name)))
    }

    pub fn no_queue(&self, name: &str) -> BrokerError {
        BrokerError::NotFound(format!("no {}", queue_ref(&self.vhost, name)))
    }

    /// The exchange a client may publish to.
    pub fn publishable(&self, exchange: &str) -> Result<&Exchange, BrokerError> {
        let ex = self
            .exchanges
            .get(exchange)
            .ok_or_else(|| self.no_exchange(exchange))?;
        if ex.internal {
            return Err(BrokerError::AccessRefused(format!(
                "cannot publish to internal {}",
                exchange_ref(&self.vhost, exchange)
            )));
        }
        Ok(ex)
    }

    /// The queues and streams a message published to `exchange` reaches, each once,
    /// following exchange-to-exchange bindings (cycles are cut) and, from an
    /// exchange where no binding matched, its alternate exchange. Internal
    /// exchanges route too: only clients may not publish to them
    /// ([`Topology::publishable`]).
    pub fn route(
        &self,
        exchange: &str,
        routing_key: &str,
        headers: Option<&FieldTable>,
    ) -> Result<Targets, BrokerError> {
        if exchange.is_empty() {
            let mut targets = Targets {
                queues: self.queues.get(routing_key).cloned().into_iter().collect(),
                streams: self.streams.get(routing_key).cloned().into_iter().collect(),
                elsewhere: Vec::new(),
            };
            if targets.is_empty() && super::may_be_node_local(routing_key) {
                targets.elsewhere.push(routing_key.to_owned());
            }
            return Ok(targets);
        }
        let ex = self
            .exchanges
            .get(exchange)
            .ok_or_else(|| self.no_exchange(exchange))?;
        let mut walk = Walk {
            topo: self,
            out: Targets::default(),
            seen_queues: HashSet::new(),
            seen_exchanges: HashSet::from([exchange]),
            pending: vec![ex],
            matched: false,
        };
        while let Some(ex) = walk.pending.pop() {
            walk.matched = false;
            if ex.kind == ExchangeKind::Direct {
                for d in ex.bindings.with_routing_key(routing_key) {
                    walk.reach(d);
                }
            } else {
                for b in ex.bindings.iter() {
                    if ex.matches(b, routing_key, headers) {
                        walk.reach(&b.destination);
                    }
                }
            }
            if walk.matched {
                continue;
            }
            if let Some(alt) = ex.alternate_exchange() {
                if let Some((name, next)) = self.exchanges.get_key_value(alt.as_str()) {
                    if walk.seen_exchanges.insert(name.as_str()) {
                        walk.pending.push(next);
                    }
                }
            }
        }
        Ok(walk.out)
    }

    /// Checks that both ends of a binding exist and may be used by `conn`.
    pub fn check_binding_ends(
        &self,
        source: &str,
        destination: &Destination,
        conn: ConnectionId,
        elsewhere: bool,
    ) -> Result<(), BrokerError> {
        let default = "operation not permitted on the default exchange";
        if source.is_empty() {
            return Err(BrokerError::AccessRefused(default.into()));
        }
        match destination {
            Destination::Queue(q) => match self.queues.get(q) {
                Some(queue) => check_exclusive(queue, conn)?,
                None if self.streams.contains_key(q) => {}
                // Another node's exclusive queue, bound through the
                // metadata: the binding routes to that node.
                None if elsewhere => {}
                None => return Err(self.no_queue(q)),
            },
            Destination::Exchange(e) => {
                if e.is_empty() {
                    return Err(BrokerError::AccessRefused(default.into()));
                }
                if !self.exchanges.contains_key(e) {
                    return Err(self.no_exchange(e));
                }
            }
        }
        if !self.exchanges.contains_key(source) {
            return Err(self.no_exchange(source));
        }
        Ok(())
    }

    /// Adds a binding unless an equal one exists.
    pub fn bind(&mut self, source: &str, binding: Binding) -> Result<(), BrokerError> {
        let Some(ex) = self.exchanges.get_mut(source) else {
            return Err(self.no_exchange(source));
        };
        let durable = ex.durable;
        let destination = binding.destination.clone();
        let change = Change::put_binding(&self.vhost, source, &binding);
        if ex.bindings.insert(binding) {
            if durable && self.durable_destination(&destination) {
                self.changes.push(change);
            }
            self.sources
                .entry(destination)
                .or_default()
                .insert(source.to_owned());
        }
        Ok(())
    }

    /// Removes a binding (a missing one is not an error); an auto-delete
    /// source left without bindings goes too.
    pub fn unbind(&mut self, source: &str, binding: &Binding) {
        let Some(ex) = self.exchanges.get_mut(source) else {
            return;
        };
        if !ex.bindings.remove(binding) {
            return;
        }
        let durable = ex.durable;
        let still_bound = ex.bindings.has_destination(&binding.destination);
        let emptied = ex.auto_delete && ex.bindings.is_empty();
        if durable && self.durable_destination(&binding.destination) {
            self.changes
                .push(Change::delete_binding(&self.vhost, source, binding));
        }
        if !still_bound {
            self.forget_source(&binding.destination, source);
        }
        if emptied {
            self.remove_exchange(source);
        }
    }

    /// Removes a queue and the bindings to it; returns the queue.
    pub fn remove_queue(&mut self, name: &str) -> Option<Arc<Queue>> {
        let q = self.queues.remove(name)?;
        // Direct reply-to's queues are not queues to RabbitMQ's clients.
        if name.starts_with(super::REPLY_TO) {
            self.reply_queues = self.reply_queues.saturating_sub(1);
        } else {
            self.lifecycle.deleted += 1;
        }
        if let Some(owner) = q.options.exclusive_owner {
            if let Some(list) = self.exclusive.get_mut(&owner) {
                list.retain(|n| n != name);
            }
            self.exclusive_queues = self.exclusive_queues.saturating_sub(1);
        }
        let durable = Self::durable_queue(&q);
        if durable {
            self.changes.push(Change::DeleteQueue {
                name: name.to_owned(),
            });
        }
        self.remove_bindings_to(&Destination::Queue(name.to_owned()), durable);
        Some(q)
    }

    /// Removes an exchange, its stores, the bindings from it and the
    /// bindings to it.
    pub fn remove_exchange(&mut self, name: &str) {
        let Some(ex) = self.exchanges.remove(name) else {
            return;
        };
        for b in &ex.bindings {
            if ex.durable && self.durable_destination(&b.destination) {
                self.changes
                    .push(Change::delete_binding(&self.vhost, name, b));
            }
            self.forget_source(&b.destination, name);
        }
        ex.discard_stores();
        self.flows.forget(name);
        if ex.durable && !is_predeclared(name) {
            self.changes.push(Change::DeleteExchange {
                name: name.to_owned(),
            });
        }
        self.remove_bindings_to(&Destination::Exchange(name.to_owned()), ex.durable);
    }

    fn forget_source(&mut self, destination: &Destination, source: &str) {
        if let Some(set) = self.sources.get_mut(destination) {
            set.remove(source);
            if set.is_empty() {
                self.sources.remove(destination);
            }
        }
    }

    /// Whether some exchange is bound to `dest`.
    pub(super) fn is_destination(&self, dest: &Destination) -> bool {
        self.sources.get(dest).is_some_and(|s| !s.is_empty())
    }

    /// Drops every binding to `dest` (which is gone, and was durable or
    /// not), then auto-deletes exchanges left with no bindings.
    pub(super) fn remove_bindings_to(&mut self, dest: &Destination, dest_durable: bool) {
        let Some(sources) = self.sources.remove(dest) else {
            return;
        };
        for name in sources {
            let Some(ex) = self.exchanges.get_mut(&name) else {
                continue;
            };
            let removed = ex.bindings.remove_destination(dest);
            let emptied = ex.auto_delete && ex.bindings.is_empty();
            if ex.durable && dest_durable {
                for b in &removed {
                    self.changes
                        .push(Change::delete_binding(&self.vhost, &name, b));
                }
            }
            if emptied {
                self.remove_exchange(&name);
            }
        }
    }
}

/// Where a message goes: queues and streams, each once.
#[derive(Debug, Default)]
pub(crate) struct Targets {
    /// Queues.
    pub queues: Vec<Arc<Queue>>,
    /// Streams.
    pub streams: Vec<Arc<Stream>>,
    /// Names this node has no queue of that may name another node's
    /// node-local queue (see [`super::node_named_by`]): in a cluster, the
    /// message is forwarded there.
    pub elsewhere: Vec<String>,
}

impl Targets {
    /// Whether nothing takes the message.
    pub fn is_empty(&self) -> bool {
        self.queues.is_empty() && self.streams.is_empty()
    }
}

/// A walk through the routing graph from one exchange.
struct Walk<'t> {
    topo: &'t Topology,
    out: Targets,
    seen_queues: HashSet<&'t str>,
    seen_exchanges: HashSet<&'t str>,
    pending: Vec<&'t Exchange>,
    /// A binding of the exchange being visited matched.
    matched: bool,
}

impl<'t> Walk<'t> {
    /// A matching binding leads to `destination`: each queue is reached
    /// once, each exchange visited once (so cycles end).
    fn reach(&mut self, destination: &'t Destination) {
        self.matched = true;
        match destination {
            Destination::Queue(q) => {
                if self.seen_queues.insert(q.as_str()) {
                    if let Some(queue) = self.topo.queues.get(q) {
                        self.out.queues.push(Arc::clone(queue));
                    } else if let Some(stream) = self.topo.streams.get(q) {
                        self.out.streams.push(Arc::clone(stream));
                    } else {
                        // Bound while not here: another node's exclusive
                        // queue (see `Vhost::named_elsewhere`).
                        self.out.elsewhere.push(q.clone());
                    }
                }
            }
            Destination::Exchange(e) => {
                if self.seen_exchanges.insert(e.as_str()) {
                    if let Some(next) = self.topo.exchanges.get(e) {
                        self.pending.push(next);
                    }
                }
            }
        }
    }
}

/// Refuses another connection's exclusive queue ([`ANY_CONNECTION`]
/// stands for every connection: a binding the metadata group applies, which
/// the queue's own connection proposed).
pub(super) fn check_exclusive(q: &Queue, conn: ConnectionId) -> Result<(), BrokerError> {
    match q.options.exclusive_owner {
        Some(owner) if owner != conn && conn != ANY_CONNECTION => Err(locked(q)),
        _ => Ok(()),
    }
}

/// See [`check_exclusive`].
pub(crate) const ANY_CONNECTION: ConnectionId = ConnectionId::MAX;

/// RabbitMQ's 405 for another connection's exclusive queue, and for a
/// redeclare whose exclusive flag differs from the queue's.
pub(crate) fn locked(q: &Queue) -> BrokerError {
    locked_name(&q.vhost, &q.name)
}

/// [`locked`] for the queue `name` of `vhost`, wherever it lives.
pub(crate) fn locked_name(vhost: &str, name: &str) -> BrokerError {
    BrokerError::ResourceLocked(format!(
        "cannot obtain exclusive access to locked {}. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration.",
        queue_ref(vhost, name)
    ))
}
