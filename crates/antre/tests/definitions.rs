//! Definitions files as RabbitMQ writes them: a file exported from RabbitMQ
//! 3.10.8 (users, a vhost, permissions, topic permissions, a policy, an
//! operator policy, limits, quorum/stream/classic queues, an exchange, a
//! binding, global parameters) is imported section by section, and nothing
//! antre cannot apply is dropped silently.

use crate::common;

use common::{RawClient, TestBroker};
use serde_json::{json, Value};

/// Exported by `GET /api/definitions` from a RabbitMQ 3.10.8 node.
const RABBITMQ_EXPORT: &str = include_str!("fixtures/rabbitmq-3.10-definitions.json");

fn export() -> Value {
    serde_json::from_str(RABBITMQ_EXPORT).expect("the fixture is JSON")
}

fn names(list: &Value, key: &str) -> Vec<String> {
    let mut v: Vec<String> = list
        .as_array()
        .unwrap_or_else(|| panic!("a list: {list}"))
        .iter()
        .map(|o| o[key].as_str().unwrap_or_default().to_owned())
        .collect();
    v.sort();
    v
}

/// The export with what antre cannot apply: a federation upstream (a
/// plugin's parameter) and a global parameter of a plugin.
fn export_with_plugins() -> Value {
    let mut defs = export();
    defs["parameters"]
        .as_array_mut()
        .expect("parameters")
        .push(json!({
            "value": { "uri": "amqp://upstream" },
            "vhost": "shop",
            "component": "federation-upstream",
            "name": "origin"
        }));
    defs["global_parameters"]
        .as_array_mut()
        .expect("global parameters")
        .push(json!({ "name": "shovel_defaults", "value": {} }));
    defs
}

/// What antre cannot apply from [`export_with_plugins`], as the import
/// names it.
const UNSUPPORTED: &[&str] = &[
    "parameter 'origin' of component 'federation-upstream'",
    "global parameter 'shovel_defaults'",
];

#[tokio::test]
async fn an_import_antre_cannot_apply_whole_fails_listed_and_changes_nothing() {
    let b = TestBroker::start().await;
    let (status, body) = b
        .api("POST", "/api/definitions", Some(export_with_plugins()))
        .await;
    assert_eq!(status, 400, "{body}");
    let reason = body["reason"].as_str().unwrap_or_default();
    for item in UNSUPPORTED {
        assert!(reason.contains(item), "{item} not in {reason}");
    }
    assert!(reason.contains("skip_unsupported=true"), "{reason}");
    let (_, vhosts) = b.api("GET", "/api/vhosts", None).await;
    assert_eq!(names(&vhosts, "name"), ["/"], "nothing was created");
    let (_, users) = b.api("GET", "/api/users", None).await;
    assert_eq!(names(&users, "name"), ["guest"]);

    let (status, body) = b
        .api(
            "POST",
            "/api/definitions?skip_unsupported=maybe",
            Some(export_with_plugins()),
        )
        .await;
    assert_eq!(status, 400, "{body}");
}

