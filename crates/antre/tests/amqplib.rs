//! amqplib, the Node.js client, against antre:
//! crates/antre/tests/amqplib/*.js run with the broker's URL (see
//! `common::node` for where node and amqplib come from).

use crate::common;

use common::*;

/// What amqplib users do, end to end (see the script's header).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqplib_client_paths_work() {
    if !node::module_or_skip("amqplib") {
        return;
    }
    let broker = TestBroker::start().await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/amqplib/client_paths.js");
    node::run_ok(
        "amqplib script",
        vec![script.to_owned(), broker.uri()],
        WAIT,
    )
    .await;
}
