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
//! O(n²) (9,000 queues took 102 s). Once the log outgrows the snapshot, it
//! is compacted on a thread of its own, from the files alone: appends
//! switch to a new log (generation g+1, `definitions-log.<g+1>/`), then the
//! old snapshot and the old log, now closed, are read back, combined and
//! written as the snapshot of generation g+1, and the old logs deleted. No
//! lock of the vhost is held meanwhile (only the switch takes the log's own
//! lock), so neither publishers nor declares wait for a compaction.
//! Start-up replays, on the snapshot, every log of its generation or later:
//! after a crash between the switch and the snapshot that is two logs, the
//! older one a prefix of history the snapshot does not have yet. Replaying
//! changes on a snapshot that already holds them is harmless too: each sets
//! or deletes one key, so the replay ends in the latest state.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use antre_store::QueueStore;
use antre_store::{DirtyHook, PendingSync, StoreError};
use parking_lot::{Condvar, Mutex};

use crate::clock::Clock;
use crate::definitions::{json_to_table, VhostDefinitions};
use crate::durable::Durable;
use crate::error::BrokerError;
use crate::exchange::{Binding, Destination};
use crate::policy::{Policy, PolicyKind};
use crate::queue::QueueOptions;

mod change;

pub(super) use change::{durable_definitions, Change};
use change::{DurableState, Snapshot};

use super::storage::{build_exchange, dir_name, remove_orphan_dirs, VhostStorage};
use super::topology::Topology;
use super::ExchangeDeclaration;

const SNAPSHOT_FILE: &str = "definitions.json";
/// The log of generation 0; generation g > 0 is `definitions-log.<g>`.
const LOG_DIR: &str = "definitions-log";
/// The log is folded into a new snapshot once it is this much larger than
/// the snapshot (and at least [`MIN_COMPACTION_BYTES`]).
const COMPACTION_FACTOR: u64 = 2;
const MIN_COMPACTION_BYTES: u64 = 4 << 20;

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

/// What the files of a vhost's definitions say.
struct Recovered {
    state: DurableState,
    /// Changes replayed from logs.
    replayed: usize,
    /// The newest log read, still open, and its generation.
    last_log: Option<(QueueStore, u64)>,
    /// The snapshot's generation: the first log it does not include.
    first: u64,
}

/// Reads the snapshot and replays, in order, the logs of its generation or
/// later and before `before` (all of them when None). Logs older than the
/// snapshot are deleted: folded into it already, their deletion cut short.
fn read_definitions(
    dir: &Path,
    options: &antre_store::StoreOptions,
    before: Option<u64>,
) -> Result<Recovered, String> {
    let snapshot = match antre_store::definitions::read(&dir.join(SNAPSHOT_FILE)) {
        Ok(Some(raw)) => serde_json::from_slice::<Snapshot>(&raw)
            .map_err(|e| format!("unreadable definitions: {e}"))?,
        Ok(None) => Snapshot::default(),
        Err(e) => return Err(format!("reading definitions: {e}")),
    };
    let first = snapshot.log_generation;
    let mut read = Recovered {
        state: DurableState::from_snapshot(snapshot.definitions),
        replayed: 0,
        last_log: None,
        first,
    };
    for generation in log_generations(dir) {
        let log_dir = log_dir(dir, generation);
        if generation < first {
            let _ = std::fs::remove_dir_all(&log_dir);
            continue;
        }
        if before.is_some_and(|b| generation >= b) {
            break;
        }
        let mut unreadable = None;
        let (log, _) =
            QueueStore::open(
                &log_dir,
                options.clone(),
                |_, payload| match serde_json::from_slice::<Change>(payload) {
                    Ok(change) => {
                        read.state.apply(change);
                        read.replayed += 1;
                    }
                    Err(e) => {
                        unreadable.get_or_insert(e);
                    }
                },
            )
            .map_err(|e| format!("definitions log: {e}"))?;
        if let Some(e) = unreadable {
            // A record with a valid checksum that this version cannot read
            // was written by a newer one: refuse rather than drop it.
            return Err(format!(
                "definitions log holds a change this version cannot read: {e}"
            ));
        }
        read.last_log = Some((log, generation));
    }
    Ok(read)
}

/// The definitions of a persistent vhost on disk: snapshot and change log.
#[derive(Debug)]
pub(super) struct DefinitionsLog {
    label: String,
    vhost: String,
    /// The vhost's directory.
    dir: PathBuf,
    store_options: antre_store::StoreOptions,
    /// The current log, and its generation.
    log: Mutex<CurrentLog>,
    /// Signalled when a retired log has been made durable and closed.
    retired: Condvar,
    /// Bytes of the last snapshot written.
    snapshot_bytes: AtomicU64,
    /// The log has outgrown the snapshot: the timer should compact.
    compaction_due: AtomicBool,
    /// A compaction is running.
    compacting: AtomicBool,
}

