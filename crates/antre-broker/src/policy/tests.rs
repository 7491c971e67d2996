use antre_amqp::FieldValue;
use serde_json::json;

use super::*;

fn body(v: Value) -> Map<String, Value> {
    v.as_object().expect("an object").clone()
}

fn parse(kind: PolicyKind, v: Value) -> Result<Policy, PolicyError> {
    Policy::parse(kind, "/", "p", &body(v))
}

fn policy(name: &str, pattern: &str, priority: i64, apply_to: &str, def: Value) -> Policy {
    Policy::parse(
        PolicyKind::Policy,
        "/",
        name,
        &body(json!({"pattern": pattern, "priority": priority, "apply-to": apply_to, "definition": def})),
    )
    .unwrap()
}

fn operator(name: &str, pattern: &str, def: Value) -> Policy {
    Policy::parse(
        PolicyKind::Operator,
        "/",
        name,
        &body(json!({"pattern": pattern, "definition": def})),
    )
    .unwrap()
}

fn reason(r: Result<Policy, PolicyError>) -> String {
    r.unwrap_err().to_string()
}

#[test]
fn defaults_are_priority_0_and_apply_to_all() {
    let p = parse(
        PolicyKind::Policy,
        json!({"pattern": "^q", "definition": {"max-length": 5}}),
    )
    .unwrap();
    assert_eq!(p.priority, Number::from(0));
    assert_eq!(p.apply_to, ApplyTo::All);
    let d = serde_json::to_value(p.to_def()).unwrap();
    assert_eq!(
        d,
        json!({"vhost": "/", "name": "p", "pattern": "^q", "apply-to": "all",
               "definition": {"max-length": 5}, "priority": 0})
    );
}

#[test]
fn validation_texts_are_rabbitmqs() {
    let cases = [
        (json!({"definition": {"max-length": 1}}), "[{key_missing,pattern}]"),
        (json!({"pattern": "x"}), "[{key_missing,definition}]"),
        (
            json!({"pattern": "x", "definition": {"foo": 1}}),
            "Validation failed\n\n[{<<\"foo\">>,1}] are not recognised policy settings\n",
        ),
        (
            json!({"pattern": "x", "definition": {"zoo": 1, "foo": "a"}}),
            "Validation failed\n\n[{<<\"foo\">>,<<\"a\">>},{<<\"zoo\">>,1}] are not recognised policy settings\n",
        ),
        (
            json!({"pattern": "x", "definition": {"max-length": -1, "foo": 1}}),
            "Validation failed\n\n-1 is not a valid maximum length\n",
        ),
        (
            json!({"pattern": "x", "definition": {"max-length": 1.5}}),
            "Validation failed\n\n1.5 is not a valid maximum length\n",
        ),
        (
            json!({"pattern": "x", "definition": {"expires": 0}}),
            "Validation failed\n\n0 is not a valid queue expiry\n",
        ),
        (
            json!({"pattern": "x", "definition": {"max-age": "1x"}}),
            "Validation failed\n\n<<\"1x\">> is not a valid max age\n",
        ),
        (
            json!({"pattern": "x", "definition": {"message-ttl": {"a": [1, true, null]}}}),
            "Validation failed\n\n#{<<\"a\">> => [1,true,null]} is not a valid message TTL\n",
        ),
        (
            json!({"pattern": "x", "definition": {"message-ttl": "zaż"}}),
            "Validation failed\n\n<<122,97,197,188>> is not a valid message TTL\n",
        ),
        (
            json!({"pattern": "x", "definition": {"alternate-exchange": 5}}),
            "Validation failed\n\n5 is not a valid alternate exchange name\n",
        ),
        (
            json!({"pattern": "x", "definition": {}}),
            "Validation failed\n\nno policy provided\n",
        ),
        (
            json!({"pattern": "x", "definition": {"ha-params": 1}}),
            "Validation failed\n\nha-mode must be specified to specify ha-params, ha-sync-mode or ha-promote-on-shutdown\n",
        ),
        (
            json!({"pattern": "x", "definition": {"ha-mode": "exactly"}}),
            "Validation failed\n\nha-mode=\"exactly\" takes an integer, none given\n",
        ),
        (
            json!({"pattern": "x", "definition": {"ha-mode": "bogus"}}),
            "Validation failed\n\n<<\"bogus\">> is not a valid ha-mode value\n",
        ),
        (
            json!({"pattern": "x", "definition": {"queue-master-locator": "bogus"}}),
            "Validation failed\n\n<<\"bogus\">> invalid queue-master-locator value\n",
        ),
        (
            json!({"pattern": 5, "definition": {"max-length": 1}}),
            "Validation failed\n\npattern should be a binary but was 5\n",
        ),
        (
            json!({"pattern": "x", "definition": {"max-length": 1}, "priority": "3"}),
            "Validation failed\n\npriority should be a number, actually was <<\"3\">>\n",
        ),
        (
            json!({"pattern": "x", "definition": {"max-length": 1}, "priority": null}),
            "Validation failed\n\npriority should be a number, actually was null\n",
        ),
        (
            json!({"pattern": "x", "definition": {"max-length": 1}, "apply-to": "bogus"}),
            "Validation failed\n\napply-to 'bogus' unrecognised; should be 'queues', 'exchanges' or 'all'\n",
        ),
    ];
    for (input, expected) in cases {
        assert_eq!(
            reason(parse(PolicyKind::Policy, input.clone())),
            expected,
            "{input}"
        );
    }
}

