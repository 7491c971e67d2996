//! Bad input gets the reply code the spec names, as a channel or connection
//! close, and never harms other connections.

use crate::common;

use antre_amqp::method::*;
use antre_amqp::{encode_content, encode_method, reply, BasicProperties, Method, PROTOCOL_HEADER};
use bytes::{Bytes, BytesMut};
use common::*;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Checks the broker still serves a fresh client.
async fn still_serving(broker: &TestBroker) {
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let q = declare(&ch, "").await;
    publish_confirmed(&ch, "", &q, b"alive").await;
    assert_eq!(ready_count(&ch, &q).await, 1);
}

fn publish_frames(channel: u16, exchange: &str, key: &str, body: &[u8]) -> BytesMut {
    let mut out = BytesMut::new();
    let publish = BasicPublish {
        exchange: exchange.into(),
        routing_key: key.into(),
        ..Default::default()
    };
    encode_method(channel, &publish.into(), &mut out);
    encode_content(
        channel,
        &BasicProperties::default(),
        body,
        131_072,
        &mut out,
    );
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_found_404() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = conn.create_channel().await.unwrap();
    let err = ch
        .queue_declare(
            "missing",
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(reply_code(&err), Some(404));

    let mut raw = broker.raw().await;
    raw.open_channel(1).await;
    raw.send_bytes(&publish_frames(1, "no-such-exchange", "k", b"x"))
        .await;
    let close = raw.expect_channel_close(1, reply::NOT_FOUND).await;
    assert_eq!(
        close.reply_text,
        "NOT_FOUND - no exchange 'no-such-exchange' in vhost '/'"
    );
    assert_eq!((close.class_id, close.method_id), (60, 40));
    // The connection survives a channel error.
    raw.open_channel(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn precondition_failed_406_on_inequivalent_redeclare() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = conn.create_channel().await.unwrap();
    declare(&ch, "q").await;
    let err = ch
        .queue_declare(
            "q",
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(reply_code(&err), Some(406));

    let ch = conn.create_channel().await.unwrap();
    ch.exchange_declare(
        "x",
        ExchangeKind::Direct,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let err = ch
        .exchange_declare(
            "x",
            ExchangeKind::Fanout,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(reply_code(&err), Some(406));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn precondition_failed_406_on_unknown_delivery_tag() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw().await;
    raw.open_channel(1).await;
    raw.send(
        1,
        BasicAck {
            delivery_tag: 42,
            multiple: false,
        },
    )
    .await;
    let close = raw
        .expect_channel_close(1, reply::PRECONDITION_FAILED)
        .await;
    assert_eq!(
        close.reply_text,
        "PRECONDITION_FAILED - unknown delivery tag 42"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_message_closes_the_channel_with_406() {
    let broker = TestBroker::start_with(|c| c.max_message_size = 1024).await;
    let mut raw = broker.raw().await;
    raw.open_channel(1).await;
    raw.send(
        1,
        QueueDeclare {
            queue: "small".into(),
            ..Default::default()
        },
    )
    .await;
    raw.recv_method().await.unwrap();
    raw.send_bytes(&publish_frames(1, "", "small", &[0u8; 2000]))
        .await;
    let close = raw
        .expect_channel_close(1, reply::PRECONDITION_FAILED)
        .await;
    assert!(
        close
            .reply_text
            .contains("larger than configured max size 1024"),
        "{}",
        close.reply_text
    );
    // The body frames that followed were discarded, the connection lives on.
    raw.open_channel(2).await;
    raw.send(
        2,
        QueueDeclare {
            queue: "small".into(),
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
        ok.message_count, 0,
        "the oversized message was not enqueued"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusive_queue_of_another_connection_is_locked_405() {
    let broker = TestBroker::start().await;
    let owner = broker.lapin().await;
    let ch = owner.create_channel().await.unwrap();
    ch.queue_declare(
        "mine",
        QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let other = broker.lapin().await;
    let ch = other.create_channel().await.unwrap();
    let err = ch
        .basic_consume(
            "mine",
            "",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(reply_code(&err), Some(405));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_refused_403() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = conn.create_channel().await.unwrap();
    declare(&ch, "solo").await;
    // Kept alive: lapin cancels a consumer when it is dropped.
    let _exclusive = ch
        .basic_consume(
            "solo",
            "a",
            BasicConsumeOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let ch2 = conn.create_channel().await.unwrap();
    let err = ch2
        .basic_consume(
            "solo",
            "b",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(reply_code(&err), Some(403), "exclusive consumer");

    let ch3 = conn.create_channel().await.unwrap();
    let err = ch3
        .queue_bind(
            "solo",
            "",
            "solo",
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(
        reply_code(&err),
        Some(403),
        "binding to the default exchange"
    );

    let ch4 = conn.create_channel().await.unwrap();
    let err = ch4
        .exchange_declare(
            "amq.custom",
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(reply_code(&err), Some(403), "reserved amq. prefix");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_are_refused_403() {
    let broker = TestBroker::start().await;
    let uri = format!("amqp://guest:wrong@{}/%2f", broker.addr());
    let err = Connection::connect(&uri, ConnectionProperties::default())
        .await
        .unwrap_err();
    assert_eq!(reply_code(&err), Some(403), "{err}");

    let uri = format!("amqp://nobody:guest@{}/%2f", broker.addr());
    assert!(Connection::connect(&uri, ConnectionProperties::default())
        .await
        .is_err());
    still_serving(&broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_vhost_is_not_allowed_530() {
    let broker = TestBroker::start().await;
    let uri = format!("amqp://guest:guest@{}/nope", broker.addr());
    let err = Connection::connect(&uri, ConnectionProperties::default())
        .await
        .unwrap_err();
    assert_eq!(reply_code(&err), Some(530), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reused_consumer_tag_is_not_allowed_530() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw().await;
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
    for _ in 0..2 {
        raw.send(
            1,
            BasicConsume {
                queue: "q".into(),
                consumer_tag: "dup".into(),
                ..Default::default()
            },
        )
        .await;
    }
    let (_, ok) = raw.recv_method().await.unwrap();
    assert!(matches!(ok, Method::BasicConsumeOk(_)));
    let close = raw.expect_connection_close(reply::NOT_ALLOWED).await;
    assert_eq!(
        close.reply_text,
        "NOT_ALLOWED - attempt to reuse consumer tag 'dup'"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_are_frame_errors_501_and_harm_no_one_else() {
    let broker = TestBroker::start().await;
    // A bystander with messages in flight.
    let bystander = broker.lapin().await;
    let bch = confirm_channel(&bystander).await;
    let q = declare(&bch, "bystander").await;
    publish_confirmed(&bch, "", &q, b"keep me").await;

    let mut raw = broker.raw().await;
    raw.send_bytes(&[8, 0, 0, 0, 0, 0, 0, 0x00]).await; // bad frame end
    raw.expect_connection_close(reply::FRAME_ERROR).await;

    let mut raw = broker.raw().await;
    raw.send_bytes(&[3, 0, 1, 0x7f, 0xff, 0xff, 0xff]).await; // 2 GiB frame
    raw.expect_connection_close(reply::FRAME_ERROR).await;

    let mut raw = broker.raw().await;
    raw.send_bytes(&[42, 0, 0, 0, 0, 0, 0, 0xCE]).await; // unknown frame type
    raw.expect_connection_close(reply::FRAME_ERROR).await;

    assert_eq!(ready_count(&bch, &q).await, 1);
    still_serving(&broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_method_is_a_syntax_error_502() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw().await;
    // channel.open's method frame cut short: class and method ids only... of
    // queue.declare, whose fields are missing.
    raw.send_bytes(&[1, 0, 1, 0, 0, 0, 4, 0, 50, 0, 10, 0xCE])
        .await;
    raw.expect_connection_close(reply::SYNTAX_ERROR).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_exchange_type_is_command_invalid_503() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw().await;
    raw.open_channel(1).await;
    raw.send(
        1,
        ExchangeDeclare {
            exchange: "e".into(),
            kind: "bogus".into(),
            ..Default::default()
        },
    )
    .await;
    let close = raw.expect_connection_close(reply::COMMAND_INVALID).await;
    assert_eq!((close.class_id, close.method_id), (40, 10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_on_unopened_channel_is_channel_error_504() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw().await;
    raw.send(
        7,
        QueueDeclare {
            queue: "q".into(),
            ..Default::default()
        },
    )
    .await;
    raw.expect_connection_close(reply::CHANNEL_ERROR).await;

    let mut raw = broker.raw().await;
    raw.open_channel(1).await;
    raw.send(1, ChannelOpen::default()).await;
    raw.expect_connection_close(reply::CHANNEL_ERROR).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_out_of_order_is_unexpected_frame_505() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw().await;
    raw.open_channel(1).await;
    raw.send_bytes(&[3, 0, 1, 0, 0, 0, 2, b'h', b'i', 0xCE])
        .await; // body, no publish
    raw.expect_connection_close(reply::UNEXPECTED_FRAME).await;

    let mut raw = broker.raw().await;
    raw.open_channel(1).await;
    let mut out = BytesMut::new();
    encode_method(1, &BasicPublish::default().into(), &mut out);
    encode_method(1, &BasicQos::default().into(), &mut out); // a method where a header belongs
    raw.send_bytes(&out).await;
    raw.expect_connection_close(reply::UNEXPECTED_FRAME).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn immediate_flag_is_not_implemented_540() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw().await;
    raw.open_channel(1).await;
    let mut out = BytesMut::new();
    encode_method(
        1,
        &BasicPublish {
            immediate: true,
            ..Default::default()
        }
        .into(),
        &mut out,
    );
    encode_content(1, &BasicProperties::default(), b"x", 131_072, &mut out);
    raw.send_bytes(&out).await;
    raw.expect_connection_close(reply::NOT_IMPLEMENTED).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_protocol_header_is_answered_with_ours() {
    let broker = TestBroker::start().await;
    let mut s = tokio::net::TcpStream::connect(broker.addr()).await.unwrap();
    s.write_all(b"AMQP\x01\x01\x00\x0a").await.unwrap();
    let mut got = Vec::new();
    within("header and close", s.read_to_end(&mut got))
        .await
        .unwrap();
    assert_eq!(got, PROTOCOL_HEADER);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_vanishing_mid_publish_loses_nothing_accepted() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    let q = declare(&ch, "half").await;
    publish_confirmed(&ch, "", &q, b"whole").await;

    let mut raw = broker.raw().await;
    raw.open_channel(1).await;
    let frames = publish_frames(1, "", &q, &[7u8; 1000]);
    raw.send_bytes(&frames[..frames.len() - 300]).await; // cut inside the body
    drop(raw);

    // The half message never counts; the whole one is intact.
    still_serving(&broker).await;
    let m = ch
        .basic_get(&q, BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&m.delivery.data[..], b"whole");
    assert!(ch
        .basic_get(&q, BasicGetOptions::default())
        .await
        .unwrap()
        .is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_client_is_dropped_after_missed_heartbeats() {
    let broker = TestBroker::start().await;
    let mut raw = RawClient::connect(broker.addr(), 1).await;
    // The server sends heartbeats, and closes the socket once two intervals
    // pass without a frame from us.
    let mut heartbeats = 0;
    while let Some(frame) = raw.recv().await {
        if frame == antre_amqp::Frame::Heartbeat {
            heartbeats += 1;
        }
    }
    assert!(heartbeats >= 1, "server sent heartbeats before giving up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqplain_login_works() {
    let broker = TestBroker::start().await;
    let mut s = tokio::net::TcpStream::connect(broker.addr()).await.unwrap();
    s.write_all(&PROTOCOL_HEADER).await.unwrap();
    let mut creds = BytesMut::new();
    let table: antre_amqp::FieldTable = [
        ("LOGIN", antre_amqp::FieldValue::string("guest")),
        ("PASSWORD", antre_amqp::FieldValue::string("guest")),
    ]
    .into_iter()
    .collect();
    table.encode(&mut creds);
    let start_ok = ConnectionStartOk {
        mechanism: "AMQPLAIN".into(),
        response: Bytes::copy_from_slice(&creds[4..]),
        locale: "en_US".into(),
        ..Default::default()
    };
    let mut out = BytesMut::new();
    encode_method(0, &start_ok.into(), &mut out);
    let mut buf = vec![0u8; 4096];
    let _ = s.read(&mut buf).await.unwrap(); // connection.start
    s.write_all(&out).await.unwrap();
    let mut got = BytesMut::new();
    loop {
        let n = within("tune", s.read_buf(&mut got)).await.unwrap();
        assert!(n > 0, "server closed instead of sending tune");
        if let Some(frame) = antre_amqp::decode_frame(&mut got, 1 << 20).unwrap() {
            assert!(
                matches!(
                    frame,
                    antre_amqp::Frame::Method {
                        method: Method::ConnectionTune(_),
                        ..
                    }
                ),
                "{frame:?}"
            );
            break;
        }
    }
}
