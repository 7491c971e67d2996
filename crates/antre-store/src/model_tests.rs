//! Property tests of [`QueueStore`] against an in-memory model, including
//! simulated `kill -9` and power loss, plus fault injection of a disk-full
//! write. They live inside the crate to use the `crash` and
//! `fail_next_flush` hooks.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::OpenOptions;
use std::path::Path;

use proptest::prelude::*;

use crate::{QueueStore, SegmentPosition, StoreError, StoreOptions};

fn small_opts() -> StoreOptions {
    // Tiny sizes so a few dozen operations exercise rollover, direct writes,
    // ack batching, ack fsyncs and segment deletion.
    StoreOptions {
        segment_size: 256,
        write_buffer_size: 96,
        write_buffers: None,
        max_pending_acks: 4,
        ack_sync_every: 8,
        max_open_read_files: 2,
    }
}

fn payload(id: u64, extra: usize) -> Vec<u8> {
    let mut p = id.to_le_bytes().to_vec();
    p.extend((0..extra).map(|i| (id as usize * 31 + i) as u8));
    p
}

fn open(dir: &Path) -> (QueueStore, BTreeMap<SegmentPosition, Vec<u8>>) {
    let mut got = BTreeMap::new();
    let mut last = None;
    let (store, _stats) = QueueStore::open(dir, small_opts(), |pos, p| {
        assert!(last < Some(pos), "callback out of append order");
        last = Some(pos);
        got.insert(pos, p.to_vec());
    })
    .expect("open");
    (store, got)
}

#[derive(Debug, Clone)]
enum Op {
    Append(usize),
    Ack(usize),
    Read(usize),
    Sync,
    SyncAcks,
    CleanReopen,
    /// Crash; with `power_loss`, unsynced bytes are cut back to a point
    /// `cut/255` of the way between durable and written length.
    Crash {
        power_loss: bool,
        cut: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        10 => (0usize..120).prop_map(Op::Append),
        6 => any::<usize>().prop_map(Op::Ack),
        2 => any::<usize>().prop_map(Op::Read),
        3 => Just(Op::Sync),
        1 => Just(Op::SyncAcks),
        1 => Just(Op::CleanReopen),
        1 => (any::<bool>(), any::<u8>()).prop_map(|(power_loss, cut)| Op::Crash { power_loss, cut }),
    ]
}

#[derive(Default)]
struct Model {
    live: BTreeMap<SegmentPosition, Vec<u8>>,
    /// Live records appended since the last successful sync: may vanish in a crash.
    unsynced: BTreeSet<SegmentPosition>,
    /// Acked since the last ack checkpoint we forced: may come back after a crash.
    ack_window: BTreeMap<SegmentPosition, Vec<u8>>,
}

fn nth_key(m: &BTreeMap<SegmentPosition, Vec<u8>>, i: usize) -> Option<SegmentPosition> {
    if m.is_empty() {
        None
    } else {
        m.keys().nth(i % m.len()).copied()
    }
}

