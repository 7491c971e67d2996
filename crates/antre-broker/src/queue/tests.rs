//! Unit tests of the queue engine on a manual clock.

use super::*;
use crate::clock::ManualClock;
use antre_amqp::BasicProperties;
use bytes::Bytes;
use std::sync::atomic::{AtomicBool, Ordering};

/// A sink that keeps what it is given, or refuses like a dead connection.
#[derive(Debug, Default)]
pub(crate) struct CollectSink {
    pub deliveries: Mutex<Vec<Delivery>>,
    pub cancelled: Mutex<Vec<String>>,
    pub synced: Mutex<Vec<(u64, bool)>>,
    pub dead: AtomicBool,
}

impl DeliverySink for CollectSink {
    fn deliver(&self, delivery: Delivery) -> Result<(), Box<Delivery>> {
        if self.dead.load(Ordering::Relaxed) {
            return Err(Box::new(delivery));
        }
        self.deliveries.lock().push(delivery);
        Ok(())
    }
    fn cancel(&self, consumer_tag: &str) {
        self.cancelled.lock().push(consumer_tag.to_owned());
    }
    fn synced(&self, token: u64, ok: bool) {
        self.synced.lock().push((token, ok));
    }
}

impl CollectSink {
    pub(crate) fn bodies(&self) -> Vec<String> {
        self.deliveries
            .lock()
            .iter()
            .map(|d| String::from_utf8_lossy(&d.entry.message.body).into_owned())
            .collect()
    }
}

pub(crate) fn message(body: &str) -> Arc<Message> {
    Arc::new(Message::new(
        String::new(),
        "q".into(),
        BasicProperties::default(),
        Bytes::copy_from_slice(body.as_bytes()),
    ))
}

impl Queue {
    pub(crate) fn publish_ok(self: &Arc<Self>, m: Arc<Message>) {
        assert!(matches!(
            self.publish(m).expect("publish"),
            Enqueued::Accepted { .. }
        ));
    }
}

fn queue() -> Arc<Queue> {
    queue_with(&[], Arc::new(ManualClock::at(1_000_000)))
}

pub(crate) fn queue_with(args: &[(&str, FieldValue)], clock: Arc<ManualClock>) -> Arc<Queue> {
    Queue::new(
        "/",
        "q",
        QueueOptions {
            durable: false,
            exclusive_owner: None,
            auto_delete: false,
            arguments: args.iter().cloned().collect(),
        },
        clock,
        None,
    )
    .expect("valid arguments")
}

pub(crate) fn consumer(id: u64, prefetch: u32, sink: &Arc<CollectSink>) -> ConsumerSpec {
    ConsumerSpec {
        id,
        connection: 1,
        channel: 1,
        tag: format!("c{id}").into(),
        no_ack: false,
        exclusive: false,
        credit: Credit::new(prefetch),
        channel_credit: Credit::new(0),
        sink: Arc::clone(sink) as Arc<dyn DeliverySink>,
        priority: 0,
    }
}

#[test]
fn higher_priority_consumers_are_served_first_while_they_have_credit() {
    let q = queue();
    let sinks: Vec<Arc<CollectSink>> = (0..3).map(|_| Arc::default()).collect();
    let low = ConsumerSpec {
        priority: -1,
        ..consumer(1, 0, &sinks[0])
    };
    let high_a = ConsumerSpec {
        priority: 5,
        ..consumer(2, 2, &sinks[1])
    };
    let high_b = ConsumerSpec {
        priority: 5,
        ..consumer(3, 1, &sinks[2])
    };
    q.add_consumer(low).unwrap();
    q.add_consumer(high_a).unwrap();
    q.add_consumer(high_b).unwrap();
    for i in 0..5 {
        q.publish_ok(message(&i.to_string()));
    }
    // Turns between the two of priority 5 until their windows (2 and 1)
    // are full; only then does the low one get messages.
    assert_eq!(sinks[1].bodies(), ["0", "2"]);
    assert_eq!(sinks[2].bodies(), ["1"]);
    assert_eq!(sinks[0].bodies(), ["3", "4"]);
}

