//! RabbitMQ's stream protocol on a cluster of three real `antre`
//! processes (tests/cluster/harness.rs), driven by the
//! `rabbitmq-stream-client` crate as a user's application would: the
//! client asks any node for a stream's metadata and goes where it says (to
//! the leader to publish, to a replica to read), a named producer's
//! deduplication holds across a change of leader, and stored offsets are
//! the group's, whichever node a consumer stores them through.

use crate::harness;

use std::time::Duration;

use futures::StreamExt;
use harness::{free_port, TestCluster, SECRET};
use rabbitmq_stream_client::types::{Message, OffsetSpecification, ResponseCode};
use rabbitmq_stream_client::{Client, ClientOptions, Consumer, Environment};
use tokio::time::Instant;

/// A cluster whose nodes also listen for the stream protocol; returns it
/// with each node's stream port.
async fn start() -> (TestCluster, Vec<u16>) {
    let mut c = TestCluster::plan(&[SECRET, SECRET, SECRET]);
    let mut ports = Vec::new();
    for n in &mut c.nodes {
        let port = free_port();
        n.args = vec!["--stream-listen".into(), format!("127.0.0.1:{port}")];
        ports.push(port);
    }
    c.launch().await;
    (c, ports)
}

async fn env(port: u16) -> Environment {
    tokio::time::timeout(
        harness::WAIT,
        Environment::builder().host("127.0.0.1").port(port).build(),
    )
    .await
    .expect("in time")
    .expect("environment")
}

