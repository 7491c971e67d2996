//! A Raft group's log and vote on disk: the metadata group's under
//! `<data-dir>/cluster/`, each quorum queue's under
//! `<data-dir>/cluster/queues/<group>/`. The store is generic over the
//! group's openraft type configuration; entries are records in the
//! configuration's encoding ([`LogConfig`]: JSON for the metadata group,
//! binary for quorum queues).
//!
//! The log's entries are records in antre's segment store
//! ([`antre_store::QueueStore`], directory `log/`): checksummed, fsync'd
//! before an append is reported done, a torn tail truncated when the store
//! is opened. An append returns once its records are written (readable);
//! their fsyncs run in order on the blocking pool and each reports to
//! openraft's callback when durable, so that a leader replicates entries
//! while its own disk writes them (openraft as patched in
//! `vendor/openraft`; a follower still waits for the callback before it
//! answers). What Raft needs beyond appending maps onto the store's acks:
//!
//! - **truncate** a conflicting suffix: ack its records, then
//!   `sync_acks` (an ack checkpoint), so they cannot come back;
//! - **purge** a prefix covered by a snapshot: record the purge point in
//!   `raft.json` first, then ack the records (one that comes back after a
//!   crash is at or below the purge point and is ignored).
//!
//! Recovery replays the records in append order: a record whose index is
//! at or below an earlier one's supersedes that one and everything after it
//! (it was appended after a truncation whose acks were lost), and a gap in
//! the indexes ends the log there. The vote and the purge point live in
//! `raft.json`, rewritten atomically (temporary file, fsync, rename, fsync
//! of the directory) before a vote is answered. The newest entries are also
//! kept in memory, up to [`LogConfig::CACHE_BYTES`] of their records (all
//! of the metadata log, which is small and purged after each snapshot; a
//! few MiB of a quorum queue's, whose log carries every message): openraft
//! reads entries to apply and to replicate them, almost always the newest
//! ones, and an older one (for a follower far behind) is read back from
//! the store.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use antre_store::{PendingSync, QueueStore, SegmentPosition, StoreOptions};
use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{Entry, LogId, RaftTypeConfig, StorageError, StorageIOError, Vote};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::{ClusterError, NodeId, TypeConfig};

/// What `raft.json` holds.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Meta {
    vote: Option<Vote<NodeId>>,
    last_purged: Option<LogId<NodeId>>,
}

/// An entry of the log: where its record is, and the entry itself while
/// it is among the newest.
struct Slot<C: RaftTypeConfig> {
    pos: SegmentPosition,
    log_id: LogId<NodeId>,
    /// The record's length, which the cache counts.
    len: u64,
    entry: Option<Entry<C>>,
}

struct Inner<C: RaftTypeConfig> {
    store: QueueStore,
    entries: BTreeMap<u64, Slot<C>>,
    /// Bytes of the records of the entries held in memory.
    cached: u64,
    /// No entry below this index is held in memory.
    cached_from: u64,
    /// Most bytes of records held in memory ([`LogConfig::CACHE_BYTES`]
    /// unless [`LogStore::with_cache_bytes`] set it).
    cache_bytes: u64,
    meta: Meta,
    meta_path: PathBuf,
}

/// The type configurations this store serves: node ids are [`NodeId`],
/// entries openraft's, each with its record encoding.
pub trait LogConfig: RaftTypeConfig<NodeId = NodeId, Entry = Entry<Self>> {
    /// An entry as a record of the log.
    fn encode(entry: &Entry<Self>) -> Result<Vec<u8>, std::io::Error>;
    /// A record of the log as an entry.
    fn decode(raw: &[u8]) -> Result<Entry<Self>, std::io::Error>;
    /// Bytes of records of the newest entries kept in memory.
    const CACHE_BYTES: u64;
}

/// The metadata group's entries are JSON: few, small, and readable.
impl LogConfig for TypeConfig {
    fn encode(entry: &Entry<Self>) -> Result<Vec<u8>, std::io::Error> {
        serde_json::to_vec(entry).map_err(std::io::Error::other)
    }

    fn decode(raw: &[u8]) -> Result<Entry<Self>, std::io::Error> {
        serde_json::from_slice(raw).map_err(std::io::Error::other)
    }

    const CACHE_BYTES: u64 = u64::MAX;
}

/// A queue group's entries carry message bodies: binary
/// ([`crate::queue_group::codec`]).
impl LogConfig for crate::queue_group::QueueTypeConfig {
    fn encode(entry: &Entry<Self>) -> Result<Vec<u8>, std::io::Error> {
        let mut raw = Vec::new();
        crate::queue_group::codec::encode_entry(entry, &mut raw).map_err(std::io::Error::other)?;
        Ok(raw)
    }

    fn decode(raw: &[u8]) -> Result<Entry<Self>, std::io::Error> {
        crate::queue_group::codec::decode_record(raw).map_err(std::io::Error::other)
    }

    /// Enough for the entries a leader has in flight (publishes batch into
    /// entries of up to a few hundred KiB) and a follower a little behind;
    /// small enough that thousands of quorum queues do not hold gigabytes.
    const CACHE_BYTES: u64 = 2 << 20;
}

