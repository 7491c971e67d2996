//! A vhost's durable definitions on disk: what survives a restart (durable
//! exchanges, durable non-exclusive queues, bindings between durable ends,
//! as RabbitMQ persists them).
//!
//! They are kept as a snapshot plus a log of changes since it:
//! - `definitions.json`: the snapshot, in the shape of RabbitMQ's
//!   definitions export, written atomically (temp file, fsync, rename);
//! - `definitions-log/`: a store of change records (put or delete one
//!   exchange, queue or binding), appended as topology changes and made
//!   durable by group commit with everything else.
//!
//! A change costs one small append, whatever the number of definitions;
//! rewriting the whole file per change made declaring n durable queues cost
//! O(n²) (9,000 queues took 102 s). Once the log outgrows the snapshot, a
//! new snapshot is written and the log emptied, so start-up reads at most
//! about twice the definitions. Replaying a log on a newer snapshot (a crash
//! between writing the snapshot and emptying the log) is harmless: every
//! change sets or deletes one key, so the replay ends in the snapshot's
//! state.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use antre_store::QueueStore;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::clock::Clock;
use crate::definitions::{
    json_to_table, table_to_json, BindingDef, ExchangeDef, QueueDef, VhostDefinitions,
};
use crate::durable::{Durable, OwnsStore};
use crate::error::BrokerError;
use crate::exchange::{Binding, Destination, Exchange};
use crate::queue::{Queue, QueueOptions};

use super::storage::{build_exchange, dir_name, remove_orphan_dirs, VhostStorage};
use super::topology::{is_predeclared, Topology};
use super::ExchangeDeclaration;

const SNAPSHOT_FILE: &str = "definitions.json";
const LOG_DIR: &str = "definitions-log";
/// The log is folded into a new snapshot once it is this much larger than
/// the snapshot (and at least [`MIN_COMPACTION_BYTES`]).
const COMPACTION_FACTOR: u64 = 2;
const MIN_COMPACTION_BYTES: u64 = 4 << 20;

/// One change to durable definitions, as the log records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Change {
    /// A durable exchange was declared.
    PutExchange(ExchangeDef),
    /// A durable exchange was deleted.
    DeleteExchange {
        /// Its name.
        name: String,
    },
    /// A durable queue was declared.
    PutQueue(QueueDef),
    /// A durable queue was deleted.
    DeleteQueue {
        /// Its name.
        name: String,
    },
    /// A binding between durable ends was added.
    PutBinding(BindingDef),
    /// A binding between durable ends was removed.
    DeleteBinding(BindingDef),
}

impl Change {
    pub(super) fn put_exchange(vhost: &str, ex: &Exchange) -> Change {
        Change::PutExchange(exchange_def(vhost, ex))
    }

    pub(super) fn put_queue(vhost: &str, q: &Queue) -> Change {
        Change::PutQueue(queue_def(vhost, q))
    }

    pub(super) fn put_binding(vhost: &str, source: &str, b: &Binding) -> Change {
        Change::PutBinding(binding_def(vhost, source, b))
    }

    pub(super) fn delete_binding(vhost: &str, source: &str, b: &Binding) -> Change {
        Change::DeleteBinding(binding_def(vhost, source, b))
    }
}

fn exchange_def(vhost: &str, ex: &Exchange) -> ExchangeDef {
    ExchangeDef {
        name: ex.name.clone(),
        vhost: vhost.to_owned(),
        kind: ex.type_name.clone(),
        durable: true,
        auto_delete: ex.auto_delete,
        internal: ex.internal,
        arguments: table_to_json(&ex.arguments),
    }
}

fn queue_def(vhost: &str, q: &Queue) -> QueueDef {
    QueueDef {
        name: q.name.clone(),
        vhost: vhost.to_owned(),
        durable: true,
        auto_delete: q.options.auto_delete,
        arguments: table_to_json(&q.options.arguments),
    }
}

fn binding_def(vhost: &str, source: &str, b: &Binding) -> BindingDef {
    let (destination, kind) = match &b.destination {
        Destination::Queue(q) => (q.clone(), "queue"),
        Destination::Exchange(e) => (e.clone(), "exchange"),
    };
    BindingDef {
        source: source.to_owned(),
        vhost: vhost.to_owned(),
        destination,
        destination_type: kind.to_owned(),
        routing_key: b.routing_key.clone(),
        arguments: table_to_json(&b.arguments),
    }
}

/// A binding's identity in the durable state: source, destination, key and
/// arguments (serde_json keeps object keys sorted, so equal arguments
/// give equal text).
fn binding_key(b: &BindingDef) -> String {
    serde_json::json!([
        b.source,
        b.destination_type,
        b.destination,
        b.routing_key,
        b.arguments
    ])
    .to_string()
}

