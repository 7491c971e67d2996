//! RabbitMQ's stream protocol on a cluster of three real `antre`
//! processes (tests/cluster/harness.rs), driven by the
//! `rabbitmq-stream-client` crate as a user's application would: the
//! client asks any node for a stream's metadata and goes where it says (to
//! the leader to publish, to a replica to read), a named producer's
//! deduplication holds across a change of leader, and stored offsets are
//! the group's, whichever node a consumer stores them through.

use crate::common::stream_confirm::{answer_of, answer_of_named};
use crate::harness;
use crate::proxy::Mesh;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use harness::{free_port, TestCluster, SECRET};
use rabbitmq_stream_client::types::{Message, OffsetSpecification, ResponseCode};
use rabbitmq_stream_client::{Client, ClientOptions, Consumer, Dedup, Environment, Producer};
use tokio::time::Instant;

/// A cluster whose nodes also listen for the stream protocol; returns it
/// with each node's stream port.
pub(crate) async fn start() -> (TestCluster, Vec<u16>) {
    let (mut c, ports) = plan();
    c.launch().await;
    (c, ports)
}

/// [`start`]'s cluster, its nodes reaching each other through proxies
/// that inject faults.
pub(crate) async fn start_proxied() -> (TestCluster, Vec<u16>, Mesh) {
    let (mut c, ports) = plan();
    let mesh = Mesh::between(&mut c).await;
    c.launch().await;
    (c, ports, mesh)
}

fn plan() -> (TestCluster, Vec<u16>) {
    let mut c = TestCluster::plan(&[SECRET, SECRET, SECRET]);
    let mut ports = Vec::new();
    for n in &mut c.nodes {
        let port = free_port();
        n.args = vec!["--stream-listen".into(), format!("127.0.0.1:{port}")];
        ports.push(port);
    }
    (c, ports)
}

