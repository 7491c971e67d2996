//! Crash and corruption tests through the public API: write records, damage
//! the files the way crashes and bad disks do, reopen, and check that
//! recovery returns exactly the valid records and never a damaged one.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use antre_store::{QueueStore, RecoveryStats, SegmentPosition, StoreError, StoreOptions};

fn opts(segment_size: u32) -> StoreOptions {
    StoreOptions {
        segment_size,
        ..StoreOptions::default()
    }
}

/// Deterministic, distinct payloads of varying length.
fn payload(i: u32) -> Vec<u8> {
    let len = 4 + (i as usize * 7) % 53;
    let mut p = i.to_le_bytes().to_vec();
    p.extend((0..len).map(|j| (i as usize * 13 + j) as u8));
    p
}

type Recovered = Vec<(SegmentPosition, Vec<u8>)>;

fn reopen(dir: &Path, o: StoreOptions) -> (QueueStore, Recovered, RecoveryStats) {
    let mut got = Vec::new();
    let (s, stats) = QueueStore::open(dir, o, |pos, p| got.push((pos, p.to_vec()))).expect("open");
    (s, got, stats)
}

/// Writes `n` records into one segment, closes, returns positions and the
/// segment's path.
fn write_records(dir: &Path, n: u32) -> (Vec<SegmentPosition>, PathBuf) {
    let (mut s, _, _) = reopen(dir, opts(1 << 20));
    let pos: Vec<_> = (0..n)
        .map(|i| s.append(&payload(i)).expect("append"))
        .collect();
    s.sync().expect("sync");
    s.close().expect("close");
    let path = dir.join(format!("msgs.{:010}", pos[0].segment));
    assert!(pos.iter().all(|p| p.segment == pos[0].segment));
    (pos, path)
}

fn record_end(p: SegmentPosition, i: u32) -> usize {
    p.offset as usize + 16 + payload(i).len()
}

/// Tiny xorshift so the "random" tests are reproducible without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Copies `image` into a fresh queue directory as segment 1, reopens, and
/// returns what recovery gave back.
fn recover_image(image: &[u8]) -> (Recovered, RecoveryStats, u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let seg = dir.path().join("msgs.0000000001");
    fs::write(&seg, image).expect("write");
    let (s, got, stats) = reopen(dir.path(), opts(1 << 20));
    drop(s);
    let len = fs::metadata(&seg).map(|m| m.len()).unwrap_or(0);
    (got, stats, len)
}

fn expect_prefix(got: &Recovered, n: usize) {
    assert_eq!(got.len(), n);
    for (i, (_, p)) in got.iter().enumerate() {
        assert_eq!(p, &payload(i as u32));
    }
}

#[test]
fn roundtrip_read_and_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut s, got, _) = reopen(dir.path(), opts(4096));
    assert!(got.is_empty());
    let pos: Vec<_> = (0..200)
        .map(|i| s.append(&payload(i)).expect("append"))
        .collect();
    assert!(s.is_dirty());
    // Readable before sync (from the buffer) and after.
    assert_eq!(&s.read(pos[199]).expect("read")[..], &payload(199)[..]);
    s.sync().expect("sync");
    assert!(!s.is_dirty());
    s.sync().expect("a second sync with nothing new is a no-op");
    assert!(s.segment_count() > 1, "4 KiB segments must roll over");
    for (i, p) in pos.iter().enumerate() {
        assert_eq!(&s.read(*p).expect("read")[..], &payload(i as u32)[..]);
    }
    s.close().expect("close");
    let (s, got, stats) = reopen(dir.path(), opts(4096));
    expect_prefix(&got, 200);
    assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), pos);
    assert_eq!(stats.records_recovered, 200);
    assert_eq!(stats.bytes_truncated + stats.corrupt_records, 0);
    // Reads after reopen go to disk.
    for (i, p) in pos.iter().enumerate().step_by(17) {
        assert_eq!(&s.read(*p).expect("read")[..], &payload(i as u32)[..]);
    }
}

#[test]
fn truncation_at_every_offset_of_the_last_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let n = 30;
    let (pos, path) = write_records(dir.path(), n);
    let image = fs::read(&path).expect("read");
    let from = pos[n as usize - 4].offset as usize;
    for cut in from..=image.len() {
        let (got, stats, len_after) = recover_image(&image[..cut]);
        let valid = (0..n)
            .take_while(|&i| record_end(pos[i as usize], i) <= cut)
            .count();
        expect_prefix(&got, valid);
        let valid_end = if valid == 0 {
            16
        } else {
            record_end(pos[valid - 1], valid as u32 - 1)
        };
        assert_eq!(stats.bytes_truncated, (cut - valid_end) as u64, "cut {cut}");
        assert_eq!(stats.corrupt_records, 0, "cut {cut}");
        assert_eq!(len_after, valid_end as u64, "torn tail removed from disk");
    }
}

