//! Record segments whose liveness the caller's snapshots decide: the
//! message bodies of a quorum queue's member (see `antre-cluster`).
//!
//! [`QueueStore`](crate::QueueStore) decides on its own which records are
//! live (its ack files) and recovers them by itself. A Raft member cannot
//! use that: its truth is its last snapshot plus the log after it, so
//! after a crash the bodies must be exactly those the snapshot refers to,
//! with nothing acked or appended since then half-applied. Here nothing is
//! ever removed on disk except whole segments, and only once a durable
//! snapshot no longer refers to them; the snapshot records a [`Mark`] (the
//! head segment and its length), and opening at that mark drops whatever
//! was appended after it. Re-applying the log then appends those records
//! again.
//!
//! Format: a directory of `NNNNNNNNNN.rec` files (the segment number in ten
//! decimal digits), each a sequence of records `crc32c(payload)` (4 bytes,
//! little-endian) followed by the payload. The length is in the caller's
//! [`RecordRef`], so there is no framing to parse: a reference is read with
//! one positioned read and its checksum verified.
//!
//! Space comes back by segments: a segment is deleted once no snapshot
//! refers to it; one that is mostly dead (a few old messages still
//! unacked) is compacted by the caller, which copies its live records to
//! the head ([`RecordSegments::sparse`]) before the next snapshot.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::StoreError;

/// Bytes before each payload: its CRC32C.
const CRC_LEN: u64 = 4;
/// A new segment starts once the head would grow past this (a record
/// larger than it gets a segment of its own).
pub const RECORD_SEGMENT_BYTES: u64 = 8 << 20;
/// Appends are buffered up to this before they are written to the head.
const WRITE_BUFFER: usize = 1 << 20;

/// Where a record is: its segment, the offset of its checksum, the
/// payload's length. 12 bytes, kept in memory for every message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef {
    /// The segment's number.
    pub segment: u32,
    /// Offset of the record (its checksum) in the segment.
    pub offset: u32,
    /// The payload's length.
    pub len: u32,
}

/// How far the segments went when a snapshot was taken: opening at it
/// drops everything appended later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Mark {
    /// The head segment then.
    pub segment: u32,
    /// Its length then.
    pub len: u64,
}

#[derive(Debug)]
struct Segment {
    file: File,
    /// Bytes in the file (and the write buffer, for the head).
    size: u64,
    /// Payload bytes of the records still referred to.
    live: u64,
}

/// Files to fsync (outside the caller's locks), then the directory if a
/// segment was created since the last sync: see [`RecordSegments::to_sync`].
#[derive(Debug)]
pub struct RecordSync {
    files: Vec<File>,
    dir: Option<PathBuf>,
}

impl RecordSync {
    /// Makes every record appended before [`RecordSegments::to_sync`]
    /// durable.
    pub fn run(self) -> Result<(), StoreError> {
        for f in &self.files {
            f.sync_data()
                .map_err(|e| StoreError::io("fsync", Path::new("records"), e))?;
        }
        match self.dir {
            Some(dir) => crate::sync_dir(&dir),
            None => Ok(()),
        }
    }
}

/// Reads records without the [`RecordSegments`] (see
/// [`RecordSegments::reader`]).
#[derive(Debug)]
pub struct RecordReader {
    dir: PathBuf,
    files: BTreeMap<u32, File>,
}

impl RecordReader {
    /// Reads a record, checking its checksum.
    pub fn read(&self, r: RecordRef) -> Result<Bytes, StoreError> {
        read_at(&self.dir, self.files.get(&r.segment), r)
    }
}

fn read_at(dir: &Path, file: Option<&File>, r: RecordRef) -> Result<Bytes, StoreError> {
    let damaged = |reason: &str| StoreError::Records {
        path: seg_path(dir, r.segment),
        offset: u64::from(r.offset),
        reason: reason.into(),
    };
    let file = file.ok_or_else(|| damaged("no such record segment"))?;
    let mut raw = vec![0u8; CRC_LEN as usize + r.len as usize];
    file.read_exact_at(&mut raw, u64::from(r.offset))
        .map_err(|e| StoreError::io("read", seg_path(dir, r.segment), e))?;
    let crc = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
    let payload = Bytes::from(raw).split_off(CRC_LEN as usize);
    if crc32c::crc32c(&payload) != crc {
        return Err(damaged("record checksum mismatch"));
    }
    Ok(payload)
}

