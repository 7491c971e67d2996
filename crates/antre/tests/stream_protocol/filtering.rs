//! Stream filtering (RabbitMQ 3.13's) across both protocols, driven by the
//! independent clients: the `rabbitmq-stream-client` crate publishes with
//! filter values (publish version 2) and subscribes with `filter.N` /
//! `match-unfiltered`; lapin publishes with `x-stream-filter-value` and
//! consumes with `x-stream-filter`. A value published over either protocol
//! reaches a filtered consumer of either protocol.
//!
//! Each group of messages is confirmed before the next is published, so
//! each sits in chunks of its own: a filtered stream-protocol subscription
//! then gets only the chunks that can hold what it asked for (the broker
//! skips the others by their bloom filters), with no client-side filter.

use crate::common::*;
use futures::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use rabbitmq_stream_client::types::{Message, OffsetSpecification, SimpleValue};
use rabbitmq_stream_client::{Consumer, Environment, FilterConfiguration};

use super::{connect, start};

fn region(m: &Message) -> String {
    match m.application_properties().and_then(|p| p.get("region")) {
        Some(SimpleValue::String(s)) => s.clone(),
        _ => String::new(),
    }
}

/// Publishes `n` messages of `region` (None: unfiltered) with confirms,
/// over the stream protocol, the filter value taken from the message.
async fn publish(env: &Environment, region_value: Option<&str>, n: usize) {
    let mut builder = env.producer();
    if region_value.is_some() {
        builder = builder.filter_value_extractor(region);
    }
    let producer = builder.build("orders").await.expect("producer");
    let messages = (0..n)
        .map(|i| {
            let m =
                Message::builder().body(format!("{}-{i}", region_value.unwrap_or("unfiltered")));
            match region_value {
                Some(r) => m
                    .application_properties()
                    .insert("region", r)
                    .message_builder()
                    .build(),
                None => m.build(),
            }
        })
        .collect();
    let statuses = within("confirms", producer.batch_send_with_confirm(messages))
        .await
        .expect("sent");
    assert!(statuses.iter().all(|s| s.confirmed()));
    producer.close().await.expect("closed");
}

/// Subscribes from first with a filter and no client-side filtering, and
/// reads bodies until `n` arrived.
async fn filtered(env: &Environment, values: &[&str], match_unfiltered: bool) -> Consumer {
    let filter = FilterConfiguration::new(
        values.iter().map(|v| v.to_string()).collect(),
        match_unfiltered,
    );
    env.consumer()
        .offset(OffsetSpecification::First)
        .filter_input(Some(filter))
        .build("orders")
        .await
        .expect("filtered consumer")
}

async fn bodies(consumer: &mut Consumer, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    while out.len() < n {
        let d = within("stream delivery", consumer.next())
            .await
            .expect("a delivery")
            .expect("delivery ok");
        let body = d.message().data().unwrap_or_default();
        out.push(String::from_utf8_lossy(body).into_owned());
    }
    out
}

/// The next delivery's body: a test shows that nothing came between by
/// publishing a last wanted message and checking it is the next one.
async fn next_body(consumer: &mut Consumer) -> String {
    bodies(consumer, 1).await.remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filter_values_cross_protocols_and_chunks_that_cannot_match_are_skipped() {
    let b = start().await;
    let env = connect(&b).await;
    env.stream_creator()
        .create("orders")
        .await
        .expect("created");
    publish(&env, Some("emea"), 30).await;
    publish(&env, Some("apac"), 20).await;
    publish(&env, None, 10).await;
    // AMQP 0-9-1 publishers tag with a header.
    let conn = b.lapin().await;
    let ch = confirm_channel(&conn).await;
    let mut headers = FieldTable::default();
    headers.insert(
        "x-stream-filter-value".into(),
        AMQPValue::LongString("amer".into()),
    );
    let props = lapin::BasicProperties::default().with_headers(headers);
    let c = ch
        .basic_publish(
            "",
            "orders",
            BasicPublishOptions::default(),
            b"amer-0",
            props,
        )
        .await
        .unwrap();
    within("confirm", c).await.unwrap();
    // A last emea message marks the end for the emea readers below.
    publish(&env, Some("emea"), 1).await;

    // Stream protocol: only emea chunks, none of the 31 others.
    let mut emea = filtered(&env, &["emea"], false).await;
    let got = bodies(&mut emea, 31).await;
    let want: Vec<String> = (0..30).map(|i| format!("emea-{i}")).collect();
    assert_eq!(got[..30], want[..]);
    assert_eq!(got[30], "emea-0", "the sentinel, nothing between");

    // The AMQP-published value, over the stream protocol: the header is an
    // application property there.
    let mut amer = filtered(&env, &["amer"], false).await;
    let d = within("amer delivery", amer.next()).await.unwrap().unwrap();
    assert_eq!(d.message().data(), Some(&b"amer-0"[..]));
    let value = d
        .message()
        .application_properties()
        .and_then(|p| p.get("x-stream-filter-value"))
        .cloned();
    assert_eq!(value, Some(SimpleValue::from("amer")));

    // match-unfiltered adds the chunk without filter values.
    let mut apac = filtered(&env, &["apac"], true).await;
    let got = bodies(&mut apac, 30).await;
    let want: Vec<String> = (0..20)
        .map(|i| format!("apac-{i}"))
        .chain((0..10).map(|i| format!("unfiltered-{i}")))
        .collect();
    assert_eq!(got, want);

    // AMQP 0-9-1 consumers filter exactly, and see the stream-protocol
    // publisher's filter value as the x-stream-filter-value header.
    let rch = conn.create_channel().await.unwrap();
    rch.basic_qos(100, BasicQosOptions::default())
        .await
        .unwrap();
    let mut args = FieldTable::default();
    args.insert(
        "x-stream-offset".into(),
        AMQPValue::LongString("first".into()),
    );
    args.insert(
        "x-stream-filter".into(),
        AMQPValue::FieldArray(vec![AMQPValue::LongString("apac".into())].into()),
    );
    let mut amqp = rch
        .basic_consume("orders", "apac", BasicConsumeOptions::default(), args)
        .await
        .unwrap();
    for i in 0..20 {
        let d = within("amqp delivery", amqp.next()).await.unwrap().unwrap();
        assert_eq!(String::from_utf8_lossy(&d.data), format!("apac-{i}"));
        let header = d
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("x-stream-filter-value").cloned());
        assert_eq!(header, Some(AMQPValue::LongString("apac".into())));
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    // The AMQP consumer of amer gets the AMQP message, and the emea
    // sentinel never reaches the apac consumer: publish one more apac
    // message and it is the next delivery.
    publish(&env, Some("apac"), 1).await;
    let d = within("amqp delivery", amqp.next()).await.unwrap().unwrap();
    assert_eq!(&d.data[..], b"apac-0");
    assert_eq!(next_body(&mut apac).await, "apac-0");
}