#[test]
fn random_truncations() {
    let dir = tempfile::tempdir().expect("tempdir");
    let n = 200;
    let (pos, path) = write_records(dir.path(), n);
    let image = fs::read(&path).expect("read");
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..150 {
        let cut = (rng.next() % (image.len() as u64 + 1)) as usize;
        let (got, stats, _) = recover_image(&image[..cut]);
        let valid = (0..n)
            .take_while(|&i| record_end(pos[i as usize], i) <= cut)
            .count();
        expect_prefix(&got, valid);
        assert_eq!(stats.corrupt_records, 0);
    }
}

#[test]
fn bit_flip_anywhere_in_a_middle_record_skips_only_that_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let n = 12;
    let (pos, path) = write_records(dir.path(), n);
    let image = fs::read(&path).expect("read");
    let k = 5usize;
    let (start, end) = (pos[k].offset as usize, record_end(pos[k], k as u32));
    for byte in start..end {
        for bit in [0, 3, 7] {
            let mut damaged = image.clone();
            damaged[byte] ^= 1 << bit;
            let (got, stats, _) = recover_image(&damaged);
            assert_eq!(stats.corrupt_records, 1, "byte {byte} bit {bit}");
            assert_eq!(stats.bytes_truncated, 0);
            let ids: Vec<u32> = got
                .iter()
                .map(|(_, p)| u32::from_le_bytes([p[0], p[1], p[2], p[3]]))
                .collect();
            let expected: Vec<u32> = (0..n).filter(|&i| i != k as u32).collect();
            assert_eq!(ids, expected, "byte {byte} bit {bit}");
            for (_, p) in &got {
                let id = u32::from_le_bytes([p[0], p[1], p[2], p[3]]);
                assert_eq!(p, &payload(id), "never a corrupt payload");
            }
        }
    }
}

#[test]
fn garbage_after_the_tail_is_truncated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, path) = write_records(dir.path(), 10);
    let image = fs::read(&path).expect("read");
    let mut rng = Rng(42);
    let tails: Vec<Vec<u8>> = vec![
        vec![0; 4096],                                  // zero-filled extent after a crash
        (0..777).map(|_| rng.next() as u8).collect(),   // random junk
        vec![0xDE, 0xC0, 0x7E, 0xA1, 5, 0, 0, 0, 1, 2], // a torn record header
        b"plain text appended by accident".to_vec(),
    ];
    for tail in tails {
        let mut img = image.clone();
        img.extend_from_slice(&tail);
        let (got, stats, len_after) = recover_image(&img);
        expect_prefix(&got, 10);
        assert_eq!(stats.bytes_truncated, tail.len() as u64);
        assert_eq!(len_after, image.len() as u64);
    }
}

#[test]
fn acks_survive_clean_reopen_and_acked_segments_are_deleted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut s, _, _) = reopen(dir.path(), opts(512));
    let pos: Vec<_> = (0..100)
        .map(|i| s.append(&payload(i)).expect("append"))
        .collect();
    s.sync().expect("sync");
    let segments_before = s.segment_count();
    let first_seg = pos[0].segment;
    // Ack all of the first segment and every third record elsewhere.
    for (i, p) in pos.iter().enumerate() {
        if p.segment == first_seg || i % 3 == 0 {
            s.ack(*p).expect("ack");
        }
    }
    assert!(matches!(s.ack(pos[0]), Err(StoreError::NotFound(_))));
    assert!(!dir.path().join(format!("msgs.{first_seg:010}")).exists());
    assert!(!dir.path().join(format!("acks.{first_seg:010}")).exists());
    assert!(s.segment_count() < segments_before);
    let live: Vec<_> = pos
        .iter()
        .enumerate()
        .filter(|(i, p)| p.segment != first_seg && i % 3 != 0)
        .map(|(i, p)| (*p, payload(i as u32)))
        .collect();
    assert_eq!(s.live_records(), live.len() as u64);
    s.close().expect("close");

    let (mut s, got, stats) = reopen(dir.path(), opts(512));
    assert_eq!(got, live);
    assert!(stats.records_acked > 0);
    // Ack everything that is left: only the (empty) current segment may stay.
    for (p, _) in &got {
        s.ack(*p).expect("ack");
    }
    assert_eq!(s.segment_count(), 0, "recovered segments are never current");
    assert_eq!(s.disk_bytes(), 0);
    s.close().expect("close");
    let left: Vec<_> = fs::read_dir(dir.path()).expect("ls").collect();
    assert!(left.is_empty(), "disk use follows the backlog");
}

