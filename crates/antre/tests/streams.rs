//! Streams over AMQP 0-9-1 with lapin: declaring (and RabbitMQ's refusals),
//! publishing with confirms, consuming from every kind of offset, acks as
//! credit, filtering, retention, many readers, restart with offsets intact.

use crate::common;

use common::*;
use futures::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection};

fn stream_args() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("stream".into()),
    );
    args
}

async fn declare_stream(ch: &Channel, name: &str, mut extra: FieldTable) {
    for (k, v) in stream_args().inner() {
        extra.insert(k.clone(), v.clone());
    }
    let opts = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare(name, opts, extra)
        .await
        .expect("stream declared");
}

async fn publish_all(conn: &Connection, stream: &str, bodies: impl IntoIterator<Item = String>) {
    let ch = confirm_channel(conn).await;
    let mut confirms = Vec::new();
    for body in bodies {
        let c = ch
            .basic_publish(
                "",
                stream,
                BasicPublishOptions::default(),
                body.as_bytes(),
                BasicProperties::default(),
            )
            .await
            .expect("publish");
        confirms.push(c);
    }
    for c in confirms {
        let confirmation = within("confirm", c).await.expect("confirm");
        assert!(confirmation.is_ack(), "confirmed");
    }
}

fn offset_arg(v: AMQPValue) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-stream-offset".into(), v);
    args
}

