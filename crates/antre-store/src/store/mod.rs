//! [`QueueStore`]: the message store of one durable queue.
//!
//! Writes go to one *current* segment through an in-memory buffer, so a burst
//! of appends costs one `write` and one `fsync` (group commit). Acks go to a
//! small in-memory queue and are written to the ack files in batches, and
//! fsync'd even more lazily, because losing an ack can only bring a message
//! back, never lose one.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use crate::format::{
    ack_path, encode_record_header, encode_segment_header, segment_path, MAX_PAYLOAD_LEN,
    RECORD_HEADER_LEN, SEGMENT_HEADER_LEN,
};
use crate::recovery::{recover, remove_if_exists};
use crate::segment::Segment;
use crate::{sync_dir, RecoveryStats, SegmentPosition, StoreError, StoreOptions};

mod acks;
mod buffer;
mod read;

use buffer::Buffer;
pub use buffer::WriteBuffers;

/// Rounds of records a segment's zeros written ahead are meant to take
/// (see [`QueueStore::zero_ahead`]).
const ZERO_AHEAD_ROUNDS: u64 = 8;
/// Most bytes of zeros written ahead of a segment's records.
const MAX_ZERO_AHEAD: u64 = 1 << 20;
/// Zeros are written up to a multiple of this (a file system block).
const ZERO_BLOCK: u64 = 4096;
/// The zeros one `write` call writes ahead at most.
static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

/// The segment being appended to.
struct Writer {
    segment: u32,
    /// Shared with the fsyncs of a sync in progress (a handle of its own
    /// would cost a `dup` and a `close` a round).
    file: Arc<File>,
    /// Bytes in the file (everything before `buf`).
    written: u64,
    /// Bytes of the file known to be fsync'd.
    synced: u64,
    /// Where the zeros written ahead of the records end (see
    /// [`QueueStore::zero_ahead`]); at or below `written` once records
    /// have overwritten them all (or none were written).
    zeroed: u64,
    /// Appended records not yet handed to the kernel.
    buf: Buffer,
    /// Most bytes the buffer held since the last sync.
    peak: usize,
}

impl Writer {
    fn len(&self) -> u64 {
        self.written + self.buf.len() as u64
    }
}

/// A former current segment whose last writes are not fsync'd yet. The next
/// `sync()` must cover it, or a confirm could be sent for a record that is
/// still only in the page cache.
struct Unsynced {
    segment: u32,
    file: Arc<File>,
}

/// One file an fsync is owed for.
struct SyncFile {
    segment: u32,
    file: Arc<File>,
    /// For the current segment: the length the fsync covers.
    upto: Option<u64>,
}

/// What a store calls when it has something to sync and had nothing before
/// (see [`QueueStore::set_on_dirty`]).
pub type DirtyHook = Arc<dyn Fn() + Send + Sync>;

/// The fsyncs a [`QueueStore::begin_sync`] left to do. Running them needs no
/// access to the store, so it can happen without the queue's lock.
pub struct PendingSync {
    dir: PathBuf,
    files: Vec<SyncFile>,
    /// Directories whose entries changed, parents first.
    sync_dirs: Vec<PathBuf>,
}

impl std::fmt::Debug for PendingSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingSync")
            .field("dir", &self.dir)
            .field("files", &self.files.len())
            .field("sync_dirs", &self.sync_dirs.len())
            .finish()
    }
}

impl PendingSync {
    /// The fsyncs of files a store outside this crate wrote (a stream's
    /// segment log), so it takes part in the same group commit: each file,
    /// then each directory whose entries changed. `dir` names the owner in
    /// errors.
    pub fn for_files(dir: PathBuf, files: Vec<File>, sync_dirs: Vec<PathBuf>) -> PendingSync {
        let files = files
            .into_iter()
            .enumerate()
            .map(|(i, file)| SyncFile {
                segment: i as u32,
                file: Arc::new(file),
                upto: None,
            })
            .collect();
        PendingSync {
            dir,
            files,
            sync_dirs,
        }
    }

