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
    if !java::client_or_skip() {
        return;
    }
    let source = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/java_client/Recovery.java"
    );
    program::through_a_crash("the Java recovery program", |uri| {
        java::program(source, vec![uri])
    })
    .await;
}
