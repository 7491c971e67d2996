//! rstream, RabbitMQ's Python stream client, against antre's stream
//! protocol listener: the scripts in crates/antre/tests/rstream run with
//! the listener's address. rstream comes from PyPI (`.ci/run` installs the
//! version it pins); without python3 and rstream the test says so and
//! passes, except under CI (`CI=true`), where it fails.

use crate::common;

use std::process::Command;

use common::*;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};

fn rstream_available() -> bool {
    Command::new("python3")
        .args(["-c", "import rstream"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Whether to go on: python3 with rstream is there, or (outside CI) the
/// test says it skips.
fn rstream_or_skip() -> bool {
    if rstream_available() {
        return true;
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    assert!(
        !ci,
        "CI=true but python3 -c 'import rstream' fails: .ci/run installs rstream"
    );
    eprintln!("skipping: python3 with rstream is not installed (pip install rstream)");
    false
}

/// Runs tests/rstream/SCRIPT against the broker's stream listener; it
/// must print "ok".
async fn run_script(b: &TestBroker, script: &str, stream: &str) {
    let addr = b.server.stream_addr.expect("stream listener");
    let path = format!("{}/tests/rstream/{script}", env!("CARGO_MANIFEST_DIR"));
    let stream = stream.to_owned();
    let run = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .args([
                path.as_str(),
                &addr.ip().to_string(),
                &addr.port().to_string(),
                &stream,
            ])
            .output()
            .expect("python3 runs")
    });
    let out = tokio::time::timeout(WAIT * 4, run)
        .await
        .expect("the rstream script finishes")
        .expect("script task");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.trim() == "ok",
        "rstream script {script} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rstream_publishes_dedups_consumes_and_tracks_offsets() {
    if !rstream_or_skip() {
        return;
    }
    let b = TestBroker::start_with(|c| c.stream_listen = Some("127.0.0.1:0".into())).await;
    // The stream and its first message come over AMQP 0-9-1.
    let conn = b.lapin().await;
    let ch = confirm_channel(&conn).await;
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("stream".into()),
    );
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare("py-events", durable, args).await.unwrap();
    publish_confirmed(&ch, "", "py-events", b"from amqp").await;

    run_script(&b, "client_paths.py", "py-events").await;
    let (_, info) = b.api("GET", "/api/queues/%2f/py-events", None).await;
    assert_eq!(
        info["messages"], 51,
        "the retried message is stored once: {info}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rstream_filtered_subscriptions_get_only_chunks_that_can_match() {
    if !rstream_or_skip() {
        return;
    }
    let b = TestBroker::start_with(|c| c.stream_listen = Some("127.0.0.1:0".into())).await;
    let conn = b.lapin().await;
    let ch = conn.create_channel().await.unwrap();
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("stream".into()),
    );
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare("py-regions", durable, args).await.unwrap();
    run_script(&b, "filtering.py", "py-regions").await;
}