#[test]
fn a_ttl_zero_message_goes_to_a_waiting_consumer_or_expires() {
    let clock = Arc::new(ManualClock::at(1_000_000));
    let q = queue_with(&[("x-message-ttl", FieldValue::I32(0))], clock);
    q.publish_ok(message("nobody"));
    assert_eq!(q.counts().ready, 0, "expired at once without a consumer");
    let sink = Arc::new(CollectSink::default());
    q.add_consumer(consumer(1, 0, &sink)).unwrap();
    q.publish_ok(message("caught"));
    assert_eq!(sink.bodies(), ["caught"]);
}

#[test]
fn a_ttl_zero_message_stamped_before_it_reached_the_queue_still_goes_to_a_waiting_consumer() {
    // The channel stamps the publish time; under load the queue may take
    // the message a few milliseconds later. It still "arrives" at its
    // stamp, when the consumer could take it.
    let clock = Arc::new(ManualClock::at(1_000_000));
    let q = queue_with(&[("x-message-ttl", FieldValue::I32(0))], clock);
    let sink = Arc::new(CollectSink::default());
    q.add_consumer(consumer(1, 0, &sink)).unwrap();
    q.publish_ok(Arc::new(
        Arc::unwrap_or_clone(message("late")).published_at(1_000_000 - 3),
    ));
    assert_eq!(sink.bodies(), ["late"]);
}

#[test]
fn consumers_are_served_round_robin() {
    let q = queue();
    let (a, b) = (
        Arc::new(CollectSink::default()),
        Arc::new(CollectSink::default()),
    );
    q.add_consumer(consumer(1, 0, &a)).unwrap();
    q.add_consumer(consumer(2, 0, &b)).unwrap();
    for i in 0..6 {
        q.publish_ok(message(&i.to_string()));
    }
    assert_eq!(a.bodies(), ["0", "2", "4"]);
    assert_eq!(b.bodies(), ["1", "3", "5"]);
    assert_eq!(
        q.counts(),
        QueueCounts {
            ready: 0,
            unacked: 6,
            consumers: 2
        }
    );
}

#[test]
fn a_consumer_leaving_does_not_cost_the_next_one_its_turn() {
    let q = queue();
    let sinks: Vec<Arc<CollectSink>> = (0..3).map(|_| Arc::default()).collect();
    for (id, sink) in (1..).zip(&sinks) {
        q.add_consumer(consumer(id, 0, sink)).unwrap();
    }
    q.publish_ok(message("to 1"));
    // It is 2's turn; 1 leaving must not hand it to 3.
    q.remove_consumer(1);
    q.publish_ok(message("to 2"));
    q.publish_ok(message("to 3"));
    q.publish_ok(message("to 2 again"));
    let bodies: Vec<Vec<String>> = sinks.iter().map(|s| s.bodies()).collect();
    assert_eq!(
        bodies,
        [vec!["to 1"], vec!["to 2", "to 2 again"], vec!["to 3"]]
    );
}

/// Seen on RabbitMQ 3.10: a consumer whose window filled rejoins the
/// line behind those that kept getting messages.
#[test]
fn a_consumer_whose_window_frees_goes_to_the_back_of_the_line() {
    let q = queue();
    let (a, b) = (
        Arc::new(CollectSink::default()),
        Arc::new(CollectSink::default()),
    );
    let spec = consumer(1, 1, &a);
    let window = Arc::clone(&spec.credit);
    q.add_consumer(spec).unwrap();
    q.add_consumer(consumer(2, 0, &b)).unwrap();
    for m in ["m1", "m2", "m3", "m4"] {
        q.publish_ok(message(m));
    }
    // a acks m1.
    let first = a.deliveries.lock()[0].entry.clone();
    window.release(1);
    q.ack([first]);
    q.kick();
    for m in ["m5", "m6", "m7"] {
        q.publish_ok(message(m));
    }
    assert_eq!(a.bodies(), ["m1", "m6"]);
    assert_eq!(b.bodies(), ["m2", "m3", "m4", "m5", "m7"]);
}

