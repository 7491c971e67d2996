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
//! O(n²) (9,000 queues took 102 s). Once the log outgrows the snapshot, the
//! broker's timer compacts it: it switches appends to a new log (generation
//! g+1, `definitions-log.<g+1>/`), writes a snapshot of the definitions as
//! of that switch naming g+1, then deletes the older logs. Only the switch
//! holds a lock (the topology's read lock, so declares wait briefly and
//! publishes not at all); serialising and fsyncing the snapshot does not.
//! Start-up replays, on the snapshot, every log of its generation or later:
//! after a crash between the switch and the snapshot that is two logs, the
//! older one a prefix of history the snapshot does not have yet. Replaying
//! changes on a snapshot that already holds them is harmless too: each sets
//! or deletes one key, so the replay ends in the latest state.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
/// The log of generation 0; generation g > 0 is `definitions-log.<g>`.
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

/// The snapshot file: the definitions, and the first log generation they
/// do not include (absent in files written before there were generations).
#[derive(Debug, Default, Serialize, Deserialize)]
struct Snapshot {
    #[serde(flatten)]
    definitions: VhostDefinitions,
    #[serde(default, skip_serializing_if = "is_zero")]
    log_generation: u64,
}

fn is_zero(g: &u64) -> bool {
    *g == 0
}

fn log_dir(vhost_dir: &Path, generation: u64) -> PathBuf {
    match generation {
        0 => vhost_dir.join(LOG_DIR),
        g => vhost_dir.join(format!("{LOG_DIR}.{g}")),
    }
}

/// The log generations present in a vhost directory, in order.
fn log_generations(vhost_dir: &Path) -> Vec<u64> {
    let mut found: Vec<u64> = std::fs::read_dir(vhost_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            match name.strip_prefix(LOG_DIR)? {
                "" => Some(0),
                rest => rest.strip_prefix('.')?.parse().ok(),
            }
        })
        .collect();
    found.sort_unstable();
    found
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
    /// The vhost's directory.
    dir: PathBuf,
    store_options: antre_store::StoreOptions,
    /// The current log, and its generation.
    log: Mutex<(Option<QueueStore>, u64)>,
    /// Bytes of the last snapshot written.
    snapshot_bytes: AtomicU64,
    /// Changes appended so far (callers compare to learn whether an
    /// operation changed durable definitions and must wait for a sync).
    appended: AtomicU64,
    /// The log has outgrown the snapshot: the timer should compact.
    compaction_due: AtomicBool,
}

impl OwnsStore for DefinitionsLog {
    fn store_label(&self) -> &str {
        &self.label
    }

    fn with_store<R>(&self, f: impl FnOnce(&mut Option<QueueStore>) -> R) -> R {
        f(&mut self.log.lock().0)
    }
}