/// Durable definitions by key, while recovering.
#[derive(Debug, Default)]
struct DurableState {
    exchanges: BTreeMap<String, ExchangeDef>,
    queues: BTreeMap<String, QueueDef>,
    bindings: BTreeMap<String, BindingDef>,
}

impl DurableState {
    fn from_snapshot(defs: VhostDefinitions) -> DurableState {
        let mut state = DurableState::default();
        for x in defs.exchanges {
            state.exchanges.insert(x.name.clone(), x);
        }
        for q in defs.queues {
            state.queues.insert(q.name.clone(), q);
        }
        for b in defs.bindings {
            state.bindings.insert(binding_key(&b), b);
        }
        state
    }

    fn apply(&mut self, change: Change) {
        match change {
            Change::PutExchange(x) => {
                self.exchanges.insert(x.name.clone(), x);
            }
            Change::DeleteExchange { name } => {
                self.exchanges.remove(&name);
            }
            Change::PutQueue(q) => {
                self.queues.insert(q.name.clone(), q);
            }
            Change::DeleteQueue { name } => {
                self.queues.remove(&name);
            }
            Change::PutBinding(b) => {
                self.bindings.insert(binding_key(&b), b);
            }
            Change::DeleteBinding(b) => {
                self.bindings.remove(&binding_key(&b));
            }
        }
    }
}

/// The definitions of a persistent vhost on disk: snapshot and change log.
#[derive(Debug)]
pub(super) struct DefinitionsLog {
    label: String,
    snapshot: PathBuf,
    log: Mutex<Option<QueueStore>>,
    /// Bytes of the last snapshot written.
    snapshot_bytes: AtomicU64,
    /// Changes appended so far (callers compare to learn whether an
    /// operation changed durable definitions and must wait for a sync).
    appended: AtomicU64,
}

impl OwnsStore for DefinitionsLog {
    fn store_label(&self) -> &str {
        &self.label
    }

    fn with_store<R>(&self, f: impl FnOnce(&mut Option<QueueStore>) -> R) -> R {
        f(&mut self.log.lock())
    }
}

impl DefinitionsLog {
    /// Reads the vhost's definitions (snapshot, then the changes logged
    /// since) and recovers its durable exchanges, queues (with their
    /// messages) and bindings into `topo`.
    pub fn recover(
        storage: &VhostStorage,
        topo: &mut Topology,
        clock: &Arc<dyn Clock>,
    ) -> Result<Arc<DefinitionsLog>, BrokerError> {
        let name = topo.vhost.clone();
        let snapshot = storage.dir.join(SNAPSHOT_FILE);
        let mut state = match antre_store::definitions::read(&snapshot) {
            Ok(Some(raw)) => serde_json::from_slice::<VhostDefinitions>(&raw)
                .map(DurableState::from_snapshot)
                .map_err(|e| {
                    BrokerError::Internal(format!("unreadable definitions of vhost '{name}': {e}"))
                })?,
            Ok(None) => DurableState::default(),
            Err(e) => {
                return Err(BrokerError::Internal(format!(
                    "reading definitions of vhost '{name}': {e}"
                )))
            }
        };
        let mut replayed = 0usize;
        let mut unreadable = None;
        let (log, _) = QueueStore::open(
            &storage.dir.join(LOG_DIR),
            storage.store_options.clone(),
            |_, payload| match serde_json::from_slice::<Change>(payload) {
                Ok(change) => {
                    state.apply(change);
                    replayed += 1;
                }
                Err(e) => {
                    unreadable.get_or_insert(e);
                }
            },
        )
        .map_err(|e| BrokerError::Internal(format!("definitions log of vhost '{name}': {e}")))?;
        if let Some(e) = unreadable {
            // A record with a valid checksum that this version cannot read
            // was written by a newer one: refuse rather than drop it.
            return Err(BrokerError::Internal(format!(
                "definitions log of vhost '{name}' holds a change this version cannot read: {e}"
            )));
        }
        rebuild(storage, topo, clock, state)?;
        topo.take_changes();
        let defs = DefinitionsLog {
            label: format!("definitions of vhost '{name}'"),
            snapshot,
            log: Mutex::new(Some(log)),
            snapshot_bytes: AtomicU64::new(0),
            appended: AtomicU64::new(0),
        };
        // Start with a snapshot of everything and an empty log: start-up
        // reads no more than it must next time, and a new vhost exists on
        // disk at once.
        if replayed > 0 || !defs.snapshot.exists() {
            defs.compact(topo)?;
        }
        let defs = Arc::new(defs);
        storage
            .syncer
            .register(Arc::clone(&defs) as Arc<dyn Durable>);
        Ok(defs)
    }

    /// How many changes were appended so far.
    pub fn appended(&self) -> u64 {
        self.appended.load(Ordering::Relaxed)
    }