/// Seen on RabbitMQ 3.10: a new consumer joins the back of the line.
#[test]
fn a_new_consumer_joins_the_back_of_the_line() {
    let q = queue();
    let sinks: Vec<Arc<CollectSink>> = (0..3).map(|_| Arc::default()).collect();
    q.add_consumer(consumer(1, 0, &sinks[0])).unwrap();
    q.add_consumer(consumer(2, 0, &sinks[1])).unwrap();
    q.publish_ok(message("m1"));
    q.add_consumer(consumer(3, 0, &sinks[2])).unwrap();
    for m in ["m2", "m3", "m4", "m5"] {
        q.publish_ok(message(m));
    }
    let bodies: Vec<Vec<String>> = sinks.iter().map(|s| s.bodies()).collect();
    assert_eq!(bodies, [vec!["m1", "m3"], vec!["m2", "m5"], vec!["m4"]]);
}

#[test]
fn prefetch_window_limits_and_release_resumes() {
    let q = queue();
    let sink = Arc::new(CollectSink::default());
    let spec = consumer(1, 2, &sink);
    let credit = Arc::clone(&spec.credit);
    q.add_consumer(spec).unwrap();
    for i in 0..5 {
        q.publish_ok(message(&i.to_string()));
    }
    assert_eq!(sink.bodies(), ["0", "1"]);
    assert_eq!(q.counts().ready, 3);
    credit.release(1);
    q.kick();
    assert_eq!(sink.bodies(), ["0", "1", "2"]);
}

#[test]
fn a_full_consumer_is_skipped_for_one_with_room() {
    let q = queue();
    let (a, b) = (
        Arc::new(CollectSink::default()),
        Arc::new(CollectSink::default()),
    );
    q.add_consumer(consumer(1, 1, &a)).unwrap();
    q.add_consumer(consumer(2, 0, &b)).unwrap();
    for i in 0..4 {
        q.publish_ok(message(&i.to_string()));
    }
    assert_eq!(a.bodies(), ["0"]);
    assert_eq!(b.bodies(), ["1", "2", "3"]);
}

#[test]
fn requeue_restores_original_position_and_marks_redelivered() {
    let q = queue();
    for i in 0..4 {
        q.publish_ok(message(&i.to_string()));
    }
    let (e0, _) = q.get(false).unwrap();
    let (e1, _) = q.get(false).unwrap();
    q.requeue(vec![e1, e0]);
    let order: Vec<_> = std::iter::from_fn(|| q.get(true))
        .map(|(e, _)| {
            (
                String::from_utf8_lossy(&e.message.body).into_owned(),
                e.redelivered,
            )
        })
        .collect();
    assert_eq!(
        order,
        [
            ("0".into(), true),
            ("1".into(), true),
            ("2".into(), false),
            ("3".into(), false)
        ]
    );
}

#[test]
fn dead_sink_drops_the_consumer_and_keeps_the_message() {
    let q = queue();
    let (dead, alive) = (
        Arc::new(CollectSink::default()),
        Arc::new(CollectSink::default()),
    );
    dead.dead.store(true, Ordering::Relaxed);
    q.add_consumer(consumer(1, 0, &dead)).unwrap();
    q.publish_ok(message("m"));
    assert_eq!(
        q.counts(),
        QueueCounts {
            ready: 1,
            unacked: 0,
            consumers: 0
        }
    );
    q.add_consumer(consumer(2, 0, &alive)).unwrap();
    assert_eq!(alive.bodies(), ["m"]);
}

#[test]
fn exclusive_consumer_excludes_others() {
    let q = queue();
    let sink = Arc::new(CollectSink::default());
    let mut first = consumer(1, 0, &sink);
    first.exclusive = true;
    q.add_consumer(first).unwrap();
    assert!(matches!(
        q.add_consumer(consumer(2, 0, &sink)),
        Err(BrokerError::AccessRefused(_))
    ));
    q.remove_consumer(1);
    q.add_consumer(consumer(2, 0, &sink)).unwrap();
    let mut late = consumer(3, 0, &sink);
    late.exclusive = true;
    assert!(matches!(
        q.add_consumer(late),
        Err(BrokerError::AccessRefused(_))
    ));
}