/// How far the group's state machine has a snapshot on disk, which a
/// purge of the log waits for.
///
/// openraft 0.9 installs a snapshot sent by the leader on its state machine
/// worker and purges the log it covers from the Raft core at the same
/// moment: nothing orders the two. A member killed after the purge was
/// written and before the snapshot was left a log purged past its
/// snapshot, which openraft refuses to start from (its check that the
/// purge point is at or below the snapshot's last entry panics), and the
/// member's replica of the queue was gone for good (seen in the nemesis
/// soak: a follower far behind, a full snapshot, a kill 2 s later). So the
/// state machine reports each snapshot once it is durable, and the purge
/// waits until one covers it: the Raft core of a member installing a
/// snapshot waits for that install, which it has nothing else to do
/// meanwhile.
#[derive(Debug, Default)]
pub struct SnapshotFloor {
    state: Mutex<FloorState>,
    changed: parking_lot::Condvar,
}

#[derive(Debug, Default)]
struct FloorState {
    durable: Option<LogId<NodeId>>,
    /// An install failed: a purge waiting for it must not wait forever
    /// (openraft stops the group on the install's error anyway).
    failed: bool,
}

impl SnapshotFloor {
    /// Longest a purge waits for a snapshot; a safety net only, as an
    /// install that ends, well or not, wakes it.
    const PATIENCE: Duration = Duration::from_secs(120);

    /// A floor at the snapshot the state machine found on disk at start-up
    /// (none: no purge until one is built or installed).
    pub fn new(durable: Option<LogId<NodeId>>) -> SnapshotFloor {
        let floor = SnapshotFloor::default();
        floor.state.lock().durable = durable;
        floor
    }

    /// The snapshot covering the log up to `upto` is on disk.
    pub fn durable(&self, upto: Option<LogId<NodeId>>) {
        let mut s = self.state.lock();
        if upto > s.durable {
            s.durable = upto;
        }
        s.failed = false;
        self.changed.notify_all();
    }

    /// Installing a snapshot failed.
    pub fn failed(&self) {
        self.state.lock().failed = true;
        self.changed.notify_all();
    }

    /// Waits until a snapshot up to `upto` is durable.
    fn wait_for(&self, upto: LogId<NodeId>) -> Result<(), std::io::Error> {
        let deadline = Instant::now() + Self::PATIENCE;
        let mut s = self.state.lock();
        while s.durable < Some(upto) {
            if s.failed {
                return Err(std::io::Error::other(format!(
                    "not purging the log up to {upto}: the snapshot covering it failed"
                )));
            }
            if self.changed.wait_until(&mut s, deadline).timed_out() {
                return Err(std::io::Error::other(format!(
                    "not purging the log up to {upto}: no snapshot covers it"
                )));
            }
        }
        Ok(())
    }
}

/// The Raft log storage; clones share one log (openraft's reader is one).
pub struct LogStore<C: LogConfig = TypeConfig> {
    inner: Arc<Mutex<Inner<C>>>,
    /// What a purge waits for, where the state machine reports it.
    floor: Option<Arc<SnapshotFloor>>,
    /// The append under way and the longest of late (see
    /// [`LogStore::appends`]). Apart from `inner`, whose lock the append
    /// holds.
    appending: Arc<Mutex<AppendMarks>>,
    /// How far the log is written and committed, for the metrics.
    progress: Arc<Mutex<Progress>>,
    /// Appends written and waiting for their fsync.
    flushes: Arc<Flushes>,
}

/// A log's appends whose records are written and whose fsyncs are owed,
/// oldest first: synced one after the other on the blocking pool by one
/// drain at a time, so their callbacks report in order.
struct Flushes {
    queue: Mutex<FlushQueue>,
    /// Signalled when a drain ends (nothing left to sync).
    drained: parking_lot::Condvar,
}

/// Told how an append's fsyncs went: openraft's [`LogFlushed`].
type Flushed = Box<dyn FnOnce(Result<(), std::io::Error>) + Send>;

struct FlushQueue {
    waiting: std::collections::VecDeque<(Written, Flushed)>,
    /// A drain is running and takes what is queued.
    draining: bool,
}

impl Flushes {
    fn new() -> Flushes {
        Flushes {
            queue: Mutex::new(FlushQueue {
                waiting: std::collections::VecDeque::new(),
                draining: false,
            }),
            drained: parking_lot::Condvar::new(),
        }
    }
}

/// An append whose records the store holds but has not made durable.
struct Written {
    pending: PendingSync,
    last: u64,
    /// When openraft handed the entries over.
    handed: Instant,
}

impl<C: LogConfig> Clone for LogStore<C> {
    fn clone(&self) -> Self {
        LogStore {
            inner: Arc::clone(&self.inner),
            floor: self.floor.clone(),
            appending: Arc::clone(&self.appending),
            progress: Arc::clone(&self.progress),
            flushes: Arc::clone(&self.flushes),
        }
    }
}

/// How many appends [`Progress`] remembers until they are committed: a
/// follower cut off from its leader appends nothing, so this bounds only
/// a leader whose commits stopped while it kept appending.
const UNCOMMITTED_KEPT: usize = 4096;

/// The log's written and commit indexes and how long an append took to
/// be committed: what RabbitMQ exports per Raft member
/// (`rabbitmq_raft_log_last_written_index`, `_commit_index`,
/// `rabbitmq_raft_entry_commit_latency_seconds`). openraft 0.9's metrics
/// have no commit index; it tells the log store instead
/// ([`RaftLogStorage::save_committed`]).
#[derive(Debug, Default)]
struct Progress {
    /// The last index durably written.
    written: Option<u64>,
    /// The last index known committed.
    committed: Option<u64>,
    /// The appends not known committed yet: each one's last index and
    /// when it was handed to the log, oldest first.
    uncommitted: std::collections::VecDeque<(u64, Instant)>,
    /// From the hand-over of the newest committed append to the news of
    /// its commit.
    commit_latency: Option<Duration>,
}

