//! Writes a golden data directory with the broker as it is built now.
//!
//! Run it only when the on-disk format changes on purpose (a new format
//! version): `ANTRE_FIXTURE_OUT=crates/antre-broker/tests/fixtures/vN cargo
//! test -p antre-broker --test golden_fixture -- --ignored generate`. The
//! checked-in fixtures of older versions are never regenerated: they are what
//! older releases left on disk. Everything is deterministic (a manual clock,
//! fixed names) except the salts of the password hashes in `users.json`.

use std::path::PathBuf;
use std::sync::Arc;

use antre_amqp::method::{BasicAck, BasicNack, BasicReject, ExchangeDeclare, QueueDeclare};
use antre_amqp::{BasicProperties, FieldTable, FieldValue};
use antre_broker::access::{Permission, TopicPermission};
use antre_broker::clock::{Clock, ManualClock};
use antre_broker::policy::{Policy, PolicyKind};
use antre_broker::{Broker, StorageOptions, User};
use antre_store::StoreOptions;
use bytes::Bytes;

use super::session::{table, Session};
use super::T0;

fn persistent() -> BasicProperties {
    BasicProperties {
        delivery_mode: Some(2),
        ..Default::default()
    }
}

fn with_id(id: &str) -> BasicProperties {
    BasicProperties {
        message_id: Some(id.into()),
        ..persistent()
    }
}

fn with_headers(headers: FieldTable) -> BasicProperties {
    BasicProperties {
        headers: Some(headers),
        ..persistent()
    }
}

/// A message with every property set and a header of every field type.
fn everything() -> BasicProperties {
    let nested = table([
        ("level", FieldValue::U8(2)),
        (
            "tags",
            FieldValue::Array(vec![FieldValue::string("a"), FieldValue::I32(7)]),
        ),
    ]);
    BasicProperties {
        content_type: Some("application/json".into()),
        content_encoding: Some("gzip".into()),
        headers: Some(table([
            ("bool", FieldValue::Bool(true)),
            ("i8", FieldValue::I8(-8)),
            ("u8", FieldValue::U8(200)),
            ("i16", FieldValue::I16(-1600)),
            ("u16", FieldValue::U16(60000)),
            ("i32", FieldValue::I32(-320_000)),
            ("u32", FieldValue::U32(4_000_000_000)),
            ("i64", FieldValue::I64(-6_400_000_000)),
            ("f32", FieldValue::F32(1.5)),
            ("f64", FieldValue::F64(-2.25)),
            (
                "decimal",
                FieldValue::Decimal {
                    scale: 2,
                    value: 12345,
                },
            ),
            ("string", FieldValue::string("zażółć")),
            (
                "bytes",
                FieldValue::ByteArray(Bytes::from_static(&[0, 1, 254, 255])),
            ),
            ("timestamp", FieldValue::Timestamp(1_700_000_000)),
            ("void", FieldValue::Void),
            (
                "array",
                FieldValue::Array(vec![FieldValue::Bool(false), FieldValue::I64(1)]),
            ),
            ("table", FieldValue::Table(nested)),
        ])),
        delivery_mode: Some(2),
        priority: Some(3),
        correlation_id: Some("corr-1".into()),
        reply_to: Some("replies".into()),
        expiration: Some("86400000".into()),
        message_id: Some("o1".into()),
        timestamp: Some(1_700_000_000),
        kind: Some("order.created".into()),
        user_id: Some("guest".into()),
        app_id: Some("shop".into()),
        cluster_id: Some("eu-1".into()),
    }
}