#[test]
fn paused_channel_gets_nothing_until_resumed() {
    let q = queue();
    let sink = Arc::new(CollectSink::default());
    let spec = consumer(1, 0, &sink);
    let channel = Arc::clone(&spec.channel_credit);
    channel.set_paused(true);
    q.add_consumer(spec).unwrap();
    q.publish_ok(message("m"));
    assert!(sink.bodies().is_empty());
    channel.set_paused(false);
    q.kick();
    assert_eq!(sink.bodies(), ["m"]);
}

#[test]
fn delete_cancels_consumers_and_auto_delete_triggers_on_last_consumer() {
    let q = Queue::new(
        "/",
        "auto",
        QueueOptions {
            durable: false,
            exclusive_owner: None,
            auto_delete: true,
            arguments: FieldTable::new(),
        },
        Arc::new(ManualClock::default()),
        None,
    )
    .unwrap();
    let sink = Arc::new(CollectSink::default());
    q.add_consumer(consumer(1, 0, &sink)).unwrap();
    q.add_consumer(consumer(2, 0, &sink)).unwrap();
    assert!(!q.remove_consumer(1));
    assert!(
        q.remove_consumer(2),
        "last consumer left an auto-delete queue"
    );
    q.add_consumer(consumer(3, 0, &sink)).unwrap();
    q.publish_ok(message("x"));
    q.delete();
    assert_eq!(*sink.cancelled.lock(), ["c3"]);
}

pub(crate) fn reasons(q: &Queue) -> Vec<(String, &'static str)> {
    q.take_dead_letters()
        .into_iter()
        .map(|d| {
            (
                String::from_utf8_lossy(&d.message.body).into_owned(),
                d.reason.as_str(),
            )
        })
        .collect()
}

pub(crate) fn with_props(body: &str, props: BasicProperties) -> Arc<Message> {
    Arc::new(Message::new(
        String::new(),
        "q".into(),
        props,
        Bytes::copy_from_slice(body.as_bytes()),
    ))
}

#[test]
fn queue_ttl_expires_messages_to_the_dead_letter_exchange() {
    let clock = Arc::new(ManualClock::at(1_000_000));
    let q = queue_with(
        &[
            ("x-message-ttl", FieldValue::I32(1000)),
            ("x-dead-letter-exchange", FieldValue::string("dlx")),
        ],
        Arc::clone(&clock),
    );
    q.publish_ok(message("a"));
    clock.advance(999);
    assert!(!q.tick(clock.now_ms()));
    assert_eq!(q.counts().ready, 1);
    clock.advance(1);
    q.tick(clock.now_ms());
    assert_eq!(q.counts().ready, 0);
    assert_eq!(reasons(&q), [("a".to_owned(), "expired")]);
}

#[test]
fn expired_messages_are_never_delivered_and_message_ttl_wins_when_shorter() {
    let clock = Arc::new(ManualClock::at(1_000_000));
    let q = queue_with(
        &[("x-message-ttl", FieldValue::I32(10_000))],
        Arc::clone(&clock),
    );
    let short = BasicProperties {
        expiration: Some("100".into()),
        ..Default::default()
    };
    q.publish_ok(with_props("short", short));
    q.publish_ok(message("long"));
    clock.advance(100);
    // No tick: delivery itself must skip the expired head.
    let sink = Arc::new(CollectSink::default());
    q.add_consumer(consumer(1, 0, &sink)).unwrap();
    assert_eq!(sink.bodies(), ["long"]);
    assert!(
        q.take_dead_letters().is_empty(),
        "no dead-letter exchange: dropped"
    );
}

