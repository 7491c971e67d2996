//! Forwarding in a cluster of three real `antre` processes
//! (tests/cluster/harness.rs), driven by lapin: a client on any node
//! publishes to and consumes from a queue another node owns.
//!
//! - publishes with confirms on n2 to n1's durable queue (directly and
//!   through a fanout that also reaches n3's queue), consumed on n3 and
//!   n1: each message once, in order, with its properties; acks through n3
//!   empty the queue on n1;
//! - nack/requeue and reject through a forwarding node, redelivery to n1
//!   of what a closed n2 consumer held, basic.get and purge through a
//!   non-owner, mandatory publishes racing the deletion of the queue;
//! - the owner killed -9 under a forwarded consumer: basic.cancel, nacks
//!   (never a confirm) for publishes through n2, and every confirmed
//!   message there after the owner restarts.

#[path = "cluster/harness.rs"]
mod harness;

use std::time::Duration;

use futures::StreamExt;
use harness::{connect, TestCluster, SECRET};
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, Consumer};
use serde_json::{json, Value};

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// Every node shows every node running and one leader.
async fn formed(c: &TestCluster) -> bool {
    for i in 0..c.nodes.len() {
        let Some((200, Value::Array(nodes))) = c.try_api(i, "GET", "/api/nodes", None).await else {
            return false;
        };
        let running = nodes.iter().all(|n| n["running"] == json!(true));
        let leaders = nodes
            .iter()
            .filter(|n| n["metadata_leader"] == json!(true))
            .count();
        if !running || leaders != 1 {
            return false;
        }
    }
    true
}

async fn has(c: &TestCluster, i: usize, path: &str) -> bool {
    matches!(c.try_api(i, "GET", path, None).await, Some((200, _)))
}

/// The owner's count of ready + unacked messages of `queue`.
async fn messages(c: &TestCluster, i: usize, queue: &str) -> u64 {
    let (s, q) = c
        .api(i, "GET", &format!("/api/queues/%2F/{queue}"), None)
        .await;
    assert_eq!(s, 200, "{q}");
    q["messages"].as_u64().unwrap_or(u64::MAX)
}

async fn declare_durable(ch: &Channel, name: &str) {
    ch.queue_declare(
        name,
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("queue.declare");
}

fn props(i: usize) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert("n".into(), AMQPValue::LongLongInt(i as i64));
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_message_id(format!("m{i}").into())
        .with_content_type("text/plain".into())
        .with_headers(headers)
}

async fn next(consumer: &mut Consumer) -> lapin::message::Delivery {
    within("a delivery", consumer.next())
        .await
        .expect("consumer stream ended")
        .expect("delivery")
}