    /// Whether there is nothing to fsync.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty() && self.sync_dirs.is_empty()
    }

    /// Performs the fsyncs.
    pub fn run(&self) -> Result<(), StoreError> {
        for f in &self.files {
            f.file
                .sync_data()
                .map_err(|e| StoreError::io("fsync", segment_path(&self.dir, f.segment), e))?;
        }
        for dir in &self.sync_dirs {
            sync_dir(dir)?;
        }
        Ok(())
    }
}

/// The message store of one durable queue; owns one directory.
///
/// See the [crate documentation](crate) for the on-disk format and the
/// durability contract. All methods are synchronous and the value has a single
/// owner (a queue behind a mutex); it is `Send` and `Sync`.
pub struct QueueStore {
    dir: PathBuf,
    opts: StoreOptions,
    segments: BTreeMap<u32, Segment>,
    writer: Option<Writer>,
    unsynced: Vec<Unsynced>,
    next_segment: u32,
    /// A segment file was created since the last directory fsync. Its
    /// directory entry must be durable before a confirm covers its records.
    dir_needs_sync: bool,
    /// The directory exists (it is created with the first segment).
    dir_exists: bool,
    /// The directory was just created: its entry in the parent must be
    /// durable before a sync may promise anything about files inside it.
    parent_needs_sync: bool,
    /// Ack files were created or segments deleted since the last directory
    /// fsync. Only affects the ack window, so it waits for the ack fsync.
    dir_acks_need_sync: bool,
    pending_acks: Vec<SegmentPosition>,
    acks_since_fsync: u64,
    live: u64,
    /// Most bytes the write buffer held in the last sync round: the size
    /// to give it at once when the next round starts.
    buffer_hint: usize,
    /// Small LRU of read handles for non-current segments, so reading a
    /// backlog does not cost an `open` per message nor hold a descriptor per
    /// segment. A mutex (not a `RefCell`) keeps `read(&self)` and `Sync`.
    read_files: Mutex<Vec<(u32, File)>>,
    poisoned: Option<String>,
    /// Called when the store goes from clean to dirty, so whoever syncs it
    /// can keep a list of dirty stores instead of polling every one.
    on_dirty: Option<DirtyHook>,
    /// The hook was called and no sync finished since.
    reported_dirty: bool,
    /// Set once the store was closed or abandoned, so `Drop` does nothing.
    closed: bool,
    /// A scratch store (see [`QueueStore::open_scratch`]).
    scratch: bool,
    #[cfg(test)]
    pub(crate) fail_next_flush: bool,
    /// Test shadow of what an fsync actually covered: file length at its
    /// last successful fsync (or at open). Kept apart from the bookkeeping
    /// above so the crash simulation does not trust the code it tests.
    #[cfg(test)]
    durable: std::collections::HashMap<PathBuf, u64>,
}

impl std::fmt::Debug for QueueStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueStore")
            .field("dir", &self.dir)
            .field("segments", &self.segments.len())
            .field("live", &self.live)
            .finish_non_exhaustive()
    }
}

