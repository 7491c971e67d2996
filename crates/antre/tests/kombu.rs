//! kombu, the transport of Celery, against antre: crates/antre/tests/kombu/*.py
//! run with the broker's URL (see `common::python` for where kombu comes
//! from; it brings py-amqp, its AMQP client).

use crate::common;

use common::*;

/// Celery's native delayed delivery on quorum queues (what a Celery 5.5+
/// worker with `task_default_queue_type = "quorum"` declares, and what a
/// task's countdown or ETA goes through). Before, py-amqp's 'L'-tagged
/// `x-message-ttl` of the longest levels closed the connection (502
/// SYNTAX_ERROR, "unknown field value type 'L'"): the worker logged
/// "Failed to setup delayed delivery", and countdown tasks had nowhere
/// to go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn celerys_native_delayed_delivery_delivers_after_its_countdown() {
    if !python::module_or_skip("kombu") {
        return;
    }
    let broker = TestBroker::start().await;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/kombu/delayed_delivery.py"
    );
    python::run_ok("kombu script", vec![script.to_owned(), broker.uri()], WAIT).await;
}
