//! Unit tests of the channel state machine, without sockets.

use super::*;
use crate::queue::tests::CollectSink;
use crate::queue::Delivery;
use antre_amqp::method::*;
use antre_amqp::BasicProperties;
use antre_amqp::ContentHeader;
use bytes::Bytes;

struct Fixture {
    vhost: Arc<Vhost>,
    sink: Arc<CollectSink>,
    channel: Channel,
    out: Vec<Outgoing>,
}

fn fixture() -> Fixture {
    let broker = Arc::new(Broker::new());
    let vhost = broker.vhost("/").unwrap();
    let sink = Arc::new(CollectSink::default());
    let ctx = ChannelContext {
        broker,
        vhost: Arc::clone(&vhost),
        connection: 1,
        user: "guest".into(),
        max_message_size: 1024,
    };
    let channel = Channel::new(1, ctx, Arc::clone(&sink) as Arc<dyn DeliverySink>);
    Fixture {
        vhost,
        sink,
        channel,
        out: Vec::new(),
    }
}

impl Fixture {
    fn call(&mut self, m: impl Into<Method>) -> Result<(), BrokerError> {
        self.channel.handle(m.into(), &mut self.out)
    }

    fn declare(&mut self, name: &str) {
        self.call(QueueDeclare {
            queue: name.into(),
            ..Default::default()
        })
        .unwrap();
    }

    fn publish(&mut self, key: &str, body: &str) {
        let header = ContentHeader {
            class_id: 60,
            body_size: body.len() as u64,
            properties: BasicProperties::default(),
        };
        let m = BasicPublish {
            routing_key: key.into(),
            ..Default::default()
        };
        self.channel
            .publish(
                m,
                header,
                Bytes::copy_from_slice(body.as_bytes()),
                &mut self.out,
            )
            .unwrap();
    }

    /// Feeds what the queues pushed to the sink back through the channel,
    /// as the server does, and returns the delivery tags it assigned.
    fn pump(&mut self) -> Vec<u64> {
        let deliveries: Vec<Delivery> = std::mem::take(&mut *self.sink.deliveries.lock());
        let mut tags = Vec::new();
        for d in deliveries {
            let before = self.out.len();
            self.channel.deliver(d, &mut self.out);
            for o in &self.out[before..] {
                if let Outgoing::Content(Method::BasicDeliver(m), _) = o {
                    tags.push(m.delivery_tag);
                }
            }
        }
        tags
    }

    /// Hands what the queues pushed to the channel; for each delivery,
    /// whether it reported a full prefetch window.
    fn deliver_pending(&mut self) -> Vec<bool> {
        let deliveries: Vec<Delivery> = std::mem::take(&mut *self.sink.deliveries.lock());
        deliveries
            .into_iter()
            .map(|d| self.channel.deliver(d, &mut self.out))
            .collect()
    }

    fn ready(&self, q: &str) -> u32 {
        self.vhost.queue(q, 1).unwrap().counts().ready
    }
}

#[test]
fn delivery_tags_count_up_and_multiple_ack_settles_a_prefix() {
    let mut f = fixture();
    f.declare("q");
    f.call(BasicConsume {
        queue: "q".into(),
        consumer_tag: "c".into(),
        ..Default::default()
    })
    .unwrap();
    for i in 0..4 {
        f.publish("q", &i.to_string());
    }
    assert_eq!(f.pump(), [1, 2, 3, 4]);
    f.call(BasicAck {
        delivery_tag: 3,
        multiple: true,
    })
    .unwrap();
    assert_eq!(f.channel.unacked_count(), 1);
    let err = f
        .call(BasicAck {
            delivery_tag: 2,
            multiple: false,
        })
        .unwrap_err();
    assert_eq!(
        err,
        BrokerError::PreconditionFailed("unknown delivery tag 2".into())
    );
}

#[test]
fn deliver_reports_when_the_prefetch_window_fills() {
    let mut f = fixture();
    f.declare("q");
    f.call(BasicQos {
        prefetch_count: 2,
        ..Default::default()
    })
    .unwrap();
    f.call(BasicConsume {
        queue: "q".into(),
        consumer_tag: "c".into(),
        ..Default::default()
    })
    .unwrap();
    f.publish("q", "0");
    assert_eq!(f.deliver_pending(), [false], "one of two is out");
    for i in 1..3 {
        f.publish("q", &i.to_string());
    }
    // The second fills the window; the third waits for an ack.
    assert_eq!(f.deliver_pending(), [true]);
    assert_eq!(f.ready("q"), 1);
    f.call(BasicAck {
        delivery_tag: 1,
        multiple: false,
    })
    .unwrap();
    assert_eq!(f.deliver_pending(), [true]);
}