#[test]
fn unused_queue_expires() {
    let clock = Arc::new(ManualClock::at(5_000));
    let q = queue_with(&[("x-expires", FieldValue::I32(1000))], Arc::clone(&clock));
    clock.advance(500);
    q.touch();
    clock.advance(999);
    assert!(!q.tick(clock.now_ms()), "redeclare reset the timer");
    clock.advance(1);
    assert!(q.tick(clock.now_ms()));
}

#[test]
fn max_length_drops_head_into_dead_letters() {
    let q = queue_with(
        &[
            ("x-max-length", FieldValue::I32(2)),
            ("x-dead-letter-exchange", FieldValue::string("dlx")),
        ],
        Arc::new(ManualClock::default()),
    );
    for b in ["1", "2", "3"] {
        q.publish_ok(message(b));
    }
    assert_eq!(q.counts().ready, 2);
    assert_eq!(reasons(&q), [("1".to_owned(), "maxlen")]);
    let (first, _) = q.get(true).unwrap();
    assert_eq!(&first.message.body[..], b"2");
}

#[test]
fn max_length_bytes_and_reject_publish() {
    let q = queue_with(
        &[
            ("x-max-length-bytes", FieldValue::I32(5)),
            ("x-overflow", FieldValue::string("reject-publish")),
        ],
        Arc::new(ManualClock::default()),
    );
    assert_eq!(
        q.publish(message("abc")).unwrap(),
        Enqueued::Accepted { stored: false }
    );
    assert_eq!(q.publish(message("abc")).unwrap(), Enqueued::Rejected);
    assert_eq!(
        q.publish(message("ab")).unwrap(),
        Enqueued::Accepted { stored: false }
    );
    assert_eq!(q.counts().ready, 2);
    let dlx = queue_with(
        &[
            ("x-max-length", FieldValue::I32(0)),
            ("x-overflow", FieldValue::string("reject-publish-dlx")),
            ("x-dead-letter-exchange", FieldValue::string("dlx")),
        ],
        Arc::new(ManualClock::default()),
    );
    assert_eq!(dlx.publish(message("x")).unwrap(), Enqueued::Rejected);
    assert_eq!(reasons(&dlx), [("x".to_owned(), "maxlen")]);
}

#[test]
fn priority_queue_delivers_highest_first() {
    let q = queue_with(
        &[("x-max-priority", FieldValue::I32(10))],
        Arc::new(ManualClock::default()),
    );
    for (body, p) in [
        ("low", 1),
        ("high", 9),
        ("none", 0),
        ("mid", 5),
        ("high2", 9),
    ] {
        let props = BasicProperties {
            priority: Some(p),
            ..Default::default()
        };
        q.publish_ok(with_props(body, props));
    }
    let order: Vec<String> = std::iter::from_fn(|| q.get(true))
        .map(|(e, _)| String::from_utf8_lossy(&e.message.body).into_owned())
        .collect();
    assert_eq!(order, ["high", "high2", "mid", "low", "none"]);
}

#[test]
fn delivery_limit_dead_letters_poison_messages_and_counts_redeliveries() {
    let q = queue_with(
        &[
            ("x-delivery-limit", FieldValue::I32(2)),
            ("x-dead-letter-exchange", FieldValue::string("dlx")),
        ],
        Arc::new(ManualClock::default()),
    );
    q.publish_ok(message("poison"));
    for attempt in 0..3u32 {
        let (e, _) = q.get(false).expect("delivered again");
        let count = e
            .message
            .properties
            .headers
            .as_ref()
            .and_then(|h| h.get("x-delivery-count"))
            .and_then(FieldValue::as_i64);
        assert_eq!(count, (attempt > 0).then_some(i64::from(attempt)));
        q.requeue(vec![e]);
    }
    assert!(
        q.get(false).is_none(),
        "a third return exceeded the limit of 2"
    );
    assert_eq!(reasons(&q), [("poison".to_owned(), "delivery_limit")]);
}

