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