impl DefinitionsLog {
    /// Reads the vhost's definitions (the snapshot, then the changes logged
    /// since) and recovers its durable exchanges, queues (with their
    /// messages) and bindings into `topo`.
    pub fn recover(
        storage: &VhostStorage,
        topo: &mut Topology,
        clock: &Arc<dyn Clock>,
    ) -> Result<Arc<DefinitionsLog>, BrokerError> {
        let name = topo.vhost.clone();
        let internal = |what: &str, e: &dyn std::fmt::Display| {
            BrokerError::Internal(format!("{what} of vhost '{name}': {e}"))
        };
        let snapshot = match antre_store::definitions::read(&storage.dir.join(SNAPSHOT_FILE)) {
            Ok(Some(raw)) => serde_json::from_slice::<Snapshot>(&raw)
                .map_err(|e| internal("unreadable definitions", &e))?,
            Ok(None) => Snapshot::default(),
            Err(e) => return Err(internal("reading definitions", &e)),
        };
        let first = snapshot.log_generation;
        let mut state = DurableState::from_snapshot(snapshot.definitions);
        let mut replayed = 0usize;
        let mut current = (None, first);
        for generation in log_generations(&storage.dir) {
            let dir = log_dir(&storage.dir, generation);
            if generation < first {
                // Folded into the snapshot already; its deletion was cut short.
                let _ = std::fs::remove_dir_all(&dir);
                continue;
            }
            let mut unreadable = None;
            let (log, _) = QueueStore::open(&dir, storage.store_options.clone(), |_, payload| {
                match serde_json::from_slice::<Change>(payload) {
                    Ok(change) => {
                        state.apply(change);
                        replayed += 1;
                    }
                    Err(e) => {
                        unreadable.get_or_insert(e);
                    }
                }
            })
            .map_err(|e| internal("definitions log", &e))?;
            if let Some(e) = unreadable {
                // A record with a valid checksum that this version cannot
                // read was written by a newer one: refuse rather than drop it.
                return Err(internal(
                    "definitions log (a change this version cannot read)",
                    &e,
                ));
            }
            current = (Some(log), generation);
        }
        if current.0.is_none() {
            let dir = log_dir(&storage.dir, first);
            let (log, _) = QueueStore::open(&dir, storage.store_options.clone(), |_, _| {})
                .map_err(|e| internal("definitions log", &e))?;
            current = (Some(log), first);
        }
        rebuild(storage, topo, clock, state)?;
        topo.take_changes();
        let defs = Arc::new(DefinitionsLog {
            label: format!("definitions of vhost '{name}'"),
            dir: storage.dir.clone(),
            store_options: storage.store_options.clone(),
            log: Mutex::new(current),
            snapshot_bytes: AtomicU64::new(0),
            appended: AtomicU64::new(0),
            compaction_due: AtomicBool::new(false),
        });
        // Start with a snapshot of everything and an empty log: start-up
        // reads no more than it must next time, and a new vhost exists on
        // disk at once.
        if replayed > 0 || !storage.dir.join(SNAPSHOT_FILE).exists() {
            defs.compact(topo)?;
        }
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
    /// write-locked, so changes reach the log in the order they happened);
    /// once the log outgrows the snapshot, asks the timer to compact.
    pub fn record(&self, topo: &mut Topology) -> Result<(), BrokerError> {
        let changes = topo.take_changes();
        if changes.is_empty() {
            return Ok(());
        }
        let mut log = self.log.lock();
        let Some(store) = log.0.as_mut() else {
            return Ok(());
        };
        for change in &changes {
            let record = serde_json::to_vec(change)
                .map_err(|e| BrokerError::Internal(format!("encoding a definition: {e}")))?;
            store
                .append(&record)
                .map_err(|e| BrokerError::Internal(format!("writing the {}: {e}", self.label)))?;
        }
        let limit = (COMPACTION_FACTOR * self.snapshot_bytes.load(Ordering::Relaxed))
            .max(MIN_COMPACTION_BYTES);
        if store.disk_bytes() > limit {
            self.compaction_due.store(true, Ordering::Relaxed);
        }
        drop(log);
        self.appended
            .fetch_add(changes.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Compacts if the log has outgrown the snapshot (see the module docs):
    /// called by the broker's timer, never on a client's path.
    pub fn compact_if_due(&self, topology: &parking_lot::RwLock<Topology>) {
        if !self.compaction_due.swap(false, Ordering::Relaxed) {
            return;
        }
        let switched = {
            let topo = topology.read();
            self.switch_log()
                .map(|generation| (generation, durable_definitions(&topo)))
        };
        let result = switched.and_then(|(generation, defs)| self.write_snapshot(defs, generation));
        if let Err(e) = result {
            tracing::error!("compacting the {}: {e}", self.label);
            self.compaction_due.store(true, Ordering::Relaxed);
        }
    }

    /// Compacts at once (start-up: nobody else uses the vhost yet).
    fn compact(&self, topo: &Topology) -> Result<(), BrokerError> {
        let generation = self.switch_log()?;
        self.write_snapshot(durable_definitions(topo), generation)
    }

    /// Makes the current log durable and closes it, and sends further
    /// changes to the next generation's log; returns that generation. The
    /// caller holds the topology (at least read-locked), so no change falls
    /// between the two logs and the snapshot it takes next.
    fn switch_log(&self) -> Result<u64, BrokerError> {
        let mut log = self.log.lock();
        let generation = log.1 + 1;
        let (mut next, _) = QueueStore::open(
            &log_dir(&self.dir, generation),
            self.store_options.clone(),
            |_, _| {},
        )
        .map_err(|e| BrokerError::Internal(format!("opening the {} log: {e}", self.label)))?;
        if let Some(old) = log.0.take() {
            if let Some(hook) = old.on_dirty() {
                next.set_on_dirty(hook);
            }
            // Synced before anyone can see the new log: a sync of the new
            // log must not answer for changes still in the old one.
            if let Err(e) = old.close() {
                return Err(BrokerError::Internal(format!(
                    "closing the {} log: {e}",
                    self.label
                )));
            }
        }
        *log = (Some(next), generation);
        Ok(generation)
    }

    /// Writes the snapshot of everything before log `generation`, then
    /// deletes the older logs.
    fn write_snapshot(
        &self,
        definitions: VhostDefinitions,
        generation: u64,
    ) -> Result<(), BrokerError> {
        let snapshot = Snapshot {
            definitions,
            log_generation: generation,
        };
        let json = serde_json::to_vec_pretty(&snapshot)
            .map_err(|e| BrokerError::Internal(format!("encoding definitions: {e}")))?;
        antre_store::definitions::write_atomic(&self.dir.join(SNAPSHOT_FILE), &json)
            .map_err(|e| BrokerError::Internal(format!("saving the {}: {e}", self.label)))?;
        self.snapshot_bytes
            .store(json.len() as u64, Ordering::Relaxed);
        for old in log_generations(&self.dir)
            .into_iter()
            .filter(|g| *g < generation)
        {
            let dir = log_dir(&self.dir, old);
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                tracing::warn!(dir = %dir.display(), "could not remove a compacted log: {e}");
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::metrics::BrokerMetrics;
    use crate::syncer::Syncer;
    use crate::vhost::{QueueDeclaration, Vhost};

    fn storage(dir: &Path) -> VhostStorage {
        let syncer =
            Syncer::start(std::time::Duration::from_millis(50), Arc::default()).expect("syncer");
        VhostStorage {
            dir: dir.to_path_buf(),
            store_options: antre_store::StoreOptions::default(),
            memory_limit: u64::MAX,
            syncer,
        }
    }

    fn open(dir: &Path) -> Vhost {
        let clock = Arc::new(ManualClock::at(1)) as Arc<dyn Clock>;
        Vhost::open("/", storage(dir), clock, Arc::<BrokerMetrics>::default()).expect("opens")
    }

    fn declare(v: &Vhost, name: &str) {
        let d = QueueDeclaration {
            name: name.into(),
            durable: true,
            exclusive: false,
            auto_delete: false,
            arguments: Default::default(),
        };
        v.declare_queue(d, false, 1).expect("declared");
    }

    fn names(v: &Vhost) -> Vec<String> {
        let mut names: Vec<String> = v.queues().iter().map(|q| q.name.clone()).collect();
        names.sort();
        names
    }

    /// A crash after appends moved to a new log but before the snapshot
    /// that would fold the old one: start-up replays both, in order.
    #[test]
    fn a_crash_between_switching_logs_and_the_snapshot_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        {
            let v = open(dir.path());
            declare(&v, "before-switch");
            let defs = v.definitions.as_ref().unwrap();
            let topo = v.topology.read();
            defs.switch_log().unwrap();
            drop(topo);
            declare(&v, "after-switch");
            v.close();
        }
        assert_eq!(log_generations(dir.path()), [1, 2]);
        let v = open(dir.path());
        assert_eq!(names(&v), ["after-switch", "before-switch"]);
        // Folded at start-up: the next log (3) appears with its first record.
        assert!(log_generations(dir.path()).is_empty());
        declare(&v, "after-restart");
        assert_eq!(log_generations(dir.path()), [3]);
    }

    /// The timer's compaction moves on to a new log while changes keep
    /// coming, and everything before and after it comes back.
    #[test]
    fn compaction_by_the_timer_keeps_every_change() {
        let dir = tempfile::tempdir().unwrap();
        {
            let v = open(dir.path());
            declare(&v, "a");
            let defs = v.definitions.as_ref().unwrap();
            defs.compaction_due.store(true, Ordering::Relaxed);
            v.tick(1);
            assert!(!defs.compaction_due.load(Ordering::Relaxed));
            assert!(
                log_generations(dir.path()).is_empty(),
                "the old log is gone"
            );
            declare(&v, "b");
            assert_eq!(log_generations(dir.path()), [2]);
            v.delete_queue("a", false, false, 1).unwrap();
            v.close();
        }
        let v = open(dir.path());
        assert_eq!(names(&v), ["b"]);
    }
}
