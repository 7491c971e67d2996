//! Bounded under any load: a misbehaving client meets a limit the AMQP way
//! (a reply code, connection.blocked) and a bystander client stays served.

mod common;

use antre_amqp::method::*;
use antre_amqp::{encode_method, Method};
use bytes::BytesMut;
use common::*;

/// A client that pipelines its first frames after connection.open in the
/// same write as the open itself is served at once, even with heartbeats
/// off (nothing else would ever wake the connection up).
#[tokio::test]
async fn frames_pipelined_with_connection_open_are_processed() {
    let broker = TestBroker::start().await;
    let mut c = RawClient::start(broker.addr(), antre_amqp::FieldTable::new()).await;
    let (_, tune) = c.recv_method().await.expect("connection.tune");
    let Method::ConnectionTune(tune) = tune else {
        panic!("expected tune, got {tune:?}")
    };
    let mut batch = BytesMut::new();
    let tune_ok = ConnectionTuneOk {
        channel_max: tune.channel_max,
        frame_max: tune.frame_max,
        heartbeat: 0,
    };
    encode_method(0, &tune_ok.into(), &mut batch);
    let open = ConnectionOpen {
        virtual_host: "/".into(),
        ..Default::default()
    };
    encode_method(0, &open.into(), &mut batch);
    encode_method(1, &ChannelOpen::default().into(), &mut batch);
    let declare = QueueDeclare {
        queue: "pipelined".into(),
        ..Default::default()
    };
    encode_method(1, &declare.into(), &mut batch);
    c.send_bytes(&batch).await;
    let (_, m) = c.recv_method().await.expect("open-ok");
    assert!(matches!(m, Method::ConnectionOpenOk(_)), "got {m:?}");
    let (ch, m) = c.recv_method().await.expect("channel.open-ok");
    assert_eq!(ch, 1);
    assert!(matches!(m, Method::ChannelOpenOk(_)), "got {m:?}");
    let (_, m) = c.recv_method().await.expect("queue.declare-ok");
    assert!(matches!(m, Method::QueueDeclareOk(_)), "got {m:?}");
}

/// Declaring a durable queue appends to the vhost's definitions log: it
/// does not rewrite every definition (which made n declares cost O(n²)),
/// and all of them, with their bindings, come back after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_declares_are_logged_not_rewritten() {
    use futures::future::try_join_all;
    use lapin::options::*;
    use lapin::types::FieldTable;

    let broker = TestBroker::start().await;
    let vhost_dir = broker
        .dir
        .path()
        .join("vhosts/8a5edab282632443219e051e4ade2d1d");
    let snapshot = || std::fs::read(vhost_dir.join("definitions.json")).unwrap();
    let before = snapshot();
    {
        let conn = broker.lapin().await;
        let ch = conn.create_channel().await.unwrap();
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        // Pipelined: all declares are in flight before the first answer.
        let declares = (0..300).map(|i| {
            let ch = ch.clone();
            async move {
                let name = format!("payments-{i}");
                ch.queue_declare(&name, durable, FieldTable::default())
                    .await?;
                ch.queue_bind(
                    &name,
                    "amq.direct",
                    &name,
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
            }
        });
        within("declares", try_join_all(declares)).await.unwrap();
        conn.close(200, "bye").await.unwrap();
    }
    assert_eq!(
        snapshot(),
        before,
        "no declare rewrote the definitions file"
    );

    let broker = broker.restart().await;
    let conn = broker.lapin().await;
    let ch = conn.create_channel().await.unwrap();
    for i in [0, 150, 299] {
        let name = format!("payments-{i}");
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        ch.queue_declare(&name, passive, FieldTable::default())
            .await
            .unwrap_or_else(|e| panic!("{name} survived the restart: {e}"));
        publish_confirmed(&ch, "amq.direct", &name, b"routed").await;
        assert_eq!(ready_count(&ch, &name).await, 1, "{name} is still bound");
    }
}