#[test]
fn ack_all_with_tag_zero_and_nack_requeues() {
    let mut f = fixture();
    f.declare("q");
    for i in 0..3 {
        f.publish("q", &i.to_string());
    }
    for _ in 0..3 {
        f.call(BasicGet {
            queue: "q".into(),
            ..Default::default()
        })
        .unwrap();
    }
    f.call(BasicNack {
        delivery_tag: 2,
        multiple: false,
        requeue: true,
    })
    .unwrap();
    assert_eq!(f.ready("q"), 1);
    f.call(BasicAck {
        delivery_tag: 0,
        multiple: true,
    })
    .unwrap();
    assert_eq!(f.channel.unacked_count(), 0);
}

#[test]
fn confirms_are_flushed_as_one_multiple_ack() {
    let mut f = fixture();
    f.declare("q");
    f.call(ConfirmSelect { nowait: false }).unwrap();
    f.out.clear();
    for i in 0..5 {
        f.publish("q", &i.to_string());
    }
    // The management API's messages_unconfirmed, until the flush.
    assert_eq!(f.channel.stats().unconfirmed(), 5);
    f.channel.flush_confirms(&mut f.out);
    assert_eq!(f.channel.stats().unconfirmed(), 0);
    assert_eq!(f.channel.stats().confirm.get(), 5);
    assert_eq!(
        f.out,
        [Outgoing::Method(
            BasicAck {
                delivery_tag: 5,
                multiple: true
            }
            .into()
        )]
    );
    let err = f.call(TxSelect {}).unwrap_err();
    assert!(matches!(err, BrokerError::PreconditionFailed(_)));
}

#[test]
fn transactions_hold_publishes_until_commit() {
    let mut f = fixture();
    f.declare("q");
    f.call(TxSelect {}).unwrap();
    f.publish("q", "a");
    assert_eq!(f.ready("q"), 0);
    f.call(TxCommit {}).unwrap();
    assert_eq!(f.ready("q"), 1);
    f.publish("q", "b");
    f.call(TxRollback {}).unwrap();
    f.call(TxCommit {}).unwrap();
    assert_eq!(f.ready("q"), 1);
}

#[test]
fn closing_requeues_unacked_and_cancels_consumers() {
    let mut f = fixture();
    f.declare("q");
    f.call(BasicConsume {
        queue: "q".into(),
        consumer_tag: "c".into(),
        ..Default::default()
    })
    .unwrap();
    f.publish("q", "x");
    f.pump();
    f.channel.close();
    let q = f.vhost.queue("q", 1).unwrap();
    assert_eq!(
        q.counts(),
        crate::QueueCounts {
            ready: 1,
            unacked: 0,
            consumers: 0
        }
    );
}

#[test]
fn delivery_for_a_cancelled_consumer_goes_back_unmarked() {
    let mut f = fixture();
    f.declare("q");
    f.call(BasicConsume {
        queue: "q".into(),
        consumer_tag: "c".into(),
        ..Default::default()
    })
    .unwrap();
    f.publish("q", "x");
    f.call(BasicCancel {
        consumer_tag: "c".into(),
        nowait: false,
    })
    .unwrap();
    assert!(f.pump().is_empty());
    let q = f.vhost.queue("q", 1).unwrap();
    let (entry, _) = q.get(true).unwrap();
    assert!(!entry.redelivered, "it never reached the client");
}

#[test]
fn empty_queue_name_means_the_last_declared_queue() {
    let mut f = fixture();
    f.declare("");
    f.publish("q", "unrouted");
    f.call(BasicGet::default()).unwrap();
    assert!(matches!(
        f.out.last(),
        Some(Outgoing::Method(Method::BasicGetEmpty(_)))
    ));
    let mut g = fixture();
    assert!(matches!(
        g.call(BasicGet::default()),
        Err(BrokerError::NotFound(_))
    ));
}

#[test]
fn oversized_or_foreign_content_headers_are_refused() {
    let f = fixture();
    let big = ContentHeader {
        class_id: 60,
        body_size: 1025,
        properties: BasicProperties::default(),
    };
    assert!(matches!(
        f.channel.check_header(&big),
        Err(BrokerError::PreconditionFailed(_))
    ));
    let foreign = ContentHeader {
        class_id: 10,
        body_size: 1,
        properties: BasicProperties::default(),
    };
    assert!(matches!(
        f.channel.check_header(&foreign),
        Err(BrokerError::UnexpectedFrame(_))
    ));
}

