//! Golden fixtures: data directories written by earlier versions of antre,
//! checked in under `tests/fixtures/`, which today's code must recover
//! exactly. A change to the on-disk format that would silently break them
//! fails here; a deliberate one bumps the data format version and ships a
//! migration (docs/store.md, "Format versions").
//!
//! The expected contents are spelled out here, not derived from the
//! generator, so that a change to either the format or recovery shows up as
//! a difference. `tests/fixtures/README.md` says what each fixture holds.

mod generate;
mod session;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use antre_amqp::method::BasicPublish;
use antre_amqp::{BasicProperties, FieldTable, FieldValue};
use antre_broker::clock::{Clock, ManualClock};
use antre_broker::{Broker, BrokerError, LoginError, StorageOptions};
use bytes::Bytes;
use serde_json::json;

use session::{table, Got, Session};

/// The manual clock's time when the fixtures were written (2023-11-14).
const T0: u64 = 1_700_000_000_000;
/// When the generator closed the broker: one delayed message had come due.
const V1_CLOSED_AT: u64 = T0 + 1000;

/// The fixtures: each was written by the generator's one scenario, at its
/// data format version, so each must recover the same contents.
const FIXTURES: [&str; 4] = ["v1", "v2", "v3", "v4"];

/// A fixture copied to a temporary directory (recovery repairs and deletes
/// files, and the checked-in copy must stay as it is), opened on a manual
/// clock with production storage options.
struct Opened {
    broker: Arc<Broker>,
    clock: Arc<ManualClock>,
    dir: tempfile::TempDir,
}

fn fixture(version: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(version)
}

/// Copies a directory tree (std has no recursive copy, and this one helper
/// does not justify a dependency).
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

fn open(version: &str, at: u64) -> Opened {
    let dir = tempfile::tempdir().unwrap();
    copy_tree(&fixture(version), dir.path());
    let clock = Arc::new(ManualClock::at(at));
    let broker = Broker::open_with_clock(
        dir.path(),
        StorageOptions::default(),
        Arc::clone(&clock) as Arc<dyn Clock>,
    )
    .unwrap_or_else(|e| panic!("fixture {version} does not open: {e}"));
    Opened {
        broker: Arc::new(broker),
        clock,
        dir,
    }
}

impl Opened {
    fn session(&self, vhost: &str) -> Session {
        Session::open(&self.broker, vhost)
    }

    /// Moves the clock to `at` and lets the broker's timer run.
    fn tick_at(&self, at: u64) {
        let now = self.clock.now_ms();
        assert!(at >= now, "the clock only moves forward");
        self.clock.advance(at - now);
        self.broker.tick();
    }
}

/// What a recovered message must look like.
#[derive(Debug, PartialEq)]
struct Msg {
    exchange: String,
    routing_key: String,
    redelivered: bool,
    properties: BasicProperties,
    body: Bytes,
    published_at: u64,
}

fn msg(exchange: &str, routing_key: &str, properties: BasicProperties, body: &[u8]) -> Msg {
    Msg {
        exchange: exchange.into(),
        routing_key: routing_key.into(),
        // Everything recovered from disk may have been delivered before.
        redelivered: true,
        properties,
        body: Bytes::copy_from_slice(body),
        published_at: T0,
    }
}

fn got(g: &Got) -> Msg {
    Msg {
        exchange: g.method.exchange.clone(),
        routing_key: g.method.routing_key.clone(),
        redelivered: g.method.redelivered,
        properties: g.message.properties.clone(),
        body: g.message.body.clone(),
        published_at: g.message.published_at,
    }
}

fn persistent() -> BasicProperties {
    BasicProperties {
        delivery_mode: Some(2),
        ..Default::default()
    }
}

fn id(message_id: &str) -> BasicProperties {
    BasicProperties {
        message_id: Some(message_id.into()),
        ..persistent()
    }
}

fn headers(h: FieldTable) -> BasicProperties {
    BasicProperties {
        headers: Some(h),
        ..persistent()
    }
}