impl QueueStore {
    /// Opens (creating if needed) the store in `dir` and recovers it.
    ///
    /// Every live (unacked) record is passed to `on_record` in append order,
    /// with its position and payload; the payload slice is only valid during
    /// the call, so recovery never holds the backlog in memory. Torn tails
    /// are truncated, corrupt records skipped; see [`RecoveryStats`].
    pub fn open(
        dir: &Path,
        opts: StoreOptions,
        on_record: impl FnMut(SegmentPosition, &[u8]),
    ) -> Result<(QueueStore, RecoveryStats), StoreError> {
        opts.validate()?;
        // A store that never held a record has no directory: it is made
        // with the first segment, so that declaring many durable queues
        // costs no file system work (and no fsync) per queue.
        let dir_exists = dir.is_dir();
        let rec = if dir_exists {
            recover(dir, on_record)?
        } else {
            crate::recovery::Recovered::empty()
        };
        #[allow(unused_mut)]
        let mut store = QueueStore {
            dir: dir.to_path_buf(),
            read_files: Mutex::new(Vec::with_capacity(opts.max_open_read_files)),
            opts,
            segments: rec.segments,
            writer: None,
            unsynced: Vec::new(),
            next_segment: rec.next_segment,
            dir_needs_sync: false,
            dir_exists,
            parent_needs_sync: false,
            dir_acks_need_sync: false,
            pending_acks: Vec::new(),
            acks_since_fsync: 0,
            live: rec.live,
            buffer_hint: 0,
            poisoned: None,
            on_dirty: None,
            reported_dirty: false,
            closed: false,
            scratch: false,
            #[cfg(test)]
            fail_next_flush: false,
            #[cfg(test)]
            durable: Default::default(),
        };
        #[cfg(test)]
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if let Ok(meta) = entry.metadata() {
                store.durable.insert(entry.path(), meta.len());
            }
        }
        Ok((store, rec.stats))
    }

    /// A scratch store in `dir`: where a broker pages out what must leave
    /// memory but need not survive a restart (transient messages, index
    /// pages). Whatever `dir` held is removed first. Records are readable,
    /// acks free whole segments as usual, but nothing is ever fsync'd, acks
    /// are never written to disk, and closing or dropping the store removes
    /// its directory.
    pub fn open_scratch(dir: &Path, opts: StoreOptions) -> Result<QueueStore, StoreError> {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::io("remove", dir, e)),
        }
        let (mut store, _) = QueueStore::open(dir, opts, |_, _| {})?;
        store.scratch = true;
        Ok(store)
    }

    /// Appends a record and returns its position.
    ///
    /// The record is buffered, not durable: call [`sync`](Self::sync) before
    /// confirming it. It is readable at once. Records are never appended to a
    /// segment that existed when the store was opened, so a position is never
    /// reused, even after a crash cut a tail off.
    pub fn append(&mut self, payload: &[u8]) -> Result<SegmentPosition, StoreError> {
        let result = self.append_record(payload);
        self.dirtied();
        result
    }

    /// Asks the store to call `hook` whenever it goes from having nothing to
    /// sync to having something (an append, an ack), and once now if it is
    /// dirty already. A syncer then visits only the stores that need it.
    pub fn set_on_dirty(&mut self, hook: DirtyHook) {
        self.on_dirty = Some(hook);
        self.reported_dirty = false;
        self.dirtied();
    }

    /// The hook [`QueueStore::set_on_dirty`] installed, to carry over to a
    /// store that replaces this one.
    pub fn on_dirty(&self) -> Option<DirtyHook> {
        self.on_dirty.clone()
    }

    /// Calls the dirty hook if the store just became dirty.
    fn dirtied(&mut self) {
        if self.reported_dirty || !self.is_dirty() {
            return;
        }
        if let Some(hook) = &self.on_dirty {
            self.reported_dirty = true;
            hook();
        }
    }

    fn append_record(&mut self, payload: &[u8]) -> Result<SegmentPosition, StoreError> {
        self.check_usable()?;
        let len = u32::try_from(payload.len())
            .ok()
            .filter(|&l| l <= MAX_PAYLOAD_LEN)
            .ok_or(StoreError::RecordTooLarge {
                len: payload.len(),
                max: MAX_PAYLOAD_LEN,
            })?;
        let rec_len = u64::from(RECORD_HEADER_LEN) + u64::from(len);

        // Roll over when this record would overflow a segment that already
        // holds records; an oversized record thus lands alone in a segment.
        if let Some(w) = &self.writer {
            let cur = w.len();
            if cur > u64::from(SEGMENT_HEADER_LEN)
                && cur + rec_len > u64::from(self.opts.segment_size)
            {
                self.retire_writer()?;
            }
        }
        let mut w = match self.writer.take() {
            Some(w) => w,
            None => self.start_segment()?,
        };
        let cap = self.opts.write_buffer_size as u64;
        let mut direct = rec_len >= cap;
        if !w.buf.is_empty() && (direct || w.buf.len() as u64 + rec_len > cap) {
            if let Err(e) = self.flush(&mut w) {
                return Err(self.write_failed(w, e));
            }
        }
        // Cannot truncate: rec_len < cap, a usize.
        let extra = rec_len as usize;
        let (hint, max) = (self.buffer_hint, self.opts.write_buffer_size);
        if !direct && !w.buf.reserve(extra, hint, max) {
            // The shared budget refused to grow the buffer: write out what
            // it holds; the floor then takes a small record, a larger one
            // is written directly.
            if let Err(e) = self.flush(&mut w) {
                return Err(self.write_failed(w, e));
            }
            direct = !w.buf.reserve(extra, hint, max);
        }
        let offset = w.len();
        let header = encode_record_header(payload);
        if direct {
            // A large body is written straight from the caller's slice
            // instead of being copied into the buffer first.
            let res = w.file.write_all_at(&header, offset).and_then(|()| {
                w.file
                    .write_all_at(payload, offset + u64::from(RECORD_HEADER_LEN))
            });
            if let Err(e) = res {
                return Err(self.write_failed(w, e));
            }
            w.written += rec_len;
        } else {
            w.buf.push(&header);
            w.buf.push(payload);
        }
        let segment = w.segment;
        // Cannot fail: segment_size and MAX_PAYLOAD_LEN keep offsets < 2^31.
        let offset32 = offset as u32;
        if let Some(seg) = self.segments.get_mut(&segment) {
            seg.index.push(offset32);
            seg.len = offset + rec_len;
        }
        self.writer = Some(w);
        self.live += 1;
        Ok(SegmentPosition {
            segment,
            offset: offset32,
        })
    }

    /// Makes every record appended so far durable (group commit).
    ///
    /// Writes out the buffer, fsyncs each segment that has unsynced bytes
    /// (normally just the current one) and, after a new segment was created,
    /// the directory. When nothing was appended since the last call it does
    /// no I/O for messages. Buffered acks are handed to the kernel as well,
    /// but a failure there is only logged: it cannot endanger a message.
    ///
    /// When this returns `Ok`, every record appended before the call survives
    /// a crash or power loss until acked. On `Err`, records appended since the
    /// last successful sync may be lost; check with [`contains`](Self::contains).
    pub fn sync(&mut self) -> Result<(), StoreError> {
        let pending = self.begin_sync()?;
        let result = pending.run();
        self.finish_sync(pending, result)
    }

    /// The first half of [`sync`](Self::sync), for callers that must not
    /// hold the store while the disk works: hands buffered records to the
    /// kernel and returns the fsyncs still owed. Run them with
    /// [`PendingSync::run`] (no access to the store needed, so the queue's
    /// lock can be released meanwhile, letting publishers append to the next
    /// batch), then report the result to [`finish_sync`](Self::finish_sync).
    /// Records appended before `begin_sync` are durable once `run` succeeds.
    pub fn begin_sync(&mut self) -> Result<PendingSync, StoreError> {
        self.check_usable()?;
        let mut files = Vec::new();
        if let Some(mut w) = self.writer.take() {
            if let Err(e) = self.flush(&mut w) {
                return Err(self.write_failed(w, e));
            }
            // The buffer is empty now. A store gives it back unless it is
            // busy and the shared budget far from spent: thousands of
            // durable queues must not each keep a buffer they filled once.
            self.buffer_hint = w.peak;
            if w.buf.should_release(w.peak) {
                w.buf.release();
            }
            w.peak = 0;
            if w.synced < w.written {
                self.zero_ahead(&mut w);
                files.push(SyncFile {
                    segment: w.segment,
                    file: Arc::clone(&w.file),
                    upto: Some(w.written),
                });
            }
            self.writer = Some(w);
        }
        for u in std::mem::take(&mut self.unsynced) {
            files.push(SyncFile {
                segment: u.segment,
                file: u.file,
                upto: None,
            });
        }
        let mut sync_dirs = Vec::new();
        if self.parent_needs_sync {
            self.parent_needs_sync = false;
            if let Some(parent) = self.dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync_dirs.push(parent.to_path_buf());
            }
        }
        if self.dir_needs_sync {
            self.dir_needs_sync = false;
            // The same fsync makes earlier unlinks and ack-file creations durable.
            self.dir_acks_need_sync = false;
            sync_dirs.push(self.dir.clone());
        }
        if let Err(e) = self.write_pending_acks() {
            tracing::warn!(error = %e, "could not write acks; they stay buffered and are retried");
        }
        Ok(PendingSync {
            dir: self.dir.clone(),
            files,
            sync_dirs,
        })
    }

    /// The last half of [`sync`](Self::sync): records what `run` achieved.
    /// A failed fsync poisons the store (nothing more can be promised).
    pub fn finish_sync(
        &mut self,
        pending: PendingSync,
        result: Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        if pending.dir != self.dir {
            // Begun on another store (its owner swapped stores meanwhile):
            // nothing of this one was synced.
            return result;
        }
        if let Err(e) = result {
            return Err(self.poison(e));
        }
        for f in pending.files {
            if let (Some(upto), Some(w)) = (f.upto, self.writer.as_mut()) {
                if w.segment == f.segment && w.synced < upto {
                    w.synced = upto;
                }
            }
            #[cfg(test)]
            self.note_durable_len(segment_path(&self.dir, f.segment), f.upto, &f.file);
        }
        // What arrived while the fsyncs ran is dirt of its own.
        self.reported_dirty = false;
        self.dirtied();
        Ok(())
    }

    /// True if [`sync`](Self::sync) has work to do: appended records that are
    /// not fsync'd, or acks that are still only in memory. Cheap (no I/O).
    pub fn is_dirty(&self) -> bool {
        self.writer.as_ref().is_some_and(|w| w.synced < w.len())
            || !self.unsynced.is_empty()
            || self.dir_needs_sync
            || self.parent_needs_sync
            || !self.pending_acks.is_empty()
    }

    /// True if `pos` names a live record. After an `Err` from
    /// [`append`](Self::append) or [`sync`](Self::sync), this tells which
    /// recently appended records were discarded.
    pub fn contains(&self, pos: SegmentPosition) -> bool {
        self.segments.get(&pos.segment).is_some_and(|s| {
            pos.offset >= SEGMENT_HEADER_LEN
                && u64::from(pos.offset) < s.len
                && s.index.is_live(pos.offset)
        })
    }

    /// Number of live (appended, not acked) records.
    pub fn live_records(&self) -> u64 {
        self.live
    }

    /// Bytes the store occupies on disk (segments and ack files), counting
    /// buffered bytes about to be written.
    pub fn disk_bytes(&self) -> u64 {
        self.segments.values().map(|s| s.len + s.ack_len).sum()
    }

    /// Bytes the write buffer holds allocated now (counted in the shared
    /// [`WriteBuffers`] budget, if the store has one).
    pub fn buffer_capacity(&self) -> usize {
        self.writer.as_ref().map_or(0, |w| w.buf.capacity())
    }

    /// Number of segment files on disk.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// The queue directory this store owns.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Acks every live record at once (queue purge) and returns how many.
    ///
    /// Deletes every segment, including the current one (unsynced records are
    /// simply dropped), and fsyncs the directory, so purged records do not come
    /// back even after power loss.
    pub fn purge(&mut self) -> Result<u64, StoreError> {
        self.check_usable()?;
        let purged = self.live;
        self.writer = None;
        self.unsynced.clear();
        self.pending_acks.clear();
        self.read_files
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        let numbers: Vec<u32> = self.segments.keys().copied().collect();
        self.segments.clear();
        self.live = 0;
        let mut first_err = None;
        for n in numbers {
            // Keep going on error so one bad file does not leave the rest.
            for path in [segment_path(&self.dir, n), ack_path(&self.dir, n)] {
                if let Err(e) = remove_if_exists(&path) {
                    first_err.get_or_insert(e);
                }
            }
        }
        if self.dir_exists {
            sync_dir(&self.dir)?;
        }
        self.dir_needs_sync = false;
        self.dir_acks_need_sync = false;
        match first_err {
            Some(e) => Err(e),
            None => Ok(purged),
        }
    }

    /// Flushes and fsyncs everything (messages, acks, directory) and closes
    /// the store. After a clean close no acked record comes back. Dropping
    /// the store does the same but can only log errors.
    pub fn close(mut self) -> Result<(), StoreError> {
        if self.scratch {
            self.closed = true;
            return self.remove_dir();
        }
        let res = self.shutdown();
        self.closed = true;
        res
    }

    /// Deletes the queue's directory and everything in it (queue deleted).
    pub fn delete_all(mut self) -> Result<(), StoreError> {
        self.closed = true;
        self.remove_dir()
    }

    fn remove_dir(&mut self) -> Result<(), StoreError> {
        self.writer = None;
        self.unsynced.clear();
        self.segments.clear();
        self.read_files
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        match std::fs::remove_dir_all(&self.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(StoreError::io("remove", &self.dir, e)),
        }
        if self.scratch {
            return Ok(());
        }
        match self.dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            Some(parent) => sync_dir(parent),
            None => Ok(()),
        }
    }

    fn shutdown(&mut self) -> Result<(), StoreError> {
        self.sync()?;
        if let Some(mut w) = self.writer.take() {
            // Not fsync'd: a crash before the kernel writes the new length
            // back leaves zeros, which recovery removes as it always does.
            self.trim_zeros(&mut w);
            self.writer = Some(w);
        }
        self.sync_acks()
    }

    /// Writes zeros ahead of the records of the current segment, so that
    /// the fsyncs of the next rounds only write data.
    ///
    /// An fdatasync of a file that grew must also write the file's new size
    /// and block allocation back; one whose records overwrite blocks that
    /// already exist writes the data alone. Measured on this project's ext4
    /// (three writers, 40 KB a round): 420 µs a round appending, 230 µs
    /// overwriting zeros. A quorum queue's commit waits for two such
    /// fsyncs in a row, and a confirm of a classic queue for one.
    ///
    /// The zeros reach a round's fsync with its records (this runs before
    /// them), so the round that extends pays the old price once for about
    /// [`ZERO_AHEAD_ROUNDS`] rounds. How far ahead follows the round's
    /// size, so a quiet queue keeps a few KiB of zeros and a busy one at
    /// most [`MAX_ZERO_AHEAD`]; never past the segment's size. Recovery
    /// already treats zeros after the last record as tail, and a full or
    /// closed segment gives them back. A failed write of zeros (a full
    /// disk) costs nothing but the speed-up: the records still append.
    ///
    /// Every byte zeroed ahead reaches the disk twice, as zeros and then
    /// as records. For a round too large for the cap to hold
    /// [`ZERO_AHEAD_ROUNDS`] of it, that is more than the file's growth
    /// costs: a stream's entries, a megabyte a round, wrote its log half
    /// as much again as zeros (three nodes wrote 8 bytes a byte published
    /// over the stream protocol, the disk their bound). Such rounds
    /// append without zeros.
    fn zero_ahead(&mut self, w: &mut Writer) {
        if self.scratch {
            return;
        }
        let round = w.written - w.synced;
        if round > MAX_ZERO_AHEAD / ZERO_AHEAD_ROUNDS {
            return;
        }
        let from = w.zeroed.max(w.written);
        if from - w.written >= round {
            return;
        }
        let want = round.saturating_mul(ZERO_AHEAD_ROUNDS).min(MAX_ZERO_AHEAD);
        let end = (w.written + want)
            .next_multiple_of(ZERO_BLOCK)
            .min(u64::from(self.opts.segment_size));
        let mut at = from;
        while at < end {
            let n = (end - at).min(ZEROS.len() as u64);
            // Cannot truncate: n <= ZEROS.len(), a usize.
            if let Err(e) = w.file.write_all_at(&ZEROS[..n as usize], at) {
                tracing::debug!(dir = %self.dir.display(), error = %e,
                    "could not write zeros ahead of the records; appending instead");
                break;
            }
            at += n;
        }
        w.zeroed = at;
    }

    /// Cuts the zeros written ahead off a segment no longer appended to.
    fn trim_zeros(&self, w: &mut Writer) {
        if w.zeroed <= w.written {
            return;
        }
        if let Err(e) = w.file.set_len(w.written) {
            // Recovery removes them anyway.
            tracing::debug!(dir = %self.dir.display(), error = %e,
                "could not cut the zeros after the last record");
            return;
        }
        w.zeroed = w.written;
    }

    fn check_usable(&self) -> Result<(), StoreError> {
        match &self.poisoned {
            None => Ok(()),
            Some(cause) => Err(StoreError::Poisoned {
                dir: self.dir.clone(),
                cause: cause.clone(),
            }),
        }
    }

    pub(crate) fn poison(&mut self, e: StoreError) -> StoreError {
        tracing::error!(dir = %self.dir.display(), error = %e,
            "fsync failed; the store refuses further writes until reopened");
        self.poisoned = Some(e.to_string());
        e
    }

    fn start_segment(&mut self) -> Result<Writer, StoreError> {
        if !self.dir_exists {
            std::fs::create_dir_all(&self.dir)
                .map_err(|e| StoreError::io("create", &self.dir, e))?;
            self.dir_exists = true;
            self.parent_needs_sync = true;
        }
        loop {
            let n = self.next_segment;
            self.next_segment =
                n.checked_add(1)
                    .ok_or_else(|| StoreError::SegmentNumbersExhausted {
                        dir: self.dir.clone(),
                    })?;
            let path = segment_path(&self.dir, n);
            // create_new: a number is never reused, and a stray file with this
            // name (which recovery would have seen) is never overwritten.
            let file = match OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(StoreError::io("create segment", &path, e)),
            };
            self.dir_needs_sync = true;
            // Grown as records come: a store that writes little never holds
            // a full write buffer (see begin_sync).
            let mut buf = Buffer::new(self.opts.write_buffers.clone());
            buf.push(&encode_segment_header(n));
            self.segments.insert(
                n,
                Segment {
                    len: u64::from(SEGMENT_HEADER_LEN),
                    ..Segment::default()
                },
            );
            return Ok(Writer {
                segment: n,
                file: Arc::new(file),
                written: 0,
                synced: 0,
                zeroed: 0,
                buf,
                peak: 0,
            });
        }
    }

    fn flush(&mut self, w: &mut Writer) -> io::Result<()> {
        if w.buf.is_empty() {
            return Ok(());
        }
        #[cfg(test)]
        if std::mem::take(&mut self.fail_next_flush) {
            // Fault injection: half the buffer reaches the file, then ENOSPC,
            // like a write that ran out of space part-way.
            let half = w.buf.len() / 2;
            w.file.write_all_at(&w.buf[..half], w.written)?;
            return Err(io::Error::from_raw_os_error(28));
        }
        w.file.write_all_at(&w.buf, w.written)?;
        w.written += w.buf.len() as u64;
        w.peak = w.peak.max(w.buf.len());
        w.buf.clear();
        if self.scratch {
            // Never synced, so nothing else would give the buffer back:
            // scratch writes come in bursts (a page, a run of bodies).
            self.buffer_hint = w.peak;
            w.buf.release();
        }
        if let Some(seg) = self.segments.get_mut(&w.segment) {
            seg.index.flushed();
        }
        Ok(())
    }

    /// Cleans up after a failed write to the current segment: cut the file
    /// back to its last good length (so no partial record sits there),
    /// forget the records that did not make it, and retire the segment so
    /// their offsets are never reused by later records.
    fn write_failed(&mut self, mut w: Writer, e: io::Error) -> StoreError {
        let path = segment_path(&self.dir, w.segment);
        let good = w.written;
        w.buf.clear();
        tracing::warn!(path = %path.display(), offset = good, error = %e,
            "write failed; rolling the segment back to its last good offset");
        w.zeroed = good;
        if let Err(te) = w.file.set_len(good) {
            // Recovery treats whatever follows the last good record as a
            // torn tail, so a failed truncate cannot corrupt anything either.
            tracing::warn!(path = %path.display(), error = %te, "could not truncate after failed write");
        }
        if let Some(seg) = self.segments.get_mut(&w.segment) {
            // Offsets fit in u32 (see append).
            let dropped = seg.index.truncate_from(good as u32);
            self.live -= u64::from(dropped);
            seg.len = good.max(u64::from(SEGMENT_HEADER_LEN));
        }
        let segment = w.segment;
        self.pending_acks
            .retain(|p| p.segment != segment || u64::from(p.offset) < good);
        if good < u64::from(SEGMENT_HEADER_LEN) {
            // Not even the header made it: the segment holds nothing.
            drop(w);
            if let Some(seg) = self.segments.remove(&segment) {
                self.live -= u64::from(seg.index.live());
            }
            if let Err(re) = remove_if_exists(&path) {
                tracing::warn!(error = %re, "could not remove empty segment");
            }
        } else if let Err(de) = self.park(w) {
            tracing::warn!(error = %de, "could not delete a fully acked segment");
        }
        StoreError::io("write segment", path, e)
    }

    /// Ends appends to the current segment (rollover).
    fn retire_writer(&mut self) -> Result<(), StoreError> {
        let Some(mut w) = self.writer.take() else {
            return Ok(());
        };
        if let Err(e) = self.flush(&mut w) {
            return Err(self.write_failed(w, e));
        }
        self.park(w)
    }

    /// Keeps a retired writer's file for the next `sync()` if it has unsynced
    /// bytes, or deletes the segment if nothing in it is live.
    fn park(&mut self, mut w: Writer) -> Result<(), StoreError> {
        let live = self.segments.get(&w.segment).map_or(0, |s| s.index.live());
        if live == 0 {
            let n = w.segment;
            drop(w);
            return self.delete_segment(n);
        }
        // Not fsync'd for: recovery removes zeros after the last record.
        self.trim_zeros(&mut w);
        if w.synced < w.written {
            self.unsynced.push(Unsynced {
                segment: w.segment,
                file: w.file,
            });
        }
        Ok(())
    }

    /// Removes a segment with no live records from memory and disk.
    fn delete_segment(&mut self, n: u32) -> Result<(), StoreError> {
        if let Some(seg) = self.segments.remove(&n) {
            self.live -= u64::from(seg.index.live());
        }
        self.unsynced.retain(|u| u.segment != n);
        self.pending_acks.retain(|p| p.segment != n);
        self.read_files
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|(s, _)| *s != n);
        // Segment first, ack file second: if we stop in between, recovery
        // finds an orphan ack file and removes it. The other order could
        // leave a segment without its acks, bringing back long-acked records.
        remove_if_exists(&segment_path(&self.dir, n))?;
        remove_if_exists(&ack_path(&self.dir, n))?;
        self.dir_acks_need_sync = true;
        Ok(())
    }

    #[cfg(test)]
    fn note_durable_len(&mut self, path: PathBuf, upto: Option<u64>, file: &File) {
        match upto {
            Some(len) => {
                let known = self.durable.get(&path).copied().unwrap_or(0);
                self.durable.insert(path, known.max(len));
            }
            None => self.note_durable(path, file),
        }
    }

    #[cfg(test)]
    fn note_durable(&mut self, path: PathBuf, file: &File) {
        if let Ok(meta) = file.metadata() {
            self.durable.insert(path, meta.len());
        }
    }

    /// Test hook: stop like `kill -9` (buffers lost, nothing flushed) and
    /// report every store file with the length its last fsync covered (0 if
    /// never fsync'd), so a test can also simulate power loss by cutting
    /// files back.
    #[cfg(test)]
    pub(crate) fn crash(mut self) -> Vec<(PathBuf, u64)> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let path = entry.path();
            let durable = self.durable.get(&path).copied().unwrap_or(0);
            files.push((path, durable));
        }
        self.closed = true;
        files
    }
}

impl Drop for QueueStore {
    fn drop(&mut self) {
        if self.closed {
            return;
        }
        if self.scratch {
            if let Err(e) = self.remove_dir() {
                tracing::warn!(dir = %self.dir.display(), error = %e, "could not remove scratch store");
            }
            return;
        }
        if self.poisoned.is_some() {
            return;
        }
        if let Err(e) = self.shutdown() {
            tracing::warn!(dir = %self.dir.display(), error = %e, "store dropped without a clean close");
        }
    }
}