/// A member's log as the metrics show it (see [`LogStore::progress`]).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LogProgress {
    /// The last index durably written to this member's log.
    pub last_written: Option<u64>,
    /// The last index this member knows committed.
    pub committed: Option<u64>,
    /// How long the newest committed append took from being handed to
    /// this member's log to this member learning it was committed: on a
    /// leader its own write, the replication and a majority's writes; on
    /// a follower its write and the wait for the leader's next message.
    pub commit_latency: Option<Duration>,
}

/// When the append under way started, and how long the longest append
/// of late took and when it ended.
#[derive(Debug, Default)]
struct AppendMarks {
    started: Option<Instant>,
    longest: Option<(Duration, Instant)>,
}

/// What [`LogStore::appends`] reports.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Appends {
    /// How long the append under way has been running, if one is.
    pub(crate) running: Option<Duration>,
    /// The longest append of late: how long it took, and how long ago it
    /// ended.
    pub(crate) longest: Option<(Duration, Duration)>,
}

/// How long an append is remembered as the longest of late, unless a
/// longer one comes.
const LONGEST_KEPT: Duration = Duration::from_secs(60);

/// Marks an append under way since a moment until dropped (also when it
/// fails). Its write and its fsync are marked apart; the mark an append
/// leaves is cleared only by its own end.
struct Appending<'a> {
    marks: &'a Mutex<AppendMarks>,
    since: Instant,
}

impl<'a> Appending<'a> {
    fn start(marks: &'a Mutex<AppendMarks>, since: Instant) -> Appending<'a> {
        marks.lock().started = Some(since);
        Appending { marks, since }
    }
}

impl Drop for Appending<'_> {
    fn drop(&mut self) {
        let mut m = self.marks.lock();
        if m.started == Some(self.since) {
            m.started = None;
        }
        let now = Instant::now();
        let took = now - self.since;
        let replace = m
            .longest
            .is_none_or(|(t, ended)| took >= t || now - ended > LONGEST_KEPT);
        if replace {
            m.longest = Some((took, now));
        }
    }
}

type StorageResult<T> = Result<T, StorageError<NodeId>>;

fn storage(e: impl std::fmt::Display) -> ClusterError {
    ClusterError::Storage(e.to_string())
}

/// Runs blocking disk work from an async storage call without stalling
/// the other tasks of the runtime's worker.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

impl<C: LogConfig> LogStore<C> {
    /// The id of the last entry in the log (or of the last purged one),
    /// as Raft's vote compares logs: what a pre-vote ([`crate::failover`])
    /// weighs.
    pub(crate) fn last_log_id(&self) -> Option<LogId<NodeId>> {
        self.inner.lock().last_log_id()
    }

    /// Whether this log has never held an entry nor recorded a vote: a
    /// member created now, not one back from a restart.
    pub(crate) fn is_new(&self) -> bool {
        let inner = self.inner.lock();
        inner.meta.vote.is_none() && inner.last_log_id().is_none()
    }

    /// Writes `entry` as the first entry of a new log ([`Self::is_new`]),
    /// durably, before a Raft reads the log: what openraft's `initialize`
    /// appends, without the election it starts. False (nothing written)
    /// if the log is not new.
    pub(crate) fn begin_with(&self, entry: Entry<C>) -> Result<bool, ClusterError> {
        if !self.is_new() {
            return Ok(false);
        }
        blocking(|| self.write(vec![entry])).map_err(storage)?;
        Ok(true)
    }

    /// How long the append under way has been writing and syncing, and
    /// the longest append of late. openraft 0.9's core waits for each
    /// append to be written (and a follower's to be durable) before it
    /// does anything else, heartbeats included: a leader writing a large
    /// entry is silent meanwhile, and for a moment after, though alive
    /// (see [`crate::election::grants`]).
    pub(crate) fn appends(&self) -> Appends {
        let m = self.appending.lock();
        Appends {
            running: m.started.map(|t| t.elapsed()),
            longest: m.longest.map(|(took, ended)| (took, ended.elapsed())),
        }
    }

    /// Appends `entries` and makes them durable before it returns (a new
    /// log's first entry, and tests); openraft's `append` writes with
    /// [`Self::write_records`] and syncs later ([`Self::flush_later`]).
    ///
    /// The lock is held only to append the records, not to encode them
    /// nor for the fsync: openraft's replication tasks read the newest
    /// entries under it, and blocked on it for as long as a leader wrote
    /// a large entry, they held every worker of the Raft runtime (an
    /// 80 MiB message on a busy machine silenced its node for 2.4 s, and
    /// the followers elected another leader).
    fn write(&self, entries: Vec<Entry<C>>) -> Result<(), std::io::Error> {
        let _appending = Appending::start(&self.appending, Instant::now());
        match self.write_records(entries)? {
            Some(written) => self.sync_written(written),
            None => Ok(()),
        }
    }

