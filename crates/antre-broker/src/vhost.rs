//! A virtual host: its exchanges, queues and bindings, and routing.
//!
//! The topology sits behind one reader-writer lock: publishing only reads it
//! (to route), while declarations and bindings, which are rare, write it.
//! Routing collects the target queues under the read lock and releases it
//! before enqueueing, so a slow queue never holds up the topology.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use antre_amqp::{FieldTable, FieldValue};
use antre_store::StoreOptions;
use parking_lot::RwLock;
use rand::Rng;
use sha2::{Digest, Sha256};

use crate::clock::Clock;
use crate::definitions::{
    json_to_table, table_to_json, BindingDef, ExchangeDef, QueueDef, VhostDefinitions,
};
use crate::durable::{Durable, OwnsStore};
use crate::equivalence;
use crate::error::{exchange_ref, queue_ref, BrokerError};
use crate::exchange::dedup::DedupCache;
use crate::exchange::delayed::DelayedMessages;
use crate::exchange::headers::tables_equal;
use crate::exchange::{Binding, Destination, Exchange, ExchangeKind, ExchangeType};
use crate::queue::{
    ConnectionId, DeadLetter, DeathReason, Enqueued, Queue, QueueCounts, QueueOptions,
};
use crate::syncer::Syncer;

/// Where a vhost keeps its definitions and its durable queues' messages.
#[derive(Debug, Clone)]
pub struct VhostStorage {
    /// The vhost's directory: `definitions.json` and `queues/`.
    pub dir: PathBuf,
    /// Options for each queue's store.
    pub store_options: StoreOptions,
    /// Bytes of message bodies a queue keeps in memory.
    pub memory_limit: u64,
    /// The broker's group-commit thread.
    pub syncer: Syncer,
}

/// A directory name for a vhost or queue name: names may hold any character,
/// so they are hashed (as RabbitMQ does) rather than used as paths.
pub fn dir_name(name: &str) -> String {
    let digest = Sha256::digest(name.as_bytes());
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

const DEFINITIONS_FILE: &str = "definitions.json";

/// The pseudo-queue of RabbitMQ's direct reply-to: consuming from it (with
/// no_ack) gives a channel a private reply address, and publishing with it
/// as `reply_to` stamps that address on the request.
pub const REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// The exchanges every vhost has from the start.
const PREDECLARED: [(&str, ExchangeKind); 7] = [
    ("", ExchangeKind::Direct),
    ("amq.direct", ExchangeKind::Direct),
    ("amq.fanout", ExchangeKind::Fanout),
    ("amq.topic", ExchangeKind::Topic),
    ("amq.headers", ExchangeKind::Headers),
    ("amq.match", ExchangeKind::Headers),
    ("amq.rabbitmq.trace", ExchangeKind::Topic),
];

/// What exchange.declare asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct ExchangeDeclaration {
    /// Name.
    pub name: String,
    /// Type name as the client sent it.
    pub kind: String,
    /// Durable.
    pub durable: bool,
    /// Auto-delete.
    pub auto_delete: bool,
    /// Internal.
    pub internal: bool,
    /// Arguments.
    pub arguments: FieldTable,
}

/// What queue.declare asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueDeclaration {
    /// Name; empty asks the server to pick one.
    pub name: String,
    /// Durable.
    pub durable: bool,
    /// Exclusive to the declaring connection.
    pub exclusive: bool,
    /// Auto-delete.
    pub auto_delete: bool,
    /// Arguments.
    pub arguments: FieldTable,
}

#[derive(Debug, Default)]
struct Topology {
    exchanges: HashMap<String, Exchange>,
    queues: HashMap<String, Arc<Queue>>,
    /// What the definitions file holds, to skip rewrites that change nothing
    /// (declaring an exclusive queue, say).
    saved: Option<VhostDefinitions>,
}

/// A virtual host.
#[derive(Debug)]
pub struct Vhost {
    /// Its name, e.g. "/".
    pub name: String,
    topology: RwLock<Topology>,
    storage: Option<VhostStorage>,
    clock: Arc<dyn Clock>,
}

