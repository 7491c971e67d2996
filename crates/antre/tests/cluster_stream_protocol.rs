//! RabbitMQ's stream protocol on a cluster of three real `antre`
//! processes (tests/cluster/harness.rs), driven by the
//! `rabbitmq-stream-client` crate as a user's application would: the
//! client asks any node for a stream's metadata and goes where it says (to
//! the leader to publish, to a replica to read), a named producer's
//! deduplication holds across a change of leader, and stored offsets are
//! the group's, whichever node a consumer stores them through.

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
async fn start() -> (TestCluster, Vec<u16>) {
    let (mut c, ports) = plan();
    c.launch().await;
    (c, ports)
}

/// [`start`]'s cluster, its nodes reaching each other through proxies
/// that inject faults.
async fn start_proxied() -> (TestCluster, Vec<u16>, Mesh) {
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
        send_confirmed(&mut producer, id).await;
    }
    producer.close().await.expect("closed");
}

/// Sends `p{id}` with publishing id `id` and waits for its confirm.
async fn send_confirmed(producer: &mut Producer<Dedup>, id: u64) {
    let status = tokio::time::timeout(harness::WAIT, producer.send_with_confirm(entry(id)))
        .await
        .expect("confirm in time")
        .expect("confirm");
    assert!(status.confirmed(), "publishing id {id} confirmed");
}

/// Creates stream `name` through the node at `port`, and waits until
/// every node lists its three members.
async fn create(c: &TestCluster, port: u16, name: &str) {
    env(port)
        .await
        .stream_creator()
        .create(name)
        .await
        .expect("created");
    c.until_members(name, &["n1", "n2", "n3"]).await;
}

