//! RabbitMQ's stream protocol against antre with an independent client
//! (the `rabbitmq-stream-client` crate): publish with confirms, consume
//! from an offset, deduplication by publishing id, offset tracking, super
//! streams, and a stream shared with AMQP 0-9-1 both ways.

use crate::common;
#[path = "stream_protocol/filtering.rs"]
mod filtering;

use std::time::Duration;

use common::stream_confirm::{answer_of, answer_of_named};
use common::*;
use futures::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use rabbitmq_stream_client::types::{
    Message, OffsetSpecification, RoutingKeyRoutingStrategy, RoutingStrategy, SimpleValue,
};
use rabbitmq_stream_client::{Consumer, Environment};

async fn start() -> TestBroker {
    TestBroker::start_with(|c| c.stream_listen = Some("127.0.0.1:0".into())).await
}

async fn connect(b: &TestBroker) -> Environment {
    let addr = b.server.stream_addr.expect("stream listener");
    within(
        "stream client connects",
        Environment::builder()
            .host(&addr.ip().to_string())
            .port(addr.port())
            .build(),
    )
    .await
    .expect("environment")
}

/// Reads `n` messages: (offset, body).
async fn take(consumer: &mut Consumer, n: usize) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    while out.len() < n {
        let d = within("stream delivery", consumer.next())
            .await
            .expect("a delivery")
            .expect("delivery ok");
        let body = d
            .message()
            .data()
            .map(|b| String::from_utf8_lossy(b).into_owned());
        out.push((d.offset(), body.unwrap_or_default()));
    }
    out
}