#[test]
fn hundred_thousand_records_and_no_acked_ones_come_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut s, _, _) = reopen(dir.path(), StoreOptions::default());
    let mut expected = Vec::new();
    for i in 0..100_000u32 {
        let p = s.append(&i.to_le_bytes()).expect("append");
        if i % 1000 == 999 {
            s.sync().expect("sync");
        }
        expected.push(p);
    }
    s.sync().expect("sync");
    for (i, p) in expected.iter().enumerate() {
        if i % 4 != 0 {
            s.ack(*p).expect("ack");
        }
    }
    s.close().expect("close");
    let mut n = 0u32;
    let (_s, stats) = QueueStore::open(dir.path(), StoreOptions::default(), |pos, p| {
        let i = u32::from_le_bytes(p.try_into().expect("4 bytes"));
        assert_eq!(i % 4, 0, "acked record {i} came back");
        assert_eq!(pos, expected[i as usize]);
        assert_eq!(i, n * 4, "append order");
        n += 1;
    })
    .expect("open");
    assert_eq!(n, 25_000);
    assert_eq!(stats.records_recovered, 25_000);
    assert_eq!(stats.records_acked, 75_000);
}

#[test]
fn oversized_record_gets_its_own_segment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut s, _, _) = reopen(dir.path(), opts(1024));
    let small = s.append(b"small").expect("append");
    let big_payload: Vec<u8> = (0..10_000).map(|i| i as u8).collect();
    let big = s.append(&big_payload).expect("append");
    let after = s.append(b"after").expect("append");
    assert!(small.segment < big.segment && big.segment < after.segment);
    s.sync().expect("sync");
    assert_eq!(&s.read(big).expect("read")[..], &big_payload[..]);
    s.close().expect("close");
    let (_s, got, _) = reopen(dir.path(), opts(1024));
    assert_eq!(got.len(), 3);
    assert_eq!(got[1].1, big_payload);
}

#[test]
fn positions_are_never_reused_after_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut s, _, _) = reopen(dir.path(), opts(1 << 20));
    let a = s.append(b"a").expect("append");
    s.close().expect("close");
    let (mut s, _, _) = reopen(dir.path(), opts(1 << 20));
    let b = s.append(b"b").expect("append");
    assert!(b.segment > a.segment, "writes go to a fresh segment");
    s.ack(a).expect("ack");
    // Segment of `a` was not current, so it is gone.
    assert!(!dir.path().join(format!("msgs.{:010}", a.segment)).exists());
}

#[test]
fn damaged_ack_entries_bring_records_back_and_torn_entries_are_cut() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut s, _, _) = reopen(dir.path(), opts(1 << 20));
    let pos: Vec<_> = (0..10)
        .map(|i| s.append(&payload(i)).expect("append"))
        .collect();
    for p in &pos[..4] {
        s.ack(*p).expect("ack");
    }
    s.close().expect("close");
    let acks = dir.path().join(format!("acks.{:010}", pos[0].segment));
    let mut bytes = fs::read(&acks).expect("read acks");
    assert_eq!(bytes.len(), 32);
    bytes[0] ^= 0xff; // damage the first entry
    bytes.extend_from_slice(&[1, 2, 3]); // torn partial entry
    fs::write(&acks, &bytes).expect("write");
    let (_s, got, stats) = reopen(dir.path(), opts(1 << 20));
    assert_eq!(
        got.len(),
        7,
        "the record with a damaged ack entry comes back"
    );
    assert_eq!(stats.ack_entries_ignored, 1);
    assert_eq!(fs::metadata(&acks).expect("meta").len(), 32);
}

#[test]
fn interrupted_segment_creation_and_orphan_ack_files_are_cleaned() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(dir.path().join("msgs.0000000003"), b"ANTR").expect("write");
    fs::write(dir.path().join("acks.0000000007"), [0u8; 8]).expect("write");
    fs::write(dir.path().join("unrelated.txt"), b"hi").expect("write");
    let (mut s, got, stats) = reopen(dir.path(), opts(1 << 20));
    assert!(got.is_empty());
    assert_eq!(stats.segments_deleted, 1);
    assert!(!dir.path().join("msgs.0000000003").exists());
    assert!(!dir.path().join("acks.0000000007").exists());
    assert!(dir.path().join("unrelated.txt").exists());
    let p = s.append(b"x").expect("append");
    assert_eq!(p.segment, 8, "numbers continue above every file seen");
}

