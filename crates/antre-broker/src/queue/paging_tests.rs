//! Queues past the message budget: transient bodies in scratch stores, the
//! index in pages, and every queue feature still holding.

use std::sync::Arc;

use antre_amqp::{BasicProperties, FieldTable, FieldValue};

use super::tests::{consumer, message, no_budget, persistent, reasons, with_props, CollectSink};
use super::*;
use crate::clock::ManualClock;

/// A transient queue that pages everything: budget 0, pages of 4.
fn paging_queue(
    dir: &std::path::Path,
    args: &[(&str, FieldValue)],
    clock: Arc<ManualClock>,
) -> Arc<Queue> {
    Queue::new(
        "/",
        "q",
        QueueOptions {
            durable: false,
            exclusive_owner: None,
            auto_delete: false,
            arguments: args.iter().cloned().collect::<FieldTable>(),
        },
        clock,
        Some(no_budget(dir)),
    )
    .unwrap()
}

/// Paging with a budget of `limit` bytes, and the budget to watch.
fn budget(dir: &std::path::Path, limit: u64) -> (Arc<MessageMemory>, Paging) {
    let memory = MessageMemory::new(limit);
    let paging = Paging {
        memory: Arc::clone(&memory),
        ..no_budget(dir)
    };
    (memory, paging)
}

fn body(e: &Entry) -> String {
    String::from_utf8_lossy(&e.message.body).into_owned()
}

fn scratch_files(dir: &std::path::Path) -> usize {
    walk(&dir.join("scratch"))
}

fn walk(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| {
                    if e.path().is_dir() {
                        walk(&e.path())
                    } else {
                        1
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn a_transient_backlog_past_the_budget_is_on_disk_and_comes_back_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let q = paging_queue(
        dir.path(),
        &[("x-max-priority", FieldValue::I32(1))],
        Arc::default(),
    );
    for i in 0..60 {
        let props = BasicProperties {
            priority: Some(u8::from(i % 5 == 0)),
            ..Default::default()
        };
        q.publish_ok(with_props(&format!("m{i:02}"), props));
    }
    assert_eq!(q.counts().ready, 60);
    assert_eq!(q.ready_bytes(), 60 * 3);
    assert!(
        scratch_files(dir.path()) > 0,
        "bodies and pages went to disk"
    );
    let memory = q.state.lock().ready.pager.try_charge(1);
    assert!(!memory, "nothing was charged to a budget of 0");
    // A consumer takes five and puts two back: they return to their places.
    let sink = Arc::new(CollectSink::default());
    q.add_consumer(consumer(1, 5, &sink)).unwrap();
    let mut taken: Vec<Entry> = sink.deliveries.lock().drain(..).map(|d| d.entry).collect();
    assert_eq!(
        taken.iter().map(body).collect::<Vec<_>>(),
        ["m00", "m05", "m10", "m15", "m20"]
    );
    let back = taken.split_off(3);
    q.remove_consumer(1);
    q.ack(taken);
    q.requeue(back);
    let mut order = Vec::new();
    while let Some((e, _)) = q.get(true) {
        assert_eq!(e.redelivered, ["m15", "m20"].contains(&body(&e).as_str()));
        order.push(body(&e));
    }
    let high = (0..60).filter(|i| i % 5 == 0).skip(3);
    let low = (0..60).filter(|i| i % 5 != 0);
    let expected: Vec<String> = high.chain(low).map(|i| format!("m{i:02}")).collect();
    assert_eq!(order, expected);
    assert_eq!(q.counts().ready, 0);
    assert_eq!(
        scratch_files(dir.path()),
        1,
        "one segment left, the current one"
    );
}

#[test]
fn ttl_dedup_and_delivery_limits_hold_for_paged_messages() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::at(1_000_000));
    let q = paging_queue(
        dir.path(),
        &[
            ("x-message-ttl", FieldValue::I32(1000)),
            ("x-message-deduplication", FieldValue::Bool(true)),
            ("x-delivery-limit", FieldValue::I32(1)),
            ("x-dead-letter-exchange", FieldValue::string("dlx")),
        ],
        Arc::clone(&clock),
    );
    let keyed = |body: &str, key: &str| {
        with_props(
            body,
            BasicProperties {
                message_id: Some(key.into()),
                ..Default::default()
            },
        )
    };
    for i in 0..20 {
        q.publish_ok(keyed(&format!("old{i}"), &format!("k{i}")));
    }
    clock.advance(500);
    for i in 20..40 {
        q.publish_ok(keyed(&format!("new{i}"), &format!("k{i}")));
    }
    assert_eq!(
        q.publish(keyed("again", "k33")).unwrap(),
        Enqueued::Duplicate,
        "the key of a paged message is still held"
    );
    clock.advance(500);
    q.tick(clock.now_ms());
    assert_eq!(q.counts().ready, 20, "the first twenty expired from disk");
    let dead = reasons(&q);
    assert_eq!(dead.len(), 20);
    assert_eq!(dead[0], ("old0".to_owned(), "expired"));
    assert_eq!(dead[19], ("old19".to_owned(), "expired"));
    // Their keys left with them.
    q.publish_ok(keyed("k0 again", "k0"));
    // A paged message requeued past its delivery limit is dead-lettered.
    let (e, _) = q.get(false).unwrap();
    assert_eq!(body(&e), "new20");
    q.requeue(vec![e]);
    let (e, _) = q.get(false).unwrap();
    assert_eq!((body(&e), e.delivery_count), ("new20".to_owned(), 1));
    q.requeue(vec![e]);
    assert_eq!(reasons(&q), [("new20".to_owned(), "delivery_limit")]);
    assert_eq!(q.counts().ready, 20);
}

