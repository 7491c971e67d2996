//! A stream's log on disk: segment files of osiris chunks, as RabbitMQ lays
//! them out (`<first offset, 20 digits>.segment`, each starting with
//! `OSIL` and version 1, then whole chunks).
//!
//! Memory stays flat whatever the backlog: the log keeps one small record
//! per segment (first and next offset, first and last timestamp, size),
//! never one per message or chunk. Finding an offset or a time inside a
//! segment walks its chunk headers on disk (48 bytes each, one read per
//! chunk of up to a thousand messages).
//!
//! Writes: records gather in an open chunk in memory; the chunk is written
//! whole (one `write`) when it is full, when a publisher's batch ends, or
//! when the syncer starts a group commit. Only written chunks are visible
//! to readers, so a reader never sees a record whose offset could change.
//! Durability: the syncer fsyncs the segments written since its last round
//! (and the directory, when a segment was created) before any confirm for
//! their records goes out. Recovery checks every chunk of the last segment
//! against its CRC and truncates a torn tail; older segments, which were
//! complete and synced before the next one was started, are walked by
//! their headers only.

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use antre_stream_proto::chunk::{self, ChunkBuilder, ChunkHeader, HEADER_SIZE, SEGMENT_HEADER};
use antre_stream_proto::chunk::{Chunk, Entries, Entry, TrackingEntry, MAX_ENTRIES};
use bytes::{Bytes, BytesMut};

/// The most bytes of entries a chunk gets (unless one record alone is
/// larger): a chunk as the stream protocol delivers it (header and
/// entries) then fits a Deliver frame of 1 MiB, the frame_max clients and
/// brokers use by default, with room for the frame's own fields.
pub(crate) const CHUNK_TARGET: usize = (1 << 20) - 512;
/// A segment file's header size.
pub(crate) const SEGMENT_START: u64 = SEGMENT_HEADER.len() as u64;
/// The epoch antre writes: a single node never changes leader.
const EPOCH: u64 = 1;

/// What the log keeps in memory about one segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SegmentMeta {
    /// The offset of its first record (its file's name).
    pub first_offset: u64,
    /// The offset after its last record.
    pub next_offset: u64,
    /// Timestamp of its first chunk (ms).
    pub first_timestamp: i64,
    /// Timestamp of its last chunk (ms).
    pub last_timestamp: i64,
    /// Bytes written, header included.
    pub size: u64,
    /// Chunks in it.
    pub chunks: u64,
    /// Where its last chunk of records starts.
    pub last_chunk_pos: u64,
    /// The first offset of its last chunk of records, if it has one.
    pub last_chunk_id: Option<u64>,
}

impl SegmentMeta {
    fn empty(first_offset: u64) -> SegmentMeta {
        SegmentMeta {
            first_offset,
            next_offset: first_offset,
            first_timestamp: 0,
            last_timestamp: 0,
            size: SEGMENT_START,
            chunks: 0,
            last_chunk_pos: SEGMENT_START,
            last_chunk_id: None,
        }
    }

    fn add(&mut self, pos: u64, h: &ChunkHeader) {
        if self.chunks == 0 {
            self.first_timestamp = h.timestamp;
        }
        self.last_timestamp = h.timestamp;
        self.next_offset = h.next_offset();
        self.chunks += 1;
        if h.chunk_type == chunk::TYPE_USER {
            self.last_chunk_pos = pos;
            self.last_chunk_id = Some(h.chunk_id);
        }
        self.size = pos + h.total_size();
    }
}

/// The file name of the segment whose first offset is `first`.
pub(crate) fn segment_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}.segment"))
}

/// What the stream protocol tracks in a stream: named consumers' stored
/// offsets and named publishers' last publishing ids (for deduplication).
/// Kept as osiris keeps it: publishers' sequences in the trailer of the
/// chunk that holds their messages (so a sequence is durable exactly when
/// its messages are), offsets in tracking chunks, and a snapshot of both
/// at the start of each segment, so recovery reads only the last segment.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Tracking {
    pub offsets: HashMap<String, u64>,
    pub sequences: HashMap<String, u64>,
}

