//! Quorum queues on a cluster of three real `antre` processes
//! (tests/cluster/harness.rs), driven by lapin and the management API:
//! a quorum queue has three members; publishes are confirmed once
//! committed; acked messages are gone on every replica; kill -9 of the
//! queue's leader under confirmed publishing and consuming loses nothing
//! confirmed and marks every possible redelivery; x-delivery-limit and
//! dead-lettering hold across a failover; with two of three nodes down
//! nothing is confirmed, and nothing confirmed is lost when they return.
//!
//! `ANTRE_QUORUM_CYCLES=100` runs the failover loop 100 times (see
//! scripts/soak-quorum-failover.sh); CI runs 3.

use crate::harness;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::proxy::{Flow, LinkState, Mesh};
use futures::StreamExt;
use harness::{publish_confirmed, TestCluster, SECRET};
use lapin::options::*;
use lapin::publisher_confirm::Confirmation;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde_json::{json, Value};
use tokio::time::Instant;

async fn connect(uri: &str) -> Option<Connection> {
    tokio::time::timeout(
        Duration::from_secs(5),
        Connection::connect(uri, ConnectionProperties::default()),
    )
    .await
    .ok()?
    .ok()
}

fn quorum_args(extra: &[(&str, AMQPValue)]) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    for (k, v) in extra {
        args.insert((*k).into(), v.clone());
    }
    args
}

async fn declare_quorum(ch: &Channel, name: &str, extra: &[(&str, AMQPValue)]) {
    ch.queue_declare(
        name,
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        quorum_args(extra),
    )
    .await
    .expect("declare quorum queue");
}

/// Declares quorum queue `name` on the first node, retrying while the
/// metadata group may still be electing its first leader.
async fn declare_on_n1(c: &TestCluster, name: &str) {
    c.declare_durable(0, name, quorum_args(&[])).await
}

/// The queue as node `i` lists it.
async fn queue_json(c: &TestCluster, i: usize, name: &str) -> Option<Value> {
    match c
        .try_api(i, "GET", &format!("/api/queues/%2F/{name}"), None)
        .await
    {
        Some((200, v)) => Some(v),
        _ => None,
    }
}

/// The running node that leads queue `name` and has taken its engine over
/// (it lists itself as the leader only then).
async fn leader(c: &TestCluster, name: &str) -> Option<usize> {
    for (i, n) in c.nodes.iter().enumerate() {
        if !n.is_running() {
            continue;
        }
        if let Some(q) = queue_json(c, i, name).await {
            if q["leader"] == json!(n.name) {
                return Some(i);
            }
        }
    }
    None
}

/// Whether node `i`'s replica of queue `name` holds as many messages as the
/// leader's (a restarted member caught up, the queue being idle).
async fn caught_up(c: &TestCluster, name: &str, i: usize) -> bool {
    let Some(l) = leader(c, name).await else {
        return false;
    };
    let (Some(mine), Some(leaders)) = (queue_json(c, i, name).await, queue_json(c, l, name).await)
    else {
        return false;
    };
    mine["replica_messages"].is_u64() && mine["replica_messages"] == leaders["replica_messages"]
}

