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
    f.channel.flush_confirms(&mut f.out);
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