impl Tracking {
    fn is_empty(&self) -> bool {
        self.offsets.is_empty() && self.sequences.is_empty()
    }

    fn apply(&mut self, entries: Vec<TrackingEntry>) {
        for e in entries {
            match e {
                TrackingEntry::Sequence { id, sequence, .. } => {
                    self.sequences.insert(id, sequence);
                }
                TrackingEntry::Offset { id, offset } => {
                    self.offsets.insert(id, offset);
                }
            }
        }
    }

    fn snapshot(&self, chunk_id: u64) -> Vec<u8> {
        let mut entries: Vec<TrackingEntry> = self
            .sequences
            .iter()
            .map(|(id, s)| TrackingEntry::Sequence {
                id: id.clone(),
                chunk_id,
                sequence: *s,
            })
            .collect();
        entries.extend(self.offsets.iter().map(|(id, o)| TrackingEntry::Offset {
            id: id.clone(),
            offset: *o,
        }));
        let mut raw = BytesMut::new();
        TrackingEntry::encode_all(&entries, &mut raw);
        raw.to_vec()
    }
}

/// What recovery found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Recovered {
    /// Segments kept.
    pub segments: usize,
    /// Chunks in them.
    pub chunks: u64,
    /// Bytes cut off a torn tail.
    pub bytes_truncated: u64,
}

/// The segment log of one stream.
#[derive(Debug)]
pub(crate) struct Log {
    dir: PathBuf,
    pub segments: VecDeque<SegmentMeta>,
    /// The last segment, open for appending.
    active: Option<File>,
    /// Segments finished since the last sync, still owed an fsync.
    unsynced: Vec<File>,
    /// Segment files were created or removed since the last sync.
    dir_dirty: bool,
    open: ChunkBuilder,
    /// Publishers' last sequences among the open chunk's records.
    open_writers: HashMap<String, u64>,
    /// Stored offsets and publishers' sequences, as written.
    pub tracking: Tracking,
    /// The offset after the last written record.
    pub written_next: u64,
    /// Chunks written since the log was opened.
    written_chunks: u64,
    /// Chunks a finished sync covered.
    synced_chunks: u64,
    /// Chunk counts the syncs under way will cover, oldest first.
    syncing: VecDeque<u64>,
    max_segment_size: u64,
    /// Bytes of each chunk's Bloom filter.
    filter_size: u8,
    /// A failed write: the log refuses everything until restarted (and
    /// recovery truncates what the failure left).
    failed: Option<String>,
    /// Counts [`Log::reset`]s: readers of an older generation hold files
    /// that are gone.
    pub generation: u64,
}

fn io_err(what: &str, path: &Path, e: io::Error) -> String {
    format!("{what} {}: {e}", path.display())
}

