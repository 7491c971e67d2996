//! Opening a queue directory: read every segment once, hand each live record
//! to the caller, rebuild the in-memory index, and repair what a crash left.
//!
//! Repairs are deliberately conservative: a torn tail is cut off (it was never
//! confirmed), a damaged record in the middle is skipped and reported, a
//! damaged ack entry is ignored (its record comes back rather than vanishes),
//! and a segment with nothing live is deleted.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, OpenOptions};
use std::io::Read;
use std::path::Path;

use crate::format::{
    ack_path, check_segment_header, decode_ack_entry, parse_file_name, scan_segment, segment_path,
    FileKind, SegmentHeader, ACK_ENTRY_LEN,
};
use crate::segment::Segment;
use crate::{sync_dir, RecoveryStats, SegmentPosition, StoreError};

/// What [`recover`] rebuilt.
pub(crate) struct Recovered {
    pub segments: BTreeMap<u32, Segment>,
    /// First segment number never seen in the directory. New segments start
    /// here, so a number is never reused while any file of it may exist (a
    /// leftover ack file must not apply to a new segment's records).
    pub next_segment: u32,
    pub live: u64,
    pub stats: RecoveryStats,
}

impl Recovered {
    /// What a store that never held a record recovers: nothing.
    pub(crate) fn empty() -> Recovered {
        Recovered {
            segments: BTreeMap::new(),
            next_segment: 1,
            live: 0,
            stats: RecoveryStats::default(),
        }
    }
}

pub(crate) fn recover(
    dir: &Path,
    mut on_record: impl FnMut(SegmentPosition, &[u8]),
) -> Result<Recovered, StoreError> {
    let mut msgs = BTreeSet::new();
    let mut acks = BTreeSet::new();
    let entries = fs::read_dir(dir).map_err(|e| StoreError::io("list", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::io("list", dir, e))?;
        let name = entry.file_name();
        match name.to_str().and_then(parse_file_name) {
            Some(FileKind::Segment(n)) => {
                msgs.insert(n);
            }
            Some(FileKind::Acks(n)) => {
                acks.insert(n);
            }
            None => {}
        }
    }
    let max_seen = msgs.iter().chain(acks.iter()).copied().max();
    let next_segment = match max_seen {
        None => 1,
        Some(n) => n
            .checked_add(1)
            .ok_or_else(|| StoreError::SegmentNumbersExhausted { dir: dir.into() })?,
    };

    let mut stats = RecoveryStats::default();
    let mut dir_changed = false;

    // An ack file without its segment is left over from a deletion that was
    // interrupted (segments are unlinked before their ack files).
    for &n in acks.difference(&msgs) {
        remove_if_exists(&ack_path(dir, n))?;
        dir_changed = true;
    }

    let mut segments = BTreeMap::new();
    let mut live = 0u64;
    // One buffer reused for every segment: recovery holds at most one
    // segment's bytes in memory, never the backlog.
    let mut image = Vec::new();
    for &n in &msgs {
        stats.segments_read += 1;
        let seg = recover_segment(dir, n, &mut image, &mut stats, &mut on_record)?;
        if seg.index.live() == 0 {
            remove_if_exists(&segment_path(dir, n))?;
            remove_if_exists(&ack_path(dir, n))?;
            stats.segments_deleted += 1;
            dir_changed = true;
        } else {
            live += u64::from(seg.index.live());
            segments.insert(n, seg);
        }
    }
    if dir_changed {
        sync_dir(dir)?;
    }
    Ok(Recovered {
        segments,
        next_segment,
        live,
        stats,
    })
}