    /// The first half of [`Self::write`]: the records appended to the
    /// store (readable from now on), their fsyncs owed (none if there is
    /// no entry).
    fn write_records(&self, entries: Vec<Entry<C>>) -> Result<Option<Written>, std::io::Error> {
        let handed = Instant::now();
        let (Some(first), Some(last)) = (
            entries.first().map(|e| e.log_id.index),
            entries.last().map(|e| e.log_id.index),
        ) else {
            return Ok(None);
        };
        let records = entries
            .into_iter()
            .map(|e| Ok((C::encode(&e)?, e)))
            .collect::<Result<Vec<_>, std::io::Error>>()?;
        let pending = {
            let mut inner = self.inner.lock();
            for (raw, entry) in records {
                let index = entry.log_id.index;
                if inner.entries.contains_key(&index) {
                    inner.drop_from(index).map_err(std::io::Error::other)?;
                }
                let pos = inner.store.append(&raw).map_err(std::io::Error::other)?;
                inner.cached += raw.len() as u64;
                inner
                    .entries
                    .insert(index, Slot::new(pos, raw.len(), entry));
            }
            inner.evict();
            inner.store.begin_sync().map_err(std::io::Error::other)?
        };
        // Counted from the hand-over: a leader's entries may be committed
        // (by its followers) before its own fsync ends.
        {
            let mut p = self.progress.lock();
            // Entries written over (a conflict) were not committed.
            p.uncommitted.retain(|&(l, _)| l < first);
            if p.committed.is_none_or(|c| c < last) {
                if p.uncommitted.len() == UNCOMMITTED_KEPT {
                    p.uncommitted.pop_front();
                }
                p.uncommitted.push_back((last, handed));
            }
        }
        Ok(Some(Written {
            pending,
            last,
            handed,
        }))
    }

    /// The last half of [`Self::write`]: the fsyncs, after which the
    /// entries are durable, as Raft must know before it counts them.
    fn sync_written(&self, written: Written) -> Result<(), std::io::Error> {
        let Written { pending, last, .. } = written;
        let synced = pending.run();
        self.inner
            .lock()
            .store
            .finish_sync(pending, synced)
            .map_err(std::io::Error::other)?;
        // Syncs end in the order of the appends: the last one is the newest.
        self.progress.lock().written = Some(last);
        Ok(())
    }

    /// Queues the fsyncs of an append; `callback` hears when they are
    /// done. One drain at a time runs the queue in order on the blocking
    /// pool (inline outside a runtime), so a log costs no thread while it
    /// has nothing to sync, and logs sync at the same time as each other.
    fn flush_later(&self, written: Written, callback: Flushed) {
        {
            let mut q = self.flushes.queue.lock();
            q.waiting.push_back((written, callback));
            if q.draining {
                return;
            }
            q.draining = true;
        }
        let store = self.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn_blocking(move || store.drain_flushes());
            }
            Err(_) => store.drain_flushes(),
        }
    }

    fn drain_flushes(&self) {
        loop {
            let (written, callback) = {
                let mut q = self.flushes.queue.lock();
                match q.waiting.pop_front() {
                    Some(next) => next,
                    None => {
                        q.draining = false;
                        self.flushes.drained.notify_all();
                        return;
                    }
                }
            };
            let _appending = Appending::start(&self.appending, written.handed);
            callback(self.sync_written(written));
        }
    }

    /// Waits until every queued fsync has ended.
    fn wait_for_flushes(&self) {
        let mut q = self.flushes.queue.lock();
        while q.draining {
            self.flushes.drained.wait(&mut q);
        }
    }

    /// How far this member's log is written and committed.
    pub fn progress(&self) -> LogProgress {
        let p = self.progress.lock();
        LogProgress {
            last_written: p.written,
            committed: p.committed,
            commit_latency: p.commit_latency,
        }
    }

    /// Records that the log is committed up to `index`.
    fn committed(&self, index: u64) {
        let mut p = self.progress.lock();
        if p.committed.is_some_and(|c| c >= index) {
            return;
        }
        p.committed = Some(index);
        let mut newest = None;
        while let Some(&(last, handed)) = p.uncommitted.front() {
            if last > index {
                break;
            }
            newest = Some(handed);
            p.uncommitted.pop_front();
        }
        if let Some(handed) = newest {
            p.commit_latency = Some(handed.elapsed());
        }
    }

    /// Forgets what was written from `index` on (a truncation).
    fn truncated(&self, index: u64) {
        let mut p = self.progress.lock();
        p.written = index.checked_sub(1).min(p.written);
        p.uncommitted.retain(|&(last, _)| last < index);
    }

    /// Makes every purge wait until `floor` reports a durable snapshot
    /// covering it (see [`SnapshotFloor`]).
    pub fn with_floor(mut self, floor: Arc<SnapshotFloor>) -> LogStore<C> {
        self.floor = Some(floor);
        self
    }

    /// Holds up to `bytes` of the newest records in memory instead of
    /// [`LogConfig::CACHE_BYTES`].
    pub fn with_cache_bytes(self, bytes: u64) -> LogStore<C> {
        self.inner.lock().cache_bytes = bytes;
        self
    }

    /// Opens (creating) the log in `dir`, recovering what is there.
    pub fn open(dir: &Path) -> Result<LogStore<C>, ClusterError> {
        std::fs::create_dir_all(dir).map_err(storage)?;
        let meta_path = dir.join("raft.json");
        let meta: Meta = match antre_store::definitions::read(&meta_path).map_err(storage)? {
            Some(raw) => serde_json::from_slice(&raw).map_err(storage)?,
            None => Meta::default(),
        };
        let mut records: Vec<(SegmentPosition, Vec<u8>)> = Vec::new();
        let (mut store, _stats) =
            QueueStore::open(&dir.join("log"), StoreOptions::default(), |pos, p| {
                records.push((pos, p.to_vec()));
            })
            .map_err(storage)?;
        let mut entries: BTreeMap<u64, Slot<C>> = BTreeMap::new();
        let mut dead = Vec::new();
        for (pos, raw) in records {
            let entry = C::decode(&raw).map_err(storage)?;
            let index = entry.log_id.index;
            // A later record at an index supersedes the one there and
            // everything after it (a truncation whose acks were lost).
            dead.extend(entries.split_off(&index).into_values().map(|s| s.pos));
            entries.insert(index, Slot::new(pos, raw.len(), entry));
        }
        let purged = meta.last_purged.map(|l| l.index);
        if let Some(p) = purged {
            let rest = entries.split_off(&(p + 1));
            dead.extend(entries.into_values().map(|s| s.pos));
            entries = rest;
        }
        // A gap (a corrupt record the store skipped) ends the log.
        let mut expected = purged.map_or_else(|| entries.keys().next().copied(), |p| Some(p + 1));
        let mut cut = None;
        for &i in entries.keys() {
            if Some(i) != expected {
                cut = Some(i);
                break;
            }
            expected = Some(i + 1);
        }
        if let Some(i) = cut {
            tracing::warn!(
                index = i,
                "the cluster log has a gap: dropping it and what follows"
            );
            dead.extend(entries.split_off(&i).into_values().map(|s| s.pos));
        }
        for pos in &dead {
            let _ = store.ack(*pos);
        }
        if !dead.is_empty() {
            store.sync_acks().map_err(storage)?;
        }
        let cached = entries.values().map(|s| s.len).sum();
        let mut inner = Inner {
            store,
            entries,
            cached,
            cached_from: 0,
            cache_bytes: C::CACHE_BYTES,
            meta,
            meta_path,
        };
        inner.evict();
        let progress = Progress {
            written: inner.last_log_id().map(|l| l.index),
            ..Progress::default()
        };
        Ok(LogStore {
            inner: Arc::new(Mutex::new(inner)),
            floor: None,
            appending: Arc::default(),
            progress: Arc::new(Mutex::new(progress)),
            flushes: Arc::new(Flushes::new()),
        })
    }

    /// Closes the underlying store (flushing acks), once the fsyncs under
    /// way have ended.
    pub fn close(&self) {
        self.wait_for_flushes();
        let mut inner = self.inner.lock();
        if let Err(e) = inner.store.sync_acks() {
            tracing::warn!("closing the cluster log: {e}");
        }
    }
}

