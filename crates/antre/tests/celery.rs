//! Celery against antre: crates/antre/tests/celery/*.py run a worker and
//! its clients with the broker's URL (see `common::python` for where
//! Celery comes from; it brings kombu and py-amqp).

use crate::common;

use common::*;

/// A worker serving tasks, results over rpc://, retries with a
/// countdown, a group, and remote control (see the script's docstring).
/// The same script passes against RabbitMQ 3.10.8.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_celery_worker_serves_tasks_and_answers_remote_control() {
    if !python::module_or_skip("celery") {
        return;
    }
    let broker = TestBroker::start().await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/celery/worker.py");
    // The worker's start and stop take most of it (about 10 s here).
    python::run_ok(
        "celery script",
        vec![script.to_owned(), broker.uri()],
        WAIT * 4,
    )
    .await;
}