impl Log {
    /// Opens (or creates) the log in `dir`, recovering its segments.
    pub fn open(dir: &Path, max_segment_size: u64) -> Result<(Log, Recovered), String> {
        let created = !dir.exists();
        std::fs::create_dir_all(dir).map_err(|e| io_err("create", dir, e))?;
        if created {
            if let Some(parent) = dir.parent() {
                antre_store::sync_dir(parent).map_err(|e| e.to_string())?;
            }
        }
        let mut firsts: Vec<u64> = std::fs::read_dir(dir)
            .map_err(|e| io_err("list", dir, e))?
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.strip_suffix(".segment")?.parse().ok()
            })
            .collect();
        firsts.sort_unstable();
        let mut stats = Recovered::default();
        let mut segments = VecDeque::new();
        for (i, first) in firsts.iter().enumerate() {
            let last = i + 1 == firsts.len();
            let path = segment_path(dir, *first);
            let (meta, file_len) = scan(&path, *first, last)?;
            if meta.size < file_len {
                if last {
                    truncate(&path, meta.size)?;
                    stats.bytes_truncated += file_len - meta.size;
                    tracing::warn!(segment = %path.display(), bytes = file_len - meta.size, "truncated a torn stream tail");
                } else {
                    tracing::error!(segment = %path.display(), "stream segment has unreadable chunks past {}; skipping them", meta.size);
                }
            }
            if meta.chunks == 0 && !last {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            stats.chunks += meta.chunks;
            segments.push_back(meta);
        }
        stats.segments = segments.len();
        let written_next = segments.back().map_or(0, |s| s.next_offset);
        let tracking = match segments.iter().rev().find(|s| s.chunks > 0) {
            Some(s) => read_tracking(&segment_path(dir, s.first_offset), s.size)?,
            None => Tracking::default(),
        };
        let active = match segments.back() {
            Some(s) => {
                let path = segment_path(dir, s.first_offset);
                Some(open_append(&path)?)
            }
            None => None,
        };
        let log = Log {
            dir: dir.to_owned(),
            segments,
            active,
            unsynced: Vec::new(),
            dir_dirty: false,
            open: ChunkBuilder::new(),
            open_writers: HashMap::new(),
            tracking,
            written_next,
            written_chunks: 0,
            synced_chunks: 0,
            syncing: VecDeque::new(),
            max_segment_size,
            filter_size: 0,
            failed: None,
            generation: 0,
        };
        Ok((log, stats))
    }

    /// The directory.
    #[cfg(test)]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Fails if an earlier write failed.
    pub fn check(&self) -> Result<(), String> {
        match &self.failed {
            Some(why) => Err(why.clone()),
            None => Ok(()),
        }
    }

    /// Adds a record to the open chunk; returns whether that wrote a chunk
    /// (the chunk was full).
    #[cfg(test)]
    pub fn append(&mut self, record: &[u8], now: i64) -> Result<bool, String> {
        self.append_from(record, None, None, now)
    }

    /// Adds a record, from a named publisher with its publishing id (the
    /// chunk that holds it records the id in its trailer) or not, with its
    /// filter value (which goes into the chunk's bloom filter) or not.
    pub fn append_from(
        &mut self,
        record: &[u8],
        writer: Option<(&str, u64)>,
        filter_value: Option<&str>,
        now: i64,
    ) -> Result<bool, String> {
        self.check()?;
        // The entry's 4-byte length counts too.
        if !self.open.has_room() || self.open.data_len() + 4 + record.len() > CHUNK_TARGET {
            self.seal(now)?;
        }
        self.open
            .push_filtered(record, filter_value.map(str::as_bytes));
        if let Some((name, sequence)) = writer {
            self.open_writers.insert(name.to_owned(), sequence);
        }
        if self.open.data_len() + 4 >= CHUNK_TARGET || self.open.records() as usize >= MAX_ENTRIES {
            return self.seal(now);
        }
        Ok(false)
    }

    /// Sets the size of the Bloom filter of the chunks written from now on.
    pub fn set_filter_size(&mut self, bytes: u8) {
        self.filter_size = bytes;
        if self.open.is_empty() {
            self.open = ChunkBuilder::with_filter_size(bytes);
        }
    }

    /// Changes the size at which the active segment rolls over.
    pub fn set_max_segment_size(&mut self, bytes: u64) {
        self.max_segment_size = bytes;
    }

    /// A named publisher's last publishing id, open chunk included.
    pub fn last_sequence(&self, writer: &str) -> Option<u64> {
        self.open_writers
            .get(writer)
            .or_else(|| self.tracking.sequences.get(writer))
            .copied()
    }

    /// Records appended and not written yet.
    pub fn open_records(&self) -> u32 {
        self.open.records()
    }

    /// Writes the open chunk, if it holds anything; returns whether it did.
    pub fn seal(&mut self, now: i64) -> Result<bool, String> {
        self.check()?;
        if self.open.is_empty() {
            return Ok(false);
        }
        let builder = std::mem::replace(
            &mut self.open,
            ChunkBuilder::with_filter_size(self.filter_size),
        );
        let writers = std::mem::take(&mut self.open_writers);
        let chunk_id = self.written_next;
        let mut trailer = BytesMut::new();
        let entries: Vec<TrackingEntry> = writers
            .iter()
            .map(|(id, sequence)| TrackingEntry::Sequence {
                id: id.clone(),
                chunk_id,
                sequence: *sequence,
            })
            .collect();
        TrackingEntry::encode_all(&entries, &mut trailer);
        let (header, raw) = builder.finish_with_trailer(chunk_id, now, EPOCH, &trailer);
        if let Err(e) = self.write_chunk(&header, &raw) {
            self.failed = Some(e.clone());
            return Err(e);
        }
        self.tracking.sequences.extend(writers);
        Ok(true)
    }

    /// Stores a named consumer's offset: the open chunk is written first,
    /// then a tracking chunk with the offset. Returns whether a user chunk
    /// was written on the way.
    pub fn store_offset(&mut self, reference: &str, offset: u64, now: i64) -> Result<bool, String> {
        let wrote = self.seal(now)?;
        let entry = TrackingEntry::Offset {
            id: reference.to_owned(),
            offset,
        };
        let mut raw = BytesMut::new();
        TrackingEntry::encode_all(&[entry], &mut raw);
        let (header, chunk) = chunk::tracking_chunk(
            chunk::TYPE_TRACKING_DELTA,
            &raw,
            self.written_next,
            now,
            EPOCH,
        );
        if let Err(e) = self.write_chunk(&header, &chunk) {
            self.failed = Some(e.clone());
            return Err(e);
        }
        self.tracking.offsets.insert(reference.to_owned(), offset);
        Ok(wrote)
    }

    fn write_chunk(&mut self, header: &ChunkHeader, raw: &Bytes) -> Result<(), String> {
        let roll = match self.segments.back() {
            None => true,
            Some(s) => s.chunks > 0 && s.size + raw.len() as u64 > self.max_segment_size,
        };
        if roll || self.active.is_none() {
            self.roll(header.chunk_id)?;
            if !self.tracking.is_empty() {
                // Each segment starts with the tracking state, so recovery
                // needs only the last segment.
                let snapshot = self.tracking.snapshot(header.chunk_id);
                let (h, raw) = chunk::tracking_chunk(
                    chunk::TYPE_TRACKING_SNAPSHOT,
                    &snapshot,
                    header.chunk_id,
                    header.timestamp,
                    EPOCH,
                );
                self.append_to_active(&h, &raw)?;
            }
        }
        self.append_to_active(header, raw)
    }

    fn append_to_active(&mut self, header: &ChunkHeader, raw: &Bytes) -> Result<(), String> {
        let path = segment_path(&self.dir, header.chunk_id);
        let (Some(file), Some(meta)) = (self.active.as_mut(), self.segments.back_mut()) else {
            return Err(format!("no segment to write {}", path.display()));
        };
        let pos = meta.size;
        self.written_chunks += 1;
        file.write_all(raw)
            .map_err(|e| io_err("write", &segment_path(&self.dir, meta.first_offset), e))?;
        meta.add(pos, header);
        self.written_next = header.next_offset();
        Ok(())
    }

    /// Starts a new segment whose first chunk is `first`.
    fn roll(&mut self, first: u64) -> Result<(), String> {
        if let Some(old) = self.active.take() {
            self.unsynced.push(old);
        }
        // A recovered segment left empty by a torn first chunk is reused.
        if self.segments.back().is_some_and(|s| s.chunks == 0) {
            if let Some(s) = self.segments.pop_back() {
                let _ = std::fs::remove_file(segment_path(&self.dir, s.first_offset));
            }
        }
        let path = segment_path(&self.dir, first);
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .read(true)
            .open(&path)
            .map_err(|e| io_err("create", &path, e))?;
        file.write_all(&SEGMENT_HEADER)
            .map_err(|e| io_err("write", &path, e))?;
        self.active = Some(file);
        self.segments.push_back(SegmentMeta::empty(first));
        self.dir_dirty = true;
        Ok(())
    }

    /// The offset the next record appended gets (open chunk included).
    pub fn next_offset(&self) -> u64 {
        self.written_next + u64::from(self.open.records())
    }

    /// Empties the log, which goes on at offset `first`: a replica that
    /// installs its group's snapshot replaces what it held. The files go
    /// now; readers on them move on to what is written next.
    pub fn reset(&mut self, first: u64) -> Result<(), String> {
        self.active = None;
        self.unsynced.clear();
        for s in self.segments.drain(..) {
            let path = segment_path(&self.dir, s.first_offset);
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(io_err("remove", &path, e));
                }
                _ => {}
            }
        }
        self.open = ChunkBuilder::with_filter_size(self.filter_size);
        self.open_writers.clear();
        self.tracking = Tracking::default();
        self.written_next = first;
        self.dir_dirty = true;
        self.failed = None;
        self.generation += 1;
        Ok(())
    }

    /// Writes a whole chunk as another replica wrote it (header and body),
    /// after the open chunk; it must start at the log's next offset.
    pub fn write_raw_chunk(&mut self, raw: &Bytes, now: i64) -> Result<(), String> {
        self.seal(now)?;
        let header = ChunkHeader::decode(raw).map_err(|e| e.to_string())?;
        if header.chunk_id != self.written_next {
            return Err(format!(
                "a chunk at offset {} where the log is at {}",
                header.chunk_id, self.written_next
            ));
        }
        if let Err(e) = self.write_chunk(&header, raw) {
            self.failed = Some(e.clone());
            return Err(e);
        }
        Ok(())
    }

    /// Whether a sync would write anything.
    pub fn is_dirty(&self) -> bool {
        !self.open.is_empty() || self.written_chunks > self.synced_chunks || self.dir_dirty
    }

    /// Starts a group commit: the files and directory to fsync, and notes
    /// what they will cover. The caller sealed the open chunk first.
    pub fn begin_sync(&mut self) -> Result<(Vec<File>, Vec<PathBuf>), String> {
        self.check()?;
        let mut files = std::mem::take(&mut self.unsynced);
        if self.written_chunks > self.synced_chunks {
            if let Some(active) = &self.active {
                let clone = active
                    .try_clone()
                    .map_err(|e| io_err("clone", &self.dir, e))?;
                files.push(clone);
            }
        }
        let dirs = if std::mem::take(&mut self.dir_dirty) {
            vec![self.dir.clone()]
        } else {
            Vec::new()
        };
        self.syncing.push_back(self.written_chunks);
        Ok((files, dirs))
    }

    /// Completes a group commit begun with [`Log::begin_sync`].
    pub fn finish_sync(&mut self, ok: bool) {
        let covered = self.syncing.pop_front().unwrap_or(self.synced_chunks);
        if ok {
            self.synced_chunks = self.synced_chunks.max(covered);
        } else {
            self.failed = Some("fsync failed".into());
        }
    }

    /// The offset of the oldest record held.
    pub fn first_offset(&self) -> u64 {
        self.segments
            .front()
            .map_or(self.written_next, |s| s.first_offset)
    }

    /// Bytes on disk.
    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.size).sum()
    }

    /// Removes whole segments from the front (never the one being written)
    /// while the log is larger than `max_bytes` or their newest chunk is
    /// older than `max_age_ms`. Returns how many went.
    pub fn retain(&mut self, max_bytes: Option<u64>, max_age_ms: Option<u64>, now: i64) -> usize {
        let mut total = self.bytes();
        let mut removed = 0;
        while self.segments.len() > 1 {
            let Some(front) = self.segments.front() else {
                break;
            };
            let too_big = max_bytes.is_some_and(|max| total > max);
            let too_old =
                max_age_ms.is_some_and(|age| front.last_timestamp < now.saturating_sub(age as i64));
            if !(too_big || too_old) {
                break;
            }
            let path = segment_path(&self.dir, front.first_offset);
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(segment = %path.display(), "could not remove a stream segment: {e}");
                break;
            }
            total -= front.size;
            self.segments.pop_front();
            self.dir_dirty = true;
            removed += 1;
        }
        removed
    }

    /// The segment holding `offset`, or the first one after it (a reader
    /// whose place was removed by retention goes on from the oldest).
    pub fn segment_for(&self, offset: u64) -> Option<&SegmentMeta> {
        self.segments
            .iter()
            .find(|s| offset < s.next_offset || s.first_offset >= offset)
            .or_else(|| self.segments.back())
    }

    /// The segment whose first offset is `first`, if it is still there,
    /// and whether it is the last.
    pub fn segment(&self, first: u64) -> Option<(&SegmentMeta, bool)> {
        let at = self
            .segments
            .binary_search_by_key(&first, |s| s.first_offset)
            .ok()?;
        Some((&self.segments[at], at + 1 == self.segments.len()))
    }

    /// The first segment whose newest chunk was written at or after `ts`.
    pub fn segment_for_time(&self, ts: i64) -> Option<&SegmentMeta> {
        self.segments.iter().find(|s| s.last_timestamp >= ts)
    }

    /// Flushes the open chunk and fsyncs everything (clean shutdown).
    pub fn close(&mut self, now: i64) -> Result<(), String> {
        self.sync_all(now)
    }

    /// Writes the open chunk and fsyncs everything, here and now (not
    /// through the syncer's group commit): at shutdown, and before a
    /// replica's snapshot stands for the log.
    pub fn sync_all(&mut self, now: i64) -> Result<(), String> {
        self.seal(now)?;
        let (files, dirs) = self.begin_sync()?;
        let synced = files
            .iter()
            .try_for_each(|f| f.sync_data().map_err(|e| io_err("fsync", &self.dir, e)))
            .and_then(|()| {
                dirs.iter()
                    .try_for_each(|d| antre_store::sync_dir(d).map_err(|e| e.to_string()))
            });
        self.finish_sync(synced.is_ok());
        synced
    }
}

