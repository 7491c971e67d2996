//! `/metrics` under the rabbitmq_prometheus plugin's names, so RabbitMQ's
//! Grafana dashboards show antre's numbers: every series the
//! "RabbitMQ-Overview" dashboard queries is served with the right value
//! after known traffic, `/metrics/per-object` labels per queue and
//! channel, and both pages pass the strict parser and `promtool check
//! metrics` (skipped with a note when promtool is missing, except under CI),
//! as does `/metrics/detailed`, which holds only the families asked for.

use crate::common;

use std::collections::HashMap;

use common::prometheus::{self, parse, Family};
use common::{declare, publish_confirmed, within, TestBroker};
use futures::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use serde_json::{json, Value};

const DASHBOARD_METRICS: &str = include_str!("fixtures/rabbitmq-overview-dashboard-metrics.txt");

fn sample_value(families: &HashMap<String, Family>, family: &str, sample: &str) -> f64 {
    let f = families
        .get(family)
        .unwrap_or_else(|| panic!("no family {family}"));
    f.samples
        .iter()
        .find(|s| s.name == sample)
        .unwrap_or_else(|| panic!("no sample {sample}"))
        .value
}

fn value(families: &HashMap<String, Family>, name: &str) -> f64 {
    sample_value(families, name, name)
}