// The client's producers close in Drop by blocking the thread: the broker
// must run on another worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_with_confirms_then_consume_from_first() {
    let b = start().await;
    let env = connect(&b).await;
    env.stream_creator()
        .create("events")
        .await
        .expect("created");
    let producer = env.producer().build("events").await.expect("producer");
    for batch in 0..10 {
        let messages = (0..100)
            .map(|i| {
                Message::builder()
                    .body(format!("m{}", batch * 100 + i))
                    .build()
            })
            .collect();
        let statuses = within("confirms", producer.batch_send_with_confirm(messages))
            .await
            .expect("batch sent");
        assert!(statuses.iter().all(|s| s.confirmed()));
    }
    producer.close().await.expect("closed");
    let mut consumer = env
        .consumer()
        .offset(OffsetSpecification::First)
        .build("events")
        .await
        .expect("consumer");
    let got = take(&mut consumer, 1000).await;
    for (i, (offset, body)) in got.iter().enumerate() {
        assert_eq!(
            (*offset, body.as_str()),
            (i as u64, format!("m{i}").as_str())
        );
    }
    // From an offset: the client gets the chunk holding it and skips what
    // comes before, as with RabbitMQ.
    let mut from = env
        .consumer()
        .offset(OffsetSpecification::Offset(990))
        .build("events")
        .await
        .unwrap();
    assert_eq!(take(&mut from, 10).await[0], (990, "m990".to_owned()));
    let (_, info) = b.api("GET", "/api/queues/%2f/events", None).await;
    assert_eq!(info["type"], "stream");
    assert_eq!(info["messages"], 1000);
    assert_eq!(
        (info["first_offset"].clone(), info["last_offset"].clone()),
        (0.into(), 999.into())
    );
    // Both subscriptions are listed, each with the offset it reads next:
    // both read to the end.
    let offsets: Vec<_> = info["consumer_details"]
        .as_array()
        .expect("consumer_details")
        .iter()
        .map(|c| c["offset"].clone())
        .collect();
    assert_eq!(offsets, [1000, 1000], "{info}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_and_the_stream_protocol_read_each_others_messages() {
    let b = start().await;
    let conn = b.lapin().await;
    let ch = confirm_channel(&conn).await;
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("stream".into()),
    );
    let opts = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare("shared", opts, args).await.unwrap();
    let mut headers = FieldTable::default();
    headers.insert("source".into(), AMQPValue::LongString("amqp".into()));
    let props = lapin::BasicProperties::default().with_headers(headers);
    let c = ch
        .basic_publish(
            "",
            "shared",
            BasicPublishOptions::default(),
            b"from amqp",
            props,
        )
        .await
        .unwrap();
    within("confirm", c).await.unwrap();

    let env = connect(&b).await;
    let mut consumer = env
        .consumer()
        .offset(OffsetSpecification::First)
        .build("shared")
        .await
        .unwrap();
    let d = within("delivery", consumer.next()).await.unwrap().unwrap();
    assert_eq!(d.message().data(), Some(&b"from amqp"[..]));
    let source = d
        .message()
        .application_properties()
        .and_then(|p| p.get("source"))
        .cloned();
    assert_eq!(source, Some(SimpleValue::from("amqp")));

    let producer = env.producer().build("shared").await.unwrap();
    let m = Message::builder().body("from stream").build();
    answer_of(&producer, m, WAIT).await;
    producer.close().await.unwrap();
    let rch = conn.create_channel().await.unwrap();
    rch.basic_qos(5, BasicQosOptions::default()).await.unwrap();
    let mut args = FieldTable::default();
    args.insert("x-stream-offset".into(), AMQPValue::LongLongInt(1));
    let mut amqp = rch
        .basic_consume("shared", "", BasicConsumeOptions::default(), args)
        .await
        .unwrap();
    let d = within("amqp delivery", amqp.next()).await.unwrap().unwrap();
    assert_eq!(&d.data[..], b"from stream");
    // Written by the stream protocol: the default exchange, the stream's
    // name as routing key, as RabbitMQ shows it.
    assert_eq!(d.routing_key.as_str(), "shared");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_producer_is_deduplicated_by_publishing_id() {
    let b = start().await;
    let env = connect(&b).await;
    env.stream_creator().create("payments").await.unwrap();
    let mut producer = env
        .producer()
        .name("payer")
        .build("payments")
        .await
        .unwrap();
    for id in 1..=5u64 {
        let m = Message::builder()
            .body(format!("p{id}"))
            .publishing_id(id)
            .build();
        answer_of_named(&mut producer, m, WAIT).await;
    }
    // A retry after a lost confirm: ids 4 and 5 again, then a new one.
    for id in [4u64, 5, 6] {
        let m = Message::builder()
            .body(format!("p{id}"))
            .publishing_id(id)
            .build();
        let status = answer_of_named(&mut producer, m, WAIT).await;
        assert!(status.confirmed(), "duplicates are confirmed too");
    }
    producer.close().await.unwrap();
    let mut consumer = env
        .consumer()
        .offset(OffsetSpecification::First)
        .build("payments")
        .await
        .unwrap();
    let got: Vec<String> = take(&mut consumer, 6)
        .await
        .into_iter()
        .map(|(_, b)| b)
        .collect();
    assert_eq!(got, ["p1", "p2", "p3", "p4", "p5", "p6"]);
    // The sequence survives a restart: a new producer of that name starts
    // after it.
    drop(consumer);
    drop(env);
    let b = b.restart().await;
    let env = connect(&b).await;
    let mut producer = env
        .producer()
        .name("payer")
        .build("payments")
        .await
        .unwrap();
    let m = Message::builder().body("p6-again").publishing_id(6).build();
    answer_of_named(&mut producer, m, WAIT).await;
    producer.close().await.unwrap();
    let (_, info) = b.api("GET", "/api/queues/%2f/payments", None).await;
    assert_eq!(info["messages"], 6, "{info}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_are_stored_by_consumer_name() {
    let b = start().await;
    let env = connect(&b).await;
    env.stream_creator().create("log").await.unwrap();
    let producer = env.producer().build("log").await.unwrap();
    let messages = (0..50)
        .map(|i| Message::builder().body(format!("{i}")).build())
        .collect();
    producer.batch_send_with_confirm(messages).await.unwrap();
    producer.close().await.unwrap();
    let mut consumer = env
        .consumer()
        .name("analytics")
        .offset(OffsetSpecification::First)
        .build("log")
        .await
        .unwrap();
    let got = take(&mut consumer, 20).await;
    consumer.store_offset(got[19].0).await.unwrap();
    // Stored offsets reach the disk with the next sync; wait for the query
    // to see it, then restart.
    let stored = within("offset stored", async {
        loop {
            if let Ok(o) = consumer.query_offset().await {
                break o;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(stored, 19);
    drop(consumer);
    drop(env);
    let b = b.restart().await;
    let env = connect(&b).await;
    let consumer = env
        .consumer()
        .name("analytics")
        .offset(OffsetSpecification::Next)
        .build("log")
        .await
        .unwrap();
    assert_eq!(consumer.query_offset().await.unwrap(), 19);
    // A name never stored has no offset.
    let other = env.consumer().name("billing").build("log").await.unwrap();
    assert!(other.query_offset().await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn super_streams_route_by_key_to_their_partitions() {
    let b = start().await;
    let env = connect(&b).await;
    let keys = vec!["emea".to_owned(), "apac".to_owned(), "amer".to_owned()];
    env.stream_creator()
        .create_super_stream("orders", 3, Some(keys))
        .await
        .expect("super stream created");
    fn region(m: &Message) -> String {
        match m.application_properties().and_then(|p| p.get("region")) {
            Some(SimpleValue::String(s)) => s.clone(),
            _ => String::new(),
        }
    }
    let mut producer = env
        .super_stream_producer(RoutingStrategy::RoutingKeyStrategy(
            RoutingKeyRoutingStrategy {
                routing_extractor: &region,
            },
        ))
        .build("orders")
        .await
        .expect("super stream producer");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for (i, r) in ["emea", "apac", "amer", "emea"].iter().enumerate() {
        let m = Message::builder()
            .body(format!("order-{i}"))
            .application_properties()
            .insert("region", *r)
            .message_builder()
            .build();
        let tx = tx.clone();
        producer
            .send(m, move |status| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(status.map(|s| s.confirmed()).unwrap_or(false));
                }
            })
            .await
            .unwrap();
    }
    for _ in 0..4 {
        assert!(within("confirm", rx.recv()).await.unwrap());
    }
    producer.close().await.unwrap();
    // The client names each partition after its binding key.
    let mut emea = env
        .consumer()
        .offset(OffsetSpecification::First)
        .build("orders-emea")
        .await
        .unwrap();
    let got: Vec<String> = take(&mut emea, 2)
        .await
        .into_iter()
        .map(|(_, b)| b)
        .collect();
    assert_eq!(got, ["order-0", "order-3"]);
    let (_, info) = b.api("GET", "/api/queues/%2f/orders-apac", None).await;
    assert_eq!(info["messages"], 1);
    env.delete_super_stream("orders").await.expect("deleted");
    let (status, _) = b.api("GET", "/api/queues/%2f/orders-apac", None).await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_are_refused() {
    let b = start().await;
    let addr = b.server.stream_addr.unwrap();
    let refused = Environment::builder()
        .host(&addr.ip().to_string())
        .port(addr.port())
        .username("guest")
        .password("wrong")
        .build()
        .await;
    assert!(refused.is_err());
    // Counted as RabbitMQ's stream plugin counts it.
    let _accepted = connect(&b).await;
    let (_, _, metrics) = b.http_text("/metrics").await;
    for line in [
        "rabbitmq_auth_attempts_failed_total{protocol=\"stream\"} 1",
        "rabbitmq_auth_attempts_succeeded_total{protocol=\"stream\"} 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line}:\n{metrics}");
    }
}

/// Publishes `bodies` with confirms on a fresh producer.
async fn publish(env: &Environment, stream: &str, bodies: impl Iterator<Item = String>) {
    let producer = env.producer().build(stream).await.expect("producer");
    let messages = bodies.map(|b| Message::builder().body(b).build()).collect();
    let statuses = within("confirms", producer.batch_send_with_confirm(messages))
        .await
        .expect("sent");
    assert!(statuses.iter().all(|s| s.confirmed()));
    producer.close().await.expect("closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_active_consumer_hands_over_where_the_group_left_off() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    let b = start().await;
    let env = connect(&b).await;
    env.stream_creator().create("jobs").await.unwrap();
    publish(&env, "jobs", (0..10).map(|i| format!("m{i}"))).await;
    // Where an activated member starts: the test says, as an application
    // would from its stored offset.
    let resume = Arc::new(AtomicU64::new(0));
    let member = |resume: Arc<AtomicU64>| {
        env.consumer()
            .name("worker")
            .enable_single_active_consumer(true)
            .offset(OffsetSpecification::First)
            .consumer_update(move |active, _ctx| {
                let at = resume.load(Ordering::SeqCst);
                async move {
                    assert_eq!(active, 1, "no rebalancing on a plain stream");
                    OffsetSpecification::Offset(at)
                }
            })
    };
    let mut a = member(Arc::clone(&resume)).build("jobs").await.expect("a");
    assert_eq!(take(&mut a, 10).await[9], (9, "m9".to_owned()));
    let mut second = member(Arc::clone(&resume)).build("jobs").await.expect("b");
    publish(&env, "jobs", (10..15).map(|i| format!("m{i}"))).await;
    assert_eq!(take(&mut a, 5).await[4], (14, "m14".to_owned()));
    // The management API tells the active member from the waiting one.
    let (_, stream) = b.api("GET", "/api/queues/%2F/jobs", None).await;
    let mut status: Vec<(bool, String)> = stream["consumer_details"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|c| {
            let s = c["activity_status"].as_str().unwrap_or_default();
            (c["active"] == true, s.to_owned())
        })
        .collect();
    status.sort();
    assert_eq!(
        status,
        [
            (false, "waiting".to_owned()),
            (true, "single_active".to_owned())
        ]
    );
    // The first member leaves; the second takes over from offset 15. Had
    // it been reading all along it would see offset 0 first.
    resume.store(15, Ordering::SeqCst);
    a.handle().close().await.expect("a closed");
    publish(&env, "jobs", (15..17).map(|i| format!("m{i}"))).await;
    let got = take(&mut second, 2).await;
    assert_eq!(got, [(15, "m15".to_owned()), (16, "m16".to_owned())]);
}

/// A member told to step down before it answered its activation stays
/// stopped when that answer comes: on a super stream partition, "a" is
/// activated, and "b" joins (the partition is now b's) while a's client
/// still works on the activation. The client answers the step-down first,
/// so "b" is activated; a's late answer to its activation then started a
/// reader (both read the partition's message), and no longer does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_told_to_step_down_before_answering_its_activation_stays_stopped() {
    use std::sync::Arc;
    use tokio::sync::Notify;
    let b = start().await;
    let env = connect(&b).await;
    env.stream_creator()
        .create_super_stream("invoices", 2, None)
        .await
        .expect("super stream");
    // Set when a member is activated on invoices-1 (a's activation then
    // waits for `release`).
    let (a_active, b_active, release) = (
        Arc::new(Notify::new()),
        Arc::new(Notify::new()),
        Arc::new(Notify::new()),
    );
    let member = |active_on_1: &Arc<Notify>, hold: Option<&Arc<Notify>>| {
        let (told, hold) = (Arc::clone(active_on_1), hold.cloned());
        env.super_stream_consumer()
            .name("app")
            .enable_single_active_consumer(true)
            .consumer_update(move |active, ctx| {
                let mine = active == 1 && ctx.stream() == "invoices-1";
                let (told, hold) = (Arc::clone(&told), hold.clone());
                async move {
                    if mine {
                        told.notify_one();
                        if let Some(h) = hold {
                            h.notified().await;
                        }
                    }
                    OffsetSpecification::First
                }
            })
    };
    let mut a = member(&a_active, Some(&release))
        .build("invoices")
        .await
        .expect("a");
    within("a's activation on invoices-1", a_active.notified()).await;
    let mut second = member(&b_active, None).build("invoices").await.expect("b");
    within("b's activation on invoices-1", b_active.notified()).await;
    publish(&env, "invoices-1", std::iter::once("i1".to_owned())).await;
    release.notify_one();
    let d = within("b reads invoices-1", second.next())
        .await
        .expect("a delivery")
        .expect("delivery ok");
    assert_eq!(d.stream(), "invoices-1");
    // Had a's late answer started a reader, the message would have been on
    // a's connection by the time b had it.
    let to_a = tokio::time::timeout(Duration::from_millis(300), a.next()).await;
    assert!(
        to_a.is_err(),
        "a got a message: {:?}",
        to_a.map(|d| d.map(|d| d.map(|d| d.offset())))
    );
}

/// RabbitMQ's stream plugin counts its traffic in the global counters
/// under `protocol="stream"` (its Grafana dashboard for streams reads
/// them): what a stream-protocol client published, was confirmed and got
/// shows there, and nothing of it under AMQP's series (the stream
/// protocol's traffic was counted nowhere).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_global_counters_count_the_stream_protocol() {
    let b = start().await;
    let env = connect(&b).await;
    env.stream_creator().create("ticks").await.unwrap();
    publish(&env, "ticks", (0..5).map(|i| format!("t{i}"))).await;
    let mut consumer = env
        .consumer()
        .offset(OffsetSpecification::First)
        .build("ticks")
        .await
        .unwrap();
    assert_eq!(take(&mut consumer, 5).await.len(), 5);
    let (_, _, text) = b.http_text("/metrics").await;
    let families = prometheus::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let of = |name: &str, protocol: &str| -> f64 {
        families[name]
            .samples
            .iter()
            .filter(|s| s.labels.get("protocol").map(String::as_str) == Some(protocol))
            .filter(|s| {
                s.labels
                    .get("queue_type")
                    .is_none_or(|t| t == "rabbit_stream_queue")
            })
            .map(|s| s.value)
            .next()
            .unwrap_or_else(|| panic!("no {name} of {protocol}"))
    };
    for (name, stream, amqp) in [
        ("rabbitmq_global_messages_received_total", 5.0, 0.0),
        ("rabbitmq_global_messages_received_confirm_total", 5.0, 0.0),
        ("rabbitmq_global_messages_confirmed_total", 5.0, 0.0),
        ("rabbitmq_global_messages_delivered_total", 5.0, 0.0),
        ("rabbitmq_global_messages_acknowledged_total", 0.0, 0.0),
    ] {
        assert_eq!(of(name, "stream"), stream, "{name} of the stream protocol");
        assert_eq!(of(name, "amqp091"), amqp, "{name} of AMQP");
    }
}
