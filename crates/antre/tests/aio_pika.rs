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