#[test]
fn purge_and_delete_free_what_was_paged() {
    let dir = tempfile::tempdir().unwrap();
    let q = paging_queue(dir.path(), &[], Arc::default());
    for i in 0..50 {
        q.publish_ok(message(&format!("{i}")));
    }
    assert_eq!(q.purge(), 50);
    assert_eq!(q.counts().ready, 0);
    assert!(scratch_files(dir.path()) <= 1);
    for i in 0..50 {
        q.publish_ok(message(&format!("{i}")));
    }
    assert_eq!(q.delete(), 50);
    assert_eq!(
        scratch_files(dir.path()),
        0,
        "deleting the queue removed its scratch store"
    );
}

/// Budget accounting: what a queue keeps in memory is charged, and given
/// back when it leaves, so the budget never leaks.
#[test]
fn the_budget_is_charged_and_given_back() {
    let dir = tempfile::tempdir().unwrap();
    let (memory, paging) = budget(dir.path(), 64 * 1024);
    let q = Queue::new(
        "/",
        "q",
        QueueOptions {
            durable: false,
            exclusive_owner: None,
            auto_delete: false,
            arguments: FieldTable::new(),
        },
        Arc::new(ManualClock::default()),
        Some(paging),
    )
    .unwrap();
    for i in 0..400 {
        q.publish_ok(message(&format!("{i:0>500}")));
    }
    assert!(memory.used() <= memory.limit());
    assert!(memory.used() > memory.limit() / 2, "{}", memory.used());
    assert!(scratch_files(dir.path()) > 0, "the rest was paged");
    for i in 0..400 {
        let (e, _) = q.get(true).unwrap();
        assert_eq!(body(&e), format!("{i:0>500}"));
    }
    assert_eq!(memory.used(), 0);
}

