//! The client's loops against the in-process fake server: handshake,
//! declares, publishing with and without confirms, consuming with acks.

use std::sync::atomic::Ordering;

use antre_bench::fake::FakeServer;
use antre_bench::run::{run, RunArgs};

fn args(server: &FakeServer) -> RunArgs {
    let mut a = RunArgs::with_uri(&server.url());
    a.duration = 0.3;
    a.quiet = true;
    a.drain_timeout = 0.0;
    a.interval = 0.1;
    a
}

#[tokio::test]
async fn publishes_reach_the_server_and_confirms_come_back() {
    let server = FakeServer::start(16).unwrap();
    let mut a = args(&server);
    a.consumers = 0;
    a.producers = 2;
    a.queues = 2;
    a.confirm = Some(100);
    a.persistent = true;
    let r = run(&a).await.unwrap();
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert!(r.published > 1000, "published only {}", r.published);
    assert_eq!(r.confirmed, r.published, "every publish confirmed");
    // Setup and teardown connections, plus one per producer.
    assert!(server.stats.connections.load(Ordering::Relaxed) >= 4);
    // The server may still be reading the last bytes; give it a moment.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert_eq!(server.stats.published.load(Ordering::Relaxed), r.published);
    assert!(r.publish_rate > 0.0 && !r.samples.is_empty());
}

#[tokio::test]
async fn counted_publishing_stops_at_the_count() {
    let server = FakeServer::start(16).unwrap();
    let mut a = args(&server);
    a.consumers = 0;
    a.duration = 5.0;
    a.pmessages = Some(12_345);
    let r = run(&a).await.unwrap();
    assert_eq!(r.published, 12_345);
}

#[tokio::test]
async fn rate_limited_publishing_keeps_the_rate() {
    let server = FakeServer::start(16).unwrap();
    let mut a = args(&server);
    a.consumers = 0;
    a.duration = 0.5;
    a.rate = Some(2000.0);
    let r = run(&a).await.unwrap();
    assert!(
        (800..=1200).contains(&r.published),
        "published {}",
        r.published
    );
}

#[tokio::test]
async fn consumers_receive_ack_and_measure_latency() {
    let server = FakeServer::start(1024).unwrap();
    let mut a = args(&server);
    a.producers = 0;
    a.consumers = 2;
    a.size = 1024;
    a.prefetch = 50;
    a.ack_every = 10;
    a.json = None;
    let r = run(&a).await.unwrap();
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert!(r.delivered > 1000, "delivered only {}", r.delivered);
    assert_eq!(r.latency.count, r.delivered, "every delivery timed");
    assert!(r.latency.p50_us > 0.0 && r.latency.p99_us >= r.latency.p50_us);
    // The fake sends only what the prefetch allows, so the consumers' acks
    // are what kept it going: per connection it is at most one prefetch
    // ahead of the acks (and an ack may cover a delivery whose body was
    // still in flight at the end, hence the slack).
    let sent = server.stats.delivered.load(Ordering::Relaxed);
    assert!(
        sent <= r.delivered + 2 * 2 * 50,
        "sent {sent}, got {}",
        r.delivered
    );
}