/// The first message of `orders`: every property, every field type.
fn order_one() -> BasicProperties {
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
            ("string", FieldValue::LongString(Bytes::from("zażółć"))),
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
            (
                "table",
                FieldValue::Table(table([
                    ("level", FieldValue::U8(2)),
                    (
                        "tags",
                        FieldValue::Array(vec![
                            FieldValue::LongString(Bytes::from("a")),
                            FieldValue::I32(7),
                        ]),
                    ),
                ])),
            ),
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

fn string(s: &str) -> FieldValue {
    FieldValue::LongString(Bytes::copy_from_slice(s.as_bytes()))
}

/// The dead-letter headers of pay-0, rejected from `payments` at T0.
fn rejected_pay_zero() -> BasicProperties {
    let death = table([
        ("count", FieldValue::I64(1)),
        ("reason", string("rejected")),
        ("queue", string("payments")),
        ("time", FieldValue::Timestamp(T0 / 1000)),
        ("exchange", string("")),
        ("routing-keys", FieldValue::Array(vec![string("payments")])),
    ]);
    headers(table([
        ("x-death", FieldValue::Array(vec![FieldValue::Table(death)])),
        ("x-first-death-reason", string("rejected")),
        ("x-first-death-queue", string("payments")),
        ("x-first-death-exchange", string("")),
    ]))
    .with_id("pay-0")
}

trait WithId {
    fn with_id(self, id: &str) -> Self;
}

impl WithId for BasicProperties {
    fn with_id(self, id: &str) -> Self {
        BasicProperties {
            message_id: Some(id.into()),
            ..self
        }
    }
}

fn task(priority: Option<u8>) -> BasicProperties {
    BasicProperties {
        priority,
        ..headers(table([("kind", string("task"))]))
    }
}

fn delay(ms: i64, delivery_mode: u8) -> BasicProperties {
    BasicProperties {
        headers: Some(table([("x-delay", FieldValue::I64(ms))])),
        delivery_mode: Some(delivery_mode),
        ..Default::default()
    }
}

fn dedup_key(key: &str) -> BasicProperties {
    headers(table([("x-deduplication-header", string(key))]))
}

/// What every queue of fixture v1 holds, in delivery order: the persistent
/// messages nobody acked. Missing on purpose: o2, o5, o8 and o9 (acked; o8
/// and o9 filled the last segment of `orders`), o4 (transient), the second
/// inv-1 (refused by deduplication), the queue `scratch` (not durable) and
/// the messages still held by the delayed exchange.
fn v1_queues() -> Vec<(&'static str, &'static str, Vec<Msg>)> {
    vec![
        (
            "/",
            "orders",
            vec![
                msg("shop.direct", "orders", order_one(), b"{\"order\": 1}"),
                msg("shop.topic", "order.eu.created", id("o3"), b"o3 via topic"),
                msg("", "orders", persistent(), b""),
                msg("shop.direct", "orders.priority", persistent(), &[b'x'; 600]),
            ],
        ),
        (
            "/",
            "audit",
            vec![
                msg("shop.topic", "order.eu.created", id("o3"), b"o3 via topic"),
                msg(
                    "shop.topic",
                    "order.us.audit",
                    persistent(),
                    b"a1 via internal",
                ),
            ],
        ),
        (
            "/",
            "payments",
            vec![
                msg("", "payments", id("pay-1"), b"{\"amount\": 1000}"),
                msg(
                    "",
                    "payments",
                    BasicProperties {
                        expiration: Some("5000".into()),
                        ..id("pay-2")
                    },
                    b"{\"amount\": 20}",
                ),
                msg("", "payments", id("pay-3"), b"{\"amount\": 3}"),
            ],
        ),
        (
            "/",
            "payments.dead",
            vec![msg(
                "payments.dlx",
                "dead",
                rejected_pay_zero(),
                b"{\"amount\": 5}",
            )],
        ),
        (
            "/",
            "tasks",
            vec![
                msg("shop.headers", "", task(Some(9)), b"t-high"),
                msg("", "tasks", task(Some(3)), b"t-mid"),
                msg("shop.headers", "", task(Some(1)), b"t-low"),
                msg("shop.headers", "", task(None), b"t-none"),
            ],
        ),
        (
            "/",
            "invoices",
            vec![
                msg("", "invoices", id("inv-1"), b"invoice 1"),
                msg("", "invoices", dedup_key("inv-2"), b"invoice 2"),
            ],
        ),
        (
            "/",
            "reminders",
            vec![Msg {
                published_at: V1_CLOSED_AT,
                ..msg(
                    "reminders.delayed",
                    "remind",
                    delay(1000, 2),
                    b"r1 after 1 s",
                )
            }],
        ),
        (
            "/",
            "deduped",
            vec![
                msg("payments.dedup", "", dedup_key("pay-1"), b"d1"),
                msg("payments.dedup", "", id("pay-2"), b"d2 keyed by message id"),
                msg(
                    "payments.dedup",
                    "",
                    headers(table([
                        ("x-deduplication-header", string("pay-3")),
                        ("x-cache-ttl", FieldValue::I32(1000)),
                    ])),
                    b"d3 remembered for 1 s",
                ),
            ],
        ),
        ("/", "standby", vec![]),
        (
            "eu/payments",
            "ledger",
            // Published after the clock moved on.
            vec![
                Msg {
                    published_at: V1_CLOSED_AT,
                    ..msg(
                        "ledger.topic",
                        "ledger.de.eur",
                        persistent(),
                        b"l1: 100 EUR",
                    )
                },
                Msg {
                    published_at: V1_CLOSED_AT,
                    ..msg("", "ledger", persistent(), b"l2: 250 EUR")
                },
            ],
        ),
    ]
}

#[test]
fn fixture_messages_are_recovered_in_order_with_their_properties() {
    for version in FIXTURES {
        let f = open(version, V1_CLOSED_AT);
        let expected = v1_queues();
        let mut names: Vec<(String, String)> = f
            .broker
            .vhosts()
            .iter()
            .flat_map(|v| {
                v.queues()
                    .into_iter()
                    .map(|q| (v.name.clone(), q.name.clone()))
            })
            .collect();
        names.sort();
        let mut want: Vec<(String, String)> = expected
            .iter()
            .map(|(v, q, _)| (v.to_string(), q.to_string()))
            .collect();
        want.sort();
        assert_eq!(names, want, "the recovered queues");
        for (vhost, queue, messages) in expected {
            let mut s = f.session(vhost);
            let counts = s.vhost.queue(queue, 1).unwrap().counts();
            assert_eq!(
                (counts.ready, counts.unacked),
                (messages.len() as u32, 0),
                "counts of {queue}"
            );
            let drained = s.drain(queue);
            let remaining: Vec<u32> = drained.iter().map(|g| g.method.message_count).collect();
            let expected_remaining: Vec<u32> = (0..messages.len() as u32).rev().collect();
            assert_eq!(
                remaining, expected_remaining,
                "message_count in get-ok of {queue}"
            );
            let recovered: Vec<Msg> = drained.iter().map(got).collect();
            assert_eq!(recovered, messages, "messages of {vhost} {queue}");
        }
    }
}

#[test]
fn fixture_store_files_are_cleaned_up_as_recovery_promises() {
    for version in FIXTURES {
        let f = open(version, V1_CLOSED_AT);
        // dir_name("orders") in vhost dir_name("/"): the naming is part of the format.
        let orders = f.dir.path().join(
            "vhosts/8a5edab282632443219e051e4ade2d1d/queues/1c168adb00d208e42f93314529f1fa9c",
        );
        let mut files: Vec<String> = std::fs::read_dir(&orders)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        // Segment 4 held only acked records: recovery deleted it and its acks;
        // new writes go to segment 5.
        assert_eq!(
            files,
            [
                "acks.0000000001",
                "acks.0000000002",
                "msgs.0000000001",
                "msgs.0000000002",
                "msgs.0000000003"
            ]
        );
        assert!(
            !f.dir
                .path()
                .join("vhosts/8a5edab282632443219e051e4ade2d1d/queues")
                .join(dir_of("scratch"))
                .exists(),
            "a transient queue has no store"
        );
    }
}

/// The directory name of a queue or vhost (the first 16 bytes of its
/// SHA-256, as hex), written out for the names the tests look at.
fn dir_of(name: &str) -> &'static str {
    match name {
        "scratch" => "5a9cb6b54ea56d52a69891af8c21afb7",
        other => panic!("no directory name written down for {other}"),
    }
}

