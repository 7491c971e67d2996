//! amqp091-go, RabbitMQ's Go client, against antre:
//! crates/antre/tests/amqp091_go/*.go run with the broker's URL (see
//! `common::go` for where Go and the client come from).

use crate::common;

use common::*;

/// What amqp091-go's users do, end to end (see the program's header).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp091_go_client_paths_work() {
    if !go::client_or_skip() {
        return;
    }
    let broker = TestBroker::start().await;
    let source = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/amqp091_go/client_paths.go"
    );
    // Building the program (the first time) is most of its time.
    let limit = WAIT * 4;
    go::run_ok("amqp091-go program", source, vec![broker.uri()], limit).await;
}