/// The index of the node whose stream listener is on `port`.
fn node_on(ports: &[u16], port: u32) -> usize {
    ports
        .iter()
        .position(|p| u32::from(*p) == port)
        .expect("a node's port")
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

/// Which single-active-consumer members were told what, in order:
/// (member, active).
type Activations = Arc<Mutex<Vec<(&'static str, bool)>>>;

/// The same, of a super stream's members: (member, partition, active).
type PartitionActivations = Arc<Mutex<Vec<(&'static str, String, bool)>>>;

/// A member of consumer group `name` of `stream`, subscribed on the node
/// at `port` itself (the client's load-balancer mode keeps it there: every
/// node advertises the same host). Activated, it reads from the offset in
/// `resume`, as an application would from its stored offset.
async fn sac_member(
    port: u16,
    stream: &str,
    name: &str,
    member: &'static str,
    told: &Activations,
    resume: &Arc<std::sync::atomic::AtomicU64>,
) -> (Environment, Consumer) {
    let env = tokio::time::timeout(
        harness::WAIT,
        Environment::builder()
            .host("127.0.0.1")
            .port(port)
            .load_balancer_mode(true)
            .build(),
    )
    .await
    .expect("in time")
    .expect("environment");
    let told = Arc::clone(told);
    let resume = Arc::clone(resume);
    let consumer = env
        .consumer()
        .name(name)
        .enable_single_active_consumer(true)
        .offset(OffsetSpecification::First)
        .consumer_update(move |active, _ctx| {
            told.lock().expect("lock").push((member, active == 1));
            let at = resume.load(std::sync::atomic::Ordering::SeqCst);
            async move { OffsetSpecification::Offset(at) }
        })
        .build(stream)
        .await
        .expect("consumer");
    (env, consumer)
}

/// Single active consumer groups span the cluster, as RabbitMQ's
/// coordinator makes them: of members subscribed on different nodes, one
/// reads; when it leaves, or its node dies, another takes over where the
/// group left off. (Each node kept groups of its own before: both members
/// read every message.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_active_consumer_group_spans_the_nodes() {
    use std::sync::atomic::{AtomicU64, Ordering};
    let (mut c, ports) = start().await;
    create(&c, ports[0], "jobs").await;
    let told: Activations = Arc::default();
    let resume = Arc::new(AtomicU64::new(0));
    // "a" on n2 joins first and is activated; "b" on n3 waits.
    let (_ea, mut a) = sac_member(ports[1], "jobs", "worker", "a", &told, &resume).await;
    let (_eb, mut b) = sac_member(ports[2], "jobs", "worker", "b", &told, &resume).await;
    publish(ports[0], "jobs", "jobs-p", &(0..10).collect::<Vec<_>>()).await;
    assert_eq!(read(&mut a, 10).await[9], (9, "p9".to_owned()));
    publish(ports[0], "jobs", "jobs-p", &(10..20).collect::<Vec<_>>()).await;
    assert_eq!(read(&mut a, 10).await[9], (19, "p19".to_owned()));
    assert_eq!(*told.lock().expect("lock"), [("a", true)], "b never active");
    // Each node's management API shows its member as the group decided.
    for (node, status) in [(1, "single_active"), (2, "waiting")] {
        let (_, s) = c.api(node, "GET", "/api/queues/%2F/jobs", None).await;
        assert_eq!(s["consumer_details"][0]["activity_status"], status);
    }
    // "a" leaves: "b" takes over from offset 20.
    resume.store(20, Ordering::SeqCst);
    a.handle().close().await.expect("a closed");
    publish(ports[0], "jobs", "jobs-p", &[20, 21]).await;
    assert_eq!(
        read(&mut b, 2).await,
        [(20, "p20".to_owned()), (21, "p21".to_owned())]
    );
    // "d" on n2 waits behind "b"; b's node dies: once its lease ended
    // the coordinator activates "d", which reads from offset 22.
    resume.store(22, Ordering::SeqCst);
    let (_ed, mut d) = sac_member(ports[1], "jobs", "worker", "d", &told, &resume).await;
    c.kill(2);
    publish(ports[0], "jobs", "jobs-p", &[22, 23]).await;
    assert_eq!(
        read(&mut d, 2).await,
        [(22, "p22".to_owned()), (23, "p23".to_owned())]
    );
    assert_eq!(
        *told.lock().expect("lock"),
        [("a", true), ("b", true), ("d", true)]
    );
}

/// The stream's leader dies while a member reads: the new leader's
/// coordinator keeps that member active (its node reports it within its
/// lease) and activates no other; the member reads what is published
/// after the failover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_active_consumer_stays_active_through_a_leader_failover() {
    use std::sync::atomic::AtomicU64;
    let (mut c, ports) = start().await;
    create(&c, ports[0], "jobs").await;
    let told: Activations = Arc::default();
    let resume = Arc::new(AtomicU64::new(0));
    let (_ea, mut a) = sac_member(ports[1], "jobs", "worker", "a", &told, &resume).await;
    let (_eb, _b) = sac_member(ports[2], "jobs", "worker", "b", &told, &resume).await;
    publish(ports[0], "jobs", "jobs-p", &[0, 1]).await;
    assert_eq!(read(&mut a, 2).await[1], (1, "p1".to_owned()));
    c.kill(0);
    let (leader, _) = metadata(ports[1], "jobs", Some(u32::from(ports[0])), Some(1)).await;
    publish(
        u16::try_from(leader).expect("a port"),
        "jobs",
        "jobs-p",
        &[2, 3],
    )
    .await;
    assert_eq!(
        read(&mut a, 2).await,
        [(2, "p2".to_owned()), (3, "p3".to_owned())]
    );
    // Past the new coordinator's wait for reports: still only "a".
    tokio::time::sleep(antre_broker::stream::sac::TAKEOVER_GRACE).await;
    publish(
        u16::try_from(leader).expect("a port"),
        "jobs",
        "jobs-p",
        &[4],
    )
    .await;
    assert_eq!(read(&mut a, 1).await, [(4, "p4".to_owned())]);
    assert_eq!(*told.lock().expect("lock"), [("a", true)]);
}

/// The node of the active member is cut off (its links take bytes and
/// forward none): its member steps down when its lease ends, and only
/// then, once the coordinator's longer lease ended too, the member on a
/// node of the majority takes over. Healed, the cut-off node's member
/// waits behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_active_consumer_steps_down_before_another_takes_over() {
    use std::sync::atomic::{AtomicU64, Ordering};
    let (c, ports, mesh) = start_proxied().await;
    create(&c, ports[0], "jobs").await;
    let told: Activations = Arc::default();
    let resume = Arc::new(AtomicU64::new(0));
    let (_ea, mut a) = sac_member(ports[1], "jobs", "worker", "a", &told, &resume).await;
    let (_eb, mut b) = sac_member(ports[2], "jobs", "worker", "b", &told, &resume).await;
    publish(ports[0], "jobs", "jobs-p", &[0, 1]).await;
    assert_eq!(read(&mut a, 2).await[1], (1, "p1".to_owned()));
    resume.store(2, Ordering::SeqCst);
    mesh.blackhole(1);
    publish(ports[0], "jobs", "jobs-p", &[2, 3]).await;
    assert_eq!(
        read(&mut b, 2).await,
        [(2, "p2".to_owned()), (3, "p3".to_owned())]
    );
    assert_eq!(
        *told.lock().expect("lock"),
        [("a", true), ("a", false), ("b", true)],
        "a stepped down before b was activated"
    );
    // Healed, n2 reports "a" again, behind "b": "b" leaves, "a" takes
    // over.
    mesh.heal();
    resume.store(4, Ordering::SeqCst);
    b.handle().close().await.expect("b closed");
    publish(ports[0], "jobs", "jobs-p", &[4]).await;
    assert_eq!(read(&mut a, 1).await, [(4, "p4".to_owned())]);
    assert_eq!(
        *told.lock().expect("lock"),
        [("a", true), ("a", false), ("b", true), ("a", true)]
    );
}