#[test]
#[ignore = "writes a fixture: run by hand with ANTRE_FIXTURE_OUT set"]
fn generate() {
    let out = PathBuf::from(
        std::env::var_os("ANTRE_FIXTURE_OUT")
            .expect("set ANTRE_FIXTURE_OUT to the new fixture's directory"),
    );
    assert!(
        !out.exists(),
        "{} exists: fixtures are written once, never overwritten",
        out.display()
    );
    let clock = Arc::new(ManualClock::at(T0));
    let options = StorageOptions {
        // Small segments, so a few messages span several and one of them is
        // fully acked.
        store: StoreOptions {
            segment_size: 512,
            ..StoreOptions::default()
        },
        ..StorageOptions::default()
    };
    let broker = Arc::new(
        Broker::open_with_clock(&out, options, Arc::clone(&clock) as Arc<dyn Clock>)
            .expect("open the new data directory"),
    );
    for (name, password, tags) in [
        (
            "ops",
            "s3cret-ops",
            vec!["monitoring".to_owned(), "custom".to_owned()],
        ),
        ("app", "pässwörd 🔑", vec![]),
    ] {
        broker
            .add_user(User {
                name: name.into(),
                password: password.into(),
                tags,
            })
            .unwrap();
    }
    broker.create_vhost("eu/payments", "guest").unwrap();
    broker.create_vhost("empty", "guest").unwrap();
    // Since format 3: permissions and topic permissions.
    broker
        .set_permission(Permission {
            user: "app".into(),
            vhost: "eu/payments".into(),
            configure: "^(ledger|amq\\.gen-)".into(),
            write: "^ledger".into(),
            read: "".into(),
        })
        .unwrap();
    broker
        .set_permission(antre_broker::access::full_permission("ops", "/"))
        .unwrap();
    broker
        .set_topic_permission(TopicPermission {
            user: "app".into(),
            vhost: "eu/payments".into(),
            exchange: "ledger.topic".into(),
            write: "^ledger\\.{username}\\.".into(),
            read: ".*".into(),
        })
        .unwrap();

    let mut s = Session::open(&broker, "/");
    topology(&mut s);
    orders(&mut s);
    payments(&mut s);
    tasks_and_invoices(&mut s);
    delayed_and_deduplicated(&mut s, &clock);

    // Since format 4: a policy and an operator policy (in eu/payments, so
    // the other vhosts' definitions stay those of earlier formats).
    let eu_vhost = broker.vhost("eu/payments").unwrap();
    for (kind, name, body) in [
        (
            PolicyKind::Policy,
            "ledger-limits",
            serde_json::json!({"pattern": "^ledger$", "apply-to": "queues", "priority": 5,
                               "definition": {"max-length": 1000, "queue-mode": "lazy"}}),
        ),
        (
            PolicyKind::Operator,
            "byte-cap",
            serde_json::json!({"pattern": ".*", "definition": {"max-length-bytes": 1_073_741_824}}),
        ),
    ] {
        let policy = Policy::parse(kind, "eu/payments", name, body.as_object().unwrap()).unwrap();
        eu_vhost.set_policy(policy).unwrap();
    }

    let mut eu = Session::open(&broker, "eu/payments");
    eu.exchange("ledger.topic", "topic", FieldTable::new());
    eu.queue(
        "ledger",
        table([("x-queue-type", FieldValue::string("classic"))]),
    );
    eu.bind("ledger.topic", "ledger", "ledger.*.eur", FieldTable::new());
    eu.publish(
        "ledger.topic",
        "ledger.de.eur",
        persistent(),
        b"l1: 100 EUR",
    );
    eu.publish("", "ledger", persistent(), b"l2: 250 EUR");

    s.channel.close();
    eu.channel.close();
    broker.close();
}

