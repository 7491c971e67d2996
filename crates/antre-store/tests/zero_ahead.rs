//! The zeros a store writes ahead of its records (so that the fsyncs of
//! later rounds write data alone): there while the segment is written,
//! gone once it is full or closed, and never mistaken for records after a
//! crash.

use std::fs;
use std::path::{Path, PathBuf};

use antre_store::{QueueStore, SegmentPosition, StoreOptions, RECORD_HEADER_LEN};

fn opts(segment_size: u32) -> StoreOptions {
    StoreOptions {
        segment_size,
        ..StoreOptions::default()
    }
}

fn payload(i: u32, len: usize) -> Vec<u8> {
    let mut p = i.to_le_bytes().to_vec();
    p.resize(len, (i % 251) as u8 + 1);
    p
}

fn segment_file(dir: &Path, segment: u32) -> PathBuf {
    dir.join(format!("msgs.{segment:010}"))
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).expect("metadata").len()
}

fn end_of(pos: SegmentPosition, len: usize) -> u64 {
    u64::from(pos.offset) + u64::from(RECORD_HEADER_LEN) + len as u64
}

/// Appends `rounds` rounds of `per_round` records of `len` bytes, each
/// round synced.
fn write_rounds(
    store: &mut QueueStore,
    rounds: u32,
    per_round: u32,
    len: usize,
) -> Vec<SegmentPosition> {
    let mut all = Vec::new();
    for r in 0..rounds {
        for i in 0..per_round {
            all.push(
                store
                    .append(&payload(r * per_round + i, len))
                    .expect("append"),
            );
        }
        store.sync().expect("sync");
    }
    all
}

#[test]
fn a_synced_round_leaves_zeros_ahead_and_close_cuts_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut store, _) = QueueStore::open(dir.path(), opts(8 << 20), |_, _| {}).expect("open");
    let pos = write_rounds(&mut store, 3, 10, 1000);
    let path = segment_file(dir.path(), pos[0].segment);
    let data = end_of(*pos.last().expect("records"), 1000);
    let len = file_len(&path);
    assert!(
        len >= data + 10 * 1000,
        "a round's worth of zeros at least is ahead: file {len}, records end at {data}"
    );
    let image = fs::read(&path).expect("read");
    // Cannot truncate: data is a few KiB.
    assert!(image[data as usize..].iter().all(|&b| b == 0));
    // Records overwrite the zeros and read back.
    for (i, p) in pos.iter().enumerate() {
        assert_eq!(store.read(*p).expect("read"), payload(i as u32, 1000));
    }
    store.close().expect("close");
    assert_eq!(file_len(&path), data, "close leaves the records alone");

    let mut got = Vec::new();
    let (_store, stats) =
        QueueStore::open(dir.path(), opts(8 << 20), |p, _| got.push(p)).expect("reopen");
    assert_eq!(got, pos);
    assert_eq!(stats.bytes_truncated, 0);
    assert_eq!(stats.corrupt_records, 0);
}

#[test]
fn zeros_ahead_are_removed_after_a_crash_and_never_read_as_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut store, _) = QueueStore::open(dir.path(), opts(8 << 20), |_, _| {}).expect("open");
    let pos = write_rounds(&mut store, 4, 25, 300);
    let path = segment_file(dir.path(), pos[0].segment);
    let zeros_from = end_of(*pos.last().expect("records"), 300);
    assert!(file_len(&path) > zeros_from);
    // kill -9: no close, no drop.
    std::mem::forget(store);

    let mut got = Vec::new();
    let (mut store, stats) = QueueStore::open(dir.path(), opts(8 << 20), |p, body| {
        got.push((p, body.to_vec()))
    })
    .expect("reopen");
    let expected: Vec<_> = pos
        .iter()
        .enumerate()
        .map(|(i, p)| (*p, payload(i as u32, 300)))
        .collect();
    assert_eq!(got, expected, "every synced record, nothing made of zeros");
    assert_eq!(stats.corrupt_records, 0);
    assert!(
        stats.bytes_truncated > 0,
        "the zeros after {zeros_from} were cut"
    );
    assert_eq!(file_len(&path), zeros_from, "the zeros are cut off");
    // New records go to a new segment, as after every open.
    let next = store.append(b"after").expect("append");
    assert!(next.segment > pos[0].segment);
    store.sync().expect("sync");
}

#[test]
fn a_full_segment_gives_its_zeros_back_and_none_passes_the_segment_size() {
    let dir = tempfile::tempdir().expect("tempdir");
    let size = 64 * 1024;
    let (mut store, _) = QueueStore::open(dir.path(), opts(size), |_, _| {}).expect("open");
    // Rounds of 20 KB: zeros ahead would reach 160 KB without the cap.
    let pos = write_rounds(&mut store, 12, 20, 1000);
    let mut segments: Vec<u32> = pos.iter().map(|p| p.segment).collect();
    segments.dedup();
    assert!(segments.len() >= 3, "the rounds fill several segments");
    for &n in &segments {
        let len = file_len(&segment_file(dir.path(), n));
        assert!(len <= u64::from(size), "segment {n} is {len} bytes");
        if Some(&n) != segments.last() {
            let last = pos.iter().rev().find(|p| p.segment == n).expect("a record");
            assert_eq!(
                len,
                end_of(*last, 1000),
                "full segment {n} ends at its last record"
            );
        }
    }
    store.close().expect("close");
}

#[test]
fn a_quiet_store_writes_few_zeros_ahead() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut store, _) = QueueStore::open(dir.path(), opts(8 << 20), |_, _| {}).expect("open");
    let pos = write_rounds(&mut store, 1, 1, 100);
    let len = file_len(&segment_file(dir.path(), pos[0].segment));
    assert!(
        len <= 4096,
        "one small record keeps one block at most: {len}"
    );
    store.close().expect("close");
}

#[test]
fn large_rounds_append_without_zeros_ahead() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut store, _) = QueueStore::open(dir.path(), opts(8 << 20), |_, _| {}).expect("open");
    // Rounds of 200 KB: the cap of zeros ahead would not hold eight.
    let pos = write_rounds(&mut store, 3, 200, 1000);
    let path = segment_file(dir.path(), pos[0].segment);
    assert_eq!(
        file_len(&path),
        end_of(*pos.last().expect("records"), 1000),
        "no zeros after the records of a large round"
    );
    for (i, p) in pos.iter().enumerate() {
        assert_eq!(store.read(*p).expect("read"), payload(i as u32, 1000));
    }
    // A small round after them zeroes ahead again.
    let small = write_rounds(&mut store, 1, 10, 1000);
    assert!(file_len(&path) > end_of(*small.last().expect("records"), 1000));
    store.close().expect("close");
}
