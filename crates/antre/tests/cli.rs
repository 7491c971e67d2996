//! The `antre` CLI against a real broker: the binary runs as a child
//! process and talks to the broker's management API.

use crate::common;

use std::process::Command;

use common::TestBroker;
use serde_json::{json, Value};

/// Runs `antre ARGS --url URL`; returns (success, stdout, stderr).
async fn antre(url: &str, args: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_antre"));
    cmd.args(args)
        .env("ANTRE_URL", url)
        .env_remove("ANTRE_USER");
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("run antre"))
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_publish_consume_and_purge_from_the_cli() {
    let b = TestBroker::start().await;
    let url = b.http_url();
    let (ok, out, err) = antre(&url, &["queue", "declare", "invoices"]).await;
    assert!(ok, "{err}");
    assert!(out.contains("declared"), "{out}");

    for body in ["first", "second", "third"] {
        let (ok, out, err) = antre(
            &url,
            &["publish", "--routing-key", "invoices", "--body", body],
        )
        .await;
        assert!(ok, "{err}");
        assert_eq!(out.trim(), "published");
    }
    let (ok, _, err) = antre(&url, &["publish", "-k", "nowhere", "-b", "lost"]).await;
    assert!(!ok, "an unroutable publish fails");
    assert!(err.contains("not routed"), "{err}");

    let (ok, table, err) = antre(&url, &["queues", "list"]).await;
    assert!(ok, "{err}");
    let mut lines = table.lines();
    let header = lines.next().unwrap();
    assert!(
        header.starts_with("name") && header.contains("ready"),
        "{table}"
    );
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(row[..5], ["invoices", "true", "3", "3", "0"], "{table}");

    let (ok, json_out, _) = antre(&url, &["queues", "list", "--format", "json"]).await;
    assert!(ok);
    let queues: Value = serde_json::from_str(&json_out).expect("JSON output");
    assert_eq!(queues[0]["messages_ready"], 3);

    let (ok, out, err) = antre(&url, &["consume", "invoices", "--count", "1", "-f", "json"]).await;
    assert!(ok, "{err}");
    let got: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(got[0]["payload"], "first");
    let (ok, out, _) = antre(&url, &["consume", "invoices", "--requeue"]).await;
    assert!(ok);
    assert!(out.contains("second"), "{out}");

    let (ok, _, err) = antre(&url, &["queue", "purge", "invoices"]).await;
    assert!(ok, "{err}");
    let (_, q) = b.api("GET", "/api/queues/%2F/invoices", None).await;
    assert_eq!(q["messages"], 0);

    let (ok, out, _) = antre(&url, &["exchanges", "list"]).await;
    assert!(ok);
    assert!(out.contains("amq.topic") && out.contains("topic"), "{out}");

    let (ok, out, err) = antre(&url, &["status"]).await;
    assert!(ok, "{err}");
    assert!(
        out.contains("antre") && out.contains("queues") && out.contains("alarms"),
        "{out}"
    );

    let (ok, _, err) = antre(&url, &["queue", "delete", "invoices"]).await;
    assert!(ok, "{err}");
    let (ok, _, err) = antre(&url, &["queue", "purge", "invoices"]).await;
    assert!(!ok);
    assert!(err.contains("404"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn definitions_move_between_brokers_through_the_cli() {
    let a = TestBroker::start().await;
    a.api(
        "PUT",
        "/api/exchanges/%2F/events",
        Some(json!({ "type": "fanout" })),
    )
    .await;
    a.api("PUT", "/api/queues/%2F/audit", None).await;
    a.api("POST", "/api/bindings/%2F/e/events/q/audit", None)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("defs.json");
    let file = file.to_str().unwrap();
    let (ok, _, err) = antre(&a.http_url(), &["definitions", "export", "--file", file]).await;
    assert!(ok, "{err}");

    let b = TestBroker::start().await;
    let (ok, out, err) = antre(&b.http_url(), &["definitions", "import", file]).await;
    assert!(ok, "{err}");
    assert!(out.contains("1 exchanges, 1 queues, 1 bindings"), "{out}");
    let (_, routed) = b
        .api(
            "POST",
            "/api/exchanges/%2F/events/publish",
            Some(json!({ "payload": "x" })),
        )
        .await;
    assert_eq!(routed["routed"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_and_no_broker_are_clear_errors() {
    let b = TestBroker::start().await;
    let (ok, _, err) = antre(&b.http_url(), &["queues", "list", "--password", "nope"]).await;
    assert!(!ok);
    assert!(err.contains("401"), "{err}");
    let (ok, _, err) = antre("http://127.0.0.1:9", &["status"]).await;
    assert!(!ok);
    assert!(err.contains("cannot reach the broker"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchanges_bindings_and_typed_arguments_from_the_cli() {
    let b = TestBroker::start().await;
    let url = b.http_url();
    let ok = |(ok, out, err): (bool, String, String)| {
        assert!(ok, "{err}");
        out
    };
    ok(antre(&url, &["exchange", "declare", "events", "--type", "topic"]).await);
    ok(antre(&url, &["exchange", "declare", "dead", "--type", "fanout"]).await);
    ok(antre(
        &url,
        &[
            "queue",
            "declare",
            "orders",
            "--dlx",
            "dead",
            "--ttl",
            "60000",
            "--max-length",
            "10",
            "--argument",
            "x-note=hi",
            "-a",
            "x-max-priority=5",
        ],
    )
    .await);
    let (_, q) = b.api("GET", "/api/queues/%2F/orders", None).await;
    assert_eq!(
        q["arguments"],
        json!({
            "x-dead-letter-exchange": "dead", "x-message-ttl": 60000, "x-max-length": 10,
            "x-note": "hi", "x-max-priority": 5
        }),
        "numbers are numbers: {q}"
    );
    let (_, x) = b.api("GET", "/api/exchanges/%2F/events", None).await;
    assert_eq!(x["type"], "topic");

    let out = ok(antre(
        &url,
        &["bind", "-s", "events", "-d", "orders", "-k", "order.*"],
    )
    .await);
    assert!(out.contains("bound"), "{out}");
    ok(antre(
        &url,
        &[
            "bind",
            "-s",
            "events",
            "-d",
            "dead",
            "--to-exchange",
            "-k",
            "#",
        ],
    )
    .await);
    let listed = ok(antre(&url, &["bindings"]).await);
    assert!(listed.contains("order.*"), "{listed}");
    let out = ok(antre(
        &url,
        &["publish", "-e", "events", "-k", "order.new", "-b", "x"],
    )
    .await);
    assert_eq!(out.trim(), "published");

    ok(antre(
        &url,
        &["unbind", "-s", "events", "-d", "orders", "-k", "order.*"],
    )
    .await);
    let (_, bindings) = b
        .api("GET", "/api/bindings/%2F/e/events/q/orders", None)
        .await;
    assert_eq!(bindings, json!([]), "the binding is gone");
    let (ok_again, _, err) = antre(
        &url,
        &["unbind", "-s", "events", "-d", "orders", "-k", "order.*"],
    )
    .await;
    assert!(!ok_again);
    assert!(err.contains("no binding"), "{err}");
    let (clash, _, err) = antre(
        &url,
        &[
            "queue",
            "declare",
            "q2",
            "--ttl",
            "1",
            "-a",
            "x-message-ttl=2",
        ],
    )
    .await;
    assert!(!clash && err.contains("--ttl"), "{err}");
    ok(antre(&url, &["exchange", "delete", "events"]).await);
    let (status, _) = b.api("GET", "/api/exchanges/%2F/events", None).await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_consumers_and_closing_a_connection_from_the_cli() {
    use lapin::options::BasicConsumeOptions;
    let b = TestBroker::start().await;
    let url = b.http_url();
    b.api("PUT", "/api/queues/%2F/jobs", None).await;
    let conn = b.lapin().await;
    let ch = conn.create_channel().await.unwrap();
    ch.basic_qos(7, Default::default()).await.unwrap();
    let _consumer = ch
        .basic_consume(
            "jobs",
            "worker-1",
            BasicConsumeOptions::default(),
            Default::default(),
        )
        .await
        .unwrap();

    let (ok, out, err) = antre(&url, &["channels"]).await;
    assert!(ok, "{err}");
    let row: Vec<&str> = out.lines().nth(1).expect("a channel").split("  ").collect();
    assert!(row[0].ends_with("(1)"), "{out}");
    assert!(out.lines().next().unwrap().contains("prefetch"), "{out}");
    assert!(
        out.lines().nth(1).unwrap().trim_end().ends_with('7'),
        "{out}"
    );
    let (ok, out, err) = antre(&url, &["consumers", "list"]).await;
    assert!(ok, "{err}");
    assert!(out.contains("jobs") && out.contains("worker-1"), "{out}");
    assert!(
        out.lines()
            .nth(1)
            .is_some_and(|l| l.trim_end().ends_with("up")),
        "{out}"
    );

    let (ok, out, _) = antre(&url, &["connections", "-f", "json"]).await;
    assert!(ok);
    let conns: Value = serde_json::from_str(&out).unwrap();
    let name = conns[0]["name"].as_str().unwrap().to_owned();
    let (ok, out, err) = antre(
        &url,
        &["connection", "close", &name, "--reason", "maintenance"],
    )
    .await;
    assert!(ok, "{err}");
    assert!(out.contains("closed"), "{out}");
    common::within("the connection to close", async {
        while conn.status().connected() {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_follow_prints_messages_as_they_arrive() {
    use std::io::{BufRead, BufReader};
    let b = TestBroker::start().await;
    let url = b.http_url();
    b.api("PUT", "/api/queues/%2F/feed", None).await;
    let publish = |n: u32| {
        b.api(
            "POST",
            "/api/exchanges/%2F/amq.default/publish",
            Some(json!({ "routing_key": "feed", "payload": format!("m{n}") })),
        )
    };
    publish(1).await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_antre"))
        .args(["consume", "feed", "--follow", "--count", "3", "-f", "json"])
        .env("ANTRE_URL", &url)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start antre consume --follow");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::task::spawn_blocking(move || {
        let line = lines.next().expect("a line").expect("readable");
        (line, lines)
    });
    let (first, mut lines) = common::within("the first message", first).await.unwrap();
    let m: Value = serde_json::from_str(&first).unwrap();
    assert_eq!(m["payload"], "m1");
    // Published after the consumer started: it must still see them.
    publish(2).await;
    publish(3).await;
    let rest = tokio::task::spawn_blocking(move || {
        let rest: Vec<String> = lines.by_ref().map(|l| l.unwrap()).collect();
        (rest, child.wait().expect("antre exits"))
    });
    let (rest, status) = common::within("two more and an exit", rest).await.unwrap();
    assert!(status.success(), "stops after --count 3");
    let payloads: Vec<Value> = rest
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["payload"].clone())
        .collect();
    assert_eq!(payloads, [json!("m2"), json!("m3")]);
    let (_, q) = b.api("GET", "/api/queues/%2F/feed", None).await;
    assert_eq!(q["messages"], 0, "taken for good");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_sizes_are_human_and_errors_have_no_backtrace() {
    let b = TestBroker::start().await;
    let (ok, out, err) = antre(&b.http_url(), &["status"]).await;
    assert!(ok, "{err}");
    let memory = out.lines().find(|l| l.starts_with("memory")).unwrap();
    assert!(memory.ends_with("MiB") || memory.ends_with("GiB"), "{out}");
    assert!(
        out.contains("alarm below 47.7 MiB"),
        "the 50 MB default: {out}"
    );

    let mut cmd = Command::new(env!("CARGO_BIN_EXE_antre"));
    cmd.args(["queue", "purge", "missing"])
        .env("ANTRE_URL", b.http_url())
        .env("RUST_BACKTRACE", "1")
        .env("RUST_LIB_BACKTRACE", "1");
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains("404"), "{err}");
    assert!(!err.to_lowercase().contains("backtrace"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_permissions_and_vhosts_from_the_cli() {
    let b = TestBroker::start().await;
    let url = b.http_url();
    let run = |args: &'static [&'static str]| {
        let url = url.clone();
        async move {
            let (ok, out, err) = antre(&url, args).await;
            assert!(ok, "antre {args:?}: {err}");
            out
        }
    };
    run(&["vhosts", "add", "eu"]).await;
    let vhosts = run(&["vhosts", "list"]).await;
    assert!(vhosts.lines().any(|l| l.starts_with("eu ")), "{vhosts}");
    run(&["users", "add", "ops", "s3cret", "--tags", "management"]).await;
    run(&["users", "set-tags", "ops", "monitoring", "management"]).await;
    let users = run(&["users", "list"]).await;
    let ops = users.lines().find(|l| l.starts_with("ops ")).unwrap();
    assert!(ops.contains("monitoring,management"), "{users}");
    let (status, _) = b
        .api_as(("ops", "s3cret"), "GET", "/api/whoami", None)
        .await;
    assert_eq!(status, 200, "set-tags kept the password");
    run(&["users", "change-password", "ops", "n3w"]).await;
    let (status, me) = b.api_as(("ops", "n3w"), "GET", "/api/whoami", None).await;
    assert_eq!(
        (status, me["tags"].clone()),
        (200, json!(["monitoring", "management"]))
    );

    run(&[
        "permissions",
        "set",
        "ops",
        "--vhost",
        "eu",
        "--configure",
        "^ops",
        "--write",
        ".*",
        "--read",
        "",
    ])
    .await;
    let (ok, listed, _) = antre(&url, &["permissions", "list", "--format", "json"]).await;
    assert!(ok);
    let listed: Value = serde_json::from_str(&listed).unwrap();
    assert!(listed.as_array().unwrap().contains(
        &json!({ "user": "ops", "vhost": "eu", "configure": "^ops", "write": ".*", "read": "" })
    ));
    run(&["permissions", "clear", "ops", "--vhost", "eu"]).await;
    let (status, _) = b.api("GET", "/api/permissions/eu/ops", None).await;
    assert_eq!(status, 404);
    let (ok, _, err) = antre(&url, &["permissions", "clear", "ops", "--vhost", "eu"]).await;
    assert!(!ok && err.contains("Not Found"), "{err}");

    run(&["users", "delete", "ops"]).await;
    run(&["vhosts", "delete", "eu"]).await;
    let (status, _) = b.api("GET", "/api/users/ops", None).await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_and_operator_policies_from_the_cli() {
    let b = TestBroker::start().await;
    let url = b.http_url();
    let run = |args: &'static [&'static str]| {
        let url = url.clone();
        async move {
            let (ok, out, err) = antre(&url, args).await;
            assert!(ok, "antre {args:?}: {err}");
            out
        }
    };
    let said = run(&[
        "policies",
        "set",
        "dlx",
        "^orders$",
        r#"{"dead-letter-exchange": "dead", "max-length": 10}"#,
        "--priority",
        "2",
        "--apply-to",
        "queues",
    ])
    .await;
    assert_eq!(said.trim(), "policy 'dlx' set in vhost '/'");
    run(&[
        "operator-policies",
        "set",
        "cap",
        ".*",
        r#"{"max-length": 5}"#,
    ])
    .await;
    let (_, p) = b.api("GET", "/api/policies/%2F/dlx", None).await;
    assert_eq!(
        p,
        json!({"vhost": "/", "name": "dlx", "pattern": "^orders$", "apply-to": "queues",
               "definition": {"dead-letter-exchange": "dead", "max-length": 10}, "priority": 2})
    );
    let listed = run(&["policies", "list"]).await;
    let row = listed.lines().find(|l| l.contains("dlx")).unwrap();
    assert!(
        row.contains("^orders$") && row.contains("queues"),
        "{listed}"
    );
    let (ok, listed, _) = antre(&url, &["operator-policies", "list", "-f", "json"]).await;
    assert!(ok);
    let listed: Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed[0]["name"], "cap");
    // RabbitMQ's refusal, as one line.
    let (ok, _, err) = antre(
        &url,
        &["policies", "set", "bad", ".*", r#"{"max-length": -1}"#],
    )
    .await;
    assert!(
        !ok && err.contains("-1 is not a valid maximum length"),
        "{err}"
    );
    let (ok, _, err) = antre(&url, &["policies", "set", "bad", ".*", "max-length=1"]).await;
    assert!(!ok && err.contains("not JSON"), "{err}");
    run(&["policies", "clear", "dlx"]).await;
    run(&["operator-policies", "clear", "cap"]).await;
    assert_eq!(b.api("GET", "/api/policies", None).await.1, json!([]));
    assert_eq!(
        b.api("GET", "/api/operator-policies", None).await.1,
        json!([])
    );
}

/// `antre check ...` runs RabbitMQ's health checks from a shell, as
/// `rabbitmq-diagnostics check_port_listener` and its siblings are used in
/// container health checks and exec probes: "ok" and success when the
/// check passes; what is missing and a non-zero exit when it fails. Before,
/// the CLI had no such command (a probe had to parse `antre status`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_run_from_the_cli_and_fail_with_their_reason() {
    let b = TestBroker::start().await;
    let url = b.http_url();
    let amqp = b.addr().port().to_string();
    for args in [
        vec!["check", "port-listener", &amqp],
        vec!["check", "protocol-listener", "amqp,http"],
        vec!["check", "local-alarms"],
        vec!["check", "alarms"],
        vec!["check", "virtual-hosts"],
        vec![
            "check",
            "certificate-expiration",
            "--within",
            "3",
            "--unit",
            "months",
        ],
        vec!["check", "is-in-service"],
        vec!["check", "ready-to-serve-clients"],
        vec!["check", "below-node-connection-limit"],
        vec!["check", "node-is-quorum-critical"],
        vec![
            "check",
            "quorum-queues-without-elected-leaders",
            "--all-vhosts",
        ],
        vec![
            "check",
            "quorum-queues-without-elected-leaders",
            "--pattern",
            "^pay",
        ],
    ] {
        let (ok, out, err) = antre(&url, &args).await;
        assert!(ok, "{args:?}: {out}{err}");
        assert_eq!(out.trim(), "ok", "{args:?}");
    }
    let (ok, out, err) = antre(&url, &["check", "protocol-listener", "amqp,mqtt"]).await;
    assert!(!ok, "{out}");
    assert!(out.contains("missing: mqtt"), "{out}");
    assert!(out.contains("listening: amqp, http"), "{out}");
    assert!(err.contains("No active listener"), "{err}");
    let (ok, out, err) = antre(&url, &["check", "port-listener", "1", "-f", "json"]).await;
    assert!(!ok, "{out}");
    let answer: Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(answer["missing"], json!(1), "{answer}");
    assert!(err.contains("No active listener"), "{err}");
    let (ok, _, err) = antre(
        &url,
        &["check", "certificate-expiration", "--unit", "fortnights"],
    )
    .await;
    assert!(!ok);
    assert!(err.contains("Time unit not recognised"), "{err}");
}
