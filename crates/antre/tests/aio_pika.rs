//! aio-pika, the asyncio Python client (over aiormq), against antre:
//! crates/antre/tests/aio_pika/*.py run with the broker's URL (see
//! `common::python` for where aio-pika comes from).

use crate::common;

use common::*;

/// What aio-pika users do, end to end (see the script's docstring).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aio_pika_client_paths_work() {
    if !python::module_or_skip("aio_pika") {
        return;
    }
    let broker = TestBroker::start().await;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/aio_pika/client_paths.py"
    );
    python::run_ok(
        "aio-pika script",
        vec![script.to_owned(), broker.uri()],
        WAIT,
    )
    .await;
}

/// aio-pika's robust connection through a crash (see `recovery.py`): a
/// consumer holds a persistent payment unacked while antre is killed -9
/// and started again on the same port; `connect_robust` reconnects and
/// restores its channel, queues, binding and consumers by itself, the
/// payment comes again marked redelivered, and new publishes reach both
/// consumers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aio_pikas_robust_connection_carries_a_consumer_through_a_crash() {
    if !python::module_or_skip("aio_pika") {
        return;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/aio_pika/recovery.py");
    program::through_a_crash("the aio-pika recovery script", |uri| {
        python::command(vec![script.to_owned(), uri])
    })
    .await;
}