#[tokio::test]
async fn a_rabbitmq_export_imports_every_section_antre_has_and_lists_the_rest() {
    let b = TestBroker::start().await;
    // RabbitMQ's own export, as it is, imports whole: its cluster name
    // too (which failed it, before, without skip_unsupported).
    let (status, answer) = b.api("POST", "/api/definitions", Some(export())).await;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(answer["skipped"], json!([]), "{answer}");
    let (_, named) = b.api("GET", "/api/cluster-name", None).await;
    assert_eq!(named["name"], "rabbit@prod", "{named}");

    let b = TestBroker::start().await;
    let (status, answer) = b
        .api(
            "POST",
            "/api/definitions?skip_unsupported=true",
            Some(export_with_plugins()),
        )
        .await;
    assert_eq!(status, 201, "{answer}");
    let skipped: Vec<&str> = answer["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(skipped.len(), UNSUPPORTED.len(), "{skipped:?}");
    for item in UNSUPPORTED {
        assert!(
            skipped.iter().any(|s| s.starts_with(item)),
            "{item} not in {skipped:?}"
        );
    }
    assert!(
        answer["ignored"]
            .to_string()
            .contains("internal_cluster_id"),
        "{answer}"
    );
    assert_eq!(
        (
            &answer["vhosts"],
            &answer["users"],
            &answer["exchanges"],
            &answer["queues"],
            &answer["bindings"]
        ),
        (&json!(2), &json!(2), &json!(1), &json!(3), &json!(1))
    );

    let b = b.restart().await;
    let (_, named) = b.api("GET", "/api/cluster-name", None).await;
    assert_eq!(
        named["name"], "rabbit@prod",
        "kept across a restart: {named}"
    );
    // bob's password hash came from RabbitMQ: his password works here.
    RawClient::open_as(b.addr(), "bob", "pw", "shop")
        .await
        .expect("bob logs in with the password he had in RabbitMQ");
    let (_, bob) = b.api("GET", "/api/users/bob", None).await;
    assert_eq!(bob["tags"], json!(["monitoring"]), "{bob}");
    let (_, perm) = b.api("GET", "/api/permissions/shop/bob", None).await;
    assert_eq!(
        (&perm["configure"], &perm["write"], &perm["read"]),
        (&json!(".*"), &json!(".*"), &json!("^r"))
    );
    let (_, topic) = b.api("GET", "/api/topic-permissions/shop/bob", None).await;
    assert_eq!(topic[0]["write"], "^a", "{topic}");
    let (_, limits) = b.api("GET", "/api/vhost-limits/shop", None).await;
    assert_eq!(limits[0]["value"], json!({ "max-queues": 100 }), "{limits}");
    let (_, limits) = b.api("GET", "/api/user-limits/bob", None).await;
    assert_eq!(
        limits[0]["value"],
        json!({ "max-channels": 10 }),
        "{limits}"
    );

    let (_, queues) = b.api("GET", "/api/queues/shop", None).await;
    let kinds: Vec<(String, String)> = queues
        .as_array()
        .unwrap()
        .iter()
        .map(|q| {
            (
                q["name"].as_str().unwrap().to_owned(),
                q["type"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        kinds.contains(&("orders".into(), "quorum".into())),
        "a quorum queue stays quorum: {kinds:?}"
    );
    assert!(kinds.contains(&("events".into(), "stream".into())));
    assert!(kinds.contains(&("classic".into(), "classic".into())));
    let (_, exchange) = b.api("GET", "/api/exchanges/shop/dlx", None).await;
    assert_eq!(exchange["type"], "fanout");

    // The policy and the operator policy, applied where RabbitMQ applies
    // them: the operator policy's max-length is not for streams.
    let (_, policy) = b.api("GET", "/api/policies/shop/dlx", None).await;
    assert_eq!(
        policy["definition"],
        json!({ "dead-letter-exchange": "dlx", "message-ttl": 60000 })
    );
    let (_, cap) = b.api("GET", "/api/operator-policies/shop/cap", None).await;
    assert_eq!(cap["definition"], json!({ "max-length": 1000 }), "{cap}");
    let applied: Vec<(String, Value, Value)> = queues
        .as_array()
        .unwrap()
        .iter()
        .map(|q| {
            (
                q["name"].as_str().unwrap().to_owned(),
                q["policy"].clone(),
                q["operator_policy"].clone(),
            )
        })
        .collect();
    assert!(applied.contains(&("orders".into(), json!("dlx"), json!("cap"))));
    assert!(applied.contains(&("classic".into(), Value::Null, json!("cap"))));
    assert!(applied.contains(&("events".into(), Value::Null, Value::Null)));
    let (_, bindings) = b
        .api("GET", "/api/bindings/shop/e/dlx/q/classic", None)
        .await;
    assert_eq!(bindings[0]["routing_key"], "x", "{bindings}");
}

#[tokio::test]
async fn a_skipped_exchange_takes_its_bindings_with_it_and_the_rest_lands() {
    let b = TestBroker::start().await;
    let file = json!({
        "exchanges": [
            { "name": "hash", "vhost": "/", "type": "x-consistent-hash", "durable": true },
            { "name": "ok", "vhost": "/", "type": "topic", "durable": true }
        ],
        "queues": [{ "name": "q", "vhost": "/", "durable": true }],
        "bindings": [
            { "source": "hash", "vhost": "/", "destination": "q", "destination_type": "queue", "routing_key": "1" },
            { "source": "ok", "vhost": "/", "destination": "q", "destination_type": "queue", "routing_key": "a.#" }
        ],
        "policies": [
            { "name": "fed", "vhost": "/", "pattern": ".*", "definition": { "federation-upstream-set": "all" } },
            { "name": "short", "vhost": "/", "pattern": "^q$", "apply-to": "queues", "definition": { "max-length": 5 } }
        ],
        "shovels": []
    });
    let (status, body) = b.api("POST", "/api/definitions", Some(file.clone())).await;
    assert_eq!(status, 400, "{body}");
    let reason = body["reason"].as_str().unwrap();
    assert!(reason.contains("exchange 'hash' in vhost '/'"), "{reason}");
    assert!(reason.contains("section 'shovels'"), "{reason}");
    assert!(
        reason.contains("policy 'fed' in vhost '/'") && reason.contains("not recognised"),
        "a policy for a plugin antre lacks: {reason}"
    );
    let (status, _) = b.api("GET", "/api/exchanges/%2F/ok", None).await;
    assert_eq!(status, 404, "nothing was created");

    let (status, body) = b
        .api("POST", "/api/definitions?skip_unsupported=true", Some(file))
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        (&body["bindings"], &body["policies"]),
        (&json!(1), &json!(1)),
        "{body}"
    );
    let (_, q) = b.api("GET", "/api/queues/%2F/q", None).await;
    assert_eq!(q["policy"], "short", "{q}");
    let (_, bindings) = b.api("GET", "/api/queues/%2F/q/bindings", None).await;
    assert_eq!(
        names(&bindings, "source"),
        ["", "ok"],
        "the default binding and ok's"
    );
}
