//! `antre-bench stream` against a real, in-process antre over both
//! protocols: every message is confirmed, every consumer reads the whole
//! stream from first, and the report has rates and CPU per message. It also
//! shows that antre serves the pinned, pre-3.11 `rabbitmq-stream-client`
//! (which never exchanges command versions).

use antre_bench::stream::{run, Protocol, StreamArgs, StreamClient};
use clap::Parser;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: StreamArgs,
}

async fn broker() -> (antre::RunningServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = antre::start(antre::Config {
        amqp_listen: Some("127.0.0.1:0".into()),
        stream_listen: Some("127.0.0.1:0".into()),
        http_listen: None,
        data_dir: dir.path().to_path_buf(),
        ..Default::default()
    })
    .await
    .expect("antre starts");
    (server, dir)
}

fn args(server: &antre::RunningServer, protocol: Protocol) -> StreamArgs {
    let amqp = server.amqp_addr.expect("plain AMQP is on");
    let stream = server.stream_addr.expect("stream listener is on");
    let mut a = Cli::parse_from(["stream"]).args;
    a.protocol = protocol;
    a.uri = format!("amqp://guest:guest@{amqp}/%2f");
    a.host = stream.ip().to_string();
    a.port = stream.port();
    a.messages = 5_000;
    a.consumers = 3;
    a.broker = "antre".into();
    // The broker runs in this process: its CPU is ours.
    a.pid = Some(std::process::id());
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_protocols_publish_with_confirms_and_read_from_first() {
    let (server, _dir) = broker().await;
    for (protocol, client) in [
        (Protocol::Amqp, StreamClient::Crate),
        (Protocol::Stream, StreamClient::Crate),
        (Protocol::Stream, StreamClient::Lean),
    ] {
        let mut a = args(&server, protocol);
        a.client = client;
        let r = run(&a).await.expect("bench runs");
        assert_eq!(r.protocol, protocol);
        assert_eq!((r.messages, r.consumers), (5_000, 3));
        assert!(r.publish_rate > 0.0 && r.consume_rate > 0.0, "{r:?}");
        assert!(r.publish_cpu_us_per_msg.is_some(), "{r:?}");
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["protocol"], protocol.to_string());
    }
    server.shutdown().await;
}