#[test]
fn fixture_definitions_are_recovered() {
    for version in FIXTURES {
        let f = open(version, V1_CLOSED_AT);
        let mut vhosts: Vec<String> = f.broker.vhosts().iter().map(|v| v.name.clone()).collect();
        vhosts.sort();
        assert_eq!(vhosts, ["/", "empty", "eu/payments"]);
        let defs =
            |name: &str| serde_json::to_value(f.broker.vhost(name).unwrap().definitions()).unwrap();
        assert_eq!(
            defs("empty"),
            json!({"name": "empty", "exchanges": [], "queues": [], "bindings": []})
        );
        let mut eu = defs("eu/payments");
        // Since v4 it has policies too (v4_keeps_policies_and_applies_them).
        if let Some(defs) = eu.as_object_mut() {
            defs.remove("policies");
            defs.remove("operator_policies");
        }
        assert_eq!(eu, v1_eu_definitions());
        assert_eq!(defs("/"), v1_root_definitions());
    }
}

fn exchange(name: &str, kind: &str, arguments: serde_json::Value) -> serde_json::Value {
    json!({"name": name, "vhost": "/", "type": kind, "durable": true,
           "auto_delete": false, "internal": false, "arguments": arguments})
}

fn queue(name: &str, arguments: serde_json::Value) -> serde_json::Value {
    json!({"name": name, "vhost": "/", "durable": true, "auto_delete": false,
           "arguments": arguments})
}

