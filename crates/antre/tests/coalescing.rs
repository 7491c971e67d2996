//! Delivery coalescing with lapin: deliveries to a busy connection are held
//! for a short window, and every reason to stop holding sends them.
//!
//! The tests that check a trigger set the window far beyond the harness's
//! wait limit, so a trigger that failed to send would time the test out
//! rather than pass late; a zero rate threshold makes every connection busy.

use crate::common;

use std::time::Duration;

use common::*;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::BasicProperties;

/// Longer than any wait in the harness.
const FOREVER: Duration = Duration::from_secs(600);

/// A broker that holds every connection's deliveries for `window`, a
/// publisher with confirms, and a consumer on its own connection.
struct Setup {
    _broker: TestBroker,
    _publisher_conn: lapin::Connection,
    publisher: lapin::Channel,
    consumer_conn: lapin::Connection,
    deliveries: lapin::Consumer,
    queue: String,
}

async fn setup(window: Duration, queue: &str, prefetch: u16) -> Setup {
    let broker = TestBroker::start_with(|c| {
        c.delivery_coalesce = window;
        c.delivery_coalesce_rate = 0;
    })
    .await;
    let publisher_conn = broker.lapin().await;
    let publisher = confirm_channel(&publisher_conn).await;
    let queue = declare(&publisher, queue).await;
    let consumer_conn = broker.lapin().await;
    let ch = consumer_conn.create_channel().await.expect("channel");
    if prefetch > 0 {
        ch.basic_qos(prefetch, BasicQosOptions::default())
            .await
            .expect("basic.qos");
    }
    let deliveries = ch
        .basic_consume(
            &queue,
            "",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("basic.consume");
    Setup {
        _broker: broker,
        _publisher_conn: publisher_conn,
        publisher,
        consumer_conn,
        deliveries,
        queue,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_prefetch_window_is_sent_at_once() {
    let mut s = setup(FOREVER, "coalesce-prefetch", 3).await;
    for i in 0..3 {
        publish_confirmed(&s.publisher, "", &s.queue, format!("m{i}").as_bytes()).await;
    }
    let got = take(&mut s.deliveries, 3).await;
    let bodies: Vec<&[u8]> = got.iter().map(|d| d.data.as_slice()).collect();
    assert_eq!(bodies, [b"m0", b"m1", b"m2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_to_the_client_carries_held_deliveries_with_it() {
    // No prefetch limit: only a reply or the window can release these.
    let mut s = setup(FOREVER, "coalesce-reply", 0).await;
    publish_confirmed(&s.publisher, "", &s.queue, b"held").await;
    // The confirm means the delivery is queued for the consumer's
    // connection, which drains it before it writes the declare-ok.
    let other = s.consumer_conn.create_channel().await.expect("channel");
    ready_count(&other, &s.queue).await;
    let got = take(&mut s.deliveries, 1).await;
    assert_eq!(got[0].data, b"held");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_deliveries_go_out_when_the_window_closes() {
    let mut s = setup(Duration::from_millis(20), "coalesce-window", 0).await;
    publish_confirmed(&s.publisher, "", &s.queue, b"late but there").await;
    let got = take(&mut s.deliveries, 1).await;
    assert_eq!(got[0].data, b"late but there");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_stream_arrives_complete_and_in_order() {
    let mut s = setup(Duration::from_micros(500), "coalesce-stream", 500).await;

    const N: usize = 5000;
    for i in 0..N {
        // Not waiting for each confirm keeps the rate, and so the holds, up.
        let _confirm = s
            .publisher
            .basic_publish(
                "",
                &s.queue,
                BasicPublishOptions::default(),
                &(i as u32).to_be_bytes(),
                BasicProperties::default(),
            )
            .await
            .expect("publish");
    }
    for i in 0..N {
        let got = take(&mut s.deliveries, 1).await;
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