/// Durable exchanges of every type, queues with arguments, bindings
/// (exchange-to-exchange too), and transient things that must not persist.
fn topology(s: &mut Session) {
    let none = FieldTable::new;
    for (name, kind) in [
        ("shop.direct", "direct"),
        ("shop.fanout", "fanout"),
        ("shop.topic", "topic"),
        ("shop.headers", "headers"),
        ("payments.dlx", "direct"),
    ] {
        s.exchange(name, kind, none());
    }
    s.ok(ExchangeDeclare {
        exchange: "shop.internal".into(),
        kind: "topic".into(),
        durable: true,
        internal: true,
        ..Default::default()
    });
    s.ok(ExchangeDeclare {
        exchange: "shop.auto".into(),
        kind: "direct".into(),
        durable: true,
        auto_delete: true,
        arguments: table([("alternate-exchange", FieldValue::string("shop.fanout"))]),
        ..Default::default()
    });
    s.exchange(
        "reminders.delayed",
        "x-delayed-message",
        table([("x-delayed-type", FieldValue::string("direct"))]),
    );
    s.exchange(
        "payments.dedup",
        "x-message-deduplication",
        table([
            ("x-cache-size", FieldValue::I32(100)),
            ("x-cache-ttl", FieldValue::I32(600_000)),
        ]),
    );
    s.ok(ExchangeDeclare {
        exchange: "transient.fanout".into(),
        kind: "fanout".into(),
        ..Default::default()
    });

    s.queue("orders", none());
    s.queue("audit", none());
    s.queue(
        "payments",
        table([
            ("x-dead-letter-exchange", FieldValue::string("payments.dlx")),
            ("x-dead-letter-routing-key", FieldValue::string("dead")),
            ("x-message-ttl", FieldValue::I32(86_400_000)),
            ("x-max-length", FieldValue::I32(1000)),
            ("x-overflow", FieldValue::string("reject-publish")),
            ("x-delivery-limit", FieldValue::I32(5)),
        ]),
    );
    s.queue("payments.dead", none());
    s.queue("tasks", table([("x-max-priority", FieldValue::U8(5))]));
    s.queue(
        "invoices",
        table([
            ("x-message-deduplication", FieldValue::Bool(true)),
            ("x-max-length-bytes", FieldValue::I64(1_048_576)),
        ]),
    );
    s.queue("reminders", none());
    s.queue("deduped", none());
    s.queue(
        "standby",
        table([
            ("x-single-active-consumer", FieldValue::Bool(true)),
            ("x-expires", FieldValue::I32(3_600_000)),
            ("x-consumer-timeout", FieldValue::I32(60_000)),
        ]),
    );
    s.ok(QueueDeclare {
        queue: "scratch".into(),
        ..Default::default()
    });

    s.bind("shop.direct", "orders", "orders", none());
    s.bind("shop.direct", "orders", "orders.priority", none());
    s.bind("shop.topic", "orders", "order.*.created", none());
    s.bind_exchange("shop.topic", "shop.fanout", "order.#");
    s.bind_exchange("shop.topic", "shop.internal", "#.audit");
    s.bind("shop.fanout", "audit", "", none());
    s.bind("shop.internal", "audit", "#", none());
    s.bind("shop.auto", "audit", "auto", none());
    s.bind(
        "shop.headers",
        "tasks",
        "",
        table([
            ("x-match", FieldValue::string("any")),
            ("kind", FieldValue::string("task")),
            ("urgent", FieldValue::Bool(true)),
        ]),
    );
    s.bind("payments.dlx", "payments.dead", "dead", none());
    s.bind("reminders.delayed", "reminders", "remind", none());
    s.bind("payments.dedup", "deduped", "", none());
    s.bind("transient.fanout", "audit", "", none());
}

/// Messages of varied properties and sizes across several small segments,
/// some acked; the last segment ends up with every record acked.
fn orders(s: &mut Session) {
    s.publish("shop.direct", "orders", everything(), b"{\"order\": 1}");
    s.publish("", "orders", persistent(), b"o2 acked");
    // Also reaches audit through shop.topic -> shop.fanout.
    s.publish(
        "shop.topic",
        "order.eu.created",
        with_id("o3"),
        b"o3 via topic",
    );
    let transient = BasicProperties {
        delivery_mode: Some(1),
        ..Default::default()
    };
    s.publish(
        "",
        "orders",
        transient,
        b"o4 transient: gone after a restart",
    );
    s.publish("", "orders", persistent(), b"o5 acked");
    s.publish("", "orders", persistent(), b"");
    s.publish("shop.direct", "orders.priority", persistent(), &[b'x'; 600]);
    s.publish("", "orders", persistent(), &[b'8'; 200]);
    s.publish("", "orders", persistent(), &[b'9'; 200]);
    // Take everything, ack o2, o5, o8 and o9, and let closing the channel
    // put the rest back.
    let got = s.drain_unacked("orders");
    assert_eq!(got.len(), 9);
    for tag in [2, 5, 8, 9] {
        s.ok(BasicAck {
            delivery_tag: tag,
            multiple: false,
        });
    }
    s.requeue_all();
    // The topic exchange's routes into audit, one through an internal exchange.
    s.publish(
        "shop.topic",
        "order.us.audit",
        persistent(),
        b"a1 via internal",
    );
}

