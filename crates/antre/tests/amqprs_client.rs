//! The core flows again with a second, independent client (amqprs), so
//! compatibility does not rest on one library's habits.

use crate::common;

use amqprs::channel::{
    BasicAckArguments, BasicConsumeArguments, BasicGetArguments, BasicPublishArguments,
    BasicQosArguments, ConfirmSelectArguments, ExchangeDeclareArguments, QueueBindArguments,
    QueueDeclareArguments,
};
use amqprs::connection::{Connection, OpenConnectionArguments};
use amqprs::BasicProperties;
use common::*;

async fn connect(broker: &TestBroker) -> Connection {
    let addr = broker.addr();
    let args = OpenConnectionArguments::new(&addr.ip().to_string(), addr.port(), "guest", "guest");
    within("amqprs connect", Connection::open(&args))
        .await
        .expect("amqprs connects")
}

async fn message_count(ch: &amqprs::channel::Channel, queue: &str) -> u32 {
    let mut args = QueueDeclareArguments::new(queue);
    args.passive(true);
    ch.queue_declare(args).await.unwrap().expect("declare-ok").1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn point_to_point_with_acks() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = conn.open_channel(None).await.unwrap();
    ch.confirm_select(ConfirmSelectArguments::default())
        .await
        .unwrap();
    ch.queue_declare(QueueDeclareArguments::new("payments"))
        .await
        .unwrap();
    for i in 0..100u32 {
        let props = BasicProperties::default().with_persistence(true).finish();
        ch.basic_publish(
            props,
            i.to_be_bytes().to_vec(),
            BasicPublishArguments::new("", "payments"),
        )
        .await
        .unwrap();
    }
    let consumer_ch = conn.open_channel(None).await.unwrap();
    consumer_ch
        .basic_qos(BasicQosArguments::new(0, 10, false))
        .await
        .unwrap();
    let (_tag, mut rx) = consumer_ch
        .basic_consume_rx(BasicConsumeArguments::new("payments", "processor"))
        .await
        .unwrap();
    for i in 0..100u32 {
        let msg = within("delivery", rx.recv()).await.expect("delivery");
        let deliver = msg.deliver.expect("deliver method");
        assert_eq!(msg.content.expect("body"), i.to_be_bytes().to_vec());
        assert!(!deliver.redelivered());
        consumer_ch
            .basic_ack(BasicAckArguments::new(deliver.delivery_tag(), false))
            .await
            .unwrap();
    }
    assert_eq!(message_count(&ch, "payments").await, 0);
    conn.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_to_every_bound_queue() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = conn.open_channel(None).await.unwrap();
    ch.exchange_declare(ExchangeDeclareArguments::new("user.changed", "fanout"))
        .await
        .unwrap();
    for q in ["cart-service", "order-service"] {
        ch.queue_declare(QueueDeclareArguments::new(q))
            .await
            .unwrap();
        ch.queue_bind(QueueBindArguments::new(q, "user.changed", ""))
            .await
            .unwrap();
    }
    ch.basic_publish(
        BasicProperties::default(),
        b"user 7 moved".to_vec(),
        BasicPublishArguments::new("user.changed", ""),
    )
    .await
    .unwrap();
    for q in ["cart-service", "order-service"] {
        // The get travels on the publisher's channel, which the server
        // handles in order: the message was routed before the get arrives.
        let got = ch
            .basic_get(BasicGetArguments::new(q).no_ack(true).finish())
            .await
            .unwrap()
            .expect("fan-out copy");
        assert_eq!(got.2, b"user 7 moved".to_vec());
    }
    conn.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacked_messages_come_back_redelivered_when_channel_closes() {
    let broker = TestBroker::start().await;
    let conn = connect(&broker).await;
    let ch = conn.open_channel(None).await.unwrap();
    ch.queue_declare(QueueDeclareArguments::new("work"))
        .await
        .unwrap();
    for body in [b"a", b"b"] {
        ch.basic_publish(
            BasicProperties::default(),
            body.to_vec(),
            BasicPublishArguments::new("", "work"),
        )
        .await
        .unwrap();
    }
    let worker = conn.open_channel(None).await.unwrap();
    let (_tag, mut rx) = worker
        .basic_consume_rx(BasicConsumeArguments::new("work", "w"))
        .await
        .unwrap();
    for _ in 0..2 {
        within("delivery", rx.recv()).await.expect("delivery");
    }
    worker.close().await.unwrap();
    let again = ch
        .basic_get(BasicGetArguments::new("work").no_ack(true).finish())
        .await
        .unwrap()
        .expect("requeued message");
    assert!(again.0.redelivered());
    assert_eq!(again.2, b"a".to_vec());
    conn.close().await.unwrap();
}
