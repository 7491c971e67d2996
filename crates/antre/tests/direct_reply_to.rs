//! Direct reply-to (`amq.rabbitmq.reply-to`) with lapin: request/reply
//! without declaring a reply queue, and RabbitMQ's errors around it.

use crate::common;

use common::*;
use futures::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::BasicProperties;

const REPLY_TO: &str = "amq.rabbitmq.reply-to";

async fn consume_replies(
    ch: &lapin::Channel,
    no_ack: bool,
) -> Result<lapin::Consumer, lapin::Error> {
    ch.basic_consume(
        REPLY_TO,
        "",
        BasicConsumeOptions {
            no_ack,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
}

async fn reply_consumer(ch: &lapin::Channel) -> lapin::Consumer {
    consume_replies(ch, true)
        .await
        .expect("consume from amq.rabbitmq.reply-to")
}

async fn request(ch: &lapin::Channel, queue: &str, body: &[u8]) -> Result<(), lapin::Error> {
    ch.basic_publish(
        "",
        queue,
        BasicPublishOptions::default(),
        body,
        BasicProperties::default()
            .with_reply_to(REPLY_TO.into())
            .with_correlation_id("req-1".into()),
    )
    .await?
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_gets_its_reply_through_the_pseudo_queue() {
    let broker = TestBroker::start().await;
    let server_conn = broker.lapin().await;
    let server = server_conn.create_channel().await.unwrap();
    let rpc_queue = declare(&server, "rpc.payments.authorize").await;
    let mut requests = server
        .basic_consume(
            &rpc_queue,
            "server",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();

    let client_conn = broker.lapin().await;
    let client = client_conn.create_channel().await.unwrap();
    // Clients probe for the feature with a passive declare.
    let probe = client
        .queue_declare(
            REPLY_TO,
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("the pseudo-queue exists");
    assert_eq!(probe.name().as_str(), REPLY_TO);
    let mut replies = reply_consumer(&client).await;
    request(&client, &rpc_queue, b"authorize 1000")
        .await
        .unwrap();

    let req = take(&mut requests, 1).await.remove(0);
    let reply_to = req
        .properties
        .reply_to()
        .as_ref()
        .expect("reply_to is set")
        .to_string();
    assert!(
        reply_to.starts_with("amq.rabbitmq.reply-to.") && reply_to.len() > REPLY_TO.len() + 1,
        "the broker gives the channel its own address: {reply_to}"
    );
    publish_confirmed(&server, "", &reply_to, b"approved").await;
    req.ack(BasicAckOptions::default()).await.unwrap();

    let reply = within("reply", replies.next()).await.unwrap().unwrap();
    assert_eq!(reply.data, b"approved");
    assert_eq!(reply.routing_key.as_str(), reply_to);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_consumer_must_not_ack() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = conn.create_channel().await.unwrap();
    let err = consume_replies(&ch, false).await.unwrap_err();
    assert_eq!(reply_code(&err), Some(406), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_reply_consumer_per_channel() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = conn.create_channel().await.unwrap();
    let _first = reply_consumer(&ch).await;
    let err = consume_replies(&ch, true).await.unwrap_err();
    assert_eq!(reply_code(&err), Some(406), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asking_for_a_reply_without_a_reply_consumer_is_refused() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let q = declare(&ch, "rpc.nobody-listens").await;
    let err = request(&ch, &q, b"hello?").await.unwrap_err();
    assert_eq!(reply_code(&err), Some(406), "{err}");
    // Nothing was enqueued by the refused publish.
    let other = conn.create_channel().await.unwrap();
    assert_eq!(ready_count(&other, &q).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_after_the_requester_left_is_unroutable() {
    let broker = TestBroker::start().await;
    let server_conn = broker.lapin().await;
    let server = confirm_channel(&server_conn).await;
    let rpc_queue = declare(&server, "rpc.slow").await;

    let client_conn = broker.lapin().await;
    // With confirms, the request is queued once `request` returns.
    let client = confirm_channel(&client_conn).await;
    let _replies = reply_consumer(&client).await;
    request(&client, &rpc_queue, b"work").await.unwrap();
    let got = within(
        "request",
        server.basic_get(&rpc_queue, BasicGetOptions { no_ack: true }),
    )
    .await
    .unwrap()
    .expect("the request is queued");
    let reply_to = got.properties.reply_to().as_ref().unwrap().to_string();
    client.close(200, "gave up").await.unwrap();

    let confirm = server
        .basic_publish(
            "",
            &reply_to,
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            b"too late",
            BasicProperties::default(),
        )
        .await
        .unwrap();
    let confirmation = within("confirm", confirm).await.unwrap();
    let returned = confirmation
        .take_message()
        .expect("a mandatory reply to a departed requester comes back");
    assert_eq!(returned.reply_code, 312);
}