/// The stream's metadata as node `port` answers it: (leader port, replica
/// ports), once it lists `replicas` replicas (any number if None) with
/// their stream listeners (nodes record theirs in the metadata group as
/// they start; those down are left out) and the leader is not the node
/// listening on `not_leader`.
async fn metadata(
    port: u16,
    stream: &str,
    not_leader: Option<u32>,
    replicas: Option<usize>,
) -> (u32, Vec<u32>) {
    let client = Client::connect(
        ClientOptions::builder()
            .host("127.0.0.1")
            .port(port)
            .build(),
    )
    .await
    .expect("client");
    let deadline = Instant::now() + harness::WAIT;
    loop {
        let m = client
            .metadata(vec![stream.to_owned()])
            .await
            .expect("metadata");
        if let Some(m) = m.get(stream) {
            if m.response_code == ResponseCode::Ok
                && replicas.is_none_or(|n| m.replicas.len() == n)
                && Some(m.leader.port) != not_leader
            {
                let _ = client.close().await;
                let mut replicas: Vec<u32> = m.replicas.iter().map(|r| r.port).collect();
                replicas.sort_unstable();
                return (m.leader.port, replicas);
            }
        }
        assert!(
            Instant::now() < deadline,
            "no full metadata of {stream}: {m:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Publishes `ids` as a producer named `name` (through the node at
/// `port`, which sends the client to the leader); each is confirmed.
async fn publish(port: u16, stream: &str, name: &str, ids: &[u64]) {
    let env = env(port).await;
    let mut producer = env
        .producer()
        .name(name)
        .build(stream)
        .await
        .expect("producer");
    for &id in ids {
        let m = Message::builder()
            .body(format!("p{id}"))
            .publishing_id(id)
            .build();
        let status = tokio::time::timeout(harness::WAIT, producer.send_with_confirm(m))
            .await
            .expect("confirm in time")
            .expect("confirm");
        assert!(status.confirmed(), "publishing id {id} confirmed");
    }
    producer.close().await.expect("closed");
}

/// Reads `n` messages from the first offset: (offset, body).
async fn read(consumer: &mut Consumer, n: usize) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    while out.len() < n {
        let d = tokio::time::timeout(harness::WAIT, consumer.next())
            .await
            .expect("delivery in time")
            .expect("a delivery")
            .expect("delivery ok");
        let body = d.message().data().unwrap_or_default();
        out.push((d.offset(), String::from_utf8_lossy(body).into_owned()));
    }
    out
}

/// Reads the first `n` messages of "payments" as consumer "audit"
/// (through a replica the metadata names), checking that they are at
/// offsets 0 to n-1; returns the consumer and the bodies.
async fn read_as_audit(env: &Environment, n: usize) -> (Consumer, Vec<String>) {
    let mut consumer = env
        .consumer()
        .name("audit")
        .offset(OffsetSpecification::First)
        .build("payments")
        .await
        .expect("consumer");
    let got = read(&mut consumer, n).await;
    let offsets: Vec<u64> = got.iter().map(|(o, _)| *o).collect();
    assert_eq!(offsets, (0..n as u64).collect::<Vec<_>>());
    (consumer, got.into_iter().map(|(_, b)| b).collect())
}

/// Waits until `consumer`'s node has its stored offset at `want`.
async fn until_offset(consumer: &Consumer, want: u64) {
    let deadline = Instant::now() + harness::WAIT;
    loop {
        match consumer.query_offset().await {
            Ok(o) if o == want => return,
            other => assert!(Instant::now() < deadline, "stored offset: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn bodies(ids: impl IntoIterator<Item = u64>) -> Vec<String> {
    ids.into_iter().map(|id| format!("p{id}")).collect()
}

// The client's producers close in Drop by blocking the thread: the
// clients need a worker of their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_clients_are_sent_to_the_leader_and_replicas_and_dedup_survives_failover() {
    let (mut c, ports) = start().await;
    // Created through n2: the metadata group places the stream, its
    // declaring node first, so n2 leads it.
    env(ports[1])
        .await
        .stream_creator()
        .create("payments")
        .await
        .expect("created");
    c.until_members("payments", &["n1", "n2", "n3"]).await;
    let (leader, replicas) = metadata(ports[0], "payments", None, Some(2)).await;
    let l = ports
        .iter()
        .position(|p| u32::from(*p) == leader)
        .expect("a node's port");
    let mut others: Vec<u32> = ports
        .iter()
        .filter(|p| u32::from(**p) != leader)
        .map(|p| u32::from(*p))
        .collect();
    others.sort_unstable();
    assert_eq!(replicas, others, "the other two members are its replicas");
    // Asked through a node that does not lead it, the client publishes
    // on the leader.
    let asked = (l + 1) % 3;
    publish(
        ports[asked],
        "payments",
        "payer",
        &(1..=30).collect::<Vec<_>>(),
    )
    .await;
    // A replica stores a consumer's offset through the leader.
    {
        let env = env(ports[asked]).await;
        let (consumer, got) = read_as_audit(&env, 30).await;
        assert_eq!(got, bodies(1..=30));
        consumer.store_offset(19).await.expect("stored");
        // A stored offset is not confirmed: the consumer's node shows it
        // once the group committed it.
        until_offset(&consumer, 19).await;
    }
    // The leader dies: another member leads, and knows the producer's
    // last publishing id (its log tracks it, as the leader's did).
    c.kill(l);
    let survivor = (l + 1) % 3;
    metadata(ports[survivor], "payments", Some(leader), Some(1)).await;
    // A retry of 29 and 30 after a lost confirm is dropped; 31 is new.
    publish(ports[survivor], "payments", "payer", &[29, 30, 31]).await;
    let env_s = env(ports[survivor]).await;
    let (consumer, got) = read_as_audit(&env_s, 31).await;
    assert_eq!(got, bodies(1..=31), "at offsets 0-30");
    // The offset stored before the failover is there on the survivors.
    until_offset(&consumer, 19).await;
    // A new publisher declared where the old leader was, once it is back
    // and a follower, is refused: the client goes by the metadata.
    c.spawn(l);
    c.wait_http(l).await;
    let back = Client::connect(
        ClientOptions::builder()
            .host("127.0.0.1")
            .port(ports[l])
            .build(),
    )
    .await
    .expect("client");
    let declared = back
        .declare_publisher(1, None, "payments")
        .await
        .expect("answer");
    assert_eq!(declared.code(), &ResponseCode::StreamNotAvailable);
    let _ = back.close().await;
    // Deleted through one node, it is gone from all.
    env_s.delete_stream("payments").await.expect("deleted");
    for i in 0..3 {
        c.until(&format!("payments gone from node {i}"), || async {
            c.queue_on(i, "payments").await.is_none()
        })
        .await;
    }
}

/// A producer on a node that lost the stream's leadership (paused while
/// the others elected another) gets no confirm for what it publishes
/// there, then STREAM_NOT_AVAILABLE: the client learns to look for the
/// leader again, as when RabbitMQ moves a stream's leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_whose_node_loses_the_lead_is_told_so() {
    let (c, ports) = start().await;
    let env0 = env(ports[0]).await;
    env0.stream_creator()
        .create("orders")
        .await
        .expect("created");
    let (leader, _) = metadata(ports[0], "orders", None, Some(2)).await;
    assert_eq!(leader, u32::from(ports[0]), "placed on the declaring node");
    let producer = env0.producer().build("orders").await.expect("producer");
    let first = Message::builder().body("before").build();
    let status = tokio::time::timeout(harness::WAIT, producer.send_with_confirm(first))
        .await
        .expect("in time")
        .expect("confirm");
    assert!(status.confirmed());
    c.pause(0);
    metadata(ports[1], "orders", Some(leader), None).await;
    c.resume(0);
    let deadline = Instant::now() + harness::WAIT;
    loop {
        let m = Message::builder().body("after").build();
        let status = tokio::time::timeout(harness::WAIT, producer.send_with_confirm(m))
            .await
            .expect("an answer in time")
            .expect("an answer");
        assert!(
            !status.confirmed(),
            "confirmed by a node that does not lead"
        );
        if status.status() == &ResponseCode::StreamNotAvailable {
            break;
        }
        assert!(Instant::now() < deadline, "still {:?}", status.status());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = producer.close().await;
    // What the old leader had confirmed is still there.
    let env1 = env(ports[1]).await;
    let mut consumer = env1
        .consumer()
        .offset(OffsetSpecification::First)
        .build("orders")
        .await
        .expect("consumer");
    assert_eq!(read(&mut consumer, 1).await[0].1, "before");
}

/// rstream, RabbitMQ's Python stream client, against the cluster: asked
/// through a node that does not lead the stream, its producer publishes
/// on the leader (deduplicating a retried publishing id), its consumer
/// reads the whole stream from a replica (the first message written over
/// AMQP 0-9-1) and stores an offset there that reads back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rstream_publishes_and_reads_through_a_cluster() {
    if !crate::common::rstream::rstream_or_skip() {
        return;
    }
    let (c, ports) = start().await;
    let mut args = lapin::types::FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        lapin::types::AMQPValue::LongString("stream".into()),
    );
    // Declared through n2, which then leads it.
    c.declare_durable(1, "py-events", args).await;
    c.until_members("py-events", &["n1", "n2", "n3"]).await;
    let conn = harness::connect(&c.nodes[1].amqp_uri()).await;
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    let confirm = ch
        .basic_publish(
            "",
            "py-events",
            lapin::options::BasicPublishOptions::default(),
            b"from amqp",
            lapin::BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    assert!(confirm.is_ack());
    let (leader, _) = metadata(ports[0], "py-events", None, Some(2)).await;
    assert_eq!(leader, u32::from(ports[1]));
    let n1 = std::net::SocketAddr::from(([127, 0, 0, 1], ports[0]));
    crate::common::rstream::run_script(n1, "client_paths.py", "py-events").await;
}