#[test]
fn consumer_timeout_trips_on_the_queue_timeout_or_the_default() {
    use crate::clock::{Clock, ManualClock};
    let clock = Arc::new(ManualClock::at(10_000));
    let broker = Arc::new(Broker::with_clock(Arc::clone(&clock) as Arc<dyn Clock>));
    let vhost = broker.vhost("/").unwrap();
    let sink = Arc::new(CollectSink::default());
    let ctx = ChannelContext {
        broker,
        vhost,
        connection: 1,
        user: "guest".into(),
        max_message_size: 1024,
    };
    let mut f = Fixture {
        vhost: Arc::clone(&ctx.vhost),
        sink: Arc::clone(&sink),
        channel: Channel::new(1, ctx, sink as Arc<dyn DeliverySink>),
        out: Vec::new(),
    };
    let timeout: antre_amqp::FieldTable =
        [("x-consumer-timeout", antre_amqp::FieldValue::I32(500))]
            .into_iter()
            .collect();
    f.call(QueueDeclare {
        queue: "slow".into(),
        arguments: timeout,
        ..Default::default()
    })
    .unwrap();
    f.declare("plain");
    f.publish("slow", "a");
    f.publish("plain", "b");
    for q in ["slow", "plain"] {
        f.call(BasicGet {
            queue: q.into(),
            ..Default::default()
        })
        .unwrap();
    }
    clock.advance(500);
    assert!(f
        .channel
        .check_consumer_timeout(clock.now_ms(), Some(1000))
        .is_ok());
    clock.advance(1);
    let err = f
        .channel
        .check_consumer_timeout(clock.now_ms(), None)
        .unwrap_err();
    assert!(
        err.to_string().contains("Timeout value used: 500 ms"),
        "{err}"
    );
    f.call(BasicAck {
        delivery_tag: 1,
        multiple: false,
    })
    .unwrap();
    assert!(f
        .channel
        .check_consumer_timeout(clock.now_ms(), Some(1000))
        .is_ok());
    clock.advance(500);
    let err = f
        .channel
        .check_consumer_timeout(clock.now_ms(), Some(1000))
        .unwrap_err();
    assert!(
        err.to_string().contains("Timeout value used: 1000 ms"),
        "{err}"
    );
}

#[test]
fn a_publish_grant_is_not_reused_after_the_permission_changes() {
    let mut f = fixture();
    f.declare("q");
    let broker = Arc::clone(&f.channel.ctx.broker);
    let publish = |f: &mut Fixture| {
        let header = ContentHeader {
            class_id: 60,
            body_size: 1,
            properties: BasicProperties::default(),
        };
        let m = BasicPublish {
            routing_key: "q".into(),
            ..Default::default()
        };
        f.channel
            .publish(m, header, Bytes::from_static(b"x"), &mut f.out)
    };
    publish(&mut f).unwrap();
    publish(&mut f).unwrap();
    let mut p = crate::access::full_permission("guest", "/");
    p.write = "^only-this$".into();
    broker.access().set_permission(p.clone()).unwrap();
    assert_eq!(
        publish(&mut f).unwrap_err().to_string(),
        "ACCESS_REFUSED - access to exchange 'amq.default' in vhost '/' refused for user 'guest'"
    );
    p.write = "^amq\\.default$".into();
    broker.access().set_permission(p).unwrap();
    publish(&mut f).unwrap();
    assert_eq!(f.vhost.queue("q", 1).unwrap().counts().ready, 3);
}

/// Takes `n` messages with basic.get (no ack), returning their tags.
fn get_n(f: &mut Fixture, q: &str, n: usize) -> Vec<u64> {
    let mut tags = Vec::new();
    for _ in 0..n {
        let before = f.out.len();
        f.call(BasicGet {
            queue: q.into(),
            ..Default::default()
        })
        .unwrap();
        for o in &f.out[before..] {
            if let Outgoing::Content(Method::BasicGetOk(m), _) = o {
                tags.push(m.delivery_tag);
            }
        }
    }
    tags
}

fn ack(f: &mut Fixture, tag: u64, multiple: bool) -> Result<(), BrokerError> {
    f.call(BasicAck {
        delivery_tag: tag,
        multiple,
    })
}