#[test]
fn every_failed_field_is_reported_in_rabbitmqs_order() {
    let r = reason(parse(
        PolicyKind::Policy,
        json!({"pattern": "(", "definition": {"max-length": -1}, "priority": "a", "apply-to": "x"}),
    ));
    let lines: Vec<&str> = r.lines().collect();
    assert_eq!(lines[0], "Validation failed");
    assert_eq!(lines[2], "-1 is not a valid maximum length");
    assert!(lines[3].starts_with("apply-to 'x' unrecognised"), "{r}");
    assert!(
        lines[4].starts_with("pattern should be regular expression but is invalid: "),
        "{r}"
    );
    assert_eq!(
        lines[5],
        "priority should be a number, actually was <<\"a\">>"
    );
}

#[test]
fn every_key_rabbitmq_knows_is_accepted() {
    let p = parse(
        PolicyKind::Policy,
        json!({"pattern": ".*", "priority": 1.5, "definition": {
            "alternate-exchange": "ae", "dead-letter-exchange": "dlx",
            "dead-letter-routing-key": "k", "dead-letter-strategy": "at-least-once",
            "message-ttl": 0, "expires": 1, "max-length": 0, "max-length-bytes": 10,
            "max-in-memory-length": 1, "max-in-memory-bytes": 1, "queue-mode": "lazy",
            "queue-version": 2, "overflow": "reject-publish-dlx", "delivery-limit": 3,
            "consumer-timeout": 1000, "max-age": "7D", "queue-leader-locator": "balanced",
            "initial-cluster-size": 3, "stream-max-segment-size-bytes": 500000000,
            "queue-master-locator": "min-masters", "ha-mode": "nodes",
            "ha-params": ["rabbit@a"], "ha-sync-mode": "automatic", "ha-sync-batch-size": 5,
            "ha-promote-on-shutdown": "always", "ha-promote-on-failure": "when-synced"
        }}),
    )
    .unwrap();
    assert_eq!(p.priority.as_f64(), Some(1.5));
}

#[test]
fn operator_policies_accept_only_the_numeric_limits() {
    operator(
        "o",
        ".*",
        json!({"expires": 1, "message-ttl": 1, "max-length": 1, "max-length-bytes": 1,
               "max-in-memory-length": 1, "max-in-memory-bytes": 1, "delivery-limit": 1}),
    );
    let r = reason(parse(
        PolicyKind::Operator,
        json!({"pattern": "x", "definition": {"dead-letter-exchange": "a"}}),
    ));
    assert_eq!(
        r,
        "Validation failed\n\n[{<<\"dead-letter-exchange\">>,<<\"a\">>}] are not recognised policy settings\n"
    );
}

#[test]
fn max_age_takes_rabbitmqs_units() {
    assert_eq!(max_age_ms("7D"), Some(7 * 24 * 3_600_000));
    assert_eq!(max_age_ms("1Y"), Some(365 * 24 * 3_600_000));
    assert_eq!(max_age_ms("30s"), Some(30_000));
    for bad in ["0s", "7", "D", "7d", "1.5h", "-1h", ""] {
        assert_eq!(max_age_ms(bad), None, "{bad}");
    }
}