thread_local! {
    /// Changes this thread appended to any vhost's definitions log.
    ///
    /// A channel's handler runs on one thread from start to end (it is
    /// not async), so this count moving across it means that handler
    /// changed durable definitions and its answer must wait for a sync. A
    /// count of the log's own also moved with changes other connections
    /// made at the same moment, or, on a cluster node, that the metadata
    /// group applied (on its own thread, after the majority committed
    /// them: durable already), and the handler's output then waited for a
    /// sync it did not need; on a cluster's proxy channel, which nothing
    /// syncs, for good.
    static APPENDED_HERE: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// How many definition changes this thread has appended so far (see
/// [`APPENDED_HERE`]).
pub fn appended_here() -> u64 {
    APPENDED_HERE.with(std::cell::Cell::get)
}

/// The log changes are appended to.
#[derive(Debug)]
struct CurrentLog {
    store: Option<QueueStore>,
    generation: u64,
    /// A compaction switched logs and is still making the old one
    /// durable: a sync must wait for it, since the changes it answers for
    /// may be in the old log.
    retiring: bool,
    /// Making a retired log durable failed: nothing can be promised about
    /// the changes it held, so every sync fails (the vhost must be reopened,
    /// as a store after a failed fsync).
    retire_failed: Option<String>,
}

/// Group commit for the definitions log. Written by hand, not through
/// [`crate::durable::OwnsStore`], for the one rule that trait cannot
/// express: a sync waits while a retired log is still being made durable.
/// The waiting is the syncer's, never a client's.
impl Durable for DefinitionsLog {
    fn label(&self) -> &str {
        &self.label
    }

    fn begin_sync(&self) -> Option<Result<PendingSync, StoreError>> {
        let mut log = self.log.lock();
        while log.retiring {
            self.retired.wait(&mut log);
        }
        if let Some(cause) = &log.retire_failed {
            return Some(Err(StoreError::Poisoned {
                dir: self.dir.clone(),
                cause: cause.clone(),
            }));
        }
        log.store.as_mut().map(QueueStore::begin_sync)
    }

    fn finish_sync(
        &self,
        pending: PendingSync,
        result: Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        match self.log.lock().store.as_mut() {
            Some(store) => store.finish_sync(pending, result),
            None => result,
        }
    }

    fn is_dirty(&self) -> bool {
        self.log
            .lock()
            .store
            .as_ref()
            .is_some_and(QueueStore::is_dirty)
    }

    fn watch(&self, hook: DirtyHook) {
        if let Some(store) = self.log.lock().store.as_mut() {
            store.set_on_dirty(hook);
        }
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
        let internal = |e: String| BrokerError::Internal(format!("{e} (vhost '{name}')"));
        let read =
            read_definitions(&storage.dir, &storage.store_options, None).map_err(internal)?;
        let current = match read.last_log {
            Some(last) => last,
            None => {
                let dir = log_dir(&storage.dir, read.first);
                let (log, _) = QueueStore::open(&dir, storage.store_options.clone(), |_, _| {})
                    .map_err(|e| internal(format!("definitions log: {e}")))?;
                (log, read.first)
            }
        };
        rebuild(storage, topo, clock, &read.state)?;
        topo.take_changes();
        let defs = Arc::new(DefinitionsLog {
            label: format!("definitions of vhost '{name}'"),
            vhost: name.clone(),
            dir: storage.dir.clone(),
            store_options: storage.store_options.clone(),
            log: Mutex::new(CurrentLog {
                store: Some(current.0),
                generation: current.1,
                retiring: false,
                retire_failed: None,
            }),
            retired: Condvar::new(),
            snapshot_bytes: AtomicU64::new(0),
            compaction_due: AtomicBool::new(false),
            compacting: AtomicBool::new(false),
        });
        // Start with a snapshot of everything and an empty log: start-up
        // reads no more than it must next time, and a new vhost exists on
        // disk at once.
        if read.replayed > 0 || !storage.dir.join(SNAPSHOT_FILE).exists() {
            let generation = defs.switch_log()?;
            defs.write_snapshot(read.state.to_definitions(&name), generation)?;
        }
        storage
            .syncer
            .register(Arc::clone(&defs) as Arc<dyn Durable>);
        Ok(defs)
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
        let Some(store) = log.store.as_mut() else {
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
        APPENDED_HERE.with(|n| n.set(n.get() + changes.len() as u64));
        Ok(())
    }

    /// Compacts, on a thread of its own, if the log has outgrown the
    /// snapshot (see the module docs). Called by the broker's timer.
    pub fn compact_if_due(self: &Arc<Self>) {
        if self.compacting.load(Ordering::Relaxed)
            || !self.compaction_due.swap(false, Ordering::Relaxed)
        {
            return;
        }
        self.compacting.store(true, Ordering::Relaxed);
        let this = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("antre-compact".into())
            .spawn(move || {
                if let Err(e) = this.compact() {
                    tracing::error!("compacting the {}: {e}", this.label);
                    this.compaction_due.store(true, Ordering::Relaxed);
                }
                this.compacting.store(false, Ordering::Relaxed);
            });
        if let Err(e) = spawned {
            tracing::error!("starting the compaction of the {}: {e}", self.label);
            self.compacting.store(false, Ordering::Relaxed);
            self.compaction_due.store(true, Ordering::Relaxed);
        }
    }

    /// Switches to a new log, then folds the old snapshot and logs into
    /// the new snapshot, reading only files.
    fn compact(&self) -> Result<(), BrokerError> {
        let generation = self.switch_log()?;
        let read = read_definitions(&self.dir, &self.store_options, Some(generation))
            .map_err(|e| BrokerError::Internal(format!("{e} (vhost '{}')", self.vhost)))?;
        // Read only: closing it must not write anything.
        drop(read.last_log);
        self.write_snapshot(read.state.to_definitions(&self.vhost), generation)
    }

    /// Sends further changes to the next generation's log, then makes the
    /// old one durable and closes it; returns the new generation. The switch
    /// itself does no I/O worth the name (the new log's directory appears
    /// with its first record), so appends barely wait; the old log's fsync
    /// happens after the lock is released, and syncs wait for it (see
    /// [`Durable::begin_sync`] above).
    fn switch_log(&self) -> Result<u64, BrokerError> {
        let (old, generation) = {
            let mut log = self.log.lock();
            let generation = log.generation + 1;
            let (mut next, _) = QueueStore::open(
                &log_dir(&self.dir, generation),
                self.store_options.clone(),
                |_, _| {},
            )
            .map_err(|e| BrokerError::Internal(format!("opening the {} log: {e}", self.label)))?;
            let old = log.store.take();
            if let Some(hook) = old.as_ref().and_then(QueueStore::on_dirty) {
                next.set_on_dirty(hook);
            }
            log.store = Some(next);
            log.generation = generation;
            log.retiring = old.is_some();
            (old, generation)
        };
        let closed = old.map_or(Ok(()), QueueStore::close);
        {
            let mut log = self.log.lock();
            log.retiring = false;
            if let Err(e) = &closed {
                log.retire_failed = Some(e.to_string());
            }
        }
        self.retired.notify_all();
        closed
            .map_err(|e| BrokerError::Internal(format!("closing the {} log: {e}", self.label)))?;
        Ok(generation)
    }

    /// Flushes and closes the current log (clean shutdown).
    pub fn close_store(&self) {
        if let Some(store) = self.log.lock().store.take() {
            if let Err(e) = store.close() {
                tracing::error!("closing {}: {e}", self.label);
            }
        }
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
    state: &DurableState,
) -> Result<(), BrokerError> {
    let name = topo.vhost.clone();
    // Policies first, so that exchanges and queues come back under them.
    for (kind, defs) in [
        (PolicyKind::Policy, &state.policies),
        (PolicyKind::Operator, &state.operator_policies),
    ] {
        for def in defs.values() {
            match Policy::from_def(kind, def) {
                Ok(p) => {
                    topo.policies.insert(p);
                }
                // Validated when it was set: only a rule changed since can
                // refuse it. Loud, not fatal: the rest of the vhost works.
                Err(e) => tracing::error!(
                    vhost = name,
                    policy = def.name,
                    "cannot restore {}: {e}",
                    kind.component()
                ),
            }
        }
    }
    let mut kept_exchanges = HashSet::new();
    for x in state.exchanges.values() {
        kept_exchanges.insert(dir_name(&x.name));
        let declaration = ExchangeDeclaration {
            name: x.name.clone(),
            kind: x.kind.clone(),
            durable: true,
            auto_delete: x.auto_delete,
            internal: x.internal,
            arguments: json_to_table(&x.arguments),
        };
        topo.insert_exchange(build_exchange(&name, Some(storage), declaration, false)?);
    }
    remove_orphan_dirs(&storage.dir.join("exchanges"), &kept_exchanges);
    let mut kept_queues = HashSet::new();
    let mut kept_streams = HashSet::new();
    for q in state.queues.values() {
        let arguments = json_to_table(&q.arguments);
        if super::declare::is_stream(&arguments) {
            let stream =
                storage.open_stream(&name, &q.name, arguments, Arc::clone(clock), false)?;
            kept_streams.insert(dir_name(&q.name));
            topo.insert_stream(stream);
            continue;
        }
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
    remove_orphan_dirs(&storage.dir.join("streams"), &kept_streams);
    for b in state.bindings.values() {
        let destination = match b.destination_type.as_str() {
            "exchange" => Destination::Exchange(b.destination.clone()),
            _ => Destination::Queue(b.destination.clone()),
        };
        let binding = Binding {
            destination,
            routing_key: b.routing_key.clone(),
            arguments: json_to_table(&b.arguments),
        };
        // A binding whose source is gone was saved by an older version
        // that did not clean up; it has nothing to route.
        let _ = topo.bind(&b.source, binding);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
