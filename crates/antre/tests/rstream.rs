//! rstream, RabbitMQ's Python stream client, against antre's stream
//! protocol listener: crates/antre/tests/rstream/client_paths.py runs with
//! the listener's address. rstream comes from PyPI (`.ci/run` installs the
//! version it pins); without python3 and rstream the test says so and
//! passes, except under CI (`CI=true`), where it fails.

mod common;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rstream_publishes_dedups_consumes_and_tracks_offsets() {
    if !rstream_available() {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
        assert!(
            !ci,
            "CI=true but python3 -c 'import rstream' fails: .ci/run installs rstream"
        );
        eprintln!("skipping: python3 with rstream is not installed (pip install rstream)");
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

    let addr = b.server.stream_addr.expect("stream listener");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/rstream/client_paths.py");
    let run = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .args([
                script,
                &addr.ip().to_string(),
                &addr.port().to_string(),
                "py-events",
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
        "rstream script failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, info) = b.api("GET", "/api/queues/%2f/py-events", None).await;
    assert_eq!(
        info["messages"], 51,
        "the retried message is stored once: {info}"
    );
}
