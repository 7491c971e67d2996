//! Write buffers under a shared budget: many stores that each take a burst
//! between two syncs hold at most the budget plus a small floor each, and
//! give their buffers back after a sync.

use antre_store::{QueueStore, StoreOptions, WriteBuffers};

const FLOOR: usize = 4 * 1024;

fn record(store: usize, i: usize) -> Vec<u8> {
    let mut r = vec![(store % 251) as u8; 1024];
    r[..8].copy_from_slice(&(i as u64).to_le_bytes());
    r
}

#[test]
fn many_stores_stay_within_the_budget_and_release_after_sync() {
    let dir = tempfile::tempdir().expect("tempdir");
    let budget = WriteBuffers::new(256 * 1024);
    let opts = StoreOptions {
        write_buffers: Some(budget.clone()),
        ..StoreOptions::default()
    };
    let mut stores: Vec<QueueStore> = (0..50)
        .map(|i| {
            QueueStore::open(&dir.path().join(format!("q{i}")), opts.clone(), |_, _| {})
                .expect("open")
                .0
        })
        .collect();
    for round in 0..3 {
        // A confirm window of 100 × 1 KiB lands in every store before the
        // sync round: unbudgeted, each buffer would grow to 128 KiB.
        let mut positions = Vec::new();
        for (s, store) in stores.iter_mut().enumerate() {
            for i in 0..100 {
                positions.push((s, i, store.append(&record(s, i)).expect("append")));
            }
        }
        let held: usize = stores.iter().map(QueueStore::buffer_capacity).sum();
        assert_eq!(
            held,
            budget.used(),
            "round {round}: the budget counts every buffer"
        );
        assert!(
            held <= budget.limit() + stores.len() * FLOOR,
            "round {round}: {held} bytes of buffers"
        );
        for store in &mut stores {
            store.sync().expect("sync");
        }
        // Every record reads back, whether it was buffered, written out at
        // the floor or written directly.
        for (s, i, pos) in positions {
            assert_eq!(stores[s].read(pos).expect("read"), record(s, i));
        }
        // The budget was spent: stores gave their buffers back until at
        // most half of it was kept (by busy stores, for the next round).
        let held: usize = stores.iter().map(QueueStore::buffer_capacity).sum();
        assert_eq!(held, budget.used());
        assert!(
            held <= budget.limit() / 2,
            "round {round}: {held} bytes kept after sync"
        );
    }
}

#[test]
fn a_busy_store_keeps_its_buffer_while_the_budget_has_room() {
    let dir = tempfile::tempdir().expect("tempdir");
    let budget = WriteBuffers::new(8 * 1024 * 1024);
    let opts = StoreOptions {
        write_buffers: Some(budget.clone()),
        ..StoreOptions::default()
    };
    let (mut store, _) = QueueStore::open(dir.path(), opts, |_, _| {}).expect("open");
    for i in 0..200 {
        store.append(&record(0, i)).expect("append");
    }
    store.sync().expect("sync");
    let kept = store.buffer_capacity();
    assert!(kept >= 200 * 1024, "a busy store keeps its buffer: {kept}");
    assert_eq!(budget.used(), kept);
    // A quiet round (one record) gives it back.
    store.append(&record(0, 0)).expect("append");
    store.sync().expect("sync");
    assert_eq!(store.buffer_capacity(), 0);
    assert_eq!(budget.used(), 0);
    drop(store);
    assert_eq!(budget.used(), 0);
}
