//! pika, the Python client, against antre: crates/antre/tests/pika/*.py run
//! with the broker's URL (see `common::python` for where pika comes from).

use crate::common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pika_client_paths_work() {
    if !python::module_or_skip("pika") {
        return;
    }
    let broker = TestBroker::start().await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/pika/client_paths.py");
    let uri = broker.uri();
    python::run_ok("pika script", vec![script.to_owned(), uri], WAIT).await;
}