fn binding(source: &str, destination: &str, kind: &str, key: &str) -> serde_json::Value {
    json!({"source": source, "vhost": "/", "destination": destination,
           "destination_type": kind, "routing_key": key, "arguments": {}})
}

fn v1_root_definitions() -> serde_json::Value {
    let mut headers_binding = binding("shop.headers", "tasks", "queue", "");
    headers_binding["arguments"] = json!({"x-match": "any", "kind": "task", "urgent": true});
    let mut internal = exchange("shop.internal", "topic", json!({}));
    internal["internal"] = json!(true);
    let mut auto = exchange(
        "shop.auto",
        "direct",
        json!({"alternate-exchange": "shop.fanout"}),
    );
    auto["auto_delete"] = json!(true);
    json!({
        "name": "/",
        "exchanges": [
            exchange("payments.dedup", "x-message-deduplication",
                     json!({"x-cache-size": 100, "x-cache-ttl": 600000})),
            exchange("payments.dlx", "direct", json!({})),
            exchange("reminders.delayed", "x-delayed-message",
                     json!({"x-delayed-type": "direct"})),
            auto,
            exchange("shop.direct", "direct", json!({})),
            exchange("shop.fanout", "fanout", json!({})),
            exchange("shop.headers", "headers", json!({})),
            internal,
            exchange("shop.topic", "topic", json!({})),
        ],
        "queues": [
            queue("audit", json!({})),
            queue("deduped", json!({})),
            queue("invoices", json!({"x-max-length-bytes": 1048576,
                                     "x-message-deduplication": true})),
            queue("orders", json!({})),
            queue("payments", json!({
                "x-dead-letter-exchange": "payments.dlx",
                "x-dead-letter-routing-key": "dead",
                "x-delivery-limit": 5,
                "x-max-length": 1000,
                "x-message-ttl": 86400000,
                "x-overflow": "reject-publish",
            })),
            queue("payments.dead", json!({})),
            queue("reminders", json!({})),
            queue("standby", json!({"x-consumer-timeout": 60000, "x-expires": 3600000,
                                    "x-single-active-consumer": true})),
            queue("tasks", json!({"x-max-priority": 5})),
        ],
        "bindings": [
            binding("payments.dedup", "deduped", "queue", ""),
            binding("payments.dlx", "payments.dead", "queue", "dead"),
            binding("reminders.delayed", "reminders", "queue", "remind"),
            binding("shop.auto", "audit", "queue", "auto"),
            binding("shop.direct", "orders", "queue", "orders"),
            binding("shop.direct", "orders", "queue", "orders.priority"),
            binding("shop.fanout", "audit", "queue", ""),
            headers_binding,
            binding("shop.internal", "audit", "queue", "#"),
            binding("shop.topic", "orders", "queue", "order.*.created"),
            binding("shop.topic", "shop.fanout", "exchange", "order.#"),
            binding("shop.topic", "shop.internal", "exchange", "#.audit"),
        ],
    })
}

