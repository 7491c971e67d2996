//! rstream, RabbitMQ's Python stream client, against antre's stream
//! protocol listener: the scripts in crates/antre/tests/rstream run with
//! the listener's address (see `common::rstream`).

use crate::common;

use common::rstream::{rstream_or_skip, run_script};
use common::*;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rstream_publishes_dedups_consumes_and_tracks_offsets() {
    if !rstream_or_skip() {
        return;
    }
    let b = TestBroker::start_with(|c| c.stream_listen = Some("127.0.0.1:0".into())).await;
    // The stream and its first message come over AMQP 0-9-1.
    let conn = b.lapin().await;
    let ch = confirm_channel(&conn).await;
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("stream".into()),
    );
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare("py-events", durable, args).await.unwrap();
    publish_confirmed(&ch, "", "py-events", b"from amqp").await;

    run_script(
        b.server.stream_addr.expect("stream listener"),
        "client_paths.py",
        "py-events",
    )
    .await;
    let (_, info) = b.api("GET", "/api/queues/%2f/py-events", None).await;
    assert_eq!(
        info["messages"], 51,
        "the retried message is stored once: {info}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rstream_filtered_subscriptions_get_only_chunks_that_can_match() {
    if !rstream_or_skip() {
        return;
    }
    let b = TestBroker::start_with(|c| c.stream_listen = Some("127.0.0.1:0".into())).await;
    let conn = b.lapin().await;
    let ch = conn.create_channel().await.unwrap();
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("stream".into()),
    );
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare("py-regions", durable, args).await.unwrap();
    run_script(
        b.server.stream_addr.expect("stream listener"),
        "filtering.py",
        "py-regions",
    )
    .await;
}