/// The tracking state at the end of a segment: its snapshot, then the
/// deltas and chunk trailers after it.
fn read_tracking(path: &Path, size: u64) -> Result<Tracking, String> {
    let file = File::open(path).map_err(|e| io_err("open", path, e))?;
    let mut tracking = Tracking::default();
    let mut pos = SEGMENT_START;
    let mut head = [0u8; HEADER_SIZE];
    while pos + HEADER_SIZE as u64 <= size {
        file.read_exact_at(&mut head, pos)
            .map_err(|e| io_err("read", path, e))?;
        let h = ChunkHeader::decode(&head).map_err(|e| e.to_string())?;
        let body_at = pos + HEADER_SIZE as u64 + u64::from(h.bloom_size);
        if h.chunk_type == chunk::TYPE_USER {
            if h.trailer_len > 0 {
                let mut trailer = vec![0u8; h.trailer_len as usize];
                file.read_exact_at(&mut trailer, body_at + u64::from(h.data_len))
                    .map_err(|e| io_err("read", path, e))?;
                tracking.apply(TrackingEntry::decode_all(&trailer));
            }
        } else {
            let mut data = vec![0u8; h.data_len as usize];
            file.read_exact_at(&mut data, body_at)
                .map_err(|e| io_err("read", path, e))?;
            if h.chunk_type == chunk::TYPE_TRACKING_SNAPSHOT {
                tracking = Tracking::default();
            }
            for entry in Entries::new(Bytes::from(data)).flatten() {
                if let Entry::Simple(body) = entry {
                    tracking.apply(TrackingEntry::decode_all(&body));
                }
            }
        }
        pos += h.total_size();
    }
    Ok(tracking)
}

