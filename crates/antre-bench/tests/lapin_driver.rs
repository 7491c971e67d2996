//! `antre-bench lapin` against a real, in-process antre: the lapin-driven
//! producers and consumers deliver, confirms come back, fanout copies, and
//! the report has what `compare` needs.

use antre_bench::run::{run_with, Client, RunArgs};

async fn broker() -> (antre::RunningServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = antre::start(antre::Config {
        amqp_listen: Some("127.0.0.1:0".into()),
        http_listen: None,
        data_dir: dir.path().to_path_buf(),
        ..Default::default()
    })
    .await
    .expect("antre starts");
    (server, dir)
}

fn args(server: &antre::RunningServer, label: &str) -> RunArgs {
    let mut a = RunArgs::with_uri(&format!(
        "amqp://guest:guest@{}/%2f",
        server.amqp_addr.expect("plain AMQP is on")
    ));
    a.quiet = true;
    a.interval = 0.1;
    a.drain_timeout = 2.0;
    a.label = label.into();
    a.broker = "antre".into();
    // The broker runs in this process: its CPU is ours.
    a.broker_pid = vec![std::process::id()];
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lapin_publishes_with_confirms_and_consumes_from_antre() {
    let (server, _dir) = broker().await;
    let mut a = args(&server, "lapin-persistent-confirm");
    a.duration = 1.0;
    a.persistent = true;
    a.confirm = Some(100);
    a.ack_every = 10;
    a.prefetch = 100;
    let r = run_with(&a, Client::Lapin).await.expect("run");
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert!(r.published > 100, "published only {}", r.published);
    assert_eq!(r.confirmed, r.published, "every publish confirmed");
    assert_eq!(r.nacked, 0);
    assert_eq!(r.delivered, r.published, "every message delivered");
    assert!(r.deliver_rate > 0.0);
    assert!(r.latency.count > 0, "latency measured from the body stamp");
    assert!(r.broker_cpu_us_per_msg.is_some_and(|c| c > 0.0));
    assert!(r.config.starts_with("client: lapin"), "{}", r.config);
    assert_eq!(r.metric("rate"), Some(r.deliver_rate));
    // The report is the same JSON shape `compare` reads.
    let json = serde_json::to_string(&r).unwrap();
    let back: antre_bench::run::Report = serde_json::from_str(&json).unwrap();
    assert_eq!(back.delivered, r.delivered);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lapin_fanout_delivers_a_copy_per_queue() {
    let (server, _dir) = broker().await;
    let mut a = args(&server, "lapin-fanout");
    a.duration = 0.5;
    a.consumers = 3;
    a.queues = 3;
    a.exchange = "antre-bench-fanout".into();
    a.exchange_type = "fanout".into();
    a.size = 1024;
    let r = run_with(&a, Client::Lapin).await.expect("run");
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert!(r.published > 0);
    assert_eq!(r.delivered, 3 * r.published, "one copy per queue");
    server.shutdown().await;
}

/// `--queue-type quorum` declares quorum queues with both clients, and
/// `--broker-pid` takes several processes (a cluster's nodes), summed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_type_declares_quorum_queues_and_pids_are_summed() {
    use lapin::options::QueueDeclareOptions;
    use lapin::types::{AMQPValue, FieldTable};
    let (server, _dir) = broker().await;
    for (client, queue) in [(Client::Builtin, "qq-builtin"), (Client::Lapin, "qq-lapin")] {
        let mut a = args(&server, "quorum");
        a.duration = 0.3;
        a.confirm = Some(50);
        a.queue_pattern = queue.into();
        a.queue_type = Some("quorum".into());
        a.keep_queues = true;
        a.broker_pid = vec![std::process::id(), std::process::id()];
        let r = run_with(&a, client).await.expect("run");
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        assert!(r.published > 0 && r.confirmed == r.published);

        let conn = lapin::Connection::connect(
            &format!("amqp://guest:guest@{}/%2f", server.amqp_addr.unwrap()),
            lapin::ConnectionProperties::default(),
        )
        .await
        .unwrap();
        let ch = conn.create_channel().await.unwrap();
        let declare = |kind: &str| {
            let mut arguments = FieldTable::default();
            arguments.insert("x-queue-type".into(), AMQPValue::LongString(kind.into()));
            let options = QueueDeclareOptions {
                durable: true,
                ..Default::default()
            };
            (options, arguments)
        };
        let (options, arguments) = declare("quorum");
        ch.queue_declare(queue, options, arguments)
            .await
            .expect("it is a durable quorum queue");
        let (options, arguments) = declare("classic");
        let err = ch
            .queue_declare(queue, options, arguments)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("x-queue-type"), "{err}");
    }
    server.shutdown().await;
}