/// A member's record segments (see the module's documentation).
#[derive(Debug)]
pub struct RecordSegments {
    dir: PathBuf,
    segments: BTreeMap<u32, Segment>,
    head: u32,
    /// Appended to the head, not written yet.
    buffer: Vec<u8>,
    /// Segments written since the last [`RecordSegments::to_sync`].
    unsynced: BTreeSet<u32>,
    /// A segment was created since then (the directory needs an fsync).
    created: bool,
}

fn seg_path(dir: &Path, n: u32) -> PathBuf {
    dir.join(format!("{n:010}.rec"))
}

fn no_head(dir: &Path, head: u32) -> StoreError {
    StoreError::Records {
        path: seg_path(dir, head),
        offset: 0,
        reason: "the head segment is gone".into(),
    }
}

fn seg_number(name: &str) -> Option<u32> {
    name.strip_suffix(".rec")?.parse().ok()
}

impl RecordSegments {
    /// Opens the segments in `dir` as they were at `mark` (`None`: as
    /// empty), keeping only the segments `live` refers to and the head:
    /// everything appended after the mark, and every segment no record
    /// refers to, is dropped. `live` also gives each segment its count of
    /// live bytes.
    pub fn open<'a>(
        dir: &Path,
        mark: Option<Mark>,
        live: impl IntoIterator<Item = &'a RecordRef>,
    ) -> Result<RecordSegments, StoreError> {
        fs::create_dir_all(dir).map_err(|e| StoreError::io("create", dir, e))?;
        let mut live_bytes: BTreeMap<u32, u64> = BTreeMap::new();
        for r in live {
            *live_bytes.entry(r.segment).or_default() += u64::from(r.len);
        }
        let mark = mark.unwrap_or_default();
        let mut segments = BTreeMap::new();
        let entries = fs::read_dir(dir).map_err(|e| StoreError::io("list", dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| StoreError::io("list", dir, e))?;
            let Some(n) = entry.file_name().to_str().and_then(seg_number) else {
                continue;
            };
            let path = entry.path();
            let keep = n == mark.segment || (n < mark.segment && live_bytes.contains_key(&n));
            if !keep {
                fs::remove_file(&path).map_err(|e| StoreError::io("remove", &path, e))?;
                continue;
            }
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| StoreError::io("open", &path, e))?;
            let mut size = file
                .metadata()
                .map_err(|e| StoreError::io("stat", &path, e))?
                .len();
            if n == mark.segment {
                if size < mark.len {
                    return Err(StoreError::Records {
                        path,
                        offset: size,
                        reason: format!("shorter than the snapshot's {} bytes", mark.len),
                    });
                }
                file.set_len(mark.len)
                    .map_err(|e| StoreError::io("truncate", &path, e))?;
                size = mark.len;
            }
            let live = live_bytes.get(&n).copied().unwrap_or(0);
            segments.insert(n, Segment { file, size, live });
        }
        if let Some(n) = live_bytes.keys().find(|n| !segments.contains_key(n)) {
            return Err(StoreError::Records {
                path: seg_path(dir, *n),
                offset: 0,
                reason: "a segment the snapshot refers to is missing".into(),
            });
        }
        let mut this = RecordSegments {
            dir: dir.to_owned(),
            segments,
            head: mark.segment,
            buffer: Vec::new(),
            unsynced: BTreeSet::new(),
            created: false,
        };
        if !this.segments.contains_key(&mark.segment) {
            this.create(mark.segment)?;
        }
        Ok(this)
    }

    fn create(&mut self, n: u32) -> Result<(), StoreError> {
        let path = seg_path(&self.dir, n);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| StoreError::io("create", &path, e))?;
        self.segments.insert(
            n,
            Segment {
                file,
                size: 0,
                live: 0,
            },
        );
        self.head = n;
        self.created = true;
        self.unsynced.insert(n);
        Ok(())
    }

    fn head_size(&self) -> u64 {
        self.segments.get(&self.head).map_or(0, |s| s.size)
    }

    /// Appends a record; it is written with the next [`RecordSegments::flush`]
    /// (or when the buffer fills) and durable after the next sync.
    pub fn append(&mut self, payload: &[u8]) -> Result<RecordRef, StoreError> {
        let len = u32::try_from(payload.len()).map_err(|_| StoreError::RecordTooLarge {
            len: payload.len(),
            max: u32::MAX,
        })?;
        let size = self.head_size();
        if size > 0 && size + CRC_LEN + u64::from(len) > RECORD_SEGMENT_BYTES {
            self.flush()?;
            self.create(self.head + 1)?;
        }
        let head = self.head;
        let seg = self
            .segments
            .get_mut(&head)
            .ok_or_else(|| no_head(&self.dir, head))?;
        let offset = u32::try_from(seg.size).map_err(|_| StoreError::Records {
            path: seg_path(&self.dir, head),
            offset: seg.size,
            reason: "a segment past 4 GiB".into(),
        })?;
        self.buffer
            .extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
        self.buffer.extend_from_slice(payload);
        seg.size += CRC_LEN + u64::from(len);
        seg.live += u64::from(len);
        if self.buffer.len() >= WRITE_BUFFER {
            self.flush()?;
        }
        Ok(RecordRef {
            segment: head,
            offset,
            len,
        })
    }

    /// Writes the buffered appends to the head segment.
    pub fn flush(&mut self) -> Result<(), StoreError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let path = seg_path(&self.dir, self.head);
        let seg = self
            .segments
            .get_mut(&self.head)
            .ok_or_else(|| no_head(&self.dir, self.head))?;
        let at = seg.size - self.buffer.len() as u64;
        seg.file
            .write_all_at(&self.buffer, at)
            .map_err(|e| StoreError::io("write", &path, e))?;
        self.buffer.clear();
        self.unsynced.insert(self.head);
        Ok(())
    }

    /// A record is no longer referred to by the caller's state (the
    /// segment's space comes back once no snapshot refers to it either).
    pub fn release(&mut self, r: RecordRef) {
        if let Some(seg) = self.segments.get_mut(&r.segment) {
            seg.live = seg.live.saturating_sub(u64::from(r.len));
        }
    }

    /// Reads a record back, checking its checksum.
    pub fn read(&mut self, r: RecordRef) -> Result<Bytes, StoreError> {
        if r.segment == self.head {
            self.flush()?;
        }
        let file = self.segments.get(&r.segment).map(|s| &s.file);
        read_at(&self.dir, file, r)
    }

    /// A reader of every record written so far that needs no lock on
    /// these segments (their files stay readable even once collected).
    pub fn reader(&mut self) -> Result<RecordReader, StoreError> {
        self.flush()?;
        let mut files = BTreeMap::new();
        for (&n, seg) in &self.segments {
            let f = seg
                .file
                .try_clone()
                .map_err(|e| StoreError::io("dup", seg_path(&self.dir, n), e))?;
            files.insert(n, f);
        }
        Ok(RecordReader {
            dir: self.dir.clone(),
            files,
        })
    }

    /// Writes what is buffered and hands out what to fsync, so that the
    /// caller can do it without its lock; the mark is where the segments
    /// end now, for the snapshot that waits for that sync.
    pub fn to_sync(&mut self) -> Result<(RecordSync, Mark), StoreError> {
        self.flush()?;
        let mut files = Vec::with_capacity(self.unsynced.len());
        for n in std::mem::take(&mut self.unsynced) {
            if let Some(seg) = self.segments.get(&n) {
                let f = seg
                    .file
                    .try_clone()
                    .map_err(|e| StoreError::io("dup", seg_path(&self.dir, n), e))?;
                files.push(f);
            }
        }
        let dir = std::mem::take(&mut self.created).then(|| self.dir.clone());
        Ok((RecordSync { files, dir }, self.mark()))
    }

    /// Where the segments end now (what is buffered included).
    pub fn mark(&self) -> Mark {
        Mark {
            segment: self.head,
            len: self.head_size(),
        }
    }

    /// Segments before the head with less than half of their bytes live:
    /// worth copying their live records to the head.
    pub fn sparse(&self) -> BTreeSet<u32> {
        self.segments
            .iter()
            .filter(|(&n, s)| n < self.head && s.live * 2 < s.size)
            .map(|(&n, _)| n)
            .collect()
    }

    /// Deletes the segments before `mark`'s head that a durable snapshot
    /// taken at `mark` does not refer to (`referred`).
    pub fn collect(&mut self, mark: Mark, referred: &BTreeSet<u32>) -> Result<(), StoreError> {
        let dead: Vec<u32> = self
            .segments
            .range(..mark.segment)
            .map(|(&n, _)| n)
            .filter(|n| !referred.contains(n))
            .collect();
        for n in dead {
            self.segments.remove(&n);
            self.unsynced.remove(&n);
            let path = seg_path(&self.dir, n);
            fs::remove_file(&path).map_err(|e| StoreError::io("remove", &path, e))?;
        }
        Ok(())
    }

    /// Starts a new head after every segment there is, for a state that
    /// replaces all records (an installed snapshot): the old segments go
    /// with the next [`RecordSegments::collect`].
    pub fn restart(&mut self) -> Result<(), StoreError> {
        self.flush()?;
        for seg in self.segments.values_mut() {
            seg.live = 0;
        }
        self.create(self.head + 1)
    }

    /// The segments' directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes in the segment files.
    pub fn disk_bytes(&self) -> u64 {
        self.segments.values().map(|s| s.size).sum()
    }

    /// Number of segment files.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs_segments(refs: &[RecordRef]) -> BTreeSet<u32> {
        refs.iter().map(|r| r.segment).collect()
    }

    #[test]
    fn records_read_back_before_and_after_a_flush() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = RecordSegments::open(dir.path(), None, []).unwrap();
        let a = s.append(b"first").unwrap();
        let b = s.append(b"second").unwrap();
        assert_eq!(&s.read(b).unwrap()[..], b"second");
        s.flush().unwrap();
        assert_eq!(&s.read(a).unwrap()[..], b"first");
    }

    #[test]
    fn opening_at_a_mark_drops_what_came_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = RecordSegments::open(dir.path(), None, []).unwrap();
        let a = s.append(b"kept").unwrap();
        let (sync, mark) = s.to_sync().unwrap();
        sync.run().unwrap();
        let big = vec![7u8; RECORD_SEGMENT_BYTES as usize];
        s.append(&big).unwrap(); // a new segment, after the mark
        s.append(b"also after").unwrap();
        s.flush().unwrap();
        assert_eq!(s.segment_count(), 3);
        drop(s);

        let mut s = RecordSegments::open(dir.path(), Some(mark), [&a]).unwrap();
        assert_eq!(s.segment_count(), 1);
        assert_eq!(s.mark(), mark);
        assert_eq!(&s.read(a).unwrap()[..], b"kept");
        // Appends go on where the mark ended.
        let c = s.append(b"again").unwrap();
        assert_eq!(u64::from(c.offset), mark.len);
    }

    #[test]
    fn a_segment_no_snapshot_refers_to_is_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = RecordSegments::open(dir.path(), None, []).unwrap();
        let half = vec![1u8; (RECORD_SEGMENT_BYTES / 2 - CRC_LEN) as usize];
        let r: Vec<RecordRef> = (0..5).map(|_| s.append(&half).unwrap()).collect();
        assert_eq!(refs_segments(&r).len(), 3);
        // The first segment's two records settled, the second's first:
        // both are worth compacting, the head is not.
        s.release(r[0]);
        s.release(r[1]);
        s.release(r[2]);
        let (sync, mark) = s.to_sync().unwrap();
        sync.run().unwrap();
        let live = &r[3..];
        assert_eq!(s.sparse(), BTreeSet::from([r[0].segment, r[2].segment]));
        s.collect(mark, &refs_segments(live)).unwrap();
        assert_eq!(s.segment_count(), 2);
        drop(s);
        let mut s = RecordSegments::open(dir.path(), Some(mark), live).unwrap();
        assert_eq!(s.segment_count(), 2);
        assert_eq!(&s.read(r[4]).unwrap()[..], &half[..]);
    }

    #[test]
    fn a_corrupt_record_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = RecordSegments::open(dir.path(), None, []).unwrap();
        let a = s.append(b"payload").unwrap();
        s.flush().unwrap();
        let path = seg_path(dir.path(), a.segment);
        let mut raw = fs::read(&path).unwrap();
        raw[5] ^= 0xff;
        fs::write(&path, raw).unwrap();
        assert!(matches!(s.read(a), Err(StoreError::Records { .. })));
    }

    #[test]
    fn a_missing_segment_the_snapshot_needs_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let r = RecordRef {
            segment: 0,
            offset: 0,
            len: 3,
        };
        let mark = Mark { segment: 2, len: 0 };
        assert!(RecordSegments::open(dir.path(), Some(mark), [&r]).is_err());
    }

    #[test]
    fn restart_moves_to_a_fresh_head_and_collect_drops_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = RecordSegments::open(dir.path(), None, []).unwrap();
        let old = s.append(b"old").unwrap();
        s.restart().unwrap();
        let new = s.append(b"new").unwrap();
        assert!(new.segment > old.segment);
        let (sync, mark) = s.to_sync().unwrap();
        sync.run().unwrap();
        s.collect(mark, &BTreeSet::from([new.segment])).unwrap();
        assert_eq!(s.segment_count(), 1);
        assert_eq!(&s.read(new).unwrap()[..], b"new");
    }
}