async fn wait_leader(c: &TestCluster, name: &str) -> usize {
    let deadline = Instant::now() + harness::WAIT;
    loop {
        if let Some(i) = leader(c, name).await {
            return i;
        }
        if Instant::now() > deadline {
            c.dump_logs();
            panic!("no leader for {name}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Drains queue `name` with `basic.get` from whichever node leads it,
/// until `want` bodies (their trailing padding trimmed) came or the wait is
/// over; asserts they are `want`, in order. Gets settle through the group:
/// those a leader deposed meanwhile served come again from the next one,
/// in order, and count once.
async fn drain_all(c: &TestCluster, name: &str, want: &[impl AsRef<str>]) {
    let want: Vec<&str> = want.iter().map(AsRef::as_ref).collect();
    let deadline = Instant::now() + harness::WAIT;
    let mut bodies: Vec<String> = Vec::new();
    while bodies.len() < want.len() && Instant::now() < deadline {
        let l = wait_leader(c, name).await;
        // A get may fail while the leader changes (its node forwards to a
        // leader that is still replaying its log after a restart): the
        // next round asks the leader then.
        let (got, failed) = c.try_drain(l, name).await;
        if let Some(e) = failed {
            eprintln!("drain of {name} through node {l}: {e:?}");
        }
        for b in got {
            let b = b.trim_end().to_owned();
            if !bodies.contains(&b) {
                bodies.push(b);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if bodies != want {
        c.dump_logs();
    }
    assert_eq!(bodies, want);
}

/// Publishes `body` to `queue`, persistent; the confirm to wait for.
async fn publish_persistent(
    ch: &Channel,
    queue: &str,
    body: &[u8],
) -> lapin::publisher_confirm::PublisherConfirm {
    ch.basic_publish(
        "",
        queue,
        BasicPublishOptions::default(),
        body,
        persistent(),
    )
    .await
    .expect("publish")
}

fn persistent() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2)
}

/// Publishes `{prefix}0`.. `{prefix}{n-1}` to `queue`, each confirmed.
async fn publish_all_confirmed(ch: &Channel, queue: &str, prefix: &str, n: usize) {
    for i in 0..n {
        let body = format!("{prefix}{i}");
        assert_eq!(
            publish_confirmed(ch, queue, body.as_bytes(), harness::WAIT).await,
            Some(true),
            "confirm of {body}"
        );
    }
}

/// The `x-delivery-count` header a delivery carries.
fn delivery_count(d: &lapin::message::Delivery) -> Option<AMQPValue> {
    d.properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-delivery-count").cloned())
}

/// Gives a delivery back to its queue (nack with requeue).
async fn nack_requeue(d: &lapin::message::Delivery) {
    d.nack(BasicNackOptions {
        requeue: true,
        ..Default::default()
    })
    .await
    .expect("nack");
}

async fn confirm_channel(conn: &Connection) -> Channel {
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    ch
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_queue_replicates_and_survives_its_leaders_death() {
    let mut c = TestCluster::start(&[SECRET, SECRET, SECRET]).await;
    declare_on_n1(&c, "orders").await;
    let l = wait_leader(&c, "orders").await;
    // Every node lists it with its three members and the same leader.
    for i in 0..3 {
        let leader_name = c.nodes[l].name.clone();
        c.until("every node to know the leader", || async {
            queue_json(&c, i, "orders")
                .await
                .is_some_and(|q| q["leader"] == json!(leader_name))
        })
        .await;
        let q = queue_json(&c, i, "orders").await.expect("queue");
        assert_eq!(q["type"], json!("quorum"), "{q}");
        let mut members: Vec<String> =
            serde_json::from_value(q["members"].clone()).expect("members");
        members.sort();
        assert_eq!(members, ["n1", "n2", "n3"], "{q}");
        assert_eq!(q["node"], json!(leader_name), "{q}");
        assert!(q["online"].as_array().is_some_and(|o| !o.is_empty()), "{q}");
    }

    // Confirmed publishes on the leader, consumed there; the acked ones are
    // gone for good: after the leader dies they do not come back.
    let conn = connect(&c.nodes[l].amqp_uri()).await.expect("connect");
    let ch = confirm_channel(&conn).await;
    publish_all_confirmed(&ch, "orders", "first-", 20).await;
    let consumer_ch = conn.create_channel().await.expect("channel");
    for i in 0..5 {
        let got = consumer_ch
            .basic_get("orders", BasicGetOptions::default())
            .await
            .expect("get")
            .expect("a message");
        assert_eq!(got.delivery.data, format!("first-{i}").as_bytes());
        assert!(!got.delivery.redelivered);
        got.delivery
            .ack(BasicAckOptions::default())
            .await
            .expect("ack");
    }
    // A confirmed publish after the acks: its entry follows their settles
    // in the log, so once it is confirmed they are committed too.
    assert_eq!(
        publish_confirmed(&ch, "orders", b"barrier", harness::WAIT).await,
        Some(true)
    );
    drop(conn);
    c.kill(l);
    let l2 = wait_leader(&c, "orders").await;
    assert_ne!(l2, l);
    // With the default log filter a node says its queue's leader changed
    // once, without openraft's dozen lines for each election.
    if std::env::var("ANTRE_TEST_LOG").is_err() {
        assert!(c.nodes[l2].logged("this node leads the quorum queue now"));
        // (Its errors stay: a leader that lost its quorum says so.)
        let chatty = |n: &harness::Node| n.logged("INFO openraft::") || n.logged("WARN openraft::");
        assert!(
            !c.nodes.iter().any(chatty),
            "openraft's info and warnings are left out by default"
        );
    }
    let conn = connect(&c.nodes[l2].amqp_uri()).await.expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    let mut bodies = Vec::new();
    while let Some(got) = ch
        .basic_get("orders", BasicGetOptions { no_ack: true })
        .await
        .expect("get")
    {
        // Every message is marked: the dead leader may have delivered it.
        assert!(got.delivery.redelivered);
        bodies.push(String::from_utf8_lossy(&got.delivery.data).into_owned());
    }
    let mut expected: Vec<String> = (5..20).map(|i| format!("first-{i}")).collect();
    expected.push("barrier".into());
    assert_eq!(
        bodies, expected,
        "acked messages stay gone, the rest survive in order"
    );
    drop(conn);
    c.spawn(l);
    c.wait_http(l).await;
    c.until("the restarted member to catch up", || {
        caught_up(&c, "orders", l)
    })
    .await;

    let cycles = crate::common::rounds_from_env("ANTRE_QUORUM_CYCLES", 3);
    failover_cycles(&mut c, "orders", cycles, None).await;

    // Deleting the queue stops its group and removes its data everywhere.
    for i in 0..3 {
        let groups = c.nodes[i].dir.join("cluster").join("queues");
        assert!(
            std::fs::read_dir(&groups).is_ok_and(|mut d| d.next().is_some()),
            "{} holds a replica",
            c.nodes[i].name
        );
    }
    c.delete_everywhere("orders").await;
}

/// `x-max-length` bounds a quorum queue on every member, not only in the
/// leader's engine: the heads it drops are settled through the log, so
/// each member's replicated set (its memory) holds the limit, and a new
/// leader has the same last messages.
/// A burst of large messages goes out in entries of a few MiB (each
/// confirmed once all of its burst's entries are committed), and a message
/// larger than the cluster link's old 64 MiB frame replicates as well (its
/// entry could never reach a follower: the publish was never confirmed).
/// The leader killed afterwards, the new one has them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_messages_and_bursts_replicate() {
    let mut c = TestCluster::start(&[SECRET, SECRET, SECRET]).await;
    declare_on_n1(&c, "scans").await;
    let l = wait_leader(&c, "scans").await;
    c.until_members("scans", &["n1", "n2", "n3"]).await;
    let conn = connect(&c.nodes[l].amqp_uri()).await.expect("connect");
    let ch = confirm_channel(&conn).await;
    let body = |name: &str, size: usize| {
        let mut b = name.as_bytes().to_vec();
        b.resize(size, b' ');
        b
    };
    let mut confirms = Vec::new();
    for k in 0..40 {
        let confirm = publish_persistent(&ch, "scans", &body(&format!("page-{k}"), 1 << 20)).await;
        confirms.push(confirm);
    }
    for (k, confirm) in confirms.into_iter().enumerate() {
        let answer = tokio::time::timeout(harness::WAIT, confirm).await;
        assert!(
            matches!(answer, Ok(Ok(Confirmation::Ack(_)))),
            "page-{k}: {answer:?}"
        );
    }
    let whole = publish_confirmed(&ch, "scans", &body("whole-scan", 80 << 20), harness::WAIT).await;
    if whole != Some(true) {
        c.dump_logs();
    }
    assert_eq!(whole, Some(true), "an 80 MiB message confirmed");
    drop(conn);
    c.kill(l);
    let mut want: Vec<String> = (0..40).map(|k| format!("page-{k}")).collect();
    want.push("whole-scan".into());
    drain_all(&c, "scans", &want).await;
}

/// A large message that takes longer than a follower's lease to reach
/// it: the leader keeps its followers' leases meanwhile (openraft sends no
/// heartbeat while it has entries to replicate, and the followers used to
/// elect one of themselves: the publish was nacked).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_message_over_slow_links_keeps_its_leader() {
    let mut c = TestCluster::plan(&[SECRET, SECRET, SECRET]);
    let mesh = Mesh::between(&mut c).await;
    c.launch().await;
    declare_on_n1(&c, "slow").await;
    let l = wait_leader(&c, "slow").await;
    c.until_members("slow", &["n1", "n2", "n3"]).await;
    let conn = connect(&c.nodes[l].amqp_uri()).await.expect("connect");
    let ch = confirm_channel(&conn).await;
    // 6 MiB at 2 MiB/s: 3 s on the way to each follower, where a lease
    // lasts 0.8 s and an election timeout at most 0.8 s more.
    let capped = LinkState {
        up: Flow::Rate(2 << 20),
        ..LinkState::PASS
    };
    for f in (0..3).filter(|&f| f != l) {
        mesh.set(l, f, capped);
    }
    let body = vec![b'x'; 6 << 20];
    let confirmed = publish_confirmed(&ch, "slow", &body, harness::WAIT).await;
    if confirmed != Some(true) {
        c.dump_logs();
    }
    assert_eq!(confirmed, Some(true), "the large message is confirmed");
    mesh.heal();
    // A new leader would have nacked it (its entry, proposed in the old
    // leader's term, is ignored at apply).
    assert_eq!(leader(&c, "slow").await, Some(l), "the same leader");
    drop(conn);
    let body = String::from_utf8(body).expect("ascii");
    drain_all(&c, "slow", &[body]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_length_limit_bounds_every_member() {
    let mut c = TestCluster::start(&[SECRET, SECRET, SECRET]).await;
    declare_on_n1(&c, "warm").await;
    let conn = connect(&c.nodes[0].amqp_uri()).await.expect("connect");
    let ch = confirm_channel(&conn).await;
    declare_quorum(&ch, "bounded", &[("x-max-length", AMQPValue::LongInt(5))]).await;
    let l = wait_leader(&c, "bounded").await;
    drop(conn);
    let conn = connect(&c.nodes[l].amqp_uri()).await.expect("connect");
    let ch = confirm_channel(&conn).await;
    publish_all_confirmed(&ch, "bounded", "m", 20).await;
    for i in 0..3 {
        c.until("every member to hold the limit", || async {
            queue_json(&c, i, "bounded")
                .await
                .is_some_and(|q| q["replica_messages"] == json!(5))
        })
        .await;
    }
    drop(conn);
    c.kill(l);
    let want: Vec<String> = (15..20).map(|i| format!("m{i}")).collect();
    drain_all(&c, "bounded", &want).await;
}

/// `reject-publish` counts the publishes still being committed: a burst of
/// pipelined publishes (none confirmed yet when the next arrives) gets
/// exactly the limit acked and the rest nacked, as a queue that checked
/// only what its leader had applied would let the whole burst in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_publish_counts_publishes_not_committed_yet() {
    let c = TestCluster::start(&[SECRET, SECRET, SECRET]).await;
    declare_on_n1(&c, "warm").await;
    let conn = connect(&c.nodes[0].amqp_uri()).await.expect("connect");
    let ch = confirm_channel(&conn).await;
    let reject = ("x-overflow", AMQPValue::LongString("reject-publish".into()));
    declare_quorum(
        &ch,
        "few",
        &[("x-max-length", AMQPValue::LongInt(5)), reject.clone()],
    )
    .await;
    declare_quorum(
        &ch,
        "small",
        &[("x-max-length-bytes", AMQPValue::LongInt(100)), reject],
    )
    .await;
    for (queue, body_len, fits) in [("few", 1, 5), ("small", 30, 3)] {
        let l = wait_leader(&c, queue).await;
        let conn = connect(&c.nodes[l].amqp_uri()).await.expect("connect");
        let ch = confirm_channel(&conn).await;
        let mut confirms = Vec::new();
        for i in 0..40u8 {
            let body = vec![b'a' + i % 26; body_len];
            let confirm = publish_persistent(&ch, queue, &body).await;
            confirms.push(confirm);
        }
        let mut acked = 0;
        for confirm in confirms {
            match confirm.await.expect("confirm") {
                Confirmation::Ack(_) => acked += 1,
                Confirmation::Nack(_) => {}
                other => panic!("not a confirm: {other:?}"),
            }
        }
        assert_eq!(acked, fits, "{queue}: acked publishes");
        for i in 0..3 {
            c.until("every member to hold what was acked", || async {
                queue_json(&c, i, queue)
                    .await
                    .is_some_and(|q| q["replica_messages"] == json!(fits))
            })
            .await;
        }
    }
}

/// A quorum queue through which large messages flow takes a snapshot by
/// size, long before its entry count asks for one: each member's log (kept
/// in memory until a snapshot lets it go) stays bounded whatever the
/// messages' sizes. A member that was down meanwhile restarts from its
/// snapshot file and catches up from the leader's snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_queue_snapshots_by_size() {
    let mut c = TestCluster::start(&[SECRET, SECRET, SECRET]).await;
    declare_on_n1(&c, "large").await;
    let l = wait_leader(&c, "large").await;
    let conn = connect(&c.nodes[l].amqp_uri()).await.expect("connect");
    let ch = confirm_channel(&conn).await;
    // 40 MiB through the queue in about 80 entries (a publish, then its
    // settle); the queue itself stays nearly empty.
    // Each body is its name, padded to 1 MiB.
    let ch = &ch;
    let flow = |name: &'static str| async move {
        for i in 0..40 {
            let mut body = format!("{name}-{i:02}").into_bytes();
            body.resize(1 << 20, b' ');
            assert_eq!(
                publish_confirmed(ch, "large", &body, harness::WAIT).await,
                Some(true)
            );
            let got = ch
                .basic_get("large", BasicGetOptions { no_ack: true })
                .await
                .expect("get");
            assert!(got.is_some());
        }
    };
    flow("first").await;
    let snapshotted = |i: usize| {
        let groups = c.nodes[i].dir.join("cluster").join("queues");
        std::fs::read_dir(groups)
            .is_ok_and(|d| d.flatten().any(|g| g.path().join("snapshot.bin").exists()))
    };
    for i in 0..3 {
        c.until("every member to take a snapshot", || async {
            snapshotted(i)
        })
        .await;
    }

    // A member is down while 40 MiB more flow (three messages ahead of
    // them, so that three are left at the end), and the others' logs no
    // longer reach back to it: it restarts from its own snapshot and
    // catches up from the leader's.
    publish_all_confirmed(ch, "large", "ahead-", 3).await;
    let f = (0..3).find(|&i| i != l).expect("a follower");
    c.kill(f);
    flow("second").await;
    drop(conn);
    c.spawn(f);
    c.wait_http(f).await;
    c.until("the restarted member to catch up", || async {
        queue_json(&c, f, "large")
            .await
            .is_some_and(|q| q["replica_messages"] == json!(3))
    })
    .await;
    // 80 MiB went through; the records of the settled ones are deleted
    // with the snapshots that no longer refer to them, and the three left
    // were copied out of their mostly dead segment.
    for i in 0..3 {
        c.until("the records of settled messages to be deleted", || async {
            group_dir(&c, i).map_or(0, |g| dir_bytes(&g.join("records"))) < 48 << 20
        })
        .await;
    }
    c.kill(l);
    drain_all(&c, "large", &["second-37", "second-38", "second-39"]).await;
}

/// A get through a member that knows no leader does not answer
/// get-empty from its idle engine: it waits for the leader, as
/// RabbitMQ's does, and fails with internal-error when none comes. It
/// answered get-empty, whatever the queue held, in the moment after a
/// leader was deposed (found by cluster_faults) and, as here, on a lone
/// member back from a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_waits_for_the_leader_instead_of_answering_empty() {
    let mut c = TestCluster::start(&[SECRET, SECRET, SECRET]).await;
    declare_on_n1(&c, "lone").await;
    let l = wait_leader(&c, "lone").await;
    {
        let conn = connect(&c.nodes[l].amqp_uri()).await.expect("connect");
        let ch = confirm_channel(&conn).await;
        assert_eq!(
            publish_confirmed(&ch, "lone", b"kept", harness::WAIT).await,
            Some(true)
        );
    }
    for i in 0..3 {
        c.kill(i);
    }
    // The leader back alone: it knows its old term, but no leader.
    c.spawn(l);
    c.wait_http(l).await;
    let conn = connect(&c.nodes[l].amqp_uri()).await.expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    match ch.basic_get("lone", BasicGetOptions { no_ack: true }).await {
        Err(lapin::Error::ProtocolError(e)) => {
            assert_eq!(e.get_id(), 541, "{e:?}");
            assert!(e.get_message().as_str().contains("no leader"), "{e:?}");
        }
        other => panic!(
            "a get without a leader answered {:?}",
            other.map(|g| g.map(|g| g.delivery.data))
        ),
    }
    // The management API's get, too.
    let peek = json!({"count": 1, "ackmode": "ack_requeue_true", "encoding": "auto"});
    let path = "/api/queues/%2F/lone/get";
    let answer = c.try_api(l, "POST", path, Some(peek.clone())).await;
    let (status, body) = answer.expect("the API answers");
    assert_eq!(status, 500, "{body}");
    assert!(body.to_string().contains("no leader"), "{body}");

    let other = (l + 1) % 3;
    c.spawn(other);
    c.wait_http(other).await;
    wait_leader(&c, "lone").await;
    let (status, body) = c.api(l, "POST", path, Some(peek)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body[0]["payload"], "kept", "{body}");
    assert_eq!(c.drain(l, "lone").await, ["kept"]);
}

/// A leader restarted (here with the whole cluster, as after a power cut)
/// leads again only through an election in a later term. openraft 0.9
/// resumes a restarted leader's term at once; but a leader sends its
/// entries while its own write of them runs, so a machine that went down
/// may come back without entries its followers hold, and leading the same
/// term again it would give other entries their log ids: two histories.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_leader_leads_again_only_in_a_later_term() {
    let mut c = TestCluster::start(&[SECRET, SECRET, SECRET]).await;
    declare_on_n1(&c, "cut").await;
    let l = wait_leader(&c, "cut").await;
    let term = |q: Value| q["leader_term"].as_u64().expect("a leader term");
    let before = term(queue_json(&c, l, "cut").await.expect("listed"));
    {
        let conn = connect(&c.nodes[l].amqp_uri()).await.expect("connect");
        let ch = confirm_channel(&conn).await;
        assert_eq!(
            publish_confirmed(&ch, "cut", b"kept", harness::WAIT).await,
            Some(true)
        );
    }
    for i in 0..3 {
        c.kill(i);
    }
    for i in 0..3 {
        c.spawn(i);
    }
    let now = wait_leader(&c, "cut").await;
    let after = term(queue_json(&c, now, "cut").await.expect("listed"));
    assert!(
        after > before,
        "led again in term {after}, as before the restart"
    );
    assert_eq!(c.drain(now, "cut").await, ["kept"]);
}

/// A member back from a restart does not depose the leader: its
/// elections ask a pre-vote, which the others, hearing their leader,
/// refuse. Seen in CI: the leader, which had backed off from the dead
/// member, did not reach it before its election timeout; it stood, and
/// its higher term deposed the leader (openraft 0.9 has no pre-vote),
/// which moved the queue and cancelled its consumers for nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_member_does_not_depose_the_leader() {
    let mut c = TestCluster::start(&[SECRET, SECRET, SECRET]).await;
    declare_on_n1(&c, "steady").await;
    let l = wait_leader(&c, "steady").await;
    let f = (0..3).find(|&i| i != l).expect("a follower");
    let conn = connect(&c.nodes[l].amqp_uri()).await.expect("connect");
    let ch = confirm_channel(&conn).await;
    c.kill(f);
    // Down for a few seconds under load, so that the leader's retries of
    // it back off to their longest.
    let down = Instant::now();
    let mut n = 0;
    while down.elapsed() < Duration::from_secs(3) {
        assert_eq!(
            publish_confirmed(&ch, "steady", format!("m{n}").as_bytes(), harness::WAIT).await,
            Some(true)
        );
        n += 1;
    }
    c.spawn(f);
    c.wait_http(f).await;
    c.until("the restarted member to catch up", || {
        caught_up(&c, "steady", f)
    })
    .await;
    assert_eq!(
        publish_confirmed(&ch, "steady", b"after", harness::WAIT).await,
        Some(true)
    );
    let deposed = c.nodes[l].logged("this node no longer leads the quorum queue");
    if deposed {
        c.dump_logs();
    }
    assert!(!deposed, "the restarted member deposed the leader");
    assert_eq!(leader(&c, "steady").await, Some(l));
}

/// Node `i`'s directory of the (only) quorum queue group it has.
fn group_dir(c: &TestCluster, i: usize) -> Option<std::path::PathBuf> {
    let groups = c.nodes[i].dir.join("cluster").join("queues");
    std::fs::read_dir(groups)
        .ok()
        .and_then(|mut d| d.next())
        .and_then(Result::ok)
        .map(|g| g.path())
}

/// Bytes of the files in `dir`.
fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |d| {
        d.flatten()
            .filter_map(|f| f.metadata().ok())
            .map(|m| m.len())
            .sum()
    })
}

