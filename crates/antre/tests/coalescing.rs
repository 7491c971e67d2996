//! Delivery coalescing with lapin: deliveries to a busy connection are held
//! for a short window, and every reason to stop holding sends them.
//!
//! The tests that check a trigger set the window far beyond the harness's
//! wait limit, so a trigger that failed to send would time the test out
//! rather than pass late; a zero rate threshold makes every connection busy.

mod common;

use std::time::Duration;

use common::*;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::BasicProperties;

/// Longer than any wait in the harness.
const FOREVER: Duration = Duration::from_secs(600);

async fn coalescing_broker(window: Duration) -> TestBroker {
    TestBroker::start_with(|c| {
        c.delivery_coalesce = window;
        c.delivery_coalesce_rate = 0;
    })
    .await
}

async fn consumer(conn: &lapin::Connection, queue: &str, prefetch: u16) -> lapin::Consumer {
    let ch = conn.create_channel().await.expect("channel");
    if prefetch > 0 {
        ch.basic_qos(prefetch, BasicQosOptions::default())
            .await
            .expect("basic.qos");
    }
    ch.basic_consume(
        queue,
        "",
        BasicConsumeOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("basic.consume")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_prefetch_window_is_sent_at_once() {
    let broker = coalescing_broker(FOREVER).await;
    let publisher_conn = broker.lapin().await;
    let publisher = confirm_channel(&publisher_conn).await;
    let q = declare(&publisher, "coalesce-prefetch").await;
    let consumer_conn = broker.lapin().await;
    let mut deliveries = consumer(&consumer_conn, &q, 3).await;

    for i in 0..3 {
        publish_confirmed(&publisher, "", &q, format!("m{i}").as_bytes()).await;
    }
    let got = take(&mut deliveries, 3).await;
    let bodies: Vec<&[u8]> = got.iter().map(|d| d.data.as_slice()).collect();
    assert_eq!(bodies, [b"m0", b"m1", b"m2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_to_the_client_carries_held_deliveries_with_it() {
    let broker = coalescing_broker(FOREVER).await;
    let publisher_conn = broker.lapin().await;
    let publisher = confirm_channel(&publisher_conn).await;
    let q = declare(&publisher, "coalesce-reply").await;
    let consumer_conn = broker.lapin().await;
    // No prefetch limit: only a reply or the window can release these.
    let mut deliveries = consumer(&consumer_conn, &q, 0).await;

    publish_confirmed(&publisher, "", &q, b"held").await;
    // The confirm means the delivery is queued for the consumer's
    // connection, which drains it before it writes the declare-ok.
    let other = consumer_conn.create_channel().await.expect("channel");
    ready_count(&other, &q).await;
    let got = take(&mut deliveries, 1).await;
    assert_eq!(got[0].data, b"held");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_deliveries_go_out_when_the_window_closes() {
    let broker = coalescing_broker(Duration::from_millis(20)).await;
    let conn = broker.lapin().await;
    let publisher = confirm_channel(&conn).await;
    let q = declare(&publisher, "coalesce-window").await;
    let consumer_conn = broker.lapin().await;
    let mut deliveries = consumer(&consumer_conn, &q, 0).await;

    publish_confirmed(&publisher, "", &q, b"late but there").await;
    let got = take(&mut deliveries, 1).await;
    assert_eq!(got[0].data, b"late but there");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_stream_arrives_complete_and_in_order() {
    let broker = coalescing_broker(Duration::from_micros(500)).await;
    let conn = broker.lapin().await;
    let publisher = conn.create_channel().await.expect("channel");
    let q = declare(&publisher, "coalesce-stream").await;
    let consumer_conn = broker.lapin().await;
    let mut deliveries = consumer(&consumer_conn, &q, 500).await;

    const N: usize = 5000;
    for i in 0..N {
        publisher
            .basic_publish(
                "",
                &q,
                BasicPublishOptions::default(),
                &(i as u32).to_be_bytes(),
                BasicProperties::default(),
            )
            .await
            .expect("publish");
    }
    for i in 0..N {
        let got = take(&mut deliveries, 1).await;
        let n = u32::from_be_bytes(got[0].data[..4].try_into().expect("4 bytes"));
        assert_eq!(n as usize, i, "deliveries keep publish order");
        if i % 100 == 99 {
            got[0]
                .ack(BasicAckOptions { multiple: true })
                .await
                .expect("ack");
        }
    }
}