#[test]
fn the_highest_priority_matching_policy_applies_ties_by_name() {
    let mut set = PolicySet::default();
    set.insert(policy(
        "low",
        "^orders",
        1,
        "all",
        json!({"max-length": 10}),
    ));
    set.insert(policy(
        "high",
        "orders",
        5,
        "queues",
        json!({"max-length": 20}),
    ));
    set.insert(policy(
        "exchanges",
        "orders",
        9,
        "exchanges",
        json!({"alternate-exchange": "ae"}),
    ));
    set.insert(policy(
        "other",
        "^payments$",
        9,
        "all",
        json!({"max-length": 1}),
    ));
    let q = set.select_queue("orders.eu", QueueKind::Classic);
    assert_eq!(q.policy_name(), Some("high"));
    assert_eq!(q.operator_name(), None);
    // The pattern is unanchored, as RabbitMQ's re:run.
    assert_eq!(
        set.select_queue("eu.orders", QueueKind::Classic)
            .policy_name(),
        Some("high")
    );
    assert_eq!(
        set.select_queue("invoices", QueueKind::Classic).policy,
        None
    );
    assert_eq!(
        set.select_exchange("orders").policy_name(),
        Some("exchanges")
    );
    assert_eq!(
        set.select_exchange("orders")
            .alternate_exchange()
            .as_deref(),
        Some("ae")
    );
    set.insert(policy(
        "a-tie",
        "orders",
        5,
        "all",
        json!({"max-length": 30}),
    ));
    assert_eq!(
        set.select_queue("orders", QueueKind::Classic).policy_name(),
        Some("a-tie"),
        "equal priority: the name that sorts first"
    );
    let names: Vec<String> = set
        .list(PolicyKind::Policy)
        .iter()
        .map(|p| p.name.clone())
        .collect();
    assert_eq!(names, ["low", "a-tie", "high", "exchanges", "other"]);
    set.remove(PolicyKind::Policy, "a-tie");
    assert_eq!(
        set.select_queue("orders", QueueKind::Classic).policy_name(),
        Some("high")
    );
}

#[test]
fn apply_to_and_queue_type_decide_applicability() {
    let mut set = PolicySet::default();
    set.insert(policy(
        "dl",
        ".*",
        9,
        "queues",
        json!({"delivery-limit": 3}),
    ));
    set.insert(policy("plain", ".*", 1, "queues", json!({"max-length": 3})));
    set.insert(policy(
        "streams",
        ".*",
        5,
        "streams",
        json!({"max-age": "1D"}),
    ));
    // delivery-limit is a quorum queue setting: not for classic queues.
    assert_eq!(
        set.select_queue("q", QueueKind::Classic).policy_name(),
        Some("plain")
    );
    assert_eq!(
        set.select_queue("q", QueueKind::Quorum).policy_name(),
        Some("dl")
    );
    assert_eq!(
        set.select_queue("q", QueueKind::Stream).policy_name(),
        Some("streams")
    );
    set.insert(policy(
        "qq",
        ".*",
        10,
        "quorum_queues",
        json!({"max-length": 1}),
    ));
    set.insert(policy(
        "cq",
        ".*",
        10,
        "classic_queues",
        json!({"max-length": 2}),
    ));
    assert_eq!(
        set.select_queue("q", QueueKind::Quorum).policy_name(),
        Some("qq")
    );
    assert_eq!(
        set.select_queue("q", QueueKind::Classic).policy_name(),
        Some("cq")
    );
    assert_eq!(set.select_exchange("q").policy, None);
    // queue-mode is classic only.
    set.insert(policy(
        "lazy",
        ".*",
        20,
        "all",
        json!({"queue-mode": "lazy"}),
    ));
    assert_eq!(
        set.select_queue("q", QueueKind::Quorum).policy_name(),
        Some("qq")
    );
    assert_eq!(
        set.select_queue("q", QueueKind::Classic).policy_name(),
        Some("lazy")
    );
    assert_eq!(set.select_exchange("q").policy_name(), Some("lazy"));
}

#[test]
fn policy_and_operator_policy_merge_to_the_smaller_limit() {
    let mut set = PolicySet::default();
    set.insert(policy(
        "p",
        ".*",
        0,
        "all",
        json!({"max-length": 100, "message-ttl": 1000, "dead-letter-exchange": "dlx"}),
    ));
    set.insert(operator(
        "o",
        ".*",
        json!({"max-length": 10, "message-ttl": 5000, "expires": 60000}),
    ));
    let applied = set.select_queue("q", QueueKind::Classic);
    assert_eq!(
        (applied.policy_name(), applied.operator_name()),
        (Some("p"), Some("o"))
    );
    assert_eq!(
        Value::Object(applied.definition()),
        json!({"max-length": 10, "message-ttl": 1000, "expires": 60000, "dead-letter-exchange": "dlx"})
    );
}