/// Known traffic: 3 confirmed publishes of 10 bytes, one unroutable
/// mandatory publish, 2 manual-ack consumes, 1 auto-ack get, 1 empty get,
/// a queue declared twice and another created and deleted. Returns what
/// must stay open for the counts to hold (lapin closes dropped channels).
async fn traffic(b: &TestBroker) -> (lapin::Connection, Vec<lapin::Channel>, lapin::Consumer) {
    let conn = b.lapin().await;
    let ch = common::confirm_channel(&conn).await;
    declare(&ch, "work").await;
    declare(&ch, "work").await;
    declare(&ch, "scratch").await;
    ch.queue_delete("scratch", QueueDeleteOptions::default())
        .await
        .unwrap();
    for _ in 0..3 {
        publish_confirmed(&ch, "", "work", b"0123456789").await;
    }
    let returned = ch
        .basic_publish(
            "",
            "nowhere",
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            b"lost",
            BasicProperties::default(),
        )
        .await
        .unwrap();
    within("confirm", returned).await.unwrap();
    let got = ch
        .basic_get("work", BasicGetOptions { no_ack: true })
        .await
        .unwrap();
    assert!(got.is_some());
    let consumer_ch = conn.create_channel().await.unwrap();
    let mut consumer = consumer_ch
        .basic_consume(
            "work",
            "c",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    for _ in 0..2 {
        let d = within("delivery", consumer.next()).await.unwrap().unwrap();
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    let empty = consumer_ch
        .basic_get("work", BasicGetOptions::default())
        .await
        .unwrap();
    assert!(empty.is_none());
    (conn, vec![ch, consumer_ch], consumer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_series_the_rabbitmq_overview_dashboard_reads_is_served() {
    let b = TestBroker::start().await;
    let _open = traffic(&b).await;
    let (status, kind, text) = b.http_text("/metrics").await;
    assert_eq!(status, 200);
    assert!(kind.starts_with("text/plain"), "{kind}");
    let families = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let served: Vec<&str> = families
        .values()
        .flat_map(|f| f.samples.iter().map(|s| s.name.as_str()))
        .collect();
    let wanted: Vec<&str> = DASHBOARD_METRICS
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .collect();
    assert!(
        wanted.len() >= 40,
        "the fixture lists the dashboard's series"
    );
    let missing: Vec<&&str> = wanted.iter().filter(|n| !served.contains(n)).collect();
    assert!(missing.is_empty(), "not served: {missing:?}");

    let identity = &families["rabbitmq_identity_info"].samples[0];
    for label in ["rabbitmq_node", "rabbitmq_cluster", "rabbitmq_endpoint"] {
        assert!(identity.labels.contains_key(label), "{identity:?}");
    }
    assert_eq!(identity.labels["rabbitmq_endpoint"], "metrics");

    for (name, expected) in [
        ("rabbitmq_global_messages_received_total", 4.0),
        ("rabbitmq_global_messages_received_confirm_total", 4.0),
        ("rabbitmq_global_messages_routed_total", 3.0),
        ("rabbitmq_global_messages_unroutable_returned_total", 1.0),
        ("rabbitmq_global_messages_unroutable_dropped_total", 0.0),
        ("rabbitmq_global_messages_delivered_total", 3.0),
        (
            "rabbitmq_global_messages_delivered_consume_manual_ack_total",
            2.0,
        ),
        (
            "rabbitmq_global_messages_delivered_consume_auto_ack_total",
            0.0,
        ),
        ("rabbitmq_global_messages_delivered_get_auto_ack_total", 1.0),
        (
            "rabbitmq_global_messages_delivered_get_manual_ack_total",
            0.0,
        ),
        ("rabbitmq_global_messages_get_empty_total", 1.0),
        ("rabbitmq_global_messages_acknowledged_total", 2.0),
        ("rabbitmq_global_publishers", 1.0),
        ("rabbitmq_global_consumers", 1.0),
        ("rabbitmq_connections", 1.0),
        ("rabbitmq_connections_opened_total", 1.0),
        ("rabbitmq_channels", 2.0),
        ("rabbitmq_channels_opened_total", 2.0),
        ("rabbitmq_channels_closed_total", 0.0),
        ("rabbitmq_queues", 1.0),
        ("rabbitmq_queues_declared_total", 3.0),
        ("rabbitmq_queues_created_total", 2.0),
        ("rabbitmq_queues_deleted_total", 1.0),
        ("rabbitmq_queue_messages_ready", 0.0),
        ("rabbitmq_message_size_bytes_count", 4.0),
        ("rabbitmq_message_size_bytes_sum", 34.0),
    ] {
        let family = name
            .strip_suffix("_count")
            .or_else(|| name.strip_suffix("_sum"))
            .filter(|f| families.contains_key(*f))
            .unwrap_or(name);
        assert_eq!(sample_value(&families, family, name), expected, "{name}");
    }
    let size = &families["rabbitmq_message_size_bytes"];
    let le_100 = size
        .samples
        .iter()
        .find(|s| s.labels.get("le").map(String::as_str) == Some("100.0"))
        .expect("the dashboard's le=\"100.0\" bucket");
    assert_eq!(le_100.value, 4.0);
    assert!(size
        .samples
        .iter()
        .any(|s| s.labels.get("le").map(String::as_str) == Some("1e+06")));
    assert!(value(&families, "rabbitmq_process_open_fds") > 0.0);
    assert!(value(&families, "rabbitmq_resident_memory_limit_bytes") > 0.0);
    assert!(
        families.contains_key("antre_messages_published_total"),
        "antre's own names stay"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_object_metrics_label_queues_and_channels() {
    let b = TestBroker::start().await;
    let (conn, _channels, _consumer) = traffic(&b).await;
    let (status, _, text) = b.http_text("/metrics/per-object").await;
    assert_eq!(status, 200);
    let families = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(
        families["rabbitmq_identity_info"].samples[0].labels["rabbitmq_endpoint"],
        "per-object"
    );
    let depth = &families["rabbitmq_queue_messages"].samples;
    assert_eq!(depth.len(), 1, "{depth:?}");
    assert_eq!(depth[0].labels["vhost"], "/");
    assert_eq!(depth[0].labels["queue"], "work");
    let consumers = &families["rabbitmq_channel_consumers"].samples;
    assert_eq!(consumers.len(), 2, "one series per channel: {consumers:?}");
    assert_eq!(consumers.iter().map(|s| s.value).sum::<f64>(), 1.0);
    assert!(consumers[0].labels["channel"].ends_with(" (1)"));
    let incoming = &families["rabbitmq_connection_incoming_bytes_total"].samples;
    assert_eq!(incoming.len(), 1);
    assert!(incoming[0].value > 0.0);

    conn.close(200, "bye").await.unwrap();
    within("the connection to go", async {
        while !b.server.registry.is_empty() {
            tokio::task::yield_now().await;
        }
    })
    .await;
    let (_, _, text) = b.http_text("/metrics").await;
    let families = parse(&text).unwrap();
    assert_eq!(value(&families, "rabbitmq_connections_closed_total"), 1.0);
    assert_eq!(value(&families, "rabbitmq_channels_closed_total"), 2.0);
    assert_eq!(value(&families, "rabbitmq_global_publishers"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detailed_metrics_hold_only_the_requested_families() {
    let b = TestBroker::start().await;
    let _open = traffic(&b).await;
    b.api("PUT", "/api/vhosts/other", None).await;
    b.api("PUT", "/api/queues/other/elsewhere", None).await;
    let (status, _, text) = b
        .http_text(
            "/metrics/detailed?family=queue_coarse_metrics&family=queue_consumer_count\
             &family=queue_metrics&family=channel_metrics&vhost=%2F",
        )
        .await;
    assert_eq!(status, 200);
    let families = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(
        families["rabbitmq_identity_info"].samples[0].labels["rabbitmq_endpoint"],
        "detailed"
    );
    let depth = &families["rabbitmq_detailed_queue_messages"].samples;
    assert_eq!(depth.len(), 1, "only vhost /: {depth:?}");
    assert_eq!(depth[0].labels["queue"], "work");
    assert!(families.contains_key("rabbitmq_detailed_queue_consumers"));
    assert!(families.contains_key("rabbitmq_detailed_queue_messages_ready_bytes"));
    assert_eq!(
        families["rabbitmq_detailed_channel_consumers"]
            .samples
            .len(),
        2
    );
    for absent in [
        "rabbitmq_connections",
        "rabbitmq_queue_messages",
        "rabbitmq_detailed_connection_incoming_bytes_total",
        "antre_messages_published_total",
    ] {
        assert!(!families.contains_key(absent), "{absent} was not asked for");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_accepts_every_page() {
    let Some(promtool) = prometheus::promtool() else {
        return;
    };
    let b = TestBroker::start().await;
    let _open = traffic(&b).await;
    for path in [
        "/metrics",
        "/metrics/per-object",
        "/metrics/detailed?family=queue_coarse_metrics&family=queue_metrics&family=connection_coarse_metrics",
    ] {
        let (_, _, text) = b.http_text(path).await;
        prometheus::promtool_accepts(&promtool, path, text).await;
    }
}

/// RabbitMQ's dashboards pick a cluster by `rabbitmq_cluster` and its nodes
/// by `rabbitmq_node`: the `cluster_name` setting names the cluster there,
/// in `/api/cluster-name` and in the overview, as RabbitMQ's does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_name_setting_names_the_cluster_everywhere() {
    let b = TestBroker::start_with(|c| c.cluster_name = Some("payments-eu".into())).await;
    let (status, _, text) = b.http_text("/metrics").await;
    assert_eq!(status, 200);
    let families = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let identity = &families["rabbitmq_identity_info"].samples[0];
    assert_eq!(identity.labels["rabbitmq_cluster"], "payments-eu");
    assert!(
        identity.labels["rabbitmq_node"].starts_with("antre@"),
        "{identity:?}"
    );
    let (status, body) = b.api("GET", "/api/cluster-name", None).await;
    assert_eq!(
        (status, &body["name"]),
        (200, &serde_json::json!("payments-eu"))
    );
    let (_, overview) = b.api("GET", "/api/overview", None).await;
    assert_eq!(overview["cluster_name"], "payments-eu", "{overview}");
}

/// An administrator names the cluster at run time (RabbitMQ's `PUT
/// /api/cluster-name`, `rabbitmqctl set_cluster_name`): over the setting,
/// everywhere the name shows, kept across a restart, and listed and
/// exported as RabbitMQ's global parameter `cluster_name`. Before, the
/// PUT answered 405.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_is_named_at_run_time() {
    let b = TestBroker::start_with(|c| c.cluster_name = Some("from-the-setting".into())).await;
    let (status, _) = b
        .api(
            "PUT",
            "/api/users/watcher",
            Some(json!({ "password": "w", "tags": "monitoring" })),
        )
        .await;
    assert_eq!(status, 201);
    let name = |n: &str| Some(json!({ "name": n }));
    let (status, _) = b
        .api_as(("watcher", "w"), "PUT", "/api/cluster-name", name("mine"))
        .await;
    assert_eq!(status, 401, "administrators only, as RabbitMQ answers");
    for bad in [json!({ "name": "" }), json!({ "name": 3 }), json!({})] {
        let (status, body) = b.api("PUT", "/api/cluster-name", Some(bad)).await;
        assert_eq!(status, 400, "{body}");
    }
    let (_, listed) = b.api("GET", "/api/global-parameters", None).await;
    assert_eq!(listed, json!([]), "nothing set at run time yet");

    let (status, body) = b.api("PUT", "/api/cluster-name", name("payments-eu")).await;
    assert_eq!(status, 204, "{body}");
    /// The name in /api/cluster-name, the overview and the metrics.
    async fn shown(b: &TestBroker) -> (Value, Value, String) {
        let (_, named) = b.api("GET", "/api/cluster-name", None).await;
        let (_, overview) = b.api("GET", "/api/overview", None).await;
        let (_, _, text) = b.http_text("/metrics").await;
        let families = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let identity = &families["rabbitmq_identity_info"].samples[0];
        (
            named["name"].clone(),
            overview["cluster_name"].clone(),
            identity.labels["rabbitmq_cluster"].clone(),
        )
    }
    let payments = (
        json!("payments-eu"),
        json!("payments-eu"),
        "payments-eu".to_owned(),
    );
    assert_eq!(shown(&b).await, payments);
    let parameter = json!({ "name": "cluster_name", "value": "payments-eu" });
    let (_, listed) = b.api("GET", "/api/global-parameters", None).await;
    assert_eq!(listed, json!([parameter.clone()]));
    let (_, one) = b
        .api("GET", "/api/global-parameters/cluster_name", None)
        .await;
    assert_eq!(one, parameter);
    let (_, defs) = b.api("GET", "/api/definitions", None).await;
    assert_eq!(defs["global_parameters"], json!([parameter]), "{defs}");

    let b = b.restart().await;
    assert_eq!(shown(&b).await, payments, "kept across a restart");
    // RabbitMQ's other way to set it.
    let (status, _) = b
        .api(
            "PUT",
            "/api/global-parameters/cluster_name",
            Some(json!({ "name": "cluster_name", "value": "payments-us" })),
        )
        .await;
    assert_eq!(status, 204);
    let (_, named) = b.api("GET", "/api/cluster-name", None).await;
    assert_eq!(named["name"], "payments-us");
    let (status, _) = b
        .api(
            "PUT",
            "/api/global-parameters/shovel_defaults",
            Some(json!({ "value": {} })),
        )
        .await;
    assert_eq!(status, 400);
}

/// A single node has no quorum to lose: RabbitMQ answers its
/// `node-is-quorum-critical` check so, and so does antre.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_node_is_never_quorum_critical() {
    let b = TestBroker::start().await;
    let (status, body) = b
        .api("GET", "/api/health/checks/node-is-quorum-critical", None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        serde_json::json!({"status": "ok", "reason": "single node cluster"})
    );
}

/// A sample of `name` whose `queue_type` label is `queue_type`.
fn of_queue_type(families: &HashMap<String, Family>, name: &str, queue_type: &str) -> f64 {
    families[name]
        .samples
        .iter()
        .find(|s| s.labels.get("queue_type").map(String::as_str) == Some(queue_type))
        .unwrap_or_else(|| panic!("no {name} of {queue_type}"))
        .value
}

/// As RabbitMQ's, the delivery, get and ack counters have one series per
/// queue type: a classic queue's basic.gets, a quorum queue's and a
/// stream's consumed and acked messages each land in their own (they were
/// all counted as classic).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_counters_are_split_by_queue_type() {
    let b = TestBroker::start().await;
    let conn = b.lapin().await;
    let ch = common::confirm_channel(&conn).await;
    declare(&ch, "plain").await;
    for (name, kind) in [("ledger", "quorum"), ("events", "stream")] {
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), AMQPValue::LongString(kind.into()));
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        ch.queue_declare(name, durable, args).await.unwrap();
    }
    publish_confirmed(&ch, "", "plain", b"p").await;
    for (queue, n) in [("ledger", 2), ("events", 3)] {
        for _ in 0..n {
            publish_confirmed(&ch, "", queue, b"m").await;
        }
    }
    // Classic: one get without ack, then an empty one.
    let got = ch.basic_get("plain", BasicGetOptions { no_ack: true });
    assert!(got.await.unwrap().is_some());
    let empty = ch.basic_get("plain", BasicGetOptions::default());
    assert!(empty.await.unwrap().is_none());
    // Quorum and stream: consumed and acked.
    let reader = conn.create_channel().await.unwrap();
    reader
        .basic_qos(10, BasicQosOptions::default())
        .await
        .unwrap();
    for (queue, n) in [("ledger", 2), ("events", 3)] {
        let mut args = FieldTable::default();
        if queue == "events" {
            args.insert(
                "x-stream-offset".into(),
                AMQPValue::LongString("first".into()),
            );
        }
        let mut consumer = reader
            .basic_consume(queue, queue, BasicConsumeOptions::default(), args)
            .await
            .unwrap();
        for _ in 0..n {
            let d = within("delivery", consumer.next()).await.unwrap().unwrap();
            d.ack(BasicAckOptions::default()).await.unwrap();
        }
    }
    // A round trip on the channel: the broker handled the acks before it.
    reader
        .basic_qos(10, BasicQosOptions::default())
        .await
        .unwrap();
    let (_, _, text) = b.http_text("/metrics").await;
    let families = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let classic = "rabbit_classic_queue";
    let quorum = "rabbit_quorum_queue";
    let stream = "rabbit_stream_queue";
    for (name, queue_type, expected) in [
        ("rabbitmq_global_messages_delivered_total", classic, 1.0),
        ("rabbitmq_global_messages_delivered_total", quorum, 2.0),
        ("rabbitmq_global_messages_delivered_total", stream, 3.0),
        (
            "rabbitmq_global_messages_delivered_get_auto_ack_total",
            classic,
            1.0,
        ),
        ("rabbitmq_global_messages_get_empty_total", classic, 1.0),
        ("rabbitmq_global_messages_get_empty_total", quorum, 0.0),
        (
            "rabbitmq_global_messages_delivered_consume_manual_ack_total",
            classic,
            0.0,
        ),
        (
            "rabbitmq_global_messages_delivered_consume_manual_ack_total",
            quorum,
            2.0,
        ),
        (
            "rabbitmq_global_messages_delivered_consume_manual_ack_total",
            stream,
            3.0,
        ),
        ("rabbitmq_global_messages_acknowledged_total", classic, 0.0),
        ("rabbitmq_global_messages_acknowledged_total", quorum, 2.0),
        ("rabbitmq_global_messages_acknowledged_total", stream, 3.0),
    ] {
        assert_eq!(
            of_queue_type(&families, name, queue_type),
            expected,
            "{name} of {queue_type}"
        );
    }
    // antre's own counters are the sums.
    assert_eq!(value(&families, "antre_messages_delivered_total"), 6.0);
    assert_eq!(value(&families, "antre_messages_acked_total"), 5.0);
}

/// Regression: RabbitMQ 3.10's `/metrics` sums its channels' counters
/// (`rabbitmq_channel_messages_published_total`, `..._delivered_ack_total`,
/// `rabbitmq_channel_get_total`, ...), which older Grafana dashboards and
/// alert rules query; antre served none of them (found comparing both
/// brokers' metric names). Summed over the open channels, as RabbitMQ's,
/// and one series per channel in `/metrics/per-object`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_counters_are_served_under_rabbitmqs_names() {
    let b = TestBroker::start().await;
    let _open = traffic(&b).await;
    let (_, _, text) = b.http_text("/metrics").await;
    let families = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let expected = [
        ("rabbitmq_channel_messages_published_total", 4.0),
        ("rabbitmq_channel_messages_confirmed_total", 4.0),
        ("rabbitmq_channel_messages_unroutable_returned_total", 1.0),
        ("rabbitmq_channel_messages_unroutable_dropped_total", 0.0),
        ("rabbitmq_channel_get_ack_total", 0.0),
        ("rabbitmq_channel_get_total", 1.0),
        ("rabbitmq_channel_get_empty_total", 1.0),
        ("rabbitmq_channel_messages_delivered_ack_total", 2.0),
        ("rabbitmq_channel_messages_delivered_total", 0.0),
        ("rabbitmq_channel_messages_redelivered_total", 0.0),
        ("rabbitmq_channel_messages_acked_total", 2.0),
    ];
    for (name, want) in expected {
        assert_eq!(value(&families, name), want, "{name}");
        assert_eq!(families[name].kind, "counter", "{name}");
    }
    let (_, _, text) = b.http_text("/metrics/per-object").await;
    let families = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let published = &families["rabbitmq_channel_messages_published_total"].samples;
    let mut per_channel: Vec<f64> = published.iter().map(|s| s.value).collect();
    per_channel.sort_by(f64::total_cmp);
    assert_eq!(per_channel, [0.0, 4.0], "{published:?}");
}

/// Regression: RabbitMQ's `rabbitmq_auth_attempts_total`,
/// `..._succeeded_total` and `..._failed_total` (by `protocol`), which
/// alerting on a burst of failed logins reads, were not served. Each AMQP
/// login and each management API request's credentials count; a wrong
/// password counts as failed and lets nobody in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_attempts_are_counted_by_protocol() {
    let b = TestBroker::start().await;
    let refused = common::RawClient::open_as(b.addr(), "guest", "wrong", "/").await;
    assert!(refused.is_err(), "a wrong password is refused");
    let _client = b.lapin().await;
    let (status, _) = b
        .api_as(("guest", "wrong"), "GET", "/api/overview", None)
        .await;
    assert_eq!(status, 401);
    for _ in 0..2 {
        assert_eq!(b.api("GET", "/api/overview", None).await.0, 200);
    }
    let (_, _, text) = b.http_text("/metrics").await;
    let families = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let of = |family: &str, protocol: &str| -> f64 {
        families[family]
            .samples
            .iter()
            .find(|s| s.labels.get("protocol").map(String::as_str) == Some(protocol))
            .map_or(-1.0, |s| s.value)
    };
    assert_eq!(of("rabbitmq_auth_attempts_failed_total", "amqp091"), 1.0);
    assert_eq!(of("rabbitmq_auth_attempts_succeeded_total", "amqp091"), 1.0);
    assert_eq!(of("rabbitmq_auth_attempts_total", "amqp091"), 2.0);
    assert_eq!(of("rabbitmq_auth_attempts_failed_total", "http"), 1.0);
    assert_eq!(of("rabbitmq_auth_attempts_succeeded_total", "http"), 2.0);
    assert_eq!(of("rabbitmq_auth_attempts_total", "stream"), 0.0);
}

/// Regression: `GET /api/auth/attempts/{node}` (RabbitMQ's login counts of
/// a node by protocol, which its UI's node page and monitoring read)
/// answered 404. The same counts as `/metrics`, in RabbitMQ's shape, for
/// monitoring users; `.../source` is empty, as RabbitMQ's is unless told
/// to track sources.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nodes_login_attempts_are_listed_as_rabbitmq_lists_them() {
    let b = TestBroker::start().await;
    let refused = common::RawClient::open_as(b.addr(), "guest", "wrong", "/").await;
    assert!(refused.is_err());
    let _client = b.lapin().await;
    let (_, overview) = b.api("GET", "/api/overview", None).await;
    let node = overview["node"].as_str().expect("node").to_owned();
    let (status, attempts) = b
        .api("GET", &format!("/api/auth/attempts/{node}"), None)
        .await;
    assert_eq!(status, 200, "{attempts}");
    let amqp = attempts
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["protocol"] == "amqp091")
        .cloned();
    assert_eq!(
        amqp,
        Some(json!({
            "protocol": "amqp091",
            "auth_attempts": 2,
            "auth_attempts_failed": 1,
            "auth_attempts_succeeded": 1,
        }))
    );
    let http = attempts
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["protocol"] == "http");
    assert!(
        http.is_some_and(|h| h["auth_attempts_succeeded"].as_u64() >= Some(2)),
        "{attempts}"
    );
    let source = format!("/api/auth/attempts/{node}/source");
    assert_eq!(b.api("GET", &source, None).await, (200, json!([])));
    assert_eq!(
        b.api("GET", "/api/auth/attempts/nosuch@host", None).await.0,
        404
    );
    let management = json!({"password": "p", "tags": "management"});
    assert_eq!(
        b.api("PUT", "/api/users/viewer", Some(management)).await.0,
        201
    );
    let path = format!("/api/auth/attempts/{node}");
    let (status, _) = b.api_as(("viewer", "p"), "GET", &path, None).await;
    assert_eq!(status, 401, "monitoring only");
}

