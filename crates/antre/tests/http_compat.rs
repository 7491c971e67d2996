//! The management API takes what RabbitMQ's takes: the bodies rabbitmqadmin
//! and pyrabbit2 send (booleans and numbers as strings, `arguments: []`),
//! RabbitMQ's listing parameters (sort, pages, name regex), and the
//! endpoints whose concept antre has with nothing in them (parameters,
//! limits). The shapes here were checked against RabbitMQ 3.10.

use crate::common;

use common::TestBroker;
use serde_json::{json, Value};

/// Regression: rabbitmqadmin's `declare queue` and `declare exchange` send
/// every boolean as a string and failed with `invalid type: string
/// "false", expected a boolean`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmqadmin_bodies_with_string_booleans_declare() {
    let b = TestBroker::start().await;
    let (status, body) = b
        .api(
            "PUT",
            "/api/queues/%2F/from-admin",
            Some(json!({
                "name": "from-admin", "vhost": "/", "auto_delete": "false",
                "durable": "false", "arguments": {}
            })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (_, q) = b.api("GET", "/api/queues/%2F/from-admin", None).await;
    assert_eq!(q["durable"], false, "\"false\" means false: {q}");
    let (status, body) = b
        .api(
            "PUT",
            "/api/exchanges/%2F/admin-x",
            Some(json!({
                "name": "admin-x", "vhost": "/", "type": "topic", "auto_delete": "false",
                "durable": "true", "internal": "false", "arguments": {}
            })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (_, x) = b.api("GET", "/api/exchanges/%2F/admin-x", None).await;
    assert_eq!(
        (x["durable"].clone(), x["internal"].clone()),
        (json!(true), json!(false))
    );

    // What RabbitMQ refuses stays refused.
    let (status, body) = b
        .api(
            "PUT",
            "/api/queues/%2F/bad",
            Some(json!({ "durable": "yes" })),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["reason"].as_str().unwrap().contains("true or false"),
        "{body}"
    );
}

/// Regression: rabbitmqadmin's `get` sends `"count": "1"` and failed with
/// `invalid type: string "1", expected usize`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmqadmin_get_with_a_string_count_gets() {
    let b = TestBroker::start().await;
    b.api("PUT", "/api/queues/%2F/inbox", None).await;
    for n in ["one", "two", "three"] {
        b.api(
            "POST",
            "/api/exchanges/%2F/amq.default/publish",
            Some(json!({
                "routing_key": "inbox", "payload": n, "payload_encoding": "string",
                "properties": { "delivery_mode": "2" }, "vhost": "/", "exchange": "amq.default"
            })),
        )
        .await;
    }
    let (status, got) = b
        .api(
            "POST",
            "/api/queues/%2F/inbox/get",
            Some(json!({
                "count": "2", "ackmode": "ack_requeue_false", "encoding": "auto",
                "truncate": "50000", "vhost": "/", "queue": "inbox"
            })),
        )
        .await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(got.as_array().unwrap().len(), 2, "{got}");
    assert_eq!(got[0]["payload"], "one");
    assert_eq!(
        got[0]["properties"]["delivery_mode"], 2,
        "a string delivery_mode is the number"
    );

    // pyrabbit2 sends `requeue` beside `ackmode`; without ackmode it decides.
    let (_, got) = b
        .api(
            "POST",
            "/api/queues/%2F/inbox/get",
            Some(json!({ "count": 1, "requeue": false, "encoding": "auto" })),
        )
        .await;
    assert_eq!(got[0]["payload"], "three");
    let (_, q) = b.api("GET", "/api/queues/%2F/inbox", None).await;
    assert_eq!(q["messages"], 0, "requeue=false took it for good: {q}");
}

/// Regression: pyrabbit2's `create_exchange` and `create_binding` send
/// `"arguments": []` (and a null routing key when none is given).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_argument_lists_are_empty_tables() {
    let b = TestBroker::start().await;
    let (status, body) = b
        .api(
            "PUT",
            "/api/exchanges/%2F/py-x",
            Some(json!({
                "type": "direct", "auto_delete": false, "durable": true,
                "internal": false, "arguments": []
            })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = b
        .api(
            "PUT",
            "/api/queues/%2F/py-q",
            Some(json!({ "durable": true, "arguments": [] })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = b
        .api(
            "POST",
            "/api/bindings/%2F/e/py-x/q/py-q",
            Some(json!({ "routing_key": "k", "arguments": [] })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = b
        .api(
            "POST",
            "/api/bindings/%2F/e/py-x/q/py-q",
            Some(json!({ "routing_key": null, "arguments": [] })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (_, bindings) = b.api("GET", "/api/bindings/%2F/e/py-x/q/py-q", None).await;
    let mut keys: Vec<&str> = bindings
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["routing_key"].as_str().unwrap())
        .collect();
    keys.sort_unstable();
    assert_eq!(keys, ["", "k"], "{bindings}");
    let (status, _) = b
        .api(
            "PUT",
            "/api/queues/%2F/bad-args",
            Some(json!({ "arguments": ["x-max-length", 1] })),
        )
        .await;
    assert_eq!(status, 400, "a non-empty list is not a table");
}

fn names(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("a list: {v}"))
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_sort_filter_and_page_as_rabbitmq_does() {
    let b = TestBroker::start().await;
    for (name, depth) in [("orders", 3), ("audit", 1), ("Outbox", 2), ("mail", 0)] {
        b.api("PUT", &format!("/api/queues/%2F/{name}"), None).await;
        for _ in 0..depth {
            b.api(
                "POST",
                "/api/exchanges/%2F/amq.default/publish",
                Some(json!({ "routing_key": name, "payload": "x" })),
            )
            .await;
        }
    }
    let (_, sorted) = b
        .api("GET", "/api/queues?sort=messages&sort_reverse=true", None)
        .await;
    assert_eq!(names(&sorted), ["orders", "Outbox", "audit", "mail"]);
    let (_, by_name) = b.api("GET", "/api/queues/%2F?sort=name", None).await;
    assert_eq!(names(&by_name), ["Outbox", "audit", "mail", "orders"]);

    let (status, page) = b
        .api("GET", "/api/queues?page=2&page_size=3&sort=name", None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        page,
        json!({
            "filtered_count": 4, "item_count": 1, "items": [page["items"][0].clone()],
            "page": 2, "page_count": 2, "page_size": 3, "total_count": 4
        })
    );
    assert_eq!(page["items"][0]["name"], "orders");

    let (_, matched) = b
        .api(
            "GET",
            "/api/queues?page=1&name=%5Eo&use_regex=true&columns=name,messages",
            None,
        )
        .await;
    assert_eq!(matched["filtered_count"], 2, "{matched}");
    assert_eq!(matched["total_count"], 4);
    assert_eq!(
        matched["items"],
        json!([{ "name": "Outbox", "messages": 2 }, { "name": "orders", "messages": 3 }])
    );
    let (_, substring) = b.api("GET", "/api/queues?name=OUT", None).await;
    assert_eq!(names(&substring), ["Outbox"], "substring, ignoring case");

    for (path, error) in [
        ("/api/exchanges?page=0", "invalid_pagination_parameters"),
        (
            "/api/exchanges?page=1&page_size=501",
            "invalid_pagination_parameters",
        ),
        ("/api/exchanges?page=x", "bad_request"),
        ("/api/exchanges?page=9", "page_out_of_range"),
    ] {
        let (status, body) = b.api("GET", path, None).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some(error)),
            "{path}: {body}"
        );
    }
    for path in [
        "/api/vhosts?page=1",
        "/api/connections?page=1",
        "/api/channels?page=1",
    ] {
        let (status, body) = b.api("GET", path, None).await;
        assert_eq!(status, 200);
        assert!(body["items"].is_array(), "{path} pages: {body}");
    }
    let (_, bindings) = b.api("GET", "/api/bindings?page=1", None).await;
    assert!(
        bindings.is_array(),
        "bindings are not paged, as in RabbitMQ"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameters_and_limits_are_empty_with_rabbitmqs_shapes_when_none_is_set() {
    let b = TestBroker::start().await;
    for path in [
        "/api/parameters",
        "/api/parameters/shovel",
        "/api/parameters/federation-upstream/%2F",
        "/api/global-parameters",
        "/api/vhost-limits",
        "/api/vhost-limits/%2F",
        "/api/user-limits",
        "/api/user-limits/guest",
        "/api/extensions",
    ] {
        let (status, body) = b.api("GET", path, None).await;
        assert_eq!((status, body), (200, json!([])), "{path}");
    }
    for path in [
        "/api/parameters/shovel/nowhere",
        "/api/parameters/shovel/%2F/s",
        "/api/global-parameters/cluster_name",
        "/api/vhost-limits/nowhere",
        "/api/user-limits/nobody",
    ] {
        let (status, _) = b.api("GET", path, None).await;
        assert_eq!(status, 404, "{path}");
    }
    let (status, body) = b
        .api(
            "PUT",
            "/api/parameters/shovel/%2F/s",
            Some(json!({ "value": {} })),
        )
        .await;
    assert_eq!(status, 400);
    assert!(
        body["reason"]
            .as_str()
            .unwrap()
            .contains("component shovel not found"),
        "{body}"
    );
    let (status, body) = b.api("GET", "/api/cluster-name", None).await;
    assert_eq!(status, 200);
    assert!(
        body["name"].as_str().unwrap().starts_with("antre@"),
        "{body}"
    );
}

/// Regression: the management API deleted, purged, emptied by a get,
/// bound and unbound an exclusive queue from under its connection (a
/// DELETE answered 204, consumer and all). RabbitMQ 3.10's API refuses
/// each with 400 and the reason its AMQP gives another connection (the
/// get's with the channel error's code, as its get runs over AMQP),
/// whatever if-unused and if-empty say, and so does a PUT of its name; a
/// publish to it is routed. The queue is its connection's until that
/// connection closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exclusive_queue_is_its_connections_alone() {
    use futures::StreamExt;
    use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
    const LOCKED: &str = "cannot obtain exclusive access to locked queue 'mine' in vhost '/'. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration.";
    let b = TestBroker::start().await;
    let conn = b.lapin().await;
    let ch = conn.create_channel().await.expect("channel");
    let exclusive = QueueDeclareOptions {
        exclusive: true,
        ..Default::default()
    };
    ch.queue_declare("mine", exclusive, Default::default())
        .await
        .expect("exclusive declare");
    ch.queue_bind(
        "mine",
        "amq.fanout",
        "",
        QueueBindOptions::default(),
        Default::default(),
    )
    .await
    .expect("queue.bind");
    let confirms = common::confirm_channel(&conn).await;
    common::publish_confirmed(&confirms, "", "mine", b"first").await;
    let refused = [
        ("DELETE", "/api/queues/%2F/mine", None),
        ("DELETE", "/api/queues/%2F/mine?if-unused=true", None),
        ("DELETE", "/api/queues/%2F/mine?if-empty=true", None),
        ("DELETE", "/api/queues/%2F/mine/contents", None),
        (
            "PUT",
            "/api/queues/%2F/mine",
            Some(json!({"durable": false})),
        ),
        (
            "POST",
            "/api/bindings/%2F/e/amq.direct/q/mine",
            Some(json!({"routing_key": "k"})),
        ),
        ("DELETE", "/api/bindings/%2F/e/amq.fanout/q/mine/~", None),
    ];
    for (method, path, body) in refused {
        let (status, answer) = b.api(method, path, body).await;
        assert_eq!(status, 400, "{method} {path}: {answer}");
        assert_eq!(answer["error"], "bad_request", "{answer}");
        assert_eq!(answer["reason"], LOCKED, "{method} {path}");
    }
    let get = json!({"count": 5, "ackmode": "ack_requeue_false", "encoding": "auto"});
    let (status, answer) = b.api("POST", "/api/queues/%2F/mine/get", Some(get)).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["reason"], format!("405 RESOURCE_LOCKED - {LOCKED}"));
    // Routed to, as RabbitMQ's API does.
    let publish = json!({"properties": {}, "routing_key": "mine", "payload": "second", "payload_encoding": "string"});
    let (status, answer) = b
        .api(
            "POST",
            "/api/exchanges/%2F/amq.default/publish",
            Some(publish),
        )
        .await;
    assert_eq!((status, &answer["routed"]), (200, &json!(true)), "{answer}");
    // Still there, bound and whole: its consumer gets both messages, and a
    // publish through the fanout binding.
    let (status, q) = b.api("GET", "/api/queues/%2F/mine", None).await;
    assert_eq!(status, 200, "{q}");
    common::publish_confirmed(&confirms, "amq.fanout", "", b"third").await;
    let mut consumer = ch
        .basic_consume(
            "mine",
            "held",
            BasicConsumeOptions::default(),
            Default::default(),
        )
        .await
        .expect("consume");
    for expected in [&b"first"[..], b"second", b"third"] {
        let got = common::within("a delivery", consumer.next())
            .await
            .expect("a delivery")
            .expect("not an error");
        assert_eq!(got.data, expected);
    }
    // Its connection closed, it is gone (before close-ok, as the spec
    // orders): 404 as for any missing queue.
    conn.close(200, "done").await.expect("close");
    let (status, body) = b.api("DELETE", "/api/queues/%2F/mine", None).await;
    assert_eq!(status, 404, "{body}");
}

/// Regression: a `PUT` of a built-in exchange as it is (what
/// `rabbitmqadmin declare exchange name=amq.topic type=topic` and
/// provisioning tools send) answered 400 "reserved". RabbitMQ 3.10 answers
/// 204, as AMQP's exchange.declare of one as it is is declare-ok; an
/// inequivalent one is 400, and a new amq.* name stays refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_built_in_exchange_may_be_declared_again_as_it_is() {
    let b = TestBroker::start().await;
    for (name, kind) in [("amq.direct", "direct"), ("amq.topic", "topic")] {
        let path = format!("/api/exchanges/%2F/{name}");
        let body = json!({"type": kind, "durable": true});
        let (status, answer) = b.api("PUT", &path, Some(body)).await;
        assert_eq!(status, 204, "{name}: {answer}");
    }
    let (status, answer) = b
        .api(
            "PUT",
            "/api/exchanges/%2F/amq.direct",
            Some(json!({"type": "fanout"})),
        )
        .await;
    assert_eq!(status, 400, "inequivalent: {answer}");
    let (status, answer) = b
        .api(
            "PUT",
            "/api/exchanges/%2F/amq.mine",
            Some(json!({"type": "direct"})),
        )
        .await;
    assert_eq!(status, 400, "a new amq.* name: {answer}");
    let (_, x) = b.api("GET", "/api/exchanges/%2F/amq.direct", None).await;
    assert_eq!(x["type"], "direct", "{x}");
}

/// Regression: `GET /api/nodes/{node}` (one node's memory and alarms, as
/// monitoring asks) and `POST /api/vhosts/{vhost}/start/{node}` answered
/// 404, a vhost lacked RabbitMQ 3.10's `metadata` and
/// `default_queue_type`, and a node its `os_pid`, `processors` and
/// `db_dir`. As 3.10 answers here: the node's row, 204 for a
/// running vhost (an antre vhost has nothing of its own to fail and
/// restart), and the fields.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_and_vhost_endpoints_answer_as_rabbitmq_does() {
    let b = TestBroker::start().await;
    let (_, overview) = b.api("GET", "/api/overview", None).await;
    let node = overview["node"]
        .as_str()
        .expect("the node's name")
        .to_owned();
    let (status, row) = b.api("GET", &format!("/api/nodes/{node}"), None).await;
    assert_eq!(status, 200, "{row}");
    assert_eq!(row["name"], node.as_str());
    assert_eq!(row["running"], true);
    assert_eq!(row["mem_alarm"], false);
    // RabbitMQ's node fields of the OS process, as dashboards read them.
    assert_eq!(row["os_pid"], std::process::id().to_string(), "{row}");
    assert!(row["processors"].as_u64().is_some_and(|n| n >= 1), "{row}");
    assert!(row["db_dir"].is_string(), "{row}");
    let (status, _) = b.api("GET", "/api/nodes/nosuch@host", None).await;
    assert_eq!(status, 404);
    let (status, vhost) = b.api("GET", "/api/vhosts/%2F", None).await;
    assert_eq!(status, 200);
    assert_eq!(vhost["default_queue_type"], "classic", "{vhost}");
    assert_eq!(
        vhost["metadata"],
        json!({"description": "", "tags": []}),
        "{vhost}"
    );
    let start = format!("/api/vhosts/%2F/start/{node}");
    let (status, answer) = b.api("POST", &start, None).await;
    assert_eq!(status, 204, "{answer}");
    for path in [
        "/api/vhosts/%2F/start/nosuch@host".to_owned(),
        format!("/api/vhosts/nosuch/start/{node}"),
    ] {
        let (status, _) = b.api("POST", &path, None).await;
        assert_eq!(status, 404, "{path}");
    }
}

/// Regression: a refused declare or bind through the API gave the AMQP
/// reply name in its reason (`PRECONDITION_FAILED - inequivalent arg ...`)
/// and `precondition_failed` as its error. RabbitMQ 3.10's API does these
/// itself, not over an AMQP channel, and answers as here (recorded
/// against it): `bad_request` and the details alone; 404 `not_found` for
/// a binding's missing end; and a publish to a missing exchange, which it
/// makes over a channel, 400 with the channel error (antre answered 404).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_declares_and_binds_are_worded_as_rabbitmq_words_them() {
    let b = TestBroker::start().await;
    let put = |path: &'static str, body: Value| {
        let b = &b;
        async move { b.api("PUT", path, Some(body)).await }
    };
    assert_eq!(
        put("/api/queues/%2F/pq", json!({"durable": true})).await.0,
        201
    );
    assert_eq!(
        put("/api/exchanges/%2F/px", json!({"type": "topic"}))
            .await
            .0,
        201
    );
    let cases = [
        (
            put("/api/queues/%2F/pq", json!({"durable": false})).await,
            400,
            "bad_request",
            "inequivalent arg 'durable' for queue 'pq' in vhost '/': received 'false' but current is 'true'",
        ),
        (
            put("/api/exchanges/%2F/px", json!({"type": "fanout"})).await,
            400,
            "bad_request",
            "inequivalent arg 'type' for exchange 'px' in vhost '/': received 'fanout' but current is 'topic'",
        ),
        (
            put("/api/exchanges/%2F/py", json!({"type": "nosuch"})).await,
            400,
            "bad_request",
            "unknown exchange type 'nosuch'",
        ),
        (
            b.api(
                "POST",
                "/api/bindings/%2F/e/missing-x/q/pq",
                Some(json!({"routing_key": "k"})),
            )
            .await,
            404,
            "not_found",
            "no exchange 'missing-x' in vhost '/'",
        ),
        (
            b.api(
                "POST",
                "/api/bindings/%2F/e/amq.direct/q/missing-q",
                Some(json!({"routing_key": "k"})),
            )
            .await,
            404,
            "not_found",
            "no queue 'missing-q' in vhost '/'",
        ),
    ];
    for ((status, body), want_status, error, reason) in cases {
        assert_eq!(
            (status, body),
            (want_status, json!({"error": error, "reason": reason}))
        );
    }
    // A publish RabbitMQ's API makes over an AMQP channel: 400 with the
    // channel error's code and text (before: 404).
    let publish =
        json!({"properties": {}, "routing_key": "k", "payload": "x", "payload_encoding": "string"});
    let answer = b
        .api("POST", "/api/exchanges/%2F/missing/publish", Some(publish))
        .await;
    let reason = "404 NOT_FOUND - no exchange 'missing' in vhost '/'";
    assert_eq!(
        answer,
        (400, json!({"error": "bad_request", "reason": reason}))
    );
}

/// Regression: a channel's listing lacked RabbitMQ's `confirm` and
/// `transactional`, which its UI shows as the channel's mode and
/// monitoring reads to tell confirming publishers apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_shows_its_confirm_or_tx_mode() {
    use lapin::options::ConfirmSelectOptions;
    let b = TestBroker::start().await;
    let conn = b.lapin().await;
    let plain = conn.create_channel().await.expect("channel");
    let confirming = conn.create_channel().await.expect("channel");
    let transacted = conn.create_channel().await.expect("channel");
    confirming
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    transacted.tx_select().await.expect("tx.select");
    let (_, channels) = b.api("GET", "/api/channels", None).await;
    let modes: Vec<(u64, bool, bool)> = channels
        .as_array()
        .expect("a list")
        .iter()
        .map(|c| {
            let flag = |k: &str| c[k].as_bool().expect("a boolean");
            (
                c["number"].as_u64().expect("a number"),
                flag("confirm"),
                flag("transactional"),
            )
        })
        .collect();
    let mut want = vec![
        (u64::from(plain.id()), false, false),
        (u64::from(confirming.id()), true, false),
        (u64::from(transacted.id()), false, true),
    ];
    let mut got = modes;
    want.sort_unstable();
    got.sort_unstable();
    assert_eq!(got, want);
}
