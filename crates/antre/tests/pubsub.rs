//! Publish/subscribe with lapin: fan-out, topic and headers routing,
//! exchange-to-exchange bindings and mandatory returns.

use crate::common;

use common::*;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, ExchangeKind};

async fn exchange(ch: &lapin::Channel, name: &str, kind: ExchangeKind) {
    ch.exchange_declare(
        name,
        kind,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("exchange.declare");
}

async fn bound_queue(ch: &lapin::Channel, exchange: &str, key: &str, args: FieldTable) -> String {
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
        .unwrap()
        .name()
        .to_string();
    ch.queue_bind(&q, exchange, key, QueueBindOptions::default(), args)
        .await
        .expect("queue.bind");
    q
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_delivers_a_copy_to_every_subscriber() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    exchange(&ch, "flight.delays", ExchangeKind::Fanout).await;
    let teams = [
        "ground-crew",
        "baggage",
        "cabin-crew",
        "pilots",
        "airport-ops",
    ];
    let mut consumers = Vec::new();
    for team in teams {
        let sub = conn.create_channel().await.unwrap();
        let q = bound_queue(&sub, "flight.delays", "", FieldTable::default()).await;
        let c = sub
            .basic_consume(
                &q,
                team,
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        consumers.push((sub, c));
    }
    publish_confirmed(&ch, "flight.delays", "", b"GA-404 delayed 45 min").await;
    for (_, c) in &mut consumers {
        let got = take(c, 1).await;
        assert_eq!(&got[0].data[..], b"GA-404 delayed 45 min");
        assert_eq!(got[0].exchange.as_str(), "flight.delays");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_routing_follows_patterns() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    exchange(&ch, "shop", ExchangeKind::Topic).await;
    let email = bound_queue(&ch, "shop", "order.*", FieldTable::default()).await;
    let audit = bound_queue(&ch, "shop", "#", FieldTable::default()).await;
    let users = bound_queue(&ch, "shop", "user.updated", FieldTable::default()).await;
    let deep = bound_queue(&ch, "shop", "*.*.shipped.#", FieldTable::default()).await;
    for key in [
        "order.created",
        "order.paid",
        "user.updated",
        "order.eu.shipped",
        "stock.low",
    ] {
        publish_confirmed(&ch, "shop", key, key.as_bytes()).await;
    }
    assert_eq!(ready_count(&ch, &email).await, 2);
    assert_eq!(ready_count(&ch, &audit).await, 5);
    assert_eq!(ready_count(&ch, &users).await, 1);
    assert_eq!(ready_count(&ch, &deep).await, 1);
    let m = ch
        .basic_get(&users, BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.delivery.routing_key.as_str(), "user.updated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_routing_with_all_and_any() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    exchange(&ch, "docs", ExchangeKind::Headers).await;
    let mut all = FieldTable::default();
    all.insert("x-match".into(), AMQPValue::LongString("all".into()));
    all.insert("format".into(), AMQPValue::LongString("pdf".into()));
    all.insert("type".into(), AMQPValue::LongString("report".into()));
    let mut any = all.clone();
    any.insert("x-match".into(), AMQPValue::LongString("any".into()));
    let q_all = bound_queue(&ch, "docs", "", all).await;
    let q_any = bound_queue(&ch, "docs", "", any).await;

    let publish = |headers: &[(&str, &str)]| {
        let mut t = FieldTable::default();
        for (k, v) in headers {
            t.insert(ShortString::from(*k), AMQPValue::LongString((*v).into()));
        }
        BasicProperties::default().with_headers(t)
    };
    for props in [
        publish(&[("format", "pdf"), ("type", "report")]),
        publish(&[("format", "pdf"), ("type", "log")]),
        publish(&[("format", "zip")]),
    ] {
        let c = ch
            .basic_publish("docs", "", BasicPublishOptions::default(), b"d", props)
            .await
            .unwrap();
        within("confirm", c).await.unwrap();
    }
    assert_eq!(ready_count(&ch, &q_all).await, 1);
    assert_eq!(ready_count(&ch, &q_any).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_to_exchange_bindings_route_once_per_queue() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    exchange(&ch, "events", ExchangeKind::Topic).await;
    exchange(&ch, "orders", ExchangeKind::Fanout).await;
    ch.exchange_bind(
        "orders",
        "events",
        "order.#",
        ExchangeBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    // A cycle must not loop forever.
    ch.exchange_bind(
        "events",
        "orders",
        "",
        ExchangeBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let q = bound_queue(&ch, "orders", "", FieldTable::default()).await;
    ch.queue_bind(
        &q,
        "events",
        "#",
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    publish_confirmed(&ch, "events", "order.created", b"o").await;
    publish_confirmed(&ch, "events", "user.created", b"u").await;
    assert_eq!(
        ready_count(&ch, &q).await,
        2,
        "one copy each, though two paths lead to q"
    );
    ch.exchange_unbind(
        "orders",
        "events",
        "order.#",
        ExchangeUnbindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unroutable_mandatory_messages_are_returned() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    exchange(&ch, "nowhere", ExchangeKind::Direct).await;
    let confirm = ch
        .basic_publish(
            "nowhere",
            "missing",
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            b"lost?",
            BasicProperties::default(),
        )
        .await
        .unwrap();
    let confirmation = within("confirm", confirm).await.unwrap();
    assert!(
        confirmation.is_ack(),
        "unroutable messages are still confirmed"
    );
    let returned = confirmation
        .take_message()
        .expect("basic.return before the ack");
    assert_eq!(returned.reply_code, 312);
    assert_eq!(returned.reply_text.as_str(), "NO_ROUTE");
    assert_eq!(&returned.data[..], b"lost?");

    // Without mandatory, it is dropped silently.
    let confirm = ch
        .basic_publish(
            "nowhere",
            "missing",
            BasicPublishOptions::default(),
            b"x",
            BasicProperties::default(),
        )
        .await
        .unwrap();
    assert!(within("confirm", confirm)
        .await
        .unwrap()
        .take_message()
        .is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predeclared_exchanges_exist() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = conn.create_channel().await.unwrap();
    for (name, kind) in [
        ("amq.direct", ExchangeKind::Direct),
        ("amq.fanout", ExchangeKind::Fanout),
        ("amq.topic", ExchangeKind::Topic),
        ("amq.headers", ExchangeKind::Headers),
        ("amq.match", ExchangeKind::Headers),
    ] {
        ch.exchange_declare(
            name,
            kind,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

/// An exchange's `alternate-exchange` takes what none of its bindings
/// matched: a mandatory publish of such a message is not returned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmatched_messages_go_to_the_alternate_exchange() {
    let broker = TestBroker::start().await;
    let conn = broker.lapin().await;
    let ch = confirm_channel(&conn).await;
    exchange(&ch, "orders.unrouted", ExchangeKind::Fanout).await;
    let mut args = FieldTable::default();
    args.insert(
        "alternate-exchange".into(),
        AMQPValue::LongString("orders.unrouted".into()),
    );
    ch.exchange_declare(
        "orders",
        ExchangeKind::Direct,
        ExchangeDeclareOptions::default(),
        args,
    )
    .await
    .expect("exchange.declare with an alternate");
    let created = bound_queue(&ch, "orders", "created", FieldTable::default()).await;
    let unrouted = bound_queue(&ch, "orders.unrouted", "", FieldTable::default()).await;
    for key in ["created", "cancelled"] {
        let confirm = ch
            .basic_publish(
                "orders",
                key,
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                key.as_bytes(),
                BasicProperties::default(),
            )
            .await
            .unwrap();
        let confirm = within("confirm", confirm).await.unwrap();
        assert!(confirm.take_message().is_none(), "{key} was not returned");
    }
    let get = |q: String| {
        let ch = ch.clone();
        async move {
            let m = ch
                .basic_get(&q, BasicGetOptions { no_ack: true })
                .await
                .unwrap()
                .expect("a message");
            String::from_utf8_lossy(&m.delivery.data).into_owned()
        }
    };
    assert_eq!(get(created).await, "created");
    assert_eq!(get(unrouted).await, "cancelled");
}