fn declared(entries: &[(&str, FieldValue)]) -> FieldTable {
    entries.iter().cloned().collect()
}

fn effective(applied: &AppliedPolicy, table: &FieldTable) -> QueueArgs {
    applied.queue_args(table, QueueArgs::parse(table, "/", "q").unwrap())
}

#[test]
fn arguments_and_policies_resolve_as_in_rabbitmq() {
    let mut set = PolicySet::default();
    set.insert(policy(
        "p",
        ".*",
        0,
        "all",
        json!({"max-length": 100, "message-ttl": 1000, "expires": 5000,
               "max-length-bytes": 50, "dead-letter-exchange": "policy-dlx",
               "dead-letter-routing-key": "policy-key", "overflow": "reject-publish",
               "consumer-timeout": 9000}),
    ));
    let applied = set.select_queue("q", QueueKind::Classic);
    // No arguments: the policy's values.
    let a = effective(&applied, &FieldTable::new());
    assert_eq!(a.max_length, Some(100));
    assert_eq!(a.message_ttl, Some(1000));
    assert_eq!(a.expires, Some(5000));
    assert_eq!(a.max_length_bytes, Some(50));
    assert_eq!(a.dead_letter_exchange.as_deref(), Some("policy-dlx"));
    assert_eq!(a.dead_letter_routing_key.as_deref(), Some("policy-key"));
    assert_eq!(a.overflow, Overflow::RejectPublish);
    assert_eq!(a.consumer_timeout, Some(9000));
    // Arguments: the smaller limit, the argument's dead-lettering and overflow.
    let table = declared(&[
        ("x-max-length", FieldValue::I32(5)),
        ("x-message-ttl", FieldValue::I32(60_000)),
        ("x-dead-letter-exchange", FieldValue::string("arg-dlx")),
        ("x-overflow", FieldValue::string("drop-head")),
        ("x-consumer-timeout", FieldValue::I32(1000)),
    ]);
    let a = effective(&applied, &table);
    assert_eq!(a.max_length, Some(5));
    assert_eq!(a.message_ttl, Some(1000));
    assert_eq!(a.dead_letter_exchange.as_deref(), Some("arg-dlx"));
    assert_eq!(a.dead_letter_routing_key.as_deref(), Some("policy-key"));
    assert_eq!(a.overflow, Overflow::DropHead);
    assert_eq!(a.consumer_timeout, Some(1000));
    // No policy: the arguments alone.
    let none = AppliedPolicy::default();
    assert_eq!(
        effective(&none, &table),
        QueueArgs::parse(&table, "/", "q").unwrap()
    );
}

#[test]
fn a_routing_key_without_a_dead_letter_exchange_is_ignored() {
    let mut set = PolicySet::default();
    set.insert(policy(
        "p",
        ".*",
        0,
        "all",
        json!({"dead-letter-routing-key": "k"}),
    ));
    let a = effective(
        &set.select_queue("q", QueueKind::Classic),
        &FieldTable::new(),
    );
    assert_eq!(
        (a.dead_letter_exchange, a.dead_letter_routing_key),
        (None, None)
    );
}

#[test]
fn quorum_queues_take_delivery_limits_and_keep_drop_head_for_reject_publish_dlx() {
    let mut set = PolicySet::default();
    set.insert(policy(
        "p",
        ".*",
        0,
        "quorum_queues",
        json!({"delivery-limit": 2, "overflow": "reject-publish-dlx"}),
    ));
    let table = declared(&[("x-queue-type", FieldValue::string("quorum"))]);
    let a = effective(&set.select_queue("q", QueueKind::Quorum), &table);
    assert_eq!(a.delivery_limit, Some(2));
    assert_eq!(a.overflow, Overflow::DropHead);
}

#[test]
fn erlang_terms_print_as_rabbitmq_prints_them() {
    assert_eq!(erlang_term(&json!("a\"b")), "<<\"a\\\"b\">>");
    assert_eq!(erlang_term(&json!(2.0)), "2.0");
    assert_eq!(erlang_term(&json!([1, "x"])), "[1,<<\"x\">>]");
    assert_eq!(
        erlang_term(&json!({"a": 1, "b": false})),
        "#{<<\"a\">> => 1,<<\"b\">> => false}"
    );
}
