//! Durable definitions and persistent messages across restarts; transient
//! ones do not survive; backlogs larger than the memory limit.

use crate::common;

use common::*;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, ExchangeKind};

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

async fn publish(ch: &lapin::Channel, exchange: &str, key: &str, body: &[u8], persistent: bool) {
    let props = BasicProperties::default().with_delivery_mode(if persistent { 2 } else { 1 });
    let confirm = ch
        .basic_publish(exchange, key, BasicPublishOptions::default(), body, props)
        .await
        .unwrap();
    assert!(within("confirm", confirm).await.unwrap().is_ack());
}

fn passive() -> QueueDeclareOptions {
    QueueDeclareOptions {
        passive: true,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_topology_and_persistent_messages_survive_restart() {
    let broker = TestBroker::start().await;
    {
        let conn = broker.lapin().await;
        let ch = confirm_channel(&conn).await;
        let mut args = FieldTable::default();
        args.insert("x-max-length".into(), AMQPValue::LongInt(1000));
        ch.queue_declare("payments", durable(), args.clone())
            .await
            .unwrap();
        ch.queue_declare(
            "scratch",
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        ch.exchange_declare(
            "billing",
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
        ch.exchange_declare(
            "temp",
            ExchangeKind::Fanout,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        ch.queue_bind(
            "payments",
            "billing",
            "pay.#",
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        for i in 0..10 {
            publish(&ch, "billing", "pay.card", format!("p{i}").as_bytes(), true).await;
        }
        publish(&ch, "", "payments", b"transient", false).await;
        publish(&ch, "", "scratch", b"gone", true).await;
        // A quorum queue keeps every message, whatever its delivery mode
        // (as RabbitMQ's quorum queues do).
        let mut quorum = FieldTable::default();
        quorum.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        ch.queue_declare("ledger", durable(), quorum).await.unwrap();
        publish(&ch, "", "ledger", b"transient entry", false).await;
        // Consume and ack the first three; leave one delivered but unacked.
        for _ in 0..3 {
            let m = ch
                .basic_get("payments", BasicGetOptions::default())
                .await
                .unwrap()
                .unwrap();
            m.delivery.ack(BasicAckOptions::default()).await.unwrap();
        }
        let unacked = ch
            .basic_get("payments", BasicGetOptions::default())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&unacked.delivery.data[..], b"p3");
        conn.close(200, "bye").await.unwrap();
    }

    let broker = broker.restart().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    // Redeclaring with the same arguments (decoded from JSON as another
    // integer width) is still equivalent.
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongInt(1000));
    let q = ch.queue_declare("payments", durable(), args).await.unwrap();
    assert_eq!(
        q.message_count(),
        7,
        "p3..p9 survive; acked ones and the transient one do not"
    );
    let ledger = ch
        .basic_get("ledger", BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("the quorum queue's transient message survives");
    assert_eq!(&ledger.delivery.data[..], b"transient entry");
    let err = ch
        .queue_declare("scratch", passive(), FieldTable::default())
        .await
        .unwrap_err();
    assert_eq!(reply_code(&err), Some(404), "non-durable queue is gone");
    let ch = confirm_channel(&conn).await;
    ch.exchange_declare(
        "billing",
        ExchangeKind::Topic,
        ExchangeDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("durable exchange survives");
    let err = ch
        .exchange_declare(
            "temp",
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(reply_code(&err), Some(404), "non-durable exchange is gone");

    // The binding survived too, and order is kept.
    let ch = confirm_channel(&conn).await;
    publish(&ch, "billing", "pay.wire", b"after", true).await;
    let mut bodies = Vec::new();
    while let Some(m) = ch
        .basic_get("payments", BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        if m.delivery.data != b"after" {
            assert!(
                m.delivery.redelivered,
                "recovered messages are marked redelivered"
            );
        }
        bodies.push(String::from_utf8(m.delivery.data).unwrap());
    }
    assert_eq!(bodies, ["p3", "p4", "p5", "p6", "p7", "p8", "p9", "after"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_durable_queue_stays_deleted() {
    let broker = TestBroker::start().await;
    {
        let conn = broker.lapin().await;
        let ch = confirm_channel(&conn).await;
        ch.queue_declare("old", durable(), FieldTable::default())
            .await
            .unwrap();
        publish(&ch, "", "old", b"x", true).await;
        ch.queue_delete("old", QueueDeleteOptions::default())
            .await
            .unwrap();
        ch.queue_declare("old", durable(), FieldTable::default())
            .await
            .unwrap();
        conn.close(200, "bye").await.unwrap();
    }
    let broker = broker.restart().await;
    let conn = broker.lapin().await;
    let ch = conn.create_channel().await.unwrap();
    let q = ch
        .queue_declare("old", passive(), FieldTable::default())
        .await
        .unwrap();
    assert_eq!(
        q.message_count(),
        0,
        "the old queue's message did not come back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlog_beyond_memory_limit_is_read_back_from_disk() {
    // A 4 KiB limit: nearly every message of this backlog lives on disk only.
    let broker = TestBroker::start_with(|c| c.message_memory_limit = 4096).await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    ch.queue_declare("backlog", durable(), FieldTable::default())
        .await
        .unwrap();
    const N: usize = 2000;
    let mut pending = Vec::with_capacity(N);
    for i in 0..N {
        let body = format!("{i:06}-{}", "x".repeat(200));
        let props = BasicProperties::default().with_delivery_mode(2);
        pending.push(
            ch.basic_publish(
                "",
                "backlog",
                BasicPublishOptions::default(),
                body.as_bytes(),
                props,
            )
            .await
            .unwrap(),
        );
    }
    for p in pending {
        assert!(within("confirm", p).await.unwrap().is_ack());
    }
    let consumer_ch = conn.create_channel().await.unwrap();
    consumer_ch
        .basic_qos(100, BasicQosOptions::default())
        .await
        .unwrap();
    let mut c = consumer_ch
        .basic_consume(
            "backlog",
            "",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    for i in 0..N {
        let d = take(&mut c, 1).await.remove(0);
        let expected = format!("{i:06}-{}", "x".repeat(200));
        assert_eq!(
            d.data,
            expected.as_bytes(),
            "message {i} intact and in order"
        );
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    assert_eq!(ready_count(&ch, "backlog").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn low_disk_blocks_publishers_until_space_returns() {
    use antre_amqp::method::{BasicPublish, ConnectionBlocked, QueueDeclare};
    use antre_amqp::{encode_content, encode_method, FieldTable as Table, FieldValue, Method};

    // No file system has this much free space: the alarm is raised at once.
    let broker = TestBroker::start_with(|c| {
        c.disk_free_limit = u64::MAX;
        c.disk_check_interval = std::time::Duration::from_millis(20);
    })
    .await;
    let caps: Table = [("connection.blocked", FieldValue::Bool(true))]
        .into_iter()
        .collect();
    let props: Table = [("capabilities", FieldValue::Table(caps))]
        .into_iter()
        .collect();
    let mut raw = RawClient::connect_with(broker.addr(), 0, props).await;
    raw.open_channel(1).await;
    raw.send(
        1,
        QueueDeclare {
            queue: "q".into(),
            ..Default::default()
        },
    )
    .await;
    raw.recv_method().await.unwrap();
    let publish = |body: &[u8]| {
        let mut out = bytes::BytesMut::new();
        let m = BasicPublish {
            routing_key: "q".into(),
            ..Default::default()
        };
        encode_method(1, &m.into(), &mut out);
        encode_content(1, &Default::default(), body, 131_072, &mut out);
        out
    };
    raw.send_bytes(&publish(b"first")).await;
    let (ch, blocked) = raw.recv_method().await.unwrap();
    assert_eq!(ch, 0);
    assert_eq!(
        blocked,
        Method::ConnectionBlocked(ConnectionBlocked {
            reason: "low on disk".into()
        })
    );

    // While blocked, the connection is not read: the second publish waits.
    raw.send_bytes(&publish(b"second")).await;
    let observer = broker.lapin().await;
    let och = observer.create_channel().await.unwrap();
    assert_eq!(ready_count(&och, "q").await, 1);

    broker.server.alarms.set_disk_free_limit(0);
    let (_, unblocked) = raw.recv_method().await.unwrap();
    assert!(
        matches!(unblocked, Method::ConnectionUnblocked(_)),
        "{unblocked:?}"
    );
    raw.send(
        1,
        QueueDeclare {
            queue: "q".into(),
            passive: true,
            ..Default::default()
        },
    )
    .await;
    let (_, ok) = raw.recv_method().await.unwrap();
    let Method::QueueDeclareOk(ok) = ok else {
        panic!("{ok:?}")
    };
    assert_eq!(
        ok.message_count, 2,
        "the held publish went through once unblocked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_broker_cannot_open_the_same_data_directory() {
    let broker = TestBroker::start().await;
    let second = antre::start(antre::Config {
        amqp_listen: Some("127.0.0.1:0".into()),
        data_dir: broker.dir.path().to_path_buf(),
        ..antre::Config::default()
    })
    .await;
    let err = second.expect_err("the directory is locked");
    assert!(
        err.to_string().contains("in use by another antre process"),
        "{err}"
    );
}
