//! The management API against the real broker: RabbitMQ's paths and field
//! names, auth, errors, topology changes, messages over HTTP, and the
//! definitions round trip into a fresh broker.

use crate::common;

use common::{declare, publish_confirmed, within, TestBroker};
use futures::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_errors_and_unknown_paths_answer_json() {
    let b = TestBroker::start().await;
    let (status, body) = b
        .api_as(("guest", "wrong"), "GET", "/api/overview", None)
        .await;
    assert_eq!(status, 401);
    assert_eq!(body["error"], "not_authorized", "{body}");
    // RabbitMQ 3.10.8's answer, the same for an unknown user.
    assert_eq!(body["reason"], "Login failed");
    let (_, unknown) = b
        .api_as(("nobody", "wrong"), "GET", "/api/overview", None)
        .await;
    assert_eq!(unknown, body);

    let (status, body) = b.http_text("/api/queues").await.into_status_json();
    assert_eq!(status, 401, "no credentials: {body}");

    let (status, body) = b.api("GET", "/api/nope", None).await;
    assert_eq!(status, 404);
    assert!(body["reason"].is_string(), "{body}");

    let (status, body) = b.api("PATCH", "/api/overview", None).await;
    assert_eq!(status, 405, "{body}");
    assert_eq!(body["error"], "method_not_allowed");

    let (status, body) = b.api("GET", "/api/queues/%2F/missing", None).await;
    assert_eq!(status, 404);
    assert!(
        body["reason"].as_str().unwrap().contains("missing"),
        "{body}"
    );

    let (status, body) = b
        .api("PUT", "/api/queues/%2F/q", Some(json!("not an object")))
        .await;
    assert_eq!(status, 400, "{body}");

    let (status, whoami) = b.api("GET", "/api/whoami", None).await;
    assert_eq!(status, 200);
    assert_eq!(whoami["name"], "guest");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overview_counts_objects_and_messages() {
    let b = TestBroker::start().await;
    let conn = b.lapin().await;
    let ch = common::confirm_channel(&conn).await;
    declare(&ch, "ov").await;
    for _ in 0..3 {
        publish_confirmed(&ch, "", "ov", b"x").await;
    }
    let (status, o) = b.api("GET", "/api/overview", None).await;
    assert_eq!(status, 200);
    assert_eq!(o["product_name"], "antre");
    assert_eq!(o["queue_totals"]["messages_ready"], 3);
    assert_eq!(o["queue_totals"]["messages"], 3);
    assert_eq!(o["message_stats"]["publish"], 3);
    assert!(o["message_stats"]["publish_details"]["rate"].is_number());
    assert_eq!(o["object_totals"]["connections"], 1);
    assert_eq!(o["object_totals"]["channels"], 1);
    assert_eq!(o["object_totals"]["queues"], 1);
    assert_eq!(
        o["object_totals"]["exchanges"], 7,
        "the predeclared exchanges"
    );
    let listeners = o["listeners"].as_array().unwrap();
    assert!(listeners
        .iter()
        .any(|l| l["protocol"] == "amqp" && l["port"] == b.addr().port()));
    let (_, o) = b.api("GET", "/api/overview?msg_rates_age=600", None).await;
    assert!(
        o["message_stats"]["publish_details"]["samples"].is_array(),
        "history for charts: {o}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_show_counts_consumers_and_can_be_managed() {
    let b = TestBroker::start().await;
    let conn = b.lapin().await;
    let ch = common::confirm_channel(&conn).await;
    declare(&ch, "work").await;
    for i in 0..4 {
        publish_confirmed(&ch, "", "work", format!("m{i}").as_bytes()).await;
    }
    let consumer_ch = conn.create_channel().await.unwrap();
    consumer_ch
        .basic_qos(1, BasicQosOptions::default())
        .await
        .unwrap();
    let mut consumer = consumer_ch
        .basic_consume(
            "work",
            "ctag-1",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    within("a delivery", consumer.next())
        .await
        .unwrap()
        .unwrap();

    let (status, q) = b.api("GET", "/api/queues/%2F/work", None).await;
    assert_eq!(status, 200);
    assert_eq!(q["name"], "work");
    assert_eq!(q["vhost"], "/");
    assert_eq!(q["messages"], 4);
    assert_eq!(q["messages_ready"], 3);
    assert_eq!(q["messages_unacknowledged"], 1);
    assert_eq!(q["consumers"], 1);
    assert_eq!(q["message_stats"]["publish"], 4);
    assert_eq!(q["consumer_details"][0]["consumer_tag"], "ctag-1");
    assert_eq!(q["consumer_details"][0]["prefetch_count"], 1);

    let (_, list) = b.api("GET", "/api/queues", None).await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    let (_, cols) = b
        .api("GET", "/api/queues/%2F?columns=name,messages", None)
        .await;
    assert_eq!(cols, json!([{ "name": "work", "messages": 4 }]));

    let (_, consumers) = b.api("GET", "/api/consumers", None).await;
    assert_eq!(consumers[0]["queue"]["name"], "work");
    assert_eq!(consumers[0]["ack_required"], true);

    // Declare over HTTP: created, then unchanged, then inequivalent.
    let body = json!({ "durable": true, "arguments": { "x-max-length": 10 } });
    let (status, _) = b
        .api("PUT", "/api/queues/%2F/jobs", Some(body.clone()))
        .await;
    assert_eq!(status, 201);
    let (status, _) = b.api("PUT", "/api/queues/%2F/jobs", Some(body)).await;
    assert_eq!(status, 204);
    let (status, err) = b
        .api(
            "PUT",
            "/api/queues/%2F/jobs",
            Some(json!({ "durable": false })),
        )
        .await;
    assert_eq!(status, 400, "{err}");
    assert!(
        err["reason"].as_str().unwrap().contains("inequivalent"),
        "{err}"
    );
    let (_, jobs) = b.api("GET", "/api/queues/%2F/jobs", None).await;
    assert_eq!(jobs["arguments"]["x-max-length"], 10);

    // Purge drops ready messages, not the unacked one.
    let (status, _) = b.api("DELETE", "/api/queues/%2F/work/contents", None).await;
    assert_eq!(status, 204);
    let (_, q) = b.api("GET", "/api/queues/%2F/work", None).await;
    assert_eq!(q["messages_ready"], 0);
    assert_eq!(q["messages_unacknowledged"], 1);

    let (status, err) = b
        .api("DELETE", "/api/queues/%2F/work?if-unused=true", None)
        .await;
    assert_eq!(status, 400, "in use: {err}");
    let (status, _) = b.api("DELETE", "/api/queues/%2F/work", None).await;
    assert_eq!(status, 204);
    let (status, _) = b.api("GET", "/api/queues/%2F/work", None).await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchanges_bindings_publish_and_get_over_http() {
    let b = TestBroker::start().await;
    let (status, _) = b
        .api(
            "PUT",
            "/api/exchanges/%2F/orders",
            Some(json!({ "type": "topic" })),
        )
        .await;
    assert_eq!(status, 201);
    let (status, err) = b
        .api(
            "PUT",
            "/api/exchanges/%2F/bad",
            Some(json!({ "type": "nonsense" })),
        )
        .await;
    assert_eq!(status, 400, "{err}");
    b.api("PUT", "/api/queues/%2F/emails", None).await;
    let (status, _) = b
        .api(
            "POST",
            "/api/bindings/%2F/e/orders/q/emails",
            Some(json!({ "routing_key": "order.*" })),
        )
        .await;
    assert_eq!(status, 201);

    let (_, bindings) = b
        .api("GET", "/api/bindings/%2F/e/orders/q/emails", None)
        .await;
    assert_eq!(bindings.as_array().unwrap().len(), 1);
    assert_eq!(bindings[0]["routing_key"], "order.*");
    let props = bindings[0]["properties_key"].as_str().unwrap().to_owned();
    let (_, all) = b.api("GET", "/api/bindings", None).await;
    assert!(
        all.as_array()
            .unwrap()
            .iter()
            .any(|b| b["source"] == "" && b["destination"] == "emails"),
        "the default exchange's implicit binding is listed: {all}"
    );
    let (_, ex) = b.api("GET", "/api/exchanges/%2F/orders", None).await;
    assert_eq!(ex["type"], "topic");
    assert_eq!(ex["durable"], true);
    let (_, src) = b
        .api("GET", "/api/exchanges/%2F/orders/bindings/source", None)
        .await;
    assert_eq!(src[0]["destination"], "emails");

    let publish = json!({
        "routing_key": "order.created",
        "payload": "{\"id\": 7}",
        "payload_encoding": "string",
        "properties": { "content_type": "application/json", "delivery_mode": 2, "headers": { "k": "v" } },
    });
    let (status, routed) = b
        .api("POST", "/api/exchanges/%2F/orders/publish", Some(publish))
        .await;
    assert_eq!(status, 200);
    assert_eq!(routed, json!({ "routed": true }));
    let (_, routed) = b
        .api(
            "POST",
            "/api/exchanges/%2F/orders/publish",
            Some(json!({ "routing_key": "invoice.created", "payload": "x" })),
        )
        .await;
    assert_eq!(routed["routed"], false);

    // Get with requeue leaves it there, redelivered; without, takes it.
    let get = |ackmode: &str| json!({ "count": 5, "ackmode": ackmode, "encoding": "auto" });
    let (status, msgs) = b
        .api(
            "POST",
            "/api/queues/%2F/emails/get",
            Some(get("ack_requeue_true")),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(msgs.as_array().unwrap().len(), 1);
    assert_eq!(msgs[0]["payload"], "{\"id\": 7}");
    assert_eq!(msgs[0]["payload_encoding"], "string");
    assert_eq!(msgs[0]["routing_key"], "order.created");
    assert_eq!(msgs[0]["exchange"], "orders");
    assert_eq!(msgs[0]["properties"]["content_type"], "application/json");
    assert_eq!(msgs[0]["properties"]["headers"]["k"], "v");
    assert_eq!(msgs[0]["redelivered"], false);
    let (_, msgs) = b
        .api(
            "POST",
            "/api/queues/%2F/emails/get",
            Some(get("ack_requeue_false")),
        )
        .await;
    assert_eq!(msgs[0]["redelivered"], true);
    let (_, q) = b.api("GET", "/api/queues/%2F/emails", None).await;
    assert_eq!(q["messages"], 0);

    // The default exchange is amq.default in URLs.
    let (_, routed) = b
        .api(
            "POST",
            "/api/exchanges/%2F/amq.default/publish",
            Some(
                json!({ "routing_key": "emails", "payload": "aGk=", "payload_encoding": "base64" }),
            ),
        )
        .await;
    assert_eq!(routed["routed"], true);
    let (_, msgs) = b
        .api(
            "POST",
            "/api/queues/%2F/emails/get",
            Some(get("ack_requeue_false")),
        )
        .await;
    assert_eq!(msgs[0]["payload"], "hi");

    let path = format!(
        "/api/bindings/%2F/e/orders/q/emails/{}",
        props.replace('*', "%2A")
    );
    let (status, _) = b.api("DELETE", &path, None).await;
    assert_eq!(status, 204);
    let (_, bindings) = b
        .api("GET", "/api/bindings/%2F/e/orders/q/emails", None)
        .await;
    assert_eq!(bindings, json!([]));
    let (status, _) = b.api("DELETE", "/api/exchanges/%2F/orders", None).await;
    assert_eq!(status, 204);
    let (status, _) = b.api("DELETE", "/api/exchanges/%2F/amq.topic", None).await;
    assert_eq!(status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_and_channels_are_listed_and_can_be_closed() {
    let b = TestBroker::start().await;
    let conn = b.lapin().await;
    let ch1 = conn.create_channel().await.unwrap();
    let _ch2 = conn.create_channel().await.unwrap();
    declare(&ch1, "live").await;

    let (_, conns) = b.api("GET", "/api/connections", None).await;
    let conns = conns.as_array().unwrap();
    assert_eq!(conns.len(), 1);
    let c = &conns[0];
    assert_eq!(c["user"], "guest");
    assert_eq!(c["vhost"], "/");
    assert_eq!(c["channels"], 2);
    assert_eq!(c["protocol"], "AMQP 0-9-1");
    assert_eq!(c["port"], b.addr().port());
    assert!(c["recv_oct"].as_u64().unwrap() > 0);
    assert!(c["client_properties"]["product"].is_string(), "{c}");
    let name = c["name"].as_str().unwrap().to_owned();

    let (_, channels) = b.api("GET", "/api/channels", None).await;
    assert_eq!(channels.as_array().unwrap().len(), 2);
    assert_eq!(channels[0]["connection_details"]["name"], name.as_str());
    let encoded = name.replace(' ', "%20").replace('>', "%3E");
    let (status, one) = b
        .api("GET", &format!("/api/connections/{encoded}"), None)
        .await;
    assert_eq!(status, 200, "{one}");
    let (_, of) = b
        .api("GET", &format!("/api/connections/{encoded}/channels"), None)
        .await;
    assert_eq!(of.as_array().unwrap().len(), 2);

    let (status, _) = b
        .api("DELETE", &format!("/api/connections/{encoded}"), None)
        .await;
    assert_eq!(status, 204);
    // The connection task ends and unregisters: the client sees the close.
    within("connection closed by the operator", async {
        while conn.status().connected() {
            tokio::task::yield_now().await;
        }
    })
    .await;
    within("the registry forgets it", async {
        while !b.server.registry.is_empty() {
            tokio::task::yield_now().await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vhosts_and_users_can_be_managed() {
    let b = TestBroker::start().await;
    let (status, _) = b.api("PUT", "/api/vhosts/staging", None).await;
    assert_eq!(status, 201);
    let (_, vhosts) = b.api("GET", "/api/vhosts", None).await;
    let names: Vec<&str> = vhosts
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["/", "staging"]);
    b.api("PUT", "/api/queues/staging/q", None).await;
    let (_, qs) = b.api("GET", "/api/queues/staging", None).await;
    assert_eq!(qs[0]["vhost"], "staging");
    let (status, _) = b.api("DELETE", "/api/vhosts/staging", None).await;
    assert_eq!(status, 204);
    let (status, _) = b.api("GET", "/api/queues/staging", None).await;
    assert_eq!(status, 404);

    let (status, _) = b
        .api(
            "PUT",
            "/api/users/ops",
            Some(json!({ "password": "s3cret", "tags": "administrator" })),
        )
        .await;
    assert_eq!(status, 201);
    let (status, me) = b
        .api_as(("ops", "s3cret"), "GET", "/api/whoami", None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(me["name"], "ops");
    let (status, _) = b.api("DELETE", "/api/users/ops", None).await;
    assert_eq!(status, 204);
    let (status, _) = b
        .api_as(("ops", "s3cret"), "GET", "/api/whoami", None)
        .await;
    assert_eq!(status, 401);
}

/// The health checks, and RabbitMQ's legacy `/api/healthchecks/node`
/// (deprecated in 3.8, still answered by 3.10 and called by older
/// monitoring; it answered 404 before), follow the disk alarm as 3.10's
/// do: 200 `{"status":"ok"}`, then 503 with the alarm in RabbitMQ's words.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_follow_the_disk_alarm() {
    let b =
        TestBroker::start_with(|c| c.disk_check_interval = std::time::Duration::from_millis(10))
            .await;
    let (status, body) = b.api("GET", "/api/health/checks/alarms", None).await;
    assert_eq!((status, body), (200, json!({ "status": "ok" })));
    let (_, overview) = b.api("GET", "/api/overview", None).await;
    let node = overview["node"]
        .as_str()
        .expect("the node's name")
        .to_owned();
    let legacy = [
        "/api/healthchecks/node".to_owned(),
        format!("/api/healthchecks/node/{node}"),
    ];
    for path in &legacy {
        let (status, body) = b.api("GET", path, None).await;
        assert_eq!((status, body), (200, json!({ "status": "ok" })), "{path}");
    }
    let (status, _) = b
        .api("GET", "/api/healthchecks/node/nosuch@host", None)
        .await;
    assert_eq!(status, 404);
    let (status, _, _) = b.http_text("/readyz").await;
    assert_eq!(status, 200);
    let (status, _) = b.api("GET", "/api/aliveness-test/%2F", None).await;
    assert_eq!(status, 200);

    let mut raised = b.server.alarms.subscribe();
    b.server.alarms.set_disk_free_limit(u64::MAX);
    within("disk alarm", raised.wait_for(|r| r.disk))
        .await
        .unwrap();
    let (status, body) = b.api("GET", "/api/health/checks/alarms", None).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "failed");
    for path in &legacy {
        let (status, body) = b.api("GET", path, None).await;
        assert_eq!(status, 503, "{path}: {body}");
        let reason = format!("resource alarm(s) in effect:[{{resource_limit,disk,{node}}}]");
        assert_eq!(
            body,
            json!({ "status": "failed", "reason": reason }),
            "{path}"
        );
    }
    let (status, _, _) = b.http_text("/readyz").await;
    assert_eq!(status, 503);
    let (status, _, _) = b.http_text("/healthz").await;
    assert_eq!(status, 200, "alive, though not ready");
}

/// Sorted copies of a definitions export's topology, without the version
/// fields.
fn topology(defs: &Value) -> Vec<Vec<Value>> {
    ["vhosts", "exchanges", "queues", "bindings"]
        .iter()
        .map(|k| {
            let mut items = defs[*k].as_array().cloned().unwrap_or_default();
            items.sort_by_key(|v| v.to_string());
            items
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn definitions_export_then_import_into_a_fresh_broker_gives_the_same_topology() {
    let a = TestBroker::start().await;
    a.api("PUT", "/api/vhosts/billing", None).await;
    for (vhost, ex, kind) in [
        ("%2F", "events", "topic"),
        ("billing", "invoices", "fanout"),
        ("%2F", "audit", "headers"),
    ] {
        let (status, _) = a
            .api(
                "PUT",
                &format!("/api/exchanges/{vhost}/{ex}"),
                Some(json!({ "type": kind })),
            )
            .await;
        assert_eq!(status, 201);
    }
    a.api(
        "PUT",
        "/api/queues/%2F/payments",
        Some(json!({ "durable": true, "arguments": { "x-dead-letter-exchange": "audit", "x-max-length": 1000 } })),
    )
    .await;
    a.api("PUT", "/api/queues/billing/pdf", None).await;
    a.api(
        "PUT",
        "/api/queues/%2F/scratch",
        Some(json!({ "durable": false })),
    )
    .await;
    a.api(
        "POST",
        "/api/bindings/%2F/e/events/q/payments",
        Some(json!({ "routing_key": "payment.#" })),
    )
    .await;
    a.api(
        "POST",
        "/api/bindings/%2F/e/events/e/audit",
        Some(json!({ "routing_key": "#" })),
    )
    .await;
    a.api(
        "POST",
        "/api/bindings/%2F/e/audit/q/payments",
        Some(json!({ "arguments": { "x-match": "all", "kind": "refund" } })),
    )
    .await;
    a.api("POST", "/api/bindings/billing/e/invoices/q/pdf", None)
        .await;

    let (status, exported) = a.api("GET", "/api/definitions", None).await;
    assert_eq!(status, 200);
    assert_eq!(
        exported["queues"].as_array().unwrap().len(),
        2,
        "only durable queues: {exported}"
    );
    assert_eq!(exported["bindings"].as_array().unwrap().len(), 4);

    let b = TestBroker::start().await;
    let (status, counts) = b
        .api("POST", "/api/definitions", Some(exported.clone()))
        .await;
    assert_eq!(status, 201, "{counts}");
    let (_, again) = b.api("GET", "/api/definitions", None).await;
    assert_eq!(topology(&again), topology(&exported));

    // Importing twice changes nothing.
    let (status, _) = b
        .api("POST", "/api/definitions", Some(exported.clone()))
        .await;
    assert_eq!(status, 201);
    let (_, twice) = b.api("GET", "/api/definitions", None).await;
    assert_eq!(topology(&twice), topology(&exported));

    // And the imported topology routes.
    let (_, routed) = b
        .api(
            "POST",
            "/api/exchanges/%2F/events/publish",
            Some(json!({ "routing_key": "payment.settled", "payload": "p" })),
        )
        .await;
    assert_eq!(routed["routed"], true);

    let (_, vhost_defs) = a.api("GET", "/api/definitions/billing", None).await;
    assert_eq!(vhost_defs["queues"][0]["name"], "pdf");
    let (status, err) = b
        .api(
            "POST",
            "/api/definitions",
            Some(json!({ "queues": [{ "name": "q", "vhost": "nowhere" }] })),
        )
        .await;
    assert_eq!(status, 404, "an unknown vhost fails the import: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_as_prometheus_text() {
    let b = TestBroker::start().await;
    let conn = b.lapin().await;
    let ch = common::confirm_channel(&conn).await;
    ch.queue_declare(
        "metered \"q\"",
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let confirm = ch
        .basic_publish(
            "",
            "metered \"q\"",
            BasicPublishOptions::default(),
            b"persist me",
            lapin::BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .unwrap();
    within("confirm", confirm).await.unwrap();

    let (status, kind, text) = b.http_text("/metrics").await;
    assert_eq!(status, 200);
    assert!(kind.starts_with("text/plain"), "{kind}");
    let families = common::prometheus::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    for (name, kind) in [
        ("antre_messages_published_total", "counter"),
        ("antre_messages_delivered_total", "counter"),
        ("antre_messages_acked_total", "counter"),
        ("antre_messages_redelivered_total", "counter"),
        ("antre_connections", "gauge"),
        ("antre_channels", "gauge"),
        ("antre_consumers", "gauge"),
        ("antre_process_resident_memory_bytes", "gauge"),
        ("antre_disk_free_bytes", "gauge"),
        ("antre_queue_messages_ready", "gauge"),
        ("antre_queue_messages_unacked", "gauge"),
        ("antre_store_fsync_seconds", "histogram"),
        ("antre_confirm_latency_seconds", "histogram"),
    ] {
        assert_eq!(
            families.get(name).map(|f| f.kind.as_str()),
            Some(kind),
            "{name}"
        );
    }
    let ready = &families["antre_queue_messages_ready"].samples;
    assert!(
        ready.iter().any(
            |s| s.labels.get("queue").map(String::as_str) == Some("metered \"q\"")
                && s.value == 1.0
        ),
        "{ready:?}"
    );
    assert_eq!(
        families["antre_messages_published_total"].samples[0].value,
        1.0
    );
    assert_eq!(families["antre_connections"].samples[0].value, 1.0);
    let fsync = &families["antre_store_fsync_seconds"];
    let count = fsync
        .samples
        .iter()
        .find(|s| s.name.ends_with("_count"))
        .unwrap();
    assert!(count.value >= 1.0, "the persistent publish was fsynced");
}

/// Plugin exchange types are shown as declared, as RabbitMQ shows them,
/// not as the type they route like (the UI listed an `x-delayed-message`
/// exchange as `direct`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_exchange_types_are_listed_as_declared() {
    let b = TestBroker::start().await;
    let delayed =
        json!({ "type": "x-delayed-message", "arguments": { "x-delayed-type": "topic" } });
    let (status, _) = b
        .api("PUT", "/api/exchanges/%2F/later", Some(delayed))
        .await;
    assert_eq!(status, 201);
    let dedup = json!({ "type": "x-message-deduplication", "arguments": { "x-cache-size": 10 } });
    let (status, _) = b.api("PUT", "/api/exchanges/%2F/once", Some(dedup)).await;
    assert_eq!(status, 201);
    let (_, later) = b.api("GET", "/api/exchanges/%2F/later", None).await;
    assert_eq!(later["type"], "x-delayed-message");
    assert_eq!(later["arguments"]["x-delayed-type"], "topic");
    let (_, all) = b
        .api(
            "GET",
            "/api/exchanges/%2F?name=once&columns=name,type",
            None,
        )
        .await;
    assert_eq!(
        all,
        json!([{ "name": "once", "type": "x-message-deduplication" }])
    );
}

trait IntoStatusJson {
    fn into_status_json(self) -> (u16, Value);
}

impl IntoStatusJson for (u16, String, String) {
    fn into_status_json(self) -> (u16, Value) {
        (self.0, serde_json::from_str(&self.2).unwrap_or(Value::Null))
    }
}