/// A quorum queue's backlog stays on disk on every member: the member's
/// snapshot holds where each record is, not the record (before, a
/// snapshot, like the member's memory, held every message), and after
/// kill -9 of all three nodes each member reopens its records at its
/// snapshot, applies the log after it again, and the new leader serves
/// every message in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_queue_backlog_stays_on_disk_through_restarts() {
    const N: usize = 40;
    let mut c = TestCluster::start(&[SECRET, SECRET, SECRET]).await;
    declare_on_n1(&c, "backlog").await;
    let l = wait_leader(&c, "backlog").await;
    let conn = connect(&c.nodes[l].amqp_uri()).await.expect("connect");
    let ch = confirm_channel(&conn).await;
    let want: Vec<String> = (0..N).map(|i| format!("backlog-{i:02}")).collect();
    for name in &want {
        let mut body = name.clone().into_bytes();
        body.resize(1 << 20, b' ');
        assert_eq!(
            publish_confirmed(&ch, "backlog", &body, harness::WAIT).await,
            Some(true)
        );
    }
    drop(conn);
    for i in 0..3 {
        c.until("every member to take a snapshot", || async {
            group_dir(&c, i).is_some_and(|g| g.join("snapshot.bin").exists())
        })
        .await;
        let g = group_dir(&c, i).expect("the group's directory");
        let snapshot = std::fs::metadata(g.join("snapshot.bin"))
            .expect("snapshot")
            .len();
        assert!(
            snapshot < 64 << 10,
            "node {i}'s snapshot holds {snapshot} bytes for {N} messages"
        );
        let records = dir_bytes(&g.join("records"));
        assert!(
            records >= 32 << 20,
            "node {i} has {records} bytes of records"
        );
    }

    for i in 0..3 {
        c.kill(i);
    }
    for i in 0..3 {
        c.spawn(i);
    }
    drain_all(&c, "backlog", &want).await;
}

/// What the failover loop saw.
#[derive(Default)]
struct History {
    /// Ids whose publish was confirmed.
    confirmed: Vec<u64>,
    /// Each delivery: id, redelivered flag.
    delivered: Vec<(u64, bool)>,
    /// Ids the consumer rejected (without requeue).
    rejected: Vec<u64>,
}

/// Publishes numbered messages with confirms, `window` at a time, until
/// the connection fails; records the confirmed ids.
async fn publish_until_failure(
    ch: Channel,
    queue: String,
    ids: Arc<AtomicU64>,
    history: Arc<Mutex<History>>,
) {
    loop {
        let mut pending = Vec::new();
        for _ in 0..20 {
            let id = ids.fetch_add(1, Ordering::Relaxed);
            let Ok(confirm) = ch
                .basic_publish(
                    "",
                    &queue,
                    BasicPublishOptions::default(),
                    id.to_string().as_bytes(),
                    persistent(),
                )
                .await
            else {
                return;
            };
            pending.push((id, confirm));
        }
        for (id, confirm) in pending {
            match confirm.await {
                Ok(Confirmation::Ack(_)) => history.lock().expect("history").confirmed.push(id),
                Ok(_) => {}
                Err(_) => return,
            }
        }
    }
}