fn run(ops: Vec<Op>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let qdir = dir.path().join("q");
    let (mut store, got) = open(&qdir);
    assert!(got.is_empty());
    let mut model = Model::default();
    let mut next_id = 0u64;
    for op in ops {
        match op {
            Op::Append(extra) => {
                let p = payload(next_id, extra);
                next_id += 1;
                let pos = store.append(&p).expect("append");
                assert!(
                    !model.live.contains_key(&pos) && !model.ack_window.contains_key(&pos),
                    "position {pos} reused"
                );
                model.live.insert(pos, p);
                model.unsynced.insert(pos);
            }
            Op::Ack(i) => {
                if let Some(pos) = nth_key(&model.live, i) {
                    store.ack(pos).expect("ack");
                    assert!(matches!(store.ack(pos), Err(StoreError::NotFound(_))));
                    let p = model.live.remove(&pos).expect("model");
                    model.unsynced.remove(&pos);
                    model.ack_window.insert(pos, p);
                }
            }
            Op::Read(i) => {
                if let Some(pos) = nth_key(&model.live, i) {
                    let got = store.read(pos).expect("read");
                    assert_eq!(&got[..], &model.live[&pos][..]);
                }
            }
            Op::Sync => {
                store.sync().expect("sync");
                assert!(!store.is_dirty());
                model.unsynced.clear();
            }
            Op::SyncAcks => {
                store.sync_acks().expect("sync_acks");
                model.ack_window.clear();
            }
            Op::CleanReopen => {
                store.close().expect("close");
                let (s, got) = open(&qdir);
                store = s;
                assert_eq!(
                    got, model.live,
                    "clean reopen must return exactly the live set"
                );
                model.unsynced.clear();
                model.ack_window.clear();
            }
            Op::Crash { power_loss, cut } => {
                let files = store.crash();
                if power_loss {
                    for (path, synced) in files {
                        let f = OpenOptions::new().write(true).open(&path).expect("open");
                        let len = f.metadata().expect("meta").len();
                        let keep =
                            synced.min(len) + len.saturating_sub(synced) * u64::from(cut) / 255;
                        f.set_len(keep).expect("truncate");
                    }
                }
                let (s, got) = open(&qdir);
                store = s;
                for (pos, p) in &got {
                    let expected = model.live.get(pos).or_else(|| model.ack_window.get(pos));
                    assert_eq!(
                        expected,
                        Some(p),
                        "recovered {pos} that is neither live nor recently acked"
                    );
                }
                for pos in model.live.keys() {
                    if !model.unsynced.contains(pos) {
                        assert!(got.contains_key(pos), "synced unacked record {pos} lost");
                    }
                }
                model.live = got;
                model.unsynced.clear();
                model.ack_window.clear();
            }
        }
        assert_eq!(store.live_records(), model.live.len() as u64);
    }
    store.close().expect("close");
    let (_store, got) = open(&qdir);
    assert_eq!(got, model.live);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_model(ops in proptest::collection::vec(op(), 1..100)) {
        run(ops);
    }
}

#[test]
fn disk_full_rolls_back_to_last_good_offset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = StoreOptions {
        segment_size: 1 << 20,
        ..StoreOptions::default()
    };
    let (mut store, _) = QueueStore::open(dir.path(), opts.clone(), |_, _| {}).expect("open");
    let kept: Vec<_> = (0..5u64)
        .map(|i| store.append(&payload(i, 40)).expect("append"))
        .collect();
    store.sync().expect("sync");
    let lost: Vec<_> = (5..10u64)
        .map(|i| store.append(&payload(i, 40)).expect("append"))
        .collect();
    store.fail_next_flush = true;
    let err = store.sync().expect_err("injected failure");
    assert!(matches!(err, StoreError::DiskFull { .. }), "{err}");
    assert!(lost.iter().all(|p| !store.contains(*p)));
    assert!(kept.iter().all(|p| store.contains(*p)));
    assert_eq!(store.live_records(), 5);
    // The store keeps working, in a fresh segment.
    let after = store.append(&payload(99, 3)).expect("append after failure");
    assert!(after.segment > kept[0].segment);
    store.sync().expect("sync");
    store.close().expect("close");

    let mut got = Vec::new();
    let (_s, stats) =
        QueueStore::open(dir.path(), opts, |pos, p| got.push((pos, p.to_vec()))).expect("reopen");
    assert_eq!(
        stats.bytes_truncated, 0,
        "the failed write left no partial record"
    );
    assert_eq!(stats.corrupt_records, 0);
    let positions: Vec<_> = got.iter().map(|g| g.0).collect();
    let mut expected = kept.clone();
    expected.push(after);
    assert_eq!(positions, expected);
}

#[test]
fn poisoned_store_refuses_writes_but_reads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut store, _) = QueueStore::open(dir.path(), small_opts(), |_, _| {}).expect("open");
    let pos = store.append(b"hello").expect("append");
    let e = store.poison(StoreError::InvalidOptions("simulated fsync failure"));
    assert!(matches!(e, StoreError::InvalidOptions(_)));
    assert!(matches!(
        store.append(b"x"),
        Err(StoreError::Poisoned { .. })
    ));
    assert!(matches!(store.sync(), Err(StoreError::Poisoned { .. })));
    assert_eq!(&store.read(pos).expect("read")[..], b"hello");
}