fn counts(f: &Fixture, q: &str) -> (u32, u32) {
    let c = f.vhost.queue(q, 1).unwrap().counts();
    (c.ready, c.unacked)
}

#[test]
fn out_of_order_acks_over_a_long_run_hold_the_log_to_its_live_records() {
    let mut f = fixture();
    f.declare("q");
    f.call(BasicConsume {
        queue: "q".into(),
        consumer_tag: "c".into(),
        ..Default::default()
    })
    .unwrap();
    // Tag 1 is never acked; after it, every round delivers 100 and acks
    // them in a scrambled order (odd tags first, then even ones backwards),
    // leaving every tenth unacked until the next round.
    f.publish("q", "pinned");
    assert_eq!(f.pump(), [1]);
    let mut late: Vec<u64> = Vec::new();
    let mut max_held = 0;
    for round in 0..200 {
        for i in 0..100 {
            f.publish("q", &format!("{round}-{i}"));
        }
        let tags = f.pump();
        assert_eq!(tags.len(), 100);
        let (keep, settle): (Vec<u64>, Vec<u64>) = tags.iter().partition(|&&t| t % 10 == 0);
        let (odd, mut even): (Vec<u64>, Vec<u64>) = settle.iter().partition(|&&t| t % 2 == 1);
        even.reverse();
        for t in odd.into_iter().chain(even).chain(late.drain(..)) {
            ack(&mut f, t, false).unwrap();
        }
        late = keep;
        max_held = max_held.max(f.channel.unacked.held());
        assert_eq!(f.channel.unacked_count(), 1 + late.len());
    }
    // Live records at most 11 (the pinned one and a round's tenth), plus
    // what one round adds before it is acked: never the 20,000 tags run
    // through.
    assert!(max_held <= 2 * 111 + 64, "held {max_held} records");
    assert_eq!(counts(&f, "q"), (0, 11));
    // A multiple ack over all those holes settles exactly the live ones.
    let last = *late.last().unwrap();
    ack(&mut f, last, true).unwrap();
    assert_eq!(f.channel.unacked_count(), 0);
    assert_eq!(f.channel.unacked.held(), 0);
    assert_eq!(
        f.channel.unacked.origins(),
        0,
        "the queue is not kept alive"
    );
    assert_eq!(counts(&f, "q"), (0, 0));
}

#[test]
fn multiple_settles_across_holes_take_only_live_tags() {
    let mut f = fixture();
    f.declare("q");
    for i in 0..10 {
        f.publish("q", &i.to_string());
    }
    assert_eq!(get_n(&mut f, "q", 10), (1..=10).collect::<Vec<_>>());
    for t in [3, 5, 7] {
        ack(&mut f, t, false).unwrap();
    }
    f.call(BasicReject {
        delivery_tag: 2,
        requeue: true,
    })
    .unwrap();
    assert_eq!(counts(&f, "q"), (1, 6));
    ack(&mut f, 8, true).unwrap();
    // 1, 4, 6 and 8 went; 9 and 10 stay.
    assert_eq!(f.channel.unacked_count(), 2);
    assert_eq!(counts(&f, "q"), (1, 2));
    for (tag, multiple) in [(5, false), (8, true), (8, false)] {
        assert_eq!(
            ack(&mut f, tag, multiple).unwrap_err(),
            BrokerError::PreconditionFailed(format!("unknown delivery tag {tag}"))
        );
    }
    // A nack of tag 0 with multiple puts back everything left.
    f.call(BasicNack {
        delivery_tag: 0,
        multiple: true,
        requeue: true,
    })
    .unwrap();
    assert_eq!(counts(&f, "q"), (3, 0));
    // They come back marked redelivered, with their bodies.
    let before = f.out.len();
    get_n(&mut f, "q", 3);
    let bodies: Vec<(String, bool)> = f.out[before..]
        .iter()
        .filter_map(|o| match o {
            Outgoing::Content(Method::BasicGetOk(m), msg) => Some((
                String::from_utf8_lossy(&msg.body).into_owned(),
                m.redelivered,
            )),
            _ => None,
        })
        .collect();
    assert_eq!(
        bodies,
        [("1".into(), true), ("8".into(), true), ("9".into(), true)]
    );
}

