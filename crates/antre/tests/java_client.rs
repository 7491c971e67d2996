//! RabbitMQ's Java client against antre: crates/antre/tests/java_client/
//! holds single-file programs run with the broker's URL (see
//! `common::java` for where the JDK and the client come from).

use crate::common;

use common::*;

/// What the Java client's users do, end to end (see the program's
/// header).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn java_client_paths_work() {
    if !java::client_or_skip() {
        return;
    }
    let broker = TestBroker::start().await;
    let source = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/java_client/ClientPaths.java"
    );
    // Compiling the program is most of its time.
    let limit = WAIT * 3;
    java::run_ok("Java client program", source, vec![broker.uri()], limit).await;
}

/// The Java client's automatic recovery through a crash (see
/// `Recovery.java`): a consumer holds a persistent payment unacked while
/// antre is killed -9 and started again on the same port; the client
/// reconnects and recovers its queues, bindings and consumers by itself,
/// the payment comes again marked redelivered, and new publishes reach
/// both the durable queue's and the server-named queue's consumers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_java_clients_recovery_carries_a_consumer_through_a_crash() {
    use std::io::{BufRead, BufReader, Write};
    use std::process::Stdio;
    if !java::client_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let mut broker = process::spawn_antre(dir.path(), &[]);
    let source = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/java_client/Recovery.java"
    );
    let uri = format!("amqp://guest:guest@{}/%2f", broker.amqp);
    let mut client = java::program(source, vec![uri])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("java starts");
    let stdout = client.stdout.take().expect("stdout");
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    let ready = tokio::time::timeout(WAIT * 3, lines.recv()).await;
    if ready.as_ref().ok().and_then(Option::as_deref) != Some("ready") {
        let _ = client.kill();
        let out = client.wait_with_output().expect("the program ends");
        panic!(
            "the program did not get ready:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    broker.child.kill().expect("kill -9");
    broker.child.wait().expect("reap");
    let restarted = process::spawn_antre_at(dir.path(), &broker.amqp, &[]);
    let mut stdin = client.stdin.take().expect("stdin");
    stdin.write_all(b"restarted\n").expect("tell the program");
    drop(stdin);

    let done = tokio::time::timeout(WAIT * 6, lines.recv()).await;
    let done = done.ok().flatten();
    if done.as_deref() != Some("ok") {
        // Stuck or failed: it must not outlive the test.
        let _ = client.kill();
    }
    let status = tokio::task::spawn_blocking(move || client.wait_with_output())
        .await
        .expect("program task")
        .expect("the program ends");
    let mut restarted = restarted;
    let _ = restarted.child.kill();
    let _ = restarted.child.wait();
    assert!(
        done.as_deref() == Some("ok") && status.status.success(),
        "the program failed ({}):\n{}",
        status.status,
        String::from_utf8_lossy(&status.stderr)
    );
}