fn v1_eu_definitions() -> serde_json::Value {
    json!({
        "name": "eu/payments",
        "exchanges": [{"name": "ledger.topic", "vhost": "eu/payments", "type": "topic",
                       "durable": true, "auto_delete": false, "internal": false,
                       "arguments": {}}],
        "queues": [{"name": "ledger", "vhost": "eu/payments", "durable": true,
                    "auto_delete": false, "arguments": {"x-queue-type": "classic"}}],
        "bindings": [{"source": "ledger.topic", "vhost": "eu/payments",
                      "destination": "ledger", "destination_type": "queue",
                      "routing_key": "ledger.*.eur", "arguments": {}}],
    })
}

/// The recovered bindings route: each publish lands exactly where the
/// topology says.
#[test]
fn fixture_bindings_route_after_recovery() {
    for version in FIXTURES {
        let f = open(version, V1_CLOSED_AT);
        let mut s = f.session("/");
        let ready = |s: &Session| ["orders", "audit", "tasks"].map(|q| s.ready(q));
        let [orders, audit, tasks] = ready(&s);
        let mut publish = |exchange: &str, key: &str, props, added: [u32; 3]| {
            s.publish(exchange, key, props, b"probe");
            let want = [orders + added[0], audit + added[1], tasks + added[2]];
            assert_eq!(
                ready(&s),
                want,
                "after a publish to '{exchange}' with '{key}'"
            );
        };
        // orders through the topic binding, audit through shop.topic -> shop.fanout.
        publish("shop.topic", "order.us.created", persistent(), [1, 1, 0]);
        // audit through shop.fanout and shop.internal: one copy all the same.
        publish("shop.topic", "order.x.audit", persistent(), [1, 2, 0]);
        publish("shop.direct", "orders.priority", persistent(), [2, 2, 0]);
        publish("shop.auto", "auto", persistent(), [2, 3, 0]);
        let urgent = headers(table([("urgent", FieldValue::Bool(true))]));
        publish("shop.headers", "", urgent, [2, 3, 1]);
        let neither = headers(table([("kind", string("chore"))]));
        publish("shop.headers", "", neither, [2, 3, 1]);
        let refused = s
            .channel
            .publish(
                BasicPublish {
                    exchange: "shop.internal".into(),
                    ..Default::default()
                },
                antre_amqp::ContentHeader {
                    class_id: antre_amqp::CLASS_BASIC,
                    body_size: 0,
                    properties: persistent(),
                },
                Bytes::new(),
                &mut s.out,
            )
            .unwrap_err();
        assert!(
            matches!(refused, BrokerError::AccessRefused(_)),
            "{refused}"
        );
        let mut eu = f.session("eu/payments");
        eu.publish("ledger.topic", "ledger.fr.eur", persistent(), b"l3");
        eu.publish("ledger.topic", "ledger.fr.usd", persistent(), b"not routed");
        assert_eq!(eu.ready("ledger"), 3);
    }
}