#[test]
fn single_active_consumer_gets_everything_until_it_leaves() {
    let q = queue_with(
        &[("x-single-active-consumer", FieldValue::Bool(true))],
        Arc::new(ManualClock::default()),
    );
    let (a, b) = (
        Arc::new(CollectSink::default()),
        Arc::new(CollectSink::default()),
    );
    q.add_consumer(consumer(1, 0, &a)).unwrap();
    q.add_consumer(consumer(2, 0, &b)).unwrap();
    for i in 0..3 {
        q.publish_ok(message(&i.to_string()));
    }
    assert_eq!(a.bodies(), ["0", "1", "2"]);
    assert!(b.bodies().is_empty());
    q.remove_consumer(1);
    q.publish_ok(message("3"));
    assert_eq!(b.bodies(), ["3"]);
}

#[test]
fn deduplicating_queue_refuses_keys_it_holds_until_they_leave() {
    let q = queue_with(
        &[("x-message-deduplication", FieldValue::Bool(true))],
        Arc::new(ManualClock::default()),
    );
    let keyed = |body: &str, key: &str| {
        let headers: FieldTable = [("x-deduplication-header", FieldValue::string(key))]
            .into_iter()
            .collect();
        with_props(
            body,
            BasicProperties {
                headers: Some(headers),
                ..Default::default()
            },
        )
    };
    let by_id = |body: &str, id: &str| {
        with_props(
            body,
            BasicProperties {
                message_id: Some(id.into()),
                ..Default::default()
            },
        )
    };
    q.publish_ok(keyed("p1", "payment-1"));
    assert_eq!(
        q.publish(keyed("p1 again", "payment-1")).unwrap(),
        Enqueued::Duplicate
    );
    q.publish_ok(by_id("p2", "payment-2"));
    assert_eq!(
        q.publish(by_id("p2 again", "payment-2")).unwrap(),
        Enqueued::Duplicate
    );
    q.publish_ok(message("no key"));
    q.publish_ok(message("no key"));
    // Unacked still holds the key; acked releases it.
    let (e, _) = q.get(false).unwrap();
    assert_eq!(
        q.publish(keyed("p1 again", "payment-1")).unwrap(),
        Enqueued::Duplicate
    );
    q.ack([e]);
    q.publish_ok(keyed("p1 later", "payment-1"));
}

fn durable_queue(dir: &std::path::Path) -> Arc<Queue> {
    durable_queue_with(dir, &[])
}

fn durable_queue_with(dir: &std::path::Path, args: &[(&str, FieldValue)]) -> Arc<Queue> {
    let options = QueueOptions {
        durable: true,
        exclusive_owner: None,
        auto_delete: false,
        arguments: args.iter().cloned().collect::<FieldTable>(),
    };
    let clock = Arc::new(ManualClock::default());
    Queue::open_durable(
        "/",
        "q",
        options,
        clock,
        dir,
        StoreOptions::default(),
        Some(no_budget(dir)),
    )
    .expect("open durable queue")
}

/// Paging with a budget of nothing: every body and index page goes to
/// disk.
pub(crate) fn no_budget(dir: &std::path::Path) -> Paging {
    Paging {
        memory: MessageMemory::new(0),
        scratch_dir: dir.join("scratch"),
        store_options: StoreOptions::default(),
        alarms: Arc::default(),
        page_entries: 4,
    }
}

pub(crate) fn persistent(body: &str) -> Arc<Message> {
    with_props(
        body,
        BasicProperties {
            delivery_mode: Some(2),
            ..Default::default()
        },
    )
}

#[test]
fn a_delivery_that_comes_back_undelivered_frees_its_channel_window() {
    // Two queues, one consumer on each, sharing a channel window of 1.
    let window = Credit::new(1);
    let (a, b) = (queue(), queue());
    let (sink_a, sink_b) = (Arc::new(CollectSink::default()), Arc::default());
    let mut on_a = consumer(1, 0, &sink_a);
    on_a.channel_credit = Arc::clone(&window);
    let mut on_b = consumer(2, 0, &sink_b);
    on_b.channel_credit = Arc::clone(&window);
    a.add_consumer(on_a).unwrap();
    b.add_consumer(on_b).unwrap();
    a.publish_ok(message("a"));
    b.publish_ok(message("b"));
    assert!(sink_b.bodies().is_empty(), "the window is full");
    // The consumer on a is cancelled before its channel took "a".
    a.remove_consumer(1);
    let back = sink_a.deliveries.lock().pop().unwrap();
    a.return_undelivered(back);
    assert_eq!(window.in_flight(), 0);
    b.kick();
    assert_eq!(sink_b.bodies(), ["b"]);
}

