//! The `antre` CLI against a real broker: the binary runs as a child
//! process and talks to the broker's management API.

mod common;

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