#[test]
fn fixture_users_keep_their_passwords() {
    for version in FIXTURES {
        let f = open(version, V1_CLOSED_AT);
        let names: Vec<String> = f.broker.users().into_iter().map(|u| u.name).collect();
        assert_eq!(names, ["app", "guest", "ops"]);
        assert_eq!(f.broker.authenticate("ops", "s3cret-ops", false), Ok(()));
        assert_eq!(f.broker.authenticate("app", "pässwörd 🔑", false), Ok(()));
        assert_eq!(f.broker.authenticate("guest", "guest", true), Ok(()));
        assert_eq!(
            f.broker.authenticate("guest", "guest", false),
            Err(LoginError::LoopbackOnly("guest".into()))
        );
        assert_eq!(
            f.broker.authenticate("ops", "s3cret-op", false),
            Err(LoginError::InvalidCredentials("ops".into()))
        );
        if version == "v3" || version == "v4" {
            continue;
        }
        // Before format 3 every user could do everything: the migration
        // keeps that, and users.json becomes access.json.
        for name in ["app", "guest", "ops"] {
            let user = f.broker.access().user(name).unwrap();
            assert_eq!(user.tags, ["administrator"], "{version} {name}");
            for vhost in ["/", "eu/payments", "empty"] {
                let access = f.broker.access().vhost_access(name, vhost);
                assert!(access, "{version} {name} {vhost}");
            }
        }
        assert!(!f.dir.path().join("users.json").exists(), "{version}");
        assert!(f.dir.path().join("access.json").exists(), "{version}");
    }
}

#[test]
fn fixture_deduplication_windows_survive() {
    for version in FIXTURES {
        let f = open(version, V1_CLOSED_AT);
        let mut s = f.session("/");
        // The exchange's log: pay-1 and pay-2 are remembered for 10 minutes,
        // pay-3 only for 1 s, which has passed.
        s.publish("payments.dedup", "", dedup_key("pay-1"), b"dup");
        s.publish("payments.dedup", "", id("pay-2"), b"dup");
        assert_eq!(s.ready("deduped"), 3, "pay-1 and pay-2 are still known");
        s.publish("payments.dedup", "", dedup_key("pay-3"), b"pay-3 again");
        s.publish("payments.dedup", "", dedup_key("pay-4"), b"new");
        assert_eq!(s.ready("deduped"), 5);
        f.clock.advance(T0 + 600_000 - V1_CLOSED_AT);
        s.publish(
            "payments.dedup",
            "",
            dedup_key("pay-1"),
            b"pay-1 after its window",
        );
        assert_eq!(s.ready("deduped"), 6);
        // The queue's own deduplication is rebuilt from its messages.
        s.publish("", "invoices", id("inv-1"), b"dup");
        s.publish("", "invoices", dedup_key("inv-2"), b"dup");
        assert_eq!(s.ready("invoices"), 2);
        s.publish("", "invoices", id("inv-3"), b"new");
        assert_eq!(s.ready("invoices"), 3);
    }
}

#[test]
fn fixture_delayed_messages_come_due_on_time() {
    for version in FIXTURES {
        let f = open(version, V1_CLOSED_AT);
        let mut s = f.session("/");
        assert_eq!(s.ready("reminders"), 1);
        // Released once the due millisecond has passed (a stamp of T0 may
        // mean T0 + 0.9 ms).
        f.tick_at(T0 + 5000);
        assert_eq!(s.ready("reminders"), 1);
        f.tick_at(T0 + 5001);
        assert_eq!(s.ready("reminders"), 2);
        f.tick_at(T0 + 60_000);
        assert_eq!(s.ready("reminders"), 2);
        f.tick_at(T0 + 60_001);
        let released: Vec<Msg> = s.drain("reminders").iter().map(got).collect();
        let fresh = |published_at, properties, body: &[u8]| Msg {
            redelivered: false,
            published_at,
            ..msg("reminders.delayed", "remind", properties, body)
        };
        assert_eq!(
            released,
            [
                Msg {
                    published_at: V1_CLOSED_AT,
                    ..msg(
                        "reminders.delayed",
                        "remind",
                        delay(1000, 2),
                        b"r1 after 1 s"
                    )
                },
                fresh(T0 + 5001, delay(5000, 2), b"r2 after 5 s"),
                fresh(T0 + 60_001, delay(60_000, 1), b"r3 after 1 min"),
            ]
        );
    }
}