#[test]
fn a_no_ack_delivery_that_comes_back_undelivered_stays_durable() {
    let dir = tempfile::tempdir().unwrap();
    let q = durable_queue(dir.path());
    let sink = Arc::new(CollectSink::default());
    let mut spec = consumer(1, 0, &sink);
    spec.no_ack = true;
    q.add_consumer(spec).unwrap();
    q.publish_ok(persistent("kept"));
    q.publish_ok(persistent("handed out"));
    let mut pushed = std::mem::take(&mut *sink.deliveries.lock());
    assert_eq!(pushed.len(), 2);
    // The channel hands the second to its client, which settles it; the
    // first never gets there (its channel closed) and goes back.
    let handed_out = pushed.pop().unwrap();
    q.settle_no_ack(&handed_out.entry);
    q.remove_consumer(1);
    q.return_undelivered(pushed.pop().unwrap());
    assert_eq!(q.counts().ready, 1);
    q.close_store();
    let q = durable_queue(dir.path());
    let (e, _) = q.get(true).expect("recovered");
    assert_eq!(&e.message.body[..], b"kept");
    assert!(q.get(true).is_none(), "the settled one is gone");
}

#[test]
fn unacked_persistent_messages_let_their_bodies_go_and_read_them_back() {
    let dir = tempfile::tempdir().unwrap();
    let q = durable_queue_with(
        dir.path(),
        &[
            ("x-dead-letter-exchange", FieldValue::string("dlx")),
            ("x-delivery-limit", FieldValue::I32(1)),
        ],
    );
    q.publish_ok(persistent("first"));
    q.publish_ok(persistent("second"));
    q.publish_ok(message("transient"));
    let take = |q: &Arc<Queue>| {
        let (e, _) = q.get(false).expect("a message");
        let body = String::from_utf8_lossy(&e.message.body).into_owned();
        (body, e.redelivered, e.delivery_count, e.into_unsettled())
    };
    let (b1, _, _, u1) = take(&q);
    let (b2, _, _, u2) = take(&q);
    let (b3, _, _, u3) = take(&q);
    assert_eq!(
        (b1.as_str(), b2.as_str(), b3.as_str()),
        ("first", "second", "transient")
    );
    assert!(
        !u1.holds_body() && !u2.holds_body(),
        "persistent: store only"
    );
    assert!(u3.holds_body(), "a transient message has no other copy");
    // Requeued, a body-less message is read back, in its old place.
    q.requeue([u2, u1]);
    q.requeue([u3]);
    assert_eq!(
        q.counts(),
        QueueCounts {
            ready: 3,
            unacked: 0,
            consumers: 0
        }
    );
    let (b, redelivered, count, u1) = take(&q);
    assert_eq!((b.as_str(), redelivered, count), ("first", true, 1));
    // Rejected, it is dead-lettered with its body.
    q.reject([u1]);
    // Past the delivery limit, it is dead-lettered with its body too.
    let (b, _, _, u2) = take(&q);
    assert_eq!(b, "second");
    q.requeue([u2]);
    assert_eq!(
        reasons(&q),
        [
            ("first".to_owned(), "rejected"),
            ("second".to_owned(), "delivery_limit")
        ]
    );
    // An ack needs no body, and the store forgets the message.
    let (_, _, _, u3) = take(&q);
    q.ack([u3]);
    assert_eq!(q.counts().ready, 0);
    q.close_store();
    let q = durable_queue(dir.path());
    assert!(q.get(true).is_none(), "nothing settled comes back");
}