/// A queue declared on `ch`, durable, with `args` (string or integer
/// values).
async fn declare_with(ch: &lapin::Channel, name: &str, args: &[(&str, AMQPValue)]) {
    let mut table = FieldTable::default();
    for (k, v) in args {
        table.insert((*k).into(), v.clone());
    }
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare(name, durable, table).await.unwrap();
}

/// Regression: RabbitMQ 3.10's `rabbitmq_global_messages_dead_lettered_*`
/// counters (what an alert on poison messages or overflowing queues
/// reads) were not served. Each message that leaves a queue for a
/// dead-letter reason counts, by queue type and by what became of it:
/// dropped (`disabled`: no dead-letter exchange, or one that does not
/// exist), routed (`at_most_once`), or kept until held (`at_least_once`,
/// and `confirmed` once held). The expected counts are RabbitMQ 3.10.8's
/// for the same traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_lettered_messages_are_counted_as_rabbitmq_counts_them() {
    let b = TestBroker::start().await;
    let conn = b.lapin().await;
    let ch = common::confirm_channel(&conn).await;
    let s = |v: &str| AMQPValue::LongString(v.into());
    let dlx = ("x-dead-letter-exchange", s("dlx"));
    let quorum = ("x-queue-type", s("quorum"));
    ch.exchange_declare(
        "dlx",
        lapin::ExchangeKind::Fanout,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    declare_with(&ch, "sink", std::slice::from_ref(&quorum)).await;
    ch.queue_bind(
        "sink",
        "dlx",
        "",
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let get_reject = |queue: &'static str| {
        let ch = ch.clone();
        async move {
            let m = ch.basic_get(queue, BasicGetOptions::default()).await;
            let m = m.unwrap().expect("a message to reject");
            m.delivery
                .reject(BasicRejectOptions { requeue: false })
                .await
                .unwrap();
        }
    };
    // Classic, rejected: twice with no dead-letter exchange, once to one
    // that does not exist (both dropped).
    declare_with(&ch, "c-plain", &[]).await;
    declare_with(&ch, "c-nowhere", &[("x-dead-letter-exchange", s("none"))]).await;
    for q in ["c-plain", "c-plain", "c-nowhere"] {
        publish_confirmed(&ch, "", q, b"m").await;
        get_reject(q).await;
    }
    // Classic, expired on arrival: 3 routed.
    declare_with(
        &ch,
        "c-ttl",
        &[dlx.clone(), ("x-message-ttl", AMQPValue::LongInt(0))],
    )
    .await;
    // Classic, over a length of 1: 3 dropped from the head, and one
    // refused publish routed (reject-publish-dlx).
    declare_with(&ch, "c-short", &[("x-max-length", AMQPValue::LongInt(1))]).await;
    declare_with(
        &ch,
        "c-refusing",
        &[
            dlx.clone(),
            ("x-max-length", AMQPValue::LongInt(1)),
            ("x-overflow", s("reject-publish-dlx")),
        ],
    )
    .await;
    for (q, n) in [("c-ttl", 3), ("c-short", 4), ("c-refusing", 2)] {
        for _ in 0..n {
            // The refused one is nacked: awaited, not checked.
            let props = BasicProperties::default();
            let publish = ch.basic_publish("", q, BasicPublishOptions::default(), b"m", props);
            publish.await.unwrap().await.unwrap();
        }
    }
    // Quorum, at least once: 2 rejected, kept, then held by "sink".
    declare_with(
        &ch,
        "q-safe",
        &[
            quorum.clone(),
            dlx.clone(),
            ("x-dead-letter-strategy", s("at-least-once")),
            ("x-overflow", s("reject-publish")),
        ],
    )
    .await;
    for _ in 0..2 {
        publish_confirmed(&ch, "", "q-safe", b"m").await;
        get_reject("q-safe").await;
    }
    // Quorum, no dead-letter exchange: past a delivery limit of 1.
    declare_with(
        &ch,
        "q-limited",
        &[quorum.clone(), ("x-delivery-limit", AMQPValue::LongInt(1))],
    )
    .await;
    publish_confirmed(&ch, "", "q-limited", b"m").await;
    for _ in 0..2 {
        let m = ch.basic_get("q-limited", BasicGetOptions::default()).await;
        let m = m.unwrap().expect("the limited message");
        m.delivery
            .nack(BasicNackOptions {
                requeue: true,
                ..Default::default()
            })
            .await
            .unwrap();
    }
    // Quorum, at most once: 2 routed from the head of a queue of 1.
    declare_with(
        &ch,
        "q-short",
        &[quorum, dlx, ("x-max-length", AMQPValue::LongInt(1))],
    )
    .await;
    for _ in 0..3 {
        publish_confirmed(&ch, "", "q-short", b"m").await;
    }

    let expected = [
        ("confirmed", "rabbit_quorum_queue", "at_least_once", 2.0),
        ("delivery_limit", "rabbit_quorum_queue", "disabled", 1.0),
        ("delivery_limit", "rabbit_quorum_queue", "at_most_once", 0.0),
        ("expired", "rabbit_classic_queue", "at_most_once", 3.0),
        ("expired", "rabbit_classic_queue", "disabled", 0.0),
        ("maxlen", "rabbit_classic_queue", "at_most_once", 1.0),
        ("maxlen", "rabbit_classic_queue", "disabled", 3.0),
        ("maxlen", "rabbit_quorum_queue", "at_most_once", 2.0),
        ("rejected", "rabbit_classic_queue", "disabled", 3.0),
        ("rejected", "rabbit_classic_queue", "at_most_once", 0.0),
        ("rejected", "rabbit_quorum_queue", "at_least_once", 2.0),
    ];
    let counts = || async {
        let (_, _, text) = b.http_text("/metrics").await;
        let families = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        expected.map(|(reason, queue_type, strategy, _)| {
            let name = format!("rabbitmq_global_messages_dead_lettered_{reason}_total");
            families[&name]
                .samples
                .iter()
                .find(|s| {
                    s.labels["queue_type"] == queue_type
                        && s.labels["dead_letter_strategy"] == strategy
                })
                .map_or(-1.0, |s| s.value)
        })
    };
    let want = expected.map(|e| e.3);
    // The at-least-once letters are held, and counted, after the
    // broker's timer sees "sink" has them.
    common::eventually("the dead letters counted", || async {
        counts().await == want
    })
    .await;
    // RabbitMQ's label sets: no at-least-once for classic queues or
    // length limits, no delivery limit for classic queues.
    let (_, _, text) = b.http_text("/metrics").await;
    let families = parse(&text).unwrap();
    let series = |reason: &str| {
        families[&format!("rabbitmq_global_messages_dead_lettered_{reason}_total")]
            .samples
            .len()
    };
    assert_eq!(
        [
            "confirmed",
            "delivery_limit",
            "expired",
            "maxlen",
            "rejected"
        ]
        .map(series),
        [1, 3, 5, 4, 5]
    );
}
