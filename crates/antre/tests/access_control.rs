//! Access control with real clients over real sockets: every permission
//! rule of an AMQP method, allowed and refused, with RabbitMQ's reply
//! texts; changes that apply to open connections; loopback users; the
//! management API per tag; definitions with users and permissions.
//!
//! Every expected reply text here was checked against RabbitMQ 3.10.8 on
//! a side port with the same users and permissions (bob: configure
//! `^(cfg|amq\.gen.*)`, write `^(w|cfg|amq\.topic)`, read `^(r|cfg)`, and a
//! topic permission on `cfg.x` with write `^{username}\.`, read `^rallowed`).

use crate::common;

use antre_amqp::method::*;
use antre_amqp::{encode_content, encode_method, BasicProperties, FieldTable, FieldValue, Method};
use bytes::BytesMut;
use common::{RawClient, TestBroker};
use serde_json::json;

const BOB: (&str, &str) = ("bob", "bobpw");

/// bob as in the module comment; `tags` his tags.
async fn with_bob(b: &TestBroker, tags: &str) {
    let (status, body) = b
        .api(
            "PUT",
            "/api/users/bob",
            Some(json!({ "password": "bobpw", "tags": tags })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let perms = json!({
        "configure": "^(cfg|amq\\.gen.*)",
        "write": "^(w|cfg|amq\\.topic)",
        "read": "^(r|cfg)",
    });
    let (status, body) = b.api("PUT", "/api/permissions/%2F/bob", Some(perms)).await;
    assert_eq!(status, 201, "{body}");
}

enum Op {
    Call(Method),
    Publish {
        exchange: &'static str,
        key: &'static str,
        user_id: Option<&'static str>,
    },
}

fn publish(exchange: &'static str, key: &'static str) -> Op {
    Op::Publish {
        exchange,
        key,
        user_id: None,
    }
}

/// Does `op` as bob on a fresh connection: Ok, or the channel.close's
/// code and text.
async fn attempt(b: &TestBroker, op: Op) -> Result<(), (u16, String)> {
    let mut c = RawClient::open_as(b.addr(), BOB.0, BOB.1, "/")
        .await
        .expect("bob opens /");
    c.open_channel(1).await;
    match op {
        Op::Call(m) => c.send(1, m).await,
        Op::Publish {
            exchange,
            key,
            user_id,
        } => {
            c.send(1, ConfirmSelect { nowait: false }).await;
            c.recv_method().await.expect("select-ok");
            let mut out = BytesMut::new();
            let m: Method = BasicPublish {
                exchange: exchange.into(),
                routing_key: key.into(),
                ..Default::default()
            }
            .into();
            encode_method(1, &m, &mut out);
            let props = BasicProperties {
                user_id: user_id.map(str::to_owned),
                ..Default::default()
            };
            encode_content(1, &props, b"x", 131_072, &mut out);
            c.send_bytes(&out).await;
        }
    }
    match c.recv_method().await.expect("an answer") {
        (_, Method::ChannelClose(close)) => Err((close.reply_code, close.reply_text)),
        (_, Method::BasicNack(_)) => Err((0, "nacked".into())),
        _ => Ok(()),
    }
}

fn declare_queue(name: &str) -> Op {
    Op::Call(
        QueueDeclare {
            queue: name.into(),
            ..Default::default()
        }
        .into(),
    )
}

fn declare_exchange(name: &str, kind: &str, arguments: FieldTable) -> Op {
    Op::Call(
        ExchangeDeclare {
            exchange: name.into(),
            kind: kind.into(),
            arguments,
            ..Default::default()
        }
        .into(),
    )
}

fn bind(queue: &str, exchange: &str, key: &str) -> Op {
    Op::Call(
        QueueBind {
            queue: queue.into(),
            exchange: exchange.into(),
            routing_key: key.into(),
            ..Default::default()
        }
        .into(),
    )
}

fn arg(key: &str, value: &str) -> FieldTable {
    [(key, FieldValue::string(value))].into_iter().collect()
}

fn refused(what: &str) -> Result<(), (u16, String)> {
    Err((
        403,
        format!("ACCESS_REFUSED - access to {what} in vhost '/' refused for user 'bob'"),
    ))
}

async fn check(b: &TestBroker, label: &str, op: Op, expected: Result<(), (u16, String)>) {
    assert_eq!(attempt(b, op).await, expected, "{label}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declare_and_delete_need_configure() {
    let b = TestBroker::start().await;
    with_bob(&b, "").await;
    check(&b, "queue q", declare_queue("q"), refused("queue 'q'")).await;
    check(&b, "queue cfg.q", declare_queue("cfg.q"), Ok(())).await;
    let passive = QueueDeclare {
        queue: "cfg.q".into(),
        passive: true,
        ..Default::default()
    };
    check(
        &b,
        "passive needs nothing",
        Op::Call(passive.into()),
        Ok(()),
    )
    .await;
    let server_named = QueueDeclare {
        exclusive: true,
        ..Default::default()
    };
    check(&b, "amq.gen-", Op::Call(server_named.into()), Ok(())).await;
    let dlx = QueueDeclare {
        queue: "cfg.dlq".into(),
        arguments: arg("x-dead-letter-exchange", "nodlx"),
        ..Default::default()
    };
    check(
        &b,
        "new queue's DLX needs write",
        Op::Call(dlx.into()),
        refused("exchange 'nodlx'"),
    )
    .await;
    check(
        &b,
        "exchange x",
        declare_exchange("x", "direct", FieldTable::new()),
        refused("exchange 'x'"),
    )
    .await;
    check(
        &b,
        "exchange cfg.x",
        declare_exchange("cfg.x", "topic", FieldTable::new()),
        Ok(()),
    )
    .await;
    let with_ae = declare_exchange("cfg.ae", "direct", arg("alternate-exchange", "ae"));
    check(
        &b,
        "new exchange's AE needs write",
        with_ae,
        refused("exchange 'ae'"),
    )
    .await;
    let system = ExchangeDelete {
        exchange: "amq.direct".into(),
        ..Default::default()
    };
    let text = "ACCESS_REFUSED - deletion of system exchange 'amq.direct' in vhost '/' not allowed";
    check(
        &b,
        "system exchange",
        Op::Call(system.into()),
        Err((403, text.into())),
    )
    .await;
    let missing = ExchangeDelete {
        exchange: "nox".into(),
        ..Default::default()
    };
    check(
        &b,
        "delete before lookup",
        Op::Call(missing.into()),
        refused("exchange 'nox'"),
    )
    .await;
    let missing = QueueDelete {
        queue: "noq".into(),
        ..Default::default()
    };
    check(
        &b,
        "delete before lookup",
        Op::Call(missing.into()),
        refused("queue 'noq'"),
    )
    .await;
    let mine = QueueDelete {
        queue: "cfg.q".into(),
        ..Default::default()
    };
    check(&b, "delete cfg.q", Op::Call(mine.into()), Ok(())).await;
    let reserved = "ACCESS_REFUSED - queue name 'amq.foo' contains reserved prefix 'amq.*'";
    check(
        &b,
        "reserved first",
        declare_queue("amq.foo"),
        Err((403, reserved.into())),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_named_queue_needs_configure_on_its_generated_name() {
    let b = TestBroker::start().await;
    with_bob(&b, "").await;
    let narrow = json!({ "configure": "^cfg", "write": ".*", "read": ".*" });
    b.api("PUT", "/api/permissions/%2F/bob", Some(narrow)).await;
    let server_named = QueueDeclare {
        exclusive: true,
        ..Default::default()
    };
    let err = attempt(&b, Op::Call(server_named.into()))
        .await
        .unwrap_err();
    assert_eq!(err.0, 403);
    assert!(
        err.1
            .starts_with("ACCESS_REFUSED - access to queue 'amq.gen-")
            && err.1.ends_with("' in vhost '/' refused for user 'bob'"),
        "{}",
        err.1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_needs_write_on_the_destination_and_read_on_the_source() {
    let b = TestBroker::start().await;
    with_bob(&b, "").await;
    attempt(&b, declare_queue("cfg.q")).await.unwrap();
    attempt(&b, declare_exchange("cfg.x", "topic", FieldTable::new()))
        .await
        .unwrap();
    check(
        &b,
        "read on amq.direct",
        bind("cfg.q", "amq.direct", "k"),
        refused("exchange 'amq.direct'"),
    )
    .await;
    check(&b, "allowed", bind("cfg.q", "cfg.x", "k"), Ok(())).await;
    let no_queue = Err((404, "NOT_FOUND - no queue 'wq' in vhost '/'".to_owned()));
    check(
        &b,
        "write on wq, which is missing",
        bind("wq", "cfg.x", "k"),
        no_queue,
    )
    .await;
    check(
        &b,
        "no write on q",
        bind("q", "cfg.x", "k"),
        refused("queue 'q'"),
    )
    .await;
    let default = "ACCESS_REFUSED - operation not permitted on the default exchange";
    check(
        &b,
        "default exchange",
        bind("cfg.q", "", "k"),
        Err((403, default.into())),
    )
    .await;
    let unbind = QueueUnbind {
        queue: "cfg.q".into(),
        exchange: "amq.direct".into(),
        routing_key: "k".into(),
        ..Default::default()
    };
    check(
        &b,
        "unbind",
        Op::Call(unbind.into()),
        refused("exchange 'amq.direct'"),
    )
    .await;
    let x2x = ExchangeBind {
        destination: "cfg.x".into(),
        source: "amq.direct".into(),
        routing_key: "k".into(),
        ..Default::default()
    };
    check(
        &b,
        "exchange.bind",
        Op::Call(x2x.into()),
        refused("exchange 'amq.direct'"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_get_and_purge_need_read_and_publish_needs_write() {
    let b = TestBroker::start().await;
    with_bob(&b, "").await;
    b.api("PUT", "/api/queues/%2F/wq", None).await;
    attempt(&b, declare_queue("cfg.q")).await.unwrap();
    attempt(&b, declare_exchange("cfg.x", "direct", FieldTable::new()))
        .await
        .unwrap();
    let consume = |q: &str| {
        Op::Call(
            BasicConsume {
                queue: q.into(),
                // Direct reply-to takes only auto-ack consumers.
                no_ack: q == "amq.rabbitmq.reply-to",
                ..Default::default()
            }
            .into(),
        )
    };
    check(&b, "consume cfg.q", consume("cfg.q"), Ok(())).await;
    check(&b, "consume wq", consume("wq"), refused("queue 'wq'")).await;
    check(
        &b,
        "reply-to needs nothing",
        consume("amq.rabbitmq.reply-to"),
        Ok(()),
    )
    .await;
    let get = BasicGet {
        queue: "wq".into(),
        ..Default::default()
    };
    check(&b, "get", Op::Call(get.into()), refused("queue 'wq'")).await;
    let purge = QueuePurge {
        queue: "wq".into(),
        ..Default::default()
    };
    check(&b, "purge", Op::Call(purge.into()), refused("queue 'wq'")).await;

    check(
        &b,
        "default exchange",
        publish("", "cfg.q"),
        refused("exchange 'amq.default'"),
    )
    .await;
    check(
        &b,
        "amq.direct",
        publish("amq.direct", "k"),
        refused("exchange 'amq.direct'"),
    )
    .await;
    check(&b, "cfg.x", publish("cfg.x", "k"), Ok(())).await;
    let missing = Err((
        404,
        "NOT_FOUND - no exchange 'wmissing' in vhost '/'".to_owned(),
    ));
    check(
        &b,
        "write first, then existence",
        publish("wmissing", "k"),
        missing,
    )
    .await;
    check(
        &b,
        "no write on missing",
        publish("missing", "k"),
        refused("exchange 'missing'"),
    )
    .await;
    let impostor = Op::Publish {
        exchange: "cfg.x",
        key: "k",
        user_id: Some("alice"),
    };
    let text =
        "PRECONDITION_FAILED - user_id property set to 'alice' but authenticated user was 'bob'";
    check(&b, "user_id", impostor, Err((406, text.into()))).await;
    let honest = Op::Publish {
        exchange: "cfg.x",
        key: "k",
        user_id: Some("bob"),
    };
    check(&b, "own user_id", honest, Ok(())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_permissions_cover_routing_keys_of_topic_exchanges() {
    let b = TestBroker::start().await;
    with_bob(&b, "").await;
    attempt(&b, declare_queue("cfg.q")).await.unwrap();
    attempt(&b, declare_exchange("cfg.x", "topic", FieldTable::new()))
        .await
        .unwrap();
    let topic = json!({ "exchange": "cfg.x", "write": "^{username}\\.", "read": "^rallowed" });
    let (status, body) = b
        .api("PUT", "/api/topic-permissions/%2F/bob", Some(topic))
        .await;
    assert_eq!(status, 201, "{body}");
    let topic_refused = |key: &str| {
        Err((
            403,
            format!(
                "ACCESS_REFUSED - access to topic '{key}' in exchange 'cfg.x' in vhost '/' refused for user 'bob'"
            ),
        ))
    };
    check(
        &b,
        "write key",
        publish("cfg.x", "nope"),
        topic_refused("nope"),
    )
    .await;
    check(&b, "{username}", publish("cfg.x", "bob.allowed"), Ok(())).await;
    check(
        &b,
        "another user's",
        publish("cfg.x", "alice.allowed"),
        topic_refused("alice.allowed"),
    )
    .await;
    check(
        &b,
        "bind key",
        bind("cfg.q", "cfg.x", "nope.k"),
        topic_refused("nope.k"),
    )
    .await;
    check(
        &b,
        "bind key allowed",
        bind("cfg.q", "cfg.x", "rallowed.k"),
        Ok(()),
    )
    .await;
    let (_, listed) = b.api("GET", "/api/topic-permissions", None).await;
    assert_eq!(
        listed,
        json!([{ "user": "bob", "vhost": "/", "exchange": "cfg.x", "write": "^{username}\\.", "read": "^rallowed" }])
    );
    b.api("DELETE", "/api/topic-permissions/%2F/bob", None)
        .await;
    check(&b, "cleared", publish("cfg.x", "nope"), Ok(())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_open_needs_a_permission_in_the_vhost() {
    let b = TestBroker::start().await;
    with_bob(&b, "").await;
    b.api("PUT", "/api/vhosts/other", None).await;
    let close = RawClient::open_as(b.addr(), BOB.0, BOB.1, "other")
        .await
        .err()
        .expect("refused");
    assert_eq!(close.reply_code, 530);
    assert_eq!(
        close.reply_text,
        "NOT_ALLOWED - access to vhost 'other' refused for user 'bob'"
    );
    for (user, password) in [("bob", "wrong"), ("nobody", "bobpw")] {
        let close = RawClient::open_as(b.addr(), user, password, "/")
            .await
            .err()
            .expect("refused");
        assert_eq!(close.reply_code, 403);
        assert_eq!(
            close.reply_text,
            "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. \
             For details see the broker logfile.",
            "the same whether or not the user exists"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permission_changes_apply_to_open_channels_and_deleting_a_user_closes_them() {
    let b = TestBroker::start().await;
    with_bob(&b, "").await;
    let mut c = RawClient::open_as(b.addr(), BOB.0, BOB.1, "/")
        .await
        .unwrap();
    c.open_channel(1).await;
    c.send(
        1,
        QueueDeclare {
            queue: "cfg.live".into(),
            ..Default::default()
        },
    )
    .await;
    assert!(matches!(
        c.recv_method().await,
        Some((1, Method::QueueDeclareOk(_)))
    ));
    let narrow = json!({ "configure": "^nothing", "write": ".*", "read": ".*" });
    b.api("PUT", "/api/permissions/%2F/bob", Some(narrow)).await;
    c.send(
        1,
        QueueDeclare {
            queue: "cfg.live2".into(),
            ..Default::default()
        },
    )
    .await;
    let close = c.expect_channel_close(1, 403).await;
    assert_eq!(
        close.reply_text,
        "ACCESS_REFUSED - access to queue 'cfg.live2' in vhost '/' refused for user 'bob'"
    );
    let (status, _) = b.api("DELETE", "/api/users/bob", None).await;
    assert_eq!(status, 204);
    let close = c.expect_connection_close(320).await;
    assert_eq!(
        close.reply_text,
        "CONNECTION_FORCED - user 'bob' is deleted"
    );
}
