//! Scratch stores: where the broker pages out what need not survive a
//! restart. Readable like any store, never fsync'd, gone when dropped.

use antre_store::{QueueStore, StoreOptions};

fn small() -> StoreOptions {
    StoreOptions {
        segment_size: 4096,
        write_buffer_size: 1024,
        ..StoreOptions::default()
    }
}

#[test]
fn scratch_records_read_back_and_free_their_segments_when_acked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scratch");
    std::fs::create_dir_all(path.join("leftover")).unwrap();
    let mut store = QueueStore::open_scratch(&path, small()).unwrap();
    assert!(
        !path.join("leftover").exists(),
        "what an earlier run left is gone"
    );
    let positions: Vec<_> = (0..200u32)
        .map(|i| {
            store
                .append(format!("record {i} {}", "x".repeat(50)).as_bytes())
                .unwrap()
        })
        .collect();
    assert!(store.segment_count() > 2);
    for (i, pos) in positions.iter().enumerate() {
        let body = store.read(*pos).unwrap();
        assert!(body.starts_with(format!("record {i} ").as_bytes()));
    }
    for pos in &positions[..150] {
        store.ack(*pos).unwrap();
    }
    assert!(store.ack(positions[0]).is_err(), "acked once only");
    assert_eq!(store.live_records(), 50);
    let acks = std::fs::read_dir(&path)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("acks."))
        .count();
    assert_eq!(acks, 0, "acks of a scratch store never reach the disk");
    let segments_left = store.segment_count();
    assert!(
        segments_left < 3,
        "{segments_left} segments after acking most"
    );
    drop(store);
    assert!(!path.exists(), "dropping a scratch store removes it");
}