#[test]
fn recover_in_a_transaction_spares_what_the_transaction_settled() {
    let mut f = fixture();
    f.declare("q");
    for i in 0..6 {
        f.publish("q", &i.to_string());
    }
    get_n(&mut f, "q", 6);
    f.call(TxSelect {}).unwrap();
    ack(&mut f, 2, true).unwrap();
    ack(&mut f, 5, false).unwrap();
    f.call(BasicRecover { requeue: true }).unwrap();
    // 3, 4 and 6 went back; 1, 2 and 5 wait for the commit.
    assert_eq!(counts(&f, "q"), (3, 3));
    assert_eq!(f.channel.unacked_count(), 3);
    f.call(TxCommit {}).unwrap();
    assert_eq!(counts(&f, "q"), (3, 0));
    assert_eq!(f.channel.unacked_count(), 0);
}

#[test]
fn settling_one_consumer_releases_its_own_window_and_the_channels() {
    let mut f = fixture();
    f.declare("a");
    f.declare("b");
    // The consumers' window first: a per-consumer basic.qos lifts the
    // channel's.
    f.call(BasicQos {
        prefetch_count: 2,
        ..Default::default()
    })
    .unwrap();
    f.call(BasicQos {
        prefetch_count: 3,
        global: true,
        ..Default::default()
    })
    .unwrap();
    for q in ["a", "b"] {
        f.call(BasicConsume {
            queue: q.into(),
            consumer_tag: q.into(),
            ..Default::default()
        })
        .unwrap();
    }
    for i in 0..4 {
        f.publish("a", &format!("a{i}"));
        f.publish("b", &format!("b{i}"));
    }
    // The channel's window (3) binds first: a gets 2 (its own window), b 1.
    f.out.clear();
    let first = f.pump();
    assert_eq!(first.len(), 3);
    assert_eq!((counts(&f, "a").1, counts(&f, "b").1), (2, 1));
    let of_b = |f: &Fixture| -> Vec<u64> {
        f.out
            .iter()
            .filter_map(|o| match o {
                Outgoing::Content(Method::BasicDeliver(m), _) if m.consumer_tag == "b" => {
                    Some(m.delivery_tag)
                }
                _ => None,
            })
            .collect()
    };
    let b_tags = of_b(&f);
    assert_eq!(b_tags.len(), 1);
    // Settle b's delivery, out of order with a's: the room goes to b, as
    // a's own window is still full.
    ack(&mut f, b_tags[0], false).unwrap();
    f.out.clear();
    let next = f.pump();
    assert_eq!(next.len(), 1, "one slot in the channel's window came free");
    assert_eq!(of_b(&f), next);
    assert_eq!(f.channel.unacked_count(), 3);
    ack(&mut f, 0, true).unwrap();
    assert_eq!(f.pump().len(), 3);
}

#[test]
fn requeued_transient_messages_keep_their_ttl_and_deduplication_fields() {
    let mut f = fixture();
    let args: antre_amqp::FieldTable = [
        ("x-message-ttl", antre_amqp::FieldValue::I32(60_000)),
        (
            "x-message-deduplication",
            antre_amqp::FieldValue::Bool(true),
        ),
    ]
    .into_iter()
    .collect();
    f.call(QueueDeclare {
        queue: "q".into(),
        arguments: args,
        ..Default::default()
    })
    .unwrap();
    let publish = |f: &mut Fixture, key: &str| {
        let header = ContentHeader {
            class_id: 60,
            body_size: 1,
            properties: BasicProperties {
                message_id: Some(key.into()),
                ..Default::default()
            },
        };
        let m = BasicPublish {
            routing_key: "q".into(),
            ..Default::default()
        };
        f.channel
            .publish(m, header, Bytes::from_static(b"x"), &mut f.out)
            .unwrap();
    };
    publish(&mut f, "k1");
    get_n(&mut f, "q", 1);
    // Delivered and unacked, its key still counts: a duplicate is dropped.
    publish(&mut f, "k1");
    assert_eq!(counts(&f, "q"), (0, 1));
    f.call(BasicRecover { requeue: true }).unwrap();
    assert_eq!(counts(&f, "q"), (1, 0));
    publish(&mut f, "k1");
    assert_eq!(
        counts(&f, "q"),
        (1, 0),
        "the key came back with the message"
    );
    get_n(&mut f, "q", 1);
    ack(&mut f, 2, false).unwrap();
    // Acked, the key is free again.
    publish(&mut f, "k1");
    assert_eq!(counts(&f, "q"), (1, 0));
    assert_eq!(f.channel.unacked.held(), 0);
}