#[test]
fn fixture_ttls_and_expiry_count_from_the_recorded_times() {
    for version in FIXTURES {
        let f = open(version, V1_CLOSED_AT);
        let mut s = f.session("/");
        f.tick_at(T0 + 5000);
        // pay-2's own expiration has passed, but like RabbitMQ's classic
        // queues antre expires heads only: it goes once pay-1 is taken.
        assert_eq!(s.ready("payments"), 3);
        let first = s.get("payments", true).expect("pay-1");
        assert_eq!(
            first.message.properties.message_id.as_deref(),
            Some("pay-1")
        );
        f.tick_at(T0 + 5000);
        assert_eq!(s.ready("payments"), 1);
        let dead: Vec<Got> = s.drain("payments.dead");
        let reasons: Vec<(Option<String>, Option<FieldValue>)> = dead
            .iter()
            .map(|g| {
                let h = g.message.properties.headers.clone().unwrap_or_default();
                (
                    g.message.properties.message_id.clone(),
                    h.get("x-first-death-reason").cloned(),
                )
            })
            .collect();
        assert_eq!(
            reasons,
            [
                (Some("pay-0".into()), Some(string("rejected"))),
                (Some("pay-2".into()), Some(string("expired"))),
            ]
        );
        // The queue's TTL of a day counts from pay-3's publication at T0.
        f.tick_at(T0 + 86_400_000 - 1);
        assert_eq!(s.ready("payments"), 1);
        f.tick_at(T0 + 86_400_000);
        assert_eq!(s.ready("payments"), 0);
        assert_eq!(s.ready("payments.dead"), 1);
        // standby's x-expires (an hour unused) counts from recovery; it is gone.
        assert!(matches!(
            s.vhost.queue("standby", 1),
            Err(BrokerError::NotFound(_))
        ));
    }
}

#[test]
fn v4_keeps_policies_and_applies_them() {
    use antre_broker::policy::PolicyKind;
    let f = open("v4", V1_CLOSED_AT);
    let eu = f.broker.vhost("eu/payments").unwrap();
    let defs = serde_json::to_value(eu.definitions()).unwrap();
    assert_eq!(
        defs["policies"],
        json!([{"vhost": "eu/payments", "name": "ledger-limits", "pattern": "^ledger$",
                "apply-to": "queues", "definition": {"max-length": 1000, "queue-mode": "lazy"},
                "priority": 5}])
    );
    assert_eq!(
        defs["operator_policies"],
        json!([{"vhost": "eu/payments", "name": "byte-cap", "pattern": ".*", "apply-to": "all",
                "definition": {"max-length-bytes": 1_073_741_824}, "priority": 0}])
    );
    assert_eq!(eu.policies(PolicyKind::Policy).len(), 1);
    let ledger = eu.queue("ledger", 0).unwrap();
    let applied = ledger.policy();
    assert_eq!(applied.policy_name(), Some("ledger-limits"));
    assert_eq!(applied.operator_name(), Some("byte-cap"));
    assert_eq!(ledger.args().max_length, Some(1000));
    assert_eq!(ledger.args().max_length_bytes, Some(1_073_741_824));
    // The other vhosts have none (so their files stay as earlier formats').
    let root = serde_json::to_value(f.broker.vhost("/").unwrap().definitions()).unwrap();
    assert!(root.get("policies").is_none());
}