/// A super stream's partitions spread over the members of a group
/// whatever node each is on: a member on another node joining makes the
/// first step down on the partition that is now the newcomer's (index 1
/// of 2 members), and keeps partition 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_super_streams_partitions_spread_over_members_on_different_nodes() {
    let (c, ports) = start().await;
    env(ports[0])
        .await
        .stream_creator()
        .create_super_stream("orders", 2, None)
        .await
        .expect("super stream");
    for p in ["orders-0", "orders-1"] {
        c.until_members(p, &["n1", "n2", "n3"]).await;
    }
    let told: PartitionActivations = Arc::default();
    let member = |port: u16, who: &'static str| {
        let told = Arc::clone(&told);
        async move {
            let env = Environment::builder()
                .host("127.0.0.1")
                .port(port)
                .load_balancer_mode(true)
                .build()
                .await
                .expect("environment");
            let consumer = env
                .super_stream_consumer()
                .name("app")
                .enable_single_active_consumer(true)
                .offset(OffsetSpecification::First)
                .consumer_update(move |active, ctx| {
                    told.lock()
                        .expect("lock")
                        .push((who, ctx.stream(), active == 1));
                    async { OffsetSpecification::Next }
                })
                .build("orders")
                .await
                .expect("super stream consumer");
            (env, consumer)
        }
    };
    let (_ex, mut x) = member(ports[1], "x").await;
    c.until("x active on both partitions", || async {
        told.lock().expect("lock").len() == 2
    })
    .await;
    let (_ey, mut y) = member(ports[2], "y").await;
    c.until("y active on orders-1", || async {
        told.lock().expect("lock").len() == 4
    })
    .await;
    let mut got = told.lock().expect("lock").clone();
    got[..2].sort();
    assert_eq!(
        got,
        [
            ("x", "orders-0".to_owned(), true),
            ("x", "orders-1".to_owned(), true),
            ("x", "orders-1".to_owned(), false),
            ("y", "orders-1".to_owned(), true),
        ]
    );
    // Each reads its partition's messages from where it was activated.
    publish(ports[0], "orders-1", "orders-p1", &[1]).await;
    publish(ports[0], "orders-0", "orders-p0", &[0]).await;
    for (consumer, want) in [(&mut y, ("orders-1", "p1")), (&mut x, ("orders-0", "p0"))] {
        let d = tokio::time::timeout(harness::WAIT, consumer.next())
            .await
            .expect("delivery in time")
            .expect("a delivery")
            .expect("delivery ok");
        let body = String::from_utf8_lossy(d.message().data().unwrap_or_default()).into_owned();
        assert_eq!((d.stream().as_str(), body.as_str()), want);
    }
}