/// Consumes with acks until the connection fails; records deliveries.
/// With `reject_every` n, ids that are multiples of n are rejected
/// without requeue instead (the queue dead-letters them).
async fn consume_until_failure(
    ch: Channel,
    queue: String,
    history: Arc<Mutex<History>>,
    reject_every: Option<u64>,
) {
    ch.basic_qos(50, BasicQosOptions::default()).await.ok();
    let Ok(mut consumer) = ch
        .basic_consume(
            &queue,
            "soak",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
    else {
        return;
    };
    while let Some(Ok(d)) = consumer.next().await {
        let id: Option<u64> = std::str::from_utf8(&d.data)
            .ok()
            .and_then(|s| s.parse().ok());
        if let Some(id) = id {
            history
                .lock()
                .expect("history")
                .delivered
                .push((id, d.redelivered));
        }
        let reject = id.zip(reject_every).is_some_and(|(id, n)| id % n == 0);
        let settled = if reject {
            let done = d.reject(BasicRejectOptions { requeue: false }).await;
            if let (Ok(()), Some(id)) = (&done, id) {
                history.lock().expect("history").rejected.push(id);
            }
            done
        } else {
            d.ack(BasicAckOptions::default()).await
        };
        if settled.is_err() {
            return;
        }
    }
}

/// Kills the queue's leader under confirmed publishing and consuming,
/// `cycles` times, restarting it each time; then drains the queue and
/// checks the history: nothing confirmed lost, every repeated delivery
/// marked redelivered. With `dead` (the queue dead-letters at least once
/// into that queue), the consumer rejects every seventh message, and each
/// rejected one must be in `dead` in the end. Prints the figures.
async fn failover_cycles(c: &mut TestCluster, queue: &str, cycles: usize, dead: Option<&str>) {
    let ids = Arc::new(AtomicU64::new(1_000_000));
    let history = Arc::new(Mutex::new(History::default()));
    let mut failovers = Vec::new();
    for cycle in 0..cycles {
        let l = wait_leader(c, queue).await;
        let conn = connect(&c.nodes[l].amqp_uri()).await.expect("connect");
        let publisher = tokio::spawn(publish_until_failure(
            confirm_channel(&conn).await,
            queue.to_owned(),
            Arc::clone(&ids),
            Arc::clone(&history),
        ));
        let consumer = tokio::spawn(consume_until_failure(
            conn.create_channel().await.expect("channel"),
            queue.to_owned(),
            Arc::clone(&history),
            dead.map(|_| 7),
        ));
        let start = history.lock().expect("history").confirmed.len();
        c.until("confirms before the kill", || async {
            history.lock().expect("history").confirmed.len() >= start + 100
        })
        .await;
        let marks = c.log_marks();
        c.kill(l);
        let killed = Instant::now();
        let wall = std::time::SystemTime::now();
        // What each attempt at the first confirm met, for the trace.
        let mut attempts: Vec<String> = Vec::new();
        // Their connection is gone with the node; what they recorded stands.
        publisher.abort();
        consumer.abort();
        drop(conn);
        // The first confirm on the new leader.
        let deadline = killed + harness::WAIT;
        let took = loop {
            assert!(
                Instant::now() < deadline,
                "no new leader confirms (cycle {cycle})"
            );
            let Some(l2) = leader(c, queue).await.filter(|&i| i != l) else {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            let name = &c.nodes[l2].name;
            let Some(conn) = connect(&c.nodes[l2].amqp_uri()).await else {
                attempts.push(format!("{:?} {name}: no connection", killed.elapsed()));
                continue;
            };
            let ch = confirm_channel(&conn).await;
            let id = ids.fetch_add(1, Ordering::Relaxed);
            let body = id.to_string();
            let sent = killed.elapsed();
            let got = publish_confirmed(&ch, queue, body.as_bytes(), Duration::from_secs(2)).await;
            attempts.push(format!(
                "{sent:?} {name}: publish, {got:?} after {:?}",
                killed.elapsed() - sent
            ));
            if got == Some(true) {
                history.lock().expect("history").confirmed.push(id);
                break killed.elapsed();
            }
        };
        // ANTRE_QUORUM_TRACE=S prints the failovers that took S seconds or
        // more: each attempt, and what the nodes logged meanwhile.
        let slow = std::env::var("ANTRE_QUORUM_TRACE")
            .ok()
            .and_then(|v| v.parse::<f64>().ok());
        if slow.is_some_and(|s| took.as_secs_f64() >= s) {
            eprintln!(
                "TRACE cycle {cycle}: killed {} at {wall:?}, first confirm after {took:?}",
                c.nodes[l].name
            );
            for a in &attempts {
                eprintln!("TRACE   {a}");
            }
            c.dump_logs_since(&marks);
        }
        failovers.push(took);
        c.spawn(l);
        c.wait_http(l).await;
        // The restarted member catches up before its peer is killed.
        c.until("the restarted member to catch up", || {
            caught_up(c, queue, l)
        })
        .await;
    }
    // Drain what is left from the leader, rejecting as the consumer did
    // (a reject the killed leader never committed brings its message back).
    let l = wait_leader(c, queue).await;
    let conn = connect(&c.nodes[l].amqp_uri()).await.expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    while let Some(got) = ch
        .basic_get(queue, BasicGetOptions::default())
        .await
        .expect("get")
    {
        let id: Option<u64> = std::str::from_utf8(&got.delivery.data)
            .ok()
            .and_then(|s| s.parse().ok());
        let reject = id.filter(|id| dead.is_some() && id % 7 == 0);
        {
            let mut h = history.lock().expect("history");
            if let Some(id) = id {
                h.delivered.push((id, got.delivery.redelivered));
            }
            h.rejected.extend(reject);
        }
        if reject.is_some() {
            let options = BasicRejectOptions { requeue: false };
            got.delivery.reject(options).await.expect("reject");
        } else {
            got.delivery
                .ack(BasicAckOptions::default())
                .await
                .expect("ack");
        }
    }
    let (lost, dishonest, rejected) = {
        let h = history.lock().expect("history");
        let mut seen: HashMap<u64, usize> = HashMap::new();
        let mut dishonest = 0;
        for &(id, redelivered) in &h.delivered {
            let n = seen.entry(id).or_default();
            if *n > 0 && !redelivered {
                dishonest += 1;
            }
            *n += 1;
        }
        let lost = h
            .confirmed
            .iter()
            .filter(|id| !seen.contains_key(id))
            .count();
        let duplicated: usize = seen.values().map(|n| n - 1).sum();
        let mut sorted = failovers.clone();
        sorted.sort();
        let max = sorted.last().copied().unwrap_or_default();
        let median = sorted.get(sorted.len() / 2).copied().unwrap_or_default();
        let mean = failovers.iter().sum::<Duration>() / failovers.len().max(1) as u32;
        println!(
            "quorum failover: cycles {cycles}, confirmed {}, delivered {}, lost {lost}, \
             duplicated {duplicated}, unmarked repeats {dishonest}, \
             failover (kill to first confirm on the new leader) mean {mean:.2?} median {median:.2?} \
             max {max:.2?}",
            h.confirmed.len(),
            h.delivered.len()
        );
        (lost, dishonest, h.rejected.clone())
    };
    assert_eq!(lost, 0, "confirmed messages lost");
    assert_eq!(dishonest, 0, "a repeated delivery not marked redelivered");
    if let Some(dead) = dead {
        dead_letters_all_held(c, queue, dead, &rejected).await;
    }
}

/// Every id in `rejected` reached `dead` (at least once), once `queue` no
/// longer keeps any dead letter. Prints the figures.
async fn dead_letters_all_held(c: &TestCluster, queue: &str, dead: &str, rejected: &[u64]) {
    c.until("the kept dead letters to be held", || async {
        match leader(c, queue).await {
            Some(l) => queue_json(c, l, queue)
                .await
                .is_some_and(|q| q["messages_dlx"] == json!(0)),
            None => false,
        }
    })
    .await;
    let mut got: HashMap<u64, usize> = HashMap::new();
    let l = wait_leader(c, dead).await;
    for body in c.drain(l, dead).await {
        if let Ok(id) = body.parse::<u64>() {
            *got.entry(id).or_default() += 1;
        }
    }
    let distinct: std::collections::HashSet<u64> = rejected.iter().copied().collect();
    let lost: Vec<u64> = distinct
        .iter()
        .copied()
        .filter(|id| !got.contains_key(id))
        .collect();
    let duplicated: usize = got.values().map(|n| n - 1).sum();
    println!(
        "at-least-once dead letters: rejected {}, dead-lettered {}, lost {}, duplicated {duplicated}",
        distinct.len(),
        got.len(),
        lost.len()
    );
    assert!(
        lost.is_empty(),
        "rejected messages never dead-lettered: {lost:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_limit_dead_letters_and_no_quorum() {
    let mut c = TestCluster::start(&[SECRET, SECRET, SECRET]).await;
    let conn = loop {
        if let Some(conn) = connect(&c.nodes[0].amqp_uri()).await {
            let ch = conn.create_channel().await.expect("channel");
            let ok = ch
                .exchange_declare(
                    "dlx",
                    lapin::ExchangeKind::Fanout,
                    ExchangeDeclareOptions {
                        durable: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .is_ok();
            if ok {
                break conn;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let ch = conn.create_channel().await.expect("channel");
    declare_quorum(
        &ch,
        "work",
        &[
            ("x-delivery-limit", AMQPValue::LongInt(1)),
            (
                "x-dead-letter-exchange",
                AMQPValue::LongString("dlx".into()),
            ),
        ],
    )
    .await;
    drop(conn);
    let l = wait_leader(&c, "work").await;
    let conn = connect(&c.nodes[l].amqp_uri()).await.expect("connect");
    let pub_ch = confirm_channel(&conn).await;
    // The management API's publish answers once the group committed it.
    let (status, body) = c
        .api(
            l,
            "POST",
            "/api/exchanges/%2F/amq.default/publish",
            Some(json!({"routing_key": "work", "payload": "job",
                        "payload_encoding": "string", "properties": {"delivery_mode": 2}})),
        )
        .await;
    assert_eq!((status, &body["routed"]), (200, &json!(true)), "{body}");
    let ch = conn.create_channel().await.expect("channel");
    let got = ch
        .basic_get("work", BasicGetOptions::default())
        .await
        .expect("get")
        .expect("the job");
    assert_eq!(
        delivery_count(&got.delivery),
        Some(AMQPValue::LongLongInt(0))
    );
    nack_requeue(&got.delivery).await;
    // The return is committed before this publish's entry.
    assert_eq!(
        publish_confirmed(&pub_ch, "work", b"barrier", harness::WAIT).await,
        Some(true)
    );
    drop(conn);
    c.kill(l);
    let l2 = wait_leader(&c, "work").await;
    let conn = connect(&c.nodes[l2].amqp_uri()).await.expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    // The dead-letter queue lives on the new leader's node (a classic
    // queue on another node would not take the dead letter yet: no
    // forwarding).
    ch.queue_declare(
        "dead",
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("declare dead");
    ch.queue_bind(
        "dead",
        "dlx",
        "",
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("bind");
    // A leader elected a moment ago may lose the next election on this
    // loaded machine: the get then reaches the one after it (forwarded).
    let deadline = Instant::now() + harness::WAIT;
    let got = loop {
        if let Some(got) = ch
            .basic_get("work", BasicGetOptions::default())
            .await
            .expect("get")
        {
            break got;
        }
        if Instant::now() > deadline {
            c.dump_logs();
            panic!("the job again");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(got.delivery.data, b"job");
    assert!(got.delivery.redelivered);
    // Its one return was replicated: the new leader counts it.
    assert_eq!(
        delivery_count(&got.delivery),
        Some(AMQPValue::LongLongInt(1))
    );
    nack_requeue(&got.delivery).await;
    // Past the limit: dead-lettered, not requeued.
    let dead = loop {
        if let Some(d) = ch
            .basic_get("dead", BasicGetOptions { no_ack: true })
            .await
            .expect("get dead")
        {
            break d;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(dead.delivery.data, b"job");
    let reason = dead
        .delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-first-death-reason").cloned());
    assert_eq!(
        reason,
        Some(AMQPValue::LongString("delivery_limit".into())),
        "{:?}",
        dead.delivery.properties.headers()
    );
    let next = ch
        .basic_get("work", BasicGetOptions { no_ack: true })
        .await
        .expect("get")
        .expect("the barrier");
    assert_eq!(next.delivery.data, b"barrier");
    drop(conn);
    c.spawn(l);
    c.wait_http(l).await;

    // Two of three members down: the leader cannot commit, so it does not
    // confirm; once they are back the publish is confirmed and kept.
    let l = wait_leader(&c, "work").await;
    let conn = connect(&c.nodes[l].amqp_uri()).await.expect("connect");
    let pub_ch = confirm_channel(&conn).await;
    assert_eq!(
        publish_confirmed(&pub_ch, "work", b"before", harness::WAIT).await,
        Some(true)
    );
    let others: Vec<usize> = (0..3).filter(|&i| i != l).collect();
    for &i in &others {
        c.kill(i);
    }
    let confirm = publish_persistent(&pub_ch, "work", b"alone").await;
    let mut confirm = Box::pin(confirm);
    let early = match tokio::time::timeout(Duration::from_secs(3), &mut confirm).await {
        Err(_) => None,
        Ok(Ok(nack @ Confirmation::Nack(_))) => Some(nack),
        Ok(other) => panic!("a publish without a quorum must not be confirmed: {other:?}"),
    };
    for &i in &others {
        c.spawn(i);
    }
    let answer = match early {
        Some(a) => a,
        None => tokio::time::timeout(harness::WAIT, confirm)
            .await
            .expect("an answer once the quorum is back")
            .expect("confirm"),
    };
    drop(conn);
    let l = wait_leader(&c, "work").await;
    let bodies = c.drain(l, "work").await;
    assert!(bodies.contains(&"before".to_owned()), "{bodies:?}");
    if matches!(answer, Confirmation::Ack(_)) {
        assert!(bodies.contains(&"alone".to_owned()), "{bodies:?}");
    }
}

/// A client on a node that does not lead a quorum queue publishes to it
/// and consumes from it: the node forwards to the queue's leader
/// (the same lookup as a classic queue's owner).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_queue_is_served_through_nodes_that_do_not_lead_it() {
    let c = TestCluster::start(&[SECRET, SECRET, SECRET]).await;
    declare_on_n1(&c, "payments").await;
    let l = wait_leader(&c, "payments").await;
    let others: Vec<usize> = (0..3).filter(|&i| i != l).collect();
    let (via_pub, via_con) = (others[0], others[1]);
    for &i in &others {
        let leader_name = c.nodes[l].name.clone();
        c.until("the other nodes to know the leader", || async {
            queue_json(&c, i, "payments")
                .await
                .is_some_and(|q| q["leader"] == json!(leader_name))
        })
        .await;
    }

    let publisher = connect(&c.nodes[via_pub].amqp_uri())
        .await
        .expect("connect");
    let ch = confirm_channel(&publisher).await;
    for n in 0..50u32 {
        let body = format!("payment-{n}");
        let confirmed = publish_confirmed(&ch, "payments", body.as_bytes(), harness::WAIT).await;
        if confirmed != Some(true) {
            c.dump_logs();
        }
        assert_eq!(
            confirmed,
            Some(true),
            "confirm of {body} through {}",
            c.nodes[via_pub].name
        );
    }

    // Every node shows the queue's figures as its leader has them (a
    // member's own copy of the queue is empty, which they showed before).
    for i in 0..3 {
        let q = queue_json(&c, i, "payments").await.expect("listed");
        assert_eq!(
            (&q["messages"], &q["messages_ready"], &q["consumers"]),
            (&json!(50), &json!(50), &json!(0)),
            "{}: {q}",
            c.nodes[i].name
        );
        // Its message counters too: 50 publishes, whoever is asked.
        assert_eq!(
            q["message_stats"]["publish"],
            json!(50),
            "{}: {q}",
            c.nodes[i].name
        );
        let (status, all) = c.api(i, "GET", "/api/queues", None).await;
        assert_eq!(status, 200);
        let listed = all
            .as_array()
            .and_then(|a| a.iter().find(|q| q["name"] == "payments"))
            .cloned()
            .unwrap_or_default();
        assert_eq!(
            listed["messages"],
            json!(50),
            "{}: {listed}",
            c.nodes[i].name
        );
        // Only the leader exports the queue's series, as the RabbitMQ node
        // that hosts a queue does: a follower's would be a second series
        // of the same queue, with its copy's empty figures.
        let Some((200, Value::String(text))) =
            c.try_api(i, "GET", "/metrics/per-object", None).await
        else {
            panic!("no metrics from {}", c.nodes[i].name);
        };
        let families = crate::common::prometheus::parse(&text).unwrap_or_else(|e| panic!("{e}"));
        let depth: Vec<f64> = families
            .get("rabbitmq_queue_messages")
            .map(|f| {
                f.samples
                    .iter()
                    .filter(|s| s.labels.get("queue").is_some_and(|q| q == "payments"))
                    .map(|s| s.value)
                    .collect()
            })
            .unwrap_or_default();
        let exported = if i == l { vec![50.0] } else { Vec::new() };
        assert_eq!(depth, exported, "{}'s series", c.nodes[i].name);
    }

    let consumer = connect(&c.nodes[via_con].amqp_uri())
        .await
        .expect("connect");
    let ch = consumer.create_channel().await.expect("channel");
    ch.basic_qos(10, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut deliveries = ch
        .basic_consume(
            "payments",
            "through-a-follower",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume through a node that does not lead");
    for n in 0..50u32 {
        let d = tokio::time::timeout(harness::WAIT, deliveries.next())
            .await
            .expect("a delivery in time")
            .expect("the consumer is open")
            .expect("a delivery");
        assert_eq!(d.data, format!("payment-{n}").into_bytes(), "in order");
        if n == 0 {
            // The forwarded consumer and its window, seen from a node
            // that neither leads the queue nor holds the consumer.
            c.until(
                "the publisher's node to show the consumer's window",
                || async {
                    queue_json(&c, via_pub, "payments").await.is_some_and(|q| {
                        let consumer = &q["consumer_details"][0];
                        q["consumers"] == json!(1)
                            && q["messages_unacknowledged"] == json!(10)
                            && consumer["consumer_tag"] == json!("through-a-follower")
                            && consumer["prefetch_count"] == json!(10)
                            && consumer["messages_unacknowledged"] == json!(10)
                            && consumer["ack_required"] == json!(true)
                    })
                },
            )
            .await;
            // The leader names the node the consumer's channel is on.
            let via = c.nodes[via_con].name.clone();
            let q = queue_json(&c, l, "payments").await.expect("listed");
            assert_eq!(
                q["consumer_details"][0]["channel_details"]["node"],
                json!(via),
                "{q}"
            );
        }
        d.ack(BasicAckOptions::default()).await.expect("ack");
    }
    // The acks reached the leader: nothing is left in the queue.
    c.until("the leader to hold no message", || async {
        queue_json(&c, l, "payments")
            .await
            .is_some_and(|q| q["messages"] == json!(0))
    })
    .await;
}

/// What node `i` counts in `field` of nodes 1 and 2 (on `/api/nodes`).
async fn from_peers(c: &TestCluster, i: usize, field: &str) -> [u64; 2] {
    [
        c.count_of_peer(i, 1, field).await,
        c.count_of_peer(i, 2, field).await,
    ]
}

/// Idle queues on three nodes: [`IDLE_QUEUES`] quorum queues, each
/// declared through (and so led by) the nodes in turn, each with a
/// leader. Also a connection to node 0.
async fn idle_cluster(prefix: &str) -> (TestCluster, Connection) {
    let c = TestCluster::start(&[SECRET, SECRET, SECRET]).await;
    c.until_leader(&[0, 1, 2]).await;
    let mut conns = Vec::new();
    for i in 0..3 {
        conns.push(connect(&c.nodes[i].amqp_uri()).await.expect("connect"));
    }
    for q in 0..IDLE_QUEUES {
        let ch = conns[q % 3].create_channel().await.expect("channel");
        declare_quorum(&ch, &format!("{prefix}-{q}"), &[]).await;
    }
    for q in 0..IDLE_QUEUES {
        wait_leader(&c, &format!("{prefix}-{q}")).await;
    }
    (c, conns.swap_remove(0))
}

/// The node leading each of [`idle_cluster`]'s queues.
async fn leaders(c: &TestCluster, prefix: &str) -> Vec<Option<usize>> {
    let mut all = Vec::new();
    for q in 0..IDLE_QUEUES {
        all.push(c.queue_leader(&format!("{prefix}-{q}")).await);
    }
    all
}

/// How many idle queues [`idle_cluster`] declares: about 30 led by each
/// node and followed by the other two.
const IDLE_QUEUES: usize = 90;

/// Waits until node 0 counts fewer than `limit` a second in `field` of
/// each of nodes 1 and 2 over a second (the groups go idle a second after
/// their last entry); fails after [`harness::WAIT`].
async fn until_peers_send_less(c: &TestCluster, field: &str, limit: f64) {
    let deadline = Instant::now() + harness::WAIT;
    let (mut before, mut start) = (from_peers(c, 0, field).await, Instant::now());
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = from_peers(c, 0, field).await;
        let seconds = start.elapsed().as_secs_f64();
        let rates: Vec<f64> = (0..2)
            .map(|p| (after[p] - before[p]) as f64 / seconds)
            .collect();
        if rates.iter().all(|&r| r < limit) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "nodes 1 and 2 still send node 0 {rates:.0?} {field} a second for {IDLE_QUEUES} idle queues"
        );
        (before, start) = (after, Instant::now());
    }
}

/// Idle quorum queues' heartbeats (now their leases) to a member travel
/// together: the messages a node receives from a peer stay under about a
/// hundred a second however many groups that peer leads (far fewer
/// with leases, about 60 with batched heartbeats, once the groups
/// have been idle for a second). Each heartbeat went alone before: 90
/// idle queues, about 30 led by each node, sent each of its peers about
/// 200 messages a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_queues_heartbeats_travel_together() {
    let (c, _conn) = idle_cluster("idle").await;
    until_peers_send_less(&c, "link_requests", 120.0).await;
}

/// An idle quorum queue's leader sends its members leases, not Raft
/// heartbeats, and the leases keep it leader: with 90 idle queues (about
/// 30 led by each node, each followed by the other two), each peer sends
/// node 0 about 100 leases a second and next to no heartbeat. Before, it
/// sent about 90 heartbeats a second (every queue's at a third of the
/// busy rate), and before that about 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_queues_send_leases_not_heartbeats() {
    let (c, conn) = idle_cluster("calm").await;
    let before = leaders(&c, "calm").await;
    until_peers_send_less(&c, "queue_heartbeats", 5.0).await;
    // A window to count in, not a wait for anything.
    let window = Duration::from_secs(2);
    let (leased, start) = (from_peers(&c, 0, "queue_leases").await, Instant::now());
    tokio::time::sleep(window).await;
    let after = from_peers(&c, 0, "queue_leases").await;
    let seconds = start.elapsed().as_secs_f64();
    for p in 0..2 {
        let rate = (after[p] - leased[p]) as f64 / seconds;
        assert!(
            rate > 50.0,
            "node {} sent node 0 {rate:.0} leases a second",
            p + 1
        );
    }
    // Followers that hear only leases stand for no election: a lease
    // renews a leader as a heartbeat does.
    assert_eq!(
        leaders(&c, "calm").await,
        before,
        "an idle queue changed leader"
    );
    // A leased queue takes a publish at once: its leader appends it
    // without waiting for a heartbeat.
    let ch = confirm_channel(&conn).await;
    assert_eq!(
        publish_confirmed(&ch, "calm-0", b"again", harness::WAIT).await,
        Some(true)
    );
}

/// Idle quorum queues run no Raft timer on any member: openraft's tick
/// woke every replica's Raft core 6.7 times a second (20 for a queue on
/// three nodes) though it had nothing to do but an idle leader's
/// heartbeats, which are paced. Before, every replica of the 90 idle
/// queues ticked on every node. A queue that gets busy has its leader's
/// timer running again, for its heartbeats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_queues_run_no_raft_timer() {
    let (c, conn) = idle_cluster("still").await;
    let ticking = |i: usize| {
        let c = &c;
        async move { c.count_of_peer(i, i, "quorum_ticking").await }
    };
    c.until("no idle replica ticking on any node", || async {
        for i in 0..3 {
            if ticking(i).await != 0 {
                return false;
            }
        }
        true
    })
    .await;
    let leader = wait_leader(&c, "still-0").await;
    let ch = confirm_channel(&conn).await;
    c.until("the busy queue's leader ticking", || async {
        assert_eq!(
            publish_confirmed(&ch, "still-0", b"busy", harness::WAIT).await,
            Some(true)
        );
        ticking(leader).await == 1
    })
    .await;
    for i in (0..3).filter(|&i| i != leader) {
        assert_eq!(ticking(i).await, 0, "node {i}, a follower, ticks");
    }
}

/// Declares durable fanout exchange `name` through node `i`, retrying
/// while the metadata group may still be electing its first leader.
async fn declare_fanout(c: &TestCluster, i: usize, name: &str) {
    let deadline = Instant::now() + harness::WAIT;
    loop {
        if let Some(conn) = connect(&c.nodes[i].amqp_uri()).await {
            let ch = conn.create_channel().await.expect("channel");
            let options = ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            };
            let declared = ch
                .exchange_declare(
                    name,
                    lapin::ExchangeKind::Fanout,
                    options,
                    FieldTable::default(),
                )
                .await;
            if declared.is_ok() {
                return;
            }
        }
        assert!(Instant::now() < deadline, "could not declare {name}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A refund rejected from a quorum queue that dead-letters at least once,
/// while its dead-letter queue does not exist yet: every member keeps it
/// (dying, out of consumers' reach), the leader's death does not lose it
/// nor hand it to a consumer again, and the new leader routes it again
/// until the dead-letter queue, declared later on another node, holds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_at_least_once_dead_letter_survives_its_leaders_death() {
    let mut c = TestCluster::start(&[SECRET, SECRET, SECRET]).await;
    declare_fanout(&c, 0, "refunds-dlx").await;
    let args = quorum_args(&[
        (
            "x-dead-letter-exchange",
            AMQPValue::LongString("refunds-dlx".into()),
        ),
        (
            "x-dead-letter-strategy",
            AMQPValue::LongString("at-least-once".into()),
        ),
        ("x-overflow", AMQPValue::LongString("reject-publish".into())),
    ]);
    c.declare_durable(0, "refunds", args).await;
    let l = wait_leader(&c, "refunds").await;
    let conn = connect(&c.nodes[l].amqp_uri()).await.expect("connect");
    let ch = confirm_channel(&conn).await;
    publish_all_confirmed(&ch, "refunds", "r", 2).await;
    let got = ch
        .basic_get("refunds", BasicGetOptions::default())
        .await
        .expect("get")
        .expect("r0");
    assert_eq!(got.delivery.data, b"r0");
    got.delivery
        .reject(BasicRejectOptions { requeue: false })
        .await
        .expect("reject");
    // Every member keeps both: r0 dying, r1 ready.
    let deadline = Instant::now() + harness::WAIT;
    loop {
        let mut kept = 0;
        for i in 0..3 {
            let q = queue_json(&c, i, "refunds").await.unwrap_or_default();
            if q["replica_messages"] == json!(2) && q["messages_dlx"] == json!(1) {
                kept += 1;
            }
        }
        if kept == 3 {
            break;
        }
        if Instant::now() > deadline {
            c.dump_logs();
            panic!("the dead letter is not kept on every member");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(conn);
    c.kill(l);
    let l2 = wait_leader(&c, "refunds").await;
    // The dead-letter queue is declared now, led by another node than the
    // new leader: the dead letter is forwarded there.
    let other = (0..3).find(|&i| i != l && i != l2).expect("a third node");
    let dead_args = quorum_args(&[(
        "x-queue-leader-locator",
        AMQPValue::LongString("client-local".into()),
    )]);
    c.declare_durable(other, "refunds-dead", dead_args).await;
    let conn = connect(&c.nodes[other].amqp_uri()).await.expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    ch.queue_bind(
        "refunds-dead",
        "refunds-dlx",
        "",
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("bind");
    drain_all(&c, "refunds-dead", &["r0"]).await;
    // r0 never came back to the queue's consumers.
    drain_all(&c, "refunds", &["r1"]).await;
    let deadline = Instant::now() + harness::WAIT;
    loop {
        let q = queue_json(&c, l2, "refunds").await.unwrap_or_default();
        if q["messages_dlx"] == json!(0) && q["replica_messages"] == json!(0) {
            break;
        }
        if Instant::now() > deadline {
            c.dump_logs();
            panic!("the held dead letter was not let go: {q}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The failover loop on a queue that dead-letters at least once into
/// another quorum queue (led from the first node, so some kills take both
/// leaders down): the consumer rejects every seventh message, and every
/// rejected message reaches the dead-letter queue, whichever leader died
/// between the reject and the dead letter's commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_dead_lettering_at_least_once_loses_no_dead_letter_to_leader_kills() {
    let mut c = TestCluster::start(&[SECRET, SECRET, SECRET]).await;
    declare_fanout(&c, 0, "orders-dlx").await;
    c.declare_durable(0, "orders-dead", quorum_args(&[])).await;
    let conn = connect(&c.nodes[0].amqp_uri()).await.expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    ch.queue_bind(
        "orders-dead",
        "orders-dlx",
        "",
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("bind");
    drop(conn);
    let args = quorum_args(&[
        (
            "x-dead-letter-exchange",
            AMQPValue::LongString("orders-dlx".into()),
        ),
        (
            "x-dead-letter-strategy",
            AMQPValue::LongString("at-least-once".into()),
        ),
        ("x-overflow", AMQPValue::LongString("reject-publish".into())),
    ]);
    c.declare_durable(0, "rejecting", args).await;
    let cycles = crate::common::rounds_from_env("ANTRE_QUORUM_CYCLES", 3);
    failover_cycles(&mut c, "rejecting", cycles, Some("orders-dead")).await;
}

/// Node `i`'s metrics page at `path`, parsed.
async fn scrape(
    c: &TestCluster,
    i: usize,
    path: &str,
) -> HashMap<String, crate::common::prometheus::Family> {
    let Some((200, Value::String(text))) = c.try_api(i, "GET", path, None).await else {
        panic!("no {path} from {}", c.nodes[i].name);
    };
    crate::common::prometheus::parse(&text).unwrap_or_else(|e| panic!("{e}"))
}

/// The value of `family`'s sample whose labels include `labels`, if one.
fn sample(
    families: &HashMap<String, crate::common::prometheus::Family>,
    family: &str,
    labels: &[(&str, &str)],
) -> Option<f64> {
    families.get(family)?.samples.iter().find_map(|s| {
        labels
            .iter()
            .all(|(k, v)| s.labels.get(*k).is_some_and(|l| l == v))
            .then_some(s.value)
    })
}

/// Three nodes and quorum queue "ledger" with 20 messages, each
/// confirmed by its leader; that leader's index, and the publisher's
/// connection (kept open).
async fn ledger_of_twenty() -> (TestCluster, usize, Connection) {
    let c = TestCluster::start(&[SECRET, SECRET, SECRET]).await;
    declare_on_n1(&c, "ledger").await;
    let l = wait_leader(&c, "ledger").await;
    let conn = connect(&c.nodes[l].amqp_uri()).await.expect("connect");
    let ch = confirm_channel(&conn).await;
    publish_all_confirmed(&ch, "ledger", "entry-", 20).await;
    (c, l, conn)
}

/// RabbitMQ's `rabbitmq_raft_*` metrics (its `ra_metrics` family) show
/// each member's log of a quorum queue on that member's node, and antre's
/// own show the metadata group and which node leads what: an operator
/// sees a follower falling behind or leaders piling up on one node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_metrics_show_every_members_log() {
    let (c, l, _conn) = ledger_of_twenty().await;

    // Each publish waited for its confirm: twenty entries at least, which
    // every member wrote, knows committed and applied once the leader told
    // the followers its commit index.
    let q = [("vhost", "/"), ("queue", "ledger")];
    let figures = |m: &HashMap<String, crate::common::prometheus::Family>| {
        [
            "rabbitmq_raft_log_last_written_index",
            "rabbitmq_raft_log_commit_index",
            "rabbitmq_raft_log_last_applied_index",
            "rabbitmq_raft_term_total",
        ]
        .map(|f| sample(m, f, &q).unwrap_or(-1.0))
    };
    c.until("every member to report the same committed log", || async {
        let mut seen = Vec::new();
        for i in 0..3 {
            seen.push(figures(&scrape(&c, i, "/metrics/per-object").await));
        }
        let [written, committed, applied, term] = seen[0];
        written >= 20.0
            && written == committed
            && committed == applied
            && term >= 1.0
            && seen.iter().all(|s| *s == seen[0])
    })
    .await;

    let mut leading = 0.0;
    let mut metadata_leaders = 0.0;
    for i in 0..3 {
        let name = c.nodes[i].name.clone();
        let per_object = scrape(&c, i, "/metrics/per-object").await;
        // The leader timed its commits: its own write, the replication and
        // a follower's write.
        let latency = sample(
            &per_object,
            "rabbitmq_raft_entry_commit_latency_seconds",
            &q,
        );
        if i == l {
            assert!(latency.is_some_and(|s| s > 0.0), "{name}: {latency:?}");
        }
        // /metrics sums the members of this node's queues (one here), as
        // RabbitMQ 3.10's; the detailed page has the family on request.
        let aggregated = scrape(&c, i, "/metrics").await;
        let detailed = scrape(&c, i, "/metrics/detailed?family=ra_metrics").await;
        // Each node is itself in the dashboards' `rabbitmq_node`, though all
        // three run on one host (they were all antre@host); with no
        // cluster_name set, its cluster is its name, as RabbitMQ's default.
        let identity = &aggregated["rabbitmq_identity_info"].samples[0].labels;
        assert_eq!(identity["rabbitmq_node"], name, "{identity:?}");
        assert_eq!(identity["rabbitmq_cluster"], name, "{identity:?}");
        assert_eq!(
            sample(&aggregated, "rabbitmq_raft_log_commit_index", &[]),
            sample(&per_object, "rabbitmq_raft_log_commit_index", &q),
            "{name}"
        );
        assert_eq!(
            sample(&detailed, "rabbitmq_detailed_raft_log_commit_index", &q),
            sample(&per_object, "rabbitmq_raft_log_commit_index", &q),
            "{name}"
        );
        let other = scrape(&c, i, "/metrics/detailed?family=ra_metrics&vhost=other").await;
        assert_eq!(
            sample(&other, "rabbitmq_detailed_raft_log_commit_index", &q),
            None,
            "{name}: another vhost's page"
        );
        let member_leads = sample(&aggregated, "antre_raft_member_leader", &q);
        assert_eq!(member_leads, Some(if i == l { 1.0 } else { 0.0 }), "{name}");
        leading += member_leads.unwrap_or(0.0);
        metadata_leaders += sample(&aggregated, "antre_metadata_leader", &[]).unwrap_or(0.0);
        // Every peer running as this node sees it (a ping may be late on a
        // loaded machine: until it is seen).
        let what = format!("{name} to see every node running");
        c.until(&what, || async {
            let m = scrape(&c, i, "/metrics").await;
            c.nodes.iter().all(|peer| {
                let labels = [("node", peer.name.as_str())];
                sample(&m, "antre_cluster_node_running", &labels) == Some(1.0)
            })
        })
        .await;
        assert!(
            sample(&aggregated, "antre_metadata_raft_log_commit_index", &[])
                .is_some_and(|v| v >= 1.0),
            "{name}: the declare was committed"
        );
    }
    assert_eq!(leading, 1.0, "one leader of the queue");
    assert!(metadata_leaders <= 1.0, "at most one metadata leader");
    // Prometheus takes a cluster node's pages as a single node's.
    if let Some(promtool) = crate::common::prometheus::promtool() {
        for path in [
            "/metrics",
            "/metrics/per-object",
            "/metrics/detailed?family=ra_metrics",
        ] {
            let Some((200, Value::String(text))) = c.try_api(l, "GET", path, None).await else {
                panic!("no {path}");
            };
            crate::common::prometheus::promtool_accepts(&promtool, path, text).await;
        }
    }
    // The same figures per member through any node, as `rabbitmq-queues
    // quorum_status` shows them: asked of a follower, every member answers.
    let f = (l + 1) % 3;
    let (status, members) = c
        .api(f, "GET", "/api/queues/%2F/ledger/members", None)
        .await;
    assert_eq!(status, 200, "{members}");
    let members = members.as_array().cloned().unwrap_or_default();
    let mut nodes: Vec<&str> = members.iter().filter_map(|m| m["node"].as_str()).collect();
    nodes.sort();
    assert_eq!(nodes, ["n1", "n2", "n3"], "{members:?}");
    for m in &members {
        let state = if m["node"] == json!(c.nodes[l].name) {
            "leader"
        } else {
            "follower"
        };
        assert_eq!(m["raft_state"], json!(state), "{m}");
        assert_eq!(m["commit_index"], members[0]["commit_index"], "{m}");
        assert_eq!(m["last_applied_index"], m["commit_index"], "{m}");
        assert!(m["term"].as_u64().is_some_and(|t| t >= 1), "{m}");
    }
    let (ok, out, err) = c.cli(f, &["queues", "quorum-status", "ledger"]).await;
    assert!(ok, "{err}");
    assert!(out.starts_with("node"), "{out}");
    assert!(
        out.lines().filter(|l| l.contains(" leader ")).count() == 1
            && out.lines().filter(|l| l.contains(" follower ")).count() == 2,
        "{out}"
    );
    // A stream is a Raft group too.
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("stream".into()),
    );
    c.declare_durable(0, "ledger-events", args).await;
    c.until("the stream's members to report", || async {
        let (status, members) = c
            .api(f, "GET", "/api/queues/%2F/ledger-events/members", None)
            .await;
        status == 200
            && members.as_array().is_some_and(|m| {
                m.len() == 3 && m.iter().filter(|m| m["raft_state"] == "leader").count() == 1
            })
    })
    .await;
    // Not a replicated queue, or not there: 404.
    let (status, _) = c
        .api(f, "GET", "/api/queues/%2F/no-such-queue/members", None)
        .await;
    assert_eq!(status, 404);

    // A member whose node died is listed as down, the others as before.
    let mut c = c;
    let dead = (l + 2) % 3;
    c.kill(dead);
    let dead_name = c.nodes[dead].name.clone();
    c.until("the dead member to show as down", || async {
        let (_, members) = c
            .api(f, "GET", "/api/queues/%2F/ledger/members", None)
            .await;
        members.as_array().is_some_and(|m| {
            m.iter()
                .any(|m| m["node"] == json!(dead_name) && m["raft_state"] == "nodedown")
        })
    })
    .await;
    let aggregated = scrape(&c, f, "/metrics").await;
    assert_eq!(
        sample(
            &aggregated,
            "antre_cluster_node_running",
            &[("node", &dead_name)]
        ),
        Some(0.0)
    );
}

/// Deliveries and acks count as a quorum queue's (RabbitMQ's
/// `queue_type="rabbit_quorum_queue"`) on the node of the consumer's
/// channel, and not again on the leader's node, which served them through
/// its proxy channel (it counted each delivery a second time, as a
/// classic queue's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_count_on_the_consumers_node() {
    let (c, l, _conn) = ledger_of_twenty().await;
    let f = (l + 1) % 3;
    let on_f = connect(&c.nodes[f].amqp_uri()).await.expect("connect");
    let reader = on_f.create_channel().await.expect("channel");
    let got = reader
        .basic_get("ledger", BasicGetOptions { no_ack: true })
        .await
        .expect("get");
    assert!(got.is_some());
    let mut consumer = reader
        .basic_consume(
            "ledger",
            "reader",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    for _ in 0..19 {
        let d = tokio::time::timeout(harness::WAIT, consumer.next())
            .await
            .expect("a delivery in time")
            .expect("a delivery")
            .expect("delivered");
        d.ack(BasicAckOptions::default()).await.expect("ack");
    }
    // A round trip after the acks: they were handled before it.
    reader
        .basic_qos(1, BasicQosOptions::default())
        .await
        .expect("qos");
    let of = |m: &HashMap<String, crate::common::prometheus::Family>, family: &str, kind: &str| {
        sample(m, family, &[("queue_type", kind)]).unwrap_or(-1.0)
    };
    let delivered = "rabbitmq_global_messages_delivered_total";
    let acked = "rabbitmq_global_messages_acknowledged_total";
    let (quorum, classic) = ("rabbit_quorum_queue", "rabbit_classic_queue");
    for i in 0..3 {
        let m = scrape(&c, i, "/metrics").await;
        let name = &c.nodes[i].name;
        // A change of leader under load may redeliver: at least 20 then.
        let (at_least, acks) = if i == f { (20.0, 19.0) } else { (0.0, 0.0) };
        let got = of(&m, delivered, quorum);
        assert!(
            got >= at_least && (i == f || got == 0.0),
            "{name}: {got} quorum deliveries"
        );
        assert_eq!(of(&m, acked, quorum), acks, "{name}: quorum acks");
        assert_eq!(
            of(&m, delivered, classic),
            0.0,
            "{name}: classic deliveries"
        );
    }
}

/// What a rolling restart asks before it stops a node (RabbitMQ's
/// `node-is-quorum-critical` check, `rabbitmq-queues
/// check_if_node_is_quorum_critical`, `rabbitmq-upgrade
/// await_online_quorum_plus_one`): with every member up, no node is
/// critical; with one down, stopping another would leave the queue and
/// the metadata group without a majority, and the check says so until
/// the member is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_is_quorum_critical_while_another_member_is_down() {
    let mut c = TestCluster::start(&[SECRET, SECRET, SECRET]).await;
    declare_on_n1(&c, "ledger").await;
    wait_leader(&c, "ledger").await;
    c.until("every member up", || async {
        let (_, members) = c
            .api(0, "GET", "/api/queues/%2F/ledger/members", None)
            .await;
        members.as_array().is_some_and(|m| {
            m.len() == 3
                && m.iter()
                    .all(|m| m["raft_state"] == "leader" || m["raft_state"] == "follower")
        })
    })
    .await;
    let check = "/api/health/checks/node-is-quorum-critical";
    // Each node answers from its own view of the others (heard within 5 s,
    // answering within a second): under CI's load a node's view lagged
    // node 1's, so wait for each to see every member up.
    for i in 0..3 {
        c.until("every node to find itself not critical", || async {
            let (status, body) = c.api(i, "GET", check, None).await;
            (status, &body["status"]) == (200, &json!("ok"))
        })
        .await;
    }
    let (ok, out, err) = c.cli(0, &["queues", "check-quorum-critical"]).await;
    assert!(ok, "{out}{err}");

    let down = 2;
    c.kill(down);
    c.until("n1 to find itself critical", || async {
        matches!(c.try_api(0, "GET", check, None).await, Some((503, _)))
    })
    .await;
    let (status, body) = c.api(0, "GET", check, None).await;
    assert_eq!((status, &body["status"]), (503, &json!("failed")), "{body}");
    let listed = body["queues"].as_array().cloned().unwrap_or_default();
    assert!(
        listed.contains(&json!({
            "readable_name": "queue 'ledger' in vhost '/'",
            "name": "ledger",
            "virtual_host": "/",
            "type": "rabbit_quorum_queue",
        })),
        "{body}"
    );
    assert!(
        listed
            .iter()
            .any(|q| q["name"] == "metadata" && q["type"] == "process"),
        "{body}"
    );
    let (ok, out, err) = c.cli(0, &["queues", "check-quorum-critical"]).await;
    assert!(!ok && out.contains("ledger"), "{out}");
    assert!(err.contains("would lose their quorum"), "{err}");
    let (ok, _, err) = c
        .cli(
            0,
            &["queues", "await-online-quorum-plus-one", "--timeout", "0.5"],
        )
        .await;
    assert!(!ok && err.contains("would lose their quorum"), "{err}");

    // Back, and caught up: the wait ends, the check passes.
    c.spawn(down);
    let (ok, out, err) = c
        .cli(
            0,
            &["queues", "await-online-quorum-plus-one", "--timeout", "60"],
        )
        .await;
    assert!(ok, "{out}{err}");
    let (status, _) = c.api(0, "GET", check, None).await;
    assert_eq!(status, 200);
}

/// Whether node `i`'s `is-in-service` and `ready-to-serve-clients` health
/// checks answer as `serving` says they should (200, or 503 with why).
async fn assert_serving(c: &TestCluster, i: usize, serving: bool) {
    for check in ["is-in-service", "ready-to-serve-clients"] {
        let path = format!("/api/health/checks/{check}");
        let (status, body) = c.api(i, "GET", &path, None).await;
        let want = if serving { 200 } else { 503 };
        assert_eq!(status, want, "{check}: {body}");
        if !serving {
            assert!(
                body["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("drained")),
                "{check}: {body}"
            );
        }
    }
    // The readiness probe orchestrators ask without credentials answered
    // 200 for a drained node, which refuses new clients.
    let (status, _) = c.api(i, "GET", "/readyz", None).await;
    assert_eq!(status, if serving { 200 } else { 503 }, "/readyz");
}

/// A rolling restart drains a node before stopping it (`rabbitmq-upgrade
/// drain`): its clients are closed and new ones refused, the queues it led
/// are led elsewhere, a bystander on another node keeps publishing, and
/// its replicas take no leadership back even when the new leader dies;
/// revived, it takes clients again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_node_hands_its_leaders_and_clients_away() {
    let mut c = TestCluster::start(&[SECRET, SECRET, SECRET]).await;
    declare_on_n1(&c, "ledger").await;
    let d = wait_leader(&c, "ledger").await;
    let conn = connect(&c.nodes[d].amqp_uri()).await.expect("connect");
    let ch = confirm_channel(&conn).await;
    publish_all_confirmed(&ch, "ledger", "before-", 5).await;

    let (ok, out, err) = c.cli(d, &["cluster", "drain"]).await;
    assert!(ok, "{out}{err}");
    assert!(out.contains("ledger") && out.contains("moved"), "{out}");
    let drained = c.nodes[d].name.clone();
    c.until("the drained node's client to be closed", || async {
        !conn.status().connected()
    })
    .await;
    assert!(
        connect(&c.nodes[d].amqp_uri()).await.is_none(),
        "a new client of a drained node is refused"
    );
    let l2 = leader(&c, "ledger").await.expect("a new leader");
    assert_ne!(l2, d, "the leadership moved away");
    // RabbitMQ's health checks that probes ask (is-in-service,
    // ready-to-serve-clients) say so, and the node still listens for its
    // peers ("clustering", on its cluster port).
    assert_serving(&c, d, false).await;
    let listens = format!(
        "/api/health/checks/port-listener/{}",
        c.nodes[d].cluster_port
    );
    assert_eq!(c.api(d, "GET", &listens, None).await.0, 200);
    let clustering = "/api/health/checks/protocol-listener/clustering";
    assert_eq!(c.api(d, "GET", clustering, None).await.0, 200);
    let metrics = scrape(&c, d, "/metrics").await;
    assert_eq!(sample(&metrics, "antre_node_being_drained", &[]), Some(1.0));
    let other = (0..3).find(|&i| i != d && i != l2).expect("a third node");
    c.until("the other nodes to export the drain's record", || async {
        let metrics = scrape(&c, other, "/metrics").await;
        let of = |n: &str| sample(&metrics, "antre_cluster_node_drained", &[("node", n)]);
        of(&drained) == Some(1.0) && of(&c.nodes[l2].name) == Some(0.0)
    })
    .await;
    let (ok, out, _) = c.cli(other, &["cluster", "status"]).await;
    assert!(
        ok && out
            .lines()
            .any(|l| l.starts_with(drained.as_str()) && l.contains(" drained ")),
        "{out}"
    );
    let nodes = c.nodes(other).await;
    assert!(
        nodes
            .iter()
            .any(|n| n["name"] == json!(drained) && n["being_drained"] == json!(true)),
        "{nodes:?}"
    );

    // A queue declared through the drained node's API (the only way left
    // to it) is placed there, yet led by another member.
    let (status, body) = c
        .api(
            d,
            "PUT",
            "/api/queues/%2F/declared-while-drained",
            Some(json!({"durable": true, "arguments": {"x-queue-type": "quorum"}})),
        )
        .await;
    assert!(status == 201 || status == 204, "{status} {body}");
    let led_by = wait_leader(&c, "declared-while-drained").await;
    assert_ne!(led_by, d, "a drained node leads no new queue");

    // A bystander on another node is served throughout.
    let bystander = connect(&c.nodes[other].amqp_uri()).await.expect("connect");
    let bch = confirm_channel(&bystander).await;
    publish_all_confirmed(&bch, "ledger", "during-", 5).await;
    drop(bystander);

    // A rebalance moves leaders to the other nodes only: the drained one
    // would refuse them.
    for q in 0..4 {
        c.declare_durable(other, &format!("spread-{q}"), quorum_args(&[]))
            .await;
        wait_leader(&c, &format!("spread-{q}")).await;
    }
    let (ok, out, err) = c.cli(other, &["queues", "rebalance"]).await;
    assert!(ok && !out.contains("not moved"), "{out}{err}");
    for q in 0..4 {
        assert_ne!(leader(&c, &format!("spread-{q}")).await, Some(d), "{out}");
    }

    // The new leader dies: the third member takes over, not the drained
    // one (it votes, but does not stand).
    c.kill(l2);
    let third = c.nodes[other].name.clone();
    c.until("the third member to lead", || async {
        queue_json(&c, other, "ledger")
            .await
            .is_some_and(|q| q["leader"] == json!(third))
    })
    .await;
    let mut want: Vec<String> = (0..5).map(|i| format!("before-{i}")).collect();
    want.extend((0..5).map(|i| format!("during-{i}")));
    drain_all(&c, "ledger", &want).await;
    assert_eq!(
        queue_json(&c, d, "ledger")
            .await
            .map(|q| q["leader"].clone()),
        Some(json!(third)),
        "the drained node never led it again"
    );

    // Revived, it takes clients again.
    let (ok, out, err) = c.cli(d, &["cluster", "revive"]).await;
    assert!(ok, "{out}{err}");
    let metrics = scrape(&c, d, "/metrics").await;
    assert_eq!(sample(&metrics, "antre_node_being_drained", &[]), Some(0.0));
    assert_serving(&c, d, true).await;
    assert!(connect(&c.nodes[d].amqp_uri()).await.is_some());
    let nodes = c.nodes(d).await;
    assert!(
        nodes
            .iter()
            .any(|n| n["name"] == json!(drained) && n["being_drained"] == json!(false)),
        "{nodes:?}"
    );
}

/// A node that is no member of a quorum queue knows its leader only from
/// the metadata; a restart keeps it. Before, the restarted node showed the
/// declaring node as the queue's leader and location until the next
/// leadership change, and forwarded its clients' publishes there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_non_member_still_knows_the_queues_leader() {
    let mut c = TestCluster::start(&[SECRET, SECRET, SECRET]).await;
    let size = ("x-quorum-initial-group-size", AMQPValue::LongInt(2));
    c.declare_durable(0, "pair", quorum_args(&[size])).await;
    c.until_members("pair", &["n1", "n2"]).await;
    assert_eq!(wait_leader(&c, "pair").await, 0, "led where declared");

    // The leadership moves to n2 (a drain of n1 hands it over); n3, no
    // member, learns it from the metadata.
    let (ok, out, err) = c.cli(0, &["cluster", "drain"]).await;
    assert!(ok && out.contains("pair"), "{out}{err}");
    let (ok, out, err) = c.cli(0, &["cluster", "revive"]).await;
    assert!(ok, "{out}{err}");
    let shows_n2 = |q: Option<Value>| {
        q.is_some_and(|q| q["leader"] == json!("n2") && q["node"] == json!("n2"))
    };
    c.until("n3 to know n2 leads", || async {
        shows_n2(queue_json(&c, 2, "pair").await)
    })
    .await;

    c.kill(2);
    c.spawn(2);
    c.wait_http(2).await;
    let q = queue_json(&c, 2, "pair").await;
    assert!(shows_n2(q.clone()), "after its restart n3 lists {q:?}");

    // A publish through n3 goes to the leader and is confirmed.
    let conn = connect(&c.nodes[2].amqp_uri()).await.expect("connect");
    let ch = confirm_channel(&conn).await;
    publish_all_confirmed(&ch, "pair", "via-n3-", 3).await;
    drain_all(&c, "pair", &["via-n3-0", "via-n3-1", "via-n3-2"]).await;
}

/// What applications do: declare a quorum queue and publish to it at
/// once, on the same channel, while clients of the other nodes publish to
/// it the moment their node lists it. Every confirmed message must be
/// consumed, however early it came (the others may be nacked while the
/// queue's group elects its first leader). Before the fixes, about one
/// run in three lost a confirmed message: a node that applied the
/// declare first forwarded to the declaring node, which did not know the
/// queue yet and said so, and "no such queue" was confirmed as
/// unroutable; or the publish found the new queue before its replica
/// started and went into a plain local queue the replica then replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_right_after_a_quorum_declare_are_all_kept() {
    const ROUNDS: usize = 10;
    let c = TestCluster::start(&[SECRET, SECRET, SECRET]).await;
    c.until_leader(&[0, 1, 2]).await;
    c.until_flag_enabled(antre_broker::feature_flags::FORWARDED_METADATA_INDEX)
        .await;
    let conns: Vec<Arc<Connection>> = {
        let mut v = Vec::new();
        for n in &c.nodes {
            v.push(Arc::new(connect(&n.amqp_uri()).await.expect("connect")));
        }
        v
    };
    let mut confirmed = Vec::new();
    for round in 0..ROUNDS {
        let name = format!("early-{round}");
        let mut others = Vec::new();
        for (i, conn) in conns.iter().enumerate().skip(1) {
            let conn = Arc::clone(conn);
            let name = name.clone();
            others.push(tokio::spawn(async move {
                // Passive declares until this node has the queue (a failed
                // one closes its channel), then a publish at once.
                let deadline = Instant::now() + harness::WAIT;
                let ch = loop {
                    let ch = confirm_channel(&conn).await;
                    let passive = QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    };
                    if ch
                        .queue_declare(&name, passive, FieldTable::default())
                        .await
                        .is_ok()
                    {
                        break ch;
                    }
                    assert!(Instant::now() < deadline, "{name} never seen");
                };
                let body = format!("{name}-from-n{}", i + 1);
                publish_confirmed(&ch, &name, body.as_bytes(), harness::WAIT)
                    .await
                    .filter(|ok| *ok)
                    .map(|_| body)
            }));
        }
        let ch = confirm_channel(&conns[0]).await;
        declare_quorum(&ch, &name, &[]).await;
        // The declare-ok waited for the queue's leader: the declaring
        // client's first publish is confirmed.
        let body = format!("{name}-from-n1");
        assert_eq!(
            publish_confirmed(&ch, &name, body.as_bytes(), harness::WAIT).await,
            Some(true),
            "{body}"
        );
        confirmed.push((name.clone(), body));
        for o in others {
            if let Some(body) = o.await.expect("task") {
                confirmed.push((name.clone(), body));
            }
        }
    }
    for round in 0..ROUNDS {
        let name = format!("early-{round}");
        let want: Vec<&str> = confirmed
            .iter()
            .filter(|(q, _)| *q == name)
            .map(|(_, b)| b.as_str())
            .collect();
        let l = wait_leader(&c, &name).await;
        let mut got = c.drain(l, &name).await;
        got.sort();
        let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
        want.sort();
        if got != want {
            c.dump_logs();
        }
        assert_eq!(got, want, "queue {name}: every confirmed message kept");
    }
}

/// Transactions through a node that owns neither queue: a rolled-back
/// publish reaches no queue and a committed one reaches both (a quorum
/// queue led elsewhere and another node's classic queue); acks in a
/// transaction settle on commit only, as on a single node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_through_another_node_commit_and_roll_back() {
    let c = TestCluster::start(&[SECRET, SECRET, SECRET]).await;
    c.until_leader(&[0, 1, 2]).await;
    let owner = connect(&c.nodes[0].amqp_uri()).await.expect("connect");
    let ch = confirm_channel(&owner).await;
    declare_quorum(&ch, "tx-quorum", &[]).await;
    ch.queue_declare(
        "tx-classic",
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("declare");
    let queues = ["tx-quorum", "tx-classic"];
    let through = connect(&c.nodes[1].amqp_uri()).await.expect("connect");
    let tx = through.create_channel().await.expect("channel");
    tx.tx_select().await.expect("tx.select");
    let publish = |body: &'static str| {
        let tx = tx.clone();
        async move {
            for q in queues {
                tx.basic_publish(
                    "",
                    q,
                    BasicPublishOptions::default(),
                    body.as_bytes(),
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await
                .expect("publish");
            }
        }
    };
    publish("rolled back").await;
    tx.tx_rollback().await.expect("tx.rollback");
    publish("committed").await;
    tx.tx_commit().await.expect("tx.commit");
    for q in queues {
        assert_eq!(c.drain(2, q).await, ["committed"], "{q}");
    }

    for q in queues {
        publish_all_confirmed(&ch, q, "m", 3).await;
        let mut tags = Vec::new();
        for _ in 0..3 {
            let got = tx
                .basic_get(q, BasicGetOptions::default())
                .await
                .expect("get")
                .expect("a message");
            tags.push(got.delivery.delivery_tag);
        }
        tx.basic_ack(tags[0], BasicAckOptions::default())
            .await
            .expect("ack");
        tx.tx_rollback().await.expect("tx.rollback");
        tx.basic_ack(tags[1], BasicAckOptions::default())
            .await
            .expect("ack");
        tx.tx_commit().await.expect("tx.commit");
    }
    // The channel closes: m0 (its ack rolled back) and m2 (never acked)
    // go back; m1 is gone.
    tx.close(200, "done").await.expect("close");
    for q in queues {
        c.until(&format!("{q}'s unsettled messages back"), || async {
            queue_json(&c, 0, q)
                .await
                .is_some_and(|j| j["messages_ready"] == 2)
        })
        .await;
        assert_eq!(c.drain(2, q).await, ["m0", "m2"], "{q}");
    }
}

/// Publishes through a node whose data link to a quorum queue's leader
/// just died (killed -9), before the next leader is known, are held and
/// then put in the queue by the next leader, each channel's in order; a
/// publisher with confirms gets acks. Before, each of them failed at once: a publisher
/// with confirms got nacks, and one without (Celery's default) lost them,
/// some 200 at 500 messages a second over an election.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_while_a_quorum_queues_leader_is_replaced_wait_for_the_next() {
    let mut c = TestCluster::start(&[SECRET, SECRET, SECRET]).await;
    declare_on_n1(&c, "held").await;
    let l = wait_leader(&c, "held").await;
    let via = (l + 1) % 3;
    let conn = connect(&c.nodes[via].amqp_uri()).await.expect("connect");
    let plain = conn.create_channel().await.expect("channel");
    let confirming = confirm_channel(&conn).await;
    // The publishing node knows the queue and its leader (the declare can
    // be answered before it applied it, while the cluster's feature flags
    // are not enabled yet; a publish it cannot route is confirmed as
    // unroutable, and no data link opens: seen once in a loaded run).
    let leader = json!(c.nodes[l].name);
    c.until("the publishing node to know the queue's leader", || async {
        queue_json(&c, via, "held")
            .await
            .is_some_and(|q| q["leader"] == leader)
    })
    .await;
    // The data link to the leader is up.
    publish_all_confirmed(&confirming, "held", "before-", 1).await;

    c.kill(l);
    let lost = format!("data link to cluster node {} lost", c.nodes[l].name);
    c.until("the data link to the dead leader to be lost", || async {
        c.nodes[via].logged(&lost)
    })
    .await;
    for i in 0..50 {
        publish_persistent(&plain, "held", format!("plain-{i}").as_bytes()).await;
    }
    let mut confirms = Vec::new();
    for i in 0..50 {
        let confirm =
            publish_persistent(&confirming, "held", format!("confirmed-{i}").as_bytes()).await;
        confirms.push(confirm);
    }
    for (i, confirm) in confirms.into_iter().enumerate() {
        let confirmation = confirm.await.expect("confirmation");
        assert!(confirmation.is_ack(), "confirmed-{i}: {confirmation:?}");
    }
    // Each channel's in its order; the two channels' may interleave, as
    // on any broker.
    let deadline = Instant::now() + harness::WAIT;
    let mut bodies: Vec<String> = Vec::new();
    while bodies.len() < 101 && Instant::now() < deadline {
        let l = wait_leader(&c, "held").await;
        bodies.extend(c.try_drain(l, "held").await.0);
    }
    let of = |prefix: &str| -> Vec<String> {
        bodies
            .iter()
            .filter(|b| b.starts_with(prefix))
            .cloned()
            .collect()
    };
    assert_eq!(of("before-"), ["before-0"]);
    let want = |prefix: &str| -> Vec<String> { (0..50).map(|i| format!("{prefix}{i}")).collect() };
    assert_eq!(of("plain-"), want("plain-"));
    assert_eq!(of("confirmed-"), want("confirmed-"));
    assert_eq!(bodies.len(), 101, "{bodies:?}");
}

/// Publishes `{prefix}0`.. `{prefix}{n-1}` to `queue` as fast as the
/// channel takes them, with up to `window` confirms outstanding; counts
/// the confirmed in `confirmed`. Returns the ones not acked.
async fn publish_streaming(
    ch: Channel,
    queue: &'static str,
    prefix: &'static str,
    n: usize,
    window: usize,
    confirmed: Arc<AtomicU64>,
) -> Vec<String> {
    let mut outstanding = std::collections::VecDeque::new();
    let mut not_acked = Vec::new();
    let mut settle = |i: usize, c: Confirmation| {
        if !c.is_ack() {
            not_acked.push(format!("{prefix}{i}: {c:?}"));
        }
        confirmed.fetch_add(1, Ordering::AcqRel);
    };
    for i in 0..n {
        let confirm = publish_persistent(&ch, queue, format!("{prefix}{i}").as_bytes()).await;
        outstanding.push_back((i, confirm));
        if outstanding.len() >= window {
            let (i, confirm) = outstanding.pop_front().expect("outstanding");
            settle(i, confirm.await.expect("confirmation"));
        }
    }
    for (i, confirm) in outstanding {
        settle(i, confirm.await.expect("confirmation"));
    }
    not_acked
}

/// Drains `queue` from its leader until `n` messages came (or the wait is
/// over): asserts each of `{prefix}0`.. `{prefix}{n-1}` came exactly once.
async fn drain_exactly_once(c: &TestCluster, queue: &str, prefix: &str, n: usize) {
    let deadline = Instant::now() + harness::WAIT;
    let mut bodies: Vec<String> = Vec::new();
    while bodies.len() < n && Instant::now() < deadline {
        let l = wait_leader(c, queue).await;
        bodies.extend(c.try_drain(l, queue).await.0);
    }
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for b in &bodies {
        *counts.entry(b.as_str()).or_default() += 1;
    }
    let twice: Vec<_> = counts.iter().filter(|(_, &k)| k > 1).collect();
    // Each caller's queue has one publisher: its messages come in the
    // order it sent them. Regression: batches a deposed leader answered
    // one by one as not stored went each ahead of the one before, and
    // some 120 messages of every such run came in reverse; then 4 and 13
    // pairs in runs where the next leader was still taking the queue over
    // (fixed). What may still pass one: a takeover slower than the 1 s a
    // forwarded publish waits for it (see docs/clustering.md, "Sent
    // again, stored once").
    let order: Vec<usize> = bodies
        .iter()
        .filter_map(|b| b.strip_prefix(prefix)?.parse().ok())
        .collect();
    let inversions: Vec<&[usize]> = order.windows(2).filter(|w| w[1] < w[0]).collect();
    let missing: Vec<String> = (0..n)
        .map(|i| format!("{prefix}{i}"))
        .filter(|b| !counts.contains_key(b.as_str()))
        .collect();
    if !twice.is_empty() || !missing.is_empty() || bodies.len() != n || inversions.len() >= 4 {
        c.dump_logs();
    }
    assert!(twice.is_empty(), "stored twice: {twice:?}");
    assert!(missing.is_empty(), "missing: {missing:?}");
    assert_eq!(bodies.len(), n);
    assert!(
        inversions.len() < 4,
        "{} messages came before one sent earlier: {:?}",
        inversions.len(),
        &inversions[..inversions.len().min(10)]
    );
}

/// A leader that hands quorum queues away (`antre queues rebalance`)
/// holds new entries while its lease lapses: its own node's clients'
/// publishes gathered then, or in entries it did not get committed, are
/// sent on to the next leader and stored once. Before, they were nacked
/// ("publish again", the docs said).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_handing_its_queue_away_sends_its_own_clients_publishes_on() {
    let c = TestCluster::start(&[SECRET, SECRET, SECRET]).await;
    let queues = ["handed-a", "handed-b"];
    for q in queues {
        declare_on_n1(&c, q).await;
    }
    let l = wait_leader(&c, queues[0]).await;
    assert_eq!(wait_leader(&c, queues[1]).await, l);
    // Clients of the leader's own node, one channel per queue.
    let conn = connect(&c.nodes[l].amqp_uri()).await.expect("connect");
    let confirmed = Arc::new(AtomicU64::new(0));
    let mut publishers = Vec::new();
    for q in queues {
        let ch = confirm_channel(&conn).await;
        let counted = Arc::clone(&confirmed);
        publishers.push(tokio::spawn(publish_streaming(
            ch, q, "m", STREAMED, 400, counted,
        )));
    }
    c.until("a first part to be confirmed", || async {
        confirmed.load(Ordering::Acquire) >= 1000
    })
    .await;
    let report = c.rebalance(l, "^handed-").await;
    let moves = report["moves"].as_array().map_or(0, Vec::len);
    assert_eq!(moves, 1, "one of the two queues moved: {report}");
    for p in publishers {
        let not_acked = p.await.expect("publisher");
        assert!(
            not_acked.is_empty(),
            "{} not acked: {not_acked:?}",
            not_acked.len()
        );
    }
    for q in queues {
        drain_exactly_once(&c, q, "m", STREAMED).await;
    }
    assert!(
        c.nodes[l].logged("sending them on"),
        "no publish was sent on"
    );
    drop(conn);
}

/// A 3-node cluster with quorum queue `queue` (declared on n1), a
/// publisher streaming 4,000 messages to it through a node that does not
/// lead it, once 500 of them are confirmed: the leader, the publisher's
/// node, and what the publisher returns (the messages not acked).
async fn streaming_through_another_node(
    queue: &'static str,
) -> (
    TestCluster,
    usize,
    usize,
    tokio::task::JoinHandle<Vec<String>>,
) {
    let mut c = TestCluster::plan(&[SECRET, SECRET, SECRET]);
    // What these tests show is that a publish on its way is sent again,
    // not how long it may take: under a doubly loaded machine (two suites
    // at once on two cores), the next leader once took longer than the
    // default 5 s, and 160 publishes were rightly nacked.
    for n in &mut c.nodes {
        n.args
            .extend(["--cluster-forward-timeout".into(), "30".into()]);
    }
    c.launch().await;
    // Only numbered publishes are sent again (unnumbered ones are nacked:
    // they might be stored twice), and numbering waits for the cluster to
    // enable the flag, which its metadata leader looks at every 2 s: a
    // run that reached the kill sooner nacked every publish on its way
    // (283 in one run of a faster build).
    c.until_flag_enabled("quorum_queue_forwarded_publish_dedupe")
        .await;
    declare_on_n1(&c, queue).await;
    let l = wait_leader(&c, queue).await;
    let via = (l + 1) % 3;
    let conn = connect(&c.nodes[via].amqp_uri()).await.expect("connect");
    let ch = confirm_channel(&conn).await;
    let confirmed = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&confirmed);
    let publisher = tokio::spawn(async move {
        let _conn = conn;
        publish_streaming(ch, queue, "m", STREAMED, 400, counted).await
    });
    c.until("a first part to be confirmed", || async {
        confirmed.load(Ordering::Acquire) >= 500
    })
    .await;
    (c, l, via, publisher)
}

/// How many messages [`streaming_through_another_node`] publishes.
const STREAMED: usize = 4000;

/// Waits for the publisher of [`streaming_through_another_node`]: every
/// message must be acked, some after being sent again, and in the queue
/// exactly once.
async fn all_acked_and_stored_once(
    c: &TestCluster,
    queue: &str,
    via: usize,
    publisher: tokio::task::JoinHandle<Vec<String>>,
) {
    let not_acked = publisher.await.expect("publisher");
    if !not_acked.is_empty() {
        // Seen in CI (2,531 nacked after the leader's kill) and in about
        // 1 run in 25 of three copies at once with a faster Raft round:
        // what the nodes said is the lead.
        c.dump_logs();
    }
    assert!(
        not_acked.is_empty(),
        "{} not acked: {:?}...",
        not_acked.len(),
        &not_acked[..not_acked.len().min(10)]
    );
    // Some were on their way (every run before the fix nacked some).
    assert!(
        c.nodes[via].logged("sending them again"),
        "no publish was sent again"
    );
    let metrics = scrape(c, via, "/metrics").await;
    let again = sample(
        &metrics,
        "antre_cluster_forwarded_publishes_sent_again_total",
        &[],
    );
    assert!(again.is_some_and(|n| n > 0.0), "counted: {again:?}");
    drain_exactly_once(c, queue, "m", STREAMED).await;
}

/// Publishes forwarded to a quorum queue's leader that is killed -9 with
/// some on their way (sent, not answered) are sent again to the next
/// leader and stored once: every one is acked and arrives exactly once.
/// Before, those on their way were nacked (and lost for a publisher
/// without confirms: 1 message a run in the failover measure of
/// BENCHMARKS.md), since sending them again could store them twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_on_their_way_to_a_leader_killed_are_sent_again_and_stored_once() {
    let (mut c, l, via, publisher) = streaming_through_another_node("again").await;
    c.kill(l);
    all_acked_and_stored_once(&c, "again", via, publisher).await;
}

/// The same when the leader is deposed rather than killed (its node is
/// drained, and hands the leadership to another member): what it no
/// longer stored is sent to the next leader, not nacked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_a_deposed_leader_did_not_store_go_to_the_next() {
    let (c, l, via, publisher) = streaming_through_another_node("handed").await;
    let (ok, out, err) = c.cli(l, &["cluster", "drain"]).await;
    assert!(ok, "{out}{err}");
    all_acked_and_stored_once(&c, "handed", via, publisher).await;
    assert_ne!(wait_leader(&c, "handed").await, l, "the leadership moved");
}

/// RabbitMQ's `quorum-queues-without-elected-leaders` health check (3.13,
/// what operators alert on after a node failure): 200 while every quorum
/// queue has a leader; once the only member of a one-member queue dies,
/// 503 naming it (in RabbitMQ's printable form), through every form of
/// the path: all vhosts or one, with or without a name pattern. A queue
/// of three members keeps or elects a leader meanwhile and is not listed.
/// Before, every form answered 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_check_for_leaderless_quorum_queues_names_a_queue_whose_members_are_down() {
    let mut c = TestCluster::start(&[SECRET, SECRET, SECRET]).await;
    declare_on_n1(&c, "orders").await;
    let one = [("x-quorum-initial-group-size", AMQPValue::LongInt(1))];
    c.declare_durable(0, "solo", quorum_args(&one)).await;
    wait_leader(&c, "orders").await;
    let member = wait_leader(&c, "solo").await;
    let asked = (member + 1) % 3;
    let base = "/api/health/checks/quorum-queues-without-elected-leaders";
    let all = format!("{base}/all-vhosts/");
    let (status, body) = c.api(asked, "GET", &all, None).await;
    assert_eq!((status, body), (200, json!({"status": "ok"})));

    c.kill(member);
    let solo = json!({
        "readable_name": "queue 'solo' in vhost '/'",
        "name": "solo",
        "virtual_host": "/",
        "type": "rabbit_quorum_queue",
    });
    let failed = json!({
        "status": "failed",
        "reason": "Detected quorum queues without an elected leader",
        "queues": [solo],
    });
    c.until("only the one-member queue to be listed", || async {
        c.api(asked, "GET", &all, None).await == (503, failed.clone())
    })
    .await;
    // Each form in turn (awaited, as a loaded machine may see "orders"
    // elect again meanwhile).
    let answers = [
        (format!("{base}/all-vhosts"), (503, failed.clone())),
        (format!("{base}/vhost/%2F/"), (503, failed.clone())),
        (
            format!("{base}/all-vhosts/pattern/^so"),
            (503, failed.clone()),
        ),
        (
            format!("{base}/vhost/%2F/pattern/ol"),
            (503, failed.clone()),
        ),
        (
            format!("{base}/all-vhosts/pattern/^ord"),
            (200, json!({"status": "ok"})),
        ),
        (
            format!("{base}/vhost/%2F/pattern/orders"),
            (200, json!({"status": "ok"})),
        ),
    ];
    for (path, answer) in answers {
        c.until(&format!("{path} to answer {answer:?}"), || async {
            c.api(asked, "GET", &path, None).await == answer
        })
        .await;
    }
    assert_eq!(
        c.api(asked, "GET", &format!("{base}/vhost/nosuch/"), None)
            .await
            .0,
        404
    );
    let bad = format!("{base}/all-vhosts/pattern/(");
    assert_eq!(c.api(asked, "GET", &bad, None).await.0, 400);

    c.spawn(member);
    c.until("the queue to have its leader back", || async {
        c.try_api(asked, "GET", &all, None).await.map(|r| r.0) == Some(200)
    })
    .await;
}