impl<C: LogConfig> Slot<C> {
    fn new(pos: SegmentPosition, len: usize, entry: Entry<C>) -> Slot<C> {
        Slot {
            pos,
            log_id: entry.log_id,
            len: len as u64,
            entry: Some(entry),
        }
    }
}

impl<C: LogConfig> Inner<C> {
    /// Drops the oldest entries from memory until those left fit in
    /// [`LogConfig::CACHE_BYTES`] (the newest stays, whatever its size).
    fn evict(&mut self) {
        if self.cached <= self.cache_bytes {
            return;
        }
        let newest = self.entries.keys().next_back().copied().unwrap_or(0);
        if self.cached_from >= newest {
            return;
        }
        for (&i, slot) in self.entries.range_mut(self.cached_from..newest) {
            if self.cached <= self.cache_bytes {
                break;
            }
            if slot.entry.take().is_some() {
                self.cached -= slot.len;
            }
            self.cached_from = i + 1;
        }
    }

    /// Removes entries, keeping the count of cached bytes.
    fn forget(&mut self, gone: &BTreeMap<u64, Slot<C>>) {
        for slot in gone.values() {
            if slot.entry.is_some() {
                self.cached -= slot.len;
            }
        }
    }

    /// The entry at `slot`, from memory or read back from the store.
    fn entry(&self, slot: &Slot<C>) -> Result<Entry<C>, std::io::Error>
    where
        C::D: Clone,
    {
        match &slot.entry {
            Some(e) => Ok(e.clone()),
            None => {
                let raw = self.store.read(slot.pos).map_err(std::io::Error::other)?;
                C::decode(&raw)
            }
        }
    }

    fn save_meta(&self) -> Result<(), std::io::Error> {
        let json = serde_json::to_vec(&self.meta).map_err(std::io::Error::other)?;
        antre_store::definitions::write_atomic(&self.meta_path, &json)
            .map_err(std::io::Error::other)
    }

    fn last_log_id(&self) -> Option<LogId<NodeId>> {
        self.entries
            .values()
            .next_back()
            .map(|s| s.log_id)
            .or(self.meta.last_purged)
    }

    /// Acks the records of the entries from `index` on; returns how many.
    fn drop_from(&mut self, index: u64) -> Result<usize, antre_store::StoreError> {
        let gone = self.entries.split_off(&index);
        self.forget(&gone);
        // Entries appended at these indexes again are the newest.
        self.cached_from = self.cached_from.min(index);
        for slot in gone.values() {
            self.store.ack(slot.pos)?;
        }
        Ok(gone.len())
    }
}

/// The first index `range` may hold.
fn range_start(range: &impl RangeBounds<u64>) -> u64 {
    match range.start_bound() {
        std::ops::Bound::Included(&i) => i,
        std::ops::Bound::Excluded(&i) => i.saturating_add(1),
        std::ops::Bound::Unbounded => 0,
    }
}

impl<C: LogConfig> RaftLogReader<C> for LogStore<C>
where
    C::D: Clone,
{
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<C>>> {
        let read = |inner: &Inner<C>| {
            inner
                .entries
                .range(range.clone())
                .map(|(_, slot)| inner.entry(slot))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| StorageIOError::read_logs(&e).into())
        };
        {
            // Almost always the newest entries, in memory: no disk read, so
            // no hand-off of the runtime's worker either.
            let inner = self.inner.lock();
            if range_start(&range) >= inner.cached_from {
                return read(&inner);
            }
        }
        let inner = Arc::clone(&self.inner);
        blocking(move || read(&inner.lock()))
    }
}