/// A dead-lettered message (with its x-death headers) and a message with
/// its own expiration.
fn payments(s: &mut Session) {
    s.publish("", "payments", with_id("pay-0"), b"{\"amount\": 5}");
    let got = s.get("payments", false).expect("pay-0");
    s.ok(BasicReject {
        delivery_tag: got.method.delivery_tag,
        requeue: false,
    });
    s.publish("", "payments", with_id("pay-1"), b"{\"amount\": 1000}");
    let expiring = BasicProperties {
        expiration: Some("5000".into()),
        ..with_id("pay-2")
    };
    s.publish("", "payments", expiring, b"{\"amount\": 20}");
    s.publish("", "payments", with_id("pay-3"), b"{\"amount\": 3}");
    // A redelivery of pay-1 (requeued, not acked).
    let got = s.get("payments", false).expect("pay-1");
    s.ok(BasicNack {
        delivery_tag: got.method.delivery_tag,
        multiple: false,
        requeue: true,
    });
}

fn tasks_and_invoices(s: &mut Session) {
    let task = |priority: Option<u8>| BasicProperties {
        priority,
        headers: Some(table([("kind", FieldValue::string("task"))])),
        ..persistent()
    };
    s.publish("shop.headers", "", task(Some(1)), b"t-low");
    s.publish("shop.headers", "", task(Some(9)), b"t-high");
    s.publish("shop.headers", "", task(None), b"t-none");
    s.publish("", "tasks", task(Some(3)), b"t-mid");

    s.publish("", "invoices", with_id("inv-1"), b"invoice 1");
    let keyed = with_headers(table([(
        "x-deduplication-header",
        FieldValue::string("inv-2"),
    )]));
    s.publish("", "invoices", keyed, b"invoice 2");
    s.publish(
        "",
        "invoices",
        with_id("inv-1"),
        b"invoice 1 again: refused",
    );
    s.publish("", "scratch", persistent(), b"in a transient queue: gone");
}

/// Held messages of a delayed exchange (one released before the end) and
/// the window of a deduplicating exchange.
fn delayed_and_deduplicated(s: &mut Session, clock: &ManualClock) {
    let delayed = |ms: i64, persistent: bool| BasicProperties {
        headers: Some(table([("x-delay", FieldValue::I64(ms))])),
        delivery_mode: Some(if persistent { 2 } else { 1 }),
        ..Default::default()
    };
    s.publish(
        "reminders.delayed",
        "remind",
        delayed(1000, true),
        b"r1 after 1 s",
    );
    s.publish(
        "reminders.delayed",
        "remind",
        delayed(5000, true),
        b"r2 after 5 s",
    );
    s.publish(
        "reminders.delayed",
        "remind",
        delayed(60_000, false),
        b"r3 after 1 min",
    );

    let key = |k: &str| with_headers(table([("x-deduplication-header", FieldValue::string(k))]));
    s.publish("payments.dedup", "", key("pay-1"), b"d1");
    s.publish(
        "payments.dedup",
        "",
        with_id("pay-2"),
        b"d2 keyed by message id",
    );
    let short = with_headers(table([
        ("x-deduplication-header", FieldValue::string("pay-3")),
        ("x-cache-ttl", FieldValue::I32(1000)),
    ]));
    s.publish("payments.dedup", "", short, b"d3 remembered for 1 s");
    s.publish("payments.dedup", "", key("pay-1"), b"d1 again: dropped");
    assert_eq!(s.ready("deduped"), 3);

    clock.advance(1000);
    // The broker's timer would do this: r1 comes due.
    s.broker.tick();
    assert_eq!(s.ready("reminders"), 1);
}
