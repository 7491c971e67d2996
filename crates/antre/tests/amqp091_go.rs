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
    // Built first, apart (see `go::run_ok`).
    let limit = WAIT * 4;
    go::run_ok("amqp091-go program", source, vec![broker.uri()], limit).await;
}

/// amqp091-go's own integration suite (the Debian package's
/// `integration_test.go` and the others tagged `integration`, written
/// against RabbitMQ) passes against antre announcing itself as RabbitMQ
/// (some tests check the product to decide what to expect). All but
/// one: `TestIntegrationConsumeFlow` expects RabbitMQ's refusal of
/// `channel.flow(active=false)`, which antre honours as the spec says (a
/// listed deviation, docs/compatibility.md), and the test then fails on a
/// nil error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp091_gos_own_integration_tests_pass() {
    use antre::config::ServerIdentity;
    if !go::client_or_skip() {
        return;
    }
    let mut names = Vec::new();
    for entry in std::fs::read_dir(go::client_sources()).expect("the client's sources") {
        let path = entry.expect("an entry").path();
        if path.extension().is_none_or(|e| e != "go") {
            continue;
        }
        let source = std::fs::read_to_string(&path).expect("a source file");
        for line in source.lines() {
            if let Some(rest) = line.strip_prefix("func TestIntegration") {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                names.push(format!("TestIntegration{name}"));
            }
        }
    }
    names.retain(|n| n != "TestIntegrationConsumeFlow");
    assert!(names.len() >= 25, "the suite's tests: {names:?}");
    let broker = TestBroker::start_with(|c| c.server_identity = ServerIdentity::RabbitMq).await;
    go::integration_tests(&names, &broker.uri(), WAIT * 8).await;
}
