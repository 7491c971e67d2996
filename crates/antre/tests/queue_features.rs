//! Queue features for real workloads, driven by lapin with RabbitMQ's
//! argument names: dead letters, TTL, limits, priorities, delivery limits,
//! single active consumer, delayed messages and deduplication. Time-based
//! rules are unit-tested on a manual clock in the broker core; here each gets
//! one end-to-end check with short real delays.

use crate::common;

use std::time::{Duration, Instant};

use common::*;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, ExchangeKind};

fn int(v: i64) -> AMQPValue {
    AMQPValue::LongLongInt(v)
}

async fn durable_queue(ch: &lapin::Channel, name: &str, a: FieldTable) {
    ch.queue_declare(
        name,
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        a,
    )
    .await
    .expect("queue.declare");
}

fn header<'a>(props: &'a BasicProperties, key: &str) -> Option<&'a AMQPValue> {
    props.headers().as_ref()?.inner().get(key)
}

fn x_death(props: &BasicProperties) -> Vec<FieldTable> {
    match header(props, "x-death") {
        Some(AMQPValue::FieldArray(a)) => a
            .as_slice()
            .iter()
            .filter_map(|v| match v {
                AMQPValue::FieldTable(t) => Some(t.clone()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn text(v: Option<&AMQPValue>) -> String {
    match v {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        Some(AMQPValue::ShortString(s)) => s.to_string(),
        other => format!("{other:?}"),
    }
}

fn number(v: Option<&AMQPValue>) -> Option<i64> {
    match v? {
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::LongInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortInt(n) => Some(i64::from(*n)),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_messages_are_dead_lettered_with_x_death() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    fanout_into(&ch, "dlx", "failed-payments").await;
    queue(
        &ch,
        "payments",
        args(&[("x-dead-letter-exchange", s("dlx"))]),
    )
    .await;
    publish_confirmed(&ch, "", "payments", b"card declined").await;
    let m = ch
        .basic_get("payments", BasicGetOptions::default())
        .await
        .unwrap()
        .unwrap();
    m.delivery
        .nack(BasicNackOptions {
            requeue: false,
            multiple: false,
        })
        .await
        .unwrap();

    let dead = within("dead letter", async {
        loop {
            if let Some(m) = ch
                .basic_get("failed-payments", BasicGetOptions { no_ack: true })
                .await
                .unwrap()
            {
                return m;
            }
        }
    })
    .await;
    assert_eq!(&dead.delivery.data[..], b"card declined");
    assert_eq!(dead.delivery.exchange.as_str(), "dlx");
    let deaths = x_death(&dead.delivery.properties);
    assert_eq!(deaths.len(), 1);
    let d = deaths[0].inner();
    assert_eq!(number(d.get("count")), Some(1));
    assert_eq!(text(d.get("reason")), "rejected");
    assert_eq!(text(d.get("queue")), "payments");
    assert_eq!(text(d.get("exchange")), "");
    assert!(matches!(d.get("time"), Some(AMQPValue::Timestamp(_))));
    let keys = match d.get("routing-keys") {
        Some(AMQPValue::FieldArray(a)) => a
            .as_slice()
            .iter()
            .map(|v| text(Some(v)))
            .collect::<Vec<_>>(),
        other => panic!("routing-keys: {other:?}"),
    };
    assert_eq!(keys, ["payments"]);
    assert_eq!(
        text(header(&dead.delivery.properties, "x-first-death-reason")),
        "rejected"
    );
    assert_eq!(
        text(header(&dead.delivery.properties, "x-first-death-queue")),
        "payments"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_messages_are_dead_lettered_never_delivered() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    fanout_into(&ch, "expired-x", "expired").await;
    queue(
        &ch,
        "short-lived",
        args(&[
            ("x-message-ttl", int(50)),
            ("x-dead-letter-exchange", s("expired-x")),
        ]),
    )
    .await;
    publish_confirmed(&ch, "", "short-lived", b"queue ttl").await;
    let props = BasicProperties::default().with_expiration("20".into());
    let c = ch
        .basic_publish(
            "",
            "short-lived",
            BasicPublishOptions::default(),
            b"message ttl",
            props,
        )
        .await
        .unwrap();
    within("confirm", c).await.unwrap();
    eventually("both expired", || async {
        ready_count(&ch, "expired").await == 2
    })
    .await;
    assert_eq!(ready_count(&ch, "short-lived").await, 0);
    let m = ch
        .basic_get("expired", BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .unwrap();
    let deaths = x_death(&m.delivery.properties);
    assert_eq!(text(deaths[0].inner().get("reason")), "expired");
    assert!(
        m.delivery.properties.expiration().is_none(),
        "expiration is removed when dead-lettered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_length_drops_head_or_nacks_publishers() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    queue(&ch, "latest-prices", args(&[("x-max-length", int(2))])).await;
    for b in [b"1", b"2", b"3"] {
        publish_confirmed(&ch, "", "latest-prices", b).await;
    }
    assert_eq!(ready_count(&ch, "latest-prices").await, 2);
    let m = ch
        .basic_get("latest-prices", BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&m.delivery.data[..], b"2", "the oldest was dropped");

    queue(
        &ch,
        "bounded",
        args(&[
            ("x-max-length-bytes", int(10)),
            ("x-overflow", s("reject-publish")),
        ]),
    )
    .await;
    let first = ch
        .basic_publish(
            "",
            "bounded",
            BasicPublishOptions::default(),
            b"12345678",
            BasicProperties::default(),
        )
        .await
        .unwrap();
    let second = ch
        .basic_publish(
            "",
            "bounded",
            BasicPublishOptions::default(),
            b"12345678",
            BasicProperties::default(),
        )
        .await
        .unwrap();
    assert!(within("confirm", first).await.unwrap().is_ack());
    assert!(
        within("nack", second).await.unwrap().is_nack(),
        "reject-publish nacks"
    );
    assert_eq!(ready_count(&ch, "bounded").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priorities_deliver_highest_first() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    queue(&ch, "jobs", args(&[("x-max-priority", int(10))])).await;
    for (body, p) in [("low", 1u8), ("urgent", 9), ("normal", 5), ("urgent-2", 9)] {
        let c = ch
            .basic_publish(
                "",
                "jobs",
                BasicPublishOptions::default(),
                body.as_bytes(),
                BasicProperties::default().with_priority(p),
            )
            .await
            .unwrap();
        within("confirm", c).await.unwrap();
    }
    let mut order = Vec::new();
    while let Some(m) = ch
        .basic_get("jobs", BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        order.push(String::from_utf8(m.delivery.data).unwrap());
    }
    assert_eq!(order, ["urgent", "urgent-2", "normal", "low"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_are_dead_lettered_after_the_delivery_limit() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    fanout_into(&ch, "poison-x", "poison").await;
    queue(
        &ch,
        "work",
        args(&[
            ("x-delivery-limit", int(2)),
            ("x-dead-letter-exchange", s("poison-x")),
        ]),
    )
    .await;
    publish_confirmed(&ch, "", "work", b"crashes the worker").await;
    let mut counts = Vec::new();
    for _ in 0..3 {
        let m = ch
            .basic_get("work", BasicGetOptions::default())
            .await
            .unwrap()
            .expect("redelivered");
        counts.push(number(header(&m.delivery.properties, "x-delivery-count")));
        m.delivery
            .nack(BasicNackOptions {
                requeue: true,
                multiple: false,
            })
            .await
            .unwrap();
    }
    assert_eq!(counts, [None, Some(1), Some(2)]);
    eventually("dead-lettered", || async {
        ready_count(&ch, "poison").await == 1
    })
    .await;
    assert_eq!(ready_count(&ch, "work").await, 0);
    let m = ch
        .basic_get("poison", BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        text(x_death(&m.delivery.properties)[0].inner().get("reason")),
        "delivery_limit"
    );
}

/// A declined payment dead-lettered at least once (RabbitMQ's
/// `x-dead-letter-strategy` for quorum queues) while its dead-letter queue
/// does not exist yet: at most once it was dropped; here the queue keeps
/// it (shown as `messages_dlx`, out of consumers' reach), through a
/// restart, and routes it again until a queue takes it, which then holds
/// it durably.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_kept_at_least_once_reaches_a_queue_declared_later() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    ch.exchange_declare(
        "pay-dlx",
        ExchangeKind::Fanout,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("exchange.declare");
    durable_queue(
        &ch,
        "pay",
        args(&[
            ("x-queue-type", s("quorum")),
            ("x-dead-letter-exchange", s("pay-dlx")),
            ("x-dead-letter-strategy", s("at-least-once")),
            ("x-overflow", s("reject-publish")),
        ]),
    )
    .await;
    publish_confirmed(&ch, "", "pay", b"card declined").await;
    publish_confirmed(&ch, "", "pay", b"paid").await;
    let m = ch
        .basic_get("pay", BasicGetOptions::default())
        .await
        .unwrap()
        .expect("the declined payment");
    m.delivery
        .reject(BasicRejectOptions { requeue: false })
        .await
        .unwrap();
    let dlx = |q: &serde_json::Value| (q["messages_dlx"].clone(), q["messages_ready"].clone());
    eventually("kept as a dead letter", || async {
        let (_, q) = broker.api("GET", "/api/queues/%2F/pay", None).await;
        dlx(&q) == (serde_json::json!(1), serde_json::json!(1))
    })
    .await;
    // Out of consumers' reach: the next get is the other payment, then
    // nothing.
    let next = ch
        .basic_get("pay", BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("the other payment");
    assert_eq!(&next.delivery.data[..], b"paid");
    assert!(ch
        .basic_get("pay", BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .is_none());

    // A restart does not hand it to consumers again: still kept.
    drop(conn);
    let broker = broker.restart().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let (_, q) = broker.api("GET", "/api/queues/%2F/pay", None).await;
    assert_eq!(dlx(&q), (serde_json::json!(1), serde_json::json!(0)), "{q}");
    let (_, _, page) = broker.http_text("/metrics").await;
    let families = prometheus::parse(&page).unwrap_or_else(|e| panic!("{e}\n{page}"));
    let kept = &families["antre_queue_messages_dlx"].samples;
    assert!(
        kept.iter()
            .any(|s| s.labels.get("queue").map(String::as_str) == Some("pay") && s.value == 1.0),
        "{kept:?}"
    );
    assert!(ch
        .basic_get("pay", BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .is_none());

    durable_queue(&ch, "pay-dead", FieldTable::default()).await;
    ch.queue_bind(
        "pay-dead",
        "pay-dlx",
        "",
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("queue.bind");
    eventually("routed again to the queue declared later", || async {
        ready_count(&ch, "pay-dead").await == 1
    })
    .await;
    eventually("let go once held", || async {
        let (_, q) = broker.api("GET", "/api/queues/%2F/pay", None).await;
        dlx(&q) == (serde_json::json!(0), serde_json::json!(0))
    })
    .await;
    let dead = ch
        .basic_get("pay-dead", BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("the dead letter");
    assert_eq!(&dead.delivery.data[..], b"card declined");
    let deaths = x_death(&dead.delivery.properties);
    assert_eq!(text(deaths[0].inner().get("reason")), "rejected");
    assert_eq!(text(deaths[0].inner().get("queue")), "pay");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_active_consumer_takes_everything() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    queue(
        &ch,
        "ledger",
        args(&[("x-single-active-consumer", AMQPValue::Boolean(true))]),
    )
    .await;
    let c1_ch = conn.create_channel().await.unwrap();
    let mut c1 = c1_ch
        .basic_consume(
            "ledger",
            "first",
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let c2_ch = conn.create_channel().await.unwrap();
    let _c2 = c2_ch
        .basic_consume(
            "ledger",
            "second",
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    for i in 0..10 {
        publish_confirmed(&ch, "", "ledger", format!("{i}").as_bytes()).await;
    }
    let got = take(&mut c1, 10).await;
    let bodies: Vec<_> = got
        .iter()
        .map(|d| String::from_utf8_lossy(&d.data).into_owned())
        .collect();
    assert_eq!(
        bodies,
        (0..10).map(|i| i.to_string()).collect::<Vec<_>>(),
        "all to the active one, in order"
    );
    // The management API says which one is active, as RabbitMQ's does.
    let (_, consumers) = broker.api("GET", "/api/consumers", None).await;
    let mut status: Vec<(String, bool, String)> = consumers
        .as_array()
        .expect("a list")
        .iter()
        .map(|c| {
            (
                c["consumer_tag"].as_str().unwrap_or_default().to_owned(),
                c["active"] == true,
                c["activity_status"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    status.sort();
    assert_eq!(
        status,
        [
            ("first".to_owned(), true, "single_active".to_owned()),
            ("second".to_owned(), false, "waiting".to_owned())
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unused_queues_expire() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = conn.create_channel().await.unwrap();
    queue(&ch, "temporary", args(&[("x-expires", int(50))])).await;
    eventually("queue expired", || async {
        let ch = conn.create_channel().await.unwrap();
        ch.queue_declare(
            "temporary",
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .is_err()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_arguments_are_precondition_failed() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = conn.create_channel().await.unwrap();
    let err = ch
        .queue_declare(
            "q",
            QueueDeclareOptions::default(),
            args(&[("x-max-length", int(-1))]),
        )
        .await
        .unwrap_err();
    assert_eq!(reply_code(&err), Some(406));
    let ch = conn.create_channel().await.unwrap();
    let err = ch
        .exchange_declare(
            "d",
            ExchangeKind::Custom("x-delayed-message".into()),
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(reply_code(&err), Some(406), "x-delayed-type is required");
    // Locators take RabbitMQ's values for the queue's type (a classic
    // queue has x-queue-master-locator, a quorum queue
    // x-queue-leader-locator); anything else is refused, not ignored.
    let quorum = ("x-queue-type", AMQPValue::LongString("quorum".into()));
    let leader = |v: &str| ("x-queue-leader-locator", AMQPValue::LongString(v.into()));
    let master = |v: &str| ("x-queue-master-locator", AMQPValue::LongString(v.into()));
    for (a, ok, why) in [
        (args(&[quorum.clone(), leader("balanced")]), true, ""),
        (args(&[master("min-masters")]), true, ""),
        (
            args(&[quorum.clone(), leader("nearest")]),
            false,
            ": invalid_queue_locator_arg",
        ),
        (
            args(&[master("balanced")]),
            false,
            ": invalid_queue_locator_arg",
        ),
        (
            args(&[leader("client-local")]),
            false,
            " of queue type rabbit_classic_queue",
        ),
    ] {
        let ch = conn.create_channel().await.unwrap();
        let declared = ch
            .queue_declare(
                "located",
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                a.clone(),
            )
            .await;
        if ok {
            declared.unwrap_or_else(|e| panic!("{a:?}: {e}"));
            ch.queue_delete("located", QueueDeleteOptions::default())
                .await
                .unwrap();
            continue;
        }
        let err = declared.unwrap_err();
        assert_eq!(reply_code(&err), Some(406), "{a:?}");
        assert!(err.to_string().contains(why), "{a:?}: {err}");
    }
}

async fn delayed_exchange(ch: &lapin::Channel, name: &str, durable: bool) {
    ch.exchange_declare(
        name,
        ExchangeKind::Custom("x-delayed-message".into()),
        ExchangeDeclareOptions {
            durable,
            ..Default::default()
        },
        args(&[("x-delayed-type", s("direct"))]),
    )
    .await
    .unwrap();
}

fn delayed_props(ms: i64) -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_headers(args(&[("x-delay", int(ms))]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_messages_arrive_after_their_delay() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    delayed_exchange(&ch, "retry", false).await;
    queue(&ch, "retries", FieldTable::default()).await;
    ch.queue_bind(
        "retries",
        "retry",
        "payments",
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let mut c = ch
        .basic_consume(
            "retries",
            "",
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let started = Instant::now();
    for (body, delay) in [("later", 300), ("sooner", 150), ("now", 0)] {
        let confirm = ch
            .basic_publish(
                "retry",
                "payments",
                BasicPublishOptions::default(),
                body.as_bytes(),
                delayed_props(delay),
            )
            .await
            .unwrap();
        within("confirm", confirm).await.unwrap();
    }
    let got = take(&mut c, 3).await;
    let order: Vec<_> = got
        .iter()
        .map(|d| String::from_utf8_lossy(&d.data).into_owned())
        .collect();
    assert_eq!(order, ["now", "sooner", "later"]);
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "held for its delay"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_messages_survive_a_restart() {
    let broker = TestBroker::start().await;
    {
        let conn = broker.lapin().await;
        let ch = confirm_channel(&conn).await;
        delayed_exchange(&ch, "retry", true).await;
        durable_queue(&ch, "retries", FieldTable::default()).await;
        ch.queue_bind(
            "retries",
            "retry",
            "k",
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        let confirm = ch
            .basic_publish(
                "retry",
                "k",
                BasicPublishOptions::default(),
                b"wait for me",
                delayed_props(200),
            )
            .await
            .unwrap();
        within("confirm", confirm).await.unwrap();
        assert_eq!(ready_count(&ch, "retries").await, 0, "still held");
        conn.close(200, "bye").await.unwrap();
    }
    let broker = broker.restart().await;
    let conn = broker.lapin().await;
    let ch = conn.create_channel().await.unwrap();
    eventually("released after restart", || async {
        ready_count(&ch, "retries").await == 1
    })
    .await;
    let m = ch
        .basic_get("retries", BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&m.delivery.data[..], b"wait for me");
}

fn keyed(key: &str) -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_headers(args(&[("x-deduplication-header", s(key))]))
}

async fn publish_with(ch: &lapin::Channel, exchange: &str, key: &str, props: BasicProperties) {
    let confirm = ch
        .basic_publish(
            exchange,
            key,
            BasicPublishOptions::default(),
            b"payment",
            props,
        )
        .await
        .unwrap();
    assert!(
        within("confirm", confirm).await.unwrap().is_ack(),
        "duplicates are confirmed too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deduplicating_queue_keeps_one_copy_across_restart() {
    let broker = TestBroker::start().await;
    {
        let conn = broker.lapin().await;
        let ch = confirm_channel(&conn).await;
        durable_queue(
            &ch,
            "payments",
            args(&[("x-message-deduplication", AMQPValue::Boolean(true))]),
        )
        .await;
        publish_with(&ch, "", "payments", keyed("pay-42")).await;
        publish_with(&ch, "", "payments", keyed("pay-42")).await;
        // The AMQP message-id is the key when the header is absent.
        let by_id = BasicProperties::default()
            .with_delivery_mode(2)
            .with_message_id("pay-43".into());
        publish_with(&ch, "", "payments", by_id.clone()).await;
        publish_with(&ch, "", "payments", by_id).await;
        assert_eq!(ready_count(&ch, "payments").await, 2);
        conn.close(200, "bye").await.unwrap();
    }
    let broker = broker.restart().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    publish_with(&ch, "", "payments", keyed("pay-42")).await;
    assert_eq!(
        ready_count(&ch, "payments").await,
        2,
        "the window survived the restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deduplicating_exchange_routes_a_key_once_across_restart() {
    let broker = TestBroker::start().await;
    let declare = |ch: lapin::Channel| async move {
        ch.exchange_declare(
            "payments-in",
            ExchangeKind::Custom("x-message-deduplication".into()),
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args(&[("x-cache-size", int(1000)), ("x-cache-ttl", int(60_000))]),
        )
        .await
        .unwrap();
        durable_queue(&ch, "ledger", FieldTable::default()).await;
        ch.queue_bind(
            "ledger",
            "payments-in",
            "",
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        ch
    };
    {
        let conn = broker.lapin().await;
        let ch = declare(confirm_channel(&conn).await).await;
        publish_with(&ch, "payments-in", "", keyed("pay-7")).await;
        publish_with(&ch, "payments-in", "", keyed("pay-7")).await;
        assert_eq!(ready_count(&ch, "ledger").await, 1);
        // Consumed and acked: the exchange still remembers the key.
        let m = ch
            .basic_get("ledger", BasicGetOptions { no_ack: true })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&m.delivery.data[..], b"payment");
        conn.close(200, "bye").await.unwrap();
    }
    let broker = broker.restart().await;
    let conn = broker.lapin().await;
    let ch = declare(confirm_channel(&conn).await).await;
    publish_with(&ch, "payments-in", "", keyed("pay-7")).await;
    assert_eq!(
        ready_count(&ch, "ledger").await,
        0,
        "still a duplicate after the restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_timeout_closes_the_channel_and_requeues() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    queue(&ch, "slow-work", args(&[("x-consumer-timeout", int(100))])).await;
    publish_confirmed(&ch, "", "slow-work", b"forgotten").await;
    let worker = conn.create_channel().await.unwrap();
    let mut c = worker
        .basic_consume(
            "slow-work",
            "",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let got = take(&mut c, 1).await;
    assert!(!got[0].redelivered);
    // Never acked: within about a second the channel is closed with 406
    // and the message goes back to the queue.
    eventually("channel closed", || async { !worker.status().connected() }).await;
    eventually("requeued", || async {
        ready_count(&ch, "slow-work").await == 1
    })
    .await;
    let again = ch
        .basic_get("slow-work", BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .unwrap();
    assert!(again.delivery.redelivered);
}

/// The management API publishes through the same path as AMQP: a
/// delayed-message exchange holds the message for its `x-delay`, and a
/// deduplicating exchange routes a key once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_publish_is_delayed_and_deduplicated_like_amqp() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    delayed_exchange(&ch, "retry", false).await;
    ch.exchange_declare(
        "payments-in",
        ExchangeKind::Custom("x-message-deduplication".into()),
        ExchangeDeclareOptions::default(),
        args(&[("x-cache-size", int(1000))]),
    )
    .await
    .unwrap();
    for (queue, exchange, key) in [
        ("retries", "retry", "payments"),
        ("ledger", "payments-in", ""),
    ] {
        declare(&ch, queue).await;
        ch.queue_bind(
            queue,
            exchange,
            key,
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    }
    let publish = |exchange: &'static str, key: &'static str, headers: serde_json::Value| {
        let broker = &broker;
        async move {
            let path = format!("/api/exchanges/%2F/{exchange}/publish");
            let body = serde_json::json!({
                "routing_key": key,
                "payload": "payment",
                "payload_encoding": "string",
                "properties": {"headers": headers},
            });
            let (status, answer) = broker.api("POST", &path, Some(body)).await;
            assert_eq!(status, 200, "{answer}");
            answer
        }
    };

    let answer = publish("retry", "payments", serde_json::json!({"x-delay": 1500})).await;
    assert_eq!(answer["routed"], true, "it will be routed when due");
    assert_eq!(ready_count(&ch, "retries").await, 0, "held for its delay");
    eventually("the delayed message arrives", || async {
        ready_count(&ch, "retries").await == 1
    })
    .await;

    let key = serde_json::json!({"x-deduplication-header": "pay-7"});
    publish("payments-in", "", key.clone()).await;
    let answer = publish("payments-in", "", key).await;
    assert_eq!(answer["routed"], false, "a duplicate is not routed");
    assert_eq!(ready_count(&ch, "ledger").await, 1, "one copy of pay-7");
}
