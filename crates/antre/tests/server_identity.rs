//! What connection.start announces: antre by default, RabbitMQ 3.10.8 with
//! `server_identity = "rabbitmq"` (for clients that pick behaviour from
//! `product` and `version`, see docs/compatibility.md).

use crate::common;

use antre::config::ServerIdentity;
use antre_amqp::{decode_frame, FieldTable, FieldValue, Frame, Method, PROTOCOL_HEADER};
use bytes::BytesMut;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn server_properties(broker: &TestBroker) -> FieldTable {
    let mut stream = TcpStream::connect(broker.addr()).await.expect("connect");
    stream.write_all(&PROTOCOL_HEADER).await.expect("write");
    let mut buf = BytesMut::new();
    within("connection.start", async {
        loop {
            if let Some(frame) = decode_frame(&mut buf, 1 << 20).expect("valid frame") {
                let Frame::Method {
                    method: Method::ConnectionStart(start),
                    ..
                } = frame
                else {
                    panic!("expected connection.start, got {frame:?}");
                };
                return start.server_properties;
            }
            assert!(stream.read_buf(&mut buf).await.expect("read") > 0);
        }
    })
    .await
}

fn text<'a>(props: &'a FieldTable, key: &str) -> &'a str {
    props.get(key).and_then(FieldValue::as_str).unwrap_or("")
}

#[tokio::test]
async fn antre_says_it_is_antre_by_default() {
    let broker = TestBroker::start().await;
    let props = server_properties(&broker).await;
    assert_eq!(text(&props, "product"), "antre");
    assert_eq!(text(&props, "version"), env!("CARGO_PKG_VERSION"));
}

#[tokio::test]
async fn it_can_present_itself_as_rabbitmq() {
    let broker = TestBroker::start_with(|c| c.server_identity = ServerIdentity::RabbitMq).await;
    let props = server_properties(&broker).await;
    assert_eq!(text(&props, "product"), "RabbitMQ");
    assert_eq!(text(&props, "version"), "3.10.8");
    assert!(text(&props, "information").contains("antre"));
    // The rest of the handshake is unchanged.
    let mut raw = broker.raw().await;
    raw.open_channel(1).await;
}