/// Consumes `n` messages (acking each) and returns (offset, body) pairs.
async fn read(conn: &Connection, stream: &str, args: FieldTable, n: usize) -> Vec<(i64, String)> {
    let ch = conn.create_channel().await.expect("channel");
    ch.basic_qos(10, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut consumer = ch
        .basic_consume(stream, "", BasicConsumeOptions::default(), args)
        .await
        .expect("consume");
    let mut out = Vec::new();
    while out.len() < n {
        let d = within("delivery", consumer.next())
            .await
            .expect("a delivery")
            .expect("delivery ok");
        let headers = d.properties.headers().clone().unwrap_or_default();
        let offset = match headers.inner().get("x-stream-offset") {
            Some(AMQPValue::LongLongInt(o)) => *o,
            other => panic!("x-stream-offset header: {other:?}"),
        };
        out.push((offset, String::from_utf8_lossy(&d.data).into_owned()));
        d.ack(BasicAckOptions::default()).await.expect("ack");
    }
    ch.close(200, "done").await.expect("close");
    out
}

fn expect_close(e: lapin::Error, code: u16, text: &str) {
    match e {
        lapin::Error::ProtocolError(amqp) => {
            assert_eq!(amqp.get_id(), code, "{amqp:?}");
            assert!(amqp.get_message().as_str().contains(text), "{amqp:?}");
        }
        other => panic!("expected a {code} close, got {other:?}"),
    }
}

#[tokio::test]
async fn declaring_a_stream_follows_rabbitmqs_rules() {
    let b = TestBroker::start().await;
    let conn = b.lapin().await;
    for (opts, text) in [
        (
            QueueDeclareOptions {
                durable: false,
                ..Default::default()
            },
            "invalid property 'non-durable' for queue 's' in vhost '/'",
        ),
        (
            QueueDeclareOptions {
                durable: true,
                exclusive: true,
                ..Default::default()
            },
            "invalid property 'exclusive-owner' for queue 's' in vhost '/'",
        ),
        (
            QueueDeclareOptions {
                durable: true,
                auto_delete: true,
                ..Default::default()
            },
            "invalid property 'auto-delete' for queue 's' in vhost '/'",
        ),
    ] {
        let ch = conn.create_channel().await.unwrap();
        let e = ch
            .queue_declare("s", opts, stream_args())
            .await
            .unwrap_err();
        expect_close(e, 406, text);
    }
    let ch = conn.create_channel().await.unwrap();
    declare_stream(&ch, "s", FieldTable::default()).await;
    // Redeclaring it as a classic queue is an inequivalent x-queue-type.
    let opts = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let e = ch
        .queue_declare("s", opts, FieldTable::default())
        .await
        .unwrap_err();
    expect_close(e, 406, "inequivalent arg 'x-queue-type'");
}

#[tokio::test]
async fn consumers_read_from_every_kind_of_offset() {
    let b = TestBroker::start().await;
    let conn = b.lapin().await;
    let ch = conn.create_channel().await.unwrap();
    declare_stream(&ch, "orders", FieldTable::default()).await;
    publish_all(&conn, "orders", (0..5).map(|i| format!("m{i}"))).await;

    let first = read(
        &conn,
        "orders",
        offset_arg(AMQPValue::LongString("first".into())),
        5,
    )
    .await;
    let want: Vec<(i64, String)> = (0..5).map(|i| (i, format!("m{i}"))).collect();
    assert_eq!(first, want);
    let numeric = read(&conn, "orders", offset_arg(AMQPValue::LongLongInt(3)), 2).await;
    assert_eq!(numeric, want[3..]);
    // A timestamp from before the first publish, and an interval, read all.
    let ts = offset_arg(AMQPValue::Timestamp(1_000_000));
    assert_eq!(read(&conn, "orders", ts, 5).await, want);
    let interval = offset_arg(AMQPValue::LongString("1h".into()));
    assert_eq!(read(&conn, "orders", interval, 5).await, want);
    // `last` starts at the last chunk: it holds at least the last message.
    let last = read(
        &conn,
        "orders",
        offset_arg(AMQPValue::LongString("last".into())),
        1,
    )
    .await;
    assert!(last[0].0 <= 4);

    // `next` (the default) sees only what comes after it subscribed.
    let ch = conn.create_channel().await.unwrap();
    ch.basic_qos(10, BasicQosOptions::default()).await.unwrap();
    let mut next = ch
        .basic_consume(
            "orders",
            "n",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    publish_all(&conn, "orders", ["m5".to_owned()]).await;
    let d = within("delivery", next.next()).await.unwrap().unwrap();
    assert_eq!(&d.data[..], b"m5");
    let offset = d.properties.headers().as_ref().unwrap().inner()["x-stream-offset"].clone();
    assert_eq!(offset, AMQPValue::LongLongInt(5));
}

#[tokio::test]
async fn acks_give_credit_back_and_readers_are_independent() {
    let b = TestBroker::start().await;
    let conn = b.lapin().await;
    let ch = conn.create_channel().await.unwrap();
    declare_stream(&ch, "events", FieldTable::default()).await;
    publish_all(&conn, "events", (0..300).map(|i| i.to_string())).await;
    // Two readers at once, from different places, each with a window of
    // 10 that only its acks reopen.
    let (a, b2) = tokio::join!(
        read(
            &conn,
            "events",
            offset_arg(AMQPValue::LongString("first".into())),
            300
        ),
        read(&conn, "events", offset_arg(AMQPValue::LongLongInt(250)), 50),
    );
    assert_eq!(a.len(), 300);
    assert!(a
        .iter()
        .enumerate()
        .all(|(i, (o, body))| *o == i as i64 && *body == i.to_string()));
    assert_eq!(b2.first().unwrap().0, 250);
    assert_eq!(b2.last().unwrap().0, 299);
    // Nothing was removed by reading.
    let again = read(
        &conn,
        "events",
        offset_arg(AMQPValue::LongString("first".into())),
        300,
    )
    .await;
    assert_eq!(again, a);
}

#[tokio::test]
async fn a_consumer_without_prefetch_and_basic_get_are_refused() {
    let b = TestBroker::start().await;
    let conn = b.lapin().await;
    let ch = conn.create_channel().await.unwrap();
    declare_stream(&ch, "s", FieldTable::default()).await;
    let e = ch
        .basic_consume(
            "s",
            "c",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    expect_close(
        e,
        406,
        "consumer prefetch count is not set for 'queue 's' in vhost '/''",
    );
    let conn = b.lapin().await;
    let ch = conn.create_channel().await.unwrap();
    let e = ch
        .basic_get("s", BasicGetOptions::default())
        .await
        .unwrap_err();
    expect_close(
        e,
        540,
        "basic.get not supported by stream queues queue 's' in vhost '/'",
    );
}

#[tokio::test]
async fn filters_pass_only_matching_messages() {
    let b = TestBroker::start().await;
    let conn = b.lapin().await;
    let ch = confirm_channel(&conn).await;
    declare_stream(&ch, "s", FieldTable::default()).await;
    for (body, region) in [
        ("a", Some("eu")),
        ("b", Some("us")),
        ("c", None),
        ("d", Some("eu")),
    ] {
        let mut headers = FieldTable::default();
        if let Some(r) = region {
            headers.insert(
                "x-stream-filter-value".into(),
                AMQPValue::LongString(r.into()),
            );
        }
        let props = BasicProperties::default().with_headers(headers);
        let c = ch
            .basic_publish(
                "",
                "s",
                BasicPublishOptions::default(),
                body.as_bytes(),
                props,
            )
            .await
            .unwrap();
        within("confirm", c).await.unwrap();
    }
    let mut args = offset_arg(AMQPValue::LongString("first".into()));
    args.insert("x-stream-filter".into(), AMQPValue::LongString("eu".into()));
    let eu = read(&conn, "s", args.clone(), 2).await;
    assert_eq!(eu, [(0, "a".to_owned()), (3, "d".to_owned())]);
    args.insert("x-stream-match-unfiltered".into(), AMQPValue::Boolean(true));
    let eu_and_plain = read(&conn, "s", args, 3).await;
    let bodies: Vec<&str> = eu_and_plain.iter().map(|(_, b)| b.as_str()).collect();
    assert_eq!(bodies, ["a", "c", "d"]);
}

#[tokio::test]
async fn retention_by_size_drops_the_oldest_segments() {
    let b = TestBroker::start().await;
    let conn = b.lapin().await;
    let ch = conn.create_channel().await.unwrap();
    let mut args = FieldTable::default();
    args.insert("x-max-length-bytes".into(), AMQPValue::LongLongInt(20_000));
    args.insert(
        "x-stream-max-segment-size-bytes".into(),
        AMQPValue::LongLongInt(5_000),
    );
    declare_stream(&ch, "s", args).await;
    // Separate confirmed batches, so the log gets many chunks.
    for batch in 0..20 {
        publish_all(
            &conn,
            "s",
            (0..5).map(|i| format!("{batch}-{i}-{}", "x".repeat(200))),
        )
        .await;
    }
    let got = read(
        &conn,
        "s",
        offset_arg(AMQPValue::LongString("first".into())),
        1,
    )
    .await;
    assert!(
        got[0].0 > 0,
        "the oldest messages are gone: first is {}",
        got[0].0
    );
    let (_, info) = b.api("GET", "/api/queues/%2f/s", None).await;
    assert!(info["messages"].as_u64().unwrap() < 100, "{info}");
}

#[tokio::test]
async fn a_stream_and_its_offsets_survive_a_restart() {
    let b = TestBroker::start().await;
    {
        let conn = b.lapin().await;
        let ch = conn.create_channel().await.unwrap();
        declare_stream(&ch, "log", FieldTable::default()).await;
        publish_all(&conn, "log", (0..10).map(|i| format!("before-{i}"))).await;
    }
    let b = b.restart().await;
    let conn = b.lapin().await;
    publish_all(&conn, "log", ["after".to_owned()]).await;
    let all = read(
        &conn,
        "log",
        offset_arg(AMQPValue::LongString("first".into())),
        11,
    )
    .await;
    assert_eq!(all[9], (9, "before-9".to_owned()));
    assert_eq!(all[10], (10, "after".to_owned()));
    // Still a stream: a classic redeclare is refused.
    let ch = conn.create_channel().await.unwrap();
    let opts = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    assert!(ch
        .queue_declare("log", opts, FieldTable::default())
        .await
        .is_err());
}

#[tokio::test]
async fn an_exchange_routes_into_a_stream_and_properties_come_back() {
    let b = TestBroker::start().await;
    let conn = b.lapin().await;
    let ch = confirm_channel(&conn).await;
    declare_stream(&ch, "order-events", FieldTable::default()).await;
    ch.queue_bind(
        "order-events",
        "amq.topic",
        "order.#",
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let mut headers = FieldTable::default();
    headers.insert(
        "customer".into(),
        AMQPValue::LongString(LongString::from("c-9")),
    );
    let props = BasicProperties::default()
        .with_content_type(ShortString::from("application/json"))
        .with_message_id(ShortString::from("o-1"))
        .with_headers(headers);
    let c = ch
        .basic_publish(
            "amq.topic",
            "order.created",
            BasicPublishOptions::default(),
            b"{}",
            props,
        )
        .await
        .unwrap();
    within("confirm", c).await.unwrap();
    let rch = conn.create_channel().await.unwrap();
    rch.basic_qos(1, BasicQosOptions::default()).await.unwrap();
    let mut consumer = rch
        .basic_consume(
            "order-events",
            "",
            BasicConsumeOptions::default(),
            offset_arg(AMQPValue::LongString("first".into())),
        )
        .await
        .unwrap();
    let d = within("delivery", consumer.next()).await.unwrap().unwrap();
    assert_eq!(d.exchange.as_str(), "amq.topic");
    assert_eq!(d.routing_key.as_str(), "order.created");
    assert_eq!(d.properties.message_id().as_ref().unwrap().as_str(), "o-1");
    let headers = d.properties.headers().as_ref().unwrap().inner().clone();
    assert_eq!(headers["customer"], AMQPValue::LongString("c-9".into()));
}

#[tokio::test]
async fn retention_by_age_drops_old_segments_on_the_timer_and_metrics_show_it() {
    let b = TestBroker::start().await;
    let conn = b.lapin().await;
    let ch = conn.create_channel().await.unwrap();
    let mut args = FieldTable::default();
    args.insert("x-max-age".into(), AMQPValue::LongString("1s".into()));
    args.insert(
        "x-stream-max-segment-size-bytes".into(),
        AMQPValue::LongLongInt(2_000),
    );
    declare_stream(&ch, "aged", args).await;
    for batch in 0..6 {
        publish_all(
            &conn,
            "aged",
            (0..3).map(|i| format!("{batch}-{i}-{}", "x".repeat(200))),
        )
        .await;
    }
    let (_, info) = b.api("GET", "/api/queues/%2f/aged", None).await;
    assert_eq!(info["messages"], 18, "nothing is old yet: {info}");
    assert_eq!(info["first_offset"], 0);
    // Nothing else happens to the stream: the broker's timer alone drops
    // the segments once their messages are older than a second, keeping
    // the one being written.
    let info = within("old segments to go", async {
        loop {
            let (_, info) = b.api("GET", "/api/queues/%2f/aged", None).await;
            if info["first_offset"].as_u64().unwrap_or(0) > 0 {
                break info;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(info["messages"].as_u64().unwrap() < 18, "{info}");
    assert_eq!(info["last_offset"], 17, "offsets do not move: {info}");
    // The timer may drop another segment between the two reads (seen in
    // CI: 12 on /metrics after 15 in the API): they agree once it is done,
    // the segment being written staying.
    let metrics = within("/metrics to show the stream's count", async {
        loop {
            let (_, info) = b.api("GET", "/api/queues/%2f/aged", None).await;
            let (_, _, metrics) = b.http_text("/metrics").await;
            let line = format!(
                "antre_stream_messages{{vhost=\"/\",stream=\"aged\"}} {}",
                info["messages"]
            );
            if metrics.contains(&line) {
                break metrics;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        metrics.contains("antre_stream_messages_published_total{vhost=\"/\",stream=\"aged\"} 18")
    );
}

/// A policy's `max-length-bytes` applies to a stream that exists, at once,
/// the stricter of it and the stream's own argument winning; the stream
/// shows the policy. A queue-only policy key keeps a policy off streams.
#[tokio::test]
async fn a_policy_sets_a_streams_retention_at_once() {
    let b = TestBroker::start().await;
    let conn = b.lapin().await;
    let ch = conn.create_channel().await.unwrap();
    let mut args = FieldTable::default();
    args.insert(
        "x-stream-max-segment-size-bytes".into(),
        AMQPValue::LongLongInt(5_000),
    );
    declare_stream(&ch, "events", args).await;
    for batch in 0..20 {
        publish_all(
            &conn,
            "events",
            (0..5).map(|i| format!("{batch}-{i}-{}", "x".repeat(200))),
        )
        .await;
    }
    let (_, before) = b.api("GET", "/api/queues/%2f/events", None).await;
    assert_eq!(before["messages"], 100, "no retention yet: {before}");
    assert_eq!(before["policy"], serde_json::Value::Null);

    // Not for streams: message-ttl makes RabbitMQ skip this policy.
    let queue_only = serde_json::json!({
        "pattern": "^events$", "priority": 5,
        "definition": { "max-length-bytes": 1000, "message-ttl": 1000 }
    });
    let (status, _) = b
        .api("PUT", "/api/policies/%2f/queues-only", Some(queue_only))
        .await;
    assert_eq!(status, 201);
    let (_, info) = b.api("GET", "/api/queues/%2f/events", None).await;
    assert_eq!(info["messages"], 100, "{info}");

    let retention = serde_json::json!({
        "pattern": "^events$", "apply-to": "streams",
        "definition": { "max-length-bytes": 20000, "max-age": "7D" }
    });
    let (status, _) = b
        .api("PUT", "/api/policies/%2f/retention", Some(retention))
        .await;
    assert_eq!(status, 201);
    let (_, info) = b.api("GET", "/api/queues/%2f/events", None).await;
    assert_eq!(info["policy"], "retention", "{info}");
    assert_eq!(
        info["effective_policy_definition"]["max-length-bytes"], 20000,
        "{info}"
    );
    let messages = info["messages"].as_u64().unwrap();
    assert!(messages < 100, "whole old segments went at once: {info}");
    let got = read(
        &conn,
        "events",
        offset_arg(AMQPValue::LongString("first".into())),
        1,
    )
    .await;
    assert_eq!(got[0].0 as u64, 100 - messages, "first moved on");
}

/// A policy's `stream-max-segment-size-bytes` applies to the segments a
/// stream starts from then on (it wins over the argument, as in RabbitMQ).
#[tokio::test]
async fn a_policys_segment_size_applies_to_the_next_segments() {
    let b = TestBroker::start().await;
    let conn = b.lapin().await;
    let ch = conn.create_channel().await.unwrap();
    declare_stream(&ch, "log", FieldTable::default()).await;
    let segment = serde_json::json!({
        "pattern": "^log$", "apply-to": "streams",
        "definition": { "stream-max-segment-size-bytes": 2000 }
    });
    let (status, _) = b
        .api("PUT", "/api/policies/%2f/segments", Some(segment))
        .await;
    assert_eq!(status, 201);
    for batch in 0..10 {
        publish_all(
            &conn,
            "log",
            (0..5).map(|i| format!("{batch}-{i}-{}", "x".repeat(200))),
        )
        .await;
    }
    let (_, info) = b.api("GET", "/api/queues/%2f/log", None).await;
    assert_eq!(info["messages"], 50, "{info}");
    assert_eq!(
        info["effective_policy_definition"]["stream-max-segment-size-bytes"], 2000,
        "{info}"
    );
    let segments = info["segments"].as_u64().unwrap();
    assert!(segments >= 3, "rolled at 2000 bytes, not 500 MB: {info}");
}