async fn consumer(ch: &Channel, queue: &str, tag: &str) -> Consumer {
    ch.basic_consume(
        queue,
        tag,
        BasicConsumeOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("basic.consume")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_node_publishes_to_and_consumes_from_any_queue() {
    let c = TestCluster::start(&[SECRET, SECRET, SECRET]).await;
    c.until("the cluster to form", || formed(&c)).await;
    let n1 = connect(&c.nodes[0].amqp_uri()).await;
    let n2 = connect(&c.nodes[1].amqp_uri()).await;
    let n3 = connect(&c.nodes[2].amqp_uri()).await;
    let ch1 = n1.create_channel().await.expect("channel");
    let ch2 = n2.create_channel().await.expect("channel");
    let ch3 = n3.create_channel().await.expect("channel");
    // n1 owns `work`, n3 owns `audit`; the fanout `all` reaches both.
    declare_durable(&ch1, "work").await;
    declare_durable(&ch3, "audit").await;
    ch1.exchange_declare(
        "all",
        lapin::ExchangeKind::Fanout,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("exchange.declare");
    for q in ["work", "audit"] {
        ch1.queue_bind(
            q,
            "all",
            "",
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("queue.bind");
    }
    for i in 0..3 {
        c.until("the bindings everywhere", || async {
            has(&c, i, "/api/bindings/%2F/e/all/q/work").await
                && has(&c, i, "/api/bindings/%2F/e/all/q/audit").await
        })
        .await;
    }

    // Publish on n2 with confirms: 200 directly to n1's queue, then 100
    // through the fanout (n1's and n3's queues), pipelined.
    ch2.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    let mut confirms = Vec::new();
    for i in 0..300 {
        let (exchange, key) = if i < 200 { ("", "work") } else { ("all", "") };
        let confirm = ch2
            .basic_publish(
                exchange,
                key,
                BasicPublishOptions::default(),
                format!("body {i}").as_bytes(),
                props(i),
            )
            .await
            .expect("basic.publish");
        confirms.push(confirm);
    }
    for confirm in confirms {
        assert!(within("confirm", confirm).await.expect("confirm").is_ack());
    }
    // Confirmed means stored on the owners.
    assert_eq!(messages(&c, 0, "work").await, 300);
    assert_eq!(messages(&c, 2, "audit").await, 100);
    // A passive declare through another node answers the owner's counts.
    let passive = ch2
        .queue_declare(
            "work",
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("passive declare on n2");
    assert_eq!(passive.message_count(), 300);

    // Consume n1's queue on n3: every message once, in order, with its
    // properties; acks through n3 empty it on n1.
    ch3.basic_qos(50, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut work = consumer(&ch3, "work", "on-n3").await;
    for i in 0..300 {
        let d = next(&mut work).await;
        assert_eq!(d.data, format!("body {i}").as_bytes());
        assert!(!d.redelivered);
        assert_eq!(
            d.properties.message_id().as_ref().map(|s| s.as_str()),
            Some(format!("m{i}").as_str())
        );
        assert_eq!(*d.properties.delivery_mode(), Some(2));
        assert_eq!(
            d.properties.content_type().as_ref().map(|s| s.as_str()),
            Some("text/plain")
        );
        let n = d
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("n").cloned());
        assert_eq!(n, Some(AMQPValue::LongLongInt(i as i64)));
        let expected_exchange = if i < 200 { "" } else { "all" };
        assert_eq!(d.exchange.as_str(), expected_exchange);
        d.acker.ack(BasicAckOptions::default()).await.expect("ack");
    }
    // n3's queue consumed through n1.
    let mut audit = consumer(&ch1, "audit", "on-n1").await;
    for i in 200..300 {
        let d = next(&mut audit).await;
        assert_eq!(d.data, format!("body {i}").as_bytes());
        d.acker.ack(BasicAckOptions::default()).await.expect("ack");
    }
    c.until("n1's queue to be empty after acks through n3", || async {
        messages(&c, 0, "work").await == 0
    })
    .await;
    c.until("n3's queue to be empty after acks through n1", || async {
        messages(&c, 2, "audit").await == 0
    })
    .await;
    ch3.basic_cancel("on-n3", BasicCancelOptions::default())
        .await
        .expect("cancel");
    ch1.basic_cancel("on-n1", BasicCancelOptions::default())
        .await
        .expect("cancel");

    settles_gets_and_purges(&c, &ch1, &ch2).await;
    redelivery_after_a_forwarded_consumer_closes(&c, &n2, &ch1).await;
    mandatory_publishes_racing_a_delete(&c, &ch1, &n2).await;
}

/// nack/requeue and reject, basic.get and queue.purge, all through n2.
async fn settles_gets_and_purges(c: &TestCluster, ch1: &Channel, ch2: &Channel) {
    for i in 0..4 {
        ch1.basic_publish(
            "",
            "work",
            BasicPublishOptions::default(),
            format!("g{i}").as_bytes(),
            BasicProperties::default(),
        )
        .await
        .expect("publish on n1");
    }
    c.until("4 messages on n1", || async {
        messages(c, 0, "work").await == 4
    })
    .await;
    let get = |ch: Channel| async move {
        ch.basic_get("work", BasicGetOptions { no_ack: false })
            .await
            .expect("basic.get through n2")
            .expect("a message")
    };
    let first = get(ch2.clone()).await;
    assert_eq!(first.delivery.data, b"g0");
    assert!(!first.delivery.redelivered);
    assert_eq!(first.message_count, 3);
    first
        .delivery
        .acker
        .nack(BasicNackOptions {
            requeue: true,
            ..Default::default()
        })
        .await
        .expect("nack");
    let again = get(ch2.clone()).await;
    assert_eq!(again.delivery.data, b"g0");
    assert!(
        again.delivery.redelivered,
        "a requeued message is redelivered"
    );
    again
        .delivery
        .acker
        .reject(BasicRejectOptions { requeue: false })
        .await
        .expect("reject");
    c.until("the rejected message gone from n1", || async {
        messages(c, 0, "work").await == 3
    })
    .await;
    let purged = ch2
        .queue_purge("work", QueuePurgeOptions::default())
        .await
        .expect("queue.purge through n2");
    assert_eq!(purged, 3);
    assert_eq!(messages(c, 0, "work").await, 0);
    let empty = ch2
        .basic_get("work", BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get");
    assert!(empty.is_none(), "get-empty through n2");
}

/// A consumer on n2 holds deliveries of n1's queue unacked and its
/// connection closes: a consumer on n1 gets them again, redelivered.
async fn redelivery_after_a_forwarded_consumer_closes(
    c: &TestCluster,
    n2: &Connection,
    ch1: &Channel,
) {
    let held = connect(&c.nodes[1].amqp_uri()).await;
    let ch = held.create_channel().await.expect("channel");
    ch.basic_qos(10, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut on_n2 = consumer(&ch, "work", "holder").await;
    for i in 0..5 {
        ch1.basic_publish(
            "",
            "work",
            BasicPublishOptions::default(),
            format!("r{i}").as_bytes(),
            BasicProperties::default(),
        )
        .await
        .expect("publish on n1");
    }
    for i in 0..5 {
        let d = next(&mut on_n2).await;
        assert_eq!(d.data, format!("r{i}").as_bytes());
    }
    held.close(200, "bye").await.expect("close");
    let mut on_n1 = consumer(ch1, "work", "taker").await;
    for i in 0..5 {
        let d = next(&mut on_n1).await;
        assert_eq!(d.data, format!("r{i}").as_bytes());
        assert!(d.redelivered, "r{i} was delivered before");
        d.acker.ack(BasicAckOptions::default()).await.expect("ack");
    }
    ch1.basic_cancel("taker", BasicCancelOptions::default())
        .await
        .expect("cancel");
    assert!(n2.status().connected());
}

/// Mandatory publishes through n2 to n1's queue while n1 deletes it: each
/// one is acked (never nacked: nothing failed), those that reached n1 after
/// the delete (or that n2 routed after learning of it) are returned first,
/// and once n2 knows the queue is gone, returned as for a local queue.
async fn mandatory_publishes_racing_a_delete(c: &TestCluster, ch1: &Channel, n2: &Connection) {
    declare_durable(ch1, "doomed").await;
    c.until("n2 to know `doomed`", || async {
        has(c, 1, "/api/queues/%2F/doomed").await
    })
    .await;
    let ch = n2.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    // The publish, whose confirm is awaited later.
    async fn publish(ch: &Channel, i: usize) -> lapin::publisher_confirm::PublisherConfirm {
        ch.basic_publish(
            "",
            "doomed",
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            format!("d{i}").as_bytes(),
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .expect("publish")
    }
    let mut confirms = Vec::new();
    for i in 0..50 {
        confirms.push(publish(&ch, i).await);
    }
    ch1.queue_delete("doomed", QueueDeleteOptions::default())
        .await
        .expect("delete on n1");
    for i in 50..100 {
        confirms.push(publish(&ch, i).await);
    }
    let mut returned = 0;
    for confirm in confirms {
        let confirmation = within("confirm", confirm).await.expect("confirm");
        assert!(confirmation.is_ack(), "a mandatory publish is acked");
        if let Some(r) = confirmation.take_message() {
            assert_eq!(r.reply_code, 312);
            returned += 1;
        }
    }
    assert!(returned > 0, "publishes after the delete came back");
    // Once n2 knows, a mandatory publish is returned at once.
    c.until("n2 to forget `doomed`", || async {
        matches!(
            c.try_api(1, "GET", "/api/queues/%2F/doomed", None).await,
            Some((404, _))
        )
    })
    .await;
    let confirmation = within("confirm", publish(&ch, 100).await)
        .await
        .expect("confirm");
    assert!(confirmation.is_ack());
    let r = confirmation.take_message().expect("returned");
    assert_eq!(r.reply_code, 312);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_dying_cancels_forwarded_consumers_and_loses_nothing_confirmed() {
    let mut c = TestCluster::start(&[SECRET, SECRET, SECRET]).await;
    c.until("the cluster to form", || formed(&c)).await;
    let n1 = connect(&c.nodes[0].amqp_uri()).await;
    let ch1 = n1.create_channel().await.expect("channel");
    declare_durable(&ch1, "ledger").await;
    c.until("n2 to know `ledger`", || async {
        has(&c, 1, "/api/queues/%2F/ledger").await
    })
    .await;
    drop(ch1);
    let _ = n1.close(200, "bye").await;

    // Confirmed publishes through n2, and a consumer through n2 that
    // holds some of them unacked.
    let n2 = connect(&c.nodes[1].amqp_uri()).await;
    let pub2 = n2.create_channel().await.expect("channel");
    pub2.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    for i in 0..100 {
        let confirm = pub2
            .basic_publish(
                "",
                "ledger",
                BasicPublishOptions::default(),
                format!("l{i}").as_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .expect("publish");
        assert!(within("confirm", confirm).await.expect("confirm").is_ack());
    }
    let sub2 = n2.create_channel().await.expect("channel");
    sub2.basic_qos(5, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut forwarded = consumer(&sub2, "ledger", "forwarded").await;
    for i in 0..5 {
        assert_eq!(next(&mut forwarded).await.data, format!("l{i}").as_bytes());
    }

    c.kill(0);
    // lapin announces consumer_cancel_notify: the owner's death is a
    // basic.cancel, which ends the consumer's stream.
    let end = within("basic.cancel after the owner died", forwarded.next()).await;
    assert!(end.is_none(), "the consumer was cancelled: {end:?}");
    assert!(sub2.status().connected(), "the channel stays open");

    // Publishes through n2 to the dead owner's queue are nacked, never
    // confirmed.
    for i in 0..10 {
        let confirm = pub2
            .basic_publish(
                "",
                "ledger",
                BasicPublishOptions::default(),
                format!("lost{i}").as_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .expect("publish");
        let confirmation = within("confirm", confirm).await.expect("confirm");
        assert!(confirmation.is_nack(), "nacked while the owner is down");
    }

    // After the restart every confirmed message is there (the five the
    // consumer held were never acked), and forwarding works again.
    c.spawn(0);
    c.wait_http(0).await;
    c.until("n1 to recover `ledger`", || async {
        matches!(c.try_api(0, "GET", "/api/queues/%2F/ledger", None).await,
            Some((200, q)) if q["messages"] == json!(100))
    })
    .await;
    // For half a second after a failed attempt n2 does not dial n1 again
    // (a 404 at once): poll, on a fresh channel each time.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let got = loop {
        let ch = n2.create_channel().await.expect("channel");
        match ch
            .basic_get("ledger", BasicGetOptions { no_ack: true })
            .await
        {
            Ok(got) => break got.expect("a message"),
            Err(e) if tokio::time::Instant::now() < deadline => {
                eprintln!("basic.get through n2 after the restart: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("basic.get through n2 after the restart: {e}"),
        }
    };
    assert_eq!(got.delivery.data, b"l0");
    assert!(sub2.status().connected());
}

/// The `x-death` reasons of a dead letter, newest first.
fn death_reasons(d: &lapin::message::Delivery) -> Vec<String> {
    let Some(AMQPValue::FieldArray(deaths)) = d
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-death").cloned())
    else {
        return Vec::new();
    };
    deaths
        .as_slice()
        .iter()
        .filter_map(|death| match death {
            AMQPValue::FieldTable(t) => match t.inner().get("reason") {
                Some(AMQPValue::LongString(s)) => Some(s.to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

fn args(pairs: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in pairs {
        t.insert((*k).into(), v.clone());
    }
    t
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(s.into())
}

/// Messages n1 routes itself (dead letters of its queues: rejected,
/// expired, dropped by overflow, through a dead-letter exchange with an
/// alternate exchange; a delayed-message exchange's releases) reach a queue
/// n2 owns, as they would reach a queue of n1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_and_delayed_messages_reach_another_nodes_queue() {
    let c = TestCluster::start(&[SECRET, SECRET, SECRET]).await;
    c.until("the cluster to form", || formed(&c)).await;
    let n1 = connect(&c.nodes[0].amqp_uri()).await;
    let n2 = connect(&c.nodes[1].amqp_uri()).await;
    let ch1 = n1.create_channel().await.expect("channel");
    let ch2 = n2.create_channel().await.expect("channel");
    // n2 owns `graveyard`; everything else is n1's.
    declare_durable(&ch2, "graveyard").await;
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch1.exchange_declare(
        "ae",
        lapin::ExchangeKind::Fanout,
        durable,
        FieldTable::default(),
    )
    .await
    .expect("declare ae");
    // A dead-letter exchange with no binding: its alternate exchange
    // routes the letters.
    ch1.exchange_declare(
        "dlx",
        lapin::ExchangeKind::Direct,
        durable,
        args(&[("alternate-exchange", text("ae"))]),
    )
    .await
    .expect("declare dlx");
    ch1.exchange_declare(
        "later",
        lapin::ExchangeKind::Custom("x-delayed-message".into()),
        durable,
        args(&[("x-delayed-type", text("direct"))]),
    )
    .await
    .expect("declare later");
    ch1.queue_bind(
        "graveyard",
        "ae",
        "",
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("bind ae");
    ch1.queue_bind(
        "graveyard",
        "later",
        "grave",
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("bind later");
    let dead_lettering = |more: &[(&str, AMQPValue)]| {
        let mut all = vec![("x-dead-letter-exchange", text("dlx"))];
        all.extend(more.iter().cloned());
        args(&all)
    };
    for (name, more) in [
        ("rejecting", vec![]),
        ("expiring", vec![("x-message-ttl", AMQPValue::LongInt(20))]),
        ("overflowing", vec![("x-max-length", AMQPValue::LongInt(1))]),
    ] {
        ch1.queue_declare(
            name,
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            dead_lettering(&more),
        )
        .await
        .expect("declare a dead-lettering queue");
    }
    for i in 0..3 {
        c.until("the bindings everywhere", || async {
            has(&c, i, "/api/bindings/%2F/e/ae/q/graveyard").await
                && has(&c, i, "/api/bindings/%2F/e/later/q/graveyard").await
        })
        .await;
    }

    let publish = |exchange: &'static str, key: &'static str, body: &'static str| {
        let ch1 = ch1.clone();
        async move {
            let mut headers = FieldTable::default();
            headers.insert("x-delay".into(), AMQPValue::LongLongInt(50));
            ch1.basic_publish(
                exchange,
                key,
                BasicPublishOptions::default(),
                body.as_bytes(),
                BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_headers(headers),
            )
            .await
            .expect("publish on n1");
        }
    };
    // Rejected by a consumer on n1.
    publish("", "rejecting", "rejected").await;
    let got = ch1
        .basic_get("rejecting", BasicGetOptions { no_ack: false })
        .await
        .expect("basic.get")
        .expect("a message");
    got.delivery
        .acker
        .reject(BasicRejectOptions { requeue: false })
        .await
        .expect("reject");
    // Expired by n1's timer.
    publish("", "expiring", "expired").await;
    // Pushed out of a full queue.
    publish("", "overflowing", "overflowed").await;
    publish("", "overflowing", "kept").await;
    // Released by n1's delayed-message exchange.
    publish("later", "grave", "delayed").await;

    let mut graveyard = consumer(&ch2, "graveyard", "mourner").await;
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..4 {
        let d = next(&mut graveyard).await;
        let body = String::from_utf8_lossy(&d.data).into_owned();
        seen.insert(body, death_reasons(&d));
        d.acker.ack(BasicAckOptions::default()).await.expect("ack");
    }
    let expected: std::collections::BTreeMap<String, Vec<String>> = [
        ("rejected", vec!["rejected"]),
        ("expired", vec!["expired"]),
        ("overflowed", vec!["maxlen"]),
        ("delayed", vec![]),
    ]
    .into_iter()
    .map(|(b, r)| (b.to_owned(), r.into_iter().map(str::to_owned).collect()))
    .collect();
    assert_eq!(seen, expected);
    assert_eq!(messages(&c, 0, "overflowing").await, 1, "`kept` stays");
}
