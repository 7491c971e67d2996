//! Runs each example against a real antre started in this process, on a
//! free port with a temporary data directory, exactly as the broker's own
//! integration tests do. Each example checks its own outcome; `run`
//! returning `Ok` means every check passed.

use std::time::Duration;

/// A fresh broker for one test; stopped when the test ends.
struct Broker {
    server: antre::RunningServer,
    _dir: tempfile::TempDir,
}

impl Broker {
    async fn start() -> Broker {
        let dir = tempfile::tempdir().expect("temp dir");
        let server = antre::start(antre::Config {
            amqp_listen: Some("127.0.0.1:0".into()),
            // The examples speak AMQP only; no HTTP listener to collide on.
            http_listen: None,
            data_dir: dir.path().to_path_buf(),
            ..Default::default()
        })
        .await
        .expect("broker starts");
        Broker { server, _dir: dir }
    }

    fn url(&self) -> String {
        format!(
            "amqp://guest:guest@{}/%2f",
            self.server.amqp_addr.expect("plain AMQP is on")
        )
    }
}

/// Guards against a hang: each example finishes in a few seconds.
const LIMIT: Duration = Duration::from_secs(60);

async fn run_example<F: std::future::Future<Output = anyhow::Result<()>>>(name: &str, fut: F) {
    match tokio::time::timeout(LIMIT, fut).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("the {name} example failed: {e:#}"),
        Err(_) => panic!("the {name} example did not finish within {LIMIT:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments() {
    let broker = Broker::start().await;
    run_example("payments", antre_examples::payments::run(&broker.url())).await;
    // Run it again on the same broker: a second run starts from a clean
    // slate (it deletes what the first left), as a user re-running it would.
    run_example(
        "payments (second run)",
        antre_examples::payments::run(&broker.url()),
    )
    .await;
    broker.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flight_delays() {
    let broker = Broker::start().await;
    run_example(
        "flight-delays",
        antre_examples::flight_delays::run(&broker.url()),
    )
    .await;
    broker.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shop_events() {
    let broker = Broker::start().await;
    run_example(
        "shop-events",
        antre_examples::shop_events::run(&broker.url()),
    )
    .await;
    broker.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_history() {
    let broker = Broker::start().await;
    run_example(
        "order-history",
        antre_examples::order_history::run(&broker.url()),
    )
    .await;
    // A second run on the same broker starts from a clean slate.
    run_example(
        "order-history (second run)",
        antre_examples::order_history::run(&broker.url()),
    )
    .await;
    broker.server.shutdown().await;
}