#[test]
fn unknown_format_version_is_refused_not_repaired() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, path) = write_records(dir.path(), 3);
    let mut image = fs::read(&path).expect("read");
    image[8] = 2;
    fs::write(&path, &image).expect("write");
    let r = QueueStore::open(dir.path(), opts(1 << 20), |_, _| {});
    assert!(matches!(
        r,
        Err(StoreError::UnsupportedVersion { version: 2, .. })
    ));
    assert_eq!(fs::read(&path).expect("read"), image, "file untouched");
}

#[test]
fn damaged_segment_header_still_recovers_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, path) = write_records(dir.path(), 5);
    let mut image = fs::read(&path).expect("read");
    image[0] ^= 0xff;
    fs::write(&path, &image).expect("write");
    let (_s, got, _) = reopen(dir.path(), opts(1 << 20));
    expect_prefix(&got, 5);
}

#[test]
fn read_detects_corruption_after_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (pos, path) = write_records(dir.path(), 5);
    let (s, _, _) = reopen(dir.path(), opts(1 << 20));
    let mut image = fs::read(&path).expect("read");
    image[pos[2].offset as usize + 20] ^= 1;
    fs::write(&path, &image).expect("write");
    assert!(matches!(s.read(pos[2]), Err(StoreError::Corrupt { .. })));
    assert_eq!(&s.read(pos[3]).expect("read")[..], &payload(3)[..]);
}

#[test]
fn purge_and_delete_all() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("queue");
    let (mut s, _, _) = reopen(&dir, opts(256));
    for i in 0..50 {
        s.append(&payload(i)).expect("append");
    }
    s.sync().expect("sync");
    assert_eq!(s.purge().expect("purge"), 50);
    assert_eq!(s.live_records(), 0);
    let p = s.append(b"after purge").expect("append");
    s.close().expect("close");
    let (s, got, _) = reopen(&dir, opts(256));
    assert_eq!(got, vec![(p, b"after purge".to_vec())]);
    s.delete_all().expect("delete_all");
    assert!(!dir.exists());
}

#[test]
fn invalid_options_and_oversized_payloads_are_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = QueueStore::open(dir.path(), opts(10), |_, _| {});
    assert!(matches!(r, Err(StoreError::InvalidOptions(_))));
    let (s, _, _) = reopen(dir.path(), opts(4096));
    assert!(s
        .read(SegmentPosition {
            segment: 9,
            offset: 16
        })
        .is_err());
}

/// Recovery speed with a million small records. Run in release:
/// `cargo test -p antre-store --release --test recovery -- --ignored --nocapture`
#[test]
#[ignore = "timing test; run in release"]
fn recovery_of_one_million_records_is_fast() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut s, _, _) = reopen(dir.path(), StoreOptions::default());
    let body = [7u8; 100];
    for _ in 0..1_000_000 {
        s.append(&body).expect("append");
    }
    s.close().expect("close");
    let t = Instant::now();
    let mut n = 0u64;
    let (_s, stats) = QueueStore::open(dir.path(), StoreOptions::default(), |_, p| {
        n += p.len() as u64
    })
    .expect("open");
    let took = t.elapsed();
    println!("recovered {} records in {took:?}", stats.records_recovered);
    assert_eq!(stats.records_recovered, 1_000_000);
    assert!(took.as_secs_f64() < 2.0, "recovery took {took:?}");
}

/// Opening a store costs no file system work until it holds a record: the
/// directory appears with the first segment, and the parent's entry is
/// part of the next sync.
#[test]
fn a_store_makes_its_directory_with_its_first_record() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("queue");
    let (mut s, got, _) = reopen(&dir, opts(1 << 20));
    assert!(got.is_empty());
    assert!(!dir.exists(), "opening created nothing");
    assert!(!s.is_dirty());
    s.sync().expect("syncing an empty store does no I/O");
    assert_eq!(s.purge().expect("purge of nothing"), 0);
    assert!(!dir.exists());
    let pos = s.append(&payload(1)).expect("append");
    assert!(dir.is_dir(), "made with the first segment");
    assert!(s.is_dirty(), "the new directory entry is owed a sync");
    s.sync().expect("sync");
    assert!(!s.is_dirty());
    s.close().expect("close");
    let (s, got, _) = reopen(&dir, opts(1 << 20));
    assert_eq!(got, vec![(pos, payload(1))]);
    s.delete_all().expect("delete");
    let (s, _, _) = reopen(&tmp.path().join("never"), opts(1 << 20));
    s.delete_all()
        .expect("deleting a store that never had a directory");
}