fn open_append(path: &Path) -> Result<File, String> {
    OpenOptions::new()
        .append(true)
        .read(true)
        .open(path)
        .map_err(|e| io_err("open", path, e))
}

fn truncate(path: &Path, len: u64) -> Result<(), String> {
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| io_err("open", path, e))?;
    f.set_len(len).map_err(|e| io_err("truncate", path, e))?;
    f.sync_all().map_err(|e| io_err("fsync", path, e))
}

/// Walks a segment's chunks: returns its metadata (whose `size` is where
/// the valid chunks end) and the file's length. `verify` reads every chunk
/// and checks its CRC (the last segment, which a crash may have torn).
fn scan(path: &Path, first: u64, verify: bool) -> Result<(SegmentMeta, u64), String> {
    let file = File::open(path).map_err(|e| io_err("open", path, e))?;
    let len = file.metadata().map_err(|e| io_err("stat", path, e))?.len();
    let mut meta = SegmentMeta::empty(first);
    let mut head = [0u8; SEGMENT_HEADER.len()];
    if len < SEGMENT_START || file.read_exact_at(&mut head, 0).is_err() || head != SEGMENT_HEADER {
        if verify {
            // A segment torn before its header was whole: start it again.
            let mut f = OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(|e| io_err("open", path, e))?;
            f.set_len(0).map_err(|e| io_err("truncate", path, e))?;
            f.write_all(&SEGMENT_HEADER)
                .map_err(|e| io_err("write", path, e))?;
            f.sync_all().map_err(|e| io_err("fsync", path, e))?;
            return Ok((meta, SEGMENT_START));
        }
        return Err(format!("{} is not a stream segment", path.display()));
    }
    let mut pos = SEGMENT_START;
    let mut buf = [0u8; HEADER_SIZE];
    while pos + HEADER_SIZE as u64 <= len {
        if file.read_exact_at(&mut buf, pos).is_err() {
            break;
        }
        let Ok(h) = ChunkHeader::decode(&buf) else {
            break;
        };
        let expected = meta.next_offset;
        if pos + h.total_size() > len || (meta.chunks > 0 && h.chunk_id != expected) {
            break;
        }
        if meta.chunks == 0 && h.chunk_id != first {
            break;
        }
        if verify {
            let mut raw = vec![0u8; h.total_size() as usize];
            if file.read_exact_at(&mut raw, pos).is_err() {
                break;
            }
            if Chunk::decode(Bytes::from(raw)).is_err() {
                break;
            }
        }
        meta.add(pos, &h);
        pos += h.total_size();
    }
    Ok((meta, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(log: &Log) -> Vec<(u64, Vec<u8>)> {
        let mut out = Vec::new();
        for s in &log.segments {
            let raw = std::fs::read(segment_path(log.dir(), s.first_offset)).unwrap();
            let mut pos = SEGMENT_START as usize;
            while pos < s.size as usize {
                let h = ChunkHeader::decode(&raw[pos..]).unwrap();
                let end = pos + h.total_size() as usize;
                let c = Chunk::decode(Bytes::copy_from_slice(&raw[pos..end])).unwrap();
                out.extend(
                    c.records()
                        .unwrap()
                        .into_iter()
                        .map(|(o, r)| (o, r.to_vec())),
                );
                pos = end;
            }
        }
        out
    }

    #[test]
    fn chunks_fit_a_one_mebibyte_deliver_frame() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = Log::open(dir.path(), 100_000_000).unwrap();
        for i in 0..3_000u32 {
            let size = 700 + (i as usize * 37) % 900;
            log.append_from(&vec![1; size], None, Some("f"), 0).unwrap();
        }
        log.seal(0).unwrap();
        let raw = std::fs::read(segment_path(log.dir(), 0)).unwrap();
        let mut pos = SEGMENT_START as usize;
        let mut chunks = 0;
        while pos < raw.len() {
            let h = ChunkHeader::decode(&raw[pos..]).unwrap();
            // Deliver: size, key, version, subscription, committed offset.
            let frame = 4 + 2 + 2 + 1 + 8 + HEADER_SIZE + h.data_len as usize;
            assert!(frame <= 1 << 20, "chunk {} needs {frame} bytes", h.chunk_id);
            pos += h.total_size() as usize;
            chunks += 1;
        }
        assert!(chunks > 1);
    }

    #[test]
    fn records_survive_reopening_in_order_with_their_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = Log::open(dir.path(), 200).unwrap();
        for i in 0..10u8 {
            log.append(&[i; 50], i64::from(i)).unwrap();
            log.seal(i64::from(i)).unwrap();
        }
        assert!(log.segments.len() > 1, "small segments roll");
        log.close(10).unwrap();
        let (log, stats) = Log::open(dir.path(), 200).unwrap();
        assert_eq!(stats.chunks, 10);
        assert_eq!(log.written_next, 10);
        let got = records(&log);
        assert_eq!(got.len(), 10);
        for (i, (offset, r)) in got.iter().enumerate() {
            assert_eq!((*offset, r[0]), (i as u64, i as u8));
        }
    }

    #[test]
    fn a_torn_tail_is_cut_and_writing_goes_on_from_the_last_whole_chunk() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = Log::open(dir.path(), 1 << 20).unwrap();
        for i in 0..3u8 {
            log.append(&[i; 100], 0).unwrap();
            log.seal(0).unwrap();
        }
        log.close(0).unwrap();
        let path = segment_path(dir.path(), 0);
        let len = std::fs::metadata(&path).unwrap().len();
        // Tear the last chunk: its last bytes never reached the disk.
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(len - 10).unwrap();
        drop(f);
        let (mut log, stats) = Log::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(log.written_next, 2);
        assert!(stats.bytes_truncated > 0);
        log.append(b"after", 0).unwrap();
        log.close(0).unwrap();
        let got = records(&log);
        assert_eq!(got.last().unwrap(), &(2, b"after".to_vec()));
    }

    #[test]
    fn tracking_survives_reopening_and_rolling_segments() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = Log::open(dir.path(), 400).unwrap();
        log.append_from(&[1; 100], Some(("p", 5)), None, 0).unwrap();
        log.seal(0).unwrap();
        log.store_offset("reader", 0, 0).unwrap();
        for i in 0..10 {
            log.append_from(&[2; 100], Some(("p", 6 + i)), None, 0)
                .unwrap();
            log.seal(0).unwrap();
        }
        log.store_offset("reader", 7, 0).unwrap();
        assert!(log.segments.len() > 2, "several segments");
        assert_eq!(log.written_next, 11, "tracking chunks take no offsets");
        log.close(0).unwrap();
        let (log, _) = Log::open(dir.path(), 400).unwrap();
        assert_eq!(log.tracking.sequences["p"], 15);
        assert_eq!(log.tracking.offsets["reader"], 7);
    }

    #[test]
    fn retention_drops_whole_segments_from_the_front() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = Log::open(dir.path(), 300).unwrap();
        for i in 0..20 {
            log.append(&[0; 100], i * 1000).unwrap();
            log.seal(i * 1000).unwrap();
        }
        let before = log.segments.len();
        assert!(log.retain(Some(1000), None, 0) > 0);
        assert!(log.bytes() <= 1000 + 300);
        assert!(log.segments.len() < before);
        assert!(log.first_offset() > 0);
        // By age: everything older than 5 s at t=19 s goes but the last.
        log.retain(None, Some(5000), 19_000);
        assert!(log.segments.front().unwrap().last_timestamp >= 14_000);
        assert_eq!(log.written_next, 20);
    }
}