pub(crate) async fn env(port: u16) -> Environment {
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
pub(crate) async fn metadata(
    port: u16,
    stream: &str,
    not_leader: Option<u32>,
    replicas: Option<usize>,
) -> (u32, Vec<u32>) {
    let deadline = Instant::now() + harness::WAIT;
    loop {
        // A client per look: rabbitmq-stream-client 0.11 decodes a frame
        // before all of it has arrived, and its reader panics (and every
        // later request on the connection hangs) when a read ends inside a
        // string of it, which about the 80th metadata answer on one
        // connection does (its read buffer full).
        let client = Client::connect(
            ClientOptions::builder()
                .host("127.0.0.1")
                .port(port)
                .build(),
        )
        .await
        .expect("client");
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
        let _ = client.close().await;
        assert!(
            Instant::now() < deadline,
            "no full metadata of {stream}: {m:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Publishes `ids` as a producer named `name` (through the node at
/// `port`, which sends the client to the leader); each is confirmed.
pub(crate) async fn publish(port: u16, stream: &str, name: &str, ids: &[u64]) {
    let env = env(port).await;
    let mut producer = env
        .producer()
        .name(name)
        .build(stream)
        .await
        .expect("producer");
    for &id in ids {
        send_confirmed(&mut producer, id).await;
    }
    producer.close().await.expect("closed");
}

/// Sends `p{id}` with publishing id `id` and waits for its confirm.
async fn send_confirmed(producer: &mut Producer<Dedup>, id: u64) {
    let status = answer_of_named(producer, entry(id), harness::WAIT).await;
    assert!(status.confirmed(), "publishing id {id} confirmed");
}

/// Creates stream `name` through the node at `port`, and waits until
/// every node lists its three members.
pub(crate) async fn create(c: &TestCluster, port: u16, name: &str) {
    env(port)
        .await
        .stream_creator()
        .create(name)
        .await
        .expect("created");
    c.until_members(name, &["n1", "n2", "n3"]).await;
}

/// The index of the node whose stream listener is on `port`.
pub(crate) fn node_on(ports: &[u16], port: u32) -> usize {
    ports
        .iter()
        .position(|p| u32::from(*p) == port)
        .expect("a node's port")
}

/// Reads `n` messages from the first offset: (offset, body).
pub(crate) async fn read(consumer: &mut Consumer, n: usize) -> Vec<(u64, String)> {
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
    create(&c, ports[1], "payments").await;
    let (leader, replicas) = metadata(ports[0], "payments", None, Some(2)).await;
    let l = node_on(&ports, leader);
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
    let status = answer_of(&producer, first, harness::WAIT).await;
    assert!(status.confirmed());
    c.pause(0);
    metadata(ports[1], "orders", Some(leader), None).await;
    c.resume(0);
    let deadline = Instant::now() + harness::WAIT;
    loop {
        let m = Message::builder().body("after").build();
        let status = answer_of(&producer, m, harness::WAIT).await;
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

/// The payment case over the stream protocol: a named producer keeps many
/// publishes in flight while the stream's leader is killed -9; it
/// publishes again, on the new leader, every one whose confirm it did not
/// get. Deduplication by publishing id keeps each exactly once: the stream
/// holds every id once, in order, nothing lost, nothing twice.
/// `ANTRE_STREAM_PROTOCOL_CYCLES` sets the kills (CI: 2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_producer_stores_each_message_once_through_leader_kills() {
    let cycles = crate::common::rounds_from_env("ANTRE_STREAM_PROTOCOL_CYCLES", 2);
    let (mut c, ports) = start().await;
    create(&c, ports[0], "ledger").await;
    let confirmed = Arc::new(Mutex::new(BTreeSet::new()));
    let mut next = 1u64;
    let mut unconfirmed: Vec<u64> = Vec::new();
    for cycle in 0..cycles {
        let (leader, _) = metadata(ports[cycle % 3], "ledger", None, Some(2)).await;
        let l = node_on(&ports, leader);
        let (_env, mut producer) = payer(ports[(l + 1) % 3]).await;
        // First again what the last leader's death left without a
        // confirm: each is stored once, whether it was or not.
        for id in unconfirmed.drain(..) {
            send_confirmed(&mut producer, id).await;
            confirmed.lock().expect("lock").insert(id);
        }
        // Then new ones, many in flight; the leader is killed once 50 of
        // this cycle's are confirmed, and 50 more go out after that.
        let first = next;
        let mut after_kill = None;
        while after_kill.is_none_or(|n| n < 50) {
            let id = next;
            next += 1;
            let done = Arc::clone(&confirmed);
            let sent = producer
                .send(entry(id), move |status| async move {
                    if status.is_ok_and(|s| s.confirmed()) {
                        done.lock().expect("lock").insert(id);
                    }
                })
                .await;
            if sent.is_err() {
                break;
            }
            match &mut after_kill {
                Some(n) => *n += 1,
                None => {
                    let got = confirmed.lock().expect("lock").range(first..).count();
                    if got >= 50 {
                        c.kill(l);
                        after_kill = Some(0);
                    }
                }
            }
            tokio::task::yield_now().await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), producer.close()).await;
        let done = confirmed.lock().expect("lock").clone();
        unconfirmed = (first..next).filter(|id| !done.contains(id)).collect();
        c.spawn(l);
        c.wait_http(l).await;
    }
    // The last cycle's unconfirmed, once more, then the whole stream.
    // Every node names both replicas again: a restarted node knows the
    // others' stream listeners (kept with its applied metadata).
    let (leader, _) = metadata(ports[0], "ledger", None, Some(2)).await;
    let (env, mut producer) = payer(u16::try_from(leader).expect("a port")).await;
    for id in unconfirmed.drain(..) {
        send_confirmed(&mut producer, id).await;
    }
    producer.close().await.expect("closed");
    let n = usize::try_from(next - 1).expect("a count");
    let mut consumer = env
        .consumer()
        .offset(OffsetSpecification::First)
        .build("ledger")
        .await
        .expect("consumer");
    let mut got: Vec<String> = Vec::new();
    while got.len() < n {
        match tokio::time::timeout(Duration::from_secs(5), consumer.next()).await {
            Ok(Some(Ok(d))) => got
                .push(String::from_utf8_lossy(d.message().data().unwrap_or_default()).into_owned()),
            _ => break,
        }
    }
    let want = bodies(1..next);
    let held: std::collections::HashSet<&String> = got.iter().collect();
    let missing: Vec<&String> = want.iter().filter(|b| !held.contains(b)).collect();
    // Missing ids as ranges, for a failure's message.
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for b in &missing {
        let id: u64 = b[1..].parse().expect("an id");
        match ranges.last_mut() {
            Some((_, hi)) if *hi + 1 == id => *hi = id,
            _ => ranges.push((id, id)),
        }
    }
    assert_eq!(got.len(), n, "missing ids {ranges:?}");
    assert_eq!(got, want, "every id once, in order");
    c.until("nothing more in the stream", || async {
        c.queue_on(0, "ledger")
            .await
            .is_some_and(|q| q["messages"] == serde_json::json!(n))
    })
    .await;
    eprintln!(
        "stream protocol dedup through {cycles} leader kills: {n} ids, each stored once, {} confirmed first time",
        confirmed.lock().expect("lock").len()
    );
}

/// Producer "payer" of "ledger", asked through the node at `port`: tried
/// again while a failover leaves that node without a leader to name (the
/// client then reports the stream missing), as an application retries.
async fn payer(port: u16) -> (Environment, Producer<Dedup>) {
    let deadline = Instant::now() + harness::WAIT;
    loop {
        let env = env(port).await;
        match env.producer().name("payer").build("ledger").await {
            Ok(p) => return (env, p),
            Err(e) => assert!(Instant::now() < deadline, "producer: {e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn entry(id: u64) -> Message {
    Message::builder()
        .body(format!("p{id}"))
        .publishing_id(id)
        .build()
}

/// Draining a node (`antre cluster drain`) closes its stream clients too
/// and refuses new ones, and hands the streams it leads to another member,
/// which the clients' metadata then names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_node_closes_its_stream_clients_and_hands_its_streams_away() {
    let (c, ports) = start().await;
    let env0 = env(ports[0]).await;
    env0.stream_creator()
        .create("payouts")
        .await
        .expect("created");
    let (leader, _) = metadata(ports[0], "payouts", None, Some(2)).await;
    assert_eq!(leader, u32::from(ports[0]), "placed on the declaring node");
    let client = Client::connect(
        ClientOptions::builder()
            .host("127.0.0.1")
            .port(ports[0])
            .build(),
    )
    .await
    .expect("client");

    let (ok, out, err) = c.cli(0, &["cluster", "drain"]).await;
    assert!(ok && out.contains("payouts"), "{out}{err}");
    // Its connection is closed: a request on it fails (the client marks
    // itself closed only once it writes).
    c.until("the drained node's stream client to be closed", || async {
        let ask = client.metadata(vec!["payouts".to_owned()]);
        matches!(
            tokio::time::timeout(Duration::from_secs(2), ask).await,
            Ok(Err(_))
        )
    })
    .await;
    let refused = Client::connect(
        ClientOptions::builder()
            .host("127.0.0.1")
            .port(ports[0])
            .build(),
    )
    .await;
    assert!(refused.is_err(), "a new stream client of a drained node");
    // Nor is it a replica to read from any more: the metadata names the
    // third node alone.
    let (moved, replicas) = metadata(ports[1], "payouts", Some(leader), Some(1)).await;
    assert_ne!(moved, leader);
    assert!(!replicas.contains(&u32::from(ports[0])), "{replicas:?}");
}
