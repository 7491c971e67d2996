//! Point-to-point queues with lapin: competing consumers, acks, requeue,
//! prefetch, basic.get, confirms and transactions.

use crate::common;

use std::collections::HashSet;

use common::*;
use futures::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::BasicProperties;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn competing_consumers_each_message_delivered_once() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let publisher = confirm_channel(&conn).await;
    let q = declare(&publisher, "payments").await;

    let mut consumers = Vec::new();
    for i in 0..3 {
        let ch = conn.create_channel().await.unwrap();
        ch.basic_qos(10, BasicQosOptions::default()).await.unwrap();
        let c = ch
            .basic_consume(
                &q,
                &format!("worker-{i}"),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        consumers.push(c);
    }
    const N: usize = 300;
    for i in 0..N {
        publish_confirmed(&publisher, "", &q, format!("payment-{i}").as_bytes()).await;
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for (i, mut c) in consumers.into_iter().enumerate() {
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some(Ok(d)) = c.next().await {
                d.ack(BasicAckOptions::default()).await.unwrap();
                if tx.send((i, d.data)).is_err() {
                    break;
                }
            }
        });
    }
    let mut seen = HashSet::new();
    let mut per_worker = [0usize; 3];
    for _ in 0..N {
        let (worker, body) = within("delivery", rx.recv()).await.unwrap();
        assert!(seen.insert(body), "a message was delivered twice");
        per_worker[worker] += 1;
    }
    assert_eq!(seen.len(), N);
    assert!(
        per_worker.iter().all(|&n| n > 0),
        "round-robin reached every worker: {per_worker:?}"
    );
    assert_eq!(ready_count(&publisher, &q).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacked_messages_return_in_order_with_redelivered_when_connection_closes() {
    let broker = TestBroker::start().await;
    let conn1 = broker.lapin().await;
    let ch1 = confirm_channel(&conn1).await;
    let q = declare(&ch1, "orders").await;
    for i in 0..5 {
        publish_confirmed(&ch1, "", &q, format!("m{i}").as_bytes()).await;
    }
    let mut c1 = ch1
        .basic_consume(
            &q,
            "first",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let first = take(&mut c1, 5).await;
    assert!(first.iter().all(|d| !d.redelivered));
    // Ack m1 and m3, leave m0, m2, m4 unacked, then vanish.
    first[1].ack(BasicAckOptions::default()).await.unwrap();
    first[3].ack(BasicAckOptions::default()).await.unwrap();
    conn1.close(200, "bye").await.unwrap();

    let conn2 = broker.lapin().await;
    let ch2 = conn2.create_channel().await.unwrap();
    let mut c2 = ch2
        .basic_consume(
            &q,
            "second",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let again = take(&mut c2, 3).await;
    let bodies: Vec<_> = again
        .iter()
        .map(|d| String::from_utf8_lossy(&d.data).to_string())
        .collect();
    assert_eq!(bodies, ["m0", "m2", "m4"], "original order kept");
    assert!(again.iter().all(|d| d.redelivered));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_and_reject_requeue_or_drop() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let q = declare(&ch, "retry").await;
    for body in [b"a", b"b", b"c"] {
        publish_confirmed(&ch, "", &q, body).await;
    }
    let mut c = ch
        .basic_consume(
            &q,
            "",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let d = take(&mut c, 3).await;
    d[0].nack(BasicNackOptions {
        multiple: false,
        requeue: true,
    })
    .await
    .unwrap();
    d[1].reject(BasicRejectOptions { requeue: false })
        .await
        .unwrap();
    let back = take(&mut c, 1).await;
    assert_eq!(&back[0].data[..], b"a");
    assert!(back[0].redelivered);
    // Ack everything outstanding (c and the redelivered a) at once.
    back[0]
        .ack(BasicAckOptions { multiple: true })
        .await
        .unwrap();
    assert_eq!(ready_count(&ch, &q).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_limits_unacked_deliveries() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let publisher = confirm_channel(&conn).await;
    let q = declare(&publisher, "limited").await;
    let ch = conn.create_channel().await.unwrap();
    ch.basic_qos(2, BasicQosOptions::default()).await.unwrap();
    let mut c = ch
        .basic_consume(
            &q,
            "",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    for i in 0..10 {
        publish_confirmed(&publisher, "", &q, format!("{i}").as_bytes()).await;
    }
    let got = take(&mut c, 2).await;
    // Deliveries happen when a publish is routed, which the confirms above
    // waited for: exactly 2 went out, 8 are still ready.
    assert_eq!(ready_count(&publisher, &q).await, 8);
    got[0].ack(BasicAckOptions::default()).await.unwrap();
    let third = take(&mut c, 1).await;
    assert_eq!(&third[0].data[..], b"2");
    assert_eq!(ready_count(&publisher, &q).await, 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_prefetch_is_shared_by_the_channel() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let publisher = confirm_channel(&conn).await;
    let q1 = declare(&publisher, "g1").await;
    let q2 = declare(&publisher, "g2").await;
    let ch = conn.create_channel().await.unwrap();
    ch.basic_qos(3, BasicQosOptions { global: true })
        .await
        .unwrap();
    let mut c1 = ch
        .basic_consume(
            &q1,
            "c1",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let _c2 = ch
        .basic_consume(
            &q2,
            "c2",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    for i in 0..3 {
        publish_confirmed(&publisher, "", &q1, format!("{i}").as_bytes()).await;
    }
    take(&mut c1, 3).await;
    for i in 0..3 {
        publish_confirmed(&publisher, "", &q2, format!("{i}").as_bytes()).await;
    }
    assert_eq!(
        ready_count(&publisher, &q2).await,
        3,
        "channel window of 3 is used up by c1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_get_returns_messages_then_empty() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let q = declare(&ch, "polled").await;
    assert!(ch
        .basic_get(&q, BasicGetOptions::default())
        .await
        .unwrap()
        .is_none());
    publish_confirmed(&ch, "", &q, b"one").await;
    publish_confirmed(&ch, "", &q, b"two").await;
    let m = ch
        .basic_get(&q, BasicGetOptions { no_ack: false })
        .await
        .unwrap()
        .expect("a message");
    assert_eq!(&m.delivery.data[..], b"one");
    assert_eq!(m.message_count, 1);
    m.delivery.ack(BasicAckOptions::default()).await.unwrap();
    let m = ch
        .basic_get(&q, BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("a message");
    assert_eq!(&m.delivery.data[..], b"two");
    assert!(ch
        .basic_get(&q, BasicGetOptions::default())
        .await
        .unwrap()
        .is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_confirms_ack_every_message() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let q = declare(&ch, "confirmed").await;
    let mut pending = Vec::new();
    for i in 0..500 {
        let props = BasicProperties::default().with_delivery_mode(2);
        let c = ch
            .basic_publish(
                "",
                &q,
                BasicPublishOptions::default(),
                format!("{i}").as_bytes(),
                props,
            )
            .await
            .unwrap();
        pending.push(c);
    }
    for c in pending {
        assert!(within("confirm", c).await.unwrap().is_ack());
    }
    assert_eq!(ready_count(&ch, &q).await, 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_commit_and_roll_back() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let observer = conn.create_channel().await.unwrap();
    let q = declare(&observer, "tx").await;
    let ch = conn.create_channel().await.unwrap();
    ch.tx_select().await.unwrap();
    for body in [b"1", b"2", b"3"] {
        ch.basic_publish(
            "",
            &q,
            BasicPublishOptions::default(),
            body,
            BasicProperties::default(),
        )
        .await
        .unwrap();
    }
    assert_eq!(
        ready_count(&observer, &q).await,
        0,
        "nothing visible before commit"
    );
    ch.tx_commit().await.unwrap();
    assert_eq!(ready_count(&observer, &q).await, 3);
    ch.basic_publish(
        "",
        &q,
        BasicPublishOptions::default(),
        b"4",
        BasicProperties::default(),
    )
    .await
    .unwrap();
    ch.tx_rollback().await.unwrap();
    assert_eq!(
        ready_count(&observer, &q).await,
        3,
        "rolled back publish is gone"
    );

    // An ack inside a transaction takes effect only on commit.
    let m = ch
        .basic_get(&q, BasicGetOptions::default())
        .await
        .unwrap()
        .unwrap();
    m.delivery.ack(BasicAckOptions::default()).await.unwrap();
    ch.tx_rollback().await.unwrap();
    ch.close(200, "done").await.unwrap();
    assert_eq!(
        ready_count(&observer, &q).await,
        3,
        "rolled-back ack left it unacked, then requeued"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_queue_order_is_preserved_for_one_publisher() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = conn.create_channel().await.unwrap();
    let q = declare(&ch, "ordered").await;
    let mut c = ch
        .basic_consume(
            &q,
            "",
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    for i in 0..1000u32 {
        ch.basic_publish(
            "",
            &q,
            BasicPublishOptions::default(),
            &i.to_be_bytes(),
            BasicProperties::default(),
        )
        .await
        .unwrap();
    }
    let got = take(&mut c, 1000).await;
    for (i, d) in got.iter().enumerate() {
        assert_eq!(d.data, (i as u32).to_be_bytes());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusive_and_auto_delete_queues_go_away() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = conn.create_channel().await.unwrap();
    let q = ch
        .queue_declare(
            "",
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert!(q.name().as_str().starts_with("amq.gen-"));
    let auto = ch
        .queue_declare(
            "auto",
            QueueDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let consumer = ch
        .basic_consume(
            "auto",
            "only",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    drop(consumer);
    ch.basic_cancel("only", BasicCancelOptions::default())
        .await
        .unwrap();
    let _ = auto;
    let name = q.name().to_string();
    conn.close(200, "bye").await.unwrap();

    let conn2 = broker.lapin().await;
    for gone in [name.as_str(), "auto"] {
        let ch = conn2.create_channel().await.unwrap();
        let err = ch
            .queue_declare(
                gone,
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap_err();
        assert_eq!(reply_code(&err), Some(404), "{gone} was deleted");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_queue_cancels_its_consumers() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = conn.create_channel().await.unwrap();
    let q = declare(&ch, "doomed").await;
    let mut c = ch
        .basic_consume(
            &q,
            "watcher",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let other = conn.create_channel().await.unwrap();
    let deleted = other
        .queue_delete(&q, QueueDeleteOptions::default())
        .await
        .unwrap();
    assert_eq!(deleted, 0);
    // lapin ends the consumer stream when the server cancels it.
    assert!(within("cancel", c.next()).await.is_none());
}

/// antre's documented deviation from RabbitMQ (which closes the connection
/// with 540): channel.flow(active=false) is answered, pauses deliveries to
/// the channel's consumers, and active=true resumes them, so a client that
/// sends it is never left waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_flow_pauses_and_resumes_deliveries() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let publisher = confirm_channel(&conn).await;
    let q = declare(&publisher, "paused").await;
    let ch = conn.create_channel().await.unwrap();
    let mut c = ch
        .basic_consume(
            &q,
            "",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    within(
        "flow-ok",
        ch.channel_flow(ChannelFlowOptions { active: false }),
    )
    .await
    .expect("flow(active=false) is answered");
    publish_confirmed(&publisher, "", &q, b"held").await;
    assert_eq!(
        ready_count(&publisher, &q).await,
        1,
        "not delivered while paused"
    );
    within(
        "flow-ok",
        ch.channel_flow(ChannelFlowOptions { active: true }),
    )
    .await
    .expect("flow(active=true) is answered");
    let got = take(&mut c, 1).await;
    assert_eq!(&got[0].data[..], b"held");
}