impl<C: LogConfig> RaftLogStorage<C> for LogStore<C>
where
    C::D: Clone,
{
    type LogReader = LogStore<C>;

    async fn get_log_state(&mut self) -> StorageResult<LogState<C>> {
        let inner = self.inner.lock();
        Ok(LogState {
            last_purged_log_id: inner.meta.last_purged,
            last_log_id: inner.last_log_id(),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StorageResult<()> {
        let inner = Arc::clone(&self.inner);
        let vote = *vote;
        blocking(move || {
            let mut inner = inner.lock();
            let before = inner.meta.vote;
            inner.meta.vote = Some(vote);
            inner.save_meta().map_err(|e| {
                inner.meta.vote = before;
                StorageIOError::write_vote(&e).into()
            })
        })
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        Ok(self.inner.lock().meta.vote)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<C>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<C>> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry<C>> = entries.into_iter().collect();
        // Written here, on the Raft core's thread: handing the write to
        // another thread (block_in_place) cost more than copying the
        // records into the page cache.
        let written = {
            let _appending = Appending::start(&self.appending, Instant::now());
            self.write_records(entries)
        };
        match written {
            Ok(Some(written)) => {
                self.flush_later(
                    written,
                    Box::new(move |synced| callback.log_io_completed(synced)),
                );
                Ok(())
            }
            Ok(None) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                let err = StorageIOError::write_logs(&e).into();
                callback.log_io_completed(Err(e));
                Err(err)
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        let store = self.clone();
        self.truncated(log_id.index);
        blocking(move || {
            // A former leader's appends may still be syncing: they end
            // before their records are dropped.
            store.wait_for_flushes();
            let mut inner = store.inner.lock();
            inner
                .drop_from(log_id.index)
                .and_then(|_| inner.store.sync_acks())
                .map_err(|e| StorageIOError::write_logs(&e).into())
        })
    }

    /// Not kept on disk (openraft then finds the commit again from a
    /// quorum): recorded for the metrics only.
    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StorageResult<()> {
        if let Some(c) = committed {
            self.committed(c.index);
        }
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        let inner = Arc::clone(&self.inner);
        let floor = self.floor.clone();
        // Not waiting for the fsyncs under way (unlike a truncation): a
        // leader under load always has one, and what a purge drops is
        // behind a snapshot (a record that comes back after a crash is
        // ignored, as below).
        blocking(move || {
            if let Some(floor) = floor {
                floor
                    .wait_for(log_id)
                    .map_err(|e| StorageError::from(StorageIOError::write_logs(&e)))?;
            }
            let mut inner = inner.lock();
            let before = inner.meta.last_purged;
            inner.meta.last_purged = Some(log_id);
            if let Err(e) = inner.save_meta() {
                inner.meta.last_purged = before;
                return Err(StorageIOError::write_logs(&e).into());
            }
            let rest = inner.entries.split_off(&(log_id.index + 1));
            let gone = std::mem::replace(&mut inner.entries, rest);
            inner.forget(&gone);
            for slot in gone.values() {
                // A purged record that comes back is ignored at recovery.
                let _ = inner.store.ack(slot.pos);
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue_group::QueueTypeConfig;
    use openraft::{CommittedLeaderId, EntryPayload};

    fn entry(term: u64, index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Blank,
        }
    }

    fn append<C: LogConfig>(store: &LogStore<C>, entries: Vec<Entry<C>>) {
        store.write(entries).unwrap();
    }

    fn indexes<C: LogConfig>(store: &LogStore<C>) -> Vec<(u64, u64)> {
        let inner = store.inner.lock();
        inner
            .entries
            .values()
            .map(|s| (s.log_id.leader_id.term, s.log_id.index))
            .collect()
    }

    fn cached<C: LogConfig>(store: &LogStore<C>) -> Vec<u64> {
        let inner = store.inner.lock();
        inner
            .entries
            .iter()
            .filter(|(_, s)| s.entry.is_some())
            .map(|(&i, _)| i)
            .collect()
    }

    /// A queue group's entry of one message of `size` bytes.
    fn big(term: u64, index: u64, size: usize) -> Entry<QueueTypeConfig> {
        let ops = crate::queue_group::QueueOps {
            enqueue: vec![(
                index,
                crate::queue_group::Body(vec![index as u8; size].into()),
            )],
            ..Default::default()
        };
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Normal(ops),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_the_newest_queue_entries_stay_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = LogStore::<QueueTypeConfig>::open(dir.path()).unwrap();
        let mib = 1 << 20;
        append(&store, (0..6).map(|i| big(1, i, mib)).collect());
        // 2 MiB of records: the last entry and most of the one before
        // cannot both fit with their headers, so only the newest stays.
        assert_eq!(cached(&store), vec![5]);
        // Older entries are read back from the store.
        let got = store.try_get_log_entries(0..6).await.unwrap();
        assert_eq!(got, (0..6).map(|i| big(1, i, mib)).collect::<Vec<_>>());
        // A conflict at 4: the new entries there are the newest.
        store
            .truncate(LogId::new(CommittedLeaderId::new(1, 1), 4))
            .await
            .unwrap();
        append(&store, vec![big(2, 4, 1000), big(2, 5, 1000)]);
        assert_eq!(cached(&store), vec![4, 5]);
        store.close();
        drop(store);
        let mut store = LogStore::<QueueTypeConfig>::open(dir.path()).unwrap();
        assert_eq!(cached(&store), vec![3, 4, 5]);
        assert_eq!(indexes(&store).last(), Some(&(2, 5)));
        let got = store.try_get_log_entries(2..4).await.unwrap();
        assert_eq!(got, vec![big(1, 2, mib), big(1, 3, mib)]);
    }

    #[test]
    fn appends_are_timed_and_the_longest_remembered() {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::<QueueTypeConfig>::open(dir.path()).unwrap();
        assert!(store.appends().running.is_none() && store.appends().longest.is_none());
        append(&store, vec![big(1, 0, 1 << 20)]);
        assert!(store.appends().longest.is_some());
        assert!(store.appends().running.is_none());
        // A quicker one after a long one does not hide it.
        let long = Duration::from_secs(2);
        store.appending.lock().longest = Some((long, Instant::now()));
        append(&store, vec![big(1, 1, 10)]);
        let (still, ago) = store.appends().longest.unwrap();
        assert_eq!(still, long);
        assert!(ago < LONGEST_KEPT);
        // Unless the long one is long past.
        store.appending.lock().longest = Instant::now()
            .checked_sub(LONGEST_KEPT + Duration::from_secs(1))
            .map(|ended| (long, ended));
        append(&store, vec![big(1, 2, 10)]);
        assert!(store.appends().longest.unwrap().0 < long);
        let during = Appending::start(&store.appending, Instant::now());
        assert!(store.appends().running.is_some());
        drop(during);
        assert!(store.appends().running.is_none());
    }

    /// Queues `entries`' fsyncs as `append` does; what they report goes
    /// to `heard` with the append's last index.
    fn append_later<C: LogConfig>(
        store: &LogStore<C>,
        entries: Vec<Entry<C>>,
        heard: &Arc<Mutex<Vec<(u64, bool)>>>,
    ) {
        let last = entries.last().unwrap().log_id.index;
        let written = store.write_records(entries).unwrap().unwrap();
        let heard = Arc::clone(heard);
        store.flush_later(
            written,
            Box::new(move |r| heard.lock().push((last, r.is_ok()))),
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn appends_are_readable_at_once_and_reported_durable_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = LogStore::<TypeConfig>::open(dir.path()).unwrap();
        let heard = Arc::new(Mutex::new(Vec::new()));
        for i in 0..50 {
            append_later(&store, vec![entry(1, 2 * i), entry(1, 2 * i + 1)], &heard);
            // Readable before its fsync is reported, as openraft's
            // replication tasks read it.
            let got = store.try_get_log_entries(2 * i..2 * i + 2).await.unwrap();
            assert_eq!(got, vec![entry(1, 2 * i), entry(1, 2 * i + 1)]);
        }
        store.wait_for_flushes();
        let expected: Vec<(u64, bool)> = (0..50).map(|i| (2 * i + 1, true)).collect();
        assert_eq!(*heard.lock(), expected);
        assert_eq!(store.progress().last_written, Some(99));
        assert!(store.appends().running.is_none());
        // Everything reported durable is there after a restart.
        store.close();
        drop(store);
        let store = LogStore::<TypeConfig>::open(dir.path()).unwrap();
        assert_eq!(
            indexes(&store),
            (0..100).map(|i| (1, i)).collect::<Vec<_>>()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_truncation_waits_for_the_fsyncs_under_way() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = LogStore::<QueueTypeConfig>::open(dir.path()).unwrap();
        let heard = Arc::new(Mutex::new(Vec::new()));
        // A former leader's appends, their fsyncs queued.
        for i in 0..20 {
            append_later(&store, vec![big(1, i, 64 << 10)], &heard);
        }
        store
            .truncate(LogId::new(CommittedLeaderId::new(1, 1), 10))
            .await
            .unwrap();
        // Every append queued before was reported before the truncation
        // dropped its records.
        assert_eq!(
            *heard.lock(),
            (0..20).map(|i| (i, true)).collect::<Vec<_>>()
        );
        append(&store, vec![big(2, 10, 10)]);
        store.close();
        drop(store);
        let store = LogStore::<QueueTypeConfig>::open(dir.path()).unwrap();
        let mut expected: Vec<(u64, u64)> = (0..10).map(|i| (1, i)).collect();
        expected.push((2, 10));
        assert_eq!(indexes(&store), expected);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_written_and_committed_indexes_follow_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = LogStore::<TypeConfig>::open(dir.path()).unwrap();
        assert_eq!(store.progress(), LogProgress::default());
        append(&store, (0..3).map(|i| entry(1, i)).collect());
        append(&store, (3..6).map(|i| entry(1, i)).collect());
        let p = store.progress();
        assert_eq!((p.last_written, p.committed), (Some(5), None));
        assert_eq!(p.commit_latency, None);
        // A commit inside the second append times that append; the first
        // append is done with, the second still waits.
        let id = |i| LogId::new(CommittedLeaderId::new(1, 1), i);
        store.save_committed(Some(id(4))).await.unwrap();
        let p = store.progress();
        assert_eq!(p.committed, Some(4));
        assert!(p.commit_latency.is_some());
        assert!(store
            .progress
            .lock()
            .uncommitted
            .iter()
            .all(|&(l, _)| l == 5));
        // A stale commit changes nothing.
        store.save_committed(Some(id(2))).await.unwrap();
        assert_eq!(store.progress().committed, Some(4));
        // A conflicting suffix truncated, then written over.
        store.truncate(id(5)).await.unwrap();
        assert_eq!(store.progress().last_written, Some(4));
        assert!(store.progress.lock().uncommitted.is_empty());
        append(&store, vec![entry(2, 5), entry(2, 6)]);
        append(&store, vec![entry(2, 6)]);
        assert_eq!(store.progress().last_written, Some(6));
        let waiting: Vec<u64> = store
            .progress
            .lock()
            .uncommitted
            .iter()
            .map(|&(l, _)| l)
            .collect();
        assert_eq!(waiting, [6], "the append written over is gone");
        store.save_committed(Some(id(6))).await.unwrap();
        assert!(store.progress.lock().uncommitted.is_empty());
        // A restart finds what was written, not what was committed (openraft
        // learns that again from the leader).
        store.close();
        drop(store);
        let store = LogStore::<TypeConfig>::open(dir.path()).unwrap();
        assert_eq!(store.progress().last_written, Some(6));
        assert_eq!(store.progress().committed, None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_new_log_begins_with_an_entry_once_and_only_when_new() {
        let first = || Entry::<QueueTypeConfig> {
            log_id: LogId::default(),
            payload: EntryPayload::Membership(openraft::Membership::from(BTreeMap::from([(
                1,
                openraft::BasicNode::default(),
            )]))),
        };
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::<QueueTypeConfig>::open(dir.path()).unwrap();
        assert!(store.is_new());
        assert!(store.begin_with(first()).unwrap());
        assert!(!store.is_new());
        assert!(!store.begin_with(first()).unwrap());
        drop(store);
        // Durable: a restarted member is not new, and keeps the entry.
        let mut store = LogStore::<QueueTypeConfig>::open(dir.path()).unwrap();
        assert!(!store.is_new());
        assert_eq!(indexes(&store), vec![(0, 0)]);
        let got = store.try_get_log_entries(0..1).await.unwrap();
        assert!(matches!(got[0].payload, EntryPayload::Membership(_)));

        // A member that voted (a real vote, before any entry reached it)
        // is not new either: openraft would refuse to initialize it.
        let dir = tempfile::tempdir().unwrap();
        let mut store = LogStore::<QueueTypeConfig>::open(dir.path()).unwrap();
        store.save_vote(&Vote::new(1, 2)).await.unwrap();
        assert!(!store.is_new());
        assert!(!store.begin_with(first()).unwrap());
        assert_eq!(indexes(&store), vec![]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_log_survives_a_restart_with_truncations_and_purges() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = LogStore::<TypeConfig>::open(dir.path()).unwrap();
        append(&store, (0..5).map(|i| entry(1, i)).collect());
        // A conflict at 3: the suffix goes, new entries of term 2 follow.
        store
            .truncate(LogId::new(CommittedLeaderId::new(1, 1), 3))
            .await
            .unwrap();
        append(&store, vec![entry(2, 3), entry(2, 4)]);
        store.save_vote(&Vote::new(2, 9)).await.unwrap();
        store
            .purge(LogId::new(CommittedLeaderId::new(1, 1), 1))
            .await
            .unwrap();
        store.close();
        drop(store);
        let mut store = LogStore::<TypeConfig>::open(dir.path()).unwrap();
        assert_eq!(indexes(&store), vec![(1, 2), (2, 3), (2, 4)]);
        assert_eq!(store.read_vote().await.unwrap(), Some(Vote::new(2, 9)));
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(1));
        assert_eq!(state.last_log_id.map(|l| l.index), Some(4));
        let got = store.try_get_log_entries(3..5).await.unwrap();
        assert_eq!(got.len(), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_torn_tail_is_dropped_at_start_up() {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::<TypeConfig>::open(dir.path()).unwrap();
        append(&store, (0..3).map(|i| entry(1, i)).collect());
        store.close();
        drop(store);
        // Tear the last record: cut a few bytes off the segment file.
        let seg = std::fs::read_dir(dir.path().join("log"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("msgs.")
            })
            .unwrap();
        let len = std::fs::metadata(&seg).unwrap().len();
        let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
        f.set_len(len - 5).unwrap();
        drop(f);
        let store = LogStore::<TypeConfig>::open(dir.path()).unwrap();
        assert_eq!(indexes(&store), vec![(1, 0), (1, 1)]);
    }

    /// A purge the state machine's snapshot does not cover yet waits for
    /// it (openraft purges while the snapshot is still being installed);
    /// one whose snapshot failed leaves the log as it was, so the member
    /// restarts from its old snapshot and its log, never from a log purged
    /// past its snapshot.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_purge_waits_for_the_snapshot_that_covers_it() {
        let dir = tempfile::tempdir().unwrap();
        let at = |i| LogId::new(CommittedLeaderId::new(1, 1), i);
        let floor = Arc::new(SnapshotFloor::new(Some(at(1))));
        let mut store = LogStore::<TypeConfig>::open(dir.path())
            .unwrap()
            .with_floor(Arc::clone(&floor));
        append(&store, (0..6).map(|i| entry(1, i)).collect());
        // Covered already: at once.
        store.purge(at(1)).await.unwrap();
        // Not covered: the purge waits until the snapshot is durable.
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let mut purging = store.clone();
        let task = tokio::spawn(async move {
            let r = purging.purge(at(3)).await;
            done_tx.send(()).unwrap();
            r
        });
        assert_eq!(indexes(&store).first(), Some(&(1, 2)));
        assert!(done_rx.try_recv().is_err(), "purged before the snapshot");
        floor.durable(Some(at(4)));
        task.await.unwrap().unwrap();
        assert_eq!(indexes(&store).first(), Some(&(1, 4)));
        // A failed install: the purge is refused, nothing changes.
        floor.failed();
        assert!(store.purge(at(5)).await.is_err());
        store.close();
        drop(store);
        let mut store = LogStore::<TypeConfig>::open(dir.path()).unwrap();
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(at(3)));
        assert_eq!(indexes(&store), vec![(1, 4), (1, 5)]);
    }
}