/// A metadata log that applies each proposal to its broker at once, as
/// node "n1" of a cluster whose other node "n2" runs, with other nodes'
/// entries scripted around it.
#[derive(Debug, Default)]
struct Scripted {
    broker: std::sync::OnceLock<std::sync::Weak<Broker>>,
    /// Entries logged right after the next proposal, applied before its
    /// answer.
    behind: parking_lot::Mutex<Vec<crate::cluster::MetaCommand>>,
    /// The next proposal times out, unapplied (it may be later).
    time_out: std::sync::atomic::AtomicBool,
    later: parking_lot::Mutex<Vec<crate::cluster::MetaCommand>>,
}

impl crate::cluster::MetadataLog for Scripted {
    fn node_name(&self) -> &str {
        "n1"
    }

    fn nodes(&self) -> Vec<String> {
        vec!["n1".into(), "n2".into()]
    }

    fn propose(
        &self,
        command: crate::cluster::MetaCommand,
    ) -> Result<crate::cluster::MetaOutcome, crate::cluster::MetaError> {
        use std::sync::atomic::Ordering;
        if self.time_out.swap(false, Ordering::Relaxed) {
            return Err(crate::cluster::MetaError::Unavailable("timed out".into()));
        }
        let broker = self.broker.get().and_then(std::sync::Weak::upgrade);
        let broker = broker.expect("the broker");
        let outcome = broker.apply_meta(command);
        for c in std::mem::take(&mut *self.behind.lock()) {
            let _ = broker.apply_meta(c);
        }
        outcome
    }

    fn propose_later(&self, command: crate::cluster::MetaCommand) {
        self.later.lock().push(command);
    }
}

/// A channel of node n1 of a cluster that records exclusive queue names
/// and claims them.
fn clustered() -> (Fixture, Arc<Scripted>) {
    let f = fixture();
    let log = Arc::new(Scripted::default());
    let broker = &f.channel.ctx.broker;
    log.broker.set(Arc::downgrade(broker)).expect("once");
    broker.set_metadata_log(Arc::clone(&log) as Arc<dyn crate::cluster::MetadataLog>);
    let flags = crate::feature_flags::FEATURE_FLAGS.iter();
    broker.set_enabled_feature_flags(flags.map(|f| f.name.to_owned()).collect());
    (f, log)
}

fn exclusive_declare(name: &str) -> QueueDeclare {
    QueueDeclare {
        queue: name.into(),
        exclusive: true,
        ..Default::default()
    }
}

/// This node's release of its earlier queue of a name is applied after
/// the claim of a new declare of it, and n2's claim on the freed name
/// comes before the queue is made: n2 has the name, so the declare is
/// refused (405) and the queue made here goes. Before, the declare was
/// answered ok while the metadata gave the name to n2's queue: two
/// queues of one name, and publishes from other nodes went to n2's.
#[test]
fn an_exclusive_declare_whose_name_another_node_takes_meanwhile_is_refused() {
    let (mut f, log) = clustered();
    let release = f.vhost.exclusive_record("rpc", "n1", false);
    let n2 = f.vhost.exclusive_hold(log.as_ref(), "rpc", "n2", None);
    // An earlier queue of n1's, gone; its release not yet applied.
    f.vhost.hold_exclusive("rpc", "n1", None).unwrap();
    *log.behind.lock() = vec![release, n2];
    let refused = f.call(exclusive_declare("rpc")).unwrap_err();
    assert!(
        matches!(refused, BrokerError::ResourceLocked(_)),
        "{refused:?}"
    );
    assert!(!f.vhost.has_queue("rpc"));
    assert_eq!(f.vhost.exclusive_elsewhere("rpc").as_deref(), Some("n2"));
}

/// A claim that times out may still be applied: its name is released
/// (only while this node holds it), or it stayed this node's for a queue
/// that is not here, refused to every other node's clients.
#[test]
fn an_exclusive_declare_that_times_out_releases_its_name() {
    let (mut f, log) = clustered();
    log.time_out
        .store(true, std::sync::atomic::Ordering::Relaxed);
    f.call(exclusive_declare("jobs")).unwrap_err();
    assert!(!f.vhost.has_queue("jobs"));
    assert_eq!(
        *log.later.lock(),
        [f.vhost.exclusive_record("jobs", "n1", false)]
    );
    // Declared again: claimed and made.
    f.call(exclusive_declare("jobs")).unwrap();
    assert!(f.vhost.has_queue("jobs"));
    assert!(f.vhost.holds_exclusive("jobs"));
}