fn reserved(name: &str) -> bool {
    name.starts_with("amq.")
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
    /// A vhost with the predeclared exchanges.
    pub fn new(name: &str, clock: Arc<dyn Clock>) -> Vhost {
        let mut topology = Topology::default();
        for (ex, kind) in PREDECLARED {
            topology
                .exchanges
                .insert(ex.to_owned(), Exchange::plain(ex, kind));
        }
        Vhost {
            name: name.to_owned(),
            topology: RwLock::new(topology),
            storage: None,
            clock,
        }
    }

    /// A vhost that persists its durable definitions and messages under
    /// `storage.dir`, recovering whatever is there.
    pub fn open(
        name: &str,
        storage: VhostStorage,
        clock: Arc<dyn Clock>,
    ) -> Result<Vhost, BrokerError> {
        let mut vhost = Vhost::new(name, Arc::clone(&clock));
        std::fs::create_dir_all(storage.dir.join("queues"))
            .map_err(|e| internal(&storage.dir, "create vhost directory", e))?;
        let mut existed = true;
        let defs = match antre_store::definitions::read(&storage.dir.join(DEFINITIONS_FILE)) {
            Ok(Some(raw)) => serde_json::from_slice::<VhostDefinitions>(&raw).map_err(|e| {
                BrokerError::Internal(format!("unreadable definitions of vhost '{name}': {e}"))
            })?,
            Ok(None) => {
                existed = false;
                VhostDefinitions::default()
            }
            Err(e) => {
                return Err(BrokerError::Internal(format!(
                    "reading definitions of vhost '{name}': {e}"
                )))
            }
        };
        {
            let topo = vhost.topology.get_mut();
            let mut kept_exchanges = HashSet::new();
            for x in defs.exchanges {
                kept_exchanges.insert(dir_name(&x.name));
                let ex = build_exchange(
                    name,
                    Some(&storage),
                    ExchangeDeclaration {
                        name: x.name,
                        kind: x.kind,
                        durable: true,
                        auto_delete: x.auto_delete,
                        internal: x.internal,
                        arguments: json_to_table(&x.arguments),
                    },
                    false,
                )?;
                topo.exchanges.insert(ex.name.clone(), ex);
            }
            remove_orphan_queue_dirs(&storage.dir.join("exchanges"), &kept_exchanges);
            let mut kept = HashSet::new();
            for q in defs.queues {
                let dir_name = dir_name(&q.name);
                let options = QueueOptions {
                    durable: true,
                    exclusive_owner: None,
                    auto_delete: q.auto_delete,
                    arguments: json_to_table(&q.arguments),
                };
                let queue = Queue::open_durable(
                    name,
                    &q.name,
                    options,
                    Arc::clone(&clock),
                    &storage.dir.join("queues").join(&dir_name),
                    storage.store_options.clone(),
                    storage.memory_limit,
                )?;
                storage
                    .syncer
                    .register(Arc::clone(&queue) as Arc<dyn Durable>);
                kept.insert(dir_name);
                topo.queues.insert(q.name, queue);
            }
            for b in defs.bindings {
                let destination = match b.destination_type.as_str() {
                    "exchange" => Destination::Exchange(b.destination),
                    _ => Destination::Queue(b.destination),
                };
                if let Some(ex) = topo.exchanges.get_mut(&b.source) {
                    ex.bindings.push(Binding {
                        destination,
                        routing_key: b.routing_key,
                        arguments: json_to_table(&b.arguments),
                    });
                }
            }
            remove_orphan_queue_dirs(&storage.dir.join("queues"), &kept);
            if existed {
                topo.saved = Some(durable_definitions(name, topo));
            }
        }
        vhost.storage = Some(storage);
        // A new vhost is written at once, so that it exists after a restart.
        let mut topo = vhost.topology.write();
        vhost.save(&mut topo)?;
        drop(topo);
        Ok(vhost)
    }

    /// Rewrites the definitions file after a change to durable topology.
    fn save(&self, topo: &mut Topology) -> Result<(), BrokerError> {
        let Some(storage) = &self.storage else {
            return Ok(());
        };
        let defs = durable_definitions(&self.name, topo);
        if topo.saved.as_ref() == Some(&defs) {
            return Ok(());
        }
        let json = serde_json::to_vec_pretty(&defs)
            .map_err(|e| BrokerError::Internal(format!("encoding definitions: {e}")))?;
        let path = storage.dir.join(DEFINITIONS_FILE);
        antre_store::definitions::write_atomic(&path, &json).map_err(|e| {
            BrokerError::Internal(format!("saving definitions of vhost '{}': {e}", self.name))
        })?;
        topo.saved = Some(defs);
        Ok(())
    }

    /// The vhost's durable definitions, as they are saved.
    pub fn definitions(&self) -> VhostDefinitions {
        durable_definitions(&self.name, &self.topology.read())
    }

    /// Flushes and closes every queue store (clean shutdown).
    pub fn close(&self) {
        let topo = self.topology.read();
        for q in topo.queues.values() {
            q.close_store();
        }
        for ex in topo.exchanges.values() {
            if let Some(d) = &ex.dedup {
                d.close_store();
            }
            if let Some(d) = &ex.delayed {
                d.close_store();
            }
        }
    }

    /// The deduplication cache and delay schedule of an exchange, which a
    /// publish consults before routing.
    pub fn exchange_hooks(
        &self,
        name: &str,
    ) -> (Option<Arc<DedupCache>>, Option<Arc<DelayedMessages>>) {
        match self.topology.read().exchanges.get(name) {
            Some(ex) => (ex.dedup.clone(), ex.delayed.clone()),
            None => (None, None),
        }
    }

    fn no_exchange(&self, name: &str) -> BrokerError {
        BrokerError::NotFound(format!("no {}", exchange_ref(&self.name, name)))
    }

    fn no_queue(&self, name: &str) -> BrokerError {
        BrokerError::NotFound(format!("no {}", queue_ref(&self.name, name)))
    }

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
            return match self.topology.read().exchanges.contains_key(&d.name) {
                true => Ok(()),
                false => Err(self.no_exchange(&d.name)),
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
        topo.exchanges.insert(ex.name.clone(), ex);
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
        if let Some(ex) = topo.exchanges.remove(name) {
            ex.discard_stores();
        }
        Self::remove_bindings_to(&mut topo, &Destination::Exchange(name.to_owned()));
        self.save(&mut topo)
    }

    /// queue.declare. Returns the queue (whose name the server picked if the
    /// client sent none) and its counts.
    pub fn declare_queue(
        &self,
        d: QueueDeclaration,
        passive: bool,
        conn: ConnectionId,
    ) -> Result<(Arc<Queue>, QueueCounts), BrokerError> {
        if passive {
            // A passive declare only looks: unlike a redeclare it does not
            // renew the queue's x-expires lease (as in RabbitMQ).
            let q = self.queue(&d.name, conn)?;
            let counts = q.counts();
            return Ok((q, counts));
        }
        let name = if d.name.is_empty() {
            generated_name("amq.gen-")
        } else if reserved(&d.name) {
            return Err(BrokerError::AccessRefused(format!(
                "queue name '{}' contains reserved prefix 'amq.*'",
                d.name
            )));
        } else {
            d.name.clone()
        };
        let mut topo = self.topology.write();
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
            drop(topo);
            q.touch();
            let counts = q.counts();
            return Ok((q, counts));
        }
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
                let dir = storage.dir.join("queues").join(dir_name(&name));
                // A directory left by a queue of the same name whose deletion
                // a crash interrupted must not resurrect its messages.
                if dir.exists() {
                    std::fs::remove_dir_all(&dir)
                        .map_err(|e| internal(&dir, "remove stale queue directory", e))?;
                }
                let q = Queue::open_durable(
                    &self.name,
                    &name,
                    options,
                    Arc::clone(&self.clock),
                    &dir,
                    storage.store_options.clone(),
                    storage.memory_limit,
                )?;
                storage.syncer.register(Arc::clone(&q) as Arc<dyn Durable>);
                q
            }
            _ => Queue::new(&self.name, &name, options, Arc::clone(&self.clock))?,
        };
        topo.queues.insert(name, Arc::clone(&q));
        self.save(&mut topo)?;
        Ok((q, QueueCounts::default()))
    }

    /// A fresh reply queue for direct reply-to: named
    /// `amq.rabbitmq.reply-to.<random>`, transient, exclusive to `conn` and
    /// deleted with its consumer, so replies published to its name through
    /// the default exchange reach exactly one channel, and a reply that
    /// arrives after the requester left is unroutable.
    pub fn declare_reply_queue(&self, conn: ConnectionId) -> Result<Arc<Queue>, BrokerError> {
        let name = generated_name(&format!("{REPLY_TO}."));
        let options = QueueOptions {
            durable: false,
            exclusive_owner: Some(conn),
            auto_delete: true,
            arguments: FieldTable::default(),
        };
        let q = Queue::new(&self.name, &name, options, Arc::clone(&self.clock))?;
        // Transient and exclusive: nothing to save in the definitions.
        self.topology.write().queues.insert(name, Arc::clone(&q));
        Ok(q)
    }

    /// Looks up a queue the connection may use.
    pub fn queue(&self, name: &str, conn: ConnectionId) -> Result<Arc<Queue>, BrokerError> {
        let topo = self.topology.read();
        let q = topo.queues.get(name).ok_or_else(|| self.no_queue(name))?;
        check_exclusive(q, conn)?;
        Ok(Arc::clone(q))
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
        let Some(q) = topo.queues.get(name) else {
            // RabbitMQ answers delete-ok for a queue that is already gone.
            return Ok(0);
        };
        check_exclusive(q, conn)?;
        let counts = q.counts();
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
        let n = Self::remove_queue(&mut topo, name);
        self.save(&mut topo)?;
        Ok(n)
    }

    /// Removes a queue whose last consumer left, if it is still auto-delete
    /// and consumer-less (a new consumer may have raced in).
    pub fn auto_delete_queue(&self, queue: &Arc<Queue>) {
        let mut topo = self.topology.write();
        let same = topo
            .queues
            .get(&queue.name)
            .is_some_and(|q| Arc::ptr_eq(q, queue));
        if same && queue.counts().consumers == 0 {
            Self::remove_queue(&mut topo, &queue.name);
            if let Err(e) = self.save(&mut topo) {
                tracing::error!("{e}");
            }
        }
    }

    /// Deletes the exclusive queues of a closed connection.
    pub fn connection_closed(&self, conn: ConnectionId) {
        let mut topo = self.topology.write();
        let owned: Vec<String> = topo
            .queues
            .values()
            .filter(|q| q.options.exclusive_owner == Some(conn))
            .map(|q| q.name.clone())
            .collect();
        for name in owned {
            Self::remove_queue(&mut topo, &name);
        }
    }

    fn remove_queue(topo: &mut Topology, name: &str) -> u32 {
        let Some(q) = topo.queues.remove(name) else {
            return 0;
        };
        Self::remove_bindings_to(topo, &Destination::Queue(name.to_owned()));
        q.delete()
    }

    /// Drops every binding to `dest`, then auto-deletes exchanges left with
    /// no bindings.
    fn remove_bindings_to(topo: &mut Topology, dest: &Destination) {
        let mut emptied = Vec::new();
        for ex in topo.exchanges.values_mut() {
            let before = ex.bindings.len();
            ex.bindings.retain(|b| b.destination != *dest);
            if ex.auto_delete && before > 0 && ex.bindings.is_empty() {
                emptied.push(ex.name.clone());
            }
        }
        for name in emptied {
            if let Some(ex) = topo.exchanges.remove(&name) {
                ex.discard_stores();
            }
            Self::remove_bindings_to(topo, &Destination::Exchange(name));
        }
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
        let mut topo = self.topology.write();
        self.check_binding_ends(&topo, source, &destination, conn)?;
        let binding = Binding {
            destination,
            routing_key: routing_key.to_owned(),
            arguments,
        };
        let Some(ex) = topo.exchanges.get_mut(source) else {
            return Err(self.no_exchange(source));
        };
        if !ex.bindings.iter().any(|b| same_binding(b, &binding)) {
            ex.bindings.push(binding);
        }
        self.save(&mut topo)
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
        let mut topo = self.topology.write();
        match self.check_binding_ends(&topo, source, &destination, conn) {
            Err(BrokerError::NotFound(_)) => return Ok(()),
            other => other?,
        }
        let Some(ex) = topo.exchanges.get_mut(source) else {
            return Ok(());
        };
        let before = ex.bindings.len();
        ex.bindings.retain(|b| {
            !(b.destination == destination
                && b.routing_key == routing_key
                && b.arguments == *arguments)
        });
        if ex.auto_delete && before > 0 && ex.bindings.is_empty() {
            let name = ex.name.clone();
            if let Some(ex) = topo.exchanges.remove(&name) {
                ex.discard_stores();
            }
            Self::remove_bindings_to(&mut topo, &Destination::Exchange(name));
        }
        self.save(&mut topo)
    }

    fn check_binding_ends(
        &self,
        topo: &Topology,
        source: &str,
        destination: &Destination,
        conn: ConnectionId,
    ) -> Result<(), BrokerError> {
        let default = "operation not permitted on the default exchange";
        if source.is_empty() {
            return Err(BrokerError::AccessRefused(default.into()));
        }
        match destination {
            Destination::Queue(q) => {
                let queue = topo.queues.get(q).ok_or_else(|| self.no_queue(q))?;
                check_exclusive(queue, conn)?;
            }
            Destination::Exchange(e) => {
                if e.is_empty() {
                    return Err(BrokerError::AccessRefused(default.into()));
                }
                if !topo.exchanges.contains_key(e) {
                    return Err(self.no_exchange(e));
                }
            }
        }
        if !topo.exchanges.contains_key(source) {
            return Err(self.no_exchange(source));
        }
        Ok(())
    }

    /// The queues a message published to `exchange` reaches, each once,
    /// following exchange-to-exchange bindings (cycles are cut).
    pub fn route(
        &self,
        exchange: &str,
        routing_key: &str,
        headers: Option<&FieldTable>,
    ) -> Result<Vec<Arc<Queue>>, BrokerError> {
        let topo = self.topology.read();
        if exchange.is_empty() {
            return Ok(topo.queues.get(routing_key).cloned().into_iter().collect());
        }
        let ex = topo
            .exchanges
            .get(exchange)
            .ok_or_else(|| self.no_exchange(exchange))?;
        if ex.internal {
            return Err(BrokerError::AccessRefused(format!(
                "cannot publish to internal {}",
                exchange_ref(&self.name, exchange)
            )));
        }
        let mut out: Vec<Arc<Queue>> = Vec::new();
        let mut seen_queues: HashSet<&str> = HashSet::new();
        let mut seen_exchanges: HashSet<&str> = HashSet::from([exchange]);
        let mut pending = vec![ex];
        while let Some(ex) = pending.pop() {
            let mut matched = false;
            for b in &ex.bindings {
                if !ex.matches(b, routing_key, headers) {
                    continue;
                }
                matched = true;
                match &b.destination {
                    Destination::Queue(q) => {
                        if seen_queues.insert(q.as_str()) {
                            if let Some(queue) = topo.queues.get(q) {
                                out.push(Arc::clone(queue));
                            }
                        }
                    }
                    Destination::Exchange(e) => {
                        if seen_exchanges.insert(e.as_str()) {
                            if let Some(next) = topo.exchanges.get(e) {
                                pending.push(next);
                            }
                        }
                    }
                }
            }
            // What an exchange cannot route goes to its alternate exchange
            // (RabbitMQ's `alternate-exchange` argument), with the same key.
            let alternate = ex
                .arguments
                .get("alternate-exchange")
                .and_then(FieldValue::as_str);
            if let (false, Some(ae)) = (matched, alternate) {
                if seen_exchanges.insert(ae) {
                    if let Some(next) = topo.exchanges.get(ae) {
                        pending.push(next);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Purges a queue; returns how many messages were dropped.
    pub fn purge_queue(&self, name: &str, conn: ConnectionId) -> Result<u32, BrokerError> {
        Ok(self.queue(name, conn)?.purge())
    }

    /// A snapshot of every exchange, for listing.
    pub fn exchanges(&self) -> Vec<Exchange> {
        self.topology.read().exchanges.values().cloned().collect()
    }

    /// Every queue, for listing.
    pub fn queues(&self) -> Vec<Arc<Queue>> {
        self.topology.read().queues.values().cloned().collect()
    }

    /// Routes the dead letters `queue` collected to its dead-letter
    /// exchange. Dead letters that land in queues which overflow or reject
    /// in turn are followed too. A message dead-lettered automatically
    /// (expiry, length, delivery limit) back into a queue it already died in
    /// is dropped, unless a rejection is part of its history: RabbitMQ's rule
    /// against dead-letter cycles that would loop forever.
    pub fn route_dead_letters(&self, queue: &Arc<Queue>) {
        let mut pending: Vec<(Arc<Queue>, Vec<DeadLetter>)> =
            vec![(Arc::clone(queue), queue.take_dead_letters())];
        // Each round moves messages one hop; cycles are cut above, and this
        // bound keeps a pathological topology from spinning.
        for _ in 0..16 {
            let mut next = Vec::new();
            for (from, letters) in pending {
                if letters.is_empty() {
                    continue;
                }
                let Some(dlx) = from.args.dead_letter_exchange.clone() else {
                    continue;
                };
                for letter in letters {
                    let now = self.clock.now_ms();
                    let message = Arc::new(dead_lettered(&letter, &from, &dlx, now));
                    let headers = message.properties.headers.as_ref();
                    let targets = match self.route(&dlx, &message.routing_key, headers) {
                        Ok(t) => t,
                        Err(e) => {
                            // RabbitMQ drops dead letters whose exchange is gone.
                            tracing::debug!(queue = from.name, "dropping dead letter: {e}");
                            continue;
                        }
                    };
                    for target in targets {
                        if letter.reason != DeathReason::Rejected
                            && is_cycle(&message, &target.name)
                        {
                            tracing::debug!(
                                queue = target.name,
                                "dropping dead letter caught in a cycle"
                            );
                            continue;
                        }
                        // A full or deduplicating target may refuse it, as it
                        // would a publish; only a store failure is an error.
                        if let Err(e) = target.publish(Arc::clone(&message)) {
                            tracing::error!(queue = target.name, "dead letter lost: {e}");
                        }
                        let more = target.take_dead_letters();
                        if !more.is_empty() {
                            next.push((target, more));
                        }
                    }
                }
            }
            if next.is_empty() {
                return;
            }
            pending = next;
        }
    }

    /// Routes the delayed messages that are due, as if published now. They
    /// leave the exchange's store only once the queues that took them have
    /// synced them, so a crash in between delivers twice rather than never.
    fn release_due(&self, exchange: &str, schedule: &DelayedMessages, now: u64) {
        let due = schedule.take_due(now);
        if due.is_empty() {
            return;
        }
        let mut stored: Vec<Arc<dyn Durable>> = Vec::new();
        for item in &due {
            let message = Arc::new((*item.message).clone().published_at(now));
            let headers = message.properties.headers.as_ref();
            let targets = match self.route(exchange, &message.routing_key, headers) {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(exchange, "dropping delayed message: {e}");
                    continue;
                }
            };
            for q in targets {
                match q.publish(Arc::clone(&message)) {
                    Ok(Enqueued::Accepted { stored: true }) => {
                        crate::durable::add_once(&mut stored, Arc::clone(&q) as Arc<dyn Durable>);
                    }
                    Ok(_) => {}
                    Err(e) => tracing::error!(queue = q.name, "delayed message not enqueued: {e}"),
                }
                if q.args.dead_letter_exchange.is_some() {
                    self.route_dead_letters(&q);
                }
            }
        }
        if !crate::syncer::sync_round(&stored).is_empty() {
            // Keep them in the schedule's store: they come back after a
            // restart rather than being lost.
            return;
        }
        schedule.release(&due);
    }

    /// Time passes: expires messages and idle queues, and routes the dead
    /// letters that produced. Called by the broker's timer.
    pub fn tick(&self, now: u64) {
        let schedules: Vec<(String, Arc<DelayedMessages>)> = self
            .topology
            .read()
            .exchanges
            .values()
            .filter_map(|e| e.delayed.clone().map(|d| (e.name.clone(), d)))
            .collect();
        for (exchange, schedule) in schedules {
            self.release_due(&exchange, &schedule, now);
        }
        let queues = self.queues();
        for q in &queues {
            if q.tick(now) {
                tracing::info!(
                    queue = q.name,
                    vhost = self.name,
                    "deleting queue unused for its x-expires time"
                );
                let mut topo = self.topology.write();
                if topo
                    .queues
                    .get(&q.name)
                    .is_some_and(|have| Arc::ptr_eq(have, q))
                {
                    Self::remove_queue(&mut topo, &q.name);
                    if let Err(e) = self.save(&mut topo) {
                        tracing::error!("{e}");
                    }
                }
            }
            self.route_dead_letters(q);
        }
    }
}

/// The message as it goes to the dead-letter exchange: with an `x-death`
/// entry for this death (newest first; a repeat death in the same queue for
/// the same reason bumps that entry's count), the `x-first-death-*` headers
/// on its first death, its `expiration` moved to the entry's
/// `original-expiration` so it does not expire again, and the dead-letter
/// routing key if the queue sets one.
fn dead_lettered(
    letter: &DeadLetter,
    queue: &Queue,
    dlx: &str,
    now_ms: u64,
) -> crate::message::Message {
    use antre_amqp::FieldValue;
    let original = &letter.message;
    let mut properties = original.properties.clone();
    let mut headers = properties.headers.take().unwrap_or_default();
    let mut deaths = match headers.remove("x-death") {
        Some(FieldValue::Array(items)) => items,
        _ => Vec::new(),
    };
    let reason = letter.reason.as_str();
    let same = |t: &FieldTable| {
        t.get("queue").and_then(FieldValue::as_str) == Some(queue.name.as_str())
            && t.get("reason").and_then(FieldValue::as_str) == Some(reason)
    };
    let previous = deaths
        .iter()
        .position(|d| matches!(d, FieldValue::Table(t) if same(t)))
        .map(|i| deaths.remove(i));
    let mut entry = match previous {
        Some(FieldValue::Table(t)) => t,
        _ => FieldTable::new(),
    };
    let count = entry.get("count").and_then(FieldValue::as_i64).unwrap_or(0) + 1;
    entry.insert("count", FieldValue::I64(count));
    entry.insert("reason", FieldValue::string(reason));
    entry.insert("queue", FieldValue::string(queue.name.clone()));
    entry.insert("time", FieldValue::Timestamp(now_ms / 1000));
    entry.insert("exchange", FieldValue::string(original.exchange.clone()));
    entry.insert(
        "routing-keys",
        FieldValue::Array(vec![FieldValue::string(original.routing_key.clone())]),
    );
    if let Some(expiration) = properties.expiration.take() {
        entry.insert("original-expiration", FieldValue::string(expiration));
    }
    deaths.insert(0, FieldValue::Table(entry));
    headers.insert("x-death", FieldValue::Array(deaths));
    if headers.get("x-first-death-reason").is_none() {
        headers.insert("x-first-death-reason", FieldValue::string(reason));
        headers.insert(
            "x-first-death-queue",
            FieldValue::string(queue.name.clone()),
        );
        headers.insert(
            "x-first-death-exchange",
            FieldValue::string(original.exchange.clone()),
        );
    }
    properties.headers = Some(headers);
    let routing_key = queue
        .args
        .dead_letter_routing_key
        .clone()
        .unwrap_or_else(|| original.routing_key.clone());
    crate::message::Message::new(
        dlx.to_owned(),
        routing_key,
        properties,
        original.body.clone(),
    )
    .published_at(now_ms)
}

/// Whether a dead letter would go back to a queue it already died in with
/// no rejection anywhere in its history.
fn is_cycle(message: &crate::message::Message, target: &str) -> bool {
    use antre_amqp::FieldValue;
    let Some(FieldValue::Array(deaths)) = message
        .properties
        .headers
        .as_ref()
        .and_then(|h| h.get("x-death"))
    else {
        return false;
    };
    let tables = deaths.iter().filter_map(|d| match d {
        FieldValue::Table(t) => Some(t),
        _ => None,
    });
    let mut seen_target = false;
    for t in tables {
        if t.get("reason").and_then(FieldValue::as_str) == Some("rejected") {
            return false;
        }
        if t.get("queue").and_then(FieldValue::as_str) == Some(target) {
            seen_target = true;
        }
    }
    seen_target
}

/// Builds an exchange from its declaration, with the stores its type needs:
/// on disk under the vhost's `exchanges/` for a durable exchange of a
/// persistent vhost (`fresh` clears what a deleted namesake left there).
fn build_exchange(
    vhost: &str,
    storage: Option<&VhostStorage>,
    d: ExchangeDeclaration,
    fresh: bool,
) -> Result<Exchange, BrokerError> {
    let t = ExchangeType::parse(&d.kind, &d.arguments)?;
    let dir = storage
        .filter(|_| d.durable)
        .map(|s| (s, s.dir.join("exchanges").join(dir_name(&d.name))));
    if let Some((_, dir)) = &dir {
        if fresh && dir.exists() {
            std::fs::remove_dir_all(dir)
                .map_err(|e| internal(dir, "remove stale exchange directory", e))?;
        }
    }
    let label = exchange_ref(vhost, &d.name);
    let dedup = match (t.dedup, &dir) {
        (false, _) => None,
        (true, None) => Some(Arc::new(DedupCache::new(vhost, &d.name, &d.arguments)?)),
        (true, Some((s, dir))) => {
            let cache = Arc::new(DedupCache::open_durable(
                vhost,
                &d.name,
                &d.arguments,
                &dir.join("dedup"),
                s.store_options.clone(),
            )?);
            s.syncer.register(Arc::clone(&cache) as Arc<dyn Durable>);
            Some(cache)
        }
    };
    let delayed = match (t.delayed, &dir) {
        (false, _) => None,
        (true, None) => Some(Arc::new(DelayedMessages::new(format!(
            "schedule of {label}"
        )))),
        (true, Some((s, dir))) => {
            let schedule = Arc::new(DelayedMessages::open_durable(
                format!("schedule of {label}"),
                &dir.join("delayed"),
                s.store_options.clone(),
                s.memory_limit,
            )?);
            s.syncer.register(Arc::clone(&schedule) as Arc<dyn Durable>);
            Some(schedule)
        }
    };
    Ok(Exchange {
        name: d.name,
        type_name: d.kind,
        kind: t.routing,
        durable: d.durable,
        auto_delete: d.auto_delete,
        internal: d.internal,
        arguments: d.arguments,
        bindings: Vec::new(),
        dedup,
        delayed,
    })
}

fn same_binding(a: &Binding, b: &Binding) -> bool {
    a.destination == b.destination
        && a.routing_key == b.routing_key
        && tables_equal(&a.arguments, &b.arguments)
}

fn internal(path: &Path, what: &str, e: std::io::Error) -> BrokerError {
    BrokerError::Internal(format!("{what} {}: {e}", path.display()))
}

/// The durable part of a topology: durable exchanges (not the predeclared
/// ones), durable non-exclusive queues, and bindings whose ends are both
/// durable, as RabbitMQ persists them.
fn durable_definitions(vhost: &str, topo: &Topology) -> VhostDefinitions {
    let mut defs = VhostDefinitions {
        name: vhost.to_owned(),
        ..Default::default()
    };
    let durable_queue = |name: &str| {
        topo.queues
            .get(name)
            .is_some_and(|q| q.options.durable && q.options.exclusive_owner.is_none())
    };
    let durable_exchange = |name: &str| topo.exchanges.get(name).is_some_and(|e| e.durable);
    for ex in topo.exchanges.values() {
        if ex.durable && !ex.name.is_empty() && !PREDECLARED.iter().any(|(n, _)| *n == ex.name) {
            defs.exchanges.push(ExchangeDef {
                name: ex.name.clone(),
                vhost: vhost.to_owned(),
                kind: ex.type_name.clone(),
                durable: true,
                auto_delete: ex.auto_delete,
                internal: ex.internal,
                arguments: table_to_json(&ex.arguments),
            });
        }
        if !ex.durable {
            continue;
        }
        for b in &ex.bindings {
            let (destination, kind, durable) = match &b.destination {
                Destination::Queue(q) => (q, "queue", durable_queue(q)),
                Destination::Exchange(e) => (e, "exchange", durable_exchange(e)),
            };
            if durable {
                defs.bindings.push(BindingDef {
                    source: ex.name.clone(),
                    vhost: vhost.to_owned(),
                    destination: destination.clone(),
                    destination_type: kind.to_owned(),
                    routing_key: b.routing_key.clone(),
                    arguments: table_to_json(&b.arguments),
                });
            }
        }
    }
    for q in topo.queues.values() {
        if durable_queue(&q.name) {
            defs.queues.push(QueueDef {
                name: q.name.clone(),
                vhost: vhost.to_owned(),
                durable: true,
                auto_delete: q.options.auto_delete,
                arguments: table_to_json(&q.options.arguments),
            });
        }
    }
    // A stable order, so unchanged topology compares equal and files diff well.
    defs.exchanges.sort_by(|a, b| a.name.cmp(&b.name));
    defs.queues.sort_by(|a, b| a.name.cmp(&b.name));
    defs.bindings.sort_by(|a, b| {
        (&a.source, &a.destination, &a.routing_key).cmp(&(
            &b.source,
            &b.destination,
            &b.routing_key,
        ))
    });
    defs
}

/// Deletes queue directories the definitions do not mention: left by a
/// crash between creating a queue's store and saving its definition.
fn remove_orphan_queue_dirs(queues_dir: &Path, kept: &HashSet<String>) {
    let Ok(entries) = std::fs::read_dir(queues_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !kept.contains(&name) {
            tracing::warn!(dir = %entry.path().display(), "removing store of a queue with no definition");
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn check_exclusive(q: &Queue, conn: ConnectionId) -> Result<(), BrokerError> {
    match q.options.exclusive_owner {
        Some(owner) if owner != conn => Err(locked(q)),
        _ => Ok(()),
    }
}

/// RabbitMQ's 405 for another connection's exclusive queue, and for a
/// redeclare whose exclusive flag differs from the queue's.
fn locked(q: &Queue) -> BrokerError {
    BrokerError::ResourceLocked(format!(
        "cannot obtain exclusive access to locked {}. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration.",
        queue_ref(&q.vhost, &q.name)
    ))
}

/// A server-generated name: `prefix` then 22 URL-safe base64 characters, the
/// shape RabbitMQ uses for `amq.gen-` queues and `amq.ctag-` consumer tags.
pub fn generated_name(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut rng = rand::thread_rng();
    let mut name = String::with_capacity(prefix.len() + 22);
    name.push_str(prefix);
    for _ in 0..22 {
        name.push(ALPHABET[rng.gen_range(0..ALPHABET.len())] as char);
    }
    name
}