#[test]
fn v3_keeps_tags_permissions_and_topic_permissions() {
    use antre_broker::access::{Perm, ResourceKind};
    for version in ["v3", "v4"] {
        let f = open(version, V1_CLOSED_AT);
        let access = f.broker.access();
        let tags = |name: &str| access.user(name).unwrap().tags;
        assert_eq!(tags("guest"), ["administrator"]);
        assert_eq!(tags("ops"), ["monitoring", "custom"]);
        assert!(tags("app").is_empty());
        let mut granted: Vec<(String, String)> = access
            .permissions()
            .into_iter()
            .map(|p| (p.user, p.vhost))
            .collect();
        granted.sort();
        let expected = [
            ("app", "eu/payments"),
            ("guest", "/"),
            ("guest", "empty"),
            ("guest", "eu/payments"),
            ("ops", "/"),
        ];
        assert_eq!(granted, expected.map(|(u, v)| (u.to_owned(), v.to_owned())));
        let app = access.compiled("app", "eu/payments").unwrap();
        assert!(app.allows(ResourceKind::Queue, "ledger", Perm::Configure));
        assert!(app.allows(ResourceKind::Exchange, "ledger.topic", Perm::Write));
        assert!(
            !app.allows(ResourceKind::Queue, "ledger", Perm::Read),
            "\"\" is nothing"
        );
        assert!(app
            .check_topic("ledger.topic", "ledger.app.eur", Perm::Write)
            .is_ok());
        assert!(app
            .check_topic("ledger.topic", "ledger.ops.eur", Perm::Write)
            .is_err());
        assert!(access.compiled("app", "/").is_none());
    }
}

#[test]
fn v1_has_no_format_file_and_is_migrated_to_the_current_format() {
    assert!(
        !fixture("v1").join(antre_broker::data_format::FILE).exists(),
        "v1 predates the format file"
    );
    let f = open("v1", V1_CLOSED_AT);
    let recorded = std::fs::read_to_string(f.dir.path().join("format")).unwrap();
    assert_eq!(
        recorded,
        format!("antre data format {}\n", antre_broker::data_format::CURRENT)
    );
}

#[test]
fn a_data_directory_of_a_newer_format_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    copy_tree(&fixture("v1"), dir.path());
    let current = antre_broker::data_format::CURRENT;
    let newer = current + 1;
    std::fs::write(
        dir.path().join("format"),
        format!("antre data format {newer}\n"),
    )
    .unwrap();
    let clock = Arc::new(ManualClock::at(V1_CLOSED_AT)) as Arc<dyn Clock>;
    let err = Broker::open_with_clock(dir.path(), StorageOptions::default(), clock)
        .map(|_| ())
        .unwrap_err();
    assert!(
        err.to_string().contains(&format!(
            "has data format {newer}, but this antre reads data format {current}"
        )),
        "{err}"
    );
    // Nothing was repaired or deleted: the fully acked segment is still there.
    assert!(dir
        .path()
        .join("vhosts/8a5edab282632443219e051e4ade2d1d/queues/1c168adb00d208e42f93314529f1fa9c/msgs.0000000004")
        .exists());
}

/// v2 keeps its definitions as a snapshot plus a change log: here the
/// snapshot predates every declaration, so recovery must replay the log.
#[test]
fn v2_recovers_its_definitions_from_the_change_log() {
    let root = fixture("v2").join("vhosts/8a5edab282632443219e051e4ade2d1d");
    let snapshot: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("definitions.json")).unwrap()).unwrap();
    assert_eq!(snapshot["queues"], json!([]), "the snapshot is empty");
    let log_files = std::fs::read_dir(root.join("definitions-log"))
        .unwrap()
        .count();
    assert!(log_files > 0, "the declarations are in the log");
    let recorded = std::fs::read_to_string(fixture("v2").join("format")).unwrap();
    assert_eq!(recorded, "antre data format 2\n");
    // What the log holds is checked by the fixture_* tests, which open v2
    // as well as v1; once opened, the log is folded into a new snapshot,
    // which names the log generation that follows it.
    let f = open("v2", V1_CLOSED_AT);
    let root = f.dir.path().join("vhosts/8a5edab282632443219e051e4ade2d1d");
    let mut snapshot: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("definitions.json")).unwrap()).unwrap();
    let generation = snapshot
        .as_object_mut()
        .and_then(|o| o.remove("log_generation"));
    assert_eq!(generation, Some(json!(1)));
    assert_eq!(snapshot, v1_root_definitions());
    assert!(
        !root.join("definitions-log").exists(),
        "the folded log is gone"
    );
}
