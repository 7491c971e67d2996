//! Policies and operator policies end to end: set through the management
//! API as RabbitMQ's tools set them, with their effects seen by a real AMQP
//! client (lapin): limits applied at once to a queue that already holds
//! messages, TTLs, dead-lettering, delivery limits on a quorum queue,
//! alternate exchanges; precedence between policy, operator policy and
//! arguments; who may set them; restarts and definitions.

use crate::common;

use common::*;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::ExchangeKind;
use serde_json::{json, Value};

/// The bodies of every ready message, taken with no-ack.
async fn drain(ch: &lapin::Channel, queue: &str) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(m) = ch
        .basic_get(queue, BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        out.push(String::from_utf8_lossy(&m.delivery.data).into_owned());
    }
    out
}

/// Polls until `queue` has `n` ready messages.
async fn until_ready(ch: &lapin::Channel, queue: &str, n: u32) {
    within(&format!("{queue} to hold {n}"), async {
        while ready_count(ch, queue).await != n {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await;
}

async fn put_policy(b: &TestBroker, path: &str, body: Value) -> (u16, Value) {
    b.api("PUT", path, Some(body)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policy_api_validates_as_rabbitmq_does() {
    let b = TestBroker::start().await;
    let bad = [
        (json!({"definition": {"max-length": 1}}), "[{key_missing,pattern}]"),
        (
            json!({"pattern": "x", "definition": {"foo": 1}}),
            "Validation failed\n\n[{<<\"foo\">>,1}] are not recognised policy settings\n",
        ),
        (
            json!({"pattern": "x", "definition": {"max-length": -1}}),
            "Validation failed\n\n-1 is not a valid maximum length\n",
        ),
        (
            json!({"pattern": "x", "definition": {"max-length": 1}, "apply-to": "x"}),
            "Validation failed\n\napply-to 'x' unrecognised; should be 'queues', 'exchanges' or 'all'\n",
        ),
        (
            json!({"pattern": "x", "definition": {}}),
            "Validation failed\n\nno policy provided\n",
        ),
        (
            json!({"pattern": "x", "definition": {"max-length": 1}, "priority": "3"}),
            "Validation failed\n\npriority should be a number, actually was <<\"3\">>\n",
        ),
    ];
    for (body, reason) in bad {
        let (status, answer) = put_policy(&b, "/api/policies/%2F/p", body.clone()).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(
            answer,
            json!({"error": "bad_request", "reason": reason}),
            "{body}"
        );
    }
    let (status, answer) = put_policy(
        &b,
        "/api/policies/%2F/p",
        json!({"pattern": "(", "definition": {"max-length": 1}}),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        answer["reason"].as_str().unwrap().starts_with(
            "Validation failed\n\npattern should be regular expression but is invalid: "
        ),
        "{answer}"
    );
    // Operator policies take only the numeric limits.
    let (status, answer) = put_policy(
        &b,
        "/api/operator-policies/%2F/o",
        json!({"pattern": "x", "definition": {"dead-letter-exchange": "d"}}),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        answer["reason"]
            .as_str()
            .unwrap()
            .contains("are not recognised policy settings"),
        "{answer}"
    );

    let good = json!({"pattern": "^a", "definition": {"max-length": 5}});
    assert_eq!(
        put_policy(&b, "/api/policies/%2F/p", good.clone()).await.0,
        201
    );
    assert_eq!(put_policy(&b, "/api/policies/%2F/p", good).await.0, 204);
    let (status, p) = b.api("GET", "/api/policies/%2F/p", None).await;
    assert_eq!(status, 200);
    assert_eq!(
        p,
        json!({"vhost": "/", "name": "p", "pattern": "^a", "apply-to": "all",
               "definition": {"max-length": 5}, "priority": 0})
    );
    put_policy(
        &b,
        "/api/policies/%2F/first",
        json!({"pattern": "^b", "priority": -1, "apply-to": "quorum_queues",
               "definition": {"delivery-limit": 2}}),
    )
    .await;
    let (_, list) = b.api("GET", "/api/policies", None).await;
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["first", "p"], "by priority, lowest first");
    let (_, list) = b.api("GET", "/api/policies/%2F", None).await;
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert_eq!(b.api("GET", "/api/policies/nowhere", None).await.0, 404);

    assert_eq!(
        put_policy(
            &b,
            "/api/operator-policies/%2F/o",
            json!({"pattern": ".*", "definition": {"max-length": 3}})
        )
        .await
        .0,
        201
    );
    let (_, ops) = b.api("GET", "/api/operator-policies/%2F", None).await;
    assert_eq!(ops[0]["name"], "o");
    // RabbitMQ lists operator policies as runtime parameters too.
    let (_, params) = b.api("GET", "/api/parameters", None).await;
    assert_eq!(params[0]["component"], "operator_policy", "{params}");
    assert_eq!(params[0]["value"]["definition"], json!({"max-length": 3}));
    let (_, params) = b.api("GET", "/api/parameters/policy/%2F", None).await;
    assert_eq!(params.as_array().unwrap().len(), 2, "{params}");

    for path in ["/api/policies/%2F/p", "/api/operator-policies/%2F/o"] {
        assert_eq!(b.api("DELETE", path, None).await.0, 204);
        let (status, body) = b.api("DELETE", path, None).await;
        assert_eq!(
            (status, body),
            (
                404,
                json!({"error": "Object Not Found", "reason": "Not Found"})
            )
        );
        assert_eq!(b.api("GET", path, None).await.0, 404);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_limits_a_queue_that_holds_messages_at_once() {
    let b = TestBroker::start().await;
    let conn = b.lapin().await;
    let ch = confirm_channel(&conn).await;
    queue(&ch, "jobs", FieldTable::default()).await;
    for i in 1..=6 {
        publish_confirmed(&ch, "", "jobs", format!("m{i}").as_bytes()).await;
    }
    let (_, q) = b.api("GET", "/api/queues/%2F/jobs", None).await;
    assert_eq!(q["policy"], Value::Null);
    assert_eq!(q["operator_policy"], Value::Null);
    assert_eq!(q["effective_policy_definition"], json!({}));

    put_policy(
        &b,
        "/api/policies/%2F/short",
        json!({"pattern": "^jobs$", "apply-to": "queues", "definition": {"max-length": 2}}),
    )
    .await;
    // Applied before the PUT is answered: drop-head dropped m1..m4.
    assert_eq!(ready_count(&ch, "jobs").await, 2);
    let (_, q) = b.api("GET", "/api/queues/%2F/jobs", None).await;
    assert_eq!(q["policy"], "short");
    assert_eq!(q["effective_policy_definition"], json!({"max-length": 2}));
    assert_eq!(
        q["arguments"],
        json!({}),
        "declared arguments stay as they were"
    );
    assert_eq!(drain(&ch, "jobs").await, ["m5", "m6"]);

    // An operator policy caps the policy: the smaller limit wins.
    put_policy(
        &b,
        "/api/operator-policies/%2F/cap",
        json!({"pattern": ".*", "definition": {"max-length": 1}}),
    )
    .await;
    for i in 7..=9 {
        publish_confirmed(&ch, "", "jobs", format!("m{i}").as_bytes()).await;
    }
    let (_, q) = b.api("GET", "/api/queues/%2F/jobs", None).await;
    assert_eq!(q["operator_policy"], "cap");
    assert_eq!(q["effective_policy_definition"], json!({"max-length": 1}));
    assert_eq!(drain(&ch, "jobs").await, ["m9"]);

    // Deleting both restores what the queue was declared with.
    b.api("DELETE", "/api/policies/%2F/short", None).await;
    b.api("DELETE", "/api/operator-policies/%2F/cap", None)
        .await;
    for i in 10..=13 {
        publish_confirmed(&ch, "", "jobs", format!("m{i}").as_bytes()).await;
    }
    assert_eq!(ready_count(&ch, "jobs").await, 4);
    let (_, q) = b.api("GET", "/api/queues/%2F/jobs", None).await;
    assert_eq!(q["policy"], Value::Null);
    assert_eq!(q["effective_policy_definition"], json!({}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_argument_below_the_policy_limit_wins() {
    let b = TestBroker::start().await;
    let conn = b.lapin().await;
    let ch = confirm_channel(&conn).await;
    put_policy(
        &b,
        "/api/policies/%2F/roomy",
        json!({"pattern": "^capped", "definition": {"max-length": 10}}),
    )
    .await;
    queue(
        &ch,
        "capped",
        args(&[("x-max-length", AMQPValue::LongLongInt(1))]),
    )
    .await;
    for body in ["a", "b", "c"] {
        publish_confirmed(&ch, "", "capped", body.as_bytes()).await;
    }
    assert_eq!(drain(&ch, "capped").await, ["c"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policys_message_ttl_expires_messages() {
    let b = TestBroker::start().await;
    let conn = b.lapin().await;
    let ch = confirm_channel(&conn).await;
    fanout_into(&ch, "expired-x", "expired").await;
    put_policy(
        &b,
        "/api/policies/%2F/ttl",
        json!({"pattern": "^short-lived$",
               "definition": {"message-ttl": 30, "dead-letter-exchange": "expired-x"}}),
    )
    .await;
    queue(&ch, "short-lived", FieldTable::default()).await;
    publish_confirmed(&ch, "", "short-lived", b"soon gone").await;
    until_ready(&ch, "expired", 1).await;
    assert_eq!(ready_count(&ch, "short-lived").await, 0);
    assert_eq!(drain(&ch, "expired").await, ["soon gone"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policys_dead_letter_exchange_takes_rejected_messages() {
    let b = TestBroker::start().await;
    let conn = b.lapin().await;
    let ch = confirm_channel(&conn).await;
    fanout_into(&ch, "dlx", "failed").await;
    queue(&ch, "payments", FieldTable::default()).await;
    put_policy(
        &b,
        "/api/policies/%2F/dl",
        json!({"pattern": "^payments$", "apply-to": "queues",
               "definition": {"dead-letter-exchange": "dlx", "dead-letter-routing-key": "failed"}}),
    )
    .await;
    publish_confirmed(&ch, "", "payments", b"card declined").await;
    let m = ch
        .basic_get("payments", BasicGetOptions::default())
        .await
        .unwrap()
        .expect("a message");
    m.delivery
        .reject(BasicRejectOptions { requeue: false })
        .await
        .unwrap();
    until_ready(&ch, "failed", 1).await;
    let dead = ch
        .basic_get("failed", BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&dead.delivery.data[..], b"card declined");
    assert_eq!(dead.delivery.routing_key.as_str(), "failed");
    let headers = dead.delivery.properties.headers().clone().unwrap();
    assert!(
        headers.inner().contains_key("x-death"),
        "dead-lettered with x-death: {headers:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policys_delivery_limit_applies_to_quorum_queues_only() {
    let b = TestBroker::start().await;
    let conn = b.lapin().await;
    let ch = confirm_channel(&conn).await;
    fanout_into(&ch, "poison-x", "poison").await;
    put_policy(
        &b,
        "/api/policies/%2F/limit",
        json!({"pattern": "^work", "definition":
               {"delivery-limit": 1, "dead-letter-exchange": "poison-x"}}),
    )
    .await;
    ch.queue_declare(
        "work.quorum",
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args(&[("x-queue-type", s("quorum"))]),
    )
    .await
    .unwrap();
    queue(&ch, "work.classic", FieldTable::default()).await;
    let (_, q) = b.api("GET", "/api/queues/%2F/work.quorum", None).await;
    assert_eq!(q["policy"], "limit");
    let (_, q) = b.api("GET", "/api/queues/%2F/work.classic", None).await;
    assert_eq!(
        q["policy"],
        Value::Null,
        "delivery-limit is not a classic queue setting, so the policy does not apply"
    );

    publish_confirmed(&ch, "", "work.quorum", b"poison").await;
    // Delivered, requeued; delivered again, requeued: over the limit.
    for _ in 0..2 {
        let m = within("a delivery", async {
            loop {
                if let Some(m) = ch
                    .basic_get("work.quorum", BasicGetOptions::default())
                    .await
                    .unwrap()
                {
                    return m;
                }
            }
        })
        .await;
        m.delivery
            .nack(BasicNackOptions {
                requeue: true,
                multiple: false,
            })
            .await
            .unwrap();
    }
    until_ready(&ch, "poison", 1).await;
    assert_eq!(ready_count(&ch, "work.quorum").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exchange_gets_its_alternate_exchange_from_a_policy() {
    let b = TestBroker::start().await;
    let conn = b.lapin().await;
    let ch = confirm_channel(&conn).await;
    fanout_into(&ch, "unrouted", "lost").await;
    ch.exchange_declare(
        "orders",
        ExchangeKind::Direct,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let (_, x) = b.api("GET", "/api/exchanges/%2F/orders", None).await;
    assert!(
        x.get("policy").is_none(),
        "no policy field without one: {x}"
    );
    put_policy(
        &b,
        "/api/policies/%2F/ae",
        json!({"pattern": "^orders$", "apply-to": "exchanges",
               "definition": {"alternate-exchange": "unrouted"}}),
    )
    .await;
    let (_, x) = b.api("GET", "/api/exchanges/%2F/orders", None).await;
    assert_eq!(x["policy"], "ae");
    publish_confirmed(&ch, "orders", "nobody.bound", b"unroutable").await;
    assert_eq!(drain(&ch, "lost").await, ["unroutable"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policymakers_set_policies_in_their_vhosts_administrators_operator_policies() {
    let b = TestBroker::start().await;
    for (user, tags) in [("maker", "policymaker"), ("viewer", "management")] {
        let (status, _) = b
            .api(
                "PUT",
                &format!("/api/users/{user}"),
                Some(json!({"password": "pw", "tags": tags})),
            )
            .await;
        assert_eq!(status, 201);
        b.api(
            "PUT",
            &format!("/api/permissions/%2F/{user}"),
            Some(json!({"configure": ".*", "write": ".*", "read": ".*"})),
        )
        .await;
    }
    b.api("PUT", "/api/vhosts/other", None).await;
    let policy = json!({"pattern": ".*", "definition": {"max-length": 5}});
    let put = |user: &'static str, path: &'static str| {
        let b = &b;
        let policy = policy.clone();
        async move { b.api_as((user, "pw"), "PUT", path, Some(policy)).await.0 }
    };
    assert_eq!(put("maker", "/api/policies/%2F/p").await, 201);
    assert_eq!(put("viewer", "/api/policies/%2F/p").await, 401);
    assert_eq!(
        put("maker", "/api/policies/other/p").await,
        401,
        "no permissions in that vhost"
    );
    assert_eq!(put("maker", "/api/operator-policies/%2F/o").await, 401);
    let (status, list) = b
        .api_as(("viewer", "pw"), "GET", "/api/policies", None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        list[0]["name"], "p",
        "management users see their vhosts' policies"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_survive_a_restart_and_apply_to_recovered_queues() {
    let b = TestBroker::start().await;
    {
        let conn = b.lapin().await;
        let ch = conn.create_channel().await.unwrap();
        ch.queue_declare(
            "kept",
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
        put_policy(
            &b,
            "/api/policies/%2F/keep",
            json!({"pattern": "^kept$", "priority": 3, "definition": {"max-length": 1}}),
        )
        .await;
        put_policy(
            &b,
            "/api/operator-policies/%2F/cap",
            json!({"pattern": ".*", "definition": {"message-ttl": 60000}}),
        )
        .await;
        conn.close(200, "bye").await.unwrap();
    }
    let b = b.restart().await;
    let (status, p) = b.api("GET", "/api/policies/%2F/keep", None).await;
    assert_eq!(status, 200);
    assert_eq!(p["priority"], 3);
    let (_, q) = b.api("GET", "/api/queues/%2F/kept", None).await;
    assert_eq!(q["policy"], "keep");
    assert_eq!(q["operator_policy"], "cap");
    assert_eq!(
        q["effective_policy_definition"],
        json!({"max-length": 1, "message-ttl": 60000})
    );
    let conn = b.lapin().await;
    let ch = confirm_channel(&conn).await;
    for body in ["a", "b"] {
        publish_confirmed(&ch, "", "kept", body.as_bytes()).await;
    }
    assert_eq!(drain(&ch, "kept").await, ["b"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn definitions_carry_policies_and_operator_policies_both_ways() {
    let b = TestBroker::start().await;
    put_policy(
        &b,
        "/api/policies/%2F/dlx",
        json!({"pattern": "^orders", "apply-to": "queues", "priority": 1,
               "definition": {"dead-letter-exchange": "dead"}}),
    )
    .await;
    put_policy(
        &b,
        "/api/operator-policies/%2F/cap",
        json!({"pattern": ".*", "definition": {"max-length-bytes": 1000000}}),
    )
    .await;
    let (_, exported) = b.api("GET", "/api/definitions", None).await;
    assert_eq!(
        exported["policies"],
        json!([{"vhost": "/", "name": "dlx", "pattern": "^orders", "apply-to": "queues",
                "definition": {"dead-letter-exchange": "dead"}, "priority": 1}])
    );
    assert_eq!(
        exported["parameters"],
        json!([{"value": {"pattern": ".*", "definition": {"max-length-bytes": 1000000},
                          "priority": 0, "apply-to": "all"},
                "vhost": "/", "component": "operator_policy", "name": "cap"}])
    );
    let other = TestBroker::start().await;
    let (status, answer) = other
        .api("POST", "/api/definitions", Some(exported.clone()))
        .await;
    assert_eq!(status, 201, "{answer}");
    let (_, again) = other.api("GET", "/api/definitions", None).await;
    assert_eq!(again["policies"], exported["policies"]);
    assert_eq!(again["parameters"], exported["parameters"]);

    // A file with an invalid policy is refused, naming it.
    let (status, answer) = other
        .api(
            "POST",
            "/api/definitions",
            Some(
                json!({"policies": [{"vhost": "/", "name": "bad", "pattern": "x",
                                      "definition": {"max-length": -1}}]}),
            ),
        )
        .await;
    assert_eq!(status, 400);
    assert!(
        answer["reason"].as_str().unwrap().contains("policy 'bad'"),
        "{answer}"
    );
}