fn recover_segment(
    dir: &Path,
    n: u32,
    image: &mut Vec<u8>,
    stats: &mut RecoveryStats,
    on_record: &mut impl FnMut(SegmentPosition, &[u8]),
) -> Result<Segment, StoreError> {
    let path = segment_path(dir, n);
    let (acked, ack_len) = read_acks(dir, n, stats)?;

    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| StoreError::io("open segment", &path, e))?;
    image.clear();
    file.read_to_end(image)
        .map_err(|e| StoreError::io("read segment", &path, e))?;

    let mut seg = Segment {
        ack_len,
        ack_synced_len: ack_len,
        ..Segment::default()
    };
    match check_segment_header(image, n) {
        SegmentHeader::Valid => {}
        SegmentHeader::Torn => {
            // Created, then the process died before the first flush. It holds
            // no records; the caller deletes it as empty.
            tracing::warn!(path = %path.display(), len = image.len(),
                "segment shorter than its header (interrupted creation); dropping it");
            stats.bytes_truncated += image.len() as u64;
            return Ok(seg);
        }
        SegmentHeader::UnknownVersion(version) => {
            return Err(StoreError::UnsupportedVersion { path, version });
        }
        SegmentHeader::Damaged(why) => {
            tracing::warn!(path = %path.display(), why,
                "segment header damaged; scanning its records anyway");
        }
    }

    // Both `acked` and the scan are in ascending offset order, so a single
    // cursor decides "acked?" in O(1) per record.
    let mut cursor = 0usize;
    let mut matched_acks = 0u64;
    let summary = scan_segment(
        image,
        |off| {
            while cursor < acked.len() && acked[cursor] < off {
                cursor += 1;
            }
            acked.get(cursor) != Some(&off)
        },
        |off, payload| match payload {
            Some(p) => {
                seg.index.push_recovered();
                stats.records_recovered += 1;
                on_record(
                    SegmentPosition {
                        segment: n,
                        offset: off,
                    },
                    p,
                );
            }
            None => {
                matched_acks += 1;
                stats.records_acked += 1;
            }
        },
        |off, len| {
            tracing::warn!(path = %path.display(), offset = off, bytes = len,
                "corrupt record skipped (checksum mismatch, valid records follow)");
        },
    );
    stats.corrupt_records += summary.corrupt_records;
    stats.corrupt_bytes += summary.corrupt_bytes;
    // Acks that name no record: torn-away records, or damage. Harmless,
    // because offsets in a recovered segment are never written again.
    stats.ack_entries_ignored += acked.len() as u64 - matched_acks;

    let valid_len = summary.valid_len as u64;
    let file_len = image.len() as u64;
    if valid_len < file_len {
        // Cannot truncate: valid_len <= image.len().
        if image[valid_len as usize..].iter().all(|&b| b == 0) {
            // The store writes zeros ahead of its records (see
            // `QueueStore::zero_ahead`): after a crash they are expected.
            tracing::debug!(path = %path.display(), offset = valid_len, bytes = file_len - valid_len,
                "zeros after the last record removed");
        } else {
            tracing::warn!(path = %path.display(), offset = valid_len, bytes = file_len - valid_len,
                "torn tail truncated (records written but never synced before a crash)");
        }
        stats.bytes_truncated += file_len - valid_len;
        file.set_len(valid_len)
            .map_err(|e| StoreError::io("truncate torn tail of", &path, e))?;
        file.sync_all()
            .map_err(|e| StoreError::io("fsync", &path, e))?;
    }
    seg.len = valid_len;
    Ok(seg)
}

/// Reads `acks.n`: the sorted, de-duplicated acked offsets and the file's
/// usable length. A partial trailing entry (torn write) is cut off, because
/// new entries are appended after it and must stay 8-byte aligned.
fn read_acks(dir: &Path, n: u32, stats: &mut RecoveryStats) -> Result<(Vec<u32>, u64), StoreError> {
    let path = ack_path(dir, n);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(StoreError::io("read ack file", &path, e)),
    };
    let usable = bytes.len() - bytes.len() % ACK_ENTRY_LEN;
    if usable < bytes.len() {
        tracing::warn!(path = %path.display(), bytes = bytes.len() - usable,
            "partial ack entry at end of ack file truncated");
        let f = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| StoreError::io("open ack file", &path, e))?;
        f.set_len(usable as u64)
            .map_err(|e| StoreError::io("truncate ack file", &path, e))?;
        f.sync_all()
            .map_err(|e| StoreError::io("fsync", &path, e))?;
    }
    let mut acked = Vec::with_capacity(usable / ACK_ENTRY_LEN);
    for e in bytes[..usable].chunks_exact(ACK_ENTRY_LEN) {
        match decode_ack_entry(n, e) {
            Some(off) => acked.push(off),
            None => stats.ack_entries_ignored += 1,
        }
    }
    acked.sort_unstable();
    acked.dedup();
    Ok((acked, usable as u64))
}

pub(crate) fn remove_if_exists(path: &Path) -> Result<(), StoreError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::io("remove", path, e)),
    }
}