#[test]
fn stored_messages_wait_on_disk_only_until_a_consumer_is_there() {
    let dir = tempfile::tempdir().unwrap();
    let (memory, paging) = budget(dir.path(), 1 << 20);
    let q = Queue::open_durable(
        "/",
        "q",
        QueueOptions {
            durable: true,
            exclusive_owner: None,
            auto_delete: false,
            arguments: FieldTable::default(),
        },
        Arc::new(ManualClock::default()),
        dir.path(),
        StoreOptions::default(),
        Some(paging),
    )
    .unwrap();
    for i in 0..10 {
        q.publish_ok(persistent(&format!("m{i}")));
    }
    assert_eq!(q.counts().ready, 10);
    assert_eq!(memory.used(), 0, "a backlog nobody consumes is on disk");
    // A consumer at its prefetch limit: what arrives now is about to be
    // taken and stays in memory.
    let sink = Arc::new(CollectSink::default());
    q.add_consumer(consumer(1, 1, &sink)).unwrap();
    q.publish_ok(persistent("m10"));
    assert!(memory.used() > 0, "a consumed queue keeps its messages");
    // Every body comes back in order, from disk or from memory.
    let mut taken: Vec<Entry> = sink.deliveries.lock().drain(..).map(|d| d.entry).collect();
    q.remove_consumer(1);
    q.ack(std::mem::take(&mut taken));
    let mut order = Vec::new();
    while let Some((e, _)) = q.get(true) {
        order.push(body(&e));
    }
    let expected: Vec<String> = (1..=10).map(|i| format!("m{i}")).collect();
    assert_eq!(order, expected);
    assert_eq!(memory.used(), 0);
}

/// A message dead-lettered at least once and kept (its letter reached no
/// queue) costs the budget nothing past it: its body goes to the scratch
/// store, comes back for each retry, and is freed once held.
#[test]
fn kept_dead_letters_page_out_past_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let (memory, paging) = budget(dir.path(), 0);
    let q = at_least_once_queue(paging);
    q.publish_ok(message("declined"));
    let (got, _) = q.get(false).expect("the payment");
    q.reject([got]);
    assert_eq!(q.dying(), (1, 8));
    assert_eq!(memory.used(), 0, "kept on disk, not in memory");
    let first = q.take_dead_letters();
    assert_eq!(body_of(&first[0]), "declined");
    assert_eq!(
        Arc::strong_count(&first[0].message),
        1,
        "the queue keeps no copy in memory"
    );
    q.dead_letter_routed(0, None);
    assert_eq!(q.dying_due(2_000), 1);
    let again = q.take_dead_letters();
    assert_eq!(
        (body_of(&again[0]), again[0].hold),
        ("declined".into(), Some(0))
    );
    q.dead_letter_routed(0, Some(Vec::new()));
    assert_eq!(q.dying(), (0, 0));

    // Within the budget it stays in memory, charged until it is held.
    let (memory, paging) = budget(dir.path(), 1 << 20);
    let q = at_least_once_queue(paging);
    q.publish_ok(message("declined"));
    let (got, _) = q.get(false).expect("the payment");
    drop(q.take_dead_letters());
    let before = memory.used();
    q.reject([got]);
    drop(q.take_dead_letters());
    assert!(memory.used() > before, "a kept body is charged");
    q.dead_letter_routed(0, Some(Vec::new()));
    assert_eq!(memory.used(), before);
}

fn at_least_once_queue(paging: Paging) -> Arc<Queue> {
    Queue::new(
        "/",
        "q",
        QueueOptions {
            durable: true,
            exclusive_owner: None,
            auto_delete: false,
            arguments: [
                ("x-queue-type", FieldValue::string("quorum")),
                ("x-overflow", FieldValue::string("reject-publish")),
                ("x-dead-letter-exchange", FieldValue::string("dlx")),
                (
                    "x-dead-letter-strategy",
                    FieldValue::string("at-least-once"),
                ),
            ]
            .into_iter()
            .collect::<FieldTable>(),
        },
        Arc::new(ManualClock::at(1_000)),
        Some(paging),
    )
    .unwrap()
}

fn body_of(letter: &DeadLetter) -> String {
    String::from_utf8_lossy(&letter.message.body).into_owned()
}