    /// Appends the changes `topo` recorded (called with the topology still
    /// write-locked, so changes reach the log in the order they happened),
    /// and folds the log into a new snapshot once it has grown enough.
    pub fn record(&self, topo: &mut Topology) -> Result<(), BrokerError> {
        let changes = topo.take_changes();
        if changes.is_empty() {
            return Ok(());
        }
        let grown = {
            let mut log = self.log.lock();
            let Some(store) = log.as_mut() else {
                return Ok(());
            };
            for change in &changes {
                let record = serde_json::to_vec(change)
                    .map_err(|e| BrokerError::Internal(format!("encoding a definition: {e}")))?;
                store.append(&record).map_err(|e| {
                    BrokerError::Internal(format!("writing the {}: {e}", self.label))
                })?;
            }
            let limit = (COMPACTION_FACTOR * self.snapshot_bytes.load(Ordering::Relaxed))
                .max(MIN_COMPACTION_BYTES);
            store.disk_bytes() > limit
        };
        self.appended
            .fetch_add(changes.len() as u64, Ordering::Relaxed);
        if grown {
            self.compact(topo)?;
        }
        Ok(())
    }

    /// Writes a snapshot of `topo`'s durable definitions, then empties the
    /// log. The log's unsynced appends are durable with the snapshot.
    fn compact(&self, topo: &Topology) -> Result<(), BrokerError> {
        let defs = durable_definitions(topo);
        let json = serde_json::to_vec_pretty(&defs)
            .map_err(|e| BrokerError::Internal(format!("encoding definitions: {e}")))?;
        antre_store::definitions::write_atomic(&self.snapshot, &json)
            .map_err(|e| BrokerError::Internal(format!("saving the {}: {e}", self.label)))?;
        self.snapshot_bytes
            .store(json.len() as u64, Ordering::Relaxed);
        if let Some(store) = self.log.lock().as_mut() {
            store.purge().map_err(|e| {
                BrokerError::Internal(format!("emptying the {} log: {e}", self.label))
            })?;
        }
        Ok(())
    }
}

/// Builds the recovered durable exchanges, queues and bindings.
fn rebuild(
    storage: &VhostStorage,
    topo: &mut Topology,
    clock: &Arc<dyn Clock>,
    state: DurableState,
) -> Result<(), BrokerError> {
    let name = topo.vhost.clone();
    let mut kept_exchanges = HashSet::new();
    for x in state.exchanges.into_values() {
        kept_exchanges.insert(dir_name(&x.name));
        let declaration = ExchangeDeclaration {
            name: x.name,
            kind: x.kind,
            durable: true,
            auto_delete: x.auto_delete,
            internal: x.internal,
            arguments: json_to_table(&x.arguments),
        };
        topo.insert_exchange(build_exchange(&name, Some(storage), declaration, false)?);
    }
    remove_orphan_dirs(&storage.dir.join("exchanges"), &kept_exchanges);
    let mut kept_queues = HashSet::new();
    for q in state.queues.into_values() {
        let options = QueueOptions {
            durable: true,
            exclusive_owner: None,
            auto_delete: q.auto_delete,
            arguments: json_to_table(&q.arguments),
        };
        let queue = storage.open_queue(&name, &q.name, options, Arc::clone(clock), false)?;
        kept_queues.insert(dir_name(&q.name));
        topo.insert_queue(queue);
    }
    remove_orphan_dirs(&storage.dir.join("queues"), &kept_queues);
    for b in state.bindings.into_values() {
        let destination = match b.destination_type.as_str() {
            "exchange" => Destination::Exchange(b.destination),
            _ => Destination::Queue(b.destination),
        };
        let binding = Binding {
            destination,
            routing_key: b.routing_key,
            arguments: json_to_table(&b.arguments),
        };
        // A binding whose source is gone was saved by an older version
        // that did not clean up; it has nothing to route.
        let _ = topo.bind(&b.source, binding);
    }
    Ok(())
}

/// The durable part of a topology: durable exchanges (not the predeclared
/// ones), durable non-exclusive queues, and bindings whose ends are both
/// durable, as RabbitMQ persists them; sorted, so files diff well.
pub(super) fn durable_definitions(topo: &Topology) -> VhostDefinitions {
    let vhost = topo.vhost.as_str();
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
        if !ex.durable {
            continue;
        }
        if !is_predeclared(&ex.name) {
            defs.exchanges.push(exchange_def(vhost, ex));
        }
        for b in &ex.bindings {
            let durable = match &b.destination {
                Destination::Queue(q) => durable_queue(q),
                Destination::Exchange(e) => durable_exchange(e),
            };
            if durable {
                defs.bindings.push(binding_def(vhost, &ex.name, b));
            }
        }
    }
    for q in topo.queues.values() {
        if durable_queue(&q.name) {
            defs.queues.push(queue_def(vhost, q));
        }
    }
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
