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
